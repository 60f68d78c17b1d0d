"""GPU check of the sparse engine: map building and every backbone layer vs the CPU engine and vs dense torch.

For a real KITTI scan at each voxel size, the CPU engine runs ``VoxelBackbone8x`` once (fp32,
gather_scatter) and keeps every conv layer's input and output. On the GPU each layer is then run
from the same input with every GPU dataflow (gather_scatter, implicit_gemm -- the Triton kernel
when Triton is installed --, implicit_gemm_sorted, implicit_gemm_torch) in fp32 and fp16:

* ``map_build``: per layer, CUDA (torch) map build time vs the CPU (numba) builder, and whether
  output coordinates and neighbour maps are identical;
* ``layers``: per layer x dataflow x dtype, the median time (CUDA events) and the max relative
  error vs the CPU layer output;
* ``dense``: on a crop small enough for dense grids, each layer type vs ``F.conv3d`` on the GPU
  (the torch dense reference) at the output sites;
* ``backbone``: the whole network on the GPU with ``dataflow="auto"`` (static default on CUDA)
  vs the CPU result, median time.

Runs in well under 5 minutes on a datacenter GPU (most of it Triton compiling its kernels once).
``--device cpu`` runs the same code on the CPU (GPU dataflows replaced by the CPU ones, fp32) to
check the script where no GPU is lent. One JSON line last on stdout.

    python benchmarks/sparse_conv_gpu.py [--device cuda] [--voxel-size 0.1 0.05] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.sparse import SparseTensor, build_kernel_map, dense_weight  # noqa: E402
from engines.sparse.autotune import DATAFLOWS  # noqa: E402
from engines.sparse.backbones import VoxelBackbone8x  # noqa: E402
from engines.sparse.conv import _SparseConvNd  # noqa: E402
from engines.sparse.kitti import load_velodyne, velodyne_path  # noqa: E402
from engines.sparse.tunefile import configure, cpu_model  # noqa: E402
from engines.sparse.voxelize import voxelize_mean  # noqa: E402

GPU_DATAFLOWS = ["gather_scatter", "implicit_gemm", "implicit_gemm_sorted", "implicit_gemm_torch"]
CPU_DATAFLOWS = ["gather_scatter", "implicit_gemm", "implicit_gemm_sorted"]


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return math.inf
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30)) if a.numel() else 0.0


def timed(fn, device: torch.device, reps: int) -> tuple[float, object]:
    """Median ms of ``reps`` runs after one warm-up (CUDA events on the GPU)."""
    out = fn()
    ts = []
    for _ in range(reps):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = fn()
            e.record()
            torch.cuda.synchronize(device)
            ts.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            out = fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), out


def randomise_bn(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def capture_layers(net: torch.nn.Module, x: SparseTensor) -> list[tuple[str, _SparseConvNd, SparseTensor, torch.Tensor]]:
    """(name, layer, input, CPU output feats) of every sparse conv, in call order."""
    seen: list = []
    names = {m: n for n, m in net.named_modules()}
    seqs = [m for m in net.modules() if hasattr(m, "fuse")]
    for m in seqs:  # BN folding calls the conv without its hooks: run unfused to see every layer
        m.fuse = False
    hooks = []
    for m in net.modules():
        if isinstance(m, _SparseConvNd):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: seen.append((names[mod], mod, inp[0], out.feats))))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
        for m in seqs:
            m.fuse = True
    return seen


def on(x: SparseTensor, device: torch.device, dtype: torch.dtype) -> SparseTensor:
    """The same sites on ``device`` with a fresh map cache."""
    return SparseTensor(x.feats.to(device, dtype), x.coords.to(device), x.stride, x.spatial_shape, x.batch_size)


def kitti_frame(shared: Path, vs: float, crop: bool = False) -> SparseTensor:
    pts = load_velodyne(velodyne_path(shared, 0))
    if crop:
        pts = pts[(pts[:, 0] > 4) & (pts[:, 0] < 16) & (np.abs(pts[:, 1]) < 6)]
    st, _, _ = voxelize_mean(torch.from_numpy(pts), vs)
    return SparseTensor(st.feats.float().contiguous(), st.coords, 1, st.spatial_shape, 1)


def bench_frame(shared: Path, vs: float, device: torch.device, dtypes: list[torch.dtype], reps: int) -> dict:
    x = kitti_frame(shared, vs)
    torch.manual_seed(1)
    net = VoxelBackbone8x(4, dataflow="gather_scatter").eval()
    randomise_bn(net, 7)
    torch.set_num_threads(1)
    layers = capture_layers(net, x)
    flows = GPU_DATAFLOWS if device.type == "cuda" else CPU_DATAFLOWS
    res: dict = {"voxel_m": vs, "voxels": len(x), "map_build": [], "layers": []}
    for name, layer, xin, ref in layers:
        # map build: CPU (numba) vs device builder, same geometry and coordinates
        geom = layer.geometry(xin)
        t0 = time.perf_counter()
        km_cpu = build_kernel_map(xin.coords, geom, xin.spatial_shape)
        cpu_ms = (time.perf_counter() - t0) * 1e3
        coords_dev = xin.coords.to(device)
        dev_ms, km_dev = timed(lambda: build_kernel_map(coords_dev, geom, xin.spatial_shape), device, max(3, reps // 3))
        same = bool(torch.equal(km_cpu.out_coords, km_dev.out_coords.cpu())
                    and torch.equal(km_cpu.out_in_map().cpu(), km_dev.out_in_map().cpu()))
        res["map_build"].append({"layer": name, "kind": geom.kind, "n_in": len(xin), "n_out": km_cpu.n_out,
                                 "cpu_ms": round(cpu_ms, 3), "device_ms": round(dev_ms, 3), "identical": same})
        for dtype in dtypes:
            xd = xin.feats.to(device, dtype)
            w = layer.weight.detach().to(device, dtype)
            for flow in flows:
                fn = DATAFLOWS[flow]
                try:
                    with torch.no_grad():
                        ms, out = timed(lambda: fn(xd, w, km_dev), device, reps)
                    err = rel_err(out.float(), ref)
                    row = {"layer": name, "cin": int(w.shape[1]), "cout": int(w.shape[2]), "dtype": str(dtype)[6:],
                           "dataflow": flow, "ms": round(ms, 4), "rel_err_vs_cpu": err}
                except Exception as exc:  # noqa: BLE001 - one failing dataflow must not hide the others
                    row = {"layer": name, "dtype": str(dtype)[6:], "dataflow": flow, "error": repr(exc)[:300]}
                res["layers"].append(row)
        log(f"{vs} m {name}: n_in {len(xin)} map cpu {cpu_ms:.1f} ms / {device.type} {dev_ms:.2f} ms identical={same}")
    # the whole network with `auto` (static defaults for this device), against the CPU result
    with torch.no_grad():
        want = net(on(x, torch.device("cpu"), torch.float32)).feats
    for dtype in dtypes:
        gnet = VoxelBackbone8x(4, dataflow="auto").eval()
        gnet.load_state_dict(net.state_dict())
        gnet = gnet.to(device=device, dtype=dtype)
        tuner = configure(gnet, None, device)
        with torch.no_grad():
            ms, out = timed(lambda: gnet(on(x, device, dtype)), device, max(3, reps // 2))
        res.setdefault("backbone", []).append({"dtype": str(dtype)[6:], "ms": round(ms, 3),
                                               "rel_err_vs_cpu": rel_err(out.feats.float(), want),
                                               "lookups": dict(tuner.sources),
                                               "profile": profile_ops(lambda: gnet(on(x, device, dtype)), device)})
    return res


def profile_ops(fn, device: torch.device, reps: int = 3, top: int = 12) -> dict:
    """Where the whole backbone's time goes: torch.profiler over ``reps`` warm runs.

    The per-layer convolutions add up to a fraction of the backbone's time on the GPU; this lists the ops
    with the most self time on the host and on the device (per run), and the host time spent waiting on the
    device (synchronising copies such as ``.item()``, ``nonzero``, ``unique``), which serialises the launches.
    """
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        fn()
        with profile(activities=acts) as prof:
            for _ in range(reps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    rows = []
    for ev in prof.key_averages():
        dev_us = getattr(ev, "self_device_time_total", None)
        if dev_us is None:
            dev_us = getattr(ev, "self_cuda_time_total", 0.0)
        rows.append({"op": ev.key, "calls": ev.count // reps, "self_cpu_ms": ev.self_cpu_time_total / reps / 1e3,
                     "self_device_ms": float(dev_us or 0.0) / reps / 1e3})

    def rnd(r: dict) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}

    sync = [r for r in rows if "Synchronize" in r["op"] or "Memcpy" in r["op"]]
    # a kernel's device time shows twice: under the aten op that launched it and as its own row (no host
    # time); the device's busy time is the sum over the rows without host time
    kernels = [r for r in rows if r["self_cpu_ms"] == 0.0]
    return {"reps": reps,
            "host_ms_per_run": round(sum(r["self_cpu_ms"] for r in rows), 3),
            "device_busy_ms_per_run": round(sum(r["self_device_ms"] for r in kernels), 3),
            "kernel_launches_per_run": sum(r["calls"] for r in rows if r["op"] in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                                   "cuLaunchKernelEx")),
            "host_sync_and_copy_ms_per_run": round(sum(r["self_cpu_ms"] for r in sync), 3),
            "top_host": [rnd(r) for r in sorted(rows, key=lambda r: -r["self_cpu_ms"])[:top]],
            "top_device": [rnd(r) for r in sorted(rows, key=lambda r: -r["self_device_ms"])[:top]]}


def dense_check(shared: Path, device: torch.device, dtypes: list[torch.dtype]) -> list[dict]:
    """Each layer type on a small crop vs F.conv3d on the same device (the torch dense reference)."""
    x = kitti_frame(shared, 0.2, crop=True)
    torch.manual_seed(3)
    feats = torch.randn(len(x), 16)
    from engines.sparse import SparseConv3d, SubMConv3d

    rows = []
    for layer, kw in [(SubMConv3d(16, 32, 3), dict(padding=1)),
                      (SparseConv3d(16, 32, 3, stride=2, padding=1), dict(stride=2, padding=1)),
                      (SparseConv3d(16, 32, (1, 1, 3), stride=(1, 1, 2)), dict(stride=(1, 1, 2)))]:
        layer = layer.eval().to(device)
        for dtype in dtypes:
            xs = SparseTensor(feats.to(device, dtype), x.coords.to(device), 1, x.spatial_shape, 1)
            d_in = xs.dense().double()
            wd = dense_weight(layer.weight.detach(), layer.kernel_size).to(device).double()
            dref = F.conv3d(d_in, wd, **kw)
            km = layer.kernel_map(xs)
            flows = GPU_DATAFLOWS if device.type == "cuda" else CPU_DATAFLOWS
            for flow in flows:
                with torch.no_grad():
                    y = DATAFLOWS[flow](xs.feats, layer.weight.detach().to(dtype), km)
                s = torch.tensor(km.geometry.out_stride, device=device)
                ijk = torch.div(km.out_coords[:, 1:].long(), s, rounding_mode="floor")
                ref = dref[km.out_coords[:, 0].long(), :, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
                rows.append({"kind": km.geometry.kind, "kernel": list(layer.kernel_size), "dtype": str(dtype)[6:],
                             "dataflow": flow, "sites": km.n_out, "rel_err_vs_dense": rel_err(y.float(), ref)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"],
                    help="cuda (default when present) or cpu (checks the script itself)")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="folder holding kitti_object_vis/")
    ap.add_argument("--voxel-size", type=float, nargs="+", default=[0.1, 0.05])
    ap.add_argument("--dtypes", nargs="+", default=None, help="float32 float16 (default: both on cuda, float32 on cpu)")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device (install a CUDA torch and requirements/gpu.txt)")
    names = args.dtypes or (["float32", "float16"] if device.type == "cuda" else ["float32"])
    dtypes = [getattr(torch, n) for n in names]
    from engines.sparse import triton_kernels

    t0 = time.perf_counter()
    res: dict = {
        "benchmark": "sparse_conv_gpu",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {cpu_model()}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": None,
        "triton_kernel_used": device.type == "cuda" and triton_kernels.available(),
        "python": platform.python_version(),
        "frames": [],
    }
    try:
        import triton

        res["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    for vs in args.voxel_size:
        res["frames"].append(bench_frame(args.shared, vs, device, dtypes, args.reps))
    res["dense"] = dense_check(args.shared, device, dtypes)
    errs = {n: max([r.get("rel_err_vs_cpu", math.inf) for f in res["frames"] for r in f["layers"] if r["dtype"] == n]
                   + [0.0]) for n in names}
    res["summary"] = {
        "maps_identical": all(m["identical"] for f in res["frames"] for m in f["map_build"]),
        "max_rel_err_vs_cpu": errs,
        "max_rel_err_vs_dense": {n: max([r["rel_err_vs_dense"] for r in res["dense"] if r["dtype"] == n] + [0.0])
                                 for n in names},
        "failed_dataflows": sorted({f"{r['layer']}:{r['dataflow']}:{r['dtype']}" for f in res["frames"]
                                    for r in f["layers"] if "error" in r}),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
