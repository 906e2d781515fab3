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
    """The whole plan for one case."""

    SCHEMA_VERSION = 1
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
    notes: str = ""


def load_plan(path: str | Path) -> Plan:
    """Read and validate ``plan.json`` (clear error if missing, corrupt or newer)."""
    return load_model(path, Plan)


def save_plan(path: str | Path, plan: Plan) -> Path:
    """Atomically write ``plan.json``."""
    return save_model(path, plan)
