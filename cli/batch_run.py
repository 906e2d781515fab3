"""Cohorts on Dask distributed: ``segment``, ``plan`` or ``validate`` over many cases, one task a case.

The engine behind ``orthonav batch`` (:mod:`orthonav.cli.batch`; what a task runs is
:mod:`orthonav.cli.batch_stages`); it never prints. Each input
(a CT file, a DICOM folder, a case folder or a recorded session, by stage) becomes one task on a
Dask ``distributed`` cluster: a :class:`~distributed.LocalCluster` on this machine by default
(one worker process a core, one thread each, no dashboard, bound to 127.0.0.1), or the cluster of
an existing scheduler address. Workers elsewhere need the same OrthoNav install and must see the
inputs and the output folder under the same paths (a shared file system); docs/batch.md.

A case writes into its own folder ``OUT/<case>/``, atomically: the task works in a hidden
folder ``OUT/.work-<case>-<random>/`` and renames it into place only when its outputs and its
done marker ``batch-<stage>.json`` are written. A case is finished when ``OUT/<case>/`` holds
that marker, for the same input and the same options, and every output the marker lists; a
rerun skips it (status ``skipped``, with the figures of the run that made it). A case that
raises is caught in its task and reported (status ``failed``, the error's one-line message and
type); it never stops the others, and a rerun tries it again. The summary of every batch is
written as ``OUT/batch-<stage>.csv`` and ``OUT/batch-<stage>.json``.

Monte Carlo validation trials are spread the same way: :func:`dask_trial_map` hands chunks of
trials to the cluster (from inside a case's task through ``worker_client``), with every random
draw made before, in the serial order, so a run gives the same figures as the serial run for
the same seed (:func:`orthonav.phantoms.validation_simulate.simulate_validation`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import re
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from orthonav.cli.batch_stages import (
    STAGES,
    WORKER_ENV,
    PlanOptions,
    SegmentOptions,
    StageOptions,
    ValidateOptions,
    apply_worker_settings,
    dask_trial_map,
    marker_name,
    options_fingerprint,
    run_stage,
)
from orthonav.core.atomic import write_text
from orthonav.core.case import check_name
from orthonav.core.errors import InputError, OrthoNavError
from orthonav.core.schema import Versioned, load_model, save_model

if TYPE_CHECKING:
    from distributed import Client

#: Statuses of a case in a summary.
DONE, FAILED, SKIPPED, NOT_RUN = "done", "failed", "skipped", "not run"
#: Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT_S = 10.0
#: File names a CT file may end with (stripped to name its case).
_CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


# --- cases, markers, summaries -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchCase:
    """One input of a batch and the folder it writes, ``OUT/<name>/`` (absolute paths)."""

    name: str
    input: Path


@dataclass(frozen=True)
class CaseOutcome:
    """What became of one case.

    Attributes
    ----------
    case
        The case's name (its folder under the output folder).
    input
        The input it was made from.
    status
        ``done``, ``failed``, ``skipped`` (finished by an earlier run) or ``not run`` (the batch
        was interrupted first).
    seconds
        Wall time of the task (for a skipped case: of the run that finished it).
    cpu_seconds
        CPU time of the worker process during the task (user + system; its other threads
        included, mostly idle), None when not measured. Less than ``seconds`` when the worker
        waited for a core or for the cluster.
    figures
        Key figures of the stage (e.g. ``dice_min``, ``hka``, ``fre_rms_mm``; mm, deg).
    output
        The case's output folder.
    error, error_type, traceback
        For a failed case: the one-line message the command line would print, the exception's
        type name and, for an error OrthoNav did not raise on purpose, the traceback.
    """

    case: str
    input: str
    status: str
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    cpu_seconds: float | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None


class CaseRecord(Versioned):
    """The done marker ``OUT/<case>/batch-<stage>.json``: what made the case and what it holds."""

    SCHEMA_VERSION: ClassVar[int] = 1
    stage: str
    input: str
    options: dict[str, Any]
    outputs: list[str]
    figures: dict[str, Any]
    seconds: float
    cpu_seconds: float | None = None
    finished_utc: str
    host: str


class SummaryRow(BaseModel):
    """One case of a batch summary (see :class:`CaseOutcome`)."""

    model_config = ConfigDict(extra="forbid")

    case: str
    input: str
    status: str
    seconds: float
    cpu_seconds: float | None = None
    figures: dict[str, Any]
    output: str
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None


class BatchSummaryFile(Versioned):
    """``OUT/batch-<stage>.json``: the batch's settings, counts and one row per case."""

    stage: str
    out_dir: str
    cluster: str
    options: dict[str, Any]
    started_utc: str
    seconds: float
    counts: dict[str, int]
    cases: list[SummaryRow]


