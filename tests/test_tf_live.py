"""Transforms from /tf_static and /tf: the tree's rules, the tf2_msgs stand-in, and the live graph over rclpy.

The live test starts the graph with no calibration file, so the only way a cloud in the sensor frame can
become a grid in ``base_link`` is a transform received over DDS.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.calibration import StaticTransform, TransformTree, make_transform, quat_to_matrix, tf_message
from perception_nodes.codecs.backend import default_backend
from perception_nodes.errors import CalibrationError
from tests.ros_util import spin_until, stamp_ns


def _yaw(rad: float) -> np.ndarray:
    return quat_to_matrix((0.0, 0.0, math.sin(rad / 2), math.cos(rad / 2)))


def _mount(yaw: float, xyz: tuple[float, float, float], child: str = "velodyne", parent: str = "base_link"):
    return StaticTransform(parent, child, make_transform(_yaw(yaw), np.array(xyz)))


# --- the tree -------------------------------------------------------------------------------------------
def test_dynamic_edges_replace_per_child_and_static_ones_stay():
    tree = TransformTree([_mount(0.0, (0.0, 0.0, 1.73))])
    backend = default_backend()
    tree.update_from_tf_message(tf_message([_mount(0.5, (1.0, 0.0, 1.5))], 7, backend), static=False)
    assert tree.is_dynamic("velodyne")
    np.testing.assert_allclose(tree.lookup("base_link", "velodyne")[:3, 3], [1.0, 0.0, 1.5])
    tree.update_from_tf_message(tf_message([_mount(0.0, (2.0, 0.0, 1.5))], 8, backend), static=False)
    np.testing.assert_allclose(tree.lookup("base_link", "velodyne")[:3, 3], [2.0, 0.0, 1.5])  # latest wins
    tree.update_from_tf_message(tf_message([_mount(0.0, (0.0, 0.0, 1.73))], 9, backend), static=True)
    assert not tree.is_dynamic("velodyne")


def test_edges_above_the_common_ancestor_do_not_touch_a_sensor_lookup():
    """A moving map -> base_link (as /tf carries) leaves velodyne -> base_link bit-identical."""
    tree = TransformTree([_mount(0.3, (0.5, -0.2, 1.73))])
    before = tree.lookup("base_link", "velodyne")
    for k in range(5):
        tree.add(_mount(0.7 * k, (1e4 + 13.1 * k, -2e3, 0.0), child="base_link", parent="map"), static=False)
        assert np.array_equal(tree.lookup("base_link", "velodyne"), before)
    # and the path through the common ancestor still composes
    np.testing.assert_allclose(tree.lookup("map", "velodyne"), tree.lookup("map", "base_link") @ before, atol=1e-9)
    np.testing.assert_allclose(tree.lookup("velodyne", "base_link") @ before, np.eye(4), atol=1e-12)


def test_bad_transforms_are_rejected_alone_and_named():
    tree = TransformTree([_mount(0.0, (0.0, 0.0, 1.73))])
    backend = default_backend()
    loop = _mount(0.0, (0.0, 0.0, -1.0), child="base_link", parent="velodyne")  # would close base <-> velodyne
    msg = tf_message([loop, _mount(0.0, (1.0, 0.0, 0.0), child="radar")], 1, backend)
    msg.transforms[1].transform.rotation.w = 0.0  # zero quaternion
    msg.transforms.append(tf_message([_mount(0.0, (0.0, 1.0, 0.0), child="camera")], 1, backend).transforms[0])
    with pytest.raises(CalibrationError, match="2 of 3 transforms rejected.*loop.*quaternion"):
        tree.update_from_tf_message(msg, static=False)
    np.testing.assert_allclose(tree.lookup("base_link", "camera")[:3, 3], [0.0, 1.0, 0.0])  # the good one taken
    np.testing.assert_allclose(tree.lookup("base_link", "velodyne")[:3, 3], [0.0, 0.0, 1.73])  # tree intact
    with pytest.raises(CalibrationError, match="no transform"):
        tree.lookup("base_link", "radar")


# --- the tf2_msgs package in use -------------------------------------------------------------------------
def _tf2_msgs_share() -> Path:
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        share = Path(prefix) / "share" / "tf2_msgs"
        if (share / "package.xml").is_file():
            return share
    pytest.skip("no tf2_msgs on AMENT_PREFIX_PATH (run scripts/setup.sh, then . scripts/ros_env.sh)")


@pytest.mark.parametrize("name", ["TFMessage", "TF2Error"])
def test_tf2_msgs_in_use_has_upstreams_type_hash(name):
    """The stand-in (or a system ROS's tf2_msgs) hashes like upstream's definition, so DDS peers match.

    The reference is rosbags' type store, which carries ros2/geometry2's definitions independently of ours.
    """
    from rosbags.typesys import Stores, get_typestore

    desc = json.loads((_tf2_msgs_share() / "msg" / f"{name}.json").read_text())
    ours = desc["type_hashes"][0]
    assert ours["type_name"] == f"tf2_msgs/msg/{name}"
    assert ours["hash_string"] == get_typestore(Stores.ROS2_KILTED).hash_rihs01(f"tf2_msgs/msg/{name}")


# --- live, over rclpy ------------------------------------------------------------------------------------
def _scene() -> np.ndarray:
    """Flat ground (z = 0 in base_link) in rings, and a 1.5 m high wall at x = 12: (N, 4) x, y, z, intensity."""
    az = np.linspace(-math.pi, math.pi, 720, endpoint=False)
    rings = np.linspace(3.0, 30.0, 28)
    a, r = np.meshgrid(az, rings)
    pts = np.zeros((a.size, 4), np.float32)
    pts[:, 0], pts[:, 1] = (r * np.cos(a)).ravel(), (r * np.sin(a)).ravel()
    pts[:, 3] = 10.0
    wy, wz = np.meshgrid(np.linspace(-4.0, 4.0, 81), np.linspace(0.3, 1.5, 13))
    wall = np.zeros((wy.size, 4), np.float32)
    wall[:, 0], wall[:, 1], wall[:, 2], wall[:, 3] = 12.0, wy.ravel(), wz.ravel(), 50.0
    keep = ~((pts[:, 0] > 11.9) & (np.abs(pts[:, 1]) < 4.0))  # ground behind the wall is not seen
    return np.concatenate([pts[keep], wall])


def _in_sensor(base_pts: np.ndarray, mount: StaticTransform) -> np.ndarray:
    out = base_pts.copy()
    inv = np.linalg.inv(mount.matrix)
    out[:, :3] = (base_pts[:, :3].astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)
    return out


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each row of ``a`` (M, 3) to its nearest row of ``b`` (N, 3)."""
    return np.array([np.sqrt(((b - p) ** 2).sum(axis=1)).min() for p in a])


@pytest.mark.ros
@pytest.mark.slow
def test_live_graph_takes_tf_static_and_tf_without_a_calibration_file(ros_context):
    """/tf_static (latched) then /tf (dynamic, latest per child): clouds in sensor frames become base_link grids."""
    import rclpy

    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud, read_xyzi
    from perception_nodes.config import load_params
    from perception_nodes.ros.backend import RclpyBackend, _message_class
    from perception_nodes.ros.live import LiveGraph
    from perception_nodes.ros.qos import profile

    params = load_params()
    for name in ("ground_segmentation", "occupancy_grid"):
        params[name]["calibration_file"] = ""  # transforms can only come over DDS
    graph = LiveGraph(params=params, context=ros_context)
    node = rclpy.create_node("test_tf_publisher", context=ros_context)
    try:
        got: dict[str, list] = {topics.OCCUPANCY_GRID: [], topics.OBSTACLE_POINTS: []}
        # QoS as the outputs are published: the grid reliable (+ transient local), clouds best effort
        for t, msgtype, qos in ((topics.OCCUPANCY_GRID, topics.OCCUPANCY_GRID_TYPE, "reliable"),
                                (topics.OBSTACLE_POINTS, topics.POINTCLOUD2, "sensor")):
            node.create_subscription(_message_class(msgtype), t, got[t].append, profile(qos))
        graph.executor.add_node(node)
        backend = RclpyBackend()
        tf_static = node.create_publisher(_message_class(topics.TF_MESSAGE), topics.TF_STATIC, profile("latched"))
        tf_dyn = node.create_publisher(_message_class(topics.TF_MESSAGE), topics.TF, profile("reliable"))
        points = node.create_publisher(_message_class(topics.POINTCLOUD2), topics.LIDAR_POINTS, profile("reliable"))
        assert spin_until(graph.executor, lambda: points.get_subscription_count() >= 2
                           and tf_dyn.get_subscription_count() >= 2, 15.0), "graph did not subscribe"
        scene = _scene()

        def publish_cloud(frame: str, mount: StaticTransform) -> int:
            stamp = node.get_clock().now().nanoseconds
            points.publish(create_xyzi_cloud(_in_sensor(scene, mount), stamp, frame, backend))
            return stamp

        def outputs_for(stamp: int) -> tuple:
            assert spin_until(graph.executor, lambda: any(stamp_ns(g) == stamp for g in got[topics.OCCUPANCY_GRID])
                               and any(stamp_ns(o) == stamp for o in got[topics.OBSTACLE_POINTS]), 20.0), \
                {k: [stamp_ns(m) for m in v] for k, v in got.items()}
            grid = next(g for g in got[topics.OCCUPANCY_GRID] if stamp_ns(g) == stamp)
            obst = next(o for o in got[topics.OBSTACLE_POINTS] if stamp_ns(o) == stamp)
            return grid, read_xyzi(obst)

        def check(grid, obstacles: np.ndarray) -> None:
            assert grid.header.frame_id == "base_link"
            # obstacle points come out where the scene has them in base_link: the received transform was used
            # (float32 coordinates up to 30 m through two transforms: a few ulp of 30)
            wall = scene[scene[:, 3] == 50.0, :3]
            assert len(obstacles) >= 0.8 * len(wall)
            assert _nearest(obstacles[:, :3], wall).max() < 64 * np.finfo(np.float32).eps * 30.0
            data = np.asarray(grid.data, dtype=np.int8).reshape(grid.info.height, grid.info.width)
            res, ox, oy = grid.info.resolution, grid.info.origin.position.x, grid.info.origin.position.y
            row, col = int((0.0 - oy) / res), int((12.0 - ox) / res)
            assert data[row, col - 1: col + 2].max() >= 65  # the wall, straight ahead at 12 m
            assert 0 <= data[row, int((6.0 - ox) / res)] < 35  # free in front of it

        # static: latched /tf_static, published before any cloud
        mount = _mount(0.4, (1.2, -0.3, 1.73))
        tf_static.publish(tf_message([mount], node.get_clock().now().nanoseconds, backend))
        check(*outputs_for(publish_cloud("velodyne", mount)))

        # dynamic: a second sensor whose mount comes on /tf, with map -> base_link moving in the same message
        for k, yaw in enumerate((-0.6, 1.1)):
            dyn = _mount(yaw, (0.5, 0.4, 1.9), child="roof_lidar")
            odom = _mount(0.2 * k, (100.0 + k, 50.0, 0.0), child="base_link", parent="map")
            tf_dyn.publish(tf_message([odom, dyn], node.get_clock().now().nanoseconds, backend))
            # every node that listens to /tf (control and detection_fusion do not: use_tf false)
            tf_nodes = [n for n in graph.nodes if any(p.topic == topics.TF for p in n.core.inputs())]
            assert len(tf_nodes) >= 2, [n.core.name for n in graph.nodes]
            assert spin_until(graph.executor, lambda: all(
                n.core.transforms.is_dynamic("roof_lidar")
                and np.allclose(n.core.transforms.lookup("base_link", "roof_lidar"), dyn.matrix)
                for n in tf_nodes), 10.0), "the /tf transform did not reach every node that listens to /tf"
            check(*outputs_for(publish_cloud("roof_lidar", dyn)))
    finally:
        node.destroy_node()
        graph.close()
