"""The proximal femur's head, neck and shaft from a femur surface (LPS mm), following
docs/anatomy.md ("Proximal femur"): what a hip CT supports, and what it cannot.

* Femoral head centre and radius: Hough-voted sphere
  (:func:`orthonav.planning.landmarks.femoral_head_sphere`), then refitted to the articular head only: vertices within a band of the radius, with
  radial normals, and on the head side of the head-neck junction (the plane across the neck
  axis where the head sphere narrows to the neck's narrowest radius), iterated.
* Femoral neck axis (:func:`neck_axis_sections`): the least-squares line through the
  head-neck part of the femoral centreline, i.e. the area centroids of the cross-sections
  perpendicular to the axis every 1 mm from the head centre to the neck's narrowest
  cross-section (:func:`neck_isthmus`), iterated. It starts from the ring axis
  (:func:`neck_axis_ring`: head centre -> area centroid of the femoral surface in a shell
  2-5 mm beyond the head radius within 50 deg of the axis, where the neck leaves the head),
  which also places the head-neck junction plane for the articular head refit.
* Lesser trochanter: the most prominent femoral vertex (distance from its cross-section's
  centroid minus that section's mean radius) in the posteromedial quadrant (40-120 deg from
  the direction of the head towards posterior), 1-4 head radii below the head centre.
* Proximal shaft (anatomical) axis: best-fit line through the area centroids of shaft
  cross-sections from :data:`SHAFT_START_BELOW_LT_MM` below the lesser trochanter's tip
  (clear of its base) to :data:`END_MARGIN_MM` above the end of the mesh (at most
  :data:`SHAFT_MAX_MM`), iterated with perpendicular sections.
* Neck-shaft angle: the 3D angle between the neck axis (head -> neck base) and the shaft
  axis (pointing proximally), the angle libhip (diku-dk/libhip) measures between the
  least-squares lines through the neck and shaft parts of its femoral centreline. Both axes
  are exact (<= 0.01 deg) on a femur built with known axes and a neck symmetric about its
  axis; a neck whose superior side is filled by trochanteric bone (the hip phantom's: its
  shaft top blended into the neck) turns the neck axis proximally in the neck-shaft plane
  (docs/anatomy.md "Which axis reads low").

Plane sections are computed here in numpy (:func:`section_loop`, about 1 ms per section on a
70k-triangle femur) rather than with VTK's cutter (about 20 ms).

A mesh that ends too close below the lesser trochanter has no shaft for the definition: the
shaft axis, the neck-shaft angle and the femoral offset are then reported as not measurable
(with the shaft length needed and present), never extrapolated; a provisional long axis
through the sections that exist is returned for placing a stem, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from orthonav.core.errors import InputError
from orthonav.core.vectors import perpendicular, unit

from ..landmarks import SurfaceSamples, femoral_head_sphere, fit_line, fit_sphere
from ..schema import Axis

Vec = NDArray[np.float64]

#: Shaft sections start this far below the lesser trochanter's tip: clear of its base (the
#: lesser trochanter is a cone about 2-3 cm long along the shaft).
SHAFT_START_BELOW_LT_MM = 20.0
#: Sections closer than this to the end of the mesh are not used (the cut end).
END_MARGIN_MM = 5.0
#: The shortest shaft (below :data:`SHAFT_START_BELOW_LT_MM`) that defines a shaft axis: over
#: 30 mm, 0.3 mm of centroid scatter tilts the line by about 0.6 deg.
MIN_SHAFT_MM = 30.0
#: The proximal shaft axis uses at most this much shaft (the femoral bow further down).
SHAFT_MAX_MM = 120.0
#: The lesser trochanter is searched down to this many head radii below the head centre.
LT_SEARCH_RADII = 4.0
#: Head search region when no mask is given: vertices within this distance of the most
#: proximal point of the mesh (along ``proximal_lps``).
HEAD_REGION_MM = 70.0


@dataclass(frozen=True)
class ProximalFemur:
    """Head, neck and shaft of one proximal femur (LPS mm; directions LPS unit vectors).

    ``shaft`` (and with it ``neck_shaft_deg`` and ``femoral_offset_mm``) is None when the
    mesh holds too little shaft below the lesser trochanter; ``missing`` then says what is
    missing and why, and ``stem_axis`` is a provisional long axis (its ``definition`` says
    so). With a shaft, ``stem_axis`` is the shaft axis.
    """

    head_centre_lps_mm: Vec
    head_radius_mm: float
    head_rms_mm: float
    head_points: int
    neck: Axis
    neck_isthmus_area_mm2: float
    lesser_trochanter_lps_mm: Vec | None
    shaft_below_lt_mm: float
    shaft: Axis | None
    stem_axis: Axis
    neck_shaft_deg: float | None
    femoral_offset_mm: float | None
    missing: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class TriSurface:
    """A closed triangle surface for fast plane sections: vertices (n, 3) LPS mm, faces
    (m, 3) and unit outward face normals (m, 3)."""

    points: Vec
    faces: NDArray[np.int64]
    face_normals: Vec


def tri_surface(mesh: pv.PolyData) -> TriSurface:
    """The :class:`TriSurface` of ``mesh`` (triangulated; normals made outward by the sign
    of the enclosed volume)."""
    tri = mesh if mesh.is_all_triangles else mesh.triangulate()
    p = np.asarray(tri.points, dtype=np.float64)
    f = np.asarray(tri.faces).reshape(-1, 4)[:, 1:].astype(np.int64)
    fn = np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])
    if float(np.einsum("ij,ij->i", p[f[:, 0]], fn).sum()) < 0:
        fn = -fn
    ln = np.linalg.norm(fn, axis=1)
    return TriSurface(p, f, fn / np.where(ln > 0, ln, 1.0)[:, None])


def _slabber(surface: TriSurface, direction: Vec):
    """A function level -> the sub-surface of the faces that the plane ``x . direction =
    level`` can cut (a cheap pre-selection for many parallel sections)."""
    h = surface.points @ direction
    hf = h[surface.faces]
    lo, hi = hf.min(axis=1), hf.max(axis=1)

    def faces_at(level: float) -> TriSurface:
        k = (lo <= level) & (hi >= level)
        return TriSurface(surface.points, surface.faces[k], surface.face_normals[k])

    return faces_at


_EDGES = ((0, 1), (1, 2), (2, 0))


def section_loop(surface: TriSurface, origin: Vec, normal: Vec) -> tuple[Vec, float] | None:
    """(area centroid LPS mm, area mm^2) of the closed contour of ``surface`` cut by the
    plane through ``origin`` with unit ``normal`` whose centroid lies nearest ``origin`` (the
    contour around an axis through ``origin``); None when the plane misses the surface.

    Each crossed triangle gives one segment between the points where the plane crosses two
    of its edges, oriented along ``normal`` x face normal (so every outer contour runs
    counter-clockwise seen from +``normal``); segments sharing a crossed edge belong to one
    contour (connected components); the area and centroid of a contour are those of its
    polygon (triangle fan, shoelace).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = np.asarray(normal, dtype=np.float64)
    d = (surface.points - origin) @ n
    pos = d > 0.0
    fp = pos[surface.faces]
    cnt = fp.sum(axis=1)
    sel = np.flatnonzero((cnt == 1) | (cnt == 2))
    if len(sel) < 3:
        return None
    f, fps = surface.faces[sel], fp[sel]
    ends = np.empty((len(sel), 2), dtype=np.int64)  # edge keys of the two crossed edges
    pts = np.empty((len(sel), 2, 3))
    k = np.zeros(len(sel), dtype=np.int64)
    nv = len(surface.points)
    for i, j in _EDGES:
        cross = fps[:, i] != fps[:, j]
        rows = np.flatnonzero(cross)
        a, b = f[rows, i], f[rows, j]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        da, db = d[lo], d[hi]
        p = surface.points[lo] + (surface.points[hi] - surface.points[lo]) * (da / (da - db))[:, None]
        slot = k[rows]
        ends[rows, slot] = lo * nv + hi
        pts[rows, slot] = p
        k[rows] += 1
    # orient each segment along normal x face normal
    t = np.cross(n, surface.face_normals[sel])
    flip = np.einsum("ij,ij->i", pts[:, 1] - pts[:, 0], t) < 0
    pts[flip] = pts[flip][:, ::-1]
    keys, inv = np.unique(ends.ravel(), return_inverse=True)
    inv = inv.reshape(-1, 2)
    g = coo_matrix((np.ones(len(inv)), (inv[:, 0], inv[:, 1])), shape=(len(keys), len(keys)))
    _nc, lab = connected_components(g, directed=False)
    seg_lab = lab[inv[:, 0]]
    best: tuple[float, Vec, float] | None = None
    for c in np.unique(seg_lab):
        rows = seg_lab == c
        if rows.sum() < 3:
            continue
        a, b = pts[rows, 0], pts[rows, 1]
        m = a.mean(axis=0)
        cr = np.cross(a - m, b - m) @ n
        if abs(cr.sum()) < 1e-6:
            continue
        cen = ((a + b + m) / 3.0 * cr[:, None]).sum(axis=0) / cr.sum()
        dist = float(np.linalg.norm(cen - origin))
        if best is None or dist < best[0]:
            best = (dist, cen, 0.5 * abs(float(cr.sum())))
    return None if best is None else (best[1], best[2])


