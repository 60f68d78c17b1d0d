#!/usr/bin/env python3
"""Does the camera branch help the fused occupancy grid? The graph replayed twice on the same bag(s),
default params except the fusion node's ``branches.camera.enabled`` (off, then on), with the camera_bev
node running both times; every published grid scored on the same visible cells of the generated ground
truth by ``benchmarks/fusion_check.py``'s scorer (unknown cells at P = 0.5; Brier, ECE, NLL, IoU at
P > 0.5; the trivial baselines on the same cells). Sources: ``geometric``, ``learned`` (LiDAR network),
``stereo`` (when its node is enabled), ``camera`` (the camera_bev node's own grid) and ``fusion``; the
camera's own grid is also scored on the cells where it has evidence only (``camera_covered``: a grid that
is unknown almost everywhere scores near the 0.5 prior over all visible cells, which says nothing).

    nice .venv/bin/python benchmarks/camera_bev_fusion.py [--bag BAG ...] [--weights DIR] [--json OUT]

Progress on stderr; the last stdout line is one JSON object.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fusion_check import Scorer, read_truth  # noqa: E402

from perception_nodes.config import load_params  # noqa: E402
from perception_nodes.evaluation import grid_array  # noqa: E402

SOURCES = {"geometric": "/perception/occupancy_grid", "learned": "/perception/lidar/occupancy_grid",
           "stereo": "/perception/stereo/occupancy_grid", "camera": "/perception/camera/occupancy_grid",
           "fusion": "/perception/fusion/occupancy_grid"}


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def replay(bag: Path, params: dict[str, Any], work: Path) -> tuple[dict[str, list[Any]], Any]:
    from perception_nodes.replay import run_graph

    got: dict[str, list[Any]] = {k: [] for k in SOURCES}
    by_topic = {v: k for k, v in SOURCES.items()}

    def on_output(name: str, msg: Any) -> None:
        if name in by_topic:
            got[by_topic[name]].append(msg)

    result = run_graph(bag, params, work, progress=False, on_output=on_output)
    if "camera_bev" in result.skipped:
        raise SystemExit(f"camera_bev left out of the graph: {result.skipped['camera_bev']}")
    return got, result


def covered_scores(msgs: list[Any], truth: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A grid scored only on the visible cells where it has evidence (P = value / 100)."""
    from perception_nodes.codecs.backend import stamp_to_ns
    from perception_nodes.evaluation import resample_like
    from perception_nodes.learning.camera_bev_eval import score

    ps, ys = [], []
    for m in msgs:
        gt = truth.get(stamp_to_ns(m.header.stamp), {})
        if "/ground_truth/occupancy" not in gt or "/ground_truth/occupancy/visibility" not in gt:
            continue
        g = grid_array(m)
        mask = (resample_like(gt["/ground_truth/occupancy/visibility"], m) >= 50) & (g >= 0)
        ps.append(g[mask] / 100.0)
        ys.append((resample_like(gt["/ground_truth/occupancy"], m) >= 50)[mask].astype(np.float64))
    if not ps:
        return {}
    p, y = np.concatenate(ps), np.concatenate(ys)
    r = float(y.mean()) if y.size else 0.0
    return {"frames": len(ps), **{k: round(v, 4) for k, v in score(p, y).items()},
            "occupied_fraction": round(r, 4), "base_rate_brier": round(r * (1 - r), 4)}


def check(bag: Path, weights: str | None, work: Path, scale: float = 1.0, only_on: bool = False) -> dict[str, Any]:
    truth, _ = read_truth(bag)
    doc: dict[str, Any] = {"bag": str(bag)}
    for enabled in ((True,) if only_on else (False, True)):
        params = copy.deepcopy(load_params())
        params["fusion"]["branches"]["camera"]["enabled"] = enabled
        if weights:
            params["camera_bev"]["weights"] = weights
        params["camera_bev"]["evidence_scale"] = scale
        got, result = replay(bag, params, work / f"camera_{enabled}")
        scorer = Scorer(truth)
        for name, msgs in got.items():
            for m in msgs:
                scorer.add(name, m)
        res = scorer.results()
        res["camera_covered"] = covered_scores(got["camera"], truth)
        res["weights"] = {b: {"mean": round(float(np.mean([w for _, w in v])), 4), "min": round(min(w for _, w in v), 4)}
                          for b, v in sorted(result.fusion_weights.items()) if v}
        doc["camera_in_fusion" if enabled else "camera_not_in_fusion"] = res
        f = res.get("fusion", {}).get("all") or {}
        log(f"{bag.name}: camera branch {'on' if enabled else 'off'}: fused {f}; camera on its evidence "
            f"{res.get('camera_covered')}")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bag", action="append", type=Path, help="bag with generated ground truth (repeatable); "
                    "default: the embedded demo scenario")
    ap.add_argument("--weights", default=None, help="camera_bev weights folder (default: the packaged one)")
    ap.add_argument("--evidence-scale", type=float, default=1.0, help="the camera node's evidence_scale")
    ap.add_argument("--only-on", action="store_true", help="skip the replay with the camera branch off")
    ap.add_argument("--json", type=Path, help="write the result here too")
    args = ap.parse_args(argv)
    bags = args.bag
    if not bags:
        from perception_nodes.scenario.bag import default_scenario_bag

        bags = [default_scenario_bag(progress=False)]
    out = {"bags": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, bag in enumerate(bags):
            out["bags"].append(check(bag, args.weights, Path(tmp) / f"b{i}", args.evidence_scale, args.only_on))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
