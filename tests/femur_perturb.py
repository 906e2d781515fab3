"""Perturbations of a bone surface for the landmark stability tests (issue 14 item 3):
re-meshing through a voxel mask, decimation, Gaussian surface noise along the normals.
All seeded; meshes in LPS mm."""

from __future__ import annotations

import numpy as np
import pyvista as pv


def voxelise(mesh: pv.PolyData, spacing_mm: float, offset_mm=0.0) -> tuple[np.ndarray, np.ndarray]:
    """A closed surface scan-converted (VTK's polygon-to-stencil) on a ``spacing_mm`` grid shifted
    by ``offset_mm`` with a 3 mm margin: (bool mask indexed (z, y, x): a voxel is in when its
    centre is inside, (4, 4) ``lps_from_ijk``)."""
    import vtk
    from vtkmodules.util.numpy_support import vtk_to_numpy

    lo = np.asarray(mesh.bounds, dtype=np.float64)[0::2] - 3.0 + offset_mm
    hi = np.asarray(mesh.bounds, dtype=np.float64)[1::2] + 3.0
    dims = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    img = vtk.vtkImageData()
    img.SetOrigin(*lo)
    img.SetSpacing(spacing_mm, spacing_mm, spacing_mm)
    img.SetDimensions(*dims)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    img.GetPointData().GetScalars().Fill(1)
    sten = vtk.vtkPolyDataToImageStencil()
    sten.SetInputData(mesh)
    sten.SetOutputOrigin(*lo)
    sten.SetOutputSpacing(spacing_mm, spacing_mm, spacing_mm)
    sten.SetOutputWholeExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    cut = vtk.vtkImageStencil()
    cut.SetInputData(img)
    cut.SetStencilConnection(sten.GetOutputPort())
    cut.ReverseStencilOff()
    cut.SetBackgroundValue(0)
    cut.Update()
    mask_zyx = vtk_to_numpy(cut.GetOutput().GetPointData().GetScalars()).reshape(dims[::-1]).astype(bool)
    lps_from_ijk = np.eye(4)
    lps_from_ijk[:3, :3] *= spacing_mm
    lps_from_ijk[:3, 3] = lo
    return mask_zyx, lps_from_ijk


def remesh(mesh: pv.PolyData, spacing_mm: float, offset_mm: np.ndarray) -> pv.PolyData:
    """The surface voxelised on a ``spacing_mm`` grid shifted by ``offset_mm`` (:func:`voxelise`)
    and meshed again by the product's mesher
    (:func:`orthonav.segmentation.meshing.mask_mesh`: flying edges, windowed-sinc
    smoothing, watertight)."""
    from orthonav.segmentation.meshing import mask_mesh

    mask_zyx, lps_from_ijk = voxelise(mesh, spacing_mm, offset_mm)
    return mask_mesh(mask_zyx, lps_from_ijk, name="femur", target_triangles=0)


def decimate(mesh: pv.PolyData, keep_fraction: float) -> pv.PolyData:
    """Quadric decimation to ``keep_fraction`` of the triangles (the surface stays closed)."""
    return mesh.triangulate().decimate(1.0 - keep_fraction).clean()


def surface_noise(mesh: pv.PolyData, sigma_mm: float, seed: int) -> pv.PolyData:
    """Every vertex moved along its normal by N(0, ``sigma_mm``) (seeded)."""
    m = mesh.compute_normals(point_normals=True, cell_normals=False, auto_orient_normals=True, split_vertices=False)
    rng = np.random.default_rng(seed)
    out = m.copy()
    out.points = np.asarray(m.points) + rng.normal(0.0, sigma_mm, m.n_points)[:, None] * np.asarray(m.point_data["Normals"])
    return out
