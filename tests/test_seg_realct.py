"""Whole bones on real CT (issue 13, item 1): the classical bone mask against a reference.

``ct_thorax_small`` (3 mm voxels, T11-L2 and ribs 7-12, no contrast) comes with a
TotalSegmentator v2 label map; the bone mask (all our labels merged) is scored against all of
its vertebra and rib labels merged (costal cartilage is not bone). Measured: Dice 0.901,
recall 0.966 in the vertebrae and 0.846 in the ribs, precision 0.869 (0.879 / 0.956 / 0.839 /
0.835 before the half-maximum surface, the dense-pore fill and the cortex test; the classical
backend once found no bone at all in this scan: "no bone found"). The shared abdominal DICOM is another
patient (contrast-enhanced, other anatomy; checked by image correlation), so it has no
reference; its checks are the share of the vertebra's dense voxels and of its body's core that
are labelled, and that the contrast-filled aorta beside it and the vertebral canal are not.
Also synthetic checks of the physics steps: levels lowered by partial volume, pores filled
while a canal through the bone is not, the surface at the local half maximum, and a region
without cortex.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from orthonav.core.volume import Volume, read_volume
from orthonav.segmentation.bone_mask import bone_levels, fill_enclosed_in_planes, grow_from_cortex, has_cortex, peel_to_half_maximum
from orthonav.segmentation.classical import ClassicalParams, fill_cavities, segment_classical
from orthonav.segmentation.importer import read_dicom_ct
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull

pytestmark = pytest.mark.slow


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def thorax(shared_data):
    folder = shared_data / "ct_thorax_small"
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    ref = read_volume(folder / "example_seg.nii.gz").array_zyx
    names = {int(k): v for k, v in json.loads((folder / "labels_total_v2.json").read_text()).items()}
    return ct, ref, names, segment_classical(ct)


def test_thorax_levels_follow_the_partial_volume_of_the_cortex(thorax):
    ct, _ref, _names, _seg = thorax
    np.testing.assert_allclose(ct.spacing_mm, [3.0, 3.0, 3.0], atol=1e-3)  # README: "3 mm voxels"
    p = ClassicalParams()
    lv = bone_levels(ct.array_zyx, bone_high_hu=p.bone_high_hu, bone_low_hu=p.bone_low_hu)
    # A 1 mm cortex in 3 mm voxels peaks at ~500 HU, not ~1300: the levels come down with it.
    assert 350.0 < lv.cortex_hu < 700.0, lv
    assert not lv.resolved and 0.3 < lv.contrast_fraction < 0.8, lv
    assert 200.0 < lv.seed_hu < 350.0 and 80.0 < lv.grow_hu < 150.0, lv


def test_thorax_bone_mask_against_reference(thorax):
    _ct, ref, names, seg = thorax
    vert = np.isin(ref, [v for v, n in names.items() if n.startswith("vertebrae_")])
    rib = np.isin(ref, [v for v, n in names.items() if n.startswith("rib_")])
    truth = vert | rib
    ours = seg.labels.array_zyx > 0
    figures = {
        "dice": _dice(ours, truth),
        "recall_vertebrae": float(ours[vert].mean()),
        "recall_ribs": float(ours[rib].mean()),
        "precision": float(truth[ours].mean()),
        "costal_cartilage_labelled": float(ours[np.isin(ref, [v for v, n in names.items() if n == "costal_cartilages"])].mean()),
    }
    # Measured 0.901 / 0.966 / 0.846 / 0.869; cartilage 0.039 (issue 13 asks Dice >= 0.90).
    assert figures["dice"] >= 0.90, figures
    assert figures["recall_vertebrae"] >= 0.95, figures
    assert figures["recall_ribs"] >= 0.83, figures
    assert figures["precision"] >= 0.85, figures
    assert figures["costal_cartilage_labelled"] <= 0.08, figures
    assert sum(n.startswith("vertebrae") for n in seg.table.labels.values()) >= 1, seg.table.labels


def test_abdomen_dicom_keeps_given_levels_and_labels_the_vertebra(shared_data):
    ct = read_dicom_ct(shared_data / "ct_abdomen_dicom")
    p = ClassicalParams()
    lv = bone_levels(ct.array_zyx, bone_high_hu=p.bone_high_hu, bone_low_hu=p.bone_low_hu)
    # 0.98 mm pixels resolve the cortex (~970 HU): the phantom-proven levels are kept as they are.
    assert lv.resolved and (lv.seed_hu, lv.grow_hu) == (p.bone_high_hu, p.bone_low_hu), lv
    seg = segment_classical(ct)
    labels = seg.labels.array_zyx
    value = next(v for v, n in seg.table.labels.items() if n.startswith("vertebrae"))
    a = ct.array_zyx
    dense = labelled = 0
    for k in range(labels.shape[0]):  # per slice: voxels >= 100 HU inside the vertebra's hull
        pts = np.argwhere(labels[k] == value)
        if len(pts) < 10:
            continue
        (j0, i0), (j1, i1) = pts.min(axis=0), pts.max(axis=0) + 1
        jj, ii = np.mgrid[j0:j1, i0:i1]
        hull = PolygonPath(pts[ConvexHull(pts).vertices]).contains_points(np.c_[jj.ravel(), ii.ravel()]).reshape(jj.shape)
        d = hull & (a[k, j0:j1, i0:i1] >= 100)
        dense += int(d.sum())
        labelled += int((d & (labels[k, j0:j1, i0:i1] > 0)).sum())
    # Measured 0.478 (0.514 at the half maximum, before the thin-cortex edge level took ~one
    # voxel layer of the vertebra's surface out, 2026-12-06; 0.258 before the pores enclosed by each bone, closed over, were filled;
    # 0.335 before the sponge that closing bridges was): the posterior elements' thin cortex
    # over marrow is still partly left out (see README); this guards against it getting worse.
    assert labelled / dense >= 0.47, (labelled, dense)
    # The core of the vertebral body: a 20 x 29 mm box at its centre in the slices between its
    # end plates (k 4-14, read off the images). Measured 0.815 (0.825 at the half maximum): the osteoporotic body's
    # interior (median 146 HU, under the 180 HU growth level) is a sponge whose pores open
    # through a thin cortex, which the half-maximum peel stripped to a shell (0.054); the holes
    # the body encloses once closed over by a 6 mm ball, and the thick sponge that closing
    # bridges, are filled where denser than soft tissue by 20 HU (classical._deep_inside_closed;
    # 0.35 with the holes only and a 40 HU gate). A guard, not a target.
    core = labels[4:15, 322:342, 238:268] > 0
    assert core.mean() >= 0.75, core.mean()
    # What must stay out. The contrast-filled aorta (150-175 HU) lies against the body: its
    # lumen (smoothed 120-260 HU, the region around (j, i) = (298, 264)) in the slices where it
    # is apart from the bone. Measured <= 0.007 in each of 14 slices.
    smooth = ndi.gaussian_filter(a.astype(np.float32), (0, 1.5, 1.5))
    apart = 0
    for k in range(a.shape[0]):
        lab_k, _n = ndi.label((smooth[k] > 120) & (smooth[k] < 260))
        lumen = lab_k == lab_k[298, 264]
        if lab_k[298, 264] and lumen.sum() < 800:
            apart += 1
            assert (labels[k][lumen] > 0).mean() <= 0.03, k
    assert apart >= 12, apart
    # The vertebral canal (cerebrospinal fluid < 60 HU, behind the body): measured 0.0 labelled.
    canal = (slice(None), slice(352, 362), slice(244, 256))
    fluid = a[canal] < 60
    assert (labels[canal][fluid] > 0).mean() <= 0.02


# --- the physics steps on synthetic bone (fast) ---------------------------------------------


def _vertebra_like(step: int) -> tuple[Volume, np.ndarray]:
    """A cylinder of cancellous bone (150 HU, r 12 mm) in a 1 mm cortex (1400 HU), in muscle
    (40 HU), made at 0.5 mm and block-averaged by ``step`` (step 6: 3 mm voxels). Returns the
    CT and the truth (voxels more than half bone)."""
    n = 96
    z, y, x = np.mgrid[0:48, 0:n, 0:n].astype(np.float32) * 0.5
    r = np.hypot(y - 24.0, x - 24.0)
    inside = (r <= 12.0) & (z >= 4.0) & (z <= 20.0)
    cortex = inside & ((r > 11.0) | (z < 5.0) | (z > 19.0))
    hu = np.where(inside, 150.0, 40.0)
    hu[cortex] = 1400.0
    rng = np.random.default_rng(0)
    shape = tuple(s // step for s in hu.shape)

    def blocks(a: np.ndarray) -> np.ndarray:
        a = a[: shape[0] * step, : shape[1] * step, : shape[2] * step]
        return a.reshape(shape[0], step, shape[1], step, shape[2], step).mean(axis=(1, 3, 5))

    ct = blocks(hu) + rng.normal(0.0, 10.0, shape)
    lps = np.diag([0.5 * step] * 3 + [1.0])
    return Volume(ct.astype(np.float32), lps), blocks(inside.astype(np.float32)) > 0.5


def test_levels_are_lowered_only_when_the_cortex_is_not_resolved():
    p = ClassicalParams()
    fine, _ = _vertebra_like(1)
    coarse, _ = _vertebra_like(6)
    lv_fine = bone_levels(fine.array_zyx, bone_high_hu=p.bone_high_hu, bone_low_hu=p.bone_low_hu)
    lv_coarse = bone_levels(coarse.array_zyx, bone_high_hu=p.bone_high_hu, bone_low_hu=p.bone_low_hu)
    assert lv_fine.resolved and (lv_fine.seed_hu, lv_fine.grow_hu) == (p.bone_high_hu, p.bone_low_hu), lv_fine
    assert not lv_coarse.resolved and lv_coarse.seed_hu < 400.0 and lv_coarse.grow_hu < 150.0, lv_coarse


def test_coarse_cortex_grows_into_the_whole_bone():
    p = ClassicalParams()
    ct, truth = _vertebra_like(6)
    a = ct.array_zyx
    lv = bone_levels(a, bone_high_hu=p.bone_high_hu, bone_low_hu=p.bone_low_hu)
    grown = grow_from_cortex(a, np.ones(a.shape, bool), ct.spacing_mm, seed_hu=lv.seed_hu, grow_hu=lv.grow_hu, grow_max_mm=p.grow_max_mm)
    grown = fill_cavities(grown)
    # Measured: recall 1.0, Dice 0.92 (edge voxels under 50 % bone but with 20 % of a bright
    # cortex read ~300 HU and are taken: partial volume of a shell, not of a solid).
    assert float(grown[truth].mean()) >= 0.97
    assert _dice(grown, truth) >= 0.88, _dice(grown, truth)


def test_pores_are_filled_but_a_canal_is_not():
    m = np.zeros((20, 20, 20), bool)
    m[2:18, 2:18, 2:18] = True
    m[8:12, 8:12, :] = False  # a canal along i, open at both ends
    m[4:6, 4:6, 4:6] = False  # a pore ...
    m[4:6, 3, 4:6] = False  # ... opening to the outside through a gap of the shell
    m[4:6, 2, 4] = False
    out = fill_enclosed_in_planes(m)
    assert out[4:6, 3:6, 5].all()  # beside the gap: enclosed in the slices of two orientations
    assert not out[4:6, 2:6, 4].any()  # in line with the gap: open in two, so left open
    assert not out[8:12, 8:12, :].any()  # enclosed in one orientation only


def test_dense_pore_open_in_two_orientations_is_filled_but_a_fluid_canal_is_not():
    m = np.zeros((20, 20, 20), bool)
    m[2:18, 2:18, 2:18] = True
    m[8:12, 8:12, :] = False  # a canal along i, open at both ends (fluid, 10 HU)
    m[4:7, 4:7, 4:7] = False  # a pore of cancellous bone (90 HU) ...
    m[5, 5, 2:4] = False  # ... open through the shell along i: its middle row and this
    # channel are enclosed in the slices across i only
    hu = np.full(m.shape, 400.0, np.float32)
    hu[8:12, 8:12, :] = 10.0
    hu[4:7, 4:7, 2:7] = 90.0
    default = fill_enclosed_in_planes(m)
    assert default[4, 4, 4] and not default[5, 5, 5]  # one orientation: left open by default
    out = fill_enclosed_in_planes(m, hu=hu, above_hu=40.0)
    assert out[4:7, 4:7, 4:7].all() and out[5, 5, 2:4].all()  # denser than soft tissue: filled
    assert not out[8:12, 8:12, :].any()  # fluid: a canal, open
    assert not fill_enclosed_in_planes(m, hu=hu, above_hu=100.0)[5, 5, 5]  # the HU decides


def test_surface_goes_to_the_local_half_maximum_and_thin_bone_is_kept():
    hu = np.full((12, 14, 30), 40.0, np.float32)
    hu[3:9, 3:11, 3:13] = 200.0  # a block of bone ...
    hu[2, 3:11, 3:13] = 90.0  # ... with a blurred layer below half maximum (120 HU) on top
    hu[9, 3:11, 3:13] = 150.0  # ... and one above it below
    hu[5:7, 6:8, 16:28] = 150.0  # a rod two voxels thick (a rib): no interior
    mask = np.zeros(hu.shape, bool)
    mask[2:10, 3:11, 3:13] = True
    mask[5:7, 6:8, 16:28] = True
    box = (slice(0, 12), slice(0, 14), slice(0, 30))
    out = peel_to_half_maximum(hu, mask, box, 40.0)
    assert not out[2, 4:10, 4:12].any()  # the dim layer is outside the half maximum
    assert out[9, 4:10, 4:12].all() and out[3:9, 3:11, 3:13].all()
    assert (out[5:7, 6:8, 16:28] == mask[5:7, 6:8, 16:28]).all()  # the rod is its own level
    # A bone cut by a face of the image is not peeled there.
    cut = peel_to_half_maximum(hu[2:], mask[2:], (slice(0, 10), slice(0, 14), slice(0, 30)), 40.0)
    assert cut[0, 4:10, 4:12].all()


def test_a_region_without_cortex_is_not_bone():
    hu = np.full((10, 10, 10), 110.0, np.float32)  # costal cartilage at 3 mm
    mask = np.ones(hu.shape, bool)
    hu[5, 5, 5] = 320.0  # one calcified voxel
    assert not has_cortex(hu, mask, 295.0, 27.0)
    hu[5, 5, 6] = 320.0
    assert has_cortex(hu, mask, 295.0, 27.0)



def test_sponge_bridged_by_the_closing_is_filled_but_a_joint_gap_is_not():
    """classical._deep_inside_closed on 1 mm voxels. A 40 mm cube of sponge (cancellous bone,
    150 HU, in soft tissue at 40 HU) whose mask holds only scattered trabecular patches (20 %)
    and a cortex with gaps: the sponge between the patches, which the 6 mm closing bridges, is
    bone.
    A ball in a cup, one region across a 3 mm joint gap of partial-volume HU (as before the
    split at a joint): nothing in the gap is added."""
    from orthonav.segmentation.classical import _deep_inside_closed

    rng = np.random.default_rng(3)
    n = 64
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float32)
    cube = (np.abs(z - 32) < 20) & (np.abs(y - 32) < 20) & (np.abs(x - 32) < 20)
    core = (np.abs(z - 32) < 18) & (np.abs(y - 32) < 18) & (np.abs(x - 32) < 18)
    shell = cube & ~core & (rng.random(cube.shape) < 0.8)  # a cortex with gaps
    field = ndi.gaussian_filter(rng.random(cube.shape).astype(np.float32), 2.0)
    patches = core & (field > np.quantile(field[core], 0.8))  # trabecular patches a few mm wide
    mask = shell | patches
    hu = np.where(cube, 150.0, 40.0).astype(np.float32) + rng.normal(0.0, 10.0, cube.shape).astype(np.float32)
    spacing = np.ones(3)
    added = _deep_inside_closed(mask, spacing, hu, soft_hu=40.0)
    deep = core & (ndi.distance_transform_edt(core) > 3)
    assert 0.15 < patches.sum() / core.sum() < 0.3  # the patches leave most of the sponge open
    # measured 0.88 (the mask alone 0.19); what stays open lies in the 2 mm blocks of patches
    # the sponge does not reach
    assert (added | mask)[deep].mean() > 0.85, (added | mask)[deep].mean()
    assert not added[~cube].any()
    assert not _deep_inside_closed(mask, spacing).any()  # no HU to check: no bridged space, and this sponge has no closed hole

    r = np.sqrt((z - 32) ** 2 + (y - 32) ** 2 + (x - 32) ** 2)
    ball = r <= 14.0
    cup = (r >= 17.0) & (r <= 22.0) & (z >= 26)  # wraps the ball from below, open above
    gap = (r > 14.0) & (r < 17.0) & (z >= 26)
    hu = np.where(ball | cup, 600.0, 40.0).astype(np.float32)
    hu[gap] = 250.0  # partial volume of the two surfaces across the gap
    added = _deep_inside_closed(ball | cup, spacing, hu, soft_hu=40.0)
    assert not added[gap].any(), int(added[gap].sum())
