#!/usr/bin/env python3
"""Sparse convolution benchmark: our engine vs spconv 2.3.8 (CPU build) on a real KITTI scan.

Prints progress lines, then ONE JSON object as the last line (keys described in docs/sparse_conv.md):

* subm_speedup_1t: SubMConv3d 3^3 for 16->16, 32->32, 64->64 at 0.05 m and 0.1 m, geometric mean
  of spconv_time / our_time, both at 1 torch thread, kernel map included (a fresh tensor per run).
* backbone_speedup_1t / backbone_speedup_2t: CenterPoint-VoxelNet-like backbone (VoxelBackbone8x),
  same rules; 2t = ours at 2 threads vs spconv at 1 thread (its only correct setting). Ours runs as
  shipped: eval-mode SparseSequential folds BatchNorm into the conv and applies ReLU in place;
  backbone_speedup_1t_unfused_bn is the same with BN/ReLU as separate passes (like the spconv twin).
* map_build_ms: submanifold 3^3 map build, ours and spconv's (spconv's = fresh-tensor layer time
  minus the same layer reusing its cached indice pairs).
* max_rel_err_vs_dense: our layers vs dense F.conv3d on a crop of the scan (fp32).
* spconv_thread_bug: spconv's SubMConv3d at 2 threads vs 1 thread (it is wrong at >= 2 threads).

Timings are the minimum over interleaved repetitions (robust to other processes on the machine).

Running the peer: spconv 2.3.8 is not in requirements (its dependency ``lark`` collides with the
``lark-parser`` of the ROS packages in .venv), so install it beside the venv and point to it:

    .venv/bin/pip install --target /tmp/spconv-site spconv==2.3.8
    rm -rf /tmp/spconv-site/numpy*            # keep the venv's numpy
    SPCONV_SITE=/tmp/spconv-site .venv/bin/python benchmarks/sparse_conv.py

It then runs in the same process as our engine. Without spconv the script still measures ours and
reports the ratios as null.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.sparse import SparseSequential, SparseTensor, SubMConv3d, SparseConv3d, dense_weight  # noqa: E402
from engines.sparse.autotune import default_tuner  # noqa: E402
from engines.sparse.backbones import VoxelBackbone8x  # noqa: E402
from engines.sparse.geometry import ConvGeometry  # noqa: E402
from engines.sparse.kernel_map import build_kernel_map  # noqa: E402
from engines.sparse.kitti import load_velodyne, velodyne_path  # noqa: E402
from engines.sparse.voxelize import voxelize_mean  # noqa: E402


def log(*a: object) -> None:
    print(*a, flush=True)


def import_spconv():
    site = os.environ.get("SPCONV_SITE", "/tmp/spconv-site")
    try:
        import spconv.pytorch as spconv  # noqa: F401
    except ImportError:
        if site and Path(site).is_dir():
            sys.path.append(site)  # appended: the venv's torch/numpy stay first
        try:
            import spconv.pytorch as spconv
        except ImportError:
            return None
    return spconv


def spconv_version() -> str:
    try:
        from importlib.metadata import version

        return version("spconv")
    except Exception:
        try:
            import spconv

            return getattr(spconv, "__version__", "unknown")
        except Exception:
            return "missing"


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def kitti_voxels(shared: Path, vs: float):
    pts = torch.from_numpy(load_velodyne(velodyne_path(shared, 0)))
    st, _, grid = voxelize_mean(pts, vs)
    return st, grid


def to_spconv(spconv, feats: torch.Tensor, coords: torch.Tensor, shape, batch: int = 1):
    """Our (b, x, y, z) tensor as spconv's (b, z, y, x) with spatial shape [Z, Y, X]."""
    idx = coords[:, [0, 3, 2, 1]].contiguous().int()
    return spconv.SparseConvTensor(feats.contiguous(), idx, [shape[2], shape[1], shape[0]], batch)


