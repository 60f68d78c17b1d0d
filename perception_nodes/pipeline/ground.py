"""Ground segmentation of a 360° LiDAR scan: polar grid, per-bin ground seeds, slope-limited propagation.

The input is a point cloud in ``base_link`` (x forward, y left, z up, REP 103) whose origin lies on the
ground below the sensor, so the ground height at the origin is ``params.origin_ground_z`` (0 by default).
For KITTI that means ``z_base = z_velodyne + 1.73``.

Method (our own design, in the family of ray-ground filters and Patchwork's concentric zones):

1. **Polar grid.** Points are binned into ``num_sectors`` azimuth sectors × range rings (ring width grows
   with range, :attr:`GroundParams.ring_zones`). Per bin: the lowest ``z`` and the mean range and height of
   its *seed* points (those within ``seed_band`` of the lowest one) — the bin's ground candidate — unless
   the seeds are upright (spread vertically along a steep axis: the bottom of a wall or car face seen
   head-on, a test in the spirit of Patchwork's uprightness check).
2. **Outward propagation, ring by ring, all sectors at once.** Each sector carries a reference ground
   height (initially ``origin_ground_z`` at range 0). A bin's candidate is accepted when it lies within
   ``step_tolerance + tan(max_slope_deg) * Δr`` of the sector's reference, Δr being the distance to the
   reference (capped at ``max_gap``): the ground may rise or fall at most at that grade, plus a step
   (curbs, noise). Bins whose lowest points are car bodies, walls or vegetation jump more and are rejected.
3. **Lateral consistency.** An accepted candidate is compared with the accepted candidates of the
   neighbouring ``±lateral_window`` sectors in the same ring, in two ways: with their median ground level,
   and with the sector's own reference continued at the neighbours' median grade (which does not drift
   when the ground slopes sideways). It is rejected when it is more than ``lateral_tolerance`` off in both.
   A bin without an accepted candidate continues its sector's reference at the neighbours' median grade
   when enough neighbours support it (so a sector occluded by a car keeps following the slope its
   neighbours see), otherwise flat.
4. **Classification.** Each sector's ground profile is piecewise linear in range through its knots (an
   accepted bin's knot sits at its seeds' mean range and height, so sparse far rings are not biased;
   a filled bin's knot sits at the ring centre); a point's local ground blends the profiles of its two
   nearest sectors linearly in azimuth (wrapping around). A point at most ``ground_threshold`` above
   that local ground is ground; points below it are ground too (they cannot be obstacles).

Non-finite points, and points so far away that their range overflows float32, are never ground (their
height is NaN). The method has no randomness, so it is
deterministic. Pure numpy: about 15 ms for a 120k-point HDL-64 scan on one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["SPARSE_LIDAR_PARAMS", "GroundEstimate", "GroundParams", "estimate_ground", "segment_ground"]


@dataclass(frozen=True)
class GroundParams:
    """Parameters of :func:`segment_ground`.

    Defaults suit a roof-mounted 64-beam 360° LiDAR on a car (KITTI HDL-64E, 1.73 m above the road). For
    sparse 16/32-beam sensors, whose ground rings lie many metres apart, use coarser rings and let the
    grade allowance span the gaps, e.g. ``ring_zones=((0, 2), (20, 4), (40, 8)), max_gap=30`` (see
    :data:`SPARSE_LIDAR_PARAMS`); with the defaults they lose ramps beyond ~30 m.
    """

    #: Azimuth sectors of the polar grid (180 → 2° each).
    num_sectors: int = 180
    #: Range rings as (start range m, ring width m) zones, in increasing start order; the first zone
    #: must start at 0. Default: 1 m rings to 20 m, 2 m rings to 40 m, 4 m rings beyond.
    ring_zones: tuple[tuple[float, float], ...] = ((0.0, 1.0), (20.0, 2.0), (40.0, 4.0))
    #: Outer edge of the last ring (m); points farther away fall into the last ring.
    max_range: float = 120.0
    #: A bin's ground seeds are its points within this height (m) above its lowest point.
    seed_band: float = 0.15
    #: A bin needs at least this many points to propose a ground candidate.
    min_bin_points: int = 2
    #: Steepest ground grade (deg) followed between rings, relative to the vehicle's own plane.
    max_slope_deg: float = 10.0
    #: A bin whose seeds spread vertically by more than this std (m) along an axis steeper than
    #: ``max_slope_deg`` in the range-height plane is an object's face, not ground (uprightness test).
    vertical_seed_std: float = 0.03
    #: Height step (m) allowed on top of the grade (curbs, sensor noise, seed bias).
    step_tolerance: float = 0.15
    #: The grade allowance stops growing after this many metres without an accepted bin (occlusion).
    max_gap: float = 8.0
    #: Lateral window: ± this many neighbouring sectors vote on a ring's ground height.
    lateral_window: int = 3
    #: An accepted candidate farther than this (m) from the lateral median is rejected.
    lateral_tolerance: float = 0.3
    #: Accepted neighbours (including the sector itself) needed for a lateral median to count.
    min_lateral_support: int = 2
    #: Points at most this high (m) above the local ground are ground.
    ground_threshold: float = 0.2
    #: Ground height (m) at the base_link origin (0: base_link sits on the ground).
    origin_ground_z: float = 0.0

    def __post_init__(self) -> None:
        if self.num_sectors < 3:
            raise ValueError("num_sectors must be at least 3")
        if not self.ring_zones or self.ring_zones[0][0] != 0.0:
            raise ValueError("ring_zones must start at range 0")
        starts = [z[0] for z in self.ring_zones]
        if any(b <= a for a, b in zip(starts, starts[1:])) or any(w <= 0 for _, w in self.ring_zones):
            raise ValueError("ring_zones need increasing starts and positive widths")
        if self.max_range <= starts[-1]:
            raise ValueError("max_range must lie beyond the last zone start")
        if not 0.0 <= self.max_slope_deg < 90.0:
            raise ValueError("max_slope_deg must lie in [0, 90)")
        if self.lateral_window < 0 or self.min_bin_points < 1 or self.min_lateral_support < 1:
            raise ValueError("lateral_window >= 0, min_bin_points >= 1, min_lateral_support >= 1")

    def ring_edges(self) -> NDArray[np.float64]:
        """Ring edges (m), from 0 to ``max_range``."""
        edges: list[float] = []
        zones = list(self.ring_zones) + [(self.max_range, 0.0)]
        for (start, width), (end, _) in zip(zones, zones[1:]):
            n = max(1, int(math.ceil((min(end, self.max_range) - start) / width - 1e-9)))
            edges.extend(start + width * np.arange(n))
        edges.append(self.max_range)
        return np.asarray(edges, dtype=np.float64)


#: Suggested parameters for 16/32-beam sensors (VLP-16, HDL-32E): coarser rings, longer gap allowance.
SPARSE_LIDAR_PARAMS = GroundParams(ring_zones=((0.0, 2.0), (20.0, 4.0), (40.0, 8.0)), max_gap=30.0)


@dataclass(frozen=True)
class GroundEstimate:
    """Result of :func:`estimate_ground`."""

    #: (N,) True where the point is ground; False for non-finite points.
    mask: NDArray[np.bool_]
    #: (N,) float32 height of each point above the local ground estimate (m); NaN for non-finite points.
    height: NDArray[np.float32]
    #: (num_sectors, rings) float32 ground height of each polar bin's knot (sector 0 starts at azimuth -π).
    ground_map: NDArray[np.float32]
    #: (num_sectors, rings) float32 range (m) of each knot: where the bin's accepted ground seeds lie, or
    #: the ring centre for a bin whose ground was filled in.
    knot_range: NDArray[np.float32]
    #: (num_sectors, rings) True where the bin's own seeds were accepted as ground (not interpolated).
    observed: NDArray[np.bool_]
    #: (rings + 1,) ring edges (m).
    ring_edges: NDArray[np.float64]


def _as_xyz(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got shape {pts.shape}")
    return (
        pts[:, 0].astype(np.float32, copy=False),
        pts[:, 1].astype(np.float32, copy=False),
        pts[:, 2].astype(np.float32, copy=False),
    )


def _segments(knot_z: np.ndarray, knot_r: np.ndarray) -> np.ndarray:
    """Per bin, the lines ``z = a + b r`` of its profile to the previous and to the next knot, as a
    (sectors · rings, 4) float32 array ``[a_prev, b_prev, a_next, b_next]``; flat beyond the end knots."""
    n_sec, n_ring = knot_z.shape
    zp = np.concatenate([knot_z[:, :1], knot_z], axis=1)  # zp[:, k] = knot k-1 (k = 0: knot 0 itself)
    rp = np.concatenate([knot_r[:, :1] - 1.0, knot_r], axis=1)
    zn = np.concatenate([knot_z, knot_z[:, -1:]], axis=1)  # zn[:, k + 1] = knot k+1 (last: itself)
    rn = np.concatenate([knot_r, knot_r[:, -1:] + 1.0], axis=1)
    out = np.empty((n_sec, n_ring, 4), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_prev = (zp[:, 1:] - zp[:, :-1]) / (rp[:, 1:] - rp[:, :-1])
        b_next = (zn[:, 1:] - zn[:, :-1]) / (rn[:, 1:] - rn[:, :-1])
    b_prev = np.where(np.isfinite(b_prev), b_prev, 0.0)
    b_next = np.where(np.isfinite(b_next), b_next, 0.0)
    out[..., 0] = knot_z - b_prev * knot_r
    out[..., 1] = b_prev
    out[..., 2] = knot_z - b_next * knot_r
    out[..., 3] = b_next
    return out.reshape(n_sec * n_ring, 4).astype(np.float32)


def _profile(seg: np.ndarray, knot_r: np.ndarray, bin_id: np.ndarray, rng: np.ndarray) -> np.ndarray:
    """Ground height of one sector's profile at each point: the segment to the previous knot for points
    in front of their bin's knot, else the segment to the next one (``bin_id`` = sector · rings + ring)."""
    flat = seg.reshape(-1)
    col = bin_id * 4 + np.where(rng < knot_r[bin_id], 0, 2)
    return flat[col] + flat[col + 1] * rng


