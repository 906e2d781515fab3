"""OpenIGTLink receive side shared by the client and the listening server sources.

:class:`MessageRouter` turns decoded messages into tool poses in a
:class:`~orthonav.tracking.store.PoseStore`; :func:`receive_stream` is the blocking loop that
reads one connected socket through a :class:`~orthonav.tracking.igtl_protocol.StreamParser`
into a router. :class:`~orthonav.tracking.igtl_client.IGTLClientSource` (we connect) and
:class:`~orthonav.tracking.igtl_server.IGTLServerSource` (the tracker connects) both use them.

Mapping of messages (``<Tool>ToTracker`` device -> tool ``<Tool>``):

* TRANSFORM / POSITION: ``ras_tracker_from_tool`` on the wire (the tracker frame is
  RAS-based, the tool frame is the tool's own native frame), converted to LPS here with
  :func:`~orthonav.core.transforms.lps_from_ras_transform`, which flips only the output
  (tracker) frame: the tool frame, and so tool tips in ``ToolDefinition``, stay native, exactly
  as NDI / ArUco sources deliver them. This is the only receive-side conversion. A 12-byte
  (position-only) POSITION carries no orientation and counts as a bad message. v2 metadata
  ``TransformStatus`` other than ``OK`` (PLUS), a non-finite matrix, a non-rigid matrix or a
  translation beyond the plausible workspace (``max_translation_mm``, 5 m by default) ->
  NOT_VISIBLE, never LIVE (the last two also count as bad messages; every reason is counted
  in ``health().extra``: ``rejected_non_finite`` / ``rejected_non_rigid`` /
  ``rejected_out_of_workspace``).
* TDATA: one element per tool; a tool seen before but missing from a TDATA message, or an
  element with a non-finite / all-zero matrix -> NOT_VISIBLE; a 3D-type (position-only)
  element -> NOT_VISIBLE and a bad message.
* STATUS on a tool's device with a code other than OK -> NOT_VISIBLE.
* STRING, POLYDATA, other STATUS and anything else up to ``max_body`` -> a queue (the
  sources' ``messages()``, :meth:`MessageRouter.drain`) bounded in count (``queue_size``) and bytes (``queue_bytes``, 8 MiB);
  when full the oldest is dropped and counted in ``health().dropped``. Bigger messages
  (a PLUS IMAGE) are skipped by their declared size without being buffered (see
  :class:`~orthonav.tracking.igtl_protocol.StreamParser`), counted as ``skipped_messages``.

Limits that keep a faulty or hostile peer from hurting the receiver (per source; the
sources take them as keyword arguments):

* at most ``max_tools`` (256) distinct tool names: messages naming a new tool beyond that are
  ignored and counted (``ignored_devices``), so ``latest()`` stays fast;
* a body over ``max_message`` (64 MiB) drops the connection at once (``over_limit``); a
  client reconnects at once;
* ``read_timeout_s`` (2 s): a peer that stops in the middle of a message is dropped
  (``stalled``) and reconnected. A peer idle between messages is not a fault unless
  ``keepalive_timeout_s`` is set.
"""

from __future__ import annotations

import logging
import math
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orthonav.core.transforms import lps_from_ras_transform

from . import igtl_protocol as P
from .store import PoseStore
from .tools import ToolSet

log = logging.getLogger(__name__)

#: Largest message body a tracking receiver accepts by default (bytes). Poses are < 1 kB;
#: a POLYDATA receiver may pass a bigger ``max_body`` explicitly.
TRACKING_MAX_BODY = 1 << 20
#: Disconnect and reconnect when this many bytes in a row could not be parsed.
MAX_GARBAGE_BYTES = 1 << 20
RIGID_TOL = 1e-3  # float32 on the wire: orthonormal to ~1e-7; anything worse is not a rigid pose
#: Farthest plausible tool position from the tracker origin (mm): beyond it a pose is rejected.
MAX_TRANSLATION_MM = 5000.0
#: Most distinct tool names one source keeps (new names beyond it are ignored and counted).
MAX_TOOLS = 256
#: Bytes of unread non-pose messages one source keeps (oldest dropped beyond it).
QUEUE_BYTES = 8 << 20
#: A peer that sends nothing for this long in the middle of a message is dropped (s).
READ_TIMEOUT_S = 2.0


