"""Live knee alignment (navigation/alignment.py) against known rigid motions of the small knee
phantom's plan.

The plan comes from ``auto_plan`` on the session's small knee phantom (its true meshes standing
in for segmentation, as in test_plan_phantom.py). Knee poses are built here from the plan's
own axes: a pure flexion turns the tibia about the femoral flexion axis, a varus stress about
the floating axis, a rotation about the tibial mechanical axis.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from orthonav.core import transforms as tf
from orthonav.core.errors import InputError
from orthonav.navigation.alignment import (
    KinematicSummary,
    KneeAlignment,
    hka_from_hip_centre,
    kinematic_summary,
    knee_alignment,
    knee_frames,
    rom_table,
)
from orthonav.planning.tka.alignment import compute_angles, limb_frames

EXACT_DEG = 1e-6  # the brief: flexion does not leak into varus/valgus (to 1e-6 deg)


@pytest.fixture(scope="module")
def plan(small_knee_phantom, tmp_path_factory):
    from orthonav.phantoms.synthetic import write_phantom_case
    from orthonav.planning.auto import auto_plan

    case = tmp_path_factory.mktemp("align_knee")
    write_phantom_case(small_knee_phantom, case, printable=False)
    (case / "meshes").mkdir()
    for bone in ("femur", "tibia", "fibula", "patella"):
        shutil.copy(case / "truth" / "meshes" / f"{bone}.stl", case / "meshes" / f"{bone}.stl")
    return auto_plan(case)


@pytest.fixture(scope="module")
def lms(plan):
    return {k: np.asarray(v.position_lps_mm, dtype=np.float64) for k, v in plan.landmarks.items()}


def _about(axis, centre, deg):
    r = tf.rotation_about_axis(axis, math.radians(deg))
    return tf.make_rigid(r, np.asarray(centre) - r @ np.asarray(centre))


class Knee:
    """Pose builders from the landmarks' frames (independent of navigation/alignment.py)."""

    def __init__(self, lms):
        fr = limb_frames(lms)
        self.lat, self.prox, self.ant = fr.femur_lateral, fr.femur_proximal, fr.femur_anterior
        self.t_axis = fr.tibia_proximal
        self.fkc = 0.5 * (lms["medial_epicondyle"] + lms["lateral_epicondyle"])
        self.tkc, self.ankle = lms["tibial_knee_centre"], lms["ankle_centre"]
        # flexion sign: which turn about the lateral axis moves the ankle posteriorly
        probe = tf.apply(_about(self.lat, self.fkc, 1.0), self.ankle) - self.ankle
        self.flex_sign = 1.0 if np.dot(probe, -self.ant) > 0 else -1.0

    def flex(self, deg, pose=None):
        """Turn the tibia by ``deg`` of flexion about the femoral flexion axis."""
        return _about(self.lat, self.fkc, self.flex_sign * deg) @ (np.eye(4) if pose is None else pose)

    def floating_axis(self, pose):
        e3 = pose[:3, :3] @ self.t_axis
        f = np.cross(e3, self.lat)
        return f / np.linalg.norm(f)

    def stress(self, deg, pose, centre=None):
        """Turn the tibia by ``deg`` about the floating axis through ``centre``, towards varus."""
        axis = self.floating_axis(pose)
        c = self.fkc if centre is None else centre
        probe = tf.apply(_about(axis, c, 1.0) @ pose, self.ankle) - tf.apply(pose, self.ankle)
        medial = -self.lat
        sign = 1.0 if np.dot(probe, medial) > 0 else -1.0
        return _about(axis, c, sign * deg) @ pose

    def rotate(self, deg, pose):
        """Turn the tibia by ``deg`` about its own mechanical axis, internally (tubercle medially)."""
        tub = self.tkc + 30.0 * np.cross(self.t_axis, np.cross(self.ant, self.t_axis))
        r = _about(self.t_axis, self.tkc, 1.0)
        probe = tf.apply(pose @ r, tub) - tf.apply(pose, tub)
        sign = 1.0 if np.dot(probe, -self.lat) > 0 else -1.0
        return pose @ _about(self.t_axis, self.tkc, sign * deg)


