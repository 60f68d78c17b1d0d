"""Detection scoring on our own bags: class map, ground-truth filters, difficulty levels, nuScenes output."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from perception_nodes.boxes import Box3D
from perception_nodes.datasets import read_bag_frames
from perception_nodes.eval.classmap import ClassMap
from perception_nodes.eval.detection_eval import (
    detection_metrics,
    load_detection_eval_config,
    points_in_boxes,
)
from perception_nodes.eval.metrics.detection import kitti_ap


@pytest.fixture(scope="module")
def bag_frames(scenario_bag):
    """The generated 1 s bag's frames: ground truth from /ground_truth/objects and the scan, both in
    the LiDAR frame (read_bag_frames applies the bag's transforms)."""
    return list(read_bag_frames(scenario_bag))


@pytest.fixture(scope="module")
def seen(bag_frames):
    """Per frame, per box: does the scan have a point inside (Box3D.contains, independent of the scorer)."""
    return [[bool(b.contains(f.points).any()) for b in f.boxes] for f in bag_frames]


def _perfect(frames, cmap: ClassMap) -> list[list[Box3D]]:
    """Detections equal to the mapped ground truth, with distinct scores (deterministic order)."""
    out = []
    for f in frames:
        mapped = cmap.map_boxes(f.boxes)
        out.append([replace(b, score=0.99 - 0.001 * ((7 * k) % 97), extras={})
                    for k, (b, dc) in enumerate(zip(mapped.boxes, mapped.dont_care, strict=True)) if not dc])
    return out


@pytest.mark.slow
def test_generated_bag_needs_the_class_map(bag_frames):
    """Raw labels fail as the issue reports (a Pole has no KITTI threshold); the class map scores them."""
    gt = [f.boxes for f in bag_frames]
    labels = {b.label for f in gt for b in f}
    assert "Pole" in labels
    with pytest.raises(ValueError, match="no default KITTI IoU threshold for 'Pole'"):
        for label in sorted(labels):
            kitti_ap(gt, gt, label)
    cfg = load_detection_eval_config()
    m = detection_metrics(gt, _perfect(bag_frames, cfg.class_map), config=cfg,
                          points=[f.points for f in bag_frames])
    n_poles = sum(b.label == "Pole" for f in gt for b in f)
    assert m["counts"]["gt_unmapped"] == {"Pole": n_poles}
    assert m["classes"] == ["car", "pedestrian", "cyclist"]


@pytest.mark.slow
def test_perfect_detections_score_one_and_jittered_lower(bag_frames):
    """Perfect detections: AP 1 where the devkit's rule allows it (> 40 counted boxes), else exactly
    (n - 1)/40 (one slot per TP, slot 0 skipped); nuScenes AP 1 and zero TP errors. Jitter lowers both."""
    cfg = load_detection_eval_config()
    gt = [f.boxes for f in bag_frames]
    pts = [f.points for f in bag_frames]
    perfect = _perfect(bag_frames, cfg.class_map)
    m = detection_metrics(gt, perfect, config=cfg, points=pts)
    k = m["kitti"]["per_class"]
    assert m["kitti"]["levels"] == ["all"]  # generated ground truth has no 2D boxes
    assert k["car"]["all"]["n_gt"] > 40
    for cls in m["classes"]:
        n = k[cls]["all"]["n_gt"]
        if n == 0:
            continue
        want = 1.0 if n > 40 else (n - 1) / 40
        assert m["kitti_ap_r40_3d"][cls] == pytest.approx(want), cls
        assert m["kitti_ap_r40_bev"][cls] == pytest.approx(want) and m["kitti_aos_r40"][cls] == pytest.approx(want)
        assert (k[cls]["all"]["fp_3d"], k[cls]["all"]["fn_3d"]) == (0, 0)
        nc = m["nuscenes"]["per_class"][cls]
        assert nc["ap"] == pytest.approx(1.0) and nc["ate"] == pytest.approx(0.0, abs=1e-9)
        assert nc["ase"] == pytest.approx(0.0, abs=1e-9) and nc["aoe"] == pytest.approx(0.0, abs=1e-6)
    assert m["nuscenes"]["map"] == pytest.approx(1.0) and m["nuscenes"]["map"] <= 1.0
    assert m["nuscenes_nds"] == pytest.approx(0.8)  # 5 mAP + 3 TP terms, of 10 (no velocity/attributes)

    rng = np.random.default_rng(0)
    jittered = [[replace(b, center=(b.center[0] + rng.normal(0, 0.4), b.center[1] + rng.normal(0, 0.4), b.center[2]),
                         yaw=b.yaw + rng.normal(0, 0.3)) for b in f] for f in perfect]
    j = detection_metrics(gt, jittered, config=cfg, points=pts)
    assert j["kitti_ap_r40_3d"]["car"] < m["kitti_ap_r40_3d"]["car"] - 0.1
    assert j["kitti_aos_r40"]["car"] < j["kitti_ap_r40_bev"]["car"]  # orientation errors cost AOS
    assert j["nuscenes"]["per_class"]["car"]["ate"] > 0.2 and j["nuscenes"]["per_class"]["car"]["aoe"] > 0.1
    assert j["nuscenes_nds"] < m["nuscenes_nds"]


@pytest.mark.slow
def test_filters_turn_empty_and_far_boxes_into_dont_care(bag_frames, seen):
    cfg = load_detection_eval_config()
    gt = [f.boxes for f in bag_frames]
    pts = [f.points for f in bag_frames]
    scored = ("Car", "Pedestrian", "Cyclist")
    pairs = [(b, s) for f, fs in zip(bag_frames, seen, strict=True) for b, s in zip(f.boxes, fs, strict=True)]
    empty = sum(1 for b, s in pairs if b.label in scored and not s)
    assert empty > 0  # the "boxes with no LiDAR point"
    dets = _perfect(bag_frames, cfg.class_map)
    m = detection_metrics(gt, dets, config=cfg, points=pts)
    c = m["counts"]
    assert m["filters"]["min_points_applied"] is True
    assert sum(c["gt_filtered_min_points"].values()) == empty
    assert sum(c["gt_filtered_range"].values()) > 0
    n_scored = sum(1 for b, _ in pairs if b.label in scored)
    assert sum(c["gt"].values()) + sum(c["gt_filtered_min_points"].values()) + sum(c["gt_filtered_range"].values()) == n_scored
    # counted cars: seen by the LiDAR and within the 50 m gate (counted here independently)
    assert c["gt"]["car"] == sum(1 for b, s in pairs if b.label == "Car" and s and math.hypot(*b.center[:2]) <= 50.0)
    # Detect only what the LiDAR saw. With the filters: perfect. With them off (KITTI's own protocol,
    # every box counts): each unseen car is a miss.
    kept = [[replace(b, label=b.label.lower(), score=0.9, extras={}) for b, s in zip(f.boxes, fs, strict=True)
             if s and b.label in scored] for f, fs in zip(bag_frames, seen, strict=True)]
    off = replace(cfg, min_points=None, max_range_m={k: None for k in cfg.max_range_m})
    m_off = detection_metrics(gt, kept, config=off)
    assert m_off["counts"]["gt_filtered_min_points"] == {} and m_off["counts"]["gt_filtered_range"] == {}
    assert m_off["kitti"]["per_class"]["car"]["all"]["fn_3d"] == sum(1 for b, s in pairs if b.label == "Car" and not s)
    m_on = detection_metrics(gt, kept, config=cfg, points=pts)
    assert m_on["kitti_ap_r40_3d"]["car"] == pytest.approx(1.0)
    assert m_off["kitti_ap_r40_3d"]["car"] < 1.0


def test_without_points_the_min_points_filter_says_so():
    gt = [[Box3D("Car", (10.0, 0.0, 0.8), (4, 2, 1.5), 0.0)]]
    m = detection_metrics(gt, [[replace(gt[0][0], label="car", score=0.9)]])
    assert m["filters"]["min_points_applied"] is False and m["counts"]["gt"] == {"car": 1}
    # mmdetection3d infos carry the count per box; it is used when there is no scan
    gt2 = [[replace(gt[0][0], extras={"num_lidar_pts": 0})]]
    m2 = detection_metrics(gt2, [[]])
    assert m2["filters"]["min_points_applied"] is True and m2["counts"]["gt_filtered_min_points"] == {"car": 1}


def test_points_in_boxes_matches_contains():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-20, 20, (5000, 4)).astype(np.float32)
    boxes = [Box3D("Car", (float(x), float(y), 0.0), (4.0, 2.0, 3.0), float(t))
             for x, y, t in rng.uniform(-15, 15, (20, 3))]
    assert points_in_boxes(boxes, pts) == [int(b.contains(pts).sum()) for b in boxes]


