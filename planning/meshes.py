"""A case's bone meshes as planning uses them: each reduced to its largest connected piece
and checked to be a plausible bone surface (LPS mm).

The files are found and read by the one case mesh reader
(:func:`orthonav.core.case.read_case_meshes`); which bones a procedure needs is the
procedure's (:data:`orthonav.planning.tka.landmarks.KNEE_BONES`,
:data:`orthonav.planning.tha.landmarks.HIP_BONES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyvista as pv
from orthonav.core.case import Case, read_case_meshes
from orthonav.core.errors import InputError


def largest_piece(mesh: pv.PolyData) -> tuple[pv.PolyData, float]:
    """The largest connected surface of a mesh and the fraction of vertices dropped
    (segmentation islands: stray voxels or a mislabelled fragment of a neighbour)."""
    conn = mesh.connectivity("largest")
    kept = pv.PolyData(np.asarray(conn.points), conn.faces) if conn.n_points else mesh
    return kept.clean(), 1.0 - kept.n_points / max(mesh.n_points, 1)


def check_bone_mesh(mesh: pv.PolyData, path: str | Path) -> None:
    """Raise InputError naming ``path`` if the (largest piece of the) mesh cannot be a bone:
    too few vertices or faces, non-finite coordinates, or flat (thinner than 2 mm)."""
    if mesh.n_points < 50 or mesh.n_cells < 50:
        raise InputError(path, f"bone mesh has only {mesh.n_points} vertices / {mesh.n_cells} faces in its largest piece; re-run segmentation")
    pts = np.asarray(mesh.points, dtype=np.float64)
    if not np.all(np.isfinite(pts)):
        raise InputError(path, "bone mesh has non-finite vertex coordinates")
    extent = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False) / np.sqrt(len(pts))
    if extent[-1] < 1.0:
        raise InputError(path, f"bone mesh is flat (spread {extent[-1]:.2f} mm across its thinnest direction): not a bone surface")


def load_bone_meshes(case_dir: str | Path, bones: Sequence[str], *, required: Sequence[str] = (), report: dict[str, float] | None = None) -> dict[str, pv.PolyData]:
    """Read the meshes of ``bones`` present in a case (LPS mm), each reduced to its largest
    connected piece and checked (:func:`check_bone_mesh`).

    Parameters
    ----------
    case_dir
        The case folder (``meshes/<bone>.stl``, or another supported ending).
    bones
        The bones to read, in order; absent ones are skipped unless ``required``.
    required
        Bones whose absence is an error.
    report
        If given, receives ``{bone: fraction of vertices dropped}`` for bones that had islands.

    Raises
    ------
    InputError
        Naming the file: a required bone is missing, or a mesh is not a bone surface.
    """
    case = Case(case_dir)
    raw = read_case_meshes(case.root, tuple(bones))
    out: dict[str, pv.PolyData] = {}
    for b in bones:
        if b not in raw:
            if b in required:
                raise InputError(case.mesh(b), f"missing from case {case.root}; run 'orthonav segment' first (planning needs {', '.join(required)})")
            continue
        out[b], dropped = largest_piece(raw[b])
        check_bone_mesh(out[b], case.mesh_path(b))
        if dropped > 0 and report is not None:
            report[b] = dropped
    return out


def bones_present(case_dir: str | Path, bones: Sequence[str]) -> list[str]:
    """Those of ``bones`` that have a mesh file in the case (in that order)."""
    case = Case(case_dir)
    return [b for b in bones if case.mesh_path(b) is not None]


__all__ = ["bones_present", "check_bone_mesh", "largest_piece", "load_bone_meshes"]
