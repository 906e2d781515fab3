"""The U-Net confidence's recalibration map (issue 15 item 3): isotonic fit, card checks, use.

The fit is checked on scores whose true reliability curve is known (drawn right with a known
probability for each score), the card refuses a map that is not monotone, and the shipped
model applies its map to every voxel (its own figures on unseen cases are in
``test_unet_shipped.py`` and ``bench_unet_shipped.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from orthonav.core.errors import InputError, SchemaError
from orthonav.segmentation import unet as U
from orthonav.segmentation.unet_calibration import (
    apply_confidence_map,
    check_confidence_map,
    fit_confidence_map,
    label_is_right,
    reliability,
)


def _under_confident(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores in [0, 1] that are right with probability 0.45 + 0.55 sqrt(score) (more often than
    they say: the shipped U-Net's failure mode); returns scores, outcomes, true probabilities."""
    conf = rng.beta(2.0, 1.2, n)
    p = 0.45 + 0.55 * np.sqrt(conf)
    return conf, rng.random(n) < p, p


def test_isotonic_map_recovers_a_known_reliability_curve() -> None:
    rng = np.random.default_rng(5)
    conf, right, _ = _under_confident(rng, 200_000)
    knots = fit_confidence_map(conf, right)
    assert check_confidence_map(knots) is None
    grid = np.linspace(0.1, 0.95, 12)
    np.testing.assert_allclose(apply_confidence_map(grid, knots), 0.45 + 0.55 * np.sqrt(grid), atol=0.025)
    # on fresh scores from the same source: the map removes the miscalibration
    conf2, right2, _ = _under_confident(np.random.default_rng(6), 200_000)
    before, _ = reliability(conf2, right2)
    after, rows = reliability(apply_confidence_map(conf2, knots), right2)
    assert before > 0.15 and after < 0.01, (before, after)
    assert all(abs(c - a) < 0.03 for c, a, n in rows if n > 2000)


def test_map_keeps_the_order_of_the_scores() -> None:
    """Monotone: a voxel less confident than another before is not more confident after, so low
    confidence still marks the errors."""
    rng = np.random.default_rng(7)
    conf = rng.random(50_000)
    right = rng.random(50_000) < np.where(conf < 0.5, 0.9, 0.6)  # an order the data contradicts
    knots = fit_confidence_map(conf, right)
    x = np.sort(rng.random(1000))
    assert np.all(np.diff(apply_confidence_map(x, knots)) >= 0)
    y = np.array([k[1] for k in knots])
    assert y.max() - y.min() < 0.02  # no order in the data: the map is flat at the mean
    assert y.mean() == pytest.approx(right.mean(), abs=0.02)


def test_map_in_blocks_and_in_place_is_the_piecewise_linear_map() -> None:
    """The map is applied in blocks, the voxels at exactly 1 at once (a CT's background), and
    can write over its input: each voxel must still be np.interp of the knots, across block
    edges (blocks of 2^22 voxels), at the knots, at 0 and at 1."""
    rng = np.random.default_rng(3)
    knots = [[0.0, 0.3], [0.2, 0.35], [0.5, 0.7], [0.9, 0.8], [1.0, 0.97]]
    a = np.asarray(knots)
    conf = rng.random((70, 256, 256)).astype(np.float32)  # 4.6 M voxels: two blocks
    conf[rng.random(conf.shape) < 0.6] = 1.0
    conf[0, 0, :6] = [0.0, 0.2, 0.5, 0.9, 1.0, 0.1]
    want = np.interp(conf.astype(np.float64), a[:, 0], a[:, 1]).astype(np.float32)
    np.testing.assert_array_equal(apply_confidence_map(conf, knots), want)
    same = conf.copy()
    assert apply_confidence_map(same, knots, out=same) is same
    np.testing.assert_array_equal(same, want)
    with pytest.raises(ValueError, match="float32"):
        apply_confidence_map(conf, knots, out=np.empty(conf.shape, np.float64))


def test_fit_refuses_bad_input() -> None:
    with pytest.raises(InputError, match="too few"):
        fit_confidence_map(np.full(10, 0.5), np.ones(10, bool))
    with pytest.raises(InputError, match="within"):
        fit_confidence_map(np.full(2000, 1.5), np.ones(2000, bool))
    with pytest.raises(InputError, match="differ in size"):
        fit_confidence_map(np.full(2000, 0.5), np.ones(1999, bool))


def test_unnamed_bone_is_right_wherever_there_is_bone() -> None:
    truth = np.array([0, 1, 2, 0, 2])
    pred = np.array([0, 1, 1, 0, 0])
    unnamed = np.array([False, False, False, True, True])
    assert label_is_right(truth, pred, unnamed).tolist() == [True, True, False, False, True]


def test_card_refuses_a_map_that_is_not_monotone(tmp_path: Path) -> None:
    arch = U.Architecture(num_classes=2, base_channels=4, levels=3, patch_size=16)
    card = U.ModelCard(classes={1: "femur"}, spacing_mm=2.0, hu_window=(-300.0, 3000.0), architecture=arch)
    net = U.build_network(arch)
    for bad, why in (([(0.0, 0.5), (0.5, 0.9), (1.0, 0.8)], "must not fall"), ([(0.0, 0.5), (0.7, 0.9)], "from 0 to 1"), ([(0.0, 0.5)], "at least two")):
        with pytest.raises(SchemaError, match=why):
            U.save_weights(net, card.model_copy(update={"confidence_map": bad}), tmp_path / "w.pt")
    # a version-3 card with a good map round-trips; a card without one (version 2) still reads
    good = [(0.0, 0.4), (0.5, 0.7), (1.0, 1.0)]
    path = U.save_weights(net, card.model_copy(update={"confidence_map": good}), tmp_path / "w.pt")
    assert U.load_model(path).card.confidence_map == good
    payload = torch.load(path, weights_only=True)
    payload["model_card"].pop("confidence_map")
    payload["model_card"]["schema_version"] = 2
    torch.save(payload, tmp_path / "v2.pt")
    assert U.load_model(tmp_path / "v2.pt").card.confidence_map is None


def test_shipped_card_holds_a_fitted_map() -> None:
    card = U.load_model(U.SHIPPED_WEIGHTS).card
    assert card.confidence_map is not None and check_confidence_map(card.confidence_map) is None
    fit = card.results
    assert fit["calibration_ece_fit_after"] < fit["calibration_ece_fit_before"]
