"""The vehicle's own returns: the two tests of :mod:`perception_nodes.pipeline.self_returns` and the
footprint parser, and what they find in the real frames of ``../shared/data``."""

from __future__ import annotations

import numpy as np
import pytest

from perception_nodes.pipeline.self_returns import in_footprint, parse_ego_box, self_returns
from tests.conftest import SHARED_DATA, require

NUSC_PKL = SHARED_DATA / "nuscenes_mmdet3d_demo/demo/data/nuscenes/n015-2018-07-24-11-22-45+0800.pkl"


def test_near_the_sensor_is_horizontal_distance_from_the_sensor_and_the_footprint_includes_its_edges():
    pts = np.array([[0.9, 0.0, 1.8, 0.1],    # 0.6 m in front of a sensor at x = 1.5: near
                    [1.5, 0.0, -5.0, 0.1],   # straight below it, 5 m down: near (horizontal distance 0)
                    [2.7, 1.7, 0.5, 0.1],    # a corner of the footprint: inside
                    [2.71, 0.0, 0.5, 0.1],   # just ahead of it: kept
                    [-2.5, -1.7, 9.0, 0.1],  # the other corner, any height: inside
                    [10.0, 0.0, 0.5, 0.1]], np.float32)
    near, body = self_returns(pts, (1.5, 0.0), min_return_range=1.0, ego_box=(-2.5, 2.7, -1.7, 1.7))
    assert near.tolist() == [True, True, False, False, False, False]
    assert body.tolist() == [False, False, True, False, True, False]  # each point under one reason only
    none_near, none_body = self_returns(pts, (1.5, 0.0))
    assert not none_near.any() and not none_body.any()  # both off: nothing is the vehicle
    assert in_footprint(np.array([0.0, 3.0]), np.array([0.0, 0.0]), (-1.0, 1.0, -1.0, 1.0)).tolist() == [True, False]


@pytest.mark.parametrize("value", [[1, 2, 3], [2.7, -2.5, -1.7, 1.7], [-2.5, 2.7, 1.7, -1.7], ["a", 1, 2, 3],
                                   [float("nan"), 1, 2, 3], "x", "1234", 5])
def test_a_malformed_footprint_is_refused_with_the_key(value):
    with pytest.raises(ValueError, match="lidar_detection.ego_box"):
        parse_ego_box(value, "lidar_detection.ego_box")


def test_no_footprint_and_a_good_one():
    assert parse_ego_box(None) is None and parse_ego_box([]) is None
    assert parse_ego_box([0, 0, 0, 0]) is None  # how a ROS params file (no empty lists) switches it off
    assert parse_ego_box([-2.5, 2.7, -1.7, 1.7]) == (-2.5, 2.7, -1.7, 1.7)


def test_the_real_frames_hold_returns_of_their_own_vehicle(kitti_dir):
    """KITTI 000000 has returns of its own car inside the KITTI footprint (around the side mirrors); the
    nuScenes keyframe thousands within 1 m of its sensor (the mount). The generator draws none: why the node
    drops them."""
    from perception_nodes.calibration import transform_points
    from perception_nodes.datasets.kitti import read_kitti_object
    from perception_nodes.datasets.mmdet3d import read_mmdet3d_info

    kitti = next(iter(read_kitti_object(kitti_dir)))
    base = transform_points(kitti.lidar_to_base, np.asarray(kitti.points, np.float32)[:, :3])
    near, body = self_returns(base, kitti.lidar_to_base[:2, 3], min_return_range=1.0, ego_box=(-2.5, 2.7, -1.7, 1.7))
    assert body.sum() > 100 and np.all(base[body, 2] > 0.5)  # above the road: the car, not the ground
    nus = next(iter(read_mmdet3d_info(require(NUSC_PKL))))
    base = transform_points(nus.lidar_to_base, np.asarray(nus.points, np.float32)[:, :3])
    near, _ = self_returns(base, np.asarray(nus.lidar_to_base)[:2, 3], min_return_range=1.0)
    assert near.sum() > 1000
