"""Navigation speed: receive -> navigation state at 1 kHz, overlay frame rate, ICP time. Prints a table.

Run: ``python benchmarks/bench_navigation.py [--quick]``. Targets (issue 6):

* receive -> navigation state p99 < 1 ms at 1 kHz;
* overlay >= 30 fps off-screen at 800x600 (software renderer);
* ICP of 1k points to a 200k-vertex mesh < 20 ms.

The live loop runs as in ``orthonav navigate``, over a real socket: a separate sender process
streams the scripted saw sweep (reference, pointer and saw; 3 TRANSFORMs per sample) at 1 kHz
over OpenIGTLink on 127.0.0.1; in this process :class:`IGTLClientSource` receives and decodes
them into the pose store, and :class:`NavigationLoop` turns every update into a navigation
state with the toy case's ~200k-face bone (poses in the CT, saw guidance with remaining-depth
ray casts, pointer-to-bone distance). Two latencies per state:

* receive -> state: host receipt of the newest message (``time.monotonic()`` right after
  ``recv``) -> state computed. This is the issue's figure.
* send -> state: the sender's wire timestamp (``time.time()`` just before it queues the
  sample) -> state handed to the loop's callback (``time.time()``; same host, same clock):
  adds the socket, the wait for the GIL and decoding.

The first 0.5 s (connection, warm-up) are not counted. Timings on a shared machine scale with
its load, which is printed with the table.

Two arrays (issue 16, ``--only knee``): the same method on the two-array knee scenario
(:mod:`orthonav.phantoms.scenario_two_array`) on the small knee phantom (auto plan, gap
geometry of its femoral cuts): the sender streams the range-of-motion and stress-test part
(``FemurRef``, ``TibiaRef``, the parked ``Pointer``: 3 TRANSFORMs per sample, plus the hidden
saw's STATUS, all with one timestamp as PLUS / NDI send them) at 1 kHz, looped; the workflow first registers both bones from the
scenario's own digitising frames (offline), then every state carries the live alignment and
gaps (the row reports the share of states that did).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyvista as pv

from orthonav.core import transforms as tf
from orthonav.navigation import NavigationLoop, Workflow, load_navigation_inputs
from orthonav.navigation.overlay import NavigationScene
from orthonav.navigation.surface import SurfaceModel, icp_point_to_plane
from orthonav.phantoms.scenario import knee_scenario, toy_geometry, write_toy_case

WARM_UP_S = 0.5


def _saw_script():
    """The scenario's saw sweep, repeated every 3 s (reference, pointer and saw visible)."""
    sc = knee_scenario(toy_geometry(), seed=1)
    saw_start = next(p.t0_s for p in sc.phases if p.name == "saw_sweep")
    return sc, saw_start, (lambda t: sc.script(saw_start + (t % 3.0)))


def serve(rate_hz: float, seconds: float) -> None:
    """Sender process: stream the saw sweep over OpenIGTLink (prints the port, then the stats)."""
    from orthonav.tracking.simulator import stream_script

    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) == os.SCHED_FIFO:
        # --rt: the tracker is another device; below the receiving process, so it never delays it.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
    _sc, _t0, script = _saw_script()
    stats = stream_script(script, 0, rate_hz=rate_hz, duration_s=seconds, wait_for_client_s=30.0,
                          on_listening=lambda port: print(port, flush=True))
    print(f"{stats.samples} {stats.rate_hz:.1f} {stats.late_samples}", flush=True)


def _knee_case(root: Path) -> Path:
    """The small knee phantom with its true meshes as the segmentation and an auto plan (the
    acceptance tests' case, tests/test_nav_perbone.py)."""
    import shutil

    from orthonav.phantoms.synthetic import make_phantom_case
    from orthonav.planning.auto import auto_plan

    case = make_phantom_case("knee", root, seed=0, small=True).root
    (case / "meshes").mkdir(exist_ok=True)
    for bone in ("femur", "tibia", "fibula", "patella"):
        shutil.copy(case / "truth" / "meshes" / f"{bone}.stl", case / "meshes" / f"{bone}.stl")
    auto_plan(case)
    return case


