"""Name separated bone regions by anatomy, with a confidence per name (LPS: +x left, +y posterior, +z superior).

Names follow TotalSegmentator's class names (``femur``, ``tibia``, ``fibula``, ``patella``,
``hip``, ``sacrum``, ``humerus``, ``vertebrae``, ``rib``, ``sternum``), with ``_left`` /
``_right`` where the field of view holds more than one limb structure (both legs, or a pelvis).
A single knee keeps unsuffixed names and reports its side separately.

How names are found (limb)
--------------------------
Nothing is fitted to one phantom's lengths or to the scanner axes; every rule reads the bones'
own geometry in the patient (LPS) frame given by the direction matrix:

* **Hip joint**: a femoral candidate whose top end sits in a large bone superior to it
  (the femoral head in the acetabulum of the hip bone, which contains it in z and in x), as a
  ball in a socket: their facing voxels on two concentric spheres (:func:`ball_in_cup`).
* **Knee joint**: two large regions in contact end to end along the axis joining them (the
  limb axis, derived from the bones, not the scanner): similar cross-sections, little overlap
  along that axis, and the union elongated along it. Which one is the femur comes from three
  independent pieces of evidence: the fibula alongside one of them (that one is the tibia; a
  fibula lies apart from it but at its ends, :data:`FIBULA_MAX_CLOSE`), a
  patella near the joint, in front of it (LPS anterior, :data:`PATELLA_MAX_ANGLE_DEG`) on the
  femur's side, and LPS superior (weighted by how vertical the limb axis is).
* **Side**: from the midline between two legs or hips, the fibula's side of the tibia (lateral
  in LPS x, and the chirality of (superior, anterior = patella, lateral = fibula)), the femur
  lateral of its hip bone and the body centre.
* **Pieces** of one bone split by an unscanned gap (a three-stack hip/knee/ankle protocol): a
  named femur / tibia / fibula cut at its free end continues along its shaft; an unnamed region
  wholly beyond that cut, cut itself at the end facing it, with its cut face on the shaft's line
  and a cut section like the bone's, gets its name (a femoral head and neck need not be
  elongated); a thin piece alongside a tibia piece found so is the fibula (lateral malleolus).
  A region split off beyond a long bone's free end on its axis gets its name too. The caller
  merges regions with the same name.
* A thin flat slab (a table) and metal (very high HU, tiny) are never bones; small pieces
  touching a named bone, or touching such a piece (:data:`FRAGMENT_CHAIN`), are fragments
  (merged into it by the caller).

Confidence
----------
Each name's confidence is a product of probabilities, each a logistic function of a sum of
evidence log-odds (``p = 1 / (1 + exp(-margin))``):

* ``p_structure``: that the structure (knee joint, hip joint) is what it seems;
* ``p_role``: the margin between the best and the second-best assignment of roles (femur above
  or below the joint), summed over independent evidence;
* ``p_side``: for suffixed names, the margin between left and right.

More supporting evidence can only raise a confidence (every term is monotone in its evidence).
A name below :data:`CONFIDENT` is not given: the region stays ``bone_<n>`` with a reason. The
calibration (no confident misname) is checked on >= 200 random fields of view, orientations,
sizes, sides, tables and metal (``tests/test_seg_naming.py``).

Vertebrae and ribs cannot be numbered from a short field of view, so they get ordinal letters
from superior to inferior (``vertebrae_a``, ``rib_left_b``): NOT the anatomical numbers.
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

#: A region is "long" (a long bone or a rib segment) when its principal extent is this many
#: times its second extent.
ELONGATED = 2.5
#: A name is given only at or above this confidence; below it the region stays ``bone_<n>``.
CONFIDENT = 0.8
#: HU above which a region is metal, not bone (cortical bone stays below ~2000 HU).
METAL_HU = 3000.0
#: Regions smaller than this (mm^3) are too small to name as a bone of their own.
MIN_NAMED_MM3 = 300.0
#: Rounds of fragments reached through other fragments (:func:`name_bones`): the joint split
#: cuts a bone with several marrow seeds into pieces, and a piece may touch its bone only
#: through another piece (the small hip phantom, seed 31: 17 mL of the right pubis left as
#: ``bone_1``, hip_right Dice 0.913).
FRAGMENT_CHAIN = 2
#: Two regions closer than this (mm, between voxel samples) touch (a joint, a fragment).
CONTACT_MM = 15.0
#: Distances between regions are exact up to this (mm); farther ones are only known to be farther.
NEAR_MM = 30.0
#: Number of voxel samples kept per region for neighbour distances.
SAMPLE_POINTS = 4000


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """``v`` normalised, or zeros when degenerate (callers skip those: unlike
    :func:`orthonav.core.vectors.unit`, a degenerate direction is not an input error here)."""
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else np.zeros(3)


@dataclass(frozen=True, eq=False)
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
    z_range_mm, x_range_mm
        (2,) min and max LPS z (inferior, superior) and x (right, left).
    volume_mm3
        Volume in mm^3.
    points_lps
        (n, 3) sample (at most :data:`SAMPLE_POINTS`) of the region's voxel centres.
    cut_lps
        (m, 3) sample of its voxels on the field of view's boundary: where the region is cut.
    max_hu
        Highest HU in the region (robust: 99.5th percentile), or None when unknown.
    """

    index: int
    centroid_lps: NDArray[np.float64]
    axis_lps: NDArray[np.float64]
    extents_mm: NDArray[np.float64]
    z_range_mm: NDArray[np.float64]
    x_range_mm: NDArray[np.float64]
    volume_mm3: float
    points_lps: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))
    cut_lps: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))
    max_hu: float | None = None

    @classmethod
    def from_points(
        cls,
        index: int,
        points_lps: NDArray[np.float64],
        *,
        volume_mm3: float,
        cut_points_lps: NDArray[np.float64] | None = None,
        max_hu: float | None = None,
    ) -> RegionInfo:
        """Summarise an (n, 3) LPS point sample of the region's voxels (``cut_points_lps``:
        those on the field of view's boundary)."""
        points_lps = np.asarray(points_lps, dtype=np.float64)
        c = points_lps.mean(axis=0)
        q = points_lps - c
        _u, _s, vt = np.linalg.svd(q[:: max(1, len(q) // 5000)], full_matrices=False)
        proj = q @ vt.T
        extents = proj.max(axis=0) - proj.min(axis=0)
        axis = vt[0] if vt[0][2] >= 0 else -vt[0]
        sample = points_lps[:: max(1, len(points_lps) // SAMPLE_POINTS)]
        cut = np.zeros((0, 3)) if cut_points_lps is None else np.asarray(cut_points_lps, np.float64).reshape(-1, 3)
        return cls(
            index=index,
            centroid_lps=c,
            axis_lps=axis,
            extents_mm=extents,
            z_range_mm=np.array([points_lps[:, 2].min(), points_lps[:, 2].max()]),
            x_range_mm=np.array([points_lps[:, 0].min(), points_lps[:, 0].max()]),
            volume_mm3=volume_mm3,
            points_lps=sample,
            cut_lps=cut[:: max(1, len(cut) // 1000)],
            max_hu=max_hu,
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

    @property
    def diameter_mm(self) -> float:
        """Equivalent diameter (mm) of the mean cross-section along the principal axis."""
        return 2.0 * math.sqrt(self.volume_mm3 / (math.pi * max(self.length_mm, 1e-6)))

    def span_along(self, u: NDArray[np.float64]) -> tuple[float, float]:
        """(min, max) of the region's points projected on the unit vector ``u`` (mm)."""
        pts = self.points_lps if len(self.points_lps) else self.centroid_lps[None]
        p = pts @ u
        return float(p.min()), float(p.max())

    def width_across(self, u: NDArray[np.float64]) -> float:
        """Mean cross-sectional area (mm^2) of the region across the unit vector ``u``."""
        lo, hi = self.span_along(u)
        return self.volume_mm3 / max(hi - lo, 1.0)


def regions_from_label_map(
    labels_zyx: NDArray,
    lps_from_ijk: NDArray[np.float64],
    *,
    min_volume_mm3: float = 400.0,
    max_hu_by_value: dict[int, float] | None = None,
    scanned_zyx: NDArray[np.bool_] | None = None,
) -> tuple[list[RegionInfo], list[int]]:
    """Regions as a segmentation produces them: connected components of each label value.

    Parameters
    ----------
    labels_zyx
        Integer label map (0 background).
    lps_from_ijk
        (4, 4) voxel index (i, j, k) -> LPS mm.
    min_volume_mm3
        Components smaller than this are dropped (as the classical segmentation does).
    max_hu_by_value
        Optional label value -> HU, stored as each region's ``max_hu``.
    scanned_zyx
        Optional mask of the scanned voxels (several stacks on one grid): voxels next to an
        unscanned one are cut too.

    Returns
    -------
    regions, values
        Region summaries (``index`` = position in the list, cut points from the voxels on the
        array's faces) and the label value each came from.
    """
    a = np.asarray(labels_zyx)
    m = np.asarray(lps_from_ijk, np.float64)
    voxel_mm3 = float(abs(np.linalg.det(m[:3, :3])))
    regions: list[RegionInfo] = []
    values: list[int] = []
    full = np.ones((3, 3, 3), bool)
    gap_edge = None
    if scanned_zyx is not None and not np.all(scanned_zyx):
        gap_edge = ndi.binary_dilation(~np.asarray(scanned_zyx, bool)) & np.asarray(scanned_zyx, bool)
    value_boxes = ndi.find_objects(a.astype(np.int32, copy=False))
    present = np.flatnonzero(np.bincount(a.ravel().astype(np.int64, copy=False))) if a.size else np.zeros(0, int)
    for v in [int(x) for x in present if x != 0]:
        vb = value_boxes[v - 1]
        comp, n = ndi.label(a[vb] == v, structure=full)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())
        boxes = ndi.find_objects(comp)
        for c in range(1, n + 1):
            if sizes[c] * voxel_mm3 < min_volume_mm3:
                continue
            b = boxes[c - 1]
            kji = np.argwhere(comp[b] == c) + np.array([s.start + o.start for s, o in zip(b, vb)])
            on_face = np.zeros(len(kji), bool)
            for ax in range(3):
                on_face |= (kji[:, ax] == 0) | (kji[:, ax] == a.shape[ax] - 1)
            if gap_edge is not None:
                on_face |= gap_edge[kji[:, 0], kji[:, 1], kji[:, 2]]
            ijk = kji[:, ::-1].astype(np.float64)
            lps = ijk[:, 0:1] * m[:3, 0] + ijk[:, 1:2] * m[:3, 1] + ijk[:, 2:3] * m[:3, 2] + m[:3, 3]
            step = max(1, len(lps) // 20000)
            hu = None if max_hu_by_value is None else max_hu_by_value.get(v)
            regions.append(
                RegionInfo.from_points(len(regions), lps[::step], volume_mm3=float(sizes[c] * voxel_mm3), cut_points_lps=lps[on_face], max_hu=hu)
            )
            values.append(v)
    return regions, values


def region_infos_from_pieces(
    pieces: list[tuple[tuple[slice, ...], NDArray]],
    lps_from_ijk: NDArray[np.float64],
    full_shape_zyx: tuple[int, int, int],
    crop_origin_kji: NDArray,
    ct_crop_zyx: NDArray | None = None,
    scan_border_zyx: NDArray | None = None,
) -> list[RegionInfo]:
    """Region summaries of a segmentation's pieces, with cut points and max HU.

    Parameters
    ----------
    pieces
        ``(box, mask)`` per region, boxes in a crop of the CT whose index (k, j, i) origin in
        the full CT is ``crop_origin_kji``.
    lps_from_ijk
        (4, 4) the CT's voxel index -> LPS mm.
    full_shape_zyx
        The whole CT's shape: voxels on its faces are where a region is cut by the field of view.
    ct_crop_zyx
        HU on the crop (for ``max_hu``), or None.
    scan_border_zyx
        Bool, the whole CT's shape: scanned voxels next to an unscanned one (the border of a
        stack of several; :func:`scan_border`), where a region is cut as surely as on the
        volume's faces; None when every voxel was scanned.
    """
    m = np.asarray(lps_from_ijk, np.float64)
    voxel_mm3 = float(abs(np.linalg.det(m[:3, :3])))
    origin = np.asarray(crop_origin_kji, dtype=np.int64)
    out = []
    for idx, (b, mk) in enumerate(pieces):
        kji = np.argwhere(mk) + np.array([s_.start for s_ in b]) + origin
        on_face = np.zeros(len(kji), bool)
        for ax in range(3):
            on_face |= (kji[:, ax] == 0) | (kji[:, ax] == full_shape_zyx[ax] - 1)
        if scan_border_zyx is not None:
            on_face |= scan_border_zyx[kji[:, 0], kji[:, 1], kji[:, 2]]
        ijk = kji[:, ::-1].astype(np.float64)
        lps = ijk[:, 0:1] * m[:3, 0] + ijk[:, 1:2] * m[:3, 1] + ijk[:, 2:3] * m[:3, 2] + m[:3, 3]
        hu = None
        if ct_crop_zyx is not None and mk.any():
            hu = float(np.percentile(ct_crop_zyx[b][mk], 99.5))
        step = max(1, len(lps) // 20000)
        out.append(RegionInfo.from_points(idx, lps[::step], volume_mm3=float(mk.sum() * voxel_mm3), cut_points_lps=lps[on_face], max_hu=hu))
    return out


def scan_border(scanned_zyx: NDArray) -> NDArray[np.bool_]:
    """Scanned voxels with an unscanned 6-neighbour (bool, same shape): where the stacks of an
    imported study end inside the volume, so a bone there is cut, not ended."""
    from scipy import ndimage

    scanned = np.asarray(scanned_zyx, bool)
    return scanned & ndimage.binary_dilation(~scanned)


@dataclass(frozen=True)
class Naming:
    """What :func:`name_bones` decided for each region.

    Attributes
    ----------
    names
        Region index -> name (``bone_<n>`` where no name is confident); regions in ``dropped``
        or ``fragments`` have none.
    confidence
        Region index -> confidence in [0, 1] of its name (for ``bone_<n>``: of the best name
        that was withheld, 0 when there was none).
    why
        Region index -> one line saying what the name rests on, or why it was withheld.
    side
        ``"left"`` / ``"right"`` for a single limb whose side is confident, else None.
    anatomy
        ``"knee"``, ``"hip"``, ``"limb"`` (knee and hip), ``"general"`` or ``"none"``.
    fragments
        Regions that are small pieces of a named bone they touch, directly or through other
        fragments (merge into it in this order: each fragment touches its bone or one before it).
    dropped
        Regions that are not bone (a table slab, metal): leave them out.
    missing
        What the requested anatomy expects but was not found.
    """

    names: dict[int, str]
    confidence: dict[int, float]
    why: dict[int, str]
    side: str | None
    anatomy: str
    fragments: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    missing: tuple[str, ...] = ()

    def notes(self) -> list[str]:
        """One line per abstention, dropped object and missing bone."""
        out = [f"{self.names[i]}: {self.why[i]}" for i in sorted(self.names) if self.names[i].startswith("bone_")]
        out += [f"left out a region: {self.why[i]}" for i in self.dropped]
        out += [f"not found: {m}" for m in self.missing]
        return out


# --- geometry between regions -----------------------------------------------------------------


class _Geo:
    """Cached neighbour queries between regions."""

    def __init__(self, regions: list[RegionInfo]) -> None:
        self.r = {r.index: r for r in regions}
        self._trees: dict[int, cKDTree] = {}
        self._gaps: dict[tuple[int, int], float] = {}

    def tree(self, i: int) -> cKDTree:
        if i not in self._trees:
            pts = self.r[i].points_lps
            self._trees[i] = cKDTree(pts if len(pts) else self.r[i].centroid_lps[None])
        return self._trees[i]

    def _pts(self, i: int) -> NDArray[np.float64]:
        r = self.r[i]
        return r.points_lps if len(r.points_lps) else r.centroid_lps[None]

    def gap(self, a: int, b: int) -> float:
        """Smallest distance (mm) between the two regions' samples; beyond :data:`NEAR_MM` only a
        lower bound (the distance between their bounding boxes)."""
        key = (min(a, b), max(a, b))
        if key not in self._gaps:
            pa, pb = self._pts(a), self._pts(b)
            lo = np.maximum(pa.min(axis=0), pb.min(axis=0))
            hi = np.minimum(pa.max(axis=0), pb.max(axis=0))
            box_gap = float(np.linalg.norm(np.maximum(lo - hi, 0.0)))
            if box_gap > NEAR_MM:
                self._gaps[key] = box_gap
            else:
                small, big = sorted(key, key=lambda i: len(self._pts(i)))
                ps, pbg = self._pts(small), self._pts(big)
                near = np.all((ps >= pbg.min(axis=0) - NEAR_MM) & (ps <= pbg.max(axis=0) + NEAR_MM), axis=1)
                if not near.any():
                    self._gaps[key] = max(box_gap, NEAR_MM)
                else:
                    d, _ = self.tree(big).query(ps[near], k=1, distance_upper_bound=NEAR_MM + 1.0)
                    self._gaps[key] = float(min(d.min(), NEAR_MM + 1.0))
        return self._gaps[key]


def _far_end_cut(r: RegionInfo, d: NDArray[np.float64]) -> bool:
    """Is ``r`` cut by the field of view at its far end along the unit direction ``d``?"""
    if not len(r.cut_lps):
        return False
    lo, hi = r.span_along(d)
    return bool(((r.cut_lps @ d) >= hi - 0.15 * (hi - lo) - 3.0).any())


def _reaches_away(r: RegionInfo, d: NDArray[np.float64], min_elongation: float = 1.8) -> bool:
    """A long bone leaving its joint along ``d``: elongated along ``d``, or cut by the field of
    view at its far end (the evidence for a bone that continues out of view; no length is
    assumed)."""
    return (r.elongation >= min_elongation and abs(float(r.axis_lps @ d)) >= 0.7) or _far_end_cut(r, d)


def non_bone_reason(r: RegionInfo) -> str | None:
    """Why ``r`` is not a bone at all (metal, a table slab), or None."""
    if r.max_hu is not None and r.max_hu >= METAL_HU and r.volume_mm3 < 20_000.0:
        return f"metal ({r.max_hu:.0f} HU, {r.volume_mm3 / 1000:.1f} mL at LPS {_where(r)} mm), not bone"
    e = r.extents_mm
    fill = r.volume_mm3 / max(float(np.prod(e)), 1e-6)  # a solid slab ~1; a curved rib ~0.1
    if e[1] >= 50.0 and e[2] <= 0.25 * e[1] and e[2] <= 25.0 and fill >= 0.4:
        return f"a thin flat slab ({e[0]:.0f} x {e[1]:.0f} x {e[2]:.0f} mm at LPS {_where(r)} mm: a table?), not bone"
    return None


def _where(r: RegionInfo) -> str:
    return "(" + ", ".join(f"{x:.0f}" for x in r.centroid_lps) + ")"


# --- hip ----------------------------------------------------------------------------------------

#: A proximal femur in a pelvis field of view: a near-vertical region at least this elongated
#: (head, neck and a stump of shaft are less elongated than a whole long bone) and this large.
FEMUR_MIN_ELONGATION = 1.8
FEMUR_MIN_VOLUME_MM3 = 20_000.0
#: A hip bone (os coxae) is at least this large and at least this fraction of its femur's volume.
HIP_MIN_VOLUME_MM3 = 60_000.0
HIP_MIN_FEMUR_RATIO = 0.5


#: ... and this thick (equivalent diameter, mm): a fibula (~14 mm) is not.
FEMUR_MIN_DIAMETER_MM = 18.0
#: The femoral head reaches at least this far (mm) into its hip bone (along the axis joining them).
HIP_HEAD_DEPTH_MM = 15.0


#: A femoral head sits in its cup as a ball in a socket: the two bones' voxels within this
#: distance (mm) of each other (the contact shells) lie on two concentric spheres.
CUP_CONTACT_MM = 8.0
#: ... to within this RMS (mm): a shell of voxel centres ~6 mm thick is ~1.7 mm RMS about its
#: mid-sphere, 3 mm voxels add ~0.9 mm, a real head's asphericity ~1 mm. Condyles over a tibial
#: plateau, or pieces of a blurred knee, fit two concentric spheres 4-35 mm RMS.
CUP_RMS_MM = 3.0
#: ... with the cup's shell outside the head's by at least this much (mm): by about
#: :data:`CUP_CONTACT_MM` for a ball in a socket, by about nothing for two surfaces meeting
#: end to end.
CUP_OUTSIDE_MM = 0.5 * CUP_CONTACT_MM
#: ... over at least this fraction of each shell (the rest: the neck or a trochanter near the rim).
CUP_MIN_KEPT = 0.75
#: ... and a head's shell of this radius (mm): adult femoral heads are 18-30 mm in radius, and the
#: shell's mid-sphere lies ~3 mm inside the head's surface (the two real libhip m4 heads, 25.5 and
#: 26.2 mm: 23-24 mm; the phantoms': 21-26 mm). Condyles congruent with a real tibial plateau fit
#: spheres of 31-38 mm at about this RMS: the radius tells them apart.
HEAD_SHELL_RADIUS_MM = (15.0, 30.0)
#: Of two bones read as the ball in one cup, one whose fit's RMS is at most this fraction of the
#: other's is the femoral head, and the other no candidate (:func:`_hip_pairs`); closer fits stay
#: rivals (each lowers the other's confidence: no name). A piece of the hip bone split off beside
#: the cup (the ischium) can fit it as a ball and outscore the femur on the other evidence: on
#: the small pelvis phantom of seed 51, 2.6 mm RMS against the femur's 1.1 mm, and the hip bone,
#: femur and sacrum of that side stayed unnamed. Measured (2026-12-07): femurs fit their cups to
#: 0.9-1.3 mm RMS on 14 small phantoms (1.8 x 1.8 x 2.4 mm), 1.5-1.6 mm on the full one, 1.8-2.9 mm
#: in random hip fields of view at 1.5-3 mm; the real libhip femurs in a modelled socket to
#: 0.9-1.3 mm. In 100 of those fields of view five such pieces competed with a femur for its
#: cup, the femur's RMS 0.54-0.73 of the piece's (0.6 named one of the five, 0.75 all); no
#: femur fitted worse than a piece. Fits within a quarter of each other are not told apart.
CUP_BETTER_FIT = 0.75


def _concentric_spheres(
    a: NDArray[np.float64], b: NDArray[np.float64]
) -> tuple[NDArray[np.float64], float, float, NDArray[np.float64], NDArray[np.float64]]:
    """Two concentric spheres through the point sets ``a`` and ``b`` (mm): centre, radii and the
    signed residuals. Algebraic least squares |p|^2 = 2 c.p + k, one k (= r^2 - |c|^2) per set,
    each set weighted by 1/sqrt(n) so that both count alike."""
    wa, wb = 1.0 / math.sqrt(len(a)), 1.0 / math.sqrt(len(b))
    m = np.r_[np.c_[2.0 * a, np.ones(len(a)), np.zeros(len(a))] * wa, np.c_[2.0 * b, np.zeros(len(b)), np.ones(len(b))] * wb]
    x = np.linalg.lstsq(m, np.r_[(a**2).sum(axis=1) * wa, (b**2).sum(axis=1) * wb], rcond=None)[0]
    c = x[:3]
    ra, rb = (math.sqrt(max(k + float(c @ c), 1e-9)) for k in x[3:])
    return c, ra, rb, np.linalg.norm(a - c, axis=1) - ra, np.linalg.norm(b - c, axis=1) - rb


def ball_in_cup(cup_lps: NDArray[np.float64], ball_lps: NDArray[np.float64]) -> tuple[bool, str]:
    """Does the bone sampled by ``ball_lps`` sit in a socket of the one sampled by ``cup_lps``
    as a femoral head in its acetabulum? (LPS mm point samples of the two bones' voxels.)
    Returns (verdict, why); :func:`ball_in_cup_fit` gives the fit's RMS too."""
    ok, why, _rms = ball_in_cup_fit(cup_lps, ball_lps)
    return ok, why


def ball_in_cup_fit(cup_lps: NDArray[np.float64], ball_lps: NDArray[np.float64]) -> tuple[bool, str, float]:
    """:func:`ball_in_cup` with the RMS (mm) of the contact shells about their concentric
    spheres (inf when there is too little contact to fit them).

    The contact shells (each bone's points within :data:`CUP_CONTACT_MM` of the other) are fitted
    with two concentric spheres (:func:`_concentric_spheres`, once more after trimming the points
    far off them). A ball in a socket fits :data:`CUP_MIN_KEPT` of each shell to
    :data:`CUP_RMS_MM`, with the cup's sphere :data:`CUP_OUTSIDE_MM` outside the ball's and the
    ball's radius in :data:`HEAD_SHELL_RADIUS_MM`. Returns (verdict, why).
    """
    cup, ball = np.asarray(cup_lps, np.float64), np.asarray(ball_lps, np.float64)
    if len(cup) < 10 or len(ball) < 10:
        return False, "too few voxels to judge the joint", math.inf
    ball_c = ball[cKDTree(cup).query(ball, distance_upper_bound=CUP_CONTACT_MM)[0] < CUP_CONTACT_MM]
    cup_c = cup[cKDTree(ball).query(cup, distance_upper_bound=CUP_CONTACT_MM)[0] < CUP_CONTACT_MM]
    if len(ball_c) < 20 or len(cup_c) < 20:
        return False, f"too small a contact ({len(ball_c)} and {len(cup_c)} voxels sampled)", math.inf
    c, r_ball, r_cup, e_ball, e_cup = _concentric_spheres(ball_c, cup_c)
    # One trim: a few voxels of the neck or a trochanter near the socket's rim are no part of
    # the joint (within 3 mm or 2.5 median deviations of the spheres is kept); most must stay.
    k_ball = np.abs(e_ball) <= max(3.0, 2.5 * float(np.median(np.abs(e_ball))))
    k_cup = np.abs(e_cup) <= max(3.0, 2.5 * float(np.median(np.abs(e_cup))))
    kept = min(float(k_ball.mean()), float(k_cup.mean()))
    c, r_ball, r_cup, e_ball, e_cup = _concentric_spheres(ball_c[k_ball], cup_c[k_cup])
    rms = math.sqrt(0.5 * (float(np.mean(e_ball**2)) + float(np.mean(e_cup**2))))
    fit = f"contact shells on concentric spheres of {r_ball:.0f} and {r_cup:.0f} mm, {rms:.1f} mm RMS over {100 * kept:.0f} % of them"
    ok = (
        rms <= CUP_RMS_MM
        and kept >= CUP_MIN_KEPT
        and r_cup - r_ball >= CUP_OUTSIDE_MM
        and HEAD_SHELL_RADIUS_MM[0] <= r_ball <= HEAD_SHELL_RADIUS_MM[1]
    )
    return ok, fit if ok else f"no ball in a socket ({fit})", rms


def _is_femur_like(r: RegionInfo) -> bool:
    return (
        abs(r.axis_lps[2]) > 0.7
        and r.elongation >= FEMUR_MIN_ELONGATION
        and r.volume_mm3 >= FEMUR_MIN_VOLUME_MM3
        and r.diameter_mm >= FEMUR_MIN_DIAMETER_MM
    )


@dataclass
class _HipPair:
    hip: RegionInfo
    femur: RegionInfo
    p: float
    why: str
    rms: float = math.inf  # of the ball in its cup (:func:`ball_in_cup_fit`), mm


def _rivals(c: _HipPair, hp: _HipPair) -> bool:
    """Does ``c`` read a region of ``hp`` differently (a femur as a hip bone or the reverse, or
    another femur in the same cup)? Two cups for one femur are pieces of one hip bone: no rival."""
    if c is hp:
        return False
    if c.hip.index == hp.femur.index or c.femur.index == hp.hip.index:
        return True
    return c.hip.index == hp.hip.index and c.femur.index != hp.femur.index


def _hip_pairs(regions: list[RegionInfo], geo: _Geo, body_centre_lps: NDArray[np.float64] | None = None) -> list[_HipPair]:
    """(hip bone, femur) pairs: a femoral head sitting in the cup of a bone above it.

    Candidates: a femur (at least :data:`FEMUR_MIN_VOLUME_MM3`, as thick as
    :data:`FEMUR_MIN_DIAMETER_MM`: a fibula is not) touching a bone whose centroid is superior
    (LPS) to it, at least a quarter its volume; along the axis from the femur's centroid to the
    hip bone's, the femur's top reaches at least :data:`HIP_HEAD_DEPTH_MM` beyond the hip bone's
    lowest point (the head is inside the cup; at a knee the tibia's top meets the femur's bottom
    end to end); and the two sit as a ball in a socket (:func:`ball_in_cup`: condyles over a
    tibial plateau, or blocks of a blurred knee, do not). Largest femurs first, at most two pairs.
    """
    down = np.array([0.0, 0.0, -1.0])
    femurs = sorted(
        [
            r
            for r in regions
            if r.volume_mm3 >= FEMUR_MIN_VOLUME_MM3 and r.diameter_mm >= FEMUR_MIN_DIAMETER_MM and _reaches_away(r, down, FEMUR_MIN_ELONGATION)
        ],
        key=lambda r: -r.volume_mm3,
    )
    cands: list[_HipPair] = []
    for f in femurs:
        for h in regions:
            if h.index == f.index or h.volume_mm3 < max(0.25 * f.volume_mm3, FEMUR_MIN_VOLUME_MM3) or f.volume_mm3 < 0.15 * h.volume_mm3:
                continue
            if h.centroid_lps[2] <= f.centroid_lps[2] or geo.gap(h.index, f.index) > CONTACT_MM:
                continue
            u = _unit(h.centroid_lps - f.centroid_lps)
            if u[2] < 0.3:
                continue
            depth = f.span_along(u)[1] - h.span_along(u)[0]
            if depth < HIP_HEAD_DEPTH_MM:
                continue
            ball, fit, rms = ball_in_cup_fit(h.points_lps, f.points_lps)
            if not ball:
                continue
            g = geo.gap(h.index, f.index)
            # Evidence (log-odds): contact at the head, the head deep in the cup, the hip bone
            # above (LPS), larger, reaching well above the femoral head.
            e = -1.0
            e += 2.5 if g <= 8.0 else 1.0
            e += 1.5 * min(1.0, (depth - HIP_HEAD_DEPTH_MM) / 20.0)
            e += 1.0 if u[2] >= 0.5 else 0.0
            e += 1.0 if h.volume_mm3 >= f.volume_mm3 else -1.5
            e += 1.0 if h.z_range_mm[1] - f.z_range_mm[1] >= 30.0 else -1.0
            if body_centre_lps is not None:
                # A hip bone lies to one side of the body's midline (its centroid 40+ mm out) and
                # does not reach far across it (a sacrum, or bones merged across the pelvis, do).
                mid = float(body_centre_lps[0])
                out = (h.centroid_lps[0] - mid) * np.sign(f.centroid_lps[0] - mid)
                across = (mid - h.x_range_mm[0]) if f.centroid_lps[0] > mid else (h.x_range_mm[1] - mid)
                e += 1.0 if out >= 40.0 else -3.0
                e += 0.0 if across <= 30.0 else -6.0
            cands.append(_HipPair(h, f, _logistic(e), f"femoral head in the cup of a larger bone above it (gap {g:.0f} mm, {depth:.0f} mm deep; {fit})", rms))
    # Two bones in one cup: the femoral head is the one that fits the socket as a ball; a piece
    # of the hip bone cut off beside the cup (the ischium) fits it markedly worse.
    cands = [c for c in cands if not any(o.hip.index == c.hip.index and o.femur.index != c.femur.index and o.rms <= CUP_BETTER_FIT * c.rms for o in cands)]
    pairs: list[_HipPair] = []
    used: set[int] = set()
    for hp in sorted(cands, key=lambda c: -c.p):
        if hp.hip.index in used or hp.femur.index in used:
            continue
        # A competing reading of the same regions lowers the confidence (margin to the second best).
        rival = max((c.p for c in cands if _rivals(c, hp)), default=0.0)
        hp.p = hp.p * (1.0 - 0.5 * rival) if rival > 0.5 else hp.p
        pairs.append(hp)
        used |= {hp.hip.index, hp.femur.index}
        if len(pairs) == 2:
            break
    return pairs


# --- knee ---------------------------------------------------------------------------------------


@dataclass
class _Knee:
    upper: RegionInfo
    lower: RegionInfo
    axis: NDArray[np.float64]  # unit, lower -> upper
    fibula: RegionInfo | None = None
    fibula_on: str = ""  # "upper" / "lower"
    patella: RegionInfo | None = None
    patella_on: str = ""
    p_structure: float = 0.0
    p_role: float = 0.0  # that upper is the femur
    femur_is_upper: bool = True
    why: str = ""

    @property
    def femur(self) -> RegionInfo:
        return self.upper if self.femur_is_upper else self.lower

    @property
    def tibia(self) -> RegionInfo:
        return self.lower if self.femur_is_upper else self.upper


#: The two bones of a knee joint hold at least this fraction of the larger one's volume...
KNEE_VOLUME_RATIO = 0.1
#: ...and mean cross-sections (across the joint axis) at least this fraction of each other.
KNEE_SECTION_RATIO = 0.35
#: Each is at least this large (mm^3).
KNEE_MIN_MM3 = 5_000.0
#: The patella lies in front of the knee: its offset from the joint axis is within this angle
#: (deg) of the patient's anterior (LPS -y, across the axis). The LPS frame is the patient's
#: whatever the position on the table (the direction matrix carries supine / prone, head- or
#: feet-first); the patella's own offset (a few deg lateral) and a limb rotated up to ~25 deg
#: in the scan stay well inside it, while a piece of a condyle beside the axis (90 deg off:
#: medial or lateral, or posterior) is not a patella.
PATELLA_MAX_ANGLE_DEG = 60.0


#: Least distance (mm) from a hip joint (the femoral head) to a knee joint. The adult femur is
#: 380-500 mm long from the head's centre to the knee's joint line (Brinkmann & Reich; the
#: phantom's 430 mm at a scale of 0.8 gives 344 mm); the two hip joints lie 140-210 mm apart.
MIN_HIP_TO_KNEE_MM = 250.0


def _contact_centre(a: RegionInfo, b: RegionInfo, geo: _Geo) -> NDArray[np.float64]:
    """Where two regions meet (LPS mm): the mean of ``b``'s samples within 3 mm of the closest
    approach to ``a``, and of their nearest samples of ``a``."""
    d, idx = geo.tree(a.index).query(geo._pts(b.index))
    close = d <= float(d.min()) + 3.0
    return 0.5 * (geo._pts(b.index)[close].mean(axis=0) + geo._pts(a.index)[idx[close]].mean(axis=0))


def _dist_knee_hip(k: _Knee, hp: _HipPair, geo: _Geo) -> float:
    """Distance (mm) between a knee candidate's joint and a hip pair's joint (:func:`_contact_centre`)."""
    return float(np.linalg.norm(_contact_centre(k.upper, k.lower, geo) - _contact_centre(hp.hip, hp.femur, geo)))


def _knee_pairs(regions: list[RegionInfo], geo: _Geo, taken: set[int]) -> list[_Knee]:
    """Candidate knee joints: two large regions touching end to end along the axis joining them."""
    big = [r for r in regions if r.index not in taken and r.volume_mm3 >= KNEE_MIN_MM3]
    cands: list[tuple[float, _Knee]] = []
    for a, b in itertools.combinations(big, 2):
        if geo.gap(a.index, b.index) > CONTACT_MM:
            continue
        u = _unit(a.centroid_lps - b.centroid_lps)
        if not u.any():
            continue
        if u[2] < 0:  # orient lower -> upper in LPS
            u, a, b = -u, b, a
        if u[2] < 0.5:  # a limb's joint axis is within 60 deg of LPS superior
            continue
        va, vb = a.volume_mm3, b.volume_mm3
        if min(va, vb) < KNEE_VOLUME_RATIO * max(va, vb):
            continue
        sa, sb = a.width_across(u), b.width_across(u)
        if min(sa, sb) < KNEE_SECTION_RATIO * max(sa, sb):
            continue
        a_lo, a_hi = a.span_along(u)
        b_lo, b_hi = b.span_along(u)
        overlap = max(0.0, min(a_hi, b_hi) - max(a_lo, b_lo)) / max(min(a_hi - a_lo, b_hi - b_lo), 1e-6)
        if overlap > 0.35:
            continue
        # Long bones meet along their own axes (a hip bone beside a sacrum does not), each
        # leaving the joint as a long bone or cut by the field of view.
        if any(r.elongation >= 1.6 and abs(float(r.axis_lps @ u)) < 0.6 for r in (a, b)):
            continue
        if not (_reaches_away(a, u) and _reaches_away(b, -u)):
            continue
        # The union is elongated along u (a limb), not across it (a tibia beside a fibula).
        both = np.concatenate([a.points_lps, b.points_lps])
        q = both - both.mean(axis=0)
        along = float(np.ptp(q @ u))
        perp = q - np.outer(q @ u, u)
        across = float(2.0 * np.sqrt((perp**2).sum(axis=1)).max())
        if along < 1.1 * min(across, 2.0 * max(a.diameter_mm, b.diameter_mm, 1.0)):
            continue
        cands.append((overlap, _Knee(upper=a, lower=b, axis=u)))
    out: list[_Knee] = []
    used: set[int] = set()
    for _o, k in sorted(cands, key=lambda t: t[0]):
        if k.upper.index in used or k.lower.index in used:
            continue
        out.append(k)
        used |= {k.upper.index, k.lower.index}
    return out


#: A fibula lies apart from its tibia but at its ends: at most this fraction of its voxels are
#: within this distance (mm) of the tibia's. Measured on the real left leg of
#: ``real_bone_surfaces/knee_vhf_left`` (voxelised at 1.5 mm): 0.065 of the whole fibula, 0.11 of
#: its top 40 mm (the head, at the proximal tibiofibular joint); a sliver split off the tibia
#: along its length: 0.46.
FIBULA_CLOSE_MM = 6.0
FIBULA_MAX_CLOSE = 0.3


def _alongside(r: RegionInfo, bone: RegionInfo, u: NDArray[np.float64], geo: _Geo) -> float:
    """How well ``r`` lies alongside ``bone`` (a fibula by its tibia): 0..1."""
    if r.volume_mm3 > 0.6 * bone.volume_mm3 or geo.gap(r.index, bone.index) > CONTACT_MM:
        return 0.0
    # A fibula is a thin long bone parallel to its tibia (a patella, a femur beside a hip bone are
    # not); a short piece of one cut by the field of view (a stack border) need not be as elongated.
    long_enough = r.elongation >= 2.0 or (r.elongation >= 1.5 and (_far_end_cut(r, u) or _far_end_cut(r, -u)))
    if not long_enough or abs(float(r.axis_lps @ u)) < 0.8 or r.width_across(u) > 0.45 * bone.width_across(u):
        return 0.0
    r_lo, r_hi = r.span_along(u)
    b_lo, b_hi = bone.span_along(u)
    inside = max(0.0, min(r_hi, b_hi) - max(r_lo, b_lo)) / max(r_hi - r_lo, 1e-6)
    ext = r_hi - r_lo
    if inside < 0.6 or ext < 1.5 * min(r.extents_mm[1], r.extents_mm[2]) + 1e-6:
        return 0.0
    # A fibula touches its tibia only at the two tibiofibular joints; a sliver of the bone split
    # off along its length (a blurred cortex) lies against it all the way.
    d, _ = geo.tree(bone.index).query(r.points_lps, distance_upper_bound=FIBULA_CLOSE_MM)
    if float(np.mean(d < FIBULA_CLOSE_MM)) > FIBULA_MAX_CLOSE:
        return 0.0
    return min(1.0, (inside - 0.5) / 0.4)


def _knee_evidence(k: _Knee, regions: list[RegionInfo], geo: _Geo, taken: set[int]) -> None:
    """Fibula and patella of a knee joint, which bone is the femur, and the confidences."""
    u = k.axis
    joint = 0.5 * (k.upper.span_along(u)[0] + k.lower.span_along(u)[1])
    rest = [r for r in regions if r.index not in taken and r.index not in (k.upper.index, k.lower.index) and non_bone_reason(r) is None]
    best_fib: tuple[float, RegionInfo, str] | None = None
    for r in rest:
        for on, bone in (("upper", k.upper), ("lower", k.lower)):
            s = _alongside(r, bone, u, geo)
            if s > 0 and (best_fib is None or s > best_fib[0]):
                best_fib = (s, r, on)
    if best_fib is not None:
        k.fibula, k.fibula_on = best_fib[1], best_fib[2]
    axis_c = 0.5 * (k.upper.centroid_lps + k.lower.centroid_lps)
    width = max(k.upper.diameter_mm, k.lower.diameter_mm)
    best_pat: tuple[float, RegionInfo] | None = None
    for r in rest:
        if k.fibula is not None and r.index == k.fibula.index:
            continue
        if r.volume_mm3 < MIN_NAMED_MM3 or r.volume_mm3 > 0.3 * min(k.upper.volume_mm3, k.lower.volume_mm3) or r.elongation > 2.0:
            continue
        if r.max_hu is not None and r.max_hu >= METAL_HU:
            continue
        d = r.centroid_lps - axis_c
        off = float(np.linalg.norm(d - (d @ u) * u))
        level = float(r.centroid_lps @ u - joint)
        if abs(level) > max(60.0, width) or off < 0.3 * width or off > 2.5 * width:
            continue
        ant = _unit(np.array([0.0, -1.0, 0.0]) - (-u[1]) * u)  # the patient's anterior, across the axis
        if ant.any() and float(_unit(d - (d @ u) * u) @ ant) < math.cos(math.radians(PATELLA_MAX_ANGLE_DEG)):
            continue  # beside or behind the joint: not in front of it
        if min(geo.gap(r.index, k.upper.index), geo.gap(r.index, k.lower.index)) > 25.0:
            continue
        score = 1.0 - abs(level) / max(60.0, width)
        if best_pat is None or score > best_pat[0]:
            best_pat = (score, r)
    if best_pat is not None:
        k.patella = best_pat[1]
        k.patella_on = "upper" if k.patella.centroid_lps @ u >= joint - 5.0 else "lower"
    # Is this a knee at all?
    e = -1.0 + (2.0 if k.fibula is not None else 0.0) + (2.0 if k.patella is not None else 0.0)
    e += 1.0 if geo.gap(k.upper.index, k.lower.index) <= 10.0 else 0.0
    e += 1.0 if abs(u[2]) >= 0.5 else -1.0
    k.p_structure = _logistic(e)
    # Femur above or below? Evidence (log-odds) for "upper is the femur"; the margin is the sum,
    # less every piece of evidence that disagrees with it (agreeing evidence makes a name
    # confident, conflicting evidence never does).
    ev = [3.0 * float(np.clip((u[2] - 0.3) / 0.6, 0.0, 1.0))]
    if k.fibula is not None:
        ev.append(3.0 if k.fibula_on == "lower" else -3.0)
    if k.patella is not None:
        ev.append(2.0 if k.patella_on == "upper" else -2.0)
    m = sum(ev)
    k.femur_is_upper = m >= 0
    against = sum(abs(e) for e in ev if e * m < 0)
    k.p_role = _logistic(abs(m) - against)
    parts = ["two large bones meeting end to end"]
    if k.fibula is not None:
        parts.append("a fibula alongside the tibia")
    if k.patella is not None:
        parts.append("a patella in front of the joint")
    k.why = ", ".join(parts)


def _knee_side(k: _Knee, mid_x: float | None) -> float:
    """Evidence (log-odds) that this knee is a LEFT one."""
    u = k.axis if k.femur_is_upper else -k.axis  # tibia -> femur: superior along the limb
    e = 0.0
    if k.fibula is not None:
        d = k.fibula.centroid_lps - k.tibia.centroid_lps
        lat = _unit(d - (d @ u) * u)
        e += 3.0 * float(lat[0])  # fibula lateral: +x (patient left) on a left leg
        if k.patella is not None:
            a = k.patella.centroid_lps - k.femur.centroid_lps
            ant = _unit(a - (a @ u) * u)
            e += 2.0 * float(lat @ np.cross(u, ant))  # left leg: lateral = superior x anterior
    if mid_x is not None:
        x = 0.5 * (k.upper.centroid_lps[0] + k.lower.centroid_lps[0])
        e += 4.0 * math.tanh((x - mid_x) / 30.0)
    return e


# --- trunk (unchanged rules, now with confidences) -----------------------------------------------


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


#: A rib (or a piece of one) is thin: equivalent diameter at most this (mm). Rib pieces of the
#: shared real CTs measure 5.4-10.2 mm; a hip bone, a scapula or a femur are 20 mm and more.
RIB_MAX_DIAMETER_MM = 16.0
#: A thin piece with more than this fraction of its voxels within :data:`SLIVER_CLOSE_MM` of a
#: larger region lies against it: a sliver of that bone's blurred cortex, not a bone of its own.
SLIVER_MAX_CLOSE = 0.5
SLIVER_CLOSE_MM = 6.0


def _sliver_of(r: RegionInfo, regions: list[RegionInfo], geo: _Geo) -> int | None:
    """The larger region ``r`` lies against (see :data:`SLIVER_MAX_CLOSE`), or None."""
    for o in regions:
        if o.index == r.index or o.volume_mm3 <= r.volume_mm3 or geo.gap(r.index, o.index) > SLIVER_CLOSE_MM:
            continue
        d, _ = geo.tree(o.index).query(r.points_lps, distance_upper_bound=SLIVER_CLOSE_MM)
        if float(np.mean(d < SLIVER_CLOSE_MM)) > SLIVER_MAX_CLOSE:
            return o.index
    return None


def _name_trunk(
    todo: list[RegionInfo], all_regions: list[RegionInfo], body_centre_lps: NDArray[np.float64] | None, geo: _Geo
) -> tuple[dict[int, str], dict[int, float], dict[int, str]]:
    """Trunk rule: midline posterior -> vertebrae, midline anterior -> sternum, lateral long
    bones outside the rib cage -> humerus, other thin lateral pieces -> ribs. Confidence: the
    logistic of the distance from the rule's decision boundary (mm, scaled), times that this is
    a trunk at all (thin elongated rib-like regions on both sides of the midline). Returns names,
    confidences and, for lateral regions that are no rib (too thick, or a sliver lying against
    a larger bone), why they are left unnamed."""
    if not todo:
        return {}, {}, {}
    centre = body_centre_lps if body_centre_lps is not None else np.mean([r.centroid_lps for r in all_regions], axis=0)
    cx, cy = float(centre[0]), float(centre[1])
    names: dict[int, str] = {}
    conf: dict[int, float] = {}
    not_rib: dict[int, str] = {}
    for r in todo:
        if r.diameter_mm > RIB_MAX_DIAMETER_MM:
            not_rib[r.index] = f"too thick for a rib ({r.diameter_mm:.0f} mm across), and no limb joint in view"
        else:
            o = _sliver_of(r, all_regions, geo)
            if o is not None:
                not_rib[r.index] = "a thin piece lying against a larger bone (a sliver of it), not a rib"
    # Is this a trunk at all? Ribs (thin: equivalent diameter <= 11 mm, elongated, apart from
    # other bones) on both sides of the midline. A limb's fibula (13-17 mm, round) is not a rib.
    ribs = [r for r in todo if r.elongation >= ELONGATED and r.diameter_mm <= 11.0 and r.index not in not_rib]
    n_left = sum(1 for r in ribs if r.centroid_lps[0] > cx)
    n_right = len(ribs) - n_left
    p_trunk = _logistic(-1.5 + 1.0 * min(n_left, 3) + 1.0 * min(n_right, 3))
    vertebrae, sternum, ribs_l, ribs_r = [], [], [], []
    for r in todo:
        dx = r.centroid_lps[0] - cx
        dy = r.centroid_lps[1] - cy
        near_mid = abs(dx) < 25.0 or (r.x_range_mm[0] < cx < r.x_range_mm[1] and abs(dx) < 40.0)
        margin = abs(abs(dx) - 25.0) / 8.0
        if near_mid and dy > 0:
            vertebrae.append(r)
            conf[r.index] = p_trunk * _logistic(margin + min(dy, 60.0) / 15.0)
        elif near_mid and dy <= 0:
            sternum.append(r)
            conf[r.index] = p_trunk * _logistic(margin + min(-dy, 60.0) / 15.0)
        else:
            (ribs_l if dx > 0 else ribs_r).append(r)
            conf[r.index] = p_trunk * _logistic(margin + (1.0 if r.elongation >= 1.8 else -0.5))
    for group, side in ((ribs_l, "left"), (ribs_r, "right")):
        if not group:
            continue
        cand = max(group, key=lambda r: abs(r.centroid_lps[0] - cx))
        thick = cand.extents_mm[1] > 18.0 and cand.extents_mm[2] > 12.0
        others = [abs(r.centroid_lps[0] - cx) for r in group if r is not cand]
        beyond = not others or abs(cand.centroid_lps[0] - cx) > max(others) + 15.0
        if thick and beyond:
            names[cand.index] = f"humerus_{side}"
            lead = abs(cand.centroid_lps[0] - cx) - (max(others) if others else 0.0)
            conf[cand.index] = p_trunk * _logistic(1.0 + (lead - 15.0) / 10.0 + (cand.extents_mm[1] - 18.0) / 10.0)
            group.remove(cand)
    for group, stem in ((vertebrae, "vertebrae"), (ribs_l, "rib_left"), (ribs_r, "rib_right"), (sternum, "sternum")):
        group = sorted(group, key=lambda r: -r.centroid_lps[2])
        if stem == "sternum":
            if group:
                names[max(group, key=lambda r: r.volume_mm3).index] = "sternum"
            continue
        if stem.startswith("rib"):
            group = [r for r in group if r.index not in not_rib]
        for r, letter in zip(group, _letters(len(group))):
            names[r.index] = f"{stem}_{letter}"
    return names, {i: conf[i] for i in names}, {i: w for i, w in not_rib.items() if i not in names}


# --- the namer ---------------------------------------------------------------------------------

#: Bones each anatomy expects (for the "not found" report).
EXPECTED = {"knee": ("femur", "tibia", "fibula", "patella"), "hip": ("hip", "femur", "sacrum")}


def name_bones(
    regions: list[RegionInfo], *, anatomy: str = "auto", body_centre_lps: NDArray[np.float64] | None = None
) -> Naming:
    """Name bone regions by anatomy, each with a confidence, abstaining when the evidence is weak.

    Parameters
    ----------
    regions
        Shape summaries (see :class:`RegionInfo`; ``points_lps`` are needed for neighbours).
    anatomy
        ``"knee"`` / ``"hip"`` (name what fits that anatomy, report what is missing),
        ``"general"`` (trunk rules) or ``"auto"``.
    body_centre_lps
        (3,) centroid of the body (soft tissue) in LPS mm: the left/right midline evidence.

    Returns
    -------
    Naming
        Names (``bone_<n>`` below :data:`CONFIDENT`), confidences, reasons, side, fragments,
        regions left out (not bone) and bones not found.
    """
    geo = _Geo(regions)
    names: dict[int, str] = {}
    conf: dict[int, float] = {}
    why: dict[int, str] = {}
    base: dict[int, tuple[str, float, str | None, float]] = {}  # index -> (name stem, p, side, p_side)
    dropped: list[int] = []
    for r in regions:
        reason = non_bone_reason(r)
        if reason is not None:
            dropped.append(r.index)
            why[r.index] = reason
    live = [r for r in regions if r.index not in dropped]
    taken: set[int] = set()
    hips: list[_HipPair] = []
    knees: list[_Knee] = []
    weak_knees: list[_Knee] = []
    # Knees first (a tibia with its fibula, a femur with its patella must not be read as a
    # femoral head in a cup), then hips among the rest.
    if anatomy in ("auto", "knee"):
        knees = _knee_pairs(live, geo, taken)
        if anatomy == "auto":
            # Two bones meeting as a femoral head in the cup of the bone above it are a hip joint,
            # not a knee (a pelvis piece and a proximal femur, with a pelvis piece for a patella):
            # at a knee the tibia meets the femur end to end (:func:`_hip_pairs`).
            knees = [k for k in knees if not _hip_pairs([k.upper, k.lower], geo, body_centre_lps)]
        for k in knees:
            taken |= {k.upper.index, k.lower.index}
        for k in knees:
            _knee_evidence(k, live, geo, taken)
            for r in (k.fibula, k.patella):
                if r is not None:
                    taken.add(r.index)
        # A "knee" with neither a fibula nor a patella can never be named confidently: its
        # regions are released (they may be a femur under its hip bone, or pieces of one).
        for k in [k for k in knees if k.fibula is None and k.patella is None]:
            knees.remove(k)
            weak_knees.append(k)
            taken -= {k.upper.index, k.lower.index}
    if anatomy in ("auto", "hip"):
        hips = _hip_pairs([r for r in live if r.index not in taken], geo, body_centre_lps)
        for hp in hips:
            taken |= {hp.hip.index, hp.femur.index}
        # A knee lies a femur's length below every hip joint: a "knee" near a femoral head in its
        # cup is pieces of a pelvis and a proximal femur. Its regions are released and the hips
        # looked for again.
        near = [k for k in knees if any(_dist_knee_hip(k, hp, geo) < MIN_HIP_TO_KNEE_MM for hp in hips)]
        if near:
            for k in near:
                knees.remove(k)
                taken -= {r.index for r in (k.upper, k.lower, k.fibula, k.patella) if r is not None}
            taken -= {i for hp in hips for i in (hp.hip.index, hp.femur.index)}
            hips = _hip_pairs([r for r in live if r.index not in taken], geo, body_centre_lps)
            for hp in hips:
                taken |= {hp.hip.index, hp.femur.index}
    used_anatomy = anatomy
    in_hips = {i for hp in hips for i in (hp.hip.index, hp.femur.index)}
    weak_knees = [k for k in weak_knees if not {k.upper.index, k.lower.index} & in_hips]
    if anatomy == "auto":
        used_anatomy = ("limb" if hips and knees else "hip" if hips else "knee") if (hips or knees or weak_knees) else "general"
    if used_anatomy == "general":
        t_names, t_conf, t_not = _name_trunk(live, regions, body_centre_lps, geo)
        for i, n in t_names.items():
            base[i] = (n, t_conf[i], None, 1.0)
            why[i] = "trunk rule (midline, lateral, posterior/anterior of the body centre)"
        why.update(t_not)
    else:
        # Sides. Two hips or two knees: the midline between them; one: anatomy and body centre.
        hip_mid = 0.5 * (hips[0].femur.centroid_lps[0] + hips[1].femur.centroid_lps[0]) if len(hips) == 2 else None
        knee_mid = 0.5 * (knees[0].upper.centroid_lps[0] + knees[1].upper.centroid_lps[0]) if len(knees) == 2 else None
        sac_x: dict[int, float] = {}
        for hp in hips:
            e = 0.0
            if hip_mid is not None:
                e += 4.0 * math.tanh((hp.femur.centroid_lps[0] - hip_mid) / 30.0)
            e += 2.5 * math.tanh((hp.femur.centroid_lps[0] - hp.hip.centroid_lps[0]) / 15.0)
            if body_centre_lps is not None:
                e += 2.0 * math.tanh((hp.hip.centroid_lps[0] - float(body_centre_lps[0])) / 30.0)
            side, ps = ("left" if e >= 0 else "right"), _logistic(abs(e))
            base[hp.hip.index] = ("hip", hp.p, side, ps)
            base[hp.femur.index] = ("femur", hp.p, side, ps)
            why[hp.hip.index] = why[hp.femur.index] = hp.why
            sac_x[hp.hip.index] = float(hp.hip.centroid_lps[0])
        for k in weak_knees:  # two bones meeting end to end, nothing to tell which is which
            for r in (k.upper, k.lower):
                base[r.index] = ("femur" if r is k.femur else "tibia", k.p_structure * k.p_role, None, 1.0)
                why[r.index] = "two large bones meeting end to end, but no fibula or patella in view"
        for k in knees:
            e = _knee_side(k, knee_mid)
            side, ps = ("left" if e >= 0 else "right"), _logistic(abs(e))
            p = k.p_structure * k.p_role
            base[k.femur.index] = ("femur", p, side, ps)
            base[k.tibia.index] = ("tibia", p, side, ps)
            why[k.femur.index] = why[k.tibia.index] = k.why
            if k.fibula is not None:
                s = _alongside(k.fibula, k.tibia, k.axis, geo) if k.fibula_on == ("lower" if k.femur_is_upper else "upper") else 0.0
                base[k.fibula.index] = ("fibula", p * _logistic(1.0 + 3.0 * s), side, ps)
                why[k.fibula.index] = "alongside the tibia of a knee joint"
            if k.patella is not None:
                good = k.patella_on == ("upper" if k.femur_is_upper else "lower")
                base[k.patella.index] = ("patella", p * (0.97 if good else 0.6), side, ps)
                why[k.patella.index] = "in front of the knee joint, on the femur's side"
        _name_pelvis_rest(live, hips, base, why, geo, body_centre_lps)
        free: dict[int, NDArray[np.float64]] = {}  # long bone -> direction of its end away from its joint
        for k in knees:
            up = _unit(k.femur.centroid_lps - k.tibia.centroid_lps)
            free[k.femur.index] = up
            free[k.tibia.index] = -up
            if k.fibula is not None:
                free[k.fibula.index] = -up
        for hp in hips:
            free[hp.femur.index] = _unit(hp.femur.centroid_lps - hp.hip.centroid_lps)
        _name_pieces(live, base, why, geo, free)
    # Names from the per-region decisions.
    n_structures = len(hips) + len(knees)
    suffixed = n_structures > 1 or bool(hips) or used_anatomy == "general"
    single_side: str | None = None
    if not suffixed and knees:
        k = knees[0]
        e = _knee_side(k, None)
        if _logistic(abs(e)) >= CONFIDENT:
            single_side = "left" if e >= 0 else "right"
    for i, (stem, p, side, ps) in base.items():
        if side is not None and suffixed and stem not in ("sacrum",) and not stem.startswith("vertebrae"):
            full, pc = f"{stem}_{side}", p * ps
        else:
            full, pc = stem, p
        conf[i] = float(pc)
        if pc >= CONFIDENT:
            names[i] = full
            why[i] = f"{why.get(i, '')} (confidence {pc:.2f})".strip()
        else:
            why[i] = f"withheld {full} (confidence {pc:.2f} < {CONFIDENT}): {_abstain_reason(stem, p, side, ps, suffixed)}"
    # Fragments: small unnamed regions touching a named bone (limb fields of view only), or
    # touching a fragment of one (:data:`FRAGMENT_CHAIN`), in the order the caller merges them.
    fragments: list[int] = []
    if used_anatomy != "general":
        bone_of = {i: i for i in names}  # a named bone or fragment -> the named bone it joins
        for _depth in range(FRAGMENT_CHAIN + 1):
            found: dict[int, int] = {}  # this round's fragments: each touches a bone or an earlier round's fragment
            for r in live:
                if r.index in names or r.index in base or r.index in bone_of:
                    continue
                # the nearest bone or earlier fragment it touches, so that it joins the bone it lies against
                touching = sorted((j for j in bone_of if geo.gap(r.index, j) <= 6.0 and r.volume_mm3 < 0.7 * geo.r[bone_of[j]].volume_mm3),
                                  key=lambda j: geo.gap(r.index, j))
                if touching and not (r.is_long and r.length_mm >= 40.0):
                    found[r.index] = bone_of[touching[0]]
                    via = "" if touching[0] in names else " through another fragment"
                    why[r.index] = f"a fragment touching {names[found[r.index]]}{via}"
            if not found:
                break
            bone_of.update(found)
            fragments += sorted(found, key=lambda i: -geo.r[i].volume_mm3)
    # Everything else: bone_<n>, with its reason.
    rest = sorted([r for r in live if r.index not in names and r.index not in fragments], key=lambda r: -r.volume_mm3)
    for n, r in enumerate(rest, start=1):
        names[r.index] = f"bone_{n}"
        conf.setdefault(r.index, 0.0)
        if r.index not in why:
            why[r.index] = _unmatched_reason(r, used_anatomy, anatomy)
    missing = _missing(anatomy, names)
    if used_anatomy in ("knee", "hip", "limb") and not knees and not hips:
        used_anatomy = "none"
    side_out = single_side
    if suffixed and n_structures == 1 and hips:
        hp = hips[0]
        s = base[hp.femur.index]
        if s[3] >= CONFIDENT:
            side_out = s[2]
    return Naming(names, conf, why, side_out, used_anatomy, tuple(fragments), tuple(dropped), missing)


def _abstain_reason(stem: str, p: float, side: str | None, ps: float, suffixed: bool) -> str:
    if p < CONFIDENT:
        if stem in ("femur", "tibia"):
            return "too little of the joint is in view to tell femur from tibia (or hip bone)"
        return f"too little evidence that this is the {stem}"
    return f"its side cannot be told ({side} at confidence {ps:.2f})"


def _unmatched_reason(r: RegionInfo, anatomy: str, requested: str) -> str:
    if r.volume_mm3 < MIN_NAMED_MM3 * 10:
        return f"too small ({r.volume_mm3 / 1000:.1f} mL) to tell which bone it is"
    if requested == "hip":
        return "fits no bone of a hip joint in view (hip anatomy requested)"
    if anatomy in ("knee", "hip", "limb"):
        if r.is_long and r.length_mm >= 40.0:
            return "a long bone with no joint partner in view: cannot tell femur from tibia"
        return f"fits no {anatomy if anatomy != 'limb' else 'knee or hip'} bone in view"
    return "fits no rule of this anatomy"


def _missing(anatomy: str, names: dict[int, str]) -> tuple[str, ...]:
    """What ``anatomy`` expects and ``names`` lacks. A hip CT holds a pelvis, so both sides'
    hip bone and femur are expected: a bone of one type named on one side only reports the
    other side's (``femur_right``), unless it was named without a side."""
    if anatomy not in EXPECTED:
        return ()
    named = {n for n in names.values() if not n.startswith("bone_")}
    found = {n.split("_")[0] for n in named}
    if anatomy != "hip":
        return tuple(f"{b} ({anatomy} anatomy requested)" for b in EXPECTED[anatomy] if b not in found)
    out = []
    for b in EXPECTED["hip"]:
        if b == "sacrum" or b in named:  # one bone, or named without a side: by type
            missing = [] if b in found else [b]
        else:
            missing = [f"{b}_{side}" for side in ("left", "right") if f"{b}_{side}" not in named]
        out += [f"{m} ({anatomy} anatomy requested)" for m in missing]
    return tuple(out)


#: The sacrum's centroid lies at least this far (mm) behind the femoral heads.
SACRUM_BEHIND_HEADS_MM = 10.0


def _head_centre(f: RegionInfo) -> NDArray[np.float64]:
    """Rough centre (LPS mm) of a proximal femur's head: the mean of its top 25 mm."""
    top = float(f.z_range_mm[1])
    if len(f.points_lps):
        near = f.points_lps[f.points_lps[:, 2] > top - 25.0]
        if len(near):
            return near.mean(axis=0)
    return np.array([f.centroid_lps[0], f.centroid_lps[1], top - 12.5])


def _name_pelvis_rest(
    live: list[RegionInfo],
    hips: list[_HipPair],
    base: dict[int, tuple[str, float, str | None, float]],
    why: dict[int, str],
    geo: _Geo,
    body_centre_lps: NDArray[np.float64] | None,
) -> None:
    """Sacrum (the large bone between the hip bones, posterior, across the midline, touching
    them) and vertebrae above it."""
    if not hips:
        return
    hip_bones = [hp.hip for hp in hips]
    if len(hips) == 2:
        mid_x = 0.5 * (hips[0].femur.centroid_lps[0] + hips[1].femur.centroid_lps[0])
    else:
        hp = hips[0]
        to_mid = -1.0 if hp.femur.centroid_lps[0] > hp.hip.centroid_lps[0] else 1.0  # medial of the hip bone
        mid_x = float(body_centre_lps[0]) if body_centre_lps is not None else float(hp.hip.centroid_lps[0] + to_mid * 60.0)
    lo_x = min(min(h.centroid_lps[0] for h in hip_bones), mid_x)
    hi_x = max(max(h.centroid_lps[0] for h in hip_bones), mid_x)
    hip_y = float(np.mean([h.centroid_lps[1] for h in hip_bones]))
    heads = np.array([_head_centre(hp.femur) for hp in hips])
    rest = sorted([r for r in live if r.index not in base and r.volume_mm3 >= 10_000.0], key=lambda r: -r.volume_mm3)
    # The sacrum spans the midline (its alae reach both sacro-iliac joints); a piece of a hip
    # bone cut off by the split (the posterior ilium) lies to one side of it.
    sac = [
        r
        for r in rest
        if lo_x < r.centroid_lps[0] < hi_x
        and abs(r.centroid_lps[0] - mid_x) < 60.0
        and r.x_range_mm[0] < mid_x < r.x_range_mm[1]
        and r.centroid_lps[1] > hip_y - 10.0
        # above and behind the femoral heads' midpoint (36-55 mm behind, 41-50 mm above on the
        # phantoms): a piece of the pubis cut off by the split lies in front, at or below them
        and r.centroid_lps[2] > heads[:, 2].mean()
        and r.centroid_lps[1] > heads[:, 1].mean() + SACRUM_BEHIND_HEADS_MM
    ]
    if not sac:
        return
    sacrum = sac[0]
    touching = sum(1 for h in hip_bones if not len(sacrum.points_lps) or geo.gap(sacrum.index, h.index) <= CONTACT_MM)
    e = -0.5 + 2.0 * touching + (1.5 if len(hips) == 2 else 0.5) + (1.0 if len(sac) == 1 else 0.0)
    p = min(hp.p for hp in hips) * _logistic(e)
    base[sacrum.index] = ("sacrum", p, None, 1.0)
    why[sacrum.index] = f"between the hip bones, posterior, touching {touching} of them"
    top = float(sacrum.z_range_mm[1])
    verts = [r for r in live if r.index not in base and abs(r.centroid_lps[0] - mid_x) < 40.0 and r.centroid_lps[2] > top - 10.0]
    for r, letter in zip(sorted(verts, key=lambda r: -r.centroid_lps[2]), _letters(len(verts))):
        base[r.index] = (f"vertebrae_{letter}", 0.9 * p, None, 1.0)
        why[r.index] = "on the midline above the sacrum"


#: A piece beyond an unscanned gap lies within this many mm of the line of the bone it continues,
#: plus :data:`PIECE_TOL_PER_MM` per mm of gap: the shaft direction read at the end of a short
#: piece near the knee follows the mechanical axis, while the femoral shaft runs 5-9 deg lateral
#: of it towards the trochanters (0.2 ~ tan 11 deg; measured 41 mm over a 266 mm gap on the
#: three-stack phantom study).
PIECE_TOL_MM = 8.0
PIECE_TOL_PER_MM = 0.2
#: The cut faces of two pieces of one shaft have equivalent radii within this ratio of each other
#: (full evidence at or above it, none at 0.45, against below; shafts taper towards the ankle).
PIECE_SECTION_RATIO = 0.6


def _cut_face(r: RegionInfo, d: NDArray[np.float64]) -> tuple[NDArray[np.float64], float] | None:
    """Centre (LPS mm) and equivalent radius (mm) of the face where the field of view cuts ``r``
    at its far end along the unit direction ``d``, or None when it is not cut there."""
    if not _far_end_cut(r, d):
        return None
    lo, hi = r.span_along(d)
    face = r.cut_lps[(r.cut_lps @ d) >= hi - 0.15 * (hi - lo) - 3.0]
    c = face.mean(axis=0)
    q = face - c
    q = q - np.outer(q @ d, d)
    rms = float(np.sqrt((q**2).sum(axis=1).mean())) if len(q) > 1 else 0.0
    return c, math.sqrt(2.0) * rms  # a filled disc's RMS radius is R / sqrt(2)


def _shaft_direction(r: RegionInfo, d: NDArray[np.float64]) -> NDArray[np.float64]:
    """Unit direction of ``r``'s shaft at its far end along ``d`` (from the centres of its last
    two 25 mm slabs; ``d`` itself when those are too thin or disagree with it by > 35 deg)."""
    p = r.points_lps
    lo, hi = r.span_along(d)
    s = p @ d
    a, b = p[(s >= hi - 50.0) & (s < hi - 25.0)], p[s >= hi - 25.0]
    if hi - lo < 50.0 or len(a) < 20 or len(b) < 20:
        return d
    v = _unit(b.mean(axis=0) - a.mean(axis=0))
    return v if float(v @ d) >= math.cos(math.radians(35.0)) else d


def _name_pieces(
    live: list[RegionInfo],
    base: dict[int, tuple[str, float, str | None, float]],
    why: dict[int, str],
    geo: _Geo,
    free: dict[int, NDArray[np.float64]],
) -> None:
    """Pieces of a named long bone beyond an unscanned gap (three-stack protocol).

    A named femur / tibia / fibula cut by the field of view at its free end (away from its joint,
    direction ``free``) continues across the gap along its shaft. An unnamed region is a piece of
    it when (evidence summed as log-odds): it lies wholly beyond that cut, is cut itself at the
    end facing it, its cut face lies on the line of the shaft (within :data:`PIECE_TOL_MM` +
    :data:`PIECE_TOL_PER_MM` x gap), the two cut faces have similar sections (a fibula's is not a
    tibia's), and no other line fits it nearly as well (nor another region this line: within
    15 mm of each other's offsets the evidence drops). Nothing is assumed of the bones' lengths
    or of the scanner axes; the piece need not be elongated (a femoral head and neck is not).
    A thin long piece alongside a tibia piece found this way, beyond the same gap and cut there
    too, is that leg's fibula (the lateral malleolus). Each bone's line takes at most one piece.
    """
    lines = []
    for i, (stem, p, side, ps) in list(base.items()):
        if stem not in ("femur", "tibia", "fibula") or i not in free:
            continue
        b = geo.r[i]
        f = free[i]
        face = _cut_face(b, f)
        if face is None:
            continue
        lines.append((i, stem, p, side, ps, face[0], face[1], _shaft_direction(b, f), f))
    cands = [r for r in live if r.index not in base and r.volume_mm3 >= 2_000.0 and non_bone_reason(r) is None]
    fits: dict[int, list[tuple[float, float, int]]] = {}  # region -> [(evidence, off, line)]
    for r in cands:
        for li, (i, stem, p, side, ps, c, rad, d, f) in enumerate(lines):
            b = geo.r[i]
            if r.span_along(f)[0] < b.span_along(f)[1] - 5.0:
                continue  # not wholly beyond the cut end of the bone
            face = _cut_face(r, -f)
            if face is None:
                continue  # a piece beyond a gap is cut at the end facing it
            rc, rrad = face
            t = float((rc - c) @ d)
            if t <= 0.0:
                continue
            w = rc - c - t * d
            off = float(np.linalg.norm(w))
            tol = PIECE_TOL_MM + PIECE_TOL_PER_MM * t
            if off > 2.0 * tol:
                continue
            ratio = min(rad, rrad) / max(rad, rrad, 1e-6)
            e = 1.0 + 2.5 * (1.0 - off / tol)
            # Shafts taper (a tibia's cut section at the ankle is ~0.6 of the one below the knee).
            e += 1.5 * float(np.clip((ratio - 0.45) / (PIECE_SECTION_RATIO - 0.45), -2.0, 1.0))
            e += 0.5 if r.elongation < 1.8 or abs(float(r.axis_lps @ d)) >= 0.7 else -2.0
            fits.setdefault(r.index, []).append((e, off, li))
    # Best pairs first; each line and each region is used once. A rival (another bone's line
    # fitting this region, or another region fitting this line) lowers the evidence unless it is
    # clearly farther off: the lines of one leg share their direction error, so the difference
    # of two offsets is known far better than either offset.
    pairs = sorted(((e, off, ri, li) for ri, fl in fits.items() for e, off, li in fl), key=lambda x: (-x[0], x[1]))
    used_lines: set[int] = set()
    for e, off, ri, li in pairs:
        if ri in base or li in used_lines:
            continue
        i, stem, p, side, ps, _c, _rad, d, f = lines[li]
        rivals = [o2 for _e2, o2, l2 in fits[ri] if l2 != li and lines[l2][1] != stem]
        rivals += [o2 for _e2, o2, r2, l2 in pairs if l2 == li and r2 != ri and r2 not in base]
        if rivals:
            e -= max(0.0, 3.0 - (min(rivals) - off) / 5.0)
        q = p * _logistic(e)
        base[ri] = (stem, q, side, ps)
        why[ri] = f"on the line of the {stem}'s shaft, beyond an unscanned gap ({off:.0f} mm off it, cut at the end facing it)"
        used_lines.add(li)
        if stem != "tibia":
            continue
        piece = geo.r[ri]
        for r in cands:
            if r.index in base or r.index == ri:
                continue
            s = _alongside(r, piece, d, geo)
            if s > 0 and _cut_face(r, -f) is not None:
                base[r.index] = ("fibula", q * _logistic(1.0 + 3.0 * s), side, ps)
                why[r.index] = "alongside a piece of the tibia beyond an unscanned gap"
                break
    _pieces_on_axis(live, base, why, geo, free)


def _pieces_on_axis(
    live: list[RegionInfo],
    base: dict[int, tuple[str, float, str | None, float]],
    why: dict[int, str],
    geo: _Geo,
    free: dict[int, NDArray[np.float64]],
) -> None:
    """Pieces of a named long bone (itself elongated, so its principal axis is its shaft) split
    off beyond its free end, cut or not: an unnamed region of at least 5 mL near that axis."""
    lines = []
    for i, (stem, p, side, ps) in list(base.items()):
        if stem not in ("femur", "tibia", "fibula") or i not in free:
            continue
        r = geo.r[i]
        if r.elongation < 1.8:
            continue
        lines.append((i, stem, p, side, ps, r))
    for r in sorted(live, key=lambda r: -r.volume_mm3):
        if r.index in base or r.volume_mm3 < 5_000.0 or non_bone_reason(r) is not None:
            continue
        fits = []
        for i, stem, p, side, ps, b in lines:
            a = b.axis_lps
            d = r.centroid_lps - b.centroid_lps
            t = float(d @ a)
            off = float(np.linalg.norm(d - t * a))
            lo, hi = b.span_along(a)
            c0 = float(b.centroid_lps @ a)
            beyond = (t + c0 > hi) if t > 0 else (t + c0 < lo)
            away = float(d @ free[i]) > 0.0
            if not beyond or not away or off > 0.5 * b.diameter_mm + 20.0:
                continue
            if r.elongation >= 1.8 and abs(float(r.axis_lps @ a)) < 0.8:
                continue
            fits.append((off, i, stem, p, side, ps))
        if not fits:
            continue
        fits.sort()
        off, i, stem, p, side, ps = fits[0]
        sep = (fits[1][0] - off) if len(fits) > 1 and fits[1][2] != stem else 40.0
        q = p * _logistic(-1.0 + sep / 5.0) * _logistic(3.0 - off / 10.0)
        base[r.index] = (stem, q, side, ps)
        why[r.index] = f"on the axis of the {stem}, beyond its free end ({off:.0f} mm off its axis)"


# --- compatibility ------------------------------------------------------------------------------


def detect_anatomy(regions: list[RegionInfo]) -> str:
    """``"knee"``, ``"hip"`` or ``"general"`` from the regions' layout (a knee and a hip in one
    field of view count as ``"hip"``)."""
    a = name_bones(regions, anatomy="auto").anatomy
    return "hip" if a == "limb" else a if a in ("knee", "hip") else "general"


def name_regions(
    regions: list[RegionInfo], *, anatomy: str = "auto", body_centre_lps: NDArray[np.float64] | None = None
) -> tuple[dict[int, str], str | None]:
    """Name bone regions: ``{region index: name}`` (every region, ``bone_<n>`` where no name is
    confident; fragments and non-bone regions too) and the side of a single limb or None.
    See :func:`name_bones` for the confidences and reasons."""
    res = name_bones(regions, anatomy=anatomy, body_centre_lps=body_centre_lps)
    names = dict(res.names)
    extra = [i for i in (*res.fragments, *res.dropped) if i not in names]
    n0 = sum(1 for n in names.values() if n.startswith("bone_"))
    for n, i in enumerate(extra, start=n0 + 1):
        names[i] = f"bone_{n}"
    return names, res.side


__all__ = [
    "CONFIDENT",
    "METAL_HU",
    "Naming",
    "RegionInfo",
    "detect_anatomy",
    "name_bones",
    "name_regions",
    "non_bone_reason",
    "region_infos_from_pieces",
    "regions_from_label_map",
]
