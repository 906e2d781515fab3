"""The planning scene: bones, landmarks, axes, cut planes and implants, rendered off-screen.

The scene content (:func:`scene_items`) and the cameras (:func:`view_camera`) are plain
functions, so tests and the interactive window (``planning/ui.py``) share them; only
:func:`render_scene` touches VTK rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from orthonav.core.atomic import write_with
from orthonav.core.case import Case
from orthonav.core.errors import InputError

from .landmarks import position
from .query import frames
from .schema import Plan, load_plan, require
from .tha.alignment import SIDES, app_frame

BONE_COLOURS = {
    "femur": "#e8dcc0", "tibia": "#e0d2b0", "fibula": "#d8c8a0", "patella": "#d0c090",
    "hip_left": "#e4d8bc", "hip_right": "#e4d8bc", "sacrum": "#d8cca8", "femur_left": "#e8dcc0", "femur_right": "#e8dcc0",
}
CUT_COLOURS = {"distal_femur": "#2f7fd0", "proximal_tibia": "#d05a2f", "neck_left": "#e07020", "neck_right": "#e07020"}
CUT_RADIUS_MM = {"neck_left": 24.0, "neck_right": 24.0}
IMPLANT_COLOURS = {"tha_cup": "#8fa8c8", "tha_stem": "#b0b8c8"}
#: THA axes drawn as tubes from their origin: key prefix -> (length mm, colour)
THA_AXES = {"acetabular_": (45.0, "#8040a0"), "femoral_neck_": (40.0, "#1060c0"), "femoral_shaft_": (90.0, "#607080")}
#: What each colour of the scene means (legend entries): item name prefix -> label.
LEGEND_LABELS = {
    "landmark:fiducial_": "registration fiducials",
    "landmark:": "anatomical landmarks",
    "axis:femoral_mechanical": "femoral mechanical axis",
    "axis:tibial_mechanical": "tibial mechanical axis",
    "axis:transepicondylar": "transepicondylar axis",
    "axis:femoral_planning": "femoral planning axis (assumed)",
    "axis:tibial_planning": "tibial planning axis (assumed)",
    "axis:acetabular_": "acetabular axis",
    "axis:femoral_neck_": "femoral neck axis",
    "axis:femoral_shaft_": "femoral shaft axis",
    "axis:": "anatomical axes",
    "cut:distal_femur": "distal femoral cut",
    "cut:proximal_tibia": "proximal tibial cut",
    "cut:neck_": "femoral neck cut",
    "implant:": "implants",
}
VIEWS = ("anterior", "lateral", "medial", "posterior", "superior", "inferior")


@dataclass(frozen=True)
class SceneItem:
    """One thing to draw: a mesh in LPS mm with its display style."""

    name: str
    kind: str  # 'bone', 'landmark', 'axis', 'cut', 'implant', 'guide'
    mesh: pv.PolyData
    colour: str
    opacity: float = 1.0


def cut_disc(point: NDArray[np.float64], normal: NDArray[np.float64], radius_mm: float) -> pv.PolyData:
    """A thin disc visualising a cut plane."""
    return pv.Disc(center=point, inner=0.0, outer=radius_mm, normal=normal, r_res=1, c_res=48).triangulate()


def scene_items(plan: Plan, meshes: dict[str, pv.PolyData], *, implant_meshes: dict[str, pv.PolyData] | None = None, landmark_radius_mm: float = 2.5, cut_radius_mm: float = 45.0) -> list[SceneItem]:
    """Everything the planning scene shows, in LPS mm.

    Bones (semi-transparent), landmarks (spheres; fiducials in green), mechanical and
    anatomical axes (tubes), cut planes (discs), and implants placed with their
    ``ct_from_implant`` (``implant_meshes`` keyed ``'<family>:<size>'``, in implant frames).
    """
    items: list[SceneItem] = []
    for bone, m in meshes.items():
        items.append(SceneItem(f"bone:{bone}", "bone", m, BONE_COLOURS.get(bone, "#dddddd"), 0.55))
    for name, lm in plan.landmarks.items():
        colour = "#20a040" if name.startswith("fiducial_") else "#c02020"
        items.append(SceneItem(f"landmark:{name}", "landmark", pv.Sphere(radius=landmark_radius_mm, center=position(lm), theta_resolution=16, phi_resolution=16), colour))
    lms = plan.landmarks
    segs = {
        "femoral_mechanical": ("femoral_knee_centre", "femoral_head_centre", "#1060c0"),
        "tibial_mechanical": ("ankle_centre", "tibial_knee_centre", "#c06010"),
        "transepicondylar": ("medial_epicondyle", "lateral_epicondyle", "#8040a0"),
        # Partial stacks: the stated planning axes stand in for the mechanical ones.
        "femoral_planning": ("femoral_knee_centre", "femoral_axis_reference", "#70a0e0"),
        "tibial_planning": ("tibial_axis_reference", "tibial_knee_centre", "#e0a060"),
    }
    for key, (a, b, colour) in segs.items():
        if a in lms and b in lms:
            items.append(SceneItem(f"axis:{key}", "axis", pv.Tube(pointa=position(lms[a]), pointb=position(lms[b]), radius=1.0, n_sides=12), colour))
    for key, ax in plan.axes.items():
        tha = next((v for k, v in THA_AXES.items() if key.startswith(k)), None)
        if tha is not None:
            o, d = np.asarray(ax.origin_lps_mm), np.asarray(ax.direction_lps)
            length, colour = tha
            a, b = (o - length * d, o + length * d) if key.startswith("femoral_shaft_") else (o, o + length * d)
            items.append(SceneItem(f"axis:{key}", "axis", pv.Tube(pointa=a, pointb=b, radius=1.0, n_sides=12), colour))
            continue
        if not key.endswith("_anatomical"):
            continue
        o = np.asarray(ax.origin_lps_mm)
        d = np.asarray(ax.direction_lps)
        items.append(SceneItem(f"axis:{key}", "axis", pv.Tube(pointa=o - 120 * d, pointb=o + 120 * d, radius=0.7, n_sides=12), "#607080"))
    for key, cut in plan.cuts.items():
        if key not in CUT_COLOURS:
            continue  # the femoral box cuts are shown by the component itself
        r = CUT_RADIUS_MM.get(key, cut_radius_mm)
        items.append(SceneItem(f"cut:{key}", "cut", cut_disc(np.asarray(cut.point_lps_mm), np.asarray(cut.normal_lps), r), CUT_COLOURS.get(key, "#3060c0"), 0.6))
    for i, imp in enumerate(plan.implants):
        key = f"{imp.family}:{imp.size}"
        if implant_meshes and key in implant_meshes:
            m = implant_meshes[key].transform(np.asarray(imp.ct_from_implant), inplace=False)
            items.append(SceneItem(f"implant:{i}:{key}", "implant", m, IMPLANT_COLOURS.get(imp.family, "#b0b8c8"), 1.0))
    return items


def legend_entries(items: list[SceneItem]) -> list[tuple[str, str]]:
    """(label, colour) for each kind of thing drawn (first matching :data:`LEGEND_LABELS` prefix),
    in drawing order, each label once."""
    out: dict[str, str] = {}
    for it in items:
        if it.kind == "bone":
            continue
        label = next((v for k, v in LEGEND_LABELS.items() if it.name.startswith(k)), None)
        if label is not None and label not in out:
            out[label] = it.colour
    return list(out.items())


def view_camera(plan: Plan, view: str, *, distance_mm: float = 1400.0, whole_limb: bool = False) -> tuple[NDArray, NDArray, NDArray]:
    """(position, focal point, view-up) for a named view, from the plan's anatomy.

    Views look at the knee (midpoint of the femoral and tibial knee centres, else the
    landmark centroid), with the limb's proximal direction up; 'anterior' looks from the
    front, 'lateral' from the lateral side, etc. Directions come from the landmarks, not the
    CT axes (LPS is only used when the landmarks do not define a frame).
    """
    if view not in VIEWS:
        raise InputError(None, f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    if plan.procedure == "tha":
        return _hip_camera(plan, view, distance_mm=distance_mm, whole_limb=whole_limb)
    lms = plan.landmarks
    fr = frames(plan) if lms else None
    up = np.array([0.0, 0.0, 1.0])
    ant = np.array([0.0, -1.0, 0.0])
    lat = np.array([-1.0, 0.0, 0.0])
    if fr is not None and fr.femur_proximal is not None and fr.femur_lateral is not None:
        up, ant, lat = fr.femur_proximal, fr.femur_anterior, fr.femur_lateral
    names = [n for n in ("femoral_knee_centre", "tibial_knee_centre") if n in lms]
    ends = [n for n in ("femoral_head_centre", "ankle_centre") if n in lms]
    if whole_limb and len(ends) == 2:
        focal = np.mean([position(lms[n]) for n in ends], axis=0)
    elif names:
        focal = np.mean([position(lms[n]) for n in names], axis=0)
    elif lms:
        focal = np.mean([position(v) for v in lms.values()], axis=0)
    else:
        focal = np.zeros(3)
    d = {"anterior": ant, "posterior": -ant, "lateral": lat, "medial": -lat, "superior": up, "inferior": -up}[view]
    vup = up if view not in ("superior", "inferior") else ant
    return focal + distance_mm * d, focal, vup


def _hip_camera(plan: Plan, view: str, *, distance_mm: float, whole_limb: bool) -> tuple[NDArray, NDArray, NDArray]:
    """Hip views in the anterior pelvic plane frame (LPS axes when the APP is missing):
    'lateral' / 'medial' are the operated side's (the left for a bilateral plan); the
    close-up looks at the operated hip joint, the whole view at the pelvis."""
    lms = plan.landmarks
    try:
        ml, ant, up = app_frame(lms)
    except InputError:
        ml, ant, up = np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    side = plan.side if plan.side in SIDES else "left"
    lat = SIDES[side] * ml
    joints = [position(lms[k]) for k in (f"acetabulum_centre_{side}", f"femoral_head_centre_{side}") if k in lms]
    both = [position(v) for k, v in lms.items() if k.startswith(("acetabulum_centre_", "femoral_head_centre_"))]
    if not whole_limb and joints:
        focal = np.mean(joints, axis=0)
    elif both:
        focal = np.mean(both, axis=0)
    else:
        focal = np.mean([position(v) for v in lms.values()], axis=0) if lms else np.zeros(3)
    d = {"anterior": ant, "posterior": -ant, "lateral": lat, "medial": -lat, "superior": up, "inferior": -up}[view]
    vup = up if view not in ("superior", "inferior") else ant
    return focal + distance_mm * d, focal, vup


KNEE_FIELD_MM = 140.0


def _limb_length_mm(meshes: dict[str, pv.PolyData]) -> float:
    pts = np.concatenate([np.asarray(m.points) for m in meshes.values()])
    return float(np.linalg.norm(pts.max(axis=0) - pts.min(axis=0)))


def setup_rendering() -> None:
    """Configure VTK for off-screen rendering on any machine: no multi-sampling (unsupported
    by some EGL / software contexts) and the portable thread backend."""
    import vtk

    pv.global_theme.multi_samples = 0
    vtk.vtkSMPTools.SetBackend("STDThread")


#: Text size (points) of the view titles, the legend and the angles in the key strip, and
#: the measured width of a character at those sizes (pixels, VTK's default font).
KEY_FONT_PT = 12
ANGLE_FONT_PT = 14
_KEY_CHAR_PX = 12.5
_ANGLE_CHAR_PX = 13.5
_LINE_PX = 22
_LEGEND_SHARE = 0.6  # of the width; the angles take the rest


def _legend_layout(entries: list[tuple[str, str]], width_px: int) -> tuple[int, int, int]:
    """(columns, rows, column width px) of the legend in the key strip."""
    col_px = int(48 + _KEY_CHAR_PX * max((len(lab) for lab, _ in entries), default=10))
    cols = max(1, min(len(entries), int(_LEGEND_SHARE * width_px) // col_px)) if entries else 1
    return cols, max(1, -(-len(entries) // cols)), col_px


def _angles_x_px(entries: list[tuple[str, str]], width_px: int) -> int:
    """Where the angle lines start in the key strip (pixels): right of the legend's columns."""
    cols, _, col_px = _legend_layout(entries, width_px)
    return 12 + (cols * col_px if entries else 0) + 20


