"""Health of the LiDAR input as seen by the controller: point count and azimuth coverage of each scan.

The curvature head's variance need not react to a degraded scan (a network can be confidently wrong on
input it never saw), so the control node may also watch the scan itself. Two numbers per scan, in the
sensor frame: the finite points, and the share of ``azimuth_bins`` equal sectors holding at least
``min_points_per_bin`` of them (a blocked sector of the spin leaves its bins empty). A scan is unhealthy
when it has fewer than ``min_points`` points, fewer than ``min_point_ratio`` x the median count of the
last ``baseline_scans`` healthy scans, or a coverage below ``min_azimuth_coverage``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CloudHealthParams:
    """``health.*`` of the control node's params (0 disables a test)."""

    min_points: int = 1000
    min_point_ratio: float = 0.5
    baseline_scans: int = 20
    min_azimuth_coverage: float = 0.9
    azimuth_bins: int = 36
    min_points_per_bin: int = 5


@dataclass(frozen=True)
class CloudHealth:
    points: int
    coverage: float
    point_ratio: float  #: points / median of the recent healthy scans (1.0 before any baseline)
    reasons: tuple[str, ...]


def azimuth_coverage(xy: np.ndarray, bins: int, min_per_bin: int) -> float:
    """Share of ``bins`` equal azimuth sectors with at least ``min_per_bin`` of the points ``xy`` (N x 2)."""
    if len(xy) == 0:
        return 0.0
    az = np.arctan2(xy[:, 1], xy[:, 0])
    idx = np.minimum(((az + np.pi) * (bins / (2 * np.pi))).astype(np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    return float(np.count_nonzero(counts >= max(1, min_per_bin))) / bins


class CloudHealthMonitor:
    """Keeps the baseline of recent healthy point counts; :meth:`assess` judges one scan."""

    def __init__(self, params: CloudHealthParams) -> None:
        self.params = params
        self.counts: deque[int] = deque(maxlen=max(1, params.baseline_scans))

    def assess(self, points: np.ndarray) -> CloudHealth:
        """``points``: N x >=2 finite coordinates in the sensor frame."""
        p = self.params
        n = int(len(points))
        cov = azimuth_coverage(points[:, :2], p.azimuth_bins, p.min_points_per_bin) if p.azimuth_bins > 0 else 1.0
        ratio = n / float(np.median(self.counts)) if self.counts else 1.0
        reasons = []
        if p.min_points > 0 and n < p.min_points:
            reasons.append(f"LiDAR scan has {n} points < min_points {p.min_points}")
        if p.min_point_ratio > 0 and ratio < p.min_point_ratio:
            reasons.append(f"LiDAR scan has {ratio:.0%} of its usual points (< {p.min_point_ratio:.0%})")
        if p.min_azimuth_coverage > 0 and cov < p.min_azimuth_coverage:
            reasons.append(f"LiDAR azimuth coverage {cov:.0%} < {p.min_azimuth_coverage:.0%}")
        if not reasons:
            self.counts.append(n)
        return CloudHealth(n, cov, ratio, tuple(reasons))


def cloud_health(points: np.ndarray, params: CloudHealthParams | None = None) -> CloudHealth:
    """One scan judged without a baseline (convenience for tools and tests)."""
    return CloudHealthMonitor(params or CloudHealthParams()).assess(points)
