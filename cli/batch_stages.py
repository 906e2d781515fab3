"""The stages of ``orthonav batch`` as they run on a Dask worker: options, settings, one case.

:func:`run_stage` runs one stage (``segment``, ``plan``, ``validate``) for one input into a work
folder and returns the case's key figures and the outputs it wrote; the engine
(:mod:`orthonav.cli.batch_run`) wraps it in a task, the done marker and the summary. Every task
first applies :func:`apply_worker_settings` (one thread per library, VTK's portable thread
backend, off-screen rendering), whatever the worker inherited. :func:`dask_trial_map` spreads a
simulated validation's Monte Carlo trials over the cluster. Never prints.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

from orthonav.core.case import Case
from orthonav.core.errors import InputError
from orthonav.phantoms.validation_simulate import DEFAULT_CHUNK_TRIALS, TrialChunk, TrialFigures

if TYPE_CHECKING:
    from distributed import Client

#: The stages a batch runs.
STAGES = ("segment", "plan", "validate")

#: Environment of every worker: one thread per library (a worker runs one case on one core),
#: VTK's portable thread backend, off-screen rendering. Given to the processes of a local
#: cluster when they start, and set again by :func:`apply_worker_settings` at the start of each
#: task (for workers of an existing cluster).
WORKER_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
    "VTK_SMP_BACKEND_IN_USE": "STDThread",
    "VTK_SMP_MAX_THREADS": "1",
    "PYVISTA_OFF_SCREEN": "true",
}

#: What a segmentation case keeps of a case-folder input (the rest is what segment replaces).
_SEGMENT_INPUTS = ("ct.nii.gz", "scanned.nii.gz", "import.json", "truth")


# --- options of each stage ---------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentOptions:
    """``orthonav batch segment``: :func:`orthonav.segmentation.pipeline.segment_case` settings."""

    stage: ClassVar[str] = "segment"
    backend: str = "classical"
    anatomy: str = "auto"
    weights: str | None = None


@dataclass(frozen=True)
class PlanOptions:
    """``orthonav batch plan``: :func:`orthonav.planning.auto.auto_plan` settings (angles deg,
    lengths mm); ``screenshot`` also renders ``plan.png`` off-screen."""

    stage: ClassVar[str] = "plan"
    alignment: str = "mechanical"
    resection_mm: float = 9.0
    slope_deg: float = 3.0
    bead_min_hu: float = 2500.0
    procedure: str | None = None
    side: str | None = None
    cup_inclination_deg: float = 40.0
    cup_anteversion_deg: float = 15.0
    cup_medialise_mm: float = 0.0
    ream_mm: float = 2.0
    screenshot: bool = False


@dataclass(frozen=True)
class ValidateOptions:
    """``orthonav batch validate``: the accuracy protocol on recorded sessions, or with
    ``simulate`` a Monte Carlo on phantom cases (:func:`~orthonav.phantoms.validation_simulate.simulate_validation`:
    FLE mm RMS, tracker noise mm per axis, trials, seed). ``chunk_trials`` > 0 spreads a case's
    trials over the cluster in chunks of that many when it has more (0: never); it does not
    change the figures, so it is not part of what makes a finished case current."""

    stage: ClassVar[str] = "validate"
    simulate: bool = False
    fle_mm: float = 0.25
    tracker_noise_mm: float = 0.0
    trials: int = 1000
    seed: int = 0
    config: str | None = None
    chunk_trials: int = DEFAULT_CHUNK_TRIALS

    def fingerprint(self) -> dict[str, Any]:
        """The options without ``chunk_trials`` (see :func:`options_fingerprint`)."""
        d = asdict(self)
        d.pop("chunk_trials")
        return d


StageOptions = Union[SegmentOptions, PlanOptions, ValidateOptions]


def marker_name(stage: str) -> str:
    """The done marker's file name in a case folder: ``batch-<stage>.json`` (written by the engine;
    a stage that copies a case leaves its own stage's marker behind)."""
    return f"batch-{stage}.json"


def options_fingerprint(options: StageOptions) -> dict[str, Any]:
    """The options that decide a case's outputs (a finished case with other options is run again)."""
    return options.fingerprint() if isinstance(options, ValidateOptions) else asdict(options)


# --- what runs on a worker -----------------------------------------------------------------------


