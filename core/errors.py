"""The error types OrthoNav raises on bad input or a failed step.

Every error names what was wrong and, where there is one, the file. The CLI prints
``str(error)`` and exits non-zero; nothing is half-written because every writer is atomic.
"""

from __future__ import annotations

from pathlib import Path


class OrthoNavError(Exception):
    """Base class for every error OrthoNav raises on purpose."""


class InputError(OrthoNavError):
    """A file or argument cannot be used as given.

    Parameters
    ----------
    path
        The file or folder at fault (or None when the problem is not a file).
    problem
        What is wrong, in words a user can act on.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class SchemaError(InputError):
    """A JSON file is corrupt, fails validation, or comes from a newer schema."""


class RegistrationError(OrthoNavError):
    """A registration could not be computed or does not meet its acceptance limits."""


class TrackingError(OrthoNavError):
    """A tracker source failed (connection refused, device error, malformed stream)."""
