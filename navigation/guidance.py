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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyvista as pv
import vtk
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from orthonav.core.errors import InputError
from orthonav.core.transforms import apply
from orthonav.core.vectors import unit
from orthonav.tracking.tools import ToolDefinition

from .vec3 import Rows, Vec3, dot, rotate, rows, transform, vec3

#: Rays across the blade's width used for the remaining depth.
DEPTH_RAYS = 5

#: Patient anterior in LPS (a patient frame, so this holds for every CT).
ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])


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
    return ToolGeometry(vec3(tool.tip_in_tool()), vec3(tool.axis_in_tool()), vec3(tool.normal_in_tool()), offsets)


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
        return (vec3(self.point_mm), vec3(self.normal), vec3(self.anterior), vec3(self.medial))


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
    n = unit(np.reshape(normal, 3), "cut normal")
    a = np.asarray(anterior_hint, dtype=np.float64) - np.dot(anterior_hint, n) * n
    anterior = unit(np.reshape(a, 3), "anterior direction in the cut plane (is the cut plane coronal?)")
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

#: Directions of the rays of :meth:`BoneSurface.contains`: unit, with irrational components (no
#: zero, none along a coordinate plane or diagonal), so that a mesh laid out on an axis-aligned
#: grid (voxel surfaces, printed blocks) does not run them along its edges.
INSIDE_RAYS: tuple[Vec3, ...] = tuple(
    vec3(np.asarray(d, dtype=np.float64) / np.linalg.norm(d))
    for d in ((1.0, math.sqrt(2.0), math.sqrt(3.0)), (-math.sqrt(5.0), 1.0, math.sqrt(0.7)), (math.sqrt(0.3), -math.sqrt(6.0), -1.0))
)


#: Sentinel vertices this far (mm) beyond a bone's bounding box keep VTK's nearest-vertex k-d
#: tree exact up to there (see :class:`BoneSurface`): 10 km, beyond any tracked position.
_KD_SPACE_MM = 1e7


