"""The bone U-Net shipped with OrthoNav (issue 15): loads safely, segments and names an unseen
phantom, its confidence marks its errors, the real thorax CT, and the synthetic training command.

Figures (benchmarks/bench_unet_shipped.py, docs/model_card.md) are measured there; the bounds
here are the measured figures less a margin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from orthonav.core.volume import read_volume
from orthonav.segmentation import unet as U

#: Measured on the unseen knee below (seed 31, scale 0.95, 4 deg pose jitter), surface from the
#: image, identity from the network: femur 0.991, tibia 0.989, fibula 0.965, patella 0.979 with the
#: weights shipped since 2026-12-08 (issue 15 asks >= 0.95 per bone: met; the weights before:
#: 0.990, 0.989, 0.963, 0.979).
KNEE_DICE_FLOOR = {"femur": 0.97, "tibia": 0.97, "fibula": 0.94, "patella": 0.93}
#: Measured 0.909 (0.906 with the weights before 2026-12-08; issue 15 asks >= 0.85): the image's bone; the model has no vertebra or rib class,
#: so none of it is named.
THORAX_DICE_FLOOR = 0.85


@pytest.fixture(scope="module")
def shipped() -> U.UNetModel:
    if not U.SHIPPED_WEIGHTS.is_file():
        pytest.fail(f"the shipped model is missing: {U.SHIPPED_WEIGHTS}")
    return U.load_model(U.SHIPPED_WEIGHTS)


@pytest.fixture(scope="module")
def unseen_knee(shipped):
    """A knee phantom never drawn in training (training draws come from the seed-0, scale-1
    phantoms), segmented by the shipped model."""
    from orthonav.phantoms.knee import make_knee_phantom

    ph = make_knee_phantom(seed=31, small=True, scale=0.95, pose_jitter_deg=4.0)
    return ph, U.segment_unet(ph.ct, shipped)


def test_shipped_model_is_small_and_loads_with_weights_only(shipped) -> None:
    size_mb = U.SHIPPED_WEIGHTS.stat().st_size / 1e6
    assert size_mb < 5.0, size_mb
    raw = torch.load(U.SHIPPED_WEIGHTS, map_location="cpu", weights_only=True)  # tensors and plain containers only
    assert raw["format"] == U.WEIGHTS_FORMAT
    card = shipped.card
    assert set(card.classes.values()) == {"femur", "tibia", "fibula", "patella", "hip", "sacrum"}
    assert card.tta_flips == ["x"] and card.refine == "image-edge" and 0.5 <= card.temperature <= 2.0
    # calibration ran: its fitted temperature did no worse than T = 1 (the card keeps both NLLs, not
    # the fitted T itself), and the confidence map is valid
    assert card.results["calibration_nll_fitted"] <= card.results["calibration_nll_t1"]
    from orthonav.segmentation.unet_calibration import check_confidence_map

    assert card.confidence_map is not None and check_confidence_map(card.confidence_map) is None
    side = json.loads(U.card_path_for(U.SHIPPED_WEIGHTS).read_text(encoding="utf-8"))
    assert side["temperature"] == card.temperature and side["training"]["iterations"] == card.training.iterations > 0


def test_unseen_knee_is_segmented_and_named(unseen_knee) -> None:
    ph, seg = unseen_knee
    assert sorted(seg.table.labels.values()) == ["femur", "fibula", "patella", "tibia"]
    assert seg.table.side == ph.label_table.side == "right"
    assert seg.labels.array_zyx.shape == ph.ct.array_zyx.shape and np.allclose(seg.labels.lps_from_ijk, ph.ct.lps_from_ijk)
    truth, pred = ph.labels.array_zyx, seg.labels.array_zyx
    dice = {}
    for v, name in ph.label_table.labels.items():
        a, b = pred == seg.table.value_of(name), truth == v
        dice[name] = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
    for name, floor in KNEE_DICE_FLOOR.items():
        assert dice[name] >= floor, dice
    assert not any("not named" in n for n in seg.notes), seg.notes


def test_unseen_long_bone_reaches_the_issue_dice(shipped) -> None:
    """Issue 15's target, Dice >= 0.95 per bone, on an unseen small phantom (measured: femur 0.980)."""
    from orthonav.phantoms.long_bone import make_long_bone_phantom

    ph = make_long_bone_phantom(seed=31, small=True)
    seg = U.segment_unet(ph.ct, shipped)
    assert sorted(seg.table.labels.values()) == sorted(ph.label_table.labels.values()) == ["femur"]
    a, b = seg.labels.array_zyx == seg.table.value_of("femur"), ph.labels.array_zyx == ph.label_table.value_of("femur")
    assert 2.0 * float((a & b).sum()) / float(a.sum() + b.sum()) >= 0.95


