"""``orthonav plan CASE --auto``: dispatch a case to its procedure's planner -> ``plan.json``.

Which procedure a case is (:func:`case_procedure`) follows from the bone meshes present:
knee (TKA, :mod:`orthonav.planning.tka`) with ``femur`` and ``tibia`` (fibula, patella
optional); hip (THA, :mod:`orthonav.planning.tha`) with ``hip_<side>`` and ``femur_<side>``
(TotalSegmentator names; both hip bones for the anterior pelvic plane, sacrum optional) and
not both femur and tibia. :func:`auto_plan` also reads, when present, ``CASE/ct.nii.gz``
(fiducial beads) and ``CASE/labels.json`` (side), and writes ``CASE/plan.json`` atomically.
:func:`load_case_meshes` and :func:`session_for` give the meshes and the editing session of
a plan's procedure. Everything procedure-specific is in the sub-packages; this module only
dispatches.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyvista as pv
from orthonav.core.case import Case, read_labels_table
from orthonav.core.errors import InputError
from orthonav.core.volume import read_volume

from .fiducials import fiducial_landmarks
from .meshes import bones_present
from .schema import Plan, save_plan
from .session import PlanSession
from .tha import HIP_BONES, ThaSession, build_tha_plan, is_hip_case, load_hip_meshes
from .tka import KNEE_BONES, REQUIRED_BONES, TkaSession, build_tka_plan, is_knee_case, load_knee_meshes

PROCEDURES = ("tka", "tha")


def _check_procedure(procedure: str) -> None:
    if procedure not in PROCEDURES:
        raise InputError(None, f"procedure must be 'tka' or 'tha', got {procedure!r}")


def case_procedure(case_dir: str | Path) -> str:
    """'tha' when the case has a hip bone and a femur of one side (``hip_<side>``,
    ``femur_<side>``) and not both femur and tibia; 'tka' when it has any knee bone (a
    missing one is then reported by its file); else InputError naming the meshes folder."""
    case = Case(case_dir)
    present = bones_present(case.root, (*KNEE_BONES, *HIP_BONES))
    if is_hip_case(present):
        return "tha"
    if is_knee_case(present):
        return "tka"  # planning then names the missing knee bone's file
    raise InputError(case.meshes_dir, f"no bones to plan: a knee needs {' and '.join(REQUIRED_BONES)}, a hip needs hip_<side> and femur_<side> meshes (found: {', '.join(present) or 'none'}); run 'orthonav segment' first")


def load_case_meshes(case_dir: str | Path, procedure: str = "tka", *, report: dict[str, float] | None = None) -> dict[str, pv.PolyData]:
    """The bone meshes a plan of ``procedure`` is built, drawn and edited with (LPS mm, largest
    piece of each): the knee bones (femur and tibia required) for 'tka', the hip bones
    present for 'tha'. ``report`` (if given) receives ``{bone: fraction of vertices dropped}``."""
    _check_procedure(procedure)
    if procedure == "tha":
        return load_hip_meshes(case_dir, report=report)
    return load_knee_meshes(case_dir, report=report)


def session_for(plan: Plan, meshes: Mapping[str, pv.PolyData], **kw) -> PlanSession:
    """The editing session for a plan's procedure: :class:`~orthonav.planning.tha.ThaSession`
    for THA, else :class:`~orthonav.planning.tka.TkaSession` (``kw``: ``ct``, ``max_undo``)."""
    if plan.procedure == "tha":
        return ThaSession(plan, meshes, **kw)
    return TkaSession(plan, meshes, **kw)


def auto_plan(
    case_dir: str | Path,
    *,
    alignment: str = "mechanical",
    resection_mm: float = 9.0,
    slope_deg: float = 3.0,
    bead_min_hu: float = 2500.0,
    side: str | None = None,
    procedure: str | None = None,
    cup_inclination_deg: float = 40.0,
    cup_anteversion_deg: float = 15.0,
    cup_medialise_mm: float = 0.0,
    ream_mm: float = 2.0,
) -> Plan:
    """Plan a TKA or a THA automatically and write ``CASE/plan.json``.

    Parameters
    ----------
    case_dir
        The case folder (a knee: ``meshes/femur.*`` and ``meshes/tibia.*``; a hip:
        ``meshes/hip_<side>.*`` and ``meshes/femur_<side>.*``).
    alignment
        'mechanical' (cuts perpendicular to the mechanical axes) or 'kinematic'.
    resection_mm
        Distal femoral and proximal tibial resection depth (mm).
    slope_deg
        Posterior slope of the tibial cut for mechanical alignment (deg).
    bead_min_hu
        Threshold for fiducial bead candidates in ``CASE/ct.nii.gz`` (skipped if no CT).
    side
        Operated side ('left' / 'right'; THA also 'both'). Default: ``labels.json``'s side;
        for a THA without one, both sides with a femur are planned.
    procedure
        'tka' or 'tha'; default from the meshes present (:func:`case_procedure`).
    cup_inclination_deg, cup_anteversion_deg, cup_medialise_mm, ream_mm
        THA cup target (radiographic, relative to the anterior pelvic plane), medialisation
        of the cup centre and diametral reaming allowance (cup >= socket diameter + ream).

    Returns
    -------
    Plan
        The plan that was written.
    """
    case = Case(case_dir)
    if not case.root.is_dir():
        raise InputError(case.root, "case folder not found")
    if procedure is None:
        procedure = case_procedure(case.root)
    _check_procedure(procedure)
    islands: dict[str, float] = {}
    meshes = load_case_meshes(case.root, procedure, report=islands)
    if side is None and case.labels_json.is_file():
        side = read_labels_table(case.labels_json).side
    ct = read_volume(case.ct) if case.ct.is_file() else None
    fids = fiducial_landmarks(ct, meshes, min_hu=bead_min_hu) if ct is not None else {}
    try:
        if procedure == "tha":
            plan = build_tha_plan(meshes, side=side, inclination_deg=cup_inclination_deg, anteversion_deg=cup_anteversion_deg, medialise_mm=cup_medialise_mm, ream_mm=ream_mm, fiducials=fids)
        else:
            plan = build_tka_plan(meshes, alignment=alignment, resection_mm=resection_mm, slope_deg=slope_deg, side=side, fiducials=fids, ct=ct)
    except InputError as e:
        if e.path is not None:
            raise
        # Name the files the automatic plan was computed from.
        raise InputError(case.meshes_dir, f"automatic plan failed on these meshes ({', '.join(sorted(meshes))}): {e.problem}") from e
    if islands:
        dropped = ", ".join(f"{b} {100 * f:.1f}%" for b, f in islands.items())
        plan = plan.model_copy(update={"notes": plan.notes + f"; disconnected mesh pieces ignored (vertices dropped: {dropped})"})
    save_plan(case.plan, plan)
    return plan


__all__ = ["PROCEDURES", "auto_plan", "case_procedure", "load_case_meshes", "session_for"]
