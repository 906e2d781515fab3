"""Real CT (20-slice abdomen): bones found, separated and named plausibly; meshes on the label boundary."""

from __future__ import annotations

import numpy as np
import pytest
from orthonav.core.case import read_labels_table
from orthonav.core.meshio import read_mesh
from orthonav.core.volume import read_volume
from orthonav.segmentation.importer import import_source
from orthonav.segmentation.pipeline import segment_case
from scipy.spatial import cKDTree

pytestmark = pytest.mark.slow


def _boundary_face_centres_ijk(mask: np.ndarray) -> np.ndarray:
    """(n, 3) (i, j, k) centres of the voxel faces between inside and outside (the staircase surface)."""
    pts = []
    m = np.pad(mask, 1)
    for axis in range(3):
        a, b = np.take(m, range(m.shape[axis] - 1), axis=axis), np.take(m, range(1, m.shape[axis]), axis=axis)
        kji = np.argwhere(a != b).astype(float) - 1.0
        kji[:, axis] += 0.5
        pts.append(kji[:, ::-1])
    return np.concatenate(pts)


@pytest.fixture(scope="module")
def real_case(shared_data, tmp_path_factory):
    case = import_source(shared_data / "ct_abdomen_dicom", tmp_path_factory.mktemp("real") / "case")
    summary = segment_case(case.root, mesh_formats=(".stl",))
    return case, summary


def test_real_ct_bones_named_plausibly(real_case):
    case, summary = real_case
    names = set(summary.bones)
    assert {"humerus_left", "humerus_right"} <= names
    assert any(n.startswith("vertebrae") for n in names)
    assert sum(n.startswith("rib_left") for n in names) >= 3 and sum(n.startswith("rib_right") for n in names) >= 3
    limb = ("femur", "tibia", "fibula", "patella", "hip", "sacrum", "talus", "calcaneus")
    assert not [n for n in names if n.startswith(limb)], names  # a trunk CT: no knee or hip name
    labels = read_volume(case.labels)
    assert labels.array_zyx.shape[0] == 20  # README: "20 slices"
    table = read_labels_table(case.labels_json)
    # Sides in LPS: +x is patient left. Left bones lie at larger x than their right partners.
    def mean_x(name: str) -> float:
        kji = np.argwhere(labels.array_zyx == table.value_of(name))
        return float(labels.to_lps(kji[:, ::-1].astype(float))[:, 0].mean())

    assert mean_x("humerus_left") > mean_x("vertebrae_a") > mean_x("humerus_right")
    assert summary.bones["humerus_left"].volume_ml > 5 and summary.bones["humerus_right"].volume_ml > 5


def test_real_ct_mesh_vertices_on_label_boundary(real_case):
    case, _summary = real_case
    labels = read_volume(case.labels)
    table = read_labels_table(case.labels_json)
    half_voxel = 0.5 * float(labels.spacing_mm.min())
    for name in ("humerus_left", "humerus_right", "vertebrae_a"):
        faces_lps = labels.to_lps(_boundary_face_centres_ijk(labels.array_zyx == table.value_of(name)))
        d, _ = cKDTree(faces_lps).query(np.asarray(read_mesh(case.mesh(name)).points))
        assert d.mean() < half_voxel, (name, float(d.mean()))
