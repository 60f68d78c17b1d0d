"""The fallback state machine: enters on high uncertainty or stale input, does not chatter around the
threshold, recovers only after N good frames, holds then goes straight/stops; the command law."""

from __future__ import annotations

import math

import pytest

from perception_nodes.control.fallback import FINAL, HOLD, NOMINAL, FallbackParams, FallbackStateMachine, restart_clock
from perception_nodes.control.health import CloudHealthMonitor, CloudHealthParams, azimuth_coverage
from perception_nodes.control.law import CommandParams, command_for

P = FallbackParams(enter_threshold=0.02, exit_threshold=0.01, recover_frames=3, input_timeout_s=0.35, hold_s=1.0)  # (not the defaults)
FRAME = 100_000_000


def run(fsm, stds, k=0.01, age=0.0, start=0):
    return [fsm.step(start + i * FRAME, k, u, input_age_s=age) for i, u in enumerate(stds)]


def test_enters_on_high_uncertainty_at_once_and_holds_the_last_safe_curvature():
    fsm = FallbackStateMachine(P)
    out = run(fsm, [0.005, 0.005])
    assert [o.fallback for o in out] == [False, False]
    bad = fsm.step(2 * FRAME, 0.5, 0.05, input_age_s=0.0)  # the new (wild) curvature is not followed
    assert bad.fallback and bad.state == HOLD and bad.curvature == 0.01 and "uncertainty" in bad.reason
    assert fsm.episodes == 1


def test_no_chatter_between_the_two_thresholds():
    fsm = FallbackStateMachine(P)
    # hovering just below / above the enter threshold, never below the exit threshold
    stds = [0.019, 0.021, 0.019, 0.021, 0.015, 0.019, 0.012, 0.021, 0.019, 0.015, 0.019, 0.018]
    out = run(fsm, stds)
    assert fsm.episodes == 1  # entered once at the first 0.021 ...
    assert all(o.fallback for o in out[1:])  # ... and never left: nothing was below 0.01


def test_recovers_only_after_n_consecutive_good_frames_and_a_bad_frame_restarts_the_count():
    fsm = FallbackStateMachine(P)
    run(fsm, [0.05])
    out = run(fsm, [0.005, 0.005, 0.015, 0.005, 0.005], start=FRAME)
    assert all(o.fallback for o in out)  # 2 good, a middling one resets, 2 good: not yet 3
    ok = fsm.step(6 * FRAME, 0.02, 0.005, input_age_s=0.0)
    assert not ok.fallback and ok.state == NOMINAL and ok.curvature == 0.02


def test_stale_input_enters_and_fresh_input_alone_does_not_leave_without_good_frames():
    fsm = FallbackStateMachine(P)
    assert not fsm.step(0, 0.01, 0.005, input_age_s=0.1).fallback
    s = fsm.step(FRAME, 0.01, 0.005, input_age_s=0.5)
    assert s.fallback and "stale" in s.reason
    out = run(fsm, [0.005] * 3, start=2 * FRAME)
    assert [o.fallback for o in out] == [True, True, False]


def test_after_hold_s_the_final_action_straight_or_stop():
    for action, k, stop in (("straight", 0.0, False), ("stop", 0.03, True)):
        fsm = FallbackStateMachine(FallbackParams(hold_s=0.5, final_action=action))
        fsm.step(0, 0.03, 0.001, input_age_s=0.0)
        out = run(fsm, [1.0] * 8, start=FRAME)
        assert out[3].state == HOLD and out[3].curvature == 0.03
        assert out[5].state == FINAL and out[5].curvature == k and out[5].stop is stop


def test_no_usable_curvature_falls_back_and_time_going_back_restarts_the_hold():
    fsm = FallbackStateMachine(P)
    assert fsm.step(10 * FRAME, math.nan, math.inf, input_age_s=0.0).fallback
    restart_clock(fsm, 0)
    assert fsm.since_ns == 0
    assert fsm.step(FRAME, 0.0, math.inf, input_age_s=0.0).state == HOLD


def test_params_reject_inverted_hysteresis():
    with pytest.raises(ValueError, match="hysteresis"):
        FallbackParams(enter_threshold=0.01, exit_threshold=0.02)


def test_command_law_bicycle_model_clamp_and_lateral_acceleration_cap():
    p = CommandParams(wheelbase_m=2.5, speed_mps=9.0, max_steering_rad=0.5, max_lateral_accel_mps2=2.0)
    c = command_for(0.01, 9.0, p)
    assert math.isclose(c.steering_angle, math.atan(0.025)) and math.isclose(c.curvature, 0.01)
    assert math.isclose(c.speed, min(9.0, math.sqrt(2.0 / 0.01)))
    assert math.isclose(c.yaw_rate, c.speed * 0.01)
    big = command_for(1.0, 9.0, p)
    assert big.steering_angle == 0.5 and math.isclose(big.curvature, math.tan(0.5) / 2.5)
    assert command_for(math.nan, 3.0, p).steering_angle == 0.0


def test_cloud_health_point_ratio_and_blocked_sector():
    import numpy as np

    rng = np.random.default_rng(0)
    az = rng.uniform(-np.pi, np.pi, 20000)
    full = np.stack([10 * np.cos(az), 10 * np.sin(az)], 1)
    assert azimuth_coverage(full, 36, 5) == 1.0
    mon = CloudHealthMonitor(CloudHealthParams(min_points=100, min_point_ratio=0.5, min_azimuth_coverage=0.9))
    for _ in range(5):
        assert mon.assess(full).reasons == ()
    sector = full[np.abs(az) > np.deg2rad(60)]  # front 120 deg blocked
    assert any("coverage" in r for r in mon.assess(sector).reasons)
    sparse = full[rng.random(len(full)) < 0.1]  # 90 % dropout
    assert any("usual points" in r for r in mon.assess(sparse).reasons)
