#!/usr/bin/env python3
"""Does the control node fall back on LiDAR failures, how fast, and never on clean data?

For each bag the graph is replayed once with the default params (LiDAR branch -> control node), and from
the node's ``/control/command/uncertainty`` this reports:

* ``commands``, ``fallback_frames``, ``episodes`` (fallback entries) and the triggers named;
* per LiDAR fault window of the bag (``lidar_dropout_time`` / ``lidar_sector_time`` in ``/scenario/info``):
  ``delay_frames`` = commands from the first one stamped in the window to the first one in fallback
  (0 = the first faulty frame already falls back; None = no fallback in the window);
* ``false_alarm_frames``: fallback commands stamped before the first fault, or more than
  ``--recovery-s`` after the last one ends (a clean bag: every fallback frame); commands stamped after the
  last curvature input (the replay's final tick once the bag has ended: the input is then stale and the
  node rightly falls back) are counted apart in ``after_input_end``;
* ``variance_only``: the same counts from the fallback state machine re-run offline on the recorded fused
  std alone (no input-health triggers), so the reaction of the curvature head's own uncertainty shows;
* the LiDAR branch's raw std at the lookahead inside vs outside the fault windows (medians) and the
  fused curvature's MAE against ``/ground_truth/curvature``.

    python benchmarks/control_fallback.py                       # the demo bag (clean)
    python benchmarks/control_fallback.py --bag /tmp/dropout --bag /tmp/sector --json out/control_fallback.json

Make fault bags with ``perception-stack generate``, e.g. ``--fault lidar_dropout=0.9 --fault
lidar_dropout_time=3:6`` or ``--fault lidar_sector_deg=-60:60 --fault lidar_sector_time=3:6``.
Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.config import load_params
from perception_nodes.control.fallback import FallbackParams, FallbackStateMachine
from perception_nodes.graph.control import UNCERTAINTY


def _ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def fault_windows(bag: Path) -> list[tuple[str, float, float]]:
    """(kind, start_s, end_s) of the LiDAR faults in the bag's /scenario/info (seconds from the first frame)."""
    with BagReader(bag) as r:
        info = next((json.loads(rec.msg.data) for rec in r.records(topics=[topics.SCENARIO_INFO])), {})
    f = info.get("faults") or {}
    out = []
    if float(f.get("lidar_dropout", 0) or 0) > 0:
        t = f.get("lidar_dropout_time", [0.0, math.inf])
        out.append(("lidar_dropout", float(t[0]), float(t[1])))
    if f.get("lidar_sector_deg"):
        t = f.get("lidar_sector_time", [0.0, math.inf])
        out.append(("lidar_sector", float(t[0]), float(t[1])))
    return out