def test_class_map_kinds_and_van_as_configured(tmp_path: Path):
    van, car, truck = (Box3D(lbl, (x, 0.0, 0.8), (4, 2, 1.5), 0.0) for lbl, x in (("Van", 10), ("Car", 20), ("Truck", 30)))
    cfg = load_detection_eval_config()
    dets = [[replace(b, label="car", score=0.9) for b in (van, car, truck)]]
    m = detection_metrics([[van, car, truck]], dets, config=cfg)
    c = m["counts"]
    assert c["gt"] == {"car": 1} and c["gt_dont_care"] == {"Van": 1} and c["gt_unmapped"] == {"Truck": 1}
    k = m["kitti"]["per_class"]["car"]["all"]
    assert (k["n_gt"], k["n_ignored_gt"], k["tp_3d"], k["fp_3d"]) == (1, 1, 1, 1)  # the truck's detection is an FP
    # Van scored as a car instead, by a user file
    user = tmp_path / "eval.yaml"
    user.write_text("class_map:\n  Van: car\n")
    m2 = detection_metrics([[van, car, truck]], dets, config=load_detection_eval_config(user))
    assert m2["counts"]["gt"] == {"car": 2} and m2["counts"]["gt_dont_care"] == {}
    # detections may use dataset labels too; unknown ones are counted
    m3 = detection_metrics([[car]], [[replace(car, score=0.8), replace(car, label="Tram", score=0.7)]], config=cfg)
    assert m3["counts"]["pred"] == {"car": 1} and m3["counts"]["pred_unmapped"] == {"Tram": 1}


