"""Client / server / simulator over real sockets on 127.0.0.1: values, timestamps, visibility."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pyigtl
import pytest

from orthonav.core.transforms import lps_from_ras_transform, random_rigid, ras_from_lps_transform
from orthonav.tracking import igtl_protocol as P
from orthonav.tracking.frame import ToolStatus
from orthonav.tracking.igtl_client import IGTLClientSource
from orthonav.tracking.igtl_server import IGTLServer, IGTLServerSource
from orthonav.tracking.recording import read_recording_frames
from orthonav.tracking.simulator import SimulatedSource, stream_script
from orthonav.tracking.tools import ToolDefinition, ToolSet


def f32(m: np.ndarray) -> np.ndarray:
    """What survives the float32 wire format (the RAS/LPS flips are exact)."""
    return m.astype(np.float32).astype(np.float64)


@pytest.fixture
def server():
    with IGTLServer(0) as s:
        yield s


@pytest.fixture
def client(server):
    c = IGTLClientSource("127.0.0.1", server.port)
    c.start()
    assert server.wait_for_clients(1, 5.0)
    yield c
    c.stop()


def test_poses_arrive_equal_in_lps_with_timestamps(server, client, wait_until):
    rng = np.random.default_rng(0)
    poses = {"Pointer": random_rigid(rng, max_translation_mm=400), "Reference": random_rigid(rng, max_translation_mm=400)}
    t_dev = 1732500000.25
    t_before = time.monotonic()
    server.send_poses(poses, t_dev)
    frame = wait_until(client, lambda f: all(f.status(k) is ToolStatus.LIVE for k in poses))
    for name, pose in poses.items():
        np.testing.assert_allclose(frame.pose(name), f32(pose), atol=1e-6)  # exactly the float32 value, in LPS
        np.testing.assert_allclose(frame.pose(name), pose, atol=1e-4)
        tp = frame.tools[name]
        assert tp.device_time_s == pytest.approx(t_dev, abs=1e-6)
        assert t_before <= tp.host_time_s <= time.monotonic()
    h = client.health()
    assert h.connected and h.messages == 2 and h.bad_messages == 0


def test_wire_carries_ras_as_an_independent_client_sees_it(server):
    """pyigtl (independent decoder) receives RAS = ras_from_lps_transform(our LPS pose)."""
    pose = random_rigid(np.random.default_rng(1), max_translation_mm=200)
    c = pyigtl.OpenIGTLinkClient("127.0.0.1", server.port, start_now=True)
    try:
        assert server.wait_for_clients(1, 5.0)
        server.send_poses({"Saw": pose}, 10.0)
        msg = c.wait_for_message("SawToTracker", timeout=5)
        assert msg is not None
        np.testing.assert_allclose(msg.matrix, ras_from_lps_transform(pose), atol=1e-4)
        np.testing.assert_allclose(lps_from_ras_transform(msg.matrix), pose, atol=1e-4)
    finally:
        c.stop()


def test_dropped_tool_is_not_visible_never_stale(server, client, wait_until):
    pose = random_rigid(np.random.default_rng(2))
    server.send_poses({"Pointer": pose}, 1.0)
    wait_until(client, lambda f: f.status("Pointer") is ToolStatus.LIVE)
    server.send_poses({"Pointer": None}, 2.0)
    frame = wait_until(client, lambda f: f.status("Pointer") is not ToolStatus.LIVE)
    assert frame.status("Pointer") is ToolStatus.NOT_VISIBLE and frame.pose("Pointer") is None
    # PLUS style: v2 TRANSFORM with TransformStatus INVALID
    server.send_poses({"Pointer": pose}, 3.0)
    wait_until(client, lambda f: f.status("Pointer") is ToolStatus.LIVE)
    server.send_poses({"Pointer": None}, 4.0, not_visible="transform")
    frame = wait_until(client, lambda f: f.status("Pointer") is not ToolStatus.LIVE)
    assert frame.status("Pointer") is ToolStatus.NOT_VISIBLE and frame.pose("Pointer") is None


def test_tdata_missing_tool_and_status_message(server, client, wait_until):
    rng = np.random.default_rng(3)
    a, b = random_rigid(rng), random_rigid(rng)
    tdata = P.pack_tdata([("Pointer", ras_from_lps_transform(a)), ("Saw", ras_from_lps_transform(b))])
    server.send_bytes(P.pack_message("TDATA", "Tracker", tdata, timestamp_s=5.0))
    frame = wait_until(client, lambda f: f.status("Saw") is ToolStatus.LIVE and f.status("Pointer") is ToolStatus.LIVE)
    np.testing.assert_allclose(frame.pose("Saw"), b, atol=1e-4)
    server.send_bytes(P.pack_message("TDATA", "Tracker", P.pack_tdata([("Pointer", ras_from_lps_transform(a))]), timestamp_s=6.0))
    frame = wait_until(client, lambda f: f.status("Saw") is ToolStatus.NOT_VISIBLE)
    assert frame.status("Pointer") is ToolStatus.LIVE
    server.send_status("PointerToTracker", P.Status(P.StatusCode.NOT_READY))
    wait_until(client, lambda f: f.status("Pointer") is ToolStatus.NOT_VISIBLE)


def test_no_update_beyond_timeout_is_timed_out(wait_until):
    tools = ToolSet(tools=[ToolDefinition(name="Pointer", kind="pointer", timeout_s=0.05)])
    with IGTLServer(0) as server:
        c = IGTLClientSource("127.0.0.1", server.port, tools=tools)
        with c:
            assert server.wait_for_clients(1, 5.0)
            server.send_poses({"Pointer": np.eye(4)}, 1.0)
            frame = wait_until(c, lambda f: f.status("Pointer") is ToolStatus.LIVE)
            received = frame.tools["Pointer"].host_time_s
            # nothing more arrives: wait (on the update event, which times out) past the timeout
            assert not c.wait_for_update(0.08)
            frame = c.latest()
            assert frame.host_time_s - received > 0.05
            assert frame.status("Pointer") is ToolStatus.TIMED_OUT and frame.pose("Pointer") is None
            assert c.health().dropouts == 1


def test_reconnects_after_peer_returns_and_marks_tools_not_visible(wait_until):
    with IGTLServer(0) as server:
        port = server.port
        c = IGTLClientSource("127.0.0.1", port, max_backoff_s=0.5)
        c.start()
        assert server.wait_for_clients(1, 5.0)
        server.send_poses({"Pointer": np.eye(4)}, 1.0)
        wait_until(c, lambda f: f.status("Pointer") is ToolStatus.LIVE)
    try:
        # server gone: tools are not visible at once, not stale
        wait_until(c, lambda f: f.status("Pointer") is ToolStatus.NOT_VISIBLE)
        assert not c.health().connected
        with IGTLServer(port) as server2:
            t0 = time.monotonic()
            assert server2.wait_for_clients(1, 2.0)
            assert time.monotonic() - t0 < 1.0
            server2.send_poses({"Pointer": np.eye(4)}, 2.0)
            wait_until(c, lambda f: f.status("Pointer") is ToolStatus.LIVE)
            assert c.health().reconnects == 1
    finally:
        c.stop()


def test_garbage_and_bad_crc_on_a_live_socket_are_counted_and_stream_continues(server, client, wait_until):
    pose = random_rigid(np.random.default_rng(5))
    bad = bytearray(P.transform_message("PointerToTracker", np.eye(4)))
    bad[-3] ^= 0x10
    server.send_bytes(b"\x00garbage\x01\x02" * 50 + bytes(bad))
    server.send_poses({"Pointer": pose}, 7.0)
    frame = wait_until(client, lambda f: f.status("Pointer") is ToolStatus.LIVE)
    np.testing.assert_allclose(frame.pose("Pointer"), pose, atol=1e-4)
    h = client.health()
    assert h.bad_messages >= 2 and h.extra["bad_crc"] == 1 and h.connected


def test_refused_connection_without_reconnect_raises():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    from orthonav.core.errors import TrackingError

    with pytest.raises(TrackingError, match="cannot connect"):
        IGTLClientSource("127.0.0.1", port, reconnect=False).start()


def test_server_source_receives_pushed_poses_from_pyigtl(wait_until):
    pose = random_rigid(np.random.default_rng(6), max_translation_mm=300)
    with IGTLServerSource(0) as src:
        c = pyigtl.OpenIGTLinkClient("127.0.0.1", src.port, start_now=True)
        try:
            assert src.wait_for_clients(1, 5.0)
            c.send_message(pyigtl.TransformMessage(ras_from_lps_transform(pose), device_name="DrillToTracker", timestamp=3.5))
            frame = wait_until(src, lambda f: f.status("Drill") is ToolStatus.LIVE)
            np.testing.assert_allclose(frame.pose("Drill"), f32(pose), atol=1e-6)
            assert frame.tools["Drill"].device_time_s == pytest.approx(3.5, abs=1e-6)
        finally:
            c.stop()


def test_simulated_source_noise_statistics(wait_until):
    true = random_rigid(np.random.default_rng(7), max_translation_mm=100)
    # the saw is visible for the first 50 ms of the script, then lost: it must turn not visible
    src = SimulatedSource(lambda t: {"Pointer": true, "Saw": true if t < 0.05 else None}, rate_hz=500, tracker_noise_mm=0.2, seed=1)
    errs = []
    saw_seen = set()
    with src:
        while len(errs) < 200:
            assert src.wait_for_update(2.0)
            f = src.latest()
            saw_seen.add(f.status("Saw"))
            p = f.pose("Pointer")
            if p is not None:
                errs.append(p[:3, 3] - true[:3, 3])
        f = wait_until(src, lambda fr: fr.tools["Saw"].device_time_s >= 0.05)
        assert f.status("Saw") is ToolStatus.NOT_VISIBLE and f.pose("Saw") is None
    assert ToolStatus.LIVE in saw_seen
    e = np.array(errs)
    assert 0.15 < e.std() < 0.25  # sigma 0.2 mm per axis
    assert np.abs(e.mean(axis=0)).max() < 0.06


def test_stream_script_over_socket_with_truth_recording(tmp_path):
    def script(t):
        pose = np.eye(4)
        pose[:3, 3] = [10.0 * t, 0.0, 100.0]
        return {"Pointer": pose, "Saw": None}

    port_box: list[int] = []
    listening = threading.Event()
    result = {}

    def run():
        result["stats"] = stream_script(
            script, 0, rate_hz=200, duration_s=0.6, truth_path=tmp_path / "truth.jsonl",
            tracker_noise_mm=0.0, rotation_noise_deg=0.0, wait_for_client_s=5.0,
            on_listening=lambda p: (port_box.append(p), listening.set()),
        )

    th = threading.Thread(target=run)
    th.start()
    assert listening.wait(5.0)
    c = IGTLClientSource("127.0.0.1", port_box[0])
    received = []
    with c:
        while th.is_alive() or c.wait_for_update(0.0):
            if c.wait_for_update(0.2):
                f = c.latest()
                if f.pose("Pointer") is not None:
                    received.append(f.pose("Pointer")[0, 3])
                assert f.status("Saw") in (ToolStatus.NOT_VISIBLE, ToolStatus.NEVER_SEEN)
    th.join(5.0)
    stats = result["stats"]
    assert stats.rate_hz > 150 and stats.samples >= 100
    frames = list(read_recording_frames(tmp_path / "truth.jsonl"))
    assert len(frames) == stats.samples
    last = frames[-1]
    np.testing.assert_allclose(last.frame.pose("Pointer"), last.truth["Pointer"])  # no noise requested
    assert last.truth["Saw"] is None and last.frame.status("Saw") is ToolStatus.NOT_VISIBLE
    # what the client saw is what was recorded as sent (float32 on the wire)
    sent_x = np.array([fr.frame.pose("Pointer")[0, 3] for fr in frames])
    assert received and all(np.abs(sent_x - x).min() < 1e-5 for x in received)


def _thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) of one thread of this process, from /proc (Linux)."""
    fields = open(f"/proc/self/task/{native_id}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread CPU time needs Linux /proc")
