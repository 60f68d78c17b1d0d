"""Validation metrics of the ``lidar_detection`` branch (also used by the held-out and real-data evaluation).

:class:`DetectionAccumulator` takes network outputs and their samples batch by batch and
:meth:`DetectionAccumulator.results` gives flat float metrics:

* ``{car,pedestrian,cyclist}_ap_{bev,3d}``: KITTI AP R40 at the classes' IoUs (0.7 / 0.5 / 0.5) from
  :class:`perception_nodes.eval.detection_eval.DetectionScorer` with its default filters (boxes with no
  LiDAR point or beyond the class range gate are ignored); generated scenes have no difficulty fields, so
  this is the single level ``all``; ``{car,...}_ap_{bev,3d}_{easy,moderate,hard}`` and ``{car,...}_n_gt_<level>``:
  the same boxes graded by KITTI level (samples with a ``sensor_origin``; occlusion from the sample's
  ``box_occlusion`` where the bag carries it -- generator version 5 on --, else from the scan;
  :mod:`perception_nodes.eval.generated_difficulty`; detections below a level's 2D height are ignored there);
  ``nus_map``: the nuScenes-style mAP (centre distance);
* ``ece_class`` / ``brier_class`` / ``nll_class``: ECE, Brier score and binary NLL of the detection score
  (the Dirichlet expected probability of the box's class) against "right" = the detection's BEV centre
  lies within ``match_distance_m`` of a not yet matched ground-truth box of the same class (greedy,
  highest score first);
* ``auroc_vacuity`` / ``auroc_centre_std`` / ``auroc_one_minus_score``: AUROC of those uncertainties
  for wrong (positive) vs right detections (0.5 = chance);
* ``coverage_xy`` / ``coverage_xy_2d`` / ``coverage_z`` / ``coverage_yaw``: on the *right* (matched)
  decoded detections, the fraction of errors ground truth - decoded box (centre x and y pooled; z; yaw
  wrapped to (-pi, pi]) inside the central ``coverage_level`` Gaussian interval ``+- z sigma`` of the
  *published* covariance (``_2d``: inside the ``coverage_level`` ellipse of the x/y block, chi-square with
  2 degrees of freedom); this includes the error of choosing the peak cell. ``nll_xy``: mean Gaussian NLL
  of the x/y errors under the published variances; ``centre_error_m``: median BEV centre error;
  ``halfwidth_xy_m``: median half-width ``z sigma`` of the x/y interval (sharpness);
* ``coverage_offset_at_gt_cell`` / ``coverage_z_at_gt_cell``: fraction of the ground-truth sub-cell
  offsets (dx, dy pooled, in cells) and heights inside the central ``coverage_level`` interval of the
  predictive Student-t *at the object's centre cell* (the regression alone: it leaves out the peak-cell
  choice, and an offset in [0, 1) cells is easy to cover); ``coverage_curvature`` likewise per horizon;
* ``ece_centre_class`` / ``accuracy_centre_class`` / ``nll_centre_class`` / ``brier_centre_class``:
  top-label ECE and accuracy, categorical NLL and Brier score of the class Dirichlet at the ground-truth
  centre cells (K classes + background);
* trivial baselines on the same detections (:class:`TrivialBaselines`, when given): ``baseline_score_*``
  = a constant score (a base rate of right detections measured elsewhere, e.g. on validation) scored
  like the detection score; ``baseline_cov_*`` = constant standard deviations of x/y, z and yaw (e.g. the
  residual spread on training scenes) scored like the published covariance.
* ``occupancy_iou`` / ``occupancy_ece``: on visible cells, P(occupied) = (r + 1) / (r + s + 2) > 0.5;
* ``curvature_mae`` beside ``curvature_mae_zero`` (the trivial baseline "straight road"), 1/m.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from perception_nodes.boxes import Box3D
from perception_nodes.eval.generated_difficulty import with_difficulty, with_virtual_bbox2d
from perception_nodes.evidential.dirichlet import dirichlet_expected_probability
from perception_nodes.models.decode import Detections, decode_batch

if TYPE_CHECKING:
    from perception_nodes.learning.branches.lidar_detection import LidarDetectionBranch
    from perception_nodes.pipeline.box_refine import BoxRefinement
    from perception_nodes.models.calibration import DetectionCalibration
    from perception_nodes.models.lidar_detection import LidarDetectionOutput


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles wrapped to (-pi, pi]."""
    return np.pi - np.mod(np.pi - np.asarray(a, np.float64), 2.0 * np.pi)


