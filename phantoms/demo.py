"""The demo: the whole chain on the built-in knee phantom, with ground truth at every step.

phantom -> classical segmentation (Dice vs truth) -> automatic plan -> simulated tracker over
a real OpenIGTLink socket on 127.0.0.1 (pointer touches the fiducials and targets, then the saw
sweeps the planned distal femoral cut) -> registration and live navigation (FRE, TRE vs truth,
saw guidance vs scripted truth, loop rate and latency) -> the two-array knee workflow (one
reference array per bone, :mod:`orthonav.phantoms.demo_knee`: per-bone registration, the
kinematic hip centre from a hip circle, live alignment and gaps over a range of motion with
varus/valgus stress, both cuts while the other bone moves, all against the truth) ->
``report/index.html``.

:func:`run_demo` returns the figures (:class:`DemoSummary`); the command line prints them as
tables (:mod:`orthonav.cli.demo`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from orthonav.core.case import Case, read_labels_table
from orthonav.core.errors import InputError
from orthonav.core.volume import read_volume

from .demo_knee import run_knee_demo
from .demo_report import write_demo_report
from .demo_summary import DemoSummary

Progress = Callable[[str, float], None]

#: Steps of the demo, in order, as shown by the progress display.
STEPS = ("phantom", "segmentation", "plan", "navigation", "two-array", "report")

#: What the demo's simulated OR injects: fiducial localisation error (RMS 3D, mm, a fixed offset
#: per touch), tracker noise per sample (mm per axis; deg about a random axis) and stream rate (Hz).
FLE_MM, TRACKER_NOISE_MM, ROTATION_NOISE_DEG, RATE_HZ = 0.25, 0.1, 0.05, 200.0
#: Frame rate (Hz) of the two-array part (offline, frame by frame).
KNEE_RATE_HZ = 50.0


def _prepare_out(out_dir: Path) -> Case:
    """``OUT/case``: removed first only when it is an earlier demo case (it has truth/)."""
    case_dir = out_dir / "case"
    if case_dir.exists():
        if not (case_dir / "truth" / "truth.json").is_file():
            raise InputError(case_dir, "exists and is not an earlier demo case; choose another --out")
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    return Case(case_dir)


def _report_screenshots(session_dir: Path | None, shots: list[Path], n: int = 4) -> list[Path]:
    """Up to ``n`` overlay pictures for the report: spread over the session, always including the
    last one taken while the saw was guided against the planned cut (the point of the demo)."""
    if not shots:
        return []
    picks = {int(round(x)) for x in np.linspace(0, len(shots) - 1, n)}
    if session_dir is not None:
        from orthonav.navigation.session import read_guidance, read_session_info

        saw_seqs = {r["seq"] for r in read_guidance(session_dir) if r.get("saw")}
        seq_of = read_session_info(session_dir).screenshots
        sawing = [i for i, p in enumerate(shots) if seq_of.get(p.name) in saw_seqs]
        if sawing:
            picks.discard(max(picks))
            picks.add(sawing[-1])
    return [shots[i] for i in sorted(picks)]


def run_demo(out_dir: str | Path = "demo_out", *, small: bool = False, seed: int = 0, progress: Progress | None = None) -> DemoSummary:
    """Run the whole chain on the knee phantom in ``OUT/case`` and write ``OUT/case/report/index.html``.

    Parameters
    ----------
    out_dir
        Output folder; ``OUT/case`` is (re)created.
    small
        Use the coarse phantom (tests); the default is the full-resolution knee.
    seed
        Seeds the phantom noise and the simulated OR session.
    progress
        ``progress(step, fraction)`` for a progress display.
    """
    from orthonav.phantoms.scenario import simulate_navigation
    from orthonav.phantoms.synthetic import make_phantom_case
    from orthonav.phantoms.truth import read_truth
    from orthonav.planning.auto import auto_plan
    from orthonav.planning.scene import render_plan
    from orthonav.segmentation.evaluate import evaluate_segmentation
    from orthonav.segmentation.pipeline import segment_case

    def tick(step: str, fraction: float) -> None:
        if progress is not None:
            progress(step, fraction)

    out = Path(out_dir)
    case = _prepare_out(out)
    summary = DemoSummary(case_dir=case.root)
    timer = time.perf_counter()

    tick("phantom", 0.0)
    make_phantom_case("knee", case.root, seed=seed, small=small)
    truth = read_truth(case.root)
    summary.timings_s["phantom"] = time.perf_counter() - timer
    tick("phantom", 1.0)

    timer = time.perf_counter()
    segment_case(case.root, progress=lambda step, f: tick("segmentation", f))
    scores = evaluate_segmentation(
        read_volume(case.labels), read_labels_table(case.labels_json),
        read_volume(case.truth_dir / "labels.nii.gz"), read_labels_table(case.truth_dir / "labels.json"),
    )
    summary.dice = {b: s.dice for b, s in scores.items()}
    summary.hd95_mm = {b: s.hd95_mm for b, s in scores.items()}
    summary.timings_s["segmentation"] = time.perf_counter() - timer
    tick("segmentation", 1.0)

    timer = time.perf_counter()
    plan = auto_plan(case.root)
    summary.angles_deg = dict(plan.angles_deg)
    summary.true_angles_deg = dict(truth.angles_deg)
    case.report_dir.mkdir(parents=True, exist_ok=True)
    plan_png = render_plan(case.root, case.report_dir / "plan.png")
    summary.screenshots.append(Path(plan_png))
    summary.timings_s["plan"] = time.perf_counter() - timer
    tick("plan", 1.0)

    timer = time.perf_counter()
    events: list[str] = []

    def on_event(text: str) -> None:  # workflow events: captures, registration, verification
        events.append(text)
        tick("navigation", min(0.95, len(events) / 20.0))

    # The scripted OR session, streamed over a real OpenIGTLink socket on 127.0.0.1 at 200 Hz.
    summary.injected = {"seed": seed, "fle_mm": FLE_MM, "tracker_noise_mm": TRACKER_NOISE_MM,
                        "rotation_noise_deg": ROTATION_NOISE_DEG, "rate_hz": RATE_HZ}
    nav, _scenario = simulate_navigation(case.root, seed=seed, fle_mm=FLE_MM, rate_hz=RATE_HZ, tracker_noise_mm=TRACKER_NOISE_MM,
                                         rotation_noise_deg=ROTATION_NOISE_DEG, over_socket=True, progress=on_event)
    summary.fre_mm = nav.fre_mm
    summary.tre_mm = dict(nav.tre_mm)
    summary.predicted_tre_mm = dict(nav.predicted_tre_mm)
    summary.guidance_error = dict(nav.guidance_error)
    summary.loop_rate_hz = nav.loop_rate_hz
    summary.latency_p50_ms = nav.latency_p50_ms
    summary.latency_p99_ms = nav.latency_p99_ms
    summary.session_dir = nav.session_dir
    for i, shot in enumerate(_report_screenshots(nav.session_dir, nav.screenshots)):
        dest = case.report_dir / f"navigation_{i}.png"
        shutil.copyfile(shot, dest)
        summary.screenshots.append(dest)
    summary.timings_s["navigation"] = time.perf_counter() - timer
    tick("navigation", 1.0)

    # One reference array per bone on the same case and plan, run through navigation's workflow
    # frame by frame at KNEE_RATE_HZ (no socket: the live path was shown above), scored against the truth.
    timer = time.perf_counter()
    summary.knee = run_knee_demo(case.root, case.report_dir, seed=seed, fle_mm=FLE_MM, tracker_noise_mm=TRACKER_NOISE_MM,
                                 rotation_noise_deg=ROTATION_NOISE_DEG, rate_hz=KNEE_RATE_HZ,
                                 progress=lambda f: tick("two-array", f))
    summary.timings_s["two-array"] = time.perf_counter() - timer

    summary.report = write_demo_report(summary)
    tick("report", 1.0)
    return summary


__all__ = ["KNEE_RATE_HZ", "STEPS", "DemoSummary", "Progress", "run_demo"]
