"""Digitise points with the tracked pointer: automatic capture when the tip is held still,
and labelling of the captures with the plan's fiducials by geometry.

Everything is in the patient REFERENCE frame (``p_ref = inv(tracker_from_reference) @
tracker_from_pointer @ tip``), so patient or camera motion during a dwell does not blur it.
A capture fires when the tip has stayed within ``still_mm`` (RMS about the window mean) for at
least ``hold_s``; the captured point is the mean over that window. Short gaps in the samples
(up to ``max_gap_s``: a marker briefly occluded, a stalled stream) are bridged. The next capture is armed
only after the tip has moved more than ``rearm_mm`` away from the last captured point, so one
dwell is never captured twice.

Labelling (:class:`FiducialDigitiser`): every dwell is kept as a candidate, and after each
one the captures are labelled by the largest set of them that matches plan fiducials under
one rigid transform (:func:`orthonav.navigation.fiducial_match.match_fiducials`). A rest
position, a mis-touch or a touch on another landmark anywhere in the sequence is therefore
left unmatched and costs nothing.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import RegistrationError
from orthonav.core.procrustes import paired_point
from orthonav.core.transforms import apply, invert
from orthonav.tracking.frame import TrackingFrame

from .fiducial_match import match_fiducials


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


#: Farthest plausible pointer tip from the patient reference (mm): a tracker's whole working
#: volume is a few metres; anything beyond is a corrupt pose, never a digitised point.
MAX_TIP_MM = 1e4


def tip_in_reference(frame: TrackingFrame, pointer: str, reference: str, tip_in_tool: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """(3,) pointer tip in the reference frame (mm), or None unless both tools are LIVE with
    finite poses no farther than :data:`MAX_TIP_MM` apart (an absurd pose is never a point)."""
    t_ref = frame.pose(reference)
    t_ptr = frame.pose(pointer)
    if t_ref is None or t_ptr is None or not (np.all(np.isfinite(t_ref)) and np.all(np.isfinite(t_ptr))):
        return None
    with np.errstate(all="ignore"):
        p = apply(invert(t_ref) @ t_ptr, tip_in_tool)
    if not np.all(np.isfinite(p)) or float(np.linalg.norm(p)) > MAX_TIP_MM:
        return None
    return p


class StillCapture:
    """Detects pointer dwells in a stream of tip positions (reference frame) and averages them.

    :meth:`add` is O(1) amortised: the window's sum and sum of squares are kept as running
    sums about an anchor point (re-anchored and recomputed exactly once per window turnover,
    so rounding does not accumulate), and the captured mean and spread are recomputed exactly
    from the window's samples when a capture fires (or when the running spread is within
    rounding of ``still_mm``), so captures are the same as a full recomputation per sample.

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
        # Samples as (t, x, y, z) plain floats: the 1 kHz hot path avoids small numpy arrays.
        self._window: deque[tuple[float, float, float, float]] = deque()
        self._last: tuple[float, float, float] | None = None
        self._armed = True
        self._anchor = (0.0, 0.0, 0.0)
        self._sum = [0.0, 0.0, 0.0]  # sum of (p - anchor)
        self._sum_sq = 0.0  # sum of |p - anchor|^2
        self._pops = 0  # samples removed since the sums were last recomputed

    def reset(self) -> None:
        """Forget the current window (the rearm state is kept)."""
        self._window.clear()
        self._pops = 0

    def _push(self, t: float, x: float, y: float, z: float) -> None:
        if not self._window:
            self._anchor = (x, y, z)
            self._sum = [0.0, 0.0, 0.0]
            self._sum_sq = 0.0
            self._pops = 0
        ax, ay, az = self._anchor
        dx, dy, dz = x - ax, y - ay, z - az
        self._window.append((t, x, y, z))
        self._sum[0] += dx
        self._sum[1] += dy
        self._sum[2] += dz
        self._sum_sq += dx * dx + dy * dy + dz * dz

    def _pop(self) -> None:
        _t, x, y, z = self._window.popleft()
        ax, ay, az = self._anchor
        dx, dy, dz = x - ax, y - ay, z - az
        self._sum[0] -= dx
        self._sum[1] -= dy
        self._sum[2] -= dz
        self._sum_sq -= dx * dx + dy * dy + dz * dz
        self._pops += 1
        if self._pops >= len(self._window) and self._window:
            self._recompute()

    def _recompute(self) -> None:
        """Re-anchor at the oldest sample and recompute the sums exactly (once per window turnover)."""
        _t, ax, ay, az = self._window[0]
        self._anchor = (ax, ay, az)
        sx = sy = sz = sq = 0.0
        for _t, x, y, z in self._window:
            dx, dy, dz = x - ax, y - ay, z - az
            sx += dx
            sy += dy
            sz += dz
            sq += dx * dx + dy * dy + dz * dz
        self._sum = [sx, sy, sz]
        self._sum_sq = sq
        self._pops = 0

    def _exact(self) -> tuple[NDArray[np.float64], float]:
        """Mean (3,) and RMS spread (mm) of the window, computed from its samples."""
        pts = np.array([q[1:] for q in self._window])
        mean = pts.mean(axis=0)
        return mean, float(np.sqrt(np.mean(np.sum((pts - mean) ** 2, axis=1))))

    def add(self, host_time_s: float, p_reference_mm: NDArray[np.float64] | None) -> Capture | None:
        """Feed one sample (None = pointer or reference not visible; see ``max_gap_s``)."""
        if p_reference_mm is None:
            return None
        x, y, z = (float(v) for v in p_reference_mm)
        if self._window and host_time_s - self._window[-1][0] > self.max_gap_s:
            self.reset()
        if not self._armed:
            if self._last is not None and math.dist((x, y, z), self._last) > self.rearm_mm:
                self._armed = True
            else:
                return None
        self._push(host_time_s, x, y, z)
        # Keep only samples within hold_s of the newest (plus the one that spans hold_s).
        while len(self._window) > 1 and host_time_s - self._window[1][0] >= self.hold_s:
            self._pop()
        n = len(self._window)
        if host_time_s - self._window[0][0] < self.hold_s or n < self.min_samples:
            return None
        sx, sy, sz = self._sum
        var = self._sum_sq / n - (sx * sx + sy * sy + sz * sz) / (n * n)
        limit = self.still_mm * self.still_mm
        if abs(var - limit) <= 1e-9 * (limit + self._sum_sq / n):
            var = self._exact()[1] ** 2  # within rounding of the limit: decide on the exact figure
        if var > limit:
            # Not still: drop the oldest sample so the window can slide onto the dwell.
            self._pop()
            return None
        mean, spread = self._exact()
        self.reset()
        self._last = (float(mean[0]), float(mean[1]), float(mean[2]))
        self._armed = False
        return Capture(mean, spread, n, host_time_s)


