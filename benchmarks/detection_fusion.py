#!/usr/bin/env python3
"""Fused detections (detection_fusion node) vs the LiDAR branch's, against the bag's ground-truth boxes.

For each bag the graph is replayed once (``run_graph``, default params) and both object topics are scored
by ``perception-stack evaluate``'s own scorer (:class:`perception_nodes.evaluation.Evaluator`, one per
side, fed the same ground truth, LiDAR scans and grids: KITTI AP R40 3D/BEV per class with its min-points
filter). Beside it, on the same frames:

* ``coverage_xy_90``: share of matched boxes (each ground-truth box paired with the nearest unused
  prediction of its class within ``--match-m``) whose true BEV centre lies inside the box's 90 % centre
  ellipse (squared Mahalanobis distance under the published x/y covariance <= chi2_2(0.9) = 4.61);
  ``const_sigma_coverage_xy_90`` is the trivial baseline: the same pairs under one isotropic sigma for
  every box (the median published one), i.e. a covariance that knows nothing about the box;
* ``constant_score`` (trivial AP baseline): the LiDAR boxes with every score set to 0.5, so the ranking
  carries no information.

Offline variants re-run the node core on the recorded LiDAR detections (and the bag's odometry), without
the occupancy fusion's weight topic: ``no_memory`` (memory off: a pure pass-through), ``memory`` (the
default memory, decay_per_s 0.3, geometry only), ``memory_no_yaw_noise``, ``memory_class_evidence`` (the
memory also adds class evidence), and, memory off, the LiDAR branch fed twice as two branches (``duplicate_information``,
``duplicate_ci``): what happens when two *correlated* branches are fused with the information rule
(double counting) or with covariance intersection. AP of the offline variants is computed with the same
KITTI scorer without the min-points filter (``ap_direct``, also given for the two replayed sides).

    python benchmarks/detection_fusion.py                     # the demo bag
    python benchmarks/detection_fusion.py --bag /tmp/sector --json out/detection_fusion.json

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import default_backend, stamp_to_ns
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.config import load_params
from perception_nodes.eval.detection_eval import detection_metrics
from perception_nodes.evaluation import DETECTIONS_OUT, GROUND_TRUTH_TOPICS, Evaluator
from perception_nodes.graph.detection_fusion import DetectionFusionNode

FUSED_OBJECTS = "/perception/fusion/objects"
LIDAR_DETECTIONS = "/perception/lidar/detections"
CHI2_2_90 = -2.0 * math.log(0.1)
TOL_NS = 50_000_000


class TeeEvaluator:
    """Two :class:`Evaluator` s fed by one replay: ``lidar`` scores /perception/objects, ``fused`` scores
    the fusion node's objects as if they were on /perception/objects; everything else goes to both."""

    def __init__(self, gt_topics: tuple[str, ...], **options: Any) -> None:
        self.lidar = Evaluator(expected_gt=gt_topics, **options)
        self.fused = Evaluator(expected_gt=gt_topics, **options)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.lidar.inputs

    @property
    def lidar_to_base(self) -> Any:
        return self.lidar.lidar_to_base

    @lidar_to_base.setter
    def lidar_to_base(self, value: Any) -> None:
        self.lidar.lidar_to_base = value
        self.fused.lidar_to_base = value

    def ground_truth(self, topic: str, msg: Any) -> None:
        self.lidar.ground_truth(topic, msg)
        self.fused.ground_truth(topic, msg)

    def prediction(self, topic: str, msg: Any) -> None:
        if topic == FUSED_OBJECTS:
            self.fused.prediction(DETECTIONS_OUT, msg)
        elif topic == DETECTIONS_OUT:
            self.lidar.prediction(topic, msg)
        else:
            self.lidar.prediction(topic, msg)
            self.fused.prediction(topic, msg)


def _headline(det: dict[str, Any] | None) -> dict[str, Any]:
    if not det:
        return {}
    return {"kitti_ap_r40_3d": det["kitti_ap_r40_3d"], "kitti_ap_r40_bev": det["kitti_ap_r40_bev"],
            "nuscenes_map": det.get("nuscenes_map"), "headline_level": det["kitti"]["headline_level"]}


