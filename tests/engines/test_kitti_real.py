"""Real voxelised KITTI scans (crops, so the dense reference stays small) vs dense conv3d, fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.sparse import SparseConv3d, SparseInverseConv3d, SparseTensor, SubMConv3d, voxelize_mean

from .conftest import DATAFLOWS, F, dense_at, kitti_points, rel_err

TOL = 1e-4


def _crop(frame: int, vs: float) -> SparseTensor:
    pts = kitti_points(frame)
    keep = (pts[:, 0] > 5) & (pts[:, 0] < 11) & (np.abs(pts[:, 1]) < 3)
    st, _, _ = voxelize_mean(torch.from_numpy(pts[keep]), vs)
    assert len(st) > 500, "crop should hold a real surface"
    return st


@pytest.mark.parametrize("frame", [0, 1, 2])
@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_kitti_subm_and_strided_vs_dense(frame: int, dataflow: str) -> None:
    st = _crop(frame, 0.1)
    g = torch.Generator().manual_seed(frame)
    x = SparseTensor(torch.randn(len(st), 8, generator=g), st.coords, 1, st.spatial_shape)
    sub = SubMConv3d(8, 16, 3, bias=True, dataflow=dataflow).eval()
    down = SparseConv3d(16, 16, 3, stride=2, padding=1, indice_key="k", dataflow=dataflow).eval()
    inv = SparseInverseConv3d(16, 8, 3, indice_key="k", dataflow=dataflow).eval()
    with torch.no_grad():
        a = sub(x)
        b = down(a)
        c = inv(b)
    d_x = x.dense().double()
    da = F.conv3d(d_x, sub.dense_weight().double(), sub.bias.detach().double(), padding=1)
    assert rel_err(a.feats, dense_at(da, x.coords)) < TOL
    db = F.conv3d(a.dense().double(), down.dense_weight().double(), stride=2, padding=1)
    assert rel_err(b.feats, dense_at(db, b.coords, b.stride)) < TOL
    dc = F.conv_transpose3d(b.dense().double(), inv.dense_weight().double(), stride=2, padding=1,
                            output_padding=[(s + 1) % 2 for s in x.spatial_shape])
    assert rel_err(c.feats, dense_at(dc, x.coords)) < TOL


def test_kitti_voxel_neighbourhood_statistics() -> None:
    """Surface-like data: a 3x3x3 submanifold map has few neighbours per voxel (field notes: ~5-9)."""
    pts = kitti_points(0)
    st, _, _ = voxelize_mean(torch.from_numpy(pts), 0.1)
    conv = SubMConv3d(4, 4, 3)
    km = conv.kernel_map(st)
    per_voxel = km.n_pairs / km.n_out
    assert 3.0 < per_voxel < 12.0
    assert km.n_out == len(st)
