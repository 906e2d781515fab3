"""The ``orthonav`` command line. Each command parses its arguments and calls one API function.

Errors that OrthoNav raises on purpose (:class:`~orthonav.core.errors.OrthoNavError`) are
printed as one clear line naming the file and the problem, with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from orthonav.core.errors import OrthoNavError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="OrthoNav: CT to bone models, knee/hip planning, tracked navigation and phantom validation.",
)
console = Console(stderr=True)


def _progress():
    """A rich progress bar driven by ``callback(step, fraction)`` from the API functions."""
    from orthonav.cli.progress import StepProgress

    return StepProgress(console)


@app.command()
def phantom(
    kind: str = typer.Argument(..., help="knee, hip or long-bone"),
    case: Path = typer.Argument(..., help="case folder to create"),
    seed: int = typer.Option(0, help="random seed (noise, placement)"),
    small: bool = typer.Option(False, help="coarse, fast phantom (tests)"),
    printed: bool = typer.Option(False, help="CT of the printed part (print material in air) instead of anatomy"),
    flexion: Optional[float] = typer.Option(None, help="knee flexion (deg; knee only)"),
    scale: Optional[float] = typer.Option(None, help="size factor"),
    noise: Optional[float] = typer.Option(None, help="CT noise (HU, standard deviation)"),
    metal: Optional[float] = typer.Option(None, help="metal streak artefact around the beads (HU amplitude; knee only)"),
) -> None:
    """Write a synthetic CT with ground truth and printable STL parts into CASE."""
    from orthonav.phantoms.synthetic import make_phantom_case

    knobs = {k: v for k, v in {"flexion_deg": flexion, "scale": scale, "noise_hu": noise, "metal_artefact_hu": metal}.items() if v is not None}
    out = make_phantom_case(kind, case, seed=seed, small=small, printed=printed, **knobs)
    console.print(f"[green]phantom written[/] to {out.root}")


@app.command("import")
def import_(
    source: Path = typer.Argument(..., help="DICOM folder, or a NIfTI/NRRD/MHA file"),
    case: Path = typer.Argument(..., help="case folder to create or update"),
    series: Optional[str] = typer.Option(None, help="SeriesInstanceUID to import when the folder has several"),
) -> None:
    """Import a CT into a case folder (geometry kept exactly, HU rescale applied)."""
    from orthonav.segmentation.importer import import_source

    out = import_source(source, case, series=series)
    console.print(f"[green]imported[/] {source} -> {out.ct}")


@app.command()
def segment(
    case: Path = typer.Argument(..., help="case folder with ct.nii.gz"),
    backend: str = typer.Option("classical", help="classical, unet or totalsegmentator"),
    anatomy: str = typer.Option("auto", help="knee, hip or auto"),
    weights: Optional[Path] = typer.Option(None, help="unet weights file"),
) -> None:
    """Segment the CT into per-bone labels and meshes."""
    from orthonav.segmentation.pipeline import segment_case

    with _progress() as progress:
        kwargs = {"weights": weights} if weights is not None else {}
        summary = segment_case(case, backend=backend, anatomy=anatomy, progress=progress.update, **kwargs)
    from rich.table import Table

    table = Table(title=f"{summary.case_dir} ({summary.backend}, side: {summary.side})")
    for col in ("bone", "label", "volume mL", "triangles"):
        table.add_column(col, justify="left" if col == "bone" else "right")
    for name, b in summary.bones.items():
        table.add_row(name, str(b.label), f"{b.volume_ml:.1f}", str(b.triangles))
    Console().print(table)
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"{len(summary.files)} files written in {summary.timings_s.get('total', float('nan')):.1f} s")


@app.command()
def mesh(case: Path = typer.Argument(..., help="case folder with labels.nii.gz")) -> None:
    """(Re)build the bone meshes from the label map."""
    from orthonav.segmentation.pipeline import mesh_case

    console.print(mesh_case(case))


@app.command("evaluate-seg")
def evaluate_seg(
    pred: Path = typer.Argument(..., help="predicted labels (.nii.gz) or a case folder"),
    truth: Path = typer.Argument(..., help="true labels (.nii.gz) or a case folder (uses truth/)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the scores as JSON"),
) -> None:
    """Dice, HD95 and mean surface distance per bone."""
    from orthonav.segmentation.evaluate import evaluate_paths

    from orthonav.segmentation.evaluate import scores_table, write_scores_json

    scores = evaluate_paths(pred, truth)
    Console().print(scores_table(scores))
    if json_out is not None:
        write_scores_json(scores, json_out)


@app.command("train-seg")
def train_seg(
    data: Path = typer.Argument(..., help="folder of case folders (ct.nii.gz + labels) or phantom cases"),
    out: Path = typer.Argument(..., help="weights file to write (a model-card JSON is written beside it)"),
    minutes: float = typer.Option(5.0, help="training time budget (minutes)"),
    steps: Optional[int] = typer.Option(None, help="train exactly this many optimizer steps instead of a time budget"),
    spacing: float = typer.Option(4.0, help="isotropic training/inference spacing (mm); coarse gives the patch context"),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default 2)"),
) -> None:
    """Train the compact 3D U-Net on CT + label pairs."""
    from orthonav.segmentation.unet import train_from_folder

    budget = dict(minutes=1e-6, min_iterations=steps) if steps is not None else dict(minutes=minutes)
    with _progress() as progress:
        path = train_from_folder(data, out, spacing_mm=spacing, seed=seed, num_threads=threads,
                                 progress=progress.update, **budget)
    console.print(f"weights {path}")


@app.command()
def plan(
    case: Path = typer.Argument(..., help="case folder with meshes/"),
    auto: bool = typer.Option(False, "--auto", help="automatic landmarks, axes and cuts; no window"),
    screenshot: Optional[Path] = typer.Option(None, help="render the plan off-screen to this PNG"),
    alignment: str = typer.Option("mechanical", help="mechanical or kinematic"),
    resection_mm: float = typer.Option(9.0, help="distal femoral / proximal tibial resection depth (mm)"),
    slope_deg: float = typer.Option(3.0, help="posterior slope of the tibial cut (deg)"),
    bead_min_hu: float = typer.Option(2500.0, help="HU threshold of the fiducial beads"),
    procedure: Optional[str] = typer.Option(None, help="tka or tha (default: from the bones in the case)"),
    side: Optional[str] = typer.Option(None, help="operated side: left, right (THA also both); default from labels.json"),
    cup_inclination: float = typer.Option(40.0, help="THA: planned cup radiographic inclination vs the APP (deg)"),
    cup_anteversion: float = typer.Option(15.0, help="THA: planned cup radiographic anteversion vs the APP (deg)"),
    cup_medialise: float = typer.Option(0.0, help="THA: move the cup centre medially from the socket centre (mm)"),
    ream: float = typer.Option(2.0, help="THA: reaming added to the socket diameter when sizing the cup (mm)"),
) -> None:
    """Plan landmarks, alignment, implants and cuts, knee (TKA) or hip (THA) (interactive unless --auto)."""
    if auto:
        from orthonav.planning.auto import auto_plan

        p = auto_plan(case, alignment=alignment, resection_mm=resection_mm, slope_deg=slope_deg, bead_min_hu=bead_min_hu,
                      procedure=procedure, side=side, cup_inclination_deg=cup_inclination, cup_anteversion_deg=cup_anteversion,
                      cup_medialise_mm=cup_medialise, ream_mm=ream)
        angles = ", ".join(f"{k}={v:.1f}" for k, v in p.angles_deg.items())
        console.print(f"[green]plan written[/] {Path(case) / 'plan.json'}  ({angles})")
    elif screenshot is None:
        from orthonav.cli.args import require_display
        from orthonav.planning.ui import open_planner

        require_display("orthonav plan CASE")
        open_planner(case)
    if screenshot is not None:
        from orthonav.planning.scene import render_plan

        console.print(f"screenshot {render_plan(case, screenshot)}")


@app.command()
def report(case: Path = typer.Argument(..., help="case folder with plan.json")) -> None:
    """Write the HTML planning report (CASE/report/plan.html)."""
    from orthonav.planning.report import write_plan_report

    console.print(f"report {write_plan_report(case)}")


@app.command()
def guides(case: Path = typer.Argument(..., help="case folder with plan.json and meshes/")) -> None:
    """Write printable patient-specific cutting guides (CASE/guides/<bone>_guide.stl)."""
    from orthonav.planning.guides import write_guides

    for bone, path in write_guides(case).items():
        console.print(f"{bone}: {path}")


@app.command()
def markups(
    action: str = typer.Argument(..., help="import or export"),
    case: Path = typer.Argument(..., help="case folder with plan.json"),
    path: Path = typer.Argument(..., help="3D Slicer markups file (.mrk.json)"),
    ras: bool = typer.Option(False, "--ras", help="export in RAS (default LPS)"),
) -> None:
    """Exchange landmarks with 3D Slicer markups (.mrk.json); import overrides the plan's landmarks."""
    from orthonav.core.case import Case
    from orthonav.core.errors import InputError
    from orthonav.planning.markups import export_markups, import_markups_into_case
    from orthonav.planning.schema import load_plan

    if action == "export":
        plan_path = Case(case).plan
        console.print(f"wrote {export_markups(load_plan(plan_path).landmarks, path, coordinate_system='RAS' if ras else 'LPS')}")
    elif action == "import":
        console.print(f"landmarks set from {path}: {', '.join(import_markups_into_case(case, path))}")
    else:
        raise InputError(None, f"markups action must be 'import' or 'export', got {action!r}")


