"""KITTI AP (R40/R11), AOS and difficulty as the KITTI devkit computes them, and nuScenes mAP / TP errors
/ NDS, on cases whose expected values are derived by hand (derivations in the docstrings)."""

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
    kitti_thresholds,
    observation_angle,
    nuscenes_ap_from_pr,
    nuscenes_map,
    yaw_difference,
)
from perception_nodes.eval.metrics.kitti_difficulty import gt_fails_level, kitti_difficulty


def car(x, y=0.0, score=1.0, label="Car", l=4.0, w=2.0, h=1.5, z=0.0, yaw=0.0) -> Box3D:
    return Box3D(label, (x, y, z), (l, w, h), yaw, score=score)


# ------------------------------------------------------------------------------------------ KITTI
# Expected values below are derived by hand from the KITTI devkit's algorithm as OpenPCDet implements
# it (kitti_object_eval_python/eval.py; summarised in perception_nodes.eval.metrics.detection):
#   thresholds: TP scores (GT-first matching) walked with a target recall 0, 1/40, ...; a score is
#     accepted when its recall (i+1)/n_gt is at least as near the target as the next one's; the last
#     TP score is always accepted.  precision[k] at threshold k, then max(precision[k:]) over 41 slots;
#     AP R40 = sum(slots 1..40) / 40, AP R11 = sum(slots 0, 4, ..., 40) / 11.
def three_gt_four_pred():
    gt = [[car(0), car(10), car(20)]]
    pred = [[car(0, score=0.9),  # TP on GT0
             car(40, score=0.8),  # FP (nothing there)
             car(10, score=0.7),  # TP on GT1
             car(0.1, score=0.6)]]  # duplicate of GT0 (IoU 0.95): FP because GT0 is taken
    return gt, pred


def test_kitti_r40_small_hand_case():
    """3 GT, 4 detections: the devkit gives every TP its own slot when n_gt < 41.

    Threshold pass: GT0 takes the highest-scored detection above IoU 0.7 (0.9; 0.6 also overlaps), GT1
    takes 0.7, GT2 none -> TP scores [0.9, 0.7], n_gt = 3.
    get_thresholds: i=0: recall 1/3, next 2/3, target 0: (2/3 - 0) < (0 - 1/3) is false -> accept 0.9,
    target 1/40; i=1 is the last -> accept 0.7. Two thresholds.
    t = 0.9: detections {0.9}: TP 1, FP 0 -> precision 1.   t = 0.7: {0.9, 0.8, 0.7}: GT0 <- 0.9,
    GT1 <- 0.7, 0.8 unassigned -> TP 2, FP 1 -> precision 2/3.  Slots [1, 2/3, 0, ..., 0].
    R40 = (2/3) / 40 = 1/60 (slot 0 is skipped); R11 = slot 0 / 11 = 1/11.
    """
    gt, pred = three_gt_four_pred()
    r = kitti_ap(gt, pred, "Car")
    np.testing.assert_allclose(r.thresholds, [0.9, 0.7])
    np.testing.assert_allclose(r.precisions, [1.0, 2 / 3] + [0.0] * 39)
    np.testing.assert_allclose(r.pr_curve.recall, [1 / 3, 2 / 3])
    assert r.ap == pytest.approx(1 / 60)
    assert kitti_ap(gt, pred, "Car", n_recall_points=11).ap == pytest.approx(1 / 11)
    # every detection kept: TP 2, FP 2 (0.8 and the duplicate), FN 1
    assert (r.n_gt, r.n_pred, r.tp, r.fp, r.fn, r.n_ignored_pred) == (3, 4, 2, 2, 1, 0)
    assert r.iou_threshold == 0.7


def _row(n, score_of, y=0.0, **kw):
    return [car(10.0 * k, y=y, score=score_of(k), **kw) for k in range(n)]


