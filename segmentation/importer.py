"""Import a CT into a case folder: DICOM series, NIfTI, NRRD or MetaImage -> ``CASE/ct.nii.gz``.

Geometry (origin, spacing, direction: LPS, as DICOM and ITK define it) is kept exactly; the
DICOM modality LUT (rescale slope / intercept) is applied so voxels are Hounsfield units, and
the result is stored as int16. A DICOM series is checked before it is read: modality CT, no
gantry tilt, one orientation and matrix size, no duplicate or missing slices and a uniform
slice spacing (DICOM PS3.3 C.7.6.2: Image Position / Orientation (Patient)). Each rejection
names the files at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from orthonav.core.case import Case
from orthonav.core.errors import InputError
from orthonav.core.volume import (
    VOLUME_SUFFIXES,
    Volume,
    from_sitk,
    read_volume,
    write_volume,
)

#: Relative tolerance on slice spacing (and absolute floor, mm) before a series is rejected.
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.02
#: Largest gantry tilt (degrees) treated as none.
TILT_TOL_DEG = 0.01


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder.

    Attributes
    ----------
    series_uid
        Series Instance UID (may be empty in anonymised data; then ``key`` still tells series apart).
    key
        The identifier to pass as ``series=`` (the UID, or GDCM's series key when the UID is empty).
    modality, description, series_number
        DICOM (0008,0060), (0008,103E), (0020,0011); "" when absent.
    files
        The series' files, in GDCM's slice order.
    """

    series_uid: str
    key: str
    modality: str
    description: str
    series_number: str
    files: tuple[Path, ...]

    @property
    def n_files(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        num = f"#{self.series_number} " if self.series_number else ""
        return f"{num}{self.modality or '?'} '{self.description}' ({self.n_files} files) key={self.key}"


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _header(path: Path) -> sitk.ImageFileReader:
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.SetImageIO("GDCMImageIO")
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(path, "is not a readable DICOM file") from e
    return r


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """All DICOM image series in ``folder`` (not recursive), largest first.

    Raises
    ------
    InputError
        The folder does not exist or holds no DICOM image series.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "DICOM folder not found")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(root))
    out = []
    for sid in ids:
        files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(root), sid))
        if not files:
            continue
        h = _header(files[0])
        out.append(
            SeriesInfo(
                series_uid=_tag(h, "0020|000e"),
                key=sid,
                modality=_tag(h, "0008|0060").upper(),
                description=_tag(h, "0008|103e"),
                series_number=_tag(h, "0020|0011"),
                files=files,
            )
        )
    if not out:
        raise InputError(root, "holds no DICOM image series")
    return sorted(out, key=lambda s: -s.n_files)


def _pick_series(root: Path, series: str | None) -> SeriesInfo:
    found = list_dicom_series(root)
    if series is not None:
        match = [s for s in found if series in (s.key, s.series_uid, s.series_number)]
        if not match:
            listing = "; ".join(s.describe() for s in found)
            raise InputError(root, f"no series {series!r}; found: {listing}")
        if len(match) > 1:
            raise InputError(root, f"{series!r} matches {len(match)} series; give the key instead: " + "; ".join(s.describe() for s in match))
        return match[0]
    if len(found) == 1:
        return found[0]
    cts = [s for s in found if s.modality == "CT"]
    if len(cts) == 1:
        return cts[0]
    listing = "; ".join(s.describe() for s in found)
    raise InputError(root, f"holds {len(found)} series; choose one with --series KEY (or series number): {listing}")


def _floats(text: str, n: int, path: Path, what: str) -> np.ndarray:
    try:
        v = np.array([float(x) for x in text.split("\\")], dtype=np.float64)
    except ValueError as e:
        raise InputError(path, f"unreadable {what} {text!r}") from e
    if v.size != n:
        raise InputError(path, f"{what} needs {n} numbers, got {text!r}")
    return v


def check_series(info: SeriesInfo) -> list[Path]:
    """Validate a CT series and return its files sorted along the slice normal (inferior first).

    Raises
    ------
    InputError
        Not CT, gantry tilt, mixed orientation or matrix size, duplicate, missing or unevenly
        spaced slices, a single slice. The message names the offending files.
    """
    files = list(info.files)
    first = files[0]
    if info.modality != "CT":
        raise InputError(first.parent, f"series {info.describe()} has modality {info.modality or 'missing'}, not CT (e.g. {first.name})")
    if len(files) < 2:
        raise InputError(first, "a single slice is not a CT volume")
    positions, orient, sizes = [], [], []
    for f in files:
        h = _header(f)
        mod = _tag(h, "0008|0060").upper()
        if mod != "CT":
            raise InputError(f, f"modality {mod or 'missing'} in a CT series")
        tilt = _tag(h, "0018|1120")
        if tilt:
            try:
                tilt_deg = float(tilt)
            except ValueError as e:
                raise InputError(f, f"unreadable gantry tilt {tilt!r}") from e
            if abs(tilt_deg) > TILT_TOL_DEG:
                raise InputError(f, f"gantry tilt {tilt_deg:g} deg: tilted acquisitions are not supported (slices are sheared); reconstruct without tilt")
        orient.append(_floats(_tag(h, "0020|0037"), 6, f, "Image Orientation (Patient)"))
        positions.append(_floats(_tag(h, "0020|0032"), 3, f, "Image Position (Patient)"))
        sizes.append(h.GetSize()[:2])
    o0 = orient[0]
    for f, o in zip(files, orient):
        if not np.allclose(o, o0, atol=1e-4):
            raise InputError(f, f"slice orientation {o.tolist()} differs from {files[0].name} ({o0.tolist()})")
    for f, s in zip(files, sizes):
        if s != sizes[0]:
            raise InputError(f, f"slice size {s} differs from {files[0].name} ({sizes[0]})")
    normal = np.cross(o0[:3], o0[3:])
    z = np.array([p @ normal for p in positions])
    order = np.argsort(z)
    files = [files[i] for i in order]
    pos = np.array(positions)[order]
    z = z[order]
    # Positions must lie on the normal through the first slice: an in-plane drift is a tilt / shear.
    drift = pos - pos[0] - np.outer(z - z[0], normal)
    worst = int(np.argmax(np.linalg.norm(drift, axis=1)))
    if np.linalg.norm(drift[worst]) > 0.01 + 1e-3 * abs(z[worst] - z[0]):
        raise InputError(files[worst], "slice positions drift sideways along the stack (gantry tilt or shear); not supported")
    dz = np.diff(z)
    dup = np.flatnonzero(dz < SPACING_ATOL_MM)
    if dup.size:
        i = int(dup[0])
        raise InputError(files[i + 1], f"duplicate slice position {z[i]:.3f} mm (also in {files[i].name})")
    step = float(np.median(dz))
    bad = np.flatnonzero(np.abs(dz - step) > max(SPACING_RTOL * step, SPACING_ATOL_MM))
    if bad.size:
        i = int(bad[0])
        gap = dz[i] / step
        if abs(gap - round(gap)) < 0.05 and round(gap) >= 2:
            raise InputError(
                files[i].parent,
                f"{int(round(gap)) - 1} missing slice(s) between {files[i].name} and {files[i + 1].name} "
                f"(gap {dz[i]:.3f} mm, spacing {step:.3f} mm)",
            )
        raise InputError(
            files[i].parent,
            f"inconsistent slice spacing: {dz[i]:.3f} mm between {files[i].name} and {files[i + 1].name}, "
            f"{step:.3f} mm elsewhere",
        )
    return files


def read_dicom_ct(folder: str | Path, *, series: str | None = None) -> Volume:
    """Read and validate a CT series from ``folder`` into an int16 HU volume (LPS geometry)."""
    root = Path(folder)
    info = _pick_series(root, series)
    files = check_series(info)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetImageIO("GDCMImageIO")  # applies Rescale Slope / Intercept
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(root, f"series {info.describe()} cannot be read ({str(e).strip().splitlines()[-1]})") from e
    return _to_hu_int16(from_sitk(image), root)


def _to_hu_int16(vol: Volume, path: Path) -> Volume:
    a = vol.array_zyx
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise InputError(path, "image holds non-finite values")
        a = np.rint(a)
    lo, hi = float(a.min()), float(a.max())
    if lo < -32768 or hi > 32767:
        raise InputError(path, f"values {lo:.0f}..{hi:.0f} HU do not fit int16")
    return Volume(a.astype(np.int16, copy=False), vol.lps_from_ijk)


def check_looks_like_ct(vol: Volume, path: Path) -> None:
    """Reject volumes whose intensities cannot be CT Hounsfield units (no air, no bone scale)."""
    a = vol.array_zyx
    lo, hi = float(a.min()), float(a.max())
    if lo > -500.0:
        raise InputError(
            path,
            f"does not look like a CT in Hounsfield units: lowest value {lo:.0f} (a CT has air near -1000 HU); "
            "MR, PET or a normalised image cannot be imported as CT",
        )
    if hi < 0.0:
        raise InputError(path, f"does not look like a CT in Hounsfield units: highest value {hi:.0f} (no tissue above 0 HU)")


def import_source(source: str | Path, case_dir: str | Path, *, series: str | None = None) -> Case:
    """Import a CT into ``case_dir`` as ``ct.nii.gz`` (int16 HU, exact LPS geometry).

    Parameters
    ----------
    source
        A DICOM folder, or a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file.
    case_dir
        Case folder to create or update (only ``ct.nii.gz`` is written).
    series
        For a folder with several series: the series key, UID or series number to import.

    Raises
    ------
    InputError
        Missing source, unsupported file, not a CT, or a DICOM series failing a check
        (see :func:`check_series`). Nothing is written then.
    """
    src = Path(source)
    if not src.exists():
        raise InputError(src, "not found")
    if src.is_dir():
        vol = read_dicom_ct(src, series=series)
    else:
        if series is not None:
            raise InputError(src, "--series applies to DICOM folders only")
        name = src.name.lower()
        if not any(name.endswith(s) for s in VOLUME_SUFFIXES):
            if name.endswith(".dcm"):
                raise InputError(src, "import the folder holding the DICOM series, not a single file")
            raise InputError(src, f"unsupported file type; expected a DICOM folder or one of {', '.join(VOLUME_SUFFIXES)}")
        vol = _to_hu_int16(read_volume(src), src)
    if min(vol.array_zyx.shape) < 2:
        raise InputError(src, f"is not a 3D volume (shape k, j, i = {vol.array_zyx.shape})")
    check_looks_like_ct(vol, src)
    case = Case(case_dir)
    case.root.mkdir(parents=True, exist_ok=True)
    write_volume(vol, case.ct)
    return case
