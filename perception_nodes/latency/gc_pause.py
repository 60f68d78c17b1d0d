"""Keep CPython's full garbage collections out of the frame path.

Why: CPython's cyclic collector runs its oldest generation whenever enough objects have survived the younger
ones, and that collection walks *every* tracked container object of the process. A node graph holds a few
hundred thousand of them after start-up (torch modules and parameters, compiled numba dispatchers, message
classes, parameter trees), so one such collection takes 100-700 ms on the 2-core reference machine
(measured on ``make demo``'s replay: 13 of them, median 163 ms, max 709 ms). It lands in whatever stage
allocates at that moment -- usually a message encoder -- and shows up as a deadline miss with no cause in
the node's own code.

The fix is CPython's own (:func:`gc.freeze`, Python 3.7+): once the graph is built and warmed up, collect once
and move every surviving object to the permanent generation. Later collections walk only what was created
after that: per-frame objects, which reference counting frees anyway. Nothing is leaked that would not
have lived for the whole process; cycles created later are still collected.

Call :func:`freeze_startup_objects` after start-up: replay after ``build_graph``; a ROS node
(``ManagedCoreNode``, in ``live`` and the bringup executables) after every successful configure, when its
model is loaded and warmed up. :func:`gc_pause_monitor` measures what the collector costs
(``benchmarks/gc_pauses.py`` and tests use it).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["GcPauses", "freeze_startup_objects", "gc_pause_monitor"]


def freeze_startup_objects() -> int:
    """Collect once, then freeze every surviving object (see the module docstring). Returns how many objects
    are frozen (``gc.get_freeze_count()``). Safe to call more than once: later calls freeze what came since."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@dataclass
class GcPauses:
    """Durations (ms) of the collector's runs, per generation, while :func:`gc_pause_monitor` was active, and
    when each started (``at``, on the monitor's clock)."""

    ms: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: [], 2: []})
    at: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: [], 2: []})

    def worst(self, generation: int = 2) -> float:
        return max(self.ms.get(generation) or [0.0])

    def between(self, t0: float, t1: float, generation: int = 2) -> list[float]:
        """Durations (ms) of the runs of ``generation`` that started within [t0, t1] (e.g. a frame loop)."""
        return [ms for t, ms in zip(self.at.get(generation, []), self.ms.get(generation, [])) if t0 <= t <= t1]

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for g, v in sorted(self.ms.items()):
            s = sorted(v)
            out[f"gen{g}"] = {"count": float(len(s)), "max_ms": s[-1] if s else 0.0,
                              "p50_ms": s[len(s) // 2] if s else 0.0, "sum_ms": float(sum(s))}
        return out


@contextmanager
def gc_pause_monitor(clock: Callable[[], float] = time.perf_counter) -> Iterator[GcPauses]:
    """Record how long each garbage collection takes inside the ``with`` block (``gc.callbacks``)."""
    pauses = GcPauses()
    started: list[float] = []

    def cb(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(clock())
        elif started:
            t = started.pop()
            g = int(info["generation"])
            pauses.ms.setdefault(g, []).append((clock() - t) * 1e3)
            pauses.at.setdefault(g, []).append(t)

    gc.callbacks.append(cb)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(cb)
