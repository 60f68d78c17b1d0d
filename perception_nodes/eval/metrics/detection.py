"""3D detection metrics: KITTI AP (R40 / R11) and nuScenes mAP with TP errors and an adapted NDS.

Both take per-frame lists: ``gt[i]`` and ``pred[i]`` are the ground-truth and predicted boxes of frame
``i`` (:class:`~perception_nodes.boxes.Box3D`, prediction confidence in ``Box3D.score``). Matching
never crosses frames.

KITTI (Geiger, Lenz & Urtasun, CVPR 2012; recall sampling of Simonelli et al., "Disentangling
Monocular 3D Object Detection", ICCV 2019)
    A detection is a true positive if its 3D (or BEV) IoU with an unmatched ground-truth box of the same
    class exceeds the class threshold (0.7 Car, 0.5 Pedestrian / Cyclist; the devkit tests
    ``overlap > min_overlap``). AP is the mean of the interpolated precision
    ``p_interp(r) = max_{r' >= r} p(r')`` at the recall points ``{1/40, 2/40, ..., 1}`` (R40; the
    original 11-point metric used ``{0, 0.1, ..., 1}``, which rewards a single confident hit with
    1/11 of AP at recall 0 — Simonelli et al.'s reason for R40).

nuScenes (Caesar et al., "nuScenes: A multimodal dataset for autonomous driving", CVPR 2020, Sec. 4.1)
    Matching by BEV centre distance with thresholds 0.5, 1, 2, 4 m. Precision is resampled at 101
    recall points 0, 0.01, ..., 1 by linear interpolation of the raw (non-monotone) precision/recall
    sequence, zero beyond the highest recall reached; AP is the normalised area of the part above
    ``min_precision = 0.1`` for recall above ``min_recall = 0.1``. TP errors are measured on matches at
    2 m. NDS combines mAP and the TP errors.

Differences from the official devkits, on purpose (documented so numbers are read correctly):

* KITTI matching here is greedy in descending score per frame (each detection takes the unmatched
  ground truth it overlaps most), and the PR curve has one point per detection; precision at recall
  point r is exactly ``max{p_k : r_k >= r}``. The KITTI devkit instead assigns per ground-truth box
  (highest score first for the threshold pass, then the largest-overlap detection) and, for each recall
  sample, takes the TP score whose recall is *nearest* to it (at most one sample per TP). That sampling
  assumes recall steps much finer than 1/40 (thousands of GT boxes); with many boxes the two agree up
  to about 1/(2·n_gt) in recall, with a handful of boxes only the definition used here is meaningful.
* KITTI difficulty levels (box height in pixels, occlusion, truncation) and DontCare regions need 2D
  image boxes; here the caller expresses them with ``ignore`` masks (see :func:`kitti_ap`). An ignored
  box absorbs one detection, like an ignored GT box in the devkit; the devkit's DontCare regions (which
  absorb any number of detections by 2D overlap) are not modelled.
* Equal scores: both functions keep input order (frame, then list position); the nuScenes devkit
  visits tied detections in reverse index order. Only exact ties are affected.
* nuScenes class ranges (e.g. 50 m for cars), the "no LiDAR/radar points" GT filter and the 500-boxes-
  per-sample cap are not applied: filter before calling. AVE (velocity) and AAE (attribute) errors are
  omitted — this stack predicts neither — see :class:`NuScenesResult` for how NDS is adapted.
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

__all__ = [
    "APResult",
    "KITTI_IGNORE_LABELS",
    "KITTI_IOU_THRESHOLDS",
    "NUSCENES_DIST_THRESHOLDS",
    "NuScenesClassResult",
    "NuScenesResult",
    "PRCurve",
    "kitti_ap",
    "nuscenes_ap_from_pr",
    "nuscenes_map",
    "yaw_difference",
]

#: KITTI's default ("moderate" leaderboard) IoU thresholds per class, for both 3D and BEV AP.
KITTI_IOU_THRESHOLDS: dict[str, float] = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
#: Ground-truth labels that KITTI treats as "don't care" when evaluating a class (neither TP nor FN,
#: and a detection on one is not an FP): Van for Car, Person_sitting for Pedestrian.
KITTI_IGNORE_LABELS: dict[str, tuple[str, ...]] = {"Car": ("Van",), "Pedestrian": ("Person_sitting",)}
#: nuScenes centre-distance thresholds in metres.
NUSCENES_DIST_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

_NUSC_MIN_RECALL = 0.1
_NUSC_MIN_PRECISION = 0.1
_NUSC_TP_DIST = 2.0
_NUSC_N_RECALL = 101
#: Classes nuScenes scores without orientation error (AOE is NaN for them and skipped in the mean).
_NUSC_NO_ORIENTATION = frozenset({"traffic_cone"})


@dataclass(frozen=True)
class PRCurve:
    """Raw precision/recall after each detection, in descending score order (for plotting)."""

    recall: NDArray[np.float64]
    precision: NDArray[np.float64]
    scores: NDArray[np.float64]


@dataclass(frozen=True)
class APResult:
    """KITTI-style AP of one class.

    ``precisions[k]`` is the interpolated precision at recall point ``recalls[k]``; ``ap`` their mean
    (NaN when there is no non-ignored ground truth). ``tp``/``fp`` count over all detections of the class;
    ``n_pred`` = ``tp + fp + n_ignored_pred`` where ignored detections were matched to ignored GT.
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


