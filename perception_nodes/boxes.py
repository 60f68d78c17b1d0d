"""3D boxes as the core passes them around (ground truth, and later detections).

Convention (same as ROS REP 103 frames): centre is the box's gravity centre in the frame named by the
message header, size is (length along heading, width, height) in metres, yaw is the heading about +z.
KITTI labels (bottom centre, camera frame, rotation_y about camera y) are converted once, on reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Box3D:
    label: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]  # length, width, height
    yaw: float
    score: float = 1.0
    #: 6x6 row-major pose covariance over (x, y, z, roll, pitch, yaw); None when unknown.
    covariance: tuple[float, ...] | None = None
    occlusion: int = -1
    truncation: float = 0.0
    extras: dict = field(default_factory=dict, compare=False, hash=False)

    def corners_xy(self) -> np.ndarray:
        """The four BEV corners, counter-clockwise, as a (4, 2) array."""
        l, w = self.size[0] / 2.0, self.size[1] / 2.0
        local = np.array([[l, w], [-l, w], [-l, -w], [l, -w]], dtype=np.float64)
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        rot = np.array([[c, -s], [s, c]])
        return local @ rot.T + np.asarray(self.center[:2])

    def corners(self) -> np.ndarray:
        """The eight corners, (8, 3): the BEV corners of :meth:`corners_xy` at the top, then at the bottom."""
        xy = self.corners_xy()
        h = self.size[2] / 2.0
        z = float(self.center[2])
        return np.concatenate([np.column_stack([xy, np.full(4, z + h)]), np.column_stack([xy, np.full(4, z - h)])])

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Boolean mask of the (N, >=3) points inside the box grown by ``margin`` metres."""
        p = np.asarray(points[:, :3], dtype=np.float64) - np.asarray(self.center)
        c, s = np.cos(-self.yaw), np.sin(-self.yaw)
        x = c * p[:, 0] - s * p[:, 1]
        y = s * p[:, 0] + c * p[:, 1]
        l, w, h = (np.asarray(self.size) / 2.0) + margin
        return (np.abs(x) <= l) & (np.abs(y) <= w) & (np.abs(p[:, 2]) <= h)
