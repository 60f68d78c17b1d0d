"""Stereo depth -> Beta occupancy evidence per BEV cell (the occupancy node's grid): an inverse sensor model
for a camera, built like the LiDAR one (:mod:`perception_nodes.pipeline.occupancy`) and on its polar
look-up tables.

Inverse sensor model
--------------------
Each pixel with a depth (every ``pixel_stride``-th row and column) becomes a 3-D point in base_link (the
left optical frame's transform), at horizontal range ρ and azimuth φ from the camera's optical centre.
The ground is taken flat at ``ground_z`` (base_link sits on the road); a point's height above it makes
it *ground* (below ``obstacle_min_height``), an *obstacle* (in ``[obstacle_min_height,
obstacle_max_height]``) or *overhanging* (above: branches, signs; ignored), as the LiDAR model does.

Evidence is counted per **ray**, not per pixel: the azimuth around the camera is cut into bins (one
per ``pixel_stride`` image columns at the principal point, unless ``ray_bins`` is set) and a bin is
one ray, whatever the number of pixels in it. A near car covers thousands of pixels and a far one a
few dozen; counted per pixel, the near one would swamp the grid and the evidence would scale with the
image resolution. Every per-ray amount below is also scaled by the bin's angular width over
``reference_ray_deg`` (0.25°, the LiDAR model's bin), so a 1242-px and a 320-px camera of the same rig
give the same evidence for the same scene.

Pixels are pooled into *polar groups*: (bin, range step of one cell size). A group counts once, at the
cell of its pixels' mean position, with their mean weight ``w`` (below).

* **Occupied at the surface.** An obstacle group with at least ``min_obstacle_pixels`` pixels is a surface
  (single stray matches are not); it adds ``occupied_per_ray · w`` to its cell.
* **Free on the ground seen.** A ground group adds ``free_per_ground_hit · w`` to its cell (the road there
  was seen), scaled by ``mixed_cell_free_weight`` in cells with occupied evidence.
* **Free along the ray up to the surface.** A bin's ray ends at its first surface (or, without one, at
  the range that ``min_obstacle_pixels`` of its ground pixels reach: an order statistic, as the
  farthest single ground pixel is the likeliest outlier). Far and overhanging
  pixels never extend a ray: their lines of sight pass above whatever low object lies in between (a
  parked car whose side found no match would otherwise be called free). Cells whose
  centre lies in the bin and at least ``margin`` short of that end get ``free_per_ray`` times the cell's
  angular width in reference rays (near cells are crossed by many rays, far ones by a fraction of one),
  where ``margin = max(half a cell diagonal, free_margin_sigmas · σ_Z(end))``: free space stops short of
  a surface by its depth uncertainty. Cells with occupied evidence get no ray evidence.
* **Unknown behind.** Cells beyond a bin's first surface get no ray evidence; cells outside the field
  of view, behind the camera or seen by no valid pixel (sky, texture-less or occluded regions, the
  image's leftmost ``num_disparities`` columns) get none at all: they keep the prior (vacuity 1).

Depth error grows with Z²
-------------------------
Stereo depth has ``σ_Z = Z² σ_d / (fx B)`` (``σ_d = disparity_sigma_px``). A hit's evidence is weighted by
``w = min(1, resolution / (√(2π) σ_Z))``, about the probability that a point spread by that error lands in
its true cell (1 while ``σ_Z`` stays below 0.4 cells; then it falls as 1/Z²: KITTI at 0.25 m cells and
σ_d = 0.5 px: w = 1 to 8.8 m, 0.77 at 10 m, 0.19 at 20 m, 0.09 at 30 m). Points beyond ``max_depth_m``
give no evidence at all, and free space stops ``free_margin_sigmas · σ_Z`` short of every ray's end
(4 m short of a surface at 20 m for the 320-px demo camera, 1 m for KITTI). Both evidence amounts
are capped at ``max_evidence`` per frame.

Limits: the ground is a plane (a slope of a few percent turns far road into obstacles past 20-30 m,
where ``w`` is small anyway); stereo noise at object edges (pixels between a car and the background)
gives scattered hits, which ``min_obstacle_pixels`` and the speckle filter keep down but not away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, _cell_lut
from perception_nodes.pipeline.stereo import StereoGeometry, depth_sigma, points_from_depth

__all__ = ["StereoEvidenceParams", "StereoEvidenceStats", "stereo_evidence"]


@dataclass(frozen=True)
class StereoEvidenceParams:
    """Inverse sensor model of :func:`stereo_evidence` (see the module doc)."""

    #: Occupied evidence per ray (reference-width azimuth bin) meeting a surface in a cell.
    occupied_per_ray: float = 1.0
    #: Free evidence per ray (reference width) crossing a cell before its surface.
    free_per_ray: float = 0.2
    #: Free evidence per ray whose ground pixels lie in a cell.
    free_per_ground_hit: float = 0.2
    #: Factor on ground-hit free evidence in cells that also hold occupied evidence.
    mixed_cell_free_weight: float = 0.25
    #: Cap of each evidence amount per cell and frame.
    max_evidence: float = 10.0
    #: Obstacles: points between these heights (m) above the ground plane...
    obstacle_min_height: float = 0.3
    #: ...and this; higher ones (branches, signs) are ignored.
    obstacle_max_height: float = 2.5
    #: Height (m) of the ground plane in base_link.
    ground_z: float = 0.0
    #: Obstacle pixels a (bin, range step) group needs to count as a surface.
    min_obstacle_pixels: int = 3
    #: Pixels used: every n-th row and column (the matching itself is at full resolution).
    pixel_stride: int = 2
    #: Azimuth bins around the camera; 0 = one per ``pixel_stride`` columns at the principal point.
    ray_bins: int = 0
    #: Angular width (deg) of the reference ray the per-ray amounts are given for.
    reference_ray_deg: float = 0.25
    #: Points deeper than this (m) give no evidence.
    max_depth_m: float = 40.0
    #: Matching error (px, one sigma) behind the depth weighting and the free-space margin.
    disparity_sigma_px: float = 0.5
    #: Free space stops this many depth sigmas short of a ray's end.
    free_margin_sigmas: float = 2.0
    #: Points nearer than this (m, horizontally) to the camera are ignored (bonnet, mount).
    min_range_m: float = 1.0

    def __post_init__(self) -> None:
        if min(self.occupied_per_ray, self.free_per_ray, self.free_per_ground_hit, self.mixed_cell_free_weight) < 0:
            raise ValueError("evidence weights must be non-negative")
        if self.max_evidence <= 0 or self.max_depth_m <= 0 or self.reference_ray_deg <= 0:
            raise ValueError("max_evidence, max_depth_m and reference_ray_deg must be positive")
        if self.obstacle_max_height <= self.obstacle_min_height:
            raise ValueError("obstacle_max_height must exceed obstacle_min_height")
        if self.pixel_stride < 1 or self.min_obstacle_pixels < 1:
            raise ValueError("pixel_stride and min_obstacle_pixels must be >= 1")
        if self.ray_bins != 0 and self.ray_bins < 8:
            raise ValueError("ray_bins must be 0 (auto) or >= 8")
        if self.disparity_sigma_px < 0 or self.free_margin_sigmas < 0 or self.min_range_m < 0:
            raise ValueError("disparity_sigma_px, free_margin_sigmas and min_range_m must be >= 0")

    def bins_for(self, geom: StereoGeometry) -> int:
        """Azimuth bins used for a camera (see ``ray_bins``)."""
        if self.ray_bins:
            return self.ray_bins
        return max(8, int(math.ceil(2.0 * math.pi * geom.fx / self.pixel_stride)))


@dataclass(frozen=True)
class StereoEvidenceStats:
    """What went into one grid: pixels by class, rays (bins) with an end, surfaces."""

    pixels: int
    obstacle_pixels: int
    ground_pixels: int
    far_pixels: int
    rays: int
    surface_rays: int


def _weight(z: np.ndarray, geom: StereoGeometry, spec: GridSpec, p: StereoEvidenceParams) -> NDArray[np.float32]:
    sigma = depth_sigma(z, geom, p.disparity_sigma_px)
    with np.errstate(divide="ignore"):
        w = spec.resolution / (math.sqrt(2.0 * math.pi) * np.maximum(sigma, 1e-12))
    return np.minimum(w, 1.0).astype(np.float32)


def stereo_evidence(
    depth: np.ndarray,
    geom: StereoGeometry,
    base_from_optical: np.ndarray,
    spec: GridSpec | None = None,
    params: StereoEvidenceParams | None = None,
) -> tuple[BetaGrid, StereoEvidenceStats]:
    """Beta evidence of one depth map of the left camera (see the module doc).

    Args:
        depth: (H, W) metres along the optical axis; NaN, inf or <= 0 where there is none.
        geom: the pair's geometry (intrinsics of ``depth``'s pixels, baseline for the error model).
        base_from_optical: 4x4 transform from the left optical frame into base_link.
        spec: the grid (default :class:`GridSpec`()).
        params: the model (default :class:`StereoEvidenceParams`()).
    """
    spec = spec or GridSpec()
    p = params or StereoEvidenceParams()
    T = np.asarray(base_from_optical, dtype=np.float64).reshape(4, 4)
    if not np.isfinite(T).all():
        raise ValueError("base_from_optical has non-finite values")
    h_rows, w_cols = spec.shape
    n_cells = h_rows * w_cols
    sx, sy = float(T[0, 3]), float(T[1, 3])
    reach = math.hypot(spec.size_x, spec.size_y)
    if max(abs(sx), abs(sy)) > 100.0 * reach:
        raise ValueError(f"camera at {sx:g}, {sy:g} is implausibly far from a {spec.size_x:g} m grid")

    pts, _, _ = points_from_depth(depth, geom, stride=p.pixel_stride)
    n_pixels = int(pts.shape[0])
    z_opt = pts[:, 2]
    far = z_opt > p.max_depth_m
    n_far = int(np.count_nonzero(far))
    if n_far:
        pts, z_opt = pts[~far], z_opt[~far]
    # into base_link, one row of the rotation at a time (a (N, 3) @ (3, 3) product goes through BLAS,
    # whose threads fight the matcher's for the cores)
    R, t = T[:3, :3].astype(np.float32), T[:3, 3].astype(np.float32)
    px, py, pz = pts[:, 0], pts[:, 1], pts[:, 2]
    bx = R[0, 0] * px + R[0, 1] * py + R[0, 2] * pz + t[0]
    by = R[1, 0] * px + R[1, 1] * py + R[1, 2] * pz + t[1]
    hag = R[2, 0] * px + R[2, 1] * py + R[2, 2] * pz + (t[2] - np.float32(p.ground_z))
    dx, dy = bx - np.float32(sx), by - np.float32(sy)
    rng = np.hypot(dx, dy)
    keep = np.isfinite(rng) & (rng >= p.min_range_m)
    obstacle = keep & (hag >= p.obstacle_min_height) & (hag <= p.obstacle_max_height)
    ground = keep & (hag < p.obstacle_min_height)

    n_az = p.bins_for(geom)
    bin_scale = (2.0 * math.pi / n_az) / math.radians(p.reference_ray_deg)  # reference rays per bin
    range_res = np.float32(spec.resolution)
    lut_az, _, lut_rho, lut_ang, _ = _cell_lut(spec, sx, sy, n_az, float(spec.resolution))
    az = ((np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(n_az / (2.0 * np.pi))).astype(np.int64) % n_az
    n_steps = int(rng[keep].max() / range_res) + 1 if keep.any() else 1
    # polar group of a pixel: (ray, range step of one cell); evidence is counted per group, not per pixel
    key = az * n_steps + np.minimum(np.where(keep, rng, 0.0) / range_res, n_steps - 1).astype(np.int64)
    w = _weight(z_opt, geom, spec, p)

    occ = np.zeros(n_cells, np.float32)
    free = np.zeros(n_cells, np.float32)
    first = np.full(n_az, np.inf, dtype=np.float32)
    end = np.zeros(n_az, dtype=np.float32)
    n_groups = n_az * n_steps

    # --- surfaces: obstacle groups with at least min_obstacle_pixels pixels
    g_az, g_rng, g_cell, g_w = _groups(key[obstacle], bx[obstacle], by[obstacle], rng[obstacle], w[obstacle],
                                       n_groups, n_steps, p.min_obstacle_pixels, spec)
    if g_az.size:
        np.minimum.at(first, g_az, g_rng)
        inside = g_cell >= 0
        occ += np.bincount(g_cell[inside], weights=p.occupied_per_ray * bin_scale * g_w[inside],
                           minlength=n_cells).astype(np.float32)
    # --- ground seen: every ground group is evidence for its cell
    g_az, g_rng, g_cell, g_w = _groups(key[ground], bx[ground], by[ground], rng[ground], w[ground],
                                       n_groups, n_steps, 1, spec)
    if g_az.size:
        inside = g_cell >= 0
        gfree = np.bincount(g_cell[inside], weights=p.free_per_ground_hit * bin_scale * g_w[inside],
                            minlength=n_cells).astype(np.float32)
        gfree[occ > 0] *= np.float32(p.mixed_cell_free_weight)
        free += gfree
        # a ray without a surface ends at the range that min_obstacle_pixels of its ground pixels reach
        # (an order statistic: the farthest single ground pixel of a ray is its likeliest outlier)
        # (to a range step: counts per (ray, step), summed from the far end)
        per_step = np.bincount(key[ground], minlength=n_groups).reshape(n_az, n_steps)
        reach = np.cumsum(per_step[:, ::-1], axis=1, dtype=np.int32) >= p.min_obstacle_pixels
        has = reach[:, -1]
        step = (n_steps - 1) - np.argmax(reach, axis=1)
        end[has] = (step[has] + np.float32(0.5)) * range_res

    # --- rays: end at the first surface, else where the ground seen ends (above). Far pixels (beyond
    # max_depth_m) and overhanging ones do not extend a ray: their lines of sight pass above whatever is
    # low in between (a parked car whose side found no match), so they say nothing about the obstacle
    # band there; ground pixels do (the ground behind a car is hidden for hundreds of metres).
    end = np.where(np.isfinite(first), first, end)
    sigma_end = depth_sigma(end, geom, p.disparity_sigma_px).astype(np.float32)
    margin = np.maximum(np.float32(spec.resolution * math.sqrt(0.5)), np.float32(p.free_margin_sigmas) * sigma_end)
    reach_free = end - margin
    traversed = (lut_rho < reach_free[lut_az]) & (lut_rho >= np.float32(p.min_range_m)) & (occ == 0)
    free += np.where(traversed, np.float32(p.free_per_ray * bin_scale) * lut_ang, np.float32(0.0))

    cap = np.float32(p.max_evidence)
    grid = BetaGrid(np.minimum(occ, cap).reshape(h_rows, w_cols), np.minimum(free, cap).reshape(h_rows, w_cols), spec)
    stats = StereoEvidenceStats(pixels=n_pixels, obstacle_pixels=int(obstacle.sum()),
                                ground_pixels=int(ground.sum()), far_pixels=n_far,
                                rays=int(np.count_nonzero(end > 0)), surface_rays=int(np.isfinite(first).sum()))
    return grid, stats


def _groups(key: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.ndarray, w: np.ndarray, n_groups: int,
            n_steps: int, min_pixels: int, spec: GridSpec) -> tuple[np.ndarray, ...]:
    """Pixels pooled per polar group (``key`` = ray * n_steps + range step): for the groups with at least
    ``min_pixels`` pixels, their ray, mean range, grid cell of the mean position (-1 outside the grid) and
    mean weight. Dense bincounts: no sort."""
    n = np.bincount(key, minlength=n_groups)
    gid = np.flatnonzero(n >= min_pixels)
    cnt = n[gid].astype(np.float64)
    slot = np.full(n_groups, -1, dtype=np.int64)  # group -> its index among the kept ones (compact sums)
    slot[gid] = np.arange(gid.size)
    pix = slot[key]
    kept = pix >= 0
    if not kept.all():
        pix, x, y, rng, w = pix[kept], x[kept], y[kept], rng[kept], w[kept]
    mean = [np.bincount(pix, weights=v, minlength=gid.size) / cnt for v in (x, y, rng, w)]
    row, col, inside = spec.cell_index(mean[0], mean[1])
    cell = np.where(inside, row * spec.width + col, -1)
    return gid // n_steps, mean[2].astype(np.float32), cell, mean[3]
