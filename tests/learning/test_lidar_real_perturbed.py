"""benchmarks/lidar_real_perturbed.py: a perturbed frame turns its scan and labels together, keeps the camera crop
on the turned labels and drops the vehicle's own returns before the turn; the benchmark's unperturbed scores are
lidar-eval's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from perception_nodes.boxes import Box3D
from perception_nodes.datasets.frame import Frame
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]


def _mod():
    return load_script(REPO / "benchmarks" / "lidar_real_perturbed.py", "lidar_real_perturbed")


def _frame(points: np.ndarray, boxes: list[Box3D], cameras: dict | None = None) -> Frame:
    mount = np.eye(4)
    mount[:3, 3] = (0.8, 0.0, 1.7)  # a LiDAR ahead of and above base_link
    return Frame("test", "velo", 0, points, boxes, lidar_to_base=mount, cameras=cameras or {})


def test_a_turn_moves_points_and_labels_together_and_dropout_removes_its_share():
    mod = _mod()
    pts = np.zeros((20_000, 4), np.float32)
    pts[:, 0] = 10.0  # every point at the box centre, 10 m ahead of the sensor
    f = _frame(pts, [Box3D("car", (10.0, 0.0, -1.0), (4.0, 1.8, 1.5), 0.2)])
    yaw = math.radians(3.0)
    g = mod.perturbed(f, yaw, 0.1, np.random.default_rng(0))
    # about 10 % of the points gone (binomial: 4 sd of 20000 * 0.1 * 0.9 is 170)
    assert abs(len(g.points) - 18_000) < 170
    # the label and the points turn about base_link's z by the same angle: they still coincide
    b = g.boxes_in_base()[0]
    p = (g.lidar_to_base @ np.r_[g.points[0, :3].astype(np.float64), 1.0])[:3]
    assert np.allclose(p[:2], b.center[:2], atol=1e-4)
    assert math.isclose(b.yaw, 0.2 + yaw, abs_tol=1e-9)
    assert math.isclose(math.hypot(*b.center[:2]), 10.8, rel_tol=1e-9)  # a turn, not a shift
    assert math.isclose(math.atan2(b.center[1], b.center[0]), yaw, abs_tol=1e-9)
    assert len(f.points) == 20_000 and f.lidar_to_base[0, 1] == 0.0  # the original frame is untouched


def test_the_camera_crop_follows_the_turn(tmp_path):
    """A label just inside the image edge stays inside after the turn: the crop maps base_link back through the
    turned mount. Read through the unturned mount it would fall outside (what the assertion would catch)."""
    import cv2

    mod = _mod()
    image = tmp_path / "cam.png"
    cv2.imwrite(str(image), np.zeros((50, 100, 3), np.uint8))  # 100 px wide
    # pinhole: f = 50 px, centre column 50 -> the image spans +-45 deg of azimuth; LiDAR (x fwd, y left, z up) ->
    # rectified camera (x right, y down, z forward)
    P = [[50.0, 0.0, 50.0, 0.0], [0.0, 50.0, 25.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    to_rect = [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    az = math.radians(44.0)  # 1 deg inside the left edge, as the LiDAR sees it
    box = Box3D("car", (20 * math.cos(az), 20 * math.sin(az), -1.0), (4.0, 1.8, 1.5), 0.0)
    f = _frame(np.zeros((10, 4), np.float32), [box], {"CAM2": {"P": P, "lidar_to_rect": to_rect,
                                                               "image_path": str(image)}})
    g = mod.perturbed(f, math.radians(3.0), 0.0, np.random.default_rng(0))
    centre = np.asarray([g.boxes_in_base()[0].center])
    assert mod.camera_view(g, centre, 90.0).tolist() == [True]
    # the same base_link centre read through the unturned mount lies 47 deg left: outside the image
    assert mod.camera_view(f, centre, 90.0).tolist() == [False]


def test_the_vehicles_own_returns_are_dropped_before_the_turn():
    mod = _mod()
    pts = np.zeros((3, 4), np.float32)
    pts[0, :3] = (0.3, 0.0, -1.0)   # 0.3 m from the sensor: "near" (min_return_range 1 m)
    pts[1, :3] = (-2.0, 1.2, -1.0)  # base_link (-1.2, 1.2): inside the ego box, beyond 1 m
    pts[2, :3] = (12.0, 0.0, -1.0)  # the scene
    f = _frame(pts, [])
    filt = {"min_return_range": 1.0, "ego_box": (-2.5, 2.7, -1.7, 1.7)}
    for yaw in (-0.5, 0.0, 0.5):  # whatever the turn (even a large one), the body's points go and the scene stays
        g = mod.perturbed(f, yaw, 0.0, np.random.default_rng(0), filt)
        assert g.points[:, 0].tolist() == [12.0]


def test_unperturbed_scores_are_lidar_evals_and_a_draw_scores_both_networks(kitti_dir, capsys, tmp_path):
    """The benchmark scores the packaged networks on the real frames exactly as lidar-eval --real-only does (same
    frames, filters, calibration, one thread), and one draw gives both networks a perturbed score."""
    import json

    import torch

    from perception_nodes.learning.lidar_detection_eval import main as lidar_eval

    threads = torch.get_num_threads()
    try:
        mod = _mod()
        assert mod.main(["--a", "lidar_detection_plain", "--b", "lidar_detection", "--draws", "1"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        for key, name in (("a", "lidar_detection_plain"), ("b", "lidar_detection")):
            m = tmp_path / f"{name}.json"
            assert lidar_eval(["--weights", name, "--real-only", "--threads", "1", "--eval-config",
                               str(REPO / "configs/train/lidar_detection_eval_default.yaml"), "--metrics-out", str(m)]) == 0
            ref = json.loads(m.read_text())
            kitti = ref["kitti"]["centre_distance"]["per_class"]["car"]["ap"]
            nus = ref["nuscenes"]["nuscenes"]["map"]
            # the same computation in one process: equal up to float summation order in the scorer
            assert math.isclose(out["kitti_centre_distance_car_ap"]["unperturbed"][key], kitti, abs_tol=1e-9)
            assert math.isclose(out["nuscenes_map"]["unperturbed"][key], nus, abs_tol=1e-9)
            assert 0.0 <= out["kitti_centre_distance_car_ap"][f"{key}_mean"] <= 1.0
    finally:
        torch.set_num_threads(threads)