def timeit(fn, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def interleaved(fns: dict, reps: int) -> dict:
    """Min time (ms) per function, alternating them so machine noise hits all alike."""
    best = {k: math.inf for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: v * 1e3 for k, v in best.items()}


def gmean(v: list[float]) -> float | None:
    v = [x for x in v if x is not None and x > 0]
    return float(math.exp(sum(math.log(x) for x in v) / len(v))) if v else None


# --------------------------------------------------------------------------------------------------
# spconv thread bug
# --------------------------------------------------------------------------------------------------


def thread_bug(spconv, st: SparseTensor) -> dict:
    torch.manual_seed(0)
    feats = torch.randn(len(st), 32)
    conv = spconv.SubMConv3d(32, 32, 3, bias=False, indice_key="b").eval()
    ours = SubMConv3d(32, 32, 3, dataflow="gather_scatter").eval()
    with torch.no_grad():
        ours.weight.copy_(ours.weight)  # independent weights are fine: we compare runs, not engines
    shape = st.spatial_shape
    res: dict = {}
    with torch.no_grad():
        torch.set_num_threads(1)
        ref = conv(to_spconv(spconv, feats, st.coords, shape)).features.clone()
        ref_ours = ours(SparseTensor(feats, st.coords, 1, shape)).feats.clone()
        torch.set_num_threads(2)
        diffs, ours_diffs = [], []
        for _ in range(5):
            out = conv(to_spconv(spconv, feats, st.coords, shape)).features
            diffs.append(float((out - ref).abs().max()))
            o = ours(SparseTensor(feats, st.coords, 1, shape)).feats
            ours_diffs.append(float((o - ref_ours).abs().max()))
        torch.set_num_threads(1)
    scale = float(ref.abs().max())
    res["spconv_max_abs_diff_2t_vs_1t"] = max(diffs)
    res["spconv_rel_diff_2t_vs_1t"] = max(diffs) / scale
    res["spconv_runs_differing_at_2t"] = sum(d > 0 for d in diffs)
    res["spconv_wrong_at_2_threads"] = max(diffs) / scale > 1e-4
    res["ours_max_abs_diff_2t_vs_1t"] = max(ours_diffs)
    return res


# --------------------------------------------------------------------------------------------------
# SubMConv3d
# --------------------------------------------------------------------------------------------------


def bench_subm(spconv, shared: Path, reps: int) -> dict:
    torch.set_num_threads(1)
    out: dict = {"layers": [], "map_build_ms": {}}
    ratios = []
    for vs in (0.05, 0.1):
        st, grid = kitti_voxels(shared, vs)
        shape = st.spatial_shape
        coords = st.coords
        n = len(st)
        geom = ConvGeometry("subm", (3, 3, 3))
        build_kernel_map(coords, geom)  # compile
        t_map = timeit(lambda: build_kernel_map(coords, geom), reps * 2)
        entry = {"ours": round(t_map, 3)}
        for c in (16, 32, 64):
            torch.manual_seed(c)
            feats = torch.randn(n, c)
            ours = SubMConv3d(c, c, 3).eval()
            fns = {}
            with torch.no_grad():
                ours(SparseTensor(feats, coords, 1, shape))  # autotune + compile (not timed)
                fns["ours"] = lambda: ours(SparseTensor(feats, coords, 1, shape))
                if spconv is not None:
                    sp = spconv.SubMConv3d(c, c, 3, bias=False, indice_key="s").eval()
                    sp2 = spconv.SubMConv3d(c, c, 3, bias=False, indice_key="s").eval()
                    sp(to_spconv(spconv, feats, coords, shape))

                    def sp_full():
                        return sp(to_spconv(spconv, feats, coords, shape))

                    y_cached = sp(to_spconv(spconv, feats, coords, shape))
                    fns["spconv"] = sp_full
                    fns["spconv_cached_map"] = lambda: sp2(y_cached)
                t = interleaved(fns, reps)
            row = {"voxel_m": vs, "voxels": n, "channels": c, "ours_ms": round(t["ours"], 3)}
            if spconv is not None:
                row["spconv_ms"] = round(t["spconv"], 3)
                row["spconv_compute_only_ms"] = round(t["spconv_cached_map"], 3)
                row["speedup"] = round(t["spconv"] / t["ours"], 3)
                ratios.append(t["spconv"] / t["ours"])
                if c == 16:
                    entry["spconv"] = round(max(t["spconv"] - t["spconv_cached_map"], 0.0), 3)
            out["layers"].append(row)
            log(f"  subm {vs} m {n} voxels {c}->{c}: {row}")
        out["map_build_ms"][f"{vs}m"] = entry
    out["subm_speedup_1t"] = gmean(ratios) if ratios else None
    return out


# --------------------------------------------------------------------------------------------------
# backbone
# --------------------------------------------------------------------------------------------------


def spconv_backbone(spconv, cin: int = 4):
    from torch import nn

    def block(i, o, k, s=1, p=0, kind="subm", key=None):
        if kind == "subm":
            conv = spconv.SubMConv3d(i, o, k, padding=1, bias=False, indice_key=key)
        else:
            conv = spconv.SparseConv3d(i, o, k, stride=s, padding=p, bias=False, indice_key=key)
        return spconv.SparseSequential(conv, nn.BatchNorm1d(o, eps=1e-3, momentum=0.01), nn.ReLU())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_input = block(cin, 16, 3, key="subm1")
            self.conv1 = spconv.SparseSequential(block(16, 16, 3, key="subm1"))
            self.conv2 = spconv.SparseSequential(block(16, 32, 3, 2, 1, "spconv", "spconv2"), block(32, 32, 3, key="subm2"), block(32, 32, 3, key="subm2"))
            self.conv3 = spconv.SparseSequential(block(32, 64, 3, 2, 1, "spconv", "spconv3"), block(64, 64, 3, key="subm3"), block(64, 64, 3, key="subm3"))
            self.conv4 = spconv.SparseSequential(block(64, 64, 3, 2, (0, 1, 1), "spconv", "spconv4"), block(64, 64, 3, key="subm4"), block(64, 64, 3, key="subm4"))
            self.conv_out = block(64, 128, (3, 1, 1), (2, 1, 1), 0, "spconv", "spconv_down2")

        def forward(self, x):
            return self.conv_out(self.conv4(self.conv3(self.conv2(self.conv1(self.conv_input(x))))))

    return Net()


def randomise_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


def match_rows(a_coords: torch.Tensor, b_coords: torch.Tensor) -> torch.Tensor | None:
    """Permutation p with b_coords[p] == a_coords (None if the coordinate sets differ)."""
    if a_coords.shape != b_coords.shape:
        return None
    ka = {tuple(r): i for i, r in enumerate(b_coords.tolist())}
    try:
        return torch.tensor([ka[tuple(r)] for r in a_coords.tolist()])
    except KeyError:
        return None


def bench_backbone(spconv, shared: Path, reps: int) -> dict:
    out: dict = {"runs": []}
    r1, r2, r1u = [], [], []
    for vs in (0.05, 0.1):
        st, grid = kitti_voxels(shared, vs)
        shape = st.spatial_shape
        torch.manual_seed(1)
        ours = VoxelBackbone8x(4).eval()
        sp = None
        row: dict = {"voxel_m": vs, "voxels": len(st)}
        if spconv is not None:
            sp = spconv_backbone(spconv).eval()
            randomise_bn(sp, 7)
            missing = ours.load_state_dict(sp.state_dict(), strict=True)
            row["state_dict_loaded"] = str(missing)
        else:
            randomise_bn(ours, 7)
        feats = st.feats.contiguous()
        coords = st.coords
        with torch.no_grad():
            for th in (1, 2):
                torch.set_num_threads(th)
                ours(SparseTensor(feats, coords, 1, shape))  # autotune per thread count
            torch.set_num_threads(1)
            y = ours(SparseTensor(feats, coords, 1, shape))
            row["out_voxels"] = len(y)
            unfused = VoxelBackbone8x(4).eval()
            unfused.load_state_dict(ours.state_dict())
            for mod in unfused.modules():
                if isinstance(mod, SparseSequential):
                    mod.fuse = False  # BN and ReLU as separate passes, exactly like the spconv twin
            unfused(SparseTensor(feats, coords, 1, shape))
            fns = {
                "ours_1t": lambda: ours(SparseTensor(feats, coords, 1, shape)),
                "ours_1t_unfused": lambda: unfused(SparseTensor(feats, coords, 1, shape)),
            }
            if sp is not None:
                ys = sp(to_spconv(spconv, feats, coords, shape))
                fns["spconv_1t"] = lambda: sp(to_spconv(spconv, feats, coords, shape))
                sc = ys.indices[:, [0, 3, 2, 1]].long() * torch.tensor([1, 8, 8, 16])
                p = match_rows(y.coords.long(), sc)
                if p is None:
                    row["max_rel_err_vs_spconv"] = "coordinate sets differ"
                else:
                    ref = ys.features[p]
                    row["max_rel_err_vs_spconv"] = float((y.feats - ref).abs().max() / ref.abs().max())
            t = interleaved(fns, reps)
            torch.set_num_threads(2)
            t2 = timeit(lambda: ours(SparseTensor(feats, coords, 1, shape)), reps)
            torch.set_num_threads(1)
        row["ours_1t_ms"] = round(t["ours_1t"], 2)
        row["ours_1t_unfused_bn_ms"] = round(t["ours_1t_unfused"], 2)
        row["ours_2t_ms"] = round(t2, 2)
        if sp is not None:
            row["spconv_1t_ms"] = round(t["spconv_1t"], 2)
            r1.append(t["spconv_1t"] / t["ours_1t"])
            r1u.append(t["spconv_1t"] / t["ours_1t_unfused"])
            r2.append(t["spconv_1t"] / t2)
        out["runs"].append(row)
        log(f"  backbone {vs} m: {row}")
    out["backbone_speedup_1t"] = gmean(r1) if r1 else None
    out["backbone_speedup_2t"] = gmean(r2) if r2 else None
    out["backbone_speedup_1t_unfused_bn"] = gmean(r1u) if r1u else None
    return out


# --------------------------------------------------------------------------------------------------
# correctness vs dense on a crop of the scan
# --------------------------------------------------------------------------------------------------


def dense_check(shared: Path) -> float:
    torch.set_num_threads(1)
    pts = load_velodyne(velodyne_path(shared, 0))
    keep = (pts[:, 0] > 4) & (pts[:, 0] < 12) & (np.abs(pts[:, 1]) < 4)
    st, _, grid = voxelize_mean(torch.from_numpy(pts[keep]), 0.1)
    shape = st.spatial_shape
    worst = 0.0
    torch.manual_seed(3)
    x = SparseTensor(torch.randn(len(st), 16, dtype=torch.float32), st.coords, 1, shape)
    d_in = x.dense()
    for layer, kw in [
        (SubMConv3d(16, 32, 3), dict(padding=1)),
        (SparseConv3d(16, 32, 3, stride=2, padding=1), dict(stride=2, padding=1)),
    ]:
        for df in ("gather_scatter", "implicit_gemm", "implicit_gemm_sorted"):
            layer.dataflow = df
            with torch.no_grad():
                y = layer(x)
                d = F.conv3d(d_in.double(), dense_weight(layer.weight.detach(), layer.kernel_size).double(), **kw)
            ijk = y.coords[:, 1:].long() // torch.tensor(y.stride)
            ref = d[y.coords[:, 0].long(), :, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
            worst = max(worst, float((y.feats.double() - ref).abs().max() / ref.abs().max()))
    return worst


# --------------------------------------------------------------------------------------------------
# GPU (when present)
# --------------------------------------------------------------------------------------------------


def bench_gpu(shared: Path, reps: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    from engines.sparse.autotune import DATAFLOWS

    res: dict = {"device": torch.cuda.get_device_name(0), "layers": []}
    for vs in (0.05, 0.1):
        st, _ = kitti_voxels(shared, vs)
        for c in (16, 32, 64):
            torch.manual_seed(c)
            feats = torch.randn(len(st), c)
            conv = SubMConv3d(c, c, 3, dataflow="gather_scatter").eval()
            with torch.no_grad():
                ref = conv(SparseTensor(feats, st.coords, 1, st.spatial_shape)).feats
                xg = SparseTensor(feats.cuda(), st.coords.cuda(), 1, st.spatial_shape)
                km = xg.cache.get(xg.coords, conv.geometry(xg), xg.spatial_shape)
                for dtype in (torch.float32, torch.float16):
                    for name in ("gather_scatter", "implicit_gemm", "implicit_gemm_sorted"):
                        f = xg.feats.to(dtype)
                        w = conv.weight.detach().cuda().to(dtype)
                        DATAFLOWS[name](f, w, km)
                        torch.cuda.synchronize()
                        best = math.inf
                        for _ in range(reps):
                            t0 = time.perf_counter()
                            o = DATAFLOWS[name](f, w, km)
                            torch.cuda.synchronize()
                            best = min(best, time.perf_counter() - t0)
                        err = float((o.float().cpu() - ref).abs().max() / ref.abs().max())
                        res["layers"].append({"voxel_m": vs, "channels": c, "dtype": str(dtype), "dataflow": name,
                                              "ms": round(best * 1e3, 3), "max_rel_err_vs_cpu": err})
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                build_kernel_map(xg.coords, conv.geometry(xg))
                torch.cuda.synchronize()
                res.setdefault("map_build_ms", {})[f"{vs}m"] = round((time.perf_counter() - t0) * 1e3, 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="folder holding kitti_object_vis/")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    shared = Path(args.shared)
    if not velodyne_path(shared, 0).exists():
        print(json.dumps({"error": f"KITTI scan not found under {shared}"}))
        sys.exit(1)
    spconv = import_spconv()
    log(f"spconv: {spconv_version() if spconv else 'not available (ratios will be null)'}")
    result: dict = {
        "torch": torch.__version__,
        "spconv": spconv_version() if spconv else None,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "scan": "kitti_object_vis/data/object/training/velodyne/000000.bin",
        "load_avg_start": os.getloadavg()[0],
    }
    if spconv is not None:
        st, _ = kitti_voxels(shared, 0.1)
        result["spconv_thread_bug"] = thread_bug(spconv, st)
        log(f"  thread bug: {result['spconv_thread_bug']}")
    sub = bench_subm(spconv, shared, args.reps)
    bb = bench_backbone(spconv, shared, args.reps + 2)
    result["subm_speedup_1t"] = sub["subm_speedup_1t"]
    result["backbone_speedup_1t"] = bb["backbone_speedup_1t"]
    result["backbone_speedup_2t"] = bb["backbone_speedup_2t"]
    result["backbone_speedup_1t_unfused_bn"] = bb["backbone_speedup_1t_unfused_bn"]
    result["map_build_ms"] = sub["map_build_ms"]
    result["max_rel_err_vs_dense"] = dense_check(shared)
    result["subm_layers"] = sub["layers"]
    result["backbone"] = bb["runs"]
    result["autotune_choices"] = default_tuner().choices
    result["gpu"] = bench_gpu(shared, args.reps)
    result["load_avg_end"] = os.getloadavg()[0]  # >~1.2 means other processes shared the 2 cores
    print(json.dumps(result))


if __name__ == "__main__":
    main()
