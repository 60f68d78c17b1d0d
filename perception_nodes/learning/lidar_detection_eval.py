"""Held-out evaluation and packaging of a trained ``lidar_detection`` run.

``python -m perception_nodes.learning.lidar_detection_eval --run out/train/lidar_detection
--eval-config configs/train/lidar_detection_eval.yaml [--package perception_nodes/models/weights/lidar_detection]``

1. loads the run's final weights (:func:`perception_nodes.learning.trainer.load_trained`);
2. scores every named set of generated bags of the eval config with
   :class:`~perception_nodes.learning.detection_metrics.DetectionAccumulator`, plus the geometric inverse
   sensor model of the occupancy node (:func:`~perception_nodes.pipeline.occupancy.evidential_occupancy`)
   on the same visible cells as the occupancy baseline (``ism_occupancy_iou`` / ``ism_occupancy_ece``);
3. scores the real KITTI object frames (evaluation only) with the KITTI difficulty levels: KITTI labels
   exist only inside the left camera's field of view, so detections outside it (``|bearing| >
   kitti_fov_deg / 2`` or behind the car) are dropped before scoring;
4. with ``--package``, writes the weights with :func:`perception_nodes.models.weights_io.save_weights`:
   sidecar = network config, training config and data split, epochs and wall time, code version and
   these metrics.

Everything printed is also written as JSON (``--metrics-out``, default ``<run>/heldout_metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from perception_nodes.datasets.frame import Frame
from perception_nodes.learning.branches.lidar_detection import LidarDetectionBranch
from perception_nodes.learning.config import BagSource, _sources
from perception_nodes.learning.detection_metrics import DetectionAccumulator

__all__ = ["evaluate_kitti", "evaluate_sets", "main", "package_run"]


class _WithGeometricBaseline(LidarDetectionBranch):
    """The branch's samples plus P(occupied) of the geometric inverse sensor model on the same grid."""

    def prepare_frame(self, frame: Frame):  # type: ignore[override]
        sample = super().prepare_frame(frame)
        if sample is None:
            return None
        from perception_nodes.pipeline.ground import estimate_ground
        from perception_nodes.pipeline.occupancy import evidential_occupancy

        pts = sample["points"]
        est = estimate_ground(pts)
        ism = evidential_occupancy(pts, est.mask, frame.lidar_to_base[:3, 3], self.occupancy_spec,
                                   height_above_ground=est.height)
        sample["ism_occupied"] = ((ism.occupied + 1.0) / (ism.occupied + ism.free + 2.0)).astype(np.float32)
        return sample


def _ism_scores(samples: Sequence[dict[str, np.ndarray]], bins: int) -> dict[str, float]:
    from perception_nodes.learning.metrics import expected_calibration_error

    ps, ys = [], []
    for s in samples:
        if "ism_occupied" not in s:
            continue
        vis = s["visible"] > 0
        ps.append(s["ism_occupied"][vis])
        ys.append(s["occupied"][vis] > 0)
    if not ps:
        return {}
    p, y = np.concatenate(ps), np.concatenate(ys)
    pred = p > 0.5
    union = float((pred | y).sum())
    return {"ism_occupancy_iou": float((pred & y).sum()) / union if union else float("nan"),
            "ism_occupancy_ece": float(expected_calibration_error(p, y.astype(np.float64), bins=bins))}


@torch.no_grad()
def evaluate_sets(branch: LidarDetectionBranch, model: torch.nn.Module, sets: dict[str, Sequence[BagSource]],
                  *, cache_dir: Path | None = None, progress: bool = False) -> dict[str, dict[str, float]]:
    """Metrics per named set of generated bags (see the module docstring)."""
    from perception_nodes.learning.data import default_cache_dir, load_split

    ev = _WithGeometricBaseline(branch.describe())
    ev._head_grid = branch.head_grid
    out: dict[str, dict[str, float]] = {}
    model.eval()
    for name, sources in sets.items():
        data = load_split(sources, ev, cache_dir=cache_dir or default_cache_dir(), role="eval", progress=progress)
        acc = DetectionAccumulator(ev)
        for s in data.samples:
            acc.add(model([torch.from_numpy(s["points"])]), [s])
        res = acc.results()
        res.update(_ism_scores(data.samples, branch.eval_params.ece_bins))
        out[name] = res
    return out


