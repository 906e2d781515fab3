"""The shipped U-Net's post-network step: class probabilities on the network's 4 mm grid ->
labels and confidence on the CT's grid (:func:`probabilities_to_labels`).

The network decides which bone; the image decides where bone is and its surface
(:func:`image_bone_mask`, the classical backend's physics); a piece the network does not
recognise stays bone but unnamed (:class:`Abstained`); a piece it does not see that is a table
or metal by shape is left out. Used by :func:`orthonav.segmentation.unet.segment_unet`
(docs/model_card.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume, to_sitk
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .bone_mask import BoneLevels, bone_levels, fill_enclosed_in_planes, grow_from_cortex, has_cortex, peel_to_half_maximum
from .classical import ClassicalParams, adaptive_refine, fill_cavities, joint_valleys
from .naming import CONFIDENT, name_bones, non_bone_reason, region_infos_from_pieces, regions_from_label_map
from .unet_grid import Grid

#: ``progress(step, fraction)`` (as in :mod:`orthonav.segmentation.unet`).
Progress = Callable[[str, float], None]


def _remove_islands(labels_zyx: NDArray[np.uint8], confidence_zyx: NDArray[np.float32], num_classes: int, min_fraction: float) -> None:
    """In place: pieces of a class smaller than ``min_fraction`` of its largest piece -> background.

    Their confidence becomes 1 - p(class), the probability that they are not that bone.
    """
    for c in range(1, num_classes):
        mask = labels_zyx == c
        if not mask.any():
            continue
        comp, n = ndi.label(mask)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        small = np.flatnonzero(sizes < min_fraction * sizes.max()) + 1
        if len(small):
            drop = np.isin(comp, small)
            labels_zyx[drop] = 0
            confidence_zyx[drop] = 1.0 - confidence_zyx[drop]


def _box_on_ct(ct: Volume, grid: Grid, coarse_mask: NDArray[np.bool_], margin_mm: float) -> tuple[slice, slice, slice] | None:
    """Box (z, y, x slices of the CT) holding ``coarse_mask`` (on ``grid``) plus a margin."""
    kji = np.argwhere(coarse_mask)
    if len(kji) == 0:
        return None
    lo, hi = kji.min(axis=0), kji.max(axis=0)
    corners = np.array([[a, b, c] for a in (lo[2], hi[2]) for b in (lo[1], hi[1]) for c in (lo[0], hi[0])], dtype=np.float64)
    p = (grid.direction * grid.spacing) @ corners.T + grid.origin[:, None]
    ijk = np.linalg.inv(ct.lps_from_ijk)[:3] @ np.vstack([p, np.ones(p.shape[1])])
    pad = (margin_mm + grid.spacing) / ct.spacing_mm
    lo_ijk = np.floor(ijk.min(axis=1) - pad).astype(int)
    hi_ijk = np.ceil(ijk.max(axis=1) + pad).astype(int) + 1
    shape_ijk = ct.shape_ijk
    lo_ijk = np.clip(lo_ijk, 0, shape_ijk)
    hi_ijk = np.clip(hi_ijk, 0, shape_ijk)
    if np.any(hi_ijk <= lo_ijk):
        return None
    return (slice(lo_ijk[2], hi_ijk[2]), slice(lo_ijk[1], hi_ijk[1]), slice(lo_ijk[0], hi_ijk[0]))


def _resampled(values_zyx: NDArray[np.float32], grid: Grid, ref: sitk.Image, default: float) -> sitk.Image:
    """``values_zyx`` on ``grid`` linearly interpolated onto ``ref``'s voxels (``default`` outside the grid)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(values_zyx, dtype=np.float32))
    img.SetOrigin([float(x) for x in grid.origin])
    img.SetSpacing([grid.spacing] * 3)
    img.SetDirection([float(x) for x in grid.direction.ravel()])
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32)


def _to_ct(values_zyx: NDArray[np.float32], grid: Grid, ref: sitk.Image, default: float) -> NDArray[np.float32]:
    return sitk.GetArrayFromImage(_resampled(values_zyx, grid, ref, default))


