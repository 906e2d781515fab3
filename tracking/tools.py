"""Tool definitions: what a tracked tool is, where its tip is, how long its pose stays live.

A tool's frame is its marker's frame as reported by the tracker (``tracker_from_tool``).
Geometry given here is in that tool frame, millimetres:

* pointer / drill: ``tip_mm`` is the tip, ``axis`` the unit shaft direction pointing from the
  handle towards the tip (the drilling direction).
* saw: ``tip_mm`` is the centre of the blade's cutting edge, ``axis`` the cutting direction
  (in the blade plane), ``normal`` the unit normal of the blade plane.
* reference: a patient reference marker; no tip.

Tool files are JSON (``ToolSet``), versioned, and carry the calibration date and RMS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from orthonav.core.schema import Versioned, load_model, save_model

Vec3 = tuple[float, float, float]
#: What a tool is; anything else in a tool file is a SchemaError when loading.
ToolKind = Literal["pointer", "saw", "drill", "reference"]


class ToolDefinition(BaseModel):
    """One tracked tool."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="tool name; OpenIGTLink device name is '<name>ToTracker'")
    kind: ToolKind = Field(description="'pointer', 'saw', 'drill' or 'reference'")
    tip_mm: Vec3 = (0.0, 0.0, 0.0)
    axis: Vec3 = (0.0, 0.0, -1.0)
    normal: Vec3 = (1.0, 0.0, 0.0)
    blade_length_mm: float = 0.0
    blade_width_mm: float = 0.0
    timeout_s: float = Field(default=0.25, gt=0, description="a pose older than this is not shown as live")
    calibration_date: str | None = None
    calibration_rms_mm: float | None = None
    rom_file: str | None = Field(default=None, description="NDI passive tool ROM file")
    markers: dict[int, list[Vec3]] = Field(default_factory=dict, description="ArUco id -> 4 corners (mm, tool frame)")

    def tip_in_tool(self) -> NDArray[np.float64]:
        return np.asarray(self.tip_mm, dtype=np.float64)

    def axis_in_tool(self) -> NDArray[np.float64]:
        a = np.asarray(self.axis, dtype=np.float64)
        return a / np.linalg.norm(a)

    def normal_in_tool(self) -> NDArray[np.float64]:
        n = np.asarray(self.normal, dtype=np.float64)
        return n / np.linalg.norm(n)


class ToolSet(Versioned):
    """A tool file: the tools of one setup."""

    SCHEMA_VERSION = 1
    tools: list[ToolDefinition]

    def by_name(self) -> dict[str, ToolDefinition]:
        return {t.name: t for t in self.tools}

    def timeouts_s(self) -> dict[str, float]:
        return {t.name: t.timeout_s for t in self.tools}


def default_toolset() -> ToolSet:
    """The tools of the built-in phantom setup: a reference, a pointer, a saw and a drill."""
    return ToolSet(
        tools=[
            ToolDefinition(name="Reference", kind="reference"),
            ToolDefinition(name="Pointer", kind="pointer", tip_mm=(0.0, 0.0, -150.0), axis=(0.0, 0.0, -1.0)),
            ToolDefinition(
                name="Saw",
                kind="saw",
                tip_mm=(0.0, 0.0, -90.0),
                axis=(0.0, 0.0, -1.0),
                normal=(1.0, 0.0, 0.0),
                blade_length_mm=90.0,
                blade_width_mm=25.0,
            ),
            ToolDefinition(name="Drill", kind="drill", tip_mm=(0.0, 0.0, -180.0), axis=(0.0, 0.0, -1.0)),
        ]
    )


def load_toolset(path: str | Path) -> ToolSet:
    """Read a tool file (clear error if missing, corrupt or newer)."""
    return load_model(path, ToolSet)


def save_toolset(path: str | Path, toolset: ToolSet) -> Path:
    """Atomically write a tool file."""
    return save_model(path, toolset)
