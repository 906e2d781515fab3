"""Import a CT into a case folder: DICOM series, NIfTI, NRRD or MetaImage -> ``CASE/ct.nii.gz``.

Geometry (origin, spacing, direction: LPS, as DICOM and ITK define it) is kept exactly; the
DICOM modality LUT (rescale slope / intercept) is applied so voxels are Hounsfield units, and
the result is stored as int16. A DICOM series is checked before it is read: modality CT, no
gantry tilt, one orientation and matrix size, no duplicate or missing slices and a uniform
slice spacing (DICOM PS3.3 C.7.6.2: Image Position / Orientation (Patient)), and a Pixel
Spacing (0028,0030) in every file. A NIfTI / NRRD / MetaImage file is checked before its voxels
are read (:mod:`orthonav.segmentation.image_checks`): size against the file and a memory limit,
data type, spacing, and no NaN / Inf voxels. Each rejection names the files at fault.

Several stacks of one study (the hip, knee and ankle stacks of a low-dose lower-limb protocol:
several series in one folder, several folders or several volume files) become one case: each
stack passes the checks above on its own, the stacks must share one Study Instance UID and one
Frame of Reference UID, and they are resampled onto one grid with a coverage mask
``scanned.nii.gz`` beside the CT (:mod:`orthonav.segmentation.stacks`, docs/import.md). Every
import records what it read in ``CASE/import.json``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
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
from .stacks import (
    SAME_REGION_OVERLAP,
    SCANNED_NAME,
    ImportRecord,
    Stack,
    StackSource,
    check_one_frame,
    combine_stacks,
    overlap_fraction,
    scanned_path,
    slab_bounds_lps,
    stack_record,
    write_import_record,
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
    study_uid, frame_uid
        Study Instance UID (0020,000D) and Frame of Reference UID (0020,0052) of its first
        file; "" when absent. Stacks of one case must share both (:mod:`.stacks`).
    """

    series_uid: str
    key: str
    modality: str
    description: str
    series_number: str
    files: tuple[Path, ...]
    study_uid: str = ""
    frame_uid: str = ""

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
                study_uid=_tag(h, "0020|000d"),
                frame_uid=_tag(h, "0020|0052"),
            )
        )
    if not out:
        raise InputError(root, "holds no DICOM image series")
    return sorted(out, key=lambda s: -s.n_files)


def _match_series(root: Path, found: list[SeriesInfo], series: str) -> SeriesInfo:
    match = [s for s in found if series in (s.key, s.series_uid, s.series_number)]
    if not match:
        listing = "; ".join(s.describe() for s in found)
        raise InputError(root, f"no series {series!r}; found: {listing}")
    if len(match) > 1:
        raise InputError(root, f"{series!r} matches {len(match)} series; give the key instead: " + "; ".join(s.describe() for s in match))
    return match[0]


def _pick_series(root: Path, series: str | None) -> SeriesInfo:
    found = list_dicom_series(root)
    if series is not None:
        return _match_series(root, found, series)
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
    return read_series(_pick_series(Path(folder), series), max_image_bytes=max_image_bytes)


def read_series(info: SeriesInfo, *, max_image_bytes: int | None = None, files: list[Path] | None = None) -> Volume:
    """Validate (:func:`check_series`) and read one DICOM series into an int16 HU volume (LPS).

    ``files`` is the result of an earlier :func:`check_series` of ``info`` (skips the check);
    ``max_image_bytes`` as :func:`read_dicom_ct`.
    """
    root = info.files[0].parent
    files = check_series(info) if files is None else files
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


