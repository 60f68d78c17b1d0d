"""Occupancy ground truth for real, box-labelled data (KITTI): boxes occupied, ground free, the rest unscored.

Real data has no occupancy grid, only 3D boxes and the LiDAR scan. A grid made from the scan with the
pipeline's own ground segmentation would be circular (it would reward the pipeline for agreeing with
itself), so the free space comes from an *independent* model of the frame:

* **Ground model**: a plane fitted by RANSAC (Fischler & Bolles 1981) to the scan's low points (z below
  the sensor by at least ``min_drop`` m, within ``fit_range`` m), with a fixed seed; then refined by least
  squares on its inliers. It is not :mod:`perception_nodes.pipeline.ground` (the scored pipeline's
  segmentation), and it uses only this frame.
* **Occupied** (visible, label 1): the cells a labelled box's BEV footprint overlaps, for boxes with at
  least ``min_box_points`` LiDAR returns inside them (a box the sensor did not see is not scored).
* **Free** (visible, label 0): cells outside every box (grown by ``box_margin``) that hold at least one
  return within ``ground_tol`` of the plane and none between ``obstacle_low`` and ``obstacle_high`` above it.
* **Not scored**: everything else: cells with above-ground returns outside the boxes (buildings,
  vegetation, unlabelled objects: KITTI labels only some classes), cells without returns, and
  everything outside the labelled camera's field of view (``fov_half_deg`` about +x; KITTI labels only
  objects in the left colour camera's view) or beyond ``max_range``.

Limits, stated in the report: the plane assumes locally flat ground (slopes and curbs beyond
``ground_tol`` read as "not scored", never as free); free space is only claimed where a return landed
(no ray-casting through the free space between sensor and ground return), so scored free cells are
sparser than the truth; label noise of the boxes carries over; the scan and boxes are taken to share
base_link's x/y axes and origin (true for KITTI's rig: the Velodyne sits 1.73 m straight above it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from perception_nodes.boxes import Box3D
from perception_nodes.scenario.truth import footprint_cells

__all__ = ["GroundPlane", "RealTruthParams", "fit_ground_plane", "real_occupancy_truth", "LIMITS"]

LIMITS = ("ground from a per-frame RANSAC plane: sloped ground or curbs are not scored as free; "
          "free claimed only where a ground return landed; unlabelled obstacles (buildings, vegetation, "
          "classes KITTI does not label) are not scored; only the labelled camera's field of view; "
          "box label noise carries over")


@dataclass(frozen=True)
class RealTruthParams:
    """Thresholds of :func:`real_occupancy_truth` (metres, degrees)."""

    sensor_height: float = 1.73
    min_drop: float = 1.0
    fit_range: float = 30.0
    ransac_iterations: int = 200
    ransac_tol: float = 0.12
    ground_tol: float = 0.2
    obstacle_low: float = 0.3
    obstacle_high: float = 2.5
    box_margin: float = 0.5
    min_box_points: int = 5
    fov_half_deg: float = 40.0
    max_range: float = 40.0
    seed: int = 0


@dataclass(frozen=True)
class GroundPlane:
    """``n · p + d = 0`` with ``n`` a unit normal pointing up; height of ``p`` above it = ``n · p + d``."""

    normal: np.ndarray
    d: float
    inliers: int

    def height(self, xyz: np.ndarray) -> np.ndarray:
        return xyz @ self.normal + self.d


def fit_ground_plane(xyz: np.ndarray, params: RealTruthParams = RealTruthParams()) -> GroundPlane:
    """RANSAC plane on the scan's low, near points (lidar frame, z up), refined by least squares."""
    p = np.asarray(xyz, dtype=np.float64)[:, :3]
    rho = np.hypot(p[:, 0], p[:, 1])
    cand = p[(p[:, 2] < -params.min_drop) & (rho < params.fit_range) & (rho > 2.0)]
    if len(cand) < 3:
        raise ValueError("too few low returns to fit a ground plane")
    rng = np.random.default_rng(params.seed)
    sub = cand if len(cand) <= 20000 else cand[rng.choice(len(cand), 20000, replace=False)]
    best, best_n = None, -1
    for _ in range(params.ransac_iterations):
        a, b, c = sub[rng.choice(len(sub), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-9:
            continue
        n = n / norm
        if n[2] < 0:
            n = -n
        if n[2] < math.cos(math.radians(15.0)):  # not a plausible road plane
            continue
        d = -float(n @ a)
        count = int(np.count_nonzero(np.abs(sub @ n + d) < params.ransac_tol))
        if count > best_n:
            best, best_n = (n, d), count
    if best is None:
        raise ValueError("no plausible ground plane found")
    n, d = best
    inl = sub[np.abs(sub @ n + d) < params.ransac_tol]
    # least squares z = a x + b y + c on the inliers
    A = np.column_stack([inl[:, 0], inl[:, 1], np.ones(len(inl))])
    coef, *_ = np.linalg.lstsq(A, inl[:, 2], rcond=None)
    n = np.array([-coef[0], -coef[1], 1.0])
    scale = np.linalg.norm(n)
    return GroundPlane(n / scale, float(-coef[2] / scale), int(len(inl)))


def real_occupancy_truth(points: np.ndarray, boxes_base: list[Box3D], origin: tuple[float, float],
                         resolution: float, shape: tuple[int, int],
                         params: RealTruthParams = RealTruthParams()) -> tuple[np.ndarray, np.ndarray]:
    """``(occupied, scored)`` boolean grids (rows, cols) from a lidar-frame scan and base_link boxes."""
    p = np.asarray(points, dtype=np.float64)[:, :3]
    p = p[np.all(np.isfinite(p), axis=1)]
    plane = fit_ground_plane(p, params)
    h = plane.height(p)
    col = np.floor((p[:, 0] - origin[0]) / resolution).astype(np.int64)
    row = np.floor((p[:, 1] - origin[1]) / resolution).astype(np.int64)
    inside = (col >= 0) & (col < shape[1]) & (row >= 0) & (row < shape[0])
    flat = row * shape[1] + col
    size = shape[0] * shape[1]
    ground = np.bincount(flat[inside & (np.abs(h) < params.ground_tol)], minlength=size).reshape(shape) > 0
    above = inside & (h > params.obstacle_low) & (h < params.obstacle_high)
    obstacle = np.bincount(flat[above], minlength=size).reshape(shape) > 0

    occupied = np.zeros(shape, dtype=bool)
    near_box = np.zeros(shape, dtype=bool)
    pts_base = np.column_stack([p[:, 0], p[:, 1], p[:, 2] + params.sensor_height])
    for box in boxes_base:
        grown = footprint_cells(box, origin, resolution, shape, margin=params.box_margin)
        if grown is not None:
            r0, c0, hit = grown
            near_box[r0:r0 + hit.shape[0], c0:c0 + hit.shape[1]] |= hit
        if int(np.count_nonzero(box.contains(pts_base))) < params.min_box_points:
            continue
        cells = footprint_cells(box, origin, resolution, shape)
        if cells is not None:
            r0, c0, hit = cells
            occupied[r0:r0 + hit.shape[0], c0:c0 + hit.shape[1]] |= hit
    xs = origin[0] + (np.arange(shape[1]) + 0.5) * resolution
    ys = origin[1] + (np.arange(shape[0]) + 0.5) * resolution
    X, Y = np.meshgrid(xs, ys)
    in_view = (np.abs(np.degrees(np.arctan2(Y, X))) <= params.fov_half_deg) & (np.hypot(X, Y) <= params.max_range)
    free = ground & ~obstacle & ~near_box
    scored = (occupied | free) & in_view
    return occupied & scored, scored
