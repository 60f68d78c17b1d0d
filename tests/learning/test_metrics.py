"""Validation metrics: hand-computed cases, and agreement with perception_nodes.eval.metrics when present."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.learning.metrics import (
    expected_calibration_error,
    local_ece,
    local_occupancy_scores,
    occupancy_scores,
)


def test_iou_precision_recall_over_masked_cells():
    prob = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.9])
    occ = np.array([1, 0, 1, 1, 0, 1])
    mask = np.array([1, 1, 1, 1, 1, 0], bool)  # the last cell (a hit) is not observed
    s = local_occupancy_scores(prob, occ, mask)
    # predicted occupied: cells 0, 1, 3; truth: 0, 2, 3 -> TP 2, FP 1, FN 1
    assert s == {"iou": 0.5, "precision": 2 / 3, "recall": 2 / 3}
    assert math.isnan(local_occupancy_scores([0.1], [0])["iou"])


def test_ece_hand_values():
    # bin [0.8, 0.9]: mean p 0.85, frequency 0.5 -> |0.35| · 2/4; bin [0.1, 0.2]: 0.15 vs 0 -> 0.15 · 2/4
    prob = np.array([0.81, 0.89, 0.11, 0.19])
    occ = np.array([1, 0, 0, 0])
    assert local_ece(prob, occ, bins=10) == pytest.approx(0.35 / 2 + 0.15 / 2)
    assert local_ece(np.full(10, 0.3), np.r_[np.ones(3), np.zeros(7)], bins=10) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(local_ece([0.5], [1], np.array([False])))


def test_local_versions_agree_with_the_eval_package():
    pytest.importorskip("perception_nodes.eval.metrics.calibration")
    rng = np.random.default_rng(0)
    prob = rng.random(5000)
    occ = rng.random(5000) < prob**2
    mask = rng.random(5000) < 0.8
    assert occupancy_scores(prob, occ, mask) == pytest.approx(local_occupancy_scores(prob, occ, mask))
    assert expected_calibration_error(prob, occ, mask, bins=10) == pytest.approx(local_ece(prob, occ, mask, bins=10))