def _window_median(values: np.ndarray, ok: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower median of ``values[ok]`` over each sector's circular window, and the number of ``ok`` in it."""
    win = np.where(ok, values, np.inf)[window]
    win.sort(axis=1)
    k = np.count_nonzero(ok[window], axis=1)
    return win[np.arange(win.shape[0]), np.maximum(k - 1, 0) // 2], k


def _propagate(
    seed_z: np.ndarray, seed_r: np.ndarray, usable: np.ndarray, centres: np.ndarray, p: GroundParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ring-by-ring outward propagation of the ground height over all sectors (steps 2 and 3).

    ``seed_z`` / ``seed_r``: (sectors, rings) mean height and mean range of each bin's seeds (NaN where
    empty); ``usable``: bins whose seeds may propose a ground candidate. Returns, per bin, a knot of the
    sector's piecewise-linear ground profile — its height and its range (where the accepted seeds lie, or
    the ring centre for a filled bin) — and whether the bin was observed. Each sector's reference is its
    last knot.
    """
    n_sec, n_ring = seed_z.shape
    g_ref = np.full(n_sec, p.origin_ground_z, dtype=np.float64)
    r_ref = np.zeros(n_sec, dtype=np.float64)
    ground = np.empty((n_sec, n_ring), dtype=np.float64)
    knot_r = np.empty((n_sec, n_ring), dtype=np.float64)
    observed = np.zeros((n_sec, n_ring), dtype=bool)
    tan_slope = math.tan(math.radians(p.max_slope_deg))
    w = p.lateral_window
    window = (np.arange(n_sec)[:, None] + np.arange(-w, w + 1)[None, :]) % n_sec
    for i in range(n_ring):
        has = usable[:, i]
        cand = np.where(has, seed_z[:, i], 0.0)
        # where the seeds lie (their mean range), at least a little beyond the reference
        r_obs = np.maximum(np.where(has, seed_r[:, i], centres[i]), r_ref + 1e-3)
        dr_obs = r_obs - r_ref
        tol = p.step_tolerance + tan_slope * np.minimum(dr_obs, p.max_gap)
        acc = has & (np.abs(cand - g_ref) <= tol)
        dr = centres[i] - r_ref  # > 0: references lie on earlier rings' centres
        if not acc.any():
            ground[:, i] = g_ref
            knot_r[:, i] = centres[i]
            continue
        # Lateral consistency, on two views of the neighbours: their ground level in this ring, and their
        # grade since their own reference (which, unlike the level, does not drift across sectors when
        # the ground slopes sideways). A candidate is an outlier only when it disagrees with both.
        grade = np.where(acc, (cand - g_ref) / dr_obs, 0.0)
        level_med, k = _window_median(cand, acc, window)
        grade_med, _ = _window_median(grade, acc, window)
        grade_med = np.clip(grade_med, -tan_slope, tan_slope)
        support = k >= p.min_lateral_support
        off_level = np.abs(cand - level_med) > p.lateral_tolerance
        off_grade = np.abs(cand - (g_ref + grade_med * dr_obs)) > p.lateral_tolerance
        acc &= ~(support & off_level & off_grade)
        # An accepted bin's knot is its seeds' mean (range, height): in sparse far rings the seeds can sit
        # anywhere in a 4 m ring, so they are not moved to the centre. A bin without an accepted candidate
        # gets a knot at its centre that continues the sector's reference at the neighbours' grade (or flat).
        value = np.where(acc, cand, np.where(support, g_ref + grade_med * dr, g_ref))
        pos = np.where(acc, r_obs, centres[i])
        ground[:, i] = value
        knot_r[:, i] = pos
        observed[:, i] = acc
        moved = acc | support
        g_ref = np.where(moved, value, g_ref)
        r_ref = np.where(moved, pos, r_ref)
    return ground, knot_r, observed


def estimate_ground(points: np.ndarray, params: GroundParams | None = None) -> GroundEstimate:
    """Ground mask plus each point's height above the local ground (see the module docstring).

    ``points``: (N, >=3) array in base_link (z up, origin on the ground below the sensor); extra columns
    (intensity, ring, …) are ignored.
    """
    p = params or GroundParams()
    x, y, z = _as_xyz(points)
    n = x.shape[0]
    edges = p.ring_edges()
    n_ring = edges.size - 1
    n_sec = p.num_sectors
    centres = 0.5 * (edges[:-1] + edges[1:])
    mask = np.zeros(n, dtype=bool)
    height = np.full(n, np.nan, dtype=np.float32)

    # finite horizontal range too: coordinates near float32's limit overflow it (never ground)
    with np.errstate(over="ignore", invalid="ignore"):
        valid = np.isfinite(np.hypot(x, y)) & np.isfinite(z)
    all_valid = bool(valid.all())
    if not all_valid:
        x, y, z = x[valid], y[valid], z[valid]
    if x.size == 0:
        ground_map = np.full((n_sec, n_ring), p.origin_ground_z, dtype=np.float32)
        knots = np.broadcast_to(centres.astype(np.float32), (n_sec, n_ring)).copy()
        return GroundEstimate(mask, height, ground_map, knots, np.zeros((n_sec, n_ring), bool), edges)

    # 1. polar binning
    rng = np.hypot(x, y)
    # sector coordinate in [0, n_sec): sector 0 starts at azimuth -pi
    u = (np.arctan2(y, x) + np.float32(np.pi)) * np.float32(n_sec / (2.0 * np.pi))
    sector = np.minimum(u.astype(np.int32), n_sec - 1)
    # ring index (edges are strictly increasing; beyond max_range: the last ring)
    ring_coord = np.interp(rng, edges, np.arange(n_ring + 1, dtype=np.float64)).astype(np.float32)
    ring = np.minimum(ring_coord.astype(np.int32), n_ring - 1)
    bin_id = sector * n_ring + ring
    n_bins = n_sec * n_ring
    count = np.bincount(bin_id, minlength=n_bins)
    zmin = np.full(n_bins, np.inf, dtype=np.float32)
    np.minimum.at(zmin, bin_id, z)
    seed = z <= zmin[bin_id] + np.float32(p.seed_band)
    seed_bins = bin_id[seed]
    seed_n = np.bincount(seed_bins, minlength=n_bins)
    seed_zsum = np.bincount(seed_bins, weights=z[seed], minlength=n_bins)
    seed_rsum = np.bincount(seed_bins, weights=rng[seed], minlength=n_bins)
    sr, sz = rng[seed].astype(np.float64), z[seed].astype(np.float64)
    seed_rr = np.bincount(seed_bins, weights=sr * sr, minlength=n_bins)
    seed_rz = np.bincount(seed_bins, weights=sr * sz, minlength=n_bins)
    seed_zz = np.bincount(seed_bins, weights=sz * sz, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_z = seed_zsum / seed_n
        mean_r = seed_rsum / seed_n
        var_r = np.maximum(seed_rr / seed_n - mean_r * mean_r, 0.0)
        var_z = np.maximum(seed_zz / seed_n - mean_z * mean_z, 0.0)
        cov_rz = seed_rz / seed_n - mean_r * mean_z
    # Uprightness (as Patchwork's): seeds that spread vertically more than sensor noise and whose principal
    # axis in the range-height plane is steeper than the steepest ground are an object's or a wall's
    # bottom edge seen face-on, not ground.
    steep_axis = 0.5 * np.arctan2(2.0 * cov_rz, var_r - var_z)
    vertical = (np.sqrt(var_z) > p.vertical_seed_std) & (
        np.abs(np.tan(steep_axis)) > math.tan(math.radians(p.max_slope_deg))
    )
    usable = ((count >= p.min_bin_points) & ~vertical).reshape(n_sec, n_ring)
    seed_z = mean_z.reshape(n_sec, n_ring)
    seed_r = mean_r.reshape(n_sec, n_ring)

    # 2.-3. propagation with lateral consistency
    ground_map, knot_r, observed = _propagate(seed_z, seed_r, usable, centres, p)

    # 4. local ground at each point: piecewise-linear in range through the knots of the two nearest
    #    sectors (by sector centre; azimuth wraps), blended linearly in azimuth
    uc = u - np.float32(0.5)
    s0f = np.floor(uc)
    fs = (uc - s0f).astype(np.float32)
    s0 = s0f.astype(np.int32) % n_sec
    s1 = (s0 + 1) % n_sec
    seg = _segments(ground_map, knot_r)
    kr = knot_r.astype(np.float32).ravel()
    g0 = _profile(seg, kr, s0 * n_ring + ring, rng)
    g1 = _profile(seg, kr, s1 * n_ring + ring, rng)
    h = z - (g0 * (1 - fs) + g1 * fs)
    ground_map = ground_map.astype(np.float32)
    is_ground = h <= np.float32(p.ground_threshold)
    if all_valid:
        mask, height = is_ground, h.astype(np.float32, copy=False)
    else:
        mask[valid] = is_ground
        height[valid] = h
    return GroundEstimate(mask, height, ground_map, knot_r.astype(np.float32), observed, edges)


def segment_ground(points: np.ndarray, params: GroundParams | None = None) -> NDArray[np.bool_]:
    """(N,) boolean mask, True where a point of the (N, >=3) base_link cloud is ground.

    Non-finite points are never ground; an empty cloud gives an empty mask. See :func:`estimate_ground`
    for the per-point height above the local ground, which :mod:`perception_nodes.pipeline.occupancy`
    can use for its obstacle height band.
    """
    return estimate_ground(points, params).mask