@app.command("simulate-tracker")
def simulate_tracker(
    case: Path = typer.Argument(..., help="phantom case with plan.json and truth/ (e.g. demo_out/case)"),
    port: int = typer.Option(18944, help="OpenIGTLink port"),
    host: str = typer.Option("127.0.0.1", help="address to bind (loopback unless told otherwise)"),
    rate: float = typer.Option(200.0, help="poses per second per tool"),
    duration: Optional[float] = typer.Option(None, help="seconds; default: the script's length"),
    truth_out: Optional[Path] = typer.Option(None, help="recording of the true poses"),
    seed: int = typer.Option(0),
) -> None:
    """Stream a pointer, a saw and a reference over OpenIGTLink along the phantom OR script."""
    from orthonav.phantoms.scenario import serve_scenario

    def listening(h: str, p: int, duration_s: float) -> None:
        console.print(f"simulated tracker listening on {h}:{p} ({duration_s:.0f} s script, starts when a client connects)",
                      soft_wrap=True)

    stats = serve_scenario(case, port=port, host=host, rate_hz=rate, duration_s=duration, truth_path=truth_out, seed=seed,
                           on_listening=listening)
    console.print(f"simulated tracker done: {stats.samples} samples in {stats.duration_s:.1f} s "
                  f"({stats.rate_hz:.0f} Hz, {stats.late_samples} late)", soft_wrap=True)


