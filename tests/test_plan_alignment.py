"""Alignment angles, axes and cut planes on landmark sets with known angles (exact truth)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from orthonav.core import transforms as tf
from orthonav.core.errors import InputError, SchemaError
from orthonav.planning.tka.alignment import compute_angles, compute_axes, limb_frames
from orthonav.planning.tka.cuts import kinematic_cuts, mechanical_cuts
from orthonav.planning.schema import Plan, load_plan, save_plan


def synthetic_landmarks(hka=177.0, ldfa=88.0, mpta=86.0, slope=6.0, rot=3.0) -> dict[str, np.ndarray]:
    """Right-leg landmarks in a limb frame (x medial, y posterior, z proximal) built from angles."""
    d = np.radians
    L = {
        "femoral_knee_centre": np.zeros(3),
        "femoral_head_centre": np.array([0.0, 0.0, 450.0]),
        "medial_epicondyle": np.array([40.0, 0.0, 0.0]),
        "lateral_epicondyle": np.array([-40.0, 0.0, 0.0]),
        "distal_medial_condyle": np.array([22.0, 5.0, -25.0]),
        "distal_lateral_condyle": np.array([-22.0, 5.0, -25.0 + 44.0 * np.tan(d(90.0 - ldfa))]),
        "posterior_medial_condyle": np.array([22.0, 28.0, -10.0]),
        "posterior_lateral_condyle": np.array([-22.0, 28.0 - 44.0 * np.tan(d(rot)), -10.0]),
    }
    tkc = np.array([0.0, 0.0, -5.0])
    v = d(180.0 - hka)
    L["tibial_knee_centre"] = tkc
    L["ankle_centre"] = tkc + 380.0 * np.array([np.sin(v), 0.0, -np.cos(v)])
    t_prox = np.array([-np.sin(v), 0.0, np.cos(v)])
    t_med = np.array([np.cos(v), 0.0, np.sin(v)])
    line = np.cos(d(mpta)) * (-t_prox) + np.sin(d(mpta)) * t_med
    L["medial_plateau_centre"] = tkc + 22.0 * line
    L["lateral_plateau_centre"] = tkc - 22.0 * line
    tangent = np.cos(d(slope)) * np.array([0.0, -1.0, 0.0]) + np.sin(d(slope)) * t_prox
    L["medial_plateau_anterior"] = L["medial_plateau_centre"] + 15.0 * tangent
    L["medial_plateau_posterior"] = L["medial_plateau_centre"] - 15.0 * tangent
    return L


EXPECTED = {"hka": 177.0, "ldfa": 88.0, "mpta": 86.0, "slope": 6.0, "femoral_rotation": 3.0}


def _check(angles, expected, tol=1e-9):
    assert set(angles) == set(expected)
    for k, v in expected.items():
        assert angles[k] == pytest.approx(v, abs=tol), k


def test_angles_exact_and_invariant_to_pose_and_side():
    L = synthetic_landmarks()
    _check(compute_angles(L), EXPECTED)
    rng = np.random.default_rng(5)
    for _ in range(5):  # any rigid placement in the CT
        T = tf.random_rigid(rng)
        _check(compute_angles({k: tf.apply(T, v) for k, v in L.items()}), EXPECTED)
    # A left leg (mirror image) has the same angles: nothing assumes the side or CT axes.
    _check(compute_angles({k: v * np.array([-1.0, 1.0, 1.0]) for k, v in L.items()}), EXPECTED)


def test_angle_signs_varus_valgus_slope_rotation():
    valgus = dict(hka=184.0, ldfa=92.0, mpta=93.0, slope=-2.0, rot=-1.0)
    _check(compute_angles(synthetic_landmarks(**valgus)), {"hka": 184.0, "ldfa": 92.0, "mpta": 93.0, "slope": -2.0, "femoral_rotation": -1.0})


def test_slope_from_tangent_matches_rim_points():
    L = synthetic_landmarks()
    tangent = L["medial_plateau_posterior"] - L["medial_plateau_anterior"]  # pointing posteriorly, as in truth
    L2 = {k: v for k, v in L.items() if not k.startswith("medial_plateau_a") and not k.startswith("medial_plateau_p")}
    assert "slope" not in compute_angles(L2)
    assert compute_angles(L2, medial_plateau_ap_tangent_lps=tangent)["slope"] == pytest.approx(6.0, abs=1e-9)


def test_phantom_truth_angle_code_on_the_same_closed_form_limbs():
    """The phantom's truth angles come from ``orthonav.phantoms.angles.knee_angles``: it is checked
    here against the construction values of these hand-built limbs (closed form), in any pose and
    for a left leg, not against planning's ``compute_angles``."""
    from orthonav.phantoms.angles import knee_angles

    rng = np.random.default_rng(8)
    for prm, want in ((dict(), EXPECTED),
                      (dict(hka=184.0, ldfa=92.0, mpta=93.0, slope=-2.0, rot=-1.0),
                       {"hka": 184.0, "ldfa": 92.0, "mpta": 93.0, "slope": -2.0, "femoral_rotation": -1.0})):
        L = synthetic_landmarks(**prm)
        tangent = L["medial_plateau_posterior"] - L["medial_plateau_anterior"]
        T = tf.random_rigid(rng)
        placed = {k: tf.apply(T, v) for k, v in L.items()}
        _check(knee_angles(placed, medial_plateau_ap_tangent_lps=tf.apply_vector(T, tangent), side="right"), want)
        mirror = np.array([-1.0, 1.0, 1.0])
        _check(knee_angles({k: v * mirror for k, v in L.items()}, medial_plateau_ap_tangent_lps=tangent * mirror, side="left"), want)


