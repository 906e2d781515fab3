"""The ``orthonav`` command line. Each command parses its arguments and calls one API function.

Errors that OrthoNav raises on purpose (:class:`~orthonav.core.errors.OrthoNavError`) are
printed as one clear line naming the file and the problem, with exit code 2.

Messages, progress and errors go to standard error, results (tables) to standard output. Both
come from :func:`orthonav.cli.console.make_console`: piped or redirected, a line is never
wrapped or cut (a session path comes out whole, an error is one line).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from orthonav.cli.console import make_console
from orthonav.core.errors import OrthoNavError


# --- help that reads like a manual: no type tags, value names that say what to give ----------


class _HelpArgument(TyperArgument):
    """A positional argument shown by its name only (its help says what it is; no ``<path>`` tag)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.display_name_raw if self.required else f"[{self.display_name_raw}]"]


class _HelpOption(TyperOption):
    """An option shown with its value name (``--fle MM``), a flag with none (no ``<bool>`` tag)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or self.name.upper()


def _usage_error(error: Exception, ctx: Any) -> Exception:
    """A command-line usage error (missing argument, unknown option, bad value) as one clear line.

    Typer would print the usage, a hint and a boxed message over several lines; this is the
    same information as an :class:`~orthonav.core.errors.InputError`, which :func:`main` prints
    as one line with exit code 2. Other errors, and the "no arguments: show the help" signal of
    ``no_args_is_help``, are returned unchanged.
    """
    kind = type(error).__name__
    if kind == "NoArgsIsHelpError" or not hasattr(error, "format_message") or getattr(error, "exit_code", None) != 2:
        return error
    from orthonav.core.errors import InputError

    usage = ctx.get_usage().replace("Usage: ", "", 1).strip()
    return InputError(None, f"{error.format_message()} (usage: {usage}; see '{ctx.command_path} -h')")


def _plain(param: Any) -> Any:
    """Give a typer parameter the help display above (same parsing, same behaviour)."""
    if type(param) is TyperArgument:
        param.__class__ = _HelpArgument
    elif type(param) is TyperOption:
        param.__class__ = _HelpOption
    return param


class _PlainHelp:
    """Mixin for click commands and groups: help with no type noise (see :class:`_HelpArgument`,
    :class:`_HelpOption`) and usage errors as one line (:func:`_usage_error`)."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _plain(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        return option if option is None else _plain(option)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except Exception as e:
            converted = _usage_error(e, ctx)
            if converted is e:
                raise
            raise converted from e


class _Command(_PlainHelp, TyperCommand):
    """An ``orthonav`` command (see :class:`_PlainHelp`)."""


class _Group(_PlainHelp, TyperGroup):
    """The ``orthonav`` group, with the same help display and one-line usage errors as its commands."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except Exception as e:  # "No such command 'x'"
            converted = _usage_error(e, ctx)
            if converted is e:
                raise
            raise converted from e


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="OrthoNav: CT to bone models, knee/hip planning, tracked navigation and phantom validation.\n\n"
         "Each command reads and writes one case folder (CASE: ct.nii.gz, meshes/, plan.json, sessions/, "
         "validation/, ...). 'orthonav COMMAND -h' lists the options of a command.",
)


def _command(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@app.command`` with the plain help display."""
    return app.command(name, cls=_Command)


#: Messages, progress and errors (standard error).
console = make_console(stderr=True)
#: Results: tables and summaries (standard output).
out = make_console()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orthonav")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        out.print(f"orthonav {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_show_version, is_eager=True,
                                 help="Print the OrthoNav version and exit."),
) -> None:
    """The options of ``orthonav`` itself (the help text is the app's)."""


def _progress():
    """A progress display driven by ``callback(step, fraction)`` from the API functions."""
    from orthonav.cli.progress import StepProgress

    return StepProgress(console)


# --- the commands, in the order of the chain -------------------------------------------------


