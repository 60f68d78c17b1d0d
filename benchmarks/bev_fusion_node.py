#!/usr/bin/env python3
"""Per-frame latency of the ``bev_fusion`` node: fused vs LiDAR-only vs camera-only, beside the LiDAR branch node.

One run, one torch thread, the same scans and images: for every frame of the bag (default: the demo bag,
50 frames) four node cores take their turn on it, interleaved so machine load hits all alike:
``bev_fusion`` fed scan + image + camera_info (fused), a second ``bev_fusion`` fed the scans only
(lidar_only once its camera timeout is past), a third fed the images only (camera_only), and the
``lidar_detection`` node on the scan. Reported: the p50 / p90 of each node's ``processing_time`` (the node's
whole frame: decode to encoded messages) and of its stages, after ``--skip`` warm frames.

    nice -n 10 python benchmarks/bev_fusion_node.py [--bag BAG] [--frames 50] [--json out/bev_fusion_node.json]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bag", type=Path, default=None, help="bag with LiDAR and the left camera (default: demo bag)")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--skip", type=int, default=3, help="first frames left out of the statistics (warm-up)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from perception_nodes import topics
    from perception_nodes.bags import BagReader
    from perception_nodes.codecs.backend import default_backend
    from perception_nodes.config import load_params
    from perception_nodes.graph.bev_fusion import BevFusionNode
    from perception_nodes.graph.lidar_detection import LidarDetectionNode

    bag = args.bag
    if bag is None:
        from perception_nodes.scenario.bag import default_scenario_bag

        bag = default_scenario_bag(progress=False)
    params = load_params()
    bp = {k: v for k, v in params["bev_fusion"].items() if k != "enabled"}
    lp = {k: v for k, v in params["lidar_detection"].items() if k != "enabled"}
    lp.update(geometric_occupancy_topic="", threads=1)
    clock = [0]
    kw: dict[str, Any] = {"backend": default_backend(), "clock": lambda: clock[0], "keep_all_latency": True}
    nodes = {"fused": BevFusionNode("bev_fusion", bp, **kw), "lidar_only": BevFusionNode("bev_fusion", bp, **kw),
             "camera_only": BevFusionNode("bev_fusion", bp, **kw), "lidar_detection": LidarDetectionNode("lidar_detection", lp, **kw)}
    feeds = {"fused": None, "lidar_only": {topics.LIDAR_POINTS, topics.TF_STATIC},
             "camera_only": {bp["image_topic"], bp["camera_info_topic"], topics.TF_STATIC},
             "lidar_detection": {topics.LIDAR_POINTS, topics.TF_STATIC}}
    for n in nodes.values():
        n.warmup()
    wanted = {topics.TF_STATIC, topics.LIDAR_POINTS, bp["image_topic"], bp["camera_info_topic"]}
    frames: list[list[tuple[str, Any, int]]] = []
    with BagReader(bag) as r:
        for rec in r.records(topics=wanted):
            if not frames or (rec.topic == topics.LIDAR_POINTS and any(t == topics.LIDAR_POINTS for t, _, _ in frames[-1])):
                if len(frames) == args.frames:
                    break
                frames.append([])
            frames[-1].append((rec.topic, rec.msg, rec.log_time_ns))
    modes: dict[str, dict[str, int]] = {}
    for frame in frames:
        for name, node in nodes.items():
            for topic, msg, t in frame:
                if feeds[name] is None or topic in feeds[name]:
                    clock[0] = t
                    node.handle(topic, msg)
            clock[0] = frame[-1][2] + 200_000_000  # a held scan's wait is over
            node.tick()
    out: dict[str, Any] = {"bag": str(bag), "frames": len(frames), "threads": torch.get_num_threads()}
    for name, node in nodes.items():
        node.finish()
        series = node.latency.series
        entry = {}
        for key, s in sorted(series.items()):
            vals = np.asarray(s.all[args.skip:], np.float64)
            if len(vals):
                entry[key] = {"p50_ms": float(np.median(vals)), "p90_ms": float(np.percentile(vals, 90)), "n": len(vals)}
        out[name] = entry
        if isinstance(node, BevFusionNode):
            modes[name] = {k: v for k, v in node.mode_frames.items() if v}
    out["modes"] = modes
    for name in nodes:
        pt = out[name].get("processing_time", {})
        print(f"{name:16s} p50 {pt.get('p50_ms', float('nan')):7.1f} ms  p90 {pt.get('p90_ms', float('nan')):7.1f} ms  "
              f"modes {modes.get(name, '-')}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
