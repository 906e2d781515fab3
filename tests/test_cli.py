"""The command line: clear one-line errors (exit code 2) that name the file, for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orthonav.cli.args import parse_host_port
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume, make_lps_from_ijk, write_volume


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed ``orthonav`` entry point in a subprocess."""
    code = "from orthonav.cli.main import main; main()"
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_help_lists_every_stage(tmp_path):
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("phantom", "import", "segment", "plan", "simulate-tracker", "navigate", "demo", "track", "replay", "validate"):
        assert command in out.stdout


def test_missing_ct_names_the_file(tmp_path):
    out = run_cli("segment", str(tmp_path / "nocase"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "error:" in out.stderr and "ct.nii.gz" in out.stderr
    assert "Traceback" not in out.stderr


def test_non_ct_image_is_rejected(tmp_path):
    case = tmp_path / "case"
    # An MR-like volume: no air at -1000 HU, values 0..4000: not a CT.
    vol = Volume(np.random.default_rng(0).integers(0, 4000, size=(20, 20, 20)).astype(np.int16), make_lps_from_ijk([1, 1, 1], [0, 0, 0]))
    write_volume(vol, case / "ct.nii.gz")
    out = run_cli("segment", str(case), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "ct.nii.gz" in out.stderr and "Traceback" not in out.stderr
    assert not (case / "labels.nii.gz").exists() and not (case / "meshes").exists()  # nothing half-written


def test_corrupt_plan_is_a_clear_error(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    (case / "plan.json").write_text('{"schema_version": 1, "landmarks": [')
    out = run_cli("report", str(case), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "plan.json" in out.stderr and "not valid JSON" in out.stderr


def test_plan_from_newer_schema_is_refused(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    (case / "plan.json").write_text(json.dumps({"schema_version": 99}))
    out = run_cli("report", str(case), cwd=tmp_path)
    assert out.returncode == 2
    assert "newer" in out.stderr and "plan.json" in out.stderr


def test_parse_host_port():
    assert parse_host_port("10.0.0.2:18945") == ("10.0.0.2", 18945)
    assert parse_host_port("tracker") == ("tracker", 18944)
    assert parse_host_port(":5000") == ("127.0.0.1", 5000)
    with pytest.raises(InputError, match="HOST:PORT"):
        parse_host_port("host:abc")


# --- what a user sees: help, version, piped output (issue 18) ---------------------------------


def run_piped(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``orthonav`` with stdout and stderr piped, as in ``orthonav ... | tee log``, at 80 columns."""
    code = "from orthonav.cli.main import main; main()"
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def long_folder(tmp_path: Path) -> Path:
    """A folder whose path is far longer than 80 columns (as real case paths often are)."""
    path = tmp_path / "a_hospital_share" / "orthopaedics" / "navigation_cases_2026" / "patient_0001_left_knee_phantom"
    assert len(str(path)) > 100
    return path


def test_version_and_short_help(tmp_path):
    from importlib.metadata import version

    out = run_cli("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"orthonav {version('orthonav')}", out
    short = run_cli("-h", cwd=tmp_path)
    assert short.returncode == 0 and "validate" in short.stdout and "--version" in short.stdout
    sub = run_cli("replay", "-h", cwd=tmp_path)
    assert sub.returncode == 0 and "--off-screen" in sub.stdout and "-h" in sub.stdout


def test_help_has_no_type_noise_and_documents_every_option():
    import re

    import typer.main
    from typer.testing import CliRunner

    from orthonav.cli.main import app

    group = typer.main.get_command(app)
    runner = CliRunner()
    assert set(group.commands) >= {"phantom", "import", "segment", "mesh", "evaluate-seg", "train-seg", "plan", "report", "guides",
                                   "markups", "simulate-tracker", "track", "calibrate-tool", "calibrate-camera", "navigate",
                                   "replay", "validate", "demo"}
    for name, command in group.commands.items():
        for param in command.params:  # every argument and option says what it is
            assert param.help and param.help.strip(), f"orthonav {name}: {param.name} has no help"
        shown = runner.invoke(app, [name, "-h"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, (name, shown.output)
        assert not re.search(r"<(bool|int|float|str|text|path|file|integer)>", shown.output), (name, shown.output)
        assert "--no-" not in shown.output, (name, shown.output)  # flags are plain switches
    assert "render to PNGs (SESSION/replay/)" in runner.invoke(app, ["replay", "-h"], env={"COLUMNS": "200"}).output


def test_progress_not_on_a_terminal_prints_finished_steps_only():
    import io

    from rich.console import Console

    from orthonav.cli.progress import StepProgress

    buf = io.StringIO()
    with StepProgress(Console(file=buf, width=80)) as progress:
        progress.update("reading CT", 0.0)
        progress.update("reading CT", 1.0)
        progress.update("meshing", 0.5)
        progress.update("done", 1.0)  # the API's end marker: no line of its own
    assert [line.split(":")[0] for line in buf.getvalue().splitlines()] == ["reading CT", "meshing"]
    buf = io.StringIO()
    with pytest.raises(InputError):
        with StepProgress(Console(file=buf, width=80)) as progress:
            progress.update("reading CT", 1.0)
            progress.update("segmenting", 0.3)
            raise InputError(None, "not a CT")
    assert buf.getvalue().splitlines() == [buf.getvalue().splitlines()[0]] and buf.getvalue().startswith("reading CT: done")


def test_progress_on_a_terminal_is_erased_by_an_error():
    import io

    from rich.console import Console

    from orthonav.cli.progress import StepProgress

    def drawn(fail: bool) -> str:
        buf = io.StringIO()
        try:
            with StepProgress(Console(file=buf, width=80, force_terminal=True)) as progress:
                progress.update("segmenting", 0.3)
                if fail:
                    raise InputError(None, "not a CT")
        except InputError:
            pass
        return buf.getvalue()

    # The bar is drawn either way; after an error the display ends by moving the cursor back up over
    # it and erasing those lines (rich's restore_cursor: ESC[2K ... ESC[1A), so no half bar stays above the error.
    ok, failed = drawn(False), drawn(True)
    assert "segmenting" in ok and "segmenting" in failed
    def tail(text: str) -> str:
        return text.replace("\x1b[?25h", "").rstrip("\n")  # without the final "show cursor"

    assert tail(failed).endswith("\x1b[2K") and not tail(ok).endswith("\x1b[2K")


def test_error_is_one_whole_line_when_piped(tmp_path):
    case = long_folder(tmp_path)
    vol = Volume(np.random.default_rng(0).integers(0, 4000, size=(20, 20, 20)).astype(np.int16), make_lps_from_ijk([1, 1, 1], [0, 0, 0]))
    write_volume(vol, case / "ct.nii.gz")
    out = run_piped("segment", str(case), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and str(case / "ct.nii.gz") in lines[-1], out.stderr  # whole path, one line
    assert sum(line.startswith("error") for line in lines) == 1
    for line in lines[:-1]:  # only finished steps precede the error: no bar, no percentage
        assert line.endswith(" s") and ": done in " in line and "%" not in line and "━" not in line, out.stderr
    for args in (["validate"], ["segment"], ["validate", "--trials", "many"], ["segment", str(case), "--bogus"], ["nosuch"]):
        bad = run_piped(*args, cwd=tmp_path)  # API and usage errors alike: one line, exit code 2, where to look
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, (args, bad.stderr)
        assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr and "╭" not in bad.stderr, bad.stderr
    assert "Missing argument 'CASE'" in run_piped("segment", cwd=tmp_path).stderr


@pytest.mark.slow  # a small knee phantom (~10 s) and two short Monte Carlo runs
def test_piped_paths_are_whole_and_validate_runs_keep_their_own_folders(tmp_path):
    case = long_folder(tmp_path)
    made = run_piped("phantom", "knee", str(case), "--small", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert f"phantom written to {case}" in made.stderr.splitlines(), made.stderr
    reports = []
    for seed in ("1", "2"):
        run = run_piped("validate", "--simulate", str(case), "--trials", "20", "--seed", seed, cwd=tmp_path)
        assert run.returncode in (0, 1), run.stderr  # a verdict, not an error
        lines = [line for line in run.stdout.splitlines() if str(tmp_path) in line]
        assert lines and all(str(case) in line for line in lines), run.stdout  # no path cut or wrapped
        (report,) = [Path(line.removeprefix("report: ")) for line in run.stdout.splitlines() if line.startswith("report: ")]
        assert report.is_file() and report.parent.parent == case / "validation"
        reports.append(report)
    first, second = reports
    assert first.parent != second.parent and first.is_file()  # the second run did not overwrite the first
    seeds = [json.loads((r.parent / "result.json").read_text(encoding="utf-8"))["parameters"]["seed"] for r in reports]
    assert seeds == [1, 2]
