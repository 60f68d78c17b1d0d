"""The perception graph: ROS-agnostic node cores and how they are wired from the params file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from perception_nodes.codecs.backend import MessageBackend
from perception_nodes.errors import NodeUnavailable
from perception_nodes.graph.calibration_monitor import CalibrationMonitorNode
from perception_nodes.graph.bev_fusion import BevFusionNode
from perception_nodes.graph.camera_bev import CameraBevNode
from perception_nodes.graph.detection_fusion import DetectionFusionNode
from perception_nodes.graph.control import ControlNode
from perception_nodes.graph.ground_segmentation import GroundSegmentationNode
from perception_nodes.graph.fusion import FusionNode
from perception_nodes.graph.lidar_detection import LidarDetectionNode
from perception_nodes.graph.node import Emit, NodeCore, Port
from perception_nodes.graph.occupancy_grid import OccupancyGridNode
from perception_nodes.graph.stereo_occupancy import StereoOccupancyNode

#: node name in the params file -> implementation
NODE_TYPES: dict[str, type[NodeCore]] = {
    "ground_segmentation": GroundSegmentationNode,
    "occupancy_grid": OccupancyGridNode,
    "lidar_detection": LidarDetectionNode,
    "fusion": FusionNode,
    "calibration_monitor": CalibrationMonitorNode,
    "stereo_occupancy": StereoOccupancyNode,
    "camera_bev": CameraBevNode,
    "bev_fusion": BevFusionNode,
    "detection_fusion": DetectionFusionNode,
    "control": ControlNode,
}

_log = logging.getLogger("perception_nodes.graph")


def build_graph(
    params: dict[str, dict[str, Any]],
    *,
    backend: MessageBackend,
    clock: Callable[[], int],
    keep_all_latency: bool = False,
    steady_clock: Callable[[], int] | None = None,
    skipped: dict[str, str] | None = None,
) -> list[NodeCore]:
    """Instantiate every enabled node of the params tree, in the file's order.

    ``steady_clock`` times diagnostics (default ``time.monotonic_ns``); replay passes its own clock so
    that the diagnostics it records are deterministic. A node that raises
    :class:`~perception_nodes.errors.NodeUnavailable` at warm-up (e.g. the LiDAR branch before its
    weights are trained) is left out with one warning naming the reason; ``skipped`` (when given)
    collects node name -> reason."""
    nodes = []
    for name, p in params.items():
        if name not in NODE_TYPES or not p.get("enabled", True):
            continue
        p = {k: v for k, v in p.items() if k != "enabled"}
        extra = {} if steady_clock is None else {"steady_clock": steady_clock}
        node = NODE_TYPES[name](name, p, backend=backend, clock=clock, keep_all_latency=keep_all_latency, **extra)
        try:
            node.warmup()
        except NodeUnavailable as exc:
            _log.warning("%s left out of the graph: %s", name, exc)
            if skipped is not None:
                skipped[name] = str(exc)
            continue
        nodes.append(node)
    return nodes


def check_graph_params(params: dict[str, dict[str, Any]]) -> list[str]:
    """Construct every enabled node core from ``params`` and discard it; return the node names.

    The schema (types, ranges) cannot express checks that relate parameters to each other
    (``obstacle_max_height`` above ``obstacle_min_height``, ...): each node core runs those in its
    constructor. Building the cores with a throwaway clock (no warm-up, no ROS) lets
    ``perception-stack params --config`` reject a file exactly where ``replay``/``live`` would.
    Raises ``ValueError`` (``ConfigError``) naming the node and the parameter.
    """
    from perception_nodes.codecs.backend import default_backend

    built = []
    for name, p in params.items():
        if name not in NODE_TYPES or not p.get("enabled", True):
            continue
        NODE_TYPES[name](name, {k: v for k, v in p.items() if k != "enabled"}, backend=default_backend(),
                         clock=lambda: 0)
        built.append(name)
    return built


def resolve_topic(node: NodeCore, topic: str) -> str:
    """``~/x`` -> ``/<node>/x`` (what rclpy does for private names of a node without namespace)."""
    return f"/{node.name}/{topic[2:]}" if topic.startswith("~/") else topic


__all__ = ["NODE_TYPES", "Emit", "NodeCore", "Port", "build_graph", "resolve_topic"]
