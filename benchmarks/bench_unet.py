"""U-Net backend acceptance: train on 4 knee phantoms for a few minutes on CPU, test on a fifth.

Issue acceptance: Dice >= 0.90 per bone on the held-out phantom. The five phantoms differ in
seed (noise, intensities), pose (``pose_jitter_deg``) and size (``scale``), so the held-out case
is not a copy of a training case. Prints a table of per-bone Dice and the timings.

    python benchmarks/bench_unet.py [--minutes 5] [--spacing 2.0] [--patch 48] [--channels 12] [--threads 1] [--full]

``--full`` uses the full-resolution phantoms (0.8 mm class voxels) instead of ``small=True``.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--channels", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a busy shared machine)")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="keep the weights file here")
    args = ap.parse_args()
    small = not args.full
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        for seed, scale in TRAIN:
            ph = make_knee_phantom(seed=seed, small=small, scale=scale, pose_jitter_deg=4.0)
            write_phantom_case(ph, root / "data" / f"knee_{seed}", printable=False)
        test = make_knee_phantom(seed=HELD_OUT[0], small=small, scale=HELD_OUT[1], pose_jitter_deg=4.0)
        t_data = time.perf_counter() - t

        t = time.perf_counter()
        weights = train_from_folder(
            root / "data", args.out or root / "unet.pt", minutes=args.minutes, spacing_mm=args.spacing,
            base_channels=args.channels, patch_size=args.patch, seed=0, num_threads=args.threads,
        )  # fmt: skip
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
    tr = model.card.training
    print(f"U-Net: {tr.iterations} iterations in {tr.seconds:.0f} s (final loss {tr.final_loss:.3f}); "
          f"grid {args.spacing} mm, patch {args.patch}^3, {args.channels} base channels; CT {test.ct.array_zyx.shape} "
          f"voxels {np.round(test.ct.spacing_mm, 2).tolist()} mm")  # fmt: skip
    print(f"{'bone':<10} {'Dice':>7} {'target':>7}  pass")
    for name, dice in rows:
        print(f"{name:<10} {dice:7.3f} {0.90:7.2f}  {'yes' if dice >= 0.90 else 'NO'}")
    print(f"{'phantoms':<10} {t_data:7.1f} s")
    print(f"{'training':<10} {t_train:7.1f} s (budget {args.minutes * 60:.0f} s + data reading)")
    print(f"{'inference':<10} {t_infer:7.1f} s")


if __name__ == "__main__":
    main()
