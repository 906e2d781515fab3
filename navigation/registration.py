"""Patient registration: paired-point (fiducials), FRE, predicted TRE, ``registration.json``.

Frames: ``ct`` is the CT's LPS patient frame (mm); ``reference`` is the frame of the patient
reference marker fixed to the bone. Navigation uses ``ct_from_reference``, so patient and
tracker motion are compensated (every tool is tracked relative to the reference).

The rigid fit itself is :func:`orthonav.core.procrustes.paired_point` (Arun 1987 / Umeyama
1991). The error model is Fitzpatrick, West & Maurer (1998), "Predicting error in rigid-body
point-based registration", IEEE TMI 17(5):694-702.

Policy: a registration is refused (:class:`FRELimitExceeded`) when its FRE exceeds a limit,
and (:class:`TRELimitExceeded`) when the TRE predicted at the targets exceeds a limit: a
near-collinear or clustered fiducial configuration amplifies the localisation error far
from the fiducials even when the FRE is small, so a small FRE alone proves nothing there.

Two stages: ``fre_mm``, ``residuals_mm`` and ``predicted_tre_mm`` of a record always describe
the paired-point (fiducial) stage, whose transform is ``fiducial_ct_from_reference``. After a
surface refinement (:func:`with_surface_stage`, method ``paired_point+surface_icp``)
``ct_from_reference`` is the ICP result; its own figures are in ``surface``. No Fitzpatrick TRE
is claimed for the ICP result (the formula models paired points only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from orthonav.core.errors import InputError, RegistrationError
from orthonav.core.procrustes import paired_point
from orthonav.core.schema import Versioned, load_model, save_model
from orthonav.core.transforms import apply, validate_rigid

Vec3 = tuple[float, float, float]
Matrix4 = list[list[float]]

PAIRED_POINT = "paired_point"
PAIRED_POINT_SURFACE = "paired_point+surface_icp"


class FRELimitExceeded(RegistrationError):
    """The FRE exceeds the acceptance limit; ``worst`` names the fiducial with the largest residual."""

    def __init__(self, message: str, worst: str) -> None:
        super().__init__(message)
        self.worst = worst


class TRELimitExceeded(RegistrationError):
    """The predicted TRE at a target exceeds the acceptance limit (the fiducial configuration
    amplifies FLE too much there); ``worst`` names that target. Re-touching a fiducial does
    not help: more or better-spread fiducials do."""

    def __init__(self, message: str, worst: str) -> None:
        super().__init__(message)
        self.worst = worst


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


class RegistrationFields(BaseModel):
    """The figures of one registration (one reference array): the fields of ``registration.json``
    and of each of its per-bone records (:class:`BoneRegistrationRecord`)."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="what produced ct_from_reference: 'paired_point' or 'paired_point+surface_icp'")
    ct_from_reference: Matrix4 = Field(description="4x4 rigid, maps reference-marker mm to CT LPS mm: the registration in force")
    fre_mm: float = Field(description="fiducial stage: RMS residual of the paired-point fit (FRE, mm)")
    residuals_mm: dict[str, float] = Field(default_factory=dict, description="fiducial stage: per-fiducial residual of the paired-point fit (mm)")
    points_ct_mm: dict[str, Vec3] = Field(default_factory=dict, description="registration points in the CT (LPS mm)")
    points_reference_mm: dict[str, Vec3] = Field(default_factory=dict, description="the same points digitised, reference frame (mm)")
    fle_estimate_mm: float | None = Field(description="RMS FLE estimated from the FRE (None when N <= 2)")
    fle_assumed_mm: float | None = Field(default=None, description="FLE used for predicted TRE if given by the caller")
    predicted_tre_mm: dict[str, float] = Field(
        default_factory=dict,
        description="fiducial stage: target -> RMS TRE predicted for the paired-point fit (Fitzpatrick 1998, mm); "
                    "not a prediction for a surface-refined ct_from_reference")
    fiducial_ct_from_reference: Matrix4 | None = Field(
        default=None, description="the paired-point stage's transform, which fre_mm / residuals_mm / predicted_tre_mm describe")
    surface: dict[str, float] = Field(
        default_factory=dict,
        description="surface (ICP) stage: rms_mm (inlier point-to-plane RMS), inlier_fraction, constraint (confidence, "
                    "sqrt(lambda_min/lambda_max); near 0 = a motion left unconstrained), iterations, n_points, converged, "
                    "fiducial_rms_mm (RMS distance of the digitised fiducials from their CT positions under ct_from_reference)")
    surface_fiducial_distances_mm: dict[str, float] = Field(
        default_factory=dict, description="surface stage: each digitised fiducial's distance from its CT position under ct_from_reference (mm)")
    accuracy_note: str = Field(default="", description="which figures describe ct_from_reference")
    verification_mm: dict[str, float] = Field(default_factory=dict, description="landmark -> distance of a touched check point (mm)")
    created_utc: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    digitised_host_times_s: dict[str, float] = Field(default_factory=dict, description="monotonic host time (s) of each capture")

    @field_validator("ct_from_reference", "fiducial_ct_from_reference")
    @classmethod
    def _rigid(cls, v: Matrix4 | None, info: ValidationInfo) -> Matrix4 | None:
        if v is None:
            return None
        try:
            validate_rigid(v, name=info.field_name or "transform", tol=1e-5)
        except InputError as e:  # pydantic reports ValueError as a validation error (SchemaError)
            raise ValueError(e.problem) from e
        return v

    def ct_from_reference_array(self) -> NDArray[np.float64]:
        return np.asarray(self.ct_from_reference, dtype=np.float64)

    @property
    def surface_refined(self) -> bool:
        """Whether ``ct_from_reference`` is a surface refinement (fre_mm / predicted TRE then describe the fiducial stage only)."""
        return self.method != PAIRED_POINT


