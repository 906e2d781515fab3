"""Benchmark: the classical segmentation end to end on random fields of view, counted by name.

Draws ``--draws`` fields of view (:func:`orthonav.phantoms.fov.random_fov`: knee, hip and
whole-leg windows, orientations, tables, metal; the scenario cycles knee, hip, whole leg, knee)
from the small knee and hip phantoms (``--full``: the full-size ones) at ``--spacing`` mm, resamples their CT, runs
``segment_classical(anatomy="auto")`` (or, with ``--backend unet``, the shipped U-Net) and judges
each label against the truth it holds:

- *named*: a name; a **misname** when every truth bone making up >= 30 % of the label is another
  bone or the other side (a label holding two bones, a segmentation error, may be named after
  either; an unsuffixed name with no side is judged on the bone alone). Names below the
  naming's confidence level (0.8; the U-Net keeps those, with a warning) are counted apart;
- *withheld*: ``bone_N``.

Prints one line per draw and a table. The test suite runs 8 such draws at 2.8-3 mm
(``test_seg_naming.py``); this runs as many as asked.

Run: ``python benchmarks/bench_naming_e2e.py [--draws 40] [--seed 7] [--spacing 2.5 3.0] [--backend unet]
[--scenario hip] [--full] [--weights W.pt]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def judge(name: str, side: str | None, held: list[str]) -> bool:
    """True when the confident ``name`` is none of the ``held`` truth names (a misname)."""
    sideless = name == "sacrum" or name.startswith("vertebrae")  # midline bones carry no side
    claimed = name if name.endswith(("_left", "_right")) or side is None or sideless else f"{name}_{side}"
    for truth in held:
        if truth in ("table", "metal"):
            continue
        if claimed == truth:
            return False
        if claimed == name and not name.endswith(("_left", "_right")) and truth.split("_")[0] == name:
            return False  # no side claimed: judged on the bone
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--spacing", type=float, nargs=2, default=(2.5, 3.0), metavar=("LO", "HI"))
    ap.add_argument("--backend", choices=("classical", "unet"), default="classical")
    ap.add_argument("--scenario", choices=("cycle", "knee", "hip", "whole_leg"), default="cycle",
                    help="one scenario for every draw (default: knee, hip, whole leg, knee in turn)")
    ap.add_argument("--full", action="store_true",
                    help="draw from the full-size phantoms (finer voxels, narrower joints) instead of the small ones")
    ap.add_argument("--weights", default=None, help="--backend unet: a weights file (default: the shipped model)")
    args = ap.parse_args()

    from orthonav.core.errors import InputError
    from orthonav.phantoms.fov import apply_fov, random_fov
    from orthonav.phantoms.hip import make_hip_phantom
    from orthonav.phantoms.knee import make_knee_phantom
    from orthonav.segmentation.classical import segment_classical
    from orthonav.segmentation.unet import load_model, segment_unet

    model = load_model(args.weights) if args.backend == "unet" and args.weights else None

    def segment(ct):
        return segment_unet(ct, model) if args.backend == "unet" else segment_classical(ct, anatomy="auto")

    knee, hip = make_knee_phantom(seed=0, small=not args.full), make_hip_phantom(seed=0, small=not args.full)
    rng = np.random.default_rng(args.seed)
    from orthonav.segmentation.naming import CONFIDENT

    totals = {"named": 0, "withheld": 0, "misnamed": 0, "draws with a misname": 0, "named below 0.8": 0, "misnamed below 0.8": 0, "refused": 0}
    t0 = time.perf_counter()
    for d in range(args.draws):
        scenario = ("knee", "hip", "whole_leg", "knee")[d % 4] if args.scenario == "cycle" else args.scenario
        spec = random_fov(rng, scenario, spacing_mm=tuple(args.spacing))
        case = apply_fov(hip if scenario == "hip" else knee, spec, with_ct=True)
        try:
            seg = segment(case.ct)
        except InputError as e:
            totals["refused"] += 1
            print(f"{d:3d} {scenario:9s} {spec.label:18s} refused: {e}")
            continue
        pred, truth = seg.labels.array_zyx, case.labels.array_zyx
        words, bad = [], 0
        for v, name in seg.table.labels.items():
            if name.startswith("bone_"):
                totals["withheld"] += 1
                continue
            counts = np.bincount(truth[pred == v], minlength=256)
            counts[0] = 0
            held = [case.names[int(t)] for t in np.flatnonzero(counts >= 0.3 * max(counts.sum(), 1)) if int(t) in case.names]
            sure = seg.table.confidence.get(v, 1.0) >= CONFIDENT
            totals["named" if sure else "named below 0.8"] += 1
            wrong = judge(name, seg.table.side, held)
            if wrong and sure:
                bad += 1
                words.append(f"{name}!!(holds {'/'.join(held)})")
            elif wrong:
                totals["misnamed below 0.8"] += 1
                words.append(f"{name}?(holds {'/'.join(held) or 'no one bone'}; confidence {seg.table.confidence.get(v, 0.0):.2f})")
            else:
                words.append(name if sure else f"{name}?")
        totals["misnamed"] += bad
        totals["draws with a misname"] += bad > 0
        n_withheld = sum(n.startswith("bone_") for n in seg.table.labels.values())
        print(f"{d:3d} {scenario:9s} {spec.label:18s} {' '.join(sorted(words)) or '-'} (+{n_withheld} withheld)", flush=True)
    print()
    print(f"{'draws':24s} {args.draws} (seed {args.seed}, {args.spacing[0]}-{args.spacing[1]} mm, {args.backend}, "
          f"{'full-size' if args.full else 'small'} phantoms, scenario {args.scenario})")
    for k, v in totals.items():
        print(f"{k:24s} {v}")
    print(f"{'wall':24s} {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
