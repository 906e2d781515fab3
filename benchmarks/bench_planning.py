"""Planning speed: landmark detection, automatic plan, and a plan update after an implant move
(cuts, resections and all outcome metrics included) on ~100k-triangle bones; then the same for
a THA plan (an edit recomputes the cup angles, leg length, offsets, reaming and coverage).

Run: ``python benchmarks/bench_planning.py`` (builds the full-resolution synthetic knee and hip
phantoms first; the knee's truth meshes are used as they are when they have >= 100k triangles,
the hip's as they are). ``--tha`` runs only the THA part.
Target: plan update < 100 ms (TKA and THA).
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


def _tha_rows() -> list[tuple[str, float, float, str]]:
    """THA on the full hip phantom's truth meshes: plan build, session start, implant edits."""
    import os

    from orthonav.core.meshio import read_mesh
    from orthonav.phantoms.hip import make_hip_phantom
    from orthonav.phantoms.synthetic import write_phantom_case
    from orthonav.planning.tha import ThaSession, build_tha_plan

    rows = []
    bones = ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right")
    with tempfile.TemporaryDirectory() as d:
        case = Path(d) / "hip"
        _, t, _ = _timed(lambda: write_phantom_case(make_hip_phantom(seed=0, small=False), case, printable=False))
        rows.append(("hip phantom (full) generation + write", t, t, ""))
        meshes = {b: read_mesh(case / "truth" / "meshes" / f"{b}.stl") for b in bones}
    tri = {b: m.n_cells for b, m in meshes.items()}
    plan, t, tmax = _timed(lambda: build_tha_plan(meshes), repeat=1)
    rows.append(("THA build_tha_plan (both sides)", t, tmax, f"hip_left {tri['hip_left']} / femur_left {tri['femur_left']} triangles"))
    session, t, _ = _timed(lambda: ThaSession(plan, meshes))
    rows.append(("ThaSession start", t, t, ""))
    cup = next(i for i, imp in enumerate(plan.implants) if imp.family == "tha_cup" and imp.bone == "hip_left")
    stem = next(i for i, imp in enumerate(plan.implants) if imp.family == "tha_stem" and imp.bone == "femur_left")
    steps = [(cup, {"rotation_axis": (1.0, 0.0, 0.0), "rotation_deg": 1.0}), (cup, {"translation_mm": (0.0, 0.0, 0.5)}),
             (stem, {"translation_mm": (0.0, 0.0, 0.5)}), (stem, {"rotation_axis": (0.0, 0.0, 1.0), "rotation_deg": 1.0})]
    wall: dict[str, list[float]] = {"cup": [], "stem": []}
    cpu: list[float] = []
    for i in range(40):
        idx, kw = steps[i % len(steps)]
        c0 = time.process_time()
        _, t, _ = _timed(lambda idx=idx, kw=kw: session.move_implant(idx, **kw))
        cpu.append(time.process_time() - c0)
        wall["cup" if idx == cup else "stem"].append(t)
    load = os.getloadavg()[0]
    both = wall["cup"] + wall["stem"]
    rows.append(("THA edit: cup / stem move (angles, leg length, offset, coverage)", float(np.median(both)), float(np.max(both)),
                 f"target < 0.100 s; CPU median {np.median(cpu) * 1e3:.0f} ms (load average {load:.1f} on {os.cpu_count()} cores)"))
    for part in ("cup", "stem"):
        rows.append((f"  THA edit: {part} only", float(np.median(wall[part])), float(np.max(wall[part])), ""))
    _, t, tmax = _timed(session.undo, repeat=5)
    rows.append(("THA undo (recompute)", t, tmax, ""))
    return rows


def _print(rows) -> None:
    print(f"{'step':66s} {'median s':>9s} {'max s':>9s}  note")
    for name, t, tmax, note in rows:
        print(f"{name:66s} {t:9.3f} {tmax:9.3f}  {note}")


def main() -> None:
    import sys

    if "--tha" in sys.argv[1:]:
        _print(_tha_rows())
        return
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
    rows.extend(_tha_rows())
    _print(rows)


if __name__ == "__main__":
    main()
