"""Surface registration (trimmed point-to-plane ICP): capture range, outliers, confidence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pyvista as pv

from orthonav.core import transforms as tf
from orthonav.core.errors import RegistrationError
from orthonav.navigation.surface import SurfaceModel, icp_point_to_plane


def bone_like_mesh(res: int = 120) -> pv.PolyData:
    """A closed, asymmetric 'distal femur': an ellipsoid bent and flared towards its distal end."""
    m = pv.ParametricEllipsoid(40.0, 32.0, 110.0, u_res=res, v_res=res, w_res=res).triangulate().clean()
    p = np.asarray(m.points).copy()
    z = p[:, 2]
    dist = np.clip(-z / 110.0, 0.0, 1.0)  # 0 at the middle, 1 at the distal tip
    p[:, 0] *= 1.0 + 0.5 * dist  # condylar flare, medio-laterally
    p[:, 0] += 0.002 * z**2 * np.sign(z)  # a bend
    p[:, 1] += 6.0 * np.sin(p[:, 0] / 15.0) * dist  # intercondylar relief
    m.points = p
    return m


@pytest.fixture(scope="module")
def model():
    return SurfaceModel(bone_like_mesh(), "femur")


def _sample_distal(mesh: pv.PolyData, n: int, rng) -> np.ndarray:
    pts = np.asarray(mesh.points)
    distal = pts[pts[:, 2] < -40.0]
    return distal[rng.choice(len(distal), size=n, replace=False)]


def _perturb(t, centre, deg, mm, rng):
    axis = rng.normal(size=3)
    r = tf.rotation_about_axis(axis, math.radians(deg))
    d = rng.normal(size=3)
    d *= mm / np.linalg.norm(d)
    about = tf.make_rigid(r, centre - r @ centre + d)
    return about @ t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_icp_converges_from_10deg_10mm_and_rejects_20_percent_outliers(model, seed):
    rng = np.random.default_rng(seed)
    mesh = bone_like_mesh(res=90)  # digitised points come from a different tessellation
    p_ct = _sample_distal(mesh, 250, rng) + rng.normal(scale=0.2, size=(250, 3))
    n_out = 50  # 20 % outliers: points 4-15 mm off the surface (soft tissue, slipped pointer)
    out_idx = rng.choice(250, size=n_out, replace=False)
    p_ct[out_idx] += rng.normal(size=(n_out, 3)) / np.sqrt(3) * rng.uniform(4.0, 15.0, size=(n_out, 1)) * np.sqrt(3)
    true = tf.random_rigid(rng, max_translation_mm=200.0)
    p_ref = tf.apply(tf.invert(true), p_ct)
    init = _perturb(true, p_ct.mean(axis=0), 10.0, 10.0, rng)
    res = icp_point_to_plane(p_ref, model, init, keep_fraction=0.7)
    assert res.converged
    assert tf.rotation_angle_deg(res.ct_from_reference, true) < 0.5
    centre = p_ct.mean(axis=0)
    target = centre + [0.0, 0.0, 60.0]  # a point up the shaft, away from the digitised area
    err = res.ct_from_reference @ tf.invert(true)
    assert np.linalg.norm(tf.apply(err, centre) - centre) < 0.5
    assert np.linalg.norm(tf.apply(err, target) - target) < 1.0
    assert res.rms_mm < 0.4
    assert 0.6 < res.inlier_fraction <= 0.8
    assert res.constraint > 0.05
    assert np.linalg.det(res.ct_from_reference[:3, :3]) == pytest.approx(1.0)


def test_points_on_a_cylinder_are_reported_as_poorly_constrained():
    cyl = pv.Cylinder(radius=15.0, height=200.0, resolution=120, capping=True).triangulate().subdivide(2)
    model = SurfaceModel(cyl, "shaft")
    rng = np.random.default_rng(3)
    pts = np.asarray(cyl.points)
    side = pts[np.abs(pts[:, 0]) < 80.0]  # cylinder axis is x: points away from the caps
    p = side[rng.choice(len(side), 200, replace=False)]
    res = icp_point_to_plane(p, model, np.eye(4))
    assert res.constraint < 0.02  # sliding along / rolling about the axis is unconstrained


def test_icp_rejects_bad_input(model):
    with pytest.raises(RegistrationError, match="n >= 6"):
        icp_point_to_plane(np.zeros((3, 3)), model, np.eye(4))
    with pytest.raises(RegistrationError, match="within"):
        icp_point_to_plane(np.full((10, 3), 5000.0) + np.arange(30).reshape(10, 3), model, np.eye(4))
    with pytest.raises(RegistrationError, match="reflection"):
        icp_point_to_plane(np.random.default_rng(0).normal(size=(10, 3)), model, np.diag([1.0, 1.0, -1.0, 1.0]))


def test_combined_fiducials_then_surface(model):
    """Three fiducials with 1.5 mm FLE give a rough start; the surface refines it below 0.5 mm."""
    from orthonav.navigation.registration import register_paired_points
    from orthonav.navigation.surface import refine_registration

    rng = np.random.default_rng(8)
    mesh = bone_like_mesh(res=90)
    true = tf.random_rigid(rng, max_translation_mm=150.0)
    fid_ct = np.array([[30.0, -20.0, -60.0], [-35.0, -15.0, -70.0], [0.0, 25.0, -95.0]])
    fid_ref = tf.apply(tf.invert(true), fid_ct + rng.normal(scale=1.5 / np.sqrt(3), size=(3, 3)))
    reg = register_paired_points(["f1", "f2", "f3"], fid_ct, fid_ref)
    p_ct = _sample_distal(mesh, 300, rng)
    refined = refine_registration(reg, tf.apply(tf.invert(true), p_ct), model)
    centre = p_ct.mean(axis=0)
    before = np.linalg.norm(tf.apply(reg.ct_from_reference @ tf.invert(true), centre) - centre)
    after = np.linalg.norm(tf.apply(refined.ct_from_reference @ tf.invert(true), centre) - centre)
    assert after < 0.5 and after < before
    rec = refined.record
    assert rec.method == "paired_point+surface_icp" and rec.surface["converged"] == 1.0
    assert rec.surface["rms_mm"] < 0.3 and set(rec.residuals_mm) == {"f1", "f2", "f3"}


def test_icp_ends_at_the_exact_nearest_vertex_optimum(model):
    """The cached nearest-vertex candidates must give what a fresh KD-tree query gives: at the
    returned transform, one more trimmed point-to-plane step with exact correspondences is ~0."""
    rng = np.random.default_rng(11)
    p_ct = _sample_distal(bone_like_mesh(res=90), 400, rng) + rng.normal(scale=0.2, size=(400, 3))
    true = tf.random_rigid(rng, max_translation_mm=100.0)
    p_ref = tf.apply(tf.invert(true), p_ct)
    res = icp_point_to_plane(p_ref, model, _perturb(true, p_ct.mean(axis=0), 8.0, 8.0, rng), keep_fraction=0.9)
    assert res.converged
    x = tf.apply(res.ct_from_reference, p_ref)
    _d, idx = model.tree.query(x)
    r = np.einsum("ij,ij->i", x - model.points_mm[idx], model.normals[idx])
    keep = np.argsort(np.abs(r))[: int(round(0.9 * len(x)))]
    xs, ns, rs = x[keep], model.normals[idx[keep]], r[keep]
    a = np.c_[np.cross(xs - x.mean(axis=0), ns), ns]
    step = np.linalg.lstsq(a, -rs, rcond=None)[0]
    assert math.degrees(np.linalg.norm(step[:3])) < 0.02 and np.linalg.norm(step[3:]) < 0.02
    np.testing.assert_allclose(res.distances_mm, np.abs(r), atol=1e-9)


def test_surface_model_has_a_coarse_level_for_dense_meshes():
    model = SurfaceModel(bone_like_mesh(res=300), "dense")
    assert 100 <= len(model.coarse.points_mm) < 0.5 * len(model.points_mm)
    # Every coarse vertex is a mesh vertex with its normal (no new geometry is invented).
    _d, idx = model.tree.query(model.coarse.points_mm)
    np.testing.assert_array_equal(model.points_mm[idx], model.coarse.points_mm)
    np.testing.assert_array_equal(model.normals[idx], model.coarse.normals)
    small = SurfaceModel(pv.Sphere(radius=20.0, theta_resolution=8, phi_resolution=8), "tiny")
    assert small.coarse is small.fine  # too few vertices to thin out
    # Coarse-to-fine on the dense mesh: same capture range and accuracy as on one level.
    rng = np.random.default_rng(4)
    p_ct = _sample_distal(bone_like_mesh(res=90), 300, rng) + rng.normal(scale=0.2, size=(300, 3))
    true = tf.random_rigid(rng, max_translation_mm=100.0)
    res = icp_point_to_plane(tf.apply(tf.invert(true), p_ct), model, _perturb(true, p_ct.mean(axis=0), 10.0, 10.0, rng))
    assert res.converged and tf.rotation_angle_deg(res.ct_from_reference, true) < 0.5
    centre = p_ct.mean(axis=0)
    assert np.linalg.norm(tf.apply(res.ct_from_reference @ tf.invert(true), centre) - centre) < 0.5


def test_cached_nearest_vertices_equal_a_fresh_kdtree_query(model):
    """The candidate cache ICP uses must return exactly the KD-tree's nearest vertex, whatever the motion."""
    from orthonav.navigation.surface import NearestVertices

    rng = np.random.default_rng(2)
    x = _sample_distal(bone_like_mesh(res=90), 500, rng) + rng.normal(scale=1.0, size=(500, 3))
    cache = NearestVertices(model.fine)
    for step_mm in (0.0, 0.05, 0.05, 0.3, 2.0, 0.01, 8.0):
        x = x + rng.normal(scale=step_mm / np.sqrt(3), size=x.shape)
        q, n = cache.nearest(x)
        d, idx = model.tree.query(x)
        np.testing.assert_allclose(np.linalg.norm(x - q, axis=1), d, atol=1e-12)
        np.testing.assert_array_equal(n, model.normals[idx])


def test_min_norm_solve_equals_lstsq_on_degenerate_systems():
    """The eigen-decomposition solve used per ICP iteration is lstsq's minimum-norm solution,
    including when the points leave motions unconstrained (rank-deficient normal equations)."""
    from orthonav.navigation.surface import min_norm_solve as _min_norm_solve

    rng = np.random.default_rng(9)
    for rank in (6, 5, 4, 2):
        a = rng.normal(size=(50, rank)) @ rng.normal(size=(rank, 6))  # (50, 6) of the given rank
        h, g = a.T @ a, a.T @ rng.normal(size=50)
        want = np.linalg.lstsq(h, g, rcond=1e-9)[0]
        np.testing.assert_allclose(_min_norm_solve(h, g), want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
