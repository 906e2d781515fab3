"""Tool definitions: what a tracked tool is, where its tip is, how long its pose stays live.

A tool's frame is its marker's frame as reported by the tracker (``tracker_from_tool``).
Geometry given here is in that tool frame, millimetres:

* pointer / drill: ``tip_mm`` is the tip, ``axis`` the unit shaft direction pointing from the
  handle towards the tip (the drilling direction).
* saw: ``tip_mm`` is the centre of the blade's cutting edge, ``axis`` the cutting direction
  (in the blade plane), ``normal`` the unit normal of the blade plane.
* reference: a patient reference marker; no tip. ``bone`` names the case bone the array is
  fixed to (``"femur"``, ``"tibia"``, ``"pelvis"``: a name from the case's label table and the
  plan landmarks' ``bone``); ``None`` is a single patient reference that applies to every bone
  (the one-array setup). A tool set is one or the other: a bone-less reference beside arrays
  fixed to bones is refused (a SchemaError naming the tool file when loaded). Knee navigation as surgeons run it fixes one array per bone
  (:func:`knee_two_array_toolset`), because the femur and the tibia move independently.

Tool files are JSON (``ToolSet``), versioned, and carry the calibration date and RMS.
Schema history: 1 = tools without ``bone``; 2 = reference tools may carry ``bone``. A
version-1 file loads unchanged (every reference has ``bone = None``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    bone: str | None = Field(
        default=None,
        description="reference only: the case bone the array is fixed to; None = one patient reference for every bone",
    )

    @model_validator(mode="after")
    def _bone_only_on_reference(self) -> ToolDefinition:
        if self.bone is not None and self.kind != "reference":
            raise ValueError(f"tool {self.name!r}: only a reference array is fixed to a bone (kind is {self.kind!r})")
        if self.bone is not None and not self.bone.strip():
            raise ValueError(f"tool {self.name!r}: bone must be a non-empty name or null")
        return self

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

    SCHEMA_VERSION = 2
    tools: list[ToolDefinition]

    @model_validator(mode="after")
    def _one_array_per_bone(self) -> ToolSet:
        bones = [t.bone for t in self.tools if t.bone is not None]
        rep = sorted({b for b in bones if bones.count(b) > 1})
        if rep:
            raise ValueError(f"one reference array per bone; repeated bone: {', '.join(rep)}")
        refs = [t for t in self.tools if t.kind == "reference"]
        loose = [t.name for t in refs if t.bone is None]
        fixed = [f"{t.name!r} on {t.bone}" for t in refs if t.bone is not None]
        if loose and fixed:
            # Which array would a bone be navigated against? Refused rather than guessed.
            raise ValueError(f"reference {', '.join(repr(n) for n in loose)} has no bone while {', '.join(fixed)} "
                             f"{'is' if len(fixed) == 1 else 'are'} fixed to a bone: use one patient reference (no bone) or "
                             "one array per bone (every reference with its bone), not both")
        return self

    def by_name(self) -> dict[str, ToolDefinition]:
        return {t.name: t for t in self.tools}

    def bone_references(self) -> dict[str, str]:
        """Bone -> reference tool name for the arrays fixed to a bone (empty for a one-array setup)."""
        return {t.bone: t.name for t in self.tools if t.kind == "reference" and t.bone is not None}

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


def knee_two_array_toolset(femur: str = "femur", tibia: str = "tibia") -> ToolSet:
    """Knee navigation with one array per bone: "FemurRef" (fixed to ``femur``),
    "TibiaRef" (fixed to ``tibia``) and the default "Pointer", "Saw" and "Drill".

    Parameters
    ----------
    femur, tibia
        The case's bone names (label table / plan landmarks' ``bone``), e.g. ``"femur_left"``.
    """
    instruments = [t for t in default_toolset().tools if t.kind != "reference"]
    return ToolSet(
        tools=[
            ToolDefinition(name="FemurRef", kind="reference", bone=femur),
            ToolDefinition(name="TibiaRef", kind="reference", bone=tibia),
            *instruments,
        ]
    )


def load_toolset(path: str | Path) -> ToolSet:
    """Read a tool file (clear error if missing, corrupt or newer)."""
    return load_model(path, ToolSet)


def save_toolset(path: str | Path, toolset: ToolSet) -> Path:
    """Atomically write a tool file."""
    return save_model(path, toolset)
