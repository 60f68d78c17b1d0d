"""The LiDAR branch as a managed rclpy node on real Fast DDS (loopback, own domain), tiny random weights:
a real vision_msgs subscriber receives Detection3DArray and MarkerArray; bad weights fail configure."""

from __future__ import annotations

import pytest

from perception_nodes import topics
from tests.lidar_branch_util import branch_params, register_tiny_backbone, save_tiny_weights
from tests.ros_util import collector, kitti_clouds, spin_until, stamp_ns

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_weights(tmp_path_factory.mktemp("ros_weights") / "lidar_detection")


def test_node_publishes_vision_msgs_detections_and_markers_a_subscriber_receives(ros_context, kitti_bag, weights):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from sensor_msgs.msg import PointCloud2
    from vision_msgs.msg import Detection3DArray

    from perception_nodes.ros.node import ManagedCoreNode, tree_overrides
    from perception_nodes.ros.qos import profile

    register_tiny_backbone()
    p = branch_params(weights, threads=1)
    node = ManagedCoreNode("lidar_detection", context=ros_context, parameter_overrides=tree_overrides(p))
    assert node.autostart() and node.is_active()
    user = rclpy.create_node("branch_user", context=ros_context)
    got = collector(user, [(p["detections_topic"], "vision_msgs/msg/Detection3DArray"),
                           (p["markers_topic"], topics.MARKER_ARRAY),
                           (p["curvature_topic"], "perception_interfaces/msg/CurvaturePrediction"),
                           (topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY)])
    pub = user.create_publisher(PointCloud2, topics.LIDAR_POINTS, profile("reliable"))
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(node)
    ex.add_node(user)
    cloud = kitti_clouds(kitti_bag)[0]
    try:
        assert spin_until(ex, lambda: pub.get_subscription_count() == 1
                          and node._pubs[p["detections_topic"]].get_subscription_count() == 1, 15.0)
        pub.publish(cloud)
        assert spin_until(ex, lambda: got[p["detections_topic"]] and got[p["markers_topic"]]
                          and got[p["curvature_topic"]], 60.0), {k: len(v) for k, v in got.items()}
        det = got[p["detections_topic"]][0]
        assert isinstance(det, Detection3DArray) and stamp_ns(det) == stamp_ns(cloud)
        assert det.detections and det.header.frame_id == "base_link"
        first = det.detections[0]
        assert first.results[0].hypothesis.class_id in ("car", "pedestrian", "cyclist")
        cov = list(first.results[0].pose.covariance)
        assert len(cov) == 36 and cov[0] > 0 and cov[7] > 0 and cov[35] > 0
        markers = got[p["markers_topic"]][0].markers
        assert markers[0].action == 3 and len(markers) == len(det.detections) + 1
        assert spin_until(ex, lambda: any(s.name == "lidar_detection: network" for d in got[topics.DIAGNOSTICS]
                                          for s in d.status), 10.0)
        status = next(s for d in got[topics.DIAGNOSTICS] for s in d.status if s.name == "lidar_detection: network")
        values = {v.key: v.value for v in status.values}
        assert values["runtime"] == "torch" and values["runtime.threads"] == "1"
        assert status.message.startswith("runtime torch")
    finally:
        ex.shutdown()
        node.destroy_node()
        user.destroy_node()


def test_bad_weights_fail_lifecycle_configure_with_the_reason(ros_context, tmp_path):
    from lifecycle_msgs.msg import State

    from perception_nodes.models.weights_io import WeightsError
    from perception_nodes.ros.node import ManagedCoreNode, tree_overrides

    node = ManagedCoreNode("lidar_detection", context=ros_context,
                           parameter_overrides=tree_overrides(branch_params(tmp_path / "missing")))
    try:
        assert not node.autostart()
        assert isinstance(node.configure_error, WeightsError) and "no weights in" in str(node.configure_error)
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED and node.core is None
    finally:
        node.destroy_node()


def test_live_graph_leaves_the_branch_out_without_packaged_weights(ros_context, tmp_path, monkeypatch):
    from perception_nodes.config import load_params
    from perception_nodes.models import weights_io
    from perception_nodes.ros.live import LiveGraph

    monkeypatch.setattr(weights_io, "default_weights_dir", lambda network: tmp_path / network)
    params = load_params()
    graph = LiveGraph(params=params, context=ros_context)
    try:
        assert not graph.failed
        assert "no packaged network weights" in graph.skipped["lidar_detection"]
        assert {"ground_segmentation", "occupancy_grid"} <= set(graph.node_by_name)
        assert "lidar_detection" not in graph.node_by_name
        # and it left the ROS graph too (no node or lifecycle service of that name to hang a `ros2 lifecycle get`)
        names = graph.nodes[0].get_node_names()
        assert "lidar_detection" not in names and "ground_segmentation" in names
        # (but ~/get_type_description: rclpy 9.1's own leak while another node shares the context, upstream's
        # ros2/rclpy#1710 follow-up; harmless to the lifecycle and parameter services checked here)
        left = [s for s, _ in graph.nodes[0].get_service_names_and_types() if s.startswith("/lidar_detection/")]
        assert set(left) <= {"/lidar_detection/get_type_description"}, left
        assert all(n.is_active() for n in graph.nodes)
    finally:
        graph.close()
