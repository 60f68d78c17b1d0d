"""Scoring the graph's outputs against a bag's ground truth (``perception-stack evaluate``; ``replay``
adds the same metrics whenever the bag carries ground truth).

Predictions and ground truth are joined per stamp as they stream by, and each frame is scored as soon
as both halves are in. So memory stays bounded on long bags.

* Occupancy (needs ``/ground_truth/occupancy`` + ``/visibility``, which generated scenarios carry):
  IoU/precision/recall of occupied cells over cells that are visible and known; ECE and a reliability
  diagram of P(occupied); coverage (how many visible cells the grid claims to know); AUROC of vacuity
  for telling unseen cells from seen ones and wrong cells from right ones; Chamfer distance between
  occupied cells.
* Objects (any bag with ``/ground_truth/objects``, e.g. converted KITTI): recall of labelled objects
  within range, where an object counts when some cell in its footprint has P(occupied) >= 0.65.
* Detections (when the graph publishes ``perception_interfaces/Detection3DArray`` on
  ``/perception/objects``): KITTI AP R40 (3D and BEV) and nuScenes-style mAP.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.eval import (
    auroc,
    chamfer_distance,
    expected_calibration_error,
    occupancy_scores,
    reliability_diagram,
)
from perception_nodes.eval.detection_eval import detection_metrics

GT_OCCUPANCY = topics.GT_OCCUPANCY
GT_VISIBILITY = topics.GT_VISIBILITY
DETECTIONS_OUT = "/perception/objects"
GROUND_TRUTH_TOPICS = (topics.GT_OBJECTS, GT_OCCUPANCY, GT_VISIBILITY)
OBJECT_RANGE_M = 40.0
OCCUPIED_P = 65
#: cells per frame sampled for the AUROC statistics (keeps memory flat on long bags)
AUROC_SAMPLES = 4000


def grid_array(msg: Any) -> np.ndarray:
    return np.asarray(msg.data, dtype=np.int8).reshape(msg.info.height, msg.info.width)


def cell_centres(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    res, o = msg.info.resolution, msg.info.origin.position
    xs = o.x + (np.arange(msg.info.width) + 0.5) * res
    ys = o.y + (np.arange(msg.info.height) + 0.5) * res
    return np.meshgrid(xs, ys)


def resample_like(src: Any, like: Any) -> np.ndarray:
    """``src`` grid's values at the cell centres of grid ``like`` (nearest cell; -1 outside ``src``)."""
    same = (src.info.width, src.info.height, src.info.resolution) == (like.info.width, like.info.height, like.info.resolution)
    so, lo = src.info.origin.position, like.info.origin.position
    if same and abs(so.x - lo.x) < 1e-6 and abs(so.y - lo.y) < 1e-6:
        return grid_array(src)
    x, y = cell_centres(like)
    col = np.floor((x - so.x) / src.info.resolution).astype(np.int64)
    row = np.floor((y - so.y) / src.info.resolution).astype(np.int64)
    inside = (col >= 0) & (col < src.info.width) & (row >= 0) & (row < src.info.height)
    out = np.full(x.shape, -1, dtype=np.int8)
    out[inside] = grid_array(src)[row[inside], col[inside]]
    return out


def object_hit(box: Box3D, prob: np.ndarray, like: Any, margin: float = 0.15) -> bool:
    """Does some cell in the box's BEV footprint (grown by ``margin``) read occupied?"""
    x, y = cell_centres(like)
    flat = Box3D(box.label, (box.center[0], box.center[1], 0.0), (box.size[0], box.size[1], 1e3), box.yaw)
    inside = flat.contains(np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], 1), margin=margin)
    return bool((prob.ravel()[inside] >= OCCUPIED_P).any())


