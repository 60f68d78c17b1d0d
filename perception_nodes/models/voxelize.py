"""Dynamic mean voxelisation of the LiDAR branch in one compiled pass (numba), for inference.

Why: :func:`engines.sparse.voxelize_mean` is a chain of PyTorch ops (finite mask, range mask, floor,
key, ``unique`` = a sort, ``index_add_``, ``bincount``, key unpacking); on a 120k-point KITTI scan it
cost ~20 ms of the branch's ~100 ms budget at 2 threads, most of it in the sort and in indexing copies.
Here the scan is read once to mark occupied cells in a dense table over the crop's grid, the table is
read once in key order to number the voxels (so the voxels come out sorted by (b, x, y, z) exactly as
``torch.unique(sorted=True)`` gives them: the sparse backbone sees the same rows in the same order), and
the scan is read once more to sum (x, y, z, intensity) in float64 per voxel, in point order, as
``index_add_`` does; means are divided in float64 and rounded to float32 like the reference. Non-finite
rows and the intensity scale are handled in the same passes.

The arithmetic (float64 crop test, ``floor((p - lo) / voxel)``, the upper-edge guard, ceil of the grid
shape) is the reference's, so voxel coordinates are identical and features agree to float32 rounding
(tests/models/test_voxelize_fast.py). The dense table needs ``B * X * Y * Z`` int32 entries; above
:data:`MAX_TABLE_CELLS` (fine grids such as SECOND's 0.05 m) :func:`voxelize_scans` returns ``None`` and
the caller uses the PyTorch path.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numba as nb
import numpy as np

__all__ = ["MAX_TABLE_CELLS", "grid_shape", "voxelize_scans"]

#: largest dense key table (cells of B * X * Y * Z) this path allocates: 2^24 int32 = 64 MB
MAX_TABLE_CELLS = 1 << 24


def grid_shape(voxel_size: Sequence[float], point_range: Sequence[float]) -> tuple[int, int, int]:
    """Cells per axis as :func:`engines.sparse.voxelize_mean` computes them: ``ceil((hi - lo) / v - 1e-9)``."""
    return tuple(int(math.ceil((float(point_range[a + 3]) - float(point_range[a])) / float(voxel_size[a]) - 1e-9))
                 for a in range(3))  # type: ignore[return-value]


@nb.njit(cache=True, nogil=True)
def _keys(points: np.ndarray, batch: np.ndarray, lo: np.ndarray, hi: np.ndarray, vs: np.ndarray,
          shape: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Key of every point's voxel (-1: non-finite in the first four columns, or outside the crop); marks
    the occupied cells of ``table`` with 1."""
    n = points.shape[0]
    keys = np.empty(n, np.int64)
    for i in range(n):
        keys[i] = -1
        if not (np.isfinite(points[i, 0]) and np.isfinite(points[i, 1]) and np.isfinite(points[i, 2])
                and np.isfinite(points[i, 3])):
            continue
        k = batch[i]
        inside = True
        for a in range(3):
            v = np.float64(points[i, a])
            if not (v >= lo[a] and v < hi[a]):
                inside = False
                break
            q = np.int64(np.floor((v - lo[a]) / vs[a]))
            if q > shape[a] - 1:  # guard the upper edge against rounding (the reference's minimum)
                q = shape[a] - 1
            k = k * shape[a] + q
        if inside:
            keys[i] = k
            table[k] = 1
    return keys


@nb.njit(cache=True, nogil=True)
def _number(table: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Replace every marked cell of ``table`` by its voxel row, in key order; returns the (b, x, y, z) rows."""
    X, Y, Z = shape[0], shape[1], shape[2]
    m = 0
    for k in range(table.shape[0]):
        if table[k] != 0:
            m += 1
    coords = np.empty((m, 4), np.int32)
    r = 0
    for k in range(table.shape[0]):
        if table[k] != 0:
            table[k] = r
            z = k % Z
            t = k // Z
            y = t % Y
            t //= Y
            coords[r, 0] = t // X
            coords[r, 1] = t % X
            coords[r, 2] = y
            coords[r, 3] = z
            r += 1
    return coords


@nb.njit(cache=True, nogil=True)
def _means(points: np.ndarray, keys: np.ndarray, table: np.ndarray, m: int, scale: np.float32) -> np.ndarray:
    """Per-voxel float64 sums in point order, divided by the counts, rounded to float32."""
    acc = np.zeros((m, 4), np.float64)
    cnt = np.zeros(m, np.int64)
    for i in range(points.shape[0]):
        k = keys[i]
        if k < 0:
            continue
        r = table[k]
        cnt[r] += 1
        for c in range(3):
            acc[r, c] += np.float64(points[i, c])
        # the reference divides the float32 intensity by the scale in float32 before summing
        acc[r, 3] += np.float64(np.float32(points[i, 3]) / scale)
    out = np.empty((m, 4), np.float32)
    for r in range(m):
        for c in range(4):
            out[r, c] = np.float32(acc[r, c] / np.float64(cnt[r]))
    return out


def voxelize_scans(points: np.ndarray, batch: Optional[np.ndarray], batch_size: int, voxel_size: Sequence[float],
                   point_range: Sequence[float], intensity_scale: float = 1.0
                   ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Mean voxels of ``points`` ``[N, >= 4]`` float32 (x, y, z, intensity; rows of scan ``batch[i]``).

    Returns ``(features [M, 4] float32, coords [M, 4] int32 (b, x, y, z))`` sorted by (b, x, y, z), or
    ``None`` when the grid is too large for the dense table (use :func:`engines.sparse.voxelize_mean`).
    Rows with a non-finite value in the first four columns and points outside ``point_range`` (a
    half-open box, as the reference) are left out; intensities are divided by ``intensity_scale``.
    """
    shape = grid_shape(voxel_size, point_range)
    cells = int(batch_size) * shape[0] * shape[1] * shape[2]
    if cells > MAX_TABLE_CELLS or batch_size < 1:
        return None
    pts = np.ascontiguousarray(points[:, :4], dtype=np.float32)
    if batch is None:
        b = np.zeros(len(pts), np.int64)
    else:
        b = np.ascontiguousarray(batch, dtype=np.int64)
    table = np.zeros(cells, np.int32)
    lo = np.asarray(point_range[:3], np.float64)
    hi = np.asarray(point_range[3:6], np.float64)
    vs = np.asarray(voxel_size, np.float64)
    shp = np.asarray(shape, np.int64)
    keys = _keys(pts, b, lo, hi, vs, shp, table)
    coords = _number(table, shp)
    feats = _means(pts, keys, table, len(coords), np.float32(intensity_scale))
    return feats, coords
