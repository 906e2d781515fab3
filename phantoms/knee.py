"""Synthetic knee CT (right leg, hip to ankle) with femur, tibia, fibula, patella and truth.

Construction (limb frame, mm: x medial, y posterior, z superior; a right leg):

* Femur: head sphere on a neck, a tapered shaft along the anatomical axis, a distal
  metaphysis, an anterior (trochlear) block with a trochlear groove, two ellipsoidal condyles
  with an intercondylar notch, and medial / lateral epicondyle bumps. The distal femur is
  built in a femoral frame whose z axis is the femoral mechanical axis, tilted
  ``femur_tilt_deg`` with the hip lateral of the knee.
* Tibia: a plateau block whose top plane is tilted by ``90 - mpta_deg`` (varus) and by
  ``slope_deg`` (falls posteriorly) relative to the tibial mechanical axis, with a shallow
  conical dish in each plateau (the dish apex is the plateau centre), a tibial spine, a
  metaphysis, a shaft, a distal block and a medial malleolus. The tibial mechanical axis is
  tilted ``femur_tilt_deg + varus_deg`` so that hka = 180 - varus_deg.
* Fibula: head (placed so that its gap to the tibia is ``fibula_gap_mm``), shaft and lateral
  malleolus. Patella: an ellipsoid anterior to the trochlea, ``patella_gap_mm`` away.
* Femur and tibia are separated by ``joint_gap_mm`` (cartilage = soft tissue).

Truth landmarks follow ``docs/anatomy.md``: where a landmark is an extreme point of a surface
it is computed numerically on the analytic surface (dense search + Newton projection), not
assumed from the construction; the truth angles are computed from the truth landmarks with
:func:`orthonav.phantoms.angles.knee_angles`.

This module gives the knee's parts (parameters, SDFs, landmarks, beads; :data:`KNEE_RECIPE`)
to the shared phantom recipe (:mod:`orthonav.phantoms.recipe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import InputError
from orthonav.core.transforms import apply_vector, rotation_about_axis

from . import sdf as S
from .angles import knee_angles
from .probes import ellipsoid_samples, extreme_point, frame, min_gap, secant_fit, surface_point, surface_points, surface_samples
from .recipe import AnatomyRecipe, AnatomyTruth, Intensity, PhantomGeometry, Pose, make_phantom
from .render import BoneSpec, SyntheticPhantom, closed_limb_meshes

LABELS = {"femur": 1, "tibia": 2, "fibula": 3, "patella": 4}

X = np.array([1.0, 0.0, 0.0])
Y = np.array([0.0, 1.0, 0.0])


@dataclass(frozen=True)
class KneeParameters:
    """Construction knobs (mm, degrees). ``small`` picks coarser voxels and wider gaps."""

    femur_length_mm: float = 430.0
    tibia_length_mm: float = 370.0
    femur_tilt_deg: float = 3.0
    varus_deg: float = 4.7
    mpta_deg: float = 84.5
    slope_deg: float = 5.4
    ldfa_deg: float = 88.0
    posterior_condyle_offset_mm: float = 3.1
    joint_gap_mm: float = 5.0
    fibula_gap_mm: float = 2.0
    patella_gap_mm: float = 3.5
    scale: float = 1.0
    spacing_mm: tuple[float, float, float] = (0.9, 0.9, 2.0)
    mesh_step_mm: float = 1.0
    bead_radius_mm: float = 2.0
    bead_standoff_mm: float = 1.0
    noise_hu: float = 20.0
    psf_sigma_vox: float = 0.6
    pose_jitter_deg: float = 0.0
    flexion_deg: float = 0.0
    metal_artefact_hu: float = 0.0


#: The test phantom: coarser voxels, and joint gaps of >= 3 voxels so that a threshold-based
#: segmentation can separate every bone at this resolution (the full phantom keeps realistic gaps).
SMALL = dict(spacing_mm=(1.2, 1.2, 2.4), joint_gap_mm=6.5, fibula_gap_mm=4.0, patella_gap_mm=4.5, mesh_step_mm=1.5, bead_radius_mm=3.0)


def _ry(deg: float) -> NDArray[np.float64]:
    return rotation_about_axis(Y, np.radians(deg))


def _rx(deg: float) -> NDArray[np.float64]:
    return rotation_about_axis(X, np.radians(deg))


def _thickness_profile(z_lo: float, z_hi: float, t_end: float, t_mid: float):
    """Cortical thickness along a bone: ``t_end`` at the ends rising to ``t_mid`` mid-shaft."""
    zc = 0.5 * (z_lo + z_hi)
    half = 0.5 * (z_hi - z_lo)

    def t(p: NDArray[np.float64]) -> NDArray[np.float64]:
        s = np.clip(1.0 - np.abs(p[:, 2] - zc) / (0.7 * half), 0.0, 1.0)
        return t_end + (t_mid - t_end) * s * s * (3 - 2 * s)

    return t


@dataclass(frozen=True)
class KneeAnatomy:
    """The constructed limb (limb frame)."""

    bones: dict[str, BoneSpec]
    envelope: S.SDF
    envelope_bounds: NDArray[np.float64]
    head_centre: NDArray[np.float64]
    femur_rot: NDArray[np.float64]
    femur_origin: NDArray[np.float64]
    tibia_rot: NDArray[np.float64]
    tibia_origin: NDArray[np.float64]
    plateau_rot: NDArray[np.float64]
    plateau_origin: NDArray[np.float64]
    plateau_centres_local: NDArray[np.float64]
    gaps_mm: dict[str, float]


def _dish(depth: float, radius: float, rounding: float, centre_uv: tuple[float, float]):
    """Conical plateau dish (depth at the apex, zero at ``radius``), apex rounded by ``rounding``."""
    cu, cv = centre_uv

    def d(q: NDArray[np.float64]) -> NDArray[np.float64]:
        rho = np.sqrt((q[:, 0] - cu) ** 2 + (q[:, 1] - cv) ** 2 + rounding**2) - rounding
        return depth * np.clip(1.0 - rho / radius, 0.0, 1.0)

    return d


def build_knee(prm: KneeParameters) -> KneeAnatomy:
    """Construct the limb's SDFs in the limb frame from ``prm``."""
    s = prm.scale
    # ---- femur frame: origin = nominal femoral knee centre, z = mechanical axis ----
    r_f = _ry(-prm.femur_tilt_deg)  # z_F tilted with its top lateral (-x)
    o_f = np.array([0.0, 0.0, 25.0 * s])
    F = frame(r_f, o_f)
    head = F([0.0, 0.0, prm.femur_length_mm])
    lat = -X  # lateral direction for a right leg
    ldfa_rise = 44.0 * s * np.tan(np.radians(90.0 - prm.ldfa_deg))  # lateral distal point higher by this
    pco = prm.posterior_condyle_offset_mm

    def femur_parts(z_shift: float):
        Fz = frame(r_f, o_f + np.array([0.0, 0.0, z_shift]))
        cm = Fz([22.0 * s, 3.0 * s, -3.0 * s])
        cl = Fz([-22.0 * s, 3.0 * s - pco, -3.0 * s + ldfa_rise])
        distal = S.union(
            [
                S.ellipsoid(cm, [12.5 * s, 27.0 * s, 22.0 * s], r_f),
                S.ellipsoid(cl, [12.0 * s, 27.0 * s, 22.0 * s], r_f),
                S.ellipsoid(Fz([0.0, -6.0 * s, 8.0 * s]), [27.0 * s, 15.0 * s, 20.0 * s], r_f),
                S.sphere(Fz([37.0 * s, 3.0 * s, 4.0 * s]), 7.5 * s),
                S.sphere(Fz([-35.0 * s, 2.0 * s, 5.0 * s]), 6.5 * s),
                S.round_cone(Fz([0.0, 0.0, 22.0 * s]), Fz([0.0, 0.0, 95.0 * s]), 23.0 * s, 15.0 * s),
            ],
            k=6.0 * s,
        )
        notch = S.capsule(Fz([0.0, -1.0 * s, -21.0 * s]), Fz([0.0, 45.0 * s, -14.0 * s]), 8.5 * s)
        groove = S.capsule(Fz([0.0, -27.0 * s, 42.0 * s]), Fz([0.0, -24.5 * s, -8.0 * s]), 6.0 * s)
        distal = S.subtract(S.subtract(distal, notch, 2.0 * s), groove, 2.0 * s)
        return distal, Fz

    distal, Fz = femur_parts(0.0)
    p_shaft_top = head + lat * 40.0 * s + np.array([0.0, 2.0 * s, -48.0 * s])
    proximal = S.union(
        [
            S.sphere(head, 23.0 * s),
            S.round_cone(head, p_shaft_top + np.array([0.0, 0.0, 8.0 * s]), 15.0 * s, 17.0 * s),
            S.sphere(p_shaft_top + lat * 12.0 * s + np.array([0.0, 5.0 * s, 22.0 * s]), 14.0 * s),
            S.sphere(p_shaft_top + np.array([9.0 * s, 9.0 * s, -30.0 * s]), 8.0 * s),
        ],
        k=6.0 * s,
    )
    shaft = S.round_cone(Fz([0.0, 0.0, 90.0 * s]), p_shaft_top, 14.5 * s, 16.0 * s)

    def femur_sdf_for(dist):
        return S.union([S.union([shaft, dist], k=12.0 * s), proximal], k=10.0 * s)

    # ---- tibia frame: origin = nominal tibial knee centre, z = tibial mechanical axis ----
    tilt_t = prm.femur_tilt_deg + prm.varus_deg
    r_t = _ry(-tilt_t)
    femur_bottom_z = 25.0 * s - 25.0 * s  # approx lowest femur point (medial condyle) before the gap fit
    o_t = np.array([0.0, 0.0, femur_bottom_z - prm.joint_gap_mm - 3.0 * s])
    if prm.flexion_deg:
        # knee flexion: the whole shank turns about the femoral medio-lateral axis through the
        # condyles' centres (the ankle swings posteriorly); the gap fit below restores the gap
        c_flex = F([0.0, 3.0 * s, -3.0 * s])
        r_flex = rotation_about_axis(r_f[:, 0], np.radians(prm.flexion_deg))
        r_t = r_flex @ r_t
        o_t = c_flex + r_flex @ (o_t - c_flex)
    T = frame(r_t, o_t)
    ankle_nominal = T([0.0, 0.0, -prm.tibia_length_mm])
    r_p = r_t @ _ry(90.0 - prm.mpta_deg) @ _rx(-prm.slope_deg)
    dish_depth = 2.2 * s
    dish_r = 14.0 * s
    dish_round = 2.5 * s
    dm = _dish(dish_depth, dish_r, dish_round, (20.0 * s, 0.0))
    dl = _dish(dish_depth, dish_r, dish_round, (-20.0 * s, 0.0))
    apex_depth = dish_depth * (1.0 - 0.0 / dish_r)  # rho = 0 at the apex
    o_p = o_t + r_p @ np.array([0.0, 0.0, apex_depth])  # tibial knee centre = mid of the two apexes
    P = frame(r_p, o_p)
    slab = S.elliptic_slab(P([0.0, 0.0, -11.0 * s]), [38.0 * s, 25.0 * s], 11.0 * s, r_p)

    def top(p):
        q = (p - o_p) @ r_p
        return q[:, 2] + dm(q) + dl(q)

    def block(p):
        return S.smax(slab(p), top(p), 2.0 * s)

    S.with_bound(block, *slab.bsphere)  # smax(a, b) >= a: the slab's bound holds

    tib_parts = S.union(
        [
            block,
            S.ellipsoid(P([0.0, -2.0 * s, 0.0]), [5.0 * s, 10.0 * s, 7.0 * s], r_p),
        ],
        k=3.0 * s,
    )
    tib_body = S.union(
        [
            S.round_cone(T([0.0, 0.0, -95.0 * s]), T([0.0, 0.0, -prm.tibia_length_mm + 50.0 * s]), 14.0 * s, 11.0 * s),
            S.round_cone(P([0.0, 2.0 * s, -30.0 * s]), T([0.0, 0.0, -95.0 * s]), 24.0 * s, 14.0 * s),
            S.ellipsoid(P([0.0, -20.0 * s, -38.0 * s]), [10.0 * s, 7.0 * s, 15.0 * s], r_p),
            S.ellipsoid(T([3.0 * s, 0.0, -prm.tibia_length_mm + 16.0 * s]), [17.0 * s, 16.0 * s, 20.0 * s], r_t),
            S.ellipsoid(T([19.0 * s, 2.0 * s, -prm.tibia_length_mm - 2.0 * s]), [7.0 * s, 9.0 * s, 13.0 * s], r_t),
        ],
        k=8.0 * s,
    )

    tibia_sdf = S.union([tib_body, tib_parts], k=6.0 * s)

    # ---- fit the femur's height so that the femur-tibia gap is joint_gap_mm ----
    # surface samples of the distal femur near the joint, moved rigidly by the shift
    jl = np.array([-55.0 * s, -45.0 * s, -40.0 * s])
    jh = np.array([55.0 * s, 50.0 * s, 10.0 * s])
    femur_joint_pts = surface_samples(femur_sdf_for(distal), jl, jh, 1.0 * s)

    def joint_gap(dz: float) -> float:
        return min_gap(femur_joint_pts + np.array([0.0, 0.0, dz]), tibia_sdf)

    z_shift, _g = secant_fit(joint_gap, prm.joint_gap_mm, 0.0, 1.0)
    distal, Fz = femur_parts(z_shift)
    femur_sdf = femur_sdf_for(distal)

    # The femoral mechanical axis runs from the (shifted) knee region to the fixed head: the
    # femoral frame origin moved by z_shift along limb z; the head stays where it is. The
    # truth axes are computed from the truth landmarks, so this small change is accounted for.

    # ---- fibula: head placed at fibula_gap_mm from the tibia ----
    d_fib = np.array([-1.0, 0.55, 0.0])
    d_fib /= np.linalg.norm(d_fib)
    head_start = T([-22.0 * s, 12.0 * s, -24.0 * s])
    r_head = 10.0 * s
    lm_centre = T([-30.0 * s, 7.0 * s, -prm.tibia_length_mm - 6.0 * s])

    def fibula_for(c_head):
        return S.union(
            [
                S.round_cone(c_head, lm_centre + np.array([0.0, 0.0, 14.0 * s]), 7.5 * s, 6.0 * s),
                S.sphere(c_head, r_head),
                S.ellipsoid(lm_centre, [9.0 * s, 10.0 * s, 15.0 * s], r_t),
            ],
            k=6.0 * s,
        )

    def head_gap(sv: float) -> float:
        c = head_start + sv * d_fib
        pts = surface_samples(fibula_for(c), c - 28.0 * s, c + 28.0 * s, 0.8 * s)
        return min_gap(pts, tibia_sdf)

    sv, _g = secant_fit(head_gap, prm.fibula_gap_mm, 5.0 * s, 10.0 * s)
    c_head = head_start + sv * d_fib
    fibula_sdf = fibula_for(c_head)

    # ---- patella: anterior to the trochlea at patella_gap_mm ----
    pat_semi = np.array([21.0 * s, 10.0 * s, 19.0 * s])

    def pat_centre_for(y_off: float) -> NDArray[np.float64]:
        return Fz([0.0, -28.0 * s - y_off, 14.0 * s])

    def pat_gap(y: float) -> float:
        return min_gap(ellipsoid_samples(pat_centre_for(y), pat_semi, r_f, n=60), femur_sdf)

    y_pat, _g = secant_fit(pat_gap, prm.patella_gap_mm, 0.0, 3.0)
    pat_centre = pat_centre_for(y_pat)
    patella_sdf = S.ellipsoid(pat_centre, pat_semi, r_f)

    # ---- bounds (limb frame boxes) ----
    def box_of(points: list[NDArray[np.float64]], pad: float) -> NDArray[np.float64]:
        a = np.array(points)
        return np.stack([a.min(axis=0) - pad, a.max(axis=0) + pad])

    femur_bounds = box_of([head, p_shaft_top + lat * 12.0 * s + np.array([0, 5.0 * s, 22.0 * s]), Fz([0, 0, -30.0 * s]), Fz([45.0 * s, 0, 0]), Fz([-45.0 * s, 0, 0]), Fz([0, 32.0 * s, -10.0 * s]), Fz([0, -25.0 * s, 0])], 28.0 * s)
    tibia_bounds = box_of([T([0, 0, 10.0 * s]), T([28.0 * s, 12.0 * s, -prm.tibia_length_mm - 18.0 * s]), T([-16.0 * s, -18.0 * s, -prm.tibia_length_mm - 18.0 * s]), P([40.0 * s, 27.0 * s, 0]), P([-40.0 * s, -30.0 * s, 0])], 14.0 * s)
    fibula_bounds = box_of([c_head, lm_centre, lm_centre - np.array([0, 0, 16.0 * s])], 15.0 * s)
    patella_bounds = box_of([pat_centre], 24.0 * s)

    fem_t = _thickness_profile(Fz([0, 0, 0])[2], head[2], 1.5 * s, 3.5 * s)
    tib_t = _thickness_profile(ankle_nominal[2], o_t[2], 1.5 * s, 3.2 * s)
    fib_t = _thickness_profile(lm_centre[2], c_head[2], 1.3 * s, 2.2 * s)

    def pat_t(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.full(len(p), 1.5 * s)

    bones = {
        "femur": BoneSpec("femur", LABELS["femur"], femur_sdf, femur_bounds, fem_t),
        "tibia": BoneSpec("tibia", LABELS["tibia"], tibia_sdf, tibia_bounds, tib_t),
        "fibula": BoneSpec("fibula", LABELS["fibula"], fibula_sdf, fibula_bounds, fib_t),
        "patella": BoneSpec("patella", LABELS["patella"], patella_sdf, patella_bounds, pat_t),
    }
    # ---- soft-tissue envelope ----
    knee_c = Fz([0.0, -4.0 * s, -10.0 * s])
    thigh_top = head + lat * 20.0 * s + np.array([0.0, 3.0 * s, 12.0 * s])
    ankle_c = T([-3.0 * s, 4.0 * s, -prm.tibia_length_mm])
    env_parts = [
        S.round_cone(knee_c, thigh_top, 58.0 * s, 52.0 * s),
        S.round_cone(knee_c, ankle_c, 56.0 * s, 34.0 * s),
    ]
    envelope = S.union(env_parts, k=20.0 * s)
    envelope_bounds = np.stack(
        [
            np.minimum.reduce([thigh_top - 53.0 * s, knee_c - 59.0 * s, ankle_c - 35.0 * s]),
            np.maximum.reduce([thigh_top + 53.0 * s, knee_c + 59.0 * s, ankle_c + 35.0 * s]),
        ]
    )
    return KneeAnatomy(
        bones=bones,
        envelope=envelope,
        envelope_bounds=envelope_bounds,
        head_centre=head,
        femur_rot=r_f,
        femur_origin=o_f + np.array([0.0, 0.0, z_shift]),
        tibia_rot=r_t,
        tibia_origin=o_t,
        plateau_rot=r_p,
        plateau_origin=o_p,
        plateau_centres_local=np.array([[20.0 * s, 0.0, -apex_depth], [-20.0 * s, 0.0, -apex_depth]]),
        gaps_mm={},
    )


# ------------------------------------------------------------------------------------------
# Landmarks (limb frame), following docs/anatomy.md
# ------------------------------------------------------------------------------------------


def knee_landmarks_limb(anat: KneeAnatomy, meshes_limb: dict[str, NDArray[np.float64]]) -> tuple[dict[str, NDArray[np.float64]], NDArray[np.float64]]:
    """docs/anatomy.md landmarks in the limb frame, and the medial plateau AP tangent (posterior)."""
    fem = anat.bones["femur"].sdf
    tib = anat.bones["tibia"].sdf
    fib = anat.bones["fibula"].sdf
    vf, vt, vfi = meshes_limb["femur"], meshes_limb["tibia"], meshes_limb["fibula"]
    L: dict[str, NDArray[np.float64]] = {}
    head = anat.head_centre
    L["femoral_head_centre"] = head.copy()

    # epicondyles: extremes of the distal femur along the medio-lateral direction (the TEA), iterated
    z_f = anat.femur_rot[:, 2]
    o_f = anat.femur_origin
    distal = ((vf - o_f) @ z_f) < 60.0
    ml = anat.femur_rot[:, 0]  # medial
    for _ in range(4):
        med = extreme_point(fem, vf, ml, distal)
        latp = extreme_point(fem, vf, -ml, distal)
        ml_new = (med - latp) / np.linalg.norm(med - latp)
        if np.linalg.norm(ml_new - ml) < 1e-6:
            break
        ml = ml_new
    L["medial_epicondyle"], L["lateral_epicondyle"] = med, latp
    knee_f = 0.5 * (med + latp)
    L["femoral_knee_centre"] = knee_f
    u_f = (head - knee_f) / np.linalg.norm(head - knee_f)
    tea = latp - med
    post = np.cross(tea, u_f)
    post /= np.linalg.norm(post)
    near = ((vf - knee_f) @ u_f) < 10.0
    side = (vf - knee_f) @ (-tea)  # > 0 medial
    L["distal_medial_condyle"] = extreme_point(fem, vf, -u_f, near & (side > 0))
    L["distal_lateral_condyle"] = extreme_point(fem, vf, -u_f, near & (side < 0))
    L["posterior_medial_condyle"] = extreme_point(fem, vf, post, near & (side > 0))
    L["posterior_lateral_condyle"] = extreme_point(fem, vf, post, near & (side < 0))

    # plateau centres: the dish apexes, on the surface along the plateau normal
    w = anat.plateau_rot[:, 2]
    for name, c_local in zip(("medial_plateau_centre", "lateral_plateau_centre"), anat.plateau_centres_local):
        c = anat.plateau_rot @ c_local + anat.plateau_origin
        # 1D root of the tibia SDF along the plateau normal through the apex
        ts = np.linspace(-3.0, 3.0, 601)
        vals = tib(c + ts[:, None] * w)
        i = int(np.argmin(np.abs(vals)))
        L[name] = c + ts[i] * w
        for _ in range(4):
            g = S.gradient(tib, L[name][None])[0]
            L[name] = L[name] - tib(L[name][None])[0] / (g @ w) * w
    knee_t = 0.5 * (L["medial_plateau_centre"] + L["lateral_plateau_centre"])
    L["tibial_knee_centre"] = knee_t

    # malleoli: extremes of the distal tibia / fibula along the tibial medio-lateral direction
    u_t = anat.tibia_rot[:, 2]
    for _ in range(5):
        plateau_ml = L["medial_plateau_centre"] - L["lateral_plateau_centre"]
        ml_t = plateau_ml - (plateau_ml @ u_t) * u_t
        ml_t /= np.linalg.norm(ml_t)
        # within 40 mm of each bone's own distal end (along the tibial mechanical axis)
        dist_t = (vt @ u_t) < float((vt @ u_t).min()) + 40.0
        dist_fi = (vfi @ u_t) < float((vfi @ u_t).min()) + 40.0
        mm = extreme_point(tib, vt, ml_t, dist_t)
        lm = extreme_point(fib, vfi, -ml_t, dist_fi)
        ankle = 0.5 * (mm + lm)
        u_new = (knee_t - ankle) / np.linalg.norm(knee_t - ankle)
        done = np.linalg.norm(u_new - u_t) < 1e-7
        u_t = u_new
        if done:
            break
    L["medial_malleolus"], L["lateral_malleolus"], L["ankle_centre"] = mm, lm, ankle

    # medial plateau AP tangent (towards posterior): the plateau plane's v axis
    ap = anat.plateau_rot[:, 1].copy()
    return L, ap


def _fiducials_targets_limb(anat: KneeAnatomy, s: float, bead_r: float, standoff: float):
    """Bead centres (surface point + (radius + standoff) along the outward normal: a bead
    resting on a thin cap on the bone), targets on the bone surfaces and the reference mount (limb)."""
    Fz = frame(anat.femur_rot, anat.femur_origin)
    T = frame(anat.tibia_rot, anat.tibia_origin)
    P = frame(anat.plateau_rot, anat.plateau_origin)
    fem = anat.bones["femur"].sdf
    bead_starts = [
        ("femur", Fz([8.0 * s, -45.0 * s, 150.0 * s])),
        ("femur", Fz([30.0 * s, -5.0 * s, 105.0 * s])),
        ("femur", Fz([30.0 * s, -30.0 * s, 55.0 * s])),
        ("femur", Fz([-45.0 * s, -15.0 * s, 35.0 * s])),
        ("tibia", T([30.0 * s, -25.0 * s, -40.0 * s])),
        ("tibia", T([-35.0 * s, -22.0 * s, -58.0 * s])),
        ("tibia", T([8.0 * s, -40.0 * s, -110.0 * s])),
        ("tibia", T([35.0 * s, 5.0 * s, -165.0 * s])),
    ]
    target_starts = [
        ("target_medial_condyle_anterior", "femur", Fz([22.0 * s, -35.0 * s, -12.0 * s])),
        ("target_lateral_condyle_posterior", "femur", Fz([-22.0 * s, 40.0 * s, -10.0 * s])),
        ("target_femoral_notch", "femur", Fz([0.0, 15.0 * s, -10.0 * s])),
        ("target_medial_plateau_anterior", "tibia", P([20.0 * s, -30.0 * s, -4.0 * s])),
        ("target_lateral_tibia_cut_level", "tibia", P([-45.0 * s, 5.0 * s, -12.0 * s])),
        ("target_tibial_spine", "tibia", P([0.0, -2.0 * s, 12.0 * s])),
    ]
    anchors = surface_points({n: b.sdf for n, b in anat.bones.items()}, list(bead_starts) + [(b, p) for _n, b, p in target_starts])
    beads = [(bone, p + (bead_r + standoff) * n) for (bone, _s), (p, n) in zip(bead_starts, anchors[: len(bead_starts)])]
    targets = [(name, bone, p) for (name, bone, _s), (p, _n) in zip(target_starts, anchors[len(bead_starts) :])]
    mount_p, mount_n = surface_point(fem, Fz([-15.0 * s, -40.0 * s, 200.0 * s]))
    return beads, targets, (mount_p, mount_n)


@lru_cache(maxsize=4)
def knee_geometry(prm: KneeParameters) -> PhantomGeometry:
    """Everything that does not depend on the seed, the pose or the CT grid (cached; limb frame).

    ``anatomy`` is the :class:`KneeAnatomy`; ``extras['medial_plateau_ap_tangent']`` the
    medial plateau AP tangent (towards posterior).
    """
    anat = build_knee(prm)
    meshes = closed_limb_meshes(anat.bones, prm.mesh_step_mm)
    verts_limb = {name: np.asarray(m.points, dtype=np.float64) for name, m in meshes.items()}
    L_limb, ap_limb = knee_landmarks_limb(anat, verts_limb)
    gaps = {
        "femur_tibia": min_gap(verts_limb["femur"], anat.bones["tibia"].sdf),
        "fibula_tibia": min_gap(verts_limb["fibula"], anat.bones["tibia"].sdf),
        "patella_femur": min_gap(verts_limb["patella"], anat.bones["femur"].sdf),
    }
    beads, targets, mount = _fiducials_targets_limb(anat, prm.scale, prm.bead_radius_mm, prm.bead_standoff_mm)
    return PhantomGeometry(
        anatomy=anat,
        bones=dict(anat.bones),
        envelope=anat.envelope,
        grid_bounds_limb_mm=anat.envelope_bounds,
        meshes_limb=meshes,
        landmarks_limb=L_limb,
        beads=beads,
        targets=targets,
        mount=mount,
        gaps_mm=gaps,
        extras={"medial_plateau_ap_tangent": ap_limb},
    )


def _check(prm: KneeParameters) -> None:
    if prm.scale <= 0.3 or prm.scale > 2.0:
        raise InputError(None, f"scale must be in (0.3, 2], got {prm.scale}")
    if not 0.0 <= prm.flexion_deg <= 45.0:
        raise InputError(None, f"flexion_deg must be in [0, 45], got {prm.flexion_deg}")


def _truth(geo: PhantomGeometry, ct_from_limb: NDArray[np.float64], landmarks_lps: dict[str, NDArray[np.float64]]) -> AnatomyTruth:
    ap_lps = apply_vector(ct_from_limb, geo.extras["medial_plateau_ap_tangent"])
    angles = knee_angles(landmarks_lps, medial_plateau_ap_tangent_lps=ap_lps, side="right")
    return AnatomyTruth(angles_deg=angles, fields={"medial_plateau_ap_tangent_lps": (float(ap_lps[0]), float(ap_lps[1]), float(ap_lps[2]))})


#: The knee's parts of the phantom recipe. Pose: the leg along +S with a few degrees of
#: arbitrary rotation, off-centre.
KNEE_RECIPE = AnatomyRecipe(
    kind="knee",
    knob_name="knee",
    labels=LABELS,
    side="right",
    table_side="right",
    parameters=KneeParameters,
    small=SMALL,
    check=_check,
    geometry=knee_geometry,
    pose=Pose(rz_deg=7.0, rx_deg=-3.0, ry_deg=2.0, translation_mm=(-18.0, 35.0, -820.0), jitter_seed_offset=10_000),
    grid_margin_mm=4.0,
    intensity=Intensity(cortical_hu=1500.0, cortical_amplitude_hu=250.0, cortical_period_mm=90.0, marrow_hu=300.0, marrow_amplitude_hu=80.0),
    truth=_truth,
)


def make_knee_phantom(*, seed: int = 0, small: bool = False, **knobs: object) -> SyntheticPhantom:
    """Build the synthetic right-leg knee phantom.

    Parameters
    ----------
    seed
        Noise and intensity variation (and the pose, when ``pose_jitter_deg`` > 0).
    small
        Coarser voxels (1.2 x 1.2 x 2.4 mm) and wider gaps (>= 3 voxels): fast, for tests.
    **knobs
        Any :class:`KneeParameters` field, e.g. ``varus_deg=5``, ``scale=0.9``,
        ``spacing_mm=(0.8, 0.8, 1.5)``, ``pose_jitter_deg=5``.

    Returns
    -------
    SyntheticPhantom
        ``truth.kind == 'knee'``; landmarks and angles of docs/anatomy.md (LPS mm, degrees).
    """
    return make_phantom(KNEE_RECIPE, seed=seed, small=small, knobs=knobs)


__all__ = ["KNEE_RECIPE", "LABELS", "SMALL", "KneeAnatomy", "KneeParameters", "build_knee", "knee_geometry", "knee_landmarks_limb", "make_knee_phantom"]
