"""``perception-stack``: replay bags offline, run the graph live, play bags, monitor latency, convert data.

Every command's ``--help`` explains its inputs and outputs. Commands that start ROS nodes default DDS
discovery to this host (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) unless you exported another range.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """examples:
  perception-stack replay                           # embedded default scenario -> out/replay/
  perception-stack convert kitti ../shared/data/kitti_object_vis/data/object/training --out kitti_bag
  perception-stack replay --bag kitti_bag --out out/kitti
  # live over ROS: three shells, each after `. scripts/ros_env.sh` (same ROS_DOMAIN_ID)
  perception-stack live --use-sim-time              # shell 1: the graph on bag time
  perception-stack play kitti_bag --clock --loop    # shell 2: the bag and /clock
  perception-stack monitor                          # shell 3: latency table from /diagnostics
"""


def _cmd_replay(a: argparse.Namespace) -> int:
    from perception_nodes.replay import replay

    res = replay(a.bag, a.config, a.out, progress=not a.quiet, report=not a.no_report)
    e2e = res.latency["end_to_end"]
    over = res.latency["replay"]["overhead_per_frame"]
    print(f"{res.input_frames} frames -> {a.out}/outputs.mcap, latency.json" + ("" if a.no_report else ", report.html"))
    if e2e["count"]:
        print(f"end-to-end latency (occupancy path): p50 {e2e['p50_ms']:.1f} ms, p99 {e2e['p99_ms']:.1f} ms, "
              f"max {e2e['max_ms']:.1f} ms, deadline misses {e2e['deadline_misses']}; replay overhead/frame p50 "
              f"{over['p50_ms']:.2f} ms")
    lb = res.latency.get("end_to_end_paths", {}).get("lidar_branch")
    if lb and lb["count"]:
        print(f"end-to-end latency (LiDAR branch, {lb['node']}): p50 {lb['p50_ms']:.1f} ms, p99 {lb['p99_ms']:.1f} ms, "
              f"max {lb['max_ms']:.1f} ms, deadline misses {lb['deadline_misses']}")
    if res.latency["malformed_inputs"] or any(res.latency["dropped_inputs"].values()):
        why = sorted({f"{node}: {reason}" for node, acct in res.latency.get("inputs", {}).items()
                      for a in acct.values() for reason, n in a["dropped"].items() if n and reason != "sampled_out"})
        print(f"malformed: {res.latency['malformed_inputs']}  dropped: {res.latency['dropped_inputs']}"
              + (f"  (by node and reason: {', '.join(why)}; per topic in latency.json 'inputs')" if why else ""))
    _print_metrics(res.metrics, a.out)
    return 0


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _print_metrics(m: dict | None, out: Path) -> None:
    """The metrics summary: every scored cell, with bootstrap intervals and the base-rate baseline."""
    if not m:
        return
    j = m.get("join") or {}
    print(f"{m.get('frames_scored', 0)} frames scored against the bag's ground truth -> {out}/metrics.json "
          f"(join within {j.get('tolerance_s', 0) * 1e3:g} ms; unmatched: {j.get('unmatched_predictions', 0)} "
          f"outputs, {j.get('unmatched_ground_truth', 0)} ground-truth frames)")
    o = m.get("occupancy")
    if o:
        reg = o["regions"].get("all", {})
        print("occupancy of the geometric grid (/perception/occupancy_grid; the fused grid is scored by "
              f"benchmarks/fusion_check.py), every visible cell ({reg.get('cells', 0)} cells, {100 * (reg.get('unknown_share') or 0):.1f}% "
              f"unknown scored at P=0.5; truth: {', '.join(o['truth'])}):")
        print(f"  {'score':<10}{'value':>8}  {'95% CI':<17}{'base rate':>10}")
        for k in ("iou", "precision", "recall", "brier", "nll", "ece"):
            e = reg.get(k)
            if not e:
                continue
            lo, hi = e["ci95"]
            # the base rate is fitted on these very cells: its ECE is 0 and (rate < 0.5) its IoU/recall 0 by
            # construction, so only its Brier and NLL are a comparison (metrics.json keeps every value)
            base = _fmt(e['base_rate_baseline']) if k in ("brier", "nll") else "-"
            print(f"  {k:<10}{_fmt(e['value']):>8}  [{_fmt(lo)}, {_fmt(hi)}]  {base:>9}"
                  + (f"  geometric {_fmt(e['geometric_baseline'])}" if e.get("geometric_baseline") is not None else ""))
        fa, fu = o["regions"].get("fault_affected"), o["regions"].get("fault_unaffected")
        if fa:
            mv = o["uncertainty"]["mean_vacuity"]
            print(f"  LiDAR-fault-affected cells: recall {_fmt(fa['recall']['value'])} vs {_fmt((fu or {}).get('recall', {}).get('value'))} "
                  f"unaffected; mean vacuity {_fmt(mv.get('fault_affected'))} vs {_fmt(mv.get('fault_unaffected'))}")
        for name, u in o["uncertainty"].items():
            if name == "mean_vacuity":
                continue
            print(f"  {name} AUROC: wrong vs right cells {_fmt(u['auroc_wrong_vs_right'])}, "
                  f"fault-affected vs unaffected {_fmt(u['auroc_fault_affected_vs_unaffected'])}")
    ob = m.get("objects")
    if ob and ob.get("mean_footprint_occupied") is not None:
        print(f"objects within {ob['range_m']:g} m: mean footprint read occupied {_fmt(ob['mean_footprint_occupied'])}; "
              f"occupied cells outside every box {ob['occupied_cells_outside_boxes']}"
              + (f", of them truly free (false positives) {_fmt(ob['false_positive_cells_per_frame'], 1)}/frame, "
                 f"box precision {_fmt(ob['box_precision'])}, F1 {_fmt(ob['f1'])}" if ob.get("box_precision") is not None else ""))
    _print_detection(m)


def _print_detection(m: dict) -> None:
    """One line per class: KITTI AP3D at level all and, for generated ground truth, at moderate (graded)."""
    det = m.get("detection")
    if not det:
        return
    k, g = det.get("kitti") or {}, (det.get("kitti_graded") or {}).get("per_class") or {}
    parts, capped = [], False

    def ap(r: dict) -> str:
        nonlocal capped
        n = r.get("n_gt") or 0
        capped |= 0 < n < 40
        return f"{_fmt(r.get('ap_r40_3d'))}{'*' if 0 < n < 40 else ''} ({n} boxes)"

    for cls, by_level in (k.get("per_class") or {}).items():
        a = by_level.get(k.get("headline_level", "all")) or {}  # bags: level all
        if not a.get("n_gt"):
            continue
        mod = (g.get(cls) or {}).get("moderate") or {}
        parts.append(f"{cls} AP3D {ap(a)}" + (f", moderate {ap(mod)}" if mod else ""))
    if parts:
        from perception_nodes.evaluation import DETECTIONS_OUT

        print(f"detections {DETECTIONS_OUT} (KITTI R40; moderate from virtual-camera levels; all in report.html): "
              + "; ".join(parts) + ("  (*: under 40 boxes the devkit caps AP at (n-1)/40)" if capped else ""))


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from perception_nodes.evaluation import bag_split, write_metrics
    from perception_nodes.replay import replay

    res = replay(a.bag, a.config, a.out, progress=not a.quiet, require_ground_truth=True,
                 match_tolerance_s=a.match_tolerance, report=not a.no_report)
    if res.metrics is not None:
        res.metrics["split"] = bag_split(a.bag)
        write_metrics(res.metrics, a.out)
    _print_metrics(res.metrics, a.out)
    if not a.no_report:
        print(f"report: {a.out}/report.html")
    if not res.metrics or not res.metrics.get("frames_scored"):
        j = (res.metrics or {}).get("join", {})
        print(f"perception-stack: error: no frame was scored: {j.get('unmatched_predictions', 0)} output frames and "
              f"{j.get('unmatched_ground_truth', 0)} ground-truth frames found no partner within "
              f"{a.match_tolerance * 1e3:g} ms (raise --match-tolerance, or check that the graph produced "
              f"occupancy outputs: {res.output_counts})", file=sys.stderr)
        return 1
    return 0


def _cmd_convert_kitti(a: argparse.Namespace) -> int:
    from perception_nodes.bags.kitti import convert_kitti

    s = convert_kitti(a.src, a.out, rig=a.rig, limit=a.limit, progress=not a.quiet)
    print(f"{s.frames} frames -> {a.out}: " + ", ".join(f"{t} x{n}" for t, n in sorted(s.topics.items())))
    return 0


def _cmd_generate(a: argparse.Namespace) -> int:
    from perception_nodes.scenario.generate import generate_main

    return generate_main(a)


def _cmd_train(a: argparse.Namespace) -> int:
    from perception_nodes.learning.cli import train_main  # imports torch only for this command

    return train_main(a.branch, a.config, out=a.out, resume=a.resume, epochs=a.epochs, progress=not a.quiet)


def _cmd_train_box_head(a: argparse.Namespace) -> int:
    from perception_nodes.learning.box_head_train import main as box_head_main  # imports torch

    return box_head_main(a.args, prog="perception-stack train-box-head")


def _cmd_lidar_eval(a: argparse.Namespace) -> int:
    from perception_nodes.learning.lidar_detection_eval import main as lidar_eval_main  # imports torch

    return lidar_eval_main(a.args, prog="perception-stack lidar-eval")


def _cmd_live(a: argparse.Namespace) -> int:
    from perception_nodes.ros.live import run_live

    return run_live(a.config, a.duration, use_sim_time=a.use_sim_time)


def _cmd_play(a: argparse.Namespace) -> int:
    from perception_nodes.ros.play import run_play

    return run_play(a.bag, rate=a.rate, clock=a.clock, topics=a.topics, loop=a.loop, wait_s=a.wait_for_subscribers)


def _cmd_monitor(a: argparse.Namespace) -> int:
    from perception_nodes.ros.monitor import run_monitor

    return run_monitor(a.duration, once=a.once)


def _cmd_params(a: argparse.Namespace) -> int:
    from perception_nodes.config import DEFAULTS_PATH, load_params

    if a.config:
        from perception_nodes.graph import check_graph_params

        params = load_params(a.config)
        try:
            check_graph_params(params)  # the cross-parameter checks each node runs when it is built
        except ValueError as exc:
            raise ValueError(f"{a.config}: {exc}") from exc
        print(json.dumps(params, indent=2))
    else:
        print(DEFAULTS_PATH.read_text())
    return 0


def _cmd_engines_tune(a: argparse.Namespace) -> int:
    import time

    import torch

    from engines.sparse.tunefile import (BACKBONE_IN_CHANNELS, BACKBONES, TuneFile, device_model, kitti_tuning_frames,
                                         pad_channels, tune_network)

    if a.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {a.backbone!r}; choose from {sorted(BACKBONES)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    torch.set_num_threads(a.threads)
    channels = a.in_channels or BACKBONE_IN_CHANNELS[a.backbone]
    frames = [f.to(a.device) for f in pad_channels(kitti_tuning_frames(a.shared, a.frames, a.voxel_size, a.fractions),
                                                   channels)]
    tf = TuneFile.load(a.out) if a.merge and a.out.exists() else TuneFile()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    by_shape: dict = {}
    for f in frames:  # one network per voxel grid (the CenterPoint encoder is built for its sparse shape)
        by_shape.setdefault(tuple(f.spatial_shape), []).append(f)
    for shape, group in by_shape.items():
        model = BACKBONES[a.backbone](channels, shape).eval().to(a.device)
        tune_network(model, group, tf, device=a.device, repeats=a.repeats)
    tf.save(a.out)
    dev = device_model(a.device)
    table = tf.devices[dev]
    print(f"{len(frames)} frames ({min(len(f) for f in frames)}..{max(len(f) for f in frames)} voxels), "
          f"{len(table.entries)} shape buckets for {dev!r} in {time.perf_counter() - t0:.1f} s -> {a.out}")
    return 0


def _cmd_engines_show(a: argparse.Namespace) -> int:
    from engines.sparse.tunefile import TuneFile, cpu_name, device_model

    tf = TuneFile.load(a.file)
    here = device_model("cpu")
    for dev, table in tf.to_json()["devices"].items():
        mark = "  (this machine)" if dev == here else ""
        print(f"{dev}{mark}: {len(table['entries'])} buckets, measured with {table['measured_with']}")
        for key, e in table["entries"].items():
            print(f"  {key:48s} {e['dataflow']}")
    if here not in tf.devices:
        legacy = f"cpu:{cpu_name()}"
        if legacy in tf.devices:
            print(f"no entry for this machine ({here!r}); the entry {legacy!r} (CPU name only, an older file) would "
                  "be used with a warning: re-run `perception-stack engines tune` here")
        else:
            print(f"no entry for this machine ({here!r}): its layers would use the static defaults")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perception-stack", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("replay", help="run the graph offline over a bag, deterministically",
                       description="Replay a rosbag2 bag (sqlite3 or MCAP) through the perception graph on one "
                       "thread. Writes OUT/outputs.mcap (every output topic, latency debug topics and "
                       "/diagnostics; OUT is a playable rosbag2 folder), OUT/latency.json (per-stage count, "
                       "mean, p50/p90/p99, max, jitter, budget, deadline misses; end-to-end; malformed and "
                       "dropped inputs) and OUT/report.html with BEV and latency pictures.")
    r.add_argument("--bag", type=Path, help="input bag folder; default: the embedded scenario (generated once, cached)")
    r.add_argument("--config", type=Path, help="params YAML overriding launch/perception.params.yaml")
    r.add_argument("--out", type=Path, default=Path("out/replay"), help="output folder (default: out/replay)")
    r.add_argument("--no-report", action="store_true", help="skip report.html")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_replay)

    ev = sub.add_parser("evaluate", help="replay a bag with ground truth and score the outputs",
                        description="Replay BAG through the graph (as `replay`) and score the outputs against the "
                        "bag's ground truth, joined by nearest stamp within --match-tolerance. Occupancy over every "
                        "visible cell (unknown outputs at P=0.5): IoU, precision, recall, Brier, NLL, ECE with a "
                        "reliability diagram, each with a 95% bootstrap interval over frames and beside a constant "
                        "base-rate predictor, by range band and LiDAR-fault-affected vs unaffected cells; AUROC of "
                        "vacuity for wrong vs right and fault-affected vs unaffected cells (generated scenarios "
                        "carry occupancy truth and fault-free visibility; box-labelled bags get boxes-as-occupied, "
                        "ground-plane free space). Objects: share of each footprint read occupied, false-positive "
                        "cells outside every box. KITTI AP R40 / nuScenes mAP when the graph publishes detections (headline "
                        "level 'all'; generated ground truth also at easy / moderate / hard, `detection.kitti_graded`: "
                        "a virtual camera with KITTI's focal length facing each box, "
                        "occlusion from the bag's truth (generator version >= 5: its fault-free cast) or else the scan's rays, "
                        "no truncation). "
                        "Writes OUT/metrics.json (schema: perception_nodes/eval/metrics.schema.json) and "
                        "OUT/report.html. Exits 1 when no frame could be scored.")
    ev.add_argument("--bag", type=Path, required=True, help="bag with /ground_truth/* topics")
    ev.add_argument("--config", type=Path, help="params YAML")
    ev.add_argument("--out", type=Path, default=Path("out/evaluate"), help="output folder (default: out/evaluate)")
    ev.add_argument("--match-tolerance", type=float, default=0.05, metavar="S",
                    help="join each output to the ground truth with the nearest stamp within S seconds (default 0.05)")
    ev.add_argument("--no-report", action="store_true", help="skip report.html (metrics.json only)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=_cmd_evaluate)

    c = sub.add_parser("convert", help="convert datasets into rosbag2 MCAP bags")
    csub = c.add_subparsers(dest="format", required=True, metavar="FORMAT")
    k = csub.add_parser("kitti", help="KITTI object-format folder -> bag",
                        description="Convert a KITTI object folder (velodyne/, calib/, optional image_2/, image_3/, "
                        "label_2/) into a bag: /sensing/lidar/points, /sensing/camera/{left,right}/{image_rect,"
                        "camera_info}, /tf_static, /ground_truth/objects (+ markers), stamped at 10 Hz.")
    k.add_argument("src", type=Path, help="KITTI folder (e.g. .../object/training)")
    k.add_argument("--out", type=Path, required=True, help="bag folder to create (must not exist)")
    k.add_argument("--rig", default="kitti_hdl64.yaml", help="rig calibration YAML (default: calibration/kitti_hdl64.yaml)")
    k.add_argument("--limit", type=int, help="convert only the first N frames")
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    k.set_defaults(func=_cmd_convert_kitti)

    from perception_nodes.calibration_cli import add_parser as add_calib_parser

    add_calib_parser(sub)  # calib check (perception_nodes/calibration_cli.py)

    from perception_nodes.scenario.generate import GENERATE_DESCRIPTION, add_generate_arguments

    g = sub.add_parser("generate", help="render a procedural scenario (LiDAR, stereo+mono cameras, ground truth, "
                       "faults) into a bag", description=GENERATE_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_arguments(g)
    g.set_defaults(func=_cmd_generate)

    from perception_nodes.learning.cli import BRANCH_NAMES, TRAIN_DESCRIPTION, TRAIN_EPILOG  # torch-free

    tr = sub.add_parser("train", help="train a learned branch on generated scenario bags",
                        description=TRAIN_DESCRIPTION, epilog=TRAIN_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("branch", choices=BRANCH_NAMES, help="branch to train")
    tr.add_argument("--config", type=Path, required=True, help="training YAML (e.g. configs/train/lidar_occupancy.yaml)")
    tr.add_argument("--out", type=Path, default=None, help="run folder (default: the config's out)")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    tr.add_argument("--epochs", type=int, default=None, help="total epochs (overrides the config)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_cmd_train)

    bh = sub.add_parser("train-box-head", help="train the LiDAR branch's learned box head (second stage after the geometric "
                        "box refinement) on its own car boxes in generated scenes",
                        description="Train the learned box head: the arguments go to `python -m "
                        "perception_nodes.learning.box_head_train` (run `perception-stack train-box-head --help` for "
                        "them). See docs/lidar_branch.md.", add_help=False)
    bh.add_argument("args", nargs=argparse.REMAINDER, help="arguments of box_head_train (--help lists them)")
    bh.set_defaults(func=_cmd_train_box_head)

    le = sub.add_parser("lidar-eval", help="score the LiDAR branch's weights on held-out generated scenes, real KITTI and nuScenes frames; "
                        "--fit-calibration fits its post-hoc calibration on validation scenes",
                        description="Evaluate (and with --fit-calibration, calibrate) the lidar_detection weights: "
                        "the arguments go to `python -m perception_nodes.learning.lidar_detection_eval` (run "
                        "`perception-stack lidar-eval --help` for them). Calibration is fitted on the eval config's "
                        "`validation` scenes and stored in the weights' sidecar; held-out sets are only reported, "
                        "before and after calibration, beside trivial baselines. See docs/lidar_branch.md.",
                        add_help=False)
    le.add_argument("args", nargs=argparse.REMAINDER, help="arguments of lidar_detection_eval (--help lists them)")
    le.set_defaults(func=_cmd_lidar_eval)

    lv = sub.add_parser("live", help="run every node in one process on rclpy (real ROS 2 topics)",
                        description="Start the graph's nodes as managed (lifecycle) rclpy nodes on one multi-threaded "
                        "executor; with their autostart parameter (default true) each is configured and activated "
                        "at once. The graph: ground_segmentation and occupancy_grid (LiDAR -> geometric grid), "
                        "lidar_detection (LiDAR network: boxes, learned grid, curvature), stereo_occupancy and "
                        "camera_bev (camera grids), bev_fusion (camera + LiDAR boxes), fusion (grids), detection_fusion (boxes), calibration_monitor "
                        "and control (command with its uncertainty); a node whose dependencies or weights are "
                        "missing is left out, said once. Inputs: /sensing/lidar/points, /sensing/camera/*/"
                        "{image_rect,camera_info}, /tf_static, odometry (default /ground_truth/odometry: set "
                        "odometry_topic on a real bag); outputs under /perception/*, /control/*, ~/debug/* latency "
                        "topics and /diagnostics: see README, \"What runs\". The obstacle cloud goes to the "
                        "occupancy grid in process (no serialization); every topic is still on DDS for outside "
                        "subscribers. Parameters can be changed while it runs (ros2 param set; see README, "
                        "Configuration).")
    lv.add_argument("--config", type=Path, help="params YAML")
    lv.add_argument("--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
    lv.add_argument("--use-sim-time", action="store_true", help="use /clock (pair with play --clock)")
    lv.set_defaults(func=_cmd_live)

    pl = sub.add_parser("play", help="publish a bag to live topics (for machines without ros2 bag)",
                        description="Publish a bag's messages at their recorded pace (serialized, no re-encode).")
    pl.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or MCAP), e.g. one written by `convert kitti`")
    pl.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    pl.add_argument("--clock", action="store_true", help="also publish /clock (bag time) for use_sim_time nodes")
    pl.add_argument("--topics", nargs="+", help="only these topics")
    pl.add_argument("--loop", action="store_true", help="play again and again")
    pl.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds until every played topic has a subscriber")
    pl.set_defaults(func=_cmd_play)

    m = sub.add_parser("monitor", help="live latency table of every node, from /diagnostics",
                       description="Subscribe to /diagnostics and show, per node and stage, p50/p99/max latency, "
                       "jitter, budget and deadline misses from the rolling window, plus any WARN/ERROR status.")
    m.add_argument("--duration", type=float, help="stop after this many seconds")
    m.add_argument("--once", action="store_true", help="print one table when data arrives, then exit")
    m.set_defaults(func=_cmd_monitor)

    pp = sub.add_parser("params", help="print the documented default parameters (or the merged result of --config)",
                        description="Print perception.params.yaml, the one place where every parameter's default "
                        "is documented (launch/perception.params.yaml is the same file). With --config, print the "
                        "parameters that result from merging FILE over the defaults, as JSON, after checking that "
                        "every key exists and every value fits its type and range (perception_nodes/config/schema.py) and "
                        "that every node accepts the result (the checks that relate parameters, run as replay and "
                        "live build the nodes; no ROS is started). Exits 2 on an error.")
    pp.add_argument("--config", type=Path, help="params YAML to merge over the defaults")
    pp.set_defaults(func=_cmd_params)

    en = sub.add_parser("engines", help="offline tools for the inference engines (sparse-conv dataflow tuning)",
                        description="Offline engine tools. A live node never times anything: it loads the tune file "
                        "written here at configure (engines.sparse.tunefile.configure, or $ENGINES_SPARSE_TUNE_FILE).")
    esub = en.add_subparsers(dest="engines_command", required=True, metavar="ACTION")
    et = esub.add_parser("tune", help="time every sparse-conv dataflow per layer shape and write a tune file",
                         description="Run BACKBONE over real KITTI scans (each voxelised at every --voxel-size and "
                         "thinned to every --fraction of its points, so voxel counts spread over neighbouring "
                         "power-of-two buckets), time every candidate dataflow of every layer, and write the "
                         "fastest per shape bucket (layer kind x kernel x stride x channels x dtype x voxel count "
                         "rounded to a power of two) into a versioned JSON tune file keyed on this CPU's model (name, family, "
                         "model, vector ISA). "
                         "The thread count is recorded but is not part of any key: the stored choice is used at "
                         "every thread count, so results are bit-identical across thread counts. Shapes the file "
                         "lacks use the nearest tuned bucket, else the static default (fused_gather_scatter on CPU).")
    et.add_argument("--out", type=Path, default=Path("out/sparse_tune.json"),
                    help="tune file to write (default: out/sparse_tune.json)")
    et.add_argument("--merge", action="store_true", help="add to an existing --out file (other devices/buckets kept)")
    et.add_argument("--backbone", default="voxel_backbone8x", choices=["voxel_backbone8x", "centerpoint_encoder"],
                    help="network to tune: SECOND's VoxelBackBone8x (4 channels) or mmdetection3d's CenterPoint "
                    "SparseEncoder (5 channels, 128-channel stages); default voxel_backbone8x")
    et.add_argument("--in-channels", type=int, default=None,
                    help="voxel feature channels (default: the backbone's upstream count; KITTI's 4 are zero-padded)")
    et.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data",
                    help="folder holding kitti_object_vis/ (default: ../shared/data beside the checkout)")
    et.add_argument("--frames", type=int, nargs="+", default=[0, 1, 2], help="KITTI velodyne frame ids (default 0 1 2)")
    et.add_argument("--voxel-size", type=float, nargs="+", default=[0.1, 0.05], help="voxel sizes in m (default 0.1 0.05)")
    et.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.6], help="point fractions kept (default 1.0 0.6)")
    et.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1; recorded only)")
    et.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="tune for this device's model (default cpu; --merge to keep both in one file)")
    et.add_argument("--repeats", type=int, default=3, help="timed runs per candidate, best kept (default 3)")
    et.set_defaults(func=_cmd_engines_tune)
    es = esub.add_parser("show", help="print a tune file's choices per device",
                         description="List every device model and shape bucket of a tune file with its dataflow.")
    es.add_argument("file", type=Path, help="tune file written by `engines tune` (e.g. out/sparse_tune.json)")
    es.set_defaults(func=_cmd_engines_show)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raw = sys.argv[1:] if argv is None else list(argv)
    if raw[:1] in (["lidar-eval"], ["train-box-head"]):  # every argument (--help included) belongs to the module
        try:
            cmd = _cmd_lidar_eval if raw[0] == "lidar-eval" else _cmd_train_box_head
            return cmd(argparse.Namespace(args=raw[1:]))
        except (FileNotFoundError, ValueError) as exc:
            print(f"perception-stack: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"perception-stack: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
