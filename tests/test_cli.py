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
