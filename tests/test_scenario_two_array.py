"""The two-array OR simulator (issue 16): femur and tibia move independently, each with its array, with truth.

Built once on the session's small knee phantom (true meshes stand in for segmentation, then
``auto_plan``). The truth is checked for self-consistency by computations that do not use the
scenario's own read-outs: rigid arrays (the true hip centre does not move in the tracker, the
femoral knee centre is a fixed point of every knee pose), the contract's knee-pose formula from
the scripted array poses, the flexion and varus knobs recovered from the poses by projections,
the brute-force gaps against the plan and against navigation's own gap code.
"""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from orthonav.core import transforms as tf
from orthonav.phantoms.truth import read_truth
from orthonav.tracking.frame import ToolStatus


@pytest.fixture(scope="module")
def planned_knee(small_knee_case, tmp_path_factory):
    from orthonav.planning.auto import auto_plan

    root = tmp_path_factory.mktemp("two_array") / "case"
    shutil.copytree(small_knee_case.root, root)
    (root / "meshes").mkdir(exist_ok=True)
    for bone in ("femur", "tibia", "fibula", "patella"):
        shutil.copy(root / "truth" / "meshes" / f"{bone}.stl", root / "meshes" / f"{bone}.stl")
    return root, auto_plan(root)


@pytest.fixture(scope="module")
def geometry(planned_knee):
    from orthonav.phantoms.two_array_geometry import two_array_geometry

    return two_array_geometry(planned_knee[0])


@pytest.fixture(scope="module")
def scenario(geometry):
    from orthonav.phantoms.scenario_two_array import knee_two_array_scenario

    return knee_two_array_scenario(geometry, seed=3, fle_mm=0.25, array_dropout=("TibiaRef", 0.6))


def _times(sc, step_s=0.25):
    return np.arange(0.0, sc.duration_s, step_s)


def _knee_from_script(sc, poses):
    """The contract's knee pose from the scripted (noise-free) array poses and the TRUE registrations."""
    f, t = sc.geometry.femur, sc.geometry.tibia
    return (sc.ct_from_reference[f.bone] @ tf.invert(poses[f.reference]) @ poses[t.reference] @ tf.invert(sc.ct_from_reference[t.bone]))


def test_arrays_stay_rigid_on_their_bones(scenario):
    sc = scenario
    j = sc.geometry.joint
    hips, worst_knee, worst_contract = [], 0.0, 0.0
    for t in _times(sc):
        tr = sc.truth_at(float(t), gaps=False)
        refs = tr.tracker_from_reference  # true even while an array is hidden
        poses = {**sc.script(float(t)), **refs}
        tf.validate_rigid(refs["FemurRef"], tol=1e-9)
        # The femur turns about the TRUE hip centre, the pelvis still: its image in the tracker never moves.
        hips.append(tf.apply(refs["FemurRef"] @ tf.invert(sc.ct_from_reference["femur"]), sc.hip_centre_ct_mm))
        # Every knee rotation is about axes through the femoral knee centre: a fixed point of the knee pose.
        worst_knee = max(worst_knee, float(np.linalg.norm(tf.apply(tr.femur_ct_from_tibia_ct, j.knee_centre_mm) - j.knee_centre_mm)))
        worst_contract = max(worst_contract, float(np.abs(_knee_from_script(sc, poses) - tr.femur_ct_from_tibia_ct).max()))
    hips = np.array(hips)
    assert np.abs(hips - hips[0]).max() < 1e-9
    assert worst_knee < 1e-9 and worst_contract < 1e-9
    # The arrays are on their bones at plausible places: the tibial mount ~110 mm below the knee.
    below = float((sc.geometry.joint.tibial_knee_centre_mm - sc.geometry.tibia.mount_ct_mm) @ j.tibia_axis)
    assert below == pytest.approx(110.0, abs=3.0)
    assert 1100.0 < np.linalg.norm(tf.apply(sc.tracker_from_world, j.knee_centre_mm)) < 1900.0