def test_low_confidence_marks_the_wrong_voxels(unseen_knee, shipped) -> None:
    ph, seg = unseen_knee
    # compare classes, not label values: map both to bone names
    truth = np.vectorize(lambda v: ph.label_table.labels.get(int(v), ""), otypes=[object])(ph.labels.array_zyx)
    pred = np.vectorize(lambda v: seg.table.labels.get(int(v), ""), otypes=[object])(seg.labels.array_zyx)
    roi = ndi.binary_dilation((ph.labels.array_zyx > 0) | (seg.labels.array_zyx > 0), iterations=2)
    wrong = (truth != pred)[roi]
    low = seg.confidence.array_zyx[roi] < shipped.card.low_confidence
    assert low.any() and (~low).any()
    err_low, err_high = float(wrong[low].mean()), float(wrong[~low].mean())
    assert err_low > err_high, (err_low, err_high)


def test_confidence_map_calibrates_an_unseen_knee(unseen_knee, shipped) -> None:
    """The card's map, fitted on held-out synthetic draws, lowers the expected calibration error
    on a phantom it never saw, against the same labels' temperature-scaled confidence; the
    bones' name confidences (labels.json) are the means of that probability, before the map."""
    from orthonav.phantoms.synth_ct import class_of
    from orthonav.segmentation.unet_calibration import apply_confidence_map, label_is_right, near_bone, reliability

    ph, seg = unseen_knee
    bare = U.segment_unet(ph.ct, U.UNetModel(shipped.network, shipped.card.model_copy(update={"confidence_map": None}), shipped.path))
    assert np.array_equal(bare.labels.array_zyx, seg.labels.array_zyx) and bare.table == seg.table  # the map changes no label nor name
    np.testing.assert_allclose(seg.confidence.array_zyx, apply_confidence_map(bare.confidence.array_zyx, shipped.card.confidence_map), atol=1e-6)
    pred = seg.labels.array_zyx
    for v in seg.table.labels:
        assert seg.table.confidence[v] == pytest.approx(float(bare.confidence.array_zyx[pred == v].mean()), abs=1e-5)
    lut = np.zeros(256, np.uint8)
    for v, name in ph.label_table.labels.items():
        lut[v] = class_of(name)
    truth = lut[ph.labels.array_zyx]
    p_cls = np.zeros(256, np.uint8)
    for v, name in seg.table.labels.items():
        p_cls[v] = class_of(name)
    roi = near_bone(truth > 0, pred > 0)
    right = label_is_right(truth, p_cls[pred], np.zeros(pred.shape, bool))[roi]
    ece_t, _ = reliability(bare.confidence.array_zyx[roi], right)
    ece_map, _ = reliability(seg.confidence.array_zyx[roi], right)
    assert ece_map < 0.5 * ece_t, (ece_map, ece_t)


def test_thorax_bone_mask_with_the_shipped_model(shared_data, shipped) -> None:
    folder = shared_data / "ct_thorax_small"
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    ref = read_volume(folder / "example_seg.nii.gz").array_zyx
    names = {int(k): v for k, v in json.loads((folder / "labels_total_v2.json").read_text()).items()}
    truth = np.isin(ref, [v for v, n in names.items() if n.startswith(("vertebrae_", "rib_"))])
    seg = U.segment_unet(ct, shipped)
    ours = seg.labels.array_zyx > 0
    dice = 2.0 * float((ours & truth).sum()) / float(ours.sum() + truth.sum())
    assert dice >= THORAX_DICE_FLOOR, dice
    # vertebrae and ribs: no class in the model, so no name; never a confident femur / hip / sacrum
    names = set(seg.table.labels.values())
    assert names and all(n.startswith("bone_") for n in names), names
    largest = max(seg.table.labels, key=lambda v: int((seg.labels.array_zyx == v).sum()))
    assert seg.table.confidence[largest] < shipped.card.low_confidence
    assert "not named" in seg.table.why[largest] or "no class" in seg.table.why[largest]
    assert sum("not named" in n for n in seg.notes) == len(names), seg.notes


