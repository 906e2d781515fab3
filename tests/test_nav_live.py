"""End to end: navigate_case on a toy case with the threaded simulator and over a real socket; replay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from orthonav.navigation import replay_session
from orthonav.navigation.registration import load_registration
from orthonav.phantoms.scenario import simulate_navigation, write_toy_case

pytestmark = pytest.mark.slow


SHORT = dict(move_s=0.35, dwell_s=0.6, saw_hidden_s=0.3, sweep_s=0.8, hold_s=0.4, saw_errors=((2.0, 0.0, 0.0), (0.0, -1.5, 1.0)))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The in-process simulator (threaded, real time), rendering and recording."""
    case = tmp_path_factory.mktemp("toy_case")
    geo = write_toy_case(case, with_ct=True)
    events: list[str] = []
    summary, sc = simulate_navigation(case, geometry=geo, seed=21, over_socket=False, progress=events.append, **SHORT)
    return case, sc, summary, events


def test_live_session_registers_and_guides_within_tolerance(live):
    case, sc, s, events = live
    assert s.registered, events
    assert s.fre_mm < 0.6
    assert set(s.tre_mm) == set(sc.geometry.targets_ct_mm) and max(s.tre_mm.values()) <= 1.0
    assert set(s.verification_mm) == set(sc.geometry.targets_ct_mm) and max(s.verification_mm.values()) <= 1.0
    assert set(s.predicted_tre_mm) == set(sc.geometry.targets_ct_mm)
    ge = s.guidance_error
    assert ge["n"] > 50
    assert ge["flexion_deg_rms"] < 0.3 and ge["varus_deg_rms"] < 0.3 and ge["distance_mm_rms"] < 0.3
    assert s.loop_rate_hz > 50 and np.isfinite(s.latency_p50_ms)
    rec = load_registration(case / "registration.json")
    assert rec.fre_mm == s.fre_mm and set(rec.verification_mm) == set(s.verification_mm)
    assert (s.session_dir / "registration.json").is_file() and (s.session_dir / "summary.json").is_file()


def test_truth_scores_are_made_outside_navigation(live):
    """Navigation's summary.json holds no truth figures; the phantom scoring writes them to scores.json."""
    import json

    _case, _sc, s, _ = live
    nav = json.loads((s.session_dir / "summary.json").read_text())
    assert "tre_mm" not in nav and "guidance_error" not in nav
    scores = json.loads((s.session_dir / "scores.json").read_text())
    assert scores["tre_mm"] == s.tre_mm and scores["guidance_error"] == s.guidance_error


def test_live_session_pictures_exist_and_show_state(live):
    _case, _sc, s, _ = live
    assert len(s.screenshots) >= 3
    first = np.asarray(Image.open(s.screenshots[0]).convert("RGB")).astype(int)
    assert first.shape == (600, 800, 3)
    # The first picture is before registration: the amber NOT REGISTERED banner is in the middle.
    mid = first[250:350, 200:600]
    amber = (mid[..., 0] > 200) & (mid[..., 1] > 130) & (mid[..., 1] < 210) & (mid[..., 2] < 60)
    assert amber.sum() > 500
    last_registered = np.asarray(Image.open(s.screenshots[-2]).convert("RGB")).astype(int)[250:350, 200:600]
    assert ((last_registered[..., 0] > 180) & (last_registered[..., 1] < 90) & (last_registered[..., 2] < 90)).sum() < 50


def test_replay_reproduces_guidance_exactly(live):
    _case, _sc, s, _ = live
    r = replay_session(s.session_dir, off_screen=True)
    assert r.replay_mismatches == 0
    assert r.states == s.states
    assert r.fre_mm == s.fre_mm
    assert r.verification_mm == s.verification_mm
    assert len(r.screenshots) == len(s.screenshots)


def test_end_to_end_over_a_real_socket(tmp_path):
    """stream_script on 127.0.0.1 -> IGTLClientSource -> navigate_case, with guidance truth by wire time."""
    geo = write_toy_case(tmp_path / "case")
    s, sc = simulate_navigation(tmp_path / "case", geometry=geo, seed=22, over_socket=True, render=False, **SHORT)
    assert s.registered, s.events
    assert s.fre_mm < 0.6 and max(s.tre_mm.values()) <= 1.0
    assert s.states > 100
    ge = s.guidance_error
    assert ge["n"] > 30 and ge["flexion_deg_rms"] < 0.3 and ge["distance_mm_rms"] < 0.3


def test_loop_lowers_the_gil_switch_interval_while_running_and_reports_latency():
    """At 1 kHz, states follow the tracker one by one; the GIL switch interval is lowered only while
    the loop runs; the latency figures are ordered and finite."""
    import sys

    from orthonav.navigation.loop import NavigationLoop
    from orthonav.navigation.state import NavigationContext
    from orthonav.navigation.workflow import Workflow
    from orthonav.phantoms.scenario import knee_scenario, toy_geometry
    from orthonav.tracking.simulator import SimulatedSource

    geo = toy_geometry()
    sc = knee_scenario(geo, seed=5)
    wf = Workflow(NavigationContext(sc.toolset), list(geo.fiducial_names), geo.fiducials_ct_mm)
    before = sys.getswitchinterval()
    src = SimulatedSource(sc.script, rate_hz=1000.0, tools=sc.toolset, seed=0)
    loop = NavigationLoop(src, wf, switch_interval_s=0.0005)
    with src:
        loop.start()
        assert sys.getswitchinterval() == pytest.approx(min(before, 0.0005))
        first = loop.wait_for_state(0, 5.0)
        assert first is not None
        last = loop.wait_for_state(first.sequence + 900, 10.0)  # 300 more samples of 3 tools (one message each)
        loop.stop()
    assert last is not None and last.sequence > first.sequence + 900
    assert sys.getswitchinterval() == pytest.approx(before)
    st = loop.stats()
    assert st.states > 150  # most samples become a state: the loop keeps up
    assert 0.0 < st.latency_p50_ms <= st.latency_p99_ms <= st.latency_max_ms < 1000.0
