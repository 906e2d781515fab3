"""The hip (THA) editing session: every edit recomputes the acetabular / cup angles, the neck
cuts, leg length, offsets, reaming and coverage, and the cup-axis trajectories (:class:`ThaSession`)."""

from __future__ import annotations

from orthonav.core.errors import InputError

from ..schema import Plan
from ..session import PlanSession
from .outcomes import tha_outcomes
from .trajectories import with_cup_trajectories


class ThaSession(PlanSession):
    """A :class:`~orthonav.planning.session.PlanSession` for THA plans: every edit
    (implant move, landmark override) recomputes the acetabular / cup angles, the neck cuts,
    leg length, offsets, reaming and coverage (:func:`tha_outcomes`) and the cup-axis
    trajectories navigation guides the reamer against (:func:`.trajectories.with_cup_trajectories`);
    undo / redo as for TKA.
    A knee plan is edited by :class:`~orthonav.planning.tka.session.TkaSession`
    (:func:`orthonav.planning.auto.session_for` picks the session for a plan)."""

    def _recompute(self, plan: Plan) -> tuple[Plan, dict[str, object]]:
        if plan.procedure != "tha":
            raise InputError(None, f"a THA session cannot edit a {plan.procedure!r} plan; use orthonav.planning.auto.session_for")
        angles, out, cuts = tha_outcomes(plan, self.meshes)
        kept_cuts = {k: c for k, c in plan.cuts.items() if not k.startswith("neck_")}
        settings = {k: v for k, v in plan.metrics.items() if k not in out}
        plan = with_cup_trajectories(plan)
        return plan.model_copy(update={"angles_deg": angles, "cuts": {**kept_cuts, **cuts}, "metrics": {**settings, **out}}), {}


__all__ = ["ThaSession"]