def _join(preds: dict[int, list[Box3D]], gt: dict[int, list[Box3D]]) -> list[tuple[list[Box3D], list[Box3D]]]:
    """(gt, pred) per ground-truth frame, prediction of the nearest stamp within 50 ms (none: empty)."""
    stamps = np.array(sorted(preds), np.int64)
    out = []
    for s, g in sorted(gt.items()):
        if len(stamps) == 0:
            out.append((g, []))
            continue
        i = int(np.argmin(np.abs(stamps - s)))
        out.append((g, preds[int(stamps[i])] if abs(int(stamps[i]) - s) <= TOL_NS else []))
    return out


def coverage(frames: list[tuple[list[Box3D], list[Box3D]]], match_m: float) -> dict[str, Any]:
    """Centre-ellipse coverage of matched boxes and of the constant-sigma baseline (module doc)."""
    d2, sig, err2 = [], [], []
    for gt, pred in frames:
        used: set[int] = set()
        pairs = []
        for gi, g in enumerate(gt):
            for pi, p in enumerate(pred):
                if p.label.lower() == g.label.lower() and p.covariance is not None:
                    dist = math.hypot(p.center[0] - g.center[0], p.center[1] - g.center[1])
                    if dist <= match_m:
                        pairs.append((dist, gi, pi))
        taken_g: set[int] = set()
        for dist, gi, pi in sorted(pairs):
            if gi in taken_g or pi in used:
                continue
            taken_g.add(gi)
            used.add(pi)
            p, g = pred[pi], gt[gi]
            c = np.asarray(p.covariance, np.float64).reshape(6, 6)[:2, :2]
            e = np.array([g.center[0] - p.center[0], g.center[1] - p.center[1]])
            try:
                d2.append(float(e @ np.linalg.solve(c, e)))
            except np.linalg.LinAlgError:
                d2.append(math.inf)
            sig.append(math.sqrt(max(np.trace(c) / 2.0, 0.0)))
            err2.append(float(e @ e))
    if not d2:
        return {"pairs": 0}
    s = float(np.median(sig))
    return {"pairs": len(d2), "coverage_xy_90": float(np.mean(np.asarray(d2) <= CHI2_2_90)),
            "median_sigma_xy_m": s, "median_centre_error_m": float(np.median(np.sqrt(err2))),
            "const_sigma_coverage_xy_90": float(np.mean(np.asarray(err2) / s**2 <= CHI2_2_90)) if s > 0 else None}


def ap_direct(frames: list[tuple[list[Box3D], list[Box3D]]]) -> dict[str, Any]:
    det = detection_metrics([g for g, _ in frames], [p for _, p in frames])
    return {"kitti_ap_r40_3d": det["kitti_ap_r40_3d"], "kitti_ap_r40_bev": det["kitti_ap_r40_bev"]}


def _offline(params: dict[str, Any], vision: list[tuple[int, Any]], odometry: list[Any], *,
             duplicate: bool) -> dict[int, list[Box3D]]:
    """Re-run the node core on recorded LiDAR detections (optionally fed twice, as two branches)."""
    p = copy.deepcopy(params)
    for k in ("enabled", "autostart", "qos"):
        p.pop(k, None)
    p["branches"]["lidar"]["weight_topic"] = ""
    p["branches"]["camera"]["enabled"] = duplicate
    p["branches"]["camera"]["detections_topic"] = "/twin"
    clock = [0]
    node = DetectionFusionNode("detection_fusion", p, backend=default_backend(), clock=lambda: clock[0],
                               steady_clock=lambda: clock[0])
    out: dict[int, list[Box3D]] = {}
    odo = sorted(odometry, key=lambda m: stamp_to_ns(m.header.stamp))
    j = 0
    for stamp, msg in sorted(vision, key=lambda v: v[0]):
        clock[0] = stamp
        while j < len(odo) and stamp_to_ns(odo[j].header.stamp) <= stamp:
            node.handle(p["odometry_topic"], odo[j])
            j += 1
        emits = []
        if duplicate:
            emits += node.handle("/twin", msg)
        emits += node.handle(LIDAR_DETECTIONS, msg)
        for e in emits:
            if e.topic == p["objects_topic"]:
                out[stamp] = boxes_from_detections(e.msg)
    return out


