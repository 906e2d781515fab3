"""Acceptance on the full knee phantom: classical segmentation vs analytic ground truth.

Dice >= 0.97 and HD95 <= 1.5 mm per bone; meshes watertight with vertices on the TRUE
analytic bone surface (mean |signed distance| < 0.5 voxel) in LPS. Slow: building the
phantom and segmenting 20 M voxels takes about a minute.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom_and_seg():
    from orthonav.phantoms.knee import make_knee_phantom
    from orthonav.segmentation.classical import segment_classical

    ph = make_knee_phantom(seed=0)
    return ph, segment_classical(ph.ct, anatomy="auto")


def test_phantom_dice_hd95_per_bone(phantom_and_seg):
    from orthonav.segmentation.evaluate import evaluate_segmentation

    ph, seg = phantom_and_seg
    assert sorted(seg.table.labels.values()) == ["femur", "fibula", "patella", "tibia"]
    assert seg.table.side == ph.label_table.side == "right"
    scores = evaluate_segmentation(seg.labels, seg.table, ph.labels, ph.label_table)
    for name, s in scores.items():
        assert s.dice >= 0.97, (name, s)
        assert s.hd95_mm <= 1.5, (name, s)


def test_phantom_meshes_on_true_surface(phantom_and_seg):
    from orthonav.segmentation.meshing import is_watertight, label_meshes

    ph, seg = phantom_and_seg
    meshes = label_meshes(seg.labels, seg.table)
    # README: mean distance of mesh vertices to the true surface 0.16 to 0.21 mm (half a voxel
    # is 0.45 mm; 0.17 to 0.25 mm at the half maximum, before 2026-12-06); asserted at 0.22 mm,
    # the claimed upper end plus a small margin.
    for name, m in meshes.items():
        assert is_watertight(m), name
        d = ph.signed_distance_mm(name, np.asarray(m.points))
        assert np.mean(np.abs(d)) <= 0.22, (name, float(np.mean(np.abs(d))))
