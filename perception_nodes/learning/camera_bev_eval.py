"""Score a trained camera -> BEV network on held-out generated scenes and the real KITTI frames; package it.

    python -m perception_nodes.learning.camera_bev_eval --run out/train/camera_bev \
        [--package perception_nodes/models/weights/camera_bev] [--out metrics.json]
    python -m perception_nodes.learning.camera_bev_eval [--weights DIR] [--out metrics.json]

``--run``: a training run folder (config.json + model.safetensors); ``--weights``: a packaged weights
folder (model.safetensors + model.json, as the node loads; default the packaged
``perception_nodes/models/weights/camera_bev``), its training data taken from the sidecar's training
config (for the constant-rate baseline).

**Generated test scenes** (``--test``; default seeds 200-202 of the three scenarios, 4 s each at 320 x 96,
disjoint from the training and validation seeds of ``configs/train/camera_bev.yaml``): the branch's own
targets and mask (visible in the ground truth and inside the camera's coverage). Scores over all masked
cells of all frames: occupied-class IoU / precision / recall at P > 0.5, Brier score and ECE of
P = (r + 1) / (r + s + 2). Trivial baselines on the same cells: ``all_occupied`` (P = 1), ``all_free``
(P = 0) and ``constant_rate`` (P = the occupied fraction of the *training* frames' masked cells, the best
constant a model could learn; its IoU is 0 since it is below 0.5).

**Real KITTI frames** (``../shared/data/kitti_object_vis``, 3 frames): the left colour image resized to
the network's 320-px width (K scaled, as the node does), camera 2's calibration, base_link the ground
below the Velodyne. There is no occupancy ground truth; the reference is the *LiDAR-derived* grid of the
same frame (the project's ground segmentation and inverse sensor model on the full scan, i.e. what the
geometric occupancy node publishes): a cell is occupied where the LiDAR's occupied evidence exceeds its
free evidence, free where the opposite holds, scored where the LiDAR has at least ``min_evidence`` and the
camera's coverage reaches, up to ``max_range_m``. That is agreement with another sensor's estimate, not
accuracy; the same baselines are given on the same cells.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception_nodes.learning.branches.camera_bev import CameraBevBranch
from perception_nodes.learning.config import BagSource
from perception_nodes.learning.data import SHARED_DATA, default_cache_dir, load_split
from perception_nodes.learning.metrics import expected_calibration_error, occupancy_scores

__all__ = ["TEST_SOURCES", "EvalSourceError", "evaluate_generated", "evaluate_kitti", "load_for_eval", "main", "score"]

_GEN = {"duration_s": 4.0, "lidar": "hdl64", "cameras": True, "camera_resolution": [320, 96]}
#: held-out generated scenes (seeds used nowhere else)
TEST_SOURCES = [{"generate": {"scenario": sc, "seed": seed, **_GEN}, "stride": 2}
                for sc, seed in (("urban_street", 200), ("curved_road", 201), ("highway", 202))]
KITTI = SHARED_DATA / "kitti_object_vis/data/object/training"


def score(p: np.ndarray, y: np.ndarray, *, threshold: float = 0.5, bins: int = 10) -> dict[str, float]:
    """IoU / precision / recall at ``threshold``, Brier and ECE of probabilities ``p`` vs labels ``y``."""
    p, y = np.asarray(p, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    out = {k: float(v) for k, v in occupancy_scores(p, y, None, threshold=threshold).items()}
    out["brier"] = float(np.mean((p - y) ** 2)) if p.size else math.nan
    out["ece"] = float(expected_calibration_error(p, y, None, bins=bins)) if p.size else math.nan
    out["cells"] = float(p.size)
    return out


def _with_baselines(p: np.ndarray, y: np.ndarray, rate: float) -> dict[str, Any]:
    return {"model": score(p, y), "all_occupied": score(np.ones_like(y), y), "all_free": score(np.zeros_like(y), y),
            "constant_rate": {**score(np.full_like(y, rate, dtype=np.float64), y), "rate": rate},
            "occupied_fraction": float(np.mean(y)) if y.size else math.nan}


@torch.no_grad()
def _probs(branch: CameraBevBranch, model: torch.nn.Module, samples: Sequence[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    ps, ys = [], []
    for i in range(0, len(samples), 8):
        chunk = samples[i: i + 8]
        batch = {k: torch.from_numpy(np.stack([s[k] for s in chunk])) for k in chunk[0]}
        out = branch.forward(model, batch)
        ev = out.occupancy_evidence.double()
        p = (ev[:, 0] + 1.0) / (ev[:, 0] + ev[:, 1] + 2.0)
        m = branch._mask(out, batch)
        ps.append(p[m].numpy())
        ys.append(batch["occupied"][m].double().numpy())
    return np.concatenate(ps), np.concatenate(ys)


def train_rate(branch: CameraBevBranch, model: torch.nn.Module, samples: Sequence[dict[str, np.ndarray]]) -> float:
    """Occupied fraction of the masked cells of training frames (the constant-rate baseline's P)."""
    cov = None
    occ = n = 0.0
    for s in samples:
        if cov is None:
            h, w = s["image"].shape[1:]
            cov = model.coverage(branch._geometry(model, (h, w))).numpy()
        m = cov & (s["visible"] > 0.5)
        occ += float(s["occupied"][m].sum())
        n += float(m.sum())
    return occ / n if n else math.nan


def evaluate_generated(branch: CameraBevBranch, model: torch.nn.Module, sources: Sequence[dict[str, Any]],
                       rate: float, cache_dir: Path | None = None) -> dict[str, Any]:
    srcs = [BagSource(**s) for s in sources]
    data = load_split(srcs, branch, cache_dir=cache_dir or default_cache_dir(), role="test", progress=False)
    model.eval()
    p, y = _probs(branch, model, data.samples)
    return {"frames": len(data.samples), "bags": [b.name for b in data.bags], **_with_baselines(p, y, rate)}


@torch.no_grad()
def evaluate_kitti(model: Any, root: Path = KITTI, *, rate: float, width: int = 320, min_evidence: float = 1.0,
                   max_range_m: float = 40.0) -> dict[str, Any]:
    """Camera grid vs the LiDAR-derived grid of each real KITTI frame (see the module docstring)."""
    import cv2

    from perception_nodes.datasets.kitti import read_kitti_object
    from perception_nodes.graph.camera_bev import scaled_intrinsics
    from perception_nodes.models.camera_bev import kitti_camera_geometry
    from perception_nodes.pipeline.ground import estimate_ground
    from perception_nodes.pipeline.occupancy import GridSpec, evidential_occupancy

    model.eval()
    cfg = model.config
    occ = cfg.occupancy_grid
    spec = GridSpec(occ.cell, occ.size_x, occ.size_y, (occ.origin_x, occ.origin_y))
    cx, cy = spec.cell_centers()
    near = np.hypot(cx, cy) <= max_range_m
    ps, ys, frames = [], [], []
    for f in read_kitti_object(root):
        cam = f.cameras.get("CAM2")
        if cam is None:
            continue
        bgr = cv2.imread(str(cam["image_path"]))
        h0, w0 = bgr.shape[:2]
        h = int(round(h0 * width / w0))
        rgb = cv2.cvtColor(cv2.resize(bgr, (width, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        calib = f.extras["calib"]
        # camera 2 at the resized scale: K scaled; P's translation kept in metres via the unscaled K
        geo0 = kitti_camera_geometry(calib, f.lidar_to_base, (h0, w0), cfg.stride)
        K = scaled_intrinsics(np.asarray(geo0.K).reshape(3, 3), (h0, w0), (h, width))
        geom = model.geometry(model.camera_geometry(K, np.asarray(geo0.base_from_camera).reshape(4, 4), (h, width)))
        out = model(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0), geom)
        ev = out.occupancy_evidence[0].double().numpy()
        p = (ev[0] + 1.0) / (ev[0] + ev[1] + 2.0)
        pts = np.asarray(f.points[:, :3], np.float64) @ f.lidar_to_base[:3, :3].T + f.lidar_to_base[:3, 3]
        ground = estimate_ground(pts)
        grid = evidential_occupancy(pts, ground.mask, f.lidar_to_base[:3, 3], spec, height_above_ground=ground.height)
        r, s = grid.occupied, grid.free
        m = ((r + s) >= min_evidence) & (r != s) & out.coverage.numpy() & near
        ps.append(p[m])
        ys.append((r > s)[m].astype(np.float64))
        frames.append(f.frame_id)
    if not frames:
        return {}
    p, y = np.concatenate(ps), np.concatenate(ys)
    return {"frames": frames, "reference": "LiDAR-derived grid (geometric inverse sensor model on the full scan)",
            "image_width": width, "max_range_m": max_range_m, **_with_baselines(p, y, rate)}


class EvalSourceError(ValueError):
    """The folder to score is neither a training run nor a camera_bev weights folder (or is broken)."""


def load_for_eval(run: Path | None = None, weights: Path | None = None) -> tuple[CameraBevBranch, Any, list[BagSource]]:
    """(branch, model in eval mode, training sources) from a training run folder or a packaged weights
    folder (default the packaged one); :class:`EvalSourceError` saying what the folder is not."""
    from perception_nodes.learning.config import load_config

    if run is not None:
        if not (run / "config.json").is_file() or not (run / "model.safetensors").is_file():
            hint = " (it looks like a weights folder: use --weights)" if (run / "model.json").is_file() else ""
            raise EvalSourceError(f"{run} is not a training run folder: it needs config.json and model.safetensors{hint}")
        from perception_nodes.learning.trainer import load_trained

        cfg = load_config(run / "config.json")
        branch, model = load_trained(run / "model.safetensors")
        if not isinstance(branch, CameraBevBranch):
            raise EvalSourceError(f"{run} is a training run of the {branch.name} branch, not camera_bev")
        return branch, model.eval(), list(cfg.data.train)
    from perception_nodes.models.camera_bev import NETWORK, load_camera_bev
    from perception_nodes.models.weights_io import WeightsError, default_weights_dir

    folder = weights if weights is not None else default_weights_dir(NETWORK)
    try:
        net, side = load_camera_bev(folder)
    except WeightsError as exc:
        hint = " (it looks like a training run folder: use --run)" if (Path(folder) / "config.json").is_file() else ""
        raise EvalSourceError(f"{folder} is not a camera_bev weights folder: {exc}{hint}") from None
    training = (side.get("training") or {}).get("config")
    if not training:
        raise EvalSourceError(f"{folder}: its model.json has no training config, so the training frames of the "
                              "constant-rate baseline are unknown; score the training run with --run")
    cfg = load_config(training)
    sections = {k: v for k, v in dict(cfg.branch_sections or {}).items() if k in CameraBevBranch.sections}
    sections["model"] = side.get("config") or {}
    branch = CameraBevBranch(sections)
    return branch, net.eval(), list(cfg.data.train)


def _table(name: str, res: dict[str, Any]) -> str:
    rows = [f"{name}: {res.get('frames')} frames, occupied fraction {res.get('occupied_fraction', float('nan')):.3f}"]
    for k in ("model", "all_occupied", "all_free", "constant_rate"):
        v = res[k]
        rows.append(f"  {k:14s} IoU {v['iou']:.3f}  precision {v['precision']:.3f}  recall {v['recall']:.3f}  "
                    f"Brier {v['brier']:.4f}  ECE {v['ece']:.3f}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, help="training run folder (config.json + model.safetensors)")
    src.add_argument("--weights", type=Path, help="packaged weights folder (model.safetensors + model.json); "
                     "default, without --run: the packaged perception_nodes/models/weights/camera_bev")
    ap.add_argument("--package", type=Path, default=None, help="write the weights + sidecar (with these metrics) here")
    ap.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")
    ap.add_argument("--no-kitti", action="store_true", help="skip the real KITTI frames")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.package and args.run is None:
        ap.error("--package needs --run (the training history goes into the sidecar)")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        branch, model, train_sources = load_for_eval(args.run, args.weights)
    except EvalSourceError as exc:
        ap.error(str(exc))
    train = load_split(train_sources, branch, cache_dir=default_cache_dir(), role="train", progress=False)
    rate = train_rate(branch, model, train.samples)
    metrics: dict[str, Any] = {"generated_test": evaluate_generated(branch, model, TEST_SOURCES, rate)}
    print(_table("generated test (seeds 200-202)", metrics["generated_test"]))
    if not args.no_kitti and KITTI.is_dir():
        metrics["kitti"] = evaluate_kitti(model, rate=rate)
        print(_table("KITTI vs LiDAR-derived grid", metrics["kitti"]))
    metrics["seconds"] = round(time.time() - t0, 1)
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    if args.package:
        from perception_nodes.models.camera_bev import NETWORK
        from perception_nodes.models.weights_io import save_weights

        history = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        training = {"config": json.loads((args.run / "config.json").read_text()), "epochs": len(history),
                    "train_seconds": round(sum(h.get("train_seconds", 0) + h.get("eval_seconds", 0) for h in history), 1),
                    "val_last_epoch": history[-1].get("val") if history else None}
        save_weights(model, args.package, network=NETWORK, config=model.config, training=training, metrics=metrics)
        print(f"packaged into {args.package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
