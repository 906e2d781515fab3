"""open_source / run_track: the functions behind `orthonav track`."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from orthonav.core.errors import InputError
from orthonav.core.transforms import random_rigid
from orthonav.tracking import (
    IGTLClientSource,
    IGTLServerSource,
    RecordingWriter,
    ReplaySource,
    ToolDefinition,
    ToolPose,
    ToolSet,
    ToolStatus,
    TrackingFrame,
    default_toolset,
    open_source,
    read_recording,
    run_track,
    save_toolset,
)

#: The replay tests below check WHAT is taken from a replay (every frame, its live / not-visible
#: status, its pose), not timeouts: with the default 0.25 s tool timeout a busy CI machine can
#: take a replayed pose after it timed out (not live, pose None). Long timeouts. Timeouts on
#: replay have their own test (test_tracking_recording.py::test_replay_keeps_a_recorded_stale_pose_stale).
POINTER = ToolSet(tools=[ToolDefinition(name="Pointer", kind="pointer", timeout_s=120.0)])


def test_open_source_choices(tmp_path):
    tools = save_toolset(tmp_path / "tools.json", default_toolset())
    src = open_source(igtl=("127.0.0.1", 18999), tools=tools)
    assert isinstance(src, IGTLClientSource) and src.port == 18999
    assert src.store.timeout_of("Pointer") == 0.25
    assert isinstance(open_source(listen=0), IGTLServerSource)
    with pytest.raises(InputError, match="exactly one"):
        open_source()
    with pytest.raises(InputError, match="exactly one"):
        open_source(igtl=("a", 1), listen=2)
    with pytest.raises(InputError, match="--camera"):
        open_source(aruco="0", tools=tools)



@pytest.mark.parametrize("speed", [None, 20.0])
def test_run_track_ends_by_itself_at_the_end_of_a_replay(tmp_path, speed):
    """`track --replay` ran until Ctrl-C: with no duration and no stop event it must end after
    the recording's last frame, having taken every frame (as fast as read) or the last one."""
    rng = np.random.default_rng(1)
    rec = tmp_path / "in.jsonl"
    with RecordingWriter(rec) as w:
        for i in range(30):
            w.write(TrackingFrame({"Pointer": ToolPose(ToolStatus.LIVE, random_rigid(rng), 0.1, float(i), 0.01 * i)}, 0.01 * i, i))
    src = open_source(replay=rec, speed=speed, tools=POINTER)
    done = threading.Event()
    box = {}
    th = threading.Thread(target=lambda: (box.setdefault("s", run_track(src, duration_s=None)), done.set()), daemon=True)
    th.start()
    # an upper bound only (ends in ~0.1 s; ~10 s when every wake-up stalls 0.3 s): a hang still fails
    assert done.wait(60.0), "run_track did not end at the end of the recording"
    summary = box["s"]
    assert summary.tools["Pointer"].live_frames >= 1
    if speed is None:
        assert summary.frames == 30
    assert src.ended()

def test_run_track_replays_and_records_every_frame(tmp_path):
    rng = np.random.default_rng(0)
    rec = tmp_path / "in.jsonl"
    with RecordingWriter(rec) as w:
        for i in range(25):
            vis = i % 5 != 4
            tools = {"Pointer": ToolPose(ToolStatus.LIVE, random_rigid(rng), 0.1, float(i), float(i)) if vis
                     else ToolPose(ToolStatus.NOT_VISIBLE, None, float("nan"), float(i), float(i))}
            w.write(TrackingFrame(tools, 0.01 * i, i))
    seen = []
    stop = threading.Event()
    src = open_source(replay=rec, speed=None, tools=POINTER)
    assert isinstance(src, ReplaySource) and src.store.timeout_of("Pointer") == 120.0

    def on_update(frame, health):
        seen.append(frame)
        if src.finished.is_set():
            stop.set()

    # stop ends the run at the replay's end (~0.1 s; ~8 s when every wake-up stalls 0.3 s);
    # duration_s only bounds a hang, long enough that a busy machine is not cut short
    summary = run_track(src, duration_s=60.0, record_dir=tmp_path / "out", on_update=on_update, stop=stop)
    assert summary.frames == 25 and len(seen) >= 25
    ptr = summary.tools["Pointer"]
    assert ptr.live_frames == 20 and ptr.dropouts == 5
    back = list(read_recording(summary.recording))
    assert len(back) == 25
    orig = list(read_recording(rec))
    for a, b in zip(back, orig):
        if b.pose("Pointer") is None:
            assert a.pose("Pointer") is None
        else:
            np.testing.assert_array_equal(a.pose("Pointer"), b.pose("Pointer"))



