"""Runs a :class:`~perception_nodes.graph.node.NodeCore` as an rclpy node.

Subscriptions and publishers come from the core's ports; private ``~/`` topics resolve under the
node's name as usual. The core's clock is the node's ROS clock, so ``use_sim_time`` (with ``/clock``
from ``perception-stack play --clock`` or ``ros2 bag play --clock``) makes pipeline latency sim-time
correct. A message type that is not installed (``tf2_msgs`` is not on PyPI) disables that port with a
warning instead of failing the node.
"""

from __future__ import annotations

from typing import Any

from perception_nodes.config import flatten, load_params, unflatten
from perception_nodes.graph import NODE_TYPES, NodeCore
from perception_nodes.ros.backend import RclpyBackend, _message_class
from perception_nodes.ros.qos import profile

#: how often cores get ``tick`` (synchroniser time-outs, diagnostics)
TICK_PERIOD_S = 0.05


class CoreNode:
    """Owns one rclpy ``Node`` and the core it drives."""

    def __init__(self, rclpy_node: Any, core_cls: type[NodeCore], params: dict[str, Any]) -> None:
        self.node = rclpy_node
        clock = rclpy_node.get_clock()
        self.core = core_cls(
            rclpy_node.get_name(), params, backend=RclpyBackend(), clock=lambda: clock.now().nanoseconds,
            log=None,
        )
        log = rclpy_node.get_logger()
        self.core.log = _LoggerAdapter(log)
        self.core.warmup()
        self._pubs: dict[str, Any] = {}
        self._qos = {p.topic: p.qos for p in self.core.outputs()}
        self._subs = []
        for port in self.core.inputs():
            try:
                cls = _message_class(port.msgtype)
            except (ImportError, AttributeError, ValueError):
                log.warning(f"message type {port.msgtype} is not installed: not subscribing to {port.topic}")
                continue
            self._subs.append(
                rclpy_node.create_subscription(cls, port.topic, self._callback(port.topic), profile(port.qos))
            )
        # ticks run on the steady clock: under use_sim_time a ROS-clock timer stops whenever /clock does,
        # and health must keep flowing exactly then
        from rclpy.clock import Clock, ClockType

        self._timer = rclpy_node.create_timer(TICK_PERIOD_S, self._on_tick, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _callback(self, topic: str):
        def cb(msg: Any) -> None:
            self._publish(self.core.handle(topic, msg))

        return cb

    def _on_tick(self) -> None:
        self._publish(self.core.tick())

    def _publish(self, emits) -> None:
        for e in emits:
            pub = self._pubs.get(e.topic)
            if pub is None:
                kind = self._qos.get(e.topic, "reliable")
                pub = self._pubs[e.topic] = self.node.create_publisher(
                    _message_class(e.msgtype), e.topic, profile(kind)
                )
            pub.publish(e.msg)


class _LoggerAdapter:
    """``logging``-style calls onto an rclpy logger."""

    def __init__(self, rcl_logger: Any) -> None:
        self._l = rcl_logger

    def warning(self, fmt: str, *args: Any) -> None:
        self._l.warning(fmt % args if args else fmt)

    def info(self, fmt: str, *args: Any) -> None:
        self._l.info(fmt % args if args else fmt)


def node_params(rclpy_node: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """Parameters of a node started by ``ros2 launch``/``ros2 run``: overrides on top of defaults."""
    flat = flatten(defaults)
    got = {}
    for name, value in flat.items():
        if not rclpy_node.has_parameter(name):
            try:
                rclpy_node.declare_parameter(name, value)
            except Exception:  # e.g. nested lists, which ROS parameters cannot hold: keep the default
                got[name] = value
                continue
        got[name] = rclpy_node.get_parameter(name).value
    return unflatten(got)


def main_single(node_name: str, args: list[str] | None = None) -> None:
    """Entry point of one node as its own process (the bringup package's executables)."""
    from perception_nodes.ros.env import import_rclpy, ros_node

    with ros_node(node_name, args, automatically_declare_parameters_from_overrides=True) as node:
        params = node_params(node, load_params()[node_name])
        runner = CoreNode(node, NODE_TYPES[node_name], params)
        import_rclpy().spin(runner.node)
