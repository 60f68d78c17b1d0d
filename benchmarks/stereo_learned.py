"""Learned stereo (``stereo_voxel``) beside classical SGBM, same inputs, same run: held-out generated frames,
the real KITTI pair, and per-pair latency.

* ``generated``: the held-out validation bags of ``configs/train/stereo_voxel.yaml`` (other seeds than
  training, all three scenarios, 320x96). Depth (abs-rel, within 3 px / 5 %, coverage) against the
  generator's disparity ground truth for the network and for SGBM (the node's parameters) on the same
  frames; frustum occupancy (IoU, Brier) on the visible cells for the network, for SGBM's BEV evidence
  (the node's model, :func:`~perception_nodes.pipeline.stereo_occupancy.stereo_evidence`) read at each
  cell's sample points (max P over the points it has evidence at; 0.5, "unknown", where it has none),
  and for the trivial baselines ``all_free`` (P = 0) and ``constant`` (P = the cells' occupied share);
* ``kitti``: the rectified pair in ``../shared/data/kitti_stereo_srcnn/demo`` against its LiDAR scan
  projected into the left image (:mod:`perception_nodes.pipeline.stereo_eval`). The network is **not** run
  at full size: it was trained at 320x96 and its planes reach 46 px of disparity, i.e. 8.4 m at KITTI's
  1242 px; the pair is resized (area) to 320x96 (the same aspect within 1 %), the disparity upsampled
  (bilinear) and scaled by 1242/320, then scored at full resolution. SGBM runs at full size (as the node
  does) and, for the same information, on the same 320x96 pair upsampled alike;
* ``kitti_grid``: the node's BEV grid of the KITTI pair in each mode (SGBM at full size; learned through the
  node's path: resized to 320x96, frustum evidence -> BEV cells) against the LiDAR occupancy model's grid of
  the same scan (no labels: a reference with its own errors), on the cells each has evidence for and on the
  cells all three know: agreement of the P > 0.5 calls, occupied precision / recall, Brier against the
  LiDAR calls; baseline: calling every such cell free;
* ``speed``: p50/p99 per pair with 1 torch / 1 OpenCV thread, interleaved within each repetition: SGBM
  at 376x1241 and 320x96; the network at 320x96, at 376x1241 input (resize + net + upsample), and at
  native 376x1248 (padded; for latency only, its quality there is not scored); and at 320x96 with
  pruning off (every fine cell refined) to show what the pruning saves;
* ``node_speed`` (``--node-threads``, default 1,2): the ``stereo_occupancy`` node's whole per-pair work at
  376x1241 in each mode, thread counts (OpenCV and torch) alternating within each repetition and both
  modes on the same pair back to back: ``sgbm`` = SGBM + depth + health + BEV evidence; ``learned`` = RGB +
  resize to 320x96 + cost volume + network (BatchNorm folded, ``torch.inference_mode``) + consistency
  health + frustum -> BEV evidence (the node's code: :mod:`perception_nodes.pipeline.stereo_learned`),
  p50 / p99 and the median of the per-repetition learned / SGBM ratios. ``--speed-only`` runs just this.
  ``--omp-passive`` sets ``OMP_WAIT_POLICY=PASSIVE`` before PyTorch loads: with the default (busy-waiting
  OpenMP workers) two torch threads on two cores that other processes also use ran the network 5-60x
  slower than one thread; passive workers do not.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks (stereo.py)

PAIR = (Path(__file__).resolve().parents[1] / "../shared/data/kitti_stereo_srcnn/demo").resolve()
CONFIG = Path(__file__).resolve().parents[1] / "configs/train/stereo_voxel.yaml"


def _sgbm_and_evidence():
    from perception_nodes.config import load_params, to_dataclass
    from perception_nodes.pipeline.stereo import SgbmParams, StereoMatcher
    from perception_nodes.pipeline.stereo_occupancy import StereoEvidenceParams

    st = load_params()["stereo_occupancy"]
    return StereoMatcher(to_dataclass(SgbmParams, st["sgbm"])), to_dataclass(StereoEvidenceParams, st["evidence"])


def _net_disparity(model, left: np.ndarray, right: np.ndarray, *, prune: bool = True) -> np.ndarray:
    import torch

    lt = torch.from_numpy(np.ascontiguousarray(left.transpose(2, 0, 1)))[None]
    rt = torch.from_numpy(np.ascontiguousarray(right.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        return model(lt, rt, prune=prune).disparity[0].numpy()


def _occ_scores(p: np.ndarray, y: np.ndarray) -> dict:
    tp, fp, fn = float(((p > 0.5) & (y > 0.5)).sum()), float(((p > 0.5) & (y < 0.5)).sum()), float(((p <= 0.5) & (y > 0.5)).sum())
    return {"iou": tp / (tp + fp + fn) if tp + fp + fn else None, "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None, "brier": float(((p - y) ** 2).mean())}


def generated(branch, model, cfg: dict) -> dict:
    import torch

    from perception_nodes.learning.config import BagSource
    from perception_nodes.learning.data import default_cache_dir, load_split
    from perception_nodes.learning.branches.stereo_voxel import generator_geometry
    from perception_nodes.pipeline.occupancy import GridSpec
    from perception_nodes.pipeline.stereo import depth_from_disparity
    from perception_nodes.pipeline.stereo_eval import depth_metrics
    from perception_nodes.pipeline.stereo_occupancy import stereo_evidence

    sources = [BagSource(**s) for s in cfg["data"]["val"]]
    samples = load_split(sources, branch, cache_dir=default_cache_dir(), role="val", progress=False).samples
    h, w = samples[0]["left"].shape[1:]
    g, T = generator_geometry(w, h)
    pts = branch.cell_points(w, h)
    matcher, ev_params = _sgbm_and_evidence()
    spec = GridSpec()
    ox, oy = spec.origin
    col = np.floor((pts[..., 0] - ox) / spec.resolution).astype(np.int64)
    row = np.floor((pts[..., 1] - oy) / spec.resolution).astype(np.int64)
    inside = (col >= 0) & (col < spec.shape[1]) & (row >= 0) & (row < spec.shape[0])
    r, c = np.clip(row, 0, spec.shape[0] - 1), np.clip(col, 0, spec.shape[1] - 1)
    z_net, z_sgbm, z_ref, p_net, p_sgbm, ys, refined, total = [], [], [], [], [], [], 0, 0
    sgbm_known: list[np.ndarray] = []
    for s in samples:
        left, right = s["left"].transpose(1, 2, 0), s["right"].transpose(1, 2, 0)
        lt, rt = torch.from_numpy(s["left"])[None], torch.from_numpy(s["right"])[None]
        with torch.no_grad():
            out = model(lt, rt)
        zn = depth_from_disparity(out.disparity[0].numpy(), g)
        zs = depth_from_disparity(matcher.disparity(np.ascontiguousarray(left), np.ascontiguousarray(right)), g)
        gt = s["disparity"]
        z_net.append(zn), z_sgbm.append(zs), z_ref.append(np.where(gt > 0, g.fb / np.maximum(gt, 1e-6), np.nan))
        m = s["visible"]
        ev = out.occupancy_evidence[0].numpy()
        p_net.append(((ev[0] + 1) / (ev.sum(0) + 2))[m])
        grid, _ = stereo_evidence(zs, g, T, spec, ev_params)
        known = ((grid.occupied + grid.free) > 0)[r, c] & inside
        prob = np.where(known, grid.probability()[r, c], -1.0).max(-1)
        p_sgbm.append(np.where(prob < 0, 0.5, prob)[m])
        sgbm_known.append((prob >= 0)[m])
        ys.append(s["occupied"][m])
        refined += out.refined_cells
        total += out.total_cells
    zr = np.concatenate(z_ref)
    zn_all, zs_all = np.concatenate(z_net), np.concatenate(z_sgbm)
    # the same pixels for both sides: where SGBM gave a depth (and the rest, SGBM's holes, for the network)
    sgbm_valid = np.isfinite(zs_all) & (zs_all > 0)
    y = np.concatenate(ys)
    f = float(y.mean())
    pn, ps, kn = np.concatenate(p_net), np.concatenate(p_sgbm), np.concatenate(sgbm_known)
    return {"frames": len(samples), "resolution": [w, h], "bags": [s["generate"] for s in cfg["data"]["val"]],
            "depth": {"learned": depth_metrics(np.concatenate(z_net), zr, g, max_depth=80.0),
                      "sgbm": depth_metrics(zs_all, zr, g, max_depth=80.0)},
            "depth_on_sgbm_valid_pixels": {"learned": depth_metrics(np.where(sgbm_valid, zn_all, np.nan), zr, g, max_depth=80.0),
                                           "sgbm": depth_metrics(zs_all, zr, g, max_depth=80.0),
                                           "learned_on_sgbm_holes": depth_metrics(np.where(sgbm_valid, np.nan, zn_all), zr, g,
                                                                                  max_depth=80.0)},
            "occupancy_visible_cells": int(y.size), "occupied_share": f,
            "occupancy": {"learned": _occ_scores(pn, y),
                          "sgbm": _occ_scores(ps, y),
                          "all_free": _occ_scores(np.zeros_like(y), y),
                          "constant": _occ_scores(np.full_like(y, f), y)},
            # the cells SGBM's grid has evidence for (its unknown 0.5 costs Brier elsewhere): both sides there
            "sgbm_known_share": float(kn.mean()),
            "occupancy_on_sgbm_known_cells": {"learned": _occ_scores(pn[kn], y[kn]), "sgbm": _occ_scores(ps[kn], y[kn]),
                                              "constant": _occ_scores(np.full_like(y[kn], float(y[kn].mean())), y[kn])},
            "refined_share": refined / total}


def _resize_pair(left: np.ndarray, right: np.ndarray, w: int, h: int):
    import cv2

    return (cv2.resize(left, (w, h), interpolation=cv2.INTER_AREA), cv2.resize(right, (w, h), interpolation=cv2.INTER_AREA))


def _upsample_disparity(d: np.ndarray, w_full: int, h_full: int) -> np.ndarray:
    import cv2

    return cv2.resize(d.astype(np.float32), (w_full, h_full), interpolation=cv2.INTER_LINEAR) * (w_full / d.shape[1])


def kitti(model, w: int, h: int) -> dict:
    from perception_nodes.pipeline.stereo import depth_from_disparity
    from perception_nodes.pipeline.stereo_eval import depth_metrics, load_kitti_pair, project_lidar_depth

    pair = load_kitti_pair(PAIR)
    g = pair.geometry
    H, W = pair.left.shape[:2]
    ref = project_lidar_depth(pair)
    matcher, _ = _sgbm_and_evidence()
    ls, rs = _resize_pair(pair.left, pair.right, w, h)
    z_net = depth_from_disparity(_upsample_disparity(_net_disparity(model, ls, rs), W, H), g)
    z_sgbm = depth_from_disparity(matcher.disparity(pair.left, pair.right), g)
    d_small = matcher.disparity(ls, rs)
    d_small = np.where(np.isfinite(d_small), d_small, -1.0)
    z_sgbm_small = depth_from_disparity(_upsample_disparity(d_small, W, H), g)
    # a disparity upsampled across an invalid neighbour is not a measurement: keep SGBM's holes
    import cv2

    holes = cv2.resize((d_small < 0).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0
    z_sgbm_small[holes] = np.nan
    med = float(np.nanmedian(ref))
    return {"size": [H, W], "net_input": [h, w], "fb_px_m": g.fb,
            "learned_320x96_upsampled": depth_metrics(z_net, ref, g),
            "sgbm_full": depth_metrics(z_sgbm, ref, g),
            "sgbm_320x96_upsampled": depth_metrics(z_sgbm_small, ref, g),
            "oracle_constant": {"depth_m": med, **depth_metrics(np.full(ref.shape, med, np.float32), ref, g)}}


def kitti_grid(weights: str | None) -> dict:
    """Both modes' BEV grids of the KITTI pair against the LiDAR model's grid (see the module doc)."""
    import torch

    from stereo import kitti_lidar_reference  # benchmarks/stereo.py: the same LiDAR reference grid

    from perception_nodes.config import load_params, to_dataclass
    from perception_nodes.models.stereo_voxel import load_stereo_voxel
    from perception_nodes.pipeline.occupancy import GridSpec
    from perception_nodes.pipeline.stereo import depth_from_disparity
    from perception_nodes.pipeline.stereo_eval import load_kitti_pair
    from perception_nodes.pipeline.stereo_learned import (
        LearnedStereoParams,
        frustum_lut,
        frustum_to_grid,
        network_input_size,
        resize_pair,
        scaled_geometry,
    )
    from perception_nodes.pipeline.stereo_occupancy import stereo_evidence

    params = load_params()
    st_p = params["stereo_occupancy"]
    spec = to_dataclass(GridSpec, params["occupancy_grid"]["grid"])
    pair = load_kitti_pair(PAIR)
    lidar = kitti_lidar_reference(pair, params, spec)
    matcher, ev_params = _sgbm_and_evidence()
    g, T = pair.geometry, pair.base_from_left()
    sgbm, _ = stereo_evidence(depth_from_disparity(matcher.disparity(pair.left, pair.right), g), g, T, spec, ev_params)
    lp = to_dataclass(LearnedStereoParams, st_p["learned"])
    net, _ = load_stereo_voxel(weights)
    w, h = network_input_size(g.width, g.height, lp.input_width)
    ls, rs = resize_pair(pair.left, pair.right, w, h)
    with torch.inference_mode():
        out = net(torch.from_numpy(ls).permute(2, 0, 1)[None], torch.from_numpy(rs).permute(2, 0, 1)[None])
    lut = frustum_lut(scaled_geometry(g, w, h), net.config.planes, net.config.plane_step, T, spec, lp)
    learned = frustum_to_grid(out.occupancy_evidence[0].numpy(), lut, spec, lp)
    known = {k: (v.occupied + v.free) > 0 for k, v in (("lidar", lidar), ("sgbm", sgbm), ("learned", learned))}
    ref = lidar.probability() > 0.5

    def score(grid, cells):
        n = int(cells.sum())
        p = grid.probability()
        so = p > 0.5
        tp, fp = int((cells & so & ref).sum()), int((cells & so & ~ref).sum())
        fn, tn = int((cells & ~so & ref).sum()), int((cells & ~so & ~ref).sum())
        return {"cells": n, "agreement": (tp + tn) / n if n else None, "occupied_precision": tp / (tp + fp) if tp + fp else None,
                "occupied_recall": tp / (tp + fn) if tp + fn else None,
                "brier_vs_lidar_calls": float(((p - ref) ** 2)[cells].mean()) if n else None,
                "all_free_agreement": (tn + fp) / n if n else None}

    common = known["lidar"] & known["sgbm"] & known["learned"]
    return {"known_cells": {k: int(v.sum()) for k, v in known.items()}, "net_input": [h, w],
            "sgbm": score(sgbm, known["lidar"] & known["sgbm"]), "learned": score(learned, known["lidar"] & known["learned"]),
            "common_cells": {"sgbm": score(sgbm, common), "learned": score(learned, common)}}


def speed(model, reps: int, w: int, h: int) -> dict:
    import cv2
    import torch

    from perception_nodes.pipeline.stereo import depth_from_disparity
    from perception_nodes.pipeline.stereo_eval import load_kitti_pair

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    pair = load_kitti_pair(PAIR)
    left = np.ascontiguousarray(np.concatenate([pair.left, pair.left[-1:]], axis=0)[:, :1241])
    right = np.ascontiguousarray(np.concatenate([pair.right, pair.right[-1:]], axis=0)[:, :1241])
    g = replace(pair.geometry, width=1241, height=376)
    gs = replace(g, width=w, height=h, fx=g.fx * w / 1241)
    ls, rs = _resize_pair(left, right, w, h)
    lp = np.ascontiguousarray(np.pad(left, ((0, 0), (0, 7), (0, 0)), mode="edge"))
    rp = np.ascontiguousarray(np.pad(right, ((0, 0), (0, 7), (0, 0)), mode="edge"))
    matcher, _ = _sgbm_and_evidence()
    cases = {
        "sgbm_376x1241": lambda: depth_from_disparity(matcher.disparity(left, right), g),
        "sgbm_320x96": lambda: depth_from_disparity(matcher.disparity(ls, rs), gs),
        "learned_320x96": lambda: depth_from_disparity(_net_disparity(model, ls, rs), gs),
        "learned_320x96_no_pruning": lambda: depth_from_disparity(_net_disparity(model, ls, rs, prune=False), gs),
        "learned_376x1241_resized": lambda: depth_from_disparity(
            _upsample_disparity(_net_disparity(model, *_resize_pair(left, right, w, h)), 1241, 376), g),
        "learned_376x1248_native": lambda: _net_disparity(model, lp, rp),
    }
    ms: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(reps + 1):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if i:
                ms[k].append((time.perf_counter() - t0) * 1e3)
    out = {k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))} for k, v in ms.items()}
    for k in cases:
        out[k]["ratio_vs_sgbm_376x1241_median"] = float(np.median(np.asarray(ms[k]) / np.asarray(ms["sgbm_376x1241"])))
    return {"reps": reps, "threads": 1, **out}


def node_speed(reps: int, thread_counts: list[int], weights: str | None = None) -> dict:
    """The node's per-pair work in both modes at 376x1241 (see the module doc)."""
    import cv2
    import torch

    from perception_nodes.config import load_params, to_dataclass
    from perception_nodes.models.stereo_voxel import load_stereo_voxel
    from perception_nodes.pipeline.occupancy import GridSpec, to_occupancy_msg_data
    from perception_nodes.pipeline.stereo import depth_from_disparity, valid_disparity_ratio
    from perception_nodes.pipeline.stereo_eval import load_kitti_pair
    from perception_nodes.pipeline.stereo_learned import (
        LearnedStereoParams,
        consistent_disparity_ratio,
        frustum_lut,
        frustum_to_grid,
        network_input_size,
        resize_pair,
        scaled_geometry,
    )
    from perception_nodes.pipeline.stereo_occupancy import stereo_evidence

    st = load_params()["stereo_occupancy"]
    matcher, ev_params = _sgbm_and_evidence()
    lp = to_dataclass(LearnedStereoParams, st["learned"])
    spec = to_dataclass(GridSpec, st["grid"])
    net, _ = load_stereo_voxel(weights)
    net = net.fold_batchnorm()
    pair = load_kitti_pair(PAIR)
    left = np.ascontiguousarray(np.concatenate([pair.left, pair.left[-1:]], axis=0)[:, :1241])
    right = np.ascontiguousarray(np.concatenate([pair.right, pair.right[-1:]], axis=0)[:, :1241])
    g = replace(pair.geometry, width=1241, height=376)
    T = pair.base_from_left()
    w, h = network_input_size(g.width, g.height, lp.input_width)
    lut = frustum_lut(scaled_geometry(g, w, h), net.config.planes, net.config.plane_step, T, spec, lp)  # once per rig

    def sgbm() -> None:
        disp = matcher.disparity(left, right)
        depth = depth_from_disparity(disp, g, min_disparity=float(st["min_disparity_px"]))
        valid_disparity_ratio(disp, matcher.num_disparities(g.width), float(st["min_disparity_px"]) + g.doffs)
        grid, _ = stereo_evidence(depth, g, T, spec, ev_params)
        to_occupancy_msg_data(grid, unknown_vacuity=1.0)

    def learned() -> None:
        ls, rs = resize_pair(left, right, w, h)
        with torch.inference_mode():
            lt = torch.from_numpy(ls).permute(2, 0, 1).unsqueeze(0)
            rt = torch.from_numpy(rs).permute(2, 0, 1).unsqueeze(0)
            fl, vol = net.match(lt, rt)
            out = net.decode(fl, vol, (h, w))
        consistent_disparity_ratio(ls, rs, out.disparity[0].numpy(), lp.consistency_tol, lp.texture_min)
        grid = frustum_to_grid(out.occupancy_evidence[0].numpy(), lut, spec, lp)
        to_occupancy_msg_data(grid, unknown_vacuity=1.0)

    ms: dict[str, list[float]] = {f"{m}_{t}t": [] for t in thread_counts for m in ("sgbm", "learned")}
    for i in range(reps + 1):
        for t in thread_counts:
            cv2.setNumThreads(t)
            torch.set_num_threads(t)
            for name, fn in (("sgbm", sgbm), ("learned", learned)):
                t0 = time.perf_counter()
                fn()
                if i:
                    ms[f"{name}_{t}t"].append((time.perf_counter() - t0) * 1e3)
    out: dict = {"reps": reps, "size": [376, 1241], "network_input": [h, w]}
    for k, v in ms.items():
        out[k] = {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))}
    for t in thread_counts:
        out[f"learned_over_sgbm_{t}t"] = float(np.median(np.asarray(ms[f"learned_{t}t"]) / np.asarray(ms[f"sgbm_{t}t"])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("model", help="trained run folder, its model.safetensors, or a weights folder")
    ap.add_argument("--config", default=str(CONFIG), help="training config whose data.val bags are the held-out set")
    ap.add_argument("--reps", type=int, default=11, help="timed repetitions per case (default 11)")
    ap.add_argument("--package", metavar="DIR", help="also write the model as a weights folder (safetensors + "
                    "model.json sidecar with these metrics), e.g. perception_nodes/models/weights/stereo_voxel")
    ap.add_argument("--skip-generated", action="store_true", help="skip the held-out generated frames")
    ap.add_argument("--speed-only", action="store_true", help="only the node's per-pair time in both modes at "
                    "376x1241 (node_speed; MODEL must then be a weights folder)")
    ap.add_argument("--kitti-grid-only", action="store_true", help="only kitti_grid (MODEL: a weights folder)")
    ap.add_argument("--omp-passive", action="store_true", help="set OMP_WAIT_POLICY=PASSIVE before PyTorch "
                    "loads (see node_speed)")
    ap.add_argument("--node-threads", default="1,2", help="thread counts of node_speed (default 1,2)")
    args = ap.parse_args()
    threads = [int(t) for t in args.node_threads.split(",") if t]
    if args.omp_passive:
        if "torch" in sys.modules:
            raise SystemExit("--omp-passive: PyTorch is already loaded")
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if args.kitti_grid_only:
        print(json.dumps({"kitti_grid": kitti_grid(args.model)}))
        return
    if args.speed_only:
        res = {"benchmark": "stereo_learned --speed-only", "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
               "model": str(args.model), "nice": os.nice(0), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
        res["node_speed"] = node_speed(args.reps, threads, args.model)
        res["load_avg_1m_end"] = os.getloadavg()[0]
        print(json.dumps(res))
        return

    import torch
    import yaml

    from engines.sparse.tunefile import cpu_model
    from perception_nodes.learning.trainer import load_trained

    torch.set_num_threads(1)
    from perception_nodes.learning.branches.stereo_voxel import StereoVoxelBranch
    from perception_nodes.models.stereo_voxel import NETWORK, load_stereo_voxel

    src = Path(args.model)
    if (src / "model.json").is_file():  # a packaged weights folder
        model, side = load_stereo_voxel(str(src))
        branch = StereoVoxelBranch(side.get("branch_config"))
    else:
        branch, model = load_trained(src)
    model.eval()
    cfg = yaml.safe_load(Path(args.config).read_text())
    res: dict = {"benchmark": "stereo_learned", "cpu": cpu_model(), "cores": os.cpu_count(), "nice": os.nice(0),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                 "load_avg_1m": os.getloadavg()[0], "model": str(args.model)}
    w, h = 320, 96
    if not args.skip_generated:
        res["generated"] = generated(branch, model, cfg)
        print("generated", json.dumps({k: res["generated"][k] for k in ("depth", "occupancy")}), flush=True)
    res["kitti"] = kitti(model, w, h)
    print("kitti", json.dumps(res["kitti"]), flush=True)
    packaged = str(src) if (src / "model.json").is_file() else None
    res["kitti_grid"] = kitti_grid(packaged)
    print("kitti_grid", json.dumps(res["kitti_grid"]), flush=True)
    res["speed"] = speed(model, args.reps, w, h)
    print("speed", json.dumps(res["speed"]), flush=True)
    res["node_speed"] = node_speed(args.reps, threads, packaged)
    print("node_speed", json.dumps(res["node_speed"]), flush=True)
    res["load_avg_1m_end"] = os.getloadavg()[0]
    if args.package:
        from perception_nodes.models.weights_io import save_weights

        run_cfg = src / "config.json" if src.is_dir() else src.parent / "config.json"
        training = json.loads(run_cfg.read_text()) if run_cfg.is_file() else {}
        hist = run_cfg.parent / "metrics.jsonl"
        if hist.is_file():  # what actually ran (a --epochs override is not in config.json)
            epochs = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
            training["epochs"] = len(epochs)
            training["train_seconds"] = round(sum(e.get("train_seconds", 0.0) for e in epochs), 1)
        save_weights(model, args.package, network=NETWORK, config=model.config, training=training,
                     metrics={k: res[k] for k in ("generated", "kitti", "speed") if k in res},
                     extra={"branch_config": branch.describe()})
        res["packaged"] = str(args.package)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
