"""A small, fast stand-in for generated scenario bags, for tests and smoke runs of the trainer.

:func:`write_fixture_bag` renders the embedded street scene (:func:`perception_nodes.scenario.default_scene`)
with a coarse LiDAR and writes the topics a generated bag carries, with the same conventions:

* ``/tf_static`` (KITTI rig: ``base_link`` → ``velodyne`` 1.73 m up), ``/sensing/lidar/points``
  (``velodyne`` frame), ``/ground_truth/objects`` (``base_link``);
* ``/ground_truth/occupancy``: ``nav_msgs/OccupancyGrid`` in ``base_link`` on a grid centred on the
  vehicle, 100 where a cell's footprint touches any actor's box (cars, people, poles, walls,
  buildings; a 3 × 3 sub-sample test per cell, so a 0.3 m pole is not missed), 0 elsewhere;
* ``/ground_truth/occupancy/visibility``: 100 where a LiDAR ray passes over the cell in bird's-eye view
  (from the sensor up to the farthest return of that azimuth column, at any height) or a return lands in
  it, 0 elsewhere — shadows behind objects that block every beam stay 0.

This is a simplification of the scenario generator's ground truth (visibility is 2-D), good enough
to exercise the pipeline; training runs meant to be evaluated should use ``generate`` sources.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from perception_nodes.boxes import Box3D
from perception_nodes.pipeline.occupancy import GridSpec

__all__ = ["FIXTURE_VERSION", "footprint_grid", "visibility_grid", "write_fixture_bag"]

#: bump when the fixture's content changes (cache key)
FIXTURE_VERSION = 1
START_NS = 1_700_000_000 * 1_000_000_000


def footprint_grid(boxes: list[Box3D], spec: GridSpec, *, subsamples: int = 3) -> NDArray[np.bool_]:
    """(H, W) True where any of ``subsamples``² points spread over the cell lies inside a box's BEV
    footprint (base_link boxes, yaw about z)."""
    h, w = spec.shape
    out = np.zeros((h, w), dtype=bool)
    ox, oy = spec.origin  # type: ignore[misc]
    res = spec.resolution
    offs = (np.arange(subsamples) + 0.5) / subsamples * res
    for b in boxes:
        cx, cy = b.center[0], b.center[1]
        hl, hw = b.size[0] / 2.0, b.size[1] / 2.0
        rad = math.hypot(hl, hw)
        c0 = max(0, int(math.floor((cx - rad - ox) / res)))
        c1 = min(w - 1, int(math.floor((cx + rad - ox) / res)))
        r0 = max(0, int(math.floor((cy - rad - oy) / res)))
        r1 = min(h - 1, int(math.floor((cy + rad - oy) / res)))
        if c0 > c1 or r0 > r1:
            continue
        cols, rows = np.arange(c0, c1 + 1), np.arange(r0, r1 + 1)
        xs = (ox + cols[:, None] * res + offs[None, :]).reshape(-1)  # (ncols * k)
        ys = (oy + rows[:, None] * res + offs[None, :]).reshape(-1)
        gx, gy = np.meshgrid(xs, ys)  # (nrows * k, ncols * k)
        c, s = math.cos(b.yaw), math.sin(b.yaw)
        lx = c * (gx - cx) + s * (gy - cy)
        ly = -s * (gx - cx) + c * (gy - cy)
        inside = (np.abs(lx) <= hl) & (np.abs(ly) <= hw)
        k = subsamples
        hit = inside.reshape(len(rows), k, len(cols), k).any(axis=(1, 3))
        out[r0: r1 + 1, c0: c1 + 1] |= hit
    return out


def visibility_grid(points_base: np.ndarray, azimuth_index: np.ndarray, n_azimuth: int,
                    sensor_xy: tuple[float, float], spec: GridSpec) -> NDArray[np.bool_]:
    """(H, W) True where a ray of some azimuth column passes over the cell in BEV (sensor to the column's
    farthest return) or a return lands in it."""
    h, w = spec.shape
    vis = np.zeros(h * w, dtype=bool)
    x, y = points_base[:, 0], points_base[:, 1]
    row, col, inside = spec.cell_index(x, y)
    vis[(row * w + col)[inside]] = True
    rng = np.hypot(x - sensor_xy[0], y - sensor_xy[1])
    limit = np.zeros(n_azimuth)
    np.maximum.at(limit, azimuth_index, rng)
    half_diag = math.hypot(spec.size_x, spec.size_y)
    limit = np.minimum(limit, half_diag + abs(sensor_xy[0]) + abs(sensor_xy[1]))
    step = spec.resolution / 2.0
    n_steps = np.floor(limit / step).astype(np.int64) + 1
    cols_az = np.repeat(np.arange(n_azimuth), n_steps)
    start = np.repeat(np.cumsum(n_steps) - n_steps, n_steps)
    d = (np.arange(int(n_steps.sum())) - start) * step
    d = np.minimum(d, limit[cols_az])
    a = cols_az * (2.0 * math.pi / n_azimuth)
    r2, c2, in2 = spec.cell_index(sensor_xy[0] + d * np.cos(a), sensor_xy[1] + d * np.sin(a))
    vis[(r2 * w + c2)[in2]] = True
    return vis.reshape(h, w)


def write_fixture_bag(
    out: str | Path,
    *,
    seed: int = 0,
    frames: int = 4,
    start_s: float = 1.0,
    period_s: float = 0.5,
    lidar: str = "vlp16",
    n_azimuth: int = 720,
    gt_size: float = 24.0,
    gt_resolution: float = 0.25,
) -> Path:
    """Write a fixture bag of ``frames`` scans of ``default_scene(seed)`` at ``start_s + i · period_s``.

    ``lidar``: ``vlp16`` | ``vlp32`` | ``hdl64`` (with ``n_azimuth`` azimuth steps); ground-truth grids
    are ``gt_size`` m square at ``gt_resolution`` m, centred on base_link.
    """
    from perception_nodes import topics
    from perception_nodes.bags.writer import BagWriter
    from perception_nodes.calibration import load_rig, tf_message
    from perception_nodes.codecs.backend import default_backend
    from perception_nodes.codecs.detections import detections_msg
    from perception_nodes.codecs.outputs import occupancy_grid_msg
    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud
    from perception_nodes.scenario import LIDAR_HEIGHT, BeamModel, actors_at, boxes_in_base_link, cast_scan
    from perception_nodes.scenario.scene import OBJECT_LABELS, POLE, default_scene, ego_pose3d

    presets = {"vlp16": BeamModel.vlp16, "vlp32": BeamModel.vlp32, "hdl64": BeamModel.hdl64}
    if lidar not in presets:
        raise ValueError(f"lidar must be one of {', '.join(presets)}, got {lidar!r}")
    beams = presets[lidar](n_azimuth=int(n_azimuth))
    spec = GridSpec(resolution=gt_resolution, size_x=gt_size, size_y=gt_size)
    scene = default_scene(seed)
    rig = load_rig("kitti_hdl64.yaml")
    backend = default_backend()
    rng = np.random.default_rng(seed)
    period_ns = int(round(period_s * 1e9))
    origin = (*spec.origin, 0.0)  # type: ignore[misc]
    with BagWriter(out) as bag:
        bag.write(topics.TF_STATIC, topics.TF_MESSAGE, START_NS, tf_message(rig.as_list(), START_NS, backend))
        for i in range(frames):
            t = start_s + i * period_s
            stamp = START_NS + i * period_ns
            scan = cast_scan(scene, t, beams, rng)
            all_boxes = boxes_in_base_link(actors_at(scene, t), ego_pose3d(t, scene))
            occ = footprint_grid(all_boxes, spec)
            base = scan.points[:, :3] + np.array([0.0, 0.0, LIDAR_HEIGHT], dtype=np.float32)
            vis = visibility_grid(base, scan.azimuth_index, beams.n_azimuth, (0.0, 0.0), spec)
            # grids first: read_bag_frames completes a frame once its cloud and objects are in
            for topic, grid in (("/ground_truth/occupancy", occ), ("/ground_truth/occupancy/visibility", vis)):
                bag.write(topic, topics.OCCUPANCY_GRID_TYPE, stamp, occupancy_grid_msg(
                    np.where(grid, 100, 0).astype(np.int8), spec.resolution, origin, stamp, "base_link", backend))
            objects = [b for b in all_boxes if b.label in (*OBJECT_LABELS, POLE)]
            bag.write(topics.GT_OBJECTS, topics.DETECTIONS, stamp, detections_msg(objects, stamp, "base_link", backend))
            bag.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, stamp,
                      create_xyzi_cloud(scan.points, stamp, "velodyne", backend))
    return Path(out)
