"""Plain-float 3-vector maths for the live navigation loop.

A navigation state is a few dozen dot products on 3-vectors and 4x4 matrices. numpy costs
~1 us of call overhead per operation on arrays that small, more than the arithmetic, so the
per-frame path (:mod:`orthonav.navigation.guidance`, :mod:`orthonav.navigation.state`) works on
float triples and on the pose as nested lists (``m.tolist()``). This is intentionally a fast
plain-float twin of :mod:`orthonav.core.vectors`; use that one outside the 1 kHz loop.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from orthonav.core.errors import InputError

Vec3 = tuple[float, float, float]
Rows = list[list[float]]  #: a (4, 4) rigid transform as nested lists, ``m.tolist()``


def vec3(v: ArrayLike) -> Vec3:
    """A 3-vector (any array-like of 3 numbers) as a tuple of Python floats."""
    a = np.asarray(v, dtype=np.float64).reshape(3)
    return (float(a[0]), float(a[1]), float(a[2]))


def dot(a: Vec3, b: Vec3) -> float:
    """The dot product of two float triples."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def rotate(m: Rows, v: Vec3) -> Vec3:
    """R v for the rotation of ``m`` (rows of a 4x4): a direction mapped by the transform."""
    r0, r1, r2 = m[0], m[1], m[2]
    return (r0[0] * v[0] + r0[1] * v[1] + r0[2] * v[2], r1[0] * v[0] + r1[1] * v[1] + r1[2] * v[2],
            r2[0] * v[0] + r2[1] * v[1] + r2[2] * v[2])


def transform(m: Rows, p: Vec3) -> Vec3:
    """R p + t for the rigid transform ``m`` (rows of a 4x4): a point mapped by the transform (mm)."""
    r0, r1, r2 = m[0], m[1], m[2]
    return (r0[0] * p[0] + r0[1] * p[1] + r0[2] * p[2] + r0[3], r1[0] * p[0] + r1[1] * p[1] + r1[2] * p[2] + r1[3],
            r2[0] * p[0] + r2[1] * p[1] + r2[2] * p[2] + r2[3])


def rows(t: ArrayLike) -> Rows:
    """A (4, 4) transform as nested lists of floats; InputError for any other shape."""
    m = np.asarray(t, dtype=np.float64)
    if m.shape != (4, 4):
        raise InputError(None, f"a tool pose must be 4x4, got shape {m.shape}")
    return m.tolist()


__all__ = ["Rows", "Vec3", "dot", "rotate", "rows", "transform", "vec3"]
