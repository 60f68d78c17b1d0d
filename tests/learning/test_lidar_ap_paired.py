"""benchmarks/lidar_ap_paired.py on one short generated scene: a network against itself and against a constant."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]


def test_paired_bootstrap_of_a_network_against_itself_and_a_worse_copy(tmp_path, bag_cache):
    mod = load_script(REPO / "benchmarks" / "lidar_ap_paired.py", "lidar_ap_paired")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("sets:\n  short:\n    - {generate: {scenario: urban_street, seed: 11, duration_s: 1.0, lidar: hdl64}, "
                   "stride: 2}\n")
    a = mod.scored_frames("lidar_detection", cfg, "short", cache_dir=bag_cache)
    same = mod.paired(a, a, reps=20, level="moderate", progress=False)
    assert same["frames"] == 5 and 0 < same["ap_a"] == same["ap_b"] and same["ci95"] == [0.0, 0.0]
    # B: the same detections shifted 1 m sideways, which IoU 0.7 does not survive: lower everywhere
    from dataclasses import replace

    moved = [(gt, [replace(d, center=(d.center[0], d.center[1] + 1.0, d.center[2])) for d in det]) for gt, det in a]
    worse = mod.paired(a, moved, reps=20, level="moderate", progress=False)
    assert worse["diff"] == pytest.approx(worse["ap_b"] - worse["ap_a"]) and worse["diff"] < -0.3
    assert worse["ci95"][1] < 0 and worse["share_b_higher"] == 0.0
    with pytest.raises(ValueError, match="not the same set"):
        mod.paired(a, a[:-1], reps=2, level="moderate", progress=False)