@app.command()
def track(
    igtl: Optional[str] = typer.Option(None, help="HOST:PORT of an OpenIGTLink server (PlusServer, Slicer)"),
    listen: Optional[int] = typer.Option(None, help="listen on this port for trackers that push"),
    listen_allow: Optional[str] = typer.Option(None, help="with --listen: comma-separated hosts to accept (default: the first peer's host)"),
    aruco: Optional[str] = typer.Option(None, help="camera index, video file or frame folder"),
    tools: Optional[Path] = typer.Option(None, help="tool definition JSON"),
    camera: Optional[Path] = typer.Option(None, help="camera calibration JSON (ArUco)"),
    ndi: Optional[str] = typer.Option(None, help="NDI serial port"),
    replay: Optional[Path] = typer.Option(None, help="recording or PLUS .igs.mha to replay"),
    duration: Optional[float] = typer.Option(None, help="seconds to run"),
    record: Optional[Path] = typer.Option(None, help="folder to record into"),
) -> None:
    """Show live tool states, rate and lag from any tracker source; optionally record."""
    from orthonav.cli.track import run_track_cli

    run_track_cli(igtl=igtl, listen=listen, aruco=aruco, tools=tools, camera=camera, ndi=ndi, replay=replay, duration_s=duration,
                  record=record, listen_allow=listen_allow)


@app.command("calibrate-tool")
def calibrate_tool(
    tools: Path = typer.Argument(..., help="tool definition JSON to update"),
    tool: str = typer.Argument(..., help="name of the tool to pivot-calibrate"),
    igtl: Optional[str] = typer.Option(None, help="HOST:PORT of an OpenIGTLink server"),
    listen: Optional[int] = typer.Option(None, help="listen on this port for trackers that push"),
    replay: Optional[Path] = typer.Option(None, help="recording to calibrate from"),
    poses: int = typer.Option(300, help="poses to collect while pivoting"),
    method: str = typer.Option("ransac", help="algebraic, sphere or ransac"),
) -> None:
    """Pivot-calibrate a tool tip; writes tip offset, RMS and date into the tool file."""
    from orthonav.cli.track import calibrate_tool_cli

    console.print(calibrate_tool_cli(tools, tool, n_poses=poses, method=method, igtl=igtl, listen=listen, replay=replay))


