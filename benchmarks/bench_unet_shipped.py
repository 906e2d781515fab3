"""The shipped bone U-Net (segmentation/models/bone_unet.pt): accuracy, calibration, speed.

Modes (``--mode``, several allowed; default all but ``speed``):

* ``phantoms``: Dice per bone on unseen phantom cases (knee, hip, long bone; seeds, scales and
  poses never used in training: the training draws all come from the seed-0 phantoms), matched
  by name, so the naming is scored too (a misnamed bone scores 0).
* ``draws``: Dice per class on unseen synthetic draws (``phantoms.synth_ct``, ``--draws-seed``,
  default 2000; training used seed 0, calibration seed 10000).
* ``calibration``: expected calibration error (ECE, 15 equal-width bins; Guo et al. 2017) of the
  final labels' per-voxel confidence on the phantoms and draws above, three ways: the softmax
  (T = 1), temperature-scaled (the card's T) and as shipped (T and the card's confidence map,
  fitted on the seed-10000 draws), over the voxels near bone (true or predicted bone dilated by
  two voxels: background far from bone, right at confidence ~1, would swamp the figure);
  writes the reliability diagram ``docs/img/unet_reliability.png``.
* ``real-shapes``: synthetic CTs of the real bone surfaces (``phantoms.real_shapes``: the VHF
  knee and libhip femurs in ``--shapes``; ``--real-draws`` draws of the ``real`` family only,
  ``--real-seed``), this model and the classical backend beside it: bone-mask Dice, Dice per
  class with each label matched by overlap, and the names (right, wrong, withheld).
* ``real-knee``: as ``real-shapes`` on the VHF knee completed by the knee phantom's femur,
  fitted to the set's distal-femoral cartilage (``phantoms.real_knee``): real tibia, fibula and
  patella shapes with a knee joint in view, as a knee CT shows them.
* ``thorax``: bone-mask Dice on the shared thorax CT (``../shared/data/ct_thorax_small``)
  against its reference vertebrae + ribs, and the names given (the model has no vertebra or rib
  class: every piece should stay an unnamed ``bone_<n>``).
* ``speed``: inference time (network, test-time flip, calibration, refinement, naming) on a
  512 x 512 x 400 CT (a knee phantom resampled to 0.8 x 0.8 x 1.0 mm and padded with soft tissue):
  wall and CPU seconds per step, windows run, load average, and Dice per bone on that CT.

    python benchmarks/bench_unet_shipped.py [--mode phantoms draws calibration real-shapes real-knee thorax speed] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from orthonav.core.volume import Volume, read_volume
from orthonav.phantoms.hip import make_hip_phantom
from orthonav.phantoms.knee import make_knee_phantom
from orthonav.phantoms.long_bone import make_long_bone_phantom
from orthonav.phantoms.synth_ct import class_of, confidence_samples, synth_draws
from orthonav.segmentation.unet import SHIPPED_WEIGHTS, load_model, segment_unet
from orthonav.segmentation.unet_calibration import reliability

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
#: Unseen phantom cases: (name, factory, knobs).
PHANTOMS = [
    ("knee s31", make_knee_phantom, dict(seed=31, small=True, scale=0.95, pose_jitter_deg=4.0)),
    ("knee s32 full", make_knee_phantom, dict(seed=32, small=False, scale=1.05, pose_jitter_deg=4.0)),
    ("hip s31", make_hip_phantom, dict(seed=31, small=True, scale=0.95, pose_jitter_deg=4.0)),
    ("hip s32 full", make_hip_phantom, dict(seed=32, small=False, scale=1.05)),
    ("long bone s31", make_long_bone_phantom, dict(seed=31, small=True)),
]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / s if s else float("nan")


def score_phantoms(model, threads):
    rows, samples = [], []
    for name, factory, knobs in PHANTOMS:
        ph = factory(**knobs)
        t = time.perf_counter()
        seg = segment_unet(ph.ct, model, num_threads=threads)
        dt = time.perf_counter() - t
        truth, pred = ph.labels.array_zyx, seg.labels.array_zyx
        per = {}
        for v, bone in ph.label_table.labels.items():
            pv = [k for k, n in seg.table.labels.items() if n == bone]
            per[bone] = dice(pred == pv[0], truth == v) if pv else 0.0
        rows.append((name, per, dt, dict(seg.table.labels), seg.table.side, ph.label_table.side))
        t_cls = np.zeros(256, np.uint8)
        for v, n in ph.label_table.labels.items():
            t_cls[v] = class_of(n)
        samples.append((t_cls[truth], ph.ct))
    return rows, samples


def load_draws(n: int, seed: int, cache: Path | None):
    """``synth_draws(n, seed=seed)``, kept in ``cache`` (a pickle per (n, seed)) when given:
    drawing is slow on a busy machine (4 s a draw when quiet, 30 s at load 4-9 on 2 cores)."""
    import pickle

    if cache is not None:
        for f in sorted(cache.glob(f"draws_n*_seed{seed}.pkl")):
            if int(f.name.split("_")[1][1:]) >= n:
                return pickle.loads(f.read_bytes())[:n]  # draws are sequential: the first n of more are the same
    f = None if cache is None else cache / f"draws_n{n}_seed{seed}.pkl"
    draws = synth_draws(n, seed=seed)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(pickle.dumps(draws))
    return draws


def score_draws(model, threads, draws):
    per_class: dict[str, list[float]] = {}
    samples = []
    for d in draws:
        seg = segment_unet(d.ct, model, num_threads=threads)
        p_cls = np.zeros(256, np.uint8)
        for v, name in seg.table.labels.items():
            p_cls[v] = class_of(name)
        pred, truth = p_cls[seg.labels.array_zyx], d.labels.array_zyx
        for c in np.unique(truth[truth > 0]):
            per_class.setdefault(model.card.classes[int(c)], []).append(dice(pred == c, truth == c))
        samples.append((truth, d.ct))
    return per_class, samples


def score_real_shapes(model, threads, n: int, seed: int, shapes_dir: Path, *, knee_femur: bool = False):
    """U-Net and classical on ``n`` draws of the real family (None without the data): per draw
    the bone-mask Dice, each class's Dice with every predicted label given the class it overlaps
    most (segmentation, whatever the names), and the names: right, wrong (and wrong at
    confidence >= 0.8), or withheld (``bone_<n>``). The real sets are a knee without its femur
    and two femurs without their pelvis, fields of view no scanner gives, where the naming is
    expected to abstain; with ``knee_femur`` only the knee, completed by the knee phantom's
    femur fitted to its cartilage (:func:`orthonav.phantoms.real_knee.knee_with_phantom_femur`)."""
    from orthonav.core.errors import InputError
    from orthonav.phantoms.real_knee import knee_with_phantom_femur
    from orthonav.phantoms.real_shapes import find_shape_sets, shape_phantom
    from orthonav.segmentation.classical import segment_classical
    from orthonav.segmentation.naming import CONFIDENT

    if not shapes_dir.is_dir():
        return None
    sets = find_shape_sets(shapes_dir)
    if knee_femur:
        sets = [knee_with_phantom_femur(s, shapes_dir / s.name)[0] for s in sets if s.kind == "knee"]
    sps = [shape_phantom(s) for s in sets]
    draws = synth_draws(n, seed=seed, families=(), shapes=sps)
    out: dict[str, dict] = {b: {"mask": [], "per_class": {}, "right": 0, "wrong": 0, "wrong_confident": 0, "withheld": 0} for b in ("unet", "classical")}
    for d in draws:
        truth = d.labels.array_zyx
        line = []
        for backend, acc in out.items():
            try:
                seg = segment_unet(d.ct, model, num_threads=threads) if backend == "unet" else segment_classical(d.ct, anatomy="auto")
                lab, table = seg.labels.array_zyx, seg.table.labels
            except InputError:  # no bone could be named: nothing labelled
                lab, table = np.zeros_like(truth), {}
            acc["mask"].append(dice(lab > 0, truth > 0))
            by_overlap = np.zeros(256, np.uint8)
            for v, name in table.items():
                under = truth[lab == v]
                c = int(np.bincount(under, minlength=8)[1:].argmax()) + 1 if (under > 0).any() else 0
                by_overlap[v] = c
                if name.startswith("bone_"):
                    acc["withheld"] += 1
                elif c:
                    acc["right" if class_of(name) == c else "wrong"] += 1
                    acc["wrong_confident"] += class_of(name) != c and seg.table.confidence.get(v, 1.0) >= CONFIDENT
            pred = by_overlap[lab]
            for c in np.unique(truth[truth > 0]):
                acc["per_class"].setdefault(model.card.classes[int(c)], []).append(dice(pred == c, truth == c))
            line.append(f"{backend} mask {acc['mask'][-1]:.3f}, " + ", ".join(f"{model.card.classes[int(c)]} {acc['per_class'][model.card.classes[int(c)]][-1]:.3f}" for c in np.unique(truth[truth > 0]))
                        + f", names {sorted(table.values())}")
        print(f"  {d.family} {d.ct.spacing_mm.round(2)}: " + "; ".join(line))
    return out


def calibration(model, samples, threads, out_png: Path | None):
    """Reliability of the final labels' confidence on the unseen cases, three ways: the network's
    softmax (T = 1, no map), temperature-scaled (the card's T, no map) and as shipped (the card's
    T and confidence map). A voxel's label is right as its confidence claims
    (:func:`~orthonav.segmentation.unet_calibration.label_is_right`)."""
    from orthonav.segmentation.unet import UNetModel

    card = model.card
    variants = {"softmax": {"temperature": 1.0, "confidence_map": None}, "temperature": {"confidence_map": None}, "shipped": {}}
    pooled = {}
    for key, update in variants.items():
        m = UNetModel(model.network, card.model_copy(update=update), model.path)
        pairs = [confidence_samples(m, ct, truth, num_threads=threads) for truth, ct in samples]
        pooled[key] = (np.concatenate([c for c, _ in pairs]), np.concatenate([k for _, k in pairs]))
    figs = {key: reliability(c, k) for key, (c, k) in pooled.items()}
    c, k = pooled["shipped"]
    low = c < card.low_confidence
    err_low, err_high = float(1 - k[low].mean()) if low.any() else float("nan"), float(1 - k[~low].mean())
    if out_png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.2, 4.8), dpi=110)
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
        labels = {"softmax": "softmax, T = 1", "temperature": f"T = {card.temperature:g}", "shipped": f"T = {card.temperature:g} + confidence map (shipped)"}
        for key, col in (("softmax", "tab:orange"), ("temperature", "tab:green"), ("shipped", "tab:blue")):
            ece, rows = figs[key]
            ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", color=col, ms=4, label=f"{labels[key]} (ECE {ece:.3f})")
        ax.set_xlabel("confidence of the voxel's label (mean in bin)")
        ax.set_ylabel("accuracy (share of those labels that are right)")
        ax.set_title("Shipped bone U-Net: reliability near bone\n(unseen phantoms + synthetic draws)", fontsize=9)
        ax.legend(fontsize=7.5, loc="upper left")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        fig.tight_layout()
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png)
    return {"ece_softmax": figs["softmax"][0], "ece_temperature": figs["temperature"][0], "ece_shipped": figs["shipped"][0],
            "voxels": int(len(c)), "error_rate_low_conf": err_low, "error_rate_high_conf": err_high, "low_conf_share": float(low.mean()),
            "temperature": card.temperature, "bins": figs["shipped"][1]}


def thorax(model, threads):
    folder = SHARED / "ct_thorax_small"
    if not folder.is_dir():
        return None
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    ref = read_volume(folder / "example_seg.nii.gz").array_zyx
    names = {int(k): v for k, v in json.loads((folder / "labels_total_v2.json").read_text()).items()}
    truth = np.isin(ref, [v for v, n in names.items() if n.startswith(("vertebrae_", "rib_"))])
    seg = segment_unet(ct, model, num_threads=threads)
    ours = seg.labels.array_zyx > 0
    named = sorted(n for n in seg.table.labels.values() if not n.startswith("bone_"))  # the model has no vertebra / rib class
    return {"dice": dice(ours, truth), "recall": float(ours[truth].mean()), "precision": float(truth[ours].mean()) if ours.any() else 0.0,
            "bones": dict(seg.table.labels), "named": named, "unnamed": len(seg.table.labels) - len(named)}


#: Steps of segment_unet timed by :func:`speed` (module-level names it calls, wrapped while it runs):
#: (row label, function name in orthonav.segmentation.unet). Steps moved elsewhere fall into "other".
SPEED_STEPS = [
    ("resample CT -> 4 mm grid", "ct_to_grid"),
    ("network passes (plain + flip)", "sliding_window_passes"),
    ("TTA mean + temperature", "tta_probabilities"),
    ("labels + refinement (CT grid)", "probabilities_to_labels"),
    ("naming (components, sides)", "name_components"),
]


def speed(model, threads):
    """segment_unet on a 512 x 512 x 400 CT: wall and CPU seconds per step, network calls, the
    load average, and Dice per bone against the phantom's labels (nearest-resampled to the CT)."""
    import unittest.mock

    import SimpleITK as sitk

    from orthonav.core.volume import make_lps_from_ijk, to_sitk
    from orthonav.segmentation import unet as U

    ph = make_knee_phantom(seed=33, small=False)
    spacing = np.array([0.8, 0.8, 1.0])
    size = np.array([512, 512, 400])
    centre = ph.ct.to_lps(((np.array(ph.ct.shape_ijk) - 1) / 2.0)[None])[0]
    origin = centre - (size - 1) / 2.0 * spacing
    m = make_lps_from_ijk(spacing, origin, np.eye(3))
    ref = sitk.Image([int(x) for x in size], sitk.sitkInt16)
    ref.SetSpacing([float(x) for x in spacing])
    ref.SetOrigin([float(x) for x in origin])
    big = sitk.Resample(to_sitk(ph.ct), ref, sitk.Transform(), sitk.sitkLinear, 40.0, sitk.sitkInt16)
    ct = Volume(sitk.GetArrayFromImage(big), m)
    steps = {name: [0.0, 0.0] for _, name in SPEED_STEPS}
    calls: list[int] = []

    def timed(name, fn):
        def wrapper(*a, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                steps[name][0] += time.perf_counter() - t
                steps[name][1] += time.process_time() - c

        return wrapper

    forward = model.network.forward

    def counting(x):
        calls.append(int(x.shape[0]))
        return forward(x)

    patches = [unittest.mock.patch.object(U, name, timed(name, getattr(U, name))) for _, name in SPEED_STEPS if hasattr(U, name)]
    patches.append(unittest.mock.patch.object(model.network, "forward", counting))
    load_before = os.getloadavg()[0]
    for p in patches:
        p.start()
    try:
        t, c = time.perf_counter(), time.process_time()
        seg = segment_unet(ct, model, num_threads=threads)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        for p in reversed(patches):
            p.stop()
    rows = [(label, *steps[name]) for label, name in SPEED_STEPS]
    rows.append(("other (load, checks, confidence)", wall - sum(r[1] for r in rows), cpu - sum(r[2] for r in rows)))
    truth = sitk.GetArrayFromImage(sitk.Resample(to_sitk(ph.labels), big, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    pred = seg.labels.array_zyx
    per = {}
    for v, bone in ph.label_table.labels.items():
        pv = [k for k, n in seg.table.labels.items() if n == bone]
        per[bone] = dice(pred == pv[0], truth == v) if pv else 0.0
    return {"seconds": wall, "cpu_seconds": cpu, "steps": rows, "windows": int(sum(calls)), "network_calls": len(calls),
            "load_before": load_before, "load_after": os.getloadavg()[0], "shape_zyx": list(ct.array_zyx.shape),
            "bones": dict(seg.table.labels), "dice": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", nargs="+", default=["phantoms", "draws", "calibration", "thorax"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--draws", type=int, default=10, help="number of unseen synthetic draws")
    ap.add_argument("--draws-seed", type=int, default=2000, help="their seed (training uses 0, calibration 10000)")
    ap.add_argument("--cache", type=Path, default=None, help="keep the draws here between runs")
    ap.add_argument("--quick", action="store_true", help="only the small phantoms (knee, hip, long bone)")
    ap.add_argument("--shapes", type=Path, default=ROOT.parent / "shared" / "data" / "real_bone_surfaces", help="real-shapes: the bone surfaces")
    ap.add_argument("--real-draws", type=int, default=8, help="real-shapes: number of draws")
    ap.add_argument("--real-seed", type=int, default=3000, help="real-shapes: their seed")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "unet_reliability.png")
    args = ap.parse_args()
    model = load_model(args.weights)
    if args.quick:
        PHANTOMS[:] = [p for p in PHANTOMS if p[2].get("small")]
    tr = model.card.training
    print(f"model {args.weights} ({args.weights.stat().st_size / 1e6:.2f} MB): {tr.iterations} steps, {tr.seconds / 60:.1f} min, "
          f"T = {model.card.temperature}, load at the end of training {tr.load_average}; load now {os.getloadavg()[0]:.2f}")  # fmt: skip
    out: dict = {}
    samples = []
    if "phantoms" in args.mode or "calibration" in args.mode:
        rows, s = score_phantoms(model, args.threads)
        samples += s
        print(f"{'phantom':<15} {'s':>5}  Dice per bone (by name); names; side (truth)")
        for name, per, dt, labels, side, t_side in rows:
            print(f"{name:<15} {dt:5.1f}  " + ", ".join(f"{b} {d:.3f}" for b, d in per.items()) + f"; {sorted(labels.values())}; {side} ({t_side})")
        out["phantoms"] = {r[0]: r[1] for r in rows}
    if "draws" in args.mode or "calibration" in args.mode:
        per_class, s = score_draws(model, args.threads, load_draws(args.draws, args.draws_seed, args.cache))
        samples += s
        print(f"synthetic draws (seed {args.draws_seed}, {args.draws} CTs): Dice per class mean (min): " + ", ".join(f"{c} {np.mean(v):.3f} ({np.min(v):.3f})" for c, v in per_class.items()))
        out["draws"] = {c: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)} for c, v in per_class.items()}
    if "calibration" in args.mode:
        cal = calibration(model, samples, args.threads, args.png)
        print(f"calibration near bone ({cal['voxels']} voxels): ECE {cal['ece_softmax']:.4f} (softmax, T = 1), {cal['ece_temperature']:.4f} (T = {cal['temperature']}), "
              f"{cal['ece_shipped']:.4f} (T and the card's confidence map, as shipped); "
              f"error rate {cal['error_rate_low_conf']:.3f} below confidence {model.card.low_confidence} ({cal['low_conf_share']:.3f} of voxels) vs "
              f"{cal['error_rate_high_conf']:.4f} above; diagram {args.png}")  # fmt: skip
        out["calibration"] = cal
    for mode, key, what in (("real-shapes", "real_shapes", "real-shape draws"), ("real-knee", "real_knee", "real knee + phantom femur draws")):
        if mode not in args.mode:
            continue
        rs = score_real_shapes(model, args.threads, args.real_draws, args.real_seed, args.shapes, knee_femur=mode == "real-knee")
        if rs is None:
            print(f"real shapes: {args.shapes} not found")
        for backend, acc in (rs or {}).items():
            print(f"{what} (seed {args.real_seed}, {args.real_draws} CTs), {backend}: bone mask {np.mean(acc['mask']):.3f} (min {np.min(acc['mask']):.3f}); "
                  "Dice per class, labels matched by overlap, mean (min): " + ", ".join(f"{c} {np.mean(v):.3f} ({np.min(v):.3f})" for c, v in acc["per_class"].items())
                  + f"; names right {acc['right']}, wrong {acc['wrong']} ({acc['wrong_confident']} at confidence >= 0.8), withheld {acc['withheld']}")  # fmt: skip
            out.setdefault(key, {})[backend] = {
                "mask": float(np.mean(acc["mask"])), "right": acc["right"], "wrong": acc["wrong"], "wrong_confident": acc["wrong_confident"],
                "withheld": acc["withheld"], "per_class": {c: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)} for c, v in acc["per_class"].items()},
            }  # fmt: skip
    if "thorax" in args.mode:
        th = thorax(model, args.threads)
        print("thorax CT bone mask: " + ("shared data not found" if th is None else f"Dice {th['dice']:.3f}, recall {th['recall']:.3f}, precision {th['precision']:.3f}; {th['unnamed']} unnamed bone_<n>, named {th['named'] or 'none'} (should be none)"))
        out["thorax"] = th
    if "speed" in args.mode:
        sp = speed(model, args.threads)
        print(f"inference on {sp['shape_zyx']} (z, y, x) voxels, {args.threads} threads, load {sp['load_before']:.1f} before, "
              f"{sp['load_after']:.1f} after (2 cores); {sp['windows']} windows of the network in {sp['network_calls']} calls")  # fmt: skip
        print(f"{'step':<34} {'wall s':>7} {'CPU s':>7}")
        for label, w, c in sp["steps"]:
            print(f"{label:<34} {w:7.1f} {c:7.1f}")
        print(f"{'total (target < 30 s)':<34} {sp['seconds']:7.1f} {sp['cpu_seconds']:7.1f}")
        print("Dice per bone (labels resampled to the CT): " + ", ".join(f"{b} {d:.3f}" for b, d in sp["dice"].items()) + f"; names {sorted(sp['bones'].values())}")
        out["speed"] = sp
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
