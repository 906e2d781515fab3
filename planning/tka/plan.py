"""The automatic knee (TKA) plan from bone meshes: landmarks, axes, angles, cuts, sized and
placed components, implant-derived cuts and outcome metrics (no file I/O but
:func:`load_knee_meshes`).

Steps and their modules: landmarks (:mod:`.landmarks`), axes and angles (:mod:`.alignment`),
cuts (:mod:`.cuts`), implants (:mod:`.placement`), outcomes (:mod:`.outcomes`). The limb
frames are computed once per plan and handed to every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyvista as pv
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume

from ..landmarks import anatomical_axis
from ..meshes import load_bone_meshes
from ..schema import Axis, Landmark, Plan
from .alignment import LimbFrames, component_alignment, compute_angles, compute_axes, knee_centre, limb_frames
from .cuts import kinematic_cuts, mechanical_cuts
from .landmarks import KNEE_BONES, REQUIRED_BONES, find_landmarks, infer_side
from .outcomes import BoneSolids, compute_metrics
from .placement import cuts_from_implants, place_tka


def load_knee_meshes(case_dir: str | Path, *, report: dict[str, float] | None = None) -> dict[str, pv.PolyData]:
    """The knee bone meshes of a case (:data:`~orthonav.planning.tka.landmarks.KNEE_BONES`;
    femur and tibia required), largest piece of each (:func:`orthonav.planning.meshes.load_bone_meshes`)."""
    return load_bone_meshes(case_dir, KNEE_BONES, required=REQUIRED_BONES, report=report)


def is_knee_case(bones: Mapping[str, object] | list[str] | tuple[str, ...]) -> bool:
    """True when the bones include a knee bone (a missing required one is then reported by
    :func:`load_knee_meshes`, naming its file)."""
    return any(b in set(bones) for b in KNEE_BONES)


def anatomical_axes(meshes: Mapping[str, pv.PolyData], landmarks: Mapping[str, Landmark], *, frames: LimbFrames | None = None) -> dict[str, Axis]:
    """Femoral (20-70 % of length from distal) and tibial (20-80 %) shaft axes (docs/anatomy.md),
    keyed ``femoral_anatomical`` / ``tibial_anatomical``. ``frames``: the landmarks'
    :func:`~orthonav.planning.tka.alignment.limb_frames` when known."""
    fr = frames if frames is not None else limb_frames(landmarks)
    out = {}
    for bone, prox, frac in (("femur", fr.femur_proximal, (0.2, 0.7)), ("tibia", fr.tibia_proximal, (0.2, 0.8))):
        if bone not in meshes or prox is None:
            continue
        pts = np.asarray(meshes[bone].points)
        h = pts @ prox
        distal_end = pts[np.argmin(h)]
        out[f"{bone.replace('femur', 'femoral').replace('tibia', 'tibial')}_anatomical"] = anatomical_axis(
            meshes[bone], distal_end, prox, float(h.max() - h.min()), frac
        )
    return out


def build_tka_plan(
    meshes: Mapping[str, pv.PolyData],
    *,
    alignment: str = "mechanical",
    resection_mm: float = 9.0,
    slope_deg: float = 3.0,
    side: str | None = None,
    fiducials: Mapping[str, Landmark] | None = None,
    implants: bool = True,
    ct: Volume | None = None,
) -> Plan:
    """The automatic plan from meshes alone (no file I/O): landmarks, axes, angles, cuts,
    and (``implants=True``) sized and placed TKA components, implant-derived cuts and
    outcome metrics (removed volume, coverage, density when ``ct`` is given)."""
    if alignment not in ("mechanical", "kinematic"):
        raise InputError(None, f"alignment must be 'mechanical' or 'kinematic', got {alignment!r}")
    lms = find_landmarks(meshes, side=side)
    fr = limb_frames(lms)  # the knee's frames, once for the whole plan
    axes = compute_axes(lms)
    axes.update(anatomical_axes(meshes, lms, frames=fr))
    angles = compute_angles(lms, frames=fr)
    if alignment == "mechanical":
        cuts = mechanical_cuts(lms, resection_mm=resection_mm, slope_deg=slope_deg, frames=fr)
    else:
        cuts = kinematic_cuts(lms, resection_mm=resection_mm, frames=fr)
    all_lms = dict(lms)
    all_lms.update(fiducials or {})
    plan = Plan(
        procedure="tka",
        side=side if side is not None else infer_side(lms, frames=fr),
        alignment=alignment,
        landmarks=all_lms,
        axes=axes,
        angles_deg=angles,
        cuts=cuts,
        notes="automatic plan (orthonav plan --auto); fiducial_1..n ordered by descending LPS z",
    )
    if not implants:
        return plan
    solids = BoneSolids(meshes, roi_centre_lps=knee_centre(lms))
    # Mechanical: component rotation parallel to the TEA. Kinematic: parallel to the
    # posterior condylar line (equal posterior resections), i.e. turned by the PCA.
    rot = -angles.get("femoral_rotation", 0.0) if alignment == "kinematic" else 0.0
    placed, sizing = place_tka(lms, meshes, cuts, femoral_rotation_deg=rot, tibia_solid=solids.solid("tibia"), frames=fr)
    implied = cuts_from_implants(placed, lms, frames=fr)
    plan = plan.model_copy(update={"implants": placed, "cuts": implied, "metrics": sizing})
    metrics, _ = compute_metrics(plan, solids, ct=ct)
    return plan.model_copy(update={"metrics": {**sizing, **metrics, **component_alignment(plan, frames=fr)}})


__all__ = ["anatomical_axes", "build_tka_plan", "is_knee_case", "load_knee_meshes"]
