"""Per-node latency accounting: stage times, processing time, pipeline latency and cyclic time.

* processing time / stage time: monotonic clock around the work (``time.perf_counter_ns``), immune to
  clock jumps and sim time.
* pipeline latency: ``now - input header.stamp`` on the node's clock. Live that is the ROS clock (sim
  time when ``use_sim_time`` is set); in replay it is the replay clock (the bag's receive time of the
  triggering message plus the wall time spent since), so bag replay reports what the graph would add
  on a vehicle instead of "now minus a stamp from last year" or a negative number.
* cyclic time: time between the starts of consecutive frames on the node's clock (so replay reports
  the sensor's pace at bag time, not how fast the replay happened to run); its jitter sample is
  ``|cyclic - previous cyclic|``.
The names follow Autoware's debug topics so users' dashboards carry over.

Stamp-based values never go negative: a pipeline latency below zero (an input stamped after "now":
clocks of different machines, sim time not yet caught up) is not recorded but counted in
``invalid[pipeline_latency]``. A time jump (the node clock or the input stamps going back: a looping
bag, a restarted sensor) starts the cyclic series afresh (``time_jumps``) instead of feeding a
negative or huge sample into its statistics and jitter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from perception_nodes.latency.stats import LatencySeries

PROCESSING = "processing_time"
PIPELINE = "pipeline_latency"
CYCLIC = "cyclic_time"


@dataclass
class FrameLatency:
    """What one processed frame measured; the node publishes it on its debug topics."""

    input_stamp_ns: int
    stages_ms: dict[str, float] = field(default_factory=dict)
    processing_ms: float = 0.0
    pipeline_ms: float = 0.0
    #: False when the pipeline latency came out negative (not recorded, counted as invalid)
    pipeline_valid: bool = True
    cyclic_ms: float | None = None
    #: |cyclic - previous cyclic| (None for the first two frames and after a time jump)
    jitter_ms: float | None = None
    missed: list[str] = field(default_factory=list)


class NodeLatency:
    """Collects latency series for one node.

    ``clock`` returns "now" in nanoseconds on the same time base as the input stamps (see module doc).
    ``budgets_ms`` maps ``processing_time``, ``pipeline_latency``, ``cyclic_time`` or a stage name to a
    budget; samples above it count as deadline misses.
    """

    def __init__(
        self,
        node: str,
        clock: Callable[[], int],
        budgets_ms: dict[str, float] | None = None,
        window: int = 200,
        keep_all: bool = False,
    ) -> None:
        self.node = node
        self.clock = clock
        self.budgets_ms = dict(budgets_ms or {})
        self.window = window
        self.keep_all = keep_all
        self.series: dict[str, LatencySeries] = {}
        self._last_start_ns: int | None = None
        self._last_stamp_ns: int | None = None
        self._last_cyclic_ms: float | None = None
        self._frame: FrameLatency | None = None
        self.invalid: dict[str, int] = {}
        """Samples not recorded because they were meaningless (negative pipeline latency), per key."""
        self.time_jumps = 0
        """How often the clock or the input stamps went back (the cyclic series restarted)."""

    def _series(self, key: str) -> LatencySeries:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = LatencySeries(self.budgets_ms.get(key), self.window, self.keep_all)
        return s

    def _record(self, frame: FrameLatency, key: str, value: float) -> None:
        if self._series(key).add(value):
            frame.missed.append(key)

    @contextmanager
    def frame(self, input_stamp_ns: int) -> Iterator[FrameLatency]:
        """Time one frame; stages inside it are timed with :meth:`stage`."""
        start = time.perf_counter_ns()
        clock_start = self.clock()
        frame = FrameLatency(input_stamp_ns)
        jumped = (self._last_start_ns is not None and clock_start < self._last_start_ns) or (
            self._last_stamp_ns is not None and input_stamp_ns < self._last_stamp_ns)
        if jumped:
            self.time_jumps += 1
            self._last_cyclic_ms = None
            if CYCLIC in self.series:
                self.series[CYCLIC].recent.clear()  # the window's statistics start afresh
        elif self._last_start_ns is not None:
            frame.cyclic_ms = (clock_start - self._last_start_ns) / 1e6
            if self._last_cyclic_ms is not None:
                frame.jitter_ms = abs(frame.cyclic_ms - self._last_cyclic_ms)
            self._last_cyclic_ms = frame.cyclic_ms
        self._last_start_ns = clock_start
        self._last_stamp_ns = input_stamp_ns
        self._frame = frame
        try:
            yield frame
        finally:
            self._frame = None
            frame.processing_ms = (time.perf_counter_ns() - start) / 1e6
            frame.pipeline_ms = (self.clock() - input_stamp_ns) / 1e6
            frame.pipeline_valid = frame.pipeline_ms >= 0.0
            for name, ms in frame.stages_ms.items():
                self._record(frame, name, ms)
            self._record(frame, PROCESSING, frame.processing_ms)
            if frame.pipeline_valid:
                self._record(frame, PIPELINE, frame.pipeline_ms)
            else:
                self.invalid[PIPELINE] = self.invalid.get(PIPELINE, 0) + 1
            if frame.cyclic_ms is not None:
                self._record(frame, CYCLIC, frame.cyclic_ms)

    def record(self, key: str, value_ms: float) -> None:
        """Record a sample outside any frame (e.g. synchroniser time per message)."""
        self._series(key).add(value_ms)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a named stage of the current frame (stages may repeat; times add up)."""
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            if self._frame is not None:
                ms = (time.perf_counter_ns() - start) / 1e6
                self._frame.stages_ms[name] = self._frame.stages_ms.get(name, 0.0) + ms
