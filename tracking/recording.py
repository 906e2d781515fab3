"""Tracking recordings: OrthoNav's own format, PLUS sequence files, and replay of either.

OrthoNav recording format (``.jsonl``, UTF-8 JSON lines)
-------------------------------------------------------
Line 1 is a header object::

    {"format": "orthonav.tracking.recording", "version": 1,
     "frame": "tracker frame, LPS-based, mm", "matrix": "tracker_from_tool, 4x4 row-major",
     "source": "...", "created_utc": "..."}

Every further line is one frame (a :class:`~orthonav.tracking.frame.TrackingFrame`)::

    {"seq": 12, "host_time_s": 1234.5,
     "tools": {"Pointer": {"status": "live", "device_time_s": 1.7e9, "host_time_s": 1234.49,
                           "quality": 0.1, "tracker_from_tool": [16 numbers] | null}, ...},
     "truth": {"Pointer": [16 numbers] | null, ...},      # optional (simulator ground truth)
     "script_time_s": 0.005}                              # optional

``status`` is a :class:`~orthonav.tracking.frame.ToolStatus` value; ``tracker_from_tool``
is present exactly when the status is ``live``. Times are seconds: ``device_time_s`` on the
source's clock, ``host_time_s`` on the recording host's ``time.monotonic()``. NaN is
written as ``null``. The file is written to a hidden temporary beside the target and renamed
on :meth:`RecordingWriter.close`, so a reader never sees a half-written recording.

PLUS sequence files (``.igs.mha`` / ``.seq.mha``)
------------------------------------------------
Per frame ``Seq_FrameNNNN_<Tool>ToTrackerTransform`` (16 numbers, row-major, mm), its
``...TransformStatus`` (OK / INVALID / MISSING; absent = OK) and ``Timestamp`` (s). PLUS
tracker frames have no anatomical meaning, but PLUS and Slicer treat them as RAS; we treat
them exactly like OpenIGTLink data: RAS-based, converted to LPS on reading with
:func:`~orthonav.core.transforms.lps_from_ras_transform`. Relative poses (e.g.
ProbeToReference) are unaffected by that choice. Only ``*ToTracker`` transforms become tools.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orthonav.core.atomic import CommitOnExit, JournalWriter, JsonLinesWriter
from orthonav.core.errors import InputError, SchemaError
from orthonav.core.transforms import lps_from_ras_transform

from .frame import SourceHealth, ToolPose, ToolStatus, TrackingFrame
from .store import PoseStore, StoreBackedSource
from .tools import ToolSet

FORMAT = "orthonav.tracking.recording"
VERSION = 1


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def _matrix_json(m: NDArray[np.float64] | None) -> list[float] | None:
    return None if m is None else [float(v) for v in np.asarray(m, dtype=np.float64).ravel()]


class RecordingWriter(CommitOnExit):
    """Append frames to a recording.

    By default :meth:`close` makes it appear atomically (a temporary beside ``path`` is
    renamed); use as a context manager: an exception inside the ``with`` discards the partial
    file. With ``journal=True`` frames go straight to ``path`` line by line
    (:class:`~orthonav.core.atomic.JournalWriter`): a process killed mid-recording leaves every
    frame written before the kill, readable by :func:`read_recording`; :meth:`abort` removes it.
    """

    def __init__(self, path: str | Path, *, source: str = "", journal: bool = False) -> None:
        self.path = Path(path)
        self._lines = JournalWriter(self.path) if journal else JsonLinesWriter(self.path)
        self._lines.write({
            "format": FORMAT,
            "version": VERSION,
            "frame": "tracker frame, LPS-based, mm",
            "matrix": "tracker_from_tool, 4x4 row-major",
            "source": source,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })

    @property
    def frames(self) -> int:
        """Frames written so far."""
        return self._lines.lines - 1

    def write(
        self,
        frame: TrackingFrame,
        *,
        truth: Mapping[str, NDArray[np.float64] | None] | None = None,
        script_time_s: float | None = None,
    ) -> None:
        """Append one frame (and optional ground-truth poses)."""
        rec: dict[str, Any] = {
            "seq": int(frame.sequence),
            "host_time_s": _num(frame.host_time_s),
            "tools": {
                name: {
                    "status": p.status.value,
                    "device_time_s": _num(p.device_time_s),
                    "host_time_s": _num(p.host_time_s),
                    "quality": _num(p.quality),
                    "tracker_from_tool": _matrix_json(p.tracker_from_tool),
                }
                for name, p in frame.tools.items()
            },
        }
        if truth is not None:
            rec["truth"] = {k: _matrix_json(v) for k, v in truth.items()}
        if script_time_s is not None:
            rec["script_time_s"] = float(script_time_s)
        self._lines.write(rec)

    def close(self) -> Path:
        """Flush, fsync and rename into place. Safe to call twice."""
        return self._lines.close()

    def abort(self) -> None:
        """Discard the partial recording (nothing appears at ``path``). Safe to call twice."""
        self._lines.abort()


@dataclass(frozen=True)
class RecordedFrame:
    """One recorded frame plus the optional ground truth a simulator stored with it."""

    frame: TrackingFrame
    truth: Mapping[str, NDArray[np.float64] | None] | None = None
    script_time_s: float | None = None


def _matrix(values: Any, path: Path, lineno: int) -> NDArray[np.float64] | None:
    if values is None:
        return None
    m = np.asarray(values, dtype=np.float64)
    if m.shape != (16,):
        raise SchemaError(path, f"line {lineno}: a matrix needs 16 numbers, got shape {m.shape}")
    return m.reshape(4, 4)


def read_recording_frames(path: str | Path) -> Iterator[RecordedFrame]:
    """Yield every frame of an OrthoNav recording with its ground truth (if any).

    Raises
    ------
    InputError
        File missing. :class:`SchemaError` for a wrong header, a newer version or a bad line.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "recording not found")
    with open(p, encoding="utf-8") as f:
        first = f.readline()
        try:
            header = json.loads(first)
        except json.JSONDecodeError as e:
            raise SchemaError(p, f"not an OrthoNav recording (line 1 is not JSON: {e.msg})") from e
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise SchemaError(p, f"not an OrthoNav recording (line 1 has no format '{FORMAT}')")
        if not isinstance(header.get("version"), int) or header["version"] > VERSION:
            raise SchemaError(p, f"recording version {header.get('version')!r} is newer than this OrthoNav reads ({VERSION})")
        for lineno, line in enumerate(f, start=2):
            if not line.endswith("\n"):
                return  # the last line of a journal cut by a killed writer: never a complete frame
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                tools = {}
                for name, t in rec["tools"].items():
                    status = ToolStatus(t["status"])
                    m = _matrix(t.get("tracker_from_tool"), p, lineno)
                    tools[name] = ToolPose(status, m, _nan(t.get("quality")), _nan(t.get("device_time_s")), _nan(t.get("host_time_s")))
                truth = None
                if "truth" in rec:
                    truth = {k: _matrix(v, p, lineno) for k, v in rec["truth"].items()}
                frame = TrackingFrame(tools, _nan(rec.get("host_time_s")), int(rec.get("seq", 0)))
            except SchemaError:
                raise
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                raise SchemaError(p, f"line {lineno} is not a valid frame ({type(e).__name__}: {e})") from e
            yield RecordedFrame(frame, truth, rec.get("script_time_s"))


