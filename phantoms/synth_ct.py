"""Synthetic training CTs by domain randomisation (in the spirit of SynthSeg) for the bone U-Net.

SynthSeg (Billot et al. 2023, Medical Image Analysis 86: 102789) trains a segmentation network
on label maps turned into images with random intensities, deformations and resolutions, so the
network learns shape and context rather than one scanner's appearance. Here the label maps
come from the phantom families (:mod:`~orthonav.phantoms.knee`, :mod:`~orthonav.phantoms.hip`,
:mod:`~orthonav.phantoms.long_bone`), and every draw (:func:`synth_draw`) is:

* **anatomy**: a knee (one leg hip to ankle, seen through a knee window or the whole leg), a
  pelvis with proximal femurs, or a femur alone, built at one of a few phantom sizes;
* **pose and field of view** (:func:`orthonav.phantoms.fov.random_fov` /
  :func:`~orthonav.phantoms.fov.apply_fov`): patient tilt up to 25 deg, grid oblique up to 20
  deg in one of four patient positions, isotropic scale 0.8-1.2, left/right mirror, both legs,
  window length and centre, a table slab and a metal bead;
* **shape**: a smooth random deformation (displacements drawn on a ~60 mm control grid, up to
  ``deform_mm``, cubic-spline interpolated) and an anisotropic scaling of 0.9-1.1 per axis;
* **intensities**: tissue HUs drawn per draw (air -1010..-950, fat -150..-50, soft tissue
  0..80, cancellous bone / marrow soft + 20..500, cortex 600..1900, beads 2500..4000, a
  table 150..1000 and metal 2500..4000 HU), bone density varying smoothly in space (a
  multiplicative field, SD 0-12 %, ~30 mm correlation), mixed linearly by each tissue's
  partial-volume fraction (:func:`orthonav.phantoms.render.render_fractions`) as a scanner
  mixes them, so the half-way HU between two tissues lies on their true boundary; then a
  Gaussian blur (point-spread function, 0-1.2 mm) and Gaussian noise (5-50 HU);
* **resolution**: in-plane voxels 0.6-2.5 mm (from the field of view), slices 1-3 mm thick
  (anisotropic: slice-profile blur then resampling along the scanner axis).

Truth names are mapped to side-less classes (:data:`CLASSES`): a left and a right femur are
both ``femur``; the side is decided after segmentation from the anatomy
(:func:`orthonav.segmentation.unet.name_components`). Table and metal are background.
Everything is seeded: the same seed gives the same draws.

Real bone surfaces (:mod:`~orthonav.phantoms.real_shapes`: the shared VHF knee and libhip
femurs, ``train-seg --synthetic --shapes DIR``) are drawn as one more family, ``real`` (weight
:data:`REAL_WEIGHT` beside the phantom families' 1.0: 23 % of the draws), through the same
fields of view, deformations, intensities and resolutions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from orthonav.core.errors import InputError
from orthonav.core.volume import Volume

from .fov import apply_fov, random_fov, slabs
from .hip import HIP_RECIPE
from .knee import KNEE_RECIPE
from .long_bone import LONG_BONE_RECIPE
from .recipe import make_phantom, tissue_fractions
from .real_shapes import ShapePhantom
from .render import TISSUES, SyntheticPhantom

#: Network classes (channel -> name), side-less; channel 0 is background.
CLASSES: dict[int, str] = {1: "femur", 2: "tibia", 3: "fibula", 4: "patella", 5: "hip", 6: "sacrum"}
#: Anatomy families and how often each is drawn.
FAMILIES = (("knee", 0.45), ("whole_leg", 0.1), ("hip", 0.35), ("long_bone", 0.1))
#: Weight of the ``real`` family (real bone surfaces, when given) beside :data:`FAMILIES`' 1.0.
REAL_WEIGHT = 0.3

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class SynthDraw:
    """One synthetic CT with its class labels.

    Attributes
    ----------
    ct
        int16 HU volume (LPS geometry in ``lps_from_ijk``; anisotropic spacing possible).
    labels
        uint8 class map on the same grid (:data:`CLASSES`; 0 background, table and metal).
    names
        Truth names of the draw's bones (``femur_right``, ...), for naming checks.
    family
        Which anatomy family was drawn.
    """

    ct: Volume
    labels: Volume
    names: tuple[str, ...]
    family: str


def class_of(name: str) -> int:
    """Class channel of a truth bone name (``femur_left`` -> 1); 0 for what is not a class."""
    stem = name.removesuffix("_left").removesuffix("_right")
    for c, n in CLASSES.items():
        if n == stem:
            return c
    return 0


_PHANTOMS: dict[tuple[str, bool], tuple[SyntheticPhantom, dict[str, Volume]]] = {}


def _phantom(kind: str, small: bool) -> tuple[SyntheticPhantom, dict[str, Volume]]:
    """The family's phantom (seed 0) and its tissue fractions on its CT grid (cached)."""
    key = (kind, small)
    if key not in _PHANTOMS:
        recipe = {"knee": KNEE_RECIPE, "hip": HIP_RECIPE, "long_bone": LONG_BONE_RECIPE}[kind]
        _PHANTOMS[key] = (make_phantom(recipe, seed=0, small=small), tissue_fractions(recipe, seed=0, small=small))
    return _PHANTOMS[key]


