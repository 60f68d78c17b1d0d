#!/usr/bin/env python3
"""BEV pooling speed: precomputed geometry (engines/bev_pool.py) vs a straightforward Lift-Splat.

Sides, all on the same depth distributions and features, the same calibration and the same thread count:

* ``naive``             -- Lift-Splat-Shoot as written (:func:`engines.bev_pool.lift_splat_naive`): the
  frustum geometry computed per call, the full ``D x fH x fW x C`` frustum feature tensor materialised,
  points outside the grid masked out, ``index_add`` into the cells;
* ``naive_cached_geom`` -- the same with the geometry (cell of every frustum point, keep mask) computed
  once: only the lift (materialised frustum) and the scatter-add per call. Shows how much of the gap is
  the geometry and how much the materialised frustum;
* ``fused``             -- :func:`engines.bev_pool.bev_pool`, the run-time path (segment sums of the depth
  probabilities over precomputed (cell, pixel) pairs and the sparse row update in one numba kernel);
* ``gather``            -- :func:`engines.bev_pool.bev_pool_torch`, the torch-op form (training / ONNX graph);
* ``onnxruntime``       -- the exported graph of the gather form under onnxruntime (``--onnx``).

The geometry build itself (once per calibration) is timed separately (``build_geometry_ms``). Defaults
follow the issue: a KITTI-size 376 x 1241 image with camera 2's calibration from the shared KITTI frame
(base_link = the ground below the Velodyne, calibration/kitti_hdl64.yaml), features at stride 8 (and
16), BEVFusion's 118 depth bins (1-60 m by 0.5 m) and 80 channels, the camera BEV grid (80 m x 80 m at
0.5 m, z in [-1, 3) m). Repetitions interleave the sides; medians and inter-quartile ranges; the goal is
``naive / fused >= 40`` (issue 11). Outputs are checked against the float64 naive pooling on the first
repetition (``max_rel_err``). Progress goes to stderr; the last line of stdout is one JSON object.

    nice .venv/bin/python benchmarks/bev_pool.py [--strides 8 16] [--threads 1] [--reps 11] [--onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.bev_pool import (  # noqa: E402
    CameraGeometry,
    DepthBins,
    PoolGeometry,
    PoolGrid,
    _rays,
    bev_pool,
    bev_pool_torch,
    build_geometry,
    export_onnx,
    lift_splat_naive,
    onnx_feeds,
)
from engines.sparse.tunefile import cpu_model  # noqa: E402

GOAL_RATIO = 40.0
KITTI_CALIB = "kitti_object_vis/data/object/training/calib/000000.txt"
VELODYNE_HEIGHT = 1.73  # calibration/kitti_hdl64.yaml: base_link -> velodyne


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def kitti_camera(shared: Path, image_size: tuple[int, int], stride: int) -> tuple[CameraGeometry, str]:
    """Camera 2 of the shared KITTI frame (or a KITTI-like camera when the data is missing)."""
    path = shared / KITTI_CALIB
    if path.exists():
        from perception_nodes.calibration import load_kitti_calib

        calib = load_kitti_calib(path)
        P2 = calib.P["P2"]
        K = P2[:, :3]
        t = np.linalg.solve(K, P2[:, 3])  # rect0 -> camera 2 (rectified) offset
        rect_from_cam2 = np.eye(4)
        rect_from_cam2[:3, 3] = -t
        base_from_velo = np.eye(4)
        base_from_velo[2, 3] = VELODYNE_HEIGHT
        T = base_from_velo @ np.linalg.inv(calib.velo_to_rect) @ rect_from_cam2
        return CameraGeometry.from_arrays(K, T, image_size, stride), str(path.relative_to(shared))
    T = np.eye(4)
    T[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
    T[:3, 3] = [0.27, 0.0, 1.65]
    K = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
    return CameraGeometry.from_arrays(K, T, image_size, stride), "synthetic KITTI-like (shared data missing)"


def naive_cached(cam: CameraGeometry, bins: DepthBins, grid: PoolGrid) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Lift-Splat with the frustum geometry precomputed: materialise P * F, mask, scatter-add."""
    fh, fw = cam.feature_size
    o, rays = (torch.from_numpy(a) for a in _rays(cam))
    pts = o + torch.from_numpy(bins.centres())[:, None, None] * rays.view(1, fh * fw, 3)
    ix = torch.floor((pts[..., 0] - grid.x_min) / grid.cell).long()
    iy = torch.floor((pts[..., 1] - grid.y_min) / grid.cell).long()
    z = pts[..., 2]
    keep = ((ix >= 0) & (ix < grid.width) & (iy >= 0) & (iy < grid.height) & (z >= grid.z_min)
            & (z < grid.z_max)).reshape(-1)
    cells = (iy * grid.width + ix).reshape(-1)[keep]

    def run(depth: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        C = feats.shape[1]
        frustum = depth[0].unsqueeze(-1) * feats[0].permute(1, 2, 0).unsqueeze(0)
        out = torch.zeros(grid.num_cells, C, dtype=feats.dtype).index_add_(0, cells, frustum.reshape(-1, C)[keep])
        return out.t().reshape(C, grid.height, grid.width)

    return run


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"p50_ms": round(float(med), 3), "iqr_ms": [round(float(q1), 3), round(float(q3), 3)],
            "min_ms": round(float(a.min()), 3), "n": int(len(a))}


