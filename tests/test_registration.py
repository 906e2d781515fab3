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


# --- policy: refuse layouts that amplify FLE at the targets (near-collinear fiducials) -----------


def _near_collinear(rng):
    """Five fiducials within ~1 mm of a 120 mm line, and targets 40-60 mm off that line."""
    x = np.array([-60.0, -35.0, -5.0, 20.0, 60.0])
    fid = np.c_[x, 40.0 + rng.uniform(-1.0, 1.0, 5), 30.0 + rng.uniform(-1.0, 1.0, 5)]
    targets = {"target_1": np.array([0.0, 0.0, 0.0]), "target_2": np.array([20.0, -10.0, 20.0])}
    return fid, targets


def test_near_collinear_fiducials_are_refused_on_predicted_tre_though_fre_is_small():
    from orthonav.navigation.registration import TRELimitExceeded

    rng = np.random.default_rng(21)
    fid, targets = _near_collinear(rng)
    ct_from_ref = tf.random_rigid(rng, max_translation_mm=200)
    fle = 0.25
    p_ref = tf.apply(tf.invert(ct_from_ref), fid + rng.normal(scale=fle / np.sqrt(3), size=fid.shape))
    # FRE alone would accept it ...
    ok = register_paired_points([f"f{i}" for i in range(5)], fid, p_ref, targets_ct_mm=targets, fle_rms_mm=fle, max_fre_mm=1.0)
    assert ok.record.fre_mm < 0.5
    # ... although the layout really leaves the targets several times worse than the FRE (Monte-Carlo):
    sq = 0.0
    for _ in range(400):
        noisy = fid + rng.normal(scale=fle / np.sqrt(3), size=fid.shape)
        est = paired_point(noisy, fid).fixed_from_moving
        sq += np.sum((tf.apply(est, targets["target_1"]) - targets["target_1"]) ** 2)
    measured = np.sqrt(sq / 400)
    assert measured > 1.5 and ok.record.predicted_tre_mm["target_1"] == pytest.approx(measured, rel=0.2)
    with pytest.raises(TRELimitExceeded, match=r"at target_2 exceeds the limit 1\.00 mm.*nearly collinear") as e:
        register_paired_points([f"f{i}" for i in range(5)], fid, p_ref, targets_ct_mm=targets, fle_rms_mm=fle, max_fre_mm=1.0,
                               max_predicted_tre_mm=1.0)
    assert e.value.worst == "target_2"  # the target farthest from the fiducials' line
    # Noise-free digitising gives FRE ~0, so the FLE estimated from it is ~0: the floor keeps the check on.
    exact = tf.apply(tf.invert(ct_from_ref), fid)
    assert register_paired_points([f"f{i}" for i in range(5)], fid, exact, targets_ct_mm=targets,
                                  max_predicted_tre_mm=1.0).record.predicted_tre_mm["target_1"] < 1e-6
    with pytest.raises(TRELimitExceeded):
        register_paired_points([f"f{i}" for i in range(5)], fid, exact, targets_ct_mm=targets, max_predicted_tre_mm=1.0,
                               policy_min_fle_mm=0.25)
    # A well-spread layout with the same FLE passes the same limit.
    geo = toy_geometry()
    good = register_paired_points(geo.fiducial_names, geo.fiducials_ct_mm, geo.fiducials_ct_mm, targets_ct_mm=geo.targets_ct_mm,
                                  max_predicted_tre_mm=1.0, policy_min_fle_mm=fle)
    assert good.record.method == "paired_point"
    # Exactly collinear CT fiducials are refused as a registration problem, not an InputError crash.
    line = np.c_[np.arange(4.0) * 20, np.zeros(4), np.zeros(4)]
    bent = line + [[0, 0, 0], [0, 3, 0], [0, 0, 4], [0, 0, 0]]  # the digitised points are not collinear
    with pytest.raises(RegistrationError, match="collinear"):
        register_paired_points(list("abcd"), line, bent, targets_ct_mm=targets, max_predicted_tre_mm=5.0)


# --- the record after surface refinement: stages labelled ------------------------------------------


