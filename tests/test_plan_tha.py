"""Automatic THA planning against the synthetic pelvis phantom's ground truth.

The session's small hip phantom (``small_hip_phantom``) is written as a case;
its TRUE meshes are copied to CASE/meshes (standing in for segmentation) and ``auto_plan``
runs on the case folder (it detects the hip bones and plans a THA on both sides).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from orthonav.core.errors import InputError
from orthonav.core.transforms import apply_vector, make_rigid
from orthonav.phantoms.hip import hip_angles
from orthonav.planning.auto import auto_plan, case_procedure, load_case_meshes
from orthonav.planning.implants import CUP_SIZES, STEM_SIZES
from orthonav.planning.schema import load_plan
from orthonav.planning.tha import (
    ThaSession,
    app_frame,
    build_tha_plan,
    choose_cup_size,
    stem_clearance,
)

pytestmark = pytest.mark.slow

SIDES = ("left", "right")
HIP_BONES = ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right")
LANDMARK_TOL_MM = 1.5
ANGLE_TOL_DEG = 0.5
TARGET_TOL_DEG = 0.1


@pytest.fixture(scope="module")
def hip(small_hip_phantom, tmp_path_factory):
    from orthonav.phantoms.synthetic import write_phantom_case

    phantom = small_hip_phantom  # make_hip_phantom(seed=0, small=True), shared by the session
    case = tmp_path_factory.mktemp("plan_hip")
    write_phantom_case(phantom, case, printable=False)
    (case / "meshes").mkdir()
    for bone in HIP_BONES:
        shutil.copy(case / "truth" / "meshes" / f"{bone}.stl", case / "meshes" / f"{bone}.stl")
    plan = auto_plan(case)
    return phantom, case, plan


def _implant(plan, family, side):
    return next(i for i in plan.implants if i.family == family and i.bone.endswith(side))


def test_case_is_detected_as_a_hip_and_planned_on_both_sides(hip):
    _, case, plan = hip
    assert case_procedure(case) == "tha"
    assert plan.procedure == "tha" and plan.side == "both"
    assert sorted((i.family, i.bone) for i in plan.implants) == [
        ("tha_cup", "hip_left"), ("tha_cup", "hip_right"), ("tha_stem", "femur_left"), ("tha_stem", "femur_right"),
    ]
    assert set(plan.cuts) == {"neck_left", "neck_right"}


def test_landmarks_match_truth(hip):
    phantom, _, plan = hip
    truth = phantom.truth.landmarks_lps_mm
    assert set(truth) <= set(plan.landmarks)
    for name, p in truth.items():
        err = np.linalg.norm(np.asarray(plan.landmarks[name].position_lps_mm) - p)
        assert err < LANDMARK_TOL_MM, (name, err)
        assert plan.landmarks[name].method
    for side in SIDES:
        assert plan.landmarks[f"femoral_head_centre_{side}"].method.startswith("sphere fit")
        assert plan.landmarks[f"acetabulum_centre_{side}"].method.startswith("sphere fit of the socket")
    # the fiducial beads of the CT are in the plan too (navigation registers with them)
    names, pts = phantom.truth.points("fiducials")
    for n, p in zip(names, pts):
        assert np.linalg.norm(np.asarray(plan.landmarks[n].position_lps_mm) - p) < 0.5, n


def test_native_acetabular_angles_match_truth(hip):
    phantom, _, plan = hip
    for side in SIDES:
        for kind in ("inclination", "anteversion"):
            key = f"acetabular_{kind}_{side}"
            assert plan.angles_deg[key] == pytest.approx(phantom.truth.angles_deg[key], abs=ANGLE_TOL_DEG), key
        axis = np.asarray(plan.axes[f"acetabular_{side}"].direction_lps)
        true_axis = np.asarray(phantom.truth.parameters[f"acetabular_axis_{side}_lps"])
        assert np.degrees(np.arccos(np.clip(axis @ true_axis, -1, 1))) < ANGLE_TOL_DEG, side
    # same formulas as the phantom's reference implementation (docs/anatomy.md)
    lms = {k: v.position_lps_mm for k, v in plan.landmarks.items()}
    ref = hip_angles(lms, {s: plan.axes[f"acetabular_{s}"].direction_lps for s in SIDES})
    for k, v in ref.items():
        assert plan.angles_deg[k] == pytest.approx(v, abs=1e-9)


def test_cup_at_the_requested_orientation(hip):
    phantom, case, plan = hip
    lms = {k: v.position_lps_mm for k, v in plan.landmarks.items()}
    for side in SIDES:
        cup = _implant(plan, "tha_cup", side)
        z = np.asarray(cup.ct_from_implant)[:3, 2]
        assert plan.angles_deg[f"cup_inclination_{side}"] == pytest.approx(40.0, abs=TARGET_TOL_DEG)
        assert plan.angles_deg[f"cup_anteversion_{side}"] == pytest.approx(15.0, abs=TARGET_TOL_DEG)
        # independently, with the phantom's angle code on the planned APP and on the true APP
        ref = hip_angles(lms, {side: z})
        assert ref[f"acetabular_inclination_{side}"] == pytest.approx(40.0, abs=TARGET_TOL_DEG)
        true = hip_angles(phantom.truth.landmarks_lps_mm, {side: z})
        assert true[f"acetabular_inclination_{side}"] == pytest.approx(40.0, abs=ANGLE_TOL_DEG)
        assert true[f"acetabular_anteversion_{side}"] == pytest.approx(15.0, abs=ANGLE_TOL_DEG)
        # the cup sits at the native acetabulum centre (no medialisation by default)
        c = np.asarray(cup.ct_from_implant)[:3, 3]
        assert np.linalg.norm(c - phantom.truth.landmarks_lps_mm[f"acetabulum_centre_{side}"]) < LANDMARK_TOL_MM
    # another target, one side, medialised
    meshes = load_case_meshes(case, "tha")
    other = build_tha_plan(meshes, side="left", inclination_deg=45.0, anteversion_deg=20.0, medialise_mm=3.0)
    assert other.side == "left" and {i.bone for i in other.implants} == {"hip_left", "femur_left"}
    assert other.angles_deg["cup_inclination_left"] == pytest.approx(45.0, abs=TARGET_TOL_DEG)
    assert other.angles_deg["cup_anteversion_left"] == pytest.approx(20.0, abs=TARGET_TOL_DEG)
    assert other.metrics["cup_medialisation_left_mm"] == pytest.approx(3.0, abs=1e-9)
    assert "cup_inclination_right" not in other.angles_deg
    with pytest.raises(InputError, match="inclination"):
        build_tha_plan(meshes, side="left", inclination_deg=120.0)


def test_cup_size_reaming_and_coverage(hip):
    phantom, _, plan = hip
    r_true = phantom.truth.parameters["socket_radius_mm"]
    for side in SIDES:
        r = plan.metrics[f"socket_radius_{side}_mm"]
        assert r == pytest.approx(r_true, abs=0.2)
        cup = _implant(plan, "tha_cup", side)
        d = CUP_SIZES[cup.size]["outer_diameter_mm"]
        # rule: the smallest cup >= socket diameter + 2 mm reaming (within the 0.2 mm fit tolerance)
        assert d >= 2 * r_true + 2.0 - 0.4
        assert d - 2.0 < 2 * r_true + 2.0 + 0.4
        assert cup.size == choose_cup_size(r, ream_mm=2.0)[0]
        assert plan.metrics[f"cup_reaming_depth_{side}_mm"] == pytest.approx(d / 2 - r, abs=1e-6)
        # the phantom's socket is a full hemisphere in bone: the cup is covered all round
        assert plan.metrics[f"cup_coverage_{side}_fraction"] > 0.95
    assert choose_cup_size(28.0, ream_mm=2.0) == ("58", True)
    assert choose_cup_size(40.0) == (max(CUP_SIZES, key=lambda s: CUP_SIZES[s]["outer_diameter_mm"]), False)


def test_stem_restores_head_centre_offset_and_leg_length(hip):
    phantom, case, plan = hip
    prm = phantom.truth.parameters
    ct_from_limb = np.asarray(phantom.truth.ct_from_limb)
    true_offset = prm["neck_length_mm"] * np.sin(np.radians(180.0 - prm["neck_shaft_deg"]))
    for side, sx in (("left", 1.0), ("right", -1.0)):
        stem = _implant(plan, "tha_stem", side)
        m = np.asarray(stem.ct_from_implant)
        head_true = np.asarray(phantom.truth.landmarks_lps_mm[f"femoral_head_centre_{side}"])
        assert np.linalg.norm(m[:3, 3] - head_true) < LANDMARK_TOL_MM
        # the phantom's shaft runs distally along u_d (7 deg medial tilt) in the pelvis frame
        u_d = np.array([-sx * np.sin(np.radians(7.0)), 0.0, -np.cos(np.radians(7.0))])
        shaft_true = -apply_vector(ct_from_limb, u_d)
        shaft = np.asarray(plan.axes[f"femoral_shaft_{side}"].direction_lps)
        assert np.degrees(np.arccos(np.clip(shaft @ shaft_true, -1, 1))) < 1.0, side
        # stem along the shaft (|a x b| = sin of the angle: well conditioned near 0, unlike acos)
        assert m[:3, 2] @ shaft > 0 and np.linalg.norm(np.cross(m[:3, 2], shaft)) < 1e-9
        assert plan.metrics[f"femoral_offset_{side}_mm"] == pytest.approx(true_offset, abs=0.5)
        assert STEM_SIZES[stem.size]["offset_mm"] == min((v["offset_mm"] for v in STEM_SIZES.values()), key=lambda o: abs(o - true_offset))
        for k in ("leg_length_change", "femoral_offset_change", "global_offset_change"):
            assert plan.metrics[f"{k}_{side}_mm"] == pytest.approx(0.0, abs=1e-6), k
        assert plan.angles_deg[f"neck_shaft_{side}"] == pytest.approx(prm["neck_shaft_deg"], abs=3.0)
        # the neck cut: perpendicular to the stem's neck, the stated depth below the head centre
        cut = plan.cuts[f"neck_{side}"]
        n, p = np.asarray(cut.normal_lps), np.asarray(cut.point_lps_mm)
        depth = plan.metrics[f"neck_cut_below_head_{side}_mm"]
        assert depth == pytest.approx(plan.metrics[f"femoral_head_radius_{side}_mm"] + 10.0)
        assert (m[:3, 3] - p) @ n == pytest.approx(depth, abs=1e-9)  # the head is on the removed side
        assert cut.bone == f"femur_{side}" and cut.resection_depth_mm == pytest.approx(depth)
        assert plan.angles_deg[f"stem_neck_shaft_{side}"] == pytest.approx(135.0, abs=1e-6)
        # the stem body stays inside the femur; pushed 8 mm towards the calcar it breaks out
        clear = plan.metrics[f"stem_cortex_clearance_{side}_mm"]
        assert clear > 2.0
        femur = load_case_meshes(case, "tha")[f"femur_{side}"]
        assert stem_clearance(stem, femur) == pytest.approx(clear, abs=1e-9)
        pushed = stem.model_copy(update={"ct_from_implant": (m @ make_rigid(None, [8.0, 0.0, 0.0])).tolist()})
        assert stem_clearance(pushed, femur) < clear - 4.0


def test_plan_json_round_trip(hip):
    _, case, plan = hip
    again = load_plan(case / "plan.json")
    assert again == plan
    assert again.procedure == "tha"
    for imp in again.implants:
        np.testing.assert_allclose(np.asarray(imp.ct_from_implant)[3], [0, 0, 0, 1])


def test_session_edits_recompute_angles_leg_length_and_undo(hip):
    _, case, plan = hip
    s = ThaSession(plan, load_case_meshes(case, "tha"))
    assert s.plan.angles_deg == pytest.approx(plan.angles_deg)
    sup = app_frame(plan.landmarks)[2]
    stem = _implant(plan, "tha_stem", "left")
    z = np.asarray(stem.ct_from_implant)[:3, 2]
    i = plan.implants.index(stem)
    after = s.move_implant(i, translation_mm=(0.0, 0.0, 2.0))  # the head 2 mm higher on the femur
    assert after.metrics["leg_length_change_left_mm"] == pytest.approx(2.0 * (z @ sup), abs=1e-9)
    assert after.metrics["leg_length_change_left_mm"] > 1.9
    shift = np.asarray(after.cuts["neck_left"].point_lps_mm) - np.asarray(plan.cuts["neck_left"].point_lps_mm)
    np.testing.assert_allclose(shift, 2.0 * z, atol=1e-9)  # the neck cut follows the stem
    assert after.metrics["leg_length_change_right_mm"] == pytest.approx(0.0, abs=1e-9)
    cup = _implant(plan, "tha_cup", "left")
    j = plan.implants.index(cup)
    after = s.move_implant(j, rotation_axis=(1.0, 0.0, 0.0), rotation_deg=5.0)
    turned = np.degrees(np.arccos(np.clip(np.asarray(after.implants[j].ct_from_implant)[:3, 2] @ np.asarray(cup.ct_from_implant)[:3, 2], -1, 1)))
    assert turned == pytest.approx(5.0, abs=1e-6)
    assert abs(after.angles_deg["cup_inclination_left"] - 40.0) + abs(after.angles_deg["cup_anteversion_left"] - 15.0) > 2.0
    # pulled 12 mm out of the socket along its axis, the cup loses bone cover
    after = s.move_implant(j, translation_mm=(0.0, 0.0, 12.0))
    assert after.metrics["cup_coverage_left_fraction"] < plan.metrics["cup_coverage_left_fraction"] - 0.2
    s.undo()
    s.undo()
    s.undo()
    assert s.plan.angles_deg == pytest.approx(plan.angles_deg, abs=1e-9)
    assert s.plan.metrics["leg_length_change_left_mm"] == pytest.approx(0.0, abs=1e-9)
    assert s.plan.metrics["cup_coverage_left_fraction"] == pytest.approx(plan.metrics["cup_coverage_left_fraction"])


def test_cup_axes_are_plan_trajectories_that_follow_the_cup(hip):
    """Issue 14 item 5: each planned cup axis is a plan trajectory (``cup_axis_<side>``) from
    60 mm out along the cup axis to the planned cup centre, stored in plan.json, and an edit of
    the cup carries its trajectory with it (undo restores it)."""
    from orthonav.planning.tha import CUP_APPROACH_MM

    _, case, plan = hip
    assert set(plan.trajectories) == {"cup_axis_left", "cup_axis_right"}
    assert load_plan(case / "plan.json").trajectories == plan.trajectories
    for side in SIDES:
        cup = np.asarray(_implant(plan, "tha_cup", side).ct_from_implant)
        t = plan.trajectories[f"cup_axis_{side}"]
        assert t.bone == f"hip_{side}"
        np.testing.assert_allclose(t.target_lps_mm, cup[:3, 3], atol=1e-9)
        np.testing.assert_allclose(t.entry_lps_mm, cup[:3, 3] + CUP_APPROACH_MM * cup[:3, 2], atol=1e-9)
    s = ThaSession(plan, load_case_meshes(case, "tha"))
    assert s.plan.trajectories == plan.trajectories
    j = plan.implants.index(_implant(plan, "tha_cup", "left"))
    after = s.move_implant(j, translation_mm=(1.0, -2.0, 3.0), rotation_axis=(1.0, 0.0, 0.0), rotation_deg=7.0)
    cup = np.asarray(after.implants[j].ct_from_implant)
    t = after.trajectories["cup_axis_left"]
    np.testing.assert_allclose(t.target_lps_mm, cup[:3, 3], atol=1e-9)
    np.testing.assert_allclose(t.entry_lps_mm, cup[:3, 3] + CUP_APPROACH_MM * cup[:3, 2], atol=1e-9)
    assert after.trajectories["cup_axis_right"] == plan.trajectories["cup_axis_right"]
    s.undo()
    assert s.plan.trajectories == plan.trajectories


def test_render_and_report_for_a_hip_plan(hip, tmp_path):
    from orthonav.planning.report import write_plan_report
    from orthonav.planning.scene import render_plan
    from PIL import Image

    _, case, plan = hip
    out = render_plan(case, tmp_path / "hip.png", size=(900, 600))
    img = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert img.shape == (600, 900, 3)
    for panel in np.array_split(img, 4, axis=1):
        assert (panel.sum(axis=2) < 700).mean() > 0.02  # something drawn in every panel
    html = write_plan_report(case)
    text = html.read_text(encoding="utf-8")
    # plain names, not snake_case keys (issue 18)
    for key in ("THA", "THA cup", "THA stem", "acetabular inclination left", "cup anteversion right", "neck left", "Leg length change, left"):
        assert key in text, key
    assert f"{plan.angles_deg['acetabular_inclination_left']:.1f}" in text  # angles shown to 0.1 deg (issue 18)
    assert (case / "report" / "plan_views.png").stat().st_size > 10_000


def test_missing_bones_give_clear_errors(hip, tmp_path):
    _, case, _ = hip
    empty = tmp_path / "empty"
    (empty / "meshes").mkdir(parents=True)
    with pytest.raises(InputError, match="no bones to plan"):
        auto_plan(empty)
    one = tmp_path / "one_side"
    (one / "meshes").mkdir(parents=True)
    for bone in ("hip_left", "femur_left"):
        shutil.copy(case / "meshes" / f"{bone}.stl", one / "meshes" / f"{bone}.stl")
    assert case_procedure(one) == "tha"
    with pytest.raises(InputError, match="both hip bones"):
        auto_plan(one)
    with pytest.raises(InputError, match="no hip_right"):
        build_tha_plan(load_case_meshes(one, "tha"), side="right")


# --- README "THA plan on true meshes (small phantom)": each figure at the README's level --------
# Measured on this fixture (small hip phantom, seed 0; left / right), 2026-12-04: head centres
# 0.040 / 0.048 mm (0.101 / 0.110 before this session's proximal-femur work), socket centres
# 0.064 / 0.071 mm; ASIS 0.373 / 0.718 mm, pubic tubercles 0.176 / 0.372 mm; native inclination /
# anteversion |error| 0.032-0.089 deg; planned cup 40 / 15 deg to 2e-15 deg in the plan's APP
# (within 0.033 deg in the TRUE APP); stem head centre = planned head centre (same figures as the
# head centres); leg length, femoral and global offset changes exactly 0.
README_CENTRE_MM = 0.12  # head and socket centres (measured <= 0.110)
# 2026-12-05, extreme points as the paraboloid apex of the 3 mm cap (planning.landmarks.cap_point):
# ASIS 0.825 / 0.804 mm, tubercles 0.344 / 0.335 mm from the phantom's EXACT extreme (the apex
# is an estimator of it, with a small shape bias), and at most 0.31 mm moved by 0.3 mm surface
# noise (up to 1.5 mm with the 0.5 mm cap's centroid, whose accuracy figures are above).
README_APP_LANDMARK_MM = 0.9  # ASIS and pubic tubercles (measured <= 0.825)
README_NATIVE_ANGLE_DEG = 0.10  # native inclination / anteversion (measured <= 0.089)
EXACT = 1e-9


def test_readme_tha_landmarks(hip):
    phantom, _, plan = hip
    truth = phantom.truth.landmarks_lps_mm
    err = {k: float(np.linalg.norm(np.asarray(plan.landmarks[k].position_lps_mm) - np.asarray(truth[k]))) for k in truth}
    for side in SIDES:
        for k in (f"femoral_head_centre_{side}", f"acetabulum_centre_{side}"):
            assert err[k] <= README_CENTRE_MM, (k, err[k])
        for k in (f"asis_{side}", f"pubic_tubercle_{side}"):
            assert err[k] <= README_APP_LANDMARK_MM, (k, err[k])
    assert len(err) == 8  # every truth landmark is one of the eight above


def test_readme_tha_native_angles(hip):
    phantom, _, plan = hip
    keys = [f"acetabular_{kind}_{side}" for side in SIDES for kind in ("inclination", "anteversion")]
    assert set(keys) == set(phantom.truth.angles_deg)
    for k in keys:
        assert abs(plan.angles_deg[k] - phantom.truth.angles_deg[k]) <= README_NATIVE_ANGLE_DEG, (k, plan.angles_deg[k] - phantom.truth.angles_deg[k])


def test_readme_tha_cup_stem_leg_length_and_offset(hip):
    """Planned cup exactly at 40 / 15 deg (the plan's own figure and, independently, the phantom's
    angle code on the plan's APP landmarks); stem head centre on the true head centre within the
    README's level; leg length and offset changes exactly 0 (the stem restores the head centre)."""
    phantom, _, plan = hip
    lms = {k: v.position_lps_mm for k, v in plan.landmarks.items()}
    for side in SIDES:
        assert abs(plan.angles_deg[f"cup_inclination_{side}"] - 40.0) <= EXACT
        assert abs(plan.angles_deg[f"cup_anteversion_{side}"] - 15.0) <= EXACT
        z = np.asarray(_implant(plan, "tha_cup", side).ct_from_implant)[:3, 2]
        ref = hip_angles(lms, {side: z})
        assert abs(ref[f"acetabular_inclination_{side}"] - 40.0) <= EXACT
        assert abs(ref[f"acetabular_anteversion_{side}"] - 15.0) <= EXACT
        head = np.asarray(_implant(plan, "tha_stem", side).ct_from_implant)[:3, 3]
        assert np.linalg.norm(head - np.asarray(phantom.truth.landmarks_lps_mm[f"femoral_head_centre_{side}"])) <= README_CENTRE_MM
        for k in ("leg_length_change", "femoral_offset_change", "global_offset_change"):
            assert abs(plan.metrics[f"{k}_{side}_mm"]) <= EXACT, k


def test_app_landmarks_hold_under_surface_noise(hip):
    """Issue 14 item 3 on the pelvis: the ASIS and pubic tubercles (extreme points along the APP
    normal) move <= 1 mm under 0.3 mm Gaussian surface noise (two seeded draws); measured
    <= 0.31 mm (the 0.5 mm cap's centroid used before: up to 1.5 mm)."""
    from orthonav.planning.landmarks import surface_samples
    from orthonav.planning.tha.landmarks import pelvic_landmarks

    phantom, _, plan = hip
    acetabula = {s: np.asarray(plan.landmarks[f"acetabulum_centre_{s}"].position_lps_mm) for s in SIDES}
    meshes = {s: phantom.truth_meshes[f"hip_{s}"] for s in SIDES}
    ref = pelvic_landmarks({s: surface_samples(m) for s, m in meshes.items()}, acetabula)
    rng = np.random.default_rng(0)
    for _draw in range(2):
        noisy = {}
        for s, m in meshes.items():
            m = m.copy()
            m.compute_normals(inplace=True, auto_orient_normals=True)
            m.points = np.asarray(m.points) + rng.normal(0.0, 0.3, m.n_points)[:, None] * np.asarray(m.point_data["Normals"])
            noisy[s] = surface_samples(m)
        found = pelvic_landmarks(noisy, acetabula)
        assert set(found) == set(ref), sorted(set(found) ^ set(ref))  # none lost, none new
        moved = {k: float(np.linalg.norm(v - ref[k])) for k, v in found.items()}
        assert max(moved.values()) <= 1.0, moved
