"""Score a navigation run against phantom ground truth, from outside the run.

Navigation never sees truth: it records a session. This module observes that session after
the fact and compares it with what the scripted OR (:mod:`orthonav.phantoms.scenario`) knows:

* :func:`true_tre`: the registration made versus the true ``ct_from_reference`` at the truth
  targets (mm);
* :class:`GuidanceErrors`: ``|measured - true|`` saw guidance (deg, mm) for every recorded
  state, the states recomputed from the session's frames exactly as they were displayed
  (:func:`score_session`);
* :class:`ScoredNavigation`: the navigation summary plus those scores, what
  :func:`~orthonav.phantoms.scenario.simulate_navigation` returns; the scores are also written
  to ``<session>/scores.json``.

One array per bone (issue 16, :mod:`orthonav.phantoms.scenario_two_array`):

* :class:`KneeErrors`: ``|measured - true|`` live alignment (flexion, varus/valgus, deg) and
  gaps (medial, lateral, mm) for every state that has them, against the scripted truth at the
  femoral array's device time; also over the holds only (range-of-motion and stress holds);
* :func:`true_tre_per_bone`: each bone's registration against its TRUE ``ct_from_<bone>ref``
  at that bone's targets, with its FRE;
* :func:`hip_centre_error_mm`: a kinematic hip-centre fit mapped to CT versus the true centre;
* :func:`score_two_array_run`: all of these (and saw guidance per cut) for a two-array run's
  frames and states; :func:`score_two_array_session` for a recorded session, replayed through
  a fresh workflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from orthonav.core.atomic import write_json
from orthonav.core.transforms import apply, invert
from orthonav.navigation import NavigationState, NavigationSummary, RegistrationRecord, load_registration, prepare_replay, read_frames
from orthonav.navigation.session import REGISTRATION
from orthonav.navigation.summary import finite_or_none
from orthonav.planning.query import SCORED_CUT, scored_cut
from orthonav.tracking.frame import TrackingFrame

#: The scores of a session, next to its ``summary.json``.
SCORES = "scores.json"

#: ``truth_at(device_time_s)`` -> the scripted truth at that time (:class:`~orthonav.phantoms.scenario.TruthSample`).
TruthAt = Callable[[float], Any]


class GuidanceErrors:
    """Accumulates ``|measured - true|`` saw guidance over navigation states.

    Parameters
    ----------
    truth_at
        The scripted truth by device time (s); None scores nothing.
    cut
        The planned cut the scripted saw follows (:func:`orthonav.planning.query.scored_cut`).
    boundary_margin_s
        A state is skipped unless the truth is in the same scripted phase this long (s) before
        and after its device time (see :meth:`add`).
    """

    def __init__(self, truth_at: TruthAt | None, cut: str = SCORED_CUT, *, boundary_margin_s: float = 0.03) -> None:
        self.truth_at = truth_at
        self.cut = cut
        self.boundary_margin_s = boundary_margin_s
        self.err: list[tuple[float, float, float]] = []

    def add(self, state: NavigationState) -> None:
        """Compare one state's saw guidance on :attr:`cut` with the truth at the saw's device time."""
        if self.truth_at is None or self.cut not in state.saw:
            return
        saw = state.tools.get("Saw")
        if saw is None or not math.isfinite(saw.device_time_s):
            return
        tr = self.truth_at(saw.device_time_s)
        if not getattr(tr, "saw_visible", False) or getattr(tr, "saw_cut", self.cut) != self.cut:
            return  # (a two-array script guides the saw on several cuts: compare only on this one)
        # Over a socket the device time maps to script time only to within the sender's jitter:
        # a pose sampled just before a scripted jump (one hold to the next) must not be compared
        # with the truth just after it.
        ph = getattr(tr, "phase", None)
        m = self.boundary_margin_s
        if ph is not None and m > 0 and not (getattr(self.truth_at(saw.device_time_s - m), "phase", None) == ph
                                             and getattr(self.truth_at(saw.device_time_s + m), "phase", None) == ph):
            return  # (device time may be on another clock than the script: compare phases, not times)
        g = state.saw[self.cut]
        self.err.append((g.flexion_deg - tr.saw_flexion_deg, g.varus_deg - tr.saw_varus_deg, g.distance_mm - tr.saw_distance_mm))

    def summary(self) -> dict[str, float]:
        """Max and RMS absolute errors (``flexion_deg_*``, ``varus_deg_*``, ``distance_mm_*``) and
        the count ``n``; empty when nothing was compared."""
        if not self.err:
            return {}
        e = np.abs(np.array(self.err))
        rms = np.sqrt(np.mean(e**2, axis=0))
        return {
            "n": float(len(e)),
            "flexion_deg_max": float(e[:, 0].max()),
            "varus_deg_max": float(e[:, 1].max()),
            "distance_mm_max": float(e[:, 2].max()),
            "flexion_deg_rms": float(rms[0]),
            "varus_deg_rms": float(rms[1]),
            "distance_mm_rms": float(rms[2]),
        }


def true_tre(record: RegistrationRecord | None, true_ct_from_reference: ArrayLike | None,
             targets_ct_mm: Mapping[str, ArrayLike]) -> dict[str, float]:
    """True target registration error (mm) at each target (CT LPS mm): the distance between
    where the registration made puts the target and where it truly is. Empty without a
    registration or a true ``ct_from_reference``."""
    if record is None or true_ct_from_reference is None:
        return {}
    err = record.ct_from_reference_array() @ invert(np.asarray(true_ct_from_reference, dtype=np.float64))
    out: dict[str, float] = {}
    for k, v in targets_ct_mm.items():
        p = np.asarray(v, dtype=np.float64)
        out[k] = float(np.linalg.norm(apply(err, p) - p))
    return out


@dataclass(frozen=True)
class SessionScores:
    """A recorded session scored against the truth.

    Attributes
    ----------
    tre_mm
        Target -> true TRE (mm) of the registration the session made.
    guidance_error
        Max / RMS absolute saw guidance error against the scripted truth (deg, mm), ``n``.
    """

    tre_mm: dict[str, float] = field(default_factory=dict)
    guidance_error: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"tre_mm": self.tre_mm, "guidance_error": {k: finite_or_none(v) for k, v in self.guidance_error.items()}}


def score_guidance(session_dir: str | Path, truth_at: TruthAt | None, *, boundary_margin_s: float = 0.03) -> dict[str, float]:
    """Saw guidance errors over every recorded state of a session, as displayed live: the
    recorded frames run through a fresh workflow (the same deterministic states as the live
    session, each with the registration in force at its frame, e.g. before and after a surface
    refinement). The scored cut is :func:`orthonav.planning.query.scored_cut` of the plan's cuts."""
    if truth_at is None:
        return {}
    replay = prepare_replay(session_dir)
    cut = scored_cut(replay.inputs.context.cuts)
    if cut is None:
        return {}
    errors = GuidanceErrors(truth_at, cut, boundary_margin_s=boundary_margin_s)
    workflow = replay.new_workflow()
    for frame in read_frames(replay.session_dir):
        state = workflow.process(frame, clock=None)
        if state.tracking:
            errors.add(state)
    return errors.summary()


