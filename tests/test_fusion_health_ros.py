"""The new health topics on real rclpy + Fast DDS (loopback, own domain): the occupancy grid node, run as a
managed node with the shipped params, publishes the scan health and its two parts with the scan's stamp on
``/occupancy_grid/debug/scan_health[/point_ratio|/azimuth_coverage]``, the topics the fusion node's
``geometric`` branch reads (the camera's exposure and the monitor's calibration score travel the same way,
as Float64Stamped emits of their node cores)."""

from __future__ import annotations

import pytest

from perception_nodes import topics
from tests.ros_util import collector, spin_until, stamp_ns
from tests.test_stereo_occupancy_ros import _ros_messages

pytestmark = pytest.mark.ros

HEALTH = "/occupancy_grid/debug/scan_health"


def test_occupancy_node_publishes_scan_health_a_subscriber_receives(ros_context, scenario_bag):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from perception_nodes.config import load_params
    from perception_nodes.ros.backend import _message_class
    from perception_nodes.ros.node import ManagedCoreNode, tree_overrides
    from perception_nodes.ros.qos import profile

    p = {k: v for k, v in load_params()["occupancy_grid"].items() if k != "enabled"}
    p["sync"]["obstacle_timeout_s"] = 0.05  # no ground segmentation here: the grid comes from the raw scan
    assert p["scan_health_topic"] == "~/debug/scan_health"
    fusion = load_params()["fusion"]["branches"]["geometric"]["health_inputs"]
    # what the fusion node reads is what this node publishes: the scan health's two parts
    assert {fusion["points"]["topic"], fusion["coverage"]["topic"]} == {f"{HEALTH}/point_ratio", f"{HEALTH}/azimuth_coverage"}
    node = ManagedCoreNode("occupancy_grid", context=ros_context, parameter_overrides=tree_overrides(p))
    assert node.autostart() and node.is_active()
    wanted = {topics.TF_STATIC: topics.TF_MESSAGE, p["raw_topic"]: topics.POINTCLOUD2}
    msgs = _ros_messages(scenario_bag, wanted)
    user = rclpy.create_node("scan_health_user", context=ros_context)
    parts = [HEALTH, f"{HEALTH}/point_ratio", f"{HEALTH}/azimuth_coverage"]
    got = collector(user, [(t, topics.FLOAT64_STAMPED) for t in parts])
    pubs = {t: user.create_publisher(_message_class(ty), t, profile("latched" if t == topics.TF_STATIC else "reliable"))
            for t, ty in wanted.items()}
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(node)
    ex.add_node(user)
    try:
        assert spin_until(ex, lambda: all(pub.get_subscription_count() >= 1 for pub in pubs.values()), 15.0)
        for topic, msg in msgs:  # tf_static, then the scan
            pubs[topic].publish(msg)
            spin_until(ex, lambda: False, 0.1)
        assert spin_until(ex, lambda: all(got[t] for t in parts), 30.0), {k: len(v) for k, v in got.items()}
        scan = next(m for t, m in msgs if t == p["raw_topic"])
        for t in parts:
            assert stamp_ns(got[t][0]) == stamp_ns(scan)
        # the first scan: no baseline yet (ratio 1), a full spin (coverage 1)
        assert got[f"{HEALTH}/point_ratio"][0].data == 1.0
        assert got[f"{HEALTH}/azimuth_coverage"][0].data == 1.0 and got[HEALTH][0].data == 1.0
    finally:
        ex.shutdown()
        node.destroy_node()
        user.destroy_node()
