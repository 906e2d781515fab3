"""Classical segmentation against ground truth: the mini knee (analytic bones) and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume
from orthonav.segmentation.classical import segment_classical
from orthonav.segmentation.evaluate import evaluate_segmentation
from test_seg_synth import BONES, mini_knee


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
    from orthonav.core.transforms import apply
    from test_seg_synth import BEADS_LIMB

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


def test_knee_has_no_unnamed_regions_and_no_notes(knee_seg):
    _k, seg = knee_seg
    assert not [n for n in seg.table.labels.values() if n.startswith("bone_")]
    assert seg.notes == ()


def test_unnamed_fragment_is_merged_into_the_bone_it_touches_or_dropped():
    """A fragment touching a bone joins it (its voxels get that bone's label, a note says so);
    one touching nothing is left out with a note; neither ever becomes a ``bone_<n>``."""
    from orthonav.segmentation.classical import _absorb_fragment
    from orthonav.segmentation.naming import RegionInfo

    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # femur
    labels[12:18, 2:10, 2:10] = 2  # tibia
    table = {1: "femur", 2: "tibia"}
    touching = np.zeros((3, 3, 3), bool)
    touching[:, :, :] = True
    box = (slice(10, 13), slice(4, 7), slice(4, 7))  # k 10 touches the femur (k 9), k 12 is tibia
    frag = touching & (labels[box] == 0)
    info = RegionInfo.from_points(0, np.argwhere(frag).astype(float) + 0.1 * np.arange(3), volume_mm3=float(frag.sum()))
    note = _absorb_fragment(labels, table, (box, frag), info)
    assert "merged" in note
    merged_into = {int(v) for v in labels[box][frag]}
    assert merged_into in ({1}, {2})
    assert set(np.unique(labels)) == {0, 1, 2}
    lone_box = (slice(2, 4), slice(15, 18), slice(15, 18))
    lone = np.ones((2, 3, 3), bool)
    before = labels.copy()
    note = _absorb_fragment(labels, table, (lone_box, lone), info)
    assert "dropped" in note
    np.testing.assert_array_equal(labels, before)
