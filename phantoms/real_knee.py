"""A real knee with a femur: the VHF set's tibia, fibula and patella completed by the knee
phantom's femur, fitted to the set's distal-femoral cartilage.

The shared VHF knee (:data:`~orthonav.phantoms.real_shapes.SHAPE_SETS`, ``knee_vhf_left``) has
no femur bone, so its synthetic CTs show a tibia with no knee joint above it, which no knee CT
shows, and a naming that reads the joint rightly abstains there. The set does hold the cartilage
of the distal femur, whose inner face is the femoral condyles. :func:`knee_with_phantom_femur`
places the knee phantom's femur (full size, seed 0; mirrored to the set's side) on it:

1. rotation about the superior axis (-40..40 deg in 10 deg steps) and isotropic scale
   (0.85-1.05) searched, each with a translation (started with the lowest points level and
   the centroids of the same height band over each other) fitted by iterated medians of the cartilage's
   points' offsets to their nearest points of the femur's distal 60 mm (to 1 um, 60 steps at most) (a robust ICP, translation only:
   the phantom's long axis stays superior, as a knee CT's femur is);
2. the best fit by the median cartilage-to-femur distance;
3. the femur then lifted along the superior axis until no tibia point is within
   ``joint_space_mm`` of it (a knee joint's two cartilage layers, ~4 mm; the fit alone puts the
   phantom's condyles, which are not the VHF's, into the plateau).

The result is a composite: real tibia, fibula and patella shapes in a realistic knee context,
with a phantom femur. Its fit figures (the median and 90th percentile of the cartilage's
distance to the femur, the lift) are returned, so a user can judge the composite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from orthonav.core.errors import InputError
from orthonav.core.transforms import rotation_about_axis

from .real_shapes import SHAPE_SETS, ShapeSet

#: The VHF set's distal-femoral cartilage surface (file name in the set's folder).
FEMORAL_CARTILAGE = "VHF_Left_Cartilage_FemurDistal_smooth.stl"
#: mm: the smallest gap left between the fitted femur and the tibia (two cartilage layers).
JOINT_SPACE_MM = 4.0


@dataclass(frozen=True)
class FemurFit:
    """How the phantom femur sits on the cartilage (mm; ``rotation_deg`` about LPS +z)."""

    rotation_deg: float
    scale: float
    cartilage_median_mm: float
    cartilage_p90_mm: float
    lift_mm: float
    joint_space_mm: float


def read_femoral_cartilage(folder: str | Path) -> pv.PolyData:
    """The set's distal-femoral cartilage surface in LPS mm (the ``knee_vhf_left`` frame)."""
    path = Path(folder) / FEMORAL_CARTILAGE
    if not path.is_file():
        raise InputError(path, "missing: the femur is fitted to the distal-femoral cartilage")
    try:
        mesh = pv.read(path).triangulate().clean()
    except Exception as exc:  # pyvista/VTK raise several types on a corrupt file
        raise InputError(path, f"cannot read the surface: {exc}") from exc
    if mesh.n_points < 100:
        raise InputError(path, f"holds {mesh.n_points} points: too few to fit a femur to")
    mesh.points = np.asarray(mesh.points, np.float64) @ np.asarray(SHAPE_SETS["knee_vhf_left"].lps_from_file).T
    return mesh


