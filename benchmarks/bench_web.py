"""Web view speed (issue 17): pictures per second in a browser, and the tracking loop with and without it. Prints a table.

Run: ``python benchmarks/bench_web.py [--quick]``. Targets (issue 17, item 1):

* the browser's picture updates at >= 15 fps while the tools move;
* the web view never slows the tracking loop: the loop's rate with the view and a browser
  attached stays within 10 % of its rate alone (its receive -> state latency is reported
  beside it).

Set-up: the small knee phantom (``make_phantom_case("knee", small=True)`` with its true bone
surfaces as the case's meshes and an automatic plan, as in tests/test_web_view.py) and its
scripted OR session (:func:`orthonav.phantoms.scenario.knee_scenario`: the pointer digitises
the fiducials and targets, then the saw sweeps and holds) played by
:class:`~orthonav.tracking.simulator.SimulatedSource` at 200 Hz from script time 0, through
:class:`~orthonav.navigation.NavigationLoop` (registration happens live, ~10 s in):

1. the loop alone: states per second and receive -> state latency p50 / p99
   (:meth:`NavigationLoop.stats`);
2. the same with :class:`~orthonav.navigation.web.NavigationWebView` (its defaults: 25 fps at
   most, view process at niceness +5) as the loop's ``on_state`` observer and a headless
   Chromium page showing it;
3. meanwhile, pictures arriving in the browser (a MutationObserver on the picture's ``src``,
   timed by the page's clock) per 1-s window after the first second (median and min: the
   tracker noise changes every state, so every window has moving tools), and the server's push
   rate (pictures pushed by the view process over the run, and its own 2-s rate sampled once a
   second).

The browser is Debian's ``chromium`` driven over the DevTools protocol (websocket, aiohttp),
the way tests/test_web_view.py drives it; without it the benchmark says so and exits 0.
Timings on a shared machine scale with its load, which is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
RATE_HZ = 200.0  #: simulated tracker rate (as in tests/test_web_view.py)
WARM_UP_S = 1.0  #: first browser second not counted (page connecting, first pictures)

#: Page script: record the page-clock time (ms) of every new picture in ``window.__pictures``.
WATCH_PICTURES = """(() => {
  const img = document.querySelector('img');
  if (!img) return false;
  window.__pictures = [];
  new MutationObserver(ms => { for (const m of ms) if (m.attributeName === 'src') window.__pictures.push(performance.now()); })
    .observe(img, {attributes: true});
  return true;
})()"""


class Browser:
    """Headless Chromium, one page, driven over the DevTools protocol (a minimal client)."""

    def __init__(self, width: int = 1000, height: int = 740) -> None:
        import aiohttp

        self._profile = tempfile.mkdtemp(prefix="orthonav-bench-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                      "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                      f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ws_url = None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # chromium says where its DevTools listen once it is up
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                ws_url = m.group(1)
                break
        if ws_url is None:
            self.proc.wait(10)
            shutil.rmtree(self._profile, ignore_errors=True)
            raise RuntimeError("chromium did not start its DevTools endpoint")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep draining its log
        port = int(re.search(r":(\d+)/", ws_url).group(1))  # type: ignore[union-attr]
        self.loop = asyncio.new_event_loop()
        self._id = 0

        async def connect() -> Any:
            self.session = aiohttp.ClientSession()
            async with self.session.put(f"http://127.0.0.1:{port}/json/new?about:blank") as r:
                info = await r.json()
            return await self.session.ws_connect(info["webSocketDebuggerUrl"], max_msg_size=0)

        self.ws = self.loop.run_until_complete(connect())

    def call(self, method: str, **params: Any) -> dict:
        async def call() -> dict:
            self._id += 1
            await self.ws.send_json({"id": self._id, "method": method, "params": params})
            while True:
                msg = await self.ws.receive_json()
                if msg.get("id") == self._id:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]

        return self.loop.run_until_complete(asyncio.wait_for(call(), 30.0))

    def goto(self, url: str, timeout_s: float = 30.0) -> None:
        """Open ``url`` and return once the page's load event fired."""
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

        async def loaded() -> None:
            while (await self.ws.receive_json()).get("method") != "Page.loadEventFired":
                pass

        self.loop.run_until_complete(asyncio.wait_for(loaded(), timeout_s))

    def eval(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Evaluate ``expression`` every 0.1 s until it is truthy; its value (RuntimeError on timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            self.loop.run_until_complete(asyncio.sleep(0.1))  # between DevTools polls of the page
        raise RuntimeError(f"the page did not satisfy {expression[:60]!r}... within {timeout_s:g} s")

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.session.close())
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.loop.close()
            shutil.rmtree(self._profile, ignore_errors=True)


def build_case(root: Path) -> Path:
    """The small knee phantom as a navigable case (true surfaces as meshes and labels, auto plan)."""
    from orthonav.phantoms.synthetic import make_phantom_case
    from orthonav.planning.auto import auto_plan

    case = make_phantom_case("knee", root / "knee", seed=0, small=True).root
    (case / "meshes").mkdir(exist_ok=True)
    for f in (case / "truth" / "meshes").glob("*.stl"):
        shutil.copy(f, case / "meshes" / f.name)
    for f in ("labels.nii.gz", "labels.json"):
        shutil.copy(case / "truth" / f, case / f)
    auto_plan(case)
    return case


def run_loop(sc: Any, inputs: Any, seconds: float, observer: Any = None, each_second: Any = None) -> tuple[Any, list]:
    """The scripted session through a live :class:`NavigationLoop` for ``seconds``: (LoopStats,
    values of ``each_second(loop)`` sampled once a second meanwhile)."""
    from orthonav.navigation.loop import NavigationLoop
    from orthonav.navigation.workflow import Workflow
    from orthonav.tracking.simulator import SimulatedSource

    wf = Workflow(inputs.context, inputs.fiducial_names, inputs.fiducials_ct_mm)
    src = SimulatedSource(sc.script, rate_hz=RATE_HZ, tools=sc.toolset, seed=1)
    loop = NavigationLoop(src, wf, on_state=observer)
    samples: list = []
    # The measuring thread waits on an Event nobody sets (a timed wait): nothing to wait for but time.
    idle = threading.Event()
    src.start()
    loop.start()
    try:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            idle.wait(min(1.0, left))
            if each_second is not None:
                samples.append(each_second(loop))
    finally:
        loop.stop()
        src.stop()
    return loop.stats(), samples


def registered(loop: Any) -> bool:
    """True once the loop's newest state is past registration (the bones then show the TRE map)."""
    state = loop.latest_state()
    return state is not None and state.reason != "not registered"


def per_window(times_s: np.ndarray, t0: float, t1: float) -> list[int]:
    """Counts of ``times_s`` in consecutive whole 1-s windows from ``t0`` up to ``t1``."""
    return [int(((times_s >= a) & (times_s < a + 1.0)).sum()) for a in np.arange(t0, t1 - 1.0 + 1e-9, 1.0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (12 s of the session each instead of 20 s)")
    args = ap.parse_args(argv)
    if CHROMIUM is None:
        print("bench_web: skipped: chromium is not installed (Debian: apt-get install chromium); nothing measured")
        return 0
    seconds = 12.0 if args.quick else 20.0
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    from orthonav.navigation import load_navigation_inputs
    from orthonav.navigation.web import NavigationWebView
    from orthonav.phantoms.scenario import knee_scenario

    rows = []
    with tempfile.TemporaryDirectory(prefix="orthonav-bench-web-") as d:
        case = build_case(Path(d))
        sc = knee_scenario(case, seed=5)
        inputs = load_navigation_inputs(case, sc.toolset)

        alone, _ = run_loop(sc, inputs, seconds)

        view = NavigationWebView(case, toolset=sc.toolset).start()
        browser = None
        try:
            browser = Browser()
            browser.goto(view.url)
            browser.wait_for(WATCH_PICTURES, timeout_s=60.0)  # the page built its picture element
            base = view.stats.get("frames_pushed", 0.0)
            page_t0 = browser.eval("performance.now()") / 1e3
            w0 = time.monotonic()
            observe, cost = view.observe, []

            def timed(state: Any, wf: Any) -> None:  # the tracking thread's cost of the web view
                t = time.perf_counter()
                observe(state, wf)
                cost.append(time.perf_counter() - t)

            with_view, pushes = run_loop(sc, inputs, seconds, observer=timed,
                                         each_second=lambda loop: (view.stats.get("rate_hz", 0.0), view.stats.get("frames_pushed", 0.0),
                                                                   time.monotonic() - w0, registered(loop)))
            wall = time.monotonic() - w0
            page_t1 = browser.eval("performance.now()") / 1e3
            pictures = np.asarray(browser.eval("window.__pictures") or [], dtype=float) / 1e3
            # The view process reports its figures every 0.5 s: wait for a report after the run.
            last = view.wait_for_stats(lambda s: True, 2.0) or view.stats
            offered, sent = view.states_offered, view.states_sent
        finally:
            if browser is not None:
                browser.close()
            view.stop()

    windows = per_window(pictures, page_t0 + WARM_UP_S, page_t1)
    # Registration time on the page clock, to 1 s (the first once-a-second sample that saw it).
    t_reg = next((p[2] for p in pushes if p[3]), None)
    split = "never registered"
    if t_reg is not None:
        before = per_window(pictures, page_t0 + WARM_UP_S, min(page_t1, page_t0 + t_reg - 1.0))
        after = per_window(pictures, page_t0 + t_reg, page_t1)
        split = (f"before registration median {np.median(before) if before else float('nan'):.0f} ({len(before)} windows), "
                 f"after (TRE map) median {np.median(after) if after else float('nan'):.0f} / min "
                 f"{min(after) if after else float('nan')} ({len(after)} windows, registered by t = {t_reg:.0f} s)")
    pushed = (pushes[-1][1] if pushes else last.get("frames_pushed", 0.0)) - base
    server_rates = [p[0] for p in pushes[int(WARM_UP_S) + 1:]] or [p[0] for p in pushes]
    in_browser = pictures[(pictures >= page_t0 + WARM_UP_S) & (pictures < page_t1)]
    rows.append(("browser pictures per second (median of 1-s windows)", f"{np.median(windows):.1f} fps" if windows else "n/a",
                 ">= 15 fps", (f"min {min(windows)}, max {max(windows)} over {len(windows)} windows; "
                               f"{len(in_browser) / max(page_t1 - page_t0 - WARM_UP_S, 1e-9):.1f} fps mean after the first second; {split}"
                               if windows else "no whole 1-s window")))
    rows.append(("  server push rate", f"{pushed / wall:.1f} fps", "(info)",
                 (f"{pushed:.0f} pictures pushed in {wall:.1f} s; view's own 2-s rate median {np.median(server_rates):.1f}, "
                  f"min {min(server_rates):.1f} fps; {offered} states offered, {sent} sent to the view process "
                  f"({last.get('frames_dropped', 0):.0f} waits for a slow browser)" if server_rates else "no sample")))
    rows.append((f"tracking loop alone @{RATE_HZ:.0f} Hz", f"{alone.rate_hz:.1f} states/s", "(baseline)",
                 f"receive -> state p50 {alone.latency_p50_ms:.2f} / p99 {alone.latency_p99_ms:.2f} / max {alone.latency_max_ms:.1f} ms; "
                 f"{alone.states} states in {alone.duration_s:.1f} s"))
    rows.append(("  with web view + browser", f"{with_view.rate_hz:.1f} states/s", f">= {0.9 * alone.rate_hz:.1f} (90 %)",
                 f"receive -> state p50 {with_view.latency_p50_ms:.2f} / p99 {with_view.latency_p99_ms:.2f} / max "
                 f"{with_view.latency_max_ms:.1f} ms; {with_view.states} states in {with_view.duration_s:.1f} s; "
                 f"{with_view.rate_hz / alone.rate_hz:.1%} of alone"))
    if cost:
        rows.append(("  web view's cost on the tracking thread", f"p99 {np.percentile(cost, 99) * 1e3:.3f} ms", "< 0.2 ms (a store)",
                     f"p50 {np.median(cost) * 1e3:.4f} / max {max(cost) * 1e3:.2f} ms over {len(cost)} states"))
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load0:.1f} before / {load1:.1f} after (figures scale with the load on a shared machine)")
    print(f"small knee phantom, scripted session from t = 0 for {seconds:g} s per run, Chromium {Path(CHROMIUM).name} headless, 1000x740")
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