def test_config_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("filterz: {}\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_detection_eval_config(bad)
    bad.write_text("class_map:\n  Van: truck\n")
    with pytest.raises(ValueError, match="not one of"):
        load_detection_eval_config(bad)
    bad.write_text("class_map:\n  Van: {ignore: car}\n")
    with pytest.raises(ValueError, match="dont_care"):
        load_detection_eval_config(bad)


def _labelled(x, h_px, occ, trunc, label="Car", score=1.0):
    return Box3D(label, (x, 5.0, 0.8), (4.0, 2.0, 1.5), 0.0, score=score, occlusion=occ, truncation=trunc,
                 extras={"bbox2d": (0.0, 100.0, 50.0, 100.0 + h_px)})


def test_difficulty_levels_when_ground_truth_has_2d_boxes():
    gt = [[_labelled(10, 50, 0, 0.0), _labelled(20, 30, 1, 0.0), _labelled(30, 30, 2, 0.45)]]
    pred = [[replace(b, label="car", score=s) for b, s in zip(gt[0], (0.9, 0.8, 0.7), strict=True)]]
    m = detection_metrics(gt, pred)
    assert m["kitti"]["levels"] == ["easy", "moderate", "hard"] and m["kitti"]["headline_level"] == "moderate"
    n = {lv: m["kitti"]["per_class"]["car"][lv]["n_gt"] for lv in m["kitti"]["levels"]}
    assert n == {"easy": 1, "moderate": 2, "hard": 3}
    assert m["kitti_ap_r40_3d"]["car"] == pytest.approx(1 / 40)  # moderate: 2 TPs -> slots [1, 1]


@pytest.mark.slow
def test_trivial_baselines_score_near_zero(bag_frames):
    """A constant detector (one car 10 m ahead in every frame) and a carpet of cars every 5 m score
    near 0: the scores respond to where the boxes are, not just to having boxes."""
    cfg = load_detection_eval_config()
    gt = [f.boxes for f in bag_frames]
    const = [[Box3D("car", (10.0, 0.0, -0.9), (4.5, 1.9, 1.6), 0.0, score=0.5)] for _ in gt]
    carpet = [[Box3D("car", (x, y, -0.9), (4.5, 1.9, 1.6), 0.0, score=0.5) for x in range(-45, 50, 5)
               for y in range(-45, 50, 5)] for _ in gt]
    for dets in (const, carpet):
        m = detection_metrics(gt, dets, config=cfg)
        assert m["kitti_ap_r40_3d"]["car"] < 0.05 and m["kitti_ap_r40_bev"]["car"] < 0.05
        assert m["nuscenes"]["per_class"]["car"]["ap"] < 0.05


def test_pr_plot_without_any_curve_has_no_legend_and_no_warning(tmp_path, recwarn):
    """A class with no ground truth and no detections has no PR curve: the plot is still written, without
    matplotlib's "No artists with labels found" warning."""
    from perception_nodes.eval.detection_eval import plot_pr_curves

    empty = kitti_ap([[]], [[]], "Car")
    path = plot_pr_curves({"Car": empty}, tmp_path / "pr.png")
    assert path.stat().st_size > 0
    assert not [w for w in recwarn if "artists with labels" in str(w.message)], [str(w.message) for w in recwarn]
