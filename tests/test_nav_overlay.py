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