def test_knobs_recovered_from_the_poses_independently(scenario, planned_knee):
    """Flexion and varus recovered by projections of the true mechanical axes (not the JCS read-out)."""
    from orthonav.navigation.alignment import knee_alignment

    sc = scenario
    j = sc.geometry.joint
    e1, posterior = j.femur_lateral, -j.femur_anterior

    def projected_flexion(k):
        """The tibia's distal direction against the femur's in the plane perpendicular to the
        flexion axis, positive when it turns posteriorly (deg)."""
        b = -(k[:3, :3] @ j.tibia_axis)
        b = b - (b @ e1) * e1
        return math.degrees(math.atan2(float(b @ posterior), float(b @ -j.femur_proximal)))

    native_flex = projected_flexion(np.eye(4))
    native_varus = math.degrees(math.asin(float(j.tibia_axis @ e1)))
    truth = read_truth(planned_knee[0])
    truth_landmarks = {k: np.asarray(v) for k, v in truth.landmarks_lps_mm.items()}
    assert [ph.label for ph in sc.phase_spans("rom_hold")] == ["0", "30", "60", "90", "120"]
    for ph in sc.phase_spans("rom_hold") + sc.phase_spans("stress_hold"):
        t = 0.5 * (ph.t0_s + ph.t1_s)
        tr = sc.truth_at(t, gaps=False)
        k = _knee_from_script(sc, {**sc.script(t), **tr.tracker_from_reference})
        if tr.leg.varus_deg == 0.0:  # (a projection is exact only without ab/adduction)
            assert projected_flexion(k) - native_flex == pytest.approx(tr.leg.flexion_deg, abs=1e-6)
        varus = math.degrees(math.asin(float((k[:3, :3] @ j.tibia_axis) @ e1))) - native_varus
        assert varus == pytest.approx(tr.leg.varus_deg, abs=1e-9)
        # The truth's alignment is the native one plus the knobs, and navigation's definition
        # (the JCS of navigation.alignment) reads the same angles from the TRUE landmarks.
        assert tr.alignment.flexion_deg - sc.geometry.native.flexion_deg == pytest.approx(tr.leg.flexion_deg, abs=1e-9)
        assert tr.alignment.varus_deg - sc.geometry.native.varus_deg == pytest.approx(tr.leg.varus_deg, abs=1e-9)
        nav = knee_alignment(tr.femur_ct_from_tibia_ct, truth_landmarks)
        assert (nav.flexion_deg, nav.varus_valgus_deg, nav.rotation_deg) == pytest.approx(
            (tr.alignment.flexion_deg, tr.alignment.varus_deg, tr.alignment.rotation_deg), abs=1e-6)
    assert {ph.label for ph in sc.phase_spans("stress_hold")} == {"varus@90", "valgus@90", "varus@0", "valgus@0"}
    # The native varus is the phantom's: 180 - truth HKA.
    assert sc.geometry.native.varus_deg == pytest.approx(180.0 - truth.angles_deg["hka"], abs=0.01)


def test_brute_force_gaps_against_the_plan_and_navigation(geometry, planned_knee):
    from orthonav.core.case import read_case_meshes
    from orthonav.navigation.gaps import gap_geometry, knee_gaps
    from orthonav.phantoms.gap_truth import true_gaps

    root, plan = planned_knee
    j = geometry.joint
    # Extension, the limb corrected to neutral (the native varus taken out): the mechanical cuts
    # are then parallel in the coronal plane, so the two compartments' gaps agree, and both are
    # the plan's extension gap up to the 3 deg posterior slope over the distal cut face.
    neutral = j.knee_pose(0.0, -geometry.native.varus_deg)
    med, lat = true_gaps(geometry.gaps, neutral)
    planned = plan.metrics["extension_gap_mm"]
    assert abs(med - lat) < 0.3
    assert abs(med - planned) < 1.5 and abs(lat - planned) < 1.5
    # A varus stress opens the lateral side and closes the medial one, by about the
    # compartment's lever arm x tan(4 deg).
    med_v, lat_v = true_gaps(geometry.gaps, j.knee_pose(0.0, -geometry.native.varus_deg + 4.0))
    assert lat_v - lat > 0.5 and med - med_v > 0.5
    # Navigation's gap code (manifold3d cut faces, hull candidates, the PLAN's compartment split)
    # agrees with this brute force (VTK clipping, every vertex, the TRUE split) in 0-90 deg.
    nav = gap_geometry(plan, read_case_meshes(root))
    rng = np.random.default_rng(5)
    for _ in range(12):
        k = j.knee_pose(rng.uniform(0, 90), rng.uniform(-5, 5), rng.uniform(-8, 8))
        g = knee_gaps(k, nav)
        assert (g.medial_mm, g.lateral_mm) == pytest.approx(true_gaps(geometry.gaps, k), abs=0.05)


