"""Where the classical backend puts a resolved cortex's surface: bias against the true surface.

The outer layer of a resolved cortex is kept where its HU reaches ``edge_fraction`` of the way
from the soft tissue to the local cortical peak (``ClassicalParams.edge_fraction``, default 0.5:
the half maximum). That is the surface of a blurred edge much thicker than the blur; a thinner
cortex peaks lower and its surface lies higher up its profile, so there the half maximum is
outwards (Prevrhal et al. 1999, Phys Med Biol 44:751). This prints, for each fraction:

* on phantoms with an analytic surface (full-size knee seed 0 and hip seed 0, small knee seed 3
  and small hip seed 1): per bone, the signed distance of the mesh's vertices to the true surface
  (mean, outwards positive; mean of its absolute value; 5th and 95th percentiles), the Dice and
  the false-positive / false-negative bone voxels against the construction truth;
* on the real ``ct_abdomen_dicom`` (when ``../shared/data`` is present; no reference exists): the
  share of the osteoporotic vertebral body's core that is labelled (the box of
  ``tests/test_seg_realct.py``) and the voxels labelled as vertebra, since a higher fraction
  peels a thin cortex through and loses the cancellous body behind it.

    python benchmarks/bench_surface_bias.py [--fractions 0.5 0.6] [--keep-crest] [--quick]

``--keep-crest``: with ``ClassicalParams.peel_keeps_crest`` (a voxel is peeled only if the bone
one voxel further in is brighter). ``--quick``: only the full knee phantom and the abdominal CT.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from orthonav.phantoms.hip import make_hip_phantom
from orthonav.phantoms.knee import make_knee_phantom
from orthonav.segmentation.classical import ClassicalParams, segment_classical
from orthonav.segmentation.meshing import label_meshes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: (name, factory, knobs) of the phantoms scored.
PHANTOMS = [
    ("knee full s0", make_knee_phantom, dict(seed=0)),
    ("hip full s0", make_hip_phantom, dict(seed=0)),
    ("knee small s3", make_knee_phantom, dict(seed=3, small=True)),
    ("hip small s1", make_hip_phantom, dict(seed=1, small=True)),
]
#: The vertebral body's core in ``ct_abdomen_dicom`` (k, j, i): between its end plates, 20 x 29 mm
#: at its centre (read off the images; ``tests/test_seg_realct.py``).
ABDOMEN_CORE = (slice(4, 15), slice(322, 342), slice(238, 268))


def phantom_rows(name: str, factory, knobs: dict, fractions: list[float], crest: bool) -> list[list[str]]:
    """One row per (fraction, bone): signed mesh distance figures, Dice, FP / FN voxels."""
    ph = factory(**knobs)
    truth = ph.labels.array_zyx
    rows = []
    for f in fractions:
        t0 = time.perf_counter()
        seg = segment_classical(ph.ct, anatomy="auto", params=ClassicalParams(edge_fraction=f, peel_keeps_crest=crest))
        secs = time.perf_counter() - t0
        ours = seg.labels.array_zyx
        meshes = label_meshes(seg.labels, seg.table)
        for value, bone in sorted(seg.table.labels.items(), key=lambda x: x[1]):
            if bone not in ph.bones or bone not in meshes:
                rows.append([name, f"{f:.2f}", bone, "(not a phantom bone)", "", "", "", "", ""])
                continue
            t_val = next(v for v, n in ph.label_table.labels.items() if n == bone)
            a, b = ours == value, truth == t_val
            d = ph.signed_distance_mm(bone, np.asarray(meshes[bone].points))
            dice = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
            p5, p95 = np.percentile(d, [5, 95])
            rows.append([name, f"{f:.2f}", bone, f"{d.mean():+.3f}", f"{np.abs(d).mean():.3f}", f"{p5:+.2f} / {p95:+.2f}",
                         f"{dice:.4f}", f"{int((a & ~b).sum())} / {int((b & ~a).sum())}", f"{secs:.0f} s"])
    return rows


def abdomen_rows(fractions: list[float], crest: bool) -> list[list[str]]:
    """The real abdominal CT: the vertebral body's core labelled, and the vertebra's voxels."""
    from orthonav.segmentation.importer import read_dicom_ct

    folder = SHARED / "ct_abdomen_dicom"
    if not folder.is_dir():
        return [["ct_abdomen_dicom", "", "(not found: ../shared/data is absent)", "", "", "", "", "", ""]]
    ct = read_dicom_ct(folder)
    rows = []
    for f in fractions:
        t0 = time.perf_counter()
        seg = segment_classical(ct, params=ClassicalParams(edge_fraction=f, peel_keeps_crest=crest))
        secs = time.perf_counter() - t0
        lab = seg.labels.array_zyx
        vert = [v for v, n in seg.table.labels.items() if n.startswith("vertebrae")]
        core = float((lab[ABDOMEN_CORE] > 0).mean())
        rows.append(["ct_abdomen_dicom", f"{f:.2f}", "vertebral body core labelled", f"{core:.3f}", "", "",
                     f"vertebra {int(np.isin(lab, vert).sum())} voxels", "", f"{secs:.0f} s"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.6])
    ap.add_argument("--keep-crest", action="store_true", help="peel only voxels with brighter bone one voxel further in")
    ap.add_argument("--quick", action="store_true", help="only the full knee phantom and the abdominal CT")
    args = ap.parse_args()
    head = ["case", "fraction", "bone", "signed mean mm", "|d| mean mm", "p5 / p95 mm", "Dice", "FP / FN voxels", "segment"]
    rows: list[list[str]] = []
    for name, factory, knobs in PHANTOMS[:1] if args.quick else PHANTOMS:
        rows += phantom_rows(name, factory, knobs, args.fractions, args.keep_crest)
    rows += abdomen_rows(args.fractions, args.keep_crest)
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"crest kept: {args.keep_crest}")
    print("signed distance: mesh vertices to the analytic surface, outwards positive; truth: voxel centres inside the bone")


if __name__ == "__main__":
    main()