def test_cpu_is_idle_while_waiting_to_reconnect_and_while_connected_without_data():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = IGTLClientSource("127.0.0.1", port, max_backoff_s=0.5)
    with c:
        tid = c._thread.native_id  # the receiver thread only: other tests' threads do not count
        cpu0, wall0 = _thread_cpu_s(tid), time.monotonic()
        assert not c.wait_for_update(1.0)
        cpu_waiting = (_thread_cpu_s(tid) - cpu0) / (time.monotonic() - wall0)
        with IGTLServer(port) as server:
            assert server.wait_for_clients(1, 2.0)
            cpu0, wall0 = _thread_cpu_s(tid), time.monotonic()
            assert not c.wait_for_update(1.0)
            cpu_connected = (_thread_cpu_s(tid) - cpu0) / (time.monotonic() - wall0)
    # clock ticks are 10 ms: a busy loop would show ~1.0, an idle thread 0 or one tick
    assert cpu_waiting <= 0.02 and cpu_connected <= 0.02, (cpu_waiting, cpu_connected)


def test_slow_client_never_blocks_the_sender_and_drops_are_counted():
    with IGTLServer(0, max_queue=8) as server:
        lazy = socket.socket()
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.connect(("127.0.0.1", server.port))  # connects, never reads
        try:
            assert server.wait_for_clients(1, 5.0)
            chunk = P.transform_message("PointerToTracker", np.eye(4)) * 600  # ~64 kB
            t0 = time.monotonic()
            for _ in range(400):  # ~25 MB: far more than the socket buffers hold
                server.send_bytes(chunk)
            assert time.monotonic() - t0 < 5.0
            assert server.dropped > 0
        finally:
            lazy.close()