def test_frames_carry_both_arrays_with_the_stated_noise(scenario):
    sc = scenario
    rom = sc.phase_spans("rom_hold")
    t0, t1 = rom[0].t0_s, rom[-1].t1_s
    errs_t, errs_r = [], []
    for fr in sc.frames(100.0, tracker_noise_mm=0.1, rotation_noise_deg=0.05, seed=4, t0_s=t0, t1_s=t1):
        tr = sc.truth_at(fr.host_time_s, gaps=False)
        for ref in ("FemurRef", "TibiaRef"):
            pose = fr.tools[ref]
            assert pose.status is ToolStatus.LIVE
            errs_t.append(pose.tracker_from_tool[:3, 3] - tr.tracker_from_reference[ref][:3, 3])
            errs_r.append(tf.rotation_angle_deg(pose.tracker_from_tool, tr.tracker_from_reference[ref]))
        assert fr.tools["Saw"].status is ToolStatus.NOT_VISIBLE
    errs_t = np.array(errs_t)
    assert len(errs_t) > 1500
    assert np.std(errs_t, axis=0) == pytest.approx([0.1, 0.1, 0.1], rel=0.15)  # per axis, mm
    assert math.sqrt(np.mean(np.square(errs_r))) == pytest.approx(0.05, rel=0.15)  # deg


def test_pointer_touches_each_bone_in_its_own_array(scenario):
    sc = scenario
    tip = sc.toolset.by_name()["Pointer"].tip_in_tool()
    dwells = sc.phase_spans("fiducial")
    assert [ph.bone for ph in dwells] == ["femur"] * 4 + ["tibia"] * 4
    for ph in dwells:
        site = sc.geometry.site(ph.bone)
        i = site.fiducial_names.index(ph.label)
        expected = site.fiducials_ct_mm[i] + sc.fle_offsets_mm[ph.bone][i]
        for t in (ph.t0_s, 0.5 * (ph.t0_s + ph.t1_s), ph.t1_s - 1e-3):
            poses = sc.script(t)
            p_ref = tf.apply(tf.invert(poses[site.reference]) @ poses["Pointer"], tip)
            np.testing.assert_allclose(tf.apply(sc.ct_from_reference[ph.bone], p_ref), expected, atol=1e-9)
            np.testing.assert_allclose(sc.truth_at(t, gaps=False).pointer_tip_ct_mm, expected, atol=1e-9)
    # Registration happens with the knee flexed: the tibia is NOT where the CT shows it.
    tr = sc.truth_at(dwells[-1].t0_s, gaps=False)
    assert tf.rotation_angle_deg(tr.femur_ct_from_tibia_ct) > 30.0


def test_cuts_while_the_other_bone_moves_and_dropout(scenario):
    sc = scenario
    saw_tip = sc.toolset.by_name()["Saw"]
    for bone in ("femur", "tibia"):
        phases = [ph for ph in sc.phases if ph.bone == bone and ph.name in ("saw_sweep", "saw_hold")]
        assert phases[0].name == "saw_sweep" and len(phases) == 7
        site = sc.geometry.site(bone)
        start = sc.truth_at(phases[0].t0_s, gaps=False)
        knees, femurs = [], []
        for ph in phases:
            for t in np.linspace(ph.t0_s, ph.t1_s - 1e-3, 5):
                tr = sc.truth_at(float(t), gaps=False)
                assert tr.saw_visible and tr.saw_cut == site.cut_name
                # The saw is scripted in the cut bone's frame: through that bone's TRUE array it
                # has the scripted errors whatever the other bone does.
                refs = tr.tracker_from_reference
                ct_from_saw = sc.ct_from_reference[bone] @ tf.invert(refs[site.reference]) @ sc.script(float(t))["Saw"]
                normal = ct_from_saw[:3, :3] @ saw_tip.normal_in_tool()
                edge = tf.apply(ct_from_saw, saw_tip.tip_in_tool())
                if ph.name == "saw_hold":
                    d = float((edge - site.cut_point_mm) @ site.cut_normal)
                    assert d == pytest.approx(ph.saw_errors[2], abs=1e-9)
                    assert math.degrees(math.atan2(float(normal @ site.cut_medial), float(normal @ site.cut_normal))) == \
                        pytest.approx(ph.saw_errors[1], abs=1e-9)
                knees.append(tf.rotation_angle_deg(tr.femur_ct_from_tibia_ct, start.femur_ct_from_tibia_ct))
                femurs.append(tf.rotation_angle_deg(refs["FemurRef"], start.tracker_from_reference["FemurRef"]))
        assert max(knees) > 5.0  # the knee moves under the saw
        if bone == "femur":
            assert max(femurs) < 1e-9  # the femoral cut: the femur still, the tibia swinging
        else:
            assert max(femurs) > 2.0  # the tibial cut: both bones move
    # The scripted dropout hides the tibial array in the middle of the femoral sweep only.
    t0, t1 = sc.dropouts["TibiaRef"]
    assert t1 - t0 == pytest.approx(0.6)
    sweep = next(ph for ph in sc.phases if ph.name == "saw_sweep" and ph.bone == "femur")
    assert sweep.t0_s < t0 < t1 < sweep.t1_s
    for fr in sc.frames(50.0, t0_s=t0 - 0.2, t1_s=t1 + 0.2):
        hidden = t0 <= fr.host_time_s < t1
        assert (fr.tools["TibiaRef"].status is ToolStatus.NOT_VISIBLE) == hidden
        assert fr.tools["FemurRef"].status is ToolStatus.LIVE and fr.tools["Saw"].status is ToolStatus.LIVE
        assert sc.truth_at(fr.host_time_s, gaps=False).visible["TibiaRef"] == (not hidden)


