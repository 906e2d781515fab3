"""Stream-out to Slicer: poses relative to the reference in RAS, models, guidance strings;
device names within OpenIGTLink's 20 bytes; stream errors that never stop navigation; hidden
tools for v1 and v2 peers; the C++ OpenIGTLink library as the client on auto-planned knee and hip."""

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
from orthonav.tracking.tools import ToolDefinition, ToolSet
from test_igtl_interop import peer  # noqa: F401 - the C++ OpenIGTLink peer fixture (skips without g++ / the library)


def test_stream_sends_reference_relative_poses_models_and_guidance():
    geo = toy_geometry()
    sc = knee_scenario(geo, seed=3)
    cuts = {"distal_femur": cut_frame(geo.cut_point_mm, geo.cut_normal, geo.medial)}
    ctx = NavigationContext(sc.toolset, ct_from_reference=sc.ct_from_reference, cuts=cuts)
    t_saw = next(p for p in sc.phases if p.name == "saw_hold").t0_s + 0.1
    frame = next(iter(sc.frames(10.0, t0_s=t_saw, t1_s=t_saw + 0.15)))
    state = compute_state(frame, ctx, clock=None)
    bone = pv.Sphere(radius=30.0)
    # What is checked is the content of the stream, not timeouts: the client gives the two
    # transforms a long timeout (with the default 0.25 s, a busy CI machine can read the pose
    # after it timed out: its pose is then None, and ReferenceToRas is read after the loop).
    tools = ToolSet(tools=[ToolDefinition(name=n, kind="pointer", timeout_s=120.0) for n in ("SawToReference", "ReferenceToRas")])
    with SlicerStream(0, bones={"femur": bone}, cuts=cuts, pose_rate_hz=1e6) as stream:
        client = IGTLClientSource("127.0.0.1", stream.port, tools=tools)
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
    from orthonav.navigation import navigate_case
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


# --- device names (issue 12): every name the stream sends fits OpenIGTLink's 20 bytes ---------


KNEE_CUTS = ["distal_femur", "anterior_femur", "posterior_femur", "anterior_chamfer", "posterior_chamfer", "proximal_tibia"]


def test_device_names_are_short_unique_readable_and_stable():
    from orthonav.navigation.igtl_names import device_name_map

    names = ["ReferenceToRas", "Guidance", *(f"Cut_{c}" for c in KNEE_CUTS), "Bone_femur", "PointerToReference",
             "Bone_a_very_long_custom_bone_name", "Bone_a_very_long_custom_bone_name_2", "Cut_fémur_ü", "VeryLongToolNameToReference"]
    m = device_name_map(names)
    assert set(m) == set(names)
    assert all(len(d.encode("ascii")) <= 20 for d in m.values())
    assert len(set(m.values())) == len(m)  # collision-free
    assert m["Cut_anterior_chamfer"] == "Cut_anterior_chamfer"  # 20 bytes: fits, unchanged
    assert m["Cut_posterior_chamfer"] == "Cut_PostChamf"  # 21 bytes: readable abbreviation
    assert m["VeryLongToolNameToReference"].endswith("ToReference")
    # Stable across runs (SHA-1 of the name, no salt) and independent of the order of the names.
    assert m["Bone_a_very_long_custom_bone_name"] == "Bone_AVeryLongC_e052"
    assert device_name_map(reversed(names)) == m
    # An abbreviation that equals another device falls back to the hashed form; so do two equal abbreviations.
    clash = device_name_map(["Cut_PostChamf", "Cut_posterior_chamfer", "Cut_posterior__chamfer"])
    assert clash["Cut_PostChamf"] == "Cut_PostChamf"
    assert len(set(clash.values())) == 3 and all(v.startswith("Cut_PostChamf_") for k, v in clash.items() if k != "Cut_PostChamf")
    # A running stream adds a name without renaming what was already sent.
    more = device_name_map(["Cut_posterior_chamfer_2x"], taken=m)
    assert {k: more[k] for k in m} == m and more["Cut_posterior_chamfer_2x"] not in m.values()


# --- stream errors never stop navigation ------------------------------------------------------


