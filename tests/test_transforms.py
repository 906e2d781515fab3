"""Rigid transforms, the LPS/RAS boundary and paired-point registration."""

from __future__ import annotations

import numpy as np
import pytest

from orthonav.core import transforms as tf
from orthonav.core.errors import InputError, RegistrationError
from orthonav.core.procrustes import paired_point


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_compose_and_invert_round_trip(rng):
    a_from_b = tf.random_rigid(rng)
    b_from_c = tf.random_rigid(rng)
    p_c = rng.normal(size=(20, 3)) * 50
    a_from_c = tf.compose(a_from_b, b_from_c)
    np.testing.assert_allclose(tf.apply(a_from_c, p_c), tf.apply(a_from_b, tf.apply(b_from_c, p_c)), atol=1e-10)
    np.testing.assert_allclose(tf.invert(a_from_b) @ a_from_b, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(tf.invert(a_from_b), np.linalg.inv(a_from_b), atol=1e-12)


def test_rotation_about_axis_angle(rng):
    r = tf.rotation_about_axis([0, 0, 1], np.radians(90))
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    assert tf.rotation_angle_deg(tf.make_rigid(tf.rotation_about_axis(rng.normal(size=3), np.radians(37.0)))) == pytest.approx(37.0)


def test_lps_ras_points_and_transforms():
    p_lps = np.array([[10.0, -20.0, 30.0]])
    np.testing.assert_allclose(tf.ras_from_lps_points(p_lps), [[-10.0, 20.0, 30.0]])
    np.testing.assert_allclose(tf.lps_from_ras_points(tf.ras_from_lps_points(p_lps)), p_lps)
    # A pose re-expressed in RAS puts a point given in the tool's own frame (e.g. a calibrated
    # tip) at the RAS image of where the LPS pose puts it: the tool frame itself is not flipped.
    rng = np.random.default_rng(7)
    lps_from_tool = tf.random_rigid(rng)
    ras_from_tool = tf.ras_from_lps_transform(lps_from_tool)
    tip_tool = np.array([[-18.7, 0.5, -155.0]])
    np.testing.assert_allclose(tf.apply(ras_from_tool, tip_tool), tf.ras_from_lps_points(tf.apply(lps_from_tool, tip_tool)), atol=1e-12)
    np.testing.assert_allclose(tf.lps_from_ras_transform(ras_from_tool), lps_from_tool, atol=1e-15)
    assert np.linalg.det(ras_from_tool[:3, :3]) == pytest.approx(1.0)
    # Tool-to-tool transforms are convention-free: reference_from_tool is the same either way.
    lps_from_ref = tf.random_rigid(rng)
    np.testing.assert_allclose(
        tf.invert(tf.ras_from_lps_transform(lps_from_ref)) @ ras_from_tool, tf.invert(lps_from_ref) @ lps_from_tool, atol=1e-12
    )


def test_validate_rigid_rejects_bad_matrices():
    with pytest.raises(InputError, match="4x4"):
        tf.validate_rigid(np.eye(3))
    with pytest.raises(InputError, match="reflection"):
        tf.validate_rigid(np.diag([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(InputError, match="non-finite"):
        tf.validate_rigid(np.full((4, 4), np.nan))
    skew = np.eye(4)
    skew[0, 1] = 0.1
    with pytest.raises(InputError, match="orthonormal"):
        tf.validate_rigid(skew)


def test_paired_point_recovers_random_transform_exactly(rng):
    for _ in range(20):
        fixed_from_moving = tf.random_rigid(rng)
        moving = rng.normal(size=(8, 3)) * 60
        fixed = tf.apply(fixed_from_moving, moving)
        res = paired_point(fixed, moving)
        np.testing.assert_allclose(res.fixed_from_moving, fixed_from_moving, atol=1e-9)
        assert res.fre_mm < 1e-9


def test_paired_point_returns_rotation_for_mirrored_points(rng):
    moving = rng.normal(size=(6, 3)) * 40
    mirrored = moving * np.array([-1.0, 1.0, 1.0])  # best orthogonal fit is a reflection
    res = paired_point(mirrored, moving)
    assert np.linalg.det(res.fixed_from_moving[:3, :3]) == pytest.approx(1.0)
    assert res.fre_mm > 1.0  # a rotation cannot explain a mirror image


def test_paired_point_planar_points_are_not_reflected(rng):
    moving = np.c_[rng.normal(size=(5, 2)) * 30, np.zeros(5)]  # coplanar: SVD is ambiguous
    t = tf.random_rigid(rng)
    res = paired_point(tf.apply(t, moving), moving)
    np.testing.assert_allclose(res.fixed_from_moving, t, atol=1e-9)


def test_paired_point_rejects_degenerate_input():
    with pytest.raises(RegistrationError, match="at least 3"):
        paired_point(np.zeros((2, 3)), np.zeros((2, 3)))
    line = np.c_[np.arange(5.0), np.zeros(5), np.zeros(5)]
    with pytest.raises(RegistrationError, match="collinear"):
        paired_point(line, line)