def test_upper_abdomen_gets_no_limb_name_from_the_shipped_model(shared_data, shipped) -> None:
    """A real upper-abdomen CT (humeri, ribs, lower thoracic vertebrae, sternum): the model has
    none of these classes. No bone of this CT may carry a knee or hip name, and each unnamed
    piece says why. The weights shipped until 2026-12-08 drew 'hip' on both humeri (mean
    confidence 0.64 / 0.77) and the anatomy, naming them humeri (0.99), withheld that; the weights
    since are sure of no name on any piece (p >= 0.9 on 0 % of each), so the network itself
    abstains. Either way, a piece withheld against the anatomy must be a humerus, and its voxels
    carry, like every unnamed voxel, the probability of bone at all, which exceeds that of the
    withheld name (measured 0.80 vs 0.77 and 0.89 vs 0.64)."""
    from orthonav.segmentation.importer import read_dicom_ct

    folder = shared_data / "ct_abdomen_dicom"
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    seg = U.segment_unet(read_dicom_ct(folder), shipped)
    names = set(seg.table.labels.values())
    assert names and all(n.startswith("bone_") for n in names), names
    reasons = ("but the anatomy", "sure of the name on less than", "does not recognise this anatomy", "does not see bone here")
    assert all(any(r in w for r in reasons) for w in seg.table.why.values()), seg.table.why
    withheld = [w for w in seg.table.why.values() if "but the anatomy" in w]
    assert all("humerus" in w for w in withheld), seg.table.why
    lab, conf = seg.labels.array_zyx, seg.confidence.array_zyx
    for v, w in seg.table.why.items():
        if "but the anatomy" in w:
            inside = conf[lab == v]
            assert inside.mean() > seg.table.confidence[v] + 0.01 and inside.min() >= 0.0 and inside.max() <= 1.0, (v, inside.mean())


def _orthonav(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "from orthonav.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def test_synthetic_training_command_with_a_tiny_budget(tmp_path: Path) -> None:
    """``orthonav train-seg --synthetic`` with a tiny budget writes a loadable, calibrated model.

    The command runs in this process (the CLI's own entry point, typer's runner) so that it
    reuses the phantom family that ``test_synth_ct`` builds (about 15 s per family); seed 64
    draws a long-bone field of view (the smallest family) for both the training and the
    calibration case."""
    from typer.testing import CliRunner

    from orthonav.cli.main import app

    out = tmp_path / "w.pt"
    threads = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["train-seg", "--synthetic", str(out), "--cases", "1", "--steps", "2", "--calibration-cases", "1",
                                       "--threads", "1", "--seed", "64"])
    finally:
        torch.set_num_threads(threads)  # --threads 1 set it for this process
    assert res.exit_code == 0, res.output
    model = U.load_model(out)  # weights_only=True inside
    assert model.card.training.iterations == 2 and set(model.card.classes.values()) >= {"femur", "hip"}
    assert model.card.tta_flips == ["x"] and "calibration_nll_fitted" in model.card.results
    assert model.card.results["calibration_nll_fitted"] <= model.card.results["calibration_nll_t1"]
    # the confidence map of the final labels, fitted on the same held-out draw (in-sample ECE)
    from orthonav.segmentation.unet_calibration import check_confidence_map

    assert model.card.confidence_map is not None and check_confidence_map(model.card.confidence_map) is None
    assert model.card.results["calibration_ece_fit_after"] <= model.card.results["calibration_ece_fit_before"]
    # DATA missing without --synthetic: one clear error line, exit code 2
    res = _orthonav("train-seg", str(tmp_path / "x.pt"), cwd=tmp_path)
    assert res.returncode == 2 and "DATA WEIGHTS" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.pt").exists()