def run_bag(bag: Path | None, match_m: float) -> dict[str, Any]:
    from perception_nodes.replay import run_graph

    if bag is None:
        from perception_nodes.scenario.bag import default_scenario_bag

        bag = default_scenario_bag(progress=False)
    params = load_params()
    with BagReader(bag) as reader:
        gt_topics = tuple(t for t in GROUND_TRUTH_TOPICS if t in reader.topics)
        odometry = [r.msg for r in reader.records(topics={topics.GT_ODOMETRY})]
    tee = TeeEvaluator(gt_topics)
    recorded: dict[str, dict[int, list[Box3D]]] = {"lidar": {}, "fused": {}}
    vision: list[tuple[int, Any]] = []
    weights: list[float] = []

    def on_output(name: str, msg: Any) -> None:
        if name == DETECTIONS_OUT:
            recorded["lidar"][stamp_to_ns(msg.header.stamp)] = boxes_from_detections(msg)
        elif name == FUSED_OBJECTS:
            recorded["fused"][stamp_to_ns(msg.header.stamp)] = boxes_from_detections(msg)
        elif name == LIDAR_DETECTIONS:
            vision.append((stamp_to_ns(msg.header.stamp), msg))
        elif name == "/perception/fusion/trust/lidar_learned":
            weights.append(float(msg.data))

    with tempfile.TemporaryDirectory() as tmp:
        print(f"replaying {bag} ...", file=sys.stderr)
        res = run_graph(Path(bag), params, Path(tmp), progress=False, on_output=on_output, evaluator=tee)
        ev = {"lidar": tee.lidar.results(None), "fused": tee.fused.results(None)}
    gt = {s: boxes_from_detections(m) for s, m in res.ground_truth.items()}
    sides: dict[str, dict[int, list[Box3D]]] = dict(recorded)
    sides["constant_score"] = {s: [Box3D(b.label, b.center, b.size, b.yaw, 0.5, b.covariance) for b in boxes]
                               for s, boxes in recorded["lidar"].items()}
    dparams = params["detection_fusion"]
    print("offline variants ...", file=sys.stderr)
    plain = copy.deepcopy(dparams)
    plain["memory"] = {**plain["memory"], "decay_per_s": 0.0}
    sides["no_memory"] = _offline(plain, vision, odometry, duplicate=False)
    mem = copy.deepcopy(dparams)
    mem["memory"] = {**mem["memory"], "decay_per_s": 0.3}
    sides["memory"] = _offline(mem, vision, odometry, duplicate=False)
    mem_yaw = copy.deepcopy(mem)
    mem_yaw["memory"]["yaw_noise_rad2_per_s"] = 0.0
    sides["memory_no_yaw_noise"] = _offline(mem_yaw, vision, odometry, duplicate=False)
    mem_cls = copy.deepcopy(mem)
    mem_cls["memory"]["class_evidence"] = True
    sides["memory_class_evidence"] = _offline(mem_cls, vision, odometry, duplicate=False)
    sides["duplicate_information"] = _offline(plain, vision, odometry, duplicate=True)
    ci = copy.deepcopy(plain)
    ci["box_rule"] = "covariance_intersection"
    sides["duplicate_ci"] = _offline(ci, vision, odometry, duplicate=True)
    out: dict[str, Any] = {"bag": str(bag), "frames_gt": len(gt), "evaluate": {k: _headline(v.get("detection"))
                                                                              for k, v in ev.items()}}
    for name, preds in sides.items():
        frames = _join(preds, gt)
        out[name] = {"frames": len(preds), "boxes": sum(len(b) for b in preds.values()),
                     "ap_direct": ap_direct(frames), **coverage(frames, match_m)}
    out["lidar_learned_weight"] = {"min": min(weights, default=None), "mean": float(np.mean(weights)) if weights else None}
    lat = res.latency["stages"].get("detection_fusion/processing_time", {})
    out["latency_ms"] = {"p50": lat.get("p50_ms"), "p99": lat.get("p99_ms")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bag", action="append", type=Path, help="bag(s) with ground-truth boxes (default: the demo bag)")
    ap.add_argument("--match-m", type=float, default=2.0, help="BEV centre distance for coverage pairs (m)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    results = [run_bag(b, args.match_m) for b in (args.bag or [None])]
    doc = {"bags": results}
    text = json.dumps(doc, allow_nan=True, default=float)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=True, default=float))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
