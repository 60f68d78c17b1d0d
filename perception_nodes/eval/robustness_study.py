"""The robustness study: generate a bag per (scenario, condition), replay the graph, score what it says.

Used by ``benchmarks/robustness.py`` (the CLI, the report) and ``tests/test_robustness*.py``; the method is
in ``docs/robustness.md``. Per run:

1. ``perception-stack generate`` renders the scenario with the condition's faults
   (:mod:`perception_nodes.eval.robustness_faults`); the windows scored are read back from the bag's
   ``/scenario/info``.
2. The graph is replayed (``perception_nodes.replay.run_graph``, default params, every fusion branch in the
   params file switched on so the camera faults reach the fused grid); the outputs below are recorded
   by frame (frame k = the nominal capture time start + k / 10 Hz, so jittered stamps still find their
   ground truth):
   branch and fused occupancy grids with their vacuity, the fused conflict layer, the fusion weights,
   LiDAR curvature, detections, and, when the merged graph has them, the control node's
   ``/control/command/uncertainty`` and detection fusion's ``/perception/fusion/objects``.
3. :func:`analyse_run` scores the run against the ground truth and against the clean run of the same
   scenario and seed (same scene, same clean sensor noise: the generator draws faults from their own
   random stream), which gives the negatives of every AUROC.

Every source's grid is resampled (nearest cell) onto the ground-truth grid, so all sources are scored
on exactly the same cells.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.eval.detection_eval import DetectionScorer, load_detection_eval_config, points_in_boxes
from perception_nodes.eval.metrics.control import curvature_error
from perception_nodes.eval.robustness_faults import FaultWindow, camera_view_mask, fault_windows
from perception_nodes.eval.robustness_metrics import (
    RegionScorer,
    auroc,
    auroc_from_counts,
    fallback_delay,
    level_counts,
    weight_episode,
)
from perception_nodes.evaluation import resample_like

__all__ = ["GRID_SOURCES", "RunRecord", "Truth", "analyse_run", "read_truth", "record_run", "study_params"]

#: occupancy sources: name -> (occupancy topic, vacuity topic); the single branches first
GRID_SOURCES: dict[str, tuple[str, str]] = {
    "geometric": (topics.OCCUPANCY_GRID, topics.OCCUPANCY_UNCERTAINTY),
    "lidar_learned": ("/perception/lidar/occupancy_grid", "/perception/lidar/occupancy_grid/uncertainty"),
    "stereo": ("/perception/stereo/occupancy_grid", "/perception/stereo/occupancy_grid/uncertainty"),
    "camera_bev": ("/perception/camera/occupancy_grid", "/perception/camera/occupancy_grid/uncertainty"),
    "lidar_fused": ("/perception/occupancy_grid/fused", "/perception/occupancy_grid/fused/uncertainty"),
    "fusion": ("/perception/fusion/occupancy_grid", "/perception/fusion/occupancy_grid/uncertainty"),
}
SINGLE_BRANCHES = ("geometric", "lidar_learned", "stereo", "camera_bev")
FUSED = "fusion"
CONFLICT = "/perception/fusion/occupancy_grid/conflict"
WEIGHTS_PREFIX = "/perception/fusion/weights/"
LIDAR_CURVATURE = "/perception/lidar/curvature"
CONTROL_UNCERTAINTY = "/control/command/uncertainty"
OBJECT_SOURCES = {"lidar": "/perception/objects", "fusion": "/perception/fusion/objects"}
#: which fusion branches a sensor's fault hits (the "failed branch" of the weight episodes)
FAILED_BRANCHES = {"lidar": ("geometric", "lidar_learned"), "camera": ("stereo", "camera_bev", "camera")}
#: the node whose pipeline_latency budget is each fusion branch's share of the latency goal
BRANCH_NODES = {"geometric": "occupancy_grid", "lidar_learned": "lidar_detection",
                "stereo": "stereo_occupancy", "camera_bev": "camera_bev", "camera": "camera_bev"}
#: scoring regions; every one but "all_frames" leaves out the warm-up frames (the graph starting up)
REGIONS = ("all", "window", "affected", "camera_view", "all_frames")


def study_params(config: str | Path | None = None, *, all_branches: bool = True) -> dict[str, Any]:
    """The graph's params (defaults, or ``config`` over them) with every fusion branch switched on."""
    from perception_nodes.config import load_params

    params = copy.deepcopy(load_params(config))
    if all_branches and "fusion" in params:
        for b in params["fusion"].get("branches", {}).values():
            b["enabled"] = True
    return params


