"""Stream-out to Slicer: poses relative to the reference in RAS, models, guidance strings."""

from __future__ import annotations

import json

import numpy as np
import pyvista as pv
import pytest

from orthonav.core import transforms as tf
from orthonav.navigation.guidance import cut_frame
from orthonav.navigation.state import NavigationContext, compute_state
from orthonav.navigation.stream import SlicerStream
from orthonav.phantoms.scenario import knee_scenario, toy_geometry
from orthonav.tracking.igtl_client import IGTLClientSource
from orthonav.tracking.igtl_protocol import unpack_string


def test_stream_sends_reference_relative_poses_models_and_guidance():
    geo = toy_geometry()
    sc = knee_scenario(geo, seed=3)
    cuts = {"distal_femur": cut_frame(geo.cut_point_mm, geo.cut_normal, geo.medial)}
    ctx = NavigationContext(sc.toolset, ct_from_reference=sc.ct_from_reference, cuts=cuts)
    t_saw = next(p for p in sc.phases if p.name == "saw_hold").t0_s + 0.1
    frame = next(iter(sc.frames(10.0, t0_s=t_saw, t1_s=t_saw + 0.15)))
    state = compute_state(frame, ctx, clock=None)
    bone = pv.Sphere(radius=30.0)
    with SlicerStream(0, bones={"femur": bone}, cuts=cuts, pose_rate_hz=1e6) as stream:
        client = IGTLClientSource("127.0.0.1", stream.port)
        with client:
            assert stream.wait_for_clients(1, 5.0)
            # Send until the client has the pose (no sleeps: wait on the client's update event).
            got = None
            for _ in range(50):
                stream.send_state(state, ctx.ct_from_reference)
                if client.wait_for_update(0.2):
                    got = client.latest().pose("SawToReference")
                    if got is not None:
                        break
            assert got is not None
            # Our client reads every transform as RAS-output and flips it once; undo that to see the wire.
            wire_saw_to_ref = tf.lps_from_ras_transform(got)
            ct_from_saw = state.tools["Saw"].ct_from_tool
            np.testing.assert_allclose(wire_saw_to_ref, tf.invert(sc.ct_from_reference) @ ct_from_saw, atol=1e-3)  # float32
            ref_to_ras = client.latest().pose("ReferenceToRas")
            np.testing.assert_allclose(ref_to_ras, sc.ct_from_reference, atol=1e-3)
            # Slicer composes ReferenceToRas @ SawToReference: the saw lands at its RAS pose.
            wire_ref_to_ras = tf.ras_from_lps_transform(ref_to_ras)
            np.testing.assert_allclose(wire_ref_to_ras @ wire_saw_to_ref, tf.ras_from_lps_transform(ct_from_saw), atol=1e-3)
            msgs = client.messages()
            for _ in range(20):
                if {"Bone_femur", "Cut_distal_femur", "Guidance"} <= {m.device for m in msgs}:
                    break
                client.wait_for_update(0.1)
                stream.send_state(state, ctx.ct_from_reference)
                msgs += client.messages()
            names = {m.device for m in msgs}
            assert {"Bone_femur", "Cut_distal_femur", "Guidance", "NavigationStatus"} <= names
            guidance = [m for m in msgs if m.device == "Guidance"][0]
            data = json.loads(unpack_string(guidance.content))
            assert data["saw"]["distal_femur"]["flexion_deg"] == pytest.approx(state.saw["distal_femur"].flexion_deg)


def test_navigate_with_a_busy_stream_port_fails_cleanly(tmp_path):
    """The Slicer port is taken: navigate_case raises TrackingError and leaves no half-written session files."""
    import socket

    from orthonav.core.errors import TrackingError
    from orthonav.navigation.navigate import navigate_case
    from orthonav.phantoms.scenario import write_toy_case
    from orthonav.tracking.simulator import SimulatedSource

    geo = write_toy_case(tmp_path / "case", resolution=30)
    sc = knee_scenario(geo, seed=3)
    source = SimulatedSource(sc.script, rate_hz=50.0, tools=sc.toolset)
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(TrackingError, match="cannot listen"):
            navigate_case(tmp_path / "case", source, duration_s=1.0, render=False, toolset=sc.toolset,
                          stream_port=busy.getsockname()[1])
    finally:
        busy.close()
    leftovers = [p.name for p in (tmp_path / "case").rglob("*") if p.name.startswith(".") or p.suffix == ".part"]
    assert leftovers == []
    assert source._thread is None  # the tracker source was never started
