"""Train the learned box head (:mod:`perception_nodes.models.box_head`) on the LiDAR branch's own car boxes.

    perception-stack train-box-head --config configs/train/lidar_box_head.yaml

What it does, in order (the config's keys in brackets):

1. runs the detector (``detector``: a weights folder or packaged name) over every frame of the generated scenes
   (``data``: generate lines as in the training configs; drawn here for the first time, so the detector's boxes
   have the errors it makes on scenes it was not trained on), decodes with the folder's calibration and the
   branch's threshold, and refines the car boxes geometrically (``box_refinement``: the node's params, default on),
   as the node does before the head;
2. matches each car box, highest score first, to the nearest unmatched true car within ``match_radius_m`` of its
   BEV centre, and keeps the matched boxes with at least ``head.min_points`` points around them as samples, with
   the box-frame residual to the truth as target (boxes more than 45 degrees off are dropped: their residual is
   not a correction but a different box);
3. trains the head (``train``: epochs, batch size, learning rate with one cycle, AdamW, seed) on a smooth L1 loss,
   with two augmentations: a mirror about the box's x axis, and a jitter of the input box (shift, turn, scale)
   with the target moved to match, so the head sees boxes a little worse than the refinement leaves them;
4. writes ``model.safetensors`` + ``model.json`` (the head's config, this config, sample counts, final loss,
   code version) into ``out``.

Deterministic for a given config on one thread (seeded sampling, seeded torch). The generated scenes are cached as
the training's are: about 15 min on a 2-core machine to generate the packaged config's 56 scenes the first time;
then about 2 min to collect the samples and 10 min to train, at one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

__all__ = ["box_residual", "collect_samples", "greedy_match", "main", "match_cars", "train_head"]


def greedy_match(xy: np.ndarray, score: np.ndarray, truth_xy: np.ndarray, radius: float) -> dict[int, int]:
    """Detection row -> truth row: highest score first, each detection takes the nearest unmatched truth within
    ``radius`` metres of its BEV centre (ties: the later truth row), the branch's matching rule."""
    used: set[int] = set()
    out: dict[int, int] = {}
    for i in sorted(range(len(xy)), key=lambda i: -float(score[i])):
        best, bd = -1, radius
        for j in range(len(truth_xy)):
            if j not in used:
                d = math.hypot(float(xy[i][0]) - float(truth_xy[j][0]), float(xy[i][1]) - float(truth_xy[j][1]))
                if d <= bd:
                    best, bd = j, d
        if best >= 0:
            used.add(best)
            out[i] = best
    return out


def match_cars(det: Any, gt: Sequence[Any], radius: float) -> dict[int, int]:
    """Car detection index of ``det`` (Detections) -> index of the true car in ``gt`` (:func:`greedy_match`)."""
    if "car" not in det.class_names:
        return {}
    rows = np.flatnonzero(det.label == det.class_names.index("car"))
    cars = [j for j, g in enumerate(gt) if g.label == "car"]
    m = greedy_match(det.center[rows, :2], det.score[rows], [gt[j].center[:2] for j in cars], radius)
    return {int(rows[i]): cars[j] for i, j in m.items()}


def box_residual(centre: Sequence[float], size: Sequence[float], yaw: float, truth: Any) -> np.ndarray | None:
    """The head's target: the true box relative to the given one, in its frame (dx, dy, dz, log size ratios,
    dyaw modulo 180 degrees); None when the headings are more than 45 degrees apart."""
    dyaw = (truth.yaw - yaw + math.pi / 2) % math.pi - math.pi / 2
    if abs(dyaw) > math.pi / 4:
        return None
    d = np.asarray(truth.center, np.float64) - np.asarray(centre, np.float64)
    c, s = math.cos(-yaw), math.sin(-yaw)
    ratio = np.log(np.asarray(truth.size, np.float64) / np.asarray(size, np.float64))
    return np.array([c * d[0] - s * d[1], s * d[0] + c * d[1], d[2], *ratio, dyaw], np.float32)


