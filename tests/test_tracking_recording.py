"""Recording format, PLUS sequence reading (real data) and replay."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orthonav.core.errors import InputError, SchemaError
from orthonav.core.transforms import invert, lps_from_ras_transform, random_rigid, ras_from_lps_transform, validate_rigid
from orthonav.tracking import (
    RecordingWriter,
    ReplaySource,
    ToolDefinition,
    ToolPose,
    ToolSet,
    ToolStatus,
    TrackingFrame,
    read_plus_sequence,
    read_recording,
    read_recording_frames,
)

PLUS = "plus_sequence/SpinePhantomFreehand.igs.mha"


def _long_timeouts(*names: str) -> ToolSet:
    """Tools with a 120 s timeout, for replay tests that check WHAT is replayed: with the default
    0.25 s a busy CI machine can read a replayed pose after it timed out (its pose is then None).
    Timeouts on replay have their own test (test_replay_keeps_a_recorded_stale_pose_stale)."""
    return ToolSet(tools=[ToolDefinition(name=n, kind="pointer", timeout_s=120.0) for n in names])


def _frames(n: int = 20) -> list[TrackingFrame]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        t = 100.0 + 0.01 * i
        tools = {
            "Pointer": ToolPose(ToolStatus.LIVE, random_rigid(rng), 0.1, 1e9 + i, t),
            "Saw": ToolPose(ToolStatus.NOT_VISIBLE, None, math.nan, 1e9 + i, t) if i % 3 else ToolPose(ToolStatus.TIMED_OUT, None, 0.2, math.nan, t - 1),
        }
        out.append(TrackingFrame(tools, t, i))
    return out


def test_recording_round_trip_is_exact(tmp_path):
    frames = _frames()
    path = tmp_path / "rec.jsonl"
    with RecordingWriter(path, source="test") as w:
        for f in frames:
            w.write(f, truth={"Pointer": f.pose("Pointer"), "Saw": None})
        assert not path.exists()  # atomic: appears only on close
    back = list(read_recording_frames(path))
    assert len(back) == len(frames)
    for rf, f in zip(back, frames):
        assert rf.frame.sequence == f.sequence and rf.frame.host_time_s == f.host_time_s
        np.testing.assert_array_equal(rf.frame.pose("Pointer"), f.pose("Pointer"))
        np.testing.assert_array_equal(rf.truth["Pointer"], f.pose("Pointer"))
        for name in f.tools:
            a, b = rf.frame.tools[name], f.tools[name]
            assert a.status is b.status
            assert (math.isnan(a.device_time_s) and math.isnan(b.device_time_s)) or a.device_time_s == b.device_time_s


def test_failed_recording_leaves_nothing(tmp_path):
    path = tmp_path / "rec.jsonl"
    with pytest.raises(RuntimeError):
        with RecordingWriter(path) as w:
            w.write(_frames(1)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_bad_recordings_name_the_file_and_line(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list(read_recording(tmp_path / "missing.jsonl"))
    p = tmp_path / "bad.jsonl"
    p.write_text('{"format": "something else"}\n')
    with pytest.raises(SchemaError, match="not an OrthoNav recording"):
        list(read_recording(p))
    p.write_text('{"format": "orthonav.tracking.recording", "version": 99}\n')
    with pytest.raises(SchemaError, match="newer"):
        list(read_recording(p))
    p.write_text('{"format": "orthonav.tracking.recording", "version": 1}\n{"tools": {"A": {"status": "bogus"}}}\n')
    with pytest.raises(SchemaError, match="line 2"):
        list(read_recording(p))


def test_plus_sequence_real_data(shared_data):
    frames = read_plus_sequence(shared_data / PLUS)
    assert len(frames) == 21
    f0 = frames[0]
    assert set(f0.tools) == {"Probe", "Reference", "Stylus"}
    assert f0.host_time_s == pytest.approx(215.102186)
    assert all(b.host_time_s > a.host_time_s for a, b in zip(frames, frames[1:]))
    # frame 0 ProbeToTrackerTransform from the file header, converted from RAS to LPS
    probe_ras = np.array(
        [0.231245, 0.951424, -0.203269, 172.641, -0.127436, -0.17751, -0.975833, -98.0022,
         -0.964513, 0.25156, 0.0801977, -22.0262, 0, 0, 0, 1]).reshape(4, 4)
    np.testing.assert_allclose(f0.pose("Probe"), lps_from_ras_transform(probe_ras))
    for f in frames:
        for name in ("Probe", "Reference", "Stylus"):
            p = f.pose(name)
            if p is not None:
                validate_rigid(p, name=name, tol=1e-4)  # real tracker poses are rigid
    # reference-relative pose does not depend on the RAS/LPS choice
    ref_from_probe = invert(f0.pose("Reference")) @ f0.pose("Probe")
    ras_ref = ras_from_lps_transform(f0.pose("Reference"))  # the file's ReferenceToTracker, back in RAS
    np.testing.assert_allclose(ref_from_probe, invert(ras_ref) @ probe_ras, atol=1e-9)
    # the probe moves ~1 mm between frames in this freehand sweep; the reference barely moves
    d_probe = np.linalg.norm(frames[-1].pose("Probe")[:3, 3] - f0.pose("Probe")[:3, 3])
    d_ref = np.linalg.norm(frames[-1].pose("Reference")[:3, 3] - f0.pose("Reference")[:3, 3])
    assert d_probe > 5 * d_ref


def test_plus_reader_rejects_non_plus(tmp_path):
    p = tmp_path / "x.mha"
    p.write_text("ObjectType = Image\nNDims = 3\nElementDataFile = LOCAL\n")
    with pytest.raises(InputError, match="ToTrackerTransform"):
        read_plus_sequence(p)


def test_replay_as_fast_as_consumed_gives_every_frame_in_order(tmp_path):
    frames = _frames(30)
    path = tmp_path / "rec.jsonl"
    with RecordingWriter(path) as w:
        for f in frames:
            w.write(f)
    got = []
    with ReplaySource(path, speed=None, tools=_long_timeouts("Pointer", "Saw")) as src:
        while len(got) < len(frames):
            assert src.wait_for_update(2.0)
            got.append(src.latest())
        assert src.finished.wait(2.0)
    for g, f in zip(got, frames):
        np.testing.assert_array_equal(g.pose("Pointer"), f.pose("Pointer"))
        assert g.status("Saw") is ToolStatus.NOT_VISIBLE  # recorded not-live -> not visible, never a pose
        assert g.tools["Pointer"].device_time_s == f.tools["Pointer"].device_time_s


def test_replay_plus_at_recorded_speed(shared_data):
    frames = read_plus_sequence(shared_data / PLUS)
    span = frames[-1].host_time_s - frames[0].host_time_s  # ~1.8 s
    import time

    with ReplaySource(shared_data / PLUS, speed=4.0, tools=_long_timeouts("Probe", "Reference", "Stylus")) as src:
        t0 = time.monotonic()
        assert src.finished.wait(10.0)
        elapsed = time.monotonic() - t0
        last = src.latest()
    # never faster than 4x; the upper bound only has to catch "speed ignored" (1x = span ~1.8 s),
    # so it leaves a 1 s margin for a loaded machine
    assert span / 4.0 * 0.9 < elapsed < span / 4.0 + 1.0
    np.testing.assert_array_equal(last.pose("Stylus"), frames[-1].pose("Stylus"))


def test_recording_file_gets_the_usual_mode_not_0600(tmp_path):
    """Review P2: the writer reimplemented the atomic write and left mkstemp's 0600."""
    import os

    umask = os.umask(0)  # read the process umask (setting it is the only way), then restore it
    os.umask(umask)
    path = tmp_path / "rec.jsonl"
    with RecordingWriter(path) as w:
        w.write(_frames(1)[0])
    assert (os.stat(path).st_mode & 0o777) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["rec.jsonl"]  # no temporary left behind
    w2 = RecordingWriter(tmp_path / "gone.jsonl")
    w2.write(_frames(1)[0])
    w2.abort()
    w2.abort()  # twice is fine
    assert [p.name for p in tmp_path.iterdir()] == ["rec.jsonl"]


def test_replay_keeps_a_recorded_stale_pose_stale(tmp_path):
    """Review P3: replay stamped every pose 0 s old, so a pose already stale when recorded was LIVE."""
    from orthonav.tracking import ToolDefinition, ToolSet

    path = tmp_path / "rec.jsonl"
    pose = random_rigid(np.random.default_rng(3))
    with RecordingWriter(path) as w:
        # the Pointer pose was received 2 s before this frame was taken; the Saw pose just now
        w.write(TrackingFrame({"Pointer": ToolPose(ToolStatus.LIVE, pose, 0.1, 5.0, 98.0),
                               "Saw": ToolPose(ToolStatus.LIVE, pose, 0.1, 5.0, 99.99)}, 100.0, 1))
    tools = ToolSet(tools=[ToolDefinition(name="Pointer", kind="pointer", timeout_s=1.0),
                           ToolDefinition(name="Saw", kind="saw", timeout_s=1.0)])
    with ReplaySource(path, speed=None, tools=tools) as src:
        assert src.wait_for_update(5.0)
        frame = src.latest()
    assert frame.status("Pointer") is ToolStatus.TIMED_OUT and frame.pose("Pointer") is None
    assert frame.status("Saw") is ToolStatus.LIVE
