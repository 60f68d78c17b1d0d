"""One ROS hop of a real KITTI cloud: rclpy + Fast DDS on loopback, publisher and subscriber in two processes.

    . scripts/ros_env.sh && python benchmarks/ros_hop.py [--messages 200] [--rate 10]

Two configurations run in the same invocation: the project's Fast DDS profile for large data on
loopback (perception_nodes/ros/fastdds/large_data_loopback.xml) and Fast DDS's defaults (the peer).
The publisher process stamps each 120k-point PointCloud2 (KITTI 000001, built with our codec and the
rclpy backend) with the system clock right before ``publish``; the subscriber process takes the system
clock when its callback starts (latency = transport + deserialisation into rclpy's message) and again
after decoding to an (N, 4) float32 array with ``read_xyzi``. For scale, the same run times a memcpy of
the cloud's bytes and rclpy's own serialize + deserialize round trip of the message (the floor of any
rclpy hop). Prints one JSON object as its last line. Goal (issue 2): p50 <= 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCAN = REPO.parent / "shared/data/kitti_object_vis/data/object/training/velodyne/000001.bin"
TOPIC = "/bench/points"


def _env() -> None:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # loopback only
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))


def _cloud():
    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud
    from perception_nodes.ros.backend import RclpyBackend

    scan = np.fromfile(SCAN, dtype="<f4").reshape(-1, 4)
    return create_xyzi_cloud(scan, 0, "velodyne", RclpyBackend()), scan


def _qos():
    from perception_nodes.ros.qos import profile

    return profile("reliable")


def publisher(n: int, rate: float) -> None:
    import rclpy  # FASTDDS_DEFAULT_PROFILES_FILE comes from the parent's choice of configuration
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("bench_publisher")
    pub = node.create_publisher(PointCloud2, TOPIC, _qos())
    msg, _ = _cloud()
    end = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.5)
    for _ in range(n):
        t = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t, 1_000_000_000)
        pub.publish(msg)
        time.sleep(1.0 / rate)
    time.sleep(0.5)
    node.destroy_node()
    rclpy.shutdown()


def subscriber(n: int, rate: float) -> dict:
    import rclpy
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2

    from perception_nodes.codecs.pointcloud2 import read_xyzi

    rclpy.init()
    node = rclpy.create_node("bench_subscriber")
    hop, decoded = [], []

    def cb(msg: PointCloud2) -> None:
        t = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        pts = read_xyzi(msg)
        np.add(pts[:1], 0)  # touch the data
        hop.append((t - stamp) / 1e6)
        decoded.append((time.time_ns() - stamp) / 1e6)

    node.create_subscription(PointCloud2, TOPIC, cb, _qos())
    proc = subprocess.Popen([sys.executable, __file__, "--publisher", "--messages", str(n), "--rate", str(rate)],
                            env=os.environ.copy())
    end = time.monotonic() + 30 + n / rate
    while len(hop) < n and time.monotonic() < end and proc.poll() is None:
        rclpy.spin_once(node, timeout_sec=0.1)
    proc.wait(timeout=30)

    msg, scan = _cloud()
    raw = scan.tobytes()
    dst = bytearray(len(raw))
    memcpy, roundtrip = [], []
    for _ in range(50):
        t0 = time.perf_counter_ns()
        dst[:] = raw
        memcpy.append((time.perf_counter_ns() - t0) / 1e6)
        t0 = time.perf_counter_ns()
        deserialize_message(serialize_message(msg), PointCloud2)
        roundtrip.append((time.perf_counter_ns() - t0) / 1e6)
    node.destroy_node()
    rclpy.shutdown()
    # the first messages include discovery and allocation warm-up: report steady state
    steady = np.asarray(hop[5:] if len(hop) > 10 else hop)
    dec = np.asarray(decoded[5:] if len(decoded) > 10 else decoded)
    return {
        "points": int(len(scan)),
        "bytes": len(raw),
        "sent": n,
        "received": len(hop),
        "p50_ms": round(float(np.percentile(steady, 50)), 3),
        "p99_ms": round(float(np.percentile(steady, 99)), 3),
        "max_ms": round(float(steady.max()), 3),
        "with_decode_p50_ms": round(float(np.percentile(dec, 50)), 3),
        "memcpy_ms": round(float(np.median(memcpy)), 3),
        "rclpy_serialize_roundtrip_ms": round(float(np.median(roundtrip)), 3),
        "rate_hz": rate,
        "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
    }


def _run_config(profile: str | None, n: int, rate: float) -> dict:
    env = os.environ.copy()
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    env["PERCEPTION_NO_FASTDDS_PROFILE"] = "1"
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = profile
    out = subprocess.run([sys.executable, __file__, "--subscriber", "--messages", str(n), "--rate", str(rate)],
                         env=env, capture_output=True, text=True, timeout=120 + n / rate)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--rate", type=float, default=10.0, help="publish rate in Hz (10 = a spinning LiDAR)")
    p.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--subscriber", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    _env()
    if not SCAN.is_file():
        sys.exit(f"real data not found: {SCAN}")
    if a.publisher:
        publisher(a.messages, a.rate)
        return
    if a.subscriber:
        print(json.dumps(subscriber(a.messages, a.rate)))
        return
    # the project's Fast DDS profile (what scripts/ros_env.sh and the CLI use on loopback) vs Fast DDS defaults
    from perception_nodes.ros.env import FASTDDS_PROFILE

    ours = _run_config(str(FASTDDS_PROFILE), a.messages, a.rate)
    default = _run_config(None, a.messages, a.rate)
    result = dict(ours)
    result["fastdds_profile"] = FASTDDS_PROFILE.name
    result["default_fastdds"] = {k: default[k] for k in ("received", "p50_ms", "p99_ms", "max_ms")}
    result["speedup_p50_vs_default"] = round(default["p50_ms"] / ours["p50_ms"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