@torch.no_grad()
def evaluate_kitti(branch: LidarDetectionBranch, model: torch.nn.Module, root: Path, *,
                   fov_deg: float = 90.0) -> dict[str, Any]:
    """KITTI AP (R40, BEV and 3D, per difficulty) on real labelled KITTI frames, detections cropped to
    the camera's field of view; also the detections per frame and the mean vacuity of their cells."""
    from perception_nodes.calibration import transform_points
    from perception_nodes.datasets.kitti import read_kitti_object
    from perception_nodes.eval.detection_eval import DetectionScorer

    scorer = DetectionScorer()
    model.eval()
    acc = DetectionAccumulator(branch, with_occupancy=False)
    n_det, vac = [], []
    for f in read_kitti_object(root):
        pts = np.asarray(f.points, np.float32)[:, :4]
        base = np.concatenate([transform_points(f.lidar_to_base, pts[:, :3]), pts[:, 3:4]], 1).astype(np.float32)
        out = model([torch.from_numpy(base)])
        det = acc.decode(out)[0]
        keep = (det.center[:, 0] > 0) & (np.abs(np.degrees(np.arctan2(det.center[:, 1], det.center[:, 0])))
                                         <= fov_deg / 2)
        boxes = [b for b, k in zip(det.to_box3d(), keep) if k]
        scorer.add_frame(f.boxes_in_base(), boxes, points=base)
        n_det.append(len(boxes))
        vac.extend(det.vacuity[keep].tolist())
    res = scorer.results()
    return {"frames": len(n_det), "fov_deg": fov_deg, "detections_per_frame": n_det,
            "mean_vacuity": float(np.mean(vac)) if vac else float("nan"),
            "kitti_levels": res["kitti"]["levels"], "per_class": res["kitti"]["per_class"],
            "counts": res["counts"]}


def _training_summary(run: Path, weights: Path | None = None) -> dict[str, Any]:
    cfg = json.loads((run / "config.json").read_text())
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if weights is not None and weights.name.startswith("epoch_"):
        hist = [h for h in hist if int(h["epoch"]) <= int(weights.name.split("_")[1])]
    secs = sum(float(h.get("train_seconds", 0)) + float(h.get("eval_seconds", 0)) for h in hist)
    return {"command": f"perception-stack train {cfg.get('branch')} --config configs/train/lidar_detection.yaml",
            "config": cfg, "split": hist[-1].get("split") if hist else None, "epochs": len(hist),
            "wall_seconds_train_and_validation": round(secs, 1),
            "last_epoch_train_loss": hist[-1].get("train") if hist else None,
            "last_epoch_validation": hist[-1].get("val") if hist else None}


def package_run(run: Path, folder: Path, metrics: dict[str, Any], *, weights: Path | None = None) -> Path:
    """Write the run's final model (or the checkpoint ``weights``) into ``folder`` with the sidecar."""
    from perception_nodes.learning.trainer import load_trained
    from perception_nodes.models.weights_io import save_weights

    branch, model = load_trained(weights or run)
    assert isinstance(branch, LidarDetectionBranch)
    return save_weights(model, folder, network="lidar_detection", config=branch.net_config,
                        training=_training_summary(run, weights), metrics=metrics,
                        extra={"branch_config": branch.describe()})


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perception_nodes.learning.lidar_detection_eval",
                                description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, default=None, help="trained run folder (model.safetensors, config.json)")
    src.add_argument("--weights", type=Path, default=None,
                     help="a weights folder (model.safetensors + model.json sidecar); default when neither is "
                          "given: the packaged perception_nodes/models/weights/lidar_detection")
    p.add_argument("--eval-config", type=Path, default=Path("configs/train/lidar_detection_eval.yaml"),
                   help="named sets of generated bags and the KITTI folder")
    p.add_argument("--metrics-out", type=Path, default=None, help="JSON output (default <run>/heldout_metrics.json, or out/lidar_detection_eval/heldout_metrics.json with --weights)")
    p.add_argument("--package", type=Path, default=None, help="also write the weights + sidecar into this folder")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="score and package this checkpoint folder of the run (default: the run's final model)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from perception_nodes.learning.trainer import load_trained

    torch.set_num_threads(args.threads)
    doc = yaml.safe_load(args.eval_config.read_text()) or {}
    sets = {name: _sources(srcs, f"sets.{name}") for name, srcs in (doc.get("sets") or {}).items()}
    if args.run is not None:
        weights = args.checkpoint or args.run
        branch, model = load_trained(weights)
    else:
        if args.package is not None or args.checkpoint is not None:
            p.error("--package and --checkpoint need --run")
        from perception_nodes.learning.branches import get_branch
        from perception_nodes.models.weights_io import default_weights_dir, load_state, read_sidecar

        weights = args.weights or default_weights_dir("lidar_detection")
        side = read_sidecar(weights, "lidar_detection")
        if "branch_config" not in side:
            p.error(f"{weights}: the sidecar has no branch_config (not written by package_run)")
        branch = get_branch("lidar_detection")(side["branch_config"])
        model = branch.build_model()
        model.load_state_dict(load_state(weights), strict=True)
        model.eval()
    assert isinstance(branch, LidarDetectionBranch)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"generated": evaluate_sets(branch, model, sets)}
    kitti = doc.get("kitti")
    if kitti and Path(kitti).exists():
        metrics["kitti"] = evaluate_kitti(branch, model, Path(kitti), fov_deg=float(doc.get("kitti_fov_deg", 90.0)))
    metrics["sets"] = {name: [s.describe() for s in srcs] for name, srcs in sets.items()}
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics = _nan_to_none(metrics)
    out = args.metrics_out or ((args.run or Path("out/lidar_detection_eval")) / "heldout_metrics.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps(metrics, indent=1, sort_keys=True))
    if args.package is not None:
        print(f"packaged: {package_run(args.run, args.package, metrics, weights=weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
