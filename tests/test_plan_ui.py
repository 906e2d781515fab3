"""Drag widgets of the planning window, driven without a display.

The widget callbacks are the ones the window wires (the affine widget's release on an
implant, the plane widget's end of interaction on a cut); the tests move the widgets
programmatically and check the plan, the metrics, the actors and undo.
"""

from __future__ import annotations

import numpy as np
import pytest
from orthonav.core.transforms import (
    apply,
    apply_vector,
    make_rigid,
    rotation_about_axis,
)
from orthonav.planning.implants import implant_delta, move_implant
from orthonav.planning.schema import CutPlane, ImplantPlacement, Plan
from orthonav.planning.ui import PlanEditor, plane_motion


def test_plane_motion_carries_the_plane_onto_the_new_one():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p0, p1 = rng.normal(scale=50.0, size=(2, 3))
        n0, n1 = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 3)))
        m = plane_motion(p0, n0, p1, n1)
        assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(apply_vector(m, n0), n1, atol=1e-12)
        assert (apply(m, p0) - p1) @ n1 == pytest.approx(0.0, abs=1e-9)  # the old point lands on the new plane
        # any point of the old plane lands on the new plane
        q = p0 + np.cross(n0, rng.normal(size=3))
        assert (apply(m, q) - p1) @ n1 == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(plane_motion(p0, n0, p0 + 7.0 * np.cross(n0, [1, 0, 0]), n0), np.eye(4), atol=1e-12)  # sliding in-plane: no motion


class _Recorder:
    """A stand-in for PlanSession that applies moves like it and records them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.moves: list[tuple[int, np.ndarray]] = []

    def move_implant(self, i, *, translation_mm, rotation_axis, rotation_deg):
        d = implant_delta(translation_mm=translation_mm, rotation_axis=rotation_axis, rotation_deg=rotation_deg)
        imps = list(self.plan.implants)
        imps[i] = move_implant(imps[i], d)
        self.plan = self.plan.model_copy(update={"implants": imps})
        self.moves.append((i, d))
        return self.plan


def _tka_like_plan() -> Plan:
    r = rotation_about_axis([0.3, 1.0, 0.2], np.radians(20.0))
    fem = make_rigid(r, [10.0, -5.0, 40.0])
    tray = make_rigid(r, [12.0, -3.0, 20.0])
    imps = [
        ImplantPlacement(family="tka_femoral", size="3", bone="femur", ct_from_implant=fem.tolist()),
        ImplantPlacement(family="tka_tibial_tray", size="3", bone="tibia", ct_from_implant=tray.tolist()),
    ]
    cuts = {
        "distal_femur": CutPlane(bone="femur", point_lps_mm=tuple(fem[:3, 3]), normal_lps=tuple(-fem[:3, 2]), resection_depth_mm=9.0),
        "proximal_tibia": CutPlane(bone="tibia", point_lps_mm=tuple(tray[:3, 3]), normal_lps=tuple(tray[:3, 2]), resection_depth_mm=9.0),
    }
    return Plan(implants=imps, cuts=cuts)


def test_dragging_a_tka_cut_plane_moves_its_component_in_its_own_frame():
    ed = PlanEditor(_Recorder(_tka_like_plan()))
    plan = ed.session.plan
    tray_cut = plan.cuts["proximal_tibia"]
    n = np.asarray(tray_cut.normal_lps)
    # 2 mm deeper (against the normal, which points into the removed bone); the widget's
    # normal may come back flipped: the cut keeps its side
    assert ed.drag_cut("proximal_tibia", -n, np.asarray(tray_cut.point_lps_mm) - 2.0 * n) is True
    i, d = ed.session.moves[-1]
    assert i == 1
    np.testing.assert_allclose(d[:3, 3], [0.0, 0.0, -2.0], atol=1e-9)  # along the tray's own -z
    np.testing.assert_allclose(d[:3, :3], np.eye(3), atol=1e-9)
    # tilt the distal femoral cut by 3 deg about the component's x axis (varus/valgus-like)
    fem = np.asarray(plan.implants[0].ct_from_implant)
    cut = plan.cuts["distal_femur"]
    tilt = rotation_about_axis(fem[:3, 0], np.radians(3.0))
    assert ed.drag_cut("distal_femur", tilt @ np.asarray(cut.normal_lps), cut.point_lps_mm) is True
    i, d = ed.session.moves[-1]
    assert i == 0
    new = np.asarray(ed.session.plan.implants[0].ct_from_implant)
    angle = np.degrees(np.arccos(np.clip(new[:3, 2] @ fem[:3, 2], -1, 1)))
    assert angle == pytest.approx(3.0, abs=1e-9)
    np.testing.assert_allclose(new[:3, 3], fem[:3, 3], atol=1e-9)  # rotated about the cut point = its origin
    # dragging the implant itself: the widget's matrix becomes the pose
    target = make_rigid(rotation_about_axis([0, 0, 1], np.radians(4.0)), [1.0, 2.0, 3.0]) @ new
    assert ed.drag_implant(0, target) is True
    np.testing.assert_allclose(ed.session.plan.implants[0].ct_from_implant, target, atol=1e-9)
    # a sheared matrix is refused with a message, the plan unchanged
    bad = target.copy()
    bad[:3, :3] *= 1.2
    assert ed.drag_implant(0, bad) is False and "orthonormal" in ed.message
    np.testing.assert_allclose(ed.session.plan.implants[0].ct_from_implant, target, atol=1e-9)
    assert ed.drag_cut("no_such_cut", [0, 0, 1], [0, 0, 0]) is False and "no cut" in ed.message


@pytest.fixture(scope="module")
def hip_case(tmp_path_factory):
    """A hip case holding the phantom's true meshes and a left THA plan (no CT needed)."""
    from orthonav.core.meshio import write_mesh
    from orthonav.phantoms.hip import make_hip_phantom
    from orthonav.planning.schema import save_plan
    from orthonav.planning.tha import build_tha_plan

    phantom = make_hip_phantom(seed=0, small=True)
    case = tmp_path_factory.mktemp("ui_hip")
    for bone, mesh in phantom.truth_meshes.items():
        write_mesh(mesh, case / "meshes" / f"{bone}.stl")
    save_plan(case / "plan.json", build_tha_plan(dict(phantom.truth_meshes), side="left"))
    return case