class BoneRegistrationRecord(RegistrationFields):
    """One bone's registration to its own reference array (one array per bone): the fields of
    :class:`RegistrationFields`, where "reference" is that bone's array (``ct_from_reference`` is
    ``ct_from_<bone>ref``), plus the array's tool name."""

    reference: str = Field(description="the reference tool fixed to this bone (e.g. 'FemurRef')")


class RegistrationRecord(Versioned, RegistrationFields):
    """``registration.json``: how the CT was registered to the patient reference marker(s).

    Version 2: ``fre_mm`` / ``residuals_mm`` / ``predicted_tre_mm`` are always the fiducial
    stage's (in version 1 a surface-refined record held the fiducials' distances under the
    refined transform in ``fre_mm``); ``fiducial_ct_from_reference``, ``surface_fiducial_distances_mm``
    and ``accuracy_note`` are new.

    Version 3: ``bones`` holds one record per bone when each bone has its own reference array
    (bone -> :class:`BoneRegistrationRecord`, in tool-set order); the top-level fields are then
    a copy of the first registered bone's record (``reference`` names its array), so a reader
    of one registration still reads a valid one. Each bone's ``verification_mm`` holds the
    check touches measured with that bone's registration. A one-array run writes ``bones`` empty and
    ``reference`` "" (the top level is its registration, as in version 2). A version-2 file
    reads as a one-array record.
    """

    SCHEMA_VERSION = 3
    reference: str = Field(default="", description="one array per bone: the reference tool the top-level fields describe")
    bones: dict[str, BoneRegistrationRecord] = Field(
        default_factory=dict, description="one array per bone: bone -> that bone's registration to its own array")

    def bone_records(self) -> dict[str, RegistrationFields]:
        """Bone -> registration: ``bones``, or for a one-array record ``{"": self}``."""
        return dict(self.bones) if self.bones else {"": self}


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
    max_predicted_tre_mm: float | None = None,
    policy_min_fle_mm: float = 0.0,
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
        Raise :class:`FRELimitExceeded` if the FRE exceeds this (acceptance limit).
    max_predicted_tre_mm
        Raise :class:`TRELimitExceeded` if the TRE predicted at any target exceeds this (mm).
        The check uses FLE = max(the FLE above, ``policy_min_fle_mm``): an FLE estimated from
        one registration's FRE can be small by chance (zero without noise), which must not
        switch the check off for exactly the configurations that amplify error. Needs targets;
        without them only the FRE is checked. Exactly collinear fiducials are always refused.
    policy_min_fle_mm
        Floor of the FLE used by the TRE check (mm).
    host_times_s
        Optional capture times (monotonic s), stored in the record.

    Returns
    -------
    Registration
        ``ct_from_reference`` (4, 4) and the record for ``registration.json``.

    Raises
    ------
    RegistrationError
        Mismatched or degenerate input (e.g. collinear fiducials); its subclasses
        :class:`FRELimitExceeded` and :class:`TRELimitExceeded` for the acceptance limits.
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
        raise FRELimitExceeded(
            f"FRE {res.fre_mm:.2f} mm exceeds the limit {max_fre_mm:.2f} mm (largest residual at {worst}: "
            f"{res.residuals_mm.max():.2f} mm); re-digitise that fiducial", worst)
    n = len(names)
    fle_est = fle_from_fre(res.fre_mm, n)
    fle_used = fle_rms_mm if fle_rms_mm is not None else fle_est
    predicted: dict[str, float] = {}
    if targets_ct_mm:
        t_names = list(targets_ct_mm)
        t_pts = np.array([np.asarray(targets_ct_mm[k], dtype=np.float64) for k in t_names]).reshape(-1, 3)
        try:
            if math.isfinite(fle_used):
                tre = predict_tre(p_ct, t_pts, fle_used)
                predicted = {k: float(v) for k, v in zip(t_names, tre)}
            if max_predicted_tre_mm is not None:
                fle_policy = max(fle_used if math.isfinite(fle_used) else 0.0, policy_min_fle_mm)
                tre_policy = predict_tre(p_ct, t_pts, fle_policy)
        except InputError as e:  # e.g. collinear CT fiducials: the TRE about their line is unbounded
            raise TRELimitExceeded(f"fiducials {', '.join(names)}: {e.problem}", t_names[0]) from e
        if max_predicted_tre_mm is not None and float(tre_policy.max()) > max_predicted_tre_mm:
            k = int(np.argmax(tre_policy))
            raise TRELimitExceeded(
                f"predicted TRE {tre_policy[k]:.2f} mm at {t_names[k]} exceeds the limit {max_predicted_tre_mm:.2f} mm "
                f"(FLE {fle_policy:.2f} mm, FRE {res.fre_mm:.2f} mm over {n} fiducials; {describe_configuration(p_ct)}): "
                f"the fiducial layout amplifies localisation error there; use more fiducials spread around the targets",
                t_names[k])
    t_fid = res.fixed_from_moving.tolist()
    record = RegistrationRecord(
        method=PAIRED_POINT,
        ct_from_reference=t_fid,
        fre_mm=res.fre_mm,
        residuals_mm={k: float(v) for k, v in zip(names, res.residuals_mm)},
        points_ct_mm={k: tuple(map(float, v)) for k, v in zip(names, p_ct)},
        points_reference_mm={k: tuple(map(float, v)) for k, v in zip(names, p_ref)},
        fle_estimate_mm=fle_est if math.isfinite(fle_est) else None,
        fle_assumed_mm=fle_rms_mm,
        predicted_tre_mm=predicted,
        fiducial_ct_from_reference=t_fid,
        accuracy_note="paired-point registration: fre_mm and predicted_tre_mm (Fitzpatrick 1998) describe ct_from_reference",
        digitised_host_times_s={k: float(v) for k, v in zip(names, host_times_s)} if host_times_s is not None else {},
    )
    return Registration(ct_from_reference=res.fixed_from_moving, record=record)


