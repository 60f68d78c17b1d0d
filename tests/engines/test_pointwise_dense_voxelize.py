"""BatchNorm/ReLU/Sequential, dense and BEV layouts, point <-> voxel helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.sparse import (
    SparseBatchNorm,
    SparseReLU,
    SparseSequential,
    SparseTensor,
    SubMConv3d,
    devoxelize_trilinear,
    to_bev,
    to_dense,
    voxel_to_points,
    voxelize_mean,
)

from .conftest import random_sparse


def test_batchnorm_relu_and_sequential_apply_to_features() -> None:
    x = random_sparse(100, 4, dtype=torch.float32, seed=41)
    bn = SparseBatchNorm(4).eval()
    bn.running_mean.fill_(0.5)
    y = SparseReLU()(bn(x))
    want = torch.relu((x.feats - 0.5) / torch.sqrt(torch.tensor(1.0 + bn.eps)))
    assert torch.allclose(y.feats, want) and y.coords is x.coords
    seq = SparseSequential(SubMConv3d(4, 6, 3), nn.BatchNorm1d(6), nn.ReLU()).eval()
    with torch.no_grad():
        z = seq(x)
    assert z.feats.shape == (len(x), 6) and bool((z.feats >= 0).all())


def test_to_dense_and_bev_layout() -> None:
    c = torch.tensor([[0, 1, 2, 3], [1, 0, 0, 1]], dtype=torch.int32)
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = SparseTensor(f, c, 1, (3, 4, 5), 2)
    d = to_dense(x)
    assert d.shape == (2, 2, 3, 4, 5)
    assert d[0, :, 1, 2, 3].tolist() == [1.0, 2.0] and d[1, :, 0, 0, 1].tolist() == [3.0, 4.0]
    assert float(d.sum()) == 10.0
    bev = to_bev(x)
    assert bev.shape == (2, 2 * 5, 4, 3)  # [B, C*Z, Y, X]
    assert float(bev[0, 0 * 5 + 3, 2, 1]) == 1.0 and float(bev[0, 1 * 5 + 3, 2, 1]) == 2.0


def test_to_bev_is_the_height_collapse_of_to_dense_and_carries_gradients() -> None:
    # to_bev writes straight into [B, C, Z, Y, X]; it must equal the view of the dense grid
    # (OpenPCDet's HeightCompression) for any batch and stride, and train like it
    g = torch.Generator().manual_seed(3)
    X, Y, Z, B, s = 7, 5, 3, 2, 2
    cells = torch.randperm(B * X * Y * Z, generator=g)[:40]
    b, rest = cells // (X * Y * Z), cells % (X * Y * Z)
    xyz = torch.stack([rest % X, (rest // X) % Y, rest // (X * Y)], 1) * s
    coords = torch.cat([b[:, None], xyz], 1).int()
    feats = torch.randn(40, 4, generator=g, requires_grad=True)
    x = SparseTensor(feats, coords, s, (X * s, Y * s, Z * s), B)
    want = to_dense(x, (X, Y, Z), B).permute(0, 1, 4, 3, 2).reshape(B, 4 * Z, Y, X)
    got = to_bev(x, (X, Y, Z), B)
    assert got.shape == (B, 4 * Z, Y, X) and got.is_contiguous()
    assert torch.equal(got, want)
    w = torch.randn(got.shape, generator=g)
    (gf,) = torch.autograd.grad((got * w).sum(), feats)
    (wf,) = torch.autograd.grad((want * w).sum(), feats)
    assert torch.equal(gf, wf)
    with pytest.raises(ValueError, match="outside the grid"):
        to_bev(x, (X - 1, Y, Z), B)


def test_to_dense_at_stride() -> None:
    c = torch.tensor([[0, 2, 4, 6]], dtype=torch.int32)
    x = SparseTensor(torch.ones(1, 1), c, 2, (2, 3, 4), 1)
    d = x.dense()
    assert d.shape == (1, 1, 2, 3, 4) and float(d[0, 0, 1, 2, 3]) == 1.0


def test_voxelize_mean_and_back() -> None:
    pts = torch.tensor(
        [[0.01, 0.01, 0.01, 1.0], [0.09, 0.02, 0.03, 3.0], [0.25, 0.0, 0.0, 5.0], [5.0, 5.0, 5.0, 7.0]]
    )
    st, p2v, grid = voxelize_mean(pts, 0.1, point_range=(0, 0, 0, 1, 1, 1))
    assert len(st) == 2 and p2v.tolist() == [0, 0, 1, -1]
    assert torch.allclose(st.feats[0], torch.tensor([0.05, 0.015, 0.02, 2.0]))
    assert st.coords.tolist() == [[0, 0, 0, 0], [0, 2, 0, 0]]
    assert grid.spatial_shape == (10, 10, 10)
    back = voxel_to_points(st, p2v)
    assert torch.equal(back[3], torch.zeros(4)) and torch.equal(back[0], st.feats[0])


def test_voxelize_sorted_coordinates() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2000, 4, generator=g) * 3
    st, _, _ = voxelize_mean(pts, 0.2)
    c = st.coords.long()
    key = ((c[:, 1] * 100) + c[:, 2]) * 100 + c[:, 3]
    assert bool((key[1:] > key[:-1]).all())


def test_devoxelize_trilinear_exact_on_linear_field() -> None:
    # dense 4^3 block of voxels carrying a linear function of their centre
    vs = 0.5
    ijk = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (ijk.double() + 0.5) * vs
    f = (centres @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 3.0).unsqueeze(1)
    from engines.sparse.voxelize import VoxelGrid

    x = SparseTensor(f, torch.cat([torch.zeros(len(ijk), 1, dtype=torch.long), ijk], 1).int(), 1, (4, 4, 4), 1)
    grid = VoxelGrid((0.0, 0.0, 0.0), (vs, vs, vs), (4, 4, 4))
    g = torch.Generator().manual_seed(1)
    q = torch.rand(50, 3, generator=g, dtype=torch.float64) * (3 * vs) + 0.5 * vs  # inside the centre hull
    out = devoxelize_trilinear(x, q, grid)
    want = q @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 3.0
    assert torch.allclose(out[:, 0], want, atol=1e-9)
    # at a voxel centre the voxel's own feature comes back
    assert torch.allclose(devoxelize_trilinear(x, centres[:5], grid)[:, 0], f[:5, 0])


def test_devoxelize_renormalises_missing_corners() -> None:
    from engines.sparse.voxelize import VoxelGrid

    x = SparseTensor(torch.tensor([[2.0]]), torch.tensor([[0, 3, 3, 3]], dtype=torch.int32), 1, (8, 8, 8), 1)
    grid = VoxelGrid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (8, 8, 8))
    out = devoxelize_trilinear(x, torch.tensor([[3.7, 3.2, 3.9]]), grid)
    assert torch.allclose(out, torch.tensor([[2.0]]))


def test_inference_bn_folding_matches_separate_layers() -> None:
    x = random_sparse(400, 4, dtype=torch.float32, seed=42)
    torch.manual_seed(0)
    seq = SparseSequential(SubMConv3d(4, 8, 3, bias=True), nn.BatchNorm1d(8), nn.ReLU(), SubMConv3d(8, 8, 3), SparseBatchNorm(8))
    g = torch.Generator().manual_seed(1)
    for m in seq.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(8, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(8, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(8, generator=g) - 0.5)
    seq.eval()
    with torch.no_grad():
        fused = seq(x).feats
        seq.fuse = False
        plain = seq(x).feats
    assert torch.allclose(fused, plain, rtol=1e-5, atol=1e-6)
    # parameters changed in place -> the folded copy is rebuilt
    seq.fuse = True
    with torch.no_grad():
        seq[1].running_mean.add_(1.0)
        again = seq(x).feats
        seq.fuse = False
        want = seq(x).feats
    assert torch.allclose(again, want, rtol=1e-5, atol=1e-6) and not torch.allclose(again, fused)


def test_training_mode_is_not_folded() -> None:
    x = random_sparse(200, 4, dtype=torch.float32, seed=43)
    seq = SparseSequential(SubMConv3d(4, 8, 3), nn.BatchNorm1d(8), nn.ReLU()).train()
    before = seq[1].running_mean.clone()
    seq(x)
    assert not torch.equal(seq[1].running_mean, before)  # BN ran as a layer and updated its statistics