def test_kitti_r40_hand_case_with_80_boxes_and_the_max_recall_slot():
    """80 GT; 61 found (scores 1 - k/1000), 20 FPs (score 0.9705) ranked between TP 29 and TP 30.

    get_thresholds with n_gt = 80 (recall step 1/80, target step 1/40): i = 0 is accepted (target 0);
    for i >= 1 the recall (i+1)/80 equals the target exactly at odd i (accepted: the next one is farther)
    and is 1/80 short of the next target at even i (the next one, exactly on it, is nearer: skipped).
    So slot k (k = 1..30) sits at TP i = 2k - 1, recall k/40, and i = 60, the last TP (recall 61/80,
    1/80 *short* of target 31/40), is accepted anyway: slot 31.
    Precision: slots 0..15 keep TPs only (threshold >= score of TP 29 > FP score): 1. Slot k in 16..30
    keeps 2k TPs and the 20 FPs: 2k / (2k + 20); slot 31: 61/81. This rises with k, so max(prec[k:])
    is 61/81 for k = 16..31, and 0 from slot 32.
    AP R40 = (15 * 1 + 16 * 61/81) / 40.
    Interpolating the exact PR curve at recall k/40 instead would stop at slot 30 (recall 31/40 is never
    reached): (15 + 15 * 61/81) / 40, i.e. p(max recall)/40 lower — the gap this module used to have.
    """
    gt = [_row(80, lambda k: 1.0)]
    pred = [_row(61, lambda k: 1.0 - k / 1000) + _row(20, lambda k: 0.9705, y=50.0)]
    r = kitti_ap(gt, pred, "Car")
    assert len(r.thresholds) == 32
    expected = np.array([1.0] * 16 + [61 / 81] * 16 + [0.0] * 9)
    np.testing.assert_allclose(r.precisions, expected, atol=1e-12)
    assert r.ap == pytest.approx((15 + 16 * 61 / 81) / 40, abs=1e-12)
    assert r.ap - (15 + 15 * 61 / 81) / 40 == pytest.approx((61 / 81) / 40, abs=1e-12)
    assert (r.tp, r.fp, r.fn) == (61, 20, 19)
    # R11: slots 0, 4, ..., 40 -> 0..12 (4 slots) at 1, 16..28 (4 slots) at 61/81, 32..40 at 0
    assert kitti_ap(gt, pred, "Car", n_recall_points=11).ap == pytest.approx((4 + 4 * 61 / 81) / 11)


def test_kitti_perfect_detections_score_one_only_above_40_boxes():
    """n_gt <= 40 perfect detections: one slot per TP, slot 0 skipped -> (n - 1)/40. With n = 41 the
    recall (i+1)/41 never falls behind the target i/40, so all 41 slots fill -> 1.0."""
    for n, ap in ((1, 0.0), (3, 2 / 40), (40, 39 / 40), (41, 1.0), (200, 1.0)):
        gt = [_row(n, lambda k: 1.0)]
        pred = [_row(n, lambda k: 1.0 - k / 1e4)]
        assert kitti_ap(gt, pred, "Car").ap == pytest.approx(ap), n


def test_kitti_aos_hand_case():
    """80 square boxes (IoU unaffected by yaw) all found; the 40 lower-scored ones face backwards.

    Slots as in the 80-box case: slot 0 at TP 0, slot k at TP 2k - 1 (k = 1..40), precision 1. AOS
    similarity per TP = (1 + cos Δα) / 2: 1 for the first 40, 0 for the flipped ones. Slot k holds 2k
    TPs of which min(2k, 40) are right: aos_k = 1 for k <= 20, 40/(2k) = 20/k after, decreasing, so
    max(aos[k:]) = aos_k. AOS R40 = (20 + sum_{k=21..40} 20/k) / 40; AP stays 1.
    """
    gt = [_row(80, lambda k: 1.0, l=2.0)]
    pred = [[car(10.0 * k, score=1.0 - k / 1000, l=2.0, yaw=math.pi if k >= 40 else 0.0) for k in range(80)]]
    r = kitti_ap(gt, pred, "Car", metric="bev")
    assert r.ap == pytest.approx(1.0)
    assert r.aos == pytest.approx((20 + sum(20 / k for k in range(21, 41))) / 40, abs=1e-12)
    # without the flip AOS equals AP; a detection turned by pi/2 scores 1/2 per TP
    same = kitti_ap(gt, [_row(80, lambda k: 1.0 - k / 1000, l=2.0)], "Car", metric="bev")
    assert same.aos == pytest.approx(1.0)
    quarter = kitti_ap(gt, [_row(80, lambda k: 1.0 - k / 1000, l=2.0, yaw=math.pi / 2)], "Car", metric="bev")
    assert quarter.aos == pytest.approx(0.5)


