"""The synthetic knee phantom: frames, truth labels, beads, landmarks, angles, case files.

Every check compares the rendered CT / truth files against the analytic geometry (the bone
SDFs), so a frame mistake (ignored direction matrix, LPS/RAS flip, i/k swap) fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from orthonav.core.case import read_labels_table
from orthonav.core.errors import InputError
from orthonav.core.meshio import read_mesh
from orthonav.core.transforms import apply, invert
from orthonav.core.volume import read_volume
from orthonav.phantoms import sdf as S
from orthonav.phantoms.angles import knee_angles
from orthonav.phantoms.knee import make_knee_phantom
from orthonav.phantoms.synthetic import make_phantom_case
from orthonav.phantoms.truth import read_truth


@pytest.fixture(scope="module")
def phantom(small_knee_phantom):
    return small_knee_phantom


@pytest.fixture(scope="module")
def case_dir(small_knee_case):
    return small_knee_case.root


def test_grid_has_non_trivial_geometry(phantom):
    ct = phantom.ct
    assert ct.array_zyx.dtype == np.int16
    angle = np.degrees(np.arccos(np.clip((np.trace(ct.direction) - 1) / 2, -1, 1)))
    assert angle > 5.0, "direction matrix must be clearly non-identity"
    assert np.linalg.norm(ct.origin_lps) > 100.0
    assert len(set(np.round(ct.spacing_mm, 4))) >= 2  # anisotropic
    assert np.allclose(phantom.labels.lps_from_ijk, ct.lps_from_ijk)
    r = phantom.ct_from_limb[:3, :3]
    assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) > 0
    assert ct.array_zyx.size <= 10_000_000  # the small phantom stays small (9.2 M voxels at 1.2 x 1.2 x 2.4 mm)


def test_truth_labels_are_the_sdf_sign_at_voxel_centres(phantom):
    lab = phantom.labels.array_zyx
    rng = np.random.default_rng(1)
    for bone, value in phantom.truth.bones.items():
        inside = np.argwhere(lab == value)
        assert len(inside) > 1000, bone
        pick = inside[rng.choice(len(inside), 3000)]
        d_in = phantom.signed_distance_mm(bone, phantom.ct.to_lps(pick[:, ::-1].astype(float)))
        assert np.all(d_in < 1e-6), bone
        # voxels just outside the bone (within 3 mm) are not labelled as it
        lo = pick.min(axis=0)
        hi = pick.max(axis=0) + 1
        box = np.argwhere(lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] != value) + lo
        box = box[rng.choice(len(box), min(len(box), 20000), replace=False)]
        d_out = phantom.signed_distance_mm(bone, phantom.ct.to_lps(box[:, ::-1].astype(float)))
        assert np.all(d_out > -1e-6), bone
        assert (d_out < 3.0).sum() > 100  # the sample did test the boundary


def test_intensities_per_material(phantom):
    a = phantom.ct.array_zyx
    lab = phantom.labels.array_zyx
    femur = a[lab == 1]
    assert 200 < np.median(femur) < 700  # mostly marrow
    assert np.percentile(femur, 99) > 1100  # with a bright cortex
    assert (a < -900).mean() > 0.05  # air around the leg
    # the cortex: voxels 1 mm inside the femoral shaft surface
    shaft_pts = np.array(phantom.truth.landmarks_lps_mm["femoral_head_centre"])
    assert np.isfinite(shaft_pts).all()


def test_fiducial_beads_are_bright_blobs_at_their_truth_positions(phantom):
    ct = phantom.ct
    a = ct.array_zyx.astype(float)
    lab = phantom.labels.array_zyx
    names, pts = phantom.truth.points("fiducials")
    assert len(names) >= 6
    assert names == [f"fiducial_{i + 1}" for i in range(len(names))]
    assert np.all(np.diff(pts[:, 2]) < -5.0), "ordered by decreasing LPS z, >= 5 mm apart"
    centred = pts - pts.mean(axis=0)
    assert np.linalg.svd(centred, compute_uv=False)[2] > 5.0, "not coplanar/collinear"
    for name, p in zip(names, pts):
        ijk = np.rint(ct.to_ijk(p)).astype(int)
        sl = np.s_[ijk[2] - 3 : ijk[2] + 4, ijk[1] - 5 : ijk[1] + 6, ijk[0] - 5 : ijk[0] + 6]
        w = a[sl]
        assert w.max() > 2500, name
        assert np.all(lab[sl][w > 2500] == 0), f"{name} bead voxels must not carry a bone label"
        kk, jj, ii = np.mgrid[sl]
        wt = np.clip(w - 2000.0, 0.0, None)
        centroid_ijk = np.array([(ii * wt).sum(), (jj * wt).sum(), (kk * wt).sum()]) / wt.sum()
        err = np.linalg.norm(ct.to_lps(centroid_ijk) - p)
        assert err < 0.3, f"{name}: centroid {err:.2f} mm from truth"
        # the bead rests on its bone: surface distance = radius + standoff (the Newton foot
        # point from 4 mm away is within ~0.2 mm of the closest point on these blended shapes)
        bone = phantom.truth.fiducial_bones[name]
        d = phantom.signed_distance_mm(bone, p[None])[0]
        standoff = phantom.truth.parameters["bead_standoff_mm"]
        assert d == pytest.approx(phantom.truth.bead_radius_mm + standoff, abs=0.25)


def test_truth_meshes_lie_on_the_analytic_surface(phantom):
    for bone, mesh in phantom.truth_meshes.items():
        assert mesh.n_open_edges == 0, bone
        d = phantom.signed_distance_mm(bone, np.asarray(mesh.points))
        assert np.abs(d).max() < 0.05, bone


def test_landmarks_follow_the_definitions(phantom):
    L = {k: np.array(v) for k, v in phantom.truth.landmarks_lps_mm.items()}
    on_surface = {
        "medial_epicondyle": "femur",
        "lateral_epicondyle": "femur",
        "distal_medial_condyle": "femur",
        "distal_lateral_condyle": "femur",
        "posterior_medial_condyle": "femur",
        "posterior_lateral_condyle": "femur",
        "medial_plateau_centre": "tibia",
        "lateral_plateau_centre": "tibia",
        "medial_malleolus": "tibia",
        "lateral_malleolus": "fibula",
    }
    for name, bone in on_surface.items():
        assert abs(phantom.signed_distance_mm(bone, L[name][None])[0]) < 0.02, name
    # femoral head centre = centre of the best-fit sphere of the head surface
    fv = np.asarray(phantom.truth_meshes["femur"].points)
    head = fv[np.linalg.norm(fv - L["femoral_head_centre"], axis=1) < 25.0]
    u = L["femoral_head_centre"] - L["femoral_knee_centre"]
    head = head[(head - L["femoral_head_centre"]) @ (u / np.linalg.norm(u)) > 10.0]  # proximal cap, away from the neck
    a = np.c_[2 * head, np.ones(len(head))]
    sol = np.linalg.lstsq(a, (head**2).sum(axis=1), rcond=None)[0]
    assert np.linalg.norm(sol[:3] - L["femoral_head_centre"]) < 0.05
    # extremes: no femur vertex beyond the epicondyles along the TEA, or beyond the distal
    # condyles along the mechanical axis (tolerance: mesh vertices sit on the surface)
    u_f = L["femoral_head_centre"] - L["femoral_knee_centre"]
    u_f /= np.linalg.norm(u_f)
    tea = L["lateral_epicondyle"] - L["medial_epicondyle"]
    tea /= np.linalg.norm(tea)
    distal = fv[(fv - L["femoral_knee_centre"]) @ u_f < 60.0]
    assert (distal @ tea).max() <= L["lateral_epicondyle"] @ tea + 0.02
    assert (distal @ -tea).max() <= L["medial_epicondyle"] @ -tea + 0.02
    medial = distal[(distal - L["femoral_knee_centre"]) @ -tea > 0]
    lateral = distal[(distal - L["femoral_knee_centre"]) @ -tea < 0]
    assert (medial @ -u_f).max() <= L["distal_medial_condyle"] @ -u_f + 0.02
    assert (lateral @ -u_f).max() <= L["distal_lateral_condyle"] @ -u_f + 0.02
    post = np.cross(tea, u_f)
    post /= np.linalg.norm(post)
    assert (medial @ post).max() <= L["posterior_medial_condyle"] @ post + 0.02
    assert (lateral @ post).max() <= L["posterior_lateral_condyle"] @ post + 0.02
    np.testing.assert_allclose(L["femoral_knee_centre"], 0.5 * (L["medial_epicondyle"] + L["lateral_epicondyle"]), atol=1e-9)
    np.testing.assert_allclose(L["tibial_knee_centre"], 0.5 * (L["medial_plateau_centre"] + L["lateral_plateau_centre"]), atol=1e-9)
    np.testing.assert_allclose(L["ankle_centre"], 0.5 * (L["medial_malleolus"] + L["lateral_malleolus"]), atol=1e-9)
    # the posterior direction of a right femur is LPS +y-ish, the TEA points to patient right (-x)
    assert post[1] > 0.9 and tea[0] < -0.9


def test_anatomy_is_a_right_leg_in_lps(phantom):
    L = {k: np.array(v) for k, v in phantom.truth.landmarks_lps_mm.items()}
    c = {b: np.asarray(m.points).mean(axis=0) for b, m in phantom.truth_meshes.items()}
    assert L["femoral_head_centre"][2] - L["ankle_centre"][2] > 700  # whole limb in the field of view
    assert c["fibula"][0] < c["tibia"][0] - 15  # lateral = patient right = -x
    assert c["patella"][1] < L["femoral_knee_centre"][1] - 20  # anterior = -y
    assert L["medial_epicondyle"][0] > L["lateral_epicondyle"][0]
    lab = phantom.labels.array_zyx
    ijk = np.argwhere(lab > 0)[:, ::-1]
    lo, hi = ijk.min(axis=0), ijk.max(axis=0)
    assert np.all(lo > 0) and np.all(hi < np.array(phantom.ct.shape_ijk) - 1), "bones inside the field of view"


def _construction(phantom):
    """The small knee's construction (limb frame) and ``ct_from_limb``: what the truth must match."""
    from dataclasses import replace

    from orthonav.phantoms.knee import SMALL, KneeParameters, knee_geometry

    prm = KneeParameters(**SMALL)
    # the knobs the geometry does not depend on zeroed, as the recipe does: the cached geometry
    geo = knee_geometry(replace(prm, noise_hu=0.0, psf_sigma_vox=0.0, pose_jitter_deg=0.0, spacing_mm=(0.0, 0.0, 0.0)))
    return prm, geo.anatomy, np.asarray(phantom.ct_from_limb)


