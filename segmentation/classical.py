"""Classical (offline, training-free) bone segmentation of a CT into named per-bone labels.

Pipeline (all distances in mm, computed with the true anisotropic voxel spacing):

1. **Beads / small metal**: connected components above ``metal_hu`` smaller than
   ``bead_max_volume_mm3`` are fiducial beads or wires, not bone. A zone around each is
   excluded from the bone mask; the dent this leaves in the bone surface is refilled by a
   local morphological closing of the bone alone.
2. **Bone mask grown from the cortex** (:mod:`.bone_mask`): voxels >= the growth level
   connected to a voxel >= the seed level (reconstruction by dilation, Vincent 1993, IEEE TIP
   2(2)) and within ``grow_max_mm`` of one. The levels are ``bone_high_hu`` / ``bone_low_hu``
   where the image resolves the cortex; where it does not (a thin cortex in 3 mm voxels peaks
   at ~500 HU) both are lowered towards the image's soft tissue by the contrast its cortex
   actually reaches (:func:`~orthonav.segmentation.bone_mask.bone_levels`), so cancellous bone
   and the partial-volume edge are taken.
3. **Boundary at the local edge level** (cortex resolved only): the outer layer of each
   component is re-thresholded between the local cortical peak (grey dilation) and the soft
   tissue around it, instead of at a fixed HU level that moves with blur. Half-way (the full
   width at half maximum) is the surface of a cortex much thicker than the blur; a thinner
   cortex peaks lower and its surface lies higher up its profile (Prevrhal et al. 1999, Phys
   Med Biol 44:751), so the level follows the local peak's depression
   (:func:`edge_fraction_of`, 0.5 to 0.6). Only the outer slope is peeled, never the crest, so
   a cortex one voxel thick is not peeled through. Done again per bone after separation, which
   also peels blurred bridges across narrow joints.
4. **Solid bones**: cavities (marrow, cancellous bone below the threshold) are filled in 3D,
   with each face of the volume as a lid so bones cut by the field of view are solid too. Where
   the cortex is not resolved, one-voxel gaps in it are closed and pores opening through wider
   gaps are filled in the slices of two of the three orientations
   (:func:`~orthonav.segmentation.bone_mask.fill_enclosed_in_planes`; a canal through the bone
   is enclosed in one orientation only and stays open unless its mean HU is above soft tissue:
   cancellous bone, not fluid). There, after the separation, a region without cortex is
   dropped (:func:`~orthonav.segmentation.bone_mask.has_cortex`) and each bone's surface is put
   at the local half maximum (:func:`~orthonav.segmentation.bone_mask.peel_to_half_maximum`).
   Where the cortex is resolved, after the separation, each bone's holes that it encloses once
   closed over by a ball of :data:`PORE_CLOSE_MM` (6 mm), and the thick spaces that closing
   bridges (a sponge, not a joint gap), are filled where they lie deeper than
   :data:`PORE_DEPTH_MM` and are denser than soft tissue (:func:`_deep_inside_closed`): an
   osteoporotic vertebral body darker than the growth level, whose pores open through a thin
   cortex, is otherwise peeled to a shell. Per bone, so no joint space is filled.
   Bumps of bead size left on the surface (beads whose blurred peak stays below
   ``metal_hu``) are removed as the small compact residue of a morphological opening.
5. **Table, cables, noise**: components too thin to contain a ball of ``seed_depth_mm``
   radius or smaller than ``min_bone_volume_mm3`` are dropped.
6. **Separation at joints**: joint spaces blurred shut are found as thin dark sheets (local
   minima across, :func:`joint_valleys`) and cut; then marker-controlled watershed (Beucher &
   Meyer 1993) on the smoothed HU (:func:`_separate_box`), markers = each bone's marrow cavity,
   or, in a component without marrow, cores of the cut mask deeper than ``seed_depth_mm`` (Euclidean
   distance map, Maurer et al. 2003, IEEE TPAMI 25(2)). Two marrow regions of one shaft whose
   marrow pinched off near an end, or anywhere along a thin shaft (a real fibula), are merged
   again (:func:`_merge_split_shafts`, judged on the marrow cavities' axes), and so are neighbouring regions whose interface is nearly as thick
   as the thinner region (a waist, not a joint). Where the result is not all knee bones, bones
   joined across a blurred joint space narrower than the blur (a femoral head in its socket)
   are re-separated (:func:`_split_joined_bones`, on a grid of about 1.5 mm).
7. **Naming** by anatomy (:func:`name_regions`): knee (femur, tibia, fibula, patella), hip
   (hip, femur, sacrum) or a general trunk rule (vertebrae, ribs, humeri, ...), with
   TotalSegmentator class names and ``_left`` / ``_right`` where both sides are present. In a
   limb field of view (knee, hip) a region the rule cannot name is a fragment of a bone (e.g.
   the end of a long bone whose marrow pinched off and that :func:`_merge_split_shafts` did not
   rejoin): it is merged into the bone it touches most, or dropped, with a note in
   :attr:`Segmentation.notes`; it is never reported as a bone.

Cost: after the hysteresis, components smaller than ``min_bone_volume_mm3`` are dropped and
every later pass runs in the bones' bounding box plus a margin; the joint-valley test and the
peel's gradient are evaluated only at the voxels that can change (mask voxels; edge voxels
below the local threshold), the bead halo in each bead's own box. The local passes (peel,
bump opening) run in tiles cropped to the bone in each (:func:`mask_tiles`, same result as on
the whole box) on parallel threads; the separation runs on a grid near
``separation_spacing_mm`` (:func:`_separate`), its watershed on the mask only
(:func:`marker_watershed`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.heap import reusing_freed_memory
from orthonav.core.volume import Volume
from scipy import ndimage as ndi

from .bone_mask import bone_levels, enclosing_pieces, fill_enclosed_in_planes, grow_from_cortex, has_cortex, peel_to_half_maximum
from .naming import CONFIDENT, RegionInfo, name_bones, region_infos_from_pieces, scan_border

ANATOMIES = ("auto", "knee", "hip", "general")


@dataclass(frozen=True)
class Segmentation:
    """What every segmentation backend returns.

    Attributes
    ----------
    labels
        uint8 label map on the CT grid (0 = background), same ``lps_from_ijk`` as the CT.
    table
        Label value -> bone name.
    confidence
        Optional float32 per-voxel confidence in [0, 1] on the same grid, or None.
    notes
        What the backend changed that the user should know (e.g. an unnamed fragment merged
        into its bone or dropped).
    """

    labels: Volume
    table: LabelTable
    confidence: Volume | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassicalParams:
    """Tunable thresholds of :func:`segment_classical` (HU, mm, mm^3).

    ``edge_fraction``: where a resolved cortex's outer surface is put between the soft tissue
    around it (0) and the local cortical peak (1) (:func:`adaptive_refine`). None, the default:
    from the local peak's depression (:func:`edge_fraction_of`), between 0.5 and
    ``edge_fraction_max``, against the image's own thick-cortex level ``cortex_hu`` (set from
    :func:`~orthonav.segmentation.bone_mask.bone_levels`; NaN: 0.5). A number: that fraction
    everywhere (0.5, the half maximum, lies outwards of a thin cortex's surface).
    ``peel_keeps_crest`` (default on): peel only voxels with brighter bone one voxel further in
    along the inward normal, so that a cortex one voxel thick over darker bone (the real
    osteoporotic vertebra of ``ct_abdomen_dicom``) is never peeled through.
    ``benchmarks/bench_surface_bias.py`` compares the settings (README, "Figures on the
    phantoms"). ``surround_hu``: the level around every bone when the whole image has one (a
    bone in air: the air's, set by :func:`segment_classical` from
    :func:`~orthonav.segmentation.bone_mask.bone_levels`); NaN, the default: each region's soft
    tissue is measured on its shell (:func:`adaptive_refine`).

    ``bone_high_hu`` / ``bone_low_hu`` are the cortex seed and growth levels for a CT whose
    cortex is resolved; on a CT where it is not, both are lowered by the contrast its cortex
    reaches (:func:`~orthonav.segmentation.bone_mask.bone_levels`). ``grow_max_mm``: how far
    from a cortex seed the bone may grow (the centre of a lumbar vertebral body is ~20 mm from
    its cortex); it stops growth along a bright organ touching a bone.
    """

    bone_low_hu: float = 180.0
    bone_high_hu: float = 500.0
    metal_hu: float = 2400.0
    bead_max_volume_mm3: float = 150.0
    bead_zone_mm: float = 1.5
    min_bone_volume_mm3: float = 400.0
    seed_depth_mm: float = 1.6
    min_seed_volume_mm3: float = 30.0
    merge_ratio: float = 0.55
    adaptive_boundary: bool = True
    peel_mm: float = 2.0
    peak_radius_mm: float = 2.5
    valley_hu: float = 150.0
    valley_max_mm: float = 3.2
    marrow_max_hu: float = 650.0
    marrow_depth_mm: float = 1.5
    shaft_end_fraction: float = 0.0
    shaft_area_ratio: float = 0.25
    shaft_interface_hu: float = 0.0
    shaft_piece_ratio: float = 0.25
    shaft_through_ratio: float = 0.8
    shaft_through_hu: float = 650.0
    shaft_through_max_mm2: float = 400.0
    shaft_through_valley: float = 0.6
    body_opening_mm: float = 5.0
    min_body_volume_mm3: float = 20000.0
    min_inside_body: float = 0.5
    max_boundary_hu: float = 900.0
    crop_margin_vox: int = 3
    bump_radius_mm: float = 2.0
    bump_max_volume_mm3: float = 25.0
    bump_max_extent_mm: float = 7.0
    surround_hu: float = float("nan")
    separation_spacing_mm: float = 1.2
    grow_max_mm: float = 20.0
    edge_fraction: float | None = None
    edge_fraction_max: float = 0.6
    peel_keeps_crest: bool = True
    cortex_hu: float = float("nan")

    def __post_init__(self) -> None:
        if self.edge_fraction is not None and not 0.0 < self.edge_fraction < 1.0:
            raise InputError(None, f"edge_fraction must lie between 0 and 1 (the soft tissue and the cortical peak), got {self.edge_fraction}")
        if not 0.5 <= self.edge_fraction_max < 1.0:
            raise InputError(None, f"edge_fraction_max must lie in [0.5, 1), got {self.edge_fraction_max}")


def _img(array: NDArray, spacing_ijk: NDArray) -> sitk.Image:
    im = sitk.GetImageFromArray(np.ascontiguousarray(array))
    im.SetSpacing([float(s) for s in spacing_ijk])
    return im


def _arr(image: sitk.Image) -> NDArray:
    return sitk.GetArrayFromImage(image)


def _ball_radius_vox(radius_mm: float, spacing_ijk: NDArray) -> list[int]:
    return [max(1, int(round(radius_mm / s))) for s in spacing_ijk]


def _validate_ct(ct: Volume) -> None:
    a = ct.array_zyx
    if a.ndim != 3:
        raise InputError(None, f"CT must be a 3D volume, got {a.ndim}D")
    if min(a.shape) < 3:
        raise InputError(None, f"CT is too small to segment: shape (k, j, i) = {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(None, f"CT voxels must be numbers (HU), got dtype {a.dtype}")
    if not np.all(np.isfinite(ct.lps_from_ijk)) or abs(np.linalg.det(ct.lps_from_ijk[:3, :3])) < 1e-9:
        raise InputError(None, "CT geometry (lps_from_ijk) is degenerate or not finite")


def _bead_mask(ct_zyx: NDArray, spacing: NDArray, p: ClassicalParams) -> tuple[NDArray, list[tuple[slice, ...]]]:
    """Boolean mask of the exclusion zone around small metal objects, and their bounding boxes."""
    metal = ct_zyx >= p.metal_hu
    if not metal.any():
        return np.zeros(ct_zyx.shape, bool), []
    voxel_mm3 = float(np.prod(spacing))
    mb = _bbox(metal, 0)  # metal is sparse: its components are labelled in its own box
    lab = np.zeros(ct_zyx.shape, np.int32)
    lab[mb] = _arr(sitk.ConnectedComponent(_img(metal[mb].astype(np.uint8), spacing), False))  # face-connected
    n = int(lab[mb].max())
    sizes = np.bincount(lab[mb][metal[mb]], minlength=n + 1)[1:] * voxel_mm3
    small = np.flatnonzero(sizes <= p.bead_max_volume_mm3) + 1
    if small.size == 0:
        return np.zeros(ct_zyx.shape, bool), []
    keep = np.zeros(n + 1, bool)
    keep[small] = True
    found = [None if b is None else tuple(slice(s_.start + o.start, s_.stop + o.start) for s_, o in zip(b, mb)) for b in ndi.find_objects(lab[mb])]
    boxes = [b for i, b in enumerate(found, start=1) if b is not None and keep[i]]
    # Zone: bead grown by its blur halo (distance in mm, anisotropic spacing respected),
    # computed in each bead's own box grown by the halo (beads are small and sparse).
    zone = np.zeros(ct_zyx.shape, bool)
    halo = [int(np.ceil(p.bead_zone_mm / s)) + 1 for s in spacing[::-1]]
    for i, b in enumerate(found, start=1):
        if b is None or not keep[i]:
            continue
        g = tuple(slice(max(0, s_.start - h), min(dim, s_.stop + h)) for s_, h, dim in zip(b, halo, ct_zyx.shape))
        bead = np.pad((lab[g] == i).astype(np.uint8), 1)  # padded so the box edge is outside
        dist = _arr(sitk.SignedMaurerDistanceMap(_img(bead, spacing), insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
        zone[g] |= dist[1:-1, 1:-1, 1:-1] <= p.bead_zone_mm
    return zone, boxes


#: Thickness (mm along k) of the slabs in which local operations (:func:`adaptive_refine`,
#: :func:`remove_bumps`) run: each slab is cropped to the mask's extent in it, so a long bone
#: lying obliquely in the volume costs its own volume, not its bounding box's. Each slab also
#: repeats its margins along k: with 40 mm slabs of 2.4 mm slices (17 slices, margins of 3-4 on
#: each side) that was 35-47 % more voxels; at 80 mm, 18-24 %.
SLAB_MM = 80.0
#: Width (mm along j and i) of the tiles each slab is cut into (:func:`mask_tiles`), each tile
#: cropped to the mask near it: a pelvis is a ring whose box in a slab is mostly the pelvic
#: cavity. On the 512 x 512 x 400 hip CT (0.82 x 0.65 x 0.75 mm) the crops of the three peels
#: held 31, 29 and 21 million voxels as whole slabs, 24, 23 and 19 million as tiles of 80 mm
#: (the peels and the bump removal 6.3 s -> 5.0-5.5 s; tiles of 45-60 mm cost more per tile
#: than their smaller crops saved in the bump removal).
TILE_MM = 80.0
#: Width (mm) of the shell of soft tissue around a region whose median HU is its soft-tissue
#: level in :func:`adaptive_refine`: the voxels of no region within this Euclidean distance.
SHELL_MM = 2.0


def mask_tiles(mask: NDArray, spacing: NDArray, margin_k: int, margin_ji: tuple[int, int]) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """Yield ``(ext, core)`` for tiles covering ``mask``'s voxels and their neighbourhoods:
    k-slabs of :data:`SLAB_MM`, each cut in j and i into tiles of :data:`TILE_MM`.

    A tile's ``core`` (k, j, i slices into the ``ext`` crop) is the part of the tile within the
    margins of a mask voxel (along each axis: ``margin_k`` slices, ``margin_ji`` rows and
    columns); ``ext`` (k, j, i slices into ``mask``) is that core grown by the margins. The
    cores partition the voxels within the margins of the mask, so an operator whose value at a
    voxel depends only on voxels within the margins gives, on the cores, what it gives on the
    whole array. ``spacing`` is the voxel spacing (i, j, k) in mm; the margins are in voxels.
    """
    thick = max(8, round(SLAB_MM / float(spacing[2])))
    tile_j, tile_i = (max(16, round(TILE_MM / float(s_))) for s_ in (spacing[1], spacing[0]))
    ks = np.flatnonzero(mask.any(axis=(1, 2)))
    if ks.size == 0:
        return
    nk, nj, ni = mask.shape
    mj, mi = margin_ji
    last = min(nk, int(ks[-1]) + 1 + margin_k)
    for c0 in range(max(0, int(ks[0]) - margin_k), last, thick):
        c1 = min(last, c0 + thick)
        e0, e1 = max(0, c0 - margin_k), min(nk, c1 + margin_k)
        plane = mask[e0:e1].any(axis=0)  # (j, i): the slab's voxels within margin_k of the core
        js = np.flatnonzero(plane.any(axis=1))
        if js.size == 0:
            continue
        is_ = np.flatnonzero(plane.any(axis=0))
        for t0 in range(max(0, int(js[0]) - mj), min(nj, int(js[-1]) + 1 + mj), tile_j):
            for u0 in range(max(0, int(is_[0]) - mi), min(ni, int(is_[-1]) + 1 + mi), tile_i):
                t1, u1 = min(nj, t0 + tile_j), min(ni, u0 + tile_i)
                near = plane[max(0, t0 - mj) : t1 + mj, max(0, u0 - mi) : u1 + mi]
                if not near.any():
                    continue
                rows, cols = np.flatnonzero(near.any(axis=1)) + max(0, t0 - mj), np.flatnonzero(near.any(axis=0)) + max(0, u0 - mi)
                r0, r1 = max(t0, int(rows[0]) - mj), min(t1, int(rows[-1]) + 1 + mj)
                q0, q1 = max(u0, int(cols[0]) - mi), min(u1, int(cols[-1]) + 1 + mi)
                if r1 <= r0 or q1 <= q0:
                    continue
                ext = (slice(e0, e1), slice(max(0, r0 - mj), min(nj, r1 + mj)), slice(max(0, q0 - mi), min(ni, q1 + mi)))
                yield ext, tuple(slice(c - x.start, d - x.start) for (c, d), x in zip(((c0, c1), (r0, r1), (q0, q1)), ext))


#: Radius (voxels) of ``ndi.gaussian_filter(.., 0.7)`` (truncate 4): int(4 * 0.7 + 0.5).
_SMOOTH_RADIUS = 3


def _workers() -> int:
    """Threads for independent slabs: SimpleITK's thread count (its filters, numpy and
    scipy.ndimage release the GIL, so slabs run in parallel on several cores)."""
    return max(1, min(os.cpu_count() or 1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()))


def _map(fn, items: list) -> list:
    """``[fn(x) for x in items]``, on :func:`_workers` threads when there are several."""
    n = min(_workers(), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, items))


def shell_mm(spacing: NDArray) -> float:
    """Reach (mm) of the soft-tissue shell of :func:`adaptive_refine`: :data:`SHELL_MM`, or the
    largest voxel spacing when coarser. With 2 mm alone a grid coarser than 2 mm along an axis
    has no shell voxel along it, and one coarser along every axis (a 2.3 mm synthetic draw) none
    at all: the soft-tissue level then fell back to 0 HU and the shipped U-Net's peels cut
    less (synthetic draws' hip bones 0.828 -> 0.794, sacra 0.777 -> 0.616, 2026-12-06, found
    a session later); before, a ball of at least one voxel along each axis."""
    return max(SHELL_MM, float(np.max(spacing)))


def _peel_slab(
    comp: NDArray, vals: NDArray, outside_core: NDArray, core: tuple[slice, ...], spacing: NDArray, p: ClassicalParams, peak_size: list[int], sm: NDArray | None = None
) -> tuple[NDArray, tuple[tuple[NDArray, ...], NDArray, NDArray] | None]:
    """One tile of :func:`adaptive_refine`: the HU of the soft-tissue shell in the core, and the
    core's edge voxels that may be peeled (indices in the tile's crop, their HU and local peak);
    ``outside_core`` marks the core's voxels in no region. ``sm`` is ``vals`` smoothed by
    ``ndi.gaussian_filter(.., 0.7)`` (computed here when None)."""
    # Signed distance (mm) to the region's surface voxels: 0 on them, negative outside.
    depth = _arr(sitk.SignedMaurerDistanceMap(_img(comp.astype(np.uint8), spacing), insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    # The shell: voxels of no region within shell_mm(spacing) of the region (Euclidean, mm).
    d_core = depth[core]
    # (1 um of slack: the float32 map puts a neighbour one spacing away at e.g. -2.4000015 mm)
    around = vals[core][(d_core < 0.0) & (d_core >= -(shell_mm(spacing) + 1e-3)) & outside_core]
    del d_core
    edge = np.zeros(comp.shape, bool)
    edge[core] = comp[core] & (depth[core] <= p.peel_mm)
    # Candidates: edge voxels below the highest threshold possible (the threshold itself
    # needs the soft-tissue level of the whole region, known after the last slab).
    cand = np.nonzero(edge & (vals < p.max_boundary_hu))
    if cand[0].size == 0:
        return around, None
    peak = box_max(np.where(comp, vals, np.float32(-1024.0)).astype(np.float32), [(w - 1) // 2 for w in peak_size])
    # Only the outer slope of the cortex is peeled: there HU rises going inwards (the HU
    # gradient points along the depth gradient). Marrow under a thin or blurred cortex lies
    # on the inner slope (HU falls inwards) and is kept. With ``p.peel_keeps_crest`` the voxel
    # one step further in along the inward normal (the depth gradient) must also be brighter: a
    # cortex one voxel thick over darker bone (an osteoporotic vertebra's shell) has a central
    # difference that points inwards (the bone behind it is brighter than the soft tissue
    # before it) but nothing brighter behind it; peeled, the shell would open and the bone it
    # encloses be lost.
    if sm is None:
        sm = ndi.gaussian_filter(vals.astype(np.float32), 0.7)
    # Rounded to 1 um: the map's float error (~1e-5 mm, which depends on the crop) must
    # not decide the sign of a gradient that is zero (equidistant neighbours).
    depth = np.round(depth.astype(np.float32, copy=False), 3)
    rising_inwards = np.zeros(cand[0].shape, np.float32)
    normal = np.zeros((3, cand[0].size), np.float32) if p.peel_keeps_crest else None  # inward, voxels per mm (k, j, i)
    for ax, sp_ in enumerate(spacing[::-1]):
        # Central differences, one-sided at the region box's faces: what np.gradient computes.
        lo = np.maximum(cand[ax] - 1, 0)
        hi = np.minimum(cand[ax] + 1, comp.shape[ax] - 1)
        den = (hi - lo).astype(np.float32)
        at_lo = tuple(lo if a == ax else c for a, c in enumerate(cand))
        at_hi = tuple(hi if a == ax else c for a, c in enumerate(cand))
        gi = (sm[at_hi] - sm[at_lo]) / den
        gd = (depth[at_hi] - depth[at_lo]) / den
        rising_inwards += gi * gd / np.float32(sp_ * sp_)
        if normal is not None:
            normal[ax] = gd / np.float32(sp_ * sp_)  # d(depth)/dx (mm per mm) / spacing: voxels per mm
    keep = rising_inwards > 0
    if normal is not None:
        # One voxel along the inward normal: the step (in voxels) of unit length in index space.
        length = np.sqrt((normal * normal).sum(axis=0))
        has_normal = length > 1e-6
        ahead = ndi.map_coordinates(sm, np.stack(cand).astype(np.float32) + normal / np.where(has_normal, length, 1.0), order=1, mode="nearest")
        keep &= has_normal & (ahead > sm[cand])
    return around, (tuple(c[keep] for c in cand), vals[cand][keep], peak[cand][keep])


def edge_fraction_of(peak_hu: NDArray, soft_hu: float, cortex_hu: float, most: float) -> NDArray:
    """Where a blurred cortex's outer surface lies, as a fraction of its local contrast (from the
    soft tissue, 0, to its peak, 1), from how far its peak falls short of a thick cortex.

    A cortex of thickness ``w`` blurred by a Gaussian of width ``s`` peaks at ``rho = erf(a)`` of
    a thick cortex's contrast (``a = w / (2 sqrt(2) s)``), and its outer surface lies at
    ``erf(2 a) / 2`` of that contrast, so at ``erf(2 a) / (2 erf(a))`` of its own: 0.5 (the half
    maximum) for a thick cortex, rising towards 1 as it thins (Prevrhal et al. 1999, Phys Med
    Biol 44:751: the half maximum overestimates thin cortices). ``rho`` is measured against the
    image's own thick-cortex level ``cortex_hu`` (the 95th percentile of its dense voxels,
    :func:`~orthonav.segmentation.bone_mask.bone_levels`), so neither the blur nor the cortex's
    density needs to be known. The model ignores the marrow behind the cortex and the noise on
    the peak, so the fraction is capped at ``most`` (0.6: 0.65 peeled the full hip phantom's thin
    iliac cortex too far). Returns 0.5 where ``cortex_hu`` is not above ``soft_hu`` or is NaN.

    ``peak_hu`` (HU, array), ``soft_hu`` and ``cortex_hu`` (HU); returns an array like ``peak_hu``.
    """
    from scipy.special import erf, erfinv

    peak = np.asarray(peak_hu, np.float64)
    if not np.isfinite(cortex_hu) or cortex_hu <= soft_hu + 1.0:
        return np.full(peak.shape, 0.5)
    rho = np.clip((peak - soft_hu) / (cortex_hu - soft_hu), 0.05, 0.999)
    return np.clip(erf(2.0 * erfinv(rho)) / (2.0 * rho), 0.5, most)


def peel_margins(spacing: NDArray, p: ClassicalParams, grow: list[int]) -> tuple[int, int, int]:
    """Tile margins (k, j, i voxels) of :func:`adaptive_refine`: the shell and peak radii
    (``grow``, k, j, i), the smoothing radius (+1 for the gradient's neighbour), and the depth
    the distance map must get right: a candidate lies within ``p.peel_mm`` of the outside and
    its gradient reads a neighbour one voxel further along any axis, up to ``p.peel_mm`` + the
    largest spacing deep, whose nearest outside voxel may lie along any other axis; + 2 voxels
    (the neighbour's own step, and rounding). A tile may cut the region, so this holds on every
    axis. ``spacing`` is (i, j, k) in mm."""
    reach = p.peel_mm + float(np.max(spacing))
    return tuple(max(g, _SMOOTH_RADIUS + 1, int(np.ceil(reach / s_)) + 2) for g, s_ in zip(grow, spacing[::-1]))  # type: ignore[return-value]


def adaptive_refine(
    ct_zyx: NDArray, regions: NDArray, spacing: NDArray, p: ClassicalParams, smoothed: NDArray | None = None, near: NDArray | None = None
) -> NDArray:
    """Peel each region's outer layer down to its local edge level.

    For every region (its own mask; other regions count as outside, so a blurred bridge at a
    joint is peeled too), voxels within ``p.peel_mm`` of its outside, on the outer slope of the
    cortex (HU rising inwards; with ``p.peel_keeps_crest`` also brighter one voxel further in
    along the inward normal, so a crest is never peeled), are kept only if their HU reaches the
    edge level: ``p.edge_fraction`` (None, the default: :func:`edge_fraction_of`; 0.5: the half maximum) of
    the way from the soft tissue around the region (median HU of the voxels of no region within
    :data:`SHELL_MM` of it, clamped to -200..150 HU; ``p.surround_hu`` when set: a bone in air,
    whose shell lies in the blurred skirt of its edge, -170 to -850 HU, and whose clamped level
    put its surface 0.3-0.6 mm inside a 4 mm cortex) to the local bone
    peak (grey dilation, box kernel, of the region's HU over ``p.peak_radius_mm``: the cortex
    next to this edge). The inside stays solid; cavities the peel opens behind an intact
    cortex are filled again by the caller. Regions smaller than ``p.min_bone_volume_mm3`` are
    left as they are (they are dropped later anyway).

    Every operation here is local (distance to the outside only up to ``p.peel_mm`` plus a
    voxel, filters of a few voxels), so each region is processed in tiles (:func:`mask_tiles`),
    each cropped to the region within it plus margins wider than those neighbourhoods: the
    result is the same as on the region's whole box.

    Parameters
    ----------
    regions
        int label array (0 = background), same shape as ``ct_zyx``.
    smoothed
        ``ct_zyx`` smoothed by ``ndi.gaussian_filter(.., 0.7)`` (float32, same shape), when the
        caller has it (:func:`segment_classical` smooths once for its three peels); otherwise
        each slab is smoothed on its own crop, whose margins make the two agree except where a
        region's box, grown by the shell and peak radii, is narrower than the smoothing.
    near
        bool mask (same shape) of the voxels that may be peeled, or None (all). Only the tiles
        around a region's voxels in ``near`` are processed, and the soft-tissue level is that
        of the region's shell in those tiles (:func:`_split_joined_bones` peels only the joint
        spaces it opened).

    Returns
    -------
    The refined int label array.
    """
    out = regions.copy()
    min_vox = p.min_bone_volume_mm3 / float(np.prod(spacing))
    shell_r = [int(np.ceil(shell_mm(spacing) / s_ - 1e-9)) for s_ in spacing]  # the shell's reach in voxels (i, j, k)
    peak_r = _ball_radius_vox(p.peak_radius_mm, spacing)
    peak_size = [2 * r + 1 for r in peak_r[::-1]]
    grow = [max(a, b) + 1 for a, b in zip(shell_r, peak_r)][::-1]
    margin_k, mj, mi = peel_margins(spacing, p, grow)
    margin_ji = (mj, mi)
    for idx, box in enumerate(ndi.find_objects(regions), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - g), min(dim, s.stop + g)) for s, g, dim in zip(box, grow, regions.shape))
        comp_g = regions[grown] == idx
        if np.count_nonzero(comp_g) < min_vox:
            continue
        lab_g, vals_g = regions[grown], ct_zyx[grown]
        sm_g = None if smoothed is None else smoothed[grown]
        near_g = None if near is None else near[grown]
        seeds = comp_g if near_g is None else comp_g & near_g
        if near_g is not None and not seeds.any():
            continue

        def slab_work(
            ext_core: tuple[tuple[slice, ...], tuple[slice, ...]],
            comp_g: NDArray = comp_g,
            vals_g: NDArray = vals_g,
            lab_g: NDArray = lab_g,
            sm_g: NDArray | None = sm_g,
            near_g: NDArray | None = near_g,
        ) -> tuple[NDArray, tuple | None]:
            ext, core = ext_core
            sm = None if sm_g is None else sm_g[ext]
            around, found = _peel_slab(comp_g[ext], vals_g[ext], lab_g[ext][core] == 0, core, spacing, p, peak_size, sm)
            if found is None:
                return around, None
            where, hu_c, peak_c = found
            where = tuple(w + s_.start for w, s_ in zip(where, ext))
            if near_g is not None:
                ok = near_g[where]
                where, hu_c, peak_c = tuple(w[ok] for w in where), hu_c[ok], peak_c[ok]
            return around, (where, hu_c, peak_c)

        results = _map(slab_work, list(mask_tiles(seeds, spacing, margin_k, margin_ji)))
        around_hu = [a for a, _f in results]
        found = [f for _a, f in results if f is not None]
        hu = np.concatenate(around_hu) if around_hu else np.zeros(0, np.float32)
        soft = float(np.median(hu)) if hu.size else 0.0
        soft = min(max(soft, -200.0), 150.0) if np.isnan(p.surround_hu) else p.surround_hu
        sub = out[grown]
        for where, hu_c, peak_c in found:
            f = p.edge_fraction if p.edge_fraction is not None else edge_fraction_of(peak_c, soft, p.cortex_hu, p.edge_fraction_max)
            thr = np.clip(soft + f * (peak_c - soft), p.bone_low_hu, p.max_boundary_hu)
            sel = hu_c < thr
            sub[tuple(w[sel] for w in where)] = 0
        out[grown] = sub
    return out


def _body_mask(ct_zyx: NDArray, spacing: NDArray, p: ClassicalParams) -> NDArray:
    """Soft-tissue body (HU > -400) after an opening that removes the table and thin cables.

    Computed on a grid sub-sampled to ~2 mm; returns a mask on that coarse grid (use
    :func:`_coarse_step` to index it).
    """
    step = _coarse_step(spacing)
    coarse = ct_zyx[:: step[0], :: step[1], :: step[2]] > -400
    cs = spacing * np.array(step[::-1])
    r = [max(1, int(round(p.body_opening_mm / s))) for s in cs]
    im = _img(coarse.astype(np.uint8), cs)
    opened = sitk.BinaryMorphologicalOpening(im, r, sitk.sitkBall)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(opened), minimumObjectSize=int(p.min_body_volume_mm3 / np.prod(cs)))
    body = sitk.GetArrayFromImage(cc) > 0
    body = _arr(sitk.BinaryDilate(_img(body.astype(np.uint8), cs), [max(1, int(round(4.0 / s))) for s in cs], sitk.sitkBall))
    return body.astype(bool)


def _drop_small_components(mask: NDArray, spacing: NDArray, min_volume_mm3: float) -> NDArray:
    """``mask`` without its 26-connected components smaller than ``min_volume_mm3``."""
    min_vox = max(1, int(np.ceil(min_volume_mm3 / float(np.prod(spacing)))))
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(_img(mask.astype(np.uint8), spacing), True), minimumObjectSize=min_vox)
    return _arr(cc) > 0


def _shift_boxes(boxes: list[tuple[slice, ...]], inner: tuple[slice, ...]) -> list[tuple[slice, ...]]:
    """Boxes (k, j, i slices) re-expressed inside the sub-box ``inner``; boxes outside it are dropped."""
    out = []
    for b in boxes:
        sh = tuple(
            slice(max(0, s_.start - i.start), min(i.stop - i.start, s_.stop - i.start)) for s_, i in zip(b, inner)
        )
        if all(x.stop > x.start for x in sh):
            out.append(sh)
    return out


def _air_body_mask(ct_zyx: NDArray, spacing: NDArray, p: ClassicalParams) -> NDArray:
    """What stands for the body around a bone in air (:func:`_body_mask`'s grid): that body,
    of any piece of at least a bone's volume, and the bones in air that enclose something
    (:func:`~orthonav.segmentation.bone_mask.enclosing_pieces`, dilated as the body is), so that
    a thin table or a cable in air is still dropped while no bone is. The body's least volume
    (20 ml) dropped a bone in air smaller than that, and its opening a thin-walled dry bone
    ("no bone found", until 2026-12-07)."""
    body = _body_mask(ct_zyx, spacing, replace(p, min_body_volume_mm3=min(p.min_body_volume_mm3, p.min_bone_volume_mm3)))
    step = _coarse_step(spacing)
    cs = spacing * np.array(step[::-1])
    bones = enclosing_pieces(ct_zyx[:: step[0], :: step[1], :: step[2]], cs[::-1])
    return body | _arr(sitk.BinaryDilate(_img(bones.astype(np.uint8), cs), [max(1, int(round(4.0 / s))) for s in cs], sitk.sitkBall)).astype(bool)


def _coarse_step(spacing: NDArray) -> tuple[int, int, int]:
    """Sub-sampling step along (k, j, i) giving voxels of about 2 mm."""
    return tuple(max(1, int(2.0 // s)) for s in spacing[::-1])  # type: ignore[return-value]


def _repair_bead_dents(bone: NDArray, zone: NDArray, boxes: list[tuple[slice, ...]], spacing: NDArray) -> NDArray:
    """Refill the bone surface under each removed bead by a local closing of the bone alone."""
    if not boxes:
        return bone
    out = bone.copy()
    margin = _ball_radius_vox(6.0, spacing)[::-1]
    radius = _ball_radius_vox(3.0, spacing)
    for box in boxes:
        grown = tuple(slice(max(0, s.start - m), min(dim, s.stop + m)) for s, m, dim in zip(box, margin, bone.shape))
        local = bone[grown]
        if not local.any():
            continue
        padded = np.pad(local, [(r, r) for r in radius[::-1]])
        closed = _arr(sitk.BinaryMorphologicalClosing(_img(padded.astype(np.uint8), spacing), radius, sitk.sitkBall)).astype(bool)
        closed = closed[tuple(slice(r, r + n) for r, n in zip(radius[::-1], local.shape))]
        out[grown] |= closed & zone[grown]
    return out


def remove_bumps(bone: NDArray, spacing: NDArray, p: ClassicalParams) -> NDArray:
    """Remove small compact bumps sitting on the bone surface (fiducial beads blurred below the
    metal threshold): the residue of a morphological opening (Serra 1982) with a ball of
    ``bump_radius_mm``, kept only where it forms a blob no larger than a bead.

    ``bone`` is a boolean mask (k, j, i), ``spacing`` the voxel spacing (i, j, k) in mm;
    returns the mask without the bumps (``bone`` itself when it has none)."""
    if p.bump_radius_mm <= 0 or not bone.any():
        return bone
    r = _ball_radius_vox(p.bump_radius_mm, spacing)
    pad = [(x, x) for x in r[::-1]]
    residue = np.zeros(bone.shape, bool)
    # The opening at a voxel depends on the mask within twice the ball's radius: done in tiles
    # with that margin (each zero-padded like the whole box would be where it meets the box's faces).
    def slab_residue(ext_core: tuple[tuple[slice, ...], tuple[slice, ...]]) -> None:
        ext, core = ext_core
        sub = bone[ext]
        opened = _arr(sitk.BinaryMorphologicalOpening(_img(np.pad(sub, pad).astype(np.uint8), spacing), r, sitk.sitkBall)).astype(bool)
        opened = opened[tuple(slice(x, x + n) for x, n in zip(r[::-1], sub.shape))]
        residue[ext][core] = sub[core] & ~opened[core]  # cores are disjoint: no two threads write one voxel

    _map(slab_residue, list(mask_tiles(bone, spacing, 2 * r[2] + 1, (2 * r[1] + 1, 2 * r[0] + 1))))
    lab = _arr(sitk.ConnectedComponent(_img(residue.astype(np.uint8), spacing), True))
    n = int(lab.max())
    if n == 0:
        return bone
    # A blob's size and extent (its bounding box) decide; all blobs are measured at once (a
    # hip CT's residue holds ~7,600 of them).
    boxes = ndi.find_objects(lab)
    size_mm3 = np.bincount(lab[residue].astype(np.int64), minlength=n + 1)[1:] * float(np.prod(spacing))
    ext_mm = np.array([[np.inf] * 3 if b is None else [s_.stop - s_.start for s_ in b] for b in boxes], float) * spacing[::-1]
    bumps = np.flatnonzero((size_mm3 <= p.bump_max_volume_mm3) & (np.linalg.norm(ext_mm, axis=1) <= p.bump_max_extent_mm))
    out = bone.copy()
    for idx in bumps:
        box = boxes[idx]
        out[box] &= lab[box] != idx + 1
    return out


def fill_cavities(mask: NDArray, *, lids: bool = True) -> NDArray:
    """Fill enclosed cavities in 3D, treating each face of the volume as a lid.

    Each face of the box is closed by its own 2D hole-filled slice before the 3D fill, so a
    hollow bone cut open by the field of view (a rib or shaft leaving the scan) is still
    filled, while spaces open to the outside inside the volume are not. Cavities lie inside the
    mask's bounding box, so the work is done there (the box's faces are the volume's faces
    wherever the mask reaches them, so the lids are the same). With ``lids=False`` only what the
    mask encloses inside the volume is filled (a ring the scan cuts at both ends, such as a
    vertebral arch around its canal, keeps its lumen).
    """
    out = mask.copy()
    if not mask.any():
        return out
    box = _bbox(mask, 1)
    out[box] = _fill_cavities_box(mask[box], lids=lids)
    return out


def _fill_cavities_box(mask: NDArray, *, lids: bool = True) -> NDArray:
    padded = np.pad(mask, 1)
    for axis in range(3 if lids else 0):
        for src_i, dst_i in ((1, 0), (-2, -1)):
            face = np.take(padded, src_i, axis=axis)
            lid = ndi.binary_fill_holes(face) & ~face
            idx = [slice(None)] * 3
            idx[axis] = dst_i
            padded[tuple(idx)] |= lid
    # Cavities: face-connected background components not reaching the border (what
    # BinaryFillhole finds, by one connected-component pass instead of a reconstruction).
    cc = sitk.ConnectedComponentImageFilter()
    cc.SetFullyConnected(False)
    image = cc.Execute(sitk.GetImageFromArray((~padded).view(np.uint8)))
    bg = sitk.GetArrayViewFromImage(image)  # a view of ``image``'s buffer: used only while ``image`` lives here
    faces = [bg[0], bg[-1], bg[:, 0], bg[:, -1], bg[:, :, 0], bg[:, :, -1]]
    outer = np.unique(np.concatenate([f.ravel() for f in faces]))
    outer = outer[outer > 0]
    n = int(cc.GetObjectCount())
    if outer.size == n:  # every background component reaches the border: no cavity
        return mask.copy()
    inner = (slice(1, -1),) * 3
    if outer.size == 1:  # the common case: one outer background
        return mask | ((bg[inner] != 0) & (bg[inner] != outer[0]))
    cavity = np.ones(n + 1, bool)
    cavity[outer] = False
    cavity[0] = False
    return cavity[bg[inner]] | mask


#: The 13 neighbour directions (k, j, i) of a 26-neighbourhood, one per +/- pair.
_DIRECTIONS = [d for d in np.ndindex(3, 3, 3) if d > (1, 1, 1)]


def joint_valleys(ct_zyx: NDArray, mask: NDArray, spacing: NDArray, p: ClassicalParams) -> NDArray:
    """Voxels of ``mask`` darker by ``valley_hu`` than both neighbours at +/- r along some direction.

    A joint space blurred shut is a thin dark sheet between two bright cortices: a local
    minimum across the sheet (the dark-sheet response of Descoteaux et al. 2005, "Bone
    enhancement filtering", MICCAI, computed here by finite offsets instead of a Hessian). The
    offsets span at most ``valley_max_mm`` so wide dark regions (marrow) do not respond.
    """
    valley = np.zeros(mask.shape, bool)
    if not mask.any():
        return valley
    # Evaluated only at the mask's voxels, by flat-index gathers in the mask's bounding box
    # (padded with -1024 HU as outside the image): no full-volume shifted copies.
    pad = 2
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    grown = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, mask.shape))
    a = np.pad(ct_zyx[grown].astype(np.float32), pad, constant_values=-1024.0).ravel()
    m = np.pad(mask[grown], pad)
    strides = np.array([m.shape[1] * m.shape[2], m.shape[2], 1], dtype=np.int64)
    idx = np.flatnonzero(m)
    raised = a[idx] + np.float32(p.valley_hu)  # a neighbour must be brighter than this
    hit = np.zeros(idx.shape, bool)
    for d in _DIRECTIONS:
        step = np.array(d) - 1
        for r in (1, 2):
            if r > 1 and np.linalg.norm(step * r * spacing[::-1]) > p.valley_max_mm:
                continue
            o = int(step @ strides) * r
            hit |= (a[idx + o] > raised) & (a[idx - o] > raised)
    m.ravel()[idx] = hit  # m is a fresh array: reuse it for the answer
    inner = tuple(slice(pad, n - pad) for n in m.shape)
    valley[grown] = m[inner]
    return valley


def separation_step(spacing: NDArray, p: ClassicalParams) -> tuple[int, int, int]:
    """Whole-voxel sub-sampling step (k, j, i) for :func:`_separate`: along each axis the step
    whose coarse spacing is nearest to ``p.separation_spacing_mm`` (1 = the CT's own spacing; 1
    on every axis coarser than 0.8 mm with the default 1.2 mm)."""
    if p.separation_spacing_mm <= 0:
        return (1, 1, 1)
    return tuple(max(1, int(round(p.separation_spacing_mm / s_))) for s_ in spacing[::-1])  # type: ignore[return-value]


def _bbox(mask: NDArray, pad: int) -> tuple[slice, ...]:
    """Bounding box (k, j, i slices) of the non-empty ``mask`` grown by ``pad`` voxels, clipped
    to the array (from its projections: no label image of the whole array)."""
    out = []
    for ax, n_ in enumerate(mask.shape):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        out.append(slice(max(0, int(idx[0]) - pad), min(n_, int(idx[-1]) + 1 + pad)))
    return tuple(out)


def _separate(mask: NDArray, spacing: NDArray, p: ClassicalParams, ct_zyx: NDArray) -> NDArray:
    """Split ``mask`` into bones (:func:`_separate_box`); returns region labels (int32).

    Runs in the mask's bounding box. On a grid finer than ``p.separation_spacing_mm`` (a
    512 x 512 knee CT at 0.3-0.4 mm in plane) the separation, which only decides *which* bone a
    voxel belongs to, runs on the grid sub-sampled by whole steps (:func:`separation_step`):
    mask by "any voxel of the block" (so every bone voxel's block is labelled), HU by block
    mean. Each voxel of ``mask`` takes its block's region; the boundaries of each bone are then
    set at full resolution by the caller (:func:`adaptive_refine`). Where two bones share a
    block the interface is placed to within one coarse voxel.
    """
    regions = np.zeros(mask.shape, np.int32)
    if not mask.any():
        return regions
    box = _bbox(mask, _SMOOTH_RADIUS + 1)  # distances exact, smoothing as on the whole box
    step = separation_step(spacing, p)
    if step == (1, 1, 1):
        regions[box] = _separate_box(mask[box], spacing, p, ct_zyx[box])
        return regions
    m = mask[box]
    r_c = _separate_box(block_max(m, step), spacing * np.array(step[::-1], float), p, block_mean(ct_zyx[box], step))
    sub = regions[box]
    sub[m] = from_blocks(r_c, m, step)
    return regions


def block_max(a: NDArray, step: tuple[int, int, int]) -> NDArray:
    """``a`` on the grid sub-sampled by whole ``step`` (k, j, i): each block's maximum (for a
    mask, "any voxel of the block"; for labels, one label present in it). Zero-padded."""
    padded = np.pad(a, [(0, -n % s_) for n, s_ in zip(a.shape, step)])
    out = np.zeros(tuple(n // s_ for n, s_ in zip(padded.shape, step)), a.dtype)
    for o in np.ndindex(*step):  # strided views: no copies of the array
        np.maximum(out, padded[tuple(slice(a_, None, s_) for a_, s_ in zip(o, step))], out=out)
    return out


def block_mean(a: NDArray, step: tuple[int, int, int]) -> NDArray[np.float32]:
    """``a`` (HU) on the grid sub-sampled by whole ``step`` (k, j, i): each block's mean
    (float32; the last partial block is padded by repeating the edge)."""
    padded = np.pad(a.astype(np.float32, copy=False), [(0, -n % s_) for n, s_ in zip(a.shape, step)], mode="edge")
    out = np.zeros(tuple(n // s_ for n, s_ in zip(padded.shape, step)), np.float32)
    offsets = list(np.ndindex(*step))
    for o in offsets:
        out += padded[tuple(slice(a_, None, s_) for a_, s_ in zip(o, step))]
    return out / np.float32(len(offsets))


def from_blocks(coarse: NDArray, mask: NDArray, step: tuple[int, int, int]) -> NDArray:
    """The value of each voxel of ``mask`` (fine grid) taken from its block in ``coarse`` (the
    grid of :func:`block_max` by ``step``); 1-D, in the order of ``np.nonzero(mask)``."""
    kji = np.nonzero(mask)
    return coarse[tuple(c // s_ for c, s_ in zip(kji, step))]


def up_blocks(coarse: NDArray, mask: NDArray, step: tuple[int, int, int]) -> NDArray:
    """:func:`from_blocks` as an array: ``coarse`` (the grid of :func:`block_max` by ``step``)
    back on the fine grid of ``mask``, each voxel of ``mask`` taking its block's value, 0
    elsewhere; the dtype of ``coarse``."""
    up = coarse
    for ax, s_ in enumerate(step):
        if s_ > 1:
            up = np.repeat(up, s_, axis=ax)
    return np.where(mask, up[tuple(slice(0, n_) for n_ in mask.shape)], 0).astype(coarse.dtype, copy=False)


def _narrow(labels: NDArray) -> NDArray:
    """Non-negative int ``labels`` in the narrowest unsigned dtype that holds them (uint8 for
    fewer than 256 labels: a quarter of int32's memory traffic in every later pass)."""
    top = int(labels.max(initial=0))
    for dt in (np.uint8, np.uint16):
        if top <= np.iinfo(dt).max:
            return labels.astype(dt)
    return labels


def box_max(a: NDArray, radii_kji: Sequence[int]) -> NDArray:
    """Grey dilation of ``a`` by a box of half-widths ``radii_kji`` voxels (each voxel's maximum
    over the box around it; voxels outside the array do not count, which for a maximum is what
    ``ndi.maximum_filter``'s default border gives): per axis, the maxima of shifted slices.
    Exact, ~2.8x faster than ``ndi.maximum_filter`` on a peel's tile (radii 3-4), and numpy
    releases the GIL for them, so tiles on two threads run at once (measured 2026-12-07)."""
    out = a
    for ax, r in enumerate(radii_kji):
        n = a.shape[ax]
        if r <= 0 or n < 2:
            continue
        src = out
        out = src.copy()
        for step in range(1, min(int(r), n - 1) + 1):
            lo = tuple(slice(None, n - step) if d == ax else slice(None) for d in range(a.ndim))
            hi = tuple(slice(step, None) if d == ax else slice(None) for d in range(a.ndim))
            np.maximum(out[lo], src[hi], out=out[lo])
            np.maximum(out[hi], src[lo], out=out[hi])
    return out if out is not a else a.copy()


def max_3x3x3(a: NDArray) -> NDArray:
    """Grey dilation of ``a`` by a 3 x 3 x 3 box (each voxel's maximum over its 26-neighbourhood
    and itself; voxels outside the array do not count): :func:`box_max` with radius 1. Exact,
    and ~5x faster than ``sitk.GrayscaleDilate`` (whose float result differed from the exact
    maximum by ~1e-4 on a few voxels)."""
    return box_max(a, (1,) * a.ndim)


def marker_watershed(level: NDArray, markers: NDArray, mask: NDArray, spacing: NDArray, *, lift: bool = False) -> NDArray:
    """Marker-controlled watershed (Beucher & Meyer 1993) of ``level`` within ``mask``.

    The same as flooding the whole box with the background set above every mask voxel (each
    component holding a marker is then claimed from inside before any background voxel), but
    cheaper: it runs in the mask's bounding box; background voxels not 26-adjacent to the mask
    form one extra marker, so they are never flooded; and levels are rounded to whole units
    (HU) in uint16, so ITK's flooding queue keeps one FIFO per level rather than one per float.
    With ``lift``, each voxel's level is raised to its brightest 26-neighbour's (a grey
    dilation), so a flood reaches a voxel beside a bright cortex only at the cortex's level.

    Returns
    -------
    int32 labels of ``markers`` on the mask's voxels of components that hold a marker; 0 on
    the background and on components without a marker.
    """
    out = np.zeros(mask.shape, np.int32)
    if not mask.any() or not markers.any():
        return out
    box = _bbox(mask, 2)
    m = mask[box]
    lv = (max_3x3x3(level[box].astype(np.float32)) if lift else level[box])[m]
    lo = float(lv.min())
    top = np.uint16(65535)
    land = np.full(m.shape, top, np.uint16)
    land[m] = np.clip(np.round(lv - lo), 0, 65534).astype(np.uint16)
    n = int(markers.max())
    mk = markers[box].astype(np.uint16 if n < 65535 else np.uint32)
    far = ~max_3x3x3(m)
    mk[far] = n + 1
    ws = _arr(sitk.MorphologicalWatershedFromMarkers(_img(land, spacing), _img(mk, spacing), markWatershedLine=False, fullyConnected=True))
    ws = ws.astype(np.int32)
    ws[~m | (ws > n)] = 0
    out[box] = ws
    return out


def _separate_box(mask: NDArray, spacing: NDArray, p: ClassicalParams, ct_zyx: NDArray) -> NDArray:
    """Split ``mask`` into bones; returns region labels (int32).

    Markers: each bone's **marrow** (voxels below ``marrow_max_hu`` deeper than
    ``marrow_depth_mm`` inside the mask): touching bones keep separate marrow cavities, walled
    off by their cortices, even where the joint space is closed. Solid components without
    marrow (thin bones, the table) get distance-map cores instead, computed after cutting
    joint valleys (:func:`joint_valleys`). The watershed runs on the smoothed HU, so the
    boundary between two marrow markers follows the bright double cortex where bones touch;
    each voxel floods at its brightest neighbour's level (``lift``), so one bone's flood does not
    run through the dim partial-volume halo that a blur leaves around its neighbour's cortex and
    take it (found on a three-stack study: the fibula's marker took a shell of the femur and
    tibia and their halo, 112 mL, and no knee joint was found).
    """
    valleys = joint_valleys(ct_zyx, mask, spacing, p)
    cut = mask & ~valleys

    def distance_map(m: NDArray) -> NDArray:
        return _arr(sitk.SignedMaurerDistanceMap(_img(m.astype(np.uint8), spacing), insideIsPositive=True, squaredDistance=False, useImageSpacing=True))

    # The mask's own map only differs where valleys were cut; both maps are computed at once.
    maps = _map(distance_map, [cut, mask] if valleys.any() else [cut])
    dist, depth = maps[0].astype(np.float32), maps[-1]
    del maps
    min_vox = max(1, int(np.ceil(p.min_seed_volume_mm3 / float(np.prod(spacing)))))
    marrow = mask & (ct_zyx < p.marrow_max_hu) & (depth > p.marrow_depth_mm)
    del depth
    m_lab = _arr(sitk.RelabelComponent(sitk.ConnectedComponent(_img(marrow.astype(np.uint8), spacing), True), minimumObjectSize=min_vox))
    n_marrow = int(m_lab.max())
    comps, n_comps = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    has_marrow = np.zeros(n_comps + 1, bool)
    has_marrow[np.unique(comps[m_lab > 0])] = True
    has_marrow[0] = False
    # Distance cores only where a component has no marrow marker.
    core_mask = (dist > p.seed_depth_mm) & ~has_marrow[comps]
    c_lab = _arr(sitk.RelabelComponent(sitk.ConnectedComponent(_img(core_mask.astype(np.uint8), spacing), True), minimumObjectSize=min_vox))
    markers = m_lab.astype(np.int32)
    markers[c_lab > 0] = c_lab[c_lab > 0].astype(np.int32) + n_marrow
    n_seeds = int(markers.max())  # may be 0 (only thin bones): every component is then a lone region
    regions = marker_watershed(ndi.gaussian_filter(ct_zyx.astype(np.float32), 0.7), markers, mask, spacing, lift=True)
    # Flooding goes by level, so every voxel of a component holding a marker is claimed from
    # inside it; a component with no marker (thinner than ``seed_depth_mm`` everywhere: a rib
    # end, a process, or a table or cable, removed later by the body test) becomes a region of
    # its own.
    seeded = np.zeros(n_comps + 1, bool)
    seeded[np.unique(comps[markers > 0])] = True
    seeded[0] = True
    lone = ~seeded[comps]
    regions[lone] = 0
    if lone.any():
        lut = np.zeros(n_comps + 1, np.int32)
        lone_ids = np.flatnonzero(~seeded)
        lut[lone_ids] = n_seeds + 1 + np.arange(len(lone_ids))
        regions[lone] = lut[comps[lone]]
    regions = _merge_split_shafts(regions, spacing, set(range(1, n_marrow + 1)), p, ct_zyx, markers=m_lab, valleys=valleys)
    return _merge_waists(regions, dist, p.merge_ratio, protected=set(range(1, n_marrow + 1)))


def _pairs(a: NDArray, b: NDArray) -> NDArray[np.int64]:
    """The distinct pairs (a[v], b[v]) over the voxels where ``b`` > 0, as a (2, n) array sorted
    by a then b (``np.unique(..., axis=1)`` of the stacked pairs, by one 1-D key)."""
    sel = b > 0
    av, bv = a[sel].astype(np.int64), b[sel].astype(np.int64)
    if av.size == 0:
        return np.zeros((2, 0), np.int64)
    span = int(bv.max()) + 1
    key = np.unique(av * span + bv)
    return np.stack([key // span, key % span])


def _member(labels: NDArray, values: NDArray) -> NDArray:
    """``np.isin(labels, values)`` for non-negative int labels, by a lookup table."""
    lut = np.zeros(int(max(labels.max(initial=0), values.max(initial=0))) + 1, bool)
    lut[values] = True
    return lut[labels]


def _union_lut(size: int, pairs: Iterable[tuple[int, int]]) -> NDArray[np.int32]:
    """Union-find over labels ``0..size-1``: joins each pair in order (a's set under b's root)
    and returns the lookup table label -> root label."""
    parent = list(range(size))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    return np.array([find(i) for i in range(size)], dtype=np.int32)


def max_section_mm2(t: NDArray, axis: NDArray, spacing: NDArray) -> float:
    """Largest cross-section (mm^2) of a region across its long axis.

    Parameters
    ----------
    t
        Each voxel centre's position (mm) along the unit ``axis``.
    axis
        The unit axis in (k, j, i) mm.
    spacing
        Voxel spacing (i, j, k) in mm.

    Returns
    -------
    The volume (mm^3) of the fullest slab across the axis divided by the slab's thickness.
    A slab is as thick as a voxel reaches along the axis (the projection of its box): along a
    grid axis it holds exactly one layer of voxels; a thinner one holds one layer or none, a
    thicker one one or two, so that the fullest would read up to twice the section (before
    2026-12-07 the volume of a 1 mm slab was taken as the section: 2.5 x the section of a shaft
    along k at 2.5 mm slices, 1.4 x at 0.7 mm). Within 12 % of the mean section on rods of
    10 mm radius at any angle on 0.3-3 mm grids (tested); a rod only a few voxels across reads
    up to ~1.5 x on coarse grids (its fullest slab).
    """
    w = float(np.abs(np.asarray(axis, dtype=np.float64)) @ np.asarray(spacing, dtype=np.float64)[::-1])
    t = np.asarray(t, dtype=np.float64)
    if t.size == 0:
        return 0.0
    # half a slab's offset: voxel layers a whole slab apart fall in the middle of their slab,
    # not on its edge; rounded first, so that layers on a face diagonal (an axis of exactly
    # (0.7071, 0, 0.7071)) do not scatter between two slabs by float noise
    bins = np.floor(np.round((t - t.min()) / w, 6) + 0.5).astype(np.int64)
    return float(np.bincount(bins).max()) * float(np.prod(spacing)) / w


def _merge_split_shafts(
    regions: NDArray, spacing: NDArray, candidates: set[int], p: ClassicalParams, ct_zyx: NDArray, markers: NDArray | None = None,
    valleys: NDArray | None = None, *, max_rounds: int = 8,
) -> NDArray:
    """Merge two marrow-grown regions that are one bone whose marrow pinched off near an end,
    or anywhere along a thin shaft.

    Where a long bone's marrow is interrupted (an all-cortical stretch near an epiphysis) it
    grows two regions. The smaller one then continues the larger along its long axis: its
    centroid lies beyond the larger one's end (within the last ``shaft_end_fraction`` of its
    length or past it), within the larger one's radius of its axis, and the two share an
    interface of at least ``shaft_area_ratio`` x the smaller one's cross-section (optionally with
    a mean HU >= ``shaft_interface_hu``), and it is at most ``shaft_piece_ratio`` x the larger
    one's volume (an end piece, not a long bone of its own, as a tibia under a femur is) or the
    interface is a cut through a thin shaft: the smaller one's section (mm^2) at most
    ``shaft_through_max_mm2`` (a fibula or a rib, not a femur, tibia or vertebral body), the
    interface at least ``shaft_through_ratio`` x that section, its mean HU from
    ``shaft_through_hu`` (cortex and marrow, not a joint space) to ``metal_hu``, and at most
    ``shaft_through_valley`` of it on a joint valley (``valleys``, :func:`joint_valleys`): the
    dim marrow of a pinch reads as a valley between its cortices, but the cortex ring around it
    does not (with a cortex a third of the radius the ring is 56 % of the section; a real
    fibula's pinches: 43-48 % valley), while a joint's interface is valley nearly throughout. A
    joint contact fails at least one test: the patella and fibula sit beside their neighbour's
    shaft, and a femur resting on a tibia touches over a patch much smaller than the tibia's
    cross-section.

    With ``markers`` (the marrow markers the regions were flooded from, labelled as the regions)
    the centroids, axes and lengths are the marrow cavities', the cross-sections the regions'.
    The flood of the end piece's marrow climbs the shaft's outer cortex, whose half outside the
    cortex's ridge is lower than the ridge the shaft's own marrow must cross to reach it: on a
    knee CT of 0.4 x 0.3 x 2.4 mm voxels the distal tibia's region wrapped the whole shaft's
    cortex, its centroid moved inside the shaft, and the distal tibia stayed an unnamed
    ``bone_1`` (the benchmark CT of ``bench_segmentation.py``). The cavities are where the
    marrow is, end to end.

    The thin-shaft test is repeated on the merged regions until no pair joins (at most
    ``max_rounds``): a thin shaft cut into three pieces at 2.5-3 mm voxels, one short piece
    lying across the cut between the other two, has no pair whose interface spans the whole
    section until two of them are one. Only the first round joins end pieces: an end piece is
    small against the region it ends, and a region grown by a merge would make a neighbour
    across a joint small enough (a tibial stub under a femur joined to its distal end piece);
    the thin-shaft test also needs bone through the interface, not a joint valley.
    """
    if int(regions.max()) < 2 or len(candidates) < 2:
        return regions
    out = np.asarray(regions, dtype=np.int32)
    for _round in range(max_rounds):
        pairs = _split_shaft_pairs(out, spacing, candidates, p, ct_zyx, markers, valleys, end_pieces=_round == 0)
        if not pairs:
            break
        size = int(max(out.max(), 0 if markers is None else markers.max())) + 1
        lut = _union_lut(size, pairs)
        out = lut[out]
        if markers is not None:
            markers = lut[markers]
    return out


def _split_shaft_pairs(
    regions: NDArray, spacing: NDArray, candidates: set[int], p: ClassicalParams, ct_zyx: NDArray, markers: NDArray | None,
    valleys: NDArray | None, *, end_pieces: bool = True,
) -> list[tuple[int, int]]:
    """One round of :func:`_merge_split_shafts`: the pairs of regions that join (label pairs);
    without ``end_pieces`` only thin shafts cut through."""
    n = int(regions.max())
    if n < 2 or len(candidates) < 2:
        return []
    face_mm2 = np.array([spacing[0] * spacing[1], spacing[0] * spacing[2], spacing[1] * spacing[2]])  # normal to k, j, i
    areas: dict[tuple[int, int], float] = {}
    hu_sum: dict[tuple[int, int], float] = {}
    in_valley: dict[tuple[int, int], float] = {}  # interface area with a joint-valley voxel on either side
    for axis in range(3):
        x = np.moveaxis(regions, axis, 0)
        la, lb = x[:-1], x[1:]
        touch = (la != lb) & (la > 0) & (lb > 0)
        if not touch.any():
            continue
        va, vb = la[touch], lb[touch]
        hu = np.moveaxis(ct_zyx, axis, 0)
        face_hu = 0.5 * (hu[:-1][touch].astype(np.float64) + hu[1:][touch])
        key = np.minimum(va, vb).astype(np.int64) * (n + 1) + np.maximum(va, vb)
        uk, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=face_hu)
        if valleys is not None:
            v = np.moveaxis(valleys, axis, 0)
            vsum = np.bincount(inv, weights=(v[:-1][touch] | v[1:][touch]).astype(np.float64), minlength=len(uk))
        else:
            vsum = np.zeros(len(uk))
        for k_, c_, h_, v_ in zip(uk, cnt, sums, vsum):
            pair = (int(k_ // (n + 1)), int(k_ % (n + 1)))
            areas[pair] = areas.get(pair, 0.0) + float(c_ * face_mm2[axis])
            hu_sum[pair] = hu_sum.get(pair, 0.0) + float(h_ * face_mm2[axis])
            in_valley[pair] = in_valley.get(pair, 0.0) + float(v_ * face_mm2[axis])
    boxes = ndi.find_objects(regions)
    cache: dict[int, tuple] = {}

    def shape_of(r: int) -> tuple:
        """(volume mm^3, centroid, unit axis, (t_min, t_max) along it, max cross-section mm^2), in (k, j, i) mm."""
        if r not in cache:
            box = boxes[r - 1]
            kji = (np.argwhere(regions[box] == r) + np.array([s_.start for s_ in box])).astype(np.float64) * spacing[::-1]
            c = kji.mean(axis=0)
            sub = kji[:: max(1, len(kji) // 20000)] - c
            _u, _s, vt = np.linalg.svd(sub, full_matrices=False)
            t = (kji - c) @ vt[0]
            cs = max_section_mm2(t, vt[0], spacing)
            core = None if markers is None else np.argwhere(markers[box] == r)
            if core is not None and len(core) >= 3:  # the marrow cavity's centroid, axis and extent
                kji = (core + np.array([s_.start for s_ in box])).astype(np.float64) * spacing[::-1]
                c = kji.mean(axis=0)
                _u, _s, vt = np.linalg.svd(kji[:: max(1, len(kji) // 20000)] - c, full_matrices=False)
                t = (kji - c) @ vt[0]
            cache[r] = (float(np.count_nonzero(regions[box] == r) * np.prod(spacing)), c, vt[0], (float(t.min()), float(t.max())), cs)
        return cache[r]

    def joined() -> Iterator[tuple[int, int]]:
        for (ra, rb), area in areas.items():
            if ra not in candidates or rb not in candidates:
                continue
            big, small = (ra, rb) if shape_of(ra)[0] >= shape_of(rb)[0] else (rb, ra)
            _v, c_big, axis, (t0, t1), cs_big = shape_of(big)
            _v2, c_small, _a2, _t2, cs_small = shape_of(small)
            rel = c_small - c_big
            t = float(rel @ axis)
            radial = float(np.linalg.norm(rel - t * axis))
            end_zone = p.shaft_end_fraction * (t1 - t0)
            beyond = t > t1 - end_zone or t < t0 + end_zone
            within = radial < np.sqrt(cs_big / np.pi)
            solid = hu_sum[(ra, rb)] / area >= p.shaft_interface_hu  # through bone, not a blurred joint space
            piece = end_pieces and shape_of(small)[0] <= p.shaft_piece_ratio * shape_of(big)[0]  # an end piece, not a bone of its own
            # or a stretch of one thin shaft cut through: the interface spans the smaller one's
            # whole section, through cortex and marrow, with no joint valley in it, and the
            # shaft is thin (a real fibula's marrow pinches off every few cm at 1.5 mm voxels:
            # four marrow regions of 5-10 mL, three left apart)
            hu_mean = hu_sum[(ra, rb)] / area
            through = (
                cs_small <= p.shaft_through_max_mm2 and area >= p.shaft_through_ratio * cs_small
                and p.shaft_through_hu <= hu_mean < p.metal_hu and in_valley.get((ra, rb), 0.0) <= p.shaft_through_valley * area
            )  # fmt: skip
            if beyond and within and solid and (piece or through) and area >= p.shaft_area_ratio * cs_small:
                yield ra, rb
    return list(joined())


def _merge_waists(regions: NDArray, dist: NDArray, ratio: float, protected: set[int] | None = None) -> NDArray:
    """Merge neighbouring regions joined by an interface thicker than ``ratio`` x the thinner one.

    Pairs of ``protected`` regions (each grown from its own marrow) are never merged.
    """
    protected = protected or set()
    n = int(regions.max())
    if n < 2:
        return regions
    depth = np.zeros(n, np.float64)
    for r, box in enumerate(ndi.find_objects(regions), start=1):
        if box is not None:
            depth[r - 1] = float(dist[box][regions[box] == r].max())
    saddle_nn = np.zeros((n + 1, n + 1), np.float32) if n <= 4000 else None
    saddle: dict[tuple[int, int], float] = {}
    for axis in range(3):
        a = np.moveaxis(regions, axis, 0)
        d = np.moveaxis(dist, axis, 0)
        la, lb = a[:-1], a[1:]
        touch = (la != lb) & (la > 0) & (lb > 0)
        if not touch.any():
            continue
        va, vb = la[touch], lb[touch]
        dd = np.minimum(d[:-1][touch], d[1:][touch])
        lo, hi = np.minimum(va, vb), np.maximum(va, vb)
        if saddle_nn is not None:  # dense pair table: no sort of the interface voxels
            np.maximum.at(saddle_nn, (lo, hi), dd.astype(np.float32))
            continue
        key = lo.astype(np.int64) * (n + 1) + hi
        order = np.argsort(key)
        key, dd = key[order], dd[order]
        starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
        for s, m in zip(starts, np.maximum.reduceat(dd, starts)):
            pair = (int(key[s] // (n + 1)), int(key[s] % (n + 1)))
            saddle[pair] = max(saddle.get(pair, 0.0), float(m))
    if saddle_nn is not None:
        for a_, b_ in zip(*np.nonzero(saddle_nn)):
            saddle[(int(a_), int(b_))] = float(saddle_nn[a_, b_])
    parent = list(range(n + 1))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a_, b_), s in sorted(saddle.items(), key=lambda kv: -kv[1]):
        if a_ in protected and b_ in protected:
            continue
        thinner = min(depth[a_ - 1], depth[b_ - 1])
        if thinner > 0 and s >= ratio * thinner:
            parent[find(a_)] = find(b_)
    lut = np.array([find(i) for i in range(n + 1)], dtype=np.int32)
    return lut[regions]


#: Pores narrower than twice this (mm) inside one bone are closed over by
#: :func:`_deep_inside_closed`; what then lies deeper than :data:`PORE_DEPTH_MM` inside, and is
#: denser than soft tissue by :data:`PORE_MIN_CONTRAST_HU` (smoothed), is bone. On the shared
#: abdominal CT the osteoporotic vertebral body (median 146 HU, under the 180 HU growth level)
#: needs 6 mm: its core went 0.05 -> 0.35 labelled (3 mm: 0.07), then 0.83 with the bridged
#: sponge below and the density gate at 20 HU (smoothed over a voxel; 40 HU gave 0.53). Soft
#: tissue's smoothed HU varies with an SD of 10-14 HU on the shared CTs (tissue and noise), so
#: the gate alone would pass some of it: only voxels deep inside a bone's closed mask are tested.
PORE_CLOSE_MM = 6.0
PORE_DEPTH_MM = 2.0
PORE_MIN_CONTRAST_HU = 20.0
#: The closing's own voxels count (:func:`_deep_inside_closed`) where they fill a space this many
#: coarse voxels (:data:`PORE_GRID_MM`) thick, in a piece of at least the closing ball's
#: volume: on that CT the body's core went 0.35 -> 0.83 labelled (a joint gap, one or two
#: voxels thick, is never such a space: the hip phantoms' Dice is unchanged, against -0.005
#: without the thickness test).
PORE_BRIDGE_BOX_VOX = 3
#: Grid (mm) the pores are sought on (:func:`_deep_inside_closed`).
PORE_GRID_MM = 2.0


def _deep_inside_closed(m: NDArray, spacing: NDArray, hu: NDArray | None = None, soft_hu: float = np.inf) -> NDArray:
    """Voxels more than :data:`PORE_DEPTH_MM` inside ``m`` closed by a ball of
    :data:`PORE_CLOSE_MM`, its cavities and its holes enclosed in slices filled
    (:func:`~orthonav.segmentation.bone_mask.fill_enclosed_in_planes`, with ``hu`` and
    ``soft_hu``: a canal of fluid is not filled), keeping of the closing's own voxels only
    those in spaces :data:`PORE_BRIDGE_BOX_VOX` coarse voxels thick; bool, shape of ``m``. The outer surface of
    ``m`` is not moved (the depth keeps the added voxels off it); concavities wider than the
    ball (a femoral notch, a joint socket) are not filled, and with ``hu`` only voxels denser
    than ``soft_hu`` + :data:`PORE_MIN_CONTRAST_HU` (smoothed over a voxel) are returned: the
    soft tissue of a narrower fossa stays out, trabecular bone comes in."""
    # On a grid of about PORE_GRID_MM (block maximum of the mask, block mean of the HU): the
    # pores sought are many mm wide; at full resolution the closing cost 6 s on a 512x512x400
    # knee CT at 0.8 mm, on this grid 0.5 s.
    f = np.array([max(1, int(PORE_GRID_MM // s_)) for s_ in spacing])[::-1]  # k, j, i
    shape = np.array(m.shape)
    step = (int(f[0]), int(f[1]), int(f[2]))
    mc = block_max(m, step)
    hc = None if hu is None else block_mean(hu, step)
    sc = np.asarray(spacing, np.float64) * f[::-1]
    r = _ball_radius_vox(PORE_CLOSE_MM, sc)  # i, j, k
    pad = [(g + 1, g + 1) for g in r[::-1]]
    closed = sitk.BinaryMorphologicalClosing(_img(np.pad(mc, pad).astype(np.uint8), sc), [int(g) for g in r], sitk.sitkBall)
    closed = _arr(closed).astype(bool)[tuple(slice(a, -b) for a, b in pad)]
    enclosed = fill_enclosed_in_planes(fill_cavities(closed), hu=hc, above_hu=soft_hu)
    depth = _arr(sitk.SignedMaurerDistanceMap(_img(enclosed.astype(np.uint8), sc), insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    # The holes the closed bone encloses, and the closing's own voxels where they fill a space
    # at least :data:`PORE_BRIDGE_BOX_VOX` coarse voxels thick in every direction and, in one
    # piece, at least the closing ball's volume. A sponge of cancellous bone whose patches the
    # closing joins (an osteoporotic vertebral body: 20.9 mL on the shared abdominal CT) is
    # such a space; the closing also bridges the rim of a concavity and, in a region not yet
    # split at a joint (a femoral head still joined to its acetabulum), the joint gap: sheets
    # one or two voxels thick, which the opening removes, and nooks (0.08-0.32 mL on the full
    # hip phantom, where 40 such voxels cost the left side its names).
    # Bridged space is taken only where the density can be checked (``hu``).
    inside = enclosed & (depth > PORE_DEPTH_MM)
    deep_c = inside & ~closed
    if hu is not None and np.isfinite(soft_hu):
        bridged = ndi.binary_opening(inside & ~mc, structure=np.ones((PORE_BRIDGE_BOX_VOX,) * 3, bool))
        lab_b, n_b = ndi.label(bridged)
        if n_b:  # each piece at least the closing ball's volume: a body of sponge, not a nook
            vol = np.bincount(lab_b.ravel())[1:] * float(np.prod(sc))
            sponge = np.concatenate([[False], vol >= 4.0 / 3.0 * np.pi * PORE_CLOSE_MM**3])[lab_b]
            # with the coarse voxels of the patches it joins (their open voxels are checked below)
            deep_c |= inside & ndi.binary_dilation(sponge, structure=np.ones((3, 3, 3), bool))
    if not deep_c.any():
        return np.zeros(m.shape, bool)
    deep = deep_c.repeat(f[0], 0).repeat(f[1], 1).repeat(f[2], 2)[: shape[0], : shape[1], : shape[2]]
    deep &= ~m
    if hu is not None and np.isfinite(soft_hu) and deep.any():
        bb = tuple(slice(max(0, s_.start - 3), s_.stop + 3) for s_ in ndi.find_objects(deep.view(np.uint8))[0])
        deep[bb] &= ndi.gaussian_filter(np.asarray(hu[bb], np.float32), 1.0) > soft_hu + PORE_MIN_CONTRAST_HU
    return deep


def _clean_regions(
    regions: NDArray,
    spacing: NDArray,
    p: ClassicalParams,
    body: NDArray,
    *,
    offset_kji: NDArray | None = None,
    fill_planes: bool = False,
    ct_zyx: NDArray | None = None,
    soft_hu: float = np.inf,
    refill: bool = True,
    parts: bool = False,
) -> list[tuple[tuple[slice, ...], NDArray]]:
    """Per region: largest connected piece, cavities filled; drop regions below the minimum
    volume and regions lying mostly outside the body (the table, cables, external objects).
    Without ``refill`` (regions cut from pieces this function cleaned before: the joint
    split's) only the cavities are filled, not the pores below, unless ``fill_planes``. With
    ``parts`` every connected piece of a region of at least the minimum volume is kept, each
    as a piece of its own (the largest first), not only the largest.

    ``body`` is the coarse body mask of a box whose voxel (0, 0, 0) is ``-offset_kji`` in
    ``regions`` (index (k, j, i) offset of ``regions`` inside that box; zero when the same box).
    With ``fill_planes`` (cortex not resolved) pores enclosed in the slices of two of the three
    orientations are filled too (:func:`~orthonav.segmentation.bone_mask.fill_enclosed_in_planes`),
    and, given ``ct_zyx`` (HU, on the grid of ``regions``), pores enclosed in one orientation
    whose mean HU is above ``soft_hu`` (cancellous bone, not a canal)."""
    off = np.zeros(3, np.int64) if offset_kji is None else np.asarray(offset_kji, np.int64)
    step = _coarse_step(spacing)
    voxel_mm3 = float(np.prod(spacing))

    def clean(idx_box: tuple[int, tuple[slice, ...]]) -> list[tuple[tuple[slice, ...], NDArray]]:
        idx, box = idx_box
        whole = regions[box] == idx
        lab, n = ndi.label(whole, structure=np.ones((3, 3, 3), bool))
        if n <= 1:
            return [r for r in (finish(idx, box, whole, None) if n else None,) if r is not None]
        sizes = np.bincount(lab.ravel())[1:]
        order = np.argsort(-sizes, kind="stable")
        keep = order[:1] if not parts else [i for i in order if i == order[0] or sizes[i] * voxel_mm3 >= p.min_bone_volume_mm3]
        if len(keep) == 1:
            return [r for r in (finish(idx, box, lab == (int(keep[0]) + 1), None),) if r is not None]
        kept = np.isin(lab, np.asarray(keep) + 1)
        return [r for r in (finish(idx, box, lab == (int(i) + 1), kept & (lab != int(i) + 1)) for i in keep) if r is not None]

    def finish(idx: int, box: tuple[slice, ...], m: NDArray, reserved: NDArray | None) -> tuple[tuple[slice, ...], NDArray] | None:
        """One piece ``m`` of region ``idx`` in ``box``, cleaned; ``reserved``: the voxels of the
        region's other pieces kept as pieces of their own (never filled into this one)."""
        if m.sum() * voxel_mm3 < p.min_bone_volume_mm3:
            return None
        kji = np.argwhere(m) + np.array([s.start for s in box]) + off
        kji = kji[:: max(1, len(kji) // 5000)] // np.array(step)
        kji = np.minimum(kji, np.array(body.shape) - 1)
        if body[kji[:, 0], kji[:, 1], kji[:, 2]].mean() < p.min_inside_body:
            return None
        m = fill_cavities(m)
        # A fill closes this bone's own cavities and pores, never another bone: voxels the
        # separation gave to another region stay theirs (a slice-wise fill could otherwise wrap a
        # neighbour, e.g. femur, tibia and fibula seen together through a short knee stack).
        others = (regions[box] != 0) & (regions[box] != idx)
        if reserved is not None:
            others |= reserved
        if not refill and not fill_planes:
            return box, m & ~others
        hu = None if ct_zyx is None else ct_zyx[box]
        # Cancellous bone darker than the growth level (an osteoporotic vertebral body, 90-300
        # HU) leaves a sponge whose pores open through gaps of a thin cortex: neither a fill nor
        # the slice-wise fill closes it, and the half-maximum peel, which counts those pores as
        # outside, strips the interior to a shell. What lies deep inside the bone closed over
        # its pores is bone. Per region, so it never bridges a joint to another bone.
        if not fill_planes:  # (a cortex thinner than the voxels has its slice-wise fill below)
            m |= _deep_inside_closed(m, spacing, hu, soft_hu) & ~others
        # Porous cortex (thin cortex over cancellous bone, e.g. a vertebral body): close pores of
        # one voxel, then add the cavities this encloses (not the closing's own voxels).
        padded = np.pad(m, 1)
        closed = ndi.binary_closing(padded, structure=ndi.generate_binary_structure(3, 1))[1:-1, 1:-1, 1:-1]
        if fill_planes:
            # A cortex thinner than the voxels: a one-voxel gap in it is cortex below the growth
            # level (kept), and pores open through wider gaps are filled slice-wise.
            return box, fill_enclosed_in_planes(fill_cavities(m | closed), hu=hu, above_hu=soft_hu) & ~others
        m |= fill_cavities(closed) & ~closed
        return box, m & ~others

    todo = [(idx, box) for idx, box in enumerate(ndi.find_objects(regions), start=1) if box is not None]
    return [r for rs in _map(clean, todo) for r in rs]  # in region order


@reusing_freed_memory  # large arrays reused, not page-faulted anew: orthonav.core.heap
def segment_classical(
    ct: Volume, *, anatomy: str = "auto", params: ClassicalParams | None = None, scanned: Volume | None = None
) -> Segmentation:
    """Segment the bones of a CT into named per-bone labels (no training, no network).

    Parameters
    ----------
    ct
        CT volume in Hounsfield units, any voxel geometry (``lps_from_ijk`` may be anisotropic
        and non-axis-aligned).
    anatomy
        ``"knee"``, ``"hip"``, ``"general"`` or ``"auto"`` (decide from the bones found).
    params
        Thresholds; defaults suit clinical CT and OrthoNav phantoms.
    scanned
        Coverage mask on the CT grid (non-zero = scanned) of a study imported from several
        stacks (docs/import.md), or None. A bone that reaches the border of a stack is cut there,
        which naming uses as evidence (a long bone continuing out of view).

    Returns
    -------
    Segmentation
        uint8 labels on the CT grid and the label table (``backend="classical"``).

    Raises
    ------
    InputError
        Not a 3D CT, an unknown anatomy, or no bone in the image.
    """
    if anatomy not in ANATOMIES:
        raise InputError(None, f"unknown anatomy {anatomy!r}; expected one of {', '.join(ANATOMIES)}")
    _validate_ct(ct)
    p = params or ClassicalParams()
    spacing = ct.spacing_mm  # along i, j, k (sitk order)
    full = ct.array_zyx
    # The HU levels of this image (:mod:`.bone_mask`): where its cortex is not resolved (thin
    # cortex in large voxels, partial volume) they are lowered towards its soft tissue; every
    # later step uses them. The local edge level (:func:`adaptive_refine`) needs the cortex
    # resolved (its peak is then the bone's level); otherwise the peak is itself a partial-volume
    # value, the edge is where the growth level put it, and pores that open through gaps of the
    # blurred cortex are filled slice-wise (:func:`fill_enclosed_in_planes`).
    levels = bone_levels(full, bone_high_hu=p.bone_high_hu, bone_low_hu=p.bone_low_hu, spacing_ijk=ct.spacing_mm)
    p = replace(p, bone_high_hu=levels.seed_hu, bone_low_hu=levels.grow_hu, adaptive_boundary=p.adaptive_boundary and levels.resolved,
                cortex_hu=levels.cortex_hu if np.isnan(p.cortex_hu) else p.cortex_hu, surround_hu=levels.soft_hu if levels.in_air else p.surround_hu)
    fill_planes = not levels.resolved
    if not full.max() >= p.bone_high_hu:
        raise InputError(
            None,
            f"no bone found: no voxel reaches {p.bone_high_hu:.0f} HU (max {float(full.max()):.0f}); "
            "is this a CT in Hounsfield units?",
        )
    # Work inside the bounding box of everything dense enough to be bone.
    box = _bbox(full >= p.bone_low_hu, p.crop_margin_vox)
    ct_zyx = full[box].astype(np.float32)

    # The body (on the wide box: the body around the bones) does not depend on the bone mask:
    # it is found on a second thread meanwhile when the thread budget allows.
    # A bone in air has no body around it: the "body" is then the bones, the dense pieces that
    # enclose something (:func:`_air_body_mask`).
    pool = ThreadPoolExecutor(max_workers=1) if _workers() > 1 else None
    body_job = pool.submit(_air_body_mask if levels.in_air else _body_mask, ct_zyx, spacing, p) if pool is not None else None
    try:
        zone, bead_boxes = _bead_mask(ct_zyx, spacing, p)
        bone = fill_cavities(grow_from_cortex(ct_zyx, ~zone, spacing, seed_hu=p.bone_high_hu, grow_hu=p.bone_low_hu, grow_max_mm=p.grow_max_mm))
        body = body_job.result() if body_job is not None else (_air_body_mask if levels.in_air else _body_mask)(ct_zyx, spacing, p)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    # Components smaller than a bone can never become one (every region lies in one component
    # and regions below ``min_bone_volume_mm3`` are dropped): drop them now (noise specks
    # above ``bone_low_hu`` in soft tissue), then shrink the work box to the bones left plus a
    # margin wider than any neighbourhood used below. Every later pass runs on that box.
    bone = _drop_small_components(bone, spacing, p.min_bone_volume_mm3)
    if not bone.any():
        raise InputError(None, "no bone found: dense voxels exist but none forms a bone-sized solid object")
    margin = [max(p.crop_margin_vox + 3, int(np.ceil(8.0 / s_))) for s_ in spacing[::-1]]
    inner = tuple(slice(max(0, s_.start - g), min(n_, s_.stop + g)) for s_, g, n_ in zip(_bbox(bone, 0), margin, bone.shape))
    inner_kji = np.array([s_.start for s_ in inner])
    ct_zyx, bone, zone = ct_zyx[inner], bone[inner], zone[inner]
    bead_boxes = _shift_boxes(bead_boxes, inner)
    box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))
    smoothed = None
    if p.adaptive_boundary:
        # The HU smoothed once for the three peels and the joint split (each would otherwise
        # smooth its own crops), on a second thread while the components are labelled.
        with ThreadPoolExecutor(max_workers=1) as smoother:
            smoothed_job = smoother.submit(ndi.gaussian_filter, ct_zyx, 0.7)
            components = _narrow(_arr(sitk.ConnectedComponent(_img(bone.astype(np.uint8), spacing), False)))
            smoothed = smoothed_job.result()
        bone = fill_cavities(adaptive_refine(ct_zyx, components, spacing, p, smoothed) > 0)
        del components
    bone = _repair_bead_dents(bone, zone, bead_boxes, spacing)
    bone = remove_bumps(bone, spacing, p)
    # The peel and the bump removal leave specks; too small to become a bone, they are dropped
    # before the separation (which treats each component on its own, so the rest is unchanged).
    bone = _drop_small_components(bone, spacing, p.min_bone_volume_mm3)
    regions = _narrow(_separate(bone, spacing, p, ct_zyx))  # uint8 for fewer than 256 regions: cheaper passes
    if p.adaptive_boundary:  # again per bone: peels blurred bridges left between touching bones
        regions = adaptive_refine(ct_zyx, regions, spacing, p, smoothed)
    pieces = _clean_regions(regions, spacing, p, body, offset_kji=inner_kji, fill_planes=fill_planes, ct_zyx=ct_zyx, soft_hu=levels.soft_hu)
    if fill_planes:  # cortex not resolved (:mod:`.bone_mask`): regions without a cortex are
        # dropped, and the surface is put at the local half maximum.
        voxel_mm3 = float(np.prod(spacing))
        pieces = [
            (b, peel_to_half_maximum(ct_zyx, mk, b, levels.soft_hu)) for b, mk in pieces if has_cortex(ct_zyx[b], mk, p.bone_high_hu, voxel_mm3)
        ]
    if not pieces:
        raise InputError(None, "no bone found: dense voxels exist but none forms a bone-sized solid object")

    crop_origin_ijk = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    border = None if scanned is None else scan_border(scanned.array_zyx)
    body_lps = _body_centre_lps(ct)

    def infos_of(pcs: list[tuple[tuple[slice, ...], NDArray]]) -> list[RegionInfo]:
        # What the naming sees: cut points (the evidence of a bone continuing out of view) and max HU.
        return region_infos_from_pieces(pcs, ct.lps_from_ijk, full.shape, np.array([s_.start for s_ in box]), ct_zyx, scan_border_zyx=border)

    infos = infos_of(pieces)
    split_notes: list[str] = []
    if anatomy == "hip" or (anatomy == "auto" and not _all_knee_bones(_uncut(infos))):
        # Joint spaces narrower than the blur (a femoral head in its socket) leave two bones in
        # one region; re-separate them. With "auto" this is kept only if the result is a hip
        # (read as the naming reads it: with the cut points and the body centre).
        split, split_notes = _split_joined_bones(ct_zyx, pieces, spacing, p, body, inner_kji, fill_planes=fill_planes, smoothed=smoothed)
        if split_notes:
            split_infos = infos_of(split)
            if anatomy == "hip" or name_bones(split_infos, anatomy="auto", body_centre_lps=body_lps).anatomy in ("hip", "limb"):
                pieces, infos = split, split_infos
            else:
                split_notes = []
    # Naming (orthonav.segmentation.naming.name_bones): names with confidences; a region whose
    # name is not confident stays ``bone_<n>`` with its reason in the notes; fragments (small
    # pieces touching a named bone) are merged into the bone they touch most, or dropped; a
    # table slab or metal is left out; pieces with the same name (one bone cut by an unscanned
    # gap) share one label.
    named = name_bones(infos, anatomy=anatomy, body_centre_lps=body_lps)
    names, side, fragments = dict(named.names), named.side, list(named.fragments)
    labels_crop = np.zeros(ct_zyx.shape, np.uint8)
    table: dict[int, str] = {}
    value_of: dict[str, int] = {}
    n_pieces: dict[int, int] = {}
    for info in sorted(infos, key=lambda r: names.get(r.index, "~")):
        name = names.get(info.index)
        if name is None:
            continue
        if name not in value_of:
            if len(value_of) >= 255:
                raise InputError(None, "more than 255 bones found; the label map is uint8")
            value_of[name] = len(value_of) + 1
            table[value_of[name]] = name
        b, mk = pieces[info.index]
        labels_crop[b][mk & (labels_crop[b] == 0)] = value_of[name]
        n_pieces[value_of[name]] = n_pieces.get(value_of[name], 0) + 1
    conf_of = {n: min(named.confidence.get(i, 0.0) for i, m in names.items() if m == n) for n in value_of}
    why_of = {n: named.why.get(min(i for i, m in names.items() if m == n), "") for n in value_of}
    notes = split_notes + named.notes()
    for i in fragments:  # the naming's order: each touches a bone or a fragment merged before it
        notes.append(absorb_fragment(labels_crop, table, pieces[i], infos[i]))
        b, mk = pieces[i]
        for v in np.unique(labels_crop[b][mk]):
            n_pieces[int(v)] = n_pieces.get(int(v), 0) + 1
    # A bone put together from several pieces (pieces of one name, fragments merged into it)
    # encloses the gaps between them, which the peel of the joint split opened (the small hip
    # phantom, seed 1: 728 voxels, 5.7 mL, in 23 gaps inside hip_right, whose surface then had
    # inner walls, 5 % of its vertices 3.85 mm or more inside the bone): filled, as each piece's own cavities were.
    fill_assembled(labels_crop, [v for v, n in n_pieces.items() if v > 0 and n > 1])
    labels_crop, table = _join_touching(labels_crop, table, stem="vertebrae", ct=ct, crop_origin_ijk=crop_origin_ijk)
    if not table:
        raise InputError(None, "no bone found that could be named for this anatomy")
    joined = [c for n, c in conf_of.items() if n.startswith("vertebrae_")]
    confidence = {v: float(conf_of.get(n, min(joined, default=0.0))) for v, n in table.items()}
    why = {v: why_of.get(n, "on the midline, posterior (vertebrae joined where they touch)") for v, n in table.items()}
    labels = np.zeros(full.shape, np.uint8)
    labels[box] = labels_crop
    return Segmentation(
        labels=Volume(labels, ct.lps_from_ijk.copy()),
        table=LabelTable(labels=table, backend="classical", side=side, confidence=confidence, why=why),
        confidence=None,
        notes=tuple(notes),
    )


def fill_assembled(labels: NDArray, values: Iterable[int]) -> dict[int, int]:
    """Fill (in place) the cavities each label of ``values`` encloses inside the volume
    (:func:`fill_cavities` without lids, in the label's box grown by a voxel): only voxels of
    no label are filled. For a bone put together from pieces (by the naming, or merged by
    hand: :mod:`.relabel`), whose joint space the split had peeled. No lid closes the scan's
    faces here: pieces forming a ring that the scan cuts at both ends (a vertebral body and
    its arch around the canal) would otherwise have the ring's lumen filled (found by a
    review; each piece's own cavities were filled with lids before). Returns label -> voxels
    filled."""
    boxes = ndi.find_objects(labels)
    filled: dict[int, int] = {}
    for v in values:
        if v > len(boxes) or boxes[v - 1] is None:
            continue
        grown = tuple(slice(max(0, s_.start - 1), min(n_, s_.stop + 1)) for s_, n_ in zip(boxes[v - 1], labels.shape))
        sub = labels[grown]
        m = sub == v
        gap = fill_cavities(m, lids=False) & ~m & (sub == 0)
        sub[gap] = v
        filled[int(v)] = int(np.count_nonzero(gap))
    return filled


def absorb_fragment(labels: NDArray, table: dict[int, str], piece: tuple[tuple[slice, ...], NDArray], info: RegionInfo) -> str:
    """Merge one unnamed fragment into the labelled bone sharing most of its 26-neighbour
    boundary (in place), or leave it out when it touches none. Returns a note saying which."""
    b, mk = piece
    grown = tuple(slice(max(0, s_.start - 1), min(n_, s_.stop + 1)) for s_, n_ in zip(b, labels.shape))
    local = np.zeros(tuple(s_.stop - s_.start for s_ in grown), bool)
    local[tuple(slice(s_.start - g.start, s_.stop - g.start) for s_, g in zip(b, grown))] = mk
    shell = ndi.binary_dilation(local, structure=np.ones((3, 3, 3), bool)) & ~local
    sub = labels[grown]
    touching = np.bincount(sub[shell], minlength=len(table) + 1)
    touching[0] = 0
    where = ", ".join(f"{x:.0f}" for x in info.centroid_lps)
    if touching.max() == 0:
        return f"dropped an unnamed fragment of {info.volume_mm3:.0f} mm^3 at LPS ({where}) mm touching no bone"
    value = int(touching.argmax())
    sub[local & (sub == 0)] = value
    labels[grown] = sub
    return f"merged an unnamed fragment of {info.volume_mm3:.0f} mm^3 at LPS ({where}) mm into {table[value]}"


def _join_touching(
    labels: NDArray, table: dict[int, str], *, stem: str, ct: Volume, crop_origin_ijk: NDArray
) -> tuple[NDArray, dict[int, str]]:
    """Join pieces named ``<stem>_*`` that touch (one vertebra grown from several marrow
    pockets) and re-letter them from superior to inferior."""
    values = [v for v, n in table.items() if n.startswith(stem + "_")]
    if len(values) < 2:
        return labels, table
    union = np.isin(labels, values)
    full = np.ones((3, 3, 3), bool)
    groups, _n = ndi.label(ndi.binary_dilation(union, structure=full), structure=full)
    lut = np.arange(int(labels.max()) + 1, dtype=np.uint8)
    first_of_group: dict[int, int] = {}
    for v in values:
        g = int(np.bincount(groups[labels == v]).argmax())
        lut[v] = first_of_group.setdefault(g, v)
    labels = lut[labels]
    kept = sorted({int(lut[v]) for v in values})
    z_mm = {}
    for v in kept:
        kji = np.argwhere(labels == v)[::50]
        z_mm[v] = float(ct.to_lps((kji[:, ::-1] + crop_origin_ijk).astype(float))[:, 2].mean())
    table = {v: n for v, n in table.items() if v not in values}
    for i, v in enumerate(sorted(kept, key=lambda v: -z_mm[v])):
        table[v] = f"{stem}_{chr(ord('a') + i % 26)}{'' if i < 26 else i // 26}"
    # Keep label values contiguous (1..n) as other stages expect.
    order = sorted(table)
    relabel = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    for new, old in enumerate(order, start=1):
        relabel[old] = new
    return relabel[labels], {new: table[old] for new, old in enumerate(order, start=1)}


def _body_centre_lps(ct: Volume) -> NDArray[np.float64] | None:
    """Centroid (LPS mm) of the body (voxels above -300 HU), sub-sampled; None if empty."""
    a = ct.array_zyx[::2, ::4, ::4]
    kji = np.argwhere(a > -300)
    if len(kji) == 0:
        return None
    ijk = kji[:, ::-1] * np.array([4, 4, 2])
    return ct.to_lps(ijk.astype(float)).mean(axis=0)


# --- Re-separation of bones joined across a blurred joint space -------------------------------
#: "Bright" (smoothed HU): the cortex level. Marrow and joint spaces lie below it, also in
#: blurred thin cortices (a 1.5 mm cortex at a 1.2 mm PSF peaks at ~500 HU).
JOINT_BRIGHT_HU = 400.0
#: A marrow seed lies at least this far from any bright voxel and from the bone's outside; a
#: joint space (<= 6 mm wide between two cortices) never does.
JOINT_SEED_DEPTH_MM = 3.0
#: Seeds grow through the marrow (non-bright voxels) at least this far from any bright voxel and
#: from the outside, and at least one voxel of the grid (:func:`joint_moat_mm`), so a marker never
#: leaks through a dim spot of a cortex into the joint space beyond it, nor along the blurred
#: shell around the bones.
JOINT_GROW_MM = 1.0
#: Seeds smaller than this (mm^3) are ignored (noise pockets).
JOINT_SEED_MIN_MM3 = 100.0
#: A marker is marrow only if at most this fraction of the voxels within two face steps of it lie
#: outside the bones (:func:`open_fractions`). A marrow cavity is walled off by its cortex
#: (measured 0.00 on every marrow marker of a blurred pelvis); a pocket in a joint space or in
#: the gap between two bones opens to the outside (0.34-0.35 at the sacro-iliac joints of the
#: small pelvis phantom at 1.75 mm, where such a pocket flooded a hip bone).
JOINT_OPEN_MAX = 0.25
#: Each marrow marker takes the voxels within this distance (its own cortex) before flooding.
JOINT_CORTEX_MM = 3.0
#: The valley test looks this far on each side of an interface face for the brighter cortex.
JOINT_REACH_MM = 4.0


#: The re-separation's grid: sub-sampled by whole steps to about this spacing (mm) along each
#: axis (:func:`joint_grid_step`).
JOINT_GRID_MM = 1.5


def joint_grid_step(spacing: NDArray) -> tuple[int, int, int]:
    """Whole-voxel sub-sampling step (k, j, i) of :func:`_split_joined_bones`' watershed: the
    step nearest to :data:`JOINT_GRID_MM` along each axis (1 on grids of 1.1 mm and coarser).

    Its seed, growth and cortex distances (:data:`JOINT_SEED_DEPTH_MM`, :data:`JOINT_GROW_MM`)
    are a few voxels of such a grid, where a blurred joint space is at most a voxel or two
    wide. On a finer grid the same image resolves the blurred joint space as a channel wider
    than :data:`JOINT_GROW_MM` from every bright voxel, and the marrow of bones across the
    joint join (measured: a hip phantom resampled to 0.82 x 0.65 x 0.75 mm left both hip bones
    and the sacrum one region, and no bone named; on a 1.64 x 1.3 x 1.5 mm grid all were named).
    The same image therefore gets the same split at any voxel size; the boundaries are then
    set at full resolution (:func:`adaptive_refine`).
    """
    return tuple(max(1, int(round(JOINT_GRID_MM / s_))) for s_ in spacing[::-1])  # type: ignore[return-value]


def joint_moat_mm(spacing: NDArray) -> float:
    """How far (mm) from every bright voxel and from the outside the marrow markers of
    :func:`_joint_watershed` grow: :data:`JOINT_GROW_MM`, and more than one voxel of the grid
    (``spacing``, mm). On a grid coarser than :data:`JOINT_GROW_MM` the voxels next to a cortex
    or to the outside would otherwise count: their chain, the blurred shell around the bones,
    joined the marrow of the sacrum and a femur through a hip joint on a 1.75 mm grid."""
    return max(JOINT_GROW_MM, float(np.max(spacing)) + 1e-3)


def open_fractions(markers: NDArray, mask: NDArray, which: NDArray) -> NDArray[np.float64]:
    """Per marker label ``v`` with ``which[v]``: the fraction of the voxels within two face steps
    of the marker (not in it) that lie outside ``mask``; 0 for the other labels.

    ``markers`` is an int label array, ``mask`` the bones (bool), ``which`` a bool array indexed
    by label (length ``markers.max() + 1``)."""
    out = np.zeros(len(which), np.float64)
    boxes = ndi.find_objects(markers)
    for v in np.flatnonzero(which):
        if v == 0 or v > len(boxes) or boxes[v - 1] is None:
            continue
        grown = tuple(slice(max(0, s_.start - 2), min(n_, s_.stop + 2)) for s_, n_ in zip(boxes[v - 1], markers.shape))
        m = markers[grown] == v
        ring = ndi.binary_dilation(m, iterations=2) & ~m
        if ring.any():
            out[v] = float(np.mean(~mask[grown][ring]))
    return out


def _joint_watershed(ct_zyx: NDArray, regions: NDArray, spacing: NDArray, n_regions: int) -> NDArray | None:
    """The marker watershed of :func:`_split_joined_bones` on one grid: int32 labels of the new
    bones on the components of ``regions`` where one region holds two or more marrow markers
    (0 elsewhere), or None when no region does.

    The markers are imposed as the landscape's minima (Beucher & Meyer 1993), so every marker
    starts flooding at once and the flood order is that of the voxels between them. ITK's filter
    otherwise starts each marker at its own level: a marker in dim marrow then lost its own
    cortex, and every bone it touches, to a marker that touched a bright cortex first (a blurred
    pelvis: one small hip-bone marker flooded both hip bones and the sacrum)."""
    mask = regions > 0
    sm = ndi.gaussian_filter(ct_zyx.astype(np.float32), 0.7)
    bright = (sm >= JOINT_BRIGHT_HU) | ~mask
    to_bright = _arr(
        sitk.SignedMaurerDistanceMap(
            _img(np.pad(bright, 1, constant_values=True).astype(np.uint8), spacing), insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
    )[1:-1, 1:-1, 1:-1]
    seeds = mask & (to_bright > JOINT_SEED_DEPTH_MM)
    if not seeds.any():
        return None
    moat = joint_moat_mm(spacing)
    low = mask & (to_bright > moat)  # not through dim spots next to a cortex, nor along the outside
    grown = _arr(sitk.BinaryReconstructionByDilation(_img(seeds.astype(np.uint8), spacing), _img(low.astype(np.uint8), spacing))).astype(bool)
    markers, n = ndi.label(grown, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(spacing))
    seed_vol = np.bincount(markers[seeds], minlength=n + 1) * voxel_mm3
    ok = seed_vol >= JOINT_SEED_MIN_MM3
    ok[0] = False
    ok &= open_fractions(markers, mask, ok) <= JOINT_OPEN_MAX  # marrow is walled off; a gap is open
    if ok.sum() < 2:
        return None
    lut = np.zeros(n + 1, np.int32)
    lut[ok] = np.arange(1, int(ok.sum()) + 1)
    markers = lut[markers]
    # Which existing regions hold two or more markers? Only their components are redone.
    pairs = _pairs(regions, markers)
    per_region = np.bincount(pairs[0], minlength=n_regions + 1)
    crowded = np.flatnonzero(per_region >= 2)
    if crowded.size == 0:
        return None
    comps, _nc = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    affected = np.unique(comps[_member(regions, crowded)])
    work = _member(comps, affected)
    markers[~work] = 0
    # Each marker takes its own cortex: the bright voxels it reaches through bright voxels in
    # JOINT_CORTEX_MM (a geodesic dilation, so it never crosses a dark joint space), starting
    # across the moat its growth left next to the cortex.
    allowed = work & (bright | (to_bright <= moat))
    cross = ndi.generate_binary_structure(3, 1)
    for _ in range(max(1, int(round(JOINT_CORTEX_MM / float(np.min(spacing)))))):
        grow = ndi.grey_dilation(markers, footprint=cross)
        take = allowed & (markers == 0) & (grow > 0)
        if not take.any():
            break
        markers[take] = grow[take]
    level = -sm
    level[markers > 0] = float(level[work].min()) - 1.0  # minima imposed: every marker floods from the start
    return marker_watershed(level, markers, work, spacing)


def interface_faces(labels: NDArray) -> list[tuple[int, tuple[NDArray, ...], NDArray, NDArray]]:
    """The faces between two different non-zero labels of ``labels`` (int, k, j, i), per axis:
    ``(axis, idx, a, b)`` with ``idx`` the (k, j, i) index arrays of the voxel on the low side
    (its neighbour on the high side is one step further along ``axis``) and ``a``, ``b`` the
    labels on the two sides."""
    if labels.size and 0 <= labels.min() and labels.max() < 256:
        labels = labels.astype(np.uint8, copy=False)  # a quarter of the memory traffic
    out = []
    for axis in range(3):
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        a_, b_ = labels[lo], labels[hi]
        idx = np.nonzero((a_ != b_) & (a_ > 0) & (b_ > 0))
        up = list(idx)
        up[axis] = idx[axis] + 1
        out.append((axis, idx, labels[idx], labels[tuple(up)]))
    return out


def near_faces(faces: list[tuple[int, tuple[NDArray, ...], NDArray, NDArray]], shape: tuple[int, ...], spacing: NDArray, reach_mm: float) -> NDArray:
    """bool mask (``shape``) of the voxels within ``reach_mm`` plus a voxel, along each axis (a
    box), of the voxels on either side of ``faces`` (as from :func:`interface_faces`);
    ``spacing`` (i, j, k) in mm."""
    seeds = np.zeros(shape, bool)
    for axis, idx, _a, _b in faces:
        seeds[idx] = True
        up = list(idx)
        up[axis] = idx[axis] + 1
        seeds[tuple(up)] = True
    if not seeds.any():
        return seeds
    r = [int(np.ceil(reach_mm / s_)) + 1 for s_ in spacing[::-1]]  # k, j, i
    box = tuple(slice(max(0, b.start - g), min(n_, b.stop + g)) for b, g, n_ in zip(_bbox(seeds, 0), r, shape))
    out = np.zeros(shape, bool)
    out[box] = box_max(seeds[box].view(np.uint8), r) > 0
    return out


def near_interfaces(labels: NDArray, spacing: NDArray, reach_mm: float) -> NDArray:
    """bool mask of the voxels within ``reach_mm`` plus a voxel, along each axis (a box), of a
    face between two different non-zero labels of ``labels`` (int, k, j, i); ``spacing`` (i, j,
    k) in mm."""
    return near_faces(interface_faces(labels), labels.shape, spacing, reach_mm)


def _interface_valley_depth(
    regions: NDArray, sm: NDArray, spacing: NDArray, faces: list[tuple[int, tuple[NDArray, ...], NDArray, NDArray]] | None = None
) -> dict[tuple[int, int], float]:
    """Median valley depth (HU) of the interface between every pair of touching regions.

    At each face between a voxel of region a and one of region b, the depth is
    min(brightest HU within :data:`JOINT_REACH_MM` on a's side, same on b's side) - HU at the
    face, along the face's axis: positive in a dark sheet between two cortices (a joint space,
    the dark-sheet idea of Descoteaux et al. 2005 at a joint's scale), negative where the fronts
    met on bright bone. ``faces``: :func:`interface_faces` of ``regions``, when the caller has them.
    """
    n = int(regions.max())
    depths: dict[int, list[NDArray]] = {}
    for axis, idx, la, lb in interface_faces(regions) if faces is None else faces:
        if la.size == 0:
            continue
        up = list(idx)
        up[axis] = idx[axis] + 1
        face = 0.5 * (sm[idx] + sm[tuple(up)])
        reach = max(1, int(round(JOINT_REACH_MM / spacing[::-1][axis])))
        last = sm.shape[axis] - 1
        side_a = np.full(face.shape, -np.inf, np.float32)
        side_b = side_a.copy()
        at = list(idx)
        for k in range(reach + 1):
            at[axis] = np.clip(idx[axis] - k, 0, last)
            side_a = np.maximum(side_a, sm[tuple(at)])
            at[axis] = np.clip(idx[axis] + 1 + k, 0, last)
            side_b = np.maximum(side_b, sm[tuple(at)])
        key = np.minimum(la, lb).astype(np.int64) * (n + 1) + np.maximum(la, lb)
        d = np.minimum(side_a, side_b) - face
        order = np.argsort(key, kind="stable")
        key, d = key[order], d[order]
        starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
        for s_, e_ in zip(starts, np.r_[starts[1:], len(key)]):
            depths.setdefault(int(key[s_]), []).append(d[s_:e_])
    return {(k // (n + 1), k % (n + 1)): float(np.median(np.concatenate(v))) for k, v in depths.items()}


#: Bones of a knee: a field of view where every piece is one of these, named confidently, needs no
#: hip split (:func:`_all_knee_bones`).
KNEE_BONES = ("femur", "tibia", "fibula", "patella")


def _all_knee_bones(infos: list[RegionInfo]) -> bool:
    """True when the naming reads ``infos`` as a knee and names every piece confidently as a
    knee bone. Then no hip joint lies in the field of view, fused or not (a femoral head fused
    with its socket would be a piece that is no knee bone), and :func:`_split_joined_bones`,
    whose result "auto" keeps only for a hip, is not run: on a 512 x 512 x 400 knee CT it took
    38.6 of the 56.5 s of the segmentation, for nothing."""
    named = name_bones(infos, anatomy="auto")
    if named.anatomy != "knee" or not infos:
        return False
    return all(
        named.names.get(r.index, "").split("_")[0] in KNEE_BONES and named.confidence.get(r.index, 0.0) >= CONFIDENT for r in infos
    )


def _uncut(infos: list[RegionInfo]) -> list[RegionInfo]:
    """``infos`` without their cut points, for deciding whether to try :func:`_split_joined_bones`.

    With the field of view's cut points as evidence of a long bone continuing out of view, a
    knee whose tibia the field of view cuts may read as a femoral head under the condyles, and
    the split would be tried (and its result judged) for nothing. Whether the split is kept is
    decided with the cut points and the body centre, as the naming sees them: since the hip rule
    needs a ball in a socket, that names 9 of 30 random hip fields of view that were all left
    unnamed, with no confident misname (2026-12-05)."""
    return [replace(r, cut_lps=np.zeros((0, 3))) for r in infos]


def _split_joined_bones(
    ct_zyx: NDArray,
    pieces: list[tuple[tuple[slice, ...], NDArray]],
    spacing: NDArray,
    p: ClassicalParams,
    body: NDArray,
    offset_kji: NDArray,
    *,
    fill_planes: bool = False,
    smoothed: NDArray | None = None,
) -> tuple[list[tuple[tuple[slice, ...], NDArray]], list[str]]:
    """Split regions that hold two bones joined across a blurred joint space.

    A joint space narrower than a few voxels (hip: a femoral head in its socket) is blurred to
    marrow-like HU, so the marrow markers of :func:`_separate` leak across it and one region
    holds both bones. Here markers are marrow **seeds** at least :data:`JOINT_SEED_DEPTH_MM` from
    any bright (cortex) voxel, grown through the non-bright voxels they reach (their own marrow:
    a joint space is walled off from it by the cortex) and then by :data:`JOINT_CORTEX_MM` into
    their own cortex; a marker open to the outside (:data:`JOINT_OPEN_MAX`: a pocket of a joint
    space) is no marrow and dropped. A marker-controlled watershed (Beucher & Meyer 1993) on the
    **negated** smoothed HU, the markers imposed as its minima, floods along the bright cortices
    first, so fronts of two bones meet at the darkest point of the joint space between them. The
    joint space each bone took is peeled by :func:`adaptive_refine`, near the new interfaces
    only (:func:`near_interfaces`) and across dark sheets only (:func:`_interface_valley_depth`
    > 0), so the interface between two pieces of one bone (several marrow seeds) is not peeled; those
    pieces are rejoined by the naming step as fragments. Only the connected components where an
    existing region holds two or more pieces are replaced; the new regions get the cleaning of
    :func:`segment_classical` except its pore fills (``refill=False``: they are parts of pieces
    whose pores were filled; on a 512 x 512 x 400 hip CT those fills added no voxel to the nine
    new regions, for 1 s). The markers and the watershed run on a grid of about
    1.5 mm (:func:`joint_grid_step`), so a CT with finer voxels is split as the same image on
    that grid; the peel and the cleaning run on the CT's own grid. ``smoothed`` is ``ct_zyx``
    smoothed as :func:`adaptive_refine` takes it (computed here when None).

    Limits (measured on the pelvis phantom): :data:`JOINT_BRIGHT_HU` must lie above every
    marrow level (at 350 HU the phantom's sacral marrow, 210-350 HU, gets no seed and is
    flooded by a hip bone) and below the peak of the thinnest blurred cortex (at 450 HU the
    femoral head's 1.5 mm cortex is not bright and the femur leaks into the joint space).

    Returns
    -------
    pieces, notes
        The (possibly) new pieces (``(box, mask)`` as from :func:`_clean_regions`) and notes on
        what was split.
    """
    regions = np.zeros(ct_zyx.shape, np.uint8 if len(pieces) < 256 else np.int32)
    for i, (b, mk) in enumerate(pieces, start=1):
        regions[b][mk] = i
    mask = regions > 0
    step = joint_grid_step(spacing)
    if step == (1, 1, 1):
        ws = _joint_watershed(ct_zyx, regions, spacing, len(pieces))
        if ws is not None:
            ws = _narrow(ws)
    else:
        ws_c = _joint_watershed(block_mean(ct_zyx, step), block_max(regions, step), spacing * np.array(step[::-1], float), len(pieces))
        ws = None if ws_c is None else up_blocks(_narrow(ws_c), mask, step)
        del ws_c
    if ws is None:
        return pieces, []
    # A piece the watershed labelled (a component of the coarse grid holding two or more
    # markers) is replaced by the new regions; the others are kept as they are.
    kept = [pc for pc in pieces if not ws[pc[0]][pc[1]].any()]
    groups = ws
    # Nothing to do unless some old region really spans two of the new bones.
    pairs = _pairs(regions, groups)
    split = np.flatnonzero(np.bincount(pairs[0], minlength=len(pieces) + 1) >= 2)
    if split.size == 0:
        return pieces, []
    del regions, mask
    if p.adaptive_boundary:
        # Pieces of one bone (several marrow seeds) stay apart here: naming rejoins them as
        # fragments of the bone they touch most. Merging by the interface test alone is not safe:
        # a thin, dim cortex (the sacrum's) makes a joint interface look like bone (measured
        # -6..-22 HU at the phantom's sacro-iliac joints vs -5..-60 HU inside one hip bone).
        if smoothed is None:
            smoothed = ndi.gaussian_filter(ct_zyx.astype(np.float32), 0.7)
        faces = interface_faces(ws)
        depths = _interface_valley_depth(ws, smoothed, spacing, faces)
        # Peel the joint space each bone took up to the meeting line, but only across dark
        # sheets: pieces whose interface is no valley (likely one bone, rejoined later as a
        # fragment) are refined together, so their interface is not peeled.
        lut = _union_lut(int(ws.max()) + 1, ((a, b) for (a, b), depth in depths.items() if depth <= 0.0))
        together = lut.astype(ws.dtype)[ws]
        # Only the joint spaces are peeled: the voxels near an interface between two groups (the
        # faces of ``ws`` whose two sides ``together`` keeps apart). The bones' other surfaces
        # were peeled before the split (a second peel there would only cut deeper into a surface
        # already at its edge level).
        apart = []
        for axis, idx, la, lb in faces:
            keep = lut[la] != lut[lb]
            apart.append((axis, tuple(i[keep] for i in idx), la[keep], lb[keep]))
        near = near_faces(apart, ws.shape, spacing, p.peel_mm)
        groups = np.where(adaptive_refine(ct_zyx, together, spacing, p, smoothed, near=near) > 0, groups, 0)
        del together, near
    # The new regions are parts of pieces whose cavities and pores were filled: only the
    # cavities the split made (a bone's voxels given to another) are filled again. A bone
    # without a marker of its own lying within a coarse voxel of a split bone took that bone's
    # label on the coarse grid; apart from it on the CT's grid, it is kept as a piece of its own
    # (``parts``; naming names it or merges it as a fragment) rather than dropped as not the
    # label's largest piece (found by a second review: a block 1.7 mm from a split ball was lost).
    new = _clean_regions(groups, spacing, p, body, offset_kji=offset_kji, fill_planes=fill_planes, refill=False, parts=True)
    notes = [
        f"split {split.size} region(s) holding bones joined across a blurred joint space into "
        f"{len(new)} bone region(s) (marker watershed on the negated HU)"
    ]
    return kept + new, notes
