"""Recording a navigation session in ``CASE/sessions/<timestamp>/`` and reading it back.

Layout of a session folder. The two streams are journals: every line is appended to the final
file and handed to the operating system as it is written, so a session killed at any moment
(``kill -9``, a power cut aside) keeps every frame and state recorded before it and replays and
validates; only a line cut mid-write is dropped on reading. The JSON files are written
atomically (temporary + rename)::

    session.json        what was navigated: case folder, tool set, workflow settings, times
    frames.jsonl        every tracking frame the loop processed (orthonav.tracking.recording)
    guidance.jsonl      one line per navigation state: tool status, tips, guidance numbers (one
                        array per bone: also each tool's bone, and the knee alignment and gaps)
    registration.json   the registration made during the session
    summary.json        the session's figures (FRE, predicted TRE, verification, loop rate, latency)
    screenshots/*.png   overlay pictures; ``screenshots.json`` lists the frame of each

A phantom run adds ``scores.json`` (true TRE, guidance errors against the scripted truth),
written by :mod:`orthonav.phantoms.scoring`, never by navigation.

``session.json`` holds the sha256 of the ``plan.json`` bytes navigated with: replay rebuilds
the navigation context from the case's current plan, so it refuses a plan that has changed
since (unless told to go on, with a warning).

Guidance lines hold full-precision floats (JSON round-trips IEEE doubles exactly), so a
replay that recomputes the states from ``frames.jsonl`` can be compared number for number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from orthonav.core.atomic import CommitOnExit, JournalWriter, iter_json_lines
from orthonav.core.case import check_name
from orthonav.core.errors import InputError, SchemaError
from orthonav.core.schema import Versioned, load_model, save_model
from orthonav.tracking.frame import TrackingFrame
from orthonav.tracking.recording import RecordingWriter, read_recording
from orthonav.tracking.tools import ToolSet

from .state import NavigationState

FRAMES = "frames.jsonl"
GUIDANCE = "guidance.jsonl"
SESSION = "session.json"
SUMMARY = "summary.json"
REGISTRATION = "registration.json"
SCREENSHOTS = "screenshots"


class SessionInfo(Versioned):
    """``session.json``. Version 2 adds ``plan_sha256``."""

    SCHEMA_VERSION = 2
    case_dir: str
    plan_sha256: str = Field(default="", description="sha256 (hex) of the plan.json bytes navigated with ('' in version 1)")
    toolset: ToolSet
    workflow: dict[str, Any] = Field(default_factory=dict, description="WorkflowConfig fields")
    started_utc: str = ""
    source: str = ""
    check_points_mm: dict[str, list[float]] = Field(default_factory=dict, description="verification points, CT LPS mm")
    screenshots: dict[str, int] = Field(default_factory=dict, description="png file name -> frame sequence")

    @field_validator("screenshots")
    @classmethod
    def _names_stay_in_the_session(cls, v: dict[str, int]) -> dict[str, int]:
        # A name read from the file becomes a path (replay writes <session>/replay/<name>).
        for name in v:
            try:
                check_name(name, "screenshot name")
            except InputError as e:
                raise ValueError(e.problem) from None
        return v


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes (e.g. ``plan.json``); InputError if it cannot be read."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise InputError(p, f"cannot be read ({e.strerror or e})") from e
    return h.hexdigest()


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _vec(v: Any) -> list[float] | None:
    return None if v is None else [float(x) for x in v]


def _figures(obj: Any) -> dict[str, Any] | None:
    """The scalar fields of a frozen dataclass of figures (e.g. ``KneeAlignment``), JSON-able."""
    if obj is None:
        return None
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, bool) or isinstance(v, str):
            out[f.name] = v
        elif isinstance(v, (int, float, np.floating, np.integer)):
            out[f.name] = _num(float(v))
    return out


def state_record(state: NavigationState) -> dict[str, Any]:
    """The JSON-able guidance line for one state (no wall-clock figures except ``latency_s``).

    One array per bone adds: ``bone`` for each tool (the bone whose CT frame its tip is in),
    ``references`` (bone -> array), and, when both knee arrays are LIVE, ``alignment`` and
    ``gaps`` (their scalar figures). A one-array state's line is as before.
    """
    rec = _state_record(state)
    if state.references:
        for name, t in state.tools.items():
            rec["tools"][name]["bone"] = t.bone
        rec["references"] = dict(state.references)
        rec["alignment"] = _figures(state.alignment)
        rec["gaps"] = _figures(state.gaps)
    return rec


def _state_record(state: NavigationState) -> dict[str, Any]:
    return {
        "seq": int(state.sequence),
        "host_time_s": _num(state.host_time_s),
        "tracking": bool(state.tracking),
        "reason": state.reason,
        "tools": {
            name: {"status": t.status.value, "tip_ct_mm": _vec(t.tip_ct_mm), "age_s": _num(t.age_s)} for name, t in state.tools.items()
        },
        "saw": {
            cut: {
                "flexion_deg": g.flexion_deg,
                "varus_deg": g.varus_deg,
                "angle_deg": g.angle_deg,
                "distance_mm": g.distance_mm,
                "remaining_depth_mm": _num(g.remaining_depth_mm),
            }
            for cut, g in state.saw.items()
        },
        "drill": {
            name: {"angle_deg": g.angle_deg, "entry_offset_mm": g.entry_offset_mm, "depth_to_target_mm": g.depth_to_target_mm}
            for name, g in state.drill.items()
        },
        "pointer_to_bone_mm": _num(state.pointer_to_bone_mm),
        "pointer_bone": state.pointer_bone,
        "latency_s": _num(state.latency_s),
    }


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A guidance record without its wall-clock fields (what a replay must reproduce exactly)."""
    out = dict(record)
    out.pop("latency_s", None)
    out["tools"] = {k: {kk: vv for kk, vv in v.items() if kk != "age_s"} for k, v in record["tools"].items()}
    return out