def test_truth_tibial_angles_follow_the_construction_in_closed_form(phantom):
    """The truth mpta and slope against the construction, not against ``knee_angles`` again.

    The tibial plateau is built in a frame ``r_p`` (``knee.build_knee``): its plateau centres lie
    along ``r_p`` x (medial) and its AP tangent is ``r_p`` y. With the truth tibial mechanical axis
    ``u`` (ankle centre -> tibial knee centre), docs/anatomy.md gives in closed form
    ``mpta = 90 + asin(u . x_p)`` and ``slope = atan2(-(v . u), |v - (v . u) u|)`` with ``v`` the
    tangent's part perpendicular to the medio-lateral direction."""
    from orthonav.core.transforms import apply_vector

    _prm, anat, ct_from_limb = _construction(phantom)
    t = phantom.truth
    L = {k: np.asarray(v, dtype=float) for k, v in t.landmarks_lps_mm.items()}
    x_p = apply_vector(ct_from_limb, anat.plateau_rot[:, 0])
    y_p = apply_vector(ct_from_limb, anat.plateau_rot[:, 1])
    # the truth's plateau line and AP tangent ARE the construction's (measured: 0 deg apart)
    np.testing.assert_allclose(t.medial_plateau_ap_tangent_lps, y_p, atol=1e-12)
    line = L["medial_plateau_centre"] - L["lateral_plateau_centre"]
    np.testing.assert_allclose(line / np.linalg.norm(line), x_p, atol=1e-9)
    u = L["tibial_knee_centre"] - L["ankle_centre"]
    u /= np.linalg.norm(u)
    assert t.angles_deg["mpta"] == pytest.approx(90.0 + np.degrees(np.arcsin(u @ x_p)), abs=1e-9)
    ml = x_p - (x_p @ u) * u
    ml /= np.linalg.norm(ml)
    v = y_p - (y_p @ ml) * ml
    slope = np.degrees(np.arctan2(-(v @ u), np.sqrt(v @ v - (v @ u) ** 2)))
    assert t.angles_deg["slope"] == pytest.approx(slope, abs=1e-9)
    a = t.angles_deg
    assert 175.5 < a["hka"] < 178.5  # ~3 deg varus
    assert 86.5 < a["ldfa"] < 89.5
    assert 84.5 < a["mpta"] < 87.5
    assert 4.5 < a["slope"] < 7.5
    assert 2.0 < a["femoral_rotation"] < 4.5


