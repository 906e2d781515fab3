"""The accuracy protocol on a recorded navigation session (real or simulated tracker).

FRE from the session's ``registration.json``; TRE from the pointer dwells after registration
(detected exactly as the live workflow detects them, by replaying the session's frames through
it), each paired with the nearest target (phantom truth, else the session's check points, else
the plan's ``target_*`` landmarks). Such a "touched" TRE also contains the target's own
localisation error. Pivot RMS from ``<session>/pivot.jsonl`` (a recording of the pointer
pivoting), else the calibration RMS stored in the session's tool file. CT LPS millimetres.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from orthonav.core.case import Case
from orthonav.core.errors import InputError
from orthonav.core.transforms import apply, invert

from .truth import read_truth, truth_path
from .validation_result import PivotFigures, ValidationConfig, ValidationResult, build_result

if TYPE_CHECKING:
    from orthonav.navigation.session import SessionInfo
    from orthonav.navigation.workflow import WorkflowConfig
    from orthonav.tracking import ToolSet

def _session_targets(case_dir: Path, info: SessionInfo) -> tuple[list[str], NDArray[np.float64], str]:
    """Targets (names, (M, 3) CT LPS mm, where from): phantom truth, else the session's check
    points, else the plan's ``target_*`` landmarks."""
    if truth_path(case_dir).is_file():
        names, pts = read_truth(case_dir).points("targets")
        if names:
            return names, pts, "phantom truth (truth/truth.json)"
    if info.check_points_mm:
        names = list(info.check_points_mm)
        return names, np.array([info.check_points_mm[k] for k in names], dtype=np.float64).reshape(-1, 3), "session check points"
    plan_path = Case(case_dir).plan
    if plan_path.is_file():
        from orthonav.planning.schema import load_plan

        plan = load_plan(plan_path)
        names = [k for k in plan.landmarks if k.startswith("target_")]
        if names:
            return names, np.array([plan.landmarks[k].position_lps_mm for k in names], dtype=np.float64), "plan target landmarks"
    raise InputError(case_dir, "no targets to measure TRE at: no truth/truth.json targets, no session check points, "
                               "no 'target_*' landmarks in plan.json")


def _session_pivot(session_dir: Path, toolset: ToolSet, pointer: str) -> PivotFigures | None:
    """The pointer's pivot figures: from ``pivot.jsonl`` in the session (RANSAC), else the
    calibration RMS of the session's tool file, else None."""
    from orthonav.tracking import pivot_calibration, read_recording

    p = session_dir / "pivot.jsonl"
    if p.is_file():
        poses = [fr.pose(pointer) for fr in read_recording(p)]
        poses = np.array([q for q in poses if q is not None])
        if len(poses) == 0:
            raise InputError(p, f"has no live poses of the '{pointer}' tool")
        try:
            res = pivot_calibration(poses, method="ransac")
        except InputError as e:
            raise InputError(p, e.problem) from e
        tip = toolset.by_name()[pointer].tip_in_tool()
        return PivotFigures(res.rms_mm, float(np.linalg.norm(res.tip_in_tool_mm - tip)), res.residuals_mm, int(res.inliers.sum()),
                            f"{p.name}: {len(poses)} poses, RANSAC; tip error vs the session's tool file")
    rms = toolset.by_name()[pointer].calibration_rms_mm
    if rms is not None:
        date = toolset.by_name()[pointer].calibration_date or "unknown date"
        return PivotFigures(float(rms), math.nan, np.zeros(0), 0, f"tool file calibration of {date}")
    return None


_FIDUCIAL_PREFIX = "\x00fiducial:"  # check-point names that cannot clash with a target's


def _replayed_touches(sdir: Path, info: SessionInfo, wf: WorkflowConfig, t_names: list[str], tgt_ct: NDArray[np.float64], f_names: list[str],
                      fid_ct: NDArray[np.float64]) -> dict[str, Any]:
    """Target name -> first touched point (reference frame, mm), from replaying the session's frames.

    Also ``"__registration__"``: whether the replayed registration equals the recorded one
    (False e.g. after a surface refinement outside the workflow; the touches are still valid
    because dwell detection happens in the reference frame, before any registration).
    """
    from orthonav.navigation.inputs import load_navigation_inputs
    from orthonav.navigation.registration import load_registration
    from orthonav.navigation.session import FRAMES, REGISTRATION, read_frames
    from orthonav.navigation.workflow import Workflow

    inputs = load_navigation_inputs(info.case_dir, info.toolset, surfaces=False)
    checks = {n: p for n, p in zip(t_names, tgt_ct)}
    checks.update({_FIDUCIAL_PREFIX + n: p for n, p in zip(f_names, fid_ct)})
    workflow = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm, check_points_ct_mm=checks, config=wf)
    for frame in read_frames(sdir):
        workflow.process(frame, clock=None)
    reg = workflow.registration
    if reg is None:
        raise InputError(sdir / FRAMES, "replaying the recorded frames gives no registration although the session has one: "
                                        "the case's plan or the workflow changed since the session was recorded")
    recorded = load_registration(sdir / REGISTRATION).ct_from_reference_array()
    out: dict[str, Any] = {"__registration__": bool(np.allclose(reg.ct_from_reference, recorded, atol=1e-9))}
    ref_from_ct = invert(reg.ct_from_reference)
    for v in workflow.verifications:
        if v.name.startswith(_FIDUCIAL_PREFIX) or v.name in out:
            continue  # a fiducial re-touched, or a target touched again: the first touch counts
        out[v.name] = apply(ref_from_ct, v.p_ct_mm)
    return out


