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
* extreme points ("most distal", "most medial", ...): the apex of a paraboloid fitted to the
  surface cap within 3 mm of the extreme along the direction
  (:func:`~orthonav.planning.landmarks.cap_point`);
* plateau centres: the deepest place of each compartment's concavity along the plateau
  normal, a soft minimum of the height averaged over 4 mm (it moves continuously on a shallow
  real plateau), at the height of a quadratic fitted to the surface there;
* anatomical axes: best-fit line through the centroids of shaft cross-sections (docs/anatomy.md).

Partial CT stacks (docs/anatomy.md): a femur without its head or a tibia without the ankle
gives no head / ankle centre (reported as not measured, never extrapolated) and a labelled
stand-in on a stated planning axis; :func:`find_tibial_landmarks` works from a tibia alone.
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
    femoral_head_sphere,
    fit_line,
    landmark,
    plane_basis,
    principal_axis,
    section_centroids,
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
#: A bone spanning less than this along its long axis (mm) is cut short by the CT: the
#: femoral head / the ankle is then not in the data (an adult femur is about 400-480 mm, a
#: tibia about 330-400 mm long; a knee stack holds 60-100 mm of each).
HEAD_MIN_SPAN_MM = 250.0
ANKLE_MIN_SPAN_MM = 250.0
#: Where the shaft of a cut-short bone starts, from the joint end of the data (mm): above
#: the condyles and epicondyles (femur), below the plateau and tibial tuberosity (tibia).
PARTIAL_SHAFT_START_MM = {"femur": 45.0, "tibia": 35.0}
#: The distal femur (epicondyles, condyles) of a femur without its head: the distal 55 mm
#: (0.12 x an adult femoral length of about 450 mm, as for a whole femur).
PARTIAL_DISTAL_FEMUR_MM = 55.0
#: The assumed angle (deg) between the femoral anatomical (shaft) axis and the mechanical
#: axis when the femoral head is not in the data: the population mean of about 6 deg
#: (Moreland, Bassett & Hanker 1987, J Bone Joint Surg Am 69(5):745-749), applied as a
#: valgus correction and written into the plan's ``assumptions``.
DEFAULT_VALGUS_CORRECTION_DEG = 6.0


def _long_axis(s: SurfaceSamples, towards: Vec) -> tuple[Vec, Vec, float, float]:
    """(centroid, unit axis pointing towards ``towards``, min and max projection)."""
    c, d = principal_axis(s.points, s.area)
    if np.dot(d, towards - c) < 0:
        d = -d
    h = (s.points - c) @ d
    return c, d, float(h.min()), float(h.max())


def _medial_without_head(meshes: Mapping[str, pv.PolyData], prox: Vec, knee_lps: Vec, side: str | None) -> Vec:
    """A unit vector on the medial side (LPS), perpendicular to ``prox``, when the femoral
    head is not in the data: away from the fibula (always lateral), else from the side and
    the patella (anterior) by the leg's chirality."""
    if "fibula" in meshes and meshes["fibula"].n_points > 0:
        fib = np.asarray(meshes["fibula"].points).mean(axis=0)
        return unit(perpendicular(knee_lps - fib, prox), "knee centre offset from the fibula")
    if side in ("left", "right") and "patella" in meshes and meshes["patella"].n_points > 0:
        ant = unit(perpendicular(np.asarray(meshes["patella"].points).mean(axis=0) - knee_lps, prox), "patella offset")
        med = np.cross(-ant, prox)  # right leg: medial = posterior x proximal
        return unit(med if side == "right" else -med, "medial direction")
    raise InputError(None, "medial and lateral cannot be told apart: the femoral head is not in the data, and there is no fibula "
                           "mesh (nor a side with a patella)")