def describe_configuration(fiducials_mm: ArrayLike) -> str:
    """A short description of a fiducial layout's spread: RMS distance from the centroid along
    its principal axes (mm), e.g. ``"spread 61.2 / 1.4 / 0.3 mm: nearly collinear"``."""
    f = _as_points(fiducials_mm, "fiducials_mm")
    s = np.linalg.svd(f - f.mean(axis=0), compute_uv=False) / math.sqrt(len(f))
    s = np.pad(s, (0, 3 - len(s)))
    text = f"spread {s[0]:.1f} / {s[1]:.1f} / {s[2]:.1f} mm"
    if s[1] < 0.1 * s[0]:
        text += ": nearly collinear"
    elif s[0] < 20.0:
        text += ": clustered"
    return text


def with_surface_stage(fiducial: Registration, refined: Registration) -> Registration:
    """The registration in force after a surface refinement of a paired-point registration.

    ``ct_from_reference`` and the surface figures come from ``refined`` (the result of
    :func:`~orthonav.navigation.surface.refine_registration`); the fiducial stage's FRE,
    residuals, FLE and predicted TRE are kept as they were, labelled as that stage's
    (``fiducial_ct_from_reference``), and the digitised fiducials' distances under the refined
    transform go to ``surface_fiducial_distances_mm`` and ``surface['fiducial_rms_mm']``. No
    Fitzpatrick TRE is claimed for the ICP result.

    Raises
    ------
    RegistrationError
        ``fiducial`` is not a paired-point registration, or ``refined`` has no surface figures.
    """
    rec = fiducial.record
    if rec.method != PAIRED_POINT:
        raise RegistrationError(f"surface refinement starts from a paired-point registration, got method '{rec.method}'")
    figures = dict(refined.record.surface)
    missing = {"rms_mm", "inlier_fraction", "constraint"} - set(figures)
    if missing:
        raise RegistrationError(f"the surface refinement reported no {', '.join(sorted(missing))}")
    try:
        t = validate_rigid(refined.ct_from_reference, name="refined ct_from_reference", tol=1e-5)
    except InputError as e:
        raise RegistrationError(e.problem) from e
    names = list(rec.points_ct_mm)
    p_ct = np.array([rec.points_ct_mm[k] for k in names], dtype=np.float64).reshape(-1, 3)
    p_ref = np.array([rec.points_reference_mm[k] for k in names], dtype=np.float64).reshape(-1, 3)
    dist = np.linalg.norm(apply(t, p_ref) - p_ct, axis=1)
    figures["fiducial_rms_mm"] = float(np.sqrt(np.mean(dist**2))) if dist.size else math.nan
    new = rec.model_copy(update={
        "method": PAIRED_POINT_SURFACE,
        "ct_from_reference": t.tolist(),
        "fiducial_ct_from_reference": fiducial.ct_from_reference.tolist(),
        "surface": figures,
        "surface_fiducial_distances_mm": {k: float(v) for k, v in zip(names, dist)},
        "accuracy_note": "ct_from_reference is the surface (ICP) refinement: its figures are in 'surface' (no predicted TRE "
                         "exists for it; check it with verification touches). fre_mm, residuals_mm and predicted_tre_mm "
                         "describe the paired-point stage (fiducial_ct_from_reference) only.",
    })
    return Registration(ct_from_reference=t.copy(), record=new)