def test_missing_landmarks_omit_angles_and_bad_values_raise():
    L = synthetic_landmarks()
    del L["ankle_centre"]
    a = compute_angles(L)
    assert "hka" not in a and "mpta" not in a and a["ldfa"] == pytest.approx(88.0)
    L = synthetic_landmarks()
    L["femoral_head_centre"] = np.array([np.nan, 0.0, 1.0])
    with pytest.raises(InputError):
        compute_angles(L)
    L = synthetic_landmarks()
    L["femoral_head_centre"] = L["femoral_knee_centre"]
    with pytest.raises(InputError, match="degenerate"):
        compute_angles(L)


def test_axes_directions():
    L = synthetic_landmarks()
    ax = compute_axes(L)
    np.testing.assert_allclose(ax["femoral_mechanical"].direction_lps, [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(ax["transepicondylar"].direction_lps, [-1, 0, 0], atol=1e-12)
    fr = limb_frames(L)
    np.testing.assert_allclose(fr.femur_anterior, [0, -1, 0], atol=1e-12)  # away from the posterior condyles


def test_mechanical_cuts_geometry():
    L = synthetic_landmarks()
    T = tf.random_rigid(np.random.default_rng(11))
    Lt = {k: tf.apply(T, v) for k, v in L.items()}
    cuts = mechanical_cuts(Lt, resection_mm=9.0, slope_deg=3.0)
    f, t = cuts["distal_femur"], cuts["proximal_tibia"]
    fr = limb_frames(Lt)
    # Femur: perpendicular to the mechanical axis, normal distal, 9 mm above the most distal condyle.
    np.testing.assert_allclose(f.normal_lps, -fr.femur_proximal, atol=1e-12)
    assert f.reference == "distal_medial_condyle"  # ldfa 88: the medial condyle is more distal
    assert f.depths_mm["distal_medial_condyle"] == pytest.approx(9.0, abs=1e-9)
    lat_drop = 44.0 * np.tan(np.radians(2.0))
    assert f.depths_mm["distal_lateral_condyle"] == pytest.approx(9.0 - lat_drop, abs=1e-9)
    # Tibia: 9 mm below the lateral plateau along the axis; 3 deg posterior slope; normal proximal.
    assert t.depths_mm["lateral_plateau_centre"] == pytest.approx(9.0, abs=1e-9)
    n = np.asarray(t.normal_lps)
    assert np.degrees(np.arccos(n @ fr.tibia_proximal)) == pytest.approx(3.0, abs=1e-9)
    assert n @ fr.tibia_anterior < 0  # tilted back: the anterior edge is higher
    assert abs(n @ fr.tibia_lateral) < 1e-12  # no coronal tilt
    # The kept bone (the shaft) is on the negative side of both planes.
    for cut, far in ((f, "femoral_head_centre"), (t, "ankle_centre")):
        assert (Lt[far] - np.asarray(cut.point_lps_mm)) @ np.asarray(cut.normal_lps) < 0


def test_kinematic_cuts_parallel_to_joint_lines():
    L = synthetic_landmarks()
    cuts = kinematic_cuts(L, resection_mm=8.0)
    f, t = cuts["distal_femur"], cuts["proximal_tibia"]
    assert f.depths_mm["distal_medial_condyle"] == pytest.approx(f.depths_mm["distal_lateral_condyle"], abs=1e-9)
    assert t.depths_mm["medial_plateau_centre"] == pytest.approx(t.depths_mm["lateral_plateau_centre"], abs=1e-9)
    # Native slope kept: the tangent of the medial plateau lies in the cut plane.
    tangent = L["medial_plateau_anterior"] - L["medial_plateau_posterior"]
    assert abs(np.asarray(t.normal_lps) @ tangent / np.linalg.norm(tangent)) < 1e-9


def test_cut_inputs_validated():
    L = synthetic_landmarks()
    with pytest.raises(InputError, match="resection_mm"):
        mechanical_cuts(L, resection_mm=-1.0)
    with pytest.raises(InputError, match="slope"):
        mechanical_cuts(L, slope_deg=40.0)
    del L["ankle_centre"]
    with pytest.raises(InputError, match="ankle_centre"):
        mechanical_cuts(L)


def test_plan_json_round_trip_newer_and_corrupt(tmp_path):
    L = synthetic_landmarks()
    plan = Plan(angles_deg=compute_angles(L), cuts=mechanical_cuts(L), axes=compute_axes(L))
    p = save_plan(tmp_path / "plan.json", plan)
    back = load_plan(p)
    assert back.angles_deg == pytest.approx(plan.angles_deg)
    assert back.cuts["distal_femur"].depths_mm == pytest.approx(plan.cuts["distal_femur"].depths_mm)
    data = json.loads(p.read_text(encoding="utf-8"))
    data["schema_version"] = Plan.SCHEMA_VERSION + 1
    (tmp_path / "newer.json").write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="newer") as err:
        load_plan(tmp_path / "newer.json")
    assert err.value.path == tmp_path / "newer.json" and "newer.json" in str(err.value)
    (tmp_path / "corrupt.json").write_text(p.read_text(encoding="utf-8")[:200])
    with pytest.raises(SchemaError, match="not valid JSON") as err:
        load_plan(tmp_path / "corrupt.json")
    assert err.value.path == tmp_path / "corrupt.json"
    with pytest.raises(InputError, match="not found") as err:
        load_plan(tmp_path / "absent.json")
    assert err.value.path == tmp_path / "absent.json"
    data = json.loads(p.read_text(encoding="utf-8"))
    data["cuts"]["distal_femur"]["normal_lps"] = [0, 0, 0]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="cuts.distal_femur.normal_lps"):
        load_plan(tmp_path / "bad.json")


