"""benchmarks/lidar_ap_paired.py on one short generated scene: a network against itself and against a constant."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script
from tests.learning.conftest import short_eval_config

REPO = Path(__file__).resolve().parents[2]


def test_paired_bootstrap_of_a_network_against_itself_and_a_worse_copy(tmp_path, bag_cache):
    mod = load_script(REPO / "benchmarks" / "lidar_ap_paired.py", "lidar_ap_paired")
    cfg = short_eval_config(tmp_path, seeds=(11, 12), stride=2)
    a = mod.scored_frames("lidar_detection", cfg, "short", cache_dir=bag_cache)
    assert [f[2] for f in a] == [0] * 5 + [1] * 5  # frames tagged with their scene
    same = mod.paired(a, a, reps=20, level="moderate", progress=False)
    assert same["frames"] == 10 and same["scenes"] == 2 and 0 < same["ap_a"] == same["ap_b"]
    assert same["frames_bootstrap"]["ci90"] == same["scenes_bootstrap"]["ci90"] == [0.0, 0.0]
    assert same["scenes_b_higher"] == 0 and len(same["per_scene"]) == 2
    # B: the same detections shifted 1 m sideways, which IoU 0.7 does not survive: lower everywhere
    from dataclasses import replace

    moved = [(gt, [replace(d, center=(d.center[0], d.center[1] + 1.0, d.center[2])) for d in det], k)
             for gt, det, k in a]
    worse = mod.paired(a, moved, reps=20, level="moderate", progress=False)
    assert worse["diff"] == pytest.approx(worse["ap_b"] - worse["ap_a"]) and worse["diff"] < -0.3
    for key in ("frames_bootstrap", "scenes_bootstrap"):
        assert worse[key]["ci90"][1] < 0 and worse[key]["share_b_higher"] == 0.0
    assert all(s["ap_b"] < s["ap_a"] for s in worse["per_scene"])
    with pytest.raises(ValueError, match="not the same set"):
        mod.paired(a, a[:-1], reps=2, level="moderate", progress=False)