def _angle_lines(plan: Plan, entries: list[tuple[str, str]], width_px: int) -> list[str]:
    """The angle text wrapped to the key strip's right part (a number never parted from its unit)."""
    import textwrap

    chars = max(20, int((width_px - _angles_x_px(entries, width_px) - 12) / _ANGLE_CHAR_PX))
    glued = angle_text(plan).replace(" deg", "\u00a0deg")  # textwrap breaks at ASCII spaces only
    return [w.replace("\u00a0", " ") for line in glued.splitlines() for w in textwrap.wrap(line, chars)]


def key_strip_height_px(entries: list[tuple[str, str]], plan: Plan, width_px: int) -> int:
    """Height (pixels) of the key strip under the views: the legend's rows or the angle
    lines, whichever is taller."""
    _, rows, _ = _legend_layout(entries, width_px)
    angle_rows = int(np.ceil(len(_angle_lines(plan, entries, width_px)) * ANGLE_FONT_PT / KEY_FONT_PT))
    return 16 + _LINE_PX * max(rows, angle_rows, 1)


def _draw_key(pl: pv.Plotter, entries: list[tuple[str, str]], plan: Plan, size_px: tuple[int, int]) -> None:
    """The legend (a coloured square per marker colour, its meaning in black) and the angle
    lines, in the key strip's renderer (pixel positions from its lower-left corner)."""
    width, height = size_px
    _, rows, col_px = _legend_layout(entries, width)
    for i, (label, colour) in enumerate(entries):
        c, r = divmod(i, rows)
        x, y = 12 + c * col_px, height - 8 - _LINE_PX * (r + 1)
        _swatch(pl, (x, y + 3), 16, colour)
        pl.add_text(label, position=(x + 24, y), font_size=KEY_FONT_PT, color="black")
    lines = _angle_lines(plan, entries, width)
    if lines:
        pl.add_text("\n".join(lines), position=(_angles_x_px(entries, width), 8), font_size=ANGLE_FONT_PT, color="black")