def test_surface_stage_keeps_fiducial_figures_labelled_and_adds_the_surface_figures(tmp_path):
    """with_surface_stage: ct_from_reference from the refinement; FRE / residuals / predicted TRE stay the
    paired-point stage's (with its transform); the fiducials' distances under the refined transform and
    the ICP's RMS, inlier fraction and constraint are recorded as the surface stage's."""
    from orthonav.navigation.registration import PAIRED_POINT_SURFACE, Registration, with_surface_stage

    rng = np.random.default_rng(4)
    geo = toy_geometry()
    true = tf.random_rigid(rng, max_translation_mm=100)
    p_ref = tf.apply(tf.invert(true), geo.fiducials_ct_mm + rng.normal(scale=0.3, size=geo.fiducials_ct_mm.shape))
    fid = register_paired_points(geo.fiducial_names, geo.fiducials_ct_mm, p_ref, targets_ct_mm=geo.targets_ct_mm)
    # What refine_registration returns: a refined transform (here: 0.5 mm along x) and its surface figures.
    shift = tf.make_rigid(None, [0.5, 0.0, 0.0])
    refined_t = shift @ fid.ct_from_reference
    figures = {"rms_mm": 0.21, "inlier_fraction": 0.93, "constraint": 0.31, "iterations": 12.0, "n_points": 150.0, "converged": 1.0}
    refined = Registration(refined_t, fid.record.model_copy(update={"method": PAIRED_POINT_SURFACE, "fre_mm": 9.9,
                                                                     "ct_from_reference": refined_t.tolist(), "surface": figures}))
    out = with_surface_stage(fid, refined)
    rec = out.record
    np.testing.assert_array_equal(out.ct_from_reference, refined_t)
    np.testing.assert_array_equal(rec.ct_from_reference_array(), refined_t)
    assert rec.method == "paired_point+surface_icp" and rec.surface_refined and not fid.record.surface_refined
    # The fiducial stage, unchanged and tied to its own transform.
    assert rec.fre_mm == fid.record.fre_mm and rec.residuals_mm == fid.record.residuals_mm
    assert rec.predicted_tre_mm == fid.record.predicted_tre_mm and rec.fle_estimate_mm == fid.record.fle_estimate_mm
    np.testing.assert_array_equal(np.asarray(rec.fiducial_ct_from_reference), fid.ct_from_reference)
    # The surface stage: ICP figures plus the fiducials' distances under the refined transform.
    for k, v in figures.items():
        assert rec.surface[k] == v
    expect = np.linalg.norm(tf.apply(refined_t, p_ref) - geo.fiducials_ct_mm, axis=1)
    np.testing.assert_allclose([rec.surface_fiducial_distances_mm[n] for n in geo.fiducial_names], expect, atol=1e-12)
    assert rec.surface["fiducial_rms_mm"] == pytest.approx(np.sqrt(np.mean(expect**2)), abs=1e-12)
    assert "no predicted TRE" in rec.accuracy_note and "paired-point stage" in rec.accuracy_note
    back = load_registration(write_registration(tmp_path / "registration.json", rec))
    assert back == rec and back.schema_version == 3  # issue 16: version 3 (per-bone records)
    # Only a paired-point registration can be refined, and the refinement must report its figures.
    with pytest.raises(RegistrationError, match="paired-point"):
        with_surface_stage(out, refined)
    with pytest.raises(RegistrationError, match="constraint"):
        with_surface_stage(fid, Registration(refined_t, refined.record.model_copy(update={"surface": {"rms_mm": 0.2, "inlier_fraction": 0.9}})))


def test_version_1_record_still_loads(tmp_path):
    geo = toy_geometry()
    rec = register_paired_points(geo.fiducial_names, geo.fiducials_ct_mm, geo.fiducials_ct_mm).record
    data = json.loads(rec.model_dump_json())
    for k in ("fiducial_ct_from_reference", "surface_fiducial_distances_mm", "accuracy_note"):
        data.pop(k)
    data["schema_version"] = 1
    p = tmp_path / "registration.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    back = load_registration(p)
    assert back.fiducial_ct_from_reference is None and back.method == "paired_point"
