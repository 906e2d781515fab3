"""``orthonav plan CASE``: the interactive planning window (PyVista).

Bones, landmarks, axes, cut planes and implants; keys move the selected implant in its own
frame (6 DoF), every move recomputes cuts and metrics (:class:`~orthonav.planning.tka.TkaSession`, or
:class:`~orthonav.planning.tha.ThaSession` for a hip); a live text readout shows angles,
component alignment, sizes and resections; ``u`` undoes, ``y`` redoes, ``s`` saves
``plan.json``. Right-click picks a surface point for the landmark chosen with ``l`` (manual
override).

Drag widgets: each movable implant carries an affine widget (arrows translate, rings
rotate; the move is committed when the mouse button is released), and each
displayed cut plane (distal femur, proximal tibia, femoral necks) a plane widget (drag the
plane or tilt its normal). A cut plane is the face of its implant, so dragging the plane
moves that implant (the femoral component, the tibial tray with its insert, or the hip stem)
by the rigid motion that carries the old plane onto the new one; a cut without an implant is
moved itself. Every drag is one :class:`PlanSession` edit: cuts and metrics are recomputed and
``u`` undoes it.

The key and widget handling is a plain object (:class:`PlanEditor`: ``handle_key``,
``drag_implant``, ``drag_cut``) so it is tested without a display; :func:`open_plan_window`
only wires it to a plotter. Implant actors are moved with ``actor.user_matrix`` (never
rebuilt); cut discs are re-placed the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from orthonav.core.case import Case
from orthonav.core.errors import InputError

from .schema import Plan, load_plan
from .session import PlanSession

#: cut plane -> the implant family whose face it is (THA neck cuts: the stem of that side)
CUT_OWNERS = {
    "distal_femur": "tka_femoral", "anterior_femur": "tka_femoral", "posterior_femur": "tka_femoral",
    "anterior_chamfer": "tka_femoral", "posterior_chamfer": "tka_femoral", "proximal_tibia": "tka_tibial_tray",
    "neck_left": "tha_stem", "neck_right": "tha_stem",
}
#: cut planes that get a plane widget (the others are faces of the femoral component)
WIDGET_CUTS = ("distal_femur", "proximal_tibia", "neck_left", "neck_right")


def plane_motion(point_old: np.ndarray, normal_old: np.ndarray, point_new: np.ndarray, normal_new: np.ndarray) -> np.ndarray:
    """The rigid ``ct_from_ct`` motion carrying plane (point_old, normal_old) onto the plane
    through ``point_new`` with ``normal_new``: the smallest rotation of the normal about
    ``point_old``, then a shift along the new normal (no sliding within the plane)."""
    from .implants import rotation_onto

    p0, p1 = np.asarray(point_old, dtype=float), np.asarray(point_new, dtype=float)
    n0, n1 = np.asarray(normal_old, dtype=float), np.asarray(normal_new, dtype=float)
    for v, what in ((n0, "old"), (n1, "new")):
        if v.shape != (3,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) < 1e-9:
            raise InputError(None, f"the {what} plane normal must be a finite non-zero 3-vector, got {v.tolist()}")
    if p0.shape != (3,) or p1.shape != (3,) or not (np.all(np.isfinite(p0)) and np.all(np.isfinite(p1))):
        raise InputError(None, "plane points must be finite 3-vectors")
    n0, n1 = n0 / np.linalg.norm(n0), n1 / np.linalg.norm(n1)
    m = np.eye(4)
    m[:3, :3] = rotation_onto(n0, n1)
    m[:3, 3] = p0 - m[:3, :3] @ p0 + float(np.dot(p1 - p0, n1)) * n1
    return m


def _as_rigid(matrix, name: str) -> np.ndarray:
    """A widget's 4x4 as a proper rigid transform: re-orthonormalised (SVD) when within 1e-3
    of one (accumulated float error), else InputError."""
    from orthonav.core.transforms import validate_rigid

    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (4, 4) and np.all(np.isfinite(m)):
        u, _s, vt = np.linalg.svd(m[:3, :3])
        r = u @ vt
        if np.linalg.det(r) > 0 and np.abs(r - m[:3, :3]).max() < 1e-3:
            m = m.copy()
            m[:3, :3] = r
            m[3] = [0.0, 0.0, 0.0, 1.0]
    return validate_rigid(m, name=name)

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


THA_READOUT_PREFIXES = ("leg_length_change_", "global_offset_change_", "cup_coverage_", "cup_reaming_depth_", "stem_cortex_clearance_")


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

    def _move_by(self, index: int, ct_delta: np.ndarray) -> None:
        """Move implant ``index`` by a rigid motion in CT coordinates, as one session edit
        (expressed in the implant's own frame, so the tibial insert follows its tray)."""
        from orthonav.core.transforms import invert
        from scipy.spatial.transform import Rotation

        old = np.asarray(self.session.plan.implants[index].ct_from_implant, dtype=np.float64)
        d = invert(old) @ ct_delta @ old
        rotvec = Rotation.from_matrix(d[:3, :3]).as_rotvec()
        angle = float(np.linalg.norm(rotvec))
        axis = rotvec / angle if angle > 1e-12 else np.array([0.0, 0.0, 1.0])
        self.session.move_implant(index, translation_mm=d[:3, 3], rotation_axis=axis, rotation_deg=float(np.degrees(angle)))

    def drag_implant(self, index: int, ct_from_implant) -> bool:
        """The affine widget's release: implant ``index`` now at ``ct_from_implant``
        (4x4, the actor's user matrix). One undoable edit; False (with a message) if the
        matrix is not rigid or nothing moved."""
        try:
            new = _as_rigid(ct_from_implant, "dragged implant pose")
            old = np.asarray(self.session.plan.implants[index].ct_from_implant, dtype=np.float64)
            if np.allclose(new, old, atol=1e-9):
                return False
            from orthonav.core.transforms import invert

            self._move_by(index, new @ invert(old))
        except (InputError, IndexError) as e:
            self.message = str(e)
            return False
        imp = self.session.plan.implants[index]
        self.message = f"{imp.family} ({imp.bone}) moved"
        return True

    def cut_owner(self, cut_name: str) -> int | None:
        """Index of the implant whose face the cut ``cut_name`` is, or None."""
        family = CUT_OWNERS.get(cut_name)
        cut = self.session.plan.cuts.get(cut_name)
        if family is None or cut is None:
            return None
        for i, imp in enumerate(self.session.plan.implants):
            if imp.family == family and (family.startswith("tka_") or imp.bone == cut.bone):
                return i
        return None

    def drag_cut(self, cut_name: str, normal, origin) -> bool:
        """The plane widget's callback: cut ``cut_name`` dragged to the plane through
        ``origin`` with ``normal`` (LPS). Its implant moves with it (:func:`plane_motion`);
        a cut without an implant is moved itself. One undoable edit."""
        try:
            plan = self.session.plan
            if cut_name not in plan.cuts:
                raise InputError(None, f"no cut {cut_name!r} in the plan")
            cut = plan.cuts[cut_name]
            n = np.asarray(normal, dtype=float)
            n_old = np.asarray(cut.normal_lps)
            if np.dot(n, n_old) < 0:  # a plane widget's normal has no side: keep the cut's
                n = -n
            motion = plane_motion(np.asarray(cut.point_lps_mm), n_old, np.asarray(origin, dtype=float), n)
            if np.allclose(motion, np.eye(4), atol=1e-9):
                return False
            owner = self.cut_owner(cut_name)
            if owner is not None:
                self._move_by(owner, motion)
            else:
                from orthonav.core.transforms import apply, apply_vector

                self.session.set_cut(cut_name, apply(motion, cut.point_lps_mm), apply_vector(motion, n_old))
        except InputError as e:
            self.message = str(e)
            return False
        self.message = f"{cut_name} cut moved"
        return True

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
            lines.append(f"selected: {imp.family} size {imp.size} on {imp.bone}   (Tab next; drag arrows/rings or a cut plane; arrows/PgUp/PgDn move, r/v/f rotate; l + right-click: landmark; u undo, s save)")
        if p.procedure == "tha":
            from .scene import angle_text

            lines.append(angle_text(p))
        else:
            lines.append("  ".join(f"{k} {v:.1f}" for k, v in p.angles_deg.items()))
        lines.append("  ".join(f"{k.replace('_deg', '').replace('_mm3', '').replace('_mm', '')} {p.metrics[k]:.1f}" for k in READOUT_METRICS if k in p.metrics))
        tha = [k for k in p.metrics if k.startswith(THA_READOUT_PREFIXES)]
        if tha:
            lines.append("  ".join(f"{k.replace('_mm', '').replace('_fraction', '')} {p.metrics[k]:.2f}" for k in tha))
        for key, c in p.cuts.items():
            if c.depths_mm:
                lines.append(f"{key}: " + ", ".join(f"{n} {d:.1f} mm" for n, d in c.depths_mm.items()))
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)


