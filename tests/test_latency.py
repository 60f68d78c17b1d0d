"""Latency statistics and per-node accounting."""

from __future__ import annotations

import json
import math
import time

import numpy as np

from perception_nodes.latency import CYCLIC, PIPELINE, PROCESSING, NodeLatency, summarize
from perception_nodes.latency.table import format_table


def test_summary_values():
    x = [10.0, 12.0, 11.0, 30.0, 10.0]
    s = summarize(x, budget_ms=20.0)
    assert s.count == 5 and s.max_ms == 30.0 and s.deadline_misses == 1
    assert math.isclose(s.mean_ms, 14.6)
    assert math.isclose(s.p50_ms, 11.0)
    assert math.isclose(s.p90_ms, np.percentile(x, 90))
    # jitter: mean |difference of consecutive samples| = (2 + 1 + 19 + 20) / 4
    assert math.isclose(s.jitter_ms, 10.5)
    empty = summarize([])
    assert empty.count == 0 and math.isnan(empty.p99_ms)
    assert summarize([5.0, float("nan"), 7.0]).count == 2


def test_node_latency_uses_its_clock_for_pipeline_latency():
    now = [1_000_000_000]  # a sim clock a test controls: 1 s
    lat = NodeLatency("n", clock=lambda: now[0], budgets_ms={PIPELINE: 150.0, "work": 1000.0}, keep_all=True)
    with lat.frame(input_stamp_ns=900_000_000) as f:  # input stamped 100 ms before "now"
        with lat.stage("work"):
            time.sleep(0.002)
        with lat.stage("work"):  # a stage entered twice adds up
            time.sleep(0.002)
    assert math.isclose(f.pipeline_ms, 100.0)
    assert f.stages_ms["work"] >= 4.0 and f.processing_ms >= f.stages_ms["work"]
    assert f.cyclic_ms is None and not f.missed
    now[0] = 1_300_000_000
    with lat.frame(input_stamp_ns=1_000_000_000) as f2:  # 300 ms: misses the 150 ms budget
        pass
    assert f2.cyclic_ms is not None and f2.missed == [PIPELINE]
    assert lat.series[PIPELINE].full_summary().deadline_misses == 1
    assert {PROCESSING, PIPELINE, CYCLIC, "work"} <= set(lat.series)
    json.dumps(lat.series[PIPELINE].full_summary().to_dict())


def test_monitor_table_from_diagnostic_values():
    values = {"processing_time.p50_ms": "12.000", "processing_time.p99_ms": "20.000",
              "processing_time.deadline_misses": "3", "ground_segmentation.p50_ms": "8.0"}
    table = format_table({"ground_segmentation: latency": (1, "processing_time missed", values),
                          "ground_segmentation: inputs": (0, "ok", {})})
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["node", "stage", "n", "p50_ms"]
    row = next(line for line in lines if " processing_time " in f" {line} ")
    # no window count reported: percentiles cannot be trusted and are marked
    assert row.split()[3:5] == ["12.000*", "20.000*"] and row.split()[-1] == "3"
    assert any(line.startswith("[WARN] ground_segmentation: latency") for line in lines)


def test_monitor_marks_percentiles_from_too_few_samples():
    """Issue 7: `monitor --once` printed p50 = p99 = max from a single sample as a distribution."""
    one = {"processing_time.count": "1", "processing_time.p50_ms": "5.000", "processing_time.p99_ms": "5.000",
           "processing_time.max_ms": "5.000"}
    many = {"processing_time.count": "150", "processing_time.p50_ms": "4.000", "processing_time.p99_ms": "9.000",
            "processing_time.max_ms": "9.500"}
    t1 = format_table({"a: latency": (0, "ok", one)})
    row = next(line for line in t1.splitlines() if line.startswith("a "))
    assert row.split()[2:5] == ["1", "5.000*", "5.000*"] and "too few samples" in t1
    t2 = format_table({"a: latency": (0, "ok", many)})
    row = next(line for line in t2.splitlines() if line.startswith("a "))
    assert row.split()[2:5] == ["150", "4.000", "9.000"] and "too few samples" not in t2
    mid = dict(many, **{"processing_time.count": "20"})
    row = next(line for line in format_table({"a: latency": (0, "ok", mid)}).splitlines() if line.startswith("a "))
    assert row.split()[3:5] == ["4.000", "9.000*"]


def test_negative_pipeline_latency_is_not_recorded_but_counted():
    now = [1_000_000_000]
    lat = NodeLatency("n", clock=lambda: now[0], keep_all=True)
    with lat.frame(input_stamp_ns=1_500_000_000) as f:  # stamped 0.5 s after "now"
        pass
    assert not f.pipeline_valid and lat.invalid == {PIPELINE: 1}
    assert PIPELINE not in lat.series or lat.series[PIPELINE].total_count == 0


def test_time_jump_restarts_the_cyclic_series_and_jitter_is_per_frame():
    now = [0]
    lat = NodeLatency("n", clock=lambda: now[0], keep_all=True)
    frames = []
    for k, t in enumerate([0, 100, 210, 300, 5, 105]):  # ms; the bag loops after the 4th frame
        now[0] = (10_000 + t) * 1_000_000 if k < 4 else (10_000 + 400 + t) * 1_000_000
        with lat.frame(input_stamp_ns=t * 1_000_000) as f:
            pass
        frames.append(f)
    assert [f.cyclic_ms for f in frames] == [None, 100.0, 110.0, 90.0, None, 100.0]
    assert [f.jitter_ms for f in frames] == [None, None, 10.0, 20.0, None, None]
    assert lat.time_jumps == 1
    # the window restarted at the jump: only the sample after it is in it, no 'negative' or huge one
    assert list(lat.series[CYCLIC].recent) == [100.0]