def apply_worker_settings() -> None:
    """Settings a worker needs whatever it inherited: :data:`WORKER_ENV` in its environment, and
    the same set on the libraries it has already imported (SimpleITK threads, VTK thread
    backend, torch threads and the U-Net's, PyVista off-screen). Called at the start of each
    task and again once a stage's modules are imported."""
    os.environ.update(WORKER_ENV)
    if "SimpleITK" in sys.modules:
        sys.modules["SimpleITK"].ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    if "vtkmodules.vtkCommonCore" in sys.modules:
        sys.modules["vtkmodules.vtkCommonCore"].vtkSMPTools.SetBackend("STDThread")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "pyvista" in sys.modules:
        sys.modules["pyvista"].OFF_SCREEN = True
    if "orthonav.segmentation.unet" in sys.modules:  # the U-Net sets torch's threads to this when it runs
        sys.modules["orthonav.segmentation.unet"].NUM_THREADS = 1


def _in_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def dask_trial_map(fn: Callable[[TrialChunk], TrialFigures], chunks: Sequence[TrialChunk]) -> list[TrialFigures]:
    """A :data:`~orthonav.phantoms.validation_simulate.TrialMap` on the Dask cluster at hand.

    Inside a task it submits the chunks through ``distributed.worker_client`` (the task leaves
    its worker's thread pool while it waits, so the chunks can run even on one-thread workers);
    elsewhere it uses the current default client (``distributed.get_client``). The figures come
    back in the chunks' order.
    """
    from distributed import get_client, worker_client

    def run(client: "Client") -> list[TrialFigures]:
        data = client.scatter(list(chunks))  # the arrays travel as data, not inside the task graph
        return client.gather(client.map(fn, data, pure=False))

    if _in_worker():
        with worker_client() as client:
            return run(client)
    return run(get_client())


