"""Digitise points with the tracked pointer: automatic capture when the tip is held still.

Everything is in the patient REFERENCE frame (``p_ref = inv(tracker_from_reference) @
tracker_from_pointer @ tip``), so patient or camera motion during a dwell does not blur it.
A capture fires when the tip has stayed within ``still_mm`` (RMS about the window mean) for at
least ``hold_s``; the captured point is the mean over that window. The next capture is armed
only after the tip has moved more than ``rearm_mm`` away from the last captured point, so one
dwell is never captured twice.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from orthonav.core.transforms import apply, invert
from orthonav.tracking.frame import TrackingFrame


@dataclass(frozen=True)
class Capture:
    """One digitised point.

    Attributes
    ----------
    p_reference_mm
        (3,) mean tip position over the still window, reference frame (mm).
    spread_mm
        RMS distance of the window's samples from their mean (mm).
    n_samples
        Samples averaged.
    host_time_s
        Host time (monotonic s) of the last sample of the window.
    """

    p_reference_mm: NDArray[np.float64]
    spread_mm: float
    n_samples: int
    host_time_s: float


def pointer_sample_time(frame: TrackingFrame, pointer: str, reference: str) -> float | None:
    """Host receipt time (s) of the newer of the pointer and reference poses, None unless both LIVE."""
    p, r = frame.tools.get(pointer), frame.tools.get(reference)
    if p is None or r is None or not (p.visible and r.visible):
        return None
    return max(p.host_time_s, r.host_time_s)


def tip_in_reference(frame: TrackingFrame, pointer: str, reference: str, tip_in_tool: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """(3,) pointer tip in the reference frame (mm), or None unless both tools are LIVE."""
    t_ref = frame.pose(reference)
    t_ptr = frame.pose(pointer)
    if t_ref is None or t_ptr is None:
        return None
    return apply(invert(t_ref) @ t_ptr, tip_in_tool)


class StillCapture:
    """Detects pointer dwells in a stream of tip positions (reference frame) and averages them.

    Parameters
    ----------
    hold_s
        Minimum dwell (s) before a capture.
    still_mm
        Maximum RMS distance from the window mean (mm) to count as still.
    rearm_mm
        Distance (mm) the tip must move from the last capture before the next can fire.
    min_samples
        Minimum samples in the window.
    """

    def __init__(self, *, hold_s: float = 0.4, still_mm: float = 0.3, rearm_mm: float = 10.0, min_samples: int = 5) -> None:
        if hold_s <= 0 or still_mm <= 0 or rearm_mm <= 0:
            raise ValueError("hold_s, still_mm and rearm_mm must be positive")
        self.hold_s = hold_s
        self.still_mm = still_mm
        self.rearm_mm = rearm_mm
        self.min_samples = min_samples
        self._window: deque[tuple[float, NDArray[np.float64]]] = deque()
        self._last: NDArray[np.float64] | None = None
        self._armed = True

    def reset(self) -> None:
        self._window.clear()

    def add(self, host_time_s: float, p_reference_mm: NDArray[np.float64] | None) -> Capture | None:
        """Feed one sample (None = pointer or reference not visible: the window restarts)."""
        if p_reference_mm is None:
            self._window.clear()
            return None
        p = np.asarray(p_reference_mm, dtype=np.float64)
        if not self._armed:
            if self._last is not None and np.linalg.norm(p - self._last) > self.rearm_mm:
                self._armed = True
            else:
                return None
        self._window.append((host_time_s, p))
        # Keep only samples within hold_s of the newest (plus the one that spans hold_s).
        while len(self._window) > 1 and host_time_s - self._window[1][0] >= self.hold_s:
            self._window.popleft()
        span = host_time_s - self._window[0][0]
        if span < self.hold_s or len(self._window) < self.min_samples:
            return None
        pts = np.array([q for _t, q in self._window])
        mean = pts.mean(axis=0)
        spread = float(np.sqrt(np.mean(np.sum((pts - mean) ** 2, axis=1))))
        if spread > self.still_mm:
            # Not still: drop the oldest sample so the window can slide onto the dwell.
            self._window.popleft()
            return None
        self._window.clear()
        self._last = mean
        self._armed = False
        return Capture(mean, spread, len(pts), host_time_s)


class FiducialDigitiser:
    """Assigns successive pointer dwells to the plan's fiducials, in plan order.

    A capture is accepted only if its distances to the fiducials already captured agree with
    the CT distances within ``consistency_mm`` (distances are rigid-invariant, so this needs no
    registration): a dwell elsewhere (the pointer laid down, a wrong bead) is rejected.

    Parameters
    ----------
    names
        Fiducial names in the order the surgeon touches them (the plan's order).
    tip_in_tool
        (3,) pointer tip in the pointer's tool frame (mm).
    fiducials_ct_mm
        (n, 3) the fiducials in the CT (mm), for the consistency check (None: no check).
    pointer, reference
        Tool names.
    """

    def __init__(self, names: list[str], tip_in_tool: NDArray[np.float64], *, fiducials_ct_mm: NDArray[np.float64] | None = None,
                 consistency_mm: float = 3.0, pointer: str = "Pointer", reference: str = "Reference",
                 capture: StillCapture | None = None) -> None:
        self.names = list(names)
        self.tip_in_tool = np.asarray(tip_in_tool, dtype=np.float64)
        self.ct = None if fiducials_ct_mm is None else dict(zip(self.names, np.asarray(fiducials_ct_mm, dtype=np.float64)))
        self.consistency_mm = consistency_mm
        self.pointer = pointer
        self.reference = reference
        self.capture = capture or StillCapture()
        self.captures: dict[str, Capture] = {}
        self.rejected: list[tuple[str, Capture, str]] = []
        self.restart_after = 3  #: consecutive rejected captures after which all captures are discarded
        self.restarts = 0
        self._consecutive_rejections = 0
        self._last_sample_time: float | None = None

    @property
    def done(self) -> bool:
        return len(self.captures) == len(self.names)

    @property
    def next_name(self) -> str | None:
        """The first fiducial (plan order) not yet captured."""
        for n in self.names:
            if n not in self.captures:
                return n
        return None

    def _inconsistency(self, name: str, cap: Capture) -> str | None:
        if self.ct is None:
            return None
        worst, worst_name = 0.0, ""
        for other, c in self.captures.items():
            d_ref = float(np.linalg.norm(cap.p_reference_mm - c.p_reference_mm))
            d_ct = float(np.linalg.norm(self.ct[name] - self.ct[other]))
            if abs(d_ref - d_ct) > worst:
                worst, worst_name = abs(d_ref - d_ct), other
        if worst > self.consistency_mm:
            return f"its distance to {worst_name} differs from the CT by {worst:.1f} mm (limit {self.consistency_mm:.1f} mm)"
        return None

    def update(self, frame: TrackingFrame) -> tuple[str, Capture] | None:
        """Feed a frame; returns (fiducial name, capture) when a fiducial is captured."""
        name = self.next_name
        if name is None:
            return None
        # One sample per new tracker message: a watchdog frame repeating the same poses is not
        # evidence that the pointer is still. Times are the poses' receipt times.
        t = pointer_sample_time(frame, self.pointer, self.reference)
        if t is not None and t == self._last_sample_time:
            return None
        self._last_sample_time = t
        p = None if t is None else tip_in_reference(frame, self.pointer, self.reference, self.tip_in_tool)
        cap = self.capture.add(frame.host_time_s if t is None else t, p)
        if cap is None:
            return None
        problem = self._inconsistency(name, cap)
        if problem is None:
            self.captures[name] = cap
            self._consecutive_rejections = 0
            return name, cap
        self.rejected.append((name, cap, problem))
        self._consecutive_rejections += 1
        if self._consecutive_rejections >= self.restart_after:
            # An earlier capture is probably wrong (e.g. a dwell off a bead): start again at the first fiducial.
            self.captures.clear()
            self._consecutive_rejections = 0
            self.restarts += 1
        return None

    def discard(self, name: str) -> None:
        """Forget one capture (it will be the next to digitise)."""
        self.captures.pop(name, None)

    def points_reference_mm(self) -> NDArray[np.float64]:
        """(n, 3) captured points in plan order (only after :attr:`done`)."""
        return np.array([self.captures[n].p_reference_mm for n in self.names])


def rms(values: NDArray[np.float64]) -> float:
    """Root mean square of an array (NaN if empty)."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean(v**2))) if v.size else math.nan
