"""Real bone surfaces as phantoms for the synthetic training CTs (issue 15: "bone shapes from
the real surfaces ... and from the phantom families").

A set of closed bone surfaces (STL, mm) of one subject becomes a
:class:`~orthonav.phantoms.render.SyntheticPhantom` that the synthetic generator
(:func:`orthonav.phantoms.synth_ct.synth_draw`) draws like a phantom family: through a random
field of view, deformed, with random tissue HUs, blur, noise and resolution. Each surface is
turned into a signed distance field on a fine grid (:func:`mesh_sdf`: the voxel centres inside
the surface by a scan-line stencil, then exact Euclidean distances, each shifted half a voxel
so the zero level lies half-way between inside and outside centres: within half the grid
step of the surface, 0.3 mm at the default step). The renderer (:func:`~orthonav.phantoms.render.render_fractions`)
then puts a cortex of :func:`cortical_thickness` inside the surface, marrow within it, and soft
tissue and fat around the bones (the body: every point within :data:`BODY_MM` of a bone).

The cortex follows the bone's local width (:func:`cortical_thickness`): a shaft (local radius
up to ~14 mm) has a thick cortex, about a third of its radius (femoral and tibial diaphyses
3-6 mm, the fibula ~2-3 mm: Treece et al. 2010, Med Image Anal 14: 2-16, measure 2-6 mm on
clinical femurs); the wide ends (condyles, plateau, head) a thin shell of 1 mm; a patella 1.2
mm all over. The renderer's model caps it at 4 mm.

Known sets (:data:`SHAPE_SETS`), each in its folder under a root such as
``../shared/data/real_bone_surfaces/``:

* ``knee_vhf_left``: the Visible Human Female's left tibia, fibula and patella (Andreassen et
  al., Sci Data 2022; CC BY 4.0), in the VHF's RAS frame (turned to LPS here); a knee without
  its femur, so the field of view is centred on the tibial plateau;
* ``femur_libhip_m4``: the left and right proximal femurs of one subject (diku-dk/libhip,
  MIT), in LPS; a hip without its pelvis.

Those are the shapes the project has; they are few (one knee, two femurs), so a draw deforms
them like the phantoms (:func:`~orthonav.phantoms.synth_ct._deform`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from scipy import ndimage as ndi

from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume

from .printed_ct import stencil_mask
from .render import DEFAULT_HU, BoneSpec, SyntheticPhantom, fit_grid, render_ct, render_fractions
from .truth import PhantomTruth

#: mm: the body around the bones (soft tissue and fat) reaches this far from the nearest bone.
BODY_MM = 38.0
#: mm: grid step of each surface's signed distance field.
SDF_STEP_MM = 0.6
#: The renderer's cortical thickness limit (mm).
CORTEX_MAX_MM = 4.0
#: mm: how far :func:`cortical_thickness` looks for a bone's local radius (the end's width it
#: must tell from a shaft's, 14 mm at most).
RADIUS_REACH_MM = 22.0


@dataclass(frozen=True)
class ShapeLayout:
    """Where a known set's surfaces are and what they are.

    Attributes
    ----------
    kind
        ``"knee"`` or ``"hip"``: how a field of view is centred (the knee joint, or between
        the femoral heads).
    side
        The set's side (``"left"``) or ``"both"`` when the names carry their sides.
    files
        STL file name -> bone name (side-less with a one-sided set: ``tibia``).
    lps_from_file
        3 x 3 linear map from the files' frame to LPS.
    """

    kind: str
    side: str
    files: Mapping[str, str]
    lps_from_file: tuple[tuple[float, float, float], ...]


SHAPE_SETS: dict[str, ShapeLayout] = {
    "knee_vhf_left": ShapeLayout(
        "knee", "left",
        {"VHF_Left_Bone_Tibia_smooth.stl": "tibia", "VHF_Left_Bone_Fibula_smooth.stl": "fibula", "VHF_Left_Bone_Patella_smooth.stl": "patella"},
        ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),  # VHF: RAS
    ),
    "femur_libhip_m4": ShapeLayout(
        "hip", "both", {"m4_lfemur_mm.stl": "femur_left", "m4_rfemur_mm.stl": "femur_right"}, ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ShapeSet:
    """Closed bone surfaces of one subject in LPS mm (``meshes``: bone name -> surface;
    ``files``: bone name -> the file it was read from, for error messages)."""

    name: str
    kind: str
    side: str
    meshes: dict[str, pv.PolyData]
    files: dict[str, Path] = field(default_factory=dict)


def find_shape_sets(root: str | Path) -> list[ShapeSet]:
    """The known sets (:data:`SHAPE_SETS`) found under ``root`` (a folder holding their
    folders, or one set's folder), loaded in LPS.

    Raises
    ------
    InputError
        ``root`` is not a folder, holds none of the known sets, or a surface is not closed.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder of bone surfaces")
    out = []
    for name, layout in SHAPE_SETS.items():
        folder = root if root.name == name else root / name
        if folder.is_dir():
            out.append(load_shape_set(folder, layout, name))
    if not out:
        raise InputError(root, f"holds none of the known bone-surface sets ({', '.join(SHAPE_SETS)}), in itself or as sub-folders")
    return out


def load_shape_set(folder: Path, layout: ShapeLayout, name: str) -> ShapeSet:
    """One set's surfaces from ``folder`` (each must exist and be closed), turned to LPS."""
    lin = np.asarray(layout.lps_from_file, np.float64)
    meshes, files = {}, {}
    for file, bone in layout.files.items():
        path = folder / file
        if not path.is_file():
            raise InputError(path, f"missing: the {name} set needs {', '.join(layout.files)}")
        try:
            mesh = pv.read(path).triangulate().clean()
        except Exception as exc:  # pyvista/VTK raise several types on a corrupt file
            raise InputError(path, f"cannot read the surface: {exc}") from exc
        if mesh.n_cells == 0 or mesh.n_open_edges > 0:
            raise InputError(path, f"not a closed surface ({mesh.n_open_edges} open edges): the inside of a bone is undefined")
        mesh.points = np.asarray(mesh.points, np.float64) @ lin.T
        meshes[bone], files[bone] = mesh, path
    return ShapeSet(name, layout.kind, layout.side, meshes, files)


@dataclass(frozen=True)
class GridSDF:
    """A signed distance field (mm, negative inside) sampled on an axis-aligned LPS grid;
    called with (n, 3) LPS points it interpolates trilinearly and, beyond the grid, adds the
    distance to the grid's box (positive and growing far away; there at most sqrt(2)-Lipschitz,
    an over-estimate of the distance, harmless for the renderer's bands: a review found no
    voxel of the body changed against exact values)."""

    values: NDArray[np.float32]  # (nk, nj, ni)
    origin: NDArray[np.float64]  # LPS mm of voxel centre (0, 0, 0)
    step_mm: float

    def __call__(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        p = np.asarray(p, np.float64).reshape(-1, 3)
        hi = self.origin + (np.array(self.values.shape[::-1]) - 1) * self.step_mm
        q = np.clip(p, self.origin, hi)
        idx = (q - self.origin) / self.step_mm
        v = ndi.map_coordinates(self.values, [idx[:, 2], idx[:, 1], idx[:, 0]], order=1, mode="nearest")
        return v.astype(np.float64) + np.linalg.norm(p - q, axis=1)


def mesh_sdf(mesh: pv.PolyData, *, step_mm: float = SDF_STEP_MM, margin_mm: float = CORTEX_MAX_MM + 4.0, source: Path | None = None) -> GridSDF:
    """The signed distance field of a closed surface (LPS mm, negative inside) on a grid of
    ``step_mm`` covering its bounds plus ``margin_mm``; ``source`` (the surface's file) is
    named in the error when the surface encloses no voxel centre.

    Inside: the voxel centres the scan-line stencil puts inside. A centre's distance is that to
    the nearest centre of the other class (exact Euclidean transform) less half a step, so the
    zero level lies half-way between an inside and an outside centre."""
    b = np.asarray(mesh.bounds, np.float64).reshape(3, 2)
    origin = b[:, 0] - margin_mm
    shape_ijk = np.ceil((b[:, 1] - b[:, 0] + 2 * margin_mm) / step_mm).astype(int) + 1
    inside = stencil_mask(mesh, (step_mm,) * 3, origin, shape_ijk)
    if not inside.any():
        raise InputError(source, f"the surface encloses no voxel centre of a {step_mm:g} mm grid: not a closed bone surface, or thinner than a grid step")
    d_out = ndi.distance_transform_edt(~inside, sampling=step_mm)
    d_in = ndi.distance_transform_edt(inside, sampling=step_mm)
    sdf = np.where(inside, -(d_in - 0.5 * step_mm), d_out - 0.5 * step_mm).astype(np.float32)
    return GridSDF(sdf, origin, float(step_mm))


def cortical_thickness(sdf: GridSDF, bone: str) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """The cortex thickness (mm) at (n, 3) LPS points of ``bone`` (see the module docstring):
    a third of the local radius in a shaft (the local radius: the depth of the deepest point of
    the bone within :data:`RADIUS_REACH_MM`, so a point on a shaft reads the shaft's radius and
    one on a wide end reads at least that reach), blending to 1 mm where that radius grows from
    14 to 22 mm (the ends); 1.2 mm on a patella; between 0.8 and :data:`CORTEX_MAX_MM`."""
    if bone.split("_")[0] == "patella":
        return lambda p: np.full(len(np.asarray(p).reshape(-1, 3)), 1.2)
    depth = np.maximum(-sdf.values, 0.0)
    reach = 2 * int(round(RADIUS_REACH_MM / sdf.step_mm)) + 1
    radius = GridSDF(ndi.maximum_filter(depth, size=reach).astype(np.float32), sdf.origin, sdf.step_mm)

    def thickness(p: NDArray[np.float64]) -> NDArray[np.float64]:
        r = np.maximum(radius(p), 0.0)
        shaft = np.clip(r / 3.0, 0.8, CORTEX_MAX_MM)
        w = np.clip((r - 14.0) / 8.0, 0.0, 1.0)
        return np.clip((1.0 - w) * shaft + w * 1.0, 0.8, CORTEX_MAX_MM)

    return thickness


@dataclass(frozen=True)
class ShapePhantom:
    """A :class:`ShapeSet` rendered: the phantom (its CT at the nominal HUs, labels, names) and
    each tissue's partial-volume fraction on its grid (what the generator mixes)."""

    name: str
    phantom: SyntheticPhantom
    fractions: dict[str, Volume]


def shape_phantom(shapes: ShapeSet, *, spacing_mm: tuple[float, float, float] = (1.2, 1.2, 2.0), sdf_step_mm: float = SDF_STEP_MM) -> ShapePhantom:
    """Render ``shapes`` as a phantom on an LPS-aligned grid of ``spacing_mm`` (i, j, k; the
    small knee phantom's in-plane spacing, 2 mm slices) holding the bones and the body around
    them (:data:`BODY_MM`); each surface's distance field on a grid of ``sdf_step_mm``."""
    sdfs = {bone: mesh_sdf(m, step_mm=sdf_step_mm, source=shapes.files.get(bone)) for bone, m in shapes.meshes.items()}
    labels = {bone: v for v, bone in enumerate(sorted(shapes.meshes), start=1)}
    bones = []
    for bone, f in sdfs.items():
        lo, hi = np.asarray(shapes.meshes[bone].bounds, np.float64).reshape(3, 2).T
        bones.append(BoneSpec(bone, labels[bone], f, np.stack([lo - 1.0, hi + 1.0]), cortical_thickness(f, bone)))
    parts = list(sdfs.values())

    def envelope(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.min([f(p) for f in parts], axis=0) - BODY_MM

    pts = np.concatenate([np.asarray(m.points) for m in shapes.meshes.values()])
    bounds = np.stack([pts.min(axis=0) - BODY_MM, pts.max(axis=0) + BODY_MM])
    eye = np.eye(4)
    grid = fit_grid(bounds, eye, np.eye(3), spacing_mm, margin_mm=4.0)
    no_beads = np.zeros((0, 3))
    ct, lab = render_ct(grid, eye, bones, envelope, no_beads, 0.0, np.random.default_rng(0), noise_hu=0.0, psf_sigma_vox=0.0)
    fractions = render_fractions(grid, eye, bones, envelope, no_beads, 0.0)
    truth = PhantomTruth(
        kind=shapes.kind, seed=0, parameters={"shapes": shapes.name}, side=shapes.side, bones=labels, fiducials_lps_mm={}, targets_lps_mm={},
        landmarks_lps_mm={}, angles_deg={}, ct_from_limb=eye.tolist(), reference_mount_lps_mm=(0.0, 0.0, 0.0), bead_radius_mm=0.0, hu=dict(DEFAULT_HU),
    )  # fmt: skip
    side = shapes.side if shapes.side in ("left", "right") else None
    table = LabelTable(labels={v: k for k, v in labels.items()}, backend="phantom truth", side=side)
    phantom = SyntheticPhantom(ct=ct, labels=lab, label_table=table, truth=truth, truth_meshes=dict(shapes.meshes), bones={b.name: b for b in bones})
    return ShapePhantom(shapes.name, phantom, fractions)


__all__ = [
    "BODY_MM",
    "SHAPE_SETS",
    "GridSDF",
    "ShapeLayout",
    "ShapePhantom",
    "ShapeSet",
    "cortical_thickness",
    "find_shape_sets",
    "load_shape_set",
    "mesh_sdf",
    "shape_phantom",
]
