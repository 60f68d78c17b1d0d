"""Scoring graph outputs against ground truth: the tolerant join, every-visible-cell occupancy scores with
baselines and intervals, objects, real-data truth, the CLI's exit status, metrics.json's schema."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import default_backend
from perception_nodes.codecs.detections import detections_msg
from perception_nodes.codecs.outputs import occupancy_grid_msg
from perception_nodes.eval.schema import SchemaError, validate
from perception_nodes.evaluation import (
    DETECTIONS_OUT,
    GT_OCCUPANCY,
    GT_VISIBILITY,
    SCHEMA_VERSION,
    Evaluator,
    resample_like,
)
from perception_nodes.replay import replay

B = default_backend()
STAMP = 5_000_000_000
GT = (topics.GT_OBJECTS, GT_OCCUPANCY, GT_VISIBILITY)


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


def _feed(ev: Evaluator, prob, vac, occ, vis, box, stamp: int = STAMP, pred_stamp: int | None = None) -> None:
    ps = stamp if pred_stamp is None else pred_stamp
    ev.ground_truth(topics.GT_OBJECTS, detections_msg([box], stamp, "base_link", B))
    ev.prediction(topics.OCCUPANCY_GRID, _grid(prob, stamp=ps))
    ev.ground_truth(GT_OCCUPANCY, _grid(occ, stamp=stamp))
    ev.ground_truth(GT_VISIBILITY, _grid(vis, stamp=stamp))
    ev.prediction(topics.OCCUPANCY_UNCERTAINTY, _grid(vac, stamp=ps))


def _all(m):
    return m["occupancy"]["regions"]["all"]


def test_a_perfect_grid_scores_perfectly_and_the_base_rate_does_not():
    occ, vis, box = _scene()
    prob = np.where(vis > 0, np.where(occ > 0, 95, 5), -1)
    vac = np.where(vis > 0, 10, 100)
    ev = Evaluator(expected_gt=GT)
    _feed(ev, prob, vac, occ, vis, box)
    m = ev.results()
    validate(m)
    assert m["schema_version"] == SCHEMA_VERSION and ev.frames_scored == 1
    a = _all(m)
    assert a["cells"] == 50 and a["unknown_share"] == 0.0  # the unseen half is not scored
    assert a["iou"]["value"] == 1.0 and a["precision"]["value"] == 1.0 and a["recall"]["value"] == 1.0
    assert a["ece"]["value"] == pytest.approx(0.05) and a["brier"]["value"] == pytest.approx(0.05 ** 2)
    assert a["nll"]["value"] == pytest.approx(-np.log(0.95))
    # the constant base-rate predictor (4 of 50 cells occupied): calibrated but useless
    assert a["iou"]["base_rate_baseline"] == 0.0 and a["recall"]["base_rate_baseline"] == 0.0
    assert a["ece"]["base_rate_baseline"] == pytest.approx(0.0, abs=1e-12)
    assert a["brier"]["base_rate_baseline"] == pytest.approx(0.08 * 0.92)
    assert m["objects"]["mean_footprint_occupied"] == 1.0 and m["objects"]["false_positive_cells"] == 0
    assert m["objects"]["per_class"]["Car"]["total"] == 1


def test_unknown_cells_count_at_their_stated_probability():
    """A grid that leaves the object unknown loses it: unknown is P = 0.5, never 'occupied', not skipped."""
    occ, vis, box = _scene()
    prob = np.where(vis > 0, np.where(occ > 0, -1, 5), -1)
    vac = np.where(prob < 0, 100, 10)
    ev = Evaluator(expected_gt=GT)
    _feed(ev, prob, vac, occ, vis, box)
    a = _all(ev.results())
    assert a["cells"] == 50 and a["unknown_share"] == pytest.approx(4 / 50)
    assert a["recall"]["value"] == 0.0 and a["iou"]["value"] == 0.0
    assert a["nll"]["value"] == pytest.approx((4 * np.log(2) - 46 * np.log(0.95)) / 50)
    # vacuity is high exactly on the wrong cells
    assert ev.results()["occupancy"]["uncertainty"]["vacuity"]["auroc_wrong_vs_right"] == 1.0


def test_an_everywhere_occupied_grid_scores_badly():
    """It covers every footprint, so footprint share alone would call it perfect: the false positives
    outside the boxes, box precision, IoU and precision say otherwise."""
    occ, vis, box = _scene()
    perfect, full = Evaluator(expected_gt=GT), Evaluator(expected_gt=GT)
    _feed(perfect, np.where(occ > 0, 95, 5), np.full((10, 10), 10), occ, vis, box)
    _feed(full, np.full((10, 10), 95), np.full((10, 10), 10), occ, vis, box)
    p, f = perfect.results(), full.results()
    assert f["objects"]["mean_footprint_occupied"] == 1.0
    assert f["objects"]["false_positive_cells"] == 46 and p["objects"]["false_positive_cells"] == 0
    assert f["objects"]["box_precision"] < 0.1 < 0.99 < p["objects"]["box_precision"]
    assert f["objects"]["f1"] < 0.2 and p["objects"]["f1"] == 1.0
    assert _all(f)["precision"]["value"] == pytest.approx(4 / 50) and _all(f)["iou"]["value"] == pytest.approx(4 / 50)
    assert _all(f)["brier"]["value"] > _all(f)["brier"]["base_rate_baseline"]


def test_join_takes_the_nearest_stamp_within_tolerance_and_counts_the_rest():
    occ, vis, box = _scene()
    prob = np.where(occ > 0, 95, 5)
    vac = np.full((10, 10), 10)
    ev = Evaluator(expected_gt=GT, match_tolerance_s=0.01)
    period = 100_000_000
    for k in range(6):
        stamp = STAMP + k * period
        jitter = (3_000_000, -4_000_000, 2_000_000, 0, 60_000_000, 1_000_000)[k]  # frame 4 is 60 ms off
        _feed(ev, prob, vac, occ, vis, box, stamp=stamp, pred_stamp=stamp + jitter)
    m = ev.results()
    assert m["frames_scored"] == 5
    assert m["join"]["unmatched_predictions"] == 1 and m["join"]["unmatched_ground_truth"] == 1
    assert m["join"]["max_offset_ms"] == pytest.approx(4.0)
    # exact-stamp matching would have scored only one of these frames
    assert Evaluator(expected_gt=GT, match_tolerance_s=0.0).match_tolerance_s == 0.0


def test_join_memory_is_bounded_on_a_long_stream():
    """Ground truth without outputs is evicted (and counted) once it falls behind the horizon."""
    occ, vis, box = _scene()
    ev = Evaluator(expected_gt=GT, horizon_s=1.0)
    for k in range(100):
        stamp = STAMP + k * 100_000_000
        ev.ground_truth(topics.GT_OBJECTS, detections_msg([box], stamp, "base_link", B))
        ev.ground_truth(GT_OCCUPANCY, _grid(occ, stamp=stamp))
        ev.ground_truth(GT_VISIBILITY, _grid(vis, stamp=stamp))
        assert len(ev._pending_gt) <= 12
    m = ev.results()
    assert m["frames_scored"] == 0 and m["join"]["unmatched_ground_truth"] == 100 and m["occupancy"] is None


def test_resample_onto_a_finer_grid():
    occ, _, _ = _scene()
    src = _grid(occ)
    like = _grid(np.zeros((20, 20)), res=0.5)
    out = resample_like(src, like)
    assert out.shape == (20, 20) and (out[8:12, 12:16] == 100).all() and out.sum() == 16 * 100
    shifted = resample_like(src, _grid(np.zeros((10, 10)), origin=(0.0, -5.0)))
    assert (shifted[:, 5:] == -1).all()  # beyond the source grid


def test_schema_rejects_a_broken_document():
    occ, vis, box = _scene()
    ev = Evaluator(expected_gt=GT)
    _feed(ev, np.where(occ > 0, 95, 5), np.full((10, 10), 10), occ, vis, box)
    doc = ev.results()
    validate(doc)
    for broken in ({**doc, "schema_version": "1"}, {k: v for k, v in doc.items() if k != "join"},
                   json.loads(json.dumps(doc).replace('"brier"', '"brierx"'))):
        with pytest.raises(SchemaError):
            validate(broken)


def test_evaluate_on_converted_kitti(kitti_bag, tmp_path):
    """KITTI: boxes are occupied, free space comes from a RANSAC ground plane (not the pipeline's)."""
    res = replay(kitti_bag, None, tmp_path, progress=False, require_ground_truth=True)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    validate(doc)
    assert doc["frames_scored"] == 3
    occ = doc["occupancy"]
    assert occ["truth"] == ["boxes_and_ground_plane"] and "RANSAC" in occ["limits"]
    a = occ["regions"]["all"]
    assert a["cells"] > 1000 and 0.0 < a["occupied_share"] < 0.5
    assert a["recall"]["value"] > 0.3 and a["precision"]["value"] > 0.5
    assert a["brier"]["value"] < a["brier"]["base_rate_baseline"]
    assert doc["objects"]["per_class"]["Pedestrian"]["total"] == 1
    # real labelled boxes keep KITTI's own levels (lidar-eval): no grading from the scan here
    assert doc["detection"] is not None and "kitti_graded" not in doc["detection"]
    assert res.metrics["latency_end_to_end"]["count"] == 3
    html = (tmp_path / "report.html").read_text()
    assert "per range band" in html and "RANSAC" in html and "per class" in html


def test_generated_scenario_is_scored_on_every_visible_cell(scenario_bag, tmp_path):
    res = replay(scenario_bag, None, tmp_path, progress=False, report=False)
    m = res.metrics
    validate(m)
    a = m["occupancy"]["regions"]["all"]
    assert m["frames_scored"] == 10 and m["join"]["unmatched_predictions"] == 0
    assert a["iou"]["value"] > 0.5 and a["recall"]["value"] > 0.5 and a["precision"]["value"] > 0.8
    for k in ("iou", "brier", "nll"):
        lo, hi = a[k]["ci95"]
        assert lo <= a[k]["value"] <= hi
    assert a["brier"]["value"] < a["brier"]["base_rate_baseline"]
    assert a["nll"]["value"] < a["nll"]["base_rate_baseline"]
    bands = [k for k in m["occupancy"]["regions"] if k.startswith("range_")]
    assert len(bands) >= 4 and sum(m["occupancy"]["regions"][k]["cells"] for k in bands) == a["cells"]
    assert m["occupancy"]["uncertainty"]["vacuity"]["auroc_wrong_vs_right"] > 0.6
    assert "vacuity_auroc_unseen_vs_seen" not in json.dumps(m)
    # generated ground truth is also scored at KITTI's levels; the occlusion is the generator's truth
    graded = m["detection"]["kitti_graded"]
    assert graded["occlusion_source"]["scan"] == 0 and graded["occlusion_source"]["truth"] > 0
    assert graded["levels"] == ["easy", "moderate", "hard"] and graded["headline_level"] == "moderate"
    assert graded["per_class"]["car"]["moderate"]["n_gt"] <= m["detection"]["kitti"]["per_class"]["car"]["all"]["n_gt"]
    assert (tmp_path / "reliability_occupancy.png").is_file()


def test_detections_are_scored_with_ap_and_pr_curves(tmp_path):
    """Once the graph publishes /perception/objects, AP R40 and mAP are computed and PR curves drawn."""
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


def test_a_second_grid_is_scored_beside_the_first_as_the_geometric_baseline():
    occ, vis, box = _scene()
    ev = Evaluator(expected_gt=GT, baseline_topic="/baseline/occupancy_grid")
    ev.prediction("/baseline/occupancy_grid", _grid(np.where(vis > 0, 5, -1)))  # sees nothing occupied
    _feed(ev, np.where(occ > 0, 95, 5), np.full((10, 10), 10), occ, vis, box)
    a = _all(ev.results())
    assert a["iou"]["value"] == 1.0 and a["iou"]["geometric_baseline"] == 0.0
    assert a["brier"]["geometric_baseline"] == pytest.approx((4 * 0.95 ** 2 + 46 * 0.05 ** 2) / 50)
