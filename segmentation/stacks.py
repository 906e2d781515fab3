"""Several CT stacks of one study (e.g. hip, knee, ankle) resampled onto one grid, with a coverage mask.

Robotic and navigated knee systems plan from a low-dose lower-limb protocol: three short CT
stacks of one patient in one frame of reference (same Frame of Reference UID (0020,0052) and
Study Instance UID (0020,000D)), typically a thin-slice knee stack (0.5-1 mm) and thick,
low-dose hip and ankle stacks (2-5 mm), with unscanned gaps between them. OrthoNav keeps one
CT per case, so the stacks are resampled onto ONE grid (design decision, docs/import.md):

* **Frame**: the shared LPS patient frame; no registration between stacks (they share a frame
  of reference, so their positions are already consistent).
* **Axes and origin**: those of the finest stack (smallest voxel volume: the knee stack), so
  its voxel centres fall on grid points where the spacings allow (exactly when its spacings are
  whole multiples of the grid spacing); oblique stacks are supported.
* **Spacing**: isotropic ``max(finest in-plane spacing, MIN_SPACING_MM = 1 mm)``, enlarged when
  the grid would exceed ``max_voxels`` (:data:`MAX_GRID_VOXELS`). 1 mm is the resolution the
  plan needs (landmarks and cuts to about a millimetre) and keeps a 90 cm leg at about 90 M
  voxels (180 MB int16); finer knee detail is smoothed, not lost to the shape of the bones.
  Thick hip / ankle slices carry no more information on a finer grid.
* **Extent**: the bounding box (in the grid's axes) of every stack's voxel slabs, so the gaps
  between stacks lie inside the grid.
* **Values**: linear interpolation within a stack (ITK's, which holds the edge value over a
  stack's outer half-voxel); where stacks overlap the finer stack wins (no blending of two
  reconstructions); voxels outside every stack are -1024 HU (air).
* **Coverage**: ``scanned`` (uint8, 1 inside some stack's voxel slabs, i.e. continuous index
  in ``[-0.5, n - 0.5]`` on every axis, else 0), written as ``CASE/scanned.nii.gz`` so later
  stages can tell "not scanned" from "air": a bone ending at a stack border is cut there,
  not a real bone end.

The stacks are recorded in ``CASE/import.json`` (:class:`ImportRecord`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from orthonav.core.case import Case
from orthonav.core.errors import InputError
from orthonav.core.schema import Versioned, load_model, save_model
from orthonav.core.volume import Volume, make_lps_from_ijk, read_volume, to_sitk

#: Finest spacing (mm) of the combined grid.
MIN_SPACING_MM = 1.0
#: Largest combined grid (voxels); the spacing grows beyond it (int16: 2 bytes a voxel).
MAX_GRID_VOXELS = 160_000_000
#: HU of voxels outside every stack.
UNSCANNED_HU = -1024
#: The coverage mask beside ``ct.nii.gz`` (1 = inside a stack, 0 = not scanned).
SCANNED_NAME = "scanned.nii.gz"
#: What the import recorded about its sources.
IMPORT_RECORD_NAME = "import.json"
#: Two stacks whose boxes overlap by more than this fraction of the smaller one cover the same
#: region: they are alternative reconstructions (kernels, slice widths), not stacks to combine.
SAME_REGION_OVERLAP = 0.5


@dataclass(frozen=True)
class StackSource:
    """Where a stack comes from, known from its headers before any voxel is read.

    Attributes
    ----------
    source
        The DICOM folder or volume file.
    series_uid, study_uid, frame_uid
        DICOM Series / Study Instance UID and Frame of Reference UID; "" for a volume file.
    description
        Series Description (0008,103E) or the file name.
    """

    source: Path
    series_uid: str = ""
    study_uid: str = ""
    frame_uid: str = ""
    description: str = ""

    @property
    def is_dicom(self) -> bool:
        return bool(self.series_uid or self.study_uid or self.frame_uid)

    def name(self) -> str:
        """A short name for messages: description, series UID or the source's name."""
        return f"'{self.description}'" if self.description else (self.series_uid or self.source.name)