@dataclass
class Evaluator:
    """Accumulates per-frame scores; feed it with :meth:`prediction` and :meth:`ground_truth`."""

    #: ground-truth topics the bag carries: a frame is scored once all of them (and the grids) are in
    expected_gt: tuple[str, ...] = (topics.GT_OBJECTS,)
    seed: int = 0
    frames_scored: int = 0
    _pending_pred: dict[int, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    _pending_gt: dict[int, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    _conf: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.int64))  # tp fp fn tn
    _probs: list[np.ndarray] = field(default_factory=list)
    _labels: list[np.ndarray] = field(default_factory=list)
    _vac_seen: list[np.ndarray] = field(default_factory=list)
    _vac_unseen: list[np.ndarray] = field(default_factory=list)
    _vac_right: list[np.ndarray] = field(default_factory=list)
    _vac_wrong: list[np.ndarray] = field(default_factory=list)
    _visible: int = 0
    _visible_known: int = 0
    _chamfer: list[float] = field(default_factory=list)
    _objects: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    _det_gt: list[list[Box3D]] = field(default_factory=list)
    _det_pred: list[list[Box3D]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    # -- feeding -------------------------------------------------------------------------------
    def prediction(self, topic: str, msg: Any) -> None:
        if topic in (topics.OCCUPANCY_GRID, topics.OCCUPANCY_UNCERTAINTY, DETECTIONS_OUT):
            stamp = stamp_to_ns(msg.header.stamp)
            self._pending_pred[stamp][topic] = msg
            self._try(stamp)

    def ground_truth(self, topic: str, msg: Any) -> None:
        if topic in GROUND_TRUTH_TOPICS:
            stamp = stamp_to_ns(msg.header.stamp)
            self._pending_gt[stamp][topic] = msg
            self._try(stamp)

    def _try(self, stamp: int) -> None:
        pred, gt = self._pending_pred.get(stamp, {}), self._pending_gt.get(stamp, {})
        have_grid = topics.OCCUPANCY_GRID in pred and topics.OCCUPANCY_UNCERTAINTY in pred
        if not have_grid or not all(t in gt for t in self.expected_gt):
            return
        self._score(pred, gt)
        self._pending_pred.pop(stamp, None)
        self._pending_gt.pop(stamp, None)
        for old in [s for s in self._pending_pred if s < stamp - 5_000_000_000]:  # never-matched leftovers
            del self._pending_pred[old]

    def _sample(self, values: np.ndarray) -> np.ndarray:
        if values.size <= AUROC_SAMPLES:
            return values
        return values[self._rng.choice(values.size, AUROC_SAMPLES, replace=False)]

    def _score(self, pred: dict[str, Any], gt: dict[str, Any]) -> None:
        occ_msg, unc_msg = pred[topics.OCCUPANCY_GRID], pred[topics.OCCUPANCY_UNCERTAINTY]
        prob, vac = grid_array(occ_msg), grid_array(unc_msg)
        known = prob >= 0
        self.frames_scored += 1
        if GT_OCCUPANCY in gt:
            g_occ = resample_like(gt[GT_OCCUPANCY], occ_msg) >= 50
            visible = resample_like(gt[GT_VISIBILITY], occ_msg) >= 50
            mask = visible & known
            s = occupancy_scores(prob >= 50, g_occ, mask)
            self._conf += (s.tp, s.fp, s.fn, s.tn)
            self._probs.append(prob[mask].astype(np.int8))
            self._labels.append(g_occ[mask])
            self._visible += int(visible.sum())
            self._visible_known += int(mask.sum())
            self._vac_seen.append(self._sample(vac[visible].astype(np.float32)))
            self._vac_unseen.append(self._sample(vac[~visible].astype(np.float32)))
            right = (prob >= 50) == g_occ
            self._vac_right.append(self._sample(vac[mask & right].astype(np.float32)))
            self._vac_wrong.append(self._sample(vac[mask & ~right].astype(np.float32)))
            x, y = cell_centres(occ_msg)
            a = np.stack([x[known & (prob >= 50)], y[known & (prob >= 50)], np.zeros(int((known & (prob >= 50)).sum()))], 1)
            b = np.stack([x[visible & g_occ], y[visible & g_occ], np.zeros(int((visible & g_occ).sum()))], 1)
            if len(a) and len(b):
                self._chamfer.append(chamfer_distance(a[:20000], b[:20000], truncate=5.0).chamfer)
        boxes = boxes_from_detections(gt[topics.GT_OBJECTS]) if topics.GT_OBJECTS in gt else []
        for box in boxes:
            if math.hypot(*box.center[:2]) <= OBJECT_RANGE_M:
                counts = self._objects[box.label]
                counts[1] += 1
                counts[0] += int(object_hit(box, prob, occ_msg))
        if DETECTIONS_OUT in pred:
            self._det_gt.append(boxes)
            self._det_pred.append(boxes_from_detections(pred[DETECTIONS_OUT]))

    # -- results -------------------------------------------------------------------------------
    def results(self, out_dir: Path | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"frames_scored": self.frames_scored, "occupancy": None, "objects": None, "detection": None}
        if self._probs:
            tp, fp, fn, tn = (int(v) for v in self._conf)
            probs = np.concatenate(self._probs).astype(np.float64) / 100.0
            labels = np.concatenate(self._labels)
            ece = expected_calibration_error(probs, labels, n_bins=10)
            occ: dict[str, Any] = {
                "iou": tp / (tp + fp + fn) if tp + fp + fn else None,
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "free_iou": tn / (tn + fp + fn) if tn + fp + fn else None,
                "coverage_of_visible": self._visible_known / self._visible if self._visible else None,
                "ece": ece.ece,
                "mce": ece.mce,
                "chamfer_m2": float(np.mean(self._chamfer)) if self._chamfer else None,
                "vacuity_auroc_unseen_vs_seen": _auroc(self._vac_seen, self._vac_unseen),
                "vacuity_auroc_wrong_vs_right": _auroc(self._vac_right, self._vac_wrong),
                "cells_scored": int(labels.size),
            }
            if out_dir is not None:
                reliability_diagram(ece, out_dir / "reliability_occupancy.png", "Occupancy P(occupied), visible cells")
                occ["reliability_diagram"] = "reliability_occupancy.png"
            doc["occupancy"] = occ
        if self._objects:
            per = {k: {"hit": v[0], "total": v[1], "recall": v[0] / v[1] if v[1] else None} for k, v in sorted(self._objects.items())}
            hit, total = sum(v[0] for v in self._objects.values()), sum(v[1] for v in self._objects.values())
            doc["objects"] = {"range_m": OBJECT_RANGE_M, "occupied_threshold": OCCUPIED_P / 100.0,
                              "recall": hit / total if total else None, "per_class": per}
        if self._det_pred:
            doc["detection"] = detection_metrics(self._det_gt, self._det_pred, out_dir)
        return _finite(doc)


def _auroc(inside: list[np.ndarray], outside: list[np.ndarray]) -> float | None:
    a = np.concatenate(inside) if inside else np.zeros(0)
    b = np.concatenate(outside) if outside else np.zeros(0)
    return auroc(a, b) if a.size and b.size else None


def _finite(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_metrics(doc: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(doc, indent=2, allow_nan=False))
    return path
