"""``perception_interfaces/Detection3DArray`` <-> :class:`~perception_nodes.boxes.Box3D` lists."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import MessageBackend, default_backend, make_header

DETECTIONS_TYPE = "perception_interfaces/msg/Detection3DArray"


def _yaw_quat(backend: MessageBackend, yaw: float) -> Any:
    return backend.new(
        "geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0)
    )


def detections_msg(
    boxes: list[Box3D], stamp_ns: int, frame_id: str, backend: MessageBackend | None = None
) -> Any:
    """Build a Detection3DArray; boxes without covariance get zeros (unknown)."""
    b = backend or default_backend()
    dets = []
    for box in boxes:
        pose = b.new(
            "geometry_msgs/msg/Pose",
            position=b.new("geometry_msgs/msg/Point", x=float(box.center[0]), y=float(box.center[1]), z=float(box.center[2])),
            orientation=_yaw_quat(b, box.yaw),
        )
        size = b.new("geometry_msgs/msg/Vector3", x=float(box.size[0]), y=float(box.size[1]), z=float(box.size[2]))
        cov = np.zeros(36) if box.covariance is None else np.asarray(box.covariance, dtype=np.float64)
        dets.append(
            b.new(
                "perception_interfaces/msg/Detection3D",
                label=box.label,
                score=float(box.score),
                pose=pose,
                size=size,
                covariance=cov,
                occlusion=int(box.occlusion),
                truncation=float(box.truncation),
            )
        )
    return b.new(DETECTIONS_TYPE, header=make_header(b, stamp_ns, frame_id), detections=dets)


def boxes_from_detections(msg: Any) -> list[Box3D]:
    """Read a Detection3DArray (rosbags or rclpy) back into boxes (yaw from the quaternion)."""
    out = []
    for d in msg.detections:
        q = d.pose.orientation
        yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
        cov = np.asarray(d.covariance, dtype=np.float64)
        out.append(
            Box3D(
                label=d.label,
                center=(d.pose.position.x, d.pose.position.y, d.pose.position.z),
                size=(d.size.x, d.size.y, d.size.z),
                yaw=yaw,
                score=float(d.score),
                covariance=None if not cov.any() else tuple(cov.tolist()),
                occlusion=int(d.occlusion),
                truncation=float(d.truncation),
            )
        )
    return out
