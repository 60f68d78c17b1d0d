"""Detection scoring as the field does it: class map, ground-truth filters, KITTI levels, nuScenes.

:class:`DetectionScorer` takes ground truth and detections frame by frame (any dataset labels), and
:meth:`DetectionScorer.results` gives the ``detection`` section of ``metrics.json``:

1. **Class map** (:mod:`perception_nodes.eval.classmap`, ``config/detection_eval.yaml``): dataset labels
   become the stack's classes (car, pedestrian, cyclist), KITTI's neighbour classes become don't-care
   regions, everything else is dropped and counted per label.
2. **Ground-truth filters**: boxes with fewer than ``min_points`` LiDAR points or beyond the class's
   range gate become ignored boxes of their class (KITTI's treatment of boxes outside a difficulty
   level: they absorb one detection and are never a miss); detections beyond the gate are ignored. For
   nuScenes, filtered ground truth and out-of-range detections are removed (nuScenes' own filters).
3. **KITTI** AP R40 (3D and BEV) and AOS, computed as the KITTI devkit / OpenPCDet do
   (:func:`perception_nodes.eval.metrics.detection.kitti_ap`), per class and difficulty level. AOS is
   computed on BEV-IoU matching (the devkit matches AOS on 2D image boxes, which LiDAR detections do not
   have). Levels easy/moderate/hard need every ground-truth box of the classes to carry a 2D box and an
   occlusion (KITTI label files); otherwise — generated scenarios, and bags, whose ground-truth message
   has no 2D box — one level ``"all"`` without difficulty filtering is scored, and ``kitti.levels`` says so
   (:mod:`perception_nodes.eval.generated_difficulty` can grade generated boxes beforehand).
4. **nuScenes** mAP, per-class AP per distance threshold, TP errors ATE/ASE/AOE and NDS (adapted: no
   velocity or attributes, see :class:`~perception_nodes.eval.metrics.detection.NuScenesResult`).

Everything that leaves the scoring is counted in ``counts``, so a number is never better than it looks
because boxes went missing.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from perception_nodes.boxes import Box3D
from perception_nodes.eval.classmap import ClassMap
from perception_nodes.eval.metrics.detection import APResult, kitti_ap, nuscenes_map
from perception_nodes.eval.metrics.kitti_difficulty import DIFFICULTY_LEVELS, has_difficulty_fields

__all__ = [
    "DEFAULTS_PATH",
    "DetectionEvalConfig",
    "DetectionScorer",
    "detection_metrics",
    "load_detection_eval_config",
    "points_in_boxes",
]

DEFAULTS_PATH = Path(__file__).resolve().parents[1] / "config" / "detection_eval.yaml"
_KEYS = {"classes", "class_map", "filters", "kitti"}


@dataclass(frozen=True)
class DetectionEvalConfig:
    """Parsed ``detection_eval.yaml``: see that file for every field's meaning."""

    class_map: ClassMap
    iou: dict[str, float]
    min_points: int | None = 1
    max_range_m: dict[str, float | None] = field(default_factory=dict)
    levels: tuple[str, ...] = DIFFICULTY_LEVELS
    headline_level: str = "moderate"

    @property
    def classes(self) -> tuple[str, ...]:
        return self.class_map.classes


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_detection_eval_config(path: str | Path | None = None) -> DetectionEvalConfig:
    """Defaults from ``config/detection_eval.yaml``, overridden key by key by ``path`` when given."""
    doc = yaml.safe_load(DEFAULTS_PATH.read_text())
    if path is not None:
        user = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(user) - _KEYS
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)} (known: {sorted(_KEYS)})")
        if "classes" in user:  # the class list is replaced, not merged
            doc["classes"] = {}
        doc = _merge(doc, user)
    classes = doc["classes"] or {}
    iou = {c: float((v or {}).get("iou", 0.5)) for c, v in classes.items()}
    cmap = ClassMap.from_dict(classes, doc.get("class_map") or {})
    filters = doc.get("filters") or {}
    rng = filters.get("max_range_m")
    if rng is None or isinstance(rng, (int, float)):
        rng = {c: rng for c in classes}
    kitti = doc.get("kitti") or {}
    levels = tuple(kitti.get("levels") or DIFFICULTY_LEVELS)
    for lv in levels:
        if lv not in DIFFICULTY_LEVELS:
            raise ValueError(f"kitti.levels: {lv!r} is not one of {DIFFICULTY_LEVELS}")
    mp = filters.get("min_points")
    return DetectionEvalConfig(
        class_map=cmap, iou=iou, min_points=None if mp is None else int(mp),
        max_range_m={c: (None if rng.get(c) is None else float(rng[c])) for c in classes},
        levels=levels, headline_level=str(kitti.get("headline_level", "moderate")),
    )


