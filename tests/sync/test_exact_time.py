"""ExactTime policy: the message_filters C++ cases (§3.3) and the differences we chose."""

from __future__ import annotations

import pytest

from perception_nodes.sync import DropReason, ExactTimeSynchronizer

from .cases import MS, check_accounting

T01 = 100 * MS  # the C++ tests' 0.1 s


def _adds(sync: ExactTimeSynchronizer, seq: list[tuple[int, int]]) -> list[int]:
    """Add ``(stamp, topic)`` in order; return the cumulative number of sets after each add."""
    total, counts = 0, []
    for stamp, topic in seq:
        total += len(sync.add(topic, stamp, (topic, stamp)))
        counts.append(total)
        check_accounting(sync)
    return counts


def test_multiple_times() -> None:
    sync = ExactTimeSynchronizer(3, 2)
    assert _adds(sync, [(0, 0), (T01, 1), (T01, 0), (T01, 2)]) == [0, 0, 0, 1]


def test_queue_size() -> None:
    sync = ExactTimeSynchronizer(3, 1)
    assert _adds(sync, [(0, 0), (0, 1), (T01, 1), (0, 1), (0, 2)]) == [0, 0, 0, 0, 0]


def test_drop_callback() -> None:
    sync = ExactTimeSynchronizer(2, 1)
    sync.add(0, 0, "a")
    assert sum(sync.dropped) == 0
    sync.add(0, T01, "b")
    assert sum(sync.dropped) == 1
    assert sync.dropped_by_reason[DropReason.OVERFLOW] == [1, 0]


def test_event_in_event_out() -> None:
    """C++ passes MessageEvents (with receipt time) through untouched; here the payload object is
    returned as is, so the caller can carry whatever event wrapper it likes."""
    ev0, ev1 = object(), object()
    sync = ExactTimeSynchronizer(2, 2)
    sync.add(0, 4_000_000_000, ev0)
    [synced] = sync.add(1, 4_000_000_000, ev1)
    assert synced.messages[0] is ev0 and synced.messages[1] is ev1
    assert synced.stamps_ns == (4_000_000_000, 4_000_000_000)


def test_emitting_discards_older_partial_sets() -> None:
    sync = ExactTimeSynchronizer(2, 5)
    sync.add(0, 1, "a1")
    sync.add(0, 2, "a2")
    [synced] = sync.add(1, 2, "b2")
    assert synced.messages == ("a2", "b2")
    assert sync.dropped_by_reason[DropReason.UNMATCHED] == [1, 0]
    assert sync.pending == (0, 0)


def test_stamps_not_newer_than_the_last_set_are_late() -> None:
    sync = ExactTimeSynchronizer(3, 5)
    sync.add(0, 5, "a")
    sync.add(1, 5, "b")
    sync.add(2, 5, "c")
    assert sync.add(2, 5, "again") == []  # C++ would start a new tuple at an emitted stamp
    assert sync.add(0, 4, "old") == []
    assert sync.dropped_by_reason[DropReason.LATE] == [0, 0, 1]
    assert sync.dropped_by_reason[DropReason.OUT_OF_ORDER] == [1, 0, 0]
    check_accounting(sync)


def test_repeated_stamp_replaces_like_cpp() -> None:
    sync = ExactTimeSynchronizer(2, 5)
    sync.add(0, 7, "first")
    sync.add(0, 7, "second")
    [synced] = sync.add(1, 7, "x")
    assert synced.messages == ("second", "x")
    assert sync.dropped_by_reason[DropReason.REPLACED] == [1, 0]


@pytest.mark.parametrize("kwargs", [{"n_inputs": 0, "queue_size": 1}, {"n_inputs": 2, "queue_size": 0}])
def test_invalid_configuration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ExactTimeSynchronizer(**kwargs)
