"""The navigation screen: a pyvista scene updated from :class:`NavigationState` (off-screen capable).

Everything is built once (bones decimated for display, planned cut planes, trajectories,
instrument models in their tool frames); each update only moves actors with
``actor.user_matrix = ct_from_tool``, toggles visibility and rewrites text. Colours of the
readouts: green within the tolerance (default 1 deg / 1 mm), amber within twice that, red
beyond. When the reference is not visible (or stale) the scene shows a big red "NOT TRACKING"
and hides every instrument; before registration it shows an amber "NOT REGISTERED" (and the
caller's digitising prompt); a tool that is not visible or stale is hidden and listed as such.
After registration the bones are coloured by the TRE predicted at each vertex
(:mod:`orthonav.navigation.tre_map`, Fitzpatrick 1998) with a scalar bar titled in mm.
Text positions follow the window's size (a resized window, or a browser's view through
:mod:`orthonav.navigation.web`, which serves this same scene).

One array per bone (issue 16; a tool set whose reference arrays name their bones,
:meth:`~orthonav.tracking.tools.ToolSet.bone_references`): every displayed mesh is carried by a
bone with an array (:func:`carrier_bone`: its own, or fibula / tibial implants with the tibia,
patella / femoral implants with the femur; a cut's contours with the bone of the cut,
``cut_bones``). The scene is drawn in the femur's CT frame (the *display bone*; the first bone
that navigates when the femur does not): another navigating bone's actors get the user
transform ``bone_ct_from_tracker[display] @ inv(bone_ct_from_tracker[bone])`` (for the tibia:
the knee pose, so the tibia is drawn where it is now relative to the femur), and each tool its
``ToolState.ct_from_tool`` (in the tool's ``ToolState.bone`` frame) mapped the same way. A bone
that does not navigate (its array not LIVE, or not registered yet) is hidden and gets a banner
of its own ("TIBIA NOT TRACKING", red; "TIBIA NOT REGISTERED", amber) while the other bone keeps
its numbers; the big NOT TRACKING banner comes only when no bone navigates. The status text
lists each array ("FEMUR ARRAY: LIVE", "TIBIA ARRAY: NOT TRACKING - not visible"). With a femur
and a tibia the readout panel starts with the knee: varus / valgus, flexion, HKA (deg) and the
medial and lateral gaps (mm) of ``state.alignment`` / ``state.gaps`` (:func:`knee_panel_lines`;
"--" when the state has none, never an older value).

Frames: the scene is in CT LPS mm; the camera looks from anterior with superior up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyvista as pv
import vtk
from numpy.typing import NDArray
from vtk.util import numpy_support

from orthonav.core.case import read_case_meshes
from orthonav.core.errors import InputError
from orthonav.core.transforms import invert
from orthonav.core.volume import Volume
from orthonav.tracking.tools import ToolDefinition, ToolSet

from .guidance import CutFrame
from .reslice import ORIENTATIONS, reslice, to_grey, tool_plane_axes
from .registration import Registration, RegistrationRecord
from .state import NavigationState, NavStatus, ToolState
from .tre_map import TRE_ARRAY, registration_tre_maps, tre_colour_range, tre_map_title

GREEN = (0.15, 0.8, 0.2)
AMBER = (1.0, 0.7, 0.0)
RED = (0.95, 0.15, 0.1)
GREY = (0.6, 0.6, 0.6)
WHITE = (0.95, 0.95, 0.95)
CUT_BLUE = (0.25, 0.6, 1.0)

#: Knee cuts: their saw angles are flexion and varus (the other cuts get neutral words).
KNEE_CUTS = frozenset({"distal_femur", "proximal_tibia", "anterior_femur", "posterior_femur", "anterior_chamfer", "posterior_chamfer"})
BONE_COLOURS = {"femur": (0.93, 0.89, 0.78), "tibia": (0.88, 0.85, 0.74), "fibula": (0.85, 0.82, 0.72), "patella": (0.9, 0.8, 0.7)}

#: One array per bone: meshes without an array of their own move with the bone named here
#: (by a name token: "fibula_left" with the tibia's array, "tka_insert_2" with the tibia's).
ATTACHED_TO = {"fibula": "tibia", "patella": "femur", "insert": "tibia"}
#: Knee panel: coronal alignment (varus / valgus, HKA) green within this of neutral (deg),
#: amber within twice, red beyond.
ALIGNMENT_TOL_DEG = 3.0
#: Knee panel: gaps green while medial and lateral differ by at most this (mm), amber within
#: twice, red beyond (and red when a gap is negative: the surfaces overlap).
GAP_BALANCE_TOL_MM = 2.0


#: The TRE map's colours: matplotlib's viridis from 25 % up (perceptually uniform, colour-blind
#: safe, and neither red nor amber, which belong to the status banners and readouts).
TRE_COLORMAP = ("viridis", 0.25, 1.0)

#: The reslice strip's tiles, left to right.
RESLICE_NAMES = ("axial", "coronal", "sagittal", "along the tool")


def saw_angle_words(cut: str) -> tuple[str, str]:
    """Readout words for the saw's two angles on ``cut`` (see
    :mod:`orthonav.navigation.guidance`): the rotation about the medio-lateral axis and about
    the antero-posterior axis. Knee cuts say flexion / varus; other cuts (a hip neck cut) say
    which way the blade tilts, as knee words would mislead there."""
    if cut in KNEE_CUTS:
        return "Flexion", "Varus"
    return "A-P tilt", "M-L tilt"


def signed(x: float, digits: int = 1) -> str:
    """``x`` with an explicit sign, but never ``-0.0`` / ``+0.0`` for a value that rounds to 0."""
    text = f"{x:+.{digits}f}"
    return text[1:] if float(text) == 0.0 else text


def carrier_bone(name: str, bones: Iterable[str]) -> str | None:
    """The bone among ``bones`` (the bones with a reference array) whose array carries the mesh,
    cut or implant called ``name``: ``name`` itself when it is one of them; else the first bone
    whose name starts with the same three letters as a token of ``name`` ("tka_femoral_0" ->
    "femur", "tibia_left" for "tibial_tray"); else the bone :data:`ATTACHED_TO` names for a token
    ("fibula" -> the tibia, "patella" -> the femur). None when nothing matches."""
    bones = list(bones)
    if name in bones:
        return name

    def find(word: str) -> str | None:
        return next((b for b in bones if b.lower().split("_")[0][:3] == word[:3]), None)

    tokens = [t for t in name.lower().split("_") if len(t) >= 3]
    for tok in tokens:
        found = find(tok)
        if found is not None:
            return found
    for tok in tokens:
        if tok in ATTACHED_TO:
            found = find(ATTACHED_TO[tok])
            if found is not None:
                return found
    return None


def bone_word(bone: str) -> str:
    """A bone's name as the screen says it: "tibia_left" -> "TIBIA LEFT"."""
    return bone.replace("_", " ").upper()


