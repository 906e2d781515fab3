"""The scripted OR scenario: geometry, tool visibility and ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from orthonav.core import transforms as tf
from orthonav.phantoms.or_geometry import geometry_from, toy_geometry
from orthonav.phantoms.scenario import knee_scenario
from orthonav.planning.schema import CutPlane, Landmark, Plan
from orthonav.tracking.frame import ToolStatus


@pytest.fixture(scope="module")
def scenario():
    return knee_scenario(toy_geometry(), seed=7, fle_mm=0.3)


def test_tracker_is_plausibly_placed(scenario):
    tf.validate_rigid(scenario.tracker_from_ct)
    knee_in_tracker = tf.apply(scenario.tracker_from_ct, scenario.geometry.centre_ct_mm)
    assert 1150.0 < np.linalg.norm(knee_in_tracker) < 1900.0
    np.testing.assert_allclose(scenario.ct_from_reference[:3, 3], scenario.geometry.reference_mount_ct_mm)


def test_pointer_dwells_on_each_fiducial_in_plan_order(scenario):
    tip = scenario.toolset.by_name()["Pointer"].tip_in_tool()
    dwells = [ph for ph in scenario.phases if ph.name == "fiducial"]
    assert [ph.label for ph in dwells] == list(scenario.geometry.fiducial_names)
    assert all(0.55 <= ph.t1_s - ph.t0_s <= 0.65 for ph in dwells)
    for i, ph in enumerate(dwells):
        for t in (ph.t0_s, (ph.t0_s + ph.t1_s) / 2, ph.t1_s - 1e-3):
            poses = scenario.script(t)
            p_ref = tf.apply(tf.invert(poses["Reference"]) @ poses["Pointer"], tip)
            expected = scenario.geometry.fiducials_ct_mm[i] + scenario.fle_offsets_mm[i]
            np.testing.assert_allclose(tf.apply(scenario.ct_from_reference, p_ref), expected, atol=1e-9)
            np.testing.assert_allclose(scenario.truth_at(t).pointer_tip_ct_mm, expected, atol=1e-9)
    # The FLE offsets have the requested RMS size (roughly: 6 draws).
    assert 0.05 < np.sqrt(np.mean(np.sum(scenario.fle_offsets_mm**2, axis=1))) < 0.8


def test_saw_hidden_then_visible_and_reference_always_visible(scenario):
    for ph in scenario.phases:
        t = (ph.t0_s + ph.t1_s) / 2
        poses = scenario.script(t)
        assert poses["Reference"] is not None
        assert (poses["Saw"] is not None) == (ph.name in ("saw_sweep", "saw_hold")) == scenario.truth_at(t).saw_visible
    holds = [ph.saw_errors for ph in scenario.phases if ph.name == "saw_hold"]
    assert len(holds) >= 4 and any(e[0] != 0 for e in holds) and any(e[2] != 0 for e in holds)


def test_reference_dropout_and_frames():
    sc = knee_scenario(toy_geometry(), seed=1, reference_dropout_s=(1.0, 1.5))
    frames = list(sc.frames(20.0, t1_s=2.0))
    assert len(frames) == 40
    for fr in frames:
        st = fr.status("Reference")
        assert (st is ToolStatus.NOT_VISIBLE) == (1.0 <= fr.host_time_s < 1.5)


def test_geometry_from_truth_and_plan_matches_by_position():
    geo = toy_geometry()
    # A plan whose fiducials are the truth's, detected 0.3 mm off and listed in reverse order.
    rev = list(reversed(range(6)))
    landmarks = {f"fiducial_{k + 1}": Landmark(position_lps_mm=tuple(geo.fiducials_ct_mm[i] + 0.3), bone="femur", method="t")
                 for k, i in enumerate(rev)}
    landmarks["medial_epicondyle"] = Landmark(position_lps_mm=(45.0, 0.0, 20.0), bone="femur", method="t")
    landmarks["lateral_epicondyle"] = Landmark(position_lps_mm=(-45.0, 0.0, 20.0), bone="femur", method="t")
    plan = Plan(landmarks=landmarks, cuts={"distal_femur": CutPlane(bone="femur", point_lps_mm=(0, 0, 0), normal_lps=(0, 0, -1),
                                                                    resection_depth_mm=9.0)})
    truth = {
        "fiducials_lps_mm": {f"fiducial_{i + 1}": tuple(p) for i, p in enumerate(geo.fiducials_ct_mm)},
        "targets_lps_mm": {k: tuple(v) for k, v in geo.targets_ct_mm.items()},
        "landmarks_lps_mm": {},
        "reference_mount_lps_mm": (0.0, -20.0, 120.0),
    }
    g2 = geometry_from(truth, plan)
    np.testing.assert_allclose(g2.fiducials_ct_mm, geo.fiducials_ct_mm[rev])  # TRUE positions, in plan order
    np.testing.assert_allclose(g2.medial, [1.0, 0.0, 0.0])
