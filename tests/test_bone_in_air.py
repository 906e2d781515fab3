"""Bone lying in air (a dry bone or a bone phantom on the table): air is what surrounds it.

The soft-tissue level sets the bone's seed, growth and edge levels. On a bone in air the most
common HU between fat and bone (the soft-tissue window) is the bone's own marrow, not soft
tissue: the levels then sat inside the bone and its surface was cut into (bone-mask Dice
0.80-0.90 on five of six synthetic long bones in air, 2026-12-07). ``in_air`` recognises such
an image by counting the window's voxels outside the bones against the bones' dense voxels.
"""

from __future__ import annotations

import numpy as np
import pytest
from orthonav.core.volume import Volume, make_lps_from_ijk, read_volume
from orthonav.segmentation.bone_mask import in_air, soft_tissue_hu


def _rod(spacing: float, *, body: bool) -> Volume:
    """A femoral-shaft-like rod along k (radius 15 mm, a 2 mm cortex at 1000 HU, marrow at 60 HU,
    in the soft-tissue window), in air or inside a 60 mm soft-tissue body (40 HU)."""
    n = int(round(160.0 / spacing))
    k, j, i = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * spacing] * 3, indexing="ij")
    r = np.hypot(j, i)
    ct = np.full(r.shape, -1000.0, np.float32)
    if body:
        ct[r <= 60.0] = 40.0
    ct[(r <= 15.0) & (np.abs(k) < 70)] = 1000.0
    ct[(r <= 13.0) & (np.abs(k) < 68)] = 60.0
    return Volume(ct.astype(np.int16), make_lps_from_ijk(np.full(3, spacing), np.zeros(3)))


@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_a_marrow_filled_bone_in_air_is_in_air_and_the_same_bone_in_a_body_is_not(spacing):
    """The rod's marrow fills the soft-tissue window with 3 x the cortex's voxels: counted
    without the enclosure test the image would pass for a body (and its 'soft tissue' was the
    marrow, 60 HU). Enclosed across the shaft it is not counted; the air around is the level."""
    air = _rod(spacing, body=False)
    a = air.array_zyx
    assert 1.0 < np.count_nonzero((a > -100) & (a < 150)) / np.count_nonzero(a >= 200) < 4.0  # decided by the enclosure
    assert in_air(a, air.spacing_mm)
    assert soft_tissue_hu(a) == pytest.approx(60.0, abs=10.0)  # without spacing: the marrow, as before
    assert soft_tissue_hu(air.array_zyx, air.spacing_mm) == pytest.approx(-1000.0, abs=1.0)
    body = _rod(spacing, body=True)
    assert not in_air(body.array_zyx, body.spacing_mm)
    assert soft_tissue_hu(body.array_zyx, body.spacing_mm) == soft_tissue_hu(body.array_zyx) == pytest.approx(40.0, abs=15.0)  # the mode is smoothed over 25 HU


def test_real_and_phantom_bodies_keep_their_soft_tissue_level(shared_data, small_knee_phantom, small_hip_phantom):
    """Bodies are never taken for bone in air: the real thorax and abdomen CTs (the latter
    contrast-enhanced, its level 92.5 HU near the window's bound) and the knee and hip phantoms
    keep the level of the window's mode exactly."""
    from orthonav.segmentation.importer import read_dicom_ct

    thorax = read_volume(shared_data / "ct_thorax_small" / "example_ct_sm.nii.gz")
    abdomen = read_dicom_ct(shared_data / "ct_abdomen_dicom")
    for ct in (thorax, abdomen, small_knee_phantom.ct, small_hip_phantom.ct):
        a = ct.array_zyx
        assert not in_air(a, ct.spacing_mm)
        assert soft_tissue_hu(a, ct.spacing_mm) == soft_tissue_hu(a)
    assert soft_tissue_hu(thorax.array_zyx, thorax.spacing_mm) == 37.5
    assert soft_tissue_hu(abdomen.array_zyx, abdomen.spacing_mm) == 92.5


def test_the_long_bone_phantom_lies_in_air(small_long_bone_phantom):
    ct = small_long_bone_phantom.ct
    assert in_air(ct.array_zyx, ct.spacing_mm)
    assert soft_tissue_hu(ct.array_zyx, ct.spacing_mm) < -900.0


@pytest.mark.slow
def test_a_synthetic_long_bone_in_air_keeps_its_surface():
    """A long-bone draw of the synthetic generator (seed 777, the first: in air, its marrow at
    soft tissue + 20..500 HU): bone-mask Dice 0.965 with air as the surroundings, 0.895 when
    the window's mode (the marrow, 100 HU) was taken as soft tissue."""
    from orthonav.phantoms.synth_ct import synth_draws
    from orthonav.segmentation.classical import segment_classical

    (draw,) = synth_draws(1, seed=777, families=(("long_bone", 1.0),))
    truth = draw.labels.array_zyx > 0
    seg = segment_classical(draw.ct, anatomy="auto")
    mask = seg.labels.array_zyx > 0
    dice = 2.0 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())
    assert dice >= 0.94, dice