def _knee_script(case_dir: Path):
    """The two-array scenario and its range-of-motion + stress-test part as a looped script."""
    from orthonav.phantoms.scenario_two_array import knee_two_array_scenario

    sc = knee_two_array_scenario(case_dir, seed=3, fle_mm=0.25)
    t0 = min(p.t0_s for p in sc.phases if p.name in ("rom_hold", "rom_move"))
    t1 = max(p.t1_s for p in sc.phases if p.name == "stress_hold")
    return sc, t0, t1, (lambda t: sc.script(t0 + (t % (t1 - t0))))


def serve_knee(rate_hz: float, seconds: float, case_dir: str) -> None:
    """Sender process of the two-array row (prints the port, then the stats)."""
    from orthonav.tracking.simulator import stream_script

    _sc, _t0, _t1, script = _knee_script(Path(case_dir))
    stats = stream_script(script, 0, rate_hz=rate_hz, duration_s=seconds, wait_for_client_s=30.0,
                          on_listening=lambda port: print(port, flush=True))
    print(f"{stats.samples} {stats.rate_hz:.1f} {stats.late_samples}", flush=True)


def bench_knee_loop(case_dir: Path, seconds: float, *, rate_hz: float = 1000.0) -> dict[str, float]:
    """Two arrays: receive -> state with alignment and gaps over OpenIGTLink at ``rate_hz`` (module docstring)."""
    from orthonav.tracking.igtl_client import IGTLClientSource

    sc, t0, t1, _script = _knee_script(case_dir)
    inputs = load_navigation_inputs(case_dir, sc.toolset, surfaces=True)
    if inputs.context.knee is None or inputs.context.knee.gap_geometry is None:
        raise RuntimeError(f"the knee case gives no gaps: {inputs.context.knee and inputs.context.knee.gaps_reason}")
    wf = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm, bone_fiducials=inputs.bone_fiducials,
                  point_bones=inputs.landmark_bones)
    for fr in sc.frames(50.0, t1_s=t0):  # digitise and register both bones as in a session (offline)
        wf.process(fr, clock=None)
    if wf.registration is None:
        raise RuntimeError("the scenario's digitising frames did not register both bones: " + "; ".join(e.text for e in wf.events[-3:]))
    frames = list(sc.frames(500.0, t0_s=t0, t1_s=min(t1, t0 + 2.0), tracker_noise_mm=0.1, rotation_noise_deg=0.05))
    per = []
    c0 = time.process_time()
    for fr in frames:
        t_0 = time.perf_counter()
        st = wf.process(fr, clock=None)
        per.append(time.perf_counter() - t_0)
        if st.alignment is None or st.gaps is None:
            raise RuntimeError(f"offline state without alignment / gaps: {st.knee_reason}")
    cpu_state = (time.process_time() - c0) / len(frames)

    proc = subprocess.Popen([sys.executable, __file__, "--serve-knee", str(rate_hz), str(seconds + WARM_UP_S + 1.0), str(case_dir)],
                            stdout=subprocess.PIPE, text=True)
    rows: list[tuple[float, float, bool]] = []
    t_count = [math.inf]

    def on_state(state, _wf) -> None:
        now = time.time()
        if state.host_time_s < t_count[0] or not state.tracking:
            return
        dev = max((t.device_time_s for t in state.tools.values() if math.isfinite(t.device_time_s)), default=math.nan)
        rows.append((state.latency_s, now - dev, state.alignment is not None and state.gaps is not None))

    try:
        port = int(proc.stdout.readline())
        source = IGTLClientSource("127.0.0.1", port, tools=sc.toolset)
        loop = NavigationLoop(source, wf, on_state=on_state)
        with source:
            loop.start()
            if loop.wait_until(lambda s: s.alignment is not None, 20.0) is None:
                raise RuntimeError("no state with the knee alignment within 20 s")
            t_count[0] = time.monotonic() + WARM_UP_S
            c0, w0 = time.process_time(), time.monotonic()
            threading.Event().wait(t_count[0] + seconds - time.monotonic())
            cpu = (time.process_time() - c0) / (time.monotonic() - w0)
            loop.stop()
        _samples, sent_rate, late = proc.stdout.readline().split()
    finally:
        proc.wait(30.0)
    recv = _pct([r[0] for r in rows])
    send = _pct([r[1] for r in rows])
    p = np.asarray(per) * 1e3
    return {"states": float(len(rows)), "rate_hz": len(rows) / seconds, "recv_p50": recv[0], "recv_p99": recv[1], "recv_max": recv[2],
            "send_p99": send[1], "cpu_cores": cpu, "sent_rate_hz": float(sent_rate), "late": float(late),
            "with_knee": float(np.mean([r[2] for r in rows])) if rows else math.nan,
            "state_p50_ms": float(np.percentile(p, 50)), "state_p99_ms": float(np.percentile(p, 99)), "state_cpu_ms": cpu_state * 1e3}


