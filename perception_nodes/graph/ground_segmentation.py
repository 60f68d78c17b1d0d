"""Ground segmentation node: LiDAR cloud in -> obstacle (non-ground) cloud in ``base_link`` out."""

from __future__ import annotations

from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.calibration import transform_points
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud, read_xyzi
from perception_nodes.config import to_dataclass
from perception_nodes.graph.node import Emit, NodeCore, Port, synthetic_scan
from perception_nodes.pipeline.ground import GroundParams, segment_ground


class GroundSegmentationNode(NodeCore):
    """Splits each scan into ground and obstacle points (see :mod:`perception_nodes.pipeline.ground`).

    Stages timed: ``decode``, ``transform``, ``ground_segmentation``, ``encode``. Non-finite points
    (``is_dense=false`` clouds) and points beyond ``max_point_range_m`` are removed and counted before
    the algorithm; an empty scan yields an empty obstacle cloud (downstream nodes still see the frame)
    and a warning on ``/diagnostics``.
    """

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.input_topic = params.get("input_topic", topics.LIDAR_POINTS)
        self.output_topic = params.get("output_topic", topics.OBSTACLE_POINTS)
        self.ground_topic = params.get("ground_topic", "")
        self.ground_params = to_dataclass(GroundParams, params.get("ground", {}), f"{name}.ground.")

    def warmup(self) -> None:
        segment_ground(synthetic_scan(), self.ground_params)

    def inputs(self) -> list[Port]:
        return super().inputs() + [Port(self.input_topic, topics.POINTCLOUD2)]

    def outputs(self) -> list[Port]:
        out = super().outputs() + [Port(self.output_topic, topics.POINTCLOUD2, "reliable")]
        if self.ground_topic:
            out.append(Port(self.ground_topic, topics.POINTCLOUD2, "reliable"))
        return out

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        stamp = stamp_to_ns(msg.header.stamp)
        with self.latency.frame(stamp) as frame:
            with self.latency.stage("decode"):
                pts = self.sanitize(topic, read_xyzi(msg))
            with self.latency.stage("transform"):
                pts = transform_points(self.sensor_to_base(msg.header.frame_id), pts)
            with self.latency.stage("ground_segmentation"):
                if len(pts) == 0:
                    self._warn("empty", f"{topic}: empty cloud at stamp {stamp}")
                ground = segment_ground(pts, self.ground_params) if len(pts) else np.zeros(0, bool)
            with self.latency.stage("encode"):
                out = [Emit(self.output_topic, topics.POINTCLOUD2,
                            create_xyzi_cloud(pts[~ground], stamp, self.base_frame, self.backend))]
                if self.ground_topic:
                    out.append(Emit(self.ground_topic, topics.POINTCLOUD2,
                                    create_xyzi_cloud(pts[ground], stamp, self.base_frame, self.backend)))
        self.frames_out += 1
        self.mark_used(topic)
        return out + self.debug_emits(frame)

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**super()._derived(params),
                "ground_params": to_dataclass(GroundParams, params.get("ground", {}), f"{self.name}.ground.")}

    @property
    def nonfinite_points(self) -> int:
        """Non-finite points removed so far (kept for callers of the earlier attribute)."""
        return self.points_dropped["nonfinite"]
