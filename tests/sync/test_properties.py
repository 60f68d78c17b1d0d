"""Property tests: the guarantees promised by the ApproximateTime algorithm (wiki.ros.org/message_filters/
ApproximateTime) and by the timeout extension, checked on random inputs with hypothesis.

Payloads are ``(topic, index on that topic)`` so each emitted message can be traced back.
"""

from __future__ import annotations

import math
from itertools import accumulate

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from perception_nodes.sync import ApproximateTimeSynchronizer, DropReason, ExactTimeSynchronizer, SyncedSet

from .cases import MS, check_accounting

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (stamp_ns, topic, index on topic) in arrival order
Seq = list[tuple[int, int, int]]


@st.composite
def topic_stamps(draw, n: int, max_msgs: int = 10, min_gap: int = 0) -> list[list[int]]:
    topics = []
    for _ in range(n):
        start = draw(st.integers(0, 30))
        gaps = draw(st.lists(st.integers(min_gap, 25), max_size=max_msgs - 1))
        silent = draw(st.integers(0, 7)) == 0  # sometimes a topic never sends
        topics.append([] if silent else [s * MS for s in accumulate([start, *gaps])])
    return topics


def interleave(draw, topics: list[list[int]]) -> Seq:
    labels = draw(st.permutations([k for k, s in enumerate(topics) for _ in s]))
    seen = [0] * len(topics)
    seq = []
    for k in labels:
        seq.append((topics[k][seen[k]], k, seen[k]))
        seen[k] += 1
    return seq


@st.composite
def approx_runs(draw):
    n = draw(st.integers(2, 4))
    topics = draw(topic_stamps(n))
    seq = interleave(draw, topics)
    kwargs = dict(
        age_penalty=draw(st.sampled_from([0.0, 0.1, 0.5, 2.0])),
        max_interval_s=draw(st.sampled_from([math.inf, 0.004, 0.015])),
        inter_message_lower_bounds_s=draw(
            st.one_of(st.none(), st.lists(st.sampled_from([0.0, 0.003, 0.02]), min_size=n, max_size=n))
        ),
    )
    return n, draw(st.integers(1, 8)), kwargs, seq


def run(sync, seq: Seq) -> list[SyncedSet]:
    out: list[SyncedSet] = []
    for stamp, topic, idx in seq:
        out += sync.add(topic, stamp, (topic, idx))
        check_accounting(sync)
    return out


def check_sets(out: list[SyncedSet], n: int, stamp_of: dict[tuple[int, int], int]) -> None:
    """Each message used once, per-topic order kept (so sets never cross), slots consistent."""
    used = set()
    last_idx = [-1] * n
    floor = [None] * n  # newest stamp of any set emitted without topic k
    for s in out:
        assert len(s.messages) == len(s.stamps_ns) == n
        assert s.missing == tuple(k for k in range(n) if s.messages[k] is None)
        assert len(s.missing) < n
        for k, (msg, stamp) in enumerate(zip(s.messages, s.stamps_ns)):
            if msg is None:
                assert stamp is None
                continue
            topic, idx = msg
            assert topic == k and stamp_of[msg] == stamp
            assert msg not in used
            used.add(msg)
            assert idx > last_idx[k]
            last_idx[k] = idx
            if floor[k] is not None:
                assert stamp > floor[k]
        newest = max(st for st in s.stamps_ns if st is not None)
        for k in s.missing:
            floor[k] = newest if floor[k] is None else max(floor[k], newest)


@SETTINGS
@given(approx_runs())
def test_approximate_time_guarantees(params) -> None:
    n, queue_size, kwargs, seq = params
    sync = ApproximateTimeSynchronizer(n, queue_size, **kwargs)
    out = run(sync, seq)
    check_sets(out, n, {(t, i): s for s, t, i in seq})
    for s in out:
        assert s.complete
        assert max(s.stamps_ns) - min(s.stamps_ns) <= kwargs["max_interval_s"] * 1e9
    assert sync.omitted == [0] * n
    # Output depends only on the stamps: other payloads, same sets.
    again = ApproximateTimeSynchronizer(n, queue_size, **kwargs)
    out2 = []
    for stamp, topic, idx in seq:
        out2 += again.add(topic, stamp, object())
    assert [s.stamps_ns for s in out2] == [s.stamps_ns for s in out]


@st.composite
def two_interleavings(draw):
    n = draw(st.integers(2, 4))
    topics = draw(topic_stamps(n, min_gap=1))
    a, b = interleave(draw, topics), interleave(draw, topics)
    # Lower bounds valid for the data (at most the smallest gap), so virtual proofs are sound.
    bounds = []
    for s in topics:
        gaps = [y - x for x, y in zip(s, s[1:])]
        bounds.append(draw(st.sampled_from([0, min(gaps)])) / 1e9 if gaps else 0.0)
    age_penalty = draw(st.sampled_from([0.0, 0.1, 1.0]))
    max_interval_s = draw(st.sampled_from([math.inf, 0.01]))
    return n, a, b, dict(age_penalty=age_penalty, max_interval_s=max_interval_s,
                         inter_message_lower_bounds_s=bounds)


