"""Benchmark: importing a three-stack lower-limb study (hip, knee, ankle DICOM series) into one case.

The study is written by :func:`orthonav.phantoms.study.write_lower_limb_study` from the knee
phantom (``--small``: 1.2 x 1.2 x 2.4 mm knee stack; full size: 0.9 x 0.9 x 2.0 mm, or any
``--spacing`` of the phantom). The import (reading and checking the three series, resampling
onto one grid with the coverage mask, writing ``ct.nii.gz``, ``scanned.nii.gz``, ``import.json``)
and, with ``--segment``, the classical segmentation run in fresh child processes so their peak
resident memory (``ru_maxrss``) is their own. The machine may be shared: CPU time and the load
average are printed beside the wall time.

Run: ``python benchmarks/bench_import_stacks.py [--small] [--spacing 0.8 0.8 1.0] [--segment] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD_STUDY = r"""
import json, sys, time
from orthonav.phantoms.study import write_lower_limb_study
knobs = json.loads(sys.argv[3])
if "spacing_mm" in knobs:
    knobs["spacing_mm"] = tuple(knobs["spacing_mm"])
t = time.perf_counter()
study = write_lower_limb_study(sys.argv[1], seed=0, small=sys.argv[2] == "1", **knobs)
print(json.dumps({"wall_s": time.perf_counter() - t, "dicom": str(study.dicom_dir),
                  "stacks": [[st.spec.name, list(st.volume.shape_ijk), [float(x) for x in st.volume.spacing_mm]] for st in study.stacks]}))
"""

CHILD_IMPORT = r"""
import json, resource, sys, time
from orthonav.segmentation.importer import import_ct
t = time.perf_counter(); c = time.process_time()
s = import_ct(sys.argv[1], sys.argv[2])
r = s.record
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "grid": r.grid_shape_ijk, "spacing": r.grid_spacing_mm[0], "scanned": r.scanned_fraction}))
"""

CHILD_SEGMENT = r"""
import json, resource, sys, time
from orthonav.segmentation.pipeline import segment_case
t = time.perf_counter(); c = time.process_time()
s = segment_case(sys.argv[1], mesh_formats=())
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "bones": {n: round(b.volume_ml, 1) for n, b in s.bones.items()}}))
"""


def _child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="the small knee phantom (tests)")
    ap.add_argument("--spacing", type=float, nargs=3, metavar="MM", help="phantom voxel size (knee stack), e.g. 0.8 0.8 1.0")
    ap.add_argument("--segment", action="store_true", help="also time the classical segmentation of the imported case")
    ap.add_argument("--keep", type=Path, help="write the study here (kept) instead of a temporary folder")
    a = ap.parse_args()

    # Every step runs in a child, so this process stays small: a child's ru_maxrss counts the
    # memory of the process it was forked from (Linux keeps it across execve).
    tmp = tempfile.TemporaryDirectory() if a.keep is None else None
    root = Path(tmp.name if tmp else a.keep) / "study"
    knobs = {"spacing_mm": list(a.spacing)} if a.spacing else {}
    study = _child(CHILD_STUDY, str(root), "1" if a.small else "0", json.dumps(knobs))
    load0 = os.getloadavg()[0]
    imp = _child(CHILD_IMPORT, study["dicom"], str(root))
    seg = _child(CHILD_SEGMENT, str(root)) if a.segment else None
    load1 = os.getloadavg()[0]

    print(f"| study ({'small' if a.small else 'full size'}) | value |")
    print("|---|---|")
    for name, shape, sp in study["stacks"]:
        print(f"| {name} stack | {' x '.join(str(n) for n in shape)} voxels, {sp[0]:.2f} x {sp[1]:.2f} x {sp[2]:.2f} mm |")
    print(f"| phantom + study written | {study['wall_s']:.1f} s |")
    grid = " x ".join(str(n) for n in imp["grid"])
    print(f"| combined grid | {grid} = {imp['grid'][0] * imp['grid'][1] * imp['grid'][2] / 1e6:.1f} M voxels at {imp['spacing']:.2f} mm, "
          f"{imp['scanned']:.0%} scanned |")
    print(f"| import (wall / CPU / peak RSS) | {imp['wall_s']:.1f} s / {imp['cpu_s']:.1f} s / {imp['peak_mb']:.0f} MB |")
    if seg is not None:
        print(f"| classical segmentation, no meshes (wall / CPU / peak RSS) | {seg['wall_s']:.1f} s / {seg['cpu_s']:.1f} s / {seg['peak_mb']:.0f} MB |")
        print(f"| bones (mL) | {seg['bones']} |")
    print(f"| load average before / after | {load0:.1f} / {load1:.1f} ({os.cpu_count()} CPUs) |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
