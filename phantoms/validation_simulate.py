"""The accuracy protocol by simulation: Monte Carlo on a phantom case's ground truth.

In every trial the pointer touches each true fiducial with a fiducial localisation error (FLE,
isotropic Gaussian of the given 3D RMS), the tracker samples pointer and reference with
independent Gaussian noise (the model of :func:`orthonav.tracking.simulator.add_noise`,
translation part) and each touch is averaged over a dwell, as
:class:`orthonav.navigation.digitise.StillCapture` does. The digitised fiducials are registered
to the CT with :func:`orthonav.core.procrustes.paired_point`; TRE is the true registration
error at every truth target. A pivot calibration is simulated with the same tracker noise.
All points CT LPS millimetres.

The registrations (:func:`register_trials`, a pure function) can be spread in chunks over
other processes through a ``trial_map`` (on Dask: ``orthonav batch validate --simulate``); every
random draw is made before, in the serial order, so the figures are the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from orthonav.core.case import Case
from orthonav.core.errors import InputError
from orthonav.core.procrustes import paired_point
from orthonav.core.transforms import apply, invert, make_rigid, random_rigid, rotation_about_axis

from orthonav.tracking import default_toolset, pivot_calibration

from .truth import read_truth
from .validation_result import PivotFigures, ValidationConfig, ValidationResult, build_result

#: Number of tracker samples averaged per touch in the simulation: a 0.4 s dwell at 60 Hz.
DEFAULT_SAMPLES_PER_TOUCH = 24
#: Trials per chunk when a ``trial_map`` spreads the registrations (about 2 s of work each).
DEFAULT_CHUNK_TRIALS = 20_000


@dataclass(frozen=True)
class TrialChunk:
    """What consecutive Monte Carlo trials need to register and measure (CT LPS mm).

    Attributes
    ----------
    fiducials_ct_mm
        (N, 3) true fiducials in the CT.
    targets_ct_mm
        (M, 3) true targets in the CT.
    digitised_ref_mm
        (T, N, 3) the fiducials as digitised, in the reference marker's frame (FLE and
        tracker noise included), one row per trial.
    ct_from_ref
        (T, 4, 4) true pose of the reference marker in the CT, per trial.
    """

    fiducials_ct_mm: NDArray[np.float64]
    targets_ct_mm: NDArray[np.float64]
    digitised_ref_mm: NDArray[np.float64]
    ct_from_ref: NDArray[np.float64]


@dataclass(frozen=True)
class TrialFigures:
    """The figures of the trials of one :class:`TrialChunk`, in its order.

    Attributes
    ----------
    fre_mm
        (T,) fiducial registration error (RMS over the fiducials, mm).
    residuals_mm
        (T, N) residual distance at each fiducial (mm).
    tre_vectors_mm
        (T, M, 3) where navigation shows each true target minus where it is (CT LPS mm).
    """

    fre_mm: NDArray[np.float64]
    residuals_mm: NDArray[np.float64]
    tre_vectors_mm: NDArray[np.float64]


#: ``trial_map(register_trials, chunks)`` gives the figures of every chunk in order, like the
#: built-in ``map`` (for example on a Dask cluster: ``orthonav.cli.batch_run.dask_trial_map``).
TrialMap = Callable[[Callable[[TrialChunk], TrialFigures], Sequence[TrialChunk]], Iterable[TrialFigures]]


def register_trials(chunk: TrialChunk) -> TrialFigures:
    """Register each trial's digitised fiducials to the CT and measure the true error at the targets.

    A pure function of its input (no random numbers): the trials of a run give the same
    figures whether they are registered in one call or in chunks on other processes.
    Registration is :func:`orthonav.core.procrustes.paired_point` (``ct_from_reference``
    estimate); a TRE vector is the estimate composed with the true ``reference_from_ct``,
    applied to a target, minus the target.
    """
    n_trials = len(chunk.digitised_ref_mm)
    fre = np.empty(n_trials)
    residuals = np.empty((n_trials, len(chunk.fiducials_ct_mm)))
    vectors = np.empty((n_trials, len(chunk.targets_ct_mm), 3))
    tgt_ct = chunk.targets_ct_mm
    for i in range(n_trials):
        reg = paired_point(chunk.fiducials_ct_mm, chunk.digitised_ref_mm[i])  # ct_from_reference estimate
        fre[i] = reg.fre_mm
        residuals[i] = reg.residuals_mm
        err = reg.fixed_from_moving @ invert(chunk.ct_from_ref[i])  # maps true CT points to where navigation shows them
        vectors[i] = apply(err, tgt_ct) - tgt_ct
    return TrialFigures(fre, residuals, vectors)


def _register_all(chunk: TrialChunk, trial_map: TrialMap | None, chunk_trials: int) -> TrialFigures:
    """:func:`register_trials` on every trial, in chunks through ``trial_map`` when one is given."""
    if trial_map is None:
        return register_trials(chunk)
    n_trials = len(chunk.digitised_ref_mm)
    parts = [TrialChunk(chunk.fiducials_ct_mm, chunk.targets_ct_mm, chunk.digitised_ref_mm[a:a + chunk_trials],
                        chunk.ct_from_ref[a:a + chunk_trials]) for a in range(0, n_trials, chunk_trials)]
    figures = list(trial_map(register_trials, parts))
    if len(figures) != len(parts) or sum(len(f.fre_mm) for f in figures) != n_trials:
        raise RuntimeError(f"trial_map returned {len(figures)} results for {len(parts)} chunks of {n_trials} trials")
    return TrialFigures(np.concatenate([f.fre_mm for f in figures]), np.concatenate([f.residuals_mm for f in figures]),
                        np.concatenate([f.tre_vectors_mm for f in figures]))


def _targets_from_truth(case_dir: Path) -> tuple[list[str], NDArray[np.float64], list[str], NDArray[np.float64]]:
    """Fiducial names, (N, 3) fiducials, target names and (M, 3) targets of a phantom's truth (CT LPS mm)."""
    truth = read_truth(case_dir)
    f_names, f_pts = truth.points("fiducials")
    t_names, t_pts = truth.points("targets")
    p = Case(case_dir).truth_dir / "truth.json"
    if len(f_names) < 3:
        raise InputError(p, f"has {len(f_names)} fiducials; registration needs at least 3")
    if not t_names:
        raise InputError(p, "has no targets (targets_lps_mm) to measure TRE at")
    return f_names, f_pts, t_names, t_pts


