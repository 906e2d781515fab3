"""Signed distance functions (SDF, mm, negative inside) for building synthetic bones.

Every primitive takes ``p`` of shape (n, 3) (mm, in the frame the shape is defined in) and
returns (n,) values. Exact distances where a closed form exists (sphere, capsule, round
cone); the ellipsoid and elliptic-cylinder forms are the usual first-order bounds (Lipschitz
<= 1, exact zero set), which is what voxelisation and narrow-band evaluation need.

The smooth boolean operators are the polynomial smooth minimum of Inigo Quilez
("Smooth minimum", iquilezles.org/articles/smin, quadratic version); the round cone is his
``sdRoundCone`` (iquilezles.org/articles/distfunctions). Exact surface distances for tests are
taken as ``f / |grad f|`` near the zero set (see :func:`normalized`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

SDF = Callable[[NDArray[np.float64]], NDArray[np.float64]]


def with_bound(f: SDF, centre: ArrayLike, radius: float, scale: float = 1.0, slack: float = 0.0) -> SDF:
    """Attach a bounding sphere to ``f`` (in place) and return ``f``.

    The promise: ``f(p) >= scale * (|p - centre| - radius) - slack`` wherever
    ``|p - centre| > radius`` (``centre`` in mm in ``f``'s frame, ``radius`` and ``slack`` in
    mm). :func:`union` and :func:`subtract` use it to skip far parts exactly. A composite
    whose value is never below one part's (e.g. ``smax(a, b) >= a``) may reuse that part's
    bound: ``with_bound(g, *a.bsphere)``.
    """
    f.bsphere = (np.asarray(centre, dtype=np.float64), float(radius), float(scale), float(slack))  # type: ignore[attr-defined]
    return f


def lower_bound(f: SDF, p: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """A lower bound of ``f`` at (n, 3) points (-inf inside the bounding sphere), or None."""
    b = getattr(f, "bsphere", None)
    if b is None:
        return None
    c, r, sc, slack = b
    q = p - c
    d = np.sqrt(np.einsum("ij,ij->i", q, q)) - r
    d[d <= 0] = -np.inf
    return sc * d - slack


def _as_points(p: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(p, dtype=np.float64)
    return a.reshape(-1, 3)


def sphere(centre: ArrayLike, radius: float) -> SDF:
    """Exact SDF of a sphere."""
    c = np.asarray(centre, dtype=np.float64)

    def f(p: NDArray[np.float64]) -> NDArray[np.float64]:
        d = p - c
        return np.sqrt(np.einsum("ij,ij->i", d, d)) - radius

    return with_bound(f, c, radius)


def ellipsoid(centre: ArrayLike, semi_axes: ArrayLike, rotation: ArrayLike | None = None) -> SDF:
    """Ellipsoid bound ``(|q / r| - 1) * min(r)`` (exact zero set, Lipschitz <= 1).

    ``rotation`` (3, 3) has the ellipsoid's local axes as columns (frame of ``p``).
    """
    c = np.asarray(centre, dtype=np.float64)
    r = np.asarray(semi_axes, dtype=np.float64)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    rmin = float(r.min())

    rinv = (rot / r[None, :])  # p -> q / r in one product

    def f(p: NDArray[np.float64]) -> NDArray[np.float64]:
        q = (p - c) @ rinv
        return (np.sqrt(np.einsum("ij,ij->i", q, q)) - 1.0) * rmin

    # |q / r| >= |q| / rmax, so f >= (|p - c| - rmax) * rmin / rmax
    return with_bound(f, c, float(r.max()), rmin / float(r.max()))


def capsule(a: ArrayLike, b: ArrayLike, radius: float) -> SDF:
    """Exact SDF of a capsule (segment a-b swept by a ball)."""
    return round_cone(a, b, radius, radius)


def round_cone(a: ArrayLike, b: ArrayLike, ra: float, rb: float) -> SDF:
    """Exact SDF of a tapered capsule: balls of radius ``ra`` at ``a`` and ``rb`` at ``b`` and
    the cone tangent to both (Quilez, ``sdRoundCone`` with two end points)."""
    pa = np.asarray(a, dtype=np.float64)
    pb = np.asarray(b, dtype=np.float64)
    ba = pb - pa
    l2 = float(ba @ ba)
    rr = ra - rb
    a2 = l2 - rr * rr
    il2 = 1.0 / l2

    sgn_rr = float(np.sign(rr))

    def f(p: NDArray[np.float64]) -> NDArray[np.float64]:
        pa_ = p - pa
        y = pa_ @ ba
        z = y - l2
        x2 = np.einsum("ij,ij->i", pa_, pa_) * (l2 * l2) - y * y * l2  # |pa * l2 - y * ba|^2
        np.maximum(x2, 0.0, out=x2)
        y2 = y * y * l2
        z2 = z * z * l2
        k = sgn_rr * rr * rr * x2
        out = (np.sqrt(x2 * a2 * il2) + y * rr) * il2 - ra
        m1 = np.sign(z) * a2 * z2 > k
        m2 = (np.sign(y) * a2 * y2 < k) & ~m1
        if m1.any():
            out[m1] = np.sqrt(x2[m1] + z2[m1]) * il2 - rb
        if m2.any():
            out[m2] = np.sqrt(x2[m2] + y2[m2]) * il2 - ra
        return out

    return with_bound(f, 0.5 * (pa + pb), 0.5 * np.sqrt(l2) + max(ra, rb))


def elliptic_slab(centre: ArrayLike, semi_axes_xy: ArrayLike, half_height: float, rotation: ArrayLike | None = None) -> SDF:
    """Elliptic cylinder along local z, cut at ``+-half_height`` (bound, exact zero set)."""
    c = np.asarray(centre, dtype=np.float64)
    r = np.asarray(semi_axes_xy, dtype=np.float64)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    rmin = float(r.min())

    def f(p: NDArray[np.float64]) -> NDArray[np.float64]:
        q = (p - c) @ rot
        d_xy = (np.linalg.norm(q[:, :2] / r, axis=1) - 1.0) * rmin
        d_z = np.abs(q[:, 2]) - half_height
        outside = np.sqrt(np.maximum(d_xy, 0.0) ** 2 + np.maximum(d_z, 0.0) ** 2)
        return outside + np.minimum(np.maximum(d_xy, d_z), 0.0)

    rmax = float(r.max())
    return with_bound(f, c, float(np.hypot(rmax, half_height)), rmin / rmax)


def smin(a: NDArray[np.float64], b: NDArray[np.float64], k: float) -> NDArray[np.float64]:
    """Quadratic polynomial smooth minimum (union) with blend radius ``k`` mm."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def smax(a: NDArray[np.float64], b: NDArray[np.float64], k: float) -> NDArray[np.float64]:
    """Smooth maximum (intersection) with blend radius ``k`` mm."""
    return -smin(-a, -b, k)


