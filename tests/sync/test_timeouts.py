"""Per-input timeouts: a dead input is declared absent instead of stalling the others.

The scenario throughout: a LiDAR (input 0) and a camera (input 1), both 10 Hz; LiDAR stamps k·100 ms
arriving 10 ms later, camera stamps k·100 + 20 ms arriving ``cam_latency`` later. Times are ns on the
caller's clock; a 10 ms timer calls ``poll``.
"""

from __future__ import annotations

import pytest

from perception_nodes.sync import ApproximateTimeSynchronizer, DropReason, ExactTimeSynchronizer

from .cases import MS, Arrival, check_accounting, replay, stamps_ms

POLL = 10 * MS


def lidar_camera(n: int, cam_alive=lambda k: True, cam_latency: int = 30 * MS) -> list[Arrival]:
    arrivals = []
    for k in range(n):
        arrivals.append(Arrival(k * 100 * MS + 10 * MS, 0, k * 100 * MS))
        if cam_alive(k):
            stamp = k * 100 * MS + 20 * MS
            arrivals.append(Arrival(stamp + cam_latency, 1, stamp))
    return sorted(arrivals)


def test_dead_camera_stalls_the_plain_policy() -> None:
    """The problem being solved (field notes §1, pain point 4): without timeouts nothing after the
    camera's death is ever emitted, and the LiDAR queue overflows."""
    sync = ApproximateTimeSynchronizer(2, 5)
    out = replay(sync, lidar_camera(15, cam_alive=lambda k: k < 5), poll_period_ns=POLL, until_ns=3000 * MS)
    assert stamps_ms(out) == [(k * 100, k * 100 + 20) for k in range(5)]
    assert sync.dropped_by_reason[DropReason.OVERFLOW][0] > 0


def test_dead_camera_is_declared_absent_after_its_timeout() -> None:
    tau = 150 * MS
    sync = ApproximateTimeSynchronizer(2, 5, input_timeouts_s=[0.15, 0.15])
    arrivals = lidar_camera(15, cam_alive=lambda k: k < 5)
    out = replay(sync, arrivals, poll_period_ns=POLL, until_ns=3000 * MS)

    assert stamps_ms(out) == [(k * 100, k * 100 + 20) for k in range(5)] + [
        (k * 100, None) for k in range(5, 15)
    ]
    assert [s.missing for _, s in out[5:]] == [(1,)] * 10
    assert all(s.messages[1] is None and s.messages[0] == (0, s.stamps_ns[0]) for _, s in out[5:])
    assert sync.omitted == [0, 10]
    assert sync.absent == (False, True)
    assert sync.dropped == [0, 0] and sync.pending == (0, 0)
    # Latency bound: no LiDAR message is held more than τ (+ one timer period) for the dead camera.
    arrival_of = {a.stamp_ns: a.now_ns for a in arrivals if a.topic == 0}
    for returned_at, s in out[5:]:
        assert returned_at - arrival_of[s.stamps_ns[0]] <= tau + POLL
    # Once absent, the camera adds no latency at all: later scans come out on arrival.
    assert all(returned_at == arrival_of[s.stamps_ns[0]] for returned_at, s in out[7:])


def test_camera_rejoins_when_it_sends_again() -> None:
    sync = ApproximateTimeSynchronizer(2, 5, input_timeouts_s=[0.15, 0.15])
    out = replay(sync, lidar_camera(15, cam_alive=lambda k: k < 5 or k >= 10), poll_period_ns=POLL)
    got = stamps_ms(out)
    assert got[:5] == [(k * 100, k * 100 + 20) for k in range(5)]
    assert got[5:11] == [(k * 100, None) for k in range(5, 11)]
    # The camera frame of 1020 ms arrives after the 1000 ms scan went out alone; it rejoins the
    # search and loses to the 1120 ms frame, so complete pairs resume at 1100 ms.
    assert got[11:] == [(k * 100, k * 100 + 20) for k in range(11, 14)]
    assert sync.absent == (False, False)
    assert sync.omitted == [0, 6]
    assert sync.dropped_by_reason[DropReason.UNMATCHED] == [0, 1]
    assert sync.dropped_by_reason[DropReason.LATE] == [0, 0]


