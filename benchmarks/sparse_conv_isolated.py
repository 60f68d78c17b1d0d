#!/usr/bin/env python3
"""The CenterPoint encoder vs spconv 2.3.8, each engine alone in its own fresh process.

Why beside ``sparse_conv.py``: that benchmark interleaves both engines in one process so host noise hits
both alike, but the engines then also disturb each other (caches, allocator): measured 3 Dec 2026 on
KITTI, spconv alone 913-1016 ms over four blocks of one process, interleaved with our encoder 1144-1311
ms, and 1167 ms alone again afterwards. Here every (engine, input) is a fresh process -- warm-up, our
offline tuning on the input (untimed, then frozen), then ``--reps`` timed calls, median -- and the
processes alternate engine by engine, round after round, so host drift is shared by neighbours in time.
Same inputs and rules as ``sparse_conv.py`` (upstream voxel order, our sort and maps timed, BN unfolded,
1 thread). Engines: ``spconv``; ``ours`` (every CPU dataflow a candidate, oneDNN included); ``mkl`` (ours
without the oneDNN candidates: MKL for every GEMM, as spconv's CPU path).

    SPCONV_SITE=/tmp/spconv-site .venv/bin/python benchmarks/sparse_conv_isolated.py --rounds 3

Prints one line per process, then ONE JSON object last: per round and input the medians and ratios, and
the median over rounds of each ratio (``encoder_speedup_1t_isolated``: gmean over inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("spconv", "ours", "mkl")
INPUTS = ("kitti", "nuscenes")


def child(engine: str, which: str, reps: int, shared: str) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    import torch

    import sparse_conv as B
    from engines.sparse.backbones import SparseEncoder, set_fuse
    from engines.sparse.spconv_twins import spconv_sparse_encoder

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    sp = B.import_spconv()
    vox = B.kitti(Path(shared), 5) if which == "kitti" else B.nuscenes(Path(shared), 5)
    twin = spconv_sparse_encoder(sp, 5, vox.shape_zyx, share_block_maps=True)
    B.randomise_bn(twin, 7)
    twin.eval()
    if engine == "spconv":
        def run():
            return twin(vox.feats, vox.coors, 1)
        run()
    else:
        ours = SparseEncoder(5, vox.shape_zyx).eval()
        ours.load_state_dict(twin.state_dict(), strict=True)
        ours = set_fuse(ours, False)

        def run():
            return ours(vox.feats, vox.coors, 1)
        B.tuned_on(ours, run, B.MKL_CPU_CANDIDATES if engine == "mkl" else None)
        run()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        ts.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"engine": engine, "input": which, "median_ms": float(np.median(ts)),
                      "iqr_ms": [float(np.percentile(ts, 25)), float(np.percentile(ts, 75))]}))


def gmean(v: list[float]) -> float:
    return float(statistics.geometric_mean(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="Needs spconv 2.3.8 importable: SPCONV_SITE=/tmp/spconv-site (what `make bench-sparse` "
                                 "installs). 3 rounds take about 8 minutes on dev-2c (18 processes).",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (every engine x every input), alternating")
    ap.add_argument("--reps", type=int, default=7, help="timed calls per process (median)")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="folder holding kitti_object_vis/")
    ap.add_argument("--child", nargs=2, metavar=("ENGINE", "INPUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.reps, a.shared)
        return
    from engines.sparse.tunefile import cpu_model  # noqa: E402 (after the path set-up of the child)

    res: dict = {"benchmark": "sparse_conv_isolated", "cpu": cpu_model(), "threads": 1, "reps": a.reps,
                 "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_avg_start": os.getloadavg()[0],
                 "rounds": []}
    for r in range(a.rounds):
        rnd: dict = {}
        for which in INPUTS:
            for engine in ENGINES:
                out = subprocess.run([sys.executable, __file__, "--child", engine, which, "--reps", str(a.reps),
                                      "--shared", a.shared], capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"round {r + 1}: {engine:6s} {which:8s} {row['median_ms']:8.1f} ms", file=sys.stderr, flush=True)
                rnd.setdefault(which, {})[engine] = row
            d = rnd[which]
            d["speedup"] = d["spconv"]["median_ms"] / d["ours"]["median_ms"]
            d["speedup_mkl"] = d["spconv"]["median_ms"] / d["mkl"]["median_ms"]
        res["rounds"].append(rnd)
    for key in ("speedup", "speedup_mkl"):
        per_input = {w: statistics.median(rnd[w][key] for rnd in res["rounds"]) for w in INPUTS}
        res[f"encoder_{key}_1t_isolated_per_input"] = {w: round(v, 3) for w, v in per_input.items()}
        res[f"encoder_{key}_1t_isolated"] = round(gmean(list(per_input.values())), 3)
    res["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
