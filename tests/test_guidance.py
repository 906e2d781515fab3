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


#: Noise-free scripted poses: guidance equals the scripted errors to this (deg and mm). The real
#: error is rounding only: max 1.3e-14 deg and 4.7e-13 mm over seeds 0, 1, 4 (the distance carries
#: the tracker's 1.5 m lever arm through two 4x4 products).
EXACT = 1e-9


def test_scripted_saw_poses_match_truth_exactly():
    """README "saw guidance ... same on noise-free scripted poses: exact to 1e-9": the scenario's
    truth is its construction (the scripted flexion / varus / distance of each hold, zero during the
    sweep), not a guidance call, and guidance reproduces it to 1e-9 deg / mm."""
    sc = knee_scenario(toy_geometry(), seed=4)
    g = sc.geometry
    f = cut_frame(g.cut_point_mm, g.cut_normal, g.medial)
    errors = []
    for ph in sc.phases:
        if ph.name not in ("saw_sweep", "saw_hold"):
            continue
        for t in np.linspace(ph.t0_s, ph.t1_s, 7)[:-1]:
            ct_from_saw = tf.invert(sc.tracker_from_ct) @ sc.script(t)["Saw"]
            got = saw_guidance(ct_from_saw, SAW, f)
            tr = sc.truth_at(t)
            want = (0.0, 0.0, 0.0) if ph.name == "saw_sweep" else ph.saw_errors  # the construction values
            assert (tr.saw_flexion_deg, tr.saw_varus_deg, tr.saw_distance_mm) == want
            errors.append((got.flexion_deg - want[0], got.varus_deg - want[1], got.distance_mm - want[2]))
    errors = np.abs(errors)
    assert len(errors) >= 30 and errors.max() < EXACT, errors.max(axis=0)
    # The holds really are off-plane (so the exactness is tested on non-zero angles and distances).
    holds = {ph.saw_errors for ph in sc.phases if ph.name == "saw_hold"}
    assert len(holds) >= 4 and max(abs(e[0]) for e in holds) >= 2.0 and max(abs(e[2]) for e in holds) >= 1.0


def test_noise_free_frames_through_the_live_state_are_exact():
    """The whole live path (tracker frames at 100 Hz -> reference-relative pose -> compute_state with
    the true registration) on noise-free frames: every saw sample equals the scripted truth to 1e-9."""
    from orthonav.navigation.state import NavigationContext, NavStatus, compute_state

    sc = knee_scenario(toy_geometry(), seed=0)
    g = sc.geometry
    f = cut_frame(g.cut_point_mm, g.cut_normal, g.medial)
    ctx = NavigationContext(sc.toolset, ct_from_reference=sc.ct_from_reference, cuts={"distal_femur": f})
    errors = []
    for fr in sc.frames(100.0):
        st = compute_state(fr, ctx, clock=None)
        tr = sc.truth_at(fr.host_time_s)
        assert (st.status("Saw") is NavStatus.LIVE) == tr.saw_visible
        if not tr.saw_visible:
            continue
        s = st.saw["distal_femur"]
        errors.append((s.flexion_deg - tr.saw_flexion_deg, s.varus_deg - tr.saw_varus_deg, s.distance_mm - tr.saw_distance_mm))
    errors = np.abs(errors)
    assert len(errors) > 300 and errors.max() < EXACT, errors.max(axis=0)


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


def _all_crossings(obb, o, d, length: float) -> list[float]:
    """Reference: every crossing of the segment o + s d (0 <= s <= length) found by an independent
    locator (a vtkOBBTree, all hits), as distances along d."""
    import vtk

    pts = vtk.vtkPoints()
    obb.IntersectWithLine(list(o), list(np.asarray(o) + length * np.asarray(d)), pts, None)
    return [float(np.dot(np.asarray(pts.GetPoint(i)) - o, d)) for i in range(pts.GetNumberOfPoints())]


def test_far_crossing_equals_the_farthest_of_all_crossings(ellipsoid_surface):
    """The backward first-hit cast (clipped to the bounding box) finds the same farthest crossing
    as collecting every crossing; no crossing -> 0; max_length is respected."""
    import vtk

    obb = vtk.vtkOBBTree()
    obb.SetDataSet(ellipsoid_surface.mesh)
    obb.BuildLocator()
    rng = np.random.default_rng(5)
    centre = np.array([0.0, 0.0, 70.0])
    checked = {"hit": 0, "miss": 0}
    for k in range(300):
        o = centre + rng.normal(size=3) * [60.0, 60.0, 120.0]
        d = rng.normal(size=3)
        if k % 10 == 0:
            d = np.eye(3)[k % 3] * (1 if k % 20 else -1)  # axis-parallel rays hit the slab test's special case
        d /= np.linalg.norm(d)
        length = 300.0 if k % 4 else 80.0
        ref = _all_crossings(obb, o, d, length)
        got = ellipsoid_surface.far_crossing_mm(o, d, max_length_mm=length)
        if ref:
            assert got == pytest.approx(max(max(ref), 0.0), abs=1e-4)
            checked["hit"] += 1
        else:
            assert got == 0.0
            checked["miss"] += 1
    assert checked["hit"] > 50 and checked["miss"] > 50