def test_knee_angles_on_the_construction_axes_equal_the_construction_knobs(phantom):
    """``knee_angles`` (the truth's angle code) on the phantom with its CONSTRUCTION axes (femoral
    mechanical axis r_f z, TEA r_f x, tibial mechanical axis r_t z) gives the construction's knobs
    in closed form: hka = 180 - varus_deg (the tibia is tilted varus_deg further than the femur
    about the limb's AP axis), mpta = mpta_deg (the plateau is turned 90 - mpta_deg from the
    tibial axis), slope = atan(tan(slope_deg) cos(90 - mpta_deg)) (the slope rotation is applied
    in the already-tilted plateau frame)."""
    from orthonav.core.transforms import apply, apply_vector

    prm, anat, ct_from_limb = _construction(phantom)
    L = {k: np.asarray(v, dtype=float) for k, v in phantom.truth.landmarks_lps_mm.items()}
    z_f, x_f, z_t = (apply_vector(ct_from_limb, v) for v in (anat.femur_rot[:, 2], anat.femur_rot[:, 0], anat.tibia_rot[:, 2]))
    head = apply(ct_from_limb, anat.head_centre)
    knee_f = head - 420.0 * z_f
    L.update(femoral_head_centre=head, femoral_knee_centre=knee_f, medial_epicondyle=knee_f + 40.0 * x_f,
             lateral_epicondyle=knee_f - 40.0 * x_f, ankle_centre=L["tibial_knee_centre"] - 370.0 * z_t)
    a = knee_angles(L, medial_plateau_ap_tangent_lps=phantom.truth.medial_plateau_ap_tangent_lps)
    assert a["hka"] == pytest.approx(180.0 - prm.varus_deg, abs=1e-9)
    assert a["mpta"] == pytest.approx(prm.mpta_deg, abs=1e-9)
    slope = np.degrees(np.arctan(np.tan(np.radians(prm.slope_deg)) * np.cos(np.radians(90.0 - prm.mpta_deg))))
    assert a["slope"] == pytest.approx(slope, abs=1e-9)


