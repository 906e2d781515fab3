"""Case-level segmentation: CT -> labels.nii.gz + labels.json (+ confidence) + meshes.

What the CLI (``orthonav segment CASE``, ``orthonav mesh CASE``) and the demo call. Every
result is computed before anything is written, and every write is atomic, so a failure (no
bone in the image, a missing weights file) leaves the case folder as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from orthonav.core.case import Case, LabelTable, read_labels_table, write_labels_table
from orthonav.core.errors import InputError
from orthonav.core.heap import reusing_freed_memory
from orthonav.core.meshio import MESH_SUFFIXES, write_mesh
from orthonav.core.volume import Volume, read_volume, write_volume

from .classical import Segmentation, segment_classical
from .importer import check_looks_like_ct
from .meshing import (
    DEFAULT_SMOOTHING_ITERATIONS,
    DEFAULT_TARGET_TRIANGLES,
    label_meshes,
)
from .slicer_seg import write_seg_nrrd
from .stacks import clear_unscanned, read_scanned

BACKENDS = ("classical", "unet", "totalsegmentator")
#: Slicer segmentation file written beside labels.nii.gz.
SEG_NRRD_NAME = "labels.seg.nrrd"

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class BoneSummary:
    """One bone of a segmentation: label value, voxel count, volume (mL), mesh size, and the
    confidence of its name (None when the backend gives none) with what it rests on."""

    label: int
    voxels: int
    volume_ml: float
    triangles: int = 0
    confidence: float | None = None
    why: str = ""


@dataclass(frozen=True)
class SegmentationSummary:
    """What :func:`segment_case` did: the bones, the files written and the time per step (s)."""

    case_dir: Path
    backend: str
    bones: dict[str, BoneSummary]
    files: list[Path]
    timings_s: dict[str, float] = field(default_factory=dict)
    side: str | None = None
    notes: tuple[str, ...] = ()


def _report(progress: Progress | None, step: str, fraction: float) -> None:
    if progress is not None:
        progress(step, float(min(max(fraction, 0.0), 1.0)))


def _check_ct(ct: Volume, path: Path) -> None:
    if not np.issubdtype(ct.array_zyx.dtype, np.integer) and not np.issubdtype(ct.array_zyx.dtype, np.floating):
        raise InputError(path, f"CT voxels must be numbers (HU), got dtype {ct.array_zyx.dtype}")
    check_looks_like_ct(ct, path)


def run_backend(ct: Volume, *, backend: str = "classical", anatomy: str = "auto", weights: str | Path | None = None,
                progress: Progress | None = None, scanned: Volume | None = None) -> Segmentation:
    """Segment ``ct`` with the named backend (no files touched); ``scanned`` is the coverage
    mask of a multi-stack import (or None), used by the naming of the classical backend and by
    the U-Net backend's anatomy check."""
    if backend == "classical":
        return segment_classical(ct, anatomy=anatomy, scanned=scanned)
    if backend == "unet":
        from .unet import segment_unet

        return segment_unet(ct, weights=weights, progress=progress, scanned=scanned)
    if backend == "totalsegmentator":
        from .totalseg import segment_totalsegmentator

        return segment_totalsegmentator(ct, anatomy=anatomy)
    raise InputError(None, f"unknown segmentation backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def _bone_summaries(labels: Volume, table: LabelTable) -> dict[str, BoneSummary]:
    # Voxels per label, counted in slabs of 4 M voxels: one bincount of a whole 512 x 512 x 400
    # label map converted it to int64 first (840 MB; 1.0-1.9 s against 0.2 s).
    n = max(table.labels) + 1
    flat = labels.array_zyx.reshape(-1)
    counts = np.zeros(n, np.int64)
    for s in range(0, flat.size, 1 << 22):
        counts += np.bincount(flat[s : s + (1 << 22)].astype(np.intp, copy=False), minlength=n)[:n]
    voxel_ml = float(np.prod(labels.spacing_mm)) / 1000.0
    return {
        name: BoneSummary(
            label=v, voxels=int(counts[v]), volume_ml=float(counts[v] * voxel_ml), confidence=table.confidence.get(v), why=table.why.get(v, "")
        )
        for v, name in table.labels.items()
    }


def _write_meshes(case: Case, meshes: dict, formats: Sequence[str]) -> list[Path]:
    for ext in formats:
        if ext.lower() not in MESH_SUFFIXES:
            raise InputError(None, f"unsupported mesh format {ext!r}; expected some of {', '.join(MESH_SUFFIXES)}")
    written = []
    for name, mesh in meshes.items():
        for ext in formats:
            written.append(write_mesh(mesh, case.mesh(name, ext.lower())))
    # Meshes of bones no longer in the label table are stale: remove them. Hidden files are
    # another writer's unfinished temporaries (a concurrent run): never touched here.
    keep = set(meshes)
    for bone, f in case.mesh_paths().items():
        if bone not in keep:
            for ext in MESH_SUFFIXES:
                with contextlib.suppress(FileNotFoundError):
                    case.mesh(bone, ext).unlink()
    return written


@reusing_freed_memory  # one reused heap for segmentation and meshes: orthonav.core.heap
def segment_case(
    case_dir: str | Path,
    *,
    backend: str = "classical",
    anatomy: str = "auto",
    mesh_formats: Sequence[str] = (".stl", ".vtp"),
    progress: Progress | None = None,
    weights: str | Path | None = None,
    target_triangles: int = DEFAULT_TARGET_TRIANGLES,
    smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
) -> SegmentationSummary:
    """Segment ``CASE/ct.nii.gz`` and write labels, label table, confidence, meshes and ``labels.seg.nrrd``.

    Parameters
    ----------
    case_dir
        Case folder holding ``ct.nii.gz`` (from ``orthonav import`` or a phantom).
    backend
        ``"classical"`` (default), ``"unet"`` (``weights``, default the model shipped with
        OrthoNav; writes ``confidence.nii.gz`` and notes "low confidence: ..." for bones whose
        name confidence is low) or ``"totalsegmentator"``.
    anatomy
        ``"auto"``, ``"knee"``, ``"hip"`` or ``"general"`` (classical naming rules).
    mesh_formats
        Mesh file endings to write per bone (``.stl``, ``.vtp``, ``.ply``, ``.obj``); empty for none.
    progress
        Optional ``callable(step, fraction)`` for a progress bar.
    weights
        U-Net weights file (``unet`` backend only; None: the shipped model).

    Returns
    -------
    SegmentationSummary

    Raises
    ------
    InputError
        Missing or non-CT ``ct.nii.gz``, unknown backend, no bone found. Nothing is written then.
    """
    case = Case(case_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _report(progress, "reading CT", 0.0)
    ct_path = case.require(case.ct, "orthonav import")
    ct = read_volume(ct_path)
    _check_ct(ct, ct_path)
    scanned = read_scanned(case.root, ct)  # coverage of several stacks (import), or None: all scanned
    timings["read"] = time.perf_counter() - t0

    t = time.perf_counter()
    _report(progress, f"segmenting ({backend})", 0.1)
    seg = run_backend(ct, backend=backend, anatomy=anatomy, weights=weights, progress=progress, scanned=scanned)
    if scanned is not None:  # stacks (docs/import.md): nothing is labelled where nothing was scanned
        kept, n_cleared = clear_unscanned(seg.labels, scanned)
        if n_cleared:
            seg = dataclasses.replace(seg, labels=kept, notes=(*seg.notes, f"{n_cleared} labelled voxels outside the scanned stacks cleared"))
    timings["segment"] = time.perf_counter() - t

    meshes = {}
    if mesh_formats:
        t = time.perf_counter()
        _report(progress, "meshing", 0.6)
        meshes = label_meshes(seg.labels, seg.table, target_triangles=target_triangles, smoothing_iterations=smoothing_iterations)
        timings["mesh"] = time.perf_counter() - t

    t = time.perf_counter()
    _report(progress, "writing", 0.85)
    files = [write_volume(seg.labels, case.labels), write_labels_table(case.labels_json, seg.table)]
    if seg.confidence is not None:
        files.append(write_volume(seg.confidence, case.confidence))
    elif case.confidence.exists():
        case.confidence.unlink()  # a previous backend's confidence would not match these labels
    files.append(write_seg_nrrd(seg.labels, seg.table, case.root / SEG_NRRD_NAME))
    if mesh_formats:
        files += _write_meshes(case, meshes, mesh_formats)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    _report(progress, "done", 1.0)

    bones = _bone_summaries(seg.labels, seg.table)
    bones = {n: dataclasses.replace(b, triangles=int(meshes[n].n_cells) if n in meshes else 0) for n, b in bones.items()}
    return SegmentationSummary(case.root, seg.table.backend or backend, bones, files, timings, seg.table.side, getattr(seg, "notes", ()))


def mesh_case(
    case_dir: str | Path,
    *,
    formats: Sequence[str] = (".stl", ".vtp"),
    target_triangles: int = DEFAULT_TARGET_TRIANGLES,
    smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
    progress: Progress | None = None,
) -> dict[str, list[Path]]:
    """(Re)build ``CASE/meshes/<bone>.<ext>`` from ``labels.nii.gz`` + ``labels.json``.

    Returns
    -------
    dict
        bone name -> files written.
    """
    case = Case(case_dir)
    if not formats:
        raise InputError(None, "no mesh format requested")
    labels = read_volume(case.require(case.labels, "orthonav segment"))
    table = read_labels_table(case.require(case.labels_json, "orthonav segment"))
    if not np.issubdtype(labels.array_zyx.dtype, np.integer):
        raise InputError(case.labels, f"label map must hold integers, got {labels.array_zyx.dtype}")
    _report(progress, "meshing", 0.0)
    meshes = label_meshes(labels, table, target_triangles=target_triangles, smoothing_iterations=smoothing_iterations)
    if not meshes:
        raise InputError(case.labels, "no labelled voxels for any bone in labels.json")
    _report(progress, "writing", 0.8)
    files = _write_meshes(case, meshes, formats)
    _report(progress, "done", 1.0)
    out: dict[str, list[Path]] = {n: [] for n in meshes}
    for f in files:
        out[f.stem].append(f)
    return out


#: A learned backend's bone whose name confidence (labels.json ``confidence``) is below
#: this is reported by :func:`low_confidence_warnings` (the shipped U-Net's card says 0.8 too).
LOW_CONFIDENCE = 0.8


def low_confidence_warnings(case_dir: str | Path, *, threshold: float = LOW_CONFIDENCE) -> list[str]:
    """Warnings for the bones of a case's ``labels.json`` written by a learned backend (``unet``)
    whose name confidence is below ``threshold`` (for ``plan`` to print; empty when none,
    when the case has no labels.json, or for the classical backend, whose confidence is that of
    the name, reported by ``segment``)."""
    case = Case(case_dir)
    if not case.labels_json.is_file():
        return []
    table = read_labels_table(case.labels_json)
    if table.backend != "unet":
        return []
    out = []
    for v, name in table.labels.items():
        if v not in table.confidence or table.confidence[v] >= threshold:
            continue
        if name.startswith("bone_"):  # an unnamed piece's confidence is that of the name withheld from it
            why = (table.why or {}).get(v, "")
            out.append(f"unnamed bone: {name} (U-Net name withheld, confidence {table.confidence[v]:.2f}{': ' + why if why else ''}); name it with 'orthonav name' before planning on it")
        else:
            out.append(f"low confidence: {name} name confidence {table.confidence[v]:.2f} < {threshold:.2f} (U-Net); check it before planning")
    return out


def load_segmentation(case_dir: str | Path) -> Segmentation:
    """Read ``labels.nii.gz`` + ``labels.json`` (+ ``confidence.nii.gz`` if present) of a case."""
    case = Case(case_dir)
    labels = read_volume(case.require(case.labels, "orthonav segment"))
    table = read_labels_table(case.require(case.labels_json, "orthonav segment"))
    conf = read_volume(case.confidence) if case.confidence.exists() else None
    return Segmentation(labels, table, conf)