def _fit_translation(tree: cKDTree, moving: NDArray[np.float64], fixed: NDArray[np.float64], t: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
    """Translation ``t`` (mm) of ``moving`` (indexed by ``tree``) onto ``fixed`` by iterated
    medians of the nearest-point offsets (to 1 um, 60 steps at most); and the median distance."""
    for _ in range(60):
        _d, i = tree.query(fixed - t)
        step = np.median(fixed - (moving[i] + t), axis=0)
        t = t + step
        if float(np.linalg.norm(step)) < 1e-3:
            break
    d, _ = tree.query(fixed - t)
    return t, float(np.median(d))


def fit_femur(femur: pv.PolyData, cartilage_lps: NDArray[np.float64], tibia_lps: NDArray[np.float64], *,
              joint_space_mm: float = JOINT_SPACE_MM) -> tuple[pv.PolyData, FemurFit]:
    """``femur`` (LPS mm, distal end at its lowest z) placed on the cartilage points and kept
    ``joint_space_mm`` clear of the tibia's points (see the module docstring)."""
    p0 = np.asarray(femur.points, np.float64)
    distal = p0[:, 2] < p0[:, 2].min() + 60.0
    centre = p0[distal].mean(axis=0)
    few = cartilage_lps[:: max(1, len(cartilage_lps) // 2000)]  # the search on ~2,000 points, the best refined on all
    best = None
    for rz in range(-40, 41, 10):
        rot = rotation_about_axis([0.0, 0.0, 1.0], np.radians(rz))
        for scale in (0.85, 0.9, 0.95, 1.0, 1.05):
            p = (p0 - centre) @ rot.T * scale
            tree = cKDTree(p[distal])
            # start with the lowest points level and the same height band's centroids over each other
            zmin = p[:, 2].min()
            band = p[p[:, 2] <= zmin + np.ptp(cartilage_lps[:, 2])]
            t = np.append(cartilage_lps[:, :2].mean(axis=0) - band[:, :2].mean(axis=0), cartilage_lps[:, 2].min() - zmin)
            t, score = _fit_translation(tree, p[distal], few, t)
            if best is None or score < best[0]:
                best = (score, rz, scale, p, tree, t)
    assert best is not None
    _score, rz, scale, p, tree, t = best
    distal_best = p[distal]
    t, _score = _fit_translation(tree, distal_best, cartilage_lps, t)
    placed = p + t
    tibia_tree = cKDTree(tibia_lps)
    lift = 0.0
    while float(tibia_tree.query(placed[distal] + [0.0, 0.0, lift])[0].min()) < joint_space_mm:  # only its distal end is near
        lift += 0.5
        if lift > 40.0:
            raise InputError(None, "the fitted femur cannot be lifted clear of the tibia within 40 mm: not a knee")
    placed = placed + [0.0, 0.0, lift]
    d, _ = cKDTree(placed).query(cartilage_lps)
    out = femur.copy()
    out.points = placed
    gap = float(tibia_tree.query(placed[distal])[0].min())
    return out, FemurFit(float(rz), float(scale), float(np.median(d)), float(np.percentile(d, 90)), lift, gap)


def knee_with_phantom_femur(shapes: ShapeSet, folder: str | Path) -> tuple[ShapeSet, FemurFit]:
    """``shapes`` (the ``knee_vhf_left`` set, read from ``folder``) with the knee phantom's
    femur fitted to its cartilage, as the set ``<name>+phantom_femur``."""
    from .knee import make_knee_phantom

    if shapes.kind != "knee" or "tibia" not in shapes.meshes or "femur" in shapes.meshes:
        raise InputError(Path(folder), f"set {shapes.name!r}: a femur is fitted only to a knee set with a tibia and no femur")
    femur = make_knee_phantom(seed=0, small=False).truth_meshes["femur"].copy()  # a right femur
    if shapes.side == "left":
        femur.points = np.asarray(femur.points) * [-1.0, 1.0, 1.0]
        femur.flip_faces(inplace=True)  # a mirror turns the faces inside out
    cartilage = read_femoral_cartilage(folder)
    fitted, fit = fit_femur(femur, np.asarray(cartilage.points, np.float64), np.asarray(shapes.meshes["tibia"].points, np.float64))
    meshes = {**shapes.meshes, "femur": fitted}
    return ShapeSet(f"{shapes.name}+phantom_femur", shapes.kind, shapes.side, meshes, dict(shapes.files)), fit


__all__ = ["FEMORAL_CARTILAGE", "JOINT_SPACE_MM", "FemurFit", "fit_femur", "knee_with_phantom_femur", "read_femoral_cartilage"]