def test_knee_angles_on_a_hand_built_limb():
    # A straight leg along z: hip (0,0,400), knee (0,0,0), ankle (0,0,-400); TEA along x.
    L = {
        "femoral_head_centre": [0, 0, 400],
        "femoral_knee_centre": [0, 0, 0],
        "medial_epicondyle": [40, 0, 0],
        "lateral_epicondyle": [-40, 0, 0],
        "distal_medial_condyle": [20, 0, -20],
        "distal_lateral_condyle": [-20, 0, -20 + 40 * np.tan(np.radians(3))],  # lateral end higher: ldfa 87
        "posterior_medial_condyle": [20, 25, -5],
        "posterior_lateral_condyle": [-20, 25 - 40 * np.tan(np.radians(4)), -5],
        "medial_plateau_centre": [20, 0, -30 - 40 * np.tan(np.radians(2))],  # medial end lower: mpta 88
        "lateral_plateau_centre": [-20, 0, -30],
        "tibial_knee_centre": [0, 0, -30 - 20 * np.tan(np.radians(2))],
        "ankle_centre": [0, 0, -400],
    }
    # tilt the ankle medially (+x) by 2 deg about the tibial knee centre: 2 deg varus
    k = np.array(L["tibial_knee_centre"], float)
    L["ankle_centre"] = (k + 370.0 * np.array([np.sin(np.radians(2)), 0, -np.cos(np.radians(2))])).tolist()
    slope_t = [0, np.cos(np.radians(7)), -np.sin(np.radians(7))]
    a = knee_angles(L, medial_plateau_ap_tangent_lps=slope_t)
    assert a["hka"] == pytest.approx(178.0, abs=1e-6)
    assert a["ldfa"] == pytest.approx(87.0, abs=1e-6)
    assert a["mpta"] == pytest.approx(86.0, abs=1e-6)  # plateau 88 deg to vertical, axis tilted 2 deg medially
    # The tangent falls 7 deg in the limb's sagittal plane but the tibial axis u = (-sin 2, 0, cos 2)
    # leans 2 deg in the coronal plane, so the slope (in the tibial sagittal plane) is not exactly 7:
    # with ml = (cos 2, 0, sin 2) and v = tangent - (tangent . ml) ml, slope = asin(-(v . u) / |v|)
    # and v . u = -sin 7 cos 2 (closed form, by hand):
    s7, c2, s2 = np.sin(np.radians(7)), np.cos(np.radians(2)), np.sin(np.radians(2))
    v = np.array([0.0, np.cos(np.radians(7)), -s7]) + s7 * s2 * np.array([c2, 0.0, s2])  # the tangent minus its medio-lateral part
    assert a["slope"] == pytest.approx(np.degrees(np.arcsin(s7 * c2 / np.linalg.norm(v))), abs=1e-9)
    assert a["slope"] == pytest.approx(7.0, abs=0.01)
    assert a["femoral_rotation"] == pytest.approx(4.0, abs=1e-6)