def simulate_pivot(
    tracker_noise_mm: float,
    rng: np.random.Generator,
    *,
    tip_in_tool_mm: Sequence[float] = (0.0, 0.0, -150.0),
    n_poses: int = 200,
    cone_deg: float = 30.0,
    method: str = "algebraic",
) -> PivotFigures:
    """Simulate a pivot calibration of the pointer with the tracker noise and solve it.

    The pointer's tip rests at a fixed pivot 1.5 m in front of the camera while the tool tilts
    up to ``cone_deg`` from the vertical and spins freely about its shaft; each pose gets
    isotropic Gaussian translation noise of ``tracker_noise_mm`` per axis (the tracking
    simulator's model). Solved with :func:`orthonav.tracking.calibration.pivot_calibration`.
    """
    tip = np.asarray(tip_in_tool_mm, dtype=np.float64)
    pivot = np.array([20.0, -40.0, -1500.0])
    poses = np.empty((n_poses, 4, 4))
    shaft = tip / np.linalg.norm(tip)
    for i in range(n_poses):
        spin = rotation_about_axis(shaft, rng.uniform(-math.pi, math.pi))
        tilt_axis = np.cross(shaft, rng.normal(size=3))
        tilt = rotation_about_axis(tilt_axis, math.radians(cone_deg) * math.sqrt(rng.uniform()))
        r = tilt @ spin
        poses[i] = make_rigid(r, pivot - r @ tip)
    if tracker_noise_mm > 0:
        poses[:, :3, 3] += rng.normal(0.0, tracker_noise_mm, size=(n_poses, 3))
    res = pivot_calibration(poses, method=method)
    return PivotFigures(res.rms_mm, float(np.linalg.norm(res.tip_in_tool_mm - tip)), res.residuals_mm, n_poses,
                        f"simulated: {n_poses} poses, tracker noise {tracker_noise_mm:g} mm per axis, {method}")


