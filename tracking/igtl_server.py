"""OpenIGTLink server: push poses / strings / meshes to clients, or receive from trackers.

:class:`IGTLServer` listens (127.0.0.1 by default), accepts any number of clients and sends
every message to all of them. Each client has its own writer thread, so one slow client
never blocks the sender. Messages leave in the order they were sent, except that poses
(:meth:`IGTLServer.send_poses`) are newest-only per device: a new pose for a device replaces
the one a client has not been sent yet, so a slow client gets the newest pose when it
catches up, never a backlog of stale ones. The queue is bounded (``max_queue``); when it is
full the oldest message is dropped. Replaced and dropped messages are counted (``dropped``). A reader thread per client decodes what the client sends (handed
to the ``router``) and notices when it leaves.

Poses are ``tracker_from_tool`` with an LPS tracker frame in OrthoNav; they are sent with an
RAS tracker frame via :func:`~orthonav.core.transforms.ras_from_lps_transform` (which flips
the output frame only; tool frames stay native), on the send side only.

:class:`IGTLServerSource` is the other direction ("trackers push to us"): it listens and is
a :class:`~orthonav.tracking.frame.TrackerSource` fed by what one tracker sends. It keeps
one peer at a time, and only from the host of the first peer it accepted (or, with
``allowed_hosts``, only from those addresses): a connection from any other host is accepted
and closed at once, counted in ``health().extra["refused_peers"]`` and named in
``last_error``. A new connection from the host of the current peer *replaces* it (counted in
``replaced_peers``): a tracker that restarted after a crash or a pulled cable is never
locked out behind its own half-dead connection, and two senders never interleave. A
pushing peer that stops in the middle of a message is dropped after ``read_timeout_s``. The
receive limits are those of :mod:`orthonav.tracking.igtl_receive`.

CLI wiring (``--listen`` in :mod:`orthonav.tracking.run`, not done here) needs: an option for
``allowed_hosts`` (e.g. ``--listen-allow 10.0.0.5,10.0.0.6``; default: first peer only),
optionally ``--read-timeout S`` and ``--max-message BYTES``.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping

import numpy as np
from numpy.typing import ArrayLike

from orthonav.core.errors import TrackingError
from orthonav.core.transforms import ras_from_lps_points, ras_from_lps_transform

from . import igtl_protocol as P
from .frame import SourceHealth
from .igtl_receive import (
    MAX_TOOLS,
    MAX_TRANSLATION_MM,
    QUEUE_BYTES,
    READ_TIMEOUT_S,
    TRACKING_MAX_BODY,
    MessageRouter,
    receive_stream,
)
from .store import PoseStore, StoreBackedSource
from .tools import ToolSet

log = logging.getLogger(__name__)


class _Peer:
    """One connected client: socket, bounded outgoing queue, writer and reader threads."""

    def __init__(self, server: "IGTLServer", sock: socket.socket, addr: tuple) -> None:
        self.server = server
        self.sock = sock
        self.addr = addr
        #: Outgoing messages in send order as [key, bytes]; key is the device name of a pose
        #: message (newest only: a new pose for the device replaces the unsent one) or None.
        self.queue: deque[list] = deque()
        self.pending_pose: dict[str, list] = {}  #: device -> its unsent entry in ``queue``
        self.cond = threading.Condition()
        self.closed = False
        self.dropped = 0
        self.writer = threading.Thread(target=self._write_loop, name=f"igtl-peer-w-{addr}", daemon=True)
        self.reader = threading.Thread(target=self._read_loop, name=f"igtl-peer-r-{addr}", daemon=True)

    def start(self) -> None:
        self.writer.start()
        self.reader.start()

    def enqueue(self, items: list[tuple[str | None, bytes]]) -> int:
        """Queue messages (key = device for a pose, None otherwise); returns how many were lost.

        A pose replaces the unsent pose of the same device (lost: it was stale), and a full
        queue drops its oldest entry, so a slow client never accumulates a stale backlog.
        """
        lost = 0
        with self.cond:
            if self.closed:
                return len(items)
            for key, data in items:
                if key is not None:
                    old = self.pending_pose.pop(key, None)
                    if old is not None:
                        self.queue.remove(old)
                        lost += 1
                if len(self.queue) >= self.server.max_queue:
                    gone = self.queue.popleft()
                    if gone[0] is not None:
                        self.pending_pose.pop(gone[0], None)
                    lost += 1
                entry = [key, data]
                self.queue.append(entry)
                if key is not None:
                    self.pending_pose[key] = entry
            self.dropped += lost
            self.cond.notify()
        return lost

    def _write_loop(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue or self.closed)
                if self.closed:
                    return
                batch = b"".join(data for _key, data in self.queue)
                self.queue.clear()
                self.pending_pose.clear()
            try:
                self.sock.sendall(batch)
            except OSError as e:
                self.close(f"send failed: {e}")
                return

    def _read_loop(self) -> None:
        reason = "reader failed"
        try:
            srv = self.server
            if srv.router is not None:
                parser = P.StreamParser(max_body=srv.max_body, max_message=srv.max_message)
                reason = receive_stream(self.sock, parser, srv.router, read_timeout_s=srv.read_timeout_s)
            else:
                reason = self._discard()
        except BaseException as e:  # never die silently: the peer is removed, tools go not visible
            log.exception("OpenIGTLink client %s: reader failed", self.addr)
            reason = f"reader failed: {e!r}"
            if self.server.router is not None:
                self.server.router.store.mark_error(f"OpenIGTLink client {self.addr}: {reason}")
            raise
        finally:
            self.close(reason)
            self.sock.close()  # the reader owns the close (see close()); twice is harmless

    def _discard(self) -> str:
        while True:
            try:
                if not self.sock.recv(1 << 16):
                    return "peer closed the connection"
            except OSError as e:
                return f"receive failed: {e}"

    def close(self, reason: str) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if threading.current_thread() is self.reader or not self.reader.is_alive():
            self.sock.close()
        # else the reader wakes on the shutdown and closes the socket on its way out: closing it
        # here, under a reader waiting in a selector, would leave that reader asleep forever
        self.server._remove(self, reason)


class IGTLServer:
    """OpenIGTLink server pushing messages to every connected client.

    Parameters
    ----------
    port
        TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    host
        Interface to bind; loopback by default (pass "0.0.0.0" deliberately to expose it).
    version
        Header version of the messages it sends (1 is understood by every peer).
    max_queue
        Per-client queue length for non-pose messages; beyond it the oldest is dropped
        (poses are newest-only and never queue up).
    router
        Where received messages go (None: received bytes are read and discarded).
    on_clients
        Called with the number of connected clients whenever it changes (under the server's
        lock: it must be quick and must not call back into the server).
    max_message
        Largest received body skipped by declared size (bytes); more drops that client.
    read_timeout_s
        A client silent this long (s) in the middle of a message it sends is dropped.
    max_clients
        Most clients connected at once (None: any number); further connections are closed.
    allowed_hosts
        IPv4 addresses allowed to connect (None: any).
    pin_first_host
        Accept, from then on, only the host of the first accepted client.
    replace_same_host
        With ``max_clients`` reached, a new client from the host of a connected one replaces
        the oldest such client instead of being refused.
    on_refused
        Called with ``(address, reason)`` for each connection closed by the rules above.
    """

    def __init__(
        self,
        port: int = 18944,
        *,
        host: str = "127.0.0.1",
        version: int = 1,
        max_queue: int = 1024,
        max_body: int = P.DEFAULT_MAX_BODY,
        router: MessageRouter | None = None,
        on_clients: Callable[[int], None] | None = None,
        max_message: int = P.DEFAULT_MAX_MESSAGE,
        read_timeout_s: float | None = None,
        max_clients: int | None = None,
        allowed_hosts: Collection[str] | None = None,
        pin_first_host: bool = False,
        replace_same_host: bool = False,
        on_refused: Callable[[tuple, str], None] | None = None,
    ) -> None:
        self.host = host
        self._port = int(port)
        self.version = version
        self.max_queue = max_queue
        self.max_body = max_body
        self.max_message = max_message
        self.read_timeout_s = read_timeout_s
        self.max_clients = max_clients
        self.allowed_hosts = frozenset(allowed_hosts) if allowed_hosts is not None else None
        self.pin_first_host = pin_first_host
        self.replace_same_host = replace_same_host
        self.replaced = 0  #: clients closed because a new one from the same host came
        self.first_host: str | None = None  #: host of the first accepted client
        self.on_refused = on_refused
        self.refused = 0  #: connections closed at once by the admission rules
        self.router = router
        self._listen: socket.socket | None = None
        self._peers: list[_Peer] = []
        self.on_clients = on_clients
        self._lock = threading.Condition()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self.sent = 0  #: messages handed to send_bytes / send_poses
        self.dropped = 0  #: messages dropped from full client queues or replaced pose batches (all clients)
        self.accepted = 0

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> "IGTLServer":
        if self._thread is not None:
            return self
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self._port))
        except OSError as e:
            s.close()
            raise TrackingError(f"OpenIGTLink server cannot listen on {self.host}:{self._port} ({e})") from e
        s.listen(8)
        self._port = s.getsockname()[1]
        self._listen = s
        self._stop_event.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, name=f"igtl-server-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop_event.set()
        assert self._wake_w is not None and self._wake_r is not None
        self._wake_w.send(b"x")
        self._thread.join(timeout=5.0)
        self._thread = None
        self._wake_w.close()
        self._wake_r.close()
        self._wake_r = self._wake_w = None
        if self._listen is not None:  # first: no client may connect into the backlog meanwhile
            self._listen.close()
            self._listen = None
        with self._lock:
            peers = list(self._peers)
        for p in peers:
            p.close("server stopped")
        for p in peers:
            p.writer.join(timeout=2.0)
            p.reader.join(timeout=2.0)

    def __enter__(self) -> "IGTLServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def n_clients(self) -> int:
        with self._lock:
            return len(self._peers)

    def wait_for_clients(self, n: int = 1, timeout_s: float = 5.0) -> bool:
        """Block until at least ``n`` clients are connected (False on timeout)."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._peers) >= n, timeout=timeout_s)

    def _accept_loop(self) -> None:
        assert self._listen is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listen, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "wake":
                        self._wake_r.recv(16)
                        return
                    try:
                        conn, addr = self._listen.accept()
                    except OSError as e:
                        log.warning("OpenIGTLink server %d: accept failed: %s", self._port, e)
                        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            if self._stop_event.wait(0.1):  # out of descriptors: do not spin
                                return
                        continue
                    refusal, victim = self._admission(addr)
                    if refusal is not None:
                        self._refuse(conn, addr, refusal)
                        continue
                    try:
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    except OSError as e:  # e.g. the client already reset the connection
                        log.warning("OpenIGTLink client %s: dropped at accept: %s", addr, e)
                        conn.close()
                        continue
                    peer = _Peer(self, conn, addr)
                    with self._lock:
                        self._peers.append(peer)
                        self.accepted += 1
                        if self.on_clients is not None:  # before waiters see the new count
                            self.on_clients(len(self._peers))
                        self._lock.notify_all()
                    if victim is not None:  # before the new peer's first message is read
                        why = f"replaced by a new connection from {addr[0]}:{addr[1]}"
                        with self._stats_lock:
                            self.replaced += 1
                        if self.on_refused is not None:
                            self.on_refused(victim.addr, why)
                        victim.close(why)
                    peer.start()
                    log.info("OpenIGTLink client %s connected", addr)
        finally:
            sel.close()

    def _admission(self, addr: tuple) -> tuple[str | None, "_Peer | None"]:
        """(why a new connection from ``addr`` must be closed, or None to accept it; the peer it
        replaces, or None). Accepting the first client pins its host."""
        host = addr[0]
        victim = None
        with self._lock:
            if self.allowed_hosts is not None and host not in self.allowed_hosts:
                return f"{host} is not an allowed host", None
            if self.pin_first_host and self.first_host is not None and host != self.first_host:
                return f"only {self.first_host} (the first peer) may connect", None
            live = [p for p in self._peers if not p.closed]
            if self.max_clients is not None and len(live) >= self.max_clients:
                same = [p for p in live if p.addr[0] == host]
                if not (self.replace_same_host and same):
                    return f"already serving {len(live)} peer(s)", None
                victim = same[0]
            if self.first_host is None:
                self.first_host = host
        return None, victim

    def _refuse(self, conn: socket.socket, addr: tuple, reason: str) -> None:
        """Count and report a refused connection, then close it (in this order, so the peer
        seeing the close can already read the count)."""
        with self._stats_lock:
            self.refused += 1
        log.warning("OpenIGTLink connection from %s refused: %s", addr, reason)
        if self.on_refused is not None:
            self.on_refused(addr, reason)
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()

    def _remove(self, peer: _Peer, reason: str) -> None:
        with self._lock:
            if peer in self._peers:
                self._peers.remove(peer)
                if self.on_clients is not None:
                    self.on_clients(len(self._peers))
                self._lock.notify_all()
        if self.router is not None:
            # a pushing tracker is gone (or its stream failed): nothing it sent may stay live.
            # Fail-safe with several pushers: their tools show not visible until their next
            # message (one frame), never a stale pose.
            self.router.all_not_visible(time.monotonic())
        log.info("OpenIGTLink client %s left: %s", peer.addr, reason)

    # --- sending -----------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> int:
        """Queue one packed message to every client; returns how many clients got it."""
        return self._send([(None, data)])

    def _send(self, items: list[tuple[str | None, bytes]]) -> int:
        with self._lock:
            peers = list(self._peers)
        lost = sum(p.enqueue(items) for p in peers)
        with self._stats_lock:
            self.sent += len(items)
            self.dropped += lost
        return len(peers)

    def send_poses(self, poses: Mapping[str, ArrayLike | None], device_time_s: float, *, not_visible: str = "status") -> int:
        """Send ``tracker_from_tool`` (LPS, mm) of each tool as ``<Tool>ToTracker`` TRANSFORMs (RAS).

        A None pose is sent as "not visible": a STATUS message (code NOT_READY) on the
        tool's device with ``not_visible="status"`` (understood by any peer), or with
        ``"transform"`` a v2 TRANSFORM carrying ``TransformStatus: INVALID`` (PLUS style).

        Each tool's message replaces that tool's message a client has not been sent yet
        (newest only per device).
        """
        chunks: list[tuple[str | None, bytes]] = []
        for tool, pose in poses.items():
            dev = P.as_device_name(tool)
            if pose is not None:
                m = ras_from_lps_transform(np.asarray(pose, dtype=np.float64))
                chunks.append((dev, P.transform_message(dev, m, timestamp_s=device_time_s, version=self.version)))
            elif not_visible == "transform":
                chunks.append((dev, P.transform_message(dev, np.eye(4), timestamp_s=device_time_s, status_ok=False)))
            else:
                status = P.Status(P.StatusCode.NOT_READY, 0, "NotVisible", f"{tool} not visible")
                chunks.append((dev, P.pack_message("STATUS", dev, P.pack_status(status), timestamp_s=device_time_s, version=self.version)))
        return self._send(chunks) if chunks else 0

    def send_string(self, device: str, text: str, *, device_time_s: float | None = None) -> int:
        t = time.time() if device_time_s is None else device_time_s
        return self.send_bytes(P.pack_message("STRING", device, P.pack_string(text), timestamp_s=t, version=self.version))

    def send_status(self, device: str, status: P.Status, *, device_time_s: float | None = None) -> int:
        t = time.time() if device_time_s is None else device_time_s
        return self.send_bytes(P.pack_message("STATUS", device, P.pack_status(status), timestamp_s=t, version=self.version))

    def send_polydata(self, device: str, mesh: object, *, device_time_s: float | None = None) -> int:
        """Send a mesh (pyvista.PolyData or :class:`~orthonav.tracking.igtl_protocol.PolyData`,
        points in LPS mm) as POLYDATA with RAS points."""
        poly = mesh if isinstance(mesh, P.PolyData) else P.polydata_from_mesh(mesh)
        poly = P.PolyData(ras_from_lps_points(poly.points), poly.vertices, poly.lines, poly.polygons, poly.strips)
        t = time.time() if device_time_s is None else device_time_s
        return self.send_bytes(P.pack_message("POLYDATA", device, P.pack_polydata(poly), timestamp_s=t, version=self.version))


