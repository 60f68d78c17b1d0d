"""Scoring the graph's outputs against a bag's ground truth (``perception-stack evaluate``; ``replay``
adds the same metrics whenever the bag carries ground truth).

Join. Predictions and ground truth are grouped per stamp as they stream by; a complete prediction frame
(occupancy grid + uncertainty) is matched to the complete ground-truth frame with the *nearest* stamp
within ``match_tolerance_s`` (sensor stamps may jitter; ground truth keeps nominal stamps). Frames left
without a partner after ``horizon_s`` (or at the end) are counted as unmatched, never dropped silently.
Each frame is reduced at once to small count tables (below) and its grids are released, so memory stays
bounded on long bags.

Occupancy (generated bags carry ``/ground_truth/occupancy``, ``…/visibility`` from a fault-free ray cast
and ``…/lidar_fault``; box-labelled real bags such as converted KITTI get boxes-as-occupied and
free-from-an-independent-ground-plane truth, :mod:`perception_nodes.eval.real_truth`). *Every* visible
(scored) cell counts, cells the grid leaves unknown included at their stated probability 0.5 (so they
are never "occupied"). Per region (all, range bands, LiDAR-fault-affected / unaffected): IoU,
precision, recall, Brier score, NLL, ECE (+ reliability diagram), each beside the same score of a
constant predictor at the base rate and, when a second grid is fed as ``baseline_topic`` (e.g. the
geometric grid while a learned one is scored), of that grid; 95% bootstrap intervals over frames.
Uncertainty: AUROC of vacuity (the uncertainty grid) and of the probability's own margin
``1 - |2p - 1|`` for telling wrong from right cells and fault-affected from unaffected cells.

Objects (any bag with ``/ground_truth/objects``): per object within range the share of its footprint
read occupied, and the occupied cells outside every box (false positives where the truth says free).

Detections (when the graph publishes ``perception_interfaces/Detection3DArray`` on
``/perception/objects``): KITTI AP R40 (3D and BEV) and nuScenes-style mAP. For the ``min_points``
ground-truth filter, given ``lidar_to_base`` (the graph's own rig transforms; replay passes them) the
LiDAR scan from the bag (never a pipeline output) is joined to each ground-truth object frame (nearest
stamp within the tolerance), reduced at once to points per box (``extras["num_lidar_pts"]``) and
released; a frame whose scan is missing or cannot be transformed leaves the filter reported as not applied.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.eval import (
    chamfer_distance,
    reliability_diagram,
)
from perception_nodes.eval.metrics.counts import (
    LEVELS,
    NLL_EPS,
    auroc_from_counts,
    bootstrap_frames,
    ece_from_counts,
    scores_from_counts,
)
from perception_nodes.eval.detection_eval import detection_metrics, points_in_boxes

#: version of the metrics.json layout (perception_nodes/eval/metrics.schema.json); bump on any change
SCHEMA_VERSION = "2.1"  # 2.1: detection.kitti_graded (additive)
GT_OCCUPANCY = topics.GT_OCCUPANCY
GT_VISIBILITY = topics.GT_VISIBILITY
GT_FAULT_REGION = topics.GT_FAULT_REGION
DETECTIONS_OUT = "/perception/objects"
GROUND_TRUTH_TOPICS = (topics.GT_OBJECTS, GT_OCCUPANCY, GT_VISIBILITY, GT_FAULT_REGION)
OBJECT_RANGE_M = 40.0
#: a cell reads occupied when P(occupied) > this (an unknown cell, stated 0.5, never does)
THRESHOLD = 0.5
UNKNOWN_P = 50
RANGE_BANDS_M = (0.0, 10.0, 20.0, 30.0, 40.0, math.inf)
MATCH_TOLERANCE_S = 0.05
HORIZON_S = 5.0
BOOTSTRAP_SAMPLES = 500
SCORES = ("iou", "precision", "recall", "brier", "nll", "ece")
#: key in a pending ground-truth frame: LiDAR points per ground-truth box (None: could not count)
_POINT_COUNTS = "~lidar_points_per_box"
#: per ground-truth frame: the boxes graded by KITTI level (generated_difficulty: the bag's occlusion truth, else
#: the scan's rays) and the sensor
_GRADED = "~kitti_level_boxes"


def _band_name(lo: float, hi: float) -> str:
    return f"range_{lo:g}m_up" if math.isinf(hi) else f"range_{lo:g}_{hi:g}m"


REGIONS = ("all", *(_band_name(lo, hi) for lo, hi in zip(RANGE_BANDS_M[:-1], RANGE_BANDS_M[1:], strict=True)),
           "fault_affected", "fault_unaffected")


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


def _geometry(msg: Any) -> tuple[tuple[float, float], float, tuple[int, int]]:
    o = msg.info.origin.position
    return (o.x, o.y), float(msg.info.resolution), (int(msg.info.height), int(msg.info.width))


def footprint_mask(box: Box3D, like: Any, margin: float = 0.0) -> tuple[int, int, np.ndarray] | None:
    """Cells of grid ``like`` that the box's BEV footprint (grown by ``margin``) overlaps."""
    from perception_nodes.scenario.truth import footprint_cells

    origin, res, shape = _geometry(like)
    return footprint_cells(box, origin, res, shape, margin=margin)