def test_planning_scene_colours_bones_by_the_confidence(tmp_path: Path) -> None:
    """attach_confidence: each mesh point gets the mean confidence of its bone's voxels near it."""
    import pyvista as pv

    from orthonav.core.case import Case, LabelTable, write_labels_table
    from orthonav.core.volume import Volume, make_lps_from_ijk, write_volume
    from orthonav.planning.scene import CONFIDENCE_ARRAY, attach_confidence

    case = Case(tmp_path)
    m = make_lps_from_ijk(np.array([1.0, 1.0, 1.0]), np.zeros(3), np.eye(3))
    k, j, i = np.mgrid[0:40, 0:40, 0:40]
    ball = (i - 20.0) ** 2 + (j - 20.0) ** 2 + (k - 20.0) ** 2 <= 12.0**2
    conf = np.where(i < 20, 0.55, 0.95).astype(np.float32)  # the right half (-x) is doubtful
    write_volume(Volume(ball.astype(np.uint8), m), case.labels)
    write_volume(Volume(conf, m), case.confidence)
    sphere = pv.Sphere(radius=12.0, center=(20.0, 20.0, 20.0))
    write_labels_table(case.labels_json, LabelTable(labels={1: "femur"}, backend="unet"))
    out = attach_confidence(case.root, {"femur": sphere, "tibia": sphere})
    c = np.asarray(out["femur"].point_data[CONFIDENCE_ARRAY])
    x = np.asarray(sphere.points)[:, 0]
    assert np.median(c[x < 14]) < 0.6 and np.median(c[x > 26]) > 0.9
    assert CONFIDENCE_ARRAY not in out["tibia"].point_data and CONFIDENCE_ARRAY not in sphere.point_data
    write_labels_table(case.labels_json, LabelTable(labels={1: "femur"}, backend="classical"))  # no learned confidence
    assert CONFIDENCE_ARRAY not in attach_confidence(case.root, {"femur": sphere})["femur"].point_data


def _tube_ct_and_grid():
    """A CT (1 mm voxels) of a hollow bone (cortex 1200 HU, marrow 300 HU) in soft tissue (40 HU)
    with a separate small bone beside it, and the 4 mm grid the network would use."""
    from orthonav.core.volume import Volume, make_lps_from_ijk

    k, j, i = np.mgrid[0:60, 0:60, 0:84].astype(np.float64)
    r = np.hypot(i - 25.0, j - 30.0)
    hu = np.full(r.shape, 40.0)
    tube = (r <= 9.0) & (k >= 5) & (k <= 54)
    hu[tube] = 1200.0
    hu[(r <= 6.5) & (k >= 8) & (k <= 51)] = 300.0
    small = (np.hypot(i - 70.0, j - 30.0) <= 4.0) & (k >= 20) & (k <= 40)
    hu[small] = 1100.0
    ct = Volume(hu.astype(np.int16), make_lps_from_ijk(np.ones(3), np.zeros(3)))
    return ct, tube, small, U.canonical_grid(ct, 4.0)


def _sure_femur_around_the_tube(grid) -> np.ndarray:
    """Class probabilities (background, femur, tibia) on the network grid: femur 0.97 within
    10 mm of the tube's axis (:func:`_tube_ct_and_grid`), background elsewhere."""
    ni, nj, nk = grid.size_ijk
    kk, jj, ii = np.mgrid[0:nk, 0:nj, 0:ni]
    centre = (grid.origin[:, None] + grid.spacing * np.stack([ii.ravel(), jj.ravel(), kk.ravel()])).reshape(3, nk, nj, ni)
    near = (np.hypot(centre[0] - 25.0, centre[1] - 30.0) <= 10.0) & (centre[2] >= 0.0) & (centre[2] <= 60.0)
    prob = np.zeros((3, nk, nj, ni), np.float32)
    prob[0] = np.where(near, 0.03, 1.0)
    prob[1] = np.where(near, 0.97, 0.0)
    return prob


