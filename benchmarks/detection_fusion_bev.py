#!/usr/bin/env python3
"""Does the camera + LiDAR fuser (``bev_fusion`` node) help the ``detection_fusion`` node as a second branch?

Per bag, the graph's ``lidar_detection`` and ``bev_fusion`` nodes are replayed once (``run_graph``, default
params, ``bev_fusion`` enabled; nothing else runs) and their detections, the bag's odometry and ground-truth
boxes are recorded. The detection fusion node core is then re-run offline on the *same* recorded
detections, as ``benchmarks/detection_fusion.py`` does for its variants (no occupancy-fusion weight topic on
either side):

* ``lidar_raw`` / ``bev_raw``: each branch's boxes as published;
* ``fusion_lidar``: the default detection fusion (memory on), LiDAR branch only: what ran before this
  branch; ``fusion_lidar_ci`` the same with ``box_rule: covariance_intersection``;
* ``fusion_bev``: the same with the fuser's boxes as the only branch (paced by them);
* ``fusion_lidar_bev``: both branches, the default box rule (``information``);
* ``fusion_lidar_bev_ci``: both branches, ``covariance_intersection`` (the rule for correlated branches:
  the two share the LiDAR scan).

Scored by KITTI AP R40 (3D and BEV; ``detection_metrics`` without the min-points filter, as the offline
variants of ``benchmarks/detection_fusion.py``) and the 90 % centre-ellipse coverage with its
constant-sigma baseline, on held-out generated scenes by default: seeds 500-502 (urban_street,
curved_road, highway; in no ``configs/train/*.yaml``, checked), 5 s at 10 Hz, cameras 320 x 96.

    python benchmarks/detection_fusion_bev.py                         # generates the three held-out bags
    python benchmarks/detection_fusion_bev.py --bag BAG [--bag BAG] --json out/detection_fusion_bev.json

Progress goes to stderr; the last line of stdout is one JSON object (medians over the bags under ``median``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection_fusion as dfb  # noqa: E402  (benchmarks/detection_fusion.py: scoring helpers)

from perception_nodes import topics  # noqa: E402
from perception_nodes.bags import BagReader  # noqa: E402
from perception_nodes.boxes import Box3D  # noqa: E402
from perception_nodes.codecs.backend import default_backend, stamp_to_ns  # noqa: E402
from perception_nodes.codecs.detections import boxes_from_detections  # noqa: E402
from perception_nodes.config import load_params  # noqa: E402
from perception_nodes.graph.detection_fusion import DetectionFusionNode  # noqa: E402

HELD_OUT = (("urban_street", 500), ("curved_road", 501), ("highway", 502))


def held_out_bags(root: Path) -> list[Path]:
    """The held-out bags (generated once into ``root``); refuses seeds used by a training config."""
    from perception_nodes.learning.bev_fusion_eval import check_held_out
    from perception_nodes.scenario.generate import main as generate

    check_held_out(HELD_OUT)
    out = []
    for scenario, seed in HELD_OUT:
        bag = root / f"{scenario}_{seed}"
        if not (bag / "metadata.yaml").is_file():
            print(f"generating {bag} ...", file=sys.stderr)
            generate(["--scenario", scenario, "--seed", str(seed), "--duration", "5", "--camera-resolution", "320x96",
                      "--out", str(bag), "--quiet"])
        out.append(bag)
    return out


def fuse_offline(dparams: dict[str, Any], branches: dict[str, list[tuple[int, Any]]], odometry: list[Any], *,
                 pace: str, box_rule: str | None = None) -> dict[int, list[Box3D]]:
    """The detection fusion node core on recorded detections: one branch per entry of ``branches`` (name ->
    [(stamp, vision Detection3DArray)]), the LiDAR branch's settings, no weight topic; non-pace branches'
    messages of a stamp are delivered before the pace branch's."""
    p = copy.deepcopy(dparams)
    for k in ("enabled", "autostart", "qos"):
        p.pop(k, None)
    base = {**p["branches"]["lidar"], "weight_topic": "", "enabled": True}
    p["branches"] = {name: {**base, "detections_topic": f"/bench/{name}"} for name in branches}
    p["pace_branch"] = pace
    if box_rule:
        p["box_rule"] = box_rule
    clock = [0]
    node = DetectionFusionNode("detection_fusion", p, backend=default_backend(), clock=lambda: clock[0],
                               steady_clock=lambda: clock[0])
    msgs = sorted(((s, name != pace, name, m) for name, lst in branches.items() for s, m in lst),
                  key=lambda x: (x[0], not x[1]))
    odo = sorted(odometry, key=lambda m: stamp_to_ns(m.header.stamp))
    out: dict[int, list[Box3D]] = {}
    j = 0
    for stamp, _, name, msg in msgs:
        clock[0] = stamp
        while j < len(odo) and stamp_to_ns(odo[j].header.stamp) <= stamp:
            node.handle(p["odometry_topic"], odo[j])
            j += 1
        for e in node.handle(f"/bench/{name}", msg):
            if e.topic == p["objects_topic"]:
                out[stamp] = boxes_from_detections(e.msg)
    return out


