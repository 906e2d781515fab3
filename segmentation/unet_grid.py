"""The network's grid: every CT is resampled to an isotropic grid in canonical orientation
(axes along the LPS axes nearest the CT's own, so a network trained on one orientation sees any
scan the same way). Shared by :mod:`orthonav.segmentation.unet` and
:mod:`orthonav.segmentation.unet_labels`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from orthonav.core.volume import Volume


def canonical_direction(direction: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
    """The CT's axes permuted and flipped to lie nearest the LPS axes.

    Returns
    -------
    direction_canon
        (3, 3) direction of the canonical grid (columns = LPS directions of its i, j, k).
    perm, sign
        Canonical axis a is CT axis ``perm[a]`` times ``sign[a]``.
    """
    d = np.asarray(direction, dtype=np.float64)
    perm = np.full(3, -1, dtype=np.int64)
    free = list(range(3))
    # greedy assignment on |cosine|: most confident LPS axis first
    for a in np.argsort(-np.abs(d).max(axis=1)):
        c = max(free, key=lambda col: abs(d[a, col]))
        perm[a] = c
        free.remove(c)
    sign = np.sign(d[np.arange(3), perm])
    sign[sign == 0] = 1.0
    return d[:, perm] * sign, perm, sign


@dataclass(frozen=True)
class Grid:
    """The network's isotropic grid: LPS origin (mm, voxel 0's centre), direction (3, 3; columns
    = LPS directions of i, j, k), spacing (mm) and size (i, j, k)."""

    origin: NDArray[np.float64]
    direction: NDArray[np.float64]
    spacing: float
    size_ijk: tuple[int, int, int]


def canonical_grid(ct: Volume, spacing_mm: float) -> Grid:
    """Isotropic grid in canonical orientation covering the CT's voxel-centre box."""
    d_can, _, _ = canonical_direction(ct.direction)
    ni, nj, nk = ct.shape_ijk
    corners_ijk = np.array([[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5) for k in (-0.5, nk - 0.5)])
    corners = ct.to_lps(corners_ijk)
    local = corners @ d_can  # coordinates along the canonical axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = np.maximum(np.ceil((hi - lo) / spacing_mm).astype(int), 1)
    origin = d_can @ (lo + 0.5 * spacing_mm)
    return Grid(origin, d_can, float(spacing_mm), (int(size[0]), int(size[1]), int(size[2])))


__all__ = ["Grid", "canonical_direction", "canonical_grid"]
