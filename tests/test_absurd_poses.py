"""Absurd poses (NaN, 3e38 mm, 6 m from the patient) never become a LIVE state with numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pyvista as pv

from orthonav.core import transforms as tf
from orthonav.navigation.guidance import BoneSurface, cut_frame
from orthonav.navigation.state import (
    MAX_POSE_MM,
    WORKSPACE_MARGIN_MM,
    NavigationContext,
    NavStatus,
    compute_state,
    pose_is_plausible,
    workspace_box,
)
from orthonav.navigation.workflow import Workflow, WorkflowConfig
from orthonav.phantoms.scenario import knee_scenario, toy_geometry
from orthonav.tracking.frame import ToolPose, ToolStatus, TrackingFrame


@pytest.fixture(scope="module")
def scene():
    sc = knee_scenario(toy_geometry(), seed=21)
    g = sc.geometry
    bone = pv.ParametricEllipsoid(45.0, 40.0, 110.0, u_res=40, v_res=40, w_res=40).triangulate().clean().translate((0.0, 0.0, 70.0))
    cuts = {"distal_femur": cut_frame(g.cut_point_mm, g.cut_normal, g.medial)}
    trajectories = {"pin": (np.array([10.0, -20.0, 30.0]), np.array([15.0, -10.0, -20.0]))}
    ctx = NavigationContext(sc.toolset, ct_from_reference=sc.ct_from_reference, cuts=cuts, trajectories=trajectories,
                            surfaces={"femur": BoneSurface(bone, "femur")})
    saw_t = next(p.t0_s for p in sc.phases if p.name == "saw_sweep") + 1.0
    poses = {k: v for k, v in sc.script(saw_t).items() if v is not None}
    assert {"Reference", "Pointer", "Saw"} <= set(poses)
    poses["Drill"] = poses["Pointer"]
    return sc, ctx, poses


def _frame(poses, seq=1, now=100.0):
    return TrackingFrame({k: ToolPose(ToolStatus.LIVE, np.asarray(v, dtype=np.float64), host_time_s=now) for k, v in poses.items()},
                         now, seq)


def _moved(pose, by_mm):
    m = np.array(pose, dtype=np.float64)
    m[:3, 3] += by_mm
    return m


def _ct_shift(sc, pose, by_ct_mm):
    """``pose`` (tracker_from_tool) moved by ``by_ct_mm`` in the CT frame."""
    tracker_from_ct = sc.tracker_from_reference @ tf.invert(sc.ct_from_reference)
    ct_from_tool = tf.invert(tracker_from_ct) @ pose
    ct_from_tool[:3, 3] += by_ct_mm
    return tracker_from_ct @ ct_from_tool


def _absurd_variants(sc, pose):
    nan = np.array(pose, dtype=np.float64)
    nan[1, 3] = math.nan
    nan_rot = np.array(pose, dtype=np.float64)
    nan_rot[0, 0] = math.nan
    inf = np.array(pose, dtype=np.float64)
    inf[2, 3] = math.inf
    return {
        "3e38 mm": _moved(pose, [3e38, 0.0, 0.0]),
        "-3e38 mm": _moved(pose, [0.0, -3e38, 3e38]),
        "NaN translation": nan,
        "NaN rotation": nan_rot,
        "infinite": inf,
        "6 m from the bone": _ct_shift(sc, pose, [0.0, 0.0, 6000.0]),
        "6 m sideways": _ct_shift(sc, pose, [4243.0, -4243.0, 0.0]),
    }


def _assert_no_numbers_for(st, tool):
    ts = st.tools[tool]
    assert ts.status is NavStatus.IMPLAUSIBLE and not ts.live
    assert ts.ct_from_tool is None and ts.tip_ct_mm is None and ts.reason


def test_normal_frame_is_live_with_finite_numbers(scene):
    sc, ctx, poses = scene
    st = compute_state(_frame(poses), ctx, clock=None)
    assert st.tracking and all(st.status(t) is NavStatus.LIVE for t in ("Pointer", "Saw", "Drill"))
    assert math.isfinite(st.pointer_to_bone_mm) and abs(st.pointer_to_bone_mm) < 500.0
    assert "distal_femur" in st.saw and "pin" in st.drill


@pytest.mark.parametrize("tool", ["Pointer", "Saw", "Drill"])
def test_absurd_tool_pose_is_implausible_never_live(scene, tool):
    sc, ctx, poses = scene
    for what, bad in _absurd_variants(sc, poses[tool]).items():
        st = compute_state(_frame({**poses, tool: bad}), ctx, clock=None)
        assert st.tracking, what  # the other tools are still navigated
        _assert_no_numbers_for(st, tool)
        others = [t for t in ("Pointer", "Saw", "Drill") if t != tool]
        assert all(st.status(t) is NavStatus.LIVE for t in others), what
        if tool == "Pointer":
            assert math.isnan(st.pointer_to_bone_mm) and st.pointer_bone == "", what
        if tool == "Saw":
            assert not st.saw, what
        if tool == "Drill":
            assert not st.drill, what
        numbers = [st.pointer_to_bone_mm] + [g.distance_mm for g in st.saw.values()] + [g.depth_to_target_mm for g in st.drill.values()]
        assert all(not math.isfinite(x) or abs(x) < 1e4 for x in numbers), (what, numbers)


def test_far_but_plausible_tool_is_live_with_a_positive_distance(scene):
    """2 m from the bone is inside the workspace: shown, at about +2000 mm, outside the bone."""
    sc, ctx, poses = scene
    st = compute_state(_frame({**poses, "Pointer": _ct_shift(sc, poses["Pointer"], [2000.0, 0.0, 0.0])}), ctx, clock=None)
    assert st.status("Pointer") is NavStatus.LIVE
    assert 1800.0 < st.pointer_to_bone_mm < 2200.0


def test_absurd_reference_pose_is_not_tracking(scene):
    sc, ctx, poses = scene
    for what, bad in _absurd_variants(sc, poses["Reference"]).items():
        st = compute_state(_frame({**poses, "Reference": bad}), ctx, clock=None)
        if what.startswith("6 m"):
            # A plausible reference pose that moved: every tool now lies 6 m from the bones.
            assert st.tracking and all(st.status(t) is NavStatus.IMPLAUSIBLE for t in ("Pointer", "Saw", "Drill")), what
        else:
            assert not st.tracking and st.reason == "reference pose implausible", what
            assert all(t.status is NavStatus.NOT_TRACKING and t.ct_from_tool is None for t in st.tools.values()), what
        assert math.isnan(st.pointer_to_bone_mm) and not st.saw and not st.drill, what


def test_pose_plausibility_and_workspace(scene):
    _sc, ctx, _poses = scene
    eye = np.eye(4).tolist()
    assert pose_is_plausible(eye)
    far = np.eye(4)
    far[0, 3] = MAX_POSE_MM * 1.01
    assert not pose_is_plausible(far.tolist())
    huge = np.eye(4)
    huge[:3, :3] *= 1e308  # finite entries whose sum overflows
    assert not pose_is_plausible(huge.tolist())
    lo, hi = workspace_box(ctx)
    b = ctx.surfaces["femur"].mesh.bounds
    assert lo[2] <= b[4] - WORKSPACE_MARGIN_MM + 1e-9 and hi[2] >= b[5] + WORKSPACE_MARGIN_MM - 1e-9
    assert workspace_box(NavigationContext(ctx.toolset)) == ((-WORKSPACE_MARGIN_MM,) * 3, (WORKSPACE_MARGIN_MM,) * 3)


def test_absurd_poses_through_the_workflow(scene):
    """The same through Workflow.process: register on the scripted OR, then absurd frames."""
    sc, ctx, poses = scene
    g = sc.geometry
    wf = Workflow(NavigationContext(sc.toolset, cuts=ctx.cuts, surfaces=ctx.surfaces), list(g.fiducial_names), g.fiducials_ct_mm,
                  check_points_ct_mm=g.targets_ct_mm, config=WorkflowConfig(surface_points=0))
    last = None
    for fr in sc.frames(50.0, tracker_noise_mm=0.1, rotation_noise_deg=0.05, seed=3):
        wf.process(fr, clock=None)
        last = fr
        if wf.registration is not None:
            break
    assert wf.registration is not None, [e.text for e in wf.events]
    now, seq = last.host_time_s + 0.01, last.sequence + 1
    live = wf.process(_frame(poses, seq, now), clock=None)
    assert live.tracking and live.status("Pointer") is NavStatus.LIVE and math.isfinite(live.pointer_to_bone_mm)
    for k, (what, bad) in enumerate(_absurd_variants(sc, poses["Pointer"]).items()):
        st = wf.process(_frame({**poses, "Pointer": bad}, seq + 1 + k, now + 0.01 * (k + 1)), clock=None)
        _assert_no_numbers_for(st, "Pointer")
        assert math.isnan(st.pointer_to_bone_mm), what
        assert st.status("Saw") is NavStatus.LIVE and "distal_femur" in st.saw, what


def test_overlay_readout_names_the_implausible_tool_and_prints_no_nan(scene):
    from orthonav.navigation.overlay import NavigationScene

    sc, ctx, poses = scene
    view = NavigationScene(ctx.toolset, {"femur": ctx.surfaces["femur"].mesh}, cuts=ctx.cuts, window_size=(400, 300))
    try:
        st = compute_state(_frame({**poses, "Pointer": _moved(poses["Pointer"], [3e38, 0.0, 0.0])}), ctx, clock=None)
        view.update(st)
        texts = [view.status_text.GetInput(), view.panel_labels.GetInput()] + [a.GetInput() for a in view.panel_values.values()]
        assert "Pointer: IMPLAUSIBLE POSE" in texts[0]
        assert not any("nan" in t.lower() or "e+38" in t for t in texts), texts
        assert "POINTER" not in texts[1]  # no tip coordinates, no distance for it
        st = compute_state(_frame({**poses, "Reference": _moved(poses["Reference"], [math.nan, 0.0, 0.0])}), ctx, clock=None)
        view.update(st)
        assert "REFERENCE POSE IMPLAUSIBLE" in view.status_text.GetInput()
        assert view.banner.GetInput() == "NOT TRACKING"
    finally:
        view.close()
