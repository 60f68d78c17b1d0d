"""The control node core (no ROS): commands from fused curvature, several sensors, odometry-aligned history,
bad input (NaN/inf, empty and mismatched arrays, time jumps), stale input, scan-health triggers, diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.codecs.backend import default_backend, make_header
from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud
from perception_nodes.codecs.vision import CURVATURE_TYPE, curvature_msg
from perception_nodes.config import ConfigError, load_params
from perception_nodes.graph.control import ACKERMANN_TYPE, TWIST_TYPE, UNCERTAINTY_TYPE, ControlNode
from perception_nodes.graph.node import ERROR, OK, WARN

LIDAR = "/perception/lidar/curvature"
OTHER = "/perception/camera/curvature"
ODOM = "/ground_truth/odometry"
SCAN = "/sensing/lidar/points"
T0 = 1_700_000_000_000_000_000
FRAME = 100_000_000


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        return self.t


def make(**over):
    p = {k: v for k, v in load_params()["control"].items() if k != "enabled"}
    p["health_points_topic"] = ""
    for k, v in over.items():
        p[k] = v
    clock = Clock()
    node = ControlNode("control", p, backend=default_backend(), clock=clock, steady_clock=clock)
    node.warmup()
    return node, clock


def curv(stamp, k=(0.01, 0.01, 0.01), ale=1e-5, epi=1e-6, h=(0.0, 10.0, 20.0)):
    n = len(k)
    return curvature_msg(list(h), np.asarray(k, float), np.broadcast_to(np.asarray(ale, float), (n,)),
                         np.broadcast_to(np.asarray(epi, float), (n,)), stamp, "base_link")


def odom(stamp, x, y=0.0):
    b = default_backend()
    pose = b.new("geometry_msgs/msg/Pose", position=b.new("geometry_msgs/msg/Point", x=float(x), y=float(y), z=0.0),
                 orientation=b.new("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=0.0, w=1.0))
    cov = np.zeros(36)
    return b.new("nav_msgs/msg/Odometry", header=make_header(b, stamp, "map"), child_frame_id="base_link",
                 pose=b.new("geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=cov),
                 twist=b.new("geometry_msgs/msg/TwistWithCovariance",
                             twist=b.new("geometry_msgs/msg/Twist",
                                         linear=b.new("geometry_msgs/msg/Vector3", x=0.0, y=0.0, z=0.0),
                                         angular=b.new("geometry_msgs/msg/Vector3", x=0.0, y=0.0, z=0.0)),
                             covariance=cov))


def by_type(emits, t):
    return [e.msg for e in emits if e.msgtype == t]


def feed(node, clock, topic, msg, dt=20_000_000):
    clock.t = max(clock.t, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec + dt)
    return node.handle(topic, msg)


def test_ackermann_command_follows_the_fused_curvature_with_its_interval():
    node, clock = make()
    out = feed(node, clock, LIDAR, curv(T0, k=(0.02, 0.02, 0.02)))
    cmd, = by_type(out, ACKERMANN_TYPE)
    unc, = by_type(out, UNCERTAINTY_TYPE)
    wb = node.command_params.wheelbase_m
    assert math.isclose(cmd.drive.steering_angle, math.atan(wb * 0.02), rel_tol=1e-6)
    assert cmd.drive.speed == pytest.approx(min(node.command_params.speed_mps, math.sqrt(3.0 / 0.02)), rel=1e-6)
    assert unc.curvature == pytest.approx(0.02) and unc.interval_low < 0.02 < unc.interval_high
    assert unc.curvature_variance == pytest.approx(1.1e-5) and not unc.fallback and unc.interval_level == 0.9
    assert unc.header.stamp == cmd.header.stamp and unc.sources == 1


def test_a_curvature_that_arrives_too_late_gives_a_fallback_command_with_the_reason():
    """max_input_latency_s: a prediction whose stamp is older than that when it arrives is not steered on; the
    command falls back and says why (the ROS test of the node raises this bound: DDS may deliver its first
    sample late)."""
    node, clock = make()
    late = int(1.5 * 1e9)
    out = feed(node, clock, LIDAR, curv(T0, k=(0.02, 0.02, 0.02)), dt=late)
    cmd, = by_type(out, ACKERMANN_TYPE)
    unc, = by_type(out, UNCERTAINTY_TYPE)
    assert unc.fallback and cmd.drive.steering_angle != pytest.approx(math.atan(node.command_params.wheelbase_m * 0.02))
    assert any("old at arrival" in st.message for st in node.diagnostic_statuses())
    node2, clock2 = make(max_input_latency_s=2.0)  # the same delay within a looser bound: steered on
    unc2, = by_type(feed(node2, clock2, LIDAR, curv(T0, k=(0.02, 0.02, 0.02)), dt=late), UNCERTAINTY_TYPE)
    assert not unc2.fallback


def test_twist_command_and_invalid_command_type():
    node, clock = make(command_type="twist")
    cmd, = by_type(feed(node, clock, LIDAR, curv(T0, k=(0.01,) * 3)), TWIST_TYPE)
    assert cmd.twist.angular.z == pytest.approx(cmd.twist.linear.x * 0.01, rel=1e-6) and cmd.twist.linear.x > 0
    with pytest.raises(ConfigError, match="command_type"):
        make(command_type="tank")


def test_two_sensors_are_fused_and_the_confident_one_dominates():
    node, clock = make(curvature_topics=[LIDAR, OTHER], decay_per_s=0.0)
    feed(node, clock, LIDAR, curv(T0, k=(0.0,) * 3, ale=1e-5, epi=1e-5))  # vague about the mean
    feed(node, clock, OTHER, curv(T0 + FRAME, k=(0.03,) * 3, ale=1e-5, epi=1e-8))  # confident
    unc, = by_type(feed(node, clock, LIDAR, curv(T0 + 2 * FRAME, k=(0.0,) * 3, ale=1e-5, epi=1e-5)), UNCERTAINTY_TYPE)
    # decay 0: only the newest of each sensor counts... the confident sensor's is 0.1 s old -> weight 0
    assert unc.sources == 1
    node, clock = make(curvature_topics=[LIDAR, OTHER], decay_per_s=0.5)
    feed(node, clock, OTHER, curv(T0, k=(0.03,) * 3, ale=1e-5, epi=1e-8))
    unc, = by_type(feed(node, clock, LIDAR, curv(T0, k=(0.0,) * 3, ale=1e-5, epi=1e-5)), UNCERTAINTY_TYPE) or [None]
    assert unc is None  # same stamp as the last command: evidence for the next one
    unc, = by_type(feed(node, clock, LIDAR, curv(T0 + FRAME, k=(0.0,) * 3, ale=1e-5, epi=1e-5)), UNCERTAINTY_TYPE)
    assert unc.sources == 3 and abs(unc.curvature - 0.03) < 0.03 * 0.01


def test_a_past_prediction_is_read_where_its_points_are_now_by_odometry():
    node, clock = make(decay_per_s=1.0, lookahead_m=0.0, curvature_topics=[LIDAR, OTHER])
    node.handle(ODOM, odom(T0, 0.0))
    feed(node, clock, LIDAR, curv(T0, k=(0.0, 0.02, 0.04)))  # curvature grows 0.002 / m ahead
    node.handle(ODOM, odom(T0 + 5 * FRAME, 5.0))  # 5 m driven
    # a second sensor with no usable values at all (NaN): the command comes from the shifted prediction alone
    out = feed(node, clock, OTHER, curv(T0 + 5 * FRAME, k=(math.nan,) * 3))
    unc, = by_type(out, UNCERTAINTY_TYPE)
    assert unc.sources == 1 and unc.curvature == pytest.approx(0.01, rel=1e-9)
    assert node.nonfinite_entries == 3 and "nonfinite" in node.warnings
    # without odometry: dead reckoning at the commanded speed (9 m/s x 0.5 s = 4.5 m)
    node, clock = make(decay_per_s=1.0, lookahead_m=0.0, odometry_topic="", curvature_topics=[LIDAR, OTHER])
    feed(node, clock, LIDAR, curv(T0, k=(0.0, 0.02, 0.04)))
    unc, = by_type(feed(node, clock, OTHER, curv(T0 + 5 * FRAME, k=(math.nan,) * 3)), UNCERTAINTY_TYPE)
    assert unc.curvature == pytest.approx(0.002 * 4.5, rel=1e-6) and node.dead_reckoned >= 1


@pytest.mark.parametrize("bad, why", [
    (dict(k=(0.01, 0.01)), "different lengths"),
    (dict(k=(), h=()), "empty"),
    (dict(h=(0.0, 20.0, 10.0)), "strictly increasing"),
    (dict(h=(0.0, math.inf, 20.0)), "finite"),
])
def test_malformed_predictions_are_counted_and_the_node_goes_on(bad, why):
    node, clock = make()
    if "k" in bad and len(bad["k"]) == 2:
        msg = curv(T0)
        msg.curvature = np.array([0.01, 0.01])
    else:
        kw = dict(bad)
        n = len(kw.get("h", (0, 10, 20)))
        kw.setdefault("k", (0.01,) * n)
        msg = curv(T0, **kw)
    assert feed(node, clock, LIDAR, msg) == [] or not by_type(feed(node, clock, LIDAR, msg), ACKERMANN_TYPE)
    assert node.malformed[LIDAR] >= 1 and why in node.warnings["malformed"]
    out = feed(node, clock, LIDAR, curv(T0 + FRAME))
    assert by_type(out, ACKERMANN_TYPE)
    assert all(a["balanced"] for a in node.accounting().values())


def test_infinite_variances_give_no_evidence_and_fallback_not_nan():
    node, clock = make()
    feed(node, clock, LIDAR, curv(T0))
    out = feed(node, clock, LIDAR, curv(T0 + FRAME, ale=math.inf, epi=math.inf))
    unc, = by_type(out, UNCERTAINTY_TYPE)
    # the previous frame still carries (discounted) evidence: finite, never NaN
    assert not math.isnan(unc.curvature_variance) and unc.sources == 1
    node, clock = make(decay_per_s=0.0)
    unc, = by_type(feed(node, clock, LIDAR, curv(T0, ale=math.inf, epi=math.inf)), UNCERTAINTY_TYPE)
    assert unc.fallback and math.isinf(unc.curvature_variance) and "no usable curvature" in unc.reason
    cmd, = by_type(feed(node, clock, LIDAR, curv(T0 + FRAME, ale=math.inf, epi=math.inf)), ACKERMANN_TYPE)
    assert math.isfinite(cmd.drive.steering_angle) and cmd.drive.speed == node.command_params.fallback_speed_mps


def test_high_uncertainty_enters_fallback_raises_warn_then_error_and_recovers_with_hysteresis():
    node, clock = make(**{"fallback": {"enter_threshold": 0.02, "exit_threshold": 0.01, "recover_frames": 3,
                                       "input_timeout_s": 0.35, "hold_s": 0.3, "final_action": "straight"}},
                       decay_per_s=0.0)
    t = T0
    feed(node, clock, LIDAR, curv(t, k=(0.01,) * 3))
    levels = []
    for i in range(1, 6):  # std ~0.03 > 0.02
        out = feed(node, clock, LIDAR, curv(t + i * FRAME, k=(0.2,) * 3, ale=8e-4, epi=1e-4))
        unc, = by_type(out, UNCERTAINTY_TYPE)
        assert unc.fallback and unc.curvature == pytest.approx(0.2)
        levels.append(next(s.level for s in node.diagnostic_statuses() if s.name == "control: command"))
    assert levels[0] == WARN and levels[-1] == ERROR  # held the last safe curvature, then straight
    assert unc.commanded_curvature == 0.0 and unc.speed == node.command_params.fallback_speed_mps
    fb = []
    for i in range(6, 10):
        fb.append(by_type(feed(node, clock, LIDAR, curv(t + i * FRAME)), UNCERTAINTY_TYPE)[0].fallback)
    assert fb == [True, True, False, False]
    assert next(s.level for s in node.diagnostic_statuses() if s.name == "control: command") == OK


def test_stale_input_ticks_publish_fallback_commands_and_no_command_before_the_first_input():
    node, clock = make()
    clock.t = T0 + 10 * FRAME
    assert not by_type(node.tick(), ACKERMANN_TYPE)  # nothing to fall back from yet
    feed(node, clock, LIDAR, curv(T0 + 10 * FRAME))
    clock.t += 2 * FRAME
    assert not by_type(node.tick(), ACKERMANN_TYPE)  # 0.2 s: not stale yet
    clock.t += 2 * FRAME
    out = node.tick()
    unc, = by_type(out, UNCERTAINTY_TYPE)
    assert unc.fallback and "stale" in unc.reason and unc.input_age_s > node.fallback_params.input_timeout_s
    assert any(e.msgtype == "diagnostic_msgs/msg/DiagnosticArray" for e in out)  # state change reported at once


def test_time_jump_resets_history_and_commands_go_on():
    node, clock = make()
    for i in range(3):
        feed(node, clock, LIDAR, curv(T0 + 50 * FRAME + i * FRAME))
    clock.t = T0 + FRAME
    out = node.handle(LIDAR, curv(T0))  # 5 s back: a looping bag
    assert by_type(out, ACKERMANN_TYPE) and "time_jump" in node.warnings
    assert by_type(out, UNCERTAINTY_TYPE)[0].sources == 1


def test_a_small_step_back_of_one_topic_is_a_time_jump_not_silence():
    """A looping bag steps back by less than time_jump_s (0.2 s at a 3-frame KITTI loop): every later stamp
    is at or before the last command. That must reset and keep commanding, not go silent."""
    node, clock = make()
    for i in range(3):
        feed(node, clock, LIDAR, curv(T0 + i * FRAME))
    n_before = node.commands_out
    for i in range(3):  # the loop starts again at T0 (0.2 s back)
        out = feed(node, clock, LIDAR, curv(T0 + i * FRAME))
        assert by_type(out, ACKERMANN_TYPE), i
    assert node.commands_out == n_before + 3 and "time_jump" in node.warnings


def test_end_of_input_stops_stale_fallback_commands():
    """Replay calls end_of_input before its final flush: the clock jumping 10 s past the last curvature
    is the end of the bag, not a silent sensor, so no fallback command is published for it."""
    node, clock = make()
    for i in range(3):
        feed(node, clock, LIDAR, curv(T0 + i * FRAME))
    clock.t += 10 * 1_000_000_000
    assert by_type(node.tick(), ACKERMANN_TYPE)  # live: the input went silent -> fallback command
    node2, clock2 = make()
    for i in range(3):
        feed(node2, clock2, LIDAR, curv(T0 + i * FRAME))
    node2.end_of_input()
    clock2.t += 10 * 1_000_000_000
    assert not by_type(node2.tick(), ACKERMANN_TYPE)


def test_scan_health_triggers_fallback_on_a_sparse_scan():
    node, clock = make(health_points_topic=SCAN)
    rng = np.random.default_rng(1)

    def scan(stamp, n):
        az = rng.uniform(-np.pi, np.pi, n)
        pts = np.stack([10 * np.cos(az), 10 * np.sin(az), np.zeros(n), np.zeros(n)], 1).astype(np.float32)
        return create_xyzi_cloud(pts, stamp, "lidar")

    for i in range(4):
        feed(node, clock, SCAN, scan(T0 + i * FRAME, 20000))
        assert not by_type(feed(node, clock, LIDAR, curv(T0 + i * FRAME)), UNCERTAINTY_TYPE)[0].fallback
    feed(node, clock, SCAN, scan(T0 + 4 * FRAME, 1500))
    unc, = by_type(feed(node, clock, LIDAR, curv(T0 + 4 * FRAME)), UNCERTAINTY_TYPE)
    assert unc.fallback and "usual points" in unc.reason
    # no scan stamped near the command: also a trigger
    unc, = by_type(feed(node, clock, LIDAR, curv(T0 + 12 * FRAME)), UNCERTAINTY_TYPE)
    assert unc.fallback and "no LiDAR scan" in unc.reason
    assert CURVATURE_TYPE in {p.msgtype for p in node.inputs()}


def test_report_section_plots_the_command_with_its_band_and_counts_fallback(tmp_path):
    from pathlib import Path

    from perception_nodes.replay import ReplayResult
    from perception_nodes.report import _fallback_spans, control_section

    r = ReplayResult(tmp_path, Path("bag"), 0, {}, {})
    fb = [5 <= i < 9 for i in range(12)]
    r.control = [(T0 + i * FRAME, 0.01, 0.005 if not fb[i] else -math.inf, 0.015 if not fb[i] else math.inf, 0.01,
                  3.0 if fb[i] else 9.0, fb[i], "curvature input stale (0.4 s > 0.35 s) (holding)") for i in range(12)]
    html_text = control_section(r)
    assert (tmp_path / "control.png").stat().st_size > 0
    assert "12 commands, 4 in fallback, 1 fallback episode(s)" in html_text and "curvature input stale" in html_text
    r.control.append((T0 + 30 * FRAME, math.nan, -math.inf, math.inf, 0.0, 3.0, True, "curvature input stale (2 s)"))
    assert "5 in fallback (1 of them after the curvature input ended" in control_section(r)
    assert _fallback_spans(np.arange(12) * 0.1, np.array(fb)) == [(pytest.approx(0.5), pytest.approx(0.9))]
    assert control_section(ReplayResult(tmp_path, Path("bag"), 0, {}, {})) == ""


def test_staleness_is_measured_in_data_time_while_other_inputs_move_on():
    node, clock = make()
    node.handle(ODOM, odom(T0, 0.0))
    feed(node, clock, LIDAR, curv(T0))
    # a slow machine: the node clock is far ahead, but odometry is no newer than the curvature -> not stale
    node.handle(ODOM, odom(T0 + FRAME // 2, 0.45))
    clock.t = T0 + 30 * FRAME
    assert node.input_staleness_s() == pytest.approx(0.05)
    assert not by_type(node.tick(), UNCERTAINTY_TYPE)
    # the curvature stops while odometry goes on: stale once input_timeout_s (0.25 s) of odometry have passed
    assert node.fallback_params.input_timeout_s == 0.25
    node.handle(ODOM, odom(T0 + 2 * FRAME, 1.8))
    assert not by_type(node.tick(), UNCERTAINTY_TYPE)
    node.handle(ODOM, odom(T0 + 3 * FRAME, 2.7))  # the 3rd frame without a curvature
    clock.t += FRAME
    unc, = by_type(node.tick(), UNCERTAINTY_TYPE)
    assert unc.fallback and "stale" in unc.reason and unc.input_age_s == pytest.approx(0.3)
