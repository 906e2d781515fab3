"""The web view process: serves the live navigation scene, fed over a local connection.

:class:`orthonav.navigation.web.NavigationWebView` starts this module as a process of its own
(``python -m orthonav.navigation.web_process``), so that rendering, picture encoding and the
websocket traffic never take the navigation process's interpreter lock from its tracking
thread. The process reads one pickled tuple ``(address, authkey, case_dir, toolset, options)``
from its standard input, connects twice to ``address`` (a
:class:`multiprocessing.connection.Listener` of the navigation process, authenticated with
``authkey``): the first connection brings navigation messages, the second takes its reports
back. It reads the case itself (:func:`~orthonav.navigation.load_navigation_inputs`) and draws
it with the desktop overlay's :class:`~orthonav.navigation.overlay.NavigationScene`.
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .state import expire_state
from .web_server import CSS, SceneServer


@dataclass(frozen=True)
class WebViewOptions:
    """Settings of the web view process (picklable: they cross to it)."""

    host: str = "127.0.0.1"
    port: int = 0
    fps: float = 25.0
    max_state_age_s: float = 0.5
    window_size: tuple[int, int] = (1000, 700)
    tre_map: bool = True
    reslices: bool = True
    implants: bool = False
    max_faces_per_bone: int = 8000
    title: str = "OrthoNav navigation"
    nice: int = 5


class _NavigationServed:
    """The navigation scene as :class:`~orthonav.navigation.web_server.SceneServer` serves it
    (in the web view process; built and used in its server thread only). ``latest`` returns
    the newest message from the navigation process (a dict, or None before the first)."""

    def __init__(self, inputs: Any, options: WebViewOptions, latest: Callable[[], dict | None], shown: Callable[[int], None]) -> None:
        from .overlay import NavigationScene

        self._latest = latest
        self._shown = shown
        self._options = options
        ctx = inputs.context
        self.scene = NavigationScene(ctx.toolset, inputs.bones, cuts=ctx.cuts, trajectories=ctx.trajectories,
                                     implants=inputs.implants if options.implants else None,
                                     ct=inputs.ct if options.reslices else None, off_screen=True, window_size=options.window_size,
                                     tre_map=options.tre_map, title=options.title, max_faces_per_bone=options.max_faces_per_bone,
                                     reslice_min_interval_s=0.1, cut_bones=ctx.cut_bones)
        self.render_window = self.scene.plotter.render_window
        self.scene.update(None)
        self.scene.render()
        self._key: tuple | None = None
        self.tre_map_shown = options.tre_map  #: the page's switch
        self._tre_enabled = options.tre_map

    def tick(self, now_s: float) -> bool:
        msg = self._latest() or {}
        newest = msg.get("state")
        state = expire_state(newest, now_s, self._options.max_state_age_s)
        info = msg.get("info", "")
        problem = msg.get("problem")
        record = msg.get("record")
        tre_enabled = self.tre_map_shown
        # A stale state says its age: redrawn once a second, not at every tick.
        stale_s = int(now_s - newest.host_time_s) if state is not newest and newest is not None else -1
        key = (None if state is None else (state.sequence, state.tracking), stale_s, info, problem, id(record), tre_enabled)
        if key == self._key:
            return False
        self._key = key
        if tre_enabled != self._tre_enabled:
            self._tre_enabled = tre_enabled
            self.scene.tre_map_enabled = tre_enabled
            self.scene.show_tre_map(record if tre_enabled else None)
        self.scene.update(state, info=info, tracker_problem=problem, registration=record)
        self._shown(-1 if state is None else state.sequence)
        return True

    def headline(self) -> tuple[str, str]:
        text = self.scene.banner.GetInput() or ""
        if text == "NOT REGISTERED":
            return text, CSS["amber"]
        if text:
            return text, CSS["red"]
        bone = (self.scene.bone_banner.GetInput() or "") if self.scene.bone_banner is not None else ""
        if bone:  # one array per bone: a bone does not navigate while the other does
            return bone.replace("\n", ", "), CSS["red"] if "NOT TRACKING" in bone else CSS["amber"]
        return "tracking", CSS["green"]


def serve_navigation_view(case_dir: str, toolset: Any, options: WebViewOptions, inbox: Any, outbox: Any) -> None:
    """Serve ``case_dir``'s navigation scene until told to stop (the web view process's work).

    Runs :class:`~orthonav.navigation.web_server.SceneServer` (its own thread and event loop)
    and, in the calling thread, receives the navigation messages from ``inbox`` (a
    :mod:`multiprocessing.connection` connection), keeping only the newest; reports
    ``("listening", port)`` or ``("error", text)`` once, then ``("stats", dict)`` about every
    half second, on ``outbox``. Ends on a ``"stop"`` message or when the navigation process
    goes away (end of file on ``inbox``).

    Messages are dicts: ``state`` (a :class:`~orthonav.navigation.state.NavigationState` or None), ``info`` (status
    line), ``problem`` (tracker problem text or None) and, when it changed, ``record`` (the
    :class:`~orthonav.navigation.registration.RegistrationRecord` in force, or None).
    """
    import os

    if options.nice and hasattr(os, "nice"):
        try:
            os.nice(options.nice)  # the display yields the CPU to the tracking process
        except OSError:
            pass
    latest: list[dict | None] = [None]
    shown = [-1]
    served: list[_NavigationServed] = []
    server: SceneServer | None = None
    try:
        from .inputs import load_navigation_inputs

        inputs = load_navigation_inputs(case_dir, toolset, surfaces=False, ct=options.reslices)

        def build() -> _NavigationServed:
            served.append(_NavigationServed(inputs, options, lambda: latest[0], lambda seq: shown.__setitem__(0, seq)))
            return served[0]

        def controls(srv: Any, html: Any) -> None:
            srv.state.tre_map = options.tre_map

            @srv.state.change("tre_map")
            def _on_tre_map(tre_map: bool, **_: Any) -> None:
                if served:
                    served[0].tre_map_shown = bool(tre_map)

            with html.Label(style="font-size:14px;display:flex;align-items:center;gap:4px"):
                html.Input(type="checkbox", v_model=("tre_map", options.tre_map))
                html.Span("predicted TRE map")

        server = SceneServer(build, title=options.title, host=options.host, port=options.port, fps=options.fps, controls=controls)
        server.start()
    except BaseException as e:  # told to the navigation process, which raises it
        outbox.send(("error", f"{type(e).__name__}: {e}"))
        return
    outbox.send(("listening", server.port))
    record = None
    next_stats = time.monotonic()
    try:
        while server.running:
            if inbox.poll(0.1):
                try:
                    msg = inbox.recv()
                except EOFError:  # the navigation process is gone
                    break
                if msg == "stop":
                    break
                if "record" in msg:
                    record = msg["record"]
                latest[0] = {**msg, "record": record}
            now = time.monotonic()
            if now >= next_stats:
                st = server.stats
                outbox.send(("stats", {"frames_pushed": st.frames_pushed, "frames_dropped": st.frames_dropped, "ticks": st.ticks,
                                       "rate_hz": st.rate_hz(now), "shown_sequence": shown[0]}))
                next_stats = now + 0.5
    except (BrokenPipeError, EOFError, OSError):
        pass
    finally:
        server.stop()


def main() -> int:
    """Entry point of ``python -m orthonav.navigation.web_process`` (see the module docstring)."""
    from multiprocessing.connection import Client

    address, authkey, case_dir, toolset, options = pickle.load(sys.stdin.buffer)
    inbox = Client(address, authkey=authkey)
    outbox = Client(address, authkey=authkey)
    try:
        serve_navigation_view(case_dir, toolset, options, inbox, outbox)
    finally:
        inbox.close()
        outbox.close()
    return 0


__all__ = ["WebViewOptions", "main", "serve_navigation_view"]

if __name__ == "__main__":
    raise SystemExit(main())
