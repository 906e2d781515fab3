"""Synthetic pelvis CT (both hip bones, sacrum, both proximal femurs) with ground truth.

Construction ("pelvis frame", mm: x towards the patient's left, y posterior, z superior;
origin midway between the two hip joint centres; the frame ``ct_from_limb`` of the truth):

* Hip bone (per side, mirror images): an acetabular block (a ball cut by the acetabular
  rim plane, so the opening faces the socket axis), an iliac wing (a thin ellipsoid from the
  sacro-iliac joint to the anterior superior iliac spine), an ASIS bump, an iliac body, the
  superior pubic ramus with a pubic tubercle bump and the symphyseal body, the inferior ramus,
  the ischium and the ischial tuberosity (which close the obturator ring). The socket is
  carved by a capsule along the socket axis: a hemisphere of radius
  ``head_radius + joint_gap`` around the acetabulum centre, open laterally.
* The socket axis has the construction inclination / anteversion relative to the nominal
  anterior pelvic plane (the plane y = -50 mm that the ASIS and pubic tubercle bumps touch).
* Sacrum: a tilted ellipsoid between the iliac wings whose width is fitted so that the
  sacro-iliac gap is ``si_gap_mm``. The pubic bodies are ``symphysis_gap_mm`` apart.
* Femur (per side): head sphere concentric with the socket (joint gap = socket radius -
  head radius), a neck at ``neck_shaft_deg`` to the shaft and ``femoral_anteversion_deg``
  anteverted, greater and lesser trochanters and the proximal shaft.

Truth landmarks (docs/anatomy.md, "Hip"): the femoral head centres and the acetabulum
centres are the construction sphere centres; ``asis_*`` and ``pubic_tubercle_*`` are
computed numerically as the points where the anterior pelvic plane touches the surface
(extremes along the plane's normal, iterated); the truth angles follow from those landmarks
and the socket axes (:func:`hip_angles`). Bones use TotalSegmentator class names
(``hip_left``, ``hip_right``, ``sacrum``, ``femur_left``, ``femur_right``).

This module gives the hip's parts (parameters, SDFs, landmarks, beads; :data:`HIP_RECIPE`)
to the shared phantom recipe (:mod:`orthonav.phantoms.recipe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError
from orthonav.core.transforms import apply_vector, rotation_about_axis
from orthonav.core.vectors import unit

from . import sdf as S
from .probes import ellipsoid_samples, extreme_point, min_gap, secant_fit, surface_point, surface_points, surface_samples
from .recipe import AnatomyRecipe, AnatomyTruth, Intensity, PhantomGeometry, Pose, make_phantom
from .render import BoneSpec, SyntheticPhantom, closed_limb_meshes

LABELS = {"hip_left": 1, "hip_right": 2, "sacrum": 3, "femur_left": 4, "femur_right": 5}
SIDES = {"left": 1.0, "right": -1.0}  # sign of x (patient left = +x, as in LPS)

X = np.array([1.0, 0.0, 0.0])
Y = np.array([0.0, 1.0, 0.0])
Z = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class HipParameters:
    """Construction knobs (mm, degrees). ``small`` picks coarser voxels and wider gaps."""

    hip_half_width_mm: float = 85.0
    head_radius_mm: float = 23.0
    joint_gap_mm: float = 3.5
    inclination_deg: float = 42.0
    anteversion_deg: float = 18.0
    neck_shaft_deg: float = 130.0
    femoral_anteversion_deg: float = 12.0
    neck_length_mm: float = 48.0
    shaft_length_mm: float = 170.0
    si_gap_mm: float = 3.0
    symphysis_gap_mm: float = 6.0
    scale: float = 1.0
    spacing_mm: tuple[float, float, float] = (1.2, 1.2, 2.0)
    mesh_step_mm: float = 1.0
    bead_radius_mm: float = 2.0
    bead_standoff_mm: float = 1.0
    noise_hu: float = 20.0
    psf_sigma_vox: float = 0.6
    pose_jitter_deg: float = 0.0


SMALL = {"spacing_mm": (1.8, 1.8, 2.4), "joint_gap_mm": 5.0, "si_gap_mm": 4.0, "symphysis_gap_mm": 8.0, "shaft_length_mm": 120.0, "mesh_step_mm": 1.5, "bead_radius_mm": 3.0}


def hip_angles(landmarks_lps_mm: Mapping[str, ArrayLike], socket_axes_lps: Mapping[str, ArrayLike]) -> dict[str, float]:
    """Radiographic acetabular inclination and anteversion (Murray 1993) relative to the
    anterior pelvic plane (APP), as defined in docs/anatomy.md ("Hip").

    Parameters
    ----------
    landmarks_lps_mm
        Needs ``asis_left``, ``asis_right``, ``pubic_tubercle_left``, ``pubic_tubercle_right``.
    socket_axes_lps
        ``{'left': (3,), 'right': (3,)}`` unit acetabular axes pointing out of the socket.

    Returns
    -------
    ``acetabular_inclination_<side>``, ``acetabular_anteversion_<side>`` in degrees.
    """
    L = {k: np.asarray(v, dtype=np.float64).reshape(3) for k, v in landmarks_lps_mm.items()}
    missing = [k for k in ("asis_left", "asis_right", "pubic_tubercle_left", "pubic_tubercle_right") if k not in L]
    if missing:
        raise InputError(None, f"hip angles need landmarks {', '.join(missing)}")
    ml, ant, sup = app_frame(L)
    out: dict[str, float] = {}
    for side, sgn in SIDES.items():
        if side not in socket_axes_lps:
            continue
        a = unit(np.asarray(socket_axes_lps[side], dtype=np.float64).reshape(3), f"socket axis ({side})")
        lat = sgn * ml
        out[f"acetabular_inclination_{side}"] = float(np.degrees(np.arctan2(a @ lat, -(a @ sup))))
        out[f"acetabular_anteversion_{side}"] = float(np.degrees(np.arcsin(np.clip(a @ ant, -1.0, 1.0))))
    return out


def app_frame(L: Mapping[str, NDArray[np.float64]]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Unit (medio-lateral towards the left, anterior, superior) axes of the anterior pelvic
    plane: through both ASIS and the midpoint of the pubic tubercles."""
    al, ar = np.asarray(L["asis_left"], float), np.asarray(L["asis_right"], float)
    mid = 0.5 * (np.asarray(L["pubic_tubercle_left"], float) + np.asarray(L["pubic_tubercle_right"], float))
    ml = unit(al - ar, "ASIS right -> left")
    # normal of the plane (asis_right, asis_left, mid); anterior = away from the pelvis body,
    # i.e. the side the ASIS-midpoint -> pubic midpoint vector turns to (right-handed, ml first)
    down = mid - 0.5 * (al + ar)
    ant = unit(np.cross(down, ml), "anterior pelvic plane normal")
    sup = np.cross(ant, ml)
    return ml, ant, unit(sup, "anterior pelvic plane superior axis")


