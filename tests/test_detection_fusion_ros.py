"""The detection fusion node as a managed rclpy node on real Fast DDS (loopback, own domain): a LiDAR-branch
style vision_msgs/Detection3DArray in (with the dirichlet_strength result, a NaN box among them), and out
the fused vision_msgs array, the perception_interfaces objects `evaluate` scores, the markers and
/diagnostics, all received by a real subscriber."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from perception_nodes import topics
from tests.ros_util import collector, spin_until, stamp_ns

pytestmark = pytest.mark.ros


def _level(status) -> int:
    """DiagnosticStatus.level is a byte in rclpy."""
    v = status.level
    return v[0] if isinstance(v, (bytes, bytearray)) else int(v)


def test_detection_fusion_node_publishes_fused_detections_objects_markers_and_diagnostics(ros_context):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from vision_msgs.msg import Detection3DArray

    from perception_nodes.codecs.vision import EVIDENCE_STRENGTH_ID, vision_detections_msg
    from perception_nodes.config import load_params
    from perception_nodes.evidential.detection_fusion import EvidentialBox, evidence_from_probabilities
    from perception_nodes.graph.detection_fusion import _Arrays
    from perception_nodes.ros.backend import RclpyBackend
    from perception_nodes.ros.node import ManagedCoreNode, tree_overrides
    from perception_nodes.ros.qos import profile

    p = copy.deepcopy(load_params()["detection_fusion"])
    p.pop("enabled", None)
    p["odometry_topic"] = ""
    lidar = p["branches"]["lidar"]["detections_topic"]
    node = ManagedCoreNode("detection_fusion", context=ros_context, parameter_overrides=tree_overrides(p))
    assert node.autostart() and node.is_active()
    user = rclpy.create_node("detection_fusion_user", context=ros_context)
    got = collector(user, [(p["detections_topic"], "vision_msgs/msg/Detection3DArray"),
                           (p["objects_topic"], topics.DETECTIONS),
                           (p["markers_topic"], topics.MARKER_ARRAY),
                           (topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY)])
    pub = user.create_publisher(Detection3DArray, lidar, profile("reliable"))
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(node)
    ex.add_node(user)
    b = RclpyBackend()
    cov = np.diag([0.09, 0.09, 0.04, 1e6, 1e6, 0.05])
    boxes = [EvidentialBox(np.array([x, y, 0.8]), np.array([4.0, 1.8, 1.5]), 0.3, cov,
                           evidence_from_probabilities(np.array([0.7, 0.1, 0.1]), 15.0)) for x, y in ((10, 2), (20, -3))]
    arrays = _Arrays(("car", "pedestrian", "cyclist"), boxes)
    stamp = 1_700_000_000 * 10**9
    msg = vision_detections_msg(arrays, stamp, "base_link", b, strength=arrays.strength)
    bad = vision_detections_msg(arrays, stamp, "base_link", b, strength=arrays.strength).detections[0]
    bad.bbox.center.position.x = float("nan")
    msg.detections.append(bad)
    try:
        assert spin_until(ex, lambda: pub.get_subscription_count() == 1
                          and node._pubs[p["detections_topic"]].get_subscription_count() == 1, 15.0)
        pub.publish(msg)
        assert spin_until(ex, lambda: got[p["detections_topic"]] and got[p["objects_topic"]]
                          and got[p["markers_topic"]], 20.0), {k: len(v) for k, v in got.items()}
        det = got[p["detections_topic"]][0]
        assert isinstance(det, Detection3DArray) and stamp_ns(det) == stamp and det.header.frame_id == "base_link"
        assert len(det.detections) == 2  # the NaN box dropped, counted
        first = det.detections[0]
        assert first.results[0].hypothesis.class_id == "car"
        assert first.results[0].hypothesis.score == pytest.approx(0.7, rel=1e-9)
        assert first.results[-1].hypothesis.class_id == EVIDENCE_STRENGTH_ID
        assert first.results[-1].hypothesis.score == pytest.approx(15.0, rel=1e-9)
        c = list(first.results[0].pose.covariance)
        assert c[0] == pytest.approx(0.09) and c[35] == pytest.approx(0.05)
        objs = got[p["objects_topic"]][0]
        assert [d.label for d in objs.detections] == ["car", "car"] and objs.detections[0].covariance[0] > 0
        markers = got[p["markers_topic"]][0].markers
        assert markers[0].action == 3 and len(markers) == 3
        assert spin_until(ex, lambda: any(s.name == "detection_fusion: boxes" and _level(s) == 1
                                          for d in got[topics.DIAGNOSTICS] for s in d.status), 10.0), \
            [(s.name, s.level, s.message) for d in got[topics.DIAGNOSTICS] for s in d.status]
        status = next(s for d in got[topics.DIAGNOSTICS] for s in d.status if s.name == "detection_fusion: boxes"
                      and _level(s) == 1)
        values = {v.key: v.value for v in status.values}
        assert values["boxes_dropped.nonfinite"] == "1" and values["boxes_in"] == "3"
    finally:
        ex.shutdown()
        node.destroy_node()
        user.destroy_node()
