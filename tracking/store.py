"""A thread-safe newest-pose-per-tool store with timeouts: the heart of every source.

Receiver threads call :meth:`PoseStore.put`; consumers call :meth:`PoseStore.snapshot`,
which applies each tool's timeout so that a pose older than its timeout is never LIVE.
Pose matrices are copied on :meth:`PoseStore.put` and stored read-only, so the consumers
sharing a frame cannot change what another sees.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray

from .frame import SourceHealth, ToolPose, ToolStatus, TrackerSource, TrackingFrame

#: Default per-tool timeout (s): a pose not refreshed within this is not shown as live.
DEFAULT_TIMEOUT_S = 0.25


class PoseStore:
    """Newest pose per tool, health counters, and an update event.

    Parameters
    ----------
    timeouts_s
        Per-tool timeout in seconds; tools not listed use ``default_timeout_s``.
    clock
        Monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        timeouts_s: Mapping[str, float] | None = None,
        *,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        clock=time.monotonic,
    ) -> None:
        self._timeouts = dict(timeouts_s or {})
        self._default_timeout = default_timeout_s
        self._clock = clock
        self._cond = threading.Condition()
        self._batch_depth = 0  # > 0 inside batch(): puts wake waiters once, at the end
        self._tools: dict[str, ToolPose] = {}
        self._seq = 0
        self._seen_seq = 0
        self._live_before: dict[str, bool] = {}
        self._recent = deque(maxlen=256)
        self.health = SourceHealth()

    def timeout_of(self, tool: str) -> float:
        return self._timeouts.get(tool, self._default_timeout)

    def put(
        self,
        tool: str,
        tracker_from_tool: NDArray[np.float64] | None,
        *,
        device_time_s: float,
        quality: float = float("nan"),
        host_time_s: float | None = None,
    ) -> None:
        """Record the newest message for ``tool``; ``None`` pose means the tracker says not visible."""
        now = self._clock() if host_time_s is None else host_time_s
        if tracker_from_tool is None:
            pose = ToolPose(ToolStatus.NOT_VISIBLE, None, quality, device_time_s, now)
        else:
            m = np.array(tracker_from_tool, dtype=np.float64)  # a private copy ...
            m.setflags(write=False)  # ... that consumers sharing this frame cannot modify
            pose = ToolPose(ToolStatus.LIVE, m, quality, device_time_s, now)
        with self._cond:
            self._tools[tool] = pose
            self._seq += 1
            self.health.messages += 1
            self._recent.append(now)
            if len(self._recent) > 1 and self._recent[-1] > self._recent[0]:
                self.health.rate_hz = (len(self._recent) - 1) / (self._recent[-1] - self._recent[0])
            if self._batch_depth == 0:
                self._cond.notify_all()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Apply several puts (one received network batch: every tool of one tracker sample) and
        wake consumers once at the end, so a consumer never computes from half a sample and does
        not compete with the producer for the GIL between its puts."""
        with self._cond:
            self._batch_depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._batch_depth -= 1
                if self._batch_depth == 0:
                    self._cond.notify_all()

    def mark_error(self, message: str, *, bad_message: bool = False) -> None:
        """Count a problem and keep the last error text and its time (host monotonic s)."""
        now = self._clock()
        with self._cond:
            self.health.last_error = message
            self.health.last_error_time_s = now
            if bad_message:
                self.health.bad_messages += 1
            self._cond.notify_all()

    def count(self, *, bad_messages: int = 0, dropped: int = 0, reconnects: int = 0) -> None:
        """Add to the health counters under the store's lock (receiver threads call this)."""
        with self._cond:
            self.health.bad_messages += bad_messages
            self.health.dropped += dropped
            self.health.reconnects += reconnects

    def count_extra(self, key: str, n: float = 1.0) -> None:
        """Add ``n`` to the named counter in ``health.extra``, under the store's lock."""
        with self._cond:
            self.health.extra[key] = self.health.extra.get(key, 0.0) + float(n)

    def set_lag(self, lag_s: float) -> None:
        """Record the latest host-minus-device time (s), under the lock."""
        with self._cond:
            self.health.lag_s = lag_s

    def set_connected(self, connected: bool) -> None:
        """Set the connection state. A (re)connection clears ``last_error``: the problems before it
        (e.g. "cannot connect") are resolved; the ``reconnects`` / ``bad_messages`` counters keep the history."""
        with self._cond:
            if connected and not self.health.connected:
                self.health.last_error = None
                self.health.last_error_time_s = float("nan")
            self.health.connected = connected
            self._cond.notify_all()

    def snapshot(self) -> TrackingFrame:
        """The newest state of every tool with timeouts applied now."""
        now = self._clock()
        with self._cond:
            out: dict[str, ToolPose] = {}
            for name, pose in self._tools.items():
                if pose.status is ToolStatus.LIVE and now - pose.host_time_s > self.timeout_of(name):
                    pose = ToolPose(ToolStatus.TIMED_OUT, None, pose.quality, pose.device_time_s, pose.host_time_s)
                live = pose.status is ToolStatus.LIVE
                if self._live_before.get(name) and not live:
                    self.health.dropouts += 1
                self._live_before[name] = live
                out[name] = pose
            self._seen_seq = self._seq
            return TrackingFrame(tools=out, host_time_s=now, sequence=self._seq)

    def wait_for_update(self, timeout_s: float) -> bool:
        """Block until a message newer than the last snapshot arrives and no :meth:`batch` is
        being applied (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._seq > self._seen_seq and self._batch_depth == 0, timeout=timeout_s)

    def wait_for_health(self, predicate: Callable[[SourceHealth], bool], timeout_s: float) -> bool:
        """Block until ``predicate(health)`` holds (checked on every put, error and connection
        change; False on timeout). For tests and tools that wait for a connection or an error."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.health), timeout=timeout_s)

    def health_snapshot(self) -> SourceHealth:
        with self._cond:
            h = self.health
            return SourceHealth(**{**h.__dict__, "extra": dict(h.extra)})


