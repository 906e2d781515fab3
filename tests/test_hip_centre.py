"""Kinematic hip centre (navigation/hip_centre.py) against synthetic hip circles with known truth.

The leg: a hip centre fixed in the pelvis; the femur array 420 mm distal of it, 40 mm lateral
and 60 mm anterior of the femoral axis (a distal-femur array on pins); the thigh circled
through a cone about a slightly flexed mean position. Both arrays get the repo simulator's
noise (:func:`orthonav.tracking.simulator.add_noise`: 0.1 mm per axis, 0.05 deg about a random
axis, in the tool frame); the fit sees ``pelvis_from_femurref`` as navigation composes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from orthonav.core import transforms as tf
from orthonav.navigation.hip_centre import MIN_RANGE_DEG, fit_hip_centre, range_of_motion_deg
from orthonav.tracking.simulator import add_noise

NOISE_MM, NOISE_DEG = 0.1, 0.05  # the simulator's defaults (tracking/simulator.py)
#: Acceptance (issue 16): the kinematic hip centre within 2 mm of truth.
CENTRE_TOL_MM = 2.0
#: Measured over 50 seeds at a 30 deg circle of 300 poses (test_centre_within_2mm_over_50_seeds):
#: worst 0.20 mm, 95th percentile 0.15 mm; asserted with margin.
P95_TOL_MM = 0.4

HIP_IN_FEMURREF = np.array([-40.0, -60.0, 420.0])  # hip centre in the femur array frame (mm)


def _tracker_from_pelvisref(t: float, drift: bool) -> np.ndarray:
    """The pelvis array in the tracker, still or slowly drifting (2 deg and 6 mm over t = 0..1)."""
    base = tf.make_rigid(tf.rotation_about_axis([0.3, 1.0, 0.2], 0.4), [100.0, -50.0, 1200.0])
    if not drift:
        return base
    return tf.make_rigid(tf.rotation_about_axis([1.0, 0.2, 0.5], math.radians(2.0 * t)), [6.0 * t, -3.0 * t, 2.0 * t]) @ base


def hip_circle(seed: int, *, range_deg: float = 30.0, n: int = 300, drift: bool = False, one_axis: bool = False,
               outlier_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy ``pelvis_from_femurref`` poses of a circled leg, the true centre in the pelvis array
    frame and in the femur array frame."""
    rng = np.random.default_rng(seed)
    centre_pelvis = np.array([30.0, 80.0, -60.0])  # hip centre in the pelvis array frame
    # femur array pose at the mean leg position: hip centre at HIP_IN_FEMURREF, 10 deg flexed
    r0 = tf.rotation_about_axis([1.0, 0.0, 0.0], math.radians(10.0)) @ tf.rotation_about_axis([0.0, 0.0, 1.0], 0.3)
    half = math.radians(range_deg / 2.0)
    poses = []
    for i in range(n):
        s = i / n
        az = 2.0 * math.pi * 1.5 * s + rng.normal(0.0, 0.05)  # one and a half turns
        if one_axis:
            r = tf.rotation_about_axis([1.0, 0.0, 0.0], half * math.sin(az)) @ r0
        else:
            axis = np.array([math.cos(az), math.sin(az), 0.0])
            r = tf.rotation_about_axis(axis, half) @ r0
        pelvis_from_femur = tf.make_rigid(r, centre_pelvis - r @ HIP_IN_FEMURREF)
        tracker_from_pelvis = _tracker_from_pelvisref(s, drift)
        tracker_from_femur = tracker_from_pelvis @ pelvis_from_femur
        noisy_f = add_noise(tracker_from_femur, rng, NOISE_MM, NOISE_DEG)
        noisy_p = add_noise(tracker_from_pelvis, rng, NOISE_MM, NOISE_DEG)
        poses.append(tf.invert(noisy_p) @ noisy_f)
    poses = np.array(poses)
    if outlier_fraction:
        bad = rng.choice(n, int(round(outlier_fraction * n)), replace=False)
        for i in bad:  # a misread array: the pose off by 3-15 mm and 1-5 deg
            jolt = tf.make_rigid(tf.rotation_about_axis(rng.normal(size=3), math.radians(rng.uniform(1.0, 5.0))),
                                 rng.normal(size=3) / math.sqrt(3.0) * rng.uniform(3.0, 15.0))
            poses[i] = poses[i] @ jolt
    return poses, centre_pelvis, HIP_IN_FEMURREF.copy()


