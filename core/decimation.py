"""Quadric decimation of a triangle mesh (fast-simplification), safe to call from any thread.

fast-simplification (the Fast-Quadric-Mesh-Simplification core) keeps the mesh it works on
in global C++ state, filled and read back by separate calls (load, simplify, read points,
read triangles). Two threads decimating at once overwrite each other's mesh between those
calls: measured here, 4 threads decimating two spheres 200 times returned the other thread's
sphere 133 times and an empty surface once. Every call in OrthoNav goes through
:func:`decimate`, which holds one lock over the whole sequence. The core holds the GIL while
it runs, so the lock costs no parallelism.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray

_LOCK = threading.Lock()


def decimate(points: NDArray[np.floating], faces: NDArray[np.integer], target_triangles: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """``(points, faces)`` decimated by quadric edge collapse to about ``target_triangles``
    triangles; returned as they are when ``target_triangles`` <= 0 or not below their count.

    ``points`` (n, 3) in any length unit (returned in the same), ``faces`` (m, 3) vertex indices.
    The result is not checked: a collapse may pinch thin parts into edges shared by more than
    two triangles (:mod:`orthonav.segmentation.meshing` checks and retries).
    """
    if target_triangles <= 0 or len(faces) <= target_triangles:
        return np.asarray(points, np.float64), np.asarray(faces, np.int64)
    import fast_simplification

    reduction = 1.0 - target_triangles / len(faces)
    with _LOCK:
        p, f = fast_simplification.simplify(np.asarray(points, np.float32), np.asarray(faces, np.int32), target_reduction=reduction)
    return np.asarray(p, dtype=np.float64), np.asarray(f, dtype=np.int64)
