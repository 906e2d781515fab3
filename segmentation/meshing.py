"""Per-bone surface meshes from a label map, in LPS millimetres.

For each bone: the binary mask is cropped with a one-voxel (or more) zero pad so the surface
closes at the volume's edge, contoured at 0.5 by discrete-free flying edges (Schroeder,
Maynard & Geveci 2015, "Flying edges", IEEE LDAV) in *voxel index* space, smoothed by the
windowed-sinc filter (Taubin, Zhang & Golub 1996, "Optimal surface smoothing as filter
design", ECCV), decimated by quadric error (Garland & Heckbert 1997; fast-simplification),
and only then mapped to LPS with the volume's ``lps_from_ijk``. VTK image data carries no
direction matrix in most filters, so working in index space and applying the full affine at
the end is the one way that cannot lose the direction. The windowed-sinc filter is a
polynomial in the umbrella (uniform Laplacian) operator, so it commutes with that affine map.
Meshes are checked watertight and consistently oriented (outward normals) with trimesh and
repaired if needed.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyvista as pv
import trimesh
import vtk
from numpy.typing import NDArray
from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.transforms import apply
from orthonav.core.volume import Volume
from scipy import ndimage as ndi
from vtk.util import numpy_support

vtk.vtkSMPTools.SetBackend("STDThread")

#: Default triangle budget per bone (a femur at 0.5 mm keeps its shape well within 0.1 mm).
DEFAULT_TARGET_TRIANGLES = 60_000
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


def _decimate(points: NDArray[np.float64], faces: NDArray[np.int64], target_triangles: int) -> tuple[NDArray, NDArray]:
    if target_triangles <= 0 or len(faces) <= target_triangles:
        return points, faces
    import fast_simplification

    reduction = 1.0 - target_triangles / len(faces)
    p, f = fast_simplification.simplify(points.astype(np.float32), faces.astype(np.int32), target_reduction=reduction)
    return np.asarray(p, dtype=np.float64), np.asarray(f, dtype=np.int64)


def _make_watertight(points: NDArray[np.float64], faces: NDArray[np.int64], name: str) -> trimesh.Trimesh:
    """Merge duplicate vertices, drop degenerate faces, orient outward; raise if not closable."""
    tm = trimesh.Trimesh(points, faces, process=True, validate=True)
    if not tm.is_watertight:
        trimesh.repair.fill_holes(tm)
    if not tm.is_watertight:
        # Keep the watertight pieces (a decimation artefact can leave a sliver open).
        parts = [p for p in tm.split(only_watertight=False) if p.is_watertight]
        if parts:
            tm = trimesh.util.concatenate(parts)
    if not tm.is_watertight:
        raise InputError(None, f"the surface of {name!r} could not be made watertight")
    # A closed surface of one body wound consistently needs only the sign of its volume checked
    # (flying edges and the decimation keep the winding: 0.7 s of trimesh's fix on a knee CT).
    if not (tm.is_winding_consistent and tm.body_count == 1):
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
    points_ijk, faces = _surface_ijk(mask_zyx, name, smoothing_iterations, passband, offset_ijk)
    return _polydata(*_closed_lps(points_ijk, faces, lps_from_ijk, name, target_triangles, int(mask_zyx.sum())))


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
    decimated, mapped to LPS mm, closed and oriented outward; (vertices, triangles)."""
    points_ijk, faces = _decimate(points_ijk, faces, target_triangles)
    points_lps = apply(lps_from_ijk, points_ijk)
    if np.linalg.det(lps_from_ijk[:3, :3]) < 0:  # a mirrored grid flips the winding
        faces = faces[:, ::-1]
    tm = _make_watertight(points_lps, faces, name)
    if len(tm.faces) == 0:  # a mask with voxels always has a surface: never return an empty one
        raise InputError(None, f"the surface of {name!r} came out empty ({n_voxels} voxels)")
    return np.asarray(tm.vertices), np.asarray(tm.faces)


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
    pipelines are not safe to run that way). The steps after them (decimation, which releases
    the GIL, and trimesh's closing) hold no VTK object: they run on worker threads (as many as
    SimpleITK's thread budget), beside the next bones' VTK steps. The surfaces are the same as
    one after the other.

    Returns
    -------
    dict
        bone name -> ``pv.PolyData`` triangle mesh (LPS mm, outward normals), in label order.
    """
    import SimpleITK as sitk

    arr = labels.array_zyx
    boxes = ndi.find_objects(arr if arr.dtype == np.uint8 else arr.astype(np.int32)) if arr.max() > 0 else []
    todo = [(name, boxes[value - 1], value) for value, name in sorted(table.labels.items()) if value - 1 < len(boxes) and boxes[value - 1] is not None]
    finished: dict[str, object] = {}
    workers = min(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), len(todo))
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for name, box, value in todo:
            mask = arr[box] == value
            surface = _surface_ijk(mask, name, smoothing_iterations, passband, (box[2].start, box[1].start, box[0].start))
            args = (*surface, labels.lps_from_ijk, name, target_triangles, int(np.count_nonzero(mask)))
            finished[name] = pool.submit(_closed_lps, *args) if pool is not None else _closed_lps(*args)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return {name: _polydata(*(r.result() if isinstance(r, Future) else r)) for name, r in finished.items()}


def is_watertight(mesh: pv.PolyData) -> bool:
    """True when every edge is shared by exactly two consistently wound triangles (trimesh)."""
    tm = trimesh.Trimesh(np.asarray(mesh.points), _faces_of(mesh.triangulate()), process=True)
    return bool(tm.is_watertight and tm.is_winding_consistent)