def test_gaps_between_bones_are_at_least_two_voxels(phantom):
    g = phantom.truth.gaps_mm
    sp = phantom.ct.spacing_mm
    p = phantom.truth.parameters
    assert g["femur_tibia"] == pytest.approx(p["joint_gap_mm"], abs=0.1)
    assert g["femur_tibia"] >= 2 * sp[2] - 0.1
    assert g["fibula_tibia"] >= p["fibula_gap_mm"] - 0.1 and g["fibula_tibia"] >= 2 * sp[0]
    assert g["patella_femur"] >= p["patella_gap_mm"] - 0.1 and g["patella_femur"] >= 2 * sp[0]


def test_targets_and_mount_are_on_the_bones_away_from_fiducials(phantom):
    t = phantom.truth
    _n, fids = t.points("fiducials")
    names, targets = t.points("targets")
    assert len(names) >= 4
    for name, p in zip(names, targets):
        assert abs(phantom.signed_distance_mm(t.target_bones[name], p[None])[0]) < 0.02, name
        assert np.linalg.norm(fids - p, axis=1).min() > 15.0, name
    m = np.array(t.reference_mount_lps_mm)
    assert abs(phantom.signed_distance_mm("femur", m[None])[0]) < 0.02
    assert np.linalg.norm(fids - m, axis=1).min() > 20.0


def test_case_files_round_trip(phantom, case_dir):
    ct = read_volume(case_dir / "ct.nii.gz")
    assert ct.array_zyx.dtype == np.int16
    np.testing.assert_allclose(ct.lps_from_ijk, phantom.ct.lps_from_ijk, atol=1e-4)
    np.testing.assert_array_equal(ct.array_zyx, phantom.ct.array_zyx)
    labels = read_volume(case_dir / "truth" / "labels.nii.gz")
    np.testing.assert_array_equal(labels.array_zyx, phantom.labels.array_zyx)
    table = read_labels_table(case_dir / "truth" / "labels.json")
    assert table.labels == {1: "femur", 2: "tibia", 3: "fibula", 4: "patella"} and table.side == "right"
    truth = read_truth(case_dir)
    assert truth == phantom.truth
    # the truth meshes on disk are the LPS surfaces
    for bone in ("femur", "tibia", "fibula", "patella"):
        m = read_mesh(case_dir / "truth" / "meshes" / f"{bone}.stl")
        d = phantom.signed_distance_mm(bone, np.asarray(m.points)[::20])
        assert np.abs(d).max() < 0.05, bone
    tm = trimesh.load(case_dir / "print" / "phantom_knee.stl")
    assert tm.is_watertight and tm.is_winding_consistent


def test_signed_distance_uses_the_ct_frame(phantom):
    # a point 5 mm outside the medial epicondyle along the TEA, in LPS
    L = {k: np.array(v) for k, v in phantom.truth.landmarks_lps_mm.items()}
    tea = L["medial_epicondyle"] - L["lateral_epicondyle"]
    tea /= np.linalg.norm(tea)
    p = L["medial_epicondyle"] + 5.0 * tea
    assert phantom.signed_distance_mm("femur", p[None])[0] == pytest.approx(5.0, abs=0.1)
    # limb-frame coordinates are not LPS: using them directly gives a different answer
    p_limb = apply(invert(phantom.ct_from_limb), p)
    assert abs(phantom.signed_distance_mm("femur", p_limb[None])[0] - 5.0) > 10.0
    assert S.normalized(phantom.bones["femur"].sdf, p_limb[None])[0] == pytest.approx(5.0, abs=0.1)
    with pytest.raises(InputError):
        phantom.signed_distance_mm("hip", p[None])