@SETTINGS
@given(two_interleavings())
def test_output_does_not_depend_on_arrival_order_across_topics(params) -> None:
    """With queues that never overflow, two arrival orders (each keeping per-topic order) emit the same
    sets; only how many are proven by the end of the input may differ (one is a prefix of the other)."""
    n, a, b, kwargs = params
    outs = []
    for seq in (a, b):
        sync = ApproximateTimeSynchronizer(n, len(seq) + 1, **kwargs)
        outs.append([tuple(m for m in s.messages) for s in run(sync, seq)])
    short, long_ = sorted(outs, key=len)
    assert long_[: len(short)] == short


@st.composite
def timed_runs(draw):
    """Periodic streams on a shared grid (so ExactTime matches happen) with per-topic offset and stamp
    jitter, latency jitter (so per-topic reordering happens), silent spells (dead, then maybe back),
    lost messages, timeouts, and a random set of timer ticks."""
    n = draw(st.integers(2, 3))
    policy = draw(st.sampled_from(["approx", "exact"]))
    period = draw(st.integers(20, 50))
    count = draw(st.integers(1, 14))
    arrivals = []
    for k in range(n):
        offset = 0 if policy == "exact" else draw(st.integers(0, 15))
        lat_lo, lat_jitter = draw(st.integers(0, 80)), draw(st.integers(0, 30))
        silent_from = draw(st.integers(0, count))
        silent_to = draw(st.integers(silent_from, count))
        lost = draw(st.sets(st.integers(0, count - 1), max_size=3))
        for idx in range(count):
            if silent_from <= idx < silent_to or idx in lost:
                continue
            jitter = 0 if policy == "exact" else draw(st.integers(0, 5))
            stamp = (idx * period + offset + jitter) * MS
            arrivals.append((stamp + (lat_lo + draw(st.integers(0, lat_jitter))) * MS, k, stamp, idx))
    arrivals.sort()
    timeouts = draw(st.lists(st.one_of(st.none(), st.integers(5, 150).map(lambda x: x / 1000)),
                             min_size=n, max_size=n))
    end = (arrivals[-1][0] if arrivals else 0) + 1000 * MS
    polls = sorted(draw(st.lists(st.integers(0, end), max_size=20)))
    return n, draw(st.integers(1, 6)), policy, timeouts, arrivals, polls, end


def run_timed(policy: str, n: int, queue_size: int, timeouts, arrivals, polls, end):
    sync = (ApproximateTimeSynchronizer(n, queue_size, input_timeouts_s=timeouts) if policy == "approx"
            else ExactTimeSynchronizer(n, queue_size, input_timeouts_s=timeouts))
    events = [(now, 0, (k, stamp, idx)) for now, k, stamp, idx in arrivals] + [(t, 1, None) for t in polls]
    events.sort(key=lambda e: (e[0], e[1]))
    out = []
    for now, kind, payload in events:
        if kind == 0:
            k, stamp, idx = payload
            out += sync.add(k, stamp, (k, idx), now_ns=now)
        else:
            out += sync.poll(now)
        check_accounting(sync)
    out += sync.poll(end)
    check_accounting(sync)
    return sync, out


@SETTINGS
@given(timed_runs())
def test_timeout_guarantees_and_poll_independence(params) -> None:
    n, queue_size, policy, timeouts, arrivals, polls, end = params
    sync, out = run_timed(policy, n, queue_size, timeouts, arrivals, polls, end)
    check_sets(out, n, {(k, idx): stamp for _, k, stamp, idx in arrivals})
    assert sync.omitted == [sum(k in s.missing for s in out) for k in range(n)]
    event(f"{policy}: sets with a missing input: {'yes' if any(sync.omitted) else 'no'}")
    for reason, counts in sync.dropped_by_reason.items():
        if any(counts):
            event(f"{policy}: drops {reason.value}")
    assert sync.sets_emitted == len(out)
    if all(t is not None for t in timeouts):
        # Nothing is held forever when every input has a timeout: the final poll, 1 s after the last
        # arrival, releases or discards every message.
        assert sync.pending == (0,) * n
    # Determinism: the timer ticks change when sets come out, never which ones.
    _, without_polls = run_timed(policy, n, queue_size, timeouts, arrivals, [], end)
    assert [(s.stamps_ns, s.missing) for s in without_polls] == [(s.stamps_ns, s.missing) for s in out]


