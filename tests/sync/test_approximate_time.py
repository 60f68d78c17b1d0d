"""ApproximateTime policy: the message_filters C++ cases (§3.1), counters, ordering and validation."""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import pytest

from perception_nodes.sync import ApproximateTimeSynchronizer, DropReason, ExactTimeSynchronizer, SyncedSet

from .cases import APPROXIMATE_TIME_CASES, MS, S, ApproxCase, check_accounting


def _run(case: ApproxCase) -> tuple[ApproximateTimeSynchronizer, list[tuple[int, SyncedSet]]]:
    sync = ApproximateTimeSynchronizer(case.n_inputs, case.queue_size, **case.kwargs)
    out: list[tuple[int, SyncedSet]] = []
    for pos, (stamp, topic) in enumerate(case.inputs):
        for synced in sync.add(topic, stamp, (topic, stamp, pos)):
            out.append((pos, synced))
        check_accounting(sync)
    return sync, out


@pytest.mark.parametrize("case", APPROXIMATE_TIME_CASES, ids=lambda c: c.name)
def test_message_filters_case(case: ApproxCase) -> None:
    sync, out = _run(case)
    assert tuple(s.stamps_ns for _, s in out) == case.expected
    if case.emitted_at is not None:
        assert tuple(pos for pos, _ in out) == case.emitted_at
    for _, synced in out:
        assert synced.complete and synced.missing == ()
        # The payload in slot k is the very message added on topic k with that stamp.
        for k, (msg, stamp) in enumerate(zip(synced.messages, synced.stamps_ns)):
            assert msg[0] == k and msg[1] == stamp
    assert sync.sets_emitted == len(case.expected)
    assert sync.omitted == [0] * case.n_inputs


def test_imperfect_match_counts_the_two_skipped_messages() -> None:
    case = next(c for c in APPROXIMATE_TIME_CASES if c.name == "ImperfectMatch")
    sync, _ = _run(case)
    # 2@0 and 3@0 can be in no set as good as (6, 5): dropped by the search, not lost.
    assert sync.dropped_by_reason[DropReason.UNMATCHED][0] == 2
    assert sync.dropped_by_reason[DropReason.OVERFLOW] == [0, 0]
    assert sync.pending == (0, 1)  # 7@1 waits for a partner


def test_long_queue_overflow_is_counted_on_the_overflowing_topic() -> None:
    case = next(c for c in APPROXIMATE_TIME_CASES if c.name == "LongQueue")
    sync, _ = _run(case)
    assert sync.dropped_by_reason[DropReason.OVERFLOW][0] > 0
    assert sync.dropped_by_reason[DropReason.OVERFLOW][1] == 0
    assert sync.dropped[0] == sync.received[0] - sync.used[0] - sync.pending[0]


def test_out_of_order_stamp_is_dropped_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    """One step back behind a stamp already emitted is dropped; it would cross that set."""
    sync = ApproximateTimeSynchronizer(2, 10)
    sync.add(0, 5 * S, "a")
    assert [s.stamps_ns for s in sync.add(1, 5 * S, "b")] == [(5 * S, 5 * S)]
    with caplog.at_level(logging.WARNING, logger="perception_nodes.sync.approximate_time"):
        assert sync.add(0, 3 * S, "late") == []
        sync.add(0, 6 * S, "c")  # back on track: the next step back is again a single one
        assert [s.messages for s in sync.add(1, 6 * S, "d")] == [("c", "d")]
        assert sync.add(0, 4 * S, "late2") == []
    assert sync.dropped_by_reason[DropReason.OUT_OF_ORDER] == [2, 0]
    assert sync.time_jumps == [0, 0]
    assert sum("already emitted" in r.getMessage() for r in caplog.records) == 1
    check_accounting(sync)


def test_step_back_supersedes_held_messages_of_that_input() -> None:
    sync = ApproximateTimeSynchronizer(2, 10)
    sync.add(0, 5 * S, "a")
    sync.add(0, 3 * S, "older")  # "a" was never emitted: the input left its timeline
    assert sync.dropped_by_reason[DropReason.SUPERSEDED] == [1, 0]
    assert [s.messages for s in sync.add(1, 3 * S, "b")] == [("older", "b")]
    check_accounting(sync)


def test_issue_case_far_future_stamp_then_valid_input_recovers() -> None:
    """Issue 7's smallest case (queue 1): upstream message_filters emits (0.2, 0.22); the old
    implementation never emitted again because F stayed pending and every later stamp was dropped."""
    far = 2**31 * S
    seq = [(far, 1), (100 * MS, 0), (120 * MS, 1), (200 * MS, 0), (220 * MS, 1)]
    sync = ApproximateTimeSynchronizer(2, 1)
    out = [s.stamps_ns for stamp, k in seq for s in sync.add(k, stamp, None)]
    assert out and all(far not in s for s in out)
    assert sync.dropped_by_reason[DropReason.SUPERSEDED] == [0, 1]
    more = [s.stamps_ns for s in sync.add(0, 300 * MS, None) + sync.add(1, 320 * MS, None)]
    assert (200 * MS, 220 * MS) in out + more
    check_accounting(sync)


