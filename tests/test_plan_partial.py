"""Planning on partial knee data (issue 14, item 2): a 15 cm knee CT stack (no hip, no ankle)
and the three-stack hip/knee/ankle protocol (bones with a gap at mid-shaft).

The partial bones are crops of the small knee phantom's TRUE meshes (the session fixture
``small_knee_phantom``), closed at the crop planes as a segmentation of a cropped CT is.
"""

from __future__ import annotations

import numpy as np
import pytest
import pyvista as pv
from orthonav.planning.tka.alignment import limb_frames
from orthonav.planning.tka.plan import build_tka_plan

pytestmark = pytest.mark.slow


def _true_meshes(phantom) -> dict[str, pv.PolyData]:
    return {b: m for b, m in phantom.truth_meshes.items() if b in ("femur", "tibia", "fibula", "patella")}


def _keep(mesh: pv.PolyData, ranges: list[tuple[float, float]]) -> pv.PolyData:
    """The parts of a closed mesh within the LPS z ranges (mm), each closed at its planes."""
    parts = []
    for lo, hi in ranges:
        m = mesh.clip_closed_surface(normal=(0, 0, 1), origin=(0, 0, lo))
        m = m.clip_closed_surface(normal=(0, 0, -1), origin=(0, 0, hi)) if m.n_points else m
        if m.n_points:
            parts.append(m)
    return pv.merge(parts).clean() if parts else pv.PolyData()


@pytest.fixture(scope="module")
def whole(small_knee_phantom):
    meshes = _true_meshes(small_knee_phantom)
    return meshes, build_tka_plan(meshes, implants=False)


def _joint_z(plan) -> float:
    return float(plan.landmarks["tibial_knee_centre"].position_lps_mm[2])


def test_knee_stack_plans_what_it_can_and_states_the_rest(whole):
    meshes, full = whole
    jl = _joint_z(full)
    stack = {b: m for b, m in ((b, _keep(m, [(jl - 75.0, jl + 75.0)])) for b, m in meshes.items()) if m.n_points}
    plan = build_tka_plan(stack)
    # Not measured, each with its reason; nothing extrapolated.
    for k in ("femoral_head_centre", "ankle_centre", "hka", "ldfa", "mpta", "slope", "femoral_anatomical", "tibial_anatomical"):
        assert k in plan.not_measured and k not in plan.landmarks and k not in plan.angles_deg and k not in plan.axes, k
        assert plan.not_measured[k].startswith("not measured:"), k
    assert "the CT ends" in plan.not_measured["femoral_head_centre"] and "above the knee joint" in plan.not_measured["femoral_head_centre"]
    assert "not extrapolated" in plan.not_measured["ankle_centre"]
    assert "femoral_mechanical" not in plan.axes and "tibial_mechanical" not in plan.axes
    # The stand-ins are labelled as assumptions, with the value in the plan.
    assert "ASSUMED" in plan.landmarks["femoral_axis_reference"].method
    assert "ASSUMED" in plan.landmarks["tibial_axis_reference"].method
    assert "6.0 deg" in plan.assumptions["femoral_planning_axis"]
    assert "joint lines" in plan.assumptions["cut_orientation"] or "condylar line" in plan.assumptions["cut_orientation"]
    # What the data supports is planned: cuts, sized components, rotation from the epicondyles.
    assert {"distal_femur", "proximal_tibia"} <= set(plan.cuts)
    assert {"tka_femoral", "tka_tibial_tray"} <= {i.family for i in plan.implants}
    assert plan.angles_deg["femoral_rotation"] == pytest.approx(full.angles_deg["femoral_rotation"], abs=0.5)
    for k in ("medial_epicondyle", "lateral_epicondyle", "medial_plateau_centre", "lateral_plateau_centre"):
        d = np.subtract(plan.landmarks[k].position_lps_mm, full.landmarks[k].position_lps_mm)
        assert np.linalg.norm(d) < 1.5, k
    # The cuts follow the joint lines in the coronal plane (mechanical alignment is impossible):
    # the tibial cut is parallel to the plateau line, the femoral one to the distal condyles.
    fr = limb_frames(full.landmarks)
    for cut, a, b in (("proximal_tibia", "medial_plateau_centre", "lateral_plateau_centre"),
                      ("distal_femur", "distal_medial_condyle", "distal_lateral_condyle")):
        line = np.subtract(plan.landmarks[b].position_lps_mm, plan.landmarks[a].position_lps_mm)
        line -= np.dot(line, fr.femur_anterior) * fr.femur_anterior
        n = np.asarray(plan.cuts[cut].normal_lps)
        assert abs(np.dot(n, line / np.linalg.norm(line))) < np.sin(np.radians(1.0)), cut
    # Alignment metrics relative to a mechanical axis are refused, not computed from a stand-in.
    assert "predicted_hka_deg" not in plan.metrics and "femoral_component_coronal_deg" in plan.not_measured


