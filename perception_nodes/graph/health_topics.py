"""The health scalars the branch nodes publish for the fusion node's gates (docs/fusion.md), as messages.

The numbers come from :mod:`perception_nodes.pipeline.sensor_health`; this module only turns them into
``perception_interfaces/Float64Stamped`` emits stamped with the frame they describe, so the LiDAR nodes
publish the same topics under their own names.
"""

from __future__ import annotations

from typing import Any

from perception_nodes import topics
from perception_nodes.graph.node import Emit, NodeCore
from perception_nodes.pipeline.sensor_health import ScanHealth

#: default topic of a LiDAR node's scan health (its parts under ``<topic>/point_ratio``, ``.../azimuth_coverage``)
SCAN_HEALTH = "~/debug/scan_health"


def scan_health_emits(node: NodeCore, topic: str, stamp_ns: int, h: ScanHealth) -> list[Emit]:
    """``topic``: min(point ratio, azimuth coverage); ``topic/point_ratio`` and ``topic/azimuth_coverage``:
    its parts (diagnostics). Nothing when ``topic`` is ""."""
    if not topic:
        return []
    t = topic.rstrip("/")
    f = node._float  # noqa: SLF001 - the node's own Float64Stamped builder (base_frame, its backend)
    return [Emit(f"{t}/point_ratio", topics.FLOAT64_STAMPED, f(stamp_ns, h.point_ratio)),
            Emit(f"{t}/azimuth_coverage", topics.FLOAT64_STAMPED, f(stamp_ns, h.azimuth_coverage)),
            Emit(t, topics.FLOAT64_STAMPED, f(stamp_ns, h.health))]


def float_emit(node: NodeCore, topic: str, stamp_ns: int, value: float) -> Any:
    return Emit(topic, topics.FLOAT64_STAMPED, node._float(stamp_ns, value))  # noqa: SLF001
