"""Calibration of the U-Net's per-voxel confidence: reliability, ECE, and a monotone recalibration map.

Temperature scaling (:func:`orthonav.segmentation.unet.fit_temperature`) calibrates the
network's own softmax on its coarse grid. The label a voxel finally gets is not the network's
arg-max, though: the image decides where bone is and its surface (``refine = "image-edge"``),
and the probabilities are interpolated from the network's 4 mm grid. So the confidence of the
final label (the calibrated probability of that label) reads low near every surface, where the
image's edge is usually right: measured on unseen draws and phantoms, every confidence bin was
right more often than it said (ECE ~0.19).

The remedy is the standard post-hoc one for a score whose ordering is informative but whose
values are not (Zadrozny & Elkan 2002, KDD, "Transforming classifier scores into accurate
multiclass probability estimates"): isotonic regression of "the voxel's label is right" on the
confidence, over held-out CTs never used in training or testing. The map is monotone
non-decreasing, so the ordering (low confidence marks errors) is kept, and it is stored in the
model card as knots of a piecewise-linear function.

Arrays in, arrays out; confidences and accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.optimize import isotonic_regression

from orthonav.core.errors import InputError

#: Equal-width confidence bins of the reliability diagram and the ECE (Guo et al. 2017, ICML).
ECE_BINS = 15
#: Equal-width bins the isotonic fit pools the voxels into (each bin: mean confidence, share right).
FIT_BINS = 50


def reliability(conf: NDArray, correct: NDArray, bins: int = ECE_BINS) -> tuple[float, list[tuple[float, float, int]]]:
    """Expected calibration error and the reliability diagram's bins.

    ``ECE = sum_b n_b / n * |accuracy_b - mean confidence_b|`` over ``bins`` equal-width bins of
    ``conf``; rows ``(mean confidence, accuracy, voxels)`` of the non-empty bins.
    """
    conf = np.asarray(conf, dtype=np.float64).ravel()
    right = np.asarray(correct, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    s_conf = np.bincount(idx, weights=conf, minlength=bins)
    s_acc = np.bincount(idx, weights=right, minlength=bins)
    ece = float(np.sum(np.abs(s_acc - s_conf)) / max(int(n.sum()), 1))
    rows = [(float(s_conf[b] / n[b]), float(s_acc[b] / n[b]), int(n[b])) for b in range(bins) if n[b]]
    return ece, rows


def near_bone(truth_bone: NDArray, pred_bone: NDArray, iterations: int = 2) -> NDArray[np.bool_]:
    """Voxels where calibration is scored and fitted: true or predicted bone dilated by two voxels
    (background far from bone, right at confidence ~1, would swamp every figure)."""
    return ndi.binary_dilation(np.asarray(truth_bone, bool) | np.asarray(pred_bone, bool), iterations=iterations)


def label_is_right(truth_class: NDArray, pred_class: NDArray, unnamed: NDArray) -> NDArray[np.bool_]:
    """Whether each voxel's final label is right, as its confidence claims it: the true class
    for a named bone or background (class numbers, side-less), any bone for an unnamed
    ``bone_<n>`` voxel (its confidence is that of bone at all)."""
    t = np.asarray(truth_class)
    return np.where(np.asarray(unnamed, bool), t > 0, t == np.asarray(pred_class))


def fit_confidence_map(conf: NDArray, correct: NDArray, *, bins: int = FIT_BINS, min_voxels: int = 1000) -> list[tuple[float, float]]:
    """Isotonic (monotone non-decreasing) map from confidence to the share of labels that are right.

    Parameters
    ----------
    conf
        Per-voxel confidence of the final label on held-out CTs (voxels near bone).
    correct
        Whether each voxel's label is right (bool, same shape).
    bins
        The voxels are pooled into this many equal-width bins of ``conf``; each bin's share of
        right labels, weighted by its voxel count, is fitted by isotonic regression.
    min_voxels
        Fewer voxels in all than this is refused (a map from a handful of voxels is noise).

    Returns
    -------
    list of (confidence, calibrated confidence)
        Knots at the bins' mean confidences, plus (0, y_first) and (1, y_last), x strictly
        increasing, y non-decreasing in [0, 1]; apply with :func:`apply_confidence_map`.
    """
    c = np.asarray(conf, dtype=np.float64).ravel()
    k = np.asarray(correct, dtype=bool).ravel()
    if c.shape != k.shape:
        raise InputError(None, f"confidence and correctness differ in size ({c.size} vs {k.size})")
    if c.size < min_voxels:
        raise InputError(None, f"{c.size} voxels are too few to fit a confidence map (needs {min_voxels})")
    if not np.all(np.isfinite(c)) or c.min() < 0.0 or c.max() > 1.0:
        raise InputError(None, "confidences must be finite and within [0, 1]")
    idx = np.clip((c * bins).astype(np.int64), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    keep = n > 0
    x = (np.bincount(idx, weights=c, minlength=bins)[keep] / n[keep])
    acc = np.bincount(idx, weights=k.astype(np.float64), minlength=bins)[keep] / n[keep]
    y = isotonic_regression(acc, weights=n[keep].astype(np.float64), increasing=True).x
    knots = [(0.0, float(y[0]))] + [(float(a), float(b)) for a, b in zip(x, y) if 0.0 < a < 1.0] + [(1.0, float(y[-1]))]
    # strictly increasing x (bins' means are distinct, but the ends may meet them)
    out: list[tuple[float, float]] = []
    for a, b in knots:
        if out and a <= out[-1][0]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
            continue
        out.append((a, b))
    return [(round(a, 6), round(min(max(b, 0.0), 1.0), 6)) for a, b in out]


def check_confidence_map(knots: Sequence[Sequence[float]]) -> str | None:
    """Why ``knots`` is not a usable map (None when it is): at least two knots, x strictly
    increasing from 0 to 1, y non-decreasing within [0, 1]."""
    a = np.asarray(knots, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or len(a) < 2:
        return "needs at least two (confidence, calibrated) pairs"
    x, y = a[:, 0], a[:, 1]
    if not np.all(np.isfinite(a)):
        return "holds a value that is not a finite number"
    if x[0] != 0.0 or x[-1] != 1.0 or np.any(np.diff(x) <= 0):
        return "its confidences must rise strictly from 0 to 1"
    if y.min() < 0.0 or y.max() > 1.0 or np.any(np.diff(y) < 0):
        return "its calibrated values must not fall and must lie within [0, 1]"
    return None


def apply_confidence_map(conf: NDArray, knots: Sequence[Sequence[float]] | None, *, out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """``conf`` through the piecewise-linear map (identity when ``knots`` is None), float32.

    ``out``: where to write the result (a float32 array of ``conf``'s shape; ``conf`` itself to
    map in place). Most voxels of a CT lie far from bone with confidence exactly 1: they take the
    map's value at 1, and only the others are interpolated, in blocks, so that no temporary
    array the size of the CT is made (on a 512x512x400 CT: 7.4 s for one ``np.interp`` over it,
    most of it allocating and first touching memory)."""
    c = np.asarray(conf, dtype=np.float32)
    if not knots:
        if out is not None and out is not conf:
            out[...] = c
            return out
        return c
    if out is None:
        out = np.empty(c.shape, dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != c.shape or not out.flags.c_contiguous or not c.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array of conf's shape")
    a = np.asarray(knots, dtype=np.float64)
    at_one = np.float32(np.interp(1.0, a[:, 0], a[:, 1]))
    src, dst = c.reshape(-1), out.reshape(-1)
    block = 1 << 22
    for s in range(0, src.size, block):
        x = src[s : s + block]
        rest = np.flatnonzero(x != np.float32(1.0))
        mapped = np.interp(x[rest], a[:, 0], a[:, 1]).astype(np.float32)  # read before ``out`` (maybe ``conf``) is written
        y = dst[s : s + block]
        y.fill(at_one)
        y[rest] = mapped
    return out


__all__ = ["ECE_BINS", "apply_confidence_map", "check_confidence_map", "fit_confidence_map", "label_is_right", "near_bone", "reliability"]
