"""Bone cut planes for total knee arthroplasty from landmarks.

Mechanical alignment (Insall, Binazzi & Soudry 1985, Clin Orthop 192:13-22; the defaults
of docs/anatomy.md): the distal femoral cut is perpendicular to the femoral mechanical
axis, ``resection_mm`` proximal to the more distal condyle; the proximal tibial cut is
perpendicular to the tibial mechanical axis in the coronal plane with ``slope_deg``
posterior slope, ``resection_mm`` distal to the lateral plateau centre along the axis.

Kinematic alignment (Howell et al. 2013, Orthop Clin North Am 44(1):1-10, calipered
technique): the cuts are parallel to the native joint lines, removing ``resection_mm`` from
each distal condyle and from the lateral plateau (so the native LDFA, MPTA and slope are
kept).

Every :class:`CutPlane` normal points from the kept bone into the removed part; resection
depths (``depths_mm``) are measured from each reference landmark to the plane along the
bone's mechanical axis (positive = that landmark is removed).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray
from orthonav.core.errors import InputError

from ..landmarks import position
from ..schema import CutPlane
from .alignment import LimbFrames, limb_frames

Vec = NDArray[np.float64]

FEMUR_CUT_REFERENCES = ("distal_medial_condyle", "distal_lateral_condyle")
TIBIA_CUT_REFERENCES = ("medial_plateau_centre", "lateral_plateau_centre")


def depth_along_axis_mm(point_lps_mm: Vec, plane_point: Vec, plane_normal: Vec, axis: Vec) -> float:
    """Distance (mm) from ``point`` to the plane measured along ``axis`` (unit), > 0 when the
    point is on the removed side (the side ``plane_normal`` points to)."""
    denom = abs(float(np.dot(plane_normal, axis)))
    if denom < 1e-6:
        raise InputError(None, "cut plane is parallel to the bone axis: depth along the axis undefined")
    return float(np.dot(plane_normal, point_lps_mm - plane_point)) / denom


def _need(landmarks: Mapping[str, object], names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if n not in landmarks]
    if missing:
        raise InputError(None, f"{what} needs landmarks {', '.join(missing)}")


def _need_axes(landmarks: Mapping[str, object]) -> None:
    """Raise unless the landmarks define both cuts: each bone's axis end (the femoral head
    centre, or the stated ``femoral_axis_reference`` of a knee stack; the ankle centre or
    ``tibial_axis_reference``) and the cut references."""
    head = "femoral_head_centre" if "femoral_head_centre" in landmarks or "femoral_axis_reference" not in landmarks else "femoral_axis_reference"
    ankle = "ankle_centre" if "ankle_centre" in landmarks or "tibial_axis_reference" not in landmarks else "tibial_axis_reference"
    _need(landmarks, (head, "medial_epicondyle", "lateral_epicondyle", *FEMUR_CUT_REFERENCES), "the distal femoral cut")
    _need(landmarks, (ankle, *TIBIA_CUT_REFERENCES), "the proximal tibial cut")


def _check_depth(value: float, name: str) -> float:
    if not np.isfinite(value) or value < 0.0 or value > 40.0:
        raise InputError(None, f"{name} must be between 0 and 40 mm, got {value}")
    return float(value)


def femoral_cut_from_normal(landmarks: Mapping[str, object], normal: Vec, *, resection_mm: float, frames: LimbFrames | None = None) -> CutPlane:
    """Distal femoral cut with a given (unit, distal-pointing) normal, ``resection_mm``
    proximal to the most distal reference condyle (measured along the normal). ``frames``:
    the landmarks' :func:`~orthonav.planning.tka.alignment.limb_frames` when known."""
    fr = frames if frames is not None else limb_frames(landmarks)
    p = {n: position(landmarks[n]) for n in FEMUR_CUT_REFERENCES}
    # The condyle reaching furthest along the normal (most distal) sets the level.
    ref = max(FEMUR_CUT_REFERENCES, key=lambda n: float(np.dot(p[n], normal)))
    point = p[ref] - resection_mm * normal
    depths = {n: depth_along_axis_mm(p[n], point, normal, fr.femur_proximal) for n in FEMUR_CUT_REFERENCES}
    return CutPlane(
        bone="femur",
        point_lps_mm=tuple(point),
        normal_lps=tuple(normal),
        resection_depth_mm=float(depths[ref]),
        reference=ref,
        depths_mm=depths,
    )


def tibial_cut_from_normal(landmarks: Mapping[str, object], normal: Vec, *, resection_mm: float, reference: str = "lateral_plateau_centre", frames: LimbFrames | None = None) -> CutPlane:
    """Proximal tibial cut with a given (unit, proximal-pointing) normal, ``resection_mm``
    distal to ``reference`` measured along the tibial mechanical axis. ``frames``: the
    landmarks' :func:`~orthonav.planning.tka.alignment.limb_frames` when known."""
    fr = frames if frames is not None else limb_frames(landmarks)
    p = {n: position(landmarks[n]) for n in TIBIA_CUT_REFERENCES}
    point = p[reference] - resection_mm * fr.tibia_proximal
    depths = {n: depth_along_axis_mm(p[n], point, normal, fr.tibia_proximal) for n in TIBIA_CUT_REFERENCES}
    return CutPlane(
        bone="tibia",
        point_lps_mm=tuple(point),
        normal_lps=tuple(normal),
        resection_depth_mm=float(depths[reference]),
        reference=reference,
        depths_mm=depths,
    )


