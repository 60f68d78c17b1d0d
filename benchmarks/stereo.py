"""Classical stereo (OpenCV SGBM) depth quality and speed: the real KITTI pair, generated frames, 376x1241.

Quality (metrics in :mod:`perception_nodes.pipeline.stereo_eval`: abs-rel, share within 3 px, within 5 %,
KITTI's 3 px or 5 %, coverage of the reference pixels):

* ``kitti``: the rectified pair in ``../shared/data/kitti_stereo_srcnn/demo`` against its LiDAR scan projected
  into the left image with the pair's calibration (only pixels where both exist; ``coverage`` = share of
  LiDAR-covered pixels with a stereo depth);
* ``generated``: frames of the generator's ``urban_street`` scenario rendered into a bag at ``--gen-resolution``
  (KITTI's by default), scored against the bag's ``/ground_truth/camera/left/depth`` topic (0-``--max-depth`` m);
* ``kitti_occupancy_vs_lidar``: the pair's stereo grid against the LiDAR occupancy model's grid of the same scan,
  on the cells both have evidence for (agreement of the P > 0.5 calls; baseline: every such cell free);
* baselines on the same pixels: ``constant_median`` (the stereo map's own median depth everywhere: no ground
  truth used) and ``oracle_constant`` (the reference's median: the best any constant can do).

Speed: the node's per-pair work on a 376x1241 pair (the KITTI pair, one row padded, one column cut): SGBM alone
(``match``) and match + depth + health ratio + BEV evidence (``pipeline``), p50/p99 over ``--reps``, with 1 and
2 OpenCV threads alternating within each repetition (same load for both), in one run. Goal: pipeline p50 <= 150 ms on this 2-core CPU.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.sparse.tunefile import cpu_model  # noqa: E402
from perception_nodes.pipeline.occupancy import GridSpec  # noqa: E402
from perception_nodes.pipeline.stereo import (  # noqa: E402
    SgbmParams,
    StereoMatcher,
    depth_from_disparity,
    stereo_geometry,
    valid_disparity_ratio,
)
from perception_nodes.pipeline.stereo_eval import depth_metrics, load_kitti_pair, project_lidar_depth  # noqa: E402
from perception_nodes.pipeline.stereo_occupancy import StereoEvidenceParams, stereo_evidence  # noqa: E402

PAIR = (Path(__file__).resolve().parents[1] / "../shared/data/kitti_stereo_srcnn/demo").resolve()


def _baselines(z: np.ndarray, ref: np.ndarray, geom, max_depth: float | None) -> dict:
    stereo_med = float(np.nanmedian(z))
    has = np.isfinite(ref) & (ref > 0) & (ref <= (max_depth or np.inf))
    ref_med = float(np.median(ref[has]))
    return {"constant_median": {"depth_m": stereo_med,
                                **depth_metrics(np.full(z.shape, stereo_med, np.float32), ref, geom, max_depth=max_depth)},
            "oracle_constant": {"depth_m": ref_med,
                                **depth_metrics(np.full(z.shape, ref_med, np.float32), ref, geom, max_depth=max_depth)}}


def kitti_quality(matcher: StereoMatcher) -> dict:
    pair = load_kitti_pair(PAIR)
    g = pair.geometry
    ref = project_lidar_depth(pair)
    disp = matcher.disparity(pair.left, pair.right)
    z = depth_from_disparity(disp, g)
    return {"size": list(pair.left.shape[:2]), "baseline_m": g.baseline, "fx": g.fx,
            "num_disparities": matcher.num_disparities(g.width),
            "valid_disparity_ratio": valid_disparity_ratio(disp, matcher.num_disparities(g.width)),
            "stereo": depth_metrics(z, ref, g), **_baselines(z, ref, g, None)}


def kitti_lidar_reference(pair, params: dict, spec: GridSpec):
    """The LiDAR occupancy model's grid of the KITTI pair's scan: the occupancy node's model and parameters
    (``params`` = the params file), ground segmented as its inline fallback does; what the stereo grids
    are compared with here and in ``stereo_learned.py``."""
    from perception_nodes.config import to_dataclass
    from perception_nodes.pipeline.ground import GroundParams, segment_ground
    from perception_nodes.pipeline.occupancy import OccupancyParams, evidential_occupancy

    occ_p = params["occupancy_grid"]
    pts = pair.points.copy()
    pts[:, 2] += 1.73  # velodyne -> base_link (calibration/kitti_hdl64.yaml)
    ground = segment_ground(pts, to_dataclass(GroundParams, occ_p["ground"]))
    return evidential_occupancy(pts, ground, (0.0, 0.0, 1.73), spec, to_dataclass(OccupancyParams, occ_p["evidence"]))


def kitti_occupancy_vs_lidar() -> dict:
    """The stereo grid of the KITTI pair against the LiDAR occupancy model's grid of the same scan (the
    occupancy node's model and parameters, ground segmented as its inline fallback does), on the cells
    both have evidence for: agreement of the P > 0.5 calls. Baseline: calling every such cell free."""
    from perception_nodes.config import load_params, to_dataclass

    params = load_params()
    st_p = params["stereo_occupancy"]
    spec = to_dataclass(GridSpec, params["occupancy_grid"]["grid"])
    pair = load_kitti_pair(PAIR)
    lidar = kitti_lidar_reference(pair, params, spec)
    z = depth_from_disparity(StereoMatcher(to_dataclass(SgbmParams, st_p["sgbm"])).disparity(pair.left, pair.right),
                             pair.geometry)
    stereo, _ = stereo_evidence(z, pair.geometry, pair.base_from_left(), spec,
                                to_dataclass(StereoEvidenceParams, st_p["evidence"]))
    known_s, known_l = (stereo.occupied + stereo.free) > 0, (lidar.occupied + lidar.free) > 0
    both = known_s & known_l
    so, lo = stereo.probability() > 0.5, lidar.probability() > 0.5
    n = int(both.sum())
    tp, fp = int((both & so & lo).sum()), int((both & so & ~lo).sum())
    fn, tn = int((both & ~so & lo).sum()), int((both & ~so & ~lo).sum())
    return {"stereo_known_cells": int(known_s.sum()), "both_known_cells": n,
            "stereo_occ_lidar_occ": tp, "stereo_occ_lidar_free": fp, "stereo_free_lidar_occ": fn,
            "stereo_free_lidar_free": tn, "agreement": (tp + tn) / n if n else None,
            "occupied_precision": tp / (tp + fp) if tp + fp else None,
            "occupied_recall": tp / (tp + fn) if tp + fn else None,
            "all_free_baseline_agreement": (tn + fp) / n if n else None}


def generated_quality(matcher: StereoMatcher, frames: int, resolution: tuple[int, int], max_depth: float) -> dict:
    from perception_nodes import topics
    from perception_nodes.bags import BagReader
    from perception_nodes.codecs.camera_info import camera_model_from_msg
    from perception_nodes.codecs.image import image_to_numpy
    from perception_nodes.scenario.generate import generate_bag

    per_frame, pooled_est, pooled_ref = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bag = generate_bag(Path(tmp) / "bag", scenario="urban_street", seed=3, duration_s=frames / 10.0,
                           camera_resolution=resolution, progress=False)
        wanted = [topics.CAMERA_IMAGE.format(side="left"), topics.CAMERA_IMAGE.format(side="right"),
                  topics.CAMERA_INFO.format(side="left"), topics.CAMERA_INFO.format(side="right"), topics.GT_DEPTH]
        by_stamp: dict[int, dict[str, object]] = {}
        with BagReader(bag) as r:
            for rec in r.records(topics=wanted):
                st = rec.msg.header.stamp.sec * 1_000_000_000 + rec.msg.header.stamp.nanosec
                by_stamp.setdefault(st, {})[rec.topic] = rec.msg
    g = None
    for st in sorted(by_stamp):
        m = by_stamp[st]
        if len(m) < 5:
            continue
        if g is None:
            g = stereo_geometry(camera_model_from_msg(m[wanted[2]]), camera_model_from_msg(m[wanted[3]]))
        disp = matcher.disparity(image_to_numpy(m[wanted[0]]), image_to_numpy(m[wanted[1]]))
        z = depth_from_disparity(disp, g)
        ref = image_to_numpy(m[wanted[4]])
        per_frame.append(depth_metrics(z, ref, g, max_depth=max_depth))
        pooled_est.append(z)
        pooled_ref.append(ref)
    z, ref = np.concatenate(pooled_est), np.concatenate(pooled_ref)
    return {"frames": len(per_frame), "resolution": list(resolution), "max_depth_m": max_depth,
            "stereo": depth_metrics(z, ref, g, max_depth=max_depth),
            "abs_rel_per_frame": [f["abs_rel"] for f in per_frame], **_baselines(z, ref, g, max_depth)}


def speed(params: SgbmParams, reps: int, thread_counts: list[int]) -> list[dict]:
    """Per thread count: p50/p99 of SGBM alone and of the node's whole per-pair work. The thread counts
    alternate within every repetition, so each sees the same machine load (on shared cores a straggling
    worker thread can make 2 threads slower than 1; only interleaved samples compare fairly)."""
    import cv2

    from perception_nodes.scenario.camera import camera_rig

    pair = load_kitti_pair(PAIR)
    left = np.ascontiguousarray(np.concatenate([pair.left, pair.left[-1:]], axis=0)[:, :1241])
    right = np.ascontiguousarray(np.concatenate([pair.right, pair.right[-1:]], axis=0)[:, :1241])
    from dataclasses import replace

    g = replace(pair.geometry, width=1241, height=376)
    cam = camera_rig(1242, 375)["left"]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = cam.base_from_optical(), cam.position
    matcher = StereoMatcher(params)
    spec, ev = GridSpec(), StereoEvidenceParams()
    nd = matcher.num_disparities(1241)
    match_ms: dict[int, list[float]] = {t: [] for t in thread_counts}
    total_ms: dict[int, list[float]] = {t: [] for t in thread_counts}
    for i in range(reps + 1):
        for threads in thread_counts:
            cv2.setNumThreads(threads)
            t0 = time.perf_counter()
            disp = matcher.disparity(left, right)
            t1 = time.perf_counter()
            z = depth_from_disparity(disp, g)
            valid_disparity_ratio(disp, nd)
            stereo_evidence(z, g, T, spec, ev)
            t2 = time.perf_counter()
            if i:  # the first round builds the matcher and the grid's polar tables
                match_ms[threads].append((t1 - t0) * 1e3)
                total_ms[threads].append((t2 - t0) * 1e3)
    q = lambda xs, p: float(np.percentile(xs, p))  # noqa: E731
    out = []
    for t in thread_counts:
        ratio = np.asarray(total_ms[t]) / np.asarray(total_ms[thread_counts[0]])
        out.append({"threads": t, "reps": reps, "num_disparities": nd,
                    "match_p50_ms": q(match_ms[t], 50), "match_p99_ms": q(match_ms[t], 99),
                    "pipeline_p50_ms": q(total_ms[t], 50), "pipeline_p99_ms": q(total_ms[t], 99),
                    f"pipeline_ratio_vs_{thread_counts[0]}_thread_median": float(np.median(ratio))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--reps", type=int, default=21, help="timed repetitions per thread count (default 21)")
    ap.add_argument("--frames", type=int, default=4, help="generated frames to score (default 4; 0 skips)")
    ap.add_argument("--gen-resolution", default="1242x376", help="WxH of the generated cameras (default 1242x376)")
    ap.add_argument("--max-depth", type=float, default=80.0, help="generated truth scored up to this depth (m)")
    ap.add_argument("--threads", default="1,2", help="OpenCV thread counts to time (default 1,2)")
    args = ap.parse_args()

    params = SgbmParams()
    matcher = StereoMatcher(params)
    result: dict = {"benchmark": "stereo", "cpu": cpu_model(), "cores": os.cpu_count(),
                    "load_avg_1m": os.getloadavg()[0], "sgbm": params.__dict__}
    result["kitti"] = kitti_quality(matcher)
    print("kitti", json.dumps(result["kitti"]["stereo"]), flush=True)
    result["kitti_occupancy_vs_lidar"] = kitti_occupancy_vs_lidar()
    print("kitti occupancy vs lidar", json.dumps(result["kitti_occupancy_vs_lidar"]), flush=True)
    if args.frames > 0:
        w, h = (int(v) for v in args.gen_resolution.lower().split("x"))
        result["generated"] = generated_quality(matcher, args.frames, (w, h), args.max_depth)
        print("generated", json.dumps(result["generated"]["stereo"]), flush=True)
    result["speed_376x1241"] = speed(params, args.reps, [int(t) for t in args.threads.split(",")])
    for s in result["speed_376x1241"]:
        print(f"threads {s['threads']}: match p50 {s['match_p50_ms']:.1f} ms, pipeline p50 {s['pipeline_p50_ms']:.1f} "
              f"p99 {s['pipeline_p99_ms']:.1f} ms", flush=True)
    result["goal_pipeline_p50_ms"] = 150.0
    result["load_avg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
