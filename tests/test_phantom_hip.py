"""The synthetic pelvis (hip) phantom: frames, truth labels, beads, landmarks, angles, case files.

Every check compares the rendered CT / truth files against the analytic geometry (the bone
SDFs), so a frame mistake (ignored direction matrix, LPS/RAS flip, left/right swap) fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import pyvista as pv
import trimesh
from orthonav.core.case import read_labels_table
from orthonav.core.errors import InputError
from orthonav.core.schema import load_model
from orthonav.core.transforms import apply
from orthonav.core.volume import read_volume
from orthonav.phantoms.hip import app_frame, hip_angles, make_hip_phantom
from orthonav.phantoms.printable import PrintedPhantomSpec
from orthonav.phantoms.truth import read_truth

SIDES = ("left", "right")


@pytest.fixture(scope="module")
def phantom(small_hip_phantom):
    return small_hip_phantom


@pytest.fixture(scope="module")
def printed(small_hip_case):
    case = small_hip_case
    spec = load_model(case.print_dir / "phantom_hip.json", PrintedPhantomSpec)
    return spec, trimesh.load(case.print_dir / "phantom_hip.stl")


def _sphere_fit(p: np.ndarray) -> tuple[np.ndarray, float]:
    """Linear least-squares sphere fit: centre (3,), radius."""
    a = np.c_[2 * p, np.ones(len(p))]
    sol = np.linalg.lstsq(a, (p**2).sum(axis=1), rcond=None)[0]
    return sol[:3], float(np.sqrt(sol[3] + sol[:3] @ sol[:3]))


def test_grid_has_non_trivial_geometry(phantom):
    ct = phantom.ct
    assert ct.array_zyx.dtype == np.int16
    angle = np.degrees(np.arccos(np.clip((np.trace(ct.direction) - 1) / 2, -1, 1)))
    assert angle > 5.0
    assert np.linalg.norm(ct.origin_lps) > 100.0
    assert len(set(np.round(ct.spacing_mm, 4))) >= 2
    assert np.allclose(phantom.labels.lps_from_ijk, ct.lps_from_ijk)
    assert ct.array_zyx.size <= 9_000_000


def test_truth_labels_are_the_sdf_sign_at_voxel_centres(phantom):
    lab = phantom.labels.array_zyx
    rng = np.random.default_rng(1)
    assert phantom.label_table.labels == {1: "hip_left", 2: "hip_right", 3: "sacrum", 4: "femur_left", 5: "femur_right"}
    for bone, value in phantom.truth.bones.items():
        inside = np.argwhere(lab == value)
        assert len(inside) > 1000, bone
        pick = inside[rng.choice(len(inside), 2000)]
        d_in = phantom.signed_distance_mm(bone, phantom.ct.to_lps(pick[:, ::-1].astype(float)))
        assert np.all(d_in < 1e-6), bone
        lo, hi = pick.min(axis=0), pick.max(axis=0) + 1
        box = np.argwhere(lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] != value) + lo
        box = box[rng.choice(len(box), min(len(box), 8000), replace=False)]
        d_out = phantom.signed_distance_mm(bone, phantom.ct.to_lps(box[:, ::-1].astype(float)))
        assert np.all(d_out > -1e-6), bone
        assert (d_out < 3.0).sum() > 50, bone


def test_intensities_per_material(phantom):
    a = phantom.ct.array_zyx
    lab = phantom.labels.array_zyx
    for value in (1, 4):
        v = a[lab == value]
        assert 150 < np.median(v) < 900 and np.percentile(v, 99) > 900  # marrow with a bright cortex
    assert abs(np.median(a[(lab == 0) & (a > -500) & (a < 500)]) - 40) < 25  # soft tissue
    assert (a < -900).mean() > 0.05  # air around the body


def test_fiducial_beads_are_bright_blobs_at_their_truth_positions(phantom):
    ct = phantom.ct
    a = ct.array_zyx.astype(float)
    lab = phantom.labels.array_zyx
    names, pts = phantom.truth.points("fiducials")
    assert len(names) >= 6 and names == [f"fiducial_{i + 1}" for i in range(len(names))]
    assert np.all(np.diff(pts[:, 2]) < -5.0), "ordered by decreasing LPS z, >= 5 mm apart"
    assert np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)[2] > 5.0
    assert {phantom.truth.fiducial_bones[n] for n in names} >= {"hip_left", "hip_right", "femur_left", "femur_right"}
    r = phantom.truth.bead_radius_mm
    standoff = phantom.truth.parameters["bead_standoff_mm"]
    for name, p in zip(names, pts):
        ijk = np.rint(ct.to_ijk(p)).astype(int)
        sl = np.s_[ijk[2] - 3 : ijk[2] + 4, ijk[1] - 5 : ijk[1] + 6, ijk[0] - 5 : ijk[0] + 6]
        w = a[sl]
        assert w.max() > 2500, name
        assert np.all(lab[sl][w > 2500] == 0), name
        kk, jj, ii = np.mgrid[sl]
        wt = np.clip(w - 2000.0, 0.0, None)
        c = np.array([(ii * wt).sum(), (jj * wt).sum(), (kk * wt).sum()]) / wt.sum()
        assert np.linalg.norm(ct.to_lps(c) - p) < 0.3, name
        d = phantom.signed_distance_mm(phantom.truth.fiducial_bones[name], p[None])[0]
        assert d == pytest.approx(r + standoff, abs=0.25), name


def test_head_and_socket_centres_are_the_fitted_sphere_centres(phantom):
    t = phantom.truth
    L = {k: np.array(v) for k, v in t.landmarks_lps_mm.items()}
    r_head = t.parameters["head_radius_mm"] * t.parameters["scale"]
    r_socket = t.parameters["socket_radius_mm"]
    assert r_socket - r_head == pytest.approx(t.parameters["joint_gap_mm"], abs=1e-9)
    for side in SIDES:
        axis = np.array(t.parameters[f"acetabular_axis_{side}_lps"])
        head_c = L[f"femoral_head_centre_{side}"]
        fv = np.asarray(phantom.truth_meshes[f"femur_{side}"].points)
        cap = fv[(np.linalg.norm(fv - head_c, axis=1) < r_head + 1.0) & ((fv - head_c) @ axis < -5.0)]  # the covered dome
        assert len(cap) > 100
        c, r = _sphere_fit(cap)
        assert np.linalg.norm(c - head_c) < 0.05 and r == pytest.approx(r_head, abs=0.05), side
        ac = L[f"acetabulum_centre_{side}"]
        hv = np.asarray(phantom.truth_meshes[f"hip_{side}"].points)
        socket = hv[(np.linalg.norm(hv - ac, axis=1) < r_socket + 1.0) & ((hv - ac) @ axis < -5.0)]
        assert len(socket) > 100
        c, r = _sphere_fit(socket)
        assert np.linalg.norm(c - ac) < 0.05 and r == pytest.approx(r_socket, abs=0.05), side
        # the socket opens along its axis: 5 mm out of the rim plane along the axis is empty
        probe = ac + (r_socket + 5.0) * axis
        assert phantom.signed_distance_mm(f"hip_{side}", probe[None])[0] > 0
        assert t.gaps_mm[f"femur_hip_{side}"] == pytest.approx(t.parameters["joint_gap_mm"], abs=0.05)
        assert t.gaps_mm[f"femur_hip_{side}"] >= 2 * phantom.ct.spacing_mm.max() - 0.01
        assert t.gaps_mm[f"sacrum_hip_{side}"] >= t.parameters["si_gap_mm"] - 0.1
    assert t.gaps_mm["hip_left_hip_right"] == pytest.approx(t.parameters["symphysis_gap_mm"], abs=0.1)


def test_anterior_pelvic_plane_touches_asis_and_pubic_tubercles(phantom):
    L = {k: np.array(v) for k, v in phantom.truth.landmarks_lps_mm.items()}
    ml, ant, sup = app_frame(L)
    assert ant[1] < -0.9 and ml[0] > 0.9 and sup[2] > 0.9  # anterior = -y, left = +x, superior = +z
    for side in SIDES:
        for lm in ("asis", "pubic_tubercle"):
            p = L[f"{lm}_{side}"]
            assert abs(phantom.signed_distance_mm(f"hip_{side}", p[None])[0]) < 0.02, (lm, side)
            assert (p - L["asis_left"]) @ ant == pytest.approx(0.0, abs=0.02), (lm, side)
        # no part of the hip bone lies in front of the plane
        hv = np.asarray(phantom.truth_meshes[f"hip_{side}"].points)
        assert ((hv - L["asis_left"]) @ ant).max() < 0.02, side
    assert L["asis_left"][0] > L["asis_right"][0] + 150
    c = {b: np.asarray(m.points).mean(axis=0) for b, m in phantom.truth_meshes.items()}
    assert c["femur_left"][0] > c["femur_right"][0] + 100  # patient left = +x in LPS
    assert c["sacrum"][1] > L["femoral_head_centre_left"][1]  # sacrum posterior


def test_truth_angles_follow_the_definitions(phantom):
    t = phantom.truth
    axes = {s: t.parameters[f"acetabular_axis_{s}_lps"] for s in SIDES}
    again = hip_angles(t.landmarks_lps_mm, axes)
    assert again == pytest.approx(t.angles_deg, abs=1e-9)
    for s in SIDES:
        assert t.angles_deg[f"acetabular_inclination_{s}"] == pytest.approx(t.parameters["inclination_deg"], abs=2.0)
        assert t.angles_deg[f"acetabular_anteversion_{s}"] == pytest.approx(t.parameters["anteversion_deg"], abs=2.0)
    # left and right are mirror images: same angles
    assert t.angles_deg["acetabular_inclination_left"] == pytest.approx(t.angles_deg["acetabular_inclination_right"], abs=0.05)


def test_hip_angles_on_a_hand_built_pelvis():
    L = {"asis_left": [120, -50, 60], "asis_right": [-120, -50, 60], "pubic_tubercle_left": [20, -50, -30], "pubic_tubercle_right": [-20, -50, -30]}
    ri, ra = np.radians(40.0), np.radians(15.0)
    left = [np.cos(ra) * np.sin(ri), -np.sin(ra), -np.cos(ra) * np.cos(ri)]
    right = [-left[0], left[1], left[2]]
    a = hip_angles(L, {"left": left, "right": right})
    for s in SIDES:
        assert a[f"acetabular_inclination_{s}"] == pytest.approx(40.0, abs=1e-9)
        assert a[f"acetabular_anteversion_{s}"] == pytest.approx(15.0, abs=1e-9)
    # tilting the pelvis (APP) with the cup changes nothing
    from orthonav.core.transforms import rotation_about_axis

    r = rotation_about_axis([1.0, 0.3, 0.2], np.radians(25.0))
    b = hip_angles({k: r @ np.array(v, float) for k, v in L.items()}, {"left": r @ np.array(left), "right": r @ np.array(right)})
    assert b == pytest.approx(a, abs=1e-9)
    with pytest.raises(InputError, match="asis_left"):
        hip_angles({}, {"left": left})


def test_targets_and_mount_are_on_the_bones_away_from_fiducials(phantom):
    t = phantom.truth
    _n, fids = t.points("fiducials")
    names, targets = t.points("targets")
    assert len(names) >= 4
    for name, p in zip(names, targets):
        assert abs(phantom.signed_distance_mm(t.target_bones[name], p[None])[0]) < 0.02, name
        assert np.linalg.norm(fids - p, axis=1).min() > 15.0, name
    m = np.array(t.reference_mount_lps_mm)
    assert abs(phantom.signed_distance_mm("hip_left", m[None])[0]) < 0.02
    assert np.linalg.norm(fids - m, axis=1).min() > 15.0


@pytest.mark.slow
def test_cli_entry_writes_a_readable_case(phantom, small_hip_case):
    case = small_hip_case  # make_phantom_case("hip", DIR, seed=0, small=True)
    ct = read_volume(case.ct)
    np.testing.assert_array_equal(ct.array_zyx, phantom.ct.array_zyx)  # same seed, same CT
    np.testing.assert_allclose(ct.lps_from_ijk, phantom.ct.lps_from_ijk, atol=1e-4)
    labels = read_volume(case.truth_dir / "labels.nii.gz")
    np.testing.assert_array_equal(labels.array_zyx, phantom.labels.array_zyx)
    assert read_labels_table(case.truth_dir / "labels.json").labels == phantom.label_table.labels
    assert read_truth(case.root) == phantom.truth
    for bone in phantom.truth.bones:
        assert (case.truth_dir / "meshes" / f"{bone}.stl").exists()
    with pytest.raises(InputError, match="unknown hip phantom knob"):
        make_hip_phantom(small=True, flexion_deg=10)


def test_printable_hip_is_one_watertight_manifold_with_exact_divots(phantom, printed):
    spec, mesh = printed
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.is_volume
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume / 1000.0 == pytest.approx(spec.volume_ml, rel=1e-3)
    assert np.all(mesh.bounds[1] - mesh.bounds[0] <= 250.0) and mesh.bounds[0][2] == pytest.approx(0.0, abs=1e-4)
    assert set(spec.printed_bones) == {"hip_left", "femur_left"}
    assert len(spec.registration_divots) >= 6 and len(spec.target_divots) >= 4
    surface = pv.PolyData(mesh.vertices, np.hstack([np.full((len(mesh.faces), 1), 3), mesh.faces]).ravel())
    ct_from_phantom = np.array(spec.ct_from_phantom)
    for name, d in {**spec.registration_divots, **spec.target_divots}.items():
        apex, axis = np.array(d.apex_phantom_mm), np.array(d.axis_phantom)
        assert np.linalg.norm(mesh.vertices - apex, axis=1).min() < 0.05, name
        perp = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        other = np.cross(axis, perp)
        a = np.radians(d.half_angle_deg)
        wall = [apex + np.cos(a) * axis + np.sin(a) * (np.cos(q) * perp + np.sin(q) * other) for q in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
        sd = np.asarray(pv.PolyData(np.vstack([wall, apex - 0.3 * axis, apex + 0.3 * axis])).compute_implicit_distance(surface)["implicit_distance"])
        assert np.abs(sd[:8]).max() < 0.05 and sd[8] < 0 < sd[9], name
        # in the CT frame the apex is depth_mm below the true bone surface along the axis
        p_ct = apply(ct_from_phantom, apex)
        np.testing.assert_allclose(p_ct, d.apex_ct_lps_mm, atol=1e-6)
        anchor = p_ct + d.depth_mm * (ct_from_phantom[:3, :3] @ axis)
        assert abs(phantom.signed_distance_mm(d.bone, anchor[None])[0]) < 0.02, name
    reg = np.array([d.apex_phantom_mm for d in spec.registration_divots.values()])
    tgt = np.array([d.apex_phantom_mm for d in spec.target_divots.values()])
    assert np.linalg.svd(reg - reg.mean(axis=0), compute_uv=False)[2] > 5.0
    assert np.linalg.norm(reg[:, None] - tgt[None], axis=2).min() > 15.0
    # the printed ASIS target is the truth landmark (same point, CT frame)
    d = spec.target_divots["target_asis_left"]
    asis_anchor = np.array(d.apex_ct_lps_mm) + d.depth_mm * (ct_from_phantom[:3, :3] @ np.array(d.axis_phantom))
    assert np.linalg.norm(asis_anchor - np.array(phantom.truth.landmarks_lps_mm["asis_left"])) < 1.0


@pytest.mark.slow
def test_ct_of_the_printed_hip(phantom, tmp_path):
    from orthonav.phantoms.printed_ct import write_printed_case

    case = write_printed_case(phantom, tmp_path / "printed", spacing_mm=(1.6, 1.6, 1.6))
    ct, labels = read_volume(case.ct), read_volume(case.truth_dir / "labels.nii.gz")
    assert read_labels_table(case.truth_dir / "labels.json").labels == {1: "hip_left", 4: "femur_left", 6: "support"}
    np.testing.assert_allclose(ct.direction, phantom.ct.direction, atol=1e-6)
    a, lab = ct.array_zyx, labels.array_zyx
    assert np.median(a[lab == 0]) < -950 and abs(np.median(a[lab == 1]) - 150.0) < 30
    c = np.array(phantom.truth.landmarks_lps_mm["femoral_head_centre_left"])
    i, j, k = np.rint(ct.to_ijk(c)).astype(int)
    assert lab[k, j, i] == 4  # the printed femoral head is where the truth says


@pytest.mark.slow
def test_other_seed_other_noise_same_geometry(phantom):
    other = make_hip_phantom(seed=1, small=True)
    np.testing.assert_array_equal(other.labels.array_zyx, phantom.labels.array_zyx)
    diff = other.ct.array_zyx.astype(np.int32) - phantom.ct.array_zyx
    assert 10.0 < diff[phantom.labels.array_zyx == 0].std() < 60.0
