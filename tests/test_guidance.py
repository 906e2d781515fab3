"""Guidance numbers: saw vs planned cut, drill vs trajectory, tip to bone, against ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pyvista as pv

from orthonav.core import transforms as tf
from orthonav.navigation.guidance import (
    BoneSurface,
    blade_normal_from_angles,
    cut_frame,
    drill_guidance,
    saw_guidance,
    tip_to_bone_mm,
)
from orthonav.phantoms.scenario import knee_scenario, pointer_pose_ct, toy_geometry
from orthonav.tracking.tools import default_toolset

TOOLS = default_toolset().by_name()
SAW = TOOLS["Saw"]


def _distal_femur_right():
    # Distal femoral cut z = 0, normal distal (-z); right knee: medial is patient left (+x).
    return cut_frame([0.0, 0.0, 0.0], [0.0, 0.0, -1.0], medial_hint=[1.0, 0.0, 0.0])


def _saw_with_normal(normal_ct, edge_ct, cutting_ct):
    """ct_from_saw whose blade normal / cutting direction / edge centre are the given CT vectors."""
    m = np.asarray(normal_ct, float) / np.linalg.norm(normal_ct)
    c = np.asarray(cutting_ct, float) - np.dot(cutting_ct, m) * m
    c /= np.linalg.norm(c)
    nt, at = SAW.normal_in_tool(), SAW.axis_in_tool()
    r = np.c_[m, c, np.cross(m, c)] @ np.c_[nt, at, np.cross(nt, at)].T
    return tf.make_rigid(r, np.asarray(edge_ct, float) - r @ SAW.tip_in_tool())


def test_cut_frame_axes_are_orthonormal_and_anatomical():
    f = _distal_femur_right()
    np.testing.assert_allclose(f.anterior, [0.0, -1.0, 0.0], atol=1e-12)  # LPS anterior
    np.testing.assert_allclose(f.medial, [1.0, 0.0, 0.0], atol=1e-12)
    basis = np.c_[f.normal, f.anterior, f.medial]
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)


def test_saw_signs_follow_the_anatomy():
    """3 deg of posterior tilt of the distal-pointing normal is +3 flexion; medial tilt is varus."""
    f = _distal_femur_right()
    a = math.radians(3.0)
    posterior_tilt = [0.0, math.sin(a), -math.cos(a)]  # LPS +y is posterior
    g = saw_guidance(_saw_with_normal(posterior_tilt, [0, 0, 0], [0, 1, 0]), SAW, f)
    assert g.flexion_deg == pytest.approx(3.0, abs=1e-9)
    assert g.varus_deg == pytest.approx(0.0, abs=1e-9)
    assert g.angle_deg == pytest.approx(3.0, abs=1e-9)
    medial_tilt = [math.sin(a), 0.0, -math.cos(a)]  # right knee: +x is medial
    g = saw_guidance(_saw_with_normal(medial_tilt, [0, 0, 0], [0, 1, 0]), SAW, f)
    assert g.varus_deg == pytest.approx(3.0, abs=1e-9)
    assert g.flexion_deg == pytest.approx(0.0, abs=1e-9)
    # The blade normal's sign in the tool is arbitrary: flipping it changes nothing.
    g2 = saw_guidance(_saw_with_normal([-x for x in medial_tilt], [0, 0, 0], [0, 1, 0]), SAW, f)
    assert g2.varus_deg == pytest.approx(3.0, abs=1e-9)


def test_saw_distance_is_signed_towards_the_removed_part():
    f = _distal_femur_right()
    g = saw_guidance(_saw_with_normal([0, 0, 1], [5.0, -3.0, -1.5], [0, 1, 0]), SAW, f)
    assert g.distance_mm == pytest.approx(1.5)  # 1.5 mm distal: on the removed side
    np.testing.assert_allclose(g.edge_ct_mm, [5.0, -3.0, -1.5], atol=1e-9)
    g = saw_guidance(_saw_with_normal([0, 0, 1], [0.0, 0.0, 2.0], [0, 1, 0]), SAW, f)
    assert g.distance_mm == pytest.approx(-2.0)  # into the bone the plan keeps


def test_blade_normal_from_angles_is_exact_inverse():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = rng.normal(size=3)
        f = cut_frame(rng.normal(size=3) * 50, n, medial_hint=rng.normal(size=3), anterior_hint=[0, -1, 0.1])
        flex, var = rng.uniform(-8, 8, size=2)
        m = blade_normal_from_angles(f, flex, var)
        g = saw_guidance(_saw_with_normal(m, f.point_mm, np.cross(m, f.medial)), SAW, f)
        assert g.flexion_deg == pytest.approx(flex, abs=1e-9)
        assert g.varus_deg == pytest.approx(var, abs=1e-9)


def test_scripted_saw_poses_match_truth_within_tolerance():
    """Acceptance: guidance equals the scenario truth within 0.2 deg / 0.2 mm on scripted poses."""
    sc = knee_scenario(toy_geometry(), seed=4)
    g = sc.geometry
    f = cut_frame(g.cut_point_mm, g.cut_normal, g.medial)
    checked = 0
    for ph in sc.phases:
        if ph.name not in ("saw_sweep", "saw_hold"):
            continue
        for t in np.linspace(ph.t0_s, ph.t1_s, 7)[:-1]:
            ct_from_saw = tf.invert(sc.tracker_from_ct) @ sc.script(t)["Saw"]
            got = saw_guidance(ct_from_saw, SAW, f)
            tr = sc.truth_at(t)
            assert abs(got.flexion_deg - tr.saw_flexion_deg) < 0.2
            assert abs(got.varus_deg - tr.saw_varus_deg) < 0.2
            assert abs(got.distance_mm - tr.saw_distance_mm) < 0.2
            checked += 1
    assert checked >= 30


@pytest.fixture(scope="module")
def ellipsoid_surface():
    mesh = pv.ParametricEllipsoid(45.0, 40.0, 110.0, u_res=80, v_res=80, w_res=80).triangulate().clean()
    mesh.flip_faces(inplace=True)  # inward winding on purpose: BoneSurface must fix orientation
    return BoneSurface(mesh.translate((0.0, 0.0, 70.0), inplace=False), "femur")


def test_remaining_depth_reaches_the_far_cortex(ellipsoid_surface):
    # At z = 0 the ellipsoid's antero-posterior half-width is 40 * sqrt(1 - (70/110)^2).
    half = 40.0 * math.sqrt(1.0 - (70.0 / 110.0) ** 2)
    f = _distal_femur_right()
    saw = _saw_with_normal([0, 0, 1], [0.0, -60.0, 0.0], [0, 1, 0])  # edge 60 mm anterior, cutting posteriorly
    g = saw_guidance(saw, SAW, f, ellipsoid_surface)
    assert g.remaining_depth_mm == pytest.approx(60.0 + half, abs=0.3)
    saw_out = _saw_with_normal([0, 0, 1], [0.0, 60.0, 0.0], [0, 1, 0])  # beyond the far cortex
    assert saw_guidance(saw_out, SAW, f, ellipsoid_surface).remaining_depth_mm == 0.0


def test_tip_to_bone_is_signed(ellipsoid_surface):
    assert tip_to_bone_mm([0.0, 0.0, 70.0], ellipsoid_surface) == pytest.approx(-40.0, abs=0.3)  # inside
    assert tip_to_bone_mm([0.0, -50.0, 70.0], ellipsoid_surface) == pytest.approx(10.0, abs=0.3)
    assert tip_to_bone_mm([0.0, 0.0, 190.0], ellipsoid_surface) == pytest.approx(10.0, abs=0.3)


def test_drill_guidance_against_known_geometry():
    drill = TOOLS["Drill"]
    entry, target = np.array([10.0, 0.0, 0.0]), np.array([10.0, 0.0, -40.0])
    # Tip 2 mm off the line, 15 mm along it, axis tilted 5 deg from the planned direction.
    a = math.radians(5.0)
    pose = pointer_pose_ct([12.0, 0.0, -15.0], [math.sin(a), 0.0, -math.cos(a)], drill.tip_in_tool(), drill.axis_in_tool())
    g = drill_guidance(pose, drill, entry, target)
    assert g.angle_deg == pytest.approx(5.0, abs=1e-9)
    assert g.entry_offset_mm == pytest.approx(2.0, abs=1e-9)
    assert g.depth_to_target_mm == pytest.approx(25.0, abs=1e-9)
    np.testing.assert_allclose(g.tip_ct_mm, [12.0, 0.0, -15.0], atol=1e-9)


def test_tibial_cut_signs_from_the_cut_surface_itself():
    """Proximal tibial cut of a right knee (normal proximal, +z): a blade plane that drops 3 deg
    towards posterior is +3 deg (extra posterior slope); one that drops towards medial is varus."""
    f = cut_frame([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], medial_hint=[1.0, 0.0, 0.0])
    a = math.radians(3.0)

    def normal_of_plane(u, v):  # the blade plane spanned by two in-plane directions
        return np.cross(u, v)

    # Lower posteriorly: moving +y (posterior) the plane goes down (-z).
    sloped = normal_of_plane([1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)])
    g = saw_guidance(_saw_with_normal(sloped, [0, 0, 0], [0, 1, 0]), SAW, f)
    assert g.flexion_deg == pytest.approx(3.0, abs=1e-9) and g.varus_deg == pytest.approx(0.0, abs=1e-9)
    # Lower medially: moving +x (medial for a right knee) the plane goes down.
    varus = normal_of_plane([math.cos(a), 0.0, -math.sin(a)], [0.0, 1.0, 0.0])
    g = saw_guidance(_saw_with_normal(varus, [0, 0, 0], [0, 1, 0]), SAW, f)
    assert g.varus_deg == pytest.approx(3.0, abs=1e-9) and g.flexion_deg == pytest.approx(0.0, abs=1e-9)
    # A left knee (medial = patient right, -x): the same medial drop is varus again.
    f_left = cut_frame([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], medial_hint=[-1.0, 0.0, 0.0])
    varus_left = normal_of_plane([math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0])  # lower towards -x
    assert saw_guidance(_saw_with_normal(varus_left, [0, 0, 0], [0, 1, 0]), SAW, f_left).varus_deg == pytest.approx(3.0, abs=1e-9)