@pytest.mark.parametrize("policy", ["approx", "exact"])
def test_emitted_far_future_stamp_is_a_time_jump_after_two_valid_messages(policy: str) -> None:
    """A bogus stamp that was already emitted (both inputs carried it) cannot be superseded: the
    second valid message on each input declares a time jump and matching resumes."""
    far = 2**31 * S
    sync = ApproximateTimeSynchronizer(2, 5) if policy == "approx" else ExactTimeSynchronizer(2, 5)
    sync.add(0, far, None)
    assert len(sync.add(1, far, None)) == 1
    out = []
    for k in range(1, 6):
        out += sync.add(0, k * 100 * MS, None)
        out += sync.add(1, k * 100 * MS, None)
    assert sync.time_jumps == [1, 1]
    assert sync.dropped_by_reason[DropReason.OUT_OF_ORDER] == [1, 1]
    assert [s.stamps_ns[0] // MS for s in out][:2] == [200, 300]
    check_accounting(sync)


def test_equal_stamps_on_one_topic_are_accepted_like_cpp() -> None:
    sync = ApproximateTimeSynchronizer(2, 10)
    sync.add(0, 1 * S, "a1")
    sync.add(0, 1 * S, "a2")
    out = sync.add(1, 1 * S, "b")
    assert [s.messages for s in out] == [("a1", "b")]
    assert sync.dropped == [0, 0] and sync.pending == (1, 0)


def test_max_interval_prevents_wide_sets() -> None:
    sync = ApproximateTimeSynchronizer(2, 10, max_interval_s=0.5)
    out = []
    for stamp, topic in [(0, 0), (1 * S, 1), (1 * S + 100 * MS, 0), (2 * S, 1), (2 * S + 50 * MS, 0)]:
        out += sync.add(topic, stamp, None)
    for synced in out:
        assert max(synced.stamps_ns) - min(synced.stamps_ns) <= 500 * MS
    assert sync.dropped_by_reason[DropReason.UNMATCHED][0] >= 1  # 0@0 has no partner within 0.5 s


def test_age_penalty_scaling_truncates_like_rclcpp_duration() -> None:
    sync = ApproximateTimeSynchronizer(2, 10)
    assert sync._scaled(10) == 11
    assert sync._scaled(1) == 1  # 1.1 ns truncated to 1 ns
    assert sync._scaled(-1) == -1
    # Exact product with the double 1 + 0.1 for any stamp size (a float product would round here).
    assert sync._scaled(2**62) == math.floor(2**62 * Fraction(1.1))
    assert ApproximateTimeSynchronizer(2, 10, age_penalty=0.0)._scaled(7) == 7


def test_single_input_passes_messages_through() -> None:
    sync = ApproximateTimeSynchronizer(1, 3)
    assert [s.stamps_ns for s in sync.add(0, 5, "x")] == [(5,)]


def test_synced_set_is_frozen_and_typed() -> None:
    s = SyncedSet(messages=("a", None), stamps_ns=(1, None), missing=(1,))
    assert not s.complete
    with pytest.raises(AttributeError):
        s.missing = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_inputs": 0, "queue_size": 1},
        {"n_inputs": 2, "queue_size": 0},
        {"n_inputs": 2, "queue_size": 1, "age_penalty": -0.1},
        {"n_inputs": 2, "queue_size": 1, "age_penalty": math.nan},
        {"n_inputs": 2, "queue_size": 1, "max_interval_s": -1.0},
        {"n_inputs": 2, "queue_size": 1, "inter_message_lower_bounds_s": [0.1]},
        {"n_inputs": 2, "queue_size": 1, "inter_message_lower_bounds_s": [0.1, -0.1]},
        {"n_inputs": 2, "queue_size": 1, "input_timeouts_s": [0.1]},
        {"n_inputs": 2, "queue_size": 1, "input_timeouts_s": [0.1, math.inf]},
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer(**kwargs)


def test_bad_calls_are_rejected() -> None:
    sync = ApproximateTimeSynchronizer(2, 10)
    with pytest.raises(IndexError):
        sync.add(2, 0, None)
    with pytest.raises(TypeError):
        sync.add(0, 1.5, None)  # type: ignore[arg-type]  # stamps are integer ns
    timed = ApproximateTimeSynchronizer(2, 10, input_timeouts_s=[None, 0.1])
    with pytest.raises(ValueError, match="now_ns"):
        timed.add(0, 0, None)


def test_without_timeouts_poll_only_records_time() -> None:
    sync = ApproximateTimeSynchronizer(2, 10)
    sync.add(0, 0, "a", now_ns=5)
    assert sync.poll(10**15) == []
    assert sync.pending == (1, 0)
