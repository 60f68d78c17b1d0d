"""Full garbage collections inside the frame loop, with and without freezing the start-up heap.

Runs ``perception-stack replay`` (the ``make demo`` job: the embedded default bag and params) in a fresh
interpreter per arm and run, arms alternating: ``freeze`` (as shipped: ``freeze_startup_objects()`` after
``build_graph``, ``perception_nodes/latency/gc_pause.py``) and ``no-freeze`` (that call made a no-op). Records
every oldest-generation collection between the end of start-up and the latency report (the frame loop;
the no-freeze arm still collects once where the other freezes), and
the replay's own per-stage maxima. Prints one JSON object last: per arm the medians over runs of the
in-loop full-collection count, their max / summed pause, and the worst stage maximum of any node.

    python benchmarks/gc_pauses.py [--runs 3] [--json out/gc_pauses.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import gc, json, sys, time
from perception_nodes import replay as R
from perception_nodes.latency.gc_pause import freeze_startup_objects, gc_pause_monitor
arm, out = sys.argv[1], sys.argv[2]
window = {}
def start_loop():
    if arm == "freeze":
        freeze_startup_objects()
    else:
        gc.collect()  # the arms differ by the freeze alone
    window["t0"] = time.perf_counter()
R.freeze_startup_objects = start_loop
orig = R.latency_report
def end_loop(*a, **k):  # the first call after the frame loop
    window.setdefault("t1", time.perf_counter())
    return orig(*a, **k)
R.latency_report = end_loop
from perception_nodes.cli import main
with gc_pause_monitor() as pauses:
    main(["replay", "--out", out])
t0, t1 = window["t0"], window.get("t1", float("inf"))
lat = json.load(open(out + "/latency.json"))
worst = max((v["max_ms"], k) for k, v in lat["stages"].items() if v.get("max_ms") is not None and "cyclic" not in k)
print("RESULT " + json.dumps({"pauses_ms": pauses.between(t0, t1), "worst_stage": worst,
                              "lidar_e2e_max_ms": lat["end_to_end_paths"]["lidar_branch"]["max_ms"]}))
"""


def _run(arm: str, workdir: Path) -> dict:
    out = tempfile.mkdtemp(dir=workdir, prefix=f"{arm}-")
    proc = subprocess.run([sys.executable, "-c", _CHILD, arm, out], capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per arm, arms alternating (default 3)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    arms = ("no-freeze", "freeze")
    res: dict[str, list[dict]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for arm in arms:
                r = _run(arm, Path(tmp))
                res[arm].append(r)
                print(f"run {i + 1}/{args.runs} {arm}: {len(r['pauses_ms'])} full collections in the frame loop, "
                      f"max {max(r['pauses_ms'], default=0.0):.0f} ms; worst stage {r['worst_stage'][1]} "
                      f"{r['worst_stage'][0]:.0f} ms; LiDAR branch e2e max {r['lidar_e2e_max_ms']:.0f} ms", flush=True)
    summary = {}
    for arm in arms:
        rs = res[arm]
        summary[arm] = {
            "runs": len(rs),
            "full_collections_median": statistics.median(len(r["pauses_ms"]) for r in rs),
            "max_pause_ms_median": statistics.median(max(r["pauses_ms"], default=0.0) for r in rs),
            "sum_pause_ms_median": statistics.median(sum(r["pauses_ms"]) for r in rs),
            "worst_stage_max_ms_median": statistics.median(r["worst_stage"][0] for r in rs),
            "lidar_e2e_max_ms_median": statistics.median(r["lidar_e2e_max_ms"] for r in rs),
            "per_run": rs,
        }
    out = {"benchmark": "gc_pauses", "python": sys.version.split()[0], "arms": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({a: {k: v for k, v in s.items() if k != "per_run"} for a, s in summary.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
