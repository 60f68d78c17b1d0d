"""Replay applies the detection scorer's ``min_points`` ground-truth filter: the bag's own scan (never a
pipeline output), put into base_link with the graph's rig transforms, is counted per ground-truth box."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import default_backend, stamp_to_ns
from perception_nodes.codecs.detections import boxes_from_detections, detections_msg
from perception_nodes.config import load_params
from perception_nodes.datasets import read_bag_frames
from perception_nodes.eval.detection_eval import detection_metrics, load_detection_eval_config
from perception_nodes.evaluation import DETECTIONS_OUT, GROUND_TRUTH_TOPICS, Evaluator
from perception_nodes.replay import run_graph


def _ground_truth(bag) -> tuple[tuple[str, ...], dict[int, list[Box3D]]]:
    with BagReader(bag) as reader:
        gt_topics = tuple(t for t in GROUND_TRUTH_TOPICS if t in reader.topics)
        objects = {stamp_to_ns(r.msg.header.stamp): boxes_from_detections(r.msg)
                   for r in reader.records(topics=[topics.GT_OBJECTS])}
    return gt_topics, objects


def _perfect(boxes: list[Box3D], cmap) -> list[Box3D]:
    mapped = cmap.map_boxes(boxes)
    return [replace(b, score=0.99 - 0.001 * ((7 * k) % 97), extras={})
            for k, (b, dc) in enumerate(zip(mapped.boxes, mapped.dont_care, strict=True)) if not dc]


@pytest.mark.slow
def test_replay_counts_scan_points_per_ground_truth_box(scenario_bag, tmp_path):
    cfg = load_detection_eval_config()
    assert cfg.min_points == 1
    gt_topics, objects = _ground_truth(scenario_bag)
    ev = Evaluator(expected_gt=gt_topics, real_truth=False)
    assert ev.lidar_to_base is None and topics.LIDAR_POINTS not in ev.inputs
    fed: list[int] = []
    B = default_backend()

    def on_output(name, msg):  # perfect detections beside each grid, from the bag's ground truth
        if name == topics.OCCUPANCY_GRID:
            s = stamp_to_ns(msg.header.stamp)
            g = min(objects, key=lambda k: abs(k - s))
            fed.append(g)
            ev.prediction(DETECTIONS_OUT, detections_msg(_perfect(objects[g], cfg.class_map), s, "base_link", B))

    run_graph(scenario_bag, load_params(None), tmp_path / "out", progress=False, on_output=on_output, evaluator=ev)
    assert ev.lidar_to_base is not None and topics.LIDAR_POINTS in ev.inputs  # wired by replay
    m = ev.results()
    det = m["detection"]
    assert det["filters"]["min_points_applied"] is True
    assert ev.point_count_failures == 0 and not ev._clouds  # every scan reduced or dropped
    assert m["frames_scored"] == len(fed) >= 8

    # independent count: Box3D.contains on each frame's scan, boxes and points both in the LiDAR frame
    # (read_bag_frames joins them on its own and transforms with the bag's /tf_static)
    want: Counter[str] = Counter()
    zero_boxes = 0
    scored = set(fed)
    frames = [f for f in read_bag_frames(scenario_bag) if min(objects, key=lambda k: abs(k - f.stamp_ns)) in scored]
    assert len(frames) == len(scored)
    for f in frames:
        mapped = cfg.class_map.map_boxes(f.boxes)
        for b, dc in zip(mapped.boxes, mapped.dont_care, strict=True):
            if not dc and not b.contains(f.points).any():
                want[b.label] += 1
                zero_boxes += 1
    assert zero_boxes > 0  # the scene has occluded / far boxes: the filter has something to do
    assert det["counts"]["gt_filtered_min_points"] == dict(sorted(want.items()))

    # AP of perfect detections: the filter only turns unreachable boxes into ignored ones
    unfiltered = detection_metrics(ev._det_gt, ev._det_pred, config=replace(cfg, min_points=None))
    assert unfiltered["filters"]["min_points_applied"] is False
    for cls in det["classes"]:
        with_f, without = det["kitti_ap_r40_3d"][cls], unfiltered["kitti_ap_r40_3d"][cls]
        if without is not None and without == without:
            assert with_f >= without - 1e-12, cls


def test_scan_joins_nearest_objects_frame_is_transformed_and_released():
    """Unit case: the scan (in a sensor frame 1 m ahead of base_link, 10 ms off the ground truth's stamp)
    is joined, moved into base_link, reduced to counts and dropped; a scan whose frame is unknown leaves
    its frame uncounted and the filter reported as not applied."""
    import numpy as np

    from perception_nodes.codecs.outputs import occupancy_grid_msg
    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud
    from perception_nodes.errors import CalibrationError

    B = default_backend()
    shift = np.eye(4)
    shift[0, 3] = 1.0  # "lidar" origin at x = 1 m in base_link

    def to_base(frame: str) -> np.ndarray:
        if frame != "lidar":
            raise CalibrationError(f"no transform for {frame!r}")
        return shift

    hit = Box3D("Car", (5.0, 0.0, 0.0), (2.0, 2.0, 2.0), 0.0)  # base_link x in [4, 6]
    empty = Box3D("Car", (-5.0, 0.0, 0.0), (2.0, 2.0, 2.0), 0.0)
    # three points at lidar x = 3.5 (base 4.5: inside `hit`; without the transform outside both boxes)
    pts = np.array([[3.5, 0.0, 0.0, 1.0], [3.5, 0.5, 0.0, 1.0], [3.5, -0.5, 0.0, 1.0]], np.float32)

    def run(frame: str) -> tuple[Evaluator, dict]:
        ev = Evaluator(lidar_to_base=to_base)
        for k in range(3):
            s = 1_000_000_000 + k * 100_000_000
            ev.ground_truth(topics.GT_OBJECTS, detections_msg([hit, empty], s, "base_link", B))
            ev.ground_truth(topics.LIDAR_POINTS, create_xyzi_cloud(pts.copy(), s + 10_000_000, frame, B))
            ev.prediction(DETECTIONS_OUT, detections_msg([replace(hit, score=0.9)], s, "base_link", B))
            grid = occupancy_grid_msg(np.zeros((4, 4), np.int8), 1.0, (-2.0, -2.0, 0.0), s, "base_link", B)
            ev.prediction(topics.OCCUPANCY_GRID, grid)
            ev.prediction(topics.OCCUPANCY_UNCERTAINTY, grid)
            assert len(ev._clouds) <= 2  # scans are reduced as soon as their frame resolves
        return ev, ev.results()

    ev, m = run("lidar")
    f = m["detection"]["filters"]
    assert f["min_points_applied"] is True and f["point_counts"]["gt_frames_uncounted"] == 0
    assert m["detection"]["counts"]["gt_filtered_min_points"] == {"car": 3}  # `empty`, every frame
    assert [b.extras["num_lidar_pts"] for b in ev._det_gt[0]] == [3, 0]
    assert not ev._clouds
    assert m["detection"]["kitti"]["per_class"]["car"]["all"]["fp_3d"] == 0
    # the same frames graded by KITTI level from the scan, beside the headline level "all"
    g = m["detection"]["kitti_graded"]
    assert g["levels"] == ["easy", "moderate", "hard"] and "virtual camera" in g["source"]
    assert g["occlusion_source"] == {"truth": 0, "scan": 2 * len(ev._det_gt_graded)}  # no state in these boxes
    graded = ev._det_gt_graded[0]
    assert [b.occlusion for b in graded] == [0, 3]  # `hit` seen by the sensor's rays; no ray reaches `empty`
    assert g["per_class"]["car"]["moderate"]["tp_3d"] == 3 and g["per_class"]["car"]["moderate"]["fp_3d"] == 0

    ev, m = run("radar_front")
    assert "kitti_graded" not in m["detection"]  # no scan: nothing to grade with
    f = m["detection"]["filters"]
    assert f["min_points_applied"] is False and f["point_counts"]["gt_frames_uncounted"] == 3
    assert m["detection"]["counts"]["gt_filtered_min_points"] == {}
    assert m["frames_scored"] == 3 and not ev._clouds
