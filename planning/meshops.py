"""Conversions between PyVista surfaces and manifold3d solids (exact, robust booleans).

manifold3d (Lévy-free "Manifold" library by E. Lee; booleans guaranteed manifold) needs a
closed, oriented 2-manifold; :func:`to_manifold` raises an InputError naming the mesh when
it is not one (open or self-intersecting segmentations must be repaired first).
"""

from __future__ import annotations

from dataclasses import dataclass

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


# --- volumes of a closed surface clipped by planes (no boolean) ---------------------------


@dataclass(frozen=True)
class ClosedSurface:
    """A solid's boundary as indexed triangles (outward wound), with each triangle's signed
    tetrahedron volume from ``origin`` precomputed, for :func:`clipped_volume`."""

    vertices: NDArray[np.float64]  # (m, 3) mm
    faces: NDArray[np.int64]  # (n, 3)
    origin: NDArray[np.float64]  # (3,) mm
    tri_volumes: NDArray[np.float64]  # (n,) mm^3


def closed_surface(m: mf.Manifold) -> ClosedSurface:
    """The boundary of a manifold3d solid as a :class:`ClosedSurface`."""
    mesh = m.to_mesh()
    v = np.asarray(mesh.vert_properties)[:, :3].astype(np.float64)
    f = np.asarray(mesh.tri_verts, dtype=np.int64)
    origin = v.mean(axis=0) if len(v) else np.zeros(3)
    return ClosedSurface(v, f, origin, _signed_volumes(v[f], origin) if len(f) else np.zeros(0))


def _signed_volumes(tris: NDArray[np.float64], origin: NDArray[np.float64]) -> NDArray[np.float64]:
    a, b, c = tris[:, 0] - origin, tris[:, 1] - origin, tris[:, 2] - origin
    return np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0


def _clip_soup(tris: NDArray[np.float64], point: NDArray[np.float64], normal: NDArray[np.float64]) -> NDArray[np.float64]:
    """Clip a closed, oriented triangle soup to the half-space ``(x - point) . normal <= 0``
    and close it with a fan of cap triangles from ``point`` over the cut edges.

    The cut edges of the clipped triangles, reversed, bound the cap; fanning them from one
    point of the plane gives cap triangles whose signed areas sum to the cap's (holes and
    several loops included), so the result is again closed for the divergence theorem.
    """
    if len(tris) == 0:
        return tris
    d = (tris - point) @ normal  # (n, 3)
    inside = d <= 0.0
    n_in = inside.sum(axis=1)
    keep = [tris[n_in == 3]]
    caps = []
    for count in (1, 2):
        sel = np.flatnonzero(n_in == count)
        if len(sel) == 0:
            continue
        t, dd, ins = tris[sel], d[sel], inside[sel]
        # Roll each triangle (keeping its winding) so the odd vertex out is first: the lone
        # inside vertex (count 1) or the lone outside vertex (count 2).
        first = np.argmax(ins if count == 1 else ~ins, axis=1)
        order = (first[:, None] + np.arange(3)[None]) % 3
        rows = np.arange(len(sel))[:, None]
        t, dd = t[rows, order], dd[rows, order]
        a, b, c = t[:, 0], t[:, 1], t[:, 2]
        da, db, dc = dd[:, 0:1], dd[:, 1:2], dd[:, 2:3]
        p_ab = a + (b - a) * (da / (da - db))
        p_ca = c + (a - c) * (dc / (dc - da))
        fan = np.broadcast_to(point, a.shape)
        if count == 1:  # kept: a -> p_ab -> p_ca; cut edge p_ab -> p_ca
            keep.append(np.stack([a, p_ab, p_ca], axis=1))
            caps.append(np.stack([fan, p_ca, p_ab], axis=1))
        else:  # kept: p_ab -> b -> c -> p_ca; cut edge p_ca -> p_ab
            keep.append(np.stack([p_ab, b, c], axis=1))
            keep.append(np.stack([p_ab, c, p_ca], axis=1))
            caps.append(np.stack([fan, p_ab, p_ca], axis=1))
    return np.concatenate(keep + caps, axis=0)


