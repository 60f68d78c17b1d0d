"""The project's own bags (``convert kitti`` output, generated scenarios) as :class:`Frame` objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.calibration import StaticTransforms, transforms_from_tf_message
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.codecs.pointcloud2 import read_xyzi
from perception_nodes.datasets.frame import Frame
from perception_nodes.datasets.geometry import transform_boxes

#: ground truth a bag may carry; a frame waits for every one of these the bag has
GT_TOPICS = (topics.GT_OBJECTS, topics.GT_OCCUPANCY, topics.GT_VISIBILITY)


def read_bag_frames(path: str | Path, *, base_frame: str = "base_link", tolerance_ns: int = 50_000_000,
                    horizon_ns: int = 2_000_000_000) -> Iterator[Frame]:
    """LiDAR frames with all the ground truth of their stamp, in bag order.

    Ground truth is matched by header stamp: a cloud goes with the ground-truth set (every topic of
    :data:`GT_TOPICS` the bag has) whose stamp is nearest to its own within ``tolerance_ns`` — a
    generated bag stamps ground truth at the nominal capture time and a faulted LiDAR may be off by a
    little. Clouds or sets with no partner within ``horizon_ns`` of log time are dropped. ``points`` stay
    in the LiDAR frame; ``lidar_to_base`` comes from ``/tf_static``; boxes are put in the LiDAR frame.
    """
    tree = StaticTransforms()
    clouds: dict[int, Any] = {}
    truth: dict[int, dict[str, Any]] = {}
    with BagReader(path) as reader:
        gt_topics = [t for t in GT_TOPICS if t in reader.topics]
        for rec in reader.records(topics=[topics.TF_STATIC, topics.LIDAR_POINTS, *gt_topics]):
            if rec.topic == topics.TF_STATIC:
                for t in transforms_from_tf_message(rec.msg):
                    tree.add(t)
                continue
            stamp = stamp_to_ns(rec.msg.header.stamp)
            if rec.topic == topics.LIDAR_POINTS and not gt_topics:  # no ground truth: frames as they come
                yield Frame(source="bag", frame_id=str(stamp), stamp_ns=stamp, points=np.array(read_xyzi(rec.msg)),
                            boxes=[], lidar_to_base=tree.lookup(base_frame, rec.msg.header.frame_id))
                continue
            if rec.topic == topics.LIDAR_POINTS:
                clouds[stamp] = rec.msg
            else:
                truth.setdefault(stamp, {})[rec.topic] = rec.msg
            for s in sorted(truth):
                slot = truth[s]
                if len(slot) < len(gt_topics) or not clouds:
                    continue
                c = min(clouds, key=lambda k: abs(k - s))
                if abs(c - s) > tolerance_ns:
                    continue
                cloud = clouds.pop(c)
                del truth[s]
                to_base = tree.lookup(base_frame, cloud.header.frame_id)
                gt = slot.get(topics.GT_OBJECTS)
                boxes = transform_boxes(boxes_from_detections(gt), np.linalg.inv(to_base)) if gt is not None else []
                yield Frame(source="bag", frame_id=str(c), stamp_ns=c, points=np.array(read_xyzi(cloud)), boxes=boxes,
                            lidar_to_base=to_base, extras={t: m for t, m in slot.items() if t != topics.GT_OBJECTS})
            old = rec.log_time_ns - horizon_ns
            for d in (clouds, truth):
                for k in [k for k in d if k < old]:
                    del d[k]