def _tissue_hu(rng: np.random.Generator) -> dict[str, float]:
    """HU of each tissue for one draw (:data:`~orthonav.phantoms.render.TISSUES` and air)."""
    soft = rng.uniform(0.0, 80.0)
    return {
        "air": rng.uniform(-1010.0, -950.0), "fat": rng.uniform(-150.0, -50.0), "soft": soft,
        "marrow": soft + rng.uniform(20.0, 500.0), "cortical": rng.uniform(600.0, 1900.0), "bead": rng.uniform(2500.0, 4000.0),
    }  # fmt: skip


def _mixed_ct(fractions: dict[str, Volume], hu: dict[str, float], rng: np.random.Generator, *, density_sd: float) -> Volume:
    """A CT on the fractions' grid: each voxel's tissues mixed linearly at the drawn HUs (partial
    volume as a scanner sees it). Bone (cortex and marrow) density varies smoothly in space:
    a multiplicative field of standard deviation ``density_sd`` and ~30 mm correlation."""
    ref = fractions["soft"]
    total = np.zeros(ref.array_zyx.shape, np.float32)
    ct = np.zeros_like(total)
    field = None
    if density_sd > 0:
        sigma = 30.0 / ref.spacing_mm[::-1]
        field = ndi.gaussian_filter(rng.normal(size=total.shape).astype(np.float32), sigma, mode="nearest")
        field = 1.0 + density_sd * field / max(float(field.std()), 1e-6)
    for tissue in TISSUES:
        f = fractions[tissue].array_zyx
        total += f
        contrib = np.float32(hu[tissue]) * f
        if field is not None and tissue in ("cortical", "marrow"):
            contrib *= field
        ct += contrib
    ct += np.float32(hu["air"]) * np.clip(1.0 - total, 0.0, 1.0)
    return Volume(ct, ref.lps_from_ijk)


def _deform(ct: NDArray[np.float32], labels: NDArray[np.uint8], spacing_zyx: NDArray[np.float64], rng: np.random.Generator,
            deform_mm: float, bone: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.uint8], NDArray[np.float32]]:
    """Smooth random deformation + anisotropic scaling about the centre (backward mapping) of
    the CT, the labels and the bone fraction (linear; labels nearest).

    Where the mapping reaches beyond the array (a scaling below 1, a displacement at a face)
    the edge voxels are repeated: the anatomy goes on past the field of view, as on a scanner.
    Filling air there cut every bone crossing a face with an air wedge up to 10 % of the
    extent deep: the marrow opened to the outside (no scanner makes that) and the truth ended
    where a real bone goes on."""
    shape = np.array(ct.shape)
    ctrl = np.maximum(np.round(shape * spacing_zyx / 60.0).astype(int), 2) + 1
    scale = rng.uniform(0.9, 1.1, size=3)
    centre = (shape - 1) / 2.0
    lins, disps = [], []
    for a in range(3):
        disp_mm = rng.normal(0.0, deform_mm / 2.0, size=tuple(ctrl))
        disps.append((ndi.zoom(disp_mm, shape / ctrl, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]] / spacing_zyx[a]).astype(np.float32))
        ax = np.arange(shape[a], dtype=np.float32)
        lin = (ax - centre[a]) / scale[a] + centre[a]
        sh = [1, 1, 1]
        sh[a] = shape[a]
        lins.append(lin.reshape(sh))
    ct2, lab2, bone2 = np.full(ct.shape, np.nan, np.float32), np.zeros(labels.shape, np.uint8), np.full(bone.shape, np.nan, np.float32)
    for k0, k1 in slabs(ct.shape):  # slab by slab: the same values as one pass, a fraction of its memory
        sub = (slice(k0, k1),)
        coords = [np.broadcast_to(lin[sub] if a == 0 else lin, disps[a][sub].shape) + disps[a][sub] for a, lin in enumerate(lins)]
        ct2[sub] = ndi.map_coordinates(ct, coords, order=1, mode="nearest")
        lab2[sub] = ndi.map_coordinates(labels, coords, order=0, mode="nearest")
        bone2[sub] = ndi.map_coordinates(bone, coords, order=1, mode="nearest")
    return ct2, lab2, bone2


