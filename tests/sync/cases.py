"""Expected behaviour of ROS ``message_filters`` as data, plus the helpers the sync tests share.

The cases restate the public C++ test suites of ros2/message_filters (snapshot 361e42c7), as recorded in
``/work/shared/docs/time-sync-cases.md`` §3.1 and §3.3. Stamps are integer nanoseconds; ``S`` is one
second. An input is ``(stamp_ns, topic)`` in arrival order; an expected output is the tuple of stamps,
topic k at position k, in emission order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

S = 1_000_000_000
MS = 1_000_000


@dataclass(frozen=True)
class ApproxCase:
    name: str
    n_inputs: int
    queue_size: int
    inputs: tuple[tuple[int, int], ...]
    expected: tuple[tuple[int, ...], ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Index (into ``inputs``) of the arrival that emits each expected set, where the source states it.
    emitted_at: tuple[int, ...] | None = None


def _seq(*pairs: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    return tuple(pairs)


_DROPPED_INPUTS = _seq(
    (0 * S, 0), (1 * S, 1), (3 * S, 1), (4 * S, 0), (7 * S, 1),
    (8 * S, 0), (10 * S, 0), (11 * S, 1), (13 * S, 0), (14 * S, 1),
)
_RATE_INPUTS = _seq((0 * S, 0), (1 * S, 1), (3 * S, 0), (4 * S, 1), (6 * S, 0), (7 * S, 1))

APPROXIMATE_TIME_CASES: tuple[ApproxCase, ...] = (
    ApproxCase(
        "ExactMatch", 2, 10,
        _seq((0 * S, 0), (0 * S, 1), (3 * S, 0), (3 * S, 1), (6 * S, 0), (6 * S, 1)),
        ((0 * S, 0 * S), (3 * S, 3 * S), (6 * S, 6 * S)),
    ),
    ApproxCase(
        "PerfectMatch", 2, 10,
        _seq((0 * S, 0), (1 * S, 1), (3 * S, 0), (4 * S, 1), (6 * S, 0), (7 * S, 1)),
        ((0 * S, 1 * S), (3 * S, 4 * S)),
    ),
    ApproxCase(
        "ImperfectMatch", 2, 10,
        _seq((0 * S, 0), (1 * S, 1), (2 * S, 0), (3 * S, 0), (5 * S, 1), (6 * S, 0), (7 * S, 1)),
        ((0 * S, 1 * S), (6 * S, 5 * S)),
    ),
    ApproxCase(
        "Acceleration", 2, 10,
        _seq((0 * S, 0), (7 * S, 1), (12 * S, 0), (15 * S, 1), (17 * S, 0), (18 * S, 1)),
        ((12 * S, 7 * S), (17 * S, 18 * S)),
    ),
    ApproxCase(
        "DroppedMessages_q1", 2, 1, _DROPPED_INPUTS,
        ((4 * S, 3 * S), (10 * S, 11 * S)),
    ),
    ApproxCase(
        "DroppedMessages_q2", 2, 2, _DROPPED_INPUTS,
        ((0 * S, 1 * S), (4 * S, 3 * S), (8 * S, 7 * S), (10 * S, 11 * S)),
    ),
    ApproxCase(
        "LongQueue", 2, 5,
        _seq(
            (0 * S, 0), (1 * S, 0), (2 * S, 0), (3 * S, 0), (4 * S, 0), (5 * S, 0), (6 * S, 0),
            (7 * S, 0), (8 * S, 0), (3 * S, 1), (9 * S, 0), (10 * S, 0), (11 * S, 0), (12 * S, 0),
            (10 * S, 1), (13 * S, 0),
        ),
        ((10 * S, 10 * S),),
    ),
    ApproxCase(
        "DoublePublish", 2, 10,
        _seq((0 * S, 0), (1 * S, 1), (3 * S, 1), (3 * S, 0)),
        ((0 * S, 1 * S), (3 * S, 3 * S)),
        emitted_at=(3, 3),
    ),
    ApproxCase(
        "FourTopics", 4, 10,
        _seq(
            (0 * S, 0), (1 * S, 1), (2 * S, 2), (3 * S, 3), (5 * S, 0), (5 * S, 3), (6 * S, 1),
            (6 * S, 2), (8 * S, 0), (9 * S, 1), (10 * S, 2), (11 * S, 3), (10 * S, 0), (13 * S, 0),
            (14 * S, 1),
        ),
        ((0 * S, 1 * S, 2 * S, 3 * S), (5 * S, 6 * S, 6 * S, 5 * S), (10 * S, 9 * S, 10 * S, 11 * S)),
    ),
    ApproxCase(
        "EarlyPublish", 4, 10,
        _seq((0 * S, 0), (1 * S, 1), (2 * S, 2), (3 * S, 3), (7 * S, 0)),
        ((0 * S, 1 * S, 2 * S, 3 * S),),
        emitted_at=(4,),
    ),
    ApproxCase(
        "RateBound_1.5s", 2, 10, _RATE_INPUTS,
        ((0 * S, 1 * S), (3 * S, 4 * S)),
        kwargs={"inter_message_lower_bounds_s": [1.5, 0.0]},
    ),
    ApproxCase(
        "RateBound_2.0s", 2, 10, _RATE_INPUTS,
        ((0 * S, 1 * S), (3 * S, 4 * S), (6 * S, 7 * S)),
        kwargs={"inter_message_lower_bounds_s": [2.0, 0.0]},
    ),
)


def check_accounting(sync: Any) -> None:
    """Every message offered is emitted, dropped, or still pending — never lost or duplicated."""
    pending = sync.pending
    for k in range(sync.n_inputs):
        assert sync.received[k] == sync.used[k] + sync.dropped[k] + pending[k], k
        assert sync.dropped[k] == sum(v[k] for v in sync.dropped_by_reason.values()), k


@dataclass(frozen=True, order=True)
class Arrival:
    """A message reaching the synchroniser at ``now_ns`` (the caller's clock) with header ``stamp_ns``."""

    now_ns: int
    topic: int
    stamp_ns: int


def replay(
    sync: Any,
    arrivals: list[Arrival],
    *,
    poll_period_ns: int | None = None,
    until_ns: int | None = None,
    check: bool = True,
) -> list[tuple[int, Any]]:
    """Feed ``arrivals`` (sorted by arrival time) like a live node: ``add`` per message and, if
    ``poll_period_ns`` is given, a timer calling ``poll`` at multiples of it, up to ``until_ns``.
    Returns ``(time returned, set)`` pairs; each message payload is ``(topic, stamp_ns)``."""
    arrivals = sorted(arrivals)
    end = until_ns if until_ns is not None else (arrivals[-1].now_ns if arrivals else 0)
    out: list[tuple[int, Any]] = []
    polls: list[int] = []
    if poll_period_ns is not None and arrivals:
        # The timer ticks at multiples of the period; ticks before the first message have no effect.
        first = -(-arrivals[0].now_ns // poll_period_ns) * poll_period_ns
        polls = list(range(first, end + 1, poll_period_ns))
    events = [(a.now_ns, 0, a) for a in arrivals] + [(t, 1, None) for t in polls]
    events.sort(key=lambda e: (e[0], e[1]))
    for now, kind, a in events:
        if kind == 0:
            got = sync.add(a.topic, a.stamp_ns, (a.topic, a.stamp_ns), now_ns=now)
        else:
            got = sync.poll(now)
        out += [(now, s) for s in got]
        if check:
            check_accounting(sync)
    if until_ns is not None and poll_period_ns is None:
        out += [(until_ns, s) for s in sync.poll(until_ns)]
    return out


def stamps_ms(sets: list[tuple[int, Any]]) -> list[tuple[int | None, ...]]:
    return [tuple(None if v is None else v // MS for v in s.stamps_ns) for _, s in sets]
