"""Medial and lateral knee gaps at the current knee pose (mm), cheap enough for every frame.

A compartment's gap is the signed distance, along the planned tibial cut's normal (pointing
proximally, out of the kept tibia), from the planned tibial cut plane to the femoral surface
point of that compartment nearest to it:

    gap = min over femoral points q of the compartment of (q - p_tibia) . n_tibia

with ``q`` moved into the tibia's frame by the knee pose. Positive: the femur is clear of the
cut plane by that much (the space an insert, or a spacer block, fills); negative: the femoral
surface reaches below the plane. In extension the nearest point lies on the distal femoral
surface, in flexion on the posterior one, so one rule gives the extension and the flexion gaps,
with or without varus/valgus stress.

The femoral surface (:func:`gap_geometry`, ``surface``):

* ``"cuts"`` (default): the planned femoral cut surfaces: the faces that the plan's femoral
  cuts (distal, anterior, posterior and the two chamfers) leave on the bone, i.e. the cut
  faces of the femur mesh intersected with the kept half-spaces of every femoral cut, within
  :data:`KNEE_REGION_MM` of the knee. This is the resected (bone) gap of gap balancing.
* ``"implant"``: the outer surface of the planned femoral component (its condyles): the gap
  the tibial component and insert fill.

Compartments are split by the femoral sagittal plane through the femoral knee centre (the
midpoint of the epicondyles) perpendicular to the transepicondylar axis. The tibial plane is
taken as unbounded: the gap is to the femoral point nearest it, wherever that lies over the
tibia.

Precomputation (once per case): a linear function's minimum over a point set is reached at a
vertex of the set's convex hull, so each compartment keeps only its hull vertices (exact, no
approximation: a few hundred points for the cut faces, ~50 for an implant). Per frame
(:func:`knee_gaps`) the tibial plane is moved into the femur's frame (one 3x3 product) and
the gaps are two minima of one (k, 3) @ (3,) product: a few microseconds, no mesh query.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError
from orthonav.core.vectors import unit
from orthonav.planning.schema import Plan
from orthonav.planning.tka.alignment import limb_frames

from .vec3 import Vec3, rows, vec3

Vec = NDArray[np.float64]

#: The femoral surfaces a gap can be measured to (see the module docstring).
SURFACES = ("cuts", "implant")
#: A resected femur's vertex within this of a femoral cut plane lies on that cut face (mm;
#: manifold3d keeps float32 vertices: ~5e-5 mm at 1 m from the origin).
ON_PLANE_MM = 0.01
#: Only cut faces within this distance (mm) proximal of the femoral knee centre (along the
#: mechanical axis) are the knee's: a saw cuts the distal femur, while a planned plane extended
#: through the whole bone (the anterior cut) can leave faces at the head or trochanter that no
#: saw makes and that would otherwise reach the tibial plane in deep flexion. The simulator's
#: truth (phantoms/gap_truth.py) uses the same region.
KNEE_REGION_MM = 70.0


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class GapGeometry:
    """Precomputed gap geometry (CT LPS mm): femoral points of both compartments and the
    planned tibial cut plane.

    Attributes
    ----------
    points_ct_mm
        (k, 3) femoral candidate points (femur CT LPS mm): the medial compartment's first,
        then the lateral's (each the convex-hull vertices of its surface points).
    n_medial
        How many of ``points_ct_mm`` are medial.
    tibial_point_ct_mm
        (3,) a point of the planned tibial cut plane (tibia CT LPS mm).
    tibial_normal_ct
        (3,) its unit normal, pointing proximally (out of the kept tibia, into the joint).
    surface
        "cuts", "implant" or "points" (built by :meth:`from_points`).
    """

    points_ct_mm: Vec
    n_medial: int
    tibial_point_ct_mm: Vec
    tibial_normal_ct: Vec
    surface: str = "points"

    def __post_init__(self) -> None:
        if not 0 < self.n_medial < len(self.points_ct_mm):
            raise InputError(None, f"gap geometry: both compartments need points (n_medial {self.n_medial} of {len(self.points_ct_mm)})")
        # Per-frame constants (plain floats, navigation/vec3.py): the normal, n . p, the split.
        object.__setattr__(self, "normal", vec3(self.tibial_normal_ct))
        object.__setattr__(self, "plane_offset_mm", float(np.dot(self.tibial_normal_ct, self.tibial_point_ct_mm)))
        object.__setattr__(self, "split", np.array([0, self.n_medial], dtype=np.intp))

    normal: Vec3 = field(init=False, repr=False, compare=False)
    plane_offset_mm: float = field(init=False, repr=False, compare=False)
    split: NDArray[np.intp] = field(init=False, repr=False, compare=False)

    @property
    def medial_ct_mm(self) -> Vec:
        """(km, 3) the medial compartment's candidate points (femur CT LPS mm)."""
        return self.points_ct_mm[: self.n_medial]

    @property
    def lateral_ct_mm(self) -> Vec:
        """(kl, 3) the lateral compartment's candidate points (femur CT LPS mm)."""
        return self.points_ct_mm[self.n_medial:]

    @classmethod
    def from_points(cls, medial_ct_mm: ArrayLike, lateral_ct_mm: ArrayLike, tibial_point_ct_mm: ArrayLike,
                    tibial_normal_ct: ArrayLike, *, surface: str = "points") -> GapGeometry:
        """A geometry from any femoral surface points (femur CT LPS mm) of each compartment and
        a tibial plane (tibia CT LPS mm; normal pointing proximally). Keeps each compartment's
        convex-hull vertices (exact for the minimum distance to a plane).

        Raises
        ------
        InputError
            A compartment with no points, non-finite values or a zero normal.
        """
        med, lat = _points(medial_ct_mm, "medial"), _points(lateral_ct_mm, "lateral")
        p = np.asarray(tibial_point_ct_mm, dtype=np.float64).reshape(3)
        if not np.isfinite(p).all():
            raise InputError(None, "gap geometry: the tibial plane point is not finite")
        n = unit(np.asarray(tibial_normal_ct, dtype=np.float64).reshape(3), "tibial cut normal")
        med, lat = hull_vertices(med), hull_vertices(lat)
        return cls(np.ascontiguousarray(np.vstack([med, lat])), len(med), p, n, surface)


