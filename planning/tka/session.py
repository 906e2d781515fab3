"""The knee (TKA) editing session: every edit recomputes axes, angles, implant-derived cuts,
resection depths and outcome metrics (:class:`TkaSession`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyvista as pv
from orthonav.core.volume import Volume

from ..landmarks import position
from ..schema import CutPlane, Plan
from ..session import PlanSession
from .alignment import LimbFrames, component_alignment, compute_angles, compute_axes, knee_centre, limb_frames
from .cuts import depth_along_axis_mm
from .outcomes import BoneSolids, Resection, compute_metrics
from .placement import cuts_from_implants

#: Sizing figures of the automatic plan that an edit keeps (they describe the native bone).
KEPT_METRICS = ("anterior_notch_mm", "femoral_ap_needed_mm", "tibial_section_ml_mm", "tibial_section_ap_mm", "extension_gap_mm", "insert_thickness_mm")


def refresh_depths(cut: CutPlane, landmarks: Mapping[str, object], *, frames: LimbFrames | None = None) -> CutPlane:
    """``cut`` with ``depths_mm`` (and ``resection_depth_mm`` at its reference) recomputed from
    the current landmark positions, measured as :mod:`orthonav.planning.tka.cuts` defines them
    (along the bone's mechanical axis for the distal femoral and tibial cuts, perpendicular
    to the plane otherwise). Depths whose landmarks or axis are missing are left as they were.
    ``frames``: the landmarks' :func:`~orthonav.planning.tka.alignment.limb_frames` when known."""
    if not cut.depths_mm:
        return cut
    fr = frames if frames is not None else limb_frames(landmarks)
    axis = {"femur": fr.femur_proximal, "tibia": fr.tibia_proximal}.get(cut.bone)
    point, normal = np.asarray(cut.point_lps_mm), np.asarray(cut.normal_lps)
    along_axis = axis is not None and abs(float(np.dot(normal, axis))) > 0.5  # a transverse cut
    depths = dict(cut.depths_mm)
    for name in depths:
        if name not in landmarks:
            continue
        p = position(landmarks[name])
        depths[name] = depth_along_axis_mm(p, point, normal, axis) if along_axis else float(np.dot(p - point, normal))
    ref = depths.get(cut.reference, cut.resection_depth_mm)
    return cut.model_copy(update={"depths_mm": depths, "resection_depth_mm": float(ref)})


class TkaSession(PlanSession):
    """A knee plan being edited, with its bones (as solids for fast booleans) and optional CT.

    Every edit (:meth:`move_implant`, :meth:`set_implant_pose`, :meth:`set_landmark`,
    :meth:`resize_implant`, :meth:`set_cut`) recomputes axes, angles, implant-derived cuts,
    resection depths and outcome metrics (the limb frames once per update), and pushes the
    previous plan on the undo stack.
    """

    def __init__(self, plan: Plan, meshes: Mapping[str, pv.PolyData], *, ct: Volume | None = None, max_undo: int = 200) -> None:
        self._solids = BoneSolids(meshes, roi_centre_lps=knee_centre(plan.landmarks))
        super().__init__(plan, meshes, ct=ct, max_undo=max_undo)

    def _recompute(self, plan: Plan) -> tuple[Plan, dict[str, Resection]]:
        lms = plan.landmarks
        fr = limb_frames(lms)
        axes = {**{k: v for k, v in plan.axes.items() if k.endswith("_anatomical")}, **compute_axes(lms)}
        angles = compute_angles(lms, frames=fr)
        cuts = {k: refresh_depths(c, lms, frames=fr) for k, c in plan.cuts.items()}  # landmarks may have moved
        if plan.implants:
            cuts.update(cuts_from_implants(plan.implants, lms, frames=fr))
        plan = plan.model_copy(update={"axes": axes, "angles_deg": angles, "cuts": cuts})
        metrics, res = compute_metrics(plan, self._solids, ct=self.ct)
        keep = {k: v for k, v in plan.metrics.items() if k in KEPT_METRICS}
        metrics = {**keep, **metrics, **component_alignment(plan, frames=fr)}
        # A measure supplied since (e.g. a femoral head centre picked by hand) is no longer missing.
        present = {*lms, *angles, *axes, *metrics}
        missing = {k: v for k, v in plan.not_measured.items() if k not in present}
        return plan.model_copy(update={"metrics": metrics, "not_measured": missing}), res


__all__ = ["KEPT_METRICS", "TkaSession", "refresh_depths"]