class BoneSurface:
    """A closed bone surface (CT LPS mm) with the locators guidance needs; build once per bone.

    Parameters
    ----------
    mesh
        Triangulated closed surface in CT LPS mm (watertight, no self-intersections; any
        winding: it is made consistent and outward here).
    name
        Bone name (for messages).
    exact_band_mm
        :meth:`signed_distance_mm` is exact within this distance of the surface (see there).

    Attributes
    ----------
    mesh
        The triangulated surface with outward "Normals" (point and cell data).
    far_error_mm
        Largest over-estimate of :meth:`signed_distance_mm` beyond ``exact_band_mm``: the
        longest edge / sqrt(3), the farthest a point of a triangle lies from its nearest vertex.
        The sign is exact everywhere (see :meth:`contains`).
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
        self._vertices = np.asarray(tri.points, dtype=np.float64)
        self._vertex_tree = cKDTree(self._vertices)  # exact nearest vertex anywhere (~15-100 us per query)
        self._cell_normals = np.asarray(tri.cell_data["Normals"], dtype=np.float64)
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
        # Nearest vertex: VTK's k-d tree, ~2-30 us wherever the point is on a 200k-face bone (the exact
        # closest-point search takes milliseconds deep inside or far outside). It is exact only
        # inside the space it divides (VTK 9.7's vtkKdTree returns a vertex tens of mm too far
        # for points outside its data's bounds), so eight sentinel points at the corners of the
        # box padded by ``_KD_SPACE_MM`` stretch that space over any plausible position; beyond
        # it, or if a sentinel comes out nearest, scipy's (slower) tree answers.
        m = _KD_SPACE_MM
        self._kd_lo = (self._lo[0] - m, self._lo[1] - m, self._lo[2] - m)
        self._kd_hi = (self._hi[0] + m, self._hi[1] + m, self._hi[2] + m)
        corners = [(x, y, z) for x in (self._kd_lo[0], self._kd_hi[0]) for y in (self._kd_lo[1], self._kd_hi[1])
                   for z in (self._kd_lo[2], self._kd_hi[2])]
        self._vertex_locator = vtk.vtkKdTreePointLocator()
        self._vertex_locator.SetDataSet(pv.PolyData(np.vstack([self._vertices, corners])))
        self._vertex_locator.BuildLocator()
        self._n_vertices = len(self._vertices)
        # Two crossings closer than this along a ray (mm) are one crossing through a shared edge or vertex.
        self._same_crossing_mm = 1e-9 * max(1.0, math.dist(self._lo, self._hi))
        # Output slots of the ray casts (reused: one BoneSurface serves one thread).
        self._t = vtk.reference(0.0)
        self._x = [0.0, 0.0, 0.0]
        self._pcoords = [0.0, 0.0, 0.0]
        self._sub_id = vtk.reference(0)
        self._hit_points = vtk.vtkPoints()
        self._hit_cells = vtk.vtkIdList()

    def signed_distance_mm(self, p_ct_mm: ArrayLike) -> float:
        """Signed distance (mm) of a point from the surface: negative inside the bone.

        * Nearest vertex within ``exact_band_mm``: exact (closest point on the triangles,
          vtkImplicitPolyDataDistance, signed by the normal at that closest point: the face
          normal, or the interpolated vertex normals on an edge or a vertex; checked against
          winding numbers on a real patella, concave and sharp-edged surfaces in
          ``tests/test_signed_distance.py``).
        * Farther away: the distance to the nearest vertex (an over-estimate by at most
          ``far_error_mm``), with the sign of :meth:`contains` (exact for a closed surface,
          whatever its shape: outside the bounding box it is outside; inside the box, rays).

        This bounds the cost (tens of microseconds, where the exact closest-point search takes
        up to milliseconds deep inside or far outside a bone) and, far from the bone, a fraction
        of a millimetre does not matter to the user; the sign is right everywhere. A non-finite
        point gives NaN (never a made-up distance).
        """
        p = np.asarray(p_ct_mm, dtype=np.float64).reshape(3).tolist()
        if not (math.isfinite(p[0]) and math.isfinite(p[1]) and math.isfinite(p[2])):
            return math.nan
        d_vertex = self._nearest_vertex_mm(p)
        if d_vertex <= self.exact_band_mm:  # |exact| <= d_vertex: the exact search stays local
            return float(self._implicit.EvaluateFunction(p))
        return -d_vertex if self._contains(p) else d_vertex

    def _nearest_vertex_mm(self, p: list[float]) -> float:
        """Distance (mm) from ``p`` to the nearest vertex, computed as VTK computes distances (so
        that it equals the exact distance bit for bit where the closest point is that vertex)."""
        lo, hi = self._kd_lo, self._kd_hi
        i = -1
        if lo[0] < p[0] < hi[0] and lo[1] < p[1] < hi[1] and lo[2] < p[2] < hi[2]:
            i = self._vertex_locator.FindClosestPoint(p)
        if not 0 <= i < self._n_vertices:
            i = int(self._vertex_tree.query(p)[1])
        vx, vy, vz = self._vertices[i].tolist()
        dx, dy, dz = p[0] - vx, p[1] - vy, p[2] - vz
        d = math.sqrt(dx * dx + dy * dy + dz * dz)
        return d if d < math.inf else math.hypot(dx, dy, dz)  # hypot: no overflow for huge coordinates

    def box_distance(self, p: Vec3) -> float:
        """Distance (mm) from a point (float triple, CT LPS) to the surface's bounding box padded by
        1 mm; 0 inside it. A lower bound of ``abs(signed_distance_mm(p))`` for a point outside."""
        lo, hi = self._lo, self._hi
        dx = lo[0] - p[0] if p[0] < lo[0] else p[0] - hi[0] if p[0] > hi[0] else 0.0
        dy = lo[1] - p[1] if p[1] < lo[1] else p[1] - hi[1] if p[1] > hi[1] else 0.0
        dz = lo[2] - p[2] if p[2] < lo[2] else p[2] - hi[2] if p[2] > hi[2] else 0.0
        return math.hypot(dx, dy, dz)

    def contains(self, p_ct_mm: ArrayLike) -> bool:
        """True when the point lies inside the closed surface (CT LPS mm); False for a non-finite point.

        Outside the (1 mm padded) bounding box: False. Inside it: a majority vote of up to three
        rays (``INSIDE_RAYS``) from the point out of the box, each counting the oriented
        crossings of the surface along it (exits minus entries: 1 inside, 0 outside; several
        hits at one place, a ray through an edge or a vertex, count once, or not at all when
        they cancel, a ray grazing the surface). About 2-5 us per ray on a 200k-face bone.
        """
        p = np.asarray(p_ct_mm, dtype=np.float64).reshape(3).tolist()
        if not (math.isfinite(p[0]) and math.isfinite(p[1]) and math.isfinite(p[2])):
            return False
        return self._contains(p)

    def _contains(self, p: list[float]) -> bool:
        lo, hi = self._lo, self._hi
        if not (lo[0] < p[0] < hi[0] and lo[1] < p[1] < hi[1] and lo[2] < p[2] < hi[2]):
            return False
        a = self._ray_winding(p, INSIDE_RAYS[0])
        b = self._ray_winding(p, INSIDE_RAYS[1])
        if a == b:
            return a
        return self._ray_winding(p, INSIDE_RAYS[2])

    def _ray_winding(self, p: list[float], d: Vec3) -> bool:
        """True when the ray ``p + s d`` (s >= 0) leaves the surface once more than it enters it."""
        lo, hi = self._lo, self._hi
        s = min((hi[k] - p[k]) / d[k] if d[k] > 0.0 else (lo[k] - p[k]) / d[k] for k in range(3)) + 1.0  # out of the box
        q = [p[0] + s * d[0], p[1] + s * d[1], p[2] + s * d[2]]
        self._cells.IntersectWithLine(p, q, 0.0, self._hit_points, self._hit_cells)
        n = self._hit_cells.GetNumberOfIds()
        if n == 0:
            return False
        normals = self._cell_normals
        hits = []
        for k in range(n):
            x = self._hit_points.GetPoint(k)
            c = normals[self._hit_cells.GetId(k)]
            along = (x[0] - p[0]) * d[0] + (x[1] - p[1]) * d[1] + (x[2] - p[2]) * d[2]
            facing = c[0] * d[0] + c[1] * d[1] + c[2] * d[2]
            hits.append((along, 1 if facing > 0.0 else -1 if facing < 0.0 else 0))
        hits.sort()
        winding, group_at, group = 0, hits[0][0], 0
        for along, sign in hits:
            if along - group_at > self._same_crossing_mm:  # a new crossing: close the previous one
                winding += max(-1, min(1, group))
                group_at, group = along, 0
            group += sign
        winding += max(-1, min(1, group))
        return winding > 0

    def far_crossing_mm(self, origin_mm: ArrayLike, direction: ArrayLike, *, max_length_mm: float = 300.0) -> float:
        """Distance along unit ``direction`` from ``origin`` to the farthest surface crossing within
        ``max_length_mm`` (0 if none)."""
        return self.far_crossing(vec3(origin_mm), vec3(direction), max_length_mm)

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
    return saw_guidance_rows(rows(ct_from_saw), tool_geometry(saw), frame, surface)


def saw_guidance_rows(ct_from_saw: Rows, saw: ToolGeometry, frame: CutFrame, surface: BoneSurface | None = None) -> SawGuidance:
    """:func:`saw_guidance` for the live loop: the pose as nested lists, the tool's constants precomputed."""
    p, n, ant, med = frame.floats
    edge = transform(ct_from_saw, saw.tip)
    m = rotate(ct_from_saw, saw.normal)
    mn = dot(m, n)
    if mn < 0:
        m, mn = (-m[0], -m[1], -m[2]), -mn
    flexion = math.degrees(math.atan2(-dot(m, ant), mn))
    varus = math.degrees(math.atan2(dot(m, med), mn))
    angle = math.degrees(math.acos(min(1.0, mn)))
    distance = (edge[0] - p[0]) * n[0] + (edge[1] - p[1]) * n[1] + (edge[2] - p[2]) * n[2]
    depth = math.nan if surface is None else remaining_depth_rows(ct_from_saw, saw, surface)
    return SawGuidance(flexion, varus, angle, distance, depth, np.array(edge))


