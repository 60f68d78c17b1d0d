"""Latency statistics: percentiles, jitter and deadline misses over a window of samples.

Peers publish a single processing time per message; users need the distribution (p99 and max decide
whether a planner can trust the output) and how often a budget was missed. Jitter here is the mean
absolute difference of consecutive samples (RFC 3550's inter-arrival jitter without its smoothing); for
cyclic time it equals ros2_benchmark's |second difference of arrival times|.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    jitter_ms: float
    budget_ms: float | None
    deadline_misses: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(samples_ms: np.ndarray | list[float], budget_ms: float | None = None) -> LatencySummary:
    """Summarise samples; a sample strictly above ``budget_ms`` is a deadline miss."""
    x = np.asarray(samples_ms, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        nan = math.nan
        return LatencySummary(0, nan, nan, nan, nan, nan, nan, budget_ms, 0)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    jitter = float(np.mean(np.abs(np.diff(x)))) if x.size > 1 else 0.0
    misses = int(np.count_nonzero(x > budget_ms)) if budget_ms is not None else 0
    return LatencySummary(
        count=int(x.size),
        mean_ms=float(x.mean()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=float(x.max()),
        jitter_ms=jitter,
        budget_ms=budget_ms,
        deadline_misses=misses,
    )


class LatencySeries:
    """Samples of one quantity (a stage, a node's pipeline latency, ...).

    Keeps the last ``window`` samples for live statistics and, with ``keep_all``, every sample for an
    offline report. Totals (count, misses) always cover the whole run.
    """

    def __init__(self, budget_ms: float | None = None, window: int = 200, keep_all: bool = False) -> None:
        self.budget_ms = budget_ms
        self.recent: deque[float] = deque(maxlen=window)
        self.all: list[float] | None = [] if keep_all else None
        self.total_count = 0
        self.total_misses = 0

    def add(self, value_ms: float) -> bool:
        """Record a sample; returns True when it missed the budget."""
        self.recent.append(value_ms)
        if self.all is not None:
            self.all.append(value_ms)
        self.total_count += 1
        missed = self.budget_ms is not None and value_ms > self.budget_ms
        self.total_misses += int(missed)
        return missed

    def window_summary(self) -> LatencySummary:
        return summarize(list(self.recent), self.budget_ms)

    def full_summary(self) -> LatencySummary:
        """Summary over every sample (needs ``keep_all``); falls back to the window otherwise."""
        if self.all is None:
            return self.window_summary()
        return summarize(self.all, self.budget_ms)
