"""The sawbones-like long bone phantom (one femur in air): frames, labels, beads, landmarks,
the printable model and its divots, compared with the analytic geometry."""

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
from orthonav.phantoms.long_bone import FEMORAL_LANDMARKS, make_long_bone_phantom
from orthonav.phantoms.printable import PrintedPhantomSpec
from orthonav.phantoms.printed_ct import write_printed_case
from orthonav.phantoms.truth import read_truth


@pytest.fixture(scope="module")
def phantom(small_long_bone_phantom):
    return small_long_bone_phantom


@pytest.fixture(scope="module")
def case(small_long_bone_case):
    return small_long_bone_case


def test_grid_labels_and_intensities(phantom):
    ct, lab = phantom.ct, phantom.labels.array_zyx
    angle = np.degrees(np.arccos(np.clip((np.trace(ct.direction) - 1) / 2, -1, 1)))
    assert angle > 5.0 and len(set(np.round(ct.spacing_mm, 4))) >= 2 and np.linalg.norm(ct.origin_lps) > 100.0
    assert phantom.label_table.labels == {1: "femur"}
    rng = np.random.default_rng(0)
    inside = np.argwhere(lab == 1)
    pick = inside[rng.choice(len(inside), 3000)]
    assert np.all(phantom.signed_distance_mm("femur", ct.to_lps(pick[:, ::-1].astype(float))) < 1e-6)
    out = np.argwhere(lab == 0)
    out = out[rng.choice(len(out), 20000, replace=False)]
    d_out = phantom.signed_distance_mm("femur", ct.to_lps(out[:, ::-1].astype(float)))
    assert np.all(d_out > -1e-6) and (d_out < 3.0).sum() > 50
    a = ct.array_zyx
    assert np.median(a[lab == 0]) < -950  # the bone lies in air
    assert 200 < np.median(a[lab == 1]) < 800 and np.percentile(a[lab == 1], 99) > 1100


def test_fiducial_beads_are_bright_blobs_at_their_truth_positions(phantom):
    ct = phantom.ct
    a = ct.array_zyx.astype(float)
    names, pts = phantom.truth.points("fiducials")
    assert len(names) >= 6 and names == [f"fiducial_{i + 1}" for i in range(len(names))]
    assert np.all(np.diff(pts[:, 2]) < -5.0)
    assert np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)[2] > 3.0  # not collinear along the shaft
    for name, p in zip(names, pts):
        ijk = np.rint(ct.to_ijk(p)).astype(int)
        sl = np.s_[ijk[2] - 4 : ijk[2] + 5, ijk[1] - 5 : ijk[1] + 6, ijk[0] - 5 : ijk[0] + 6]
        w = a[sl]
        assert w.max() > 2500, name
        assert np.all(phantom.labels.array_zyx[sl][w > 2500] == 0), name
        kk, jj, ii = np.mgrid[sl]
        wt = np.clip(w - 2000.0, 0.0, None)
        c = np.array([(ii * wt).sum(), (jj * wt).sum(), (kk * wt).sum()]) / wt.sum()
        assert np.linalg.norm(ct.to_lps(c) - p) < 0.3, name
        d = phantom.signed_distance_mm("femur", p[None])[0]
        assert d == pytest.approx(phantom.truth.bead_radius_mm + phantom.truth.parameters["bead_standoff_mm"], abs=0.25)