@dataclass(frozen=True)
class BatchSummary:
    """The result of :func:`run_batch`: one outcome per input (input order) and the summary files."""

    stage: str
    out_dir: Path
    cluster: str
    outcomes: list[CaseOutcome]
    seconds: float
    csv_path: Path
    json_path: Path

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status in (FAILED, NOT_RUN)]


def summary_paths(out_dir: str | Path, stage: str) -> tuple[Path, Path]:
    """``OUT/batch-<stage>.csv`` and ``OUT/batch-<stage>.json``."""
    out = Path(out_dir)
    return out / f"batch-{stage}.csv", out / f"batch-{stage}.json"


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-").replace("..", "_")[:100]
    return check_name(name or "case", "case name")


def _is_session(path: Path) -> bool:
    return (path / "session.json").is_file() or path.parent.name == "sessions"


def _base_name(stage: str, path: Path) -> str:
    """A case's name from its input: a CT file without its suffixes, a folder's name, for a
    session ``<case>_<session>``."""
    name = path.name
    if stage == "segment" and not path.is_dir():
        lowered = name.lower()
        for suffix in _CT_SUFFIXES:
            if lowered.endswith(suffix):
                name = name[: -len(suffix)]
                break
    if stage == "validate" and _is_session(path):
        name = f"{path.parent.parent.name}_{path.name}"
    return _safe_name(name)


def batch_cases(stage: str, inputs: Sequence[str | Path]) -> list[BatchCase]:
    """The cases of a batch, in input order: absolute input paths and unique, safe folder names
    (a name taken by an earlier input gets ``-2``, ``-3``, ...; the same inputs in the same order
    always give the same names, which is what lets a rerun find its finished cases).

    Raises
    ------
    InputError
        Unknown stage, or no inputs.
    """
    if stage not in STAGES:
        raise InputError(None, f"unknown batch stage {stage!r} (one of {', '.join(STAGES)})")
    if not inputs:
        raise InputError(None, "a batch needs at least one input")
    cases: list[BatchCase] = []
    taken: set[str] = set()
    for raw in inputs:
        path = Path(raw).expanduser().absolute()
        base = _base_name(stage, path)
        name, i = base, 1
        while name.lower() in taken:
            i += 1
            name = f"{base}-{i}"
        taken.add(name.lower())
        cases.append(BatchCase(name, path))
    return cases


def finished_record(case: BatchCase, out_dir: Path, options: StageOptions) -> CaseRecord | None:
    """The done marker of ``case`` when it is finished and current (same stage, input and
    options; every listed output present), else None (it must run)."""
    folder = out_dir / case.name
    marker = folder / marker_name(options.stage)
    if not marker.is_file():
        return None
    try:
        record = load_model(marker, CaseRecord)
    except OrthoNavError:
        return None
    if record.stage != options.stage or record.input != str(case.input) or record.options != _jsonable(options_fingerprint(options)):
        return None
    if not all((folder / rel).exists() for rel in record.outputs):
        return None
    return record


def _one_line(error: BaseException) -> str:
    """The error as the command line prints it, on one line (its type name when it has no message)."""
    return " ".join(str(error).split()) or type(error).__name__




