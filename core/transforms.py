"""Rigid 4x4 transforms and the one LPS <-> RAS boundary conversion.

Conventions
-----------
* A transform is a ``(4, 4)`` float64 array named ``a_from_b``: it maps homogeneous points
  expressed in frame ``b`` into frame ``a``, so ``ct_from_tool = ct_from_tracker @
  tracker_from_tool``.
* Translations are millimetres. Rotations are proper (det = +1).
* OrthoNav works in the CT's LPS patient frame (ITK/DICOM). 3D Slicer and OpenIGTLink peers
  use RAS; :func:`ras_from_lps_transform` / :func:`lps_from_ras_transform` and the point
  versions below are the only place the two meet.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InputError

#: Diagonal change of basis between LPS and RAS (its own inverse).
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def validate_rigid(matrix: ArrayLike, *, name: str = "transform", tol: float = 1e-6) -> NDArray[np.float64]:
    """Return ``matrix`` as a float64 (4, 4) array after checking it is a proper rigid transform.

    Raises
    ------
    InputError
        If the shape is wrong, a value is not finite, the last row is not ``[0, 0, 0, 1]``,
        the rotation is not orthonormal within ``tol``, or it is a reflection (det = -1).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise InputError(None, f"{name} must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError(None, f"{name} has non-finite values")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise InputError(None, f"{name} last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    r = m[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=tol):
        raise InputError(None, f"{name} rotation part is not orthonormal")
    if np.linalg.det(r) < 0:
        raise InputError(None, f"{name} is a reflection (det = -1), not a rigid transform")
    return m


def make_rigid(rotation: ArrayLike | None = None, translation_mm: ArrayLike | None = None) -> NDArray[np.float64]:
    """Build ``a_from_b`` from a (3, 3) rotation and a (3,) translation in mm."""
    m = np.eye(4)
    if rotation is not None:
        m[:3, :3] = np.asarray(rotation, dtype=np.float64)
    if translation_mm is not None:
        m[:3, 3] = np.asarray(translation_mm, dtype=np.float64)
    return m


def invert(a_from_b: ArrayLike) -> NDArray[np.float64]:
    """Return ``b_from_a`` for a rigid ``a_from_b`` (exact, using R^T)."""
    m = np.asarray(a_from_b, dtype=np.float64)
    out = np.eye(4)
    rt = m[:3, :3].T
    out[:3, :3] = rt
    out[:3, 3] = -rt @ m[:3, 3]
    return out


def compose(*transforms: ArrayLike) -> NDArray[np.float64]:
    """Matrix product left to right: ``compose(a_from_b, b_from_c) -> a_from_c``."""
    out = np.eye(4)
    for t in transforms:
        out = out @ np.asarray(t, dtype=np.float64)
    return out


def apply(a_from_b: ArrayLike, points_b: ArrayLike) -> NDArray[np.float64]:
    """Map (n, 3) or (3,) points from frame b to frame a (mm)."""
    m = np.asarray(a_from_b, dtype=np.float64)
    p = np.asarray(points_b, dtype=np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


def apply_vector(a_from_b: ArrayLike, vectors_b: ArrayLike) -> NDArray[np.float64]:
    """Rotate (n, 3) or (3,) direction vectors from frame b to frame a (no translation)."""
    m = np.asarray(a_from_b, dtype=np.float64)
    return np.asarray(vectors_b, dtype=np.float64) @ m[:3, :3].T


def rotation_about_axis(axis: ArrayLike, angle_rad: float) -> NDArray[np.float64]:
    """(3, 3) rotation by ``angle_rad`` about a unit ``axis`` (Rodrigues' formula)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def rotation_angle_deg(a_from_b: ArrayLike, c_from_d: ArrayLike | None = None) -> float:
    """Angle of the rotation in ``a_from_b`` (or of the rotation between two transforms), degrees."""
    r = np.asarray(a_from_b, dtype=np.float64)[:3, :3]
    if c_from_d is not None:
        r = r.T @ np.asarray(c_from_d, dtype=np.float64)[:3, :3]
    c = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(c)))


def random_rigid(rng: np.random.Generator, *, max_angle_deg: float = 180.0, max_translation_mm: float = 100.0) -> NDArray[np.float64]:
    """A random proper rigid transform (uniform axis, angle up to ``max_angle_deg``)."""
    axis = rng.normal(size=3)
    angle = np.radians(rng.uniform(-max_angle_deg, max_angle_deg))
    t = rng.uniform(-max_translation_mm, max_translation_mm, size=3)
    return make_rigid(rotation_about_axis(axis, angle), t)


# --- The LPS <-> RAS boundary: the only place the two frames meet -------------------------


def ras_from_lps_points(points_lps: ArrayLike) -> NDArray[np.float64]:
    """LPS points (mm) to RAS points (mm): negate x and y."""
    return apply(RAS_FROM_LPS, points_lps)


def lps_from_ras_points(points_ras: ArrayLike) -> NDArray[np.float64]:
    """RAS points (mm) to LPS points (mm): negate x and y."""
    return apply(RAS_FROM_LPS, points_ras)


def ras_from_lps_transform(lps_from_x: ArrayLike) -> NDArray[np.float64]:
    """Re-express a pose whose *output* frame is LPS so that it outputs RAS: ``RAS_FROM_LPS @ T``.

    Only the output (world) frame changes. The input frame ``x`` is a tool, marker or reference
    frame, whose axes are the device's own (NDI ROM file, ArUco board, PLUS calibration): it is
    left untouched, so one tool file (tip offset, saw normal) is right for every source
    (OpenIGTLink, PLUS, NDI, ArUco). ``RAS_FROM_LPS`` has det +1, so the result stays rigid.
    A transform between two *patient* frames would need both ends flipped; OrthoNav sends
    none over the boundary (tool-to-tool transforms such as ``reference_from_tool`` cross it
    unchanged).
    """
    return RAS_FROM_LPS @ np.asarray(lps_from_x, dtype=np.float64)


def lps_from_ras_transform(ras_from_x: ArrayLike) -> NDArray[np.float64]:
    """Inverse of :func:`ras_from_lps_transform`: ``LPS_FROM_RAS @ T`` (the flip is its own inverse)."""
    return RAS_FROM_LPS @ np.asarray(ras_from_x, dtype=np.float64)