def score_session(session_dir: str | Path, *, targets_ct_mm: Mapping[str, ArrayLike],
                  true_ct_from_reference: ArrayLike | None = None, truth_at: TruthAt | None = None) -> SessionScores:
    """Score a recorded session: true TRE of its registration (``registration.json``) at the
    targets, and saw guidance errors against ``truth_at``."""
    sdir = Path(session_dir)
    reg_path = sdir / REGISTRATION
    record = load_registration(reg_path) if reg_path.is_file() else None
    return SessionScores(tre_mm=true_tre(record, true_ct_from_reference, targets_ct_mm),
                         guidance_error=score_guidance(sdir, truth_at))


@dataclass(frozen=True)
class ScoredNavigation(NavigationSummary):
    """A :class:`~orthonav.navigation.NavigationSummary` plus its scores against the truth
    (:class:`SessionScores` fields ``tre_mm`` and ``guidance_error``)."""

    tre_mm: dict[str, float] = field(default_factory=dict)
    guidance_error: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, summary: NavigationSummary, scores: SessionScores) -> "ScoredNavigation":
        base = {f.name: getattr(summary, f.name) for f in fields(NavigationSummary)}
        return cls(**base, tre_mm=dict(scores.tre_mm), guidance_error=dict(scores.guidance_error))

    @property
    def scores(self) -> SessionScores:
        return SessionScores(dict(self.tre_mm), dict(self.guidance_error))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), **self.scores.to_json()}


def scored_run(summary: NavigationSummary, *, targets_ct_mm: Mapping[str, ArrayLike],
               true_ct_from_reference: ArrayLike | None = None, truth_at: TruthAt | None = None) -> ScoredNavigation:
    """Score a finished navigation run from its recorded session and write ``<session>/scores.json``.
    A run that was not recorded (no session) has no scores."""
    if summary.session_dir is None:
        return ScoredNavigation.of(summary, SessionScores())
    scores = score_session(summary.session_dir, targets_ct_mm=targets_ct_mm, true_ct_from_reference=true_ct_from_reference,
                           truth_at=truth_at)
    write_json(summary.session_dir / SCORES, scores.to_json())
    return ScoredNavigation.of(summary, scores)