@app.command("calibrate-camera")
def calibrate_camera(
    source: str = typer.Argument(..., help="camera index, video file or folder of ChArUco images"),
    out: Path = typer.Argument(..., help="camera calibration JSON to write"),
) -> None:
    """Calibrate a camera from ChArUco board views."""
    from orthonav.cli.calibrate import calibrate_camera_cli

    console.print(calibrate_camera_cli(source, out))


@app.command()
def navigate(
    case: Path = typer.Argument(..., help="case folder with meshes/ and plan.json"),
    igtl: str = typer.Option("127.0.0.1:18944", help="HOST:PORT of the tracker's OpenIGTLink server"),
    duration: Optional[float] = typer.Option(None, help="seconds of navigation (default: until Ctrl-C)"),
    off_screen: bool = typer.Option(False, "--off-screen", help="render to PNGs instead of a window"),
    stream_port: Optional[int] = typer.Option(None, help="also stream poses, models and guidance to 3D Slicer on this port"),
    surface_points: int = typer.Option(0, help="after fiducials, digitise this many bone-surface points for ICP refinement"),
    tools: Optional[Path] = typer.Option(None, help="tool definition JSON (default: the phantom tool set)"),
    max_predicted_tre: float = typer.Option(2.0, help="refuse registration when the predicted TRE at a plan target exceeds this (mm; 0 disables)"),
) -> None:
    """Register, then run the live navigation loop with overlay, recording the session."""
    from orthonav.cli.navigate import navigate_cli

    console.print(navigate_cli(case, igtl=igtl, duration_s=duration, off_screen=off_screen, stream_port=stream_port,
                               surface_points=surface_points, tools=tools,
                               max_predicted_tre_mm=max_predicted_tre if max_predicted_tre > 0 else None))


@app.command()
def replay(
    session: Path = typer.Argument(..., help="sessions/<timestamp> folder"),
    off_screen: bool = typer.Option(False, "--off-screen"),
    allow_changed_plan: bool = typer.Option(False, "--allow-changed-plan",
                                            help="replay even though plan.json changed since recording (numbers may differ)"),
) -> None:
    """Replay a recorded session: the same numbers and pictures (exit 2 if any number differs)."""
    from orthonav.cli.navigate import replay_cli

    console.print(replay_cli(session, off_screen=off_screen, allow_changed_plan=allow_changed_plan))


@app.command()
def validate(
    session: Optional[Path] = typer.Argument(None, help="recorded session folder (CASE/sessions/<timestamp>)"),
    simulate: Optional[Path] = typer.Option(None, help="phantom case to validate by simulation"),
    fle: float = typer.Option(0.25, help="fiducial localisation error (RMS mm) for --simulate"),
    tracker_noise: float = typer.Option(0.0, help="tracker noise per axis (mm) for --simulate"),
    trials: int = typer.Option(1000, help="simulated trials"),
    seed: int = typer.Option(0),
    config: Optional[Path] = typer.Option(None, help="pass/fail thresholds (ValidationConfig JSON)"),
) -> None:
    """Accuracy protocol: FRE, TRE per target, predicted TRE, calibration; HTML report. Exit 1 on FAIL."""
    from orthonav.cli.validate import summary_text
    from orthonav.phantoms.validation import validate_and_report

    result, report_path = validate_and_report(session=session, simulate=simulate, fle_mm=fle, trials=trials,
                                              tracker_noise_mm=tracker_noise, seed=seed, config=config)
    console.print(summary_text(result, report_path))
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), help="output folder"),
    small: bool = typer.Option(False, help="coarse phantom (faster)"),
    seed: int = typer.Option(0),
) -> None:
    """Phantom -> segmentation -> plan -> simulated tracker -> navigation, with a summary and a report."""
    from orthonav.cli.demo import print_summary
    from orthonav.phantoms.demo import run_demo

    with _progress() as progress:
        summary = run_demo(out, small=small, seed=seed, progress=progress.update)
    print_summary(summary, Console())


def main() -> None:
    """Console-script entry point: run the app and turn OrthoNav errors into one clear line."""
    try:
        app(prog_name="orthonav")
    except OrthoNavError as e:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
