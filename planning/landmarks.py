"""Automatic knee landmarks from bone surface meshes (LPS mm), following docs/anatomy.md.

Nothing assumes the CT axes or the leg side: the long axes come from principal component
analysis of each bone, proximal/distal from which end faces the other bone of the knee, the
medio-lateral direction from the femoral head offset and then from the epicondyles
themselves, and anterior as the side away from the posterior condyles. The CT's LPS axes are
only a last resort to orient a lone bone.

Methods (named in each :class:`Landmark`):

* femoral head centre: least-squares sphere fit (geometric, Levenberg-Marquardt) to the head
  surface, found by normal-based Hough voting for the centre (Ballard 1981, Pattern
  Recognition 13(2):111-122, generalised to spheres);
* extreme points ("most distal", "most medial", ...): the surface cap within 0.5 mm of the
  extreme along the direction, its area-weighted centroid moved onto the extreme level (less
  sensitive to mesh resolution than the single extreme vertex);
* anatomical axes: best-fit line through the centroids of shaft cross-sections (docs/anatomy.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from orthonav.core.errors import InputError
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

from .schema import Axis, Landmark

Vec = NDArray[np.float64]

CAP_DEPTH_MM = 0.5
MALLEOLUS_REGION_MM = 40.0


@dataclass(frozen=True)
class SurfaceSamples:
    """Vertices of a mesh with their outward unit normals and area weights (LPS mm)."""

    points: NDArray[np.float64]
    normals: NDArray[np.float64]
    area: NDArray[np.float64]


def surface_samples(mesh: pv.PolyData, *, name: str = "mesh") -> SurfaceSamples:
    """Per-vertex positions, outward normals and associated area (one third of adjacent faces)."""
    if mesh is None or mesh.n_points < 50 or mesh.n_cells < 50:
        raise InputError(None, f"{name} mesh is empty or too small for landmark detection")
    tri = mesh.triangulate() if not mesh.is_all_triangles else mesh
    pts = np.asarray(tri.points, dtype=np.float64)
    if not np.all(np.isfinite(pts)):
        raise InputError(None, f"{name} mesh has non-finite vertex coordinates")
    faces = tri.faces.reshape(-1, 4)[:, 1:]
    a, b, c = pts[faces[:, 0]], pts[faces[:, 1]], pts[faces[:, 2]]
    fn = np.cross(b - a, c - a)  # |fn| = 2 * area, direction from the winding
    area = np.zeros(len(pts))
    vn = np.zeros_like(pts)
    fa = 0.5 * np.linalg.norm(fn, axis=1)
    for k in range(3):
        np.add.at(area, faces[:, k], fa / 3.0)
        np.add.at(vn, faces[:, k], fn)
    ln = np.linalg.norm(vn, axis=1)
    vn = vn / np.where(ln > 0, ln, 1.0)[:, None]
    # Make the normals outward: the signed volume of a closed outward-wound mesh is positive.
    signed_vol = float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
    if signed_vol < 0:
        vn = -vn
    return SurfaceSamples(pts, vn, area)


def cap_point(s: SurfaceSamples, direction: Vec, mask: NDArray[np.bool_] | None = None, *, depth_mm: float = CAP_DEPTH_MM) -> Vec:
    """The extreme surface point along unit ``direction`` (among ``mask``), sub-vertex.

    Area-weighted centroid of the cap within ``depth_mm`` of the extreme, moved along
    ``direction`` onto the extreme level.
    """
    idx = np.arange(len(s.points)) if mask is None else np.flatnonzero(mask)
    if len(idx) == 0:
        raise InputError(None, "no surface points in the region searched for an extreme point")
    h = s.points[idx] @ direction
    top = float(h.max())
    sel = idx[h >= top - depth_mm]
    w = s.area[sel] + 1e-12
    c = (s.points[sel] * w[:, None]).sum(axis=0) / w.sum()
    return c + (top - float(c @ direction)) * direction


def principal_axis(points: Vec, weights: Vec | None = None) -> tuple[Vec, Vec]:
    """(centroid, unit first principal direction) of a point cloud."""
    w = np.ones(len(points)) if weights is None else weights
    c = (points * w[:, None]).sum(axis=0) / w.sum()
    d = points - c
    cov = (d * w[:, None]).T @ d / w.sum()
    _evals, evecs = np.linalg.eigh(cov)
    return c, evecs[:, -1]


def _unit(v: Vec) -> Vec:
    return v / np.linalg.norm(v)


def _perp(v: Vec, axis: Vec) -> Vec:
    return v - np.dot(v, axis) * axis


# --- sphere fitting ------------------------------------------------------------------------


def fit_sphere(points: Vec) -> tuple[Vec, float, float]:
    """Geometric least-squares sphere (centre, radius, RMS residual), algebraic start.

    Algebraic fit: |p|^2 = 2 c.p + (r^2 - |c|^2) (linear, Pratt 1987 style), then
    Levenberg-Marquardt on the geometric residual |p - c| - r.
    """
    if len(points) < 10:
        raise InputError(None, f"sphere fit needs at least 10 points, got {len(points)}")
    A = np.c_[2 * points, np.ones(len(points))]
    b = (points**2).sum(axis=1)
    sol, *_ = np.linalg.lstsq(A, b, rcond=None)
    c0 = sol[:3]
    r0 = float(np.sqrt(max(sol[3] + c0 @ c0, 1e-6)))

    def res(x: Vec) -> Vec:
        return np.linalg.norm(points - x[:3], axis=1) - x[3]

    out = least_squares(res, np.r_[c0, r0], method="lm")
    rms = float(np.sqrt(np.mean(out.fun**2)))
    return out.x[:3], float(out.x[3]), rms


def hough_sphere_vote(s: SurfaceSamples, idx: NDArray[np.int64], r_range_mm: tuple[float, float], *, concave: bool,
                      seed_lps: Vec | None = None, seed_radius_mm: float = 15.0) -> tuple[float, Vec | None, float | None]:
    """Hough vote for a sphere among the vertices ``idx`` of ``s``: (support, centre LPS mm, radius mm).

    Each vertex p with outward normal n votes for the centres p -/+ r n (convex / ``concave``
    surface) over radii in ``r_range_mm`` (1 mm steps); the candidate with the most other votes
    within 1.5 mm wins. With ``seed_lps``, only candidates within ``seed_radius_mm`` of it count.
    At most 6000 vertices vote (a fixed random subset, reproducible). Centre and radius are None
    when no candidate counts.
    """
    rng = np.random.default_rng(0)
    sub = idx if len(idx) <= 6000 else rng.choice(idx, 6000, replace=False)
    p, n = s.points[sub], s.normals[sub]
    sign = 1.0 if concave else -1.0
    best: tuple[float, Vec | None, float | None] = (-1.0, None, None)
    for r in np.arange(r_range_mm[0], r_range_mm[1] + 0.1, 1.0):
        cand = p + sign * r * n
        counts = cKDTree(cand).query_ball_point(cand, 1.5, return_length=True).astype(float)
        if seed_lps is not None:
            counts[np.linalg.norm(cand - seed_lps, axis=1) > seed_radius_mm] = 0
        k = int(np.argmax(counts))
        if counts[k] > best[0]:
            best = (float(counts[k]), cand[k], float(r))
    return best


def femoral_head_sphere(s: SurfaceSamples, proximal_mask: NDArray[np.bool_], *, r_range_mm: tuple[float, float] = (12.0, 35.0)) -> tuple[Vec, float, float]:
    """Centre (LPS mm), radius and RMS of the femoral head among the ``proximal_mask`` vertices.

    Hough voting: each vertex p with outward normal n votes for centres p - r n over a range
    of radii; the head's vertices agree on one centre. Inliers (on that sphere, normal
    radial) are then refined by :func:`fit_sphere`.
    """
    idx = np.flatnonzero(proximal_mask)
    if len(idx) < 50:
        raise InputError(None, "too few vertices near the proximal femur to find the femoral head")
    _, c, r = hough_sphere_vote(s, idx, r_range_mm, concave=False)
    for _ in range(3):
        d = s.points[idx] - c
        dist = np.linalg.norm(d, axis=1)
        radial = np.einsum("ij,ij->i", d / dist[:, None], s.normals[idx])
        inl = idx[(np.abs(dist - r) < max(1.5, 0.08 * r)) & (radial > 0.9)]
        if len(inl) < 20:
            raise InputError(None, "femoral head: no spherical surface found near the proximal femur")
        c, r, rms = fit_sphere(s.points[inl])
    return c, r, rms


# --- anatomical axes -----------------------------------------------------------------------


def section_centroids(mesh: pv.PolyData, origin: Vec, direction: Vec, fractions: Vec, length_mm: float) -> Vec:
    """Centroids (n, 3) of cross-sections of ``mesh`` at ``origin + f * length * direction``.

    Each centroid is the area centroid of the largest closed section contour (the shaft).
    """
    out = []
    for f in fractions:
        o = origin + f * length_mm * direction
        sec = mesh.slice(normal=direction, origin=o)
        if sec.n_points < 3:
            continue
        loops = sec.connectivity("largest") if sec.n_cells else sec
        pts = np.asarray(loops.points)
        lines = loops.lines.reshape(-1, 3)[:, 1:] if loops.lines.size else None
        if lines is None or len(lines) < 3:
            continue
        a, b = pts[lines[:, 0]], pts[lines[:, 1]]
        # Polygon area centroid via triangle fan about the mean point, projected in-plane.
        m = pts.mean(axis=0)
        cr = np.cross(a - m, b - m) @ direction
        if abs(cr.sum()) < 1e-9:
            continue
        cen = ((a + b + m) / 3.0 * cr[:, None]).sum(axis=0) / cr.sum()
        out.append(cen)
    if len(out) < 3:
        raise InputError(None, "too few shaft cross-sections to fit an anatomical axis")
    return np.asarray(out)


def fit_line(points: Vec, towards: Vec) -> tuple[Vec, Vec]:
    """Best-fit line (centroid, unit direction oriented along ``towards``) through points."""
    c, d = principal_axis(points)
    return c, d if np.dot(d, towards) >= 0 else -d


def anatomical_axis(mesh: pv.PolyData, distal_end_lps: Vec, proximal_dir: Vec, length_mm: float, fractions: tuple[float, float]) -> Axis:
    """Best-fit line through shaft cross-section centroids between ``fractions`` of the
    bone length (measured from the distal end along ``proximal_dir``)."""
    fr = np.linspace(fractions[0], fractions[1], 11)
    cents = section_centroids(mesh, distal_end_lps, proximal_dir, fr, length_mm)
    c, d = fit_line(cents, proximal_dir)
    return Axis(
        origin_lps_mm=tuple(c),
        direction_lps=tuple(d),
        definition=f"line through shaft section centroids, {int(fractions[0] * 100)}-{int(fractions[1] * 100)}% of length from distal",
    )


# --- the landmark finder -------------------------------------------------------------------


def _lm(p: Vec, bone: str, method: str) -> Landmark:
    return Landmark(position_lps_mm=tuple(float(x) for x in p), bone=bone, method=method)


def _long_axis(s: SurfaceSamples, towards: Vec) -> tuple[Vec, Vec, float, float]:
    """(centroid, unit axis pointing towards ``towards``, min and max projection)."""
    c, d = principal_axis(s.points, s.area)
    if np.dot(d, towards - c) < 0:
        d = -d
    h = (s.points - c) @ d
    return c, d, float(h.min()), float(h.max())


def find_landmarks(meshes: Mapping[str, pv.PolyData], *, side: str | None = None, tibial_length_mm: float | None = None) -> dict[str, Landmark]:
    """Knee landmarks of docs/anatomy.md from bone meshes.

    Parameters
    ----------
    meshes
        ``{"femur": ..., "tibia": ..., "fibula": ... (optional)}`` surfaces in LPS mm.
    side
        'left' / 'right' / None. Not needed for the geometry (medial/lateral come from the
        femoral head offset); used only to cross-check and raise if it contradicts the bones.
    tibial_length_mm
        Ankle-to-knee length used when the ankle is outside the meshes' field of view
        (default: 0.8 x the femoral mechanical length, a population ratio).

    Returns
    -------
    dict
        ``{name: Landmark}`` with the method of each named.

    Raises
    ------
    InputError
        A bone is missing or too small, or the shape does not allow a landmark.
    """
    for b in ("femur", "tibia"):
        if b not in meshes:
            raise InputError(None, f"landmark detection needs a '{b}' mesh (got {sorted(meshes)})")
    fs = surface_samples(meshes["femur"], name="femur")
    ts = surface_samples(meshes["tibia"], name="tibia")
    out: dict[str, Landmark] = {}

    # Long axes: the distal femur faces the tibia; the proximal tibia faces the femur.
    f_c, f_ax, f_lo, f_hi = _long_axis(fs, ts.points.mean(axis=0))
    f_ax = -f_ax  # now pointing proximally (away from the tibia)
    f_lo, f_hi = -f_hi, -f_lo
    t_c, t_ax, t_lo, t_hi = _long_axis(ts, fs.points.mean(axis=0))  # pointing proximally
    f_len = f_hi - f_lo
    fh = (fs.points - f_c) @ f_ax

    # Femoral head: sphere in the proximal 25 %.
    head_c, head_r, head_rms = femoral_head_sphere(fs, fh > f_hi - 0.25 * f_len)
    out["femoral_head_centre"] = _lm(head_c, "femur", f"sphere fit (r={head_r:.1f} mm, rms {head_rms:.2f} mm)")

    # Medial: the head lies medial of the shaft. Refine with the distal femur's widest direction.
    distal = fh < f_lo + 0.12 * f_len
    medial = _unit(_perp(head_c - f_c, f_ax))
    dp = fs.points[distal]
    _, wide = principal_axis(dp - np.outer((dp - f_c) @ f_ax, f_ax), fs.area[distal])
    wide = _unit(_perp(wide, f_ax))
    medial = wide if np.dot(wide, medial) >= 0 else -wide

    mech = f_ax
    for _ in range(4):
        me = cap_point(fs, medial, distal)
        le = cap_point(fs, -medial, distal)
        fkc = 0.5 * (me + le)
        mech = _unit(head_c - fkc)
        medial = _unit(_perp(me - le, mech))
        fhm = fs.points @ mech
        distal = fhm < float((fs.points @ mech).min()) + 0.12 * f_len
    out["medial_epicondyle"] = _lm(me, "femur", "extreme of distal femur along medio-lateral direction")
    out["lateral_epicondyle"] = _lm(le, "femur", "extreme of distal femur along medio-lateral direction")
    out["femoral_knee_centre"] = _lm(fkc, "femur", "midpoint of epicondyles")

    # Femoral frame. Anterior follows from the leg's chirality: for a right leg (x medial,
    # y posterior, z proximal is right-handed) posterior = proximal x medial; mirrored for a
    # left leg. The side is given, or read from the lateral direction in LPS (patient right
    # is -x), and cross-checked against the patella when there is one.
    ml = (fs.points - fkc) @ medial
    near_joint = fs.points @ mech < float((fs.points @ mech).min()) + 35.0
    leg = side if side is not None else ("right" if medial[0] > 0 else "left")
    if leg not in ("left", "right"):
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    posterior = _unit(np.cross(mech, medial)) if leg == "right" else _unit(np.cross(medial, mech))
    ant_guess = -posterior
    if "patella" in meshes and meshes["patella"].n_points > 0:
        pat = np.asarray(meshes["patella"].points).mean(axis=0)
        if np.dot(pat - fkc, ant_guess) <= 0:
            raise InputError(None, f"the patella lies posterior of the knee for a {leg} leg: the side is wrong or the bones are mislabelled")
    med_side = near_joint & (ml > 0)
    lat_side = near_joint & (ml < 0)
    pmc = cap_point(fs, -ant_guess, med_side)
    plc = cap_point(fs, -ant_guess, lat_side)
    out["posterior_medial_condyle"] = _lm(pmc, "femur", "most posterior point of medial condyle in femoral frame")
    out["posterior_lateral_condyle"] = _lm(plc, "femur", "most posterior point of lateral condyle in femoral frame")
    out["distal_medial_condyle"] = _lm(cap_point(fs, -mech, med_side), "femur", "most distal point of medial condyle along mechanical axis")
    out["distal_lateral_condyle"] = _lm(cap_point(fs, -mech, lat_side), "femur", "most distal point of lateral condyle along mechanical axis")

    # Tibia.
    th = (ts.points - t_c) @ t_ax
    t_len = t_hi - t_lo
    t_med = _unit(_perp(medial, t_ax))
    tib_top = th > t_hi - 25.0
    up_facing = tib_top & (ts.normals @ t_ax > 0.6)
    n_p = plateau_normal(ts, up_facing, t_ax)
    plateau = _plateau_centres(ts, up_facing, n_p, t_med, fkc)
    mpc, lpc, spine = plateau
    out["medial_plateau_centre"] = _lm(mpc, "tibia", "deepest point of medial plateau concavity along the plateau normal")
    out["lateral_plateau_centre"] = _lm(lpc, "tibia", "deepest point of lateral plateau concavity along the plateau normal")
    tkc = 0.5 * (mpc + lpc)
    out["tibial_knee_centre"] = _lm(tkc, "tibia", "midpoint of plateau centres")
    out["tibial_spine"] = _lm(spine, "tibia", "highest point between the plateaus")

    # Ankle: malleoli if the ankle is in the field of view, else along the shaft axis.
    ankle_in_view = t_len > 250.0
    t_mech = t_ax
    t_lat_dir = _unit(_perp(lpc - mpc, t_mech))
    if ankle_in_view:
        fbs = surface_samples(meshes["fibula"], name="fibula") if "fibula" in meshes else None
        for _ in range(5):
            # docs/anatomy.md: extremes within 40 mm of each bone's distal end, along t_mech.
            h_t = ts.points @ t_mech
            mm = cap_point(ts, -t_lat_dir, h_t < float(h_t.min()) + MALLEOLUS_REGION_MM)
            if fbs is not None:
                fb_h = fbs.points @ t_mech
                lm_ = cap_point(fbs, t_lat_dir, fb_h < float(fb_h.min()) + MALLEOLUS_REGION_MM)
                lat_method = "most lateral point of distal fibula (40 mm)"
            else:
                lm_ = cap_point(ts, t_lat_dir, h_t < float(h_t.min()) + MALLEOLUS_REGION_MM)
                lat_method = "most lateral point of distal tibia (no fibula mesh)"
            ankle = 0.5 * (mm + lm_)
            t_mech = _unit(tkc - ankle)
            t_lat_dir = _unit(_perp(lpc - mpc, t_mech))
        out["medial_malleolus"] = _lm(mm, "tibia", "most medial point of distal tibia (40 mm)")
        out["lateral_malleolus"] = _lm(lm_, "fibula" if "fibula" in meshes else "tibia", lat_method)
        out["ankle_centre"] = _lm(ankle, "tibia", "midpoint of malleoli")
    else:
        axis = anatomical_axis(meshes["tibia"], ts.points[np.argmin(th)], t_ax, t_len, (0.2, 0.8))
        length = tibial_length_mm if tibial_length_mm is not None else 0.8 * float(np.linalg.norm(head_c - fkc))
        ankle = tkc - length * np.asarray(axis.direction_lps)
        out["ankle_centre"] = _lm(ankle, "tibia", f"tibial shaft axis extended {length:.0f} mm (ankle out of view)")
        t_mech = _unit(tkc - ankle)

    # Medial plateau antero-posterior rim points in the tibial sagittal plane (for slope).
    t_lat = _unit(_perp(lpc - mpc, t_mech))
    t_ant = np.cross(t_mech, t_lat)
    t_ant = t_ant if np.dot(t_ant, _unit(np.cross(mech, -medial))) >= 0 else -t_ant
    fa = _femoral_anterior(out)
    t_ant = t_ant if np.dot(t_ant, fa) >= 0 else -t_ant
    # The plateau plane's antero-posterior tangent through the medial plateau centre (slope).
    # docs/anatomy.md: the MEDIAL plateau's tangent, so the plane is fitted to the medial
    # compartment only (the lateral plateau's slope differs in real knees).
    medial_up = up_facing & ((ts.points - tkc) @ t_med > 5.0)
    n_med = plateau_normal(ts, medial_up, t_ax) if medial_up.sum() >= 30 else n_p
    tangent = _unit(np.cross(n_med, t_lat))  # the medial plateau plane's line in the sagittal plane
    tangent = tangent if np.dot(tangent, t_ant) >= 0 else -tangent
    out["medial_plateau_anterior"] = _lm(mpc + 15.0 * tangent, "tibia", "medial plateau plane fit: 15 mm anterior of medial plateau centre along its AP tangent")
    out["medial_plateau_posterior"] = _lm(mpc - 15.0 * tangent, "tibia", "medial plateau plane fit: 15 mm posterior of medial plateau centre along its AP tangent")

    if side is not None:
        _check_side(side, out)
    return out


def _femoral_anterior(lms: Mapping[str, Landmark]) -> Vec:
    from .alignment import limb_frames

    fr = limb_frames(lms)
    return fr.femur_anterior


def plateau_normal(ts: SurfaceSamples, up_facing: NDArray[np.bool_], t_ax: Vec) -> Vec:
    """Unit normal of the tibial plateau plane (proximal-pointing).

    A robust least-squares plane through the upward-facing proximal surface: refitted on
    the points within 1 mm (or 2.5 robust SDs) of the current plane, so the plateau
    concavities, the spine and the rounded rims drop out. Positions, not vertex normals,
    are fitted, so the terracing of marching-cubes surfaces on thick CT slices (flat steps
    whose normals follow the slice axis) does not tilt the result.
    """
    pts = ts.points[up_facing]
    w = ts.area[up_facing] + 1e-12
    keep = np.ones(len(pts), bool)
    n = t_ax
    for _ in range(8):
        c = (pts[keep] * w[keep, None]).sum(axis=0) / w[keep].sum()
        d = pts[keep] - c
        cov = (d * w[keep, None]).T @ d
        n = np.linalg.eigh(cov)[1][:, 0]
        n = n if np.dot(n, t_ax) > 0 else -n
        r = (pts - c) @ n
        mad = float(np.median(np.abs(r[keep] - np.median(r[keep])))) * 1.4826
        new = np.abs(r - np.median(r[keep])) < max(1.0, 2.5 * mad)
        if new.sum() < 10 or np.array_equal(new, keep):
            break
        keep = new
    return n


def _plateau_centres(ts: SurfaceSamples, up_facing: NDArray[np.bool_], n_p: Vec, t_med: Vec, fkc: Vec) -> tuple[Vec, Vec, Vec]:
    """Medial and lateral plateau centres and the spine tip.

    Each compartment's centre is the deepest point of its concavity relative to the
    plateau plane (lowest along the plateau normal ``n_p``, within 12 mm of the
    compartment's area centroid); the spine tip is the highest point between them.
    """
    idx = np.flatnonzero(up_facing)
    if len(idx) < 30:
        raise InputError(None, "tibial plateau surface not found (no upward-facing proximal surface)")
    p = ts.points[idx]
    ml = (p - fkc) @ t_med
    centres = []
    for side_mask in (ml > 5.0, ml < -5.0):
        q = p[side_mask]
        w = ts.area[idx][side_mask]
        if len(q) < 10:
            raise InputError(None, "tibial plateau: one compartment has no surface")
        c = (q * w[:, None]).sum(axis=0) / w.sum()
        r = np.linalg.norm(_perp_rows(q - c, n_p), axis=1)
        core = r < 12.0
        h = q[core] @ n_p
        low = h <= h.min() + CAP_DEPTH_MM
        ww = w[core][low]
        cc = (q[core][low] * ww[:, None]).sum(axis=0) / ww.sum()
        centres.append(cc + (float(h.min()) - float(cc @ n_p)) * n_p)
    mid = np.abs(ml) < 8.0
    top = ts.points[idx[mid]]
    spine = top[np.argmax(top @ n_p)] if len(top) else 0.5 * (centres[0] + centres[1])
    return centres[0], centres[1], spine


def _perp_rows(v: Vec, axis: Vec) -> Vec:
    return v - np.outer(v @ axis, axis)


def _check_side(side: str, lms: Mapping[str, Landmark]) -> None:
    """Raise if ``side`` contradicts the bones' chirality in the LPS frame."""
    if side not in ("left", "right"):
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    from .alignment import limb_frames

    fr = limb_frames(lms)
    # Patient right is LPS -x: for a right leg the lateral direction points to -x.
    found = "right" if fr.femur_lateral[0] < 0 else "left"
    if found != side:
        raise InputError(None, f"side {side!r} given but the bones look like a {found} leg (lateral points to LPS {'-x' if found == 'right' else '+x'})")


def infer_side(lms: Mapping[str, Landmark]) -> str:
    """'right' or 'left' from the lateral direction in LPS (patient right = -x)."""
    from .alignment import limb_frames

    return "right" if limb_frames(lms).femur_lateral[0] < 0 else "left"


__all__ = [
    "SurfaceSamples",
    "anatomical_axis",
    "cap_point",
    "femoral_head_sphere",
    "find_landmarks",
    "fit_sphere",
    "hough_sphere_vote",
    "infer_side",
    "section_centroids",
    "surface_samples",
]
