"""Serve one VTK render window to web browsers with trame, from a thread of its own.

The browser gets images (trame-vtk's remote view: the server renders with VTK, encodes JPEG
and pushes it over a websocket), so a page works on any tablet or theatre display and in
headless Chromium without WebGL; the scene's geometry never leaves the server. Everything VTK
and trame is made and used in the server's thread, which runs its own asyncio event loop:
the caller's threads (the tracking thread above all) only hand it data through a one-slot
handoff (see :mod:`orthonav.navigation.web`), never wait on it, and never touch its scene.

Each tick (``fps`` per second) the scene's ``tick(now)`` says whether the picture changed; a
changed picture is pushed to every browser unless the previous pushes are still being sent
(a slow browser): then nothing is drawn, and the newest state is drawn and sent as soon as the
network is free (pictures are dropped, never queued). wslink sends each picture to the
browsers in turn, so a browser that stops reading altogether stalls the pictures of the others
too (never tracking, which runs elsewhere); reloading or closing it frees them. Rotating the view with the mouse renders on the
server too (each browser sees the same camera).

The server binds 127.0.0.1 unless a host is given; it reads no command-line options (trame's
own parser would otherwise read ``sys.argv``, which belongs to ``orthonav``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orthonav.core.errors import InputError, OrthoNavError

#: CSS colours of the pages' status line.
CSS = {"red": "#f2261a", "amber": "#ffb300", "green": "#26cc33", "grey": "#999999", "white": "#eeeeee"}

#: Most image pushes allowed in flight before a new frame is dropped (a slow browser).
MAX_PENDING_SENDS = 2

#: Pushes of an unchanged picture after the last change (see :meth:`SceneServer._pump`).
SETTLE_PUSHES = 2

_ids = itertools.count(1)


def _quiet_disconnects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: a browser that closed while a picture was being sent
    to it is normal (its sending task fails with a connection reset); anything else is reported
    by asyncio's default handler."""
    if isinstance(context.get("exception"), ConnectionError):
        return
    loop.default_exception_handler(context)


class ServedScene(Protocol):
    """What :class:`SceneServer` serves (built in the server's thread)."""

    render_window: Any  #: the vtkRenderWindow whose pictures are sent

    def tick(self, now_s: float) -> bool:
        """Bring the scene up to date at host time ``now_s`` (``time.monotonic()``); True when
        the picture changed."""

    def headline(self) -> tuple[str, str]:
        """(text, CSS colour) of the page's status line."""


@dataclass
class WebStats:
    """Figures of a running or finished server.

    Attributes
    ----------
    ticks
        Scene updates run.
    frames_pushed
        Pictures pushed to the browsers.
    frames_dropped
        Times a due picture waited (5 ms each) because earlier ones were still being sent (a
        slow browser); the picture then drawn shows the newest state.
    push_times_s
        Host times (monotonic s) of the last pushes (for the update rate).
    """

    ticks: int = 0
    frames_pushed: int = 0
    frames_dropped: int = 0
    push_times_s: list[float] = field(default_factory=list)

    def rate_hz(self, now_s: float | None = None, window_s: float = 2.0) -> float:
        """Pictures pushed per second over the ``window_s`` seconds before ``now_s`` (default:
        the last push); 0 when fewer than two were pushed then (a still scene)."""
        t = self.push_times_s
        end = t[-1] if now_s is None and t else (now_s if now_s is not None else 0.0)
        recent = [x for x in t if end - window_s <= x <= end]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0]) if recent[-1] > recent[0] else 0.0


