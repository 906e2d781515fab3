"""Tool calibration: pivot (tip offset), spin (shaft axis), automatic capture of still poses.

Pivot calibration: the tool tip rests in a divot while the tool is pivoted; the tip is a
fixed point ``p_tip`` in the tool frame and a fixed point ``p_pivot`` in the tracker frame:
``R_i p_tip + t_i = p_pivot`` for every pose ``(R_i, t_i)`` = ``tracker_from_tool``.

* ``"algebraic"``: linear least squares of ``[R_i  -I] [p_tip; p_pivot] = -t_i`` (the
  standard formulation, e.g. Yaniv 2015, "Which pivot calibration?", Proc. SPIE 9415, eq. 1).
* ``"sphere"``: the tool origins ``t_i`` lie on a sphere around ``p_pivot``; fit the sphere
  algebraically (Yaniv 2015, sphere fitting, eq. 4), then ``p_tip`` = mean of
  ``R_i^T (p_pivot - t_i)``.
* ``"ransac"``: robust fit with an inlier threshold derived from the data. Algebraic fits
  on random 4-pose samples (seeded: the same poses give the same result) are scored by the
  median per-pose residual (least median of squares, Rousseeuw 1984, JASA 79:871; the
  random-sampling search of Fischler & Bolles 1981). The noise scale is estimated from that
  median: with isotropic Gaussian noise of sigma per axis the per-pose residual is
  chi-distributed with 3 degrees of freedom, whose median is 1.538 sigma, so
  ``sigma = median / 1.538``; poses within the 99th percentile of that distribution
  (``3.368 sigma``) are inliers. The inliers are refitted algebraically and the scale and
  inlier set re-estimated from the refit until the set stops changing (at most
  ``RANSAC_REFINE_ROUNDS``). ``ransac_threshold_mm`` overrides the derived threshold. The
  threshold used is reported (:attr:`PivotResult.threshold_mm`). A hand-held 395 mm pointer
  (the real recording in ``shared/data/pivot_recording``) has per-pose residuals of a few mm,
  so any fixed sub-mm threshold rejects most good poses; the derived one (about 4 mm there)
  keeps 91 % and drops the poses where the tip slipped.

All report the RMS of the per-pose tip residuals ``|R_i p_tip + t_i - p_pivot|`` and refuse
poor data: fewer than 10 poses, or a rotation spread below ``min_spread_deg`` (the tip is then
poorly determined along the shaft); see :func:`rotation_spread_deg`.

Spin calibration: the tool is spun about its shaft; every relative rotation
``R_0^T R_i`` (tool frame) has the shaft as its axis, so the axis is the null vector of the
stacked ``(R_0^T R_i - I)``.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError, TrackingError

from .frame import TrackerSource
from .tools import ToolSet

MIN_POSES = 10
#: Median of the chi distribution with 3 degrees of freedom: median per-pose residual / sigma.
CHI3_MEDIAN = 1.5381722544
#: 99th percentile of the chi distribution with 3 degrees of freedom: inlier threshold / sigma.
CHI3_Q99 = 3.3682141755
#: Refit / re-select rounds after the least-median search.
RANSAC_REFINE_ROUNDS = 20


@dataclass(frozen=True)
class PivotResult:
    """Result of :func:`pivot_calibration`.

    Attributes
    ----------
    tip_in_tool_mm
        (3,) tip position in the tool frame, mm.
    pivot_in_tracker_mm
        (3,) pivot (divot) position in the tracker frame, mm.
    rms_mm
        RMS of the per-pose tip residuals (mm).
    residuals_mm
        (n,) per-pose residual of the poses used, mm.
    inliers
        (n_all,) bool mask of the poses used (all True except for RANSAC).
    spread_deg
        :func:`rotation_spread_deg` of the poses (deg).
    method
        "algebraic", "sphere" or "ransac".
    threshold_mm
        RANSAC inlier threshold on the per-pose residual (mm): derived from the data, or the
        ``ransac_threshold_mm`` given. NaN for the other methods.
    """

    tip_in_tool_mm: NDArray[np.float64]
    pivot_in_tracker_mm: NDArray[np.float64]
    rms_mm: float
    residuals_mm: NDArray[np.float64]
    inliers: NDArray[np.bool_]
    spread_deg: float
    method: str
    threshold_mm: float = math.nan


def _as_poses(tracker_from_tool: ArrayLike) -> NDArray[np.float64]:
    poses = np.asarray(tracker_from_tool, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise InputError(None, f"calibration needs an (n, 4, 4) array of tracker_from_tool poses, got {poses.shape}")
    if len(poses) < MIN_POSES:
        raise InputError(None, f"calibration needs at least {MIN_POSES} poses, got {len(poses)}")
    if not np.all(np.isfinite(poses)):
        raise InputError(None, "calibration poses contain non-finite values")
    return poses


def rotation_spread_deg(poses: NDArray[np.float64]) -> float:
    """Rotation spread of the poses about their least-excited axis (deg, RMS).

    The smallest singular value of the stacked ``R_i - R_mean`` divided by sqrt(n): for small
    angles ``|(R - I) v|`` is the rotation about axes perpendicular to ``v``, so this is the
    RMS rotation seen from the worst direction. A tool only spun about its shaft scores ~0
    (its tip along the shaft is then undetermined); pivoting +-10 deg in a cone scores ~5,
    +-30 deg ~14.
    """
    dev = (poses[:, :3, :3] - _mean_rotation(poses[:, :3, :3])).reshape(-1, 3)
    return float(np.degrees(np.linalg.svd(dev, compute_uv=False)[-1] / math.sqrt(len(poses))))


def _mean_rotation(rotations: NDArray[np.float64]) -> NDArray[np.float64]:
    """Chordal L2 mean of (n, 3, 3) rotations: the rotation nearest their sum (SVD projection
    onto SO(3), Hartley et al. 2013, "Rotation averaging", IJCV 103, sec. 5.3)."""
    u, _s, vt = np.linalg.svd(rotations.sum(axis=0))
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def _pivot_system(poses: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``A x = b`` of the pivot equations ``[R_i  -I] [p_tip; p_pivot] = -t_i`` (Yaniv 2015, eq. 1)."""
    n = len(poses)
    a = np.zeros((3 * n, 6))
    a[:, :3] = poses[:, :3, :3].reshape(3 * n, 3)
    a[:, 3:] = -np.tile(np.eye(3), (n, 1))
    return a, -poses[:, :3, 3].reshape(3 * n)