def read_recording(path: str | Path) -> Iterator[TrackingFrame]:
    """Yield the :class:`TrackingFrame` s of an OrthoNav recording (``.jsonl``) or a PLUS file."""
    p = Path(path)
    if p.name.lower().endswith(".mha"):
        yield from read_plus_sequence(p)
        return
    for rf in read_recording_frames(p):
        yield rf.frame


# --- PLUS sequence files --------------------------------------------------------------------

_PLUS_FIELD = re.compile(r"^Seq_Frame(\d+)_(\w+?)\s*=\s*(.*)$")


def read_plus_header(path: str | Path) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """(global fields, {frame index: {field: value}}) from a PLUS MetaImage sequence header."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "PLUS sequence file not found")
    glob: dict[str, str] = {}
    frames: dict[int, dict[str, str]] = {}
    with open(p, "rb") as f:
        for raw in f:
            line = raw.decode("latin-1").rstrip("\r\n")
            m = _PLUS_FIELD.match(line)
            if m:
                frames.setdefault(int(m.group(1)), {})[m.group(2)] = m.group(3).strip()
                continue
            if "=" in line:
                k, v = line.split("=", 1)
                glob[k.strip()] = v.strip()
            if line.startswith("ElementDataFile"):
                break
            if not line.strip() and not glob:
                raise InputError(p, "not a MetaImage header")
    if glob.get("ObjectType") != "Image" or "ElementDataFile" not in glob:
        raise InputError(p, "not a MetaImage (.mha) file: no 'ObjectType = Image' / 'ElementDataFile'")
    return glob, frames


def read_plus_sequence(path: str | Path) -> list[TrackingFrame]:
    """Tool poses of every frame of a PLUS sequence file as LPS-based frames (see module doc).

    ``device_time_s`` and ``host_time_s`` are the frame ``Timestamp`` (PLUS has one clock).

    Raises
    ------
    InputError
        Not a PLUS sequence, no ``*ToTrackerTransform`` field, or a malformed matrix / time.
    """
    p = Path(path)
    _glob, fields = read_plus_header(p)
    out = []
    for idx in sorted(fields):
        fr = fields[idx]
        try:
            t = float(fr["Timestamp"])
        except (KeyError, ValueError) as e:
            raise InputError(p, f"frame {idx}: missing or bad Timestamp") from e
        tools: dict[str, ToolPose] = {}
        for key, value in fr.items():
            if not key.endswith("ToTrackerTransform"):
                continue
            tool = key[: -len("ToTrackerTransform")]
            status = fr.get(f"{key}Status", "OK").upper()
            try:
                m = np.array([float(v) for v in value.split()], dtype=np.float64)
            except ValueError as e:
                raise InputError(p, f"frame {idx}: {key} is not numeric") from e
            if m.shape != (16,):
                raise InputError(p, f"frame {idx}: {key} needs 16 numbers, has {m.size}")
            if status == "OK" and np.all(np.isfinite(m)):
                tools[tool] = ToolPose(ToolStatus.LIVE, lps_from_ras_transform(m.reshape(4, 4)), math.nan, t, t)
            else:
                tools[tool] = ToolPose(ToolStatus.NOT_VISIBLE, None, math.nan, t, t)
        out.append(TrackingFrame(tools, t, idx))
    if not any(f.tools for f in out):
        raise InputError(p, "no '<Tool>ToTrackerTransform' fields: not a tracked PLUS sequence")
    return out


# --- Replay ---------------------------------------------------------------------------------


class ReplaySource(StoreBackedSource):
    """Replays a recording (OrthoNav ``.jsonl`` or PLUS ``.mha``) as a live source.

    Parameters
    ----------
    path
        The recording.
    speed
        1.0 = recorded pace, 2.0 = twice as fast; None = as fast as the consumer reads: each
        frame is published, then the replay waits until :meth:`latest` has been called.
    tools
        Tool timeouts (defaults apply otherwise). Host times are those of the replay.
    loop
        Start again at the end.
    """

    def __init__(self, path: str | Path, *, speed: float | None = 1.0, tools: ToolSet | None = None, loop: bool = False) -> None:
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise InputError(None, f"replay speed must be positive or None, got {speed}")
        self.path = Path(path)
        self.frames = list(read_recording(self.path))  # validates the whole file up front
        if not self.frames:
            raise InputError(self.path, "recording has no frames")
        super().__init__(PoseStore(tools.timeouts_s() if tools else None))
        self.speed = speed
        self.loop = loop
        self.finished = threading.Event()
        self._consumed = threading.Condition()
        self._published = 0
        self._taken = 0

    _thread_name = "replay"

    def _open(self) -> None:
        self.finished.clear()

    def _interrupt(self) -> None:
        with self._consumed:  # a replay waiting for the consumer
            self._consumed.notify_all()

    def latest(self) -> TrackingFrame:
        with self._consumed:
            frame = self.store.snapshot()
            self._taken = self._published
            self._consumed.notify_all()
        return frame

    def ended(self) -> bool:
        """True once every frame has been replayed (never when looping)."""
        return self.finished.is_set()

    def health(self) -> SourceHealth:
        h = self.store.health_snapshot()
        h.extra["frames_replayed"] = float(self._published)
        h.extra["frames_total"] = float(len(self.frames))
        return h

    def _publish(self, frame: TrackingFrame) -> None:
        now = time.monotonic()
        scale = 1.0 / self.speed if self.speed else 1.0  # as fast as read: keep recorded ages
        with self._consumed, self.store.batch():  # one recorded frame: consumers wake once, with all of it
            for name, pose in frame.tools.items():
                # keep the pose's recorded age (a pose already stale when recorded stays stale)
                age_s = frame.host_time_s - pose.host_time_s
                received = now - age_s * scale if math.isfinite(age_s) and age_s > 0 else now
                self.store.put(name, pose.tracker_from_tool, device_time_s=pose.device_time_s, quality=pose.quality, host_time_s=received)
            self._published += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            t_wall0 = time.monotonic()
            t_rec0 = self.frames[0].host_time_s
            for frame in self.frames:
                if self.speed is not None:
                    due = t_wall0 + (frame.host_time_s - t_rec0) / self.speed if math.isfinite(frame.host_time_s) else time.monotonic()
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        return
                elif self._stop.is_set():
                    return
                self._publish(frame)
                if self.speed is None:
                    with self._consumed:
                        self._consumed.wait_for(lambda: self._taken >= self._published or self._stop.is_set())
            if not self.loop:
                break
        self.finished.set()
        self.store.set_connected(False)