class SceneServer:
    """A trame server, in its own thread, showing one scene's render window in a web page.

    Parameters
    ----------
    build
        Called once in the server's thread; returns the :class:`ServedScene` (all VTK objects
        are made there).
    title
        Page title and heading.
    host, port
        Where to listen (127.0.0.1 by default; port 0 = any free port, see :attr:`port`).
    fps
        Scene ticks per second (pictures pushed at most this often).
    controls
        Optional ``controls(server, layout_html)`` adding page elements (called in the server
        thread while the page is built, with ``trame.widgets.html``).
    """

    def __init__(self, build: Callable[[], ServedScene], *, title: str = "OrthoNav", host: str = "127.0.0.1", port: int = 0,
                 fps: float = 25.0, controls: Callable[[Any, Any], None] | None = None) -> None:
        if not (fps > 0):
            raise InputError(None, f"the web view's fps must be positive, got {fps}")
        if not (0 <= int(port) <= 65535):
            raise InputError(None, f"the web view's port must be 0..65535, got {port}")
        self._build = build
        self.title = title
        self.host = host
        self._port_requested = int(port)
        self.fps = float(fps)
        self._controls = controls
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._force_push = False
        self.scene: ServedScene | None = None
        self.stats = WebStats()
        self.error: BaseException | None = None

    # --- the caller's side ---------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> SceneServer:
        """Start the server thread and return once it listens.

        Raises
        ------
        InputError
            The server could not listen (e.g. the port is taken), or did not within ``timeout_s``;
            an error of ``build`` (an :class:`~orthonav.core.errors.OrthoNavError`) as it is.
        """
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="web-view", daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout_s):
            self.stop()
            raise InputError(None, f"the web view did not start listening on {self.host}:{self._port_requested} within {timeout_s:g} s")
        if self.error is not None:
            err = self.error
            self.stop()
            if isinstance(err, OrthoNavError):  # the scene could not be built (e.g. a case without a plan)
                raise err
            raise InputError(None, f"the web view cannot listen on {self.host}:{self._port_requested}: {err}") from err
        return self

    @property
    def port(self) -> int:
        """The port listened on (known once :meth:`start` returned)."""
        if self._port is None:
            raise RuntimeError("the web view is not listening yet")
        return self._port

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (its thread ends) or ``timeout_s`` passes; True if it stopped."""
        t = self._thread
        if t is None:
            return True
        t.join(timeout_s)
        return not t.is_alive()

    def push_soon(self) -> None:
        """Push a picture at the next tick even if the scene says nothing changed."""
        self._force_push = True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (closes every browser's connection) and join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> SceneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the server thread -----------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_quiet_disconnects)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported by start() (before listening) or kept in .error
            self.error = e
        finally:
            self._listening.set()
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

    async def _serve(self) -> None:
        from trame.app import get_server

        scene = self._build()
        self.scene = scene
        server = get_server(f"orthonav-web-{next(_ids)}", client_type="vue3")
        # trame's parser would read sys.argv (orthonav's arguments): give it none.
        server.cli.parse_known_args = functools.partial(type(server.cli).parse_known_args, server.cli, [])
        view = self._page(server, scene)
        task = server.start(exec_mode="task", thread=True, port=self._port_requested, host=self.host, open_browser=False,
                            show_connection_info=False, disable_logging=True, timeout=0)
        ready = server.ready
        done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done and not ready.done():
            task.result()  # raises what stopped the server (e.g. address in use)
            raise OSError("the server stopped before listening")
        ready.result()
        self._port = int(server.port)
        self._listening.set()
        try:
            await self._pump(server, scene, view)
        finally:
            await server.stop()

    def _page(self, server: Any, scene: ServedScene) -> Any:
        from trame.ui.html import DivLayout
        from trame.widgets import html
        from trame.widgets import vtk as vtk_widgets

        text, colour = scene.headline()
        server.state.update({"headline": text, "headline_colour": colour, "update_rate": ""})
        server.state.trame__title = self.title
        with DivLayout(server) as layout:
            layout.root.style = ("position:fixed;inset:0;margin:0;background:#14161e;color:#eee;"
                                 "font-family:Arial,Helvetica,sans-serif;overflow:hidden")
            with html.Div(style="position:absolute;left:0;right:0;top:0;height:40px;display:flex;align-items:center;"
                                "gap:18px;padding:0 12px;background:#0b0c10;font-size:16px"):
                html.Span(self.title, style="font-weight:bold")
                html.Span("{{ headline }}", id="headline", style=("{ color: headline_colour, fontWeight: 'bold' }",))
                if self._controls is not None:
                    self._controls(server, html)
                html.Span("{{ update_rate }}", id="update-rate", style="margin-left:auto;color:#999;font-size:13px")
            with html.Div(style="position:absolute;left:0;right:0;top:40px;bottom:0"):
                view = vtk_widgets.VtkRemoteView(scene.render_window, ref="view", interactive_ratio=1, interactive_quality=70,
                                                 still_quality=85, style="width:100%;height:100%")
        return view

    async def _pump(self, server: Any, scene: ServedScene, view: Any) -> None:
        period = 1.0 / self.fps
        next_t = time.monotonic()
        changed = True
        settle = 0
        last_headline = scene.headline()
        last_rate_text = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            monitor = getattr(server.context, "network_monitor", None)
            if monitor is not None and monitor.pending >= MAX_PENDING_SENDS:
                # A browser is behind: no scene update and no picture now; look again in a few
                # ms and then draw the newest state. Pictures are dropped, never queued.
                self.stats.frames_dropped += 1
                await asyncio.sleep(0.005)
                continue
            changed = scene.tick(now) or changed or self._force_push
            self._force_push = False
            self.stats.ticks += 1
            if changed or settle > 0:
                # The JPEG of a picture is encoded in the background: a push may still send the
                # previous one (trame-vtk then sends the new one ~0.5 s later). After the last
                # change, pushing again on the next ticks sends the newest picture within a tick
                # or two (a NOT TRACKING banner must not wait half a second).
                settle = SETTLE_PUSHES if changed else settle - 1
                view.update()
                changed = False
                self.stats.frames_pushed += 1
                self.stats.push_times_s.append(now)
                del self.stats.push_times_s[:-200]
            head = scene.headline()
            rate_due = now - last_rate_text >= 1.0
            if head != last_headline or rate_due:
                with server.state:
                    if head != last_headline:
                        server.state.headline, server.state.headline_colour = head
                        last_headline = head
                    if rate_due:
                        rate = self.stats.rate_hz(now)
                        server.state.update_rate = f"{rate:.0f} pictures/s" if rate >= 2 else ""
                        last_rate_text = now
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:  # behind (a slow render): start again from now, never catch up in a burst
                next_t = time.monotonic()
                delay = 0.0
            await asyncio.sleep(delay)


__all__ = ["CSS", "MAX_PENDING_SENDS", "SETTLE_PUSHES", "SceneServer", "ServedScene", "WebStats"]