def array_status_line(bone: str, tool: ToolState | None) -> str:
    """The status line of ``bone``'s reference array: "FEMUR ARRAY: LIVE" or "TIBIA ARRAY: NOT
    TRACKING - not visible" (the reason: not visible, stale, implausible pose, not registered;
    "no tracking data" without a state)."""
    head = f"{bone_word(bone)} ARRAY: "
    if tool is None:
        return head + "NOT TRACKING - no tracking data"
    if tool.live:
        return head + "LIVE"
    if tool.status is NavStatus.IMPLAUSIBLE:
        why = "implausible pose"
    elif tool.reason:
        why = tool.reason.removeprefix("reference ")
    else:
        why = {NavStatus.NOT_VISIBLE: "not visible", NavStatus.STALE: "stale"}.get(tool.status, "")
    return head + ("NOT TRACKING - " + why if why else "NOT TRACKING")


def knee_panel_lines(alignment: object | None, gaps: object | None, *, angle_tol_deg: float = ALIGNMENT_TOL_DEG,
                     gap_tol_mm: float = GAP_BALANCE_TOL_MM, reason: str = "",
                     reason_chars: int = 48) -> list[tuple[str, str, tuple[float, float, float]]]:
    """The knee block of the readout panel as (label, value, colour) lines.

    ``alignment``: a :class:`~orthonav.navigation.alignment.KneeAlignment` (varus + , deg) or
    None; ``gaps``: a :class:`~orthonav.navigation.gaps.KneeGaps` (mm) or None. Values with one
    decimal: "2.3 deg varus" / "1.5 deg valgus" (no word when it rounds to 0.0), flexion and HKA
    in deg, gaps in mm; "--" (grey) for what is None or not finite. Colours: varus / valgus and
    HKA by :func:`colour_for` of the varus / valgus against ``angle_tol_deg``; both gaps by
    their medial - lateral difference against ``gap_tol_mm`` (red when a gap is negative);
    flexion white. ``reason`` (the state's ``knee_reason``): when alignment or gaps are missing,
    a last grey line says why (cut to ``reason_chars`` characters).
    """
    dash = ("--", GREY)

    def finite(x: object) -> bool:
        try:
            return math.isfinite(float(x))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    vv = getattr(alignment, "varus_valgus_deg", math.nan)
    flex = getattr(alignment, "flexion_deg", math.nan)
    hka = getattr(alignment, "hka_deg", math.nan)
    if finite(vv):
        text = f"{abs(vv):.1f} deg"
        if text != "0.0 deg":
            text += " varus" if vv > 0 else " valgus"
        coronal = (text, colour_for(vv, angle_tol_deg))
    else:
        coronal = dash
    flexion = (f"{flex:.1f} deg", WHITE) if finite(flex) else dash
    hka_v = (f"{hka:.1f} deg", colour_for(vv, angle_tol_deg)) if finite(hka) and finite(vv) else dash
    med = getattr(gaps, "medial_mm", math.nan)
    lat = getattr(gaps, "lateral_mm", math.nan)
    if finite(med) and finite(lat):
        gap_colour = RED if min(med, lat) < 0 else colour_for(med - lat, gap_tol_mm)
        medial, lateral = (f"{med:.1f} mm", gap_colour), (f"{lat:.1f} mm", gap_colour)
    else:
        medial = (f"{med:.1f} mm", WHITE) if finite(med) else dash
        lateral = (f"{lat:.1f} mm", WHITE) if finite(lat) else dash
    return [
        ("KNEE", "alignment, gaps", WHITE),
        ("  Varus/valgus", *coronal),
        ("  Flexion", *flexion),
        ("  HKA", *hka_v),
        ("  Medial gap", *medial),
        ("  Lateral gap", *lateral),
    ] + ([("  Why --", reason if len(reason) <= reason_chars else reason[:reason_chars - 3] + "...", GREY)]
         if reason and (coronal is dash or medial is dash or lateral is dash) else [])


