"""The accuracy protocol (``orthonav validate``): FRE, TRE, predicted TRE and calibration error.

Two sources of numbers, one result type (:class:`ValidationResult`, built by
:func:`~orthonav.phantoms.validation_result.build_result` for both):

* :func:`simulate_validation` (:mod:`~orthonav.phantoms.validation_simulate`) — Monte Carlo on
  a phantom case's ground truth: every trial digitises the true fiducials with a fiducial
  localisation error (FLE) and tracker noise averaged over a dwell, registers them to the CT
  and measures the true registration error at every truth target; a pivot calibration is
  simulated with the same tracker noise.
* :func:`validate_session` (:mod:`~orthonav.phantoms.validation_session`) — a recorded
  navigation session (real or simulated tracker): FRE from its ``registration.json``, TRE from
  the pointer dwells after registration (replayed through the live workflow), pivot RMS from
  ``pivot.jsonl`` or the tool file.

Predicted TRE is Fitzpatrick, West & Maurer (1998), IEEE TMI 17(5), eq. 46
(:func:`orthonav.navigation.registration.predict_tre`); the expected FRE is their eq. 10
(:mod:`~orthonav.phantoms.validation_prediction`). Pass/fail limits come from
:class:`ValidationConfig`. The report (HTML, plots, CSV, JSON in a new folder of
``CASE/validation/`` per run, so no run overwrites another) is
:mod:`~orthonav.phantoms.validation_report`. All points are CT LPS millimetres.

This module names the protocol's public API and runs it end to end (:func:`validate_and_report`);
the command line's summary text is :mod:`orthonav.cli.validate`.
"""

from __future__ import annotations

from pathlib import Path

from orthonav.core.errors import InputError

from .validation_prediction import predicted_fre, predicted_tre_covariance, predicted_tre_percentile
from .validation_report import new_validation_dir, write_validation_report
from .validation_result import (
    MIN_TRIALS_FOR_PREDICTION_CHECK,
    Check,
    PivotFigures,
    ValidationConfig,
    ValidationResult,
    build_result,
    evaluate_checks,
    load_validation_config,
)
from .validation_session import validate_session
from .validation_simulate import DEFAULT_SAMPLES_PER_TOUCH, simulate_pivot, simulate_validation


def validate_and_report(
    *,
    session: str | Path | None = None,
    simulate: str | Path | None = None,
    fle_mm: float = 0.25,
    trials: int = 1000,
    tracker_noise_mm: float = 0.0,
    seed: int = 0,
    config: str | Path | None = None,
) -> tuple[ValidationResult, Path]:
    """Run the accuracy protocol and write its report: what ``orthonav validate`` runs.

    Each call writes a new folder, never an earlier run's: ``CASE/validation/<session timestamp>/``
    for a session, ``CASE/validation/simulated-<UTC time>/`` for a simulation (see
    :func:`~orthonav.phantoms.validation_report.new_validation_dir`).

    Parameters
    ----------
    session
        A recorded session folder (``CASE/sessions/<timestamp>``), or
    simulate
        a phantom case to validate by simulation (exactly one of the two).
    fle_mm, trials, tracker_noise_mm, seed
        Simulation settings (see :func:`simulate_validation`): RMS FLE (mm), trials, tracker
        noise per axis (mm), random seed.
    config
        An optional :class:`ValidationConfig` JSON file (pass/fail limits).

    Returns
    -------
    tuple[ValidationResult, Path]
        The result (``result.passed`` for an exit code) and the path of the run's ``report.html``
        (its folder holds the CSV and JSON files).

    Raises
    ------
    InputError
        Neither or both of ``session`` and ``simulate``, or bad input to either protocol.
    """
    if (session is None) == (simulate is None):
        raise InputError(None, "give either a recorded SESSION folder or --simulate CASE (not both, not neither)")
    cfg = load_validation_config(config) if config is not None else None
    if simulate is not None:
        result = simulate_validation(simulate, fle_mm=fle_mm, tracker_noise_mm=tracker_noise_mm, trials=trials, seed=seed, config=cfg)
    else:
        result = validate_session(session, config=cfg)  # type: ignore[arg-type]
    return result, write_validation_report(result, result.case_dir)


__all__ = [
    "DEFAULT_SAMPLES_PER_TOUCH",
    "MIN_TRIALS_FOR_PREDICTION_CHECK",
    "ValidationConfig",
    "load_validation_config",
    "Check",
    "PivotFigures",
    "ValidationResult",
    "build_result",
    "evaluate_checks",
    "predicted_fre",
    "predicted_tre_covariance",
    "predicted_tre_percentile",
    "simulate_pivot",
    "simulate_validation",
    "validate_session",
    "new_validation_dir",
    "write_validation_report",
    "validate_and_report",
]
