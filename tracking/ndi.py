"""NDI Polaris / Vega / Aurora trackers through the ``ndicapi`` binding, in a separate process.

``ndicapi`` (optional dependency, ``pip install orthonav[ndi]``) holds the GIL for seconds
while it probes serial ports and blocks in every ``BX`` call, so it never runs in the
navigation process: :class:`NDISource` starts a worker *process* (``multiprocessing``,
spawn) that opens the device, loads the tools' ROM files, starts tracking and streams
frames back over a pipe; a thread in this process writes them into a
:class:`~orthonav.tracking.store.PoseStore`.

The binding is imported by module name inside the worker (``binding_module``, default
``"ndicapi"``): that name is the seam tests use to substitute a fake module.

Frames: poses are the tracker's own frame as NDI reports it (mm; quaternion q0 qx qy qz +
translation), no RAS/LPS meaning and no conversion. ``device_time_s`` is the tracker frame
number divided by the tracker frame rate (60 Hz by default); ``quality`` is NDI's RMS
marker-fit error (mm). A "MISSING" / "DISABLED" handle, or a port whose BX status has the
out-of-volume bit set (``NDI_OUT_OF_VOLUME``, 0x40 in ndicapi.h: ``BX:0801`` also returns
poses of tools outside the calibrated measurement volume, whose accuracy is not specified),
is reported as not visible.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orthonav.core.errors import InputError, TrackingError

from .igtl_protocol import matrix_from_quaternion
from .store import PoseStore, StoreBackedSource
from .tools import ToolSet

#: Port-status bit "tool out of the measurement volume" (ndicapi.h NDI_OUT_OF_VOLUME).
NDI_OUT_OF_VOLUME = 0x0040


@dataclass(frozen=True)
class NDIToolSpec:
    name: str
    rom_file: str | None  # None: wired Aurora sensor / active tool, matched in port-handle order


def _is_network(spec: str) -> bool:
    return not (spec.startswith("/dev/") or spec.upper().startswith("COM") or spec == "auto") and (
        "." in spec or ":" in spec or spec == "localhost"
    )


def _check(nd: Any, device: Any, what: str) -> None:
    err = nd.ndiGetError(device)
    if err != nd.NDI_OKAY:
        raise TrackingError(f"NDI {what} failed: {nd.ndiErrorString(err)}")


def _command(nd: Any, device: Any, cmd: str) -> str:
    reply = nd.ndiCommand(device, cmd)
    _check(nd, device, f"command '{cmd}'")
    return reply


def _open(nd: Any, spec: str) -> tuple[Any, bool]:
    if _is_network(spec):
        host, _, port = spec.partition(":")
        device = nd.ndiOpenNetwork(host, int(port or 8765))
        if not device:
            raise TrackingError(f"NDI: cannot connect to {spec}")
        return device, True
    name = spec
    if spec == "auto":
        name = None
        for i in range(20):  # the slow probing that must not run in the navigation process
            candidate = nd.ndiDeviceName(i)
            if candidate and nd.ndiProbe(candidate) == nd.NDI_OKAY:
                name = candidate
                break
        if name is None:
            raise TrackingError("NDI: no tracker found on any serial port")
    device = nd.ndiOpen(name)
    if not device:
        raise TrackingError(f"NDI: cannot open serial port {name}")
    _command(nd, device, f"COMM:{nd.NDI_115200:d}{nd.NDI_8N1:03d}{nd.NDI_NOHANDSHAKE:d}")
    return device, False


def _setup_tools(nd: Any, device: Any, tools: list[NDIToolSpec]) -> dict[int, str]:
    """Load ROMs, initialise and enable every port handle; returns handle -> tool name."""
    handles: dict[int, str] = {}
    for t in tools:
        if t.rom_file is None:
            continue
        _command(nd, device, "PHRQ:*********1****")
        ph = nd.ndiGetPHRQHandle(device)
        nd.ndiPVWRFromFile(device, ph, t.rom_file)
        _check(nd, device, f"loading ROM {t.rom_file}")
        handles[ph] = t.name
    # wired tools without ROM (Aurora sensors): free handles needing initialisation, in order
    _command(nd, device, "PHSR:01")
    wired = [t.name for t in tools if t.rom_file is None]
    for i in range(nd.ndiGetPHSRNumberOfHandles(device)):
        ph = nd.ndiGetPHSRHandle(device, i)
        if ph not in handles and wired:
            handles[ph] = wired.pop(0)
    _command(nd, device, "PHSR:02")
    for i in range(nd.ndiGetPHSRNumberOfHandles(device)):
        _command(nd, device, f"PINIT:{nd.ndiGetPHSRHandle(device, i):02X}")
    _command(nd, device, "PHSR:03")
    for i in range(nd.ndiGetPHSRNumberOfHandles(device)):
        _command(nd, device, f"PENA:{nd.ndiGetPHSRHandle(device, i):02X}D")  # D: dynamic tool
    if wired:
        raise TrackingError(f"NDI: no port handle for wired tools {wired}")
    return handles


def ndi_worker(conn: Any, stop: Any, binding_module: str, spec: str, tools: list[NDIToolSpec], frame_rate_hz: float) -> None:
    """Worker process body: open, set up, stream ``("frame", [(tool, pose|None, rms, t)...])``.

    Sends ``("ready", {...})`` once tracking, ``("error", text)`` on failure, then exits.
    """
    device = None
    nd = None
    network = False
    try:
        nd = importlib.import_module(binding_module)
        device, network = _open(nd, spec)
        _command(nd, device, "INIT:")
        handles = _setup_tools(nd, device, tools)
        _command(nd, device, "TSTART:")
        conn.send(("ready", {"handles": {f"{k:02X}": v for k, v in handles.items()}}))
        while not stop.is_set():
            _command(nd, device, "BX:0801")  # blocks until the tracker's next frame
            out = []
            for ph, name in handles.items():
                tr = nd.ndiGetBXTransform(device, ph)
                frame_no = nd.ndiGetBXFrame(device, ph)
                t = frame_no / frame_rate_hz
                if isinstance(tr, str) or tr is None:  # "MISSING" / "DISABLED"
                    out.append((name, None, math.nan, t))
                    continue
                if int(nd.ndiGetBXPortStatus(device, ph)) & getattr(nd, "NDI_OUT_OF_VOLUME", NDI_OUT_OF_VOLUME):
                    out.append((name, None, math.nan, t))  # outside the accurate volume: not a usable pose
                    continue
                q0, qx, qy, qz, tx, ty, tz, rms = (float(v) for v in tr[:8])
                if not all(math.isfinite(v) for v in (q0, qx, qy, qz, tx, ty, tz)):
                    out.append((name, None, math.nan, t))
                    continue
                m = np.eye(4)
                m[:3, :3] = matrix_from_quaternion((qx, qy, qz, q0))
                m[:3, 3] = (tx, ty, tz)
                out.append((name, m, rms, t))
            conn.send(("frame", out))
            if getattr(nd, "FAKE_PACING_S", 0.0):  # fake bindings do not block like a tracker
                stop.wait(nd.FAKE_PACING_S)
    except Exception as e:  # everything is reported to the parent, which raises / records it
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except (OSError, ValueError):
            pass
    finally:
        if nd is not None and device is not None:
            try:
                nd.ndiCommand(device, "TSTOP:")
                (nd.ndiCloseNetwork if network else nd.ndiClose)(device)
            except Exception as e:  # reported, but the worker is ending anyway
                try:
                    conn.send(("error", f"closing the device failed: {type(e).__name__}: {e}"))
                except (OSError, ValueError):
                    pass  # the parent has gone: nobody left to tell
        conn.close()


class NDISource(StoreBackedSource):
    """NDI tracker as a :class:`TrackerSource` (worker process; see module docstring).

    Parameters
    ----------
    spec
        Serial port (``/dev/ttyUSB0``, ``COM3``), ``"auto"`` to probe, or ``HOST[:PORT]``
        (Vega, default port 8765).
    toolset
        Tools; those with ``rom_file`` are passive/active ROM tools, the others are wired
        sensors matched in port-handle order.
    binding_module
        Module providing the ndicapi API (the test seam).
    start_timeout_s
        How long :meth:`start` waits for the device to be tracking.
    """

    def __init__(
        self,
        spec: str,
        toolset: ToolSet,
        *,
        binding_module: str = "ndicapi",
        frame_rate_hz: float = 60.0,
        start_timeout_s: float = 30.0,
    ) -> None:
        tools = []
        for t in toolset.tools:
            if t.rom_file is not None and not Path(t.rom_file).is_file():
                raise InputError(Path(t.rom_file), f"ROM file of tool '{t.name}' not found")
            tools.append(NDIToolSpec(t.name, t.rom_file))
        if not tools:
            raise InputError(None, "NDI source needs at least one tool")
        super().__init__(PoseStore(toolset.timeouts_s()))
        self.spec = spec
        self.tools = tools
        self.binding_module = binding_module
        self.frame_rate_hz = frame_rate_hz
        self.start_timeout_s = start_timeout_s
        self.info: dict[str, Any] = {}
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._stop_evt: Any = None

    _thread_name = "ndi-receiver"

    def _open(self) -> None:
        """Start the worker process and wait until it tracks (the receiver thread starts after)."""
        if self.binding_module == "ndicapi" and importlib.util.find_spec("ndicapi") is None:
            raise TrackingError("NDI support needs the 'ndicapi' package: pip install 'orthonav[ndi]'")
        parent, child = self._ctx.Pipe(duplex=False)
        self._stop_evt = self._ctx.Event()
        self._proc = self._ctx.Process(
            target=ndi_worker,
            args=(child, self._stop_evt, self.binding_module, self.spec, self.tools, self.frame_rate_hz),
            name="orthonav-ndi",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.start_timeout_s):
            self.stop()
            raise TrackingError(f"NDI tracker at '{self.spec}' did not start within {self.start_timeout_s:.0f} s")
        try:
            kind, payload = parent.recv()
        except EOFError as e:
            self.stop()
            raise TrackingError(f"NDI worker for '{self.spec}' exited during start-up") from e
        if kind == "error":
            self.stop()
            raise TrackingError(f"NDI tracker at '{self.spec}': {payload}")
        self.info = payload

    def _run(self) -> None:
        """Receiver thread: frames from the worker's pipe into the store until the worker ends."""
        while True:
            try:
                kind, payload = self._conn.recv()  # blocking: no polling
            except (EOFError, OSError):
                break
            now = time.monotonic()
            if kind == "frame":
                with self.store.batch():  # one tracker frame: consumers wake once, with every tool of it
                    for name, pose, rms, t in payload:
                        self.store.put(name, pose, device_time_s=t, quality=rms, host_time_s=now)
            elif kind == "error":
                self.store.mark_error(f"NDI: {payload}")
                break
        self.store.set_connected(False)
        for t in self.tools:  # the worker is gone: nothing is visible any more
            self.store.put(t.name, None, device_time_s=math.nan)

    def _interrupt(self) -> None:
        """Stop the worker process; its end closes the pipe, which ends the receiver thread."""
        if self._stop_evt is not None:
            self._stop_evt.set()
        if self._proc is not None:
            self._proc.join(timeout=5.0)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=2.0)
            self._proc = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