def test_kitti_observation_angle_is_view_relative():
    # The same yaw seen from a different bearing is a different observation angle (alpha), so AOS
    # compares appearance as KITTI does; at bearing 0 alpha = -yaw - pi/2.
    assert observation_angle(car(10.0)) == pytest.approx(-math.pi / 2)
    assert observation_angle(car(0.0, y=10.0)) == pytest.approx(0.0)
    assert observation_angle(car(10.0, yaw=0.3)) == pytest.approx(-0.3 - math.pi / 2)


def test_kitti_thresholds_directly():
    # 5 TPs of 200 GT (recall step 1/200): after the first, every recall is far below the next target
    # 1/40, so only the first and the (always accepted) last remain.
    assert kitti_thresholds([0.5, 0.9, 0.7, 0.8, 0.6], 200) == [0.9, 0.5]
    # 5 TPs of 100 GT: i = 1 (recall 0.02) and i = 2 (0.03) are equally far from target 0.025 in exact
    # arithmetic; in float64, as in the devkit, 0.03 - 0.025 < 0.025 - 0.02, so 0.8 is skipped. Then
    # target 0.05: i = 3 (0.04) vs i = 4 (0.05, last) -> 0.6 skipped, 0.5 accepted.
    assert (0.03 - 0.025) < (0.025 - 0.02)
    assert kitti_thresholds([0.5, 0.9, 0.7, 0.8, 0.6], 100) == [0.9, 0.7, 0.5]
    # 4 TPs of 4 GT: recalls 1/4 .. 1; targets advance by 1/40 per accepted score, so each is accepted.
    assert kitti_thresholds([4, 3, 2, 1], 4) == [4, 3, 2, 1]
    # 120 TPs of 120 GT (step 1/120 vs target step 1/40): i = 0, then about every third score, 41 in all.
    t = kitti_thresholds([1 - k / 1000 for k in range(120)], 120)
    assert len(t) == 41 and t[0] == 1.0 and t[-1] == pytest.approx(1 - 119 / 1000)  # 0.881
    assert kitti_thresholds([], 10) == []


def test_kitti_matching_stays_within_frames():
    gt = [[car(0)], []]
    pred = [[], [car(0, score=0.9)]]
    r = kitti_ap(gt, pred, "Car")
    assert (r.tp, r.fp, r.fn, r.n_gt) == (0, 1, 1, 1)
    assert r.ap == 0.0


def test_kitti_default_thresholds_per_class_and_strict_comparison():
    # Shift 1 m along a 4 m length: IoU = (4 - 1) / (4 + 1) = 0.6 in BEV and 3D.
    for label, ok in (("Car", False), ("Pedestrian", True), ("Cyclist", True), ("car", False), ("pedestrian", True)):
        r = kitti_ap([[car(0, label=label)]], [[car(1.0, label=label)]], label)
        assert (r.tp == 1) is ok, label
    # IoU exactly at the threshold is not enough (the devkit tests overlap > min_overlap).
    r = kitti_ap([[car(0)]], [[car(1.0)]], "Car", iou_threshold=0.6)
    assert r.tp == 0 and r.fp == 1
    assert kitti_ap([[car(0)]], [[car(1.0)]], "Car", iou_threshold=0.59).tp == 1
    with pytest.raises(ValueError, match="no default KITTI IoU threshold for 'Pole'"):
        kitti_ap([[car(0, label="Pole")]], [[]], "Pole")
    assert kitti_ap([[car(0, label="Tram")]], [[car(0, label="Tram")]], "Tram", iou_threshold=0.5).tp == 1
    with pytest.raises(ValueError, match="40"):
        kitti_ap([[car(0)]], [[car(0)]], "Car", n_recall_points=20)


def test_kitti_bev_versus_3d():
    # Lifted by half its height: BEV IoU 1, 3D IoU = 0.75 / (1.5 + 1.5 - 0.75) = 1/3.
    gt, pred = [[car(0)]], [[car(0, z=0.75)]]
    assert kitti_ap(gt, pred, "Car", metric="bev").tp == 1
    assert kitti_ap(gt, pred, "Car", metric="3d").tp == 0


