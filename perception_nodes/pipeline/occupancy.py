"""Evidential BEV occupancy from one LiDAR scan: a ray-cast inverse sensor model producing Beta opinions.

Every grid cell holds two evidence amounts (see :mod:`perception_nodes.evidential.beta`): ``occupied``
(r) and ``free`` (s). A cell's opinion is Beta(r + 1, s + 1): expected occupancy ``(r + 1) / (r + s + 2)``,
vacuity ``2 / (r + s + 2)``; a cell nothing was learnt about has r = s = 0 (vacuity 1, probability 1/2).
Evidence from several scans or sensors fuses by addition (cumulative fusion).

Inverse sensor model, in bird's-eye view around ``sensor_origin`` (x, y; z is not used):

* Each finite return is one of: *ground* (``ground_mask``), *obstacle* (not ground and its height above
  the local ground within ``[obstacle_min_height, obstacle_max_height]``), *low* (not ground but below the
  band: treated like ground), or *overhanging* (above the band: branches, signs, bridges — ignored).
* **Hits.** An obstacle return adds ``occupied_per_hit`` to its cell; a ground/low return adds
  ``free_per_ground_hit`` to its cell (the surface there was seen to be drivable), scaled by
  ``mixed_cell_free_weight`` in cells that also hold obstacle returns (a cell is occupied if any part of
  it is: the ground beside a car's bumper in the same cell is weak evidence against it).
* **Free space along rays (polar ray casting).** Returns are binned by azimuth (``azimuth_bins`` around
  the sensor). Per azimuth bin the ray-cast limit is the range of the *first obstacle* return — or, with no
  obstacle in the bin, of the farthest ground/low return — and is further limited by the first obstacle of
  the ``±shadow_dilation_bins`` neighbouring bins so the shadow of an object is not leaked through
  between bins. A cell whose centre lies at range ρ < limit − ``free_margin`` in its centre's azimuth bin
  was traversed; it receives ``free_per_ray`` times the estimated number of rays crossing it: the rays of
  its azimuth bin that end beyond it, scaled by the cell's angular width over the bin width (near cells
  are crossed by many bins' rays, far cells by a fraction of one). Cells containing an obstacle hit get no
  free evidence from rays (a ray ends there).
* **Shadows.** Cells beyond the first obstacle of their azimuth bin get no ray evidence: they stay unknown
  (vacuity 1) unless a return lands in them directly (e.g. ground seen over a low object, or the wall
  behind a car).
* Both evidence amounts are capped at ``max_evidence`` per scan.

Exactness and limits: cells are assigned to the azimuth bin of their centre (a lookup table per grid and
sensor position, cached), so shadows are resolved to about one azimuth bin (0.25° by default, 4 cm at
10 m) plus the dilation; returns are binned exactly into cells. The model is conservative: the first
obstacle return of a bin ends free space for every laser of that bin, also for upper beams that passed
over a low object (only their own hit cells count beyond it), and a single stray obstacle return casts a
thin shadow. Free space needs returns in a cell's own azimuth bin, which a dense 360° scan provides
everywhere; a sparse synthetic cloud (a few points) marks free only the cells its bins pass through.
Self-hits on the ego vehicle cast shadows too: filter them (``ego_box``). Pure numpy: about 10–15 ms for
a 120k-point scan on an 80 m × 80 m grid at 0.25 m (one core).

Grid layout (same as ``nav_msgs/OccupancyGrid``): arrays are (H, W) = (rows, columns); row index follows
+y and column index follows +x; row 0 is the lowest y, column 0 the lowest x. ``GridSpec.origin`` is the
base_link (x, y) of the lower-left (min x, min y) corner of cell (0, 0). Flattened row-major, the arrays
are the message's ``data`` order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perception_nodes.evidential.beta import expected_probability, vacuity
from perception_nodes.pipeline.self_returns import in_footprint

__all__ = [
    "BetaGrid",
    "GridSpec",
    "OccupancyParams",
    "evidential_occupancy",
    "to_occupancy_msg_data",
]


@dataclass(frozen=True)
class GridSpec:
    """Geometry of a BEV grid in base_link.

    ``origin`` is the (x, y) of the lower-left corner of cell (0, 0) (the corner with the lowest x and
    y, as ``nav_msgs/MapMetaData.origin``); ``None`` (the default) centres the grid on the base_link
    origin, i.e. ``(-size_x / 2, -size_y / 2)``. Default: 80 m × 80 m at 0.25 m → 320 × 320 cells.
    """

    resolution: float = 0.25
    size_x: float = 80.0
    size_y: float = 80.0
    origin: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (self.resolution > 0 and self.size_x > 0 and self.size_y > 0):
            raise ValueError("resolution and sizes must be positive")
        if self.origin is None:
            object.__setattr__(self, "origin", (-self.size_x / 2.0, -self.size_y / 2.0))
        else:
            object.__setattr__(self, "origin", (float(self.origin[0]), float(self.origin[1])))

    @property
    def width(self) -> int:
        """Number of columns (cells along x)."""
        return int(round(self.size_x / self.resolution))

    @property
    def height(self) -> int:
        """Number of rows (cells along y)."""
        return int(round(self.size_y / self.resolution))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) = (height, width)."""
        return self.height, self.width

    def cell_centers(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(H, W) arrays of the base_link x and y of every cell centre."""
        ox, oy = self.origin  # type: ignore[misc]
        xs = ox + (np.arange(self.width) + 0.5) * self.resolution
        ys = oy + (np.arange(self.height) + 0.5) * self.resolution
        return np.meshgrid(xs, ys)

    def cell_index(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        """(row, col, inside) of base_link points; row/col are only meaningful where ``inside``.

        The test runs in floating point before any integer cast, so absurd or non-finite coordinates are
        simply outside (an integer cast of 1e30 would wrap around and could land inside)."""
        ox, oy = self.origin  # type: ignore[misc]
        with np.errstate(over="ignore", invalid="ignore"):
            fc = np.floor((np.asarray(x, np.float64) - ox) / self.resolution)
            fr = np.floor((np.asarray(y, np.float64) - oy) / self.resolution)
            inside = (fc >= 0) & (fc < self.width) & (fr >= 0) & (fr < self.height)
        col = np.where(inside, fc, -1).astype(np.int64)
        row = np.where(inside, fr, -1).astype(np.int64)
        return row, col, inside


@dataclass(frozen=True)
class OccupancyParams:
    """Inverse-sensor-model weights and geometry of :func:`evidential_occupancy` (evidence per scan)."""

    #: Occupied evidence a cell gets per obstacle return inside it.
    occupied_per_hit: float = 1.0
    #: Free evidence a cell gets per ground (or low) return inside it.
    free_per_ground_hit: float = 0.5
    #: Factor on that ground-hit evidence in cells that also hold obstacle hits. A cell is occupied when
    #: any part of it is, so ground seen beside an object in the same cell says little against it; a
    #: factor above 0 still lets many ground hits outvote a single stray obstacle return.
    mixed_cell_free_weight: float = 0.25
    #: Free evidence a traversed cell gets per ray crossing it.
    free_per_ray: float = 0.2
    #: Cap of each evidence amount per cell and scan (keeps one scan from swamping later fusion).
    max_evidence: float = 20.0
    #: Non-ground returns at least this high (m) above the local ground are obstacles...
    obstacle_min_height: float = 0.2
    #: ...and at most this high (m); higher ones (branches, signs) are ignored.
    obstacle_max_height: float = 2.5
    #: Azimuth bins of the polar ray casting (1440 → 0.25°).
    azimuth_bins: int = 1440
    #: Each bin's free-space limit is also capped by the first obstacle of ± this many neighbour bins.
    shadow_dilation_bins: int = 1
    #: A cell is traversed if its centre is this much (m) short of the limit; None → half a cell diagonal.
    free_margin: float | None = None
    #: Range resolution (m) of the ray counting; None → the grid resolution.
    range_resolution: float | None = None
    #: Returns closer than this (m, horizontally) to the sensor are ignored (sensor mount, ego roof).
    min_return_range: float = 1.0
    #: Optional ego footprint (x_min, x_max, y_min, y_max) in base_link: returns inside it are ignored
    #: (self-hits on the vehicle body would otherwise cast shadows). None or all zeros: no ego filter.
    ego_box: tuple[float, float, float, float] | None = None
    #: Block size (m) of the ground-height map used when no per-point height is passed in.
    ground_block: float = 2.0
    #: Ground height (m) assumed where no ground return is near (base_link sits on the ground).
    origin_ground_z: float = 0.0

    def __post_init__(self) -> None:
        weights = (self.occupied_per_hit, self.free_per_ground_hit, self.free_per_ray)
        if min(*weights, self.mixed_cell_free_weight) < 0:
            raise ValueError("evidence weights must be non-negative")
        if self.max_evidence <= 0 or self.azimuth_bins < 8 or self.shadow_dilation_bins < 0:
            raise ValueError("max_evidence > 0, azimuth_bins >= 8, shadow_dilation_bins >= 0")
        if self.obstacle_max_height <= self.obstacle_min_height:
            raise ValueError("obstacle_max_height must exceed obstacle_min_height")


@dataclass(frozen=True, eq=False)
class BetaGrid:
    """Per-cell Beta opinions as evidence: ``occupied`` (r) and ``free`` (s), (H, W) float32.

    Row index follows +y (row 0 = lowest y), column index +x, as ``nav_msgs/OccupancyGrid``.
    """

    occupied: NDArray[np.float32]
    free: NDArray[np.float32]
    spec: GridSpec

    def probability(self) -> NDArray[np.float32]:
        """Expected occupancy ``(r + 1) / (r + s + 2)``."""
        return expected_probability(self.occupied, self.free)

    def vacuity(self) -> NDArray[np.float32]:
        """Vacuity ``2 / (r + s + 2)``; 1 where the scan told nothing."""
        return vacuity(self.occupied, self.free)


@functools.lru_cache(maxsize=8)
def _cell_lut(
    spec: GridSpec, sx: float, sy: float, n_az: int, range_res: float
) -> tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.float32], NDArray[np.float32], int]:
    """Per cell (flattened row-major): azimuth bin, range bin, range ρ of its centre from the sensor, and
    the ratio of its angular width to an azimuth bin's; plus the number of range bins."""
    cx, cy = spec.cell_centers()
    dx, dy = cx.ravel() - sx, cy.ravel() - sy
    rho = np.hypot(dx, dy)
    az = ((np.arctan2(dy, dx) + np.pi) * (n_az / (2.0 * np.pi))).astype(np.int32) % n_az
    n_rng = int(math.ceil(rho.max() / range_res)) + 2
    rbin = np.minimum((rho / range_res).astype(np.int32), n_rng - 1)
    ang = ((spec.resolution / np.maximum(rho, spec.resolution)) / (2.0 * np.pi / n_az)).astype(np.float32)
    rho = rho.astype(np.float32)
    for a in (az, rbin, rho, ang):
        a.setflags(write=False)  # shared between calls through the cache
    return az, rbin, rho, ang, n_rng


def _height_from_ground_points(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, ground: np.ndarray, spec: GridSpec, p: OccupancyParams
) -> NDArray[np.float32]:
    """Height above a coarse ground map: mean z of the ground returns per ``ground_block`` block, holes
    filled from neighbouring blocks (a few 3 × 3 passes), ``origin_ground_z`` where nothing is near."""
    block = p.ground_block
    ox, oy = spec.origin  # type: ignore[misc]
    nbx = max(1, int(math.ceil(spec.size_x / block)))
    nby = max(1, int(math.ceil(spec.size_y / block)))
    # clip in floating point, then cast: no integer wrap-around for far-away points
    bx = np.clip(np.floor((x - ox) / block), 0, nbx - 1).astype(np.int64)
    by = np.clip(np.floor((y - oy) / block), 0, nby - 1).astype(np.int64)
    bid = by * nbx + bx
    n = np.bincount(bid[ground], minlength=nbx * nby).reshape(nby, nbx).astype(np.float64)
    s = np.bincount(bid[ground], weights=z[ground], minlength=nbx * nby).reshape(nby, nbx)
    known = n > 0
    zmap = np.where(known, s / np.maximum(n, 1), 0.0)
    for _ in range(4):
        if known.all():
            break
        kp = np.pad(known.astype(np.float64), 1)
        zp = np.pad(zmap * known, 1)
        ksum = sum(kp[i : i + nby, j : j + nbx] for i in range(3) for j in range(3))
        zsum = sum(zp[i : i + nby, j : j + nbx] for i in range(3) for j in range(3))
        fill = ~known & (ksum > 0)
        zmap = np.where(fill, zsum / np.maximum(ksum, 1), zmap)
        known = known | fill
    zmap = np.where(known, zmap, p.origin_ground_z)
    return (z - zmap[by, bx]).astype(np.float32)


def evidential_occupancy(
    points: np.ndarray,
    ground_mask: np.ndarray,
    sensor_origin: np.ndarray | tuple[float, float, float] = (0.0, 0.0, 0.0),
    spec: GridSpec | None = None,
    params: OccupancyParams | None = None,
    *,
    height_above_ground: np.ndarray | None = None,
) -> BetaGrid:
    """Evidential BEV occupancy of one scan (see the module docstring for the inverse sensor model).

    Args:
        points: (N, >=3) returns in base_link (z up, origin on the ground); non-finite rows are ignored.
        ground_mask: (N,) bool from :func:`perception_nodes.pipeline.ground.segment_ground`.
        sensor_origin: (3,) sensor position in base_link; only x and y are used.
        spec: grid geometry (default :class:`GridSpec`()).
        params: evidence weights (default :class:`OccupancyParams`()).
        height_above_ground: optional (N,) height of each point above the local ground, e.g.
            ``estimate_ground(points).height``; without it a coarse ground map is built from the
            ground returns.

    Returns:
        :class:`BetaGrid` with (H, W) float32 ``occupied`` and ``free`` evidence.
    """
    spec = spec or GridSpec()
    p = params or OccupancyParams()
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got shape {pts.shape}")
    gmask = np.asarray(ground_mask, dtype=bool).reshape(-1)
    if gmask.shape[0] != pts.shape[0]:
        raise ValueError(f"ground_mask has {gmask.shape[0]} entries for {pts.shape[0]} points")
    origin = np.asarray(sensor_origin, dtype=np.float64).reshape(-1)
    if origin.shape[0] != 3 or not np.all(np.isfinite(origin)):
        raise ValueError("sensor_origin must be 3 finite numbers")
    reach = math.hypot(spec.size_x, spec.size_y)
    if np.abs(origin[:2]).max() > 100.0 * reach:  # its ray-casting tables would be absurdly large
        raise ValueError(f"sensor_origin {origin[:2].tolist()} is implausibly far from a {spec.size_x:g} m grid")
    sx, sy = float(origin[0]), float(origin[1])

    with np.errstate(over="ignore", invalid="ignore"):
        return _evidential_occupancy(pts, gmask, sx, sy, spec, p, height_above_ground)


def _evidential_occupancy(
    pts: np.ndarray,
    gmask: np.ndarray,
    sx: float,
    sy: float,
    spec: GridSpec,
    p: OccupancyParams,
    height_above_ground: np.ndarray | None,
) -> BetaGrid:
    h_rows, w_cols = spec.shape
    n_cells = h_rows * w_cols
    x = pts[:, 0].astype(np.float32, copy=False)
    y = pts[:, 1].astype(np.float32, copy=False)
    z = pts[:, 2].astype(np.float32, copy=False)
    dx, dy = x - np.float32(sx), y - np.float32(sy)
    rng = np.hypot(dx, dy)
    # a finite range too: coordinates near float32's limit overflow it, and nothing binned by range
    # (cells, range bins) may ever see an infinite or wrapped-around integer index
    valid = np.isfinite(rng) & np.isfinite(z) & (rng >= p.min_return_range)
    if p.ego_box is not None and any(p.ego_box):  # [0, 0, 0, 0]: off (a ROS list parameter cannot be empty)
        valid &= ~in_footprint(x, y, p.ego_box)
    if height_above_ground is not None:
        hag_all = np.asarray(height_above_ground, dtype=np.float32).reshape(-1)
        if hag_all.shape[0] != pts.shape[0]:
            raise ValueError("height_above_ground must have one entry per point")
        valid &= np.isfinite(hag_all)
    if not valid.all():
        keep = np.flatnonzero(valid)
        x, y, z, dx, dy, rng, gmask = x[keep], y[keep], z[keep], dx[keep], dy[keep], rng[keep], gmask[keep]
        if height_above_ground is not None:
            hag_all = hag_all[keep]
    if height_above_ground is not None:
        hag = hag_all
    else:
        hag = _height_from_ground_points(x, y, z, gmask, spec, p)

    obstacle = ~gmask & (hag >= p.obstacle_min_height) & (hag <= p.obstacle_max_height)
    free_ret = gmask | (hag < p.obstacle_min_height)
    travel = obstacle | free_ret

    # --- hits binned into cells
    row, col, inside = spec.cell_index(x, y)
    cell = row * w_cols + col
    occ = p.occupied_per_hit * np.bincount(cell[inside & obstacle], minlength=n_cells).astype(np.float32)
    free = p.free_per_ground_hit * np.bincount(cell[inside & free_ret], minlength=n_cells).astype(np.float32)
    free[occ > 0] *= np.float32(p.mixed_cell_free_weight)

    # --- polar ray casting
    n_az = p.azimuth_bins
    range_res = p.range_resolution or spec.resolution
    lut_az, lut_rbin, lut_rho, lut_ang, n_rng = _cell_lut(spec, sx, sy, n_az, float(range_res))
    az = ((np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(n_az / (2.0 * np.pi))).astype(np.int32)
    az %= n_az
    first_obstacle = np.full(n_az, np.inf, dtype=np.float32)
    np.minimum.at(first_obstacle, az[obstacle], rng[obstacle])
    farthest_free = np.zeros(n_az, dtype=np.float32)
    np.maximum.at(farthest_free, az[free_ret], rng[free_ret])
    limit = np.where(np.isfinite(first_obstacle), first_obstacle, farthest_free)
    for d in range(1, p.shadow_dilation_bins + 1):
        limit = np.minimum(limit, np.minimum(np.roll(first_obstacle, d), np.roll(first_obstacle, -d)))
    # rays per (azimuth bin, range bin) that end strictly beyond that range bin: histogram the ray ends with
    # the range axis reversed, so that a forward (contiguous) cumulative sum counts from far to near
    rev = (n_rng - 1) - np.minimum(rng[travel] / np.float32(range_res), np.float32(n_rng - 1)).astype(np.int64)
    ends = np.bincount(az[travel].astype(np.int64) * n_rng + rev, minlength=n_az * n_rng)
    ends = ends.astype(np.int32).reshape(n_az, n_rng)
    beyond_rev = np.cumsum(ends, axis=1, dtype=np.int32) - ends
    margin = p.free_margin if p.free_margin is not None else spec.resolution * math.sqrt(0.5)
    traversed = (lut_rho < limit[lut_az] - np.float32(margin)) & (occ == 0)
    rays = beyond_rev[lut_az, (n_rng - 1) - lut_rbin].astype(np.float32) * lut_ang
    free += np.where(traversed, np.float32(p.free_per_ray) * rays, np.float32(0.0))

    cap = np.float32(p.max_evidence)
    return BetaGrid(
        occupied=np.minimum(occ, cap).reshape(h_rows, w_cols),
        free=np.minimum(free, cap).reshape(h_rows, w_cols),
        spec=spec,
    )


def to_occupancy_msg_data(
    grid: BetaGrid, unknown_vacuity: float = 0.9
) -> tuple[NDArray[np.int8], NDArray[np.int8]]:
    """(H, W) int8 arrays for ``nav_msgs/OccupancyGrid.data``: occupancy probability and vacuity.

    ``prob`` is ``round(100 · (r + 1) / (r + s + 2))`` in 0..100, and −1 (unknown) where the cell has no
    evidence at all (vacuity exactly 1) or its vacuity exceeds ``unknown_vacuity`` (default 0.9, i.e. less
    than 2/9 evidence in total; pass 1.0 to mark only evidence-free cells unknown). ``vacuity`` is
    ``round(100 · 2 / (r + s + 2))`` in 0..100 (100 = nothing known), never −1. Flatten row-major
    (``.ravel()``) for the message: row 0 is the lowest y, as the message expects.
    """
    if not 0.0 <= unknown_vacuity <= 1.0:
        raise ValueError("unknown_vacuity must lie in [0, 1]")
    r, s = grid.occupied, grid.free
    prob = np.rint(100.0 * expected_probability(r, s)).astype(np.int8)
    u = vacuity(r, s)
    prob[((r + s) <= 0) | (u > unknown_vacuity)] = -1
    vac = np.rint(100.0 * u).astype(np.int8)
    return prob, vac
