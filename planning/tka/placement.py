"""Automatic TKA implant sizing and placement, and the cut planes an implant pose implies.

Placement follows the measured-resection technique with posterior referencing
(Insall & Scott, *Surgery of the Knee*, 6th ed., ch. 114): the femoral component sits on
the planned distal cut, rotated to the TEA (plus ``femoral_rotation_deg`` external), its
posterior cut ``posterior_resection_mm`` anterior of the more posterior condyle; its size is
the one whose anterior cut best meets the anterior cortex. The tibial tray sits on the
tibial cut, aligned to the tibial antero-posterior axis, centred on the cut section and
sized as the largest tray not overhanging the section's extent; the insert restores the
extension gap.

Every cut plane is then derived from the implant poses (:func:`cuts_from_implants`): the
five femoral box cuts are the bone-facing faces of the femoral component, the tibial cut
is the tray's underside.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from orthonav.core.errors import InputError
from orthonav.core.transforms import apply, apply_vector

from ..implants import (
    FEMORAL_CHAMFER_MM,
    FEMORAL_FLANGE_MM,
    FEMORAL_SIZES,
    FEMORAL_THICKNESS_MM,
    INSERT_THICKNESSES_MM,
    TIBIAL_SIZES,
    TRAY_THICKNESS_MM,
    implant_model,
    insert_size,
)
from ..landmarks import position
from ..meshops import cross_section, to_manifold
from ..schema import CutPlane, ImplantPlacement
from .alignment import LimbFrames, limb_frames
from .cuts import depth_along_axis_mm

Vec = NDArray[np.float64]


def _frame(origin: Vec, x: Vec, y: Vec, z: Vec) -> NDArray[np.float64]:
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, origin
    return m


def femoral_frame(landmarks: Mapping[str, object], distal_cut: CutPlane, *, rotation_deg: float = 0.0, frames: LimbFrames | None = None) -> NDArray[np.float64]:
    """Orientation of the femoral component (origin on the cut under the knee centre).

    z = -(distal cut normal); y = anterior, aligned with the TEA and turned
    ``rotation_deg`` externally (the anterior direction turns towards lateral).
    """
    fr = frames if frames is not None else limb_frames(landmarks)
    z = -np.asarray(distal_cut.normal_lps)
    lat = fr.femur_lateral - np.dot(fr.femur_lateral, z) * z
    lat /= np.linalg.norm(lat)
    y = np.cross(z, lat)  # anterior candidate
    y = y if np.dot(y, fr.femur_anterior) > 0 else -y
    r = np.radians(rotation_deg)
    y = np.cos(r) * y + np.sin(r) * lat  # lat is perpendicular to y and z
    x = np.cross(y, z)
    knee = position(landmarks["femoral_knee_centre"])
    p0 = np.asarray(distal_cut.point_lps_mm)
    origin = knee - np.dot(knee - p0, z) * z  # on the distal cut plane
    return _frame(origin, x, y, z)


def size_and_place_femoral(
    landmarks: Mapping[str, object],
    femur: pv.PolyData,
    distal_cut: CutPlane,
    *,
    rotation_deg: float = 0.0,
    posterior_resection_mm: float = FEMORAL_THICKNESS_MM["posterior"],
    size: str | None = None,
    frames: LimbFrames | None = None,
) -> tuple[ImplantPlacement, dict[str, float]]:
    """Femoral component pose and size (posterior referencing); returns the placement and
    ``{"anterior_notch_mm": ..., "femoral_ap_needed_mm": ...}`` (notch < 0 = the anterior
    cut would cut into the anterior cortex)."""
    m = femoral_frame(landmarks, distal_cut, rotation_deg=rotation_deg, frames=frames)
    x, y, z, o = m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3]
    pc = [position(landmarks[n]) for n in ("posterior_medial_condyle", "posterior_lateral_condyle")]
    y_post = min(float(np.dot(p - o, y)) for p in pc) + posterior_resection_mm  # posterior cut level
    pts = np.asarray(femur.points) - o
    zc, xc, yc = pts @ z, pts @ x, pts @ y
    band = (zc > FEMORAL_FLANGE_MM["anterior"] - 12.0) & (zc < FEMORAL_FLANGE_MM["anterior"]) & (np.abs(xc) < 15.0)
    if band.sum() < 3:
        raise InputError(None, "anterior femoral cortex not found above the distal cut (femur mesh too short?)")
    y_ant = float(yc[band].max())
    needed = y_ant - y_post
    if size is None:
        size = min(FEMORAL_SIZES, key=lambda s: (abs(FEMORAL_SIZES[s]["ap_mm"] - needed), FEMORAL_SIZES[s]["ap_mm"]))
    ap = implant_model("tka_femoral", size).dims["ap_mm"]
    origin = o + (y_post + ap / 2.0) * y
    m[:3, 3] = origin
    place = ImplantPlacement(family="tka_femoral", size=size, bone="femur", ct_from_implant=m.tolist())
    return place, {"anterior_notch_mm": float(y_post + ap - y_ant), "femoral_ap_needed_mm": float(needed)}


def tibial_frame(landmarks: Mapping[str, object], tibial_cut: CutPlane, *, rotation_deg: float = 0.0, frames: LimbFrames | None = None) -> NDArray[np.float64]:
    """Tray orientation on the cut: z = cut normal, y = tibial anterior (turned
    ``rotation_deg`` externally), origin = the cut point under the tibial knee centre."""
    fr = frames if frames is not None else limb_frames(landmarks)
    z = np.asarray(tibial_cut.normal_lps)
    y = fr.tibia_anterior - np.dot(fr.tibia_anterior, z) * z
    y /= np.linalg.norm(y)
    lat = np.cross(y, z)
    lat = lat if np.dot(lat, fr.tibia_lateral) > 0 else -lat
    r = np.radians(rotation_deg)
    y = np.cos(r) * y + np.sin(r) * lat
    x = np.cross(y, z)
    tkc = position(landmarks["tibial_knee_centre"])
    p0 = np.asarray(tibial_cut.point_lps_mm)
    origin = tkc - np.dot(tkc - p0, z) * z
    return _frame(origin, x, y, z)


def size_and_place_tibial(
    landmarks: Mapping[str, object],
    tibia: pv.PolyData,
    tibial_cut: CutPlane,
    *,
    rotation_deg: float = 0.0,
    size: str | None = None,
    tibia_solid=None,
    frames: LimbFrames | None = None,
) -> tuple[ImplantPlacement, dict[str, float]]:
    """Tray pose (centred on the section's extent) and size (largest without overhang of the
    section's ML/AP extent); returns the placement and the section extent (mm)."""
    m = tibial_frame(landmarks, tibial_cut, rotation_deg=rotation_deg, frames=frames)
    solid = tibia_solid if tibia_solid is not None else to_manifold(tibia, name="tibia mesh")
    sec = cross_section(solid, m)
    if sec.is_empty():
        raise InputError(None, "the tibial cut plane does not intersect the tibia")
    # Keep the largest piece (the fibula is a separate mesh; this guards against islands).
    pieces = sorted(sec.decompose(), key=lambda c: c.area(), reverse=True)
    x0, y0, x1, y1 = pieces[0].bounds()
    ml, ap = x1 - x0, y1 - y0
    centre = m[:3, 3] + 0.5 * (x0 + x1) * m[:3, 0] + 0.5 * (y0 + y1) * m[:3, 1]
    m[:3, 3] = centre
    if size is None:
        fitting = [s for s in TIBIAL_SIZES if TIBIAL_SIZES[s]["ml_mm"] <= ml and TIBIAL_SIZES[s]["ap_mm"] <= ap]
        size = fitting[-1] if fitting else next(iter(TIBIAL_SIZES))
    place = ImplantPlacement(family="tka_tibial_tray", size=size, bone="tibia", ct_from_implant=m.tolist())
    return place, {"tibial_section_ml_mm": float(ml), "tibial_section_ap_mm": float(ap)}


def choose_insert(gap_mm: float, *, femoral_thickness_mm: float = FEMORAL_THICKNESS_MM["distal"]) -> float:
    """Insert thickness filling the extension gap: gap - femoral - tray, to the nearest size."""
    need = gap_mm - femoral_thickness_mm - TRAY_THICKNESS_MM
    return float(min(INSERT_THICKNESSES_MM, key=lambda t: (abs(t - need), t)))


def extension_gap_mm(cuts: Mapping[str, CutPlane], landmarks: Mapping[str, object], *, frames: LimbFrames | None = None) -> float:
    """Distance between the distal femoral and tibial cut planes along the tibial mechanical
    axis, through the tibial knee centre (knee in extension as imaged)."""
    fr = frames if frames is not None else limb_frames(landmarks)
    f, t = cuts["distal_femur"], cuts["proximal_tibia"]
    tkc = position(landmarks["tibial_knee_centre"])
    u = fr.tibia_proximal

    def hit(cut: CutPlane) -> float:
        n = np.asarray(cut.normal_lps)
        return float(np.dot(np.asarray(cut.point_lps_mm) - tkc, n) / np.dot(u, n))

    return hit(f) - hit(t)


def place_tka(
    landmarks: Mapping[str, object],
    meshes: Mapping[str, pv.PolyData],
    cuts: Mapping[str, CutPlane],
    *,
    femoral_rotation_deg: float = 0.0,
    tibial_rotation_deg: float = 0.0,
    femoral_size: str | None = None,
    tibial_size: str | None = None,
    tibia_solid=None,
    frames: LimbFrames | None = None,
) -> tuple[list[ImplantPlacement], dict[str, float]]:
    """Femoral component, tibial tray and insert for the given distal and tibial cuts.

    Returns the placements and sizing metrics (anterior notch, section extent, extension
    gap, insert thickness). ``frames``: the landmarks'
    :func:`~orthonav.planning.tka.alignment.limb_frames` when known (every ``frames`` argument
    of this module is that, computed from the landmarks when not given).
    """
    fr = frames if frames is not None else limb_frames(landmarks)
    fem, m1 = size_and_place_femoral(landmarks, meshes["femur"], cuts["distal_femur"], rotation_deg=femoral_rotation_deg, size=femoral_size, frames=fr)
    tray, m2 = size_and_place_tibial(landmarks, meshes["tibia"], cuts["proximal_tibia"], rotation_deg=tibial_rotation_deg, size=tibial_size, tibia_solid=tibia_solid, frames=fr)
    gap = extension_gap_mm(cuts, landmarks, frames=fr)
    th = choose_insert(gap)
    insert = ImplantPlacement(family="tka_insert", size=insert_size(tray.size, th), bone="tibia", ct_from_implant=tray.ct_from_implant)
    metrics = {**m1, **m2, "extension_gap_mm": gap, "insert_thickness_mm": th}
    return [fem, tray, insert], metrics


# --- cuts implied by implant poses ---------------------------------------------------------


def femoral_cut_planes_implant(ap_mm: float, chamfer_mm: float = FEMORAL_CHAMFER_MM) -> dict[str, tuple[Vec, Vec]]:
    """The five bone-facing planes of a femoral component, in its frame: name -> (point,
    normal pointing into the removed bone, i.e. out of the kept box)."""
    a, c = ap_mm / 2.0, chamfer_mm
    s = 1.0 / np.sqrt(2.0)
    return {
        "distal_femur": (np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),
        "anterior_femur": (np.array([0.0, a, 0.0]), np.array([0.0, 1.0, 0.0])),
        "posterior_femur": (np.array([0.0, -a, 0.0]), np.array([0.0, -1.0, 0.0])),
        "anterior_chamfer": (np.array([0.0, a - c, 0.0]), np.array([0.0, s, -s])),
        "posterior_chamfer": (np.array([0.0, -a + c, 0.0]), np.array([0.0, -s, -s])),
    }


def cuts_from_implants(implants: list[ImplantPlacement], landmarks: Mapping[str, object], *, frames: LimbFrames | None = None) -> dict[str, CutPlane]:
    """Cut planes (CT LPS) implied by the femoral component and tibial tray poses, with
    resection depths per condyle / plateau (along the mechanical axis for the distal and
    tibial cuts, perpendicular to the plane for the posterior cut)."""
    fr = frames if frames is not None else limb_frames(landmarks)
    out: dict[str, CutPlane] = {}
    p = {k: position(v) for k, v in landmarks.items()}
    for imp in implants:
        m = np.asarray(imp.ct_from_implant)
        if imp.family == "tka_femoral":
            ap = implant_model(imp.family, imp.size).dims["ap_mm"]
            for name, (q, n) in femoral_cut_planes_implant(ap).items():
                point, normal = apply(m, q), apply_vector(m, n)
                depths: dict[str, float] = {}
                ref = ""
                if name == "distal_femur":
                    for k in ("distal_medial_condyle", "distal_lateral_condyle"):
                        depths[k] = depth_along_axis_mm(p[k], point, normal, fr.femur_proximal)
                    ref = max(depths, key=depths.get)
                elif name == "posterior_femur":
                    for k in ("posterior_medial_condyle", "posterior_lateral_condyle"):
                        depths[k] = float(np.dot(p[k] - point, normal))
                    ref = max(depths, key=depths.get)
                out[name] = CutPlane(
                    bone="femur", point_lps_mm=tuple(point), normal_lps=tuple(normal),
                    resection_depth_mm=float(depths[ref]) if ref else 0.0, reference=ref, depths_mm=depths,
                )
        elif imp.family == "tka_tibial_tray":
            point, normal = m[:3, 3].copy(), m[:3, 2].copy()
            depths = {k: depth_along_axis_mm(p[k], point, normal, fr.tibia_proximal) for k in ("medial_plateau_centre", "lateral_plateau_centre")}
            out["proximal_tibia"] = CutPlane(
                bone="tibia", point_lps_mm=tuple(point), normal_lps=tuple(normal),
                resection_depth_mm=float(depths["lateral_plateau_centre"]), reference="lateral_plateau_centre", depths_mm=depths,
            )
    return out


__all__ = [
    "choose_insert",
    "cuts_from_implants",
    "extension_gap_mm",
    "femoral_cut_planes_implant",
    "femoral_frame",
    "place_tka",
    "size_and_place_femoral",
    "size_and_place_tibial",
    "tibial_frame",
]
