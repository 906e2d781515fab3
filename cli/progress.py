"""A rich progress display driven by ``update(step, fraction)`` callbacks from API functions."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class StepProgress:
    """Context manager: one bar per named step; ``update(step, fraction)`` with 0 <= fraction <= 1."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "StepProgress":
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, step: str, fraction: float) -> None:
        if step not in self._tasks:
            for task in self._tasks.values():  # a new step means the earlier ones are done
                self._progress.update(task, completed=1.0)
            self._tasks[step] = self._progress.add_task(step, total=1.0)
        self._progress.update(self._tasks[step], completed=max(0.0, min(1.0, fraction)))
