"""Automatic total hip arthroplasty (THA) planning from pelvis and proximal femur meshes.

Bones use TotalSegmentator class names: ``hip_left``, ``hip_right``, ``sacrum`` (optional),
``femur_left``, ``femur_right``. Landmarks, the anterior pelvic plane (APP) and the angles
follow docs/anatomy.md ("Hip"); all positions are LPS mm in the CT frame.

Methods (named in each :class:`~orthonav.planning.schema.Landmark`):

* femoral head centre: Hough-voted, then geometric least-squares sphere fit to the head
  surface near the hip bone (:func:`orthonav.planning.landmarks.femoral_head_sphere`);
* acetabulum centre: the same for the concave socket surface (outward normals point to the
  centre), seeded at the femoral head centre;
* acetabular axis (native): the normal of the rim plane, a robust plane fit to the rim
  surface around the socket opening, started from the axis of the socket wall's hemisphere
  of directions (:func:`socket_axis`, :func:`rim_plane_axis`);
* ASIS / pubic tubercles: extremes along the APP normal, with the APP recomputed from the
  four points until it no longer moves (Lewinnek 1978; the plane then touches all four);
* proximal femoral shaft axis: best-fit line through shaft cross-section centroids
  (80 mm below the head centre to 10 mm above the end of the mesh);
* femoral neck axis: from the head centre through the centroid of the neck's surface ring
  2-5 mm beyond the head radius, iterated (:func:`neck_axis`).

Angles: radiographic inclination / anteversion of Murray (1993), J Bone Joint Surg Br
75(2):228-232, relative to the APP.

Implants (frames: :mod:`orthonav.planning.implants`):

* cup: centre at the acetabulum centre moved ``medialise_mm`` medially; outer diameter the
  smallest library size >= socket diameter + ``ream_mm`` (the reamer removes ``ream_mm / 2``
  of bone at the dome); axis at the target inclination / anteversion relative to the APP;
* stem: axis parallel to the proximal shaft axis, its head centre at the native femoral head
  centre (leg length and offset restored), its neck plane turned towards the native head
  (native version kept); size = the library offset nearest the native femoral offset (the
  head-centre distance from the shaft axis); the stem body then sits that difference off the
  canal axis (reported);
* femoral neck cut: the plane perpendicular to the stem's neck axis ``neck_cut_mm`` below
  the head centre (default head radius + 10 mm), normal towards the head (removed part).

Every derived number is recomputed from the plan alone by :func:`tha_outcomes` (used by
:class:`ThaSession`, so an implant moved in the planning window updates angles, cut, leg
length, offset, coverage and reaming at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyvista as pv
from numpy.typing import ArrayLike, NDArray
from orthonav.core.errors import InputError
from orthonav.core.transforms import apply, apply_vector, make_rigid

from .implants import CUP_SIZES, STEM_SIZES, implant_model
from .landmarks import (
    SurfaceSamples,
    cap_point,
    femoral_head_sphere,
    fit_line,
    fit_sphere,
    hough_sphere_vote,
    section_centroids,
    surface_samples,
)
from .schema import Axis, CutPlane, ImplantPlacement, Landmark, Plan
from .session import PlanSession

Vec = NDArray[np.float64]

SIDES = {"left": 1.0, "right": -1.0}  # sign of LPS x (patient left = +x)
HIP_BONES = ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right")
ASIS_REGION_MM = 20.0
PUBIC_REGION_MM = 14.0
SHAFT_START_BELOW_HEAD_MM = 80.0
DEFAULT_TARGET_INCLINATION_DEG = 40.0
DEFAULT_TARGET_ANTEVERSION_DEG = 15.0
DEFAULT_REAM_MM = 2.0
COVERAGE_CONTACT_MM = 1.0


def _unit(v: Vec, what: str = "vector") -> Vec:
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-9:
        raise InputError(None, f"{what} is degenerate (zero length)")
    return np.asarray(v, dtype=np.float64) / n


def _perp(v: Vec, axis: Vec) -> Vec:
    return v - np.dot(v, axis) * axis


def _lm(p: Vec, bone: str, method: str) -> Landmark:
    return Landmark(position_lps_mm=tuple(float(x) for x in p), bone=bone, method=method)


def _pos(lm: Landmark | ArrayLike) -> Vec:
    return np.asarray(lm.position_lps_mm if isinstance(lm, Landmark) else lm, dtype=np.float64).reshape(3)


# --- the anterior pelvic plane and the acetabular angles -----------------------------------


def app_frame(landmarks: Mapping[str, Landmark | ArrayLike]) -> tuple[Vec, Vec, Vec]:
    """Unit (medio-lateral towards the patient's left, anterior, superior) axes of the APP
    (docs/anatomy.md): through ``asis_left``, ``asis_right`` and the pubic tubercle midpoint."""
    missing = [k for k in ("asis_left", "asis_right", "pubic_tubercle_left", "pubic_tubercle_right") if k not in landmarks]
    if missing:
        raise InputError(None, f"the anterior pelvic plane needs landmarks {', '.join(missing)}")
    al, ar = _pos(landmarks["asis_left"]), _pos(landmarks["asis_right"])
    mid = 0.5 * (_pos(landmarks["pubic_tubercle_left"]) + _pos(landmarks["pubic_tubercle_right"]))
    ml = _unit(al - ar, "ASIS line")
    ant = _unit(np.cross(mid - 0.5 * (al + ar), ml), "anterior pelvic plane normal")
    return ml, ant, _unit(np.cross(ant, ml))


def acetabular_angles(axis_lps: ArrayLike, side: str, app: tuple[Vec, Vec, Vec]) -> tuple[float, float]:
    """Radiographic (inclination, anteversion) in degrees of an acetabular / cup axis (unit,
    pointing out of the opening) relative to the APP (Murray 1993; docs/anatomy.md)."""
    if side not in SIDES:
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    ml, ant, sup = app
    a = _unit(np.asarray(axis_lps, dtype=np.float64), "acetabular axis")
    lat = SIDES[side] * ml
    return float(np.degrees(np.arctan2(a @ lat, -(a @ sup)))), float(np.degrees(np.arcsin(np.clip(a @ ant, -1.0, 1.0))))


def cup_axis(inclination_deg: float, anteversion_deg: float, side: str, app: tuple[Vec, Vec, Vec]) -> Vec:
    """The unit cup axis (out of the opening) with the given radiographic inclination and
    anteversion relative to the APP (the inverse of :func:`acetabular_angles`)."""
    if not (0.0 <= inclination_deg <= 90.0 and -45.0 <= anteversion_deg <= 60.0):
        raise InputError(None, f"cup target must have inclination in [0, 90] and anteversion in [-45, 60] deg, got {inclination_deg}, {anteversion_deg}")
    ml, ant, sup = app
    ri, ra = np.radians(inclination_deg), np.radians(anteversion_deg)
    return np.sin(ra) * ant + np.cos(ra) * (np.sin(ri) * SIDES[side] * ml - np.cos(ri) * sup)


# --- landmarks -----------------------------------------------------------------------------


def _near(points: Vec, other: Vec, within_mm: float) -> NDArray[np.bool_]:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(other).query(points, distance_upper_bound=within_mm)
    return np.isfinite(d)


def socket_sphere(s: SurfaceSamples, region: NDArray[np.bool_], seed_lps: Vec | None, *, r_range_mm: tuple[float, float] = (15.0, 40.0)) -> tuple[Vec, float, float, NDArray[np.int64]]:
    """Centre, radius, RMS and inlier vertex indices of the acetabular socket.

    The socket is concave, so its outward normals point at the centre: each vertex p with
    normal n votes for centres p + r n (Hough, as :func:`femoral_head_sphere` for convex
    surfaces); the vote with the most support within 15 mm of ``seed_lps`` (the
    femoral head centre; anywhere when None) wins; inliers (on the
    sphere, normal pointing to the centre) are refitted (:func:`fit_sphere`) with the
    tolerance tightened to 3 RMS.
    """
    idx = np.flatnonzero(region)
    if len(idx) < 50:
        raise InputError(None, "too few hip bone vertices near the femoral head to find the acetabulum")
    # the socket holds the head: its centre lies within 15 mm of the femoral head centre
    support, c, r = hough_sphere_vote(s, idx, r_range_mm, concave=True, seed_lps=seed_lps, seed_radius_mm=15.0)
    if c is None or support < 20:
        raise InputError(None, "acetabulum: no concave spherical surface found around the femoral head")
    tol = max(1.5, 0.08 * r)
    for _ in range(5):
        d = s.points[idx] - c
        dist = np.linalg.norm(d, axis=1)
        toward = -np.einsum("ij,ij->i", d / dist[:, None], s.normals[idx])
        inl = idx[(np.abs(dist - r) < tol) & (toward > 0.9)]
        if len(inl) < 20:
            raise InputError(None, "acetabulum: too few socket surface points on the fitted sphere")
        c, r, rms = fit_sphere(s.points[inl])
        tol = max(0.6, 3.0 * rms)
    return c, r, rms, inl


_DISTANCE_FUNCTIONS: dict[int, tuple[pv.PolyData, object, float]] = {}


def signed_distance_mm(surface: pv.PolyData, points_lps: Vec) -> Vec:
    """Signed distance (n,) of points to a closed surface, negative inside
    (vtkImplicitPolyDataDistance; its locator is built once per surface and kept), the sign
    checked on a point surely outside the surface."""
    import vtk
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    key = id(surface)
    hit = _DISTANCE_FUNCTIONS.get(key)
    if hit is None or hit[0] is not surface:
        if len(_DISTANCE_FUNCTIONS) > 16:
            _DISTANCE_FUNCTIONS.clear()
        f = vtk.vtkImplicitPolyDataDistance()
        f.SetInput(surface)
        far = np.asarray(surface.bounds, dtype=np.float64)[1::2] + 50.0
        hit = (surface, f, 1.0 if f.EvaluateFunction(*far) > 0 else -1.0)
        _DISTANCE_FUNCTIONS[key] = hit
    _surface, f, sign = hit
    pts = np.ascontiguousarray(np.asarray(points_lps, dtype=np.float64).reshape(-1, 3))
    out = vtk.vtkDoubleArray()
    f.FunctionValue(numpy_to_vtk(pts, deep=True), out)
    return sign * vtk_to_numpy(out).astype(np.float64)


def unit_sphere_directions(n: int, *, hemisphere: bool = False) -> Vec:
    """(n, 3) near-uniform unit vectors (Fibonacci lattice); with ``hemisphere`` only z <= 0."""
    i = np.arange(n) + 0.5
    z = -i / n if hemisphere else 1.0 - 2.0 * i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.c_[r * np.cos(phi), r * np.sin(phi), z]


def socket_axis(hip: pv.PolyData, centre: Vec, radius_mm: float, initial: Vec, *, n_directions: int = 8000) -> Vec:
    """Unit acetabular axis (out of the socket), the normal of the rim plane.

    The directions from the socket centre that meet the socket wall (1 mm short of the
    fitted radius is still cavity, 2.5 mm beyond it is bone) are found on a uniform
    lattice of directions; the axis is minus the mean of the wall directions on the far
    side of the current rim plane, iterated from ``initial`` to a fixed point. For a
    socket wall that fills a hemisphere the mean is exactly -axis / 2, and rounded or
    chamfered rim edges do not bias it (the test is on positions, not vertex normals).
    """
    v = unit_sphere_directions(n_directions)
    sd = signed_distance_mm(hip, np.vstack([centre + (radius_mm - 1.0) * v, centre + (radius_mm + 2.5) * v]))
    wall = v[(sd[: len(v)] > 0.0) & (sd[len(v) :] < 0.0)]
    if len(wall) < 0.2 * n_directions:
        raise InputError(None, f"acetabular axis: the socket wall covers only {100 * len(wall) / n_directions:.0f}% of the directions from its centre")
    a = _unit(initial, "initial acetabular axis")
    for _ in range(100):
        new = _unit(-wall[wall @ a < 0.0].sum(axis=0), "acetabular axis")
        done = float(np.linalg.norm(new - a)) < 1e-12
        a = new
        if done:
            break
    return a


def rim_plane_axis(s: SurfaceSamples, centre: Vec, radius_mm: float, initial: Vec, *, band_mm: tuple[float, float] = (1.0, 6.0), cone_deg: float = 20.0) -> tuple[Vec, int]:
    """Refine the acetabular axis as the normal of the rim plane: a robust least-squares
    plane through the rim surface around the socket opening (vertices ``band_mm`` beyond
    the socket radius from its centre, within 6 mm of the current rim plane, facing out of
    the socket within ``cone_deg`` of the current axis; refitted on the points within
    max(0.2 mm, 2.5 robust SDs) of the plane). Returns (axis, rim points used); the
    ``initial`` axis and 0 when fewer than 30 rim points are found."""
    a = _unit(initial, "initial acetabular axis")
    d = s.points - centre
    dist = np.linalg.norm(d, axis=1)
    used = 0
    for _ in range(8):
        sel = (dist > radius_mm + band_mm[0]) & (dist < radius_mm + band_mm[1]) & (s.normals @ a > np.cos(np.radians(cone_deg))) & (np.abs(d @ a) < 6.0)
        if sel.sum() < 30:
            return _unit(initial, "acetabular axis"), 0
        p, w = s.points[sel], s.area[sel] + 1e-12
        keep = np.ones(len(p), bool)
        for _ in range(5):
            mu = (p[keep] * w[keep, None]).sum(axis=0) / w[keep].sum()
            q = p[keep] - mu
            n = np.linalg.eigh((q * w[keep, None]).T @ q)[1][:, 0]
            n = n if n @ a > 0 else -n
            res = (p - mu) @ n
            med = float(np.median(res[keep]))
            mad = 1.4826 * float(np.median(np.abs(res[keep] - med)))
            keep = np.abs(res - med) < max(0.2, 2.5 * mad)
            if keep.sum() < 30:
                return _unit(initial, "acetabular axis"), 0
        done = float(np.linalg.norm(n - a)) < 1e-10
        a, used = n, int(keep.sum())
        if done:
            break
    return a, used


def _extreme_near(s: SurfaceSamples, direction: Vec, centre: Vec, radius_mm: float) -> Vec:
    mask = np.linalg.norm(s.points - centre, axis=1) < radius_mm
    return cap_point(s, direction, mask)


def pelvic_landmarks(hips: Mapping[str, SurfaceSamples], acetabula: Mapping[str, Vec], *, sacrum_centroid: Vec | None = None) -> dict[str, Vec]:
    """``asis_<side>`` and ``pubic_tubercle_<side>`` (LPS mm) by the APP fixed point.

    Start: the medio-lateral axis from the two acetabulum centres; anterior = LPS -y (the
    patient frame of the CT) made perpendicular (checked against the sacrum, which lies
    posterior); each ASIS = the most anterior point of its hip bone above its acetabulum;
    each pubic tubercle = the most anterior point below and at least 20 mm medial of it.
    Then, as docs/anatomy.md defines them, each point is the extreme along the APP normal
    within 20 mm (ASIS) / 14 mm (tubercle) of its previous position, and the APP is
    recomputed from the four points until it no longer moves.
    """
    if set(hips) != {"left", "right"} or set(acetabula) != {"left", "right"}:
        raise InputError(None, "the anterior pelvic plane needs both hip bones")
    ml = _unit(acetabula["left"] - acetabula["right"], "line between the acetabula")
    ant = _unit(_perp(np.array([0.0, -1.0, 0.0]), ml), "anterior direction")
    if sacrum_centroid is not None:
        mid = 0.5 * (acetabula["left"] + acetabula["right"])
        if np.dot(sacrum_centroid - mid, ant) > 0:
            raise InputError(None, "the sacrum lies anterior of the acetabula in the CT's patient frame: check the image orientation")
    sup = np.cross(ant, ml)
    L: dict[str, Vec] = {}
    for side, sx in SIDES.items():
        s, c = hips[side], acetabula[side]
        h = (s.points - c) @ sup
        medial = (s.points - c) @ (-sx * ml)
        L[f"asis_{side}"] = cap_point(s, ant, h > 20.0)
        L[f"pubic_tubercle_{side}"] = cap_point(s, ant, (h < 0.0) & (medial > 20.0))
    for _ in range(30):
        for side in SIDES:
            L[f"asis_{side}"] = _extreme_near(hips[side], ant, L[f"asis_{side}"], ASIS_REGION_MM)
            L[f"pubic_tubercle_{side}"] = _extreme_near(hips[side], ant, L[f"pubic_tubercle_{side}"], PUBIC_REGION_MM)
        _ml, new, _sup = app_frame(L)
        done = float(np.linalg.norm(new - ant)) < 1e-9
        ant = new
        if done:
            break
    return L


def shaft_axis(femur: pv.PolyData, head_centre: Vec, *, start_below_head_mm: float = SHAFT_START_BELOW_HEAD_MM, max_length_mm: float = 200.0) -> Axis:
    """The proximal femoral shaft (anatomical) axis: best-fit line through the centroids of
    cross-sections from ``start_below_head_mm`` below the head centre to 10 mm above the
    distal end of the mesh (at most ``max_length_mm`` long), pointing proximally.
    Sections are perpendicular to the current axis estimate (principal axis first), twice."""
    pts = np.asarray(femur.points, dtype=np.float64)
    c = pts.mean(axis=0)
    d = np.linalg.eigh(np.cov((pts - c).T))[1][:, -1]
    prox = d if np.dot(head_centre - c, d) > 0 else -d
    for _ in range(3):
        h = (pts - head_centre) @ (-prox)  # mm below the head centre
        lo, hi = start_below_head_mm, min(float(h.max()) - 10.0, start_below_head_mm + max_length_mm)
        if hi - lo < 20.0:
            raise InputError(None, f"the femur mesh ends {float(h.max()):.0f} mm below the head centre: too short for a shaft axis (needs {start_below_head_mm + 30:.0f} mm)")
        fr = np.linspace(lo, hi, 9)
        cents = section_centroids(femur, head_centre, -prox, fr, 1.0)  # fr in mm: length 1
        o, prox = fit_line(cents, prox)
    return Axis(origin_lps_mm=tuple(o), direction_lps=tuple(prox), definition=f"proximal femoral shaft: line through section centroids {start_below_head_mm:.0f} mm below the head centre to the end of the mesh, pointing proximally")


def neck_axis(femur: SurfaceSamples, head_centre: Vec, head_radius_mm: float, shaft: Axis, *, shell_mm: tuple[float, float] = (2.0, 5.0), cone_deg: float = 50.0) -> Vec:
    """Unit femoral neck axis from the head centre towards the neck base.

    The femoral surface in a spherical shell ``shell_mm`` beyond the head radius is a ring
    around the neck; the axis is the direction from the head centre to the ring's
    area-weighted centroid, iterated with only the shell points within ``cone_deg`` of the
    current axis (which drops the trochanters and the shaft). Starts from the direction of
    the shaft axis, 20 mm distal of its point nearest the head.
    """
    o, u = np.asarray(shaft.origin_lps_mm), np.asarray(shaft.direction_lps)
    foot = o + np.dot(head_centre - o, u) * u
    d = _unit(foot - head_centre - 20.0 * u, "initial neck direction")
    r = np.linalg.norm(femur.points - head_centre, axis=1)
    shell = (r > head_radius_mm + shell_mm[0]) & (r < head_radius_mm + shell_mm[1])
    p, w = femur.points[shell], femur.area[shell]
    dirs = (p - head_centre) / r[shell][:, None]
    for _ in range(20):
        k = dirs @ d > np.cos(np.radians(cone_deg))
        if k.sum() < 20:
            raise InputError(None, "femoral neck not found beyond the femoral head")
        new = _unit((p[k] * w[k, None]).sum(axis=0) / w[k].sum() - head_centre, "neck axis")
        done = float(np.linalg.norm(new - d)) < 1e-10
        d = new
        if done:
            break
    return d


def find_hip_landmarks(meshes: Mapping[str, pv.PolyData]) -> tuple[dict[str, Landmark], dict[str, Axis], dict[str, float]]:
    """Hip landmarks (docs/anatomy.md), axes and native measures from the bone meshes.

    Returns
    -------
    landmarks
        ``femoral_head_centre_<side>``, ``acetabulum_centre_<side>``, ``asis_<side>``,
        ``pubic_tubercle_<side>`` for every side whose hip bone and femur are present (the
        pelvic points need both hip bones).
    axes
        ``acetabular_<side>`` (native socket axis, out of the socket, from its centre),
        ``femoral_shaft_<side>`` (pointing proximally), ``femoral_neck_<side>`` (head centre
        -> neck base).
    measures
        ``socket_radius_<side>_mm``, ``femoral_head_radius_<side>_mm``,
        ``femoral_offset_<side>_mm`` (head centre to shaft axis), ``acetabular_rim_points_<side>``
        (rim surface points the axis was fitted to; 0 = fallback axis).
    """
    sides = [sd for sd in SIDES if f"hip_{sd}" in meshes and f"femur_{sd}" in meshes]
    if not sides:
        raise InputError(None, f"THA planning needs hip_<side> and femur_<side> meshes of one side at least (got {', '.join(sorted(meshes))})")
    lms: dict[str, Landmark] = {}
    axes: dict[str, Axis] = {}
    meas: dict[str, float] = {}
    hips: dict[str, SurfaceSamples] = {}
    acet: dict[str, Vec] = {}
    for sd in SIDES:
        if f"hip_{sd}" in meshes:
            hips[sd] = surface_samples(meshes[f"hip_{sd}"], name=f"hip_{sd}")
    for sd in sides:
        fs = surface_samples(meshes[f"femur_{sd}"], name=f"femur_{sd}")
        hs = hips[sd]
        near_hip = _near(fs.points, hs.points, 15.0)
        if near_hip.sum() < 50:
            raise InputError(None, f"femur_{sd}: no femoral surface within 15 mm of hip_{sd} (the head is not in the socket?)")
        head_c, head_r, head_rms = femoral_head_sphere(fs, near_hip, r_range_mm=(15.0, 35.0))
        lms[f"femoral_head_centre_{sd}"] = _lm(head_c, f"femur_{sd}", f"sphere fit (r={head_r:.1f} mm, rms {head_rms:.2f} mm)")
        region = np.linalg.norm(hs.points - head_c, axis=1) < head_r + 20.0
        ac, ar, arms, _inliers = socket_sphere(hs, region, head_c)
        acet[sd] = ac
        lms[f"acetabulum_centre_{sd}"] = _lm(ac, f"hip_{sd}", f"sphere fit of the socket (r={ar:.1f} mm, rms {arms:.2f} mm)")
        # start: lateral and inferior in the CT's patient frame (LPS), refined from the bone
        a = socket_axis(meshes[f"hip_{sd}"], ac, ar, np.array([SIDES[sd], 0.0, -1.0]))
        a, n_rim = rim_plane_axis(hs, ac, ar, a)
        meas[f"acetabular_rim_points_{sd}"] = float(n_rim)
        how = "normal of the plane fitted to the rim surface" if n_rim else "axis of the socket wall's hemisphere of directions (no rim surface found)"
        axes[f"acetabular_{sd}"] = Axis(origin_lps_mm=tuple(ac), direction_lps=tuple(a), definition=f"acetabular axis, out of the socket: {how}")
        meas[f"socket_radius_{sd}_mm"] = ar
        meas[f"femoral_head_radius_{sd}_mm"] = head_r
        sh = shaft_axis(meshes[f"femur_{sd}"], head_c)
        axes[f"femoral_shaft_{sd}"] = sh
        o, u = np.asarray(sh.origin_lps_mm), np.asarray(sh.direction_lps)
        meas[f"femoral_offset_{sd}_mm"] = float(np.linalg.norm(_perp(head_c - o, u)))
        nk = neck_axis(fs, head_c, head_r, sh)
        axes[f"femoral_neck_{sd}"] = Axis(origin_lps_mm=tuple(head_c), direction_lps=tuple(nk), definition="femoral neck axis: head centre -> neck base (centroid of the neck ring just beyond the head)")
    if len(hips) == 2:
        if len(acet) < 2:  # one femur missing: the other acetabulum from its socket alone
            for sd in SIDES:
                if sd not in acet:
                    hs = hips[sd]
                    c, _r, _rms, _ = socket_sphere(hs, np.ones(len(hs.points), bool), None)
                    acet[sd] = c
        sac = np.asarray(meshes["sacrum"].points).mean(axis=0) if "sacrum" in meshes else None
        for k, p in pelvic_landmarks(hips, acet, sacrum_centroid=sac).items():
            sd = k.rsplit("_", 1)[1]
            lms[k] = _lm(p, f"hip_{sd}", "extreme along the anterior pelvic plane normal (APP iterated to touch ASIS and pubic tubercles)")
    return lms, axes, meas


# --- implants ------------------------------------------------------------------------------


def choose_cup_size(socket_radius_mm: float, *, ream_mm: float = DEFAULT_REAM_MM) -> tuple[str, bool]:
    """The smallest library cup with outer diameter >= socket diameter + ``ream_mm``;
    (size, fits) where ``fits`` is False when even the largest is too small (largest given)."""
    need = 2.0 * socket_radius_mm + ream_mm
    ok = [s for s, d in CUP_SIZES.items() if d["outer_diameter_mm"] >= need - 1e-9]
    if ok:
        return min(ok, key=lambda s: CUP_SIZES[s]["outer_diameter_mm"]), True
    return max(CUP_SIZES, key=lambda s: CUP_SIZES[s]["outer_diameter_mm"]), False


def choose_stem_size(femoral_offset_mm: float) -> str:
    """The stem whose offset is nearest the native femoral offset (ties: the smaller)."""
    return min(STEM_SIZES, key=lambda s: (abs(STEM_SIZES[s]["offset_mm"] - femoral_offset_mm), STEM_SIZES[s]["offset_mm"]))


def cup_pose(centre_lps: Vec, axis_lps: Vec, app: tuple[Vec, Vec, Vec]) -> NDArray[np.float64]:
    """``ct_from_implant`` of a cup: origin at the centre of rotation, z = the cup axis (out
    of the opening), y = the APP superior direction made perpendicular, x = y x z."""
    z = _unit(axis_lps, "cup axis")
    y = _perp(app[2], z)
    y = _unit(y if np.linalg.norm(y) > 1e-6 else _perp(app[1], z), "cup y axis")
    return make_rigid(np.column_stack([np.cross(y, z), y, z]), centre_lps)


def stem_pose(head_centre_lps: Vec, shaft: Axis) -> NDArray[np.float64]:
    """``ct_from_implant`` of a stem: origin (the prosthetic head centre) at ``head_centre_lps``,
    z along the shaft axis (proximal), x from the shaft axis towards the head (the stem's
    neck plane contains the native head, so the native version is kept)."""
    o, z = np.asarray(shaft.origin_lps_mm), np.asarray(shaft.direction_lps)
    x = _unit(_perp(head_centre_lps - o, z), "head offset from the shaft axis")
    return make_rigid(np.column_stack([x, np.cross(z, x), z]), head_centre_lps)


def stem_neck_direction_implant() -> Vec:
    """The stem's neck axis in its frame, from the head centre towards the shoulder (the
    library stems have a 135 deg neck-shaft angle: (-sin 45, 0, -cos 45))."""
    return np.array([-np.sin(np.radians(45.0)), 0.0, -np.cos(np.radians(45.0))])


def neck_cut_from_stem(stem: ImplantPlacement, side: str, depth_mm: float) -> CutPlane:
    """The femoral neck cut implied by a stem pose: perpendicular to the stem's neck axis,
    ``depth_mm`` below the prosthetic head centre along it; the normal points to the head
    (the removed part)."""
    m = np.asarray(stem.ct_from_implant)
    d = apply_vector(m, stem_neck_direction_implant())
    head = m[:3, 3]
    point = head + depth_mm * d
    return CutPlane(
        bone=f"femur_{side}", point_lps_mm=tuple(float(x) for x in point), normal_lps=tuple(float(x) for x in -d),
        resection_depth_mm=float(depth_mm), reference=f"femoral_head_centre_{side}", depths_mm={f"femoral_head_centre_{side}": float(depth_mm)},
    )


_COVERAGE_MEMO: dict[tuple, float] = {}


def cup_coverage(cup: ImplantPlacement, hip: pv.PolyData, *, contact_mm: float = COVERAGE_CONTACT_MM, n: int = 1500) -> float:
    """Fraction of the cup's outer hemispherical surface inside or within ``contact_mm`` of
    the (native) hip bone: near-uniform samples on the shell, signed distance to the closed
    bone surface (vtkImplicitPolyDataDistance; negative inside)."""
    key = (id(hip), cup.family, cup.size, np.asarray(cup.ct_from_implant, dtype=np.float64).tobytes(), contact_mm, n)
    if key not in _COVERAGE_MEMO:  # an edit moves one implant: the other cup's value is reused
        if len(_COVERAGE_MEMO) > 256:
            _COVERAGE_MEMO.clear()
        r = implant_model(cup.family, cup.size).dims["outer_diameter_mm"] / 2.0
        pts = apply(np.asarray(cup.ct_from_implant), r * unit_sphere_directions(n, hemisphere=True))
        _COVERAGE_MEMO[key] = float((signed_distance_mm(hip, pts) < contact_mm).mean())
    return _COVERAGE_MEMO[key]


def stem_clearance(stem: ImplantPlacement, femur: pv.PolyData, *, n: int = 24) -> float:
    """Smallest distance (mm) from the stem body's surface to the outer femoral surface,
    over ``n`` stations along the body (radius 11 mm at the shoulder to 7 mm at the tip,
    as :mod:`orthonav.planning.implants` builds it); negative = the stem pierces the
    cortex there (or its tip lies beyond the end of the femur mesh)."""
    d = implant_model(stem.family, stem.size).dims
    off, length = d["offset_mm"], d["length_mm"]
    t = np.linspace(0.0, 1.0, n)
    axis_pts = np.c_[np.full(n, -off), np.zeros(n), -off - t * length]  # shoulder -> tip (implant frame)
    radius = 11.0 - 4.0 * t
    sd = signed_distance_mm(femur, apply(np.asarray(stem.ct_from_implant), axis_pts))
    return float(np.min(-sd - radius))


def tha_outcomes(plan: Plan, meshes: Mapping[str, pv.PolyData] | None = None) -> tuple[dict[str, float], dict[str, float], dict[str, CutPlane]]:
    """Angles, metrics and neck cuts that follow from the plan's landmarks, axes and implant
    poses (recomputed after every edit).

    Returns
    -------
    angles
        Native ``acetabular_inclination_<side>`` / ``acetabular_anteversion_<side>`` (from
        the ``acetabular_<side>`` axes), planned ``cup_inclination_<side>`` /
        ``cup_anteversion_<side>``, ``neck_shaft_<side>`` (native) and
        ``stem_neck_shaft_<side>`` (planned: stem neck vs the shaft axis).
    metrics
        Per side with a cup: ``cup_outer_diameter_<side>_mm``, ``cup_reaming_depth_<side>_mm``
        (bone removed at the dome along the cup axis beyond the native socket),
        ``cup_medialisation_<side>_mm``, ``cup_coverage_<side>_fraction`` (needs
        ``meshes``); with a stem: ``leg_length_change_<side>_mm`` (positive = longer),
        ``femoral_offset_change_<side>_mm``, ``global_offset_change_<side>_mm`` (femoral
        plus acetabular, along the APP medio-lateral axis), ``stem_axis_to_canal_axis_<side>_mm``,
        ``stem_cortex_clearance_<side>_mm`` (needs ``meshes``; < 0: the stem leaves the bone).
    cuts
        ``neck_<side>`` from each stem (depth from ``neck_cut_below_head_<side>_mm`` in the
        plan's metrics).
    """
    lms = plan.landmarks
    angles: dict[str, float] = {}
    metrics: dict[str, float] = {}
    cuts: dict[str, CutPlane] = {}
    app = app_frame(lms) if all(k in lms for k in ("asis_left", "asis_right", "pubic_tubercle_left", "pubic_tubercle_right")) else None
    for sd in SIDES:
        ax = plan.axes.get(f"acetabular_{sd}")
        if app is not None and ax is not None:
            i, a = acetabular_angles(ax.direction_lps, sd, app)
            angles[f"acetabular_inclination_{sd}"], angles[f"acetabular_anteversion_{sd}"] = i, a
        sh, nk = plan.axes.get(f"femoral_shaft_{sd}"), plan.axes.get(f"femoral_neck_{sd}")
        if sh is not None and nk is not None:
            angles[f"neck_shaft_{sd}"] = float(np.degrees(np.arccos(np.clip(np.dot(nk.direction_lps, sh.direction_lps), -1.0, 1.0))))
    for imp in plan.implants:
        sd = imp.bone.rsplit("_", 1)[-1]
        if sd not in SIDES:
            continue
        m = np.asarray(imp.ct_from_implant)
        if imp.family == "tha_cup":
            r_out = implant_model(imp.family, imp.size).dims["outer_diameter_mm"] / 2.0
            z, c = m[:3, 2], m[:3, 3]
            metrics[f"cup_outer_diameter_{sd}_mm"] = 2.0 * r_out
            if app is not None:
                i, a = acetabular_angles(z, sd, app)
                angles[f"cup_inclination_{sd}"], angles[f"cup_anteversion_{sd}"] = i, a
            key = f"acetabulum_centre_{sd}"
            r_s = plan.metrics.get(f"socket_radius_{sd}_mm")
            if key in lms and r_s is not None:
                native = _pos(lms[key])
                metrics[f"cup_reaming_depth_{sd}_mm"] = float(np.dot(native - c, z) + r_out - r_s)
                if app is not None:
                    metrics[f"cup_medialisation_{sd}_mm"] = float(np.dot(native - c, SIDES[sd] * app[0]))
                    metrics[f"cup_superior_shift_{sd}_mm"] = float(np.dot(c - native, app[2]))
            if meshes is not None and f"hip_{sd}" in meshes:
                metrics[f"cup_coverage_{sd}_fraction"] = cup_coverage(imp, meshes[f"hip_{sd}"])
        elif imp.family == "tha_stem":
            depth = plan.metrics.get(f"neck_cut_below_head_{sd}_mm")
            if depth is not None:
                cuts[f"neck_{sd}"] = neck_cut_from_stem(imp, sd, depth)
            head = m[:3, 3]
            sh = plan.axes.get(f"femoral_shaft_{sd}")
            key = f"femoral_head_centre_{sd}"
            if sh is not None and key in lms:
                native = _pos(lms[key])
                o, u = np.asarray(sh.origin_lps_mm), np.asarray(sh.direction_lps)
                off_new = float(np.linalg.norm(_perp(head - o, u)))
                off_native = float(np.linalg.norm(_perp(native - o, u)))
                metrics[f"femoral_offset_change_{sd}_mm"] = off_new - off_native
                stem_off = implant_model(imp.family, imp.size).dims["offset_mm"]
                stem_axis_pt = head - stem_off * m[:3, 0]
                metrics[f"stem_axis_to_canal_axis_{sd}_mm"] = float(np.linalg.norm(_perp(stem_axis_pt - o, u)))
                metrics[f"stem_axis_angle_to_shaft_{sd}_deg"] = float(np.degrees(np.arccos(np.clip(np.dot(m[:3, 2], u), -1.0, 1.0))))
                if meshes is not None and f"femur_{sd}" in meshes:
                    metrics[f"stem_cortex_clearance_{sd}_mm"] = stem_clearance(imp, meshes[f"femur_{sd}"])
                neck_d = apply_vector(m, stem_neck_direction_implant())
                angles[f"stem_neck_shaft_{sd}"] = float(np.degrees(np.arccos(np.clip(np.dot(neck_d, u), -1.0, 1.0))))
                if app is not None:
                    # Femoral part: the prosthetic head moved relative to the femur. Once the
                    # head is reduced into the cup the femur moves by (cup centre - head):
                    # down (longer) when the head sits higher on the femur or the cup lower.
                    cup = next((i for i in plan.implants if i.family == "tha_cup" and i.bone == f"hip_{sd}"), None)
                    acet_key = f"acetabulum_centre_{sd}"
                    centre_new = np.asarray(cup.ct_from_implant)[:3, 3] if cup is not None else (_pos(lms[acet_key]) if acet_key in lms else native)
                    centre_old = _pos(lms[acet_key]) if acet_key in lms else native
                    femur_shift = (centre_new - head) - (centre_old - native)  # femur displacement vs native
                    metrics[f"leg_length_change_{sd}_mm"] = float(-np.dot(femur_shift, app[2])) + 0.0  # no -0.0
                    metrics[f"global_offset_change_{sd}_mm"] = float(np.dot(femur_shift, SIDES[sd] * app[0]))
    return angles, metrics, cuts


# --- the automatic plan --------------------------------------------------------------------


def plan_sides(meshes: Mapping[str, pv.PolyData], side: str | None) -> list[str]:
    """The sides to place implants on: ``side`` if given ('left' / 'right'; 'both' for
    both), else every side with a hip bone and a femur."""
    have = [sd for sd in SIDES if f"hip_{sd}" in meshes and f"femur_{sd}" in meshes]
    if side in (None, "both"):
        if not have:
            raise InputError(None, "THA planning needs hip_<side> and femur_<side> meshes")
        return have
    if side not in SIDES:
        raise InputError(None, f"side must be 'left', 'right' or 'both', got {side!r}")
    if side not in have:
        raise InputError(None, f"no hip_{side} and femur_{side} meshes for a {side} THA (have {', '.join(sorted(meshes))})")
    return [side]


def build_tha_plan(
    meshes: Mapping[str, pv.PolyData],
    *,
    side: str | None = None,
    inclination_deg: float = DEFAULT_TARGET_INCLINATION_DEG,
    anteversion_deg: float = DEFAULT_TARGET_ANTEVERSION_DEG,
    medialise_mm: float = 0.0,
    ream_mm: float = DEFAULT_REAM_MM,
    neck_cut_mm: float | None = None,
    fiducials: Mapping[str, Landmark] | None = None,
    implants: bool = True,
) -> Plan:
    """The automatic THA plan from meshes alone (no file I/O).

    Parameters
    ----------
    meshes
        ``hip_left``, ``hip_right`` (both needed for the APP), ``femur_<side>``, optional
        ``sacrum``; LPS mm.
    side
        Operated side ('left' / 'right'); None or 'both' plans every side with a femur.
    inclination_deg, anteversion_deg
        Cup target, radiographic, relative to the APP (Lewinnek safe zone 40 / 15).
    medialise_mm
        Cup centre moved this far medially (along the APP medio-lateral axis) from the
        native acetabulum centre.
    ream_mm
        Diametral reaming allowance: cup outer diameter >= socket diameter + ``ream_mm``.
    neck_cut_mm
        Neck cut distance below the head centre along the stem's neck axis (default: femoral
        head radius + 10 mm).
    """
    sides = plan_sides(meshes, side)
    if not (0.0 <= ream_mm <= 10.0):
        raise InputError(None, f"ream_mm must be in [0, 10], got {ream_mm}")
    if implants and not all(f"hip_{sd}" in meshes for sd in SIDES):
        raise InputError(None, "cup orientation needs the anterior pelvic plane: both hip bones must be segmented")
    cup_axis(inclination_deg, anteversion_deg, sides[0], (np.eye(3)[0], -np.eye(3)[1], np.eye(3)[2]))  # validates the target first
    lms, axes, meas = find_hip_landmarks(meshes)
    all_lms = {**lms, **(fiducials or {})}
    notes = [
        "automatic THA plan (orthonav plan --auto)",
        f"cup target inclination {inclination_deg:g} deg / anteversion {anteversion_deg:g} deg (radiographic, APP)",
        f"cup size: smallest outer diameter >= socket diameter + {ream_mm:g} mm",
        "stem: head at the native head centre, axis along the proximal shaft axis, size by nearest offset",
    ]
    metrics: dict[str, float] = dict(meas)
    placed: list[ImplantPlacement] = []
    if implants:
        app = app_frame(lms)
        for sd in sides:
            native_c = _pos(lms[f"acetabulum_centre_{sd}"])
            centre = native_c - medialise_mm * SIDES[sd] * app[0]
            size, fits = choose_cup_size(meas[f"socket_radius_{sd}_mm"], ream_mm=ream_mm)
            if not fits:
                notes.append(f"{sd}: socket diameter {2 * meas[f'socket_radius_{sd}_mm']:.1f} mm exceeds the largest cup; size {size} chosen")
            axis = cup_axis(inclination_deg, anteversion_deg, sd, app)
            placed.append(ImplantPlacement(family="tha_cup", size=size, bone=f"hip_{sd}", ct_from_implant=cup_pose(centre, axis, app).tolist()))
            head = _pos(lms[f"femoral_head_centre_{sd}"])
            stem = choose_stem_size(meas[f"femoral_offset_{sd}_mm"])
            placed.append(ImplantPlacement(family="tha_stem", size=stem, bone=f"femur_{sd}", ct_from_implant=stem_pose(head, axes[f"femoral_shaft_{sd}"]).tolist()))
            metrics[f"neck_cut_below_head_{sd}_mm"] = float(neck_cut_mm if neck_cut_mm is not None else meas[f"femoral_head_radius_{sd}_mm"] + 10.0)
            metrics[f"target_inclination_{sd}_deg"] = float(inclination_deg)
            metrics[f"target_anteversion_{sd}_deg"] = float(anteversion_deg)
    plan = Plan(
        procedure="tha",
        side=sides[0] if len(sides) == 1 else "both",
        alignment="mechanical",
        landmarks=all_lms,
        axes=axes,
        implants=placed,
        metrics=metrics,
        notes="; ".join(notes),
    )
    angles, out, cuts = tha_outcomes(plan, meshes)
    for sd in sides:
        clear = out.get(f"stem_cortex_clearance_{sd}_mm")
        if clear is not None and clear < 0.0:
            notes.append(f"WARNING {sd}: the stem leaves the femur surface by {-clear:.1f} mm (too long for the femur in the CT, or too large): check it")
    return plan.model_copy(update={"angles_deg": angles, "cuts": cuts, "metrics": {**metrics, **out}, "notes": "; ".join(notes)})


def is_hip_case(bones: Mapping[str, object] | list[str] | tuple[str, ...]) -> bool:
    """True when the bones are a hip's (a hip bone and a femur of one side) and not a knee's."""
    names = set(bones)
    knee = {"femur", "tibia"} <= names
    return not knee and any(f"hip_{sd}" in names and f"femur_{sd}" in names for sd in SIDES)


# --- the editing session -------------------------------------------------------------------


class ThaSession(PlanSession):
    """A :class:`~orthonav.planning.session.PlanSession` for THA plans: every edit
    (implant move, landmark override) recomputes the acetabular / cup angles, the neck cuts,
    leg length, offsets, reaming and coverage (:func:`tha_outcomes`); undo / redo as for TKA."""

    def _recompute(self, plan: Plan):
        if plan.procedure != "tha":
            return super()._recompute(plan)
        angles, out, cuts = tha_outcomes(plan, self.meshes)
        kept_cuts = {k: c for k, c in plan.cuts.items() if not k.startswith("neck_")}
        settings = {k: v for k, v in plan.metrics.items() if k not in out}
        return plan.model_copy(update={"angles_deg": angles, "cuts": {**kept_cuts, **cuts}, "metrics": {**settings, **out}}), {}


def session_for(plan: Plan, meshes: Mapping[str, pv.PolyData], **kw):
    """The right editing session for a plan: :class:`ThaSession` for THA, else PlanSession."""
    if plan.procedure == "tha":
        return ThaSession(plan, meshes, **kw)
    return PlanSession(plan, meshes, **kw)


def load_hip_meshes(case_dir: str | Path, *, report: dict[str, float] | None = None) -> dict[str, pv.PolyData]:
    """The hip bone meshes present in ``CASE/meshes`` (largest piece of each)."""
    from .auto import load_bone_meshes

    return load_bone_meshes(case_dir, HIP_BONES, required=(), report=report)


__all__ = [
    "ThaSession",
    "acetabular_angles",
    "app_frame",
    "build_tha_plan",
    "choose_cup_size",
    "choose_stem_size",
    "cup_axis",
    "cup_coverage",
    "cup_pose",
    "find_hip_landmarks",
    "is_hip_case",
    "load_hip_meshes",
    "neck_axis",
    "neck_cut_from_stem",
    "pelvic_landmarks",
    "session_for",
    "shaft_axis",
    "socket_axis",
    "socket_sphere",
    "stem_clearance",
    "stem_pose",
    "tha_outcomes",
]
