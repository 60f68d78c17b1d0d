"""The camera -> BEV node as a managed rclpy node on real Fast DDS (loopback, own domain): the generated
scenario's left image, camera_info and /tf_static published as ROS messages come back as OccupancyGrids
with the image's stamp, the health sample on its debug topic and the camera status on /diagnostics.
A small randomly initialised network from a temporary weights folder (the wiring does not depend on the
weights)."""

from __future__ import annotations

import pytest
import torch

from perception_nodes import topics
from tests.ros_util import collector, spin_until, stamp_ns
from tests.test_stereo_occupancy_ros import _ros_messages

pytestmark = pytest.mark.ros

SMALL = {"depth_bins": [1.0, 40.0, 1.0], "bev_origin": [-20.0, -20.0], "bev_size": [80, 80],
         "image_channels": [8, 16], "image_blocks": [0, 1], "context_channels": 8, "bev_channels": [8, 16],
         "occupancy_bias": 0.0}


def test_camera_bev_node_publishes_grids_health_and_diagnostics_a_subscriber_receives(ros_context, scenario_bag,
                                                                                      tmp_path):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from perception_nodes.config import load_params
    from perception_nodes.models.camera_bev import NETWORK, CameraBevNet
    from perception_nodes.models.weights_io import save_weights
    from perception_nodes.ros.backend import _message_class
    from perception_nodes.ros.node import ManagedCoreNode, tree_overrides
    from perception_nodes.ros.qos import profile

    torch.manual_seed(0)
    net = CameraBevNet(SMALL).eval()
    save_weights(net, tmp_path, network=NETWORK, config=net.config)
    p = {k: v for k, v in load_params()["camera_bev"].items() if k != "enabled"}
    p["weights"] = str(tmp_path)
    node = ManagedCoreNode("camera_bev", context=ros_context, parameter_overrides=tree_overrides(p))
    assert node.autostart() and node.is_active()
    wanted = {topics.TF_STATIC: topics.TF_MESSAGE, p["camera_info_topic"]: topics.CAMERA_INFO_TYPE,
              p["image_topic"]: topics.IMAGE}
    msgs = _ros_messages(scenario_bag, wanted)
    user = rclpy.create_node("camera_bev_user", context=ros_context)
    health = "/camera_bev/debug/image_health"
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
        for topic, msg in msgs:  # in bag order: tf_static, camera_info, image
            pubs[topic].publish(msg)
            spin_until(ex, lambda: False, 0.1)
        assert spin_until(ex, lambda: got[p["output_topic"]] and got[p["uncertainty_topic"]] and got[health], 30.0), \
            {k: len(v) for k, v in got.items()}
        image = next(m for t, m in msgs if t == p["image_topic"])
        grid = got[p["output_topic"]][0]
        assert stamp_ns(grid) == stamp_ns(image) and grid.header.frame_id == "base_link"
        assert (grid.info.width, grid.info.height) == (320, 320) and max(grid.data) >= 0 and min(grid.data) == -1
        assert got[health][0].data == 1.0 and stamp_ns(got[health][0]) == stamp_ns(image)
        assert spin_until(ex, lambda: any(s.name == "camera_bev: camera" and s.level == b"\x00"
                                          for d in got[topics.DIAGNOSTICS] for s in d.status), 10.0)
    finally:
        ex.shutdown()
        node.destroy_node()
        user.destroy_node()
