"""The automatic hip (THA) plan from bone meshes: landmarks, axes, native measures, sized and
placed cup and stem, neck cuts and outcomes (no file I/O but :func:`load_hip_meshes`).

Steps and their modules: landmarks (:mod:`.landmarks`), the APP and angles
(:mod:`.alignment`), implants (:mod:`.placement`), outcomes (:mod:`.outcomes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyvista as pv
from orthonav.core.errors import InputError
from orthonav.core.vectors import perpendicular

from ..landmarks import position
from ..meshes import load_bone_meshes
from ..schema import ImplantPlacement, Landmark, Plan
from .alignment import SIDES, app_frame, cup_axis
from .landmarks import HIP_BONES, find_hip_landmarks
from .outcomes import tha_outcomes
from .placement import (
    DEFAULT_REAM_MM,
    DEFAULT_TARGET_ANTEVERSION_DEG,
    DEFAULT_TARGET_INCLINATION_DEG,
    choose_cup_size,
    choose_stem_size,
    cup_pose,
    stem_pose,
)
from .trajectories import CUP_APPROACH_MM, cup_trajectories


def load_hip_meshes(case_dir: str | Path, *, report: dict[str, float] | None = None) -> dict[str, pv.PolyData]:
    """The hip bone meshes present in ``CASE/meshes`` (largest piece of each)."""
    return load_bone_meshes(case_dir, HIP_BONES, required=(), report=report)


def is_hip_case(bones: Mapping[str, object] | list[str] | tuple[str, ...]) -> bool:
    """True when the bones are a hip's (a hip bone and a femur of one side) and not a knee's."""
    names = set(bones)
    knee = {"femur", "tibia"} <= names
    return not knee and any(f"hip_{sd}" in names and f"femur_{sd}" in names for sd in SIDES)


def plan_sides(meshes: Mapping[str, pv.PolyData], side: str | None) -> list[str]:
    """The sides to place implants on: ``side`` if given ('left' / 'right'; 'both' for
    both), else every side with a hip bone and a femur."""
    have = [sd for sd in SIDES if f"hip_{sd}" in meshes and f"femur_{sd}" in meshes]
    if side in (None, "both"):
        if not have:
            raise InputError(None, "THA planning needs hip_<side> and femur_<side> meshes")
        return have
    if side not in SIDES:
        raise InputError(None, f"side must be 'left', 'right' or 'both', got {side!r}")
    if side not in have:
        raise InputError(None, f"no hip_{side} and femur_{side} meshes for a {side} THA (have {', '.join(sorted(meshes))})")
    return [side]


def build_tha_plan(
    meshes: Mapping[str, pv.PolyData],
    *,
    side: str | None = None,
    inclination_deg: float = DEFAULT_TARGET_INCLINATION_DEG,
    anteversion_deg: float = DEFAULT_TARGET_ANTEVERSION_DEG,
    medialise_mm: float = 0.0,
    ream_mm: float = DEFAULT_REAM_MM,
    neck_cut_mm: float | None = None,
    fiducials: Mapping[str, Landmark] | None = None,
    implants: bool = True,
) -> Plan:
    """The automatic THA plan from meshes alone (no file I/O).

    Parameters
    ----------
    meshes
        ``hip_left``, ``hip_right`` (both needed for the APP), ``femur_<side>``, optional
        ``sacrum``; LPS mm.
    side
        Operated side ('left' / 'right'); None or 'both' plans every side with a femur.
    inclination_deg, anteversion_deg
        Cup target, radiographic, relative to the APP (Lewinnek safe zone 40 / 15).
    medialise_mm
        Cup centre moved this far medially (along the APP medio-lateral axis) from the
        native acetabulum centre.
    ream_mm
        Diametral reaming allowance: cup outer diameter >= socket diameter + ``ream_mm``.
    neck_cut_mm
        Neck cut distance below the head centre along the stem's neck axis (default: femoral
        head radius + 10 mm).
    """
    sides = plan_sides(meshes, side)
    if not (0.0 <= ream_mm <= 10.0):
        raise InputError(None, f"ream_mm must be in [0, 10], got {ream_mm}")
    if implants and not all(f"hip_{sd}" in meshes for sd in SIDES):
        raise InputError(None, "cup orientation needs the anterior pelvic plane: both hip bones must be segmented")
    cup_axis(inclination_deg, anteversion_deg, sides[0], (np.eye(3)[0], -np.eye(3)[1], np.eye(3)[2]))  # validates the target first
    missing: list[str] = []
    lms, axes, meas = find_hip_landmarks(meshes, notes=missing)
    all_lms = {**lms, **(fiducials or {})}
    notes = [
        "automatic THA plan (orthonav plan --auto)",
        f"cup target inclination {inclination_deg:g} deg / anteversion {anteversion_deg:g} deg (radiographic, APP)",
        f"cup size: smallest outer diameter >= socket diameter + {ream_mm:g} mm",
        "stem: head at the native head centre, axis along the proximal shaft axis, size by nearest offset",
        *(f"NOT MEASURED {m}" for m in missing),
    ]
    not_measured: dict[str, str] = {}
    assumptions: dict[str, str] = {}
    for sd in SIDES:
        if f"femoral_neck_{sd}" in axes and f"femoral_shaft_{sd}" not in axes:
            why = next((m for m in missing if m.startswith(f"femur_{sd}:")), f"femur_{sd}: no shaft axis")
            # the keys of the axes / angles / metrics they would have been (metrics with their unit)
            for key in (f"femoral_shaft_{sd}", f"neck_shaft_{sd}", f"femoral_offset_{sd}_mm", f"stem_neck_shaft_{sd}",
                        f"femoral_offset_change_{sd}_mm", f"stem_axis_to_canal_axis_{sd}_mm", f"stem_cortex_clearance_{sd}_mm"):
                not_measured[key] = why
            assumptions[f"femoral_stem_axis_{sd}"] = axes[f"femoral_stem_axis_{sd}"].definition
    if implants:
        notes.append(f"reamer / impactor trajectory per cup: along the planned cup axis from {CUP_APPROACH_MM:g} mm out to the planned cup centre")
    metrics: dict[str, float] = dict(meas)
    placed: list[ImplantPlacement] = []
    if implants:
        app = app_frame(lms)
        for sd in sides:
            native_c = position(lms[f"acetabulum_centre_{sd}"])
            centre = native_c - medialise_mm * SIDES[sd] * app[0]
            size, fits = choose_cup_size(meas[f"socket_radius_{sd}_mm"], ream_mm=ream_mm)
            if not fits:
                notes.append(f"{sd}: socket diameter {2 * meas[f'socket_radius_{sd}_mm']:.1f} mm exceeds the largest cup; size {size} chosen")
            axis = cup_axis(inclination_deg, anteversion_deg, sd, app)
            placed.append(ImplantPlacement(family="tha_cup", size=size, bone=f"hip_{sd}", ct_from_implant=cup_pose(centre, axis, app).tolist()))
            head = position(lms[f"femoral_head_centre_{sd}"])
            shaft = axes.get(f"femoral_shaft_{sd}")
            if shaft is not None:
                stem = choose_stem_size(meas[f"femoral_offset_{sd}_mm"])
            else:  # too little shaft in the CT: a provisional axis, and the plan says so
                shaft = axes[f"femoral_stem_axis_{sd}"]
                o, u = np.asarray(shaft.origin_lps_mm), np.asarray(shaft.direction_lps)
                provisional_offset = float(np.linalg.norm(perpendicular(head - o, u)))
                stem = choose_stem_size(provisional_offset)
                notes.append(f"{sd}: PROVISIONAL stem axis and size (no shaft axis: {shaft.definition}; offset {provisional_offset:.1f} mm from it); check the stem on a CT with the femoral shaft")
            placed.append(ImplantPlacement(family="tha_stem", size=stem, bone=f"femur_{sd}", ct_from_implant=stem_pose(head, shaft).tolist()))
            metrics[f"neck_cut_below_head_{sd}_mm"] = float(neck_cut_mm if neck_cut_mm is not None else meas[f"femoral_head_radius_{sd}_mm"] + 10.0)
            metrics[f"target_inclination_{sd}_deg"] = float(inclination_deg)
            metrics[f"target_anteversion_{sd}_deg"] = float(anteversion_deg)
    plan = Plan(
        procedure="tha",
        side=sides[0] if len(sides) == 1 else "both",
        alignment="mechanical",
        landmarks=all_lms,
        axes=axes,
        implants=placed,
        metrics=metrics,
        not_measured=not_measured,
        assumptions=assumptions,
        notes="; ".join(notes),
    )
    angles, out, cuts = tha_outcomes(plan, meshes)
    for sd in sides:
        clear = out.get(f"stem_cortex_clearance_{sd}_mm")
        if clear is not None and clear < 0.0:
            notes.append(f"WARNING {sd}: the stem leaves the femur surface by {-clear:.1f} mm (too long for the femur in the CT, or too large): check it")
    return plan.model_copy(update={"angles_deg": angles, "cuts": cuts, "metrics": {**metrics, **out}, "notes": "; ".join(notes),
                                   "trajectories": cup_trajectories(plan)})


__all__ = ["build_tha_plan", "is_hip_case", "load_hip_meshes", "plan_sides"]