def simulate_validation(
    case_dir: str | Path,
    *,
    fle_mm: float = 0.25,
    tracker_noise_mm: float = 0.0,
    trials: int = 1000,
    seed: int = 0,
    config: ValidationConfig | None = None,
    samples_per_touch: int = DEFAULT_SAMPLES_PER_TOUCH,
    pivot_poses: int = 200,
    trial_map: TrialMap | None = None,
    chunk_trials: int = DEFAULT_CHUNK_TRIALS,
) -> ValidationResult:
    """Monte Carlo accuracy protocol on a phantom case's ground truth (``truth/truth.json``).

    Parameters
    ----------
    case_dir
        A phantom case (``orthonav phantom``) with ``truth/truth.json``.
    fle_mm
        RMS (3D) fiducial localisation error of a touch, mm (isotropic Gaussian,
        ``fle_mm / sqrt(3)`` per axis; Fitzpatrick's assumptions).
    tracker_noise_mm
        Standard deviation per axis of the tracker's position noise on every sample of the
        pointer and of the reference (mm).
    trials
        Independent registrations (each with a new random reference-marker pose).
    seed
        Random seed (the run is reproducible).
    config
        Pass/fail limits (default :class:`ValidationConfig`).
    samples_per_touch
        Tracker samples averaged per touch (a dwell).
    pivot_poses
        Poses of the simulated pivot calibration.
    trial_map
        Spread the registrations: ``trial_map(register_trials, chunks)`` (see :data:`TrialMap`),
        e.g. over a Dask cluster. The random draws are all made here first, in the serial
        order, so the result is identical to the serial run's for the same ``seed``.
    chunk_trials
        Trials per chunk handed to ``trial_map`` (ignored without one).

    Returns
    -------
    ValidationResult
        With the effective FLE ``sqrt(fle^2 + 6 sigma^2 / K)`` (pointer and reference noise,
        averaged over K samples) used for the predictions.
    """
    case = Path(case_dir)
    for name, v in (("fle_mm", fle_mm), ("tracker_noise_mm", tracker_noise_mm)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise InputError(None, f"{name} must be a finite number >= 0, got {v!r}")
    if not (isinstance(trials, int) and trials >= 2):
        raise InputError(None, f"trials must be an integer >= 2, got {trials!r}")
    if not (isinstance(chunk_trials, int) and chunk_trials >= 1):
        raise InputError(None, f"chunk_trials must be an integer >= 1, got {chunk_trials!r}")
    if not (isinstance(samples_per_touch, int) and samples_per_touch >= 1):
        raise InputError(None, f"samples_per_touch must be an integer >= 1, got {samples_per_touch!r}")
    config = config or ValidationConfig()
    f_names, fid_ct, t_names, tgt_ct = _targets_from_truth(case)
    n, m = len(fid_ct), len(tgt_ct)
    rng = np.random.default_rng(seed)

    # The OR set-up of every trial: reference marker pose in the CT, camera pose (both random).
    ct_from_ref = np.array([random_rigid(rng, max_translation_mm=150.0) for _ in range(trials)])  # (T, 4, 4)
    # the phantom 1.5 m in front of the camera in a uniformly random orientation
    tracker_from_phantom = make_rigid(None, (0.0, 0.0, -1500.0))
    tracker_from_ct = np.array([tracker_from_phantom @ random_rigid(rng, max_translation_mm=0.0) for _ in range(trials)])
    tracker_from_ref = tracker_from_ct @ ct_from_ref
    # Touches: true fiducial + FLE (CT frame), seen by the tracker.
    fle = rng.normal(0.0, fle_mm / math.sqrt(3.0), size=(trials, n, 3))
    touch_ct = fid_ct[None] + fle
    touch_tracker = np.einsum("tij,tnj->tni", tracker_from_ct[:, :3, :3], touch_ct) + tracker_from_ct[:, None, :3, 3]
    # K noisy samples of pointer tip and reference origin per touch (translation noise), averaged.
    k = samples_per_touch
    if tracker_noise_mm > 0:
        noise = rng.normal(0.0, tracker_noise_mm, size=(trials, n, k, 2, 3)).mean(axis=2)  # (T, N, 2, 3)
        d_ptr, d_ref = noise[:, :, 0], noise[:, :, 1]
    else:
        d_ptr = d_ref = np.zeros((trials, n, 3))
    rel = touch_tracker + d_ptr - tracker_from_ref[:, None, :3, 3] - d_ref
    digitised_ref = np.einsum("tji,tnj->tni", tracker_from_ref[:, :3, :3], rel)  # R_ref^T (p - t_ref)
    true_ref = np.einsum("tji,tnj->tni", ct_from_ref[:, :3, :3], fid_ct[None] - ct_from_ref[:, None, :3, 3])
    fle_observed = float(np.sqrt(np.mean(np.sum((digitised_ref - true_ref) ** 2, axis=2))))

    figures = _register_all(TrialChunk(fid_ct, tgt_ct, digitised_ref, ct_from_ref), trial_map, chunk_trials)
    fre, residuals, vectors = figures.fre_mm, figures.residuals_mm, figures.tre_vectors_mm

    fle_eff = math.sqrt(fle_mm**2 + 6.0 * tracker_noise_mm**2 / k)
    tip = default_toolset().by_name()["Pointer"].tip_in_tool()
    pivot = simulate_pivot(tracker_noise_mm, np.random.default_rng(seed + 1), tip_in_tool_mm=tip, n_poses=pivot_poses)
    return build_result(
        "simulation",
        case_dir=case,
        source=str(case),
        fiducial_names=f_names,
        fiducials_ct_mm=fid_ct,
        target_names=t_names,
        targets_ct_mm=tgt_ct,
        fle_mm=fle_eff,
        fle_observed_mm=fle_observed,
        fre_mm=fre,
        fiducial_residuals_mm=residuals,
        tre_vectors_mm=vectors,
        pivot=pivot,
        config=config,
        parameters={"trials": trials, "seed": seed, "fle_mm": fle_mm, "tracker_noise_mm": tracker_noise_mm,
                    "samples_per_touch": k, "pivot_poses": pivot_poses, "fiducials": n, "targets": m},
    )


__all__ = ["DEFAULT_CHUNK_TRIALS", "DEFAULT_SAMPLES_PER_TOUCH", "TrialChunk", "TrialFigures", "TrialMap", "register_trials",
           "simulate_pivot", "simulate_validation"]
