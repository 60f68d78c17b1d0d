"""ECE (binary, top-label, classwise) with hand-binned examples, and the reliability diagram PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.eval.metrics.calibration import (
    classwise_ece,
    expected_calibration_error,
    expected_calibration_error_multiclass,
    reliability_diagram,
)


def test_binary_ece_hand_binned():
    p = np.array([0.1, 0.15, 0.3, 0.35, 0.8, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1])
    r = expected_calibration_error(p, y, n_bins=5)
    # Bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]; 0.8 sits on an edge and belongs to (.6, .8].
    assert r.bin_count.tolist() == [2, 2, 0, 1, 1]
    np.testing.assert_allclose(r.bin_confidence, [0.125, 0.325, np.nan, 0.8, 0.9])
    np.testing.assert_allclose(r.bin_accuracy, [0.0, 0.5, np.nan, 1.0, 1.0])
    # ECE = (2 * .125 + 2 * .175 + .2 + .1) / 6 = .15; MCE = .2
    assert r.ece == pytest.approx(0.15)
    assert r.mce == pytest.approx(0.2)
    np.testing.assert_allclose(r.bin_edges, np.linspace(0, 1, 6))


def test_binary_ece_bin_edges_are_right_closed():
    r = expected_calibration_error(np.array([0.0, 0.5, 1.0]), np.array([0, 1, 1]), n_bins=2)
    # 0 -> first bin, 0.5 -> first bin (0, .5], 1 -> last bin
    assert r.bin_count.tolist() == [2, 1]
    assert r.ece == pytest.approx((2 * abs(0.5 - 0.25) + 0) / 3)


def test_binary_ece_mask_and_top_label_mode():
    p = np.array([[0.9, 0.25], [0.6, 0.4]])
    y = np.array([[1, 0], [0, 1]])
    # top label: predictions 1, 0, 1, 0 with confidences .9, .75, .6, .6, correct 1, 1, 0, 0.
    r = expected_calibration_error(p, y, n_bins=5, mode="top_label")
    assert r.bin_count.tolist() == [0, 0, 2, 1, 1]
    assert r.ece == pytest.approx((2 * 0.6 + 0.25 + 0.1) / 4)
    assert r.mce == pytest.approx(0.6)
    mask = np.array([[True, True], [False, True]])
    r = expected_calibration_error(p, y, n_bins=5, mask=mask)  # positive mode over 3 observed cells
    assert r.n == 3
    # .25 (label 0) and .4 (label 1, on the edge) share (.2, .4]: conf .325, freq .5; .9 -> (.8, 1], gap .1
    assert r.ece == pytest.approx((2 * 0.175 + 0.1) / 3)


def test_binary_ece_of_calibrated_samples_is_small():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = rng.uniform(size=p.size) < p
    assert expected_calibration_error(p, y).ece < 0.01
    assert expected_calibration_error(p ** 3, y).ece > 0.1  # under-confident for occupied cells


def test_binary_ece_validation():
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([1.2]), np.array([1]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([0.2]), np.array([2]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([0.2, 0.3]), np.array([1]))
    r = expected_calibration_error(np.array([0.2]), np.array([1]), mask=np.array([False]))
    assert math.isnan(r.ece) and r.n == 0


def test_top_label_multiclass_hand_binned():
    probs = np.array([[0.7, 0.2, 0.1],
                      [0.35, 0.55, 0.1],
                      [0.4, 0.4, 0.2],   # tie: argmax takes class 0
                      [0.1, 0.1, 0.8]])
    labels = np.array([0, 2, 1, 2])
    r = expected_calibration_error_multiclass(probs, labels, n_bins=5)
    # conf .7, .55, .4, .8; correct 1, 0, 0, 1. Bins: .4 -> (.2,.4], .55 -> (.4,.6], .7 and .8 -> (.6,.8]
    assert r.bin_count.tolist() == [0, 1, 1, 2, 0]
    np.testing.assert_allclose(r.bin_confidence[1:4], [0.4, 0.55, 0.75])
    np.testing.assert_allclose(r.bin_accuracy[1:4], [0.0, 0.0, 1.0])
    assert r.ece == pytest.approx((0.4 + 0.55 + 2 * 0.25) / 4)
    assert r.mce == pytest.approx(0.55)


def test_classwise_ece_is_mean_of_one_vs_rest():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(500, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, 500)
    mean, per = classwise_ece(probs, labels, n_bins=10)
    direct = [expected_calibration_error(probs[:, k], labels == k, n_bins=10).ece for k in range(3)]
    assert mean == pytest.approx(np.mean(direct))
    assert [p.ece for p in per] == pytest.approx(direct)
    # two classes: top-label ECE equals the binary top-label ECE of p_1
    p1 = probs[:, 0] / (probs[:, 0] + probs[:, 1])
    two = np.stack([1 - p1, p1], 1)
    yb = labels % 2
    a = expected_calibration_error_multiclass(two, yb, n_bins=10)
    b = expected_calibration_error(p1, yb, n_bins=10, mode="top_label")
    assert not np.any(p1 == 0.5)  # ties would be broken differently (argmax vs p >= 0.5)
    assert a.ece == pytest.approx(b.ece, abs=1e-12)


def test_multiclass_mask_and_validation():
    probs = np.array([[[0.9, 0.1], [0.2, 0.8]]])
    labels = np.array([[0, 0]])
    r = expected_calibration_error_multiclass(probs, labels, mask=np.array([[True, False]]), n_bins=10)
    assert r.n == 1 and r.ece == pytest.approx(0.1)
    with pytest.raises(ValueError):
        expected_calibration_error_multiclass(probs, np.array([[0, 2]]))


def test_reliability_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(size=1000)
    r = expected_calibration_error(p, rng.uniform(size=1000) < p ** 2, n_bins=10)
    out = reliability_diagram(r, tmp_path / "sub" / "rel.png", "occupancy")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # also with empty bins
    r2 = expected_calibration_error(np.array([0.05, 0.95]), np.array([0, 1]), n_bins=10)
    assert reliability_diagram(r2, tmp_path / "rel2.png", "sparse").exists()
