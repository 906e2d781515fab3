"""Guidance numbers: instrument pose (CT frame) versus the plan. Pure functions, arrays in/out.

All inputs are in the CT's LPS frame (mm); tool geometry comes from
:class:`orthonav.tracking.tools.ToolDefinition` (tool frame, mm).

Definitions
-----------
A planned cut has a unit normal ``n`` pointing from the kept bone into the removed part
(:class:`orthonav.planning.schema.CutPlane`). Its :class:`CutFrame` adds two in-plane unit
axes taken from the bone: ``anterior`` (patient anterior, LPS ``(0, -1, 0)``, made
perpendicular to ``n``) and ``medial`` (``+-n x anterior``, the sign chosen to agree with the
bone's medial direction, e.g. lateral -> medial epicondyle). With ``m`` the blade-plane normal
signed so that ``m . n >= 0``:

* ``flexion_deg = atan2(-m . anterior, m . n)``: rotation about the medio-lateral axis,
  positive when the normal tips posteriorly. Distal femoral cut: femoral component flexion.
  Proximal tibial cut: extra posterior slope.
* ``varus_deg = atan2(m . medial, m . n)``: rotation about the antero-posterior axis,
  positive when the normal tips medially. For both the distal femoral and the proximal tibial
  cut this is varus (negative = valgus).
* ``angle_deg``: the total angle between the blade plane and the planned plane.
* ``distance_mm = (edge_centre - point) . n``: signed distance of the blade's edge centre from
  the planned plane; positive = on the removed side (this cut would leave bone that the plan
  removes), negative = into bone the plan keeps.
* ``remaining_depth_mm``: along the cutting direction, the distance from the blade's cutting
  edge to the farthest crossing of the bone surface (the far cortex), the maximum over
  ``DEPTH_RAYS`` rays spread evenly across the blade's width (edge centre included), so a ray
  that happens to pass through a gap (the intercondylar notch) does not read 0; 0 when no bone
  lies ahead of any of them.

These projected angles are exact: a blade whose normal is built as
``normalise(n - tan(flex) * anterior + tan(varus) * medial)`` reads back ``flex`` and ``varus``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyvista as pv
import vtk
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError
from orthonav.core.transforms import apply
from orthonav.tracking.tools import ToolDefinition

#: Rays across the blade's width used for the remaining depth.
DEPTH_RAYS = 5

#: Patient anterior in LPS (a patient frame, so this holds for every CT).
ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])


def _unit(v: ArrayLike, name: str) -> NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64).reshape(3)
    n = float(np.linalg.norm(a))
    if not math.isfinite(n) or n < 1e-12:
        raise InputError(None, f"{name} must be a non-zero finite vector, got {a.tolist()}")
    return a / n


# --- plain-float 3-vector maths for the live loop ---------------------------------------------
# A navigation state is a few dozen dot products on 3-vectors and 4x4 matrices. numpy costs
# ~1 us of call overhead per operation on arrays that small, more than the arithmetic, so the
# per-frame path works on float triples and on the pose as nested lists (``m.tolist()``).

Vec3 = tuple[float, float, float]
Rows = list[list[float]]  #: a (4, 4) rigid transform as nested lists, ``m.tolist()``


def _vec3(v: ArrayLike) -> Vec3:
    a = np.asarray(v, dtype=np.float64).reshape(3)
    return (float(a[0]), float(a[1]), float(a[2]))


def _dot(a: Vec3, b: Vec3) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _rotate(m: Rows, v: Vec3) -> Vec3:
    """R v for the rotation of ``m`` (rows of a 4x4)."""
    r0, r1, r2 = m[0], m[1], m[2]
    return (r0[0] * v[0] + r0[1] * v[1] + r0[2] * v[2], r1[0] * v[0] + r1[1] * v[1] + r1[2] * v[2],
            r2[0] * v[0] + r2[1] * v[1] + r2[2] * v[2])


def _transform(m: Rows, p: Vec3) -> Vec3:
    """R p + t for the rigid transform ``m`` (rows of a 4x4)."""
    r0, r1, r2 = m[0], m[1], m[2]
    return (r0[0] * p[0] + r0[1] * p[1] + r0[2] * p[2] + r0[3], r1[0] * p[0] + r1[1] * p[1] + r1[2] * p[2] + r1[3],
            r2[0] * p[0] + r2[1] * p[1] + r2[2] * p[2] + r2[3])


@dataclass(frozen=True)
class ToolGeometry:
    """A tool's tool-frame constants as plain floats (build once per tool: see :func:`tool_geometry`).

    Attributes
    ----------
    tip
        Tip / blade edge centre (tool frame, mm).
    axis
        Unit tool axis / cutting direction (tool frame).
    normal
        Unit blade-plane normal (tool frame).
    ray_offsets_mm
        Offsets across the blade's width of the ``DEPTH_RAYS`` remaining-depth rays (mm).
    """

    tip: Vec3
    axis: Vec3
    normal: Vec3
    ray_offsets_mm: tuple[float, ...]


def tool_geometry(tool: ToolDefinition) -> ToolGeometry:
    """The :class:`ToolGeometry` of a tool definition."""
    half = 0.5 * (tool.blade_width_mm or 0.0)
    offsets = tuple(half * (2.0 * k / (DEPTH_RAYS - 1) - 1.0) for k in range(DEPTH_RAYS)) if half > 0 else (0.0,)
    return ToolGeometry(_vec3(tool.tip_in_tool()), _vec3(tool.axis_in_tool()), _vec3(tool.normal_in_tool()), offsets)


@dataclass(frozen=True)
class CutFrame:
    """A planned cut with the bone's in-plane axes (all CT LPS, unit vectors orthonormal).

    Attributes
    ----------
    point_mm
        (3,) a point on the planned plane (mm).
    normal
        (3,) unit normal, from kept bone into the removed part.
    anterior
        (3,) unit, in the plane, pointing anteriorly.
    medial
        (3,) unit, in the plane, pointing medially.
    """

    point_mm: NDArray[np.float64]
    normal: NDArray[np.float64]
    anterior: NDArray[np.float64]
    medial: NDArray[np.float64]

    @cached_property
    def floats(self) -> tuple[Vec3, Vec3, Vec3, Vec3]:
        """(point, normal, anterior, medial) as plain float triples (the live loop's maths)."""
        return (_vec3(self.point_mm), _vec3(self.normal), _vec3(self.anterior), _vec3(self.medial))


def cut_frame(point_mm: ArrayLike, normal: ArrayLike, medial_hint: ArrayLike, *, anterior_hint: ArrayLike = ANTERIOR_LPS) -> CutFrame:
    """Build a :class:`CutFrame` from a plane and the bone's medial direction.

    Parameters
    ----------
    point_mm, normal
        The planned plane (CT LPS mm; normal from kept bone into the removed part).
    medial_hint
        (3,) any vector pointing roughly medially for this bone (e.g. lateral -> medial
        epicondyle); only its sign relative to the plane's medial axis is used.
    anterior_hint
        (3,) roughly anterior; default patient anterior in LPS.
    """
    p = np.asarray(point_mm, dtype=np.float64).reshape(3)
    n = _unit(normal, "cut normal")
    a = np.asarray(anterior_hint, dtype=np.float64) - np.dot(anterior_hint, n) * n
    anterior = _unit(a, "anterior direction in the cut plane (is the cut plane coronal?)")
    medial = np.cross(n, anterior)
    if np.dot(medial, np.asarray(medial_hint, dtype=np.float64)) < 0:
        medial = -medial
    return CutFrame(point_mm=p, normal=n, anterior=anterior, medial=medial)


def blade_normal_from_angles(frame: CutFrame, flexion_deg: float, varus_deg: float) -> NDArray[np.float64]:
    """Unit blade normal with the given deviations (the exact inverse of :func:`saw_guidance`'s angles)."""
    m = frame.normal - math.tan(math.radians(flexion_deg)) * frame.anterior + math.tan(math.radians(varus_deg)) * frame.medial
    return m / np.linalg.norm(m)


#: Within this distance of the surface (mm), :meth:`BoneSurface.signed_distance_mm` is exact (the
#: workflow's 5 mm surface-painting band lies well inside).
EXACT_BAND_MM = 10.0


class BoneSurface:
    """A closed bone surface (CT LPS mm) with the locators guidance needs; build once per bone.

    Parameters
    ----------
    mesh
        Triangulated closed surface in CT LPS mm.
    name
        Bone name (for messages).
    exact_band_mm
        :meth:`signed_distance_mm` is exact within this distance of the surface (see there).

    Attributes
    ----------
    far_error_mm
        Largest over-estimate of :meth:`signed_distance_mm` beyond ``exact_band_mm``: the
        longest edge / sqrt(3), the farthest a point of a triangle lies from its nearest vertex.
    """

    def __init__(self, mesh: pv.PolyData, name: str = "bone", *, exact_band_mm: float = EXACT_BAND_MM) -> None:
        if mesh.n_points == 0 or mesh.n_cells == 0:
            raise InputError(None, f"bone surface '{name}' is empty")
        tri = mesh.triangulate() if not mesh.is_all_triangles else mesh
        tri = pv.PolyData(np.asarray(tri.points, dtype=np.float64), tri.faces)  # drop any stale "Normals" arrays
        # Consistent outward winding, so that the implicit distance is negative inside.
        tri = tri.compute_normals(cell_normals=True, point_normals=True, auto_orient_normals=True, consistent_normals=True,
                                  split_vertices=False)
        self.name = name
        self.mesh: pv.PolyData = tri
        self._implicit = vtk.vtkImplicitPolyDataDistance()
        self._implicit.SetInput(tri)
        # Nearest vertex: a k-d tree stays ~2-40 us wherever the point is (~10 us for a pointer parked
        # 13 cm away; most deep inside); the cell locators behind the exact distance take
        # milliseconds deep inside or far outside a 200k-face bone.
        self._vertex_locator = vtk.vtkKdTreePointLocator()
        self._vertex_locator.SetDataSet(tri)
        self._vertex_locator.BuildLocator()
        self._vertices = np.asarray(tri.points, dtype=np.float64)
        self._vertex_normals = np.asarray(tri.point_data["Normals"], dtype=np.float64)
        self.exact_band_mm = float(exact_band_mm)
        faces = tri.faces.reshape(-1, 4)[:, 1:]
        v = self._vertices
        edge = max(float(np.max(np.linalg.norm(v[faces[:, i]] - v[faces[:, (i + 1) % 3]], axis=1))) for i in range(3))
        self.far_error_mm = edge / math.sqrt(3.0)
        self._cells = vtk.vtkCellLocator()  # fastest ray caster here (~5 us vs ~100 us for vtkOBBTree)
        self._cells.SetDataSet(tri)
        self._cells.BuildLocator()
        b = tri.bounds
        pad = 1.0  # mm: a ray grazing the box still reaches the locator
        self._lo = (b[0] - pad, b[2] - pad, b[4] - pad)
        self._hi = (b[1] + pad, b[3] + pad, b[5] + pad)
        # Output slots of the first-hit ray cast (reused: one BoneSurface serves one thread).
        self._t = vtk.reference(0.0)
        self._x = [0.0, 0.0, 0.0]
        self._pcoords = [0.0, 0.0, 0.0]
        self._sub_id = vtk.reference(0)

    def signed_distance_mm(self, p_ct_mm: ArrayLike) -> float:
        """Signed distance (mm) of a point from the surface: negative inside the bone.

        Exact (closest point on the triangles, vtkImplicitPolyDataDistance) when the nearest
        vertex is within ``exact_band_mm``. Farther away, the distance to the nearest vertex,
        signed by that vertex's outward normal: at most ``far_error_mm`` more than the exact
        distance. This bounds the cost (tens of microseconds, where the exact search takes up
        to milliseconds deep inside or far outside a bone), and far from the bone a fraction of
        a millimetre does not matter to the user.
        """
        p = np.asarray(p_ct_mm, dtype=np.float64).reshape(3).tolist()
        if not (math.isfinite(p[0]) and math.isfinite(p[1]) and math.isfinite(p[2])):
            return math.nan
        i = self._vertex_locator.FindClosestPoint(p)
        vx, vy, vz = self._vertices[i].tolist()
        dx, dy, dz = p[0] - vx, p[1] - vy, p[2] - vz
        d_vertex = math.sqrt(dx * dx + dy * dy + dz * dz)
        if d_vertex <= self.exact_band_mm:  # |exact| <= d_vertex: the exact search stays local
            return float(self._implicit.EvaluateFunction(p))
        nx, ny, nz = self._vertex_normals[i].tolist()
        return d_vertex if dx * nx + dy * ny + dz * nz >= 0.0 else -d_vertex

    def far_crossing_mm(self, origin_mm: ArrayLike, direction: ArrayLike, *, max_length_mm: float = 300.0) -> float:
        """Distance along unit ``direction`` from ``origin`` to the farthest surface crossing within
        ``max_length_mm`` (0 if none)."""
        return self.far_crossing(_vec3(origin_mm), _vec3(direction), max_length_mm)

    def far_crossing(self, o: Vec3, d: Vec3, max_length_mm: float = 300.0) -> float:
        """:meth:`far_crossing_mm` on float triples (the live loop's entry point).

        The segment ``o + s d``, ``0 <= s <= max_length_mm``, is first clipped to the mesh's
        bounding box (slab test; no crossing outside it), then cast BACKWARDS, from its far end
        to its near end: the first hit of that cast is the farthest crossing, so the locator
        stops there instead of collecting every crossing along the whole line.
        """
        s0, s1 = 0.0, max_length_mm
        for k in range(3):
            dk = d[k]
            if dk == 0.0:
                if not self._lo[k] <= o[k] <= self._hi[k]:
                    return 0.0
                continue
            a = (self._lo[k] - o[k]) / dk
            b = (self._hi[k] - o[k]) / dk
            if a > b:
                a, b = b, a
            s0 = max(s0, a)
            s1 = min(s1, b)
            if s0 >= s1:
                return 0.0
        far = (o[0] + s1 * d[0], o[1] + s1 * d[1], o[2] + s1 * d[2])
        near = (o[0] + s0 * d[0], o[1] + s0 * d[1], o[2] + s0 * d[2])
        if not self._cells.IntersectWithLine(far, near, 0.0, self._t, self._x, self._pcoords, self._sub_id):
            return 0.0
        x = self._x
        return max(0.0, (x[0] - o[0]) * d[0] + (x[1] - o[1]) * d[1] + (x[2] - o[2]) * d[2])


@dataclass(frozen=True)
class SawGuidance:
    """Saw blade versus a planned cut (see the module docstring for definitions).

    Attributes
    ----------
    flexion_deg, varus_deg, angle_deg
        Angular deviations (degrees).
    distance_mm
        Signed distance of the blade's edge centre from the planned plane (mm).
    remaining_depth_mm
        Distance to the far bone boundary along the cutting direction (mm); NaN without a surface.
    edge_ct_mm
        (3,) blade edge centre in CT LPS (mm).
    """

    flexion_deg: float
    varus_deg: float
    angle_deg: float
    distance_mm: float
    remaining_depth_mm: float
    edge_ct_mm: NDArray[np.float64]


def saw_guidance(ct_from_saw: ArrayLike, saw: ToolDefinition, frame: CutFrame, surface: BoneSurface | None = None) -> SawGuidance:
    """Guidance numbers of a saw blade against a planned cut.

    Parameters
    ----------
    ct_from_saw
        (4, 4) pose of the saw's tool frame in the CT (LPS mm).
    saw
        Tool definition: ``tip_mm`` = blade edge centre, ``normal`` = blade-plane normal,
        ``axis`` = cutting direction (tool frame).
    frame
        The planned cut with its bone axes.
    surface
        The bone's surface, for the remaining depth (optional).
    """
    return saw_guidance_rows(_rows(ct_from_saw), tool_geometry(saw), frame, surface)


def saw_guidance_rows(ct_from_saw: Rows, saw: ToolGeometry, frame: CutFrame, surface: BoneSurface | None = None) -> SawGuidance:
    """:func:`saw_guidance` for the live loop: the pose as nested lists, the tool's constants precomputed."""
    p, n, ant, med = frame.floats
    edge = _transform(ct_from_saw, saw.tip)
    m = _rotate(ct_from_saw, saw.normal)
    mn = _dot(m, n)
    if mn < 0:
        m, mn = (-m[0], -m[1], -m[2]), -mn
    flexion = math.degrees(math.atan2(-_dot(m, ant), mn))
    varus = math.degrees(math.atan2(_dot(m, med), mn))
    angle = math.degrees(math.acos(min(1.0, mn)))
    distance = (edge[0] - p[0]) * n[0] + (edge[1] - p[1]) * n[1] + (edge[2] - p[2]) * n[2]
    depth = math.nan if surface is None else remaining_depth_rows(ct_from_saw, saw, surface)
    return SawGuidance(flexion, varus, angle, distance, depth, np.array(edge))


def remaining_depth_mm(ct_from_saw: ArrayLike, saw: ToolDefinition, surface: BoneSurface) -> float:
    """Distance (mm) from the blade's cutting edge to the far cortex along the cutting direction:
    the maximum over ``DEPTH_RAYS`` rays across the blade's width (see the module docstring)."""
    return remaining_depth_rows(_rows(ct_from_saw), tool_geometry(saw), surface)


def remaining_depth_rows(ct_from_saw: Rows, saw: ToolGeometry, surface: BoneSurface) -> float:
    """:func:`remaining_depth_mm` for the live loop (pose as nested lists, tool constants precomputed)."""
    e = _transform(ct_from_saw, saw.tip)
    c = _rotate(ct_from_saw, saw.axis)  # cutting direction
    m = _rotate(ct_from_saw, saw.normal)
    across = (m[1] * c[2] - m[2] * c[1], m[2] * c[0] - m[0] * c[2], m[0] * c[1] - m[1] * c[0])  # m x c, in the blade plane
    return max(surface.far_crossing((e[0] + o * across[0], e[1] + o * across[1], e[2] + o * across[2]), c)
               for o in saw.ray_offsets_mm)


def _rows(t: ArrayLike) -> Rows:
    m = np.asarray(t, dtype=np.float64)
    if m.shape != (4, 4):
        raise InputError(None, f"a tool pose must be 4x4, got shape {m.shape}")
    return m.tolist()


@dataclass(frozen=True)
class DrillGuidance:
    """Drill (or pointer) axis versus a planned trajectory.

    Attributes
    ----------
    angle_deg
        Angle between the tool axis and the planned direction entry -> target (degrees).
    entry_offset_mm
        Distance of the tool tip from the planned line, perpendicular to it (mm).
    depth_to_target_mm
        Remaining depth: ``(target - tip) . planned_direction`` (mm); negative past the target.
    tip_ct_mm
        (3,) tool tip in CT LPS (mm).
    """

    angle_deg: float
    entry_offset_mm: float
    depth_to_target_mm: float
    tip_ct_mm: NDArray[np.float64]


def drill_guidance(ct_from_drill: ArrayLike, drill: ToolDefinition, entry_mm: ArrayLike, target_mm: ArrayLike) -> DrillGuidance:
    """Guidance numbers of a drill against a planned trajectory (entry and target in CT LPS mm)."""
    entry = np.asarray(entry_mm, dtype=np.float64).reshape(3)
    target = np.asarray(target_mm, dtype=np.float64).reshape(3)
    d = _unit(target - entry, "planned trajectory (entry equals target)")
    return drill_guidance_rows(_rows(ct_from_drill), tool_geometry(drill), _vec3(entry), _vec3(target), _vec3(d))


def drill_guidance_rows(ct_from_drill: Rows, drill: ToolGeometry, entry: Vec3, target: Vec3, direction: Vec3) -> DrillGuidance:
    """:func:`drill_guidance` for the live loop: pose as nested lists, tool constants and the unit
    planned ``direction`` (entry -> target) precomputed."""
    d = direction
    tip = _transform(ct_from_drill, drill.tip)
    axis = _rotate(ct_from_drill, drill.axis)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, _dot(axis, d)))))
    rel = (tip[0] - entry[0], tip[1] - entry[1], tip[2] - entry[2])
    along = _dot(rel, d)
    offset = math.hypot(rel[0] - along * d[0], rel[1] - along * d[1], rel[2] - along * d[2])
    depth = (target[0] - tip[0]) * d[0] + (target[1] - tip[1]) * d[1] + (target[2] - tip[2]) * d[2]
    return DrillGuidance(angle, offset, depth, np.array(tip))


def tool_tip_ct(ct_from_tool: ArrayLike, tool: ToolDefinition) -> NDArray[np.float64]:
    """(3,) tool tip in CT LPS mm."""
    return apply(np.asarray(ct_from_tool, dtype=np.float64), tool.tip_in_tool())


def tip_to_bone_mm(p_ct_mm: ArrayLike, surface: BoneSurface) -> float:
    """Signed distance (mm) from a tool tip to the bone surface: negative inside the bone."""
    return surface.signed_distance_mm(p_ct_mm)


def on_target(value: float, tolerance: float) -> bool:
    """True when ``|value| <= tolerance`` (NaN is never on target)."""
    return bool(abs(value) <= tolerance)
