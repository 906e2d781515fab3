"""The automatic plan against synthetic-phantom ground truth (landmarks, angles, cuts, volume).

One small knee phantom is generated for the module (about 30 s of CPU), its TRUE meshes are
copied to CASE/meshes (standing in for segmentation), and ``auto_plan`` runs on it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from orthonav.core.transforms import apply, invert
from orthonav.planning.alignment import compute_angles, limb_frames
from orthonav.planning.auto import auto_plan, load_bone_meshes
from orthonav.planning.landmarks import find_landmarks
from orthonav.planning.placement import femoral_cut_planes_implant
from orthonav.planning.implants import FEMORAL_FLANGE_MM, implant_model
from orthonav.planning.schema import load_plan

pytestmark = pytest.mark.slow

LANDMARK_TOL_MM = 1.5
ANGLE_TOL_DEG = 0.5
DEPTH_TOL_MM = 0.5


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    from orthonav.phantoms.knee import make_knee_phantom
    from orthonav.phantoms.synthetic import write_phantom_case

    phantom = make_knee_phantom(seed=0, small=True)
    case = tmp_path_factory.mktemp("plan_knee")
    write_phantom_case(phantom, case)
    (case / "meshes").mkdir()
    for bone in ("femur", "tibia", "fibula", "patella"):
        shutil.copy(case / "truth" / "meshes" / f"{bone}.stl", case / "meshes" / f"{bone}.stl")
    plan = auto_plan(case)
    return phantom, case, plan


def _docs_malleoli(truth, meshes):
    """docs/anatomy.md malleoli on the true surfaces (brute force over the fine truth-mesh
    vertices): extremes along the tibial medio-lateral direction within 40 mm of each bone's
    distal end, iterated with the ankle centre."""
    L = {k: np.asarray(v) for k, v in truth.landmarks_lps_mm.items()}
    tkc = L["tibial_knee_centre"]
    vt, vf = np.asarray(meshes["tibia"].points), np.asarray(meshes["fibula"].points)
    u = (tkc - L["ankle_centre"]) / np.linalg.norm(tkc - L["ankle_centre"])
    for _ in range(8):
        ml = L["medial_plateau_centre"] - L["lateral_plateau_centre"]
        ml = ml - (ml @ u) * u
        ml /= np.linalg.norm(ml)
        t = vt[vt @ u < (vt @ u).min() + 40.0]
        f = vf[vf @ u < (vf @ u).min() + 40.0]
        mm, lm = t[np.argmax(t @ ml)], f[np.argmin(f @ ml)]
        ankle = 0.5 * (mm + lm)
        u = (tkc - ankle) / np.linalg.norm(tkc - ankle)
    return {"medial_malleolus": mm, "lateral_malleolus": lm, "ankle_centre": ankle}


def _reference_landmarks(phantom, case):
    truth = phantom.truth
    ref = {k: np.asarray(v) for k, v in truth.landmarks_lps_mm.items()}
    ref.update(_docs_malleoli(truth, load_bone_meshes(case)))
    return ref


def test_landmarks_match_truth(knee):
    phantom, case, plan = knee
    ref = _reference_landmarks(phantom, case)
    found = find_landmarks(load_bone_meshes(case))
    errors = {k: float(np.linalg.norm(np.asarray(found[k].position_lps_mm) - ref[k])) for k in ref}
    bad = {k: round(e, 2) for k, e in errors.items() if e > LANDMARK_TOL_MM}
    assert not bad, f"landmarks off by more than {LANDMARK_TOL_MM} mm: {bad}"
    # The plan written by auto_plan holds the same landmarks, each with its method named.
    for k in ref:
        assert plan.landmarks[k].method
        np.testing.assert_allclose(plan.landmarks[k].position_lps_mm, found[k].position_lps_mm, atol=1e-9)


def test_angles_match_truth(knee):
    phantom, case, plan = knee
    from orthonav.phantoms.angles import knee_angles

    truth = phantom.truth
    ref_lms = _reference_landmarks(phantom, case)
    # Truth angles by the phantom's own implementation of docs/anatomy.md (independent code).
    ref = knee_angles(ref_lms, medial_plateau_ap_tangent_lps=truth.medial_plateau_ap_tangent_lps, side=truth.side)
    for k in ("hka", "ldfa", "mpta", "slope", "femoral_rotation"):
        assert plan.angles_deg[k] == pytest.approx(ref[k], abs=ANGLE_TOL_DEG), k
    # The truth file's angles agree with the construction wherever the ankle definition agrees.
    for k in ("ldfa", "femoral_rotation"):
        assert plan.angles_deg[k] == pytest.approx(truth.angles_deg[k], abs=ANGLE_TOL_DEG), k


def test_plan_file_and_cut_depths_against_truth(knee):
    phantom, case, plan = knee
    on_disk = load_plan(case / "plan.json")
    assert on_disk.angles_deg == pytest.approx(plan.angles_deg)
    ref = _reference_landmarks(phantom, case)
    fr = limb_frames(ref)
    f, t = on_disk.cuts["distal_femur"], on_disk.cuts["proximal_tibia"]

    def depth(cut, p, axis):
        n = np.asarray(cut.normal_lps)
        return float(np.dot(p - np.asarray(cut.point_lps_mm), n) / abs(np.dot(n, axis)))

    # Distal femur: 9 mm above the more distal TRUE condyle, perpendicular to the TRUE axis.
    d_f = max(depth(f, ref[k], fr.femur_proximal) for k in ("distal_medial_condyle", "distal_lateral_condyle"))
    assert d_f == pytest.approx(9.0, abs=DEPTH_TOL_MM)
    assert np.degrees(np.arccos(-np.dot(f.normal_lps, fr.femur_proximal))) < ANGLE_TOL_DEG
    for k in ("distal_medial_condyle", "distal_lateral_condyle"):
        assert f.depths_mm[k] == pytest.approx(depth(f, ref[k], fr.femur_proximal), abs=DEPTH_TOL_MM)
    # Proximal tibia: 9 mm below the TRUE lateral plateau centre, 3 deg posterior slope.
    assert depth(t, ref["lateral_plateau_centre"], fr.tibia_proximal) == pytest.approx(9.0, abs=DEPTH_TOL_MM)
    assert t.depths_mm["medial_plateau_centre"] == pytest.approx(depth(t, ref["medial_plateau_centre"], fr.tibia_proximal), abs=DEPTH_TOL_MM)
    tilt = np.degrees(np.arctan2(-np.dot(t.normal_lps, fr.tibia_anterior), np.dot(t.normal_lps, fr.tibia_proximal)))
    assert tilt == pytest.approx(3.0, abs=ANGLE_TOL_DEG)


def _grid(lo, hi, step):
    axes = [np.arange(a, b, step) + step / 2 for a, b in zip(lo, hi)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return g, step**3


def test_removed_volumes_against_analytic_bone(knee):
    """Mesh-boolean removed volumes vs integrating the phantom's exact SDF (0.4 mm grid)."""
    phantom, case, plan = knee
    # Tibia: the true bone above the tibial cut plane.
    t = plan.cuts["proximal_tibia"]
    n, p0 = np.asarray(t.normal_lps), np.asarray(t.point_lps_mm)
    tray = np.asarray(next(i for i in plan.implants if i.family == "tka_tibial_tray").ct_from_implant)
    lo, hi = np.array([-60.0, -50.0, -2.0]), np.array([60.0, 50.0, 30.0])  # tray frame box over the proximal tibia
    g, dv = _grid(lo, hi, 0.4)
    p = apply(tray, g)
    inside = phantom.signed_distance_mm("tibia", p) < 0
    ref_t = float(np.count_nonzero(inside & ((p - p0) @ n > 0)) * dv)
    assert plan.metrics["tibia_removed_volume_mm3"] == pytest.approx(ref_t, rel=0.02)
    # Femur: the true bone outside the component's five-cut box, below its flange height.
    fem = next(i for i in plan.implants if i.family == "tka_femoral")
    m = np.asarray(fem.ct_from_implant)
    ap = implant_model(fem.family, fem.size).dims["ap_mm"]
    lo, hi = np.array([-60.0, -ap / 2 - 30.0, -35.0]), np.array([60.0, ap / 2 + 30.0, FEMORAL_FLANGE_MM["anterior"] + 2.0])
    g, dv = _grid(lo, hi, 0.4)
    inside = phantom.signed_distance_mm("femur", apply(m, g)) < 0
    outside_box = np.zeros(len(g), bool)
    for q, nn in femoral_cut_planes_implant(ap).values():
        outside_box |= (g - q) @ nn > 0
    ref_f = float(np.count_nonzero(inside & outside_box) * dv)
    assert plan.metrics["femur_removed_volume_mm3"] == pytest.approx(ref_f, rel=0.02)


def test_render_plan_png(knee, tmp_path):
    from PIL import Image

    from orthonav.planning.scene import render_plan

    _, case, _ = knee
    out = render_plan(case, tmp_path / "scene.png", size=(900, 600))
    img = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert img.shape == (600, 900, 3)
    # Every panel shows something (bone-coloured pixels), not an empty white frame.
    for panel in np.array_split(img, 6, axis=1):
        assert (panel.sum(axis=2) < 700).mean() > 0.02