def series_geometry(files: list[Path]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``lps_from_ijk`` (LPS mm) and voxel counts (i, j, k) of a checked series, from the
    headers of its first and last files (``files`` as :func:`check_series` returns them)."""
    first, last = _header(files[0]), _header(files[-1])
    o = _floats(_tag(first, "0020|0037"), 6, files[0], "Image Orientation (Patient)")
    ps = _floats(_tag(first, "0028|0030"), 2, files[0], "Pixel Spacing (0028,0030)")
    p0 = _floats(_tag(first, "0020|0032"), 3, files[0], "Image Position (Patient)")
    p1 = _floats(_tag(last, "0020|0032"), 3, files[-1], "Image Position (Patient)")
    nx, ny = first.GetSize()[:2]
    m = np.eye(4)
    m[:3, 0] = o[:3] * ps[1]  # along a row (i): column spacing
    m[:3, 1] = o[3:] * ps[0]  # down a column (j): row spacing
    m[:3, 2] = (p1 - p0) / max(len(files) - 1, 1)
    m[:3, 3] = p0
    return m, (int(nx), int(ny), len(files))


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
        The DICOM folder or volume file imported (the first, when several stacks were combined).
    notes
        Decisions a user should know about (e.g. a NIfTI voxel size taken from the sform
        because ``pixdim`` was 0, the grid stacks were resampled onto); empty when there were none.
    record
        What ``CASE/import.json`` records: the stacks, the grid, the coverage.
    """

    case: Case
    source: Path
    notes: tuple[str, ...] = ()
    record: ImportRecord | None = None

    @property
    def n_stacks(self) -> int:
        return len(self.record.stacks) if self.record is not None else 1


def _check_volume_file(src: Path) -> None:
    name = src.name.lower()
    if not any(name.endswith(s) for s in VOLUME_SUFFIXES):
        if name.endswith(".dcm"):
            raise InputError(src, "import the folder holding the DICOM series, not a single file")
        raise InputError(src, f"unsupported file type; expected a DICOM folder or one of {', '.join(VOLUME_SUFFIXES)}")


def _stack_source(info: SeriesInfo) -> StackSource:
    return StackSource(info.files[0].parent, info.series_uid or info.key, info.study_uid, info.frame_uid, info.description)


def _auto_series(root: Path, notes: list[str], checked: dict[str, list[Path]]) -> list[SeriesInfo]:
    """The series of a folder imported without ``--series``: the only series, the only CT
    series, or every CT series when they are stacks of one study (one study, one frame of
    reference, different regions); otherwise the user must choose. The files of the series
    checked here (:func:`check_series`) are kept in ``checked`` (by key)."""
    found = list_dicom_series(root)
    if len(found) == 1:
        return [found[0]]
    cts = [s for s in found if s.modality == "CT"]
    if len(cts) == 1:
        return [cts[0]]
    listing = "; ".join(s.describe() for s in found)
    choose = f"holds {len(found)} series; choose one with --series KEY (or series number)"
    if not cts:
        raise InputError(root, f"{choose}: {listing}")
    try:
        check_one_frame([_stack_source(s) for s in cts])
    except InputError as e:
        raise InputError(root, f"{choose}, or several to combine stacks of one study ({e.problem}): {listing}") from None
    boxes = []
    for info in cts:
        try:
            checked[info.key] = check_series(info)
            m, shape = series_geometry(checked[info.key])
        except InputError as e:
            raise InputError(root, f"{choose} (series {info.describe()} cannot be a stack: {e}): {listing}") from None
        boxes.append(slab_bounds_lps(m, shape))
    for a in range(len(cts)):
        for b in range(a + 1, len(cts)):
            f = overlap_fraction(boxes[a], boxes[b])
            if f > SAME_REGION_OVERLAP:
                raise InputError(
                    root,
                    f"{choose}: series {cts[a].describe()} and {cts[b].describe()} cover the same region "
                    f"({f:.0%} overlap: two reconstructions of one scan?), so they are not stacks to combine: {listing}",
                )
    skipped = [s for s in found if s.modality != "CT"]
    if skipped:
        notes.append("not CT, left out: " + "; ".join(s.describe() for s in skipped))
    notes.append(f"{root}: {len(cts)} CT series of one study and frame of reference imported as stacks")
    return cts


def _select_series(folders: list[Path], keys: list[str], notes: list[str], checked: dict[str, list[Path]]) -> list[SeriesInfo]:
    """The DICOM series to import from ``folders``: those named by ``keys`` (each must match one
    series in one folder), or :func:`_auto_series` per folder."""
    if not keys:
        return [info for root in folders for info in _auto_series(root, notes, checked)]
    found = {root: list_dicom_series(root) for root in folders}
    picked: list[SeriesInfo] = []
    for key in keys:
        hits = []
        for root, series in found.items():
            if any(key in (s.key, s.series_uid, s.series_number) for s in series):
                hits.append(_match_series(root, series, key))
        if not hits:
            if len(folders) == 1:
                _match_series(folders[0], found[folders[0]], key)  # raises "no series ...; found: ..."
            raise InputError(folders[0], f"no series {key!r} in {', '.join(str(f) for f in folders)}")
        if len(hits) > 1:
            raise InputError(hits[0].files[0].parent, f"{key!r} matches series in {len(hits)} folders; give the series key instead")
        if hits[0] in picked:
            raise InputError(hits[0].files[0].parent, f"series {hits[0].describe()} was asked for twice")
        picked.append(hits[0])
    return picked


def _read_volume_file(src: Path, max_image_bytes: int | None) -> tuple[Volume, tuple[str, ...]]:
    raw, notes = read_checked_volume(src, max_image_bytes=max_image_bytes)
    return _to_hu_int16(raw, src), notes


def _check_stack(vol: Volume, src: Path) -> None:
    if min(vol.array_zyx.shape) < 2:
        raise InputError(src, f"is not a 3D volume (shape k, j, i = {vol.array_zyx.shape})")
    check_looks_like_ct(vol, src)


def import_ct(
    source: str | Path | Sequence[str | Path],
    case_dir: str | Path,
    *,
    series: str | Sequence[str] | None = None,
    max_image_bytes: int | None = None,
    spacing_mm: float | None = None,
) -> ImportSummary:
    """Import a CT into ``case_dir`` as ``ct.nii.gz`` (int16 HU, LPS geometry), with notes.

    One series or file is imported on its own grid, geometry kept exactly. Several stacks of one
    study (e.g. the hip, knee and ankle stacks of a low-dose lower-limb protocol) are resampled
    onto one grid in their shared frame (:mod:`orthonav.segmentation.stacks`, docs/import.md),
    and ``scanned.nii.gz`` (uint8, 1 = inside a stack) is written beside the CT so that later
    stages tell "not scanned" (-1024 HU, 0 in the mask) from air. ``import.json`` records the
    stacks (series, spacing, extent) and the grid.

    Parameters
    ----------
    source
        A DICOM folder, a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file, or
        several of them (stacks of one study). A folder holding several CT series of one study
        and frame of reference, each covering a different region, is imported as stacks; several
        series of the same region (reconstructions of one scan) must be chosen with ``series``.
    case_dir
        Case folder to create or update (``ct.nii.gz``, ``import.json`` and, for stacks,
        ``scanned.nii.gz``; a stale ``scanned.nii.gz`` is removed on a single-series import).
    series
        The series key, UID or series number to import, or several of them to combine as stacks.
    max_image_bytes
        Memory ceiling for the voxels (bytes), per stack and for the combined grid; default
        :func:`~orthonav.segmentation.image_checks.memory_limit_bytes` (4 GiB or a quarter of
        the RAM, ``ORTHONAV_MAX_IMAGE_GIB`` overrides it).
    spacing_mm
        Isotropic spacing of the combined grid (mm), stacks only; default
        ``max(finest stack's in-plane spacing, 1 mm)``.

    Raises
    ------
    InputError
        Missing source, unsupported file, not a CT, a DICOM series failing a check (see
        :func:`check_series`), a volume file failing a check before or after its voxels are
        read (see :func:`~orthonav.segmentation.image_checks.check_image_file`: above the
        memory limit, truncated, unsupported data type, unusable spacing, NaN / Inf voxels);
        for stacks: series of different studies or frames of reference, a missing Frame of
        Reference UID, DICOM mixed with volume files, a grid above the memory limit. Every
        check is made per stack. Nothing is written then.
    """
    sources = [Path(source)] if isinstance(source, (str, Path)) else [Path(x) for x in source]
    if not sources:
        raise InputError(None, "no source to import")
    keys = [] if series is None else ([series] if isinstance(series, str) else list(series))
    for src in sources:
        if not src.exists():
            raise InputError(src, "not found")
    if len(set(sources)) != len(sources):
        raise InputError(sources[0], "a source is given twice")
    folders = [src for src in sources if src.is_dir()]
    files = [src for src in sources if not src.is_dir()]
    if keys and not folders:
        raise InputError(files[0], "--series applies to DICOM folders only")
    for src in files:
        _check_volume_file(src)
    notes: list[str] = []
    checked: dict[str, list[Path]] = {}  # series key -> its files, sorted and checked
    picks = _select_series(folders, keys, notes, checked)
    case = Case(case_dir)
    if len(picks) + len(files) == 1:
        if picks:
            src = picks[0].files[0].parent
            vol = read_series(picks[0], max_image_bytes=max_image_bytes, files=checked.get(picks[0].key))
            info = _stack_source(picks[0])
        else:
            src = files[0]
            vol, file_notes = _read_volume_file(src, max_image_bytes)
            notes += file_notes
            info = StackSource(src, description=src.name)
        _check_stack(vol, src)
        n = int(np.prod(vol.shape_ijk))
        record = ImportRecord(
            method="native",
            stacks=[stack_record(Stack(vol, info), n)],
            grid_shape_ijk=[int(x) for x in vol.shape_ijk],
            grid_spacing_mm=[float(x) for x in vol.spacing_mm],
            lps_from_ijk=vol.lps_from_ijk.tolist(),
            scanned_fraction=1.0,
            scanned_file=None,
            notes=notes,
        )
        case.root.mkdir(parents=True, exist_ok=True)
        write_volume(vol, case.ct)
        with contextlib.suppress(FileNotFoundError):
            scanned_path(case.root).unlink()  # a previous stack import's mask would not match
        write_import_record(case.root, record)
        return ImportSummary(case, src, tuple(notes), record)

    # Several stacks: refuse mixed studies / frames from the headers, before reading any voxel.
    infos = [_stack_source(s) for s in picks] + [StackSource(f, description=f.name) for f in files]
    notes += check_one_frame(infos)
    stacks = []
    for pick, info in zip(picks, infos):
        vol = read_series(pick, max_image_bytes=max_image_bytes, files=checked.get(pick.key))
        _check_stack(vol, info.source)
        stacks.append(Stack(vol, info))
    for f, info in zip(files, infos[len(picks):]):
        vol, file_notes = _read_volume_file(f, max_image_bytes)
        notes += [f"{f.name}: {n}" for n in file_notes]
        _check_stack(vol, f)
        stacks.append(Stack(vol, info))
    combined = combine_stacks(stacks, spacing_mm=spacing_mm, max_bytes=memory_limit_bytes(max_image_bytes))
    notes += combined.notes
    ct = combined.ct
    sp = ct.spacing_mm
    fraction = float(combined.scanned.array_zyx.mean())
    notes.append(
        f"{len(stacks)} stacks resampled onto one {sp[0]:.2f} mm grid ({' x '.join(str(n) for n in ct.shape_ijk)} voxels, "
        f"{fraction:.0%} scanned; the rest is -1024 HU and 0 in {SCANNED_NAME})"
    )
    record = ImportRecord(
        method="resampled",
        stacks=[stack_record(st, n) for st, n in zip(stacks, combined.used_voxels)],
        grid_shape_ijk=[int(x) for x in ct.shape_ijk],
        grid_spacing_mm=[float(x) for x in sp],
        lps_from_ijk=ct.lps_from_ijk.tolist(),
        scanned_fraction=fraction,
        scanned_file=SCANNED_NAME,
        notes=notes,
    )
    case.root.mkdir(parents=True, exist_ok=True)
    write_volume(ct, case.ct)
    write_volume(combined.scanned, scanned_path(case.root))
    write_import_record(case.root, record)
    return ImportSummary(case, stacks[0].source, tuple(notes), record)


def import_source(
    source: str | Path | Sequence[str | Path],
    case_dir: str | Path,
    *,
    series: str | Sequence[str] | None = None,
    max_image_bytes: int | None = None,
) -> Case:
    """Import a CT into ``case_dir`` as ``ct.nii.gz``; :func:`import_ct` without the notes.

    Parameters and errors as :func:`import_ct`. Returns the case.
    """
    return import_ct(source, case_dir, series=series, max_image_bytes=max_image_bytes).case
