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
from orthonav.core.case import read_case_meshes
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume

from ..landmarks import anatomical_axis, principal_axis
from ..meshes import largest_piece, load_bone_meshes
from ..schema import Axis, Landmark, Plan
from .alignment import ANGLE_REQUIREMENTS, LimbFrames, component_alignment, compute_angles, compute_axes, knee_centre, limb_frames
from .cuts import kinematic_cuts, mechanical_cuts
from .landmarks import KNEE_BONES, REQUIRED_BONES, find_landmarks, infer_side
from .outcomes import BoneSolids, compute_metrics
from .placement import cuts_from_implants, place_tka


def load_knee_meshes(case_dir: str | Path, *, report: dict[str, float] | None = None) -> dict[str, pv.PolyData]:
    """The knee bone meshes of a case (:data:`~orthonav.planning.tka.landmarks.KNEE_BONES`;
    femur and tibia required), largest piece of each (:func:`orthonav.planning.meshes.load_bone_meshes`),
    plus the pieces of the same bone across an unscanned gap (:func:`stack_pieces`: the
    three-stack hip/knee/ankle protocol gives a femur with its head in one piece and its
    condyles in another)."""
    dropped: dict[str, float] = {}
    meshes = load_bone_meshes(case_dir, KNEE_BONES, required=REQUIRED_BONES, report=dropped)
    if dropped:  # some bone had other pieces: keep those that continue it along its axis
        raw = read_case_meshes(case_dir, tuple(b for b in dropped if b in meshes))
        for b, mesh in raw.items():
            merged = stack_pieces(mesh)
            if merged.n_points > meshes[b].n_points:
                meshes[b] = merged
                dropped[b] = 1.0 - merged.n_points / max(mesh.clean().n_points, 1)
    if report is not None:
        report.update({b: f for b, f in dropped.items() if f > 1e-3})
    return meshes


def stack_pieces(mesh: pv.PolyData, *, min_fraction: float = 0.1, min_gap_mm: float = 10.0) -> pv.PolyData:
    """The largest connected piece of a bone mesh together with the other pieces that hold at
    least ``min_fraction`` of its vertices and lie beyond it along its long axis with a gap of
    at least ``min_gap_mm`` (pieces of one bone in separate CT stacks). Smaller or overlapping
    pieces (segmentation islands, a neighbour's fragment) are left out."""
    conn = mesh.connectivity("all")
    ids = np.asarray(conn.point_data["RegionId"])
    pts = np.asarray(conn.points)
    counts = np.bincount(ids)
    _, axis = principal_axis(pts)
    h = pts @ axis
    span = {r: (float(h[ids == r].min()), float(h[ids == r].max())) for r in range(len(counts)) if counts[r]}
    keep = [int(np.argmax(counts))]
    for r in np.argsort(counts)[::-1][1:]:
        if counts[r] < min_fraction * len(pts):
            break
        lo, hi = span[r]
        if all(lo > span[k][1] + min_gap_mm or hi < span[k][0] - min_gap_mm for k in keep):
            keep.append(int(r))
    if len(keep) == 1:
        return largest_piece(mesh)[0]
    tri = conn.triangulate()
    faces = tri.faces.reshape(-1, 4)
    faces = faces[np.isin(ids[faces[:, 1]], keep)]
    return pv.PolyData(pts, faces.ravel()).clean()


def is_knee_case(bones: Mapping[str, object] | list[str] | tuple[str, ...]) -> bool:
    """True when the bones include a knee bone (a missing required one is then reported by
    :func:`load_knee_meshes`, naming its file)."""
    return any(b in set(bones) for b in KNEE_BONES)


