"""Learned perception networks (torch) and their decoders; the graph nodes wrap them."""

from perception_nodes.models.bev_grid import BevGrid
from perception_nodes.models.decode import Detections, Targets, decode, decode_batch, encode_targets
from perception_nodes.models.lidar_detection import (
    BACKBONES,
    LidarDetectionConfig,
    LidarDetectionNet,
    LidarDetectionOutput,
    register_backbone,
)

__all__ = [
    "BACKBONES",
    "BevGrid",
    "Detections",
    "LidarDetectionConfig",
    "LidarDetectionNet",
    "LidarDetectionOutput",
    "Targets",
    "decode",
    "decode_batch",
    "encode_targets",
    "register_backbone",
]
