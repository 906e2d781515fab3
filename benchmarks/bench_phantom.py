"""Phantom generation speed and size: ``python benchmarks/bench_phantom.py [--full]``.

Targets: small knee (tests) generation + write < 5 s; full knee (demo) < 20 s and <= 25 M
voxels, on a 2-core machine. Prints wall and CPU seconds (CPU is what a busy shared machine
cannot distort) for: first build (geometry fitted), a second seed (geometry cached in the
process), the case write, and the printable model.
"""

from __future__ import annotations

import sys
import tempfile
import time

from orthonav.phantoms.knee import make_knee_phantom
from orthonav.phantoms.printable import make_printable_knee
from orthonav.phantoms.synthetic import write_phantom_case


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    sizes = [("small", True)] + ([("full", False)] if "--full" in sys.argv else [])
    rows = []
    for name, small in sizes:
        ph, w1, c1 = _timed(lambda: make_knee_phantom(seed=0, small=small))
        _ph2, w2, c2 = _timed(lambda: make_knee_phantom(seed=1, small=small))
        with tempfile.TemporaryDirectory() as d:
            _case, w3, c3 = _timed(lambda: write_phantom_case(ph, d, printable=False))
        _pp, w4, c4 = _timed(lambda: make_printable_knee(ph))
        n = ph.ct.array_zyx.size
        rows.append((name, f"{n / 1e6:.1f} M", ph.ct.spacing_mm.round(2).tolist(), (w1, c1), (w2, c2), (w3, c3), (w4, c4)))
    print(f"{'phantom':8} {'voxels':>8} {'spacing mm':>18} {'build s (wall/cpu)':>20} {'2nd seed s':>14} {'write s':>12} {'print s':>12}")
    for name, nvox, sp, a, b, c, d in rows:
        f = lambda t: f"{t[0]:.1f}/{t[1]:.1f}"  # noqa: E731
        print(f"{name:8} {nvox:>8} {str(sp):>18} {f(a):>20} {f(b):>14} {f(c):>12} {f(d):>12}")


if __name__ == "__main__":
    main()
