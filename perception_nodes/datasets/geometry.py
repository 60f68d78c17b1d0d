"""Moving boxes between frames."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from perception_nodes.boxes import Box3D


def transform_boxes(boxes: list[Box3D], matrix: np.ndarray) -> list[Box3D]:
    """Apply a 4x4 rigid transform to gravity-centred boxes; yaw follows the rotated heading vector."""
    out = []
    for b in boxes:
        c = matrix @ np.array([*b.center, 1.0])
        heading = matrix[:3, :3] @ np.array([math.cos(b.yaw), math.sin(b.yaw), 0.0])
        out.append(replace(b, center=(float(c[0]), float(c[1]), float(c[2])),
                           yaw=math.atan2(heading[1], heading[0])))
    return out
