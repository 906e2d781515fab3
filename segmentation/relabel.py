"""Name and merge bones by hand: ``orthonav name CASE 3=femur_left 4+5=tibia_left``.

Each assignment ``SOURCES=NAME`` gives the bones on the left (label values or current names,
joined by ``+``) one label named ``NAME``: a rename for one source, a merge for several.
Everything is checked before anything is written (unknown label or name, a name that cannot be
a file name, a name already used by a bone not being renamed, a bone in two assignments); then
``labels.nii.gz``, ``labels.json`` (the touched bones get confidence 1.0 and why "named by
hand"; label values stay contiguous 1..n), ``labels.seg.nrrd`` (if present) and the meshes of
the touched bones (rebuilt through :func:`orthonav.segmentation.meshing.label_meshes`; meshes
of names that no longer exist are removed) are written, each atomically.

A merged bone encloses no gap: background voxels its pieces enclose together (the joint space
the classical split peeled between two pieces of one bone, which the naming left apart) become
that bone, as :func:`orthonav.segmentation.classical.fill_assembled` does for the pieces the
naming puts together; otherwise its surface would have inner walls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from orthonav.core.case import Case, LabelTable, check_name, read_labels_table, write_labels_table
from orthonav.core.errors import InputError
from orthonav.core.meshio import MESH_SUFFIXES, write_mesh
from orthonav.core.volume import Volume, read_volume, write_volume

from .classical import fill_assembled
from .meshing import label_meshes

#: ``why`` of a bone named by hand.
BY_HAND = "named by hand"
#: Seg file written beside the labels by ``segment`` (kept in step when present).
SEG_NRRD_NAME = "labels.seg.nrrd"


@dataclass(frozen=True)
class Relabelled:
    """What :func:`relabel_case` did.

    Attributes
    ----------
    table
        The new label table.
    changes
        New name -> the old names it now holds (one for a rename, several for a merge).
    files
        Files written (labels, labels.json, seg file, meshes).
    removed
        Mesh files removed (bones that no longer exist under their old name).
    filled
        Merged bone name -> voxels of enclosed gaps between its pieces now labelled as it.
    """

    table: LabelTable
    changes: dict[str, list[str]]
    files: list[Path]
    removed: list[Path]
    filled: dict[str, int] = field(default_factory=dict)


def parse_assignments(specs: Sequence[str]) -> list[tuple[list[str], str]]:
    """``["3=femur_left", "4+5=tibia_left"]`` -> ``[(["3"], "femur_left"), (["4", "5"], "tibia_left")]``.

    Raises
    ------
    InputError
        An assignment without exactly one ``=``, an empty source or name.
    """
    out = []
    for spec in specs:
        if spec.count("=") != 1:
            raise InputError(None, f"assignment {spec!r} must look like SOURCES=NAME (e.g. 3=femur_left or 4+5=tibia_left)")
        left, name = (x.strip() for x in spec.split("="))
        sources = [x.strip() for x in left.split("+")]
        if not name or not all(sources):
            raise InputError(None, f"assignment {spec!r} has an empty label or name (expected e.g. 4+5=tibia_left)")
        out.append((sources, name))
    if not out:
        raise InputError(None, "no assignment given (expected e.g. 3=femur_left 4+5=tibia_left)")
    return out


def _resolve(source: str, table: LabelTable, path: Path) -> int:
    if source.isdigit():
        v = int(source)
        if v not in table.labels:
            raise InputError(path, f"no label {v}; labels are {', '.join(f'{k}={n}' for k, n in sorted(table.labels.items()))}")
        return v
    try:
        return table.value_of(source)
    except KeyError:
        raise InputError(path, f"no bone named {source!r}; bones are {', '.join(f'{k}={n}' for k, n in sorted(table.labels.items()))}") from None


def plan_relabel(table: LabelTable, assignments: list[tuple[list[str], str]], path: Path) -> tuple[dict[int, int], LabelTable, dict[str, list[str]]]:
    """The new label table and the old -> new value map (no files touched).

    Returns
    -------
    lut, table, changes
        Old value -> new value (contiguous 1..n, 0 -> 0), the new table, and new name -> old names.

    Raises
    ------
    InputError
        Unknown label or name, invalid name, a bone in two assignments, two assignments giving
        one name, or a name already used by a bone that keeps it.
    """
    sources_of: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for sources, name in assignments:
        check_name(name, "bone name")
        if name in sources_of:
            raise InputError(path, f"{name!r} is given twice; merge its bones in one assignment ({'+'.join(sources)}=... )")
        values = []
        for src in sources:
            v = _resolve(src, table, path)
            if v in seen:
                raise InputError(path, f"label {v} ({table.labels[v]}) is in two assignments ({seen[v]} and {name})")
            seen[v] = name
            values.append(v)
        sources_of[name] = values
    kept = {v: n for v, n in table.labels.items() if v not in seen}
    for name in sources_of:
        if name in kept.values():
            other = next(v for v, n in kept.items() if n == name)
            raise InputError(path, f"{name!r} is already label {other}; rename or merge that bone too (e.g. {other}+... = {name})")
    # Each assignment keeps its smallest value; then values are made contiguous in order.
    new_names = dict(kept)
    merged_into: dict[int, int] = {}
    for name, values in sources_of.items():
        keep = min(values)
        new_names[keep] = name
        for v in values:
            merged_into[v] = keep
    order = sorted(new_names)
    compact = {old: new for new, old in enumerate(order, start=1)}
    lut = {0: 0}
    for v in table.labels:
        lut[v] = compact[merged_into.get(v, v)]
    conf = {compact[v]: float(table.confidence.get(v, 0.0)) for v in kept if v in table.confidence}
    why = {compact[v]: table.why[v] for v in kept if v in table.why}
    for name, values in sources_of.items():
        conf[compact[min(values)]] = 1.0
        why[compact[min(values)]] = BY_HAND
    new = LabelTable(
        labels=dict(sorted((compact[v], n) for v, n in new_names.items())),
        backend=table.backend,
        side=table.side,
        confidence=dict(sorted(conf.items())),
        why=dict(sorted(why.items())),
    )
    changes = {name: [table.labels[v] for v in values] for name, values in sources_of.items()}
    return lut, new, changes


def relabel_case(case_dir: str | Path, assignments: Sequence[str] | list[tuple[list[str], str]]) -> Relabelled:
    """Rename / merge bones of a segmented case by hand (see the module docstring).

    Parameters
    ----------
    case_dir
        Case folder with ``labels.nii.gz`` and ``labels.json``.
    assignments
        ``"3=femur_left"``, ``"4+5=tibia_left"`` strings, or already parsed ``(sources, name)``.

    Returns
    -------
    Relabelled

    Raises
    ------
    InputError
        Bad input (nothing is written then).
    """
    case = Case(case_dir)
    parsed = parse_assignments(assignments) if assignments and isinstance(next(iter(assignments)), str) else list(assignments)  # type: ignore[arg-type]
    if not parsed or any(not sources for sources, _name in parsed):
        raise InputError(None, "no assignment given (expected e.g. 3=femur_left 4+5=tibia_left)")
    labels_path = case.require(case.labels, "orthonav segment")
    table = read_labels_table(case.require(case.labels_json, "orthonav segment"))
    labels = read_volume(labels_path)
    if not np.issubdtype(labels.array_zyx.dtype, np.integer):
        raise InputError(labels_path, f"label map must hold integers, got {labels.array_zyx.dtype}")
    lut_map, new_table, changes = plan_relabel(table, parsed, case.labels_json)
    arr = labels.array_zyx
    present = np.unique(arr)
    unlisted = sorted(int(v) for v in present if v != 0 and int(v) not in table.labels)
    if unlisted:  # never drop voxels a table does not name (e.g. a segment added by hand)
        raise InputError(labels_path, f"label value(s) {', '.join(map(str, unlisted[:10]))} in the label map are not in {case.labels_json.name}; "
                                      "add them there (or re-run orthonav segment) before naming bones")
    top = int(arr.max()) if arr.size else 0
    lut = np.zeros(max(top, max(lut_map)) + 1, np.uint8)
    for old, new in lut_map.items():
        lut[old] = new
    new_arr = lut[arr]
    merged = {v: n for v, n in new_table.labels.items() if len(changes.get(n, ())) > 1}
    filled = {merged[v]: k for v, k in fill_assembled(new_arr, merged).items()} if merged else {}
    new_labels = Volume(new_arr, labels.lps_from_ijk.copy())
    touched = {v: n for v, n in new_table.labels.items() if n in changes}
    # Mesh formats: those the case already has for the touched bones (else .stl and .vtp).
    formats = sorted({p.suffix for old in (o for olds in changes.values() for o in olds) for p in _mesh_files(case, old)}) or [".stl", ".vtp"]
    meshes = label_meshes(new_labels, LabelTable(labels=touched)) if touched else {}
    # Everything computed: write, each file atomically, labels.json (which decides what bones
    # exist) last, so a failure part-way never leaves it naming a bone without its mesh.
    files: list[Path] = []
    for name, mesh in meshes.items():
        for ext in formats:
            files.append(write_mesh(mesh, case.mesh(name, ext)))
    seg = case.root / SEG_NRRD_NAME
    if seg.exists():
        from .slicer_seg import write_seg_nrrd

        files.append(write_seg_nrrd(new_labels, new_table, seg))
    files.append(write_volume(new_labels, case.labels))
    files.append(write_labels_table(case.labels_json, new_table))
    removed: list[Path] = []
    gone = {o for olds in changes.values() for o in olds} - set(new_table.labels.values())
    for old in sorted(gone):
        for p in _mesh_files(case, old):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return Relabelled(new_table, changes, files, removed, filled)


def _mesh_files(case: Case, bone: str) -> list[Path]:
    try:
        return [case.mesh(bone, ext) for ext in MESH_SUFFIXES if case.mesh(bone, ext).exists()]
    except InputError:
        return []


__all__ = ["BY_HAND", "Relabelled", "parse_assignments", "plan_relabel", "relabel_case"]