def _check_frames(gt: Sequence[Sequence[Box3D]], pred: Sequence[Sequence[Box3D]]) -> None:
    if len(gt) != len(pred):
        raise ValueError(f"gt has {len(gt)} frames but pred has {len(pred)}; pass one list per frame")


def _recall_points(n: int) -> NDArray[np.float64]:
    if n == 11:  # the original KITTI / PASCAL VOC 11-point metric includes recall 0
        return np.linspace(0.0, 1.0, 11)
    if n < 1:
        raise ValueError("n_recall_points must be >= 1")
    return np.arange(1, n + 1, dtype=np.float64) / n


def _greedy_match(sim: NDArray, better_than_threshold: NDArray, gt_ignored: NDArray,
                  order: NDArray, maximise: bool) -> tuple[NDArray, NDArray]:
    """Greedy assignment of detections (rows, visited in ``order``) to ground truth (columns).

    A detection takes the best unmatched non-ignored GT that passes the threshold; failing that, the
    best unmatched ignored GT (then the detection is ignored). Returns per detection: status
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


def kitti_ap(gt: Sequence[Sequence[Box3D]], pred: Sequence[Sequence[Box3D]], label: str, *,
             iou_threshold: float | None = None, metric: Literal["3d", "bev"] = "3d",
             n_recall_points: int = 40, ignore: Sequence[Sequence[bool]] | None = None,
             ignore_labels: Collection[str] | None = None) -> APResult:
    """KITTI average precision of class ``label`` with R40 recall sampling (Simonelli et al. 2019).

    Parameters
    ----------
    gt, pred:
        Per-frame box lists (frame ``i`` of ``gt`` pairs with frame ``i`` of ``pred``). Only boxes whose
        ``label`` equals ``label`` take part, plus ground truth with an ``ignore_labels`` label.
    iou_threshold:
        Minimum IoU (strictly exceeded, as in the devkit); defaults to :data:`KITTI_IOU_THRESHOLDS`.
    metric:
        ``"3d"`` (3D IoU) or ``"bev"`` (rotated bird's-eye-view IoU).
    n_recall_points:
        40 (R40, the current KITTI leaderboard) or 11 (the original metric: 0, 0.1, ..., 1); any other n
        samples ``1/n, 2/n, ..., 1``.
    ignore:
        Per-frame flags parallel to ``gt[i]`` (over all its boxes, any label): True marks a ground-truth
        box that must be neither a TP nor an FN — e.g. outside the difficulty level being evaluated. A
        detection matched to an ignored box (only if no non-ignored box matches it) is neither TP nor FP;
        an ignored box absorbs at most one detection, like in the KITTI devkit.
    ignore_labels:
        Ground-truth labels treated as ignored boxes for this class; defaults to
        :data:`KITTI_IGNORE_LABELS` (Van for Car, Person_sitting for Pedestrian). Pass ``()`` to disable.

    Detections are visited in descending score (ties keep input order) and greedily matched per frame.
    """
    _check_frames(gt, pred)
    if iou_threshold is None:
        if label not in KITTI_IOU_THRESHOLDS:
            raise ValueError(f"no default KITTI IoU threshold for {label!r}; pass iou_threshold")
        iou_threshold = KITTI_IOU_THRESHOLDS[label]
    if ignore is not None and len(ignore) != len(gt):
        raise ValueError("ignore must have one list of flags per frame")
    if metric not in ("3d", "bev"):
        raise ValueError(f"metric must be '3d' or 'bev', got {metric!r}")
    also_ignored = set(KITTI_IGNORE_LABELS.get(label, ()) if ignore_labels is None else ignore_labels)

    n_gt = 0
    all_scores: list[NDArray] = []
    all_status: list[NDArray] = []
    for i, (gts, preds) in enumerate(zip(gt, pred, strict=True)):
        flags = [False] * len(gts) if ignore is None else [bool(f) for f in ignore[i]]
        if len(flags) != len(gts):
            raise ValueError(f"frame {i}: ignore has {len(flags)} flags for {len(gts)} boxes")
        keep_gt = [(b, f or b.label != label) for b, f in zip(gts, flags, strict=True)
                   if b.label == label or b.label in also_ignored]
        dets = [b for b in preds if b.label == label]
        g_ignored = np.array([f for _, f in keep_gt], dtype=bool)
        n_gt += int(np.sum(~g_ignored))
        if not dets:
            continue
        scores = np.array([b.score for b in dets], dtype=np.float64)
        if keep_gt:
            iou = pairwise_iou(dets, [b for b, _ in keep_gt], metric)
        else:
            iou = np.zeros((len(dets), 0))
        order = np.argsort(-scores, kind="stable")
        status, _ = _greedy_match(iou, iou > iou_threshold, g_ignored, order, maximise=True)
        all_scores.append(scores)
        all_status.append(status)

    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    status = np.concatenate(all_status) if all_status else np.zeros(0, dtype=np.int8)
    n_pred = int(scores.size)
    counted = status >= 0
    scores_c, is_tp = scores[counted], status[counted] == 1
    order = np.argsort(-scores_c, kind="stable")
    scores_c, is_tp = scores_c[order], is_tp[order]
    tp_cum = np.cumsum(is_tp)
    fp_cum = np.cumsum(~is_tp)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
    recall = tp_cum / n_gt if n_gt > 0 else np.full(tp_cum.shape, np.nan)

    r_pts = _recall_points(n_recall_points)
    if n_gt == 0:
        interp = np.full(r_pts.shape, np.nan)
        ap = float("nan")
    else:
        # p_interp(r) = max precision over PR points with recall >= r (0 if recall r is never reached).
        # A suffix maximum over the PR sequence, looked up at the first point reaching r.
        interp = np.zeros(r_pts.shape, dtype=np.float64)
        if precision.size:
            suffix_max = np.maximum.accumulate(precision[::-1])[::-1]
            first = np.searchsorted(recall, r_pts - 1e-12, side="left")  # recall is non-decreasing
            reached = first < recall.size
            interp[reached] = suffix_max[first[reached]]
        ap = float(np.mean(interp))
    return APResult(
        ap=ap, precisions=interp, recalls=r_pts, n_gt=n_gt, n_pred=n_pred,
        tp=int(np.sum(is_tp)), fp=int(np.sum(~is_tp)),
        pr_curve=PRCurve(recall=recall.astype(np.float64), precision=precision.astype(np.float64),
                         scores=scores_c),
        n_ignored_pred=int(np.sum(~counted)), iou_threshold=float(iou_threshold), metric=metric,
    )


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
    return float(np.mean(clipped) / (1.0 - min_precision))


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
