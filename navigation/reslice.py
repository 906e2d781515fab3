"""CT reslices through a tool tip: axial, coronal, sagittal and one along the tool (pure numpy/scipy).

A reslice is a square image of side ``size_mm`` centred on a CT point, sampled by trilinear
interpolation (``scipy.ndimage.map_coordinates``, order 1) on the plane spanned by two unit
LPS vectors ``u`` (image columns, left -> right) and ``v`` (image rows, bottom -> top; row 0
of the returned array is the TOP of the picture). Orientation conventions (radiological):

* axial: u = patient left (+x), v = anterior (-y);
* coronal: u = patient left (+x), v = superior (+z);
* sagittal: u = anterior (-y), v = superior (+z);
* along the tool: u = tool axis (handle -> tip), v = the tool's own x axis made perpendicular,
  signed to point superiorly.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from orthonav.core.errors import InputError
from orthonav.core.volume import Volume

ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "sagittal": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
}


def reslice(volume: Volume, centre_lps_mm: ArrayLike, u: ArrayLike, v: ArrayLike, *, size_mm: float = 120.0,
            pixels: int = 160, fill: float = -1000.0) -> NDArray[np.float32]:
    """(pixels, pixels) image of ``volume`` on the plane through ``centre`` spanned by ``u``, ``v``.

    Row 0 is the top (largest ``v``); column 0 the left (smallest ``u``). Outside the volume
    the image is ``fill`` (air for CT).
    """
    c = np.asarray(centre_lps_mm, dtype=np.float64).reshape(3)
    uu = np.asarray(u, dtype=np.float64).reshape(3)
    vv = np.asarray(v, dtype=np.float64).reshape(3)
    if abs(np.linalg.norm(uu) - 1) > 1e-6 or abs(np.linalg.norm(vv) - 1) > 1e-6 or abs(np.dot(uu, vv)) > 1e-6:
        raise InputError(None, "reslice axes u and v must be orthonormal")
    if pixels < 2 or size_mm <= 0:
        raise InputError(None, f"reslice needs pixels >= 2 and size_mm > 0, got {pixels}, {size_mm}")
    s = (np.arange(pixels) - (pixels - 1) / 2.0) * (size_mm / pixels)
    col, row = np.meshgrid(s, -s)  # row 0 = top = +v
    pts = c + col[..., None] * uu + row[..., None] * vv  # (p, p, 3) LPS
    ijk = volume.to_ijk(pts.reshape(-1, 3))
    coords = np.stack([ijk[:, 2], ijk[:, 1], ijk[:, 0]])  # array is [k, j, i]
    out = ndimage.map_coordinates(volume.array_zyx, coords, order=1, mode="constant", cval=fill, prefilter=False)
    return out.reshape(pixels, pixels).astype(np.float32)


def tool_plane_axes(ct_from_tool: ArrayLike, axis_in_tool: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(u, v) for the reslice along a tool: u = tool axis in CT, v = tool x made perpendicular."""
    t = np.asarray(ct_from_tool, dtype=np.float64)
    u = t[:3, :3] @ np.asarray(axis_in_tool, dtype=np.float64)
    u /= np.linalg.norm(u)
    for cand in (t[:3, 0], t[:3, 1], np.array([0.0, 0.0, 1.0])):
        v = cand - np.dot(cand, u) * u
        if np.linalg.norm(v) > 1e-3:
            v = v / np.linalg.norm(v)
            return u, (-v if v[2] < 0 else v)  # superior up where the plane allows
    raise InputError(None, "cannot build a plane along the tool")  # unreachable for a rigid pose


def to_grey(image_hu: NDArray[np.float32], *, level: float = 400.0, window: float = 2000.0) -> NDArray[np.uint8]:
    """Window/level HU to 0..255 grey."""
    lo = level - window / 2
    return np.clip((image_hu - lo) * (255.0 / window), 0, 255).astype(np.uint8)