def _solve_algebraic(poses: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    a, b = _pivot_system(poses)
    x, *_ = np.linalg.lstsq(a, b, rcond=None)  # minimum-norm solution when rank-deficient
    return x[:3], x[3:]


def _residuals(poses: NDArray[np.float64], tip: NDArray[np.float64], pivot: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.linalg.norm(poses[:, :3, :3] @ tip + poses[:, :3, 3] - pivot, axis=1)


def _solve_sphere(poses: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t = poses[:, :3, 3]
    # |t - c|^2 = r^2  ->  2 t.c + (r^2 - |c|^2) = |t|^2, linear in (c, k)
    a = np.hstack([2.0 * t, np.ones((len(t), 1))])
    b = (t**2).sum(axis=1)
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    pivot = x[:3]
    tips = np.einsum("nji,nj->ni", poses[:, :3, :3], pivot - t)  # R_i^T (c - t_i)
    return tips.mean(axis=0), pivot


def pivot_calibration(
    tracker_from_tool: ArrayLike,
    *,
    method: str = "algebraic",
    min_spread_deg: float = 5.0,
    ransac_threshold_mm: float | None = None,
    ransac_iterations: int = 200,
    seed: int = 0,
) -> PivotResult:
    """Tip offset of a tool pivoted about its tip (see the module docstring).

    Parameters
    ----------
    tracker_from_tool
        (n, 4, 4) poses, n >= 10, mm.
    method
        "algebraic", "sphere" or "ransac".
    min_spread_deg
        Refuse data whose :func:`rotation_spread_deg` is below this (deg).
    ransac_threshold_mm
        RANSAC inlier threshold on the per-pose residual (mm); None (default): derived from
        the data's noise (see the module docstring).
    ransac_iterations
        Random 4-pose samples tried by the least-median search.
    seed
        Seed of the sampling (fixed, so a calibration is reproducible).

    Raises
    ------
    InputError
        Too few poses, non-finite poses, too little rotation, unknown method, or (RANSAC)
        no consensus of at least half the poses.
    """
    poses = _as_poses(tracker_from_tool)
    spread = rotation_spread_deg(poses)
    if spread < min_spread_deg:
        raise InputError(
            None,
            f"pivot poses tilt only {spread:.1f} deg RMS in their least-moved direction (need >= {min_spread_deg:.0f}): "
            "pivot the tool more widely",
        )
    inliers = np.ones(len(poses), dtype=bool)
    if method == "algebraic":
        tip, pivot = _solve_algebraic(poses)
    elif method == "sphere":
        tip, pivot = _solve_sphere(poses)
    elif method == "ransac":
        tip, pivot, inliers, threshold = _ransac(poses, ransac_threshold_mm, ransac_iterations, seed)
    else:
        raise InputError(None, f"unknown pivot calibration method '{method}' (algebraic, sphere, ransac)")
    res = _residuals(poses[inliers], tip, pivot)
    return PivotResult(tip, pivot, float(np.sqrt(np.mean(res**2))), res, inliers, spread, method,
                       threshold if method == "ransac" else math.nan)


def _ransac(poses: NDArray[np.float64], threshold_mm: float | None, iterations: int,
            seed: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_], float]:
    """Robust pivot fit (module docstring): tip (mm), pivot (mm), inlier mask, threshold used (mm)."""
    rng = np.random.default_rng(seed)
    best_median, tip, pivot = math.inf, np.zeros(3), np.zeros(3)
    for _ in range(iterations):
        t, p = _solve_algebraic(poses[rng.choice(len(poses), 4, replace=False)])
        med = float(np.median(_residuals(poses, t, p)))
        if med < best_median:
            best_median, tip, pivot = med, t, p
    inliers: NDArray[np.bool_] | None = None
    threshold = math.nan
    for _ in range(RANSAC_REFINE_ROUNDS):
        res = _residuals(poses, tip, pivot)
        # Floor: noise-free (synthetic) poses leave only rounding error.
        threshold = threshold_mm if threshold_mm is not None else max(CHI3_Q99 * float(np.median(res)) / CHI3_MEDIAN, 1e-6)
        mask = res < threshold
        if inliers is not None and np.array_equal(mask, inliers):
            break
        inliers = mask
        if inliers.sum() < max(MIN_POSES // 2, len(poses) // 2):
            raise InputError(None, f"RANSAC pivot calibration: only {int(inliers.sum())} of {len(poses)} poses agree within "
                                   f"{threshold:.2f} mm ({'given' if threshold_mm is not None else 'derived from the data'})")
        tip, pivot = _solve_algebraic(poses[inliers])
    assert inliers is not None
    return tip, pivot, inliers, float(threshold)


@dataclass(frozen=True)
class SpinResult:
    """Result of :func:`spin_calibration`.

    Attributes
    ----------
    axis_in_tool
        (3,) unit shaft axis in the tool frame; sign: towards ``tip_in_tool_mm`` if one was
        given (handle -> tip), else as found.
    point_in_tool_mm
        (3,) point on the axis closest to the tool origin (mm); NaN if the tool translated
        along with the spin so that no fixed line exists.
    rms_deg
        RMS angle between the axis and each relative rotation's own axis (deg).
    spin_range_deg
        Largest relative rotation angle seen (deg).
    """

    axis_in_tool: NDArray[np.float64]
    point_in_tool_mm: NDArray[np.float64]
    rms_deg: float
    spin_range_deg: float


def spin_calibration(tracker_from_tool: ArrayLike, *, tip_in_tool_mm: ArrayLike | None = None, min_spin_deg: float = 30.0) -> SpinResult:
    """Shaft axis of a tool spun about its shaft (tip resting in a divot or in a sleeve).

    Raises
    ------
    InputError
        Too few poses, or the tool spun less than ``min_spin_deg``.
    """
    poses = _as_poses(tracker_from_tool)
    r0t = poses[0, :3, :3].T
    rel = np.einsum("ij,njk->nik", r0t, poses[1:, :3, :3])  # R_0^T R_i: rotations in the tool frame
    angles = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)))
    if angles.max() < min_spin_deg:
        raise InputError(None, f"tool spun only {angles.max():.1f} deg (need >= {min_spin_deg:.0f}): spin it further")
    stacked = (rel - np.eye(3)).reshape(-1, 3)
    _u, _s, vt = np.linalg.svd(stacked)
    axis = vt[-1] / np.linalg.norm(vt[-1])
    if tip_in_tool_mm is not None and np.dot(axis, np.asarray(tip_in_tool_mm, dtype=np.float64)) < 0:
        axis = -axis
    # per-rotation axes, for the residual
    errs = []
    for r, ang in zip(rel, angles):
        if ang < 5.0:
            continue
        w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
        w /= np.linalg.norm(w)
        errs.append(math.degrees(math.acos(min(1.0, abs(float(w @ axis))))))
    # fixed line: points x (tool frame) with R_i x + t_i equal for all i, i.e. the pivot system
    tip, pivot = _solve_algebraic(poses)  # minimum-norm solution: a point on the line
    a, b = _pivot_system(poses)
    point = tip - axis * float(tip @ axis)
    res = np.linalg.norm(a @ np.concatenate([tip, pivot]) - b) / math.sqrt(len(poses))
    if res > 1.0:  # the tool did not spin about a fixed line
        point = np.full(3, np.nan)
    return SpinResult(axis, point, float(np.sqrt(np.mean(np.square(errs)))) if errs else 0.0, float(angles.max()))