_EYE3 = np.eye(3)


def _rigid_or_none(m: NDArray[np.float64], max_translation_mm: float = MAX_TRANSLATION_MM) -> tuple[NDArray[np.float64] | None, str | None]:
    """(pose, None) if ``m`` is a finite proper rigid transform within the workspace, else
    (None, reason) with reason one of "non_finite", "non_rigid", "out_of_workspace"."""
    if not np.isfinite(m).all():
        return None, "non_finite"
    r = m[:3, :3]
    if not np.abs(r @ r.T - _EYE3).max() <= RIGID_TOL or np.linalg.det(r) < 0:
        return None, "non_rigid"
    if not float(np.linalg.norm(m[:3, 3])) <= max_translation_mm:
        return None, "out_of_workspace"
    return m, None


_PROBLEM = {
    "non_rigid": "matrix is not a proper rigid transform",
    "out_of_workspace": "translation beyond the plausible workspace",
}


_POSE_TYPES = frozenset({"TRANSFORM", "POSITION"})


def coalesce(msgs: list[P.Message]) -> tuple[list[P.Message], int]:
    """Keep only the newest pose message per device within one received batch.

    A TRANSFORM / POSITION (or TDATA) superseded by a later one for the same device in the
    same batch changes nothing a consumer can see (the store keeps the newest pose per tool),
    so it is skipped; the order of what is kept is unchanged. STATUS messages are always kept
    (an OK status must not hide the pose before it; a not-OK one applies in order). This is what keeps the
    receiver ahead of a sender that outpaces Python's per-message cost. Returns the kept
    messages and how many were skipped.
    """
    if len(msgs) < 2:
        return msgs, 0
    seen: set[tuple[bool, str]] = set()
    keep: list[P.Message] = []
    for m in reversed(msgs):
        t = m.header.type
        if t in _POSE_TYPES or t == "TDATA":
            key = (t == "TDATA", m.header.device)
            if key in seen:
                continue
            seen.add(key)
        keep.append(m)
    keep.reverse()
    return keep, len(msgs) - len(keep)