def collect_samples(cfg: dict[str, Any], progress: bool = True) -> tuple[tuple[np.ndarray, ...], np.ndarray, dict]:
    """Raw head inputs and targets of every matched car box of the config's scenes (step 1-2 of the module)."""
    import torch

    from perception_nodes.learning.branches import get_branch
    from perception_nodes.learning.data import default_cache_dir, load_split
    from perception_nodes.learning.detection_metrics import DetectionAccumulator, gt_boxes
    from perception_nodes.learning.lidar_detection_eval import _sources
    from perception_nodes.models.box_head import BoxHeadConfig, box_inputs
    from perception_nodes.models.calibration import DetectionCalibration
    from perception_nodes.models.weights_io import load_lidar_detection, resolve_weights_folder
    from perception_nodes.pipeline.box_refine import BoxRefinement

    head_cfg = BoxHeadConfig.from_mapping(cfg.get("head") or {})
    folder = resolve_weights_folder(cfg.get("detector", "lidar_detection"), "lidar_detection")
    model, side = load_lidar_detection(folder)
    branch = get_branch("lidar_detection")(side["branch_config"])
    refinement = BoxRefinement.from_mapping(cfg.get("box_refinement"), "box_refinement")
    # the boxes as the node hands them to the head: refined, and no head applied yet
    acc = DetectionAccumulator(branch, calibration=DetectionCalibration.from_sidecar(side), threshold_on_raw_score=True,
                               refinement=refinement, box_head=None)
    sources = _sources(cfg["data"], "data")
    samples = load_split(sources, branch, cache_dir=default_cache_dir(), role="train", progress=progress).samples
    radius = float(cfg.get("match_radius_m", 1.5))
    parts: list[tuple[np.ndarray, ...]] = []
    targets: list[np.ndarray] = []
    stats = {"frames": len(samples), "car_boxes": 0, "matched": 0, "samples": 0}
    with torch.no_grad():
        for s in samples:
            origin = np.asarray(s["sensor_origin"], np.float64)
            det = acc.decode(model([torch.from_numpy(s["points"])]), [s["points"]], [origin[:2]])[0]
            gt = gt_boxes(s["boxes"], branch.net_config.classes, s.get("box_occlusion"))
            match = match_cars(det, gt, radius)
            stats["car_boxes"] += int((np.asarray(det.label) == det.class_names.index("car")).sum()) if "car" in det.class_names else 0
            stats["matched"] += len(match)
            idx, raw = box_inputs(det, s["points"], head_cfg, origin[:2])
            for k, i in enumerate(idx.tolist()):
                if i not in match:
                    continue
                t = box_residual(det.center[i], det.size[i], float(det.yaw[i]), gt[match[i]])
                if t is None:
                    continue
                parts.append(tuple(a[k] for a in raw))
                targets.append(t)
    if not targets:
        raise ValueError("no matched car box with enough points in the config's scenes: nothing to train on")
    stats["samples"] = len(targets)
    raw_all = tuple(np.stack([p[j] for p in parts]) for j in range(4))
    from perception_nodes.models.box_head import weights_sha256

    return raw_all, np.stack(targets), {**stats, "detector": str(folder), "detector_sha256": weights_sha256(folder),
                                        "box_refinement": {**dataclasses.asdict(refinement), "classes": list(refinement.classes)}}


def _jitter(pts, size, sensor, t, gen, shift: float, turn: float, scale: float):
    """Move each input box by a random shift (x, y; half of it in z), turn and log-scale, and the target with it."""
    import torch

    n = len(pts)
    d = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift
    dz = (torch.rand(n, generator=gen) * 2 - 1) * shift * 0.5
    a = (torch.rand(n, generator=gen) * 2 - 1) * turn
    ls = (torch.rand(n, 3, generator=gen) * 2 - 1) * scale
    c, s = torch.cos(-a)[:, None], torch.sin(-a)[:, None]

    def rot(x, y):
        return c * x - s * y, s * x + c * y

    px, py = rot(pts[..., 0] - d[:, :1], pts[..., 1] - d[:, 1:])
    pts = torch.stack([px, py, pts[..., 2] - dz[:, None], pts[..., 3]], -1)
    sx, sy = rot((sensor[:, 0] - d[:, 0])[:, None], (sensor[:, 1] - d[:, 1])[:, None])
    tx, ty = rot((t[:, 0] - d[:, 0])[:, None], (t[:, 1] - d[:, 1])[:, None])
    t = torch.cat([tx, ty, (t[:, 2] - dz)[:, None], t[:, 3:6] - ls, (t[:, 6] - a)[:, None]], 1)
    return pts, size * ls.exp(), torch.cat([sx, sy], 1), t


