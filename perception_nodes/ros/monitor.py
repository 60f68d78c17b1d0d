"""``perception-stack monitor``: a live table of every node's latency health from ``/diagnostics``."""

from __future__ import annotations

import sys
import time
from typing import Any

from perception_nodes.latency.table import format_table
from perception_nodes.ros.env import import_rclpy, ros_node


class DiagnosticsCollector:
    """Keeps the latest status per name from ``/diagnostics``."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        from perception_nodes.ros.qos import profile

        self.statuses: dict[str, tuple[int, str, dict[str, str]]] = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on, profile("reliable"))

    def has_latency(self) -> bool:
        """True once some node reports processed frames (not just that it is alive)."""
        return any(name.endswith(": latency") and "processing_time.p50_ms" in values
                   for name, (_, _, values) in self.statuses.items())

    def _on(self, msg: Any) -> None:
        for s in msg.status:
            level = s.level if isinstance(s.level, int) else int.from_bytes(s.level, "little")
            self.statuses[s.name] = (level, s.message, {kv.key: kv.value for kv in s.values})


def run_monitor(duration_s: float | None = None, once: bool = False, period_s: float = 1.0) -> int:
    rclpy = import_rclpy()
    with ros_node("perception_monitor") as node:
        coll = DiagnosticsCollector(node)
        end = None if duration_s is None else time.monotonic() + duration_s
        last = 0.0
        while end is None or time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
            now = time.monotonic()
            if now - last >= period_s and coll.statuses:
                last = now
                table = format_table(coll.statuses)
                if once:
                    if not coll.has_latency():  # nodes are up but no frame has been processed yet
                        continue
                    print(table, flush=True)
                    return 0
                sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n")
                print(time.strftime("%H:%M:%S"), "perception latency (from /diagnostics)\n" + table, flush=True)
        if not coll.statuses:
            print("no /diagnostics received (is the graph running on this ROS_DOMAIN_ID?)", file=sys.stderr)
            return 1
        if once:
            print(format_table(coll.statuses), flush=True)
            print("no latency samples yet: are the input topics being published?", file=sys.stderr)
            return 1
    return 0
