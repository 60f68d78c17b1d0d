"""The project's own bags (``convert kitti`` output, generated scenarios) as :class:`Frame` objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.calibration import StaticTransforms, transforms_from_tf_message
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.codecs.pointcloud2 import read_xyzi
from perception_nodes.datasets.frame import Frame
from perception_nodes.datasets.geometry import transform_boxes

#: ground-truth grids that generated scenarios carry, kept per frame in ``Frame.extras``
GT_GRID_TOPICS = ("/ground_truth/occupancy", "/ground_truth/occupancy/visibility")


def read_bag_frames(path: str | Path, *, base_frame: str = "base_link") -> Iterator[Frame]:
    """LiDAR frames paired (by header stamp) with the bag's ground truth; boxes put in the LiDAR frame."""
    tree = StaticTransforms()
    pending: dict[int, dict] = {}
    wanted = [topics.TF_STATIC, topics.LIDAR_POINTS, topics.GT_OBJECTS, *GT_GRID_TOPICS]
    with BagReader(path) as reader:
        have_gt = topics.GT_OBJECTS in reader.topics
        for rec in reader.records(topics=wanted):
            if rec.topic == topics.TF_STATIC:
                for t in transforms_from_tf_message(rec.msg):
                    tree.add(t)
                continue
            stamp = stamp_to_ns(rec.msg.header.stamp)
            slot = pending.setdefault(stamp, {})
            slot[rec.topic] = rec.msg
            cloud = slot.get(topics.LIDAR_POINTS)
            if cloud is None or (have_gt and topics.GT_OBJECTS not in slot):
                continue
            del pending[stamp]
            lidar_frame = cloud.header.frame_id
            to_base = tree.lookup(base_frame, lidar_frame)
            gt = slot.get(topics.GT_OBJECTS)
            boxes = transform_boxes(boxes_from_detections(gt), np.linalg.inv(to_base)) if gt is not None else []
            yield Frame(
                source="bag",
                frame_id=str(stamp),
                stamp_ns=stamp,
                points=np.array(read_xyzi(cloud)),
                boxes=boxes,
                lidar_to_base=to_base,
                extras={t: slot[t] for t in GT_GRID_TOPICS if t in slot},
            )
