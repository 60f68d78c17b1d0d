"""Where the LiDAR branch loses 3D IoU: per-parameter errors of its car boxes on generated held-out sets.

    python benchmarks/lidar_box_errors.py --weights perception_nodes/models/weights/lidar_detection_realism \\
        --eval-config configs/train/lidar_detection_eval_realism.yaml --set seen_types_realism

For every ground-truth car at KITTI's moderate level or easier (graded by
:mod:`perception_nodes.eval.generated_difficulty`) the nearest car detection (calibrated as the weights'
sidecar says, raw score >= the branch's eval threshold) within ``--radius`` m of its BEV centre is matched;
the script prints the median, the median absolute deviation and the 90th percentile of |error| of the centre
(x, y, z), size (length, width, height) and heading (modulo 180 degrees, so a reversed box is not counted as
wrong here: KITTI's 3D IoU ignores the direction too), and prints one JSON object last. The boxes are refined
on the scan's points as the node publishes them (:mod:`perception_nodes.pipeline.box_refine`) unless
``--no-box-refinement``. A diagnostic: it says
which parameter keeps a box under IoU 0.7, not how good the network is (lidar-eval does that).

The heading error is also split by how the car is seen: its *view angle* (between the car's heading and the line of
sight from the sensor, modulo 180 degrees: 0 = seen end-on, only the rear or front face; 90 = side-on) below or above
30 degrees, the end-on ones also by range below or above 10 m.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perception_nodes.eval.generated_difficulty import with_difficulty  # noqa: E402
from perception_nodes.eval.metrics.kitti_difficulty import kitti_difficulty  # noqa: E402
from perception_nodes.learning.branches import get_branch  # noqa: E402
from perception_nodes.learning.detection_metrics import DetectionAccumulator, gt_boxes  # noqa: E402
from perception_nodes.models.box_head import packaged_head_for  # noqa: E402
from perception_nodes.learning.lidar_detection_eval import _samples, set_sources  # noqa: E402
from perception_nodes.pipeline.box_refine import BoxRefinement  # noqa: E402
from perception_nodes.models.calibration import DetectionCalibration  # noqa: E402
from perception_nodes.models.weights_io import load_lidar_detection, resolve_weights_folder  # noqa: E402

PARAMS = ("x", "y", "z", "length", "width", "height", "yaw_deg")


def box_errors(weights: str, eval_config: Path, set_name: str, radius: float = 1.0, cache_dir: Path | None = None,
               refine: bool = True, head: bool = True) -> dict:
    folder = resolve_weights_folder(weights, "lidar_detection")
    model, side = load_lidar_detection(folder)  # checked against its sidecar, in eval mode
    branch = get_branch("lidar_detection")(side["branch_config"])
    acc = DetectionAccumulator(branch, calibration=DetectionCalibration.from_sidecar(side), threshold_on_raw_score=True,
                               refinement=BoxRefinement(enabled=refine),
                               box_head=packaged_head_for(folder)[0] if head else None)  # as the node runs it
    samples = _samples(branch, set_sources(eval_config, set_name), cache_dir, False)
    rows, views, cars = [], [], 0
    with torch.no_grad():
        for s in samples:
            det = acc.decode(model([torch.from_numpy(s["points"])]), [s["points"]],
                             [np.asarray(s["sensor_origin"], np.float64)[:2]])[0]
            graded = with_difficulty(gt_boxes(s["boxes"], branch.net_config.classes, s.get("box_occlusion")),
                                     s["points"], s["sensor_origin"])  # the bag's occlusion truth where it has one
            for g in graded:
                if g.label != "car" or kitti_difficulty(g) not in ("easy", "moderate"):
                    continue
                cars += 1
                d = np.hypot(det.center[:, 0] - g.center[0], det.center[:, 1] - g.center[1])
                d[det.label != 0] = np.inf
                if not len(d) or d.min() > radius:
                    continue
                i = int(np.argmin(d))
                dyaw = (float(det.yaw[i]) - g.yaw + np.pi / 2) % np.pi - np.pi / 2
                rows.append([*(det.center[i] - np.asarray(g.center)), *(det.size[i] - np.asarray(g.size)), np.degrees(dyaw)])
                sight = np.arctan2(g.center[1] - s["sensor_origin"][1], g.center[0] - s["sensor_origin"][0])
                views.append([np.degrees(abs((g.yaw - sight + np.pi / 2) % np.pi - np.pi / 2)),
                              float(np.hypot(g.center[0] - s["sensor_origin"][0], g.center[1] - s["sensor_origin"][1]))])
    r = np.asarray(rows, np.float64).reshape(-1, len(PARAMS))
    out = {"weights": str(folder), "box_refinement": refine, "set": set_name, "frames": len(samples), "cars_moderate": cars, "matched": len(r),
           "radius_m": radius, "errors": {}}
    for k, name in enumerate(PARAMS):
        e = r[:, k]
        med = float(np.median(e)) if len(e) else float("nan")
        out["errors"][name] = {"median": med, "mad": float(np.median(np.abs(e - med))) if len(e) else float("nan"),
                               "p90_abs": float(np.percentile(np.abs(e), 90)) if len(e) else float("nan")}
    v = np.asarray(views, np.float64).reshape(-1, 2)
    yaw = np.abs(r[:, -1])
    out["yaw_by_view"] = {}
    for name, m in (("end_on_beyond_10m", (v[:, 0] < 30) & (v[:, 1] >= 10)), ("end_on_within_10m", (v[:, 0] < 30) & (v[:, 1] < 10)),
                    ("oblique_or_side", v[:, 0] >= 30)):
        out["yaw_by_view"][name] = {"cars": int(m.sum()),
                                    "p90_abs_deg": float(np.percentile(yaw[m], 90)) if m.any() else float("nan"),
                                    "share_over_10deg": float((yaw[m] > 10).mean()) if m.any() else float("nan")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="lidar_detection", help="weights folder or packaged name")
    p.add_argument("--eval-config", type=Path, default=REPO / "configs/train/lidar_detection_eval_realism.yaml")
    p.add_argument("--set", dest="set_name", action="append", required=True, help="a set of the eval config (repeat)")
    p.add_argument("--radius", type=float, default=1.0, help="BEV centre distance of a match, m")
    p.add_argument("--no-box-refinement", action="store_true", help="the boxes as decoded, not refined on the points")
    p.add_argument("--no-box-head", action="store_true", help="the refined boxes without the learned box head")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = [box_errors(a.weights, a.eval_config, name, a.radius, refine=not a.no_box_refinement,
                      head=not a.no_box_head) for name in a.set_name]
    for r in res:
        print(f"{r['set']}: {r['matched']} of {r['cars_moderate']} moderate cars matched within {r['radius_m']} m")
        for name, e in r["errors"].items():
            print(f"  {name:8s} median {e['median']:+.3f}  MAD {e['mad']:.3f}  p90 |error| {e['p90_abs']:.3f}")
        print("  heading by view: " + "; ".join(f"{k} {e['cars']} cars, p90 {e['p90_abs_deg']:.1f} deg, "
                                               f"{e['share_over_10deg']:.2f} over 10 deg" for k, e in r["yaw_by_view"].items()))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
