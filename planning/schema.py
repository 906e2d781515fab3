"""``plan.json``: the surgical plan, versioned and validated (pydantic).

All positions are LPS millimetres in the CT frame; all poses are 4x4 ``a_from_b`` nested
lists (row-major). Angles are degrees. Keys of ``angles_deg`` use their usual abbreviations
(``hka``, ``ldfa``, ``mpta``, ``slope``, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from orthonav.core.schema import Versioned, load_model, save_model
from pydantic import BaseModel, ConfigDict, Field, field_validator

Vec3 = tuple[float, float, float]
Matrix4 = list[list[float]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Landmark(_Strict):
    """A named point on a bone."""

    position_lps_mm: Vec3
    bone: str
    method: str = Field(description="how it was found, e.g. 'sphere fit', 'manual', 'markups import'")


class Axis(_Strict):
    """A line through ``origin`` along unit ``direction`` (both LPS)."""

    origin_lps_mm: Vec3
    direction_lps: Vec3
    definition: str = ""

    @field_validator("direction_lps")
    @classmethod
    def _unit(cls, v: Vec3) -> Vec3:
        n = float(np.linalg.norm(v))
        if not np.isfinite(n) or n < 1e-9:
            raise ValueError("direction must be a non-zero finite vector")
        if abs(n - 1.0) <= 1e-12:  # already unit: keep it bit for bit (a JSON round trip is exact)
            return tuple(float(x) for x in v)  # type: ignore[return-value]
        return tuple(float(x) / n for x in v)  # type: ignore[return-value]


class CutPlane(_Strict):
    """A planar bone cut.

    ``normal_lps`` is a unit vector pointing from the kept bone into the resected part, so a
    point ``p`` is resected when ``dot(p - point, normal) > 0``.
    """

    bone: str
    point_lps_mm: Vec3
    normal_lps: Vec3
    resection_depth_mm: float = Field(description="bone removed, measured at the reference landmark(s)")
    reference: str = Field(default="", description="landmark(s) the depth is measured from")
    depths_mm: dict[str, float] = Field(default_factory=dict, description="depth per condyle / plateau")

    @field_validator("normal_lps")
    @classmethod
    def _unit(cls, v: Vec3) -> Vec3:
        return Axis._unit(v)


class Trajectory(_Strict):
    """A planned drill / pin path from ``entry`` to ``target`` (LPS mm)."""

    bone: str
    entry_lps_mm: Vec3
    target_lps_mm: Vec3
    diameter_mm: float = 3.2


class ImplantPlacement(_Strict):
    """An implant component placed on a bone."""

    family: str = Field(description="e.g. 'tka_femoral', 'tka_tibial_tray', 'tha_cup'")
    size: str
    bone: str
    ct_from_implant: Matrix4
    mesh: str | None = Field(default=None, description="path relative to the case folder, if written")

    @field_validator("ct_from_implant")
    @classmethod
    def _rigid(cls, v: Matrix4) -> Matrix4:
        from orthonav.core.errors import InputError
        from orthonav.core.transforms import validate_rigid

        try:
            validate_rigid(v, name="ct_from_implant")
        except InputError as e:  # pydantic reports ValueErrors with the field's location
            raise ValueError(e.problem) from e
        return v


class Plan(Versioned):
    """The whole plan for one case.

    Schema 2 adds ``not_measured`` and ``assumptions`` (what the data could not support and
    what the plan assumed instead); schema 1 files read unchanged (both empty).
    """

    SCHEMA_VERSION = 2
    procedure: str = Field(default="tka", description="'tka' or 'tha'")
    side: str | None = Field(default=None, description="'left', 'right', 'both' (a bilateral THA plan) or None")
    alignment: str = Field(default="mechanical", description="'mechanical' or 'kinematic'")
    landmarks: dict[str, Landmark] = Field(default_factory=dict)
    axes: dict[str, Axis] = Field(default_factory=dict)
    angles_deg: dict[str, float] = Field(default_factory=dict)
    cuts: dict[str, CutPlane] = Field(default_factory=dict)
    trajectories: dict[str, Trajectory] = Field(default_factory=dict)
    implants: list[ImplantPlacement] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict, description="removed volume, coverage, ...")
    not_measured: dict[str, str] = Field(default_factory=dict, description="measure (landmark, axis, angle) -> why the data could not support it, e.g. the CT ends above the femoral head")
    assumptions: dict[str, str] = Field(default_factory=dict, description="value the plan assumed instead of measuring (name -> value and why), e.g. a default valgus correction")
    notes: str = ""


def load_plan(path: str | Path) -> Plan:
    """Read and validate ``plan.json`` (clear error if missing, corrupt or newer)."""
    return load_model(path, Plan)


def plan_bones(plan: Plan) -> set[str]:
    """The bones a plan names (through its landmarks, cuts, trajectories and implants)."""
    named = [lm.bone for lm in plan.landmarks.values()] + [c.bone for c in plan.cuts.values()]
    named += [t.bone for t in plan.trajectories.values()] + [i.bone for i in plan.implants]
    return {b for b in named if b}


def require(plan: Plan, path: str | Path | None, *, stage: str, landmarks: bool = False, cuts: bool | tuple[str, ...] = False,
            bones: bool = False, angles: bool = False) -> Plan:
    """Check that ``plan`` holds what ``stage`` needs; return it unchanged.

    A plan may legitimately be partial while it is being made (the planner loads and saves
    such plans), so :func:`load_plan` accepts it; each stage that consumes a plan calls this
    with what it needs, so ``{"schema_version": 1}`` alone is an error there, not an empty
    result.

    Parameters
    ----------
    plan, path
        The plan and the file it came from (named in the error).
    stage
        What needs the plan, in words (``"the planning report"``).
    landmarks, bones, angles
        Require at least one landmark / one bone named by the plan / one alignment angle.
    cuts
        True: at least one cut; a tuple of cut names: at least one of them.

    Raises
    ------
    SchemaError
        Naming everything that is missing and how to make a complete plan.
    """
    from orthonav.core.errors import SchemaError

    missing = []
    if landmarks and not plan.landmarks:
        missing.append("landmarks")
    if bones and not plan_bones(plan):
        missing.append("bones (no landmark, cut or implant names a bone)")
    if angles and not plan.angles_deg:
        missing.append("alignment angles")
    if cuts is True and not plan.cuts:
        missing.append("cuts")
    elif isinstance(cuts, tuple) and not any(c in plan.cuts for c in cuts):
        missing.append(f"{' or '.join(cuts)} cut" + (f" (it has {', '.join(plan.cuts)})" if plan.cuts else ""))
    if missing:
        raise SchemaError(path, f"the plan has no {' and no '.join(missing)}, needed by {stage}; "
                                f"make a complete plan with `orthonav plan CASE --auto`")
    return plan


def save_plan(path: str | Path, plan: Plan) -> Path:
    """Atomically write ``plan.json``."""
    return save_model(path, plan)
