"""One LiDAR frame with its ground truth, whatever the source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perception_nodes.boxes import Box3D


@dataclass
class Frame:
    """A frame in the LiDAR's own frame plus what is needed to put it in ``base_link``.

    ``points``: (N, >=4) float32, x y z intensity [+ extra columns such as ring], LiDAR frame.
    ``boxes``: ground-truth boxes in the LiDAR frame (gravity centre, yaw about the LiDAR's z).
    ``lidar_to_base``: 4x4 from the LiDAR frame into the vehicle frame (base_link / nuScenes ego).
    ``cameras``: camera name -> dict(K 3x3, lidar_to_cam 4x4, width, height, image_path or image).
    """

    source: str
    frame_id: str
    stamp_ns: int
    points: np.ndarray
    boxes: list[Box3D]
    lidar_to_base: np.ndarray = field(default_factory=lambda: np.eye(4))
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def boxes_in_base(self) -> list[Box3D]:
        """Ground truth moved into the vehicle frame (rotation about z only, as for any level mount)."""
        from perception_nodes.datasets.geometry import transform_boxes

        return transform_boxes(self.boxes, self.lidar_to_base)
