"""Scores from count tables equal the same scores from the cells; real-data truth; split names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.boxes import Box3D
from perception_nodes.eval import auroc, expected_calibration_error
from perception_nodes.eval.metrics.counts import (
    LEVELS,
    auroc_from_counts,
    bootstrap_frames,
    ece_from_counts,
    scores_from_counts,
)
from perception_nodes.eval.real_truth import fit_ground_plane, real_occupancy_truth
from perception_nodes.learning.config import BagSource
from perception_nodes.learning.data import describe_split


def _cells(rng, n=5000):
    level = rng.integers(0, LEVELS, n)
    y = rng.random(n) < level / 100.0 * 0.8  # miscalibrated on purpose
    return level, y


def _hist(level, y):
    return np.bincount(y.astype(int) * LEVELS + level, minlength=2 * LEVELS).reshape(2, LEVELS)


def test_scores_from_counts_match_the_cellwise_definitions():
    rng = np.random.default_rng(3)
    level, y = _cells(rng)
    p = level / 100.0
    s = scores_from_counts(_hist(level, y))
    pred = p > 0.5
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    eps = 64 * np.finfo(np.float64).eps * len(p)
    assert s["iou"] == pytest.approx(tp / (tp + fp + fn), abs=eps)
    assert s["precision"] == pytest.approx(tp / (tp + fp), abs=eps)
    assert s["recall"] == pytest.approx(tp / (tp + fn), abs=eps)
    assert s["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=eps)
    pc = np.clip(p, 0.005, 0.995)
    assert s["nll"] == pytest.approx(-np.mean(y * np.log(pc) + (~y) * np.log(1 - pc)), abs=eps)
    ref = expected_calibration_error(p, y, n_bins=10)
    assert s["ece"] == pytest.approx(ref.ece, abs=eps)
    full = ece_from_counts(_hist(level, y), n_bins=10)
    assert full.ece == pytest.approx(ref.ece, abs=eps) and (full.bin_count == ref.bin_count).all()


def test_auroc_from_counts_matches_the_exact_rank_statistic():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, LEVELS, 700), rng.integers(20, LEVELS, 300)  # many ties
    got = auroc_from_counts(np.bincount(a, minlength=LEVELS), np.bincount(b, minlength=LEVELS))
    assert got == pytest.approx(auroc(a.astype(float), b.astype(float)), abs=1e-12)
    assert math.isnan(auroc_from_counts(np.zeros(LEVELS), np.ones(LEVELS)))


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_frames():
    rng = np.random.default_rng(5)
    frames = np.stack([_hist(*_cells(rng, 200)) for _ in range(40)])

    def stat(sums):
        return {"brier": scores_from_counts(sums)["brier"]}

    est = scores_from_counts(frames.sum(0))["brier"]
    lo, hi = bootstrap_frames(frames, stat, n_boot=300)["brier"]
    lo4, hi4 = bootstrap_frames(frames[:4], stat, n_boot=300)["brier"]
    assert lo < est < hi and hi - lo < hi4 - lo4


def test_real_truth_fits_a_tilted_ground_and_marks_boxes_occupied():
    rng = np.random.default_rng(6)
    x, y = rng.uniform(-30, 30, 20000), rng.uniform(-30, 30, 20000)
    z = -1.73 + 0.02 * x + rng.normal(0, 0.02, x.size)  # a 2 % slope
    car = Box3D("Car", (10.0, 0.0, 0.75 + 0.2), (4.0, 2.0, 1.5), 0.0)  # base_link, on the slope
    cx, cy = rng.uniform(8.5, 11.5, 400), rng.uniform(-0.8, 0.8, 400)
    wall_x, wall_y = np.full(300, 20.0), rng.uniform(5, 10, 300)  # an unlabelled obstacle
    pts = np.column_stack([np.r_[x, cx, wall_x], np.r_[y, cy, wall_y],
                           np.r_[z, rng.uniform(-1.5, -0.4, 400), rng.uniform(-1.3, 0.5, 300)]])
    plane = fit_ground_plane(pts)
    assert plane.normal[2] > 0.99 and abs(plane.normal[0] / plane.normal[2] + 0.02) < 0.005
    occ, scored = real_occupancy_truth(pts, [car], (-40.0, -40.0), 0.5, (160, 160))
    row, col = int((0.0 + 40) / 0.5), int((10.0 + 40) / 0.5)
    assert occ[row, col] and scored[row, col]
    assert not scored[int((7.5 + 40) / 0.5), int((20.0 + 40) / 0.5)]  # the wall is not called free
    free = scored & ~occ
    assert free.sum() > 1000
    assert not scored[int(40 / 0.5), int((-10 + 40) / 0.5)]  # behind the car: outside the camera's view


def test_splits_are_named_by_scenario_type_and_lidar():
    d = describe_split([BagSource(generate={"scenario": "highway", "lidar": "vlp32"}),
                        BagSource(generate={"scenario": "urban_street"})])
    assert d == {"scenarios": ["highway", "urban_street"], "lidars": ["hdl64", "vlp32"],
                 "name": "highway+urban_street / hdl64+vlp32"}