@dataclass(frozen=True)
class Stack:
    """One CT stack to combine: an int16 HU volume (LPS geometry) and its :class:`StackSource`."""

    volume: Volume
    info: StackSource

    @property
    def voxel_mm3(self) -> float:
        """Volume of one voxel (mm^3): the smaller, the finer the stack."""
        return float(np.prod(self.volume.spacing_mm))

    @property
    def source(self) -> Path:
        return self.info.source

    def name(self) -> str:
        return self.info.name()


def slab_corners_lps(lps_from_ijk: NDArray[np.float64], shape_ijk: Sequence[int]) -> NDArray[np.float64]:
    """(8, 3) LPS corners (mm) of the voxel slabs of a grid (index -0.5 and n - 0.5 per axis)."""
    lo = [-0.5, -0.5, -0.5]
    hi = [n - 0.5 for n in shape_ijk]
    ijk = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], dtype=np.float64)
    return ijk @ lps_from_ijk[:3, :3].T + lps_from_ijk[:3, 3]


def slab_bounds_lps(lps_from_ijk: NDArray[np.float64], shape_ijk: Sequence[int]) -> NDArray[np.float64]:
    """(2, 3) axis-aligned LPS box (mm, min / max) around a grid's voxel slabs."""
    c = slab_corners_lps(lps_from_ijk, shape_ijk)
    return np.stack([c.min(axis=0), c.max(axis=0)])