def test_image_decides_the_surface_the_network_the_name_or_abstains() -> None:
    """probabilities_to_labels with hand-made class probabilities: the surface is the image's,
    the name the network's when it is sure of it, else the bone stays unnamed with a reason;
    bone the network does not reach is kept unnamed."""
    ct, tube, small, grid = _tube_ct_and_grid()
    classes = {1: "femur", 2: "tibia"}
    ni, nj, nk = grid.size_ijk
    kk, jj, ii = np.mgrid[0:nk, 0:nj, 0:ni]
    centre = (grid.origin[:, None] + grid.spacing * np.stack([ii.ravel(), jj.ravel(), kk.ravel()])).reshape(3, nk, nj, ni)
    # the network sure of "femur" (0.97) where the tube is, unsure (0.6), or sure but drawing bone far
    # beyond it (radius 20 mm: its bone mostly where the image has none)
    for p_femur, radius, reason in ((0.97, 10.0, None), (0.6, 10.0, "sure of the name on less than"), (0.97, 20.0, "does not recognise")):
        named = reason is None
        near = (np.hypot(centre[0] - 25.0, centre[1] - 30.0) <= radius) & (centre[2] >= 0.0) & (centre[2] <= 60.0)
        prob = np.zeros((3, nk, nj, ni), np.float32)
        prob[0] = np.where(near, 1.0 - p_femur, 1.0)
        prob[1] = np.where(near, p_femur, 0.0)
        labels, conf, abstained = U.probabilities_to_labels(ct, grid, prob, refine=True, classes=classes)
        femur = labels == 1
        got = femur if named else (labels >= 3) & ~small
        dice = 2.0 * float((got & tube).sum()) / float(got.sum() + tube.sum())
        assert dice > 0.97, (p_femur, dice)  # the image's surface, not the 4 mm box
        assert femur.any() == named
        # the small bone beside it: image bone out of the network's reach, kept but not named
        assert set(np.unique(labels[small])) <= {v for v in abstained}
        assert all(a.withheld is None for v, a in abstained.items() if (labels[small] == v).any())
        whys = {a.why for a in abstained.values()}
        assert any("does not see bone here" in w for w in whys), whys
        if reason is not None:
            assert any(reason in w and "not named" in w for w in whys), whys
        # confidence: the network's probability of the label (low where it does not see bone)
        assert float(conf[small].mean()) < 0.1
        if named:
            assert float(np.median(conf[femur])) == pytest.approx(p_femur, abs=0.02)


def test_faint_marrow_inside_a_gapped_cortex_is_bone_where_the_network_sees_bone() -> None:
    """Marrow as faint as soft tissue (60 HU) inside a cortex with a gap at each end (the thin
    end-plate cortex of a coarse scan): the image's 3D cavity fill leaks through the gaps and
    leaves the bone hollow; the pores are enclosed in the slices of two orientations (all but
    the column under the gaps) and the network sees bone there, so they are bone (found on synthetic draws: a 0.6 x 0.6 x 2.5 mm hip
    draw lost 348 of 964 mL inside its bones)."""
    from orthonav.core.volume import Volume
    from orthonav.segmentation.bone_mask import bone_levels
    from orthonav.segmentation.classical import ClassicalParams
    from orthonav.segmentation.unet_labels import image_bone_mask

    ct, tube, _small, grid = _tube_ct_and_grid()
    hu = ct.array_zyx.copy()
    k, j, i = np.mgrid[0 : hu.shape[0], 0 : hu.shape[1], 0 : hu.shape[2]]
    r = np.hypot(i - 25.0, j - 30.0)
    hu[(r <= 6.5) & (k >= 8) & (k <= 51)] = 60  # marrow: soft tissue + 20 HU
    hu[(r <= 1.5) & tube & ((k < 8) | (k > 51))] = 40  # a 3 mm gap in each end cortex
    ct = Volume(hu, ct.lps_from_ijk)
    cp = ClassicalParams()
    image_only = image_bone_mask(hu, ct.spacing_mm, bone_levels(hu, bone_high_hu=cp.bone_high_hu, bone_low_hu=cp.bone_low_hu))
    hollow = 2.0 * float((image_only & tube).sum()) / float(image_only.sum() + tube.sum())
    assert hollow < 0.8, hollow  # the image alone leaves the marrow out
    prob = _sure_femur_around_the_tube(grid)
    labels, _conf, _abstained = U.probabilities_to_labels(ct, grid, prob, refine=True, classes={1: "femur", 2: "tibia"})
    femur = labels == 1
    dice = 2.0 * float((femur & tube).sum()) / float(femur.sum() + tube.sum())
    assert dice > 0.97, dice
    assert not femur[~tube & ((k < 5) | (k > 54))].any()  # nothing beyond the bone's ends
    # Where the network sees no bone the pores stay out (the image alone: kept as bone, hollow).
    prob[0], prob[1] = 1.0, 0.0
    labels, _conf, _abstained = U.probabilities_to_labels(ct, grid, prob, refine=True, classes={1: "femur", 2: "tibia"})
    kept = labels > 0
    assert 2.0 * float((kept & tube).sum()) / float(kept.sum() + tube.sum()) < 0.8