class StoreBackedSource(TrackerSource):
    """A :class:`TrackerSource` whose worker thread fills a :class:`PoseStore` kept in ``self.store``.

    Gives every source the same ``latest`` / ``wait_for_update`` / ``health`` and the same
    worker-thread lifecycle; a source implements :meth:`_run` (the thread body, which ends when
    ``self._stop`` is set) and, where it needs them, the hooks :meth:`_open`, :meth:`_interrupt`
    and :meth:`_close`:

    :meth:`start`
        (no-op while running) clears ``_stop``, calls :meth:`_open` (open the device / file /
        socket; an exception here propagates and nothing is started), marks the store connected
        when ``_connected_while_running`` (before the thread starts, so a thread that fails at
        once leaves it disconnected), then starts a daemon thread named ``_thread_name`` on
        :meth:`_run`.
    :meth:`stop`
        (safe to call twice, and before start) sets ``_stop``, calls :meth:`_interrupt` (wake a
        blocking call in the thread), joins the thread (``_join_timeout_s``), calls :meth:`_close`
        and marks the store disconnected.

    Use as a context manager (``with source: ...``; from :class:`TrackerSource`). A source whose
    receiving runs in another object (e.g. :class:`~orthonav.tracking.igtl_server.IGTLServerSource`)
    overrides ``start`` / ``stop`` instead. Subclasses call ``super().__init__(store)``.
    """

    store: PoseStore
    _thread_name: str = "tracker"
    _connected_while_running: bool = True  #: False: the thread itself reports connection (e.g. a socket client)
    _join_timeout_s: float = 5.0

    def __init__(self, store: PoseStore) -> None:
        self.store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._open()
        if self._connected_while_running:
            self.store.set_connected(True)
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout=self._join_timeout_s)
            self._thread = None
        self._close()
        self.store.set_connected(False)

    def _open(self) -> None:
        """Acquire what the thread reads (called by :meth:`start` before the thread exists)."""

    def _run(self) -> None:
        """The worker thread: put poses into ``self.store`` until ``self._stop`` is set."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Wake the thread from a blocking call (called by :meth:`stop` after ``_stop`` is set)."""

    def _close(self) -> None:
        """Release what :meth:`_open` acquired (called by :meth:`stop` after the thread has ended)."""

    # --- reading ---------------------------------------------------------------------------

    def latest(self) -> TrackingFrame:
        return self.store.snapshot()

    def wait_for_update(self, timeout_s: float) -> bool:
        return self.store.wait_for_update(timeout_s)

    def health(self) -> SourceHealth:
        return self.store.health_snapshot()