def _grid_coords(grid: Grid, ct: Volume, kji: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """CT voxels ``kji`` (n, 3) on ``grid``: their continuous (k, j, i) indices there (3, m) for
    the m that lie inside it (where :func:`_to_ct` interpolates), and which those are (n,)."""
    lps = ct.to_lps(np.asarray(kji, np.float64)[:, ::-1])
    g_ijk = (lps - grid.origin) @ grid.direction / grid.spacing  # direction orthonormal
    inside = np.all((g_ijk >= -0.5) & (g_ijk < np.asarray(grid.size_ijk, np.float64) - 0.5), axis=1)
    return g_ijk[inside][:, ::-1].T, inside


def _interpolate(values_zyx: NDArray[np.float32], coords: NDArray[np.float64], inside: NDArray[np.bool_]) -> NDArray[np.float32]:
    """``values_zyx`` (on the grid) at the points of :func:`_grid_coords`, linearly as
    SimpleITK does (an edge voxel's value half a voxel beyond it), 0 outside the grid."""
    out = np.zeros(inside.shape, np.float32)
    if coords.shape[1]:
        out[inside] = ndi.map_coordinates(np.asarray(values_zyx, np.float32), coords, order=1, mode="nearest")
    return out


def class_probability_at(prob_c: NDArray[np.float32], grid: Grid, ct: Volume, kji: NDArray[np.int64]) -> NDArray[np.float32]:
    """One class's probability at CT voxels ``kji`` (n, 3), linearly interpolated from ``grid``
    as :func:`_to_ct` does (0 outside the grid), clipped to 0..1."""
    if len(kji) == 0:
        return np.zeros(0, np.float32)
    return np.clip(_interpolate(prob_c, *_grid_coords(grid, ct, kji)), 0.0, 1.0)


def _network_at(prob: NDArray[np.float32], grid: Grid, ct: Volume, box: tuple[slice, slice, slice], mask: NDArray[np.bool_],
                best: NDArray[np.uint8], p_best: NDArray[np.float32], reach: NDArray[np.bool_]) -> None:
    """In place at the voxels of ``mask`` (arrays of ``box``'s shape): the network's most likely
    bone (1..nc-1, the first on a tie), its probability (0..1), and whether the voxel lies within
    the network's reach (:data:`REACH_COARSE_VOXELS`), interpolated from ``grid`` as :func:`_to_ct`
    does. Only image bone needs them: on a 512x512x400 CT resampling every class over the whole
    box took 4-6 s, interpolating at its 3 million bone voxels 2 s."""
    kji = np.argwhere(mask)
    if len(kji) == 0:
        return
    coords, inside = _grid_coords(grid, ct, kji + np.array([q.start for q in box]))
    b = np.ones(len(kji), np.uint8)
    pb = _interpolate(prob[1], coords, inside)
    for c in range(2, prob.shape[0]):
        v = _interpolate(prob[c], coords, inside)
        b[v > pb] = c
        np.maximum(pb, v, out=pb)
    best[mask] = b
    p_best[mask] = np.clip(pb, 0.0, 1.0)
    reach[mask] = _interpolate(ndi.maximum_filter(1.0 - prob[0], size=2 * REACH_COARSE_VOXELS + 1), coords, inside) > 0.5


#: The network's reach: its bone probability max-filtered over this many coarse voxels either
#: side (2 at 4 mm: 8 mm). Image bone within reach takes the network's bone.
REACH_COARSE_VOXELS = 2
#: A connected piece of image bone whose reached voxels the network gives at least this share
#: to one bone is that bone as a whole (the image separates the bones; the 4 mm arg-max does not).
PIECE_MAJORITY = 0.9
#: Calibrated probability at which the network counts as sure of a voxel's bone.
SURE_PROBABILITY = 0.9
#: A bone is named only when the network is sure of its name (:data:`SURE_PROBABILITY`) over at
#: least this share of its voxels. Measured share on unseen phantoms (per side-less class in a
#: piece): 0.17 (the hips of the full-size pelvis) to 0.78 (femur); on the shared thorax CT, whose
#: vertebrae and ribs the network has no class for and calls hip / femur / sacrum: 0.00-0.11.
#: Too close to decide alone: :data:`MIN_AGREEMENT` is the main test.
MIN_SURE_FRACTION = 0.05
#: A piece is named only when the network's own bone (background probability < 0.5) around it
#: (its box grown by :data:`AGREEMENT_MARGIN_VOX`) lies on the image's bone for at least this
#: share: where the network draws bone the image has none, it does not recognise the anatomy.
#: Measured on unseen phantoms: 0.78 (patella) to 0.94; on the thorax CT: 0.03-0.41.
MIN_AGREEMENT = 0.6
#: Margin (voxels) of the box around a piece in which :data:`MIN_AGREEMENT` is measured.
AGREEMENT_MARGIN_VOX = 5
#: Image-bone pieces smaller than this (mm^3) are no bone (the classical backend's least bone volume).
MIN_BONE_MM3 = 400.0


@dataclass(frozen=True)
class Abstained:
    """An image-bone piece the post-network steps keep as bone but do not name (``bone_<n>``).

    Attributes
    ----------
    withheld
        The network's class for it (``None`` when the network does not see bone there).
    confidence
        Mean calibrated probability of the withheld class over the piece (0..1).
    why
        Why no name was given.
    """

    withheld: str | None
    confidence: float
    why: str


def _nearest_fill(labels: NDArray[np.uint8], todo: NDArray[np.bool_]) -> None:
    """In place: each ``todo`` voxel takes the label of the nearest voxel not in ``todo`` with a
    label (Euclidean distance in voxel indices; on a tie, either).

    "Nearest" is looked for within :data:`NEAREST_MARGIN_VOX` of the box of all ``todo`` voxels
    (everywhere when that box holds no label). The nearest labelled voxel always lies on the
    labelled set's surface (a labelled voxel whose six neighbours are all labelled has one nearer
    the query), so a k-d tree of the surface voxels answers every query: a distance transform
    over the box of a hip's refilled voxels took 4-7 s on a 512x512x400 hip CT."""
    if not todo.any():
        return
    kji = np.argwhere(todo)
    lo, hi = np.maximum(kji.min(axis=0) - NEAREST_MARGIN_VOX, 0), np.minimum(kji.max(axis=0) + NEAREST_MARGIN_VOX + 1, todo.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    src = (labels[box] > 0) & ~todo[box]
    if not src.any():
        box, lo = (slice(None),) * 3, np.zeros(3, int)
        src = (labels > 0) & ~todo
        if not src.any():
            return
    surface = np.argwhere(src & ~ndi.binary_erosion(src))  # border_value 0: the box's faces count as surface
    _d, nearest = cKDTree(surface).query(kji - lo, workers=-1)
    sub = labels[box]
    labels[todo] = sub[tuple(surface[nearest].T)]


#: Margin (voxels) of the box in which :func:`_nearest_fill` looks for the nearest label.
NEAREST_MARGIN_VOX = 8


def image_bone_mask(ct_box: NDArray, spacing_ijk: NDArray, levels: BoneLevels) -> NDArray[np.bool_]:
    """Bone by the classical backend's image physics, in a box of the CT (bool, k j i).

    Cortex seeds grown at the image's own levels (:func:`~orthonav.segmentation.bone_mask.grow_from_cortex`),
    enclosed cavities filled (:func:`~orthonav.segmentation.classical.fill_cavities`); a resolved
    cortex is then peeled to its local edge level per connected piece
    (:func:`~orthonav.segmentation.classical.adaptive_refine`), an unresolved one gets its
    slice-wise pore fill (:func:`~orthonav.segmentation.bone_mask.fill_enclosed_in_planes`) and,
    per piece, the cortex test and half-maximum peel (:func:`~orthonav.segmentation.bone_mask.has_cortex`,
    :func:`~orthonav.segmentation.bone_mask.peel_to_half_maximum`). A bone in air takes the
    peel (its surface is its edge against the air) and then the slice-wise fill: the peel can
    open a dry bone's thin wall around the air inside it (libhip's femurs as dry bones at
    1.5 mm: Dice 0.782 without the fill, 0.985 with it, 2026-12-07).
    """
    p = replace(ClassicalParams(), bone_high_hu=levels.seed_hu, bone_low_hu=levels.grow_hu, cortex_hu=levels.cortex_hu,
                surround_hu=levels.soft_hu if levels.in_air else float("nan"))
    ct_box = np.asarray(ct_box, dtype=np.float32)
    bone = fill_cavities(grow_from_cortex(ct_box, np.ones(ct_box.shape, bool), spacing_ijk, seed_hu=p.bone_high_hu, grow_hu=p.bone_low_hu,
                                          grow_max_mm=p.grow_max_mm))
    comp, n = ndi.label(bone)
    if n == 0:
        return bone
    sizes = np.bincount(comp[bone], minlength=n + 1)
    keep = sizes * float(np.prod(spacing_ijk)) >= MIN_BONE_MM3
    keep[0] = False
    comp = np.where(keep[comp], comp, 0).astype(np.int32)
    if levels.resolved:  # the peel can leave specks: no bone
        bone = fill_cavities(adaptive_refine(ct_box, comp, spacing_ijk, p) > 0)
        if levels.in_air:
            bone = fill_enclosed_in_planes(bone)
        return _drop_small(bone, spacing_ijk)
    bone = fill_enclosed_in_planes(comp > 0, hu=ct_box, above_hu=levels.soft_hu)
    out = np.zeros(bone.shape, bool)
    comp, n = ndi.label(bone)
    voxel_mm3 = float(np.prod(spacing_ijk))
    for k, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None:
            continue
        mk = comp[sl] == k
        if has_cortex(ct_box[sl], mk, p.bone_high_hu, voxel_mm3):
            out[sl] |= peel_to_half_maximum(ct_box, mk, sl, levels.soft_hu)
    return _drop_small(out, spacing_ijk)


def _drop_small(mask: NDArray[np.bool_], spacing_ijk: NDArray) -> NDArray[np.bool_]:
    """``mask`` without its connected pieces smaller than :data:`MIN_BONE_MM3`."""
    comp, n = ndi.label(mask)
    if n == 0:
        return mask
    keep = np.bincount(comp[mask], minlength=n + 1) * float(np.prod(spacing_ijk)) >= MIN_BONE_MM3
    keep[0] = False
    return keep[comp]


def _network_labels(ct: Volume, grid: Grid, prob: NDArray[np.float32], min_island_fraction: float) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Without refinement: the network's arg-max per CT voxel and its probability (the former path)."""
    nc = prob.shape[0]
    shape = ct.array_zyx.shape
    labels = np.zeros(shape, dtype=np.uint8)
    conf = np.ones(shape, dtype=np.float32)
    box = _box_on_ct(ct, grid, (1.0 - prob[0]) > 0.05, 2.0 * grid.spacing)
    if box is not None:
        ref = _box_ref(ct, box)
        p_ct = np.stack([_to_ct(prob[c], grid, ref, 1.0 if c == 0 else 0.0) for c in range(nc)])
        lab = np.argmax(p_ct, axis=0).astype(np.uint8)
        c_box = np.clip(np.take_along_axis(p_ct, lab[None].astype(np.int64), axis=0)[0], 0.0, 1.0).astype(np.float32)
        if min_island_fraction > 0:
            _remove_islands(lab, c_box, nc, min_island_fraction)
        labels[box], conf[box] = lab, c_box
    _outside_confidence(ct, grid, prob, box, conf)
    return labels, conf


def _box_ref(ct: Volume, box: tuple[slice, slice, slice]) -> sitk.Image:
    start_ijk = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)
    m = ct.lps_from_ijk.copy()
    m[:3, 3] = ct.to_lps(start_ijk[None])[0]
    return to_sitk(Volume(np.zeros(tuple(b.stop - b.start for b in box), np.uint8), m))


def _outside_confidence(ct: Volume, grid: Grid, prob: NDArray[np.float32], box: tuple[slice, slice, slice] | None, conf: NDArray[np.float32]) -> None:
    """In place: outside ``box`` the confidence is the network's background probability
    (interpolated where the network's bone probability reaches 0.001, else 1 - to within 0.001)."""
    near = _box_on_ct(ct, grid, prob[0] < 0.999, grid.spacing)
    if near is None:
        return
    p_bg = np.clip(_to_ct(prob[0], grid, _box_ref(ct, near), 1.0), 0.0, 1.0)
    if box is not None:  # inside ``box`` the caller has set the confidence
        lo = [max(b.start, n.start) for b, n in zip(box, near)]
        hi = [min(b.stop, n.stop) for b, n in zip(box, near)]
        if all(a < b for a, b in zip(lo, hi)):
            p_bg[tuple(slice(a - n.start, b - n.start) for a, b, n in zip(lo, hi, near))] = conf[tuple(slice(a, b) for a, b in zip(lo, hi))]
    conf[near] = p_bg


def _prob_of(prob: NDArray[np.float32], grid: Grid, ct: Volume, box: tuple[slice, slice, slice], sl: tuple[slice, slice, slice],
             piece: NDArray[np.bool_], sel: NDArray[np.bool_], c: int, best: NDArray[np.uint8], p_best: NDArray[np.float32]) -> NDArray[np.float32]:
    """Class ``c``'s probability at the voxels ``sel`` of a piece (``piece`` in the slices ``sl``
    of ``box``; ``sel``, ``best`` and ``p_best`` in ``piece`` order): ``p_best`` where ``c`` is the
    most likely bone, else interpolated from ``grid`` (:func:`class_probability_at`)."""
    out = np.where(best[sel] == c, p_best[sel], np.float32(0.0)).astype(np.float32)
    other = best[sel] != c
    if other.any():
        start = np.array([b.start + q.start for b, q in zip(box, sl)])
        out[other] = class_probability_at(prob[c], grid, ct, np.argwhere(piece)[sel][other] + start)
    return out


def _label_confidence(prob: NDArray[np.float32], grid: Grid, ct: Volume, box: tuple[slice, slice, slice], lab: NDArray[np.uint8], nc: int,
                      best: NDArray[np.uint8], p_best: NDArray[np.float32], out: NDArray[np.float32]) -> None:
    """In place, ``out`` holding the background's probability p0 (arrays of ``box``'s shape):
    each labelled voxel's confidence, the probability of its label: its bone's for a named bone
    (``p_best`` where that is the most likely, else interpolated from ``grid``), bone at all
    (1 - p0) for an unnamed one; the background keeps p0."""
    found = ndi.find_objects((lab > 0).view(np.uint8))
    if not found or found[0] is None:
        return
    bb = found[0]
    lb, o = lab[bb], out[bb]
    named = (lb > 0) & (lb < nc)
    same = named & (lb == best[bb])
    o[same] = p_best[bb][same]
    diff = named & ~same
    if diff.any():
        kji = np.argwhere(diff) + np.array([b.start + q.start for b, q in zip(box, bb)])
        cl = lb[diff]
        vals = np.empty(len(cl), np.float32)
        for c in np.unique(cl):
            m = cl == c
            vals[m] = class_probability_at(prob[c], grid, ct, kji[m])
        o[diff] = vals
    unnamed = lb >= nc
    o[unnamed] = 1.0 - o[unnamed]


#: In a piece holding several bones, parts of a bone smaller than this fraction of its largest part
#: there are the network's confusion (measured: "hip" on the end of a femoral shaft cut by the
#: field of view, 8 % of the hip's part).
SPLIT_ISLAND_FRACTION = 0.2


#: A pore is a joint space, not marrow, when at least this share of the bone around it is a
#: second bone of the network's (:func:`marrow_pores`).
JOINT_SECOND_BONE_SHARE = 0.2
#: Radius (mm) of the ball a pore must hold (:func:`marrow_pores`).
MIN_PORE_RADIUS_MM = 2.5
#: Grid (mm) on which :func:`marrow_pores` finds the enclosed holes.
PORE_GRID_MM = 1.6


def marrow_pores(bone: NDArray[np.bool_], network_bone: NDArray[np.bool_], network_class: NDArray[np.uint8], spacing_ijk: NDArray) -> NDArray[np.bool_]:
    """The interior the image leaves open where the network sees bone: marrow as faint as soft
    tissue behind a cortex that thick slices leave gapped (the 3D cavity fill leaks through the
    gaps). Bool, shape of ``bone``.

    A pore is a connected hole of ``bone`` enclosed in the 2D slices of at least two of the
    three orientations (:func:`~orthonav.segmentation.bone_mask.fill_enclosed_in_planes`; a
    canal through a bone is enclosed in one) on voxels where the network sees bone
    (``network_bone``: its background keeps a foramen out). A hole between two bones (a joint
    space closed off in a slice by the blurred rims of a socket and its head) is kept out by
    the bone around it: at least :data:`JOINT_SECOND_BONE_SHARE` of its rim is a second class
    of the network's (``network_class``, its most likely bone per voxel), or by its thinness: a
    pore holds a ball of radius :data:`MIN_PORE_RADIUS_MM` (a joint space is a sheet of 1-4 mm).
    """
    # Sought on a grid of about PORE_GRID_MM (block maximum of the bone): the pores sought hold
    # a 2.5 mm ball, and at 0.8 mm voxels the full-resolution fill cost 4-5 s on a knee CT.
    f = np.array([max(1, int(PORE_GRID_MM // s_)) for s_ in spacing_ijk])[::-1]  # k, j, i
    shape = np.array(bone.shape)
    n_c = -(-shape // f)
    grow = [(0, int(a - b)) for a, b in zip(n_c * f, shape)]
    coarse = np.pad(bone, grow).reshape(n_c[0], f[0], n_c[1], f[1], n_c[2], f[2]).max(axis=(1, 3, 5))
    enclosed = fill_enclosed_in_planes(coarse, min_planes=2) & ~coarse
    enclosed = enclosed.repeat(f[0], 0).repeat(f[1], 1).repeat(f[2], 2)[: shape[0], : shape[1], : shape[2]]
    holes = enclosed & ~bone & network_bone
    if not holes.any():
        return holes
    out = np.zeros(holes.shape, bool)
    box = tuple(slice(max(0, q.start - 1), q.stop + 1) for q in ndi.find_objects(holes.view(np.uint8))[0])
    holes_b, bone_b = holes[box], bone[box]
    comp, n = ndi.label(holes_b)
    rim = ndi.binary_dilation(holes_b) & bone_b
    # per hole: which bone classes its rim voxels are (the rim voxel takes the hole it touches)
    near = ndi.grey_dilation(comp, size=(3, 3, 3))[rim]
    cls = network_class[box][rim].astype(np.int64)
    counts = np.zeros((n + 1, int(network_class.max(initial=0)) + 1), np.int64)
    np.add.at(counts, (near, cls), 1)
    counts[:, 0] = 0
    srt = np.sort(counts, axis=1)
    total = counts.sum(axis=1)
    joint = srt[:, -2] >= JOINT_SECOND_BONE_SHARE * np.maximum(total, 1)
    joint[0] = True
    # and a pore is wider than a joint space: it holds a ball of MIN_PORE_RADIUS_MM
    depth = ndi.distance_transform_edt(holes_b, sampling=np.asarray(spacing_ijk, np.float64)[::-1])
    thick = ndi.maximum(depth, comp, index=np.arange(n + 1)) >= MIN_PORE_RADIUS_MM
    out[box] = holes_b & ~joint[comp] & np.asarray(thick, bool)[comp]
    return out


def _split_piece(hu: NDArray, piece: NDArray[np.bool_], best: NDArray[np.uint8], reach: NDArray[np.bool_], p_best: NDArray[np.float32],
                 spacing_ijk: NDArray, min_island_fraction: float) -> NDArray[np.uint8]:
    """Bone of each voxel of a piece of image bone holding two or more of the network's bones.

    The image first: the piece without its joint spaces (dark sheets between two cortices,
    :func:`~orthonav.segmentation.classical.joint_valleys`) and eroded by one voxel falls into
    cores, one per bone where the image resolves the joints. A core (>= :data:`MIN_BONE_MM3`)
    takes the network's most likely bone over its voxels as a whole, unless another bone that
    is not the rest of a bone with a core of its own (below) holds a part of it that the network is sure of
    (:data:`SURE_PROBABILITY` over at least :data:`MIN_SURE_FRACTION` of that part, itself >=
    :data:`MIN_BONE_MM3`): a joint the image does not resolve, where the network's arg-max
    split is kept (the image never erases a bone the network is sure of). A bone is a connected
    part of one class in the network's split; it has a core of its own when it overlaps a core
    whose bone it is, and its voxels in another core are the rest of it (that core's bone takes
    them) only while fewer than its voxels in the cores of its own. A larger part is the bone's
    body, which the image did not separate: on random small hip phantoms the joint valleys cut
    23 mL pieces of the pubis off as cores of the hip class, while the hip bones' bodies shared
    cores with a femur and the sacrum, which took them (hip bones 0.16-0.33 on seed 57; tested
    2026-12-07). Until 2026-12-07 this was read per class, and the classes have no side:
    the left femur's core took the right femur, unresolved in its hip, into the hip bone (a
    1.9 mm synthetic draw whose cortex was read as resolved, in an experiment of that day;
    tested). Two bones of one class that touch in the network's split (the hip bones at the
    symphysis) are still one part. Without the exception the network's sure but wrong parts
    would split the cores: on the full-size hip phantom its "hip" holds 34-45 % of each
    femur's core, sure on 45-47 % of that, where the image's separation is right (femurs
    0.715-0.781 without the exception, 0.986-0.987 with it). Islands of a bone in the
    arg-max split (smaller than ``min_island_fraction`` or :data:`SPLIT_ISLAND_FRACTION` of
    the bone's largest part in the piece, or than :data:`MIN_BONE_MM3`) and the voxels out of
    the network's reach take the nearest bone of the piece; the joint spaces and the eroded
    shell keep the network's bone where a core of it lies within :data:`NEAR_CORE_MM`,
    else take the nearest core's bone.
    ``best`` and ``p_best``: the network's most likely bone per voxel and its probability (a
    class is sure at a voxel, p >= :data:`SURE_PROBABILITY` > 0.5, only where it is the most likely).
    Returns the bones of the piece's voxels (``best[piece]`` order).
    """
    sub = np.where(piece, best, 0).astype(np.uint8)
    min_vox = MIN_BONE_MM3 / float(np.prod(spacing_ijk))
    todo = piece & ~reach
    class_box = ndi.find_objects(sub)  # class c's box: class_box[c - 1]
    for c in np.unique(sub[piece & ~todo]):
        b = class_box[c - 1]
        is_c = sub[b] == c
        cc, _m = ndi.label(is_c)
        sizes = np.bincount(cc[is_c])[1:]
        small = sizes < max(max(min_island_fraction, SPLIT_ISLAND_FRACTION) * sizes.max(), min_vox)
        view = todo[b]
        view |= np.isin(cc, np.flatnonzero(small) + 1)
    _nearest_fill(sub, todo & piece)
    cores, _n = ndi.label(ndi.binary_erosion(piece & ~joint_valleys(hu, piece, spacing_ijk, ClassicalParams())))
    out = np.zeros(piece.shape, np.uint8)
    found = []
    for k, sl in enumerate(ndi.find_objects(cores), start=1):
        if sl is not None and np.count_nonzero(cores[sl] == k) >= min_vox:
            v = sub[sl][cores[sl] == k]
            found.append((k, sl, v, int(np.argmax(np.bincount(v)))))
    # A bone of the network (a connected part of one class in ``sub``: the classes have no side,
    # so two femurs are two parts) has a core of its own when it overlaps a core whose bone it is.
    tops = {top for _k, _sl, _v, top in found}
    second = {int(c) for _k, _sl, v, top in found for c in np.flatnonzero(np.bincount(v) >= min_vox) if c != top and c in tops}
    boxes = ndi.find_objects(sub)
    parts = {c: (boxes[c - 1], ndi.label(sub[boxes[c - 1]] == c)[0]) for c in second}  # each in its class's box

    def part_counts(c: int, sl: tuple[slice, ...], mask: NDArray[np.bool_]) -> dict[int, int]:
        """Voxels of each part of class ``c`` (ids >= 1) at the voxels of ``mask`` (in ``sl``)."""
        b, lab_c = parts[c]
        kji = [ix + q.start for ix, q in zip(np.nonzero(mask), sl)]
        ok = np.ones(len(kji[0]), bool)
        for ix, q in zip(kji, b):
            ok &= (ix >= q.start) & (ix < q.stop)
        ids, n = np.unique(lab_c[tuple(ix[ok] - q.start for ix, q in zip(kji, b))], return_counts=True)
        return {int(i): int(m) for i, m in zip(ids, n) if i}

    # voxels of each part of a bone in the cores whose bone it is (its body there)
    own_core: dict[int, dict[int, int]] = {c: {} for c in parts}
    for k, sl, _v, top in found:
        if top in parts:
            for i, m in part_counts(top, sl, cores[sl] == k).items():
                own_core[top][i] = own_core[top].get(i, 0) + m
    for k, sl, v, top in found:
        core = cores[sl] == k
        split = False
        for c in np.flatnonzero(np.bincount(v) >= min_vox):
            if c == top:
                continue
            part = v == c
            # The rest of a bone the image separated elsewhere: a part of the class with fewer voxels
            # here than in the cores of its own (decided per core and, as before 2026-12-07, for
            # the whole class in the core when one of its parts is such a rest).
            if c in parts and any(m < own_core[int(c)].get(i, 0) for i, m in part_counts(int(c), sl, core & (sub[sl] == c)).items()):
                continue
            # a bone the image did not separate from this one, if the network is sure of it
            sure = (best[sl][core] == c) & (p_best[sl][core] >= SURE_PROBABILITY)
            split |= float(sure[part].mean()) >= MIN_SURE_FRACTION
        view = out[sl]
        view[core] = v if split else top
    if not out.any():
        return sub[piece]
    # The rest (joint spaces, the eroded shell, small cores): the network's bone where a core of
    # that bone lies within NEAR_CORE_MM, else the nearest core's.
    rest = piece & (out == 0)
    s_rest = sub[rest]
    own = np.zeros(s_rest.shape, bool)
    half = [max(1, int(round(NEAR_CORE_MM / sp))) for sp in spacing_ijk[::-1]]
    core_box = ndi.find_objects(out)
    for c in np.unique(out[out > 0]):
        if (s_rest == c).any():
            # within ``half`` voxels (per axis) of c's cores: their box grown by it holds every such voxel
            g = tuple(slice(max(q.start - h, 0), min(q.stop + h, n)) for q, h, n in zip(core_box[c - 1], half, out.shape))
            near_c = np.zeros(out.shape, bool)
            near_c[g] = ndi.maximum_filter((out[g] == c).view(np.uint8), size=[2 * h + 1 for h in half]) > 0
            own |= (s_rest == c) & near_c[rest]
    vals = out[rest]
    vals[own] = s_rest[own]
    out[rest] = vals
    _nearest_fill(out, piece & (out == 0))
    return out[piece]


#: In :func:`_split_piece`, a voxel outside the cores keeps the network's bone when a core of it
#: lies within this distance (mm, per axis: a box): the one-voxel erosion and a joint space.
NEAR_CORE_MM = 6.0


def _peel_per_bone(ct_box: NDArray, lab: NDArray[np.uint8], spacing_ijk: NDArray, interior: NDArray[np.bool_] | None = None, *,
                   cortex_hu: float = float("nan"), levels: BoneLevels | None = None) -> NDArray[np.uint8]:
    """Each bone's surface peeled to its local edge level with the other bones counting as
    outside (:func:`~orthonav.segmentation.classical.adaptive_refine`: the blurred bridge at a
    joint is peeled from both sides); cavities the peel opens behind a cortex, and the
    ``interior`` voxels (enclosed pores the network sees as bone), are refilled and take the
    nearest bone. ``cortex_hu``: the image's thick-cortex level (:func:`~orthonav.segmentation.classical.edge_fraction_of`);
    ``levels``: the image's levels, whose growth level bounds the edge level from below and,
    for a bone in air, whose air level surrounds every bone; None: the defaults (a resolved
    cortex in a body)."""
    cp = ClassicalParams(cortex_hu=cortex_hu)
    if levels is not None:
        cp = replace(cp, bone_low_hu=levels.grow_hu, surround_hu=levels.soft_hu if levels.in_air else float("nan"))
    peeled = adaptive_refine(np.asarray(ct_box, np.float32), lab.astype(np.int32), spacing_ijk, cp).astype(np.uint8)
    refill = fill_cavities(peeled > 0) & (peeled == 0)
    if interior is not None:
        refill |= interior & (lab > 0) & (peeled == 0)
    _nearest_fill(peeled, refill)
    # The peel can open a joint the image resolves: a piece now mostly one bone is that bone.
    # Only strays are absorbed, voxels of a bone whose main body lies in another piece; a
    # bone with most of its voxels in this piece (a small patella still bridged to its femur
    # at 3 mm) keeps them: the network's split stands rather than a bone being erased.
    total = np.bincount(peeled.ravel(), minlength=256)
    comp, _n = ndi.label(peeled > 0)
    for k, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None:
            continue
        piece = comp[sl] == k
        v = peeled[sl][piece]
        votes = np.bincount(v, minlength=256)
        top = int(np.argmax(votes))
        if votes[top] >= PIECE_MAJORITY * v.size and votes[top] < v.size:
            stray = 2 * votes < total
            stray[top] = False
            view = peeled[sl]
            view[piece & stray[view]] = top
    return peeled



def probabilities_to_labels(
    ct: Volume, grid: Grid, prob: NDArray[np.float32], *, refine: bool, min_island_fraction: float = 0.05, progress: Progress | None = None,
    classes: dict[int, str] | None = None, left_out: list[str] | None = None,
) -> tuple[NDArray[np.uint8], NDArray[np.float32], dict[int, Abstained]]:
    """Class probabilities on the network grid -> class labels and confidence on the CT grid.

    With ``refine`` (card ``refine = "image-edge"``) the surface comes from the image, the
    identity from the network:

    1. **Image** (:func:`image_bone_mask`): which voxels are bone, by the classical backend's
       physics at the image's own HU levels (:func:`~orthonav.segmentation.bone_mask.bone_levels`),
       in the box of voxels reaching the growth level.
    2. **Network**: each image-bone voxel within the network's reach (bone probability
       max-filtered over :data:`REACH_COARSE_VOXELS` coarse voxels > 0.5) takes the network's
       most likely bone. A connected piece of image bone whose reached voxels are at least
       :data:`PIECE_MAJORITY` one bone becomes that bone as a whole; a piece holding two bones
       (a joint the image does not resolve) keeps the network's arg-max split, its small islands
       of a bone (< ``min_island_fraction`` of the bone's largest part) and its unreached voxels
       taking the nearest bone of the piece.
    3. **Abstention**: a piece the network does not reach (under half its voxels), a piece
       around which the network's own bone lies on the image's bone for less than
       :data:`MIN_AGREEMENT` (the network does not recognise the anatomy: e.g. vertebrae and
       ribs, drawn as a hip where there is none), and a bone whose name the network is sure of
       (:data:`SURE_PROBABILITY`) over less than :data:`MIN_SURE_FRACTION` of its voxels keep
       their voxels as bone but get no name (values >= the number of classes, described in the
       returned dict). A piece the network does not reach that is a thin flat slab or metal
       by its shape (:func:`~orthonav.segmentation.naming.non_bone_reason`, the classical
       backend's rule: a table) is left out instead, its reason appended to ``left_out``.

    Without ``refine`` a voxel's label is the network's arg-max (islands removed), nothing abstained.

    Confidence of a voxel = the calibrated probability the network gives its label: its bone
    for a named bone, bone at all (1 - p(background)) for an unnamed one, background elsewhere.

    Returns
    -------
    labels, confidence, abstained
        uint8 labels on the CT grid (0 background, 1..nc-1 the network's classes, >= nc unnamed
        pieces), float32 confidence, and per unnamed value its :class:`Abstained`.
    """
    if not refine:
        labels, conf = _network_labels(ct, grid, prob, min_island_fraction)
        return labels, conf, {}
    classes = classes or {}
    nc = prob.shape[0]
    full = ct.array_zyx
    shape = full.shape
    spacing = ct.spacing_mm
    labels = np.zeros(shape, dtype=np.uint8)
    conf = np.ones(shape, dtype=np.float32)
    cp = ClassicalParams()
    levels = bone_levels(full, bone_high_hu=cp.bone_high_hu, bone_low_hu=cp.bone_low_hu, spacing_ijk=ct.spacing_mm)
    dense = full >= levels.grow_hu
    abstained: dict[int, Abstained] = {}
    box = None
    found = ndi.find_objects(dense.view(np.uint8))
    if found and found[0] is not None:
        box = tuple(slice(max(q.start - 3, 0), min(q.stop + 3, n)) for q, n in zip(found[0], shape))
    del dense
    # Where the network sees any bone (p(background) < 0.999), grown by its reach and the
    # interpolation's support: outside, every voxel is background to within 0.001 and out of reach.
    near = _box_on_ct(ct, grid, ndi.maximum_filter(prob[0] < 0.999, size=2 * (REACH_COARSE_VOXELS + 2) + 1), 0.0)
    if near is not None:  # the background's probability there: the confidence outside the box below
        img = _resampled(prob[0], grid, _box_ref(ct, near), 1.0)  # kept alive while its view is read
        np.clip(sitk.GetArrayViewFromImage(img), 0.0, 1.0, out=conf[near])
        del img
    if box is not None:
        box_shape = tuple(b.stop - b.start for b in box)
        p0 = conf[box]  # p(background): a view, 1 outside ``near``; overwritten by the labels' confidence at the end
        # The network's most likely bone, its probability and its reach: set at image bone only
        # (the zeros elsewhere are never written: the memory is not touched).
        best = np.zeros(box_shape, np.uint8)
        p_best = np.zeros(box_shape, np.float32)
        reach = np.zeros(box_shape, bool)
        if progress is not None:
            progress("unet resampling", 0.3)
        hu32 = np.asarray(full[box], np.float32)  # converted once for both peels
        bone = image_bone_mask(hu32, spacing, levels)
        _network_at(prob, grid, ct, box, bone, best, p_best, reach)
        inner = marrow_pores(bone, p0 < 0.5, best, spacing)
        _network_at(prob, grid, ct, box, inner, best, p_best, reach)
        bone |= inner
        if progress is not None:
            progress("unet resampling", 0.7)
        lab = np.zeros(bone.shape, np.uint8)
        comp, _n = ndi.label(bone)
        next_value = nc
        voxel_mm3 = float(np.prod(spacing))
        for k, sl in enumerate(ndi.find_objects(comp), start=1):
            if sl is None:
                continue
            piece = comp[sl] == k
            r = reach[sl][piece]
            b = best[sl][piece]
            pb = p_best[sl][piece]
            votes = np.bincount(b[r], minlength=nc)
            top = int(np.argmax(votes))
            if r.mean() < 0.5:
                # Neither the network nor the shape says bone (a table slab, metal): left out.
                info = region_infos_from_pieces([(sl, piece)], ct.lps_from_ijk, shape, np.array([q.start for q in box]), full[box])[0]
                reason = non_bone_reason(info)
                if reason is not None:
                    if left_out is not None:
                        left_out.append(f"left out {int(piece.sum()) * voxel_mm3 / 1000.0:.1f} mL of dense voxels the network does not see as bone: {reason}")
                    continue
                cls = np.zeros(len(b), np.uint8)
            elif votes[top] >= PIECE_MAJORITY * votes.sum():
                cls = np.full(len(b), top, np.uint8)
            else:  # two bones in one piece (a joint the image does not resolve)
                cls = _split_piece(full[box][sl], piece, best[sl], reach[sl], p_best[sl], spacing, min_island_fraction)
            why, withheld = "", None
            named = np.zeros(len(b), bool)
            unnamed_reason: list[str] = []
            withheld_best: tuple[float, str | None] = (0.0, None)
            agree = 1.0
            if (cls > 0).any():
                grown = tuple(slice(max(0, q.start - AGREEMENT_MARGIN_VOX), q.stop + AGREEMENT_MARGIN_VOX) for q in sl)
                net_bone = p0[grown] < 0.5
                agree = float(np.count_nonzero(net_bone & bone[grown])) / max(int(np.count_nonzero(net_bone)), 1)
            for c in np.unique(cls[cls > 0]):
                sel = cls == c
                sure = float(((b[sel] == c) & (pb[sel] >= SURE_PROBABILITY)).mean())  # p >= SURE > 0.5: only the most likely
                name = classes.get(int(c), str(int(c)))
                if sure >= MIN_SURE_FRACTION and agree >= MIN_AGREEMENT:
                    named |= sel
                    continue
                unnamed_reason.append(f"'{name}' (sure, p >= {SURE_PROBABILITY:g}, on {100 * sure:.0f} % of it)")
                if sel.sum() > 0:
                    p_mean = float(_prob_of(prob, grid, ct, box, sl, piece, sel, int(c), b, pb).mean())
                    if withheld_best[1] is None or p_mean > withheld_best[0]:
                        withheld_best = (p_mean, name)
            if named.any() and np.count_nonzero(~named) * voxel_mm3 < MIN_BONE_MM3:  # a sliver: the nearest named bone
                sub = np.zeros(piece.shape, np.uint8)
                sub[piece] = np.where(named, cls, 0)
                _nearest_fill(sub, piece & (sub == 0))
                cls, named = sub[piece], np.ones(len(b), bool)
            cls = np.where(named, cls, 0).astype(np.uint8)
            view = lab[sl]
            view[piece] = cls
            rest = ~named
            if rest.any():
                if unnamed_reason and agree < MIN_AGREEMENT:
                    why = (f"the network's bone around it lies on the image's bone for {100 * agree:.0f} % < {100 * MIN_AGREEMENT:.0f} %: "
                           "it does not recognise this anatomy (the model has no class for this bone?); network: "
                           + ", ".join(unnamed_reason) + "; not named")  # fmt: skip
                    withheld, wconf = withheld_best[1], withheld_best[0]
                elif unnamed_reason:
                    why = (f"the network is sure of the name on less than {100 * MIN_SURE_FRACTION:.0f} % of it: "
                           + ", ".join(unnamed_reason) + "; not named")  # fmt: skip
                    withheld, wconf = withheld_best[1], withheld_best[0]
                else:
                    why = (f"the network does not see bone here ({100 * r.mean():.0f} % of the piece within its reach): "
                           "the model has no class for this bone; not named")  # fmt: skip
                    wconf = float(pb[rest].mean())
                value = min(next_value, 255)
                if value == next_value:
                    abstained[value] = Abstained(withheld, wconf, why)
                    next_value += 1
                view[piece] = np.where(rest, value, cls)
        if levels.resolved:  # peel per bone: the blurred bridges at the joints
            lab = _peel_per_bone(hu32, lab, spacing, inner, cortex_hu=levels.cortex_hu, levels=levels)
        del hu32
        labels[box] = lab
        _label_confidence(prob, grid, ct, box, lab, nc, best, p_best, p0)  # p0 becomes the labels' confidence
    if progress is not None:
        progress("unet resampling", 1.0)
    return labels, conf, abstained


def _stem(name: str) -> str:
    """A bone name without its side and its series letter (``rib_left_b`` -> ``rib``)."""
    parts = [q for q in name.split("_") if q not in ("left", "right")]
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts = parts[:-1]
    return "_".join(parts)


def withhold_against_anatomy(
    labels: NDArray[np.uint8],
    ct: Volume,
    classes: dict[int, str],
    abstained: dict[int, Abstained],
    conf: NDArray[np.float32],
    grid: Grid,
    prob: NDArray[np.float32],
    *,
    scanned: Volume | None = None,
) -> list[str]:
    """Withhold the network's name of every piece the anatomy names otherwise (in place).

    The classical naming (:func:`~orthonav.segmentation.naming.name_bones`: shape, position in
    the body, neighbours, joints) names the same pieces independently. Where it names a piece
    confidently (>= :data:`~orthonav.segmentation.naming.CONFIDENT`) and its bone differs from
    the network's class, one of them is wrong, so the piece keeps its voxels as bone but gets
    no name: it takes a new unnamed value (>= the number of classes) with its
    :class:`Abstained` (the network's class withheld, its mean probability over the piece from
    ``conf``, and both names in the reason). Found on an upper-abdomen CT: the network drew
    'hip' on both humeri (confidence 0.64 / 0.77; the weights shipped before 2026-12-08), which the
    anatomy names ``humerus`` (0.99).
    Where the anatomy abstains, the network's name stands.

    Parameters
    ----------
    labels
        Class labels on the CT grid (0 background, 1..nc-1 the classes, >= nc unnamed), changed in place.
    ct
        The CT (its geometry).
    classes
        Class value -> side-less name.
    abstained
        Unnamed value -> :class:`Abstained`, extended in place.
    conf
        Per-voxel calibrated probability of each voxel's label, changed in place: a withheld
        piece's voxels take the probability of bone at all (1 - p(background)), as every
        other unnamed voxel (:func:`probabilities_to_labels`).
    grid, prob
        The network's grid and its calibrated probabilities (c, z, y, x) on it.
    scanned
        Coverage mask on the CT grid of a study imported from several stacks, or None (all
        scanned). Without it the anatomy cannot tell a piece cut by an unscanned gap from a
        whole bone: on the three-stack lower-limb study it named no piece (confidence 0.16-0.18);
        with it, the distal tibia alone in the ankle stack is a tibia (0.93).

    Returns
    -------
    list of str
        One line per withheld name.

    Raises
    ------
    InputError
        ``scanned`` is not on the CT's grid.
    """
    nc = max(classes) + 1 if classes else 1
    if scanned is not None and (scanned.array_zyx.shape != labels.shape or not np.allclose(scanned.lps_from_ijk, ct.lps_from_ijk, atol=1e-3)):
        raise InputError(None, f"coverage mask (shape {scanned.array_zyx.shape}) is not on the CT's grid (shape {labels.shape}): "
                               "pass the case's scanned.nii.gz resampled to its CT")  # fmt: skip
    if not ((labels > 0) & (labels < nc)).any():
        return []
    # the shape summaries need no sub-millimetre voxels: every other voxel of a fine grid
    # (regions_from_label_map cost 2.9 s on a 512 x 512 x 400 knee CT at full resolution)
    step = np.where(ct.spacing_mm < 1.0, 2, 1)  # i, j, k
    m = ct.lps_from_ijk.copy()
    m[:3, :3] = m[:3, :3] * step
    sub = (slice(None, None, int(step[2])), slice(None, None, int(step[1])), slice(None, None, int(step[0])))
    sc = None if scanned is None else np.ascontiguousarray(scanned.array_zyx[sub] != 0)
    regions, values = regions_from_label_map(np.ascontiguousarray(labels[sub]), m, scanned_zyx=sc)
    anatomy = name_bones(regions, anatomy="auto")
    comp = None
    notes: list[str] = []
    for r, v in zip(regions, values):
        if not 0 < v < nc:
            continue
        other = anatomy.names.get(r.index, "")
        p = anatomy.confidence.get(r.index, 0.0)
        if not other or other.startswith("bone_") or p < CONFIDENT or _stem(other) == classes[v]:
            continue
        if comp is None:  # the components as regions_from_label_map finds them (26-connected)
            comp = {c: ndi.label(labels == c, structure=np.ones((3, 3, 3), bool))[0] for c in range(1, nc) if (labels == c).any()}
        i_, j_, k_ = np.rint(np.linalg.solve(ct.lps_from_ijk, np.append(r.points_lps[0], 1.0))[:3]).astype(int)
        piece = comp[v] == comp[v][k_, j_, i_]
        value = max([nc - 1, *abstained]) + 1
        if value > 255:
            break
        why = (f"the network says '{classes[v]}' but the anatomy (shape, position, neighbours) says {other} "
               f"({p:.2f}): one of them is wrong; not named")  # fmt: skip
        abstained[value] = Abstained(classes[v], float(conf[piece].mean()), why)
        labels[piece] = value
        kji = np.argwhere(piece)
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(kji.min(axis=0), kji.max(axis=0)))
        bone_p = 1.0 - np.clip(_to_ct(prob[0], grid, _box_ref(ct, box), 1.0), 0.0, 1.0)
        sub = conf[box]
        sub[piece[box]] = bone_p[piece[box]]
        notes.append(why)
    return notes


__all__ = [
    "AGREEMENT_MARGIN_VOX",
    "MIN_AGREEMENT",
    "MIN_BONE_MM3",
    "MIN_SURE_FRACTION",
    "PIECE_MAJORITY",
    "REACH_COARSE_VOXELS",
    "SURE_PROBABILITY",
    "Abstained",
    "JOINT_SECOND_BONE_SHARE",
    "MIN_PORE_RADIUS_MM",
    "PORE_GRID_MM",
    "image_bone_mask",
    "marrow_pores",
    "probabilities_to_labels",
    "withhold_against_anatomy",
]
