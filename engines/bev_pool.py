"""BEV pooling (the "splat" of Lift-Splat-Shoot) with the frustum geometry precomputed per calibration.

A camera network predicts, for every feature pixel ``p``, a categorical depth distribution
``P[p, b]`` over ``D`` depth bins and a context feature vector ``F[p, :]`` (``C`` channels). Lift-Splat
places the feature ``P[p, b] * F[p, :]`` at the 3-D point of pixel ``p`` at depth ``b`` (the *frustum*)
and sums all frustum points that fall into each bird's-eye-view cell::

    out[cell, :] = sum over (p, b) with cell(p, b) == cell of  P[p, b] * F[p, :]

Where each frustum point lands depends only on the calibration (intrinsics, camera -> base_link
extrinsics, image size and feature stride), the depth bins and the grid, never on the image. So
(BEVFusion's observation, Liu et al. 2022, section 3.2 "precomputation" and "interval reduction"):

1. :func:`build_geometry` computes once per calibration every frustum point's cell, drops the points
   outside the grid (x/y outside the square, z outside the height slab) and sorts the rest by
   ``(cell, pixel, bin)``. A ray meets a cell (a convex box) in one depth interval and the point
   coordinates are monotone in depth, so the points of one ``(cell, pixel)`` *pair* are a run of
   consecutive bins: the geometry is the list of pairs ``(cell, pixel, first bin, bin count)`` grouped
   into per-cell intervals (``row_ptr``), plus the flat point list for the graph form.
2. At run time the sum regroups as ``out[cell, :] = sum_pixel M[cell, pixel] * F[pixel, :]`` with
   ``M[cell, pixel] = sum of P[pixel, b]`` over the pair's bins: a segment sum of depth probabilities
   followed by a sparse (CSR) matrix times the feature matrix. No ``D x H x W x C`` frustum tensor is
   ever formed; the work is ``pairs x C`` multiply-adds instead of ``frustum points x C``.

Three forms of the same sum:

* :func:`bev_pool` -- the run-time path: one fused numba kernel per call (segment sum of the pair's
  bins, then the row update), rows of the output in parallel over ``torch.get_num_threads()`` threads.
  Inference only (no autograd).
* :func:`bev_pool_gather` -- torch ops only (gather, ``index_add``, row gather, ``index_add``):
  differentiable (training) and exportable to ONNX as Gather / ScatterElements(add) / Mul /
  ScatterND(add) with the precomputed indices as graph inputs (:func:`export_onnx`).
* :func:`lift_splat_naive` -- the reference: geometry computed per call, the full frustum feature
  tensor materialised, then a scatter-add into the grid, as the original Lift-Splat-Shoot code does.

Conventions: camera frames are optical (z forward, x right, y down); pixel centres at integer
coordinates; a feature map of stride ``s`` has ``ceil(H / s) x ceil(W / s)`` cells (what a stack of
stride-2, padding-1, 3x3 convolutions gives) and feature cell ``(i, j)`` looks through image point
``(j * s + (s - 1) / 2, i * s + (s - 1) / 2)``; depth is the distance along the optical axis (z), as in
LSS; bin ``b`` sits at its centre ``start + (b + 1/2) * step``. Output cells are ``[C, height, width]``
= ``[C, y, x]``, cell ``(iy, ix)`` covering ``[x_min + ix * cell, x_min + (ix + 1) * cell)`` (the
layout of ``perception_nodes.models.BevGrid`` and of ``nav_msgs/OccupancyGrid``). Pixels of several
cameras are concatenated camera after camera, each row-major.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numba as nb
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CameraGeometry",
    "DepthBins",
    "GeometryCache",
    "PoolGeometry",
    "PoolGrid",
    "bev_pool",
    "bev_pool_gather",
    "build_geometry",
    "export_onnx",
    "flatten_maps",
    "frustum_points",
    "lift_splat_naive",
    "onnx_feeds",
]


# --------------------------------------------------------------------------------------------------
# Configuration (plain data)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthBins:
    """``count`` uniform depth bins from ``start`` to ``stop`` metres (BEVFusion: 1..60 m by 0.5 = 118)."""

    start: float = 1.0
    stop: float = 60.0
    step: float = 0.5

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.stop > self.start and self.step > 0):
            raise ValueError(f"depth bins need 0 < start < stop and step > 0, got {self}")
        n = (self.stop - self.start) / self.step
        if abs(n - round(n)) > 1e-6:
            raise ValueError(f"depth range {self.start}..{self.stop} is not a whole number of {self.step} m bins")

    @property
    def count(self) -> int:
        return int(round((self.stop - self.start) / self.step))

    def centres(self) -> np.ndarray:
        """Depth (m) each bin's frustum point sits at: the bin centres, float64 ``[count]``."""
        return self.start + (np.arange(self.count, dtype=np.float64) + 0.5) * self.step

    def index(self, depth: np.ndarray) -> np.ndarray:
        """Bin of each depth (m); -1 outside ``[start, stop)`` or not finite (depth supervision targets)."""
        d = np.asarray(depth, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            i = np.floor((d - self.start) / self.step)
            ok = np.isfinite(i) & (i >= 0) & (i < self.count)
        return np.where(ok, np.nan_to_num(i, nan=-1.0), -1).astype(np.int64)


@dataclass(frozen=True)
class PoolGrid:
    """The BEV grid pooled into (base_link) and the height slab ``[z_min, z_max)`` a point must lie in."""

    x_min: float = -40.0
    y_min: float = -40.0
    cell: float = 0.5
    width: int = 160
    height: int = 160
    z_min: float = -1.0
    z_max: float = 3.0

    def __post_init__(self) -> None:
        if not (self.cell > 0 and self.width > 0 and self.height > 0 and self.z_max > self.z_min):
            raise ValueError(f"PoolGrid needs cell > 0, a positive shape and z_max > z_min, got {self}")

    @property
    def num_cells(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class CameraGeometry:
    """One camera as the pooling sees it: intrinsics of the image fed to the network, mounting, stride.

    ``base_from_camera`` is the 4x4 transform taking points of the camera's optical frame into base_link
    (the ``base_link -> camera`` entry of ``/tf_static``). Values are kept as tuples so the object is
    hashable; :meth:`key` is the calibration key of :class:`GeometryCache`.
    """

    K: tuple[float, ...]
    base_from_camera: tuple[float, ...]
    image_size: tuple[int, int]  # (height, width) in pixels
    stride: int = 8

    def __post_init__(self) -> None:
        if len(self.K) != 9 or len(self.base_from_camera) != 16:
            raise ValueError("K needs 9 values (3x3) and base_from_camera 16 (4x4)")
        if not all(math.isfinite(v) for v in (*self.K, *self.base_from_camera)):
            raise ValueError("camera geometry has a non-finite value")
        k = np.asarray(self.K).reshape(3, 3)
        if not (k[0, 0] > 0 and k[1, 1] > 0) or abs(np.linalg.det(k)) < 1e-12:
            raise ValueError(f"intrinsics need positive focal lengths and an invertible K, got {self.K}")
        if min(self.image_size) < 1 or self.stride < 1:
            raise ValueError("image size and stride must be positive")

    @classmethod
    def from_arrays(cls, K: np.ndarray, base_from_camera: np.ndarray, image_size: tuple[int, int],
                    stride: int = 8) -> "CameraGeometry":
        return cls(tuple(float(v) for v in np.asarray(K, np.float64).reshape(9)),
                   tuple(float(v) for v in np.asarray(base_from_camera, np.float64).reshape(16)),
                   (int(image_size[0]), int(image_size[1])), int(stride))

    @property
    def feature_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return -(-h // self.stride), -(-w // self.stride)

    @property
    def num_pixels(self) -> int:
        fh, fw = self.feature_size
        return fh * fw

    def key(self) -> bytes:
        return repr((self.K, self.base_from_camera, self.image_size, self.stride)).encode()


def _calibration_key(cameras: Sequence[CameraGeometry], bins: DepthBins, grid: PoolGrid) -> str:
    h = hashlib.sha256()
    for c in cameras:
        h.update(c.key())
    h.update(repr((bins, grid)).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def _rays(cam: CameraGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Origin ``[3]`` and per-feature-pixel direction ``[fH * fW, 3]`` (base_link, per metre of depth)."""
    fh, fw = cam.feature_size
    s = cam.stride
    u = np.arange(fw, dtype=np.float64) * s + (s - 1) / 2.0
    v = np.arange(fh, dtype=np.float64) * s + (s - 1) / 2.0
    uu, vv = np.meshgrid(u, v)  # [fh, fw], row-major pixels
    pix = np.stack([uu.ravel(), vv.ravel(), np.ones(fh * fw)], 0)
    rays_cam = np.linalg.solve(np.asarray(cam.K, np.float64).reshape(3, 3), pix)  # z = 1: per metre of depth
    T = np.asarray(cam.base_from_camera, np.float64).reshape(4, 4)
    return T[:3, 3].copy(), (T[:3, :3] @ rays_cam).T.copy()


def frustum_points(cam: CameraGeometry, bins: DepthBins) -> np.ndarray:
    """Base_link coordinates of every frustum point, float64 ``[fH * fW, D, 3]`` (pixel-major)."""
    o, d = _rays(cam)
    return o + d[:, None, :] * bins.centres()[None, :, None]


def _cells(pts: np.ndarray, grid: PoolGrid) -> np.ndarray:
    """Flat cell index of points ``[..., 3]`` (``iy * width + ix``), -1 outside the grid or the slab."""
    ix = np.floor((pts[..., 0] - grid.x_min) / grid.cell)
    iy = np.floor((pts[..., 1] - grid.y_min) / grid.cell)
    z = pts[..., 2]
    inside = (ix >= 0) & (ix < grid.width) & (iy >= 0) & (iy < grid.height) & (z >= grid.z_min) & (z < grid.z_max)
    return np.where(inside, iy * grid.width + ix, -1).astype(np.int64)


@dataclass(frozen=True)
class PoolGeometry:
    """Precomputed pooling structure of one calibration (see the module docstring).

    Pair arrays are sorted by ``(cell, pixel)``; ``row_cell[r]`` is the ``r``-th non-empty cell and its
    pairs are ``row_ptr[r]:row_ptr[r + 1]``. Point arrays list the kept frustum points in the same order:
    ``point_index`` indexes the flattened bin-major ``[D, num_pixels]`` depth probabilities and ``pair_of_point``
    says which pair each belongs to (``point_ptr`` = the interval ranks, where each pair's run starts).
    """

    key: str
    cameras: tuple[CameraGeometry, ...]
    bins: DepthBins
    grid: PoolGrid
    num_pixels: int
    pair_cell: np.ndarray  # int64 [Q]
    pair_pixel: np.ndarray  # int64 [Q]
    pair_bin0: np.ndarray  # int32 [Q]
    pair_bins: np.ndarray  # int32 [Q]
    row_cell: np.ndarray  # int64 [R]
    row_ptr: np.ndarray  # int64 [R + 1]
    point_index: np.ndarray  # int64 [P]
    pair_of_point: np.ndarray  # int64 [P]
    point_ptr: np.ndarray  # int64 [Q + 1]
    _tensors: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_bins(self) -> int:
        return self.bins.count

    @property
    def num_frustum_points(self) -> int:
        return self.num_pixels * self.bins.count

    @property
    def num_points(self) -> int:
        """Frustum points inside the grid (the rest are dropped once, here)."""
        return len(self.point_index)

    @property
    def num_pairs(self) -> int:
        return len(self.pair_cell)

    def tensors(self) -> dict[str, Tensor]:
        """The index arrays as int64 torch tensors (cached), the inputs of :func:`bev_pool_gather`."""
        if not self._tensors:
            for name in ("point_index", "pair_of_point", "pair_pixel", "pair_cell"):
                self._tensors[name] = torch.from_numpy(getattr(self, name))
        return self._tensors

    def stats(self) -> dict[str, int]:
        return {"frustum_points": self.num_frustum_points, "kept_points": self.num_points,
                "pairs": self.num_pairs, "nonempty_cells": len(self.row_cell)}


def build_geometry(cameras: Sequence[CameraGeometry] | CameraGeometry, bins: DepthBins = DepthBins(),
                   grid: PoolGrid = PoolGrid()) -> PoolGeometry:
    """The pooling structure of a rig (cameras concatenated in order); numpy, float64 geometry.

    Points are computed as ``origin + depth * direction`` so each coordinate is monotone in depth even
    after rounding: the bins of one (cell, pixel) pair are consecutive, which the fused kernel relies on
    (checked here).
    """
    cams = (cameras,) if isinstance(cameras, CameraGeometry) else tuple(cameras)
    if not cams:
        raise ValueError("build_geometry needs at least one camera")
    D = bins.count
    cells, pix_offset = [], 0
    for cam in cams:
        cells.append(_cells(frustum_points(cam, bins), grid))  # [n_pix, D]
        pix_offset += cam.num_pixels
    n_pix = pix_offset
    cell = np.concatenate(cells, 0).reshape(-1)  # flat point index = pixel * D + bin
    kept = np.flatnonzero(cell >= 0)
    cell_k = cell[kept]
    pixel_k = kept // D
    # sort by (cell, pixel); the stable sort keeps bins ascending within a pair
    order = np.argsort(cell_k * n_pix + pixel_k, kind="stable")
    point_index = kept[order]
    cell_k, pixel_k = cell_k[order], pixel_k[order]
    key = cell_k * n_pix + pixel_k
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    point_ptr = np.r_[starts, len(key)].astype(np.int64)
    pair_of_point = np.repeat(np.arange(len(starts), dtype=np.int64), np.diff(point_ptr))
    pair_cell, pair_pixel = cell_k[starts], pixel_k[starts]
    bin_k = point_index % D
    pair_bin0 = bin_k[starts].astype(np.int32)
    pair_bins = np.diff(point_ptr).astype(np.int32)
    last_bin = bin_k[point_ptr[1:] - 1] if len(starts) else np.zeros(0, np.int64)
    if np.any(last_bin - pair_bin0 + 1 != pair_bins):
        raise AssertionError("a (cell, pixel) pair's bins are not consecutive; the fused kernel needs them to be")
    rstarts = np.flatnonzero(np.r_[True, pair_cell[1:] != pair_cell[:-1]]) if len(starts) else np.zeros(0, np.int64)
    return PoolGeometry(
        key=_calibration_key(cams, bins, grid), cameras=cams, bins=bins, grid=grid, num_pixels=n_pix,
        pair_cell=pair_cell.astype(np.int64), pair_pixel=pair_pixel.astype(np.int64), pair_bin0=pair_bin0,
        pair_bins=pair_bins, row_cell=pair_cell[rstarts].astype(np.int64),
        row_ptr=np.r_[rstarts, len(starts)].astype(np.int64), point_index=(bin_k * n_pix + pixel_k).astype(np.int64),
        pair_of_point=pair_of_point, point_ptr=point_ptr)


class GeometryCache:
    """Geometry per calibration: rebuilt only when the cameras, bins or grid change.

    Keeps the ``capacity`` most recently used geometries (a rig that alternates between two calibrations,
    e.g. a stereo pair's two cameras, does not rebuild every frame). ``builds`` counts the rebuilds.
    """

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict[str, PoolGeometry] = OrderedDict()
        self.builds = 0

    def get(self, cameras: Sequence[CameraGeometry] | CameraGeometry, bins: DepthBins = DepthBins(),
            grid: PoolGrid = PoolGrid()) -> PoolGeometry:
        cams = (cameras,) if isinstance(cameras, CameraGeometry) else tuple(cameras)
        key = _calibration_key(cams, bins, grid)
        geom = self._items.get(key)
        if geom is None:
            geom = build_geometry(cams, bins, grid)
            self.builds += 1
            self._items[key] = geom
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return geom


# --------------------------------------------------------------------------------------------------
# Run-time pooling
# --------------------------------------------------------------------------------------------------


def flatten_maps(depth: Tensor | Sequence[Tensor], feats: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Network maps -> the pooling's matrices: depth ``[N, D, fH, fW]`` -> bin-major ``[D, N fH fW]``
    (a free view for one camera) and features ``[N, C, fH, fW]`` -> pixel-major ``[N fH fW, C]``.

    Either a stacked ``[N, ...]`` tensor per input (cameras of one size), a ``[D or C, fH, fW]`` tensor of
    one camera, or a list of per-camera tensors (cameras of different sizes, concatenated in order);
    2-D inputs are taken as already flat. Channels-last maps of one camera (a network run in
    ``torch.channels_last``) come back as views, without copies: the depth matrix then has unit stride
    along the bins (its transpose is contiguous), which the fused kernel reads as it is.
    """

    def stacked(x: Tensor | Sequence[Tensor]) -> list[Tensor]:
        if isinstance(x, Tensor):
            if x.dim() == 3:
                return [x]
            return list(x.unbind(0)) if x.dim() == 4 else [x]
        return [t.squeeze(0) if t.dim() == 4 else t for t in x]

    def pixel_major(t: Tensor) -> Tensor:
        """[K, fH, fW] -> [fH fW, K]: a view for a channels-last map, a transposing copy otherwise."""
        return t.permute(1, 2, 0).reshape(-1, t.shape[0])

    ds, fs = stacked(depth), stacked(feats)
    if ds[0].dim() == 2:
        d = ds[0]
    elif len(ds) == 1 and ds[0].stride(0) == 1 and ds[0].shape[0] > 1:
        d = pixel_major(ds[0]).t()  # channels-last: a [D, pixels] view with unit bin stride, no copy
    else:
        d = torch.cat([t.reshape(t.shape[0], -1) for t in ds], 1) if len(ds) > 1 else ds[0].reshape(ds[0].shape[0], -1)
    if fs[0].dim() == 2:
        f = fs[0]
    else:
        f = torch.cat([pixel_major(t) for t in fs], 0) if len(fs) > 1 else pixel_major(fs[0])
    return d, f


#: rows (non-empty cells) per block of the fused kernel: a block's float64 accumulators (32 x C) stay in
#: L1 while they are written out channel by channel
_BLOCK = 32


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _pool_rows(probs: np.ndarray, feats: np.ndarray, row_cell: np.ndarray, row_ptr: np.ndarray,
               pair_pixel: np.ndarray, pair_bin0: np.ndarray, pair_bins: np.ndarray,
               out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[:, cell] = sum over the cell's pairs of (sum of the pair's bins of probs) * feats[pixel]``.

    ``probs`` ``[D, pixels]`` (C- or Fortran-ordered: numba compiles one version per layout, and a
    pixel's bins are contiguous in the Fortran one), ``feats`` ``[pixels, C]`` (float32), ``out``
    ``[C, cells]`` float32 zeroed.
    Blocks of :data:`_BLOCK` non-empty cells run in parallel; within a block each cell's row is
    accumulated with a contiguous (vectorised) channel loop, then the block is written out channel by
    channel (cells ascend, so each channel's writes are close together; writing a whole column per cell
    instead strides over the ``C`` planes and was ~3x slower). Sums run in float64 (a float32 x float32
    product is exact in float64), so the only float32 rounding is the final one: the result is within
    ~eps32 of the exact sum however many terms a cell has (near the camera a 0.5 m cell gathers more
    than 1000), at no measurable cost -- the kernel is bound by the row gathers, not the arithmetic.
    """
    C = feats.shape[1]
    R = row_cell.shape[0]
    for k in nb.prange((R + _BLOCK - 1) // _BLOCK):
        r0 = k * _BLOCK
        r1 = min(R, r0 + _BLOCK)
        acc = np.zeros((_BLOCK, C), np.float64)
        for r in range(r0, r1):
            a = acc[r - r0]
            for q in range(row_ptr[r], row_ptr[r + 1]):
                p = pair_pixel[q]
                b0 = pair_bin0[q]
                w = 0.0
                for b in range(b0, b0 + pair_bins[q]):
                    w += np.float64(probs[b, p])
                f = feats[p]
                for c in range(C):
                    a[c] += w * np.float64(f[c])
        for c in range(C):
            oc = out[c]
            for r in range(r0, r1):
                oc[row_cell[r]] = acc[r - r0, c]


def _threads() -> int:
    n = max(1, torch.get_num_threads())
    nb.set_num_threads(max(1, min(n, nb.config.NUMBA_NUM_THREADS)))
    return n


def bev_pool(depth: Tensor | Sequence[Tensor], feats: Tensor | Sequence[Tensor], geometry: PoolGeometry) -> Tensor:
    """Pooled BEV features ``[C, height, width]`` (float32, CPU) of one frame: the fused run-time kernel.

    ``depth``: per-pixel depth probabilities, ``feats``: context features (any layout :func:`flatten_maps`
    takes; a single camera's ``[1, D, fH, fW]`` depth is used in place, the features are transposed once).
    Not differentiable (use :func:`bev_pool_torch` to train). Each cell is one sequential float64 sum in a
    fixed order, so the result does not depend on the thread count and is within ~eps32 (relative to the
    sum of the absolute terms) of the exact pooling.
    """
    p, f = flatten_maps(depth, feats)
    _check(p, f, geometry)
    probs = p.detach().to("cpu", torch.float32).numpy()
    if not (probs.flags.c_contiguous or probs.flags.f_contiguous):
        probs = np.ascontiguousarray(probs)
    fe = np.ascontiguousarray(f.detach().to("cpu", torch.float32).numpy())
    g = geometry.grid
    # torch's allocator, not np.zeros: a fresh 8 MB numpy calloc is mmapped and page-faults on every
    # first write (~10 ms per call here, more than the kernel itself at stride 16)
    out = torch.zeros(fe.shape[1], g.num_cells, dtype=torch.float32)
    n = _threads()
    _pool_rows(probs, fe, geometry.row_cell, geometry.row_ptr, geometry.pair_pixel, geometry.pair_bin0,
               geometry.pair_bins, out.numpy())
    if torch.get_num_threads() != n:
        # numba's OpenMP threading layer starts by setting the process-wide OpenMP thread count to its
        # own default (all cores), which torch shares: a node configured for 1 thread silently ran its
        # convolutions on 2 afterwards. Put torch's setting back.
        torch.set_num_threads(n)
    return out.view(fe.shape[1], g.height, g.width)


def _check(p: Tensor, f: Tensor, geometry: PoolGeometry) -> None:
    if p.shape != (geometry.num_bins, geometry.num_pixels):
        raise ValueError(f"depth has {tuple(p.shape)} (bins, pixels); the geometry expects "
                         f"({geometry.num_bins}, {geometry.num_pixels})")
    if f.dim() != 2 or f.shape[0] != geometry.num_pixels:
        raise ValueError(f"features have {tuple(f.shape)}; the geometry expects ({geometry.num_pixels}, C)")


class _RowScatterAdd(torch.autograd.Function):
    """``out`` (zeros ``[n, C]``) with ``rows`` added at ``index``: ``index_add`` in torch, one ONNX
    ScatterND(reduction="add") in the graph (torch's own ``index_add`` export drops the reduction, so
    repeated cells would overwrite instead of summing)."""

    @staticmethod
    def forward(ctx, out: Tensor, index: Tensor, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        return out.index_add(0, index, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return grad, None, grad.index_select(0, index)

    @staticmethod
    def symbolic(g, out, index, rows):  # type: ignore[no-untyped-def]
        idx = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)))
        return g.op("ScatterND", out, idx, rows, reduction_s="add")


def bev_pool_gather(depth_flat: Tensor, feats_flat: Tensor, point_index: Tensor, pair_of_point: Tensor,
                    pair_pixel: Tensor, pair_cell: Tensor, num_cells: int) -> Tensor:
    """The same pooling in plain torch ops: differentiable, and the ONNX graph of :func:`export_onnx`.

    ``depth_flat`` ``[D * num_pixels]`` (bin-major), ``feats_flat`` ``[num_pixels, C]``; the index
    tensors come from :meth:`PoolGeometry.tensors`. Returns ``[num_cells, C]`` (cell-major, so the ONNX
    graph ends in one row scatter; reshape/transpose outside).

    Gather the kept points' probabilities, segment-sum them per (cell, pixel) pair (ScatterElements
    add), gather and weight each pair's feature row, scatter-add rows into cells. The pair rows
    (``pairs x C``) are formed here -- fewer than the frustum's ``D x pixels x C`` values, but still the
    dominant memory, which is why the run-time path is the fused kernel.
    """
    w = depth_flat.gather(0, point_index)
    m = torch.zeros(pair_pixel.shape[0], dtype=w.dtype, device=w.device).scatter_add(0, pair_of_point, w)
    rows = feats_flat.index_select(0, pair_pixel) * m.unsqueeze(1)
    out = torch.zeros(num_cells, feats_flat.shape[1], dtype=rows.dtype, device=rows.device)
    return _RowScatterAdd.apply(out, pair_cell, rows)


def bev_pool_torch(depth: Tensor | Sequence[Tensor], feats: Tensor | Sequence[Tensor], geometry: PoolGeometry) -> Tensor:
    """:func:`bev_pool_gather` on network maps: ``[C, height, width]``, differentiable (the training path)."""
    p, f = flatten_maps(depth, feats)
    _check(p, f, geometry)
    t = {k: v.to(p.device) for k, v in geometry.tensors().items()}
    g = geometry.grid
    out = bev_pool_gather(p.reshape(-1), f, t["point_index"], t["pair_of_point"], t["pair_pixel"], t["pair_cell"],
                          g.num_cells)
    return out.t().reshape(f.shape[1], g.height, g.width)


# --------------------------------------------------------------------------------------------------
# Reference: Lift-Splat-Shoot as written (geometry per call, materialised frustum, scatter-add)
# --------------------------------------------------------------------------------------------------


def lift_splat_naive(depth: Tensor, feats: Tensor, cameras: Sequence[CameraGeometry] | CameraGeometry,
                     bins: DepthBins = DepthBins(), grid: PoolGrid = PoolGrid()) -> Tensor:
    """Reference pooling ``[C, height, width]``: per camera, frustum geometry in torch, the full
    ``[D, fH, fW, C]`` frustum feature tensor ``P * F`` materialised, points outside the grid masked out,
    then ``index_add`` into the cells. ``depth`` ``[N, D, fH, fW]``, ``feats`` ``[N, C, fH, fW]``.
    """
    cams = (cameras,) if isinstance(cameras, CameraGeometry) else tuple(cameras)
    if depth.shape[0] != len(cams) or feats.shape[0] != len(cams):
        raise ValueError(f"{len(cams)} cameras but maps for {depth.shape[0]} / {feats.shape[0]}")
    C = feats.shape[1]
    out = torch.zeros(grid.num_cells, C, dtype=feats.dtype, device=feats.device)
    ds = torch.from_numpy(bins.centres())
    for n, cam in enumerate(cams):
        fh, fw = cam.feature_size
        # geometry, per call (LSS get_geometry): pixel grid x depth -> camera -> base_link, in float64 with
        # the same formula as build_geometry (points on a cell edge land in the same cell on both sides)
        o, rays = (torch.from_numpy(a) for a in _rays(cam))
        pts = o + ds[:, None, None] * rays.view(1, fh * fw, 3)  # [D, fh * fw, 3]
        ix = torch.floor((pts[..., 0] - grid.x_min) / grid.cell).long()
        iy = torch.floor((pts[..., 1] - grid.y_min) / grid.cell).long()
        z = pts[..., 2]
        keep = (ix >= 0) & (ix < grid.width) & (iy >= 0) & (iy < grid.height) & (z >= grid.z_min) & (z < grid.z_max)
        # lift: the frustum features, materialised [D, fh, fw, C]
        frustum = depth[n].unsqueeze(-1) * feats[n].permute(1, 2, 0).unsqueeze(0)
        keep = keep.reshape(-1)
        # splat: scatter-add the kept points into their cells
        out.index_add_(0, (iy * grid.width + ix).reshape(-1)[keep].to(out.device), frustum.reshape(-1, C)[keep.to(out.device)])
    return out.t().reshape(C, grid.height, grid.width)


# --------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------


class _GatherPool(torch.nn.Module):
    def __init__(self, num_cells: int) -> None:
        super().__init__()
        self.num_cells = int(num_cells)

    def forward(self, depth_flat: Tensor, feats_flat: Tensor, point_index: Tensor, pair_of_point: Tensor,
                pair_pixel: Tensor, pair_cell: Tensor) -> Tensor:
        return bev_pool_gather(depth_flat, feats_flat, point_index, pair_of_point, pair_pixel, pair_cell,
                               self.num_cells)


#: graph input names of :func:`export_onnx`, in order
ONNX_INPUTS = ("depth", "features", "point_index", "pair_of_point", "pair_pixel", "pair_cell")


def onnx_feeds(depth: Tensor | Sequence[Tensor], feats: Tensor | Sequence[Tensor], geometry: PoolGeometry) -> dict[str, np.ndarray]:
    """Inputs of the exported graph for one frame: the flat maps and the geometry's index arrays."""
    p, f = flatten_maps(depth, feats)
    _check(p, f, geometry)
    feeds = {"depth": p.detach().float().reshape(-1).numpy(), "features": f.detach().float().contiguous().numpy()}
    feeds.update({k: getattr(geometry, k) for k in ONNX_INPUTS[2:]})
    return feeds


def export_onnx(num_cells: int, channels: int = 8, path: Optional[str] = None, opset: int = 17) -> bytes:
    """ONNX graph of :func:`bev_pool_gather` for a grid of ``num_cells`` cells; returns the model bytes.

    Every other size is a dynamic axis (pixels x bins, channels, points, pairs), so one file serves any
    calibration: the geometry's index arrays are graph inputs (:func:`onnx_feeds`), recomputed on the host
    only when the calibration changes. Output ``bev`` is ``[num_cells, C]``.
    """
    g = torch.Generator().manual_seed(0)
    n_pix, D, P = 6, 4, 10
    example = (torch.rand(n_pix * D, generator=g), torch.rand(n_pix, channels, generator=g),
               torch.randint(0, n_pix * D, (P,), generator=g), torch.arange(P) // 2,
               torch.randint(0, n_pix, (P // 2,), generator=g), torch.randint(0, num_cells, (P // 2,), generator=g))
    dyn = {"depth": {0: "pixel_bins"}, "features": {0: "pixels", 1: "channels"}, "point_index": {0: "points"},
           "pair_of_point": {0: "points"}, "pair_pixel": {0: "pairs"}, "pair_cell": {0: "pairs"},
           "bev": {1: "channels"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(_GatherPool(num_cells).eval(), example, buf, input_names=list(ONNX_INPUTS),
                              output_names=["bev"], dynamic_axes=dyn, opset_version=opset, dynamo=False)
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as fh:
            fh.write(data)
    return data
