"""Printable knee phantom: femur + tibia (knee region) on a base, with divots and a mount.

The model is built with exact constructive solid geometry (manifold3d) from the phantom's
truth surfaces, so the result is watertight and manifold and every divot apex is an exact
vertex of the printed mesh:

* the distal femur and proximal tibia, cut by horizontal planes (limb frame), keeping the
  knee joint gap (the cartilage space) open;
* a base plate under the tibia and a lateral pillar + arm holding the femur, so the two bones
  keep their CT relationship when printed;
* registration divots (fiducials for paired-point registration) and target divots (for TRE),
  each a 90 degree cone of known depth whose apex is the point a pointer tip seats at;
* a reference-marker mount (a block with two 3.2 mm screw holes) on the anterior femoral shaft;
* an identification code engraved as notches along the base's front edge (the seed, binary).

Frames: the "phantom frame" is the limb frame translated so that the base's bottom face is
z = 0 (x medial, y posterior, z up, mm): the print bed frame. ``ct_from_phantom`` maps it into
the phantom CT's LPS frame, so every divot is also given in CT coordinates.

Hip and long bone: :func:`make_printable` lays out their parts the same way (a
:class:`PrintLayout`). The CT of a printed model is :mod:`orthonav.phantoms.printed_ct`.
"""

from __future__ import annotations

from dataclasses import dataclass

import manifold3d as mf
import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from pydantic import Field

from orthonav.core.errors import InputError
from orthonav.core.schema import Versioned
from orthonav.core.transforms import apply, invert, make_rigid

from . import sdf as S

Vec3 = tuple[float, float, float]

DIVOT_HALF_ANGLE_DEG = 45.0


class Divot(Versioned):
    """One conical divot: the apex is where a pointer tip seats."""

    apex_phantom_mm: Vec3
    apex_ct_lps_mm: Vec3
    axis_phantom: Vec3 = Field(description="unit cone axis, pointing out of the bone")
    depth_mm: float
    half_angle_deg: float = DIVOT_HALF_ANGLE_DEG
    bone: str


class PrintedPhantomSpec(Versioned):
    """``print/phantom_<kind>.json``: the divots, mount and label of a printable phantom."""

    SCHEMA_VERSION = 1
    kind: str
    seed: int
    stl: str
    ct_from_phantom: list[list[float]] = Field(description="4x4, print-bed phantom frame -> phantom CT LPS")
    registration_divots: dict[str, Divot]
    target_divots: dict[str, Divot]
    mount_phantom_from_marker: list[list[float]] = Field(description="4x4 pose of the mount: origin at the front-face centre, z out of the face")
    mount_screw_holes_phantom_mm: list[Vec3]
    label_code: str = Field(description="bits engraved left to right on the base front edge (1 = notch)")
    label_text: str
    bounding_box_mm: list[float] = Field(description="x, y, z extent of the print")
    volume_ml: float
    material_hu: float = Field(default=150.0, description="assumed CT number of the print material (PLA, dense infill)")
    printed_bones: list[str] = Field(default_factory=list, description="truth bones reproduced by the print (the rest is support)")


@dataclass(frozen=True)
class PrintedPhantom:
    """The printable model (phantom frame, mm) and its description."""

    mesh: pv.PolyData
    spec: PrintedPhantomSpec


def _to_manifold(mesh: pv.PolyData) -> mf.Manifold:
    tri = mesh.triangulate().clean()
    faces = np.asarray(tri.faces).reshape(-1, 4)[:, 1:]
    m = mf.Manifold(mf.Mesh(vert_properties=np.asarray(tri.points, dtype=np.float32), tri_verts=faces.astype(np.uint32)))
    if m.status() != mf.Error.NoError:
        raise InputError(None, f"surface is not a closed manifold ({m.status()})")
    return m


def _to_polydata(m: mf.Manifold) -> pv.PolyData:
    mesh = m.to_mesh()
    v = np.asarray(mesh.vert_properties)[:, :3].astype(np.float64)
    f = np.asarray(mesh.tri_verts).astype(np.int64)
    faces = np.hstack([np.full((len(f), 1), 3), f]).ravel()
    return pv.PolyData(v, faces)


def _box(lo, hi) -> mf.Manifold:
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    return mf.Manifold.cube(tuple((hi - lo).tolist())).translate(tuple(lo.tolist()))