@_command()
def phantom(
    kind: str = typer.Argument(..., metavar="KIND", help="knee, hip or long-bone"),
    case: Path = typer.Argument(..., metavar="CASE", help="case folder to create"),
    seed: int = typer.Option(0, metavar="N", help="random seed of the phantom (CT noise, bead placement)"),
    small: bool = typer.Option(False, "--small", help="coarse, fast phantom (tests)"),
    printed: bool = typer.Option(False, "--printed", help="CT of the printed part (print material in air) instead of anatomy"),
    flexion: Optional[float] = typer.Option(None, metavar="DEG", help="knee flexion (deg; knee only)"),
    scale: Optional[float] = typer.Option(None, metavar="FACTOR", help="size factor (1 = adult size)"),
    noise: Optional[float] = typer.Option(None, metavar="HU", help="CT noise (HU, standard deviation)"),
    metal: Optional[float] = typer.Option(None, metavar="HU", help="metal streak artefact around the beads (HU amplitude; knee only)"),
    three_stack: bool = typer.Option(
        False, "--three-stack",
        help="knee only: write a low-dose lower-limb study instead (hip, knee, ankle DICOM series of one study in CASE/dicom, "
             "truth in CASE/truth); then 'orthonav import CASE/dicom CASE'",
    ),
) -> None:
    """Write a synthetic CT with ground truth and printable STL parts into CASE."""
    knobs = {k: v for k, v in {"flexion_deg": flexion, "scale": scale, "noise_hu": noise, "metal_artefact_hu": metal}.items() if v is not None}
    if three_stack:
        from orthonav.core.errors import InputError
        from orthonav.phantoms.study import write_lower_limb_study

        if kind != "knee" or printed:
            raise InputError(None, "--three-stack writes a knee phantom study (kind 'knee', without --printed)")
        study = write_lower_limb_study(case, seed=seed, small=small, **knobs)
        for st in study.stacks:
            sp = st.volume.spacing_mm
            console.print(f"series {st.series_number} '{st.spec.name}': {len(st.files)} slices, "
                          f"{sp[0]:.2f} x {sp[1]:.2f} x {sp[2]:.2f} mm", soft_wrap=True)
        console.print(f"[green]lower-limb study written[/] to {study.dicom_dir}; import it with: "
                      f"orthonav import {study.dicom_dir} {study.root}", soft_wrap=True)
        return
    from orthonav.phantoms.synthetic import make_phantom_case

    written = make_phantom_case(kind, case, seed=seed, small=small, printed=printed, **knobs)
    console.print(f"[green]phantom written[/] to {written.root}")


@_command("import")
def import_(
    source: list[Path] = typer.Argument(
        ..., metavar="SOURCE...", help="DICOM folder, or a NIfTI/NRRD/MHA file; several: stacks of one study (hip, knee, ankle)"
    ),
    case: Path = typer.Argument(..., metavar="CASE", help="case folder to create or update"),
    series: Optional[list[str]] = typer.Option(
        None, metavar="UID", help="series (UID, key or number) to import when a folder has several; repeat to combine stacks"
    ),
    spacing: Optional[float] = typer.Option(None, metavar="MM", help="grid spacing when stacks are combined (default: finest in-plane, >= 1 mm)"),
) -> None:
    """Import a CT into a case folder (geometry kept exactly, HU rescale applied).

    Several stacks of one study (e.g. hip, knee and ankle series) are resampled onto one grid, with CASE/scanned.nii.gz marking what was scanned (docs/import.md).
    """
    from orthonav.segmentation.importer import import_ct

    summary = import_ct(source, case, series=series or None, spacing_mm=spacing)
    shown = source[0] if len(source) == 1 else " ".join(str(s) for s in source)
    console.print(f"[green]imported[/] {shown} -> {summary.case.ct}" + (f" ({summary.n_stacks} stacks)" if summary.n_stacks > 1 else ""),
                  soft_wrap=True)
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)


