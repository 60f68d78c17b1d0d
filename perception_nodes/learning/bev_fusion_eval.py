"""Held-out evaluation of the BEVFusion-style fuser in every input mode, beside the LiDAR branch alone.

``python -m perception_nodes.learning.bev_fusion_eval --run out/train/bev_fusion [--metrics-out FILE]``
(``--run`` omitted: the fuser at its identity initialisation, i.e. the packaged weights untouched).

Scored on held-out generated scenes (:data:`HELD_OUT`: seeds 500-502, in no ``configs/train/*.yaml`` but the LiDAR box
head rule's report sets, scored there only (:data:`perception_nodes.eval.scored_only.SCORED_ONLY`);
:func:`check_held_out` reads every training config and refuses otherwise; ``--seeds A B C`` scores the
same three scenario types at other seeds, e.g. the fresh set 700-702, scored once after 500-502 had been
looked at many times; ``--weights DIR`` scores a packaged fused network), with the LiDAR branch's
:class:`~perception_nodes.learning.detection_metrics.DetectionAccumulator` (KITTI AP R40 on BEV and 3D,
occupancy IoU/ECE on visible cells) plus the occupancy Brier score; occupancy also restricted to the
camera's coverage (the cells its frustum reaches: all a camera-only network can know). Rows:

* ``lidar_branch``: the packaged ``lidar_detection`` network alone (the reference), as the fuser's encoder
  reads it: without the context margin the LiDAR node uses (``context_margin_m``; docs/lidar_branch.md);
* ``fused_both``, ``fused_lidar``, ``fused_camera``: the fused network with both inputs, LiDAR only
  (camera missing), camera only (LiDAR missing);
* ``camera_branch_occupancy``: the packaged ``camera_bev`` network's own occupancy (no detections);
* trivial baselines: no detections (AP 0), occupancy "all free" and a constant P = the occupied share
  of visible cells on the validation bag (not the held-out frames).
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

from perception_nodes.eval.scored_only import checked_part
from perception_nodes.learning.branches.bev_fusion import BevFusionBranch
from perception_nodes.learning.config import BagSource

__all__ = ["HELD_OUT", "check_held_out", "evaluate", "main", "package"]

_CAM = {"lidar": "hdl64", "cameras": True, "camera_resolution": [320, 96], "duration_s": 4.0}
#: held-out scenes (scenario, seed): new layouts of the three scenario types
HELD_OUT = (("urban_street", 500), ("curved_road", 501), ("highway", 502))
REPO = Path(__file__).resolve().parents[2]


def check_held_out(scenes: Sequence[tuple[str, int]] = HELD_OUT, configs: Path = REPO / "configs" / "train") -> None:
    """ValueError if a held-out (scenario, seed) appears in any training/evaluation config (the report ``sets`` of
    the files in :data:`perception_nodes.eval.scored_only.SCORED_ONLY` excepted)."""
    used: set[tuple[str, int]] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "scenario" in x and "seed" in x:
                used.add((str(x["scenario"]), int(x["seed"])))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for f in sorted(configs.glob("*.yaml")):
        walk(checked_part(f))
    clash = sorted(set(scenes) & used)
    if clash:
        raise ValueError(f"held-out scenes {clash} appear in configs/train: not held out")


def _sources(scenes: Sequence[tuple[str, int]], stride: int) -> list[BagSource]:
    return [BagSource(generate={"scenario": s, "seed": k, **_CAM}, stride=stride) for s, k in scenes]


def _occ(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if p.size == 0:
        return {"occ_iou": math.nan, "occ_brier": math.nan, "cells": 0.0}
    pred = p > 0.5
    union = float((pred | y).sum())
    return {"occ_iou": float((pred & y).sum()) / union if union else math.nan,
            "occ_brier": float(np.mean((p - y) ** 2)), "cells": float(p.size)}


class _Occ:
    """Occupancy P vs truth on visible cells, and on visible cells inside the camera coverage."""

    def __init__(self) -> None:
        self.p: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        self.pc: list[np.ndarray] = []
        self.yc: list[np.ndarray] = []

    def add(self, ev: torch.Tensor, sample: dict[str, np.ndarray], coverage: np.ndarray) -> None:
        e = ev.double().cpu().numpy()
        p = (e[0] + 1.0) / (e[0] + e[1] + 2.0)
        vis, occ = sample["visible"] > 0, sample["occupied"] > 0
        self.p.append(p[vis]); self.y.append(occ[vis])
        m = vis & coverage
        self.pc.append(p[m]); self.yc.append(occ[m])

    def results(self) -> dict[str, float]:
        a = _occ(np.concatenate(self.p), np.concatenate(self.y))
        c = _occ(np.concatenate(self.pc), np.concatenate(self.yc))
        return {**a, **{f"{k}_camera_fov": v for k, v in c.items()}}


@torch.no_grad()
def evaluate(branch: BevFusionBranch, model: Any, samples: Sequence[dict[str, np.ndarray]],
             rate: float) -> dict[str, dict[str, float]]:
    """Every row of the module docstring on ``samples`` (prepared by ``branch``)."""
    from perception_nodes.learning.detection_metrics import DetectionAccumulator
    from perception_nodes.pipeline.box_refine import BoxRefinement
    from perception_nodes.models.bev_fusion import from_packaged

    model.eval()
    ref = from_packaged().eval()  # the packaged LiDAR and camera networks, untouched
    h, w = samples[0]["image"].shape[1:]
    geo = branch.geometry(ref, (h, w))
    cov = ref.camera.coverage(geo).numpy()
    rows: dict[str, Any] = {}
    # boxes as decoded: the bev_fusion node does not refine its boxes (and the camera-only rows never saw the points)
    accs = {k: DetectionAccumulator(branch.lidar_branch, refinement=BoxRefinement(enabled=False), box_head=None)
            for k in ("lidar_branch", "fused_both", "fused_lidar", "fused_camera")}
    occs = {k: _Occ() for k in (*accs, "camera_branch_occupancy", "all_free", "constant_rate")}
    secs = {k: 0.0 for k in accs}
    for s in samples:
        pts = torch.from_numpy(np.asarray(s["points"]))
        img = torch.from_numpy(s["image"])[None]
        t = time.perf_counter()
        out = ref.lidar([pts])
        secs["lidar_branch"] += time.perf_counter() - t
        accs["lidar_branch"].add(out, [s]); occs["lidar_branch"].add(out.occupancy_evidence[0], s, cov)
        for mode in ("both", "lidar", "camera"):
            batch = {"image": img, "points": [pts]}
            t = time.perf_counter()
            o = branch.forward(model, batch, mode).detection
            secs[f"fused_{mode}"] += time.perf_counter() - t
            accs[f"fused_{mode}"].add(o, [s]); occs[f"fused_{mode}"].add(o.occupancy_evidence[0], s, cov)
        cam = ref.camera(img, geo)
        occs["camera_branch_occupancy"].add(cam.occupancy_evidence[0], s, cov)
        shape = s["visible"].shape
        occs["all_free"].add(torch.tensor(np.stack([np.zeros(shape), np.full(shape, 1e6)])), s, cov)
        # Beta evidence with mean `rate` and large strength: P = rate everywhere
        occs["constant_rate"].add(torch.tensor(np.stack([np.full(shape, rate * 1e6 - 1), np.full(shape, (1 - rate) * 1e6 - 1)])), s, cov)
    keys = ("frames", "car_n_gt", "detections", "car_ap_bev", "car_ap_3d", "pedestrian_ap_bev", "occupancy_iou",
            "occupancy_ece", "ece_class", "auroc_vacuity")
    for k, acc in accs.items():
        r = acc.results()
        rows[k] = {**{kk: r.get(kk, math.nan) for kk in keys}, **occs[k].results(),
                   "ms_per_frame": 1000.0 * secs[k] / len(samples)}
    for k in ("camera_branch_occupancy", "all_free", "constant_rate"):
        rows[k] = occs[k].results()
    rows["constant_rate"]["rate"] = rate
    rows["no_detections"] = {"car_ap_bev": 0.0, "car_ap_3d": 0.0}
    return rows


def _table(rows: dict[str, dict[str, float]]) -> str:
    cols = ("car_ap_bev", "car_ap_3d", "occ_iou", "occ_brier", "occ_iou_camera_fov", "occ_brier_camera_fov", "ms_per_frame")
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join("-" if not isinstance(r.get(c), float) or math.isnan(r[c]) else f"{r[c]:.3f}"
                                                 for c in cols) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Rows and metrics: see the module docstring of perception_nodes.learning.bev_fusion_eval.")
    ap.add_argument("--run", type=Path, default=None, help="training run folder (or its model.safetensors); "
                    "omitted: the identity-initialised fuser on the packaged weights")
    ap.add_argument("--weights", type=Path, default=None, help="score a packaged fused-network weights folder "
                    "instead of a training run (e.g. perception_nodes/models/weights/bev_fusion)")
    ap.add_argument("--stride", type=int, default=2, help="use every n-th LiDAR frame of the held-out bags")
    ap.add_argument("--seeds", type=int, nargs=3, default=None, metavar=("URBAN", "CURVED", "HIGHWAY"),
                    help="seeds of the three held-out scenes (urban_street, curved_road, highway); default "
                    + " ".join(str(k) for _, k in HELD_OUT) + " (checked against configs/train like the default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--metrics-out", type=Path, default=None, help="JSON output (default: <run>/bev_fusion_heldout.json)")
    ap.add_argument("--package", type=Path, default=None, help="write the run's network (all of it: encoders, fuser, "
                    "heads) with these metrics as a weights folder (safetensors + sidecar)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from perception_nodes.learning.data import default_cache_dir, load_split

    scenes = HELD_OUT if args.seeds is None else tuple((s, k) for (s, _), k in zip(HELD_OUT, args.seeds))
    check_held_out(scenes)
    if args.run is not None and args.weights is not None:
        ap.error("--run and --weights are exclusive")
    if args.weights is not None:
        from perception_nodes.models.bev_fusion import load_bev_fusion

        branch = BevFusionBranch({})
        model = load_bev_fusion(args.weights)[0].eval()
    elif args.run is not None:
        from perception_nodes.learning.trainer import load_trained

        branch, model = load_trained(args.run)
        assert isinstance(branch, BevFusionBranch)
    else:
        branch = BevFusionBranch({})
        model = branch.build_model().eval()
    cache = default_cache_dir()
    samples = load_split(_sources(scenes, args.stride), branch, cache_dir=cache, role="test", progress=False).samples
    val = load_split([BagSource(generate={"scenario": "urban_street", "seed": 100, **_CAM}, stride=4)], branch,
                     cache_dir=cache, role="val", progress=False).samples
    vis = np.concatenate([(s["visible"] > 0).ravel() for s in val])
    occ = np.concatenate([(s["occupied"] > 0).ravel() for s in val])
    rate = float(occ[vis].mean())
    rows = evaluate(branch, model, samples, rate)
    res = {"held_out": [f"{s} seed {k}" for s, k in scenes], "stride": args.stride, "frames": len(samples),
           "run": str(args.run) if args.run else (f"weights {args.weights}" if args.weights else "identity init"),
           "rows": rows}
    print(_table(rows))
    name = "bev_fusion_heldout.json" if scenes == HELD_OUT else f"bev_fusion_heldout_{'-'.join(str(k) for _, k in scenes)}.json"
    out = args.metrics_out or ((args.run if args.run and args.run.is_dir() else Path("out")) / name)
    if args.weights is not None and args.metrics_out is None:
        out = Path("out") / f"{args.weights.name}_{name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=lambda x: None) + "\n")
    print(f"metrics: {out}")
    if args.package is not None:
        package(branch, model, args.package, res, args.run)
        print(f"packaged: {args.package}")
    return 0


def package(branch: BevFusionBranch, model: Any, folder: Path, metrics: dict[str, Any], run: Path | None) -> Path:
    """The whole fused network as a weights folder (:func:`~perception_nodes.models.weights_io.save_weights`)."""
    from perception_nodes.models.bev_fusion import NETWORK
    from perception_nodes.models.weights_io import save_weights

    training: dict[str, Any] = {"branch_config": branch.describe()}
    if run is not None:
        rd = run if run.is_dir() else run.parent
        cfg = rd / "config.json"
        if cfg.is_file():
            training["config"] = json.loads(cfg.read_text())
        hist = rd / "metrics.jsonl"
        if hist.is_file():
            recs = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
            training["epochs"] = len(recs)
            training["train_seconds"] = sum(r.get("train_seconds", 0.0) for r in recs)
            training["last_epoch_validation"] = recs[-1].get("val") if recs else None
    return save_weights(model, folder, network=NETWORK, config=model.fusion_config, training=training, metrics=metrics)


if __name__ == "__main__":
    raise SystemExit(main())