@dataclass(frozen=True)
class TrivialBaselines:
    """What a model must beat: a constant score and constant standard deviations (module doc)."""

    #: constant detection score (e.g. the share of right detections on validation)
    score: float = float("nan")
    #: constant standard deviations of the centre error (m, x and y alike), z (m) and yaw (rad)
    sigma_xy: float = float("nan")
    sigma_z: float = float("nan")
    sigma_yaw: float = float("nan")
    source: str = ""


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y.astype(np.float64)) ** 2)) if p.size else float("nan")


def _gauss_nll(err: np.ndarray, var: np.ndarray) -> float:
    if err.size == 0:
        return float("nan")
    v = np.maximum(var, 1e-12)
    return float(np.mean(0.5 * np.log(2.0 * np.pi * v) + 0.5 * err * err / v))


def _covered(err: np.ndarray, var: np.ndarray, z: float) -> float:
    if err.size == 0:
        return float("nan")
    return float(np.mean(err * err <= z * z * var))

__all__ = ["DetectionAccumulator", "TrivialBaselines", "detection_validation_metrics", "gt_boxes", "wrap_angle"]


def gt_boxes(boxes: np.ndarray, classes: Sequence[str], occlusion: np.ndarray | None = None) -> list[Box3D]:
    """``[M, 8]`` (x, y, z, l, w, h, yaw, class index) rows as :class:`Box3D` with the class names, and each
    row's KITTI occlusion state where ``occlusion`` (``[M]``) is given (-1: unknown)."""
    a = np.asarray(boxes, np.float64).reshape(-1, 8)
    occ = np.full(len(a), -1, np.int64) if occlusion is None else np.asarray(occlusion, np.int64).reshape(-1)
    if len(occ) != len(a):
        raise ValueError(f"{len(occ)} occlusion states for {len(a)} boxes")
    return [Box3D(label=classes[int(r[7])], center=(r[0], r[1], r[2]), size=(r[3], r[4], r[5]), yaw=float(r[6]),
                  occlusion=int(o)) for r, o in zip(a, occ, strict=True)]


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


#: "the branch's ``eval.box_head``" (a sentinel: every string names a folder)
DEFAULT_HEAD = object()


