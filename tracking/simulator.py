"""Simulated tracker: scripted true poses plus tracker-like noise, in-process or over OpenIGTLink.

A *script* is a function ``script(t_s) -> {tool: tracker_from_tool | None}`` giving the TRUE
pose (4x4, LPS-based tracker frame, mm) of every tool at ``t_s`` seconds since start; None
means the tool is not visible at that time.

Noise model (per tool, per sample, independent): translation + isotropic Gaussian with
standard deviation ``tracker_noise_mm`` on each axis; rotation by a small rotation about a
uniformly random axis with angle ~ N(0, ``rotation_noise_deg``), applied in the tool frame
(``noisy = true @ delta``), so the tool origin moves only by the translation noise.

Scheduling is drift-free: sample ``k`` is due at ``t0 + k / rate_hz`` and the thread waits
on an Event until that deadline (never ``sleep(period)`` after the work).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import InputError
from orthonav.core.transforms import make_rigid, rotation_about_axis

from .frame import ToolPose, ToolStatus, TrackingFrame
from .store import PoseStore, StoreBackedSource
from .tools import ToolSet

Script = Callable[[float], Mapping[str, NDArray[np.float64] | None]]


def add_noise(
    pose: NDArray[np.float64], rng: np.random.Generator, tracker_noise_mm: float, rotation_noise_deg: float
) -> NDArray[np.float64]:
    """A noisy copy of ``tracker_from_tool`` (see the module docstring for the model)."""
    out = np.array(pose, dtype=np.float64)
    if rotation_noise_deg > 0:
        axis = rng.normal(size=3)
        angle = math.radians(rng.normal(0.0, rotation_noise_deg))
        out = out @ make_rigid(rotation_about_axis(axis, angle))
    if tracker_noise_mm > 0:
        out[:3, 3] += rng.normal(0.0, tracker_noise_mm, size=3)
    return out


def _check_rate(rate_hz: float) -> None:
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise InputError(None, f"rate_hz must be a positive number, got {rate_hz}")


class Ticker:
    """Drift-free periodic deadlines: :meth:`wait_next` returns False when stopped."""

    def __init__(self, rate_hz: float, stop: threading.Event, clock: Callable[[], float] = time.monotonic) -> None:
        _check_rate(rate_hz)
        self.period = 1.0 / rate_hz
        self.stop = stop
        self.clock = clock
        self.t0 = clock()
        self.k = 0
        self.late = 0  #: deadlines missed by more than one period (samples skipped)

    def wait_next(self) -> bool:
        self.k += 1
        due = self.t0 + self.k * self.period
        now = self.clock()
        if now - due > self.period:  # fell behind (e.g. a stall): skip, never burst to catch up
            missed = int((now - due) / self.period)
            self.late += missed
            self.k += missed
            due = self.t0 + self.k * self.period
        return not self.stop.wait(max(0.0, due - now))


class SimulatedSource(StoreBackedSource):
    """In-process simulated tracker running ``script`` at ``rate_hz`` with noise.

    ``device_time_s`` of each pose is the script time ``t`` (s since start) and
    ``quality`` is the translation noise sigma (mm). :attr:`truth` holds the true poses of
    the newest sample, for tests.
    """

    def __init__(
        self,
        script: Script,
        *,
        rate_hz: float = 200.0,
        tracker_noise_mm: float = 0.1,
        rotation_noise_deg: float = 0.05,
        seed: int = 0,
        tools: ToolSet | None = None,
    ) -> None:
        _check_rate(rate_hz)
        super().__init__(PoseStore(tools.timeouts_s() if tools else None))
        self.script = script
        self.rate_hz = rate_hz
        self.noise = (tracker_noise_mm, rotation_noise_deg)
        self.rng = np.random.default_rng(seed)
        self.truth: dict[str, NDArray[np.float64] | None] = {}
        self.truth_time_s = math.nan
        self._error: BaseException | None = None

    _thread_name = "simulated-tracker"

    def _run(self) -> None:
        ticker = Ticker(self.rate_hz, self._stop)
        while True:
            t = time.monotonic() - ticker.t0
            try:
                poses = dict(self.script(t))
            except Exception as e:  # a broken script is reported in health, not swallowed silently
                self.store.mark_error(f"simulation script failed at t={t:.3f} s: {e!r}")
                self._error = e
                self.store.set_connected(False)
                return
            self.truth = poses
            self.truth_time_s = t
            now = time.monotonic()
            with self.store.batch():  # one sample: consumers wake once, with every tool of it
                for tool, pose in poses.items():
                    noisy = None if pose is None else add_noise(pose, self.rng, *self.noise)
                    self.store.put(tool, noisy, device_time_s=t, quality=self.noise[0], host_time_s=now)
            if not ticker.wait_next():
                return


@dataclass(frozen=True)
class StreamStats:
    """What :func:`stream_script` did."""

    samples: int
    duration_s: float
    rate_hz: float  #: achieved sample rate
    late_samples: int  #: deadlines skipped because the sender fell behind
    clients: int  #: clients connected at the end
    dropped: int  #: messages dropped on full client queues


def stream_script(
    script: Script,
    port: int,
    *,
    rate_hz: float = 200.0,
    duration_s: float,
    truth_path: str | Path | None = None,
    host: str = "127.0.0.1",
    tracker_noise_mm: float = 0.1,
    rotation_noise_deg: float = 0.05,
    seed: int = 0,
    wait_for_client_s: float = 0.0,
    stop: threading.Event | None = None,
    on_listening: Callable[[int], None] | None = None,
    on_start: Callable[[float], None] | None = None,
) -> StreamStats:
    """Serve ``script`` over OpenIGTLink on ``host:port`` for ``duration_s`` seconds.

    Every sample sends each tool as ``<Tool>ToTracker`` TRANSFORM (RAS on the wire) or, when
    the script says None, a not-visible STATUS. The device timestamp is the pose's sampling
    time, as a tracker stamps it: the wall clock at script time 0 plus the script time ``t``
    (monotonic), so a sender delayed between sampling and sending (a busy machine, another
    thread holding the GIL) still stamps each pose with the time it shows, and a step of the
    wall clock mid-run does not move it.

    Parameters
    ----------
    truth_path
        If given, a recording (:mod:`orthonav.tracking.recording`) of the SENT (noisy) poses,
        each frame carrying the TRUE poses as ``truth``; ``device_time_s`` = wire timestamp.
    wait_for_client_s
        Wait up to this long for a first client before the clock starts (0: don't wait).
    stop
        Optional event ending the stream early.
    on_listening
        Called with the bound port once listening (useful with ``port=0``).
    on_start
        Called once the clock starts, with the wall-clock time (s, ``time.time()`` epoch) of
        script time 0: ``device_time_s - epoch`` is the script time of any sent pose.
    """
    from .igtl_server import IGTLServer  # local: keeps the in-process simulator free of sockets
    from .recording import RecordingWriter

    _check_rate(rate_hz)
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise InputError(None, f"duration_s must be positive, got {duration_s}")
    stop = stop or threading.Event()
    rng = np.random.default_rng(seed)
    writer = None
    samples = 0
    with IGTLServer(port, host=host) as server:  # raises (port busy) before any file exists
        # created only once the server listens, so a failed start leaves no .part file or fd
        writer = RecordingWriter(truth_path, source="simulator") if truth_path is not None else None
        if on_listening is not None:
            on_listening(server.port)
        try:
            if wait_for_client_s > 0:
                server.wait_for_clients(1, wait_for_client_s)
            ticker = Ticker(rate_hz, stop)
            epoch = time.time() - (time.monotonic() - ticker.t0)  # wall clock at script time 0
            if on_start is not None:
                on_start(epoch)
            while True:
                t = time.monotonic() - ticker.t0
                if t >= duration_s:
                    break
                truth = dict(script(t))
                sent = {k: (None if v is None else add_noise(v, rng, tracker_noise_mm, rotation_noise_deg)) for k, v in truth.items()}
                device_t = epoch + t  # sampled at t, whenever it is sent
                server.send_poses(sent, device_t)
                samples += 1
                if writer is not None:
                    now = time.monotonic()
                    tools = {
                        k: ToolPose(ToolStatus.LIVE if v is not None else ToolStatus.NOT_VISIBLE, v, tracker_noise_mm, device_t, now)
                        for k, v in sent.items()
                    }
                    writer.write(TrackingFrame(tools, now, samples), truth=truth, script_time_s=t)
                if not ticker.wait_next():
                    break
            elapsed = time.monotonic() - ticker.t0
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        clients = server.n_clients
        dropped = server.dropped
    if writer is not None:
        writer.close()
    return StreamStats(samples, elapsed, samples / elapsed if elapsed > 0 else 0.0, ticker.late, clients, dropped)
