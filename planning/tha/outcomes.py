"""What a hip (THA) plan does: angles, leg length, offsets, reaming, coverage and the neck
cuts, recomputed from the plan alone (:func:`tha_outcomes`) after every edit.

Every derived number follows from the plan's landmarks, axes and implant poses, so an
implant moved in the planning window updates angles, cut, leg length, offset, coverage and
reaming at once. Positions LPS mm; angles degrees (radiographic, relative to the APP).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyvista as pv
from orthonav.core.transforms import apply, apply_vector
from orthonav.core.vectors import perpendicular

from ..implants import implant_model
from ..landmarks import position
from ..meshops import signed_distance_mm, unit_sphere_directions
from ..schema import CutPlane, ImplantPlacement, Plan
from .alignment import SIDES, acetabular_angles, app_frame
from .placement import neck_cut_from_stem, stem_neck_direction_implant

COVERAGE_CONTACT_MM = 1.0

_COVERAGE_MEMO: dict[tuple, float] = {}


def cup_coverage(cup: ImplantPlacement, hip: pv.PolyData, *, contact_mm: float = COVERAGE_CONTACT_MM, n: int = 1500) -> float:
    """Fraction of the cup's outer hemispherical surface inside or within ``contact_mm`` of
    the (native) hip bone: near-uniform samples on the shell, signed distance to the closed
    bone surface (vtkImplicitPolyDataDistance; negative inside)."""
    key = (id(hip), cup.family, cup.size, np.asarray(cup.ct_from_implant, dtype=np.float64).tobytes(), contact_mm, n)
    if key not in _COVERAGE_MEMO:  # an edit moves one implant: the other cup's value is reused
        if len(_COVERAGE_MEMO) > 256:
            _COVERAGE_MEMO.clear()
        r = implant_model(cup.family, cup.size).dims["outer_diameter_mm"] / 2.0
        pts = apply(np.asarray(cup.ct_from_implant), r * unit_sphere_directions(n, hemisphere=True))
        _COVERAGE_MEMO[key] = float((signed_distance_mm(hip, pts) < contact_mm).mean())
    return _COVERAGE_MEMO[key]


def stem_clearance(stem: ImplantPlacement, femur: pv.PolyData, *, n: int = 24) -> float:
    """Smallest distance (mm) from the stem body's surface to the outer femoral surface,
    over ``n`` stations along the body (radius 11 mm at the shoulder to 7 mm at the tip,
    as :mod:`orthonav.planning.implants` builds it); negative = the stem pierces the
    cortex there (or its tip lies beyond the end of the femur mesh)."""
    d = implant_model(stem.family, stem.size).dims
    off, length = d["offset_mm"], d["length_mm"]
    t = np.linspace(0.0, 1.0, n)
    axis_pts = np.c_[np.full(n, -off), np.zeros(n), -off - t * length]  # shoulder -> tip (implant frame)
    radius = 11.0 - 4.0 * t
    sd = signed_distance_mm(femur, apply(np.asarray(stem.ct_from_implant), axis_pts))
    return float(np.min(-sd - radius))


def _round_trip_stable(cut: CutPlane) -> CutPlane:
    """``cut`` with a normal that the schema's normalisation leaves unchanged (normalising a
    unit vector can move its last bit), so ``plan.json`` reads back exactly equal."""
    for _ in range(4):
        again = CutPlane.model_validate(cut.model_dump())
        if again == cut:
            break
        cut = again
    return cut


def tha_outcomes(plan: Plan, meshes: Mapping[str, pv.PolyData] | None = None) -> tuple[dict[str, float], dict[str, float], dict[str, CutPlane]]:
    """Angles, metrics and neck cuts that follow from the plan's landmarks, axes and implant
    poses (recomputed after every edit).

    Returns
    -------
    angles
        Native ``acetabular_inclination_<side>`` / ``acetabular_anteversion_<side>`` (from
        the ``acetabular_<side>`` axes), planned ``cup_inclination_<side>`` /
        ``cup_anteversion_<side>``, ``neck_shaft_<side>`` (native) and
        ``stem_neck_shaft_<side>`` (planned: stem neck vs the shaft axis).
    metrics
        Per side with a cup: ``cup_outer_diameter_<side>_mm``, ``cup_reaming_depth_<side>_mm``
        (bone removed at the dome along the cup axis beyond the native socket),
        ``cup_medialisation_<side>_mm``, ``cup_coverage_<side>_fraction`` (needs
        ``meshes``); with a stem: ``leg_length_change_<side>_mm`` (positive = longer) and
        ``global_offset_change_<side>_mm`` (femoral plus acetabular, along the APP
        medio-lateral axis), which need the head and the cup only; with a stem and a
        ``femoral_shaft_<side>`` axis (absent when the CT holds too little shaft, see
        ``plan.not_measured``): ``femoral_offset_change_<side>_mm``,
        ``stem_axis_to_canal_axis_<side>_mm``, ``stem_cortex_clearance_<side>_mm`` (needs
        ``meshes``; < 0: the stem leaves the bone).
    cuts
        ``neck_<side>`` from each stem (depth from ``neck_cut_below_head_<side>_mm`` in the
        plan's metrics).
    """
    lms = plan.landmarks
    angles: dict[str, float] = {}
    metrics: dict[str, float] = {}
    cuts: dict[str, CutPlane] = {}
    app = app_frame(lms) if all(k in lms for k in ("asis_left", "asis_right", "pubic_tubercle_left", "pubic_tubercle_right")) else None
    for sd in SIDES:
        ax = plan.axes.get(f"acetabular_{sd}")
        if app is not None and ax is not None:
            i, a = acetabular_angles(ax.direction_lps, sd, app)
            angles[f"acetabular_inclination_{sd}"], angles[f"acetabular_anteversion_{sd}"] = i, a
        sh, nk = plan.axes.get(f"femoral_shaft_{sd}"), plan.axes.get(f"femoral_neck_{sd}")
        if sh is not None and nk is not None:
            angles[f"neck_shaft_{sd}"] = float(np.degrees(np.arccos(np.clip(np.dot(nk.direction_lps, sh.direction_lps), -1.0, 1.0))))
    for imp in plan.implants:
        sd = imp.bone.rsplit("_", 1)[-1]
        if sd not in SIDES:
            continue
        m = np.asarray(imp.ct_from_implant)
        if imp.family == "tha_cup":
            r_out = implant_model(imp.family, imp.size).dims["outer_diameter_mm"] / 2.0
            z, c = m[:3, 2], m[:3, 3]
            metrics[f"cup_outer_diameter_{sd}_mm"] = 2.0 * r_out
            if app is not None:
                i, a = acetabular_angles(z, sd, app)
                angles[f"cup_inclination_{sd}"], angles[f"cup_anteversion_{sd}"] = i, a
            key = f"acetabulum_centre_{sd}"
            r_s = plan.metrics.get(f"socket_radius_{sd}_mm")
            if key in lms and r_s is not None:
                native = position(lms[key])
                metrics[f"cup_reaming_depth_{sd}_mm"] = float(np.dot(native - c, z) + r_out - r_s)
                if app is not None:
                    metrics[f"cup_medialisation_{sd}_mm"] = float(np.dot(native - c, SIDES[sd] * app[0]))
                    metrics[f"cup_superior_shift_{sd}_mm"] = float(np.dot(c - native, app[2]))
            if meshes is not None and f"hip_{sd}" in meshes:
                metrics[f"cup_coverage_{sd}_fraction"] = cup_coverage(imp, meshes[f"hip_{sd}"])
        elif imp.family == "tha_stem":
            depth = plan.metrics.get(f"neck_cut_below_head_{sd}_mm")
            if depth is not None:
                cuts[f"neck_{sd}"] = _round_trip_stable(neck_cut_from_stem(imp, sd, depth))
            head = m[:3, 3]
            sh = plan.axes.get(f"femoral_shaft_{sd}")
            key = f"femoral_head_centre_{sd}"
            if sh is not None and key in lms:
                native = position(lms[key])
                o, u = np.asarray(sh.origin_lps_mm), np.asarray(sh.direction_lps)
                off_new = float(np.linalg.norm(perpendicular(head - o, u)))
                off_native = float(np.linalg.norm(perpendicular(native - o, u)))
                metrics[f"femoral_offset_change_{sd}_mm"] = off_new - off_native
                stem_off = implant_model(imp.family, imp.size).dims["offset_mm"]
                stem_axis_pt = head - stem_off * m[:3, 0]
                metrics[f"stem_axis_to_canal_axis_{sd}_mm"] = float(np.linalg.norm(perpendicular(stem_axis_pt - o, u)))
                metrics[f"stem_axis_angle_to_shaft_{sd}_deg"] = float(np.degrees(np.arccos(np.clip(np.dot(m[:3, 2], u), -1.0, 1.0))))
                if meshes is not None and f"femur_{sd}" in meshes:
                    metrics[f"stem_cortex_clearance_{sd}_mm"] = stem_clearance(imp, meshes[f"femur_{sd}"])
                neck_d = apply_vector(m, stem_neck_direction_implant())
                angles[f"stem_neck_shaft_{sd}"] = float(np.degrees(np.arccos(np.clip(np.dot(neck_d, u), -1.0, 1.0))))
            if key in lms:
                native = position(lms[key])
                if app is not None:  # needs the head and the cup, not the shaft
                    # Femoral part: the prosthetic head moved relative to the femur. Once the
                    # head is reduced into the cup the femur moves by (cup centre - head):
                    # down (longer) when the head sits higher on the femur or the cup lower.
                    cup = next((i for i in plan.implants if i.family == "tha_cup" and i.bone == f"hip_{sd}"), None)
                    acet_key = f"acetabulum_centre_{sd}"
                    centre_new = np.asarray(cup.ct_from_implant)[:3, 3] if cup is not None else (position(lms[acet_key]) if acet_key in lms else native)
                    centre_old = position(lms[acet_key]) if acet_key in lms else native
                    femur_shift = (centre_new - head) - (centre_old - native)  # femur displacement vs native
                    metrics[f"leg_length_change_{sd}_mm"] = float(-np.dot(femur_shift, app[2])) + 0.0  # no -0.0
                    metrics[f"global_offset_change_{sd}_mm"] = float(np.dot(femur_shift, SIDES[sd] * app[0]))
    return angles, metrics, cuts


__all__ = ["COVERAGE_CONTACT_MM", "cup_coverage", "stem_clearance", "tha_outcomes"]
