"""The live loop: a tracking thread turns every tracker update into a navigation state.

The tracking thread blocks in ``source.wait_for_update`` (no sleeps), takes the newest frame
(``source.latest()`` applies the per-tool timeouts), runs the :class:`Workflow` and publishes
the newest :class:`NavigationState`. When no update arrives within ``idle_timeout_s`` it still
takes a frame, so a silent tracker turns tools STALE / NOT TRACKING on screen within one tool
timeout plus ``idle_timeout_s``. A renderer reads :meth:`NavigationLoop.latest_state` at its own
display rate (decoupled: rendering never delays tracking, and tracking never queues frames
for the renderer).

Latency: the thread sleeps on the store's condition variable (notified by every ``put``), so it
wakes as soon as the receiver has stored a pose, and a state costs ~0.1-0.2 ms. What remains is
scheduling. A renderer in the same process runs Python between its VTK calls (which release the
GIL); CPython hands the GIL to a waiting thread only after the switch interval (5 ms by default),
so while running the loop lowers it to ``switch_interval_s`` (restored by :meth:`stop`).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from orthonav.core.errors import TrackingError
from orthonav.tracking.frame import TrackerSource

from .session import SessionRecorder
from .state import NavigationState
from .workflow import Workflow


@dataclass(frozen=True)
class LoopStats:
    """Figures of a running or finished loop.

    Attributes
    ----------
    states
        Navigation states computed.
    rate_hz
        States per second over the loop's run time.
    latency_p50_ms, latency_p99_ms, latency_max_ms
        Host receipt of the newest message -> state computed (ms).
    duration_s
        Run time so far (s).
    """

    states: int
    rate_hz: float
    latency_p50_ms: float
    latency_p99_ms: float
    duration_s: float
    latency_max_ms: float = math.nan


class NavigationLoop:
    """Runs a :class:`Workflow` on a tracker source in a background thread.

    Parameters
    ----------
    source
        A started (or startable) tracker source.
    workflow
        The frame processor.
    recorder
        Optional session recorder; every processed frame and its state are written.
    idle_timeout_s
        Longest wait for an update before a watchdog frame is taken (s).
    on_state
        Optional callback ``on_state(state, workflow)`` run in the tracking thread after each
        state (e.g. streaming to Slicer); keep it short.
    switch_interval_s
        CPython's GIL switch interval while the loop runs (s), if lower than the current one
        (see the module docstring); None leaves it alone.
    """

    def __init__(self, source: TrackerSource, workflow: Workflow, *, recorder: SessionRecorder | None = None,
                 idle_timeout_s: float = 0.05, on_state: Callable[[NavigationState, Workflow], None] | None = None,
                 switch_interval_s: float | None = 0.0005) -> None:
        self.switch_interval_s = switch_interval_s
        self._saved_switch_interval: float | None = None
        self.source = source
        self.workflow = workflow
        self.recorder = recorder
        self.idle_timeout_s = idle_timeout_s
        self.on_state = on_state
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._state: NavigationState | None = None
        self._count = 0
        self._latencies: deque[float] = deque(maxlen=200_000)
        self._thread: threading.Thread | None = None
        self._t0 = math.nan
        self._t1 = math.nan
        self._finished = False  #: the tracking thread has exited (stopped or died); wakes every waiter
        self.error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._finished = False
        self._t0 = time.monotonic()
        if self.switch_interval_s is not None and self.switch_interval_s < sys.getswitchinterval():
            self._saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(self.switch_interval_s)
        self._thread = threading.Thread(target=self._run, name="navigation-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; re-raise (as TrackingError) anything that killed it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        if self._saved_switch_interval is not None:
            sys.setswitchinterval(self._saved_switch_interval)
            self._saved_switch_interval = None
        if math.isnan(self._t1):
            self._t1 = time.monotonic()
        if self.error is not None:
            raise TrackingError(f"the navigation loop failed: {self.error!r}") from self.error

    def __enter__(self) -> NavigationLoop:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def latest_state(self) -> NavigationState | None:
        """The newest state (None before the first frame)."""
        with self._cond:
            return self._state

    def wait_for_state(self, after_sequence: int, timeout_s: float) -> NavigationState | None:
        """Block until a state with a frame sequence > ``after_sequence`` exists (None on timeout or
        when the loop has ended: stopped, or died with :attr:`error` set)."""
        def newer() -> bool:
            return self._state is not None and self._state.sequence > after_sequence

        with self._cond:
            self._cond.wait_for(lambda: newer() or self._finished or self._stop.is_set(), timeout=timeout_s)
            return self._state if newer() else None

    def wait_until(self, predicate: Callable[[NavigationState], bool], timeout_s: float) -> NavigationState | None:
        """Block until ``predicate(state)`` is true for a new state (None on timeout or when the loop
        has ended: stopped, or died with :attr:`error` set)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: (self._state is not None and predicate(self._state)) or self._finished
                                     or self._stop.is_set(), timeout=timeout_s)
            return self._state if ok and self._state is not None and predicate(self._state) else None

    def stats(self) -> LoopStats:
        with self._cond:
            lat = np.array(self._latencies, dtype=float)
            n = self._count
        end = self._t1 if math.isfinite(self._t1) else time.monotonic()
        dur = end - self._t0 if math.isfinite(self._t0) else 0.0
        lat = lat[np.isfinite(lat)]
        p50 = float(np.percentile(lat, 50) * 1e3) if lat.size else math.nan
        p99 = float(np.percentile(lat, 99) * 1e3) if lat.size else math.nan
        worst = float(lat.max() * 1e3) if lat.size else math.nan
        return LoopStats(n, n / dur if dur > 0 else 0.0, p50, p99, dur, worst)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.source.wait_for_update(self.idle_timeout_s)
                if self._stop.is_set():
                    break
                frame = self.source.latest()
                state = self.workflow.process(frame)
                if self.recorder is not None:
                    self.recorder.write(frame, state)
                with self._cond:
                    self._state = state
                    self._count += 1
                    self._latencies.append(state.latency_s)
                    self._cond.notify_all()
                if self.on_state is not None:
                    self.on_state(state, self.workflow)
        except BaseException as e:  # surfaced by stop(); the screen shows the last state meanwhile
            self.error = e
        finally:
            self._t1 = time.monotonic()
            with self._cond:
                self._finished = True
                self._cond.notify_all()
