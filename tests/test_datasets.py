"""Readers: KITTI folders, mmdetection3d info pickles (KITTI + nuScenes), the project's own bags."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from perception_nodes.datasets import read_bag_frames, read_kitti_object, read_mmdet3d_info
from perception_nodes.datasets.mmdet3d import load_info
from tests.conftest import SHARED_DATA, require

KITTI_PKL = SHARED_DATA / "kitti_mmdet3d_demo/demo/data/kitti/000008.pkl"
NUSC_PKL = SHARED_DATA / "nuscenes_mmdet3d_demo/demo/data/nuscenes/n015-2018-07-24-11-22-45+0800.pkl"


def test_kitti_folder_frames(kitti_dir):
    frames = list(read_kitti_object(kitti_dir))
    assert [f.frame_id for f in frames] == ["000000", "000001", "000002"]
    assert [len(f.points) for f in frames] == [115384, 120268, 126891]
    assert sorted(b.label for b in frames[1].boxes) == ["Car", "Cyclist", "Truck"]
    base = frames[0].boxes_in_base()[0]
    assert abs(base.center[2] - frames[0].boxes[0].center[2] - 1.73) < 1e-9


def test_mmdet3d_kitti_pickle_boxes_contain_the_verified_point_counts():
    frame = next(read_mmdet3d_info(require(KITTI_PKL)))
    assert len(frame.points) == 17238 and all(b.label == "Car" for b in frame.boxes) and len(frame.boxes) == 6
    counts = [int(b.contains(frame.points).sum()) for b in frame.boxes]
    # SOURCE.md: our containment counts from this cloud, bottom-centre labels moved to gravity centre
    assert counts == pytest.approx([1424, 1940, 878, 668, 53, 164], rel=0.04, abs=3)
    mm = [b.extras["num_lidar_pts"] for b in frame.boxes]
    assert mm == [1325, 1900, 881, 659, 55, 162]


def test_mmdet3d_kitti_pickle_keeps_what_difficulty_needs():
    """The info's 2D boxes, occlusion and truncation give KITTI levels equal to the info's own difficulty field
    (-1: fails every level, e.g. the two cars truncated at the image edge), so 000008 is scored per level."""
    from perception_nodes.eval.metrics.kitti_difficulty import kitti_difficulty

    frame = next(read_mmdet3d_info(require(KITTI_PKL)))
    assert frame.boxes[1].extras["bbox2d"] == pytest.approx((334.85, 178.94, 624.5, 372.04), abs=0.01)
    names = {-1: None, 0: "easy", 1: "moderate", 2: "hard"}
    assert [kitti_difficulty(b) for b in frame.boxes] == [names[b.extras["difficulty"]] for b in frame.boxes]
    assert [b.extras["difficulty"] for b in frame.boxes] == [-1, 1, -1, 1, 1, 0]


def test_mmdet3d_nuscenes_pickle_uses_gravity_centres():
    frame = next(read_mmdet3d_info(require(NUSC_PKL)))
    assert frame.points.shape == (34688, 5)
    assert len(frame.boxes) == 68  # 69 instances, one with the ignored label -1
    err = sum(abs(int(b.contains(frame.points).sum()) - b.extras["num_lidar_pts"]) for b in frame.boxes)
    assert err < 60  # SOURCE.md: total abs error 29 with gravity centres (537 with bottom centres)
    assert {"CAM_FRONT", "CAM_BACK_LEFT"} <= set(frame.cameras)
    # LiDAR frame is x right, y forward: the ego frame turns it by ~90 degrees
    assert abs(frame.lidar_to_base[0, 1]) > 0.99


def test_info_pickles_load_without_executing_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"data_list": [Evil()]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_info(bad)
    assert load_info(require(KITTI_PKL))["metainfo"]["DATASET"] == "KITTI"


def test_own_bag_frames_match_the_kitti_source(kitti_bag, kitti_dir):
    frames = list(read_bag_frames(kitti_bag))
    src = list(read_kitti_object(kitti_dir))
    assert len(frames) == 3
    for f, s in zip(frames, src, strict=True):
        assert np.array_equal(f.points, s.points)
        assert sorted(b.label for b in f.boxes) == sorted(b.label for b in s.boxes)
        for a, b in zip(sorted(f.boxes, key=lambda b: b.center), sorted(s.boxes, key=lambda b: b.center), strict=True):
            assert np.allclose(a.center, b.center, atol=1e-6) and abs(np.sin(a.yaw - b.yaw)) < 1e-6


def test_own_generated_bag_frames_carry_every_ground_truth_grid(scenario_bag):
    """Generated bags write the grids after the objects: a frame must wait for all of them."""
    frames = list(read_bag_frames(scenario_bag))
    assert len(frames) == 10
    for f in frames:
        assert {"/ground_truth/occupancy", "/ground_truth/occupancy/visibility"} <= set(f.extras)
        assert f.boxes and np.isclose(f.lidar_to_base[2, 3], 1.73)


def test_kitti_labels_keep_what_difficulty_needs(kitti_dir, kitti_bag):
    """read_labels keeps the 2D box, occlusion and truncation; KITTI's levels follow from them."""
    from dataclasses import replace

    from perception_nodes.eval.detection_eval import detection_metrics
    from perception_nodes.eval.metrics.kitti_difficulty import kitti_difficulty

    frames = list(read_kitti_object(kitti_dir))
    by = {f.frame_id: {b.label: b for b in f.boxes} for f in frames}
    ped = by["000000"]["Pedestrian"]  # label line: 0.00 0 -0.20 712.40 143.00 810.73 307.92 ...
    assert ped.extras["bbox2d"] == pytest.approx((712.40, 143.00, 810.73, 307.92))
    assert (ped.occlusion, ped.truncation, ped.extras["alpha"]) == (0, 0.0, pytest.approx(-0.20))
    assert kitti_difficulty(ped) == "easy"  # 164.9 px, fully visible
    assert kitti_difficulty(by["000001"]["Car"]) is None  # 21.6 px: below every level
    assert by["000001"]["Cyclist"].occlusion == 3 and kitti_difficulty(by["000001"]["Cyclist"]) is None
    assert kitti_difficulty(by["000002"]["Car"]) == "moderate"  # 33.3 px
    # scored with the class map: Truck and Misc dropped and counted; levels from the labels
    gt = [f.boxes for f in frames]
    pred = [[replace(b, label=b.label.lower(), score=0.9) for b in f.boxes if b.label in ("Car", "Pedestrian", "Cyclist")]
            for f in frames]
    m = detection_metrics(gt, pred, points=[f.points for f in frames])
    assert m["counts"]["gt_unmapped"] == {"Misc": 1, "Truck": 1}
    # the car at 58.5 m (50 m gate) and the cyclist at 45.9 m (40 m gate)
    assert m["counts"]["gt_filtered_range"] == {"car": 1, "cyclist": 1}
    assert m["kitti"]["levels"] == ["easy", "moderate", "hard"]
    n = {c: [m["kitti"]["per_class"][c][lv]["n_gt"] for lv in ("easy", "moderate", "hard")] for c in m["classes"]}
    assert n == {"car": [0, 1, 1], "pedestrian": [1, 1, 1], "cyclist": [0, 0, 0]}
    # the converted bag keeps occlusion and truncation, but its message has no 2D box: one level "all"
    bag = list(read_bag_frames(kitti_bag))
    assert all("bbox2d" not in b.extras for f in bag for b in f.boxes)
    assert sorted(b.occlusion for f in bag for b in f.boxes) == sorted(b.occlusion for f in frames for b in f.boxes)
    assert detection_metrics([f.boxes for f in bag], [[] for _ in bag])["kitti"]["levels"] == ["all"]
