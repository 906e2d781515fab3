"""Stream navigation out to 3D Slicer over OpenIGTLink (OrthoNav is the server).

In Slicer: OpenIGTLinkIF -> new connector, type *client*, ``127.0.0.1:<port>``. What arrives,
with SlicerIGT's device naming:

* ``<Tool>ToReference`` TRANSFORM: each LIVE tool relative to the patient reference (RAS);
  a tool that is not LIVE gets a STATUS (not visible) on the same device.
* ``ReferenceToRas`` TRANSFORM: the registration (``ct_from_reference`` in RAS), so in Slicer
  ``<Tool>ToReference`` placed under ``ReferenceToRas`` puts the tool on the CT.
* POLYDATA: every bone model and planned cut (``Bone_<name>``, ``Cut_<name>``), RAS points,
  sent on start and to every newly connected client.
* STRING ``Guidance``: the state's guidance numbers as JSON, at most ``guidance_rate_hz``.
* STRING ``NavigationStatus``: ``TRACKING`` or ``NOT_TRACKING``.

Every LPS -> RAS conversion is done by the tracking engineer's
:class:`~orthonav.tracking.igtl_server.IGTLServer` / :mod:`orthonav.core.transforms`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import numpy as np
import pyvista as pv
from numpy.typing import NDArray

from orthonav.core.transforms import invert, ras_from_lps_transform
from orthonav.tracking import igtl_protocol as P
from orthonav.tracking.igtl_server import IGTLServer

from .guidance import CutFrame
from .overlay import cut_plane_mesh
from .session import state_record
from .state import NavigationState

DEFAULT_PORT = 18945


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
    guidance_rate_hz
        Maximum rate of the ``Guidance`` STRING.
    pose_rate_hz
        Maximum rate of pose updates (Slicer redraws per message); a change of tracking state
        is always sent at once.
    """

    def __init__(self, port: int = DEFAULT_PORT, *, host: str = "127.0.0.1", bones: Mapping[str, pv.PolyData] | None = None,
                 cuts: Mapping[str, CutFrame] | None = None, guidance_rate_hz: float = 10.0, pose_rate_hz: float = 60.0) -> None:
        self.server = IGTLServer(port, host=host)
        self.models: dict[str, pv.PolyData] = {f"Bone_{k}": v for k, v in (bones or {}).items()}
        self.models.update({f"Cut_{k}": cut_plane_mesh(cf) for k, cf in (cuts or {}).items()})
        self.guidance_period_s = 1.0 / guidance_rate_hz
        self.pose_period_s = 1.0 / pose_rate_hz
        self._last_guidance = -1e9
        self._last_pose = -1e9
        self._last_tracking: bool | None = None
        self._clients_seen = 0
        self.sent_states = 0

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> "SlicerStream":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> "SlicerStream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_clients(self, n: int = 1, timeout_s: float = 5.0) -> bool:
        return self.server.wait_for_clients(n, timeout_s)

    def send_models(self) -> None:
        """Send every model (to all clients)."""
        t = time.time()
        for name, mesh in self.models.items():
            self.server.send_polydata(name, mesh.triangulate() if isinstance(mesh, pv.PolyData) else mesh, device_time_s=t)

    def send_state(self, state: NavigationState, ct_from_reference: NDArray[np.float64] | None) -> None:
        """Send one navigation state (call at tracker rate; the guidance text is rate-limited)."""
        n = self.server.n_clients
        if n > self._clients_seen:
            self.send_models()
        self._clients_seen = n
        now = time.time()
        if now - self._last_pose < self.pose_period_s and state.tracking == self._last_tracking:
            return
        self._last_pose = now
        self._last_tracking = state.tracking
        chunks: list[bytes] = []
        if state.tracking and ct_from_reference is not None:
            reference_from_ct = invert(ct_from_reference)
            chunks.append(P.transform_message("ReferenceToRas", ras_from_lps_transform(ct_from_reference), timestamp_s=now))
            for name, ts in state.tools.items():
                dev = f"{name}ToReference"
                if ts.live:
                    # Tool-to-reference poses relate two device frames: they cross the boundary unchanged.
                    m = reference_from_ct @ ts.ct_from_tool
                    chunks.append(P.transform_message(dev, m, timestamp_s=now))
                else:
                    chunks.append(_not_visible(dev, name, now))
        else:
            for name in state.tools:
                chunks.append(_not_visible(f"{name}ToReference", name, now))
        status = "TRACKING" if state.tracking else "NOT_TRACKING"
        chunks.append(P.pack_message("STRING", "NavigationStatus", P.pack_string(status), timestamp_s=now))
        if now - self._last_guidance >= self.guidance_period_s:
            rec = state_record(state)
            rec.pop("tools", None)
            chunks.append(P.pack_message("STRING", "Guidance", P.pack_string(json.dumps(rec, separators=(",", ":"))), timestamp_s=now))
            self._last_guidance = now
        self.server.send_bytes(b"".join(chunks))
        self.sent_states += 1


def _not_visible(device: str, tool: str, t: float) -> bytes:
    status = P.Status(P.StatusCode.NOT_READY, 0, "NotVisible", f"{tool} not visible")
    return P.pack_message("STATUS", device, P.pack_status(status), timestamp_s=t)
