"""The curvature evidence the controller holds: recent predictions of every sensor and the distance driven.

:class:`Odometer` turns odometry poses into the arc length driven (so a past prediction's horizons can be
shifted to where those points are now); :class:`PredictionHistory` keeps each sensor's recent predictions
and fuses them at the lookahead distances with :mod:`perception_nodes.evidential.nig_fusion`:

* prediction ``k`` of sensor ``b``, made at ``t_k``, is shifted by the distance driven since
  (``h - d(t_k, T)``), read at the lookahead, and discounted by ``decay_per_s ** (T - t_k)`` (its evidence
  is older; a sensor keeps what it said 1 s ago at weight ``decay_per_s``);
* everything that is left is pooled in one step (order-free).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from perception_nodes.evidential import nig_fusion as nf


class Odometer:
    """Arc length driven, by stamp, from a stream of 2D positions (odometry)."""

    def __init__(self, max_gap_s: float = 0.5, size: int = 600) -> None:
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.stamps: deque[int] = deque(maxlen=size)
        self.s: deque[float] = deque(maxlen=size)
        self._last_xy: tuple[float, float] | None = None

    def reset(self) -> None:
        self.stamps.clear()
        self.s.clear()
        self._last_xy = None

    def add(self, stamp: int, x: float, y: float) -> bool:
        """Take one pose; False (ignored) when not newer than the last one or not finite."""
        if not (math.isfinite(x) and math.isfinite(y)) or (self.stamps and stamp <= self.stamps[-1]):
            return False
        s = 0.0
        if self._last_xy is not None:
            s = self.s[-1] + math.hypot(x - self._last_xy[0], y - self._last_xy[1])
        self.stamps.append(stamp)
        self.s.append(s)
        self._last_xy = (x, y)
        return True

    def arc(self, stamp: int) -> float | None:
        """Arc length at ``stamp``: interpolated; up to ``max_gap_s`` past the newest pose extrapolated at the
        last speed; None outside the covered span."""
        st = self.stamps
        if not st:
            return None
        i = bisect.bisect_left(st, stamp)
        if i < len(st) and st[i] == stamp:
            return self.s[i]
        if 0 < i < len(st):
            t0, t1 = st[i - 1], st[i]
            if t1 - t0 > self.max_gap_ns:
                return None
            return self.s[i - 1] + (self.s[i] - self.s[i - 1]) * (stamp - t0) / (t1 - t0)
        if i == len(st) and stamp - st[-1] <= self.max_gap_ns:
            if len(st) < 2:
                return self.s[-1]
            v = (self.s[-1] - self.s[-2]) / max(st[-1] - st[-2], 1)
            return self.s[-1] + v * (stamp - st[-1])
        return None

    def travelled(self, t0: int, t1: int) -> float | None:
        a, b = self.arc(t0), self.arc(t1)
        return None if a is None or b is None else max(0.0, b - a)


@dataclass
class Prediction:
    stamp: int
    horizon_m: np.ndarray
    nig: nf.NIGArray
    weight: float = 1.0  #: health discount of the source at this frame (1 = full)


@dataclass
class Fused:
    """The pooled NIG at the lookahead distances and what went into it."""

    nig: nf.NIGArray
    sources: int
    dropped_behind: int
    dead_reckoned: int


class PredictionHistory:
    """Recent predictions per sensor (see module doc)."""

    def __init__(self, history_s: float, max_frames: int, decay_per_s: float, prior_alpha: float) -> None:
        self.history_ns = int(history_s * 1e9)
        self.max_frames = max(1, int(max_frames))
        self.decay_per_s = float(decay_per_s)
        self.prior_alpha = float(prior_alpha)
        self.by_sensor: dict[str, deque[Prediction]] = {}

    def clear(self) -> None:
        self.by_sensor.clear()

    def add(self, sensor: str, pred: Prediction) -> None:
        q = self.by_sensor.setdefault(sensor, deque(maxlen=self.max_frames))
        q.append(pred)
        while len(q) > 1 and q[-1].stamp - q[0].stamp > self.history_ns:
            q.popleft()
        # keep stamp order (a late message goes where it belongs)
        if len(q) > 1 and q[-2].stamp > q[-1].stamp:
            items = sorted(q, key=lambda p: p.stamp)
            q.clear()
            q.extend(items)

    def fuse_at(self, now: int, targets_m: np.ndarray, travelled, fallback_speed_mps: float) -> Fused:
        """Pool every held prediction at ``targets_m`` metres ahead of the ego at ``now``.

        ``travelled(t0, t1)`` gives metres driven (None when unknown: then ``fallback_speed_mps`` x time,
        counted as dead-reckoned). Predictions newer than ``now`` or older than ``history_s`` are skipped.
        """
        parts: list[nf.NIGArray] = []
        behind = dead = 0
        for q in self.by_sensor.values():
            for pred in q:
                age_ns = now - pred.stamp
                if age_ns < 0 or age_ns > self.history_ns:
                    continue
                d = 0.0
                if age_ns > 0:
                    got = travelled(pred.stamp, now)
                    if got is None:
                        got = fallback_speed_mps * age_ns / 1e9
                        dead += 1
                    d = got
                shifted = nf.shift_horizons(pred.horizon_m, d)
                if shifted[-1] < 0:
                    behind += 1
                    continue
                s = nf.sample_at(shifted, pred.nig, targets_m, self.prior_alpha)
                w = pred.weight * (self.decay_per_s ** (age_ns / 1e9) if self.decay_per_s > 0 else float(age_ns == 0))
                if not np.any(s.has_evidence()) or w <= 0:
                    continue
                parts.append(nf.discount(s, w, self.prior_alpha))
        fused = nf.fuse_many(parts, self.prior_alpha, shape=np.shape(targets_m))
        return Fused(fused, len(parts), behind, dead)
