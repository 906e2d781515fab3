"""Implant library, implant-derived cuts, resection volumes and coverage on exact shapes,
cutting guides and Slicer markups."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pyvista as pv
import trimesh
from orthonav.core import transforms as tf
from orthonav.core.errors import InputError, SchemaError
from orthonav.planning.implants import (
    FAMILIES,
    implant_model,
    register_custom_implant,
    sizes,
)
from orthonav.planning.markups import export_markups, import_markups
from orthonav.planning.meshops import to_manifold, to_polydata
from orthonav.planning.tka.outcomes import BoneSolids, coverage, resect
from orthonav.planning.tka.placement import cuts_from_implants, femoral_cut_planes_implant
from orthonav.planning.schema import CutPlane, ImplantPlacement, Landmark, Plan


@pytest.mark.parametrize("family", FAMILIES)
def test_every_implant_is_a_closed_solid(family):
    for size in (sizes(family)[0], sizes(family)[-1]):
        m = implant_model(family, size)
        t = trimesh.Trimesh(*_vf(m.mesh()))
        assert t.is_watertight and t.is_volume, (family, size)
        assert m.solid.volume() > 1000.0


def _vf(mesh: pv.PolyData):
    return np.asarray(mesh.points), mesh.faces.reshape(-1, 4)[:, 1:]


def test_femoral_component_frame_matches_its_cut_planes():
    """The component's bone-facing faces lie on the five planes the cuts are derived from."""
    m = implant_model("tka_femoral", "4")
    ap = m.dims["ap_mm"]
    pts = np.asarray(m.mesh().points)
    planes = femoral_cut_planes_implant(ap)
    # No material inside the kept box (all five inequalities <= 0), within 1e-6 mm.
    inside_box = np.all([(pts - q) @ n < -1e-6 for q, n in planes.values()], axis=0)
    assert not inside_box.any()
    # Each plane carries component vertices (the faces are on the planes).
    for name, (q, n) in planes.items():
        assert np.sum(np.abs((pts - q) @ n) < 1e-4) >= 4, name
    bb = np.asarray(m.mesh().bounds).reshape(3, 2)
    assert bb[2, 0] == pytest.approx(-9.0, abs=1e-3)  # distal thickness below z = 0
    assert bb[1, 0] == pytest.approx(-ap / 2 - 9.0, abs=1e-3)  # posterior condyles
    with pytest.raises(InputError, match="no size"):
        implant_model("tka_femoral", "99")


def _cylinder_bone(radius=30.0, z0=0.0, z1=100.0):
    c = pv.Cylinder(center=(0, 0, (z0 + z1) / 2), direction=(0, 0, 1), radius=radius, height=z1 - z0, resolution=360, capping=True)
    return c.triangulate().clean()


def test_tibial_resection_volume_and_coverage_exact():
    bone = _cylinder_bone()
    area = 0.5 * 360 * 30.0**2 * np.sin(2 * np.pi / 360)  # the 360-gon's exact area
    cut = CutPlane(bone="tibia", point_lps_mm=(0, 0, 90.0), normal_lps=(0, 0, 1.0), resection_depth_mm=10.0)
    tray = ImplantPlacement(family="tka_tibial_tray", size="3", bone="tibia", ct_from_implant=tf.make_rigid(None, [0, 0, 90.0]).tolist())
    plan = Plan(cuts={"proximal_tibia": cut}, implants=[tray])
    res = resect(plan, BoneSolids({"tibia": bone}))["tibia"]
    assert res.removed_volume_mm3 == pytest.approx(area * 10.0, rel=1e-6)
    # Coverage of a circle by the tray outline, against dense point sampling.
    from matplotlib.path import Path as MplPath
    from orthonav.planning.implants import tray_outline
    from orthonav.planning.meshops import cross_section

    d = implant_model("tka_tibial_tray", "3").dims
    outline = tray_outline(d["ml_mm"], d["ap_mm"])
    cov = coverage(cross_section(to_manifold(bone), np.asarray(tray.ct_from_implant)), outline)
    g = np.stack(np.meshgrid(np.linspace(-40, 40, 801), np.linspace(-40, 40, 801)), -1).reshape(-1, 2)
    in_bone = np.linalg.norm(g, axis=1) < 30.0 * np.cos(np.pi / 360)
    in_tray = MplPath(outline).contains_points(g)
    cell = (80 / 800) ** 2
    assert cov.covered_fraction == pytest.approx(np.sum(in_bone & in_tray) / np.sum(in_bone), abs=0.005)
    assert cov.overhang_area_mm2 == pytest.approx(np.sum(in_tray & ~in_bone) * cell, rel=0.03)
    assert cov.max_overhang_mm == pytest.approx(np.linalg.norm(outline, axis=1).max() - 30.0, abs=0.05)