def neck_isthmus(surface: TriSurface, head_centre: Vec, head_radius_mm: float, neck_dir: Vec, *, step_mm: float = 1.0) -> tuple[float, float, float]:
    """(area mm^2, distance from the head centre mm, head-neck junction distance mm) of the
    neck's narrowest cross-section (the isthmus) perpendicular to ``neck_dir``, searched from
    half a head radius to 2.5 head radii. The junction is where the head sphere narrows to
    the isthmus radius rho = sqrt(area / pi): t = sqrt(r^2 - rho^2)."""
    c, r = np.asarray(head_centre, dtype=np.float64), float(head_radius_mm)
    d = unit(neck_dir, "neck axis")
    faces_at = _slabber(surface, d)
    best: tuple[float, float] | None = None
    for t in np.arange(0.5 * r, 2.5 * r, step_mm):
        hit = section_loop(faces_at(float((c + t * d) @ d)), c + t * d, d)
        if hit is not None and (best is None or hit[1] < best[0]):
            best = (hit[1], float(t))
    if best is None:
        raise InputError(None, "femoral neck: no cross-section beyond the femoral head")
    rho = np.sqrt(best[0] / np.pi)
    return best[0], best[1], float(np.sqrt(max(r * r - rho * rho, 0.0)))


def neck_axis_ring(s: SurfaceSamples, head_centre: Vec, head_radius_mm: float, initial: Vec, *, shell_mm: tuple[float, float] = (2.0, 5.0), cone_deg: float = 50.0) -> Vec:
    """Unit femoral neck axis from the head centre towards the neck base.

    The femoral surface in a spherical shell ``shell_mm`` beyond the head radius is a ring
    around the neck where it leaves the head; the axis is the direction from the head centre
    to the ring's area-weighted centroid, iterated with only the shell points within
    ``cone_deg`` of the current axis (which drops the trochanters and the shaft) until it
    moves less than 1e-10.
    """
    c = np.asarray(head_centre, dtype=np.float64)
    d = unit(initial, "initial neck direction")
    r = np.linalg.norm(s.points - c, axis=1)
    shell = (r > head_radius_mm + shell_mm[0]) & (r < head_radius_mm + shell_mm[1])
    p, w = s.points[shell], s.area[shell]
    dirs = (p - c) / r[shell][:, None]
    for _ in range(50):
        k = dirs @ d > np.cos(np.radians(cone_deg))
        if k.sum() < 20:
            raise InputError(None, "femoral neck not found beyond the femoral head")
        new = unit((p[k] * w[k, None]).sum(axis=0) / w[k].sum() - c, "neck axis")
        done = float(np.linalg.norm(new - d)) < 1e-10
        d = new
        if done:
            break
    return d


