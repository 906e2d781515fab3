"""Import a CT into a case folder: DICOM series, NIfTI, NRRD or MetaImage -> ``CASE/ct.nii.gz``.

Geometry (origin, spacing, direction: LPS, as DICOM and ITK define it) is kept exactly; the
DICOM modality LUT (rescale slope / intercept) is applied so voxels are Hounsfield units, and
the result is stored as int16. A DICOM series is checked before it is read: modality CT, no
gantry tilt, one orientation and matrix size, no duplicate or missing slices and a uniform
slice spacing (DICOM PS3.3 C.7.6.2: Image Position / Orientation (Patient)), and a Pixel
Spacing (0028,0030) in every file. A NIfTI / NRRD / MetaImage file is checked before its voxels
are read (:mod:`orthonav.segmentation.image_checks`): size against the file and a memory limit,
data type, spacing, and no NaN / Inf voxels. Each rejection names the files at fault.
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
    write_volume,
)

from .image_checks import memory_limit_bytes, read_checked_volume

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
        Not CT, gantry tilt, mixed orientation or matrix size, missing, unreadable or mixed
        Pixel Spacing, duplicate, missing or unevenly spaced slices (naming files in the folder
        that are not readable DICOM, e.g. a truncated slice), a single slice. The message names
        the offending files.
    """
    files = list(info.files)
    first = files[0]
    if info.modality != "CT":
        raise InputError(first.parent, f"series {info.describe()} has modality {info.modality or 'missing'}, not CT (e.g. {first.name})")
    if len(files) < 2:
        raise InputError(first, "a single slice is not a CT volume")
    positions, orient, sizes, pixel_mm = [], [], [], []
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
        ps = _tag(h, "0028|0030")
        if not ps:
            raise InputError(f, "has no Pixel Spacing (0028,0030): the voxel size is unknown (it would be read as 1 mm)")
        ps_mm = _floats(ps, 2, f, "Pixel Spacing (0028,0030)")
        if not (np.all(np.isfinite(ps_mm)) and np.all(ps_mm > 0)):
            raise InputError(f, f"Pixel Spacing (0028,0030) {ps!r} is not a positive voxel size")
        pixel_mm.append(ps_mm)
    o0 = orient[0]
    for f, o in zip(files, orient):
        if not np.allclose(o, o0, atol=1e-4):
            raise InputError(f, f"slice orientation {o.tolist()} differs from {files[0].name} ({o0.tolist()})")
    for f, s in zip(files, sizes):
        if s != sizes[0]:
            raise InputError(f, f"slice size {s} differs from {files[0].name} ({sizes[0]})")
    for f, ps_mm in zip(files, pixel_mm):
        if not np.allclose(ps_mm, pixel_mm[0], rtol=1e-4, atol=1e-6):
            raise InputError(f, f"Pixel Spacing {ps_mm.tolist()} mm differs from {files[0].name} ({pixel_mm[0].tolist()} mm)")
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
                f"(gap {dz[i]:.3f} mm, spacing {step:.3f} mm)" + _unreadable_note(files[i].parent, files),
            )
        raise InputError(
            files[i].parent,
            f"inconsistent slice spacing: {dz[i]:.3f} mm between {files[i].name} and {files[i + 1].name}, "
            f"{step:.3f} mm elsewhere",
        )
    return files


def _unreadable_note(folder: Path, series_files: list[Path], limit: int = 200) -> str:
    """``"; not readable as DICOM (truncated or corrupt?): a, b"`` naming files in ``folder``
    outside the series whose header cannot be read (GDCM leaves them out of every series), or ``""``."""
    listed = {f.name for f in series_files}
    bad = []
    for f in sorted(folder.iterdir())[:limit]:
        if f.is_file() and f.name not in listed and not f.name.startswith(".") and f.name.upper() != "DICOMDIR":
            try:
                _header(f)
            except InputError:
                bad.append(f.name)
    return f"; not readable as DICOM (truncated or corrupt?): {', '.join(bad)}" if bad else ""


