"""The same builders and decoders on rclpy messages: same CDR content as rosbags, decoders agree."""

from __future__ import annotations

import array
import math
import struct

import numpy as np
import pytest

from perception_nodes.boxes import Box3D
from perception_nodes.codecs import (
    ERROR,
    CameraModel,
    DiagnosticStatusData,
    camera_info_msg,
    camera_model_from_msg,
    create_cloud,
    create_xyzi_cloud,
    diagnostic_array_msg,
    image_to_numpy,
    marker_array_msg,
    numpy_to_image,
    occupancy_grid_msg,
    read_points,
    read_xyzi,
)

pytest.importorskip("rclpy", reason="rclpy is not importable (source scripts/ros_env.sh or a ROS 2 setup)")
from rclpy.serialization import deserialize_message, serialize_message

from perception_nodes.ros.backend import RclpyBackend

pytestmark = pytest.mark.ros
RCLPY = RclpyBackend()


def rclpy_class(typename):
    pkg, _, name = typename.split("/")
    return getattr(__import__(f"{pkg}.msg", fromlist=[name]), name)


def same_cdr(build, typename, store):
    """Build with both backends and check both serialize to the same content.

    Raw bytes are not compared: Fast CDR leaves alignment padding uninitialised. Instead rosbags reads
    rclpy's bytes and must re-serialize them to exactly its own, and rclpy reads rosbags' bytes.
    Returns the rclpy message and rclpy's decoding of rosbags' bytes.
    """
    ours = build(RCLPY)
    ref = bytes(store.serialize_cdr(build(None), typename))
    parsed = store.deserialize_cdr(serialize_message(ours), typename)
    assert bytes(store.serialize_cdr(parsed, typename)) == ref
    return ours, deserialize_message(ref, rclpy_class(typename))


def test_xyzi_cloud(store):
    xyzi = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32)
    xyzi[5, 0] = np.nan
    msg, back = same_cdr(lambda b: create_xyzi_cloud(xyzi, 5, "velodyne", b), "sensor_msgs/msg/PointCloud2", store)
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B" and not msg.is_dense
    for m in (msg, back):
        out = read_xyzi(m)
        assert np.array_equal(out, xyzi, equal_nan=True)
        assert np.shares_memory(out, np.frombuffer(m.data, np.uint8))


def test_kitti_cloud(store, kitti_scan):
    _, back = same_cdr(lambda b: create_xyzi_cloud(kitti_scan, 5, "velodyne", b), "sensor_msgs/msg/PointCloud2", store)
    assert np.array_equal(read_xyzi(back), kitti_scan)


def test_general_layout_cloud(store):
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": [">f4", ">f4", ">f4", "u1", ">u2"],
                      "offsets": [0, 4, 8, 16, 18], "itemsize": 24})
    points = np.zeros((2, 3), dtype)
    for i, name in enumerate(dtype.names):
        points[name] = np.arange(6).reshape(2, 3) + 10 * i
    msg, back = same_cdr(lambda b: create_cloud(points, 9, "lidar", b), "sensor_msgs/msg/PointCloud2", store)
    assert msg.is_bigendian and (msg.height, msg.width) == (2, 3)
    assert np.array_equal(read_points(back), points.reshape(-1))
    assert np.array_equal(read_xyzi(back)[:, 3], np.arange(6) + 30)


def test_image(store):
    pixels = np.arange(2 * 3, dtype=np.uint16).reshape(2, 3) * 1000
    _, back = same_cdr(lambda b: numpy_to_image(pixels, "16UC1", 1, "cam", b), "sensor_msgs/msg/Image", store)
    assert np.array_equal(image_to_numpy(back), pixels)
    big = rclpy_class("sensor_msgs/msg/Image")(height=1, width=2, encoding="mono16", is_bigendian=1, step=4,
                                              data=array.array("B", struct.pack(">2H", 7, 65000)))
    assert image_to_numpy(big).tolist() == [[7, 65000]]


def test_camera_info(store):
    model = CameraModel(width=640, height=480, frame_id="cam", distortion_model="rational_polynomial",
                        K=np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]), D=np.arange(8) / 100,
                        R=np.eye(3), P=np.array([[500.0, 0, 320, 0], [0, 500, 240, 0], [0, 0, 1, 0]]))
    msg, back = same_cdr(lambda b: camera_info_msg(model, 3, b), "sensor_msgs/msg/CameraInfo", store)
    assert isinstance(msg.d, array.array)
    assert camera_model_from_msg(back) == model


def test_outputs(store):
    grid = np.arange(-1, 11, dtype=np.int8).reshape(3, 4)
    msg, back = same_cdr(lambda b: occupancy_grid_msg(grid, 0.5, (1.0, 2.0, 0.3), 7, "map", b),
                         "nav_msgs/msg/OccupancyGrid", store)
    assert msg.data.typecode == "b" and np.array_equal(np.frombuffer(back.data, np.int8), grid.reshape(-1))
    boxes = [Box3D("Car", (1.0, 2.0, 0.5), (4.0, 2.0, 1.5), 0.5)]
    _, back = same_cdr(lambda b: marker_array_msg(boxes, 7, "base_link", "det", b),
                       "visualization_msgs/msg/MarkerArray", store)
    assert [m.action for m in back.markers] == [3, 0]
    assert math.isclose(back.markers[1].pose.orientation.z, math.sin(0.25))
    statuses = [DiagnosticStatusData(ERROR, "lidar", "down", "", {"k": "v"})]
    msg, back = same_cdr(lambda b: diagnostic_array_msg(statuses, 7, b), "diagnostic_msgs/msg/DiagnosticArray", store)
    assert msg.status[0].level == b"\x02" and back.status[0].level == b"\x02"


def test_backend_adapts_scalars_and_drops_unknown_fields():
    point = RCLPY.new("geometry_msgs/msg/Point", x=np.float32(1.5), y=np.float64(2.0), z=3.0)
    assert (point.x, point.y, point.z) == (1.5, 2.0, 3.0)
    header = RCLPY.new("std_msgs/msg/Header", frame_id="a", not_in_this_distro=1)
    assert header.frame_id == "a"
    roi = RCLPY.new("sensor_msgs/msg/RegionOfInterest", x_offset=np.uint32(3), do_rectify=np.bool_(True))
    assert roi.x_offset == 3 and roi.do_rectify is True