#: Phases in which the scripted knee is held still (the range-of-motion and stress-test holds).
HOLD_PHASES = ("rom_hold", "stress_hold")


class KneeErrors:
    """Accumulates ``|measured - true|`` live knee alignment (deg) and gaps (mm) over states.

    Parameters
    ----------
    truth_at
        ``truth_at(device_time_s)`` -> :class:`~orthonav.phantoms.scenario_two_array.KneeTruth`
        (or anything with ``alignment``, ``medial_gap_mm``, ``lateral_gap_mm``, ``phase``).
    femur_reference
        The femoral array's tool name: its device time picks the truth (both arrays of a frame
        are sampled at the same time).
    """

    def __init__(self, truth_at: TruthAt | None, *, femur_reference: str = "FemurRef") -> None:
        self.truth_at = truth_at
        self.femur_reference = femur_reference
        #: per state: phase name, phase start (s), signed errors d flexion, d varus (deg), d medial, d lateral (mm), true flexion (deg)
        self.rows: list[tuple[str, float, float, float, float, float, float]] = []

    def add(self, state: NavigationState) -> None:
        """Compare one state's ``alignment`` (and ``gaps``) with the truth; states without are skipped."""
        al = getattr(state, "alignment", None)
        if self.truth_at is None or al is None:
            return
        ref = state.tools.get(self.femur_reference)
        t = getattr(ref, "device_time_s", math.nan)
        if not math.isfinite(t):
            return
        tr = self.truth_at(t)
        true_al = getattr(tr, "alignment", None)
        if true_al is None:
            return
        gaps = getattr(state, "gaps", None)
        dm = dl = math.nan
        if gaps is not None and math.isfinite(getattr(tr, "medial_gap_mm", math.nan)):
            dm, dl = gaps.medial_mm - tr.medial_gap_mm, gaps.lateral_mm - tr.lateral_gap_mm
        ph = getattr(tr, "phase", None)
        self.rows.append((getattr(ph, "name", ""), float(getattr(ph, "t0_s", math.nan)), al.flexion_deg - true_al.flexion_deg,
                          al.varus_valgus_deg - true_al.varus_deg, dm, dl, true_al.flexion_deg))

    def _select(self, phases: tuple[str, ...] | None, max_flexion_deg: float | None) -> list[tuple]:
        return [r for r in self.rows if (phases is None or r[0] in phases) and (max_flexion_deg is None or r[6] <= max_flexion_deg)]

    def summary(self, phases: tuple[str, ...] | None = None, *, max_flexion_deg: float | None = None) -> dict[str, float]:
        """Max and RMS absolute errors ``flexion_deg_*``, ``varus_deg_*`` (over ``n`` states),
        ``medial_gap_mm_*``, ``lateral_gap_mm_*`` (over ``n_gaps``), only in ``phases`` when
        given (e.g. :data:`HOLD_PHASES`) and up to a true flexion of ``max_flexion_deg`` when
        given; empty when nothing was compared."""
        rows = self._select(phases, max_flexion_deg)
        if not rows:
            return {}
        e = np.abs(np.array([r[2:6] for r in rows], dtype=np.float64))
        out = {"n": float(len(e))}
        for j, key in ((0, "flexion_deg"), (1, "varus_deg")):
            out[f"{key}_max"], out[f"{key}_rms"] = float(e[:, j].max()), float(np.sqrt(np.mean(e[:, j] ** 2)))
        g = e[np.isfinite(e[:, 2]) & np.isfinite(e[:, 3])]
        if len(g):
            out["n_gaps"] = float(len(g))
            for j, key in ((2, "medial_gap_mm"), (3, "lateral_gap_mm")):
                out[f"{key}_max"], out[f"{key}_rms"] = float(g[:, j].max()), float(np.sqrt(np.mean(g[:, j] ** 2)))
        return out

    def hold_means(self, phases: tuple[str, ...] = HOLD_PHASES, *, max_flexion_deg: float | None = None) -> dict[str, float]:
        """The error of each hold's MEAN reading (the knee still: what a display averaging over
        the hold shows), largest over the holds: ``flexion_deg_max``, ``varus_deg_max``,
        ``medial_gap_mm_max``, ``lateral_gap_mm_max`` and ``n_holds``; empty without holds."""
        groups: dict[tuple[str, float], list[tuple]] = {}
        for r in self._select(phases, max_flexion_deg):
            groups.setdefault((r[0], r[1]), []).append(r)
        if not groups:
            return {}
        means = np.abs(np.array([np.nanmean(np.array([r[2:6] for r in g], dtype=np.float64), axis=0) for g in groups.values()]))
        out = {"n_holds": float(len(means))}
        for j, key in enumerate(("flexion_deg", "varus_deg", "medial_gap_mm", "lateral_gap_mm")):
            col = means[:, j][np.isfinite(means[:, j])]
            if len(col):
                out[f"{key}_max"] = float(col.max())
        return out


