"""Per-frame times of a configured sparse backbone over a sequence of real frames of varying size.

What a live node sees: the network is configured once with a tune file (tuned offline, as
`perception-stack engines tune` does), then frames arrive whose voxel counts differ -- here real
KITTI scans, each also thinned to several fractions of its points, so counts cross power-of-two
buckets. Every frame is timed end to end (kernel maps + all convolutions, BatchNorm, ReLU), one
thread. Before the live path only looked up, a new voxel count re-timed every candidate inside the
frame (a stall of 5-10x); the goal is no frame above 1.5x the median.

Frames differ in size, so time per frame also differs for an honest reason; ``per_kvoxel`` gives
ms per 1000 input voxels as a size-independent figure. ``candidates_timed`` counts candidates timed
during the sequence (must be 0). Without ``--tune-file`` the offline tuning runs first (on other
point fractions than the live sequence uses) and its time is reported as ``offline_tune_s``.

    python benchmarks/sparse_live_frames.py [--tune-file F] [--voxel-size 0.1] [--threads 1]

Prints progress to stderr and one JSON line (last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.sparse.autotune import candidates_timed_total  # noqa: E402
from engines.sparse.tunefile import (  # noqa: E402
    BACKBONES,
    TuneFile,
    configure,
    cpu_model,
    kitti_tuning_frames,
    tune_network,
    voxel_bucket,
)


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="folder holding kitti_object_vis/")
    ap.add_argument("--tune-file", type=Path, help="tune file from `perception-stack engines tune` (default: tune here first)")
    ap.add_argument("--backbone", default="voxel_backbone8x", choices=sorted(BACKBONES))
    ap.add_argument("--voxel-size", type=float, default=0.1)
    ap.add_argument("--frames", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.8, 0.65],
                    help="point fractions of the live sequence (default 1.0 0.8 0.65)")
    ap.add_argument("--passes", type=int, default=2, help="times the whole sequence is played (default 2)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = BACKBONES[args.backbone](4).eval()
    tune_s = None
    if args.tune_file:
        tf = TuneFile.load(args.tune_file)
    else:
        log("offline tuning (fractions 0.9, 0.55: not the live ones) ...")
        t0 = time.perf_counter()
        tf = tune_network(net, kitti_tuning_frames(args.shared, args.frames[:1], [args.voxel_size], [0.9, 0.55]),
                          repeats=1)
        tune_s = time.perf_counter() - t0
    tuner = configure(net, tf)

    seq = kitti_tuning_frames(args.shared, args.frames, [args.voxel_size], args.fractions, seed=1)
    labels = [(f, fr) for f in args.frames for fr in args.fractions]
    with torch.no_grad():
        net(seq[0])  # a node runs one warm-up frame at configure (numba kernels, allocator)
    timed_before = candidates_timed_total()
    rows = []
    with torch.no_grad():
        for p in range(args.passes):
            for (f, fr), x in zip(labels, seq):
                x = type(x)(x.feats, x.coords, 1, x.spatial_shape)  # fresh map cache, as for a new frame
                t0 = time.perf_counter()
                net(x)
                ms = (time.perf_counter() - t0) * 1e3
                rows.append({"pass": p, "frame": f, "fraction": fr, "voxels": len(x), "bucket": voxel_bucket(len(x)),
                             "ms": round(ms, 2), "ms_per_kvoxel": round(ms / len(x) * 1e3, 3)})
                log(f"pass {p} frame {f} x{fr}: {len(x)} voxels (2^{voxel_bucket(len(x))}) {ms:.1f} ms")
    timed = candidates_timed_total() - timed_before
    ms = [r["ms"] for r in rows]
    per = [r["ms_per_kvoxel"] for r in rows]
    med, med_per = statistics.median(ms), statistics.median(per)
    res = {
        "benchmark": "sparse_live_frames",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpu": cpu_model(), "cores": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "backbone": args.backbone,
        "voxel_m": args.voxel_size,
        "threads": args.threads,
        "frames": rows,
        "buckets_seen": sorted({r["bucket"] for r in rows}),
        "lookups": dict(tuner.sources),
        "candidates_timed": timed,
        "median_ms": round(med, 2),
        "max_ms": round(max(ms), 2),
        "max_over_median": round(max(ms) / med, 3),
        "per_kvoxel_max_over_median": round(max(per) / med_per, 3),
        "goal_max_over_median": 1.5,
        "offline_tune_s": None if tune_s is None else round(tune_s, 1),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
