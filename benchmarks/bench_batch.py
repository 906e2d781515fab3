"""Cohort throughput: ``orthonav batch segment`` on a Dask LocalCluster vs one case after another.

N copies of the small knee phantom's CT (and truth, so Dice is computed as in a batch) are
segmented (classical backend) twice: one by one in a loop in this process
(:func:`orthonav.segmentation.pipeline.segment_case` then the same Dice evaluation, the
library's default threads), and as a batch on a LocalCluster (:func:`orthonav.cli.batch_run.run_batch`:
one worker process a core, one thread each, cluster start and worker imports included). Prints
cases per minute for both, and the machine's load (other jobs share its cores).

Then one large Monte Carlo (``--trials``, default 100,000, FLE 0.25 mm, no tracker noise) on the
small knee's truth: serial in this process, and as ``orthonav batch validate --simulate`` with
its trials spread over the same LocalCluster in chunks of ``--chunk-trials`` (default 10,000);
the figures are identical (checked here), the wall times are printed.

Run: ``python benchmarks/bench_batch.py [--cases 6] [--workers N] [--trials 100000] [--chunk-trials 10000]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _cases(root: Path, n: int) -> list[Path]:
    from orthonav.phantoms.synthetic import make_phantom_case

    src = make_phantom_case("knee", root / "phantom", seed=0, small=True).root
    cases = []
    for i in range(n):
        case = root / "in" / f"knee_{i}"
        case.mkdir(parents=True)
        shutil.copy2(src / "ct.nii.gz", case / "ct.nii.gz")
        shutil.copytree(src / "truth", case / "truth")
        cases.append(case)
    return cases


def _loop(cases: list[Path], out: Path) -> tuple[float, float]:
    """One case after another in this process: copy, segment, evaluate (what a batch task does)."""
    from orthonav.segmentation.evaluate import evaluate_paths
    from orthonav.segmentation.pipeline import segment_case

    t0, cpu0 = time.perf_counter(), time.process_time()
    for case in cases:
        dst = out / case.name
        shutil.copytree(case, dst)
        segment_case(dst)
        evaluate_paths(dst, dst)
    return time.perf_counter() - t0, time.process_time() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6, help="number of small knee cases (default 6)")
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default one a core)")
    parser.add_argument("--trials", type=int, default=100_000, help="Monte Carlo trials (default 100000; 0 skips that part)")
    parser.add_argument("--chunk-trials", type=int, default=10_000, help="trials per task when spread (default 10000)")
    args = parser.parse_args()

    import numpy as np

    from orthonav.cli.batch_run import SegmentOptions, ValidateOptions, run_batch
    from orthonav.phantoms.validation_report import write_validation_report
    from orthonav.phantoms.validation_simulate import simulate_validation

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        cases = _cases(root, args.cases)
        load0 = os.getloadavg()[0]
        loop_s, loop_cpu = _loop(cases, root / "loop")
        summary = run_batch(cases, root / "batch", SegmentOptions(), workers=args.workers)
        batch_s = summary.seconds
        load1 = os.getloadavg()[0]
        task_s = sorted(o.seconds for o in summary.outcomes)
        batch_cpu = sum(o.cpu_seconds or 0.0 for o in summary.outcomes)
        failed = summary.failed
        mc_rows = []
        if args.trials:
            t0 = time.perf_counter()
            serial = simulate_validation(cases[0], trials=args.trials, seed=0)
            write_validation_report(serial, cases[0], out_dir=root / "mc-serial")
            serial_s = time.perf_counter() - t0
            mc = run_batch([cases[0]], root / "mc", ValidateOptions(simulate=True, trials=args.trials, seed=0, chunk_trials=args.chunk_trials),
                           workers=args.workers or os.cpu_count())
            spread = mc.outcomes[0]
            failed += mc.failed
            with open(root / "mc" / cases[0].name / "trials.csv", encoding="utf-8") as f:
                fre_spread = np.array([float(line.split(",")[1]) for line in list(f)[1:]])
            same = np.allclose(fre_spread, serial.fre_mm, rtol=1e-5, atol=0)  # trials.csv keeps 6 significant digits
            mc_rows = [("serial, in this process (with the report)", serial_s, ""),
                       (f"batch validate --simulate on {mc.cluster}", mc.seconds,
                        f"{spread.figures.get('trial_tasks')} tasks of <= {args.chunk_trials} trials; case task {spread.seconds:.1f} s "
                        f"(with the report); FRE per trial equal to serial: {same}")]

    n = args.cases
    rows = [
        ("one by one (loop in one process)", loop_s, 60.0 * n / loop_s, f"CPU {loop_cpu:.1f} s"),
        (f"batch on {summary.cluster}", batch_s, 60.0 * n / batch_s,
         f"CPU {batch_cpu:.1f} s in the tasks; per task {task_s[0]:.1f}-{task_s[-1]:.1f} s; speed-up x{loop_s / batch_s:.2f}"),
    ]
    print(f"segment (classical) + Dice of {n} small knee cases; {os.cpu_count()} cores, load average {load0:.1f} -> {load1:.1f}")
    print(f"{'run':<48} {'wall s':>8} {'cases/min':>10}  note")
    for name, wall, rate, note in rows:
        print(f"{name:<48} {wall:8.1f} {rate:10.1f}  {note}")
    if mc_rows:
        print(f"\nMonte Carlo, {args.trials} trials on the small knee's truth (FLE 0.25 mm)")
        print(f"{'run':<48} {'wall s':>8}  note")
        for name, wall, note in mc_rows:
            print(f"{name:<48} {wall:8.1f}  {note}")
    if failed:
        print(f"FAILED cases: {', '.join(f'{o.case} ({o.error})' for o in failed)}")


if __name__ == "__main__":
    main()
