"""True medial and lateral knee gaps by brute force on the bone mesh and the planned cuts.

The simulator's truth for issue 16's gaps, computed independently of navigation's
:mod:`orthonav.navigation.gaps` (manifold3d booleans, convex-hull candidates): here the femur
mesh (truth, CT LPS mm) is clipped by EVERY planned femoral cut with VTK
(``vtkClipClosedSurface``: the resected femur, a closed surface whose caps are the cut faces),
and at each knee pose the gap of a compartment is the minimum, over ALL vertices of that
compartment's cut faces near the knee (:data:`KNEE_REGION_MM`), of the signed distance to the
planned tibial cut plane carried by the pose (mm, along the plane's normal, positive = open;
negative = the surfaces overlap): the gap between the femoral and tibial cut surfaces of
issue 16. The minimum of a distance to a plane over planar polygons is reached at a vertex, so
this is exact for the mesh.

Compartments: the medial one is the part of the cut faces on the medial side of the femoral
sagittal plane through the TRUE femoral knee centre (normal = the true femoral medio-lateral
axis, the transepicondylar axis made perpendicular to the mechanical axis), optionally only the
band ``band_mm`` = (inner, outer) mm from that plane; the lateral one likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError

Vec = NDArray[np.float64]

#: A resected-femur vertex within this distance (mm) of a femoral cut plane lies on its cut face.
ON_CUT_MM = 0.01
#: Only cut faces within this distance (mm) proximal of the knee centre count: a saw cuts the
#: distal femur; a planned plane extended through the whole femur (the anterior cut through the
#: femoral head and trochanter) leaves faces there that no saw makes.
KNEE_REGION_MM = 70.0


@dataclass(frozen=True)
class GapTruthGeometry:
    """What :func:`true_gaps` needs (all CT LPS mm).

    Attributes
    ----------
    medial_points_mm, lateral_points_mm
        (n, 3) vertices of the femoral cut faces in each compartment (femur CT).
    tibial_point_mm, tibial_normal
        The planned tibial cut (tibia CT): a point and the unit normal pointing into the
        removed bone (proximally), i.e. towards the femur.
    femoral_cuts
        Names of the planned femoral cuts applied.
    """

    medial_points_mm: Vec
    lateral_points_mm: Vec
    tibial_point_mm: Vec
    tibial_normal: Vec
    femoral_cuts: tuple[str, ...]


def gap_truth_geometry(femur_mesh: object, cuts: Mapping[str, object], *, knee_centre_mm: ArrayLike, femur_lateral: ArrayLike,
                       femur_proximal: ArrayLike, band_mm: tuple[float, float] | None = None,
                       tibial_cut: str = "proximal_tibia") -> GapTruthGeometry:
    """Resect the femur mesh by the planned femoral cuts and split it into compartments.

    Parameters
    ----------
    femur_mesh
        pyvista PolyData of the femur (CT LPS mm), closed.
    cuts
        The plan's cuts (name -> :class:`~orthonav.planning.schema.CutPlane`): every cut with
        ``bone == "femur"`` (a name starting with it) is applied, ``tibial_cut`` is the tibial one.
    knee_centre_mm, femur_lateral, femur_proximal
        The femoral knee centre, the unit medio-lateral axis (towards lateral) and the unit
        mechanical axis (towards the hip) (truth): cut faces farther than
        :data:`KNEE_REGION_MM` proximal of the knee centre are not the knee's.
    band_mm
        Optional (inner, outer) distance from the sagittal plane a compartment point must have.
    """
    import pyvista as pv

    c = np.asarray(knee_centre_mm, dtype=np.float64)
    lat = np.asarray(femur_lateral, dtype=np.float64)
    if tibial_cut not in cuts:
        raise InputError(None, f"the plan has no {tibial_cut!r} cut: no gap without the tibial cut")
    fem_cuts = sorted(k for k, v in cuts.items() if str(getattr(v, "bone", "")).startswith("femur"))
    if not fem_cuts:
        raise InputError(None, "the plan has no femoral cut: no gap without one")
    planes = [(np.asarray(getattr(cuts[k], "point_lps_mm"), dtype=np.float64), np.asarray(getattr(cuts[k], "normal_lps"), dtype=np.float64))
              for k in fem_cuts]
    mesh = pv.wrap(femur_mesh).triangulate()
    for point, normal in planes:  # clip_closed_surface keeps the side the normal points to: the kept bone
        mesh = mesh.clip_closed_surface(normal=tuple(-normal), origin=tuple(point))
    pts = np.asarray(mesh.points, dtype=np.float64)
    on = np.zeros(len(pts), dtype=bool)
    for point, normal in planes:
        on |= np.abs((pts - point) @ (normal / np.linalg.norm(normal))) < ON_CUT_MM
    pts = pts[on & ((pts - c) @ np.asarray(femur_proximal, dtype=np.float64) <= KNEE_REGION_MM)]
    if len(pts) == 0:
        raise InputError(None, "the planned femoral cuts leave no cut face on the femur")
    side = (pts - c) @ lat  # > 0 lateral
    lo, hi = band_mm if band_mm is not None else (0.0, np.inf)
    med = pts[(side < -lo) & (side >= -hi)]
    latp = pts[(side >= lo) & (side <= hi)]
    if len(med) == 0 or len(latp) == 0:
        raise InputError(None, "a femoral compartment is empty after the cuts")
    tc = cuts[tibial_cut]
    n_t = np.asarray(getattr(tc, "normal_lps"), dtype=np.float64)
    return GapTruthGeometry(med, latp, np.asarray(getattr(tc, "point_lps_mm"), dtype=np.float64), n_t / np.linalg.norm(n_t),
                            tuple(fem_cuts))


def true_gaps(geometry: GapTruthGeometry, femur_ct_from_tibia_ct: ArrayLike) -> tuple[float, float]:
    """(medial_mm, lateral_mm): the signed distance from the tibial cut plane (moved by the knee
    pose into the femur's CT) to the nearest cut-face vertex of each compartment."""
    k = np.asarray(femur_ct_from_tibia_ct, dtype=np.float64)
    n = k[:3, :3] @ geometry.tibial_normal
    p = k[:3, :3] @ geometry.tibial_point_mm + k[:3, 3]
    return float(np.min((geometry.medial_points_mm - p) @ n)), float(np.min((geometry.lateral_points_mm - p) @ n))


__all__ = ["KNEE_REGION_MM", "ON_CUT_MM", "GapTruthGeometry", "gap_truth_geometry", "true_gaps"]
