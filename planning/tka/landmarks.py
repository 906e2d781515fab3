"""Automatic knee (TKA) landmarks from bone surface meshes (LPS mm), following docs/anatomy.md.

Nothing assumes the CT axes or the leg side: the long axes come from principal component
analysis of each bone, proximal/distal from which end faces the other bone of the knee, the
medio-lateral direction from the femoral head offset and then from the epicondyles
themselves, and anterior as the side away from the posterior condyles. The CT's LPS axes are
only a last resort to orient a lone bone.

Methods (named in each :class:`~orthonav.planning.schema.Landmark`; the primitives are in
:mod:`orthonav.planning.landmarks`):

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

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from orthonav.core.errors import InputError
from orthonav.core.vectors import perpendicular, unit

from ..landmarks import (
    CAP_DEPTH_MM,
    SurfaceSamples,
    anatomical_axis,
    cap_point,
    femoral_head_sphere,
    landmark,
    principal_axis,
    surface_samples,
)
from ..schema import Landmark
from .alignment import LimbFrames, limb_frames

Vec = NDArray[np.float64]

#: The knee's bones: femur and tibia are required, fibula (lateral malleolus) and patella
#: (side check) are used when present.
KNEE_BONES = ("femur", "tibia", "fibula", "patella")
REQUIRED_BONES = ("femur", "tibia")
MALLEOLUS_REGION_MM = 40.0


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
    out["femoral_head_centre"] = landmark(head_c, "femur", f"sphere fit (r={head_r:.1f} mm, rms {head_rms:.2f} mm)")

    # Medial: the head lies medial of the shaft. Refine with the distal femur's widest direction.
    distal = fh < f_lo + 0.12 * f_len
    medial = unit(perpendicular(head_c - f_c, f_ax), "femoral head offset from the shaft")
    dp = fs.points[distal]
    _, wide = principal_axis(dp - np.outer((dp - f_c) @ f_ax, f_ax), fs.area[distal])
    wide = unit(perpendicular(wide, f_ax), "distal femoral width direction")
    medial = wide if np.dot(wide, medial) >= 0 else -wide

    mech = f_ax
    for _ in range(4):
        me = cap_point(fs, medial, distal)
        le = cap_point(fs, -medial, distal)
        fkc = 0.5 * (me + le)
        mech = unit(head_c - fkc, "femoral mechanical axis")
        medial = unit(perpendicular(me - le, mech), "transepicondylar axis")
        fhm = fs.points @ mech
        distal = fhm < float((fs.points @ mech).min()) + 0.12 * f_len
    out["medial_epicondyle"] = landmark(me, "femur", "extreme of distal femur along medio-lateral direction")
    out["lateral_epicondyle"] = landmark(le, "femur", "extreme of distal femur along medio-lateral direction")
    out["femoral_knee_centre"] = landmark(fkc, "femur", "midpoint of epicondyles")

    # Femoral frame. Anterior follows from the leg's chirality: for a right leg (x medial,
    # y posterior, z proximal is right-handed) posterior = proximal x medial; mirrored for a
    # left leg. The side is given, or read from the lateral direction in LPS (patient right
    # is -x), and cross-checked against the patella when there is one.
    ml = (fs.points - fkc) @ medial
    near_joint = fs.points @ mech < float((fs.points @ mech).min()) + 35.0
    leg = side if side is not None else ("right" if medial[0] > 0 else "left")
    if leg not in ("left", "right"):
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    posterior = unit(np.cross(mech, medial), "posterior direction") if leg == "right" else unit(np.cross(medial, mech), "posterior direction")
    ant_guess = -posterior
    if "patella" in meshes and meshes["patella"].n_points > 0:
        pat = np.asarray(meshes["patella"].points).mean(axis=0)
        if np.dot(pat - fkc, ant_guess) <= 0:
            raise InputError(None, f"the patella lies posterior of the knee for a {leg} leg: the side is wrong or the bones are mislabelled")
    med_side = near_joint & (ml > 0)
    lat_side = near_joint & (ml < 0)
    pmc = cap_point(fs, -ant_guess, med_side)
    plc = cap_point(fs, -ant_guess, lat_side)
    out["posterior_medial_condyle"] = landmark(pmc, "femur", "most posterior point of medial condyle in femoral frame")
    out["posterior_lateral_condyle"] = landmark(plc, "femur", "most posterior point of lateral condyle in femoral frame")
    out["distal_medial_condyle"] = landmark(cap_point(fs, -mech, med_side), "femur", "most distal point of medial condyle along mechanical axis")
    out["distal_lateral_condyle"] = landmark(cap_point(fs, -mech, lat_side), "femur", "most distal point of lateral condyle along mechanical axis")

    # Tibia.
    th = (ts.points - t_c) @ t_ax
    t_len = t_hi - t_lo
    t_med = unit(perpendicular(medial, t_ax), "tibial medial direction")
    tib_top = th > t_hi - 25.0
    up_facing = tib_top & (ts.normals @ t_ax > 0.6)
    n_p = plateau_normal(ts, up_facing, t_ax)
    plateau = _plateau_centres(ts, up_facing, n_p, t_med, fkc)
    mpc, lpc, spine = plateau
    out["medial_plateau_centre"] = landmark(mpc, "tibia", "deepest point of medial plateau concavity along the plateau normal")
    out["lateral_plateau_centre"] = landmark(lpc, "tibia", "deepest point of lateral plateau concavity along the plateau normal")
    tkc = 0.5 * (mpc + lpc)
    out["tibial_knee_centre"] = landmark(tkc, "tibia", "midpoint of plateau centres")
    out["tibial_spine"] = landmark(spine, "tibia", "highest point between the plateaus")

    # Ankle: malleoli if the ankle is in the field of view, else along the shaft axis.
    ankle_in_view = t_len > 250.0
    t_mech = t_ax
    t_lat_dir = unit(perpendicular(lpc - mpc, t_mech), "plateau line")
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
            t_mech = unit(tkc - ankle, "tibial mechanical axis")
            t_lat_dir = unit(perpendicular(lpc - mpc, t_mech), "plateau line")
        out["medial_malleolus"] = landmark(mm, "tibia", "most medial point of distal tibia (40 mm)")
        out["lateral_malleolus"] = landmark(lm_, "fibula" if "fibula" in meshes else "tibia", lat_method)
        out["ankle_centre"] = landmark(ankle, "tibia", "midpoint of malleoli")
    else:
        axis = anatomical_axis(meshes["tibia"], ts.points[np.argmin(th)], t_ax, t_len, (0.2, 0.8))
        length = tibial_length_mm if tibial_length_mm is not None else 0.8 * float(np.linalg.norm(head_c - fkc))
        ankle = tkc - length * np.asarray(axis.direction_lps)
        out["ankle_centre"] = landmark(ankle, "tibia", f"tibial shaft axis extended {length:.0f} mm (ankle out of view)")
        t_mech = unit(tkc - ankle, "tibial mechanical axis")

    # Medial plateau antero-posterior rim points in the tibial sagittal plane (for slope).
    t_lat = unit(perpendicular(lpc - mpc, t_mech), "plateau line")
    t_ant = np.cross(t_mech, t_lat)
    t_ant = t_ant if np.dot(t_ant, unit(np.cross(mech, -medial), "femoral anterior direction")) >= 0 else -t_ant
    fr = limb_frames(out)  # the knee's frames, once: the femoral anterior and the side check
    fa = fr.femur_anterior
    t_ant = t_ant if np.dot(t_ant, fa) >= 0 else -t_ant
    # The plateau plane's antero-posterior tangent through the medial plateau centre (slope).
    # docs/anatomy.md: the MEDIAL plateau's tangent, so the plane is fitted to the medial
    # compartment only (the lateral plateau's slope differs in real knees).
    medial_up = up_facing & ((ts.points - tkc) @ t_med > 5.0)
    n_med = plateau_normal(ts, medial_up, t_ax) if medial_up.sum() >= 30 else n_p
    tangent = unit(np.cross(n_med, t_lat), "medial plateau tangent")  # the medial plateau plane's line in the sagittal plane
    tangent = tangent if np.dot(tangent, t_ant) >= 0 else -tangent
    out["medial_plateau_anterior"] = landmark(mpc + 15.0 * tangent, "tibia", "medial plateau plane fit: 15 mm anterior of medial plateau centre along its AP tangent")
    out["medial_plateau_posterior"] = landmark(mpc - 15.0 * tangent, "tibia", "medial plateau plane fit: 15 mm posterior of medial plateau centre along its AP tangent")

    if side is not None:
        _check_side(side, fr)
    return out


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


def _check_side(side: str, fr: LimbFrames) -> None:
    """Raise if ``side`` contradicts the bones' chirality (``fr``: the knee's frames) in the LPS frame."""
    if side not in ("left", "right"):
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    # Patient right is LPS -x: for a right leg the lateral direction points to -x.
    found = "right" if fr.femur_lateral[0] < 0 else "left"
    if found != side:
        raise InputError(None, f"side {side!r} given but the bones look like a {found} leg (lateral points to LPS {'-x' if found == 'right' else '+x'})")


def infer_side(lms: Mapping[str, Landmark], *, frames: LimbFrames | None = None) -> str:
    """'right' or 'left' from the lateral direction in LPS (patient right = -x); ``frames``:
    the landmarks' :func:`~orthonav.planning.tka.alignment.limb_frames` when already known."""
    fr = frames if frames is not None else limb_frames(lms)
    return "right" if fr.femur_lateral[0] < 0 else "left"


__all__ = ["KNEE_BONES", "MALLEOLUS_REGION_MM", "REQUIRED_BONES", "find_landmarks", "infer_side", "plateau_normal"]