def _pct(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float) * 1e3
    return (float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())) if a.size else (math.nan,) * 3


def bench_loop(case_dir: Path, seconds: float, *, rate_hz: float = 1000.0, render_fps: float = 0.0) -> dict[str, float]:
    """The live loop over OpenIGTLink at ``rate_hz`` (see the module docstring); with
    ``render_fps`` > 0 the overlay renders the newest state at that rate in this process meanwhile."""
    from orthonav.navigation.state import expire_state
    from orthonav.tracking.igtl_client import IGTLClientSource

    sc, saw_start, _script = _saw_script()
    inputs = load_navigation_inputs(case_dir, sc.toolset, surfaces=True)
    wf = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm)
    wf.registration = object()  # type: ignore[assignment]  # registered: every state computes poses and guidance
    wf.ctx = inputs.context.with_registration(sc.ct_from_reference)
    # Per-state CPU of the state pipeline alone (no threads), on the same frames offline.
    frames = list(sc.frames(500.0, t0_s=saw_start, t1_s=saw_start + 1.0, tracker_noise_mm=0.1, rotation_noise_deg=0.05))
    per = []
    c0 = time.process_time()
    for fr in frames:
        t0 = time.perf_counter()
        wf.process(fr, clock=None)
        per.append(time.perf_counter() - t0)
    cpu_state = (time.process_time() - c0) / len(frames)

    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(rate_hz), str(seconds + WARM_UP_S + 1.0)],
                            stdout=subprocess.PIPE, text=True)
    rows: list[tuple[float, float]] = []
    t_count = [math.inf]

    def on_state(state, _wf) -> None:
        now = time.time()
        if state.host_time_s < t_count[0] or not state.tracking:
            return
        dev = max((t.device_time_s for t in state.tools.values() if math.isfinite(t.device_time_s)), default=math.nan)
        rows.append((state.latency_s, now - dev))

    scene = None
    try:
        port = int(proc.stdout.readline())
        source = IGTLClientSource("127.0.0.1", port, tools=sc.toolset)
        loop = NavigationLoop(source, wf, on_state=on_state)
        if render_fps > 0:
            scene = NavigationScene(inputs.context.toolset, inputs.bones, cuts=inputs.context.cuts, window_size=(800, 600))
        with source:
            loop.start()
            if loop.wait_until(lambda s: s.tracking, 10.0) is None:
                raise RuntimeError("no tracked navigation state within 10 s")
            t_count[0] = time.monotonic() + WARM_UP_S
            c0, w0 = time.process_time(), time.monotonic()
            end = t_count[0] + seconds
            frames_drawn = 0
            # The measuring thread waits on an Event nobody sets (a timed wait), not on the loop's
            # condition: that would wake it, and make it take the GIL, at every state.
            idle = threading.Event()
            while time.monotonic() < end:
                if scene is None:
                    idle.wait(end - time.monotonic())
                    continue
                nxt = time.monotonic() + 1.0 / render_fps
                state = expire_state(loop.latest_state(), time.monotonic(), 0.5)
                if state is not None and time.monotonic() >= t_count[0]:
                    scene.update(state)
                    scene.render()
                    frames_drawn += 1
                idle.wait(max(0.0, nxt - time.monotonic()))
            cpu = (time.process_time() - c0) / (time.monotonic() - w0)
            loop.stop()
        _samples, sent_rate, late = proc.stdout.readline().split()
    finally:
        if scene is not None:
            scene.close()
        proc.wait(30.0)
    recv = _pct([r[0] for r in rows])
    send = _pct([r[1] for r in rows])
    p = np.asarray(per) * 1e3
    return {"states": float(len(rows)), "rate_hz": len(rows) / seconds, "recv_p50": recv[0], "recv_p99": recv[1], "recv_max": recv[2],
            "send_p50": send[0], "send_p99": send[1], "send_max": send[2], "cpu_cores": cpu, "sent_rate_hz": float(sent_rate),
            "late": float(late), "state_p50_ms": float(np.percentile(p, 50)), "state_p99_ms": float(np.percentile(p, 99)),
            "state_cpu_ms": cpu_state * 1e3, "render_fps": frames_drawn / seconds if render_fps > 0 else 0.0}


