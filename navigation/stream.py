"""Stream navigation out to 3D Slicer over OpenIGTLink (OrthoNav is the server).

In Slicer: OpenIGTLinkIF -> new connector, type *client*, ``127.0.0.1:<port>``. What arrives,
with SlicerIGT's device naming:

* ``<Tool>ToReference`` TRANSFORM: each LIVE tool relative to the patient reference (RAS).
* ``ReferenceToRas`` TRANSFORM: the registration (``ct_from_reference`` in RAS), so in Slicer
  ``<Tool>ToReference`` placed under ``ReferenceToRas`` puts the tool on the CT.
* POLYDATA: every bone model and planned cut (``Bone_<name>``, ``Cut_<name>``), RAS points,
  sent to every newly connected client.
* STRING ``DeviceNames``: the JSON map ``{name: device}`` of every device name the stream
  uses (see below), sent with the models and again whenever a new tool adds a name.
* STRING ``Guidance``: the state's guidance numbers as JSON, at most ``guidance_rate_hz``.
* STRING ``NavigationStatus``: ``TRACKING`` or ``NOT_TRACKING``.

**One reference array per bone** (a tool set with ``bone`` on its arrays, see
:mod:`orthonav.navigation.state`): the first bone of the tool set (the *anchor*, e.g. the
femur) plays the patient reference above: ``ReferenceToRas`` is its registration and
``<Tool>ToReference`` is each LIVE tool (and each other bone's array) relative to its array.
In addition, each bone has a ``<Bone>ToCT`` TRANSFORM (``FemurToCT``, ``TibiaToCT``:
:func:`~orthonav.navigation.igtl_names.bone_transform_name`): the bone's planned CT position
(RAS) -> where it is now in the anchor's CT (RAS), i.e. ``anchor_ct_from_bone_ct``
(identity for the anchor; for the tibia the knee pose ``femur_ct_from_tibia_ct``). Put
``Bone_tibia`` under ``TibiaToCT`` in Slicer and the tibia moves with the knee. It is a map
between two patient (CT) frames, so both of its ends cross the LPS -> RAS boundary (the only
transform that does; ``RAS_FROM_LPS`` is its own inverse). A bone whose array (or the
anchor's) is not LIVE gets the hidden-tool message below on its ``<Bone>ToCT``; while the
anchor is not LIVE no ``<Tool>ToReference`` pose is sent.

**A tool that is not visible** (or every tool while navigation is not tracking):

* header version 1 (the default; every peer reads it): a STATUS message, code NOT_READY,
  error name ``NotVisible``, on the tool's device. A v1 peer has no way to attach a status to
  a TRANSFORM; Slicer keeps the transform node at its last pose, and ``NavigationStatus``
  says whether the poses are live. (PLUS's server can instead send nothing at all for an
  invalid tool, its ``SendValidTransformsOnly`` option: Slicer then shows the last pose
  with no sign that it is stale, which is why OrthoNav sends the STATUS.)
* header version 2 (``header_version=2``, for OpenIGTLink 3 peers: Slicer 4.10+, PLUS 2.6+):
  a v2 TRANSFORM on the tool's device carrying the tool's last live pose (identity if it
  was never seen) with the metadata ``TransformStatus: MISSING``, the way PLUS sends a
  missing tool; live tools carry ``TransformStatus: OK``. Slicer's OpenIGTLinkIF copies
  ``TransformStatus`` into the transform node's attribute of the same name. The peer's
  version cannot be chosen per client: :class:`~orthonav.tracking.igtl_server.IGTLServer`
  sends every message to every client, so v2 is an explicit setting, never a guess.

**Device names** are at most 20 bytes of ASCII (the OpenIGTLink header field). Every name
the stream sends goes through :func:`~orthonav.navigation.igtl_names.device_name_map`, a
deterministic, collision-free map documented there: a name that fits is sent unchanged, a
longer one is abbreviated (``Cut_posterior_chamfer`` -> ``Cut_PostChamf``), and one still too
long or clashing ends in 4 hex digits of its SHA-1. The map is
:attr:`SlicerStream.device_names` and the ``DeviceNames`` STRING.

**Errors never stop navigation.** :meth:`SlicerStream.send_state` is called in the tracking
thread; any exception inside it (an encoding error, a client that leaves, a bad mesh) is
caught there, counted and kept in :meth:`SlicerStream.health` (``errors``, ``last_error``),
logged (the first time, then at most every ``LOG_EVERY_S``), and the work is tried again: a
state on the next state, the models on the next client that connects. A client that sends
garbage is read and ignored (the server discards what clients send); one that disconnects
is dropped by the server and may connect again.

Every LPS -> RAS conversion is done by the tracking engineer's
:class:`~orthonav.tracking.igtl_server.IGTLServer` / :mod:`orthonav.core.transforms`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyvista as pv
from numpy.typing import NDArray

from orthonav.core.errors import InputError
from orthonav.core.transforms import RAS_FROM_LPS, invert, ras_from_lps_points, ras_from_lps_transform
from orthonav.tracking import igtl_protocol as P
from orthonav.tracking.igtl_server import IGTLServer

from .guidance import CutFrame
from .igtl_names import bone_transform_name, device_name_map
from .overlay import cut_plane_mesh
from .session import state_record
from .state import NavigationState

log = logging.getLogger(__name__)

DEFAULT_PORT = 18945
#: Least time (s) between two log lines about stream errors (each error is still counted).
LOG_EVERY_S = 5.0
#: Fixed devices of the stream.
REFERENCE_DEVICE = "ReferenceToRas"
STATUS_DEVICE = "NavigationStatus"
GUIDANCE_DEVICE = "Guidance"
NAMES_DEVICE = "DeviceNames"

@dataclass(frozen=True)
class StreamHealth:
    """How the stream is doing.

    Attributes
    ----------
    clients
        Clients connected now.
    connections
        Clients accepted since the start.
    sent_states
        Navigation states sent.
    errors
        Exceptions caught inside the stream (each one was logged, then retried).
    last_error
        The newest of them (``""`` when there was none).
    dropped
        Messages a slow client never got (older poses replaced, full queues).
    header_version
        Header version of the pose messages (1 or 2).
    """

    clients: int
    connections: int
    sent_states: int
    errors: int
    last_error: str
    dropped: int
    header_version: int


class SlicerStream:
    """Pushes navigation states to OpenIGTLink clients (3D Slicer).

    Parameters
    ----------
    port
        TCP port (0 = any free port; read :attr:`port`). Binds 127.0.0.1 unless ``host`` says otherwise.
    bones
        Bone name -> mesh (CT LPS mm).
    cuts
        Cut name -> planned cut frame.
    tools
        Names of the tools that will be streamed (their devices are named up front; a tool
        first seen in a state is added to :attr:`device_names` then).
    guidance_rate_hz
        Maximum rate of the ``Guidance`` STRING.
    pose_rate_hz
        Maximum rate of pose updates (Slicer redraws per message); a change of tracking state
        is always sent at once.
    header_version
        1 (default; every peer) or 2: TRANSFORMs then carry ``TransformStatus`` metadata and
        a hidden tool is a ``MISSING`` TRANSFORM (module docstring).
    bone_names
        One array per bone: the bones (their ``<Bone>ToCT`` devices are named up front).
    """

    def __init__(self, port: int = DEFAULT_PORT, *, host: str = "127.0.0.1", bones: Mapping[str, pv.PolyData] | None = None,
                 cuts: Mapping[str, CutFrame] | None = None, tools: Iterable[str] = (), guidance_rate_hz: float = 10.0,
                 pose_rate_hz: float = 60.0, header_version: int = 1, bone_names: Iterable[str] = ()) -> None:
        if header_version not in (1, 2):
            raise InputError(None, f"OpenIGTLink header version must be 1 or 2, got {header_version}")
        self.server = IGTLServer(port, host=host)
        self.header_version = header_version
        self._lock = threading.Lock()
        self.errors = 0
        self.last_error = ""
        self._last_log = -1e9
        self._meshes: dict[str, object] = {f"Bone_{k}": v for k, v in (bones or {}).items()}
        self._meshes.update({f"Cut_{k}": cf for k, cf in (cuts or {}).items()})
        fixed = [REFERENCE_DEVICE, STATUS_DEVICE, GUIDANCE_DEVICE, NAMES_DEVICE]
        #: Every name the stream uses -> its OpenIGTLink device (at most 20 bytes, unique).
        self.device_names: dict[str, str] = device_name_map([*fixed, *self._meshes, *(f"{t}ToReference" for t in tools),
                                                             *(bone_transform_name(b) for b in bone_names)])
        self._names_changed = False
        self._encoded: dict[str, bytes] = {}  #: model name -> POLYDATA message (encoded once)
        self._last_live: dict[str, NDArray[np.float64]] = {}  #: tool -> last live reference_from_tool
        self.guidance_period_s = 1.0 / guidance_rate_hz
        self.pose_period_s = 1.0 / pose_rate_hz
        self._last_guidance = -1e9
        self._last_pose = -1e9
        self._last_tracking: bool | None = None
        self._connections_seen = 0
        self.sent_states = 0

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def models(self) -> list[str]:
        """Names of the models (``Bone_<name>``, ``Cut_<name>``) sent to each new client."""
        return list(self._meshes)

    def start(self) -> "SlicerStream":
        """Listen (raises :class:`~orthonav.core.errors.TrackingError` if the port is taken)."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Close every client and the port; never raises (an error is counted in :meth:`health`)."""
        try:
            self.server.stop()
        except Exception as e:  # noqa: BLE001 - the stream must not end a navigation run badly
            self._failed("stop", e)

    def __enter__(self) -> "SlicerStream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_clients(self, n: int = 1, timeout_s: float = 5.0) -> bool:
        return self.server.wait_for_clients(n, timeout_s)

    def health(self) -> StreamHealth:
        """Clients, states sent, errors caught (count and newest) and messages dropped."""
        with self._lock:
            errors, last = self.errors, self.last_error
        return StreamHealth(clients=self.server.n_clients, connections=self.server.accepted, sent_states=self.sent_states,
                            errors=errors, last_error=last, dropped=self.server.dropped, header_version=self.header_version)

    def device(self, name: str) -> str:
        """The device of ``name`` (a new name is added to :attr:`device_names`, unique)."""
        dev = self.device_names.get(name)
        if dev is None:
            self.device_names = device_name_map([name], taken=self.device_names)
            dev = self.device_names[name]
            self._names_changed = True  # the next state re-sends DeviceNames
        return dev

    # --- errors ---------------------------------------------------------------------------

    def _failed(self, what: str, e: BaseException) -> None:
        """Count, keep and log (rate-limited) an exception caught inside the stream."""
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            self.last_error = f"{what}: {type(e).__name__}: {e}"
            n, first = self.errors, self._last_log < -1e8
            quiet = now - self._last_log < LOG_EVERY_S
            if not quiet:
                self._last_log = now
        if not quiet:
            log.warning("Slicer stream error %d (%s): %s; navigation goes on", n, what, e, exc_info=first)

    # --- sending --------------------------------------------------------------------------

    def _model_message(self, name: str, t: float) -> bytes:
        data = self._encoded.get(name)
        if data is None:
            mesh = self._meshes[name]
            mesh = cut_plane_mesh(mesh) if isinstance(mesh, CutFrame) else mesh
            mesh = mesh.triangulate() if isinstance(mesh, pv.PolyData) else mesh
            poly = P.polydata_from_mesh(mesh)
            ras = P.PolyData(ras_from_lps_points(poly.points), poly.vertices, poly.lines, poly.polygons, poly.strips)
            data = P.pack_message("POLYDATA", self.device(name), P.pack_polydata(ras), timestamp_s=t)
            self._encoded[name] = data
        return data

    def send_models(self) -> int:
        """Send every model and the ``DeviceNames`` map to all clients; returns the number of
        models sent (a model that cannot be encoded is counted as an error and skipped: it is
        tried again for the next client)."""
        t = time.time()
        chunks = []
        for name in self._meshes:
            try:
                chunks.append(self._model_message(name, t))
            except Exception as e:  # noqa: BLE001 - one bad model must not hide the others
                self._failed(f"model {name}", e)
        chunks.append(self._names_message(t))
        self.server.send_bytes(b"".join(chunks))
        return len(chunks) - 1

    def _names_message(self, t: float) -> bytes:
        self._names_changed = False
        names = json.dumps(self.device_names, separators=(",", ":"), sort_keys=True)
        return P.pack_message("STRING", self.device(NAMES_DEVICE), P.pack_string(names), timestamp_s=t)

    def send_state(self, state: NavigationState, ct_from_reference: NDArray[np.float64] | None) -> bool:
        """Send one navigation state (call at tracker rate; poses and guidance are rate-limited).

        Never raises: an exception is counted in :meth:`health` and logged, and the next
        state is sent afresh. Returns True when this state was sent.
        """
        try:
            accepted = self.server.accepted
            if accepted > self._connections_seen:
                self._connections_seen = accepted  # tried once per new client, whatever happens
                self.send_models()
            now = time.time()
            if now - self._last_pose < self.pose_period_s and state.tracking == self._last_tracking:
                return False
            self._last_pose = now
            self._last_tracking = state.tracking
            self.server.send_bytes(self._state_message(state, ct_from_reference, now))
            self.sent_states += 1
            return True
        except Exception as e:  # noqa: BLE001 - a stream error must never stop navigation
            self._last_tracking = None  # send the next state at once
            self._failed("state", e)
            return False

    def _pose_chunk(self, name: str, m: NDArray[np.float64] | None, now: float) -> bytes:
        """A TRANSFORM of ``m`` on ``name``'s device, or (``m`` None) the hidden-tool message:
        STATUS NotVisible (v1) or a MISSING TRANSFORM at the last live pose (v2)."""
        dev = self.device(name)
        if m is not None:
            self._last_live[name] = m
            meta = {"TransformStatus": "OK"} if self.header_version == 2 else None
            return P.pack_message("TRANSFORM", dev, P.pack_transform(m), timestamp_s=now, version=self.header_version, metadata=meta)
        if self.header_version == 2:
            return P.pack_message("TRANSFORM", dev, P.pack_transform(self._last_live.get(name, np.eye(4))), timestamp_s=now, version=2,
                                  metadata={"TransformStatus": "MISSING"})
        status = P.Status(P.StatusCode.NOT_READY, 0, "NotVisible", f"{name.removesuffix('ToReference')} not visible")
        return P.pack_message("STATUS", dev, P.pack_status(status), timestamp_s=now)

    def _per_bone_poses(self, state: NavigationState, now: float) -> tuple[NDArray[np.float64] | None, list[bytes]]:
        """One array per bone: (the anchor's ``ct_from_reference`` or None, the pose messages)."""
        anchor = next(iter(state.references))
        live = state.bone_ct_from_tracker
        chunks: list[bytes] = []
        anchor_live = anchor in live
        ct_from_anchorref = None
        if anchor_live:
            ct_from_anchorref = np.asarray(state.tools[state.references[anchor]].ct_from_tool, dtype=np.float64)
            anchorref_from_tracker = invert(ct_from_anchorref) @ live[anchor]
        for name, ts in state.tools.items():
            m = None
            if anchor_live and ts.live and ts.bone in live:
                tracker_from_tool = invert(live[ts.bone]) @ np.asarray(ts.ct_from_tool, dtype=np.float64)
                m = anchorref_from_tracker @ tracker_from_tool  # two device frames: crosses the boundary unchanged
            chunks.append(self._pose_chunk(f"{name}ToReference", m, now))
        for bone in state.references:
            m = None
            if anchor_live and bone in live:
                anchor_ct_from_bone_ct = live[anchor] @ invert(live[bone])
                # Both ends are CT (patient) frames: flip the output (the one boundary) and the input (RAS_FROM_LPS = LPS_FROM_RAS).
                m = ras_from_lps_transform(anchor_ct_from_bone_ct @ RAS_FROM_LPS)
            chunks.append(self._pose_chunk(bone_transform_name(bone), m, now))
        return ct_from_anchorref, chunks

    def _state_message(self, state: NavigationState, ct_from_reference: NDArray[np.float64] | None, now: float) -> bytes:
        v2 = self.header_version == 2
        chunks: list[bytes] = []
        if state.references:  # one array per bone
            ct_from_anchorref, poses = self._per_bone_poses(state, now)
            if ct_from_anchorref is not None:
                meta = {"TransformStatus": "OK"} if v2 else None
                chunks.append(P.pack_message("TRANSFORM", self.device(REFERENCE_DEVICE), P.pack_transform(ras_from_lps_transform(ct_from_anchorref)),
                                             timestamp_s=now, version=self.header_version, metadata=meta))
            chunks += poses
            return self._status_and_guidance(state, now, chunks)
        registered = state.tracking and ct_from_reference is not None
        if registered:
            reference_from_ct = invert(ct_from_reference)
            meta = {"TransformStatus": "OK"} if v2 else None
            chunks.append(P.pack_message("TRANSFORM", self.device(REFERENCE_DEVICE), P.pack_transform(ras_from_lps_transform(ct_from_reference)),
                                         timestamp_s=now, version=self.header_version, metadata=meta))
        for name, ts in state.tools.items():
            dev = self.device(f"{name}ToReference")
            if registered and ts.live:
                # Tool-to-reference poses relate two device frames: they cross the boundary unchanged.
                m = reference_from_ct @ np.asarray(ts.ct_from_tool, dtype=np.float64)
                self._last_live[name] = m
                meta = {"TransformStatus": "OK"} if v2 else None
                chunks.append(P.pack_message("TRANSFORM", dev, P.pack_transform(m), timestamp_s=now, version=self.header_version, metadata=meta))
            elif v2:
                m = self._last_live.get(name, np.eye(4))
                chunks.append(P.pack_message("TRANSFORM", dev, P.pack_transform(m), timestamp_s=now, version=2,
                                             metadata={"TransformStatus": "MISSING"}))
            else:
                status = P.Status(P.StatusCode.NOT_READY, 0, "NotVisible", f"{name} not visible")
                chunks.append(P.pack_message("STATUS", dev, P.pack_status(status), timestamp_s=now))
        return self._status_and_guidance(state, now, chunks)

    def _status_and_guidance(self, state: NavigationState, now: float, chunks: list[bytes]) -> bytes:
        status_text = "TRACKING" if state.tracking else "NOT_TRACKING"
        chunks.append(P.pack_message("STRING", self.device(STATUS_DEVICE), P.pack_string(status_text), timestamp_s=now))
        if now - self._last_guidance >= self.guidance_period_s:
            rec = state_record(state)
            rec.pop("tools", None)
            chunks.append(P.pack_message("STRING", self.device(GUIDANCE_DEVICE), P.pack_string(json.dumps(rec, separators=(",", ":"))),
                                         timestamp_s=now))
            self._last_guidance = now
        if self._names_changed:  # a tool first seen in this state: the map has grown
            chunks.append(self._names_message(now))
        return b"".join(chunks)


__all__ = [
    "DEFAULT_PORT",
    "SlicerStream",
    "StreamHealth",
]
