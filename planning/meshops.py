"""Conversions between PyVista surfaces and manifold3d solids (exact, robust booleans).

manifold3d (Lévy-free "Manifold" library by E. Lee; booleans guaranteed manifold) needs a
closed, oriented 2-manifold; :func:`to_manifold` raises an InputError naming the mesh when
it is not one (open or self-intersecting segmentations must be repaired first).
"""

from __future__ import annotations

import manifold3d as mf
import numpy as np
import pyvista as pv
from numpy.typing import NDArray

from orthonav.core.errors import InputError


def _signed_volume(tri: pv.PolyData) -> float:
    f = np.asarray(tri.faces).reshape(-1, 4)[:, 1:]
    p = np.asarray(tri.points, dtype=np.float64)
    return float(np.einsum("ij,ij->i", p[f[:, 0]], np.cross(p[f[:, 1]], p[f[:, 2]])).sum() / 6.0)


def _manifold_of(tri: pv.PolyData) -> mf.Manifold:
    faces = np.asarray(tri.faces).reshape(-1, 4)[:, 1:]
    return mf.Manifold(mf.Mesh(vert_properties=np.ascontiguousarray(tri.points, dtype=np.float32), tri_verts=np.ascontiguousarray(faces, dtype=np.uint32)))


def to_manifold(mesh: pv.PolyData, *, name: str = "mesh", max_hole_mm: float = 60.0) -> mf.Manifold:
    """A closed triangle surface as a manifold3d solid (vertices merged, outward wound).

    A surface clipped by the edge of the scan (open holes up to ``max_hole_mm`` across) is
    closed with flat caps and consistently re-oriented first; anything else that is not a
    closed oriented 2-manifold raises an InputError.
    """
    tri = mesh if mesh.is_all_triangles else mesh.triangulate()
    tri = tri.clean()
    m = _manifold_of(tri)
    if m.status() != mf.Error.NoError and tri.n_open_edges > 0:
        closed = tri.fill_holes(max_hole_mm).clean().triangulate()
        closed = closed.compute_normals(auto_orient_normals=True, consistent_normals=True, split_vertices=False, cell_normals=False)
        m = _manifold_of(closed)
        tri = closed
    if m.status() == mf.Error.NoError and not m.is_empty() and _signed_volume(tri) < 0:
        m = _manifold_of(_flip(tri))  # wound inside out (inward normals): reverse every face
    if m.status() != mf.Error.NoError or m.is_empty():
        raise InputError(None, f"{name} is not a closed, oriented surface (manifold3d: {m.status().name}); it cannot be cut")
    if m.volume() < 0:
        raise InputError(None, f"{name} is wound inside out")
    return m


def _flip(tri: pv.PolyData) -> pv.PolyData:
    faces = np.asarray(tri.faces).reshape(-1, 4).copy()
    faces[:, 1:] = faces[:, 1:][:, ::-1]
    return pv.PolyData(np.asarray(tri.points), faces.ravel())


def to_polydata(m: mf.Manifold) -> pv.PolyData:
    """A manifold3d solid as a PyVista triangle surface."""
    mesh = m.to_mesh()
    v = np.asarray(mesh.vert_properties)[:, :3].astype(np.float64)
    t = np.asarray(mesh.tri_verts).astype(np.int64)
    if len(t) == 0:
        return pv.PolyData()
    faces = np.c_[np.full(len(t), 3), t].ravel()
    return pv.PolyData(v, faces)


def affine34(a_from_b: NDArray[np.float64]) -> list[list[float]]:
    """The (3, 4) matrix manifold3d's ``transform`` expects, from a (4, 4) one."""
    return np.asarray(a_from_b, dtype=np.float64)[:3, :4].tolist()


def transform(m: mf.Manifold, a_from_b: NDArray[np.float64]) -> mf.Manifold:
    """Map a solid from frame b to frame a."""
    return m.transform(affine34(a_from_b))


def halfspace_keep(m: mf.Manifold, point: NDArray[np.float64], normal: NDArray[np.float64]) -> mf.Manifold:
    """The part of ``m`` on the side of the plane that ``normal`` points AWAY from (kept bone,
    under the cut convention: normal points into the removed part)."""
    n = -np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    return m.trim_by_plane(n.tolist(), float(np.dot(n, point)))


def frame_from_plane(point: NDArray[np.float64], normal: NDArray[np.float64], x_hint: NDArray[np.float64]) -> NDArray[np.float64]:
    """``ct_from_plane``: z along ``normal``, x along ``x_hint`` made perpendicular, origin ``point``."""
    z = np.asarray(normal, dtype=np.float64)
    z = z / np.linalg.norm(z)
    x = np.asarray(x_hint, dtype=np.float64) - np.dot(x_hint, z) * z
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = x, y, z, point
    return out


def cross_section(m: mf.Manifold, ct_from_plane: NDArray[np.float64]) -> mf.CrossSection:
    """The section of ``m`` by the plane z = 0 of ``ct_from_plane``, in that plane's (x, y) mm."""
    from orthonav.core.transforms import invert

    return transform(m, invert(ct_from_plane)).slice(0.0)


__all__ = ["to_manifold", "to_polydata", "transform", "halfspace_keep", "frame_from_plane", "cross_section", "affine34"]
