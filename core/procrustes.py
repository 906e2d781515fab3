"""Paired-point rigid registration (least-squares, proper rotation guaranteed).

Implements Arun, Huang & Blostein (1987), "Least-squares fitting of two 3-D point sets",
IEEE TPAMI 9(5), with the reflection fix of Umeyama (1991), IEEE TPAMI 13(4), eq. 39-43:
when the SVD solution is a reflection, the sign of the singular vector belonging to the
smallest singular value is flipped so the result is always a rotation (det = +1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import RegistrationError
from .transforms import apply


@dataclass(frozen=True)
class PairedPointResult:
    """Result of :func:`paired_point`.

    Attributes
    ----------
    fixed_from_moving
        (4, 4) rigid transform mapping moving points onto fixed points (mm).
    fre_mm
        Fiducial registration error: RMS distance after registration (mm).
    residuals_mm
        Per-point distance after registration, shape (n,), mm.
    """

    fixed_from_moving: NDArray[np.float64]
    fre_mm: float
    residuals_mm: NDArray[np.float64]


def _validate_pairs(fixed: NDArray[np.float64], moving: NDArray[np.float64]) -> None:
    if fixed.ndim != 2 or fixed.shape[1] != 3 or moving.shape != fixed.shape:
        raise RegistrationError(
            f"paired-point registration needs two (n, 3) arrays of equal shape, got {fixed.shape} and {moving.shape}"
        )
    if fixed.shape[0] < 3:
        raise RegistrationError(f"paired-point registration needs at least 3 point pairs, got {fixed.shape[0]}")
    if not (np.all(np.isfinite(fixed)) and np.all(np.isfinite(moving))):
        raise RegistrationError("paired-point registration got non-finite coordinates")
    spread = np.linalg.svd(moving - moving.mean(axis=0), compute_uv=False)
    if spread[1] < 1e-6 * max(spread[0], 1e-12):
        raise RegistrationError("the moving points are collinear: the rotation about their line is undetermined")


def paired_point(fixed: ArrayLike, moving: ArrayLike, weights: ArrayLike | None = None) -> PairedPointResult:
    """Rigid ``fixed_from_moving`` minimising sum w_i |fixed_i - T(moving_i)|^2.

    Parameters
    ----------
    fixed, moving
        (n, 3) corresponding points in mm, n >= 3, not collinear.
    weights
        Optional (n,) non-negative weights.

    Returns
    -------
    PairedPointResult
        The transform (always a proper rotation), the FRE (RMS, mm) and per-point residuals.
    """
    f = np.asarray(fixed, dtype=np.float64)
    m = np.asarray(moving, dtype=np.float64)
    _validate_pairs(f, m)
    w = np.ones(len(f)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    f_c = w @ f
    m_c = w @ m
    h = (m - m_c).T @ ((f - f_c) * w[:, None])  # cross-covariance, Arun eq. 11
    u, _s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    d = 1.0 if d == 0 else d
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T  # Umeyama's reflection fix
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = f_c - r @ m_c
    residuals = np.linalg.norm(apply(out, m) - f, axis=1)
    fre = float(np.sqrt(np.mean(residuals**2)))
    return PairedPointResult(fixed_from_moving=out, fre_mm=fre, residuals_mm=residuals)
