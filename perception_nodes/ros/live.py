"""``perception-stack live``: every node of the graph in one process on a multi-threaded rclpy executor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from perception_nodes import topics
from perception_nodes.config import load_params
from perception_nodes.errors import NodeUnavailable
from perception_nodes.graph import NODE_TYPES
from perception_nodes.ros.env import import_rclpy


class LiveGraph:
    """The graph's nodes as managed rclpy nodes in one process, on one multi-threaded executor.

    Topics between two nodes of the graph (ground_segmentation's obstacle cloud to occupancy_grid) are
    handed over in process as message objects, with no serialize/deserialize; every topic is still on
    DDS for outside subscribers (see :mod:`perception_nodes.ros.node`). With ``autostart`` (a node
    parameter, default true) each node is configured and activated here; otherwise it waits for
    lifecycle transitions. Usable from tests and the CLI.
    """

    def __init__(self, config: str | Path | None = None, params: dict[str, dict[str, Any]] | None = None,
                 context: Any = None, use_sim_time: bool = False, in_process: bool = True) -> None:
        import_rclpy()
        from rclpy.parameter import Parameter

        from perception_nodes.config.schema import node_schema
        from perception_nodes.ros.node import ManagedCoreNode, make_executor, tree_overrides

        self.params = params if params is not None else load_params(config)
        self.context = context
        self.nodes: list[ManagedCoreNode] = []
        sim = [Parameter("use_sim_time", Parameter.Type.BOOL, True)] if use_sim_time else []
        for name, p in self.params.items():
            if name not in NODE_TYPES or not p.get("enabled", True):
                continue
            p = {k: v for k, v in p.items() if k != "enabled"}
            if "enabled" in node_schema(name):  # a node off by default (bev_fusion) that this config enables
                p["enabled"] = True
            self.nodes.append(ManagedCoreNode(name, NODE_TYPES[name], context=context,
                                              parameter_overrides=tree_overrides(p) + sim))
        if in_process:
            self._wire_in_process()
        self.executor = make_executor(len(self.nodes), context=context)
        for n in self.nodes:
            self.executor.add_node(n)
        #: nodes whose autostart did not reach ``active`` (configure failed: see their log)
        self.failed: list[str] = []
        #: nodes left out because they cannot run here (NodeUnavailable, e.g. no trained weights): name -> why
        self.skipped: dict[str, str] = {}
        for n in list(self.nodes):
            if not n.autostart() and n.get_parameter("autostart").value:
                if isinstance(n.configure_error, NodeUnavailable):
                    self._leave_out(n)
                else:
                    self.failed.append(n.get_name())

    def _leave_out(self, node: Any) -> None:
        """Take a node that cannot run here out of the graph (said once, on the console and in ``skipped``)."""
        self.skipped[node.get_name()] = str(node.configure_error)
        print(f"{node.get_name()} left out of the live graph: {node.configure_error}", flush=True)
        for other in self.nodes:
            for topic, consumers in other.in_process_consumers.items():
                if node in consumers:
                    consumers.remove(node)
        self.nodes.remove(node)
        self.executor.remove_node(node)
        node.leave_graph()  # gone from `ros2 node list` too, not a lifecycle service nobody answers

    def _wire_in_process(self) -> None:
        """Each topic one node publishes and another subscribes goes from the first to the second directly."""
        outputs = {}
        for n in self.nodes:
            core = n.core_cls(n.get_name(), n.params_tree(), backend=None, clock=lambda: 0)  # ports only
            outputs[n] = {p.topic for p in core.outputs()}, {p.topic for p in core.inputs()}
        for producer, (outs, _) in outputs.items():
            for consumer, (_, ins) in outputs.items():
                if consumer is producer:
                    continue
                for topic in (outs & ins) - {topics.DIAGNOSTICS}:
                    producer.in_process_consumers.setdefault(topic, []).append(consumer)
                    consumer.in_process_inputs.add(topic)

    @property
    def node_by_name(self) -> dict[str, Any]:
        return {n.get_name(): n for n in self.nodes}

    def spin_once(self, timeout_s: float = 0.05) -> None:
        self.executor.spin_once(timeout_sec=timeout_s)

    def spin(self, duration_s: float | None = None) -> None:
        """Spin until ``duration_s`` passes or the context shuts down (Ctrl-C, SIGTERM from a launcher)."""
        from rclpy.executors import ExternalShutdownException

        rclpy = import_rclpy()
        end = None if duration_s is None else time.monotonic() + duration_s
        while end is None or time.monotonic() < end:
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:
                return
            except Exception:
                if not rclpy.ok(context=self.context):  # a callback raced the shutdown: nothing to report
                    return
                raise

    def close(self) -> None:
        """Stop the executor (its worker threads joined: no callback still running), then destroy the nodes."""
        self.executor.shutdown()
        for n in self.nodes:
            n.destroy_node()


def run_live(config: str | Path | None = None, duration_s: float | None = None, use_sim_time: bool = False) -> int:
    from perception_nodes.ros.shm_cleanup import report_zombie_cleanup

    rclpy = import_rclpy()
    report_zombie_cleanup()  # what earlier runs left in /dev/shm (ros/shm_cleanup.py)
    rclpy.init()
    graph = LiveGraph(config, use_sim_time=use_sim_time)
    if graph.failed:
        graph.close()
        rclpy.shutdown()
        raise ValueError(f"node(s) {', '.join(graph.failed)} failed to configure/activate (see the log above)")
    # each node froze the start-up heap after its configure (ManagedCoreNode.on_configure, latency/gc_pause.py)
    names = ", ".join(n.get_name() for n in graph.nodes)
    print(f"live graph running: {names} (Ctrl-C to stop)", flush=True)
    try:
        graph.spin(duration_s)
    except KeyboardInterrupt:
        pass
    finally:
        graph.close()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
