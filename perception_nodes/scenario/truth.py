"""Per-frame ground truth of a scenario: BEV occupancy, LiDAR visibility, ego odometry, control target.

* **Occupancy** (:func:`occupancy_truth`): on the occupancy node's grid (:class:`GridSpec`, base_link,
  80 m x 80 m at 0.25 m by default), a cell is 100 (occupied) when any actor's footprint overlaps it
  (cars, people, cyclists, poles, walls, buildings; the exact rectangle-square overlap, so a 0.3 m pole
  marks every cell it touches), else 0 (free). The ego itself is not in it.
* **Visibility** (:func:`visibility_truth`): which cells the LiDAR scan actually observed, 100 / 0. Per
  azimuth column of the beam model, the rays reach up to the nearest *object* return (source >= 0) in
  that column, or, without one, to the farthest ground return; a cell is visible when its centre lies
  within the reach of the column its centre falls in, or when any return lands in it (the ground seen
  over a low object, the face of a wall). Cells behind the first object of their column, beyond the
  last return, or in a column with no returns (a lost sector) are not visible. This mirrors the
  occupancy node's inverse sensor model, so a grid can be scored on the visible cells only.
* **Control target**: the curvature (1/m, + = left) of the ego's lane centre at the ego
  (:meth:`~perception_nodes.scenario.scene.EgoTrajectory.curvature`), plus the lane centre ahead as a
  path in base_link (:func:`path_ahead`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from perception_nodes.boxes import Box3D
from perception_nodes.pipeline.occupancy import GridSpec
from perception_nodes.scenario.lidar import BeamModel, ScanResult
from perception_nodes.scenario.scene import Scene

OCCUPIED = 100
FREE = 0
VISIBLE = 100
NOT_VISIBLE = 0


def occupancy_truth(boxes_base: list[Box3D], spec: GridSpec | None = None) -> np.ndarray:
    """(H, W) int8 grid: 100 where a box footprint overlaps the cell, 0 elsewhere (boxes in base_link)."""
    spec = spec or GridSpec()
    grid = np.zeros(spec.shape, dtype=np.int8)
    ox, oy = spec.origin
    res = spec.resolution
    hc = res / 2.0
    for b in boxes_base:
        corners = b.corners_xy()
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        c0 = max(int(math.floor((lo[0] - ox) / res)), 0)
        c1 = min(int(math.floor((hi[0] - ox) / res)), spec.width - 1)  # may include touching cells
        r0 = max(int(math.floor((lo[1] - oy) / res)), 0)
        r1 = min(int(math.floor((hi[1] - oy) / res)), spec.height - 1)
        if c0 > c1 or r0 > r1:
            continue
        xs = ox + (np.arange(c0, c1 + 1) + 0.5) * res - b.center[0]
        ys = oy + (np.arange(r0, r1 + 1) + 0.5) * res - b.center[1]
        X, Y = np.meshgrid(xs, ys)
        c, s = math.cos(b.yaw), math.sin(b.yaw)
        # separating axes: the grid's x and y are covered by the bounding window; test the box's own
        # axes, where a square cell projects to a half-extent of hc * (|c| + |s|)
        reach = hc * (abs(c) + abs(s))
        along = np.abs(X * c + Y * s) < b.size[0] / 2.0 + reach - 1e-9
        across = np.abs(-X * s + Y * c) < b.size[1] / 2.0 + reach - 1e-9
        hit = along & across  # cells that merely touch the footprint's edge are not occupied
        grid[r0:r1 + 1, c0:c1 + 1][hit] = OCCUPIED
    return grid


@lru_cache(maxsize=8)
def _cell_polar(spec: GridSpec, n_azimuth: int) -> tuple[np.ndarray, np.ndarray]:
    """Range from the sensor and azimuth column of every cell centre (sensor at the base_link origin)."""
    x, y = spec.cell_centers()
    r = np.hypot(x, y)
    col = np.round(np.mod(np.arctan2(y, x), 2.0 * math.pi) / (2.0 * math.pi / n_azimuth)).astype(np.int64) % n_azimuth
    r.flags.writeable = False
    col.flags.writeable = False
    return r, col


def visibility_truth(scan: ScanResult, beam_model: BeamModel, spec: GridSpec | None = None) -> np.ndarray:
    """(H, W) int8 grid: 100 for cells the scan observed, 0 for the others (see the module doc).

    ``scan`` is the sweep as delivered (after dropouts and sector loss); its points are in the lidar
    frame, which shares base_link's x/y axes and origin in BEV.
    """
    spec = spec or GridSpec()
    n_az = beam_model.n_azimuth
    p = scan.points
    rho = np.hypot(p[:, 0].astype(np.float64), p[:, 1].astype(np.float64))
    col = scan.azimuth_index.astype(np.int64)
    obj = scan.source >= 0
    reach_obj = np.full(n_az, np.inf)
    np.minimum.at(reach_obj, col[obj], rho[obj])
    reach_ground = np.zeros(n_az)
    np.maximum.at(reach_ground, col[~obj], rho[~obj])
    reach = np.where(np.isfinite(reach_obj), reach_obj, reach_ground)
    r_cell, col_cell = _cell_polar(spec, n_az)
    visible = r_cell <= reach[col_cell]
    row, c, inside = spec.cell_index(p[:, 0], p[:, 1])
    visible[row[inside], c[inside]] = True
    return np.where(visible, VISIBLE, NOT_VISIBLE).astype(np.int8)


def path_ahead(scene: Scene, t: float, *, length_m: float = 30.0, step_m: float = 1.0) -> np.ndarray:
    """(N, 3) lane-centre poses (x, y, yaw) in base_link from the ego to ``length_m`` ahead."""
    ego = scene.ego
    ds = np.arange(0.0, length_m + 1e-9, step_m)
    ex, ey, eyaw = ego.pose(t)
    if ego.path is None:
        return np.stack([ds, np.zeros_like(ds), np.zeros_like(ds)], axis=1)
    x, y, h = ego.path.pose(ego.s_at(t) + ds)
    c, s = math.cos(eyaw), math.sin(eyaw)
    dx, dy = x - ex, y - ey
    yaw = (h - eyaw + math.pi) % (2.0 * math.pi) - math.pi
    return np.stack([c * dx + s * dy, -s * dx + c * dy, yaw], axis=1)