def union(parts: list[SDF], k: float = 0.0) -> SDF:
    """Smooth union of ``parts`` (left fold of :func:`smin`, blend radius ``k``).

    A part is evaluated only where its bounding-sphere lower bound is below the running
    value + ``k``; elsewhere its smooth-min contribution is exactly zero, so skipping it
    changes nothing. Put a large, cheap part first: it is evaluated everywhere.
    """

    def f(p: NDArray[np.float64]) -> NDArray[np.float64]:
        out = parts[0](p)
        for g in parts[1:]:
            lb = lower_bound(g, p)
            if lb is None:
                out = smin(out, g(p), k)
                continue
            m = lb < out + k
            if m.all():
                out = smin(out, g(p), k)
            elif m.any():
                out[m] = smin(out[m], g(p[m]), k)
        return out

    bounds = [getattr(g, "bsphere", None) for g in parts]
    if all(b is not None for b in bounds):
        cs = np.array([b[0] for b in bounds])
        c = cs.mean(axis=0)
        r = max(float(np.linalg.norm(b[0] - c)) + b[1] for b in bounds)
        sc = min(b[2] for b in bounds)
        slack = max(b[3] for b in bounds) + 0.25 * k
        with_bound(f, c, r, sc, slack)
    return f


def subtract(base: SDF, cutter: SDF, k: float = 0.0) -> SDF:
    """``base`` minus ``cutter`` with a smooth edge of radius ``k`` (cutter skipped where far)."""

    def f(p: NDArray[np.float64]) -> NDArray[np.float64]:
        out = base(p)
        lb = lower_bound(cutter, p)
        # smax(a, -c, k) == a exactly when -c <= a - k, i.e. c >= k - a
        m = np.ones(len(p), dtype=bool) if lb is None else lb < k - out
        if m.all():
            return smax(out, -cutter(p), k)
        if m.any():
            out[m] = smax(out[m], -cutter(p[m]), k)
        return out

    b = getattr(base, "bsphere", None)
    if b is not None:
        with_bound(f, *b)
    return f


