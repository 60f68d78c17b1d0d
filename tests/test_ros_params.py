"""Parameters through rcl: the shipped params file loads into the installed executables; descriptors,
runtime validation and effect on a live rclpy node; unknown keys rejected on the ROS path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from perception_nodes import topics
from perception_nodes.config import DEFAULTS_PATH
from tests.ros_util import call, collector, kitti_clouds, set_stamp, spinning, stamp_ns, wait_for

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
EXECUTABLES = REPO / "ros_ws/install/perception_bringup/lib/perception_bringup"
#: the canonical params file, and the copies the launch file may read (source tree, colcon install)
COPIES = [REPO / "launch" / "perception.params.yaml",
          *sorted((REPO / "ros_ws/src/perception_bringup").glob("*/perception.params.yaml")),
          REPO / "ros_ws/install/perception_bringup/share/perception_bringup/config/perception.params.yaml"]


def _executable(name: str) -> Path:
    exe = EXECUTABLES / name
    if not exe.exists():
        pytest.skip(f"{exe} not built (bash scripts/setup.sh builds ros_ws)")
    return exe


def test_every_shipped_copy_is_the_canonical_file():
    copies = [c for c in COPIES if c.exists()]
    assert copies, "no params file next to the launch file"
    for c in copies:
        assert c.read_text() == DEFAULTS_PATH.read_text(), f"{c} differs from {DEFAULTS_PATH} (rebuild ros_ws?)"


@pytest.mark.slow
def test_installed_executables_load_the_shipped_params_file_and_publish(ros_context, kitti_bag):
    """What `ros2 launch` does: each executable with `--ros-args --params-file <shipped file>`."""
    import rclpy
    from rcl_interfaces.srv import DescribeParameters, GetParameters
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2

    from perception_nodes.ros.qos import profile

    procs = [subprocess.Popen([str(_executable(f"{n}_node")), "--ros-args", "--params-file", str(DEFAULTS_PATH)],
                              env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in ("ground_segmentation", "occupancy_grid")]
    node = rclpy.create_node("params_probe", context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(node)
    got = collector(node, [(topics.OCCUPANCY_GRID, topics.OCCUPANCY_GRID_TYPE),
                           (topics.OBSTACLE_POINTS, topics.POINTCLOUD2, "sensor")])
    pub = node.create_publisher(PointCloud2, topics.LIDAR_POINTS, profile("reliable"))
    cloud = kitti_clouds(kitti_bag)[0]
    try:
        with spinning(ex):
            # both nodes subscribe to the scan once configured and active (JIT warm-up takes a while)
            assert wait_for(lambda: pub.get_subscription_count() >= 2 or any(p.poll() is not None for p in procs),
                            90.0), "nodes did not subscribe"
            assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
            got_params = call(node, GetParameters, "/occupancy_grid/get_parameters",
                              GetParameters.Request(names=["grid.resolution", "ground.ring_zone_starts",
                                                           "qos.output", "autostart"]))
            values = [v for v in got_params.values]
            assert values[0].double_value == 0.25 and list(values[1].double_array_value) == [0.0, 20.0, 40.0]
            assert values[2].string_value == "latched" and values[3].bool_value is True
            desc = call(node, DescribeParameters, "/occupancy_grid/describe_parameters",
                        DescribeParameters.Request(names=["grid.resolution", "output_topic"])).descriptors
            assert "m per cell" in desc[0].description and desc[0].floating_point_range[0].from_value > 0
            assert desc[1].read_only and not desc[0].read_only
            # the nodes send a volatile topic over DDS only once they have matched a subscriber: wait until
            # discovery has paired the probe with the obstacle publisher, and send a scan again (0.1 s on)
            # until the obstacle cloud arrives, as a sensor would
            assert wait_for(lambda: node.count_publishers(topics.OBSTACLE_POINTS) >= 1, 30.0)
            sent = []
            for _ in range(6):
                sent.append(stamp_ns(cloud))
                pub.publish(cloud)
                if wait_for(lambda: got[topics.OCCUPANCY_GRID] and got[topics.OBSTACLE_POINTS], 10.0):
                    break
                set_stamp(cloud, sent[-1] + 100_000_000)
            assert got[topics.OCCUPANCY_GRID] and got[topics.OBSTACLE_POINTS], got
        assert stamp_ns(got[topics.OCCUPANCY_GRID][0]) in sent
        assert stamp_ns(got[topics.OBSTACLE_POINTS][0]) in sent
    finally:
        for p in procs:
            p.terminate()
        outs = [p.communicate(timeout=20)[0] for p in procs]
        ex.shutdown()
        node.destroy_node()
    assert not any("Traceback" in o for o in outs), outs


def test_unknown_or_mistyped_key_stops_an_installed_executable(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULTS_PATH.read_text().replace("    seed_band: 0.15", "    seed_bnad: 0.15")
                   .replace("      seed_band:", "      seed_bnad:"))
    r = subprocess.run([str(_executable("ground_segmentation_node")), "--ros-args", "--params-file", str(bad)],
                       env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown parameter(s) ground.seed_bnad" in r.stderr, (r.returncode, r.stderr[-2000:])


def test_set_parameters_on_a_live_node_is_validated_and_applied(ros_context, kitti_bag):
    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2

    from perception_nodes.ros.node import ManagedCoreNode
    from perception_nodes.ros.qos import profile

    grid_node = ManagedCoreNode("occupancy_grid", context=ros_context,
                                parameter_overrides=[Parameter("sync.obstacle_timeout_s", value=0.05)])
    assert grid_node.autostart()
    client = rclpy.create_node("params_client", context=ros_context)
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(grid_node)
    ex.add_node(client)
    got = collector(client, [(topics.OCCUPANCY_GRID, topics.OCCUPANCY_GRID_TYPE)])
    pub = client.create_publisher(PointCloud2, topics.LIDAR_POINTS, profile("reliable"))
    cloud = kitti_clouds(kitti_bag)[0]

    def set_(**values):
        req = SetParameters.Request(parameters=[Parameter(k.replace("__", "."), value=v).to_parameter_msg()
                                                for k, v in values.items()])
        return call(client, SetParameters, "/occupancy_grid/set_parameters", req).results

    try:
        with spinning(ex):
            r = set_(grid__resolution=-5.0, output_topic="/elsewhere", evidence__obstacle_max_height=0.1,
                     grid__size_x="wide", grid__resolutoin=0.5)
            assert [x.successful for x in r] == [False] * 5
            assert "range" in r[0].reason and "read-only" in r[1].reason
            assert "obstacle_max_height must exceed obstacle_min_height" in r[2].reason, r[2].reason
            assert "type" in r[3].reason, r[3].reason
            assert "undeclared parameter" in r[4].reason, r[4].reason  # (rclpy leaves out the name)
            assert grid_node.core.grid.resolution == 0.25 and grid_node.core.evidence.obstacle_max_height == 2.5
            r = set_(grid__resolution=0.5, latency_budgets_ms__processing_time=0.001, sync__obstacle_timeout_s=1.0)
            assert all(x.successful for x in r), [x.reason for x in r]
            assert grid_node.get_parameter("grid.resolution").value == 0.5
            assert wait_for(lambda: pub.get_subscription_count() >= 1, 10.0)
            pub.publish(cloud)  # no obstacle cloud comes: the grid follows the time-out, segmented inline
            assert wait_for(lambda: got[topics.OCCUPANCY_GRID], 30.0)
        grid = got[topics.OCCUPANCY_GRID][0]
        assert grid.info.resolution == pytest.approx(0.5) and grid.info.width == 160  # 80 m / 0.5 m
        s = grid_node.core.latency.series["processing_time"].window_summary()
        assert s.budget_ms == 0.001 and s.deadline_misses == 1  # the new budget applies to the next frame
    finally:
        ex.shutdown()
        grid_node.destroy_node()
        client.destroy_node()
