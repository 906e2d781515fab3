"""Stability of the proximal femur's landmarks and angles (issue 14 item 3): the femoral head
centre must move <= 1 mm and the neck-shaft angle and shaft axis <= 1 deg when the same bone
is re-meshed, decimated, noised or segmented differently.

Perturbations (seeded; tests/femur_perturb.py) of the two real femurs of
``../shared/data/real_bone_surfaces/femur_libhip_m4/``:
- re-meshing: voxelised on a 1 mm grid at a random sub-voxel offset and meshed again by the
  product's mesher (flying edges, windowed-sinc smoothing), one draw per femur;
- decimation to 20 % of the triangles (quadric);
- Gaussian noise of 0.3 mm along the vertex normals, two draws per femur.
And a different segmentation of the same CT: the small hip phantom's true surfaces against the
surfaces meshed from its label map (1.8 x 1.8 x 2.4 mm voxels).

Measured maxima (m4, these draws): head centre 0.15 mm, head radius 0.05 mm, neck-shaft angle
0.36 deg, shaft axis 0.29 deg; the neck axis direction itself moves up to 0.76 deg (surface
noise). On the phantom's label-map surfaces the head centre moves 0.03 mm, the shaft 0.05 deg
and the neck-shaft angle 0.30 / 0.55 deg (left / right). The neck axis is the least-squares
line through the neck's cross-section centroids from the head centre to its narrowest
section (docs/anatomy.md); the earlier axis through the surface ring 2-5 mm beyond the head
moved the angle 1.6 / 1.8 deg there (coarse 2.4 mm voxels at the head-neck junction).
"""

from __future__ import annotations

import numpy as np
import pytest
from femur_perturb import decimate, remesh, surface_noise

pytestmark = pytest.mark.slow

HEAD_MM = 1.0
ANGLE_DEG = 1.0


def _angle(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


def _analyse(mesh):
    from orthonav.planning.landmarks import surface_samples
    from orthonav.planning.tha import analyse_proximal_femur

    return analyse_proximal_femur(mesh, surface_samples(mesh))


def _moves(ref, f) -> dict[str, float]:
    return {
        "head_mm": float(np.linalg.norm(f.head_centre_lps_mm - ref.head_centre_lps_mm)),
        "radius_mm": abs(f.head_radius_mm - ref.head_radius_mm),
        "neck_shaft_deg": abs(f.neck_shaft_deg - ref.neck_shaft_deg),
        "shaft_deg": _angle(f.shaft.direction_lps, ref.shaft.direction_lps),
    }


@pytest.fixture(scope="module")
def m4(shared_data):
    import pyvista as pv

    folder = shared_data / "real_bone_surfaces" / "femur_libhip_m4"
    if not folder.is_dir():
        pytest.skip(f"real femurs not found at {folder}")
    out = {}
    for s in ("l", "r"):
        mesh = pv.read(folder / f"m4_{s}femur_mm.stl")
        out[s] = (mesh, _analyse(mesh))
    return out


def _check(ref, f, what):
    assert f.missing == (), (what, f.missing)
    mv = _moves(ref, f)
    assert mv["head_mm"] <= HEAD_MM, (what, mv)
    assert mv["radius_mm"] <= HEAD_MM, (what, mv)
    assert mv["neck_shaft_deg"] <= ANGLE_DEG, (what, mv)
    assert mv["shaft_deg"] <= ANGLE_DEG, (what, mv)


def test_remeshing(m4):
    rng = np.random.default_rng(14)
    for s, (mesh, ref) in m4.items():
        _check(ref, _analyse(remesh(mesh, 1.0, rng.uniform(0.0, 1.0, 3))), f"{s} remeshed")


def test_decimation_to_20_percent(m4):
    for s, (mesh, ref) in m4.items():
        dec = decimate(mesh, 0.2)
        assert dec.n_cells <= 0.21 * mesh.n_cells
        _check(ref, _analyse(dec), f"{s} decimated")


def test_surface_noise_0_3_mm(m4):
    for s, (mesh, ref) in m4.items():
        for seed in (0, 1):
            noisy = surface_noise(mesh, 0.3, seed)
            assert 0.25 < np.std(np.linalg.norm(np.asarray(noisy.points) - np.asarray(mesh.points), axis=1)) * np.sqrt(np.pi / (np.pi - 2)) < 0.35
            _check(ref, _analyse(noisy), f"{s} noise seed {seed}")


@pytest.fixture(scope="module")
def phantom_femurs(small_hip_phantom):
    """(true surface, surface meshed from the phantom's label map) per femur."""
    from orthonav.segmentation.meshing import mask_mesh

    ph = small_hip_phantom
    labels = ph.labels.array_zyx
    out = {}
    for value, name in ph.label_table.labels.items():
        if name.startswith("femur_"):
            seg = mask_mesh(labels == value, ph.labels.lps_from_ijk, name=name)
            out[name] = (_analyse(ph.truth_meshes[name]), _analyse(seg))
    assert set(out) == {"femur_left", "femur_right"}
    return out


def test_other_segmentation_of_the_same_ct_head_and_shaft(phantom_femurs):
    for name, (ref, f) in phantom_femurs.items():
        mv = _moves(ref, f)
        assert mv["head_mm"] <= HEAD_MM and mv["radius_mm"] <= HEAD_MM, (name, mv)
        assert mv["shaft_deg"] <= ANGLE_DEG, (name, mv)


def test_other_segmentation_of_the_same_ct_neck_shaft_angle(phantom_femurs):
    """Measured 0.30 / 0.55 deg (2.4 mm voxels at the head-neck junction)."""
    for name, (ref, f) in phantom_femurs.items():
        assert _moves(ref, f)["neck_shaft_deg"] <= ANGLE_DEG, (name, _moves(ref, f))
