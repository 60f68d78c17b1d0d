"""Metrics of the robustness study (``benchmarks/robustness.py``): scores on chosen cells, AUROC, delays.

Everything here is numpy only and takes plain arrays, so each function can be checked on hand-built
inputs where the answer is known (``tests/test_robustness_metrics.py``):

* :class:`RegionScorer`: per source and named region a (2, 101) count table of (occupied?, P level)
  over the cells a boolean mask selects (unknown cells at P = 0.5, as ``perception-stack evaluate``), and
  from it Brier, ECE, NLL and IoU with the two trivial baselines on the same cells (all free: Brier =
  occupied share; the constant base rate: Brier = r (1 - r), ECE 0). ``benchmarks/fusion_check.py``
  scores with it as well, so both benchmarks count cells the same way.
* :func:`auroc` / :func:`auroc_from_counts`: the probability that a fault-affected sample scores higher
  than a clean one, ties counted half (Mann-Whitney U / (n_pos n_neg)); the counts form is exact for the
  grids' integer levels and costs one pass over 101 bins instead of a sort of millions of cells.
* :func:`frames_until`: frames from a time on until a per-frame value meets a condition (a branch weight
  below 0.2, a fallback flag set), 1 = the first frame at or after that time.
* :func:`weight_episode` and :func:`fallback_delay`: those two questions for one fault window.

The fault windows and affected cells come from the generator's own description of the faults
(``/scenario/info``) and its ``/ground_truth/occupancy/lidar_fault`` grid, never from the outputs scored
(:mod:`perception_nodes.eval.robustness_faults`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from perception_nodes.eval.metrics.counts import scores_from_counts

__all__ = [
    "LEVELS",
    "RegionScorer",
    "auroc",
    "auroc_from_counts",
    "fallback_delay",
    "frames_until",
    "level_counts",
    "p_levels",
    "weight_episode",
]

#: probability / vacuity levels of a nav_msgs/OccupancyGrid cell: 0..100
LEVELS = 101
UNKNOWN_P = 50


def p_levels(grid: np.ndarray) -> np.ndarray:
    """Occupancy values 0..100 as levels, unknown (-1 or anything below 0) at P = 0.5."""
    g = np.asarray(grid)
    return np.where(g < 0, UNKNOWN_P, np.clip(g, 0, 100)).astype(np.int64)


def level_counts(values: np.ndarray, unknown_as: int = 100) -> np.ndarray:
    """Histogram over the 101 levels of grid values (vacuity, conflict): -1 (unknown) counts as
    ``unknown_as`` (100 = no evidence at all, the vacuity of a cell nobody observed)."""
    v = np.asarray(values).ravel().astype(np.int64)
    v = np.where(v < 0, unknown_as, np.clip(v, 0, 100))
    return np.bincount(v, minlength=LEVELS)


class RegionScorer:
    """Per source and region a (2, 101) table: rows free / occupied, columns the predicted P level.

    ``regions`` names the regions in the order results list them. :meth:`add` takes one frame of one
    source: the truth (``occupied``, bool), the source's grid values on the *same* cells (int, -1
    unknown) and a boolean mask per region (a region missing from ``masks`` gets nothing this frame).
    """

    def __init__(self, regions: Sequence[str]) -> None:
        self.regions = tuple(regions)
        self.tables: dict[str, np.ndarray] = {}
        self.frames: dict[str, int] = {}

    def add(self, source: str, occupied: np.ndarray, grid: np.ndarray, masks: Mapping[str, np.ndarray]) -> None:
        occ = np.asarray(occupied, dtype=bool)
        level = p_levels(grid)
        if occ.shape != level.shape:
            raise ValueError(f"truth {occ.shape} and grid {level.shape} differ in shape")
        t = self.tables.setdefault(source, np.zeros((len(self.regions), 2, LEVELS), np.int64))
        for i, region in enumerate(self.regions):
            m = masks.get(region)
            if m is None:
                continue
            m = np.asarray(m, dtype=bool)
            t[i] += np.bincount(occ[m].astype(np.int64) * LEVELS + level[m], minlength=2 * LEVELS).reshape(2, LEVELS)
        self.frames[source] = self.frames.get(source, 0) + 1

    def results(self, digits: int = 4) -> dict[str, Any]:
        """``{source: {"frames": n, region: None | {cells, brier, ece, nll, iou, all_free_brier,
        base_rate_brier}}}``; a region with no cell is None."""
        out: dict[str, Any] = {}
        for source, t in self.tables.items():
            s = scores_from_counts(t)
            out[source] = {"frames": self.frames.get(source, 0)}
            for i, region in enumerate(self.regions):
                n = int(t[i].sum())
                r = float(t[i, 1].sum()) / n if n else 0.0  # occupied share of the scored cells
                out[source][region] = None if n == 0 else {
                    "cells": n, **{k: _round(s[k][i], digits) for k in ("brier", "ece", "nll", "iou")},
                    # trivial baselines on the same cells: P = 0 everywhere, and the constant P = r (ECE 0)
                    "all_free_brier": round(r, digits), "base_rate_brier": round(r * (1 - r), digits)}
        return out


def _round(v: Any, digits: int) -> float | None:
    f = float(v)
    return None if math.isnan(f) else round(f, digits)


def auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """AUROC of integer-levelled scores from their histograms (bin i = level i, higher = more
    uncertain): P(pos > neg) + 0.5 P(pos = neg). None when either side is empty."""
    p = np.asarray(pos, dtype=np.float64).ravel()
    n = np.asarray(neg, dtype=np.float64).ravel()
    if p.shape != n.shape:
        raise ValueError(f"histograms differ in length: {p.shape} vs {n.shape}")
    n_pos, n_neg = p.sum(), n.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.concatenate(([0.0], np.cumsum(n)[:-1]))  # negatives strictly below each level
    return float((p * (below + 0.5 * n)).sum() / (n_pos * n_neg))


def auroc(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float | None:
    """AUROC of real-valued scores (higher = more uncertain), ties counted half; NaN scores are left
    out. None when either side is empty after that."""
    p = np.asarray(pos, dtype=np.float64).ravel()
    n = np.asarray(neg, dtype=np.float64).ravel()
    p, n = p[~np.isnan(p)], n[~np.isnan(n)]
    if len(p) == 0 or len(n) == 0:
        return None
    ns = np.sort(n)
    lt = np.searchsorted(ns, p, side="left")  # negatives strictly below each positive
    le = np.searchsorted(ns, p, side="right")
    return float((lt + 0.5 * (le - lt)).sum() / (len(p) * len(n)))


def frames_until(times_s: Sequence[float], values: Sequence[Any], start_s: float,
                 condition: Callable[[Any], bool], end_s: float = math.inf) -> int | None:
    """Frames from ``start_s`` on until ``condition(value)`` holds: 1 when it holds on the first frame
    at or after ``start_s``; only frames before ``end_s`` count; None when it never holds there.

    ``times_s`` are the frames' times (same clock as ``start_s``), in any order; frames are counted in
    time order.
    """
    order = sorted((t, i) for i, t in enumerate(times_s) if start_s <= t < end_s)
    for k, (_, i) in enumerate(order):
        if condition(values[i]):
            return k + 1
    return None


def weight_episode(times_s: Sequence[float], weights: Sequence[float], window: tuple[float, float], *,
                   low: float = 0.2, high: float = 0.8) -> dict[str, Any]:
    """A branch's weight around one fault window ``(start, end)`` (end may be inf):

    * ``frames_until_below``: frames from the window's start until the weight is below ``low``
      (None: it never fell, within the window);
    * ``frames_until_recovered``: frames from the window's end until it is at or above ``high`` again
      (None: not within the recording, or the window never ends);
    * ``min_in_window``, ``mean_in_window``, ``mean_outside``: the weight's level.
    """
    start, end = window
    t = np.asarray(times_s, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    inside = (t >= start) & (t < end)
    return {
        "frames_until_below": frames_until(times_s, weights, start, lambda v: v < low, end),
        "frames_until_recovered": (None if math.isinf(end)
                                   else frames_until(times_s, weights, end, lambda v: v >= high)),
        "min_in_window": _round(w[inside].min(), 4) if inside.any() else None,
        "mean_in_window": _round(w[inside].mean(), 4) if inside.any() else None,
        "mean_outside": _round(w[~inside].mean(), 4) if (~inside).any() else None,
        "low": low, "high": high,
    }


def fallback_delay(times_s: Sequence[float], fallback: Sequence[bool], window: tuple[float, float]) -> dict[str, Any]:
    """The control fallback around one failure episode ``(start, end)``: ``frames_until_fallback``
    (1 = on the first frame of the episode; None = no fallback during it), the share of the episode's
    frames in fallback and the count of fallback frames outside it (false alarms, recovery included)."""
    start, end = window
    t = np.asarray(times_s, dtype=np.float64)
    f = np.asarray(fallback, dtype=bool)
    inside = (t >= start) & (t < end)
    return {
        "frames_until_fallback": frames_until(times_s, list(f), start, bool, end),
        "fallback_share_in_window": _round(f[inside].mean(), 4) if inside.any() else None,
        "fallback_frames_outside": int(f[~inside].sum()),
        "frames_in_window": int(inside.sum()),
    }