@_command()
def segment(
    case: Path = typer.Argument(..., metavar="CASE", help="case folder with ct.nii.gz"),
    backend: str = typer.Option("classical", metavar="NAME", help="classical, unet or totalsegmentator"),
    anatomy: str = typer.Option("auto", metavar="NAME", help="knee, hip or auto (from the CT)"),
    weights: Optional[Path] = typer.Option(None, metavar="FILE", help="U-Net weights file (--backend unet; default: the shipped model)"),
) -> None:
    """Segment the CT into per-bone labels and meshes."""
    from rich.table import Table

    from orthonav.segmentation.pipeline import segment_case

    with _progress() as progress:
        kwargs = {"weights": weights} if weights is not None else {}
        summary = segment_case(case, backend=backend, anatomy=anatomy, progress=progress.update, **kwargs)
    side = f", side: {summary.side}" if summary.side else ""
    table = Table(title=f"{summary.case_dir} ({summary.backend}{side})")
    for col in ("bone", "label", "volume mL", "triangles", "confidence"):
        table.add_column(col, justify="left" if col == "bone" else "right")
    for name, b in summary.bones.items():
        table.add_row(name, str(b.label), f"{b.volume_ml:.1f}", str(b.triangles), "-" if b.confidence is None else f"{b.confidence:.2f}")
    out.print(table)
    for note in summary.notes:
        low = note.startswith("low confidence")  # the U-Net's per-bone confidence (issue 15)
        console.print(f"[red]warning:[/] {note}" if low else f"[yellow]note:[/] {note}", soft_wrap=True)
    total = summary.timings_s.get("total")
    console.print(f"{len(summary.files)} files written" + (f" in {total:.1f} s" if total is not None else ""))


@_command("name")
def name_(
    case: Path = typer.Argument(..., metavar="CASE", help="segmented case folder (labels.nii.gz, labels.json)"),
    assignments: list[str] = typer.Argument(..., metavar="SOURCES=NAME...", help="label values or current names joined by '+', then the new name: 3=femur_left 4+5=tibia_left"),
) -> None:
    """Name or merge bones by hand (labels, labels.json and the touched meshes are updated)."""
    from orthonav.cli.name import name_bones_cli

    for line in name_bones_cli(case, assignments):
        console.print(line, soft_wrap=True)


@_command()
def mesh(case: Path = typer.Argument(..., metavar="CASE", help="case folder with labels.nii.gz and labels.json")) -> None:
    """(Re)build the bone meshes from the label map."""
    from orthonav.segmentation.pipeline import mesh_case

    for bone, files in mesh_case(case).items():
        console.print(f"{bone}: {', '.join(str(f) for f in files)}")


@_command("evaluate-seg")
def evaluate_seg(
    pred: Path = typer.Argument(..., metavar="PRED", help="predicted labels (.nii.gz) or a case folder"),
    truth: Path = typer.Argument(..., metavar="TRUTH", help="true labels (.nii.gz) or a case folder (uses truth/)"),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="also write the scores to this JSON file"),
) -> None:
    """Dice, HD95 and mean surface distance per bone."""
    from orthonav.segmentation.evaluate import evaluate_paths, scores_table, write_scores_json

    scores = evaluate_paths(pred, truth)
    out.print(scores_table(scores))
    if json_out is not None:
        console.print(f"scores written to {write_scores_json(scores, json_out)}")


@_command("train-seg")
def train_seg(
    paths: list[Path] = typer.Argument(..., metavar="[DATA] WEIGHTS", help="DATA: folder of case folders (ct.nii.gz + labels) or phantom "
                                      "cases (not with --synthetic); WEIGHTS: file to write (a model-card JSON is written beside it)"),
    synthetic: bool = typer.Option(False, "--synthetic", help="train on domain-randomised synthetic CTs (no data needed) and calibrate"),
    cases: int = typer.Option(60, metavar="N", help="--synthetic: number of synthetic CTs drawn for training"),
    minutes: float = typer.Option(5.0, metavar="MIN", help="training time budget (minutes)"),
    steps: Optional[int] = typer.Option(None, metavar="N", help="train exactly this many optimizer steps instead of a time budget"),
    spacing: float = typer.Option(4.0, metavar="MM", help="isotropic training/inference spacing (mm); coarse gives the patch context"),
    seed: int = typer.Option(0, metavar="N", help="random seed (draws, weight initialisation, patch sampling)"),
    calibration_cases: int = typer.Option(24, metavar="N", help="--synthetic: held-out draws the softmax temperature and the confidence map are fitted on"),
    threads: Optional[int] = typer.Option(None, metavar="N", help="torch CPU threads (default 2)"),
    shapes: Optional[Path] = typer.Option(None, "--shapes", metavar="DIR", help="--synthetic: also draw real bone surfaces from DIR (e.g. ../shared/data/real_bone_surfaces: the VHF knee, the libhip femurs)"),
) -> None:
    """Train the compact 3D U-Net on CT + label pairs, or on synthetic CTs (--synthetic)."""
    from orthonav.core.errors import InputError

    if len(paths) != (1 if synthetic else 2):
        raise InputError(None, "give WEIGHTS with --synthetic, DATA WEIGHTS without it" + f" (got {len(paths)} paths)")
    if shapes is not None and not synthetic:
        raise InputError(shapes, "--shapes adds real bone surfaces to the synthetic draws: use it with --synthetic")
    weights = paths[-1]
    with _progress() as progress:
        if synthetic:
            from orthonav.phantoms.synth_ct import train_synthetic

            path = train_synthetic(weights, cases=cases, minutes=minutes, steps=steps, seed=seed, calibration_cases=calibration_cases,
                                   spacing_mm=spacing, num_threads=threads, progress=progress.update, shapes_dir=shapes)
        else:
            from orthonav.segmentation.unet import train_from_folder

            budget = dict(minutes=1e-6, min_iterations=steps) if steps is not None else dict(minutes=minutes)
            path = train_from_folder(paths[0], weights, spacing_mm=spacing, seed=seed, num_threads=threads,
                                     progress=progress.update, **budget)
    console.print(f"weights written to {path}")