def test_identity_is_the_plans_native_alignment(plan, lms):
    a = knee_alignment(np.eye(4), lms)
    plan_varus = 180.0 - plan.angles_deg["hka"]
    # The plan projects the axes onto the femoral coronal plane: tan(plan) = tan(jcs) / cos(flexion).
    projected = math.degrees(math.atan(math.tan(math.radians(a.varus_valgus_deg)) / math.cos(math.radians(a.flexion_deg))))
    assert projected == pytest.approx(plan_varus, abs=EXACT_DEG)
    assert abs(a.varus_valgus_deg - plan_varus) < 1e-4  # measured 6e-5 deg at the CT's 0.34 deg of flexion
    assert a.hka_deg == pytest.approx(180.0 - a.varus_valgus_deg, abs=1e-12)
    assert 1.0 < a.varus_valgus_deg < 6.0 and abs(a.flexion_deg) < 3.0  # the phantom: a varus knee, extended
    # Landmarks given as the plan's Landmark objects work the same
    b = knee_alignment(np.eye(4), plan.landmarks)
    assert b == a


def test_identity_equals_plan_hka_exactly_when_the_ct_knee_is_straight(lms):
    # Move the ankle into the femoral coronal plane (zero CT flexion): then the coronal projection
    # and the JCS coincide and the angles agree to 1e-6 deg.
    fr = limb_frames(lms)
    straight = dict(lms)
    v = lms["ankle_centre"] - lms["tibial_knee_centre"]
    straight["ankle_centre"] = lms["tibial_knee_centre"] + v - np.dot(v, fr.femur_anterior) * fr.femur_anterior
    a = knee_alignment(np.eye(4), straight)
    assert abs(a.flexion_deg) < EXACT_DEG
    assert a.hka_deg == pytest.approx(compute_angles(straight)["hka"], abs=EXACT_DEG)


def test_pure_flexion_leaves_varus_and_rotation_unchanged(lms):
    knee, frames = Knee(lms), knee_frames(lms)
    native = knee_alignment(np.eye(4), frames)
    for deg in np.linspace(0.0, 120.0, 25):
        a = knee_alignment(knee.flex(deg), frames)
        assert a.varus_valgus_deg == pytest.approx(native.varus_valgus_deg, abs=EXACT_DEG)
        assert a.rotation_deg == pytest.approx(native.rotation_deg, abs=EXACT_DEG)
        assert a.flexion_deg == pytest.approx(native.flexion_deg + deg, abs=EXACT_DEG)


def test_varus_stress_adds_exactly_its_angle_at_any_flexion(lms):
    knee, frames = Knee(lms), knee_frames(lms)
    for flex in (0.0, 30.0, 90.0):
        base = knee.flex(flex)
        a0 = knee_alignment(base, frames)
        for x in (-5.0, -2.0, 3.0, 5.0):
            a = knee_alignment(knee.stress(x, base), frames)
            assert a.varus_valgus_deg == pytest.approx(a0.varus_valgus_deg + x, abs=EXACT_DEG)
            assert a.hka_deg == pytest.approx(a0.hka_deg - x, abs=EXACT_DEG)
            assert a.flexion_deg == pytest.approx(a0.flexion_deg, abs=EXACT_DEG)
            assert a.rotation_deg == pytest.approx(a0.rotation_deg, abs=EXACT_DEG)


def test_rotation_adds_nothing_to_the_others(lms):
    knee, frames = Knee(lms), knee_frames(lms)
    base = knee.stress(2.0, knee.flex(45.0))
    a0 = knee_alignment(base, frames)
    for x in (-15.0, 10.0):
        a = knee_alignment(knee.rotate(x, base), frames)
        assert a.rotation_deg == pytest.approx(a0.rotation_deg + x, abs=EXACT_DEG)
        assert a.varus_valgus_deg == pytest.approx(a0.varus_valgus_deg, abs=EXACT_DEG)
        assert a.flexion_deg == pytest.approx(a0.flexion_deg, abs=EXACT_DEG)


