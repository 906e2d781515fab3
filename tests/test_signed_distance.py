"""BoneSurface.signed_distance_mm against independent references, on small, concave and long bones.

References (independent of VTK's locators): inside/outside from the generalized winding number
(solid angles, Van Oosterom & Strackee 1983: exact for a closed surface), and the exact distance
from a brute-force closest point on every candidate triangle (``trimesh.triangles.closest_point``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import pyvista as pv
from scipy.spatial import cKDTree
from trimesh.triangles import closest_point as closest_point_on_triangles

from orthonav.navigation.guidance import BoneSurface

PATELLA_STL = "real_bone_surfaces/knee_vhf_left/VHF_Left_Bone_Patella_smooth.stl"


def _triangles(mesh: pv.PolyData) -> np.ndarray:
    tri = mesh.triangulate()
    return np.asarray(tri.points, dtype=np.float64)[tri.faces.reshape(-1, 4)[:, 1:]]  # (F, 3, 3)


def winding_inside(mesh: pv.PolyData, points: np.ndarray) -> np.ndarray:
    """Inside test by the generalized winding number |w| > 1/2 (either winding of the mesh)."""
    t = _triangles(mesh)
    out = np.empty(len(points), dtype=bool)
    for s in range(0, len(points), 64):
        p = points[s:s + 64, None, None, :]
        a, b, c = t[None, :, 0] - p[:, :, 0], t[None, :, 1] - p[:, :, 0], t[None, :, 2] - p[:, :, 0]
        la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
        det = np.einsum("...i,...i", a, np.cross(b, c))
        den = la * lb * lc + np.einsum("...i,...i", a, b) * lc + np.einsum("...i,...i", b, c) * la + np.einsum("...i,...i", c, a) * lb
        w = np.sum(2.0 * np.arctan2(det, den), axis=1) / (4.0 * math.pi)
        out[s:s + 64] = np.abs(w) > 0.5
    return out


def exact_distance(mesh: pv.PolyData, points: np.ndarray) -> np.ndarray:
    """Unsigned distance (mm) to the nearest triangle: brute force over the triangles that can be nearest."""
    t = _triangles(mesh)
    centroid = t.mean(axis=1)
    radius = np.max(np.linalg.norm(t - centroid[:, None, :], axis=-1), axis=1)
    upper, _ = cKDTree(np.asarray(mesh.points)).query(points)  # nearest vertex: an upper bound
    out = np.empty(len(points))
    for k, p in enumerate(points):
        cand = np.flatnonzero(np.linalg.norm(centroid - p, axis=1) - radius <= upper[k] + 1e-9)
        q = closest_point_on_triangles(t[cand], np.repeat(p[None], len(cand), axis=0))
        out[k] = np.min(np.linalg.norm(q - p, axis=1))
    return out


def random_points(mesh: pv.PolyData, n: int, max_mm: float, seed: int) -> np.ndarray:
    """Points 0..``max_mm`` from random surface points in random directions, half of them from
    the centre in random directions (inside and out)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.asarray(mesh.points)
    from_surface = v[rng.integers(len(v), size=n // 2)] + u[: n // 2] * rng.uniform(0.0, max_mm, size=(n // 2, 1))
    centre = np.asarray(mesh.center)
    from_centre = centre + u[n // 2:] * rng.uniform(0.0, max_mm, size=(n - n // 2, 1))
    return np.vstack([from_surface, from_centre])


def check_against_references(surface: BoneSurface, points: np.ndarray) -> dict[str, int]:
    """Sign always right; magnitude exact in the band, at most ``far_error_mm`` over beyond it."""
    inside = winding_inside(surface.mesh, points)
    want = exact_distance(surface.mesh, points)
    got = np.array([surface.signed_distance_mm(p) for p in points])
    contains = np.array([surface.contains(p) for p in points])
    clear = want > 1e-6  # a point on the surface has no side
    wrong = np.flatnonzero(clear & ((got < 0) != inside))
    assert wrong.size == 0, f"{wrong.size} wrong signs, e.g. {points[wrong[:3]]}: got {got[wrong[:3]]}, exact {want[wrong[:3]]}"
    far = want > surface.exact_band_mm
    assert np.array_equal(contains[far], inside[far])
    band = want <= surface.exact_band_mm - surface.far_error_mm  # nearest vertex within the band: exact
    np.testing.assert_allclose(np.abs(got[band]), want[band], atol=1e-6)
    over = np.abs(got) - want
    assert np.all(over >= -1e-6) and np.all(over <= surface.far_error_mm + 1e-6)
    return {"inside": int(inside.sum()), "outside": int((~inside).sum()), "band": int(band.sum()), "near": int((~far).sum()),
            "far": int(far.sum())}


@pytest.fixture(scope="module")
def real_patella(shared_data) -> BoneSurface:
    path = shared_data / PATELLA_STL
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return BoneSurface(pv.read(path), "patella")


def test_real_patella_sign_everywhere_and_bounded_magnitude(real_patella):
    """The VHF patella (6.5k faces), 3000 points 0-300 mm from it in random directions."""
    n = check_against_references(real_patella, random_points(real_patella.mesh, 3000, 300.0, seed=1))
    assert n["inside"] > 100 and n["band"] > 200 and n["far"] > 2000


def test_far_points_around_the_patella_are_outside_in_every_direction(real_patella):
    """The issue's case: 100-300 mm outside the patella, in 2000 random directions."""
    rng = np.random.default_rng(2)
    u = rng.normal(size=(2000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    pts = np.asarray(real_patella.mesh.center) + u * rng.uniform(100.0, 300.0, size=(2000, 1))
    got = np.array([real_patella.signed_distance_mm(p) for p in pts])
    assert np.all(got > 0.0)
    over = got - exact_distance(real_patella.mesh, pts)
    assert np.all(over >= -1e-6) and np.all(over <= real_patella.far_error_mm + 1e-6)


def test_phantom_patella(small_knee_phantom):
    """The knee phantom's patella (marching cubes of its SDF), inward winding on purpose."""
    mesh = small_knee_phantom.truth_meshes["patella"].copy()
    mesh.flip_faces(inplace=True)
    s = BoneSurface(mesh, "patella")
    n = check_against_references(s, random_points(s.mesh, 2000, 300.0, seed=3))
    assert n["inside"] > 50 and n["band"] > 100 and n["far"] > 1000


def _c_shape() -> pv.PolyData:
    """A thick C (an annulus R 60, width 30, height 30 mm with a 40 mm slot cut out): concave."""
    g = pv.ImageData(dimensions=(76, 76, 26), spacing=(2.0, 2.0, 2.0), origin=(-75.0, -75.0, -25.0))
    x, y, z = (np.asarray(g.points)[:, k] for k in range(3))
    ring = np.maximum(np.abs(np.hypot(x, y) - 50.0) - 15.0, np.abs(z) - 15.0)
    slot = np.maximum(-x, np.abs(y) - 20.0)  # x > 0, |y| < 20
    g.point_data["f"] = np.maximum(ring, -slot)
    return g.contour([0.0], scalars="f").triangulate().clean()


def test_concave_shapes_c_and_torus():
    c = BoneSurface(_c_shape(), "c-shape")
    assert c.mesh.n_open_edges == 0
    pts = random_points(c.mesh, 1000, 150.0, seed=4)
    # And points in the hole and in the slot, where a nearest-vertex normal points the wrong way.
    rng = np.random.default_rng(5)
    hole = np.c_[rng.uniform(-20, 20, (200, 2)), rng.uniform(-30, 30, 200)]
    slot = np.c_[rng.uniform(35, 80, 200), rng.uniform(-19, 19, 200), rng.uniform(-30, 30, 200)]
    n = check_against_references(c, np.vstack([pts, hole, slot]))
    assert n["inside"] > 50 and n["far"] > 400
    ring = pv.ParametricTorus(ringradius=60.0, crosssectionradius=18.0, u_res=90, v_res=40, w_res=40)
    torus = BoneSurface(ring.triangulate().clean(), "torus")
    n = check_against_references(torus, random_points(torus.mesh, 1000, 150.0, seed=6))
    assert n["inside"] > 50 and n["far"] > 400


def _long_bone() -> pv.PolyData:
    """A surface of revolution 420 mm long: 13 mm shaft radius, 30-35 mm ends (a femur-like dumbbell)."""
    z = np.linspace(0.0, 420.0, 141)
    r = 13.0 + 22.0 * np.exp(-((z - 30.0) / 35.0) ** 2) + 17.0 * np.exp(-((z - 390.0) / 30.0) ** 2)
    r *= np.sqrt(np.clip(1.0 - ((z - 210.0) / 210.0) ** 8, 0.0, 1.0))  # closes on the axis at both ends
    profile = pv.lines_from_points(np.c_[r, np.zeros_like(z), z])
    return profile.extrude_rotate(resolution=48, capping=False).triangulate().clean(tolerance=1e-6)


def test_deep_inside_a_long_bone():
    s = BoneSurface(_long_bone(), "femur")
    assert s.mesh.n_open_edges == 0
    rng = np.random.default_rng(7)
    z = rng.uniform(5.0, 415.0, 700)
    axis = np.c_[rng.normal(scale=3.0, size=(700, 2)), z]  # along the medullary axis, 10-35 mm deep
    n = check_against_references(s, np.vstack([axis, random_points(s.mesh, 700, 300.0, seed=8)]))
    assert n["inside"] > 700 and n["far"] > 700


def test_non_finite_and_huge_points():
    s = BoneSurface(pv.Sphere(radius=20.0, theta_resolution=40, phi_resolution=40), "ball")
    assert math.isnan(s.signed_distance_mm([math.nan, 0.0, 0.0]))
    assert math.isnan(s.signed_distance_mm([0.0, math.inf, 0.0]))
    assert not s.contains([math.nan, 0.0, 0.0])
    d = s.signed_distance_mm([3e38, 0.0, 0.0])
    assert math.isfinite(d) and d == pytest.approx(3e38)
    assert s.signed_distance_mm([0.0, 0.0, -6000.0]) == pytest.approx(5980.0, abs=s.far_error_mm)


def test_nearest_surface_equals_the_full_scan():
    """Skipping bones by their bounding box changes nothing: same distance, same bone, ties to the first."""
    from orthonav.navigation.guidance import nearest_surface

    ball = pv.Sphere(radius=15.0, theta_resolution=30, phi_resolution=30)
    surfaces = [("a", BoneSurface(ball.translate((0.0, 0.0, 0.0), inplace=False))),
                ("b", BoneSurface(ball.translate((60.0, 0.0, 0.0), inplace=False))),
                ("c", BoneSurface(_long_bone().translate((0.0, 80.0, -200.0), inplace=False))),
                ("a_again", BoneSurface(ball.translate((0.0, 0.0, 0.0), inplace=False)))]
    rng = np.random.default_rng(9)
    for p in np.vstack([rng.uniform(-150.0, 250.0, size=(400, 3)), [[30.0, 0.0, 0.0], [1e4, 0.0, 0.0]]]):
        want, bone = math.nan, ""
        for name, s in surfaces:
            d = s.signed_distance_mm(p)
            if not math.isfinite(want) or abs(d) < abs(want):
                want, bone = d, name
        assert nearest_surface(p, surfaces) == (want, bone)
    for d, bone in (nearest_surface([math.nan, 0.0, 0.0], surfaces), nearest_surface([0.0, 0.0, 0.0], [])):
        assert math.isnan(d) and bone == ""


def test_sharp_convex_and_concave_edges_in_the_exact_band():
    """Voxel blocks (an L with a step: 90 degree convex and concave edges, large flat triangles):
    points around every vertex and edge, where the sign comes from the normal at the closest point."""
    g = pv.ImageData(dimensions=(5, 5, 4), spacing=(20.0, 20.0, 20.0))
    cells = np.zeros((4, 4, 3))
    cells[0:3, 0:1, :] = 1
    cells[0:1, 0:3, :] = 1
    cells[1:2, 1:3, 1:2] = 1
    g.cell_data["v"] = cells.ravel(order="F")
    s = BoneSurface(g.threshold(0.5, scalars="v").extract_surface(algorithm="dataset_surface").triangulate().clean(), "blocks")
    assert s.mesh.n_open_edges == 0
    rng = np.random.default_rng(10)
    v = np.asarray(s.mesh.points)
    b = np.asarray(s.mesh.bounds)
    pts = np.vstack([v[rng.integers(len(v), size=1500)] + rng.normal(scale=2.0, size=(1500, 3)),
                     rng.uniform(b[::2] - 15.0, b[1::2] + 15.0, size=(1500, 3))])
    n = check_against_references(s, pts)
    assert n["inside"] > 500 and n["near"] > 2000  # (large triangles: far_error_mm exceeds the band here)