def find_landmarks(meshes: Mapping[str, pv.PolyData], *, side: str | None = None, report: dict[str, dict[str, str]] | None = None) -> dict[str, Landmark]:
    """Knee landmarks of docs/anatomy.md from bone meshes.

    Parameters
    ----------
    meshes
        ``{"femur": ..., "tibia": ..., "fibula": ... (optional)}`` surfaces in LPS mm.
    side
        'left' / 'right' / None. Not needed for the geometry (medial/lateral come from the
        femoral head offset); used only to cross-check and raise if it contradicts the bones.
    report
        If given, receives ``"not_measured"`` (``{measure: why}``: the femoral head / the
        ankle when the CT stops short of them) and ``"assumptions"`` (``{name: value and
        why}``: the planning axes that then stand in for the mechanical axes).

    Partial stacks (docs/anatomy.md): a femur spanning less than :data:`HEAD_MIN_SPAN_MM`
    has no femoral head in the data; the landmark ``femoral_axis_reference`` (a point on the
    distal femoral shaft axis turned by :data:`DEFAULT_VALGUS_CORRECTION_DEG`) then stands in
    for the head centre, and ``femoral_head_centre`` is absent. Likewise
    ``tibial_axis_reference`` (proximal tibial shaft axis) for a tibia without the ankle.
    Nothing is extrapolated: the angles that need the real centres are not computed.

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
    _, t_ax, _, _ = _long_axis(ts, fs.points.mean(axis=0))  # pointing proximally
    f_len = f_hi - f_lo
    fh = (fs.points - f_c) @ f_ax
    # The limb's direction from both bones together (robust for short pieces, whose own
    # principal axis may be their width): is the femoral head / the ankle in the data?
    _, limb_ax = principal_axis(np.r_[fs.points, ts.points], np.r_[fs.area, ts.area])
    limb_ax = limb_ax if np.dot(limb_ax, fs.points.mean(axis=0) - ts.points.mean(axis=0)) > 0 else -limb_ax
    f_span = float(np.ptp(fs.points @ limb_ax))
    head_in_view = f_span >= HEAD_MIN_SPAN_MM
    not_measured: dict[str, str] = {}
    assumed: dict[str, str] = {}

    if head_in_view:
        # Femoral head: sphere in the proximal 25 %.
        head_c, head_r, head_rms = femoral_head_sphere(fs, fh > f_hi - 0.25 * f_len)
        out["femoral_head_centre"] = landmark(head_c, "femur", f"sphere fit (r={head_r:.1f} mm, rms {head_rms:.2f} mm)")
        distal_mm = 0.12 * f_len
        # Medial: the head lies medial of the shaft. Refine with the distal femur's widest direction.
        distal = fh < f_lo + distal_mm
        medial = unit(perpendicular(head_c - f_c, f_ax), "femoral head offset from the shaft")
    else:
        # A knee stack: no femoral head. The femoral planning axis is the shaft axis of the
        # femur in the data turned by the default valgus correction (an assumption, stated).
        joint_top = float((fs.points @ limb_ax).max() - (ts.points @ limb_ax).max())
        not_measured["femoral_head_centre"] = (
            f"not measured: the CT ends {joint_top:.0f} mm above the knee joint (top of the tibia); the femoral "
            "head (about 400 mm above it in an adult) is needed")
        f_ax = partial_shaft_axis(meshes["femur"], fs, limb_ax, joint_gap_mm=PARTIAL_SHAFT_START_MM["femur"], joint_at_top=False)
        fh = fs.points @ f_ax
        f_lo = float(fh.min())
        distal_mm = PARTIAL_DISTAL_FEMUR_MM
        distal = fh < f_lo + distal_mm
        medial = _medial_without_head(meshes, f_ax, fs.points[distal].mean(axis=0), side)
    dp = fs.points[distal]
    _, wide = principal_axis(dp - np.outer((dp - f_c) @ f_ax, f_ax), fs.area[distal])
    wide = unit(perpendicular(wide, f_ax), "distal femoral width direction")
    medial = wide if np.dot(wide, medial) >= 0 else -wide

    mech = f_ax
    for _ in range(4):
        me = cap_point(fs, medial, distal)
        le = cap_point(fs, -medial, distal)
        fkc = 0.5 * (me + le)
        if head_in_view:
            mech = unit(head_c - fkc, "femoral mechanical axis")
        else:
            med = unit(perpendicular(me - le, f_ax), "transepicondylar axis")
            v = np.radians(DEFAULT_VALGUS_CORRECTION_DEG)
            mech = unit(np.cos(v) * f_ax + np.sin(v) * med, "femoral planning axis")
        medial = unit(perpendicular(me - le, mech), "transepicondylar axis")
        fhm = fs.points @ mech
        distal = fhm < float((fs.points @ mech).min()) + distal_mm
    if not head_in_view:
        top = float((fs.points @ mech).max()) - 2.0
        out["femoral_axis_reference"] = landmark(
            fkc + (top - float(fkc @ mech)) * mech, "femur",
            f"ASSUMED: point on the femoral planning axis at the top of the data: the distal femoral shaft axis (section "
            f"centroids from {PARTIAL_SHAFT_START_MM['femur']:.0f} mm above the joint) turned {DEFAULT_VALGUS_CORRECTION_DEG:.0f} deg "
            "medially (default valgus correction), standing in for the femoral head centre")
        assumed["femoral_planning_axis"] = (
            f"valgus correction {DEFAULT_VALGUS_CORRECTION_DEG:.1f} deg: the femoral frame (sagittal orientation of the distal cut, "
            f"component flexion and rotation plane) uses the femoral shaft axis of the data turned {DEFAULT_VALGUS_CORRECTION_DEG:.1f} deg "
            "medially (population mean anatomical-mechanical angle, Moreland 1987), because the femoral head is not in the CT")
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

    # Tibia: the plateau split about the femoral knee centre, anterior from the femur's frame.
    fr = limb_frames(out)  # the femur's frames (the tibia's landmarks are not needed for them)
    t_med = unit(perpendicular(medial, t_ax), "tibial medial direction")
    if not head_in_view or float(np.ptp(ts.points @ limb_ax)) < ANKLE_MIN_SPAN_MM:
        # A short tibia's own principal axis may be its width: start from the limb's.
        t_ax = limb_ax
        t_med = unit(perpendicular(medial, t_ax), "tibial medial direction")
    tib, tib_missing = tibial_landmarks(meshes, ts, t_ax, t_med, split_lps=fkc, anterior_lps=fr.femur_anterior)
    out.update(tib)
    not_measured.update(tib_missing)
    if "tibial_axis_reference" in tib:
        assumed["tibial_planning_axis"] = (
            "the tibial frame (the tibial cut's slope, the tray's plane) uses the proximal tibial shaft axis of the data, not the "
            "ankle centre, which is not in the CT")
    fr = limb_frames(out)
    if report is not None:
        report["not_measured"] = not_measured
        report["assumptions"] = assumed
    if side is not None:
        _check_side(side, fr)
    return out


def find_tibial_landmarks(meshes: Mapping[str, pv.PolyData], *, side: str | None = None, report: dict[str, object] | None = None) -> dict[str, Landmark]:
    """The tibial landmarks of docs/anatomy.md from a tibia without a femur (LPS mm).

    For a CT or a surface set holding the tibia (and fibula / patella) but no femur, e.g. a
    leg or ankle study. The directions come from the anatomy: the long axis from principal
    component analysis, proximal towards the patella (else the wider end, the plateau),
    the medio-lateral direction as the plateau's widest direction, lateral towards the
    fibula (else from ``side`` and the patella), anterior towards the patella (else from
    ``side`` by the leg's chirality).

    Parameters
    ----------
    meshes
        ``{"tibia": ..., "fibula": ..., "patella": ...}`` (tibia required), LPS mm.
    side
        'left' / 'right' / None; when given, checked against the bones.
    report
        If given, receives ``"side"`` (the side the bones show, by chirality) and
        ``"not_measured"`` (``{landmark: why}``: the ankle when the tibia is cut short).

    Raises
    ------
    InputError
        No tibia; the directions cannot be told (no fibula, and no side with a patella); a
        ``side`` that contradicts the bones.
    """
    if "tibia" not in meshes:
        raise InputError(None, f"tibial landmarks need a 'tibia' mesh (got {sorted(meshes)})")
    if side is not None and side not in ("left", "right"):
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    ts = surface_samples(meshes["tibia"], name="tibia")
    c, ax = principal_axis(ts.points, ts.area)
    h = ts.points @ ax
    has_patella = "patella" in meshes and meshes["patella"].n_points > 0
    if has_patella:
        pat = np.asarray(meshes["patella"].points).mean(axis=0)
        ax = ax if np.dot(pat - c, ax) > 0 else -ax
    else:  # the plateau end is the wider one
        def spread(sel: NDArray[np.bool_]) -> float:
            q = ts.points[sel]
            return float(np.linalg.norm(_perp_rows(q - q.mean(axis=0), ax), axis=1).mean())

        ax = ax if spread(h > h.max() - 30.0) >= spread(h < h.min() + 30.0) else -ax
    h = ts.points @ ax
    top = h > h.max() - 25.0
    q = _perp_rows(ts.points[top] - c, ax)
    _, wide = principal_axis(q, ts.area[top])
    wide = unit(perpendicular(wide, ax), "plateau width direction")
    up = top & (ts.normals @ ax > 0.6)
    split = (ts.points[up] * ts.area[up, None]).sum(axis=0) / ts.area[up].sum() if up.any() else ts.points[top].mean(axis=0)
    medial = _medial_without_head(meshes, ax, split, side)
    t_med = wide if np.dot(wide, medial) >= 0 else -wide
    if has_patella:
        ant = unit(perpendicular(pat - split, ax), "patella offset")
    elif side is not None:
        ant = np.cross(t_med, ax) if side == "right" else -np.cross(t_med, ax)  # right leg: medial x proximal = anterior
    else:
        raise InputError(None, "anterior cannot be told for a tibia without a patella mesh or a given side")
    found = "right" if np.dot(np.cross(t_med, -ant), ax) > 0 else "left"  # right leg: medial x posterior = proximal
    if side is not None and side != found:
        raise InputError(None, f"side {side!r} given but the tibia looks like a {found} leg (medial, anterior and proximal directions)")
    out, missing = tibial_landmarks(meshes, ts, ax, t_med, split_lps=split, anterior_lps=ant)
    if report is not None:
        report["side"] = found
        report["not_measured"] = missing
    return out


def tibial_landmarks(
    meshes: Mapping[str, pv.PolyData], ts: SurfaceSamples, t_ax: Vec, t_med: Vec, *, split_lps: Vec, anterior_lps: Vec,
) -> tuple[dict[str, Landmark], dict[str, str]]:
    """The tibial landmarks of docs/anatomy.md (plateau centres, tibial knee centre, spine,
    malleoli, ankle centre, medial plateau rim points) and what could not be measured.

    Parameters
    ----------
    meshes
        The bone meshes (``tibia`` required, ``fibula`` for the lateral malleolus), LPS mm.
    ts
        The tibia's :func:`~orthonav.planning.landmarks.surface_samples`.
    t_ax
        Unit long axis of the tibia pointing proximally (LPS).
    t_med
        Unit medial direction, roughly perpendicular to ``t_ax`` (LPS).
    split_lps
        A point between the two compartments (LPS mm): the femoral knee centre, or for a
        lone tibia the centre of its proximal articular surface.
    anterior_lps
        A vector pointing anteriorly (only its side is used).

    Returns
    -------
    (landmarks, not_measured)
        ``{name: Landmark}``; ``{name: reason}`` for the ankle landmarks when the ankle is
        outside the meshes (then the landmark ``tibial_axis_reference``, a point on the
        proximal tibial shaft axis at the distal end of the data, stands in for the ankle
        centre: see docs/anatomy.md, partial stacks).
    """
    out: dict[str, Landmark] = {}
    missing: dict[str, str] = {}
    th = ts.points @ t_ax
    t_hi, t_lo = float(th.max()), float(th.min())
    t_len = t_hi - t_lo
    tib_top = th > t_hi - 25.0
    up_facing = tib_top & (ts.normals @ t_ax > 0.6)
    n_p = plateau_normal(ts, up_facing, t_ax)
    mpc, lpc, spine = _plateau_centres(ts, up_facing, n_p, t_med, split_lps)
    out["medial_plateau_centre"] = landmark(mpc, "tibia", "deepest place of medial plateau concavity along the plateau normal (soft minimum)")
    out["lateral_plateau_centre"] = landmark(lpc, "tibia", "deepest place of lateral plateau concavity along the plateau normal (soft minimum)")
    tkc = 0.5 * (mpc + lpc)
    out["tibial_knee_centre"] = landmark(tkc, "tibia", "midpoint of plateau centres")
    out["tibial_spine"] = landmark(spine, "tibia", "highest point between the plateaus along the plateau normal (0.5 mm cap)")

    # Ankle: the malleoli when the ankle is in the data; never extrapolated.
    t_mech = t_ax
    t_lat_dir = unit(perpendicular(lpc - mpc, t_mech), "plateau line")
    if t_len > ANKLE_MIN_SPAN_MM:
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
        below = float(tkc @ t_ax) - t_lo
        why = (f"not measured: the CT ends {below:.0f} mm below the knee joint line (tibial knee centre); the ankle centre needs "
               f"the malleoli (the whole tibia, about 350 mm, is needed); not extrapolated")
        for name in ("ankle_centre", "medial_malleolus", "lateral_malleolus"):
            missing[name] = why
        t_mech = partial_shaft_axis(meshes["tibia"], ts, t_ax, joint_gap_mm=PARTIAL_SHAFT_START_MM["tibia"], joint_at_top=True)
        ref = tkc + (t_lo + 2.0 - float(tkc @ t_mech)) * t_mech  # on the axis, at the distal end of the data
        out["tibial_axis_reference"] = landmark(
            ref, "tibia",
            f"ASSUMED: point on the proximal tibial shaft axis (section centroids {PARTIAL_SHAFT_START_MM['tibia']:.0f} mm below the "
            f"plateau to the end of the data) standing in for the ankle centre in the tibial frame; not a measured axis")
        t_mech = unit(tkc - ref, "tibial planning axis")

    # The plateau plane's antero-posterior tangent through the medial plateau centre (slope).
    # docs/anatomy.md: the MEDIAL plateau's tangent, so the plane is fitted to the medial
    # compartment only (the lateral plateau's slope differs in real knees).
    t_lat = unit(perpendicular(lpc - mpc, t_mech), "plateau line")
    t_ant = np.cross(t_mech, t_lat)
    t_ant = t_ant if np.dot(t_ant, anterior_lps) >= 0 else -t_ant
    medial_up = up_facing & ((ts.points - tkc) @ t_med > 5.0)
    n_med = plateau_normal(ts, medial_up, t_ax) if medial_up.sum() >= 30 else n_p
    tangent = unit(np.cross(n_med, t_lat), "medial plateau tangent")  # the medial plateau plane's line in the sagittal plane
    tangent = tangent if np.dot(tangent, t_ant) >= 0 else -tangent
    out["medial_plateau_anterior"] = landmark(mpc + 15.0 * tangent, "tibia", "medial plateau plane fit: 15 mm anterior of medial plateau centre along its AP tangent")
    out["medial_plateau_posterior"] = landmark(mpc - 15.0 * tangent, "tibia", "medial plateau plane fit: 15 mm posterior of medial plateau centre along its AP tangent")
    return out, missing


def partial_shaft_axis(mesh: pv.PolyData, s: SurfaceSamples, prox_dir: Vec, *, joint_gap_mm: float, joint_at_top: bool) -> Vec:
    """Unit shaft axis (pointing like ``prox_dir``, proximally) of a bone cut short by the
    CT: the line through the centroids of 9 cross-sections from ``joint_gap_mm`` away from
    the joint end of the data to 3 mm before its cut end, refined twice (each pass slices
    perpendicular to the previous axis). ``joint_at_top``: the joint is at the proximal end
    of the data (a tibia) rather than the distal end (a femur).

    Raises
    ------
    InputError
        Fewer than 10 mm of bone beyond ``joint_gap_mm`` (no shaft to fit an axis to).
    """
    d = unit(prox_dir, "bone long axis")
    for _ in range(3):
        h = s.points @ d
        lo, hi = float(h.min()), float(h.max())
        span = hi - lo - joint_gap_mm - 3.0
        if span < 10.0:
            raise InputError(None, f"only {hi - lo:.0f} mm of bone in the data: no shaft beyond {joint_gap_mm:.0f} mm of the joint to fit an axis")
        first = 3.0 if joint_at_top else joint_gap_mm
        frac = (first + np.linspace(0.0, 1.0, 9) * span) / (hi - lo)
        cents = section_centroids(mesh, s.points[np.argmin(h)], d, frac, hi - lo)
        _, d = fit_line(cents, d)
    return unit(d, "shaft axis")


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

    Each compartment's centre is the deepest place of its concavity relative to the
    plateau plane (lowest along the plateau normal ``n_p``, :func:`_concavity_centre`
    starting from the compartment's area centroid); the spine tip is the highest point
    between them.
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
        centres.append(_concavity_centre(q, w, n_p, c))
    # The spine tip: the extreme cap along the plateau normal between the compartments
    # (sub-vertex, as every extreme point; the single highest vertex moved 2.5 mm under
    # 0.3 mm surface noise).
    mid = np.zeros(len(ts.points), bool)
    mid[idx[np.abs(ml) < 8.0]] = True
    spine = cap_point(ts, n_p, mid) if mid.any() else 0.5 * (centres[0] + centres[1])
    return centres[0], centres[1], spine


#: Radius (mm, in the plateau plane) over which the height is averaged to find where the
#: dish is deepest.
PLATEAU_SMOOTH_MM = 4.0
#: Softness (mm of smoothed height) of the soft minimum that places a plateau centre: each
#: place weighs exp(-(height - lowest) / this). A hard minimum (the area within 0.1 mm of the
#: lowest smoothed height, then the deepest 0.5 mm cap) jumped across a shallow dish: 1.7 mm
#: under 0.3 mm noise on the knee phantom, 2.7 mm re-meshed on the Visible Human tibia; soft,
#: <= 0.65 / 0.9 mm, and 0.25 / 0.34 mm from the phantom's exact dish apexes
#: (tests/test_plan_stability_knee.py). Softer (1 mm) drifts towards the compartment's middle
#: (2.7 mm from the phantom's apex).
PLATEAU_SOFT_MM = 0.3
#: Radius (mm, in the plateau plane) of the patch a quadratic height is fitted to, at the
#: centre's place, for its height (at least :data:`PLATEAU_FIT_MIN_POINTS` points).
PLATEAU_FIT_MM = 5.0
PLATEAU_FIT_MIN_POINTS = 40


def _concavity_centre(q: Vec, w: Vec, n_p: Vec, start: Vec, *, radius_mm: float = 12.0) -> Vec:
    """The deepest place of a compartment's concavity along ``n_p`` (LPS mm), noise-robust.

    1. Heights along ``n_p`` within ``radius_mm`` (in the plateau plane) of ``start``, each
       averaged (area-weighted) over :data:`PLATEAU_SMOOTH_MM` about its vertex.
    2. The place: the centroid of that surface weighted by area times
       exp(-(smoothed height - lowest) / :data:`PLATEAU_SOFT_MM`), a soft minimum. On a
       symmetric dish it is the apex; on a shallow or flat real plateau it moves continuously
       with the surface instead of jumping between near-equal hollows.
    3. Its height: a quadratic height field fitted (area-weighted least squares) to the
       surface within :data:`PLATEAU_FIT_MM` of the place, evaluated there: the surface's
       height at the place, not its noisiest vertex (this is what the tibial resection
       depth is measured from).

    A paraboloid's apex (:func:`~orthonav.planning.landmarks.quadric_apex`, as for the
    extreme points) is not used for the place: a real lateral plateau is flat or convex from
    front to back, and its apex moved up to 6.9 mm under 0.3 mm noise on the Visible Human tibia.
    """
    uv = _perp_rows(q - start, n_p)
    core = np.linalg.norm(uv, axis=1) < radius_mm
    if not core.any():
        raise InputError(None, f"no tibial plateau surface within {radius_mm:.0f} mm of the compartment's centre; is the tibia's proximal end in the CT?")
    qc, wc, uvc = q[core], w[core] + 1e-12, uv[core]
    h = qc @ n_p
    nbrs = cKDTree(uvc).query_ball_point(uvc, PLATEAU_SMOOTH_MM)
    hs = np.array([float((h[n] * wc[n]).sum() / wc[n].sum()) for n in nbrs])
    soft = wc * np.exp(-(hs - hs.min()) / PLATEAU_SOFT_MM)
    where = (uvc * soft[:, None]).sum(axis=0) / soft.sum()  # in the plateau plane, from start
    dist = np.linalg.norm(uvc - where, axis=1)
    near = dist <= max(PLATEAU_FIT_MM, float(np.sort(dist)[min(len(dist), PLATEAU_FIT_MIN_POINTS) - 1]))
    e1, e2 = plane_basis(n_p)
    a, b = (uvc[near] - where) @ e1, (uvc[near] - where) @ e2
    hn, wn = h[near], wc[near]
    A = np.c_[np.ones_like(a), a, b, a * a, a * b, b * b]
    sw = np.sqrt(wn)
    height = float(np.linalg.lstsq(A * sw[:, None], hn * sw, rcond=None)[0][0]) if near.sum() >= 6 else np.nan
    if not (np.isfinite(height) and hn.min() - 0.5 <= height <= hn.max()):  # an ill-posed fit: the patch's mean height
        height = float((hn * wn).sum() / wn.sum())
    on_plane = start - float(start @ n_p) * n_p
    return on_plane + where + height * n_p


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


__all__ = [
    "ANKLE_MIN_SPAN_MM",
    "DEFAULT_VALGUS_CORRECTION_DEG",
    "HEAD_MIN_SPAN_MM",
    "KNEE_BONES",
    "MALLEOLUS_REGION_MM",
    "PARTIAL_DISTAL_FEMUR_MM",
    "PARTIAL_SHAFT_START_MM",
    "REQUIRED_BONES",
    "find_landmarks",
    "find_tibial_landmarks",
    "infer_side",
    "partial_shaft_axis",
    "plateau_normal",
    "tibial_landmarks",
]
