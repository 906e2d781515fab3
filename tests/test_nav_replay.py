"""Replay is tied to the plan it navigated: session.json holds the plan's sha256 (issue 6, replay)."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest

from orthonav.core.errors import InputError
from orthonav.cli.navigate import replay_cli
from orthonav.navigation import navigate_case, replay_session
from orthonav.navigation.session import read_session_info
from orthonav.phantoms.scenario import knee_scenario, write_toy_case
from orthonav.planning.schema import load_plan, save_plan
from orthonav.tracking.frame import SourceHealth, TrackerSource, TrackingFrame

SHORT = dict(move_s=0.35, dwell_s=0.6, saw_hidden_s=0.3, sweep_s=0.8, hold_s=0.4, saw_errors=((2.0, 0.0, 0.0),))


class ScriptedSource(TrackerSource):
    """Hands out pre-computed frames, one per :meth:`latest`, as fast as the loop reads; sets
    :attr:`done` after the last one (no wall-clock pacing: the frames carry the script's times)."""

    def __init__(self, frames: list[TrackingFrame]) -> None:
        self.frames = frames
        self.i = 0
        self.done = threading.Event()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def latest(self) -> TrackingFrame:
        frame = self.frames[min(self.i, len(self.frames) - 1)]
        self.i += 1
        if self.i >= len(self.frames):
            self.done.set()
        return frame

    def wait_for_update(self, timeout_s: float) -> bool:
        if self.i < len(self.frames):
            return True
        self.done.wait(timeout_s)
        return False

    def health(self) -> SourceHealth:
        return SourceHealth(connected=True)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    case = tmp_path_factory.mktemp("replay_case")
    geo = write_toy_case(case, resolution=40)
    sc = knee_scenario(geo, seed=31, fle_mm=0.2, touch_targets=False, **SHORT)
    source = ScriptedSource(list(sc.frames(40.0, tracker_noise_mm=0.05, rotation_noise_deg=0.02, seed=3)))
    summary = navigate_case(case, source, duration_s=None, stop=source.done, render=False, toolset=sc.toolset)
    assert summary.registered, summary.events
    return case, summary


def test_session_records_the_plan_hash_and_replays_exactly(session):
    case, summary = session
    info = read_session_info(summary.session_dir)
    assert info.schema_version == 2
    assert info.plan_sha256 == hashlib.sha256((case / "plan.json").read_bytes()).hexdigest()
    r = replay_session(summary.session_dir, render=False)
    assert r.replay_mismatches == 0 and r.states == summary.states and r.warnings == [] and not r.plan_changed


def test_replay_refuses_a_changed_plan_unless_allowed(session, tmp_path):
    case, summary = session
    plan_path = case / "plan.json"
    original = plan_path.read_bytes()
    try:
        plan = load_plan(plan_path)
        cut = plan.cuts["distal_femur"]
        plan.cuts["distal_femur"] = cut.model_copy(update={"point_lps_mm": tuple(np.add(cut.point_lps_mm, (0.0, 0.0, 2.0)))})
        save_plan(plan_path, plan)  # the planned cut moved 2 mm after the session
        with pytest.raises(InputError, match="changed since the session was recorded.*--allow-changed-plan") as e:
            replay_session(summary.session_dir, render=False)
        assert e.value.path == plan_path
        with pytest.raises(InputError, match="changed since"):
            replay_cli(summary.session_dir)
        r = replay_session(summary.session_dir, render=False, allow_changed_plan=True)
        assert r.plan_changed and any("CURRENT plan" in w for w in r.warnings)
        assert r.replay_mismatches > 0  # what the check protects against: the guidance numbers changed
        replay_cli(summary.session_dir, allow_changed_plan=True)  # shown with the warning, not an error
    finally:
        plan_path.write_bytes(original)
    assert replay_session(summary.session_dir, render=False).replay_mismatches == 0


def test_session_without_a_plan_hash_replays_with_a_warning(session):
    _case, summary = session
    p = summary.session_dir / "session.json"
    original = p.read_bytes()
    try:
        data = json.loads(original)
        data["plan_sha256"] = ""
        p.write_text(json.dumps(data), encoding="utf-8")
        r = replay_session(summary.session_dir, render=False)
        assert r.replay_mismatches == 0 and not r.plan_changed
        assert len(r.warnings) == 1 and "without a plan hash" in r.warnings[0]
    finally:
        p.write_bytes(original)
