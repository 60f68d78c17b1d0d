"""Margins of the calibration self-check (the numbers in docs/calibration.md).

    python benchmarks/calibration_check.py [--shared ../shared/data] [--resolution 320x96] [--frames 5]

1. Real KITTI (the three kitti_object_vis frames, the kitti_stereo_srcnn pair): the edge statistic F per
   camera at KITTI's own calibration, the stereo pair's vertical disparity and disparity bias, and F with
   each camera's extrinsic turned by +-1 and +-2 deg about each optical axis.
2. Generated frames (urban_street, seed 0, HDL-64, cameras at --resolution): F of every camera clean, and
   of the right camera with the generator's stereo-decalibration fault (the right camera physically turned,
   its calibration unchanged; perception_nodes/scenario/faults.py), per frame and pooled over the frames
   as the monitor pools them; the stereo check per frame.
Prints tables and one JSON line with everything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from perception_nodes.calibration import make_transform
from perception_nodes.calibration_check import (
    AlignmentAccumulator,
    CheckParams,
    alignment_scores,
    check_rig,
    check_stereo,
    edge_response,
    lidar_depth_edges,
    perturbed,
    project_lidar,
    step_px,
)
from perception_nodes.rig import Rig, RigCamera, RigLidar, rig_from_kitti

FAULTS = [("x", 0.5), ("x", 1.0), ("x", 2.0), ("y", 0.5), ("y", 1.0), ("y", 2.0), ("z", 1.0), ("z", 2.0)]


def kitti(shared: Path, p: CheckParams) -> dict:
    from PIL import Image

    obj = shared / "kitti_object_vis/data/object/training"
    srcnn = shared / "kitti_stereo_srcnn/demo"
    captures = {f"object/{i}": (obj / f"calib/{i}.txt", obj / f"velodyne/{i}.bin", {"left": obj / f"image_2/{i}.png"})
                for i in ("000000", "000001", "000002")}
    captures["stereo_srcnn"] = (srcnn / "calib.txt", srcnn / "lidar.bin",
                                {"left": srcnn / "left.png", "right": srcnn / "right.png"})
    out = {}
    for name, (calib, scan, images) in captures.items():
        ims = {k: np.asarray(Image.open(v).convert("RGB")) for k, v in images.items()}
        h, w = ims["left"].shape[:2]
        rig = rig_from_kitti(calib, image_size=(w, h))
        pts = np.fromfile(scan, "<f4").reshape(-1, 4)
        res = check_rig(rig, pts, ims, params=p)
        row = {"truth": {c: round(r.statistic, 3) for c, r in res.cameras.items()},
               "stereo": [{"dy": round(s.median_abs_dy_px, 2), "bias": round(s.disparity_bias_px, 2)} for s in res.stereo],
               "perturbed": {}}
        for cam in ims:
            for ax in range(3):
                for deg in (-2.0, -1.0, 1.0, 2.0):
                    a = [0.0, 0.0, 0.0]
                    a[ax] = deg
                    moved = rig.with_camera_pose(cam, perturbed(rig.cameras[cam].T_base_camera, axis_deg=tuple(a)))
                    c = check_rig(moved, pts, {cam: ims[cam]}, params=p, stereo=False).cameras[cam]
                    row["perturbed"][f"{cam} {'xyz'[ax]}{deg:+g}"] = [round(c.statistic, 3), c.verdict]
        out[name] = row
        print(name, "truth F", row["truth"], "stereo", row["stereo"], flush=True)
        print("   ", " ".join(f"{k}:{v[0]:.2f}{v[1][0]}" for k, v in row["perturbed"].items()), flush=True)
    return out


def generated(resolution: tuple[int, int], frames: int, p: CheckParams) -> dict:
    from perception_nodes.scenario.camera import camera_rig, render_camera
    from perception_nodes.scenario.faults import Faults
    from perception_nodes.scenario.generate import lidar_model
    from perception_nodes.scenario.lidar import cast_scan
    from perception_nodes.scenario.scenarios import make_scene
    from perception_nodes.scenario.scene import actors_at

    w, h = resolution
    scene, beams, cams = make_scene("urban_street", 0), lidar_model("hdl64"), camera_rig(w, h)
    rig = Rig("base_link", {n: RigCamera(n, c.model(), c.transform().matrix) for n, c in cams.items()},
              {"velodyne": RigLidar("velodyne", "velodyne", make_transform(np.eye(3), np.array([0, 0, 1.73])))})
    variants = ["clean"] + [f"{a}{d:g}" for a, d in FAULTS]
    acc = {(v, c): AlignmentAccumulator(c, p) for v in variants for c in cams}
    per_frame: dict = {}
    stereo: dict = {v: [] for v in variants}
    for i in range(frames):
        t = 0.4 * i
        boxes = actors_at(scene, t)
        scan = cast_scan(scene, t, beams, np.random.default_rng(i), mount_height=1.73, boxes=boxes).points
        edges = lidar_depth_edges(scan, p)
        clean = {n: render_camera(scene, t, c, np.random.default_rng(i), boxes=boxes).rgb for n, c in cams.items()}
        lid = project_lidar(scan, rig.T_camera_lidar("left"), rig.cameras["left"].intrinsics, w, h)
        for v in variants:
            ims = dict(clean)
            if v != "clean":
                f = Faults(stereo_decalibration_deg=float(v[1:]), stereo_decalibration_axis=v[0])
                ims["right"] = render_camera(scene, t, cams["right"], np.random.default_rng(i), boxes=boxes,
                                             misalignment=f.right_misalignment(t)).rgb
            for n in (cams if v == "clean" else ["right"]):
                K = rig.cameras[n].intrinsics
                resp = edge_response(ims[n], p.decay_steps * step_px(float(K[0, 0]), p), p)
                s, wt, names, k = alignment_scores(edges[0], edges[1], rig.T_camera_lidar(n), K, resp, p)
                acc[(v, n)].add(s, wt, names, k)
                per_frame.setdefault(f"{v} {n}", []).append(round(float(np.mean(s[1:] < s[0])), 3))
            sc = check_stereo("left", "right", ims["left"], ims["right"], p, lidar_left=lid,
                              fx_baseline=-rig.cameras["right"].baseline_tx)
            stereo[v].append([round(sc.median_abs_dy_px, 2), round(sc.disparity_bias_px, 2)])
    out = {"resolution": f"{w}x{h}", "frames": frames, "edge_F_per_frame": per_frame,
           "edge_F_pooled": {f"{v} {n}": [round(a.result().statistic, 3), a.result().verdict]
                             for (v, n), a in acc.items() if a.frames},
           "stereo_dy_bias_px": stereo}
    for k, v in out["edge_F_pooled"].items():
        print(f"{w}x{h} {k:12s} F per frame {per_frame[k]} pooled {v[0]:.3f} {v[1]}; stereo |dy|, bias "
              f"{stereo[k.split()[0]] if k.endswith('right') else ''}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--resolution", default="320x96", help="generated cameras WxH (default 320x96, the demo's)")
    ap.add_argument("--frames", type=int, default=5, help="generated frames, 0.4 s apart (default 5)")
    ap.add_argument("--skip-kitti", action="store_true")
    a = ap.parse_args()
    p = CheckParams()
    doc = {"params": p.__dict__}
    if not a.skip_kitti:
        doc["kitti"] = kitti(a.shared, p)
    doc["generated"] = generated(tuple(int(v) for v in a.resolution.split("x")), a.frames, p)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