class IGTLServerSource(StoreBackedSource):
    """A tracker source that listens: a tracker (PLUS, a C++ sender) connects and pushes poses.

    Message handling is the same as :class:`~orthonav.tracking.igtl_client.IGTLClientSource`.
    ``health().connected`` is True only while a tracker is connected.

    Parameters
    ----------
    port, host
        Where to listen (loopback by default).
    allowed_hosts
        IPv4 addresses allowed to push (None: the host of the first peer, pinned for the
        lifetime of the source).
    max_peers
        Peers connected at once (1: a second tracker cannot interleave its poses).
    read_timeout_s
        A peer silent this long (s) in the middle of a message is dropped.
    tools, queue_size, queue_bytes, max_body, max_message, max_tools, max_translation_mm
        As for :class:`~orthonav.tracking.igtl_client.IGTLClientSource`.
    """

    def __init__(
        self,
        port: int = 18944,
        *,
        host: str = "127.0.0.1",
        tools: ToolSet | None = None,
        queue_size: int = 256,
        max_body: int = TRACKING_MAX_BODY,
        allowed_hosts: Collection[str] | None = None,
        max_peers: int | None = 1,
        read_timeout_s: float | None = READ_TIMEOUT_S,
        max_message: int = P.DEFAULT_MAX_MESSAGE,
        max_tools: int = MAX_TOOLS,
        max_translation_mm: float = MAX_TRANSLATION_MM,
        queue_bytes: int = QUEUE_BYTES,
    ) -> None:
        super().__init__(PoseStore(tools.timeouts_s() if tools else None))
        self.router = MessageRouter.for_tools(self.store, tools, queue_size=queue_size, queue_bytes=queue_bytes, max_tools=max_tools,
                                              max_translation_mm=max_translation_mm)
        self.server = IGTLServer(
            port,
            host=host,
            router=self.router,
            max_body=max_body,
            max_message=max_message,
            read_timeout_s=read_timeout_s,
            max_clients=max_peers,
            allowed_hosts=allowed_hosts,
            pin_first_host=allowed_hosts is None,
            replace_same_host=True,
            on_clients=self._on_clients,
            on_refused=self._on_refused,
        )

    @property
    def port(self) -> int:
        return self.server.port

    def _on_clients(self, n: int) -> None:
        self.store.set_connected(n > 0)

    def _on_refused(self, addr: tuple, reason: str) -> None:
        self.store.count_extra("replaced_peers" if reason.startswith("replaced") else "refused_peers")
        self.store.mark_error(f"OpenIGTLink connection from {addr[0]}:{addr[1]} refused: {reason}")

    # The server's own threads receive (one per client): no worker thread of our own.

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.store.set_connected(False)

    def health(self) -> SourceHealth:
        h = self.store.health_snapshot()
        h.extra["clients"] = float(self.server.n_clients)
        h.extra.setdefault("coalesced", 0.0)
        h.extra.setdefault("refused_peers", 0.0)
        h.extra.setdefault("replaced_peers", 0.0)
        return h

    def messages(self) -> list[P.Message]:
        return self.router.drain()

    def wait_for_clients(self, n: int = 1, timeout_s: float = 5.0) -> bool:
        return self.server.wait_for_clients(n, timeout_s)