def clipped_volume(surface: ClosedSurface, planes: list[tuple[NDArray[np.float64], NDArray[np.float64]]]) -> float:
    """Volume (mm^3) of a closed surface intersected with the half-spaces
    ``(x - point) . normal <= 0`` of ``planes`` (a convex region), without a boolean.

    Divergence theorem (the volume is the sum of signed tetrahedra from an origin over a
    closed oriented surface): triangles inside every half-space count as precomputed; the
    others are clipped plane by plane, each cut closed by a fan cap (:func:`_clip_soup`).
    Triangles entirely outside a later plane are still clipped by the earlier ones, because
    their cut edges bound the earlier caps; put the plane that discards most first. Cost: one
    distance per vertex and plane, plus clipping of the triangles near the region.
    """
    if not planes:
        return float(surface.tri_volumes.sum())
    inside_all = None
    for q, n in planes:
        n = np.asarray(n, dtype=np.float64)
        inside_v = (surface.vertices - np.asarray(q, dtype=np.float64)) @ (n / np.linalg.norm(n)) <= 0.0
        if inside_all is None:
            out_first = ~inside_v[surface.faces].any(axis=1)  # outside the first plane: dropped before any cap exists
            inside_all = inside_v
        else:
            inside_all &= inside_v
    all_in = inside_all[surface.faces].all(axis=1)
    total = float(surface.tri_volumes[all_in].sum())
    soup = surface.vertices[surface.faces[~all_in & ~out_first]]
    for q, n in planes:
        n = np.asarray(n, dtype=np.float64)
        soup = _clip_soup(soup, np.asarray(q, dtype=np.float64), n / np.linalg.norm(n))
    return total + (float(_signed_volumes(soup, surface.origin).sum()) if len(soup) else 0.0)


_DISTANCE_FUNCTIONS: dict[int, tuple[pv.PolyData, object, float]] = {}


def signed_distance_mm(surface: pv.PolyData, points_lps: NDArray[np.float64]) -> NDArray[np.float64]:
    """Signed distance (n,) of points to a closed surface, negative inside
    (vtkImplicitPolyDataDistance; its locator is built once per surface and kept), the sign
    checked on a point surely outside the surface."""
    import vtk
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    key = id(surface)
    hit = _DISTANCE_FUNCTIONS.get(key)
    if hit is None or hit[0] is not surface:
        if len(_DISTANCE_FUNCTIONS) > 16:
            _DISTANCE_FUNCTIONS.clear()
        f = vtk.vtkImplicitPolyDataDistance()
        f.SetInput(surface)
        far = np.asarray(surface.bounds, dtype=np.float64)[1::2] + 50.0
        hit = (surface, f, 1.0 if f.EvaluateFunction(*far) > 0 else -1.0)
        _DISTANCE_FUNCTIONS[key] = hit
    _surface, f, sign = hit
    pts = np.ascontiguousarray(np.asarray(points_lps, dtype=np.float64).reshape(-1, 3))
    out = vtk.vtkDoubleArray()
    f.FunctionValue(numpy_to_vtk(pts, deep=True), out)
    return sign * vtk_to_numpy(out).astype(np.float64)


def unit_sphere_directions(n: int, *, hemisphere: bool = False) -> NDArray[np.float64]:
    """(n, 3) near-uniform unit vectors (Fibonacci lattice); with ``hemisphere`` only z <= 0."""
    i = np.arange(n) + 0.5
    z = -i / n if hemisphere else 1.0 - 2.0 * i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.c_[r * np.cos(phi), r * np.sin(phi), z]


__all__ = ["ClosedSurface", "affine34", "clipped_volume", "closed_surface", "cross_section", "frame_from_plane", "halfspace_keep", "signed_distance_mm", "to_manifold", "to_polydata", "transform", "unit_sphere_directions"]
