"""Name separated bone regions from their shape and position (LPS: +x left, +y posterior, +z superior).

Names follow TotalSegmentator's class names (``femur``, ``tibia``, ``fibula``, ``patella``,
``hip``, ``sacrum``, ``humerus``, ``vertebrae``, ``rib``, ``sternum``, ``scapula``, ``clavicula``),
with ``_left`` / ``_right`` where a paired bone is named by side. Regions that no rule
recognises are kept as ``bone_<n>`` so nothing dense is silently dropped.

Vertebrae and ribs cannot be numbered from a short field of view, so they get ordinal
letters from superior to inferior (``vertebrae_a``, ``rib_left_b``): these are NOT the
anatomical numbers (T12, rib 11), which would need the whole spine in view.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: A region is "long" (a long bone or a rib segment) when its principal extent is this many
#: times its second extent.
ELONGATED = 2.5


@dataclass(frozen=True)
class RegionInfo:
    """Shape summary of one bone region (LPS mm).

    Attributes
    ----------
    index
        Caller's index of the region.
    centroid_lps
        (3,) centroid in LPS mm.
    axis_lps
        (3,) unit principal axis (largest variance), pointing superiorly (+z) where defined.
    extents_mm
        (3,) full extents along the three principal axes, largest first.
    z_range_mm
        (2,) min and max LPS z (inferior, superior).
    volume_mm3
        Volume in mm^3.
    """

    index: int
    centroid_lps: NDArray[np.float64]
    axis_lps: NDArray[np.float64]
    extents_mm: NDArray[np.float64]
    z_range_mm: NDArray[np.float64]
    x_range_mm: NDArray[np.float64]
    volume_mm3: float

    @classmethod
    def from_points(cls, index: int, points_lps: NDArray[np.float64], *, volume_mm3: float) -> RegionInfo:
        """Summarise an (n, 3) LPS point sample of the region's voxels."""
        c = points_lps.mean(axis=0)
        q = points_lps - c
        _u, _s, vt = np.linalg.svd(q[:: max(1, len(q) // 5000)], full_matrices=False)
        proj = q @ vt.T
        extents = proj.max(axis=0) - proj.min(axis=0)
        axis = vt[0] if vt[0][2] >= 0 else -vt[0]
        return cls(
            index=index,
            centroid_lps=c,
            axis_lps=axis,
            extents_mm=extents,
            z_range_mm=np.array([points_lps[:, 2].min(), points_lps[:, 2].max()]),
            x_range_mm=np.array([points_lps[:, 0].min(), points_lps[:, 0].max()]),
            volume_mm3=volume_mm3,
        )

    @property
    def length_mm(self) -> float:
        return float(self.extents_mm[0])

    @property
    def elongation(self) -> float:
        return float(self.extents_mm[0] / max(self.extents_mm[1], 1e-6))

    @property
    def is_long(self) -> bool:
        return self.elongation >= ELONGATED


def _z_overlap(a: RegionInfo, b: RegionInfo) -> float:
    """Overlap of the z ranges as a fraction of the shorter one."""
    lo = max(a.z_range_mm[0], b.z_range_mm[0])
    hi = min(a.z_range_mm[1], b.z_range_mm[1])
    shorter = min(np.ptp(a.z_range_mm), np.ptp(b.z_range_mm))
    return max(0.0, hi - lo) / max(shorter, 1e-6)


def _is_long_vertical(r: RegionInfo) -> bool:
    return r.is_long and abs(r.axis_lps[2]) > 0.7


def detect_anatomy(regions: list[RegionInfo]) -> str:
    """``"knee"``, ``"hip"`` or ``"general"`` from the largest regions' layout."""
    big = sorted(regions, key=lambda r: -r.volume_mm3)[:6]
    # Long bones of a limb: at least 10 mL and 50 mm long (a rib or vertebra piece is neither).
    longs = [r for r in big if _is_long_vertical(r) and r.volume_mm3 >= 10_000.0 and r.length_mm >= 50.0]
    for a in longs:
        for b in longs:
            if a is not b and a.centroid_lps[2] > b.centroid_lps[2] and _z_overlap(a, b) < 0.2:
                if abs(a.centroid_lps[0] - b.centroid_lps[0]) < 0.5 * (a.length_mm + b.length_mm) / 2:
                    return "knee"
    if _hip_pairs(regions):
        return "hip"
    return "general"


#: A proximal femur in a pelvis field of view: a near-vertical region at least this elongated
#: (head, neck and a stump of shaft are less elongated than a whole long bone) and this large.
FEMUR_MIN_ELONGATION = 1.8
FEMUR_MIN_VOLUME_MM3 = 20_000.0
#: A hip bone (os coxae) is at least this large and at least this fraction of its femur's volume.
HIP_MIN_VOLUME_MM3 = 60_000.0
HIP_MIN_FEMUR_RATIO = 0.5


def _is_femur_like(r: RegionInfo) -> bool:
    return abs(r.axis_lps[2]) > 0.7 and r.elongation >= FEMUR_MIN_ELONGATION and r.volume_mm3 >= FEMUR_MIN_VOLUME_MM3


def _hip_pairs(regions: list[RegionInfo]) -> list[tuple[RegionInfo, RegionInfo]]:
    """(hip bone, femur) pairs of a pelvis field of view, at most two, largest femurs first.

    A femur is a near-vertical elongated region (:func:`_is_femur_like`); its hip bone is the
    largest other region, not more elongated than it, at least :data:`HIP_MIN_FEMUR_RATIO` of its
    volume, whose centroid is superior to the femur's, whose z range contains the femur's top
    (the femoral head sits in the acetabulum) and whose x range contains the femur's centroid
    x (the same side). A knee (femur above a long tibia) has no such partner: the tibia is below.
    """
    femurs = sorted([r for r in regions if _is_femur_like(r)], key=lambda r: -r.volume_mm3)
    pairs: list[tuple[RegionInfo, RegionInfo]] = []
    used: set[int] = set()
    for f in femurs:
        if f.index in used:
            continue
        cands = [
            h
            for h in regions
            if h.index != f.index
            and h.index not in used
            and h.volume_mm3 >= max(HIP_MIN_VOLUME_MM3, HIP_MIN_FEMUR_RATIO * f.volume_mm3)
            and h.elongation <= f.elongation
            and h.centroid_lps[2] > f.centroid_lps[2]
            and h.z_range_mm[0] < f.z_range_mm[1] < h.z_range_mm[1]
            and h.x_range_mm[0] < f.centroid_lps[0] < h.x_range_mm[1]
        ]
        if not cands:
            continue
        h = max(cands, key=lambda r: r.volume_mm3)
        pairs.append((h, f))
        used |= {h.index, f.index}
        if len(pairs) == 2:
            break
    return pairs


def _name_hip(regions: list[RegionInfo], body_centre_lps: NDArray[np.float64] | None) -> tuple[dict[int, str], str | None]:
    """Name a pelvis field of view: ``hip_<side>``, ``femur_<side>``, ``sacrum``, ``vertebrae_<letter>``.

    Sides (LPS +x = patient left): with both hips, from the midline between them; with one, from
    anatomy: the femur (trochanters, shaft) lies lateral to its hip bone's centroid. The sacrum is
    the largest remaining region between the hip bones (or, with one hip, medial of it, within
    60 mm of the midline) posterior of the acetabula; smaller midline regions above it are
    vertebrae, lettered superior to inferior. Returns names and the side of a single hip (or None).
    """
    pairs = _hip_pairs(regions)
    names: dict[int, str] = {}
    if not pairs:
        return names, None
    if len(pairs) == 2:
        mid_x = 0.5 * (pairs[0][1].centroid_lps[0] + pairs[1][1].centroid_lps[0])
        sides = ["left" if f.centroid_lps[0] > mid_x else "right" for _h, f in pairs]
        if sides[0] == sides[1]:  # both on one side of their own midpoint: cannot happen, be safe
            pairs = pairs[:1]
    if len(pairs) == 1:
        h, f = pairs[0]
        sides = ["left" if f.centroid_lps[0] > h.centroid_lps[0] else "right"]
        mid_x = float(body_centre_lps[0]) if body_centre_lps is not None else float(h.centroid_lps[0] - (60.0 if sides[0] == "left" else -60.0))
    for (h, f), side in zip(pairs, sides):
        names[h.index], names[f.index] = f"hip_{side}", f"femur_{side}"
    hips = [h for h, _f in pairs]
    lo_x = min(min(h.centroid_lps[0] for h in hips), mid_x)
    hi_x = max(max(h.centroid_lps[0] for h in hips), mid_x)
    hip_y = float(np.mean([h.centroid_lps[1] for h in hips]))
    rest = sorted([r for r in regions if r.index not in names], key=lambda r: -r.volume_mm3)
    sac = [r for r in rest if lo_x < r.centroid_lps[0] < hi_x and abs(r.centroid_lps[0] - mid_x) < 60.0 and r.centroid_lps[1] > hip_y - 10.0]
    if sac:
        sacrum = sac[0]
        names[sacrum.index] = "sacrum"
        top = float(sacrum.z_range_mm[1])
        verts = [r for r in rest if r.index not in names and abs(r.centroid_lps[0] - mid_x) < 40.0 and r.centroid_lps[2] > top - 10.0]
        for r, letter in zip(sorted(verts, key=lambda r: -r.centroid_lps[2]), _letters(len(verts))):
            names[r.index] = f"vertebrae_{letter}"
    return names, (sides[0] if len(pairs) == 1 else None)


def _letters(n: int) -> list[str]:
    out = []
    for i in range(n):
        s, i2 = "", i
        while True:
            s = string.ascii_lowercase[i2 % 26] + s
            i2 = i2 // 26 - 1
            if i2 < 0:
                break
        out.append(s)
    return out


def _name_leg(regions: list[RegionInfo], anatomy: str) -> tuple[dict[int, str], str | None]:
    """Name one leg's bones (knee field of view; a pelvis is named by :func:`_name_hip`).
    Returns names and the side if known."""
    names: dict[int, str] = {}
    by_vol = sorted(regions, key=lambda r: -r.volume_mm3)
    longs = [r for r in by_vol if _is_long_vertical(r)]
    side: str | None = None
    if anatomy == "knee":
        if len(longs) < 2:
            return names, None
        femur, tibia = sorted(longs[:2], key=lambda r: -r.centroid_lps[2])
        names[femur.index], names[tibia.index] = "femur", "tibia"
        fib = [
            r
            for r in longs[2:]
            if r.centroid_lps[2] < femur.z_range_mm[0] and _z_overlap(r, tibia) > 0.5 and r.length_mm > 0.3 * tibia.length_mm
        ]
        if fib:
            fibula = fib[0]
            names[fibula.index] = "fibula"
            # The fibula is lateral to the tibia; lateral is -x (patient right) on a right leg.
            side = "right" if fibula.centroid_lps[0] < tibia.centroid_lps[0] else "left"
        knee_z = 0.5 * (femur.z_range_mm[0] + tibia.z_range_mm[1])
        pat = [
            r
            for r in by_vol
            if r.index not in names
            and not r.is_long
            and abs(r.centroid_lps[2] - knee_z) < 0.25 * femur.length_mm
            and r.centroid_lps[1] < femur.centroid_lps[1]  # anterior (-y) of the femur
        ]
        if pat:
            names[pat[0].index] = "patella"
        return names, side
    return names, None


def name_regions(
    regions: list[RegionInfo], *, anatomy: str = "auto", body_centre_lps: NDArray[np.float64] | None = None
) -> tuple[dict[int, str], str | None]:
    """Name bone regions.

    Parameters
    ----------
    regions
        Shape summaries (see :class:`RegionInfo`).
    anatomy
        ``"knee"``, ``"hip"``, ``"general"`` or ``"auto"``.
    body_centre_lps
        (3,) centroid of the body (soft tissue) in LPS mm, used as the left/right midline in the
        general rule; None to use the bones' own centroid.

    Returns
    -------
    names, side
        ``{region index: bone name}`` (every region named, unique names) and the side of a single
        limb (``"left"`` / ``"right"``) or None.
    """
    if anatomy == "auto":
        anatomy = detect_anatomy(regions)
    names: dict[int, str] = {}
    side: str | None = None
    if anatomy == "knee":
        names, side = _name_legs(regions, anatomy, body_centre_lps)
    elif anatomy == "hip":
        names, side = _name_hip(regions, body_centre_lps)
    if anatomy == "general":
        names.update(_name_trunk([r for r in regions if r.index not in names], regions, body_centre_lps, anatomy))
    rest = [r for r in sorted(regions, key=lambda r: -r.volume_mm3) if r.index not in names]
    for n, r in enumerate(rest, start=1):
        names[r.index] = f"bone_{n}"
    return names, side


def _name_legs(
    regions: list[RegionInfo], anatomy: str, body_centre_lps: NDArray[np.float64] | None
) -> tuple[dict[int, str], str | None]:
    """One leg, or both legs split at the midline with ``_left`` / ``_right`` suffixes."""
    longs = sorted([r for r in regions if _is_long_vertical(r)], key=lambda r: -r.volume_mm3)
    bilateral = False
    mid_x = 0.0
    if len(longs) >= 2:
        a, b = longs[0], longs[1]
        width = max(a.extents_mm[1], b.extents_mm[1])
        if _z_overlap(a, b) > 0.5 and abs(a.centroid_lps[0] - b.centroid_lps[0]) > 2.0 * width:
            bilateral = True
            mid_x = 0.5 * (a.centroid_lps[0] + b.centroid_lps[0])
    if not bilateral:
        return _name_leg(regions, anatomy)
    names: dict[int, str] = {}
    for suffix, group in (
        ("left", [r for r in regions if r.centroid_lps[0] > mid_x]),  # LPS +x is patient left
        ("right", [r for r in regions if r.centroid_lps[0] <= mid_x]),
    ):
        leg, _ = _name_leg(group, anatomy)
        names.update({i: f"{n}_{suffix}" for i, n in leg.items()})
    return names, None


def _name_trunk(
    todo: list[RegionInfo], all_regions: list[RegionInfo], body_centre_lps: NDArray[np.float64] | None, anatomy: str
) -> dict[int, str]:
    """Trunk rule: midline posterior -> vertebrae/sacrum, midline anterior -> sternum,
    lateral long bones outside the rib cage -> humerus, other lateral -> ribs."""
    if not todo:
        return {}
    centre = body_centre_lps if body_centre_lps is not None else np.mean([r.centroid_lps for r in all_regions], axis=0)
    cx, cy = float(centre[0]), float(centre[1])
    names: dict[int, str] = {}
    big = max(r.volume_mm3 for r in todo)
    # The widest lateral reach of the rib cage: x of ribs/vertebrae are within it; humeri beyond.
    trunk_half_width = max(abs(r.centroid_lps[0] - cx) for r in todo)
    vertebrae, sternum, ribs_l, ribs_r, humeri = [], [], [], [], []
    for r in todo:
        dx = r.centroid_lps[0] - cx
        dy = r.centroid_lps[1] - cy
        near_mid = abs(dx) < 25.0 or (r.x_range_mm[0] < cx < r.x_range_mm[1] and abs(dx) < 40.0)
        if near_mid and dy > 0:
            vertebrae.append(r)
        elif near_mid and dy <= 0:
            sternum.append(r)
        else:
            (ribs_l if dx > 0 else ribs_r).append(r)
    # Humeri: the most lateral compact, thick region on each side (well beyond the ribs).
    for group, side in ((ribs_l, "left"), (ribs_r, "right")):
        if not group:
            continue
        cand = max(group, key=lambda r: abs(r.centroid_lps[0] - cx))
        thick = cand.extents_mm[1] > 18.0 and cand.extents_mm[2] > 12.0
        others = [abs(r.centroid_lps[0] - cx) for r in group if r is not cand]
        beyond = not others or abs(cand.centroid_lps[0] - cx) > max(others) + 15.0
        if thick and beyond:
            names[cand.index] = f"humerus_{side}"
            group.remove(cand)
            humeri.append(cand)
    for group, stem in ((vertebrae, "vertebrae"), (ribs_l, "rib_left"), (ribs_r, "rib_right"), (sternum, "sternum")):
        group = sorted(group, key=lambda r: -r.centroid_lps[2])
        if stem == "sternum":
            if group:
                names[max(group, key=lambda r: r.volume_mm3).index] = "sternum"
            continue
        if len(group) == 1:
            names[group[0].index] = stem if stem != "vertebrae" else "vertebrae_a"
            if stem != "vertebrae":
                names[group[0].index] = f"{stem}_a"
        else:
            for r, letter in zip(group, _letters(len(group))):
                names[r.index] = f"{stem}_{letter}"
    _ = big, trunk_half_width
    return names
