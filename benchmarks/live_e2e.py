"""End-to-end latency of the live graph (scan published -> grid received outside) beside replay on the same bag.

    . scripts/ros_env.sh && nice python benchmarks/live_e2e.py [--rounds 10] [--period 0.5]

The bag is a 2 s run of the embedded default scenario (20 frames of ~122k points, as ``replay`` uses by
default). Live:
``perception-stack live`` runs as its own process (all nodes in one process, multi-threaded executor,
obstacle cloud handed to the grid in process); this process publishes each scan over rclpy + Fast DDS
on loopback with its stamp set to the system clock right before ``publish``, and an external subscriber
here takes the system clock when the grid arrives (latency = DDS hop of the scan + both nodes + DDS hop
of the grid + deserialisation). Scans are sent one every ``--period`` seconds so no queue builds up.
Replay: ``perception-stack replay`` on the same bag; its end-to-end figure is stamp -> grid out on the
replay clock (processing only: no transport, no serialisation). Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _summary(x: list[float]) -> dict:
    a = np.asarray(x, float)
    return {"count": int(a.size), "p50_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "max_ms": float(a.max())}


def live(bag: Path, rounds: int, period: float) -> dict:
    from perception_nodes import topics
    from perception_nodes.ros.env import import_rclpy

    rclpy = import_rclpy()
    from nav_msgs.msg import OccupancyGrid
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    from perception_nodes.bags import BagReader
    from perception_nodes.ros.qos import profile

    with BagReader(bag) as r:
        clouds = [deserialize_message(bytes(rec.msg), PointCloud2)
                  for rec in r.records(topics=[topics.LIDAR_POINTS], raw=True)]
    proc = subprocess.Popen([sys.executable, "-m", "perception_nodes", "live"], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    node = rclpy.create_node("live_e2e_bench")
    sent: dict[int, int] = {}
    lat: list[float] = []

    def on_grid(msg) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if stamp in sent:
            lat.append((now - sent.pop(stamp)) / 1e6)

    node.create_subscription(OccupancyGrid, topics.OCCUPANCY_GRID, on_grid, profile("reliable"))
    # the nodes' own view (their debug topics): where the time goes
    from perception_nodes.ros.backend import _message_class

    debug = {k: [] for k in ("/occupancy_grid/debug/pipeline_latency_ms", "/ground_segmentation/debug/processing_time_ms",
                             "/occupancy_grid/debug/processing_time_ms")}
    for k in debug:
        node.create_subscription(_message_class(topics.FLOAT64_STAMPED), k, lambda m, k=k: debug[k].append(m.data),
                                 profile("reliable"))
    pub = node.create_publisher(PointCloud2, topics.LIDAR_POINTS, profile("reliable"))
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [rclpy.spin_once(node, timeout_sec=0.05) for _ in iter(stop.is_set, True)],
                               daemon=True)
    spinner.start()
    try:
        end = time.monotonic() + 120
        while pub.get_subscription_count() < 2 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(1.0)
        for i in range(rounds * len(clouds)):
            msg = clouds[i % len(clouds)]
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
            sent[now] = now
            pub.publish(msg)
            time.sleep(period)
        time.sleep(2.0)
    finally:
        stop.set()
        spinner.join(2)
        proc.terminate()
        proc.communicate(timeout=20)
        node.destroy_node()
        rclpy.shutdown()
    parts = {k.split("/")[1] + "." + k.split("/")[-1]: _summary(v[3:]) for k, v in debug.items() if len(v) > 3}
    return {**_summary(lat[3:]), "lost": len(sent), "warm_up_frames_skipped": 3, "inside_live": parts}


def replay_e2e(bag: Path, out: Path) -> dict:
    from perception_nodes.replay import replay

    res = replay(bag, None, out, progress=False, report=False)
    e = res.latency["end_to_end"]
    st = res.latency["stages"]
    parts = {k.replace("/", "."): {"p50_ms": st[k]["p50_ms"], "p90_ms": st[k]["p90_ms"]}
             for k in ("ground_segmentation/processing_time", "occupancy_grid/processing_time") if k in st}
    return {"count": e["count"], "p50_ms": e["p50_ms"], "p90_ms": e.get("p90_ms"), "max_ms": e["max_ms"],
            "inside_replay": parts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="times the bag's scans are sent live (default 2)")
    ap.add_argument("--period", type=float, default=0.5, help="seconds between scans (default 0.5)")
    a = ap.parse_args()
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    from perception_nodes.scenario.bag import write_scenario_bag

    with tempfile.TemporaryDirectory() as tmp:
        bag = write_scenario_bag(Path(tmp) / "scenario_bag", duration_s=2.0, progress=False)
        rep = replay_e2e(bag, Path(tmp) / "replay")
        lv = live(bag, a.rounds, a.period)
    print(json.dumps({"live_publish_to_grid_received": lv, "replay_stamp_to_grid_out": rep}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