def test_input_left_alone_after_an_overflow_is_not_dropped_as_unmatched() -> None:
    """The camera never sends; the first scan reaches the synchroniser late (a slow first frame), so
    the scans pile up and the oldest overflows just before the camera's timeout fires. Once the camera
    is absent every scan is a set by itself: the overflow must not keep the LiDAR from ever being a
    pivot again (it did: every later scan was dropped as UNMATCHED, and a replay whose first frame was
    slow lost all its occupancy grids)."""
    sync = ApproximateTimeSynchronizer(2, 3, input_timeouts_s=[None, 0.2])
    out = []
    for k, now in enumerate([150, 150, 210, 310, 410, 510, 610]):  # arrival (ms) of the scan stamped k*100 ms
        out += sync.add(0, k * 100 * MS, f"L{k}", now_ns=now * MS)
        if k == 3:  # four scans held, queue of three: scan 0 overflowed; the camera is due at 150 + 200 ms
            assert out == [] and sync.dropped_by_reason[DropReason.OVERFLOW] == [1, 0]
    assert sync.absent == (False, True)
    assert [s.messages for s in out] == [(f"L{k}", None) for k in range(1, 7)]
    assert sync.dropped_by_reason[DropReason.UNMATCHED] == [0, 0] and sync.pending == (0, 0)
    check_accounting(sync)


def test_dead_input_times_out_even_when_the_queue_is_shorter_than_its_timeout() -> None:
    """Queue of 3 scans (0.3 s) and a camera timeout of 0.35 s: the oldest scan overflows before the
    camera is due. The wait still runs from that scan's arrival (10 ms), so the camera is absent at
    360 ms and only that one scan is lost; had each overflow restarted the wait from the oldest scan
    still held, the camera would never time out while scans flow and every scan would overflow."""
    sync = ApproximateTimeSynchronizer(2, 3, input_timeouts_s=[None, 0.35])
    out = replay(sync, lidar_camera(10, cam_alive=lambda k: False))
    assert sync.dropped_by_reason[DropReason.OVERFLOW] == [1, 0]
    assert stamps_ms(out) == [(k * 100, None) for k in range(1, 10)]
    assert [t for t, _ in out[:3]] == [410 * MS] * 3  # released by the 360 ms timeout, on the next call
    assert sync.absent == (False, True) and sync.pending == (0, 0)
    check_accounting(sync)


def test_input_slower_than_others_but_within_timeout_is_never_omitted() -> None:
    """'Merely slow' = late relative to the others, but its consecutive frames arrive less than τ
    apart. Here the camera lags the LiDAR by 110 ms, more than its 100 ms period; τ = 0.15 s."""
    sync = ApproximateTimeSynchronizer(2, 5, input_timeouts_s=[0.15, 0.15])
    out = replay(sync, lidar_camera(15, cam_latency=120 * MS), poll_period_ns=POLL, until_ns=2000 * MS)
    assert stamps_ms(out) == [(k * 100, k * 100 + 20) for k in range(15)]
    assert sync.omitted == [0, 0] and sync.dropped == [0, 0]


def test_timeout_shorter_than_the_period_omits_the_slow_input_until_it_rejoins() -> None:
    """τ below the input's inter-arrival gap (mis-sized): the camera is declared absent between its
    first frames; its first late frame (dropped LATE) brings it back, and from then on each candidate is
    emitted when the camera's timeout waives its optimality proof, so sets are complete but formed
    without that proof (here pairing each camera frame with the next scan: size τ above the gap and
    bound the span with ``max_interval_s``)."""
    sync = ApproximateTimeSynchronizer(2, 5, input_timeouts_s=[0.25, 0.05])
    out = replay(sync, lidar_camera(15, cam_latency=120 * MS), poll_period_ns=POLL)
    got = stamps_ms(out)
    assert got[:2] == [(0, None), (100, None)]
    assert got[2:] == [(k * 100, k * 100 - 80) for k in range(2, 15)]
    assert sync.dropped_by_reason[DropReason.LATE] == [0, 1]
    assert sync.absent == (False, False) and sync.pending == (0, 1)
    assert sync.omitted == [0, 2]


def test_timeout_waives_the_optimality_proof_of_a_held_candidate() -> None:
    """The LiDAR dies after its first scan while that scan sits in the candidate: the candidate is
    emitted complete at arrival(oldest held) + τ, then the LiDAR is declared absent."""
    sync = ApproximateTimeSynchronizer(2, 10, input_timeouts_s=[0.08, 0.08])
    assert sync.add(0, 0, "L0", now_ns=10 * MS) == []
    assert sync.add(1, 20 * MS, "C0", now_ns=57 * MS) == []  # held: (L0, C0) not yet provably optimal
    assert sync.poll(136 * MS) == []
    [first] = sync.poll(137 * MS)  # 57 + 80 ms
    assert first.messages == ("L0", "C0") and first.missing == ()
    assert sync.add(1, 120 * MS, "C1", now_ns=157 * MS) == []
    assert sync.poll(236 * MS) == []
    [second] = sync.poll(237 * MS)
    assert second.messages == (None, "C1") and second.missing == (0,)
    [third] = sync.add(1, 220 * MS, "C2", now_ns=257 * MS)  # no wait once absent
    assert third.messages == (None, "C2")
    assert sync.omitted == [2, 0]


