"""A progress display driven by ``update(step, fraction)`` callbacks from API functions.

On a terminal: one rich bar per named step, kept on screen when the command succeeds and erased
when it fails, so the error line is never preceded by a half-finished bar. Not on a terminal
(output piped or redirected to a log): no bars at all, one plain line per finished step
(``segmentation: done in 12.4 s``), and nothing for a step that an error interrupted.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


#: The step name an API function reports last, to say it has finished (no line of its own).
END_STEP = "done"


class StepProgress:
    """Context manager: one bar per named step; ``update(step, fraction)`` with 0 <= fraction <= 1.

    A new step name means the earlier steps are done. Leaving the ``with`` block normally
    completes the last step; leaving it by an exception leaves nothing of the display behind.

    Parameters
    ----------
    console
        Where to draw (usually the standard-error console of :func:`orthonav.cli.console.make_console`).
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live = console.is_terminal and not console.is_dumb_terminal
        self._progress = Progress(
            TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
            console=console, transient=False, disable=not self._live,
        )
        self._tasks: dict[str, int] = {}
        self._current: str | None = None
        self._started_s = 0.0

    def __enter__(self) -> "StepProgress":
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self._finish_current()
        elif self._live:
            self._progress.live.transient = True  # erase the bars: the error line follows alone
        self._progress.stop()

    def update(self, step: str, fraction: float) -> None:
        """Show ``step`` at ``fraction`` (clipped to 0..1) of its work."""
        if step != self._current:
            self._finish_current()
            self._current, self._started_s = step, time.monotonic()
            if step not in self._tasks:
                self._tasks[step] = self._progress.add_task(step, total=1.0)
        self._progress.update(self._tasks[step], completed=max(0.0, min(1.0, fraction)))

    def _finish_current(self) -> None:
        """Mark the running step done (a full bar, or one plain line when there are no bars)."""
        if self._current is None:
            return
        self._progress.update(self._tasks[self._current], completed=1.0)
        if not self._live and self._current != END_STEP:
            self._console.print(f"{escape(self._current)}: done in {time.monotonic() - self._started_s:.1f} s")
        self._current = None


__all__ = ["END_STEP", "StepProgress"]