@st.composite
def live_but_slow(draw):
    """n periodic inputs with different rates, stamp offsets, arbitrary latencies (an input may lag the
    others by up to 200 ms) and arrival jitter below the period, all alive over the same 1.5 s; each
    τ_i just above input i's largest inter-arrival gap (and its start-up lag behind the first input).
    The run stops at the first input's last message: after that, that input is dead, not slow."""
    n = draw(st.integers(2, 4))
    periods = [draw(st.integers(20, 150)) for _ in range(n)]
    arrivals = []
    for k in range(n):
        offset, latency = draw(st.integers(0, 80)), draw(st.integers(0, 200))
        jitter = draw(st.integers(0, periods[k] - 1))
        for idx in range(1500 // periods[k] + 1):
            stamp = (idx * periods[k] + offset) * MS
            arrivals.append((stamp + (latency + draw(st.integers(0, jitter))) * MS, k, stamp, idx))
    arrivals.sort()
    times = [[a[0] for a in arrivals if a[1] == k] for k in range(n)]
    stop = min(t[-1] for t in times)
    first = min(t[0] for t in times)
    timeouts = []
    for k in range(n):
        gap = max(b - a for a, b in zip(times[k], times[k][1:]))
        timeouts.append((max(gap, times[k][0] - first) + 1) / 1e9)
    return n, timeouts, [a for a in arrivals if a[0] <= stop]


@SETTINGS
@given(live_but_slow(), st.sampled_from(["approx", "exact"]))
def test_inputs_arriving_within_their_timeout_are_never_omitted(params, policy) -> None:
    """The sizing rule: an input whose messages arrive less than τ_i apart is never timed out, however
    much it lags the others; the timeouts then change nothing at all."""
    n, timeouts, arrivals = params
    queue_size = len(arrivals) + 1
    end = arrivals[-1][0]
    timed, out = run_timed(policy, n, queue_size, timeouts, arrivals, [], end)
    assert timed.omitted == [0] * n
    plain, plain_out = run_timed(policy, n, queue_size, [None] * n, arrivals, [], end)
    assert [s.messages for s in out] == [s.messages for s in plain_out]


@st.composite
def one_input_dead(draw):
    """One input never sends (timeout τ); the others are periodic from the start, with queues that may
    be far shorter than τ (1-6 messages at 20-60 ms)."""
    policy = draw(st.sampled_from(["approx", "exact"]))
    n = draw(st.integers(2, 3))
    dead = draw(st.integers(0, n - 1))
    period, count = draw(st.integers(20, 60)), draw(st.integers(3, 20))
    arrivals = []
    for k in range(n):
        if k == dead:
            continue
        offset = 0 if policy == "exact" else draw(st.integers(0, 15))
        latency = draw(st.integers(0, 40))
        arrivals += [((idx * period + offset + latency) * MS, k, (idx * period + offset) * MS, idx) for idx in range(count)]
    arrivals.sort()
    timeouts: list[float | None] = [None] * n
    timeouts[dead] = draw(st.integers(10, 400)) / 1000
    return policy, n, dead, draw(st.integers(1, 6)), timeouts, arrivals


@SETTINGS
@given(one_input_dead())
def test_a_dead_input_is_absent_within_its_timeout_however_short_the_queues(params) -> None:
    """τ after the first message that waits for it, the dead input is absent, whatever overflowed in
    between (each overflow once pushed the deadline back: a dead input was never declared absent while a
    short queue kept overflowing). With one live input left, every message it sends after that point comes
    out (an overflow once made the lone input drop all of them as UNMATCHED)."""
    policy, n, dead, queue_size, timeouts, arrivals = params
    sync = (ApproximateTimeSynchronizer(n, queue_size, input_timeouts_s=timeouts) if policy == "approx"
            else ExactTimeSynchronizer(n, queue_size, input_timeouts_s=timeouts))
    due = arrivals[0][0] + round(timeouts[dead] * 1e9)
    out, checked = [], False
    for now, k, stamp, idx in arrivals:
        if not checked and now >= due:
            out += sync.poll(due)
            checked = True
            assert sync.absent[dead], (policy, due, sync.dropped_by_reason)
        out += sync.add(k, stamp, (k, idx), now_ns=now)
        check_accounting(sync)
    out += sync.poll(arrivals[-1][0] + 2 * round(timeouts[dead] * 1e9))
    assert sync.absent[dead] and all(dead in s.missing for s in out)
    if n == 2:
        live = 1 - dead
        emitted = {s.messages[live] for s in out}
        assert all((live, idx) in emitted for now, k, _, idx in arrivals if now > due)
        assert sync.dropped_by_reason[DropReason.UNMATCHED][live] == 0
