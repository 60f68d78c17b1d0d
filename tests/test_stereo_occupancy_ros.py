"""The stereo occupancy node as a managed rclpy node on real Fast DDS (loopback, own domain): the generated
scenario's stereo pair, camera_infos and /tf_static published as ROS messages come back as OccupancyGrids
with the pair's stamp, the health sample on its debug topic and the stereo status on /diagnostics."""

from __future__ import annotations

import pytest

from perception_nodes import topics
from tests.ros_util import collector, spin_until, stamp_ns

pytestmark = pytest.mark.ros


def _ros_messages(bag, wanted):
    """(topic, rclpy message) of the bag's first frame of each wanted topic, in bag order."""
    from rclpy.serialization import deserialize_message

    from perception_nodes.bags import BagReader
    from perception_nodes.ros.backend import _message_class

    out, seen = [], set()
    with BagReader(bag) as r:
        for rec in r.records(topics=list(wanted), raw=True):
            if rec.topic not in seen:
                seen.add(rec.topic)
                out.append((rec.topic, deserialize_message(bytes(rec.msg), _message_class(wanted[rec.topic]))))
    return out


def test_stereo_node_publishes_grids_health_and_diagnostics_a_subscriber_receives(ros_context, scenario_bag):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from perception_nodes.config import load_params
    from perception_nodes.ros.backend import _message_class
    from perception_nodes.ros.node import ManagedCoreNode, tree_overrides
    from perception_nodes.ros.qos import profile

    p = {k: v for k, v in load_params()["stereo_occupancy"].items() if k != "enabled"}
    node = ManagedCoreNode("stereo_occupancy", context=ros_context, parameter_overrides=tree_overrides(p))
    assert node.autostart() and node.is_active()
    wanted = {topics.TF_STATIC: topics.TF_MESSAGE}
    for side in ("left", "right"):
        wanted[topics.CAMERA_INFO.format(side=side)] = topics.CAMERA_INFO_TYPE
        wanted[topics.CAMERA_IMAGE.format(side=side)] = topics.IMAGE
    msgs = _ros_messages(scenario_bag, wanted)
    user = rclpy.create_node("stereo_user", context=ros_context)
    health = "/stereo_occupancy/debug/valid_disparity_ratio"
    got = collector(user, [(p["output_topic"], topics.OCCUPANCY_GRID_TYPE, "latched"),
                           (p["uncertainty_topic"], topics.OCCUPANCY_GRID_TYPE, "latched"),
                           (health, topics.FLOAT64_STAMPED),
                           (topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY)])
    pubs = {t: user.create_publisher(_message_class(ty), t, profile("latched" if t == topics.TF_STATIC else "reliable"))
            for t, ty in wanted.items()}
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(node)
    ex.add_node(user)
    try:
        assert spin_until(ex, lambda: all(pub.get_subscription_count() >= 1 for pub in pubs.values())
                          and node._pubs[p["output_topic"]].get_subscription_count() == 1, 15.0)
        for topic, msg in msgs:  # tf_static first, then each camera's image and camera_info
            pubs[topic].publish(msg)
            spin_until(ex, lambda: False, 0.1)  # keep the order the bag has
        assert spin_until(ex, lambda: got[p["output_topic"]] and got[p["uncertainty_topic"]] and got[health], 30.0), \
            {k: len(v) for k, v in got.items()}
        left = next(m for t, m in msgs if t == topics.CAMERA_IMAGE.format(side="left"))
        grid = got[p["output_topic"]][0]
        assert stamp_ns(grid) == stamp_ns(left) and grid.header.frame_id == "base_link"
        assert (grid.info.width, grid.info.height) == (320, 320) and max(grid.data) > 0 and min(grid.data) == -1
        assert 0.5 < got[health][0].data <= 1.0 and stamp_ns(got[health][0]) == stamp_ns(left)
        assert spin_until(ex, lambda: any(s.name == "stereo_occupancy: stereo" and s.level == b"\x00"
                                          for d in got[topics.DIAGNOSTICS] for s in d.status), 10.0)
    finally:
        ex.shutdown()
        node.destroy_node()
        user.destroy_node()
