"""Ground-truth grids from bags, resampled onto a branch's training grid.

Generated bags carry ``/ground_truth/occupancy`` (``nav_msgs/OccupancyGrid`` in base_link, data 100 =
occupied, 0 = free) and ``/ground_truth/occupancy/visibility`` (same grid, 100 = visible, 0 = not) on
their own grid (by default 80 m × 80 m at 0.25 m). A branch trains on its own, usually coarser, grid.

Resampling rule (:func:`resample_max`), both grids axis-aligned in base_link:

* **Max-pool** where the training grid is coarser: every source cell is dropped into the training cell
  that contains its centre, and the training cell takes the maximum. A training cell is *occupied* if
  any ground-truth cell under it is (a cell is occupied when any part of it is, as in the inverse
  sensor model), and *visible* if any ground-truth cell under it is visible.
* **Nearest** where the training grid is finer (or the cells do not nest): every training cell also
  takes the source cell under its own centre, so no training cell inside the source grid is left empty.
* Training cells outside the source grid get ``fill`` (0: free and, for visibility, not visible — so
  they are never trained on).

Values of -1 (unknown) in a message count as 0. A rotated grid (origin yaw ≠ 0) is refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perception_nodes.pipeline.occupancy import GridSpec

__all__ = ["grid_from_msg", "resample_max"]


def grid_from_msg(msg: Any) -> tuple[NDArray[np.int8], GridSpec]:
    """(H, W) int8 data and the :class:`GridSpec` of a ``nav_msgs/OccupancyGrid`` (row 0 = lowest y)."""
    info = msg.info
    w, h, res = int(info.width), int(info.height), float(info.resolution)
    q = info.origin.orientation
    yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
    if abs(yaw) > 1e-6:
        raise ValueError(f"rotated occupancy grids are not supported (origin yaw {yaw:.4f} rad)")
    data = np.asarray(msg.data).astype(np.int8, copy=False)
    if data.size != w * h or w <= 0 or h <= 0 or not res > 0:
        raise ValueError(f"occupancy grid of {w} x {h} cells at {res} m has {data.size} data values")
    spec = GridSpec(resolution=res, size_x=w * res, size_y=h * res,
                    origin=(float(info.origin.position.x), float(info.origin.position.y)))
    if spec.shape != (h, w):
        raise ValueError(f"grid size {w} x {h} does not survive GridSpec rounding: {spec.shape}")
    return data.reshape(h, w), spec


def resample_max(src: np.ndarray, src_spec: GridSpec, dst_spec: GridSpec, *, fill: float = 0.0) -> NDArray[np.float32]:
    """``src`` (H, W) on ``src_spec`` onto ``dst_spec``: max-pool into coarser cells plus nearest lookup
    (see the module docstring). Returns (H', W') float32."""
    src = np.asarray(src, dtype=np.float32)
    if src.shape != src_spec.shape:
        raise ValueError(f"grid data {src.shape} does not match its spec {src_spec.shape}")
    src = np.maximum(src, 0.0)  # -1 (unknown) counts as 0
    h, w = dst_spec.shape
    out = np.full(h * w, -np.inf, dtype=np.float32)
    # max-pool: source cell centres into destination cells
    sx, sy = src_spec.cell_centers()
    row, col, inside = dst_spec.cell_index(sx.ravel(), sy.ravel())
    np.maximum.at(out, (row * w + col)[inside], src.ravel()[inside])
    # nearest: destination cell centres looked up in the source
    dx, dy = dst_spec.cell_centers()
    r2, c2, in2 = src_spec.cell_index(dx.ravel(), dy.ravel())
    near = np.full(h * w, -np.inf, dtype=np.float32)
    near[in2] = src[r2[in2], c2[in2]]
    out = np.maximum(out, near)
    out[~np.isfinite(out)] = fill
    return out.reshape(h, w)