def _toy_state():
    geo = toy_geometry()
    sc = knee_scenario(geo, seed=3)
    cuts = {"distal_femur": cut_frame(geo.cut_point_mm, geo.cut_normal, geo.medial)}
    ctx = NavigationContext(sc.toolset, ct_from_reference=sc.ct_from_reference, cuts=cuts)
    t_saw = next(p for p in sc.phases if p.name == "saw_hold").t0_s + 0.1
    frame = next(iter(sc.frames(10.0, t0_s=t_saw, t1_s=t_saw + 0.15)))
    return compute_state(frame, ctx, clock=None), ctx, cuts


def _read_messages(sock, until, timeout_s: float = 10.0):
    """Decode what the stream sends on a raw socket until ``until(messages)`` (or timeout)."""
    import time

    from orthonav.tracking.igtl_protocol import StreamParser

    parser, msgs = StreamParser(), []
    sock.settimeout(0.2)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not until(msgs):
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            continue
        if not data:
            break
        msgs += parser.feed(data)
    return msgs


def test_stream_errors_are_caught_counted_and_retried(monkeypatch):
    import socket

    from orthonav.navigation import stream as stream_module

    state, ctx, cuts = _toy_state()
    with SlicerStream(0, bones={"femur": pv.Sphere(radius=30.0), "broken": "not a mesh"}, cuts=cuts, pose_rate_hz=1e6) as stream:
        with socket.create_connection(("127.0.0.1", stream.port)) as sock:
            assert stream.wait_for_clients(1, 5.0)

            def broken_encoder(_m):
                raise RuntimeError("encoder exploded")

            monkeypatch.setattr(stream_module, "ras_from_lps_transform", broken_encoder)
            assert stream.send_state(state, ctx.ct_from_reference) is False  # never raises
            h = stream.health()
            assert h.errors == 2  # the broken model, then the state
            assert "encoder exploded" in h.last_error and h.sent_states == 0
            monkeypatch.undo()
            assert stream.send_state(state, ctx.ct_from_reference) is True  # retried: the next state goes out
            msgs = _read_messages(sock, lambda ms: sum(m.device == "DeviceNames" for m in ms) == 2)
            names = {m.device for m in msgs}
            assert {"Bone_femur", "Cut_distal_femur", "DeviceNames", "ReferenceToRas", "SawToReference"} <= names
            assert "Bone_broken" not in names
            # the map is sent with the models, and again once the first state named the tools
            maps = [json.loads(unpack_string(m.content)) for m in msgs if m.device == "DeviceNames"]
            assert maps[-1] == stream.device_names and "SawToReference" in maps[-1]
    assert stream.health().errors == 2


def test_hidden_tool_is_a_status_for_v1_and_a_missing_transform_for_v2():
    import dataclasses
    import socket

    from orthonav.navigation.state import NavStatus, ToolState
    from orthonav.tracking.igtl_protocol import unpack_transform

    state, ctx, _ = _toy_state()
    hidden = dataclasses.replace(state, tools={**state.tools, "Saw": ToolState(NavStatus.NOT_VISIBLE)})
    for version in (1, 2):
        with SlicerStream(0, pose_rate_hz=1e6, header_version=version) as stream:
            with socket.create_connection(("127.0.0.1", stream.port)) as sock:
                assert stream.wait_for_clients(1, 5.0)
                assert stream.send_state(state, ctx.ct_from_reference) and stream.send_state(hidden, ctx.ct_from_reference)
                msgs = _read_messages(sock, lambda ms: sum(m.device == "NavigationStatus" for m in ms) == 2)
        saw = [m for m in msgs if m.device == "SawToReference"]
        assert len(saw) == 2
        if version == 1:
            assert [m.type for m in saw] == ["TRANSFORM", "STATUS"] and all(m.header.version == 1 for m in msgs)
        else:
            assert [m.type for m in saw] == ["TRANSFORM", "TRANSFORM"] and all(m.header.version == 2 for m in saw)
            assert [m.metadata.get("TransformStatus") for m in saw] == ["OK", "MISSING"]
            # the missing tool stays where it was last seen (PLUS sends the last pose, not a jump to the origin)
            np.testing.assert_allclose(unpack_transform(saw[1].content), unpack_transform(saw[0].content))