def gradient(f: SDF, p: ArrayLike, h: float = 0.02) -> NDArray[np.float64]:
    """(n, 3) central-difference gradient of ``f`` at (n, 3) points ``p`` (step ``h`` mm)."""
    q = _as_points(p)
    g = np.empty_like(q)
    for ax in range(3):
        e = np.zeros(3)
        e[ax] = h
        g[:, ax] = (f(q + e) - f(q - e)) / (2.0 * h)
    return g


def normalized(f: SDF, p: ArrayLike) -> NDArray[np.float64]:
    """First-order signed distance ``f / |grad f|`` (mm): accurate to second order near the
    zero set, which is where tests measure how far a mesh vertex lies from the true surface."""
    q = _as_points(p)
    g = np.linalg.norm(gradient(f, q), axis=1)
    return f(q) / np.maximum(g, 1e-9)


def project_to_surface(f: SDF, p: ArrayLike, iterations: int = 4) -> NDArray[np.float64]:
    """Newton steps ``p <- p - f grad f / |grad f|^2`` moving (n, 3) points onto the zero set."""
    q = _as_points(p).copy()
    for _ in range(iterations):
        g = gradient(f, q)
        g2 = np.maximum(np.einsum("ij,ij->i", g, g), 1e-12)
        q -= (f(q) / g2)[:, None] * g
    return q


def banded_grid_values(
    f: SDF,
    points_of: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    shape_zyx: tuple[int, int, int],
    spacing_ijk_mm: ArrayLike,
    band_mm: float,
    coarse_mm: float = 4.0,
) -> NDArray[np.float32]:
    """Evaluate ``f`` on a regular grid exactly inside a narrow band, approximately elsewhere.

    Parameters
    ----------
    f
        The SDF (Lipschitz <= 1 assumed, true for every primitive here).
    points_of
        Maps (n, 3) continuous indices (i, j, k) of the grid to (n, 3) points in f's frame.
    shape_zyx
        Grid shape (nk, nj, ni).
    spacing_ijk_mm
        Grid spacing along i, j, k (mm).
    band_mm
        Values with ``|f| < band_mm`` are exact; outside the band only the sign and a
        magnitude >= band_mm are guaranteed (block copy of a coarse grid).
    coarse_mm
        Target spacing of the coarse grid.

    Returns
    -------
    (nk, nj, ni) float32 array.
    """
    sp = np.asarray(spacing_ijk_mm, dtype=np.float64).reshape(3)
    fac = np.maximum(1, np.floor(coarse_mm / sp)).astype(int)  # per axis i, j, k
    n_ijk = np.array(shape_zyx[::-1])
    m = np.ceil((n_ijk - 1) / fac).astype(int) + 1  # coarse samples per axis, covering the grid
    axes = [np.arange(m[a]) * fac[a] for a in range(3)]
    kk, jj, ii = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    coarse_vals = f(points_of(ijk)).reshape(kk.shape).astype(np.float32)
    # block upsampling: fine index i takes coarse sample floor(i / fac); error <= |fac * sp|
    up = np.repeat(np.repeat(np.repeat(coarse_vals, fac[2], axis=0), fac[1], axis=1), fac[0], axis=2)
    out = np.ascontiguousarray(up[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]])
    del up
    thr = band_mm + float(np.linalg.norm(fac * sp))
    kn, jn, in_ = np.nonzero(np.abs(out) < thr)
    chunk = 1_000_000
    for s0 in range(0, len(kn), chunk):
        idx = np.stack([in_[s0 : s0 + chunk], jn[s0 : s0 + chunk], kn[s0 : s0 + chunk]], axis=1)
        out[idx[:, 2], idx[:, 1], idx[:, 0]] = f(points_of(idx.astype(np.float64)))
    return out
