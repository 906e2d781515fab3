"""Classical (offline, training-free) bone segmentation of a CT into named per-bone labels.

Pipeline (all distances in mm, computed with the true anisotropic voxel spacing):

1. **Beads / small metal**: connected components above ``metal_hu`` smaller than
   ``bead_max_volume_mm3`` are fiducial beads or wires, not bone. A zone around each is
   excluded from the bone mask; the dent this leaves in the bone surface is refilled by a
   local morphological closing of the bone alone.
2. **Bone mask by hysteresis**: voxels >= ``bone_low_hu`` connected to a voxel >=
   ``bone_high_hu`` (reconstruction by dilation, Vincent 1993, IEEE TIP 2(2)).
3. **Boundary at the local half maximum**: the outer layer of each component is
   re-thresholded half-way between the local cortical peak (grey dilation) and the soft tissue
   around it: the full-width-at-half-maximum edge criterion, which puts the boundary on the
   true surface of a blurred edge instead of at a fixed HU level that moves with blur. Done
   again per bone after separation, which also peels blurred bridges across narrow joints.
4. **Solid bones**: cavities (marrow, cancellous bone below the threshold) are filled in 3D,
   and per bone in 2D slices so bones cut by the field of view are solid too.
   Bumps of bead size left on the surface (beads whose blurred peak stays below
   ``metal_hu``) are removed as the small compact residue of a morphological opening.
5. **Table, cables, noise**: components too thin to contain a ball of ``seed_depth_mm``
   radius or smaller than ``min_bone_volume_mm3`` are dropped.
6. **Separation at joints**: joint spaces blurred shut are found as thin dark sheets (local
   minima across, :func:`joint_valleys`) and cut; then marker-controlled watershed (Beucher &
   Meyer 1993) on the negated Euclidean distance map of the cut mask (Maurer et al. 2003, IEEE TPAMI 25(2)), markers = connected
   cores deeper than ``seed_depth_mm``. Neighbouring regions whose interface is nearly as
   thick as the thinner region (a waist, not a joint) are merged again.
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
below the local threshold), the bead halo in each bead's own box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume
from scipy import ndimage as ndi

from .naming import RegionInfo, detect_anatomy, name_regions

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
    """Tunable thresholds of :func:`segment_classical` (HU, mm, mm^3)."""

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
    body_opening_mm: float = 5.0
    min_body_volume_mm3: float = 20000.0
    min_inside_body: float = 0.5
    max_boundary_hu: float = 900.0
    crop_margin_vox: int = 3
    bump_radius_mm: float = 2.0
    bump_max_volume_mm3: float = 25.0
    bump_max_extent_mm: float = 7.0


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
    lab, n = ndi.label(metal)
    sizes = np.bincount(lab[metal], minlength=n + 1)[1:] * voxel_mm3
    small = np.flatnonzero(sizes <= p.bead_max_volume_mm3) + 1
    if small.size == 0:
        return np.zeros(ct_zyx.shape, bool), []
    keep = np.zeros(n + 1, bool)
    keep[small] = True
    boxes = [b for i, b in enumerate(ndi.find_objects(lab), start=1) if b is not None and keep[i]]
    # Zone: bead grown by its blur halo (distance in mm, anisotropic spacing respected),
    # computed in each bead's own box grown by the halo (beads are small and sparse).
    zone = np.zeros(ct_zyx.shape, bool)
    halo = [int(np.ceil(p.bead_zone_mm / s)) + 1 for s in spacing[::-1]]
    for i, b in enumerate(ndi.find_objects(lab), start=1):
        if b is None or not keep[i]:
            continue
        g = tuple(slice(max(0, s_.start - h), min(dim, s_.stop + h)) for s_, h, dim in zip(b, halo, ct_zyx.shape))
        bead = np.pad((lab[g] == i).astype(np.uint8), 1)  # padded so the box edge is outside
        dist = _arr(sitk.SignedMaurerDistanceMap(_img(bead, spacing), insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
        zone[g] |= dist[1:-1, 1:-1, 1:-1] <= p.bead_zone_mm
    return zone, boxes


def _hysteresis(ct_zyx: NDArray, allowed: NDArray, spacing: NDArray, p: ClassicalParams) -> NDArray:
    low = (ct_zyx >= p.bone_low_hu) & allowed
    high = (ct_zyx >= p.bone_high_hu) & low
    rec = sitk.BinaryReconstructionByDilation(_img(high.astype(np.uint8), spacing), _img(low.astype(np.uint8), spacing))
    return sitk.GetArrayFromImage(rec).astype(bool)


def _adaptive_refine(ct_zyx: NDArray, regions: NDArray, spacing: NDArray, p: ClassicalParams) -> NDArray:
    """Peel each region's outer layer down to the local half-maximum edge.

    For every region (its own mask; other regions count as outside, so a blurred bridge at a
    joint is peeled too), voxels within ``p.peel_mm`` of its outside are kept only if their HU
    reaches half-way between the local bone peak (grey dilation, box kernel, of the region's HU over
    ``p.peak_radius_mm``: the cortex next to this edge) and the soft tissue around the region
    (median of a 2 mm shell). The inside stays solid; cavities the peel opens behind an intact
    cortex are filled again by the caller.

    Parameters
    ----------
    regions
        int label array (0 = background), same shape as ``ct_zyx``.

    Returns
    -------
    The refined int label array.
    """
    out = regions.copy()
    shell_r = _ball_radius_vox(2.0, spacing)
    peak_r = _ball_radius_vox(p.peak_radius_mm, spacing)
    grow = [max(a, b) + 1 for a, b in zip(shell_r, peak_r)][::-1]
    for idx, box in enumerate(ndi.find_objects(regions), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - g), min(dim, s.stop + g)) for s, g, dim in zip(box, grow, regions.shape))
        comp = regions[grown] == idx
        vals = ct_zyx[grown]
        dil = _arr(sitk.BinaryDilate(_img(comp.astype(np.uint8), spacing), shell_r, sitk.sitkBall)).astype(bool)
        around = dil & (regions[grown] == 0)
        soft = float(np.median(vals[around])) if around.any() else 0.0
        soft = min(max(soft, -200.0), 150.0)
        depth = sitk.GetArrayFromImage(
            sitk.SignedMaurerDistanceMap(_img(comp.astype(np.uint8), spacing), insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
        )
        edge = comp & (depth <= p.peel_mm)
        if not edge.any():
            continue
        peak = _arr(sitk.GrayscaleDilate(_img(np.where(comp, vals, -1024.0).astype(np.float32), spacing), peak_r, sitk.sitkBox))
        thr = np.clip(0.5 * (peak + soft), p.bone_low_hu, p.max_boundary_hu)
        # Only the outer slope of the cortex is peeled: there HU rises going inwards (the HU
        # gradient points along the depth gradient). Marrow under a thin or blurred cortex lies
        # on the inner slope (HU falls inwards) and is kept.
        sm = ndi.gaussian_filter(vals.astype(np.float32), 0.7)
        depth = depth.astype(np.float32, copy=False)
        cand = np.nonzero(edge & (vals < thr))  # only these can be peeled: gradients there only
        rising_inwards = np.zeros(cand[0].shape, np.float32)
        for ax, sp_ in enumerate(spacing[::-1]):
            # Central differences, one-sided at the box faces: what np.gradient computes.
            lo = np.maximum(cand[ax] - 1, 0)
            hi = np.minimum(cand[ax] + 1, comp.shape[ax] - 1)
            den = (hi - lo).astype(np.float32)
            at_lo = tuple(lo if a == ax else c for a, c in enumerate(cand))
            at_hi = tuple(hi if a == ax else c for a, c in enumerate(cand))
            gi = (sm[at_hi] - sm[at_lo]) / den
            gd = (depth[at_hi] - depth[at_lo]) / den
            rising_inwards += gi * gd / np.float32(sp_ * sp_)
        peel = np.zeros(comp.shape, bool)
        peel[tuple(c[rising_inwards > 0] for c in cand)] = True
        sub = out[grown]
        sub[peel] = 0
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


def _remove_bumps(bone: NDArray, spacing: NDArray, p: ClassicalParams) -> NDArray:
    """Remove small compact bumps sitting on the bone surface (fiducial beads blurred below the
    metal threshold): the residue of a morphological opening (Serra 1982) with a ball of
    ``bump_radius_mm``, kept only where it forms a blob no larger than a bead."""
    if p.bump_radius_mm <= 0 or not bone.any():
        return bone
    r = _ball_radius_vox(p.bump_radius_mm, spacing)
    padded = np.pad(bone, [(x, x) for x in r[::-1]])
    opened = _arr(sitk.BinaryMorphologicalOpening(_img(padded.astype(np.uint8), spacing), r, sitk.sitkBall)).astype(bool)
    opened = opened[tuple(slice(x, x + n) for x, n in zip(r[::-1], bone.shape))]
    residue = bone & ~opened
    lab, n = ndi.label(residue, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return bone
    voxel_mm3 = float(np.prod(spacing))
    out = bone.copy()
    for idx, box in enumerate(ndi.find_objects(lab), start=1):
        m = lab[box] == idx
        if m.sum() * voxel_mm3 > p.bump_max_volume_mm3:
            continue
        kji = np.argwhere(m)
        ext_mm = (np.ptp(kji, axis=0) + 1) * spacing[::-1]
        if np.linalg.norm(ext_mm) > p.bump_max_extent_mm:
            continue
        out[box] &= ~m
    return out


def fill_cavities(mask: NDArray) -> NDArray:
    """Fill enclosed cavities in 3D, treating each face of the volume as a lid.

    Each face of the box is closed by its own 2D hole-filled slice before the 3D fill, so a
    hollow bone cut open by the field of view (a rib or shaft leaving the scan) is still
    filled, while spaces open to the outside inside the volume are not.
    """
    padded = np.pad(mask, 1)
    for axis in range(3):
        for src_i, dst_i in ((1, 0), (-2, -1)):
            face = np.take(padded, src_i, axis=axis)
            lid = ndi.binary_fill_holes(face) & ~face
            idx = [slice(None)] * 3
            idx[axis] = dst_i
            padded[tuple(idx)] |= lid
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(padded.astype(np.uint8)))).astype(bool)
    return filled[1:-1, 1:-1, 1:-1] | mask


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


def _separate(mask: NDArray, spacing: NDArray, p: ClassicalParams, ct_zyx: NDArray) -> tuple[NDArray, NDArray]:
    """Split ``mask`` into bones; returns (region labels int32, distance map mm of the cut mask).

    Markers: each bone's **marrow** (voxels below ``marrow_max_hu`` deeper than
    ``marrow_depth_mm`` inside the mask): touching bones keep separate marrow cavities, walled
    off by their cortices, even where the joint space is closed. Solid components without
    marrow (thin bones, the table) get distance-map cores instead, computed after cutting
    joint valleys (:func:`joint_valleys`). The watershed runs on the smoothed HU, so the
    boundary between two marrow markers follows the bright double cortex where bones touch.
    """
    cut = mask & ~joint_valleys(ct_zyx, mask, spacing, p)
    dist = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(_img(cut.astype(np.uint8), spacing), insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    ).astype(np.float32)
    depth = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(_img(mask.astype(np.uint8), spacing), insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    )
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
    n_seeds = int(markers.max())
    if n_seeds == 0:
        return np.zeros(mask.shape, np.int32), dist
    smooth = ndi.gaussian_filter(ct_zyx.astype(np.float32), 0.7)
    landscape = _img(np.where(mask, smooth, 1.0e4).astype(np.float32), spacing)
    del smooth
    ws = sitk.MorphologicalWatershedFromMarkers(landscape, _img(markers.astype(np.uint32), spacing), markWatershedLine=False, fullyConnected=True)
    regions = sitk.GetArrayFromImage(ws).astype(np.int32) * mask
    # Flooding goes by level, so every voxel of a component holding a marker is claimed from
    # inside it before any background voxel; a component with no marker (thinner than
    # ``seed_depth_mm`` everywhere: a rib end, a process, or a table or cable, removed later
    # by the body test) is instead claimed across the gap, so it becomes a region of its own.
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
    regions = _merge_split_shafts(regions, spacing, set(range(1, n_marrow + 1)), p, ct_zyx)
    regions = _merge_waists(regions, dist, p.merge_ratio, protected=set(range(1, n_marrow + 1)))
    return regions, dist


def _merge_split_shafts(regions: NDArray, spacing: NDArray, candidates: set[int], p: ClassicalParams, ct_zyx: NDArray) -> NDArray:
    """Merge two marrow-grown regions that are one bone whose marrow pinched off near an end.

    Where a long bone's marrow is interrupted (an all-cortical stretch near an epiphysis) it
    grows two regions. The smaller one then continues the larger along its long axis: its
    centroid lies beyond the larger one's end (within the last ``shaft_end_fraction`` of its
    length or past it), within the larger one's radius of its axis, and the two share an
    interface of at least ``shaft_area_ratio`` x the smaller one's cross-section (optionally with
    a mean HU >= ``shaft_interface_hu``), and it is at most ``shaft_piece_ratio`` x the larger
    one's volume (an end piece, not a long bone of its own, as a tibia under a femur is). A joint
    contact fails at least one test: the patella and fibula sit beside their neighbour's
    shaft, and a femur resting on a tibia touches over a patch much smaller than the tibia's
    cross-section.
    """
    n = int(regions.max())
    if n < 2 or len(candidates) < 2:
        return regions
    face_mm2 = np.array([spacing[0] * spacing[1], spacing[0] * spacing[2], spacing[1] * spacing[2]])  # normal to k, j, i
    areas: dict[tuple[int, int], float] = {}
    hu_sum: dict[tuple[int, int], float] = {}
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
        for k_, c_, h_ in zip(uk, cnt, sums):
            pair = (int(k_ // (n + 1)), int(k_ % (n + 1)))
            areas[pair] = areas.get(pair, 0.0) + float(c_ * face_mm2[axis])
            hu_sum[pair] = hu_sum.get(pair, 0.0) + float(h_ / c_ * c_ * face_mm2[axis])
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
            cs = float(np.bincount(np.floor(t - t.min()).astype(np.int64)).max()) * float(np.prod(spacing))
            cache[r] = (float(len(kji) * np.prod(spacing)), c, vt[0], (float(t.min()), float(t.max())), cs)
        return cache[r]

    parent = list(range(n + 1))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

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
        piece = shape_of(small)[0] <= p.shaft_piece_ratio * shape_of(big)[0]  # an end piece, not a bone of its own
        if beyond and within and solid and piece and area >= p.shaft_area_ratio * cs_small:
            parent[find(ra)] = find(rb)
    lut = np.array([find(i) for i in range(n + 1)], dtype=np.int32)
    return lut[regions]


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


def _clean_regions(
    regions: NDArray, spacing: NDArray, p: ClassicalParams, body: NDArray, *, offset_kji: NDArray | None = None
) -> list[tuple[tuple[slice, ...], NDArray]]:
    """Per region: largest connected piece, cavities filled; drop regions below the minimum
    volume and regions lying mostly outside the body (the table, cables, external objects).

    ``body`` is the coarse body mask of a box whose voxel (0, 0, 0) is ``-offset_kji`` in
    ``regions`` (index (k, j, i) offset of ``regions`` inside that box; zero when the same box)."""
    off = np.zeros(3, np.int64) if offset_kji is None else np.asarray(offset_kji, np.int64)
    step = _coarse_step(spacing)
    voxel_mm3 = float(np.prod(spacing))
    masks: list[tuple[tuple[slice, ...], NDArray]] = []
    for idx, box in enumerate(ndi.find_objects(regions), start=1):
        if box is None:
            continue
        m = regions[box] == idx
        lab, n = ndi.label(m, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            m = lab == (int(np.argmax(sizes)) + 1)
        if m.sum() * voxel_mm3 < p.min_bone_volume_mm3:
            continue
        kji = np.argwhere(m) + np.array([s.start for s in box]) + off
        kji = kji[:: max(1, len(kji) // 5000)] // np.array(step)
        kji = np.minimum(kji, np.array(body.shape) - 1)
        if body[kji[:, 0], kji[:, 1], kji[:, 2]].mean() < p.min_inside_body:
            continue
        m = fill_cavities(m)
        # Porous cortex (thin cortex over cancellous bone, e.g. a vertebral body): close pores of
        # one voxel, then add the cavities this encloses (not the closing's own voxels).
        padded = np.pad(m, 1)
        closed = ndi.binary_closing(padded, structure=ndi.generate_binary_structure(3, 1))[1:-1, 1:-1, 1:-1]
        m |= fill_cavities(closed) & ~closed
        masks.append((box, m))
    return masks


def segment_classical(ct: Volume, *, anatomy: str = "auto", params: ClassicalParams | None = None) -> Segmentation:
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
    candidates = full >= p.bone_high_hu
    if not candidates.any():
        raise InputError(
            None,
            f"no bone found: no voxel reaches {p.bone_high_hu:.0f} HU (max {float(full.max()):.0f}); "
            "is this a CT in Hounsfield units?",
        )
    # Work inside the bounding box of everything dense enough to be bone.
    box = ndi.find_objects((full >= p.bone_low_hu).astype(np.uint8))[0]
    m = p.crop_margin_vox
    box = tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, n in zip(box, full.shape))
    ct_zyx = full[box].astype(np.float32)

    zone, bead_boxes = _bead_mask(ct_zyx, spacing, p)
    bone = fill_cavities(_hysteresis(ct_zyx, ~zone, spacing, p))
    body = _body_mask(ct_zyx, spacing, p)  # on the wide box: the body around the bones
    # Components smaller than a bone can never become one (every region lies in one component
    # and regions below ``min_bone_volume_mm3`` are dropped): drop them now (noise specks
    # above ``bone_low_hu`` in soft tissue), then shrink the work box to the bones left plus a
    # margin wider than any neighbourhood used below. Every later pass runs on that box.
    bone = _drop_small_components(bone, spacing, p.min_bone_volume_mm3)
    if not bone.any():
        raise InputError(None, "no bone found: dense voxels exist but none forms a bone-sized solid object")
    margin = [max(p.crop_margin_vox + 3, int(np.ceil(8.0 / s_))) for s_ in spacing[::-1]]
    inner = tuple(
        slice(max(0, s_.start - g), min(n_, s_.stop + g))
        for s_, g, n_ in zip(ndi.find_objects(bone.astype(np.uint8))[0], margin, bone.shape)
    )
    inner_kji = np.array([s_.start for s_ in inner])
    ct_zyx, bone, zone = ct_zyx[inner], bone[inner], zone[inner]
    bead_boxes = _shift_boxes(bead_boxes, inner)
    box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))
    if p.adaptive_boundary:
        bone = fill_cavities(_adaptive_refine(ct_zyx, ndi.label(bone)[0], spacing, p) > 0)
    bone = _repair_bead_dents(bone, zone, bead_boxes, spacing)
    bone = _remove_bumps(bone, spacing, p)
    regions, _dist = _separate(bone, spacing, p, ct_zyx)
    if p.adaptive_boundary:  # again per bone: peels blurred bridges left between touching bones
        regions = _adaptive_refine(ct_zyx, regions, spacing, p)
    pieces = _clean_regions(regions, spacing, p, body, offset_kji=inner_kji)
    if not pieces:
        raise InputError(None, "no bone found: dense voxels exist but none forms a bone-sized solid object")

    crop_origin_ijk = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    infos = []
    for i, (b, mk) in enumerate(pieces):
        kji = np.argwhere(mk) + np.array([s.start for s in b])
        ijk = kji[:, ::-1].astype(float) + crop_origin_ijk
        step = max(1, len(ijk) // 20000)
        infos.append(RegionInfo.from_points(i, ct.to_lps(ijk[::step]), volume_mm3=float(mk.sum() * np.prod(spacing))))
    body_lps = _body_centre_lps(ct)
    names, side = name_regions(infos, anatomy=anatomy, body_centre_lps=body_lps)
    # A limb field of view names every bone it expects; anything else the leg rule leaves as
    # ``bone_<n>`` is a fragment (a piece of a bone cut off by the separation, a blurred bridge),
    # never a bone of its own: it is merged into the bone it touches most, or dropped, with a note.
    limb = (anatomy if anatomy != "auto" else detect_anatomy(infos)) in ("knee", "hip")
    fragments = [i for i, n in names.items() if limb and n.startswith("bone_")]
    for i in fragments:
        del names[i]

    labels_crop = np.zeros(ct_zyx.shape, np.uint8)
    table: dict[int, str] = {}
    value = 0
    for info in sorted(infos, key=lambda r: names.get(r.index, "~")):
        name = names.get(info.index)
        if name is None:
            continue
        value += 1
        if value > 255:
            raise InputError(None, "more than 255 bones found; the label map is uint8")
        b, mk = pieces[info.index]
        labels_crop[b][mk & (labels_crop[b] == 0)] = value
        table[value] = name
    notes = [_absorb_fragment(labels_crop, table, pieces[i], infos[i]) for i in sorted(fragments, key=lambda i: -infos[i].volume_mm3)]
    labels_crop, table = _join_touching(labels_crop, table, stem="vertebrae", ct=ct, crop_origin_ijk=crop_origin_ijk)
    if not table:
        raise InputError(None, "no bone found that could be named for this anatomy")
    labels = np.zeros(full.shape, np.uint8)
    labels[box] = labels_crop
    return Segmentation(
        labels=Volume(labels, ct.lps_from_ijk.copy()),
        table=LabelTable(labels=table, backend="classical", side=side),
        confidence=None,
        notes=tuple(notes),
    )


def _absorb_fragment(labels: NDArray, table: dict[int, str], piece: tuple[tuple[slice, ...], NDArray], info: RegionInfo) -> str:
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
