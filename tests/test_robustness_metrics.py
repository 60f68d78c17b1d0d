"""The robustness study's metric functions on hand-built inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.eval.robustness_faults import (
    camera_view_mask,
    conditions,
    fault_windows,
    training_seeds,
)
from perception_nodes.eval.robustness_metrics import (
    RegionScorer,
    auroc,
    auroc_from_counts,
    fallback_delay,
    frames_until,
    level_counts,
    weight_episode,
)
from perception_nodes.scenario.faults import Faults, parse_faults

EPS = np.finfo(np.float64).eps


def brute_auroc(pos, neg) -> float:
    s = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return s / (len(pos) * len(neg))


def test_auroc_known_values():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1, 1]) == 0.5
    # pairs: 1>0, 1<2, 2>0, 2=2 (half), 3>0, 3>2 -> 4.5 of 6
    assert auroc([1, 2, 3], [0, 2]) == pytest.approx(0.75, abs=8 * EPS)
    assert auroc([1, math.nan, 3], [0, 2, math.nan]) == pytest.approx(brute_auroc([1, 3], [0, 2]), abs=8 * EPS)
    assert auroc([], [1.0]) is None
    assert auroc([math.nan], [1.0]) is None


def test_auroc_from_counts_matches_pairwise_count():
    rng = np.random.default_rng(3)
    pos = rng.integers(0, 101, 300)
    neg = rng.integers(0, 60, 200)
    expect = brute_auroc(pos.tolist(), neg.tolist())
    got = auroc_from_counts(np.bincount(pos, minlength=101), np.bincount(neg, minlength=101))
    assert got == pytest.approx(expect, abs=500 * EPS)
    assert auroc(pos, neg) == pytest.approx(expect, abs=500 * EPS)
    assert auroc_from_counts(np.zeros(101), np.bincount(neg, minlength=101)) is None
    with pytest.raises(ValueError):
        auroc_from_counts(np.zeros(101), np.zeros(100))


def test_level_counts_reads_unknown_as_given_level():
    c = level_counts(np.array([[-1, 0], [100, 50]], np.int8))
    assert c[100] == 2 and c[0] == 1 and c[50] == 1 and c.sum() == 4
    assert level_counts(np.array([-1, 7]), unknown_as=0)[0] == 1


def test_frames_until_counts_from_the_start_in_time_order():
    t = [0.5, 0.0, 0.1, 0.2, 0.3, 0.4]  # unordered on purpose
    v = [0.1, 1.0, 1.0, 0.9, 0.1, 0.15]
    below = lambda w: w < 0.2  # noqa: E731
    assert frames_until(t, v, 0.2, below) == 2  # 0.2 (no), 0.3 (yes)
    assert frames_until(t, v, 0.3, below) == 1  # holds on the first frame at or after the start
    assert frames_until(t, v, 0.0, below, end_s=0.3) is None  # only frames before the end count
    assert frames_until(t, v, 0.6, below) is None  # no frame after the start


def test_weight_episode_drop_and_recovery():
    t = [round(0.1 * i, 1) for i in range(10)]
    w = [1.0, 1.0, 1.0, 0.9, 0.5, 0.1, 0.5, 0.7, 0.9, 1.0]
    e = weight_episode(t, w, (0.3, 0.6))
    assert e["frames_until_below"] == 3  # 0.3: 0.9, 0.4: 0.5, 0.5: 0.1
    assert e["frames_until_recovered"] == 3  # 0.6: 0.5, 0.7: 0.7, 0.8: 0.9
    assert e["min_in_window"] == 0.1
    assert e["mean_in_window"] == pytest.approx(0.5, abs=1e-4)
    never = weight_episode(t, [1.0] * 10, (0.3, math.inf))
    assert never["frames_until_below"] is None and never["frames_until_recovered"] is None


def test_fallback_delay_per_episode():
    t = [round(0.1 * i, 1) for i in range(10)]
    f = [False, True, False, False, False, True, True, True, True, False]
    d = fallback_delay(t, f, (0.3, 0.8))
    assert d["frames_until_fallback"] == 3  # 0.3 no, 0.4 no, 0.5 yes
    assert d["fallback_share_in_window"] == pytest.approx(0.6, abs=1e-4)
    assert d["fallback_frames_outside"] == 2  # the false alarm at 0.1 and the recovery frame at 0.8
    assert d["frames_in_window"] == 5
    assert fallback_delay(t, [False] * 10, (0.3, 0.8))["frames_until_fallback"] is None


def test_region_scorer_brier_and_baselines_by_hand():
    truth = np.array([[True, False], [False, False]])
    grid = np.array([[100, 0], [-1, 20]], np.int8)  # P: 1, 0, unknown (0.5), 0.2
    s = RegionScorer(("all", "left", "none"))
    s.add("x", truth, grid, {"all": np.ones((2, 2), bool), "left": np.array([[True, False], [True, False]])})
    r = s.results()["x"]
    assert r["frames"] == 1
    assert r["all"]["cells"] == 4
    assert r["all"]["brier"] == pytest.approx((0 + 0 + 0.25 + 0.04) / 4, abs=1e-4)
    assert r["all"]["all_free_brier"] == 0.25 and r["all"]["base_rate_brier"] == pytest.approx(0.1875, abs=1e-4)
    assert r["all"]["iou"] == 1.0  # the one occupied cell is the only P > 0.5
    assert r["left"]["brier"] == pytest.approx(0.25 / 2, abs=1e-4)
    assert r["none"] is None  # a region never given
    with pytest.raises(ValueError):
        s.add("x", truth, grid[:1], {"all": np.ones((2, 2), bool)})


def test_fault_windows_from_the_generators_record():
    c = conditions(1.5, 3.0)
    sector = fault_windows(parse_faults(list(c["lidar_sector"].faults)).to_dict())
    assert sector.window == (1.5, 3.0) and sector.sensor == "lidar"
    assert sector.contains(1.5) and not sector.contains(3.0)
    decal = fault_windows(parse_faults(list(c["stereo_decalibration"].faults)).to_dict())
    assert decal.window == (1.5, math.inf) and decal.sensor == "camera" and "left" in decal.cameras
    glare = fault_windows(parse_faults(list(c["glare"].faults)).to_dict())
    assert glare.cameras == ("left", "mono")
    timing = fault_windows(parse_faults(list(c["timestamp_jitter"].faults)).to_dict())
    assert timing.window == (0.0, math.inf) and timing.sensor == "timing"
    assert fault_windows(Faults().to_dict()).window is None
    # every condition's specs are valid generator faults
    for cond in c.values():
        parse_faults(list(cond.faults))


def test_camera_view_mask_geometry():
    cam = {"position_base_link": [1.0, 0.0, 1.6], "fx": 100.0, "width": 200}  # half FOV 45 deg
    m = camera_view_mask(cam, (80, 80), (-10.0, -10.0), 0.25)
    cell = lambda x, y: m[int((y + 10) / 0.25), int((x + 10) / 0.25)]  # noqa: E731
    assert cell(6.1, 3.1)  # 5.1 m ahead of the camera, 3.1 m left: inside 45 deg
    assert not cell(3.1, 5.1)  # 2.1 ahead, 5.1 left: outside
    assert not cell(-2.1, 0.1)  # behind
    assert not camera_view_mask(cam, (80, 80), (-10.0, -10.0), 0.25, max_range_m=2.0)[
        int((0.1 + 10) / 0.25), int((9.1 + 10) / 0.25)]


def test_training_seeds_reads_every_seed(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 0\ndata:\n  - {generate: {scenario: x, seed: 12}}\n")
    (tmp_path / "b.yml").write_text("seed: 7\n")
    assert training_seeds(tmp_path) == {0, 7, 12}


def test_training_seeds_skip_only_the_scored_only_report_sets(tmp_path):
    """The box head rule's report sets (scored there, never fitted) do not count as training seeds; the rest of that
    file and every other file still do."""
    import yaml

    from perception_nodes.eval.robustness_faults import training_seeds
    from perception_nodes.eval.scored_only import SCORED_ONLY

    name = next(iter(SCORED_ONLY))
    (tmp_path / name).write_text(yaml.safe_dump({"validation": [{"generate": {"scenario": "x", "seed": 300}}],
                                                 "sets": {"plain": [{"generate": {"scenario": "x", "seed": 500}}]}}))
    (tmp_path / "other.yaml").write_text("data:\n  - {generate: {scenario: x, seed: 7}}\n")
    assert training_seeds(tmp_path) == {300, 7}
