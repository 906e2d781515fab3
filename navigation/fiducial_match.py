"""Label touched points with plan fiducials by geometry: the largest rigid-consistent match.

Distances between points are rigid-invariant, so touched points can be matched to the plan's
fiducials before any registration. :func:`match_fiducials` finds the largest set of points
that matches fiducials one to one under ONE rigid transform within a tolerance: an
interpretation-tree search over the points (Grimson & Lozano-Perez 1987, "Localizing
overlapping parts by searching the interpretation tree", IEEE TPAMI 9(4)): each point is
either one still-unused fiducial whose CT distances to the fiducials already assigned agree
with the points' distances, or none. Every candidate set of three or more is then checked with
a least-squares rigid fit that is a proper rotation (Arun 1987 / Umeyama 1991,
:func:`orthonav.core.procrustes.paired_point`): distances alone cannot tell a layout from its
mirror image, the fit can. Points that fit nothing (a rest position, a mis-touch) are simply
left out. The tolerance follows from the expected localisation error
(:func:`consistency_tolerance_mm`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import RegistrationError
from orthonav.core.procrustes import paired_point


def consistency_tolerance_mm(fle_rms_mm: float, tracker_noise_mm: float = 0.1, *, k_sigma: float = 4.0) -> float:
    """Tolerance (mm) on the difference between a distance of two touches and the CT distance.

    Each touch misses its fiducial by the fiducial localisation error (FLE, 3D RMS
    ``fle_rms_mm``, i.e. ``fle_rms_mm / sqrt(3)`` per axis) plus the tracker's noise
    (``tracker_noise_mm`` per axis, averaged over the dwell but kept here as a floor), so
    with ``s`` the per-axis error, a distance between two touches differs from the CT distance
    by the projection of the difference of two independent errors onto their line: Gaussian
    with ``sqrt(2) s``. The tolerance is ``k_sigma`` of that (4 sigma: a correct pair fails
    with probability 6e-5, so with 15 pairs of 6 fiducials a false rejection is rarer than
    1 in 1000). The rigid fit's per-point residuals (3D, ~chi(3) of ``s``) stay well within
    the same figure. ``WorkflowConfig.consistency_mm = 3.0`` is this for an FLE of 0.9 mm
    RMS (a pointer in a divot or on a bead); anatomical landmarks (FLE 2-3 mm) need 6.5-10 mm.

    Parameters
    ----------
    fle_rms_mm
        Expected 3D RMS fiducial localisation error (mm).
    tracker_noise_mm
        Tracker position noise per axis (mm).
    k_sigma
        Width of the tolerance in standard deviations of a distance error.
    """
    s = math.sqrt(fle_rms_mm**2 / 3.0 + tracker_noise_mm**2)
    return k_sigma * math.sqrt(2.0) * s


def _rigid_consistent(points_mm: NDArray[np.float64], fiducials_ct_mm: NDArray[np.float64], tol_mm: float) -> tuple[bool, float]:
    """Whether a proper rigid fit maps the points onto their fiducials within ``tol_mm``; and its RMS (mm)."""
    if len(points_mm) == 2:  # the best fit leaves half the distance mismatch at each end
        mismatch = abs(float(np.linalg.norm(points_mm[1] - points_mm[0]) - np.linalg.norm(fiducials_ct_mm[1] - fiducials_ct_mm[0])))
        return mismatch <= tol_mm, 0.5 * mismatch
    if len(points_mm) < 3:
        return True, 0.0
    try:
        fit = paired_point(fiducials_ct_mm, points_mm)
    except RegistrationError:  # collinear: distances along the line determine everything
        return True, 0.0
    return bool(np.all(fit.residuals_mm <= tol_mm)), fit.fre_mm


def match_fiducials(points_mm: ArrayLike, fiducials_ct_mm: ArrayLike, tol_mm: float, *,
                    previous: list[int] | None = None) -> dict[int, int]:
    """The largest one-to-one match of points (any frame) to fiducials under one rigid transform.

    An interpretation-tree search (Grimson & Lozano-Perez 1987): each point, in order, is
    either assigned an unused fiducial whose CT distances to the fiducials already assigned
    agree with the points' distances within ``tol_mm``, or left unassigned; branches that
    cannot beat the best size found are cut. Each complete assignment of three or more
    points must also pass a proper-rotation least-squares fit with every residual within
    ``tol_mm`` (a mirror-image assignment has the right distances but fails the fit).

    A point within ``tol_mm`` of a later point is an earlier touch of the same spot (a
    re-touch): only the later one is considered. Among assignments of the largest size the
    winner is, in order: the smallest fit RMS (for two points, half the distance mismatch;
    in a symmetric layout a triangle of touches can fit two fiducial triples, the right one
    fits best); the one keeping more of ``previous`` (one or two points: labels are
    provisional, keep them stable); the one using the more recent points (compared newest
    first); the one giving earlier points earlier fiducials (plan order). The result is
    deterministic: the same points give the same match.

    Parameters
    ----------
    points_mm
        (k, 3) captured points in time order (mm).
    fiducials_ct_mm
        (n, 3) plan fiducials (CT mm).
    tol_mm
        Tolerance on distance differences and fit residuals (mm).
    previous
        (k,) fiducial index each point had before (-1: none), to keep labels stable.

    Returns
    -------
    dict
        Point index -> fiducial index, for the matched points only.
    """
    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    fid = np.asarray(fiducials_ct_mm, dtype=np.float64).reshape(-1, 3)
    k, n = len(pts), len(fid)
    prev = list(previous) if previous is not None else [-1] * k
    d_pts = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    d_fid = np.linalg.norm(fid[:, None] - fid[None], axis=2)
    # ok[i, j, a, b]: points i, j as fiducials a, b agree in distance (a != b).
    ok = np.abs(d_pts[:, :, None, None] - d_fid[None, None]) <= tol_mm
    ok &= ~np.eye(n, dtype=bool)[None, None]
    best: list[tuple[tuple, dict[int, int]]] = []
    best_size = 0
    assign: list[int] = [-1] * k

    def leaf() -> None:
        nonlocal best_size
        chosen = [i for i in range(k) if assign[i] >= 0]
        size = len(chosen)
        if size < best_size or size == 0:
            return
        good, rms_mm = _rigid_consistent(pts[chosen], fid[[assign[i] for i in chosen]], tol_mm)
        if not good:
            return
        key = (-rms_mm, sum(assign[i] == prev[i] for i in chosen), tuple(sorted(chosen, reverse=True)),
               tuple(-assign[i] for i in chosen))
        if size > best_size:
            best_size = size
            best.clear()
        best.append((key, {i: assign[i] for i in chosen}))

    def search(i: int, size: int, allowed: NDArray[np.bool_]) -> None:
        # allowed[j, a]: point j may still become fiducial a given the assignment so far.
        # Bound: every later point with an option left could add one (at most n in all).
        reach = size + int(allowed[i:].any(axis=1).sum())
        if min(reach, n) < best_size:
            return
        if i == k or size == n:
            leaf()
            return
        for a in np.flatnonzero(allowed[i]):
            assign[i] = int(a)
            nxt = allowed & ok[i, :, a, :]
            nxt[:, a] = False
            search(i + 1, size + 1, nxt)
        assign[i] = -1
        search(i + 1, size, allowed)

    # A point with a later point within tol_mm is superseded by it (a re-touch of the same spot).
    live = ~np.any(np.triu(d_pts <= tol_mm, k=1), axis=1)
    search(0, 0, np.repeat(live[:, None], n, axis=1))
    if not best:
        return {}
    return max(best, key=lambda kv: kv[0])[1]
