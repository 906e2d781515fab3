"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file, and a failed write leaves the old file in place
and no temporary behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Self

from .errors import InputError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that keeps its suffixes; rename it on success.

    Writers that pick a format from the file name (SimpleITK, VTK, trimesh) can write to the
    yielded path. On an exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy arrays must be converted first)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_with(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Atomically create ``path`` by calling ``writer(tmp_path)`` (for library writers)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success flush, fsync and rename.

    For writers that stream (append records over time). The file gets the usual
    umask-based mode (not mkstemp's 0600). On an exception the temporary file is removed
    and ``path`` is untouched. ``mode`` is "w" or "wb" (``encoding`` is ignored for "wb").
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


class _Aborted(Exception):
    """Raised into :func:`open_atomic` to make it discard its temporary file."""


class CommitOnExit:
    """Context-manager half of a streaming atomic writer: a ``with`` block that ends normally
    calls :meth:`close` (commit: the file appears), one that raises calls :meth:`abort`
    (nothing appears). Subclasses implement ``close`` and ``abort``."""

    def close(self) -> object:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class JsonLinesWriter(CommitOnExit):
    """Append JSON records, one per line, to a file that appears at ``path`` only on :meth:`close`.

    Thread-safe :meth:`write`. :meth:`abort` (or an exception inside a ``with`` block) discards
    the partial file, so a reader never sees half a recording. The file gets the usual
    umask-based mode.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stack = contextlib.ExitStack()  # holds open_atomic open across write() calls
        self._f = self._stack.enter_context(open_atomic(self.path, "w"))
        self._lock = threading.Lock()
        self.lines = 0

    def write(self, obj: Any) -> None:
        """Append one JSON-serialisable record."""
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self._lock:
            if self._f is None:
                raise InputError(self.path, "already closed")
            self._f.write(line)
            self.lines += 1

    def close(self) -> Path:
        """Flush, fsync and rename into place. Safe to call twice."""
        with self._lock:
            if self._f is not None:
                self._f = None
                self._stack.close()
        return self.path

    def abort(self) -> None:
        """Discard the partial file (nothing appears at ``path``). Safe to call twice."""
        with self._lock:
            if self._f is not None:
                self._f = None
                self._stack.__exit__(_Aborted, _Aborted(), None)