def test_translation_and_rotation_centre_do_not_matter(lms):
    knee, frames = Knee(lms), knee_frames(lms)
    pose = knee.stress(3.0, knee.flex(60.0))
    shifted = tf.make_rigid(translation_mm=[3.0, -7.0, 11.0]) @ pose
    assert knee_alignment(shifted, frames) == knee_alignment(pose, frames)
    other_centre = knee.stress(3.0, knee.flex(60.0), centre=knee.tkc + [5.0, 2.0, -10.0])
    a, b = knee_alignment(pose, frames), knee_alignment(other_centre, frames)
    assert b.varus_valgus_deg == pytest.approx(a.varus_valgus_deg, abs=EXACT_DEG)


def test_a_mirrored_left_knee_reads_the_same(lms):
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])  # LPS x -> -x: the right knee becomes a left knee
    left = {k: tf.apply(mirror, v) for k, v in lms.items()}
    knee = Knee(lms)
    for pose in (np.eye(4), knee.flex(70.0), knee.rotate(8.0, knee.stress(4.0, knee.flex(20.0)))):
        right = knee_alignment(pose, lms)
        lft = knee_alignment(mirror @ pose @ mirror, left)
        for f in ("varus_valgus_deg", "flexion_deg", "rotation_deg"):
            assert getattr(lft, f) == pytest.approx(getattr(right, f), abs=1e-9), f


def test_signs_follow_the_anatomy(lms):
    # Independent of the JCS formulas: flexion moves the ankle posteriorly, varus medially.
    fr = limb_frames(lms)
    frames = knee_frames(lms)
    a0 = knee_alignment(np.eye(4), frames)
    fkc, ankle = 0.5 * (lms["medial_epicondyle"] + lms["lateral_epicondyle"]), lms["ankle_centre"]
    for axis in (fr.femur_lateral, -fr.femur_lateral):
        pose = _about(axis, fkc, 10.0)
        moved = tf.apply(pose, ankle) - ankle
        a = knee_alignment(pose, frames)
        assert (a.flexion_deg > a0.flexion_deg) == (np.dot(moved, -fr.femur_anterior) > 0)
    for axis in (fr.femur_anterior, -fr.femur_anterior):
        pose = _about(axis, fkc, 4.0)
        moved = tf.apply(pose, ankle) - ankle
        a = knee_alignment(pose, frames)
        assert (a.varus_valgus_deg > a0.varus_valgus_deg) == (np.dot(moved, -fr.femur_lateral) > 0)


def test_image_free_hip_centre_changes_only_the_femoral_axis(lms):
    fr = limb_frames(lms)
    head = lms["femoral_head_centre"]
    same = knee_frames(lms, hip_centre_ct_mm=head)
    assert np.allclose(same.femur_rows, knee_frames(lms).femur_rows)
    moved_head = head - 10.0 * fr.femur_lateral  # 10 mm medially
    f0, f1 = knee_frames(lms), knee_frames(lms, hip_centre_ct_mm=moved_head)
    assert np.array_equal(f1.tibia_columns, f0.tibia_columns)
    assert np.allclose(f1.hip_centre_ct_mm, moved_head)
    # Checked against the plan's own HKA with the head moved (exact JCS <-> projection relation).
    moved = dict(lms, femoral_head_centre=moved_head)
    a = knee_alignment(np.eye(4), lms, hip_centre_ct_mm=moved_head)
    projected = math.degrees(math.atan(math.tan(math.radians(a.varus_valgus_deg)) / math.cos(math.radians(a.flexion_deg))))
    assert projected == pytest.approx(180.0 - compute_angles(moved)["hka"], abs=EXACT_DEG)
    # a head moved medially puts the knee further into varus: about atan(10 / femur length)
    length = np.linalg.norm(head - 0.5 * (lms["medial_epicondyle"] + lms["lateral_epicondyle"]))
    assert a.varus_valgus_deg - knee_alignment(np.eye(4), lms).varus_valgus_deg == pytest.approx(math.degrees(math.atan(10.0 / length)), abs=0.05)
    assert hka_from_hip_centre(lms, moved_head) == pytest.approx(a.hka_deg, abs=1e-12)
    # without any hip centre: refused, with the way out named
    no_head = {k: v for k, v in lms.items() if k != "femoral_head_centre"}
    with pytest.raises(InputError, match="kinematically"):
        knee_alignment(np.eye(4), no_head)
    assert knee_alignment(np.eye(4), no_head, hip_centre_ct_mm=head) == knee_alignment(np.eye(4), lms)