def test_signed_distance_is_exact_near_the_bone_and_bounded_far_from_it(ellipsoid_surface):
    import vtk

    exact = vtk.vtkImplicitPolyDataDistance()
    exact.SetInput(ellipsoid_surface.mesh)
    s = ellipsoid_surface
    assert 0.0 < s.far_error_mm < 5.0
    rng = np.random.default_rng(6)
    surf = np.asarray(s.mesh.points)
    nrm = np.asarray(s.mesh.point_data["Normals"])
    n_near = n_far = 0
    for k in range(400):
        i = rng.integers(len(surf))
        if k % 2:
            p = surf[i] + rng.uniform(-38.0, 150.0) * nrm[i] + rng.normal(size=3)
        else:
            p = surf[i] + rng.uniform(-1.0, 1.0) * nrm[i] + rng.normal(size=3) * 0.3
        want = exact.EvaluateFunction(p.tolist())
        got = s.signed_distance_mm(p)
        if abs(want) <= s.exact_band_mm - s.far_error_mm:  # nearest vertex within the band: exact
            assert got == want
            n_near += 1
        elif abs(want) > s.exact_band_mm:  # beyond the band: right sign, over-estimate <= far_error_mm
            assert np.sign(got) == np.sign(want)
            assert 0.0 <= abs(got) - abs(want) <= s.far_error_mm + 1e-6
            n_far += 1
    assert n_near > 150 and n_far > 150
    assert math.isnan(s.signed_distance_mm([math.nan, 0.0, 0.0]))  # never a made-up distance


def test_compute_state_matches_an_independent_numpy_chain():
    """The plain-float live path gives what the pose chain and the definitions give with numpy."""
    from orthonav.navigation.state import NavigationContext, NavStatus, compute_state
    from orthonav.tracking.frame import ToolPose, ToolStatus, TrackingFrame

    geo = toy_geometry()
    sc = knee_scenario(geo, seed=3)
    f = cut_frame(geo.cut_point_mm, geo.cut_normal, geo.medial)
    entry, target = np.array([10.0, -20.0, 30.0]), np.array([15.0, -10.0, -20.0])
    ctx = NavigationContext(sc.toolset, ct_from_reference=sc.ct_from_reference, cuts={"distal_femur": f},
                            trajectories={"pin": (entry, target)})
    tools = sc.toolset.by_name()
    saw_start = next(p.t0_s for p in sc.phases if p.name == "saw_sweep")
    n = n_drill = 0
    for fr in sc.frames(20.0, tracker_noise_mm=0.3, rotation_noise_deg=0.3, seed=2, t0_s=saw_start, t1_s=saw_start + 3.0):
        if fr.status("Saw") is ToolStatus.LIVE:  # the script has no drill: hold one where the saw is, turned
            drill_pose = fr.pose("Saw") @ tf.make_rigid(tf.rotation_about_axis([1.0, 2.0, 0.5], 0.4), [3.0, -2.0, 5.0])
            fr = TrackingFrame({**fr.tools, "Drill": ToolPose(ToolStatus.LIVE, drill_pose, 0.0, fr.host_time_s, fr.host_time_s)},
                               fr.host_time_s, fr.sequence)
        st = compute_state(fr, ctx, clock=None)
        assert st.tracking
        ct_from_tracker = sc.ct_from_reference @ tf.invert(fr.pose("Reference"))
        for name, ts in st.tools.items():
            if ts.status is not NavStatus.LIVE:
                continue
            want = ct_from_tracker @ fr.pose(name)
            np.testing.assert_allclose(ts.ct_from_tool, want, atol=1e-9)
            np.testing.assert_allclose(ts.tip_ct_mm, tf.apply(want, tools[name].tip_in_tool()), atol=1e-9)
        if st.status("Saw") is NavStatus.LIVE:
            t = st.tools["Saw"].ct_from_tool
            m = tf.apply_vector(t, SAW.normal_in_tool())
            m = m if np.dot(m, f.normal) >= 0 else -m
            g = st.saw["distal_femur"]
            assert g.flexion_deg == pytest.approx(math.degrees(math.atan2(-np.dot(m, f.anterior), np.dot(m, f.normal))), abs=1e-9)
            assert g.varus_deg == pytest.approx(math.degrees(math.atan2(np.dot(m, f.medial), np.dot(m, f.normal))), abs=1e-9)
            assert g.distance_mm == pytest.approx(np.dot(tf.apply(t, SAW.tip_in_tool()) - f.point_mm, f.normal), abs=1e-9)
            n += 1
        if st.status("Drill") is NavStatus.LIVE:
            t = st.tools["Drill"].ct_from_tool
            tip = tf.apply(t, tools["Drill"].tip_in_tool())
            d = (target - entry) / np.linalg.norm(target - entry)
            g = st.drill["pin"]
            assert g.depth_to_target_mm == pytest.approx(np.dot(target - tip, d), abs=1e-9)
            assert g.entry_offset_mm == pytest.approx(np.linalg.norm(np.cross(tip - entry, d)), abs=1e-9)
            assert g.angle_deg == pytest.approx(math.degrees(math.acos(np.dot(tf.apply_vector(t, tools["Drill"].axis_in_tool()), d))),
                                                abs=1e-6)
            n_drill += 1
    assert n > 30 and n_drill == n
