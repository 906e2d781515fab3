"""Tracking benchmarks: OpenIGTLink receive -> frame available, CRC-64, ArUco detection.

Run: ``python benchmarks/bench_tracking.py`` (about 20 s). Prints a table.

* Latency: the sender stamps each TRANSFORM with ``time.monotonic()`` (same host, same
  clock); the consumer thread waits for an update, takes the frame and computes
  ``now - device_time``: send -> decoded -> in the store -> seen by the consumer.
* Throughput: N messages sent back to back; N / (time the last one is visible - first send).
* Same run, same server, side by side with a raw ``pyigtl.OpenIGTLinkClient`` consumed the
  usual way (``wait_for_message``).
* Goal: >= 2,000 poses/s, p99 < 1 ms for OrthoNav's client.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from orthonav.core.transforms import random_rigid
from orthonav.tracking import igtl_protocol as P
from orthonav.tracking.igtl_client import IGTLClientSource
from orthonav.tracking.igtl_server import IGTLServer
from orthonav.tracking.simulator import Ticker

DEVICE = "PointerToTracker"


class OursConsumer:
    def __init__(self, port: int) -> None:
        self.src = IGTLClientSource("127.0.0.1", port)
        self.lat: list[float] = []
        self.last_t = -1.0
        self.done = threading.Event()
        self.seen_final = threading.Event()
        self.final_t = None
        self.final_seen_at = None
        self.hist: list[tuple[float, float]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.src.start()
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            if not self.src.wait_for_update(0.2):
                continue
            f = self.src.latest()
            now = time.monotonic()
            tp = f.tools.get("Pointer")
            if tp is None or not tp.visible or tp.device_time_s == self.last_t:
                continue
            self.last_t = tp.device_time_s
            self.lat.append(now - tp.device_time_s)
            self.hist.append((tp.device_time_s, now))
            if self.final_t is not None and tp.device_time_s >= self.final_t and not self.seen_final.is_set():
                self.final_seen_at = now
                self.seen_final.set()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(2.0)
        self.src.stop()


class PyigtlConsumer:
    def __init__(self, port: int) -> None:
        import pyigtl

        self.client = pyigtl.OpenIGTLinkClient("127.0.0.1", port, start_now=True)
        self.lat: list[float] = []
        self.done = threading.Event()
        self.seen_final = threading.Event()
        self.final_t = None
        self.final_seen_at = None
        self.hist: list[tuple[float, float]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            msg = self.client.wait_for_message(DEVICE, timeout=0.2)
            now = time.monotonic()
            if msg is None:
                continue
            self.lat.append(now - msg.timestamp)
            self.hist.append((msg.timestamp, now))
            if self.final_t is not None and msg.timestamp >= self.final_t and not self.seen_final.is_set():
                self.final_seen_at = now
                self.seen_final.set()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(2.0)
        self.client.stop()


def serve(rate_hz: float | None, n: int) -> None:
    """Sender process: listen, wait for one client, send ``n`` TRANSFORMs stamped with
    ``time.monotonic()`` (system-wide clock on Linux: comparable across processes). At max
    rate it offers far more than any receiver can decode one by one (~300k messages/s)."""
    import struct

    pose = random_rigid(np.random.default_rng(0))
    template = bytearray(P.transform_message(DEVICE, pose, timestamp_s=0.0))
    with IGTLServer(0, max_queue=10_000_000) as server:  # the sender must not drop: measure the receiver
        print(server.port, flush=True)
        if not server.wait_for_clients(1, 30.0):
            return
        ticker = Ticker(rate_hz, threading.Event()) if rate_hz else None
        for i in range(n):
            t = time.monotonic()
            # stamp a prebuilt message (the CRC covers the body only): the sender stays cheap
            struct.pack_into(">II", template, 34, *P.timestamp_to_wire(t))
            server.send_bytes(bytes(template))
            if ticker is not None and i < n - 1:
                ticker.wait_next()
        print(f"{t!r}", flush=True)  # the stamp of the last message
        server.wait_for_clients(2, 1.0)  # (never 2 clients) lets the writer flush before closing


def run_case(client: str, rate_hz: float | None, n: int) -> dict[str, float]:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(rate_hz or 0), str(n)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        consumer = OursConsumer(port) if client == "orthonav" else PyigtlConsumer(port)
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        consumer.start()
        t_start = time.monotonic()
        last_sent = float(proc.stdout.readline())
        final_t = last_sent - 1e-6  # the last message (32.32 fixed point rounds to 0.2 ns)
        consumer.final_t = final_t
        caught_up = None
        deadline = time.monotonic() + 10.0
        while caught_up is None and time.monotonic() < deadline:
            # the consumer may have seen it before final_t was known: look in its history
            caught_up = next((seen for dev_t, seen in list(consumer.hist) if dev_t >= final_t), None)
            if caught_up is None:
                consumer.seen_final.wait(0.05)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        consumer.stop()
    finally:
        proc.wait(10.0)
    lat = np.array(consumer.lat) * 1e3
    return {
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "frames": len(lat),
        "behind_ms": (caught_up - last_sent) * 1e3 if caught_up else float("nan"),
        "cpu": cpu,
        "rate": n / (caught_up - t_start) if caught_up else float("nan"),  # poses received per second
    }


def bench_crc() -> list[tuple[str, float]]:
    rows = []
    small = bytes(48)
    big = bytes(1 << 20)
    for name, fn in (("crcmod (C)", P.crc64), ("table (Python)", P.crc64_python)):
        n = 20000 if fn is P.crc64 else 2000
        t0 = time.perf_counter()
        for _ in range(n):
            fn(small)
        t_small = (time.perf_counter() - t0) / n
        reps = 5 if fn is P.crc64 else 1
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(big)
        t_big = (time.perf_counter() - t0) / reps
        rows.append((name, t_small * 1e6, t_big * 1e3))
    return rows


def bench_aruco() -> tuple[float, float]:
    from orthonav.core.transforms import make_rigid, rotation_about_axis
    from orthonav.tracking.aruco import ArucoTracker, CameraCalibration, render_plate
    from orthonav.tracking.tools import ToolDefinition, ToolSet

    def sq(cx: float, cy: float, s: float) -> list[tuple[float, float, float]]:
        h = s / 2
        return [(cx - h, cy + h, 0.0), (cx + h, cy + h, 0.0), (cx + h, cy - h, 0.0), (cx - h, cy - h, 0.0)]

    k = np.array([[1000.0, 0, 639.5], [0, 1000.0, 359.5], [0, 0, 1]])
    cal = CameraCalibration(k, np.zeros(5), (1280, 720))
    markers = {0: sq(-30, 30, 40), 1: sq(30, 30, 40), 2: sq(30, -30, 40), 3: sq(-30, -30, 40)}
    tracker = ArucoTracker(ToolSet(tools=[ToolDefinition(name="Plate", kind="reference", markers=markers)]), cal)
    pose = make_rigid(np.diag([1.0, -1, -1]) @ rotation_about_axis([1, 1, 0], 0.3), [20, -10, 300])
    img = render_plate(markers, pose, cal)
    times_detect, times_total = [], []
    for _ in range(30):
        t0 = time.perf_counter()
        m = tracker.detect_markers(img)
        t1 = time.perf_counter()
        tracker.estimate(m)
        t2 = time.perf_counter()
        times_detect.append(t1 - t0)
        times_total.append(t2 - t0)
    return float(np.median(times_detect) * 1e3), float(np.median(times_total) * 1e3)


def main() -> None:
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(float(sys.argv[2]) or None, int(sys.argv[3]))
        return
    print("OpenIGTLink TRANSFORM: send (separate process) -> pose available to a consumer thread")
    print(f"{'case':<20}{'client':<10}{'poses/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'frames':>8}{'behind ms':>11}{'CPU':>7}")
    for label, rate, n in (("1 kHz x 5000", 1000.0, 5000), ("5 kHz x 20000", 5000.0, 20000), ("flood x 50000", None, 50000)):
        for client in ("orthonav", "pyigtl"):
            r = run_case(client, rate, n)
            print(f"{label:<20}{client:<10}{r['rate']:>9.0f}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['frames']:>8d}{r['behind_ms']:>11.1f}{100 * r['cpu']:>6.0f}%")
    print("  poses/s: messages sent / time until the consumer had the last one (receive throughput);")
    print("  latency: send -> the consumer sees the pose; frames: distinct poses the consumer saw;")
    print("  behind: time from the last send until the consumer had caught up; CPU: consumer process, one core;")
    print("  flood: the sender offers ~300k msg/s, more than any per-message decoder: latency there is backlog")
    print()
    print(f"{'CRC-64':<16}{'48 B (us)':>11}{'1 MiB (ms)':>12}")
    for name, a, b in bench_crc():
        print(f"{name:<16}{a:>11.2f}{b:>12.2f}")
    print()
    det, tot = bench_aruco()
    print(f"ArUco 1280x720, 4-marker plate: detect {det:.1f} ms, detect + pose {tot:.1f} ms (median of 30)")


if __name__ == "__main__":
    main()
