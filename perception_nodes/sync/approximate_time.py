"""Time synchronisers: ROS message_filters' ApproximateTime and ExactTime policies, without rclpy.

Why this module exists
----------------------
Camera+LiDAR fusion needs sets of messages taken at (nearly) the same time. ROS 2 offers
``message_filters``, but (1) its Python ``ApproximateTimeSynchronizer`` is a different, slop-based
algorithm from the C++ policy everybody benchmarks against, (2) it calls callbacks from inside rclpy, so
offline bag replay cannot reuse it, and (3) when one sensor dies the C++ policy stalls every other input
forever (field notes §1, pain point 4). This module is a ROS-agnostic re-implementation of the C++
``ApproximateTime`` policy (the Mangelson/Blaise algorithm) and of ``ExactTime``, which

* *return* the emitted sets instead of calling callbacks, so a live node (dispatching from a subscription
  callback and a timer) and an offline replay (dispatching per bag message) run the same code;
* take stamps as integer nanoseconds, so there is no float rounding in the matching;
* add optional **per-input timeouts**, driven by a ``now`` supplied by the caller, so a dead input is
  declared *absent* and the other inputs keep flowing (the set carries ``None`` in its slot).

With no timeouts configured and per-input stamps that never go back, :class:`ApproximateTimeSynchronizer`
reproduces the C++ policy's outputs (the ``message_filters`` test cases are encoded in ``tests/sync``).

Stamps that go back on one input (the deliberate difference from C++)
---------------------------------------------------------------------
C++ keeps such a message in its queue and warns once; the algorithm then works on an unsorted queue and
may emit crossing sets, and recovers only when queue overflow has pushed the odd message out (after
about ``queue_size + 1`` messages). Here, when input ``i`` receives stamp ``s`` older than its previous
accepted stamp:

1. messages of input ``i`` still held with a stamp newer than ``s`` are discarded (``SUPERSEDED``): they
   belong to a timeline the input has left (a bogus far-future stamp, a reordered message), and a
   held message never blocks the input again; the current candidate search restarts;
2. if ``s`` is then still older than a stamp of input ``i`` already *emitted*, the message is dropped
   (``OUT_OF_ORDER``, warned once), so a single reordered message never produces crossing sets;
3. but a second message in a row that is again behind the emitted history, and not older than the
   first one, means the input's clock went back (bag loop, sensor clock reset, the far-future stamp was
   emitted): a **time jump** of input ``i`` (``time_jumps[i]``). Its ordering history is forgotten, as
   are the ``LATE`` floors of every input at or above ``s`` (sets emitted on the abandoned timeline),
   and the message is accepted.

So whatever came before, an input that sends valid stamps again is matched from its first or second
valid message on; only sets emitted across a time jump may cross.

Per-input timeouts (``input_timeouts_s[i] = τ_i``; ``None`` = wait forever, the C++ behaviour)
-----------------------------------------------------------------------------------------------
Every accepted message is stamped with its *arrival time* ``now_ns`` (the caller's clock:
``time.monotonic_ns`` or the ROS clock live, the bag receive time in replay). Input ``i`` is *starving*
the synchroniser when the search needs its next message (ApproximateTime: ``i`` has no unconsidered
message queued; ExactTime: a partial set newer than ``i``'s last stamp lacks it) while another active
input holds a message. Its deadline is ``max(arrival of i's last accepted message, arrival of the oldest
message held by the other active inputs) + τ_i`` (a message those inputs lost to overflow while they
waited counts as held, so a queue shorter than ``τ_i`` does not push the deadline back): input ``i`` has then been silent for ``τ_i`` while somebody was waiting for it. At the deadline (applied at exactly that instant):

1. ApproximateTime, if a candidate set is held only until the next message can prove it optimal:
   that proof is waived (``i``'s next message is taken to never come) and the candidate is emitted,
   ``i``'s message included;
2. otherwise ``i`` is declared **absent**: matching proceeds over the remaining inputs, and every set
   emitted while ``i`` is absent has ``None`` in slot ``i``, lists ``i`` in ``missing`` and counts in
   ``omitted[i]``. An absent input never delays the others again.

Input ``i`` *rejoins* as soon as one of its messages arrives. A message whose stamp is not newer than
every stamp of every set emitted without it belonged to sets already emitted and is dropped as
``LATE``, but the input is active again all the same: the next sets wait for it (for at most ``τ_i``),
so an input whose messages always arrive after the others' comes back instead of staying absent. Timeouts due at or before a call's ``now`` are applied, in deadline order, before that call's
message is inserted, so the emitted sets depend only on the sequence of (input, stamp, arrival time):
how often a live node calls :meth:`poll` changes *when* a set is returned, never *which* sets, and a
replay that feeds the recorded arrival times reproduces a live run.

Sizing: an input whose consecutive accepted messages always arrive less than ``τ_i`` apart is never
timed out, however late its messages are relative to the others (it is slow, not dead). So choose
``τ_i`` above input ``i``'s largest inter-arrival gap (period + arrival jitter, e.g. 1.5–2 × period).
A dead input holds any other message back by at most ``τ_i``, and only until it is declared absent.

Usage (live node; a replay calls ``add`` with the recorded receive time and ``poll`` once at the end)::

    sync = ApproximateTimeSynchronizer(2, 10, input_timeouts_s=[None, 0.2])  # LiDAR, camera
    def on_message(k, msg):                                 # subscription callback of input k
        for synced in sync.add(k, stamp_to_ns(msg.header.stamp), msg, now_ns=clock_ns()):
            dispatch(synced)                                # synced.missing == (1,) if camera absent
    def on_timer():                                         # e.g. every 20 ms
        for synced in sync.poll(clock_ns()):
            dispatch(synced)

The synchronisers are not thread-safe: call them from one thread (rclpy's single-threaded executor)
or under a lock.

Accounting: for every input ``received[i] == used[i] + dropped[i] + pending[i]`` at all times (also
across :meth:`reset`, whose discarded messages count as ``RESET``); ``dropped_by_reason`` splits
``dropped`` by :class:`DropReason`.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import Any, Sequence

__all__ = [
    "ApproximateTimeSynchronizer",
    "DropReason",
    "ExactTimeSynchronizer",
    "SyncedSet",
]

_log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0
"""Repeated synchroniser events (timeout, rejoin, time jump) are logged at most this often per input."""

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SyncedSet:
    """One emitted set: slot ``k`` holds input ``k``'s message, or ``None`` when input ``k`` has none
    (it had been declared absent by its timeout).

    ``stamps_ns`` repeats the stamps the caller gave to :meth:`add`, so consumers (latency accounting,
    ``header.stamp`` of fused outputs) need not know the message type. ``missing`` lists the absent
    slots in increasing order; it is empty for a complete set (always, when no timeouts are set).
    """

    messages: tuple[Any | None, ...]
    stamps_ns: tuple[int | None, ...]
    missing: tuple[int, ...]

    @property
    def complete(self) -> bool:
        """True when every input contributed a message."""
        return not self.missing


class DropReason(str, Enum):
    """Why a message was discarded without being emitted (keys of ``dropped_by_reason``)."""

    OVERFLOW = "overflow"
    """The input's queue exceeded ``queue_size``; its oldest message went (C++ behaviour)."""
    OUT_OF_ORDER = "out_of_order"
    """Stamp older than a stamp of the same input already emitted (a single step back: module doc)."""
    SUPERSEDED = "superseded"
    """Held, then a message with an older stamp arrived on the same input (its timeline was left)."""
    RESET = "reset"
    """Held when :meth:`reset` was called (e.g. the node saw its clock jump back)."""
    LATE = "late"
    """Stamp not newer than a set already emitted without this input, or (ExactTime) than the last set."""
    UNMATCHED = "unmatched"
    """The search proved that no acceptable set can contain it (a better set was found, or the gap to
    the other inputs exceeds ``max_interval_s``)."""
    REPLACED = "replaced"
    """ExactTime only: a second message with the same stamp on the same input replaced it."""