def _resample_k(a: NDArray[np.float32], zk: NDArray[np.float64]) -> NDArray[np.float32]:
    """``a`` linearly resampled along axis 0 at the (fractional) slice positions ``zk``, edge
    slices repeated (slab by slab; the same values as one ``map_coordinates`` pass)."""
    out = np.full((len(zk), *a.shape[1:]), np.nan, np.float32)
    for k0, k1 in slabs(out.shape):
        out[k0:k1] = ndi.map_coordinates(a, np.meshgrid(zk[k0:k1], np.arange(a.shape[1]), np.arange(a.shape[2]), indexing="ij"), order=1, mode="nearest")
    return out


def _partial_volume_truth(labels: NDArray[np.uint8], bone_fraction: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Class labels whose bone is the voxels more than half bone (``bone_fraction`` > 0.5), each
    taking the class of the nearest labelled voxel.

    The labels come from the phantom's label map by nearest neighbour, so their surface is
    quantised to the phantom's grid (1.8 x 1.8 x 2.4 mm for the small hip): on a draw's grid
    they agreed with the resampled bone fraction's half-way surface at Dice 0.89-0.98 only (six
    draws), a ceiling that no segmentation of the CT could pass. The fraction carries the
    sub-voxel surface the CT is mixed from."""
    bone = labels > 0
    inside = bone_fraction > 0.5
    if not bone.any():
        return np.zeros_like(labels)
    out = np.where(inside & bone, labels, 0).astype(np.uint8)
    extra = inside & ~bone
    if extra.any():
        nearest = ndi.distance_transform_edt(~bone, return_distances=False, return_indices=True)
        out[extra] = labels[tuple(ix[extra] for ix in nearest)]
    return out


def synth_draw(rng: np.random.Generator, *, small: bool = True, deform_mm: float = 6.0, families=FAMILIES, shapes: Sequence[ShapePhantom] = ()) -> SynthDraw:
    """One domain-randomised CT (see the module docstring).

    Parameters
    ----------
    rng
        The random generator (the draw is a function of its state).
    small
        Build the phantoms at their small size (faster; the sizes are randomised anyway).
    deform_mm
        Scale (mm, about two standard deviations) of the smooth random displacements.
    shapes
        Real bone surfaces rendered as phantoms (:func:`~orthonav.phantoms.real_shapes.shape_phantom`):
        when given, the family ``real`` (one of them, at random) is drawn with weight
        :data:`REAL_WEIGHT`. Without them the draws are those of before (same random stream).
    """
    fams = list(families) + ([("real", REAL_WEIGHT)] if shapes else [])
    if not fams:
        raise InputError(None, "no anatomy family to draw: give families or real bone shapes")
    names_f = [f for f, _ in fams]
    p = np.array([w for _, w in fams], dtype=np.float64)
    family = names_f[int(rng.choice(len(names_f), p=p / p.sum()))]
    if family == "real":
        real = shapes[int(rng.integers(len(shapes)))]
        phantom, fractions = real.phantom, real.fractions
        scenario = phantom.truth.kind  # a knee window on the knee set, a hip window on the femurs
        family = f"real:{real.name}"
    else:
        phantom, fractions = _phantom({"whole_leg": "knee"}.get(family, family), small)
        scenario = {"knee": "knee", "whole_leg": "whole_leg", "hip": "hip", "long_bone": "knee"}[family]
    spec = random_fov(rng, scenario, spacing_mm=(0.6, 2.5) if family != "whole_leg" else (2.0, 3.0))
    if family == "long_bone":
        spec = replace(spec, window_mm=None, both_legs=False)
    hu = _tissue_hu(rng)
    mixed = _mixed_ct(fractions, hu, rng, density_sd=rng.uniform(0.0, 0.12))
    # the bone fraction seen through the same field of view (x 1000: the resampler rounds to int16)
    bone_src = Volume((fractions["cortical"].array_zyx + fractions["marrow"].array_zyx) * np.float32(1000.0), fractions["soft"].lps_from_ijk)
    fov = apply_fov(phantom, spec, with_ct=True, ct_source=mixed, more_sources=(bone_src,))
    assert fov.ct is not None
    ct = fov.ct.array_zyx.astype(np.float32)
    (seen,) = fov.more
    objects = np.isin(fov.labels.array_zyx, [v for v, n in fov.names.items() if not class_of(n)])
    bone = np.where(objects, 0.0, np.clip(seen.array_zyx.astype(np.float32) / 1000.0, 0.0, 1.0)).astype(np.float32)
    for name, lo, hi in (("table", 150.0, 1000.0), ("metal", 2500.0, 4000.0)):  # the objects at drawn HUs too
        values = [v for v, n in fov.names.items() if n == name]
        if values:
            ct[fov.labels.array_zyx == values[0]] = rng.uniform(lo, hi)
    lut = np.zeros(256, np.uint8)
    for v, n in fov.names.items():
        lut[v] = class_of(n)
    labels = lut[fov.labels.array_zyx]
    spacing_zyx = fov.ct.spacing_mm[::-1].astype(np.float64)
    if deform_mm > 0:
        ct, labels, bone = _deform(ct, labels, spacing_zyx, rng, deform_mm, bone)
    psf_mm = rng.uniform(0.0, 1.2)
    if psf_mm > 0.05:
        ct = ndi.gaussian_filter(ct, psf_mm / spacing_zyx, mode="nearest")
    lps_from_ijk = fov.ct.lps_from_ijk.copy()
    # anisotropic slices: slice-profile blur then resampling along k (the scanner axis)
    thick = max(float(spacing_zyx[0]), rng.uniform(1.0, 3.0))
    if thick > spacing_zyx[0] * 1.2:
        sigma_k = np.sqrt(max(thick**2 - spacing_zyx[0] ** 2, 0.0)) / 2.355 / spacing_zyx[0]
        ct = ndi.gaussian_filter1d(ct, sigma_k, axis=0, mode="nearest")
        nk = max(int(round(ct.shape[0] * spacing_zyx[0] / thick)), 2)
        zk = (np.arange(nk) + 0.5) * ct.shape[0] / nk - 0.5
        ct = _resample_k(ct, zk)
        # labels: the truth of the thick slice is the fine labels at its centre plane
        labels = labels[np.clip(np.round(zk).astype(int), 0, labels.shape[0] - 1)]
        bone = _resample_k(bone, zk)
        step = lps_from_ijk[:3, 2] * (zk[1] - zk[0])
        origin = lps_from_ijk[:3, 3] + lps_from_ijk[:3, 2] * zk[0]
        lps_from_ijk[:3, 2], lps_from_ijk[:3, 3] = step, origin
    ct = ct + rng.normal(0.0, rng.uniform(5.0, 50.0), size=ct.shape).astype(np.float32)
    labels = _partial_volume_truth(labels, bone)
    names = tuple(sorted(n for n in fov.names.values() if class_of(n)))
    return SynthDraw(
        Volume(np.clip(np.round(ct), -1024, 4000).astype(np.int16), lps_from_ijk),
        Volume(labels.astype(np.uint8), lps_from_ijk.copy()),
        names,
        family,
    )


def iter_synth_draws(n: int, *, seed: int = 0, small: bool = True, progress: Progress | None = None, **kw: object) -> Iterator[SynthDraw]:
    """``n`` seeded draws (:func:`synth_draw`), one at a time; a draw whose field of view holds no
    bone is redrawn. The same ``seed`` gives the same draws as :func:`synth_draws`, which holds
    them all."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        d = synth_draw(rng, small=small, **kw)  # type: ignore[arg-type]
        if (d.labels.array_zyx > 0).sum() * float(np.prod(d.labels.spacing_mm)) < 20_000.0:
            continue
        done += 1
        if progress is not None:
            progress("synthetic CTs", done / n)
        yield d


