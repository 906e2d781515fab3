"""Predicted TRE at every vertex (issue 17, item 3): the map is Fitzpatrick's prediction, it is
smallest near the fiducials' centroid and grows away from it, it agrees with the registration's
own predictions, and the overlay shows it with a scalar bar titled in mm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from orthonav.core.errors import InputError
from orthonav.navigation.registration import predict_tre, register_paired_points
from orthonav.navigation.tre_map import (
    registration_fiducials_mm,
    registration_fle_mm,
    registration_tre_maps,
    tre_colour_range,
    tre_map,
    tre_map_title,
    tre_maps,
)


def _knee_like_fiducials(rng):
    """8 fiducials spread over a 90 x 70 x 60 mm box around the knee (CT LPS mm)."""
    return np.array([0.0, -20.0, 40.0]) + rng.uniform(-1, 1, size=(8, 3)) * np.array([45.0, 35.0, 30.0])


def test_map_equals_predict_tre_at_sampled_vertices():
    rng = np.random.default_rng(4)
    fid = _knee_like_fiducials(rng)
    vertices = rng.normal(scale=120.0, size=(5000, 3))
    m = tre_map(fid, vertices, 0.4)
    assert m.shape == (5000,) and m.dtype == np.float64
    for i in rng.choice(5000, size=25, replace=False):  # one target at a time: an independent evaluation
        assert m[i] == pytest.approx(float(predict_tre(fid, vertices[i], 0.4)[0]), rel=1e-12)
    assert tre_map(fid, np.zeros((0, 3)), 0.4).shape == (0,)
    with pytest.raises(InputError, match=r"\(m, 3\)"):
        tre_map(fid, np.zeros((4, 2)), 0.4)
    per_bone = tre_maps(fid, {"femur": vertices[:10], "tibia": vertices[10:30]}, 0.4)
    np.testing.assert_array_equal(per_bone["tibia"], m[10:30])


def test_map_is_smallest_at_the_fiducial_centroid_and_grows_away_from_it():
    """Fitzpatrick 1998 eq. 46: TRE^2 = FLE^2/N (1 + sum_k d_k^2 / (3 f_k^2)); at the centroid it
    is FLE/sqrt(N), and for a layout with equal f_k it grows strictly with the distance."""
    fle = 0.5
    cube = np.array([[x, y, z] for x in (-40.0, 40.0) for y in (-40.0, 40.0) for z in (-40.0, 40.0)]) + [10.0, -30.0, 60.0]
    centroid = cube.mean(axis=0)
    assert tre_map(cube, centroid[None, :], fle)[0] == pytest.approx(fle / math.sqrt(8), rel=1e-12)
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(400, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    pts = centroid + directions * rng.uniform(0.0, 300.0, size=(400, 1))
    dist = np.linalg.norm(pts - centroid, axis=1)
    m = tre_map(cube, pts, fle)
    order = np.argsort(dist)
    assert np.all(np.diff(m[order]) > 0)  # isotropic layout: strictly increasing with distance
    # A real layout on a real surface: the plan's fiducials on the knee phantom's femur shape.
    from orthonav.phantoms.scenario import toy_geometry

    geo = toy_geometry(seed=2)
    import pyvista as pv

    bone = pv.ParametricEllipsoid(45.0, 40.0, 110.0, u_res=40, v_res=40, w_res=40).triangulate().clean().translate((0.0, 0.0, 70.0))
    v = np.asarray(bone.points)
    m = tre_map(geo.fiducials_ct_mm, v, fle)
    n = len(geo.fiducials_ct_mm)
    assert m.min() >= fle / math.sqrt(n) - 1e-12  # never below the value at the centroid
    d = np.linalg.norm(v - geo.fiducials_ct_mm.mean(axis=0), axis=1)
    near, far = m[d <= np.percentile(d, 10)], m[d >= np.percentile(d, 90)]
    assert near.max() < far.min()  # the nearest tenth of the surface all beats the farthest tenth
    edges = np.percentile(d, [0, 20, 40, 60, 80, 100])
    medians = [np.median(m[(d >= lo) & (d <= hi)]) for lo, hi in zip(edges[:-1], edges[1:])]  # by distance quintile
    assert np.all(np.diff(medians) > 0)


def test_registration_maps_agree_with_the_registrations_own_prediction():
    rng = np.random.default_rng(8)
    fid = _knee_like_fiducials(rng)
    targets = {"a": np.array([0.0, -20.0, 120.0]), "b": np.array([30.0, 0.0, -60.0])}
    digitised = fid + rng.normal(scale=0.3, size=fid.shape)
    reg = register_paired_points([f"fiducial_{i}" for i in range(8)], fid, digitised, targets_ct_mm=targets)
    rec = reg.record
    np.testing.assert_allclose(registration_fiducials_mm(rec), fid)
    assert registration_fle_mm(rec) == pytest.approx(rec.fle_estimate_mm)
    maps = registration_tre_maps(rec, {"bone": np.array(list(targets.values()))})
    np.testing.assert_allclose(maps["bone"], [rec.predicted_tre_mm["a"], rec.predicted_tre_mm["b"]], rtol=1e-12)
    assert tre_map_title(rec) == "predicted TRE (mm)"
    assumed = register_paired_points([f"fiducial_{i}" for i in range(8)], fid, digitised, fle_rms_mm=0.9).record
    assert registration_fle_mm(assumed) == 0.9
    no_fle = assumed.model_copy(update={"fle_assumed_mm": None, "fle_estimate_mm": None})
    with pytest.raises(InputError, match="no FLE"):
        registration_tre_maps(no_fle, {"bone": fid})


def test_colour_range_is_round_and_never_empty():
    assert tre_colour_range({"a": np.array([0.1, 0.3, 0.74])}, percentile=100) == (0.0, 1.0)
    assert tre_colour_range({"a": np.array([0.1, 0.3, 1.1])}, percentile=100) == (0.0, 2.0)
    assert tre_colour_range({"a": np.array([0.0, 2.4])}, percentile=100) == (0.0, 2.5)
    lo, hi = tre_colour_range({"a": np.array([0.18, 0.3]), "b": np.array([0.44])}, percentile=100)
    assert hi == 0.5 and lo == pytest.approx(0.1)  # the low end starts at the smallest value's tick
    lo, hi = tre_colour_range({"a": np.array([0.49, 0.5])}, percentile=100)
    assert (lo, hi) == (pytest.approx(0.4), 0.5)  # never an empty range
    values = np.random.default_rng(0).uniform(0.2, 0.4, size=1000)
    lo, hi = tre_colour_range({"a": np.r_[values, 50.0]})
    assert hi == 0.5  # one far vertex does not set the scale (95th percentile)
    assert tre_colour_range({"a": np.zeros(3)}) == (0.0, 1.0)
    assert tre_colour_range({}) == (0.0, 1.0)


@pytest.fixture(scope="module")
def toy_case(tmp_path_factory):
    from orthonav.phantoms.scenario import write_toy_case

    case = tmp_path_factory.mktemp("tre_map_case")
    return case, write_toy_case(case)


def _bar_region(img):
    """Bottom-right corner of an 800 x 600 overlay, where the TRE scalar bar sits."""
    return np.asarray(img.convert("RGB")).astype(int)[600 - 125 :, 550:]


def test_overlay_colours_the_bones_and_shows_the_scalar_bar_titled_in_mm(toy_case, tmp_path):
    from orthonav.navigation import load_navigation_inputs
    from orthonav.navigation.overlay import NavigationScene

    case, geo = toy_case
    inp = load_navigation_inputs(case)
    rng = np.random.default_rng(1)
    digitised = geo.fiducials_ct_mm + rng.normal(scale=0.3, size=geo.fiducials_ct_mm.shape)
    reg = register_paired_points(inp.fiducial_names, inp.fiducials_ct_mm, digitised)
    scene = NavigationScene(inp.context.toolset, inp.bones, cuts=inp.context.cuts)
    try:
        scene.update(None)
        plain = Image.open(scene.screenshot(tmp_path / "plain.png"))
        scene.update(None, registration=reg)
        assert scene.tre_bar is not None and scene.tre_bar.GetVisibility()
        assert scene.tre_title.GetVisibility() and scene.tre_title.GetInput() == "predicted TRE (mm)"
        shown = scene.tre_maps["femur"]
        np.testing.assert_allclose(shown, predict_tre(inp.fiducials_ct_mm, scene.bone_meshes["femur"].points, reg.record.fle_estimate_mm),
                                   rtol=1e-12)
        mapped = Image.open(scene.screenshot(tmp_path / "tre.png"))
        bar, bar_before = _bar_region(mapped), _bar_region(plain)
        # viridis: its blue end (B > R + 40) and its yellow end (R, G > 180, B < 110) both appear in the bar ...
        blue = (bar[..., 2] > bar[..., 0] + 40) & (bar[..., 2] > 100)
        yellow = (bar[..., 0] > 180) & (bar[..., 1] > 180) & (bar[..., 2] < 110)
        assert blue.sum() > 300 and yellow.sum() > 100
        # ... and its title and labels in white; none of it was there before.
        white = (bar.min(axis=2) > 200).sum()
        assert white > 100 and (bar_before.min(axis=2) > 200).sum() < 10
        # The bone itself is no longer bone-coloured.
        a, b = np.asarray(plain.convert("RGB")).astype(int), np.asarray(mapped.convert("RGB")).astype(int)
        assert (np.abs(a - b).max(axis=2) > 40).sum() > 5000
        scene.show_tre_map(None)
        assert not scene.tre_bar.GetVisibility() and not scene.tre_title.GetVisibility()
        again = np.asarray(Image.open(scene.screenshot(tmp_path / "again.png")).convert("RGB")).astype(int)
        assert (np.abs(again - a).max(axis=2) > 40).sum() < 50
    finally:
        scene.close()


def test_overlay_texts_follow_the_window_size(toy_case):
    from orthonav.navigation import load_navigation_inputs
    from orthonav.navigation.overlay import NavigationScene

    case, _geo = toy_case
    inp = load_navigation_inputs(case)
    scene = NavigationScene(inp.context.toolset, inp.bones, window_size=(800, 600))
    try:
        scene.update(None)
        scene.render()
        assert tuple(scene.banner.GetPosition()) == (400, 300)
        scene.plotter.render_window.SetSize(1000, 700)
        scene.render()
        assert tuple(scene.banner.GetPosition()) == (500, 350)
        assert tuple(scene.panel_labels.GetPosition()) == (1000 - 280, 700 - 14)
        assert tuple(scene.status_text.GetPosition()) == (10, 690)
    finally:
        scene.close()


@pytest.mark.slow
def test_validation_report_shows_the_tre_map(small_knee_case, tmp_path):
    """The accuracy protocol's report has the map of the predicted TRE over the bone surfaces:
    Fitzpatrick's prediction with the run's fiducials and FLE (equal to the per-target
    prediction at the targets), as a colour map in a figure of the report."""
    from orthonav.phantoms.validation import simulate_validation
    from orthonav.phantoms.validation_report import tre_map_points, write_validation_report

    result = simulate_validation(small_knee_case.root, fle_mm=0.25, trials=20, seed=1)
    np.testing.assert_allclose(tre_map(result.fiducials_ct_mm, result.targets_ct_mm, result.fle_mm), result.predicted_tre_mm, rtol=1e-12)
    pts, tre = tre_map_points(result)
    assert len(pts) > 10_000 and tre.shape == (len(pts),)
    np.testing.assert_allclose(tre, predict_tre(result.fiducials_ct_mm, pts, result.fle_mm), rtol=1e-12)
    html = write_validation_report(result, small_knee_case.root, out_dir=tmp_path / "run")
    assert "src='validation_tre_map.png'" in html.read_text(encoding="utf-8")
    img = np.asarray(Image.open(tmp_path / "run" / "validation_tre_map.png").convert("RGB")).astype(int)
    assert img.shape[0] > 500 and img.shape[1] > 500
    purple = (img[..., 2] > img[..., 1] + 30) & (img[..., 0] > 40) & (img[..., 1] < 80)  # viridis' low end (and the bar)
    green = (img[..., 1] > img[..., 0] + 60) & (img[..., 1] > img[..., 2])  # its upper half
    assert purple.sum() > 2000 and green.sum() > 500


def test_one_array_per_bone_maps_each_bone_with_its_own_registration():
    """With a reference array on each bone, each bone's map uses that bone's fiducials and FLE;
    a bone without its own registration gets no map."""
    from orthonav.navigation import registration
    rng = np.random.default_rng(3)
    fid = {"femur": _knee_like_fiducials(rng) + [0.0, 0.0, 60.0], "tibia": _knee_like_fiducials(rng) - [0.0, 0.0, 60.0]}
    bones = {}
    for bone, f in fid.items():
        rec = register_paired_points([f"{bone}_{i}" for i in range(len(f))], f, f + rng.normal(scale=0.3, size=f.shape)).record
        fields = rec.model_dump(exclude={"schema_version", "bones", "reference"})
        bones[bone] = registration.BoneRegistrationRecord(reference=f"{bone.title()}Ref", **fields)
    record = register_paired_points([f"f{i}" for i in range(8)], fid["femur"], fid["femur"]).record.model_copy(update={"bones": bones})
    vertices = {b: rng.normal(scale=80.0, size=(50, 3)) for b in ("femur", "tibia", "fibula")}
    maps = registration_tre_maps(record, vertices)
    assert set(maps) == {"femur", "tibia"}
    for bone in ("femur", "tibia"):
        np.testing.assert_allclose(maps[bone], predict_tre(fid[bone], vertices[bone], bones[bone].fle_estimate_mm), rtol=1e-12)