def neck_axis_sections(surface: TriSurface, head_centre: Vec, head_radius_mm: float, initial: Vec, *, step_mm: float = 1.0, tol_deg: float = 0.01, n_iter: int = 30) -> tuple[Vec, float, float, float]:
    """The femoral neck axis as the least-squares line through the head-neck part of the
    femoral centreline: the area centroids of the cross-sections perpendicular to the axis
    every ``step_mm`` from the head centre to the neck's narrowest cross-section (the
    isthmus, :func:`neck_isthmus`), iterated (sections perpendicular to the new line) until
    the direction moves less than ``tol_deg``; the isthmus is then searched again along
    the new axis and the fit repeated while it moves.

    Returns (unit axis from the head towards the neck base, isthmus area mm^2, isthmus
    distance from the head centre mm, head-neck junction distance mm). Beyond the isthmus
    the cross-sections widen into the trochanters and stop being the neck's alone; inside
    the head a section through the sphere is centred on the axis through its centre.
    """
    c, r = np.asarray(head_centre, dtype=np.float64), float(head_radius_mm)
    d = unit(initial, "initial neck direction")
    a_min, t_min, t_j = neck_isthmus(surface, c, r, d)
    cos_tol = np.cos(np.radians(tol_deg))
    for _ in range(3):
        for _ in range(n_iter):
            faces_at = _slabber(surface, d)
            cents = []
            for t in np.arange(0.0, t_min + 1e-9, step_mm):
                hit = section_loop(faces_at(float((c + t * d) @ d)), c + t * d, d)
                if hit is not None:
                    cents.append(hit[0])
            if len(cents) < 5:
                raise InputError(None, "femoral neck: too few cross-sections between the head centre and the neck's narrowest section")
            p = np.asarray(cents)
            new = np.linalg.svd(p - p.mean(axis=0), full_matrices=False)[2][0]
            new = new if new @ d > 0 else -new
            done = float(new @ d) > cos_tol
            d = new
            if done:
                break
        a_min, t_new, t_j = neck_isthmus(surface, c, r, d)
        if abs(t_new - t_min) < 0.5 * step_mm:
            break
        t_min = t_new
    return d, a_min, t_min, t_j