def bench_stride(stride: int, args: argparse.Namespace, bins: DepthBins, grid: PoolGrid) -> dict:
    cam, calib_src = kitti_camera(args.shared, tuple(args.image), stride)
    fh, fw = cam.feature_size
    t0 = time.perf_counter()
    geom: PoolGeometry = build_geometry(cam, bins, grid)
    build_ms = (time.perf_counter() - t0) * 1e3
    g = torch.Generator().manual_seed(0)
    # depth: peaked softmax distributions (a trained net's are peaked; the cost does not depend on it);
    # features: ReLU-like non-negative values
    depth = torch.softmax(4.0 * torch.randn(1, bins.count, fh, fw, generator=g), 1)
    feats = torch.relu(torch.randn(1, args.channels, fh, fw, generator=g))
    cached = naive_cached(cam, bins, grid)
    sides: dict[str, Callable[[], torch.Tensor]] = {
        "naive": lambda: lift_splat_naive(depth, feats, cam, bins, grid),
        "naive_cached_geom": lambda: cached(depth, feats),
        "fused": lambda: bev_pool(depth, feats, geom),
        "gather": lambda: bev_pool_torch(depth, feats, geom),
    }
    if args.onnx:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(export_onnx(grid.num_cells, args.channels), so, providers=["CPUExecutionProvider"])
        feeds = onnx_feeds(depth, feats, geom)
        sides["onnxruntime"] = lambda: torch.from_numpy(sess.run(None, feeds)[0]).t().reshape(
            args.channels, grid.height, grid.width)
    with torch.no_grad():
        ref = lift_splat_naive(depth.double(), feats.double(), cam, bins, grid)
        scale = float(ref.abs().max())
        errs = {}
        for name, fn in sides.items():  # warm-up (numba compile/cache load) + correctness
            errs[name] = float((fn().double() - ref).abs().max() / scale)
        times: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.reps):
            for name, fn in sides.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1e3)
            log(f"stride {stride} rep {r + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in times.items()))
    res = {k: {**stats(v), "max_rel_err": errs[k]} for k, v in times.items()}
    fused = res["fused"]["p50_ms"]
    return {
        "stride": stride, "feature_size": [fh, fw], "calibration": calib_src, "geometry": geom.stats(),
        "build_geometry_ms": round(build_ms, 2), "sides": res,
        "ratio_naive_over_fused": round(res["naive"]["p50_ms"] / fused, 2),
        "ratio_naive_cached_geom_over_fused": round(res["naive_cached_geom"]["p50_ms"] / fused, 2),
        "ratio_naive_over_gather": round(res["naive"]["p50_ms"] / res["gather"]["p50_ms"], 2),
        "frustum_tensor_mb": round(bins.count * fh * fw * args.channels * 4 / 2**20, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=int, nargs=2, default=(376, 1241), metavar=("H", "W"), help="image size (px)")
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16], help="feature strides to run")
    ap.add_argument("--channels", type=int, default=80, help="feature channels (BEVFusion: 80)")
    ap.add_argument("--bins", type=float, nargs=3, default=(1.0, 60.0, 0.5), metavar=("START", "STOP", "STEP"),
                    help="depth bins in metres (BEVFusion: 1 60 0.5 = 118 bins)")
    ap.add_argument("--cell", type=float, default=0.5, help="BEV cell (m) over the 80 m x 80 m square")
    ap.add_argument("--threads", type=int, default=1, help="torch/numba/onnxruntime threads for every side")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--onnx", action="store_true", help="also time the exported graph under onnxruntime")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared/data", help="shared data folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bins = DepthBins(*args.bins)
    n = int(round(80.0 / args.cell))
    grid = PoolGrid(-40.0, -40.0, args.cell, n, n, -1.0, 3.0)
    result: dict = {
        "benchmark": "bev_pool", "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(), "image": list(args.image),
        "bins": bins.count, "channels": args.channels, "grid": [grid.height, grid.width, grid.cell],
        "load_avg_start": [round(v, 2) for v in os.getloadavg()],
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    result["runs"] = [bench_stride(s, args, bins, grid) for s in args.strides]
    result["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["goal_ratio"] = GOAL_RATIO
    result["goal_met"] = all(r["ratio_naive_over_fused"] >= GOAL_RATIO for r in result["runs"])
    for r in result["runs"]:
        log(f"stride {r['stride']}: naive {r['sides']['naive']['p50_ms']} ms, fused {r['sides']['fused']['p50_ms']} ms "
            f"-> ratio {r['ratio_naive_over_fused']} (cached-geometry naive: {r['ratio_naive_cached_geom_over_fused']})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
