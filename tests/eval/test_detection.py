"""KITTI AP (R40/R11) and nuScenes mAP / TP errors / NDS on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes.boxes import Box3D
from perception_nodes.eval.metrics.detection import (
    _interp_like_numpy,
    kitti_ap,
    nuscenes_ap_from_pr,
    nuscenes_map,
    yaw_difference,
)


def car(x, y=0.0, score=1.0, label="Car", l=4.0, w=2.0, h=1.5, z=0.0, yaw=0.0) -> Box3D:
    return Box3D(label, (x, y, z), (l, w, h), yaw, score=score)


# ------------------------------------------------------------------------------------------ KITTI
def three_gt_four_pred():
    gt = [[car(0), car(10), car(20)]]
    pred = [[car(0, score=0.9),  # TP on GT0
             car(40, score=0.8),  # FP (nothing there)
             car(10, score=0.7),  # TP on GT1
             car(0.1, score=0.6)]]  # duplicate of GT0 (IoU 0.95): FP because GT0 is taken
    return gt, pred


def test_kitti_r40_hand_case():
    gt, pred = three_gt_four_pred()
    r = kitti_ap(gt, pred, "Car")
    # PR after each detection: (R, P) = (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2).
    np.testing.assert_allclose(r.pr_curve.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r.pr_curve.precision, [1, 1 / 2, 2 / 3, 1 / 2])
    # Interpolated precision: 1 for r <= 1/3 (i = 1..13), 2/3 for 1/3 < r <= 2/3 (i = 14..26), 0 after.
    expected = np.array([1.0] * 13 + [2 / 3] * 13 + [0.0] * 14)
    np.testing.assert_allclose(r.precisions, expected)
    np.testing.assert_allclose(r.recalls, np.arange(1, 41) / 40)
    assert r.ap == pytest.approx((13 + 13 * 2 / 3) / 40) == pytest.approx(13 / 24)
    assert (r.n_gt, r.n_pred, r.tp, r.fp, r.n_ignored_pred) == (3, 4, 2, 2, 0)
    assert r.iou_threshold == 0.7


def test_kitti_r11_hand_case():
    gt, pred = three_gt_four_pred()
    # Recall points 0, .1, ..., 1: 1 at 0..0.3 (4 points), 2/3 at 0.4..0.6 (3 points), 0 for 0.7..1.
    assert kitti_ap(gt, pred, "Car", n_recall_points=11).ap == pytest.approx((4 + 3 * 2 / 3) / 11)


def test_kitti_greedy_by_score_not_by_overlap():
    gt = [[car(0)]]
    # The higher-scored, less-overlapping detection (IoU (4-0.4)/(4+0.4) = 0.818 > 0.7) takes the GT;
    # the exact one, scored lower, is a duplicate.
    pred = [[car(0.4, score=0.9), car(0, score=0.5)]]
    r = kitti_ap(gt, pred, "Car")
    assert (r.tp, r.fp) == (1, 1)
    assert r.ap == pytest.approx(1.0)  # precision 1 at recall 1 is reached by the first detection
    r2 = kitti_ap(gt, [[car(0.4, score=0.5), car(0, score=0.9)]], "Car")
    assert (r2.tp, r2.fp) == (1, 1) and r2.ap == pytest.approx(1.0)
    # Two GT, one detection between them with a lower score: greedy matching order is by score.
    gt2 = [[car(0), car(3.7)]]
    pred2 = [[car(0.2, score=0.3), car(0.1, score=0.8)]]  # both overlap GT0 only (IoU > 0.7)
    r3 = kitti_ap(gt2, pred2, "Car")
    assert (r3.tp, r3.fp) == (1, 1)
    np.testing.assert_allclose(r3.pr_curve.scores, [0.8, 0.3])
    np.testing.assert_allclose(r3.pr_curve.precision, [1.0, 0.5])


def test_kitti_matching_stays_within_frames():
    gt = [[car(0)], []]
    pred = [[], [car(0, score=0.9)]]
    r = kitti_ap(gt, pred, "Car")
    assert (r.tp, r.fp, r.n_gt) == (0, 1, 1)
    assert r.ap == 0.0


def test_kitti_default_thresholds_per_class_and_strict_comparison():
    # Shift 1 m along a 4 m length: IoU = (4 - 1) / (4 + 1) = 0.6 in BEV and 3D.
    for label, ok in (("Car", False), ("Pedestrian", True), ("Cyclist", True)):
        r = kitti_ap([[car(0, label=label)]], [[car(1.0, label=label)]], label)
        assert (r.tp == 1) is ok, label
    # IoU exactly at the threshold is not enough (the devkit tests overlap > min_overlap).
    r = kitti_ap([[car(0)]], [[car(1.0)]], "Car", iou_threshold=0.6)
    assert r.tp == 0 and r.fp == 1
    assert kitti_ap([[car(0)]], [[car(1.0)]], "Car", iou_threshold=0.59).tp == 1
    with pytest.raises(ValueError, match="no default"):
        kitti_ap([[car(0, label="Tram")]], [[]], "Tram")
    assert kitti_ap([[car(0, label="Tram")]], [[car(0, label="Tram")]], "Tram", iou_threshold=0.5).ap == 1.0


def test_kitti_bev_versus_3d():
    # Lifted by half its height: BEV IoU 1, 3D IoU = 0.75 / (1.5 + 1.5 - 0.75) = 1/3.
    gt, pred = [[car(0)]], [[car(0, z=0.75)]]
    assert kitti_ap(gt, pred, "Car", metric="bev").ap == pytest.approx(1.0)
    assert kitti_ap(gt, pred, "Car", metric="3d").ap == 0.0


def test_kitti_ignored_gt_is_neither_tp_nor_fn():
    gt = [[car(0), car(10)]]
    pred = [[car(0, score=0.9), car(30, score=0.8)]]
    # GT at x=10 is missed. Counted, recall stops at 1/2: AP = 20/40 * 1 = 0.5.
    assert kitti_ap(gt, pred, "Car").ap == pytest.approx(0.5)
    # Ignored, n_gt = 1 and the precision at recall 1 is 1.
    r = kitti_ap(gt, pred, "Car", ignore=[[False, True]])
    assert r.n_gt == 1 and r.ap == pytest.approx(1.0) and (r.tp, r.fp) == (1, 1)


def test_kitti_detection_on_ignored_gt_is_neither_tp_nor_fp():
    gt = [[car(0), car(10)]]
    ignore = [[False, True]]
    pred = [[car(10, score=0.9),   # on the ignored GT: dropped from the PR curve
             car(30, score=0.8),   # FP
             car(0, score=0.7),    # TP
             car(10.1, score=0.6)]]  # second detection on the ignored GT: it absorbs only one -> FP
    r = kitti_ap(gt, pred, "Car", ignore=ignore)
    assert (r.n_gt, r.n_pred, r.tp, r.fp, r.n_ignored_pred) == (1, 4, 1, 2, 1)
    np.testing.assert_allclose(r.pr_curve.precision, [0.0, 0.5, 1 / 3])
    # Were the first detection counted as an FP, precision at recall 1 would be 1/3; it is 1/2.
    assert r.ap == pytest.approx(0.5)


def test_kitti_detection_prefers_counted_gt_over_ignored():
    # Both GTs overlap the detection above threshold (the ignored one more): it must take the counted one.
    gt = [[car(0.35), car(0.0)]]
    r = kitti_ap(gt, [[car(0.05, score=0.9)]], "Car", ignore=[[False, True]])
    assert (r.tp, r.fp, r.n_ignored_pred) == (1, 0, 0)


def test_kitti_neighbour_classes_are_ignored_by_default():
    gt = [[car(0, label="Van"), car(10)]]
    pred = [[car(0, score=0.9), car(10, score=0.8)]]
    r = kitti_ap(gt, pred, "Car")
    assert (r.n_gt, r.tp, r.fp, r.n_ignored_pred) == (1, 1, 0, 1)
    r = kitti_ap(gt, pred, "Car", ignore_labels=())
    assert (r.n_gt, r.tp, r.fp) == (1, 1, 1)
    # Other classes are invisible: a Pedestrian box neither counts nor absorbs.
    r = kitti_ap([[car(0, label="Pedestrian")]], [[car(0)]], "Car")
    assert (r.n_gt, r.fp) == (0, 1) and math.isnan(r.ap)


def test_kitti_input_validation():
    with pytest.raises(ValueError, match="frames"):
        kitti_ap([[car(0)]], [], "Car")
    with pytest.raises(ValueError, match="flags"):
        kitti_ap([[car(0)]], [[car(0)]], "Car", ignore=[[True, False]])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 60), st.floats(0.01, 1)), min_size=0, max_size=12),
       st.lists(st.floats(0, 60), min_size=1, max_size=6))
def test_kitti_ap_properties(dets, gts):
    gt = [[car(x, y=5.0 * i) for i, x in enumerate(gts)]]
    pred = [[car(x, y=5.0 * (i % len(gts)), score=s) for i, (x, s) in enumerate(dets)]]
    r = kitti_ap(gt, pred, "Car")
    assert 0.0 <= r.ap <= 1.0
    assert r.tp + r.fp + r.n_ignored_pred == r.n_pred == len(dets)
    assert r.tp <= r.n_gt
    assert np.all(np.diff(r.precisions) <= 1e-12)  # interpolated precision is non-increasing
    # Perfect detections on top of any FP set with lower scores give AP 1.
    perfect = [[car(x, y=5.0 * i, score=2.0) for i, x in enumerate(gts)] + pred[0]]
    assert kitti_ap(gt, perfect, "Car").ap == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- nuScenes
def nus(x, y=0.0, score=1.0, label="car", l=4.0, w=2.0, h=1.5, yaw=0.0):
    return Box3D(label, (x, y, 0.0), (l, w, h), yaw, score=score)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1)), min_size=1, max_size=15),
       st.lists(st.floats(-0.2, 1.2), min_size=1, max_size=20), st.floats(-1, 2))
def test_interp_matches_numpy_interp_on_non_decreasing_knots(steps, xs, right):
    xp = np.cumsum([s / 5 for s, _ in steps])
    fp = np.array([v for _, v in steps])
    x = np.array(xs)
    np.testing.assert_allclose(_interp_like_numpy(x, xp, fp, right=right),
                               np.interp(x, xp, fp, right=right), atol=1e-12)


def test_nuscenes_interpolation_rule_explicit():
    xp = np.array([0.25, 0.25, 0.5])
    fp = np.array([1.0, 0.5, 2 / 3])
    got = _interp_like_numpy(np.array([0.0, 0.25, 0.375, 0.5, 0.75]), xp, fp, right=0.0)
    # below the first knot: first value; at a repeated knot: the last (post-FP) value; between knots from
    # that last value to the next knot; above the end: `right`.
    np.testing.assert_allclose(got, [1.0, 0.5, 0.5 + 0.5 * (2 / 3 - 0.5), 2 / 3, 0.0])


def test_nuscenes_ap_all_true_positives_half_recall():
    # 4 GT, 2 exact detections: precision 1 up to recall 0.5, then 0. Recall points 0.11..1 (90 of them):
    # 40 of them (0.11..0.50) score (1 - 0.1) / 0.9 = 1 -> AP = 40/90 at every threshold.
    gt = [[nus(0), nus(10), nus(20), nus(30)]]
    pred = [[nus(0, score=0.9), nus(10, score=0.8)]]
    r = nuscenes_map(gt, pred, ["car"])
    for thr, ap in r.per_class["car"].ap_per_threshold.items():
        assert ap == pytest.approx(40 / 90), thr
    assert r.map == pytest.approx(40 / 90)


def test_nuscenes_ap_with_a_false_positive_in_the_middle():
    # 2 GT; detections TP (0.9), FP (0.8), TP (0.7): (R, P) = (.5, 1), (.5, .5), (1, 2/3).
    # Interpolated: p = 1 for r < .5, p(.5) = .5 (post-FP), p(r) = .5 + (r - .5)/3 on (.5, 1].
    # Sum over r_i = i/100, i = 11..100, of max(p - .1, 0)/.9:
    #   i = 11..49: 39 x 1;  i = 50: .4/.9;  i = 51..100: (.4 + (i - 50)/300)/.9 -> (20 + 1275/300)/.9
    gt = [[nus(0), nus(10)]]
    pred = [[nus(0, score=0.9), nus(50, score=0.8), nus(10, score=0.7)]]
    expected = (39 + 0.4 / 0.9 + (20 + 1275 / 300) / 0.9) / 90
    r = nuscenes_map(gt, pred, ["car"])
    assert r.per_class["car"].ap_per_threshold[2.0] == pytest.approx(expected, abs=1e-12)
    curve = r.per_class["car"].precision_curves[2.0]
    assert curve[49] == 1.0 and curve[50] == 0.5 and curve[100] == pytest.approx(2 / 3)


def test_nuscenes_ap_from_pr_clipping():
    assert nuscenes_ap_from_pr(np.ones(101)) == pytest.approx(1.0)
    assert nuscenes_ap_from_pr(np.full(101, 0.1)) == 0.0
    p = np.zeros(101)
    p[:11] = 1.0  # precision only up to recall 0.1: excluded by min_recall
    assert nuscenes_ap_from_pr(p) == 0.0
    p[11] = 0.55
    assert nuscenes_ap_from_pr(p) == pytest.approx(0.5 / 90)
    with pytest.raises(ValueError):
        nuscenes_ap_from_pr(np.ones(40))


def test_nuscenes_distance_thresholds_and_strictness():
    gt = [[nus(0)]]
    assert nuscenes_map(gt, [[nus(0.7)]], ["car"]).per_class["car"].ap_per_threshold == pytest.approx({
        0.5: 0.0, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0})
    # BEV distance: a vertical offset does not count; a distance of exactly 2 m is not < 2 m.
    lifted = Box3D("car", (0.0, 0.0, 3.0), (4, 2, 1.5), 0.0)
    assert nuscenes_map(gt, [[lifted]], ["car"]).map == pytest.approx(1.0)
    aps = nuscenes_map(gt, [[nus(0, y=2.0)]], ["car"]).per_class["car"].ap_per_threshold
    assert aps[2.0] == 0.0 and aps[4.0] == pytest.approx(1.0)
    r = nuscenes_map(gt, [[nus(0.7)]], ["car"])
    assert r.map == pytest.approx(0.75)


def test_nuscenes_constant_tp_errors_and_nds():
    # Every detection is offset 0.3 m, 25% longer (aligned IoU 12/15 = 0.8) and turned 0.1 rad.
    gt = [[nus(0), nus(10)], [nus(0, y=5)]]
    pred = [[nus(0.3, l=5.0, yaw=0.1, score=0.9), nus(10.3, l=5.0, yaw=0.1, score=0.7)],
            [nus(0.3, y=5, l=5.0, yaw=0.1, score=0.8)]]
    r = nuscenes_map(gt, pred, ["car"])
    c = r.per_class["car"]
    assert c.ap == pytest.approx(1.0)
    assert c.ate == pytest.approx(0.3) and c.ase == pytest.approx(0.2) and c.aoe == pytest.approx(0.1)
    assert r.nds == pytest.approx((5 * 1.0 + 0.7 + 0.8 + 0.9) / 10)
    assert r.nds_renormalised == pytest.approx((5 * 1.0 + 0.7 + 0.8 + 0.9) / 8)


def test_nuscenes_tp_error_is_recall_weighted_running_mean():
    # 2 GT, both found: conf .9 with 0.2 m error, conf .5 with 0.6 m error. Confidence at recall r:
    # .9 for r <= .5, .9 - .8 (r - .5) above; the running mean of errors at that confidence is .2 for
    # r <= .5 and .2 + .4 (r - .5) above. Averaged over r = .11 .. 1: (40 * .2 + 50 * .2 + .004 * 1275) / 90.
    gt = [[nus(0), nus(10)]]
    pred = [[nus(0.2, score=0.9), nus(10.6, score=0.5)]]
    c = nuscenes_map(gt, pred, ["car"]).per_class["car"]
    assert c.ate == pytest.approx((8 + 10 + 5.1) / 90, abs=1e-12)


def test_nuscenes_yaw_periods_and_missing_classes():
    gt = [[nus(0, label="car"), nus(10, label="barrier"), nus(20, label="traffic_cone")]]
    pred = [[nus(0, label="car", yaw=math.pi), nus(10, label="barrier", yaw=math.pi),
             nus(20, label="traffic_cone", yaw=1.0)]]
    r = nuscenes_map(gt, pred, ["car", "barrier", "traffic_cone", "truck"])
    assert r.per_class["car"].aoe == pytest.approx(math.pi)
    assert r.per_class["barrier"].aoe == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(r.per_class["traffic_cone"].aoe)
    t = r.per_class["truck"]  # no GT, no predictions: AP 0 and TP errors 1, as nuScenes scores it
    assert t.ap == 0.0 and (t.ate, t.ase, t.aoe) == (1.0, 1.0, 1.0)
    assert r.map == pytest.approx(3 / 4)
    assert r.maoe == pytest.approx((math.pi + 0 + 1.0) / 3)  # traffic cone excluded


def test_yaw_difference():
    assert yaw_difference(3.1, -3.1) == pytest.approx(2 * math.pi - 6.2)
    assert yaw_difference(0.0, math.pi) == pytest.approx(math.pi)
    assert yaw_difference(0.0, math.pi, period=math.pi) == pytest.approx(0.0, abs=1e-12)
    assert yaw_difference(0.2, -0.3) == pytest.approx(0.5)