@_command()
def plan(
    case: Path = typer.Argument(..., metavar="CASE", help="case folder with meshes/"),
    auto: bool = typer.Option(False, "--auto", help="automatic landmarks, axes and cuts; no window"),
    screenshot: Optional[Path] = typer.Option(None, metavar="PNG", help="render the plan off-screen to this PNG"),
    alignment: str = typer.Option("mechanical", metavar="NAME", help="TKA: mechanical or kinematic"),
    resection_mm: float = typer.Option(9.0, metavar="MM", help="TKA: distal femoral / proximal tibial resection depth (mm)"),
    slope_deg: float = typer.Option(3.0, metavar="DEG", help="TKA: posterior slope of the tibial cut (deg)"),
    bead_min_hu: float = typer.Option(2500.0, metavar="HU", help="HU threshold of the fiducial beads"),
    procedure: Optional[str] = typer.Option(None, metavar="NAME", help="tka or tha (default: from the bones in the case)"),
    side: Optional[str] = typer.Option(None, metavar="SIDE", help="operated side: left, right (THA also both); default from labels.json"),
    cup_inclination: float = typer.Option(40.0, metavar="DEG", help="THA: planned cup radiographic inclination vs the APP (deg)"),
    cup_anteversion: float = typer.Option(15.0, metavar="DEG", help="THA: planned cup radiographic anteversion vs the APP (deg)"),
    cup_medialise: float = typer.Option(0.0, metavar="MM", help="THA: move the cup centre medially from the socket centre (mm)"),
    ream: float = typer.Option(2.0, metavar="MM", help="THA: reaming added to the socket diameter when sizing the cup (mm)"),
    web: Optional[int] = typer.Option(None, "--web", metavar="PORT", help="serve the plan read-only to web browsers on this port (0: any free port) until Ctrl-C"),
    web_host: str = typer.Option("127.0.0.1", metavar="HOST", help="address the web view listens on (--web)"),
) -> None:
    """Plan landmarks, alignment, implants and cuts, knee (TKA) or hip (THA) (interactive unless --auto or --web)."""
    if auto:
        from orthonav.planning.auto import auto_plan

        p = auto_plan(case, alignment=alignment, resection_mm=resection_mm, slope_deg=slope_deg, bead_min_hu=bead_min_hu,
                      procedure=procedure, side=side, cup_inclination_deg=cup_inclination, cup_anteversion_deg=cup_anteversion,
                      cup_medialise_mm=cup_medialise, ream_mm=ream)
        angles = ", ".join(f"{k}={v:.1f}" for k, v in p.angles_deg.items())
        console.print(f"[green]plan written[/] {Path(case) / 'plan.json'}  ({angles})")
        from rich.markup import escape

        for k, why in p.not_measured.items():  # what the CT could not support (docs/anatomy.md)
            console.print(f"[yellow]{escape(k)}[/] {escape(why)}", highlight=False)
        for k, why in p.assumptions.items():
            console.print(f"[yellow]{escape(k)} assumed[/]: {escape(why)}", highlight=False)
        from orthonav.segmentation.pipeline import low_confidence_warnings

        for w in low_confidence_warnings(case):  # a U-Net bone the surgeon should check first (issue 15)
            console.print(f"[red]warning:[/] {escape(w)}", highlight=False)
    elif screenshot is None and web is None:
        from orthonav.cli.args import require_display
        from orthonav.planning.ui import open_planner

        require_display("orthonav plan CASE")
        open_planner(case)
    if screenshot is not None:
        from orthonav.planning.scene import render_plan

        console.print(f"screenshot {render_plan(case, screenshot)}")
    if web is not None:
        from orthonav.cli.navigate import plan_web_cli

        plan_web_cli(case, port=web, host=web_host)