def test_three_stack_protocol_plans_the_mechanical_axes_from_the_pieces(whole):
    meshes, full = whole
    jl = _joint_z(full)
    zf = np.asarray(meshes["femur"].points)[:, 2]
    zt = np.asarray(meshes["tibia"].points)[:, 2]
    # Hip stack: the top 110 mm of the femur; knee stack: 15 cm about the joint; ankle stack:
    # the distal 90 mm of the tibia and fibula. The mid-shafts are not scanned.
    keep = [(zf.max() - 110.0, zf.max() + 1.0), (jl - 75.0, jl + 75.0), (zt.min() - 1.0, zt.min() + 90.0)]
    stack = {b: _keep(m, keep) for b, m in meshes.items()}
    assert stack["femur"].connectivity("all").point_data["RegionId"].max() == 1  # two pieces
    plan = build_tka_plan(stack, implants=False)
    # Head and ankle are in the data: the mechanical axes and HKA/LDFA/MPTA/slope are measured,
    # as on the whole bones.
    for k in ("hka", "ldfa", "mpta", "slope", "femoral_rotation"):
        assert plan.angles_deg[k] == pytest.approx(full.angles_deg[k], abs=0.3), k
    for k in ("femoral_head_centre", "ankle_centre", "tibial_knee_centre"):
        d = np.subtract(plan.landmarks[k].position_lps_mm, full.landmarks[k].position_lps_mm)
        assert np.linalg.norm(d) < 1.0, k
    assert not plan.assumptions and "femoral_axis_reference" not in plan.landmarks
    # The anatomical (shaft) axes need the missing mid-shaft: stated, not fitted to the pieces.
    for k in ("femoral_anatomical", "tibial_anatomical"):
        assert k not in plan.axes
        assert "mid-shaft" in plan.not_measured[k] and "gap between stacks" in plan.not_measured[k], plan.not_measured[k]
    assert {"femoral_mechanical", "tibial_mechanical"} <= set(plan.axes)


def _write_case(root, meshes: dict[str, pv.PolyData]):
    (root / "meshes").mkdir(parents=True)
    for b, m in meshes.items():
        if m.n_points:
            m.save(root / "meshes" / f"{b}.stl")
    return root


def test_three_stack_case_keeps_the_pieces_of_each_bone(whole, tmp_path):
    """Through the case folder: a femur / tibia in pieces across the unscanned gaps keeps its
    pieces (the head piece is not dropped as a segmentation island); a small stray island is."""
    from orthonav.planning.auto import auto_plan
    from orthonav.planning.tka.plan import load_knee_meshes, stack_pieces

    meshes, full = whole
    jl = _joint_z(full)
    zf = np.asarray(meshes["femur"].points)[:, 2]
    zt = np.asarray(meshes["tibia"].points)[:, 2]
    keep = [(zf.max() - 110.0, zf.max() + 1.0), (jl - 75.0, jl + 75.0), (zt.min() - 1.0, zt.min() + 90.0)]
    case = _write_case(tmp_path / "case", {b: _keep(m, keep) for b, m in meshes.items()})
    loaded = load_knee_meshes(case)
    for b in ("femur", "tibia", "fibula"):
        assert loaded[b].connectivity("all").point_data["RegionId"].max() == 1, b  # both pieces kept
    plan = auto_plan(case)
    for k in ("hka", "ldfa", "mpta", "slope"):
        assert plan.angles_deg[k] == pytest.approx(full.angles_deg[k], abs=0.3), k
    island = pv.merge([meshes["tibia"], pv.Sphere(radius=3.0, center=np.asarray(meshes["tibia"].center) + [0.0, 0.0, 300.0])])
    assert stack_pieces(island).n_points == meshes["tibia"].clean().n_points


def test_knee_stack_cli_says_what_it_could_not_measure(whole, tmp_path):
    import os
    import subprocess
    import sys

    meshes, full = whole
    jl = _joint_z(full)
    case = _write_case(tmp_path / "stack", {b: _keep(m, [(jl - 75.0, jl + 75.0)]) for b, m in meshes.items()})
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", "from orthonav.cli.main import main; main()", "plan", str(case), "--auto"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "femoral_head_centre not measured: the CT ends" in text
    assert "hka not measured" in text and "ankle_centre not measured" in text
    assert "femoral_planning_axis assumed: valgus correction 6.0 deg" in text
