"""Surface registration: digitised bone points to the bone mesh (trimmed point-to-plane ICP).

The pointer collects points on the exposed bone (reference frame, mm); they are matched to the
bone mesh (CT LPS mm) starting from a paired-point registration (a few fiducials or
landmarks). Each iteration:

1. closest mesh vertex of every point (KD-tree) and its outward unit normal;
2. point-to-plane residuals ``r_i = n_i . (R p_i + t - q_i)``;
3. trimming (Chetverikov et al. 2002, "The Trimmed Iterative Closest Point algorithm",
   ICPR): only the ``keep_fraction`` of pairs with the smallest |r| take part, so outliers
   (soft tissue, a slipped pointer) are ignored;
4. the linearised point-to-plane update (Chen & Medioni 1992; Low 2004, "Linear least-squares
   optimization for point-to-plane ICP surface registration", UNC TR04-004): solve the 6x6
   normal equations for a small rotation (a, b, g) and translation, re-orthonormalised.

Nearest vertices (not exact closest points on triangles) are used with the plane through the
vertex, which is exact to second order on a densely meshed bone (vertex spacing ~1 mm).

Confidence: the RMS of the inlier point-to-plane distances, the inlier fraction, and
``constraint`` = sqrt(lambda_min / lambda_max) of the scaled 6x6 information matrix: near 0 the
points leave a motion unconstrained (e.g. points only on a cylindrical shaft let it slide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyvista as pv
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from orthonav.core.errors import InputError, RegistrationError
from orthonav.core.transforms import apply, make_rigid, validate_rigid


class _Level:
    """Vertices, unit outward normals and their KD-tree: one resolution of a :class:`SurfaceModel`."""

    def __init__(self, points_mm: NDArray[np.float64], normals: NDArray[np.float64]) -> None:
        self.points_mm = points_mm
        self.normals = normals
        self.tree = cKDTree(points_mm)


class SurfaceModel:
    """A bone mesh prepared for ICP: vertices, outward vertex normals and KD-trees (build once per mesh).

    Two resolutions: all vertices (``points_mm``, ``normals``, ``tree``) for the final fit, and a
    coarse level (one vertex per ``coarse_spacing_mm`` voxel) for the first iterations of
    :func:`icp_point_to_plane`. Far from the surface, a KD-tree query on the dense level visits
    many nodes (1k points 5 mm off a 200k-vertex mesh: ~13 ms per query versus ~1.7 ms on the
    surface); on the coarse level it stays ~1 ms, and the plane through a vertex 2 mm apart
    deviates from a bone surface of radius >= 20 mm by < 0.1 mm, well inside the capture range
    of the fine stage.

    Parameters
    ----------
    mesh
        Triangulated bone surface in CT LPS mm.
    name
        Bone name (for messages).
    coarse_spacing_mm
        Voxel size of the coarse level (mm); 0 = no coarse level (the dense one is used).
    """

    def __init__(self, mesh: pv.PolyData, name: str = "bone", *, coarse_spacing_mm: float = 2.0) -> None:
        if mesh.n_points < 10:
            raise InputError(None, f"bone mesh '{name}' has {mesh.n_points} points; too few for surface registration")
        tri = mesh.triangulate() if not mesh.is_all_triangles else mesh
        tri = pv.PolyData(np.asarray(tri.points, dtype=np.float64), tri.faces)  # drop any stale "Normals" arrays
        tri = tri.compute_normals(point_normals=True, cell_normals=False, auto_orient_normals=True, consistent_normals=True,
                                  split_vertices=False)
        self.name = name
        pts = np.asarray(tri.points, dtype=np.float64)
        nrm = np.asarray(tri.point_data["Normals"], dtype=np.float64)
        nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        self.fine = _Level(pts, nrm)
        self.coarse = self.fine
        self.coarse_lazy_mm = _LAZY_MM  #: lazy re-query distance of the coarse stage (mm): a quarter of its spacing
        if coarse_spacing_mm > 0:
            keys = np.floor((pts - pts.min(axis=0)) / coarse_spacing_mm).astype(np.int64)
            _u, first = np.unique(keys, axis=0, return_index=True)
            if 100 <= len(first) < 0.5 * len(pts):
                first.sort()
                self.coarse = _Level(pts[first], nrm[first])
                self.coarse_lazy_mm = 0.25 * coarse_spacing_mm

    @property
    def points_mm(self) -> NDArray[np.float64]:
        """(n, 3) all vertices (CT LPS mm)."""
        return self.fine.points_mm

    @property
    def normals(self) -> NDArray[np.float64]:
        """(n, 3) unit outward vertex normals."""
        return self.fine.normals

    @property
    def tree(self) -> cKDTree:
        """KD-tree of all vertices."""
        return self.fine.tree


@dataclass(frozen=True)
class SurfaceRegistration:
    """Result of :func:`icp_point_to_plane`.

    Attributes
    ----------
    ct_from_reference
        (4, 4) refined registration.
    rms_mm
        RMS point-to-plane distance of the inliers (mm).
    inlier_fraction
        Fraction of points kept by the final trimming and within ``inlier_mm`` of the surface.
    constraint
        sqrt(lambda_min / lambda_max) of the scaled information matrix (0 = degenerate).
    iterations
        Iterations run.
    converged
        Whether the update fell below the tolerances before ``max_iterations``.
    distances_mm
        (n,) final unsigned point-to-surface distances (nearest vertex, point-to-plane) (mm).
    """

    ct_from_reference: NDArray[np.float64]
    rms_mm: float
    inlier_fraction: float
    constraint: float
    iterations: int
    converged: bool
    distances_mm: NDArray[np.float64]


def icp_point_to_plane(
    points_reference_mm: ArrayLike,
    model: SurfaceModel,
    ct_from_reference_init: ArrayLike,
    *,
    keep_fraction: float = 0.75,
    max_iterations: int = 60,
    tol_rotation_deg: float = 5e-3,
    tol_translation_mm: float = 5e-3,
    coarse_points: int = 300,
    inlier_mm: float = 1.5,
    max_distance_mm: float = 50.0,
) -> SurfaceRegistration:
    """Refine ``ct_from_reference`` so digitised points lie on the bone surface (see module doc).

    Parameters
    ----------
    points_reference_mm
        (n, 3) digitised surface points in the reference frame (mm), n >= 6.
    model
        The bone surface (CT LPS mm).
    ct_from_reference_init
        (4, 4) starting registration (e.g. from fiducials); must be within the capture range
        (about 10 deg / 10 mm on a bone with curved, non-symmetric exposed surface).
    keep_fraction
        Fraction of pairs kept each iteration (trimmed ICP); ``1 - keep_fraction`` should
        exceed the expected outlier fraction.
    inlier_mm
        Distance under which a kept point counts as an inlier in ``inlier_fraction``.
    max_distance_mm
        Pairs farther than this are never used.
    coarse_points
        Coarse-to-fine: iterate first on a fixed random subset of this many points (10x the
        tolerances), then on all points; 0 disables.

    Raises
    ------
    RegistrationError
        Too few points, or too few pairs within ``max_distance_mm``.
    """
    p = np.asarray(points_reference_mm, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 6 or not np.all(np.isfinite(p)):
        raise RegistrationError(f"surface registration needs an (n >= 6, 3) finite point array, got shape {p.shape}")
    if not 0.2 <= keep_fraction <= 1.0:
        raise RegistrationError(f"keep_fraction must be in [0.2, 1], got {keep_fraction}")
    try:
        t = validate_rigid(ct_from_reference_init, name="ct_from_reference_init").copy()
    except InputError as e:
        raise RegistrationError(e.problem) from e
    n_keep = max(6, round(keep_fraction * len(p)))
    scale = float(np.sqrt(np.mean(np.sum((p - p.mean(axis=0)) ** 2, axis=1)))) or 1.0
    it_total = 0
    converged = False
    if coarse_points > 0:
        # Coarse: a fixed random subset (all points if few) against the coarse vertex level; only a
        # start for the fine stage, so lazily refreshed correspondences suffice.
        sub = p[np.random.default_rng(0).choice(len(p), coarse_points, replace=False)] if coarse_points < len(p) // 2 else p
        t, it, _c = _icp_stage(sub, NearestVertices(model.coarse), model.name, t, max(6, round(keep_fraction * len(sub))), scale, max_iterations,
                               10 * tol_rotation_deg, 10 * tol_translation_mm, max_distance_mm, lazy_mm=model.coarse_lazy_mm,
                               exact_finish=False)
        it_total += it
    fine = NearestVertices(model.fine)
    t, it, converged = _icp_stage(p, fine, model.name, t, n_keep, scale, max_iterations, tol_rotation_deg, tol_translation_mm,
                                  max_distance_mm, lazy_mm=_LAZY_MM)
    it_total += it
    it = it_total
    x = apply(t, p)
    q, nrm = fine.nearest(x)
    r = np.abs(np.einsum("ij,ij->i", x - q, nrm))
    kept = np.sort(r)[:n_keep]
    inl = kept[kept <= inlier_mm]
    rms = float(np.sqrt(np.mean(inl**2))) if inl.size else math.nan
    order = np.argsort(r)[:n_keep]
    xs, ns = x[order], nrm[order]
    a = np.c_[np.cross(xs - xs.mean(axis=0), ns) / scale, ns]
    ev = np.linalg.eigvalsh(a.T @ a)
    constraint = float(np.sqrt(max(ev[0], 0.0) / ev[-1])) if ev[-1] > 0 else 0.0
    return SurfaceRegistration(t, rms, inl.size / len(p), constraint, it, converged, r)


class NearestVertices:
    """Exact nearest mesh vertex (and its normal) of the points of one point set, with few KD-tree queries.

    Keeps each point's K nearest vertices (distances d_1 <= .. <= d_K) from its last query.
    After the point has moved by delta, its nearest vertex is within d_1 + 2 delta of the old
    position, hence among the K candidates while 2 delta <= d_K - d_1; only points that moved
    farther are queried again. ICP moves the points a little per iteration, so after the first
    query most iterations need none. The candidates' coordinates and normals are gathered once
    per query (random access into a large vertex array is the slow part).
    """

    def __init__(self, level: _Level) -> None:
        self.level = level
        self.x: NDArray[np.float64] | None = None

    def _query(self, x: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        """Margins (n,); candidates (n, K, 3), relative to ``x`` (n, K, 3) with squared norms (n, K); normals (n, K, 3)."""
        # One thread: on this 2-core machine workers=-1 measured no faster (13.3 vs 12.6 ms per ICP
        # at load ~2, worse under load), and the navigation loop needs the other core.
        d, i = self.level.tree.query(x, k=_CANDIDATES, workers=1)
        cand = self.level.points_mm[i]
        rel = cand - x[:, None, :]
        return d[:, -1] - d[:, 0], cand, rel, np.einsum("ijk,ijk->ij", rel, rel), self.level.normals[i]

    def nearest(self, x: NDArray[np.float64], *, lazy_mm: float = 0.0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(n, 3) nearest vertices and (n, 3) their unit normals for the (n, 3) points ``x``.

        Exact with ``lazy_mm = 0``. With ``lazy_mm > 0`` a point that moved at most ``lazy_mm``
        since its last query is not queried again: it gets the nearest of its candidates, a vertex
        within about ``lazy_mm`` of the nearest one, whose plane is the same surface to second
        order (ICP iterations before the exact final ones).
        """
        if self.x is None or len(self.x) != len(x):
            self.x = x.copy()
            self.margin, self.cand_p, self.rel, self.rel_sq, self.cand_n = self._query(x)
            dx = np.zeros_like(x)
        else:
            dx = x - self.x
            moved_sq = np.einsum("ij,ij->i", dx, dx)
            stale = 4.0 * moved_sq > self.margin * self.margin  # moved more than half the margin
            if lazy_mm > 0:
                stale &= moved_sq > lazy_mm * lazy_mm
            moved = np.flatnonzero(stale)
            if moved.size:
                self.x[moved] = x[moved]
                dx[moved] = 0.0
                self.margin[moved], self.cand_p[moved], self.rel[moved], self.rel_sq[moved], self.cand_n[moved] = self._query(x[moved])
        # |c - x|^2 = |c - x0|^2 - 2 (c - x0) . (x - x0) + |x - x0|^2 with x0 the position at the last
        # query: the last term is the same for every candidate of a point, and all terms are small
        # numbers (no cancellation against the large coordinates).
        j = np.argmin(self.rel_sq - 2.0 * np.einsum("ijk,ik->ij", self.rel, dx), axis=1)
        flat = np.arange(len(x)) * _CANDIDATES + j
        return self.cand_p.reshape(-1, 3)[flat], self.cand_n.reshape(-1, 3)[flat]


