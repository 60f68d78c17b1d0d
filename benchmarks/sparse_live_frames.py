"""Per-frame times of a configured sparse backbone over a sequence of real frames of varying size.

What a live node sees: the network is configured once with a tune file (tuned offline, as
`perception-stack engines tune` does), then frames arrive whose voxel counts differ -- here real
KITTI scans, each also thinned to several fractions of its points, so counts cross power-of-two
buckets. Every frame is timed end to end (kernel maps + all convolutions, BatchNorm, ReLU), one
thread. Before the live path only looked up, a new voxel count re-timed every candidate inside the
frame; ``old_live_tuning_first_frame_ms`` re-creates that on the first frame for comparison. The
goal is no frame above 1.5x the median. ``ms_per_gmac`` divides by the frame's work (multiply-
accumulates over all kernel-map pairs): flat when nothing but the work varies.

Each frame's time is its median over ``--passes`` plays of the sequence (machine noise);
``single_run_max_over_median`` is the worst single run. Frames differ in size, so time per frame
also differs for an honest reason; ``per_kvoxel`` gives ms per 1000 input voxels as a
size-independent figure. ``candidates_timed`` counts candidates timed
during the sequence (must be 0). Without ``--tune-file`` the offline tuning runs first (on other
point fractions than the live sequence uses) and its time is reported as ``offline_tune_s``.

    python benchmarks/sparse_live_frames.py [--tune-file F] [--voxel-size 0.1] [--threads 1]
    python benchmarks/sparse_live_frames.py --sequence drive     # consecutive scans of one generated drive

Two sequences: ``kitti`` (default) mixes three unrelated real scenes, each thinned to 65-100 % of its
points -- a stress test whose work per frame spans 2.6x, so its slowest/median ratio mostly measures
content. ``drive`` is what a node on a vehicle meets from one scan to the next: ``--drive-frames``
consecutive 10 Hz scans of a generated ``urban_street`` drive on an HDL-64 with the generator's
``kitti`` realism knobs (vegetation, object dropout, tilted mount), frame sizes as the drive makes them.

Prints progress to stderr and one JSON line (last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.sparse.autotune import Autotuner, candidates_timed_total  # noqa: E402
from engines.sparse.tunefile import (  # noqa: E402
    BACKBONES,
    TuneFile,
    configure,
    cpu_model,
    kitti_tuning_frames,
    shape_key,
    sparse_conv_modules,
    tune_network,
    voxel_bucket,
)


class OldLiveTuner(Autotuner):
    """The former live behaviour, for comparison: time all candidates (3 repeats) on each unseen shape."""

    def __init__(self) -> None:
        super().__init__(measure=True, repeats=3)

    def run(self, x, weight, kmap, epilogue=None):  # type: ignore[no-untyped-def]
        if shape_key(weight, kmap, x.dtype) in self.table.entries:
            self.measure = False
            try:
                return super().run(x, weight, kmap, epilogue)
            finally:
                self.measure = True
        return super().run(x, weight, kmap, epilogue)


def drive_frames(seed: int, n: int, voxel_size: float) -> list:
    """``n`` consecutive scans of a generated urban drive (HDL-64, ``kitti`` realism), voxelised as
    :func:`kitti_tuning_frames` does (mean of x, y, z, intensity per voxel)."""
    import tempfile

    from engines.sparse.tensor import SparseTensor
    from engines.sparse.voxelize import voxelize_mean
    from perception_nodes.bags.reader import BagReader
    from perception_nodes.codecs.pointcloud2 import read_xyzi
    from perception_nodes.scenario.generate import generate_bag
    from perception_nodes.topics import LIDAR_POINTS

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        log(f"generating the drive (urban_street seed {seed}, hdl64, realism kitti, {n} scans) ...")
        bag = generate_bag(Path(tmp) / "drive", scenario="urban_street", seed=seed, duration_s=n / 10.0,
                           lidar="hdl64", cameras=False, progress=False, realism="kitti")
        with BagReader(bag) as r:
            for rec in r.records([LIDAR_POINTS]):
                pts = torch.from_numpy(read_xyzi(rec.msg, remove_nonfinite=True).astype("float32"))
                st, _, _ = voxelize_mean(pts, voxel_size)
                out.append(SparseTensor(st.feats.float().contiguous(), st.coords, 1, st.spatial_shape))
    return out[:n]


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
    ap.add_argument("--sequence", choices=("kitti", "drive"), default="kitti",
                    help="kitti: real scans x point fractions (default); drive: consecutive scans of a generated drive")
    ap.add_argument("--drive-frames", type=int, default=40, help="scans of the drive sequence (default 40, 10 Hz)")
    ap.add_argument("--drive-seed", type=int, default=900, help="seed of the generated drive (default 900)")
    ap.add_argument("--passes", type=int, default=3, help="times the whole sequence is played (default 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-old", action="store_true", help="skip timing the old live-tuning first frame")
    ap.add_argument("--candidates", nargs="+", help="dataflows the offline tuning may choose from (default: all); "
                    "e.g. the pre-fused set gather_scatter gather_scatter_blocked implicit_gemm implicit_gemm_sorted")
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
                          repeats=1, candidates=args.candidates)
        tune_s = time.perf_counter() - t0
    tuner = configure(net, tf)

    if args.sequence == "drive":
        seq = drive_frames(args.drive_seed, args.drive_frames, args.voxel_size)
        labels = [(i, 1.0) for i in range(len(seq))]
    else:
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

    # work per frame (multiply-accumulates over all kernel-map pairs), from an untimed pass
    macs = []
    inner = tuner.run

    def counting(xf, w, km):
        macs[-1] += km.n_pairs * int(w.shape[1]) * int(w.shape[2])
        return inner(xf, w, km)

    tuner.run = counting  # type: ignore[method-assign]
    with torch.no_grad():
        for x in seq:
            macs.append(0)
            net(type(x)(x.feats, x.coords, 1, x.spatial_shape))
    tuner.run = inner  # type: ignore[method-assign]

    # what the old live path did on the first frame it met: time every candidate of each new shape
    old_ms = None
    if not args.skip_old:
        old = OldLiveTuner()
        for m in sparse_conv_modules(net):
            m.tuner = old
        x = seq[0]
        t0 = time.perf_counter()
        with torch.no_grad():
            net(type(x)(x.feats, x.coords, 1, x.spatial_shape))
        old_ms = (time.perf_counter() - t0) * 1e3
        configure(net, tf)
    # per frame: the median over passes (one pass's time of a frame carries the machine's noise too)
    per_frame = []
    for (f, fr), mac in zip(labels, macs):
        mine = [r for r in rows if r["frame"] == f and r["fraction"] == fr]
        m = statistics.median(r["ms"] for r in mine)
        per_frame.append({"frame": f, "fraction": fr, "voxels": mine[0]["voxels"], "bucket": mine[0]["bucket"],
                          "gmac": round(mac / 1e9, 3), "median_ms": round(m, 2),
                          "ms_per_kvoxel": round(m / mine[0]["voxels"] * 1e3, 3),
                          "ms_per_gmac": round(m / (mac / 1e9), 2)})
    ms = [r["median_ms"] for r in per_frame]
    per = [r["ms_per_kvoxel"] for r in per_frame]
    raw = [r["ms"] for r in rows]
    pg = [r["ms_per_gmac"] for r in per_frame]
    med, med_per = statistics.median(ms), statistics.median(per)
    res = {
        "benchmark": "sparse_live_frames",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0], "python": platform.python_version(),
                    "torch": torch.__version__},
        "backbone": args.backbone,
        "voxel_m": args.voxel_size,
        "sequence": args.sequence if args.sequence == "kitti" else
        {"kind": "drive", "scenario": "urban_street", "seed": args.drive_seed, "lidar": "hdl64", "realism": "kitti",
         "scans": len(seq)},
        "threads": args.threads,
        "candidates": args.candidates or "all",
        "choices": tuner.choices,
        "frames": per_frame,
        "runs": rows,
        "buckets_seen": sorted({r["bucket"] for r in rows}),
        "lookups": dict(tuner.sources),
        "candidates_timed": timed,
        "median_ms": round(med, 2),
        "max_ms": round(max(ms), 2),
        "max_over_median": round(max(ms) / med, 3),
        "per_kvoxel_max_over_median": round(max(per) / med_per, 3),
        "per_gmac_max_over_median": round(max(pg) / statistics.median(pg), 3),
        "single_run_max_over_median": round(max(raw) / statistics.median(raw), 3),
        "goal_max_over_median": 1.5,
        "offline_tune_s": None if tune_s is None else round(tune_s, 1),
        "old_live_tuning_first_frame_ms": None if old_ms is None else round(old_ms, 1),
        "old_live_tuning_first_frame_over_median": None if old_ms is None else round(old_ms / med, 2),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
