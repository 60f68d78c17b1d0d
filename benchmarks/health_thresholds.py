"""Distributions of the branch health scalars on generated TRAINING seeds, clean vs faulty: the numbers
behind the ``bad`` / ``good`` thresholds of the fusion node's health inputs (docs/fusion.md).

Per training scene (seeds of ``configs/train/*.yaml``; never the robustness study's held-out 500/501) two
bags are generated with the same seed, one clean and one with staggered faults (LiDAR dropout 0.8 at
1-2 s, a -60..60 deg LiDAR sector lost at 3-4 s, glare on left and mono at 1-2 s, every camera blacked out
at 3-3.5 s, the right camera pitched by ``--decal-deg`` from ``--decal-from`` s on), and replayed
through the nodes that publish the health scalars (ground segmentation, occupancy grid, stereo, camera
BEV, calibration monitor; the LiDAR network's node computes the same scan health as the occupancy node).
Each scalar is then split by the fault windows that concern its sensor: clean frames (the clean bags,
and the faulty bags outside every window of that sensor) against each fault's frames.

    python benchmarks/health_thresholds.py --out out/health_thresholds        # ~4-5 min on the shared 2-core machine
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: training scenes (all in configs/train/*.yaml)
SCENES = (("urban_street", 1), ("curved_road", 2), ("highway", 1))
#: scalar -> (topic, sensor)
SIGNALS = {
    "scan_health": ("/occupancy_grid/debug/scan_health", "lidar"),
    "point_ratio": ("/occupancy_grid/debug/scan_health/point_ratio", "lidar"),
    "azimuth_coverage": ("/occupancy_grid/debug/scan_health/azimuth_coverage", "lidar"),
    "exposure": ("/camera_bev/debug/exposure", "camera"),
    "image_health": ("/camera_bev/debug/image_health", "camera"),
    "valid_disparity_ratio": ("/stereo_occupancy/debug/valid_disparity_ratio", "camera"),
    "calibration_stereo": ("/calibration_monitor/debug/right/calibration_health/stereo", "camera"),
    "calibration_left_edge": ("/calibration_monitor/debug/left/calibration_health/edge", "camera"),
    "calibration_right_edge": ("/calibration_monitor/debug/right/calibration_health/edge", "camera"),
}
NODES = ("ground_segmentation", "occupancy_grid", "stereo_occupancy", "camera_bev", "calibration_monitor")


def fault_specs(decal_from: float, decal_deg: float) -> list[str]:
    return ["lidar_dropout=0.8", "lidar_dropout_time=1:2", "lidar_sector_deg=-60:60", "lidar_sector_time=3:4",
            "glare_time=1:2", "camera_blackout_time=3:3.5", f"stereo_decalibration_deg={decal_deg}",
            f"stereo_decalibration_start_s={decal_from}"]


def windows(decal_from: float) -> dict[str, tuple[str, float, float]]:
    """fault -> (sensor, start, end) in s from the start."""
    return {"lidar_dropout": ("lidar", 1.0, 2.0), "lidar_sector": ("lidar", 3.0, 4.0),
            "glare": ("camera", 1.0, 2.0), "camera_blackout": ("camera", 3.0, 3.5),
            "stereo_decalibration": ("camera", decal_from, math.inf)}


def replay(bag: Path, work: Path) -> dict[str, list[tuple[float, float]]]:
    """signal -> [(t from the bag's first stamp, value)]."""
    from perception_nodes.bags import BagReader
    from perception_nodes.codecs.backend import stamp_to_ns
    from perception_nodes.config import load_params
    from perception_nodes.replay import run_graph
    from perception_nodes import topics

    with BagReader(bag) as r:
        info = next(json.loads(rec.msg.data) for rec in r.records(topics=[topics.SCENARIO_INFO]))
    start = int(info["start_ns"])
    params = copy.deepcopy(load_params())
    for name in list(params):
        if name not in NODES:
            params[name]["enabled"] = False
    by_topic = {t: k for k, (t, _) in SIGNALS.items()}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def on_output(name, msg):
        k = by_topic.get(name)
        if k is not None:
            out[k].append(((stamp_to_ns(msg.header.stamp) - start) / 1e9, float(msg.data)))

    run_graph(bag, params, work, progress=False, on_output=on_output)
    return out


def quantiles(v: list[float]) -> dict[str, float] | None:
    if not v:
        return None
    a = np.asarray(v)
    return {"n": int(a.size), "min": round(float(a.min()), 3), "p5": round(float(np.percentile(a, 5)), 3),
            "median": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/health_thresholds"))
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per bag (default 8)")
    ap.add_argument("--decal-from", type=float, default=4.5, help="stereo decalibration onset (s, default 4.5)")
    ap.add_argument("--decal-deg", type=float, default=1.0, help="stereo decalibration angle (deg, default 1)")
    ap.add_argument("--scenes", default=",".join(f"{s}:{n}" for s, n in SCENES),
                    help="scenario:seed,... (training seeds only; default %(default)s)")
    args = ap.parse_args(argv)
    from perception_nodes.scenario.faults import parse_faults
    from perception_nodes.scenario.generate import generate_bag

    train_seeds = set()
    for f in (ROOT / "configs/train").glob("*.yaml"):
        import re

        train_seeds |= {int(m) for m in re.findall(r"seed:\s*(\d+)", f.read_text())}
    scenes = [(s.split(":")[0], int(s.split(":")[1])) for s in args.scenes.split(",")]
    for _, seed in scenes:
        if seed not in train_seeds:
            raise SystemExit(f"seed {seed} is not a training seed of configs/train/*.yaml ({sorted(train_seeds)})")
    args.out.mkdir(parents=True, exist_ok=True)
    win = windows(args.decal_from)
    clean: dict[str, list[float]] = defaultdict(list)
    faulty: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    series: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scen, seed in scenes:
            for kind in ("clean", "faults"):
                bag = Path(tmp) / f"{scen}_{seed}_{kind}"
                specs = fault_specs(args.decal_from, args.decal_deg) if kind == "faults" else []
                generate_bag(bag, scenario=scen, seed=seed, duration_s=args.duration, camera_resolution=(320, 96),
                             faults=parse_faults(specs), progress=False)
                vals = replay(bag, Path(tmp) / f"work_{scen}_{seed}_{kind}")
                series[f"{scen}:{seed}:{kind}"] = {k: [(round(t, 2), round(v, 4)) for t, v in s] for k, s in vals.items()}
                for sig, pts in vals.items():
                    sensor = SIGNALS[sig][1]
                    for t, v in pts:
                        hit = [f for f, (s, a, b) in win.items() if s == sensor and a <= t < b] if kind == "faults" else []
                        if not hit:
                            clean[sig].append(v)
                        for f in hit:
                            faulty[sig][f].append(v)
                print(f"{scen}:{seed} {kind}: " + ", ".join(f"{k} {len(v)}" for k, v in vals.items()), flush=True)
    table = {sig: {"clean": quantiles(clean[sig]), **{f: quantiles(v) for f, v in faulty[sig].items()}}
             for sig in SIGNALS}
    (args.out / "health_thresholds.json").write_text(json.dumps({"scenes": scenes, "windows": win, "table": table,
                                                                 "series": series}, indent=1, default=str))
    for sig, rows in table.items():
        print(f"\n{sig}")
        for cond, q in rows.items():
            print(f"  {cond:22s} {q}")
    print(f"\nwrote {args.out / 'health_thresholds.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