def overlap_fraction(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Volume of the intersection of two (2, 3) LPS boxes over the volume of the smaller (0..1)."""
    lo = np.maximum(a[0], b[0])
    hi = np.minimum(a[1], b[1])
    inter = float(np.prod(np.clip(hi - lo, 0.0, None)))
    smaller = min(float(np.prod(a[1] - a[0])), float(np.prod(b[1] - b[0])))
    return inter / smaller if smaller > 0 else 0.0


def check_one_frame(stacks: Sequence[StackSource]) -> list[str]:
    """Check that the stacks can share one grid; return notes for the user.

    DICOM stacks must share one Study Instance UID and one (present) Frame of Reference UID:
    only then are their LPS positions one patient frame. Volume files carry no UIDs: they are
    accepted together (with a note saying the frame is assumed), never mixed with DICOM series.

    Raises
    ------
    InputError
        Different studies, different or missing frames of reference, DICOM mixed with files.
    """
    dicom = [s for s in stacks if s.is_dicom]
    files = [s for s in stacks if not s.is_dicom]
    if dicom and files:
        raise InputError(
            files[0].source,
            "cannot be combined with DICOM series: a volume file carries no Frame of Reference UID to check "
            f"against {dicom[0].name()}; import DICOM series together, or volume files together",
        )
    if files:
        return [f"{len(files)} volume files carry no Frame of Reference UID: assumed to share one patient frame (LPS)"]
    for s in dicom:
        if not s.frame_uid:
            raise InputError(
                s.source,
                f"series {s.name()} has no Frame of Reference UID (0020,0052): cannot tell that the stacks share one "
                "patient frame; import one series with --series",
            )
    studies = {s.study_uid for s in dicom}
    if len(studies) > 1:
        listing = "; ".join(f"{s.name()} study {s.study_uid or 'missing'}" for s in dicom)
        raise InputError(dicom[0].source, f"series from {len(studies)} different studies cannot be one case: {listing}")
    frames = {s.frame_uid for s in dicom}
    if len(frames) > 1:
        listing = "; ".join(f"{s.name()} frame {s.frame_uid}" for s in dicom)
        raise InputError(
            dicom[0].source,
            f"series in {len(frames)} different frames of reference (0020,0052) cannot be combined without a "
            f"registration: {listing}",
        )
    return []


@dataclass(frozen=True)
class Grid:
    """The combined grid: ``lps_from_ijk`` (LPS mm) and voxel counts along i, j, k."""

    lps_from_ijk: NDArray[np.float64]
    shape_ijk: tuple[int, int, int]

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape_ijk))

    @property
    def spacing_mm(self) -> NDArray[np.float64]:
        return np.linalg.norm(self.lps_from_ijk[:3, :3], axis=0)


def combined_grid(
    stacks: Sequence[Stack], *, spacing_mm: float | None = None, max_voxels: int = MAX_GRID_VOXELS
) -> tuple[Grid, list[str]]:
    """The one grid the stacks are resampled onto (see the module docstring) and notes.

    Parameters
    ----------
    stacks
        Two or more stacks in one frame of reference.
    spacing_mm
        Isotropic grid spacing (mm); default ``max(finest in-plane spacing, MIN_SPACING_MM)``.
    max_voxels
        Largest grid; a coarser spacing is chosen beyond it (with a note).
    """
    if not stacks:
        raise InputError(None, "no CT stack to combine")
    finest = min(stacks, key=lambda s: s.voxel_mm3)
    direction = finest.volume.direction
    notes: list[str] = []
    if spacing_mm is None:
        s = max(float(min(finest.volume.spacing_mm[:2])), MIN_SPACING_MM)
    else:
        if not (np.isfinite(spacing_mm) and spacing_mm > 0):
            raise InputError(None, f"grid spacing must be a positive number of mm, got {spacing_mm!r}")
        s = float(spacing_mm)
    # Every stack's slab corners in the finest stack's axes, relative to its first voxel centre.
    origin0 = finest.volume.origin_lps
    corners = np.vstack([slab_corners_lps(st.volume.lps_from_ijk, st.volume.shape_ijk) for st in stacks])
    local = (corners - origin0) @ direction  # mm along the finest stack's i, j, k axes
    lo, hi = local.min(axis=0), local.max(axis=0)

    def layout(step: float) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        first = np.ceil(lo / step - 1e-6).astype(np.int64)  # grid index (from origin0) of the first centre inside
        last = np.floor(hi / step + 1e-6).astype(np.int64)
        return first, last - first + 1

    first, n = layout(s)
    if int(np.prod(n)) > max_voxels:
        s_new = s * (float(np.prod(n)) / max_voxels) ** (1.0 / 3.0) * 1.001
        notes.append(
            f"a {s:g} mm grid over the stacks would hold {int(np.prod(n)) / 1e6:.0f} M voxels (limit "
            f"{max_voxels / 1e6:.0f} M): resampled at {s_new:.2f} mm instead"
        )
        s = s_new
        first, n = layout(s)
    origin = origin0 + direction @ (first * s)
    grid = Grid(make_lps_from_ijk([s, s, s], origin, direction), (int(n[0]), int(n[1]), int(n[2])))
    return grid, notes


def _index_box(grid: Grid, stack: Stack) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(first, count) of the grid indices (i, j, k) whose box holds ``stack``'s voxel slabs."""
    corners = slab_corners_lps(stack.volume.lps_from_ijk, stack.volume.shape_ijk)
    ijk = (corners - grid.lps_from_ijk[:3, 3]) @ np.linalg.inv(grid.lps_from_ijk[:3, :3]).T
    first = np.clip(np.floor(ijk.min(axis=0)).astype(np.int64), 0, np.array(grid.shape_ijk) - 1)
    last = np.clip(np.ceil(ijk.max(axis=0)).astype(np.int64), 0, np.array(grid.shape_ijk) - 1)
    return first, last - first + 1


@dataclass(frozen=True)
class Combined:
    """The stacks on one grid.

    Attributes
    ----------
    ct
        int16 HU on the combined grid; :data:`UNSCANNED_HU` outside every stack.
    scanned
        uint8 coverage on the same grid: 1 inside a stack's voxel slabs, 0 not scanned.
    used_voxels
        Per stack (input order): grid voxels whose value it gave (finer stacks win overlaps).
    notes
        Decisions a user should know about.
    """

    ct: Volume
    scanned: Volume
    used_voxels: tuple[int, ...]
    notes: tuple[str, ...] = ()


def combine_stacks(
    stacks: Sequence[Stack], *, spacing_mm: float | None = None, max_voxels: int = MAX_GRID_VOXELS, max_bytes: int | None = None
) -> Combined:
    """Resample ``stacks`` onto one grid (:func:`combined_grid`) with a coverage mask.

    Linear interpolation within each stack; the finest stack (smallest voxel volume) wins where
    stacks overlap; :data:`UNSCANNED_HU` and ``scanned = 0`` outside every stack. Each stack is
    resampled only over the part of the grid its box covers.

    Parameters
    ----------
    stacks
        Int16 HU stacks in one frame of reference (see :func:`check_one_frame`).
    spacing_mm, max_voxels
        As :func:`combined_grid`.
    max_bytes
        Memory ceiling (bytes) for the combined CT and mask (3 bytes a voxel); checked before
        anything is allocated. None: no check beyond ``max_voxels``.

    Raises
    ------
    InputError
        No stack, a bad spacing, or a grid above ``max_bytes``.
    """
    grid, notes = combined_grid(stacks, spacing_mm=spacing_mm, max_voxels=max_voxels)
    need = grid.n_voxels * 3
    if max_bytes is not None and need > max_bytes:
        raise InputError(
            stacks[0].source,
            f"the stacks on one {grid.spacing_mm[0]:.2f} mm grid need {need / 2**30:.2f} GiB "
            f"({' x '.join(str(n) for n in grid.shape_ijk)} voxels), above the import memory limit of {max_bytes / 2**30:.2f} GiB",
        )
    ni, nj, nk = grid.shape_ijk
    ct = np.full((nk, nj, ni), UNSCANNED_HU, dtype=np.int16)
    scanned = np.zeros((nk, nj, ni), dtype=np.uint8)
    spacing = grid.spacing_mm
    direction = grid.lps_from_ijk[:3, :3] / spacing
    used = [0] * len(stacks)
    # Finest first: a voxel once filled is never overwritten by a coarser stack.
    for idx in sorted(range(len(stacks)), key=lambda i: stacks[i].voxel_mm3):
        st = stacks[idx]
        first, count = _index_box(grid, st)
        origin = grid.lps_from_ijk[:3, :3] @ first + grid.lps_from_ijk[:3, 3]
        size = [int(c) for c in count]
        image = to_sitk(st.volume)
        args = dict(size=size, outputOrigin=[float(x) for x in origin], outputSpacing=[float(x) for x in spacing],
                    outputDirection=[float(x) for x in direction.ravel()])
        values = sitk.GetArrayFromImage(
            sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), transform=sitk.Transform(), interpolator=sitk.sitkLinear,
                          defaultPixelValue=float(UNSCANNED_HU), outputPixelType=sitk.sitkFloat32, **args)
        )
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        inside = sitk.GetArrayFromImage(
            sitk.Resample(ones, transform=sitk.Transform(), interpolator=sitk.sitkNearestNeighbor, defaultPixelValue=0,
                          outputPixelType=sitk.sitkUInt8, **args)
        ).astype(bool)
        box = tuple(slice(int(f), int(f + c)) for f, c in zip(first[::-1], count[::-1]))
        take = inside & (scanned[box] == 0)
        ct[box][take] = np.clip(np.rint(values[take]), -32768, 32767).astype(np.int16)
        scanned[box][take] = 1
        used[idx] = int(take.sum())
        del values, inside, take
    for st, n in zip(stacks, used):
        if n == 0:
            notes.append(f"stack {st.name()} lies entirely inside finer stacks and gave no voxel")
    return Combined(Volume(ct, grid.lps_from_ijk.copy()), Volume(scanned, grid.lps_from_ijk.copy()), tuple(used), tuple(notes))