#: Candidate nearest vertices kept per point between KD-tree queries (see :class:`NearestVertices`).
_CANDIDATES = 4
#: Fine-stage ICP iterations re-query a point's nearest vertices only once it has moved this far
#: (mm) since its last query, until they converge; exact iterations finish the stage.
_LAZY_MM = 0.2


def _icp_stage(p: NDArray[np.float64], cache: NearestVertices, name: str, t: NDArray[np.float64], n_keep: int, scale: float,
               max_iterations: int, tol_rotation_deg: float, tol_translation_mm: float,
               max_distance_mm: float, lazy_mm: float = 0.0, exact_finish: bool = True) -> tuple[NDArray[np.float64], int, bool]:
    """Trimmed point-to-plane iterations on ``p`` from ``t``: (ct_from_reference, iterations, converged).

    Converged when the update is below the tolerances, or when the trimmed RMS has changed by
    less than 1e-4 mm over 3 iterations (with trimming, the kept set can switch back and forth
    by a point, so the step need not shrink to zero). With ``lazy_mm > 0`` the iterations use
    lazily refreshed correspondences (:meth:`NearestVertices.nearest`) until they converge,
    then (``exact_finish``) go on with exact nearest vertices until they converge again, so the
    result is the exact nearest-vertex optimum either way.
    """
    it = 0
    rms_hist: list[float] = []
    lazy = lazy_mm
    for it in range(1, max_iterations + 1):
        x = p @ t[:3, :3].T + t[:3, 3]
        q, nrm = cache.nearest(x, lazy_mm=lazy)
        r = np.einsum("ij,ij->i", x - q, nrm)
        ar = np.abs(r)
        n_ok = int(np.count_nonzero(ar <= max_distance_mm))
        if n_ok < 6:
            raise RegistrationError(f"only {n_ok} digitised points lie within {max_distance_mm} mm of the {name} surface")
        k = min(n_keep, n_ok)
        # The k smallest |r| (all within max_distance_mm as k <= n_ok); their order does not matter.
        order = np.argpartition(ar, k - 1)[:k] if k < len(ar) else np.arange(len(ar))
        xs, ns, rs = x[order], nrm[order], r[order]
        rms_hist.append(float(np.sqrt(np.mean(rs**2))))
        if len(rms_hist) >= 4 and max(rms_hist[-4:]) - min(rms_hist[-4:]) < 1e-4:
            if not lazy or not exact_finish:
                return t, it, True
            lazy, rms_hist = 0.0, []  # converged on lazy correspondences: confirm on exact ones
            continue
        # Linearised point-to-plane (Low 2004): rotation about the points' centroid, scaled for conditioning.
        c = x.mean(axis=0)
        a = np.empty((k, 6))
        a[:, :3] = _cross_rows(xs - c, ns) / scale
        a[:, 3:] = ns
        sol = min_norm_solve(a.T @ a, -(a.T @ rs))
        w = sol[:3] / scale
        angle = float(np.linalg.norm(w))
        rot = np.eye(3) if angle < 1e-15 else _rodrigues(w / angle, angle)
        t = make_rigid(rot, c - rot @ c + sol[3:]) @ t
        if math.degrees(angle) < tol_rotation_deg and float(np.linalg.norm(sol[3:])) < tol_translation_mm:
            if not lazy or not exact_finish:
                return t, it, True
            lazy = 0.0
    return t, it, False


