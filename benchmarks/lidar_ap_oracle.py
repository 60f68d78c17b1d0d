"""Which box parameter keeps the LiDAR branch's car AP3D low? Each one replaced by its ground truth in turn.

    python benchmarks/lidar_ap_oracle.py --weights perception_nodes/models/weights/lidar_detection_realism \\
        --eval-config configs/train/lidar_detection_eval_v17.yaml --set seen_types_realism3

The network runs once on every frame of the set (its sidecar's calibration, as ``lidar-eval`` scores it). Each
car detection, highest score first, takes the nearest not yet matched ground-truth car within ``--radius`` m of its
BEV centre (as the branch's own matching); then car AP3D R40 @ 0.7 at each KITTI level (the generator's occlusion
truth) is recomputed with one group of the matched detections' parameters set to the ground truth's:

* ``xy`` (BEV centre), ``z``, ``length``, ``width``, ``height``, ``size`` (all three), ``yaw`` (heading modulo
  180 degrees, kept on the detection's side: IoU ignores the direction), and ``all``;
* ``all_but_<g>``: everything but one group -- what that group alone costs.

Scores, unmatched detections and unmatched cars stay as they are, so ``all`` is the AP the set allows for this
network's recall and ranking. A diagnostic of where IoU 0.7 is lost, not a score: the ground truth is used to
*edit* the output, never to judge it.

Also, per ground-truth car (any level) with a car heatmap peak (a cell equal to its 3 x 3 max, expected car
probability > the eval threshold) within 1.5 m: whether that nearest peak is the car's centre cell, and the BEV
centre error of the box read at the peak cell (what decoding publishes) against the box read at the true centre
cell (the only cell a centre-only box loss trains). Prints a table and one JSON object last. The boxes are refined
on the scan's points as the node publishes them (:mod:`perception_nodes.pipeline.box_refine`) unless
``--no-box-refinement``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perception_nodes.boxes import Box3D  # noqa: E402
from perception_nodes.eval.detection_eval import DetectionScorer, points_in_boxes  # noqa: E402
from perception_nodes.eval.generated_difficulty import with_difficulty, with_virtual_bbox2d  # noqa: E402
from perception_nodes.learning.box_head_train import greedy_match  # noqa: E402
from perception_nodes.learning.branches import get_branch  # noqa: E402
from perception_nodes.learning.detection_metrics import DetectionAccumulator, gt_boxes  # noqa: E402
from perception_nodes.models.box_head import packaged_head_for  # noqa: E402
from perception_nodes.learning.lidar_detection_eval import _samples, set_sources  # noqa: E402
from perception_nodes.pipeline.box_refine import BoxRefinement  # noqa: E402
from perception_nodes.models.calibration import DetectionCalibration  # noqa: E402
from perception_nodes.models.weights_io import load_lidar_detection, resolve_weights_folder  # noqa: E402

GROUPS = ("xy", "z", "length", "width", "height", "size", "yaw")
LEVELS = ("easy", "moderate", "hard")


def _with_truth(d: Box3D, g: Box3D, groups: set[str]) -> Box3D:
    c, s, yaw = list(d.center), list(d.size), d.yaw
    if "xy" in groups:
        c[0], c[1] = g.center[0], g.center[1]
    if "z" in groups:
        c[2] = g.center[2]
    for k, name in enumerate(("length", "width", "height")):
        if name in groups or "size" in groups:
            s[k] = g.size[k]
    if "yaw" in groups:  # the ground truth's heading, turned by 180 degrees when that is nearer the detection's
        dy = (g.yaw - d.yaw + np.pi) % (2 * np.pi) - np.pi
        yaw = g.yaw if abs(dy) <= np.pi / 2 else g.yaw + np.pi
    return replace(d, center=tuple(c), size=tuple(s), yaw=float(yaw))


def _match(gt: list[Box3D], det: list[Box3D], radius: float) -> dict[int, int]:
    """detection index -> ground-truth index, cars only, greedy by score (the branch's rule)."""
    rows = [i for i, d in enumerate(det) if d.label == "car"]
    cars = [j for j, g in enumerate(gt) if g.label == "car"]
    m = greedy_match([det[i].center[:2] for i in rows], [det[i].score for i in rows], [gt[j].center[:2] for j in cars],
                     radius)
    return {rows[i]: cars[j] for i, j in m.items()}


def frames_of(weights: str, eval_config: Path, set_name: str, radius: float,
              cache_dir: Path | None = None, refine: bool = True, head: bool = True) -> tuple[list[tuple], np.ndarray]:
    folder = resolve_weights_folder(weights, "lidar_detection")
    model, side = load_lidar_detection(folder)
    branch = get_branch("lidar_detection")(side["branch_config"])
    acc = DetectionAccumulator(branch, calibration=DetectionCalibration.from_sidecar(side), threshold_on_raw_score=True,
                               refinement=BoxRefinement(enabled=refine),
                               box_head=packaged_head_for(folder)[0] if head else None)  # as the node runs it
    frames, peaks = [], []
    with torch.no_grad():
        for s in _samples(branch, set_sources(eval_config, set_name), cache_dir, False):
            origin = np.asarray(s["sensor_origin"], np.float64)
            out = model([torch.from_numpy(s["points"])])
            det = acc.decode(out, [s["points"]], [origin[:2]])[0].to_box3d()
            gt = with_difficulty(gt_boxes(s["boxes"], branch.net_config.classes, s.get("box_occlusion")),
                                 s["points"], origin)
            # the point counts once here, not once per variant (the scorer reads num_lidar_pts without points)
            gt = [replace(g, extras={**g.extras, "num_lidar_pts": int(n)})
                  for g, n in zip(gt, points_in_boxes(gt, s["points"][:, :3]), strict=True)]
            frames.append((gt, det, origin, _match(gt, det, radius)))
            peaks.extend(_peak_rows(out, branch, s["boxes"], acc.calibration))
    return frames, np.asarray(peaks, np.float64).reshape(-1, 3)


def _peak_rows(out, branch, boxes: np.ndarray, calibration: DetectionCalibration | None = None,
               reach_m: float = 1.5) -> list[list[float]]:
    """Per ground-truth car with a car peak within ``reach_m``: (Chebyshev distance in cells from the nearest
    peak to the centre cell, BEV centre error in metres of the box read at the peak, of the box read at the
    centre cell)."""
    grid, ep = branch.head_grid, branch.eval_params
    alpha = out.class_alpha.float()
    if calibration is not None:  # the evidence decoding reads (its peaks are this map's)
        alpha = calibration.apply_alpha(alpha)
    car_id = list(branch.net_config.classes).index("car")
    car = alpha[0, car_id] / alpha[0].sum(0)
    peak = (car == F.max_pool2d(car[None, None], 3, 1, 1)[0, 0]) & (car > ep.score_threshold)
    py, px = (t.numpy() for t in torch.nonzero(peak, as_tuple=True))
    g = out.box.gamma[0].float()  # [T, H, W]
    rows = []
    for b in np.asarray(boxes).reshape(-1, 8):
        if int(b[7]) != car_id or not len(px):
            continue
        fx, fy = (b[0] - grid.origin_x) / grid.cell, (b[1] - grid.origin_y) / grid.cell
        ix, iy = int(np.floor(fx)), int(np.floor(fy))
        if not (0 <= ix < grid.width and 0 <= iy < grid.height):
            continue
        d = np.hypot(px + 0.5 - fx, py + 0.5 - fy)
        k = int(np.argmin(d))
        if d[k] * grid.cell > reach_m:
            continue
        qx, qy = int(px[k]), int(py[k])
        at_peak = np.hypot(qx + float(g[0, qy, qx]) - fx, qy + float(g[1, qy, qx]) - fy) * grid.cell
        at_centre = np.hypot(ix + float(g[0, iy, ix]) - fx, iy + float(g[1, iy, ix]) - fy) * grid.cell
        rows.append([max(abs(qx - ix), abs(qy - iy)), at_peak, at_centre])
    return rows


def peak_summary(rows: np.ndarray) -> dict:
    off = rows[:, 0] > 0
    def stats(e: np.ndarray) -> dict:
        return {"n": int(len(e)), "median_m": float(np.median(e)) if len(e) else float("nan"),
                "p90_m": float(np.percentile(e, 90)) if len(e) else float("nan")}
    return {"cars": int(len(rows)), "share_on_centre_cell": float((~off).mean()) if len(rows) else float("nan"),
            "cells_away": {int(k): int((rows[:, 0] == k).sum()) for k in np.unique(rows[:, 0])},
            "error_at_peak": stats(rows[:, 1]), "error_at_centre_cell": stats(rows[:, 2]),
            "peak_off_centre": {"at_peak": stats(rows[off, 1]), "at_centre_cell": stats(rows[off, 2])}}


def car_ap(frames: list[tuple], groups: set[str]) -> dict[str, float]:
    sc = DetectionScorer()
    for gt, det, origin, match in frames:
        edited = [_with_truth(d, gt[match[i]], groups) if i in match else d for i, d in enumerate(det)]
        sc.add_frame(gt, with_virtual_bbox2d(edited, origin))
    res = sc.kitti_results().get("car", {})
    return {lvl: float(res[lvl]["3d"].ap) for lvl in LEVELS if lvl in res}


def oracle(weights: str, eval_config: Path, set_name: str, radius: float = 1.0, cache_dir: Path | None = None,
           refine: bool = True, head: bool = True) -> dict:
    frames, peaks = frames_of(weights, eval_config, set_name, radius, cache_dir, refine, head)
    variants = {"none": set(), **{g: {g} for g in GROUPS}, "all": set(GROUPS)}
    variants.update({f"all_but_{g}": set(GROUPS) - ({g, "size"} if g in ("length", "width", "height") else {g})
                     for g in ("xy", "z", "length", "width", "height", "yaw")})
    return {"weights": weights, "box_refinement": refine, "set": set_name, "frames": len(frames), "radius_m": radius,
            "matched": int(sum(len(f[3]) for f in frames)),
            "ap3d": {name: car_ap(frames, groups) for name, groups in variants.items()},
            "peaks": peak_summary(peaks)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="lidar_detection", help="weights folder or packaged name")
    p.add_argument("--eval-config", type=Path, required=True,
                   help="eval config holding the set(s), e.g. configs/train/lidar_detection_eval_v18.yaml")
    p.add_argument("--set", dest="set_name", action="append", required=True, help="a set of the eval config (repeat)")
    p.add_argument("--radius", type=float, default=1.0, help="BEV centre distance of a match, m")
    p.add_argument("--no-box-refinement", action="store_true", help="the boxes as decoded, not refined on the points")
    p.add_argument("--no-box-head", action="store_true", help="the refined boxes without the learned box head")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = [oracle(a.weights, a.eval_config, name, a.radius, refine=not a.no_box_refinement,
                  head=not a.no_box_head) for name in a.set_name]
    for r in res:
        print(f"{r['set']} ({r['frames']} frames, {r['matched']} car detections matched within {r['radius_m']} m): "
              "car AP3D @ 0.7 with the ground truth's ...")
        for name, ap in r["ap3d"].items():
            print(f"  {name:16s} " + "  ".join(f"{lvl} {ap.get(lvl, float('nan')):.3f}" for lvl in ("moderate", "easy", "hard")))
        pk = r["peaks"]
        print(f"  nearest car peak on the centre cell for {pk['share_on_centre_cell']:.3f} of {pk['cars']} cars "
              f"(cells away: {pk['cells_away']}); where it is not, centre error of the box read at the peak "
              f"{pk['peak_off_centre']['at_peak']['median_m']:.3f} m median (p90 {pk['peak_off_centre']['at_peak']['p90_m']:.3f}), "
              f"at the centre cell {pk['peak_off_centre']['at_centre_cell']['median_m']:.3f} m "
              f"(p90 {pk['peak_off_centre']['at_centre_cell']['p90_m']:.3f})")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