def _swatch(pl: pv.Plotter, corner_px: tuple[int, int], side_px: int, colour: str) -> None:
    """A filled square of ``colour`` in the current renderer (pixels from its lower-left)."""
    import vtk

    x, y = corner_px
    pts = vtk.vtkPoints()
    for px, py in ((x, y), (x + side_px, y), (x + side_px, y + side_px), (x, y + side_px)):
        pts.InsertNextPoint(px, py, 0.0)
    quad = vtk.vtkCellArray()
    quad.InsertNextCell(4, [0, 1, 2, 3])
    poly = vtk.vtkPolyData()
    poly.SetPoints(pts)
    poly.SetPolys(quad)
    mapper = vtk.vtkPolyDataMapper2D()
    mapper.SetInputData(poly)
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(pv.Color(colour).float_rgb)
    pl.add_actor(actor, reset_camera=False)


def render_scene(
    plan: Plan,
    meshes: dict[str, pv.PolyData],
    png_path: str | Path,
    *,
    views: tuple[str, ...] = ("anterior", "lateral"),
    size: tuple[int, int] = (1200, 800),
    implant_meshes: dict[str, pv.PolyData] | None = None,
    title: str | None = None,
    zoom: float = 1.0,
) -> Path:
    """Render the planning scene into one PNG (atomic): for each view a whole-limb (knee) or
    whole-pelvis (hip) panel, then for each view a close-up of the joint (140 mm tall /
    ``zoom``)."""
    if not views:
        raise InputError(None, "at least one view is needed")
    for v in views:
        if v not in VIEWS:
            raise InputError(None, f"unknown view {v!r}; choose from {', '.join(VIEWS)}")
    setup_rendering()
    items = scene_items(plan, meshes, implant_meshes=implant_meshes)
    knee_items = [it for it in items if it.kind != "axis" or any(k in it.name for k in ("mechanical", "transepicondylar", "_planning"))]
    n = len(views)
    panels = [(v, False) for v in views] + [(v, True) for v in views]
    weights = [1] * n + [2] * n if plan.procedure != "tha" else [1] * (2 * n)
    entries = legend_entries(items)
    # A key strip under the views: the legend (every marker colour named) and the angles,
    # in black on white at a size that stays legible when the picture is printed at A4 width.
    key_px = key_strip_height_px(entries, plan, size[0])
    view_h = max(size[1] - key_px, 200)
    total = (size[0], view_h + key_px)
    pl = pv.Plotter(off_screen=True, shape=(2, 2 * n), col_weights=weights, row_weights=[view_h, key_px],
                    groups=[(1, np.s_[:])], window_size=list(total), border=False)
    try:
        for col, (view, close) in enumerate(panels):
            pl.subplot(0, col)
            pl.set_background("white")
            for it in knee_items if close else items:
                if it.kind == "bone" and CONFIDENCE_ARRAY in it.mesh.point_data:  # a learned backend's confidence (issue 15)
                    pl.add_mesh(it.mesh, scalars=CONFIDENCE_ARRAY, cmap=CONFIDENCE_CMAP, clim=CONFIDENCE_CLIM, show_scalar_bar=False,
                                opacity=it.opacity, smooth_shading=True)
                    continue
                pl.add_mesh(it.mesh, color=it.colour, opacity=it.opacity, smooth_shading=it.kind in ("bone", "implant"))
            pos, focal, vup = view_camera(plan, view, whole_limb=not close)
            pl.camera_position = [tuple(pos), tuple(focal), tuple(vup)]
            pl.camera.parallel_projection = True
            # parallel_scale is half the panel height (mm); fit the width too (tall panels).
            panel_w = size[0] * weights[col] / sum(weights)
            aspect = max(1.0, view_h / panel_w)
            if close:
                pl.camera.parallel_scale = 0.5 * KNEE_FIELD_MM * aspect / zoom
            elif plan.procedure == "tha":  # a wide pelvis: fit its projected width and height
                pts = np.concatenate([np.asarray(m.points) for m in meshes.values()])
                right = np.cross(focal - pos, vup)
                right /= np.linalg.norm(right)
                w, h = np.ptp(pts @ right), np.ptp(pts @ (vup / np.linalg.norm(vup)))
                pl.camera.parallel_scale = 0.55 * max(h, w * aspect) / zoom
            else:  # the limb's length, or its width for a short knee stack in a narrow panel
                pts = np.concatenate([np.asarray(m.points) for m in meshes.values()])
                right = np.cross(focal - pos, vup)
                right /= np.linalg.norm(right)
                pl.camera.parallel_scale = 0.55 * max(_limb_length_mm(meshes), np.ptp(pts @ right) * aspect) / zoom
            whole = "pelvis" if plan.procedure == "tha" else "whole limb"
            label = f"{view}: {'hip' if plan.procedure == 'tha' else 'knee'} close-up" if close else f"{view}: {whole}"
            if any(CONFIDENCE_ARRAY in m.point_data for m in meshes.values()):
                label += f" (bone colour: segmentation confidence, red {CONFIDENCE_CLIM[0]:g} - green {CONFIDENCE_CLIM[1]:g})"
            pl.add_text(label if title is None else f"{title} - {label}", font_size=KEY_FONT_PT, color="black")
        pl.subplot(1, 0)
        pl.set_background("white")
        _draw_key(pl, entries, plan, (total[0], key_px))
        pl.render()
        out = write_with(png_path, lambda tmp: pl.screenshot(str(tmp)))
    finally:
        pl.close()
    return Path(out)


