"""Sim-to-real gap of the generated LiDAR, per realism knob, against the real KITTI and nuScenes frames.

    nice -n 10 .venv/bin/python benchmarks/sim_to_real.py            # full ablation, writes docs/sim_to_real.{json,md}
    nice -n 10 .venv/bin/python benchmarks/sim_to_real.py --quick    # one scenario, all-off / all-on rows only

For each target (KITTI: the hdl64 preset; nuScenes: the hdl32e preset, and the older vlp32 as a row) it
renders a few sweeps per setting (all knobs off, each knob alone, all on) and computes the statistics of
``../shared/docs/sim-to-real-lidar.md`` on them and on the real frames of ``../shared/data`` (evaluation
only: nothing from them reaches the generator). Every statistic is computed by the same code on both
sides, so the rows compare like with like; the real car sample is small (a handful of cars), so treat the
car rows as indicative.

Definitions (same code for sim and real):

* ground: a point within 0.25 m of the lowest point of its 6 x 6 m cell (sensor frame);
* ground plane: least squares z = a x + b y + c over ground points 5-15 m ahead (x in [5, 15],
  |y| <= 8); sensor height = |c| / sqrt(1 + a^2 + b^2), tilt = atan(hypot(a, b)), residual = std;
* scattered voxels: non-ground points 3-40 m away in 1 m voxels holding >= 5 points, whose covariance
  has smallest / largest eigenvalue > 0.3 (3-D spread, as foliage; planes, poles and box corners stay
  below: the plain simulator scores 0.00 on it);
* cars (label Car; KITTI Car, nuScenes car) 5-40 m away with >= 5 points: fill = points in the box grown by
  0.1 m / rays of the sensor's table that hit the bare box from the sensor origin; face distance: per
  point, the distance to the nearest face of the box; roof: points within 0.15 m of the roof;
* intensity in the target's own scale (KITTI 0-1, nuScenes 0-255); exact zeros.

Model transfer (training a detector with and without each knob and scoring it on the real frames) is
not measured here: that needs the training pipeline (issue 10, Deliver 4-5).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perception_nodes.scenario import SCENARIOS, BeamModel, actors_at, boxes_in_base_link, cast_scan, ego_pose3d  # noqa: E402
from perception_nodes.scenario.lidar import _cast_box, _tables  # noqa: E402
from perception_nodes.scenario.realism import (  # noqa: E402
    INTENSITY_SCALE,
    KNOBS,
    Realism,
    RealismState,
    apply_scene_realism,
    realism_beams,
)

SHARED = ROOT.parent / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
MARK_BEGIN = "<!-- sim_to_real:begin -->"
MARK_END = "<!-- sim_to_real:end -->"


# --------------------------------------------------------------------------------------------------
# statistics

def _pct(a, q):
    return float(np.percentile(a, q)) if len(a) else float("nan")


def ground_mask(p: np.ndarray, cell: float = 6.0, tol: float = 0.25) -> np.ndarray:
    ij = np.floor(p[:, :2] / cell).astype(np.int64)
    key = ij[:, 0] * 100003 + ij[:, 1]
    uniq, inv = np.unique(key, return_inverse=True)
    zmin = np.full(len(uniq), np.inf)
    np.minimum.at(zmin, inv, p[:, 2])
    return p[:, 2] <= zmin[inv] + tol


def scattered_fraction(p: np.ndarray, ground: np.ndarray) -> float:
    ng = p[~ground]
    r = np.hypot(ng[:, 0], ng[:, 1])
    ng = ng[(r >= 3.0) & (r <= 40.0)]
    if len(ng) == 0:
        return float("nan")
    v = np.floor(ng[:, :3]).astype(np.int64)
    key = (v[:, 0] * 1000 + v[:, 1]) * 1000 + v[:, 2]
    order = np.argsort(key, kind="stable")
    key, pts = key[order], ng[order, :3].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    scattered = 0
    for a, b in zip(starts, ends):
        if b - a < 5:
            continue
        ev = np.linalg.eigvalsh(np.cov(pts[a:b].T))
        if ev[-1] > 0 and ev[0] / ev[-1] > 0.3:
            scattered += b - a
    return scattered / len(ng)


def plane_fit(p: np.ndarray, ground: np.ndarray) -> dict:
    g = p[ground]
    m = (g[:, 0] >= 5.0) & (g[:, 0] <= 15.0) & (np.abs(g[:, 1]) <= 8.0)
    g = g[m].astype(np.float64)
    if len(g) < 50:
        return {"height_m": float("nan"), "tilt_deg": float("nan"), "residual_mm": float("nan")}
    A = np.c_[g[:, 0], g[:, 1], np.ones(len(g))]
    coef, *_ = np.linalg.lstsq(A, g[:, 2], rcond=None)
    res = g[:, 2] - A @ coef
    # one robust pass: drop the worst 5 % (curbs, stray object points) and refit
    keep = np.abs(res) <= np.percentile(np.abs(res), 95)
    coef, *_ = np.linalg.lstsq(A[keep], g[keep, 2], rcond=None)
    res = g[keep, 2] - A[keep] @ coef
    a, b, c = coef
    return {"height_m": float(abs(c) / math.sqrt(1 + a * a + b * b)),
            "tilt_deg": float(math.degrees(math.atan(math.hypot(a, b)))), "residual_mm": float(np.std(res) * 1000)}


def bare_rays(box, beams: BeamModel) -> int:
    """Rays of the sensor's table that hit the box alone (box in the sensor frame)."""
    tables = _tables(beams)
    shape = (beams.n_beams, beams.n_azimuth)
    t = np.full(shape, np.inf)
    cos = np.zeros(shape)
    src = np.full(shape, -1, dtype=np.int32)
    half = tuple(s / 2.0 for s in box.size)
    _cast_box(tuple(box.center), box.yaw, half, beams, tables, t, cos, src, 0)
    return int(np.isfinite(t).sum())


