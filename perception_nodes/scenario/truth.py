"""Per-frame ground truth of a scenario: BEV occupancy, LiDAR visibility, ego odometry, control target.

* **Occupancy** (:func:`occupancy_truth`): on the occupancy node's grid (:class:`GridSpec`, base_link,
  80 m x 80 m at 0.25 m by default), a cell is 100 (occupied) when any actor's footprint overlaps it
  (cars, people, cyclists, poles, walls, buildings; the exact rectangle-square overlap, so a 0.3 m pole
  marks every cell it touches), else 0 (free). The ego itself is not in it.
* **Visibility** (:func:`visibility_truth`): which cells the rig's LiDAR *can* observe, 100 / 0, from a
  fault-free ray cast (:func:`ideal_scan`: the same beams against the same scene, without range noise,
  the beam model's own dropout or any injected fault). It is *not* derived from the scan the pipeline
  receives, so a fault (a lost sector, dropout) leaves the scored cells as they were and lowers the
  scores where it acts, instead of removing those cells from the denominator. Per azimuth column of the
  beam model, the rays reach up to the nearest *object* return (source >= 0) in that column, or,
  without one, to the farthest ground return; a cell is visible when its centre lies within the reach
  of the column its centre falls in, or when any return lands in it (the ground seen over a low
  object, the face of a wall). Cells behind the first object of their column or beyond the last
  return are not visible.
* **LiDAR fault region** (:func:`fault_region`): 100 for the cells where an injected LiDAR fault acts in
  this frame (every cell while ``lidar_dropout`` is on; the cells whose azimuth lies in
  ``lidar_sector_deg`` while the sector is lost), else 0, so scores can be split into fault-affected and
  unaffected cells.
* **Control target**: the curvature (1/m, + = left) of the ego's lane centre at the ego
  (:meth:`~perception_nodes.scenario.scene.EgoTrajectory.curvature`), plus the lane centre ahead as a
  path in base_link (:func:`path_ahead`).
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np

from perception_nodes.boxes import Box3D
from perception_nodes.pipeline.occupancy import GridSpec
from perception_nodes.scenario.faults import Faults, in_sector
from perception_nodes.scenario.lidar import BeamModel, ScanResult, cast_scan
from perception_nodes.scenario.scene import Scene

OCCUPIED = 100
FREE = 0
VISIBLE = 100
NOT_VISIBLE = 0


def footprint_cells(box: Box3D, origin: tuple[float, float], resolution: float, shape: tuple[int, int],
                    *, margin: float = 0.0) -> tuple[int, int, np.ndarray] | None:
    """Cells of a (rows, cols) grid that the box's BEV footprint (grown by ``margin``) overlaps.

    Returns ``(row0, col0, hit)`` with ``hit`` a boolean window whose [0, 0] is cell (row0, col0), or
    None when the footprint misses the grid. The exact rectangle-square overlap (separating axes), so
    a 0.3 m pole marks every cell it touches; cells that merely touch an edge are not counted.
    """
    ox, oy = origin
    res = resolution
    hc = res / 2.0
    hx, hy = box.size[0] / 2.0 + margin, box.size[1] / 2.0 + margin
    c, s = math.cos(box.yaw), math.sin(box.yaw)
    ex, ey = abs(c) * hx + abs(s) * hy, abs(s) * hx + abs(c) * hy  # half extents of the bounding window
    c0 = max(int(math.floor((box.center[0] - ex - ox) / res)), 0)
    c1 = min(int(math.floor((box.center[0] + ex - ox) / res)), shape[1] - 1)  # may include touching cells
    r0 = max(int(math.floor((box.center[1] - ey - oy) / res)), 0)
    r1 = min(int(math.floor((box.center[1] + ey - oy) / res)), shape[0] - 1)
    if c0 > c1 or r0 > r1:
        return None
    xs = ox + (np.arange(c0, c1 + 1) + 0.5) * res - box.center[0]
    ys = oy + (np.arange(r0, r1 + 1) + 0.5) * res - box.center[1]
    X, Y = np.meshgrid(xs, ys)
    # separating axes: the grid's x and y are covered by the bounding window; test the box's own
    # axes, where a square cell projects to a half-extent of hc * (|c| + |s|)
    reach = hc * (abs(c) + abs(s))
    along = np.abs(X * c + Y * s) < hx + reach - 1e-9
    across = np.abs(-X * s + Y * c) < hy + reach - 1e-9
    return r0, c0, along & across


def occupancy_truth(boxes_base: list[Box3D], spec: GridSpec | None = None) -> np.ndarray:
    """(H, W) int8 grid: 100 where a box footprint overlaps the cell, 0 elsewhere (boxes in base_link)."""
    spec = spec or GridSpec()
    grid = np.zeros(spec.shape, dtype=np.int8)
    for b in boxes_base:
        cells = footprint_cells(b, spec.origin, spec.resolution, spec.shape)
        if cells is None:
            continue
        r0, c0, hit = cells
        grid[r0:r0 + hit.shape[0], c0:c0 + hit.shape[1]][hit] = OCCUPIED
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


def ideal_beams(beam_model: BeamModel) -> BeamModel:
    """The same beams without range/intensity noise and without the model's own dropout."""
    return dataclasses.replace(beam_model, range_noise_std=0.0, intensity_noise_std=0.0, dropout_prob=0.0)


