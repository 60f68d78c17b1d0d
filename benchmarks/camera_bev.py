#!/usr/bin/env python3
"""Camera -> BEV branch speed per stage at 376 x 1241 (perception_nodes/models/camera_bev.py).

The network of the default :class:`CameraBevConfig` (or ``--config JSON``) runs on the shared KITTI
frame's left colour image resized to the input size, with camera 2's calibration scaled to it
(base_link = the ground below the Velodyne), eval mode with the BatchNorms folded into the convolutions
(:meth:`CameraBevNet.fold_batchnorm`, ``--no-fold`` keeps them), ``torch.no_grad``, at ``--threads``
(default 1, what the nodes use). Weights are the untrained initialisation: the time does not depend on them. Stages
as a node would time them: image backbone, depth/context head (lift), BEV pooling (the fused kernel,
geometry cached), BEV CNN, heads; the geometry build (once per calibration) is timed apart.

Both wall-clock and process CPU time are reported: on a shared machine a single-threaded process
waiting for a core inflates the wall time but not its CPU time, so the CPU p50 says what the code costs
and the wall p50 what it got. Goal (issue 11): p50 <= 150 ms on this 2-core CPU. The last stdout line
is one JSON object.

    nice .venv/bin/python benchmarks/camera_bev.py [--reps 21] [--threads 1] [--size 376 1241 --size 96 320]
        [--weights DIR]

Several ``--size`` run in the same process, repetitions interleaved (default: KITTI's 376 x 1241 and the
demo bag's 96 x 320, the baseline), so their ratio is not skewed by the load changing between runs;
``--weights`` loads a trained weights folder (the packaged one with ``--weights packaged``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.sparse.tunefile import cpu_model  # noqa: E402
from perception_nodes.models.camera_bev import CameraBevNet, kitti_camera_geometry  # noqa: E402

GOAL_P50_MS = 150.0
KITTI = "kitti_object_vis/data/object/training"
VELODYNE_HEIGHT = 1.73  # calibration/kitti_hdl64.yaml


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def load_input(shared: Path, size: tuple[int, int], stride: int):
    """(image uint8 [1, 3, H, W], CameraGeometry) from the shared KITTI frame 000000, resized to ``size``."""
    h, w = size
    base_from_velo = np.eye(4)
    base_from_velo[2, 3] = VELODYNE_HEIGHT
    img_path, calib_path = shared / KITTI / "image_2/000000.png", shared / KITTI / "calib/000000.txt"
    if img_path.exists() and calib_path.exists():
        import cv2

        from perception_nodes.calibration import KittiCalib, load_kitti_calib

        bgr = cv2.imread(str(img_path))
        sy, sx = h / bgr.shape[0], w / bgr.shape[1]
        rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        calib = load_kitti_calib(calib_path)
        S = np.diag([sx, sy, 1.0])  # pixel (u, v) -> (sx u, sy v) (centre-of-pixel offsets ignored)
        calib = KittiCalib(P={k: S @ v for k, v in calib.P.items()}, R0_rect=calib.R0_rect,
                           Tr_velo_to_cam=calib.Tr_velo_to_cam)
        cam = kitti_camera_geometry(calib, base_from_velo, (h, w), stride)
        return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous(), cam, str(img_path.relative_to(shared))
    from engines.bev_pool import CameraGeometry

    T = np.eye(4)
    T[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
    T[:3, 3] = [0.27, 0.0, 1.65]
    K = np.array([[721.5377, 0.0, (w - 1) / 2], [0.0, 721.5377, (h - 1) / 2], [0.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8)
    return img, CameraGeometry.from_arrays(K, T, (h, w), stride), "random image, KITTI-like camera (shared data missing)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"),
                    help="input size (repeatable; default 376 1241 and 96 320)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--config", default=None, help="JSON of CameraBevConfig overrides")
    ap.add_argument("--weights", default=None, help="weights folder, or 'packaged' (default: random init)")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--no-fold", action="store_true", help="keep the BatchNorms (default: folded, as for inference)")
    args = ap.parse_args()
    sizes = [tuple(s) for s in (args.size or [(376, 1241), (96, 320)])]
    torch.set_num_threads(args.threads)
    if args.weights:
        from perception_nodes.models.camera_bev import load_camera_bev

        net, _ = load_camera_bev(None if args.weights == "packaged" else args.weights)
    else:
        net = CameraBevNet(json.loads(args.config) if args.config else None).eval()
    if not args.no_fold:
        net.fold_batchnorm()
    stages = ("image", "lift", "pool", "bev", "heads")
    runs = {}
    for size in sizes:
        img, cam, src = load_input(args.shared, size, net.config.stride)
        t0 = time.perf_counter()
        geom = net.geometry(cam)
        runs[size] = {"img": img, "cam": cam, "src": src, "geom": geom, "crop": net.crop(geom),
                      "build_ms": (time.perf_counter() - t0) * 1e3,
                      "wall": {k: [] for k in (*stages, "total")}, "cpu": {k: [] for k in (*stages, "total")}}
    load0 = os.getloadavg()
    with torch.no_grad():
        for rep in range(args.reps + 2):  # two warm-up runs (numba cache load, oneDNN primitive creation)
            for size, r in runs.items():
                geom, crop = r["geom"], r["crop"]
                marks = [(time.perf_counter(), time.process_time())]
                f = net.image_features(r["img"])
                marks.append((time.perf_counter(), time.process_time()))
                d, c = net.lift(f)
                marks.append((time.perf_counter(), time.process_time()))
                b = net.pool(d, c, geom, 1)
                marks.append((time.perf_counter(), time.process_time()))
                bf = net.bev_net(b, crop)
                marks.append((time.perf_counter(), time.process_time()))
                net.heads(bf, net.coverage(geom), crop)
                marks.append((time.perf_counter(), time.process_time()))
                if rep < 2:
                    continue
                for i, k in enumerate(stages):
                    r["wall"][k].append((marks[i + 1][0] - marks[i][0]) * 1e3)
                    r["cpu"][k].append((marks[i + 1][1] - marks[i][1]) * 1e3)
                r["wall"]["total"].append((marks[-1][0] - marks[0][0]) * 1e3)
                r["cpu"]["total"].append((marks[-1][1] - marks[0][1]) * 1e3)
                log(f"rep {rep - 1}/{args.reps} {size[0]}x{size[1]}: wall {r['wall']['total'][-1]:.1f} ms, "
                    f"cpu {r['cpu']['total'][-1]:.1f} ms")

    def q(v: list[float]) -> dict[str, float]:
        a = np.asarray(v)
        return {"p50_ms": round(float(np.median(a)), 2), "iqr_ms": [round(float(x), 2) for x in np.percentile(a, [25, 75])],
                "p90_ms": round(float(np.percentile(a, 90)), 2), "min_ms": round(float(a.min()), 2)}

    result: dict = {
        "benchmark": "camera_bev", "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
        "torch": torch.__version__, "weights": args.weights or "random init",
        "config": json.loads(json.dumps(net.config.__dict__, default=list)),
        "parameters": int(sum(p.numel() for p in net.parameters())), "batchnorm_folded": not args.no_fold,
        "load_avg_start": [round(v, 2) for v in load0], "goal_p50_ms": GOAL_P50_MS,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "sizes": {},
    }
    for size, r in runs.items():
        key = f"{size[0]}x{size[1]}"
        result["sizes"][key] = {
            "input": list(size), "source": r["src"], "crop": list(r["crop"]), "feature_size": list(r["cam"].feature_size),
            "geometry": r["geom"].stats(), "build_geometry_ms": round(r["build_ms"], 1),
            "wall": {k: q(v) for k, v in r["wall"].items()}, "cpu_time": {k: q(v) for k, v in r["cpu"].items()}}
        result["sizes"][key]["goal_met_wall"] = result["sizes"][key]["wall"]["total"]["p50_ms"] <= GOAL_P50_MS
        log(f"{key} p50 per stage (wall / cpu ms): " + ", ".join(
            f"{k} {result['sizes'][key]['wall'][k]['p50_ms']} / {result['sizes'][key]['cpu_time'][k]['p50_ms']}"
            for k in r["wall"]))
    result["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
