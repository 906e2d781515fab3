"""Registration: predicted TRE (Fitzpatrick 1998) against Monte-Carlo, paired-point records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orthonav.core import transforms as tf
from orthonav.core.errors import InputError, RegistrationError, SchemaError
from orthonav.core.procrustes import paired_point
from orthonav.navigation.registration import (
    fle_from_fre,
    load_registration,
    predict_tre,
    register_paired_points,
    write_registration,
)
from orthonav.phantoms.scenario import toy_geometry


def test_predict_tre_at_centroid_is_fle_over_sqrt_n():
    rng = np.random.default_rng(0)
    fid = rng.normal(size=(7, 3)) * 40
    tre = predict_tre(fid, fid.mean(axis=0), 0.5)
    assert tre.shape == (1,)
    assert tre[0] == pytest.approx(0.5 / np.sqrt(7), rel=1e-12)
    # Farther from the centroid -> larger TRE; invariant to a rigid motion of everything.
    far = fid.mean(axis=0) + np.array([[0.0, 0.0, 50.0], [0.0, 0.0, 150.0]])
    t = predict_tre(fid, far, 0.5)
    assert t[1] > t[0] > tre[0]
    m = tf.random_rigid(rng)
    np.testing.assert_allclose(predict_tre(tf.apply(m, fid), tf.apply(m, far), 0.5), t, rtol=1e-10)


def test_predicted_tre_matches_monte_carlo_within_15_percent():
    """>= 1,000 simulated registrations with isotropic FLE: RMS TRE vs the formula at each target."""
    geo = toy_geometry(seed=3)
    fid = geo.fiducials_ct_mm
    targets = np.vstack([np.array(list(geo.targets_ct_mm.values())), [[0.0, 0.0, 150.0], [60.0, -40.0, -30.0]]])
    fle = 0.25
    rng = np.random.default_rng(42)
    trials = 2000
    sq = np.zeros(len(targets))
    moving = fid  # CT positions; the noisy copies play the digitised points
    for _ in range(trials):
        noisy = fid + rng.normal(scale=fle / np.sqrt(3.0), size=fid.shape)
        est = paired_point(noisy, moving).fixed_from_moving
        sq += np.sum((tf.apply(est, targets) - targets) ** 2, axis=1)
    measured = np.sqrt(sq / trials)
    predicted = predict_tre(fid, targets, fle)
    np.testing.assert_allclose(measured, predicted, rtol=0.15)
    assert np.max(predicted) < 1.0  # FLE 0.25 mm -> TRE well under 1 mm on this configuration


def test_predict_tre_rejects_bad_input():
    with pytest.raises(InputError, match="at least 3"):
        predict_tre(np.zeros((2, 3)), np.zeros((1, 3)), 0.2)
    line = np.c_[np.arange(5.0) * 10, np.zeros(5), np.zeros(5)]
    with pytest.raises(InputError, match="collinear"):
        predict_tre(line, np.zeros(3), 0.2)
    with pytest.raises(InputError, match="fle_rms_mm"):
        predict_tre(np.eye(3) * 10, np.zeros(3), -1.0)
    with pytest.raises(InputError, match=r"\(n, 3\)"):
        predict_tre(np.zeros((4, 2)), np.zeros(3), 0.2)


def test_fle_from_fre_inverts_expected_fre():
    # <FRE^2> = (1 - 2/N) <FLE^2>: check by simulation, then the estimator.
    rng = np.random.default_rng(5)
    fid = toy_geometry().fiducials_ct_mm
    fre_sq = [paired_point(fid + rng.normal(scale=0.3 / np.sqrt(3), size=fid.shape), fid).fre_mm ** 2 for _ in range(1500)]
    assert np.sqrt(np.mean(fre_sq)) == pytest.approx(0.3 * np.sqrt(1 - 2 / 6), rel=0.05)
    assert fle_from_fre(0.3 * np.sqrt(1 - 2 / 6), 6) == pytest.approx(0.3)
    assert np.isnan(fle_from_fre(0.1, 2))


def test_register_recovers_transform_and_round_trips(tmp_path):
    rng = np.random.default_rng(9)
    geo = toy_geometry()
    ct_from_ref = tf.random_rigid(rng, max_translation_mm=300)
    p_ref = tf.apply(tf.invert(ct_from_ref), geo.fiducials_ct_mm)
    reg = register_paired_points(geo.fiducial_names, geo.fiducials_ct_mm, p_ref, targets_ct_mm=geo.targets_ct_mm, fle_rms_mm=0.25)
    np.testing.assert_allclose(reg.ct_from_reference, ct_from_ref, atol=1e-9)
    assert np.linalg.det(reg.ct_from_reference[:3, :3]) == pytest.approx(1.0)
    rec = reg.record
    assert rec.method == "paired_point" and rec.fre_mm < 1e-9
    assert set(rec.predicted_tre_mm) == set(geo.targets_ct_mm)
    assert set(rec.residuals_mm) == set(geo.fiducial_names)
    path = write_registration(tmp_path / "registration.json", rec)
    back = load_registration(path)
    np.testing.assert_array_equal(back.ct_from_reference_array(), reg.ct_from_reference)
    assert back.predicted_tre_mm == rec.predicted_tre_mm
    assert back.points_reference_mm == rec.points_reference_mm


def test_register_rejects_large_fre_naming_the_worst_fiducial():
    geo = toy_geometry()
    p_ref = geo.fiducials_ct_mm.copy()
    p_ref[2] += [6.0, 0.0, 0.0]
    with pytest.raises(RegistrationError, match="fiducial_3"):
        register_paired_points(geo.fiducial_names, geo.fiducials_ct_mm, p_ref, max_fre_mm=1.0)
    with pytest.raises(RegistrationError, match="one name per point"):
        register_paired_points(["a", "b"], geo.fiducials_ct_mm, p_ref)


def test_load_registration_rejects_non_rigid_and_newer(tmp_path):
    geo = toy_geometry()
    rec = register_paired_points(geo.fiducial_names, geo.fiducials_ct_mm, geo.fiducials_ct_mm).record
    p = write_registration(tmp_path / "registration.json", rec)
    data = json.loads(p.read_text(encoding="utf-8"))
    data["ct_from_reference"][0][0] = 2.0
    p.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="ct_from_reference"):
        load_registration(p)
    data["ct_from_reference"][0][0] = 1.0
    data["schema_version"] = 99
    p.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="newer"):
        load_registration(p)