def remaining_depth_mm(ct_from_saw: ArrayLike, saw: ToolDefinition, surface: BoneSurface) -> float:
    """Distance (mm) from the blade's cutting edge to the far cortex along the cutting direction:
    the maximum over ``DEPTH_RAYS`` rays across the blade's width (see the module docstring)."""
    return remaining_depth_rows(rows(ct_from_saw), tool_geometry(saw), surface)


def remaining_depth_rows(ct_from_saw: Rows, saw: ToolGeometry, surface: BoneSurface) -> float:
    """:func:`remaining_depth_mm` for the live loop (pose as nested lists, tool constants precomputed)."""
    e = transform(ct_from_saw, saw.tip)
    c = rotate(ct_from_saw, saw.axis)  # cutting direction
    m = rotate(ct_from_saw, saw.normal)
    across = (m[1] * c[2] - m[2] * c[1], m[2] * c[0] - m[0] * c[2], m[0] * c[1] - m[1] * c[0])  # m x c, in the blade plane
    return max(surface.far_crossing((e[0] + o * across[0], e[1] + o * across[1], e[2] + o * across[2]), c)
               for o in saw.ray_offsets_mm)


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
    d = unit(np.reshape(target - entry, 3), "planned trajectory (entry equals target)")
    return drill_guidance_rows(rows(ct_from_drill), tool_geometry(drill), vec3(entry), vec3(target), vec3(d))