def with_tip_calibration(toolset: ToolSet, tool: str, result: PivotResult, *, axis: ArrayLike | None = None, date: str | None = None) -> ToolSet:
    """A copy of ``toolset`` with ``tool``'s tip (and optionally axis), RMS and date updated."""
    by = toolset.by_name()
    if tool not in by:
        raise InputError(None, f"tool '{tool}' is not in the tool file (has {sorted(by)})")
    stamp = date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    updates: dict[str, object] = {
        "tip_mm": tuple(float(v) for v in result.tip_in_tool_mm),
        "calibration_date": stamp,
        "calibration_rms_mm": float(result.rms_mm),
    }
    if axis is not None:
        updates["axis"] = tuple(float(v) for v in np.asarray(axis, dtype=np.float64))
    tools = [t.model_copy(update=updates) if t.name == tool else t for t in toolset.tools]
    return toolset.model_copy(update={"tools": tools})


def collect_poses(source: TrackerSource, tool: str, n: int, *, timeout_s: float = 60.0, min_interval_s: float = 0.0) -> NDArray[np.float64]:
    """Collect ``n`` fresh LIVE poses of ``tool`` from a started source (for pivot / spin).

    Only new samples are taken (never the same sample twice): a sample is identified by its
    device timestamp, or by its host receive time when the device time is not finite (NaN
    never equals itself). At most one per ``min_interval_s``. Waits on the source's update
    event.

    Raises
    ------
    TrackingError
        Fewer than ``n`` poses within ``timeout_s``.
    """
    import time

    out: list[NDArray[np.float64]] = []
    last_key: tuple[str, float] | None = None
    last_host = -math.inf
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TrackingError(f"collected only {len(out)} of {n} poses of '{tool}' in {timeout_s:.0f} s (tool not visible?)")
        if not source.wait_for_update(min(remaining, 0.5)):
            continue
        pose = source.latest().tools.get(tool)
        if pose is None or pose.tracker_from_tool is None:
            continue
        key = ("device", pose.device_time_s) if math.isfinite(pose.device_time_s) else ("host", pose.host_time_s)
        if key == last_key or pose.host_time_s - last_host < min_interval_s:
            continue
        last_key, last_host = key, pose.host_time_s
        out.append(pose.tracker_from_tool)
    return np.array(out)
