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
  perception-stack live &  perception-stack play kitti_bag --rate 1  &  perception-stack monitor
"""


def _cmd_replay(a: argparse.Namespace) -> int:
    from perception_nodes.replay import replay

    res = replay(a.bag, a.config, a.out, progress=not a.quiet, report=not a.no_report)
    e2e = res.latency["end_to_end"]
    over = res.latency["replay"]["overhead_per_frame"]
    print(f"{res.input_frames} frames -> {a.out}/outputs.mcap, latency.json" + ("" if a.no_report else ", report.html"))
    if e2e["count"]:
        print(f"end-to-end latency: p50 {e2e['p50_ms']:.1f} ms, p99 {e2e['p99_ms']:.1f} ms, max {e2e['max_ms']:.1f} ms, "
              f"deadline misses {e2e['deadline_misses']}; replay overhead/frame p50 {over['p50_ms']:.2f} ms")
    if res.latency["malformed_inputs"] or any(res.latency["dropped_inputs"].values()):
        print(f"malformed: {res.latency['malformed_inputs']}  dropped: {res.latency['dropped_inputs']}")
    _print_metrics(res.metrics, a.out)
    return 0


def _print_metrics(m: dict | None, out: Path) -> None:
    if not m:
        return
    print(f"{m.get('frames_scored', 0)} frames scored against the bag's ground truth -> {out}/metrics.json")
    if m.get("occupancy"):
        o = m["occupancy"]
        print("occupancy: " + ", ".join(f"{k} {o[k]:.3f}" for k in ("iou", "precision", "recall", "ece",
                                                                   "vacuity_auroc_unseen_vs_seen") if o.get(k) is not None))
    if m.get("objects") and m["objects"].get("recall") is not None:
        print(f"objects within {m['objects']['range_m']:g} m seen as occupied: recall {m['objects']['recall']:.3f}")


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from perception_nodes.replay import replay

    res = replay(a.bag, a.config, a.out, progress=not a.quiet, require_ground_truth=True)
    _print_metrics(res.metrics, a.out)
    print(f"report: {a.out}/report.html")
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
        print(json.dumps(load_params(a.config), indent=2))
    else:
        print(DEFAULTS_PATH.read_text())
    return 0


def _cmd_engines_tune(a: argparse.Namespace) -> int:
    import time

    import torch

    from engines.sparse.tunefile import BACKBONES, TuneFile, device_model, kitti_tuning_frames, tune_network

    if a.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {a.backbone!r}; choose from {sorted(BACKBONES)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    torch.set_num_threads(a.threads)
    frames = [f.to(a.device) for f in kitti_tuning_frames(a.shared, a.frames, a.voxel_size, a.fractions)]
    tf = TuneFile.load(a.out) if a.merge and a.out.exists() else TuneFile()
    torch.manual_seed(0)
    model = BACKBONES[a.backbone](4).eval().to(a.device)
    t0 = time.perf_counter()
    tune_network(model, frames, tf, device=a.device, repeats=a.repeats)
    tf.save(a.out)
    dev = device_model(a.device)
    table = tf.devices[dev]
    print(f"{len(frames)} frames ({min(len(f) for f in frames)}..{max(len(f) for f in frames)} voxels), "
          f"{len(table.entries)} shape buckets for {dev!r} in {time.perf_counter() - t0:.1f} s -> {a.out}")
    return 0


def _cmd_engines_show(a: argparse.Namespace) -> int:
    from engines.sparse.tunefile import TuneFile, device_model

    tf = TuneFile.load(a.file)
    here = device_model("cpu")
    for dev, table in tf.to_json()["devices"].items():
        mark = "  (this machine)" if dev == here else ""
        print(f"{dev}{mark}: {len(table['entries'])} buckets, measured with {table['measured_with']}")
        for key, e in table["entries"].items():
            print(f"  {key:48s} {e['dataflow']}")
    if here not in tf.devices:
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
                        "bag's ground truth: occupancy IoU/precision/recall, ECE with a reliability diagram, "
                        "vacuity AUROC (unseen vs seen, wrong vs right cells), Chamfer distance (generated "
                        "scenarios carry GT occupancy + visibility); recall of labelled objects as occupied cells "
                        "(any bag with /ground_truth/objects); KITTI AP R40 and nuScenes mAP when the graph "
                        "publishes detections. Writes OUT/metrics.json and OUT/report.html (+ outputs.mcap, "
                        "latency.json).")
    ev.add_argument("--bag", type=Path, required=True, help="bag with /ground_truth/* topics")
    ev.add_argument("--config", type=Path, help="params YAML")
    ev.add_argument("--out", type=Path, default=Path("out/evaluate"), help="output folder (default: out/evaluate)")
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

    lv = sub.add_parser("live", help="run every node in one process on rclpy (real ROS 2 topics)",
                        description="Start the graph's nodes on one rclpy executor. Inputs: /sensing/lidar/points; "
                        "outputs: /perception/occupancy_grid(+/uncertainty), ~/debug/* latency topics, /diagnostics.")
    lv.add_argument("--config", type=Path, help="params YAML")
    lv.add_argument("--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
    lv.add_argument("--use-sim-time", action="store_true", help="use /clock (pair with play --clock)")
    lv.set_defaults(func=_cmd_live)

    pl = sub.add_parser("play", help="publish a bag to live topics (for machines without ros2 bag)",
                        description="Publish a bag's messages at their recorded pace (serialized, no re-encode).")
    pl.add_argument("bag", type=Path)
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
                        "every key exists.")
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
                         "rounded to a power of two) into a versioned JSON tune file keyed on this CPU's model. "
                         "The thread count is recorded but is not part of any key: the stored choice is used at "
                         "every thread count, so results are bit-identical across thread counts. Shapes the file "
                         "lacks use the nearest tuned bucket, else the static default (gather_scatter on CPU).")
    et.add_argument("--out", type=Path, default=Path("out/sparse_tune.json"),
                    help="tune file to write (default: out/sparse_tune.json)")
    et.add_argument("--merge", action="store_true", help="add to an existing --out file (other devices/buckets kept)")
    et.add_argument("--backbone", default="voxel_backbone8x", help="network to tune (default: voxel_backbone8x)")
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
    es.add_argument("file", type=Path)
    es.set_defaults(func=_cmd_engines_show)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"perception-stack: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
