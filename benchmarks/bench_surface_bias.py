"""Where the classical backend puts a resolved cortex's surface: bias against the true surface.

The outer layer of a resolved cortex is kept where its HU reaches a fraction of the way from the
soft tissue to the local cortical peak. Half-way (the half maximum) is the surface of a blurred
cortex much thicker than the blur; a thinner cortex peaks lower and its surface lies higher up
its profile, so there the half maximum is outwards (Prevrhal et al. 1999, Phys Med Biol
44:751). This compares the settings of ``ClassicalParams``:

* ``half maximum``: ``edge_fraction=0.5, peel_keeps_crest=False`` (the default until 2026-12-06);
* ``thin-cortex model``: the default (``edge_fraction=None, peel_keeps_crest=True``): the
  fraction from the local peak's depression against the image's thick cortex
  (``classical.edge_fraction_of``, 0.5 to 0.6), the crest never peeled;
* ``--fractions F ...``: a fixed fraction each, the crest kept (``--no-crest``: not kept).

For each: on phantoms with an analytic surface (full-size knee seed 0 and hip seed 0, small knee
seed 3 and small hip seed 1), per bone, the signed distance of the mesh's vertices to the true
surface (mean, outwards positive; mean of its absolute value; 5th and 95th percentiles), the Dice
and the false-positive / false-negative bone voxels against the construction truth; on the real
``ct_abdomen_dicom`` (when ``../shared/data`` is present; no reference exists), the share of the
osteoporotic vertebral body's core that is labelled (the box of ``tests/test_seg_realct.py``) and
the voxels labelled as vertebra: a higher fraction can peel a thin cortex through and lose the
cancellous body behind it.

    python benchmarks/bench_surface_bias.py [--fractions 0.6] [--no-crest] [--quick]

``--quick``: only the full knee phantom and the abdominal CT.
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


def phantom_rows(name: str, factory, knobs: dict, settings: list[tuple[str, ClassicalParams]]) -> list[list[str]]:
    """One row per (fraction, bone): signed mesh distance figures, Dice, FP / FN voxels."""
    ph = factory(**knobs)
    truth = ph.labels.array_zyx
    rows = []
    for f, params in settings:
        t0 = time.perf_counter()
        seg = segment_classical(ph.ct, anatomy="auto", params=params)
        secs = time.perf_counter() - t0
        ours = seg.labels.array_zyx
        meshes = label_meshes(seg.labels, seg.table)
        for value, bone in sorted(seg.table.labels.items(), key=lambda x: x[1]):
            if bone not in ph.bones or bone not in meshes:
                rows.append([name, f, bone, "(not a phantom bone)", "", "", "", "", ""])
                continue
            t_val = next(v for v, n in ph.label_table.labels.items() if n == bone)
            a, b = ours == value, truth == t_val
            d = ph.signed_distance_mm(bone, np.asarray(meshes[bone].points))
            dice = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
            p5, p95 = np.percentile(d, [5, 95])
            rows.append([name, f, bone, f"{d.mean():+.3f}", f"{np.abs(d).mean():.3f}", f"{p5:+.2f} / {p95:+.2f}",
                         f"{dice:.4f}", f"{int((a & ~b).sum())} / {int((b & ~a).sum())}", f"{secs:.0f} s"])
    return rows


def abdomen_rows(settings: list[tuple[str, ClassicalParams]]) -> list[list[str]]:
    """The real abdominal CT: the vertebral body's core labelled, and the vertebra's voxels."""
    from orthonav.segmentation.importer import read_dicom_ct

    folder = SHARED / "ct_abdomen_dicom"
    if not folder.is_dir():
        return [["ct_abdomen_dicom", "", "(not found: ../shared/data is absent)", "", "", "", "", "", ""]]
    ct = read_dicom_ct(folder)
    rows = []
    for f, params in settings:
        t0 = time.perf_counter()
        seg = segment_classical(ct, params=params)
        secs = time.perf_counter() - t0
        lab = seg.labels.array_zyx
        vert = [v for v, n in seg.table.labels.items() if n.startswith("vertebrae")]
        core = float((lab[ABDOMEN_CORE] > 0).mean())
        rows.append(["ct_abdomen_dicom", f, "vertebral body core labelled", f"{core:.3f}", "", "",
                     f"vertebra {int(np.isin(lab, vert).sum())} voxels", "", f"{secs:.0f} s"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", type=float, nargs="*", default=[], help="fixed edge fractions to compare as well")
    ap.add_argument("--no-crest", action="store_true", help="with --fractions: peel the crest too")
    ap.add_argument("--quick", action="store_true", help="only the full knee phantom and the abdominal CT")
    args = ap.parse_args()
    settings = [("half maximum", ClassicalParams(edge_fraction=0.5, peel_keeps_crest=False)), ("thin-cortex model", ClassicalParams())]
    settings += [(f"{f:.2f}" + ("" if args.no_crest else " + crest"), ClassicalParams(edge_fraction=f, peel_keeps_crest=not args.no_crest)) for f in args.fractions]
    head = ["case", "setting", "bone", "signed mean mm", "|d| mean mm", "p5 / p95 mm", "Dice", "FP / FN voxels", "segment"]
    rows: list[list[str]] = []
    for name, factory, knobs in PHANTOMS[:1] if args.quick else PHANTOMS:
        rows += phantom_rows(name, factory, knobs, settings)
    rows += abdomen_rows(settings)
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("signed distance: mesh vertices to the analytic surface, outwards positive; truth: voxel centres inside the bone")


if __name__ == "__main__":
    main()