def test_marrow_pores_are_filled_but_not_joint_spaces_nor_sheets() -> None:
    """``marrow_pores``: a hole inside one bone of the network's is marrow; a hole as wide between
    two of its bones (a joint space closed off by blurred rims) and a thin sheet are not."""
    from orthonav.segmentation.unet_labels import marrow_pores

    shell = np.zeros((30, 30, 30), bool)
    shell[5:25, 5:25, 5:25] = True
    hole = np.zeros_like(shell)
    hole[9:21, 9:21, 9:21] = True
    bone = shell & ~hole
    network_bone = np.ones(shell.shape, bool)
    one = np.ones(shell.shape, np.uint8)
    two = one.copy()
    two[:, :, 15:] = 2  # the right half of the rim is another bone
    sp = np.ones(3)
    assert np.array_equal(marrow_pores(bone, network_bone, one, sp), hole)
    assert not marrow_pores(bone, network_bone, two, sp).any()
    assert not marrow_pores(bone, ~hole, one, sp).any()  # the network sees no bone in it
    sheet = np.zeros_like(shell)
    sheet[9:21, 9:21, 14:16] = True  # 2 mm thick
    assert not marrow_pores(shell & ~sheet, network_bone, one, sp).any()


def test_a_table_the_network_does_not_see_is_left_out_not_kept_as_bone() -> None:
    """Dense voxels the network does not see as bone that are a thin flat slab by shape (the
    classical backend's table rule) are left out with a note; a small bone it does not see stays
    bone, unnamed. Found on the synthetic draws: a 700-940 mL table was kept as ``bone_1``."""
    from orthonav.core.volume import Volume

    ct, tube, small, grid = _tube_ct_and_grid()
    hu = ct.array_zyx.copy()
    slab = np.zeros(hu.shape, bool)
    slab[:, 50:58, :] = True  # 60 x 84 mm, 8 mm thick, under the bones (j = 50-57)
    hu[slab] = 600
    ct = Volume(hu, ct.lps_from_ijk)
    prob = _sure_femur_around_the_tube(grid)
    left_out: list[str] = []
    labels, _conf, abstained = U.probabilities_to_labels(ct, grid, prob, refine=True, classes={1: "femur", 2: "tibia"}, left_out=left_out)
    assert not labels[slab].any()
    assert len(left_out) == 1 and "thin flat slab" in left_out[0] and "table" in left_out[0], left_out
    assert (labels[tube] == 1).mean() > 0.95  # the bone is still the femur
    assert (labels[small] >= 3).mean() > 0.9 and all(a.withheld is None for a in abstained.values())  # still bone, unnamed


def test_plan_warnings_name_low_confidence_and_unnamed_bones(tmp_path):
    """What ``plan`` prints for a U-Net case: a bone below 0.8, and an unnamed piece with the
    reason its name was withheld (its confidence is that of the withheld name)."""
    from orthonav.core.case import Case, LabelTable
    from orthonav.segmentation.pipeline import low_confidence_warnings

    case = Case(tmp_path)
    case.labels_json.parent.mkdir(parents=True, exist_ok=True)
    table = LabelTable(labels={1: "femur", 2: "bone_1", 3: "tibia"}, backend="unet", confidence={1: 0.7, 2: 0.3, 3: 0.95},
                       why={2: "agreement 12 % < 60 %"})
    case.labels_json.write_text(table.model_dump_json(), encoding="utf-8")
    warnings = low_confidence_warnings(tmp_path)
    assert len(warnings) == 2
    assert warnings[0].startswith("low confidence: femur") and "0.70" in warnings[0]
    assert warnings[1].startswith("unnamed bone: bone_1") and "agreement 12 % < 60 %" in warnings[1] and "orthonav name" in warnings[1]





def _two_femurs_and_a_hip(p_femur_b: float, spill: bool, a_len: int = 16) -> tuple[np.ndarray, ...]:
    """A piece of image bone: a femur (A, its own core) joined by a thin bridge to a block the
    image does not split (B: the other femur's head in its hip, the joint unresolved). The
    network's classes have no side: both femurs are class 1, the hip class 2; its probability
    is 0.97 everywhere but on B's femur part, ``p_femur_b``. The bridge is the hip's, reaching
    B's hip part; with ``spill`` it is a femur's, reaching B's femur part, so that the network's
    femur is one connected part from A's core into B: A's femur spilling into B. A is
    ``a_len`` voxels long (B's femur part is 14)."""
    piece = np.zeros((20, 20, 60), bool)
    best = np.zeros(piece.shape, np.uint8)
    piece[2:18, 2:18, 18 - a_len : 18] = True
    best[2:18, 2:18, 18 - a_len : 18] = 1  # A: a femur
    piece[2:18, 2:18, 22:58] = True
    best[2:18, 2:18, 22:58] = 2  # B: the hip (the larger part: the core's top class) ...
    femur_b = slice(22, 36) if spill else slice(44, 58)
    best[2:18, 2:18, femur_b] = 1  # ... and a femur's part
    piece[9:11, 9:11, 18:22] = True  # 2 x 2 voxels: gone in the erosion, so A and B are two cores
    best[9:11, 9:11, 18:22] = 1 if spill else 2
    p_best = np.where(piece, 0.97, 0.0).astype(np.float32)
    p_best[2:18, 2:18, femur_b] = p_femur_b
    hu = np.where(piece, 1000.0, 0.0).astype(np.float32)  # uniform: no joint valley
    return hu, piece, best, np.ones(piece.shape, bool), p_best, femur_b