class SessionRecorder(CommitOnExit):
    """Writes one session folder (see the module docstring). Thread-safe ``write``; as a context
    manager it closes the session on success and aborts it (no stream files left) on an exception.

    ``session.json`` is written at once and rewritten with each screenshot, so a killed session
    still names its pictures. A session is complete when ``summary.json`` exists
    (:func:`session_closed`)."""

    def __init__(self, session_dir: str | Path, info: SessionInfo) -> None:
        self.dir = Path(session_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.info = info
        save_model(self.dir / SESSION, info)
        self.frames = RecordingWriter(self.dir / FRAMES, source=info.source or "navigation", journal=True)
        self.guidance = JournalWriter(self.dir / GUIDANCE)

    @property
    def screenshots_dir(self) -> Path:
        return self.dir / SCREENSHOTS

    def write(self, frame: Any, state: NavigationState) -> None:
        """Record the frame the loop processed and the state computed from it."""
        self.frames.write(frame)
        self.guidance.write(state_record(state))

    def add_screenshot(self, name: str, sequence: int) -> None:
        """List a picture written into :attr:`screenshots_dir` (``session.json`` is rewritten)."""
        self.info.screenshots[check_name(name, "screenshot name")] = int(sequence)
        save_model(self.dir / SESSION, self.info)

    @property
    def frames_written(self) -> int:
        """Frames recorded so far."""
        return self.frames.frames

    def close(self) -> None:
        self.frames.close()
        self.guidance.close()
        save_model(self.dir / SESSION, self.info)

    def abort(self) -> None:
        """Remove the streams (for a session that never started: nothing half-made is left)."""
        self.frames.abort()
        self.guidance.abort()


def session_closed(session_dir: str | Path) -> bool:
    """Whether a session ended normally (its ``summary.json`` was written); False for a session
    whose process was killed: its streams hold what was recorded up to then."""
    return (Path(session_dir) / SUMMARY).is_file()


def read_session_info(session_dir: str | Path) -> SessionInfo:
    """``session.json`` of a session folder."""
    d = Path(session_dir)
    if not d.is_dir():
        raise InputError(d, "session folder not found")
    return load_model(d / SESSION, SessionInfo)


def read_guidance(session_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The recorded guidance lines of a session."""
    p = Path(session_dir) / GUIDANCE
    if not p.is_file():
        raise InputError(p, "guidance record not found (was the session closed cleanly?)")
    for lineno, line in iter_json_lines(p):  # a last line cut by a killed session is dropped
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise SchemaError(p, f"line {lineno} is not JSON ({e.msg})") from e


def read_frames(session_dir: str | Path) -> Iterator[TrackingFrame]:
    """The tracking frames a session's loop processed (``frames.jsonl``), in order: the one frame
    reader for replay, scoring and validation.

    Raises
    ------
    InputError
        The session has no frame record.
    """
    return iter(read_recording(Path(session_dir) / FRAMES))
