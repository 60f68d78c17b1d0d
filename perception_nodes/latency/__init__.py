"""Latency accounting shared by live nodes and offline replay."""

from perception_nodes.latency.stats import LatencySeries, LatencySummary, summarize
from perception_nodes.latency.tracker import CYCLIC, PIPELINE, PROCESSING, FrameLatency, NodeLatency

__all__ = [
    "CYCLIC",
    "PIPELINE",
    "PROCESSING",
    "FrameLatency",
    "LatencySeries",
    "LatencySummary",
    "NodeLatency",
    "summarize",
]
