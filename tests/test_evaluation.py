"""Scoring graph outputs against ground truth: the per-frame join, occupancy scores, objects, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import default_backend
from perception_nodes.codecs.detections import detections_msg
from perception_nodes.codecs.outputs import occupancy_grid_msg
from perception_nodes.evaluation import GT_OCCUPANCY, GT_VISIBILITY, Evaluator, resample_like
from perception_nodes.replay import replay

B = default_backend()
STAMP = 5_000_000_000


def _grid(data: np.ndarray, res: float = 1.0, origin=(-5.0, -5.0), stamp: int = STAMP):
    return occupancy_grid_msg(data.astype(np.int8), res, (*origin, 0.0), stamp, "base_link", B)


def _scene():
    """10 x 10 m at 1 m: an object at x in [1, 3), y in [-1, 1); the left half (x < 0) unseen."""
    occ = np.zeros((10, 10), np.int8)
    occ[4:6, 6:8] = 100
    vis = np.full((10, 10), 100, np.int8)
    vis[:, :5] = 0
    box = Box3D("Car", (2.0, 0.0, 0.8), (2.0, 2.0, 1.5), 0.0)
    return occ, vis, box


def _feed(ev: Evaluator, prob: np.ndarray, vac: np.ndarray, occ, vis, box) -> None:
    ev.ground_truth(topics.GT_OBJECTS, detections_msg([box], STAMP, "base_link", B))  # objects first
    ev.prediction(topics.OCCUPANCY_GRID, _grid(prob))
    ev.ground_truth(GT_OCCUPANCY, _grid(occ))
    assert ev.frames_scored == 0  # still waiting for visibility and the uncertainty grid
    ev.ground_truth(GT_VISIBILITY, _grid(vis))
    ev.prediction(topics.OCCUPANCY_UNCERTAINTY, _grid(vac))


def test_a_perfect_grid_scores_perfectly_and_vacuity_flags_the_unseen_half():
    occ, vis, box = _scene()
    prob = np.where(vis > 0, np.where(occ > 0, 95, 5), -1)
    vac = np.where(vis > 0, 10, 100)
    ev = Evaluator(expected_gt=(topics.GT_OBJECTS, GT_OCCUPANCY, GT_VISIBILITY))
    _feed(ev, prob, vac, occ, vis, box)
    m = ev.results()
    assert ev.frames_scored == 1
    o = m["occupancy"]
    assert o["iou"] == 1.0 and o["precision"] == 1.0 and o["recall"] == 1.0 and o["coverage_of_visible"] == 1.0
    assert o["ece"] == pytest.approx(0.05)  # every cell 95 % / 5 % sure and always right
    assert o["vacuity_auroc_unseen_vs_seen"] == 1.0
    assert m["objects"]["recall"] == 1.0 and m["objects"]["per_class"]["Car"]["total"] == 1


def test_a_wrong_grid_scores_badly():
    occ, vis, box = _scene()
    prob = np.where(vis > 0, 5, -1)  # misses the object: everything seen reads free
    prob[4, 9] = 95  # and a phantom obstacle
    vac = np.full((10, 10), 50)
    ev = Evaluator(expected_gt=(topics.GT_OBJECTS, GT_OCCUPANCY, GT_VISIBILITY))
    _feed(ev, prob, vac, occ, vis, box)
    m = ev.results()
    assert m["occupancy"]["iou"] == 0.0 and m["occupancy"]["recall"] == 0.0
    assert m["objects"]["recall"] == 0.0
    assert m["occupancy"]["vacuity_auroc_unseen_vs_seen"] == 0.5  # uninformative uncertainty


def test_resample_onto_a_finer_grid():
    occ, _, _ = _scene()
    src = _grid(occ)
    like = _grid(np.zeros((20, 20)), res=0.5)
    out = resample_like(src, like)
    assert out.shape == (20, 20) and (out[8:12, 12:16] == 100).all() and out.sum() == 16 * 100
    shifted = resample_like(src, _grid(np.zeros((10, 10)), origin=(0.0, -5.0)))
    assert (shifted[:, 5:] == -1).all()  # beyond the source grid


def test_evaluate_on_converted_kitti(kitti_bag, tmp_path):
    res = replay(kitti_bag, None, tmp_path, progress=False, require_ground_truth=True)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["frames_scored"] == 3 and doc["occupancy"] is None  # KITTI has boxes, no GT grids
    assert doc["objects"]["per_class"]["Pedestrian"]["total"] == 1
    assert doc["objects"]["recall"] >= 0.75
    assert res.metrics["latency_end_to_end"]["count"] == 3
    assert "Labelled objects within 40 m" in (tmp_path / "report.html").read_text()


def test_generated_scenario_is_scored_on_occupancy(scenario_bag, tmp_path):
    """The embedded scenario carries GT occupancy + visibility: the geometric grid must match it well."""
    res = replay(scenario_bag, None, tmp_path, progress=False, report=False)
    occ = res.metrics["occupancy"]
    assert res.metrics["frames_scored"] == 10
    assert occ["iou"] > 0.7 and occ["recall"] > 0.8 and occ["precision"] > 0.8
    assert occ["vacuity_auroc_unseen_vs_seen"] > 0.9  # uncertainty flags what the LiDAR did not see
    assert occ["coverage_of_visible"] > 0.8
    assert (tmp_path / "reliability_occupancy.png").is_file()


def test_detections_are_scored_with_ap_and_pr_curves(tmp_path):
    """Once the graph publishes /perception/objects, AP R40 and mAP are computed and PR curves drawn."""
    from dataclasses import replace

    from perception_nodes.evaluation import DETECTIONS_OUT

    occ, vis, box = _scene()
    ev = Evaluator()
    for k in range(4):
        stamp = STAMP + k * 100_000_000
        gt = replace(box, center=(2.0 + k, 0.0, 0.8))
        ev.ground_truth(topics.GT_OBJECTS, detections_msg([gt], stamp, "base_link", B))
        hit = replace(gt, score=0.9) if k < 3 else replace(gt, center=(9.0, 4.0, 0.8), score=0.8)  # last one wrong
        ev.prediction(DETECTIONS_OUT, detections_msg([hit], stamp, "base_link", B))
        ev.prediction(topics.OCCUPANCY_GRID, _grid(np.zeros((10, 10)), stamp=stamp))
        ev.prediction(topics.OCCUPANCY_UNCERTAINTY, _grid(np.zeros((10, 10)), stamp=stamp))
    m = ev.results(tmp_path)
    assert m["frames_scored"] == 4
    det = m["detection"]
    # 3 of 4 found (scores 0.9), the miss ranked last. KITTI devkit AP with 4 boxes: one score-threshold
    # slot per TP (3 slots at precision 1), slot 0 skipped -> 2/40 (see tests/eval/test_detection.py)
    assert det["kitti_ap_r40_3d"]["car"] == pytest.approx(2 / 40)
    assert det["kitti"]["per_class"]["car"]["all"]["tp_3d"] == 3
    assert det["counts"]["gt"] == {"car": 4} and det["counts"]["pred"] == {"car": 4}
    assert det["nuscenes"]["per_class"]["car"]["ap"] < 1.0
    assert (tmp_path / "pr_curves.png").is_file()
