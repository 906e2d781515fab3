"""The accuracy protocol's types: limits (:class:`ValidationConfig`), pass/fail lines
(:class:`Check`), pivot figures and the one result (:class:`ValidationResult`), the checks that
apply the limits, and :func:`build_result`, the one builder of a result for both sources
(simulation and recorded session). All points CT LPS millimetres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from orthonav.core.schema import Versioned, load_model

from .validation_prediction import predicted_fre, predicted_tre_covariance, predicted_tre_percentile

#: Fewest Monte Carlo trials at which "TRE vs prediction" is judged (relative standard error of
#: the RMS ~ 1/sqrt(6T): 1.8 % at 500 trials, small against the 10 % tolerance).
MIN_TRIALS_FOR_PREDICTION_CHECK = 500


class ValidationConfig(Versioned):
    """Pass/fail limits of the accuracy protocol (JSON, versioned).

    A limit set to None is not checked. Distances in mm.
    """

    SCHEMA_VERSION = 1
    max_fre_mm: float | None = Field(default=1.0, description="FRE limit; simulation: applied to the 95th percentile over trials")
    max_tre_p95_mm: float | None = Field(default=2.0, description="95th percentile of TRE over all targets (and trials)")
    max_tre_mm: float | None = Field(default=None, description="largest single TRE")
    max_pivot_rms_mm: float | None = Field(default=0.5, description="pivot calibration RMS residual")
    max_prediction_deviation: float | None = Field(
        default=0.10, description="simulation only: |measured RMS TRE / predicted - 1| at every target"
    )
    min_targets: int = Field(default=3, ge=1, description="session: at least this many targets must have been touched")
    require_pivot: bool = Field(default=False, description="fail when no pivot calibration figure is available")


def load_validation_config(path: str | Path) -> ValidationConfig:
    """Read a :class:`ValidationConfig` JSON file (InputError if missing, SchemaError if invalid)."""
    return load_model(path, ValidationConfig)


@dataclass(frozen=True)
class Check:
    """One pass/fail line of the protocol.

    ``passed`` is None when the figure could not be measured (then ``value`` is NaN).
    """

    name: str
    value: float
    limit: float
    passed: bool | None
    detail: str = ""

    @property
    def verdict(self) -> str:
        """"PASS", "FAIL" or "N/A" (not measured)."""
        return "N/A" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass(frozen=True)
class PivotFigures:
    """Pivot calibration of the pointer.

    Attributes
    ----------
    rms_mm
        RMS of the per-pose tip residuals (mm).
    tip_error_mm
        Distance of the calibrated tip from the true tip (mm); NaN when the truth is unknown.
    residuals_mm
        (n,) per-pose residuals (mm); empty when only the stored RMS is known.
    n_poses
        Poses used (0 when only the stored RMS is known).
    source
        Where the figures come from.
    """

    rms_mm: float
    tip_error_mm: float
    residuals_mm: NDArray[np.float64]
    n_poses: int
    source: str


@dataclass(frozen=True)
class ValidationResult:
    """Everything the accuracy protocol measured (CT LPS mm).

    Attributes
    ----------
    mode
        "simulation" or "session".
    case_dir
        The case the figures belong to (the report goes to ``case_dir/validation/``).
    source
        The phantom case (simulation) or the session folder.
    fiducial_names, fiducials_ct_mm
        (N,) names and (N, 3) CT positions of the registration fiducials.
    target_names, targets_ct_mm
        (M,) names and (M, 3) CT positions of the targets.
    fle_mm
        RMS FLE (3D) used for the predictions: simulation, the FLE plus the averaged tracker
        noise; session, estimated from the FRE (eq. 10).
    fle_observed_mm
        Simulation: RMS of the digitised fiducials' true localisation errors; session: NaN.
    fre_mm
        (T,) FRE of every trial (session: T = 1).
    fiducial_residuals_mm
        (T, N) per-fiducial residuals after registration.
    tre_mm
        (T, M) TRE at every target (NaN where a session did not touch the target).
    tre_vectors_mm
        (T, M, 3) error vectors (registered minus true position, CT LPS mm).
    predicted_tre_mm
        (M,) predicted RMS TRE per target (Fitzpatrick 1998, eq. 46).
    predicted_fre_mm
        Expected RMS FRE, sqrt((1 - 2/N)) * FLE (eq. 10).
    pivot
        Pivot calibration figures, or None when not available.
    checks
        The pass/fail lines evaluated with ``config``.
    config
        The limits used.
    parameters
        Run settings (trials, seed, FLE, tracker noise, ...), for the report.
    """

    mode: str
    case_dir: Path
    source: str
    fiducial_names: tuple[str, ...]
    fiducials_ct_mm: NDArray[np.float64]
    target_names: tuple[str, ...]
    targets_ct_mm: NDArray[np.float64]
    fle_mm: float
    fle_observed_mm: float
    fre_mm: NDArray[np.float64]
    fiducial_residuals_mm: NDArray[np.float64]
    tre_mm: NDArray[np.float64]
    tre_vectors_mm: NDArray[np.float64]
    predicted_tre_mm: NDArray[np.float64]
    predicted_fre_mm: float
    pivot: PivotFigures | None
    checks: tuple[Check, ...]
    config: ValidationConfig
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def trials(self) -> int:
        """Number of registrations measured (simulation: the trials; session: 1)."""
        return int(self.fre_mm.shape[0])

    @property
    def passed(self) -> bool:
        """True when no check failed (a figure that is required but missing is a failed check)."""
        return all(c.passed is not False for c in self.checks)

    def measured_rms_tre_mm(self) -> NDArray[np.float64]:
        """(M,) RMS TRE per target over the trials that measured it (NaN if none)."""
        return _nan_rms(self.tre_mm, axis=0)

    def predicted_tre_p95_mm(self) -> NDArray[np.float64]:
        """(M,) predicted 95th percentile of TRE at each target (Fitzpatrick & West 2001), NaN without an FLE."""
        if not math.isfinite(self.fle_mm):
            return np.full(len(self.target_names), np.nan)
        return predicted_tre_percentile(predicted_tre_covariance(self.fiducials_ct_mm, self.targets_ct_mm, self.fle_mm), 95.0)

    def fre_tre_correlation(self) -> NDArray[np.float64]:
        """(M,) Pearson correlation of FRE and TRE over the trials, per target (NaN below 3 trials).

        Under Fitzpatrick's model FRE and TRE are uncorrelated (Fitzpatrick 2009, "Fiducial
        registration error and target registration error are uncorrelated", Proc. SPIE 7261):
        a small FRE in one registration says nothing about its TRE.
        """
        out = np.full(len(self.target_names), np.nan)
        if self.trials < 3:
            return out
        for j in range(len(self.target_names)):
            ok = np.isfinite(self.tre_mm[:, j])
            if ok.sum() >= 3 and np.std(self.tre_mm[ok, j]) > 0 and np.std(self.fre_mm[ok]) > 0:
                out[j] = float(np.corrcoef(self.fre_mm[ok], self.tre_mm[ok, j])[0, 1])
        return out

    def target_table(self) -> list[dict[str, Any]]:
        """Per-target figures: predicted and measured RMS, mean, p50, p95, max, n (mm), corr(FRE, TRE)."""
        rows = []
        rms = self.measured_rms_tre_mm()
        corr = self.fre_tre_correlation()
        p95_pred = self.predicted_tre_p95_mm()
        for j, name in enumerate(self.target_names):
            v = self.tre_mm[:, j]
            v = v[np.isfinite(v)]
            rows.append({
                "target": name,
                "predicted_rms_mm": float(self.predicted_tre_mm[j]),
                "measured_rms_mm": float(rms[j]),
                "ratio": float(rms[j] / self.predicted_tre_mm[j]) if self.predicted_tre_mm[j] > 0 else math.nan,
                "mean_mm": float(v.mean()) if v.size else math.nan,
                "p50_mm": float(np.percentile(v, 50)) if v.size else math.nan,
                "predicted_p95_mm": float(p95_pred[j]),
                "p95_mm": float(np.percentile(v, 95)) if v.size else math.nan,
                "max_mm": float(v.max()) if v.size else math.nan,
                "n": int(v.size),
                "corr_fre_tre": float(corr[j]),
            })
        return rows


def _nan_rms(a: NDArray[np.float64], axis: int) -> NDArray[np.float64]:
    """RMS along ``axis`` over the finite entries (NaN where there is none)."""
    ok = np.isfinite(a)
    n = ok.sum(axis=axis)
    s = np.where(ok, a, 0.0) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(s.sum(axis=axis) / np.maximum(n, 1)), np.nan)



# --- pass / fail ----------------------------------------------------------------------------------


def evaluate_checks(
    config: ValidationConfig,
    *,
    mode: str,
    fre_mm: NDArray[np.float64],
    tre_mm: NDArray[np.float64],
    predicted_tre_mm: NDArray[np.float64],
    pivot: PivotFigures | None,
) -> tuple[Check, ...]:
    """Apply the limits of ``config`` to the measured figures (see :class:`ValidationConfig`)."""
    checks: list[Check] = []
    fre = np.asarray(fre_mm, dtype=np.float64)
    tre = np.asarray(tre_mm, dtype=np.float64)
    tre_ok = tre[np.isfinite(tre)]
    if config.max_fre_mm is not None:
        if mode == "simulation":
            v, what = float(np.percentile(fre, 95)), "95th percentile over trials"
        else:
            v, what = float(fre[0]), "of the session's registration"
        checks.append(Check("FRE", v, config.max_fre_mm, bool(v <= config.max_fre_mm), what))
    n_targets = int(np.isfinite(tre).any(axis=0).sum())
    if mode == "session":
        checks.append(Check("targets touched", float(n_targets), float(config.min_targets), n_targets >= config.min_targets,
                            f"of {tre.shape[1]} targets"))
    if config.max_tre_p95_mm is not None:
        v = float(np.percentile(tre_ok, 95)) if tre_ok.size else math.nan
        checks.append(Check("TRE p95", v, config.max_tre_p95_mm, None if not tre_ok.size else bool(v <= config.max_tre_p95_mm),
                            f"over {tre_ok.size} target measurements"))
    if config.max_tre_mm is not None:
        v = float(tre_ok.max()) if tre_ok.size else math.nan
        checks.append(Check("TRE max", v, config.max_tre_mm, None if not tre_ok.size else bool(v <= config.max_tre_mm)))
    if config.max_pivot_rms_mm is not None:
        if pivot is None or not math.isfinite(pivot.rms_mm):
            checks.append(Check("pivot RMS", math.nan, config.max_pivot_rms_mm, False if config.require_pivot else None,
                                "no pivot calibration data"))
        else:
            checks.append(Check("pivot RMS", pivot.rms_mm, config.max_pivot_rms_mm, bool(pivot.rms_mm <= config.max_pivot_rms_mm),
                                pivot.source))
    if mode == "simulation" and config.max_prediction_deviation is not None:
        rms = _nan_rms(tre, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            dev = np.abs(rms / np.asarray(predicted_tre_mm, dtype=np.float64) - 1.0)
        worst = float(np.nanmax(dev)) if np.isfinite(dev).any() else math.nan
        n_trials = int(np.isfinite(tre).all(axis=1).sum())
        if n_trials < MIN_TRIALS_FOR_PREDICTION_CHECK:
            # The Monte Carlo RMS of T trials has a relative standard error of about
            # 1/sqrt(6T) (3-D Gaussian errors): at 200 trials ~3 %, so per-target noise alone
            # can exceed a 10 % tolerance over several targets. Not judged below the minimum.
            checks.append(Check("TRE vs Fitzpatrick prediction", worst, config.max_prediction_deviation, None,
                                f"not judged: {n_trials} trials (needs >= {MIN_TRIALS_FOR_PREDICTION_CHECK} for Monte Carlo "
                                "noise to be small against the tolerance)"))
        else:
            checks.append(Check("TRE vs Fitzpatrick prediction", worst, config.max_prediction_deviation,
                                None if not math.isfinite(worst) else bool(worst <= config.max_prediction_deviation),
                                f"largest |measured RMS / predicted - 1| over targets ({n_trials} trials)"))
    return tuple(checks)



def build_result(
    mode: str,
    *,
    case_dir: Path,
    source: str,
    fiducial_names: tuple[str, ...] | list[str],
    fiducials_ct_mm: NDArray[np.float64],
    target_names: tuple[str, ...] | list[str],
    targets_ct_mm: NDArray[np.float64],
    fle_mm: float,
    fre_mm: NDArray[np.float64],
    fiducial_residuals_mm: NDArray[np.float64],
    tre_vectors_mm: NDArray[np.float64],
    pivot: PivotFigures | None,
    config: ValidationConfig,
    parameters: dict[str, Any],
    fle_observed_mm: float = math.nan,
) -> ValidationResult:
    """The one builder of a :class:`ValidationResult`, for a simulation and a session alike.

    From the measured figures it derives what both sources compute the same way: the TRE norms,
    the predicted RMS TRE per target (Fitzpatrick 1998, eq. 46, NaN without a finite FLE), the
    expected FRE (eq. 10) and the pass/fail checks of ``config``.

    Parameters
    ----------
    mode
        "simulation" or "session".
    fle_mm
        RMS FLE (3D, mm) the predictions use (NaN: no prediction).
    fre_mm
        (T,) FRE of every trial (session: T = 1).
    fiducial_residuals_mm
        (T, N) per-fiducial residuals after registration.
    tre_vectors_mm
        (T, M, 3) registered minus true target position (NaN where a target was not measured).

    The other parameters are stored as given (see :class:`ValidationResult`).
    """
    from orthonav.navigation.registration import predict_tre

    fiducials = np.asarray(fiducials_ct_mm, dtype=np.float64)
    targets = np.asarray(targets_ct_mm, dtype=np.float64)
    fre = np.asarray(fre_mm, dtype=np.float64)
    vectors = np.asarray(tre_vectors_mm, dtype=np.float64)
    tre = np.linalg.norm(vectors, axis=2)
    finite_fle = math.isfinite(fle_mm)
    predicted = np.asarray(predict_tre(fiducials, targets, fle_mm) if finite_fle else np.full(len(targets), np.nan),
                           dtype=np.float64)
    checks = evaluate_checks(config, mode=mode, fre_mm=fre, tre_mm=tre, predicted_tre_mm=predicted, pivot=pivot)
    return ValidationResult(
        mode=mode,
        case_dir=Path(case_dir),
        source=source,
        fiducial_names=tuple(fiducial_names),
        fiducials_ct_mm=fiducials,
        target_names=tuple(target_names),
        targets_ct_mm=targets,
        fle_mm=float(fle_mm),
        fle_observed_mm=float(fle_observed_mm),
        fre_mm=fre,
        fiducial_residuals_mm=np.asarray(fiducial_residuals_mm, dtype=np.float64),
        tre_mm=tre,
        tre_vectors_mm=vectors,
        predicted_tre_mm=predicted,
        predicted_fre_mm=predicted_fre(fle_mm, len(fiducials)) if finite_fle else math.nan,
        pivot=pivot,
        checks=checks,
        config=config,
        parameters=parameters,
    )


__all__ = ["MIN_TRIALS_FOR_PREDICTION_CHECK", "ValidationConfig", "load_validation_config", "Check", "PivotFigures",
           "ValidationResult", "evaluate_checks", "build_result"]