@dataclass(frozen=True)
class HipAnatomy:
    """The constructed pelvis (pelvis frame)."""

    bones: dict[str, BoneSpec]
    envelope: S.SDF
    grid_bounds: NDArray[np.float64]
    acetabulum_centres: dict[str, NDArray[np.float64]]
    socket_axes: dict[str, NDArray[np.float64]]
    socket_radius: float
    neck_bases: dict[str, NDArray[np.float64]]
    shaft_dirs: dict[str, NDArray[np.float64]]
    lateral_dirs: dict[str, NDArray[np.float64]]
    bump_centres: dict[str, NDArray[np.float64]]


def _cut_ball(centre: NDArray[np.float64], radius: float, normal: NDArray[np.float64], k: float) -> S.SDF:
    """A ball cut by the plane through its centre with outward ``normal`` (the half facing
    away from ``normal`` is kept)."""
    ball = S.sphere(centre, radius)

    def f(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return S.smax(ball(p), (p - centre) @ normal, k)

    return S.with_bound(f, *ball.bsphere)  # smax(a, b) >= a: the ball's bound holds


def _box_of(points: list, pad: float) -> NDArray[np.float64]:
    a = np.array(points, dtype=np.float64)
    return np.stack([a.min(axis=0) - pad, a.max(axis=0) + pad])


def _hip_bone(prm: HipParameters, sx: float, symphysis_dx: float = 0.0):
    """One hip bone (side sign ``sx``): SDF, socket centre and axis, bump centres, bounds."""
    s = prm.scale

    def P(x: float, y: float, z: float) -> NDArray[np.float64]:
        return np.array([sx * x * s, y * s, z * s])

    c = P(prm.hip_half_width_mm, 0.0, 0.0)
    ri, ra = np.radians(prm.inclination_deg), np.radians(prm.anteversion_deg)
    lat, ant, sup = sx * X, -Y, Z
    a = np.sin(ra) * ant + np.cos(ra) * (np.sin(ri) * lat - np.cos(ri) * sup)
    r_s = prm.head_radius_mm * s + prm.joint_gap_mm
    r_o = r_s + 9.0 * s
    p_si, p_as = P(36.0, 48.0, 62.0), P(110.0, -38.0, 66.0)
    u = unit(p_as - p_si)
    up = unit(np.cos(np.radians(20.0)) * Z + np.sin(np.radians(20.0)) * sx * X)
    v = unit(up - (up @ u) * u)
    w = np.cross(u, v)
    wing_c = 0.5 * (p_si + p_as) + 8.0 * s * v
    half = 0.5 * float(np.linalg.norm(p_as - p_si))
    asis_c = P(114.0, -41.0, 66.0)
    pt_c = P(22.0, -43.0, -20.0)
    body_c = np.array([sx * (0.5 * prm.symphysis_gap_mm + 8.0 * s + symphysis_dx), -34.0 * s, -30.0 * s])
    parts = [
        _cut_ball(c, r_o, a, 4.0 * s),
        S.ellipsoid(wing_c, [half + 6.0 * s, 44.0 * s, 6.5 * s], np.column_stack([u, v, w])),
        S.round_cone(c + P(-10.0, 10.0, 12.0), P(52.0, 30.0, 58.0), 18.0 * s, 12.0 * s),  # iliac body
        S.sphere(asis_c, 9.0 * s),
        S.round_cone(c + P(-22.0, -20.0, -14.0), body_c + np.array([0.0, 0.0, 6.0 * s]), 11.0 * s, 9.0 * s),  # superior ramus
        S.sphere(pt_c, 7.0 * s),
        S.ellipsoid(body_c, [8.0 * s, 9.0 * s, 17.0 * s]),
        S.round_cone(body_c + np.array([0.0, 2.0 * s, -10.0 * s]), P(58.0, 12.0, -62.0), 7.0 * s, 8.0 * s),
        S.round_cone(P(72.0, 28.0, -20.0), P(62.0, 20.0, -62.0), 13.0 * s, 11.0 * s),
        S.ellipsoid(P(62.0, 20.0, -66.0), [12.0 * s, 14.0 * s, 10.0 * s]),
    ]
    bone = S.union(parts, k=8.0 * s)
    socket = S.capsule(c, c + 90.0 * s * a, r_s)
    f = S.subtract(bone, socket, 2.0 * s)
    bounds = _box_of([c, p_si, p_as, asis_c, pt_c, body_c, P(62.0, 20.0, -66.0), wing_c + (half + 6.0 * s) * u, wing_c - (half + 6.0 * s) * u, wing_c + 44.0 * s * v], 30.0 * s)
    return f, c, a, r_s, {"asis": asis_c, "pubic_tubercle": pt_c, "wing_top": wing_c + 40.0 * s * v}, bounds


def _proximal_femur(prm: HipParameters, sx: float, head: NDArray[np.float64]):
    """One proximal femur: SDF, neck base, distal shaft direction, lateral direction, bounds."""
    s = prm.scale
    tilt = np.radians(7.0)
    u_d = np.array([-sx * np.sin(tilt), 0.0, -np.cos(tilt)])  # distal, the shaft's distal end medial
    l_perp = unit(sx * X - (sx * X @ u_d) * u_d)
    nsa = np.radians(180.0 - prm.neck_shaft_deg)
    d0 = np.cos(nsa) * u_d + np.sin(nsa) * l_perp  # head -> neck base, before anteversion
    cands = [rotation_about_axis(u_d, sg * np.radians(prm.femoral_anteversion_deg)) @ d0 for sg in (1.0, -1.0)]
    d = cands[0] if cands[0][1] > 0 else cands[1]  # head -> base goes posterior: the neck is anteverted
    post = unit(Y - (Y @ u_d) * u_d)
    b = head + prm.neck_length_mm * s * d
    r_h = prm.head_radius_mm * s
    parts = [
        S.round_cone(b - 20.0 * s * u_d, b + prm.shaft_length_mm * s * u_d, 17.0 * s, 13.5 * s),
        S.sphere(head, r_h),
        S.round_cone(head, b, 0.58 * r_h, 16.0 * s),
        S.ellipsoid(b + 16.0 * s * l_perp - 14.0 * s * u_d + 6.0 * s * post, [12.0 * s, 14.0 * s, 20.0 * s]),
        S.sphere(b + 32.0 * s * u_d - 11.0 * s * l_perp + 9.0 * s * post, 8.0 * s),
    ]
    f = S.union(parts, k=6.0 * s)
    bounds = _box_of([head, b + 16.0 * s * l_perp - 34.0 * s * u_d, b + prm.shaft_length_mm * s * u_d, b + 30.0 * s * l_perp], 28.0 * s)
    return f, b, u_d, l_perp, bounds


def build_hip(prm: HipParameters) -> HipAnatomy:
    """Construct the pelvis SDFs in the pelvis frame from ``prm``."""
    s = prm.scale
    bones: dict[str, BoneSpec] = {}
    cs, axes, bases, shafts, lats, bumps = {}, {}, {}, {}, {}, {}
    hip_sdfs = {}
    r_s = 0.0
    # symphysis: shift the pubic bodies medio-laterally until the gap is symphysis_gap_mm
    lo_sym = np.array([-30.0 * s, -60.0 * s, -60.0 * s])
    hi_sym = np.array([30.0 * s, -10.0 * s, 0.0])

    def sym_gap(dx: float) -> float:
        pts = surface_samples(_hip_bone(prm, 1.0, dx)[0], lo_sym, hi_sym, 0.8 * s)
        return min_gap(pts, _hip_bone(prm, -1.0, dx)[0])

    dx, _g = secant_fit(sym_gap, prm.symphysis_gap_mm, 0.0, 2.0)
    for side, sx in SIDES.items():
        f, c, a, r_s, bump, bounds = _hip_bone(prm, sx, dx)
        hip_sdfs[side] = f
        cs[side], axes[side] = c, a
        for k, v in bump.items():
            bumps[f"{k}_{side}"] = v

        def hip_t(p: NDArray[np.float64]) -> NDArray[np.float64]:
            return np.full(len(p), 2.2 * s)

        bones[f"hip_{side}"] = BoneSpec(f"hip_{side}", LABELS[f"hip_{side}"], f, bounds, hip_t)
    for side, sx in SIDES.items():
        f, b, u_d, l_perp, bounds = _proximal_femur(prm, sx, cs[side])
        bases[side], shafts[side], lats[side] = b, u_d, l_perp
        z_b = float(b[2])

        def fem_t(p: NDArray[np.float64], z_b: float = z_b) -> NDArray[np.float64]:
            q = np.clip((z_b - 20.0 * s - p[:, 2]) / (70.0 * s), 0.0, 1.0)
            return 1.5 * s + 2.0 * s * q * q * (3 - 2 * q)

        bones[f"femur_{side}"] = BoneSpec(f"femur_{side}", LABELS[f"femur_{side}"], f, bounds, fem_t)

    # sacrum: a tilted ellipsoid whose half-width is fitted to the sacro-iliac gap
    sac_c = np.array([0.0, 50.0 * s, 48.0 * s])
    r_sac = rotation_about_axis(X, np.radians(-30.0))  # long axis: top anterior, tip posterior

    def sac_semi(wx: float) -> NDArray[np.float64]:
        return np.array([wx, 20.0 * s, 58.0 * s])

    def si_gap(wx: float) -> float:
        return min_gap(ellipsoid_samples(sac_c, sac_semi(wx), r_sac, n=140), hip_sdfs["left"])

    wx, _g = secant_fit(si_gap, prm.si_gap_mm, 30.0 * s, 34.0 * s, iterations=12)
    sac = S.ellipsoid(sac_c, sac_semi(wx), r_sac)

    def sac_t(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.full(len(p), 1.2 * s)

    bones["sacrum"] = BoneSpec("sacrum", LABELS["sacrum"], sac, _box_of([sac_c], 62.0 * s), sac_t)
    bones = {k: bones[k] for k in LABELS}

    lo = np.min([b.bounds_limb_mm[0] for b in bones.values()], axis=0)
    hi = np.max([b.bounds_limb_mm[1] for b in bones.values()], axis=0)
    env_c = np.array([0.0, 12.0 * s, 0.5 * (lo[2] + hi[2])])
    env_semi = np.array([178.0 * s, 122.0 * s])
    envelope = S.elliptic_slab(env_c, env_semi, 0.5 * (hi[2] - lo[2]) + 80.0)
    grid_bounds = np.stack(
        [
            np.array([env_c[0] - env_semi[0] - 6.0, env_c[1] - env_semi[1] - 6.0, lo[2] + 16.0 * s]),
            np.array([env_c[0] + env_semi[0] + 6.0, env_c[1] + env_semi[1] + 6.0, hi[2] - 16.0 * s]),
        ]
    )
    return HipAnatomy(bones, envelope, grid_bounds, cs, axes, r_s, bases, shafts, lats, bumps)


def hip_landmarks_limb(anat: HipAnatomy, meshes_limb: Mapping[str, NDArray[np.float64]]) -> dict[str, NDArray[np.float64]]:
    """docs/anatomy.md hip landmarks in the pelvis frame.

    ``asis_*`` / ``pubic_tubercle_*``: extremes of the hip bone surface along the anterior
    normal of the APP within 20 mm / 14 mm of the prominence; the APP is recomputed from the
    four points until it no longer moves (the plane then touches all four prominences).
    """
    L: dict[str, NDArray[np.float64]] = {}
    for side in SIDES:
        L[f"femoral_head_centre_{side}"] = anat.acetabulum_centres[side].copy()
        L[f"acetabulum_centre_{side}"] = anat.acetabulum_centres[side].copy()
    s_reg = {"asis": 20.0, "pubic_tubercle": 14.0}
    ant = -Y
    for _ in range(8):
        for side in SIDES:
            verts = meshes_limb[f"hip_{side}"]
            f = anat.bones[f"hip_{side}"].sdf
            for bump, rad in s_reg.items():
                near = np.linalg.norm(verts - anat.bump_centres[f"{bump}_{side}"], axis=1) < rad * 1.0
                L[f"{bump}_{side}"] = extreme_point(f, verts, ant, near)
        _ml, ant_new, _sup = app_frame(L)
        done = np.linalg.norm(ant_new - ant) < 1e-8
        ant = ant_new
        if done:
            break
    return L


def _fiducials_targets_limb(anat: HipAnatomy, s: float, bead_r: float, standoff: float, shaft_mm: float):
    """Bead centres (surface point + (radius + standoff) along the outward normal), targets on
    the bone surfaces and the reference mount (iliac crest, left), all in the pelvis frame."""
    c, a, b, u_d, lp = anat.acetabulum_centres, anat.socket_axes, anat.neck_bases, anat.shaft_dirs, anat.lateral_dirs
    bead_starts = [
        ("hip_left", np.array([118.0, 0.0, 98.0]) * s),
        ("hip_right", np.array([-120.0, 8.0, 78.0]) * s),
        ("sacrum", np.array([12.0, 90.0, 30.0]) * s),
        ("hip_left", np.array([45.0, -55.0, -12.0]) * s),
        ("femur_left", b["left"] + 40.0 * s * lp["left"] + 5.0 * s * u_d["left"]),
        ("hip_right", np.array([-62.0, 40.0, -76.0]) * s),
        ("femur_right", b["right"] + 0.55 * shaft_mm * u_d["right"] + 30.0 * s * lp["right"]),
        ("femur_left", b["left"] + (shaft_mm - 30.0 * s) * u_d["left"] - 30.0 * s * Y),
    ]
    r_s = anat.socket_radius
    target_starts = [
        ("target_acetabular_dome_left", "hip_left", c["left"] - (r_s - 1.0) * a["left"]),
        ("target_femoral_head_right", "femur_right", c["right"] - (r_s - 1.0) * a["right"]),
        ("target_greater_trochanter_right", "femur_right", b["right"] - 45.0 * s * u_d["right"] + 20.0 * s * lp["right"]),
        ("target_lesser_trochanter_left", "femur_left", b["left"] + 32.0 * s * u_d["left"] - 25.0 * s * lp["left"] + 12.0 * s * Y),
        ("target_pubic_body_right", "hip_right", np.array([-20.0, -60.0, -40.0]) * s),
        ("target_sacral_promontory", "sacrum", np.array([0.0, 10.0, 110.0]) * s),
    ]
    anchors = surface_points({n: b.sdf for n, b in anat.bones.items()}, list(bead_starts) + [(bn, p) for _n, bn, p in target_starts])
    beads = [(bone, p + (bead_r + standoff) * n) for (bone, _s), (p, n) in zip(bead_starts, anchors[: len(bead_starts)])]
    targets = [(name, bone, p) for (name, bone, _s), (p, _n) in zip(target_starts, anchors[len(bead_starts) :])]
    mount = surface_point(anat.bones["hip_left"].sdf, anat.bump_centres["wing_top_left"] + np.array([0.0, 0.0, 20.0 * s]))
    return beads, targets, mount


@lru_cache(maxsize=4)
def hip_geometry(prm: HipParameters) -> PhantomGeometry:
    """Everything that does not depend on the seed, the pose or the CT grid (cached; pelvis
    frame). ``anatomy`` is the :class:`HipAnatomy`."""
    anat = build_hip(prm)
    meshes = closed_limb_meshes(anat.bones, prm.mesh_step_mm)
    verts = {name: np.asarray(m.points, dtype=np.float64) for name, m in meshes.items()}
    L = hip_landmarks_limb(anat, verts)
    gaps = {}
    for side in SIDES:
        hip_f = anat.bones[f"hip_{side}"].sdf
        gaps[f"femur_hip_{side}"] = min_gap(verts[f"femur_{side}"], hip_f)
        gaps[f"sacrum_hip_{side}"] = min_gap(verts["sacrum"], hip_f)
    gaps["hip_left_hip_right"] = min_gap(verts["hip_left"], anat.bones["hip_right"].sdf)
    beads, targets, mount = _fiducials_targets_limb(anat, prm.scale, prm.bead_radius_mm, prm.bead_standoff_mm, prm.shaft_length_mm * prm.scale)
    return PhantomGeometry(
        anatomy=anat,
        bones=dict(anat.bones),
        envelope=anat.envelope,
        grid_bounds_limb_mm=anat.grid_bounds,
        meshes_limb=meshes,
        landmarks_limb=L,
        beads=beads,
        targets=targets,
        mount=mount,
        gaps_mm=gaps,
    )


def _check(prm: HipParameters) -> None:
    if prm.scale <= 0.5 or prm.scale > 1.5:
        raise InputError(None, f"scale must be in (0.5, 1.5], got {prm.scale}")
    if not 100.0 <= prm.shaft_length_mm <= 300.0:
        raise InputError(None, f"shaft_length_mm must be in [100, 300], got {prm.shaft_length_mm}")
    if not 2.0 <= prm.joint_gap_mm <= 8.0:
        raise InputError(None, f"joint_gap_mm must be in [2, 8], got {prm.joint_gap_mm}")
    if not (20.0 <= prm.inclination_deg <= 65.0 and -10.0 <= prm.anteversion_deg <= 35.0):
        raise InputError(None, f"inclination_deg must be in [20, 65] and anteversion_deg in [-10, 35], got {prm.inclination_deg}, {prm.anteversion_deg}")


def _truth(geo: PhantomGeometry, ct_from_limb: NDArray[np.float64], landmarks_lps: dict[str, NDArray[np.float64]]) -> AnatomyTruth:
    anat: HipAnatomy = geo.anatomy
    axes_lps = {side: apply_vector(ct_from_limb, anat.socket_axes[side]) for side in SIDES}
    params: dict = {"socket_radius_mm": float(anat.socket_radius)}
    for side in SIDES:
        params[f"acetabular_axis_{side}_lps"] = [float(x) for x in axes_lps[side]]
    return AnatomyTruth(angles_deg=hip_angles(landmarks_lps, axes_lps), parameters=params)


#: The hip's parts of the phantom recipe. Pose: a supine pelvis with a few degrees of
#: arbitrary rotation, off-centre.
HIP_RECIPE = AnatomyRecipe(
    kind="hip",
    knob_name="hip",
    labels=LABELS,
    side="both",
    table_side=None,
    parameters=HipParameters,
    small=SMALL,
    check=_check,
    geometry=hip_geometry,
    pose=Pose(rz_deg=-6.0, rx_deg=5.0, ry_deg=-3.0, translation_mm=(14.0, -22.0, -160.0), jitter_seed_offset=20_000),
    grid_margin_mm=2.0,
    intensity=Intensity(cortical_hu=1450.0, cortical_amplitude_hu=200.0, cortical_period_mm=70.0, marrow_hu=280.0, marrow_amplitude_hu=70.0),
    truth=_truth,
)


def make_hip_phantom(*, seed: int = 0, small: bool = False, **knobs: object) -> SyntheticPhantom:
    """Build the synthetic pelvis phantom (both hips, sacrum, both proximal femurs).

    Parameters
    ----------
    seed
        Noise and intensity variation (and the pose, when ``pose_jitter_deg`` > 0).
    small
        Coarser voxels (1.8 x 1.8 x 2.4 mm), wider gaps (>= 2 voxels) and a shorter
        femoral shaft: fast, for tests.
    **knobs
        Any :class:`HipParameters` field, e.g. ``inclination_deg=45``, ``scale=0.9``,
        ``noise_hu=30``, ``pose_jitter_deg=5``.

    Returns
    -------
    SyntheticPhantom
        ``truth.kind == 'hip'``; ``truth.angles_deg`` holds the acetabular inclination and
        anteversion per side; ``truth.parameters['acetabular_axis_<side>_lps']`` the unit
        socket axes (pointing out of the socket) they are computed from.
    """
    return make_phantom(HIP_RECIPE, seed=seed, small=small, knobs=knobs)


__all__ = ["HIP_RECIPE", "LABELS", "SIDES", "SMALL", "HipAnatomy", "HipParameters", "app_frame", "build_hip", "hip_angles", "hip_geometry", "hip_landmarks_limb", "make_hip_phantom"]