def angle_text(plan: Plan) -> str:
    """The angle lines of the key strip, each number with its unit (THA: per side, native
    and cup inclination / anteversion)."""
    if plan.procedure != "tha":
        words = {"hka": "HKA", "ldfa": "LDFA", "mpta": "MPTA", "slope": "tibial slope", "femoral_rotation": "femoral rotation"}
        parts = [f"{words.get(k, k.replace('_', ' '))} {v:.1f} deg" for k, v in plan.angles_deg.items()]
        lines = ["    ".join(parts[i:i + 2]) for i in range(0, len(parts), 2)]
        missing = [words[k] for k in words if k in plan.not_measured]
        if missing:  # a partial CT: say so where the angles would be
            lines.append(f"not measured: {', '.join(missing)} (see the report)")
        return "\n".join(lines)
    a = plan.angles_deg
    lines = []
    for side in ("left", "right"):
        for label, pre in (("native", "acetabular"), ("cup", "cup")):
            i, v = a.get(f"{pre}_inclination_{side}"), a.get(f"{pre}_anteversion_{side}")
            if i is not None and v is not None:
                lines.append(f"{side} {label}: incl {i:.1f} deg, antev {v:.1f} deg")
    return "\n".join(lines)


#: Point array of a bone mesh holding the segmentation confidence near each point, and its colours.
CONFIDENCE_ARRAY = "confidence"
CONFIDENCE_CMAP = "RdYlGn"
CONFIDENCE_CLIM = (0.5, 1.0)


