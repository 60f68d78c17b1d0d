#!/usr/bin/env python3
"""Fused occupancy vs each single branch against the BEV ground truth, and the branch weights.

For each bag: the graph is replayed once (``perception-stack replay``'s ``run_graph``, default params:
geometric occupancy, LiDAR branch, fusion node); the published grids of every source are scored on the
same cells of the generated ground truth (``/ground_truth/occupancy``, visible cells by the fault-free
``/ground_truth/occupancy/visibility``, as ``perception-stack evaluate``: unknown cells count at P = 0.5),
over all visible cells and over the cells an injected LiDAR fault affects (``.../lidar_fault``), and apart
over the cells no fault-free beam reaches (``not_visible``: a grid with learned fill-in calls them known).
Each region also carries two trivial baselines on the same cells: ``all_free_brier`` (P = 0) and
``base_rate_brier`` (the constant P = occupied share, ECE 0). Sources:

* ``geometric``     /perception/occupancy_grid (the inverse sensor model)
* ``learned``       /perception/lidar/occupancy_grid (the LiDAR network's Beta head)
* ``lidar_fused``   /perception/occupancy_grid/fused (lidar_detection's r_geo + w r_learned, w = 1)
* ``fusion``        /perception/fusion/occupancy_grid (the fusion node, default params)
* ``stereo``        /perception/stereo/occupancy_grid (the stereo_occupancy node: SGBM, or learned with
                    ``--config configs/eval/stereo_learned_mode.yaml``)

Then the fusion node core is re-run offline on the recorded branch grids and the bag's odometry with
variants of its parameters (no memory, other decay, no masking of the learned evidence) and with a
synthetic failure: the learned branch replaced by "everything free" for a window (``blind``), to count
frames until its weight is below 0.2 and until it is back above 0.8. The same scorer scores every
variant. Scores: Brier, ECE (10 equal bins), NLL, IoU at P > 0.5 (perception_nodes/eval/metrics/counts.py).

    python benchmarks/fusion_check.py                              # the demo bag
    python benchmarks/fusion_check.py --bag /tmp/sector --bag /tmp/dropout --json out/fusion_check.json
    python benchmarks/fusion_check.py --config configs/eval/stereo_learned_mode.yaml   # params overlay

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.codecs.backend import default_backend, stamp_to_ns
from perception_nodes.config import load_params
from perception_nodes.eval.robustness_metrics import RegionScorer
from perception_nodes.evaluation import grid_array, resample_like
from perception_nodes.graph.fusion import FusionNode

SOURCES = {
    "geometric": topics.OCCUPANCY_GRID,
    "learned": "/perception/lidar/occupancy_grid",
    "lidar_fused": "/perception/occupancy_grid/fused",
    "fusion": "/perception/fusion/occupancy_grid",
    "stereo": "/perception/stereo/occupancy_grid",  # the stereo branch alone (SGBM or learned: --config)
}
BRANCH_TOPICS = (topics.OCCUPANCY_GRID, topics.OCCUPANCY_UNCERTAINTY, "/perception/lidar/occupancy_grid",
                 "/perception/lidar/occupancy_grid/uncertainty")
GT = (topics.GT_OCCUPANCY, topics.GT_VISIBILITY, topics.GT_FAULT_REGION)
#: "all" = every cell the fault-free LiDAR sees (the headline), "fault_affected" = those a LiDAR fault hides,
#: "not_visible" = cells no fault-free beam reaches, which a grid may still call known (learned fill-in)
REGIONS = ("all", "fault_affected", "not_visible")


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def read_truth(bag: Path) -> tuple[dict[int, dict[str, Any]], list[tuple[str, Any]]]:
    truth: dict[int, dict[str, Any]] = defaultdict(dict)
    odometry = []
    with BagReader(bag) as r:
        for rec in r.records(topics=[*GT, topics.GT_ODOMETRY]):
            if rec.topic == topics.GT_ODOMETRY:
                odometry.append((rec.topic, rec.msg))
            else:
                truth[stamp_to_ns(rec.msg.header.stamp)][rec.topic] = rec.msg
    return dict(truth), odometry


class Scorer:
    """Per source and region a (2, 101) count table over visible cells (unknown at P = 0.5); the counting
    and the baselines are perception_nodes.eval.robustness_metrics.RegionScorer's (shared with
    benchmarks/robustness.py)."""

    def __init__(self, truth: dict[int, dict[str, Any]]) -> None:
        self.truth = truth
        self._scorer = RegionScorer(REGIONS)

    def add(self, source: str, msg: Any) -> None:
        gt = self.truth.get(stamp_to_ns(msg.header.stamp))
        if gt is None or topics.GT_OCCUPANCY not in gt or topics.GT_VISIBILITY not in gt:
            return
        occ = resample_like(gt[topics.GT_OCCUPANCY], msg) >= 50
        vis = resample_like(gt[topics.GT_VISIBILITY], msg) >= 50
        fault = (resample_like(gt[topics.GT_FAULT_REGION], msg) >= 50 if topics.GT_FAULT_REGION in gt
                 else np.zeros_like(vis))
        self._scorer.add(source, occ, grid_array(msg), {"all": vis, "fault_affected": vis & fault, "not_visible": ~vis})

    def results(self) -> dict[str, Any]:
        return self._scorer.results()


#: parameter overlay (``--config``, as ``perception-stack replay --config``): None = the defaults
PARAMS_FILE: Path | None = None


def replay_bag(bag: Path, work: Path) -> tuple[dict[str, list[Any]], dict[str, list[tuple[int, float]]]]:
    """Run the graph; keep the branch grids (for the offline variants) and the fusion weights."""
    from perception_nodes.replay import run_graph

    recorded: dict[str, list[Any]] = defaultdict(list)

    def on_output(name: str, msg: Any) -> None:
        if name in BRANCH_TOPICS or name in SOURCES.values():
            recorded[name].append(msg)
        elif name.startswith("/perception/fusion/weights/"):
            recorded[name].append(msg)

    result = run_graph(bag, load_params(PARAMS_FILE), work, progress=False, on_output=on_output)
    log(f"{bag}: {result.input_frames} frames replayed; skipped nodes: {result.skipped or 'none'}")
    return recorded, result.fusion_weights


def run_variant(params: dict[str, Any], recorded: dict[str, list[Any]], odometry: list[tuple[str, Any]],
                blind: tuple[float, float] | None = None) -> tuple[list[Any], dict[str, list[tuple[int, float]]]]:
    """The fusion core alone over the recorded branch grids, in stamp order (odometry first, then the
    geometric grids, then the learned ones of each stamp, as the graph delivers them)."""
    p = {k: v for k, v in copy.deepcopy(params).items() if k not in ("enabled", "autostart", "qos")}
    clock = {"ns": 0}
    node = FusionNode("fusion", p, backend=default_backend(), clock=lambda: clock["ns"],
                      steady_clock=lambda: clock["ns"])
    events = [(stamp_to_ns(m.header.stamp), 0, t, m) for t, m in odometry]
    for order, t in enumerate(BRANCH_TOPICS):
        events += [(stamp_to_ns(m.header.stamp), 1 + order, t, m) for m in recorded.get(t, [])]
    events.sort(key=lambda e: (e[0], e[1]))
    t0 = events[0][0] if events else 0
    out, weights = [], defaultdict(list)
    wanted = {port.topic for port in node.inputs()}
    for stamp, _, topic, msg in events:
        if topic not in wanted:
            continue
        if blind is not None and topic.startswith("/perception/lidar/") and blind[0] <= (stamp - t0) / 1e9 < blind[1]:
            msg = copy.copy(msg)
            grid = np.asarray(msg.data, np.int8)
            msg.data = np.where(topic.endswith("uncertainty"), np.full_like(grid, 5), np.zeros_like(grid))
        clock["ns"] = stamp + 50_000_000
        for e in node.handle(topic, msg):
            if e.topic == node.occupancy_topic:
                out.append(e.msg)
            elif e.topic.startswith(node.weights_topic):
                weights[e.topic.rsplit("/", 1)[1]].append((stamp_to_ns(e.msg.header.stamp), float(e.msg.data)))
    for e in node.finish():
        if e.topic == node.occupancy_topic:
            out.append(e.msg)
    return out, dict(weights)


def weight_summary(weights: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    return {b: {"frames": len(v), "min": round(min(w for _, w in v), 4), "mean": round(float(np.mean([w for _, w in v])), 4),
                "below_0.2": sum(w < 0.2 for _, w in v)} for b, v in sorted(weights.items()) if v}


def frames_to(weights: list[tuple[int, float]], t0: int, start: float, end: float) -> dict[str, int | None]:
    """Frames after ``start`` until the weight is < 0.2, and after ``end`` until it is > 0.8 again."""
    seq = [((s - t0) / 1e9, w) for s, w in weights]
    down = next((i + 1 for i, (_, w) in enumerate([x for x in seq if x[0] >= start]) if w < 0.2), None)
    up = next((i + 1 for i, (_, w) in enumerate([x for x in seq if x[0] >= end]) if w > 0.8), None)
    return {"frames_until_below_0.2": down, "frames_until_above_0.8_after": up}


def check_bag(bag: Path, work: Path) -> dict[str, Any]:
    truth, odometry = read_truth(bag)
    recorded, graph_weights = replay_bag(bag, work)
    scorer = Scorer(truth)
    for name, topic in SOURCES.items():
        for m in recorded.get(topic, []):
            scorer.add(name, m)
    doc: dict[str, Any] = {"bag": str(bag), "graph": scorer.results(), "graph_weights": weight_summary(graph_weights)}
    base = load_params(PARAMS_FILE)["fusion"]
    variants = {
        "default": {},
        "no_memory": {"decay_per_s": 0.0},
        "decay_0.6": {"decay_per_s": 0.6},
        "mask_learned": {"branches": {"lidar_learned": {"mask_with": "geometric"}}},
        "decay_0.05": {"decay_per_s": 0.05},
        "geometric_only": {"branches": {"lidar_learned": {"enabled": False}}},
    }
    doc["variants"] = {}
    for name, over in variants.items():
        p = copy.deepcopy(base)
        for k, v in over.items():
            if isinstance(v, dict):
                for b, bv in v.items():
                    p[k][b].update(bv)
            else:
                p[k] = v
        grids, weights = run_variant(p, recorded, odometry)
        s = Scorer(truth)
        for m in grids:
            s.add(name, m)
        doc["variants"][name] = {**s.results().get(name, {}), "weights": weight_summary(weights)}
        log(f"  variant {name}: {doc['variants'][name].get('all')}")
    stamps = sorted(stamp_to_ns(m.header.stamp) for m in recorded.get(topics.OCCUPANCY_GRID, []))
    if stamps:
        span = (stamps[-1] - stamps[0]) / 1e9
        window = (0.3 * span, 0.6 * span)
        grids, weights = run_variant(base, recorded, odometry, blind=window)
        s = Scorer(truth)
        for m in grids:
            s.add("blind", m)
        doc["blinded_learned"] = {"window_s": [round(w, 2) for w in window], **s.results().get("blind", {}),
                                  "weights": weight_summary(weights),
                                  "learned": frames_to(weights.get("lidar_learned", []), stamps[0], *window),
                                  "geometric": frames_to(weights.get("geometric", []), stamps[0], *window)}
        log(f"  blinded learned {window}: {doc['blinded_learned']['learned']}, {doc['blinded_learned'].get('all')}")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--bag", action="append", type=Path, help="bag with generated ground truth (repeatable); "
                    "default: the embedded demo scenario")
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--config", type=Path, help="parameter overlay for every node (e.g. the stereo node's "
                    "method: configs/eval/stereo_learned_mode.yaml)")
    args = ap.parse_args(argv)
    global PARAMS_FILE
    PARAMS_FILE = args.config
    bags = args.bag
    if not bags:
        from perception_nodes.scenario.bag import default_scenario_bag

        bags = [default_scenario_bag(progress=False)]
    out = {"bags": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, bag in enumerate(bags):
            out["bags"].append(check_bag(bag, Path(tmp) / f"replay_{i}"))
    text = json.dumps(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