def test_calibrate_tool_cli_from_a_recorded_pivot(tmp_path):
    from orthonav.core.transforms import make_rigid, rotation_about_axis
    from orthonav.cli.track import calibrate_tool_cli
    from orthonav.tracking import add_noise, load_toolset

    tip = np.array([0.5, 1.0, -148.0])
    pivot = np.array([0.0, 50.0, -900.0])
    rng = np.random.default_rng(1)
    rec = tmp_path / "pivot.jsonl"
    with RecordingWriter(rec) as w:
        for i in range(120):
            r = rotation_about_axis(rng.normal(size=3), np.radians(rng.uniform(-30, 30)))
            pose = add_noise(make_rigid(r, pivot - r @ tip), rng, 0.1, 0.05)
            w.write(TrackingFrame({"Pointer": ToolPose(ToolStatus.LIVE, pose, 0.1, float(i), float(i))}, 0.01 * i, i))
    # the tool file's Pointer with a long timeout (see POINTER): a busy machine must not time out
    # a replayed pose before collect_poses reads it; and the collection deadline is the product's
    # default (120 s) as one 0.3 s stall per pose already takes 30 s for 100 poses
    long = [t.model_copy(update={"timeout_s": 120.0}) if t.name == "Pointer" else t for t in default_toolset().tools]
    tools = save_toolset(tmp_path / "tools.json", ToolSet(tools=long))
    text = calibrate_tool_cli(tools, "Pointer", n_poses=100, replay=rec, timeout_s=120.0)
    assert "Pointer: tip" in text
    p = load_toolset(tools).by_name()["Pointer"]
    assert np.linalg.norm(p.tip_in_tool() - tip) < 0.3 and p.calibration_rms_mm < 0.5 and p.calibration_date
    assert p.timeout_s == 120.0  # the rewritten tool file keeps the tool's other settings
    with pytest.raises(InputError, match="not in the tool file"):
        calibrate_tool_cli(tools, "Nope", replay=rec)


def test_run_track_publishes_no_empty_recording_when_the_source_fails(tmp_path):
    """Review P2: a source whose start() raises left a header-only recording that replay rejects."""
    from orthonav.core.errors import TrackingError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = IGTLClientSource("127.0.0.1", port, reconnect=False, connect_timeout_s=1.0)
    with pytest.raises(TrackingError, match="cannot connect"):
        run_track(src, duration_s=1.0, record_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_stream_script_on_a_busy_port_leaves_no_partial_recording(tmp_path):
    """Review P2: the truth recording was opened before the server; a busy port leaked it."""
    from orthonav.core.errors import TrackingError
    from orthonav.tracking import stream_script

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(TrackingError, match="cannot listen"):
            stream_script(lambda t: {"Pointer": np.eye(4)}, port, duration_s=0.5, truth_path=tmp_path / "truth.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_tool_kind_is_checked_when_loading_a_tool_file(tmp_path):
    """Review P3: ToolDefinition.kind was a free string; a typo must fail loudly at load time."""
    import json

    from orthonav.core.errors import SchemaError
    from orthonav.tracking import load_toolset

    path = save_toolset(tmp_path / "tools.json", default_toolset())
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tools"][0]["kind"] = "pionter"
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="tools.json"):
        load_toolset(path)


def test_streamed_poses_are_stamped_with_their_sampling_time(tmp_path, monkeypatch):
    """CI failure 2026-12-05: the simulator stamped each pose with ``time.time()`` when it was
    sent, so a wall-clock step (a fresh machine's clock being set) or a stall between sampling
    and sending moved a pose's device time off its script time, and the demo's guidance,
    scored by device time, read 0.5 deg where 0.05 was due. Each pose now carries the wall
    clock at script time 0 plus its script time: here the wall clock jumps 5 s mid-stream and
    every recorded device time stays its script time plus one constant. The step is keyed to the
    stream (script time 0.2 s of 0.6 s), not to the wall: poses are sampled on both sides of it
    however the machine schedules the sender (a late sample is skipped, not queued)."""
    import time as real_time
    import types

    from orthonav.tracking import simulator
    from orthonav.tracking.recording import read_recording_frames

    step_at = 0.2  # script time (s) at which the wall clock jumps
    stepped = threading.Event()

    def script(t: float) -> dict:
        if t >= step_at:
            stepped.set()  # before this pose is sent: a sender reading the wall clock now reads +5 s
        return {"Pointer": np.eye(4)}

    def stepping_wall_clock() -> float:
        return real_time.time() + (5.0 if stepped.is_set() else 0.0)

    shim = types.SimpleNamespace(time=stepping_wall_clock, monotonic=real_time.monotonic, sleep=real_time.sleep,
                                 perf_counter=real_time.perf_counter)
    monkeypatch.setattr(simulator, "time", shim)
    epochs: list[float] = []
    stats = simulator.stream_script(script, 0, rate_hz=100.0, duration_s=0.6, truth_path=tmp_path / "truth.jsonl",
                                    on_start=epochs.append)
    frames = list(read_recording_frames(tmp_path / "truth.jsonl"))
    assert len(frames) == stats.samples and len(epochs) == 1
    script_times = np.array([f.script_time_s for f in frames])
    assert (script_times < step_at).any() and (script_times >= step_at).any()  # the clock stepped mid-stream
    offsets = np.array([f.frame.tools["Pointer"].device_time_s - f.script_time_s for f in frames])
    np.testing.assert_allclose(offsets - epochs[0], 0.0, rtol=0, atol=1e-6)  # (epoch ~1.8e9 s: no relative tolerance)