def points_in_boxes(boxes: Sequence[Box3D], points: np.ndarray) -> list[int]:
    """Number of the (N, >=3) points inside each box (same frame as the boxes).

    The points are sorted by x once; each box then tests only the slice within its circumscribed
    circle's x extent (cut again in y), so a frame of a hundred boxes on a 120k-point scan costs one
    sort plus small slices instead of a pass over the scan per box. ``Box3D.contains`` decides on the
    points at their given precision.
    """
    pts = np.asarray(points)
    if not len(boxes):
        return []
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got shape {pts.shape}")
    order = np.argsort(pts[:, 0])
    xyz = pts[order, :3]
    xs = xyz[:, 0]
    out = []
    for b in boxes:
        r = 0.5 * math.hypot(b.size[0], b.size[1]) + 1e-3
        lo = int(np.searchsorted(xs, b.center[0] - r, side="left"))
        hi = int(np.searchsorted(xs, b.center[0] + r, side="right"))
        cand = xyz[lo:hi]
        cand = cand[np.abs(cand[:, 1] - b.center[1]) <= r]
        out.append(int(np.count_nonzero(b.contains(cand))) if len(cand) else 0)
    return out


def _bev_range(b: Box3D) -> float:
    return math.hypot(b.center[0], b.center[1])


@dataclass
class DetectionScorer:
    """Accumulates frames of ground truth and detections; :meth:`results` scores them all."""

    config: DetectionEvalConfig = field(default_factory=load_detection_eval_config)
    _gt: list[list[Box3D]] = field(default_factory=list)
    _gt_ignored: list[list[bool]] = field(default_factory=list)
    _gt_removed: list[list[bool]] = field(default_factory=list)  # dropped for nuScenes
    _pred: list[list[Box3D]] = field(default_factory=list)
    _pred_ignored: list[list[bool]] = field(default_factory=list)
    _counts: dict[str, Counter] = field(default_factory=dict)
    _points_known: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        for k in ("gt", "gt_dont_care", "gt_unmapped", "gt_filtered_min_points", "gt_filtered_range",
                  "pred", "pred_unmapped", "pred_out_of_range"):
            self._counts[k] = Counter()

    def add_frame(self, gt: Sequence[Box3D], pred: Sequence[Box3D], points: np.ndarray | None = None) -> None:
        """One frame. ``points``: the LiDAR scan in the boxes' frame, for the ``min_points`` filter (else
        a box's ``extras["num_lidar_pts"]`` is used when present; else the filter cannot act)."""
        cfg, c = self.config, self._counts
        g = cfg.class_map.map_boxes(gt)
        p = cfg.class_map.map_boxes(pred, predictions=True)
        c["gt_unmapped"].update(g.unmapped)
        c["gt_dont_care"].update(g.dont_care_labels)
        c["pred_unmapped"].update(p.unmapped)
        n_pts: list[int | None]
        if points is not None:
            n_pts = list(points_in_boxes(g.boxes, points))
        else:
            n_pts = [b.extras.get("num_lidar_pts") for b in g.boxes]
        self._points_known.append(all(n is not None for n in n_pts))
        ignored, removed = [], []
        for b, dc, n in zip(g.boxes, g.dont_care, n_pts, strict=True):
            few = not dc and cfg.min_points is not None and n is not None and n < cfg.min_points
            gate = cfg.max_range_m.get(b.label)
            far = not dc and gate is not None and _bev_range(b) > gate
            if few:
                c["gt_filtered_min_points"][b.label] += 1
            elif far:
                c["gt_filtered_range"][b.label] += 1
            elif not dc:
                c["gt"][b.label] += 1
            ignored.append(dc or few or far)
            removed.append(dc or few or far)
        p_ignored = []
        for b in p.boxes:
            gate = cfg.max_range_m.get(b.label)
            far = gate is not None and _bev_range(b) > gate
            c["pred_out_of_range" if far else "pred"][b.label] += 1
            p_ignored.append(far)
        self._gt.append(g.boxes)
        self._gt_ignored.append(ignored)
        self._gt_removed.append(removed)
        self._pred.append(p.boxes)
        self._pred_ignored.append(p_ignored)

    @property
    def frames(self) -> int:
        return len(self._gt)

    def _levels(self) -> tuple[str | None, ...]:
        scored = [b for frame, ign in zip(self._gt, self._gt_ignored, strict=True)
                  for b, i in zip(frame, ign, strict=True) if not i]
        if scored and all(has_difficulty_fields(b) for b in scored):
            return self.config.levels
        return (None,)

    def kitti_results(self) -> dict[str, dict[str | None, dict[str, APResult]]]:
        """``{class: {level: {"3d": APResult, "bev": APResult}}}`` (level None = no difficulty)."""
        out: dict[str, dict[str | None, dict[str, APResult]]] = {}
        levels = self._levels()
        for cls in self.config.classes:
            out[cls] = {}
            for lv in levels:
                out[cls][lv] = {
                    m: kitti_ap(self._gt, self._pred, cls, iou_threshold=self.config.iou[cls], metric=m,
                                ignore=self._gt_ignored, ignore_labels=(), difficulty=lv,
                                ignore_pred=self._pred_ignored)
                    for m in ("3d", "bev")
                }
        return out

    def results(self, out_dir: Path | None = None) -> dict[str, Any]:
        """The ``detection`` section of metrics.json (NaN where undefined; the caller maps it to null)."""
        cfg = self.config
        kitti = self.kitti_results()
        levels = self._levels()
        names = ["all" if lv is None else lv for lv in levels]
        head = None if levels == (None,) else (cfg.headline_level if cfg.headline_level in levels else levels[-1])
        per_class: dict[str, Any] = {}
        for cls, by_level in kitti.items():
            per_class[cls] = {}
            for lv, r in by_level.items():
                r3, rb = r["3d"], r["bev"]
                per_class[cls]["all" if lv is None else lv] = {
                    "ap_r40_3d": r3.ap, "ap_r40_bev": rb.ap, "aos_r40_bev": rb.aos,
                    "ap_r11_3d": _r11(r3), "n_gt": r3.n_gt, "n_ignored_gt": r3.n_ignored_gt,
                    "tp_3d": r3.tp, "fp_3d": r3.fp, "fn_3d": r3.fn,
                }
        # nuScenes: filtered ground truth and out-of-range detections are removed
        gt_n = [[b for b, rm in zip(f, r, strict=True) if not rm] for f, r in zip(self._gt, self._gt_removed, strict=True)]
        pr_n = [[b for b, ig in zip(f, i, strict=True) if not ig] for f, i in zip(self._pred, self._pred_ignored, strict=True)]
        with_gt = [c for c in cfg.classes if self._counts["gt"][c] > 0]
        nus: dict[str, Any] | None = None
        if with_gt:
            n = nuscenes_map(gt_n, pr_n, with_gt)
            nus = {
                "map": n.map, "nds": n.nds, "nds_renormalised": n.nds_renormalised,
                "mate": n.mate, "mase": n.mase, "maoe": n.maoe, "classes": with_gt,
                "per_class": {c: {"ap": r.ap, "ap_per_threshold": {f"{t:g}": v for t, v in r.ap_per_threshold.items()},
                                  "ate": r.ate, "ase": r.ase, "aoe": r.aoe, "n_gt": r.n_gt, "n_pred": r.n_pred}
                              for c, r in n.per_class.items()},
            }
        counts: dict[str, Any] = {"frames": self.frames}
        for k, v in self._counts.items():
            counts[k] = dict(sorted(v.items()))
        doc: dict[str, Any] = {
            "classes": list(cfg.classes),
            "iou_thresholds": dict(cfg.iou),
            "filters": {"min_points": cfg.min_points,
                        "min_points_applied": cfg.min_points is not None and bool(self._points_known)
                        and all(self._points_known),
                        "max_range_m": dict(cfg.max_range_m)},
            "counts": counts,
            "kitti": {"levels": names, "headline_level": head or "all", "per_class": per_class},
            "nuscenes": nus,
            # headline numbers (one per class at the headline level)
            "kitti_ap_r40_3d": {c: per_class[c][head or "all"]["ap_r40_3d"] for c in cfg.classes},
            "kitti_ap_r40_bev": {c: per_class[c][head or "all"]["ap_r40_bev"] for c in cfg.classes},
            "kitti_aos_r40": {c: per_class[c][head or "all"]["aos_r40_bev"] for c in cfg.classes},
            "nuscenes_map": None if nus is None else nus["map"],
            "nuscenes_nds": None if nus is None else nus["nds"],
        }
        if out_dir is not None:
            curves = {c: kitti[c][head]["3d"] for c in cfg.classes}
            plot_pr_curves(curves, Path(out_dir) / "pr_curves.png")
            doc["pr_curves"] = "pr_curves.png"
        return doc