def run_bag(bag: Path, match_m: float) -> dict[str, Any]:
    from perception_nodes.replay import run_graph

    params = load_params()
    keep = {"lidar_detection", "bev_fusion", "replay"}
    params = {k: v for k, v in params.items() if k in keep}
    params["bev_fusion"]["enabled"] = True
    params["lidar_detection"]["geometric_occupancy_topic"] = ""  # no occupancy node here: no grid fusion
    lidar_topic = params["lidar_detection"]["detections_topic"]
    bev_topic = params["bev_fusion"]["detections_topic"]
    with BagReader(bag) as reader:
        odometry = [r.msg for r in reader.records(topics={topics.GT_ODOMETRY})]
    objects = {params["lidar_detection"]["objects_topic"]: "lidar_raw", params["bev_fusion"]["objects_topic"]: "bev_raw"}
    rec: dict[str, list[tuple[int, Any]]] = {"lidar": [], "bev_fusion": []}
    raw: dict[str, dict[int, list[Box3D]]] = {"lidar_raw": {}, "bev_raw": {}}
    modes: list[float] = []

    def on_output(name: str, msg: Any) -> None:
        if name in objects:
            raw[objects[name]][stamp_to_ns(msg.header.stamp)] = boxes_from_detections(msg)
        elif name == lidar_topic:
            rec["lidar"].append((stamp_to_ns(msg.header.stamp), msg))
        elif name == bev_topic:
            rec["bev_fusion"].append((stamp_to_ns(msg.header.stamp), msg))
        elif name == "/bev_fusion/debug/mode":
            modes.append(float(msg.data))

    with tempfile.TemporaryDirectory() as tmp:
        print(f"replaying {bag} ...", file=sys.stderr)
        res = run_graph(Path(bag), params, Path(tmp), progress=False, on_output=on_output)
    gt = {s: boxes_from_detections(m) for s, m in res.ground_truth.items()}
    dparams = load_params()["detection_fusion"]
    sides: dict[str, dict[int, list[Box3D]]] = dict(raw)
    print("offline detection fusion ...", file=sys.stderr)
    sides["fusion_lidar"] = fuse_offline(dparams, {"lidar": rec["lidar"]}, odometry, pace="lidar")
    sides["fusion_lidar_ci"] = fuse_offline(dparams, {"lidar": rec["lidar"]}, odometry, pace="lidar",
                                            box_rule="covariance_intersection")
    sides["fusion_bev"] = fuse_offline(dparams, {"bev_fusion": rec["bev_fusion"]}, odometry, pace="bev_fusion")
    sides["fusion_lidar_bev"] = fuse_offline(dparams, rec, odometry, pace="lidar")
    sides["fusion_lidar_bev_ci"] = fuse_offline(dparams, rec, odometry, pace="lidar", box_rule="covariance_intersection")
    out: dict[str, Any] = {"bag": str(bag), "frames_gt": len(gt),
                           "bev_modes": {str(int(k)): modes.count(k) for k in sorted(set(modes))}}
    for name, preds in sides.items():
        frames = dfb._join(preds, gt)
        out[name] = {"frames": len(preds), "boxes": sum(len(b) for b in preds.values()),
                     "ap_direct": dfb.ap_direct(frames), **dfb.coverage(frames, match_m)}
    lat = res.latency["stages"]
    out["latency_p50_ms"] = {k: lat.get(f"{k}/processing_time", {}).get("p50_ms") for k in ("lidar_detection", "bev_fusion")}
    return out


def _car(v: Any) -> float | None:
    if isinstance(v, dict):
        v = v.get("car", v.get("Car"))
    return None if v is None else float(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bag", action="append", type=Path, help="bag(s) with ground-truth boxes and the left camera "
                    "(default: the held-out seeds 500-502, generated into --bag-dir)")
    ap.add_argument("--bag-dir", type=Path, default=Path("out/heldout_bags"), help="where the held-out bags go")
    ap.add_argument("--match-m", type=float, default=2.0, help="BEV centre distance for coverage pairs (m)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    bags = args.bag or held_out_bags(args.bag_dir)
    results = [run_bag(b, args.match_m) for b in bags]
    names = [k for k in results[0] if isinstance(results[0][k], dict) and "ap_direct" in results[0][k]]
    median = {n: {"car_ap3d": float(np.median([_car(r[n]["ap_direct"]["kitti_ap_r40_3d"]) for r in results])),
                  "car_apbev": float(np.median([_car(r[n]["ap_direct"]["kitti_ap_r40_bev"]) for r in results])),
                  "coverage_xy_90": float(np.median([r[n].get("coverage_xy_90", np.nan) for r in results]))}
              for n in names}
    for n, m in median.items():
        per = " ".join(f"{_car(r[n]['ap_direct']['kitti_ap_r40_3d']):.3f}" for r in results)
        print(f"{n:22s} car AP3D median {m['car_ap3d']:.3f} (per bag {per})  BEV {m['car_apbev']:.3f}  "
              f"cov90 {m['coverage_xy_90']:.3f}", file=sys.stderr)
    doc = {"bags": results, "median": median}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=True, default=float))
    print(json.dumps(doc, allow_nan=True, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
