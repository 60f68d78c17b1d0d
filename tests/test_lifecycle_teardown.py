"""A destroyed managed node leaves the ROS graph, as another participant sees it: its name and every service
(the five lifecycle services included). rclpy 9's lifecycle node left its state machine behind, and with it
the node in the graph (ManagedCoreNode.destroy_node)."""

from __future__ import annotations

import pytest

from tests.ros_util import wait_for

pytestmark = pytest.mark.ros


def test_a_destroyed_managed_node_leaves_the_graph_with_its_lifecycle_services(ros_context):
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
        node.destroy_node()
        assert wait_for(lambda: seen() == (False, []), 15.0), f"still in the graph after destroy_node: {seen()}"
    finally:
        rclpy.shutdown(context=observer_ctx)