def _copy_case(src: Path, dst: Path, *, only: Sequence[str] | None = None, skip: Sequence[str] = ()) -> None:
    """Copy a case folder's files into ``dst`` (hidden files never; ``only`` these names if given)."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(".*")
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(".") or entry.name in skip or (only is not None and entry.name not in only):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, dst / entry.name)


def _finite(x: float, digits: int = 4) -> float | None:
    return round(float(x), digits) if math.isfinite(x) else None


def _run_segment(src: Path, work: Path, options: SegmentOptions) -> tuple[dict[str, Any], list[str]]:
    """Copy or import the CT into ``work``, segment it; Dice / HD95 against ``truth/`` when there is one."""
    from orthonav.segmentation.evaluate import evaluate_paths
    from orthonav.segmentation.importer import import_ct
    from orthonav.segmentation.pipeline import segment_case

    if not src.exists():
        raise InputError(src, "input not found (a CT file, a DICOM folder or a case folder with ct.nii.gz)")
    if src.is_dir() and (src / "ct.nii.gz").exists():
        _copy_case(src, work, only=_SEGMENT_INPUTS)
    else:
        import_ct(src, work)
    if options.backend == "unet":
        import orthonav.segmentation.unet  # noqa: F401  (so that its thread count is set below)
    apply_worker_settings()
    summary = segment_case(work, backend=options.backend, anatomy=options.anatomy,
                           **({"weights": options.weights} if options.weights else {}))
    figures: dict[str, Any] = {"bones": len(summary.bones)}
    if (work / "truth" / "labels.nii.gz").exists():
        scores = evaluate_paths(work, work)
        dice = [s.dice for s in scores.values()]
        hd95 = [s.hd95_mm for s in scores.values() if math.isfinite(s.hd95_mm)]
        figures.update(dice_min=_finite(min(dice)), dice_mean=_finite(sum(dice) / len(dice)),
                       hd95_max_mm=_finite(max(hd95), 3) if hd95 else None)
    outputs = ["labels.nii.gz", "labels.json"] + sorted(str(p.relative_to(work)) for p in Case(work).mesh_paths().values())
    return figures, outputs


def _run_plan(src: Path, work: Path, options: PlanOptions) -> tuple[dict[str, Any], list[str]]:
    """Copy the segmented case into ``work`` and plan it automatically (and render ``plan.png``)."""
    from orthonav.planning.auto import auto_plan

    if not src.is_dir():
        raise InputError(src, "case folder not found")
    if not Case(src).mesh_paths():
        raise InputError(src / "meshes", "no bone meshes: segment the case first (orthonav segment / orthonav batch segment)")
    _copy_case(src, work, skip=(marker_name(options.stage), "plan.png"))
    apply_worker_settings()
    plan = auto_plan(work, alignment=options.alignment, resection_mm=options.resection_mm, slope_deg=options.slope_deg,
                     bead_min_hu=options.bead_min_hu, procedure=options.procedure, side=options.side,
                     cup_inclination_deg=options.cup_inclination_deg, cup_anteversion_deg=options.cup_anteversion_deg,
                     cup_medialise_mm=options.cup_medialise_mm, ream_mm=options.ream_mm)
    figures: dict[str, Any] = {k: _finite(v, 3) for k, v in plan.angles_deg.items()}
    figures["not_measured"] = len(plan.not_measured)
    outputs = ["plan.json"]
    if options.screenshot:
        from orthonav.planning.scene import render_plan

        render_plan(work, work / "plan.png")
        outputs.append("plan.png")
    return figures, outputs


def _run_validate(src: Path, work: Path, options: ValidateOptions) -> tuple[dict[str, Any], list[str]]:
    """The accuracy protocol on a session (or, simulated, on a phantom case); its report into ``work``."""
    import numpy as np

    from orthonav.phantoms.validation import load_validation_config, simulate_validation, validate_session, write_validation_report

    if not src.is_dir():
        raise InputError(src, "phantom case folder not found" if options.simulate else "session folder not found")
    config = load_validation_config(options.config) if options.config else None
    apply_worker_settings()
    trial_tasks = 1

    def spread_trials(fn: Callable[[TrialChunk], TrialFigures], chunks: Sequence[TrialChunk]) -> list[TrialFigures]:
        nonlocal trial_tasks
        trial_tasks = len(chunks)
        return dask_trial_map(fn, chunks)

    if options.simulate:
        spread = options.chunk_trials > 0 and options.trials > options.chunk_trials and _in_worker()
        result = simulate_validation(src, fle_mm=options.fle_mm, tracker_noise_mm=options.tracker_noise_mm, trials=options.trials,
                                     seed=options.seed, config=config, trial_map=spread_trials if spread else None,
                                     chunk_trials=max(1, options.chunk_trials))
    else:
        result = validate_session(src, config=config)
    write_validation_report(result, result.case_dir, out_dir=work)
    rows = result.target_table()
    measured = [r["measured_rms_mm"] for r in rows if math.isfinite(r["measured_rms_mm"])]
    figures: dict[str, Any] = {
        "verdict": "PASS" if result.passed else "FAIL",
        "fre_rms_mm": _finite(float(np.sqrt(np.mean(result.fre_mm ** 2)))),
        "tre_rms_max_mm": _finite(max(measured)) if measured else None,
        "predicted_tre_rms_max_mm": _finite(max(r["predicted_rms_mm"] for r in rows)) if rows else None,
    }
    if options.simulate:
        figures.update(trials=options.trials, trial_tasks=trial_tasks)
    return figures, ["report.html", "result.json"]


_STAGE_RUNNERS: dict[str, Callable[[Path, Path, Any], tuple[dict[str, Any], list[str]]]] = {
    "segment": _run_segment, "plan": _run_plan, "validate": _run_validate,
}


def run_stage(options: StageOptions, source: Path, work: Path) -> tuple[dict[str, Any], list[str]]:
    """Run ``options.stage`` for one input into the (new) folder ``work``.

    Parameters
    ----------
    options
        :class:`SegmentOptions`, :class:`PlanOptions` or :class:`ValidateOptions`.
    source
        The input (absolute): a CT file, a DICOM folder or a case folder (segment), a segmented
        case (plan), a session folder or, simulated, a phantom case (validate).
    work
        The folder to write the case into.

    Returns
    -------
    tuple[dict, list[str]]
        The key figures (mm, deg, Dice; see docs/batch.md) and the outputs written, relative
        to ``work``.

    Raises
    ------
    InputError
        (and whatever the stage raises) for an input the stage cannot use.
    """
    return _STAGE_RUNNERS[options.stage](source, work, options)


__all__ = [
    "STAGES", "WORKER_ENV", "PlanOptions", "SegmentOptions", "StageOptions", "ValidateOptions",
    "apply_worker_settings", "dask_trial_map", "marker_name", "options_fingerprint", "run_stage",
]
