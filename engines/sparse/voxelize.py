"""Point <-> voxel helpers (SPVConv style): mean voxelisation and trilinear devoxelisation.

Voxel ``v`` covers ``[origin + v * size, origin + (v + 1) * size)``; coordinates are non-negative
because the origin is the lower corner of the range. Voxelised coordinates come out sorted by
(b, x, y, z), which lets the kernel-map builder skip its sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .geometry import Triple
from .tensor import SparseTensor


@dataclass(frozen=True)
class VoxelGrid:
    """Where voxel (0, 0, 0) starts and how big a voxel is (metres), plus the grid extent."""

    origin: tuple[float, float, float]
    voxel_size: tuple[float, float, float]
    spatial_shape: Triple


def _as3(v: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(v, (int, float)):
        return (float(v),) * 3  # type: ignore[return-value]
    t = tuple(float(a) for a in v)
    if len(t) != 3:
        raise ValueError("expected 3 values")
    return t  # type: ignore[return-value]


def voxelize_mean(
    points: torch.Tensor,
    voxel_size: float | Sequence[float],
    point_range: Optional[Sequence[float]] = None,
    batch: Optional[torch.Tensor] = None,
) -> tuple[SparseTensor, torch.Tensor, VoxelGrid]:
    """Average all point columns (x, y, z, extras...) per voxel.

    Returns the sparse tensor (features = per-voxel mean of ``points``), the voxel row of every
    point (-1 for points outside ``point_range`` = (xmin, ymin, zmin, xmax, ymax, zmax)) and the grid.
    """
    vs = torch.tensor(_as3(voxel_size), dtype=torch.float64, device=points.device)
    xyz = points[:, :3].double()
    if point_range is not None:
        lo = torch.tensor(point_range[:3], dtype=torch.float64, device=points.device)
        hi = torch.tensor(point_range[3:], dtype=torch.float64, device=points.device)
        keep = ((xyz >= lo) & (xyz < hi)).all(1)
        shape = torch.ceil((hi - lo) / vs - 1e-9).long()
    else:
        lo = torch.floor(xyz.amin(0) / vs) * vs if len(xyz) else torch.zeros(3, dtype=torch.float64)
        keep = torch.ones(len(xyz), dtype=torch.bool, device=points.device)
        shape = None
    ijk = torch.floor((xyz - lo) / vs).long()
    if shape is not None:
        ijk = torch.minimum(ijk, shape - 1)  # guard the upper edge against rounding
    else:
        shape = (ijk.amax(0) + 1) if len(ijk) else torch.ones(3, dtype=torch.long)
    b = batch.long() if batch is not None else torch.zeros(len(points), dtype=torch.long, device=points.device)
    X, Y, Z = (int(v) for v in shape)
    key = ((b * X + ijk[:, 0]) * Y + ijk[:, 1]) * Z + ijk[:, 2]
    sel = torch.nonzero(keep).flatten()
    uniq, inv = torch.unique(key[sel], sorted=True, return_inverse=True)
    n = uniq.shape[0]
    feats = torch.zeros((n, points.shape[1]), dtype=torch.float64, device=points.device)
    if points.device.type == "cuda":
        order = torch.argsort(inv, stable=True)
        counts = torch.bincount(inv, minlength=n)
        feats = torch.segment_reduce(points[sel][order].double(), "sum", lengths=counts)
    else:
        feats.index_add_(0, inv, points[sel].double())
        counts = torch.bincount(inv, minlength=n)
    feats = (feats / counts.clamp(min=1).unsqueeze(1).double()).to(points.dtype)
    z = uniq % Z
    r = uniq // Z
    y = r % Y
    r = r // Y
    x = r % X
    bb = r // X
    coords = torch.stack([bb, x, y, z], 1).int()
    p2v = torch.full((len(points),), -1, dtype=torch.long, device=points.device)
    p2v[sel] = inv
    grid = VoxelGrid(origin=tuple(float(v) for v in lo.cpu()), voxel_size=_as3(voxel_size), spatial_shape=(X, Y, Z))  # type: ignore[arg-type]
    st = SparseTensor(feats, coords, 1, (X, Y, Z), int(b.max().item()) + 1 if len(b) else 1)
    return st, p2v, grid


def voxel_coords_np(points: np.ndarray, voxel_size: float, point_range: Optional[Sequence[float]] = None) -> np.ndarray:
    """Unique int32 (0, x, y, z) voxel coordinates of a point cloud (sorted), numpy only."""
    xyz = points[:, :3].astype(np.float64)
    if point_range is not None:
        lo = np.asarray(point_range[:3], np.float64)
        hi = np.asarray(point_range[3:], np.float64)
        xyz = xyz[((xyz >= lo) & (xyz < hi)).all(1)]
    else:
        lo = np.floor(xyz.min(0) / voxel_size) * voxel_size
    ijk = np.floor((xyz - lo) / voxel_size).astype(np.int64)
    ijk = np.unique(ijk, axis=0)
    return np.concatenate([np.zeros((len(ijk), 1), np.int64), ijk], 1).astype(np.int32)


def _lookup(coords: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Row of each query coordinate in ``coords`` (int [N, 4]) or -1: sort + searchsorted."""
    c = coords.long()
    q = query.long()
    mn = torch.minimum(c.amin(0), q.amin(0)) if len(c) and len(q) else torch.zeros(4, dtype=torch.long)
    mx = torch.maximum(c.amax(0), q.amax(0)) if len(c) and len(q) else torch.zeros(4, dtype=torch.long)
    rng = mx - mn + 1

    def pack(t: torch.Tensor) -> torch.Tensor:
        t = t - mn
        return ((t[:, 0] * rng[1] + t[:, 1]) * rng[2] + t[:, 2]) * rng[3] + t[:, 3]

    kc = pack(c)
    sk, perm = torch.sort(kc)
    kq = pack(q)
    if len(sk) == 0:
        return torch.full((len(q),), -1, dtype=torch.long, device=q.device)
    pos = torch.searchsorted(sk, kq).clamp_(max=len(sk) - 1)
    return torch.where(sk[pos] == kq, perm[pos], torch.full_like(pos, -1))


