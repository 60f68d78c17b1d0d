"""Fallback state machine with hysteresis: when to stop trusting the curvature and drive conservatively.

States:

* ``nominal``: the fused curvature is followed at the nominal speed; each such curvature becomes the
  *last safe curvature*.
* ``fallback_hold``: entered on any trigger (the uncertainty above ``enter_threshold``, the curvature input
  stale for ``input_timeout_s``, or an input-health trigger); the last safe curvature is held at the
  fallback speed.
* ``fallback_final``: after ``hold_s`` in fallback: ``final_action`` ``straight`` (curvature 0 at the
  fallback speed) or ``stop`` (speed 0).

Recovery: only after ``recover_frames`` consecutive frames with the uncertainty *below* ``exit_threshold``
(lower than ``enter_threshold``: a value between the two neither enters nor counts as good, so a signal
hovering at the threshold does not chatter), with a fresh input and no health trigger. A bad frame during
the count restarts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NOMINAL, HOLD, FINAL = "nominal", "fallback_hold", "fallback_final"


@dataclass(frozen=True)
class FallbackParams:
    """``fallback.*`` of the control node's params."""

    enter_threshold: float = 0.02
    exit_threshold: float = 0.015
    recover_frames: int = 5
    input_timeout_s: float = 0.25
    hold_s: float = 2.0
    final_action: str = "straight"

    def __post_init__(self) -> None:
        if not self.exit_threshold <= self.enter_threshold:
            raise ValueError("fallback.exit_threshold must not exceed fallback.enter_threshold (hysteresis)")
        if self.recover_frames < 1 or self.input_timeout_s <= 0 or self.hold_s < 0:
            raise ValueError("fallback.recover_frames >= 1, input_timeout_s > 0 and hold_s >= 0 are needed")
        if self.final_action not in ("straight", "stop"):
            raise ValueError(f"fallback.final_action must be straight or stop, got {self.final_action!r}")


@dataclass
class FallbackState:
    """What the state machine decided for one frame."""

    state: str
    fallback: bool
    reason: str
    curvature: float  #: the curvature to command (the fused one, the held one, or 0)
    stop: bool = False


@dataclass
class FallbackStateMachine:
    """See module doc. Feed one :meth:`step` per frame (a command to publish)."""

    params: FallbackParams
    state: str = NOMINAL
    since_ns: int | None = None  #: when the current fallback episode started
    good_frames: int = 0
    last_safe_curvature: float = 0.0
    reason: str = ""
    episodes: int = 0
    transitions: list[tuple[int, str, str]] = field(default_factory=list)  #: (stamp, state, reason)

    def step(self, now_ns: int, curvature: float, uncertainty: float, *, input_age_s: float,
             health_reasons: tuple[str, ...] = ()) -> FallbackState:
        """One frame: ``curvature`` fused (may be NaN when there is none), ``uncertainty`` its measure (std or
        interval width, inf when unknown), ``input_age_s`` the age of the newest curvature input."""
        p = self.params
        triggers = []
        if not math.isfinite(uncertainty) or not math.isfinite(curvature):
            triggers.append("no usable curvature")
        elif uncertainty > p.enter_threshold:
            triggers.append(f"uncertainty {uncertainty:.3g} > {p.enter_threshold:g}")
        if not input_age_s <= p.input_timeout_s:
            triggers.append(f"curvature input stale ({input_age_s:.2f} s > {p.input_timeout_s:g} s)")
        triggers += list(health_reasons)
        if self.state == NOMINAL:
            if triggers:
                self._enter(now_ns, "; ".join(triggers))
            else:
                self.last_safe_curvature = float(curvature)
                return FallbackState(NOMINAL, False, "", float(curvature))
        else:
            good = (not triggers and uncertainty < p.exit_threshold)
            self.good_frames = self.good_frames + 1 if good else 0
            if triggers:
                self.reason = "; ".join(triggers)
            if self.good_frames >= p.recover_frames:
                self.state, self.since_ns, self.good_frames, self.reason = NOMINAL, None, 0, ""
                self.transitions.append((now_ns, NOMINAL, f"recovered after {p.recover_frames} good frames"))
                self.last_safe_curvature = float(curvature)
                return FallbackState(NOMINAL, False, "", float(curvature))
        assert self.since_ns is not None
        if self.state == HOLD and now_ns - self.since_ns >= p.hold_s * 1e9:
            self.state = FINAL
            self.transitions.append((now_ns, FINAL, p.final_action))
        if self.state == HOLD:
            return FallbackState(HOLD, True, f"{self.reason} (holding last safe curvature)", self.last_safe_curvature)
        stop = p.final_action == "stop"
        k = self.last_safe_curvature if stop else 0.0
        return FallbackState(FINAL, True, f"{self.reason} ({'stopped' if stop else 'straight'} after "
                                          f"{p.hold_s:g} s)", k, stop=stop)

    def _enter(self, now_ns: int, reason: str) -> None:
        self.state, self.since_ns, self.good_frames, self.reason = HOLD, now_ns, 0, reason
        self.episodes += 1
        self.transitions.append((now_ns, HOLD, reason))


def restart_clock(fsm: FallbackStateMachine, now_ns: int) -> None:
    """Time went back (a looping bag, a rewound clock): a running fallback episode restarts its hold time now."""
    if fsm.since_ns is not None and now_ns < fsm.since_ns:
        fsm.since_ns = now_ns
