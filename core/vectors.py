"""Small 3-vector helpers shared by every stage (directions in LPS unless a caller says otherwise)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InputError


def unit(v: ArrayLike, what: str = "vector", *, min_norm: float = 1e-9) -> NDArray[np.float64]:
    """``v`` scaled to length 1, as a float64 array of the same shape.

    Raises
    ------
    InputError
        When ``v`` is not finite or shorter than ``min_norm`` (e.g. two landmarks that
        coincide): the message names ``what`` ("... is degenerate (zero length)").
    """
    a = np.asarray(v, dtype=np.float64)
    n = math.sqrt(float(np.dot(a.ravel(), a.ravel())))
    if not math.isfinite(n) or n < min_norm:
        raise InputError(None, f"{what} is degenerate (zero length or not finite): {a.tolist()}")
    return a / n


def perpendicular(v: ArrayLike, axis: ArrayLike) -> NDArray[np.float64]:
    """The component of ``v`` perpendicular to the unit vector ``axis``."""
    a = np.asarray(v, dtype=np.float64)
    n = np.asarray(axis, dtype=np.float64)
    return a - float(np.dot(a, n)) * n


__all__ = ["unit", "perpendicular"]
