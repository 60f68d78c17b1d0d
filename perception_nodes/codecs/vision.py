"""Builders for the LiDAR branch's outputs: ``vision_msgs/Detection3DArray`` and the curvature prediction.

``vision_msgs`` (upstream 4.1.1 layout; the stand-in package in ``ros_ws`` has the same definitions, so a
real ``vision_msgs`` subscriber matches) carries per detection:

* ``bbox``: centre pose (position + yaw quaternion) and size (length, width, height along the box axes);
* ``results``: one ``ObjectHypothesisWithPose`` per foreground class, most probable first. ``class_id`` is
  the class *name* (``car``, ``pedestrian``, ``cyclist``), ``score`` its Dirichlet expected probability
  ``alpha_k / S`` at the box's cell (background, the remainder to 1, is not listed). Every result carries
  the same ``pose``: the box centre with the 6 x 6 covariance over (x, y, z, roll, pitch, yaw), row-major,
  from the NIG predictive variances (diagonal; roll and pitch, which are not estimated, get a large
  variance rather than 0, which would mean "known exactly");
* ``id``: empty (no tracking here);
* with ``strength`` given (the LiDAR branch gives it), one more result at the end whose ``class_id`` is
  :data:`EVIDENCE_STRENGTH_ID` (not a class): its ``score`` is the Dirichlet strength
  ``S = sum_k alpha_k`` over the classes and background at the box's cell, so a consumer can recover the
  class evidence ``alpha_k = score_k S`` (the detection fusion node does); consumers that only read
  ``results[0]`` or look up known class names are unaffected.

Builders take arrays (duck-typed :class:`perception_nodes.models.decode.Detections`), so this module does
not import torch.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import numpy as np

from perception_nodes.codecs.backend import MessageBackend, default_backend, make_header

VISION_DETECTIONS_TYPE = "vision_msgs/msg/Detection3DArray"
#: class_id of the trailing pseudo-hypothesis carrying the Dirichlet strength S (see module doc)
EVIDENCE_STRENGTH_ID = "dirichlet_strength"
CURVATURE_TYPE = "perception_interfaces/msg/CurvaturePrediction"


class DetectionArrays(Protocol):
    """What the builder reads (the fields of :class:`perception_nodes.models.decode.Detections`)."""

    class_names: tuple[str, ...]
    center: np.ndarray
    size: np.ndarray
    yaw: np.ndarray
    label: np.ndarray
    score: np.ndarray
    class_probabilities: np.ndarray
    covariance: np.ndarray

    def __len__(self) -> int: ...


def _pose(b: MessageBackend, center: Sequence[float], yaw: float) -> Any:
    return b.new(
        "geometry_msgs/msg/Pose",
        position=b.new("geometry_msgs/msg/Point", x=float(center[0]), y=float(center[1]), z=float(center[2])),
        orientation=b.new("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0)),
    )


def vision_detections_msg(det: DetectionArrays, stamp_ns: int, frame_id: str,
                          backend: MessageBackend | None = None, strength: np.ndarray | None = None) -> Any:
    """A ``vision_msgs/Detection3DArray`` of one scan's boxes (see the module doc for the field meaning).

    Zero boxes give a valid, empty array with the scan's stamp: "nothing detected in this scan".
    ``strength`` (one Dirichlet strength per box, optional) adds the :data:`EVIDENCE_STRENGTH_ID` result.
    """
    b = backend or default_backend()
    header = make_header(b, stamp_ns, frame_id)
    names = tuple(det.class_names)
    k = len(names)
    probs = np.asarray(det.class_probabilities, dtype=np.float64)
    out = []
    for i in range(len(det)):
        pose = _pose(b, det.center[i], float(det.yaw[i]))
        cov = np.asarray(det.covariance[i], dtype=np.float64).reshape(36)
        order = [int(det.label[i])] + [j for j in np.argsort(-probs[i, :k], kind="stable").tolist()
                                       if j != int(det.label[i])]
        results = [
            b.new("vision_msgs/msg/ObjectHypothesisWithPose",
                  hypothesis=b.new("vision_msgs/msg/ObjectHypothesis", class_id=names[j],
                                   score=float(det.score[i]) if j == int(det.label[i]) else float(probs[i, j])),
                  pose=b.new("geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=cov))
            for j in order
        ]
        if strength is not None:
            results.append(b.new("vision_msgs/msg/ObjectHypothesisWithPose",
                                 hypothesis=b.new("vision_msgs/msg/ObjectHypothesis", class_id=EVIDENCE_STRENGTH_ID,
                                                  score=float(strength[i])),
                                 pose=b.new("geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=cov)))
        bbox = b.new("vision_msgs/msg/BoundingBox3D", center=pose,
                     size=b.new("geometry_msgs/msg/Vector3", x=float(det.size[i, 0]), y=float(det.size[i, 1]),
                                z=float(det.size[i, 2])))
        out.append(b.new("vision_msgs/msg/Detection3D", header=header, results=results, bbox=bbox, id=""))
    return b.new(VISION_DETECTIONS_TYPE, header=header, detections=out)


def curvature_msg(horizon_m: Sequence[float], mean: np.ndarray, aleatoric: np.ndarray, epistemic: np.ndarray,
                  stamp_ns: int, frame_id: str, backend: MessageBackend | None = None) -> Any:
    """A ``perception_interfaces/CurvaturePrediction``; ``variance`` = aleatoric + epistemic (Student-t)."""
    b = backend or default_backend()
    f64 = lambda a: np.asarray(a, dtype=np.float64).reshape(-1)  # noqa: E731
    return b.new(CURVATURE_TYPE, header=make_header(b, stamp_ns, frame_id), horizon_m=f64(horizon_m),
                 curvature=f64(mean), variance=f64(aleatoric) + f64(epistemic), aleatoric_variance=f64(aleatoric),
                 epistemic_variance=f64(epistemic))