def synth_draws(n: int, *, seed: int = 0, small: bool = True, progress: Progress | None = None, **kw: object) -> list[SynthDraw]:
    """``n`` seeded draws (:func:`iter_synth_draws`), all held in memory."""
    return list(iter_synth_draws(n, seed=seed, small=small, progress=progress, **kw))


def coarse_truth(draw: SynthDraw, spacing_mm: float, num_classes: int) -> NDArray[np.uint8]:
    """True class per voxel of the network's grid (arg-max of the partial-volume fractions)."""
    from orthonav.segmentation.unet import canonical_grid, soft_labels_to_grid

    grid = canonical_grid(draw.ct, spacing_mm)
    return np.argmax(soft_labels_to_grid(draw.labels.array_zyx, draw.ct, grid, num_classes), axis=0).astype(np.uint8)


def confidence_samples(model, ct: Volume, truth_class: NDArray[np.uint8], *, num_threads: int | None = None) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """``segment_unet`` on ``ct``: the final labels' confidence and whether each label is right
    (:func:`~orthonav.segmentation.unet_calibration.label_is_right`), over the voxels near true
    or predicted bone. ``truth_class`` holds side-less class numbers (:func:`class_of`)."""
    from orthonav.segmentation.unet import segment_unet
    from orthonav.segmentation.unet_calibration import label_is_right, near_bone

    seg = segment_unet(ct, model, num_threads=num_threads)
    p_cls = np.zeros(256, np.uint8)
    unnamed_v = np.zeros(256, bool)
    for v, name in seg.table.labels.items():
        p_cls[v] = class_of(name)
        unnamed_v[v] = name.startswith("bone_")
    lab = seg.labels.array_zyx
    pred, unnamed = p_cls[lab], unnamed_v[lab]
    roi = near_bone(truth_class > 0, lab > 0)
    return seg.confidence.array_zyx[roi], label_is_right(truth_class, pred, unnamed)[roi]


