"""Meshes: watertight, outward, in LPS mm on the TRUE bone surface (catches frame mistakes)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume, make_lps_from_ijk
from orthonav.segmentation.meshing import is_watertight, label_meshes, mask_mesh


@pytest.fixture(scope="module")
def knee_meshes(mini_knee_phantom, mini_knee_seg):
    return mini_knee_phantom, mini_knee_seg, label_meshes(mini_knee_seg.labels, mini_knee_seg.table)


def test_meshes_are_watertight_and_outward(knee_meshes):
    _k, _seg, meshes = knee_meshes
    assert set(meshes) == {"femur", "tibia", "fibula", "patella"}
    for name, m in meshes.items():
        assert is_watertight(m), name
        tm = trimesh.Trimesh(np.asarray(m.points), np.asarray(m.faces).reshape(-1, 4)[:, 1:])
        assert tm.volume > 0, name  # outward normals


#: Mean |signed distance| of the mesh vertices to the analytic surface on the mini knee
#: (0.7 x 0.8 x 1.1 mm voxels): measured femur 0.088, tibia 0.087, fibula 0.079, patella 0.130 mm
#: (95th percentiles 0.21-0.38 mm). Asserted with a small margin: 0.15 mm mean, 0.45 mm p95.
MESH_MEAN_MM = 0.15
MESH_P95_MM = 0.45


def test_mesh_vertices_on_true_surface_in_lps(knee_meshes):
    """Mean |signed distance| of the vertices to the analytic surface <= 0.15 mm (under half the
    smallest voxel, 0.35 mm). A mesh left in index space, or with the direction matrix ignored,
    is mm-to-cm off."""
    k, _seg, meshes = knee_meshes
    half_voxel = 0.5 * float(k.ct.spacing_mm.min())
    assert MESH_MEAN_MM < half_voxel
    for name, m in meshes.items():
        d = np.abs(k.signed_distance_mm(name, np.asarray(m.points)))
        assert np.mean(d) <= MESH_MEAN_MM, (name, float(np.mean(d)))
        assert np.percentile(d, 95) <= MESH_P95_MM, (name, float(np.percentile(d, 95)))


def test_mesh_volume_matches_truth(knee_meshes):
    k, _seg, meshes = knee_meshes
    voxel_mm3 = float(np.prod(k.ct.spacing_mm))
    for name, m in meshes.items():
        truth_mm3 = (k.labels.array_zyx == k.table.value_of(name)).sum() * voxel_mm3
        # The mini patella is only 8 mm thick (about 11 voxels): allow it 8 %.
        assert abs(m.volume - truth_mm3) / truth_mm3 < (0.08 if name == "patella" else 0.05), name


def test_mirrored_grid_sphere():
    """A grid whose direction is a reflection (det -1): vertices still on the sphere, normals outward."""
    n = 40
    kk, jj, ii = np.mgrid[:n, :n, :n]
    lps_from_ijk = make_lps_from_ijk([0.9, 0.7, 1.2], [10.0, -5.0, 30.0], np.diag([1.0, -1.0, 1.0]))
    vol = Volume(np.zeros((n, n, n), np.uint8), lps_from_ijk)
    p = vol.to_lps(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float))
    centre = vol.to_lps(np.array([19.3, 20.1, 18.7]))
    mask = (np.linalg.norm(p - centre, axis=1) < 10.0).reshape(n, n, n)
    mesh = mask_mesh(mask, lps_from_ijk, target_triangles=4000)
    r = np.linalg.norm(np.asarray(mesh.points) - centre, axis=1)
    assert abs(r.mean() - 10.0) < 0.35
    assert is_watertight(mesh)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 1000, rel=0.04)
    normals = mesh.compute_normals(cell_normals=True, point_normals=False).cell_data["Normals"]
    outward = np.einsum("ij,ij->i", normals, np.asarray(mesh.cell_centers().points) - centre)
    assert (outward > 0).mean() > 0.99


def test_decimation_hits_the_target(mini_knee_seg):
    seg = mini_knee_seg
    m = label_meshes(seg.labels, seg.table, target_triangles=3000)
    for name in ("femur", "tibia"):
        assert 2500 <= m[name].n_cells <= 3100


def test_empty_mask_is_an_error():
    with pytest.raises(InputError, match="no voxels"):
        mask_mesh(np.zeros((5, 5, 5), bool), np.eye(4))
    lab = Volume(np.zeros((5, 5, 5), np.uint8), np.eye(4))
    assert label_meshes(lab, LabelTable(labels={1: "femur"})) == {}


def test_bones_closed_on_worker_threads_equal_those_closed_one_after_the_other():
    """label_meshes closes (decimates, orients) bones on worker threads beside the next bones'
    VTK steps when the thread budget allows: the surfaces are exactly those of the serial run."""
    import SimpleITK as sitk

    k, j, i = np.mgrid[0:60, 0:50, 0:70]
    lab = np.zeros(k.shape, np.uint8)
    for v, (c, r) in enumerate((((30, 25, 15), 11.0), ((30, 25, 45), 9.0), ((12, 12, 60), 6.0)), start=1):
        lab[(k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 <= r * r] = v
    vol = Volume(lab, make_lps_from_ijk(np.array([0.7, 0.8, 1.1]), np.array([5.0, -3.0, 2.0]), np.eye(3)))
    table = LabelTable(labels={1: "femur", 2: "tibia", 3: "patella"}, backend="classical")
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
        threaded = label_meshes(vol, table, target_triangles=2000)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        serial = label_meshes(vol, table, target_triangles=2000)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert list(threaded) == ["femur", "tibia", "patella"] == list(serial)
    for name in serial:
        assert serial[name].n_cells > 500
        np.testing.assert_array_equal(np.asarray(threaded[name].points), np.asarray(serial[name].points))
        np.testing.assert_array_equal(np.asarray(threaded[name].faces), np.asarray(serial[name].faces))
