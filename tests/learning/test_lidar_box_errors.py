"""benchmarks/lidar_box_errors.py on one short generated scene with the packaged weights."""

from __future__ import annotations

import math
from pathlib import Path

from tests.conftest import load_script
from tests.learning.conftest import short_eval_config

REPO = Path(__file__).resolve().parents[2]


def test_box_errors_of_the_packaged_network_on_a_short_plain_scene(tmp_path, bag_cache):
    mod = load_script(REPO / "benchmarks" / "lidar_box_errors.py", "lidar_box_errors")
    cfg = short_eval_config(tmp_path)
    out = mod.box_errors("lidar_detection", cfg, "short", cache_dir=bag_cache)
    assert out["frames"] == 2 and 0 < out["matched"] <= out["cars_moderate"]
    assert set(out["errors"]) == set(mod.PARAMS)
    # on the plain generator the packaged network places its car boxes well (BEV AP 0.9 on held-out scenes):
    # a broken match or a wrong sign would put the median errors far from 0
    for name in ("x", "y", "z", "length", "width", "height"):
        assert abs(out["errors"][name]["median"]) < 0.3, (name, out["errors"][name])
    assert all(math.isfinite(e["p90_abs"]) for e in out["errors"].values())
    by_view = out["yaw_by_view"]
    assert sum(e["cars"] for e in by_view.values()) == out["matched"]
