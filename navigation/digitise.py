"""Digitise points with the tracked pointer: automatic capture when the tip is held still.

Everything is in the patient REFERENCE frame (``p_ref = inv(tracker_from_reference) @
tracker_from_pointer @ tip``), so patient or camera motion during a dwell does not blur it.
A capture fires when the tip has stayed within ``still_mm`` (RMS about the window mean) for at
least ``hold_s``; the captured point is the mean over that window. Short gaps in the samples
(up to ``max_gap_s``: a marker briefly occluded, a stalled stream) are bridged. The next capture is armed
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
    max_gap_s
        A gap without samples (pointer or reference not visible, a stalled stream) longer than
        this restarts the window; shorter gaps (a marker briefly occluded) are bridged.
    """

    def __init__(self, *, hold_s: float = 0.4, still_mm: float = 0.3, rearm_mm: float = 10.0, min_samples: int = 5,
                 max_gap_s: float = 0.5) -> None:
        if hold_s <= 0 or still_mm <= 0 or rearm_mm <= 0:
            raise ValueError("hold_s, still_mm and rearm_mm must be positive")
        self.hold_s = hold_s
        self.still_mm = still_mm
        self.rearm_mm = rearm_mm
        self.min_samples = min_samples
        self.max_gap_s = max_gap_s
        self._window: deque[tuple[float, NDArray[np.float64]]] = deque()
        self._last: NDArray[np.float64] | None = None
        self._armed = True

    def reset(self) -> None:
        self._window.clear()

    def add(self, host_time_s: float, p_reference_mm: NDArray[np.float64] | None) -> Capture | None:
        """Feed one sample (None = pointer or reference not visible; see ``max_gap_s``)."""
        if p_reference_mm is None:
            return None
        p = np.asarray(p_reference_mm, dtype=np.float64)
        if self._window and host_time_s - self._window[-1][0] > self.max_gap_s:
            self._window.clear()
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
    """Assigns pointer dwells to the plan's fiducials by geometry, preferring plan order.

    Distances between points are rigid-invariant, so captures can be labelled before any
    registration: after each capture the digitiser looks for the labelling of ALL captures
    (each to a different fiducial) whose pairwise distances match the CT distances within
    ``consistency_mm``, keeping earlier labels and plan order where possible (a small
    depth-first search with pruning). So a missed or out-of-order fiducial does not shift every
    later label, and a dwell that fits no fiducial (the pointer laid down, a wrong bead) is
    rejected. After ``restart_after`` rejections in a row, if at least ``min_fiducials`` are
    labelled :attr:`stalled` is set (the workflow may register with those), else everything is
    discarded and digitising starts again. Without CT positions, captures are labelled in
    plan order.

    Parameters
    ----------
    names
        Fiducial names, in the plan's order (the order the surgeon is asked to touch them).
    tip_in_tool
        (3,) pointer tip in the pointer's tool frame (mm).
    fiducials_ct_mm
        (n, 3) the fiducials in the CT (mm), for labelling by geometry (None: plan order).
    pointer, reference
        Tool names.
    """

    def __init__(self, names: list[str], tip_in_tool: NDArray[np.float64], *, fiducials_ct_mm: NDArray[np.float64] | None = None,
                 consistency_mm: float = 3.0, pointer: str = "Pointer", reference: str = "Reference",
                 capture: StillCapture | None = None, min_fiducials: int = 4, restart_after: int = 3) -> None:
        self.names = list(names)
        self.tip_in_tool = np.asarray(tip_in_tool, dtype=np.float64)
        self.ct = None if fiducials_ct_mm is None else dict(zip(self.names, np.asarray(fiducials_ct_mm, dtype=np.float64)))
        self.consistency_mm = consistency_mm
        self.pointer = pointer
        self.reference = reference
        self.capture = capture or StillCapture()
        self.captures: dict[str, Capture] = {}
        self.rejected: list[tuple[str, Capture, str]] = []
        self.min_fiducials = max(3, min_fiducials)
        self.restart_after = restart_after  #: consecutive rejected captures before stalling / restarting
        self.restarts = 0
        self.stalled = False
        self.relabelled: list[tuple[str, str]] = []  #: (old, new) labels changed by the newest capture
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

    def _labelling(self, caps: list[Capture], prefer: list[str | None]) -> list[str] | None:
        """Labels for ``caps`` consistent with the CT distances (preferring ``prefer``, then plan order)."""
        assert self.ct is not None
        ct = self.ct
        tol = self.consistency_mm
        pts = [c.p_reference_mm for c in caps]
        result: list[str] = [""] * len(caps)
        used: set[str] = set()

        def fits(i: int, name: str) -> bool:
            for j in range(i):
                d_ref = float(np.linalg.norm(pts[i] - pts[j]))
                d_ct = float(np.linalg.norm(ct[name] - ct[result[j]]))
                if abs(d_ref - d_ct) > tol:
                    return False
            return True

        def search(i: int) -> bool:
            if i == len(caps):
                return True
            first = [prefer[i]] if prefer[i] else []
            for name in first + [n for n in self.names if n != prefer[i]]:
                if name in used or not fits(i, name):
                    continue
                result[i] = name
                used.add(name)
                if search(i + 1):
                    return True
                used.discard(name)
            return False

        return result if search(0) else None

    def _worst_mismatch(self, cap: Capture) -> str:
        name = self.next_name or self.names[-1]
        worst, worst_name = 0.0, ""
        for other, c in self.captures.items():
            d_ref = float(np.linalg.norm(cap.p_reference_mm - c.p_reference_mm))
            d_ct = float(np.linalg.norm(self.ct[name] - self.ct[other])) if self.ct else d_ref
            if abs(d_ref - d_ct) > worst:
                worst, worst_name = abs(d_ref - d_ct), other
        return (f"its distances to the fiducials already touched match no remaining fiducial within {self.consistency_mm:.1f} mm "
                f"(as {name}: {worst:.1f} mm off at {worst_name})")

    def update(self, frame: TrackingFrame) -> tuple[str, Capture] | None:
        """Feed a frame; returns (fiducial name, capture) when a dwell is captured and labelled."""
        if self.done:
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
        if self.ct is None:
            name = self.next_name
            assert name is not None
            self.captures[name] = cap
            return name, cap
        old = list(self.captures.items())
        caps = [c for _n, c in old] + [cap]
        labels = self._labelling(caps, [n for n, _c in old] + [self.next_name])
        if labels is None:
            self.rejected.append((self.next_name or "", cap, self._worst_mismatch(cap)))
            self._consecutive_rejections += 1
            if self._consecutive_rejections >= self.restart_after:
                self._consecutive_rejections = 0
                if len(self.captures) >= self.min_fiducials:
                    self.stalled = True
                else:
                    self.captures.clear()
                    self.restarts += 1
            return None
        self._consecutive_rejections = 0
        self.relabelled = [(o, n) for (o, _c), n in zip(old, labels) if o != n]
        self.captures = {name: c for name, c in sorted(zip(labels, caps), key=lambda nc: self.names.index(nc[0]))}
        return labels[-1], cap

    def discard(self, name: str) -> None:
        """Forget one capture (it will be digitised again)."""
        self.captures.pop(name, None)
        self.stalled = False

    def labelled(self) -> tuple[list[str], NDArray[np.float64]]:
        """Names (plan order) and (k, 3) reference-frame points of the labelled captures."""
        names = [n for n in self.names if n in self.captures]
        return names, np.array([self.captures[n].p_reference_mm for n in names]).reshape(-1, 3)

    def points_reference_mm(self) -> NDArray[np.float64]:
        """(n, 3) captured points in plan order (only after :attr:`done`)."""
        return np.array([self.captures[n].p_reference_mm for n in self.names])


def rms(values: NDArray[np.float64]) -> float:
    """Root mean square of an array (NaN if empty)."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean(v**2))) if v.size else math.nan