def test_bad_input_is_refused(lms):
    frames = knee_frames(lms)
    with pytest.raises(InputError, match="knee_frames"):
        knee_alignment(np.eye(4), frames, hip_centre_ct_mm=[0.0, 0.0, 0.0])
    with pytest.raises(InputError, match="4x4"):
        knee_alignment(np.eye(3), frames)
    bad = np.eye(4)
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="finite"):
        knee_alignment(bad, frames)
    with pytest.raises(InputError, match="ankle_centre"):
        knee_frames({k: v for k, v in lms.items() if k != "ankle_centre"})


def test_rom_table_bins_the_recorded_angles():
    flex = np.array([0.5, -2.0, 29.0, 33.0, 61.0, 120.0, np.nan])
    vv = np.array([3.0, 4.0, 2.0, 2.5, 1.0, 0.0, 9.0])
    rows = rom_table(flex, vv, medial_gap_mm=[10.0, 12.0, None, 9.0, 8.0, 7.0, 1.0], lateral_gap_mm=np.full(7, 11.0))
    assert [r["flexion_target_deg"] for r in rows] == [0.0, 30.0, 60.0, 90.0]
    assert [r["n"] for r in rows] == [2, 2, 1, 0]
    assert rows[0]["varus_valgus_mean_deg"] == pytest.approx(3.5) and rows[0]["flexion_mean_deg"] == pytest.approx(-0.75)
    assert rows[0]["varus_valgus_min_deg"] == 3.0 and rows[0]["varus_valgus_max_deg"] == 4.0
    assert rows[1]["medial_gap_mean_mm"] == pytest.approx(9.0) and rows[1]["lateral_gap_mean_mm"] == pytest.approx(11.0)
    assert rows[3]["varus_valgus_mean_deg"] is None and rows[3]["medial_gap_mean_mm"] is None
    assert "medial_gap_mean_mm" not in rom_table(flex, vv)[0]
    assert [r["n"] for r in rom_table(flex, vv, bins=(0, 120), half_width_deg=1)] == [1, 1]
    with pytest.raises(InputError, match="same length"):
        rom_table([0.0, 1.0], [1.0])


def test_kinematic_summary_records_units_in_keys(lms):
    frames = knee_frames(lms)
    s = kinematic_summary(Knee(lms).flex(30.0), frames)
    assert isinstance(s, KinematicSummary) and isinstance(s.alignment, KneeAlignment) and s.gaps is None
    d = s.to_dict()
    assert set(d) == {"varus_valgus_deg", "flexion_deg", "hka_deg", "rotation_deg", "medial_gap_mm", "lateral_gap_mm", "hip_centre"}
    assert d["flexion_deg"] == pytest.approx(knee_alignment(np.eye(4), frames).flexion_deg + 30.0, abs=EXACT_DEG)
    assert d["medial_gap_mm"] is None and d["hip_centre"] == "ct"
    with pytest.raises(InputError, match="hip_centre"):
        kinematic_summary(np.eye(4), frames, hip_centre="guess")