class MessageRouter:
    """Applies decoded messages to a :class:`PoseStore` (shared by client and server sources).

    Parameters
    ----------
    store
        Where poses go.
    queue_size, queue_bytes
        Bounds (count, bytes of content) of the queue of non-pose messages; the oldest are
        dropped beyond them and counted in ``health().dropped``.
    tool_names
        Configured tools (always accepted).
    max_tools
        Most distinct tool names kept (configured ones included); messages for new names
        beyond it are ignored and counted (``health().extra["ignored_devices"]``).
    max_translation_mm
        Poses farther than this from the tracker origin (mm) are rejected (NOT_VISIBLE).
    """

    @classmethod
    def for_tools(cls, store: PoseStore, tools: ToolSet | None, **bounds: Any) -> MessageRouter:
        """A router that always accepts the tools of ``tools`` (None: any name, up to the cap);
        ``bounds`` are the keyword bounds of the constructor."""
        return cls(store, tool_names=set(tools.by_name()) if tools else None, **bounds)

    def __init__(
        self,
        store: PoseStore,
        *,
        queue_size: int = 256,
        tool_names: set[str] | None = None,
        queue_bytes: int = QUEUE_BYTES,
        max_tools: int = MAX_TOOLS,
        max_translation_mm: float = MAX_TRANSLATION_MM,
    ) -> None:
        self.store = store
        self.other: deque[P.Message] = deque()
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self._queued_bytes = 0
        self.known_tools: set[str] = set(tool_names or ())
        self.max_tools = max(int(max_tools), len(self.known_tools))
        self.max_translation_mm = float(max_translation_mm)
        self._lock = threading.Lock()

    @property
    def coalesced(self) -> int:
        """Pose messages superseded within one received batch (not applied)."""
        return int(self.store.health_snapshot().extra.get("coalesced", 0.0))

    def _admit(self, tool: str) -> bool:
        """Whether ``tool`` is known or may still be added under the ``max_tools`` cap."""
        with self._lock:
            if tool in self.known_tools:
                return True
            if len(self.known_tools) < self.max_tools:
                self.known_tools.add(tool)
                return True
        self.store.count_extra("ignored_devices")
        self.store.mark_error(f"more than {self.max_tools} tool names: '{tool}' ignored")
        return False

    def _put(self, tool: str, pose: NDArray[np.float64] | None, header: P.Header, host_time_s: float) -> None:
        dev_t = header.timestamp_s if header.timestamp_s > 0 else math.nan
        if not self._admit(tool):
            return
        self.store.put(tool, pose, device_time_s=dev_t, host_time_s=host_time_s)
        if dev_t > 1e9:  # epoch-based sender clock: lag against this host's wall clock
            self.store.set_lag(time.time() - dev_t)

    def _pose(self, tool: str, wire: NDArray[np.float64], header: P.Header, host_time_s: float, ok: bool = True) -> None:
        pose, problem = _rigid_or_none(wire, self.max_translation_mm)
        if problem is not None:
            self.store.count_extra(f"rejected_{problem}")
            if problem in _PROBLEM:  # a NaN matrix is some trackers' "not visible": not an error
                self.store.mark_error(f"{header.type} '{header.device}': {_PROBLEM[problem]}", bad_message=True)
        if pose is not None and ok:
            pose = lps_from_ras_transform(pose)
        else:
            pose = None
        self._put(tool, pose, header, host_time_s)

    def apply(self, msg: P.Message, host_time_s: float) -> None:
        """Route one message; malformed content is counted as a bad message, never raised."""
        h = msg.header
        try:
            if h.type == "TRANSFORM":
                ok = msg.metadata.get("TransformStatus", "OK").upper() == "OK"
                self._pose(P.tool_from_device(h.device), P.unpack_transform(msg.content), h, host_time_s, ok)
            elif h.type == "POSITION":
                self._pose(P.tool_from_device(h.device), P.unpack_position(msg.content), h, host_time_s)
            elif h.type == "TDATA":
                seen = set()
                for name, kind, m in P.unpack_tdata_elements(msg.content):
                    tool = P.tool_from_device(name)
                    seen.add(tool)
                    if kind == P.TDATA_TYPE_3D:  # position only: no orientation, not a pose
                        self.store.mark_error(f"TDATA '{name}': 3D (position-only) element is not a pose", bad_message=True)
                        self._put(tool, None, h, host_time_s)
                        continue
                    valid = np.all(np.isfinite(m)) and np.any(m[:3, :3] != 0)
                    self._pose(tool, m if valid else np.full((4, 4), np.nan), h, host_time_s)
                with self._lock:
                    missing = sorted(self.known_tools - seen)
                for tool in missing:
                    self._put(tool, None, h, host_time_s)
            elif h.type == "STATUS" and (h.device.endswith("ToTracker") or h.device in self.known_tools):
                status = P.unpack_status(msg.content)
                if not status.ok:
                    self._put(P.tool_from_device(h.device), None, h, host_time_s)
            else:
                self._queue(msg)
        except P.IGTLProtocolError as e:
            self.store.mark_error(f"{h.type} '{h.device}': {e}", bad_message=True)

    def _queue(self, msg: P.Message) -> None:
        size = len(msg.content)
        dropped = 0
        with self._lock:
            if size > self.queue_bytes:
                dropped = 1
            else:
                while self.other and (len(self.other) >= self.queue_size or self._queued_bytes + size > self.queue_bytes):
                    self._queued_bytes -= len(self.other.popleft().content)
                    dropped += 1
                self.other.append(msg)
                self._queued_bytes += size
        if dropped:
            self.store.count(dropped=dropped)

    def drain(self) -> list[P.Message]:
        """Take every queued non-pose message (oldest first)."""
        with self._lock:
            out = list(self.other)
            self.other.clear()
            self._queued_bytes = 0
        return out

    def all_not_visible(self, host_time_s: float) -> None:
        """Mark every tool seen so far as not visible (connection lost)."""
        with self._lock:
            tools = sorted(self.known_tools)
        for tool in tools:
            self.store.put(tool, None, device_time_s=math.nan, host_time_s=host_time_s)


