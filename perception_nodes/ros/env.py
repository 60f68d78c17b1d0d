"""Process environment for ROS: loopback-only discovery unless the user set otherwise."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Fast DDS profile for 2 MB clouds between processes on one host: shared-memory segments that hold a
#: whole message and UDP on 127.0.0.1 only (see benchmarks/ros_hop.py: p50 ~5x lower than defaults).
FASTDDS_PROFILE = Path(__file__).resolve().parent / "fastdds" / "large_data_loopback.xml"


def ensure_loopback_default() -> None:
    """Default DDS discovery to this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``).

    Only sets what the user left unset: on a vehicle whose sensors sit on other hosts, export
    ``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`` (and a ``ROS_DOMAIN_ID``) before starting the stack.
    With the localhost range and Fast DDS, also use the project's large-data loopback profile unless
    the user set a profile file (or ``PERCEPTION_NO_FASTDDS_PROFILE=1``).
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if (
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
        and os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp"
        and not os.environ.get("PERCEPTION_NO_FASTDDS_PROFILE")
        and not os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE")
    ):
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))


def import_rclpy():
    ensure_loopback_default()
    import rclpy

    return rclpy


@contextmanager
def ros_node(name: str, args: list[str] | None = None, **node_kwargs: Any) -> Iterator[Any]:
    """rclpy initialised, one node created; everything torn down after.

    Ctrl-C or SIGTERM ends the block quietly: rclpy's signal handler shuts the context down, after
    which a spin raises ``ExternalShutdownException`` and a publish raises ``RCLError`` ("context is
    invalid"). Those are a requested stop, not a failure; an error raised while the context is still
    valid propagates.
    """
    from rclpy.executors import ExternalShutdownException

    rclpy = import_rclpy()
    rclpy.init(args=args)
    node = rclpy.create_node(name, **node_kwargs)
    try:
        yield node
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
