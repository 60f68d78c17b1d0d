"""A hostile sensor over real rclpy: a burst of bad PointCloud2 messages, then a valid one that must
produce its grid, with every node still alive (answering its lifecycle service)."""

from __future__ import annotations

import numpy as np
import pytest

from perception_nodes import topics
from tests.ros_util import call, collector, kitti_clouds, set_stamp, spinning, stamp_ns, wait_for

pytestmark = pytest.mark.ros


def _cloud(points: np.ndarray, sec: int, *, bigendian: bool = False, cut: int | None = None):
    from sensor_msgs.msg import PointCloud2, PointField

    m = PointCloud2()
    m.header.frame_id, m.header.stamp.sec = "velodyne", sec
    n = len(points)
    m.height, m.width, m.point_step, m.row_step = 1, n, 16, 16 * n
    m.fields = [PointField(name=k, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                for i, k in enumerate(("x", "y", "z", "intensity"))]
    m.is_bigendian, m.is_dense = bigendian, False
    data = np.ascontiguousarray(points, np.float32).tobytes()
    m.data = data[:cut] if cut is not None else data
    return m


def _hostile(sec0: int) -> dict[str, object]:
    rng = np.random.default_rng(7)
    base = rng.uniform(-30, 30, (2000, 4)).astype(np.float32)
    base[:, 2] = rng.uniform(-1.7, 1.0, 2000)
    absurd = base.copy()
    absurd[:100, 0] = 1e30
    extreme = base.copy()
    extreme[:50, :3] = 3e38
    extreme[50:100, :3] = -3e38
    nans = base.copy()
    nans[::3, :3] = np.nan
    all_nan = np.full((500, 4), np.nan, np.float32)
    cases = {
        "absurd_1e30": _cloud(absurd, sec0 + 1),
        "plus_minus_3e38": _cloud(extreme, sec0 + 2),
        "wrong_is_bigendian": _cloud(base, sec0 + 3, bigendian=True),
        "truncated_data": _cloud(base, sec0 + 4, cut=1000),
        "nans": _cloud(nans, sec0 + 5),
        "all_nan": _cloud(all_nan, sec0 + 6),
        "empty": _cloud(np.zeros((0, 4), np.float32), sec0 + 7),
    }
    far = _cloud(base, 2_147_000_000)  # year 2038
    bad_frame = _cloud(base, sec0 + 8)
    bad_frame.header.frame_id = "no_such_frame"
    cases["unknown_frame"] = bad_frame
    zero_step = _cloud(base, sec0 + 9)
    zero_step.point_step = 0
    cases["zero_point_step"] = zero_step
    cases["far_future_2038"] = far
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("cases", [
    pytest.param(("absurd_1e30", "plus_minus_3e38", "wrong_is_bigendian", "truncated_data", "nans", "all_nan",
                  "empty", "unknown_frame", "zero_point_step"), id="malformed-and-absurd"),
    pytest.param(("far_future_2038",), id="far-future-stamp"),
])
def test_hostile_burst_then_a_valid_scan_yields_its_grid_and_every_node_lives(ros_context, kitti_bag, cases):
    import rclpy
    from lifecycle_msgs.msg import State
    from lifecycle_msgs.srv import GetState
    from sensor_msgs.msg import PointCloud2

    from perception_nodes.config import load_params
    from perception_nodes.ros.live import LiveGraph
    from perception_nodes.ros.qos import profile

    params = load_params()
    params["occupancy_grid"]["sync"]["obstacle_timeout_s"] = 2.0  # the nominal path, even on a loaded machine
    graph = LiveGraph(params=params, context=ros_context)
    user = rclpy.create_node("hostile_sensor", context=ros_context)
    graph.executor.add_node(user)
    got = collector(user, [(topics.OCCUPANCY_GRID, topics.OCCUPANCY_GRID_TYPE),
                           (topics.OBSTACLE_POINTS, topics.POINTCLOUD2, "sensor")])
    pub = user.create_publisher(PointCloud2, topics.LIDAR_POINTS, profile("reliable"))
    valid = kitti_clouds(kitti_bag)[0]
    sec0 = valid.header.stamp.sec - 100
    try:
        with spinning(graph.executor):
            assert wait_for(lambda: pub.get_subscription_count() >= 2, 15.0)
            gs = graph.node_by_name["ground_segmentation"]
            burst = [_hostile(sec0)[c] for c in cases]
            for i, msg in enumerate(burst):  # paced: sensor-data QoS keeps only the last 5 queued
                pub.publish(msg)
                assert wait_for(lambda i=i: gs.core.received[topics.LIDAR_POINTS] == i + 1, 20.0), cases[i]
            set_stamp(valid, stamp_ns(valid))
            pub.publish(valid)
            want = stamp_ns(valid)
            assert wait_for(lambda: any(stamp_ns(g) == want for g in got[topics.OCCUPANCY_GRID]), 30.0), (
                [stamp_ns(g) for g in got[topics.OCCUPANCY_GRID]],
                {n.get_name(): (dict(n.core.received), dict(n.core.malformed), dict(n.core.dropped),
                                dict(n.callback_errors)) for n in graph.nodes})
            for n in graph.nodes:  # alive: still active and answering its lifecycle service
                resp = call(user, GetState, f"/{n.get_name()}/get_state", GetState.Request())
                assert resp.current_state.id == State.PRIMARY_STATE_ACTIVE, n.get_name()
            # slower nodes (bev_fusion runs a larger network) may still be working on the valid scan when the
            # grid arrives: let every node finish what it received before the books are checked below
            wait_for(lambda: all(e["balanced"] for n in graph.nodes for e in n.core.accounting().values()), 30.0)
        grid = next(g for g in got[topics.OCCUPANCY_GRID] if stamp_ns(g) == want)
        data = np.asarray(grid.data, dtype=np.int8)
        assert (data >= 65).sum() > 50 and ((data >= 0) & (data < 35)).sum() > 1000
        n_in = len(burst) + 1
        assert gs.core.received[topics.LIDAR_POINTS] == n_in
        # every bad message left a trace: counted by the core (malformed/dropped) or caught by the adapter
        flagged = (sum(gs.core.malformed.values()) + sum(sum(c.values()) for c in gs.core.dropped.values())
                   + sum(gs.core.points_dropped.values()))
        assert flagged > 0 and gs.core.warnings
        # and nothing vanished uncounted: received == used + malformed + dropped + pending, on every input
        for n in graph.nodes:
            for topic, entry in n.core.accounting().items():
                assert entry["balanced"], (n.get_name(), topic, entry)
        assert not any(n.callback_errors for n in graph.nodes)  # the core caught everything itself
    finally:
        user.destroy_node()
        graph.close()
