"""Stability of the knee (TKA) landmarks and angles under perturbations of the surfaces
(issue 14, item 3): re-meshing (voxelised at 1 mm and meshed again by the segmentation's
marching cubes), decimation to 20 % of the triangles, 0.3 mm Gaussian noise along the
normals (3 seeded draws) and a different segmentation of the same CT (the small knee
phantom's truth label map, 1.13 x 1.13 x 2.4 mm voxels, meshed by the pipeline, against its
analytic surfaces). Subjects: the small knee phantom's true meshes (all TKA landmarks and
angles) and the Visible Human Female tibia (the tibial ones).

Targets: landmarks move <= 1 mm, angles <= 1 deg. Measured (seeded draws; the test asserts
these with a small margin where the target is not met, and says why):

* phantom, decimated to 20 %: every landmark <= 0.3 mm, every angle <= 0.12 deg (target met).
* phantom, re-meshed / 0.3 mm noise: every landmark but the plateau's <= 0.55 mm (extreme
  points are the apex of a paraboloid fitted to the 3 mm cap, planning.landmarks.cap_point;
  with the centroid of a 0.5 mm cap they moved up to 2.1 mm: the largest noise value won);
  HKA, LDFA, MPTA, slope, femoral rotation <= 0.55 deg (target met). The plateau centres (the
  deepest 0.5 mm cap of a shallow dish) and the rim points 15 mm from them move up to 1.7 mm.
* phantom, truth labels at 2.4 mm slices: plateau centres and rim points 2.2-2.9 mm, MPTA
  1.3 deg (thick slices round the plateau off); HKA, LDFA, slope <= 1 deg.
* VHF tibia: MPTA <= 0.9 deg, slope <= 1.0 deg, except re-meshing (slope 1.38 deg: the
  medial plateau plane is refitted to a re-sampled, smoothed surface; 1.31 deg with the old
  extreme points); plateau centres move up to 2.7 mm in the plateau plane on a shallow real
  plateau but their height along the tibial axis (what the tibial resection is measured
  from) <= 0.6 mm, 1.3 mm in one draw. The plateau centre keeps the deepest 0.5 mm cap: a
  paraboloid apex there moved 6.9 mm (a real lateral plateau is flat or convex front to back).
"""

from __future__ import annotations

import numpy as np
import pytest
import pyvista as pv
import vtk
from orthonav.planning.tka.alignment import compute_angles, limb_frames
from orthonav.planning.tka.landmarks import find_landmarks, find_tibial_landmarks
from orthonav.segmentation.meshing import label_meshes, mask_mesh
from vtk.util.numpy_support import vtk_to_numpy

pytestmark = pytest.mark.slow

KNEE_BONES = ("femur", "tibia", "fibula", "patella")
MAIN_ANGLES = ("hka", "ldfa", "mpta", "slope")
LPS_FROM_VHF = np.diag([-1.0, -1.0, 1.0])


def remeshed(mesh: pv.PolyData, step_mm: float = 1.0) -> pv.PolyData:
    """Voxelise a closed surface at ``step_mm`` and mesh the mask again (pipeline meshing)."""
    b = np.asarray(mesh.bounds).reshape(3, 2)
    lo, hi = b[:, 0] - 2 * step_mm, b[:, 1] + 2 * step_mm
    n = np.ceil((hi - lo) / step_mm).astype(int) + 1
    img = vtk.vtkImageData()
    img.SetSpacing(step_mm, step_mm, step_mm)
    img.SetOrigin(*lo)
    img.SetDimensions(*n)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk_to_numpy(img.GetPointData().GetScalars())[:] = 1
    st = vtk.vtkPolyDataToImageStencil()
    st.SetInputData(mesh)
    st.SetOutputOrigin(*lo)
    st.SetOutputSpacing(step_mm, step_mm, step_mm)
    st.SetOutputWholeExtent(img.GetExtent())
    cut = vtk.vtkImageStencil()
    cut.SetInputData(img)
    cut.SetStencilConnection(st.GetOutputPort())
    cut.SetBackgroundValue(0)
    cut.Update()
    mask = vtk_to_numpy(cut.GetOutput().GetPointData().GetScalars()).reshape(n[2], n[1], n[0]).astype(bool)
    lps_from_ijk = np.eye(4)
    lps_from_ijk[:3, :3] *= step_mm
    lps_from_ijk[:3, 3] = lo
    return mask_mesh(mask, lps_from_ijk, name="remeshed", target_triangles=0)


def noisy(mesh: pv.PolyData, rng: np.random.Generator, sigma_mm: float = 0.3) -> pv.PolyData:
    m = mesh.copy()
    m.compute_normals(inplace=True, auto_orient_normals=True)
    n = np.asarray(m.point_data["Normals"])
    m.points = np.asarray(m.points) + rng.normal(0.0, sigma_mm, len(n))[:, None] * n
    return m