def _jsonable(obj: Any) -> Any:
    """Options and figures as plain JSON values (paths as text, non-finite floats as None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return _jsonable(obj.item())
    return obj


def _move_into_place(work: Path, final: Path) -> None:
    """Replace ``final`` by ``work`` (two renames: an existing folder is moved aside first and
    removed after; a case folder is never seen half-written)."""
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_case(case: BatchCase, out_dir: str | Path, options: StageOptions) -> CaseOutcome:
    """Run one case of a batch (the task a worker runs); never raises for a failing case.

    Works in ``OUT/.work-<case>-<random>/``, writes the done marker ``batch-<stage>.json`` in it
    and renames it to ``OUT/<case>/`` (replacing an older folder of that name); on an error the
    work folder is removed and the outcome says ``failed`` with the error.
    """
    apply_worker_settings()
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out_dir)
    final = out / case.name
    work = out / f".work-{case.name}-{uuid.uuid4().hex[:8]}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        figures, outputs = run_stage(options, case.input, work)
        figures = _jsonable(figures)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        save_model(work / marker_name(options.stage), CaseRecord(
            stage=options.stage, input=str(case.input), options=_jsonable(options_fingerprint(options)), outputs=outputs,
            figures=figures, seconds=round(seconds, 3), cpu_seconds=round(cpu_seconds, 3),
            finished_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            host=socket.gethostname()))
        _move_into_place(work, final)
        return CaseOutcome(case.name, str(case.input), DONE, seconds, figures, str(final), cpu_seconds=cpu_seconds)
    except Exception as e:  # a failing case is reported, never raised: the others go on
        shutil.rmtree(work, ignore_errors=True)
        tb = None if isinstance(e, OrthoNavError) else traceback.format_exc()
        # the work folder holds copies of the input's files: name the input's own file
        message = _one_line(e).replace(str(work), str(case.input))
        return CaseOutcome(case.name, str(case.input), FAILED, time.perf_counter() - t0, {}, "",
                           cpu_seconds=time.process_time() - cpu0, error=message, error_type=type(e).__name__, traceback=tb)


# --- the cluster ---------------------------------------------------------------------------------


def default_workers(n_cases: int) -> int:
    """Workers of a local cluster: one a core, no more than the cases to run (at least 1)."""
    return max(1, min(os.cpu_count() or 1, n_cases))


@contextlib.contextmanager
def open_client(scheduler: str | None = None, *, workers: int | None = None) -> Iterator[tuple["Client", str]]:
    """A Dask client and a description of its cluster, closed (with a local cluster) on exit.

    Parameters
    ----------
    scheduler
        Address of an existing scheduler (``tcp://host:8786``); None: a local cluster.
    workers
        Worker processes of the local cluster (one thread each; default one a core).

    Raises
    ------
    InputError
        ``workers`` with ``scheduler`` or below 1, or the scheduler does not answer.
    """
    import logging

    from distributed import Client, LocalCluster

    if scheduler is not None:
        if workers is not None:
            raise InputError(None, "--workers sets the size of the local cluster; with --scheduler the cluster's own workers run the cases")
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            raise InputError(None, f"cannot connect to the Dask scheduler at {scheduler} ({_one_line(e)})") from e
        try:
            n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            yield client, f"scheduler {client.scheduler.address} ({n} worker{'s' if n != 1 else ''})"
        finally:
            client.close()
        return
    n_workers = default_workers(os.cpu_count() or 1) if workers is None else workers
    if n_workers < 1:
        raise InputError(None, f"--workers must be >= 1, got {n_workers}")
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, env=dict(WORKER_ENV), silence_logs=logging.ERROR)
    try:
        client = Client(cluster)
        try:
            yield client, f"local cluster ({n_workers} worker{'s' if n_workers != 1 else ''} x 1 thread)"
        finally:
            client.close()
    finally:
        cluster.close()


# --- the batch -----------------------------------------------------------------------------------


def _clean_leftovers(out_dir: Path, cases: Sequence[BatchCase]) -> None:
    """Remove work and moved-aside folders of these cases left by a batch that was killed."""
    names = {c.name for c in cases}
    for p in out_dir.glob(".work-*") if out_dir.is_dir() else ():
        if p.is_dir() and p.name[len(".work-"):].rsplit("-", 1)[0] in names:
            shutil.rmtree(p, ignore_errors=True)
    for p in out_dir.glob(".old-*") if out_dir.is_dir() else ():
        if p.is_dir() and p.name[len(".old-"):].rsplit("-", 1)[0] in names:
            shutil.rmtree(p, ignore_errors=True)


def _summary_csv(outcomes: Sequence[CaseOutcome]) -> str:
    keys: list[str] = []
    for o in outcomes:
        keys += [k for k in o.figures if k not in keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "status", "seconds", "cpu_seconds", *keys, "error_type", "error", "input", "output"])
    for o in outcomes:
        cpu = "" if o.cpu_seconds is None else f"{o.cpu_seconds:.2f}"
        w.writerow([o.case, o.status, f"{o.seconds:.2f}", cpu, *["" if o.figures.get(k) is None else o.figures[k] for k in keys],
                    o.error_type or "", o.error or "", o.input, o.output])
    return buf.getvalue()


def write_summary(summary: BatchSummary, options: StageOptions, started_utc: str) -> None:
    """Write ``OUT/batch-<stage>.csv`` and ``.json`` (atomically)."""
    write_text(summary.csv_path, _summary_csv(summary.outcomes))
    rows = [SummaryRow(case=o.case, input=o.input, status=o.status, seconds=round(o.seconds, 3),
                       cpu_seconds=None if o.cpu_seconds is None else round(o.cpu_seconds, 3), figures=_jsonable(o.figures),
                       output=o.output, error=o.error, error_type=o.error_type, traceback=o.traceback) for o in summary.outcomes]
    save_model(summary.json_path, BatchSummaryFile(
        stage=summary.stage, out_dir=str(summary.out_dir), cluster=summary.cluster, options=_jsonable(asdict(options)),
        started_utc=started_utc, seconds=round(summary.seconds, 3),
        counts={s: summary.count(s) for s in (DONE, FAILED, SKIPPED, NOT_RUN)}, cases=rows))


def run_batch(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    options: StageOptions,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    on_case: Callable[[CaseOutcome, int, int], None] | None = None,
) -> BatchSummary:
    """Run one stage over many inputs on a Dask cluster, one task a case; write the summary.

    Parameters
    ----------
    inputs
        Per stage: ``segment`` a CT file, a DICOM folder or a case folder with ``ct.nii.gz``;
        ``plan`` a segmented case folder; ``validate`` a recorded session folder or, with
        ``options.simulate``, a phantom case folder. Each becomes ``OUT/<name>/``
        (:func:`batch_cases`).
    out_dir
        The output folder (created); workers elsewhere must see it under the same path.
    options
        :class:`SegmentOptions`, :class:`PlanOptions` or :class:`ValidateOptions` (the stage).
    scheduler
        Address of an existing Dask scheduler; None: a local cluster of ``workers`` processes.
    workers
        Size of the local cluster (default one a core, at most one a case to run).
    on_case
        Called on this process as each case ends: ``on_case(outcome, n_finished, n_cases)``
        (skipped cases first).

    Returns
    -------
    BatchSummary
        Outcomes in input order; ``OUT/batch-<stage>.csv`` and ``.json`` written (also when the
        batch is interrupted: cases that did not end are ``not run``).

    Raises
    ------
    InputError
        Bad stage or options, no inputs, an output folder that cannot be made, a scheduler
        that does not answer. A failing case never raises: it is a ``failed`` outcome.
    """
    from distributed import as_completed

    if scheduler is not None and workers is not None:
        raise InputError(None, "--workers sets the size of the local cluster; with --scheduler the cluster's own workers run the cases")
    if workers is not None and workers < 1:
        raise InputError(None, f"--workers must be >= 1, got {workers}")
    if not isinstance(options, (SegmentOptions, PlanOptions, ValidateOptions)):
        raise InputError(None, f"options must be SegmentOptions, PlanOptions or ValidateOptions, got {type(options).__name__}")
    if isinstance(options, ValidateOptions) and options.chunk_trials < 0:
        raise InputError(None, f"chunk_trials must be >= 0, got {options.chunk_trials}")
    if isinstance(options, ValidateOptions) and options.config:  # workers may run elsewhere: absolute paths
        options = dataclasses.replace(options, config=str(Path(options.config).expanduser().absolute()))
    if isinstance(options, SegmentOptions) and options.weights:
        options = dataclasses.replace(options, weights=str(Path(options.weights).expanduser().absolute()))
    cases = batch_cases(options.stage, inputs)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(out, "output folder is a file")
    if options.stage == "validate":
        for c in cases:
            if out / c.name == c.input:
                raise InputError(c.input, "would be replaced by its own validation report: give an --out folder other than the one holding the inputs")
    out.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out, cases)
    started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    outcomes: dict[str, CaseOutcome] = {}
    n = len(cases)

    def finish(o: CaseOutcome) -> None:
        outcomes[o.case] = o
        if on_case is not None:
            on_case(o, len(outcomes), n)

    to_run: list[BatchCase] = []
    for c in cases:
        record = finished_record(c, out, options)
        if record is None:
            to_run.append(c)
        else:
            finish(CaseOutcome(c.name, str(c.input), SKIPPED, record.seconds, dict(record.figures), str(out / c.name),
                               cpu_seconds=record.cpu_seconds))
    cluster = "none (every case finished earlier)"
    csv_path, json_path = summary_paths(out, options.stage)
    try:
        if to_run:
            n_workers = None if scheduler is not None else workers or default_workers(len(to_run))
            with open_client(scheduler, workers=n_workers) as (client, cluster):
                futures = {client.submit(run_case, c, str(out), options, key=f"orthonav-{options.stage}-{c.name}-{uuid.uuid4().hex[:8]}",
                                         pure=False, retries=0): c for c in to_run}
                for future in as_completed(futures):
                    c = futures[future]
                    try:
                        finish(future.result())
                    except Exception as e:  # the task never ran to its end (worker died, could not unpickle, ...)
                        finish(CaseOutcome(c.name, str(c.input), FAILED, 0.0, {}, "", error=_one_line(e),
                                           error_type=type(e).__name__, traceback="".join(traceback.format_exception(e))))
    finally:
        ordered = [outcomes.get(c.name) or CaseOutcome(c.name, str(c.input), NOT_RUN, 0.0, {}, "") for c in cases]
        summary = BatchSummary(options.stage, out, cluster, ordered, time.perf_counter() - t0, csv_path, json_path)
        write_summary(summary, options, started_utc)
    return summary


__all__ = [
    "DONE", "FAILED", "NOT_RUN", "SKIPPED", "STAGES", "WORKER_ENV",
    "BatchCase", "BatchSummary", "BatchSummaryFile", "CaseOutcome", "CaseRecord", "PlanOptions", "SegmentOptions",
    "StageOptions", "SummaryRow", "ValidateOptions",
    "apply_worker_settings", "batch_cases", "dask_trial_map", "default_workers", "finished_record", "marker_name",
    "open_client", "run_batch", "run_case", "summary_paths", "write_summary",
]
