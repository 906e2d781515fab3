"""The navigation screen: a pyvista scene updated from :class:`NavigationState` (off-screen capable).

Everything is built once (bones decimated for display, planned cut planes, trajectories,
instrument models in their tool frames); each update only moves actors with
``actor.user_matrix = ct_from_tool``, toggles visibility and rewrites text. Colours of the
readouts: green within the tolerance (default 1 deg / 1 mm), amber within twice that, red
beyond. When the reference is not visible (or stale) the scene shows a big red "NOT TRACKING"
and hides every instrument; before registration it shows an amber "NOT REGISTERED" (and the
caller's digitising prompt); a tool that is not visible or stale is hidden and listed as such.

Frames: the scene is in CT LPS mm; the camera looks from anterior with superior up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyvista as pv
import vtk
from numpy.typing import NDArray
from vtk.util import numpy_support

from orthonav.core.case import read_case_meshes
from orthonav.core.volume import Volume
from orthonav.tracking.tools import ToolDefinition, ToolSet

from .guidance import CutFrame
from .reslice import ORIENTATIONS, reslice, to_grey, tool_plane_axes
from .state import NavigationState, NavStatus

GREEN = (0.15, 0.8, 0.2)
AMBER = (1.0, 0.7, 0.0)
RED = (0.95, 0.15, 0.1)
GREY = (0.6, 0.6, 0.6)
WHITE = (0.95, 0.95, 0.95)
CUT_BLUE = (0.25, 0.6, 1.0)

#: Knee cuts: their saw angles are flexion and varus (the other cuts get neutral words).
KNEE_CUTS = frozenset({"distal_femur", "proximal_tibia", "anterior_femur", "posterior_femur", "anterior_chamfer", "posterior_chamfer"})
BONE_COLOURS = {"femur": (0.93, 0.89, 0.78), "tibia": (0.88, 0.85, 0.74), "fibula": (0.85, 0.82, 0.72), "patella": (0.9, 0.8, 0.7)}


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
    import fast_simplification

    faces = tri.faces.reshape(-1, 4)[:, 1:]
    pts, out_faces = fast_simplification.simplify(np.asarray(tri.points, dtype=np.float32), faces, target_reduction=1.0 - max_faces / tri.n_cells)
    return pv.PolyData(np.asarray(pts, dtype=np.float64), np.c_[np.full(len(out_faces), 3), out_faces].ravel())


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
    ) -> None:
        if off_screen:
            setup_offscreen_rendering()
        self.off_screen = off_screen
        self.angle_tol = angle_tol_deg
        self.dist_tol = distance_tol_mm
        self.toolset = toolset
        self.cuts = dict(cuts or {})
        pl = pv.Plotter(off_screen=off_screen, window_size=list(window_size), title=title)
        pl.set_background((0.08, 0.09, 0.12))
        self.plotter = pl
        pts = []
        for name, mesh in bones.items():
            disp = decimate_for_display(mesh, max_faces_per_bone)
            pl.add_mesh(disp, color=BONE_COLOURS.get(name.split("_")[0], (0.9, 0.87, 0.77)), smooth_shading=True, name=f"bone_{name}")
            pts.append(np.asarray(disp.points))
        for name, mesh in (implants or {}).items():
            pl.add_mesh(mesh, color=(0.7, 0.75, 0.85), opacity=0.35, name=f"implant_{name}")
        # Planned cuts: the plane's outline and its intersection with the bones (opaque lines:
        # translucent surfaces halve the frame rate of the software renderer).
        # A cut that crosses no bone is shown by its outline instead.
        for name, cf in self.cuts.items():
            crossed = False
            for bname, mesh in bones.items():
                contour = mesh.slice(normal=cf.normal, origin=cf.point_mm)
                if contour.n_points:
                    pl.add_mesh(contour, color=CUT_BLUE, line_width=3, name=f"cut_{name}_{bname}")
                    crossed = True
            if not crossed:
                outline = cut_plane_mesh(cf).extract_feature_edges(boundary_edges=True, feature_edges=False, manifold_edges=False)
                pl.add_mesh(outline, color=CUT_BLUE, line_width=2, name=f"cut_{name}")
            pts.append(cf.point_mm[None, :])
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
        # Texts: tool status (top left), readout panel (right), banner (centre).
        w, h = window_size
        self.status_text = self._text((10, h - 10), 11, top=True)
        self.info_text = self._text((10, 10), 10)
        # The readout panel: one multi-line actor for the labels and one per colour for the values
        # (a value line is blank in the actors of the other colours), so the number of text
        # actors stays small: each costs about a millisecond per frame in software rendering.
        x0, y0 = w - 280, h - 14
        self.panel_labels = self._text((x0, y0), 13, top=True)
        self.panel_values = {c: self._text((x0 + 130, y0), 13, top=True) for c in (WHITE, GREEN, AMBER, RED, GREY)}
        self.banner = self._text((w // 2, h // 2), 40, centred=True)
        self.banner.GetTextProperty().BoldOn()
        self.banner.GetTextProperty().SetBackgroundColor(0.0, 0.0, 0.0)
        self.banner.GetTextProperty().SetBackgroundOpacity(0.7)
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

    def update(self, state: NavigationState | None, *, info: str = "", tracker_problem: str | None = None) -> None:
        """Show ``state`` (None: nothing received yet, shown as NOT TRACKING).

        ``tracker_problem`` (e.g. "cannot connect to 127.0.0.1:18944 (connection refused);
        retrying"): the tracker is not delivering; the banner says NO TRACKER in red and the
        problem heads the status text, whatever the workflow's state.
        """
        tracking = state is not None and state.tracking
        for name, actor in self.tool_actors.items():
            ts = None if state is None else state.tools.get(name)
            if tracking and ts is not None and ts.live:
                actor.user_matrix = ts.ct_from_tool
                actor.SetVisibility(True)
            else:
                actor.SetVisibility(False)
        self.banner.SetInput("")
        lines = []
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
            return
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
