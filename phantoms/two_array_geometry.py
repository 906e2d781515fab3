"""What the two-array OR script needs of a knee case: each bone's fiducials, targets, array
mount and planned cut, the knee model of the true landmarks and the gap truth.

:func:`two_array_geometry` reads a phantom case (``truth/truth.json``, ``plan.json``, the TRUE
meshes ``truth/meshes/femur.stl`` and ``tibia.stl``); every position is CT LPS millimetres, every
direction an LPS unit vector. The plan is asked through :mod:`orthonav.planning.query` and the
cut frames are navigation's own (:func:`orthonav.navigation.guidance.cut_frame`), so scripted
saw errors are defined in the frame navigation measures them in. Used by
:mod:`orthonav.phantoms.scenario_two_array`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from orthonav.core.errors import InputError
from orthonav.core.vectors import perpendicular, unit
from orthonav.phantoms.gap_truth import GapTruthGeometry, gap_truth_geometry
from orthonav.phantoms.knee_motion import KneeAngles, KneeJoint, knee_joint

if TYPE_CHECKING:
    from orthonav.planning.schema import Plan

Vec = NDArray[np.float64]

#: The reference tools of the two-array knee toolset (:func:`orthonav.tracking.tools.knee_two_array_toolset`).
FEMUR_REFERENCE, TIBIA_REFERENCE = "FemurRef", "TibiaRef"
#: Distance (mm) of the tibial array's mount below the tibial knee centre, along the tibial axis.
TIBIA_MOUNT_BELOW_MM = 110.0


@dataclass(frozen=True)
class BoneSite:
    """What the script needs of one bone (CT LPS mm, unit directions).

    Attributes
    ----------
    bone, reference
        The case bone (``femur`` / ``tibia``) and its array's tool name.
    fiducial_names, fiducials_ct_mm
        The bone's plan fiducials (plan order) and their TRUE positions (n, 3).
    targets_ct_mm
        The bone's truth targets (verification and TRE).
    mount_ct_mm
        Where the array is screwed to the bone.
    cut_name, cut_point_mm, cut_normal, cut_anterior, cut_medial
        The planned cut the saw follows on this bone and its frame (the frame navigation
        measures saw guidance in: normal into the removed bone, anterior and medial in the plane).
    """

    bone: str
    reference: str
    fiducial_names: tuple[str, ...]
    fiducials_ct_mm: Vec
    targets_ct_mm: Mapping[str, Vec]
    mount_ct_mm: Vec
    cut_name: str
    cut_point_mm: Vec
    cut_normal: Vec
    cut_anterior: Vec
    cut_medial: Vec


@dataclass(frozen=True)
class TwoArrayGeometry:
    """The two bones, the knee model (true landmarks) and the gap truth (None without meshes)."""

    femur: BoneSite
    tibia: BoneSite
    joint: KneeJoint
    gaps: GapTruthGeometry | None = None

    def site(self, bone: str) -> BoneSite:
        return self.femur if bone == self.femur.bone else self.tibia

    @property
    def native(self) -> KneeAngles:
        """The knee's alignment as imaged (true landmarks)."""
        return self.joint.native()


def _cut_site(bone: str, reference: str, names: list[str], fid: Vec, targets: Mapping[str, Vec], mount: Vec, plan: Plan,
              cut_name: str) -> BoneSite:
    from orthonav.navigation.guidance import cut_frame
    from orthonav.planning import query

    if cut_name not in plan.cuts:
        raise InputError(None, f"the plan has no {cut_name!r} cut for the saw on the {bone}")
    cut = plan.cuts[cut_name]
    fr = cut_frame(cut.point_lps_mm, cut.normal_lps, query.medial_direction(plan, cut.bone))
    return BoneSite(bone, reference, tuple(names), fid, dict(targets), mount, cut_name, fr.point_mm, fr.normal, fr.anterior, fr.medial)


