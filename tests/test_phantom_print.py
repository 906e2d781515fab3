"""The printable knee: watertight manifold STL, and divot JSON that matches the geometry."""

from __future__ import annotations

import numpy as np
import pytest
import pyvista as pv
import trimesh

from orthonav.core.schema import load_model
from orthonav.core.transforms import apply
from orthonav.phantoms.knee import make_knee_phantom
from orthonav.phantoms.printable import PrintedPhantomSpec
from orthonav.phantoms.synthetic import write_phantom_case


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    phantom = make_knee_phantom(seed=5, small=True)
    case = write_phantom_case(phantom, tmp_path_factory.mktemp("print_case"))
    spec = load_model(case.print_dir / "phantom_knee.json", PrintedPhantomSpec)
    mesh = trimesh.load(case.print_dir / "phantom_knee.stl")
    return phantom, spec, mesh


def test_stl_is_a_single_watertight_manifold_that_fits_a_printer(printed):
    _phantom, spec, mesh = printed
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.is_volume
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume > 0
    assert mesh.volume / 1000.0 == pytest.approx(spec.volume_ml, rel=1e-3)
    ext = mesh.bounds[1] - mesh.bounds[0]
    assert np.all(ext <= 250.0) and mesh.bounds[0][2] == pytest.approx(0.0, abs=1e-4)  # base on the bed


def test_divot_apexes_and_cones_match_the_mesh(printed):
    _phantom, spec, mesh = printed
    surface = pv.PolyData(mesh.vertices, np.hstack([np.full((len(mesh.faces), 1), 3), mesh.faces]).ravel())
    divots = {**spec.registration_divots, **spec.target_divots}
    assert len(spec.registration_divots) >= 6 and len(spec.target_divots) >= 4
    for name, d in divots.items():
        apex = np.array(d.apex_phantom_mm)
        axis = np.array(d.axis_phantom)
        assert np.linalg.norm(mesh.vertices - apex, axis=1).min() < 0.05, name
        # points on the cone wall (1 mm up the wall, 8 directions) lie on the printed surface
        perp = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        other = np.cross(axis, perp)
        a = np.radians(d.half_angle_deg)
        wall = [apex + 1.0 * (np.cos(a) * axis + np.sin(a) * (np.cos(t) * perp + np.sin(t) * other)) for t in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
        probe = pv.PolyData(np.vstack([wall, apex - 0.3 * axis, apex + 0.3 * axis]))
        sd = np.asarray(probe.compute_implicit_distance(surface)["implicit_distance"])
        assert np.abs(sd[:8]).max() < 0.05, name
        # material just below the apex, air just above it (vtk: negative inside)
        assert sd[8] < 0 < sd[9], name


def test_divots_are_at_known_depth_in_the_ct_frame(printed):
    phantom, spec, _mesh = printed
    ct_from_phantom = np.array(spec.ct_from_phantom)
    for name, d in {**spec.registration_divots, **spec.target_divots}.items():
        p_ct = apply(ct_from_phantom, d.apex_phantom_mm)
        np.testing.assert_allclose(p_ct, d.apex_ct_lps_mm, atol=1e-6)
        # the apex lies depth_mm below the true bone surface along the divot axis
        anchor = p_ct + d.depth_mm * (ct_from_phantom[:3, :3] @ np.array(d.axis_phantom))
        assert abs(phantom.signed_distance_mm(d.bone, anchor[None])[0]) < 0.02, name
        assert phantom.signed_distance_mm(d.bone, p_ct[None])[0] < -0.8 * d.depth_mm, name  # not near an edge


def test_divot_layout_is_usable_for_registration(printed):
    _phantom, spec, _mesh = printed
    reg = np.array([d.apex_phantom_mm for d in spec.registration_divots.values()])
    tgt = np.array([d.apex_phantom_mm for d in spec.target_divots.values()])
    assert np.linalg.svd(reg - reg.mean(axis=0), compute_uv=False)[2] > 5.0  # not coplanar
    d = np.linalg.norm(reg[:, None] - tgt[None], axis=2)
    assert d.min() > 15.0
    assert spec.label_code == format(5, "08b")
    m = np.array(spec.mount_phantom_from_marker)
    assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3)) and np.linalg.det(m[:3, :3]) > 0


def test_ct_of_the_printed_phantom_is_in_the_phantom_ct_frame(printed, tmp_path):
    from orthonav.core.case import read_labels_table
    from orthonav.core.transforms import invert
    from orthonav.core.volume import read_volume
    from orthonav.phantoms.printed_ct import write_printed_case

    phantom, spec, _mesh = printed
    case = write_printed_case(phantom, tmp_path / "printed", spacing_mm=(1.5, 1.5, 1.5))
    ct = read_volume(case.ct)
    labels = read_volume(case.truth_dir / "labels.nii.gz")
    table = read_labels_table(case.truth_dir / "labels.json")
    assert table.labels == {1: "femur", 2: "tibia", 5: "support"}
    np.testing.assert_allclose(ct.direction, phantom.ct.direction, atol=1e-6)
    a, lab = ct.array_zyx, labels.array_zyx
    assert np.median(a[lab == 0]) < -950 and abs(np.median(a[lab == 1]) - spec.material_hu) < 30
    # truth landmarks of the printed region lie on the printed surface, in this CT's frame
    stl = pv.read(case.print_dir / "phantom_knee.stl")
    phantom_from_ct = invert(np.array(spec.ct_from_phantom))
    for name in ("medial_epicondyle", "lateral_epicondyle", "distal_medial_condyle", "medial_plateau_centre"):
        p = apply(phantom_from_ct, phantom.truth.landmarks_lps_mm[name])
        d = pv.PolyData(p[None]).compute_implicit_distance(stl)["implicit_distance"][0]
        assert abs(d) < 0.1, name  # facet (chord) error of the 1.5 mm truth mesh the print is made of
    # a voxel deep inside the femoral condyles is print material and labelled femur
    inner = np.array(phantom.truth.landmarks_lps_mm["femoral_knee_centre"])
    i, j, k = np.rint(ct.to_ijk(inner)).astype(int)
    assert lab[k, j, i] == 1 and a[k, j, i] > 50
    # the divot apexes are inside the CT field of view, at the print surface (partial volume)
    for d in spec.registration_divots.values():
        ijk = ct.to_ijk(np.array(d.apex_ct_lps_mm))
        assert np.all(ijk > 2) and np.all(ijk < np.array(ct.shape_ijk) - 3)