def _r11(r: APResult) -> float:
    return float("nan") if r.n_gt == 0 else float(np.sum(r.precisions[0:41:4]) / 11.0)


def plot_pr_curves(results: dict[str, APResult], path: Path) -> Path:
    """Precision-recall at the devkit's score thresholds per class, with its AP R40 in the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, r in results.items():
        if len(r.pr_curve.recall):
            ax.plot(r.pr_curve.recall, r.pr_curve.precision, marker=".", label=f"{label} AP40 {r.ap:.3f} (n={r.n_gt})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if ax.get_legend_handles_labels()[0]:  # no class with a PR curve: no legend (matplotlib would warn)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def detection_metrics(gt: Sequence[Sequence[Box3D]], pred: Sequence[Sequence[Box3D]],
                      out_dir: Path | None = None, *, config: DetectionEvalConfig | None = None,
                      points: Sequence[np.ndarray | None] | None = None) -> dict[str, Any]:
    """Score per-frame ground truth and detections (dataset labels allowed) in one call."""
    if len(gt) != len(pred):
        raise ValueError(f"gt has {len(gt)} frames but pred has {len(pred)}")
    scorer = DetectionScorer(config or load_detection_eval_config())
    for i, (g, p) in enumerate(zip(gt, pred, strict=True)):
        scorer.add_frame(g, p, None if points is None else points[i])
    return scorer.results(out_dir)
