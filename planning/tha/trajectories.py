"""The tool paths of a THA plan: the planned cup axis of every cup as a reaming / impaction
trajectory that navigation guides the reamer (the ``Drill`` tool) against.

A cup's trajectory runs from an entry point ``approach_mm`` out along the cup axis (the cup
frame's +z, out of the opening) to the planned cup centre of rotation (the cup frame's
origin), so navigation's depth to the target is the remaining depth to the planned cup
centre, and its angle is the reamer axis against the planned cup axis. All positions LPS mm in
the CT frame. The plan stores them (``plan.trajectories``); :class:`~.session.ThaSession`
recomputes them after every edit so they follow a moved cup.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from orthonav.core.errors import InputError

from ..implants import CUP_SIZES
from ..schema import Plan, Trajectory

#: The reamer / impactor approaches the cup centre along the cup axis from this far out (mm).
CUP_APPROACH_MM = 60.0
#: Plan trajectory names of cup axes: ``cup_axis_<side>``.
CUP_AXIS_PREFIX = "cup_axis_"


def cup_trajectories(plan: Plan, *, approach_mm: float = CUP_APPROACH_MM) -> dict[str, Trajectory]:
    """The planned cup axis of every ``tha_cup`` implant as a plan trajectory.

    Parameters
    ----------
    plan
        A plan with ``tha_cup`` implants (their ``ct_from_implant``: origin = centre of
        rotation, +z = cup axis out of the opening; CT LPS mm).
    approach_mm
        Distance of the entry point from the cup centre along the cup axis (mm, > 0).

    Returns
    -------
    dict
        ``{"cup_axis_<side>": Trajectory}`` (side from the cup's bone ``hip_<side>``, else
        the cup's number): entry ``approach_mm`` out along the cup axis, target the cup
        centre, diameter the cup's outer diameter (mm; the last reamer).
    """
    if not approach_mm > 0.0:
        raise InputError(None, f"approach_mm must be > 0, got {approach_mm}")
    out: dict[str, Trajectory] = {}
    cups = [imp for imp in plan.implants if imp.family == "tha_cup"]
    for n, imp in enumerate(cups, start=1):
        m = np.asarray(imp.ct_from_implant, dtype=np.float64)
        side = imp.bone.rsplit("_", 1)[1] if imp.bone.endswith(("_left", "_right")) else str(n)
        diameter = float(CUP_SIZES.get(imp.size, {}).get("outer_diameter_mm", 0.0)) or None
        out[f"{CUP_AXIS_PREFIX}{side}"] = Trajectory(
            bone=imp.bone,
            entry_lps_mm=tuple(float(x) for x in m[:3, 3] + approach_mm * m[:3, 2]),
            target_lps_mm=tuple(float(x) for x in m[:3, 3]),
            **({} if diameter is None else {"diameter_mm": diameter}),
        )
    return out


def with_cup_trajectories(plan: Plan, *, approach_mm: float | None = None) -> Plan:
    """``plan`` with its cup-axis trajectories (re)derived from its current cups; other
    trajectories are kept. ``approach_mm`` defaults to the plan's existing cup entries'
    distance (to 1e-6 mm; else :data:`CUP_APPROACH_MM`), so an edited cup keeps its approach
    length and an unchanged plan is given back unchanged."""
    kept: Mapping[str, Trajectory] = {k: t for k, t in plan.trajectories.items() if not k.startswith(CUP_AXIS_PREFIX)}
    if approach_mm is None:
        old = [t for k, t in plan.trajectories.items() if k.startswith(CUP_AXIS_PREFIX)]
        # to 1e-6 mm, so recomputing an unchanged plan gives it back exactly (no float creep)
        approach_mm = round(float(np.linalg.norm(np.subtract(old[0].entry_lps_mm, old[0].target_lps_mm))), 6) if old else CUP_APPROACH_MM
    return plan.model_copy(update={"trajectories": {**kept, **cup_trajectories(plan, approach_mm=approach_mm)}})


__all__ = ["CUP_APPROACH_MM", "CUP_AXIS_PREFIX", "cup_trajectories", "with_cup_trajectories"]
