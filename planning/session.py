"""An editable planning session: every change recomputes cuts and metrics; undo / redo.

The interactive window (``planning/ui.py``) and scripts drive the same object; it holds no
rendering. Each edit produces a new immutable :class:`Plan` (pydantic ``model_copy``), so
undo is a stack of plans.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyvista as pv
from numpy.typing import ArrayLike
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume

from .alignment import compute_angles, compute_axes, limb_frames, position
from .cuts import depth_along_axis_mm
from .outcomes import BoneSolids, Resection, compute_metrics
from .placement import cuts_from_implants, implant_delta, move_implant
from .schema import CutPlane, Landmark, Plan, save_plan


def component_alignment(plan: Plan) -> dict[str, float]:
    """Component orientation vs the mechanical axes (degrees).

    ``femoral_component_coronal_deg`` / ``tibial_component_coronal_deg``: tilt of the
    component's z axis (its joint-line normal) from the bone's mechanical axis in the
    coronal plane, positive when it leans laterally (0 = mechanically aligned; a tibial cut
    in varus leans medially, i.e. negative); ``tibial_component_slope_deg``: posterior slope
    of the tray; ``femoral_component_rotation_deg``: external rotation of the component's
    anterior axis from the TEA-perpendicular; ``predicted_hka_deg``: with the joint lines of
    the two components parallel in extension, 180 - femoral + tibial tilt (varus < 180).
    """
    fr = limb_frames(plan.landmarks)
    out: dict[str, float] = {}
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
    if "femoral_component_coronal_deg" in out and "tibial_component_coronal_deg" in out and "hka" in plan.angles_deg:
        # Parallel joint lines: the tibial axis is turned (femoral - tibial tilt) laterally
        # from the femoral axis, which puts the ankle medially, i.e. varus.
        out["predicted_hka_deg"] = 180.0 - out["femoral_component_coronal_deg"] + out["tibial_component_coronal_deg"]
    return out


def refresh_depths(cut: CutPlane, landmarks) -> CutPlane:
    """``cut`` with ``depths_mm`` (and ``resection_depth_mm`` at its reference) recomputed from
    the current landmark positions, measured as :mod:`orthonav.planning.cuts` defines them
    (along the bone's mechanical axis for the distal femoral and tibial cuts, perpendicular
    to the plane otherwise). Depths whose landmarks or axis are missing are left as they were."""
    if not cut.depths_mm:
        return cut
    fr = limb_frames(landmarks)
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


class PlanSession:
    """A plan being edited, with its bones (as solids for fast booleans) and optional CT.

    Every edit (:meth:`move_implant`, :meth:`set_implant_pose`, :meth:`set_landmark`,
    :meth:`resize_implant`) recomputes axes, angles, implant-derived cuts, resection depths
    and outcome metrics, and pushes the previous plan on the undo stack.
    """

    def __init__(self, plan: Plan, meshes: Mapping[str, pv.PolyData], *, ct: Volume | None = None, max_undo: int = 200) -> None:
        from .auto import knee_centre

        self._solids = BoneSolids(meshes, roi_centre_lps=knee_centre(plan.landmarks))
        self.meshes = meshes
        self.ct = ct
        self._undo: list[Plan] = []
        self._redo: list[Plan] = []
        self._max_undo = max_undo
        self._plan, self.resections = self._recompute(plan)

    # -- state --------------------------------------------------------------------------
    @property
    def plan(self) -> Plan:
        return self._plan

    def _recompute(self, plan: Plan) -> tuple[Plan, dict[str, Resection]]:
        lms = plan.landmarks
        axes = {**{k: v for k, v in plan.axes.items() if k.endswith("_anatomical")}, **compute_axes(lms)}
        angles = compute_angles(lms)
        cuts = {k: refresh_depths(c, lms) for k, c in plan.cuts.items()}  # landmarks may have moved
        if plan.implants:
            cuts.update(cuts_from_implants(plan.implants, lms))
        plan = plan.model_copy(update={"axes": axes, "angles_deg": angles, "cuts": cuts})
        metrics, res = compute_metrics(plan, self._solids, ct=self.ct)
        keep = {k: v for k, v in plan.metrics.items() if k in ("anterior_notch_mm", "femoral_ap_needed_mm", "tibial_section_ml_mm", "tibial_section_ap_mm", "extension_gap_mm", "insert_thickness_mm")}
        metrics = {**keep, **metrics, **component_alignment(plan)}
        return plan.model_copy(update={"metrics": metrics}), res

    def _commit(self, plan: Plan) -> Plan:
        new, res = self._recompute(plan)
        self._undo.append(self._plan)
        if len(self._undo) > self._max_undo:
            self._undo.pop(0)
        self._redo.clear()
        self._plan, self.resections = new, res
        return new

    # -- edits --------------------------------------------------------------------------
    def _index(self, implant: int | str) -> int:
        if isinstance(implant, int):
            if not 0 <= implant < len(self._plan.implants):
                raise InputError(None, f"no implant #{implant}; the plan has {len(self._plan.implants)}")
            return implant
        for i, imp in enumerate(self._plan.implants):
            if imp.family == implant:
                return i
        raise InputError(None, f"no {implant!r} implant in the plan")

    def move_implant(self, implant: int | str, *, translation_mm: ArrayLike = (0.0, 0.0, 0.0), rotation_axis: ArrayLike = (0.0, 0.0, 1.0), rotation_deg: float = 0.0) -> Plan:
        """Move an implant by a 6-DoF step in its own frame (mm, degrees). Moving the tibial
        tray moves the insert with it."""
        i = self._index(implant)
        delta = implant_delta(translation_mm=translation_mm, rotation_axis=rotation_axis, rotation_deg=rotation_deg)
        imps = list(self._plan.implants)
        moved = move_implant(imps[i], delta)
        if imps[i].family == "tka_tibial_tray":
            imps = [imp.model_copy(update={"ct_from_implant": moved.ct_from_implant}) if imp.family == "tka_insert" else imp for imp in imps]
        imps[i] = moved
        return self._commit(self._plan.model_copy(update={"implants": imps}))

    def set_implant_pose(self, implant: int | str, ct_from_implant: ArrayLike) -> Plan:
        """Place an implant at an absolute pose (validated rigid)."""
        i = self._index(implant)
        imps = list(self._plan.implants)
        imps[i] = imps[i].model_copy(update={"ct_from_implant": np.asarray(ct_from_implant, dtype=float).tolist()})
        type(imps[i]).model_validate(imps[i].model_dump())
        return self._commit(self._plan.model_copy(update={"implants": imps}))

    def resize_implant(self, implant: int | str, size: str) -> Plan:
        """Change an implant's size (pose unchanged)."""
        from .implants import implant_model

        i = self._index(implant)
        imps = list(self._plan.implants)
        implant_model(imps[i].family, size)  # raises on an unknown size
        imps[i] = imps[i].model_copy(update={"size": size})
        return self._commit(self._plan.model_copy(update={"implants": imps}))

    def set_landmark(self, name: str, position_lps_mm: ArrayLike, *, method: str = "manual", bone: str | None = None) -> Plan:
        """Override a landmark (e.g. picked in the UI); axes, angles and cut depths follow.
        ``bone`` defaults to the existing landmark's (or 'unknown' for a new name)."""
        p = np.asarray(position_lps_mm, dtype=float)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise InputError(None, f"landmark {name!r} needs 3 finite coordinates, got {p.tolist()}")
        lms = dict(self._plan.landmarks)
        if bone is None:
            bone = lms[name].bone if name in lms else "unknown"
        lms[name] = Landmark(position_lps_mm=tuple(p), bone=bone, method=method)
        return self._commit(self._plan.model_copy(update={"landmarks": lms}))

    def set_cut(self, name: str, point_lps_mm: ArrayLike, normal_lps: ArrayLike) -> Plan:
        """Move a cut plane that no implant owns (e.g. dragged in the UI): a point on it and its
        normal, both in CT LPS (mm / unit vector); depths and metrics follow."""
        if name not in self._plan.cuts:
            raise InputError(None, f"the plan has no cut {name!r}; it has {sorted(self._plan.cuts)}")
        p = np.asarray(point_lps_mm, dtype=float)
        n = np.asarray(normal_lps, dtype=float)
        if p.shape != (3,) or n.shape != (3,) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(n))) or np.linalg.norm(n) < 1e-9:
            raise InputError(None, f"cut {name!r} needs a finite point and a non-zero normal, got {p.tolist()} / {n.tolist()}")
        moved = self._plan.cuts[name].model_copy(update={"point_lps_mm": tuple(p), "normal_lps": tuple(n / np.linalg.norm(n))})
        return self._commit(self._plan.model_copy(update={"cuts": {**self._plan.cuts, name: moved}}))

    # -- history ------------------------------------------------------------------------
    def undo(self) -> Plan:
        if not self._undo:
            raise InputError(None, "nothing to undo")
        self._redo.append(self._plan)
        self._plan, self.resections = self._recompute(self._undo.pop())
        return self._plan

    def redo(self) -> Plan:
        if not self._redo:
            raise InputError(None, "nothing to redo")
        self._undo.append(self._plan)
        self._plan, self.resections = self._recompute(self._redo.pop())
        return self._plan

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def save(self, path: str | Path) -> Path:
        """Write the current plan atomically."""
        return save_plan(path, self._plan)


__all__ = ["PlanSession", "component_alignment", "refresh_depths"]
