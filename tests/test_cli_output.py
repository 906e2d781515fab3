"""What a user reads: the CLI's summary tables and texts (no nan / None, units, plain names),
the touch-check wording, and the strict plan check of the stages that consume a plan."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from orthonav.core.errors import SchemaError

NAN = math.nan


def piped_text(*renderables: object) -> str:
    """Render rich objects as they reach a pipe (no terminal, no colours)."""
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None, force_terminal=False)
    for r in renderables:
        console.print(r)
    return buf.getvalue()


def assert_no_leaks(text: str) -> None:
    """No NaN, None or raw float counts reach the screen."""
    assert not re.search(r"\bnan\b", text.lower()), text
    assert not re.search(r"\bNone\b", text), text
    assert "-0.0" not in text, text
    assert not re.search(r"\b\d+\.000 (targets|samples)\b", text), text


# --- navigate / replay -----------------------------------------------------------------------

def _nav_summary(**kw):
    from orthonav.navigation import NavigationSummary

    return NavigationSummary(session_dir=Path("/cases/knee/sessions/20261204T184332.470000Z"), **kw)


def test_unregistered_navigation_table_says_what_is_missing():
    from orthonav.cli.navigate import summary_table

    text = piped_text(summary_table(_nav_summary(registered=False, fre_mm=NAN)))
    assert_no_leaks(text)
    assert "not registered" in text and "not measured" in text


def test_replay_table_has_units_and_plain_names():
    from orthonav.cli.navigate import summary_table
    from orthonav.phantoms.scoring import ScoredNavigation

    base = _nav_summary(registered=True, fre_mm=0.184, registration_method="paired_point",
                        predicted_tre_mm={"target_femoral_notch": 0.31, "femoral_knee_centre": 0.4},
                        verification_mm={"target_femoral_notch": -0.0001}, stray_touches_mm={"femoral_knee_centre": 9.491},
                        states=900, loop_rate_hz=NAN, replay_mismatches=0)
    scored = ScoredNavigation.of(base, SimpleNamespace(tre_mm={"target_femoral_notch": 0.2},
                                                       guidance_error={"n": 811.0, "flexion_deg_rms": 0.04, "distance_mm_max": NAN}))
    text = piped_text(summary_table(scored, title="Replay"))
    assert_no_leaks(text)
    assert "811 samples" in text and "811.000" not in text
    assert "flexion RMS" in text and "0.04 deg" in text and "distance max" in text
    assert "femoral notch" in text and "target_" not in text
    assert "0.18 mm" in text
    # the stray touch is where the pointer was, not an error figure
    assert "touch away from the landmarks (nearest: femoral knee centre)" in text and "9.5 mm from it: not a check" in text
    assert not re.search(r"verification touch at femoral knee centre", text)
    assert "verification touch at femoral notch" in text


# --- the touch check ---------------------------------------------------------------------------

def test_touch_far_from_every_landmark_is_not_a_check():
    from orthonav.navigation.workflow import Verification

    far = Verification("femoral_knee_centre", 9.491, np.zeros(3), 1.0, radius_mm=4.2)
    near = Verification("femoral_knee_centre", 0.35, np.zeros(3), 2.0, radius_mm=4.2)
    assert not far.is_check and near.is_check
    assert far.describe() == ("touch 9.5 mm from the nearest landmark femoral_knee_centre: not a check "
                              "(a check counts within 4.2 mm)")
    assert near.describe() == "verification at femoral_knee_centre: 0.35 mm"


def test_check_radius_follows_the_predicted_tre():
    from orthonav.navigation.workflow import Workflow, WorkflowConfig

    cfg = WorkflowConfig()
    wf = Workflow.__new__(Workflow)  # only the radius rule: no tools or frames needed
    wf.config = cfg
    wf.registration = SimpleNamespace(record=SimpleNamespace(predicted_tre_mm={"a": 0.4, "b": 10.0}))
    assert wf.check_radius_mm("a") == pytest.approx(cfg.verify_tre_factor * 0.4 + cfg.verify_margin_mm)
    assert wf.check_radius_mm("b") == cfg.verify_radius_mm  # capped
    assert wf.check_radius_mm("unknown") == cfg.verify_radius_mm  # no prediction there
    assert wf.check_radius_mm("a") < 9.491  # the by-hand demo's 9.5 mm touch is no check at FRE 0.2 mm


# --- validate ----------------------------------------------------------------------------------

def test_validate_summary_has_units_and_no_nan():
    from orthonav.cli.validate import summary_text
    from orthonav.phantoms.validation_result import Check

    result = SimpleNamespace(
        mode="session", source="/cases/knee/sessions/x", fre_mm=np.array([0.21]), fiducial_names=("f1", "f2", "f3", "f4"),
        fle_mm=0.3, pivot=None, passed=True,
        target_table=lambda: [
            {"target": "target_femoral_notch", "measured_rms_mm": 0.4, "predicted_rms_mm": 0.3, "p95_mm": 0.4, "n": 1},
            {"target": "target_tibial_spine", "measured_rms_mm": NAN, "predicted_rms_mm": 0.3, "p95_mm": NAN, "n": 0},
        ],
        checks=(Check("targets touched", 6.0, 3.0, True, "of 6 targets"), Check("TRE max", -0.0001, 2.0, True),
                Check("pivot RMS", NAN, 0.5, None, "no pivot calibration data")),
    )
    text = summary_text(result)  # type: ignore[arg-type]
    assert_no_leaks(text)
    assert "6 targets (limit >= 3 targets)" in text
    assert "pivot calibration RMS: not measured (no pivot recording)" in text
    assert "TRE at tibial spine: not measured" in text


# --- demo --------------------------------------------------------------------------------------

def test_demo_tables_have_units_and_plain_names():
    from orthonav.cli.demo import summary_tables
    from orthonav.phantoms.demo import DemoSummary

    s = DemoSummary(case_dir=Path("/tmp/x"))
    s.dice, s.hd95_mm = {"femur": 0.98}, {"femur": NAN}
    s.angles_deg, s.true_angles_deg = {"hka": 176.77, "femoral_rotation": 3.0}, {"hka": 176.77}
    s.fre_mm, s.tre_mm, s.predicted_tre_mm = 0.27, {"target_femoral_notch": 0.2}, {}
    s.guidance_error = {"n": 815.0, "flexion_deg_rms": 0.042, "varus_deg_max": NAN}
    s.loop_rate_hz, s.latency_p50_ms, s.latency_p99_ms = 176.0, NAN, NAN
    text = piped_text(*summary_tables(s))
    assert_no_leaks(text)
    assert "815 samples" in text and "Hip-knee-ankle angle" in text and "Posterior condylar angle" in text
    assert "flexion_deg_rms" not in text and "0.04 deg" in text


def test_overlay_words_follow_the_cut():
    from orthonav.navigation.overlay import saw_angle_words, signed

    assert saw_angle_words("distal_femur") == ("Flexion", "Varus")
    assert "Flexion" not in saw_angle_words("neck_left") and "Varus" not in saw_angle_words("neck_left")
    assert signed(-0.04) == "0.0" and signed(1.26) == "+1.3" and signed(-2.0) == "-2.0"


def test_metric_labels_are_plain_words():
    from orthonav.planning.report import format_metric, metric_label

    assert metric_label("cup_coverage_left_fraction") == ("Cup coverage, left", "%")
    assert metric_label("flexion_deg_rms") == ("Flexion RMS", "deg")
    assert format_metric("tibial_coverage_fraction", 0.912) == "91 %"
    assert format_metric("femoral_component_rotation_deg", -0.01) == "0.0 deg"
    assert format_metric("extension_gap_mm", NAN) == "not measured"


# --- strict plan check -------------------------------------------------------------------------

@pytest.fixture()
def empty_plan_case(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"schema_version": 1}))
    return tmp_path


def test_stages_reject_an_empty_plan_naming_what_is_missing(empty_plan_case):
    from orthonav.planning.guides import write_guides
    from orthonav.planning.report import write_plan_report

    with pytest.raises(SchemaError, match="no landmarks.*needed by the planning report"):
        write_plan_report(empty_plan_case)
    with pytest.raises(SchemaError, match="no landmarks and no distal_femur or proximal_tibia cut"):
        write_guides(empty_plan_case)
    assert not (empty_plan_case / "report").exists() and not (empty_plan_case / "guides").exists()


def test_require_passes_a_complete_plan_and_names_a_missing_cut():
    from orthonav.planning.schema import Landmark, Plan, require

    plan = Plan(landmarks={"a": Landmark(position_lps_mm=(0, 0, 0), bone="femur", method="manual")})
    assert require(plan, None, stage="x", landmarks=True, bones=True) is plan
    with pytest.raises(SchemaError, match="distal_femur or proximal_tibia cut"):
        require(plan, None, stage="guides", cuts=("distal_femur", "proximal_tibia"))


@pytest.mark.parametrize("command", ["report", "guides"])
def test_cli_exits_2_on_an_empty_plan(empty_plan_case, command):
    code = "from orthonav.cli.main import main; main()"
    out = subprocess.run([sys.executable, "-c", code, command, str(empty_plan_case)], cwd=empty_plan_case,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "no landmarks" in out.stdout + out.stderr


def test_track_table_shows_dashes_not_nan_for_a_hidden_tool():
    from orthonav.cli.track_view import tool_table
    from orthonav.tracking.frame import SourceHealth, ToolPose, ToolStatus, TrackingFrame

    frame = TrackingFrame(tools={"Pointer": ToolPose(ToolStatus.NOT_VISIBLE), "Reference": ToolPose(ToolStatus.NEVER_SEEN)},
                          host_time_s=1.0)
    text = piped_text(tool_table(frame, SourceHealth(connected=True)))
    assert_no_leaks(text)
    assert "not visible" in text and "never seen" in text and "not_visible" not in text


def test_reslice_strip_says_when_the_tip_is_outside_the_ct(tmp_path):
    """The strip is captioned; with the tool tip far outside the CT it says so (not plain black)."""
    import dataclasses

    from orthonav.navigation import load_navigation_inputs
    from orthonav.navigation.overlay import NavigationScene
    from orthonav.navigation.workflow import Workflow
    from orthonav.phantoms.scenario import knee_scenario, write_toy_case

    geo = write_toy_case(tmp_path, with_ct=True)
    inp = load_navigation_inputs(tmp_path, ct=True)
    wf = Workflow(inp.context, inp.fiducial_names, inp.fiducials_ct_mm)
    scene = NavigationScene(inp.context.toolset, inp.bones, cuts=inp.context.cuts, ct=inp.ct)
    try:
        st = next(s for s in (wf.process(fr, clock=None) for fr in knee_scenario(geo, seed=5).frames(25.0))
                  if s.tracking and s.status("Saw").value == "live")
        saw = st.tools["Saw"]

        def saw_moved_by(offset_mm):
            shift = np.eye(4)
            shift[:3, 3] = offset_mm
            moved = dataclasses.replace(saw, ct_from_tool=shift @ saw.ct_from_tool, tip_ct_mm=saw.tip_ct_mm + offset_mm)
            return dataclasses.replace(st, tools={**st.tools, "Saw": moved})

        centre = inp.ct.lps_from_ijk[:3, :3] @ ((np.array(inp.ct.array_zyx.shape[::-1]) - 1) / 2) + inp.ct.lps_from_ijk[:3, 3]
        scene.update(saw_moved_by(centre - saw.tip_ct_mm))  # tip at the centre of the CT
        note = scene.strip_note.GetInput()
        assert note.startswith("CT at the saw tip: axial, coronal, sagittal, along the tool") and "outside" not in note
        scene.update(saw_moved_by(np.array([0.0, 0.0, 2000.0])))  # 2 m above the CT
        note = scene.strip_note.GetInput()
        assert "Saw tip outside the CT: no image in axial, coronal, sagittal, along the tool" in note
    finally:
        scene.close()
