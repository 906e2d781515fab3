"""Per-bone surface meshes from a label map, in LPS millimetres.

For each bone: the binary mask is cropped with a one-voxel (or more) zero pad so the surface
closes at the volume's edge, contoured at 0.5 by discrete-free flying edges (Schroeder,
Maynard & Geveci 2015, "Flying edges", IEEE LDAV) in *voxel index* space, smoothed by the
windowed-sinc filter (Taubin, Zhang & Golub 1996, "Optimal surface smoothing as filter
design", ECCV), decimated by quadric error (Garland & Heckbert 1997; fast-simplification through
:func:`orthonav.core.decimation.decimate`, which one thread at a time may run),
and only then mapped to LPS with the volume's ``lps_from_ijk``. VTK image data carries no
direction matrix in most filters, so working in index space and applying the full affine at
the end is the one way that cannot lose the direction. The windowed-sinc filter is a
polynomial in the umbrella (uniform Laplacian) operator, so it commutes with that affine map.
Meshes are checked watertight and consistently oriented (outward normals) with trimesh and
repaired if needed.

Two things a label map holds that a surface must not pass on:

- **Specks.** A bone's label is 26-connected, but flying edges closes every *face*-connected
  piece on its own, so a voxel touching the bone only along an edge or at a corner becomes a
  sub-millimetre closed blob beside the surface (a hip bone from a 512 x 512 x 400 CT: 786
  face-connected pieces: its body of 640,328 voxels and 785 beside it, 688 of them single
  voxels). A face-connected piece of at most :data:`SPECK_MAX_VOXELS` voxels, under
  :data:`SPECK_FRACTION` of the largest face-connected piece of its 26-connected piece, is left
  out of the surface (it stays in the label map); a piece lying apart, however small, is meshed,
  and so are the strips of a thin plate hanging on a bone.
- **Decimation that breaks the surface.** Quadric edge collapse without a link-condition
  check can pinch two sheets of a thin bone together (an iliac wing), leaving edges shared by
  three or four triangles and a hole beside them. A decimated surface that is not closed after
  filling its small holes, or whose enclosed volume moved by more than
  :data:`MAX_VOLUME_CHANGE`, is decimated again to 1.5 times the triangle count, and so on, up
  to no decimation at all (the flying-edges surface, smoothed, is closed by construction). A
  body with under :data:`SMALL_BODY_FRACTION` of the triangles (a small piece of the bone lying
  apart) is not decimated: reduced to a few triangles it came out open, or vanished. Before
  2026-12-07 a surface not closed was cut into its closed pieces and only those were kept: on
  a 512 x 512 x 400 hip CT that dropped a whole hip bone and returned its specks, 212 mm^3 of a
  255,845 mm^3 bone, with no error.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyvista as pv
import trimesh
import vtk
from numpy.typing import NDArray
from orthonav.core.case import LabelTable
from orthonav.core.decimation import decimate
from orthonav.core.errors import InputError
from orthonav.core.heap import reusing_freed_memory
from orthonav.core.transforms import apply
from orthonav.core.volume import Volume
from scipy import ndimage as ndi
from vtk.util import numpy_support

vtk.vtkSMPTools.SetBackend("STDThread")

#: Default triangle budget per bone (a femur at 0.5 mm keeps its shape well within 0.1 mm). A
#: bone whose surface cannot be decimated that far and stay closed gets more (module docstring).
DEFAULT_TARGET_TRIANGLES = 60_000
#: A face-connected piece of a bone's mask of at most :data:`SPECK_MAX_VOXELS` voxels and under
#: this fraction of the largest face-connected piece it hangs on (along an edge or at a corner:
#: the same 26-connected piece) is a speck and is left out of the surface (it stays in the label
#: map). The smoothing itself shrinks such a piece to under half its volume (a ball of 7 voxels to
#: 0.38, one voxel to nothing); a thin plate hanging on a bone in strips of more voxels is meshed.
SPECK_FRACTION = 0.01
SPECK_MAX_VOXELS = 8
#: A body (connected piece of the surface) with fewer than this fraction of a surface's triangles
#: is not decimated: collapsed to a few triangles, a small body came out open or vanished.
SMALL_BODY_FRACTION = 0.01
#: A decimated surface whose enclosed volume differs from the surface's before decimation by
#: more than this fraction is not used (the next, larger, triangle count is tried): a part was
#: lost or pinched off.
MAX_VOLUME_CHANGE = 0.02
DEFAULT_SMOOTHING_ITERATIONS = 20
DEFAULT_PASSBAND = 0.05


def _faces_of(mesh: pv.PolyData) -> NDArray[np.int64]:
    return np.asarray(mesh.faces).reshape(-1, 4)[:, 1:].astype(np.int64)


def _polydata(points: NDArray[np.float64], faces: NDArray[np.int64]) -> pv.PolyData:
    cells = np.hstack([np.full((len(faces), 1), 3, np.int64), faces]).ravel()
    return pv.PolyData(np.asarray(points, dtype=np.float64), cells)


def _contour_index_space(mask_zyx: NDArray[np.bool_]) -> pv.PolyData:
    """Iso-surface at 0.5 of a padded binary mask; points in that array's voxel indices (i, j, k)."""
    nk, nj, ni = mask_zyx.shape
    image = vtk.vtkImageData()
    image.SetDimensions(ni, nj, nk)
    image.SetSpacing(1.0, 1.0, 1.0)
    image.SetOrigin(0.0, 0.0, 0.0)
    # uint8 0/1 scalars: the iso-value 0.5 interpolates half-way along each crossing edge, as on
    # float input, at a quarter of the memory.
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask_zyx, dtype=np.uint8).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(image)
    fe.SetValue(0, 0.5)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.Update()
    return pv.wrap(fe.GetOutput())


