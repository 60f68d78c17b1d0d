"""Results do not depend on the thread count (each dataflow, map builder and whole networks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.sparse import SparseTensor, SubMConv3d, SparseConv3d, build_kernel_map, ConvGeometry
from engines.sparse.backbones import VoxelBackbone8x

from .conftest import DATAFLOWS, random_sparse


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("dataflow", ["gather_scatter", "gather_scatter_blocked", "implicit_gemm", "implicit_gemm_sorted"])
def test_dataflow_bitwise_identical_across_threads(dataflow: str, restore_threads) -> None:
    x = random_sparse(6000, 32, shape=(40, 40, 12), batch=1, dtype=torch.float32, seed=21)
    conv = SubMConv3d(32, 48, 3, dataflow=dataflow).eval()
    down = SparseConv3d(48, 32, 3, stride=2, padding=1, dataflow=dataflow).eval()
    outs = []
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        fresh = SparseTensor(x.feats, x.coords, 1, x.spatial_shape)
        with torch.no_grad():
            outs.append(down(conv(fresh)).feats)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


@pytest.mark.parametrize("kind", ["subm", "down"])
def test_map_identical_across_threads(kind: str, restore_threads) -> None:
    x = random_sparse(5000, 1, shape=(30, 30, 10), batch=2, seed=22)
    geom = ConvGeometry(kind, (3, 3, 3), (1, 1, 1) if kind == "subm" else (2, 2, 2), padding=(1, 1, 1))
    torch.set_num_threads(1)
    a = build_kernel_map(x.coords, geom).out_in_map_np()
    torch.set_num_threads(2)
    b = build_kernel_map(x.coords, geom).out_in_map_np()
    assert np.array_equal(a, b)


def test_backbone_identical_across_threads(restore_threads) -> None:
    x = random_sparse(4000, 4, shape=(48, 48, 16), batch=1, dtype=torch.float32, seed=23)
    torch.manual_seed(0)
    net = VoxelBackbone8x(4, dataflow="gather_scatter").eval()
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            outs.append(net(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats)
    assert torch.equal(outs[0], outs[1])
