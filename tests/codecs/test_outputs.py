"""Output builders: the messages serialize with rosbags and come back with the intended contents."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.boxes import Box3D
from perception_nodes.codecs import (
    ERROR,
    OK,
    STALE,
    WARN,
    DiagnosticStatusData,
    diagnostic_array_msg,
    marker_array_msg,
    occupancy_grid_msg,
)

STAMP = 1_700_000_000_123_456_789


def test_occupancy_grid_layout(cdr_roundtrip):
    grid = np.random.default_rng(0).integers(-1, 101, (3, 5)).astype(np.int8)
    built = occupancy_grid_msg(grid, 0.25, (-10.0, 4.0, math.pi / 2), STAMP, "map")
    msg = cdr_roundtrip(built, "nav_msgs/msg/OccupancyGrid")
    info = msg.info
    assert (info.width, info.height) == (5, 3) and info.resolution == 0.25
    assert (info.map_load_time.sec, info.map_load_time.nanosec) == (1_700_000_000, 123_456_789)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (1_700_000_000, 123_456_789, "map")
    assert (info.origin.position.x, info.origin.position.y, info.origin.position.z) == (-10.0, 4.0, 0.0)
    q = info.origin.orientation
    assert np.allclose([q.x, q.y, q.z, q.w], [0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    assert msg.data.dtype == np.int8 and msg.data[1 * 5 + 2] == grid[1, 2]  # row-major, row 0 first
    assert np.array_equal(msg.data.reshape(3, 5), grid)


@pytest.mark.parametrize("data,resolution", [(np.zeros((2, 2), np.uint8), 1.0), (np.zeros(4, np.int8), 1.0),
                                             (np.zeros((2, 2), np.int8), 0.0)])
def test_occupancy_grid_rejects_bad_input(data, resolution):
    with pytest.raises(ValueError):
        occupancy_grid_msg(data, resolution, (0, 0, 0), 0, "map")


BOXES = [Box3D("Car", (10.0, -2.0, 0.8), (4.2, 1.8, 1.6), math.pi / 3),
         Box3D("Tram", (30.0, 5.0, 1.5), (12.0, 2.5, 3.0), -0.4, score=0.7)]


def test_marker_array(cdr_roundtrip):
    msg = cdr_roundtrip(marker_array_msg(BOXES, STAMP, "base_link", "gt"), "visualization_msgs/msg/MarkerArray")
    clear, car, tram = msg.markers
    assert clear.action == 3 and clear.ns == "gt"  # DELETEALL first
    assert [m.id for m in (car, tram)] == [0, 1] and {m.type for m in (car, tram)} == {1}
    assert {m.action for m in (car, tram)} == {0}
    assert (car.pose.position.x, car.pose.position.y, car.pose.position.z) == (10.0, -2.0, 0.8)
    assert math.isclose(2 * math.atan2(car.pose.orientation.z, car.pose.orientation.w), math.pi / 3)
    assert math.isclose(2 * math.atan2(tram.pose.orientation.z, tram.pose.orientation.w), -0.4)
    assert (car.scale.x, car.scale.y, car.scale.z) == (4.2, 1.8, 1.6)
    assert (car.lifetime.sec, car.lifetime.nanosec) == (0, 200_000_000)
    assert car.header.frame_id == "base_link" and car.header.stamp.nanosec == 123_456_789
    assert car.color.a > 0 and (car.color.r, car.color.g, car.color.b) != (tram.color.r, tram.color.g, tram.color.b)
    assert car.text == "Car"
    plain = marker_array_msg(BOXES, STAMP, "base_link", "gt", lifetime_s=1.5, delete_all=False)
    assert [m.action for m in plain.markers] == [0, 0]
    assert (plain.markers[0].lifetime.sec, plain.markers[0].lifetime.nanosec) == (1, 500_000_000)
    assert len(marker_array_msg([], 0, "f", "gt").markers) == 1


def test_diagnostic_array(cdr_roundtrip):
    assert (OK, WARN, ERROR, STALE) == (0, 1, 2, 3)
    values = {"malformed": "2", "rate": "10.0"}
    statuses = [DiagnosticStatusData(WARN, "lidar: decode", "2 malformed", "velodyne", values),
                DiagnosticStatusData(OK, "camera", "ok")]
    msg = cdr_roundtrip(diagnostic_array_msg(statuses, STAMP), "diagnostic_msgs/msg/DiagnosticArray")
    warn, ok = msg.status
    assert (warn.level, warn.name, warn.message, warn.hardware_id) == (WARN, "lidar: decode", "2 malformed", "velodyne")
    assert [(kv.key, kv.value) for kv in warn.values] == [("malformed", "2"), ("rate", "10.0")]
    assert (ok.level, ok.values) == (OK, [])
    assert msg.header.stamp.sec == 1_700_000_000
