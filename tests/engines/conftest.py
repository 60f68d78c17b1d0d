"""Shared helpers for the sparse engine tests: random sparse tensors and dense references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.sparse import SparseTensor
from engines.sparse.kitti import load_velodyne, velodyne_path

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared/data"
DATAFLOWS = ["gather_scatter", "gather_scatter_blocked", "implicit_gemm", "implicit_gemm_sorted", "implicit_gemm_torch",
             "fused_gather_scatter", "implicit_gemm_fused", "onednn_gather_scatter", "onednn_blocked"]
# fused_hybrid mixes two of these paths: test_fused.py


def random_sparse(
    n: int,
    channels: int,
    shape: tuple[int, int, int] = (12, 10, 8),
    batch: int = 2,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    stride: int = 1,
) -> SparseTensor:
    """n distinct random sites on a batch x shape grid (coordinates scaled by the tensor stride)."""
    g = torch.Generator().manual_seed(seed)
    cells = shape[0] * shape[1] * shape[2]
    flat = torch.randperm(batch * cells, generator=g)[: min(n, batch * cells)]
    b = flat // cells
    r = flat % cells
    x = r // (shape[1] * shape[2])
    y = (r // shape[2]) % shape[1]
    z = r % shape[2]
    coords = torch.stack([b, x * stride, y * stride, z * stride], 1).int()
    feats = torch.randn(len(flat), channels, generator=g, dtype=torch.float64).to(dtype)
    return SparseTensor(feats, coords, stride, shape, batch)


def dense_at(dense: torch.Tensor, coords: torch.Tensor, stride=(1, 1, 1)) -> torch.Tensor:
    """Rows of a dense [B, C, X, Y, Z] result at sparse coordinates."""
    ijk = coords[:, 1:].long() // torch.tensor(stride)
    return dense[coords[:, 0].long(), :, ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max()) if b.numel() else 1.0
    return float((a.double() - b.double()).abs().max() / max(scale, 1e-30)) if a.numel() else 0.0


def kitti_points(frame: int) -> np.ndarray:
    p = velodyne_path(SHARED_DATA, frame)
    if not p.exists():
        pytest.skip(f"KITTI scan missing: {p} (shared data not present)")
    return load_velodyne(p)


__all__ = ["DATAFLOWS", "SHARED_DATA", "dense_at", "kitti_points", "random_sparse", "rel_err", "F"]
