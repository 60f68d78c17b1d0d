"""``perception-stack live``: every node of the graph in one process on an rclpy executor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from perception_nodes.config import load_params
from perception_nodes.graph import NODE_TYPES
from perception_nodes.ros.env import import_rclpy


class LiveGraph:
    """The graph's nodes as rclpy nodes sharing one executor (usable from tests and the CLI)."""

    def __init__(self, config: str | Path | None = None, params: dict[str, dict[str, Any]] | None = None,
                 context: Any = None, use_sim_time: bool = False) -> None:
        rclpy = import_rclpy()
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter

        from perception_nodes.ros.node import CoreNode

        self.params = params if params is not None else load_params(config)
        self.context = context
        self.executor = SingleThreadedExecutor(context=context)
        self.nodes: list[CoreNode] = []
        overrides = [Parameter("use_sim_time", Parameter.Type.BOOL, True)] if use_sim_time else []
        for name, p in self.params.items():
            if name not in NODE_TYPES or not p.get("enabled", True):
                continue
            p = {k: v for k, v in p.items() if k != "enabled"}
            rnode = rclpy.create_node(name, context=context, parameter_overrides=overrides)
            runner = CoreNode(rnode, NODE_TYPES[name], p)
            self.nodes.append(runner)
            self.executor.add_node(rnode)

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
        for n in self.nodes:
            self.executor.remove_node(n.node)
            n.node.destroy_node()
        self.executor.shutdown()


def run_live(config: str | Path | None = None, duration_s: float | None = None, use_sim_time: bool = False) -> int:
    rclpy = import_rclpy()
    rclpy.init()
    graph = LiveGraph(config, use_sim_time=use_sim_time)
    names = ", ".join(n.core.name for n in graph.nodes)
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
