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


# --- segmentation: the mini knee (tests/synthetic_ct.py) and its classical segmentation -------
# Built once per session and shared by test_seg_* / test_mesh_*; their arrays are made
# read-only, so a test that writes into one fails instead of changing what the next test sees.


def _read_only(*arrays) -> None:
    for a in arrays:
        a.flags.writeable = False


@pytest.fixture(scope="session")
def mini_knee_phantom():
    """The default mini knee, ``synthetic_ct.mini_knee()`` (seed 0, 0.7 x 0.8 x 1.1 mm, beads)."""
    from synthetic_ct import mini_knee

    k = mini_knee()
    _read_only(k.ct.array_zyx, k.ct.lps_from_ijk, k.labels.array_zyx, k.labels.lps_from_ijk, k.ct_from_limb)
    return k


@pytest.fixture(scope="session")
def mini_knee_seg(mini_knee_phantom):
    """``segment_classical(mini_knee_phantom.ct, anatomy="auto")``: the classical segmentation
    (label map on the CT's grid, label table, notes) of the default mini knee."""
    from orthonav.segmentation.classical import segment_classical

    seg = segment_classical(mini_knee_phantom.ct, anatomy="auto")
    _read_only(seg.labels.array_zyx, seg.labels.lps_from_ijk)
    return seg


# --- phantoms: the small synthetic phantoms (orthonav.phantoms) and their case folders ------
# Built once per session and shared by test_phantom_* (and any test that needs the same
# build). READ-ONLY by convention: the CT / label arrays are made read-only; a test that
# writes into a case folder takes its own copy with ``copy_case``.


def _read_only_phantom(phantom):
    _read_only(phantom.ct.array_zyx, phantom.ct.lps_from_ijk, phantom.labels.array_zyx, phantom.labels.lps_from_ijk)
    return phantom


@pytest.fixture(scope="session")
def small_knee_phantom():
    """``make_knee_phantom(seed=0, small=True)``."""
    from orthonav.phantoms.knee import make_knee_phantom

    return _read_only_phantom(make_knee_phantom(seed=0, small=True))


@pytest.fixture(scope="session")
def small_hip_phantom():
    """``make_hip_phantom(seed=0, small=True)``."""
    from orthonav.phantoms.hip import make_hip_phantom

    return _read_only_phantom(make_hip_phantom(seed=0, small=True))


@pytest.fixture(scope="session")
def small_long_bone_phantom():
    """``make_long_bone_phantom(seed=3, small=True)``."""
    from orthonav.phantoms.long_bone import make_long_bone_phantom

    return _read_only_phantom(make_long_bone_phantom(seed=3, small=True))


@pytest.fixture(scope="session")
def small_knee_case(tmp_path_factory):
    """``make_phantom_case("knee", DIR, seed=0, small=True)`` (the files of
    ``small_knee_phantom``, with ``print/``): a :class:`~orthonav.core.case.Case`. Read-only."""
    from orthonav.phantoms.synthetic import make_phantom_case

    return make_phantom_case("knee", tmp_path_factory.mktemp("small_knee_case"), seed=0, small=True)


@pytest.fixture(scope="session")
def small_hip_case(tmp_path_factory):
    """``make_phantom_case("hip", DIR, seed=0, small=True)`` (the files of
    ``small_hip_phantom``, with ``print/``): a :class:`~orthonav.core.case.Case`. Read-only."""
    from orthonav.phantoms.synthetic import make_phantom_case

    return make_phantom_case("hip", tmp_path_factory.mktemp("small_hip_case"), seed=0, small=True)


@pytest.fixture(scope="session")
def small_long_bone_case(tmp_path_factory):
    """``make_phantom_case("long-bone", DIR, seed=3, small=True)`` (the files of
    ``small_long_bone_phantom``, with ``print/``): a :class:`~orthonav.core.case.Case`. Read-only."""
    from orthonav.phantoms.synthetic import make_phantom_case

    return make_phantom_case("long-bone", tmp_path_factory.mktemp("small_long_bone_case"), seed=3, small=True)


@pytest.fixture
def copy_case(tmp_path_factory) -> Callable:
    """``copy_case(case) -> Path``: a private copy of a shared case folder (a ``Case`` or a
    path), for a test that writes into it (plan, segmentation, sessions, ...)."""
    import shutil

    def copy(case) -> Path:
        src = Path(getattr(case, "root", case))
        dst = tmp_path_factory.mktemp(f"{src.name}_copy") / src.name
        shutil.copytree(src, dst)
        return dst

    return copy
