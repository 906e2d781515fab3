"""Knee (TKA) mechanical axes, anatomical frames, the standard alignment angles and the
components' alignment.

Pure functions on landmark positions (LPS mm). The definitions are those of
``docs/anatomy.md`` (the contract shared with phantom truth); the angle conventions follow
Paley, *Principles of Deformity Correction* (2002), ch. 1 (LDFA, MPTA, HKA = 180 - mechanical
femorotibial angle, varus < 180 < valgus), and the posterior condylar angle of
Berger et al. (1993), Clin Orthop 286:40-47 (TEA vs posterior condylar line).

Landmarks may be given as :class:`~orthonav.planning.schema.Landmark` objects or as plain
``(3,)`` sequences; only their positions are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from orthonav.core.vectors import perpendicular, unit

from ..landmarks import position
from ..schema import Axis, Plan

Vec = NDArray[np.float64]

#: Landmarks each angle needs.
ANGLE_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "hka": ("femoral_head_centre", "femoral_knee_centre", "medial_epicondyle", "lateral_epicondyle", "tibial_knee_centre", "ankle_centre"),
    "ldfa": ("femoral_head_centre", "femoral_knee_centre", "medial_epicondyle", "lateral_epicondyle", "distal_medial_condyle", "distal_lateral_condyle"),
    "mpta": ("tibial_knee_centre", "ankle_centre", "medial_plateau_centre", "lateral_plateau_centre"),
    "slope": ("tibial_knee_centre", "ankle_centre", "medial_plateau_centre", "lateral_plateau_centre", "medial_plateau_anterior", "medial_plateau_posterior"),
    # In the plane perpendicular to the femoral axis: with no head in the data, the stated
    # planning axis serves (the angle changes by < 0.1 deg for an axis 6 deg off).
    "femoral_rotation": ("femoral_knee_centre", "medial_epicondyle", "lateral_epicondyle", "posterior_medial_condyle", "posterior_lateral_condyle"),
}


def _angle_deg(a: Vec, b: Vec) -> float:
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), np.dot(a, b))))


@dataclass(frozen=True)
class LimbFrames:
    """Anatomical directions derived from landmarks (all unit vectors, LPS).

    Attributes
    ----------
    femur_proximal
        Femoral mechanical axis, knee centre -> head centre (without a head in the data:
        the stated planning axis, knee centre -> ``femoral_axis_reference``; likewise the
        tibia's with ``tibial_axis_reference``).
    femur_lateral
        TEA (medial -> lateral epicondyle) made perpendicular to ``femur_proximal``.
    femur_anterior
        ``femur_proximal`` x ... completing the frame, pointing anteriorly (away from the
        posterior condyles when they are known, else towards LPS -y).
    tibia_proximal, tibia_lateral, tibia_anterior
        Same for the tibia (mechanical axis ankle -> knee; plateau line medial -> lateral).
        ``None`` where the landmarks are missing.
    """

    femur_proximal: Vec | None
    femur_lateral: Vec | None
    femur_anterior: Vec | None
    tibia_proximal: Vec | None
    tibia_lateral: Vec | None
    tibia_anterior: Vec | None


def _pos(landmarks: Mapping[str, object], name: str) -> Vec | None:
    return position(landmarks[name]) if name in landmarks else None


def _anterior_from(proximal: Vec, lateral: Vec, hint: Vec) -> Vec:
    """The unit vector perpendicular to both, on the side of ``hint``."""
    a = np.cross(proximal, lateral)
    a = a / np.linalg.norm(a)
    return a if np.dot(a, hint) >= 0 else -a


def limb_frames(landmarks: Mapping[str, object]) -> LimbFrames:
    """Derive femoral and tibial anatomical directions from landmark positions.

    The anterior direction is anatomical where possible: the femur's points away from the
    posterior condyles (relative to the epicondyles); the tibia uses the femur's when known.
    Only when neither is available is the CT's LPS anterior (-y) used to pick the sign.
    """
    head, fkc = _pos(landmarks, "femoral_head_centre"), _pos(landmarks, "femoral_knee_centre")
    if head is None:  # a knee stack: the stated planning axis stands in (docs/anatomy.md, partial stacks)
        head = _pos(landmarks, "femoral_axis_reference")
    me, le = _pos(landmarks, "medial_epicondyle"), _pos(landmarks, "lateral_epicondyle")
    pmc, plc = _pos(landmarks, "posterior_medial_condyle"), _pos(landmarks, "posterior_lateral_condyle")
    if fkc is None and me is not None and le is not None:
        fkc = 0.5 * (me + le)
    lps_anterior = np.array([0.0, -1.0, 0.0])
    f_prox = f_lat = f_ant = None
    if head is not None and fkc is not None:
        f_prox = unit(head - fkc, "femoral mechanical axis")
        if me is not None and le is not None:
            f_lat = unit(perpendicular(le - me, f_prox), "transepicondylar axis")
            hint = lps_anterior
            if pmc is not None and plc is not None:
                hint = 0.5 * (me + le) - 0.5 * (pmc + plc)
            f_ant = _anterior_from(f_prox, f_lat, hint)
    t_prox = t_lat = t_ant = None
    tkc, ank = _pos(landmarks, "tibial_knee_centre"), _pos(landmarks, "ankle_centre")
    if ank is None:
        ank = _pos(landmarks, "tibial_axis_reference")
    mp, lp = _pos(landmarks, "medial_plateau_centre"), _pos(landmarks, "lateral_plateau_centre")
    if tkc is None and mp is not None and lp is not None:
        tkc = 0.5 * (mp + lp)
    if tkc is not None and ank is not None:
        t_prox = unit(tkc - ank, "tibial mechanical axis")
        if mp is not None and lp is not None:
            t_lat = unit(perpendicular(lp - mp, t_prox), "plateau line")
            t_ant = _anterior_from(t_prox, t_lat, f_ant if f_ant is not None else lps_anterior)
    return LimbFrames(f_prox, f_lat, f_ant, t_prox, t_lat, t_ant)


def compute_axes(landmarks: Mapping[str, object]) -> dict[str, Axis]:
    """Mechanical axes and reference lines from landmark positions.

    Returns the axes whose landmarks are present, keyed ``femoral_mechanical`` (knee centre
    -> head centre), ``tibial_mechanical`` (ankle centre -> tibial knee centre),
    ``transepicondylar`` (medial -> lateral epicondyle), ``posterior_condylar`` (medial ->
    lateral posterior condyle) and ``plateau`` (medial -> lateral plateau centre).
    Anatomical (shaft) axes need the meshes: see :func:`orthonav.planning.tka.plan.anatomical_axes`.
    """
    out: dict[str, Axis] = {}

    def line(key: str, a: str, b: str, definition: str) -> None:
        pa, pb = _pos(landmarks, a), _pos(landmarks, b)
        if pa is not None and pb is not None:
            d = unit(pb - pa, key)
            out[key] = Axis(origin_lps_mm=tuple(pa), direction_lps=tuple(d), definition=definition)

    line("femoral_mechanical", "femoral_knee_centre", "femoral_head_centre", "femoral knee centre -> femoral head centre")
    line("tibial_mechanical", "ankle_centre", "tibial_knee_centre", "ankle centre -> tibial knee centre")
    if "femoral_head_centre" not in landmarks:
        line("femoral_planning", "femoral_knee_centre", "femoral_axis_reference", "ASSUMED (no femoral head in the data): distal femoral shaft axis turned by the default valgus correction")
    if "ankle_centre" not in landmarks:
        line("tibial_planning", "tibial_axis_reference", "tibial_knee_centre", "ASSUMED (no ankle in the data): proximal tibial shaft axis")
    line("transepicondylar", "medial_epicondyle", "lateral_epicondyle", "medial -> lateral epicondyle (TEA)")
    line("posterior_condylar", "posterior_medial_condyle", "posterior_lateral_condyle", "medial -> lateral posterior condyle")
    line("plateau", "medial_plateau_centre", "lateral_plateau_centre", "medial -> lateral plateau centre")
    return out


def _have(landmarks: Mapping[str, object], key: str) -> bool:
    return all(n in landmarks for n in ANGLE_REQUIREMENTS[key])


def _have_mpta(landmarks: Mapping[str, object]) -> bool:
    return _have(landmarks, "mpta")


def compute_angles(landmarks: Mapping[str, object], *, medial_plateau_ap_tangent_lps: object | None = None, frames: LimbFrames | None = None) -> dict[str, float]:
    """The alignment angles of docs/anatomy.md, in degrees, for the landmarks given.

    Keys: ``hka`` (varus < 180 < valgus), ``ldfa``, ``mpta``, ``slope`` (positive when the
    medial plateau falls posteriorly), ``femoral_rotation`` (posterior condylar angle,
    positive when the TEA is externally rotated relative to the posterior condylar line,
    i.e. the medial posterior condyle is the more posterior). An angle is omitted when a
    landmark it needs (:data:`ANGLE_REQUIREMENTS`) is missing. ``slope`` uses the line
    ``medial_plateau_anterior`` - ``medial_plateau_posterior``, or, when given,
    ``medial_plateau_ap_tangent_lps`` (a (3,) direction either way along the plateau, as in
    phantom truth). ``frames``: the landmarks' :func:`limb_frames` when the caller has them.

    Raises
    ------
    InputError
        A landmark position is not finite or landmarks coincide.
    """
    fr = frames if frames is not None else limb_frames(landmarks)
    p = {k: position(v) for k, v in landmarks.items()}
    out: dict[str, float] = {}
    if _have(landmarks, "hka") and fr.femur_lateral is not None:
        # Both mechanical axes projected onto the femoral coronal plane (normal = anterior).
        n = fr.femur_anterior
        hip_to_knee = perpendicular(p["femoral_knee_centre"] - p["femoral_head_centre"], n)
        knee_to_ankle = perpendicular(p["ankle_centre"] - p["tibial_knee_centre"], n)
        theta = _angle_deg(hip_to_knee, knee_to_ankle)
        # Varus: the tibia turns medially relative to the femoral line (ankle medial of it).
        medial = -fr.femur_lateral
        turn = np.dot(perpendicular(knee_to_ankle, hip_to_knee / np.linalg.norm(hip_to_knee)), medial)
        out["hka"] = 180.0 - theta if turn > 0 else 180.0 + theta
    if _have(landmarks, "ldfa") and fr.femur_anterior is not None:
        n = fr.femur_anterior
        joint_line = perpendicular(p["distal_lateral_condyle"] - p["distal_medial_condyle"], n)  # towards lateral
        out["ldfa"] = _angle_deg(fr.femur_proximal, joint_line)
    if _have(landmarks, "mpta") and fr.tibia_anterior is not None:
        n = fr.tibia_anterior
        joint_line = perpendicular(p["medial_plateau_centre"] - p["lateral_plateau_centre"], n)  # towards medial
        # Medial angle below the joint line: between the distal arm of the axis and the line.
        out["mpta"] = _angle_deg(-fr.tibia_proximal, joint_line)
    tangent_given = medial_plateau_ap_tangent_lps is not None and _have_mpta(landmarks)
    if (tangent_given or _have(landmarks, "slope")) and fr.tibia_lateral is not None:
        n = fr.tibia_lateral  # sagittal plane normal
        if tangent_given:
            t = position(medial_plateau_ap_tangent_lps)
            t = t if np.dot(t, fr.tibia_anterior) >= 0 else -t
        else:
            t = p["medial_plateau_anterior"] - p["medial_plateau_posterior"]
        tangent = perpendicular(t, n)  # posterior -> anterior
        rise = np.dot(tangent, fr.tibia_proximal)  # > 0 when the anterior rim is higher
        run = np.dot(tangent, fr.tibia_anterior)
        out["slope"] = float(np.degrees(np.arctan2(rise, run)))
    if _have(landmarks, "femoral_rotation") and fr.femur_anterior is not None:
        ax = fr.femur_proximal
        tea = perpendicular(p["lateral_epicondyle"] - p["medial_epicondyle"], ax)
        pcl = perpendicular(p["posterior_lateral_condyle"] - p["posterior_medial_condyle"], ax)
        theta = _angle_deg(tea, pcl)
        # Positive when the PCL's lateral end lies anterior of the TEA direction.
        sign = 1.0 if np.dot(pcl / np.linalg.norm(pcl), fr.femur_anterior) >= 0 else -1.0
        out["femoral_rotation"] = sign * theta
    return out


def knee_centre(landmarks: Mapping[str, object]) -> Vec | None:
    """Midpoint of the femoral and tibial knee centres (LPS mm), or None if both are missing."""
    names = [n for n in ("femoral_knee_centre", "tibial_knee_centre") if n in landmarks]
    return np.mean([position(landmarks[n]) for n in names], axis=0) if names else None


def component_alignment(plan: Plan, *, frames: LimbFrames | None = None) -> dict[str, float]:
    """Component orientation vs the mechanical axes (degrees).

    ``femoral_component_coronal_deg`` / ``tibial_component_coronal_deg``: tilt of the
    component's z axis (its joint-line normal) from the bone's mechanical axis in the
    coronal plane, positive when it leans laterally (0 = mechanically aligned; a tibial cut
    in varus leans medially, i.e. negative); ``tibial_component_slope_deg``: posterior slope
    of the tray; ``femoral_component_rotation_deg``: external rotation of the component's
    anterior axis from the TEA-perpendicular; ``predicted_hka_deg``: with the joint lines of
    the two components parallel in extension, 180 - femoral + tibial tilt (varus < 180).
    ``frames``: the plan landmarks' :func:`limb_frames` when the caller has them.

    Without the femoral head or the ankle centre (a partial CT: the frames then use stated
    planning axes), the coronal tilts and the predicted HKA are left out: they are only
    meaningful against the mechanical axes.
    """
    fr = frames if frames is not None else limb_frames(plan.landmarks)
    out: dict[str, float] = {}
    mechanical = "femoral_head_centre" in plan.landmarks and "ankle_centre" in plan.landmarks
    fem = next((i for i in plan.implants if i.family == "tka_femoral"), None)
    tray = next((i for i in plan.implants if i.family == "tka_tibial_tray"), None)
    if fem is not None and fr.femur_proximal is not None:
        m = np.asarray(fem.ct_from_implant)
        z, y = m[:3, 2], m[:3, 1]
        out["femoral_component_coronal_deg"] = float(np.degrees(np.arctan2(np.dot(z, fr.femur_lateral), np.dot(z, fr.femur_proximal))))
        y_ax = y - np.dot(y, fr.femur_proximal) * fr.femur_proximal
        out["femoral_component_rotation_deg"] = float(np.degrees(np.arctan2(np.dot(y_ax, fr.femur_lateral), np.dot(y_ax, fr.femur_anterior))))
    if tray is not None and fr.tibia_proximal is not None:
        m = np.asarray(tray.ct_from_implant)
        z = m[:3, 2]
        out["tibial_component_coronal_deg"] = float(np.degrees(np.arctan2(np.dot(z, fr.tibia_lateral), np.dot(z, fr.tibia_proximal))))
        out["tibial_component_slope_deg"] = float(np.degrees(np.arctan2(-np.dot(z, fr.tibia_anterior), np.dot(z, fr.tibia_proximal))))
    if not mechanical:
        out = {k: v for k, v in out.items() if "coronal" not in k}
    if "femoral_component_coronal_deg" in out and "tibial_component_coronal_deg" in out and "hka" in plan.angles_deg:
        # Parallel joint lines: the tibial axis is turned (femoral - tibial tilt) laterally
        # from the femoral axis, which puts the ankle medially, i.e. varus.
        out["predicted_hka_deg"] = 180.0 - out["femoral_component_coronal_deg"] + out["tibial_component_coronal_deg"]
    return out


__all__ = ["ANGLE_REQUIREMENTS", "LimbFrames", "component_alignment", "compute_angles", "compute_axes", "knee_centre", "limb_frames"]