def train_head(raw: tuple[np.ndarray, ...], targets: np.ndarray, head_cfg: Any, params: dict[str, Any],
               progress: bool = True) -> tuple[Any, list[float]]:
    """Step 3 of the module: the trained torch head and the mean loss of every epoch."""
    import torch
    from torch import nn

    from perception_nodes.models.box_head import BoxHeadNet, point_features

    seed = int(params.get("seed", 0))
    epochs, bs, lr = int(params.get("epochs", 60)), int(params.get("batch_size", 256)), float(params.get("lr", 1e-3))
    jit = params.get("jitter", {"shift_m": 0.15, "turn_rad": 0.05, "log_scale": 0.05}) or {}
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = BoxHeadNet(head_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=float(params.get("weight_decay", 1e-4)))
    n = len(targets)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * ((n + bs - 1) // bs))
    X = [torch.from_numpy(np.ascontiguousarray(a)) for a in raw]
    T = torch.from_numpy(targets)
    losses = []
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for k in range(0, n, bs):
            b = perm[k:k + bs]
            pts, size, sensor, count, t = X[0][b].clone(), X[1][b].clone(), X[2][b].clone(), X[3][b], T[b].clone()
            if jit:
                pts, size, sensor, t = _jitter(pts, size, sensor, t, gen, float(jit["shift_m"]), float(jit["turn_rad"]),
                                               float(jit["log_scale"]))
            if params.get("mirror", True):
                m = torch.rand(len(b), generator=gen) < 0.5
                pts[m, :, 1] *= -1
                sensor[m, 1] *= -1
                t[m, 1] *= -1
                t[m, 6] *= -1
            loss = nn.functional.smooth_l1_loss(net(*point_features(pts, size, sensor, count, xp=torch)), t,
                                                beta=float(params.get("smooth_l1_beta", 0.05)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        losses.append(total / n)
        if progress and (ep % 10 == 9 or ep == epochs - 1):
            print(f"epoch {ep + 1}/{epochs}: loss {losses[-1]:.5f}", flush=True)
    net.eval()
    return net, losses


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="the head's training YAML (configs/train/lidar_box_head.yaml)")
    p.add_argument("--out", type=Path, default=None, help="weights folder to write (default: the config's out)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs (a quick run)")
    p.add_argument("--quiet", action="store_true", help="no progress")
    a = p.parse_args(argv)
    import torch

    from perception_nodes.models.box_head import NETWORK, BoxHeadConfig
    from perception_nodes.models.weights_io import save_weights

    cfg = yaml.safe_load(a.config.read_text()) or {}
    torch.set_num_threads(int(cfg.get("threads", 1)))
    params = dict(cfg.get("train") or {})
    if a.epochs is not None:
        params["epochs"] = a.epochs
    head_cfg = BoxHeadConfig.from_mapping(cfg.get("head") or {})
    t0 = time.time()
    raw, targets, stats = collect_samples(cfg, progress=not a.quiet)
    if not a.quiet:
        print(f"{stats['samples']} samples from {stats['frames']} frames ({stats['matched']} of {stats['car_boxes']} "
              f"car boxes matched) in {time.time() - t0:.0f} s", flush=True)
    t1 = time.time()
    net, losses = train_head(raw, targets, head_cfg, params, progress=not a.quiet)
    out = a.out or Path(cfg.get("out", "out/train/lidar_box_head"))
    training = {"config": cfg, "config_file": str(a.config), "params": params, **stats,
                "collect_s": round(t1 - t0, 1), "train_s": round(time.time() - t1, 1),
                "target_median_abs": np.median(np.abs(targets), 0).round(4).tolist()}
    save_weights(net, out, network=NETWORK, config={**dataclasses.asdict(head_cfg)}, training=training,
                 metrics={"final_loss": losses[-1], "loss_by_epoch": [round(x, 6) for x in losses]})
    if not a.quiet:
        print(json.dumps({"out": str(out), "samples": stats["samples"], "final_loss": losses[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
