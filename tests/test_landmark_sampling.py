"""The landmark code samples the surface, not its tessellation (planning.landmarks.surface_samples)."""

from __future__ import annotations

import numpy as np
import pyvista as pv
from orthonav.planning.landmarks import MAX_SAMPLE_EDGE_MM, split_long_edges, surface_samples


def _edges(mesh: pv.PolyData) -> np.ndarray:
    f = mesh.faces.reshape(-1, 4)[:, 1:]
    p = np.asarray(mesh.points)
    return np.concatenate([np.linalg.norm(p[f[:, k]] - p[f[:, (k + 1) % 3]], axis=1) for k in range(3)])


def test_long_edges_are_split_on_the_surface_and_area_is_kept():
    coarse = pv.Sphere(radius=30.0, theta_resolution=12, phi_resolution=12).triangulate()  # ~8 mm edges
    assert _edges(coarse).max() > 5.0
    fine = split_long_edges(coarse, MAX_SAMPLE_EDGE_MM)
    assert _edges(fine).max() <= MAX_SAMPLE_EDGE_MM + 1e-9
    assert fine.n_points > 10 * coarse.n_points
    # the new points lie on the old triangles (the surface is unchanged): same area, and every
    # point within the coarse mesh's chord sag of the sphere (no point pushed out to the sphere)
    assert abs(fine.area - coarse.area) < 1e-5 * coarse.area
    assert np.abs(fine.compute_implicit_distance(coarse)["implicit_distance"]).max() < 1e-4  # (float32 points)
    s = surface_samples(coarse)
    assert abs(s.area.sum() - coarse.area) < 1e-5 * coarse.area
    assert len(s.points) == fine.n_points  # what the landmark code samples is the split mesh


def test_a_fine_mesh_is_sampled_as_it_is():
    fine = pv.Sphere(radius=10.0, theta_resolution=80, phi_resolution=80).triangulate()
    assert _edges(fine).max() <= MAX_SAMPLE_EDGE_MM
    assert split_long_edges(fine, MAX_SAMPLE_EDGE_MM) is fine
    np.testing.assert_array_equal(surface_samples(fine).points, np.asarray(fine.points))