def setup_offscreen_rendering() -> None:
    """Settings for software off-screen rendering (no GPU, no display)."""
    pv.global_theme.multi_samples = 0
    vtk.vtkSMPTools.SetBackend("STDThread")


def colour_for(value: float, tolerance: float) -> tuple[float, float, float]:
    """Green within ``tolerance``, amber within twice, red beyond (grey for NaN)."""
    if not math.isfinite(value):
        return GREY
    a = abs(value)
    if a <= tolerance:
        return GREEN
    if a <= 2 * tolerance:
        return AMBER
    return RED


def decimate_for_display(mesh: pv.PolyData, max_faces: int) -> pv.PolyData:
    """A copy of ``mesh`` with at most about ``max_faces`` triangles (quadric decimation)."""
    tri = mesh.triangulate() if not mesh.is_all_triangles else mesh
    if tri.n_cells <= max_faces:
        return tri
    from orthonav.core.decimation import decimate

    pts, out_faces = decimate(np.asarray(tri.points), tri.faces.reshape(-1, 4)[:, 1:], max_faces)
    return pv.PolyData(pts, np.c_[np.full(len(out_faces), 3), out_faces].ravel())


def tool_model(tool: ToolDefinition) -> pv.PolyData:
    """A display model of ``tool`` in its own tool frame (mm)."""
    tip = tool.tip_in_tool()
    axis = tool.axis_in_tool()
    if tool.kind == "saw":
        n = tool.normal_in_tool()
        w = np.cross(n, axis)  # so that [n, w, -axis] is a rotation (det +1), not a reflection
        length = tool.blade_length_mm or 90.0
        width = tool.blade_width_mm or 25.0
        local = np.eye(4)
        local[:3, :3] = np.c_[n, w, -axis]
        local[:3, 3] = tip - axis * length / 2.0
        blade = pv.Cube(center=(0, 0, 0), x_length=1.3, y_length=width, z_length=length).triangulate()
        return blade.transform(local, inplace=False)
    if tool.kind == "reference":
        return pv.Sphere(radius=6.0)
    length = float(np.linalg.norm(tip)) or 100.0
    radius = 1.6 if tool.kind == "drill" else 1.2
    cone_h = 8.0
    shaft = pv.Cylinder(center=tip - axis * (cone_h + (length - cone_h) / 2), direction=axis, radius=radius, height=length - cone_h, resolution=24)
    cone = pv.Cone(center=tip - axis * cone_h / 2, direction=axis, height=cone_h, radius=radius, resolution=24)
    return (shaft.triangulate() + cone.triangulate()).clean()


def cut_plane_mesh(frame: CutFrame, size_mm: float = 90.0) -> pv.PolyData:
    """A square of side ``size_mm`` on a planned cut (CT LPS)."""
    return pv.Plane(center=frame.point_mm, direction=frame.normal, i_size=size_mm, j_size=size_mm)


