"""An editable plan: every edit recomputes what follows from it; undo / redo.

The interactive window (``planning/ui.py``) and scripts drive the same object; it holds no
rendering. Each edit produces a new immutable :class:`Plan` (pydantic ``model_copy``), so
undo is a stack of plans. What an edit recomputes is the procedure's:
:class:`~orthonav.planning.tka.session.TkaSession` (knee) and
:class:`~orthonav.planning.tha.session.ThaSession` (hip) define ``_recompute``;
:func:`orthonav.planning.auto.session_for` picks the one for a plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyvista as pv
from numpy.typing import ArrayLike
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume

from .implants import implant_delta, implant_model, move_implant
from .schema import Landmark, Plan, save_plan


class PlanSession:
    """A plan being edited, with its bones (LPS mm) and optional CT: the edits and the
    history shared by every procedure.

    Every edit (:meth:`move_implant`, :meth:`set_implant_pose`, :meth:`set_landmark`,
    :meth:`resize_implant`, :meth:`set_cut`) recomputes what follows from the plan
    (:meth:`_recompute`, the procedure's) and pushes the previous plan on the undo stack.
    """

    def __init__(self, plan: Plan, meshes: Mapping[str, pv.PolyData], *, ct: Volume | None = None, max_undo: int = 200) -> None:
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

    def _recompute(self, plan: Plan) -> tuple[Plan, dict[str, object]]:
        """The plan with everything derived from its landmarks and implant poses recomputed,
        and the resected bones by name (the procedure's session defines this)."""
        raise NotImplementedError(f"{type(self).__name__} does not recompute plans; use a procedure's session (orthonav.planning.auto.session_for)")

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


__all__ = ["PlanSession"]
