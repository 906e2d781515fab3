"""Overlay (off-screen) and CT reslices: pictures reflect the navigation state."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from orthonav.core.volume import Volume, make_lps_from_ijk
from orthonav.navigation import load_navigation_inputs
from orthonav.navigation.overlay import NavigationScene
from orthonav.navigation.reslice import ORIENTATIONS, reslice, tool_plane_axes
from orthonav.navigation.workflow import Workflow
from orthonav.phantoms.scenario import knee_scenario, write_toy_case
from orthonav.tracking.frame import TrackingFrame


def _volume_with_marker():
    a = np.zeros((40, 50, 60), dtype=np.int16)  # k, j, i
    a[30, 20, 10] = 1000  # voxel i=10, j=20, k=30
    return Volume(a, make_lps_from_ijk([1.0, 2.0, 3.0], [-5.0, 7.0, 11.0]))


def test_reslice_samples_the_right_voxels_and_orientation():
    vol = _volume_with_marker()
    p = vol.to_lps([[10, 20, 30]])[0]
    for name, (u, v) in ORIENTATIONS.items():
        img = reslice(vol, p, u, v, size_mm=21.0, pixels=21, fill=-1.0)
        assert img.shape == (21, 21)
        assert img[10, 10] == pytest.approx(1000.0), name  # the centre pixel is the marker
    # Axial: u = +x (i), v = anterior = -y, 1 mm pixels. Centred 2 mm anterior of the marker, the
    # marker is 2 rows BELOW the centre (rows go top -> bottom = anterior -> posterior).
    img = reslice(vol, p - [0.0, 2.0, 0.0], *ORIENTATIONS["axial"], size_mm=21.0, pixels=21)
    assert img[12, 10] == pytest.approx(1000.0)
    img = reslice(vol, p + [1.0, 0.0, 0.0], *ORIENTATIONS["coronal"], size_mm=21.0, pixels=21)
    assert img[10, 9] == pytest.approx(1000.0)  # marker is 1 mm to the patient's right = left of centre
    out = reslice(vol, p + [500.0, 0.0, 0.0], *ORIENTATIONS["axial"], size_mm=10.0, pixels=5)
    assert np.all(out == -1000.0)


def test_tool_plane_contains_the_tool_axis():
    t = np.eye(4)
    t[:3, :3] = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    u, v = tool_plane_axes(t, [0.0, 0.0, -1.0])
    np.testing.assert_allclose(u, -t[:3, 2])
    assert abs(np.dot(u, v)) < 1e-12 and v[2] >= 0
    # Oblique: an axis off the tool's z, so the tool's x has a component along it (projected out),
    # and a pose whose projected x points inferiorly (flipped to superior).
    from orthonav.core.transforms import rotation_about_axis

    t = np.eye(4)
    t[:3, :3] = rotation_about_axis([-0.5, 0.6, 0.6], np.radians(70.0))
    t[:3, 3] = [12.0, -40.0, 85.0]
    axis = np.array([0.4, 0.0, -1.0])
    u, v = tool_plane_axes(t, axis)
    np.testing.assert_allclose(u, t[:3, :3] @ axis / np.linalg.norm(axis), atol=1e-12)
    x = t[:3, 0]
    assert abs(np.dot(x, u)) > 0.1  # the projection is exercised
    w = x - np.dot(x, u) * u
    w /= np.linalg.norm(w)
    assert w[2] < -0.3  # so is the flip
    np.testing.assert_allclose(v, -w, atol=1e-12)
    assert np.linalg.norm(v) == pytest.approx(1.0) and abs(np.dot(u, v)) < 1e-12 and v[2] > 0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    case = tmp_path_factory.mktemp("overlay_case")
    geo = write_toy_case(case, with_ct=True)
    return case, geo


def _red_pixels(img):
    a = np.asarray(img.convert("RGB")).astype(int)[250:350, 200:600]
    return int(((a[..., 0] > 180) & (a[..., 1] < 90) & (a[..., 2] < 90)).sum())


def _amber_pixels(img):
    a = np.asarray(img.convert("RGB")).astype(int)[250:350, 200:600]
    return int(((a[..., 0] > 200) & (a[..., 1] > 130) & (a[..., 1] < 210) & (a[..., 2] < 60)).sum())


def test_overlay_shows_not_tracking_then_guidance_and_reslices(toy, tmp_path):
    case, geo = toy
    inp = load_navigation_inputs(case, ct=True)
    sc = knee_scenario(geo, seed=5, reference_dropout_s=(14.0, 14.3))
    wf = Workflow(inp.context, inp.fiducial_names, inp.fiducials_ct_mm)
    scene = NavigationScene(inp.context.toolset, inp.bones, cuts=inp.context.cuts, ct=inp.ct)
    try:
        shots = {}
        want = {"before": 0.2, "saw": 12.0, "dropout": 14.1}
        for fr in sc.frames(25.0):
            st = wf.process(fr, clock=None)
            for k, t in list(want.items()):
                if fr.host_time_s >= t:
                    scene.update(st)
                    shots[k] = (st, scene.screenshot(tmp_path / f"{k}.png"))
                    del want[k]
        assert not want
        st_before, p_before = shots["before"]
        assert not st_before.tracking and st_before.reason == "not registered"
        assert _red_pixels(Image.open(p_before)) < 50 and _amber_pixels(Image.open(p_before)) > 500
        st_saw, p_saw = shots["saw"]
        assert st_saw.tracking and st_saw.status("Saw").value == "live"
        img = np.asarray(Image.open(p_saw).convert("RGB")).astype(int)
        assert _red_pixels(Image.open(p_saw)) < 50
        # Green readouts (on target: the saw sweeps on the plane) in the right-hand panel.
        panel = img[10:120, 600:800]
        assert ((panel[..., 1] > 150) & (panel[..., 0] < 120) & (panel[..., 2] < 120)).sum() > 30
        # The reslice strip (bottom left) shows CT: bright cortex pixels.
        strip = img[600 - 160 : 600 - 30, 10:530]
        assert (strip.mean(axis=2) > 200).sum() > 200
        st_drop, p_drop = shots["dropout"]
        assert not st_drop.tracking and _red_pixels(Image.open(p_drop)) > 500
    finally:
        scene.close()


def test_overlay_shows_no_tracker_in_red_while_the_tracker_cannot_be_reached(toy, tmp_path):
    """Before registration the banner is amber NOT REGISTERED; with no tracker to talk to it must
    be red NO TRACKER with the connection problem on screen (issue 12, "No tracker")."""
    case, _geo = toy
    inp = load_navigation_inputs(case)
    wf = Workflow(inp.context, inp.fiducial_names, inp.fiducials_ct_mm)
    scene = NavigationScene(inp.context.toolset, inp.bones, cuts=inp.context.cuts)
    try:
        problem = "OpenIGTLink 127.0.0.1:1: cannot connect ([Errno 111] Connection refused); retrying"
        scene.update(None, tracker_problem=problem)
        img = Image.open(scene.screenshot(tmp_path / "no_tracker.png"))
        assert scene.banner.GetInput() == "NO TRACKER" and problem in scene.status_text.GetInput()
        assert _red_pixels(img) > 500 and _amber_pixels(img) < 50
        st = wf.process(TrackingFrame({}, 1.0, 1), clock=None)  # connected again, nothing seen yet
        scene.update(st)
        assert scene.banner.GetInput() != "NO TRACKER" and problem not in scene.status_text.GetInput()
    finally:
        scene.close()


def test_saw_display_model_sits_on_the_blade_and_is_not_mirrored():
    """The blade model lies in the tool's blade plane, runs from the edge centre back along the
    cutting direction, and keeps its outward winding (a mirrored transform would turn it inside out)."""
    from orthonav.navigation.overlay import tool_model
    from orthonav.tracking.tools import default_toolset

    saw = default_toolset().by_name()["Saw"]
    m = tool_model(saw).triangulate()
    p = np.asarray(m.points)
    n, a, tip = saw.normal_in_tool(), saw.axis_in_tool(), saw.tip_in_tool()
    assert np.ptp(p @ n) == pytest.approx(1.3, abs=1e-6)  # blade thickness along its normal
    along = (p - tip) @ a
    assert along.max() == pytest.approx(0.0, abs=1e-6) and along.min() == pytest.approx(-saw.blade_length_mm, abs=1e-6)
    tri = m.faces.reshape(-1, 4)[:, 1:]
    v0, v1, v2 = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    signed_volume = np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0
    assert signed_volume == pytest.approx(1.3 * saw.blade_width_mm * saw.blade_length_mm, rel=1e-6)


# --- one array per bone (issue 16): both arrays' status, the knee panel, the tibia moved ---------

import math  # noqa: E402
import shutil  # noqa: E402

from orthonav.core import transforms as tf  # noqa: E402
from orthonav.navigation.overlay import AMBER, GREEN, GREY, RED, signed  # noqa: E402

# Script times (s) of knee_two_array_scenario's default phases: the pointer on the tibia's
# fiducials (femur registered, tibia not), the 60 deg range-of-motion hold, the femoral cut's
# sweep (knee flexed 90 deg), the tibial cut's sweep (the saw guided against the tibia).
TWO_ARRAY_TIMES = {"before": 0.5, "femur_only": 10.0, "rom60": 30.5, "femoral_cut": 47.8, "tibial_cut": 53.5}


@pytest.fixture(scope="module")
def two_array(small_knee_case, tmp_path_factory):
    """The two-array scenario (TibiaRef hidden 0.6 s in the femoral cut's sweep) run through
    navigation's workflow at 20 Hz: the states (and frames) at TWO_ARRAY_TIMES and in the dropout,
    and two made-up frames after the run: the femur's array hidden, then both arrays hidden."""
    from orthonav.navigation.inputs import load_navigation_inputs
    from orthonav.phantoms.scenario_two_array import knee_two_array_scenario
    from orthonav.planning.auto import auto_plan

    root = tmp_path_factory.mktemp("overlay_two_array") / "case"
    shutil.copytree(small_knee_case.root, root)
    (root / "meshes").mkdir(exist_ok=True)
    for bone in ("femur", "tibia", "fibula", "patella"):
        shutil.copy(root / "truth" / "meshes" / f"{bone}.stl", root / "meshes" / f"{bone}.stl")
    auto_plan(root)
    sc = knee_two_array_scenario(root, seed=3, fle_mm=0.25, array_dropout=("TibiaRef", 0.6))
    inp = load_navigation_inputs(root, sc.toolset)
    wf = Workflow(inp.context, inp.fiducial_names, inp.fiducials_ct_mm, bone_fiducials=inp.bone_fiducials, point_bones=inp.landmark_bones)
    d0, d1 = sc.dropouts["TibiaRef"]
    want = dict(sorted({**TWO_ARRAY_TIMES, "dropout": (d0 + d1) / 2}.items(), key=lambda kv: kv[1]))
    got = {}
    last = None
    for fr in sc.frames(20.0, tracker_noise_mm=0.1, rotation_noise_deg=0.05):
        st = wf.process(fr, clock=None)
        last = fr
        for k, t in list(want.items()):
            if fr.host_time_s >= t:
                got[k] = (fr, st)
                del want[k]
        if not want:
            break
    assert not want
    refs = sc.toolset.bone_references()
    for k, hidden in (("femur_hidden", {refs["femur"]}), ("none", set(refs.values()))):
        fr = TrackingFrame({n: p for n, p in last.tools.items() if n not in hidden}, last.host_time_s + 0.01, last.sequence + 1)
        got[k] = (fr, wf.process(fr, clock=None))
        last = fr
    return inp, sc, got


def _two_array_scene(inp):
    ctx = inp.context
    return NavigationScene(ctx.toolset, inp.bones, cuts=ctx.cuts, cut_bones=ctx.cut_bones)


def _value(scene, label):
    """The knee panel's value and colour on the line called ``label``."""
    rows = {lab.strip(): (v, c) for lab, v, c in scene.knee_lines}
    return rows[label]


def _panel_shows(scene, value, colour):
    """Whether ``value`` is on a line of the panel's value actor of ``colour``."""
    return value in scene.panel_values[colour].GetInput().split("\n")


def test_two_array_panel_shows_the_states_alignment_and_gaps_and_both_arrays(two_array):
    inp, _sc, got = two_array
    scene = _two_array_scene(inp)
    try:
        for key in ("rom60", "femoral_cut"):
            _fr, st = got[key]
            assert st.alignment is not None and st.gaps is not None, key
            scene.update(st)
            a, g = st.alignment, st.gaps
            text, colour = _value(scene, "Varus/valgus")
            number, word = text.split(" deg")
            assert float(number) == round(abs(a.varus_valgus_deg), 1) and word.strip() == ("varus" if a.varus_valgus_deg > 0 else "valgus")
            expected = GREEN if abs(a.varus_valgus_deg) <= 3.0 else AMBER if abs(a.varus_valgus_deg) <= 6.0 else RED
            assert colour == expected and _panel_shows(scene, text, colour)
            assert _value(scene, "Flexion")[0] == f"{a.flexion_deg:.1f} deg"
            assert _value(scene, "HKA") == (f"{a.hka_deg:.1f} deg", expected)
            assert abs(a.hka_deg - (180.0 - a.varus_valgus_deg)) < 1e-9
            for label, mm in (("Medial gap", g.medial_mm), ("Lateral gap", g.lateral_mm)):
                text, colour = _value(scene, label)
                assert text == f"{mm:.1f} mm" and _panel_shows(scene, text, colour)
            status = scene.status_text.GetInput()
            assert "FEMUR ARRAY: LIVE" in status and "TIBIA ARRAY: LIVE" in status
            assert scene.banner.GetInput() == "" and scene.bone_banner.GetInput() == ""
        assert 85.0 < got["femoral_cut"][1].alignment.flexion_deg < 100.0  # the knee flexed ~90 deg in the femoral cut
        # Never a stale number: no state, or a state without alignment, shows "--" in grey.
        for st in (None, got["femur_only"][1]):
            scene.update(st)
            assert all(v == "--" and c == GREY for lab, v, c in scene.knee_lines[1:] if lab.strip() != "Why --")
    finally:
        scene.close()


def test_the_tibia_is_drawn_at_the_knee_pose_and_tools_in_the_femurs_frame(two_array):
    inp, sc, got = two_array
    scene = _two_array_scene(inp)
    try:
        assert set(scene.bone_groups) >= {"femur", "tibia"}
        for key in ("rom60", "femoral_cut", "tibial_cut"):
            fr, st = got[key]
            scene.update(st)
            scene.render()
            nav = st.bone_ct_from_tracker
            knee = nav["femur"] @ tf.invert(nav["tibia"])
            for bone in ("tibia", "fibula"):  # the fibula rides with the tibia's array
                np.testing.assert_allclose(scene.bone_actors[bone].user_matrix, knee, atol=1e-9)
                m = scene.bone_actors[bone].GetMatrix()  # what VTK renders with (the shared user matrix)
                np.testing.assert_allclose([[m.GetElement(i, j) for j in range(4)] for i in range(4)], knee, atol=1e-9)
            for bone in ("femur", "patella"):
                np.testing.assert_allclose(scene.bone_actors[bone].user_matrix, np.eye(4), atol=1e-12)
            # Against the scenario's truth: the knee drawn is the true knee within registration error.
            true = sc.truth_at(fr.host_time_s, gaps=False).femur_ct_from_tibia_ct
            dr = tf.invert(true) @ knee
            angle = math.degrees(math.acos(min(1.0, (np.trace(dr[:3, :3]) - 1) / 2)))
            centre = np.mean(np.asarray(inp.bones["tibia"].points), axis=0)
            assert angle < 1.0 and np.linalg.norm(tf.apply(knee, centre) - tf.apply(true, centre)) < 2.0, key
            # The saw is drawn where the tracker sees it, in the femur's CT frame, whichever bone guides it.
            saw = st.tools["Saw"]
            if key != "rom60":
                assert saw.live and saw.bone == ("femur" if key == "femoral_cut" else "tibia")
                np.testing.assert_allclose(scene.tool_actors["Saw"].user_matrix, nav["femur"] @ fr.tools["Saw"].tracker_from_tool, atol=1e-6)
                assert scene.tool_actors["Saw"].GetVisibility()
        assert scene.display_bone == "femur"
    finally:
        scene.close()


def test_one_array_hidden_shows_that_bone_not_tracking_while_the_other_keeps_its_numbers(two_array, tmp_path):
    inp, _sc, got = two_array
    scene = _two_array_scene(inp)
    try:
        _fr, st = got["dropout"]
        assert st.tracking and not st.bone_tracking("tibia") and st.saw  # the femur still guides the saw
        scene.update(st)
        img = np.asarray(Image.open(scene.screenshot(tmp_path / "dropout.png")).convert("RGB")).astype(int)
        status = scene.status_text.GetInput()
        assert "FEMUR ARRAY: LIVE" in status and "TIBIA ARRAY: NOT TRACKING - not visible" in status
        assert scene.bone_banner.GetInput() == "TIBIA NOT TRACKING" and scene.banner.GetInput() == ""
        band = img[90:180, 150:560]  # the bone's banner, above the centre
        assert ((band[..., 0] > 180) & (band[..., 1] < 90) & (band[..., 2] < 90)).sum() > 300
        cut, g = min(st.saw.items(), key=lambda kv: abs(kv[1].distance_mm))
        shown = "\n".join(scene.panel_values[c].GetInput() for c in (GREEN, AMBER, RED)).split("\n")
        assert cut == "distal_femur" and f"{signed(g.distance_mm)} mm" in shown  # the femur's saw numbers remain
        assert all(v == "--" for lab, v, _c in scene.knee_lines[1:] if lab.strip() != "Why --")  # no knee pose without the tibia
        why = [v for lab, v, _c in scene.knee_lines if lab.strip() == "Why --"]
        assert len(why) == 1 and "tibia" in why[0].lower(), why  # and it says why
        assert not scene.bone_actors["tibia"].GetVisibility() and not scene.bone_actors["fibula"].GetVisibility()
        assert scene.bone_actors["femur"].GetVisibility() and scene.tool_actors["Saw"].GetVisibility()
        # Before the tibia is registered: amber NOT REGISTERED for it, the femur navigates.
        scene.update(got["femur_only"][1])
        assert scene.bone_banner.GetInput() == "TIBIA NOT REGISTERED" and scene.banner.GetInput() == ""
        assert "TIBIA ARRAY: NOT TRACKING - not registered" in scene.status_text.GetInput()
        # The femur's array hidden: the scene is drawn in the tibia's frame, the femur hidden.
        fr, st = got["femur_hidden"]
        scene.update(st)
        assert scene.display_bone == "tibia" and scene.bone_banner.GetInput() == "FEMUR NOT TRACKING" and scene.banner.GetInput() == ""
        assert "FEMUR ARRAY: NOT TRACKING - not visible" in scene.status_text.GetInput()
        assert not scene.bone_actors["femur"].GetVisibility() and scene.bone_actors["tibia"].GetVisibility()
        np.testing.assert_allclose(scene.bone_actors["tibia"].user_matrix, np.eye(4), atol=1e-12)
        assert st.tools["Saw"].live and st.tools["Saw"].bone == "tibia" and scene.tool_actors["Saw"].GetVisibility()
        np.testing.assert_allclose(scene.tool_actors["Saw"].user_matrix, st.bone_ct_from_tracker["tibia"] @ fr.tools["Saw"].tracker_from_tool, atol=1e-6)
    finally:
        scene.close()


def test_global_banner_only_when_no_bone_navigates(two_array, tmp_path):
    inp, _sc, got = two_array
    scene = _two_array_scene(inp)
    try:
        for key in ("femoral_cut", "dropout", "femur_hidden"):
            scene.update(got[key][1])
            assert scene.banner.GetInput() == "", key
        _fr, st = got["none"]
        assert not st.tracking
        scene.update(st)
        img = Image.open(scene.screenshot(tmp_path / "none.png"))
        assert scene.banner.GetInput() == "NOT TRACKING" and scene.bone_banner.GetInput() == "" and _red_pixels(img) > 500
        status = scene.status_text.GetInput()
        assert "FEMUR ARRAY: NOT TRACKING - not visible" in status and "TIBIA ARRAY: NOT TRACKING - not visible" in status
        assert all(a.GetVisibility() for a in scene.bone_actors.values())  # the bones as imaged
        assert not any(a.GetVisibility() for a in scene.tool_actors.values())
        np.testing.assert_allclose(scene.bone_actors["tibia"].user_matrix, np.eye(4), atol=1e-12)
        scene.update(got["before"][1])
        assert scene.banner.GetInput() == "NOT REGISTERED" and scene.bone_banner.GetInput() == ""
    finally:
        scene.close()


def test_knee_panel_words_colours_and_dashes_and_the_array_lines():
    from types import SimpleNamespace as NS

    from orthonav.navigation.overlay import WHITE, array_status_line, carrier_bone, knee_panel_lines
    from orthonav.navigation.state import IMPLAUSIBLE_POSE, NavStatus, ToolState

    rows = {lab.strip(): (v, c) for lab, v, c in knee_panel_lines(NS(varus_valgus_deg=-4.26, flexion_deg=31.04, hka_deg=184.26, rotation_deg=0.0),
                                                                   NS(medial_mm=10.0, lateral_mm=10.9))}
    assert rows["Varus/valgus"] == ("4.3 deg valgus", AMBER) and rows["HKA"] == ("184.3 deg", AMBER)
    assert rows["Flexion"] == ("31.0 deg", WHITE)
    assert rows["Medial gap"] == ("10.0 mm", GREEN) and rows["Lateral gap"] == ("10.9 mm", GREEN)
    rows = {lab.strip(): (v, c) for lab, v, c in knee_panel_lines(NS(varus_valgus_deg=0.04, flexion_deg=0.0, hka_deg=179.96, rotation_deg=0.0),
                                                                   NS(medial_mm=-0.5, lateral_mm=3.0))}
    assert rows["Varus/valgus"] == ("0.0 deg", GREEN) and rows["Medial gap"] == ("-0.5 mm", RED)  # overlap: red
    rows = {lab.strip(): (v, c) for lab, v, c in knee_panel_lines(NS(varus_valgus_deg=7.0, flexion_deg=math.nan, hka_deg=173.0, rotation_deg=0.0), None)}
    assert rows["Varus/valgus"] == ("7.0 deg varus", RED) and rows["Flexion"] == ("--", GREY) and rows["Medial gap"] == ("--", GREY)
    assert "Why --" not in rows  # no reason given
    why = "femur and tibia poses measured 40 ms apart (limit 30 ms): not one tracker frame"
    rows = {lab.strip(): (v, c) for lab, v, c in knee_panel_lines(None, None, reason=why)}
    assert rows["Why --"] == (why[:45] + "...", GREY) and rows["Varus/valgus"] == ("--", GREY)
    rows = {lab.strip(): (v, c) for lab, v, c in knee_panel_lines(NS(varus_valgus_deg=1.0, flexion_deg=5.0, hka_deg=179.0, rotation_deg=0.0),
                                                                   NS(medial_mm=9.0, lateral_mm=9.5), reason=why)}
    assert "Why --" not in rows  # everything shown: no reason line
    assert array_status_line("tibia_left", ToolState(NavStatus.STALE, None, None, reason="reference stale")) == "TIBIA LEFT ARRAY: NOT TRACKING - stale"
    assert array_status_line("femur", ToolState(NavStatus.IMPLAUSIBLE, None, None, reason=IMPLAUSIBLE_POSE)) == "FEMUR ARRAY: NOT TRACKING - implausible pose"
    assert array_status_line("femur", ToolState(NavStatus.NOT_TRACKING, None, None)) == "FEMUR ARRAY: NOT TRACKING"  # e.g. a stale state
    assert array_status_line("femur", None) == "FEMUR ARRAY: NOT TRACKING - no tracking data"
    bones = ["femur_left", "tibia_left"]
    assert [carrier_bone(n, bones) for n in ("femur_left", "fibula_left", "patella_left", "tka_femoral_0", "tka_tibial_tray_1", "tka_insert_2", "pelvis")] == \
        ["femur_left", "tibia_left", "femur_left", "femur_left", "tibia_left", "tibia_left", None]


def test_a_stale_two_array_state_shows_not_tracking(two_array):
    from orthonav.navigation.state import expire_state

    inp, _sc, got = two_array
    scene = _two_array_scene(inp)
    try:
        st = got["femoral_cut"][1]
        stale = expire_state(st, st.host_time_s + 2.0, 0.5)
        scene.update(stale)
        assert scene.banner.GetInput() == "NOT TRACKING" and scene.bone_banner.GetInput() == ""
        assert "FEMUR ARRAY: NOT TRACKING\n" in scene.status_text.GetInput() + "\n"
        assert all(v == "--" for lab, v, _c in scene.knee_lines[1:] if lab.strip() != "Why --") and not any(a.GetVisibility() for a in scene.tool_actors.values())
    finally:
        scene.close()