def anatomical_axes(meshes: Mapping[str, pv.PolyData], landmarks: Mapping[str, Landmark], *, frames: LimbFrames | None = None,
                    not_measured: dict[str, str] | None = None) -> dict[str, Axis]:
    """Femoral (20-70 % of length from distal) and tibial (20-80 %) shaft axes (docs/anatomy.md),
    keyed ``femoral_anatomical`` / ``tibial_anatomical``. ``frames``: the landmarks'
    :func:`~orthonav.planning.tka.alignment.limb_frames` when known.

    An axis is left out when the data does not hold the shaft its definition needs: a bone
    cut short by the CT (no femoral head / no ankle: the length is unknown), or a gap in the
    bone (the three-stack hip/knee/ankle protocol misses the mid-shaft). ``not_measured``
    (if given) then receives ``{key: why}``.
    """
    fr = frames if frames is not None else limb_frames(landmarks)
    out = {}
    whole = {"femur": "femoral_head_centre" in landmarks, "tibia": "ankle_centre" in landmarks}
    for bone, prox, frac in (("femur", fr.femur_proximal, (0.2, 0.7)), ("tibia", fr.tibia_proximal, (0.2, 0.8))):
        if bone not in meshes or prox is None:
            continue
        key = f"{bone.replace('femur', 'femoral').replace('tibia', 'tibial')}_anatomical"
        pts = np.asarray(meshes[bone].points)
        h = pts @ prox
        length = float(h.max() - h.min())
        if not whole[bone]:
            if not_measured is not None:
                not_measured[key] = (f"not measured: the {bone}'s shaft axis is defined over {int(frac[0] * 100)}-{int(frac[1] * 100)} % of "
                                     f"its length, and the CT holds only {length:.0f} mm of it (the {'femoral head' if bone == 'femur' else 'ankle'} is not in the data)")
            continue
        lo, hi = frac[0] * length, frac[1] * length
        empty = _missing_sections(meshes[bone], pts[np.argmin(h)], prox, np.linspace(lo, hi, 11))
        if empty:
            if not_measured is not None:
                not_measured[key] = (f"not measured: needs the {bone}'s mid-shaft ({int(frac[0] * 100)}-{int(frac[1] * 100)} % of its length "
                                     f"from distal, {lo:.0f}-{hi:.0f} mm); the CT has no bone at {min(empty):.0f}-{max(empty):.0f} mm "
                                     "(a gap between stacks); the mechanical axes do not need it")
            continue
        out[key] = anatomical_axis(meshes[bone], pts[np.argmin(h)], prox, length, frac)
    return out


def _missing_sections(mesh: pv.PolyData, distal_end: np.ndarray, prox: np.ndarray, heights_mm: np.ndarray) -> list[float]:
    """The heights (mm above ``distal_end`` along ``prox``) where a cross-section of the mesh is empty."""
    return [float(t) for t in heights_mm if mesh.slice(normal=prox, origin=distal_end + t * prox).n_points == 0]


def _partial_angle_reasons(lms: Mapping[str, Landmark], not_measured: Mapping[str, str]) -> dict[str, str]:
    """Why each alignment angle that needs a missing joint centre is absent."""
    out = {}
    for angle, needs in ANGLE_REQUIREMENTS.items():
        gone = [n for n in needs if n not in lms and n in not_measured]
        if gone:
            out[angle] = f"not measured: needs {' and '.join(gone)}; {not_measured[gone[0]].removeprefix('not measured: ')}"
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
    found: dict[str, dict[str, str]] = {}
    lms = find_landmarks(meshes, side=side, report=found)
    not_measured = dict(found["not_measured"])
    fr = limb_frames(lms)  # the knee's frames, once for the whole plan
    axes = compute_axes(lms)
    axes.update(anatomical_axes(meshes, lms, frames=fr, not_measured=not_measured))
    angles = compute_angles(lms, frames=fr)
    not_measured.update(_partial_angle_reasons(lms, not_measured))
    assumptions = dict(found["assumptions"])
    partial = "femoral_axis_reference" in lms or "tibial_axis_reference" in lms
    if alignment == "mechanical" and not partial:
        cuts = mechanical_cuts(lms, resection_mm=resection_mm, slope_deg=slope_deg, frames=fr)
    elif alignment == "mechanical":
        # No hip or ankle centre: mechanical alignment cannot be planned. The cuts' coronal
        # orientation follows the native joint lines, which the data holds (docs/anatomy.md).
        cuts = kinematic_cuts(lms, resection_mm=resection_mm, slope_deg=slope_deg, frames=fr)
        assumptions["cut_orientation"] = (
            "mechanical alignment needs the hip and ankle centres, which are not in the CT: the distal femoral cut is parallel to "
            f"the distal condylar line and the tibial cut to the plateau line (coronal plane, as in kinematic alignment), the tibial "
            f"cut with {slope_deg:.1f} deg posterior slope to the tibial planning axis")
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
        not_measured=not_measured,
        assumptions=assumptions,
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
    aligned = component_alignment(plan, frames=fr)  # no coronal tilts without the mechanical axes
    if partial:
        why = "not measured: needs the mechanical axes (hip and ankle centres), which are not in the CT"
        gone = {k: why for k in ("femoral_component_coronal_deg", "tibial_component_coronal_deg", "predicted_hka_deg")}
        plan = plan.model_copy(update={"not_measured": {**plan.not_measured, **gone}})
    return plan.model_copy(update={"metrics": {**sizing, **metrics, **aligned}})


__all__ = ["anatomical_axes", "build_tka_plan", "is_knee_case", "load_knee_meshes", "stack_pieces"]