@pytest.mark.slow
def test_window_widgets_move_cup_and_neck_cut_with_undo(hip_case):
    from orthonav.planning.tha import app_frame
    from orthonav.planning.ui import open_plan_window

    seen: dict = {}

    def drive(pl):
        ed = pl.orthonav_editor
        w = pl.orthonav_widgets
        assert {"cut:neck_left"} <= set(w) and any(k.startswith("implant:") for k in w)
        seen["widgets"] = sorted(w)
        seen["shot0"] = pl.screenshot(return_img=True)
        # 1. the cup's affine widget: rotate the cup 6 deg about its own x and release
        session = ed.session
        plan0 = session.plan
        i_cup = next(i for i, imp in enumerate(plan0.implants) if imp.family == "tha_cup")
        cup0 = np.asarray(plan0.implants[i_cup].ct_from_implant)
        aw = w[f"implant:{i_cup}"]
        turned = cup0 @ make_rigid(rotation_about_axis([1.0, 0.0, 0.0], np.radians(6.0)))
        aw._main_actor.user_matrix = turned
        aw._release_callback(None, None)  # what the widget runs on mouse release
        p1 = session.plan
        seen["cup_turn_deg"] = np.degrees(np.arccos(np.clip(np.asarray(p1.implants[i_cup].ct_from_implant)[:3, 2] @ cup0[:3, 2], -1, 1)))
        seen["cup_angles"] = (p1.angles_deg["cup_inclination_left"], p1.angles_deg["cup_anteversion_left"])
        seen["actor_follows"] = np.allclose(aw._main_actor.user_matrix, p1.implants[i_cup].ct_from_implant)
        # 2. the neck cut's plane widget: 3 mm towards the head (less neck removed)
        cut0 = p1.cuts["neck_left"]
        n = np.asarray(cut0.normal_lps)
        pw = w["cut:neck_left"]
        pw.SetOrigin(*(np.asarray(cut0.point_lps_mm) + 3.0 * n))
        pw.InvokeEvent("EndInteractionEvent")  # what the widget fires when the drag ends
        p2 = session.plan
        seen["cut_shift"] = np.asarray(p2.cuts["neck_left"].point_lps_mm) - np.asarray(cut0.point_lps_mm)
        i_stem = next(i for i, imp in enumerate(p2.implants) if imp.family == "tha_stem")
        seen["stem_shift"] = np.asarray(p2.implants[i_stem].ct_from_implant)[:3, 3] - np.asarray(p1.implants[i_stem].ct_from_implant)[:3, 3]
        seen["leg_length"] = p2.metrics["leg_length_change_left_mm"]
        seen["n"], seen["sup"] = n, app_frame(p2.landmarks)[2]
        seen["readout"] = ed.readout()
        seen["shot1"] = pl.screenshot(return_img=True)
        # 3. undo both drags with the key
        ed.handle_key("u")
        ed.handle_key("u")
        seen["undone"] = session.plan
        seen["plan0"] = plan0

    open_plan_window(hip_case, off_screen=True, on_ready=drive)
    assert seen["cup_turn_deg"] == pytest.approx(6.0, abs=1e-6)
    inc, ant = seen["cup_angles"]
    assert abs(inc - 40.0) + abs(ant - 15.0) > 3.0  # the live angles follow the drag
    assert seen["actor_follows"]
    np.testing.assert_allclose(seen["cut_shift"], 3.0 * seen["n"], atol=1e-9)
    np.testing.assert_allclose(seen["stem_shift"], 3.0 * seen["n"], atol=1e-9)  # the stem seats with its cut
    assert seen["leg_length"] == pytest.approx(3.0 * (seen["n"] @ seen["sup"]), abs=1e-9)
    assert "leg_length_change_left" in seen["readout"]
    assert seen["undone"].implants == seen["plan0"].implants
    assert seen["undone"].metrics["leg_length_change_left_mm"] == pytest.approx(0.0, abs=1e-9)
    assert np.abs(seen["shot1"].astype(float) - seen["shot0"].astype(float)).sum() > 0  # the view changed