def validate_session(session_dir: str | Path, *, config: ValidationConfig | None = None) -> ValidationResult:
    """The accuracy protocol on a recorded navigation session (``CASE/sessions/<timestamp>/``).

    Raises
    ------
    InputError
        Not a session folder, no ``registration.json`` in it, no frames, or no targets.
    """
    from orthonav.navigation.registration import load_registration
    from orthonav.navigation.session import REGISTRATION, SESSION, read_session_info
    from orthonav.navigation.workflow import WorkflowConfig

    sdir = Path(session_dir)
    if not sdir.is_dir():
        raise InputError(sdir, "session folder not found")
    if not (sdir / SESSION).is_file():
        sessions = sorted((sdir / "sessions").glob("*/session.json"))
        hint = f"; the latest session of this case is {sessions[-1].parent}" if sessions else ""
        raise InputError(sdir, f"not a recorded session folder (no {SESSION}); sessions are CASE/sessions/<timestamp>/{hint}")
    reg_path = sdir / REGISTRATION
    if not reg_path.is_file():
        raise InputError(reg_path, "the session has no registration: registration never completed (were all fiducials "
                                   "touched?), so FRE and TRE cannot be measured")
    config = config or ValidationConfig()
    info = read_session_info(sdir)
    record = load_registration(reg_path)
    # sessions recorded before the predicted-TRE limit existed replay without it, as navigation replay does
    wf = WorkflowConfig(**{"max_predicted_tre_mm": None, **info.workflow})
    defs = info.toolset.by_name()
    if wf.pointer not in defs:
        raise InputError(sdir / "session.json", f"the tool set has no '{wf.pointer}' pointer")
    case_dir = Path(info.case_dir)
    f_names = list(record.points_ct_mm)
    fid_ct = np.array([record.points_ct_mm[k] for k in f_names], dtype=np.float64).reshape(-1, 3)
    if len(f_names) < 3:
        raise InputError(reg_path, f"has {len(f_names)} fiducial points; need at least 3")
    t_names, tgt_ct, target_source = _session_targets(case_dir, info)

    # Replay the recorded frames through the live workflow itself (same dwell detector, same settings,
    # same sample handling), with the targets and the fiducials as its check points: its verification
    # touches are the target touches (a dwell nearest a fiducial is not a target touch).
    touches = _replayed_touches(sdir, info, wf, t_names, tgt_ct, f_names, fid_ct)
    ct_from_ref = record.ct_from_reference_array()
    m = len(t_names)
    vectors = np.full((1, m, 3), np.nan)
    replayed_registration = touches.pop("__registration__")
    for name, p_ref in touches.items():
        j = t_names.index(name)
        vectors[0, j] = apply(ct_from_ref, p_ref) - tgt_ct[j]  # with the session's recorded registration

    n = len(f_names)
    fle_est = record.fle_estimate_mm if record.fle_estimate_mm is not None else math.nan
    fle = record.fle_assumed_mm if record.fle_assumed_mm is not None else fle_est
    return build_result(
        "session",
        case_dir=case_dir,
        source=str(sdir),
        fiducial_names=f_names,
        fiducials_ct_mm=fid_ct,
        target_names=t_names,
        targets_ct_mm=tgt_ct,
        fle_mm=float(fle),
        fre_mm=np.array([record.fre_mm]),
        fiducial_residuals_mm=np.array([[record.residuals_mm.get(k, math.nan) for k in f_names]]),
        tre_vectors_mm=vectors,
        pivot=_session_pivot(sdir, info.toolset, wf.pointer),
        config=config,
        parameters={"session": str(sdir), "targets_from": target_source, "targets_touched": len(touches),
                    "replay_reproduces_registration": replayed_registration,
                    "registration_method": record.method, "fiducials": n, "targets": m,
                    "predicted_tre_of": ("the fiducial stage only: the surface refinement has no Fitzpatrick prediction, "
                                         "while the measured TRE uses the refined registration")
                    if "surface" in record.method else "the paired-point registration",
                    "fle_from": "assumed" if record.fle_assumed_mm is not None else "estimated from FRE (eq. 10)"},
    )


__all__ = ["validate_session"]
