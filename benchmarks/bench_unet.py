"""U-Net backend acceptance: train on 4 knee phantoms for a few minutes on CPU, test on a fifth.

Issue acceptance: Dice >= 0.90 per bone on the held-out phantom. The five phantoms differ in
seed (noise, intensities), pose (``pose_jitter_deg``) and size (``scale``), so the held-out case
is not a copy of a training case. Dice is computed on the held-out CT's own grid (the labels
``segment_unet`` returns) against the phantom's truth labels on that grid.

Prints the per-bone Dice table, the training budget in optimizer steps (independent of the
machine's load), wall and CPU time, and the load average (the machine is shared: CPU seconds
per step rise with the load too, as threads wait on each other).

    python benchmarks/bench_unet.py [--minutes 5 | --steps N] [--threads 2] [--spacing MM]
                                    [--patch P] [--channels C] [--batch B] [--full]

Network settings default to :func:`orthonav.segmentation.unet.train_from_folder`'s.
``--steps N`` trains exactly N steps (whatever the time); ``--full`` uses the full-resolution
phantoms (0.8 mm class voxels) instead of ``small=True``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from orthonav.phantoms.knee import make_knee_phantom
from orthonav.phantoms.synthetic import write_phantom_case
from orthonav.segmentation.unet import load_model, segment_unet, train_from_folder

#: (seed, scale) of the training phantoms and the held-out one.
TRAIN = [(11, 0.95), (12, 1.0), (13, 1.05), (14, 0.9)]
HELD_OUT = (15, 1.02)
TARGET_DICE = 0.90


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training wall-clock budget")
    ap.add_argument("--steps", type=int, default=None, help="train exactly this many optimizer steps instead")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 can be faster on a busy shared machine)")
    ap.add_argument("--spacing", type=float, default=None, help="network grid (mm)")
    ap.add_argument("--patch", type=int, default=None)
    ap.add_argument("--channels", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="keep the weights file here")
    args = ap.parse_args()
    small = not args.full
    options = {k: v for k, v in (("spacing_mm", args.spacing), ("patch_size", args.patch), ("base_channels", args.channels), ("batch_size", args.batch)) if v is not None}
    if args.steps is not None:
        options.update(minutes=1e-6, min_iterations=args.steps)
    else:
        options.update(minutes=args.minutes)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        for seed, scale in TRAIN:
            ph = make_knee_phantom(seed=seed, small=small, scale=scale, pose_jitter_deg=4.0)
            write_phantom_case(ph, root / "data" / f"knee_{seed}", printable=False)
        test = make_knee_phantom(seed=HELD_OUT[0], small=small, scale=HELD_OUT[1], pose_jitter_deg=4.0)
        t_data = time.perf_counter() - t

        t = time.perf_counter()
        weights = train_from_folder(root / "data", args.out or root / "unet.pt", seed=0, num_threads=args.threads, **options)
        t_train = time.perf_counter() - t
        model = load_model(weights)

        t = time.perf_counter()
        seg = segment_unet(test.ct, model, num_threads=args.threads)
        t_infer = time.perf_counter() - t

    truth, pred = test.labels.array_zyx, seg.labels.array_zyx
    rows = []
    for v, name in seg.table.labels.items():
        a, b = pred == v, truth == test.label_table.value_of(name)
        dice = 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)
        rows.append((name, dice))
    card, tr = model.card, model.card.training
    arch = card.architecture
    print(f"U-Net {arch.levels} levels, {arch.base_channels} base channels, patch {arch.patch_size}^3 at {card.spacing_mm} mm, "
          f"batch {tr.batch_size}; held-out CT {test.ct.array_zyx.shape} voxels of {np.round(test.ct.spacing_mm, 2).tolist()} mm")  # fmt: skip
    print(f"{'bone':<10} {'Dice':>7} {'target':>7}  pass")
    for name, dice in rows:
        print(f"{name:<10} {dice:7.3f} {TARGET_DICE:7.2f}  {'yes' if dice >= TARGET_DICE else 'NO'}")
    print(f"{'training':<10} {tr.iterations} optimizer steps, {tr.seconds:.0f} s wall ({tr.seconds / 60:.1f} min, "
          f"{tr.seconds / max(tr.iterations, 1):.2f} s/step), {tr.cpu_seconds:.0f} s CPU, {tr.num_threads} threads; "
          f"final loss {tr.final_loss:.3f}")  # fmt: skip
    print(f"{'load avg':<10} {load_before:.2f} before, {tr.load_average:.2f} at the end of training (2 cores)")
    print(f"{'phantoms':<10} {t_data:7.1f} s")
    print(f"{'train+io':<10} {t_train:7.1f} s (reading and resampling the 4 cases + the optimisation loop)")
    print(f"{'inference':<10} {t_infer:7.1f} s")


if __name__ == "__main__":
    main()
