"""Automatic hip (THA) landmarks, axes and native measures from pelvis and proximal femur
meshes (LPS mm), following docs/anatomy.md ("Hip").

Bones use TotalSegmentator class names: ``hip_left``, ``hip_right``, ``sacrum`` (optional),
``femur_left``, ``femur_right``. Methods (named in each
:class:`~orthonav.planning.schema.Landmark`):

* femoral head centre, neck axis, lesser trochanter, proximal shaft axis, neck-shaft angle
  and femoral offset: :func:`orthonav.planning.tha.proximal_femur.analyse_proximal_femur`
  (the head searched among the femoral vertices near the hip bone; the sphere refitted to
  the articular head only; a femur too short for a shaft axis keeps its head and neck and
  says which measures it could not make);
* acetabulum centre: a Hough-voted, least-squares sphere (as for the femoral head) fitted to
  the concave socket surface (outward normals point to the centre), seeded at the femoral head centre (:func:`socket_sphere`);
* acetabular axis (native): the normal of the rim plane, a robust plane fit to the rim
  surface around the socket opening, started from the axis of the socket wall's hemisphere
  of directions (:func:`socket_axis`, :func:`rim_plane_axis`);
* ASIS / pubic tubercles: extremes along the APP normal, with the APP recomputed from the
  four points until it no longer moves (Lewinnek 1978; the plane then touches all four);
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from orthonav.core.errors import InputError
from orthonav.core.vectors import perpendicular, unit
from scipy.spatial import cKDTree

from ..landmarks import (
    SurfaceSamples,
    cap_point,
    fit_sphere,
    hough_sphere_vote,
    landmark,
    surface_samples,
)
from ..meshops import signed_distance_mm, unit_sphere_directions
from ..schema import Axis, Landmark
from .alignment import SIDES, app_frame
from .proximal_femur import analyse_proximal_femur

Vec = NDArray[np.float64]

#: The hip's bones (TotalSegmentator names); a side needs its hip bone and femur, the
#: anterior pelvic plane both hip bones; the sacrum only checks the image orientation.
HIP_BONES = ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right")
ASIS_REGION_MM = 20.0
PUBIC_REGION_MM = 14.0


def _near(points: Vec, other: Vec, within_mm: float) -> NDArray[np.bool_]:
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
    a = unit(initial, "initial acetabular axis")
    for _ in range(100):
        new = unit(-wall[wall @ a < 0.0].sum(axis=0), "acetabular axis")
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
    a = unit(initial, "initial acetabular axis")
    d = s.points - centre
    dist = np.linalg.norm(d, axis=1)
    used = 0
    for _ in range(8):
        sel = (dist > radius_mm + band_mm[0]) & (dist < radius_mm + band_mm[1]) & (s.normals @ a > np.cos(np.radians(cone_deg))) & (np.abs(d @ a) < 6.0)
        if sel.sum() < 30:
            return unit(initial, "acetabular axis"), 0
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
                return unit(initial, "acetabular axis"), 0
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
    ml = unit(acetabula["left"] - acetabula["right"], "line between the acetabula")
    ant = unit(perpendicular(np.array([0.0, -1.0, 0.0]), ml), "anterior direction")
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


def find_hip_landmarks(meshes: Mapping[str, pv.PolyData], *, notes: list[str] | None = None) -> tuple[dict[str, Landmark], dict[str, Axis], dict[str, float]]:
    """Hip landmarks (docs/anatomy.md), axes and native measures from the bone meshes.

    ``notes``, when given, receives one line per femoral measure the meshes could not
    support and why (e.g. a femur that ends too close below the lesser trochanter for a
    shaft axis).

    Returns
    -------
    landmarks
        ``femoral_head_centre_<side>``, ``acetabulum_centre_<side>``, ``asis_<side>``,
        ``pubic_tubercle_<side>`` for every side whose hip bone and femur are present (the
        pelvic points need both hip bones).
    axes
        ``acetabular_<side>`` (native socket axis, out of the socket, from its centre),
        ``femoral_shaft_<side>`` (pointing proximally; only when the mesh holds enough
        shaft), ``femoral_stem_axis_<side>`` (only without a shaft axis: the PROVISIONAL
        long axis a stem is aligned to), ``femoral_neck_<side>`` (head centre -> neck base).
    measures
        ``socket_radius_<side>_mm``, ``femoral_head_radius_<side>_mm``,
        ``femoral_offset_<side>_mm`` (head centre to shaft axis; only with a shaft axis),
        ``femoral_shaft_below_lt_<side>_mm`` (shaft in the mesh below the lesser
        trochanter, as used for the shaft axis), ``acetabular_rim_points_<side>`` (rim
        surface points the axis was fitted to; 0 = fallback axis).
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
        pf = analyse_proximal_femur(meshes[f"femur_{sd}"], fs, head_mask=near_hip, name=f"femur_{sd}")
        head_c, head_r = pf.head_centre_lps_mm, pf.head_radius_mm
        lms[f"femoral_head_centre_{sd}"] = landmark(head_c, f"femur_{sd}", f"sphere fit to the articular head (r={head_r:.1f} mm, rms {pf.head_rms_mm:.2f} mm, {pf.head_points} vertices)")
        region = np.linalg.norm(hs.points - head_c, axis=1) < head_r + 20.0
        ac, ar, arms, _inliers = socket_sphere(hs, region, head_c)
        acet[sd] = ac
        lms[f"acetabulum_centre_{sd}"] = landmark(ac, f"hip_{sd}", f"sphere fit of the socket (r={ar:.1f} mm, rms {arms:.2f} mm)")
        # start: lateral and inferior in the CT's patient frame (LPS), refined from the bone
        a = socket_axis(meshes[f"hip_{sd}"], ac, ar, np.array([SIDES[sd], 0.0, -1.0]))
        a, n_rim = rim_plane_axis(hs, ac, ar, a)
        meas[f"acetabular_rim_points_{sd}"] = float(n_rim)
        how = "normal of the plane fitted to the rim surface" if n_rim else "axis of the socket wall's hemisphere of directions (no rim surface found)"
        axes[f"acetabular_{sd}"] = Axis(origin_lps_mm=tuple(ac), direction_lps=tuple(a), definition=f"acetabular axis, out of the socket: {how}")
        meas[f"socket_radius_{sd}_mm"] = ar
        meas[f"femoral_head_radius_{sd}_mm"] = head_r
        if pf.lesser_trochanter_lps_mm is not None:  # without it the length is unknown, not 0
            meas[f"femoral_shaft_below_lt_{sd}_mm"] = pf.shaft_below_lt_mm
        if pf.shaft is not None and pf.femoral_offset_mm is not None:
            axes[f"femoral_shaft_{sd}"] = pf.shaft
            meas[f"femoral_offset_{sd}_mm"] = pf.femoral_offset_mm
        else:
            axes[f"femoral_stem_axis_{sd}"] = pf.stem_axis
        axes[f"femoral_neck_{sd}"] = pf.neck
        if notes is not None:
            notes.extend(pf.missing)
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
            lms[k] = landmark(p, f"hip_{sd}", "extreme along the anterior pelvic plane normal (APP iterated to touch ASIS and pubic tubercles)")
    return lms, axes, meas


__all__ = [
    "HIP_BONES",
    "find_hip_landmarks",
    "pelvic_landmarks",
    "rim_plane_axis",
    "socket_axis",
    "socket_sphere",
]