def attach_confidence(case_dir: str | Path, meshes: dict[str, pv.PolyData]) -> dict[str, pv.PolyData]:
    """Bone meshes with a :data:`CONFIDENCE_ARRAY` point array when the case has a learned
    backend's ``confidence.nii.gz`` (``segment --backend unet``); else the meshes unchanged.

    The value at a mesh point is the mean voxel confidence of that bone's labelled voxels near
    it (Gaussian-weighted, sigma 1.5 voxels), interpolated linearly: the surface itself sits
    between voxels, where a voxel's own confidence says little.
    """
    from scipy import ndimage as ndi

    from orthonav.core.case import read_labels_table
    from orthonav.core.volume import read_volume

    case = Case(case_dir)
    if not (case.confidence.is_file() and case.labels.is_file() and case.labels_json.is_file()):
        return meshes
    table = read_labels_table(case.labels_json)
    if table.backend != "unet":
        return meshes
    labels, conf = read_volume(case.labels), read_volume(case.confidence)
    if labels.array_zyx.shape != conf.array_zyx.shape:
        return meshes
    ijk_from_lps = np.linalg.inv(labels.lps_from_ijk)
    out = dict(meshes)
    for bone, mesh in meshes.items():
        try:
            v = table.value_of(bone)
        except KeyError:
            continue
        mask = labels.array_zyx == v
        if not mask.any():
            continue
        kji = np.argwhere(mask)
        lo, hi = np.maximum(kji.min(axis=0) - 4, 0), kji.max(axis=0) + 5
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        m = mask[box].astype(np.float32)
        num = ndi.gaussian_filter(np.where(mask[box], conf.array_zyx[box], 0.0).astype(np.float32), 1.5)
        den = ndi.gaussian_filter(m, 1.5)
        local = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 1.0).astype(np.float32)
        pts = np.asarray(mesh.points, dtype=np.float64)
        ijk = pts @ ijk_from_lps[:3, :3].T + ijk_from_lps[:3, 3]
        zyx = ijk[:, ::-1] - lo
        copy = mesh.copy()
        copy.point_data[CONFIDENCE_ARRAY] = ndi.map_coordinates(local, zyx.T, order=1, mode="nearest").astype(np.float32)
        out[bone] = copy
    return out