def _frame_from_z(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """A rotation whose third column is unit ``z``."""
    z = z / np.linalg.norm(z)
    a = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(a, z)
    x /= np.linalg.norm(x)
    return np.column_stack([x, np.cross(z, x), z])


def _cone_cutter(apex: NDArray[np.float64], axis: NDArray[np.float64], depth: float, half_angle_deg: float) -> mf.Manifold:
    """Cone with its apex at ``apex`` opening along ``axis``; extends 3 mm beyond the surface."""
    h = depth + 3.0
    r = h * np.tan(np.radians(half_angle_deg))
    cone = mf.Manifold.cylinder(h, 0.0, r, 48)  # apex at the origin, opening towards +z
    rot = _frame_from_z(axis)
    m34 = np.hstack([rot, apex.reshape(3, 1)])
    return cone.transform(m34.tolist())


def _surface_anchor(f: S.SDF, start) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    p = S.project_to_surface(f, np.asarray(start, dtype=np.float64)[None], iterations=10)[0]
    n = S.gradient(f, p[None])[0]
    return p, n / np.linalg.norm(n)


def make_printable_knee(phantom, *, divot_depth_mm: float = 2.5, femur_top_mm: float = 110.0, tibia_bottom_mm: float = 80.0) -> PrintedPhantom:
    """Build the printable knee from a knee :class:`~orthonav.phantoms.render.SyntheticPhantom`.

    Parameters
    ----------
    phantom
        From :func:`orthonav.phantoms.knee.make_knee_phantom` (any size / seed).
    divot_depth_mm
        Depth of every conical divot below the bone surface (apex depth).
    femur_top_mm, tibia_bottom_mm
        Cut heights above / below the tibial knee centre (limb z), which set the print height.
    """
    if not 0.5 <= divot_depth_mm <= 5.0:
        raise InputError(None, f"divot depth must be in [0.5, 5] mm, got {divot_depth_mm}")
    truth = phantom.truth
    if truth.kind != "knee":
        raise InputError(None, f"make_printable_knee needs a knee phantom, got {truth.kind!r}")
    ct_from_limb = phantom.ct_from_limb
    limb_from_ct = invert(ct_from_limb)
    L = {k: apply(limb_from_ct, np.array(v)) for k, v in truth.landmarks_lps_mm.items()}
    fem_f = phantom.bones["femur"].sdf
    tib_f = phantom.bones["tibia"].sdf
    zj = float(L["tibial_knee_centre"][2])
    z_top = zj + femur_top_mm
    z_bot = zj - tibia_bottom_mm
    base_t = 6.0

    # bones in the limb frame, cropped by horizontal planes
    meshes = {b: phantom.truth_meshes[b].copy() for b in ("femur", "tibia")}
    for m in meshes.values():
        m.points = apply(limb_from_ct, np.asarray(m.points, dtype=np.float64))
    femur = _to_manifold(meshes["femur"]).trim_by_plane((0.0, 0.0, -1.0), -z_top)  # keep z <= z_top
    tibia = _to_manifold(meshes["tibia"]).trim_by_plane((0.0, 0.0, 1.0), z_bot - 1.0)  # keep z >= z_bot - 1

    # base plate under the tibia, pillar and arm to the femoral shaft (lateral = -x)
    tb = np.array(tibia.bounding_box()).reshape(2, 3)
    fb = np.array(femur.bounding_box()).reshape(2, 3)
    x_lat = min(tb[0, 0], fb[0, 0]) - 8.0
    x_med = max(tb[1, 0], fb[1, 0]) + 6.0
    y_ant = min(tb[0, 1], fb[0, 1]) - 6.0
    y_post = max(tb[1, 1], fb[1, 1]) + 6.0
    base = _box([x_lat - 14.0, y_ant, z_bot - base_t], [x_med, y_post, z_bot])
    arm_z0 = z_top - 28.0
    shaft_pts = np.asarray(meshes["femur"].points)
    band = shaft_pts[np.abs(shaft_pts[:, 2] - (arm_z0 + 10.0)) < 3.0]
    shaft_c = band.mean(axis=0)
    pillar = _box([x_lat - 14.0, shaft_c[1] - 7.0, z_bot - 1.0], [x_lat, shaft_c[1] + 7.0, arm_z0 + 20.0])
    arm = _box([x_lat - 1.0, shaft_c[1] - 7.0, arm_z0], [shaft_c[0], shaft_c[1] + 7.0, arm_z0 + 20.0])
    model = mf.Manifold.batch_boolean([femur, tibia, base, pillar, arm], mf.OpType.Add)

    # divots: anchors on the bone surfaces (limb frame), apex at depth along the inward normal
    fz = lambda dz: zj + dz  # noqa: E731
    kf = L["femoral_knee_centre"]
    reg_starts = [
        ("femur", [kf[0] + 5.0, kf[1] - 45.0, fz(75.0)]),
        ("femur", [kf[0] + 50.0, kf[1] - 20.0, fz(45.0)]),
        ("femur", [kf[0] - 50.0, kf[1] - 20.0, fz(38.0)]),
        ("tibia", [kf[0] + 35.0, kf[1] - 30.0, fz(-13.0)]),
        ("tibia", [kf[0] - 35.0, kf[1] - 30.0, fz(-15.0)]),
        ("tibia", [kf[0] + 12.0, kf[1] - 40.0, fz(-62.0)]),
    ]
    tgt_starts = [
        ("femur", [kf[0] + 25.0, kf[1] - 40.0, fz(18.0)]),
        ("femur", [kf[0] - 25.0, kf[1] - 40.0, fz(22.0)]),
        ("tibia", [kf[0] + 45.0, kf[1] + 5.0, fz(-12.0)]),
        ("tibia", [kf[0] - 10.0, kf[1] - 45.0, fz(-45.0)]),
    ]
    # phantom frame: limb frame translated so that the base bottom is z = 0
    limb_from_phantom = make_rigid(None, [0.0, 0.0, z_bot - base_t])
    phantom_from_limb = invert(limb_from_phantom)
    ct_from_phantom = ct_from_limb @ limb_from_phantom

    def divots(starts, prefix):
        out = {}
        cutters = []
        for i, (bone, start) in enumerate(starts):
            f = fem_f if bone == "femur" else tib_f
            s_pt, n = _surface_anchor(f, start)
            apex = s_pt - divot_depth_mm * n
            cutters.append(_cone_cutter(apex, n, divot_depth_mm, DIVOT_HALF_ANGLE_DEG))
            ap = apply(phantom_from_limb, apex)
            out[f"{prefix}_{i + 1}"] = Divot(
                apex_phantom_mm=tuple(float(x) for x in ap),
                apex_ct_lps_mm=tuple(float(x) for x in apply(ct_from_limb, apex)),
                axis_phantom=tuple(float(x) for x in n),
                depth_mm=divot_depth_mm,
                bone=bone,
            )
        return out, cutters

    reg, reg_cut = divots(reg_starts, "divot")
    tgt, tgt_cut = divots(tgt_starts, "target")

    # reference-marker mount on the anterior femoral shaft, below the arm
    mz = arm_z0 - 22.0
    ring = shaft_pts[np.abs(shaft_pts[:, 2] - mz) < 2.0]
    front = ring[np.argmin(ring[:, 1])]
    m_lo = np.array([front[0] - 10.0, front[1] - 10.0, mz - 12.0])
    m_hi = np.array([front[0] + 10.0, front[1] + 4.0, mz + 12.0])
    mount = _box(m_lo, m_hi)
    holes = [np.array([front[0], front[1] - 10.0, mz + dz]) for dz in (-6.0, 6.0)]
    hole_cut = [
        mf.Manifold.cylinder(10.0, 1.6, 1.6, 32).transform(np.hstack([_frame_from_z(np.array([0.0, 1.0, 0.0])), (h - np.array([0, 0.01, 0])).reshape(3, 1)]).tolist())
        for h in holes
    ]
    model = model + mount

    # identification code: 8 notches (1 mm deep) along the base's front edge
    code = format(int(truth.seed) % 256, "08b")
    notch = []
    for i, bit in enumerate(code):
        if bit == "1":
            x0 = x_lat - 10.0 + i * 6.0
            notch.append(_box([x0, y_ant - 1.0, z_bot - base_t + 1.5], [x0 + 3.0, y_ant + 1.0, z_bot - 1.5]))
    cut = mf.Manifold.batch_boolean(reg_cut + tgt_cut + hole_cut + notch, mf.OpType.Add)
    model = (model - cut).transform(np.hstack([np.eye(3), phantom_from_limb[:3, 3:4]]).tolist())
    if model.status() != mf.Error.NoError or model.is_empty():
        raise InputError(None, f"printable model construction failed ({model.status()})")

    mount_pose_limb = make_rigid(np.column_stack([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]), [front[0], front[1] - 10.0, mz])
    mesh = _to_polydata(model)
    bb = np.array(model.bounding_box()).reshape(2, 3)
    spec = PrintedPhantomSpec(
        kind="knee",
        seed=int(truth.seed),
        stl="phantom_knee.stl",
        ct_from_phantom=ct_from_phantom.tolist(),
        registration_divots=reg,
        target_divots=tgt,
        mount_phantom_from_marker=(phantom_from_limb @ mount_pose_limb).tolist(),
        mount_screw_holes_phantom_mm=[tuple(float(x) for x in apply(phantom_from_limb, h)) for h in holes],
        label_code=code,
        label_text=f"OrthoNav knee phantom seed {truth.seed}",
        bounding_box_mm=[float(x) for x in (bb[1] - bb[0])],
        volume_ml=float(model.volume() / 1000.0),
        printed_bones=["femur", "tibia"],
    )
    return PrintedPhantom(mesh=mesh, spec=spec)


# ------------------------------------------------------------------------------------------
# Hip and long bone: the same construction from a layout
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrintLayout:
    """What to print of a phantom, in its limb frame (mm, z up on the print bed).

    Attributes
    ----------
    bones
        Printed bone -> lowest kept limb z (the bone is cut by that horizontal plane), or None.
    base_top_z
        Limb z of the base plate's top face (the base is 6 mm thick, below it).
    pillars
        (top point (3,), half width): square pillars from the base up into the bone at the point.
    registration, targets
        (name, bone, start point (3,)): divot anchors are the start points projected onto the
        bone surface.
    mount
        (bone, start point (3,)): the reference-marker block sits on the projected point.
    """

    bones: dict[str, float | None]
    base_top_z: float
    pillars: list[tuple[NDArray[np.float64], float]]
    registration: list[tuple[str, str, NDArray[np.float64]]]
    targets: list[tuple[str, str, NDArray[np.float64]]]
    mount: tuple[str, NDArray[np.float64]]


def _hip_layout(phantom) -> PrintLayout:
    """The left hemipelvis and the left proximal femur (cut below the lesser trochanter), in
    their CT relationship: the femur stands on the base, pillars hold the ischium and pubis."""
    t = phantom.truth
    limb_from_ct = invert(phantom.ct_from_limb)
    s = float(t.parameters.get("scale", 1.0))
    L = {k: apply(limb_from_ct, np.array(v)) for k, v in t.landmarks_lps_mm.items()}
    h = L["femoral_head_centre_left"]
    g = float(t.parameters.get("symphysis_gap_mm", 6.0))
    z_cut = float(h[2] - 100.0 * s)
    def P(x: float, y: float, z: float) -> NDArray[np.float64]:  # pelvis frame, left side
        return np.array([x, y, z]) * s

    lt = [apply(limb_from_ct, np.array(t.targets_lps_mm[n])) for n in t.targets_lps_mm if n.startswith("target_lesser_trochanter_left")]
    targets = [
        ("target_asis_left", "hip_left", L["asis_left"] + np.array([0.0, -3.0, 0.0])),
        ("target_pubic_tubercle_left", "hip_left", L["pubic_tubercle_left"] + np.array([0.0, -3.0, 0.0])),
        ("target_greater_trochanter_left", "femur_left", h + P(62.0, 8.0, 22.0)),
        ("target_iliac_fossa_left", "hip_left", P(60.0, -15.0, 75.0)),
    ]
    if lt:
        targets.append(("target_lesser_trochanter_left", "femur_left", lt[0]))
    return PrintLayout(
        bones={"hip_left": None, "femur_left": z_cut},
        base_top_z=z_cut + 1.0,
        pillars=[(P(62.0, 20.0, -66.0), 6.0 * s), (np.array([0.5 * g + 8.0 * s, -34.0 * s, -30.0 * s]), 4.0 * s)],
        registration=[
            ("divot_1", "hip_left", P(118.0, 0.0, 98.0)),
            ("divot_2", "hip_left", P(128.0, -25.0, 40.0)),
            ("divot_3", "hip_left", P(90.0, 45.0, 85.0)),
            ("divot_4", "hip_left", P(60.0, -50.0, -5.0)),
            ("divot_5", "hip_left", P(62.0, 40.0, -76.0)),
            ("divot_6", "femur_left", h + P(70.0, 0.0, -30.0)),
            ("divot_7", "femur_left", h + P(40.0, -35.0, -80.0)),
        ],
        targets=targets,
        mount=("hip_left", apply(limb_from_ct, np.array(t.reference_mount_lps_mm))),
    )


def _long_bone_layout(phantom) -> PrintLayout:
    """The whole femur standing on its condyles, a pillar under the greater trochanter; the
    divots at the truth fiducial sites (registration) and truth targets."""
    t = phantom.truth
    limb_from_ct = invert(phantom.ct_from_limb)
    verts = apply(limb_from_ct, np.asarray(phantom.truth_meshes["femur"].points, dtype=np.float64))
    z_base = float(verts[:, 2].min() + 1.5)
    head = apply(limb_from_ct, np.array(t.landmarks_lps_mm["femoral_head_centre"]))
    prox = verts[verts[:, 2] > head[2] - 60.0]
    gt = prox[np.argmin(prox[:, 0])]  # most lateral proximal point (right femur: lateral = -x)
    reg = []
    for i, name in enumerate(t.fiducials_lps_mm):
        reg.append((f"divot_{i + 1}", t.fiducial_bones.get(name, "femur"), apply(limb_from_ct, np.array(t.fiducials_lps_mm[name]))))
    tgts = [(n, t.target_bones.get(n, "femur"), apply(limb_from_ct, np.array(p))) for n, p in t.targets_lps_mm.items()]
    tgts = [x for x in tgts if x[2][2] > z_base + 8.0]  # not at the base
    return PrintLayout(
        bones={"femur": None},
        base_top_z=z_base,
        pillars=[(gt + np.array([6.0, 0.0, -4.0]), 5.0)],
        registration=reg,
        targets=tgts,
        mount=("femur", apply(limb_from_ct, np.array(t.reference_mount_lps_mm))),
    )


def _build_printable(phantom, layout: PrintLayout, divot_depth_mm: float) -> PrintedPhantom:
    """Exact CSG (manifold3d) of a :class:`PrintLayout`: bones (cut), base, pillars, divots,
    a mount with two 3.2 mm screw holes and the seed engraved as notches on the base edge."""
    truth = phantom.truth
    kind = truth.kind
    ct_from_limb = phantom.ct_from_limb
    limb_from_ct = invert(ct_from_limb)
    parts = []
    for bone, z_lo in layout.bones.items():
        m = phantom.truth_meshes[bone].copy()
        m.points = apply(limb_from_ct, np.asarray(m.points, dtype=np.float64))
        man = _to_manifold(m)
        if z_lo is not None:
            man = man.trim_by_plane((0.0, 0.0, 1.0), float(z_lo))  # keep z >= z_lo
        parts.append(man)
    bb = np.array(mf.Manifold.batch_boolean(parts, mf.OpType.Add).bounding_box()).reshape(2, 3)
    base_t = 6.0
    zb = layout.base_top_z
    x0, x1 = bb[0, 0] - 6.0, bb[1, 0] + 6.0
    y0, y1 = bb[0, 1] - 6.0, bb[1, 1] + 6.0
    base = _box([x0, y0, zb - base_t], [x1, y1, zb])
    pillars = [_box([p[0] - hw, p[1] - hw, zb - 1.0], [p[0] + hw, p[1] + hw, p[2]]) for p, hw in layout.pillars]
    model = mf.Manifold.batch_boolean(parts + [base] + pillars, mf.OpType.Add)

    limb_from_phantom = make_rigid(None, [0.0, 0.0, zb - base_t])
    phantom_from_limb = invert(limb_from_phantom)
    ct_from_phantom = ct_from_limb @ limb_from_phantom

    def divots(starts):
        out, cutters = {}, []
        for name, bone, start in starts:
            s_pt, n = _surface_anchor(phantom.bones[bone].sdf, start)
            apex = s_pt - divot_depth_mm * n
            cutters.append(_cone_cutter(apex, n, divot_depth_mm, DIVOT_HALF_ANGLE_DEG))
            out[name] = Divot(
                apex_phantom_mm=tuple(float(x) for x in apply(phantom_from_limb, apex)),
                apex_ct_lps_mm=tuple(float(x) for x in apply(ct_from_limb, apex)),
                axis_phantom=tuple(float(x) for x in n),
                depth_mm=divot_depth_mm,
                bone=bone,
            )
        return out, cutters

    reg, reg_cut = divots(layout.registration)
    tgt, tgt_cut = divots(layout.targets)

    # reference-marker mount: a 20 x 20 mm block, 4 mm into the bone and 10 mm out of it
    m_bone, m_start = layout.mount
    mp, mn = _surface_anchor(phantom.bones[m_bone].sdf, m_start)
    rot = _frame_from_z(mn)
    block = mf.Manifold.cube((20.0, 20.0, 14.0)).translate((-10.0, -10.0, -4.0)).transform(np.hstack([rot, mp.reshape(3, 1)]).tolist())
    face = mp + 10.0 * mn
    holes = [face + dx * rot[:, 0] for dx in (-6.0, 6.0)]
    hole_rot = _frame_from_z(-mn)
    hole_cut = [mf.Manifold.cylinder(10.0, 1.6, 1.6, 32).transform(np.hstack([hole_rot, (hp + 0.01 * mn).reshape(3, 1)]).tolist()) for hp in holes]
    model = model + block

    code = format(int(truth.seed) % 256, "08b")
    notch = [_box([x0 + 4.0 + i * 6.0, y0 - 1.0, zb - base_t + 1.5], [x0 + 7.0 + i * 6.0, y0 + 1.0, zb - 1.5]) for i, bit in enumerate(code) if bit == "1"]
    cut = mf.Manifold.batch_boolean(reg_cut + tgt_cut + hole_cut + notch, mf.OpType.Add)
    model = (model - cut).transform(np.hstack([np.eye(3), phantom_from_limb[:3, 3:4]]).tolist())
    # snap to float32 (the STL's precision) and rebuild, then collapse sub-micron edges: thin
    # CSG slivers where a cone meets the surface would otherwise fold into non-manifold edges
    # when the STL is written
    model = _to_manifold(_to_polydata(model)).simplify(1e-3)
    if model.status() != mf.Error.NoError or model.is_empty():
        raise InputError(None, f"printable {kind} model construction failed ({model.status()})")
    mesh = _to_polydata(model)
    bbm = np.array(model.bounding_box()).reshape(2, 3)
    spec = PrintedPhantomSpec(
        kind=kind,
        seed=int(truth.seed),
        stl=f"phantom_{kind}.stl",
        ct_from_phantom=ct_from_phantom.tolist(),
        registration_divots=reg,
        target_divots=tgt,
        mount_phantom_from_marker=(phantom_from_limb @ make_rigid(rot, face)).tolist(),
        mount_screw_holes_phantom_mm=[tuple(float(x) for x in apply(phantom_from_limb, hp)) for hp in holes],
        label_code=code,
        label_text=f"OrthoNav {kind.replace('_', ' ')} phantom seed {truth.seed}",
        bounding_box_mm=[float(x) for x in (bbm[1] - bbm[0])],
        volume_ml=float(model.volume() / 1000.0),
        printed_bones=list(layout.bones),
    )
    return PrintedPhantom(mesh=mesh, spec=spec)


def make_printable(phantom, *, divot_depth_mm: float = 2.5) -> PrintedPhantom:
    """The printable model of any phantom kind ('knee', 'hip', 'long_bone').

    Knee: femur + tibia on a base (:func:`make_printable_knee`). Hip: the left hemipelvis and
    left proximal femur. Long bone: the whole femur standing on its condyles. All: conical
    divots of ``divot_depth_mm`` (registration and targets), a reference-marker mount, the
    seed engraved on the base; phantom frame = limb frame shifted so the base bottom is z = 0.
    """
    if not 0.5 <= divot_depth_mm <= 5.0:
        raise InputError(None, f"divot depth must be in [0.5, 5] mm, got {divot_depth_mm}")
    kind = phantom.truth.kind
    if kind == "knee":
        return make_printable_knee(phantom, divot_depth_mm=divot_depth_mm)
    layouts = {"hip": _hip_layout, "long_bone": _long_bone_layout}
    if kind not in layouts:
        raise InputError(None, f"no printable design for phantom kind {kind!r}; available: knee, {', '.join(layouts)}")
    return _build_printable(phantom, layouts[kind](phantom), divot_depth_mm)


__all__ = ["DIVOT_HALF_ANGLE_DEG", "Divot", "PrintLayout", "PrintedPhantom", "PrintedPhantomSpec", "make_printable", "make_printable_knee"]
