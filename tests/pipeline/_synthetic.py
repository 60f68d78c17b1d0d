"""A tiny analytic spinning-LiDAR simulator for the pipeline tests: rays from a sensor against a ground
plane and axis-aligned boxes, first hit wins (so occlusion and shadows are physically right)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: HDL-64-like beam elevations (deg): 64 beams from -24.8° to +2°.
HDL64_ELEVATIONS = tuple(np.linspace(-24.8, 2.0, 64).tolist())


@dataclass(frozen=True)
class AABox:
    """Axis-aligned box by its min and max corners (x, y, z) in base_link."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def contains_xy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x >= self.lo[0]) & (x <= self.hi[0]) & (y >= self.lo[1]) & (y <= self.hi[1])


def simulate_scan(
    boxes: tuple[AABox, ...] = (),
    *,
    sensor: tuple[float, float, float] = (0.0, 0.0, 1.73),
    slope_deg: float = 0.0,
    slope_azimuth_deg: float = 0.0,
    n_azimuth: int = 1800,
    elevations_deg: tuple[float, ...] = HDL64_ELEVATIONS,
    max_range: float = 100.0,
) -> np.ndarray:
    """(N, 4) float32 points (x, y, z, intensity=0) of one revolution in base_link.

    The ground is the plane through the base_link origin rising at ``slope_deg`` towards azimuth
    ``slope_azimuth_deg`` (0: rises towards +x); boxes are placed by the caller (put their bottoms on the
    ground). Rays that hit nothing within ``max_range`` give no return.
    """
    az = np.radians(np.arange(n_azimuth) * 360.0 / n_azimuth)
    el = np.radians(np.asarray(elevations_deg))
    a, e = np.meshgrid(az, el, indexing="ij")
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    o = np.asarray(sensor, dtype=np.float64)
    t_best = np.full(d.shape[0], np.inf)

    # ground plane n·p = 0 with n = (-sin s cos φ, -sin s sin φ, cos s)
    s, phi = math.radians(slope_deg), math.radians(slope_azimuth_deg)
    n = np.array([-math.sin(s) * math.cos(phi), -math.sin(s) * math.sin(phi), math.cos(s)])
    denom = d @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -(o @ n) / denom
    t_best = np.where((denom < 0) & (t > 0), t, t_best)

    for box in boxes:
        lo, hi = np.asarray(box.lo), np.asarray(box.hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (lo - o) / d
            t2 = (hi - o) / d
        tmin = np.nanmax(np.minimum(t1, t2), axis=1)
        tmax = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (tmax >= tmin) & (tmax > 0) & (tmin > 0)
        t_best = np.where(hit & (tmin < t_best), tmin, t_best)

    keep = t_best <= max_range
    pts = o + d[keep] * t_best[keep, None]
    out = np.zeros((pts.shape[0], 4), dtype=np.float32)
    out[:, :3] = pts
    return out


def ground_height(
    x: np.ndarray, y: np.ndarray, slope_deg: float = 0.0, slope_azimuth_deg: float = 0.0
) -> np.ndarray:
    """Height of the simulated ground plane at (x, y)."""
    s, phi = math.radians(slope_deg), math.radians(slope_azimuth_deg)
    return math.tan(s) * (x * math.cos(phi) + y * math.sin(phi))
