"""A library of parametric implants (TKA femoral component, tibial tray, insert; THA cup and
stem), generated as closed meshes in their own frames, plus user-supplied STL implants.

Implant frames (mm), used by ``ImplantPlacement.ct_from_implant``:

* ``tka_femoral``: origin at the centre of the distal bone-facing surface (on the distal cut
  plane, midway between the anterior and posterior cut planes and between the condyles);
  z proximal (along the femoral mechanical axis), y anterior, x = y x z.
  The bone-facing box (``A`` = anterior-posterior cut distance) has the distal cut at z = 0,
  the posterior cut at y = -A/2, the anterior cut at y = +A/2 and 45 deg chamfers.
* ``tka_tibial_tray``: origin at the centre of the tray's bone-facing (distal) surface, on
  the tibial cut; z proximal (the cut normal), y anterior.
* ``tka_insert``: same frame as the tray it sits on (its underside at z = tray thickness).
* ``tha_cup``: origin at the centre of rotation, z out of the cup opening (the cup axis).
* ``tha_stem``: origin at the (prosthetic) head centre; z parallel to the stem body's axis,
  pointing proximally; x from the stem axis towards the head (the neck lies in the x-z
  plane). The body's axis is the line x = -offset, y = 0; the neck runs from the head along
  (-sin 45, 0, -cos 45) (135 deg neck-shaft angle) to the shoulder at z = -offset.

Sizes are nominal catalogue-like series (not a specific manufacturer).
Custom implants: a JSON next to an STL, see :class:`CustomImplant`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import manifold3d as mf
import numpy as np
import pyvista as pv
from numpy.typing import ArrayLike, NDArray
from orthonav.core.errors import InputError
from orthonav.core.meshio import read_mesh
from orthonav.core.schema import Versioned, load_model
from pydantic import Field

from .meshops import to_manifold, to_polydata, transform
from .schema import ImplantPlacement, Plan

# Nominal TKA femoral sizes: A = AP distance between the anterior and posterior cuts (mm),
# W = medio-lateral width (mm).
FEMORAL_SIZES: dict[str, dict[str, float]] = {
    str(i + 1): {"ap_mm": ap, "ml_mm": ml}
    for i, (ap, ml) in enumerate([(46.0, 57.0), (49.0, 60.0), (52.0, 63.0), (55.0, 66.0), (58.0, 69.0), (61.0, 72.0), (64.0, 75.0), (67.0, 78.0)])
}
FEMORAL_THICKNESS_MM = {"distal": 9.0, "posterior": 9.0, "anterior": 6.0}
FEMORAL_CHAMFER_MM = 9.0
FEMORAL_FLANGE_MM = {"anterior": 38.0, "posterior": 30.0}

# Tibial trays: ML x AP of the outline (mm); thickness 4 mm; keel 30 mm.
TIBIAL_SIZES: dict[str, dict[str, float]] = {
    str(i + 1): {"ml_mm": ml, "ap_mm": ap}
    for i, (ml, ap) in enumerate([(58.0, 38.0), (62.0, 41.0), (66.0, 43.0), (70.0, 46.0), (74.0, 48.0), (78.0, 51.0), (82.0, 53.0), (86.0, 56.0)])
}
TRAY_THICKNESS_MM = 4.0
INSERT_THICKNESSES_MM = (9.0, 10.0, 12.0, 14.0, 16.0)

CUP_SIZES = {str(d): {"outer_diameter_mm": float(d)} for d in range(44, 66, 2)}
STEM_SIZES = {str(i + 1): {"length_mm": 110.0 + 8.0 * i, "offset_mm": 38.0 + 1.5 * i} for i in range(8)}

FAMILIES = ("tka_femoral", "tka_tibial_tray", "tka_insert", "tha_cup", "tha_stem")


@dataclass(frozen=True)
class ImplantModel:
    """An implant design in its own frame: a closed solid plus its nominal dimensions."""

    family: str
    size: str
    solid: mf.Manifold = field(repr=False)
    dims: dict[str, float] = field(default_factory=dict)

    def mesh(self) -> pv.PolyData:
        """The surface as PyVista triangles (implant frame, mm)."""
        return to_polydata(self.solid)


def _profile_to_3d(section: mf.CrossSection, width_mm: float) -> mf.Manifold:
    """Extrude a (y, z) profile by ``width_mm`` along x, centred on x = 0."""
    e = section.extrude(width_mm).translate([0.0, 0.0, -width_mm / 2.0])
    # extrusion coordinates (u, v, w) = (y, z, x): cyclic permutation (det +1) to (x, y, z)
    perm = np.array([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    return e.transform(perm.tolist())


def femoral_box_profile(ap_mm: float, *, chamfer_mm: float = FEMORAL_CHAMFER_MM, height_mm: float = 200.0) -> np.ndarray:
    """(n, 2) bone-facing box profile in (y, z): the kept bone after the five femoral cuts."""
    a, c = ap_mm / 2.0, chamfer_mm
    return np.array([[-a, height_mm], [-a, c], [-a + c, 0.0], [a - c, 0.0], [a, c], [a, height_mm]])


def _tka_femoral(size: str) -> ImplantModel:
    d = FEMORAL_SIZES[size]
    ap, ml = d["ap_mm"], d["ml_mm"]
    t = FEMORAL_THICKNESS_MM
    inner = mf.CrossSection([femoral_box_profile(ap)])
    # Outer shell: the box grown by the distal/posterior thickness with round (condylar) joins,
    # the anterior flange thinner (shift the anterior part back).
    outer = inner.offset(t["distal"], mf.JoinType.Round, circular_segments=64)
    shell = outer - inner
    a = ap / 2.0
    keep = mf.CrossSection([np.array([
        [-a - 30.0, -30.0], [a + 30.0, -30.0], [a + 30.0, FEMORAL_FLANGE_MM["anterior"]],
        [0.0, FEMORAL_FLANGE_MM["anterior"]], [0.0, FEMORAL_FLANGE_MM["posterior"]], [-a - 30.0, FEMORAL_FLANGE_MM["posterior"]],
    ])])
    ant_trim = mf.CrossSection([np.array([[a + t["anterior"], -5.0], [a + 40.0, -5.0], [a + 40.0, 100.0], [a + t["anterior"], 100.0]])])
    shell = (shell ^ keep) - ant_trim
    solid = _profile_to_3d(shell, ml)
    # Intercondylar box (notch) between the posterior condyles, open posteriorly and distally.
    notch_w = 0.28 * ml
    notch = mf.Manifold.cube([notch_w, a + 40.0, 60.0]).translate([-notch_w / 2.0, -a - 40.0 + 0.35 * a, -t["distal"] - 10.0])
    solid = solid - notch
    dims = {"ap_mm": ap, "ml_mm": ml, "distal_thickness_mm": t["distal"], "posterior_thickness_mm": t["posterior"], "anterior_thickness_mm": t["anterior"], "chamfer_mm": FEMORAL_CHAMFER_MM}
    return ImplantModel("tka_femoral", size, solid, dims)


def tray_outline(ml_mm: float, ap_mm: float, n: int = 96) -> np.ndarray:
    """(n, 2) tibial tray outline in (x, y): a superellipse (exponent 2.6) with a posterior
    cruciate notch, centred on the origin."""
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    e = 2.0 / 2.6
    x = (ml_mm / 2.0) * np.sign(np.cos(th)) * np.abs(np.cos(th)) ** e
    y = (ap_mm / 2.0) * np.sign(np.sin(th)) * np.abs(np.sin(th)) ** e
    pts = np.c_[x, y]
    # PCL notch: pull the posterior-central points forward.
    notch = (np.abs(x) < 0.1 * ml_mm) & (y < 0)
    pts[notch, 1] = np.maximum(pts[notch, 1], -ap_mm / 2.0 + 0.18 * ap_mm)
    return pts


def _tka_tray(size: str) -> ImplantModel:
    d = TIBIAL_SIZES[size]
    outline = mf.CrossSection([tray_outline(d["ml_mm"], d["ap_mm"])])
    plate = outline.extrude(TRAY_THICKNESS_MM)
    keel = mf.Manifold.cylinder(32.0, 5.0, 8.0, 48).translate([0.0, 0.0, -32.0])
    solid = plate + keel
    return ImplantModel("tka_tibial_tray", size, solid, {"ml_mm": d["ml_mm"], "ap_mm": d["ap_mm"], "thickness_mm": TRAY_THICKNESS_MM, "keel_mm": 32.0})


def insert_size(tray_size: str, thickness_mm: float) -> str:
    """The size label of an insert: ``'<tray size>/<thickness mm>'``."""
    return f"{tray_size}/{thickness_mm:g}"


def _tka_insert(size: str) -> ImplantModel:
    try:
        tray, th = size.split("/")
        th_mm = float(th)
        d = TIBIAL_SIZES[tray]
    except (ValueError, KeyError) as e:
        raise InputError(None, f"insert size must be '<tray size>/<thickness>' (e.g. '3/10'), got {size!r}") from e
    if th_mm not in INSERT_THICKNESSES_MM:
        raise InputError(None, f"insert thickness {th_mm:g} mm not in the library {INSERT_THICKNESSES_MM}")
    outline = mf.CrossSection([tray_outline(d["ml_mm"] - 2.0, d["ap_mm"] - 2.0)])
    body = outline.extrude(th_mm).translate([0.0, 0.0, TRAY_THICKNESS_MM])
    # Two shallow dishes for the condyles (2 mm deep).
    top = TRAY_THICKNESS_MM + th_mm
    r = 40.0
    for sx in (-1.0, 1.0):
        body = body - mf.Manifold.sphere(r, 64).translate([sx * d["ml_mm"] * 0.22, 0.0, top + r - 2.0])
    return ImplantModel("tka_insert", size, body, {"thickness_mm": th_mm, "ml_mm": d["ml_mm"] - 2.0, "ap_mm": d["ap_mm"] - 2.0})


def _tha_cup(size: str) -> ImplantModel:
    d = CUP_SIZES[size]["outer_diameter_mm"]
    ro, ri = d / 2.0, d / 2.0 - 4.0
    shell = mf.Manifold.sphere(ro, 96) - mf.Manifold.sphere(ri, 96)
    shell = shell.trim_by_plane([0.0, 0.0, -1.0], 0.0)  # keep z <= 0: opening towards +z
    return ImplantModel("tha_cup", size, shell, {"outer_diameter_mm": d, "inner_diameter_mm": 2 * ri})


def _tha_stem(size: str) -> ImplantModel:
    """Stem: origin at the head centre, z proximal along the body's axis (which is offset
    ``offset_mm`` along -x from the head), the neck from the head down to the shoulder at
    135 deg to the body (see the module docstring)."""
    d = STEM_SIZES[size]
    length, offset = d["length_mm"], d["offset_mm"]
    head = mf.Manifold.sphere(14.0, 64)
    neck_dir = np.array([np.sin(np.radians(45.0)), 0.0, np.cos(np.radians(45.0))])
    neck_len = offset / np.sin(np.radians(45.0))
    neck = mf.Manifold.cylinder(neck_len, 6.0, 6.0, 32)
    # rotate the +z cylinder onto -neck_dir (from the head down to the shoulder)
    rot = rotation_onto(np.array([0.0, 0.0, 1.0]), -neck_dir)
    neck = neck.transform(np.c_[rot, np.zeros(3)].tolist())
    shoulder = -neck_dir * neck_len
    body = mf.Manifold.cylinder(length, 7.0, 11.0, 48).translate([0.0, 0.0, -length]).translate(shoulder.tolist())
    solid = head + neck + body
    return ImplantModel("tha_stem", size, solid, {"length_mm": length, "offset_mm": offset, "head_diameter_mm": 28.0, "neck_shaft_deg": 135.0})


def rotation_onto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The (3, 3) rotation turning direction ``a`` onto direction ``b`` (shortest arc about
    ``a x b``; a half turn about x when they are opposite). Neither needs to be unit."""
    from orthonav.core.transforms import rotation_about_axis

    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v = np.cross(a, b)
    s = np.linalg.norm(v)
    if s < 1e-12:
        return np.eye(3) if a @ b > 0 else rotation_about_axis([1.0, 0.0, 0.0], np.pi)
    return rotation_about_axis(v / s, float(np.arctan2(s, a @ b)))


