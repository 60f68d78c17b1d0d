"""Tearing managed nodes down: a node taken out of a running graph leaves the ROS graph, as another participant
sees it (its name and every service, the five lifecycle services included: rclpy 9's lifecycle destroy_node
leaves its state machine, and with it the node, behind), and closing the live graph mid-scan does not crash
(ManagedCoreNode.leave_graph, LiveGraph.close)."""

from __future__ import annotations

import pytest

from tests.ros_util import wait_for

pytestmark = pytest.mark.ros


def test_a_node_taken_out_leaves_the_graph_with_its_lifecycle_services(ros_context):
    import rclpy

    from perception_nodes.ros.node import ManagedCoreNode

    observer_ctx = rclpy.Context()
    rclpy.init(context=observer_ctx, domain_id=ros_context.get_domain_id())
    try:
        observer = rclpy.create_node("teardown_observer", context=observer_ctx)

        def seen() -> tuple[bool, list[str]]:
            services = sorted(n for n, _ in observer.get_service_names_and_types() if n.startswith("/control/"))
            return "control" in observer.get_node_names(), services

        node = ManagedCoreNode("control", context=ros_context)
        assert wait_for(lambda: seen()[0] and "/control/get_state" in seen()[1], 15.0), seen()
        assert "/control/change_state" in seen()[1] and "/control/get_parameters" in seen()[1]
        keep = ManagedCoreNode("fusion", context=ros_context)  # the participant stays, as in a running graph
        node.leave_graph()
        # (~/get_type_description aside: rclpy 9.1 leaks it while another node shares the context, upstream's
        # ros2/rclpy#1710 follow-up)
        gone = (False, []), (False, ["/control/get_type_description"])
        assert wait_for(lambda: seen() in gone, 15.0), f"still in the graph after leave_graph: {seen()}"
        assert not node.is_active() and node.core is None
        with pytest.raises(RuntimeError, match="not initialized"):  # rclpy reads our finalized stand-in
            node.trigger_configure()  # a Python error, not a crash in the freed state machine
        keep.destroy_node()
    finally:
        rclpy.shutdown(context=observer_ctx)
        observer_ctx.destroy()


_CLOSE_MID_SCAN = r'''
import sys, threading
import rclpy
from sensor_msgs.msg import PointCloud2
from perception_nodes import topics
from perception_nodes.config import load_params
from perception_nodes.ros.live import LiveGraph
from perception_nodes.ros.qos import profile
from tests.ros_util import kitti_clouds, spinning, wait_for

ctx = rclpy.Context()
rclpy.init(context=ctx)  # (ROS_DOMAIN_ID: the test's own, inherited)
params = {k: v for k, v in load_params().items() if k in ("ground_segmentation", "occupancy_grid")}
graph = LiveGraph(params=params, context=ctx)
feeder = rclpy.create_node("close_feeder", context=ctx)
graph.executor.add_node(feeder)
pub = feeder.create_publisher(PointCloud2, topics.LIDAR_POINTS, profile("reliable"))
gs, og = graph.node_by_name["ground_segmentation"], graph.node_by_name["occupancy_grid"]
inside, release, handed = threading.Event(), threading.Event(), []
handle = gs.core.handle

def held(topic, msg):  # the scan stays inside ground_segmentation until close() has begun
    inside.set()
    release.wait(10.0)
    out = handle(topic, msg)
    handed.append(len(out))
    return out

gs.core.handle = held
with spinning(graph.executor):
    assert wait_for(lambda: pub.get_subscription_count() >= 1, 15.0)
    pub.publish(kitti_clouds(sys.argv[1])[0])
    assert inside.wait(20.0), "the scan never reached ground_segmentation"
closer = threading.Thread(target=graph.close)
closer.start()  # Ctrl-C in `perception-stack live`: close() while a worker still runs the scan
closer.join(0.3)
release.set()
closer.join(30.0)
assert not closer.is_alive() and handed, (closer.is_alive(), handed)
feeder.destroy_node()
rclpy.shutdown(context=ctx)
print("closed cleanly")
'''


@pytest.mark.slow
def test_closing_the_live_graph_while_a_scan_is_in_flight_does_not_crash(kitti_bag, ros_domain):
    """Ctrl-C or SIGTERM to `perception-stack live` with scans flowing: close() stops the executor, which waits
    for the callback in flight, before it destroys the nodes. In a subprocess, so a crash or a hang is a failure
    here, not the end of the test session."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _CLOSE_MID_SCAN, str(kitti_bag)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "closed cleanly" in r.stdout, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
