"""Automatic THA implant sizing and placement, and the neck cut a stem pose implies.

Implant frames: :mod:`orthonav.planning.implants`. All positions LPS mm in the CT frame.

* cup: centre at the acetabulum centre moved ``medialise_mm`` medially; outer diameter the
  smallest library size >= socket diameter + ``ream_mm`` (the reamer removes ``ream_mm / 2``
  of bone at the dome); axis at the target inclination / anteversion relative to the APP;
* stem: axis parallel to the proximal shaft axis, its head centre at the native femoral head
  centre (leg length and offset restored), its neck plane turned towards the native head
  (native version kept); size = the library offset nearest the native femoral offset (the
  head-centre distance from the shaft axis); the stem body then sits that difference off the
  canal axis (reported);
* femoral neck cut: the plane perpendicular to the stem's neck axis ``neck_cut_mm`` below
  the head centre (default head radius + 10 mm), normal towards the head (removed part).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from orthonav.core.transforms import apply_vector, make_rigid
from orthonav.core.vectors import perpendicular, unit

from ..implants import CUP_SIZES, STEM_SIZES
from ..schema import Axis, CutPlane, ImplantPlacement

Vec = NDArray[np.float64]

DEFAULT_TARGET_INCLINATION_DEG = 40.0
DEFAULT_TARGET_ANTEVERSION_DEG = 15.0
DEFAULT_REAM_MM = 2.0


def choose_cup_size(socket_radius_mm: float, *, ream_mm: float = DEFAULT_REAM_MM) -> tuple[str, bool]:
    """The smallest library cup with outer diameter >= socket diameter + ``ream_mm``;
    (size, fits) where ``fits`` is False when even the largest is too small (largest given)."""
    need = 2.0 * socket_radius_mm + ream_mm
    ok = [s for s, d in CUP_SIZES.items() if d["outer_diameter_mm"] >= need - 1e-9]
    if ok:
        return min(ok, key=lambda s: CUP_SIZES[s]["outer_diameter_mm"]), True
    return max(CUP_SIZES, key=lambda s: CUP_SIZES[s]["outer_diameter_mm"]), False


def choose_stem_size(femoral_offset_mm: float) -> str:
    """The stem whose offset is nearest the native femoral offset (ties: the smaller)."""
    return min(STEM_SIZES, key=lambda s: (abs(STEM_SIZES[s]["offset_mm"] - femoral_offset_mm), STEM_SIZES[s]["offset_mm"]))


def cup_pose(centre_lps: Vec, axis_lps: Vec, app: tuple[Vec, Vec, Vec]) -> NDArray[np.float64]:
    """``ct_from_implant`` of a cup: origin at the centre of rotation, z = the cup axis (out
    of the opening), y = the APP superior direction made perpendicular, x = y x z."""
    z = unit(axis_lps, "cup axis")
    y = perpendicular(app[2], z)
    y = unit(y if np.linalg.norm(y) > 1e-6 else perpendicular(app[1], z), "cup y axis")
    return make_rigid(np.column_stack([np.cross(y, z), y, z]), centre_lps)


def stem_pose(head_centre_lps: Vec, shaft: Axis) -> NDArray[np.float64]:
    """``ct_from_implant`` of a stem: origin (the prosthetic head centre) at ``head_centre_lps``,
    z along the shaft axis (proximal), x from the shaft axis towards the head (the stem's
    neck plane contains the native head, so the native version is kept)."""
    o, z = np.asarray(shaft.origin_lps_mm), np.asarray(shaft.direction_lps)
    x = unit(perpendicular(head_centre_lps - o, z), "head offset from the shaft axis")
    return make_rigid(np.column_stack([x, np.cross(z, x), z]), head_centre_lps)


def stem_neck_direction_implant() -> Vec:
    """The stem's neck axis in its frame, from the head centre towards the shoulder (the
    library stems have a 135 deg neck-shaft angle: (-sin 45, 0, -cos 45))."""
    return np.array([-np.sin(np.radians(45.0)), 0.0, -np.cos(np.radians(45.0))])


def neck_cut_from_stem(stem: ImplantPlacement, side: str, depth_mm: float) -> CutPlane:
    """The femoral neck cut implied by a stem pose: perpendicular to the stem's neck axis,
    ``depth_mm`` below the prosthetic head centre along it; the normal points to the head
    (the removed part)."""
    m = np.asarray(stem.ct_from_implant)
    d = apply_vector(m, stem_neck_direction_implant())
    head = m[:3, 3]
    point = head + depth_mm * d
    return CutPlane(
        bone=f"femur_{side}", point_lps_mm=tuple(float(x) for x in point), normal_lps=tuple(float(x) for x in -d),
        resection_depth_mm=float(depth_mm), reference=f"femoral_head_centre_{side}", depths_mm={f"femoral_head_centre_{side}": float(depth_mm)},
    )


__all__ = [
    "DEFAULT_REAM_MM",
    "DEFAULT_TARGET_ANTEVERSION_DEG",
    "DEFAULT_TARGET_INCLINATION_DEG",
    "choose_cup_size",
    "choose_stem_size",
    "cup_pose",
    "neck_cut_from_stem",
    "stem_neck_direction_implant",
    "stem_pose",
]
