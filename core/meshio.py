"""Mesh file I/O in LPS millimetres (STL, VTP, PLY, OBJ), atomic on write."""

from __future__ import annotations

from pathlib import Path

import pyvista as pv

from .atomic import write_with
from .errors import InputError

MESH_SUFFIXES = (".stl", ".vtp", ".ply", ".obj", ".vtk")


def read_mesh(path: str | Path) -> pv.PolyData:
    """Read a surface mesh; coordinates are taken as LPS mm (OrthoNav writes them so)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "mesh file not found")
    if p.suffix.lower() not in MESH_SUFFIXES:
        raise InputError(p, f"unsupported mesh type; expected one of {', '.join(MESH_SUFFIXES)}")
    try:
        mesh = pv.read(str(p))
    except Exception as e:  # VTK readers raise assorted types on corrupt files
        raise InputError(p, f"cannot be read as a mesh ({e})") from e
    if not isinstance(mesh, pv.PolyData):
        mesh = mesh.extract_surface()
    if mesh.n_points == 0:
        raise InputError(p, "mesh is empty")
    return mesh


def write_mesh(mesh: pv.PolyData, path: str | Path) -> Path:
    """Atomically write ``mesh``; the format follows the ending (.stl is written binary)."""
    p = Path(path)
    if p.suffix.lower() not in MESH_SUFFIXES:
        raise InputError(p, f"unsupported mesh type; expected one of {', '.join(MESH_SUFFIXES)}")
    return write_with(p, lambda tmp: mesh.save(str(tmp), binary=True))