def test_truncated_and_oversized_messages_on_the_wire(server, client, wait_until):
    good = P.transform_message("PointerToTracker", np.eye(4), timestamp_s=1.0)
    huge = bytearray(good)
    huge[42:50] = (1 << 40).to_bytes(8, "big")
    server.send_bytes(good[:70] + bytes(huge) + good[:20])
    pose = random_rigid(np.random.default_rng(9))
    for _ in range(3):
        server.send_poses({"Pointer": pose}, 2.0)
    frame = wait_until(client, lambda f: f.pose("Pointer") is not None and f.tools["Pointer"].device_time_s == 2.0)
    np.testing.assert_allclose(frame.pose("Pointer"), pose, atol=1e-4)
    h = client.health()
    assert h.connected and h.bad_messages >= 2 and h.extra["oversized"] >= 1


def test_pyigtl_server_to_our_client():
    pose = random_rigid(np.random.default_rng(10), max_translation_mm=300)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    try:
        c = IGTLClientSource("127.0.0.1", port)
        with c:
            assert c.wait_connected(5.0)
            deadline = time.monotonic() + 5.0
            while c.latest().status("Saw") is not ToolStatus.LIVE:  # pyigtl sends only once connected
                assert time.monotonic() < deadline
                server.send_message(pyigtl.TransformMessage(ras_from_lps_transform(pose), device_name="SawToTracker", timestamp=12.0), wait=True)
                c.wait_for_update(0.1)
            frame = c.latest()
        np.testing.assert_allclose(frame.pose("Saw"), f32(pose), atol=1e-6)
        assert frame.tools["Saw"].device_time_s == pytest.approx(12.0, abs=1e-6)
    finally:
        server.stop()


