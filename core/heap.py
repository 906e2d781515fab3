"""Large arrays reused by the C allocator instead of fresh pages from the kernel (glibc).

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB on 64-bit
systems) with a fresh ``mmap`` and hands it back with ``munmap`` when it is freed. Segmenting a
512 x 512 x 400 CT creates and frees hundreds of arrays of 50-400 MB, so the kernel maps and
zero-fills each of them anew, page by page. Measured on the Benchmarks' 512 x 512 x 400 hip CT
(2 threads, 2026-12-07, three fresh processes each, alternated): classical segmentation
15.6-16.5 s with glibc's defaults, 13.7-14.5 s inside :func:`reuse_freed_memory`; peak RSS
1.56-1.65 GB -> 1.89-2.01 GB. The shipped U-Net on the same CT: 17.3-18.6 s -> 14.8 s.

:func:`reuse_freed_memory` switches to that inside a block (nested and concurrent blocks are
counted: the last one out leaves) and, on leaving, sets fixed thresholds (mmap above 32 MB,
trim above 64 MB: the highest glibc's dynamic threshold can reach) and returns the free memory
of the main heap to the system (``malloc_trim``). This is a lasting change for the process: the
first ``mallopt`` call switches glibc's dynamic threshold off for good, so after the first
segmentation every later block of up to 32 MB (in the navigation loop too) comes from the heap.

Limits (glibc 2.36, checked by a review): the main thread's heap is where the arrays are reused.
A worker thread allocates from its own arena, whose heaps are at most 64 MB: a larger array made
on a worker is still mapped anew (glibc's fallback to ``mmap`` is not stopped by
``M_MMAP_MAX``), and up to about 64 MB per worker arena may stay resident after the block
(``malloc_trim`` does not release the top of a worker's heap). ``mallopt`` is documented as not
thread-safe at initialisation only; it writes plain settings under the main arena's lock.

The arrays computed are the same (only where they live changes); code must never read an
``np.empty`` array before writing it, with or without this (a fresh page reads zero, a reused
block does not). Where ``malloc`` is not glibc's (macOS, Windows, musl, or jemalloc / tcmalloc
preloaded) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: Set on leaving: glibc's default mmap count, and the highest mmap threshold its dynamic
#: threshold can reach (32 MB on 64-bit systems), with trimming at twice it, as glibc pairs them.
_DEFAULT_MMAP_MAX = 65536
_STEADY_MMAP_THRESHOLD = 32 * 1024 * 1024
_STEADY_TRIM_THRESHOLD = 2 * _STEADY_MMAP_THRESHOLD
#: Inside a block: free memory at the top of the heap is kept up to this (the largest int).
_KEEP_BYTES = 2**31 - 1

_LOCK = threading.Lock()
_depth = 0
F = TypeVar("F", bound=Callable)


def _glibc() -> tuple[Callable[[int, int], int], Callable[[int], int]] | None:
    """``(mallopt, malloc_trim)`` of the process's C library when it is glibc and its ``malloc``
    is the one in use (not jemalloc or tcmalloc preloaded), else None."""
    try:
        process, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt, trim = libc.mallopt, libc.malloc_trim
        in_use = ctypes.cast(process.malloc, ctypes.c_void_p).value == ctypes.cast(libc.malloc, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    if not in_use:
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return mallopt, trim


_LIBC = _glibc()


def available() -> bool:
    """True when ``malloc`` is glibc's (the only one this module tunes)."""
    return _LIBC is not None


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Within the block, large arrays come from the heap and freed ones stay there for reuse
    (module docstring); on leaving the last block, fixed thresholds are set (mmap above 32 MB,
    trim above 64 MB) and the main heap's free memory is returned to the system. Thread-safe;
    nestable; a no-op without glibc's ``malloc``, or if glibc refuses the settings."""
    global _depth
    if _LIBC is None:
        yield
        return
    mallopt, trim = _LIBC
    with _LOCK:
        if _depth == 0 and not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)):
            mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)  # refused (never seen): left as glibc had it
            tuned = False
        else:
            tuned = True
            _depth += 1
    if not tuned:
        yield
        return
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                mallopt(_M_MMAP_THRESHOLD, _STEADY_MMAP_THRESHOLD)
                mallopt(_M_TRIM_THRESHOLD, _STEADY_TRIM_THRESHOLD)
                trim(0)


def depth() -> int:
    """How many :func:`reuse_freed_memory` blocks are active now (0: glibc's own way)."""
    return _depth


def reusing_freed_memory(fn: F) -> F:
    """Decorator: ``fn`` runs inside :func:`reuse_freed_memory` (``fn.reuses_freed_memory`` is
    then True)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with reuse_freed_memory():
            return fn(*args, **kwargs)

    wrapper.reuses_freed_memory = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
