"""The control node as a managed rclpy node on real Fast DDS (loopback, own domain): a publisher sends
perception_interfaces/CurvaturePrediction, a subscriber receives ackermann_msgs/AckermannDriveStamped (or
geometry_msgs/TwistStamped) and perception_interfaces/ControlUncertainty with the same stamp."""

from __future__ import annotations

import math

import pytest

from perception_nodes import topics
from perception_nodes.config import load_params
from tests.ros_util import collector, spin_until, stamp_ns

pytestmark = pytest.mark.ros

CURV = "/perception/lidar/curvature"


def _params(command_type: str) -> dict:
    p = {k: v for k, v in load_params()["control"].items() if k != "enabled"}
    # max_input_latency_s: the first sample over a fresh DDS match may only arrive with the next heartbeat's
    # repair (1.5 s once in a fresh-clone run, a stamp "1.48 s old at arrival" -> fallback, steering 0); these
    # tests are about the command the curvature gives; the late-input fallback is tested in test_control_node.py
    p.update(command_type=command_type, health_points_topic="", odometry_topic="", max_input_latency_s=10.0)
    return p


def _prediction(stamp: int, k: float):
    import numpy as np
    from perception_interfaces.msg import CurvaturePrediction

    msg = CurvaturePrediction()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.header.frame_id = "base_link"
    msg.horizon_m = [0.0, 10.0, 20.0]
    msg.curvature = [k, k, k]
    msg.aleatoric_variance = [1e-5] * 3
    msg.epistemic_variance = [1e-6] * 3
    msg.variance = list(np.add(msg.aleatoric_variance, msg.epistemic_variance))
    return msg


@pytest.mark.parametrize("command_type", ["ackermann", "twist"])
def test_curvature_in_command_and_uncertainty_out_on_real_rclpy(ros_context, command_type):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from perception_interfaces.msg import ControlUncertainty, CurvaturePrediction
    from perception_nodes.ros.node import ManagedCoreNode, tree_overrides
    from perception_nodes.ros.qos import profile

    p = _params(command_type)
    ctype = "ackermann_msgs/msg/AckermannDriveStamped" if command_type == "ackermann" else "geometry_msgs/msg/TwistStamped"
    node = ManagedCoreNode("control", context=ros_context, parameter_overrides=tree_overrides(p))
    assert node.autostart() and node.is_active()
    user = rclpy.create_node("control_user", context=ros_context)
    got = collector(user, [(p["command_topic"], ctype),
                           (p["uncertainty_topic"], "perception_interfaces/msg/ControlUncertainty"),
                           (topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY)])
    pub = user.create_publisher(CurvaturePrediction, CURV, profile("reliable"))
    ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
    ex.add_node(node)
    ex.add_node(user)
    try:
        assert spin_until(ex, lambda: pub.get_subscription_count() == 1
                          and node._pubs[p["command_topic"]].get_subscription_count() == 1, 15.0)
        now = node.get_clock().now().nanoseconds
        pub.publish(_prediction(now, 0.02))
        assert spin_until(ex, lambda: got[p["command_topic"]] and got[p["uncertainty_topic"]], 20.0)
        cmd, unc = got[p["command_topic"]][0], got[p["uncertainty_topic"]][0]
        assert isinstance(unc, ControlUncertainty) and stamp_ns(cmd) == stamp_ns(unc) == now
        if command_type == "ackermann":
            from ackermann_msgs.msg import AckermannDriveStamped

            assert isinstance(cmd, AckermannDriveStamped)
            assert cmd.drive.steering_angle == pytest.approx(math.atan(p["vehicle"]["wheelbase_m"] * 0.02), rel=1e-5)
            assert cmd.drive.speed > 0
        else:
            from geometry_msgs.msg import TwistStamped

            assert isinstance(cmd, TwistStamped)
            assert cmd.twist.angular.z == pytest.approx(cmd.twist.linear.x * 0.02, rel=1e-5)
        assert unc.curvature == pytest.approx(0.02) and unc.interval_low < 0.02 < unc.interval_high
        assert not unc.fallback and unc.interval_level == pytest.approx(0.9)
        # silence: the timer publishes fallback commands and /diagnostics turns WARN with the reason
        assert spin_until(ex, lambda: any(u.fallback for u in got[p["uncertainty_topic"]]), 10.0)
        assert spin_until(ex, lambda: any(s.name == "control: command" and s.level in (b"\x01", b"\x02")
                                          and "stale" in s.message
                                          for d in got[topics.DIAGNOSTICS] for s in d.status), 10.0)
    finally:
        ex.shutdown()
        node.destroy_node()
        user.destroy_node()
