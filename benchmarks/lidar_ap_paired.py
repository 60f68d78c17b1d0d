"""Is network B's car AP3D on a set really different from network A's? A paired bootstrap over frames.

    python benchmarks/lidar_ap_paired.py --a /tmp/v16 --b /tmp/v17 \\
        --eval-config configs/train/lidar_detection_eval_v17.yaml --set seen_types_realism3

A report set is 40 frames of 4 scenes, and the same network scores 0.48 on one such realism set and 0.62 on
another: a difference between two networks on one set means little without its spread. Both networks run once on
every frame (each weights folder with its sidecar's calibration, as ``lidar-eval`` scores them; samples built with
each network's own branch config, same sources in the same order); then car AP3D R40 @ 0.7 at the level
(``moderate``: KITTI levels of :mod:`perception_nodes.eval.generated_difficulty`, the generator's occlusion truth)
is recomputed on ``--reps`` resamples, the *same* resample for both networks, two ways:

* ``frames``: the frames resampled with replacement. Frames of one scene are correlated, so this interval is too
  narrow for what a new set of scenes would show;
* ``scenes``: the scenes (the set's sources) resampled with replacement, then the frames within each drawn scene
  -- wider, and still optimistic with four scenes a set.

``--refine-a`` / ``--refine-b`` (``on``, the default, ``off``, or a JSON object of the node's ``box_refinement``
keys) set the box refinement (:mod:`perception_nodes.pipeline.box_refine`) per side, so A and B may be the same
weights with and without it, or with two settings of it. ``--head-a`` / ``--head-b`` (``on``, the default: the
packaged learned box head of :mod:`perception_nodes.models.box_head`; ``off``; or a head weights folder) set the
head run after the refinement, per side (it runs only where the refinement does).

Also each scene's own AP for both networks (about 10 frames each: noisy) and how many scenes B wins. Prints the
point difference B - A with both 90 % intervals and one JSON object last. A difference whose scene interval
includes 0 is not evidence of a difference; one that excludes it is a difference on these scenes, not a law.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perception_nodes.eval.detection_eval import DetectionScorer, points_in_boxes  # noqa: E402
from perception_nodes.eval.generated_difficulty import with_difficulty, with_virtual_bbox2d  # noqa: E402
from perception_nodes.learning.branches import get_branch  # noqa: E402
from perception_nodes.learning.detection_metrics import DetectionAccumulator, gt_boxes  # noqa: E402
from perception_nodes.learning.lidar_detection_eval import _samples, set_sources  # noqa: E402
from perception_nodes.pipeline.box_refine import BoxRefinement, parse_setting  # noqa: E402
from perception_nodes.models.calibration import DetectionCalibration  # noqa: E402
from perception_nodes.models.weights_io import load_lidar_detection, resolve_weights_folder  # noqa: E402


def scored_frames(weights: str, eval_config: Path, set_name: str, cache_dir: Path | None = None,
                  refine: Any = True, head: str = "on") -> list[tuple]:
    """Per frame: (graded ground truth with its point counts, detections with their virtual 2D boxes, scene index),
    as lidar-eval's level scorer gets them (the counts once here, not per resample); ``refine``: the box
    refinement on the frame's points, as the node publishes (lidar-eval's default), off, or a mapping of
    its parameters; ``head``: the learned box head after it (``on`` the packaged one, ``off``, or a folder)."""
    folder = resolve_weights_folder(weights, "lidar_detection")
    model, side = load_lidar_detection(folder)
    branch = get_branch("lidar_detection")(side["branch_config"])
    acc = DetectionAccumulator(branch, calibration=DetectionCalibration.from_sidecar(side), threshold_on_raw_score=True,
                               refinement=BoxRefinement.from_mapping(refine), box_head=_head(head, folder))
    frames = []
    with torch.no_grad():
        for scene, source in enumerate(set_sources(eval_config, set_name)):
            for s in _samples(branch, [source], cache_dir, False):
                origin = np.asarray(s["sensor_origin"], np.float64)
                det = acc.decode(model([torch.from_numpy(s["points"])]), [s["points"]], [origin[:2]])[0]
                gt = with_difficulty(gt_boxes(s["boxes"], branch.net_config.classes, s.get("box_occlusion")),
                                     s["points"], origin)
                gt = [replace(g, extras={**g.extras, "num_lidar_pts": int(n)})
                      for g, n in zip(gt, points_in_boxes(gt, s["points"][:, :3]), strict=True)]
                frames.append((gt, with_virtual_bbox2d(det.to_box3d(), origin), scene))
    return frames


def car_ap(frames: list[tuple], idx: np.ndarray, level: str) -> float:
    sc = DetectionScorer()
    for i in idx:
        sc.add_frame(frames[i][0], frames[i][1])
    r = sc.kitti_results().get("car", {}).get(level)
    return float(r["3d"].ap) if r is not None else float("nan")


def _interval(d: list[float]) -> dict:
    x = np.asarray(d, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"ci90": [float("nan"), float("nan")], "share_b_higher": float("nan"), "reps": 0}
    lo, hi = np.percentile(x, [5.0, 95.0])
    return {"ci90": [float(lo), float(hi)], "share_b_higher": float((x > 0).mean()), "reps": int(len(x))}


def paired(a: list[tuple], b: list[tuple], reps: int, level: str, seed: int = 0, progress: bool = True) -> dict:
    if len(a) != len(b) or [f[2] for f in a] != [f[2] for f in b]:
        raise ValueError(f"{len(a)} frames for A, {len(b)} for B (or other scenes): not the same set")
    n = len(a)
    scene_of = np.asarray([f[2] for f in a])
    scenes = [np.flatnonzero(scene_of == k) for k in np.unique(scene_of)]
    full = np.arange(n)
    ap_a, ap_b = car_ap(a, full, level), car_ap(b, full, level)
    per_scene = [{"scene": int(k), "frames": len(ix), "ap_a": car_ap(a, ix, level), "ap_b": car_ap(b, ix, level)}
                 for k, ix in enumerate(scenes)]
    rng = np.random.default_rng(seed)
    by_frames, by_scenes = [], []
    for _ in tqdm(range(reps), desc="bootstrap", unit="rep", disable=not progress):
        idx = rng.integers(0, n, n)
        by_frames.append(car_ap(b, idx, level) - car_ap(a, idx, level))
        drawn = [scenes[k] for k in rng.integers(0, len(scenes), len(scenes))]
        idx = np.concatenate([ix[rng.integers(0, len(ix), len(ix))] for ix in drawn])
        by_scenes.append(car_ap(b, idx, level) - car_ap(a, idx, level))
    wins = sum(s["ap_b"] > s["ap_a"] for s in per_scene)
    return {"frames": n, "scenes": len(scenes), "level": level, "ap_a": ap_a, "ap_b": ap_b, "diff": ap_b - ap_a,
            "frames_bootstrap": _interval(by_frames), "scenes_bootstrap": _interval(by_scenes),
            "per_scene": per_scene, "scenes_b_higher": int(wins)}


def _head(text: str, detector: Path) -> Any:
    """The box head a ``--head-*`` value names (None for ``off``; ``on``: the packaged head, on the weights it was
    trained for only, as the node and lidar-eval run it)."""
    from perception_nodes.learning.branches.lidar_detection import load_box_head_cached
    from perception_nodes.models.box_head import packaged_head_for

    if text == "off":
        return None
    return packaged_head_for(detector)[0] if text == "on" else load_box_head_cached(text)


def _refine_arg(text: str) -> str:
    """argparse type: ``on``, ``off`` or a JSON object of box refinement parameters (checked here; kept as
    given, for the output record)."""
    try:
        parse_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="weights folder (or packaged name) of network A, the reference")
    p.add_argument("--b", required=True, help="weights folder (or packaged name) of network B")
    p.add_argument("--eval-config", type=Path, required=True, help="eval config holding the set(s)")
    p.add_argument("--set", dest="set_name", action="append", required=True, help="a set of the eval config (repeat)")
    p.add_argument("--level", default="moderate", choices=["easy", "moderate", "hard"], help="KITTI level (default moderate)")
    p.add_argument("--reps", type=int, default=200, help="bootstrap resamples (default 200)")
    p.add_argument("--refine-a", type=_refine_arg, default="on", help="box refinement for A: on (default), off or JSON")
    p.add_argument("--refine-b", type=_refine_arg, default="on", help="box refinement for B: on (default), off or JSON")
    p.add_argument("--head-a", default="on", help="learned box head for A: on (default, the packaged head), off or a folder")
    p.add_argument("--head-b", default="on", help="learned box head for B: on (default, the packaged head), off or a folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = []
    for name in a.set_name:
        r = {"set": name, "a": a.a, "b": a.b, "refine_a": a.refine_a, "refine_b": a.refine_b, "head_a": a.head_a,
             "head_b": a.head_b,
             **paired(scored_frames(a.a, a.eval_config, name, refine=parse_setting(a.refine_a), head=a.head_a),
                      scored_frames(a.b, a.eval_config, name, refine=parse_setting(a.refine_b), head=a.head_b),
                      a.reps, a.level)}
        res.append(r)
        fb, sb = r["frames_bootstrap"], r["scenes_bootstrap"]
        print(f"{name}: car AP3D {a.level} A {r['ap_a']:.3f}, B {r['ap_b']:.3f}, B - A {r['diff']:+.3f}; 90 % "
              f"interval over frames {fb['ci90'][0]:+.3f} .. {fb['ci90'][1]:+.3f}, over scenes then frames "
              f"{sb['ci90'][0]:+.3f} .. {sb['ci90'][1]:+.3f} ({sb['reps']} resamples); B higher in "
              f"{r['scenes_b_higher']} of {r['scenes']} scenes: "
              + ", ".join(f"{s['ap_b'] - s['ap_a']:+.3f}" for s in r["per_scene"]))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