def test_timeout_due_at_the_arrival_time_applies_before_the_message() -> None:
    sync = ApproximateTimeSynchronizer(2, 10, input_timeouts_s=[0.08, 0.08])
    sync.add(0, 0, "L0", now_ns=10 * MS)
    sync.add(1, 20 * MS, "C0", now_ns=57 * MS)
    # L1 arrives exactly at the deadline 137 ms: the held candidate is released first.
    out = sync.add(0, 100 * MS, "L1", now_ns=137 * MS)
    assert [s.messages for s in out] == [("L0", "C0")]
    assert sync.absent == (False, False)


def test_poll_frequency_changes_when_not_which() -> None:
    arrivals = lidar_camera(25, cam_alive=lambda k: k < 5 or 12 <= k < 18, cam_latency=45 * MS)

    def run(period: int | None) -> list:
        sync = ApproximateTimeSynchronizer(2, 6, input_timeouts_s=[0.12, 0.2])
        out = replay(sync, arrivals, poll_period_ns=period, until_ns=4000 * MS)
        return [(s.stamps_ns, s.missing) for _, s in out]

    reference = run(None)  # replay: add per message, one final poll
    assert any(m for _, m in reference)
    for period in (1 * MS, 7 * MS, 33 * MS, 500 * MS):
        assert run(period) == reference


def test_replay_reproduces_a_live_run_exactly() -> None:
    arrivals = lidar_camera(20, cam_alive=lambda k: k % 7 != 3, cam_latency=60 * MS)
    runs = []
    for _ in range(2):
        sync = ApproximateTimeSynchronizer(2, 4, input_timeouts_s=[None, 0.1])
        out = replay(sync, arrivals, poll_period_ns=POLL)
        runs.append(([(t, s.stamps_ns, s.missing) for t, s in out], sync.omitted, sync.dropped))
    assert runs[0] == runs[1]


def test_input_without_timeout_is_waited_for_forever() -> None:
    sync = ApproximateTimeSynchronizer(2, 20, input_timeouts_s=[0.1, None])
    out = replay(sync, lidar_camera(10, cam_alive=lambda k: k < 3), until_ns=10_000 * MS)
    assert all(s.complete for _, s in out) and len(out) == 3
    assert sync.absent == (False, False)


def test_three_inputs_one_dead() -> None:
    arrivals = []
    for k in range(10):
        arrivals.append(Arrival(k * 100 * MS + 5 * MS, 0, k * 100 * MS))
        arrivals.append(Arrival(k * 100 * MS + 25 * MS, 1, k * 100 * MS + 10 * MS))
        if k < 2:
            arrivals.append(Arrival(k * 100 * MS + 40 * MS, 2, k * 100 * MS + 15 * MS))
    sync = ApproximateTimeSynchronizer(3, 5, input_timeouts_s=[0.2, 0.2, 0.2])
    out = replay(sync, arrivals, poll_period_ns=POLL, until_ns=2000 * MS)
    got = stamps_ms(out)
    assert got[:2] == [(0, 10, 15), (100, 110, 115)]
    assert got[2:] == [(k * 100, k * 100 + 10, None) for k in range(2, 10)]
    assert sync.omitted == [0, 0, 8]


def test_clock_going_back_is_clamped_and_reset_forgets_state() -> None:
    sync = ApproximateTimeSynchronizer(2, 5, input_timeouts_s=[0.1, 0.1])
    sync.add(0, 1000 * MS, "a", now_ns=1000 * MS)
    sync.add(0, 1100 * MS, "b", now_ns=900 * MS)  # clamped to 1000 ms: a and b both wait from there
    assert sync.poll(1099 * MS) == []
    assert [s.stamps_ns for s in sync.poll(1100 * MS)] == [(1000 * MS, None), (1100 * MS, None)]
    sync.reset()  # e.g. a bag restarted: old stamps are welcome again
    assert sync.absent == (False, False) and sync.pending == (0, 0)
    sync.add(0, 0, "c", now_ns=0)
    assert [s.messages for s in sync.add(1, 0, "d", now_ns=0)] == [("c", "d")]
    check_accounting(sync)


# ---------------------------------------------------------------------------------- ExactTime