_BUILDERS = {"tka_femoral": _tka_femoral, "tka_tibial_tray": _tka_tray, "tka_insert": _tka_insert, "tha_cup": _tha_cup, "tha_stem": _tha_stem}
_SIZES = {"tka_femoral": FEMORAL_SIZES, "tka_tibial_tray": TIBIAL_SIZES, "tha_cup": CUP_SIZES, "tha_stem": STEM_SIZES}


def sizes(family: str) -> list[str]:
    """Available sizes of a built-in family (inserts: every tray size x thickness)."""
    if family == "tka_insert":
        return [insert_size(s, t) for s in TIBIAL_SIZES for t in INSERT_THICKNESSES_MM]
    if family not in _SIZES:
        raise InputError(None, f"unknown implant family {family!r}; built-in: {', '.join(FAMILIES)}")
    return list(_SIZES[family])


class CustomImplant(Versioned):
    """A user implant: ``<name>.json`` beside its STL.

    Example::

        {"schema_version": 1, "family": "tka_femoral", "size": "M", "mesh": "my_fem_M.stl",
         "implant_from_mesh": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]],
         "dims": {"ap_mm": 58, "ml_mm": 70}}

    ``implant_from_mesh`` maps the STL's coordinates into the family's implant frame (see
    the module docstring), so placement, cuts and sizing treat it like a built-in design.
    """

    SCHEMA_VERSION = 1
    family: str
    size: str
    mesh: str = Field(description="STL path, relative to the JSON file")
    implant_from_mesh: list[list[float]] = Field(default_factory=lambda: np.eye(4).tolist())
    dims: dict[str, float] = Field(default_factory=dict)


