"""Patient registration: paired-point (fiducials), FRE, predicted TRE, ``registration.json``.

Frames: ``ct`` is the CT's LPS patient frame (mm); ``reference`` is the frame of the patient
reference marker fixed to the bone. Navigation uses ``ct_from_reference``, so patient and
tracker motion are compensated (every tool is tracked relative to the reference).

The rigid fit itself is :func:`orthonav.core.procrustes.paired_point` (Arun 1987 / Umeyama
1991). The error model is Fitzpatrick, West & Maurer (1998), "Predicting error in rigid-body
point-based registration", IEEE TMI 17(5):694-702.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field, field_validator

from orthonav.core.errors import InputError, RegistrationError
from orthonav.core.procrustes import paired_point
from orthonav.core.schema import Versioned, load_model, save_model
from orthonav.core.transforms import validate_rigid

Vec3 = tuple[float, float, float]
Matrix4 = list[list[float]]


def _as_points(points: ArrayLike, name: str) -> NDArray[np.float64]:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1 and p.shape == (3,):
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 3:
        raise InputError(None, f"{name} must be an (n, 3) array of points in mm, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise InputError(None, f"{name} has non-finite coordinates")
    return p


def predict_tre(fiducials_mm: ArrayLike, targets_mm: ArrayLike, fle_rms_mm: float) -> NDArray[np.float64]:
    """Expected RMS target registration error at each target for a fiducial configuration.

    Implements Fitzpatrick, West & Maurer (1998), IEEE TMI 17(5), eq. 46::

        <TRE^2(r)> = <FLE^2> / N * (1 + 1/3 * sum_k d_k^2 / f_k^2)

    where N is the number of fiducials, ``d_k`` the distance of the target from the k-th
    principal axis of the fiducial configuration and ``f_k`` the RMS distance of the fiducials
    from that axis. FLE is assumed isotropic, identical and independent for all fiducials.

    Parameters
    ----------
    fiducials_mm
        (n, 3) fiducial positions (mm, any one frame; normally CT LPS), n >= 3, not collinear.
    targets_mm
        (m, 3) or (3,) target positions in the same frame (mm).
    fle_rms_mm
        RMS fiducial localisation error (3D, mm): sqrt(<FLE^2>).

    Returns
    -------
    (m,) float64
        Predicted RMS TRE at each target (mm).
    """
    f = _as_points(fiducials_mm, "fiducials_mm")
    t = _as_points(targets_mm, "targets_mm")
    if not (math.isfinite(fle_rms_mm) and fle_rms_mm >= 0):
        raise InputError(None, f"fle_rms_mm must be a finite non-negative number, got {fle_rms_mm}")
    n = f.shape[0]
    if n < 3:
        raise InputError(None, f"predict_tre needs at least 3 fiducials, got {n}")
    centroid = f.mean(axis=0)
    fc = f - centroid
    # Principal axes of the fiducial configuration (columns of vt.T).
    _u, s, vt = np.linalg.svd(fc, full_matrices=False)
    if s[1] < 1e-6 * max(s[0], 1e-12):
        raise InputError(None, "fiducials are collinear: the TRE about their line is unbounded")
    axes = vt  # (3, 3) rows are unit principal axes
    # Squared distance of a point x from axis k = |x|^2 - (x . a_k)^2.
    fc_sq = np.sum(fc**2, axis=1)  # (n,)
    proj_f = fc @ axes.T  # (n, 3)
    f_k_sq = np.mean(fc_sq[:, None] - proj_f**2, axis=0)  # (3,) RMS^2 distance from each axis
    tc = t - centroid
    proj_t = tc @ axes.T  # (m, 3)
    d_k_sq = np.sum(tc**2, axis=1)[:, None] - proj_t**2  # (m, 3)
    ratio = np.sum(d_k_sq / f_k_sq[None, :], axis=1)
    tre_sq = fle_rms_mm**2 / n * (1.0 + ratio / 3.0)
    return np.sqrt(tre_sq)


def fle_from_fre(fre_mm: float, n_fiducials: int) -> float:
    """Estimate the RMS FLE from an observed FRE: <FRE^2> = (1 - 2/N) <FLE^2> (Fitzpatrick 1998, eq. 10).

    Returns NaN for N <= 2 (undefined).
    """
    if n_fiducials <= 2:
        return math.nan
    return float(fre_mm * math.sqrt(n_fiducials / (n_fiducials - 2.0)))


class RegistrationRecord(Versioned):
    """``registration.json``: how the CT was registered to the patient reference marker."""

    SCHEMA_VERSION = 1
    method: str = Field(description="'paired_point', 'surface_icp' or 'paired_point+surface_icp'")
    ct_from_reference: Matrix4 = Field(description="4x4 rigid, maps reference-marker mm to CT LPS mm")
    fre_mm: float = Field(description="RMS fiducial registration error (mm)")
    residuals_mm: dict[str, float] = Field(default_factory=dict, description="per-point residual (mm)")
    points_ct_mm: dict[str, Vec3] = Field(default_factory=dict, description="registration points in the CT (LPS mm)")
    points_reference_mm: dict[str, Vec3] = Field(default_factory=dict, description="the same points digitised, reference frame (mm)")
    fle_estimate_mm: float | None = Field(description="RMS FLE estimated from the FRE (None when N <= 2)")
    fle_assumed_mm: float | None = Field(default=None, description="FLE used for predicted TRE if given by the caller")
    predicted_tre_mm: dict[str, float] = Field(default_factory=dict, description="target -> predicted RMS TRE (mm)")
    surface: dict[str, float] = Field(default_factory=dict, description="surface refinement figures (rms_mm, inlier_fraction, ...)")
    verification_mm: dict[str, float] = Field(default_factory=dict, description="landmark -> distance of a touched check point (mm)")
    created_utc: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    digitised_host_times_s: dict[str, float] = Field(default_factory=dict, description="monotonic host time (s) of each capture")

    @field_validator("ct_from_reference")
    @classmethod
    def _rigid(cls, v: Matrix4) -> Matrix4:
        try:
            validate_rigid(v, name="ct_from_reference", tol=1e-5)
        except InputError as e:  # pydantic reports ValueError as a validation error (SchemaError)
            raise ValueError(e.problem) from e
        return v

    def ct_from_reference_array(self) -> NDArray[np.float64]:
        return np.asarray(self.ct_from_reference, dtype=np.float64)


@dataclass(frozen=True)
class Registration:
    """The outcome of a registration, ready for navigation and for ``registration.json``."""

    ct_from_reference: NDArray[np.float64]
    record: RegistrationRecord


def register_paired_points(
    names: Sequence[str],
    points_ct_mm: ArrayLike,
    points_reference_mm: ArrayLike,
    *,
    targets_ct_mm: Mapping[str, ArrayLike] | None = None,
    fle_rms_mm: float | None = None,
    max_fre_mm: float | None = None,
    host_times_s: Sequence[float] | None = None,
) -> Registration:
    """Paired-point registration of digitised fiducials to their CT positions.

    Parameters
    ----------
    names
        Fiducial names (n,), e.g. ``fiducial_1``..; keys of the record.
    points_ct_mm
        (n, 3) fiducial positions in the CT (LPS mm), from the plan.
    points_reference_mm
        (n, 3) the same fiducials digitised with the pointer, in the reference frame (mm).
    targets_ct_mm
        Optional name -> (3,) CT points at which to predict TRE.
    fle_rms_mm
        FLE (RMS, mm) to predict TRE with; default: estimated from the FRE.
    max_fre_mm
        Raise RegistrationError if the FRE exceeds this (acceptance limit).
    host_times_s
        Optional capture times (monotonic s), stored in the record.

    Returns
    -------
    Registration
        ``ct_from_reference`` (4, 4) and the record for ``registration.json``.
    """
    names = list(names)
    p_ct = _as_points(points_ct_mm, "points_ct_mm")
    p_ref = _as_points(points_reference_mm, "points_reference_mm")
    if len(names) != len(p_ct) or p_ct.shape != p_ref.shape:
        raise RegistrationError(f"need one name per point pair: {len(names)} names, {p_ct.shape} CT, {p_ref.shape} reference points")
    if len(set(names)) != len(names):
        raise RegistrationError(f"fiducial names are not unique: {names}")
    res = paired_point(p_ct, p_ref)
    if max_fre_mm is not None and res.fre_mm > max_fre_mm:
        worst = names[int(np.argmax(res.residuals_mm))]
        raise RegistrationError(
            f"FRE {res.fre_mm:.2f} mm exceeds the limit {max_fre_mm:.2f} mm (largest residual at {worst}: "
            f"{res.residuals_mm.max():.2f} mm); re-digitise that fiducial"
        )
    n = len(names)
    fle_est = fle_from_fre(res.fre_mm, n)
    fle_used = fle_rms_mm if fle_rms_mm is not None else fle_est
    predicted: dict[str, float] = {}
    if targets_ct_mm:
        t_names = list(targets_ct_mm)
        t_pts = np.array([np.asarray(targets_ct_mm[k], dtype=np.float64) for k in t_names])
        if math.isfinite(fle_used):
            tre = predict_tre(p_ct, t_pts, fle_used)
            predicted = {k: float(v) for k, v in zip(t_names, tre)}
    record = RegistrationRecord(
        method="paired_point",
        ct_from_reference=res.fixed_from_moving.tolist(),
        fre_mm=res.fre_mm,
        residuals_mm={k: float(v) for k, v in zip(names, res.residuals_mm)},
        points_ct_mm={k: tuple(map(float, v)) for k, v in zip(names, p_ct)},
        points_reference_mm={k: tuple(map(float, v)) for k, v in zip(names, p_ref)},
        fle_estimate_mm=fle_est if math.isfinite(fle_est) else None,
        fle_assumed_mm=fle_rms_mm,
        predicted_tre_mm=predicted,
        digitised_host_times_s={k: float(v) for k, v in zip(names, host_times_s)} if host_times_s is not None else {},
    )
    return Registration(ct_from_reference=res.fixed_from_moving, record=record)


def write_registration(path: str | Path, record: RegistrationRecord) -> Path:
    """Atomically write ``registration.json``."""
    return save_model(path, record)


def load_registration(path: str | Path) -> RegistrationRecord:
    """Read ``registration.json`` (clear error if missing, corrupt, newer or not rigid)."""
    return load_model(path, RegistrationRecord)