def fit_draws_confidence_map(model, draws: Iterable[SynthDraw], *, num_threads: int | None = None) -> tuple[list[tuple[float, float]], dict[str, float]]:
    """Fit the card's ``confidence_map`` on held-out draws: the model is run without a map,
    and the share of right labels is regressed isotonically on the confidence
    (:func:`~orthonav.segmentation.unet_calibration.fit_confidence_map`).

    Returns the knots and the in-sample ECE before / after (``calibration_ece_fit_before`` /
    ``..._after``; unseen-data figures are the benchmark's, ``bench_unet_shipped.py``).
    """
    from orthonav.segmentation.unet import UNetModel
    from orthonav.segmentation.unet_calibration import apply_confidence_map, fit_confidence_map, reliability

    bare = UNetModel(model.network, model.card.model_copy(update={"confidence_map": None}), model.path)
    pairs = [confidence_samples(bare, d.ct, d.labels.array_zyx, num_threads=num_threads) for d in draws]
    conf = np.concatenate([c for c, _ in pairs])
    right = np.concatenate([k for _, k in pairs])
    knots = fit_confidence_map(conf, right)
    before, _ = reliability(conf, right)
    after, _ = reliability(apply_confidence_map(conf, knots), right)
    return knots, {"calibration_ece_fit_before": round(before, 4), "calibration_ece_fit_after": round(after, 4)}