def _p_levels(prob: np.ndarray) -> np.ndarray:
    """Grid values as probability levels 0..100, unknown (-1) at its stated 50."""
    return np.where(prob < 0, UNKNOWN_P, np.clip(prob, 0, 100)).astype(np.int64)


def _hist2(label: np.ndarray, level: np.ndarray) -> np.ndarray:
    return np.bincount(label.astype(np.int64) * LEVELS + level, minlength=2 * LEVELS).reshape(2, LEVELS)


def _margin_counts(p_hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the probability margin 1 - |2p - 1| (as 0..100) for right and wrong cells, from ``p_hist``."""
    k = np.arange(LEVELS)
    u = 100 - np.abs(2 * k - 100)
    occ = k > UNKNOWN_P
    right = np.zeros(LEVELS)
    wrong = np.zeros(LEVELS)
    np.add.at(right, u, np.where(occ, p_hist[..., 1, :], p_hist[..., 0, :]).reshape(-1, LEVELS).sum(0))
    np.add.at(wrong, u, np.where(occ, p_hist[..., 0, :], p_hist[..., 1, :]).reshape(-1, LEVELS).sum(0))
    return right, wrong


def _margin_of(p_hist: np.ndarray) -> np.ndarray:
    """All cells' margin counts (right + wrong) of ``p_hist``."""
    r, w = _margin_counts(p_hist)
    return r + w


def base_rate_scores(pos: np.ndarray, neg: np.ndarray, rate: float) -> dict[str, np.ndarray]:
    """Scores of the constant predictor P = ``rate`` on ``pos`` occupied and ``neg`` free cells."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    n = pos + neg
    pc = min(max(rate, NLL_EPS), 1.0 - NLL_EPS)
    with np.errstate(invalid="ignore", divide="ignore"):
        occ = rate > THRESHOLD
        tp, fp, fn = (pos, neg, 0.0 * pos) if occ else (0.0 * pos, 0.0 * neg, pos)
        return {
            "iou": np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan),
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), np.nan),
            "recall": np.where(pos > 0, tp / np.maximum(pos, 1e-300), np.nan),
            "brier": np.where(n > 0, (pos * (1 - rate) ** 2 + neg * rate ** 2) / n, np.nan),
            "nll": np.where(n > 0, -(pos * math.log(pc) + neg * math.log(1 - pc)) / n, np.nan),
            "ece": np.where(n > 0, np.abs(pos / np.maximum(n, 1e-300) - rate), np.nan),
        }


@dataclass
class _ObjectTally:
    share_sum: float = 0.0
    count: int = 0
    half_or_more: int = 0


@dataclass
class Evaluator:
    """Joins and scores frames as they stream; feed it with :meth:`prediction` and :meth:`ground_truth`.

    ``expected_gt``: the per-frame ground-truth topics the bag carries (a ground-truth frame is
    complete once all are in; a box-labelled bag without occupancy truth also waits for the LiDAR
    cloud, from which :mod:`perception_nodes.eval.real_truth` builds its occupancy truth).
    ``real_truth``: build occupancy truth from the boxes and the LiDAR cloud (a ground-truth frame then
    also waits for the cloud); for box-labelled bags without occupancy truth (converted KITTI).
    ``baseline_topic``: a second grid topic scored the same way as the reference ("geometric").
    ``lidar_to_base``: 4x4 from a cloud's ``frame_id`` into the boxes' frame (base_link), e.g. a graph
    node's ``sensor_to_base``. With it (and ground-truth objects) the evaluator also takes the LiDAR scan
    and counts its points per ground-truth box for the detection scorer's ``min_points`` filter.
    """

    expected_gt: tuple[str, ...] = (topics.GT_OBJECTS,)
    seed: int = 0
    match_tolerance_s: float = MATCH_TOLERANCE_S
    horizon_s: float = HORIZON_S
    baseline_topic: str | None = None
    real_truth: bool = False
    bootstrap_samples: int = BOOTSTRAP_SAMPLES
    lidar_to_base: Callable[[str], np.ndarray] | None = None
    frames_scored: int = 0
    unmatched_predictions: int = 0
    unmatched_ground_truth: int = 0
    _pending_pred: dict[int, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    _pending_gt: dict[int, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    _clouds: dict[int, Any] = field(default_factory=dict)  # scans waiting for their ground-truth objects
    point_count_failures: int = 0  # ground-truth object frames whose boxes' points could not be counted
    _newest: int = 0
    _match_offsets_ns: list[int] = field(default_factory=list)
    _frames: list[np.ndarray] = field(default_factory=list)  # per frame: (R, 2, 2, 101) counts, see _score
    _baseline_frames: list[np.ndarray] = field(default_factory=list)
    _unknown: np.ndarray = field(default_factory=lambda: np.zeros(len(REGIONS), dtype=np.int64))
    _truth_source: set[str] = field(default_factory=set)
    _chamfer: list[float] = field(default_factory=list)
    _objects: dict[str, _ObjectTally] = field(default_factory=lambda: defaultdict(_ObjectTally))
    _box_cells: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))  # in boxes, outside, FP
    _fp_frames: int = 0
    _det_gt: list[list[Box3D]] = field(default_factory=list)
    _det_pred: list[list[Box3D]] = field(default_factory=list)
    # the same frames with every box graded by KITTI level (only while every frame had its scan)
    _det_gt_graded: list[list[Box3D]] = field(default_factory=list)
    _det_pred_graded: list[list[Box3D]] = field(default_factory=list)
    _graded_complete: bool = True

    def __post_init__(self) -> None:
        self.expected_gt = tuple(t for t in self.expected_gt if t in GROUND_TRUTH_TOPICS)
        self._needs_cloud = self.real_truth and GT_OCCUPANCY not in self.expected_gt and topics.GT_OBJECTS in self.expected_gt
        self._gt_wait = self.expected_gt + ((topics.LIDAR_POINTS,) if self._needs_cloud else ())

    @property
    def _counting(self) -> bool:
        return self.lidar_to_base is not None and topics.GT_OBJECTS in self.expected_gt

    @property
    def inputs(self) -> tuple[str, ...]:
        """Bag topics to feed to :meth:`ground_truth` (the ground truth, plus the cloud for real-data
        truth or for counting points per box)."""
        if self._counting and topics.LIDAR_POINTS not in self._gt_wait:
            return (*self._gt_wait, topics.LIDAR_POINTS)
        return self._gt_wait

    # -- feeding -------------------------------------------------------------------------------
    def prediction(self, topic: str, msg: Any) -> None:
        wanted = (topics.OCCUPANCY_GRID, topics.OCCUPANCY_UNCERTAINTY, DETECTIONS_OUT, self.baseline_topic)
        if topic in wanted:
            stamp = stamp_to_ns(msg.header.stamp)
            self._pending_pred[stamp][topic] = msg
            self._advance(stamp)

    def ground_truth(self, topic: str, msg: Any) -> None:
        if topic not in self.inputs:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        if topic == topics.LIDAR_POINTS and self._counting:
            self._clouds[stamp] = msg
        if topic in self._gt_wait:
            self._pending_gt[stamp][topic] = msg
        self._advance(stamp)

    def _pred_ready(self, stamp: int) -> bool:
        pred = self._pending_pred.get(stamp, {})
        need = [topics.OCCUPANCY_GRID, topics.OCCUPANCY_UNCERTAINTY] + ([self.baseline_topic] if self.baseline_topic else [])
        return all(t in pred for t in need)

    def _gt_ready(self, stamp: int) -> bool:
        gt = self._pending_gt.get(stamp, {})
        return all(t in gt for t in self._gt_wait) and (not self._counting or _POINT_COUNTS in gt)

    def _count_points(self, *, final: bool) -> None:
        """Give each ground-truth object frame the points per box of its scan (nearest stamp within the
        tolerance, once no nearer scan can still come), then drop that scan and those too old to match."""
        tol = int(round(self.match_tolerance_s * 1e9))
        for g in sorted(self._pending_gt):
            gt = self._pending_gt[g]
            if topics.GT_OBJECTS not in gt or _POINT_COUNTS in gt:
                continue
            if not final and self._newest <= g + tol:
                continue  # as in the join: a nearer scan may still come
            cands = [c for c in self._clouds if abs(c - g) <= tol]
            counts = None
            if cands:
                c = min(cands, key=lambda k: (abs(k - g), k))
                facts = self._scan_facts(self._clouds.pop(c), gt[topics.GT_OBJECTS])
                if facts is not None:
                    counts, gt[_GRADED] = facts
            self.point_count_failures += int(counts is None)
            gt[_POINT_COUNTS] = counts
        limit = math.inf if final else self._newest - 2 * tol  # no unresolved frame within tol of these
        for c in [c for c in self._clouds if c < limit]:
            del self._clouds[c]

    def _scan_facts(self, cloud: Any, objects: Any) -> tuple[list[int], tuple[list[Box3D], np.ndarray]] | None:
        """Points of the scan per ground-truth box, and the boxes graded by KITTI level
        (:func:`~perception_nodes.eval.generated_difficulty.with_difficulty`: the bag's occlusion truth, else this
        scan's rays) with the sensor's position."""
        from perception_nodes.codecs.pointcloud2 import read_xyzi
        from perception_nodes.eval.generated_difficulty import with_difficulty

        assert self.lidar_to_base is not None
        try:
            to_base = np.asarray(self.lidar_to_base(cloud.header.frame_id), dtype=np.float64)
            xyz = np.asarray(read_xyzi(cloud, remove_nonfinite=True)[:, :3], dtype=np.float64)
        except ValueError:  # unknown frame (CalibrationError) or a malformed cloud: counted, not fatal
            return None
        xyz = xyz @ to_base[:3, :3].T + to_base[:3, 3]
        boxes = boxes_from_detections(objects)
        origin = to_base[:3, 3].copy()
        return points_in_boxes(boxes, xyz), (with_difficulty(boxes, xyz, origin), origin)

    def _advance(self, stamp: int, *, final: bool = False) -> None:
        """Match every ready prediction frame whose best partner can no longer change; evict stale ones."""
        self._newest = max(self._newest, stamp)
        if self._counting:
            self._count_points(final=final)
        tol = int(round(self.match_tolerance_s * 1e9))
        for s in sorted(self._pending_pred):
            if not self._pred_ready(s):
                continue
            cands = [g for g in self._pending_gt if abs(g - s) <= tol and self._gt_ready(g)]
            if not cands:
                continue
            # a nearer ground-truth frame may still come until the stream has passed s + tol
            if not final and self._newest <= s + tol:
                continue
            g = min(cands, key=lambda c: (abs(c - s), c))
            pred, gt = self._pending_pred.pop(s), self._pending_gt.pop(g)
            self._match_offsets_ns.append(s - g)
            self._score(pred, gt)
        horizon = int(round(self.horizon_s * 1e9))
        limit = math.inf if final else self._newest - horizon
        for s in [s for s in self._pending_pred if s < limit]:
            self.unmatched_predictions += int(self._pred_ready(s))
            del self._pending_pred[s]
        for g in [g for g in self._pending_gt if g < limit]:
            self.unmatched_ground_truth += int(self._gt_ready(g))
            del self._pending_gt[g]

    def finish(self) -> None:
        """Match what can still be matched and count the rest as unmatched (called by :meth:`results`)."""
        self._advance(self._newest, final=True)

    # -- scoring one frame ---------------------------------------------------------------------
    def _truth(self, occ_msg: Any, gt: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """(occupied, scored, fault-affected or None) on the scored grid, or None without occupancy truth."""
        if GT_OCCUPANCY in gt and GT_VISIBILITY in gt:
            g_occ = resample_like(gt[GT_OCCUPANCY], occ_msg) >= 50
            visible = resample_like(gt[GT_VISIBILITY], occ_msg) >= 50
            fault = resample_like(gt[GT_FAULT_REGION], occ_msg) >= 50 if GT_FAULT_REGION in gt else None
            self._truth_source.add("generated")
            return g_occ, visible, fault
        if self._needs_cloud and topics.LIDAR_POINTS in gt:
            from perception_nodes.codecs.pointcloud2 import read_xyzi
            from perception_nodes.eval.real_truth import real_occupancy_truth

            pts = read_xyzi(gt[topics.LIDAR_POINTS], remove_nonfinite=True)
            boxes = boxes_from_detections(gt[topics.GT_OBJECTS])
            origin, res, shape = _geometry(occ_msg)
            try:
                g_occ, scored = real_occupancy_truth(pts, boxes, origin, res, shape)
            except ValueError:
                return None
            self._truth_source.add("boxes_and_ground_plane")
            return g_occ, scored, None
        return None

    def _region_masks(self, occ_msg: Any, scored: np.ndarray, fault: np.ndarray | None) -> list[np.ndarray]:
        x, y = cell_centres(occ_msg)
        r = np.hypot(x, y)
        masks = [scored]
        for lo, hi in zip(RANGE_BANDS_M[:-1], RANGE_BANDS_M[1:], strict=True):
            masks.append(scored & (r >= lo) & (r < hi))
        if fault is None:
            masks += [np.zeros_like(scored), scored]
        else:
            masks += [scored & fault, scored & ~fault]
        return masks

    def _score(self, pred: dict[str, Any], gt: dict[str, Any]) -> None:
        occ_msg, unc_msg = pred[topics.OCCUPANCY_GRID], pred[topics.OCCUPANCY_UNCERTAINTY]
        prob, vac = grid_array(occ_msg), grid_array(unc_msg)
        level = _p_levels(prob)
        occupied = level > UNKNOWN_P
        vac_level = np.clip(vac, 0, 100).astype(np.int64)
        self.frames_scored += 1
        truth = self._truth(occ_msg, gt)
        if truth is not None:
            g_occ, scored, fault = truth
            masks = self._region_masks(occ_msg, scored, fault)
            wrong = occupied != g_occ
            tables = np.zeros((len(REGIONS), 2, 2, LEVELS), dtype=np.int32)  # [region, p|vacuity, y|wrong, level]
            for i, m in enumerate(masks):
                tables[i, 0] = _hist2(g_occ[m], level[m])
                tables[i, 1] = _hist2(wrong[m], vac_level[m])
                self._unknown[i] += int(np.count_nonzero(m & (prob < 0)))
            self._frames.append(tables)
            if self.baseline_topic:
                b_level = _p_levels(resample_like(pred[self.baseline_topic], occ_msg))
                self._baseline_frames.append(np.stack([_hist2(g_occ[m], b_level[m]) for m in masks]).astype(np.int32))
            x, y = cell_centres(occ_msg)
            a = np.stack([x[occupied], y[occupied], np.zeros(int(occupied.sum()))], 1)
            want = scored & g_occ
            b = np.stack([x[want], y[want], np.zeros(int(want.sum()))], 1)
            if len(a) and len(b):
                self._chamfer.append(chamfer_distance(a[:20000], b[:20000], truncate=5.0).chamfer)
        boxes = boxes_from_detections(gt[topics.GT_OBJECTS]) if topics.GT_OBJECTS in gt else []
        counts = gt.get(_POINT_COUNTS)
        if counts is not None:
            boxes = [replace(b, extras={**b.extras, "num_lidar_pts": n}) for b, n in zip(boxes, counts, strict=True)]
        if topics.GT_OBJECTS in gt:
            self._score_objects(boxes, occupied, occ_msg, None if truth is None else truth[1] & ~truth[0])
        if DETECTIONS_OUT in pred:
            self._det_gt.append(boxes)
            self._det_pred.append(boxes_from_detections(pred[DETECTIONS_OUT]))
            graded = gt.get(_GRADED)
            if graded is None:
                self._graded_complete = False
            elif self._graded_complete:
                from perception_nodes.eval.generated_difficulty import with_virtual_bbox2d

                g_boxes, origin = graded
                self._det_gt_graded.append([replace(b, extras={**b.extras, "num_lidar_pts": n})
                                            for b, n in zip(g_boxes, counts, strict=True)])
                self._det_pred_graded.append(with_virtual_bbox2d(self._det_pred[-1], origin))

    def _score_objects(self, boxes: list[Box3D], occupied: np.ndarray, like: Any, truth_free: np.ndarray | None) -> None:
        """Footprint share per object within range; occupied cells outside every box (and those the truth
        says are free: false positives)."""
        x, y = cell_centres(like)
        in_range = np.hypot(x, y) <= OBJECT_RANGE_M
        in_box = np.zeros(occupied.shape, dtype=bool)
        for box in boxes:
            if math.hypot(*box.center[:2]) > OBJECT_RANGE_M:
                continue
            cells = footprint_mask(box, like)
            if cells is None:
                continue
            r0, c0, hit = cells
            window = occupied[r0:r0 + hit.shape[0], c0:c0 + hit.shape[1]]
            share = float(np.count_nonzero(window & hit)) / max(int(np.count_nonzero(hit)), 1)
            tally = self._objects[box.label]
            tally.share_sum += share
            tally.count += 1
            tally.half_or_more += int(share >= 0.5)
            in_box[r0:r0 + hit.shape[0], c0:c0 + hit.shape[1]] |= hit
        occ = occupied & in_range
        outside = occ & ~in_box
        self._box_cells[0] += int(np.count_nonzero(occ & in_box))
        self._box_cells[1] += int(np.count_nonzero(outside))
        if truth_free is not None:
            self._box_cells[2] += int(np.count_nonzero(outside & truth_free))
            self._fp_frames += 1

    # -- results -------------------------------------------------------------------------------
    def _occupancy_results(self, out_dir: Path | None) -> dict[str, Any]:
        frames = np.stack(self._frames).astype(np.int64)  # (F, R, 2, 2, 101)
        total = frames.sum(0)
        p_all = total[:, 0]  # (R, 2, 101)
        base = p_all[0, 1].sum() / max(p_all[0].sum(), 1)
        scored = scores_from_counts(p_all, threshold=THRESHOLD)
        baseline = base_rate_scores(p_all[:, 1].sum(-1), p_all[:, 0].sum(-1), float(base))
        geo = None
        if self._baseline_frames:
            bframes = np.stack(self._baseline_frames).astype(np.int64)
            geo = scores_from_counts(bframes.sum(0), threshold=THRESHOLD)

        def stat(sums: np.ndarray) -> dict[str, np.ndarray]:
            s = scores_from_counts(sums[:, :, 0], threshold=THRESHOLD)
            return {f"{k}:{i}": s[k][:, i] for k in SCORES for i in range(len(REGIONS))}

        ci = bootstrap_frames(frames, stat, n_boot=self.bootstrap_samples, seed=self.seed)
        regions: dict[str, Any] = {}
        for i, name in enumerate(REGIONS):
            n = int(p_all[i].sum())
            if n == 0:
                continue
            entry: dict[str, Any] = {"cells": n, "unknown_share": float(self._unknown[i] / n),
                                     "occupied_share": float(p_all[i, 1].sum() / n)}
            for k in SCORES:
                lo, hi = ci.get(f"{k}:{i}", (math.nan, math.nan))
                entry[k] = {"value": float(scored[k][i]), "ci95": [lo, hi],
                            "base_rate_baseline": float(baseline[k][i]),
                            "geometric_baseline": None if geo is None else float(geo[k][i])}
            regions[name] = entry
        vac = total[:, 1]  # (R, 2 right|wrong, 101)
        fa, fu = REGIONS.index("fault_affected"), REGIONS.index("fault_unaffected")
        uncertainty = {
            "vacuity": {
                "auroc_wrong_vs_right": auroc_from_counts(vac[0, 0], vac[0, 1]),
                "auroc_fault_affected_vs_unaffected": auroc_from_counts(vac[fu].sum(0), vac[fa].sum(0)),
            },
            "probability_margin": {
                "auroc_wrong_vs_right": auroc_from_counts(*_margin_counts(p_all[0])),
                "auroc_fault_affected_vs_unaffected": auroc_from_counts(_margin_of(p_all[fu]), _margin_of(p_all[fa])),
            },
            "mean_vacuity": {name: float((vac[i].sum(0) * np.arange(LEVELS)).sum() / 100.0 / max(vac[i].sum(), 1))
                             for i, name in enumerate(REGIONS) if vac[i].sum()},
        }
        occ: dict[str, Any] = {
            "truth": sorted(self._truth_source),
            "limits": None,
            "cells": "every scored (visible) cell; unknown outputs count at P = 0.5",
            "threshold": THRESHOLD,
            "base_rate": float(base),
            "regions": regions,
            "uncertainty": uncertainty,
            "chamfer_m2": float(np.mean(self._chamfer)) if self._chamfer else None,
        }
        if "boxes_and_ground_plane" in self._truth_source:
            from perception_nodes.eval.real_truth import LIMITS

            occ["limits"] = LIMITS
        if out_dir is not None:
            ece = ece_from_counts(p_all[0], n_bins=10)
            reliability_diagram(ece, out_dir / "reliability_occupancy.png",
                                "Occupancy P(occupied), every scored cell (unknown at 0.5)")
            occ["reliability_diagram"] = "reliability_occupancy.png"
        return occ

    def results(self, out_dir: Path | None = None) -> dict[str, Any]:
        self.finish()
        offsets = np.abs(np.asarray(self._match_offsets_ns, dtype=np.float64)) / 1e6
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "frames_scored": self.frames_scored,
            "join": {"tolerance_s": self.match_tolerance_s, "unmatched_predictions": self.unmatched_predictions,
                     "unmatched_ground_truth": self.unmatched_ground_truth,
                     "max_offset_ms": float(offsets.max()) if offsets.size else None},
            "occupancy": None, "objects": None, "detection": None,
        }
        if self._frames:
            doc["occupancy"] = self._occupancy_results(out_dir)
        if self._objects or self._box_cells.any():
            per = {k: {"total": v.count, "mean_footprint_occupied": v.share_sum / v.count if v.count else None,
                       "half_or_more": v.half_or_more}
                   for k, v in sorted(self._objects.items())}
            total = sum(v.count for v in self._objects.values())
            inside, outside, fp = (int(v) for v in self._box_cells)
            share = sum(v.share_sum for v in self._objects.values()) / total if total else None
            fp_known = self._fp_frames > 0
            precision = inside / (inside + fp) if fp_known and inside + fp else None
            doc["objects"] = {
                "range_m": OBJECT_RANGE_M, "occupied_threshold": THRESHOLD,
                "mean_footprint_occupied": share,
                "occupied_cells_in_boxes": inside, "occupied_cells_outside_boxes": outside,
                "false_positive_cells": fp if fp_known else None,
                "false_positive_cells_per_frame": fp / self._fp_frames if fp_known else None,
                "box_precision": precision,
                "f1": (2 * share * precision / (share + precision)
                       if share is not None and precision is not None and share + precision > 0 else None),
                "per_class": per,
            }
        if self._det_pred:
            doc["detection"] = detection_metrics(self._det_gt, self._det_pred, out_dir)
            # not for a converted KITTI bag (box-labelled real data): its boxes have KITTI's own levels (lidar-eval
            # scores them from the label files), which a grading from the scan would only approximate
            graded_ok = (self._graded_complete and bool(self._det_gt_graded)
                         and "boxes_and_ground_plane" not in self._truth_source)
            lv = detection_metrics(self._det_gt_graded, self._det_pred_graded, None)["kitti"] if graded_ok else None
            if lv is not None and lv["levels"] != ["all"]:  # "all": nothing was scored to grade
                # the same frames at KITTI's levels (issue 10's goal is at moderate); the headline above stays
                # level "all", which needs no grading
                sources = Counter(b.extras.get("occlusion_source", "scan") for f in self._det_gt_graded for b in f)
                doc["detection"]["kitti_graded"] = {
                    **lv, "source": "generated_difficulty: 2D box height in a virtual camera with KITTI's focal "
                                    "length, occlusion from the bag's truth (generator >= 5) or else the scan's rays, "
                                    "truncation not modelled",
                    # every graded ground-truth box of the bag (all labels, before the class, range and point
                    # filters of the scorer), by where its occlusion state came from
                    "occlusion_source": {"truth": sources.get("truth", 0), "scan": sources.get("scan", 0)}}
            if self._counting:
                doc["detection"]["filters"]["point_counts"] = {
                    "source": f"bag scan {topics.LIDAR_POINTS} in the boxes' frame (graph rig transforms)",
                    "gt_frames_uncounted": self.point_count_failures}
        return _finite(doc)


def _finite(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, np.floating | np.integer):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_metrics(doc: dict[str, Any], out_dir: Path) -> Path:
    """Write ``metrics.json`` after checking it against perception_nodes/eval/metrics.schema.json."""
    from perception_nodes.eval.schema import validate

    validate(doc)
    path = Path(out_dir) / "metrics.json"
    path.write_text(json.dumps(doc, indent=2, allow_nan=False))
    return path


def bag_split(bag: str | Path) -> dict[str, Any]:
    """Which data a score is about: scenario type, LiDAR model, seed and faults of a generated bag (from
    ``/scenario/info``), or ``{"scenario": "recorded"}`` for a bag without it (e.g. converted KITTI)."""
    from perception_nodes.bags import BagReader

    with BagReader(Path(bag)) as reader:
        if topics.SCENARIO_INFO not in reader.topics:
            return {"scenario": "recorded", "lidar": None, "seed": None, "bag": str(bag)}
        for rec in reader.records(topics=[topics.SCENARIO_INFO]):
            from perception_nodes.scenario.faults import Faults

            info = json.loads(rec.msg.data)
            clean = Faults().to_dict()
            faults = {k: v for k, v in info.get("faults", {}).items() if clean.get(k) != v}
            return {"scenario": info.get("scenario"), "lidar": (info.get("lidar") or {}).get("model"),
                    "seed": info.get("seed"), "bag": str(bag), "faults": faults}
    return {"scenario": "recorded", "lidar": None, "seed": None, "bag": str(bag)}
