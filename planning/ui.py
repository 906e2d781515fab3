"""``orthonav plan CASE``: the interactive planning window (PyVista).

Bones, landmarks, axes, cut planes and implants; keys move the selected implant in its own
frame (6 DoF), every move recomputes cuts and metrics (:class:`~orthonav.planning.tka.TkaSession`, or
:class:`~orthonav.planning.tha.ThaSession` for a hip); a live readout shows angles,
component alignment, sizes and resections in plain words with units; ``u`` undoes, ``y``
redoes, ``s`` saves ``plan.json``.

Landmarks move only on an explicit pick, never on hover: ``l`` chooses the landmark to place
(again: the next one, ``L`` the previous; ``Escape`` cancels) and arms one placement; then a
right-click on a bone (a click: press and release without dragging, so a right-drag still
zooms) or ``p`` with the mouse over a bone places it at the picked surface point, and the
placement is disarmed. The pick uses the window's own picker on the bone actors only; the
drag widgets' hover highlighting (which picks on every mouse move) never reaches a landmark.

Drag widgets: each movable implant carries an affine widget (arrows translate, rings
rotate; the move is committed when the mouse button is released), and each
displayed cut plane (distal femur, proximal tibia, femoral necks) a plane widget (drag the
plane or tilt its normal). A cut plane is the face of its implant, so dragging the plane
moves that implant (the femoral component, the tibial tray with its insert, or the hip stem)
by the rigid motion that carries the old plane onto the new one; a cut without an implant is
moved itself. Every drag is one :class:`PlanSession` edit: cuts and metrics are recomputed and
``u`` undoes it.

What is selected is visible at once: the selected implant is drawn in the selection colour
(:data:`SELECTED_COLOUR`) and named on the readout's first line; a landmark armed for placement
carries a halo and its own line. The window's keys are its own: PyVista's and VTK's default
bindings of the same keys (camera reset on ``r``, fly-to on ``f``, isometric view on ``v``,
zoom on the arrows) are removed.

The key and widget handling is a plain object (:class:`PlanEditor`: ``handle_key``,
``drag_implant``, ``drag_cut``, ``pick``) so it is tested without a display;
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
#: keys the window binds (PyVista's and VTK's own bindings of these keys are removed)
WINDOW_KEYS = (*MOVE_KEYS, "Tab", "u", "y", "s", "l", "L", "p", "Escape")
#: colour of the selected implant (the others keep their own)
SELECTED_COLOUR = "#ff9900"

#: plain names of angles and metrics (key without its unit suffix -> words)
PLAIN_NAMES = {
    "hka": "Hip-knee-ankle angle (HKA)",
    "ldfa": "Lateral distal femoral angle (LDFA)",
    "mpta": "Medial proximal tibial angle (MPTA)",
    "slope": "Tibial slope",
    "femoral_rotation": "Femoral rotation",
    "predicted_hka": "Predicted HKA",
    "femoral_component_coronal": "Femoral component, coronal",
    "femoral_component_rotation": "Femoral component, rotation",
    "tibial_component_coronal": "Tibial component, coronal",
    "tibial_component_slope": "Tibial component, slope",
    "femur_removed_volume": "Femur bone removed",
    "tibia_removed_volume": "Tibia bone removed",
    "tibial_coverage": "Tibial coverage",
    "tibial_max_overhang": "Tibial max overhang",
    "leg_length_change": "Leg length change",
    "global_offset_change": "Global offset change",
    "cup_coverage": "Cup coverage",
    "cup_reaming_depth": "Cup reaming depth",
    "stem_cortex_clearance": "Stem clearance to cortex",
}
FAMILY_NAMES = {"tka_femoral": "Femoral component", "tka_tibial_tray": "Tibial tray", "tka_insert": "Tibial insert",
                "tha_cup": "Acetabular cup", "tha_stem": "Femoral stem"}


def plain_name(key: str) -> str:
    """Words for an angle / metric / landmark / cut key: the known name, else the key with
    spaces, its side (``_left`` / ``_right``) in parentheses; unit suffixes dropped."""
    k = key
    for suffix in ("_deg", "_mm3", "_mm2", "_mm", "_fraction"):
        if k.endswith(suffix):
            k = k[: -len(suffix)]
            break
    side = ""
    for sd in ("left", "right"):
        if k.endswith(f"_{sd}"):
            k, side = k[: -len(sd) - 1], f" ({sd})"
    words = PLAIN_NAMES.get(k, k.replace("_", " "))
    return (words[0].upper() + words[1:] if words else words) + side


def value_text(key: str, value: float) -> str:
    """A value with its unit, from the key's suffix: degrees, mm, cm^3 (from mm^3), % (from a
    fraction); angles without a suffix (``angles_deg`` keys) are degrees."""
    if key.endswith("_mm3"):
        return f"{value / 1000.0:.1f} cm\u00b3"
    if key.endswith("_mm2"):
        return f"{value:.0f} mm\u00b2"
    if key.endswith("_mm"):
        return f"{value:+.1f} mm" if "change" in key else f"{value:.1f} mm"
    if key.endswith("_fraction") or key.startswith("cup_coverage_"):
        return f"{100.0 * value:.0f} %"
    return f"{value:.1f}\u00b0"


class PlanEditor:
    """Key-driven editing of a :class:`PlanSession` (no rendering).

    ``handle_key(key)`` returns True when the plan changed (the view must refresh).
    A landmark moves only through :meth:`pick` while one is armed (``l``), once per arming.
    """

    def __init__(self, session: PlanSession, *, save_to: str | Path | None = None) -> None:
        self.session = session
        self.save_to = Path(save_to) if save_to is not None else None
        self.selected = 0
        self.landmark_names = sorted(k for k in session.plan.landmarks if not k.startswith("fiducial_"))
        self.landmark_index = 0
        #: True while a landmark is armed for one placement (``l``); a pick places it and disarms
        self.placing = False
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
            if key in ("l", "L"):
                if not self.landmark_names:
                    raise InputError(None, "the plan has no landmarks to place")
                if self.placing:
                    self.landmark_index += 1 if key == "l" else -1
                self.placing = True
                self.message = ""
                return False
            if key == "Escape":
                if self.placing:
                    self.placing = False
                    self.message = "landmark placement cancelled"
                return False
            if key == "u":
                self.session.undo()
                self.message = "undone (y redoes)"
                return True
            if key == "y":
                self.session.redo()
                self.message = "redone"
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
        self.message = f"{FAMILY_NAMES.get(imp.family, imp.family)} ({imp.bone.replace('_', ' ')}) moved (u undoes)"
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
            if np.allclose(motion, np.eye(4), atol=1e-6):  # a drag within the plane (or float noise): nothing moved
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
        self.message = f"{plain_name(cut_name)} cut moved (u undoes)"
        return True

    def pick(self, point_lps_mm) -> bool:
        """Place the armed landmark at a picked surface point (LPS mm) and disarm; one
        undoable edit. Without an armed landmark nothing moves (False, with a message)."""
        name = self.selected_landmark
        if name is None or not self.placing:
            self.message = "press l to choose a landmark first; a click moves no landmark otherwise"
            return False
        try:
            self.session.set_landmark(name, point_lps_mm, method="manual (picked)")
        except InputError as e:
            self.message = str(e)
            return False
        self.placing = False
        self.message = f"{plain_name(name)} placed (u undoes)"
        return True

    def header(self) -> str:
        """The selection line(s): the selected implant, and the landmark armed for placement."""
        p: Plan = self.session.plan
        lines = []
        sel = self.selected_implant
        if sel is not None:
            imp = p.implants[sel]
            lines.append(f"Selected: {FAMILY_NAMES.get(imp.family, imp.family)} size {imp.size} on the {imp.bone.replace('_', ' ')}")
        if self.placing and self.selected_landmark is not None:
            lines.append(f"Placing landmark: {plain_name(self.selected_landmark)} - right-click the bone (or p over it); Esc cancels")
        return "\n".join(lines)

    def readout(self) -> str:
        """The live text: selection, angles, component alignment, sizes, resections, in plain
        words with units (degrees, mm, cm\u00b3, %)."""
        p: Plan = self.session.plan
        lines = [self.header()] if self.header() else []
        if p.procedure == "tha":
            a = p.angles_deg
            for sd in ("left", "right"):
                ci, ca = a.get(f"cup_inclination_{sd}"), a.get(f"cup_anteversion_{sd}")
                ni, na = a.get(f"acetabular_inclination_{sd}"), a.get(f"acetabular_anteversion_{sd}")
                if ci is not None and ca is not None:
                    native = f"  (native {ni:.1f}\u00b0 / {na:.1f}\u00b0)" if ni is not None and na is not None else ""
                    lines.append(f"Cup inclination / anteversion ({sd}): {ci:.1f}\u00b0 / {ca:.1f}\u00b0{native}")
                elif ni is not None and na is not None:
                    lines.append(f"Native acetabular inclination / anteversion ({sd}): {ni:.1f}\u00b0 / {na:.1f}\u00b0")
        else:
            lines += [f"{plain_name(k)}: {value_text(k, v)}" for k, v in p.angles_deg.items()]
        lines += [f"{plain_name(k)}: {value_text(k, p.metrics[k])}" for k in READOUT_METRICS if k in p.metrics]
        lines += [f"{plain_name(k)}: {value_text(k, p.metrics[k])}" for k in p.metrics if k.startswith(THA_READOUT_PREFIXES)]
        for key, c in p.cuts.items():
            if c.depths_mm:
                lines.append(f"{plain_name(key)} cut: " + ", ".join(f"{plain_name(n).lower()} {d:.1f} mm" for n, d in c.depths_mm.items()))
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)


HELP_TEXT = (
    "Tab: next implant   arrows, PgUp/PgDn: move 0.5 mm   r/R v/V f/F: rotate 1\u00b0   or drag its arrows/rings or a cut plane\n"
    "l: choose a landmark (again: next, L: previous), then right-click the bone or press p over it; Esc: cancel   "
    "u: undo   y: redo   s: save plan.json"
)


def _silence_default_keys(pl, keys) -> None:
    """Make ``keys`` the window's own: drop PyVista's default callbacks for them (isometric
    view on ``v``, zoom on the arrows) and hide them from VTK's interactor style, whose
    character handler would otherwise also act (reset camera on ``r``, fly-to on ``f``,
    surface / wireframe on ``s``, pick on ``p``). The style is replaced while a widget is
    dragged, so this is an interactor observer that runs before any style's and blanks the
    key code of those keys (the key symbol, which the window's callbacks use, is kept)."""
    for key in keys:
        pl.clear_events_for_key(key)
    singles = {k for k in keys if len(k) == 1}

    def blank(obj, _event) -> None:
        if obj.GetKeySym() in singles or obj.GetKeyCode() in singles:
            obj.SetKeyCode("\0")

    pl.iren.interactor.AddObserver("CharEvent", blank, 100.0)


def open_plan_window(case_dir: str | Path, *, off_screen: bool = False, on_ready: Callable[[object], None] | None = None) -> PlanEditor:
    """Open the interactive planning window for ``CASE`` (needs a display unless
    ``off_screen``; ``on_ready(plotter)`` runs before showing, e.g. to screenshot or to
    drive the widgets: ``plotter.orthonav_widgets`` maps ``'implant:<index>'`` to each movable
    implant's affine widget and ``'cut:<name>'`` to each cut's plane widget;
    ``plotter.orthonav_editor`` is the :class:`PlanEditor`; ``plotter.orthonav_actors`` the
    scene's actors by name (``'implant:<index>'``, ``'landmark:<name>'``, ...);
    ``plotter.orthonav_text`` the ``'header'``, ``'readout'`` and ``'help'`` text actors;
    ``plotter.orthonav_pick_at(x, y)`` picks the bones at a display position (pixels) as a
    right-click there does)."""
    import pyvista as pv
    import vtk

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
    bone_actors = []
    for it in scene_items(session.plan, meshes, implant_meshes=None):
        actors[it.name] = pl.add_mesh(it.mesh, color=it.colour, opacity=it.opacity, smooth_shading=it.kind == "bone", pickable=it.kind == "bone")
        if it.kind == "bone":
            bone_actors.append(actors[it.name])
    for i, imp in enumerate(session.plan.implants):
        a = pl.add_mesh(implant_meshes[f"{imp.family}:{imp.size}"], color=IMPLANT_COLOURS.get(imp.family, "#b0b8c8"), smooth_shading=True, pickable=False)
        a.user_matrix = np.asarray(imp.ct_from_implant)
        actors[f"implant:{i}"] = a
    halo = pl.add_mesh(pv.Sphere(radius=6.0, theta_resolution=24, phi_resolution=24), color="#ffd000", opacity=0.55, pickable=False)
    halo.visibility = False

    def text_box(text: str, y: float, size_px: int, colour: str, top: bool):
        """A fixed-size text block (pixels, not shrunk to fit) on a light box, left-aligned."""
        t = pl.add_text(text, position=(0.008, y), viewport=True, font_size=size_px // 2, color=colour)
        prop = t.GetTextProperty()
        prop.SetFontSize(size_px)
        prop.SetVerticalJustificationToTop() if top else prop.SetVerticalJustificationToBottom()
        prop.SetBackgroundColor(1.0, 1.0, 1.0)
        prop.SetBackgroundOpacity(0.88)
        prop.SetFrame(True)
        prop.SetFrameColor(0.55, 0.55, 0.55)
        prop.SetLineSpacing(1.15)
        return t

    head = text_box(editor.header(), 0.99, 20, "#8a3c00", True)
    head.GetTextProperty().BoldOn()
    text = text_box("", 0.99, 16, "#101010", True)
    help_text = text_box(HELP_TEXT, 0.01, 14, "#202020", False)
    widgets: dict[str, object] = {}
    pv.set_new_attribute(pl, "orthonav_widgets", widgets)
    pv.set_new_attribute(pl, "orthonav_editor", editor)
    pv.set_new_attribute(pl, "orthonav_actors", actors)
    pv.set_new_attribute(pl, "orthonav_text", {"header": head, "readout": text, "help": help_text})

    def set_readout() -> None:
        """The selection header on top (bold), the readout under it (its own header lines
        dropped), the selection colours and the armed landmark's halo."""
        h = editor.header()
        head.SetInput(h)
        head.SetVisibility(bool(h))
        body = editor.readout()
        if h and body.startswith(h):
            body = body[len(h):].lstrip("\n")
        text.SetInput(body)
        n_head = h.count("\n") + 1 if h else 0
        text.GetPositionCoordinate().SetValue(0.008, 0.99 - n_head * 27.0 / max(pl.window_size[1], 1))
        sel = editor.selected_implant
        for i, imp in enumerate(session.plan.implants):
            colour = SELECTED_COLOUR if i == sel else IMPLANT_COLOURS.get(imp.family, "#b0b8c8")
            actors[f"implant:{i}"].prop.color = colour
        name = editor.selected_landmark
        if editor.placing and name is not None and name in session.plan.landmarks:
            m = np.eye(4)
            m[:3, 3] = session.plan.landmarks[name].position_lps_mm
            halo.user_matrix = m
            halo.visibility = True
        else:
            halo.visibility = False

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
        set_readout()

    shown_landmarks: list[object] = [session.plan.landmarks]

    def refresh() -> None:
        p = session.plan
        for key, c in p.cuts.items():
            name = f"cut:{key}"
            if name in actors:
                pl.remove_actor(actors[name])
                actors[name] = pl.add_mesh(cut_disc(np.asarray(c.point_lps_mm), np.asarray(c.normal_lps), CUT_RADIUS_MM.get(key, 45.0)), color=CUT_COLOURS.get(key, "#2f7fd0"), opacity=0.6, pickable=False)
        if p.landmarks != shown_landmarks[0]:  # a pick, or its undo: landmarks and the axes through them
            for it in scene_items(p, {}, implant_meshes=None):
                if it.kind in ("landmark", "axis"):
                    if it.name in actors:
                        pl.remove_actor(actors[it.name])
                    actors[it.name] = pl.add_mesh(it.mesh, color=it.colour, opacity=it.opacity, pickable=False)
            shown_landmarks[0] = p.landmarks
        sync()
        pl.render()

    def on_key(k: str) -> None:
        if editor.handle_key(k):
            refresh()
        else:
            set_readout()
            pl.render()

    picker = vtk.vtkCellPicker()
    picker.SetTolerance(0.0005)
    picker.PickFromListOn()
    for a in bone_actors:
        picker.AddPickList(a)

    def pick_at(x: int, y: int) -> bool:
        """Pick the bones at display position (x, y) (pixels) for the armed landmark."""
        if not editor.placing:
            editor.pick(None)  # says how to choose one; moves nothing
            set_readout()
            pl.render()
            return False
        if not picker.Pick(x, y, 0, pl.renderer):
            editor.message = "no bone under the mouse: nothing placed"
            set_readout()
            pl.render()
            return False
        moved = editor.pick(np.asarray(picker.GetPickPosition(), dtype=float))
        refresh()
        return moved

    pv.set_new_attribute(pl, "orthonav_pick_at", pick_at)
    _silence_default_keys(pl, WINDOW_KEYS)
    for key in WINDOW_KEYS:
        if key != "p":
            pl.add_key_event(key, lambda k=key: on_key(k))
    pl.add_key_event("p", lambda: pick_at(*pl.iren.interactor.GetEventPosition()))
    press_at: list[tuple[int, int]] = []

    def right_press(obj, _event) -> None:
        press_at[:] = [obj.GetEventPosition()]

    def right_release(obj, _event) -> None:
        """A right click (released within 3 px of its press) picks; a right drag zooms only."""
        if press_at:
            (x0, y0), (x1, y1) = press_at[0], obj.GetEventPosition()
            press_at.clear()
            if abs(x1 - x0) <= 3 and abs(y1 - y0) <= 3:
                pick_at(x1, y1)

    pl.iren.interactor.AddObserver("RightButtonPressEvent", right_press, 100.0)
    pl.iren.interactor.AddObserver("RightButtonReleaseEvent", right_release, 100.0)
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
    set_readout()
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

__all__ = ["CUT_OWNERS", "MOVE_KEYS", "SELECTED_COLOUR", "WINDOW_KEYS", "PlanEditor", "open_plan_window", "open_planner", "plain_name", "plane_motion", "value_text"]
