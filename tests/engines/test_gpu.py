"""CUDA path (torch map builder, both dataflows, Triton kernel) against the CPU engine."""

from __future__ import annotations

import pytest
import torch

from engines.sparse import SparseConv3d, SparseTensor, SubMConv3d
from engines.sparse.autotune import DATAFLOWS

from .conftest import random_sparse, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: needs a CUDA build of torch "
                                "(+ requirements/gpu.txt for the Triton kernel); benchmarks/sparse_conv_gpu.py is the full check")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("name", ["gather_scatter", "implicit_gemm", "implicit_gemm_sorted", "implicit_gemm_torch"])
def test_cuda_dataflows_match_cpu(dtype, tol, name) -> None:
    x = random_sparse(3000, 32, shape=(30, 30, 10), batch=2, dtype=torch.float32, seed=71)
    for layer in (SubMConv3d(32, 64, 3), SparseConv3d(32, 64, 3, stride=2, padding=1)):
        layer.eval()
        with torch.no_grad():
            ref = layer(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats
            xg = SparseTensor(x.feats.cuda(), x.coords.cuda(), 1, x.spatial_shape)
            km = layer.kernel_map(xg)
            out = DATAFLOWS[name](xg.feats.to(dtype), layer.weight.detach().cuda().to(dtype), km)
        assert rel_err(out.float().cpu(), ref) < tol


def test_cuda_map_equals_cpu_map() -> None:
    x = random_sparse(3000, 1, shape=(30, 30, 10), batch=2, seed=72)
    layer = SparseConv3d(1, 1, 3, stride=2, padding=1)
    a = layer.kernel_map(x)
    b = layer.kernel_map(SparseTensor(x.feats.cuda(), x.coords.cuda(), 1, x.spatial_shape))
    assert torch.equal(a.out_coords, b.out_coords.cpu())
    assert torch.equal(a.out_in_map(), b.out_in_map().cpu())


def _triton_ready() -> bool:
    from engines.sparse import triton_kernels

    return triton_kernels.available()


@pytest.mark.skipif(not torch.cuda.is_available() or not _triton_ready(),
                    reason="Triton kernel needs CUDA and triton (pip install -r requirements/gpu.txt)")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
def test_triton_kernel_on_cuda_matches_cpu(dtype, tol) -> None:
    from engines.sparse import triton_kernels

    x = random_sparse(5000, 48, shape=(40, 40, 12), batch=1, dtype=torch.float32, seed=73)
    for layer in (SubMConv3d(48, 64, 3), SparseConv3d(48, 96, 3, stride=2, padding=1)):
        layer.eval()
        with torch.no_grad():
            ref = layer(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats
            xg = SparseTensor(x.feats.cuda(), x.coords.cuda(), 1, x.spatial_shape)
            km = layer.kernel_map(xg)
            for sort in (False, True):
                out = triton_kernels.implicit_gemm(xg.feats.to(dtype), layer.weight.detach().cuda().to(dtype), km, sort)
                assert rel_err(out.float().cpu(), ref) < tol


def test_configured_backbone_on_cuda_matches_cpu() -> None:
    from engines.sparse.autotune import candidates_timed_total
    from engines.sparse.backbones import VoxelBackbone8x
    from engines.sparse.tunefile import configure

    x = random_sparse(6000, 4, shape=(64, 64, 41), batch=1, dtype=torch.float32, seed=74)
    torch.manual_seed(0)
    net = VoxelBackbone8x(4).eval()
    with torch.no_grad():
        ref = net(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats
    net = net.cuda()
    tuner = configure(net, None, "cuda")
    timed = candidates_timed_total()
    with torch.no_grad():
        out = net(SparseTensor(x.feats.cuda(), x.coords.cuda(), 1, x.spatial_shape)).feats
    assert candidates_timed_total() == timed and set(tuner.sources) == {"default"}
    assert rel_err(out.cpu(), ref) < 1e-4
