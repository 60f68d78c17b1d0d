"""Helpers for the ROS tests: spinning in the background, service calls, real clouds from a bag."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perception_nodes import topics


_HELD_DOMAINS: list = []  # lock files held for the life of this test process


def claim_ros_domain() -> int:
    """A ROS domain no other test of this run and no concurrent run on this host uses (nor the per-user one of
    ``scripts/ros_env.sh``): each is reserved by an flock on ``/tmp/perception_nodes-ros-domain-<id>.lock``,
    held until this process ends, and never handed out twice in a run. Why: rclpy 9 keeps an earlier test's
    lifecycle nodes alive in the process, and a same-named stale server in the domain made rmw_fastrtps report
    a later test's service as never available (CI, test_ros_hostile)."""
    import fcntl
    import os
    import random

    user_domain = 1 + os.getuid() % 101
    for domain in random.SystemRandom().sample(range(1, 101), 100):
        if domain == user_domain:
            continue
        f = open(f"/tmp/perception_nodes-ros-domain-{domain}.lock", "a")  # noqa: SIM115 -- held until exit
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another test of this run or another run has it
            f.close()
            continue
        _HELD_DOMAINS.append(f)
        return domain
    raise RuntimeError("no free ROS domain in 1-100 on this host (too many concurrent test runs?)")


def wait_for(cond: Callable[[], Any], timeout_s: float, period_s: float = 0.02) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(period_s)
    return bool(cond())


def spin_until(executor, cond: Callable[[], Any], timeout_s: float) -> bool:
    """Spin ``executor`` in this thread until ``cond()`` holds or ``timeout_s`` passes."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
        if cond():
            return True
    return bool(cond())


@contextmanager
def spinning(executor):
    """The executor spins in a background thread for the block (callbacks run on its worker threads)."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us at the end
                if stop.is_set():
                    return
                raise

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield executor
    finally:
        stop.set()
        t.join(5)


def call(node, srv_type, name: str, request, timeout_s: float = 20.0):
    """Call a service from ``node`` (whose executor spins elsewhere); the response or AssertionError."""
    client = node.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=timeout_s), (
            f"service {name} not available: {_service_endpoints(node, name)}")
        future = client.call_async(request)
        assert wait_for(future.done, timeout_s), f"{name}: no response"
        return future.result()
    finally:
        node.destroy_client(client)


def _service_endpoints(node, name: str) -> str:
    """Who serves ``name`` as this node's graph sees it: the request readers and response writers (node and GID)."""
    def ends(infos) -> list[str]:
        return [f"{i.node_namespace.rstrip('/')}/{i.node_name}:{bytes(i.endpoint_gid).hex()}" for i in infos]

    try:
        readers = ends(node.get_subscriptions_info_by_topic(f"rq{name}Request", no_mangle=True))
        writers = ends(node.get_publishers_info_by_topic(f"rr{name}Reply", no_mangle=True))
    except Exception as exc:  # noqa: BLE001 -- a diagnostic only
        return f"(graph query failed: {exc})"
    return f"request readers {readers}, response writers {writers}"


def kitti_clouds(bag: Path) -> list:
    """The bag's LiDAR clouds as rclpy PointCloud2 messages."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    from perception_nodes.bags import BagReader

    with BagReader(bag) as r:
        return [deserialize_message(bytes(rec.msg), PointCloud2)
                for rec in r.records(topics=[topics.LIDAR_POINTS], raw=True)]


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def set_stamp(msg, ns: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return msg


def collector(node, names_types) -> dict[str, list]:
    """Subscriptions on ``node`` appending each message to a list per topic; entries (topic, type[, qos])."""
    from perception_nodes.ros.backend import _message_class
    from perception_nodes.ros.qos import profile

    got: dict[str, list] = {n: [] for n, *_ in names_types}
    for name, msgtype, *qos in names_types:
        node.create_subscription(_message_class(msgtype), name, lambda m, n=name: got[n].append(m),
                                 profile(qos[0] if qos else "reliable"))
    return got
