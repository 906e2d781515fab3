"""What the scripted OR needs from a case: fiducials, targets, the cut the saw follows, the
plan trajectory the drill follows and the reference mount (:class:`ORGeometry`), from phantom truth and a plan.

Every position is CT LPS millimetres, every direction an LPS unit vector. The plan is asked
through :mod:`orthonav.planning.query` (fiducials, the scored cut, medial directions), the
same answers navigation gets, so scripted errors are defined in the frame navigation measures
them in. :func:`toy_geometry` is a small synthetic knee needing no phantom.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import InputError
from orthonav.core.vectors import unit
from orthonav.planning import query
from orthonav.planning.schema import Plan

Vec = NDArray[np.float64]


@dataclass(frozen=True)
class KneeGeometry:
    """What the scenario needs from the phantom truth and the plan (CT LPS mm).

    Attributes
    ----------
    fiducial_names
        Names in the plan's order (``fiducial_1``, ...).
    fiducials_ct_mm
        (n, 3) TRUE fiducial positions (where the pointer physically touches), plan order.
    targets_ct_mm
        Target name -> (3,) true position (verification and TRE).
    cut_point_mm, cut_normal
        The planned cut the saw follows (normal from kept bone into the removed part): the
        distal femoral cut of a knee plan, else the plan's first cut in name order (a THA
        plan's femoral neck cut ``neck_<side>``).
    medial
        (3,) unit vector pointing medially for the cut's bone (knee: lateral -> medial
        epicondyle; hip: from the operated acetabulum towards the other one, or the midline).
    reference_mount_ct_mm
        (3,) where the reference marker is fixed to the bone.
    centre_ct_mm
        (3,) a point inside the anatomy (approach directions point away from it).
    cut_name
        Plan key of the cut (``distal_femur``, ``neck_left``, ...).
    trajectory_name, trajectory_entry_mm, trajectory_target_mm
        The plan trajectory the drill tool is guided along ('' / None when the plan has none):
        :func:`plan_trajectory` (a THA plan's planned cup axis for the reamer / impactor).
    """

    fiducial_names: tuple[str, ...]
    fiducials_ct_mm: Vec
    targets_ct_mm: Mapping[str, Vec]
    cut_point_mm: Vec
    cut_normal: Vec
    medial: Vec
    reference_mount_ct_mm: Vec
    centre_ct_mm: Vec
    cut_name: str = "distal_femur"
    trajectory_name: str = ""
    trajectory_entry_mm: Vec | None = None
    trajectory_target_mm: Vec | None = None


#: The scripted OR works for any case with fiducials, a cut and a reference mount: one geometry.
ORGeometry = KneeGeometry


def _get(obj: object, key: str, default: object = None) -> object:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _points_of(value: object) -> tuple[list[str], Vec]:
    """Names and (n, 3) points from a dict name -> point or a list of points."""
    if isinstance(value, Mapping):
        names = list(value)
        pts = np.array([np.asarray(_get(value[k], "position_lps_mm", value[k]), dtype=np.float64) for k in names])
        return names, pts.reshape(-1, 3)
    pts = np.asarray(value, dtype=np.float64).reshape(-1, 3)
    return [f"fiducial_{i + 1}" for i in range(len(pts))], pts


def scripted_medial(truth_landmarks: Mapping[str, object], plan: Plan, cut_bone: str) -> Vec:
    """Unit medial direction (LPS) the scripted saw errors are defined in, for ``cut_bone``.

    A knee phantom's truth has the true epicondyles: medial is the true lateral -> medial
    epicondyle direction. Otherwise it is navigation's own choice, asked of the plan
    (:func:`orthonav.planning.query.medial_direction`), so the scripted saw errors are defined
    in the frame navigation measures them in. Raises InputError when nothing tells medial
    from lateral.
    """
    med, lat = truth_landmarks.get("medial_epicondyle"), truth_landmarks.get("lateral_epicondyle")
    if med is not None and lat is not None:
        return unit(np.asarray(med, dtype=np.float64) - np.asarray(lat, dtype=np.float64), "true medial direction")
    return query.medial_direction(plan, cut_bone)


def plan_trajectory(plan: Plan) -> tuple[str, Vec, Vec] | None:
    """(name, entry (3,), target (3,)) of the plan trajectory the scripted drill tool follows,
    or None when the plan has none: the first in name order (a THA plan's planned cup axis
    ``cup_axis_<side>``, stored by :func:`orthonav.planning.tha.cup_trajectories`). The script
    takes it from the plan, as navigation does, so it never derives a path of its own."""
    if not plan.trajectories:
        return None
    name = min(plan.trajectories)
    t = plan.trajectories[name]
    return name, np.asarray(t.entry_lps_mm, dtype=np.float64), np.asarray(t.target_lps_mm, dtype=np.float64)


def geometry_from(truth: object, plan: Plan) -> KneeGeometry:
    """Combine phantom truth (``truth.json`` object or dict) and a plan into a :class:`KneeGeometry`.

    Works for a knee (TKA) and a hip (THA) plan alike: the saw follows the distal femoral cut,
    else the plan's first cut (:func:`orthonav.planning.query.scored_cut`); medial from
    :func:`scripted_medial`.
    Each plan fiducial is matched to the nearest true fiducial (the plan's are detected in the
    CT, so they differ from the truth by the detection error).
    """
    names, p_plan = query.fiducials(plan)
    if len(names) < 3:
        raise InputError(None, f"the plan has {len(names)} fiducial landmarks (fiducial_1..); need at least 3")
    _tn, p_true = _points_of(_get(truth, "fiducials_lps_mm"))
    d = np.linalg.norm(p_plan[:, None, :] - p_true[None, :, :], axis=2)
    match = np.argmin(d, axis=1)
    if len(set(match.tolist())) != len(match) or np.max(d[np.arange(len(match)), match]) > 5.0:
        raise InputError(None, "plan fiducials do not match the truth fiducials one to one within 5 mm")
    fid_true = p_true[match]
    t_names, t_pts = _points_of(_get(truth, "targets_lps_mm") or {})
    if not isinstance(_get(truth, "targets_lps_mm"), Mapping):
        t_names = [f"target_{i + 1}" for i in range(len(t_pts))]
    cut_name = query.scored_cut(plan.cuts)
    if cut_name is None:
        raise InputError(None, "the plan has no cut for the saw to follow (e.g. 'distal_femur', 'neck_left')")
    cut = plan.cuts[cut_name]
    lms = {k: np.asarray(_get(v, "position_lps_mm", v), dtype=np.float64) for k, v in (_get(truth, "landmarks_lps_mm") or {}).items()}

    def lm(name: str) -> Vec | None:
        return lms[name] if name in lms else query.landmark_position(plan, name)

    cut_point = np.asarray(cut.point_lps_mm, dtype=np.float64)
    medial = scripted_medial(lms, plan, cut.bone)
    mount = _get(truth, "reference_mount_lps_mm")
    if mount is None:
        raise InputError(None, "truth has no reference_mount_lps_mm")
    med, lat = lm("medial_epicondyle"), lm("lateral_epicondyle")
    near_cut = [med, lat] if med is not None and lat is not None else [cut_point]
    traj = plan_trajectory(plan)
    return KneeGeometry(
        fiducial_names=tuple(names),
        fiducials_ct_mm=fid_true,
        targets_ct_mm={k: v for k, v in zip(t_names, t_pts)},
        cut_point_mm=cut_point,
        cut_normal=np.asarray(cut.normal_lps, dtype=np.float64),
        medial=medial,
        reference_mount_ct_mm=np.asarray(mount, dtype=np.float64).reshape(3),
        centre_ct_mm=np.mean(np.vstack([fid_true, *near_cut]), axis=0),
        cut_name=cut_name,
        **({} if traj is None else {"trajectory_name": traj[0], "trajectory_entry_mm": traj[1], "trajectory_target_mm": traj[2]}),
    )


def geometry_from_case(case_dir: str | Path) -> KneeGeometry:
    """Read ``truth/truth.json`` and ``plan.json`` of a phantom case."""
    from orthonav.core.case import Case
    from orthonav.phantoms.truth import read_truth
    from orthonav.planning.schema import load_plan

    case = Case(case_dir)
    plan = load_plan(case.require(case.plan, "orthonav plan --auto"))
    return geometry_from(read_truth(case_dir), plan)


def toy_geometry(*, seed: int = 0) -> KneeGeometry:
    """A small synthetic knee (no phantom needed): 6 fiducials around a distal femur near the origin.

    The femur's mechanical axis is +z (LPS superior), the distal cut is the plane z = 0 with
    normal -z, medial is +x (a right knee: its medial side faces the patient's left, LPS +x).
    """
    rng = np.random.default_rng(seed)
    ang = np.radians(np.array([20.0, 80.0, 150.0, 210.0, 270.0, 330.0]) + rng.uniform(-10, 10, 6))
    z = np.array([-20.0, 30.0, 10.0, 45.0, -5.0, 25.0])
    fid = np.c_[40.0 * np.cos(ang), 35.0 * np.sin(ang), z]
    targets = {"target_1": np.array([10.0, -5.0, 15.0]), "target_2": np.array([-20.0, 8.0, 40.0]), "target_3": np.array([25.0, 15.0, -10.0])}
    return KneeGeometry(
        fiducial_names=tuple(f"fiducial_{i + 1}" for i in range(6)),
        fiducials_ct_mm=fid,
        targets_ct_mm=targets,
        cut_point_mm=np.array([0.0, 0.0, 0.0]),
        cut_normal=np.array([0.0, 0.0, -1.0]),
        medial=np.array([1.0, 0.0, 0.0]),
        reference_mount_ct_mm=np.array([0.0, -20.0, 120.0]),
        centre_ct_mm=np.array([0.0, 0.0, 10.0]),
    )


__all__ = ["KneeGeometry", "ORGeometry", "geometry_from", "geometry_from_case", "plan_trajectory", "scripted_medial",
           "toy_geometry"]
