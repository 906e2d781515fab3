"""The accuracy protocol on a recorded navigation session (real or simulated tracker).

FRE from the session's ``registration.json``; TRE from the pointer dwells after registration
(detected exactly as the live workflow detects them, by replaying the session's frames through
it), each paired with the nearest target (phantom truth, else the session's check points, else
the plan's ``target_*`` landmarks). Such a "touched" TRE also contains the target's own
localisation error. Pivot RMS from ``<session>/pivot.jsonl`` (a recording of the pointer
pivoting), else the calibration RMS stored in the session's tool file. CT LPS millimetres.

One reference array per bone (``registration.json`` version 3, ``bones``): the replay runs the
per-bone workflow (each bone's fiducials, each target checked against its own bone), every
bone's figures are computed from ITS registration, fiducials and targets (the predicted TRE of
a target from its bone's fiducial configuration and FLE), and the result lists all bones'
fiducials and targets together: FRE the RMS over every bone's fiducial residuals, the
per-bone FRE, FLE and counts in ``parameters["per_bone"]``.
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


def _point_bones(case_dir: Path, record: Any) -> dict[str, str]:
    """One array per bone: target / fiducial name -> bone, from the phantom truth's
    ``target_bones``, the plan's landmarks and the registration's per-bone fiducials."""
    out: dict[str, str] = {}
    plan_path = Case(case_dir).plan
    if plan_path.is_file():
        from orthonav.planning.schema import load_plan

        out.update({k: lm.bone for k, lm in load_plan(plan_path).landmarks.items() if lm.bone})
    if truth_path(case_dir).is_file():
        out.update(getattr(read_truth(case_dir), "target_bones", {}) or {})
    for bone, rec in record.bones.items():
        out.update({k: bone for k in rec.points_ct_mm})
    return out


_FIDUCIAL_PREFIX = "\x00fiducial:"  # check-point names that cannot clash with a target's


def _replayed_touches(sdir: Path, info: SessionInfo, wf: WorkflowConfig, t_names: list[str], tgt_ct: NDArray[np.float64], f_names: list[str],
                      fid_ct: NDArray[np.float64], *, point_bones: dict[str, str] | None = None) -> dict[str, Any]:
    """Target name -> (bone, first touched point in that bone's reference frame, mm), from
    replaying the session's frames; bone is "" for a one-array session.

    ``point_bones``: one array per bone, target / fiducial name -> its bone (a touch is then
    measured against a point of its bone only; a name left out is checked against every bone).
    Also ``"__registration__"``: whether the replayed registration (every bone's) equals the
    recorded one (False e.g. after a surface refinement outside the workflow; the touches are
    still valid because dwell detection happens in the reference frame, before any registration).
    """
    from orthonav.navigation.inputs import load_navigation_inputs
    from orthonav.navigation.registration import load_registration
    from orthonav.navigation.session import FRAMES, REGISTRATION, read_frames
    from orthonav.navigation.workflow import Workflow

    inputs = load_navigation_inputs(info.case_dir, info.toolset, surfaces=False)
    checks = {n: p for n, p in zip(t_names, tgt_ct)}
    checks.update({_FIDUCIAL_PREFIX + n: p for n, p in zip(f_names, fid_ct)})
    per_bone = bool(inputs.context.references)
    extra: dict[str, Any] = {}
    if per_bone:
        bones = {**inputs.landmark_bones, **{(_FIDUCIAL_PREFIX + k if k in f_names else k): b for k, b in (point_bones or {}).items()}}
        extra = {"bone_fiducials": inputs.bone_fiducials, "point_bones": bones}
    workflow = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm, check_points_ct_mm=checks, config=wf, **extra)
    for frame in read_frames(sdir):
        workflow.process(frame, clock=None)
    recorded = load_registration(sdir / REGISTRATION)
    if per_bone:
        regs = {b: r.ct_from_reference for b, r in workflow.bone_registrations.items()}
        wanted = {b: r.ct_from_reference_array() for b, r in recorded.bones.items()}
    else:
        regs = {} if workflow.registration is None else {"": workflow.registration.ct_from_reference}
        wanted = {"": recorded.ct_from_reference_array()}
    if not regs:
        raise InputError(sdir / FRAMES, "replaying the recorded frames gives no registration although the session has one: "
                                        "the case's plan or the workflow changed since the session was recorded")
    same = set(regs) == set(wanted) and all(np.allclose(regs[b], wanted[b], atol=1e-9) for b in regs)
    out: dict[str, Any] = {"__registration__": bool(same)}
    for v in workflow.verifications:
        if v.name.startswith(_FIDUCIAL_PREFIX) or v.name in out or v.bone not in regs:
            continue  # a fiducial re-touched, or a target touched again: the first touch counts
        out[v.name] = (v.bone, apply(invert(regs[v.bone]), v.p_ct_mm))
    return out


def _per_bone_result(case_dir: Path, sdir: Path, record: Any, touches: dict[str, Any], t_names: list[str], tgt_ct: NDArray[np.float64],
                     point_bones: dict[str, str], pivot: PivotFigures | None, config: ValidationConfig,
                     parameters: dict[str, Any]) -> ValidationResult:
    """One array per bone: each bone's figures from its own registration (see the module
    docstring), merged into one result (fiducials and targets of every bone, bone by bone)."""
    from dataclasses import replace

    from .validation_result import evaluate_checks

    # A target's bone: known (truth / plan), else the bone whose registration measured its touch.
    bone_of = {n: point_bones.get(n) or (touches[n][0] if n in touches else next(iter(record.bones))) for n in t_names}
    parts, per_bone = [], {}
    for bone, rec in record.bones.items():
        f_names = list(rec.points_ct_mm)
        if len(f_names) < 3:
            raise InputError(sdir / "registration.json", f"has {len(f_names)} fiducial points on the {bone}; need at least 3")
        fid_ct = np.array([rec.points_ct_mm[k] for k in f_names], dtype=np.float64).reshape(-1, 3)
        idx = [j for j, n in enumerate(t_names) if bone_of[n] == bone]
        vectors = np.full((1, len(idx), 3), np.nan)
        ct_from_ref = rec.ct_from_reference_array()
        for i, j in enumerate(idx):
            hit = touches.get(t_names[j])
            if hit is not None and hit[0] == bone:
                vectors[0, i] = apply(ct_from_ref, hit[1]) - tgt_ct[j]
        fle_est = rec.fle_estimate_mm if rec.fle_estimate_mm is not None else math.nan
        fle = rec.fle_assumed_mm if rec.fle_assumed_mm is not None else fle_est
        part = build_result("session", case_dir=case_dir, source=str(sdir), fiducial_names=f_names, fiducials_ct_mm=fid_ct,
                            target_names=[t_names[j] for j in idx], targets_ct_mm=tgt_ct[idx].reshape(-1, 3), fle_mm=float(fle),
                            fre_mm=np.array([rec.fre_mm]),
                            fiducial_residuals_mm=np.array([[rec.residuals_mm.get(k, math.nan) for k in f_names]]),
                            tre_vectors_mm=vectors, pivot=pivot, config=config, parameters={})
        parts.append(part)
        per_bone[bone] = {"reference": rec.reference, "fre_mm": float(rec.fre_mm), "fle_mm": float(fle), "fiducials": len(f_names),
                          "targets": len(idx), "targets_touched": int(np.isfinite(vectors[0, :, 0]).sum()), "method": rec.method,
                          "predicted_fre_mm": part.predicted_fre_mm}
    residuals = np.concatenate([p.fiducial_residuals_mm for p in parts], axis=1)
    fre = np.array([math.sqrt(float(np.nanmean(residuals**2)))])
    n = np.array([len(p.fiducial_names) for p in parts], dtype=np.float64)
    tre = np.concatenate([p.tre_mm for p in parts], axis=1)
    predicted = np.concatenate([p.predicted_tre_mm for p in parts])
    cat = dict(
        fiducial_names=tuple(n for p in parts for n in p.fiducial_names),
        fiducials_ct_mm=np.vstack([p.fiducials_ct_mm for p in parts]),
        target_names=tuple(n for p in parts for n in p.target_names),
        targets_ct_mm=np.vstack([p.targets_ct_mm for p in parts]),
        # RMS over the fiducials of every bone (each bone's FLE weighted by its fiducials)
        fle_mm=math.sqrt(float(np.sum(n * np.array([p.fle_mm for p in parts]) ** 2) / n.sum())),
        fre_mm=fre,
        fiducial_residuals_mm=residuals,
        tre_mm=tre,
        tre_vectors_mm=np.concatenate([p.tre_vectors_mm for p in parts], axis=1),
        predicted_tre_mm=predicted,
        predicted_fre_mm=math.sqrt(float(np.sum(n * np.array([p.predicted_fre_mm for p in parts]) ** 2) / n.sum())),
        checks=evaluate_checks(config, mode="session", fre_mm=fre, tre_mm=tre, predicted_tre_mm=predicted, pivot=pivot),
        parameters={**parameters, "fiducials": int(n.sum()), "targets": len(tre[0]), "per_bone": per_bone},
    )
    return replace(parts[0], **cat)


def _knee_scores(session_dir: Path) -> dict[str, Any]:
    """A two-array session's alignment, gap and hip-centre errors against the scripted truth,
    from its ``scores.json`` (written by
    :func:`~orthonav.phantoms.scenario_two_array.simulate_two_array_navigation`; a real or
    one-array session has none): flat ``knee_<figure>`` keys for ``result.json``."""
    import json

    from orthonav.phantoms.scoring import SCORES

    path = session_dir / SCORES
    try:
        scores = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for key in ("knee_error", "knee_error_holds", "knee_error_hold_means"):
        for k, v in (scores.get(key) or {}).items():
            out[f"{key}_{k}"] = v
    if scores.get("hip_centre_error_mm") is not None:
        out["knee_hip_centre_error_mm"] = scores["hip_centre_error_mm"]
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
    bone_records = dict(record.bones)
    if bone_records:  # one array per bone: every bone's fiducials
        f_names = [k for rec in bone_records.values() for k in rec.points_ct_mm]
        fid_ct = np.array([rec.points_ct_mm[k] for rec in bone_records.values() for k in rec.points_ct_mm],
                          dtype=np.float64).reshape(-1, 3)
    else:
        f_names = list(record.points_ct_mm)
        fid_ct = np.array([record.points_ct_mm[k] for k in f_names], dtype=np.float64).reshape(-1, 3)
    if len(f_names) < 3:
        raise InputError(reg_path, f"has {len(f_names)} fiducial points; need at least 3")
    t_names, tgt_ct, target_source = _session_targets(case_dir, info)
    point_bones = _point_bones(case_dir, record) if bone_records else {}

    # Replay the recorded frames through the live workflow itself (same dwell detector, same settings,
    # same sample handling), with the targets and the fiducials as its check points: its verification
    # touches are the target touches (a dwell nearest a fiducial is not a target touch).
    touches = _replayed_touches(sdir, info, wf, t_names, tgt_ct, f_names, fid_ct, point_bones=point_bones)
    replayed_registration = touches.pop("__registration__")
    pivot = _session_pivot(sdir, info.toolset, wf.pointer)
    if bone_records:
        return _per_bone_result(case_dir, sdir, record, touches, t_names, tgt_ct, point_bones, pivot, config, {
            "session": str(sdir), "targets_from": target_source, "targets_touched": len(touches),
            "replay_reproduces_registration": replayed_registration,
            "registration_method": "; ".join(f"{b}: {r.method}" for b, r in bone_records.items()),
            "predicted_tre_of": "each bone's paired-point registration, at that bone's targets",
            "fle_from": "per bone: assumed, else estimated from that bone's FRE (eq. 10)",
            **_knee_scores(sdir)})
    ct_from_ref = record.ct_from_reference_array()
    m = len(t_names)
    vectors = np.full((1, m, 3), np.nan)
    for name, (_bone, p_ref) in touches.items():
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
        pivot=pivot,
        config=config,
        parameters={"session": str(sdir), "targets_from": target_source, "targets_touched": len(touches),
                    "replay_reproduces_registration": replayed_registration,
                    "registration_method": record.method, "fiducials": n, "targets": m,
                    "predicted_tre_of": ("the fiducial stage only: the surface refinement has no Fitzpatrick prediction, "
                                         "while the measured TRE uses the refined registration")
                    if "surface" in record.method else "the paired-point registration",
                    "fle_from": "assumed" if record.fle_assumed_mm is not None else "estimated from FRE (eq. 10)",
                    **_knee_scores(sdir)},
    )


__all__ = ["validate_session"]