def articular_head_sphere(s: SurfaceSamples, idx: NDArray[np.int64], centre: Vec, radius_mm: float, neck_dir: Vec, junction_mm: float, *, n_iter: int = 5) -> tuple[Vec, float, float, int]:
    """Refit the head sphere to its articular surface only: vertices among ``idx`` within
    max(1 mm, 3 RMS) (first max(1.5 mm, 8 % r)) of the sphere, normal within 25 deg of
    radial, and on the head side of the head-neck junction plane (``junction_mm`` from the
    centre along ``neck_dir``). Returns (centre, radius, RMS, vertices used)."""
    c, r = np.asarray(centre, dtype=np.float64), float(radius_mm)
    tol = max(1.5, 0.08 * r)
    rms, n = 0.0, 0
    for _ in range(n_iter):
        q = s.points[idx] - c
        dist = np.linalg.norm(q, axis=1)
        radial = np.einsum("ij,ij->i", q / dist[:, None], s.normals[idx])
        keep = (np.abs(dist - r) < tol) & (radial > np.cos(np.radians(25.0))) & (q @ neck_dir < junction_mm)
        if keep.sum() < 50:
            raise InputError(None, "femoral head: too few articular surface points on the fitted sphere")
        c, r, rms = fit_sphere(s.points[idx[keep]])
        n = int(keep.sum())
        tol = max(1.0, 3.0 * rms)
    return c, r, rms, n


def lesser_trochanter(surface: TriSurface, s: SurfaceSamples, head_centre: Vec, head_radius_mm: float, shaft_o: Vec, shaft_u: Vec, *, posterior_lps: Vec, step_mm: float = 2.0) -> tuple[Vec, float] | None:
    """The lesser trochanter's tip (LPS mm) and its level (mm below the head centre along
    the shaft axis ``shaft_o``, ``shaft_u``), or None when it is not in the mesh.

    The tip is the most prominent vertex in the posteromedial quadrant (40-120 deg from the
    direction towards the head, turning posteriorly) between one and
    :data:`LT_SEARCH_RADII` head radii below the head centre: prominence = distance from the centroid of the cross-section at its level
    (sections perpendicular to the axis every ``step_mm``) minus that section's mean radius
    sqrt(area / pi), so neither a tilted starting axis nor the shaft's taper moves it. None
    when the tip lies within :data:`END_MARGIN_MM` + 5 mm of the end of the mesh.
    """
    u = unit(shaft_u, "shaft axis")
    med = unit(perpendicular(head_centre - shaft_o, u), "head offset from the shaft axis")
    post = unit(perpendicular(perpendicular(posterior_lps, u), med), "posterior direction")
    q = s.points - shaft_o
    h = float((head_centre - shaft_o) @ u) - q @ u  # mm below the head centre
    end = float(h.max())
    foot = shaft_o + float((head_centre - shaft_o) @ u) * u
    best: tuple[float, int] | None = None
    faces_at = _slabber(surface, u)
    for hh in np.arange(head_radius_mm, min(end - END_MARGIN_MM, LT_SEARCH_RADII * head_radius_mm), step_mm):
        o = foot - hh * u
        hit = section_loop(faces_at(float(o @ u)), o, u)
        if hit is None:
            continue
        cen, area = hit
        slab = np.flatnonzero(np.abs(h - hh) <= 0.5 * step_mm)
        if len(slab) == 0:
            continue
        rad = s.points[slab] - cen
        rad -= np.outer(rad @ u, u)
        ang = np.degrees(np.arctan2(rad @ post, rad @ med))
        prom = np.linalg.norm(rad, axis=1) - np.sqrt(area / np.pi)
        prom[(ang <= 40.0) | (ang >= 120.0)] = -np.inf
        k = int(np.argmax(prom))
        if np.isfinite(prom[k]) and (best is None or prom[k] > best[0]):
            best = (float(prom[k]), int(slab[k]))
    if best is None:
        return None
    i = best[1]
    if h[i] > end - END_MARGIN_MM - 5.0:
        return None
    return s.points[i], float(h[i])