class FiducialDigitiser:
    """Labels pointer dwells with the plan's fiducials: the largest rigid-consistent subset of all dwells.

    Every capture is kept as a candidate (the newest ``max_candidates``, except those
    discarded). After each capture, :func:`match_fiducials` finds the largest set of captures
    matching plan fiducials one to one under one rigid transform within ``consistency_mm``
    (see the module docstring); those captures are labelled with their fiducials
    (:attr:`captures`), the others (a rest position, a mis-touch, a touch on another landmark)
    stay unmatched: a newest capture left unmatched is listed in :attr:`rejected` (with the
    reason; it costs nothing and may still be matched later). A capture within
    ``consistency_mm`` of a later one is superseded by it (a re-touch: the more recent touch
    is used). Among equally large matches the best rigid fit wins (tie-breaks in
    :func:`match_fiducials`). Labels are provisional until four captures fit: two points fit
    several fiducial pairs, and three can fit two triangles of a symmetric layout by chance.
    The search is deterministic: the same frames give the same labels. After ``restart_after`` captures in a row left unmatched with at least
    ``min_fiducials`` labelled, :attr:`stalled` is set (the workflow may register with those).
    Without CT positions, captures are labelled in plan order.

    Parameters
    ----------
    names
        Fiducial names, in the plan's order (the order the surgeon is asked to touch them).
    tip_in_tool
        (3,) pointer tip in the pointer's tool frame (mm).
    fiducials_ct_mm
        (n, 3) the fiducials in the CT (mm), for labelling by geometry (None: plan order).
    consistency_mm
        Tolerance (mm) on inter-touch distances against CT distances and on the rigid fit's
        per-capture residuals; see
        :func:`~orthonav.navigation.fiducial_match.consistency_tolerance_mm`.
    pointer, reference
        Tool names.
    capture
        The dwell detector (default :class:`StillCapture`).
    min_fiducials
        Fiducials (>= 3) enough to register with when the pointer has moved on.
    restart_after
        Unmatched captures in a row after which, with ``min_fiducials`` labelled, the
        digitiser reports :attr:`stalled`.
    max_candidates
        Most recent captures considered (bounds the search).
    """

    def __init__(self, names: list[str], tip_in_tool: NDArray[np.float64], *, fiducials_ct_mm: NDArray[np.float64] | None = None,
                 consistency_mm: float = 3.0, pointer: str = "Pointer", reference: str = "Reference",
                 capture: StillCapture | None = None, min_fiducials: int = 4, restart_after: int = 3,
                 max_candidates: int = 24) -> None:
        self.names = list(names)
        self.tip_in_tool = np.asarray(tip_in_tool, dtype=np.float64)
        self.fiducials_ct_mm = None if fiducials_ct_mm is None else np.asarray(fiducials_ct_mm, dtype=np.float64).reshape(-1, 3)
        self.consistency_mm = consistency_mm
        self.pointer = pointer
        self.reference = reference
        self.capture = capture or StillCapture()
        self.captures: dict[str, Capture] = {}  #: fiducial name -> its capture (plan order)
        self.candidates: list[Capture] = []  #: every capture, in time order
        self.rejected: list[tuple[str, Capture, str]] = []  #: (prompted name, capture, why) of captures left unmatched on arrival
        self.min_fiducials = max(3, min_fiducials)
        self.restart_after = restart_after
        self.max_candidates = max_candidates
        self.restarts = 0  #: kept for the workflow's interface: labelling by the largest match never restarts
        self.stalled = False
        self.relabelled: list[tuple[str, str]] = []  #: (old, new) labels changed by the newest capture ("unmatched" when dropped)
        self.superseded: list[str] = []  #: fiducials re-touched by the newest capture
        self._labels: dict[int, str] = {}  # candidate index -> fiducial name
        self._excluded: set[int] = set()
        self._consecutive_unmatched = 0
        self._last_sample_time: float | None = None

    @property
    def done(self) -> bool:
        """Every plan fiducial is labelled."""
        return len(self.captures) == len(self.names)

    @property
    def next_name(self) -> str | None:
        """The first fiducial (plan order) not yet labelled: the one the user is asked to touch."""
        for n in self.names:
            if n not in self.captures:
                return n
        return None

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
        return None if cap is None else self.add_capture(cap)

    def add_capture(self, cap: Capture) -> tuple[str, Capture] | None:
        """Label a new capture with the others (what :meth:`update` does with each dwell).

        Returns (fiducial name, capture) when the capture is labelled, None when it is left
        unmatched (then listed in :attr:`rejected`) or every fiducial is already labelled.
        """
        if self.done:
            return None
        prompted = self.next_name or ""
        self.candidates.append(cap)
        new = len(self.candidates) - 1
        self.relabelled, self.superseded = [], []
        if self.fiducials_ct_mm is None:
            self._labels[new] = prompted
            self._set_captures()
            return prompted, cap
        first = max(0, len(self.candidates) - self.max_candidates)
        idx = [i for i in range(first, len(self.candidates)) if i not in self._excluded]
        match = match_fiducials(np.array([self.candidates[i].p_reference_mm for i in idx]), self.fiducials_ct_mm,
                                self.consistency_mm, previous=[self.names.index(self._labels[i]) if i in self._labels else -1
                                                               for i in idx])
        old = self._labels
        self._labels = {idx[k]: self.names[a] for k, a in match.items()}
        self.superseded = [n for i, n in old.items() if i not in self._labels and n == self._labels.get(new)]
        self.relabelled = [(n, self._labels.get(i, "unmatched")) for i, n in sorted(old.items())
                           if self._labels.get(i) != n and n not in self.superseded]
        self._set_captures()
        if new in self._labels:
            self._consecutive_unmatched = 0
            return self._labels[new], cap
        self.rejected.append((prompted, cap, self._why_unmatched(cap)))
        self._consecutive_unmatched += 1
        if self._consecutive_unmatched >= self.restart_after and len(self.captures) >= self.min_fiducials:
            self._consecutive_unmatched = 0
            self.stalled = True
        return None

    def _set_captures(self) -> None:
        by_name = {n: self.candidates[i] for i, n in self._labels.items()}
        self.captures = {n: by_name[n] for n in self.names if n in by_name}

    def _why_unmatched(self, cap: Capture) -> str:
        tol = self.consistency_mm
        names, p_ref = self.labelled()
        if len(names) >= 3 and self.fiducials_ct_mm is not None:
            ct = np.array([self.fiducials_ct_mm[self.names.index(n)] for n in names])
            try:
                fit = paired_point(ct, p_ref)
            except RegistrationError:
                fit = None
            if fit is not None:
                d = np.linalg.norm(self.fiducials_ct_mm - apply(fit.fixed_from_moving, cap.p_reference_mm), axis=1)
                k = int(np.argmin(d))
                return (f"it fits no plan fiducial together with the {len(names)} labelled (nearest {self.names[k]}, "
                        f"{d[k]:.1f} mm off under their fit; tolerance {tol:.1f} mm): left unmatched")
        return (f"its distances to the {len(names)} labelled captures match no plan fiducial within {tol:.1f} mm: "
                f"left unmatched")

    def discard(self, name: str) -> None:
        """Forget the capture labelled ``name`` (it will be digitised again).

        That capture, and any earlier one within ``consistency_mm`` of it (an earlier touch of
        the same spot, superseded by it), are no longer candidates.
        """
        self.stalled = False
        hit = [i for i, n in self._labels.items() if n == name]
        if not hit:
            return
        p = self.candidates[hit[0]].p_reference_mm
        for i, c in enumerate(self.candidates[: hit[0] + 1]):
            if float(np.linalg.norm(c.p_reference_mm - p)) <= self.consistency_mm:
                self._excluded.add(i)
        del self._labels[hit[0]]
        self._set_captures()

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
