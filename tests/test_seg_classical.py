"""Classical segmentation against ground truth: the mini knee (analytic bones) and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from test_seg_synth import BONES, mini_knee

from orthonav.core.errors import InputError
from orthonav.core.volume import Volume
from orthonav.segmentation.classical import segment_classical
from orthonav.segmentation.evaluate import evaluate_segmentation


@pytest.fixture(scope="module")
def knee_seg():
    k = mini_knee()
    return k, segment_classical(k.ct, anatomy="auto")


def test_knee_bones_found_named_and_sided(knee_seg):
    _k, seg = knee_seg
    assert sorted(seg.table.labels.values()) == sorted(BONES)
    assert seg.table.side == "right"  # fibula lateral = patient right (-x in LPS) on this leg
    assert seg.table.backend == "classical"
    assert seg.labels.array_zyx.dtype == np.uint8
    np.testing.assert_array_equal(seg.labels.lps_from_ijk, knee_seg[0].ct.lps_from_ijk)


def test_knee_dice_and_hd95_against_truth(knee_seg):
    k, seg = knee_seg
    scores = evaluate_segmentation(seg.labels, seg.table, k.labels, k.table)
    for name, s in scores.items():
        # The mini patella is 8 mm thick (about 1500 voxels): one voxel layer is ~15 % of it.
        assert s.dice >= (0.96 if name == "patella" else 0.98), (name, s)
        assert s.hd95_mm <= 1.5, (name, s)
        assert s.msd_mm < 0.5 * float(k.ct.spacing_mm.min()), (name, s)


def test_beads_are_not_bone(knee_seg):
    """The beads on the femur and tibia are excluded: no label reaches the bead centres."""
    from test_seg_synth import BEADS_LIMB

    from orthonav.core.transforms import apply

    k, seg = knee_seg
    centres_lps = apply(k.ct_from_limb, BEADS_LIMB)
    ijk = np.round(k.ct.to_ijk(centres_lps)).astype(int)
    for i, j, kk in ijk:
        assert seg.labels.array_zyx[kk, j, i] == 0


def test_named_anatomy_is_respected_and_unknown_rejected():
    k = mini_knee()
    seg = segment_classical(k.ct, anatomy="knee")
    assert "patella" in seg.table.labels.values()
    with pytest.raises(InputError, match="unknown anatomy"):
        segment_classical(k.ct, anatomy="elbow")


def test_ct_without_bone_is_a_clear_error():
    soft = np.full((20, 30, 30), 40, np.int16)
    soft[:, :, :3] = -1000
    with pytest.raises(InputError, match="no bone found"):
        segment_classical(Volume(soft, np.diag([0.8, 0.8, 1.5, 1.0])))


def test_not_a_3d_volume_is_rejected():
    with pytest.raises(InputError, match="3D"):
        segment_classical(Volume(np.zeros((5, 5), np.int16), np.eye(4)))
