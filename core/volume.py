"""A CT volume or label map with its voxel-to-LPS geometry, and its file I/O.

Voxel arrays are indexed ``[k, j, i]`` (``volume_zyx``, as SimpleITK's ``GetArrayFromImage``).
``lps_from_ijk`` maps continuous voxel indices ``(i, j, k)`` to LPS millimetres:
``p_lps = origin + direction @ (spacing * ijk)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from .atomic import write_with
from .errors import InputError
from .transforms import apply

#: File endings OrthoNav reads as a single volume (DICOM series are imported separately).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Volume:
    """Voxels plus geometry.

    Attributes
    ----------
    array_zyx
        Voxel values, shape (nk, nj, ni). CT in Hounsfield units (int16), labels uint8/uint16.
    lps_from_ijk
        (4, 4) affine from voxel index (i, j, k) to LPS mm (rotation times spacing, origin).
    """

    array_zyx: NDArray
    lps_from_ijk: NDArray[np.float64]

    @property
    def spacing_mm(self) -> NDArray[np.float64]:
        """Voxel size along i, j, k (mm)."""
        return np.linalg.norm(self.lps_from_ijk[:3, :3], axis=0)

    @property
    def direction(self) -> NDArray[np.float64]:
        """(3, 3) direction cosines; column c is the LPS direction of index axis c."""
        return self.lps_from_ijk[:3, :3] / self.spacing_mm

    @property
    def origin_lps(self) -> NDArray[np.float64]:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.lps_from_ijk[:3, 3].copy()

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Voxel counts along i, j, k."""
        nk, nj, ni = self.array_zyx.shape
        return (ni, nj, nk)

    def ijk_from_lps(self) -> NDArray[np.float64]:
        """(4, 4) inverse of ``lps_from_ijk`` (general affine inverse)."""
        return np.linalg.inv(self.lps_from_ijk)

    def to_lps(self, ijk: ArrayLike) -> NDArray[np.float64]:
        """Voxel indices (n, 3) as (i, j, k) to LPS mm."""
        return apply(self.lps_from_ijk, ijk)

    def to_ijk(self, points_lps: ArrayLike) -> NDArray[np.float64]:
        """LPS mm (n, 3) to continuous voxel indices (i, j, k)."""
        return apply(self.ijk_from_lps(), points_lps)

    def with_array(self, array_zyx: NDArray) -> "Volume":
        """Same geometry, new voxels (shape must match)."""
        if array_zyx.shape != self.array_zyx.shape:
            raise ValueError(f"shape {array_zyx.shape} differs from {self.array_zyx.shape}")
        return Volume(array_zyx, self.lps_from_ijk.copy())


def make_lps_from_ijk(spacing_mm: ArrayLike, origin_lps: ArrayLike, direction: ArrayLike | None = None) -> NDArray[np.float64]:
    """Build ``lps_from_ijk`` from spacing (3,), origin (3,) and a (3, 3) direction matrix."""
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d @ np.diag(np.asarray(spacing_mm, dtype=np.float64))
    m[:3, 3] = np.asarray(origin_lps, dtype=np.float64)
    return m


def from_sitk(image: sitk.Image) -> Volume:
    """Convert a 3D SimpleITK image (LPS geometry) to a :class:`Volume`."""
    if image.GetDimension() != 3:
        raise InputError(None, f"expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(None, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    m = make_lps_from_ijk(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return Volume(sitk.GetArrayFromImage(image), m)


def to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` to a SimpleITK image with the same geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array_zyx))
    image.SetSpacing([float(x) for x in volume.spacing_mm])
    image.SetOrigin([float(x) for x in volume.origin_lps])
    image.SetDirection([float(x) for x in volume.direction.ravel()])
    return image


def _has_volume_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI / NRRD / MetaImage volume into LPS geometry.

    Raises
    ------
    InputError
        Missing file, unsupported ending, unreadable content, or not a 3D scalar image.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a folder; DICOM folders are imported with 'orthonav import'")
    if not _has_volume_suffix(p):
        raise InputError(p, f"unsupported file type; expected one of {', '.join(VOLUME_SUFFIXES)}")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise InputError(p, f"cannot be read as an image ({first})") from e
    try:
        return from_sitk(image)
    except InputError as e:
        raise InputError(p, e.problem) from e


def write_volume(volume: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Atomically write ``volume`` (format from the file ending, e.g. ``.nii.gz``)."""
    image = to_sitk(volume)
    return write_with(path, lambda tmp: sitk.WriteImage(image, str(tmp), compress))


def lps_bounds_of(volume: Volume) -> NDArray[np.float64]:
    """(2, 3) min/max LPS corners of the voxel-centre grid."""
    ni, nj, nk = volume.shape_ijk
    corners = np.array([[i, j, k] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)], dtype=float)
    pts = volume.to_lps(corners)
    return np.stack([pts.min(axis=0), pts.max(axis=0)])


__all__ = [
    "Volume",
    "VOLUME_SUFFIXES",
    "make_lps_from_ijk",
    "from_sitk",
    "to_sitk",
    "read_volume",
    "write_volume",
    "lps_bounds_of",
]