def open_plan_window(case_dir: str | Path, *, off_screen: bool = False, on_ready: Callable[[object], None] | None = None) -> PlanEditor:
    """Open the interactive planning window for ``CASE`` (needs a display unless
    ``off_screen``; ``on_ready(plotter)`` runs before showing, e.g. to screenshot or to
    drive the widgets: ``plotter.orthonav_widgets`` maps ``'implant:<index>'`` to each movable
    implant's affine widget and ``'cut:<name>'`` to each cut's plane widget;
    ``plotter.orthonav_editor`` is the :class:`PlanEditor`)."""
    import pyvista as pv

    from .auto import load_case_meshes, session_for
    from .implants import implant_meshes_for
    from .scene import (
        CUT_COLOURS,
        CUT_RADIUS_MM,
        IMPLANT_COLOURS,
        cut_disc,
        scene_items,
        setup_rendering,
        view_camera,
    )

    case = Case(case_dir)
    plan = load_plan(case.require(case.plan, "orthonav plan CASE --auto"))
    meshes = load_case_meshes(case.root, plan.procedure)
    session = session_for(plan, meshes)
    editor = PlanEditor(session, save_to=case.plan)
    setup_rendering()
    pl = pv.Plotter(off_screen=off_screen, window_size=(1400, 900))
    pl.set_background("white")
    implant_meshes = implant_meshes_for(session.plan)
    actors: dict[str, object] = {}
    for it in scene_items(session.plan, meshes, implant_meshes=None):
        actors[it.name] = pl.add_mesh(it.mesh, color=it.colour, opacity=it.opacity, smooth_shading=it.kind == "bone", pickable=it.kind == "bone")
    for i, imp in enumerate(session.plan.implants):
        a = pl.add_mesh(implant_meshes[f"{imp.family}:{imp.size}"], color=IMPLANT_COLOURS.get(imp.family, "#b0b8c8"), smooth_shading=True, pickable=False)
        a.user_matrix = np.asarray(imp.ct_from_implant)
        actors[f"implant:{i}"] = a
    text = pl.add_text(editor.readout(), position="upper_left", font_size=9, color="black")
    widgets: dict[str, object] = {}
    pv.set_new_attribute(pl, "orthonav_widgets", widgets)
    pv.set_new_attribute(pl, "orthonav_editor", editor)

    def add_implant_widgets() -> None:
        """One affine widget per movable implant (arrows translate, rings rotate)."""
        for i in editor.movable:
            m = np.asarray(session.plan.implants[i].ct_from_implant)
            widgets[f"implant:{i}"] = pl.add_affine_transform_widget(
                actors[f"implant:{i}"], origin=tuple(m[:3, 3]), scale=0.1,
                release_callback=lambda matrix, i=i: (editor.drag_implant(i, matrix) and refresh()) or sync(),
            )

    def sync() -> None:
        """Actors, widgets and text back to the session's plan (after a refused drag too)."""
        p = session.plan
        for i, imp in enumerate(p.implants):
            actors[f"implant:{i}"].user_matrix = np.asarray(imp.ct_from_implant)
        for i, imp in enumerate(p.implants):
            aw = widgets.get(f"implant:{i}")
            if aw is not None:
                m = np.asarray(imp.ct_from_implant)
                aw._cached_matrix = m.copy()  # the widget composes its next drag onto this pose
                aw.origin = tuple(m[:3, 3])
        for key, c in p.cuts.items():
            w = widgets.get(f"cut:{key}")
            if w is not None:
                w.SetNormal(*c.normal_lps)
                w.SetOrigin(*c.point_lps_mm)
        text.SetText(2, editor.readout())

    def refresh() -> None:
        p = session.plan
        for key, c in p.cuts.items():
            name = f"cut:{key}"
            if name in actors:
                pl.remove_actor(actors[name])
                actors[name] = pl.add_mesh(cut_disc(np.asarray(c.point_lps_mm), np.asarray(c.normal_lps), CUT_RADIUS_MM.get(key, 45.0)), color=CUT_COLOURS.get(key, "#2f7fd0"), opacity=0.6, pickable=False)
        sync()
        pl.render()

    def on_key(k: str) -> None:
        if editor.handle_key(k):
            refresh()
        else:
            text.SetText(2, editor.readout())

    for key in (*MOVE_KEYS, "Tab", "u", "y", "s", "l"):
        pl.add_key_event(key, lambda k=key: on_key(k))
    pl.enable_surface_point_picking(callback=lambda p: editor.pick(p) and refresh(), show_point=False, left_clicking=False, show_message=False)
    for key in WIDGET_CUTS:
        c = session.plan.cuts.get(key)
        if c is None:
            continue
        r = CUT_RADIUS_MM.get(key, 45.0)
        q = np.asarray(c.point_lps_mm)
        bounds = [q[0] - r, q[0] + r, q[1] - r, q[1] + r, q[2] - r, q[2] + r]
        widgets[f"cut:{key}"] = pl.add_plane_widget(
            lambda normal, origin, k=key: (editor.drag_cut(k, normal, origin) and refresh()) or sync(),
            normal=tuple(c.normal_lps), origin=tuple(c.point_lps_mm), bounds=bounds, factor=1.0,
            color=CUT_COLOURS.get(key, "#2f7fd0"), implicit=True, test_callback=False, outline_translation=False, interaction_event="end",
        )
    add_implant_widgets()
    pos, focal, up = view_camera(session.plan, "anterior")
    pl.camera_position = [tuple(pos), tuple(focal), tuple(up)]
    pl.camera.parallel_projection = True
    pl.camera.parallel_scale = 120.0 if session.plan.procedure == "tha" else 90.0
    if on_ready is not None:
        on_ready(pl)
    if not off_screen:
        pl.show(title=f"OrthoNav plan - {case.root.name}")
    else:
        pl.close()
    return editor


#: The name the CLI calls (``orthonav plan CASE``).
open_planner = open_plan_window

__all__ = ["CUT_OWNERS", "MOVE_KEYS", "PlanEditor", "open_plan_window", "open_planner", "plane_motion"]
