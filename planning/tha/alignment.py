"""The anterior pelvic plane (APP) and the acetabular / cup angles relative to it (hip, THA).

Definitions: docs/anatomy.md ("Hip"); radiographic inclination / anteversion of Murray
(1993), J Bone Joint Surg Br 75(2):228-232, relative to the APP (Lewinnek 1978). All
positions are LPS mm in the CT frame; directions are LPS unit vectors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray
from orthonav.core.errors import InputError
from orthonav.core.vectors import unit

from ..landmarks import position
from ..schema import Landmark

Vec = NDArray[np.float64]

#: Sign of LPS x towards each side (patient left = +x).
SIDES = {"left": 1.0, "right": -1.0}


def app_frame(landmarks: Mapping[str, Landmark | ArrayLike]) -> tuple[Vec, Vec, Vec]:
    """Unit (medio-lateral towards the patient's left, anterior, superior) axes of the APP
    (docs/anatomy.md): through ``asis_left``, ``asis_right`` and the pubic tubercle midpoint."""
    missing = [k for k in ("asis_left", "asis_right", "pubic_tubercle_left", "pubic_tubercle_right") if k not in landmarks]
    if missing:
        raise InputError(None, f"the anterior pelvic plane needs landmarks {', '.join(missing)}")
    al, ar = position(landmarks["asis_left"]), position(landmarks["asis_right"])
    mid = 0.5 * (position(landmarks["pubic_tubercle_left"]) + position(landmarks["pubic_tubercle_right"]))
    ml = unit(al - ar, "ASIS line")
    ant = unit(np.cross(mid - 0.5 * (al + ar), ml), "anterior pelvic plane normal")
    return ml, ant, unit(np.cross(ant, ml))


def acetabular_angles(axis_lps: ArrayLike, side: str, app: tuple[Vec, Vec, Vec]) -> tuple[float, float]:
    """Radiographic (inclination, anteversion) in degrees of an acetabular / cup axis (unit,
    pointing out of the opening) relative to the APP (Murray 1993; docs/anatomy.md)."""
    if side not in SIDES:
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    ml, ant, sup = app
    a = unit(np.asarray(axis_lps, dtype=np.float64), "acetabular axis")
    lat = SIDES[side] * ml
    return float(np.degrees(np.arctan2(a @ lat, -(a @ sup)))), float(np.degrees(np.arcsin(np.clip(a @ ant, -1.0, 1.0))))


def cup_axis(inclination_deg: float, anteversion_deg: float, side: str, app: tuple[Vec, Vec, Vec]) -> Vec:
    """The unit cup axis (out of the opening) with the given radiographic inclination and
    anteversion relative to the APP (the inverse of :func:`acetabular_angles`)."""
    if not (0.0 <= inclination_deg <= 90.0 and -45.0 <= anteversion_deg <= 60.0):
        raise InputError(None, f"cup target must have inclination in [0, 90] and anteversion in [-45, 60] deg, got {inclination_deg}, {anteversion_deg}")
    ml, ant, sup = app
    ri, ra = np.radians(inclination_deg), np.radians(anteversion_deg)
    return np.sin(ra) * ant + np.cos(ra) * (np.sin(ri) * SIDES[side] * ml - np.cos(ri) * sup)


__all__ = ["SIDES", "acetabular_angles", "app_frame", "cup_axis"]