def test_exact_time_camera_info_dies_then_returns() -> None:
    """Image (0) + CameraInfo (1) with equal stamps, 30 Hz; CameraInfo silent for frames 3..7."""
    period = 33 * MS
    arrivals = []
    for k in range(12):
        arrivals.append(Arrival(k * period + 8 * MS, 0, k * period))
        if not 3 <= k < 8:
            arrivals.append(Arrival(k * period + 2 * MS, 1, k * period))
    sync = ExactTimeSynchronizer(2, 5, input_timeouts_s=[None, 0.05])
    out = replay(sync, arrivals, poll_period_ns=1 * MS)
    assert [s.missing for _, s in out] == [()] * 3 + [(1,)] * 5 + [()] * 4
    assert [s.stamps_ns[0] for _, s in out] == [k * period for k in range(12)]
    assert sync.omitted == [0, 5] and sync.dropped == [0, 0]
    # Frames 3 and 4 wait for the timeout (8 + 50 ms after image 3 arrived); later ones do not wait.
    returned = {s.stamps_ns[0]: t for t, s in out}
    assert returned[3 * period] == 3 * period + 8 * MS + 50 * MS
    assert returned[5 * period] == 5 * period + 8 * MS


def test_exact_time_dead_input_times_out_even_when_the_queue_is_shorter_than_its_timeout() -> None:
    """Image (0) at 10 Hz, CameraInfo (1) never sends, three partial sets held, timeout 0.35 s: the
    oldest partial set overflows before the CameraInfo is due; the wait still runs from its arrival, so
    the CameraInfo is absent at 360 ms and only that one image is lost (each overflow used to restart
    the wait: no image ever came out)."""
    sync = ExactTimeSynchronizer(2, 3, input_timeouts_s=[None, 0.35])
    out = replay(sync, [Arrival(k * 100 * MS + 10 * MS, 0, k * 100 * MS) for k in range(10)])
    assert sync.dropped_by_reason[DropReason.OVERFLOW] == [1, 0]
    assert [(s.stamps_ns[0] // MS, s.missing) for _, s in out] == [(k * 100, (1,)) for k in range(1, 10)]
    assert [t for t, _ in out[:3]] == [410 * MS] * 3  # released by the 360 ms timeout, on the next call
    check_accounting(sync)


def test_exact_time_poll_frequency_changes_when_not_which() -> None:
    arrivals = [Arrival(k * 40 * MS + 3 * MS, k % 3 if k % 5 else 0, (k // 3) * 40 * MS) for k in range(40)]

    def run(period: int | None) -> list:
        sync = ExactTimeSynchronizer(3, 4, input_timeouts_s=[0.05, 0.07, 0.09])
        return [(s.stamps_ns, s.missing) for _, s in replay(sync, arrivals, poll_period_ns=period, until_ns=3000 * MS)]

    reference = run(None)
    for period in (1 * MS, 13 * MS, 100 * MS):
        assert run(period) == reference


def test_timeouts_require_a_clock() -> None:
    with pytest.raises(ValueError, match="now_ns"):
        ExactTimeSynchronizer(2, 2, input_timeouts_s=[0.1, None]).add(0, 0, None)


def test_repeated_timeouts_are_logged_rate_limited_and_named(caplog, monkeypatch) -> None:
    """A flapping camera times out again and again (all counted in ``omitted``) but the log says so
    once per LOG_INTERVAL_S, names the input by the caller's topic and says how many were held back."""
    import logging

    from perception_nodes.sync import approximate_time

    flapping = lidar_camera(40, cam_alive=lambda k: (k // 4) % 2 == 0)
    sync = ApproximateTimeSynchronizer(2, 5, input_timeouts_s=[0.15, 0.15], names=["/lidar", "/camera"])
    with caplog.at_level(logging.INFO, logger="perception_nodes.sync.approximate_time"):
        replay(sync, flapping, poll_period_ns=POLL, until_ns=4000 * MS)
        timeouts = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
        rejoins = [r.getMessage() for r in caplog.records if "rejoined" in r.getMessage()]
        assert len(timeouts) == 1 and timeouts[0].startswith("input 1 (/camera) timed out")
        assert len(rejoins) == 1 and "(/camera)" in rejoins[0]
        assert sync.omitted[1] >= 8  # every absent stretch still counted
        caplog.clear()
        monkeypatch.setattr(approximate_time, "LOG_INTERVAL_S", 0.0)
        later = [Arrival(a.now_ns + 4000 * MS, a.topic, a.stamp_ns + 4000 * MS) for a in flapping]
        replay(sync, later, poll_period_ns=POLL, until_ns=8000 * MS)
    timeouts = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert len(timeouts) >= 4
    assert "more like this" in timeouts[0]  # the first one after the quiet window reports the rest
    with pytest.raises(ValueError, match="names"):
        ApproximateTimeSynchronizer(2, 5, names=["/lidar"])