def true_tre_per_bone(record: RegistrationRecord | None, true_ct_from_reference: Mapping[str, ArrayLike],
                      targets_ct_mm: Mapping[str, Mapping[str, ArrayLike]]) -> dict[str, dict[str, float]]:
    """Per bone: the true TRE (mm) at each of that bone's targets of the bone's registration
    (``record.bones``, registration.json schema 3) against its TRUE ``ct_from_<bone>ref``, and
    ``"fre_mm"`` (the fiducial stage's FRE). A bone the record does not register is left out."""
    if record is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for bone, rec in getattr(record, "bones", {}).items():
        if bone not in true_ct_from_reference:
            continue
        err = rec.ct_from_reference_array() @ invert(np.asarray(true_ct_from_reference[bone], dtype=np.float64))
        row = {k: float(np.linalg.norm(apply(err, np.asarray(p, dtype=np.float64)) - np.asarray(p, dtype=np.float64)))
               for k, p in targets_ct_mm.get(bone, {}).items()}
        row["fre_mm"] = float(rec.fre_mm)
        out[bone] = row
    return out


def hip_centre_error_mm(centre_femurref_mm: ArrayLike, ct_from_femurref: ArrayLike, true_hip_centre_ct_mm: ArrayLike) -> float:
    """Distance (mm) between a kinematic hip centre (in the femoral array's frame, e.g.
    ``HipCentreFit.centre_femurref_mm``) mapped to CT by a femoral registration and the TRUE hip centre."""
    c = apply(np.asarray(ct_from_femurref, dtype=np.float64), np.asarray(centre_femurref_mm, dtype=np.float64).reshape(3))
    return float(np.linalg.norm(c - np.asarray(true_hip_centre_ct_mm, dtype=np.float64).reshape(3)))


@dataclass(frozen=True)
class KneeSessionScores:
    """A recorded two-array session scored against the scripted truth.

    Attributes
    ----------
    tre_mm
        Bone -> {target: true TRE (mm), "fre_mm": FRE} (:func:`true_tre_per_bone`).
    knee_error, knee_error_holds
        :meth:`KneeErrors.summary` over every state with alignment, and over the holds only.
    knee_error_hold_means
        :meth:`KneeErrors.hold_means`: the largest error of a hold's mean reading.
    guidance_error
        Cut -> saw guidance errors on that cut (:meth:`GuidanceErrors.summary`).
    hip_centre_error_mm
        The kinematic hip centre fitted to the recorded femoral-array poses of the hip circle
        (:func:`orthonav.navigation.hip_centre.fit_hip_centre`, the tracker as the still pelvis),
        mapped to CT by the session's femoral registration, versus the truth; NaN without.
    hip_centre_fit
        ``rms_mm``, ``range_deg``, ``n_used``, ``ok`` of that fit.
    hip_centre_ct_mm
        (3,) that kinematic hip centre in CT LPS mm (femoral registration), None without.
    registration
        The run's registration (schema 3, one record per bone) the scores were computed from, None without.
    """

    tre_mm: dict[str, dict[str, float]] = field(default_factory=dict)
    knee_error: dict[str, float] = field(default_factory=dict)
    knee_error_holds: dict[str, float] = field(default_factory=dict)
    knee_error_hold_means: dict[str, float] = field(default_factory=dict)
    guidance_error: dict[str, dict[str, float]] = field(default_factory=dict)
    hip_centre_error_mm: float = math.nan
    hip_centre_fit: dict[str, float] = field(default_factory=dict)
    hip_centre_ct_mm: tuple[float, float, float] | None = None
    registration: RegistrationRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {"tre_mm": self.tre_mm, "knee_error": self.knee_error, "knee_error_holds": self.knee_error_holds,
                "knee_error_hold_means": self.knee_error_hold_means,
                "guidance_error": {c: {k: finite_or_none(v) for k, v in g.items()} for c, g in self.guidance_error.items()},
                "hip_centre_error_mm": finite_or_none(self.hip_centre_error_mm), "hip_centre_fit": self.hip_centre_fit,
                "hip_centre_ct_mm": None if self.hip_centre_ct_mm is None else [float(x) for x in self.hip_centre_ct_mm]}