def car_stats(p: np.ndarray, cars: list, beams: BeamModel, scale: float) -> list[dict]:
    """Per car (sensor frame, 5-40 m, >= 5 points): fill, face distance, roof share, intensity, size."""
    out = []
    for b in cars:
        d = math.hypot(b.center[0], b.center[1])
        if not 5.0 <= d <= 40.0:
            continue
        inside = b.contains(p, margin=0.1)
        n = int(inside.sum())
        if n < 5:
            continue
        q = p[inside, :3].astype(np.float64) - np.asarray(b.center)
        c, s = math.cos(-b.yaw), math.sin(-b.yaw)
        x, y, z = c * q[:, 0] - s * q[:, 1], s * q[:, 0] + c * q[:, 1], q[:, 2]
        hl, hw, hh = (v / 2.0 for v in b.size)
        face = np.min(np.abs(np.stack([hl - np.abs(x), hw - np.abs(y), hh - np.abs(z)])), axis=0)
        n_bare = bare_rays(b, beams)
        out.append({"range_m": d, "points": n, "fill": n / max(n_bare, 1), "face_median_m": float(np.median(face)),
                    "face_p90_m": _pct(face, 90), "roof_share": float(np.mean(z >= hh - 0.15)),
                    "top20_share": float(np.mean(z >= hh - 0.4 * hh)),
                    "intensity_median": float(np.median(p[inside, 3]) * scale), "size": list(b.size)})
    return out


