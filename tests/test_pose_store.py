"""PoseStore: timeouts on an injected clock, visibility, dropouts, update waiting, read-only poses."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from orthonav.core.transforms import random_rigid
from orthonav.tracking import PoseStore, ToolStatus


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



def test_a_batch_of_puts_wakes_waiters_once_complete():
    """A consumer never wakes on half a tracker sample: inside batch() the update is not yet
    visible to wait_for_update; at the end of the batch it is, with every tool of the sample."""
    store = PoseStore(default_timeout_s=10.0)
    store.snapshot()
    t = random_rigid(np.random.default_rng(3))
    with store.batch():
        store.put("Reference", np.eye(4), device_time_s=1.0)
        assert not store.wait_for_update(0.02)  # half a sample: not an update yet
        store.put("Pointer", t, device_time_s=1.0)
    assert store.wait_for_update(0.0)
    frame = store.snapshot()
    assert frame.tools["Reference"].status is ToolStatus.LIVE and frame.tools["Pointer"].status is ToolStatus.LIVE
    np.testing.assert_allclose(frame.tools["Pointer"].tracker_from_tool, t, atol=1e-12)
    with store.batch():  # a batch whose apply raises still wakes waiters at its end
        with pytest.raises(RuntimeError):
            with store.batch():
                store.put("Pointer", np.eye(4), device_time_s=2.0)
                raise RuntimeError("decoder bug")
        assert not store.wait_for_update(0.0)
    assert store.wait_for_update(0.0)

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


def test_reconnection_clears_the_last_error_and_errors_carry_their_time():
    import math

    clock = FakeClock(50.0)
    store = PoseStore(clock=clock)
    store.mark_error("OpenIGTLink 127.0.0.1:18944: cannot connect (refused)")
    h = store.health_snapshot()
    assert not h.connected and "cannot connect" in h.last_error and h.last_error_time_s == 50.0
    clock.t = 51.0
    store.set_connected(True)  # the connection succeeded: the old error is resolved
    h = store.health_snapshot()
    assert h.connected and h.last_error is None and math.isnan(h.last_error_time_s)
    store.mark_error("bad CRC", bad_message=True)  # a problem during the connection stays visible ...
    store.set_connected(True)  # ... a repeated 'connected' is not a reconnection
    h = store.health_snapshot()
    assert h.last_error == "bad CRC" and h.last_error_time_s == 51.0 and h.bad_messages == 1
    store.set_connected(False)
    store.mark_error("peer closed the connection")
    assert store.health_snapshot().last_error == "peer closed the connection"  # shown while disconnected


def test_wait_for_health_wakes_on_an_error_from_another_thread():
    store = PoseStore()
    t = threading.Thread(target=store.mark_error, args=("device lost",))
    t.start()
    assert store.wait_for_health(lambda h: h.last_error == "device lost", 5.0)
    t.join()
    assert not store.wait_for_health(lambda h: h.connected, 0.01)


def test_store_backed_source_lifecycle_from_the_base_class():
    """A source that implements only its thread body (and the hooks it needs) gets start / stop /
    context manager from StoreBackedSource: hooks in order, idempotent, nothing started when open fails."""
    from orthonav.tracking import StoreBackedSource

    calls: list[str] = []

    class Counting(StoreBackedSource):
        _thread_name = "counting"

        def __init__(self, fail_open: bool = False) -> None:
            super().__init__(PoseStore())
            self.fail_open = fail_open
            self.running = threading.Event()

        def _open(self) -> None:
            calls.append("open")
            if self.fail_open:
                raise OSError("no device")

        def _run(self) -> None:
            calls.append(f"run connected={self.store.health.connected}")
            self.running.set()
            k = 0
            while not self._stop.wait(0.001):
                k += 1
                self.store.put("Tool", np.eye(4), device_time_s=float(k))

        def _interrupt(self) -> None:
            calls.append("interrupt")

        def _close(self) -> None:
            calls.append("close")

    src = Counting()
    src.stop()  # before start: safe
    calls.clear()
    with src as s:
        assert s is src and src.running.wait(5.0) and src._thread.name == "counting"
        src.start()  # already running: no second thread, no second open
        assert src.wait_for_update(5.0) and src.latest().status("Tool") is ToolStatus.LIVE
        assert src.health().connected
    assert calls == ["open", "run connected=True", "interrupt", "close"]  # connected before the thread ran
    assert src._thread is None and not src.health().connected
    src.stop()  # twice: safe
    bad = Counting(fail_open=True)
    with pytest.raises(OSError, match="no device"):
        bad.start()
    assert bad._thread is None and not bad.health().connected


def test_simulator_whose_script_fails_at_once_ends_disconnected_with_the_error():
    """The store is marked connected before the worker starts, so a worker that fails immediately
    cannot be overwritten by a late 'connected' from start()."""
    from orthonav.tracking import SimulatedSource

    def broken(t: float):
        raise ValueError("no such pose")

    for _ in range(20):  # the old order lost this race only sometimes
        src = SimulatedSource(broken)
        src.start()
        src._thread.join(5.0)
        h = src.health()
        assert not h.connected and "no such pose" in h.last_error
        src.stop()
