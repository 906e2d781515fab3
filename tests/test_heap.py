"""Large arrays kept for reuse inside ``reuse_freed_memory`` and returned after (core/heap.py).

Measured by the process's resident memory (Linux ``/proc/self/status``): with glibc's defaults a
freed 256 MB array leaves at once (munmap); inside the block it stays, to be reused by the next
large array without the kernel mapping and zero-filling its pages again; after the last block
it is returned to the system.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orthonav.core import heap

pytestmark = pytest.mark.skipif(not (heap.available() and Path("/proc/self/status").exists()), reason="glibc on Linux only")

BLOCK = 256 * 1024 * 1024


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def _alloc_and_free() -> None:
    a = np.ones(BLOCK, np.uint8)  # written: every page resident
    assert a[-1] == 1
    del a


def test_default_allocator_returns_a_freed_large_array_at_once():
    base = _rss_mb()
    _alloc_and_free()
    assert _rss_mb() < base + 64


def test_freed_large_array_is_kept_inside_and_returned_after():
    base = _rss_mb()
    with heap.reuse_freed_memory():
        _alloc_and_free()
        kept = _rss_mb()
        _alloc_and_free()  # the same block again: no new pages
        again = _rss_mb()
    after = _rss_mb()
    assert kept > base + 200, (base, kept)
    assert again < kept + 64, (kept, again)
    assert after < base + 64, (base, after)


def test_nested_blocks_restore_only_when_the_last_one_leaves():
    base = _rss_mb()
    with heap.reuse_freed_memory():
        with heap.reuse_freed_memory():
            pass
        _alloc_and_free()  # the outer block is still active: kept
        kept = _rss_mb()
    assert kept > base + 200, (base, kept)
    assert _rss_mb() < base + 64
    _alloc_and_free()  # restored: returned at once again
    assert _rss_mb() < base + 64


def test_decorated_function_keeps_its_name_and_result():
    @heap.reusing_freed_memory
    def f(x: int) -> int:
        """Doc."""
        return x + 1

    assert f(1) == 2 and f.__name__ == "f" and f.__doc__ == "Doc."