def _points(a: ArrayLike, what: str) -> Vec:
    p = np.asarray(a, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise InputError(None, f"gap geometry: the {what} compartment needs an (n, 3) array of points, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise InputError(None, f"gap geometry: the {what} compartment's points are not all finite")
    return p


def hull_vertices(points: Vec) -> Vec:
    """The vertices of the convex hull of (n, 3) points (all points when they are too few or
    flat for a 3D hull): the only candidates for the minimum of a linear function."""
    if len(points) < 5:
        return points
    from scipy.spatial import ConvexHull, QhullError

    try:
        return points[np.sort(ConvexHull(points).vertices)]
    except QhullError:  # coplanar / collinear: every point stays a candidate
        return points


@dataclass(frozen=True)
class KneeGaps:
    """Medial and lateral gaps at one knee pose (mm; see the module docstring).

    Attributes
    ----------
    medial_mm, lateral_mm
        Signed distance from the planned tibial cut plane to the nearest femoral point of the
        compartment, along the plane's normal (tibia frame); negative = overlap.
    """

    medial_mm: float
    lateral_mm: float

    def to_dict(self) -> dict[str, float]:
        """``{"medial_gap_mm": ..., "lateral_gap_mm": ...}`` for recording."""
        return {"medial_gap_mm": self.medial_mm, "lateral_gap_mm": self.lateral_mm}


def knee_gaps(femur_ct_from_tibia_ct: ArrayLike, geometry: GapGeometry) -> KneeGaps:
    """Medial and lateral gaps (mm) at a knee pose.

    Parameters
    ----------
    femur_ct_from_tibia_ct
        (4, 4) rigid pose: tibia CT LPS mm -> femur CT LPS mm (the issue-16 contract); the
        identity is the knee as imaged.
    geometry
        From :func:`gap_geometry` (once per case).

    Returns
    -------
    KneeGaps
        mm. The tibial plane is carried into the femur's frame (``n' = R n``, offset
        ``n . p + n' . t``), the same signed distances as moving the femoral points into the
        tibia's frame.
    """
    r0, r1, r2, _ = rows(femur_ct_from_tibia_ct)
    nx, ny, nz = geometry.normal
    n = (r0[0] * nx + r0[1] * ny + r0[2] * nz, r1[0] * nx + r1[1] * ny + r1[2] * nz, r2[0] * nx + r2[1] * ny + r2[2] * nz)
    offset = geometry.plane_offset_mm + n[0] * r0[3] + n[1] * r1[3] + n[2] * r2[3]
    d = np.minimum.reduceat(geometry.points_ct_mm @ n, geometry.split)
    medial, lateral = float(d[0]) - offset, float(d[1]) - offset
    if not (math.isfinite(medial) and math.isfinite(lateral)):
        raise InputError(None, "femur_ct_from_tibia_ct is not finite")
    return KneeGaps(medial, lateral)


def _femoral_split(plan: Plan) -> tuple[Vec, Vec, Vec]:
    """The femoral knee centre (mm), the femur's unit lateral direction (TEA made
    perpendicular to the mechanical axis) and its unit proximal direction (mechanical axis)."""
    lms = plan.landmarks
    if "medial_epicondyle" not in lms or "lateral_epicondyle" not in lms:
        raise InputError(None, "knee gaps need the plan's medial and lateral epicondyles (to tell the compartments apart)")
    fr = limb_frames(lms)
    me = np.asarray(lms["medial_epicondyle"].position_lps_mm, dtype=np.float64)
    le = np.asarray(lms["lateral_epicondyle"].position_lps_mm, dtype=np.float64)
    if fr.femur_lateral is None or fr.femur_proximal is None:
        raise InputError(None, "knee gaps need the plan's femoral axis (femoral head centre or planning axis reference)")
    return 0.5 * (me + le), fr.femur_lateral, fr.femur_proximal


def _tibial_cut(plan: Plan, tibia: str) -> tuple[Vec, Vec]:
    cuts = [c for c in plan.cuts.values() if c.bone == tibia]
    if not cuts:
        raise InputError(None, f"knee gaps need a planned tibial cut (a cut on bone {tibia!r}); the plan has {sorted(plan.cuts)}")
    cut = plan.cuts["proximal_tibia"] if "proximal_tibia" in plan.cuts and plan.cuts["proximal_tibia"].bone == tibia else cuts[0]
    return np.asarray(cut.point_lps_mm, dtype=np.float64), unit(np.asarray(cut.normal_lps, dtype=np.float64), "tibial cut normal")


def resected_cut_faces(femur_mesh: object, cuts: list[tuple[Vec, Vec]]) -> Vec:
    """Vertices (mm) of the cut faces the planes leave on a closed bone surface.

    ``cuts``: (point, normal) pairs, normal pointing into the removed part. The bone is
    intersected with every kept half-space (manifold3d, exact booleans); the vertices lying on
    a cut plane (within :data:`ON_PLANE_MM`) bound the cut faces.
    """
    from orthonav.planning.meshops import halfspace_keep, to_manifold

    solid = to_manifold(femur_mesh, name="femur mesh")  # type: ignore[arg-type]
    for point, normal in cuts:
        solid = halfspace_keep(solid, point, normal)
    if solid.is_empty():
        raise InputError(None, "the planned femoral cuts leave no bone")
    v = np.asarray(solid.to_mesh().vert_properties, dtype=np.float64)[:, :3]
    on = np.zeros(len(v), dtype=bool)
    for point, normal in cuts:
        on |= np.abs((v - point) @ unit(normal, "femoral cut normal")) < ON_PLANE_MM
    return v[on]


def gap_geometry(plan: Plan, meshes: Mapping[str, object] | None = None, *, surface: str = "cuts", femur: str = "femur",
                 tibia: str = "tibia", knee_region_mm: float = KNEE_REGION_MM) -> GapGeometry:
    """Precompute a case's :class:`GapGeometry` (once; CT LPS mm).

    Parameters
    ----------
    plan
        A knee plan with the epicondyles, the femoral cuts (``surface="cuts"``) or a femoral
        component (``surface="implant"``) and a tibial cut.
    meshes
        bone -> closed surface (:func:`orthonav.core.case.read_case_meshes`); the femur's is
        needed for ``surface="cuts"``.
    surface
        "cuts" (planned femoral cut faces, the default) or "implant" (the planned femoral
        component's outer surface); see the module docstring.
    femur, tibia
        The bones' names in the plan.
    knee_region_mm
        Femoral points farther than this proximal of the femoral knee centre (along the
        mechanical axis) are ignored (:data:`KNEE_REGION_MM`).

    Raises
    ------
    InputError
        Unknown surface, or what it needs missing from the plan / meshes, or an empty
        compartment.
    """
    if surface not in SURFACES:
        raise InputError(None, f"unknown gap surface {surface!r} (one of {', '.join(SURFACES)})")
    centre, lateral, proximal = _femoral_split(plan)
    p_t, n_t = _tibial_cut(plan, tibia)
    if surface == "cuts":
        cuts = [(np.asarray(c.point_lps_mm, dtype=np.float64), np.asarray(c.normal_lps, dtype=np.float64))
                for c in plan.cuts.values() if c.bone == femur]
        if not cuts:
            raise InputError(None, f"knee gaps to the cut surfaces need planned femoral cuts (bone {femur!r}); the plan has {sorted(plan.cuts)}")
        if meshes is None or femur not in meshes:
            raise InputError(None, f"knee gaps to the cut surfaces need the {femur} mesh (meshes has {sorted(meshes or {})})")
        pts = resected_cut_faces(meshes[femur], cuts)
    else:
        from orthonav.planning.implants import implant_model

        comp = next((i for i in plan.implants if i.family == "tka_femoral"), None)
        if comp is None:
            raise InputError(None, "knee gaps to the implant need a planned femoral component (tka_femoral)")
        v = np.asarray(implant_model(comp.family, comp.size).mesh().points, dtype=np.float64)
        m = np.asarray(comp.ct_from_implant, dtype=np.float64)
        pts = v @ m[:3, :3].T + m[:3, 3]
    pts = pts[(pts - centre) @ proximal <= knee_region_mm]
    side = (pts - centre) @ lateral
    med, lat = pts[side < 0], pts[side >= 0]
    if len(med) == 0 or len(lat) == 0:
        raise InputError(None, f"knee gaps: the femoral {surface} surface has no {'medial' if len(med) == 0 else 'lateral'} part")
    return GapGeometry.from_points(med, lat, p_t, n_t, surface=surface)


__all__ = ["KNEE_REGION_MM", "ON_PLANE_MM", "SURFACES", "GapGeometry", "KneeGaps", "gap_geometry", "hull_vertices", "knee_gaps", "resected_cut_faces"]