def bench_overlay(case_dir: Path, n_frames: int) -> dict[str, float]:
    """Overlay update + render at 800x600 off-screen on a 200k-face bone (decimated for display)."""
    inputs = load_navigation_inputs(case_dir, surfaces=False)
    faces = inputs.bones["femur"].n_cells
    sc = knee_scenario(toy_geometry(), seed=1)
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
    times, cpus, iters = [], [], []
    for _ in range(repeats):
        init = tf.make_rigid(tf.rotation_about_axis(rng.normal(size=3), np.radians(3.0)), rng.normal(size=3) * 3.0 / np.sqrt(3))
        t0, c0 = time.perf_counter(), time.process_time()
        res = icp_point_to_plane(pts, model, init)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        iters.append(res.iterations)
        if tf.rotation_angle_deg(res.ct_from_reference) > 0.5:  # truth is the identity: a fast wrong answer is no answer
            raise RuntimeError(f"ICP missed the truth by {tf.rotation_angle_deg(res.ct_from_reference):.2f} deg")
    return {"vertices": float(len(p)), "build_s": build, "icp_ms_median": float(np.median(times) * 1e3),
            "icp_ms_max": float(np.max(times) * 1e3), "icp_cpu_ms": float(np.median(cpus) * 1e3), "iterations": float(np.median(iters))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--only", choices=("loop", "knee", "overlay", "icp"), help="run one benchmark")
    ap.add_argument("--rt", action="store_true",
                    help="run under SCHED_FIFO (needs CAP_SYS_NICE): what a dedicated navigation workstation sees, "
                         "on a machine overloaded by other work; reported as a separate, labelled figure")
    ap.add_argument("--serve", nargs=2, type=float, metavar=("RATE_HZ", "SECONDS"), help=argparse.SUPPRESS)  # sender process
    ap.add_argument("--serve-knee", nargs=3, metavar=("RATE_HZ", "SECONDS", "CASE"), help=argparse.SUPPRESS)  # two-array sender
    args = ap.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    if args.serve_knee:
        serve_knee(float(args.serve_knee[0]), float(args.serve_knee[1]), args.serve_knee[2])
        return 0
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    tag = ""
    if args.rt:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # inherited by our threads and the sender process
        tag = " [SCHED_FIFO]"
    rows = []
    with tempfile.TemporaryDirectory() as d:
        case = Path(d)
        if args.only != "knee":
            write_toy_case(case, resolution=320)  # femur ~200k faces
        if args.only in (None, "loop"):
            lp = bench_loop(case, 2.0 if args.quick else 6.0)
            rows.append((f"receive -> state p99 @1 kHz{tag}", f"{lp['recv_p99']:.3f} ms", "< 1 ms",
                         (f"p50 {lp['recv_p50']:.3f}, max {lp['recv_max']:.2f} ms; send -> state p50 {lp['send_p50']:.3f} / "
                         f"p99 {lp['send_p99']:.3f} / max {lp['send_max']:.2f} ms; {lp['rate_hz']:.0f} states/s "
                         f"(sender {lp['sent_rate_hz']:.0f} Hz x 3 tools, {lp['late']:.0f} late); process CPU {lp['cpu_cores']:.2f} cores")))
            rows.append(("  one state (workflow + compute_state)", f"{lp['state_p50_ms']:.3f} ms", "",
                         f"p99 {lp['state_p99_ms']:.3f} ms wall, mean {lp['state_cpu_ms']:.3f} ms CPU (offline, saw + pointer live, 200k-face bone)"))
        if args.only in (None, "knee"):
            kn = bench_knee_loop(_knee_case(case / "knee"), 2.0 if args.quick else 6.0)
            rows.append((f"two arrays: receive -> state p99 @1 kHz{tag}", f"{kn['recv_p99']:.3f} ms", "< 1 ms",
                         (f"p50 {kn['recv_p50']:.3f}, max {kn['recv_max']:.2f} ms; send -> state p99 {kn['send_p99']:.3f} ms; "
                          f"{kn['rate_hz']:.0f} states/s, {kn['with_knee']:.1%} with alignment and gaps (sender {kn['sent_rate_hz']:.0f} Hz "
                          f"x 3 tools + saw STATUS, {kn['late']:.0f} late); process CPU {kn['cpu_cores']:.2f} cores")))
            rows.append(("  one two-array state (workflow + compute_state)", f"{kn['state_p50_ms']:.3f} ms", "",
                         f"p99 {kn['state_p99_ms']:.3f} ms wall, mean {kn['state_cpu_ms']:.3f} ms CPU (offline, alignment + gaps + pointer)"))
        if args.only in (None, "overlay"):
            ov = bench_overlay(case, 30 if args.quick else 90)
            rows.append(("overlay 800x600 off-screen", f"{ov['fps']:.1f} fps", ">= 30 fps", f"{ov['frame_ms']:.1f} ms/frame, bone {ov['bone_faces']:.0f} faces"))
        if args.only is None:
            lr = bench_loop(case, 2.0 if args.quick else 6.0, render_fps=30.0)
            rows.append(("  same, overlay at 30 fps in-process", f"{lr['recv_p99']:.3f} ms", "(info)",
                         (f"p50 {lr['recv_p50']:.3f}, max {lr['recv_max']:.2f} ms; send -> state p99 {lr['send_p99']:.3f} / max "
                         f"{lr['send_max']:.2f} ms; {lr['rate_hz']:.0f} states/s; drew {lr['render_fps']:.1f} fps")))
    if args.only in (None, "icp"):
        icp = bench_icp(5 if args.quick else 20)
        rows.append(("ICP 1k pts -> 200k-vertex mesh", f"{icp['icp_ms_median']:.1f} ms", "< 20 ms",
                     (f"max {icp['icp_ms_max']:.1f} ms wall, median {icp['icp_cpu_ms']:.1f} ms CPU, {icp['iterations']:.0f} it; "
                     f"model built once per bone: {icp['build_s']:.2f} s ({icp['vertices']:.0f} vertices)")))
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load0:.1f} before / {load1:.1f} after (figures scale with the load on a shared machine)")
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