def analyse(bag: Path, params: dict[str, Any], recovery_s: float) -> dict[str, Any]:
    from perception_nodes.replay import run_graph

    ctl = params["control"]
    unc_topic = ctl.get("uncertainty_topic", UNCERTAINTY)
    curv_topic = (ctl.get("curvature_topics") or ["/perception/lidar/curvature"])[0]
    look = float(ctl.get("lookahead_m", 1.0))
    rows: list[dict[str, Any]] = []
    raw: dict[int, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        run_graph(bag, params, Path(tmp), progress=False)
        # read back what the graph published, timer-driven commands (stale input) included
        with BagReader(Path(tmp)) as r:
            for rec in r.records(topics=[unc_topic, curv_topic]):
                msg = rec.msg
                if rec.topic == unc_topic:
                    rows.append({"stamp": _ns(msg), "k": msg.curvature, "var": msg.curvature_variance,
                                 "lo": msg.interval_low, "hi": msg.interval_high, "fallback": bool(msg.fallback),
                                 "reason": msg.reason, "age": msg.input_age_s})
                else:
                    h = np.asarray(msg.horizon_m, float)
                    v = np.asarray(msg.variance, float)
                    raw[_ns(msg)] = float(np.sqrt(np.interp(look, h, v)))
    gt: dict[int, float] = {}
    with BagReader(bag) as r:
        for rec in r.records(topics=[topics.GT_CURVATURE]):
            gt[_ns(rec.msg)] = float(rec.msg.data)
        first = min(gt) if gt else (rows[0]["stamp"] if rows else 0)
    windows = fault_windows(bag)
    rows.sort(key=lambda x: x["stamp"])
    # commands after the last curvature input (the replay's final timer tick, 10 s after the bag: the input
    # stopped, a stale-input fallback is the right answer) are reported apart, not as false alarms
    last_input = max(raw) if raw else None
    timeout_ns = int(float((ctl.get("fallback") or {}).get("input_timeout_s", 0.35)) * 1e9)
    after = [x for x in rows if last_input is not None and x["stamp"] > last_input + timeout_ns]
    rows = [x for x in rows if x not in after]
    fb = np.array([x["fallback"] for x in rows], bool)
    t_s = np.array([(x["stamp"] - first) / 1e9 for x in rows])

    def counts(fallback: np.ndarray) -> dict[str, Any]:
        eps = [i for i in range(len(fallback)) if fallback[i] and (i == 0 or not fallback[i - 1])]
        per = []
        for kind, a, b in windows:
            idx = np.flatnonzero((t_s >= a - 1e-6) & (t_s < b))
            hit = [j for j, i in enumerate(idx) if fallback[i]]
            per.append({"fault": kind, "start_s": a, "end_s": b, "frames": int(idx.size),
                        "delay_frames": hit[0] if hit else None,
                        "fallback_share": float(np.mean(fallback[idx])) if idx.size else None})
        if windows:
            lo = min(a for _, a, _ in windows)
            hi = max(b for _, _, b in windows) + recovery_s
            clean = (t_s < lo - 1e-6) | (t_s >= hi)
        else:
            clean = np.ones(len(fallback), bool)
        return {"fallback_frames": int(fallback.sum()), "episodes": len(eps), "faults": per,
                "false_alarm_frames": int(np.count_nonzero(fallback & clean)), "clean_frames": int(clean.sum())}

    out: dict[str, Any] = {"bag": str(bag), "commands": len(rows), **counts(fb),
                           "after_input_end": {"commands": len(after), "fallback": sum(x["fallback"] for x in after)}}
    reasons: dict[str, int] = {}
    for x in rows:
        if x["fallback"]:
            key = x["reason"].split(" (")[0].split(";")[0]
            key = "".join(c for c in key if not c.isdigit()).replace(".", "").strip()
            reasons[key] = reasons.get(key, 0) + 1
    out["triggers"] = reasons
    # the state machine on the fused std alone (no health triggers, fresh input)
    fp = FallbackParams(**{k: v for k, v in (ctl.get("fallback") or {}).items()})
    fsm = FallbackStateMachine(fp)
    metric = ctl.get("uncertainty_metric", "std")
    alone = []
    for x in rows:
        u = math.sqrt(x["var"]) if metric == "std" else x["hi"] - x["lo"]
        alone.append(fsm.step(x["stamp"], x["k"], u if math.isfinite(u) else math.inf, input_age_s=0.0).fallback)
    out["variance_only"] = counts(np.array(alone, bool))
    stds = np.array([math.sqrt(x["var"]) if math.isfinite(x["var"]) else np.inf for x in rows])
    in_fault = np.zeros(len(rows), bool)
    for _, a, b in windows:
        in_fault |= (t_s >= a - 1e-6) & (t_s < b)
    raw_t = np.array(sorted(raw))
    raw_std = np.array([raw[s] for s in raw_t])
    raw_in = np.zeros(len(raw_t), bool)
    for _, a, b in windows:
        rs = (raw_t - first) / 1e9
        raw_in |= (rs >= a - 1e-6) & (rs < b)
    med = lambda a: float(np.median(a)) if len(a) else None  # noqa: E731
    out["fused_std"] = {"clean_median": med(stds[~in_fault]), "fault_median": med(stds[in_fault]),
                        "clean_max": float(stds[~in_fault].max()) if (~in_fault).any() else None}
    out["lidar_std_at_lookahead"] = {"clean_median": med(raw_std[~raw_in]), "fault_median": med(raw_std[raw_in]),
                                     "clean_max": float(raw_std[~raw_in].max()) if (~raw_in).any() else None}
    errs = [abs(x["k"] - gt[x["stamp"]]) for x in rows if x["stamp"] in gt and math.isfinite(x["k"])]
    out["fused_curvature_mae"] = float(np.mean(errs)) if errs else None
    out["trivial_zero_curvature_mae"] = float(np.mean([abs(gt[x["stamp"]]) for x in rows if x["stamp"] in gt])) if gt else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--bag", action="append", type=Path, help="bag to replay (repeatable; default: the demo bag)")
    ap.add_argument("--config", type=Path, help="params file (default: the documented defaults)")
    ap.add_argument("--recovery-s", type=float, default=1.5,
                    help="seconds after a fault's end in which fallback still counts as the fault's (default 1.5)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    params = load_params(args.config)
    bags = args.bag
    if not bags:
        from perception_nodes.scenario.bag import default_scenario_bag

        bags = [default_scenario_bag(progress=False)]
    result = {"bags": []}
    for bag in bags:
        print(f"replaying {bag} ...", file=sys.stderr, flush=True)
        result["bags"].append(analyse(bag, params, args.recovery_s))
        print(json.dumps(result["bags"][-1], indent=1), file=sys.stderr, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
