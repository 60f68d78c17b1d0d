"""Process environment for ROS: loopback-only discovery unless the user set otherwise."""

from __future__ import annotations

import os


def ensure_loopback_default() -> None:
    """Default DDS discovery to this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``).

    Only sets what the user left unset: on a vehicle whose sensors sit on other hosts, export
    ``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`` (and a ``ROS_DOMAIN_ID``) before starting the stack.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def import_rclpy():
    ensure_loopback_default()
    import rclpy

    return rclpy
