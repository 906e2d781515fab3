"""``orthonav batch segment|plan|validate INPUTS... --out DIR``: cohorts on Dask distributed.

The commands parse their arguments and call :func:`orthonav.cli.batch_run.run_batch` (the
engine: tasks, cluster, skipping finished cases, summary files); this module shows its progress
(a bar on a terminal, one line per case otherwise) and prints the summary table. Exit code 1
when a case failed (or, for ``validate``, a case's verdict is FAIL), 2 for a bad command line
or a scheduler that does not answer. docs/batch.md tells how to point a batch at a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape

from orthonav.cli.console import make_console

if TYPE_CHECKING:
    from orthonav.cli.batch_run import BatchSummary, CaseOutcome, StageOptions

#: Messages, progress and errors (standard error).
console = make_console(stderr=True)
#: Results: the summary table (standard output).
out = make_console()

#: Figures shown in the table per stage (the CSV and JSON hold them all).
_TABLE_FIGURES = {
    "segment": ("bones", "dice_min", "dice_mean", "hd95_max_mm"),
    "plan": ("hka", "ldfa", "mpta", "slope", "femoral_rotation", "not_measured"),
    "validate": ("verdict", "fre_rms_mm", "tre_rms_max_mm", "predicted_tre_rms_max_mm"),
}

_INPUTS_HELP = {
    "segment": "CT files (NIfTI/NRRD/MHA), DICOM folders or case folders with ct.nii.gz; each becomes OUT/<name>/",
    "plan": "segmented case folders (meshes/); each is copied to OUT/<name>/ and planned there",
    "validate": "recorded session folders (CASE/sessions/<timestamp>), or with --simulate phantom case folders",
}


def _figures_text(stage: str, figures: dict[str, Any]) -> str:
    shown = [k for k in _TABLE_FIGURES[stage] if k in figures] or list(figures)[:4]
    return ", ".join(f"{k} {figures[k]:g}" if isinstance(figures[k], float) else f"{k} {figures[k]}"
                     for k in shown if figures[k] is not None)


def _case_line(o: "CaseOutcome", stage: str) -> str:
    name = escape(o.case)
    if o.status == "done":
        return f"[green]done[/] {name} in {o.seconds:.1f} s" + (f" ({escape(_figures_text(stage, o.figures))})" if o.figures else "")
    if o.status == "skipped":
        return f"[cyan]skipped[/] {name}: finished by an earlier run ({escape(o.output)})"
    return f"[bold red]{o.status}[/] {name}: {escape(o.error or '')} ({escape(o.error_type or '')})"


def print_summary(summary: "BatchSummary") -> None:
    """The summary table (standard output) and the counts and files (standard error)."""
    from rich.table import Table

    table = Table(title=f"batch {summary.stage}: {summary.out_dir}")
    for col in ("case", "status", "seconds", "figures", "error"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for o in summary.outcomes:
        table.add_row(escape(o.case), o.status, f"{o.seconds:.1f}", escape(_figures_text(summary.stage, o.figures)),
                      escape(f"{o.error_type}: {o.error}" if o.error else ""))
    out.print(table)
    counts = ", ".join(f"{summary.count(s)} {s}" for s in ("done", "failed", "skipped", "not run") if summary.count(s) or s != "not run")
    console.print(f"{counts} in {summary.seconds:.1f} s on {escape(summary.cluster)}", soft_wrap=True)
    console.print(f"summary: {summary.csv_path} and {summary.json_path}", soft_wrap=True, highlight=False)


def run_batch_cli(inputs: list[Path], out_dir: Path, options: "StageOptions", *, scheduler: Optional[str], workers: Optional[int]) -> None:
    """Run the batch with a progress display, print the summary; exit 1 when a case failed."""
    from orthonav.cli.batch_run import run_batch
    from orthonav.cli.progress import StepProgress

    stage = options.stage
    step = f"batch {stage} ({len(inputs)} case{'s' if len(inputs) != 1 else ''})"
    with StepProgress(console) as progress:
        progress.update(step, 0.0)

        def on_case(o: "CaseOutcome", finished: int, total: int) -> None:
            console.print(_case_line(o, stage), soft_wrap=True, highlight=False)
            progress.update(step, finished / total)

        summary = run_batch(inputs, out_dir, options, scheduler=scheduler, workers=workers, on_case=on_case)
    print_summary(summary)
    failing = summary.failed or [o for o in summary.outcomes if o.figures.get("verdict") == "FAIL"]
    if failing:
        raise typer.Exit(1)


# --- the commands (registered by :func:`add_batch_commands`) ------------------------------------

_OUT = typer.Option(..., "--out", metavar="DIR", help="output folder: one folder per case, batch-<stage>.csv and .json")
_SCHEDULER = typer.Option(None, metavar="ADDRESS",
                          help="an existing Dask scheduler (tcp://host:8786); default: a local cluster on this machine")
_WORKERS = typer.Option(None, metavar="N", help="worker processes of the local cluster (default: one a core; one thread each)")


def segment(
    inputs: list[Path] = typer.Argument(..., metavar="INPUTS...", help=_INPUTS_HELP["segment"]),
    out_dir: Path = _OUT,
    scheduler: Optional[str] = _SCHEDULER,
    workers: Optional[int] = _WORKERS,
    backend: str = typer.Option("classical", metavar="NAME", help="classical, unet or totalsegmentator"),
    anatomy: str = typer.Option("auto", metavar="NAME", help="knee, hip or auto (from the CT)"),
    weights: Optional[Path] = typer.Option(None, metavar="FILE", help="U-Net weights file (--backend unet)"),
) -> None:
    """Segment many CTs, one Dask task each (Dice and HD95 in the summary where a case has truth/)."""
    from orthonav.cli.batch_run import SegmentOptions

    run_batch_cli(inputs, out_dir, SegmentOptions(backend=backend, anatomy=anatomy, weights=str(weights) if weights else None),
                  scheduler=scheduler, workers=workers)


def plan(
    inputs: list[Path] = typer.Argument(..., metavar="INPUTS...", help=_INPUTS_HELP["plan"]),
    out_dir: Path = _OUT,
    scheduler: Optional[str] = _SCHEDULER,
    workers: Optional[int] = _WORKERS,
    alignment: str = typer.Option("mechanical", metavar="NAME", help="TKA: mechanical or kinematic"),
    resection_mm: float = typer.Option(9.0, metavar="MM", help="TKA: distal femoral / proximal tibial resection depth (mm)"),
    slope_deg: float = typer.Option(3.0, metavar="DEG", help="TKA: posterior slope of the tibial cut (deg)"),
    bead_min_hu: float = typer.Option(2500.0, metavar="HU", help="HU threshold of the fiducial beads"),
    procedure: Optional[str] = typer.Option(None, metavar="NAME", help="tka or tha (default: from the bones in each case)"),
    side: Optional[str] = typer.Option(None, metavar="SIDE", help="operated side: left, right (THA also both); default from labels.json"),
    cup_inclination: float = typer.Option(40.0, metavar="DEG", help="THA: planned cup radiographic inclination vs the APP (deg)"),
    cup_anteversion: float = typer.Option(15.0, metavar="DEG", help="THA: planned cup radiographic anteversion vs the APP (deg)"),
    screenshot: bool = typer.Option(False, "--screenshot", help="also render each plan off-screen to OUT/<case>/plan.png"),
) -> None:
    """Plan many segmented cases automatically (TKA or THA), one Dask task each."""
    from orthonav.cli.batch_run import PlanOptions

    run_batch_cli(inputs, out_dir, PlanOptions(alignment=alignment, resection_mm=resection_mm, slope_deg=slope_deg, bead_min_hu=bead_min_hu,
                                               procedure=procedure, side=side, cup_inclination_deg=cup_inclination,
                                               cup_anteversion_deg=cup_anteversion, screenshot=screenshot),
                  scheduler=scheduler, workers=workers)


def validate(
    inputs: list[Path] = typer.Argument(..., metavar="INPUTS...", help=_INPUTS_HELP["validate"]),
    out_dir: Path = _OUT,
    scheduler: Optional[str] = _SCHEDULER,
    workers: Optional[int] = _WORKERS,
    simulate: bool = typer.Option(False, "--simulate", help="INPUTS are phantom cases: Monte Carlo on their truth"),
    fle: float = typer.Option(0.25, metavar="MM", help="--simulate: fiducial localisation error (RMS, mm)"),
    tracker_noise: float = typer.Option(0.0, metavar="MM", help="--simulate: tracker noise per axis (mm)"),
    trials: int = typer.Option(1000, metavar="N", help="--simulate: simulated registrations per case"),
    seed: int = typer.Option(0, metavar="N", help="--simulate: random seed of the Monte Carlo"),
    chunk_trials: int = typer.Option(20_000, metavar="N",
                                     help="--simulate: spread a case's trials over the cluster in chunks of N when it has more "
                                          "(0: never; the figures are the same either way)"),
    config: Optional[Path] = typer.Option(None, metavar="FILE", help="pass/fail limits (ValidationConfig JSON)"),
) -> None:
    """Accuracy protocol over many sessions or phantom cases, one Dask task each (trials spread too); report in OUT/<case>/."""
    from orthonav.cli.batch_run import ValidateOptions

    run_batch_cli(inputs, out_dir, ValidateOptions(simulate=simulate, fle_mm=fle, tracker_noise_mm=tracker_noise, trials=trials, seed=seed,
                                                   config=str(config) if config else None, chunk_trials=chunk_trials),
                  scheduler=scheduler, workers=workers)


def add_batch_commands(app: typer.Typer, *, command_cls: Any = None, group_cls: Any = None) -> typer.Typer:
    """Add the ``batch`` group (``segment``, ``plan``, ``validate``) to the ``orthonav`` app.

    ``command_cls`` / ``group_cls`` are the app's click classes, so the group has the same help
    display and one-line usage errors as the other commands.
    """
    group = typer.Typer(
        cls=group_cls, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
        help="Run segment, plan or validate over many cases on Dask distributed (a local cluster, or --scheduler ADDRESS); "
             "one task a case, a summary CSV/JSON, finished cases skipped on a rerun.",
    )
    for fn in (segment, plan, validate):
        group.command(fn.__name__, cls=command_cls)(fn)
    app.add_typer(group, name="batch")
    return group


__all__ = ["add_batch_commands", "print_summary", "run_batch_cli"]