def receive_stream(
    sock: socket.socket,
    parser: P.StreamParser,
    router: MessageRouter,
    *,
    clock: Callable[[], float] = time.monotonic,
    read_timeout_s: float | None = None,
    idle_timeout_s: float | None = None,
) -> str:
    """Blocking receive loop on a connected socket until the peer closes or an error occurs.

    Returns the reason the loop ended (for logs). Counts parser problems as bad messages.
    An unexpected exception while decoding or applying a message (a decoder bug) ends this
    connection with that reason, counted as a bad message: the caller then reconnects and
    marks the tools not visible; it never kills the receiving thread silently.

    The loop also ends when the parser meets a body over its ``max_message`` (counted as
    ``over_limit``), when nothing arrives for ``read_timeout_s`` seconds while part of a
    message has been received (``stalled``), or, if ``idle_timeout_s`` is set, when nothing
    arrives for that long between messages (``idle_timeouts``). The socket stays blocking
    (a writer thread may share it); the timeouts wait in a selector, no polling.
    """
    sel: selectors.BaseSelector | None = None
    if read_timeout_s is not None or idle_timeout_s is not None:
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
    try:
        return _receive_loop(sock, parser, router, clock, sel, read_timeout_s, idle_timeout_s)
    finally:
        if sel is not None:
            sel.close()


def _receive_loop(
    sock: socket.socket,
    parser: P.StreamParser,
    router: MessageRouter,
    clock: Callable[[], float],
    sel: selectors.BaseSelector | None,
    read_timeout_s: float | None,
    idle_timeout_s: float | None,
) -> str:
    seen = 0
    good_at_skip = 0
    skipped_seen = 0
    while True:
        if sel is not None:
            inside = parser.in_message
            wait = read_timeout_s if inside else idle_timeout_s
            try:
                ready = sel.select(wait)
            except (OSError, ValueError) as e:  # the socket was closed under us
                return f"receive failed: {e}"
            if not ready:
                if inside:
                    router.store.count_extra("stalled")
                    return f"peer stalled: nothing for {wait:g} s inside a message (read timeout)"
                router.store.count_extra("idle_timeouts")
                return f"nothing received for {wait:g} s (keep-alive timeout)"
        try:
            data = sock.recv(1 << 16)
        except OSError as e:
            return f"receive failed: {e}"
        if not data:
            return "peer closed the connection"
        now = clock()
        try:
            msgs = parser.feed(data)
        except Exception as e:  # a decoder bug: drop this connection loudly, not the thread
            log.exception("OpenIGTLink decoder failed")
            router.store.mark_error(f"OpenIGTLink decoder failed: {e!r}", bad_message=True)
            return f"decoder failed: {e!r}"
        st = parser.stats
        bad = st.bad_crc + st.bad_header + st.oversized
        if bad > seen:
            router.store.count(bad_messages=bad - seen)
            router.store.mark_error(f"OpenIGTLink stream: {parser.last_error}")
            seen = bad
        kept, skipped = coalesce(msgs)
        if skipped:
            router.store.count_extra("coalesced", skipped)
        with router.store.batch():  # one wake-up per received batch, not per message
            for m in kept:
                try:
                    router.apply(m, now)
                except Exception as e:  # a bug in routing: end this connection loudly
                    log.exception("OpenIGTLink %s '%s' could not be applied", m.header.type, m.header.device)
                    router.store.mark_error(f"{m.header.type} '{m.header.device}': could not be applied: {e!r}", bad_message=True)
                    return f"message could not be applied: {e!r}"
        progressed = bool(msgs) or st.skipped_messages > skipped_seen
        if st.skipped_messages > skipped_seen:
            router.store.count_extra("skipped_messages", st.skipped_messages - skipped_seen)
            skipped_seen = st.skipped_messages
        if parser.fatal is not None:  # already counted as a bad (oversized) message above
            router.store.count_extra("over_limit")
            router.store.mark_error(f"OpenIGTLink stream: {parser.fatal}")
            return parser.fatal
        if progressed:
            good_at_skip = st.skipped_bytes
        elif st.skipped_bytes - good_at_skip > MAX_GARBAGE_BYTES:
            return f"{st.skipped_bytes - good_at_skip} bytes of garbage without a valid message"


__all__ = [
    "MAX_GARBAGE_BYTES",
    "MAX_TOOLS",
    "MAX_TRANSLATION_MM",
    "QUEUE_BYTES",
    "READ_TIMEOUT_S",
    "RIGID_TOL",
    "TRACKING_MAX_BODY",
    "MessageRouter",
    "coalesce",
    "receive_stream",
]
