"""Validation metrics of the ``lidar_detection`` branch (also used by the held-out and real-data evaluation).

:class:`DetectionAccumulator` takes network outputs and their samples batch by batch and
:meth:`DetectionAccumulator.results` gives flat float metrics:

* ``{car,pedestrian,cyclist}_ap_{bev,3d}``: KITTI AP R40 at the classes' IoUs (0.7 / 0.5 / 0.5) from
  :class:`perception_nodes.eval.detection_eval.DetectionScorer` with its default filters (boxes with no
  LiDAR point or beyond the class range gate are ignored); generated scenes have no difficulty fields, so
  this is the single level ``all``; ``nus_map``: the nuScenes-style mAP (centre distance);
* ``ece_class``: ECE of the detection score (the Dirichlet expected probability of the box's class)
  against "right" = the detection's BEV centre lies within ``match_distance_m`` of a not yet matched
  ground-truth box of the same class (greedy, highest score first);
* ``auroc_vacuity`` / ``auroc_centre_std`` / ``auroc_one_minus_score``: AUROC of those uncertainties
  for wrong (positive) vs right detections (0.5 = chance);
* ``coverage_centre`` / ``coverage_z``: fraction of the ground-truth centre offsets (dx, dy pooled) and
  heights inside the central ``coverage_level`` interval of the predictive Student-t at the object's
  centre cell (independent of the detector's threshold); ``coverage_curvature`` likewise per horizon;
* ``ece_centre_class`` / ``accuracy_centre_class``: top-label ECE and accuracy of the class Dirichlet at
  the ground-truth centre cells (K classes + background);
* ``occupancy_iou`` / ``occupancy_ece``: on visible cells, P(occupied) = (r + 1) / (r + s + 2) > 0.5;
* ``curvature_mae`` beside ``curvature_mae_zero`` (the trivial baseline "straight road"), 1/m.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from perception_nodes.boxes import Box3D
from perception_nodes.evidential.dirichlet import dirichlet_expected_probability
from perception_nodes.models.decode import Detections, decode_batch

if TYPE_CHECKING:
    from perception_nodes.learning.branches.lidar_detection import LidarDetectionBranch
    from perception_nodes.models.lidar_detection import LidarDetectionOutput

__all__ = ["DetectionAccumulator", "detection_validation_metrics", "gt_boxes"]


def gt_boxes(boxes: np.ndarray, classes: Sequence[str]) -> list[Box3D]:
    """``[M, 8]`` (x, y, z, l, w, h, yaw, class index) rows as :class:`Box3D` with the class names."""
    a = np.asarray(boxes, np.float64).reshape(-1, 8)
    return [Box3D(label=classes[int(r[7])], center=(r[0], r[1], r[2]), size=(r[3], r[4], r[5]), yaw=float(r[6]))
            for r in a]


def _ece(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    from perception_nodes.learning.metrics import expected_calibration_error

    if conf.size == 0:
        return float("nan")
    return float(expected_calibration_error(conf, correct.astype(np.float64), bins=bins))


def _auroc(right: np.ndarray, wrong: np.ndarray) -> float:
    from perception_nodes.eval.metrics.ood import auroc

    if right.size == 0 or wrong.size == 0:
        return float("nan")
    return auroc(right, wrong)


def _coverage(y: np.ndarray, nig: Sequence[np.ndarray], level: float) -> float:
    from perception_nodes.eval.metrics.regression import interval_coverage

    if y.size == 0:
        return float("nan")
    return float(interval_coverage(y, *nig, levels=(level,))[float(level)])


class DetectionAccumulator:
    """Collects everything the metrics need, batch by batch (see the module docstring)."""

    def __init__(self, branch: "LidarDetectionBranch", *, with_occupancy: bool = True) -> None:
        from perception_nodes.eval.detection_eval import DetectionScorer

        self.branch = branch
        self.scorer = DetectionScorer()
        self.with_occupancy = with_occupancy
        self._det: list[tuple[float, bool, float, float]] = []  # score, right, vacuity, centre std
        self._cent: dict[str, list[np.ndarray]] = {"y": [], "g": [], "n": [], "a": [], "b": []}
        self._z: dict[str, list[np.ndarray]] = {"y": [], "g": [], "n": [], "a": [], "b": []}
        self._cls_p: list[np.ndarray] = []
        self._cls_y: list[np.ndarray] = []
        self._occ_p: list[np.ndarray] = []
        self._occ_y: list[np.ndarray] = []
        self._curv: dict[str, list[np.ndarray]] = {"y": [], "g": [], "n": [], "a": [], "b": []}
        self.frames = 0

    def decode(self, out: "LidarDetectionOutput") -> list[Detections]:
        ep = self.branch.eval_params
        return decode_batch(out, self.branch.head_grid, self.branch.net_config.classes,
                            score_threshold=ep.score_threshold, max_detections=ep.max_detections)

    def add(self, out: "LidarDetectionOutput", samples: Sequence[dict[str, np.ndarray]],
            detections: Sequence[Detections] | None = None) -> list[Detections]:
        """One batch: the network output and its samples (``points``, ``boxes``, optional ``occupied``,
        ``visible``, ``curvature``). Returns the decoded detections."""
        br = self.branch
        classes = br.net_config.classes
        dets = list(detections) if detections is not None else self.decode(out)
        targets = br.targets_of([s["boxes"] for s in samples])
        probs = dirichlet_expected_probability(out.class_alpha.float(), dim=1)
        for b, (s, det, tg) in enumerate(zip(samples, dets, targets, strict=True)):
            self.frames += 1
            gt = gt_boxes(s["boxes"], classes)
            self.scorer.add_frame(gt, det.to_box3d(), points=s["points"])
            self._match(det, np.asarray(s["boxes"]).reshape(-1, 8))
            if len(tg.indices):
                idx = torch.from_numpy(tg.indices)
                nig = [t[b].flatten(1)[:, idx].float().cpu().numpy() for t in out.box]  # [T, M] each
                for d, (lo, hi) in ((self._cent, (0, 2)), (self._z, (2, 3))):
                    d["y"].append(tg.regression.T[lo:hi].reshape(-1))
                    for key, arr in zip("gnab", nig):
                        d[key].append(arr[lo:hi].reshape(-1))
                p = probs[b].flatten(1)[:, idx].cpu().numpy().T  # [M, K + 1]
                self._cls_p.append(p)
                self._cls_y.append(tg.labels)
            if self.with_occupancy and "occupied" in s and "visible" in s:
                ev = out.occupancy_evidence[b].float().cpu().numpy()
                vis = np.asarray(s["visible"]) > 0
                self._occ_p.append(((ev[0] + 1.0) / (ev[0] + ev[1] + 2.0))[vis])
                self._occ_y.append((np.asarray(s["occupied"]) > 0)[vis])
            if "curvature" in s:
                y = np.asarray(s["curvature"], np.float64)
                known = np.isfinite(y)
                if known.any():
                    self._curv["y"].append(y[known])
                    for key, t in zip("gnab", out.curvature):
                        self._curv[key].append(t[b].float().cpu().numpy()[known])
        return dets

    def _match(self, det: Detections, boxes: np.ndarray) -> None:
        """Greedy centre-distance matching (highest score first) of one frame's detections."""
        thr = self.branch.eval_params.match_distance_m
        used = np.zeros(len(boxes), bool)
        order = np.argsort(-det.score, kind="stable")
        for i in order:
            right = False
            if len(boxes):
                d = np.hypot(boxes[:, 0] - det.center[i, 0], boxes[:, 1] - det.center[i, 1])
                d[used | (boxes[:, 7].astype(np.int64) != det.label[i])] = np.inf
                j = int(np.argmin(d))
                if d[j] <= thr:
                    used[j] = True
                    right = True
            cov = det.covariance[i]
            self._det.append((float(det.score[i]), right, float(det.vacuity[i]),
                              float(np.sqrt(max(cov[0, 0] + cov[1, 1], 0.0)))))

    def results(self) -> dict[str, float]:
        ep = self.branch.eval_params
        nan = float("nan")
        det = self.scorer.results()
        out: dict[str, float] = {"frames": float(self.frames)}
        for c in self.branch.net_config.classes:
            v3, vb = det["kitti_ap_r40_3d"].get(c), det["kitti_ap_r40_bev"].get(c)
            out[f"{c}_ap_3d"] = nan if v3 is None else float(v3)
            out[f"{c}_ap_bev"] = nan if vb is None else float(vb)
            out[f"{c}_n_gt"] = float(det["counts"]["gt"].get(c, 0))
        out["nus_map"] = nan if det["nuscenes_map"] is None else float(det["nuscenes_map"])
        d = np.asarray(self._det, np.float64).reshape(-1, 4)
        right = d[:, 1] > 0.5
        out["detections"] = float(len(d))
        out["precision_centre"] = float(right.mean()) if len(d) else nan
        out["ece_class"] = _ece(d[:, 0], right, ep.ece_bins)
        out["auroc_vacuity"] = _auroc(d[right, 2], d[~right, 2])
        out["auroc_centre_std"] = _auroc(d[right, 3], d[~right, 3])
        out["auroc_one_minus_score"] = _auroc(1.0 - d[right, 0], 1.0 - d[~right, 0])

        def cat(dd: dict[str, list[np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
            if not dd["y"]:
                return np.zeros(0), [np.zeros(0)] * 4
            return np.concatenate(dd["y"]), [np.concatenate(dd[k]) for k in "gnab"]

        y, nig = cat(self._cent)
        out["coverage_centre"] = _coverage(y, nig, ep.coverage_level)
        out["centre_abs_error_cells"] = float(np.mean(np.abs(y - nig[0]))) if y.size else nan
        y, nig = cat(self._z)
        out["coverage_z"] = _coverage(y, nig, ep.coverage_level)
        if self._cls_p:
            p = np.concatenate(self._cls_p)
            lab = np.concatenate(self._cls_y)
            top = p.argmax(1)
            out["accuracy_centre_class"] = float((top == lab).mean())
            out["ece_centre_class"] = _ece(p.max(1), top == lab, ep.ece_bins)
        else:
            out["accuracy_centre_class"] = out["ece_centre_class"] = nan
        if self._occ_p:
            p, yy = np.concatenate(self._occ_p), np.concatenate(self._occ_y)
            pred = p > 0.5
            inter, union = float((pred & yy).sum()), float((pred | yy).sum())
            out["occupancy_iou"] = inter / union if union else nan
            out["occupancy_ece"] = _ece(p, yy, ep.ece_bins)
        y, nig = cat(self._curv)
        out["coverage_curvature"] = _coverage(y, nig, ep.coverage_level)
        out["curvature_mae"] = float(np.mean(np.abs(y - nig[0]))) if y.size else nan
        out["curvature_mae_zero"] = float(np.mean(np.abs(y))) if y.size else nan
        return out


@torch.no_grad()
def detection_validation_metrics(branch: "LidarDetectionBranch", model: nn.Module, samples: Sequence[dict[str, Any]],
                                 *, batch_size: int, device: torch.device) -> dict[str, float]:
    """Run ``model`` over ``samples`` in eval mode and score them (:class:`DetectionAccumulator`)."""
    if not samples:
        return {}
    acc = DetectionAccumulator(branch)
    was = model.training
    model.eval()
    try:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i: i + batch_size]
            out = model([torch.from_numpy(np.asarray(s["points"])).to(device) for s in chunk])
            acc.add(out, chunk)
    finally:
        model.train(was)
    return acc.results()
