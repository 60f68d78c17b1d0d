"""Health scalars of the raw sensor data, for the fusion node's per-branch health gates (docs/fusion.md).

Each is a number in [0, 1] (1 = healthy) that a branch's node publishes per frame on a ``~/debug/...``
``perception_interfaces/Float64Stamped`` topic; the fusion node maps it to a gate factor between a "bad"
and a "good" threshold chosen on generated training seeds (``benchmarks/health_thresholds.py``).

LiDAR (:class:`ScanHealthMonitor`), in the sensor frame, after the range gate:

* ``point_ratio``: finite in-range points / the expected count. The expected count is ``expected_points``
  when set, else the median count of the last ``baseline_scans`` scans that were themselves healthy
  (ratio >= ``baseline_min_ratio`` and coverage >= ``baseline_min_coverage``), so one parameter set
  fits an HDL-64 (~100k points) and a VLP-16 (~25k) alike; before any baseline it is 1. Makes
  *dropout* visible (80 % of the returns lost: ratio ~0.2), and a lost sector in proportion to its share.
* ``azimuth_coverage``: share of ``azimuth_bins`` equal sectors of the spin holding at least
  ``min_points_per_bin`` points (:func:`perception_nodes.control.health.azimuth_coverage`). Makes *sector
  loss* visible whatever the point count (a 120 deg sector: ~0.67), and a whole-spin loss (0).
* ``health = min(point_ratio, azimuth_coverage)`` clipped to [0, 1]: the worse of the two, since either
  alone means the branch misses part of the world. Both parts are published too, for diagnostics.

Limits: the adaptive baseline learns a sensor that starts degraded as normal (set ``expected_points``
on a vehicle whose count is known), and a scene that legitimately returns fewer points (open fields
after a street canyon) lowers the ratio; the thresholds leave room for that (clean training scenes'
ratios: docs/fusion.md).

Camera (:func:`exposure_health`): on the grey image (mean of the channels, every ``step``-th pixel),
the share of *saturated* pixels (``>= saturated_level``) and of *crushed* ones (``<= crushed_level``);
``health = 1 - saturated - crushed``, and 0 for a uniform image (grey-level std below ``min_std``: a
blacked-out or covered camera, the image-health rule the camera node had already). Sun glare saturates
a disc and its bloom, so it lowers the share; an ordinary scene has few clipped pixels. The mean level
is reported beside it (not part of the health: a dim street at dusk is not a fault).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from perception_nodes.control.health import azimuth_coverage

__all__ = ["ExposureHealth", "ScanHealth", "ScanHealthMonitor", "ScanHealthParams", "exposure_health"]


@dataclass(frozen=True)
class ScanHealthParams:
    """``scan_health.*`` of the LiDAR nodes' params (documented in perception.params.yaml)."""

    expected_points: int = 0  #: expected finite in-range points per scan; 0 = adaptive baseline
    baseline_scans: int = 20  #: scans in the adaptive baseline (median of their counts)
    baseline_min_ratio: float = 0.5  #: a scan joins the baseline only with at least this ratio ...
    baseline_min_coverage: float = 0.9  #: ... and this azimuth coverage
    azimuth_bins: int = 36  #: equal azimuth sectors of the spin
    min_points_per_bin: int = 5  #: a sector with fewer points counts as empty

    def __post_init__(self) -> None:
        if self.expected_points < 0 or self.baseline_scans < 1 or self.azimuth_bins < 1 or self.min_points_per_bin < 1:
            raise ValueError("need expected_points >= 0, baseline_scans >= 1, azimuth_bins >= 1, min_points_per_bin >= 1")
        if not (0.0 <= self.baseline_min_ratio <= 1.0 and 0.0 <= self.baseline_min_coverage <= 1.0):
            raise ValueError("baseline_min_ratio and baseline_min_coverage must lie in [0, 1]")


@dataclass(frozen=True)
class ScanHealth:
    points: int
    expected: float  #: the count the ratio is taken against (0: no baseline yet)
    point_ratio: float
    azimuth_coverage: float
    health: float  #: min(point_ratio, azimuth_coverage) in [0, 1]


class ScanHealthMonitor:
    """Judges each scan against the expected count (fixed, or the adaptive baseline it keeps)."""

    def __init__(self, params: ScanHealthParams | None = None) -> None:
        self.params = params or ScanHealthParams()
        self.counts: deque[int] = deque(maxlen=self.params.baseline_scans)

    def assess(self, points: np.ndarray) -> ScanHealth:
        """``points``: N x >= 2 finite, range-gated coordinates in the sensor frame (x forward)."""
        p = self.params
        n = int(len(points))
        cov = azimuth_coverage(np.asarray(points)[:, :2], p.azimuth_bins, p.min_points_per_bin) if n else 0.0
        if p.expected_points > 0:
            expected = float(p.expected_points)
        else:
            expected = float(np.median(self.counts)) if self.counts else 0.0
        ratio = n / expected if expected > 0 else (1.0 if n else 0.0)
        if p.expected_points == 0 and ratio >= p.baseline_min_ratio and cov >= p.baseline_min_coverage and n:
            self.counts.append(n)
        health = float(min(1.0, max(0.0, min(ratio, cov))))
        return ScanHealth(n, expected, float(ratio), float(cov), health)


@dataclass(frozen=True)
class ExposureHealth:
    saturated: float  #: share of pixels at or above the saturated level
    crushed: float  #: share at or below the crushed level
    mean_level: float  #: mean grey level / 255
    uniform: bool
    health: float  #: 1 - saturated - crushed; 0 for a uniform image


def exposure_health(img: np.ndarray, *, saturated_level: int = 250, crushed_level: int = 5, min_std: float = 2.0,
                    step: int = 2) -> ExposureHealth:
    """Exposure of an 8-bit image (H x W or H x W x C; see module doc)."""
    a = np.asarray(img)[::step, ::step]
    grey = a.astype(np.float32) if a.ndim == 2 else a[..., :3].astype(np.float32).mean(axis=2)
    if grey.size == 0:
        return ExposureHealth(0.0, 0.0, 0.0, True, 0.0)
    uniform = float(grey.std()) < min_std
    sat = float(np.count_nonzero(grey >= saturated_level)) / grey.size
    crushed = float(np.count_nonzero(grey <= crushed_level)) / grey.size
    health = 0.0 if uniform else float(max(0.0, 1.0 - sat - crushed))
    return ExposureHealth(sat, crushed, float(grey.mean()) / 255.0, uniform, health)