class DetectionAccumulator:
    """Collects everything the metrics need, batch by batch (see the module docstring)."""

    def __init__(self, branch: "LidarDetectionBranch", *, with_occupancy: bool = True,
                 calibration: "DetectionCalibration | None" = None, score_threshold: float | None = None,
                 threshold_on_raw_score: bool = False, refinement: "BoxRefinement | None" = None,
                 box_head: Any = DEFAULT_HEAD) -> None:
        from perception_nodes.eval.detection_eval import DetectionScorer

        self.branch = branch
        #: box refinement of decoded boxes on their scan (default: the branch's ``eval.box_refinement`` switch
        #: with the default parameters); applied where :meth:`decode` is given the points
        self.refinement = refinement if refinement is not None else branch.eval_params.refinement()
        self.refined_boxes = 0
        #: the learned box head run after the refinement (a BoxHead; None = off; default: the branch's
        #: ``eval.box_head``; a string: a weights folder or packaged name, "" = off); none where the refinement is off
        if not self.refinement.enabled:
            self.box_head = None
        elif box_head is DEFAULT_HEAD:
            self.box_head = branch.eval_params.head()
        elif isinstance(box_head, str):
            from perception_nodes.learning.branches.lidar_detection import load_box_head_cached

            self.box_head = load_box_head_cached(box_head) if box_head else None
        else:
            self.box_head = box_head
        self.head_boxes = 0
        self.calibration = calibration
        #: decoding threshold (default: the branch's eval threshold), on the calibrated score
        self.score_threshold = branch.eval_params.score_threshold if score_threshold is None else float(score_threshold)
        #: the threshold gates the uncalibrated score (the boxes an uncalibrated decode keeps: before / after alike)
        self.threshold_on_raw_score = bool(threshold_on_raw_score)
        self.scorer = DetectionScorer()
        #: the same boxes graded by KITTI level (samples with a ``sensor_origin``: generated scenes), see
        #: :mod:`perception_nodes.eval.generated_difficulty`
        self.level_scorer = DetectionScorer()
        #: graded ground-truth boxes by where their occlusion state came from ("truth": the bag, "scan")
        self.occlusion_sources: Counter[str] = Counter()
        self.with_occupancy = with_occupancy
        self._det: list[tuple[float, bool, float, float]] = []  # score, right, vacuity, centre std
        self._label: list[int] = []
        self._alpha: list[np.ndarray] = []  # Dirichlet parameters at each detection's cell
        # matched (right) detections: errors ground truth - decoded (x, y, z, yaw) and published variances
        self._err: list[np.ndarray] = []
        self._var: list[np.ndarray] = []
        self._cent: dict[str, list[np.ndarray]] = {"y": [], "g": [], "n": [], "a": [], "b": []}
        self._z: dict[str, list[np.ndarray]] = {"y": [], "g": [], "n": [], "a": [], "b": []}
        self._cls_p: list[np.ndarray] = []
        self._cls_y: list[np.ndarray] = []
        self._occ_p: list[np.ndarray] = []
        self._occ_y: list[np.ndarray] = []
        self._curv: dict[str, list[np.ndarray]] = {"y": [], "g": [], "n": [], "a": [], "b": []}
        self.frames = 0

    def decode(self, out: "LidarDetectionOutput", points: Sequence[np.ndarray] | None = None,
               sensor_xy: Sequence[Any] | None = None) -> list[Detections]:
        """Boxes of every scan of ``out``; with ``points`` (the scans the network saw, one per scan) refined on
        them as :attr:`refinement` says (the node refines the same way); ``sensor_xy``: each scan's LiDAR
        position in the boxes' frame (default the origin)."""
        from perception_nodes.pipeline.box_refine import refine_detections

        if self.box_head is not None:
            from perception_nodes.models.box_head import apply_box_head
        ep = self.branch.eval_params
        dets = decode_batch(out, self.branch.head_grid, self.branch.net_config.classes,
                            score_threshold=self.score_threshold, max_detections=ep.max_detections,
                            calibration=self.calibration, threshold_on_raw_score=self.threshold_on_raw_score)
        if points is None or not self.refinement.enabled:
            return dets
        if len(points) != len(dets):
            raise ValueError(f"{len(points)} point clouds for {len(dets)} scans")
        refined = []
        origins = [(0.0, 0.0)] * len(dets) if sensor_xy is None else list(sensor_xy)
        for det, pts, xy in zip(dets, points, origins, strict=True):
            det, n = refine_detections(det, pts, self.refinement, sensor_xy=xy)
            self.refined_boxes += n
            if self.box_head is not None:
                det, n = apply_box_head(det, pts, self.box_head, sensor_xy=xy)
                self.head_boxes += n
            refined.append(det)
        return refined

    def add(self, out: "LidarDetectionOutput", samples: Sequence[dict[str, np.ndarray]],
            detections: Sequence[Detections] | None = None) -> list[Detections]:
        """One batch: the network output and its samples (``points``, ``boxes``, optional ``occupied``,
        ``visible``, ``curvature``). Returns the decoded detections."""
        br = self.branch
        classes = br.net_config.classes
        dets = list(detections) if detections is not None else self.decode(
            out, [s["points"] for s in samples],
            [np.asarray(s["sensor_origin"], np.float64)[:2] if "sensor_origin" in s else (0.0, 0.0) for s in samples])
        targets = br.targets_of([s["boxes"] for s in samples])
        alpha = out.class_alpha.float()
        if self.calibration is not None:
            alpha = self.calibration.apply_alpha(alpha)
        probs = dirichlet_expected_probability(alpha, dim=1)
        for b, (s, det, tg) in enumerate(zip(samples, dets, targets, strict=True)):
            self.frames += 1
            gt = gt_boxes(s["boxes"], classes)
            pred = det.to_box3d()
            self.scorer.add_frame(gt, pred, points=s["points"])
            if "sensor_origin" in s:
                origin = np.asarray(s["sensor_origin"], np.float64)
                # the bag's occlusion truth where it has one (generator >= 5), else measured on the scan
                graded = with_difficulty(gt_boxes(s["boxes"], classes, s.get("box_occlusion")), s["points"], origin)
                self.occlusion_sources.update(g.extras["occlusion_source"] for g in graded)
                self.level_scorer.add_frame(graded,
                                            with_virtual_bbox2d(pred, origin), points=s["points"])
            self._match(det, np.asarray(s["boxes"]).reshape(-1, 8))
            if len(tg.indices):
                idx = torch.from_numpy(tg.indices)
                nig = [t[b].flatten(1)[:, idx].float().cpu().numpy() for t in out.box]  # [T, M] each
                for d, (lo, hi) in ((self._cent, (0, 2)), (self._z, (2, 3))):
                    d["y"].append(tg.regression.T[lo:hi].reshape(-1))
                    for key, arr in zip("gnab", nig):
                        d[key].append(arr[lo:hi].reshape(-1))
                pt = probs[b].flatten(1)[:, idx].T  # [M, K + 1]
                if self.calibration is not None and self.calibration.maps_scores:
                    pt = self.calibration.probabilities(alpha[b].flatten(1)[:, idx].T)
                p = pt.cpu().numpy()
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
            cov = det.covariance[i].astype(np.float64)
            self._det.append((float(det.score[i]), right, float(det.vacuity[i]),
                              float(np.sqrt(max(cov[0, 0] + cov[1, 1], 0.0)))))
            self._label.append(int(det.label[i]))
            k1 = det.class_probabilities.shape[1]
            # S = (K + 1) / vacuity, alpha = p S: the Dirichlet at the cell, as decoded
            self._alpha.append(det.class_probabilities[i].astype(np.float64) * k1 / max(float(det.vacuity[i]), 1e-12))
            if right:
                b = boxes[j]
                self._err.append(np.array([b[0] - det.center[i, 0], b[1] - det.center[i, 1], b[2] - det.center[i, 2],
                                           float(wrap_angle(b[6] - det.yaw[i]))], np.float64))
                self._var.append(np.array([cov[0, 0], cov[1, 1], cov[2, 2], cov[5, 5]], np.float64))

    def detection_table(self) -> dict[str, np.ndarray]:
        """Per decoded detection: ``score``, ``right``, ``vacuity``, ``label``, ``alpha`` ``[N, K + 1]``; per
        right one: ``err`` and ``var`` ``[M, 4]`` over (x, y, z, yaw). What calibration is fitted on."""
        d = np.asarray(self._det, np.float64).reshape(-1, 4)
        k1 = len(self.branch.net_config.classes) + 1
        return {"score": d[:, 0], "right": d[:, 1] > 0.5, "vacuity": d[:, 2], "label": np.asarray(self._label, np.int64),
                "alpha": np.asarray(self._alpha, np.float64).reshape(-1, k1),
                "err": np.asarray(self._err, np.float64).reshape(-1, 4),
                "var": np.asarray(self._var, np.float64).reshape(-1, 4)}

    def results(self, baselines: TrivialBaselines | None = None) -> dict[str, float]:
        from perception_nodes.models.calibration import binary_nll, gaussian_z

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
        if self.level_scorer.frames:
            for c, by_level in self.level_scorer.kitti_results().items():  # KITTI AP only (no nuScenes pass)
                for level, r in by_level.items():
                    if level is None:  # no box had the fields (e.g. no ground truth at all)
                        continue
                    out[f"{c}_ap_3d_{level}"] = float(r["3d"].ap)
                    out[f"{c}_ap_bev_{level}"] = float(r["bev"].ap)
                    out[f"{c}_n_gt_{level}"] = float(r["3d"].n_gt)
            out["gt_occlusion_from_truth"] = float(self.occlusion_sources["truth"])
            out["gt_occlusion_from_scan"] = float(self.occlusion_sources["scan"])
        d = np.asarray(self._det, np.float64).reshape(-1, 4)
        right = d[:, 1] > 0.5
        out["detections"] = float(len(d))
        out["precision_centre"] = float(right.mean()) if len(d) else nan
        out["ece_class"] = _ece(d[:, 0], right, ep.ece_bins)
        out["brier_class"] = _brier(d[:, 0], right)
        out["nll_class"] = binary_nll(d[:, 0], right)
        out["mean_score"] = float(d[:, 0].mean()) if len(d) else nan
        pub = d[:, 0] > ep.published_threshold  # what the node publishes (its score_threshold)
        out["detections_published"] = float(pub.sum())
        out["precision_published"] = float(right[pub].mean()) if pub.any() else nan
        out["ece_class_published"] = _ece(d[pub, 0], right[pub], ep.ece_bins)
        out["brier_class_published"] = _brier(d[pub, 0], right[pub])
        if len(d):
            # trivial baselines that need nothing but the boxes: a score of 0 for every box (its ECE is the share
            # right: on a set of mostly wrong low-score boxes it is small too) and the oracle constant at this
            # set's own share right (ECE 0 by construction; its Brier is what a useful score must beat)
            rate = float(right.mean())
            out["baseline_zero_score_ece"] = _ece(np.zeros(len(d)), right, ep.ece_bins)
            out["baseline_own_rate_brier"] = _brier(np.full(len(d), rate), right)
        if baselines is not None and math.isfinite(baselines.score) and len(d):
            const = np.full(len(d), baselines.score)
            out["baseline_score_value"] = float(baselines.score)
            out["baseline_score_ece"] = _ece(const, right, ep.ece_bins)
            out["baseline_score_brier"] = _brier(const, right)
            out["baseline_score_nll"] = binary_nll(const, right)
        z = gaussian_z(ep.coverage_level)
        err = np.asarray(self._err, np.float64).reshape(-1, 4)
        var = np.asarray(self._var, np.float64).reshape(-1, 4)
        exy, vxy = err[:, :2].reshape(-1), var[:, :2].reshape(-1)
        out["matched_detections"] = float(len(err))
        out["coverage_xy"] = _covered(exy, vxy, z)
        chi2_2 = -2.0 * math.log(1.0 - ep.coverage_level)  # chi-square quantile, 2 degrees of freedom
        out["coverage_xy_2d"] = (float(np.mean((err[:, 0] ** 2 / np.maximum(var[:, 0], 1e-12)
                                                 + err[:, 1] ** 2 / np.maximum(var[:, 1], 1e-12)) <= chi2_2))
                                 if len(err) else nan)
        out["coverage_z"] = _covered(err[:, 2], var[:, 2], z)
        out["coverage_yaw"] = _covered(err[:, 3], var[:, 3], z)
        out["nll_xy"] = _gauss_nll(exy, vxy)
        out["centre_error_m"] = float(np.median(np.hypot(err[:, 0], err[:, 1]))) if len(err) else nan
        out["halfwidth_xy_m"] = float(np.median(z * np.sqrt(vxy))) if len(err) else nan
        if baselines is not None and math.isfinite(baselines.sigma_xy) and len(err):
            for key, e, sig in (("xy", exy, baselines.sigma_xy), ("z", err[:, 2], baselines.sigma_z),
                                ("yaw", err[:, 3], baselines.sigma_yaw)):
                out[f"baseline_cov_coverage_{key}"] = _covered(e, np.full(e.shape, sig * sig), z)
            out["baseline_cov_nll_xy"] = _gauss_nll(exy, np.full(exy.shape, baselines.sigma_xy ** 2))
            out["baseline_cov_halfwidth_xy_m"] = float(z * baselines.sigma_xy)
        out["auroc_vacuity"] = _auroc(d[right, 2], d[~right, 2])
        out["auroc_centre_std"] = _auroc(d[right, 3], d[~right, 3])
        out["auroc_one_minus_score"] = _auroc(1.0 - d[right, 0], 1.0 - d[~right, 0])

        def cat(dd: dict[str, list[np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
            if not dd["y"]:
                return np.zeros(0), [np.zeros(0)] * 4
            return np.concatenate(dd["y"]), [np.concatenate(dd[k]) for k in "gnab"]

        y, nig = cat(self._cent)
        out["coverage_offset_at_gt_cell"] = _coverage(y, nig, ep.coverage_level)
        out["centre_abs_error_cells"] = float(np.mean(np.abs(y - nig[0]))) if y.size else nan
        y, nig = cat(self._z)
        out["coverage_z_at_gt_cell"] = _coverage(y, nig, ep.coverage_level)
        if self._cls_p:
            p = np.concatenate(self._cls_p)
            lab = np.concatenate(self._cls_y)
            top = p.argmax(1)
            out["accuracy_centre_class"] = float((top == lab).mean())
            out["ece_centre_class"] = _ece(p.max(1), top == lab, ep.ece_bins)
            pl = np.clip(p[np.arange(len(p)), lab], 1e-6, 1.0)
            out["nll_centre_class"] = float(-np.mean(np.log(pl)))
            onehot = np.eye(p.shape[1])[lab]
            out["brier_centre_class"] = float(np.mean(np.sum((p - onehot) ** 2, 1)))
        else:
            out["accuracy_centre_class"] = out["ece_centre_class"] = nan
            out["nll_centre_class"] = out["brier_centre_class"] = nan
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
    acc = DetectionAccumulator(branch, box_head=None)  # the head was trained on other weights' boxes
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