def _smooth(mesh: pv.PolyData, iterations: int, passband: float) -> pv.PolyData:
    if iterations <= 0:
        return mesh
    f = vtk.vtkWindowedSincPolyDataFilter()
    f.SetInputData(mesh)
    f.SetNumberOfIterations(iterations)
    f.SetPassBand(passband)
    f.BoundarySmoothingOff()
    f.FeatureEdgeSmoothingOff()
    f.NonManifoldSmoothingOn()
    f.NormalizeCoordinatesOn()
    f.Update()
    return pv.wrap(f.GetOutput())


def enclosed_volume(points: NDArray[np.float64], faces: NDArray[np.int64]) -> float:
    """Volume enclosed by a closed triangle surface (divergence theorem), in the cube of the
    points' unit; positive whichever way the triangles are wound."""
    a, b, c = (points[faces[:, i]] for i in range(3))
    return abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)


def _small_body_faces(faces: NDArray[np.int64], n_points: int) -> NDArray[np.bool_]:
    """bool per triangle: it belongs to a body (vertex-connected piece of the surface) holding
    fewer than :data:`SMALL_BODY_FRACTION` of the triangles."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(faces) == 0:
        return np.zeros(0, bool)
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n_points, n_points))
    _n, vertex_body = connected_components(graph, directed=False)
    body = vertex_body[faces[:, 0]]
    return np.bincount(body)[body] < SMALL_BODY_FRACTION * len(faces)


def decimation_targets(n_faces: int, target_triangles: int) -> list[int]:
    """The triangle counts tried in turn for a surface of ``n_faces`` triangles: the target,
    then 1.5 times as many, and so on while below ``n_faces``, then 0 (no decimation)."""
    counts = []
    t = target_triangles
    while 0 < t < n_faces:
        counts.append(t)
        t = int(np.ceil(1.5 * t))
    return counts + [0]


def _without_specks(mask_zyx: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """``mask_zyx`` without its specks: face-connected pieces of at most :data:`SPECK_MAX_VOXELS`
    voxels and smaller than :data:`SPECK_FRACTION` of the largest face-connected piece in the
    same 26-connected piece (voxels hanging on a body along an edge or at a corner). A piece
    lying apart from every other is kept whatever its size, and so are a chain of comparable
    pieces (a thin bone crossing coarse voxels) and the strips of a thin plate."""
    faces, n_faces = ndi.label(mask_zyx)
    if n_faces <= 1:
        return mask_zyx
    joined, n_joined = ndi.label(mask_zyx, structure=np.ones((3, 3, 3), bool))
    f_vox, j_vox = faces[mask_zyx], joined[mask_zyx]
    size = np.bincount(f_vox, minlength=n_faces + 1)
    joined_of = np.zeros(n_faces + 1, np.int64)
    joined_of[f_vox] = j_vox
    largest = np.zeros(n_joined + 1, np.int64)
    np.maximum.at(largest, joined_of[1:], size[1:])
    keep = (size > SPECK_MAX_VOXELS) | (size >= SPECK_FRACTION * largest[joined_of])
    keep[0] = False
    return mask_zyx if keep[1:].all() else keep[faces]


def _closed_outward(points: NDArray[np.float64], faces: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.int64]] | None:
    """``(points, faces)`` wound outwards (unused points dropped) when the triangles already
    form a closed surface wound consistently, with no degenerate triangle: every directed edge
    once, and its reverse once. None otherwise. What :func:`_make_watertight` checks, without
    trimesh's processing (0.3 s of a 120,000-triangle hip bone's 0.35 s, all of it holding the
    GIL while the other bones wait)."""
    f = np.asarray(faces, np.int64)
    n = len(points)
    if len(f) == 0 or ((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])).any():
        return None
    a, b = f.ravel(), f[:, [1, 2, 0]].ravel()
    key = np.sort(a * n + b)
    if (key[1:] == key[:-1]).any():  # an edge in three or more triangles, or wound twice one way
        return None
    reverse = b * n + a
    at = np.minimum(np.searchsorted(key, reverse), len(key) - 1)
    if not (key[at] == reverse).all():  # an open edge
        return None
    tri = points[f]
    if not trimesh.triangles.nondegenerate(tri, height=trimesh.tol.merge).all():
        return None
    used = np.unique(f)
    if len(used) < n:
        lut = np.zeros(n, np.int64)
        lut[used] = np.arange(len(used))
        points, f = points[used], lut[f]
    volume = float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum())
    return (points, f) if volume >= 0 else (points, f[:, ::-1])


def _make_watertight(points: NDArray[np.float64], faces: NDArray[np.int64]) -> trimesh.Trimesh | None:
    """Merge duplicate vertices, drop degenerate faces, fill small holes, orient outward; None
    when the surface cannot be closed that way (never a part of it)."""
    # trimesh's ``validate`` would also turn every body outwards (see below): the degenerate and
    # repeated triangles are dropped here instead.
    tm = trimesh.Trimesh(points, faces, process=True)
    keep = tm.unique_faces() & tm.nondegenerate_faces()
    if not keep.all():
        tm.update_faces(keep)
        tm.remove_unreferenced_vertices()
    if not tm.is_watertight:
        trimesh.repair.fill_holes(tm)
    if not tm.is_watertight:
        return None
    # A closed surface wound consistently needs only the sign of its volume checked (flying
    # edges and the decimation keep the winding: 0.7 s of trimesh's fix on a knee CT). Its
    # bodies are not turned outwards one by one: the inner wall of a cavity faces into the
    # cavity (until 2026-12-07 every body was turned outwards, which added a vertebra's
    # enclosed cavities to its volume instead of taking them away: 39,405 mm^3 in 224 pieces
    # with the code before, 37,855 mm^3 now, of its voxels' 41,245 mm^3). Only a surface wound
    # inconsistently (never seen: a fallback) has its bodies turned outwards one by one.
    if not tm.is_winding_consistent:
        trimesh.repair.fix_normals(tm, multibody=True)
    if tm.volume < 0:
        tm.invert()
    return tm


def mask_mesh(
    mask_zyx: NDArray[np.bool_],
    lps_from_ijk: NDArray[np.float64],
    *,
    name: str = "bone",
    target_triangles: int = DEFAULT_TARGET_TRIANGLES,
    smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
    passband: float = DEFAULT_PASSBAND,
    offset_ijk: tuple[int, int, int] = (0, 0, 0),
) -> pv.PolyData:
    """Watertight, outward-oriented surface (LPS mm) of one binary mask.

    Parameters
    ----------
    mask_zyx
        (nk, nj, ni) boolean mask on the grid of ``lps_from_ijk``.
    lps_from_ijk
        (4, 4) voxel index -> LPS mm affine of that grid.
    target_triangles
        Decimate to about this many triangles (0 keeps all).
    smoothing_iterations
        Windowed-sinc iterations (0 for the raw flying-edges surface).
    offset_ijk
        Index (i, j, k) of ``mask_zyx[0, 0, 0]`` on the grid, when the mask is a crop of it.

    Raises
    ------
    InputError
        The mask is empty or its surface cannot be closed.
    """
    if not mask_zyx.any():
        raise InputError(None, f"{name!r} has no voxels to mesh")
    box = ndi.find_objects(mask_zyx.view(np.uint8) if mask_zyx.dtype == bool else mask_zyx.astype(np.uint8))[0]
    offset = tuple(int(o) + s_.start for o, s_ in zip(offset_ijk, box[::-1]))
    points_ijk, faces = _surface_ijk(_without_specks(mask_zyx[box] != 0), name, smoothing_iterations, passband, offset)  # type: ignore[arg-type]
    return _polydata(*_closed_lps(points_ijk, faces, lps_from_ijk, name, target_triangles, int(np.count_nonzero(mask_zyx))))


def _surface_ijk(
    mask_zyx: NDArray[np.bool_], name: str, smoothing_iterations: int, passband: float, offset_ijk: tuple[int, int, int]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The VTK part of :func:`mask_mesh`: the smoothed iso-surface of the mask, points in the
    grid's voxel indices (i, j, k) and triangles."""
    if not mask_zyx.any():
        raise InputError(None, f"{name!r} has no voxels to mesh")
    box = ndi.find_objects(mask_zyx.view(np.uint8) if mask_zyx.dtype == bool else mask_zyx.astype(np.uint8))[0]
    pad = 2
    crop = np.pad(mask_zyx[box], pad)
    surf = _smooth(_contour_index_space(crop), smoothing_iterations, passband)
    offset = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64) - pad + np.asarray(offset_ijk, float)
    return np.asarray(surf.points, dtype=np.float64) + offset, _faces_of(surf)