def _errors(fit, centre_pelvis, centre_femur) -> tuple[float, float]:
    return float(np.linalg.norm(fit.centre_pelvis_mm - centre_pelvis)), float(np.linalg.norm(fit.centre_femurref_mm - centre_femur))


def test_exact_circle_is_recovered_exactly():
    rng = np.random.default_rng(1)
    centre_pelvis, centre_femur = rng.normal(size=3) * 50, rng.normal(size=3) * 50 + [0, 0, 400]
    poses = []
    for az in np.linspace(0.0, 2 * math.pi, 40, endpoint=False):
        r = tf.rotation_about_axis([math.cos(az), math.sin(az), 0.0], math.radians(15.0))
        poses.append(tf.make_rigid(r, centre_pelvis - r @ centre_femur))
    fit = fit_hip_centre(np.array(poses))
    assert fit.ok, fit.reason
    assert max(_errors(fit, centre_pelvis, centre_femur)) < 1e-6
    assert fit.range_deg == pytest.approx(30.0, abs=1e-6)
    assert fit.n_used == 40 and fit.rms_mm < 1e-6
    ct_from_femurref = tf.make_rigid(tf.rotation_about_axis([0.2, 1.0, 0.1], 0.7), [5.0, -8.0, 300.0])
    assert np.allclose(fit.centre_ct_mm(ct_from_femurref), tf.apply(ct_from_femurref, centre_femur), atol=1e-6)
    d = fit.to_dict()
    assert d["ok"] is True and d["range_deg"] == pytest.approx(30.0) and len(d["centre_pelvis_mm"]) == 3


def test_centre_within_2mm_over_50_seeds():
    errs = []
    for seed in range(50):
        poses, cp, cf = hip_circle(seed, range_deg=30.0)
        fit = fit_hip_centre(poses)
        assert fit.ok, (seed, fit.reason)
        errs.append(max(_errors(fit, cp, cf)))
    errs = np.array(errs)
    assert errs.max() < CENTRE_TOL_MM, errs.max()
    assert np.percentile(errs, 95) < P95_TOL_MM, np.percentile(errs, 95)


def test_drifting_pelvis_is_compensated_by_the_pelvis_array():
    errs = []
    for seed in range(20):
        poses, cp, cf = hip_circle(100 + seed, range_deg=30.0, drift=True)
        fit = fit_hip_centre(poses)
        assert fit.ok, (seed, fit.reason)
        errs.append(max(_errors(fit, cp, cf)))
    assert max(errs) < CENTRE_TOL_MM, max(errs)


def test_uncompensated_pelvis_drift_is_refused():
    # The same drifting pelvis, but the femur array given in the tracker frame (as if the
    # pelvis were still): the centre moves by ~10 mm during the circle; the residual gate refuses.
    poses, _cp, _cf = hip_circle(5, range_deg=30.0, drift=True)
    in_tracker = np.array([_tracker_from_pelvisref(i / len(poses), True) @ p for i, p in enumerate(poses)])
    fit = fit_hip_centre(in_tracker)
    assert not fit.ok and "residual" in fit.reason, fit


def test_small_range_is_refused():
    poses, _cp, _cf = hip_circle(3, range_deg=12.0)
    fit = fit_hip_centre(poses)
    assert fit.range_deg == pytest.approx(12.0, abs=0.5)
    assert not fit.ok and "circle it more widely" in fit.reason
    assert np.isfinite(fit.centre_pelvis_mm).all()  # the fit is still reported
    wide = fit_hip_centre(hip_circle(3, range_deg=MIN_RANGE_DEG + 2.0)[0])
    assert wide.ok, wide.reason