def sloped_normal(proximal: Vec, anterior: Vec, slope_deg: float) -> Vec:
    """Proximal-pointing normal of a plane perpendicular to ``proximal`` in the coronal plane,
    tilted ``slope_deg`` so that it falls posteriorly (anterior edge higher)."""
    s = np.radians(slope_deg)
    n = np.cos(s) * proximal - np.sin(s) * anterior
    return n / np.linalg.norm(n)


def mechanical_cuts(landmarks: Mapping[str, object], *, resection_mm: float = 9.0, slope_deg: float = 3.0, tibial_resection_mm: float | None = None, frames: LimbFrames | None = None) -> dict[str, CutPlane]:
    """Distal femoral and proximal tibial cuts for mechanical alignment.

    Parameters
    ----------
    landmarks
        ``{name: Landmark or (3,)}`` in LPS mm; needs the femoral head/knee centres,
        epicondyles, distal condyles, plateau centres, tibial knee centre and ankle centre.
    resection_mm
        Distal femoral resection from the more distal condyle, and (unless
        ``tibial_resection_mm`` is given) tibial resection below the lateral plateau centre.
    slope_deg
        Posterior slope of the tibial cut (degrees, positive falls posteriorly).
    frames
        The landmarks' :func:`~orthonav.planning.tka.alignment.limb_frames`, when known.

    Returns
    -------
    dict
        ``{"distal_femur": CutPlane, "proximal_tibia": CutPlane}``.
    """
    _need_axes(landmarks)
    resection_mm = _check_depth(resection_mm, "resection_mm")
    tib = _check_depth(resection_mm if tibial_resection_mm is None else tibial_resection_mm, "tibial_resection_mm")
    if not np.isfinite(slope_deg) or abs(slope_deg) > 15.0:
        raise InputError(None, f"slope_deg must be within +-15 degrees, got {slope_deg}")
    fr = frames if frames is not None else limb_frames(landmarks)
    femur = femoral_cut_from_normal(landmarks, -fr.femur_proximal, resection_mm=resection_mm, frames=fr)
    tibia = tibial_cut_from_normal(landmarks, sloped_normal(fr.tibia_proximal, fr.tibia_anterior, slope_deg), resection_mm=tib, frames=fr)
    return {"distal_femur": femur, "proximal_tibia": tibia}


def kinematic_cuts(landmarks: Mapping[str, object], *, resection_mm: float = 9.0, slope_deg: float | None = None, tibial_resection_mm: float | None = None, frames: LimbFrames | None = None) -> dict[str, CutPlane]:
    """Cuts parallel to the native joint lines (kinematic alignment, calipered technique).

    The distal femoral cut is parallel to the distal condylar line in the coronal plane
    (perpendicular to the mechanical axis sagittally); the tibial cut is parallel to the
    plateau line coronally and follows the native medial slope (``slope_deg=None``, needs
    ``medial_plateau_anterior``/``posterior``; falls back to 3 deg if they are missing).
    ``frames``: the landmarks' :func:`~orthonav.planning.tka.alignment.limb_frames` when known.
    """
    _need_axes(landmarks)
    resection_mm = _check_depth(resection_mm, "resection_mm")
    tib = _check_depth(resection_mm if tibial_resection_mm is None else tibial_resection_mm, "tibial_resection_mm")
    fr = frames if frames is not None else limb_frames(landmarks)
    dm, dl = position(landmarks["distal_medial_condyle"]), position(landmarks["distal_lateral_condyle"])
    line = dl - dm
    line = line - np.dot(line, fr.femur_anterior) * fr.femur_anterior  # coronal projection
    n_f = np.cross(line, fr.femur_anterior)
    n_f = n_f / np.linalg.norm(n_f)
    if np.dot(n_f, fr.femur_proximal) > 0:
        n_f = -n_f
    femur = femoral_cut_from_normal(landmarks, n_f, resection_mm=resection_mm, frames=fr)
    mp, lp = position(landmarks["medial_plateau_centre"]), position(landmarks["lateral_plateau_centre"])
    pl = lp - mp
    pl = pl - np.dot(pl, fr.tibia_anterior) * fr.tibia_anterior  # coronal plateau line
    if slope_deg is None and "medial_plateau_anterior" in landmarks and "medial_plateau_posterior" in landmarks:
        ap = position(landmarks["medial_plateau_anterior"]) - position(landmarks["medial_plateau_posterior"])
        ap = ap - np.dot(ap, fr.tibia_lateral) * fr.tibia_lateral  # native tangent, sagittal plane
    else:
        s = np.radians(3.0 if slope_deg is None else slope_deg)
        ap = np.cos(s) * fr.tibia_anterior + np.sin(s) * fr.tibia_proximal
    # The cut plane contains the coronal plateau line and the sagittal (sloped) tangent.
    n_t = np.cross(pl, ap)
    n_t = n_t / np.linalg.norm(n_t)
    n_t = n_t if np.dot(n_t, fr.tibia_proximal) > 0 else -n_t
    tibia = tibial_cut_from_normal(landmarks, n_t, resection_mm=tib, frames=fr)
    return {"distal_femur": femur, "proximal_tibia": tibia}


__all__ = [
    "depth_along_axis_mm",
    "femoral_cut_from_normal",
    "kinematic_cuts",
    "mechanical_cuts",
    "sloped_normal",
    "tibial_cut_from_normal",
]
