"""PoseStore: timeouts on an injected clock, visibility, dropouts, update waiting, read-only poses."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from orthonav.core.transforms import random_rigid
from orthonav.tracking.frame import ToolStatus
from orthonav.tracking.store import PoseStore


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_timeout_boundary_is_inclusive_and_timed_out_carries_no_matrix():
    clock = FakeClock()
    store = PoseStore(default_timeout_s=0.25, clock=clock)
    pose = random_rigid(np.random.default_rng(0))
    store.put("Pointer", pose, device_time_s=1.0)  # received at clock time 100.0
    clock.t = 100.25  # age == timeout: still live
    f = store.snapshot()
    assert f.status("Pointer") is ToolStatus.LIVE
    np.testing.assert_array_equal(f.pose("Pointer"), pose)
    clock.t = 100.25 + 1e-9  # just above
    f = store.snapshot()
    assert f.status("Pointer") is ToolStatus.TIMED_OUT and f.pose("Pointer") is None
    assert f.tools["Pointer"].device_time_s == 1.0 and f.host_time_s == clock.t


def test_per_tool_timeouts():
    clock = FakeClock()
    store = PoseStore({"Saw": 1.0}, default_timeout_s=0.1, clock=clock)
    for tool in ("Saw", "Pointer"):
        store.put(tool, np.eye(4), device_time_s=1.0)
    assert store.timeout_of("Saw") == 1.0 and store.timeout_of("Pointer") == 0.1
    clock.t += 0.5
    f = store.snapshot()
    assert f.status("Saw") is ToolStatus.LIVE and f.status("Pointer") is ToolStatus.TIMED_OUT


def test_none_pose_is_not_visible_and_dropouts_count_live_to_not_live_transitions():
    clock = FakeClock()
    store = PoseStore(default_timeout_s=0.25, clock=clock)
    store.put("Pointer", np.eye(4), device_time_s=1.0)
    assert store.snapshot().status("Pointer") is ToolStatus.LIVE
    store.put("Pointer", None, device_time_s=2.0)
    f = store.snapshot()
    assert f.status("Pointer") is ToolStatus.NOT_VISIBLE and f.pose("Pointer") is None
    assert store.health_snapshot().dropouts == 1
    store.snapshot()  # still not visible: no second dropout
    assert store.health_snapshot().dropouts == 1
    store.put("Pointer", np.eye(4), device_time_s=3.0)
    assert store.snapshot().status("Pointer") is ToolStatus.LIVE
    clock.t += 1.0  # LIVE -> TIMED_OUT is a dropout too
    assert store.snapshot().status("Pointer") is ToolStatus.TIMED_OUT
    h = store.health_snapshot()
    assert h.dropouts == 2 and h.messages == 3


def test_wait_for_update_returns_true_after_a_newer_put_and_false_on_timeout():
    store = PoseStore()
    store.put("Pointer", np.eye(4), device_time_s=1.0)
    assert store.wait_for_update(0.0)  # newer than the last snapshot (there was none)
    store.snapshot()
    assert not store.wait_for_update(0.05)  # nothing new since the snapshot: times out
    waiting = threading.Event()
    result: dict = {}

    def waiter():
        waiting.set()
        result["got"] = store.wait_for_update(10.0)

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    assert waiting.wait(5.0)
    store.put("Pointer", np.eye(4), device_time_s=2.0)
    th.join(10.0)
    assert not th.is_alive() and result["got"] is True


def test_returned_matrices_are_read_only_copies():
    store = PoseStore(default_timeout_s=10.0)
    pose = np.eye(4)
    store.put("Pointer", pose, device_time_s=1.0)
    pose[0, 3] = 99.0  # the caller's array is not shared
    m = store.snapshot().pose("Pointer")
    assert m[0, 3] == 0.0
    with pytest.raises(ValueError):
        m[0, 3] = 5.0  # consumers sharing the frame cannot corrupt it
    assert store.snapshot().pose("Pointer")[0, 3] == 0.0


def test_count_extra_is_a_locked_counter():
    store = PoseStore()
    threads = [threading.Thread(target=lambda: [store.count_extra("coalesced", 1) for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.health_snapshot().extra["coalesced"] == 4000.0