def test_one_axis_motion_is_refused():
    poses, _cp, _cf = hip_circle(4, range_deg=40.0, one_axis=True)
    fit = fit_hip_centre(poses)
    assert fit.range_deg > 35.0
    assert not fit.ok and "least-moved axis" in fit.reason


def test_outlier_poses_do_not_move_the_fit():
    moved = []
    for seed in range(10):
        clean, cp, cf = hip_circle(200 + seed, range_deg=30.0)
        dirty, _, _ = hip_circle(200 + seed, range_deg=30.0, outlier_fraction=0.10)
        a, b = fit_hip_centre(clean), fit_hip_centre(dirty)
        assert a.ok and b.ok, (a.reason, b.reason)
        assert b.n_used <= len(dirty) - 25  # most of the 30 bad poses were dropped
        moved.append(max(np.linalg.norm(a.centre_pelvis_mm - b.centre_pelvis_mm), np.linalg.norm(a.centre_femurref_mm - b.centre_femurref_mm)))
        assert max(_errors(b, cp, cf)) < CENTRE_TOL_MM
    assert max(moved) < 0.5, moved  # measured: at most 0.09 mm


def test_too_few_poses_and_bad_input():
    poses, _cp, _cf = hip_circle(6, n=8)
    fit = fit_hip_centre(poses)
    assert not fit.ok and "only 8 poses" in fit.reason and np.isnan(fit.centre_pelvis_mm).all()
    from orthonav.core.errors import InputError

    with pytest.raises(InputError, match="4, 4"):
        fit_hip_centre(np.zeros((20, 3, 3)))
    bad = hip_circle(6)[0]
    bad[3, 0, 3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        fit_hip_centre(bad)


def test_range_of_motion_is_the_largest_pairwise_rotation():
    a = tf.make_rigid(tf.rotation_about_axis([0, 0, 1], math.radians(10.0)))
    b = tf.make_rigid(tf.rotation_about_axis([0, 0, 1], math.radians(-25.0)))
    c = tf.make_rigid(tf.rotation_about_axis([1, 0, 0], math.radians(5.0)))
    assert range_of_motion_deg(np.array([a, c, b])) == pytest.approx(35.0, abs=1e-6)


def test_real_hand_held_pivot_recording(shared_data):
    """Real tracker data: 1,151 poses of a hand-held pointer pivoting about a divot (the shared
    `pivot_recording`), the same motion as a leg circled about its hip with the pelvis still.
    The centre in the moving array's frame lies within 3 mm (about 2 SD of a block bootstrap,
    tests/test_calibration.py) of scikit-surgerycore's published fit; measured 1.9 mm. Hand-held
    slips make the residual 2.2 mm RMS, which the hip gate (1.5 mm) refuses with its reason, as
    it must: a hip fit that loose is not one to navigate on."""
    import glob

    files = sorted(glob.glob(str(shared_data / "pivot_recording" / "matrices" / "*.txt")))
    if not files:
        pytest.skip("pivot_recording/matrices not in the shared data")
    poses = np.array([np.loadtxt(f) for f in files])
    published = np.array([-14.476, 395.143, -7.558])
    fit = fit_hip_centre(poses)
    assert np.linalg.norm(fit.centre_femurref_mm - published) < 3.0
    assert fit.range_deg > MIN_RANGE_DEG and 0.8 < fit.n_used / len(poses) < 0.99
    assert not fit.ok and "RMS" in fit.reason and 1.5 < fit.rms_mm < 3.0, (fit.ok, fit.reason, fit.rms_mm)
    loose = fit_hip_centre(poses, max_rms_mm=3.0)
    assert loose.ok and loose.reason == "" and np.allclose(loose.centre_femurref_mm, fit.centre_femurref_mm)