def test_refresh_depths_follows_moved_landmarks():
    """A landmark edit re-measures the depths of cuts that are not implant-derived (the plane stays)."""
    from orthonav.planning.tka.session import refresh_depths

    L = synthetic_landmarks()
    cuts = mechanical_cuts(L, resection_mm=9.0, slope_deg=3.0)
    fr = limb_frames(L)
    L2 = dict(L)
    L2["distal_lateral_condyle"] = L["distal_lateral_condyle"] - 1.5 * fr.femur_proximal  # 1.5 mm more distal
    L2["medial_plateau_centre"] = L["medial_plateau_centre"] + 0.5 * fr.tibia_proximal  # 0.5 mm higher
    f = refresh_depths(cuts["distal_femur"], L2)
    t = refresh_depths(cuts["proximal_tibia"], L2)
    assert f.point_lps_mm == cuts["distal_femur"].point_lps_mm and f.normal_lps == cuts["distal_femur"].normal_lps
    assert f.depths_mm["distal_lateral_condyle"] == pytest.approx(cuts["distal_femur"].depths_mm["distal_lateral_condyle"] + 1.5, abs=1e-9)
    assert f.depths_mm["distal_medial_condyle"] == pytest.approx(9.0, abs=1e-9)
    assert t.depths_mm["medial_plateau_centre"] == pytest.approx(cuts["proximal_tibia"].depths_mm["medial_plateau_centre"] + 0.5, abs=1e-9)
    assert t.resection_depth_mm == pytest.approx(9.0, abs=1e-9)  # reference (lateral plateau) unchanged
