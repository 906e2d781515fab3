"""Dice / HD95 / MSD against closed-form answers (anisotropic spacing handled in mm)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from orthonav.core.case import LabelTable, write_labels_table
from orthonav.core.volume import Volume, make_lps_from_ijk, write_volume
from orthonav.segmentation.evaluate import (
    evaluate_paths,
    evaluate_segmentation,
    score_masks,
    scores_table,
    write_scores_json,
)


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def test_shifted_box_scores_are_exact():
    """A 20x20x20 voxel box and the same box shifted by 2 voxels along k (spacing 3 mm along k)."""
    spacing_ijk = np.array([0.5, 0.7, 3.0])
    a = _box((40, 40, 40), (10, 10, 10), (30, 30, 30))
    b = _box((40, 40, 40), (12, 10, 10), (32, 30, 30))
    s = score_masks(b, a, spacing_ijk)
    assert s.dice == pytest.approx(2 * 18 / 40)
    # The end faces moved by 2 voxels = 6 mm; side faces did not move: HD95 picks the 6 mm faces
    # only when they are over 5% of the border, which they are (2 faces of 6 out of ~6 faces).
    assert s.hd95_mm == pytest.approx(6.0)
    assert 0.0 < s.msd_mm < 6.0
    same = score_masks(a, a, spacing_ijk)
    assert (same.dice, same.hd95_mm, same.msd_mm) == (1.0, 0.0, 0.0)


def test_missing_and_extra_bones_and_json(tmp_path):
    m = make_lps_from_ijk([1.0, 1.0, 2.0], [0.0, 0.0, 0.0])
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:10, 5:10, 5:10] = 1
    truth[12:18, 12:18, 12:18] = 2
    pred = truth.copy()
    pred[pred == 2] = 0
    pred[1:3, 1:3, 1:3] = 3
    t_table = LabelTable(labels={1: "femur", 2: "tibia"})
    p_table = LabelTable(labels={1: "femur", 3: "patella"})
    scores = evaluate_segmentation(Volume(pred, m), p_table, Volume(truth, m), t_table)
    assert list(scores) == ["femur", "tibia", "patella"]
    assert scores["femur"].dice == 1.0
    assert scores["tibia"].dice == 0.0 and scores["tibia"].hd95_mm == float("inf")
    assert scores["patella"].voxels_truth == 0
    out = write_scores_json(scores, tmp_path / "scores.json")
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["tibia"]["hd95_mm"] is None and data["femur"]["dice"] == 1.0
    assert "femur" in scores_table(scores)
    # The same through files (pred as a case folder, truth as a label file with its table).
    write_volume(Volume(pred, m), tmp_path / "case" / "labels.nii.gz")
    write_labels_table(tmp_path / "case" / "labels.json", p_table)
    write_volume(Volume(truth, m), tmp_path / "t" / "truth.nii.gz")
    write_labels_table(tmp_path / "t" / "truth.json", t_table)
    again = evaluate_paths(tmp_path / "case", tmp_path / "t" / "truth.nii.gz")
    assert again["femur"].dice == 1.0 and again["tibia"].dice == 0.0


def test_prediction_on_another_grid_is_resampled():
    """Truth at 1 mm, prediction of the same sphere at 0.5 mm: Dice close to 1, HD95 about a voxel."""
    def sphere(spacing, n):
        m = make_lps_from_ijk([spacing] * 3, [-(n - 1) * spacing / 2] * 3)
        kk, jj, ii = np.mgrid[:n, :n, :n]
        p = np.stack([ii, jj, kk], -1).reshape(-1, 3) * spacing - (n - 1) * spacing / 2
        return Volume((np.linalg.norm(p, axis=1) < 10).reshape(n, n, n).astype(np.uint8), m)

    t = LabelTable(labels={1: "patella"})
    s = evaluate_segmentation(sphere(0.5, 61), t, sphere(1.0, 31), t)["patella"]
    assert s.dice > 0.97 and s.hd95_mm <= 1.0
