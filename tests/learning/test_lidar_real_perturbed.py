"""benchmarks/lidar_real_perturbed.py: a perturbed frame turns its scan and labels together and keeps the
camera crop in place; the benchmark's unperturbed scores are lidar-eval's."""

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


def test_a_turn_moves_points_and_labels_together_and_dropout_removes_its_share():
    mod = _mod()
    mount = np.eye(4)
    mount[:3, 3] = (0.8, 0.0, 1.7)  # a LiDAR ahead of and above base_link
    pts = np.zeros((20_000, 4), np.float32)
    pts[:, 0] = 10.0  # every point at the box centre, 10 m ahead of the sensor
    box = Box3D("car", (10.0, 0.0, -1.0), (4.0, 1.8, 1.5), 0.2)
    f = Frame("test", "velo", 0, pts, [box], lidar_to_base=mount)
    yaw = math.radians(3.0)
    g = mod.perturbed(f, yaw, 0.1, np.random.default_rng(0))
    # about 10 % of the points gone (binomial: 4 sd of 20000 * 0.1 * 0.9 is 170)
    assert abs(len(g.points) - 18_000) < 170
    # the label and the points turn about base_link's z by the same angle: they still coincide
    b = g.boxes_in_base()[0]
    p = (g.lidar_to_base @ np.r_[g.points[0, :3].astype(np.float64), 1.0])[:3]
    assert np.allclose(p[:2], b.center[:2], atol=1e-4)
    assert math.isclose(b.yaw, 0.2 + yaw, abs_tol=1e-9)
    r = math.hypot(10.8, 0.0)
    assert math.isclose(math.hypot(*b.center[:2]), r, rel_tol=1e-9)  # a turn, not a shift
    assert math.isclose(math.atan2(b.center[1], b.center[0]), yaw, abs_tol=1e-9)
    # the original frame is untouched
    assert len(f.points) == 20_000 and np.array_equal(f.lidar_to_base, mount)
    # the crop (no camera in this frame: the +-45 deg fallback) still keeps a centre on the turned label
    keep = mod.camera_view(g, np.asarray([b.center]), 90.0)
    assert keep.tolist() == [True]


def test_unperturbed_scores_are_those_lidar_eval_stored_and_a_draw_scores_both_networks(kitti_dir, capsys):
    """The benchmark scores the packaged networks on the real frames as lidar-eval does (the sidecars hold
    lidar-eval's numbers), and one draw gives both networks a perturbed score."""
    import json

    from perception_nodes.models.weights_io import default_weights_dir, read_sidecar

    mod = _mod()
    assert mod.main(["--a", "lidar_detection_plain", "--b", "lidar_detection", "--draws", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key, name in (("a", "lidar_detection_plain"), ("b", "lidar_detection")):
        stored = read_sidecar(default_weights_dir(name), "lidar_detection")["metrics"]
        kitti = stored["kitti"]["centre_distance"]["per_class"]["car"]["ap"]
        nus = stored["nuscenes"]["nuscenes"]["map"]
        # AP ranks boxes: float differences between CPUs move it only if two scores swap, hence a small slack
        assert math.isclose(out["kitti_centre_distance_car_ap"]["unperturbed"][key], kitti, abs_tol=0.02)
        assert math.isclose(out["nuscenes_map"]["unperturbed"][key], nus, abs_tol=0.02)
        assert 0.0 <= out["kitti_centre_distance_car_ap"][f"{key}_mean"] <= 1.0
