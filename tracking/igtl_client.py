"""OpenIGTLink client source: connect to a tracker / PLUS server and keep the newest poses.

One receiver thread per source blocks in ``recv`` (no polling, idle CPU while nothing
arrives), feeds a :class:`~orthonav.tracking.igtl_protocol.StreamParser` and writes poses
into a :class:`~orthonav.tracking.store.PoseStore` through a
:class:`~orthonav.tracking.igtl_receive.MessageRouter` (which documents how each message type
maps to tool poses, and the limits that protect the receiver). On disconnect every tool is
marked not visible at once and the thread reconnects with a capped exponential backoff (first
retry after 50 ms, never more than 0.5 s apart, so a returning peer is picked up within 1 s);
the wait between attempts is an Event wait, so :meth:`stop` interrupts it. A connection
dropped for a fault (a body over ``max_message``, a peer stalled inside a message) is
reconnected at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from orthonav.core.errors import TrackingError

from . import igtl_protocol as P
from .frame import SourceHealth
from .igtl_receive import MAX_TOOLS, MAX_TRANSLATION_MM, QUEUE_BYTES, READ_TIMEOUT_S, TRACKING_MAX_BODY, MessageRouter, receive_stream
from .store import PoseStore, StoreBackedSource
from .tools import ToolSet

log = logging.getLogger(__name__)


class IGTLClientSource(StoreBackedSource):
    """Tracker source reading an OpenIGTLink server (PLUS, a tracker, Slicer, the simulator).

    Parameters
    ----------
    host, port
        Server address.
    tools
        Tool definitions: per-tool timeouts (tools not listed use the store default).
    reconnect
        Keep reconnecting (backoff 50 ms doubling to ``max_backoff_s``). With False, a refused
        first connection makes :meth:`start` raise :class:`TrackingError`.
    max_backoff_s
        Longest wait between connection attempts (s).
    max_body
        Largest message body decoded and delivered (bytes; 1 MiB by default, ample for poses);
        a receiver of big POLYDATA meshes passes more explicitly. Bigger well-formed messages
        (a PLUS IMAGE) are skipped by their declared size, not buffered.
    max_message
        Largest body skipped (bytes, 64 MiB); a header announcing more drops the connection
        at once (``health().extra["over_limit"]``) and the client reconnects.
    read_timeout_s
        A peer silent this long (s) in the middle of a message is dropped and reconnected
        (``stalled``); None waits forever.
    keepalive_timeout_s
        If set, a peer silent this long (s) between messages is dropped too (``idle_timeouts``).
    max_tools, max_translation_mm, queue_size, queue_bytes
        Limits of the :class:`MessageRouter` (distinct tool names, plausible workspace in mm,
        unread non-pose messages in count and bytes).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tools: ToolSet | None = None,
        reconnect: bool = True,
        max_backoff_s: float = 0.5,
        connect_timeout_s: float = 2.0,
        max_body: int = TRACKING_MAX_BODY,
        queue_size: int = 256,
        max_message: int = P.DEFAULT_MAX_MESSAGE,
        read_timeout_s: float | None = READ_TIMEOUT_S,
        keepalive_timeout_s: float | None = None,
        max_tools: int = MAX_TOOLS,
        max_translation_mm: float = MAX_TRANSLATION_MM,
        queue_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.host, self.port = host, int(port)
        self.tools = tools
        self.reconnect = reconnect
        self.max_backoff_s = max_backoff_s
        self.connect_timeout_s = connect_timeout_s
        self.max_body = max_body
        self.max_message = max_message
        self.read_timeout_s = read_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        super().__init__(PoseStore(tools.timeouts_s() if tools else None))
        self.router = MessageRouter.for_tools(self.store, tools, queue_size=queue_size, queue_bytes=queue_bytes, max_tools=max_tools,
                                              max_translation_mm=max_translation_mm)
        self._connected = threading.Condition()
        self._sock: socket.socket | None = None
        self._sock_lock = threading.Lock()  # guards self._sock only, never held during I/O
        self._send_lock = threading.Lock()  # serialises sendall between callers of send()
        self._first: socket.socket | None = None  # the connection start() made (reconnect=False)
        self._parser_stats = P.ParserStats()
        self._connections = 0
        self._thread_name = f"igtl-client-{self.host}:{self.port}"

    # --- TrackerSource (lifecycle in StoreBackedSource) --------------------------------

    _connected_while_running = False  # the receiver thread reports each connection

    def _open(self) -> None:
        self._first = None if self.reconnect else self._connect()  # raises TrackingError when refused

    def _interrupt(self) -> None:
        with self._sock_lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def health(self) -> SourceHealth:
        h = self.store.health_snapshot()
        st = self._parser_stats
        h.extra.update(
            bad_crc=float(st.bad_crc),
            bad_header=float(st.bad_header),
            oversized=float(st.oversized),
            skipped_bytes=float(st.skipped_bytes),
            skipped_body_bytes=float(st.skipped_body_bytes),
            false_headers=float(st.false_headers),
        )
        h.extra.setdefault("coalesced", 0.0)
        return h

    # --- extras ------------------------------------------------------------------------

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected (True) or ``timeout_s`` passes (False)."""
        with self._connected:
            return self._connected.wait_for(lambda: self.store.health.connected, timeout=timeout_s)

    def messages(self) -> list[P.Message]:
        """Take the queued non-pose messages (STRING, POLYDATA, STATUS of non-tools, ...)."""
        return self.router.drain()

    def send(self, data: bytes) -> None:
        """Send raw message bytes to the server (e.g. ``P.transform_message(...)``).

        Blocks while the peer does not read; :meth:`stop` (or a lost connection) makes it
        raise :class:`TrackingError` instead of hanging.
        """
        with self._sock_lock:
            sock = self._sock
        if sock is None:
            raise TrackingError(f"OpenIGTLink {self.host}:{self.port}: not connected")
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError as e:
                raise TrackingError(f"OpenIGTLink {self.host}:{self.port}: send failed ({e})") from e

    # --- internals ---------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as e:
            raise TrackingError(f"OpenIGTLink {self.host}:{self.port}: cannot connect ({e})") from e
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _set_connected(self, value: bool) -> None:
        with self._connected:
            self.store.set_connected(value)
            self._connected.notify_all()

    def _run(self) -> None:
        first, self._first = self._first, None
        try:
            self._run_connections(first)
        except BaseException as e:  # never die silently: say why, then fall through to finally
            log.exception("OpenIGTLink %s:%d receiver failed", self.host, self.port)
            self.store.mark_error(f"OpenIGTLink {self.host}:{self.port}: receiver failed: {e!r}")
            raise
        finally:
            self._disconnect(first)  # first: stopped before the loop adopted it

    def _disconnect(self, *others: socket.socket | None) -> None:
        """Close the current socket and ``others`` (closing twice is harmless), then mark the
        source disconnected and every tool seen so far not visible."""
        with self._sock_lock:
            sock, self._sock = self._sock, None
        for s in (sock, *others):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._set_connected(False)
        self.router.all_not_visible(time.monotonic())

    def _run_connections(self, first: socket.socket | None) -> None:
        backoff = 0.05
        sock = first
        while not self._stop.is_set():
            if sock is None:
                try:
                    sock = self._connect()
                except TrackingError as e:
                    self.store.mark_error(str(e))
                    if not self.reconnect:
                        return
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2.0, self.max_backoff_s)
                    continue
            backoff = 0.05
            with self._sock_lock:
                self._sock = sock
            if self._stop.is_set():
                break
            self._connections += 1
            if self._connections > 1:
                self.store.count(reconnects=1)
            self._set_connected(True)
            parser = P.StreamParser(max_body=self.max_body, max_message=self.max_message)
            self._parser_stats = parser.stats
            try:
                reason = receive_stream(
                    sock, parser, self.router, read_timeout_s=self.read_timeout_s, idle_timeout_s=self.keepalive_timeout_s
                )
            finally:
                self._disconnect(sock)
            sock = None
            if not self._stop.is_set():
                self.store.mark_error(f"OpenIGTLink {self.host}:{self.port}: {reason}")
                log.info("OpenIGTLink %s:%d: %s", self.host, self.port, reason)
            if not self.reconnect:
                break


__all__ = ["IGTLClientSource"]
