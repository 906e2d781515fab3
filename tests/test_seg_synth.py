"""The mini knee of ``synthetic_ct`` is what the other segmentation tests assume it is."""

from __future__ import annotations

import numpy as np
import pytest
from orthonav.core.transforms import apply
from synthetic_ct import BEADS_LIMB, BONES


def test_mini_knee_is_what_the_other_tests_assume(mini_knee_phantom):
    k = mini_knee_phantom
    assert not np.allclose(k.ct.direction, np.eye(3))
    assert len(set(np.round(k.ct.spacing_mm, 3))) == 3  # anisotropic
    for name, (value, _f) in BONES.items():
        assert (k.labels.array_zyx == value).sum() > 200, name
    # The beads are there (brighter than the soft tissue around them), and not in the labels.
    bead_ijk = np.round(k.ct.to_ijk(apply(k.ct_from_limb, BEADS_LIMB) + 0.0)).astype(int)
    for i, j, kk in bead_ijk:
        assert k.ct.array_zyx[kk, j, i] > 1000
    # Truth labels agree with the analytic SDF at voxel centres.
    kji = np.argwhere(k.labels.array_zyx == 2)[::50]
    d = k.signed_distance_mm("tibia", k.ct.to_lps(kji[:, ::-1].astype(float)))
    assert np.all(d < 1e-6)
    with pytest.raises(KeyError):
        k.signed_distance_mm("hip", np.zeros((1, 3)))