def _shaft_line(mesh: TriSurface, head_centre: Vec, o: Vec, u: Vec, lo_mm: float, hi_mm: float, n: int) -> tuple[Vec, Vec]:
    """Best-fit line through section centroids from ``lo_mm`` to ``hi_mm`` below the head
    centre, sections perpendicular to ``u`` (proximal)."""
    foot = o + float((head_centre - o) @ u) * u
    cents = []
    faces_at = _slabber(mesh, u)
    for hh in np.linspace(lo_mm, hi_mm, n):
        p = foot - hh * u
        hit = section_loop(faces_at(float(p @ u)), p, u)
        if hit is not None:
            cents.append(hit[0])
    if len(cents) < 3:
        raise InputError(None, "too few shaft cross-sections to fit a shaft axis")
    return fit_line(np.asarray(cents), u)


def analyse_proximal_femur(
    mesh: pv.PolyData,
    samples: SurfaceSamples,
    *,
    head_mask: NDArray[np.bool_] | None = None,
    proximal_lps: Vec = np.array([0.0, 0.0, 1.0]),
    posterior_lps: Vec = np.array([0.0, 1.0, 0.0]),
    name: str = "femur",
) -> ProximalFemur:
    """Head centre and radius, neck axis, lesser trochanter, proximal shaft axis, neck-shaft
    angle and femoral offset of a (proximal) femur surface, as docs/anatomy.md defines them.

    Parameters
    ----------
    mesh, samples
        The femur surface (LPS mm) and its :func:`~orthonav.planning.landmarks.surface_samples`.
    head_mask
        Vertices to search the head among (e.g. those near the hip bone); default: within
        :data:`HEAD_REGION_MM` of the most proximal point along ``proximal_lps``.
    proximal_lps, posterior_lps
        The patient's superior and posterior directions in the CT (LPS: +z, +y); only the
        head search region and the quadrant of the lesser trochanter use them.
    """
    up = unit(np.asarray(proximal_lps, dtype=np.float64), "proximal direction")
    surf = tri_surface(mesh)
    if head_mask is None:
        h_up = samples.points @ up
        head_mask = h_up > float(h_up.max()) - HEAD_REGION_MM
    idx = np.flatnonzero(head_mask)
    c0, r0, _ = femoral_head_sphere(samples, head_mask, r_range_mm=(15.0, 35.0))
    # initial long axis: the patient's superior direction through the centroid of the
    # surface more than two head radii below the head centre (shaft and trochanters)
    low = (c0 - samples.points) @ up > 2.0 * r0
    if low.sum() < 50:
        raise InputError(None, f"{name}: the mesh ends less than two head radii below the femoral head: no neck or shaft to measure")
    mid, long = samples.points[low].mean(axis=0), up
    missing: list[str] = []
    # shaft: iterate (axis -> lesser trochanter -> sections below it -> axis)
    o, u = mid, long
    lt, lt_h = None, float("nan")
    shaft: Axis | None = None
    below_lt = 0.0
    q_end = float(np.max((c0 - samples.points) @ u))
    for _ in range(3):
        q_end = float(np.max((c0 - samples.points) @ u))  # mesh end, mm below the head centre
        hit = lesser_trochanter(surf, samples, c0, r0, o, u, posterior_lps=posterior_lps)
        if hit is None:
            break
        lt, lt_h = hit
        lo = lt_h + SHAFT_START_BELOW_LT_MM
        hi = min(q_end - END_MARGIN_MM, lo + SHAFT_MAX_MM)
        below_lt = max(0.0, hi - lo)
        if below_lt < MIN_SHAFT_MM:
            break
        o, u = _shaft_line(surf, c0, o, u, lo, hi, max(7, int(below_lt // 5.0) + 1))
        shaft = Axis(origin_lps_mm=tuple(o), direction_lps=tuple(u),
                     definition=f"proximal femoral shaft axis: line through section centroids from {SHAFT_START_BELOW_LT_MM:.0f} mm below the lesser trochanter's tip ({lo:.0f} mm below the head centre) to {hi:.0f} mm, pointing proximally")
    if lt is None:
        missing.append(f"{name}: lesser trochanter not found in the mesh (it ends {q_end:.0f} mm below the head centre): shaft axis, neck-shaft angle and femoral offset not measurable")
        shaft = None
    elif below_lt < MIN_SHAFT_MM:
        missing.append(f"{name}: shaft axis, neck-shaft angle and femoral offset not measurable: they need {MIN_SHAFT_MM:.0f} mm of shaft from {SHAFT_START_BELOW_LT_MM:.0f} mm below the lesser trochanter, the mesh has {below_lt:.0f} mm (it ends {q_end:.0f} mm below the head centre)")
        shaft = None
    if shaft is not None:
        stem_axis = shaft
    else:
        # provisional long axis for placing a stem: the sections that exist below the neck
        lo = (lt_h + 5.0) if lt is not None else 2.0 * r0
        hi = q_end - END_MARGIN_MM
        try:
            po, pu = _shaft_line(surf, c0, mid, long, lo, hi, 7) if hi - lo >= 10.0 else (mid, long)
            how = f"line through section centroids {lo:.0f}-{hi:.0f} mm below the head centre" if hi - lo >= 10.0 else "the CT's superior direction"
        except InputError:
            po, pu, how = mid, long, "the CT's superior direction"
        stem_axis = Axis(origin_lps_mm=tuple(po), direction_lps=tuple(pu), definition=f"PROVISIONAL femoral long axis ({how}); not the shaft axis: too little shaft in the mesh")
    # neck: started from the long axis 20 mm distal of its point nearest the head; then the
    # articular head refit (head side of the junction) and the neck again from the new centre
    so, su = np.asarray(stem_axis.origin_lps_mm), np.asarray(stem_axis.direction_lps)
    foot = so + float((c0 - so) @ su) * su
    d = neck_axis_ring(samples, c0, r0, unit(foot - 20.0 * su - c0, "initial neck direction"))
    a_min, _t_min, t_j = neck_isthmus(surf, c0, r0, d)
    c, r, rms, n_head = articular_head_sphere(samples, idx, c0, r0, d, t_j)
    d = neck_axis_ring(samples, c, r, d)
    d, a_min, _t_min, _t_j = neck_axis_sections(surf, c, r, d)
    if shaft is not None:
        nsa: float | None = float(np.degrees(np.arccos(np.clip(d @ u, -1.0, 1.0))))
        offset: float | None = float(np.linalg.norm(perpendicular(c - o, u)))
    else:
        nsa, offset = None, None
    neck = Axis(origin_lps_mm=tuple(c), direction_lps=tuple(d),
                definition="femoral neck axis: least-squares line through the centroids of the neck cross-sections perpendicular to it every 1 mm from the head centre to the neck's narrowest section (the head-neck part of the centreline), iterated; through the head centre, head -> neck base")
    return ProximalFemur(
        head_centre_lps_mm=c, head_radius_mm=float(r), head_rms_mm=float(rms), head_points=n_head,
        neck=neck, neck_isthmus_area_mm2=a_min, lesser_trochanter_lps_mm=lt, shaft_below_lt_mm=below_lt,
        shaft=shaft, stem_axis=stem_axis, neck_shaft_deg=nsa, femoral_offset_mm=offset, missing=tuple(missing),
    )


__all__ = [
    "END_MARGIN_MM",
    "MIN_SHAFT_MM",
    "SHAFT_MAX_MM",
    "SHAFT_START_BELOW_LT_MM",
    "ProximalFemur",
    "TriSurface",
    "analyse_proximal_femur",
    "articular_head_sphere",
    "lesser_trochanter",
    "neck_axis_ring",
    "neck_axis_sections",
    "neck_isthmus",
    "section_loop",
    "tri_surface",
]