def read_dicom_ct(folder: str | Path, *, series: str | None = None, max_image_bytes: int | None = None) -> Volume:
    """Read and validate a CT series from ``folder`` into an int16 HU volume (LPS geometry).

    ``max_image_bytes`` caps the voxels' memory (default
    :func:`~orthonav.segmentation.image_checks.memory_limit_bytes`); the check is made from
    the headers, before any pixel is read.
    """
    root = Path(folder)
    info = _pick_series(root, series)
    files = check_series(info)
    h = _header(files[0])
    nx, ny = h.GetSize()[:2]
    need = nx * ny * len(files) * 4  # float32: GDCM may return rescaled values as float
    limit = memory_limit_bytes(max_image_bytes)
    if need > limit:
        raise InputError(
            root,
            f"series {info.describe()} has {nx} x {ny} x {len(files)} voxels = {need / 2**30:.2f} GiB, "
            f"above the import memory limit of {limit / 2**30:.2f} GiB",
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetImageIO("GDCMImageIO")  # applies Rescale Slope / Intercept
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise _which_slice_fails(files, root, info, e) from e
    return _to_hu_int16(from_sitk(image), root)


def _which_slice_fails(files: list[Path], root: Path, info: SeriesInfo, error: RuntimeError) -> InputError:
    """The error for a series GDCM cannot read, naming the first slice that fails on its own."""
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        r.SetImageIO("GDCMImageIO")
        try:
            r.Execute()
        except RuntimeError as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
            return InputError(f, f"slice of series {info.describe()} cannot be read (truncated or corrupt pixel data?): {last}")
    last = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
    return InputError(root, f"series {info.describe()} cannot be read ({last})")


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


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_ct` wrote.

    Attributes
    ----------
    case
        The case folder (its ``ct`` is the imported ``ct.nii.gz``).
    source
        The DICOM folder or volume file imported.
    notes
        Decisions a user should know about (e.g. a NIfTI voxel size taken from the sform
        because ``pixdim`` was 0); empty when there were none.
    """

    case: Case
    source: Path
    notes: tuple[str, ...] = ()


def import_ct(
    source: str | Path, case_dir: str | Path, *, series: str | None = None, max_image_bytes: int | None = None
) -> ImportSummary:
    """Import a CT into ``case_dir`` as ``ct.nii.gz`` (int16 HU, exact LPS geometry), with notes.

    Parameters
    ----------
    source
        A DICOM folder, or a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file.
    case_dir
        Case folder to create or update (only ``ct.nii.gz`` is written).
    series
        For a folder with several series: the series key, UID or series number to import.
    max_image_bytes
        Memory ceiling for the voxels (bytes); default
        :func:`~orthonav.segmentation.image_checks.memory_limit_bytes` (4 GiB or a quarter of
        the RAM, ``ORTHONAV_MAX_IMAGE_GIB`` overrides it).

    Raises
    ------
    InputError
        Missing source, unsupported file, not a CT, a DICOM series failing a check (see
        :func:`check_series`), or a volume file failing a check before or after its voxels are
        read (see :func:`~orthonav.segmentation.image_checks.check_image_file`: above the
        memory limit, truncated, unsupported data type, unusable spacing, NaN / Inf voxels).
        Nothing is written then.
    """
    src = Path(source)
    notes: tuple[str, ...] = ()
    if not src.exists():
        raise InputError(src, "not found")
    if src.is_dir():
        vol = read_dicom_ct(src, series=series, max_image_bytes=max_image_bytes)
    else:
        if series is not None:
            raise InputError(src, "--series applies to DICOM folders only")
        name = src.name.lower()
        if not any(name.endswith(s) for s in VOLUME_SUFFIXES):
            if name.endswith(".dcm"):
                raise InputError(src, "import the folder holding the DICOM series, not a single file")
            raise InputError(src, f"unsupported file type; expected a DICOM folder or one of {', '.join(VOLUME_SUFFIXES)}")
        raw, notes = read_checked_volume(src, max_image_bytes=max_image_bytes)
        vol = _to_hu_int16(raw, src)
    if min(vol.array_zyx.shape) < 2:
        raise InputError(src, f"is not a 3D volume (shape k, j, i = {vol.array_zyx.shape})")
    check_looks_like_ct(vol, src)
    case = Case(case_dir)
    case.root.mkdir(parents=True, exist_ok=True)
    write_volume(vol, case.ct)
    return ImportSummary(case, src, notes)


def import_source(
    source: str | Path, case_dir: str | Path, *, series: str | None = None, max_image_bytes: int | None = None
) -> Case:
    """Import a CT into ``case_dir`` as ``ct.nii.gz``; :func:`import_ct` without the notes.

    Parameters and errors as :func:`import_ct`. Returns the case.
    """
    return import_ct(source, case_dir, series=series, max_image_bytes=max_image_bytes).case