def train_synthetic(
    out_path: str | Path,
    *,
    cases: int = 60,
    minutes: float = 20.0,
    steps: int | None = None,
    seed: int = 0,
    calibration_cases: int = 24,
    spacing_mm: float | None = None,
    num_threads: int | None = None,
    progress: Progress | None = None,
    shapes_dir: str | Path | None = None,
) -> Path:
    """Train the bone U-Net on synthetic CTs (:func:`synth_draws`) and calibrate it.

    Parameters
    ----------
    out_path
        Weights file to write (its JSON model card goes beside it).
    cases
        Number of synthetic CTs drawn for training (seed ``seed``).
    minutes, steps
        Training budget: wall-clock minutes, or exactly ``steps`` optimizer steps when given.
    seed
        Seeds the draws, the network initialisation and the patch sampling; the calibration
        draws use ``seed + 10_000`` (never seen in training).
    calibration_cases
        Held-out draws on which the softmax temperature, then the confidence map of the final
        labels (:func:`fit_draws_confidence_map`), are fitted (0: no calibration, T = 1, no map).
    spacing_mm
        Network grid (mm); default :data:`orthonav.segmentation.unet.DEFAULT_SPACING_MM`.
    num_threads
        torch CPU threads (default 2; 1 is faster on a busy machine).
    shapes_dir
        A folder of real bone surfaces (:func:`~orthonav.phantoms.real_shapes.find_shape_sets`),
        drawn as the ``real`` family in training and calibration; None: phantom families only.

    Returns
    -------
    Path
        ``out_path``; the model card records the draws, the budget, the temperature, the
        confidence map and the calibration NLL and ECE before / after.
    """
    from orthonav.segmentation import unet as U

    spacing = U.DEFAULT_SPACING_MM if spacing_mm is None else float(spacing_mm)
    nc = len(CLASSES) + 1
    t0 = time.monotonic()
    shapes: list[ShapePhantom] = []
    if shapes_dir is not None:
        from .real_shapes import find_shape_sets, shape_phantom

        shapes = [shape_phantom(s) for s in find_shape_sets(shapes_dir)]
    # each draw goes to the network's grid as it comes: memory does not grow with ``cases``
    draws = iter_synth_draws(cases, seed=seed, progress=progress, shapes=shapes)
    train = [U.training_case(f"synth-{seed}-{n}-{d.family}", d.ct, d.labels.array_zyx, spacing, U.DEFAULT_HU_WINDOW, nc) for n, d in enumerate(draws)]
    gen_s = time.monotonic() - t0
    budget = {"minutes": 1e-6, "min_iterations": int(steps)} if steps is not None else {"minutes": float(minutes)}
    nets: list = []
    extra = {"tta_flips": ["x"], "refine": "image-edge"}
    path = U.train_on_cases(
        train, dict(CLASSES), out_path, case_names=[f"synthetic draws {cases} (seed {seed}; phantoms.synth_ct" + (f"; real shapes: {', '.join(s.name for s in shapes)})" if shapes else ")")], spacing_mm=spacing,
        seed=seed, progress=progress, num_threads=num_threads, flip_x=True, card_extra=extra, keep_network=nets, **budget,
    )  # fmt: skip
    results = {"generation_seconds": round(gen_s, 1)}
    if calibration_cases <= 0:
        return U.update_card(path, temperature=1.0, results=results)
    model = U.load_model(path)
    held_out = synth_draws(calibration_cases, seed=seed + 10_000, shapes=shapes)
    samples = []
    for d in held_out:
        _, passes = U.network_logits(model, d.ct)
        samples.append((passes, coarse_truth(d, spacing, nc)))
    temperature, nll = U.fit_temperature(samples)
    del samples
    results.update({"calibration_nll_t1": round(nll[1.0], 4), "calibration_nll_fitted": round(nll[temperature], 4)})
    path = U.update_card(path, temperature=float(temperature), results=results)
    return calibrate_confidence_map(path, held_out, num_threads=num_threads)


def calibrate_confidence_map(weights_path: str | Path, held_out: Iterable[SynthDraw], *, num_threads: int | None = None) -> Path:
    """Fit the confidence map of a weights file on ``held_out`` draws (:func:`fit_draws_confidence_map`)
    and write it, with the in-sample ECE before / after, into the file's model card.

    :func:`train_synthetic` does it after the temperature; the shipped model's map was fitted
    this way on ``synth_draws(24, seed=10_000)``.
    """
    from orthonav.segmentation import unet as U

    model = U.load_model(weights_path)
    knots, ece = fit_draws_confidence_map(model, held_out, num_threads=num_threads)
    return U.update_card(weights_path, confidence_map=knots, results={**model.card.results, **ece})


__all__ = ["CLASSES", "FAMILIES", "REAL_WEIGHT", "SynthDraw", "calibrate_confidence_map", "class_of", "coarse_truth", "confidence_samples", "fit_draws_confidence_map", "iter_synth_draws", "synth_draw", "synth_draws", "train_synthetic"]