@dataclass
class Truth:
    """A bag's ground truth by frame index, and the generator's record of it."""

    info: dict[str, Any]
    start_ns: int
    period_ns: int
    like: Any = None  # one ground-truth grid message: the geometry every source is resampled to
    occupied: dict[int, np.ndarray] = field(default_factory=dict)
    visible: dict[int, np.ndarray] = field(default_factory=dict)
    lidar_fault: dict[int, np.ndarray] = field(default_factory=dict)
    objects: dict[int, list[Any]] = field(default_factory=dict)
    curvature: dict[int, float] = field(default_factory=dict)
    #: LiDAR points per ground-truth box, counted in the *clean* bag's scan of the same frame
    points_per_box: dict[int, list[int]] = field(default_factory=dict)

    def frame(self, stamp_ns: int) -> int:
        return int(round((stamp_ns - self.start_ns) / self.period_ns))

    def time_s(self, k: int) -> float:
        return k * self.period_ns / 1e9

    @property
    def faults(self) -> FaultWindow:
        return fault_windows(self.info.get("faults", {}))


def read_truth(bag: Path, *, count_points: bool = False) -> Truth:
    """Ground truth of a generated bag; ``count_points``: also count the bag's LiDAR points per box
    (do it on the clean bag: a fault must not hide the boxes it makes the branch miss)."""
    with BagReader(bag) as r:
        want = [topics.SCENARIO_INFO, topics.GT_OCCUPANCY, topics.GT_VISIBILITY, topics.GT_FAULT_REGION,
                topics.GT_OBJECTS, topics.GT_CURVATURE] + ([topics.LIDAR_POINTS] if count_points else [])
        recs = [(rec.topic, rec.msg) for rec in r.records(topics=want)]
    info = next((json.loads(m.data) for t, m in recs if t == topics.SCENARIO_INFO), None)
    if info is None:
        raise ValueError(f"{bag}: no {topics.SCENARIO_INFO}; the study needs a bag from perception-stack generate")
    truth = Truth(info, int(info["start_ns"]), int(round(1e9 / float(info["rate_hz"]))))
    clouds: dict[int, Any] = {}
    for t, m in recs:
        if t == topics.SCENARIO_INFO:
            continue
        if t == topics.LIDAR_POINTS:
            clouds[truth.frame(stamp_to_ns(m.header.stamp))] = m
            continue
        k = truth.frame(stamp_to_ns(m.header.stamp))
        if t == topics.GT_OCCUPANCY:
            truth.like = truth.like or m
            truth.occupied[k] = _grid(m) >= 50
        elif t == topics.GT_VISIBILITY:
            truth.visible[k] = _grid(m) >= 50
        elif t == topics.GT_FAULT_REGION:
            truth.lidar_fault[k] = _grid(m) >= 50
        elif t == topics.GT_OBJECTS:
            truth.objects[k] = boxes_from_detections(m)
        elif t == topics.GT_CURVATURE:
            truth.curvature[k] = float(m.data)
    if clouds:
        from perception_nodes.codecs.pointcloud2 import read_xyzi

        # the generator's LiDAR sits above base_link with parallel axes (generate_bag checks it)
        lift = float(info["lidar"]["mount_height_m"])
        for k, m in clouds.items():
            if k in truth.objects:
                xyz = np.asarray(read_xyzi(m, remove_nonfinite=True)[:, :3], dtype=np.float64)
                xyz[:, 2] += lift
                truth.points_per_box[k] = points_in_boxes(truth.objects[k], xyz)
    return truth


def _grid(msg: Any) -> np.ndarray:
    return np.asarray(msg.data, dtype=np.int8).reshape(msg.info.height, msg.info.width)


@dataclass
class RunRecord:
    """What the graph published in one replay, by frame index."""

    grids: dict[str, dict[int, np.ndarray]] = field(default_factory=lambda: defaultdict(dict))  # topic -> k -> int8
    weights: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))  # branch -> k -> w
    curvature: dict[int, tuple[float, float]] = field(default_factory=dict)  # k -> (curvature, variance) at 0 m
    control: dict[int, tuple[float, float, bool]] = field(default_factory=dict)  # k -> (curv, variance, fallback)
    objects: dict[str, dict[int, list[Any]]] = field(default_factory=lambda: defaultdict(dict))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[str, Any] = field(default_factory=dict)
    frames_replayed: int = 0
    skipped_nodes: dict[str, str] = field(default_factory=dict)