def scan_stats(p: np.ndarray, scale: float) -> dict:
    """Statistics of one sweep (points (N, 4) in the sensor frame, intensity multiplied by ``scale``)."""
    p = p[np.all(np.isfinite(p[:, :4]), axis=1)]
    r = np.linalg.norm(p[:, :3].astype(np.float64), axis=1)
    p = p[r > 1.0]
    r = r[r > 1.0]
    g = ground_mask(p)
    inten = p[:, 3].astype(np.float64) * scale
    el = np.degrees(np.arcsin(np.clip(p[:, 2] / r, -1, 1)))
    far = (r >= 40.0) & (r < 80.0)
    near_g = g & (r < 20.0)
    return {
        "points": int(len(p)), "max_range_m": float(r.max()),
        "share_0_10_20_40_80_inf": [float(np.mean((r >= a) & (r < b))) for a, b in
                                    ((0, 10), (10, 20), (20, 40), (40, 80), (80, np.inf))],
        "elev_share_lt-15_-15-5_-5-0_ge0": [float(np.mean(el < -15)), float(np.mean((el >= -15) & (el < -5))),
                                            float(np.mean((el >= -5) & (el < 0))), float(np.mean(el >= 0))],
        "ground_share": float(np.mean(g)),
        "intensity_p5_p50_p95": [_pct(inten, 5), _pct(inten, 50), _pct(inten, 95)],
        "zero_share": float(np.mean(inten == 0.0)),
        "zero_share_40_80": float(np.mean(inten[far] == 0.0)) if far.any() else float("nan"),
        "ground_intensity_median": float(np.median(inten[near_g])) if near_g.any() else float("nan"),
        "nonground_intensity_median": float(np.median(inten[~g])) if (~g).any() else float("nan"),
        "quantised": bool(np.allclose(inten * (100.0 if scale == 1.0 else 1.0),
                                      np.round(inten * (100.0 if scale == 1.0 else 1.0)), atol=1e-3)),
        "scattered_share": scattered_fraction(p, g),
        **plane_fit(p, g),
    }


def summarise(scans: list[dict], cars: list[dict]) -> dict:
    """Medians over scans (and over cars) of the headline quantities."""
    def med(key, idx=None):
        vals = [s[key] if idx is None else s[key][idx] for s in scans]
        vals = [v for v in vals if v == v]
        return float(np.median(vals)) if vals else float("nan")

    def cmed(key):
        vals = [c[key] for c in cars]
        return float(np.median(vals)) if vals else float("nan")

    def crange(key):
        vals = [c[key] for c in cars]
        return [_pct(vals, 10), _pct(vals, 90)] if vals else [float("nan"), float("nan")]

    return {
        "scans": len(scans), "cars": len(cars),
        "points": med("points"), "max_range_m": float(max(s["max_range_m"] for s in scans)),
        "ground_share": med("ground_share"),
        "intensity_ground": med("ground_intensity_median"), "intensity_nonground": med("nonground_intensity_median"),
        "intensity_p50": med("intensity_p5_p50_p95", 1), "zero_share": med("zero_share"),
        "zero_share_40_80": med("zero_share_40_80"), "quantised": all(s["quantised"] for s in scans),
        "height_m": med("height_m"), "tilt_deg": med("tilt_deg"), "residual_mm": med("residual_mm"),
        "scattered_share": med("scattered_share"),
        "car_fill": cmed("fill"), "car_fill_p10_p90": crange("fill"),
        "car_face_median_m": cmed("face_median_m"), "car_roof_share": cmed("roof_share"),
        "car_intensity": cmed("intensity_median"),
        "car_size_mean": [float(np.mean([c["size"][i] for c in cars])) for i in range(3)] if cars else [],
    }


# --------------------------------------------------------------------------------------------------
# real frames

def _rot_z(boxes, points, angle):
    from dataclasses import replace

    c, s = math.cos(angle), math.sin(angle)
    p = points.copy()
    p[:, 0], p[:, 1] = c * points[:, 0] - s * points[:, 1], s * points[:, 0] + c * points[:, 1]
    out = [replace(b, center=(c * b.center[0] - s * b.center[1], s * b.center[0] + c * b.center[1], b.center[2]),
                   yaw=b.yaw + angle) for b in boxes]
    return out, p