def test_kitti_matching_at_a_threshold_takes_the_largest_overlap():
    """Threshold pass: per GT the highest score; counting pass: per GT the largest IoU among kept ones.

    GT0 at x=0; detections A (x=0.4, score 0.9, IoU 3.6/4.4 = 0.818) and B (x=0, score 0.5, IoU 1).
    TP scores [0.9] -> one threshold 0.9 (only A kept): TP. With every detection kept, GT0 takes B (the
    larger overlap) and A is the FP.
    """
    r = kitti_ap([[car(0)]], [[car(0.4, score=0.9), car(0, score=0.5)]], "Car")
    np.testing.assert_allclose(r.thresholds, [0.9])
    np.testing.assert_allclose(r.pr_curve.precision, [1.0])
    assert (r.tp, r.fp) == (1, 1)


def test_kitti_ignored_gt_absorbs_one_detection():
    """GT1 ignored: a detection on it is neither TP nor FP, a second one on it is an FP.

    Detections 0.9 on GT1 (absorbed), 0.8 at x=30 (FP), 0.7 on GT0 (TP), 0.6 on GT1 again (FP).
    n_gt = 1; TP scores [0.7] -> one threshold; at 0.7: {0.9 absorbed, 0.8 FP, 0.7 TP} -> precision 1/2.
    """
    gt = [[car(0), car(10)]]
    pred = [[car(10, score=0.9), car(30, score=0.8), car(0, score=0.7), car(10.1, score=0.6)]]
    r = kitti_ap(gt, pred, "Car", ignore=[[False, True]])
    assert (r.n_gt, r.n_ignored_gt, r.n_pred, r.tp, r.fp, r.n_ignored_pred) == (1, 1, 4, 1, 2, 1)
    np.testing.assert_allclose(r.pr_curve.precision, [0.5])
    # the missed GT1, counted instead, is one more FN
    r2 = kitti_ap(gt, pred, "Car")
    assert (r2.n_gt, r2.fn) == (2, 0) and r2.tp == 2


def test_kitti_ignored_detection_is_neither_tp_nor_fp_and_its_gt_no_miss():
    # Flagged detections (e.g. beyond the range gate): on a GT they take it (no FN, no TP), alone no FP.
    gt = [[car(0), car(10)]]
    pred = [[car(0, score=0.9), car(10, score=0.8), car(40, score=0.7)]]
    r = kitti_ap(gt, pred, "Car", ignore_pred=[[False, True, True]])
    assert (r.n_gt, r.tp, r.fp, r.fn, r.n_ignored_pred) == (2, 1, 0, 0, 2)


def test_kitti_detection_prefers_counted_gt_over_ignored():
    # Both GTs overlap the detection above threshold (the ignored one more): the counted GT, visited
    # first, takes it.
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


def _kitti_box(x, h_px, occ, trunc, score=1.0, label="Car"):
    return Box3D(label, (x, 0.0, 0.0), (4.0, 2.0, 1.5), 0.0, score=score, occlusion=occ, truncation=trunc,
                 extras={"bbox2d": (100.0, 100.0, 150.0, 100.0 + h_px)})


def test_kitti_difficulty_levels_of_boxes():
    assert kitti_difficulty(_kitti_box(0, 50, 0, 0.0)) == "easy"
    assert kitti_difficulty(_kitti_box(0, 40, 0, 0.0)) == "moderate"  # height <= 40 fails easy
    assert kitti_difficulty(_kitti_box(0, 50, 0, 0.2)) == "moderate"  # truncation > 0.15
    assert kitti_difficulty(_kitti_box(0, 50, 1, 0.0)) == "moderate"
    assert kitti_difficulty(_kitti_box(0, 30, 2, 0.4)) == "hard"
    assert kitti_difficulty(_kitti_box(0, 25, 0, 0.0)) is None  # 25 px <= 25: no level
    assert kitti_difficulty(_kitti_box(0, 50, 3, 0.0)) is None  # occlusion unknown (3)
    assert kitti_difficulty(_kitti_box(0, 50, 0, 0.6)) is None
    assert kitti_difficulty(car(0)) is None  # no 2D box, occlusion -1
    with pytest.raises(ValueError, match="2D box"):
        gt_fails_level(car(0), "easy")


