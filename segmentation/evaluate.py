"""Segmentation accuracy per bone: Dice, 95% Hausdorff distance and mean surface distance (mm).

Surface distances are measured in physical space between the boundary voxels of the two
masks (voxels of a mask with a face-neighbour outside it), using the exact Euclidean distance
transform (scipy's implementation of Maurer, Qi & Raghavan 2003, IEEE TPAMI 25(2)) with the true anisotropic
spacing. HD95 is the larger of the two directed 95th percentiles and the mean surface
distance (MSD) the mean over both boundary sets, as in Heimann et al. (2009, IEEE TMI 28(8))
and MONAI's ``compute_hausdorff_distance(percentile=95)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from orthonav.core.atomic import write_json
from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume, from_sitk, to_sitk
from scipy import ndimage as ndi


@dataclass(frozen=True)
class BoneScores:
    """Scores of one bone. Distances are mm; ``inf`` when a bone is missing from one side."""

    dice: float
    hd95_mm: float
    msd_mm: float
    voxels_pred: int
    voxels_truth: int

    def to_json(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _same_grid(a: Volume, b: Volume) -> bool:
    return a.array_zyx.shape == b.array_zyx.shape and np.allclose(a.lps_from_ijk, b.lps_from_ijk, atol=1e-4)


def resample_labels_like(labels: Volume, reference: Volume) -> Volume:
    """Nearest-neighbour resampling of a label map onto ``reference``'s grid (LPS geometry)."""
    out = sitk.Resample(to_sitk(labels), to_sitk(reference), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return from_sitk(out)


def _border(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def _distance_to(mask: NDArray[np.bool_], spacing_ijk: NDArray[np.float64]) -> NDArray[np.float32]:
    """Distance (mm) from every voxel centre to the nearest voxel of ``mask``."""
    return ndi.distance_transform_edt(~mask, sampling=np.asarray(spacing_ijk, float)[::-1]).astype(np.float32)


def score_masks(pred: NDArray[np.bool_], truth: NDArray[np.bool_], spacing_ijk: NDArray[np.float64]) -> BoneScores:
    """Dice, HD95 and MSD of two boolean masks on the same grid (spacing along i, j, k in mm)."""
    n_p, n_t = int(pred.sum()), int(truth.sum())
    if n_p == 0 and n_t == 0:
        return BoneScores(1.0, 0.0, 0.0, 0, 0)
    dice = 2.0 * float((pred & truth).sum()) / float(n_p + n_t)
    if n_p == 0 or n_t == 0:
        return BoneScores(dice, math.inf, math.inf, n_p, n_t)
    box = ndi.find_objects((pred | truth).astype(np.uint8))[0]
    box = tuple(slice(max(0, s.start - 2), min(n, s.stop + 2)) for s, n in zip(box, pred.shape))
    p, t = np.pad(pred[box], 1), np.pad(truth[box], 1)
    bp, bt = _border(p), _border(t)
    d_pt = _distance_to(bt, spacing_ijk)[bp]  # pred border -> truth border
    d_tp = _distance_to(bp, spacing_ijk)[bt]
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    msd = float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))
    return BoneScores(dice, hd95, msd, n_p, n_t)


def evaluate_segmentation(pred: Volume, pred_table: LabelTable, truth: Volume, truth_table: LabelTable) -> dict[str, BoneScores]:
    """Score every bone named in either table, matched by name.

    ``pred`` is resampled (nearest neighbour) onto ``truth``'s grid when the grids differ.
    A bone present in only one table scores Dice 0 and infinite distances.

    Returns
    -------
    dict
        bone name -> :class:`BoneScores`, truth's bones first.
    """
    if not _same_grid(pred, truth):
        pred = resample_labels_like(pred, truth)
    spacing = truth.spacing_mm
    names = list(truth_table.labels.values()) + [n for n in pred_table.labels.values() if n not in truth_table.labels.values()]
    out: dict[str, BoneScores] = {}
    pa, ta = pred.array_zyx, truth.array_zyx
    for name in names:
        pm = pa == pred_table.value_of(name) if name in pred_table.labels.values() else np.zeros(pa.shape, bool)
        tm = ta == truth_table.value_of(name) if name in truth_table.labels.values() else np.zeros(ta.shape, bool)
        out[name] = score_masks(pm, tm, spacing)
    return out


def scores_table(scores: dict[str, BoneScores]) -> str:
    """Plain-text table of the scores (one row per bone)."""
    lines = [f"{'bone':<16} {'Dice':>7} {'HD95 mm':>8} {'MSD mm':>7} {'voxels pred':>12} {'voxels truth':>12}"]
    for name, s in scores.items():
        lines.append(f"{name:<16} {s.dice:7.4f} {s.hd95_mm:8.3f} {s.msd_mm:7.3f} {s.voxels_pred:12d} {s.voxels_truth:12d}")
    return "\n".join(lines)


def write_scores_json(scores: dict[str, BoneScores], path: str | Path) -> Path:
    """Atomically write ``{bone: {dice, hd95_mm, msd_mm, ...}}`` (infinite distances as null)."""
    return write_json(path, {name: s.to_json() for name, s in scores.items()})


def evaluate_paths(pred: str | Path, truth: str | Path) -> dict[str, BoneScores]:
    """Evaluate two label files (or case folders); each needs its ``labels.json`` beside it.

    ``pred`` / ``truth`` may be a case folder (uses ``labels.nii.gz``; for truth,
    ``truth/labels.nii.gz`` when the folder has one) or a label file ``X.nii.gz`` with
    ``X.json`` or ``labels.json`` next to it.
    """
    from orthonav.core.case import read_labels_table
    from orthonav.core.volume import read_volume

    def resolve(p: Path, *, is_truth: bool) -> tuple[Path, Path]:
        if p.is_dir():
            if is_truth and (p / "truth" / "labels.nii.gz").exists():
                p = p / "truth" / "labels.nii.gz"
            else:
                p = p / "labels.nii.gz"
        if not p.exists():
            raise InputError(p, "label map not found")
        stem = p.name.split(".")[0]
        for cand in (p.parent / f"{stem}.json", p.parent / "labels.json"):
            if cand.exists():
                return p, cand
        raise InputError(p, f"no label table ({stem}.json or labels.json) beside the label map")

    pl, pj = resolve(Path(pred), is_truth=False)
    tl, tj = resolve(Path(truth), is_truth=True)
    return evaluate_segmentation(read_volume(pl), read_labels_table(pj), read_volume(tl), read_labels_table(tj))
