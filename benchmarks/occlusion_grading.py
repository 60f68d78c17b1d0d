"""How far the scan-measured occlusion is from the generator's truth, per set of an eval config.

    python benchmarks/occlusion_grading.py --eval-config configs/train/lidar_detection_eval_v16.yaml

Generated bags carry each object's KITTI occlusion state as truth since generator version 5 (measured on the
generator's fault-free cast; :func:`perception_nodes.eval.generated_difficulty.occlusion_truth`). Before that the
evaluation measured it on the delivered scan, which misses every ray the sensor model dropped -- on the occluder's
side as on the car's. For every car with at least one point in the network's input crop (the boxes and points
``lidar-eval`` grades), this counts truth state (rows) against the scan's (columns), states 0-3, and prints one JSON
object last. The branch configuration (crop, classes) comes from ``--weights``; no network runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perception_nodes.eval.detection_eval import points_in_boxes  # noqa: E402
from perception_nodes.eval.generated_difficulty import with_difficulty  # noqa: E402
from perception_nodes.learning.branches import get_branch  # noqa: E402
from perception_nodes.learning.detection_metrics import gt_boxes  # noqa: E402
from perception_nodes.learning.lidar_detection_eval import _samples, set_sources  # noqa: E402
from perception_nodes.models.weights_io import read_sidecar, resolve_weights_folder  # noqa: E402

STATES = (0, 1, 2, 3)


def occlusion_confusion(weights: str, eval_config: Path, set_name: str, cache_dir: Path | None = None) -> dict:
    folder = resolve_weights_folder(weights, "lidar_detection")
    branch = get_branch("lidar_detection")(read_sidecar(folder)["branch_config"])
    samples = _samples(branch, set_sources(eval_config, set_name), cache_dir, False)
    table = np.zeros((len(STATES), len(STATES)), np.int64)
    without_truth = 0
    classes = branch.net_config.classes
    for s in samples:
        truth = gt_boxes(s["boxes"], classes, s.get("box_occlusion"))
        scan = with_difficulty(gt_boxes(s["boxes"], classes), s["points"], np.asarray(s["sensor_origin"], np.float64))
        for t, m, n in zip(truth, scan, points_in_boxes(truth, s["points"][:, :3]), strict=True):
            if t.label != "car" or n == 0:
                continue
            if t.occlusion < 0:
                without_truth += 1
                continue
            table[t.occlusion, m.occlusion] += 1
    return {"set": set_name, "frames": len(samples), "cars": int(table.sum()), "cars_without_truth": without_truth,
            "same_state": int(np.trace(table)), "truth_rows_scan_columns": table.tolist(),
            "scan_more_occluded": int(np.triu(table, 1).sum()), "scan_less_occluded": int(np.tril(table, -1).sum())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="lidar_detection",
                   help="weights folder or packaged name, for its branch config (default: the packaged lidar_detection)")
    p.add_argument("--eval-config", type=Path, default=REPO / "configs/train/lidar_detection_eval_v16.yaml",
                   help="eval config whose sets are graded (default: configs/train/lidar_detection_eval_v16.yaml; its "
                        "scenes are generated into the bag cache on first use, a few minutes)")
    p.add_argument("--set", dest="set_name", action="append", default=None,
                   help="a set of the eval config (repeat; default: every set under `sets`)")
    a = p.parse_args(argv)
    names = a.set_name or list((yaml.safe_load(a.eval_config.read_text()).get("sets") or {}))
    res = [occlusion_confusion(a.weights, a.eval_config, name) for name in names]
    for r in res:
        print(f"{r['set']}: {r['same_state']} of {r['cars']} cars in the same state; the scan says more occluded for "
              f"{r['scan_more_occluded']}, less for {r['scan_less_occluded']} (rows truth 0-3, columns scan: "
              f"{r['truth_rows_scan_columns']}); {r['cars_without_truth']} cars without truth")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