def test_kitti_ap_per_difficulty_level():
    """Four cars, one per level (easy A, moderate B, hard C, none D), each found; plus two FPs far
    away, one whose 2D box is 20 px high (below every level's minimum: ignored), one without 2D box.

    easy: counted {A}; B, C, D ignored and absorb their detections -> TP 1, FP 1 (the box-less FP);
      TP scores [0.9] -> one slot -> R40 = 0.
    moderate: counted {A, B} -> TP 2, FP 1. Thresholds 0.9, 0.8; at 0.8 the FPs (0.5) are not kept:
      slots [1, 1] -> R40 = 1/40.
    hard: counted {A, B, C} -> TP 3, FP 1; slots [1, 1, 1] -> R40 = 2/40.
    """
    gt = [[_kitti_box(0, 50, 0, 0.0), _kitti_box(10, 30, 1, 0.2), _kitti_box(20, 30, 2, 0.4),
           _kitti_box(30, 50, 3, 0.0)]]
    small_fp = _kitti_box(60, 20, 0, 0.0, score=0.5)
    pred = [[_kitti_box(0, 50, 0, 0.0, 0.9), _kitti_box(10, 30, 1, 0.2, 0.8), _kitti_box(20, 30, 2, 0.4, 0.7),
             _kitti_box(30, 50, 3, 0.0, 0.6), small_fp, car(80, score=0.5)]]
    got = {lv: kitti_ap(gt, pred, "Car", difficulty=lv) for lv in ("easy", "moderate", "hard")}
    assert [(r.n_gt, r.tp, r.fp) for r in got.values()] == [(1, 1, 1), (2, 2, 1), (3, 3, 1)]
    assert [r.n_ignored_pred for r in got.values()] == [4, 3, 2]
    assert [r.ap for r in got.values()] == pytest.approx([0.0, 1 / 40, 2 / 40])
    # without difficulty every car counts and the 20 px detection is an FP like any other
    r = kitti_ap(gt, pred, "Car")
    assert (r.n_gt, r.tp, r.fp) == (4, 4, 2)
    # the devkit ignores short detections of any class (its clean_data checks height first)
    short_ped = _kitti_box(0.0, 20, 0, 0.0, score=0.95, label="Pedestrian")
    r = kitti_ap([[_kitti_box(0, 50, 0, 0.0)]], [[short_ped]], "Car", difficulty="easy")
    assert (r.tp, r.fn) == (0, 0)  # taken by the ignored detection: neither TP nor FN


def test_kitti_input_validation():
    with pytest.raises(ValueError, match="frames"):
        kitti_ap([[car(0)]], [], "Car")
    with pytest.raises(ValueError, match="flags"):
        kitti_ap([[car(0)]], [[car(0)]], "Car", ignore=[[True, False]])
    with pytest.raises(ValueError, match="flags"):
        kitti_ap([[car(0)]], [[car(0)]], "Car", ignore_pred=[[]])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 60), st.floats(0.01, 1)), min_size=0, max_size=12),
       st.lists(st.floats(0, 60), min_size=1, max_size=6))
def test_kitti_ap_properties(dets, gts):
    gt = [[car(x, y=5.0 * i) for i, x in enumerate(gts)]]
    pred = [[car(x, y=5.0 * (i % len(gts)), score=s) for i, (x, s) in enumerate(dets)]]
    r = kitti_ap(gt, pred, "Car")
    assert 0.0 <= r.ap <= 1.0 and 0.0 <= r.aos <= r.ap + 1e-12
    assert r.tp + r.fp + r.n_ignored_pred == r.n_pred == len(dets)
    assert r.tp + r.fn == r.n_gt
    assert np.all(np.diff(r.precisions) <= 1e-12)  # interpolated precision is non-increasing
    # Perfect detections on top of any FP set with lower scores: precision 1 in every filled slot, so
    # AP = (filled slots - 1)/40 = (n_gt - 1)/40 for n_gt <= 40.
    perfect = [[car(x, y=5.0 * i, score=2.0) for i, x in enumerate(gts)] + pred[0]]
    assert kitti_ap(gt, perfect, "Car").ap == pytest.approx((len(gts) - 1) / 40)


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
