"""Planning speed: landmark detection, automatic plan, and a plan update after an implant move
(cuts, resections and all outcome metrics included) on ~100k-triangle bones.

Run: ``python benchmarks/bench_planning.py`` (builds the full-resolution synthetic knee phantom
first; its truth meshes are used as they are when they have >= 100k triangles).
Target: plan update < 100 ms.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeat: int = 1):
    ts = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return out, float(np.median(ts)), float(np.max(ts))


def _to_n_triangles(mesh, n: int):
    """Bring a mesh to at least ``n`` triangles (finer meshes are kept: a conservative test)."""
    while mesh.n_cells < n:
        mesh = mesh.subdivide(1, "loop")
    return mesh


def main() -> None:
    from orthonav.core.meshio import read_mesh
    from orthonav.phantoms.knee import make_knee_phantom
    from orthonav.phantoms.synthetic import write_phantom_case
    from orthonav.planning.tka.plan import build_tka_plan as build_plan
    from orthonav.planning.tka.landmarks import find_landmarks
    from orthonav.planning.tka.session import TkaSession as PlanSession

    rows = []
    with tempfile.TemporaryDirectory() as d:
        case = Path(d) / "knee"
        _, t, _ = _timed(lambda: write_phantom_case(make_knee_phantom(seed=0, small=False), case))
        rows.append(("phantom (full) generation + write", t, t, ""))
        meshes = {b: read_mesh(case / "truth" / "meshes" / f"{b}.stl") for b in ("femur", "tibia", "fibula", "patella")}
    for b in ("femur", "tibia"):
        meshes[b] = _to_n_triangles(meshes[b], 100_000)
    tri = {b: m.n_cells for b, m in meshes.items()}
    _, t, tmax = _timed(lambda: find_landmarks(meshes), repeat=3)
    rows.append(("find_landmarks", t, tmax, f"femur {tri['femur']} / tibia {tri['tibia']} triangles"))
    plan, t, tmax = _timed(lambda: build_plan(meshes), repeat=1)
    rows.append(("build_plan (landmarks, sizing, cuts, metrics)", t, tmax, ""))
    session, t, _ = _timed(lambda: PlanSession(plan, meshes))
    rows.append(("PlanSession start (mesh -> solid)", t, t, ""))
    steps = [("tka_femoral", {"translation_mm": (0.0, 0.5, 0.0)}), ("tka_femoral", {"rotation_deg": 1.0}), ("tka_tibial_tray", {"translation_mm": (0.0, 0.0, -0.5)}), ("tka_tibial_tray", {"rotation_axis": (1.0, 0.0, 0.0), "rotation_deg": 1.0})]
    times = []
    for i in range(20):
        fam, kw = steps[i % len(steps)]
        _, t, _ = _timed(lambda fam=fam, kw=kw: session.move_implant(fam, **kw))
        times.append(t)
    import os

    load = os.getloadavg()[0]
    rows.append(("plan update after implant move (cuts + metrics)", float(np.median(times)), float(np.max(times)), f"target < 0.100 s (load average {load:.1f} on {os.cpu_count()} cores)"))
    _, t, tmax = _timed(session.undo, repeat=5)
    rows.append(("undo (recompute)", t, tmax, ""))
    print(f"{'step':52s} {'median s':>9s} {'max s':>9s}  note")
    for name, t, tmax, note in rows:
        print(f"{name:52s} {t:9.3f} {tmax:9.3f}  {note}")


if __name__ == "__main__":
    main()
