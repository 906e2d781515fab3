"""The OR screen in a web browser (issue 17): the live navigation scene, and a read-only plan.

:class:`NavigationWebView` serves the same scene as the desktop overlay
(:class:`~orthonav.navigation.overlay.NavigationScene`: bones coloured by the predicted TRE
after registration, instruments, planned cuts and trajectories, CT reslices at the tool tip,
the readouts and the NOT TRACKING / NOT REGISTERED / NO TRACKER banners) to any browser that
can reach it (it listens on 127.0.0.1 unless a host is given). It is fed by the same
navigation states as the overlay, through :meth:`NavigationWebView.observe`, an ``on_state``
observer of :func:`~orthonav.navigation.navigate_case` run in the tracking thread: it only
stores the newest state in a one-slot handoff (one reference store), so neither a slow browser
nor a slow render ever slows tracking, and states the page had no time for are dropped, never
queued.

The server runs in a process of its own: rendering, JPEG encoding and the websocket traffic
(trame, wslink, asyncio) are Python work that would otherwise take the interpreter lock from
the tracking thread (measured on the small knee phantom at 200 Hz with a browser attached: a
server thread in the navigation process cut the loop to ~85 Hz with a p99 latency of ~70 ms;
in its own process the loop kept ~185 Hz and a p99 of ~3.5 ms). One sender thread forwards the
newest state to it ``fps`` times a second. There (:func:`~orthonav.navigation.web_process.serve_navigation_view`) a state older
than ``max_state_age_s`` is shown as NOT TRACKING (:func:`~orthonav.navigation.state.expire_state`),
so a tracker or a navigation that stops turns every browser NOT TRACKING.

Rendering is server-side (trame-vtk's remote view: the browser receives JPEG pictures): the
page needs no WebGL (tablets, locked-down theatre PCs, headless Chromium), every browser sees
the overlay's own drawing (the same :class:`~orthonav.navigation.overlay.NavigationScene`, its
bones decimated a little further for speed), and the bone models never leave the navigation PC.

:class:`PlanWebView` serves the planning scene of a case read-only (bones, landmarks, axes,
cuts, implants: :func:`orthonav.planning.scene.scene_items`) with the plan's angles; it runs
in a thread (nothing else runs beside it).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registration import Registration, RegistrationRecord
from .state import NavigationState
from .web_process import WebViewOptions
from .web_server import CSS, SceneServer

@dataclass(frozen=True)
class _Latest:
    """What the tracking side handed over last (replaced whole: one reference store)."""

    state: NavigationState | None
    workflow: Any = None  #: a Workflow: info text and registration are read from it by the sender thread
    info: str = ""
    registration: Registration | RegistrationRecord | None = None


class NavigationWebView:
    """Serve a case's live navigation screen to web browsers (see the module docstring).

    The server runs in a process of its own (started by :meth:`start`), so its
    rendering, picture encoding and websocket traffic never compete with the tracking thread
    for the interpreter lock: in this process the tracking thread only stores the newest state
    (:meth:`observe`), and one sender thread forwards the newest one ``fps`` times a second
    (a state the view had no time for is dropped, never queued).

    Parameters
    ----------
    case_dir
        The case being navigated (``plan.json``, ``meshes/``, ``ct.nii.gz`` for the reslices):
        the view process reads it as :func:`~orthonav.navigation.load_navigation_inputs` does.
    toolset
        The tools (default: the default tool set).
    host, port
        Where to listen: 127.0.0.1 unless told otherwise; port 0 = any free port (:attr:`port`).
    fps
        Pictures per second at most (while the state changes).
    max_state_age_s
        A state older than this (s) is shown as NOT TRACKING (the tracking thread stalled or
        ended, or nothing more comes).
    window_size
        Initial picture size (pixels); each browser's view size replaces it.
    tracker_problem
        Optional callable returning the tracker's problem text (or None), e.g.
        ``lambda: orthonav.navigation.navigate.tracker_problem(source)``: while it returns text
        the banner says NO TRACKER. Called by the sender thread.
    tre_map
        Colour the bones by the predicted TRE after registration (the page has a switch).
    reslices
        Show the CT reslice strip at the tool tip (the case's CT is read by the view process).
    implants
        Also draw the planned implants as translucent ghosts (off by default: translucent
        surfaces over the bones cost ~20 ms per picture in software rendering, a third of the
        picture rate; the planned cuts show the plan).
    max_faces_per_bone
        Display decimation of each bone (triangles).
    nice
        Scheduling niceness added to the view process (Unix; 0 = none), so a busy display
        yields the CPU to tracking.
    """

    def __init__(self, case_dir: str | Path, *, toolset: Any = None, host: str = "127.0.0.1", port: int = 0, fps: float = 25.0,
                 max_state_age_s: float = 0.5, window_size: tuple[int, int] = (1000, 700),
                 tracker_problem: Callable[[], str | None] | None = None, tre_map: bool = True, reslices: bool = True,
                 implants: bool = False, max_faces_per_bone: int = 8000, title: str = "OrthoNav navigation", nice: int = 5) -> None:
        from orthonav.core.errors import InputError

        if not (fps > 0 and math.isfinite(fps)):
            raise InputError(None, f"the web view's fps must be a positive number, got {fps}")
        if not (0 <= int(port) <= 65535):
            raise InputError(None, f"the web view's port must be 0..65535, got {port}")
        self.case_dir = str(Path(case_dir).resolve())
        self.toolset = toolset
        self.options = WebViewOptions(host=host, port=int(port), fps=float(fps), max_state_age_s=float(max_state_age_s),
                                      window_size=(int(window_size[0]), int(window_size[1])), tre_map=bool(tre_map),
                                      reslices=bool(reslices), implants=bool(implants), max_faces_per_bone=int(max_faces_per_bone),
                                      title=title, nice=int(nice))
        self.tracker_problem = tracker_problem
        self._latest = _Latest(None)
        self.states_offered = 0  #: states handed over (observe / publish)
        self.states_sent = 0  #: states forwarded to the view process
        self.send_errors = 0  #: status texts that raised (shown in the browser as a tracker problem instead)
        self.stats: dict[str, float] = {}  #: the view process's figures (frames_pushed, frames_dropped, rate_hz, shown_sequence)
        self._port: int | None = None
        self._proc: Any = None
        self._to_view: Any = None
        self._from_view: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stats_event = threading.Condition()

    # --- the tracking side: never blocks ---------------------------------------------------------

    def observe(self, state: NavigationState, workflow: Any) -> None:
        """``on_state`` observer for :func:`~orthonav.navigation.navigate_case`: keep only the
        newest state (runs in the tracking thread; one reference store, never waits)."""
        self._latest = _Latest(state, workflow)
        self.states_offered += 1

    def publish(self, state: NavigationState | None, *, info: str = "",
                registration: Registration | RegistrationRecord | None = None) -> None:
        """Hand over a state without a workflow (replay, scripted displays): ``info`` is the
        status line and ``registration`` the registration in force (for the TRE map)."""
        self._latest = _Latest(state, None, info, registration)
        self.states_offered += 1

    # --- serving -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> NavigationWebView:
        """Start the view process (:mod:`orthonav.navigation.web_process`); return once it listens.

        Raises
        ------
        InputError
            It could not listen (port taken, bad host) or read the case, or did not start
            within ``timeout_s``.
        """
        import os
        import pickle
        import subprocess
        import sys
        from multiprocessing.connection import Listener

        from orthonav.core.errors import InputError

        if self._proc is not None:
            return self
        where = f"{self.options.host}:{self.options.port}"
        if self.options.port:  # say at once when the port is taken (the view process would say it ~3 s later)
            import socket

            try:
                with socket.create_server((self.options.host, self.options.port)):
                    pass
            except OSError as e:
                raise InputError(None, f"the web view cannot serve on {where}: {e.strerror or e}") from e
        authkey = os.urandom(32)
        listener = Listener(authkey=authkey)  # a local socket (AF_UNIX / named pipe) for this process only
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "orthonav.navigation.web_process"], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL)
            assert self._proc.stdin is not None
            self._proc.stdin.write(pickle.dumps((listener.address, authkey, self.case_dir, self.toolset, self.options)))
            self._proc.stdin.close()
            conns: list[Any] = []
            accepting = threading.Thread(target=lambda: conns.extend((listener.accept(), listener.accept())), daemon=True)
            accepting.start()
            accepting.join(timeout_s)
            if len(conns) < 2:
                self._kill()
                raise InputError(None, f"the web view process did not connect back within {timeout_s:g} s")
            self._to_view, self._from_view = conns
        finally:
            listener.close()
        if not self._from_view.poll(timeout_s):
            self._kill()
            raise InputError(None, f"the web view did not start listening on {where} within {timeout_s:g} s")
        try:
            kind, value = self._from_view.recv()
        except EOFError:
            self._kill()
            raise InputError(None, f"the web view process ended before listening on {where}") from None
        if kind != "listening":
            self._kill()
            raise InputError(None, f"the web view cannot serve on {where}: {value}")
        self._port = int(value)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._send, name="web-view-sender", daemon=True),
                         threading.Thread(target=self._receive, name="web-view-stats", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _send(self) -> None:
        """Forward the newest state ``fps`` times a second (only when something changed)."""
        from .summary import info_text

        period = 1.0 / self.options.fps
        sent: tuple | None = None
        record_sent: object = None
        while not self._stop.wait(period):
            latest = self._latest
            wf = latest.workflow
            try:
                info = info_text(wf) if wf is not None else latest.info
                problem = self.tracker_problem() if self.tracker_problem is not None else None
            except Exception as e:  # noqa: BLE001 - a failing text must not freeze every browser on its last picture
                info, problem = latest.info, f"status text failed: {type(e).__name__}: {e}"
                self.send_errors += 1
            reg = wf.registration if wf is not None else latest.registration
            record = reg.record if isinstance(reg, Registration) else reg
            key = (id(latest.state), info, problem, id(record))
            if key == sent:
                continue
            msg: dict[str, Any] = {"state": latest.state, "info": info, "problem": problem}
            if record is not record_sent:
                msg["record"] = record
            try:
                self._to_view.send(msg)  # blocks only this thread while the view process is busy
            except (BrokenPipeError, EOFError, OSError):
                return
            sent, record_sent = key, record
            self.states_sent += 1

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._from_view.poll(0.2):
                    continue
                kind, value = self._from_view.recv()
            except (EOFError, OSError):
                return
            if kind == "stats":
                with self._stats_event:
                    self.stats = value
                    self._stats_event.notify_all()

    def wait_for_stats(self, predicate: Callable[[dict[str, float]], bool], timeout_s: float) -> dict[str, float] | None:
        """Block until the view process reports figures satisfying ``predicate`` (None on timeout)."""
        with self._stats_event:
            ok = self._stats_event.wait_for(lambda: bool(self.stats) and predicate(self.stats), timeout=timeout_s)
            return self.stats if ok else None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving: the view process closes every browser's connection and ends."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        self._threads = []
        if self._to_view is not None:
            try:
                self._to_view.send("stop")
            except (BrokenPipeError, EOFError, OSError):
                pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout_s)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: killed below
                pass
        self._kill()

    def _kill(self) -> None:
        """End the view process (if it still runs) and close the connections to it."""
        import subprocess

        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5.0)
        for c in (self._to_view, self._from_view):
            if c is not None:
                c.close()
        self._proc = self._to_view = self._from_view = None

    def __enter__(self) -> NavigationWebView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self.options.host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the web view is not listening yet")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


class _PlanServed:
    """The read-only planning scene (server thread only)."""

    def __init__(self, case_dir: Path, window_size: tuple[int, int]) -> None:
        import pyvista as pv

        from orthonav.core.case import Case
        from orthonav.planning.auto import load_case_meshes
        from orthonav.planning.implants import implant_meshes_for
        from orthonav.planning.scene import angle_text, legend_entries, scene_items, setup_rendering, view_camera
        from orthonav.planning.schema import load_plan, require

        case = Case(case_dir)
        plan = load_plan(case.require(case.plan, "orthonav plan CASE --auto"))
        require(plan, case.plan, stage="the plan's web view", landmarks=True, bones=True)
        meshes = load_case_meshes(case.root, plan.procedure)
        implants = implant_meshes_for(plan, case.root) if plan.implants else None
        items = scene_items(plan, meshes, implant_meshes=implants)
        self.legend = legend_entries(items)
        setup_rendering()
        pl = pv.Plotter(off_screen=True, window_size=list(window_size))
        pl.set_background("white")
        for it in items:
            pl.add_mesh(it.mesh, color=it.colour, opacity=it.opacity, smooth_shading=it.kind in ("bone", "implant"))
        pos, focal, vup = view_camera(plan, "anterior", whole_limb=True)
        pl.camera_position = [tuple(pos), tuple(focal), tuple(vup)]
        pl.reset_camera()
        text = angle_text(plan)
        if text:
            pl.add_text(text, position="lower_left", font_size=11, color="black")
        pl.render()
        self.plotter = pl
        self.render_window = pl.render_window
        self._title = f"plan of {case.root.name} ({plan.procedure.upper()}), read-only"

    def tick(self, now_s: float) -> bool:
        return False  # a still scene: pictures go out when a browser connects or turns the view

    def headline(self) -> tuple[str, str]:
        return self._title, CSS["white"]


class PlanWebView:
    """Serve a case's plan read-only to web browsers: the planning scene
    (:func:`orthonav.planning.scene.scene_items`) seen from anterior, turnable with the mouse,
    with the plan's angles and a legend of its colours.

    Parameters
    ----------
    case_dir
        A case with ``plan.json`` and its bone meshes.
    host, port
        Where to listen (127.0.0.1 unless told otherwise; 0 = any free port).
    """

    def __init__(self, case_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0, window_size: tuple[int, int] = (1000, 700)) -> None:
        self.case_dir = Path(case_dir)
        holder: dict[str, _PlanServed] = {}

        def build() -> _PlanServed:
            holder["scene"] = _PlanServed(self.case_dir, window_size)
            return holder["scene"]

        self._holder = holder
        self.server = SceneServer(build, title="OrthoNav plan", host=host, port=port, fps=10.0, controls=self._legend)

    def _legend(self, server: Any, html: Any) -> None:
        """The legend: what each colour means, in a box at the top right of the view."""
        scene = self._holder.get("scene")
        with html.Div(id="legend", style="position:fixed;top:48px;right:8px;z-index:2;background:rgba(255,255,255,0.9);color:#111;"
                                         "padding:6px 10px;border-radius:4px;font-size:13px;line-height:20px"):
            for label, colour in (scene.legend if scene is not None else []):
                with html.Div(style="display:flex;align-items:center;gap:6px"):
                    html.Span(style=f"display:inline-block;width:12px;height:12px;background:{colour}")
                    html.Span(label)

    def start(self, timeout_s: float = 60.0) -> PlanWebView:
        """Start serving; returns once the server listens (InputError if it cannot, or if the
        case has no usable plan)."""
        self.server.start(timeout_s)
        return self

    def stop(self) -> None:
        self.server.stop()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops or ``timeout_s`` passes; True if it stopped."""
        return self.server.wait(timeout_s)

    def __enter__(self) -> PlanWebView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port


__all__ = ["NavigationWebView", "PlanWebView"]
