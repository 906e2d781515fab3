"""segment_case / mesh_case on a case folder: outputs, Slicer file, clear failures, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
from orthonav.core.case import Case, read_labels_table
from orthonav.core.errors import InputError
from orthonav.core.meshio import read_mesh
from orthonav.core.volume import Volume, read_volume, write_volume
from orthonav.segmentation.pipeline import mesh_case, segment_case


@pytest.fixture
def knee_case(tmp_path, mini_knee_phantom):
    """A case folder of this test's own holding the mini knee's CT."""
    case = Case(tmp_path / "case")
    write_volume(mini_knee_phantom.ct, case.ct)
    return case


def test_segment_case_writes_labels_table_meshes_and_seg_nrrd(knee_case, mini_knee_phantom):
    steps = []
    summary = segment_case(knee_case.root, mesh_formats=(".stl", ".vtp", ".ply", ".obj"), progress=lambda s, f: steps.append((s, f)))
    assert set(summary.bones) == {"femur", "tibia", "fibula", "patella"}
    assert summary.side == "right" and summary.backend == "classical"
    labels = read_volume(knee_case.labels)
    table = read_labels_table(knee_case.labels_json)
    assert labels.array_zyx.dtype == np.uint8
    np.testing.assert_allclose(labels.lps_from_ijk, mini_knee_phantom.ct.lps_from_ijk, atol=1e-6)
    for name, b in summary.bones.items():
        assert (labels.array_zyx == table.value_of(name)).sum() == b.voxels > 0
        assert b.triangles > 0
        for ext in (".stl", ".vtp", ".ply", ".obj"):
            m = read_mesh(knee_case.mesh(name, ext))
            assert m.n_cells == b.triangles, (name, ext)
    # The STL is in LPS mm on the true surface (mean distance well under half a voxel).
    k = mini_knee_phantom
    d = k.signed_distance_mm("femur", np.asarray(read_mesh(knee_case.mesh("femur")).points))
    assert np.abs(d).mean() < 0.5 * k.ct.spacing_mm.min()
    seg = knee_case.root / "labels.seg.nrrd"
    header = seg.read_bytes()[:4000].decode("latin-1")
    assert "Segment0_LabelValue:=" in header and "space: left-posterior-superior" in header
    assert steps[0][1] == 0.0 and steps[-1] == ("done", 1.0)
    assert not knee_case.confidence.exists()
    assert summary.timings_s["total"] > 0


def test_mesh_case_rebuilds_meshes_and_removes_stale_ones(knee_case):
    segment_case(knee_case.root, mesh_formats=(".stl",))
    stale = knee_case.mesh("old_bone", ".stl")
    stale.write_bytes(b"solid x\nendsolid x\n")
    out = mesh_case(knee_case.root, formats=(".stl", ".vtp"), target_triangles=2000)
    assert set(out) == {"femur", "tibia", "fibula", "patella"}
    assert not stale.exists()
    assert read_mesh(knee_case.mesh("tibia", ".vtp")).n_cells <= 2100


def test_missing_ct_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="orthonav import"):
        segment_case(tmp_path / "nothing")
    with pytest.raises(InputError, match="orthonav segment"):
        mesh_case(tmp_path / "nothing")


def test_non_ct_image_is_rejected_and_nothing_written(tmp_path):
    case = Case(tmp_path / "mr")
    mr = np.random.default_rng(0).integers(0, 900, size=(20, 30, 30)).astype(np.int16)  # MR-like: no air at -1000
    write_volume(Volume(mr, np.diag([1.0, 1.0, 2.0, 1.0])), case.ct)
    with pytest.raises(InputError, match="does not look like a CT"):
        segment_case(case.root)
    assert sorted(p.name for p in case.root.iterdir()) == ["ct.nii.gz"]


def test_ct_without_bone_leaves_no_files(tmp_path):
    case = Case(tmp_path / "soft")
    a = np.full((20, 40, 40), 40, np.int16)
    a[:, :, :4] = -1000
    write_volume(Volume(a, np.diag([0.8, 0.8, 1.5, 1.0])), case.ct)
    with pytest.raises(InputError, match="no bone found"):
        segment_case(case.root)
    assert sorted(p.name for p in case.root.iterdir()) == ["ct.nii.gz"]


def test_unknown_backend_and_missing_totalsegmentator(knee_case):
    with pytest.raises(InputError, match="unknown segmentation backend"):
        segment_case(knee_case.root, backend="magic")
    assert not knee_case.labels.exists()


def test_totalsegmentator_absent_is_a_clear_message_not_a_download(knee_case, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "totalsegmentator" else real_find_spec(n, *a))
    with pytest.raises(InputError, match="TotalSegmentator is not installed"):
        segment_case(knee_case.root, backend="totalsegmentator")
    assert not knee_case.labels.exists()


def test_bone_summaries_count_every_slab_of_any_label_type():
    """The label counts run in slabs of 4 M voxels (no int64 copy of a whole label map): a
    4.8 M-voxel map of uint8, uint16 and int16 labels gives each bone's exact voxel count."""
    from orthonav.core.case import LabelTable
    from orthonav.core.volume import Volume, make_lps_from_ijk
    from orthonav.segmentation.pipeline import _bone_summaries

    arr = np.random.default_rng(0).integers(0, 5, (40, 300, 400))
    table = LabelTable(labels={1: "a", 2: "b", 4: "d"})
    for dtype in (np.uint8, np.uint16, np.int16):
        a = arr.astype(dtype)
        got = _bone_summaries(Volume(a, make_lps_from_ijk((0.5, 0.5, 2.0), (0.0, 0.0, 0.0))), table)
        assert {n: b.voxels for n, b in got.items()} == {n: int((arr == v).sum()) for v, n in table.labels.items()}, dtype
        assert abs(got["a"].volume_ml - int((arr == 1).sum()) * 0.5e-3) < 1e-6
