"""Predicted target registration error at every vertex of the bone surfaces (issue 17, item 3).

After a paired-point registration the expected RMS TRE at a point depends only on the fiducial
layout, the number of fiducials and the fiducial localisation error (Fitzpatrick, West &
Maurer 1998, IEEE TMI 17(5):694-702, eq. 46; :func:`~orthonav.navigation.registration.predict_tre`):
it is smallest at the fiducials' centroid and grows with the distance from their principal
axes. Evaluated at each vertex of a bone surface it becomes a map that shows the surgeon where
the registration can be trusted.

Every array here is in millimetres in the CT's LPS frame. The map describes the paired-point
(fiducial) stage of a registration: after a surface refinement it is still that stage's
prediction (the formula models paired points only), and :func:`tre_map_title` says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError

from .registration import RegistrationRecord, predict_tre

#: Name of the per-vertex point array holding the map (mm).
TRE_ARRAY = "predicted_tre_mm"


def tre_map(fiducials_ct_mm: ArrayLike, vertices_ct_mm: ArrayLike, fle_rms_mm: float) -> NDArray[np.float64]:
    """Predicted RMS TRE (mm) at each vertex for a fiducial layout and FLE.

    Parameters
    ----------
    fiducials_ct_mm
        (n, 3) fiducial positions, CT LPS mm (n >= 3, not collinear).
    vertices_ct_mm
        (m, 3) surface vertices, CT LPS mm (m may be 0).
    fle_rms_mm
        RMS fiducial localisation error (3D, mm).

    Returns
    -------
    (m,) float64
        Predicted RMS TRE at each vertex (mm), exactly
        :func:`~orthonav.navigation.registration.predict_tre` at those points.
    """
    v = np.asarray(vertices_ct_mm, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(None, f"vertices_ct_mm must be an (m, 3) array of CT LPS mm, got shape {v.shape}")
    if v.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return predict_tre(fiducials_ct_mm, v, fle_rms_mm)


def tre_maps(fiducials_ct_mm: ArrayLike, vertices_ct_mm: Mapping[str, ArrayLike], fle_rms_mm: float) -> dict[str, NDArray[np.float64]]:
    """:func:`tre_map` for each bone: bone name -> (m_bone,) predicted TRE (mm)."""
    return {bone: tre_map(fiducials_ct_mm, v, fle_rms_mm) for bone, v in vertices_ct_mm.items()}


def registration_fle_mm(record: Any) -> float:
    """The FLE (RMS, mm) a registration (a :class:`RegistrationRecord`, or one bone's record of
    it) predicted its TRE with: the caller's assumed FLE when given, else the one estimated from
    the FRE (NaN when neither exists, e.g. N <= 2)."""
    if record.fle_assumed_mm is not None:
        return float(record.fle_assumed_mm)
    return float(record.fle_estimate_mm) if record.fle_estimate_mm is not None else math.nan


def registration_fiducials_mm(record: Any) -> NDArray[np.float64]:
    """(n, 3) CT LPS positions (mm) of the fiducials a registration (or one bone's record) used."""
    return np.array([record.points_ct_mm[k] for k in record.points_ct_mm], dtype=np.float64).reshape(-1, 3)


def registration_tre_maps(record: RegistrationRecord, vertices_ct_mm: Mapping[str, ArrayLike]) -> dict[str, NDArray[np.float64]]:
    """The predicted-TRE map of a registration on each bone's vertices (mm), with the
    registration's own fiducials and FLE (so at a check point it equals the record's
    ``predicted_tre_mm``).

    With one reference array per bone (``record.bones``), each bone's map comes from that
    bone's own registration, and a bone without one (e.g. the fibula beside a registered
    tibia) gets no map: no prediction is made for it.

    Raises
    ------
    InputError
        A registration has fewer than 3 fiducials or no FLE to predict with.
    """
    per_bone = getattr(record, "bones", None) or {}
    out: dict[str, NDArray[np.float64]] = {}
    for bone, v in vertices_ct_mm.items():
        rec = per_bone.get(bone) if per_bone else record
        if rec is None:
            continue
        fle = registration_fle_mm(rec)
        if not math.isfinite(fle):
            raise InputError(None, f"the registration{f' of {bone}' if per_bone else ''} has no FLE (assumed or estimated from the FRE): "
                                   "no TRE can be predicted")
        out[bone] = tre_map(registration_fiducials_mm(rec), v, fle)
    return out


def tre_map_title(record: RegistrationRecord | None = None) -> str:
    """Scalar-bar title of the map, with its unit; after a surface refinement it names the
    fiducial stage, the only one the prediction describes."""
    if record is not None and record.surface_refined:
        return "predicted TRE, fiducial stage (mm)"
    return "predicted TRE (mm)"


def tre_colour_range(maps: Mapping[str, ArrayLike], *, percentile: float = 95.0) -> tuple[float, float]:
    """Colour range (mm) for the maps: from the smallest value rounded down to to the
    ``percentile`` of all values rounded up, on round numbers: the top is 1, 2, 2.5 or 5 x a
    power of ten and the bottom a multiple of a fifth of the top (so five ticks fall on round
    values), so a far-away vertex with a huge prediction does not wash out the region that
    matters and the smallest predictions (never below FLE / sqrt(N)) are not wasted on an empty
    low end. Never an empty range; (0, 1) when there is nothing to show."""
    vals = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps.values()]) if maps else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    top = float(np.percentile(vals, percentile)) if vals.size else 0.0
    if top <= 0.0:
        return 0.0, 1.0
    p = 10.0 ** math.floor(math.log10(top))
    hi = next(step * p for step in (1.0, 2.0, 2.5, 5.0, 10.0) if top <= step * p * (1 + 1e-12))
    tick = hi / 5.0
    lo = math.floor(float(vals.min()) / tick * (1 + 1e-12)) * tick
    return max(0.0, min(lo, hi - tick)), hi


__all__ = ["TRE_ARRAY", "registration_fiducials_mm", "registration_fle_mm", "registration_tre_maps", "tre_colour_range",
           "tre_map", "tre_map_title", "tre_maps"]