def real_kitti() -> tuple[list[dict], list[dict]]:
    from perception_nodes.datasets.kitti import read_kitti_object
    from perception_nodes.datasets.mmdet3d import read_mmdet3d_info

    beams = BeamModel.hdl64(max_range=200.0)
    scans, cars = [], []
    for f in read_kitti_object(SHARED / "kitti_object_vis" / "data" / "object"):
        scans.append(scan_stats(f.points[:, :4], 1.0))
        cars += car_stats(f.points, [b for b in f.boxes if b.label == "Car"], beams, 1.0)
    stereo = np.fromfile(SHARED / "kitti_stereo_srcnn" / "demo" / "lidar.bin", dtype="<f4").reshape(-1, 4)
    scans.append(scan_stats(stereo, 1.0))
    for f in read_mmdet3d_info(SHARED / "kitti_mmdet3d_demo" / "demo" / "data" / "kitti" / "000008.pkl"):
        cars += car_stats(f.points, [b for b in f.boxes if b.label == "Car"], beams, 1.0)  # FOV crop: cars only
    return scans, cars


def real_nuscenes() -> tuple[list[dict], list[dict]]:
    from perception_nodes.datasets.mmdet3d import read_mmdet3d_info

    beams = BeamModel.hdl32e(max_range=200.0)
    pkl = next((SHARED / "nuscenes_mmdet3d_demo" / "demo" / "data" / "nuscenes").glob("*.pkl"))
    scans, cars = [], []
    for f in read_mmdet3d_info(pkl):
        boxes, pts = _rot_z(f.boxes, f.points[:, :4].copy(), -math.pi / 2)  # x right, y forward -> x forward, y left
        scans.append(scan_stats(pts, 1.0))
        cars += car_stats(pts, [b for b in boxes if b.label == "car"], beams, 1.0)
    return scans, cars


# --------------------------------------------------------------------------------------------------
# simulated frames

def sim_rows(target: str, beams: BeamModel, scenarios, times, rows) -> dict:
    """name -> summary for each realism row."""
    scale = INTENSITY_SCALE[target]
    out = {}
    for name, real in rows:
        tic = time.perf_counter()
        scans, cars = [], []
        for k, scen in enumerate(scenarios):
            seed = k
            scene = apply_scene_realism(SCENARIOS[scen](seed), real, seed) if real.active else SCENARIOS[scen](seed)
            b = realism_beams(beams, real) if real.active else beams
            state = RealismState.create(real, b, seed, mount_height=1.73) if real.active else None
            mount = state.mount_transform() if state is not None else np.array(
                [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.73], [0, 0, 0, 1.0]])
            for t in times:
                rng = np.random.default_rng([seed, 1, int(t * 10)])
                scan = cast_scan(scene, t, b, rng, mount_height=1.73, realism=state)
                p = scan.points
                scans.append(scan_stats(p, scale))
                # cars: points and boxes in the level frame at the sensor (ground truth is in base_link)
                q = p[:, :3].astype(np.float64) @ mount[:3, :3].T
                pl = np.c_[q, p[:, 3]].astype(np.float32)
                gt = boxes_in_base_link(actors_at(scene, t, ["Car"]), ego_pose3d(t, scene))
                from dataclasses import replace

                gt = [replace(g, center=(g.center[0], g.center[1], g.center[2] - mount[2, 3])) for g in gt]
                cars += car_stats(pl, gt, beams, scale)
        out[name] = summarise(scans, cars)
        out[name]["seconds"] = round(time.perf_counter() - tic, 1)
        print(f"  {target} {name}: {out[name]['seconds']} s", file=sys.stderr)
    return out


def ablation_rows(target: str, quick: bool):
    rows = [("all off", Realism(target=target))]
    if not quick:
        rows += [(f"+{k}", Realism(target=target, **{k: True})) for k in KNOBS]
    rows.append(("all on", Realism.preset(target)))
    return rows


# --------------------------------------------------------------------------------------------------
# report

COLUMNS = [  # (key, header, format)
    ("points", "points", "{:.0f}"), ("max_range_m", "max range m", "{:.1f}"),
    ("car_fill", "car fill (p10-p90)", None), ("car_face_median_m", "face dist. m", "{:.3f}"),
    ("car_roof_share", "roof share", "{:.2f}"), ("intensity_ground", "I ground", "{:.2f}"),
    ("intensity_nonground", "I non-ground", "{:.2f}"), ("zero_share", "zeros", "{:.3f}"),
    ("zero_share_40_80", "zeros 40-80 m", "{:.2f}"), ("quantised", "quantised", "{}"),
    ("height_m", "height m", "{:.2f}"), ("tilt_deg", "tilt °", "{:.2f}"), ("residual_mm", "resid. mm", "{:.0f}"),
    ("scattered_share", "scattered", "{:.3f}"), ("car_intensity", "car I", "{:.2f}"),
    ("car_size_mean", "car l×w×h", None),
]