def perturbations(meshes: dict[str, pv.PolyData], seed: int):
    """(name, perturbed meshes) for re-meshing, decimation and 3 noise draws."""
    yield "re-meshed at 1 mm", {b: remeshed(m) for b, m in meshes.items()}
    yield "decimated to 20 %", {b: m.triangulate().decimate(0.8) for b, m in meshes.items()}
    rng = np.random.default_rng(seed)
    for i in range(3):
        yield f"0.3 mm noise #{i}", {b: noisy(m, rng) for b, m in meshes.items()}


def moves(ref: dict, other: dict) -> dict[str, float]:
    return {k: float(np.linalg.norm(np.subtract(other[k].position_lps_mm, ref[k].position_lps_mm))) for k in ref if k in other}


def angle_changes(ref: dict, other: dict) -> dict[str, float]:
    return {k: abs(other[k] - ref[k]) for k in ref}


@pytest.fixture(scope="module")
def phantom_figures(small_knee_phantom):
    true = {b: small_knee_phantom.truth_meshes[b] for b in KNEE_BONES}
    ref = find_landmarks(true)
    ref_a = compute_angles(ref)
    out = {}
    for name, meshes in perturbations(true, seed=1):
        lms = find_landmarks(meshes)
        out[name] = (moves(ref, lms), angle_changes(ref_a, compute_angles(lms)))
    seg = label_meshes(small_knee_phantom.labels, small_knee_phantom.label_table)
    lms = find_landmarks({b: seg[b] for b in KNEE_BONES})
    out["truth labels at 2.4 mm slices"] = (moves(ref, lms), angle_changes(ref_a, compute_angles(lms)))
    return out


def _worst(d: dict[str, float]) -> str:
    k = max(d, key=d.get)
    return f"{k} {d[k]:.2f}"


def test_knee_phantom_landmarks_and_angles_under_perturbation(phantom_figures):
    table = {name: (_worst(m), _worst(a)) for name, (m, a) in phantom_figures.items()}
    for name, (m, a) in phantom_figures.items():
        # The hip centre and the femoral knee centre hold to the target under every perturbation.
        for k in ("femoral_head_centre", "femoral_knee_centre"):
            assert m[k] <= 1.0, (name, k, m[k])
        if name.startswith("decimated"):  # the target holds
            assert max(m.values()) <= 1.0 and max(a.values()) <= 1.0, table
        elif name.startswith("truth labels"):  # 2.4 mm slices round the plateau off
            assert max(m.values()) <= 3.0 and a["mpta"] <= 1.35, table
            assert max(a[k] for k in ("hka", "ldfa", "slope", "femoral_rotation")) <= 1.0, table
        else:  # re-meshing and noise: the target holds but for the plateau (module docstring)
            plateau = {k for k in m if "plateau" in k} | {"tibial_knee_centre"}
            assert max(v for k, v in m.items() if k not in plateau) <= 0.7, table
            assert max(m.values()) <= 2.0, table
            assert max(a.values()) <= 0.7, table
            assert m["tibial_knee_centre"] <= 1.25 and m["ankle_centre"] <= 0.5, table


@pytest.fixture(scope="module")
def vhf(shared_data):
    folder = shared_data / "real_bone_surfaces" / "knee_vhf_left"
    if not folder.is_dir():
        pytest.skip(f"VHF knee surfaces not found at {folder}")
    out = {}
    for b in ("tibia", "fibula", "patella"):
        m = pv.read(folder / f"VHF_Left_Bone_{b.capitalize()}_smooth.stl")
        m.points = np.asarray(m.points) @ LPS_FROM_VHF.T
        out[b] = m
    return out


def test_vhf_tibial_landmarks_and_angles_under_perturbation(vhf):
    ref = find_tibial_landmarks(vhf, side="left")
    ref_a = compute_angles(ref)
    axis = limb_frames(ref).tibia_proximal
    table = {}
    for name, meshes in perturbations(vhf, seed=2):
        lms = find_tibial_landmarks(meshes, side="left")
        m, a = moves(ref, lms), angle_changes(ref_a, compute_angles(lms))
        table[name] = (_worst(m), _worst(a))
        assert a["mpta"] <= 1.0, table
        assert a["slope"] <= (1.5 if name.startswith("re-meshed") else 1.0), table
        assert max(m.values()) <= 3.3, table
        # The plateau centres' height along the tibial axis (the resection reference) holds
        # far better than their position in the plateau plane.
        for k in ("medial_plateau_centre", "lateral_plateau_centre"):
            dz = abs(float(np.dot(np.subtract(lms[k].position_lps_mm, ref[k].position_lps_mm), axis)))
            assert dz <= 1.4, (name, k, dz)
