"""Crash-safe file writes.

* Atomic writes (:func:`atomic_path`, :func:`write_json`, :class:`JsonLinesWriter`, ...): write
  to a hidden temporary file in the same folder, then rename. A reader never sees a
  half-written file, and a failed write leaves the old file in place and no temporary behind.
  A temporary's name holds the writing process's id (``.<name>-<pid>-<random><suffix>``), so
  one left behind by a killed process is recognised and removed by the next write of the same
  file (:func:`remove_stale_temporaries`) while a live concurrent writer's is left alone.
  Hidden files are never data: every reader in OrthoNav skips names that start with ".".
* Journals (:class:`JournalWriter`): records appended to the final file and handed to the
  operating system line by line, for long recordings that must survive ``kill -9`` (a killed
  navigation session keeps every frame written before the kill). Readers of a journal
  tolerate a truncated last line (:func:`iter_json_lines`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import time
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


def _temporary_prefix(target: Path) -> str:
    return f".{target.name.split('.')[0]}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporaries of ``path`` left by writers that no longer run (killed mid-write).

    Only files named like this module's temporaries for the same target
    (``.<stem>-<pid>-<random><suffix>``) whose process is gone are removed; a concurrent live
    writer's temporary is kept. Returns the files removed.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return []
    suffix = "".join(target.suffixes) or ".tmp"
    pattern = re.compile(re.escape(_temporary_prefix(target)) + r"(\d+)-[^/]*" + re.escape(suffix) + "$")
    removed: list[Path] = []
    for p in target.parent.glob(f"{_temporary_prefix(target)}*{suffix}"):
        m = pattern.match(p.name)
        if m is not None and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that keeps its suffixes; rename it on success.

    Writers that pick a format from the file name (SimpleITK, VTK, trimesh) can write to the
    yielded path. On an exception the temporary file is removed and ``path`` is untouched.
    Temporaries of the same target left by killed writers are removed first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_temporary_prefix(target)}{os.getpid()}-", suffix=suffix, dir=target.parent)
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


class JournalWriter(CommitOnExit):
    """Append JSON records, one per line, straight to ``path``, each handed to the operating
    system as it is written: a process killed at any moment leaves every record written before
    (at most the line being written is cut; :func:`iter_json_lines` drops it).

    :meth:`close` fsyncs. :meth:`abort` removes the file (for a recording that never started:
    nothing half-made is left). Thread-safe :meth:`write`. The file is created new
    (an existing file is an error: a journal never overwrites).
    """

    def __init__(self, path: str | Path, *, fsync_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._f: IO[str] | None = open(self.path, "x", encoding="utf-8")
        except FileExistsError as e:
            raise InputError(self.path, "already exists; a journal never overwrites") from e
        self._lock = threading.Lock()
        self._fsync_interval_s = fsync_interval_s
        self._last_sync = time.monotonic()
        self.lines = 0

    def write(self, obj: Any) -> None:
        """Append one JSON-serialisable record and hand it to the OS (fsync at most once per
        ``fsync_interval_s``, for power loss; a process kill loses nothing written)."""
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self._lock:
            if self._f is None:
                raise InputError(self.path, "already closed")
            self._f.write(line)
            self._f.flush()
            self.lines += 1
            now = time.monotonic()
            if now - self._last_sync >= self._fsync_interval_s:
                os.fsync(self._f.fileno())
                self._last_sync = now

    def close(self) -> Path:
        """Flush and fsync. Safe to call twice."""
        with self._lock:
            if self._f is not None:
                f, self._f = self._f, None
                f.flush()
                os.fsync(f.fileno())
                f.close()
        return self.path

    def abort(self) -> None:
        """Close and remove the file. Safe to call twice."""
        with self._lock:
            if self._f is not None:
                f, self._f = self._f, None
                f.close()
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every complete line of a JSON-lines file or journal.

    Blank lines are skipped. A last line without its newline (a journal cut by a killed
    writer) is dropped; callers parse the text and report a bad complete line as corrupt.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                return  # cut by a killed writer: the record was never complete
            if line.strip():
                yield lineno, line