def record_run(bag: Path, truth: Truth, params: dict[str, Any], work: Path) -> RunRecord:
    """Replay ``bag`` through the graph and keep what the study scores (grids on the truth's cells)."""
    from perception_nodes.replay import run_graph

    rec = RunRecord()
    grid_topics = {t for pair in GRID_SOURCES.values() for t in pair} | {CONFLICT}

    def on_output(name: str, msg: Any) -> None:
        if name in grid_topics or name.startswith(WEIGHTS_PREFIX) or name in (LIDAR_CURVATURE, CONTROL_UNCERTAINTY) \
                or name in OBJECT_SOURCES.values():
            rec.counts[name] += 1
        else:
            return
        k = truth.frame(stamp_to_ns(msg.header.stamp))
        if name in grid_topics:
            rec.grids[name][k] = resample_like(msg, truth.like)
        elif name.startswith(WEIGHTS_PREFIX):
            rec.weights[name[len(WEIGHTS_PREFIX):]][k] = float(msg.data)
        elif name == LIDAR_CURVATURE:
            h = list(msg.horizon_m)
            i = int(np.argmin(np.abs(np.asarray(h)))) if h else None
            if i is not None:
                rec.curvature[k] = (float(msg.curvature[i]), float(msg.variance[i]))
        elif name == CONTROL_UNCERTAINTY:
            rec.control[k] = (float(msg.curvature), float(msg.curvature_variance), bool(msg.fallback))
        else:
            src = next(s for s, t in OBJECT_SOURCES.items() if t == name)
            rec.objects[src][k] = boxes_from_detections(msg)

    result = run_graph(bag, params, work, progress=False, on_output=on_output)
    rec.latency = result.latency
    rec.frames_replayed = result.input_frames
    rec.skipped_nodes = dict(result.skipped)
    return rec


# -- analysis ---------------------------------------------------------------------------------------

def _r(v: Any, d: int = 4) -> Any:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else round(f, d)


def _view_mask(truth: Truth, cameras: tuple[str, ...]) -> np.ndarray | None:
    info = truth.info
    cams = info.get("cameras") or {}
    g = info["grid"]
    shape = (int(g["height"]), int(g["width"]))
    masks = [camera_view_mask(cams[c], shape, tuple(g["origin"][:2]), float(g["resolution"]))
             for c in cameras if c in cams]
    if not masks:
        return None
    return np.logical_or.reduce(masks)


def affected_cells(truth: Truth, fw: FaultWindow, k: int) -> np.ndarray | None:
    """Cells a fault affects in frame k (None: none; see the module doc of robustness_faults)."""
    if not fw.contains(truth.time_s(k)):
        return None
    if fw.sensor == "lidar":
        return truth.lidar_fault.get(k)
    if fw.sensor == "camera":
        return _view_mask(truth, fw.cameras)
    if fw.sensor == "timing":
        return np.ones_like(truth.visible[k]) if k in truth.visible else None
    return None


def _vacuity(rec: RunRecord, topic: str, k: int, shape: tuple[int, int]) -> np.ndarray:
    """A vacuity grid of frame k; a frame the source did not publish is all vacuous (no evidence)."""
    g = rec.grids.get(topic, {}).get(k)
    return np.full(shape, 100, np.int8) if g is None else g