def test_femoral_box_resection_volume_exact():
    """A box 'femur' resected by a femoral component: removed = box minus kept polytope."""
    m = implant_model("tka_femoral", "3")
    ap = m.dims["ap_mm"]
    a = ap / 2.0
    # Bone: box x +-30, y from -a-6 to a+4, z from -7 (6 mm below... distal) to 150.
    box = pv.Box(bounds=(-30, 30, -a - 6, a + 4, -7, 150)).triangulate().clean()
    T = tf.random_rigid(np.random.default_rng(2), max_translation_mm=50)
    bone = box.transform(T, inplace=False)
    fem = ImplantPlacement(family="tka_femoral", size="3", bone="femur", ct_from_implant=T.tolist())
    res = resect(Plan(implants=[fem]), BoneSolids({"femur": bone}))["femur"]
    c = 9.0  # chamfer
    w = 60.0
    # Exact: distal slab 7 mm, posterior 6 mm and anterior 4 mm slabs up to the region top (40),
    # plus the chamfer triangles (legs 9 mm) clipped to the box.
    top = 40.0
    distal = 7.0 * (2 * a + 10.0)
    post = 6.0 * top
    ant = 4.0 * top
    chamfer = 2 * 0.5 * c * c
    expected = w * (distal + post + ant + chamfer)
    assert res.removed_volume_mm3 == pytest.approx(expected, rel=1e-6)


