"""Run every benchmark script in this folder, one after another, each printing its own table.

Usage: ``python benchmarks/run_all.py [name ...]`` (names like ``tracking`` select
``bench_tracking.py``); ``--list`` prints what would run and what is excluded, and runs nothing.
Benchmarks print figures; they do not assert (targets are stated in each table and in the
README).

Scripts in :data:`EXCLUDED` are never run from here, even when named: they train a model for
a time budget (``bench_unet.py`` trains a U-Net for 5 minutes by default). Run them by
themselves (``python benchmarks/bench_unet.py --steps N``).
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Benchmark scripts that train or run for many minutes, with the reason: never run by this script.
EXCLUDED: dict[str, str] = {
    "bench_unet.py": "trains a U-Net for its budget (5 min by default); run it by itself: "
                     "python benchmarks/bench_unet.py [--minutes 5 | --steps N]",
    "bench_unet_shipped.py": "segments phantoms, synthetic draws, the shared thorax CT and a 512x512x400 CT with the "
                             "shipped U-Net (several minutes); run it by itself: python benchmarks/bench_unet_shipped.py --quick",
}


def selected(argv: list[str]) -> tuple[list[Path], list[Path]]:
    """(scripts to run, excluded scripts) among ``bench_*.py``, filtered by names in ``argv``."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    return [s for s in scripts if s.name not in EXCLUDED], [s for s in scripts if s.name in EXCLUDED]


def main(argv: list[str]) -> int:
    listing = "--list" in argv
    names = [a for a in argv if a != "--list"]
    unknown = [a for a in names if not (HERE / f"bench_{a}.py").is_file()]
    if unknown:
        print(f"no such benchmark: {', '.join(unknown)} (see: python benchmarks/run_all.py --list)", file=sys.stderr)
        return 2
    scripts, excluded = selected(names)
    if listing:
        for s in scripts:
            print(f"run      {s.name}")
        for s in excluded:
            print(f"excluded {s.name}: {EXCLUDED[s.name]}")
        return 0
    for s in excluded:
        print(f"excluded {s.name}: {EXCLUDED[s.name]}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, Python {platform.python_version()}, "
          f"{__import__('os').cpu_count()} cores")
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"--- {script.name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