def test_hip_circle_gives_the_kinematic_hip_centre_and_scoring(scenario):
    """The hip circle sweeps a cone of the scripted size; navigation's fit of the noisy femoral
    array poses lands within 2 mm of the TRUE hip centre (the issue's acceptance figure)."""
    from orthonav.navigation.hip_centre import fit_hip_centre
    from orthonav.phantoms.scoring import HOLD_PHASES, KneeErrors, hip_centre_error_mm

    sc = scenario
    circle = sc.phase_spans("hip_circle")[0]
    j = sc.geometry.joint
    tilts = [tf.rotation_angle_deg(sc.bone_poses(sc.leg_at(t))[0]) for t in np.linspace(circle.t0_s, circle.t1_s, 200)]
    assert max(tilts) == pytest.approx(17.5, abs=0.2)  # a 35 deg cone
    poses = np.array([fr.tools["FemurRef"].tracker_from_tool
                      for fr in sc.frames(50.0, tracker_noise_mm=0.1, rotation_noise_deg=0.05, seed=9, t0_s=circle.t0_s, t1_s=circle.t1_s)])
    fit = fit_hip_centre(poses)
    assert fit.ok, fit.reason
    assert hip_centre_error_mm(fit.centre_femurref_mm, sc.ct_from_reference["femur"], sc.hip_centre_ct_mm) < 2.0
    assert np.linalg.norm(sc.hip_centre_ct_mm - j.hip_centre_mm) == 0.0

    # KneeErrors compares a state's alignment and gaps with the truth at the femoral array's time.
    errors = KneeErrors(sc.truth_at)
    for ph in sc.phase_spans("rom_hold"):
        t = 0.5 * (ph.t0_s + ph.t1_s)
        tr = sc.truth_at(t)
        state = SimpleNamespace(
            tools={"FemurRef": SimpleNamespace(device_time_s=t)},
            alignment=SimpleNamespace(flexion_deg=tr.alignment.flexion_deg + 0.2, varus_valgus_deg=tr.alignment.varus_deg - 0.1),
            gaps=SimpleNamespace(medial_mm=tr.medial_gap_mm + 0.3, lateral_mm=tr.lateral_gap_mm))
        errors.add(state)
    errors.add(SimpleNamespace(tools={}, alignment=None, gaps=None))  # no alignment: skipped
    s = errors.summary(HOLD_PHASES)
    assert s["n"] == 5 and s["n_gaps"] == 5
    maxima = (s["flexion_deg_max"], s["varus_deg_max"], s["medial_gap_mm_max"], s["lateral_gap_mm_max"])
    assert maxima == pytest.approx((0.2, 0.1, 0.3, 0.0), abs=1e-9)
    assert errors.summary(("stress_hold",)) == {}
    means = errors.hold_means()
    assert means["n_holds"] == 5
    assert (means["flexion_deg_max"], means["varus_deg_max"], means["medial_gap_mm_max"], means["lateral_gap_mm_max"]) == \
        pytest.approx((0.2, 0.1, 0.3, 0.0), abs=1e-9)


