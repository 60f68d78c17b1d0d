"""benchmarks/occlusion_grading.py on one short generated scene: truth against the scan-measured occlusion."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_script
from tests.learning.conftest import short_eval_config

REPO = Path(__file__).resolve().parents[2]


def test_plain_scene_truth_and_scan_agree_and_every_car_has_truth(tmp_path, bag_cache):
    mod = load_script(REPO / "benchmarks" / "occlusion_grading.py", "occlusion_grading")
    cfg = short_eval_config(tmp_path)
    out = mod.occlusion_confusion("lidar_detection", cfg, "short", cache_dir=bag_cache)
    t = out["truth_rows_scan_columns"]
    assert out["frames"] == 2 and out["cars_without_truth"] == 0 and out["cars"] >= 10
    assert sum(map(sum, t)) == out["cars"] == out["same_state"] + out["scan_more_occluded"] + out["scan_less_occluded"]
    # a plain scene returns nearly every ray through a car: the scan sees what the fault-free cast sees
    assert out["same_state"] >= 0.9 * out["cars"]
    assert t[3] == [0, 0, 0, 0]  # a car with a point in the crop has a ray through it
