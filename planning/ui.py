"""``orthonav plan CASE``: the interactive planning window (PyVista).

Bones, landmarks, axes, cut planes and implants; keys move the selected implant in its own
frame (6 DoF), every move recomputes cuts and metrics (:class:`PlanSession`); a live text
readout shows angles, component alignment, sizes and resections; ``u`` undoes, ``y`` redoes,
``s`` saves ``plan.json``. Right-click picks a surface point for the landmark chosen with
``l`` (manual override).

The key handling is a plain object (:class:`PlanEditor`) so it is tested without a display;
:func:`open_plan_window` only wires it to a plotter. Implant actors are moved with
``actor.user_matrix`` (never rebuilt); cut discs are re-placed the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from orthonav.core.case import Case
from orthonav.core.errors import InputError

from .schema import Plan, load_plan
from .session import PlanSession

STEP_MM = 0.5
STEP_DEG = 1.0

#: key -> (translation mm in the implant frame, rotation axis, rotation deg)
MOVE_KEYS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    "Up": ((0.0, 0.0, STEP_MM), (0.0, 0.0, 1.0), 0.0),  # proximal
    "Down": ((0.0, 0.0, -STEP_MM), (0.0, 0.0, 1.0), 0.0),  # distal
    "Right": ((STEP_MM, 0.0, 0.0), (0.0, 0.0, 1.0), 0.0),
    "Left": ((-STEP_MM, 0.0, 0.0), (0.0, 0.0, 1.0), 0.0),
    "Prior": ((0.0, STEP_MM, 0.0), (0.0, 0.0, 1.0), 0.0),  # Page Up: anterior
    "Next": ((0.0, -STEP_MM, 0.0), (0.0, 0.0, 1.0), 0.0),  # Page Down: posterior
    "r": ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), STEP_DEG),  # rotation about the implant's z
    "R": ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), -STEP_DEG),
    "v": ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), STEP_DEG),  # varus/valgus (about y)
    "V": ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), -STEP_DEG),
    "f": ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), STEP_DEG),  # flexion / slope (about x)
    "F": ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), -STEP_DEG),
}
MOVABLE = ("tka_femoral", "tka_tibial_tray", "tha_cup", "tha_stem")
READOUT_METRICS = (
    "predicted_hka_deg",
    "femoral_component_coronal_deg",
    "femoral_component_rotation_deg",
    "tibial_component_coronal_deg",
    "tibial_component_slope_deg",
    "femur_removed_volume_mm3",
    "tibia_removed_volume_mm3",
    "tibial_coverage_fraction",
    "tibial_max_overhang_mm",
)


class PlanEditor:
    """Key-driven editing of a :class:`PlanSession` (no rendering).

    ``handle_key(key)`` returns True when the plan changed (the view must refresh).
    """

    def __init__(self, session: PlanSession, *, save_to: str | Path | None = None) -> None:
        self.session = session
        self.save_to = Path(save_to) if save_to is not None else None
        self.selected = 0
        self.landmark_names = sorted(k for k in session.plan.landmarks if not k.startswith("fiducial_"))
        self.landmark_index = 0
        self.message = ""

    @property
    def movable(self) -> list[int]:
        return [i for i, imp in enumerate(self.session.plan.implants) if imp.family in MOVABLE]

    @property
    def selected_implant(self) -> int | None:
        mv = self.movable
        return mv[self.selected % len(mv)] if mv else None

    @property
    def selected_landmark(self) -> str | None:
        return self.landmark_names[self.landmark_index % len(self.landmark_names)] if self.landmark_names else None

    def handle_key(self, key: str) -> bool:
        try:
            if key == "Tab":
                self.selected += 1
                return False
            if key == "l":
                self.landmark_index += 1
                self.message = f"right-click a bone to place {self.selected_landmark}"
                return False
            if key == "u":
                self.session.undo()
                return True
            if key == "y":
                self.session.redo()
                return True
            if key == "s":
                if self.save_to is None:
                    raise InputError(None, "no plan file to save to")
                self.session.save(self.save_to)
                self.message = f"saved {self.save_to}"
                return False
            if key in MOVE_KEYS and self.selected_implant is not None:
                t, axis, deg = MOVE_KEYS[key]
                self.session.move_implant(self.selected_implant, translation_mm=t, rotation_axis=axis, rotation_deg=deg)
                return True
        except InputError as e:
            self.message = str(e)
        return False

    def pick(self, point_lps_mm) -> bool:
        """Place the selected landmark at a picked surface point."""
        name = self.selected_landmark
        if name is None:
            return False
        self.session.set_landmark(name, point_lps_mm, method="manual (picked)")
        self.message = f"{name} moved"
        return True

    def readout(self) -> str:
        """The live text: selection, angles, component alignment, sizes, resections."""
        p: Plan = self.session.plan
        lines = []
        sel = self.selected_implant
        if sel is not None:
            imp = p.implants[sel]
            lines.append(f"selected: {imp.family} size {imp.size}   (Tab next; arrows/PgUp/PgDn move, r/v/f rotate, u undo, s save)")
        lines.append("  ".join(f"{k} {v:.1f}" for k, v in p.angles_deg.items()))
        lines.append("  ".join(f"{k.replace('_deg', '').replace('_mm3', '').replace('_mm', '')} {p.metrics[k]:.1f}" for k in READOUT_METRICS if k in p.metrics))
        for key, c in p.cuts.items():
            if c.depths_mm:
                lines.append(f"{key}: " + ", ".join(f"{n} {d:.1f} mm" for n, d in c.depths_mm.items()))
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)


def open_plan_window(case_dir: str | Path, *, off_screen: bool = False, on_ready: Callable[[object], None] | None = None) -> PlanEditor:
    """Open the interactive planning window for ``CASE`` (needs a display unless
    ``off_screen``; ``on_ready(plotter)`` runs before showing, e.g. to screenshot)."""
    import pyvista as pv

    from .auto import load_bone_meshes
    from .implants import implant_meshes_for
    from .scene import _setup_rendering, cut_disc, scene_items, view_camera

    case = Case(case_dir)
    plan = load_plan(case.require(case.plan, "orthonav plan CASE --auto"))
    meshes = load_bone_meshes(case.root)
    session = PlanSession(plan, meshes)
    editor = PlanEditor(session, save_to=case.plan)
    _setup_rendering()
    pl = pv.Plotter(off_screen=off_screen, window_size=(1400, 900))
    pl.set_background("white")
    implant_meshes = implant_meshes_for(session.plan)
    actors: dict[str, object] = {}
    for it in scene_items(session.plan, meshes, implant_meshes=None):
        actors[it.name] = pl.add_mesh(it.mesh, color=it.colour, opacity=it.opacity, smooth_shading=it.kind == "bone", pickable=it.kind == "bone")
    for i, imp in enumerate(session.plan.implants):
        a = pl.add_mesh(implant_meshes[f"{imp.family}:{imp.size}"], color="#b0b8c8", smooth_shading=True, pickable=False)
        a.user_matrix = np.asarray(imp.ct_from_implant)
        actors[f"implant:{i}"] = a
    text = pl.add_text(editor.readout(), position="upper_left", font_size=9, color="black")

    def refresh() -> None:
        p = session.plan
        for i, imp in enumerate(p.implants):
            actors[f"implant:{i}"].user_matrix = np.asarray(imp.ct_from_implant)
        for key, c in p.cuts.items():
            name = f"cut:{key}"
            if name in actors:
                pl.remove_actor(actors[name])
                actors[name] = pl.add_mesh(cut_disc(np.asarray(c.point_lps_mm), np.asarray(c.normal_lps), 45.0), color="#2f7fd0", opacity=0.6, pickable=False)
        text.SetText(2, editor.readout())
        pl.render()

    for key in (*MOVE_KEYS, "Tab", "u", "y", "s", "l"):
        pl.add_key_event(key, lambda k=key: (editor.handle_key(k) and refresh()) or text.SetText(2, editor.readout()))
    pl.enable_surface_point_picking(callback=lambda p: editor.pick(p) and refresh(), show_point=False, left_clicking=False)
    pos, focal, up = view_camera(session.plan, "anterior")
    pl.camera_position = [tuple(pos), tuple(focal), tuple(up)]
    pl.camera.parallel_projection = True
    pl.camera.parallel_scale = 90.0
    if on_ready is not None:
        on_ready(pl)
    if not off_screen:
        pl.show(title=f"OrthoNav plan - {case.root.name}")
    else:
        pl.close()
    return editor


#: The name the CLI calls (``orthonav plan CASE``).
open_planner = open_plan_window

__all__ = ["MOVE_KEYS", "PlanEditor", "open_plan_window", "open_planner"]
