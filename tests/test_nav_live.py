"""End to end: navigate_case on a toy case with the threaded simulator and over a real socket; replay."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from orthonav.navigation.navigate import navigate_case, replay_session
from orthonav.navigation.registration import load_registration
from orthonav.phantoms.scenario import knee_scenario, write_toy_case
from orthonav.tracking.simulator import SimulatedSource

pytestmark = pytest.mark.slow


def _short_scenario(geo, seed):
    return knee_scenario(geo, seed=seed, fle_mm=0.25, move_s=0.35, dwell_s=0.6, saw_hidden_s=0.3, sweep_s=0.8, hold_s=0.4,
                         saw_errors=((2.0, 0.0, 0.0), (0.0, -1.5, 1.0)))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    case = tmp_path_factory.mktemp("toy_case")
    geo = write_toy_case(case)
    sc = _short_scenario(geo, seed=21)
    source = SimulatedSource(sc.script, rate_hz=100.0, tools=sc.toolset, seed=3)
    events: list[str] = []
    summary = navigate_case(case, source, duration_s=sc.duration_s + 0.2, progress=events.append, screenshot_every_s=2.0,
                            truth={"targets_lps_mm": geo.targets_ct_mm}, true_ct_from_reference=sc.ct_from_reference,
                            truth_at=sc.truth_at)
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


def test_live_session_pictures_exist_and_show_state(live):
    _case, _sc, s, _ = live
    assert len(s.screenshots) >= 3
    first = np.asarray(Image.open(s.screenshots[0]).convert("RGB")).astype(int)
    assert first.shape == (600, 800, 3)
    # The first picture is before registration: the red NOT TRACKING banner is in the middle.
    mid = first[250:350, 200:600]
    red = (mid[..., 0] > 180) & (mid[..., 1] < 90) & (mid[..., 2] < 90)
    assert red.sum() > 500
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
    from orthonav.tracking.igtl_client import IGTLClientSource
    from orthonav.tracking.simulator import stream_script

    geo = write_toy_case(tmp_path / "case")
    sc = _short_scenario(geo, seed=22)
    port_box: list[int] = []
    listening = threading.Event()
    done = threading.Event()
    errors: list[BaseException] = []

    def serve():
        try:
            stream_script(sc.script, 0, rate_hz=100.0, duration_s=sc.duration_s, wait_for_client_s=10.0, seed=4,
                          on_listening=lambda p: (port_box.append(p), listening.set()))
        except BaseException as e:  # surfaced below
            errors.append(e)
            listening.set()
        finally:
            done.set()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert listening.wait(10.0) and not errors
    source = IGTLClientSource("127.0.0.1", port_box[0], tools=sc.toolset)
    s = navigate_case(tmp_path / "case", source, duration_s=sc.duration_s + 0.5, render=False,
                      truth={"targets_lps_mm": geo.targets_ct_mm}, true_ct_from_reference=sc.ct_from_reference)
    assert done.wait(10.0) and not errors
    assert s.registered, s.events
    assert s.fre_mm < 0.6 and max(s.tre_mm.values()) <= 1.0
    assert s.states > 100