class _Entry:
    """A queued message with the stamp and arrival time the caller gave for it."""

    __slots__ = ("stamp", "msg", "arrival")

    def __init__(self, stamp: int, msg: Any, arrival: int | None) -> None:
        self.stamp = stamp
        self.msg = msg
        self.arrival = arrival


def _seconds_to_ns(value: float, what: str) -> int:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite, non-negative number of seconds, got {value!r}")
    return round(value * _NS_PER_S)


class _SyncBase:
    """State and bookkeeping shared by both policies: validation, clock, ordering, absence, counters.

    Subclasses implement the matching itself through ``_insert``, ``_deadlines``, ``_fire``,
    ``_before_rejoin`` and ``_pending_counts``.
    """

    def __init__(
        self,
        n_inputs: int,
        queue_size: int,
        input_timeouts_s: Sequence[float | None] | None,
        names: Sequence[str] | None = None,
    ) -> None:
        if operator.index(n_inputs) < 1:
            raise ValueError(f"n_inputs must be >= 1, got {n_inputs}")
        if operator.index(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._n = int(n_inputs)
        self._queue_size = int(queue_size)
        if input_timeouts_s is None:
            input_timeouts_s = [None] * self._n
        if len(input_timeouts_s) != self._n:
            raise ValueError(
                f"input_timeouts_s has {len(input_timeouts_s)} entries for {self._n} inputs"
            )
        self._timeouts_ns: list[int | None] = [
            None if t is None else _seconds_to_ns(float(t), f"input_timeouts_s[{k}]")
            for k, t in enumerate(input_timeouts_s)
        ]
        self._uses_clock = any(t is not None for t in self._timeouts_ns)
        if names is not None and len(names) != self._n:
            raise ValueError(f"names has {len(names)} entries for {self._n} inputs")
        # How log lines name an input: by its topic when the caller gives names, else by index.
        self._labels = [f"input {k}" if names is None else f"input {k} ({names[k]})" for k in range(self._n)]
        # Repeated events (timeouts, rejoins, time jumps) are logged at most once per
        # LOG_INTERVAL_S per input and kind: (input, kind) -> (monotonic time of last log, suppressed).
        self._log_state: dict[tuple[int, str], tuple[float, int]] = {}
        self._now: int | None = None
        self._active = [True] * self._n
        self._last_stamp: list[int | None] = [None] * self._n
        self._last_arrival: list[int | None] = [None] * self._n
        # Stamps <= _floor[i] are LATE for input i (sets already emitted without it).
        self._floor: list[int | None] = [None] * self._n
        # Newest stamp of input i emitted in a set (older ones would cross it).
        self._emitted_max: list[int | None] = [None] * self._n
        # Stamp of input i's previous message when that one was dropped OUT_OF_ORDER, else None.
        self._backstep: list[int | None] = [None] * self._n
        self._out: list[SyncedSet] = []
        self._warned: set[tuple[int, str]] = set()

        self.received: list[int] = [0] * self._n
        """Messages passed to :meth:`add`, per input."""
        self.used: list[int] = [0] * self._n
        """Messages emitted inside a set, per input."""
        self.dropped: list[int] = [0] * self._n
        """Messages discarded without being emitted, per input (all reasons)."""
        self.dropped_by_reason: dict[DropReason, list[int]] = {r: [0] * self._n for r in DropReason}
        """``dropped`` split by reason."""
        self.omitted: list[int] = [0] * self._n
        """Sets emitted with this input absent (``None`` in its slot)."""
        self.sets_emitted: int = 0
        """Total number of sets emitted."""
        self.time_jumps: list[int] = [0] * self._n
        """Per input: how often its stamps jumped back for good (module doc, "Stamps that go back")."""

    # ------------------------------------------------------------------ public API

    @property
    def n_inputs(self) -> int:
        return self._n

    @property
    def queue_size(self) -> int:
        return self._queue_size

    @property
    def absent(self) -> tuple[bool, ...]:
        """Per input: currently declared absent by its timeout (sets are emitted without it)."""
        return tuple(not a for a in self._active)

    @property
    def pending(self) -> tuple[int, ...]:
        """Per input: messages held, neither emitted nor dropped yet."""
        return tuple(self._pending_counts())

    def add(self, index: int, stamp_ns: int, msg: Any, now_ns: int | None = None) -> list[SyncedSet]:
        """Offer ``msg`` (header stamp ``stamp_ns``) on input ``index``; return the sets this completes.

        ``now_ns`` is the message's arrival time on the caller's clock. It is required when any input
        timeout is configured (it drives them) and otherwise only recorded. Timeouts due at or before
        ``now_ns`` take effect before the message is inserted. Sets are returned oldest first.
        """
        i = self._check_index(index)
        stamp = operator.index(stamp_ns)
        now = self._advance(now_ns, required=self._uses_clock)
        self.received[i] += 1
        last = self._last_stamp[i]
        if last is not None and stamp < last:
            last = self._step_back(i, stamp)
        floor = self._floor[i]
        if last is not None and stamp < last:
            self._backstep[i] = stamp
            self._drop(i, DropReason.OUT_OF_ORDER)
            self._warn_once(
                i,
                "order",
                "%s: stamp %d ns is older than stamp %d ns already emitted; dropped (counted in "
                "dropped_by_reason[OUT_OF_ORDER], warning once per input)",
                                stamp,
                last,
            )
        elif floor is not None and stamp <= floor:
            self._backstep[i] = None
            self._drop(i, DropReason.LATE)
            self._warn_once(
                i,
                "late",
                "%s: stamp %d ns belongs to a set already emitted without it (<= %d ns); dropped "
                "(counted in dropped_by_reason[LATE], warning once per input)",
                                stamp,
                floor,
            )
            if not self._active[i]:
                # The input is alive again: it rejoins now, so the next sets wait for it (at most its
                # timeout). Otherwise an input whose messages always arrive after the others' (an
                # obstacle cloud derived from the raw scan) would stay absent for good.
                self._last_arrival[i] = now
                self._rejoin(i, stamp)
                if now is not None:
                    self._fire_due(now)
        else:
            self._backstep[i] = None
            self._check_rate(i, stamp, last)
            self._last_stamp[i] = stamp
            self._last_arrival[i] = now
            if not self._active[i]:
                self._rejoin(i, stamp)
            self._insert(i, _Entry(stamp, msg, now))
            if now is not None:
                self._fire_due(now)
        return self._take_output()

    def poll(self, now_ns: int) -> list[SyncedSet]:
        """Advance the clock to ``now_ns`` and return the sets released by timeouts due by then.

        Live nodes call this from a timer (a period well below the smallest timeout); replays may call
        it at the end of a bag to release what a dead input still holds. Without timeouts it only
        records the time and returns ``[]``.
        """
        self._advance(now_ns, required=True)
        return self._take_output()

    def reset(self) -> None:
        """Forget all queued messages, ordering history and absence (e.g. the ROS clock jumped back
        because a bag restarted). Counters are kept; queued messages count as dropped (``RESET``), and
        sets already completed but not yet returned are kept for the next call's return value."""
        for k, n in enumerate(self._pending_counts()):
            if n:
                self._drop(k, DropReason.RESET, n)
        self._reset_policy()
        self._now = None
        self._active = [True] * self._n
        self._last_stamp = [None] * self._n
        self._last_arrival = [None] * self._n
        self._floor = [None] * self._n
        self._emitted_max = [None] * self._n
        self._backstep = [None] * self._n

    def _rejoin(self, i: int, stamp: int) -> None:
        self._before_rejoin(i)
        self._active[i] = True
        self._log_limited(logging.INFO, i, "rejoin", "%s rejoined the synchroniser (stamp %d ns)", stamp)

    # ------------------------------------------------------------------ stamps going back

    def _step_back(self, i: int, stamp: int) -> int | None:
        """Input i went back to ``stamp``: supersede its newer held messages, detect a time jump
        (module doc). Returns the stamp the new message must not be older than (None: no bound)."""
        n = self._supersede(i, stamp)
        if n:
            self._drop(i, DropReason.SUPERSEDED, n)
            self._warn_once(
                i,
                "superseded",
                "%s: stamp %d ns is older than messages held for it; those were discarded "
                "(dropped_by_reason[SUPERSEDED], warning once per input)",
                                stamp,
            )
        held = self._held_stamps(i)
        bound = max([*held, *([] if self._emitted_max[i] is None else [self._emitted_max[i]])], default=None)
        self._last_stamp[i] = bound
        prev = self._backstep[i]
        if bound is not None and stamp < bound and prev is not None and stamp >= prev:
            # second step back in a row, consistent with the first: the input's clock went back
            self.time_jumps[i] += 1
            self._log_limited(
                logging.WARNING,
                i,
                "jump",
                "%s: stamps went back to %d ns (last emitted %d ns): time jump, ordering history "
                "of this input forgotten",
                stamp,
                bound,
            )
            self._emitted_max[i] = None
            self._last_stamp[i] = None
            self._backstep[i] = None
            for k in range(self._n):
                if self._floor[k] is not None and self._floor[k] >= stamp:
                    self._floor[k] = None
            return None
        return bound

    # ------------------------------------------------------------------ policy hooks

    def _insert(self, i: int, entry: _Entry) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _deadlines(self) -> list[tuple[int, int]]:  # pragma: no cover - abstract
        """(deadline_ns, input) for every active input with a timeout that is starving the others."""
        raise NotImplementedError

    def _waited_since(self, k: int, arrival: int | None) -> None:
        """Input k lost to overflow a message that had waited since ``arrival``: its wait (``_overflow_wait``,
        the policy's state) starts no later than that."""
        if arrival is not None and (self._overflow_wait[k] is None or arrival < self._overflow_wait[k]):
            self._overflow_wait[k] = arrival

    def _deadline(self, i: int, waiting_since: list[int | None]) -> int | None:
        """Deadline of input i given the arrival times of the messages waiting for it (module doc)."""
        tau = self._timeouts_ns[i]
        waits = [a for a in waiting_since if a is not None]
        if tau is None or not waits:
            return None
        start = min(waits)
        last = self._last_arrival[i]
        if last is not None and last > start:
            start = last
        return start + tau

    def _fire(self, i: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _before_rejoin(self, i: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pending_counts(self) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _supersede(self, i: int, stamp: int) -> int:  # pragma: no cover - abstract
        """Remove input i's held messages with a stamp newer than ``stamp``; return how many."""
        raise NotImplementedError

    def _held_stamps(self, i: int) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reset_policy(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_rate(self, i: int, stamp: int, last: int | None) -> None:
        """Hook for a per-input rate check (ApproximateTime's inter-message lower bound)."""

    # ------------------------------------------------------------------ shared machinery

    def _check_index(self, index: int) -> int:
        i = operator.index(index)
        if not 0 <= i < self._n:
            raise IndexError(f"input index {i} out of range for {self._n} inputs")
        return i

    def _advance(self, now_ns: int | None, *, required: bool) -> int | None:
        """Move the clock forward (never back: a smaller ``now`` is clamped) and fire due timeouts."""
        if now_ns is None:
            if required:
                raise ValueError("now_ns is required when input timeouts are configured")
            return None
        now = operator.index(now_ns)
        if self._now is not None and now < self._now:
            self._warn_once(
                -1,
                "clock",
                "clock went back from %d to %d ns; clamped (call reset() after a clock jump)",
                self._now,
                now,
            )
            now = self._now
        self._now = now
        self._fire_due(now)
        return now

    def _fire_due(self, now: int) -> None:
        """Apply every timeout whose deadline is <= now, earliest first (ties: lowest input).

        Each firing emits a set or removes an input from the active set, so the loop terminates. The
        order depends only on the state, never on how the span up to ``now`` was split into calls.
        """
        if not self._uses_clock:
            return
        while True:
            due = self._deadlines()
            if not due:
                return
            deadline, i = min(due)
            if deadline > now:
                return
            self._fire(i)

    def _emit(self, entries: Sequence[_Entry | None]) -> None:
        missing = tuple(k for k, e in enumerate(entries) if e is None)
        stamps = tuple(None if e is None else e.stamp for e in entries)
        msgs = tuple(None if e is None else e.msg for e in entries)
        if missing:
            newest = max(s for s in stamps if s is not None)
            for k in missing:
                self.omitted[k] += 1
                if self._floor[k] is None or newest > self._floor[k]:
                    self._floor[k] = newest
        for k, e in enumerate(entries):
            if e is not None:
                self.used[k] += 1
                if self._emitted_max[k] is None or e.stamp > self._emitted_max[k]:
                    self._emitted_max[k] = e.stamp
        self.sets_emitted += 1
        self._out.append(SyncedSet(messages=msgs, stamps_ns=stamps, missing=missing))

    def _drop(self, i: int, reason: DropReason, count: int = 1) -> None:
        self.dropped[i] += count
        self.dropped_by_reason[reason][i] += count

    def _take_output(self) -> list[SyncedSet]:
        out, self._out = self._out, []
        return out

    def _warn_once(self, i: int, kind: str, fmt: str, *args: Any) -> None:
        if (i, kind) not in self._warned:
            self._warned.add((i, kind))
            _log.warning(fmt, *((self._labels[i],) if i >= 0 else ()), *args)

    def _log_limited(self, level: int, i: int, kind: str, fmt: str, *args: Any) -> None:
        """Log a repeatable event at most once per :data:`LOG_INTERVAL_S` per input and kind.

        Under CPU load an input can time out and rejoin many times a minute; every occurrence is
        counted (``omitted``, ``time_jumps``, on /diagnostics), so the log only needs to say that it
        happens and how often it was not repeated.
        """
        now = time.monotonic()
        last, suppressed = self._log_state.get((i, kind), (None, 0))
        if last is not None and now - last < LOG_INTERVAL_S:
            self._log_state[(i, kind)] = (last, suppressed + 1)
            return
        self._log_state[(i, kind)] = (now, 0)
        if suppressed:
            fmt += " (%d more like this in the last %.0f s not logged)"
            args = (*args, suppressed, now - last)
        _log.log(level, fmt, self._labels[i], *args)

    def _declare_absent(self, i: int) -> None:
        self._active[i] = False
        self._log_limited(
            logging.WARNING,
            i,
            "absent",
            "%s timed out (silent for %.3f s while other inputs waited for it); emitting sets "
            "without it until it sends again",
            (self._timeouts_ns[i] or 0) / _NS_PER_S,
        )


class ApproximateTimeSynchronizer(_SyncBase):
    """The C++ ``message_filters`` ApproximateTime policy (Mangelson/Blaise algorithm), plus timeouts.

    Among the sets that are contiguous with the previously emitted one, the algorithm emits the one
    with the smallest time span (with ``age_penalty`` favouring earlier sets), and does so as soon as
    this is provable from the messages seen so far: each message is used at most once, sets do not
    cross, and the output depends only on the stamps (per-input stamps must be non-decreasing).

    State: per input a ``deque`` of messages not yet considered and a ``past`` list of messages already
    considered as the start of a set but kept in case they belong to the candidate. The *pivot* is the
    input whose head was the latest when the current candidate was formed: every later candidate must
    contain it, so once the pivot's own head becomes the earliest one the search is exhausted.

    Args:
        n_inputs: number of inputs (topics).
        queue_size: per-input bound on held messages (deque + past); overflowing drops the oldest
            message of that input and cancels the search, as in C++.
        age_penalty: weight favouring earlier sets over later ones of slightly smaller span; C++
            default 0.1 (the ROS wiki's 0 would wait for more proof).
        max_interval_s: sets spanning more than this are never formed (C++ ``max_interval_duration``).
        inter_message_lower_bounds_s: per input, the minimum spacing of its stamps (e.g. 0.9 × period).
            Lets the search prove optimality before the next message arrives (lower latency). A message
            closer than the bound only logs a warning, as in C++.
        input_timeouts_s: per input, ``None`` (wait forever) or the timeout τ described in the module
            docstring.
        names: per input, a name for log lines (e.g. its topic); default ``input <index>``.
    """

    def __init__(
        self,
        n_inputs: int,
        queue_size: int,
        *,
        age_penalty: float = 0.1,
        max_interval_s: float = math.inf,
        inter_message_lower_bounds_s: Sequence[float] | None = None,
        input_timeouts_s: Sequence[float | None] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(n_inputs, queue_size, input_timeouts_s, names)
        age_penalty = float(age_penalty)
        if not math.isfinite(age_penalty) or age_penalty < 0:
            raise ValueError(f"age_penalty must be finite and >= 0, got {age_penalty!r}")
        self.age_penalty = age_penalty
        # C++ multiplies a Duration (int64 ns) by the double 1 + age_penalty and truncates toward zero;
        # the exact rational value of that double keeps the comparison exact for any stamp size.
        self._factor = Fraction(1.0 + age_penalty)
        max_interval_s = float(max_interval_s)
        if math.isnan(max_interval_s) or max_interval_s < 0:
            raise ValueError(f"max_interval_s must be >= 0, got {max_interval_s!r}")
        self._max_interval_ns: float | int = (
            math.inf if math.isinf(max_interval_s) else _seconds_to_ns(max_interval_s, "max_interval_s")
        )
        if inter_message_lower_bounds_s is None:
            inter_message_lower_bounds_s = [0.0] * self._n
        if len(inter_message_lower_bounds_s) != self._n:
            raise ValueError(
                f"inter_message_lower_bounds_s has {len(inter_message_lower_bounds_s)} entries for "
                f"{self._n} inputs"
            )
        self._lower_bound_ns = [
            _seconds_to_ns(float(b), f"inter_message_lower_bounds_s[{k}]")
            for k, b in enumerate(inter_message_lower_bounds_s)
        ]
        self._reset_policy()

    def _reset_policy(self) -> None:
        self._deques: list[deque[_Entry]] = [deque() for _ in range(self._n)]
        self._past: list[list[_Entry]] = [[] for _ in range(self._n)]
        self._has_dropped = [False] * self._n
        self._candidate: list[_Entry | None] | None = None
        self._pivot: int | None = None
        self._pivot_time = 0
        self._cand_start = 0
        self._cand_end = 0
        # Per input: arrival of the oldest message lost to overflow since its last set came out. The
        # wait for a starving input runs from there, not from the oldest message still held: else each
        # overflow would push the deadline back and a dead input would never be declared absent while
        # the others' queues overflow (all their messages lost) whenever queue_size x period < timeout.
        self._overflow_wait: list[int | None] = [None] * self._n

    # ------------------------------------------------------------------ helpers

    def _scaled(self, d: int) -> int:
        """``Duration(d) * (1 + age_penalty)`` as rclcpp computes it: truncated toward zero."""
        f = self._factor
        if d >= 0:
            return d * f.numerator // f.denominator
        return -((-d) * f.numerator // f.denominator)

    def _active_idx(self) -> list[int]:
        return [k for k in range(self._n) if self._active[k]]

    @staticmethod
    def _bounds(times: Sequence[tuple[int, int]]) -> tuple[int, int, int, int]:
        """(start_time, start_index, end_time, end_index) over (index, time) pairs in index order.

        Ties: the start is the lowest index, the end the highest (C++ ``(t < time) ^ end``).
        """
        k0, t0 = times[0]
        start_t, start_i, end_t, end_i = t0, k0, t0, k0
        for k, t in times[1:]:
            if t < start_t:
                start_t, start_i = t, k
            if t >= end_t:
                end_t, end_i = t, k
        return start_t, start_i, end_t, end_i

    def _move_front_to_past(self, i: int) -> None:
        self._past[i].append(self._deques[i].popleft())

    def _make_candidate(self, act: list[int]) -> None:
        cand: list[_Entry | None] = [None] * self._n
        for k in act:
            cand[k] = self._deques[k][0]
            # Messages already passed over cannot belong to any set as good as this one.
            if self._past[k]:
                self._drop(k, DropReason.UNMATCHED, len(self._past[k]))
                self._past[k].clear()
        self._candidate = cand

    def _recover_all(self) -> None:
        for k in range(self._n):
            past = self._past[k]
            if past:
                self._deques[k].extendleft(reversed(past))
                past.clear()

    def _publish_candidate(self) -> None:
        cand = self._candidate
        assert cand is not None
        self._emit(cand)
        self._candidate = None
        self._pivot = None
        self._overflow_wait = [None] * self._n  # a set came out: what is held waits from its own arrival
        self._recover_all()
        for k, e in enumerate(cand):
            if e is not None:
                head = self._deques[k].popleft()
                assert head is e

    def _oldest_arrival(self, k: int) -> int | None:
        """Since when input k has been waiting: arrival of its oldest held message (past and deque are
        in arrival order), or of an older one it lost to overflow while it waited."""
        held = self._past[k] or self._deques[k]
        if not held:
            self._overflow_wait[k] = None  # nothing waits any more; a later message starts a new wait
            return None
        first, lost = held[0].arrival, self._overflow_wait[k]
        return first if lost is None or first is None else min(lost, first)

    # ------------------------------------------------------------------ the algorithm

    def _insert(self, i: int, entry: _Entry) -> None:
        q = self._deques[i]
        q.append(entry)
        if len(q) == 1:
            self._process()
        if len(q) + len(self._past[i]) > self._queue_size:
            # Cancel the search, restore every input, then drop this input's oldest message.
            self._recover_all()
            self._waited_since(i, self._deques[i].popleft().arrival)
            self._drop(i, DropReason.OVERFLOW)
            self._has_dropped[i] = True
            if self._pivot is not None:
                self._candidate = None
                self._pivot = None
                self._process()

    def _check_rate(self, i: int, stamp: int, last: int | None) -> None:
        bound = self._lower_bound_ns[i]
        if bound > 0 and last is not None and stamp - last < bound:
            self._warn_once(
                i,
                "rate",
                "%s: messages %d ns apart, closer than the inter-message lower bound %d ns; the "
                "sets may be suboptimal (warning once per input)",
                                stamp - last,
                bound,
            )

    def _process(self) -> None:
        deques, past = self._deques, self._past
        act = self._active_idx()
        while act and all(deques[k] for k in act):
            start_t, start_i, end_t, end_i = self._bounds([(k, deques[k][0].stamp) for k in act])
            for k in act:
                # No message dropped from k could beat the ones we hold: k may be a pivot again. A
                # lone active input (the others absent) has nothing to match: its head is a set by
                # itself, whatever it lost to overflow while it waited for them.
                if k != end_i or len(act) == 1:
                    self._has_dropped[k] = False
            if self._pivot is None:
                if end_t - start_t > self._max_interval_ns or self._has_dropped[end_i]:
                    # Too wide, or the would-be pivot lost messages that might have matched better.
                    deques[start_i].popleft()
                    self._drop(start_i, DropReason.UNMATCHED)
                    continue
                self._make_candidate(act)
                self._cand_start, self._cand_end = start_t, end_t
                self._pivot, self._pivot_time = end_i, end_t
                self._move_front_to_past(start_i)
            else:
                if self._scaled(end_t - self._cand_end) < start_t - self._cand_start:
                    self._make_candidate(act)
                    self._cand_start, self._cand_end = start_t, end_t
                self._move_front_to_past(start_i)

            if start_i == self._pivot:
                # Every candidate containing the pivot's message has been examined.
                self._publish_candidate()
            elif self._scaled(end_t - self._cand_end) >= self._pivot_time - self._cand_start:
                # Any later set contains [pivot_time, end_t], already too wide to win.
                self._publish_candidate()
            elif not all(deques[k] for k in act):
                self._virtual_search(act)

    def _virtual_search(self, act: list[int]) -> None:
        """Try to prove the candidate optimal by imagining each empty input's next message at the
        earliest stamp it could have (previous + lower bound, and not before the pivot)."""
        deques, past = self._deques, self._past
        moves = [0] * self._n
        while True:
            times = []
            for k in act:
                if deques[k]:
                    times.append((k, deques[k][0].stamp))
                else:
                    times.append((k, max(past[k][-1].stamp + self._lower_bound_ns[k], self._pivot_time)))
            start_t, start_i, end_t, _ = self._bounds(times)
            scaled = self._scaled(end_t - self._cand_end)
            if scaled >= self._pivot_time - self._cand_start:
                self._publish_candidate()  # also undoes the virtual moves
                return
            if scaled < start_t - self._cand_start:
                # An optimistic future set would beat the candidate: undo the moves and wait.
                for k in act:
                    for _ in range(moves[k]):
                        deques[k].appendleft(past[k].pop())
                return
            # start_t < pivot_time here, so start_i has a real message at its head.
            assert start_i != self._pivot and deques[start_i]
            self._move_front_to_past(start_i)
            moves[start_i] += 1

    # ------------------------------------------------------------------ timeouts

    def _deadlines(self) -> list[tuple[int, int]]:
        act = self._active_idx()
        oldest = {k: self._oldest_arrival(k) for k in act}
        out = []
        for i in act:
            if self._timeouts_ns[i] is None or self._deques[i]:
                continue
            deadline = self._deadline(i, [a for k, a in oldest.items() if k != i])
            if deadline is not None:
                out.append((deadline, i))
        return out

    def _fire(self, i: int) -> None:
        if self._pivot is not None:
            # Input i's next message would be needed to prove the candidate optimal: waive that proof.
            self._publish_candidate()
        else:
            assert not self._deques[i] and not self._past[i]
            self._declare_absent(i)
        self._process()

    def _before_rejoin(self, i: int) -> None:
        # What i lost before it went absent says nothing about the sets it joins now.
        self._has_dropped[i] = False
        self._overflow_wait[i] = None
        # A candidate formed without input i is no longer comparable: restart the search with i.
        if self._pivot is not None:
            self._recover_all()
            self._candidate = None
            self._pivot = None

    def _pending_counts(self) -> list[int]:
        return [len(self._deques[k]) + len(self._past[k]) for k in range(self._n)]

    def _held_stamps(self, i: int) -> list[int]:
        return [e.stamp for e in self._past[i]] + [e.stamp for e in self._deques[i]]

    def _supersede(self, i: int, stamp: int) -> int:
        # Messages the input lost on the timeline it left say nothing about its new one.
        self._has_dropped[i] = False
        if not any(s > stamp for s in self._held_stamps(i)):
            return 0
        # The candidate may hold one of them: restart the search without them.
        self._recover_all()
        self._candidate = None
        self._pivot = None
        self._overflow_wait[i] = None  # its wait was on the timeline it left
        q = self._deques[i]
        n = 0
        while q and q[-1].stamp > stamp:  # held messages of one input are in stamp order
            q.pop()
            n += 1
        self._process()
        return n


class ExactTimeSynchronizer(_SyncBase):
    """The C++ ``message_filters`` ExactTime policy: emit when every input has a message with the
    same stamp (e.g. ``Image`` + ``CameraInfo`` from one driver), with the same API and timeouts as
    :class:`ApproximateTimeSynchronizer`.

    Pending stamps are kept in a map stamp → partial set. Emitting a set discards every older partial
    set (``UNMATCHED``); more than ``queue_size`` partial sets discard the oldest (``OVERFLOW``), as in
    C++. Differences from C++: a stamp not newer than the last emitted set is dropped as ``LATE`` on
    arrival (C++ could emit it later, crossing the sets), and stamps going back on one input are handled
    as the module doc says (superseded, out of order, or a time jump). A repeated stamp on one input replaces the earlier
    message (``REPLACED``), as in C++.

    Timeouts: input ``i`` is starving while a partial set newer than its last stamp lacks it (only a
    future message of ``i`` could complete that set); the wait runs from the later of the arrival of
    the oldest message in such sets and of ``i``'s last message. When it reaches ``τ_i`` the input is
    declared absent and the partial sets complete over the remaining inputs are emitted, oldest
    first (with any message they hold, even from an absent input; ``None`` where there is none).
    """

    def __init__(
        self,
        n_inputs: int,
        queue_size: int,
        *,
        input_timeouts_s: Sequence[float | None] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(n_inputs, queue_size, input_timeouts_s, names)
        self._reset_policy()

    def _reset_policy(self) -> None:
        self._tuples: dict[int, list[_Entry | None]] = {}
        # Per input: earliest arrival in a partial set lacking it that was lost to overflow since the
        # last set came out (the wait for that input runs from there; see ApproximateTime's twin).
        self._overflow_wait: list[int | None] = [None] * self._n

    def _complete(self, slots: list[_Entry | None]) -> bool:
        return all(slots[k] is not None for k in range(self._n) if self._active[k])

    def _publish(self, stamp: int) -> None:
        self._emit(self._tuples.pop(stamp))
        self._overflow_wait = [None] * self._n
        # Nothing at or before an emitted stamp may be emitted later (sets do not cross).
        for k in range(self._n):
            if self._floor[k] is None or stamp > self._floor[k]:
                self._floor[k] = stamp
        for old in sorted(t for t in self._tuples if t < stamp):
            self._discard_tuple(old, DropReason.UNMATCHED)

    def _discard_tuple(self, stamp: int, reason: DropReason) -> None:
        for k, e in enumerate(self._tuples.pop(stamp)):
            if e is not None:
                self._drop(k, reason)

    def _publish_complete(self) -> None:
        for stamp in sorted(self._tuples):
            if stamp in self._tuples and self._complete(self._tuples[stamp]):
                self._publish(stamp)

    def _insert(self, i: int, entry: _Entry) -> None:
        slots = self._tuples.get(entry.stamp)
        if slots is None:
            slots = self._tuples[entry.stamp] = [None] * self._n
        if slots[i] is not None:
            self._drop(i, DropReason.REPLACED)
        slots[i] = entry
        if self._complete(slots):
            self._publish(entry.stamp)
        while len(self._tuples) > self._queue_size:
            oldest = min(self._tuples)
            first = min((e.arrival for e in self._tuples[oldest] if e is not None and e.arrival is not None),
                        default=None)
            for k, e in enumerate(self._tuples[oldest]):
                waited = self._last_stamp[k] is None or oldest > self._last_stamp[k]  # only k could complete it
                if e is None and waited and self._active[k]:
                    self._waited_since(k, first)
            self._discard_tuple(oldest, DropReason.OVERFLOW)

    def _deadlines(self) -> list[tuple[int, int]]:
        out = []
        for i in range(self._n):
            if self._timeouts_ns[i] is None or not self._active[i]:
                continue
            last = self._last_stamp[i]
            # Partial sets that only a future message of i can complete (older stamps are beyond
            # reach: i's stamps only increase, so those sets wait for a newer set to be emitted).
            waits = [
                e.arrival
                for stamp, slots in self._tuples.items()
                if slots[i] is None and (last is None or stamp > last)
                for e in slots
                if e is not None
            ]
            if not waits:
                self._overflow_wait[i] = None  # nothing waits for i any more
            elif self._overflow_wait[i] is not None:
                waits.append(self._overflow_wait[i])  # a set lost to overflow waited for i since then
            deadline = self._deadline(i, waits)
            if deadline is not None:
                out.append((deadline, i))
        return out

    def _fire(self, i: int) -> None:
        self._declare_absent(i)
        self._publish_complete()

    def _before_rejoin(self, i: int) -> None:
        self._overflow_wait[i] = None  # what waited for i before it went absent was emitted without it

    def _held_stamps(self, i: int) -> list[int]:
        return [stamp for stamp, slots in self._tuples.items() if slots[i] is not None]

    def _supersede(self, i: int, stamp: int) -> int:
        n = 0
        for t in [t for t, slots in self._tuples.items() if t > stamp and slots[i] is not None]:
            self._tuples[t][i] = None
            n += 1
            if all(e is None for e in self._tuples[t]):
                del self._tuples[t]
        return n

    def _pending_counts(self) -> list[int]:
        counts = [0] * self._n
        for slots in self._tuples.values():
            for k, e in enumerate(slots):
                if e is not None:
                    counts[k] += 1
        return counts
