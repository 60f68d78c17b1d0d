"""``perception-stack monitor``: a live table of every node's latency health from ``/diagnostics``."""

from __future__ import annotations

import sys
import time
from typing import Any

from perception_nodes.latency.table import format_table
from perception_nodes.ros.env import import_rclpy, ros_node

ONCE_SETTLE_S = 1.5
"""``--once``: after the first node reports latency, listen this long before printing, so every running
node has published its own /diagnostics array at least once (one diagnostics period is 1 s)."""
ONCE_GRACE_S = 3.5
"""``--once``: the longest wait after the first latency for every node seen to report latency too."""


class DiagnosticsCollector:
    """Keeps the latest status per name from ``/diagnostics``."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        from perception_nodes.ros.qos import profile

        self.statuses: dict[str, tuple[int, str, dict[str, str]]] = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on, profile("reliable"))

    def has_latency(self) -> bool:
        """True once some node reports processed frames (not just that it is alive)."""
        return bool(self.nodes_with_latency())

    def nodes_seen(self) -> set[str]:
        """Nodes that have published any ``<node>: ...`` status."""
        return {name.split(": ", 1)[0] for name in self.statuses if ": " in name}

    def nodes_with_latency(self) -> set[str]:
        """Nodes whose latency status carries processing-time samples."""
        return {name[: -len(": latency")] for name, (_, _, values) in self.statuses.items()
                if name.endswith(": latency") and "processing_time.p50_ms" in values}

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
        first_latency: float | None = None
        while end is None or time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
            now = time.monotonic()
            if once:
                if not coll.has_latency():  # nodes are up but no frame has been processed yet
                    continue
                if first_latency is None:
                    first_latency = now
                # every node publishes its own /diagnostics array: wait (briefly) for all of them
                waited = now - first_latency
                if (waited >= ONCE_SETTLE_S and coll.nodes_seen() <= coll.nodes_with_latency()) or waited >= ONCE_GRACE_S:
                    print(format_table(coll.statuses), flush=True)
                    return 0
                continue
            if now - last >= period_s and coll.statuses:
                last = now
                table = format_table(coll.statuses)
                sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n")
                print(time.strftime("%H:%M:%S"), "perception latency (from /diagnostics)\n" + table, flush=True)
        if not coll.statuses:
            print("no /diagnostics received (is the graph running on this ROS_DOMAIN_ID?)", file=sys.stderr)
            return 1
        if once:
            print(format_table(coll.statuses), flush=True)
            if coll.has_latency():  # the duration ended inside the grace period
                return 0
            print("no latency samples yet: are the input topics being published?", file=sys.stderr)
            return 1
    return 0
