"""``orthonav plan CASE --auto``: landmarks, axes, angles, cuts and fiducials -> ``plan.json``.

Knee (TKA): reads ``CASE/meshes/<bone>.stl`` (femur and tibia required; fibula, patella
optional). Hip (THA, :mod:`orthonav.planning.tha`): when the case has no femur + tibia but
``hip_<side>`` and ``femur_<side>`` meshes (TotalSegmentator names; both hip bones for the
anterior pelvic plane, sacrum optional). Also reads, when present, ``CASE/ct.nii.gz``
(fiducial beads) and ``CASE/labels.json`` (side), and writes ``CASE/plan.json`` atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyvista as pv
from orthonav.core.case import Case, read_labels_table
from orthonav.core.errors import InputError
from orthonav.core.meshio import MESH_SUFFIXES, read_mesh
from orthonav.core.volume import Volume, read_volume
from scipy.spatial import cKDTree

from .alignment import compute_angles, compute_axes, limb_frames
from .cuts import kinematic_cuts, mechanical_cuts
from .fiducials import detect_fiducial_beads
from .landmarks import anatomical_axis, find_landmarks, infer_side
from .outcomes import BoneSolids, compute_metrics
from .placement import cuts_from_implants, place_tka
from .schema import Landmark, Plan, save_plan

KNEE_BONES = ("femur", "tibia", "fibula", "patella")
REQUIRED_BONES = ("femur", "tibia")


def find_mesh_path(case: Case, bone: str) -> Path | None:
    """The first existing ``CASE/meshes/<bone><ext>`` over the supported endings, or None."""
    for ext in MESH_SUFFIXES:
        p = case.mesh(bone, ext)
        if p.is_file():
            return p
    return None


def largest_piece(mesh: pv.PolyData) -> tuple[pv.PolyData, float]:
    """The largest connected surface of a mesh and the fraction of vertices dropped
    (segmentation islands: stray voxels or a mislabelled fragment of a neighbour)."""
    conn = mesh.connectivity("largest")
    kept = pv.PolyData(np.asarray(conn.points), conn.faces) if conn.n_points else mesh
    return kept.clean(), 1.0 - kept.n_points / max(mesh.n_points, 1)


def check_bone_mesh(mesh: pv.PolyData, path: str | Path) -> None:
    """Raise InputError naming ``path`` if the (largest piece of the) mesh cannot be a bone:
    too few vertices or faces, non-finite coordinates, or flat (thinner than 2 mm)."""
    if mesh.n_points < 50 or mesh.n_cells < 50:
        raise InputError(path, f"bone mesh has only {mesh.n_points} vertices / {mesh.n_cells} faces in its largest piece; re-run segmentation")
    pts = np.asarray(mesh.points, dtype=np.float64)
    if not np.all(np.isfinite(pts)):
        raise InputError(path, "bone mesh has non-finite vertex coordinates")
    extent = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False) / np.sqrt(len(pts))
    if extent[-1] < 1.0:
        raise InputError(path, f"bone mesh is flat (spread {extent[-1]:.2f} mm across its thinnest direction): not a bone surface")


def load_bone_meshes(case_dir: str | Path, bones: tuple[str, ...] = KNEE_BONES, *, required: tuple[str, ...] = REQUIRED_BONES, report: dict[str, float] | None = None) -> dict[str, pv.PolyData]:
    """Read the bone meshes of a case (LPS mm), each reduced to its largest connected piece;
    InputError naming the file if a required one is missing. ``report`` (if given) receives
    ``{bone: fraction of vertices dropped}`` for bones that had islands."""
    case = Case(case_dir)
    out: dict[str, pv.PolyData] = {}
    for b in bones:
        p = find_mesh_path(case, b)
        if p is None:
            if b in required:
                raise InputError(case.mesh(b), f"missing from case {case.root}; run 'orthonav segment' first (planning needs {', '.join(required)})")
            continue
        out[b], dropped = largest_piece(read_mesh(p))
        check_bone_mesh(out[b], p)
        if dropped > 0 and report is not None:
            report[b] = dropped
    return out


def load_case_meshes(case_dir: str | Path, procedure: str = "tka") -> dict[str, pv.PolyData]:
    """The bone meshes a plan of ``procedure`` is drawn and edited with: the knee bones
    (femur and tibia required) for 'tka', the hip bones present for 'tha'."""
    if procedure == "tha":
        from .tha import load_hip_meshes

        return load_hip_meshes(case_dir)
    return load_bone_meshes(case_dir)


def _nearest_bone(p: np.ndarray, trees: dict[str, cKDTree]) -> str:
    return min(trees, key=lambda b: trees[b].query(p)[0])


def fiducial_landmarks(ct: Volume, meshes: dict[str, pv.PolyData], *, min_hu: float = 2500.0) -> dict[str, Landmark]:
    """Detect beads in the CT; ``fiducial_1..n`` in :func:`detect_fiducial_beads` order
    (descending LPS z), each assigned to the nearest bone surface."""
    beads = detect_fiducial_beads(ct, min_hu=min_hu)
    trees = {b: cKDTree(np.asarray(m.points)) for b, m in meshes.items()}
    return {
        f"fiducial_{i + 1}": Landmark(position_lps_mm=tuple(float(x) for x in p), bone=_nearest_bone(p, trees), method="bead centroid")
        for i, p in enumerate(beads)
    }


def anatomical_axes(meshes: dict[str, pv.PolyData], landmarks: dict[str, Landmark]) -> dict:
    """Femoral (20-70 % of length from distal) and tibial (20-80 %) shaft axes (docs/anatomy.md)."""
    fr = limb_frames(landmarks)
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


def knee_centre(landmarks) -> np.ndarray | None:
    """Midpoint of the femoral and tibial knee centres (LPS mm), or None if missing."""
    from .alignment import position

    names = [n for n in ("femoral_knee_centre", "tibial_knee_centre") if n in landmarks]
    return np.mean([position(landmarks[n]) for n in names], axis=0) if names else None


def build_plan(
    meshes: dict[str, pv.PolyData],
    *,
    alignment: str = "mechanical",
    resection_mm: float = 9.0,
    slope_deg: float = 3.0,
    side: str | None = None,
    fiducials: dict[str, Landmark] | None = None,
    implants: bool = True,
    ct: Volume | None = None,
) -> Plan:
    """The automatic plan from meshes alone (no file I/O): landmarks, axes, angles, cuts,
    and (``implants=True``) sized and placed TKA components, implant-derived cuts and
    outcome metrics (removed volume, coverage, density when ``ct`` is given)."""
    if alignment not in ("mechanical", "kinematic"):
        raise InputError(None, f"alignment must be 'mechanical' or 'kinematic', got {alignment!r}")
    lms = find_landmarks(meshes, side=side)
    axes = compute_axes(lms)
    axes.update(anatomical_axes(meshes, lms))
    angles = compute_angles(lms)
    if alignment == "mechanical":
        cuts = mechanical_cuts(lms, resection_mm=resection_mm, slope_deg=slope_deg)
    else:
        cuts = kinematic_cuts(lms, resection_mm=resection_mm)
    all_lms = dict(lms)
    all_lms.update(fiducials or {})
    plan = Plan(
        procedure="tka",
        side=side if side is not None else infer_side(lms),
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
    placed, sizing = place_tka(lms, meshes, cuts, femoral_rotation_deg=rot, tibia_solid=solids.solid("tibia"))
    implied = cuts_from_implants(placed, lms)
    plan = plan.model_copy(update={"implants": placed, "cuts": implied, "metrics": sizing})
    from .session import component_alignment

    metrics, _ = compute_metrics(plan, solids, ct=ct)
    return plan.model_copy(update={"metrics": {**sizing, **metrics, **component_alignment(plan)}})


def case_procedure(case_dir: str | Path) -> str:
    """'tha' when the case has a hip bone and a femur of one side (``hip_<side>``,
    ``femur_<side>``) and not both femur and tibia; 'tka' when it has any knee bone (a
    missing one is then reported by its file); else InputError naming the meshes folder."""
    from .tha import HIP_BONES, is_hip_case

    case = Case(case_dir)
    present = [b for b in (*KNEE_BONES, *HIP_BONES) if find_mesh_path(case, b) is not None]
    if is_hip_case(present):
        return "tha"
    if any(b in present for b in KNEE_BONES):
        return "tka"  # planning then names the missing knee bone's file
    raise InputError(case.meshes_dir, f"no bones to plan: a knee needs {' and '.join(REQUIRED_BONES)}, a hip needs hip_<side> and femur_<side> meshes (found: {', '.join(present) or 'none'}); run 'orthonav segment' first")


def auto_plan(
    case_dir: str | Path,
    *,
    alignment: str = "mechanical",
    resection_mm: float = 9.0,
    slope_deg: float = 3.0,
    bead_min_hu: float = 2500.0,
    side: str | None = None,
    procedure: str | None = None,
    cup_inclination_deg: float = 40.0,
    cup_anteversion_deg: float = 15.0,
    cup_medialise_mm: float = 0.0,
    ream_mm: float = 2.0,
) -> Plan:
    """Plan a TKA or a THA automatically and write ``CASE/plan.json``.

    Parameters
    ----------
    case_dir
        The case folder (a knee: ``meshes/femur.*`` and ``meshes/tibia.*``; a hip:
        ``meshes/hip_<side>.*`` and ``meshes/femur_<side>.*``).
    alignment
        'mechanical' (cuts perpendicular to the mechanical axes) or 'kinematic'.
    resection_mm
        Distal femoral and proximal tibial resection depth (mm).
    slope_deg
        Posterior slope of the tibial cut for mechanical alignment (deg).
    bead_min_hu
        Threshold for fiducial bead candidates in ``CASE/ct.nii.gz`` (skipped if no CT).
    side
        Operated side ('left' / 'right'; THA also 'both'). Default: ``labels.json``'s side;
        for a THA without one, both sides with a femur are planned.
    procedure
        'tka' or 'tha'; default from the meshes present (:func:`case_procedure`).
    cup_inclination_deg, cup_anteversion_deg, cup_medialise_mm, ream_mm
        THA cup target (radiographic, relative to the anterior pelvic plane), medialisation
        of the cup centre and diametral reaming allowance (cup >= socket diameter + ream).

    Returns
    -------
    Plan
        The plan that was written.
    """
    case = Case(case_dir)
    if not case.root.is_dir():
        raise InputError(case.root, "case folder not found")
    if procedure is None:
        procedure = case_procedure(case.root)
    if procedure not in ("tka", "tha"):
        raise InputError(None, f"procedure must be 'tka' or 'tha', got {procedure!r}")
    islands: dict[str, float] = {}
    if procedure == "tha":
        from .tha import load_hip_meshes

        meshes = load_hip_meshes(case.root, report=islands)
    else:
        meshes = load_bone_meshes(case.root, report=islands)
    if side is None and case.labels_json.is_file():
        side = read_labels_table(case.labels_json).side
    ct = read_volume(case.ct) if case.ct.is_file() else None
    fids = fiducial_landmarks(ct, meshes, min_hu=bead_min_hu) if ct is not None else {}
    try:
        if procedure == "tha":
            from .tha import build_tha_plan

            plan = build_tha_plan(meshes, side=side, inclination_deg=cup_inclination_deg, anteversion_deg=cup_anteversion_deg, medialise_mm=cup_medialise_mm, ream_mm=ream_mm, fiducials=fids)
        else:
            plan = build_plan(meshes, alignment=alignment, resection_mm=resection_mm, slope_deg=slope_deg, side=side, fiducials=fids, ct=ct)
    except InputError as e:
        if e.path is not None:
            raise
        # Name the files the automatic plan was computed from.
        raise InputError(case.meshes_dir, f"automatic plan failed on these meshes ({', '.join(sorted(meshes))}): {e.problem}") from e
    if islands:
        dropped = ", ".join(f"{b} {100 * f:.1f}%" for b, f in islands.items())
        plan = plan.model_copy(update={"notes": plan.notes + f"; disconnected mesh pieces ignored (vertices dropped: {dropped})"})
    save_plan(case.plan, plan)
    return plan


__all__ = ["anatomical_axes", "auto_plan", "build_plan", "case_procedure", "check_bone_mesh", "fiducial_landmarks", "find_mesh_path", "load_bone_meshes", "load_case_meshes"]