_CUSTOM: dict[tuple[str, str], ImplantModel] = {}


def register_custom_implant(json_path: str | Path) -> ImplantModel:
    """Load a user implant (JSON + STL) and make it available to :func:`implant_model`."""
    from orthonav.core.transforms import validate_rigid

    p = Path(json_path)
    spec = load_model(p, CustomImplant)
    if spec.family not in FAMILIES:
        raise InputError(p, f"family {spec.family!r} unknown; use one of {', '.join(FAMILIES)}")
    try:
        m = validate_rigid(spec.implant_from_mesh, name="implant_from_mesh")
    except InputError as e:
        raise InputError(p, e.problem) from e
    mesh = read_mesh(p.parent / spec.mesh)
    try:
        solid = transform(to_manifold(mesh, name=spec.mesh), m)
    except InputError as e:
        raise InputError(p.parent / spec.mesh, e.problem) from e
    model = ImplantModel(spec.family, spec.size, solid, dict(spec.dims))
    _CUSTOM[(spec.family, spec.size)] = model
    return model


@functools.lru_cache(maxsize=128)
def _builtin(family: str, size: str) -> ImplantModel:
    return _BUILDERS[family](size)


def implant_model(family: str, size: str) -> ImplantModel:
    """The implant design ``family`` / ``size`` (custom ones take precedence)."""
    if (family, size) in _CUSTOM:
        return _CUSTOM[(family, size)]
    if family not in _BUILDERS:
        raise InputError(None, f"unknown implant family {family!r}; built-in: {', '.join(FAMILIES)}")
    if family != "tka_insert" and size not in _SIZES[family]:
        raise InputError(None, f"{family} has no size {size!r}; sizes: {', '.join(sizes(family))}")
    return _builtin(family, size)


