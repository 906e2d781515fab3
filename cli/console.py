"""The one place the command line makes its rich consoles.

On a terminal a console is as wide as the terminal. Piped into a file or another program
(``orthonav validate ... | tee log``), rich would otherwise lay everything out at 80 columns:
a session path that the next command needs would be wrapped or cut, and an error would span
several lines. So a console that does not write to a terminal has no width limit: every line
comes out whole (tables still take only the width their cells need), without colour codes.
"""

from __future__ import annotations

from rich.console import Console

#: Width of a console that does not write to a terminal: wide enough that nothing is wrapped.
UNWRAPPED_WIDTH = 100_000


def make_console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that never wraps or cuts lines when it is not a terminal.

    Parameters
    ----------
    stderr
        Write to standard error (messages, progress, errors) instead of standard output (results).

    Returns
    -------
    Console
        On a terminal: the terminal's width, colours. Otherwise: unlimited width, soft wrapping
        (a long line is written as one line), no colours.
    """
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=UNWRAPPED_WIDTH, soft_wrap=True)


__all__ = ["UNWRAPPED_WIDTH", "make_console"]