def drill_guidance_rows(ct_from_drill: Rows, drill: ToolGeometry, entry: Vec3, target: Vec3, direction: Vec3) -> DrillGuidance:
    """:func:`drill_guidance` for the live loop: pose as nested lists, tool constants and the unit
    planned ``direction`` (entry -> target) precomputed."""
    d = direction
    tip = transform(ct_from_drill, drill.tip)
    axis = rotate(ct_from_drill, drill.axis)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, dot(axis, d)))))
    rel = (tip[0] - entry[0], tip[1] - entry[1], tip[2] - entry[2])
    along = dot(rel, d)
    offset = math.hypot(rel[0] - along * d[0], rel[1] - along * d[1], rel[2] - along * d[2])
    depth = (target[0] - tip[0]) * d[0] + (target[1] - tip[1]) * d[1] + (target[2] - tip[2]) * d[2]
    return DrillGuidance(angle, offset, depth, np.array(tip))


def tool_tip_ct(ct_from_tool: ArrayLike, tool: ToolDefinition) -> NDArray[np.float64]:
    """(3,) tool tip in CT LPS mm."""
    return apply(np.asarray(ct_from_tool, dtype=np.float64), tool.tip_in_tool())


def tip_to_bone_mm(p_ct_mm: ArrayLike, surface: BoneSurface) -> float:
    """Signed distance (mm) from a tool tip to the bone surface: negative inside the bone."""
    return surface.signed_distance_mm(p_ct_mm)


def nearest_surface(p_ct_mm: ArrayLike, surfaces: Sequence[tuple[str, BoneSurface]]) -> tuple[float, str]:
    """(signed distance (mm), bone name) of the surface nearest to a point (CT LPS mm).

    The same answer as evaluating :meth:`BoneSurface.signed_distance_mm` for every surface and
    keeping the smallest magnitude (the first on a tie), but surfaces whose bounding box is
    farther than the best distance so far are skipped. ``(nan, "")`` without surfaces or for a
    non-finite point.
    """
    p = vec3(p_ct_mm)
    if not surfaces or not (math.isfinite(p[0]) and math.isfinite(p[1]) and math.isfinite(p[2])):
        return math.nan, ""
    lower = [s.box_distance(p) for _name, s in surfaces]
    best, best_k = math.nan, -1
    for k in sorted(range(len(surfaces)), key=lower.__getitem__):
        if best_k >= 0 and lower[k] > abs(best):
            break  # this box, and every later one, is farther than the best distance
        d = surfaces[k][1].signed_distance_mm(p)
        if best_k < 0 or abs(d) < abs(best) or (abs(d) == abs(best) and k < best_k):
            best, best_k = d, k
    return best, surfaces[best_k][0]


def on_target(value: float, tolerance: float) -> bool:
    """True when ``|value| <= tolerance`` (NaN is never on target)."""
    return bool(abs(value) <= tolerance)
