"""Medial / lateral gaps (navigation/gaps.py) against brute force on the meshes and analytic truth.

The brute force is built independently with VTK (pyvista): each planned femoral cut plane
slices the femur mesh and the section is clipped by the other cuts' kept half-spaces, which
gives every vertex of the cut faces (a linear function's minimum over a planar face lies on its
boundary); those points (or every vertex of the femoral component) are moved into the tibia's
frame and their signed distance to the planned tibial cut plane taken, per compartment.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import pyvista as pv
from orthonav.core import transforms as tf
from orthonav.core.case import read_case_meshes
from orthonav.core.errors import InputError
from orthonav.navigation.alignment import kinematic_summary, knee_frames
from orthonav.navigation.gaps import GapGeometry, KneeGaps, gap_geometry, knee_gaps
from orthonav.planning.implants import implant_model
from orthonav.planning.tka.alignment import limb_frames

#: The brief: agreement with the brute-force mesh distance within 0.1 mm (measured over 41 poses:
#: 3.6e-5 mm to the cut faces, 3e-13 mm to the implant; the cut faces carry
#: manifold3d's float32 vertices).
BRUTE_TOL_MM = 0.1


@pytest.fixture(scope="module")
def knee(small_knee_phantom, tmp_path_factory):
    from orthonav.phantoms.synthetic import write_phantom_case
    from orthonav.planning.auto import auto_plan

    case = tmp_path_factory.mktemp("gap_knee")
    write_phantom_case(small_knee_phantom, case, printable=False)
    (case / "meshes").mkdir()
    for bone in ("femur", "tibia", "fibula", "patella"):
        shutil.copy(case / "truth" / "meshes" / f"{bone}.stl", case / "meshes" / f"{bone}.stl")
    plan = auto_plan(case)
    return plan, read_case_meshes(case)


@pytest.fixture(scope="module")
def geometries(knee):
    plan, meshes = knee
    return {s: gap_geometry(plan, meshes, surface=s) for s in ("cuts", "implant")}


def _about(axis, centre, deg):
    r = tf.rotation_about_axis(axis, math.radians(deg))
    return tf.make_rigid(r, np.asarray(centre) - r @ np.asarray(centre))


class Frame:
    """The plan's femoral split and knee axes (planning's limb frames)."""

    def __init__(self, plan):
        lms = {k: np.asarray(v.position_lps_mm) for k, v in plan.landmarks.items()}
        fr = limb_frames(lms)
        self.lat, self.ant, self.prox, self.t_axis = fr.femur_lateral, fr.femur_anterior, fr.femur_proximal, fr.tibia_proximal
        self.fkc = 0.5 * (lms["medial_epicondyle"] + lms["lateral_epicondyle"])
        self.ankle = lms["ankle_centre"]
        probe = tf.apply(_about(self.lat, self.fkc, 1.0), self.ankle) - self.ankle
        self.flex_sign = 1.0 if np.dot(probe, -self.ant) > 0 else -1.0

    def pose(self, flexion=0.0, varus=0.0, rotation=0.0, shift=(0.0, 0.0, 0.0)):
        """femur_ct_from_tibia_ct: flexion about the TEA, then varus about the floating axis."""
        p = _about(self.lat, self.fkc, self.flex_sign * flexion)
        e3 = p[:3, :3] @ self.t_axis
        f = np.cross(e3, self.lat)
        f /= np.linalg.norm(f)
        probe = tf.apply(_about(f, self.fkc, 1.0) @ p, self.ankle) - tf.apply(p, self.ankle)
        p = _about(f, self.fkc, (1.0 if np.dot(probe, -self.lat) > 0 else -1.0) * varus) @ p
        p = p @ _about(self.t_axis, self.fkc, rotation)
        return tf.make_rigid(translation_mm=shift) @ p


def _cut_face_points_vtk(femur: pv.PolyData, cuts) -> np.ndarray:
    out = []
    for i, (p, n) in enumerate(cuts):
        s = femur.slice(normal=n, origin=p)
        for j, (q, m) in enumerate(cuts):
            if j != i and s.n_points:
                s = s.clip(normal=m, origin=q, invert=True)  # keep (x - q) . m <= 0: the kept bone
        out.append(np.asarray(s.points))
    return np.vstack(out)


def _brute_gaps(points_femur_ct, plan, frame, pose) -> tuple[float, float]:
    cut = plan.cuts["proximal_tibia"]
    p0, n0 = np.asarray(cut.point_lps_mm), np.asarray(cut.normal_lps)
    in_tibia = pv.PolyData(points_femur_ct.copy()).transform(tf.invert(pose), inplace=False).points
    d = (np.asarray(in_tibia) - p0) @ n0
    medial = (points_femur_ct - frame.fkc) @ frame.lat < 0
    return float(d[medial].min()), float(d[~medial].min())


@pytest.fixture(scope="module")
def brute_points(knee):
    plan, meshes = knee
    cuts = [(np.asarray(c.point_lps_mm), np.asarray(c.normal_lps)) for c in plan.cuts.values() if c.bone == "femur"]
    comp = next(i for i in plan.implants if i.family == "tka_femoral")
    implant = implant_model(comp.family, comp.size).mesh().transform(np.asarray(comp.ct_from_implant), inplace=False)
    faces = _cut_face_points_vtk(meshes["femur"], cuts)
    frame = Frame(plan)
    near_knee = (faces - frame.fkc) @ frame.prox <= 70.0  # a saw cuts the distal femur only
    return {"cuts": faces[near_knee], "implant": np.asarray(implant.points), "cuts_everywhere": faces}


@pytest.mark.parametrize("surface", ["cuts", "implant"])
def test_gaps_match_brute_force_at_random_flexion_and_stress(knee, geometries, brute_points, surface):
    plan, _meshes = knee
    frame, geo = Frame(plan), geometries[surface]
    assert len(geo.points_ct_mm) < 1000  # a few hundred candidates: microseconds per frame
    rng = np.random.default_rng(7)
    worst = 0.0
    poses = [frame.pose()] + [frame.pose(rng.uniform(0, 120), rng.uniform(-5, 5), rng.uniform(-10, 10), rng.normal(0, 2, 3)) for _ in range(40)]
    for pose in poses:
        g = knee_gaps(pose, geo)
        bm, bl = _brute_gaps(brute_points[surface], plan, frame, pose)
        worst = max(worst, abs(g.medial_mm - bm), abs(g.lateral_mm - bl))
    assert worst < BRUTE_TOL_MM, worst


def test_cut_planes_extended_through_the_whole_femur_do_not_count(knee, geometries, brute_points):
    # The planned anterior cut, extended, slices the phantom's femoral head ~440 mm up: those
    # faces would reach the tibial plane in deep flexion. Only the knee's faces count.
    plan, _ = knee
    frame = Frame(plan)
    far = (brute_points["cuts_everywhere"] - frame.fkc) @ frame.prox
    assert far.max() > 300.0  # the phantom has such faces (the reason for the region)
    assert ((geometries["cuts"].points_ct_mm - frame.fkc) @ frame.prox).max() <= 70.0
    for flexion in (100.0, 120.0):
        g = knee_gaps(frame.pose(flexion), geometries["cuts"])
        assert 5.0 < g.medial_mm < 40.0 and 5.0 < g.lateral_mm < 40.0, (flexion, g)


def test_extension_and_flexion_gaps_use_the_distal_and_posterior_cuts(knee, geometries):
    plan, _ = knee
    frame, geo = Frame(plan), geometries["cuts"]
    cut = plan.cuts["proximal_tibia"]
    p0, n0 = np.asarray(cut.point_lps_mm), np.asarray(cut.normal_lps)
    for flexion, name in ((0.0, "distal_femur"), (90.0, "posterior_femur")):
        pose = frame.pose(flexion)
        g = knee_gaps(pose, geo)
        # the nearest femoral point lies on that cut's plane
        pts = geo.points_ct_mm
        d = (tf.apply(tf.invert(pose), pts) - p0) @ n0
        fc = plan.cuts[name]
        for mask, value in (((pts - frame.fkc) @ frame.lat < 0, g.medial_mm), ((pts - frame.fkc) @ frame.lat >= 0, g.lateral_mm)):
            i = np.flatnonzero(mask)[np.argmin(d[mask])]
            assert d[i] == pytest.approx(value, abs=1e-9)
            assert abs(np.dot(pts[i] - np.asarray(fc.point_lps_mm), np.asarray(fc.normal_lps))) < 0.01, (flexion, name)


def test_varus_stress_opens_the_lateral_side(knee, geometries):
    plan, _ = knee
    frame = Frame(plan)
    for geo in geometries.values():
        g0 = knee_gaps(frame.pose(0.0), geo)
        g1 = knee_gaps(frame.pose(0.0, varus=3.0), geo)
        assert g1.lateral_mm > g0.lateral_mm and g1.medial_mm < g0.medial_mm
        # the gaps' difference turns by the contacts' medio-lateral distance (30-70 mm) x sin(3 deg)
        turn = (g1.lateral_mm - g1.medial_mm) - (g0.lateral_mm - g0.medial_mm)
        assert 30.0 * math.sin(math.radians(3.0)) < turn < 70.0 * math.sin(math.radians(3.0)), turn


def _sphere(centre, r):
    return np.asarray(pv.Icosphere(radius=r, center=centre, nsub=5).points)


def test_gaps_of_two_spheres_under_varus_stress_are_analytic():
    # Condyles as spheres (r 20 mm, 44 mm apart) over a tibial plane z = 0 (normal +z), in a
    # frame where x is lateral; the tibia turned by theta about the antero-posterior axis
    # through a known centre k: the gap of a sphere is its centre's distance to the moved
    # plane minus r.
    r = 20.0
    cm, cl = np.array([-22.0, 3.0, 26.0]), np.array([22.0, -2.0, 24.0])
    geo = GapGeometry.from_points(_sphere(cm, r), _sphere(cl, r), [0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    assert geo.n_medial > 100
    g = knee_gaps(np.eye(4), geo)
    assert (g.medial_mm, g.lateral_mm) == pytest.approx((6.0, 4.0), abs=0.01)
    for k in (np.array([0.0, 0.0, 0.0]), np.array([-22.0, 0.0, 0.0]), np.array([5.0, 10.0, -30.0])):
        for theta in (-5.0, 2.0, 5.0):
            pose = _about([0.0, 1.0, 0.0], k, theta)  # femur_ct_from_tibia_ct: the tibia turned about k
            n = pose[:3, :3] @ [0.0, 0.0, 1.0]
            p = tf.apply(pose, [0.0, 0.0, 0.0])
            expected = (float((cm - p) @ n) - r, float((cl - p) @ n) - r)
            got = knee_gaps(pose, geo)
            assert (got.medial_mm, got.lateral_mm) == pytest.approx(expected, abs=0.01), (k, theta)
    # About the medial contact point on the plane: the medial sphere's centre (26 mm above it)
    # keeps its distance along the turned normal but for cos(theta); the lateral one, 44 mm
    # lateral, rises by 44 sin(theta): a varus-like opening of the lateral side.
    t = math.radians(3.0)
    got = knee_gaps(_about([0.0, 1.0, 0.0], [-22.0, 0.0, 0.0], 3.0), geo)
    assert got.medial_mm == pytest.approx(26.0 * math.cos(t) - r, abs=0.01)
    assert got.lateral_mm == pytest.approx(44.0 * math.sin(t) + 24.0 * math.cos(t) - r, abs=0.01)
    assert got.lateral_mm - 4.0 > 2.0  # opened by about 2.3 mm


def test_knee_gaps_records_and_joins_the_summary(knee, geometries):
    plan, _ = knee
    lms = {k: np.asarray(v.position_lps_mm) for k, v in plan.landmarks.items()}
    pose = Frame(plan).pose(30.0, 2.0)
    g = knee_gaps(pose, geometries["cuts"])
    assert isinstance(g, KneeGaps) and g.to_dict() == {"medial_gap_mm": g.medial_mm, "lateral_gap_mm": g.lateral_mm}
    s = kinematic_summary(pose, knee_frames(lms), geometries["cuts"])
    assert s.gaps == g and s.to_dict()["lateral_gap_mm"] == g.lateral_mm


def test_bad_plans_and_input_are_refused(knee):
    plan, meshes = knee
    with pytest.raises(InputError, match="unknown gap surface"):
        gap_geometry(plan, meshes, surface="cartilage")
    with pytest.raises(InputError, match="femur mesh"):
        gap_geometry(plan, {}, surface="cuts")
    no_tibial = plan.model_copy(update={"cuts": {k: v for k, v in plan.cuts.items() if v.bone != "tibia"}})
    with pytest.raises(InputError, match="tibial cut"):
        gap_geometry(no_tibial, meshes)
    no_implant = plan.model_copy(update={"implants": []})
    with pytest.raises(InputError, match="femoral component"):
        gap_geometry(no_implant, meshes, surface="implant")
    with pytest.raises(InputError, match="compartment"):
        GapGeometry.from_points(np.zeros((0, 3)), np.ones((4, 3)), [0, 0, 0], [0, 0, 1])
    with pytest.raises(InputError, match="both compartments"):
        GapGeometry(np.ones((4, 3)), 0, np.zeros(3), np.array([0.0, 0.0, 1.0]))
    geo = GapGeometry.from_points(np.ones((4, 3)), np.ones((4, 3)) * 2, [0, 0, 0], [0, 0, 1])
    with pytest.raises(InputError, match="4x4"):
        knee_gaps(np.eye(3), geo)
    bad = np.eye(4)
    bad[2, 3] = np.nan
    with pytest.raises(InputError, match="finite"):
        knee_gaps(bad, geo)
