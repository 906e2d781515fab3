"""Questions other stages ask of a plan: its fiducials, a bone's medial direction and frames,
the cut a scripted saw follows. Planning owns these answers; navigation and phantoms ask here
instead of recomputing them from raw landmark dicts.

Every position is CT LPS millimetres; every direction is an LPS unit vector.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import InputError
from orthonav.core.vectors import unit

from .tka.alignment import LimbFrames, limb_frames
from .schema import Plan

#: Landmark pairs (medial, lateral) that define the medial direction of a knee bone.
_MEDIAL_PAIRS = {
    "femur": ("medial_epicondyle", "lateral_epicondyle"),
    "tibia": ("medial_plateau_centre", "lateral_plateau_centre"),
}

#: The cut a scripted saw follows and the accuracy protocol scores: this one when planned,
#: else the plan's first cut by name.
SCORED_CUT = "distal_femur"


def landmark_position(plan: Plan, name: str) -> NDArray[np.float64] | None:
    """Position of landmark ``name`` (LPS mm), or None when the plan has no such landmark."""
    lm = plan.landmarks.get(name)
    return None if lm is None else np.asarray(lm.position_lps_mm, dtype=np.float64)


def fiducials(plan: Plan, bone: str | None = None) -> tuple[list[str], NDArray[np.float64]]:
    """The plan's ``fiducial_k`` landmarks in numeric order: names and (n, 3) CT LPS mm.

    ``bone``: only the fiducials on that bone (the landmark's ``bone``), for registering each
    bone to its own reference array; None = every fiducial.
    """
    names = [k for k in plan.landmarks if k.startswith("fiducial_") and k.split("_", 1)[1].isdigit()
             and (bone is None or plan.landmarks[k].bone == bone)]
    names.sort(key=lambda k: int(k.split("_", 1)[1]))
    pts = np.array([plan.landmarks[k].position_lps_mm for k in names], dtype=np.float64).reshape(-1, 3)
    return names, pts


def anatomical_points(plan: Plan) -> dict[str, NDArray[np.float64]]:
    """Every landmark that is not a fiducial (LPS mm): the plan's check points and targets."""
    return {k: np.asarray(v.position_lps_mm, dtype=np.float64) for k, v in plan.landmarks.items() if not k.startswith("fiducial_")}


def medial_direction(plan: Plan, bone: str) -> NDArray[np.float64]:
    """Unit vector pointing medially for ``bone`` (LPS).

    Femur: lateral -> medial epicondyle; tibia: lateral -> medial plateau centre (either
    pair serves a bone that has neither). A bone named ``*_left`` / ``*_right`` (hip plans):
    from its side's acetabulum (or femoral head) centre towards the other side's, else by its
    side. Otherwise a right leg's medial side is LPS +x (towards the patient's left), a left
    leg's is -x.

    Raises
    ------
    InputError
        Nothing in the plan tells medial from lateral.
    """
    def pos(name: str) -> NDArray[np.float64]:
        p = landmark_position(plan, name)
        assert p is not None
        return p

    lms = plan.landmarks
    for key, (m, l) in _MEDIAL_PAIRS.items():
        if bone.startswith(key) and m in lms and l in lms:
            return unit(pos(m) - pos(l), f"medial direction of {bone}")
    for m, l in _MEDIAL_PAIRS.values():
        if m in lms and l in lms:
            return unit(pos(m) - pos(l), f"medial direction of {bone}")
    for own, other in (("left", "right"), ("right", "left")):
        if bone.endswith(f"_{own}"):  # a bone of one side (hip plan): medial points towards the other side
            for key in ("acetabulum_centre", "femoral_head_centre"):
                if f"{key}_{own}" in lms and f"{key}_{other}" in lms:
                    return unit(pos(f"{key}_{other}") - pos(f"{key}_{own}"), f"medial direction of {bone}")
            return np.array([-1.0, 0.0, 0.0]) if own == "left" else np.array([1.0, 0.0, 0.0])
    if plan.side in ("right", "left"):
        return np.array([1.0, 0.0, 0.0]) if plan.side == "right" else np.array([-1.0, 0.0, 0.0])
    raise InputError(None, f"cannot tell medial from lateral for {bone!r}: the plan has no epicondyle / plateau / hip landmarks and no side")


def scored_cut(cut_names: Iterable[str]) -> str | None:
    """The cut a scripted saw follows and the protocol scores: :data:`SCORED_CUT` when planned,
    else the first by name; None when there are no cuts."""
    names = sorted(cut_names)
    if not names:
        return None
    return SCORED_CUT if SCORED_CUT in names else names[0]


def frames(plan: Plan) -> LimbFrames:
    """The femoral and tibial anatomical directions of the plan's landmarks
    (:func:`~orthonav.planning.tka.alignment.limb_frames`)."""
    return limb_frames(plan.landmarks)


__all__ = ["SCORED_CUT", "anatomical_points", "fiducials", "frames", "landmark_position", "medial_direction", "scored_cut"]
