"""Probes on analytic SDF surfaces, shared by the phantom anatomies (knee, hip, long bone).

Every point is in millimetres in the frame the SDF is defined in (a phantom's limb / pelvis
frame). The probes find surface points (Newton projection along the SDF gradient), extreme
points of a surface, minimum gaps between two bodies, and solve a construction knob for a
wanted gap (secant method), so that truth values are measured on the analytic surface rather
than assumed from the construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError

from . import sdf as S
from .render import surface_mesh

X = np.array([1.0, 0.0, 0.0])
Y = np.array([0.0, 1.0, 0.0])


def frame(rot: NDArray[np.float64], origin: NDArray[np.float64]) -> Callable[[ArrayLike], NDArray[np.float64]]:
    """A function mapping (3,) points of a local frame (mm) into the parent frame (mm).

    Parameters
    ----------
    rot
        (3, 3) rotation, columns = the local axes in the parent frame.
    origin
        (3,) local origin in the parent frame (mm).
    """

    def to_limb(p_local: ArrayLike) -> NDArray[np.float64]:
        return rot @ np.asarray(p_local, dtype=np.float64) + origin

    return to_limb


def distance_to_surface(f: S.SDF, points: NDArray[np.float64]) -> NDArray[np.float64]:
    """Unsigned distance (mm) of (n, 3) points to the zero set of ``f`` (Newton foot points)."""
    foot = S.project_to_surface(f, points, iterations=6)
    return np.linalg.norm(points - foot, axis=1)


def min_gap(points_a: NDArray[np.float64], f_b: S.SDF, prefilter_mm: float = 15.0) -> float:
    """Minimum distance (mm) from (n, 3) surface samples of body A to the surface of body B.

    Negative when the bodies overlap; ``inf`` when no sample is within ``prefilter_mm`` of B.
    Only the 200 candidates closest by ``f / |grad f|`` are refined by foot-point projection.
    """
    fb = f_b(points_a)
    near = points_a[fb < prefilter_mm]
    if len(near) == 0:
        return float("inf")
    # refine around the closest candidates only; negative = the bodies overlap
    d0 = S.normalized(f_b, near)
    cand = near[np.argsort(d0)[:200]]
    return float((distance_to_surface(f_b, cand) * np.sign(f_b(cand))).min())


def ellipsoid_samples(centre: NDArray[np.float64], semi: NDArray[np.float64], rot: NDArray[np.float64], n: int = 60) -> NDArray[np.float64]:
    """(2 n * n, 3) points exactly on an ellipsoid surface (latitude-longitude grid, mm).

    ``semi`` are the semi-axes (mm) along the columns of the (3, 3) rotation ``rot``.
    """
    th, ph = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n))
    unit = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=-1).reshape(-1, 3)
    return (unit * semi) @ rot.T + centre


def surface_samples(f: S.SDF, lo: NDArray[np.float64], hi: NDArray[np.float64], step: float) -> NDArray[np.float64]:
    """(n, 3) vertices of the zero set of ``f`` inside the box ``[lo, hi]`` (mm).

    Flying edges on a ``step`` (mm) grid, then Newton projection of every vertex.
    """
    mesh = surface_mesh(f, np.stack([lo, hi]), step, np.eye(4))
    p = np.asarray(mesh.points, dtype=np.float64)
    inside = np.all((p >= lo) & (p <= hi), axis=1)
    return p[inside]


def secant_fit(gap_of: Callable[[float], float], target: float, x0: float, x1: float, iterations: int = 8, tol: float = 0.005) -> tuple[float, float]:
    """Solve ``gap_of(x) = target`` by the secant method from ``x0``, ``x1``.

    Returns
    -------
    (x, gap)
        The solution and ``gap_of(x)`` there (within ``tol`` of ``target`` unless the
        ``iterations`` ran out).
    """
    g0, g1 = gap_of(x0) - target, gap_of(x1) - target
    for _ in range(iterations):
        if abs(g1) < tol or g1 == g0:
            break
        x0, x1, g0 = x1, x1 - g1 * (x1 - x0) / (g1 - g0), g1
        g1 = gap_of(x1) - target
    return x1, g1 + target


def extreme_point(f: S.SDF, verts: NDArray[np.float64], direction: NDArray[np.float64], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Surface point (3,) maximising ``direction . p`` (mm).

    Starts from the best of the masked (n, 3) mesh vertices ``verts`` and refines on the
    analytic surface by a dense tangent-disk search (down to 0.05 mm) and Newton projection.
    Raises InputError when the mask selects no vertex.
    """
    d = direction / np.linalg.norm(direction)
    cand = verts[mask]
    if len(cand) == 0:
        raise InputError(None, "no surface vertices in the landmark search region")
    p0 = cand[np.argmax(cand @ d)]
    for radius, n in ((2.0, 21), (0.25, 15)):
        a = np.cross(d, X if abs(d[0]) < 0.9 else Y)
        a /= np.linalg.norm(a)
        b = np.cross(d, a)
        g = np.linspace(-radius, radius, n)
        uu, vv = np.meshgrid(g, g)
        pts = p0 + uu.ravel()[:, None] * a + vv.ravel()[:, None] * b
        pts = S.project_to_surface(f, pts, iterations=4)
        p0 = pts[np.argmax(pts @ d)]
    return p0


def surface_points(sdfs: Mapping[str, S.SDF], starts: Sequence[tuple[str, NDArray[np.float64]]]) -> list[tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """Project (bone, start point) pairs onto their bone surfaces, batched per bone.

    Parameters
    ----------
    sdfs
        Bone name -> SDF.
    starts
        (bone name, (3,) start point in mm) pairs.

    Returns
    -------
    list of (point (3,), unit outward normal (3,)), in the order of ``starts``.
    """
    out: list = [None] * len(starts)
    for bone in sorted({b for b, _p in starts}):
        idx = [i for i, (b, _p) in enumerate(starts) if b == bone]
        f = sdfs[bone]
        p = S.project_to_surface(f, np.array([starts[i][1] for i in idx], dtype=np.float64), iterations=8)
        n = S.gradient(f, p)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        for j, i in enumerate(idx):
            out[i] = (p[j], n[j])
    return out


def surface_point(f: S.SDF, start: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Project one (3,) start point onto the surface of ``f``: (point, unit outward normal)."""
    p = S.project_to_surface(f, np.asarray(start, dtype=np.float64)[None], iterations=8)[0]
    n = S.gradient(f, p[None])[0]
    return p, n / np.linalg.norm(n)


__all__ = [
    "distance_to_surface",
    "ellipsoid_samples",
    "extreme_point",
    "frame",
    "min_gap",
    "secant_fit",
    "surface_point",
    "surface_points",
    "surface_samples",
]
