"""The messages a detecting network node publishes per frame, in one place.

Both the LiDAR branch (``lidar_detection``) and the camera + LiDAR fuser (``bev_fusion``) end in the same
heads, so they publish the same set: ``vision_msgs/Detection3DArray`` with the Dirichlet strength riding
along (so detection fusion can recover the class evidence, not only probabilities), the project's
``Detection3DArray`` for ``perception-stack evaluate``, RViz markers, the occupancy grid and its vacuity,
and the NIG curvature prediction. Each output is skipped when its topic param is "".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.codecs.backend import make_header
from perception_nodes.codecs.detections import DETECTIONS_TYPE, detections_msg
from perception_nodes.codecs.outputs import marker_array_msg, occupancy_grid_msg
from perception_nodes.codecs.vision import CURVATURE_TYPE, VISION_DETECTIONS_TYPE, curvature_msg, vision_detections_msg
from perception_nodes.config import ConfigError
from perception_nodes.graph.node import Emit, NodeCore
from perception_nodes.pipeline.occupancy import GridSpec

__all__ = ["decode_options", "detection_frame_emits"]


def decode_options(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The decoding parameters a detecting node passes to :func:`~perception_nodes.models.decode`
    (``score_threshold``, ``max_detections``, ``nms_kernel`` -- odd, >= 1 --, ``max_vacuity``)."""
    nms = int(params.get("nms_kernel", 3))
    if nms < 1 or nms % 2 == 0:
        raise ConfigError(f"{name}.nms_kernel must be odd and >= 1, got {nms}")
    return {
        "score_threshold": float(params.get("score_threshold", 0.3)),
        "max_detections": int(params.get("max_detections", 100)),
        "nms_kernel": nms,
        "max_vacuity": float(params.get("max_vacuity", 1.0)),
    }


def detection_frame_emits(node: NodeCore, stamp: int, det: Any, prob: np.ndarray, vac: np.ndarray, spec: GridSpec,
                          curvature: Any, horizons_m: Any, marker_ns: str) -> list[Emit]:
    """One frame's messages for a detecting node with the attributes ``detections_topic``, ``objects_topic``,
    ``markers_topic``, ``marker_lifetime_s``, ``occupancy_topic``, ``occupancy_uncertainty_topic`` and
    ``curvature_topic``. ``det`` None (a frame with no input) gives an empty detection array;
    ``curvature`` (the NIG tensors ``gamma, nu, alpha, beta``) None skips the curvature message."""
    b, frame_id = node.backend, node.base_frame
    emits: list[Emit] = []
    if det is not None:
        with np.errstate(divide="ignore"):
            strength = (len(det.class_names) + 1) / np.asarray(det.vacuity, np.float64)  # S = (K + 1) / vacuity
        emits.append(Emit(node.detections_topic, VISION_DETECTIONS_TYPE,
                          vision_detections_msg(det, stamp, frame_id, b, strength=strength)))
        boxes = det.to_box3d() if (node.objects_topic or node.markers_topic) else []
    else:
        emits.append(Emit(node.detections_topic, VISION_DETECTIONS_TYPE,
                          b.new(VISION_DETECTIONS_TYPE, header=make_header(b, stamp, frame_id), detections=[])))
        boxes = []
    if node.objects_topic:
        emits.append(Emit(node.objects_topic, DETECTIONS_TYPE, detections_msg(boxes, stamp, frame_id, b)))
    if node.markers_topic:
        emits.append(Emit(node.markers_topic, topics.MARKER_ARRAY,
                          marker_array_msg(boxes, stamp, frame_id, marker_ns, b, lifetime_s=node.marker_lifetime_s)))
    origin = (*spec.origin, 0.0)
    if node.occupancy_topic:
        emits.append(Emit(node.occupancy_topic, topics.OCCUPANCY_GRID_TYPE,
                          occupancy_grid_msg(prob, spec.resolution, origin, stamp, frame_id, b)))
    if node.occupancy_uncertainty_topic:
        emits.append(Emit(node.occupancy_uncertainty_topic, topics.OCCUPANCY_GRID_TYPE,
                          occupancy_grid_msg(vac, spec.resolution, origin, stamp, frame_id, b)))
    if node.curvature_topic and curvature is not None:
        gamma, nu, alpha, beta = (t[0].detach().cpu().double().numpy() for t in curvature)
        aleatoric = beta / (alpha - 1.0)
        emits.append(Emit(node.curvature_topic, CURVATURE_TYPE,
                          curvature_msg(horizons_m, gamma, aleatoric, aleatoric / nu, stamp, frame_id, b)))
    return emits
