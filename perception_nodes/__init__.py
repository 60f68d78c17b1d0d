"""Real-time perception node stack for ROS 2.

The package is a ROS-agnostic core (codecs, time sync, bags, latency accounting, pipelines, replay,
CLI) plus a thin rclpy layer in :mod:`perception_nodes.ros`. Nothing outside ``perception_nodes.ros``
imports rclpy, so offline replay and live ROS run the same code.
"""

__version__ = "0.1.0"
