"""Is network B's car AP3D on a set really different from network A's? A paired bootstrap over frames.

    python benchmarks/lidar_ap_paired.py --a /tmp/v16 --b /tmp/v17 \\
        --eval-config configs/train/lidar_detection_eval_v17.yaml --set seen_types_realism3

A report set is 40 frames of 4 scenes, and the same network scores 0.48 on one such realism set and 0.62 on
another: a difference between two networks on one set means little without its spread. Both networks run once on
every frame (each weights folder with its sidecar's calibration, as ``lidar-eval`` scores them; samples built with
each network's own branch config, same sources in the same order); then the frames are resampled with replacement
``--reps`` times, the *same* resample for both, and car AP3D R40 @ 0.7 at the level (``moderate``: KITTI levels of
:mod:`perception_nodes.eval.generated_difficulty`, the generator's occlusion truth) is recomputed for each. Prints
the point difference B - A, its bootstrap 95 % interval, the share of resamples where B > A, and one JSON object
last. Frames within a scene are correlated, so the interval is narrower than a scene-level one would be: a
difference whose interval includes 0 is not a difference; one that excludes it is a difference on these scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perception_nodes.eval.detection_eval import DetectionScorer, points_in_boxes  # noqa: E402
from perception_nodes.eval.generated_difficulty import with_difficulty, with_virtual_bbox2d  # noqa: E402
from perception_nodes.learning.branches import get_branch  # noqa: E402
from perception_nodes.learning.config import _sources  # noqa: E402
from perception_nodes.learning.detection_metrics import DetectionAccumulator, gt_boxes  # noqa: E402
from perception_nodes.learning.lidar_detection_eval import _samples  # noqa: E402
from perception_nodes.models.calibration import DetectionCalibration  # noqa: E402
from perception_nodes.models.weights_io import load_lidar_detection, resolve_weights_folder  # noqa: E402


def scored_frames(weights: str, eval_config: Path, set_name: str, cache_dir: Path | None = None) -> list[tuple]:
    """Per frame: (graded ground truth with its point counts, detections with their virtual 2D boxes), as
    lidar-eval's level scorer gets them (the counts once here, not per resample)."""
    folder = resolve_weights_folder(weights, "lidar_detection")
    model, side = load_lidar_detection(folder)
    branch = get_branch("lidar_detection")(side["branch_config"])
    acc = DetectionAccumulator(branch, calibration=DetectionCalibration.from_sidecar(side), threshold_on_raw_score=True)
    doc = yaml.safe_load(eval_config.read_text())
    sets = {**(doc.get("sets") or {}), **(doc.get("reserved_sets") or {})}
    if set_name not in sets:
        raise SystemExit(f"{eval_config}: no set {set_name!r} (sets: {sorted(sets)})")
    frames = []
    with torch.no_grad():
        for s in _samples(branch, _sources(sets[set_name], set_name), cache_dir, False):
            origin = np.asarray(s["sensor_origin"], np.float64)
            det = acc.decode(model([torch.from_numpy(s["points"])]))[0]
            gt = with_difficulty(gt_boxes(s["boxes"], branch.net_config.classes, s.get("box_occlusion")), s["points"], origin)
            gt = [replace(g, extras={**g.extras, "num_lidar_pts": int(n)})
                  for g, n in zip(gt, points_in_boxes(gt, s["points"][:, :3]), strict=True)]
            frames.append((gt, with_virtual_bbox2d(det.to_box3d(), origin)))
    return frames


def car_ap(frames: list[tuple], idx: np.ndarray, level: str) -> float:
    sc = DetectionScorer()
    for i in idx:
        sc.add_frame(*frames[i])
    r = sc.kitti_results().get("car", {}).get(level)
    return float(r["3d"].ap) if r is not None else float("nan")


def paired(a: list[tuple], b: list[tuple], reps: int, level: str, seed: int = 0, progress: bool = True) -> dict:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} frames for A, {len(b)} for B: not the same set")
    n = len(a)
    full = np.arange(n)
    ap_a, ap_b = car_ap(a, full, level), car_ap(b, full, level)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in tqdm(range(reps), desc="bootstrap", unit="rep", disable=not progress):
        idx = rng.integers(0, n, n)
        diffs.append(car_ap(b, idx, level) - car_ap(a, idx, level))
    d = np.asarray(diffs)
    d = d[np.isfinite(d)]
    lo, hi = (np.percentile(d, [2.5, 97.5]) if len(d) else (float("nan"),) * 2)
    return {"frames": n, "level": level, "ap_a": ap_a, "ap_b": ap_b, "diff": ap_b - ap_a, "ci95": [float(lo), float(hi)],
            "share_b_higher": float((d > 0).mean()) if len(d) else float("nan"), "reps": int(len(d))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="weights folder (or packaged name) of network A, the reference")
    p.add_argument("--b", required=True, help="weights folder (or packaged name) of network B")
    p.add_argument("--eval-config", type=Path, required=True, help="eval config holding the set(s)")
    p.add_argument("--set", dest="set_name", action="append", required=True, help="a set of the eval config (repeat)")
    p.add_argument("--level", default="moderate", choices=["easy", "moderate", "hard"], help="KITTI level (default moderate)")
    p.add_argument("--reps", type=int, default=200, help="bootstrap resamples (default 200)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = []
    for name in a.set_name:
        r = {"set": name, "a": a.a, "b": a.b, **paired(scored_frames(a.a, a.eval_config, name),
                                                       scored_frames(a.b, a.eval_config, name), a.reps, a.level)}
        res.append(r)
        print(f"{name}: car AP3D {a.level} A {r['ap_a']:.3f}, B {r['ap_b']:.3f}, B - A {r['diff']:+.3f} "
              f"(95 % {r['ci95'][0]:+.3f} .. {r['ci95'][1]:+.3f}; B higher in {100 * r['share_b_higher']:.0f} % of "
              f"{r['reps']} resamples of {r['frames']} frames)")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
