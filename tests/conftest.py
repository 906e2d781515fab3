"""Shared test fixtures and settings.

Rendering is off-screen (VTK falls back to EGL with no display); tests read real data
from ``../shared/data`` and skip with a reason when it is absent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("PYVISTA_OFF_SCREEN", "true")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def _wait_until(source, predicate: Callable, timeout_s: float = 5.0):
    """Wait on ``source.wait_for_update`` until ``predicate(source.latest())`` holds.

    Returns the frame that satisfied it; raises AssertionError (with the last frame and the
    source's health) when ``timeout_s`` passes first. No sleeping: it blocks on the source's
    update event.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        frame = source.latest()
        if predicate(frame):
            return frame
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"condition not met within {timeout_s} s; last frame {frame}, health {source.health()}")
        source.wait_for_update(min(remaining, 0.5))


@pytest.fixture
def wait_until() -> Callable:
    """The :func:`_wait_until` helper: ``wait_until(source, predicate, timeout_s=5.0) -> frame``."""
    return _wait_until
