"""Occupancy IoU / precision / recall / F1 and Chamfer distance on hand-computed grids and point sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.eval.metrics.occupancy import (
    chamfer_distance,
    nearest_distances,
    occupancy_iou,
    occupancy_scores,
)

PRED = np.array([[1, 1, 0],
                 [0, 1, 0],
                 [0, 0, 1]], dtype=bool)
GT = np.array([[1, 0, 0],
               [0, 1, 1],
               [0, 0, 0]], dtype=bool)


def test_occupancy_scores_hand_counts():
    s = occupancy_scores(PRED, GT)
    # TP = (0,0), (1,1); FP = (0,1), (2,2); FN = (1,2); TN = 4
    assert (s.tp, s.fp, s.fn, s.tn, s.n_cells) == (2, 2, 1, 4, 9)
    assert s.iou == pytest.approx(2 / 5)
    assert s.precision == pytest.approx(2 / 4)
    assert s.recall == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s.free_iou == pytest.approx(4 / 7)
    assert s.miou == pytest.approx((2 / 5 + 4 / 7) / 2)
    assert occupancy_iou(PRED, GT) == pytest.approx(2 / 5)


def test_mask_leaves_unobserved_cells_out():
    mask = np.ones_like(PRED)
    mask[2, 2] = False  # the FP at (2, 2) is unobserved
    mask[1, 2] = False  # and so is the FN
    s = occupancy_scores(PRED, GT, mask)
    assert (s.tp, s.fp, s.fn, s.tn, s.n_cells) == (2, 1, 0, 4, 7)
    assert occupancy_iou(PRED, GT, mask) == pytest.approx(2 / 3)


def test_empty_and_invalid_inputs():
    z = np.zeros((2, 2), dtype=bool)
    assert math.isnan(occupancy_iou(z, z))
    assert occupancy_iou(z, z, empty=1.0) == 1.0
    s = occupancy_scores(z, z)
    assert s.free_iou == 1.0 and math.isnan(s.precision)
    with pytest.raises(TypeError):
        occupancy_iou(PRED.astype(float), GT)
    with pytest.raises(ValueError):
        occupancy_iou(PRED, GT[:2])
    with pytest.raises(ValueError):
        occupancy_iou(PRED, GT, np.ones((3, 3)))


def test_chamfer_tiny_sets():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0]])
    r = chamfer_distance(a, b)  # squared: a->b (0 + 1)/2, b->a 0
    assert (r.a_to_b, r.b_to_a, r.chamfer) == pytest.approx((0.5, 0.0, 0.5))
    a = np.array([[0.0, 0, 0]])
    b = np.array([[3.0, 4, 0], [0, 0, 2]])
    r = chamfer_distance(a, b)  # a->b: min(5, 2)^2 = 4; b->a: (25 + 4)/2
    assert (r.a_to_b, r.b_to_a, r.chamfer) == pytest.approx((4.0, 14.5, 18.5))
    r = chamfer_distance(a, b, squared=False)
    assert (r.a_to_b, r.b_to_a, r.chamfer) == pytest.approx((2.0, 3.5, 5.5))
    r = chamfer_distance(a, b, truncate=3.0)  # the 5 m distance is capped at 3 m
    assert (r.a_to_b, r.b_to_a, r.chamfer) == pytest.approx((4.0, 6.5, 10.5))
    assert chamfer_distance(b, a).chamfer == pytest.approx(18.5)


def test_chamfer_identical_and_empty_sets():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)) * 20 + 500.0  # far from the origin: no cancellation
    assert chamfer_distance(pts, pts[::-1]).chamfer == 0.0
    e = np.zeros((0, 3))
    assert chamfer_distance(e, e).chamfer == 0.0
    r = chamfer_distance(pts, e)
    assert r.a_to_b == math.inf and r.b_to_a == 0.0
    assert chamfer_distance(pts, e, truncate=2.0).chamfer == pytest.approx(4.0)


def test_chunked_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    q = rng.uniform(-10, 10, (137, 3))
    r = rng.uniform(-10, 10, (59, 3))
    brute = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(q, r, chunk_elems=100), brute, rtol=1e-12)
    np.testing.assert_allclose(nearest_distances(q, r), brute, rtol=1e-12)