def test_a_femur_unresolved_in_its_hip_keeps_its_name_though_the_other_femur_has_a_core() -> None:
    """_split_piece: a bone the image does not separate from its neighbour keeps the network's
    split when the network is sure of it and it has no core of its own. That is per bone (a
    connected part of the network's class), not per class: classes have no side, and the other
    femur's core (A) is not this femur's (found on a synthetic hip draw at 1.9 mm, whose right
    femur became hip_right, named at 0.56). Where the network is not sure of it (p < 0.9), or
    where it is the rest of a bone with a core of its own (a spill from A, even a sure one: the
    network's 'hip' holds 34-45 % of each femur's core on the full-size hip phantom, sure on
    45-47 % of it), the core takes its bone. The rest of a bone is smaller than the bone's
    body in its own cores: a part larger than that body is a bone the image did not separate,
    kept where the network is sure of it (a_len = 5: A's core holds 592 voxels of the femur's
    part, B's core 2,552; a_len = 16: 2,748, so the spill is the rest;
    found 2026-12-07 on random small hip phantoms, where 23 mL cores of a hip bone's pubis made
    both hip bones "the rest" of the hip class, given to the femurs and the sacrum: hip bones
    0.16-0.33)."""
    from orthonav.segmentation.unet_labels import _split_piece

    spacing = np.array([1.0, 1.0, 1.0])
    for p_femur_b, spill, a_len, femur_kept in ((0.97, False, 16, True), (0.6, False, 16, False), (0.97, True, 16, False), (0.97, True, 5, True)):
        hu, piece, best, reach, p_best, femur_b = _two_femurs_and_a_hip(p_femur_b, spill, a_len)
        out = np.zeros(piece.shape, np.uint8)
        out[piece] = _split_piece(hu, piece, best, reach, p_best, spacing, 0.1)
        inner = slice(femur_b.start + 2, femur_b.stop - 2)  # away from the part's edges
        assert (out[4:16, 4:16, 19 - a_len : 17] == 1).all()  # A stays a femur either way
        got = out[2:18, 2:18, inner]
        assert (got == (1 if femur_kept else 2)).all(), (p_femur_b, spill, np.unique(got, return_counts=True))
        assert (out[2:18, 2:18, 40:44] == 2).all()


@pytest.mark.slow
def test_hip_bones_with_small_cores_of_their_own_are_not_given_to_their_neighbours(shipped) -> None:
    """The small hip phantom of seed 57 (scale 1.04, 4 deg jitter): the image's joint valleys cut
    two 23 mL pieces off the hip bones as cores of their own, while the hip bones' bodies shared
    cores with a femur and the sacrum. Taken as "the rest" of a hip bone separated elsewhere,
    both bodies went to their neighbours (hip bones 0.326 / 0.162, sacrum 0.581). Measured with
    the fix: every bone 0.955-0.980, all five named."""
    from orthonav.phantoms.hip import make_hip_phantom

    ph = make_hip_phantom(seed=57, small=True, scale=float(np.random.default_rng(57).uniform(0.9, 1.1)), pose_jitter_deg=4.0)
    seg = U.segment_unet(ph.ct, shipped)
    assert sorted(seg.table.labels.values()) == sorted(ph.label_table.labels.values())
    truth, pred = ph.labels.array_zyx, seg.labels.array_zyx
    for v, name in ph.label_table.labels.items():
        a, b = pred == seg.table.value_of(name), truth == v
        assert 2.0 * float((a & b).sum()) / float(a.sum() + b.sum()) >= 0.93, name