def implant_meshes_for(plan: Plan, case_dir: str | Path | None = None) -> dict[str, pv.PolyData]:
    """``{'<family>:<size>': mesh in implant frame}`` for every implant of a plan."""
    out = {}
    for imp in plan.implants:
        key = f"{imp.family}:{imp.size}"
        if key not in out:
            out[key] = implant_model(imp.family, imp.size).mesh()
    return out


def move_implant(implant: ImplantPlacement, delta_implant: NDArray[np.float64]) -> ImplantPlacement:
    """The implant moved by a rigid ``delta`` expressed in its own frame (6-DoF adjustment:
    e.g. a translation along its z raises it; a rotation about its z rotates it)."""
    m = np.asarray(implant.ct_from_implant) @ np.asarray(delta_implant, dtype=np.float64)
    return implant.model_copy(update={"ct_from_implant": m.tolist()})


def implant_delta(*, translation_mm: ArrayLike = (0.0, 0.0, 0.0), rotation_axis: ArrayLike = (0.0, 0.0, 1.0), rotation_deg: float = 0.0) -> NDArray[np.float64]:
    """A small rigid adjustment in an implant's frame (rotation about its origin, then shift)."""
    from orthonav.core.transforms import rotation_about_axis

    d = np.eye(4)
    d[:3, :3] = rotation_about_axis(rotation_axis, np.radians(rotation_deg))
    d[:3, 3] = translation_mm
    return d


__all__ = [
    "FAMILIES",
    "FEMORAL_SIZES",
    "INSERT_THICKNESSES_MM",
    "TIBIAL_SIZES",
    "CustomImplant",
    "ImplantModel",
    "femoral_box_profile",
    "implant_delta",
    "implant_meshes_for",
    "implant_model",
    "insert_size",
    "move_implant",
    "register_custom_implant",
    "rotation_onto",
    "sizes",
    "tray_outline",
]