class NavigationScene:
    """The navigation screen.

    Parameters
    ----------
    toolset
        Tools to draw (the reference is not drawn).
    bones
        Bone name -> mesh (CT LPS mm); decimated to ``max_faces_per_bone`` for display.
    cuts
        Cut name -> planned cut frame.
    trajectories
        Name -> (entry, target) CT LPS mm.
    implants
        Optional name -> mesh in CT LPS (implant ghosts).
    off_screen, window_size
        Rendering settings.
    angle_tol_deg, distance_tol_mm
        "On target" tolerances for the colours.
    ct
        Optional CT: a strip of four reslices through the active tool's tip (axial, coronal,
        sagittal, along the tool; :mod:`orthonav.navigation.reslice`) along the bottom.
    reslice_tile_px
        Side of each reslice tile (pixels).
    reslice_min_interval_s
        Recompute the reslices at most this often (s of host time; 0 = at every update, the
        default): the four reslices cost ~15 ms, which a fast display (the web view) may spend
        only ten times a second. The strip keeps the last reslices in between.
    tre_map
        Colour the bones by the predicted TRE once a registration is passed to :meth:`update`
        (:meth:`show_tre_map`); False keeps the bone colours.
    cut_bones
        Cut name -> the bone it cuts (the context's ``cut_bones``). One array per bone: a cut's
        contours are drawn on that bone only and move with it; a cut not named here is given
        the bone its name says (:func:`carrier_bone`: "distal_femur", "proximal_tibia"), else
        each of its contours moves with the mesh it lies on. Not used with one patient reference.
    alignment_tol_deg, gap_balance_tol_mm
        The knee panel's colours (:func:`knee_panel_lines`).
    """

    def __init__(
        self,
        toolset: ToolSet,
        bones: Mapping[str, pv.PolyData],
        *,
        cuts: Mapping[str, CutFrame] | None = None,
        trajectories: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]] | None = None,
        implants: Mapping[str, pv.PolyData] | None = None,
        off_screen: bool = True,
        window_size: tuple[int, int] = (800, 600),
        max_faces_per_bone: int = 15_000,
        angle_tol_deg: float = 1.0,
        distance_tol_mm: float = 1.0,
        title: str = "OrthoNav",
        ct: Volume | None = None,
        reslice_tile_px: int = 130,
        reslice_min_interval_s: float = 0.0,
        tre_map: bool = True,
        cut_bones: Mapping[str, str] | None = None,
        alignment_tol_deg: float = ALIGNMENT_TOL_DEG,
        gap_balance_tol_mm: float = GAP_BALANCE_TOL_MM,
    ) -> None:
        if off_screen:
            setup_offscreen_rendering()
        self.off_screen = off_screen
        self.angle_tol = angle_tol_deg
        self.dist_tol = distance_tol_mm
        self.toolset = toolset
        self.cuts = dict(cuts or {})
        self.alignment_tol = alignment_tol_deg
        self.gap_tol = gap_balance_tol_mm
        #: One array per bone: bone -> its reference tool (empty: one patient reference).
        self.references: dict[str, str] = toolset.bone_references()
        self.per_bone = bool(self.references)
        femur = carrier_bone("femur", self.references) if self.per_bone else None
        tibia = carrier_bone("tibia", self.references) if self.per_bone else None
        #: The bone whose CT frame the scene is drawn in when it navigates (one array per bone).
        self.anchor_bone: str | None = femur or next(iter(self.references), None)
        #: (femur, tibia) bone names when the knee panel is shown, else None.
        self.knee_bones: tuple[str, str] | None = (femur, tibia) if femur and tibia else None
        #: The bone whose CT frame the scene is drawn in at the last update (None: the CT as imaged).
        self.display_bone: str | None = None
        #: One array per bone: carrier bone -> the actors it moves (None: actors that never move)
        #: and their shared user matrix (set once per group and update).
        self.bone_groups: dict[str | None, list[vtk.vtkProp3D]] = {}
        self._group_matrix: dict[str | None, vtk.vtkMatrix4x4] = {}
        self.knee_lines: list[tuple[str, str, tuple[float, float, float]]] = []  #: the knee block at the last update
        pl = pv.Plotter(off_screen=off_screen, window_size=list(window_size), title=title)
        pl.set_background((0.08, 0.09, 0.12))
        self.plotter = pl
        pts = []
        self.bone_meshes: dict[str, pv.PolyData] = {}  #: displayed (decimated) bone surfaces, CT LPS mm
        self.bone_actors: dict[str, vtk.vtkActor] = {}
        for name, mesh in bones.items():
            disp = decimate_for_display(mesh, max_faces_per_bone)
            self.bone_meshes[name] = disp
            self.bone_actors[name] = pl.add_mesh(disp, color=BONE_COLOURS.get(name.split("_")[0], (0.9, 0.87, 0.77)), smooth_shading=True,
                                                 name=f"bone_{name}")
            pts.append(np.asarray(disp.points))
            self._carry(name, self.bone_actors[name])
        for name, mesh in (implants or {}).items():
            self._carry(name, pl.add_mesh(mesh, color=(0.7, 0.75, 0.85), opacity=0.35, name=f"implant_{name}"))
        # Planned cuts: the plane's outline and its intersection with the bones (opaque lines:
        # translucent surfaces halve the frame rate of the software renderer), all in one actor
        # (one actor per cut and bone cost ~1.5 ms each per frame in software rendering).
        # A cut that crosses no bone is shown by its outline instead.
        # One array per bone: one such actor per carrier bone (the contours move with their bone).
        contours: dict[str | None, list[pv.PolyData]] = {}
        for name, cf in self.cuts.items():
            crossed = False
            cut_group = None
            if self.per_bone:  # the cut's bone (cut_bones), else a bone its name says ("distal_femur")
                cut_group = carrier_bone(cut_bones[name] if cut_bones and name in cut_bones else name, self.references)
            for bone_name, mesh in bones.items():
                group = carrier_bone(bone_name, self.references) if self.per_bone else None
                if cut_group is not None and group != cut_group:
                    continue  # a cut is drawn on its own bone only
                contour = mesh.slice(normal=cf.normal, origin=cf.point_mm)
                if contour.n_points:
                    contours.setdefault(group, []).append(contour)
                    crossed = True
            if not crossed:
                contours.setdefault(cut_group, []).append(
                    cut_plane_mesh(cf).extract_feature_edges(boundary_edges=True, feature_edges=False, manifold_edges=False))
            pts.append(cf.point_mm[None, :])
        for group, parts in contours.items():
            actor = pl.add_mesh(pv.merge(parts), color=CUT_BLUE, line_width=3, name="cuts" if group is None else f"cuts_{group}")
            if group is not None:
                self._carry(group, actor)
        for name, (entry, target) in (trajectories or {}).items():
            pl.add_mesh(pv.Line(entry, target), color=(0.3, 0.9, 1.0), line_width=3, name=f"traj_{name}")
        self.tool_actors: dict[str, vtk.vtkActor] = {}
        tool_colours = {"pointer": (0.85, 0.85, 0.9), "saw": (0.75, 0.8, 0.85), "drill": (0.9, 0.75, 0.4)}
        for tool in toolset.tools:
            if tool.kind == "reference":
                continue
            actor = pl.add_mesh(tool_model(tool), color=tool_colours.get(tool.kind, WHITE), specular=0.4, name=f"tool_{tool.name}")
            actor.SetVisibility(False)
            self.tool_actors[tool.name] = actor
        # Texts: tool status (top left), readout panel (right), banner (centre); placed for the
        # window's size by _place_texts (again whenever the window is resized).
        self.status_text = self._text((0, 0), 11, top=True)
        self.info_text = self._text((10, 10), 10)
        # The readout panel: one multi-line actor for the labels and one per colour for the values
        # (a value line is blank in the actors of the other colours), so the number of text
        # actors stays small: each costs about a millisecond per frame in software rendering.
        self.panel_labels = self._text((0, 0), 13, top=True)
        self.panel_values = {c: self._text((0, 0), 13, top=True) for c in (WHITE, GREEN, AMBER, RED, GREY)}
        self.banner = self._text((0, 0), 40, centred=True)
        self.banner.GetTextProperty().BoldOn()
        self.banner.GetTextProperty().SetBackgroundColor(0.0, 0.0, 0.0)
        self.banner.GetTextProperty().SetBackgroundOpacity(0.7)
        #: One array per bone: the banner of the bones that do not navigate while another does
        #: (None with one patient reference).
        self.bone_banner: vtk.vtkTextActor | None = None
        if self.per_bone:
            self.bone_banner = self._text((0, 0), 24, centred=True)
            self.bone_banner.GetTextProperty().BoldOn()
            self.bone_banner.GetTextProperty().SetBackgroundColor(0.0, 0.0, 0.0)
            self.bone_banner.GetTextProperty().SetBackgroundOpacity(0.7)
        # Camera: from anterior (LPS -y), superior up, on the knee (the cuts) when there are cuts.
        if pts:
            allp = np.vstack(pts)
            lo, hi = allp.min(axis=0), allp.max(axis=0)
            centre = (lo + hi) / 2
            extent = float(np.max(hi - lo)) or 200.0
        else:
            centre, extent = np.zeros(3), 200.0
        if self.cuts:
            centre = np.mean([cf.point_mm for cf in self.cuts.values()], axis=0)
            extent = min(extent, 260.0)
        pl.camera.focal_point = centre.tolist()
        pl.camera.position = (centre + np.array([0.35, -1.0, 0.25]) * extent * 1.7).tolist()
        pl.camera.up = (0.0, 0.0, 1.0)
        pl.camera.view_angle = 30.0
        pl.camera.clipping_range = (1.0, extent * 10)
        self.centre = centre
        self._shown = False
        self.ct = ct
        self._tile = int(reslice_tile_px)
        self.reslice_min_interval_s = float(reslice_min_interval_s)
        self._resliced_at = (-math.inf, "")  # host time (s) and tool of the last reslices
        self._strip = None
        if ct is not None:
            self._strip_image = vtk.vtkImageData()
            self._strip_image.SetDimensions(4 * self._tile, self._tile, 1)
            self._strip_image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
            self._strip = numpy_support.vtk_to_numpy(self._strip_image.GetPointData().GetScalars()).reshape(self._tile, 4 * self._tile, 3)
            mapper = vtk.vtkImageMapper()
            mapper.SetInputData(self._strip_image)
            mapper.SetColorWindow(255.0)
            mapper.SetColorLevel(127.5)
            self._strip_actor = vtk.vtkActor2D()
            self._strip_actor.SetMapper(mapper)
            self._strip_actor.SetPosition(10, 28)
            self._strip_actor.SetVisibility(False)
            pl.renderer.AddActor(self._strip_actor)
            self.strip_note = self._text((10, 28 + self._tile + 4), 10)
        self.tre_map_enabled = tre_map
        self.tre_maps: dict[str, NDArray[np.float64]] = {}  #: bone -> predicted TRE (mm) at each displayed vertex
        self.tre_range_mm = (0.0, 1.0)
        self._tre_record: RegistrationRecord | None = None
        self.tre_bar: vtk.vtkScalarBarActor | None = None  #: the TRE map's scalar bar (made on first use)
        self.tre_title: vtk.vtkTextActor | None = None  #: its title, with the unit
        self._lut: vtk.vtkLookupTable | None = None
        self._placed_size: tuple[int, int] = (-1, -1)
        self._place_texts(tuple(window_size))
        # Before every render: re-place the texts when the window's size changed.
        pl.renderer.AddObserver("StartEvent", lambda *_: self._place_texts(tuple(self.plotter.render_window.GetSize())))

    def _place_texts(self, size: tuple[int, ...]) -> None:
        """Place the texts for a window of ``size`` = (width, height) pixels (no-op when unchanged)."""
        w, h = int(size[0]), int(size[1])
        if (w, h) == self._placed_size or w <= 0 or h <= 0:
            return
        self._placed_size = (w, h)
        self.status_text.SetDisplayPosition(10, h - 10)
        x0, y0 = w - 280, h - 14
        self.panel_labels.SetDisplayPosition(x0, y0)
        for actor in self.panel_values.values():
            actor.SetDisplayPosition(x0 + 130, y0)
        self.banner.SetDisplayPosition(w // 2, h // 2)
        if self.bone_banner is not None:
            self.bone_banner.SetDisplayPosition(int(w * 0.42), int(h * 0.78))

    def _carry(self, name: str, actor: vtk.vtkProp3D) -> None:
        """One array per bone: ``actor`` (of the mesh, cut or implant ``name``) moves with the
        bone :func:`carrier_bone` finds (never, when none: it stays in the display frame)."""
        if not self.per_bone:
            return
        group = carrier_bone(name, self.references)
        if group not in self._group_matrix:
            m = vtk.vtkMatrix4x4()
            m.Identity()
            self._group_matrix[group] = m
        actor.SetUserMatrix(self._group_matrix[group])
        self.bone_groups.setdefault(group, []).append(actor)

    def _place_bones(self, state: NavigationState | None) -> dict[str, NDArray[np.float64]]:
        """One array per bone: move and show / hide the bones for ``state`` (module docstring).
        Returns bone -> ``display_ct_from_<bone>ct`` (4, 4) for every bone that navigates."""
        nav = {} if state is None else state.bone_ct_from_tracker
        anchor = self.anchor_bone if self.anchor_bone in nav else next((b for b in self.references if b in nav), None)
        self.display_bone = anchor
        display_from: dict[str, NDArray[np.float64]] = {}
        if anchor is not None:
            to_display = np.asarray(nav[anchor], dtype=np.float64)
            for bone in self.references:
                if bone == anchor:
                    display_from[bone] = np.eye(4)
                elif bone in nav:
                    display_from[bone] = to_display @ invert(nav[bone])
        for group, actors in self.bone_groups.items():
            shown = anchor is None or group is None or group in display_from
            if shown and group is not None:
                m = display_from.get(group, np.eye(4)) if anchor is not None else np.eye(4)
                self._group_matrix[group].DeepCopy(m.ravel().tolist())
            for actor in actors:
                actor.SetVisibility(shown)
        return display_from

    def _text(self, position: tuple[int, int], size: int, *, top: bool = False, centred: bool = False) -> vtk.vtkTextActor:
        actor = vtk.vtkTextActor()
        prop = actor.GetTextProperty()
        prop.SetFontSize(size)
        prop.SetColor(*WHITE)
        prop.SetFontFamilyToArial()
        if top:
            prop.SetVerticalJustificationToTop()
        if centred:
            prop.SetJustificationToCentered()
            prop.SetVerticalJustificationToCentered()
        actor.SetDisplayPosition(int(position[0]), int(position[1]))
        self.plotter.renderer.AddActor(actor)
        return actor

    @classmethod
    def for_case(cls, case_dir: str | Path, toolset: ToolSet, **kwargs: object) -> "NavigationScene":
        """A scene with the bones of ``CASE/meshes``."""
        return cls(toolset, read_case_meshes(case_dir), **kwargs)  # type: ignore[arg-type]

    def _set_text(self, actor: vtk.vtkTextActor, text: str, colour: tuple[float, float, float] = WHITE) -> None:
        actor.SetInput(text)
        actor.GetTextProperty().SetColor(*colour)

    def show_tre_map(self, record: RegistrationRecord | None) -> None:
        """Colour the bones by the TRE ``record`` predicts at each displayed vertex
        (:func:`~orthonav.navigation.tre_map.registration_tre_maps`, mm), with a scalar bar;
        None (or a record without an FLE) restores the bone colours. The colour range is
        :func:`~orthonav.navigation.tre_map.tre_colour_range` of the maps."""
        self._tre_record = record
        maps: dict[str, NDArray[np.float64]] = {}
        if record is not None and self.bone_meshes:
            try:
                maps = registration_tre_maps(record, {b: np.asarray(m.points) for b, m in self.bone_meshes.items()})
            except InputError:  # no FLE to predict with: nothing trustworthy to colour
                maps = {}
        self.tre_maps = maps
        if not maps:
            for actor in self.bone_actors.values():
                actor.GetMapper().ScalarVisibilityOff()
            if self.tre_bar is not None:
                self.tre_bar.SetVisibility(False)
                self.tre_title.SetVisibility(False)
            return
        lo, hi = tre_colour_range(maps)
        self.tre_range_mm = (lo, hi)
        lut = self._tre_lut()
        lut.SetTableRange(lo, hi)
        for bone, actor in self.bone_actors.items():
            if bone not in maps:  # a bone the registration makes no prediction for keeps its colour
                actor.GetMapper().ScalarVisibilityOff()
        for bone, values in maps.items():
            mesh = self.bone_meshes[bone]
            mesh.point_data[TRE_ARRAY] = values
            mapper = self.bone_actors[bone].GetMapper()
            mapper.SetLookupTable(lut)
            mapper.SetScalarModeToUsePointFieldData()
            mapper.SelectColorArray(TRE_ARRAY)
            mapper.SetColorModeToMapScalars()
            mapper.SetScalarRange(lo, hi)
            mapper.ScalarVisibilityOn()
        bar = self._tre_scalar_bar(lut)
        self.tre_title.SetInput(tre_map_title(record))
        self.tre_title.SetVisibility(True)
        bar.SetNumberOfLabels(int(round((hi - lo) / (hi / 5.0))) + 1)  # ticks on round values (tre_colour_range)
        bar.SetVisibility(True)

    def _tre_lut(self) -> vtk.vtkLookupTable:
        if self._lut is None:
            from matplotlib import colormaps

            name, a, b = TRE_COLORMAP
            rgba = colormaps[name](np.linspace(a, b, 256))
            lut = vtk.vtkLookupTable()
            lut.SetNumberOfTableValues(256)
            for i, c in enumerate(rgba):
                lut.SetTableValue(i, float(c[0]), float(c[1]), float(c[2]), 1.0)
            lut.SetAboveRangeColor(*rgba[-1])
            lut.UseAboveRangeColorOn()
            lut.Build()
            self._lut = lut
        return self._lut

    def _tre_scalar_bar(self, lut: vtk.vtkLookupTable) -> vtk.vtkScalarBarActor:
        """The TRE map's horizontal scalar bar, bottom right (right of the reslice strip), and
        its title (a text actor of its own above it: the bar's own title overlaps its labels)."""
        if self.tre_bar is None:
            bar = vtk.vtkScalarBarActor()
            bar.SetOrientationToHorizontal()
            bar.SetTextPositionToPrecedeScalarBar()  # labels under the bar, the title above it
            bar.SetNumberOfLabels(5)
            bar.SetLabelFormat("%.3g")
            bar.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
            bar.SetPosition(0.70, 0.02)
            bar.SetWidth(0.28)
            bar.SetHeight(0.16)
            bar.SetBarRatio(0.3)
            bar.UnconstrainedFontSizeOn()
            for prop, size in ((bar.GetTitleTextProperty(), 13), (bar.GetLabelTextProperty(), 11)):
                prop.SetColor(*WHITE)
                prop.SetFontFamilyToArial()
                prop.SetFontSize(size)
                prop.BoldOff()
                prop.ItalicOff()
                prop.ShadowOff()
            self.plotter.renderer.AddActor(bar)
            self.tre_bar = bar
            title = self._text((0, 0), 13)
            title.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
            title.SetPosition(0.70, 0.02 + 0.16 + 0.005)
            self.tre_title = title
        self.tre_bar.SetLookupTable(lut)
        return self.tre_bar

    def update(self, state: NavigationState | None, *, info: str = "", tracker_problem: str | None = None,
               registration: Registration | RegistrationRecord | None = None) -> None:
        """Show ``state`` (None: nothing received yet, shown as NOT TRACKING).

        ``tracker_problem`` (e.g. "cannot connect to 127.0.0.1:18944 (connection refused);
        retrying"): the tracker is not delivering; the banner says NO TRACKER in red and the
        problem heads the status text, whatever the workflow's state.

        ``registration``: the registration in force (a :class:`Registration` or its record);
        when it is new the bones are recoloured by its predicted TRE (:meth:`show_tre_map`,
        if the scene was made with ``tre_map=True``). None leaves the colouring as it is.
        """
        record = registration.record if isinstance(registration, Registration) else registration
        if record is not None and self.tre_map_enabled and record is not self._tre_record:
            self.show_tre_map(record)
        tracking = state is not None and state.tracking
        display_from = self._place_bones(state) if self.per_bone else {}
        for name, actor in self.tool_actors.items():
            ts = None if state is None else state.tools.get(name)
            if tracking and ts is not None and ts.live:
                if self.per_bone and ts.bone and ts.bone != self.display_bone:
                    if ts.bone not in display_from:
                        actor.SetVisibility(False)
                        continue
                    actor.user_matrix = display_from[ts.bone] @ ts.ct_from_tool
                else:
                    actor.user_matrix = ts.ct_from_tool
                actor.SetVisibility(True)
            else:
                actor.SetVisibility(False)
        self.banner.SetInput("")
        lines = []
        if self.per_bone:
            lines += [array_status_line(bone, None if state is None else state.tools.get(ref)) for bone, ref in self.references.items()]
            self._update_bone_banner(state if tracking else None)
        for tool in self.toolset.tools:
            if tool.kind == "reference":
                continue
            st = NavStatus.NOT_TRACKING if state is None else state.status(tool.name)
            label = {NavStatus.LIVE: "live", NavStatus.NOT_VISIBLE: "NOT VISIBLE", NavStatus.STALE: "STALE",
                     NavStatus.NOT_TRACKING: "not tracking", NavStatus.IMPLAUSIBLE: "IMPLAUSIBLE POSE"}[st]
            lines.append(f"{tool.name}: {label}")
        ref = state.reason.upper() if state is not None and not state.tracking else "NO TRACKING DATA"
        ref = "" if tracking else ref
        head = [tracker_problem] if tracker_problem else []
        self._set_text(self.status_text, "\n".join(head + ([ref] if ref else []) + lines),
                       RED if tracker_problem else WHITE if tracking else AMBER)
        self._set_text(self.info_text, info, GREY)
        if tracker_problem and not tracking:
            self._set_text(self.banner, "NO TRACKER", RED)
        elif not tracking:
            if state is not None and state.reason == "not registered":
                self._set_text(self.banner, "NOT REGISTERED", AMBER)  # digitising: instruments are not shown yet
            else:
                self._set_text(self.banner, "NOT TRACKING", RED)
        lines: list[tuple[str, str, tuple[float, float, float]]] = []
        if self.knee_bones is not None:
            self.knee_lines = knee_panel_lines(None if state is None else state.alignment, None if state is None else state.gaps,
                                               angle_tol_deg=self.alignment_tol, gap_tol_mm=self.gap_tol,
                                               reason="" if state is None else getattr(state, "knee_reason", ""))
            lines += self.knee_lines
        if tracking and state is not None:
            if state.saw:
                # The cut the blade is nearest to.
                cut, g = min(state.saw.items(), key=lambda kv: abs(kv[1].distance_mm))
                depth = "--" if not math.isfinite(g.remaining_depth_mm) else f"{g.remaining_depth_mm:.0f} mm"
                flex_word, varus_word = saw_angle_words(cut)
                lines += [
                    ("SAW", cut.replace("_", " "), WHITE),
                    (f"  {flex_word}", f"{signed(g.flexion_deg)} deg", colour_for(g.flexion_deg, self.angle_tol)),
                    (f"  {varus_word}", f"{signed(g.varus_deg)} deg", colour_for(g.varus_deg, self.angle_tol)),
                    ("  Distance", f"{signed(g.distance_mm)} mm", colour_for(g.distance_mm, self.dist_tol)),
                    ("  Depth left", depth, WHITE),
                ]
            for name, g in list(state.drill.items())[:1]:
                lines += [
                    ("DRILL", name, WHITE),
                    ("  Angle", f"{g.angle_deg:.1f} deg", colour_for(g.angle_deg, self.angle_tol)),
                    ("  Entry", f"{g.entry_offset_mm:.1f} mm", colour_for(g.entry_offset_mm, self.dist_tol)),
                    ("  To target", f"{signed(g.depth_to_target_mm)} mm", WHITE),
                ]
            ptr = state.tools.get("Pointer")
            if ptr is not None and ptr.live:
                tip = ptr.tip_ct_mm
                lines.append(("POINTER", "tip, CT LPS mm", WHITE))
                lines.append(("", f"{tip[0]:.0f}, {tip[1]:.0f}, {tip[2]:.0f}".replace("-0,", "0,"), WHITE))
                if math.isfinite(state.pointer_to_bone_mm):
                    lines.append((f"  To {state.pointer_bone}", f"{signed(state.pointer_to_bone_mm)} mm", WHITE))
        self._update_reslices(state if tracking else None)
        self.panel_labels.SetInput("\n".join(label for label, _v, _c in lines))
        for colour, actor in self.panel_values.items():
            actor.SetInput("\n".join(v if c == colour else " " for _l, v, c in lines))
            actor.GetTextProperty().SetColor(*colour)

    def _update_bone_banner(self, state: NavigationState | None) -> None:
        """One array per bone: name the bones that do not navigate while another does (red NOT
        TRACKING; amber NOT REGISTERED for a bone not registered yet); empty otherwise."""
        if self.bone_banner is None:
            return
        if state is None:
            self._set_text(self.bone_banner, "")
            return
        down, unregistered = [], []
        for bone, ref in self.references.items():
            if state.bone_tracking(bone):
                continue
            ts = state.tools.get(ref)
            (unregistered if ts is not None and ts.reason == "not registered" else down).append(bone)
        text = [f"{bone_word(b)} NOT TRACKING" for b in down] + [f"{bone_word(b)} NOT REGISTERED" for b in unregistered]
        self._set_text(self.bone_banner, "\n".join(text), RED if down else AMBER)

    def _update_reslices(self, state: NavigationState | None) -> None:
        if self._strip is None:
            return
        tool = None
        if state is not None:
            for kind in ("saw", "drill", "pointer"):  # the instrument in use first
                for t in self.toolset.tools:
                    if t.kind == kind and t.name in state.tools and state.tools[t.name].live:
                        tool = t
                        break
                if tool is not None:
                    break
        if tool is None:
            self._strip_actor.SetVisibility(False)
            self.strip_note.SetInput("")
            self._resliced_at = (-math.inf, "")
            return
        now = time.monotonic()
        if self.reslice_min_interval_s > 0 and self._resliced_at[1] == tool.name and now - self._resliced_at[0] < self.reslice_min_interval_s:
            return  # the strip keeps the reslices made a moment ago
        self._resliced_at = (now, tool.name)
        ts = state.tools[tool.name]
        tip = ts.tip_ct_mm
        planes = [ORIENTATIONS["axial"], ORIENTATIONS["coronal"], ORIENTATIONS["sagittal"], tool_plane_axes(ts.ct_from_tool, tool.axis_in_tool())]
        n = self._tile
        empty = []
        for k, (u, v) in enumerate(planes):
            hu = reslice(self.ct, tip, u, v, size_mm=100.0, pixels=n)
            if not np.ptp(hu) > 0.0:  # all fill: the slice lies outside the CT
                empty.append(RESLICE_NAMES[k])
            grey = to_grey(hu)
            tile = np.repeat(grey[::-1, :, None], 3, axis=2)  # VTK rows go bottom -> top
            c = n // 2
            tile[c, :, :] = tile[c, :, :] // 2 + np.array([0, 90, 0], dtype=np.uint8)  # crosshair on the tip
            tile[:, c, :] = tile[:, c, :] // 2 + np.array([0, 90, 0], dtype=np.uint8)
            if k == 3:  # the tool's shaft: from the left edge (handle side) to the tip
                tile[c - 1 : c + 2, :c, :] = (255, 200, 0)
            tile[0, :, :] = tile[-1, :, :] = 80
            tile[:, 0, :] = tile[:, -1, :] = 80
            self._strip[:, k * n : (k + 1) * n, :] = tile
        self._strip_image.Modified()
        self._strip_actor.SetVisibility(True)
        note = f"CT at the {tool.name.lower()} tip: " + ", ".join(RESLICE_NAMES) + " (100 mm)"
        if empty:
            note += f"   {tool.name} tip outside the CT: no image in {', '.join(empty)}"
        self._set_text(self.strip_note, note, AMBER if empty else GREY)

    def render(self) -> None:
        """Render the current scene (on screen: also process window events, non-blocking)."""
        if not self._shown:
            if self.off_screen:
                self.plotter.show(auto_close=False, interactive=False)
            else:
                self.plotter.show(auto_close=False, interactive_update=True)
            self._shown = True
        if self.off_screen:
            self.plotter.render()
        else:
            self.plotter.update(stime=1, force_redraw=True)

    def screenshot(self, path: str | Path) -> Path:
        """Render and save a PNG (atomic)."""
        from orthonav.core.atomic import write_with

        self.render()
        img = self.plotter.screenshot(return_img=True)
        from PIL import Image  # pillow ships with matplotlib

        write_with(path, lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))
        return Path(path)

    def close(self) -> None:
        self.plotter.close()
