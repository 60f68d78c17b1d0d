"""Health gates from several inputs per branch (fusion node core), and the health scalars themselves.

Properties: the gate is the product of the per-input ramps; any one bad input pulls it to 0; a missing
input gives its ``missing`` factor; a stale one counts as missing; one topic may feed two branches; the
diagnostics name the input that limits the gate. The legacy single ``health_topic`` keeps working beside
``health_inputs``. Then the scalars: scan health (dropout, sector loss), exposure (glare, blackout)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes import topics
from perception_nodes.codecs.backend import make_header
from perception_nodes.config import ConfigError, load_params
from perception_nodes.evidential.fusion import ramp
from perception_nodes.graph.fusion import FusionNode
from perception_nodes.pipeline.sensor_health import ScanHealthMonitor, ScanHealthParams, exposure_health
from tests.test_fusion_node import GEO, LRN, SPEC, STEREO, B, Clock, S, feed, grids, truth

VDR = "/stereo_occupancy/debug/valid_disparity_ratio"
CAL = "/calibration_monitor/debug/right/calibration_health/stereo"
EDGE = "/calibration_monitor/debug/left/calibration_health/edge"


def _params(**branch_over) -> dict:
    p = copy.deepcopy(load_params()["fusion"])
    for k in ("enabled", "autostart", "qos"):
        p.pop(k, None)
    p["grid"] = {"resolution": SPEC.resolution, "size_x": SPEC.size_x, "size_y": SPEC.size_y,
                 "origin": list(SPEC.origin)}
    p["trust"]["min_cells"] = 20
    p["branches"]["stereo"]["enabled"] = True
    p["branches"]["camera"]["enabled"] = False
    # a third stereo input (not a default): the left camera's LiDAR edge score
    p["branches"]["stereo"]["health_inputs"]["edge"] = {"topic": EDGE, "bad": 0.5, "good": 0.9, "missing": 1.0,
                                                        "timeout_s": 3.0}
    for b, over in branch_over.items():
        _merge(p["branches"][b], over)
    return p


def _merge(base: dict, over: dict) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _node(**branch_over) -> tuple[FusionNode, Clock]:
    clock = Clock()
    return FusionNode("fusion", _params(**branch_over), backend=B, clock=clock,
                      steady_clock=lambda: clock.ns + 5 * S), clock


def _h(topic: str, value: float, stamp: int = 0):
    return topic, B.new(topics.FLOAT64_STAMPED, header=make_header(B, stamp, "base_link"), data=float(value))


def _frame(n: FusionNode, clock: Clock, k: int, health: list | None = None) -> dict[str, float]:
    """One frame of three agreeing branches (health samples first), the gates of the fused frame."""
    s = 10 * S + k * (S // 10)
    t = truth(k)
    feed(n, clock, (health or []) + grids(t, s, STEREO) + grids(t, s, GEO) + grids(t, s, LRN), at=s + S // 10)
    return dict(n.last_result.gates)


def _stereo_cfg(n: FusionNode) -> dict:
    return {h.name: h for h in n.branches["stereo"].cfg.health_inputs}


def test_defaults_wire_the_health_inputs_of_every_branch():
    p = copy.deepcopy(load_params()["fusion"])
    p["branches"]["camera"]["enabled"] = True
    n = FusionNode("fusion", p, backend=B, clock=Clock())
    names = {b: [h.name for h in st.cfg.health_inputs] for b, st in n.branches.items()}
    assert names == {"geometric": ["points", "coverage"], "lidar_learned": ["points", "coverage"],
                     "stereo": ["health", "calibration"],
                     "camera": ["health", "exposure"]}  # the camera's calibration input is off ("" topic)
    ports = {pt.topic for pt in n.inputs()}
    assert {VDR, CAL, "/occupancy_grid/debug/scan_health/point_ratio",
            "/lidar_detection/debug/scan_health/azimuth_coverage",
            "/camera_bev/debug/exposure", "/camera_bev/debug/image_health"} <= ports


def test_one_health_topic_feeds_two_branches():
    p = _params(camera={"enabled": True, "health_inputs": {"calibration": {"topic": CAL}}})
    clock = Clock()
    n = FusionNode("fusion", p, backend=B, clock=clock)
    assert sum(pt.topic == CAL for pt in n.inputs()) == 1
    cam = ("/perception/camera/occupancy_grid", "/perception/camera/occupancy_grid/uncertainty")
    t = truth(0)
    for k in range(3):
        s = 10 * S + k * (S // 10)
        h = [_h(CAL, 0.5)] if k == 2 else []
        feed(n, clock, h + grids(t, s, STEREO) + grids(t, s, cam) + grids(t, s, GEO) + grids(t, s, LRN), at=s + S // 10)
    assert n.last_result.gates["stereo"] == 0.0 and n.last_result.gates["camera"] == 0.0
    acct = n.accounting()[CAL]  # one message, used once, though two branches read it
    assert acct["balanced"] and acct["received"] == acct["used"] == 1, acct


@settings(max_examples=25, deadline=None)
@given(v=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_the_gate_is_the_product_of_the_input_ramps(v):
    n, clock = _node()
    cfg = _stereo_cfg(n)
    _frame(n, clock, 0)
    g = _frame(n, clock, 1, [_h(VDR, v[0]), _h(CAL, v[1]), _h(EDGE, v[2])])
    want = np.prod([ramp(x, cfg[k].bad, cfg[k].good) for x, k in zip(v, ("health", "calibration", "edge"), strict=True)])
    assert g["stereo"] == pytest.approx(want, abs=1e-12)
    assert g["geometric"] == 1.0  # its scan input is missing: factor 1 (missing = 1.0), not blanked


@pytest.mark.parametrize("bad_input", ["health", "calibration", "edge"])
def test_any_one_bad_input_pulls_the_gate_down_and_the_diagnostics_name_it(bad_input):
    n, clock = _node()
    cfg = _stereo_cfg(n)
    topic = {"health": VDR, "calibration": CAL, "edge": EDGE}
    _frame(n, clock, 0)
    for k in range(1, 4):  # all good
        g = _frame(n, clock, k, [_h(t, cfg[i].good) for i, t in topic.items()])
        assert g["stereo"] == 1.0
    g = _frame(n, clock, 4, [_h(t, cfg[i].bad if i == bad_input else 1.0) for i, t in topic.items()])
    assert g["stereo"] == 0.0 and g["geometric"] == 1.0 and g["lidar_learned"] == 1.0
    assert n.last_result.weights["stereo"] == 0.0
    diag = {s.name: s for s in n.diagnostic_statuses()}["fusion: branches"]
    assert diag.values[f"stereo.gate_limited_by"] == bad_input
    assert diag.values[f"stereo.health.{bad_input}"].endswith("-> 0.000")
    assert "stereo weight 0.00" in diag.message and bad_input in diag.message


def test_missing_input_uses_missing_and_a_stale_one_counts_as_missing():
    over = {"health_inputs": {"calibration": {"missing": 0.5}, "edge": {"topic": ""}}}
    n, clock = _node(stereo=over)
    assert [h.name for h in n.branches["stereo"].cfg.health_inputs] == ["health", "calibration"]
    _frame(n, clock, 0)
    g = _frame(n, clock, 1, [_h(VDR, 1.0)])
    assert g["stereo"] == pytest.approx(0.5)  # calibration never came: missing = 0.5
    g = _frame(n, clock, 2, [_h(CAL, 1.0)])
    assert g["stereo"] == 1.0
    timeout = _stereo_cfg(n)["calibration"].timeout_s  # 3 s: both inputs go stale after the frames below
    k = 2 + int(timeout * 10) + 2
    g = _frame(n, clock, k, [_h(VDR, 1.0)])  # the disparity ratio is fresh, the calibration score stale
    assert g["stereo"] == pytest.approx(0.5)
    diag = {s.name: s for s in n.diagnostic_statuses()}["fusion: branches"]
    assert diag.values["stereo.health.calibration"] == "missing -> 0.500"


def test_a_sample_stamped_ahead_of_the_node_clock_counts():
    """Replay restarts the node clock at each message's receive time: the health sample emitted while the
    scan was processed can carry a later node time than the grid pair that completes the frame."""
    n, clock = _node()
    _frame(n, clock, 0)
    s = 10 * S + S // 10
    clock.ns = s + S // 5
    n.handle(*_h("/occupancy_grid/debug/scan_health/azimuth_coverage", 0.2, s))
    t = truth(1)
    feed(n, clock, grids(t, s, STEREO) + grids(t, s, GEO) + grids(t, s, LRN), at=s + S // 20)
    assert n.last_result.gates["geometric"] == 0.0 and n.last_result.gates["lidar_learned"] == 1.0
    # the reason the report and /diagnostics give names the limiting input
    assert "coverage" in n.low_weight_reason("geometric") and n.low_weight_reason("lidar_learned") is None


def test_legacy_single_health_topic_still_works_alone():
    legacy = {"health_topic": VDR, "health_bad": 0.2, "health_good": 0.6, "health_missing": 0.25,
              "health_inputs": {"calibration": {"topic": ""}, "edge": {"topic": ""}}}
    n, clock = _node(stereo=legacy)
    _frame(n, clock, 0)
    assert _frame(n, clock, 1)["stereo"] == pytest.approx(0.25)
    assert _frame(n, clock, 2, [_h(VDR, 0.4)])["stereo"] == pytest.approx(0.5)


def test_health_input_config_errors_name_the_parameter(tmp_path):
    with pytest.raises(ConfigError, match="health_inputs.calibration.*topik"):
        _node(stereo={"health_inputs": {"calibration": {"topik": "/x"}}})
    with pytest.raises(ConfigError, match="missing"):
        _node(stereo={"health_inputs": {"calibration": {"missing": 2.0}}})
    with pytest.raises(ConfigError, match="named twice"):
        _node(stereo={"health_inputs": {"edge": {"topic": CAL}}})
    with pytest.raises(ConfigError, match="grid topic"):
        _node(stereo={"health_inputs": {"edge": {"topic": GEO[0]}}})
    # the params file is the schema: an input name it does not have is refused for a user file
    import yaml

    from perception_nodes.config import load_params as load

    bad = {"fusion": {"ros__parameters": {"branches": {"stereo": {"health_inputs": {"glare": {"topic": "/g"}}}}}}}
    f = tmp_path / "user.yaml"
    f.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="unknown parameter fusion.branches.stereo.health_inputs.glare"):
        load(f)


# --- the scalars ---------------------------------------------------------------------------------------
def _ring_scan(n_az: int = 1800, rings: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    az = np.linspace(-np.pi, np.pi, n_az, endpoint=False)
    a, r = np.meshgrid(az, np.linspace(4.0, 40.0, rings))
    pts = np.zeros((a.size, 4), np.float32)
    pts[:, 0], pts[:, 1] = (r * np.cos(a)).ravel(), (r * np.sin(a)).ravel()
    return pts[rng.random(len(pts)) > 0.05]  # the sensor's own ~5 % dropout


def test_scan_health_sees_dropout_and_a_lost_sector_and_recovers():
    mon = ScanHealthMonitor(ScanHealthParams())
    clean = [mon.assess(_ring_scan(seed=k)).health for k in range(10)]
    assert min(clean) > 0.95
    pts = _ring_scan(seed=10)
    drop = mon.assess(pts[np.random.default_rng(1).random(len(pts)) > 0.8])
    assert drop.point_ratio == pytest.approx(0.2, abs=0.03) and drop.azimuth_coverage == 1.0
    assert drop.health == pytest.approx(drop.point_ratio)
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    sector = mon.assess(pts[np.abs(az) > 60.0])
    assert sector.azimuth_coverage == pytest.approx(24 / 36, abs=1.01 / 36) and sector.health < 0.7
    assert mon.assess(pts[:0]).health == 0.0
    assert mon.assess(_ring_scan(seed=11)).health > 0.95  # the faults never entered the baseline
    fixed = ScanHealthMonitor(ScanHealthParams(expected_points=2 * len(pts)))
    assert fixed.assess(pts).point_ratio == pytest.approx(0.5)


def test_exposure_sees_glare_and_blackout_not_a_normal_scene():
    from perception_nodes.scenario.faults import add_glare

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(110, 40, (96, 320, 3)), 0, 255).astype(np.uint8)
    normal = exposure_health(img)
    assert normal.health > 0.97 and not normal.uniform
    glare = exposure_health(add_glare(img, (0.72, 0.25), 0.06))
    assert glare.health < normal.health - 0.05 and glare.saturated > 0.05
    assert exposure_health(np.zeros_like(img)).health == 0.0
    assert exposure_health(np.full_like(img, 255)).health == 0.0
    mono = exposure_health(img[:, :, 0])
    assert mono.health > 0.97


def test_a_non_finite_health_value_is_counted_malformed_and_the_gate_stays_finite():
    n, clock = _node()
    g = _frame(n, clock, 0, [_h(VDR, 1.0)])
    assert g["stereo"] == 1.0
    g = _frame(n, clock, 1, [_h(VDR, math.nan)])
    assert n.malformed[VDR] == 1  # counted, the node goes on
    assert all(math.isfinite(v) for v in g.values()) and g["stereo"] == 1.0  # the last good value stands
    assert all(math.isfinite(w) for w in n.last_result.weights.values())
