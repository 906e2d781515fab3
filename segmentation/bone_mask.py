"""The bone mask of the classical backend: cortex seeds grown into the bone they enclose.

Bone on CT is a bright cortical shell around cancellous bone and marrow whose HU can be far
below the cortex's (150-300 HU in a vertebral body, near soft tissue in osteoporotic bone).
The levels that find it are measured on the image rather than fixed (:func:`bone_levels`):

1. **Soft tissue** (:func:`soft_tissue_hu`): the most common HU between fat and bone
   (-100..150 HU): muscle and organs, so the levels follow the scanner's calibration and
   contrast enhancement. A bone lying in air (a dry bone, a bone phantom on the table;
   :func:`in_air`) has none: its surroundings are the air, whose level is used instead, and
   its surface is the local edge level against that level whatever its cortex
   (:attr:`BoneLevels.resolved`; steps 3-5 are for bones in a body).
2. **The image's cortex** (:func:`cortex_peak_hu`): the 95th percentile of the dense voxels
   (>= :data:`DENSE_HU`). A cortex thinner than the voxels (3 mm voxels over a 1 mm cortex)
   shows only part of its contrast above soft tissue (partial volume): a resolved cortex
   measures 1000-1500 HU, the same cortex in 3 mm voxels 400-600 HU.
3. **Seed level**: half-way between soft tissue and that cortex (the half-maximum), never above
   ``bone_high_hu``. The fraction of ``bone_high_hu``'s contrast above soft tissue it keeps is
   the image's **contrast fraction**; the **growth level** keeps the same fraction of
   ``bone_low_hu``'s contrast, so at 3 mm voxels it drops to ~110 HU and takes the cancellous
   interior (150-300 HU) and the partial-volume edge. From a fraction of
   :data:`RESOLVED_FRACTION` up the cortex counts as resolved and the given levels are used.
4. **Growth from the cortex** (:func:`grow_from_cortex`): voxels at or above the growth level
   connected to a seed (reconstruction by dilation, Vincent 1993, IEEE TIP 2(2)), and no
   further than ``grow_max_mm`` from a seed, so a bright organ touching a bone (contrast-filled
   vessel, kidney, bowel, costal cartilage) is not followed far. The interior the cortex
   encloses is filled afterwards by the caller (3D, with the volume's faces as lids, and
   :func:`fill_enclosed_in_planes` where the cortex is not resolved; there a pore enclosed in
   one orientation only is filled too when its mean HU is above soft tissue: cancellous bone,
   not the fluid of a canal).
5. **Where the cortex is not resolved**, per bone: a region with no cortex (fewer than
   :data:`MIN_CORTEX_MM3` of voxels at the seed level: costal cartilage grown from one
   calcified voxel) is not bone (:func:`has_cortex`), and the surface is put at the local half
   maximum between the bone's level just inside it and soft tissue
   (:func:`peel_to_half_maximum`): the growth level, set for the cancellous interior, takes one
   voxel too many at the surface.

On a CT whose cortex is resolved (every OrthoNav phantom: cortex level 940-1270 HU; the shared
abdominal DICOM at 0.98 x 0.98 x 2 mm: 974 HU) the levels are exactly ``bone_high_hu`` /
``bone_low_hu``; on the 3 mm thorax CT (cortex level 553 HU, soft tissue 38 HU) they are
295 / 117 HU. Bone-mask Dice there against its reference: 0.879 with steps 1-4, 0.902 with
step 5 and the dense-pore fill (precision 0.835 -> 0.870, vertebra recall 0.956 -> 0.965).
Sensitivity measured before step 5: 0.88 with the cortex level at the 93rd-95th percentile,
0.78 at the 97th (seed 345 HU: the thinnest ribs and part of the vertebral bodies get no seed
within ``grow_max_mm``); the pore fill's level moved from soft tissue to 20 / 40 HU above it:
0.897 / 0.896 (before the cortex test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi

#: Soft-tissue window (HU) whose mode is the image's soft-tissue level: above fat, below bone.
SOFT_TISSUE_WINDOW_HU = (-100.0, 150.0)
#: Bounds (HU) of an estimated soft-tissue level; outside them the image is not calibrated CT
#: soft tissue, and the bound is used.
SOFT_TISSUE_BOUNDS_HU = (-50.0, 100.0)
#: Reach (mm) within which dense voxels on both sides of a voxel along an axis enclose it
#: (:func:`in_air`): a marrow cavity or cancellous interior, not tissue around a bone.
ENCLOSED_REACH_MM = 40.0
#: Voxels below this (HU) are air (:func:`air_hu`).
AIR_BELOW_HU = -500.0
#: ... and above this (HU): below it lies the padding outside the scanner's field of view (:func:`air_hu`).
AIR_ABOVE_HU = -1200.0
#: Voxels below this (HU) are no tissue, fat included (-150..-50 HU): air, or air's partial
#: volume with what it touches (:func:`in_air`).
NO_TISSUE_BELOW_HU = -200.0
#: Least reach (mm) of the shell around a bone's dense voxels whose content says what surrounds
#: it (:func:`in_air`); at least two voxels of :func:`_sample`'s grid, so that it reaches beyond
#: the surface's partial volume.
SHELL_AROUND_MM = 3.0
#: Share of that shell below :data:`NO_TISSUE_BELOW_HU` above which the bone lies in air
#: (:func:`in_air`): between the bodies' (at most 0.48) and the bones in air's (from 0.74).
AIR_SHELL_FRACTION = 0.6
#: Voxels at least this dense (HU) are bone or contrast: the cortex level is measured on them.
DENSE_HU = 200.0
#: Percentile of the dense voxels taken as the image's cortex level.
CORTEX_PERCENTILE = 95.0
#: Fewest dense voxels (of :func:`_sample`) for a cortex level; below it the given levels are used.
MIN_DENSE_VOXELS = 50
#: Contrast fraction from which the cortex counts as resolved (the half-maximum edge of the
#: cortex is then meaningful: :func:`~orthonav.segmentation.classical.adaptive_refine`).
RESOLVED_FRACTION = 0.9


@dataclass(frozen=True)
class BoneLevels:
    """HU levels of one image (see the module docstring).

    Attributes
    ----------
    soft_hu
        Soft-tissue level (HU).
    cortex_hu
        The image's cortex level (HU; 95th percentile of dense voxels), or NaN if too few.
    seed_hu
        Cortex seed level (HU).
    grow_hu
        Growth level (HU): bone connected to a seed.
    contrast_fraction
        ``(seed_hu - soft_hu) / (bone_high_hu - soft_hu)`` in (0, 1], measured with the seed at
        the half-maximum; the cortex counts as resolved from :data:`RESOLVED_FRACTION` up, and
        the levels are then the given ones.
    in_air
        True for bone lying in air (:func:`in_air`): ``soft_hu`` is then the air's level, and it
        is what surrounds every bone.
    """

    soft_hu: float
    cortex_hu: float
    seed_hu: float
    grow_hu: float
    contrast_fraction: float
    in_air: bool = False

    @property
    def resolved(self) -> bool:
        """True when the bone's surface is the local edge level between its surroundings and its
        cortex (:func:`~orthonav.segmentation.classical.adaptive_refine`): where the cortex is
        resolved (contrast fraction >= :data:`RESOLVED_FRACTION`), and for every bone in air.

        In a body a cortex thinner than the voxels leaves its surface to the growth level and
        the half-maximum peel (:func:`peel_to_half_maximum`); around a bone in air the level is
        known (the air's), and the local edge level against it, with the thin-cortex model of
        :func:`~orthonav.segmentation.classical.edge_fraction_of`, is the better surface for
        thin cortices too. Judged by the contrast fraction, measured against the air, only a
        cortex above ~1700 HU counted as resolved, so a bone in air took the path for a thin
        cortex (every one measured: cortex levels 397-1315 HU): on seven synthetic long bones
        in air (cortex level 397-633 HU) the classical bone mask went from Dice 0.931-0.966
        (mean 0.951) to 0.960-0.989 (mean 0.978), and on the long-bone phantoms (936-1315 HU)
        from 0.971-0.986 to 0.987-0.997 (2026-12-07).
        """
        return self.in_air or self.contrast_fraction >= RESOLVED_FRACTION


#: Images with more voxels than this are sampled at every 2nd voxel along each axis.
SAMPLE_ABOVE_VOXELS = 4_000_000


def _sample(ct_zyx: NDArray) -> NDArray:
    """The voxels the levels are measured on: all of a small image, every 2nd along each axis
    of a large one (> :data:`SAMPLE_ABOVE_VOXELS`)."""
    return ct_zyx[::2, ::2, ::2] if ct_zyx.size > SAMPLE_ABOVE_VOXELS else ct_zyx


def in_air(ct_zyx: NDArray, spacing_ijk: NDArray) -> bool:
    """True for bone lying in air (a dry bone or a bone phantom on the table), not in a body.

    Two signs, both needed, on :func:`_sample` (a body taken for bone in air would get air as
    its soft tissue, and its soft tissue would grow into its bones: on a grainy hand, a
    bone-kernel reconstruction with noise of 150 HU, a seventh of the soft tissue reads above
    200 HU, and those specks alone failed the first sign; found by a second review, tested in
    ``tests/test_bone_in_air.py``; the shell around a speck is soft tissue):

    1. **No soft tissue outside the bones.** The voxels of the soft-tissue window
       (:data:`SOFT_TISSUE_WINDOW_HU`) that are not inside a bone are fewer than the bones'
       dense voxels (>= :data:`DENSE_HU`). The bones are the dense pieces that enclose
       something (:func:`_enclosing`): a scanner table, dense and in air in a body's CT too,
       encloses nothing (a whole-leg draw with little soft tissue on a table four times its
       bones' volume passed for bone in air from that morning's change until tables were left
       out, the same day, 2026-12-07: its legs and table grew into one piece). Nor does a solid bone phantom without marrow, which is then not
       recognised (its surroundings are read as before: the soft-tissue window's mode).
       "Inside" is enclosed by dense voxels on both sides
       within :data:`ENCLOSED_REACH_MM` along at least two of the three axes (a marrow cavity is
       enclosed across its bone, whichever way the bone lies). Bodies hold 3.2-57 x their dense
       voxels in the whole window (the synthetic draws' knee, hip and whole-leg fields of view,
       the shared thorax and abdomen CTs, the real-knee composite of ``phantoms.real_knee``, the
       phantoms, the 512 x 512 x 400 hip CT of the benchmarks: 13.5 x; from 4 x nothing more is
       computed); seven synthetic long bones in air and the long-bone phantoms 0.03-0.72 x,
       their own marrow and their surface's partial volume, and outside the bones 0.07-0.35 x
       (the synthetic ones) and 0.03-0.05 x (the phantoms) (2026-12-07).
    2. **Air around them.** More than :data:`AIR_SHELL_FRACTION` of the voxels within
       :data:`SHELL_AROUND_MM` or two voxels of :func:`_sample`'s grid, whichever is more (3.8-10.8
       mm on the images measured), of the dense voxels, neither dense nor inside a bone, are
       below any tissue (< :data:`NO_TISSUE_BELOW_HU`: air, or its partial volume with the bone):
       0.74-0.86 on the seven synthetic long bones in air, 0.88-0.95 on the long-bone phantoms;
       0-0.43 in the bodies (the most on the shared
       abdominal CT, whose ribs border the lungs and whose arms lie at the edge of its view,
       and on the grainy hand), 0.48 around a bone under 2 mm of soft tissue (a finger).
    """
    a = _sample(ct_zyx)
    lo, hi = SOFT_TISSUE_WINDOW_HU
    dense = a >= DENSE_HU
    win = (a > lo) & (a < hi)
    n_dense = int(np.count_nonzero(dense))
    if n_dense == 0 or int(np.count_nonzero(win)) >= 4 * n_dense:
        return False
    spacing_kji = np.asarray(spacing_ijk, dtype=np.float64)[::-1] * (1 if a.shape == ct_zyx.shape else 2)
    outside = enclosed_axes(dense, spacing_kji, ENCLOSED_REACH_MM) < 2
    bone = _enclosing(dense, outside)
    n_dense = int(np.count_nonzero(bone))
    if n_dense == 0 or int(np.count_nonzero(win & outside)) >= n_dense:
        return False
    reach = max(SHELL_AROUND_MM, 2.0 * float(spacing_kji.max()))  # beyond the surface's partial-volume voxel
    shell = (ndi.distance_transform_edt(~bone, sampling=spacing_kji) <= reach) & ~dense & outside
    n_shell = int(np.count_nonzero(shell))
    return n_shell > 0 and int(np.count_nonzero(a[shell] < NO_TISSUE_BELOW_HU)) > AIR_SHELL_FRACTION * n_shell


def _enclosing(dense: NDArray[np.bool_], outside: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The connected pieces of ``dense`` that enclose something (touch a voxel that is neither
    dense nor ``outside``: a marrow cavity, a cancellous interior): bones, not a table slab or
    a solid bead, which enclose nothing and lie in air in a body's CT as well."""
    comp, n = ndi.label(dense)
    if n == 0:
        return dense
    inner = ndi.binary_dilation(~dense & ~outside, structure=np.ones((3, 3, 3), bool))
    ids = np.unique(comp[inner & dense])
    return np.isin(comp, ids[ids > 0])


def enclosing_pieces(ct_zyx: NDArray, spacing_kji: NDArray) -> NDArray[np.bool_]:
    """The bones of an image of bone in air, as :func:`in_air` counts them: the connected pieces
    of voxels >= :data:`DENSE_HU` that enclose something (a non-dense voxel enclosed along at
    least two axes within :data:`ENCLOSED_REACH_MM`: marrow, air in a dry bone, cancellous
    bone); a table or a solid bead encloses nothing. ``ct_zyx`` in HU (k, j, i), ``spacing_kji``
    in mm; returns a bool mask of ``ct_zyx``'s shape."""
    dense = np.asarray(ct_zyx) >= DENSE_HU
    outside = enclosed_axes(dense, np.asarray(spacing_kji, np.float64), ENCLOSED_REACH_MM) < 2
    return _enclosing(dense, outside)


def enclosed_axes(dense: NDArray[np.bool_], spacing_kji: NDArray, reach_mm: float) -> NDArray[np.uint8]:
    """Per voxel, along how many of the three axes a ``dense`` voxel lies both at most
    ``reach_mm`` ahead and at most ``reach_mm`` behind it (the voxel itself counts on both
    sides; nothing beyond the image's faces is dense). ``spacing_kji`` in mm, (k, j, i)."""
    out = np.zeros(dense.shape, np.uint8)
    for axis in range(3):
        n = max(1, int(round(reach_mm / float(spacing_kji[axis]))))
        # a window of n + 1 voxels: scipy centres it at size // 2 - origin, so these origins put it at i..i+n and i-n..i
        after = ndi.maximum_filter1d(dense, n + 1, axis=axis, origin=-((n + 1) // 2), mode="constant")
        before = ndi.maximum_filter1d(dense, n + 1, axis=axis, origin=n // 2, mode="constant")
        out += after & before
    return out


def air_hu(ct_zyx: NDArray) -> float:
    """The median HU of an image's air (voxels from :data:`AIR_ABOVE_HU` to :data:`AIR_BELOW_HU`,
    on :func:`_sample`: not the padding outside a scanner's field of view, -3024 or -2048 HU);
    NaN when there is none."""
    a = _sample(ct_zyx)
    air = a[(a > AIR_ABOVE_HU) & (a < AIR_BELOW_HU)]
    return float(np.median(air)) if air.size else float("nan")


def soft_tissue_hu(ct_zyx: NDArray, spacing_ijk: NDArray | None = None) -> float:
    """Soft-tissue level (HU) of a CT: the most common HU in :data:`SOFT_TISSUE_WINDOW_HU`;
    for bone in air, the level of the air around it.

    The mode of a histogram of 5 HU bins smoothed over 25 HU (on :func:`_sample`): the
    dominant soft tissue (muscle, organs), not pulled down by fat and fluid as a median would
    be. Clipped to :data:`SOFT_TISSUE_BOUNDS_HU`; 25 HU when no voxel lies in the window.

    With ``spacing_ijk`` (mm), an image of bone in air (:func:`in_air`) has no soft tissue: what
    surrounds its bones, and sets their edge and their seed and growth levels, is air
    (:func:`air_hu`). Before 2026-12-07 the window's mode there was the bone's own marrow
    (97.5-100 HU, at the bound, on six of seven synthetic long bones in air; bone-mask Dice
    0.80-0.90 on five of them, 0.93-0.97 at the air's level).
    """
    if spacing_ijk is not None and in_air(ct_zyx, spacing_ijk):
        level = air_hu(ct_zyx)
        if np.isfinite(level):
            return level
    a = _sample(ct_zyx)
    lo, hi = SOFT_TISSUE_WINDOW_HU
    vals = a[(a > lo) & (a < hi)]
    if vals.size == 0:
        return 25.0
    counts, edges = np.histogram(vals, bins=int((hi - lo) / 5.0), range=(lo, hi))
    smooth = np.convolve(counts.astype(np.float64), np.ones(5) / 5.0, mode="same")
    i = int(np.argmax(smooth))
    return float(np.clip(0.5 * (edges[i] + edges[i + 1]), *SOFT_TISSUE_BOUNDS_HU))


def cortex_peak_hu(ct_zyx: NDArray) -> float:
    """The image's cortex level (HU): the :data:`CORTEX_PERCENTILE` percentile of its voxels at or
    above :data:`DENSE_HU` (on :func:`_sample`); NaN when fewer than :data:`MIN_DENSE_VOXELS`
    are that dense."""
    a = _sample(ct_zyx)
    dense = a[a >= DENSE_HU]
    if dense.size < MIN_DENSE_VOXELS:
        return float("nan")
    return float(np.percentile(dense, CORTEX_PERCENTILE))


def bone_levels(ct_zyx: NDArray, *, bone_high_hu: float, bone_low_hu: float, spacing_ijk: NDArray | None = None) -> BoneLevels:
    """The seed and growth levels for this image (see the module docstring).

    ``bone_high_hu`` / ``bone_low_hu`` are the levels for a resolved cortex; the seed level is
    the half-maximum between the image's soft tissue and its cortex, at most ``bone_high_hu``,
    and the growth level keeps the same fraction of ``bone_low_hu``'s contrast. With
    ``spacing_ijk`` (mm) a bone in air is recognised and air is its surroundings
    (:func:`soft_tissue_hu`).

    For a bone in air the levels are lowered to the air (the half maximum between the air and
    its cortex), and its surface is the local edge level against the air whatever its cortex
    (:attr:`BoneLevels.resolved`).
    """
    air = spacing_ijk is not None and in_air(ct_zyx, spacing_ijk)
    soft = air_hu(ct_zyx) if air else float("nan")
    if not np.isfinite(soft):
        air, soft = False, soft_tissue_hu(ct_zyx)
    cortex = cortex_peak_hu(ct_zyx)
    if not np.isfinite(cortex) or bone_high_hu <= soft:
        return BoneLevels(soft, cortex, bone_high_hu, bone_low_hu, 1.0, air)
    seed = min(bone_high_hu, soft + 0.5 * (cortex - soft))
    frac = float(np.clip((seed - soft) / (bone_high_hu - soft), 0.05, 1.0))
    if frac >= RESOLVED_FRACTION:  # resolved: the given levels
        return BoneLevels(soft, cortex, bone_high_hu, bone_low_hu, frac, air)
    grow = soft + frac * (bone_low_hu - soft)
    return BoneLevels(soft, cortex, float(seed), float(grow), frac, air)


def _img(array: NDArray, spacing: NDArray) -> sitk.Image:
    im = sitk.GetImageFromArray(np.ascontiguousarray(array))
    im.SetSpacing([float(s) for s in spacing])
    return im


def grow_from_cortex(ct_zyx: NDArray, allowed: NDArray, spacing: NDArray, *, seed_hu: float, grow_hu: float, grow_max_mm: float) -> NDArray:
    """Voxels at or above ``grow_hu`` connected to a cortex seed (>= ``seed_hu``) and near one.

    Parameters
    ----------
    ct_zyx
        CT in HU, (k, j, i).
    allowed
        bool mask of voxels that may be bone (False in the halo of metal beads).
    spacing
        Voxel spacing (i, j, k) in mm.
    seed_hu, grow_hu
        Cortex seed and growth levels (HU), e.g. from :func:`bone_levels`.
    grow_max_mm
        How far (mm) from a seed growth may go; <= 0: no limit.

    Returns
    -------
    The grown mask (bool, k j i); cavities are not filled here.
    """
    low = (ct_zyx >= grow_hu) & allowed
    high = (ct_zyx >= seed_hu) & low
    if not high.any():
        return high
    if grow_max_mm > 0:
        low &= _arr_bool_near(high, spacing, grow_max_mm)
    rec = sitk.BinaryReconstructionByDilation(_img(high.view(np.uint8), spacing), _img(low.view(np.uint8), spacing))
    return sitk.GetArrayFromImage(rec).astype(bool)


def _arr_bool_near(mask: NDArray, spacing: NDArray, radius_mm: float) -> NDArray:
    """Voxels within ``radius_mm`` (Euclidean, anisotropic spacing) of ``mask``, to within the
    diagonal of a ~2 mm block: the distance is computed on blocks of about 2 mm (a block is in
    the mask if any of its voxels is) and a voxel is near if its block's centre is within
    ``radius_mm`` plus the block's diagonal (so no voxel within ``radius_mm`` is missed)."""
    step = tuple(max(1, int(2.0 // s_)) for s_ in spacing[::-1])  # (k, j, i)
    if step == (1, 1, 1):
        dist = sitk.SignedMaurerDistanceMap(
            _img(mask.view(np.uint8), spacing), insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        return sitk.GetArrayFromImage(dist) <= radius_mm
    padded = np.pad(mask, [(0, -n % st) for n, st in zip(mask.shape, step)])
    blocks_shape = [x for n, st in zip(padded.shape, step) for x in (n // st, st)]
    coarse = padded.reshape(blocks_shape).any(axis=(1, 3, 5))
    cs = spacing * np.array(step[::-1], float)
    dist = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(_img(coarse.view(np.uint8), cs), insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    )
    near = dist <= radius_mm + float(np.linalg.norm(cs))
    for ax, st in enumerate(step):
        near = np.repeat(near, st, axis=ax)
    return near[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def fill_enclosed_in_planes(mask: NDArray, *, min_planes: int = 2, hu: NDArray | None = None, above_hu: float = np.inf) -> NDArray:
    """``mask`` plus the holes enclosed in the 2D slices of at least ``min_planes`` of the three
    slice orientations (k, j, i); with ``hu`` (the CT in the same box, HU), also each connected
    hole enclosed in fewer (but at least one) whose mean HU is above ``above_hu``.

    Cancellous bone and marrow darker than the growth level leave pores inside a bone, and a
    pore can open to the outside through a gap of the blurred cortex (at 3 mm voxels a
    vertebral body is only 10-15 voxels wide), so a 3D fill misses it. Such a pore is still
    enclosed in most slices through it. A canal that runs through the bone (the vertebral
    canal, a foramen) is enclosed only in the slices across it: one orientation, so it is not
    filled. Independent of the bone's orientation in the grid. As in
    :func:`~orthonav.segmentation.classical.fill_cavities`, each face of the array is closed by
    its own 2D-filled slice (a lid), so a bone cut by the field of view is filled up to it.

    A hole enclosed in one orientation only is a canal or a pore whose cortex is open in two
    directions (in a 3 mm vertebral body, a pore opening through the blurred endplate). What
    fills it tells them apart: the vertebral canal and a foramen hold cerebrospinal fluid, cord,
    fat or vessels (at or below the soft-tissue level), a pore of cancellous bone holds
    trabeculae whose mineral raises its mean above it. The caller passes the soft-tissue level
    as ``above_hu`` (:func:`soft_tissue_hu`).
    """
    if not mask.any():
        return mask
    padded = np.pad(mask, 1)
    for axis in range(3):
        for src_i, dst_i in ((1, 0), (-2, -1)):
            face = np.take(padded, src_i, axis=axis)
            idx = [slice(None)] * 3
            idx[axis] = dst_i
            padded[tuple(idx)] |= ndi.binary_fill_holes(face)
    votes = np.zeros(padded.shape, np.uint8)
    for axis in range(3):
        structure = np.zeros((3, 3, 3), bool)
        centre = [slice(None)] * 3
        centre[axis] = 1
        structure[tuple(centre)] = ndi.generate_binary_structure(2, 1)
        votes += (ndi.binary_fill_holes(padded, structure=structure) & ~padded).view(np.uint8)
    votes = votes[1:-1, 1:-1, 1:-1]
    out = mask | (votes >= min_planes)
    if hu is not None and np.isfinite(above_hu):
        holes = (votes > 0) & ~out
        found = ndi.find_objects(holes.view(np.uint8))
        if found:
            sub = found[0]
            lab, n = ndi.label(holes[sub])
            in_hole = lab > 0
            sums = np.bincount(lab[in_hole], weights=hu[sub][in_hole], minlength=n + 1)
            sizes = np.bincount(lab[in_hole], minlength=n + 1)
            dense = sums > above_hu * sizes  # mean HU above the level (label 0: no voxel)
            dense[0] = False
            out[sub] |= dense[lab]
    return out


def peel_to_half_maximum(ct_zyx: NDArray, mask: NDArray, box: tuple[slice, ...], soft_hu: float) -> NDArray:
    """``mask`` without the outer-shell voxels below the local half maximum (unresolved cortex).

    With a cortex thinner than the voxels the growth level (~110 HU at 3 mm) is set for the
    cancellous interior and takes one voxel too many at the bone's surface. The edge of a
    blurred object is where its intensity crosses half-way between the object and its
    surroundings (full width at half maximum): a voxel of the mask's outer shell (6-connected)
    is kept if its HU is at least half-way between ``soft_hu`` and the local bone level, the
    mean HU of its 6-neighbours in the mask's interior (the mean, not the maximum, so that the
    noise of one neighbour does not raise the level). A shell voxel with no interior neighbour
    (a rib one or two voxels thick) is the bone's own level there and is kept. Where the bone
    reaches a face of the image it is cut, not bounded: those voxels are not shell.

    Parameters
    ----------
    ct_zyx
        CT in HU (k, j, i).
    mask
        bool mask of one bone inside ``box`` (shape of ``ct_zyx[box]``).
    box
        Slices (k, j, i) of ``mask`` in ``ct_zyx``.
    soft_hu
        The image's soft-tissue level (HU, :func:`soft_tissue_hu`).

    Returns
    -------
    The peeled mask (bool, shape of ``mask``).
    """
    # Interior: the voxel and its 6 neighbours in the mask; beyond a face of the image the
    # neighbour is the voxel itself (cut, not bounded), beyond a face of the box it is outside.
    interior = mask.copy()
    for axis, (s, n) in enumerate(zip(box, ct_zyx.shape)):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        interior[tuple(hi)] &= mask[tuple(lo)]
        interior[tuple(lo)] &= mask[tuple(hi)]
        if s.start != 0:
            first = [slice(None)] * 3
            first[axis] = 0
            interior[tuple(first)] = False
        if s.stop != n:
            last = [slice(None)] * 3
            last[axis] = -1
            interior[tuple(last)] = False
    shell = np.flatnonzero(mask & ~interior)
    if shell.size == 0 or not interior.any():
        return mask
    hu = ct_zyx[box]  # a view: only the shell and its neighbours are read
    kji = np.unravel_index(shell, mask.shape)
    total = np.zeros(shell.size, np.float64)
    count = np.zeros(shell.size, np.int32)
    for axis in range(3):
        for step in (-1, 1):
            nb = list(kji)
            nb[axis] = kji[axis] + step
            ok = (nb[axis] >= 0) & (nb[axis] < mask.shape[axis])
            nb[axis] = np.clip(nb[axis], 0, mask.shape[axis] - 1)
            inside = ok & interior[tuple(nb)]
            total += np.where(inside, hu[tuple(nb)], 0.0)
            count += inside
    level = total / np.maximum(count, 1)
    below = (count > 0) & (hu[kji] < soft_hu + 0.5 * (level - soft_hu))
    out = mask.copy()
    out.ravel()[shell[below]] = False
    return out


#: Least volume (mm^3) of a bone's voxels at the cortex seed level where the cortex is not
#: resolved: more than one 3 mm voxel (27 mm^3). A single voxel that bright is a calcification
#: or noise (e.g. in costal cartilage, 70-130 HU at 3 mm), not a cortex.
MIN_CORTEX_MM3 = 30.0


def has_cortex(ct_box: NDArray, mask: NDArray, seed_hu: float, voxel_mm3: float) -> bool:
    """True when at least :data:`MIN_CORTEX_MM3` of ``mask`` reaches ``seed_hu`` (HU).

    Bone is enclosed by cortex; a region grown from a single bright voxel into tissue of
    cancellous density (costal cartilage reaching ~130 HU at 3 mm) has none.
    """
    return float(np.count_nonzero(mask & (ct_box >= seed_hu))) * voxel_mm3 >= MIN_CORTEX_MM3
