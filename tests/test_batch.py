"""``orthonav batch``: cohorts on Dask distributed (issue 17, item 2).

* A batch segmentation of six small knee cases on a LocalCluster (two worker processes, one
  thread each), one case corrupt: the corrupt one is reported in the CSV and the JSON with its
  error, the five others are done with their Dice; a rerun skips the five and tries the corrupt
  one again.
* A batch validation against a scheduler and a worker started here as real processes
  (``dask scheduler`` + ``dask worker`` on 127.0.0.1), with each case's Monte Carlo trials spread
  over the cluster in chunks: the figures equal the serial run's for the same seed, bit for bit.
  A batch plan with its off-screen picture on the same worker.
"""

from __future__ import annotations

import csv
import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from orthonav.cli.main import app


def _batch(*args: str):
    """``orthonav batch ARGS`` in this process (exit code, output)."""
    return CliRunner().invoke(app, ["batch", *args], env={"COLUMNS": "250"})


def _rows(out: Path, stage: str) -> tuple[dict[str, dict], dict]:
    """The summary CSV's rows by case, and the summary JSON."""
    with open(out / f"batch-{stage}.csv", newline="", encoding="utf-8") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    return rows, json.loads((out / f"batch-{stage}.json").read_text(encoding="utf-8"))


def _copy_ct_case(src: Path, dst: Path) -> Path:
    """A case with the CT and the truth of ``src`` (what segmentation reads)."""
    dst.mkdir(parents=True)
    shutil.copy2(src / "ct.nii.gz", dst / "ct.nii.gz")
    shutil.copytree(src / "truth", dst / "truth")
    return dst


