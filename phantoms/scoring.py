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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
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
        if not getattr(tr, "saw_visible", False):
            return
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


__all__ = ["SCORES", "GuidanceErrors", "ScoredNavigation", "SessionScores", "score_guidance", "score_session", "scored_run",
           "true_tre"]