def per_bone_registration(registrations: Mapping[str, Registration], references: Mapping[str, str]) -> Registration:
    """One ``registration.json`` record for several bones each registered to its own array.

    Parameters
    ----------
    registrations
        Bone -> its registration (``ct_from_<bone>ref``; made by :func:`register_paired_points`,
        possibly refined by :func:`with_surface_stage`), in the order to record (tool-set order).
    references
        Bone -> the reference tool fixed to it.

    Returns
    -------
    Registration
        ``ct_from_reference`` and the top-level record fields are the first bone's (``reference``
        names its array); ``record.bones`` holds every bone's record (schema version 3).

    Raises
    ------
    RegistrationError
        No registration, or a bone with no reference array.
    """
    if not registrations:
        raise RegistrationError("no bone is registered")
    bones: dict[str, BoneRegistrationRecord] = {}
    for bone, reg in registrations.items():
        if bone not in references:
            raise RegistrationError(f"no reference array is fixed to {bone!r}")
        fields = reg.record.model_dump(exclude={"schema_version", "bones", "reference"})
        bones[bone] = BoneRegistrationRecord(reference=references[bone], **fields)
    first = next(iter(registrations))
    top = registrations[first]
    record = top.record.model_copy(update={"reference": references[first], "bones": bones})
    return Registration(ct_from_reference=top.ct_from_reference.copy(), record=record)


def bone_registration(record: RegistrationRecord, bone: str) -> Registration:
    """The registration of ``bone`` in a version-3 per-bone record, as a :class:`Registration`
    (its record is a one-array record of that bone's figures).

    Raises
    ------
    RegistrationError
        The record has no registration of ``bone``.
    """
    rec = record.bones.get(bone)
    if rec is None:
        raise RegistrationError(f"the registration has no record of {bone!r} (bones: {', '.join(record.bones) or 'none'})")
    one = RegistrationRecord(**rec.model_dump(exclude={"reference"}))
    return Registration(ct_from_reference=one.ct_from_reference_array(), record=one)


def write_registration(path: str | Path, record: RegistrationRecord) -> Path:
    """Atomically write ``registration.json``."""
    return save_model(path, record)


def load_registration(path: str | Path) -> RegistrationRecord:
    """Read ``registration.json`` (clear error if missing, corrupt, newer or not rigid)."""
    return load_model(path, RegistrationRecord)