def ideal_scan(scene: Scene, t: float, beam_model: BeamModel, *, mount_height: float,
               boxes: list | None = None, realism=None) -> ScanResult:
    """A fault-free, noise-free sweep of the rig's LiDAR at ``t``: what the sensor can see of the scene.

    Uses its own fixed random stream (the draws have zero spread), so it leaves the generator's noise
    streams untouched. With ``realism`` (a :class:`~perception_nodes.scenario.realism.RealismState`) the
    cast keeps its geometry (sensor pose, ego occlusion, car shapes, vegetation, range cap) but none of
    its dropout or noise, and the points come back rotated into the level frame at the sensor (x/y
    parallel to base_link's), so :func:`visibility_truth` stays in base_link under a tilted mount.
    """
    if realism is None:
        return cast_scan(scene, t, ideal_beams(beam_model), np.random.default_rng(0), mount_height=mount_height,
                         boxes=boxes)
    from perception_nodes.scenario.lidar_realism import level_scan

    scan = cast_scan(scene, t, ideal_beams(beam_model), np.random.default_rng(0), boxes=boxes,
                     realism=realism.geometry_only())
    return level_scan(scan, realism, beam_model)


def visibility_truth(scan: ScanResult, beam_model: BeamModel, spec: GridSpec | None = None) -> np.ndarray:
    """(H, W) int8 grid: 100 for cells the scan observed, 0 for the others (see the module doc).

    The generator passes :func:`ideal_scan` (fault-free), never the scan the pipeline receives; its
    points are in the lidar frame, which shares base_link's x/y axes and origin in BEV.
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


def fault_region(faults: Faults, t: float, beam_model: BeamModel, spec: GridSpec | None = None) -> np.ndarray:
    """(H, W) int8 grid: 100 where an injected LiDAR fault acts at fault time ``t``, else 0.

    Dropout acts on every cell while it is on; a lost sector on the cells whose azimuth column (the
    column rule of :func:`visibility_truth`) lies in ``lidar_sector_deg`` while the sector is lost.
    """
    spec = spec or GridSpec()
    region = np.zeros(spec.shape, dtype=bool)
    if faults.lidar_dropout > 0.0 and faults.lidar_dropout_time[0] <= t < faults.lidar_dropout_time[1]:
        region[:] = True
    if faults.lidar_sector_deg is not None and faults.lidar_sector_time[0] <= t < faults.lidar_sector_time[1]:
        _, col = _cell_polar(spec, beam_model.n_azimuth)
        region |= in_sector(col * beam_model.azimuth_resolution_deg, faults.lidar_sector_deg)
    return np.where(region, OCCUPIED, FREE).astype(np.int8)


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