def test_thousands_of_mutated_messages_on_a_live_socket(server, client, wait_until):
    """Fuzz over the wire: the client stays connected, counts the damage, keeps the last good pose."""
    rng = np.random.default_rng(11)
    chunks = []
    for i in range(3000):
        pose = random_rigid(rng, max_translation_mm=200)
        raw = bytearray(P.transform_message("PointerToTracker", ras_from_lps_transform(pose), timestamp_s=1.0 + i))
        kind = rng.integers(0, 6)
        if kind == 1:
            raw[58 + int(rng.integers(0, 48))] ^= 0xFF
        elif kind == 2:
            raw = raw[: int(rng.integers(1, len(raw)))]
        elif kind == 3:
            raw = bytearray(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8)) + raw
        elif kind == 4:
            raw[42:50] = (1 << 40).to_bytes(8, "big")
        chunks.append(bytes(raw))
    final = random_rigid(rng)
    # a tracker keeps sending: the message after a damaged one may be lost with it, not later ones
    chunks += [P.transform_message("PointerToTracker", ras_from_lps_transform(final), timestamp_s=99999.0)] * 3
    server.send_bytes(b"".join(chunks))
    frame = wait_until(client, lambda f: f.tools.get("Pointer") is not None and f.tools["Pointer"].device_time_s == 99999.0)
    np.testing.assert_allclose(frame.pose("Pointer"), final, atol=1e-4)
    h = client.health()
    assert h.connected and h.reconnects == 0 and h.bad_messages > 500
    assert h.messages + h.extra["coalesced"] > 1000


def test_position_message_is_a_pose(server, client, wait_until):
    pose = random_rigid(np.random.default_rng(12), max_translation_mm=250)
    server.send_bytes(P.pack_message("POSITION", "DrillToTracker", P.pack_position(ras_from_lps_transform(pose)), timestamp_s=4.0))
    frame = wait_until(client, lambda f: f.status("Drill") is ToolStatus.LIVE)
    np.testing.assert_allclose(frame.pose("Drill"), pose, atol=1e-4)