def _closed_lps(
    points_ijk: NDArray[np.float64], faces: NDArray[np.int64], lps_from_ijk: NDArray[np.float64], name: str, target_triangles: int, n_voxels: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The part of :func:`mask_mesh` after VTK (no VTK object: safe on a worker thread):
    decimated (to the first of :func:`decimation_targets` that leaves it closed and its
    enclosed volume within :data:`MAX_VOLUME_CHANGE`), mapped to LPS mm, closed and oriented
    outward; (vertices, triangles). ``n_voxels`` (the mask's) is only reported."""
    mirrored = np.linalg.det(lps_from_ijk[:3, :3]) < 0  # a mirrored grid flips the winding
    voxel_mm3 = abs(float(np.linalg.det(lps_from_ijk[:3, :3])))
    whole_mm3 = enclosed_volume(points_ijk, faces) * voxel_mm3  # the surface before decimation
    # Small bodies are kept as they are; the others share what is left of the budget.
    small = _small_body_faces(faces, len(points_ijk))
    big, kept = faces[~small], faces[small]
    budget = target_triangles if target_triangles <= 0 else max(target_triangles - len(kept), target_triangles // 2)
    for count in decimation_targets(len(big), budget):
        p, f = decimate(points_ijk, big, count)
        if len(kept):
            used = np.unique(kept)
            lut = np.zeros(len(points_ijk), np.int64)
            lut[used] = len(p) + np.arange(len(used))
            p, f = np.vstack([p, points_ijk[used]]), np.vstack([f, lut[kept]])
        points, f = apply(lps_from_ijk, p), (f[:, ::-1] if mirrored else f)
        closed = _closed_outward(points, f)
        if closed is None:  # not closed as it is: trimesh's repair (small holes, winding)
            tm = _make_watertight(points, f)
            closed = None if tm is None else (np.asarray(tm.vertices), np.asarray(tm.faces))
        if closed is not None and len(closed[1]) and abs(enclosed_volume(*closed) - whole_mm3) <= MAX_VOLUME_CHANGE * whole_mm3 + 1e-3:
            return closed
    # never expected: the surface before decimation is closed
    raise InputError(None, f"the surface of {name!r} could not be closed ({n_voxels} voxels)")


@reusing_freed_memory  # large arrays reused, not page-faulted anew: orthonav.core.heap
def label_meshes(
    labels: Volume,
    table: LabelTable,
    *,
    target_triangles: int = DEFAULT_TARGET_TRIANGLES,
    smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
    passband: float = DEFAULT_PASSBAND,
) -> dict[str, pv.PolyData]:
    """One watertight LPS-mm surface per bone named in ``table`` (bones with no voxels are skipped).

    The VTK steps (contour, smoothing) run for one bone after the other on the calling thread:
    meshing bones on parallel Python threads was tried and once returned an empty surface (VTK
    pipelines are not safe to run that way; the decimation's shared state, found on
    2026-12-07, may have been what went wrong then: :mod:`orthonav.core.decimation`). The steps
    before them (each bone's mask, its specks removed: module docstring) and after them
    (decimation, one bone at a time, and trimesh's closing) hold no VTK object: they run on
    worker threads (as many as SimpleITK's thread budget), beside the next bones' VTK steps.
    The surfaces are the same as one after the other.

    Raises
    ------
    InputError
        A bone's surface cannot be closed: nothing is returned rather than a surface missing a part.

    Returns
    -------
    dict
        bone name -> ``pv.PolyData`` triangle mesh (LPS mm, outward normals), in label order.
    """
    import SimpleITK as sitk

    arr = labels.array_zyx
    boxes = ndi.find_objects(arr if arr.dtype == np.uint8 else arr.astype(np.int32)) if arr.max() > 0 else []
    todo = [(name, boxes[value - 1], value) for value, name in sorted(table.labels.items()) if value - 1 < len(boxes) and boxes[value - 1] is not None]
    order = [name for name, _b, _v in todo]  # the order returned: by label value
    # The bones in the largest boxes first: their closing, the longest step, starts earliest.
    todo.sort(key=lambda t: -int(np.prod([s_.stop - s_.start for s_ in t[1]])))
    finished: dict[str, object] = {}
    workers = min(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), len(todo))
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None

    def prepare(value: int, box: tuple[slice, ...]) -> tuple[NDArray[np.bool_], int]:
        mask = arr[box] == value
        return _without_specks(mask), int(np.count_nonzero(mask))

    try:
        # The next bone's mask (its specks removed) is prepared on a worker while this one's VTK
        # steps run: one mask ahead, not all (a whole-body label map has many bones).
        job = pool.submit(prepare, todo[0][2], todo[0][1]) if pool is not None and todo else None
        for at, (name, box, value) in enumerate(todo):
            mask, n_voxels = job.result() if job is not None else prepare(value, box)
            job = pool.submit(prepare, todo[at + 1][2], todo[at + 1][1]) if pool is not None and at + 1 < len(todo) else None
            surface = _surface_ijk(mask, name, smoothing_iterations, passband, (box[2].start, box[1].start, box[0].start))
            del mask
            args = (*surface, labels.lps_from_ijk, name, target_triangles, n_voxels)
            finished[name] = pool.submit(_closed_lps, *args) if pool is not None else _closed_lps(*args)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return {name: _polydata(*(r.result() if isinstance(r, Future) else r)) for name, r in ((n, finished[n]) for n in order)}


def is_watertight(mesh: pv.PolyData) -> bool:
    """True when every edge is shared by exactly two consistently wound triangles (trimesh)."""
    tm = trimesh.Trimesh(np.asarray(mesh.points), _faces_of(mesh.triangulate()), process=True)
    return bool(tm.is_watertight and tm.is_winding_consistent)