# --- what the import records ------------------------------------------------------------------


class StackRecord(BaseModel):
    """One imported stack (series or volume file)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="DICOM folder or volume file")
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    description: str = ""
    shape_ijk: list[int]
    spacing_mm: list[float] = Field(description="voxel size along i, j, k (mm)")
    direction: list[list[float]] = Field(description="3x3 direction cosines (columns: LPS direction of i, j, k)")
    lps_bounds_mm: list[list[float]] = Field(description="[min, max] LPS corners of the stack's voxel slabs (mm)")
    grid_voxels: int = Field(description="voxels of the case CT whose value came from this stack")


class ImportRecord(Versioned):
    """``CASE/import.json``: what ``orthonav import`` read and how it made ``ct.nii.gz``."""

    SCHEMA_VERSION = 1
    method: Literal["native", "resampled"] = Field(
        description="'native': one series, its own grid; 'resampled': several stacks on one grid (docs/import.md)"
    )
    stacks: list[StackRecord]
    grid_shape_ijk: list[int]
    grid_spacing_mm: list[float]
    lps_from_ijk: list[list[float]]
    scanned_fraction: float = Field(description="fraction of the grid's voxels inside a stack (1 for 'native')")
    scanned_file: str | None = Field(default=None, description="coverage mask beside ct.nii.gz, or None when all is scanned")
    notes: list[str] = Field(default_factory=list)


def stack_record(stack: Stack, grid_voxels: int) -> StackRecord:
    """The :class:`StackRecord` of ``stack``."""
    v = stack.volume
    return StackRecord(
        source=str(stack.source),
        series_uid=stack.info.series_uid,
        study_uid=stack.info.study_uid,
        frame_of_reference_uid=stack.info.frame_uid,
        description=stack.info.description,
        shape_ijk=[int(x) for x in v.shape_ijk],
        spacing_mm=[float(x) for x in v.spacing_mm],
        direction=[[float(x) for x in row] for row in v.direction],
        lps_bounds_mm=slab_bounds_lps(v.lps_from_ijk, v.shape_ijk).tolist(),
        grid_voxels=int(grid_voxels),
    )


def import_record_path(case_dir: str | Path) -> Path:
    """``CASE/import.json``."""
    return Case(case_dir).root / IMPORT_RECORD_NAME


def scanned_path(case_dir: str | Path) -> Path:
    """``CASE/scanned.nii.gz``."""
    return Case(case_dir).root / SCANNED_NAME


def read_import_record(case_dir: str | Path) -> ImportRecord:
    """Load ``CASE/import.json`` (InputError if missing, SchemaError if invalid or newer)."""
    return load_model(import_record_path(case_dir), ImportRecord)


def write_import_record(case_dir: str | Path, record: ImportRecord) -> Path:
    """Atomically write ``CASE/import.json``."""
    return save_model(import_record_path(case_dir), record)


def read_scanned(case_dir: str | Path, ct: Volume | None = None) -> Volume | None:
    """The coverage mask of a case (bool array, 1 = scanned) or None when the case has none
    (one native series or a phantom: every voxel was scanned).

    Raises
    ------
    InputError
        The mask does not match ``ct``'s grid (shape or geometry): a stale file.
    """
    p = scanned_path(case_dir)
    if not p.is_file():
        return None
    mask = read_volume(p)
    if ct is not None:
        if mask.array_zyx.shape != ct.array_zyx.shape or not np.allclose(mask.lps_from_ijk, ct.lps_from_ijk, atol=1e-3):
            raise InputError(p, f"coverage mask does not match the grid of {Case(case_dir).ct.name}; re-run 'orthonav import'")
    return mask.with_array(mask.array_zyx > 0)


def clear_unscanned(labels: Volume, scanned: Volume) -> tuple[Volume, int]:
    """``labels`` with every voxel outside the scanned region set to 0, and how many were set.

    A segmentation backend sees unscanned voxels as air (-1024 HU) and should label none of
    them; this makes it a guarantee for every backend (e.g. a network smoothing across a stack
    border). ``scanned`` must be on the labels' grid (:func:`read_scanned`).
    """
    if scanned.array_zyx.shape != labels.array_zyx.shape:
        raise InputError(None, f"coverage mask shape {scanned.array_zyx.shape} differs from the labels' {labels.array_zyx.shape}")
    outside = (labels.array_zyx != 0) & ~(scanned.array_zyx > 0)
    n = int(outside.sum())
    if n == 0:
        return labels, 0
    a = labels.array_zyx.copy()
    a[outside] = 0
    return labels.with_array(a), n


__all__ = [
    "clear_unscanned",
    "MIN_SPACING_MM",
    "MAX_GRID_VOXELS",
    "UNSCANNED_HU",
    "SCANNED_NAME",
    "IMPORT_RECORD_NAME",
    "SAME_REGION_OVERLAP",
    "StackSource",
    "Stack",
    "Grid",
    "Combined",
    "StackRecord",
    "ImportRecord",
    "slab_corners_lps",
    "slab_bounds_lps",
    "overlap_fraction",
    "check_one_frame",
    "combined_grid",
    "combine_stacks",
    "stack_record",
    "import_record_path",
    "scanned_path",
    "read_import_record",
    "write_import_record",
    "read_scanned",
]
