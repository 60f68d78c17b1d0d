"""The live graph on real rclpy + Fast DDS (loopback only, own domain): a KITTI bag played over ROS."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.bags import BagReader
from tests.ros_util import spin_until, stamp_ns

pytestmark = pytest.mark.ros


@pytest.fixture()
def live(ros_context):
    from perception_nodes.ros.live import LiveGraph

    from perception_nodes.config import load_params

    params = load_params()
    # /clock keeps running while a node computes (multi-threaded executor); on a loaded CI machine one
    # ground segmentation can take longer than the 0.3 s default, which would (rightly) make the grid
    # fall back to inline segmentation: this test checks the nominal path
    params["occupancy_grid"]["sync"]["obstacle_timeout_s"] = 5.0
    graph = LiveGraph(params=params, context=ros_context, use_sim_time=True)  # bag time via /clock
    yield graph
    graph.close()


def _probe(ctx, executor, names_types):
    import rclpy

    from perception_nodes.ros.backend import _message_class
    from perception_nodes.ros.qos import profile

    node = rclpy.create_node("test_probe", context=ctx)
    got: dict[str, list] = {n: [] for n, *_ in names_types}
    for name, msgtype, *qos in names_types:  # clouds are published with sensor-data QoS (best effort)
        node.create_subscription(_message_class(msgtype), name, lambda m, n=name: got[n].append(m),
                                 profile(qos[0] if qos else "reliable"))
    executor.add_node(node)
    return node, got


def test_kitti_bag_played_over_ros_yields_grids_and_latency_topics(kitti_bag, ros_context, live):
    import rclpy

    from perception_nodes.ros.play import BagPlayer

    watch = [
        (topics.OCCUPANCY_GRID, topics.OCCUPANCY_GRID_TYPE),
        (topics.OCCUPANCY_UNCERTAINTY, topics.OCCUPANCY_GRID_TYPE),
        ("/occupancy_grid/debug/pipeline_latency_ms", topics.FLOAT64_STAMPED),
        ("/ground_segmentation/debug/processing_time_ms", topics.FLOAT64_STAMPED),
        ("/ground_segmentation/debug/processing_time/ground_segmentation_ms", topics.FLOAT64_STAMPED),
        (topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY),
    ]
    probe, got = _probe(ros_context, live.executor, watch)
    from perception_nodes.ros.monitor import DiagnosticsCollector

    monitor = DiagnosticsCollector(probe)  # what `perception-stack monitor` shows
    player_node = rclpy.create_node("test_player", context=ros_context)
    player = BagPlayer(player_node, kitti_bag, topics=[topics.LIDAR_POINTS], log=lambda *_: None)
    assert player.wait_for_subscribers(15.0), "graph did not subscribe to the LiDAR topic"
    t = threading.Thread(target=player.play, kwargs={"rate": 1.0, "clock": True, "start_delay_s": 0.5}, daemon=True)
    t.start()
    ok = spin_until(live.executor, lambda: len(got[topics.OCCUPANCY_GRID]) >= 3 and
                     len(got["/occupancy_grid/debug/pipeline_latency_ms"]) >= 3 and
                     len(got["/ground_segmentation/debug/processing_time_ms"]) >= 3, 60.0)
    t.join(10)
    with BagReader(kitti_bag) as r:
        in_stamps = [stamp_ns(rec.msg) for rec in r.records(topics=[topics.LIDAR_POINTS])]
    assert ok, {k: len(v) for k, v in got.items()}
    assert [stamp_ns(g) for g in got[topics.OCCUPANCY_GRID]] == in_stamps
    assert [stamp_ns(g) for g in got[topics.OCCUPANCY_UNCERTAINTY]] == in_stamps
    grid = got[topics.OCCUPANCY_GRID][-1]
    data = np.asarray(grid.data, dtype=np.int8)
    assert grid.header.frame_id == "base_link" and data.size == grid.info.width * grid.info.height
    assert (data >= 65).sum() > 50 and (data == -1).any() and ((data >= 0) & (data < 35)).sum() > 1000
    lat = got["/occupancy_grid/debug/pipeline_latency_ms"]
    assert [stamp_ns(m) for m in lat] == in_stamps  # latency samples carry the input stamps
    # sim time advances with /clock (100 Hz), so a sample resolves to ~10 ms and can read 0
    assert all(0.0 <= m.data < 5000.0 for m in lat) and max(m.data for m in lat) > 0.0, [m.data for m in lat]
    assert [stamp_ns(m) for m in got["/ground_segmentation/debug/processing_time_ms"]] == in_stamps
    assert got["/ground_segmentation/debug/processing_time/ground_segmentation_ms"]
    spin_until(live.executor, lambda: any(s.name == "occupancy_grid: latency"
                                           for d in got[topics.DIAGNOSTICS] for s in d.status), 5.0)
    names = {s.name for d in got[topics.DIAGNOSTICS] for s in d.status}
    assert {"ground_segmentation: latency", "occupancy_grid: latency", "occupancy_grid: inputs"} <= names
    from perception_nodes.latency.table import format_table

    table = format_table(monitor.statuses)
    rows = [line.split() for line in table.splitlines()[2:]]
    assert ["occupancy_grid", "pipeline_latency"] in [r[:2] for r in rows]
    assert ["ground_segmentation", "ground_segmentation"] in [r[:2] for r in rows]
    player_node.destroy_node()
    probe.destroy_node()


def test_malformed_cloud_over_ros_is_counted_and_the_node_keeps_running(kitti_bag, ros_context, live):
    import rclpy
    from sensor_msgs.msg import PointCloud2, PointField

    from perception_nodes.ros.qos import profile

    probe, got = _probe(ros_context, live.executor, [(topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY),
                                                    (topics.OBSTACLE_POINTS, topics.POINTCLOUD2, "sensor")])
    pub_node = rclpy.create_node("test_bad_publisher", context=ros_context)
    pub = pub_node.create_publisher(PointCloud2, topics.LIDAR_POINTS, profile("reliable"))
    assert spin_until(live.executor, lambda: pub.get_subscription_count() >= 2, 15.0)

    def cloud(n_bytes: int, sec: int) -> PointCloud2:
        m = PointCloud2()
        m.header.frame_id, m.header.stamp.sec = "velodyne", sec
        m.height, m.width, m.point_step, m.row_step = 1, 100, 16, 1600
        m.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                    for i, n in enumerate("xyz")] + [PointField(name="intensity", offset=12, datatype=7, count=1)]
        pts = np.zeros((100, 4), np.float32)
        pts[:, 0] = np.linspace(3, 20, 100)
        m.data = pts.tobytes()[:n_bytes]
        return m

    pub.publish(cloud(800, 1))  # half the bytes its layout promises
    pub.publish(cloud(1600, 2))  # a good one afterwards still gets through

    def counted() -> bool:
        for d in got[topics.DIAGNOSTICS]:
            for s in d.status:
                kv = {v.key: v.value for v in s.values}
                if s.name == "ground_segmentation: inputs" and kv.get(f"malformed {topics.LIDAR_POINTS}") == "1":
                    return True
        return False

    assert spin_until(live.executor, lambda: counted() and got[topics.OBSTACLE_POINTS], 20.0)
    assert stamp_ns(got[topics.OBSTACLE_POINTS][-1]) == 2 * 1_000_000_000
    pub_node.destroy_node()
    probe.destroy_node()


def test_the_three_shell_workflow_live_play_monitor(kitti_bag, ros_domain):
    """README's live workflow as three shells that each source scripts/ros_env.sh themselves.

    The processes start from a bare environment (no venv, no ROS variables) so the script alone must make
    them find each other: `live --use-sim-time`, `play --clock`, `monitor --once`. The run exports one
    ROS_DOMAIN_ID of its own for all three (the script keeps a domain that is set), so nothing an earlier
    test left in the session's domain, and no other user's shells, can interfere.
    """
    import os
    import shlex
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: os.environ[k] for k in ("HOME", "USER", "LANG", "TMPDIR") if k in os.environ}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env["ROS_DOMAIN_ID"] = str(ros_domain)  # (conftest's ros_domain: a domain of this test's own)
    if sys.prefix != sys.base_prefix:  # the venv running the tests, wherever it lives
        env["PN_VENV"] = sys.prefix

    def shell(cmd: str) -> list[str]:
        return ["bash", "-c", f". scripts/ros_env.sh && exec perception-stack {cmd}"]

    def start(cmd: str) -> subprocess.Popen:
        return subprocess.Popen(shell(cmd), cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    live = start("live --use-sim-time --duration 60")
    try:
        player = start(f"play {shlex.quote(str(kitti_bag))} --clock --loop --wait-for-subscribers 30 "
                       f"--topics {topics.LIDAR_POINTS}")
        watcher = start("monitor")  # the continuous table, stopped like a user's Ctrl-C/SIGTERM below
        try:
            mon = subprocess.run(shell("monitor --once --duration 90"), cwd=repo, env=env, capture_output=True,
                                 text=True, timeout=120)
        finally:
            watcher.send_signal(signal.SIGINT)
            watched, _ = watcher.communicate(timeout=10)
            player.terminate()  # SIGTERM while publishing /clock and clouds
            played, _ = player.communicate(timeout=10)
    finally:
        live.terminate()
        out, _ = live.communicate(timeout=10)
    if mon.returncode != 0:
        print("--- live ---\n" + out[-4000:] + "\n--- play ---\n" + played[-2000:] + "\n--- monitor --once ---\n"
              + mon.stdout[-4000:] + "\n--- monitor (continuous) ---\n" + watched[-3000:])
    assert mon.returncode == 0, mon.stderr
    lines = mon.stdout.splitlines()
    assert lines[0].split()[:2] == ["node", "stage"]
    assert any(line.split()[:2] in (["occupancy_grid", "pipeline_latency"], ["ground_segmentation", "decode"])
               for line in lines), mon.stdout
    # each node publishes its own /diagnostics array: --once waits until both have latency rows
    first_columns = {line.split()[0] for line in lines[1:] if line.split()}
    assert {"occupancy_grid", "ground_segmentation"} <= first_columns, mon.stdout
    # a signal is a requested stop: no traceback, exit status 0
    assert player.returncode == 0 and "Traceback" not in played, played[-3000:]
    assert watcher.returncode == 0 and "Traceback" not in watched, watched[-3000:]
    assert live.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert "live graph running: ground_segmentation, occupancy_grid" in out