def _cell(row: dict, key: str, fmt: str | None) -> str:
    v = row.get(key)
    if key == "car_fill":
        lo, hi = row.get("car_fill_p10_p90", [float("nan")] * 2)
        return "—" if v != v else f"{v:.2f} ({lo:.2f}–{hi:.2f})"
    if key == "car_size_mean":
        return "—" if not v else "×".join(f"{x:.2f}" for x in v)
    if isinstance(v, float) and v != v:
        return "—"
    return fmt.format(v)


def markdown(result: dict) -> str:
    lines = []
    for target in result["targets"]:
        blk = result["targets"][target]
        lines.append(f"### {target}: {blk['sensor']} sweeps ({blk['scenarios']}, t = {blk['times']} s) vs "
                     f"{blk['real_label']}\n")
        lines.append("| setting | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
        lines.append("|---|" + "---|" * len(COLUMNS))
        real = blk["real"]
        lines.append(f"| **real {target}** ({real['scans']} scans, {real['cars']} cars) | "
                     + " | ".join(_cell(real, k, f) for k, _, f in COLUMNS) + " |")
        for name, row in blk["sim"].items():
            lines.append(f"| {name} ({row['cars']} cars) | " + " | ".join(_cell(row, k, f) for k, _, f in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one scenario, one time, all-off and all-on rows only")
    ap.add_argument("--targets", default="kitti,nuscenes", help="comma-separated: kitti, nuscenes")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "sim_to_real.json", help="where to write the JSON")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "sim_to_real.md",
                    help="markdown file whose table (between the sim_to_real markers) is replaced")
    ap.add_argument("--no-write", action="store_true", help="print the JSON only")
    args = ap.parse_args(argv)
    scenarios = ["urban_street"] if args.quick else ["urban_street", "curved_road", "highway"]
    times = [2.0] if args.quick else [1.0, 4.0]
    result = {"generator": "perception_nodes.scenario (realism knobs)", "targets": {}}
    for target in args.targets.split(","):
        if target == "kitti":
            real_scans, real_cars = real_kitti()
            beams = BeamModel.hdl64()
            label = "4 KITTI HDL-64E scans (+ frame 000008 for cars)"
            extra = []
        else:
            real_scans, real_cars = real_nuscenes()
            beams = BeamModel.hdl32e()
            label = "1 nuScenes HDL-32E keyframe"
            extra = [("vlp32 sensor, all off", BeamModel.vlp32())]
        sim = {}
        for name, b in extra:
            if not args.quick:
                sim.update(sim_rows(target, b, scenarios, times, [(name, Realism(target=target))]))
        sim.update(sim_rows(target, beams, scenarios, times, ablation_rows(target, args.quick)))
        result["targets"][target] = {"sensor": beams.name, "scenarios": ", ".join(scenarios), "times": times,
                                     "real_label": label, "real": summarise(real_scans, real_cars),
                                     "real_scans": real_scans, "real_cars": real_cars, "sim": sim}
    text = json.dumps(result, indent=1, sort_keys=False, default=float)
    if args.no_write:
        print(text)
        return 0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")
    table = markdown(result)
    if args.doc.is_file() and MARK_BEGIN in args.doc.read_text():
        doc = args.doc.read_text()
        head, rest = doc.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        args.doc.write_text(f"{head}{MARK_BEGIN}\n{table}\n{MARK_END}{tail}")
    else:
        print(table)
    print(json.dumps({t: {"real": v["real"], "all_on": v["sim"].get("all on")} for t, v in result["targets"].items()},
                     default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