def test_bad_knobs_and_kinds_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown knee phantom knob"):
        make_knee_phantom(small=True, flexon_deg=10)
    with pytest.raises(InputError, match="unknown phantom kind"):
        make_phantom_case("elbow", tmp_path / "c")
    with pytest.raises(InputError, match="scale"):
        make_knee_phantom(small=True, scale=0.1)
    with pytest.raises(InputError):
        read_truth(tmp_path / "nowhere")


@pytest.mark.slow
def test_same_seed_same_ct_other_seed_other_noise(phantom):
    again = make_knee_phantom(seed=0, small=True)
    np.testing.assert_array_equal(again.ct.array_zyx, phantom.ct.array_zyx)
    other = make_knee_phantom(seed=1, small=True)
    np.testing.assert_array_equal(other.labels.array_zyx, phantom.labels.array_zyx)
    diff = other.ct.array_zyx.astype(np.int32) - phantom.ct.array_zyx
    assert 10.0 < diff[phantom.labels.array_zyx == 0].std() < 60.0  # independent 20 HU noise (+ blur)


@pytest.mark.slow
def test_flexion_knob_bends_the_knee_and_keeps_the_gaps():
    flexed = make_knee_phantom(seed=0, small=True, flexion_deg=30.0)
    t = flexed.truth
    L = {k: np.array(v) for k, v in t.landmarks_lps_mm.items()}
    u_f = L["femoral_head_centre"] - L["femoral_knee_centre"]
    u_t = L["tibial_knee_centre"] - L["ankle_centre"]
    between = np.degrees(np.arccos(u_f @ u_t / np.linalg.norm(u_f) / np.linalg.norm(u_t)))
    assert 28.0 < between < 33.0  # 30 deg of flexion (+ the small coronal angle)
    # the shank swings posteriorly (LPS +y) and the gaps are re-fitted
    assert (L["ankle_centre"] - L["tibial_knee_centre"])[1] > 100.0
    assert t.gaps_mm["femur_tibia"] == pytest.approx(t.parameters["joint_gap_mm"], abs=0.1)
    assert t.gaps_mm["fibula_tibia"] >= t.parameters["fibula_gap_mm"] - 0.1
    lab = flexed.labels.array_zyx
    kji = np.argwhere(lab == 2)[::40]
    assert np.all(flexed.signed_distance_mm("tibia", flexed.ct.to_lps(kji[:, ::-1].astype(float))) < 1e-6)
    with pytest.raises(InputError, match="flexion"):
        make_knee_phantom(small=True, flexion_deg=90.0)


def test_metal_artefact_knob_streaks_only_bead_slices_and_beads_stay_detectable():
    """Variation knob: metal streaks around the beads, only in the slices the beads cross;
    the labels are unchanged and the bead detector still finds every bead within 0.5 mm."""
    from orthonav.phantoms.knee import make_knee_phantom
    from orthonav.planning.fiducials import detect_fiducial_beads

    clean = make_knee_phantom(seed=4, small=True, noise_hu=0.0)
    metal = make_knee_phantom(seed=4, small=True, noise_hu=0.0, metal_artefact_hu=400.0)
    np.testing.assert_array_equal(clean.labels.array_zyx, metal.labels.array_zyx)
    diff = np.abs(metal.ct.array_zyx.astype(np.float64) - clean.ct.array_zyx)
    changed_slices = np.nonzero(diff.max(axis=(1, 2)) > 20)[0]
    beads = np.array(list(metal.truth.fiducials_lps_mm.values()))
    bead_k = metal.ct.to_ijk(beads)[:, 2]
    # every changed slice is within a bead radius (+ one slice of blur) of a bead; every bead's slice changed
    near = np.abs(changed_slices[:, None] - bead_k[None, :]) * metal.ct.spacing_mm[2] <= metal.truth.bead_radius_mm + metal.ct.spacing_mm[2]
    assert near.any(axis=1).all()
    assert all(np.any(np.abs(changed_slices - k) <= 1) for k in bead_k)
    assert diff.max() > 150.0  # strong streaks next to the beads
    found = detect_fiducial_beads(metal.ct)
    assert len(found) == len(beads)
    dist = np.linalg.norm(found[:, None, :] - beads[None, :, :], axis=2).min(axis=1)
    assert dist.max() < 0.5, dist