def test_navigation_survives_a_failing_stream_and_misbehaving_clients(tmp_path, monkeypatch):
    """navigate_case with --stream-port, an encoder failing every third call, a client sending
    garbage, one leaving mid-stream, one resetting the connection: navigation runs to the end,
    says once that the stream failed, and its numbers are those of a run without stream (the
    replay of the recorded session, which streams nothing, reproduces every guidance number)."""
    import os
    import re
    import socket
    import struct
    import threading

    from orthonav.navigation import navigate_case, replay_session
    from orthonav.navigation import stream as stream_module
    from orthonav.phantoms.scenario import write_toy_case
    from orthonav.tracking.simulator import SimulatedSource

    calls = [0]
    real = stream_module.ras_from_lps_transform

    def flaky(m):
        calls[0] += 1
        if calls[0] % 3 == 0:
            raise ValueError("flaky encoder")
        return real(m)

    monkeypatch.setattr(stream_module, "ras_from_lps_transform", flaky)
    geo = write_toy_case(tmp_path / "case", resolution=30)
    short = dict(move_s=0.35, dwell_s=0.6, saw_hidden_s=0.3, sweep_s=0.8, hold_s=0.4, saw_errors=((2.0, 0.0, 0.0),))
    sc = knee_scenario(geo, seed=5, **short)
    source = SimulatedSource(sc.script, rate_hz=100.0, tools=sc.toolset, seed=5)
    events: list[str] = []
    port_box: list[int] = []
    listening = threading.Event()

    def progress(text: str) -> None:
        events.append(text)
        found = re.search(r"OpenIGTLink clients on 127\.0\.0\.1:(\d+)", text)
        if found:
            port_box.append(int(found.group(1)))
            listening.set()

    box: dict = {}

    def run() -> None:
        try:
            box["summary"] = navigate_case(tmp_path / "case", source, duration_s=sc.duration_s + 0.3, render=False, toolset=sc.toolset,
                                           check_points_ct_mm=dict(geo.targets_ct_mm), stream_port=0, progress=progress)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    nav = threading.Thread(target=run, daemon=True)
    nav.start()
    assert listening.wait(30.0), events
    port = port_box[0]
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(os.urandom(3000) + struct.pack(">H12s20sIIQQ", 1, b"TRANSFORM", b"x" * 20, 0, 0, 5, 0) + b"short")
    # A client that leaves in the middle of the stream.
    first = IGTLClientSource("127.0.0.1", port, reconnect=False)
    with first:
        assert first.wait_for_update(10.0)
    # A client that resets the connection after reading a little.
    rst = socket.create_connection(("127.0.0.1", port))
    rst.recv(100)
    rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rst.close()
    # A client connecting after all that still gets the models and live poses.
    with socket.create_connection(("127.0.0.1", port)) as late:
        msgs = _read_messages(late, lambda ms: {"Bone_femur", "Cut_distal_femur", "SawToReference"} <= {m.device for m in ms}, 15.0)
    assert {"Bone_femur", "Cut_distal_femur", "SawToReference", "NavigationStatus"} <= {m.device for m in msgs}
    nav.join(60.0)
    garbage.close()
    assert not nav.is_alive() and "error" not in box, box.get("error")
    s = box["summary"]
    assert calls[0] >= 3  # the encoder did fail
    assert s.registered, events
    assert sum("Slicer stream error" in e for e in events) == 1  # said once, not at tracker rate
    r = replay_session(s.session_dir, off_screen=True, render=False)
    assert r.replay_mismatches == 0 and r.states == s.states
    assert r.fre_mm == s.fre_mm and r.verification_mm == s.verification_mm


# --- the C++ OpenIGTLink library as the Slicer-side client, on auto-planned knee and hip ----

