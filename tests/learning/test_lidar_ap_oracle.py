"""benchmarks/lidar_ap_oracle.py: the edit of one box by its ground truth, the matching, and a run on one short
generated scene with the packaged weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from perception_nodes.boxes import Box3D
from tests.conftest import load_script
from tests.learning.conftest import short_eval_config

REPO = Path(__file__).resolve().parents[2]


def _mod():
    return load_script(REPO / "benchmarks" / "lidar_ap_oracle.py", "lidar_ap_oracle")


def test_edits_take_only_the_named_parameters_and_keep_the_heading_side():
    mod = _mod()
    g = Box3D("car", (10.0, 2.0, -0.8), (4.2, 1.8, 1.5), 0.3)
    d = Box3D("car", (10.4, 1.7, -0.5), (3.6, 1.9, 1.4), 0.3 + math.pi - 0.2, score=0.7)
    xy = mod._with_truth(d, g, {"xy"})
    assert xy.center == (10.0, 2.0, -0.5) and xy.size == d.size and xy.yaw == d.yaw and xy.score == 0.7
    assert mod._with_truth(d, g, {"length"}).size == (4.2, 1.9, 1.4)
    assert mod._with_truth(d, g, {"size"}).size == g.size
    # the detection points the other way: the true heading is taken on its side (IoU ignores the direction)
    yaw = mod._with_truth(d, g, {"yaw"}).yaw
    assert math.isclose(yaw, 0.3 + math.pi) and math.isclose(mod._with_truth(g, g, {"yaw"}).yaw, 0.3)
    full = mod._with_truth(d, g, set(mod.GROUPS))
    assert full.center == g.center and full.size == g.size


def test_matching_is_greedy_by_score_within_the_radius_and_cars_only():
    mod = _mod()
    gt = [Box3D("car", (0.0, 0.0, 0.0), (4, 2, 1.5), 0.0), Box3D("car", (1.5, 0.0, 0.0), (4, 2, 1.5), 0.0),
          Box3D("pedestrian", (5.0, 0.0, 0.0), (0.6, 0.6, 1.7), 0.0)]
    det = [Box3D("car", (0.9, 0.0, 0.0), (4, 2, 1.5), 0.0, score=0.5),   # nearer the second car
           Box3D("car", (1.2, 0.0, 0.0), (4, 2, 1.5), 0.0, score=0.9),   # higher score: takes the second car
           Box3D("car", (5.1, 0.0, 0.0), (4, 2, 1.5), 0.0, score=0.8),   # only a pedestrian near: no match
           Box3D("car", (30.0, 0.0, 0.0), (4, 2, 1.5), 0.0, score=0.8)]  # nothing within the radius
    assert mod._match(gt, det, radius=1.0) == {1: 1, 0: 0}


def test_oracle_on_a_short_plain_scene(tmp_path, bag_cache):
    mod = _mod()
    cfg = short_eval_config(tmp_path)
    out = mod.oracle("lidar_detection", cfg, "short", cache_dir=bag_cache)
    assert out["frames"] == 2 and out["matched"] > 0
    ap = out["ap3d"]
    assert {"none", "all", "all_but_yaw", *mod.GROUPS} <= set(ap)
    for name, levels in ap.items():
        assert set(levels) == set(mod.LEVELS) and all(0.0 <= v <= 1.0 for v in levels.values()), name
    # every matched box exactly right can only raise AP (scores and unmatched boxes unchanged)
    assert ap["all"]["moderate"] >= ap["none"]["moderate"]
    # KITTI's R40 takes one threshold per true positive, so with n < 40 cars at a level AP tops out at n / 40
    # (19 moderate cars in these two frames: 0.475, reached only if every one is matched and exact)
    assert ap["all"]["moderate"] > 0.4 and np.isfinite(ap["xy"]["moderate"])
    pk = out["peaks"]
    # 11 cars a frame, all but the farthest with a peak near them
    assert pk["cars"] >= 15 and 0.0 <= pk["share_on_centre_cell"] <= 1.0
    assert sum(pk["cells_away"].values()) == pk["cars"]
    # on plain scenes the packaged network's box read at the true centre cell is good to a few decimetres
    assert pk["error_at_centre_cell"]["median_m"] < 0.3