def test_landmarks_and_angles(phantom):
    t = phantom.truth
    L = {k: np.array(v) for k, v in t.landmarks_lps_mm.items()}
    assert set(L) == set(FEMORAL_LANDMARKS)
    for k in FEMORAL_LANDMARKS:
        if k not in ("femoral_head_centre", "femoral_knee_centre"):
            assert abs(phantom.signed_distance_mm("femur", L[k][None])[0]) < 0.02, k
    np.testing.assert_allclose(L["femoral_knee_centre"], 0.5 * (L["medial_epicondyle"] + L["lateral_epicondyle"]), atol=1e-9)
    # head centre = centre of the sphere fitted to the proximal head cap
    fv = np.asarray(phantom.truth_meshes["femur"].points)
    u = L["femoral_head_centre"] - L["femoral_knee_centre"]
    u /= np.linalg.norm(u)
    r_head = 23.0 * t.parameters["scale"]
    cap = fv[(np.linalg.norm(fv - L["femoral_head_centre"], axis=1) < r_head + 2.0) & ((fv - L["femoral_head_centre"]) @ u > 0.4 * r_head)]
    a = np.c_[2 * cap, np.ones(len(cap))]
    sol = np.linalg.lstsq(a, (cap**2).sum(axis=1), rcond=None)[0]
    assert np.linalg.norm(sol[:3] - L["femoral_head_centre"]) < 0.05
    # epicondyles are the medio-lateral extremes of the distal femur
    tea = L["lateral_epicondyle"] - L["medial_epicondyle"]
    tea /= np.linalg.norm(tea)
    distal = fv[(fv - L["femoral_knee_centre"]) @ u < 60.0 * t.parameters["scale"]]
    assert (distal @ tea).max() <= L["lateral_epicondyle"] @ tea + 0.02
    assert tea[0] < -0.8  # a right femur: lateral = patient right = -x
    assert 86.5 < t.angles_deg["ldfa"] < 89.5 and 2.0 < t.angles_deg["femoral_rotation"] < 4.5
    _n, fids = t.points("fiducials")
    for name, p in zip(*t.points("targets")):
        assert abs(phantom.signed_distance_mm("femur", p[None])[0]) < 0.02, name
        assert np.linalg.norm(fids - p, axis=1).min() > 15.0, name
    assert np.linalg.norm(fids - np.array(t.reference_mount_lps_mm), axis=1).min() > 20.0


def test_case_round_trip_and_seed_determinism(phantom, case):
    ct = read_volume(case.ct)
    np.testing.assert_array_equal(ct.array_zyx, phantom.ct.array_zyx)  # same seed, same CT
    assert read_truth(case.root) == phantom.truth
    assert read_labels_table(case.truth_dir / "labels.json").labels == {1: "femur"}
    with pytest.raises(InputError, match="unknown long-bone phantom knob"):
        make_long_bone_phantom(small=True, flexion_deg=10)
    with pytest.raises(InputError, match="scale"):
        make_long_bone_phantom(small=True, scale=3.0)


def test_printable_long_bone_is_watertight_with_exact_divots(phantom, case):
    spec = load_model(case.print_dir / "phantom_long_bone.json", PrintedPhantomSpec)
    mesh = trimesh.load(case.print_dir / "phantom_long_bone.stl")
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.is_volume
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume / 1000.0 == pytest.approx(spec.volume_ml, rel=1e-3)
    assert np.all(mesh.bounds[1] - mesh.bounds[0] <= 250.0) and mesh.bounds[0][2] == pytest.approx(0.0, abs=1e-4)
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
        p_ct = apply(ct_from_phantom, apex)
        np.testing.assert_allclose(p_ct, d.apex_ct_lps_mm, atol=1e-6)
        anchor = p_ct + d.depth_mm * (ct_from_phantom[:3, :3] @ axis)
        assert abs(phantom.signed_distance_mm(d.bone, anchor[None])[0]) < 0.02, name
        assert phantom.signed_distance_mm(d.bone, p_ct[None])[0] < -0.8 * d.depth_mm, name
    # registration divots sit under the CT beads: bead centre = anchor + (radius + standoff) * normal
    _names, beads = phantom.truth.points("fiducials")
    for d in spec.registration_divots.values():
        anchor = np.array(d.apex_ct_lps_mm) + d.depth_mm * (ct_from_phantom[:3, :3] @ np.array(d.axis_phantom))
        assert np.linalg.norm(beads - anchor, axis=1).min() == pytest.approx(
            phantom.truth.bead_radius_mm + phantom.truth.parameters["bead_standoff_mm"], abs=0.3
        )
    m = np.array(spec.mount_phantom_from_marker)
    assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3)) and np.linalg.det(m[:3, :3]) > 0


@pytest.mark.slow
def test_ct_of_the_printed_long_bone(phantom, tmp_path):
    case = write_printed_case(phantom, tmp_path / "printed", spacing_mm=(1.2, 1.2, 1.2))
    ct, labels = read_volume(case.ct), read_volume(case.truth_dir / "labels.nii.gz")
    assert read_labels_table(case.truth_dir / "labels.json").labels == {1: "femur", 2: "support"}
    a, lab = ct.array_zyx, labels.array_zyx
    assert np.median(a[lab == 0]) < -950 and abs(np.median(a[lab == 1]) - 150.0) < 30
    c = np.array(phantom.truth.landmarks_lps_mm["femoral_head_centre"])
    i, j, k = np.rint(ct.to_ijk(c)).astype(int)
    assert lab[k, j, i] == 1
