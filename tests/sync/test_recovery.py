"""Recovery: whatever stamps came before (far-future stamps, backward jumps, gaps, dead inputs), valid
input on every input yields output again (issue 7).

"Valid input" is a suffix in which every input sends periodic, in-order stamps from a common base
(anywhere: below, inside or above what came before), the inputs' stamps of one round within a few ms,
arriving in any order within the round. The reference is a fresh synchroniser fed the suffix alone.
"""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception_nodes.sync import ApproximateTimeSynchronizer, ExactTimeSynchronizer

from .cases import MS, S, check_accounting

FAR = 2**31 * S  # year 2038
PERIOD = 100 * MS
ROUNDS = 8

# derandomize: CI runs the same examples every time
RECOVERY = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _make(policy: str, n: int, queue: int, max_interval_s: float, timeouts: list[float | None]):
    if policy == "approx":
        return ApproximateTimeSynchronizer(n, queue, max_interval_s=max_interval_s, input_timeouts_s=timeouts)
    return ExactTimeSynchronizer(n, queue, input_timeouts_s=timeouts)


@st.composite
def hostile_then_valid(draw):
    n = draw(st.integers(2, 3))
    policy = draw(st.sampled_from(["approx", "exact"]))
    # queue 1 with three inputs can stall even a fresh synchroniser, whatever the history
    queue = draw(st.integers(1 if n == 2 else 2, 6))
    timeouts = draw(st.lists(st.sampled_from([None, 0.15, 0.3]), min_size=n, max_size=n))
    max_interval_s = draw(st.sampled_from([math.inf, 0.05]))
    stamp = st.one_of(
        st.just(FAR), st.integers(0, 5).map(lambda s: FAR + s * S), st.just(0),
        st.integers(0, 20_000).map(lambda ms: ms * MS),
    )
    now = 0
    events: list[tuple[str, int, int, int]] = []  # (kind, input, stamp, arrival)
    for k, s, gap in draw(st.lists(st.tuples(st.integers(0, n - 1), stamp, st.integers(0, 200)), max_size=15)):
        now += gap * MS
        events.append(("prefix", k, s, now))
    base = draw(st.sampled_from([0, 5 * S, 10 * S, 30 * S, FAR + 10 * S])) + draw(st.integers(0, 999)) * MS
    offsets = [0 if policy == "exact" else draw(st.integers(0, 20)) * MS for _ in range(n)]
    for r in range(ROUNDS):
        for k in draw(st.permutations(range(n))):
            now += draw(st.integers(1, 30)) * MS
            events.append(("valid", k, base + r * PERIOD + offsets[k], now))
        now += 10 * MS
        events.append(("poll", -1, 0, now))
    return (policy, n, queue, max_interval_s, timeouts), events


def _run(config, events, *, with_prefix: bool):
    sync = _make(*config)
    out = []
    for kind, k, stamp, now in events:
        if kind == "prefix" and not with_prefix:
            continue
        out += sync.poll(now) if kind == "poll" else sync.add(k, stamp, (kind, k, stamp), now_ns=now)
        check_accounting(sync)
    return sync, out


@RECOVERY
@given(hostile_then_valid())
def test_valid_input_yields_output_again_whatever_came_before(case) -> None:
    config, events = case
    logging.disable(logging.WARNING)
    try:
        _, fresh = _run(config, events, with_prefix=False)
        sync, out = _run(config, events, with_prefix=True)
    finally:
        logging.disable(logging.NOTSET)
    valid = [s for s in out if all(m is not None and m[0] == "valid" for m in s.messages)]
    # it keeps up: at most 2 sets fewer than a synchroniser that never saw the prefix (measured: 0-2)
    assert len(valid) >= len(fresh) - 2, (len(valid), len(fresh))
    if len(fresh) > 2:  # (queue 1 without timeouts can stall after a set or two even fresh)
        assert valid, "no set of valid messages after the hostile prefix"
        # and it comes out quickly: the first valid set is newer than the first valid round by at most
        # one sync timeout (the largest configured; none: 0) plus one period, in message time (stamps),
        # or no later than the fresh synchroniser's first set
        n, timeouts = config[1], config[4]
        first_round = max([stamp for kind, _, stamp, _ in events if kind == "valid"][:n])
        tau_ns = int(max((t for t in timeouts if t is not None), default=0.0) * S)
        newest = max(t for t in valid[0].stamps_ns if t is not None)
        fresh_newest = max(t for t in fresh[0].stamps_ns if t is not None)
        assert newest <= max(first_round + tau_ns + PERIOD, fresh_newest), (newest - first_round) / MS
    # no set mixes a valid message with the timeline that was left
    for s in out:
        if any(m is not None and m[0] == "valid" for m in s.messages):
            stamps = [t for t in s.stamps_ns if t is not None]
            assert max(stamps) - min(stamps) < FAR // 2


@pytest.mark.parametrize("first_future_input", [0, 1])
def test_occupancy_node_configuration_recovers_within_one_timeout(first_future_input: int) -> None:
    """The occupancy grid's synchroniser (raw + obstacle, queue 5, 50 ms, obstacle timeout 0.3 s): one
    far-future stamp on either input, then 10 Hz valid pairs: a set of valid messages comes out before
    0.3 s of valid input have passed."""
    sync = ApproximateTimeSynchronizer(2, 5, max_interval_s=0.05, input_timeouts_s=[None, 0.3])
    now = 0
    sync.add(first_future_input, FAR, "far", now_ns=now)
    got = []
    for r in range(10):
        now = r * PERIOD + 10 * MS
        got += [(now, s) for s in sync.add(0, r * PERIOD, "raw", now_ns=now)]
        now += 30 * MS
        got += [(now, s) for s in sync.add(1, r * PERIOD, "obstacle", now_ns=now)]
        got += [(now, s) for s in sync.poll(now + 10 * MS)]
    complete = [(t, s) for t, s in got if s.complete]
    assert complete and complete[0][0] <= 300 * MS
    assert all("far" not in s.messages for _, s in got)
    check_accounting(sync)