def test_cuts_from_implants_depths():
    L = {
        "femoral_head_centre": (0, 0, 450.0), "femoral_knee_centre": (0, 0, 0.0),
        "medial_epicondyle": (40.0, 0, 0), "lateral_epicondyle": (-40.0, 0, 0),
        "distal_medial_condyle": (20.0, 5, -25.0), "distal_lateral_condyle": (-20.0, 5, -23.0),
        "posterior_medial_condyle": (20.0, 30.0, -10), "posterior_lateral_condyle": (-20.0, 29.0, -10),
        "tibial_knee_centre": (0, 0, -30.0), "ankle_centre": (0, 0, -400.0),
        "medial_plateau_centre": (20.0, 0, -31.0), "lateral_plateau_centre": (-20.0, 0, -29.0),
    }
    lms = {k: Landmark(position_lps_mm=v, bone="x", method="test") for k, v in L.items()}
    ap = implant_model("tka_femoral", "3").dims["ap_mm"]
    # Component: z proximal, y anterior (LPS -y), distal face at z = -16, posterior cut 9 mm
    # in front of the medial posterior condyle (y = 30 -> 21).
    r = np.array([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])  # x = y cross z, det +1
    fem = ImplantPlacement(family="tka_femoral", size="3", bone="femur", ct_from_implant=tf.make_rigid(r, [0, 21.0 - ap / 2, -16.0]).tolist())
    tray = ImplantPlacement(family="tka_tibial_tray", size="3", bone="tibia", ct_from_implant=tf.make_rigid(None, [0, 0, -38.0]).tolist())
    cuts = cuts_from_implants([fem, tray], lms)
    assert cuts["distal_femur"].depths_mm == pytest.approx({"distal_medial_condyle": 9.0, "distal_lateral_condyle": 7.0})
    assert cuts["posterior_femur"].depths_mm == pytest.approx({"posterior_medial_condyle": 9.0, "posterior_lateral_condyle": 8.0})
    assert cuts["proximal_tibia"].depths_mm == pytest.approx({"medial_plateau_centre": 7.0, "lateral_plateau_centre": 9.0})
    np.testing.assert_allclose(cuts["distal_femur"].normal_lps, [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(cuts["anterior_femur"].normal_lps, [0, -1, 0], atol=1e-12)


def test_custom_implant_json(tmp_path):
    cube = pv.Cube(x_length=20, y_length=10, z_length=5).triangulate()
    cube.save(tmp_path / "my.stl")
    spec = {"schema_version": 1, "family": "tha_cup", "size": "X", "mesh": "my.stl", "implant_from_mesh": tf.make_rigid(None, [0, 0, 5]).tolist(), "dims": {"outer_diameter_mm": 20}}
    (tmp_path / "my.json").write_text(json.dumps(spec))
    m = register_custom_implant(tmp_path / "my.json")
    assert implant_model("tha_cup", "X") is m
    assert m.solid.volume() == pytest.approx(1000.0)
    assert m.solid.bounding_box()[2] == pytest.approx(2.5)
    spec["implant_from_mesh"] = np.diag([1.0, 1, -1, 1]).tolist()
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="reflection"):
        register_custom_implant(tmp_path / "bad.json")


def test_cutting_guide_watertight_with_slot_on_the_cut():
    from orthonav.planning.guides import GuideSpec, make_cutting_guide

    bone = _cylinder_bone(radius=30.0)
    cut = CutPlane(bone="tibia", point_lps_mm=(0, 0, 90.0), normal_lps=(0, 0, 1.0), resection_depth_mm=10.0)
    spec = GuideSpec()
    g = make_cutting_guide(bone, cut, np.array([0.0, -1.0, 0.0]), spec=spec)
    mesh = g.mesh()
    t = trimesh.Trimesh(*_vf(mesh))
    assert t.is_watertight and t.is_volume
    # Slot: no material in the slot band in front of the bone, material just above and below it.
    ys = np.linspace(-30.5 - spec.thickness_mm + 1.0, -31.0, 6)
    band = np.array([[x, y, 90.0 + dz] for x in (-10.0, 0.0, 10.0) for y in ys for dz in (-0.5 * spec.slot_mm + 0.1, 0.0, 0.5 * spec.slot_mm - 0.1)])
    def contains(points):
        sel = pv.PolyData(points).select_interior_points(mesh, check_surface=False)
        return np.asarray(sel["selected_points"]).astype(bool)

    assert not contains(band).any()
    walls = band.copy()
    walls[:, 2] = 90.0 + np.sign(band[:, 2] - 90.0 + 1e-9) * (0.5 * spec.slot_mm + 1.5)
    assert contains(walls).all()
    # Back face follows the bone with the printing clearance (no contact, no gap > 0.5 mm).
    pts = np.asarray(mesh.points)
    r = np.linalg.norm(pts[:, :2], axis=1)
    on_side = (r < 31.0) & (np.abs(pts[:, 2] - 90.0) > spec.slot_mm) & (pts[:, 2] < 98.0)  # the bone ends at z = 100
    assert on_side.sum() > 20
    assert r[on_side].min() == pytest.approx(30.0 + spec.clearance_mm, abs=0.05)


def test_markups_round_trip_lps_and_ras(tmp_path):
    lms = {"femoral_head_centre": Landmark(position_lps_mm=(10.0, -20.0, 300.0), bone="femur", method="sphere fit"),
           "ankle_centre": Landmark(position_lps_mm=(-5.0, 12.5, -80.0), bone="tibia", method="manual")}
    for cs in ("LPS", "RAS"):
        p = export_markups(lms, tmp_path / f"l_{cs}.mrk.json", coordinate_system=cs)
        doc = json.loads(p.read_text(encoding="utf-8"))
        pos = doc["markups"][0]["controlPoints"][0]["position"]
        assert pos == ([10.0, -20.0, 300.0] if cs == "LPS" else [-10.0, 20.0, 300.0])
        back = import_markups(p)
        for k in lms:
            np.testing.assert_allclose(back[k].position_lps_mm, lms[k].position_lps_mm, atol=1e-12)
            assert back[k].bone == lms[k].bone and back[k].method == "markups import"
    bad = json.loads((tmp_path / "l_LPS.mrk.json").read_text(encoding="utf-8"))
    bad["markups"][0]["coordinateSystem"] = "IJK"
    (tmp_path / "bad.mrk.json").write_text(json.dumps(bad))
    with pytest.raises(SchemaError, match="coordinateSystem"):
        import_markups(tmp_path / "bad.mrk.json")
    # A placeholder point (Slicer 'undefined' status, no position) is skipped, not an error.
    doc = json.loads((tmp_path / "l_RAS.mrk.json").read_text(encoding="utf-8"))
    doc["markups"][0]["controlPoints"].append({"id": "9", "label": "tibial_spine", "positionStatus": "undefined"})
    (tmp_path / "placeholder.mrk.json").write_text(json.dumps(doc))
    assert sorted(import_markups(tmp_path / "placeholder.mrk.json")) == sorted(lms)
    assert doc["markups"][0]["controlPoints"][0]["orientation"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]  # identity in RAS
    (tmp_path / "trunc.mrk.json").write_text("{\"markups\": [")
    with pytest.raises(SchemaError, match="not valid JSON") as err:
        import_markups(tmp_path / "trunc.mrk.json")
    assert err.value.path == tmp_path / "trunc.mrk.json"


def test_open_or_inverted_meshes():
    bone = _cylinder_bone()
    inverted = bone.copy()
    f = inverted.faces.reshape(-1, 4).copy()
    f[:, 1:] = f[:, 1:][:, ::-1]
    inverted.faces = f.ravel()
    assert to_manifold(inverted).volume() == pytest.approx(to_manifold(bone).volume())
    sheet = pv.Plane(i_resolution=10, j_resolution=10).triangulate()
    with pytest.raises(InputError, match="closed"):
        to_manifold(sheet, name="sheet", max_hole_mm=0.1)
    assert to_polydata(to_manifold(bone)).n_cells > 100


def test_clipped_volume_matches_boolean_for_convex_regions():
    """Boolean-free volume of a closed surface cut by 1-6 planes equals manifold3d's exact
    trim, for planes through and beside a bone-like solid (a bent, capped tube)."""
    from orthonav.planning.meshops import clipped_volume, closed_surface, halfspace_keep

    tube = pv.Cylinder(radius=20.0, height=120.0, resolution=90).triangulate().clean()
    knob = pv.Sphere(radius=28.0, center=(0.0, 8.0, -60.0), theta_resolution=60, phi_resolution=60)
    solid = to_manifold(tube) + to_manifold(knob)
    surf = closed_surface(solid)
    rng = np.random.default_rng(3)
    for k in range(1, 7):
        planes = [(rng.uniform(-40.0, 40.0, 3), rng.normal(size=3)) for _ in range(k)]
        ref = solid
        for q, n in planes:
            ref = halfspace_keep(ref, q, n)
        assert clipped_volume(surf, planes) == pytest.approx(ref.volume(), rel=1e-9, abs=1e-3), k
    assert clipped_volume(surf, []) == pytest.approx(solid.volume(), rel=1e-12)
