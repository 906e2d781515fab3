"""Per-call cost of ``BoneSurface.signed_distance_mm`` on a ~200k-face bone. Prints a table.

Run: ``python benchmarks/bench_signed_distance.py [--repeat N]``.

The bone is the navigation benchmark's toy femur (an ellipsoid, semi-axes 45, 40, 110 mm,
``resolution=320``: ~200k faces). For each place of the pointer tip (near the surface, inside,
deep inside, in the bounding box but far from the surface, far outside) it times the current
method and, for comparison, the previous one (nearest vertex from VTK's k-d tree, signed by that
vertex's normal beyond the exact band; it is wrong in sign and magnitude far from small bones),
and prints the median and 99th percentile of single calls (microseconds).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import pyvista as pv
import vtk

from orthonav.navigation.guidance import EXACT_BAND_MM, BoneSurface


class PreviousMethod:
    """The previous ``signed_distance_mm`` (for the before/after figures only)."""

    def __init__(self, surface: BoneSurface) -> None:
        self.implicit = vtk.vtkImplicitPolyDataDistance()
        self.implicit.SetInput(surface.mesh)
        self.locator = vtk.vtkKdTreePointLocator()
        self.locator.SetDataSet(surface.mesh)
        self.locator.BuildLocator()
        self.vertices = np.asarray(surface.mesh.points, dtype=np.float64)
        self.normals = np.asarray(surface.mesh.point_data["Normals"], dtype=np.float64)

    def __call__(self, p_ct_mm) -> float:
        p = np.asarray(p_ct_mm, dtype=np.float64).reshape(3).tolist()
        i = self.locator.FindClosestPoint(p)
        vx, vy, vz = self.vertices[i].tolist()
        dx, dy, dz = p[0] - vx, p[1] - vy, p[2] - vz
        d = math.sqrt(dx * dx + dy * dy + dz * dz)
        if d <= EXACT_BAND_MM:
            return float(self.implicit.EvaluateFunction(p))
        nx, ny, nz = self.normals[i].tolist()
        return d if dx * nx + dy * ny + dz * nz >= 0.0 else -d


#: Place -> pointer tip (CT LPS mm); the bone's centre is (0, 0, 70).
PLACES = {
    "near: 2 mm outside": (0.0, -42.0, 70.0),
    "near: 5 mm inside": (0.0, -35.0, 70.0),
    "deep: 30 mm inside": (0.0, -10.0, 70.0),
    "deep: centre, 40 mm inside": (0.0, 0.0, 70.0),
    "in the box, 20 mm outside": (40.0, 35.0, -20.0),
    "parked: 100 mm anterior": (0.0, -140.0, 70.0),
    "far: 300 mm anterior": (0.0, -340.0, 70.0),
    "far: 420 mm, off a corner": (300.0, 300.0, 300.0),
    "far: 460 mm lateral": (500.0, 10.0, 100.0),
}


def time_calls(f, p, repeat: int) -> tuple[float, float]:
    """Median and 99th percentile of ``repeat`` single calls (us)."""
    f(p)  # warm-up
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f(p)
        t.append(time.perf_counter() - t0)
    a = np.asarray(t) * 1e6
    return float(np.median(a)), float(np.percentile(a, 99))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=300, help="calls per place")
    args = ap.parse_args(argv)
    bone = pv.ParametricEllipsoid(45.0, 40.0, 110.0, u_res=320, v_res=320, w_res=320).triangulate().clean()
    bone = bone.translate((0.0, 0.0, 70.0), inplace=False)
    t0 = time.perf_counter()
    surface = BoneSurface(bone, "femur")
    build_s = time.perf_counter() - t0
    previous = PreviousMethod(surface)
    exact = vtk.vtkImplicitPolyDataDistance()
    exact.SetInput(surface.mesh)
    load0 = os.getloadavg()[0]
    rows = []
    for name, p in PLACES.items():
        now = time_calls(surface.signed_distance_mm, p, args.repeat)
        before = time_calls(previous, p, args.repeat)
        want = exact.EvaluateFunction(list(p))
        rows.append((name, f"{want:+.2f}", f"{surface.signed_distance_mm(p):+.2f}", f"{now[0]:.1f} / {now[1]:.1f}",
                     f"{previous(p):+.2f}", f"{before[0]:.1f} / {before[1]:.1f}"))
    print(f"bone {surface.mesh.n_cells} faces, built in {build_s:.2f} s; far_error_mm {surface.far_error_mm:.3f}; "
          f"{os.cpu_count()} CPUs, load {load0:.1f} / {os.getloadavg()[0]:.1f}")
    head = ("place", "exact mm", "now mm", "now us p50 / p99", "before mm", "before us p50 / p99")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("  ".join("-" * x for x in w))
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