@pytest.fixture(scope="module")
def planned_cases(small_knee_case, small_hip_case, tmp_path_factory):
    """Copies of the small knee and hip phantom cases, segmented and auto-planned (the
    planner's own cut names: ``posterior_chamfer`` and friends)."""
    import shutil

    from orthonav.planning.auto import auto_plan
    from orthonav.segmentation.pipeline import segment_case

    out = {}
    for kind, case, side in (("knee", small_knee_case, None), ("hip", small_hip_case, "left")):
        root = tmp_path_factory.mktemp(f"stream_{kind}") / kind
        shutil.copytree(case.root, root)
        segment_case(root, anatomy="auto")
        auto_plan(root, side=side) if side else auto_plan(root)
        out[kind] = root
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["knee", "hip"])
def test_cpp_client_receives_every_model_cut_and_transform(kind, planned_cases, peer):
    import queue
    import subprocess
    import threading
    import time

    from orthonav.core.transforms import random_rigid
    from orthonav.navigation.inputs import load_navigation_inputs
    from orthonav.navigation.state import NavigationState, NavStatus, ToolState

    inputs = load_navigation_inputs(planned_cases[kind], surfaces=False)
    assert inputs.context.cuts, "the auto-plan has cuts"
    tools = [t for t in inputs.context.toolset.by_name() if t != inputs.context.reference]
    rng = np.random.default_rng(7)
    ct_from_reference = random_rigid(rng, max_translation_mm=200.0)
    ct_from_tool = {t: random_rigid(rng, max_translation_mm=300.0) for t in tools}
    hidden = tools[-1]
    live = NavigationState(sequence=1, host_time_s=time.monotonic(), tracking=True, tools={
        t: ToolState(NavStatus.NOT_VISIBLE) if t == hidden else ToolState(NavStatus.LIVE, ct_from_tool[t]) for t in tools})
    lost = NavigationState(sequence=2, host_time_s=time.monotonic(), tracking=False, reason="reference not visible",
                           tools={t: ToolState(NavStatus.NOT_VISIBLE) for t in tools})
    lines: queue.Queue[str] = queue.Queue()
    with SlicerStream(0, bones=inputs.bones, cuts=inputs.context.cuts, tools=tools, pose_rate_hz=1e6) as stream:
        proc = subprocess.Popen([str(peer), "list", str(stream.port), "100000"], stdout=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: [lines.put(x.rstrip("\n")) for x in proc.stdout], daemon=True)
        reader.start()
        try:
            assert stream.wait_for_clients(1, 10.0)
            assert stream.send_state(live, ct_from_reference) and stream.send_state(lost, ct_from_reference)
            got: list[str] = []
            while sum(" NavigationStatus " in x for x in got) < 2:
                got.append(lines.get(timeout=20.0))
            assert stream.health().errors == 0
        finally:
            stream.stop()  # the peer sees the server close and ends
            proc.wait(timeout=20)
    reader.join(10.0)
    while not lines.empty():
        got.append(lines.get())
    assert proc.returncode == 0 and got[-1].startswith("END"), got[-3:]
    msgs = [x.split(" ", 6) for x in got if x.startswith("MSG ")]
    # Every message: the reference library checked its CRC, header version 1, a device name of <= 20 bytes.
    assert all(m[5] == "CRCOK" for m in msgs), [m[:6] for m in msgs if m[5] != "CRCOK"]
    assert all(m[3] == "1" and 0 < len(m[2]) <= 20 for m in msgs)
    names = stream.device_names
    assert all(len(d) <= 20 for d in names.values()) and len(set(names.values())) == len(names)
    # Every bone model and every planned cut, under its mapped name, with every point and triangle.
    polys = {m[2]: m[6].split() for m in msgs if m[1] == "POLYDATA"}
    expected = {names[f"Bone_{b}"]: mesh for b, mesh in inputs.bones.items()}
    assert set(polys) == set(expected) | {names[f"Cut_{c}"] for c in inputs.context.cuts}
    for dev, mesh in expected.items():
        tri = mesh.triangulate()
        assert [int(x) for x in polys[dev]] == [tri.n_points, tri.n_cells], dev
    if kind == "knee":
        assert names["Cut_posterior_chamfer"] == "Cut_PostChamf" and "Cut_PostChamf" in polys
    device_map = next(m[6] for m in msgs if m[2] == "DeviceNames")
    assert json.loads(device_map) == names
    # Every live tool relative to the reference, the registration in RAS, the hidden tool as a STATUS.
    transforms = {m[2]: np.array(m[6].split(), float).reshape(3, 4) for m in msgs if m[1] == "TRANSFORM"}
    assert set(transforms) == {"ReferenceToRas"} | {names[f"{t}ToReference"] for t in tools if t != hidden}
    np.testing.assert_allclose(transforms["ReferenceToRas"], tf.ras_from_lps_transform(ct_from_reference)[:3], atol=1e-3)
    for t in tools:
        if t != hidden:
            want = tf.invert(ct_from_reference) @ ct_from_tool[t]
            np.testing.assert_allclose(transforms[names[f"{t}ToReference"]], want[:3], atol=1e-3)
    statuses = [m for m in msgs if m[1] == "STATUS"]
    assert {m[2] for m in statuses} == {names[f"{t}ToReference"] for t in tools}  # hidden once, then all when lost
    assert all(m[6].split() == ["13", "NotVisible"] for m in statuses)
    assert [m[6] for m in msgs if m[2] == "NavigationStatus"] == ["TRACKING", "NOT_TRACKING"]