def _cross_rows(u: NDArray[np.float64], v: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise u x v of two (n, 3) arrays (np.cross's argument handling costs more than this)."""
    out = np.empty_like(u)
    out[:, 0] = u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1]
    out[:, 1] = u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2]
    out[:, 2] = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    return out


def min_norm_solve(h: NDArray[np.float64], g: NDArray[np.float64], rcond: float = 1e-9) -> NDArray[np.float64]:
    """Minimum-norm solution of the symmetric PSD system h x = g (eigenvalues below rcond * the largest
    are treated as 0): a motion the points do not constrain (a degenerate direction, reported by
    ``constraint``) is left unchanged instead of blowing up. Same as lstsq(h, g, rcond), cheaper."""
    ev, vec = np.linalg.eigh(h)
    keep = ev > rcond * ev[-1]
    vk = vec[:, keep]
    return vk @ ((vk.T @ g) / ev[keep])


def _rodrigues(axis: NDArray[np.float64], angle: float) -> NDArray[np.float64]:
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def refine_registration(registration: "Registration", points_reference_mm: ArrayLike, model: SurfaceModel, **icp_options: object) -> "Registration":
    """The combined workflow: a few fiducials first, then surface refinement.

    Runs :func:`icp_point_to_plane` from ``registration.ct_from_reference`` and returns a new
    :class:`~orthonav.navigation.registration.Registration` whose record has method
    ``'paired_point+surface_icp'``, the surface figures (``rms_mm``, ``inlier_fraction``,
    ``constraint``, ``iterations``, ``n_points``, ``converged``) and the fiducial residuals
    re-evaluated under the refined transform (``fre_mm`` = their RMS).
    """
    from .registration import Registration

    res = icp_point_to_plane(points_reference_mm, model, registration.ct_from_reference, **icp_options)  # type: ignore[arg-type]
    rec = registration.record
    names = list(rec.points_ct_mm)
    p_ct = np.array([rec.points_ct_mm[n] for n in names])
    p_ref = np.array([rec.points_reference_mm[n] for n in names])
    resid = np.linalg.norm(apply(res.ct_from_reference, p_ref) - p_ct, axis=1)
    new = rec.model_copy(update={
        "method": "paired_point+surface_icp",
        "ct_from_reference": res.ct_from_reference.tolist(),
        "residuals_mm": {n: float(v) for n, v in zip(names, resid)},
        "fre_mm": float(np.sqrt(np.mean(resid**2))),
        "surface": {
            "rms_mm": res.rms_mm,
            "inlier_fraction": res.inlier_fraction,
            "constraint": res.constraint,
            "iterations": float(res.iterations),
            "n_points": float(len(res.distances_mm)),
            "converged": float(res.converged),
        },
    })
    return Registration(ct_from_reference=res.ct_from_reference, record=new)
