"""NDI Polaris / Vega / Aurora trackers through the ``ndicapy`` binding, in a separate process.

The binding is PyPI's ``ndicapi`` package (optional dependency, ``pip install orthonav[ndi]``),
whose module is ``ndicapy``. It holds the GIL for seconds while it probes serial ports or
loads ROMs and blocks in every ``BX`` call, so it never runs in the navigation process:
:class:`NDISource` starts a worker *process* (``multiprocessing``, spawn) that opens the
device, loads the tools' ROM files, starts tracking and streams frames back over a pipe; a
thread in this process writes them into a :class:`~orthonav.tracking.store.PoseStore`. When
the worker loses the device (cable pulled, network dropped, an ``ERROR`` reply), the source
reports it (``health().last_error``, ``connected`` False, every tool not visible) and starts a
new worker after ``reconnect_delay_s``, counting ``health().reconnects``.

The binding is imported by module name inside the worker (``binding_module``, default
``"ndicapy"``). Its calls as used here (ndicapi 3.7, ``ndicapimodule.cxx``): ``ndiCommand(dev,
text)``; ``ndiGetPHRQHandle(dev)`` / ``ndiGetPHSRHandle(dev, i)`` return the port handle as an
int; ``ndiPVWRFromFile(dev, handle_int, path)`` returns 0 or -1; ``ndiGetBXTransform``,
``ndiGetBXFrame`` and ``ndiGetBXPortStatus`` take the handle as a one-byte ``bytes``
(``bytes([handle])``); ``ndiGetBXTransform`` returns ``(q0, qx, qy, qz, tx, ty, tz, rms)`` or
the string ``"MISSING"`` / ``"DISABLED"``. ``ndiCommand(dev, "BX:...")`` returns the binary
reply decoded as text and raises ``UnicodeDecodeError`` for most replies of four tools or
more, after the reply has been parsed: the worker ignores that error and checks
``ndiGetError``. On an ``ERRORxx`` reply or a lost link ``ndiCommand`` raises ``OSError``.

Port handles (NDI Combined API): a passive tool gets a handle from ``PHRQ`` and its ROM from
``PVWR`` (64 bytes a call); a wired tool (Aurora sensor, active tool) owns a handle from
power-up. After the ROMs are loaded, ``PHSR:01`` lists handles to free (``PHF``), ``PHSR:02``
the handles to initialise (``PINIT``): those not assigned a ROM are the wired tools, matched
in handle order to the tools without ``rom_file``; ``PHSR:03`` lists the handles to enable
(``PENA``, dynamic).

Frames: poses are the tracker's own frame as NDI reports it (mm; quaternion q0 qx qy qz +
translation, float32 on the wire), no RAS/LPS meaning and no conversion. ``device_time_s`` is
the tracker frame number divided by the tracker frame rate (60 Hz by default); ``quality`` is
NDI's RMS marker-fit error (mm). A "MISSING" / "DISABLED" handle, or a port whose BX status has
the out-of-volume bit set (``NDI_OUT_OF_VOLUME``, 0x40 in ndicapi.h: ``BX:0801`` also returns
poses of tools outside the calibrated measurement volume, whose accuracy is not specified), is
reported as not visible.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import multiprocessing as mp
import threading
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
#: Module name of PyPI's ``ndicapi`` binding.
BINDING_MODULE = "ndicapy"


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
        raise TrackingError(f"NDI {what} failed: {nd.ndiErrorString(err)} (error 0x{err:02X})")


def _command(nd: Any, device: Any, cmd: str) -> str:
    """Send one command; an ``ERRORxx`` reply or a lost link raises TrackingError naming it.

    ndicapy raises ``OSError("POLARIS 0x12: Unable to start tracking")`` itself when the
    error code is set after the call; other bindings only set the code (checked here).
    """
    try:
        reply = nd.ndiCommand(device, cmd)
    except UnicodeDecodeError:
        # ndicapy returns the binary BX reply as a Python str: decoding fails whenever the reply's
        # length byte is >= 0x80 (four tools or more). The C layer has parsed the reply before
        # that (the ndiGetBX* getters read it), so only its error code matters.
        if not cmd.startswith("BX"):
            raise
        reply = ""
    except OSError as e:
        raise TrackingError(f"NDI command '{cmd}' failed: {e}") from e
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


def _phsr(nd: Any, device: Any, option: int) -> list[int]:
    """Port handles listed by ``PHSR:<option>`` (ints, in the tracker's order)."""
    _command(nd, device, f"PHSR:{option:02d}")
    return [int(nd.ndiGetPHSRHandle(device, i)) for i in range(nd.ndiGetPHSRNumberOfHandles(device))]


def _setup_tools(nd: Any, device: Any, tools: list[NDIToolSpec]) -> dict[int, str]:
    """Load ROMs, find wired tools, initialise and enable the handles; returns handle -> tool name."""
    handles: dict[int, str] = {}
    for t in tools:
        if t.rom_file is None:
            continue
        _command(nd, device, "PHRQ:*********1****")  # any device, passive (wireless) tool
        ph = int(nd.ndiGetPHRQHandle(device))
        if nd.ndiPVWRFromFile(device, ph, str(t.rom_file)) != 0:
            err = nd.ndiGetError(device)
            why = nd.ndiErrorString(err) if err != nd.NDI_OKAY else "file cannot be read"
            raise TrackingError(f"NDI: loading ROM {t.rom_file} of '{t.name}' into port handle {ph:02X} failed: {why}")
        handles[ph] = t.name
    for ph in _phsr(nd, device, 1):  # handles the tracker wants freed
        _command(nd, device, f"PHF:{ph:02X}")
    wired = [t.name for t in tools if t.rom_file is None]
    wired_handles = [ph for ph in _phsr(nd, device, 2) if ph not in handles]
    if len(wired_handles) < len(wired):
        raise TrackingError(f"NDI: no port handle for wired tools {wired[len(wired_handles):]} "
                            f"(wired handles found: {[f'{h:02X}' for h in wired_handles]})")
    handles.update(zip(wired_handles, wired))
    for ph in sorted(handles):
        _command(nd, device, f"PINIT:{ph:02X}")
    for ph in _phsr(nd, device, 3):
        if ph in handles:
            _command(nd, device, f"PENA:{ph:02X}D")  # D: dynamic tool
    return handles


def _read_frame(nd: Any, device: Any, handles: dict[int, str], frame_rate_hz: float) -> list[tuple[str, Any, float, float]]:
    """One ``BX:0801`` (blocks until the tracker's next frame) -> ``[(tool, pose|None, rms, t)]``."""
    _command(nd, device, "BX:0801")
    out: list[tuple[str, Any, float, float]] = []
    for ph, name in handles.items():
        key = bytes([ph])  # the binding's BX getters take the handle as one byte
        tr = nd.ndiGetBXTransform(device, key)
        t = float(nd.ndiGetBXFrame(device, key)) / frame_rate_hz
        if isinstance(tr, str) or tr is None:  # "MISSING" / "DISABLED"
            out.append((name, None, math.nan, t))
            continue
        if int(nd.ndiGetBXPortStatus(device, key)) & getattr(nd, "NDI_OUT_OF_VOLUME", NDI_OUT_OF_VOLUME):
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
    return out


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
        try:
            _command(nd, device, "INIT:")
        except TrackingError as e:
            if not network:
                raise
            # ndiOpenNetwork returns a device even when the TCP connect failed (ndicapi 3.7
            # compares its bool result with -1): the first command is where that shows.
            raise TrackingError(f"NDI: cannot connect to {spec} ({e})") from e
        handles = _setup_tools(nd, device, tools)
        _command(nd, device, "TSTART:")
        conn.send(("ready", {"handles": {f"{k:02X}": v for k, v in sorted(handles.items())}}))
        while not stop.is_set():
            conn.send(("frame", _read_frame(nd, device, handles, frame_rate_hz)))
    except Exception as e:  # everything is reported to the parent, which raises / records it
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except (OSError, ValueError):
            pass
    finally:
        if nd is not None and device is not None:
            try:
                nd.ndiCommand(device, "TSTOP:")  # may fail on a lost link: the device is closed anyway
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
        Module providing the ndicapi API (default ``"ndicapy"``, PyPI package ``ndicapi``).
    frame_rate_hz
        Tracker frame rate, to turn frame numbers into ``device_time_s`` (s).
    start_timeout_s
        How long :meth:`start` (and each reconnection) waits for the device to be tracking (s).
    reconnect_delay_s
        Pause (s) before a new worker is started after the device was lost; ``None``: do not
        reconnect (the source stays disconnected with the error in its health).
    """

    def __init__(
        self,
        spec: str,
        toolset: ToolSet,
        *,
        binding_module: str = BINDING_MODULE,
        frame_rate_hz: float = 60.0,
        start_timeout_s: float = 30.0,
        reconnect_delay_s: float | None = 1.0,
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
        self.reconnect_delay_s = reconnect_delay_s
        self.info: dict[str, Any] = {}
        self._ctx = mp.get_context("spawn")
        self._proc_lock = threading.Lock()  # worker start vs. stop
        self._proc: Any = None
        self._conn: Any = None
        self._stop_evt: Any = None

    _thread_name = "ndi-receiver"

    def _spawn(self) -> None:
        """Start a worker process and wait until it tracks; raises TrackingError (worker ended)."""
        with self._proc_lock:
            if self._stop.is_set():
                raise TrackingError("NDI source is stopping")
            if self._conn is not None:  # the previous worker's pipe
                self._conn.close()
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
            self._end_worker()
            raise TrackingError(f"NDI tracker at '{self.spec}' did not start within {self.start_timeout_s:.0f} s")
        try:
            kind, payload = parent.recv()
        except (EOFError, OSError) as e:
            self._end_worker()
            raise TrackingError(f"NDI worker for '{self.spec}' exited during start-up") from e
        if kind == "error":
            self._end_worker()
            raise TrackingError(f"NDI tracker at '{self.spec}': {payload}")
        self.info = payload

    def _open(self) -> None:
        """Start the worker process and wait until it tracks (the receiver thread starts after)."""
        if importlib.util.find_spec(self.binding_module) is None:
            raise TrackingError(f"NDI support needs the '{self.binding_module}' module "
                                "(PyPI package 'ndicapi'): pip install 'orthonav[ndi]'")
        try:
            self._spawn()
        except TrackingError:
            self.stop()
            raise

    def _pump(self) -> None:
        """Frames from the current worker's pipe into the store until the worker ends."""
        while True:
            try:
                kind, payload = self._conn.recv()  # blocking: no polling
            except (EOFError, OSError):
                if not self._stop.is_set():
                    self.store.mark_error(f"NDI: worker process for '{self.spec}' ended")
                return
            now = time.monotonic()
            if kind == "frame":
                with self.store.batch():  # one tracker frame: consumers wake once, with every tool of it
                    for name, pose, rms, t in payload:
                        self.store.put(name, pose, device_time_s=t, quality=rms, host_time_s=now)
            elif kind == "error":
                self.store.mark_error(f"NDI: {payload}")
                return

    def _run(self) -> None:
        """Receiver thread: pump frames; after a lost device, report it and start a new worker."""
        while True:
            self._pump()
            self.store.set_connected(False)
            for t in self.tools:  # the worker is gone: nothing is visible any more
                self.store.put(t.name, None, device_time_s=math.nan)
            self._end_worker()
            if self.reconnect_delay_s is None:
                return
            while not self._stop.wait(self.reconnect_delay_s):
                try:
                    self._spawn()
                except TrackingError as e:
                    if self._stop.is_set():
                        return
                    self.store.mark_error(str(e))
                    continue
                self.store.count(reconnects=1)
                self.store.set_connected(True)
                break
            else:
                return

    def _end_worker(self) -> None:
        """Stop the current worker process (its end closes the pipe) and drop the pipe."""
        with self._proc_lock:
            proc, self._proc = self._proc, None
            if self._stop_evt is not None:
                self._stop_evt.set()
        if proc is not None:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)

    def _interrupt(self) -> None:
        """Stop the worker process; its end closes the pipe, which ends the receiver thread."""
        self._end_worker()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
