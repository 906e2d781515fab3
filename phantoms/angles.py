"""Knee alignment angles from landmarks, exactly as defined in ``docs/anatomy.md``.

Used to compute the phantom's truth angles. The planning stage implements the same
definitions (``orthonav.planning``); a test compares the two.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError
from orthonav.core.vectors import perpendicular, unit


def _angle_deg(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    return float(np.degrees(np.arccos(np.clip(unit(a) @ unit(b), -1.0, 1.0))))


def knee_angles(
    landmarks_lps_mm: Mapping[str, ArrayLike],
    *,
    medial_plateau_ap_tangent_lps: ArrayLike | None = None,
    side: str = "right",
) -> dict[str, float]:
    """hka, ldfa, mpta, slope and femoral_rotation (degrees) from landmark positions.

    Parameters
    ----------
    landmarks_lps_mm
        ``docs/anatomy.md`` keys -> (3,) LPS mm.
    medial_plateau_ap_tangent_lps
        (3,) direction of the medial plateau's antero-posterior tangent, pointing posteriorly.
        ``slope`` is omitted when not given.
    side
        'right' or 'left' (fixes which way is posterior for ``femoral_rotation``).

    Returns
    -------
    dict with keys hka (varus < 180 < valgus), ldfa, mpta, slope (positive when the plateau
    falls posteriorly), femoral_rotation (positive when the posterior condylar line is
    internally rotated relative to the TEA, i.e. the medial posterior condyle is the more
    posterior one; the usual ~3 deg).
    """
    if side not in ("right", "left"):
        raise InputError(None, f"side must be 'right' or 'left', got {side!r}")
    L = {k: np.asarray(v, dtype=np.float64) for k, v in landmarks_lps_mm.items()}
    need = (
        "femoral_head_centre medial_epicondyle lateral_epicondyle femoral_knee_centre distal_medial_condyle "
        "distal_lateral_condyle posterior_medial_condyle posterior_lateral_condyle medial_plateau_centre "
        "lateral_plateau_centre tibial_knee_centre ankle_centre"
    ).split()
    missing = [k for k in need if k not in L]
    if missing:
        raise InputError(None, f"landmarks missing for the knee angles: {', '.join(missing)}")

    u_f = unit(L["femoral_head_centre"] - L["femoral_knee_centre"], "femoral mechanical axis")  # femoral mech axis, proximal
    tea = L["lateral_epicondyle"] - L["medial_epicondyle"]  # medial -> lateral
    n_cor_f = unit(np.cross(u_f, tea))  # normal of the femoral coronal plane
    lat_f = unit(perpendicular(tea, u_f))  # lateral, in the coronal plane, perpendicular to the axis

    # hka: angle between hip->knee and knee->ankle in the femoral coronal plane, signed.
    a = perpendicular(L["femoral_knee_centre"] - L["femoral_head_centre"], n_cor_f)
    b = perpendicular(L["ankle_centre"] - L["tibial_knee_centre"], n_cor_f)
    a_hat = unit(a)
    med = unit(perpendicular(-lat_f, a_hat))
    deviation = np.degrees(np.arctan2(b @ med, b @ a_hat))  # > 0: ankle bends medially = varus
    hka = 180.0 - float(deviation)

    # ldfa: lateral angle between the proximal femoral mech axis and the distal condylar line.
    dcl = perpendicular(L["distal_lateral_condyle"] - L["distal_medial_condyle"], n_cor_f)
    ldfa = _angle_deg(u_f, dcl)

    # mpta: medial angle between the distal tibial mech axis and the plateau line.
    u_t = unit(L["tibial_knee_centre"] - L["ankle_centre"], "tibial mechanical axis")  # tibial mech axis, proximal
    plateau_ml = L["medial_plateau_centre"] - L["lateral_plateau_centre"]  # towards medial
    mpta = _angle_deg(-u_t, perpendicular(plateau_ml, unit(np.cross(u_t, plateau_ml))))

    out = {"hka": hka, "ldfa": ldfa, "mpta": mpta}

    if medial_plateau_ap_tangent_lps is not None:
        ml = unit(perpendicular(plateau_ml, u_t))
        v = perpendicular(np.asarray(medial_plateau_ap_tangent_lps, dtype=np.float64), ml)  # tibial sagittal plane
        out["slope"] = float(np.degrees(np.arcsin(np.clip(-(unit(v) @ u_t), -1.0, 1.0))))

    # femoral_rotation: posterior condylar line vs TEA in the plane perpendicular to u_f.
    e1 = lat_f
    post = unit(np.cross(tea, u_f)) if side == "right" else unit(np.cross(u_f, tea))
    pcl = perpendicular(L["posterior_lateral_condyle"] - L["posterior_medial_condyle"], u_f)
    out["femoral_rotation"] = float(-np.degrees(np.arctan2(pcl @ post, pcl @ e1)))
    return out
