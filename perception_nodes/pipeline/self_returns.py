"""Returns of the vehicle itself: which points a LiDAR took of its own mount and body.

A roof-mounted LiDAR sees part of its own car. In ``../shared/data``: KITTI 000000 has 929 returns inside the
KITTI car's footprint, 0.9-1.4 m up, 0.5-1.5 m ahead of the sensor and 1.0-1.7 m to either side (the side
mirrors' zone, symmetric), and the nuScenes keyframe 8,000 returns within 1 m of the sensor (the mount). The generator draws no ego body, so a network trained on its scans takes such a blob for an
object: the packaged LiDAR network put a car box (score 0.70) on the ego of KITTI 000001 and a cyclist
(0.78) on nuScenes' ego. Real stacks remove these returns before anything else sees them: Autoware crops
the vehicle's box ("self cropping" with ``crop_box_filter``), nuScenes' devkit drops returns within 1 m of
the sensor. Two tests, both in base_link, the same as the occupancy node's ``min_return_range`` /
``ego_box``:

* *near the sensor*: horizontal distance from the sensor below ``min_return_range`` (m);
* *ego footprint*: inside ``ego_box`` = (x_min, x_max, y_min, y_max) of base_link, at any height (a rig's
  footprint: the KITTI car's is (-2.5, 2.7, -1.7, 1.7) about the point under its Velodyne; ``[0, 0, 0, 0]``
  switches it off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

EgoBox = tuple[float, float, float, float]


def parse_ego_box(value: Any, where: str = "ego_box") -> EgoBox | None:
    """``None``, empty or all zeros -> no footprint (``[0, 0, 0, 0]`` is how a ROS params file, whose list
    parameters cannot be empty, switches it off); else four numbers (x_min, x_max, y_min, y_max) with min < max.
    Raises ValueError naming ``where`` otherwise (a params file typo must not silently filter nothing)."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{where}: expected [x_min, x_max, y_min, y_max] in metres, got the string {value!r}")
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        return None
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: expected [x_min, x_max, y_min, y_max] in metres, got {value!r}") from exc
    if len(box) == 4 and all(v == 0.0 for v in box):
        return None
    if len(box) != 4 or not all(np.isfinite(box)) or not (box[0] < box[1] and box[2] < box[3]):
        raise ValueError(f"{where}: expected four finite numbers [x_min, x_max, y_min, y_max] with x_min < x_max "
                         f"and y_min < y_max, got {value!r}")
    return box  # type: ignore[return-value]


def self_return_settings(cfg: Any, where: str) -> dict[str, Any]:
    """A section with ``min_return_range`` (m, >= 0; absent: 0 = off) and ``ego_box`` (:func:`parse_ego_box`)
    as keyword arguments of :func:`self_returns`: the nodes' parameters and ``lidar-eval``'s
    ``<dataset>_self_returns`` sections. ValueError naming ``where`` for anything else."""
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: expected a mapping with min_return_range and/or ego_box, got {cfg!r}")
    unknown = set(cfg) - {"min_return_range", "ego_box"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (min_return_range, ego_box)")
    raw = cfg.get("min_return_range", 0.0)
    try:
        rng = float(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.min_return_range must be a number >= 0, got {raw!r}") from exc
    if not rng >= 0:
        raise ValueError(f"{where}.min_return_range must be >= 0, got {raw!r}")
    return {"min_return_range": rng, "ego_box": parse_ego_box(cfg.get("ego_box"), f"{where}.ego_box")}


def in_footprint(x: NDArray[np.floating], y: NDArray[np.floating], box: EgoBox) -> NDArray[np.bool_]:
    """Which (x, y) lie inside the footprint ``box`` (edges included)."""
    x0, x1, y0, y1 = box
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def self_returns(points_base: NDArray[np.floating], sensor_xy: Sequence[float], *, min_return_range: float = 0.0,
                 ego_box: EgoBox | None = None) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Masks over the rows of ``points_base`` ``[N, >= 2]`` (base_link): (near the sensor, inside the ego
    footprint and not near the sensor), so each removed point is counted under one reason."""
    x, y = points_base[:, 0], points_base[:, 1]
    near = np.zeros(len(points_base), bool)
    if min_return_range > 0:
        near = np.hypot(x - np.float32(sensor_xy[0]), y - np.float32(sensor_xy[1])) < min_return_range
    body = in_footprint(x, y, ego_box) & ~near if ego_box is not None else np.zeros(len(points_base), bool)
    return near, body
