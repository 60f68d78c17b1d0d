#!/usr/bin/env python3
"""The LiDAR branch's network on a CUDA device: parity with the CPU runtime and per-stage times.

The node runs the branch on the CPU (``runtime: torch`` or ``onnxruntime``); a GPU runtime is the next
wave. This script is its first measurement: the packaged weights (or ``--weights``) run on the real
KITTI object scans (moved into base_link, as the node gets them) once by the CPU runtime
(:class:`perception_nodes.models.runtime.TorchRuntime`, the reference) and then on ``--device`` in eager
PyTorch fp32 (TF32 off), stage by stage as the runtime splits them:

* ``parity``: per scan, the largest relative difference of every output (occupancy evidence, class
  evidence, box NIG maps, curvature NIG) from the CPU's, and whether the decoded detections agree
  (same count, centres within 1e-3 m);
* ``cuda``: per stage (upload of the points, voxelise, backbone, bev_net, heads, decode_boxes -- the
  node's decode, which reads the box head at the peaks) the median and p99 of wall time with the device
  synchronised around each stage, and end to end without the per-stage synchronisations;
* ``cpu``: the same stages on the CPU at ``--threads`` for the ratio (same scans, same order);
* ``device_profile``: torch.profiler over three whole device runs of the first scan (kernel launches, the
  device's busy time, the host's op time per run; ``profile_ops`` of ``sparse_conv_gpu.py``).

On the device the voxelisation is the PyTorch reference path (the compiled numba pass is CPU-only)
and the sparse backbone takes the engine's static CUDA dataflow choice (``implicit_gemm_sorted``: the
Triton kernel where Triton is installed; the tuner remembers its choices per device type, so the CPU
side's choices are not reused). ``--device cpu`` runs the
script on a machine without a GPU (the "device" side is then a second CPU run) to check the script
itself. Progress on stderr; one JSON object last on stdout.

    python benchmarks/lidar_branch_gpu.py [--device cuda] [--reps 20] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lidar_branch import StageTimer, load_scans, pct, rel_err  # noqa: E402

from engines.sparse.tunefile import cpu_model  # noqa: E402
from perception_nodes.models.calibration import DetectionCalibration  # noqa: E402
from perception_nodes.models.decode import decode_batch  # noqa: E402
from perception_nodes.models.runtime import TorchRuntime, no_stages  # noqa: E402
from perception_nodes.models.weights_io import load_lidar_detection, read_sidecar  # noqa: E402

PACKAGED = ROOT / "perception_nodes" / "models" / "weights" / "lidar_detection"


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def stage_timer(device: torch.device) -> StageTimer:
    """Per-stage wall times with ``device`` synchronised around each stage (nothing to wait for on the CPU)."""
    return StageTimer(sync=(lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None)


def detections_agree(a: list, b: list, tol_m: float = 1e-3) -> bool:
    """Same number of boxes per scan, and every box of either side has a box of the same class on the other
    within ``tol_m`` (centres, max-norm)."""
    for da, db in zip(a, b):
        ca, cb = np.asarray(da.center, np.float64), np.asarray(db.center, np.float64)
        if ca.shape != cb.shape:
            return False
        if not len(ca):
            continue
        close = np.abs(ca[:, None, :] - cb[None, :, :]).max(-1) <= tol_m
        close &= np.asarray(da.label)[:, None] == np.asarray(db.label)[None, :]
        if not (close.any(1).all() and close.any(0).all()):
            return False
    return True


def run_once(rt: TorchRuntime, points: torch.Tensor, device: torch.device, timer: Any, net: Any,
             calibration: Optional[DetectionCalibration]) -> tuple[Any, list]:
    with timer("upload"):
        p = points.to(device, non_blocking=False)
    out = rt.infer(p, timer)
    with timer("decode_boxes"):
        dets = decode_batch(out, net.head_grid, net.config.classes, calibration=calibration)
    return out, dets


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="../shared/data")
    ap.add_argument("--weights", type=Path, default=PACKAGED, help="weights folder (default: the packaged one)")
    ap.add_argument("--frames", type=int, default=3, help="KITTI object scans from 000000 on")
    ap.add_argument("--device", default="cuda", help="cuda[:N], or cpu to check the script without a GPU")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions of every scan")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs of every scan first")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of the reference side")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device (use --device cpu to check the script)")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as on the CPU: parity is then float32 rounding
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(args.threads)

    net_cpu, _ = load_lidar_detection(args.weights)  # in eval mode
    calibration = DetectionCalibration.from_sidecar(read_sidecar(args.weights))
    net_dev = copy.deepcopy(net_cpu).to(device).eval()
    scans = [(n, p) for n, p, _ in load_scans(args.shared, args.frames)]
    log(f"{len(scans)} scans {[len(p) for _, p in scans]} points; device {device}")
    cpu_rt, dev_rt = TorchRuntime(net_cpu), TorchRuntime(net_dev)

    # parity: every output map of every scan, and the decoded boxes
    parity = []
    for name, p in scans:
        with torch.inference_mode():
            ref, ref_d = run_once(cpu_rt, p, torch.device("cpu"), no_stages, net_cpu, calibration)
            out, out_d = run_once(dev_rt, p, device, no_stages, net_dev, calibration)
            ref.box, out.box  # noqa: B018 -- full box maps (the fast path computes them lazily)
        err = rel_err(_to_cpu(out), ref)
        parity.append({"scan": name, "max_rel_err": float(f"{err:.3g}"),
                       "voxels_equal": bool(torch.equal(out.num_voxels.cpu(), ref.num_voxels)), "boxes_cpu": [len(d.center) for d in ref_d],
                       "boxes_device": [len(d.center) for d in out_d],
                       "decoded_agree": detections_agree(out_d, ref_d)})
        log(f"  parity {name}: max rel err {err:.3g}, boxes {parity[-1]['boxes_cpu']} vs "
            f"{parity[-1]['boxes_device']}, agree {parity[-1]['decoded_agree']}")

    result: dict[str, Any] = {
        "benchmark": "lidar_branch_gpu", "weights": str(args.weights.relative_to(ROOT)
                                                       if args.weights.is_relative_to(ROOT) else args.weights),
        "on": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        cpu_model(), "torch": torch.__version__, "python": platform.python_version(), "tf32": False,
        "cpu_model": cpu_model(), "cpu_threads": args.threads, "cores": os.cpu_count(), "reps": args.reps,
        "scans": [{"name": n, "points": len(p)} for n, p in scans], "parity": parity,
    }
    # timing: CPU and device interleaved per scan; warm-up first (CUDA context, allocator, numba compile)
    with torch.inference_mode():
        for _ in range(args.warmup):
            for _, p in scans:
                run_once(cpu_rt, p, torch.device("cpu"), no_stages, net_cpu, calibration)
                run_once(dev_rt, p, device, no_stages, net_dev, calibration)
        timers = {"cpu": stage_timer(torch.device("cpu")), "device": stage_timer(device)}
        e2e: dict[str, list[float]] = {"cpu": [], "device": [], "device_unsynced": []}
        for _ in range(args.reps):
            for _, p in scans:
                for side, rt, net, dev in (("cpu", cpu_rt, net_cpu, torch.device("cpu")),
                                           ("device", dev_rt, net_dev, device)):
                    t0 = time.perf_counter()
                    run_once(rt, p, dev, timers[side], net, calibration)
                    e2e[side].append((time.perf_counter() - t0) * 1e3)
                # end to end without the per-stage synchronisations (decode syncs where it reads the peaks)
                t0 = time.perf_counter()
                run_once(dev_rt, p, device, no_stages, net_dev, calibration)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                e2e["device_unsynced"].append((time.perf_counter() - t0) * 1e3)
    for side in ("cpu", "device"):
        result[side] = {"e2e_stage_synced": pct(e2e[side]),
                        "stages": {s: pct(v) for s, v in timers[side].samples.items()}}
    result["device"] = {**result["device"], "e2e": pct(e2e["device_unsynced"])}
    # the ratio compares like with like: both sides timed stage by stage (a CPU stage boundary costs nothing); the
    # device's run without per-stage synchronisations is reported beside it (device.e2e), not divided into
    result["ratios"] = {"cpu_over_device_e2e_p50": round(result["cpu"]["e2e_stage_synced"]["p50"]
                                                         / result["device"]["e2e_stage_synced"]["p50"], 2)}
    for s, v in result["device"]["stages"].items():
        if s in result["cpu"]["stages"] and v["p50"] > 0:
            result["ratios"][f"cpu_over_device_{s}_p50"] = round(result["cpu"]["stages"][s]["p50"] / v["p50"], 2)
    log(f"cpu {result['cpu']['e2e_stage_synced']}  device {result['device']['e2e']}")
    # where the device side's time goes: torch.profiler over whole runs of the first scan (as sparse_conv_gpu.py
    # does for the bare backbone): kernel launches, the device's busy time, the host's op time
    from sparse_conv_gpu import profile_ops

    name0, p0 = scans[0]
    with torch.inference_mode():
        result["device_profile"] = {"scan": name0, **profile_ops(
            lambda: run_once(dev_rt, p0, device, no_stages, net_dev, calibration), device)}
    prof = result["device_profile"]
    log(f"profile {name0}: {prof.get('kernel_launches_per_run')} launches, device busy "
        f"{prof.get('device_busy_ms_per_run')} ms, host ops {prof.get('host_ms_per_run')} ms per run")
    result["notes"] = [
        "fp32 on both sides, TF32 off; eager PyTorch; the device side voxelises with the PyTorch reference path",
        "stages timed with the device synchronised around each; device e2e is a separate run per scan "
        "without those synchronisations (one at the end); the e2e ratio divides the two stage-synced e2e times",
        f"p50/p99 over {args.reps} reps x {len(scans)} scans",
    ]
    print(json.dumps(result))
    return 0


def _to_cpu(out: Any) -> Any:
    """A CPU copy of a network output's tensors (occupancy, class evidence, box and curvature NIG)."""
    from perception_nodes.models.lidar_detection import LidarDetectionOutput

    box = type(out.box)(*(t.cpu() for t in out.box))
    curv = type(out.curvature)(*(t.cpu() for t in out.curvature))
    return LidarDetectionOutput(out.occupancy_evidence.cpu(), out.class_alpha.cpu(), box, curv, out.num_voxels.cpu())


if __name__ == "__main__":
    raise SystemExit(main())