def _case_scene(case_dir: str | Path) -> tuple[Plan, dict[str, pv.PolyData], dict[str, pv.PolyData] | None]:
    """The plan of a case, its bone meshes (with the segmentation confidence, when a learned
    backend wrote one: :func:`attach_confidence`) and its implants' meshes (None without implants)."""
    from .auto import load_case_meshes

    case = Case(case_dir)
    plan = load_plan(case.require(case.plan, "orthonav plan CASE --auto"))
    require(plan, case.plan, stage="a picture of the plan", landmarks=True, bones=True)
    meshes = attach_confidence(case.root, load_case_meshes(case.root, plan.procedure))
    implant_meshes = None
    if plan.implants:
        from .implants import implant_meshes_for

        implant_meshes = implant_meshes_for(plan, case.root)
    return plan, meshes, implant_meshes


def plan_legend(case_dir: str | Path) -> list[tuple[str, str]]:
    """(meaning, colour) of every marker colour the case's plan picture shows (the key of
    :func:`render_plan`), in drawing order."""
    plan, meshes, implant_meshes = _case_scene(case_dir)
    return legend_entries(scene_items(plan, meshes, implant_meshes=implant_meshes))


def render_plan(case_dir: str | Path, png_path: str | Path, *, views: tuple[str, ...] = ("anterior", "lateral"), size: tuple[int, int] = (1200, 800), zoom: float = 1.0) -> Path:
    """Render ``CASE/plan.json`` with the case's bone meshes (and implants) to ``png_path``."""
    plan, meshes, implant_meshes = _case_scene(case_dir)
    return render_scene(plan, meshes, png_path, views=views, size=size, implant_meshes=implant_meshes, zoom=zoom)


__all__ = [
    "CONFIDENCE_ARRAY",
    "LEGEND_LABELS",
    "attach_confidence",
    "VIEWS",
    "SceneItem",
    "angle_text",
    "cut_disc",
    "key_strip_height_px",
    "legend_entries",
    "plan_legend",
    "render_plan",
    "render_scene",
    "scene_items",
    "setup_rendering",
    "view_camera",
]