def analyse_run(rec: RunRecord, truth: Truth, clean: RunRecord | None, *, warmup_frames: int,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score one replay: occupancy per source and region, detection AP, curvature error, AUROC of each
    uncertainty (affected frames / cells of this run vs the same frames / cells of ``clean``), weight
    episodes, the control fallback, latency. ``clean`` None (the clean run itself): no AUROC."""
    fw = truth.faults
    frames = sorted(k for k in truth.occupied if k in truth.visible)
    shape = truth.like.info.height, truth.like.info.width
    present = {name: any(rec.grids.get(t) for t in pair) for name, pair in GRID_SOURCES.items()}
    left_view = _view_mask(truth, ("left",))
    out: dict[str, Any] = {"window_s": None if fw.window is None else [_r(x, 3) if math.isfinite(x) else "inf" for x in fw.window],
                           "sensor": fw.sensor, "fault_kinds": list(fw.kinds), "cameras_hit": list(fw.cameras),
                           "frames": len(frames), "frames_in_window": sum(fw.contains(truth.time_s(k)) for k in frames),
                           "present": {**present,
                                       "control_uncertainty": bool(rec.control),
                                       "fusion_objects": bool(rec.objects.get("fusion")),
                                       "fusion_weights": sorted(rec.weights)},
                           "messages": dict(rec.counts), "skipped_nodes": rec.skipped_nodes}

    # occupancy, every source on the same cells of the ground-truth grid
    scorer = RegionScorer(REGIONS)
    for k in frames:
        vis, occ = truth.visible[k], truth.occupied[k]
        aff = affected_cells(truth, fw, k)
        masks = {"all_frames": vis}
        if k >= warmup_frames:
            masks["all"] = vis
            if fw.contains(truth.time_s(k)):
                masks["window"] = vis
                if aff is not None:
                    masks["affected"] = vis & aff
            if left_view is not None:
                masks["camera_view"] = vis & left_view
        for name, (occ_topic, _) in GRID_SOURCES.items():
            if not present[name]:
                continue
            g = rec.grids.get(occ_topic, {}).get(k)
            scorer.add(name, occ, np.full(shape, -1, np.int8) if g is None else g, masks)
    out["occupancy"] = scorer.results()
    out["occupancy_cells"] = ("ground-truth grid cells the fault-free LiDAR sees (/ground_truth/occupancy/visibility); "
                              "every source resampled onto them, unknown or missing at P = 0.5; frames after the "
                              f"warm-up ({warmup_frames}) except in all_frames")

    # detection AP: the LiDAR branch and, when present, detection fusion; all frames and the window's
    cfg = load_detection_eval_config()
    det: dict[str, Any] = {}
    for src, topic in OBJECT_SOURCES.items():
        if not rec.objects.get(src):
            det[src] = "not present"
            continue
        det[src] = {}
        parts = {"all": rec, "window": rec}
        if clean is not None and clean.objects.get(src):
            parts["clean_run_window"] = clean  # the clean run on the same frames: what the fault cost
        for part, r_ in parts.items():
            scorer_d = DetectionScorer(cfg)
            n = 0
            for k in sorted(truth.objects):
                if part != "all" and not fw.contains(truth.time_s(k)):
                    continue
                gt = truth.objects[k]
                counts = truth.points_per_box.get(k)
                if counts is not None:
                    gt = [dataclasses.replace(b, extras={**b.extras, "num_lidar_pts": c})
                          for b, c in zip(gt, counts, strict=True)]
                scorer_d.add_frame(gt, r_.objects[src].get(k, []))
                n += 1
            if n == 0:
                det[src][part] = None
                continue
            res = scorer_d.results()
            det[src][part] = {"frames": n,
                              "car_ap_r40_bev": _r(res["kitti_ap_r40_bev"].get("car")),
                              "car_ap_r40_3d": _r(res["kitti_ap_r40_3d"].get("car")),
                              "pedestrian_ap_r40_bev": _r(res["kitti_ap_r40_bev"].get("pedestrian")),
                              "nuscenes_map": _r(res["nuscenes_map"]),
                              "n_gt": res["counts"]["gt"], "min_points_applied": res["filters"]["min_points_applied"]}
    out["detection"] = det

    # curvature at the ego against /ground_truth/curvature (+ the straight-road baseline)
    curv: dict[str, Any] = {}
    ks = sorted(truth.curvature)
    gt_c = np.array([truth.curvature[k] for k in ks])
    win = np.array([fw.contains(truth.time_s(k)) for k in ks], dtype=bool)
    sources = {"lidar": rec.curvature, "control": {k: (v[0], v[1]) for k, v in rec.control.items()}}
    for src, series in sources.items():
        if not series:
            curv[src] = "not present"
            continue
        pred = np.array([series[k][0] if k in series else np.nan for k in ks])
        curv[src] = {"all": _curv(pred, gt_c), "window": _curv(pred[win], gt_c[win]) if win.any() else None}
        ref = None if clean is None else (clean.curvature if src == "lidar" else {k: (v[0], v[1]) for k, v in clean.control.items()})
        if ref and win.any():
            pc = np.array([ref[k][0] if k in ref else np.nan for k in ks])
            curv[src]["clean_run_window"] = _curv(pc[win], gt_c[win])
    curv["straight_road_baseline"] = {"all": _curv(np.zeros_like(gt_c), gt_c),
                                      "window": _curv(np.zeros_like(gt_c[win]), gt_c[win]) if win.any() else None}
    out["curvature"] = curv

    # per-frame uncertainty scores (higher = less sure) for frame AUROCs and the timelines
    out["timeline"] = frame_scores(rec, truth, frames, shape)
    if clean is not None and fw.window is not None:
        out["auroc"] = _aurocs(rec, clean, truth, fw, frames, shape, warmup_frames)

    # weights: per branch around the window (the failed branches of the sensor named); an episode is
    # counted from the window's start or the end of the warm-up, whichever is later (the fusion's first
    # frame has a branch at weight 0 before the others have spoken)
    episode = None if fw.window is None else (max(fw.window[0], truth.time_s(warmup_frames)), fw.window[1])
    out["episode_s"] = None if episode is None else [_r(x, 3) if math.isfinite(x) else "inf" for x in episode]
    weights: dict[str, Any] = {}
    for b, series in sorted(rec.weights.items()):
        ks_w = sorted(series)
        t = [truth.time_s(k) for k in ks_w]
        w = [series[k] for k in ks_w]
        # timing faults hit every branch; a clean run none
        failed = b in FAILED_BRANCHES.get(fw.sensor, tuple(rec.weights) if fw.sensor == "timing" else ())
        weights[b] = ({"failed_branch": failed}
                      | (weight_episode(t, w, episode) if episode is not None else
                         {"mean": _r(np.mean(w)), "min_after_warmup": _r(min((x for kk, x in zip(ks_w, w, strict=True) if kk >= warmup_frames), default=math.nan))}))
    out["weights"] = weights

    # control fallback
    if rec.control:
        ks_c = sorted(k for k in rec.control if k >= warmup_frames)
        t = [truth.time_s(k) for k in ks_c]
        f = [rec.control[k][2] for k in ks_c]
        out["fallback"] = (fallback_delay(t, f, episode) if episode is not None else
                           {"fallback_frames": int(sum(f)), "frames": len(f),
                            "fallback_frames_incl_warmup": int(sum(v[2] for v in rec.control.values()))})
    else:
        out["fallback"] = "not present"

    out["latency"] = latency_check(rec, params)
    return out


def _curv(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    e = curvature_error(pred, gt)
    return {k: (_r(v, 5) if isinstance(v, float) else v) for k, v in e.items()}


def frame_scores(rec: RunRecord, truth: Truth, frames: list[int], shape: tuple[int, int]) -> dict[str, Any]:
    """Per frame: mean vacuity of every present source and the fused conflict over the visible cells,
    each fusion weight, the curvature variances and the fallback flag (None where not published)."""
    tl: dict[str, list[Any]] = {"t_s": [_r(truth.time_s(k), 3) for k in frames]}
    for name, (_, u_topic) in GRID_SOURCES.items():
        if rec.grids.get(u_topic):
            tl[f"{name}_vacuity"] = [_r(_share(_vacuity(rec, u_topic, k, shape)[truth.visible[k]], 100)) for k in frames]
    if rec.grids.get(CONFLICT):
        tl["fusion_conflict"] = [_r(_share(rec.grids[CONFLICT][k][truth.visible[k]], 0))
                                 if k in rec.grids[CONFLICT] else None for k in frames]
    for b, series in sorted(rec.weights.items()):
        tl[f"weight:{b}"] = [_r(series.get(k)) for k in frames]
    if rec.curvature:
        tl["lidar_curvature_variance"] = [_r(rec.curvature[k][1], 8) if k in rec.curvature else None for k in frames]
    if rec.control:
        tl["control_curvature_variance"] = [_r(rec.control[k][1], 8) if k in rec.control else None for k in frames]
        tl["control_fallback"] = [rec.control[k][2] if k in rec.control else None for k in frames]
    return tl


def _share(values: np.ndarray, unknown_as: int) -> float:
    """Mean of 0..100 grid values as a share (-1 read as ``unknown_as``); NaN for no cell."""
    v = values.astype(np.float64)
    return float(np.where(v < 0, unknown_as, np.clip(v, 0, 100)).mean() / 100) if v.size else math.nan


def _frame_uncertainties(tl: dict[str, list[Any]]) -> dict[str, list[float]]:
    """The timeline's series as 'higher = less sure' scores (NaN where missing)."""
    out: dict[str, list[float]] = {}
    for key, vals in tl.items():
        if key == "t_s":
            continue
        v = [math.nan if x is None else float(x) for x in vals]
        if key.startswith("weight:"):
            out[key] = [1.0 - x for x in v]  # a lower weight = less trust
        else:
            out[key] = v
    ws = [k for k in tl if k.startswith("weight:")]
    if ws:
        out["min_weight"] = [1.0 - min((float(tl[w][i]) for w in ws if tl[w][i] is not None), default=math.nan)
                             for i in range(len(tl["t_s"]))]
    return out


def _aurocs(rec: RunRecord, clean: RunRecord, truth: Truth, fw: FaultWindow, frames: list[int],
            shape: tuple[int, int], warmup: int) -> dict[str, Any]:
    """AUROC of each uncertainty: affected frames of this run vs every frame of the clean run (both after
    the warm-up), and affected cells of this run vs the same cells of the same frames in the clean run."""
    use = [k for k in frames if k >= warmup]
    pos_i = [i for i, k in enumerate(frames) if k >= warmup and fw.contains(truth.time_s(k))]
    neg_i = [i for i, k in enumerate(frames) if k >= warmup]
    s_run = _frame_uncertainties(frame_scores(rec, truth, frames, shape))
    s_clean = _frame_uncertainties(frame_scores(clean, truth, frames, shape))
    fr: dict[str, Any] = {}
    for key in sorted(set(s_run) | set(s_clean)):
        a = s_run.get(key)
        b = s_clean.get(key)
        if a is None or b is None:
            fr[key] = None
            continue
        fr[key] = _r(auroc([a[i] for i in pos_i], [b[i] for i in neg_i]))
    cells: dict[str, Any] = {}
    layers = {f"{n}_vacuity": u for n, (_, u) in GRID_SOURCES.items() if rec.grids.get(u) or clean.grids.get(u)}
    layers["fusion_conflict"] = CONFLICT
    for key, topic in layers.items():
        pos = np.zeros(101, np.int64)
        neg = np.zeros(101, np.int64)
        for k in use:
            aff = affected_cells(truth, fw, k)
            if aff is None:
                continue
            m = aff & truth.visible[k]
            if topic == CONFLICT:
                a, b = rec.grids.get(CONFLICT, {}).get(k), clean.grids.get(CONFLICT, {}).get(k)
                if a is None or b is None:
                    continue
            else:
                a, b = _vacuity(rec, topic, k, shape), _vacuity(clean, topic, k, shape)
            unknown = 0 if topic == CONFLICT else 100  # -1: no conflict measured / no evidence
            pos += level_counts(a[m], unknown)
            neg += level_counts(b[m], unknown)
        cells[key] = _r(auroc_from_counts(pos, neg))
    return {"frames": fr, "cells": cells, "positive_frames": len(pos_i), "negative_frames": len(neg_i)}


def latency_check(rec: RunRecord, params: dict[str, Any] | None) -> dict[str, Any]:
    """The fusion node's end-to-end latency (scan stamp -> fused grid, replay clock) against the sum of
    its fused branches' pipeline_latency budgets + 20 ms (the issue's goal)."""
    stages = rec.latency.get("stages", {})
    fused = stages.get("fusion/pipeline_latency")
    if not fused:
        return {"fusion": "not present"}
    budgets = {}
    for b in sorted(rec.weights):
        node = BRANCH_NODES.get(b)
        bud = (((params or {}).get(node) or {}).get("latency_budgets_ms") or {}).get("pipeline_latency") if node else None
        source = "camera_bev" if b == "camera" else b
        if bud is not None and rec.counts.get(GRID_SOURCES.get(source, ("",))[0], 0):  # a branch that published
            budgets[b] = float(bud)
    limit = sum(budgets.values()) + 20.0
    return {"fusion_pipeline_p50_ms": _r(fused.get("p50_ms"), 1), "fusion_pipeline_p99_ms": _r(fused.get("p99_ms"), 1),
            "branch_budgets_ms": budgets, "limit_ms": _r(limit, 1),
            "within_p50": bool(fused.get("p50_ms") is not None and fused["p50_ms"] <= limit),
            "within_p99": bool(fused.get("p99_ms") is not None and fused["p99_ms"] <= limit)}


def timed(fn, *a, **kw) -> tuple[Any, float]:
    tic = time.perf_counter()
    return fn(*a, **kw), time.perf_counter() - tic