def test_offline_navigation_scored_against_the_truth(planned_knee, geometry):
    """The driver H28's acceptance tests use: navigation's own workflow on the scenario's noisy
    frames (FLE 0.25 mm, tracker noise 0.1 mm and 0.05 deg per sample, 50 Hz), scored against
    the truth: per-bone TRE, live alignment and gaps, saw guidance on each cut, kinematic hip centre."""
    from orthonav.phantoms.scenario_two_array import knee_two_array_scenario, navigate_two_array_offline
    from orthonav.phantoms.scoring import HOLD_PHASES, KneeErrors

    sc = knee_two_array_scenario(geometry, seed=0, fle_mm=0.25)
    gaps = KneeErrors(sc.truth_at)
    scores, _ = navigate_two_array_offline(planned_knee[0], sc, seed=0, rate_hz=50.0, on_state=lambda frame, state: gaps.add(state))
    assert set(scores.tre_mm) == {"femur", "tibia"}
    for bone, row in scores.tre_mm.items():
        assert row["fre_mm"] < 0.6 and max(v for k, v in row.items() if k != "fre_mm") < 1.0, (bone, row)
    holds = scores.knee_error_holds
    assert holds["n"] > 200 and holds["flexion_deg_max"] < 0.5 and holds["varus_deg_max"] < 0.5  # the 0.5 deg
    for cut in ("distal_femur", "proximal_tibia"):
        g = scores.guidance_error[cut]
        assert g["n"] > 100 and g["distance_mm_max"] < 1.0 and g["varus_deg_max"] < 0.5, (cut, g)
    assert scores.hip_centre_fit["ok"] == 1.0 and scores.hip_centre_error_mm < 2.0  # the 2 mm
    # Gaps in 0-90 deg of flexion (past ~95 deg navigation's cut faces include faces of the
    # planned planes extended through the femoral head: see gap_truth.KNEE_REGION_MM).
    g = gaps.summary(HOLD_PHASES, max_flexion_deg=95.0)
    assert g["n_gaps"] > 150 and g["medial_gap_mm_max"] < 1.0 and g["lateral_gap_mm_max"] < 1.0, g


def test_serve_streams_both_arrays_over_openigtlink(planned_knee, wait_until):
    """``orthonav simulate-tracker --two-array`` (serve_two_array_scenario): both arrays go out
    as ``<Tool>ToTracker`` and arrive LIVE at an OpenIGTLink client (the pointer and the saw
    are not visible during the lead-in); names too long for the wire are refused up front."""
    import threading

    from orthonav.core.errors import InputError
    from orthonav.phantoms.scenario_two_array import serve_two_array_scenario
    from orthonav.tracking.igtl_client import IGTLClientSource
    from orthonav.tracking.tools import ToolDefinition, ToolSet, knee_two_array_toolset

    # '<Tool>ToTracker' must fit OpenIGTLink's 20-byte device name: refused before listening.
    contract = knee_two_array_toolset()
    if any(len(t.name) > 11 for t in contract.tools):
        with pytest.raises(InputError, match="too long for OpenIGTLink"):
            serve_two_array_scenario(planned_knee[0], port=0, duration_s=0.5, wait_for_client_s=0.1)
    # Arrays under names that fit (the references are taken from the tool set's bones).
    tools = ToolSet(tools=[ToolDefinition(name="FemurRef", kind="reference", bone="femur"),
                           ToolDefinition(name="TibiaRef", kind="reference", bone="tibia"),
                           *[t for t in contract.tools if t.kind != "reference"]])
    # A long stream the test ends itself once it has looked (a fixed short stream could end
    # before a slow machine's client sees it, and then every tool reads not visible).
    listening, stop, box = threading.Event(), threading.Event(), {}

    def serve():
        try:
            box["stats"] = serve_two_array_scenario(planned_knee[0], port=0, rate_hz=100.0, duration_s=60.0, wait_for_client_s=30.0,
                                                    toolset=tools, stop=stop,
                                                    on_listening=lambda h, p, d: (box.__setitem__("port", p), listening.set()))
        except BaseException as e:  # reported below
            box["error"] = e
            listening.set()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert listening.wait(60.0) and "error" not in box, box.get("error")
    with IGTLClientSource("127.0.0.1", box["port"], tools=tools) as src:
        frame = wait_until(src, lambda f: all(f.status(t) is ToolStatus.LIVE for t in ("FemurRef", "TibiaRef"))
                           and f.status("Pointer") is ToolStatus.NOT_VISIBLE, timeout_s=10.0)
        femur, tibia = frame.tools["FemurRef"].tracker_from_tool, frame.tools["TibiaRef"].tracker_from_tool
        assert np.linalg.norm(femur[:3, 3] - tibia[:3, 3]) > 100.0  # two arrays, on two bones
        stop.set()
    th.join(timeout=10.0)
    assert not th.is_alive(), "the stream did not end when asked to"
    assert "error" not in box and box["stats"].samples > 0
