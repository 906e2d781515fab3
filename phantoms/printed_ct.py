"""A CT of exactly what is printed: the printable phantom scanned in air, and its case folder.

The printed model (:mod:`orthonav.phantoms.printable`, print-bed "phantom frame", mm) is
voxelised on a grid with the phantom CT's direction matrix, placed by ``ct_from_phantom``, so
the divots' ``apex_ct_lps_mm`` and the truth landmarks inside the printed region are valid
in this CT (LPS mm). Partial volume by 2 x 2 x 2 sub-voxel occupancy, a Gaussian blur of 0.6
voxel and Gaussian noise, rounded to int16 HU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyvista as pv
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from orthonav.core.case import Case, LabelTable, write_labels_table
from orthonav.core.meshio import write_mesh
from orthonav.core.schema import save_model
from orthonav.core.transforms import apply, invert
from orthonav.core.volume import Volume, write_volume

from .printable import PrintedPhantom, make_printable
from .render import DEFAULT_HU, SyntheticPhantom, fit_grid
from .truth import write_truth

PRINT_LABELS = {"femur": 1, "tibia": 2, "support": 5}  # the knee's; other kinds: see _print_labels


def _print_labels(phantom: SyntheticPhantom, printed: PrintedPhantom) -> dict[str, int]:
    """Label values of the printed CT: each printed bone keeps its truth label; the support
    (base, pillars, mount) is one more than the largest truth label (5 for the knee)."""
    bones = printed.spec.printed_bones or ["femur", "tibia"]
    out = {b: int(phantom.truth.bones[b]) for b in bones}
    out["support"] = max(int(v) for v in phantom.truth.bones.values()) + 1
    return out


def stencil_mask(mesh: pv.PolyData, spacing, origin, shape_ijk) -> NDArray[np.bool_]:
    """Inside test of a closed mesh at the centres of an axis-aligned grid (scan-line stencil);
    returns a (nk, nj, ni) bool array."""
    import vtk
    from vtk.util import numpy_support

    ni, nj, nk = (int(x) for x in shape_ijk)
    st = vtk.vtkPolyDataToImageStencil()
    st.SetInputData(mesh)
    st.SetOutputSpacing(*[float(x) for x in spacing])
    st.SetOutputOrigin(*[float(x) for x in origin])
    st.SetOutputWholeExtent(0, ni - 1, 0, nj - 1, 0, nk - 1)
    st.SetTolerance(0.0)
    img = vtk.vtkImageData()
    img.SetSpacing(*[float(x) for x in spacing])
    img.SetOrigin(*[float(x) for x in origin])
    img.SetExtent(0, ni - 1, 0, nj - 1, 0, nk - 1)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    img.GetPointData().GetScalars().Fill(1)
    cut = vtk.vtkImageStencil()
    cut.SetInputData(img)
    cut.SetStencilConnection(st.GetOutputPort())
    cut.ReverseStencilOff()
    cut.SetBackgroundValue(0)
    cut.Update()
    a = numpy_support.vtk_to_numpy(cut.GetOutput().GetPointData().GetScalars())
    return a.reshape(nk, nj, ni) > 0


def render_printed_ct(
    phantom: SyntheticPhantom,
    printed: PrintedPhantom,
    *,
    spacing_mm: tuple[float, float, float] = (0.8, 0.8, 1.0),
    material_hu: float | None = None,
    noise_hu: float = 15.0,
    seed: int = 0,
) -> tuple[Volume, Volume, LabelTable]:
    """CT (int16 HU) and labels of the printed phantom scanned in air, in the phantom CT's frame.

    The grid uses the phantom CT's direction matrix and ``ct_from_phantom``, so the divots'
    ``apex_ct_lps_mm`` and the phantom truth landmarks inside the printed region are valid in
    this CT. Labels: each printed bone its truth label (print material within 0.5 mm of that
    true bone; knee: femur 1, tibia 2), support = largest truth label + 1 (knee: 5; base,
    pillars, arm, mount).

    Returns
    -------
    (Volume, Volume, LabelTable)
    """
    spec = printed.spec
    hu = float(spec.material_hu if material_hu is None else material_hu)
    ct_from_phantom = np.array(spec.ct_from_phantom, dtype=np.float64)
    pts = np.asarray(printed.mesh.points)
    bounds = np.stack([pts.min(axis=0) - 1.0, pts.max(axis=0) + 1.0])
    grid = fit_grid(bounds, ct_from_phantom, phantom.ct.direction, spacing_mm, margin_mm=8.0)
    sp = grid.spacing_mm
    # the mesh in the grid's axis-aligned frame (mm along i, j, k from voxel (0, 0, 0))
    ijk_from_phantom = np.linalg.inv(grid.lps_from_ijk) @ ct_from_phantom
    mesh_g = printed.mesh.copy()
    mesh_g.points = apply(ijk_from_phantom, pts) * sp
    sub = 2  # partial volume: 2 x 2 x 2 sub-voxel occupancy
    fine = stencil_mask(mesh_g, sp / sub, -0.5 * sp + 0.5 * sp / sub, tuple(n * sub for n in grid.shape_ijk))
    nk, nj, ni = grid.shape_zyx
    occ = fine.reshape(nk, sub, nj, sub, ni, sub).mean(axis=(1, 3, 5)).astype(np.float32)
    centre = stencil_mask(mesh_g, sp, np.zeros(3), grid.shape_ijk)  # voxel centres inside -> label
    air = DEFAULT_HU["air"]
    vol = air + occ * (hu - air)
    vol = gaussian_filter(vol, 0.6, mode="nearest")
    if noise_hu > 0:
        vol += np.random.default_rng(seed).normal(0.0, noise_hu, size=vol.shape).astype(np.float32)
    ct = Volume(np.clip(np.rint(vol), -1024, 32767).astype(np.int16), grid.lps_from_ijk.copy())
    print_labels = _print_labels(phantom, printed)
    labels = Volume(np.where(centre, print_labels["support"], 0).astype(np.uint8), grid.lps_from_ijk.copy())
    # split the print into the bones it reproduces
    lab = labels.array_zyx
    kji = np.nonzero(lab > 0)
    p_ct = ct.to_lps(np.stack([kji[2], kji[1], kji[0]], axis=1).astype(np.float64))
    limb_from_ct = invert(phantom.ct_from_limb)
    p_limb = apply(limb_from_ct, p_ct)
    for bone, value in print_labels.items():
        if bone == "support":
            continue
        near = phantom.bones[bone].sdf(p_limb) < 0.5
        lab[kji[0][near], kji[1][near], kji[2][near]] = value
    side = phantom.truth.side if phantom.truth.side in ("left", "right") else None
    table = LabelTable(labels={v: k for k, v in print_labels.items()}, backend="printed phantom truth", side=side)
    return ct, labels, table


def write_printed_case(phantom: SyntheticPhantom, case_dir: str | Path, *, spacing_mm: tuple[float, float, float] = (0.8, 0.8, 1.0), seed: int = 0) -> Case:
    """A case whose ``ct.nii.gz`` is the CT of the printed phantom (what ``orthonav phantom
    knee|hip|long-bone CASE --printed`` writes): ``print/phantom_<kind>.stl|json``,
    ``truth/labels.nii.gz|json`` and ``truth/truth.json`` (the source phantom's truth;
    landmarks outside the printed region, e.g. the knee's hip and ankle centres, are not in
    this CT)."""
    case = Case(case_dir)
    printed = make_printable(phantom)
    ct, labels, table = render_printed_ct(phantom, printed, spacing_mm=spacing_mm, seed=seed)
    write_volume(ct, case.ct)
    write_volume(labels, case.truth_dir / "labels.nii.gz")
    write_labels_table(case.truth_dir / "labels.json", table)
    write_truth(case.root, phantom.truth)
    write_mesh(printed.mesh, case.print_dir / printed.spec.stl)
    save_model(case.print_dir / f"phantom_{printed.spec.kind}.json", printed.spec)
    return case


__all__ = ["PRINT_LABELS", "render_printed_ct", "stencil_mask", "write_printed_case"]
