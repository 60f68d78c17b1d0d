"""3D detection metrics: KITTI AP (R40 / R11) and AOS, nuScenes mAP with TP errors and an adapted NDS.

Both take per-frame lists: ``gt[i]`` and ``pred[i]`` are the ground-truth and predicted boxes of frame
``i`` (:class:`~perception_nodes.boxes.Box3D`, prediction confidence in ``Box3D.score``). Matching
never crosses frames.

KITTI (Geiger, Lenz & Urtasun, CVPR 2012; R40 of Simonelli et al., "Disentangling Monocular 3D Object
Detection", ICCV 2019) — the algorithm of the KITTI devkit as re-implemented by OpenPCDet / mmdetection3d
(``kitti_object_eval_python/eval.py``), step for step, so numbers are comparable with published ones:

1. Every box gets a role for the evaluated class. Ground truth: 0 = counted; 1 = ignored ("don't care":
   a neighbour class such as Van for Car, a box too hard for the difficulty level, or one the caller
   flags); -1 = another class (invisible). Detections: 0 = counted, 1 = ignored (2D box lower than the
   level's minimum height, or flagged by the caller), -1 = another class.
2. Threshold pass: each non-(-1) ground-truth box, in list order, takes the highest-scoring unassigned
   non-(-1) detection whose IoU *exceeds* the class threshold (0.7 Car, 0.5 Pedestrian / Cyclist). When
   both are counted it is a true positive and its score is kept.
3. Score thresholds (``get_thresholds``): the kept TP scores in descending order are walked with a
   target recall that starts at 0 and steps by 1/40 after each accepted score; a score is accepted when
   its recall ``(i+1)/n_gt`` is at least as near the target as the next one's, and the *last* TP score is
   always accepted. At most 41 thresholds; threshold k sits near recall k/40.
4. For each threshold t, keep detections with score >= t and match again per ground-truth box: the
   counted detection of largest IoU above the threshold, else the first ignored one. TP = counted GT
   matched by a counted detection; FN = counted GT unmatched; a GT matched by an ignored detection or an
   ignored GT matched by anything is neither; FP = counted detections left unassigned. AOS adds
   ``(1 + cos Δα) / 2`` per TP (α = observation angle).
5. ``precision[k] = TP/(TP+FP)`` at threshold k, then ``precision[k] = max(precision[k:])`` over the 41
   slots (slots beyond the last threshold are 0). AP R40 = mean of slots 1..40 (slot 0, near recall 0, is
   skipped); AP R11 = mean of slots 0, 4, ..., 40. AOS uses ``similarity / (TP+FP)`` the same way.

Why this differs from "precision interpolated at recall 1/40, ..., 1" (what this module computed before,
and about p(max recall)/40 below the devkit): step 3 always accepts the last TP score, which fills the
next recall slot with the precision at the maximum recall even when that recall falls short of the
slot's recall by up to 1/40. Unless the maximum recall happens to sit just at a slot, the devkit so has
one more non-zero slot than the exact interpolation. Conversely, with fewer than 41 counted boxes every
TP gets its own slot, so AP is at most ``(n_gt - 1)/40`` (perfect detections of 3 boxes score 0.05):
devkit AP is only meaningful with well over 40 boxes per class. No counted ground truth: AP is NaN here
(the devkit returns 0).

Not modelled: the devkit's 2D "bbox" metric and its DontCare regions (they only act on that metric; for
BEV and 3D DontCare boxes are another class). IoU: exact rotated BEV / 3D IoU of gravity-centred boxes
(:mod:`.boxes_iou`) rather than the devkit's GPU kernel in camera coordinates.

nuScenes (Caesar et al., "nuScenes: A multimodal dataset for autonomous driving", CVPR 2020, Sec. 4.1)
    Matching by BEV centre distance with thresholds 0.5, 1, 2, 4 m. Precision is resampled at 101
    recall points 0, 0.01, ..., 1 by linear interpolation of the raw (non-monotone) precision/recall
    sequence, zero beyond the highest recall reached; AP is the normalised area of the part above
    ``min_precision = 0.1`` for recall above ``min_recall = 0.1``. TP errors are measured on matches at
    2 m. NDS combines mAP and the TP errors.

Differences from the official nuScenes devkit, on purpose (documented so numbers are read correctly):

* Equal scores: detections keep input order (frame, then list position); the nuScenes devkit visits
  tied detections in reverse index order. Only exact ties are affected.
* nuScenes class ranges (e.g. 50 m for cars), the "no LiDAR/radar points" GT filter and the 500-boxes-
  per-sample cap are not applied here: :mod:`perception_nodes.eval.detection_eval` filters before
  calling. AVE (velocity) and AAE (attribute) errors are omitted — this stack predicts neither — see
  :class:`NuScenesResult` for how NDS is adapted.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from perception_nodes.boxes import Box3D
from perception_nodes.eval.metrics.boxes_iou import boxes_to_array, pairwise_iou
from perception_nodes.eval.metrics.kitti_difficulty import gt_fails_level, pred_below_min_height

__all__ = [
    "APResult",
    "KITTI_IGNORE_LABELS",
    "KITTI_IOU_THRESHOLDS",
    "KittiFrame",
    "NUSCENES_DIST_THRESHOLDS",
    "NuScenesClassResult",
    "NuScenesResult",
    "PRCurve",
    "kitti_ap",
    "kitti_eval_frames",
    "kitti_thresholds",
    "nuscenes_ap_from_pr",
    "nuscenes_map",
    "observation_angle",
    "yaw_difference",
]

#: KITTI's default IoU thresholds per class (the "moderate" leaderboard ones, 3D and BEV alike; the
#: devkit's table for Car, Pedestrian, Cyclist, Van, Person_sitting, Truck), plus the stack's own class
#: names (lower case) with the same values.
KITTI_IOU_THRESHOLDS: dict[str, float] = {
    "Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5, "Van": 0.7, "Person_sitting": 0.5, "Truck": 0.7,
    "car": 0.7, "pedestrian": 0.5, "cyclist": 0.5,
}
#: Ground-truth labels that KITTI treats as "don't care" when evaluating a class (neither TP nor FN,
#: and a detection on one is not an FP): Van for Car, Person_sitting for Pedestrian.
KITTI_IGNORE_LABELS: dict[str, tuple[str, ...]] = {"Car": ("Van",), "Pedestrian": ("Person_sitting",)}
#: nuScenes centre-distance thresholds in metres.
NUSCENES_DIST_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
#: Score-threshold slots of the KITTI devkit (recall 0, 1/40, ..., 1).
KITTI_SAMPLE_POINTS = 41

_NUSC_MIN_RECALL = 0.1
_NUSC_MIN_PRECISION = 0.1
_NUSC_TP_DIST = 2.0
_NUSC_N_RECALL = 101
#: Classes nuScenes scores without orientation error (AOE is NaN for them and skipped in the mean).
_NUSC_NO_ORIENTATION = frozenset({"traffic_cone"})


@dataclass(frozen=True)
class PRCurve:
    """Raw precision/recall at each score threshold, in descending score order (for plotting)."""

    recall: NDArray[np.float64]
    precision: NDArray[np.float64]
    scores: NDArray[np.float64]


@dataclass(frozen=True)
class APResult:
    """KITTI AP and AOS of one class at one difficulty.

    ``precisions`` / ``aos_precisions``: the 41 interpolated slots (``max`` over the slots after);
    ``recalls``: the raw recall at each slot (0 beyond the last threshold); ``ap`` / ``aos``: R40 (or
    R11) means of the slots, NaN when there is no counted ground truth. ``tp``/``fp``/``fn`` are the
    devkit's counts with every detection kept (threshold -inf); ``n_pred`` counts the class's
    detections, ``n_ignored_pred`` those that are neither TP nor FP there.
    """

    ap: float
    precisions: NDArray[np.float64]
    recalls: NDArray[np.float64]
    n_gt: int
    n_pred: int
    tp: int
    fp: int
    pr_curve: PRCurve
    n_ignored_pred: int = 0
    iou_threshold: float = float("nan")
    metric: str = "3d"
    aos: float = float("nan")
    aos_precisions: NDArray[np.float64] | None = None
    fn: int = 0
    n_ignored_gt: int = 0
    difficulty: str | None = None
    thresholds: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))


@dataclass(frozen=True)
class KittiFrame:
    """One frame prepared for the devkit's matching (roles as in the module docstring, step 1).

    ``overlaps[j, i]`` is the IoU of detection j with ground-truth box i; ``gt_alpha`` / ``det_alpha``
    the observation angles (only read for AOS).
    """

    overlaps: NDArray[np.float64]
    scores: NDArray[np.float64]
    ignored_gt: NDArray[np.int8]
    ignored_det: NDArray[np.int8]
    gt_alpha: NDArray[np.float64]
    det_alpha: NDArray[np.float64]


def _check_frames(gt: Sequence[Sequence[Box3D]], pred: Sequence[Sequence[Box3D]]) -> None:
    if len(gt) != len(pred):
        raise ValueError(f"gt has {len(gt)} frames but pred has {len(pred)}; pass one list per frame")


def observation_angle(box: Box3D) -> float:
    """KITTI's observation angle α, up to sign and a constant, from a box in a frame whose origin is the
    sensor (x forward, y left): ``α = -(yaw - atan2(y, x)) - π/2``.

    KITTI defines ``α = rotation_y - atan2(x_cam, z_cam)``; with ``rotation_y = -yaw - π/2``,
    ``x_cam = -y`` and ``z_cam = x`` this is the expression above (what OpenPCDet computes for its
    detections). AOS only uses ``cos(α_gt - α_det)``, so GT and detections are both taken from geometry.
    """
    return -(box.yaw - math.atan2(box.center[1], box.center[0])) - math.pi / 2.0


def _candidates(frame: KittiFrame, min_overlap: float) -> list[list[int]]:
    """Per ground-truth box, the detections (in index order) whose IoU exceeds ``min_overlap``."""
    if frame.overlaps.size == 0:
        return [[] for _ in range(len(frame.ignored_gt))]
    hits = (frame.overlaps > min_overlap) & (frame.ignored_det != -1)[:, None]
    return [np.flatnonzero(hits[:, i]).tolist() for i in range(hits.shape[1])]


def _match(frame: KittiFrame, cands: list[list[int]], thresh: float, compute_fp: bool,
           ) -> tuple[int, int, int, float, list[float], int]:
    """The devkit's per-frame matching (``compute_statistics_jit``) for 3D / BEV overlaps.

    ``cands`` from :func:`_candidates` (detections of another class and IoUs not above the threshold
    never match, so only those are visited, in the devkit's order). Returns (tp, fp, fn, similarity,
    tp_scores, n_ignored_dets): similarity is -1 when tp + fp == 0, as in the devkit (then it is not
    added up); n_ignored_dets counts participating detections that are neither TP nor FP.
    """
    ov = frame.overlaps
    scores = frame.scores.tolist()
    ig_gt = frame.ignored_gt.tolist()
    ig_det = frame.ignored_det.tolist()
    n_det = len(scores)
    assigned = [False] * n_det
    below = [compute_fp and s < thresh for s in scores]
    tp = fp = fn = 0
    sims: list[float] = []
    tp_scores: list[float] = []
    for i, role in enumerate(ig_gt):
        if role == -1:
            continue
        det_idx = -1
        best_score = -math.inf
        max_overlap = 0.0
        took_ignored = False
        for j in cands[i]:
            if assigned[j] or below[j]:
                continue
            if not compute_fp:
                if det_idx < 0 or scores[j] > best_score:
                    det_idx, best_score = j, scores[j]
            elif (ov[j, i] > max_overlap or took_ignored) and ig_det[j] == 0:
                det_idx, max_overlap, took_ignored = j, ov[j, i], False
            elif det_idx < 0 and ig_det[j] == 1:
                det_idx, took_ignored = j, True
        if det_idx < 0:
            if role == 0:
                fn += 1
        elif role == 1 or ig_det[det_idx] == 1:
            assigned[det_idx] = True
        else:
            tp += 1
            tp_scores.append(scores[det_idx])
            sims.append((1.0 + math.cos(float(frame.gt_alpha[i] - frame.det_alpha[det_idx]))) / 2.0)
            assigned[det_idx] = True
    if not compute_fp:
        return tp, 0, fn, -1.0, tp_scores, 0
    fp = sum(1 for j in range(n_det) if not (assigned[j] or ig_det[j] != 0 or below[j]))
    used_ignored = sum(1 for j in range(n_det) if ig_det[j] != -1 and not below[j]) - tp - fp
    similarity = math.fsum(sims) if (tp > 0 or fp > 0) else -1.0
    return tp, fp, fn, similarity, tp_scores, used_ignored


def kitti_thresholds(tp_scores: Sequence[float], n_gt: int,
                     n_sample_pts: int = KITTI_SAMPLE_POINTS) -> list[float]:
    """The devkit's score thresholds (``get_thresholds``): module docstring, step 3.

    Float arithmetic as the devkit's (recall ``(i+1)/n_gt``, target advanced by ``1/(n-1)``), so ties in
    "nearest" fall the same way. Capped at ``n_sample_pts`` slots.
    """
    s = sorted((float(v) for v in tp_scores), reverse=True)
    out: list[float] = []
    current = 0.0
    last = len(s) - 1
    for i, score in enumerate(s):
        l_recall = (i + 1) / n_gt
        r_recall = (i + 2) / n_gt if i < last else l_recall
        if (r_recall - current) < (current - l_recall) and i < last:
            continue
        out.append(score)
        current += 1 / (n_sample_pts - 1.0)
    return out[:n_sample_pts]


def kitti_eval_frames(frames: Sequence[KittiFrame], min_overlap: float) -> dict[str, NDArray | int]:
    """Devkit steps 2-5 over prepared frames: the 41 slots of precision, recall and AOS.

    Returns ``precision``, ``recall``, ``aos`` (interpolated, length 41), ``raw_precision``,
    ``raw_recall``, ``thresholds``, ``n_gt``, and the counts ``tp``/``fp``/``fn``/``n_ignored_pred``
    with every detection kept.
    """
    n_gt = int(sum(int(np.sum(f.ignored_gt == 0)) for f in frames))
    cands = [_candidates(f, min_overlap) for f in frames]
    tp_scores: list[float] = []
    for f, c in zip(frames, cands, strict=True):
        tp_scores += _match(f, c, 0.0, compute_fp=False)[4]
    thresholds = kitti_thresholds(tp_scores, n_gt) if n_gt > 0 else []
    n = KITTI_SAMPLE_POINTS
    pr = np.zeros((len(thresholds), 4))
    for k, t in enumerate(thresholds):
        for f, c in zip(frames, cands, strict=True):
            tp, fp, fn, sim, _, _ = _match(f, c, t, compute_fp=True)
            pr[k, :3] += (tp, fp, fn)
            if sim != -1.0:
                pr[k, 3] += sim
    raw_p, raw_r, raw_a = np.zeros(n), np.zeros(n), np.zeros(n)
    m = len(thresholds)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw_r[:m] = np.where(pr[:, 0] + pr[:, 2] > 0, pr[:, 0] / (pr[:, 0] + pr[:, 2]), 0.0)
        raw_p[:m] = np.where(pr[:, 0] + pr[:, 1] > 0, pr[:, 0] / (pr[:, 0] + pr[:, 1]), 0.0)
        raw_a[:m] = np.where(pr[:, 0] + pr[:, 1] > 0, pr[:, 3] / (pr[:, 0] + pr[:, 1]), 0.0)

    def suffix_max(x: NDArray) -> NDArray:
        return np.maximum.accumulate(x[::-1])[::-1]

    tp = fp = fn = used = 0
    for f, c in zip(frames, cands, strict=True):
        a, b, n_fn, _, _, u = _match(f, c, -math.inf, compute_fp=True)
        tp, fp, fn, used = tp + a, fp + b, fn + n_fn, used + u
    return {"precision": suffix_max(raw_p), "recall": suffix_max(raw_r), "aos": suffix_max(raw_a),
            "raw_precision": raw_p[:m], "raw_recall": raw_r[:m], "thresholds": np.asarray(thresholds),
            "n_gt": n_gt, "tp": tp, "fp": fp, "fn": fn, "n_ignored_pred": used}


def _slots_mean(slots: NDArray, n_recall_points: int) -> float:
    if n_recall_points == 40:
        return float(np.sum(slots[1:KITTI_SAMPLE_POINTS]) / 40.0)
    if n_recall_points == 11:
        return float(np.sum(slots[0:KITTI_SAMPLE_POINTS:4]) / 11.0)
    raise ValueError("n_recall_points must be 40 (R40) or 11 (R11), as in the KITTI devkit")


def kitti_ap(gt: Sequence[Sequence[Box3D]], pred: Sequence[Sequence[Box3D]], label: str, *,
             iou_threshold: float | None = None, metric: Literal["3d", "bev"] = "3d",
             n_recall_points: int = 40, ignore: Sequence[Sequence[bool]] | None = None,
             ignore_labels: Collection[str] | None = None, difficulty: str | None = None,
             ignore_pred: Sequence[Sequence[bool]] | None = None) -> APResult:
    """KITTI AP (R40 by default) and AOS of class ``label``, computed as the KITTI devkit / OpenPCDet do.

    Parameters
    ----------
    gt, pred:
        Per-frame box lists (frame ``i`` of ``gt`` pairs with frame ``i`` of ``pred``). Ground truth
        labelled ``label`` is counted, ``ignore_labels`` ones are ignored; detections labelled ``label``
        are counted; every other box is another class.
    iou_threshold:
        Minimum IoU (strictly exceeded, as in the devkit); defaults to :data:`KITTI_IOU_THRESHOLDS`.
    metric:
        ``"3d"`` (3D IoU) or ``"bev"`` (rotated bird's-eye-view IoU).
    n_recall_points:
        40 (R40, the current leaderboard) or 11 (the original 11-point metric).
    ignore:
        Per-frame flags parallel to ``gt[i]``: True makes a counted box ignored ("don't care"), like a
        box outside the difficulty level — e.g. one filtered out for too few LiDAR points or range.
    ignore_labels:
        Ground-truth labels ignored for this class; defaults to :data:`KITTI_IGNORE_LABELS` (Van for
        Car, Person_sitting for Pedestrian). Pass ``()`` to disable.
    difficulty:
        ``None`` (every box of the class counted) or ``"easy"`` / ``"moderate"`` / ``"hard"``: counted
        boxes that fail the level become ignored (:mod:`.kitti_difficulty`; ground truth of the class
        must then carry ``extras["bbox2d"]`` and an occlusion). Detections with a 2D box lower than the
        level's minimum are ignored — of *any* class, as in the devkit's ``clean_data``.
    ignore_pred:
        Per-frame flags parallel to ``pred[i]``: True makes a detection of the class ignored (neither TP
        nor FP; a counted GT it takes is no FN), e.g. outside the evaluated range.
    """
    _check_frames(gt, pred)
    if iou_threshold is None:
        if label not in KITTI_IOU_THRESHOLDS:
            raise ValueError(f"no default KITTI IoU threshold for {label!r}; pass iou_threshold "
                             "or map the class (perception_nodes.eval.classmap)")
        iou_threshold = KITTI_IOU_THRESHOLDS[label]
    for name, flags in (("ignore", ignore), ("ignore_pred", ignore_pred)):
        if flags is not None and len(flags) != len(gt):
            raise ValueError(f"{name} must have one list of flags per frame")
    if metric not in ("3d", "bev"):
        raise ValueError(f"metric must be '3d' or 'bev', got {metric!r}")
    if n_recall_points not in (11, 40):
        raise ValueError("n_recall_points must be 40 (R40) or 11 (R11), as in the KITTI devkit")
    also_ignored = set(KITTI_IGNORE_LABELS.get(label, ()) if ignore_labels is None else ignore_labels)

    frames: list[KittiFrame] = []
    n_pred = n_ignored_gt = 0
    for i, (gts, preds) in enumerate(zip(gt, pred, strict=True)):
        flags = [False] * len(gts) if ignore is None else [bool(f) for f in ignore[i]]
        if len(flags) != len(gts):
            raise ValueError(f"frame {i}: ignore has {len(flags)} flags for {len(gts)} boxes")
        pflags = [False] * len(preds) if ignore_pred is None else [bool(f) for f in ignore_pred[i]]
        if len(pflags) != len(preds):
            raise ValueError(f"frame {i}: ignore_pred has {len(pflags)} flags for {len(preds)} boxes")
        g_role = []
        for b, flag in zip(gts, flags, strict=True):
            if b.label == label:
                hard = not flag and difficulty is not None and gt_fails_level(b, difficulty)
                g_role.append(1 if (flag or hard) else 0)
            else:
                g_role.append(1 if b.label in also_ignored else -1)
        d_role = []
        for b, flag in zip(preds, pflags, strict=True):
            if difficulty is not None and pred_below_min_height(b, difficulty):
                d_role.append(1)
            elif b.label == label:
                d_role.append(1 if flag else 0)
            else:
                d_role.append(-1)
        # only boxes that take part need overlaps; others get 0 (never matched)
        gi = [k for k, r in enumerate(g_role) if r != -1]
        di = [k for k, r in enumerate(d_role) if r != -1]
        ov = np.zeros((len(preds), len(gts)))
        if gi and di:
            ov[np.ix_(di, gi)] = pairwise_iou([preds[k] for k in di], [gts[k] for k in gi], metric)
        frames.append(KittiFrame(
            overlaps=ov, scores=np.array([b.score for b in preds], dtype=np.float64),
            ignored_gt=np.array(g_role, dtype=np.int8), ignored_det=np.array(d_role, dtype=np.int8),
            gt_alpha=np.array([observation_angle(b) for b in gts]),
            det_alpha=np.array([observation_angle(b) for b in preds])))
        n_pred += sum(1 for b in preds if b.label == label)
        n_ignored_gt += sum(1 for r in g_role if r == 1)

    ev = kitti_eval_frames(frames, float(iou_threshold))
    n_gt = int(ev["n_gt"])
    if n_gt == 0:
        ap = aos = float("nan")
    else:
        ap = _slots_mean(ev["precision"], n_recall_points)
        aos = _slots_mean(ev["aos"], n_recall_points)
    thr = np.asarray(ev["thresholds"], dtype=np.float64)
    return APResult(
        ap=ap, precisions=ev["precision"], recalls=ev["recall"], n_gt=n_gt, n_pred=n_pred,
        tp=int(ev["tp"]), fp=int(ev["fp"]), fn=int(ev["fn"]),
        pr_curve=PRCurve(recall=ev["raw_recall"], precision=ev["raw_precision"], scores=thr),
        n_ignored_pred=int(ev["n_ignored_pred"]), iou_threshold=float(iou_threshold), metric=metric,
        aos=aos, aos_precisions=ev["aos"], n_ignored_gt=n_ignored_gt, difficulty=difficulty, thresholds=thr,
    )


def _greedy_match(sim: NDArray, better_than_threshold: NDArray, gt_ignored: NDArray,
                  order: NDArray, maximise: bool) -> tuple[NDArray, NDArray]:
    """Greedy assignment of detections (rows, visited in ``order``) to ground truth (columns), as
    nuScenes matches: each detection takes the best unmatched GT that passes the threshold (counted GT
    first, then ignored GT, which makes the detection ignored). Returns per detection: status
    (1 TP, 0 FP, -1 ignored) and matched GT index (-1 if none).
    """
    n_det, n_gt = sim.shape
    status = np.zeros(n_det, dtype=np.int8)
    match = np.full(n_det, -1, dtype=np.int64)
    taken = np.zeros(n_gt, dtype=bool)
    worst = -np.inf if maximise else np.inf
    for d in order:
        ok = better_than_threshold[d] & ~taken
        if not np.any(ok):
            continue
        for want_ignored in (False, True):
            cand = ok & (gt_ignored == want_ignored)
            if np.any(cand):
                vals = np.where(cand, sim[d], worst)
                g = int(np.argmax(vals) if maximise else np.argmin(vals))
                taken[g] = True
                match[d] = g
                status[d] = -1 if want_ignored else 1
                break
    return status, match


# --------------------------------------------------------------------------------------------- nuScenes


def _interp_like_numpy(x: NDArray, xp: NDArray, fp: NDArray, right: float | None = None) -> NDArray:
    """Piecewise-linear interpolation over a *non-decreasing* ``xp`` (repeats allowed).

    nuScenes resamples its PR curve with ``numpy.interp`` although recall repeats after every FP. The
    value used (which we make explicit and unit-test): below ``xp[0]`` -> ``fp[0]``; at or between
    knots, j = last index with ``xp[j] <= x`` and the segment runs from knot j (the *last* point at that
    recall, i.e. after the FPs) to knot j + 1 (the first point at the next recall); above ``xp[-1]`` ->
    ``right`` (default ``fp[-1]``).
    """
    x = np.asarray(x, dtype=np.float64)
    xp = np.asarray(xp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    n = xp.size
    j = np.searchsorted(xp, x, side="right") - 1
    out = np.empty_like(x)
    below = j < 0
    above = x > xp[-1]
    at_end = (j == n - 1) & ~above
    mid = ~below & ~above & ~at_end
    out[below] = fp[0]
    out[above] = fp[-1] if right is None else right
    out[at_end] = fp[-1]
    jm = j[mid]
    x0, x1 = xp[jm], xp[jm + 1]
    w = (x[mid] - x0) / (x1 - x0)
    out[mid] = fp[jm] + w * (fp[jm + 1] - fp[jm])
    return out


def nuscenes_ap_from_pr(precision: NDArray, *, min_recall: float = _NUSC_MIN_RECALL,
                        min_precision: float = _NUSC_MIN_PRECISION) -> float:
    """nuScenes AP from precision sampled at the 101 recall points 0, 0.01, ..., 1.

    ``AP = mean_{r > min_recall} max(p(r) - min_precision, 0) / (1 - min_precision)`` — the recall
    point *at* ``min_recall`` is excluded, so with the defaults the mean runs over recall 0.11 .. 1.
    """
    p = np.asarray(precision, dtype=np.float64)
    if p.size != _NUSC_N_RECALL:
        raise ValueError(f"precision must be sampled at {_NUSC_N_RECALL} recall points")
    first = round(100 * min_recall) + 1
    clipped = np.maximum(p[first:] - min_precision, 0.0)
    # min(1, .): (1 - 0.1) / (1 - 0.1) can round to 1 + 4e-16; keep AP within its range for metrics.json
    return min(1.0, float(np.mean(clipped) / (1.0 - min_precision)))


def yaw_difference(a: NDArray | float, b: NDArray | float, period: float = 2 * math.pi) -> NDArray:
    """Smallest absolute yaw difference in radians, for angles defined modulo ``period``.

    ``period = 2π`` gives values in [0, π]; nuScenes uses ``period = π`` for symmetric objects (barrier),
    giving values in [0, π/2].
    """
    d = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) + period / 2) % period
    d = d - period / 2
    d = np.where(d > math.pi, d - 2 * math.pi, d)
    return np.abs(d)


def _aligned_iou(size_a: NDArray, size_b: NDArray) -> NDArray:
    """IoU of two boxes after aligning centre and yaw (nuScenes "scale IoU"): depends on sizes only."""
    inter = np.prod(np.minimum(size_a, size_b), axis=-1)
    union = np.prod(size_a, axis=-1) + np.prod(size_b, axis=-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _cummean(x: NDArray) -> NDArray:
    return np.cumsum(x) / np.arange(1, x.size + 1)


@dataclass(frozen=True)
class NuScenesClassResult:
    """Per-class nuScenes numbers: AP per distance threshold, their mean, and TP errors at 2 m."""

    label: str
    ap_per_threshold: dict[float, float]
    ap: float
    ate: float
    ase: float
    aoe: float
    n_gt: int
    n_pred: int
    #: interpolated precision at recall 0, 0.01, ..., 1 for each threshold (for plotting)
    precision_curves: dict[float, NDArray[np.float64]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class NuScenesResult:
    """nuScenes detection metrics over ``labels``.

    ``map``: mean over classes of (mean over distance thresholds of AP). ``mate``/``mase``/``maoe``:
    class means of the TP errors (translation in m, 1 - aligned IoU, yaw in rad).

    NDS adaptation — the official score is ``NDS = (5·mAP + Σ_{5 TP errors}(1 - min(1, err))) / 10``
    over ATE, ASE, AOE, AVE, AAE. We have no velocity or attributes, so AVE and AAE are omitted:

    * ``nds`` = ``(5·mAP + Σ_{ATE,ASE,AOE}(1 - min(1, err))) / 10`` — the official normalisation with
      the two missing terms contributing 0 (as if their errors were maximal). It is a lower bound of the
      full NDS with maximum 0.8, and is the number to report when comparing against this formula.
    * ``nds_renormalised`` = ``(5·mAP + Σ_{ATE,ASE,AOE}(1 - min(1, err))) / 8`` — the official code's
      rule "divide by mean-AP weight + number of TP metrics" applied to 3 metrics; ranges over [0, 1].

    Neither is comparable to published nuScenes NDS values.
    """

    map: float
    mate: float
    mase: float
    maoe: float
    nds: float
    nds_renormalised: float
    per_class: dict[str, NuScenesClassResult]
    thresholds: tuple[float, ...]

    @property
    def ap(self) -> dict[str, float]:
        return {k: v.ap for k, v in self.per_class.items()}


def _nusc_accumulate(scores: NDArray, is_tp: NDArray, n_gt: int, errors: dict[str, NDArray],
                     ) -> tuple[NDArray, NDArray, dict[str, float]] | None:
    """PR resampling and TP-error averaging of nuScenes for one class and one threshold.

    Returns (precision@101, confidence@101, tp_errors) or None when there is no GT or no TP
    (nuScenes then scores AP 0 and every TP error 1).
    """
    if n_gt == 0 or not np.any(is_tp):
        return None
    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    prec = tp / (tp + fp)
    rec = tp / n_gt
    r_interp = np.linspace(0.0, 1.0, _NUSC_N_RECALL)
    prec_i = _interp_like_numpy(r_interp, rec, prec, right=0.0)
    conf_i = _interp_like_numpy(r_interp, rec, scores, right=0.0)
    tp_conf = scores[is_tp]
    # TP errors: running mean over TPs (score order) looked up at each recall point's confidence,
    # averaged over recall points above min_recall up to the highest recall reached.
    first = round(100 * _NUSC_MIN_RECALL) + 1
    nz = np.nonzero(conf_i)[0]
    last = int(nz[-1]) if nz.size else 0
    out: dict[str, float] = {}
    for key, err in errors.items():
        run = _cummean(err)
        at_conf = _interp_like_numpy(conf_i[::-1], tp_conf[::-1], run[::-1])[::-1]
        out[key] = 1.0 if last < first else float(np.mean(at_conf[first:last + 1]))
    return prec_i, conf_i, out


def nuscenes_map(gt: Sequence[Sequence[Box3D]], pred: Sequence[Sequence[Box3D]], labels: Sequence[str],
                 *, thresholds: Sequence[float] = NUSCENES_DIST_THRESHOLDS,
                 yaw_periods: Mapping[str, float] | None = None) -> NuScenesResult:
    """nuScenes mAP (centre-distance matching), TP errors ATE/ASE/AOE and an adapted NDS.

    For each class and threshold, detections of all frames are visited in descending score (ties keep
    input order); each takes the unmatched same-class GT box of its frame with the smallest BEV centre
    distance, and is a TP if that distance is below the threshold (strict ``<``, as in the devkit).
    ATE = BEV centre distance (m); ASE = 1 - IoU of the two boxes after aligning centres and yaw;
    AOE = smallest yaw difference (rad), modulo ``yaw_periods[label]`` (default 2π, and π for
    "barrier" as nuScenes does; "traffic_cone" gets no AOE, NaN, left out of the class mean). A class
    with no GT or no TP has AP 0 and TP errors 1, like nuScenes — pass only the classes you mean to score.
    """
    _check_frames(gt, pred)
    thresholds = tuple(float(t) for t in thresholds)
    if not labels:
        raise ValueError("labels must not be empty")
    periods = {"barrier": math.pi}
    if yaw_periods:
        periods.update(yaw_periods)

    per_class: dict[str, NuScenesClassResult] = {}
    for label in labels:
        frames = []
        n_gt = n_pred = 0
        for gts, preds in zip(gt, pred, strict=True):
            g = boxes_to_array([b for b in gts if b.label == label])
            dets = [b for b in preds if b.label == label]
            p = boxes_to_array(dets)
            s = np.array([b.score for b in dets], dtype=np.float64)
            dist = np.hypot(p[:, None, 0] - g[None, :, 0], p[:, None, 1] - g[None, :, 1])
            frames.append((g, p, s, dist))
            n_gt += len(g)
            n_pred += len(p)
        all_scores = np.concatenate([f[2] for f in frames]) if frames else np.zeros(0)
        gorder = np.argsort(-all_scores, kind="stable")
        period = periods.get(label, 2 * math.pi)

        aps: dict[float, float] = {}
        curves: dict[float, NDArray] = {}
        tp_err = {"trans": 1.0, "scale": 1.0, "orient": 1.0}
        for thr in (*thresholds, _NUSC_TP_DIST) if _NUSC_TP_DIST not in thresholds else thresholds:
            tp_flags, err_t, err_s, err_o = [], [], [], []
            for g, p, s, dist in frames:
                if len(p) == 0:
                    continue
                order = np.argsort(-s, kind="stable")
                status, match = _greedy_match(dist, dist < thr, np.zeros(len(g), dtype=bool), order,
                                              maximise=False)
                tp_flags.append(status == 1)
                m = np.maximum(match, 0)
                err_t.append(dist[np.arange(len(p)), m] if len(g) else np.zeros(len(p)))
                err_s.append(1.0 - _aligned_iou(p[:, 3:6], g[m, 3:6]) if len(g) else np.zeros(len(p)))
                err_o.append(yaw_difference(p[:, 6], g[m, 6], period) if len(g) else np.zeros(len(p)))
            if tp_flags:
                is_tp = np.concatenate(tp_flags)[gorder]
                errs = {k: np.concatenate(v)[gorder] for k, v in
                        (("trans", err_t), ("scale", err_s), ("orient", err_o))}
                scores = all_scores[gorder]
                errs = {k: v[is_tp] for k, v in errs.items()}
                acc = _nusc_accumulate(scores, is_tp, n_gt, errs)
            else:
                acc = None
            if thr in thresholds:
                if acc is None:
                    curves[thr] = np.zeros(_NUSC_N_RECALL)
                    aps[thr] = 0.0
                else:
                    curves[thr] = acc[0]
                    aps[thr] = nuscenes_ap_from_pr(acc[0])
            if thr == _NUSC_TP_DIST and acc is not None:
                tp_err = acc[2]
        per_class[label] = NuScenesClassResult(
            label=label, ap_per_threshold=aps, ap=float(np.mean(list(aps.values()))),
            ate=tp_err["trans"], ase=tp_err["scale"],
            aoe=float("nan") if label in _NUSC_NO_ORIENTATION else tp_err["orient"], n_gt=n_gt, n_pred=n_pred,
            precision_curves=curves,
        )

    m_ap = float(np.mean([c.ap for c in per_class.values()]))
    mate = float(np.mean([c.ate for c in per_class.values()]))
    mase = float(np.mean([c.ase for c in per_class.values()]))
    aoes = [c.aoe for c in per_class.values() if not math.isnan(c.aoe)]
    maoe = float(np.mean(aoes)) if aoes else float("nan")
    tp_score = sum(1.0 - min(1.0, e) for e in (mate, mase, maoe) if not math.isnan(e))
    return NuScenesResult(
        map=m_ap, mate=mate, mase=mase, maoe=maoe,
        nds=(5.0 * m_ap + tp_score) / 10.0, nds_renormalised=(5.0 * m_ap + tp_score) / 8.0,
        per_class=per_class, thresholds=thresholds,
    )