def devoxelize_trilinear(
    x: SparseTensor, points: torch.Tensor, grid: VoxelGrid, batch: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Interpolate voxel features at points from the 8 surrounding voxel centres.

    Works at any tensor stride (voxel pitch = voxel size x stride). Missing corner voxels get weight
    0 and the remaining weights are renormalised (as SPVNAS does), so a point next to empty space
    takes its features from the voxels that exist.
    """
    s = torch.tensor(x.stride, dtype=torch.float64, device=points.device)
    pitch = torch.tensor(grid.voxel_size, dtype=torch.float64, device=points.device) * s
    origin = torch.tensor(grid.origin, dtype=torch.float64, device=points.device)
    u = (points[:, :3].double() - origin) / pitch - 0.5
    base = torch.floor(u)
    frac = u - base
    base = base.long()
    b = batch.long() if batch is not None else torch.zeros(len(points), dtype=torch.long, device=points.device)
    out = x.feats.new_zeros((len(points), x.num_channels))
    wsum = torch.zeros(len(points), dtype=torch.float64, device=points.device)
    parts = []
    for corner in range(8):
        off = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=points.device)
        cc = (base + off) * s.long()
        q = torch.cat([b[:, None], cc], 1)
        idx = _lookup(x.coords, q)
        w = torch.where(off.bool(), frac, 1 - frac).prod(1)
        w = torch.where(idx >= 0, w, torch.zeros_like(w))
        wsum += w
        parts.append((idx, w))
    norm = torch.where(wsum > 0, wsum, torch.ones_like(wsum))
    for idx, w in parts:
        f = x.feats[idx.clamp(min=0)]
        out += f * (w / norm).to(f.dtype).unsqueeze(1)
    return out


def voxel_to_points(x: SparseTensor, point_to_voxel: torch.Tensor) -> torch.Tensor:
    """Nearest (own-voxel) features for every point; zeros for points that were dropped."""
    f = x.feats[point_to_voxel.clamp(min=0)]
    return torch.where((point_to_voxel >= 0).unsqueeze(1), f, torch.zeros_like(f))