def test_batch_segment_local_cluster_corrupt_case_rerun(small_knee_case, tmp_path):
    from orthonav.segmentation.evaluate import evaluate_paths

    src = Path(small_knee_case.root)
    inputs = [_copy_ct_case(src, tmp_path / "in" / f"knee_{i}") for i in range(4)]
    ct_file = tmp_path / "in" / "scan_e.nii.gz"  # a CT file: imported into its case, then segmented
    shutil.copy2(src / "ct.nii.gz", ct_file)
    bad = tmp_path / "in" / "corrupt"
    bad.mkdir()
    (bad / "ct.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI image " * 64)
    inputs[2:2] = [bad]  # in the middle: it must not stop the cases after it
    inputs.append(ct_file)
    out = tmp_path / "out"

    first = _batch("segment", *map(str, inputs), "--out", str(out), "--workers", "2")
    assert first.exit_code == 1, first.output  # a case failed
    rows, doc = _rows(out, "segment")
    assert list(rows) == ["knee_0", "knee_1", "corrupt", "knee_2", "knee_3", "scan_e"]  # input order, names from the inputs
    assert doc["counts"] == {"done": 5, "failed": 1, "skipped": 0, "not run": 0}
    assert doc["cluster"] == "local cluster (2 workers x 1 thread)"
    # the corrupt case: status, the error's type, and the CLI's one-line message naming the input's file
    assert rows["corrupt"]["status"] == "failed" and rows["corrupt"]["error_type"] == "InputError"
    assert rows["corrupt"]["error"].startswith(f"{bad / 'ct.nii.gz'}: cannot be read as an image"), rows["corrupt"]
    bad_json = next(c for c in doc["cases"] if c["case"] == "corrupt")
    assert bad_json["error"] == rows["corrupt"]["error"] and bad_json["error_type"] == "InputError" and bad_json["figures"] == {}
    assert not (out / "corrupt").exists()
    # the five others: done, their outputs and done marker in OUT/<case>/, their figures from their own outputs
    for name in ("knee_0", "knee_1", "knee_2", "knee_3", "scan_e"):
        row = rows[name]
        assert row["status"] == "done" and not row["error"], row
        assert int(row["bones"]) == 4, row  # femur, tibia, fibula, patella
        case = out / name
        marker = json.loads((case / "batch-segment.json").read_text())
        assert marker["stage"] == "segment" and marker["input"] == str(tmp_path / "in" / (name if name != "scan_e" else "scan_e.nii.gz"))
        assert all((case / rel).exists() for rel in marker["outputs"]) and len(marker["outputs"]) >= 6  # labels + 4 meshes
        if name == "scan_e":
            assert row["dice_min"] == "" and (case / "import.json").is_file()  # no truth beside a bare CT file
            continue
        assert next(c for c in doc["cases"] if c["case"] == name)["figures"]["dice_min"] == float(row["dice_min"])
        assert (row["dice_min"], row["dice_mean"], row["hd95_max_mm"]) == (rows["knee_0"]["dice_min"], rows["knee_0"]["dice_mean"],
                                                                           rows["knee_0"]["hd95_max_mm"])  # same input, same figures
    scores = evaluate_paths(out / "knee_0", out / "knee_0")  # the figures are those of the case's own outputs
    assert float(rows["knee_0"]["dice_min"]) == pytest.approx(min(s.dice for s in scores.values()), abs=1e-4)
    assert float(rows["knee_0"]["dice_mean"]) == pytest.approx(np.mean([s.dice for s in scores.values()]), abs=1e-4)
    assert float(rows["knee_0"]["dice_min"]) >= 0.9, rows["knee_0"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no work folder left behind
    assert "failed corrupt" in first.output and "5 done, 1 failed, 0 skipped" in first.output

    # rerun: the five are skipped (untouched), the corrupt one is tried again and fails again
    stamps = {n: (out / n / "labels.nii.gz").stat().st_mtime_ns for n in rows if n != "corrupt"}
    second = _batch("segment", *map(str, inputs), "--out", str(out), "--workers", "1")
    assert second.exit_code == 1, second.output
    rows2, doc2 = _rows(out, "segment")
    assert doc2["counts"] == {"done": 0, "failed": 1, "skipped": 5, "not run": 0}
    assert rows2["corrupt"]["error"] == rows["corrupt"]["error"]
    assert {n: rows2[n]["dice_min"] for n in stamps} == {n: rows[n]["dice_min"] for n in stamps}  # figures of the run that made them
    assert {n: (out / n / "labels.nii.gz").stat().st_mtime_ns for n in stamps} == stamps
    assert len(re.findall(r"skipped knee_\d: finished by an earlier run", second.output)) == 4, second.output


# --- a cluster started here: dask scheduler + dask worker as real processes ---------------------


def _lines(proc: subprocess.Popen) -> "queue.Queue[str]":
    """The process's standard error, line by line, on a queue (read by a thread)."""
    q: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_for_line(q: "queue.Queue[str]", pattern: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = q.get(timeout=left)
        except queue.Empty:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; got:\n{''.join(seen)}")


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and one one-thread worker, started as processes on 127.0.0.1: the scheduler's address."""
    dask_cli = Path(sys.executable).parent / "dask"
    if not dask_cli.is_file():
        pytest.skip(f"the dask command is not installed beside {sys.executable}")
    procs: list[subprocess.Popen] = []
    try:
        scheduler = subprocess.Popen([str(dask_cli), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                                     cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(scheduler)
        address = _wait_for_line(_lines(scheduler), r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)", 60).group(1)
        worker = subprocess.Popen([str(dask_cli), "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                   "--host", "127.0.0.1", "--name", "test-worker",
                                   "--local-directory", str(tmp_path / "worker-scratch")],
                                  cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(worker)
        _wait_for_line(_lines(worker), r"Registered to:", 60)
        yield address
    finally:
        # The worker first, while its scheduler still answers: terminated together, the worker
        # waited out its 20 s to reach the gone scheduler on every run.
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def test_batch_validate_on_a_started_scheduler_trials_spread_equal_serial(small_knee_case, dask_cluster, tmp_path):
    from distributed import Client

    from orthonav.cli.batch_run import dask_trial_map
    from orthonav.phantoms.validation_report import write_raw
    from orthonav.phantoms.validation_simulate import simulate_validation

    src = Path(small_knee_case.root)
    cases = []
    for name in ("knee_a", "knee_b"):
        (tmp_path / name).mkdir()
        shutil.copytree(src / "truth", tmp_path / name / "truth")
        cases.append(tmp_path / name)
    out = tmp_path / "out"
    settings = dict(fle_mm=0.3, tracker_noise_mm=0.1, trials=400, seed=7)
    args = ["validate", "--simulate", *map(str, cases), "--out", str(out), "--scheduler", dask_cluster, "--fle", "0.3",
            "--tracker-noise", "0.1", "--trials", "400", "--seed", "7", "--chunk-trials", "150"]
    run = _batch(*args)
    assert run.exit_code == 0, run.output
    rows, doc = _rows(out, "validate")
    assert doc["counts"] == {"done": 2, "failed": 0, "skipped": 0, "not run": 0}
    assert doc["cluster"] == f"scheduler {dask_cluster} (1 worker)"
    serial = simulate_validation(src, **settings)
    write_raw(serial, tmp_path / "serial")
    for name in ("knee_a", "knee_b"):
        assert rows[name]["status"] == "done" and rows[name]["verdict"] == "PASS", rows[name]
        assert int(rows[name]["trial_tasks"]) == 3  # 400 trials in chunks of 150, from inside the case's task
        # every trial's figures as the serial run writes them
        assert (out / name / "trials.csv").read_text() == (tmp_path / "serial" / "trials.csv").read_text()
        assert (out / name / "targets.csv").read_text() == (tmp_path / "serial" / "targets.csv").read_text()
        assert float(rows[name]["fre_rms_mm"]) == pytest.approx(float(np.sqrt(np.mean(serial.fre_mm ** 2))), abs=1e-4)

    # the same through the API, from this process: arrays equal bit for bit
    with Client(dask_cluster, timeout=30):
        spread = simulate_validation(src, **settings, trial_map=dask_trial_map, chunk_trials=64)
    assert np.array_equal(spread.fre_mm, serial.fre_mm)
    assert np.array_equal(spread.fiducial_residuals_mm, serial.fiducial_residuals_mm)
    assert np.array_equal(spread.tre_vectors_mm, serial.tre_vectors_mm)
    assert spread.target_table() == serial.target_table()

    # a plan (with its picture, rendered off-screen by a worker started without any OrthoNav settings)
    planned = tmp_path / "knee_p"
    (planned / "meshes").mkdir(parents=True)
    for mesh in sorted((src / "truth" / "meshes").glob("*.stl")):
        shutil.copy2(mesh, planned / "meshes" / mesh.name)
    plan_run = _batch("plan", str(planned), "--out", str(tmp_path / "plans"), "--scheduler", dask_cluster, "--screenshot")
    assert plan_run.exit_code == 0, plan_run.output
    plan_rows, _ = _rows(tmp_path / "plans", "plan")
    plan_json = json.loads((tmp_path / "plans" / "knee_p" / "plan.json").read_text())
    assert plan_rows["knee_p"]["status"] == "done"
    assert float(plan_rows["knee_p"]["hka"]) == pytest.approx(plan_json["angles_deg"]["hka"], abs=1e-3)
    assert (tmp_path / "plans" / "knee_p" / "plan.png").stat().st_size > 10_000

    # a rerun with the same settings runs nothing; other settings make the cases current again
    again = _batch(*args)
    assert again.exit_code == 0 and _rows(out, "validate")[1]["counts"]["skipped"] == 2, again.output
    changed = _batch(*[a if a != "7" else "8" for a in args])
    assert changed.exit_code == 0 and _rows(out, "validate")[1]["counts"]["done"] == 2, changed.output


def test_batch_bad_scheduler_and_options_are_one_line_errors(tmp_path, monkeypatch):
    from orthonav.cli import batch_run
    from orthonav.cli.batch_run import ValidateOptions, run_batch
    from orthonav.core.errors import InputError

    monkeypatch.setattr(batch_run, "CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(InputError, match=r"cannot connect to the Dask scheduler at tcp://127\.0\.0\.1:9"):
        run_batch([tmp_path], tmp_path / "out", ValidateOptions(simulate=True), scheduler="tcp://127.0.0.1:9")
    with pytest.raises(InputError, match="--workers sets the size of the local cluster"):
        run_batch([tmp_path], tmp_path / "out", ValidateOptions(simulate=True), scheduler="tcp://127.0.0.1:9", workers=2)
    with pytest.raises(InputError, match="would be replaced by its own validation report"):
        run_batch([tmp_path / "x"], tmp_path, ValidateOptions(simulate=True))