@_command()
def report(case: Path = typer.Argument(..., metavar="CASE", help="case folder with plan.json")) -> None:
    """Write the HTML planning report (CASE/report/plan.html)."""
    from orthonav.planning.report import write_plan_report

    console.print(f"report {write_plan_report(case)}")


@_command()
def guides(case: Path = typer.Argument(..., metavar="CASE", help="case folder with a knee plan.json and meshes/")) -> None:
    """Write printable patient-specific cutting guides (CASE/guides/<bone>_guide.stl) for the knee cuts."""
    from orthonav.core.case import Case
    from orthonav.core.errors import InputError
    from orthonav.planning.guides import write_guides

    written = write_guides(case)
    if not written:
        raise InputError(Case(case).plan, "no cutting guide written: the plan has no distal femoral or proximal tibial cut")
    for bone, path in written.items():
        console.print(f"{bone}: {path}")


@_command()
def markups(
    action: str = typer.Argument(..., metavar="ACTION", help="import (set the plan's landmarks from FILE) or export (write them to FILE)"),
    case: Path = typer.Argument(..., metavar="CASE", help="case folder with plan.json"),
    path: Path = typer.Argument(..., metavar="FILE", help="3D Slicer markups file (.mrk.json)"),
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


@_command("simulate-tracker")
def simulate_tracker(
    case: Path = typer.Argument(..., metavar="CASE", help="phantom case with plan.json and truth/ (e.g. demo_out/case)"),
    port: int = typer.Option(18944, metavar="PORT", help="OpenIGTLink port"),
    host: str = typer.Option("127.0.0.1", metavar="HOST", help="address to bind (loopback unless told otherwise)"),
    rate: float = typer.Option(200.0, metavar="HZ", help="poses per second per tool"),
    duration: Optional[float] = typer.Option(None, metavar="S", help="seconds to stream (default: the script's length)"),
    truth_out: Optional[Path] = typer.Option(None, metavar="FILE", help="also record the true (noise-free) poses to this file"),
    seed: int = typer.Option(0, metavar="N", help="random seed of the script (tracker placement, localisation errors, noise)"),
    two_array: bool = typer.Option(False, "--two-array", help="one array per bone (FemurRef, TibiaRef): the knee moves "
                                   "(hip circle, range of motion, stress tests, cuts); needs a knee phantom case with plan.json"),
) -> None:
    """Stream a pointer, a saw and a reference over OpenIGTLink along the phantom OR script."""
    from orthonav.phantoms.scenario import serve_scenario
    from orthonav.phantoms.scenario_two_array import serve_two_array_scenario

    def listening(h: str, p: int, duration_s: float) -> None:
        console.print(f"simulated tracker listening on {h}:{p} ({duration_s:.0f} s script, starts when a client connects)")

    serve = serve_two_array_scenario if two_array else serve_scenario
    stats = serve(case, port=port, host=host, rate_hz=rate, duration_s=duration, truth_path=truth_out, seed=seed,
                  on_listening=listening)
    console.print(f"simulated tracker done: {stats.samples} samples in {stats.duration_s:.1f} s "
                  f"({stats.rate_hz:.0f} Hz, {stats.late_samples} late)")


@_command()
def track(
    igtl: Optional[str] = typer.Option(None, metavar="HOST:PORT", help="OpenIGTLink server to connect to (PlusServer, Slicer)"),
    listen: Optional[int] = typer.Option(None, metavar="PORT", help="listen on this port for trackers that push"),
    listen_allow: Optional[str] = typer.Option(None, metavar="HOSTS", help="with --listen: comma-separated hosts to accept (default: the first peer's host)"),
    aruco: Optional[str] = typer.Option(None, metavar="SRC", help="ArUco camera: camera index, video file or frame folder"),
    tools: Optional[Path] = typer.Option(None, metavar="FILE", help="tool definition JSON"),
    camera: Optional[Path] = typer.Option(None, metavar="FILE", help="camera calibration JSON (ArUco)"),
    ndi: Optional[str] = typer.Option(None, metavar="PORT", help="NDI tracker on this serial port"),
    replay: Optional[Path] = typer.Option(None, metavar="FILE", help="recording or PLUS .igs.mha to replay"),
    duration: Optional[float] = typer.Option(None, metavar="S", help="seconds to run (default: until Ctrl-C or the end of a replay)"),
    record: Optional[Path] = typer.Option(None, metavar="DIR", help="folder to record into"),
) -> None:
    """Show live tool states, rate and lag from one tracker source (give exactly one); optionally record."""
    from orthonav.cli.track import run_track_cli

    run_track_cli(igtl=igtl, listen=listen, aruco=aruco, tools=tools, camera=camera, ndi=ndi, replay=replay, duration_s=duration,
                  record=record, listen_allow=listen_allow)


@_command("calibrate-tool")
def calibrate_tool(
    tools: Path = typer.Argument(..., metavar="TOOLS", help="tool definition JSON to update"),
    tool: str = typer.Argument(..., metavar="TOOL", help="name of the tool to pivot-calibrate"),
    igtl: Optional[str] = typer.Option(None, metavar="HOST:PORT", help="OpenIGTLink server to connect to"),
    listen: Optional[int] = typer.Option(None, metavar="PORT", help="listen on this port for trackers that push"),
    replay: Optional[Path] = typer.Option(None, metavar="FILE", help="recording to calibrate from"),
    poses: int = typer.Option(300, metavar="N", help="poses to collect while pivoting"),
    method: str = typer.Option("ransac", metavar="NAME", help="algebraic, sphere or ransac"),
) -> None:
    """Pivot-calibrate a tool tip; writes tip offset, RMS and date into the tool file."""
    from orthonav.cli.track import calibrate_tool_cli

    console.print(calibrate_tool_cli(tools, tool, n_poses=poses, method=method, igtl=igtl, listen=listen, replay=replay))


@_command("calibrate-camera")
def calibrate_camera(
    source: str = typer.Argument(..., metavar="SOURCE", help="camera index, video file or folder of ChArUco images"),
    calibration: Path = typer.Argument(..., metavar="OUT", help="camera calibration JSON to write"),
) -> None:
    """Calibrate a camera from ChArUco board views."""
    from orthonav.cli.calibrate import calibrate_camera_cli

    console.print(calibrate_camera_cli(source, calibration))


@_command()
def navigate(
    case: Path = typer.Argument(..., metavar="CASE", help="case folder with meshes/ and plan.json"),
    igtl: str = typer.Option("127.0.0.1:18944", metavar="HOST:PORT", help="the tracker's OpenIGTLink server"),
    duration: Optional[float] = typer.Option(None, metavar="S", help="seconds of navigation (default: until Ctrl-C)"),
    off_screen: bool = typer.Option(False, "--off-screen", help="render to PNGs (CASE/sessions/<timestamp>/screenshots/) instead of a window"),
    stream_port: Optional[int] = typer.Option(None, metavar="PORT", help="also stream poses, models and guidance to 3D Slicer on this port"),
    stream_version: int = typer.Option(1, metavar="1|2", help="OpenIGTLink header version of the Slicer stream: 2 adds TransformStatus metadata (MISSING for a hidden tool), as PLUS sends it"),
    surface_points: int = typer.Option(0, metavar="N", help="after fiducials, digitise this many bone-surface points for ICP refinement"),
    tools: Optional[Path] = typer.Option(None, metavar="FILE", help="tool definition JSON (default: the phantom tool set)"),
    max_predicted_tre: float = typer.Option(2.0, metavar="MM", help="refuse registration when the predicted TRE at a plan target exceeds this (mm; 0 disables)"),
    web: Optional[int] = typer.Option(None, "--web", metavar="PORT", help="also serve the navigation screen to web browsers on this port (0: any free port)"),
    web_host: str = typer.Option("127.0.0.1", metavar="HOST", help="address the web view listens on (--web)"),
    hip_circle: int = typer.Option(0, "--hip-circle", metavar="N", help="one array per bone: fit the kinematic hip centre from N femur-array "
                                   "poses while the leg is circled (in a pelvis array's frame, else the tracker's: keep the pelvis still)"),
    kinematic_hip: bool = typer.Option(False, "--kinematic-hip", help="use the kinematic hip centre instead of the CT's for the live "
                                       "alignment (image-free mode; needs --hip-circle)"),
) -> None:
    """Register, then run the live navigation loop with overlay, recording the session."""
    from orthonav.cli.navigate import navigate_cli

    out.print(navigate_cli(case, igtl=igtl, duration_s=duration, off_screen=off_screen, stream_port=stream_port,
                           stream_version=stream_version, surface_points=surface_points, tools=tools,
                           max_predicted_tre_mm=max_predicted_tre if max_predicted_tre > 0 else None, web_port=web, web_host=web_host,
                           hip_circle=hip_circle, kinematic_hip=kinematic_hip))


@_command()
def replay(
    session: Path = typer.Argument(..., metavar="SESSION", help="recorded session folder (CASE/sessions/<timestamp>)"),
    off_screen: bool = typer.Option(False, "--off-screen", help="render to PNGs (SESSION/replay/) instead of a window"),
    allow_changed_plan: bool = typer.Option(False, "--allow-changed-plan",
                                            help="replay even though plan.json changed since recording (numbers may differ)"),
) -> None:
    """Replay a recorded session: the same numbers and pictures (exit 2 if any number differs)."""
    from orthonav.cli.navigate import replay_cli

    out.print(replay_cli(session, off_screen=off_screen, allow_changed_plan=allow_changed_plan))


@_command()
def validate(
    session: Optional[Path] = typer.Argument(None, metavar="SESSION", help="recorded session folder (CASE/sessions/<timestamp>)"),
    simulate: Optional[Path] = typer.Option(None, metavar="CASE", help="phantom case to validate by simulation instead of a session"),
    fle: float = typer.Option(0.25, metavar="MM", help="--simulate: fiducial localisation error (RMS, mm)"),
    tracker_noise: float = typer.Option(0.0, metavar="MM", help="--simulate: tracker noise per axis (mm)"),
    trials: int = typer.Option(1000, metavar="N", help="--simulate: number of simulated registrations"),
    seed: int = typer.Option(0, metavar="N", help="--simulate: random seed of the Monte Carlo"),
    config: Optional[Path] = typer.Option(None, metavar="FILE", help="pass/fail limits (ValidationConfig JSON)"),
) -> None:
    """Accuracy protocol: FRE, TRE per target, predicted TRE, calibration; HTML report in a new
    folder of CASE/validation/ per run. Exit 1 on FAIL."""
    from orthonav.cli.validate import summary_text
    from orthonav.phantoms.validation import validate_and_report

    result, report_path = validate_and_report(session=session, simulate=simulate, fle_mm=fle, trials=trials,
                                              tracker_noise_mm=tracker_noise, seed=seed, config=config)
    out.print(summary_text(result, report_path), markup=False)
    if not result.passed:
        raise typer.Exit(1)


@_command()
def demo(
    out_dir: Path = typer.Option(Path("demo_out"), "--out", metavar="DIR", help="output folder (the case is DIR/case)"),
    small: bool = typer.Option(False, "--small", help="coarse phantom (faster)"),
    seed: int = typer.Option(0, metavar="N", help="random seed of the phantom and the simulated OR session"),
) -> None:
    """Phantom -> segmentation -> plan -> simulated tracker -> navigation, with a summary and a report."""
    from orthonav.cli.demo import print_summary
    from orthonav.phantoms.demo import run_demo

    with _progress() as progress:
        summary = run_demo(out_dir, small=small, seed=seed, progress=progress.update)
    print_summary(summary, out)


# ``orthonav batch segment|plan|validate``: cohorts on Dask distributed (cli/batch.py).
from orthonav.cli.batch import add_batch_commands  # noqa: E402

add_batch_commands(app, command_cls=_Command, group_cls=_Group)


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