def tibia_mount(joint: KneeJoint, tibia_mesh: object | None = None) -> Vec:
    """A plausible tibial array mount (CT mm): on the antero-medial face of the tibial shaft
    :data:`TIBIA_MOUNT_BELOW_MM` below the tibial knee centre (the mesh vertex at that level
    reaching furthest antero-medially; without a mesh, 20 mm from the axis that way)."""
    t = joint.tibia_axis
    medial = unit(perpendicular(-joint.femur_lateral, t), "tibial medial direction")
    out = unit(joint.tibia_anterior + medial, "antero-medial direction")
    level = joint.tibial_knee_centre_mm - TIBIA_MOUNT_BELOW_MM * t
    if tibia_mesh is None:
        return level + 20.0 * out
    pts = np.asarray(getattr(tibia_mesh, "points"), dtype=np.float64)
    near = np.abs((pts - level) @ t) < 3.0
    if not np.any(near):
        raise InputError(None, f"the tibia mesh does not reach {TIBIA_MOUNT_BELOW_MM:.0f} mm below the tibial knee centre")
    cand = pts[near]
    return cand[int(np.argmax((cand - level) @ out))]


def two_array_geometry_from(truth: object, plan: Plan, meshes: Mapping[str, object] | None = None, *,
                            femur: str = "femur", tibia: str = "tibia",
                            gap_band_mm: tuple[float, float] | None = None) -> TwoArrayGeometry:
    """Combine phantom truth (``truth.json`` object), a knee plan (with ``distal_femur`` and
    ``proximal_tibia`` cuts) and the TRUE bone meshes (name -> PolyData, CT mm; optional: without
    them no gap truth and a nominal tibial mount) into a :class:`TwoArrayGeometry`."""
    from orthonav.phantoms.or_geometry import geometry_from

    base = geometry_from(truth, plan)  # plan fiducials matched to the TRUE ones, plan order
    lms = {k: np.asarray(v, dtype=np.float64) for k, v in getattr(truth, "landmarks_lps_mm").items()}
    joint = knee_joint(lms)
    target_bones = dict(getattr(truth, "target_bones", {}) or {})
    sites = {}
    for bone, ref, cut in ((femur, FEMUR_REFERENCE, "distal_femur"), (tibia, TIBIA_REFERENCE, "proximal_tibia")):
        idx = [i for i, n in enumerate(base.fiducial_names) if plan.landmarks[n].bone == bone]
        if len(idx) < 3:
            raise InputError(None, f"the plan has {len(idx)} fiducials on the {bone}; per-bone registration needs at least 3")
        targets = {k: v for k, v in base.targets_ct_mm.items() if target_bones.get(k) == bone}
        if bone == femur:
            mount = base.reference_mount_ct_mm
        else:
            mount = tibia_mount(joint, None if meshes is None else meshes.get(tibia))
        sites[bone] = _cut_site(bone, ref, [base.fiducial_names[i] for i in idx], base.fiducials_ct_mm[idx], targets, mount, plan, cut)
    gaps = None
    if meshes is not None and femur in meshes:
        gaps = gap_truth_geometry(meshes[femur], plan.cuts, knee_centre_mm=joint.knee_centre_mm, femur_lateral=joint.femur_lateral,
                                  femur_proximal=joint.femur_proximal, band_mm=gap_band_mm)
    return TwoArrayGeometry(sites[femur], sites[tibia], joint, gaps)


def two_array_geometry(case_dir: str | Path, *, gap_band_mm: tuple[float, float] | None = None) -> TwoArrayGeometry:
    """:func:`two_array_geometry_from` of a phantom case: ``truth/truth.json``, ``plan.json`` and
    the TRUE meshes ``truth/meshes/femur.stl``, ``tibia.stl``."""
    from orthonav.core.case import Case
    from orthonav.core.meshio import read_mesh
    from orthonav.phantoms.truth import read_truth
    from orthonav.planning.schema import load_plan

    case = Case(case_dir)
    plan = load_plan(case.require(case.plan, "orthonav plan --auto"))
    meshes = {b: read_mesh(case.truth_dir / "meshes" / f"{b}.stl") for b in ("femur", "tibia")
              if (case.truth_dir / "meshes" / f"{b}.stl").is_file()}
    return two_array_geometry_from(read_truth(case_dir), plan, meshes or None, gap_band_mm=gap_band_mm)


__all__ = ["FEMUR_REFERENCE", "TIBIA_MOUNT_BELOW_MM", "TIBIA_REFERENCE", "BoneSite", "TwoArrayGeometry", "tibia_mount",
           "two_array_geometry", "two_array_geometry_from"]