def score_two_array_run(pairs: Iterable[tuple[TrackingFrame, NavigationState]], scenario: Any,
                        record: RegistrationRecord | Callable[[], RegistrationRecord | None] | None, *,
                        script_time: Callable[[float], float] | None = None, boundary_margin_s: float = 0.03) -> KneeSessionScores:
    """Score a two-array run against its :class:`~orthonav.phantoms.scenario_two_array.TwoArrayScenario`.

    ``pairs``: every (tracking frame, navigation state) of the run in order; ``record``: its
    registration (schema 3, one record per bone), or a function giving it once the pairs have
    run (an offline run registers while it goes). Gives live alignment and gap errors
    (:class:`KneeErrors`), saw guidance errors on each scripted cut, per-bone true TRE and FRE,
    and the kinematic hip centre fitted to the femoral array's poses during the scripted hip
    circle (:func:`orthonav.navigation.hip_centre.fit_hip_centre`, the tracker standing in for
    the still pelvis) mapped to CT by the femoral registration. ``script_time`` maps a device
    time to script time (identity for an in-process or offline run).
    """
    from orthonav.navigation.hip_centre import fit_hip_centre

    to_script = script_time or (lambda t: t)

    def truth_at(device_time_s: float) -> Any:
        return scenario.truth_at(to_script(device_time_s))

    geo = scenario.geometry
    knee = KneeErrors(truth_at, femur_reference=geo.femur.reference)
    saw = {s.cut_name: GuidanceErrors(truth_at, s.cut_name, boundary_margin_s=boundary_margin_s) for s in (geo.femur, geo.tibia)}
    circle = [(ph.t0_s, ph.t1_s) for ph in scenario.phases if ph.name == "hip_circle"]
    femur_poses: list[np.ndarray] = []
    for frame, state in pairs:
        knee.add(state)
        for g in saw.values():
            g.add(state)
        pose = frame.tools.get(geo.femur.reference)
        if circle and pose is not None and pose.tracker_from_tool is not None:
            t = to_script(pose.device_time_s)
            if any(t0 <= t < t1 for t0, t1 in circle):
                femur_poses.append(np.asarray(pose.tracker_from_tool, dtype=np.float64))
    if callable(record):
        record = record()
    targets = {s.bone: dict(s.targets_ct_mm) for s in (geo.femur, geo.tibia)}
    tre = true_tre_per_bone(record, scenario.ct_from_reference, targets)
    hip_err, hip_fit, hip_ct = math.nan, {}, None
    bones = getattr(record, "bones", {}) if record is not None else {}
    if len(femur_poses) >= 10 and geo.femur.bone in bones:
        fit = fit_hip_centre(np.array(femur_poses))
        hip_fit = {"rms_mm": float(fit.rms_mm), "range_deg": float(fit.range_deg), "n_used": float(fit.n_used), "ok": float(fit.ok)}
        ct_from_femurref = bones[geo.femur.bone].ct_from_reference_array()
        hip_err = hip_centre_error_mm(fit.centre_femurref_mm, ct_from_femurref, scenario.hip_centre_ct_mm)
        hip_ct = tuple(float(x) for x in apply(ct_from_femurref, np.asarray(fit.centre_femurref_mm, dtype=np.float64).reshape(3)))
    return KneeSessionScores(tre, knee.summary(), knee.summary(HOLD_PHASES), knee.hold_means(), {c: g.summary() for c, g in saw.items()},
                             hip_err, hip_fit, hip_ct, record)


def score_two_array_session(session_dir: str | Path, scenario: Any, *, script_time: Callable[[float], float] | None = None,
                            boundary_margin_s: float = 0.03) -> KneeSessionScores:
    """:func:`score_two_array_run` of a recorded session: its frames run through a fresh
    workflow (as :func:`score_guidance`), its ``registration.json``."""
    sdir = Path(session_dir)
    reg_path = sdir / REGISTRATION
    record = load_registration(reg_path) if reg_path.is_file() else None
    replay = prepare_replay(sdir)
    workflow = replay.new_workflow()
    pairs = ((frame, workflow.process(frame, clock=None)) for frame in read_frames(replay.session_dir))
    return score_two_array_run(pairs, scenario, record, script_time=script_time, boundary_margin_s=boundary_margin_s)


__all__ = ["HOLD_PHASES", "SCORES", "GuidanceErrors", "KneeErrors", "KneeSessionScores", "ScoredNavigation", "SessionScores",
           "hip_centre_error_mm", "score_guidance", "score_session", "score_two_array_run", "score_two_array_session", "scored_run", "true_tre",
           "true_tre_per_bone"]
