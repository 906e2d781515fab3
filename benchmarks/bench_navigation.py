"""Navigation speed: receive -> state latency at 1 kHz, overlay frame rate, ICP time. Prints a table.

Run: ``python benchmarks/bench_navigation.py [--quick]``. Targets (issue 6):

* receive -> navigation state p99 < 1 ms with the simulator at 1 kHz (tracking thread only);
* overlay >= 30 fps off-screen at 800x600 (software renderer);
* ICP of 1k points to a 200k-vertex mesh < 20 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyvista as pv

from orthonav.core import transforms as tf
from orthonav.navigation.guidance import BoneSurface, cut_frame
from orthonav.navigation.loop import NavigationLoop
from orthonav.navigation.navigate import load_navigation_inputs
from orthonav.navigation.overlay import NavigationScene
from orthonav.navigation.state import NavigationContext, compute_state
from orthonav.navigation.surface import SurfaceModel, icp_point_to_plane
from orthonav.navigation.workflow import Workflow
from orthonav.phantoms.scenario import knee_scenario, toy_geometry, write_toy_case
from orthonav.tracking.simulator import SimulatedSource


def bench_loop(seconds: float) -> dict[str, float]:
    """Live loop on the threaded simulator at 1 kHz, registered, with a bone surface (no rendering)."""
    geo = toy_geometry()
    sc = knee_scenario(geo, seed=1)
    mesh = pv.ParametricEllipsoid(45.0, 40.0, 110.0, u_res=120, v_res=120, w_res=120).translate((0, 0, 70.0), inplace=False)
    ctx = NavigationContext(sc.toolset, cuts={"distal_femur": cut_frame(geo.cut_point_mm, geo.cut_normal, geo.medial)},
                            cut_bones={"distal_femur": "femur"}, surfaces={"femur": BoneSurface(mesh, "femur")})
    wf = Workflow(ctx, list(geo.fiducial_names), geo.fiducials_ct_mm)
    # Pretend registration is done so every state computes poses and guidance.
    wf.registration = object()  # type: ignore[assignment]
    wf.ctx = ctx.with_registration(sc.ct_from_reference)
    saw_start = next(p.t0_s for p in sc.phases if p.name == "saw_sweep")

    def script(t: float):
        return sc.script(saw_start + (t % 3.0))

    src = SimulatedSource(script, rate_hz=1000.0, tools=sc.toolset, seed=0)
    loop = NavigationLoop(src, wf)
    with src:
        loop.start()
        loop.wait_until(lambda s: False, seconds)  # just wait `seconds` on the loop's condition
        loop.stop()
    st = loop.stats()
    # Pure compute time of one state.
    frames = list(sc.frames(200.0, t0_s=saw_start, t1_s=saw_start + 1.0))
    t0, c0 = time.perf_counter(), time.process_time()
    for fr in frames:
        compute_state(fr, wf.ctx, clock=None)
    per = (time.perf_counter() - t0) / len(frames)
    cpu = (time.process_time() - c0) / len(frames)
    return {"states": st.states, "rate_hz": st.rate_hz, "p50_ms": st.latency_p50_ms, "p99_ms": st.latency_p99_ms,
            "compute_ms": per * 1e3, "compute_cpu_ms": cpu * 1e3}


def bench_overlay(n_frames: int) -> dict[str, float]:
    """Overlay update + render at 800x600 off-screen on a 200k-face bone (decimated for display)."""
    with tempfile.TemporaryDirectory() as d:
        geo = write_toy_case(Path(d), resolution=320)  # ~200k faces
        inputs = load_navigation_inputs(d, surfaces=False)
        faces = inputs.bones["femur"].n_cells
        sc = knee_scenario(geo, seed=1)
        wf = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm)
        wf.registration = object()  # type: ignore[assignment]
        wf.ctx = inputs.context.with_registration(sc.ct_from_reference)
        saw_start = next(p.t0_s for p in sc.phases if p.name == "saw_sweep")
        states = [wf.process(fr, clock=None) for fr in sc.frames(30.0, t0_s=saw_start, t1_s=saw_start + n_frames / 30.0)]
        scene = NavigationScene(inputs.context.toolset, inputs.bones, cuts=inputs.context.cuts, window_size=(800, 600))
        scene.update(states[0])
        scene.render()
        t0 = time.perf_counter()
        for s in states:
            scene.update(s)
            scene.render()
        dt = (time.perf_counter() - t0) / len(states)
        scene.close()
    return {"fps": 1.0 / dt, "frame_ms": dt * 1e3, "bone_faces": float(faces)}


def bench_icp(repeats: int) -> dict[str, float]:
    """Trimmed point-to-plane ICP of 1k points to a ~200k-vertex mesh, from a 3 deg / 3 mm start."""
    mesh = pv.ParametricEllipsoid(40.0, 32.0, 110.0, u_res=450, v_res=450, w_res=450).triangulate().clean()
    p = np.asarray(mesh.points).copy()
    dist = np.clip(-p[:, 2] / 110.0, 0, 1)
    p[:, 0] *= 1.0 + 0.5 * dist
    p[:, 1] += 6.0 * np.sin(p[:, 0] / 15.0) * dist
    mesh.points = p
    t0 = time.perf_counter()
    model = SurfaceModel(mesh)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    distal = p[p[:, 2] < -40]
    pts = distal[rng.choice(len(distal), 1000, replace=False)] + rng.normal(scale=0.2, size=(1000, 3))
    times, iters = [], []
    for _ in range(repeats):
        init = tf.make_rigid(tf.rotation_about_axis(rng.normal(size=3), np.radians(3.0)), rng.normal(size=3) * 3.0 / np.sqrt(3))
        t0 = time.perf_counter()
        res = icp_point_to_plane(pts, model, init)
        times.append(time.perf_counter() - t0)
        iters.append(res.iterations)
    return {"vertices": float(len(p)), "build_s": build, "icp_ms_median": float(np.median(times) * 1e3),
            "icp_ms_max": float(np.max(times) * 1e3), "iterations": float(np.median(iters))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    args = ap.parse_args(argv)
    rows = []
    loop = bench_loop(1.5 if args.quick else 5.0)
    rows.append(("receive -> state p99 @1 kHz", f"{loop['p99_ms']:.3f} ms", "< 1 ms",
                 f"p50 {loop['p50_ms']:.3f} ms, {loop['rate_hz']:.0f} states/s, one state {loop['compute_ms']:.3f} ms "
                 f"wall / {loop['compute_cpu_ms']:.3f} ms CPU"))
    ov = bench_overlay(30 if args.quick else 90)
    rows.append(("overlay 800x600 off-screen", f"{ov['fps']:.1f} fps", ">= 30 fps", f"{ov['frame_ms']:.1f} ms/frame, bone {ov['bone_faces']:.0f} faces"))
    icp = bench_icp(5 if args.quick else 20)
    rows.append(("ICP 1k pts -> 200k-vertex mesh", f"{icp['icp_ms_median']:.1f} ms", "< 20 ms",
                 f"max {icp['icp_ms_max']:.1f} ms, {icp['iterations']:.0f} it, {icp['vertices']:.0f} vertices, KD-tree {icp['build_s']:.2f} s"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} (figures scale with the load on a shared machine)")
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("benchmark", "measured", "target", "details")
    w = [max(w[i], len(head[i])) for i in range(4)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("  ".join("-" * w[i] for i in range(4)))
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
