"""The fused, output-tiled dataflows (`dataflow_fused.py`): exact against the dense conv and the other
dataflows, the fused loop actually taken (sorted and unsorted input, inverse maps), bit-identical
across thread counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.sparse import SparseConv3d, SparseTensor, SubMConv3d, voxelize_mean
from engines.sparse import dataflow_fused
from engines.sparse.autotune import DATAFLOWS

from .conftest import F, dense_at, kitti_points, random_sparse, rel_err

FUSED = ["fused_gather_scatter", "fused_hybrid", "implicit_gemm_fused"]
EPS = {torch.float32: float(torch.finfo(torch.float32).eps), torch.float64: float(torch.finfo(torch.float64).eps)}

pytestmark = pytest.mark.skipif(not dataflow_fused.available(), reason="torch exports no Fortran sgemm_/dgemm_ here")


def _sorted(x: SparseTensor) -> SparseTensor:
    """Same sites in (b, x, y, z) order -- what the voxeliser and every strided layer emit."""
    c = x.coords.long()
    key = ((c[:, 0] * 4096 + c[:, 1]) * 4096 + c[:, 2]) * 4096 + c[:, 3]
    o = torch.argsort(key)
    return SparseTensor(x.feats[o].contiguous(), x.coords[o].contiguous(), x.stride, x.spatial_shape, x.batch_size)


def _tol(dtype: torch.dtype, k: int, cin: int) -> float:
    # a sum of K * C_in products, each rounded: relative error grows at most ~ eps * terms
    return EPS[dtype] * k * cin * 4


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fused_calls(monkeypatch):
    """Count the fused loop's runs, so a test can tell the fused path from the fallback."""
    calls = []
    inner = dataflow_fused._fused_cpu

    def counting(*a, **kw):
        y = inner(*a, **kw)
        calls.append(y is not None)
        return y

    monkeypatch.setattr(dataflow_fused, "_fused_cpu", counting)
    return calls


@pytest.mark.parametrize("dataflow", FUSED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_subm_and_strided_match_dense(dataflow: str, dtype: torch.dtype, fused_calls) -> None:
    # 4000 of 2 x 16 x 14 x 10 cells: dense enough that the hybrid has output-stationary offsets
    x = _sorted(random_sparse(4000, 24, shape=(16, 14, 10), batch=2, dtype=dtype, seed=31))
    subm = SubMConv3d(24, 40, 3, bias=True, dataflow=dataflow).to(dtype).eval()
    down = SparseConv3d(24, 16, 3, stride=2, padding=1, dataflow=dataflow).to(dtype).eval()
    with torch.no_grad():
        y = subm(x)
        z = down(x)
    d = F.conv3d(x.dense().double(), subm.dense_weight().double(), subm.bias.double(), padding=1)
    assert torch.equal(y.coords, x.coords)
    assert rel_err(y.feats, dense_at(d, x.coords)) < _tol(dtype, 27, 24)
    dd = F.conv3d(x.dense().double(), down.dense_weight().double(), None, stride=2, padding=1)
    assert rel_err(z.feats, dense_at(dd, z.coords, z.stride)) < _tol(dtype, 27, 24)
    assert fused_calls == [True, True]  # both layers ran the fused loop, not the fallback
    if dataflow == "fused_hybrid":
        km = x.cache.get(x.coords, subm.geometry(x), x.spatial_shape)
        assert 0 < len(dataflow_fused.dense_offsets(km, dataflow_fused.HYBRID_DENSE_AT)) < 26


@pytest.mark.parametrize("dataflow", FUSED)
def test_fused_on_unsorted_input_and_inverse_maps(dataflow: str, fused_calls) -> None:
    """Pairs not sorted by output row (upstream voxel order; inverse maps): sorted once per map, same result."""
    from engines.sparse import SparseInverseConv3d

    x = random_sparse(900, 8, shape=(12, 12, 8), batch=1, dtype=torch.float64, seed=32)  # random order
    conv = SubMConv3d(8, 8, 3, dataflow=dataflow).double().eval()
    down = SparseConv3d(8, 6, 3, stride=2, padding=1, indice_key="d", dataflow="gather_scatter").double().eval()
    inv = SparseInverseConv3d(6, 8, 3, indice_key="d", dataflow=dataflow).double().eval()
    km = x.cache.get(x.coords, conv.geometry(x), x.spatial_shape)
    assert not np.all(np.diff(km.pairs_np()[1][km.pairs_np()[2][0]:km.pairs_np()[2][1]]) >= 0)  # unsorted pairs
    with torch.no_grad():
        y = DATAFLOWS[dataflow](x.feats, conv.weight, km)
        ref = DATAFLOWS["gather_scatter"](x.feats, conv.weight, km)
        z = down(x)
        up = inv(z)
        inv.dataflow = "gather_scatter"
        up_ref = inv(z)
    assert fused_calls == [True, True]  # the SubM layer and the inverse layer both ran the fused loop
    assert rel_err(y, ref) < _tol(torch.float64, 27, 8)
    assert torch.equal(up.coords, x.coords) and rel_err(up.feats, up_ref.feats) < _tol(torch.float64, 27, 6)


@pytest.mark.parametrize("dataflow", FUSED)
def test_fused_bitwise_identical_across_threads(dataflow: str, restore_threads, fused_calls) -> None:
    x = _sorted(random_sparse(7000, 64, shape=(40, 40, 8), batch=1, dtype=torch.float32, seed=33))
    torch.manual_seed(5)
    conv = SubMConv3d(64, 64, 3, dataflow=dataflow).eval()
    down = SparseConv3d(64, 32, 3, stride=2, padding=1, dataflow=dataflow).eval()
    outs = []
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        fresh = SparseTensor(x.feats, x.coords, 1, x.spatial_shape)
        with torch.no_grad():
            outs.append(down(conv(fresh)).feats)
    assert all(fused_calls)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_fused_on_a_real_scan_matches_gather_scatter(fused_calls) -> None:
    """KITTI 000000 at 0.2 m (voxeliser output: sorted), fp64: several tiles, real neighbour densities."""
    pts = torch.from_numpy(kitti_points(0))
    st, _, _ = voxelize_mean(pts, 0.2)
    torch.manual_seed(6)
    feats = torch.randn(len(st), 16, dtype=torch.float64)
    x = SparseTensor(feats, st.coords, 1, st.spatial_shape)
    conv = SubMConv3d(16, 32, 3).double().eval()
    km = x.cache.get(x.coords, conv.geometry(x), x.spatial_shape)
    w = conv.weight.detach()
    with torch.no_grad():
        ref = DATAFLOWS["gather_scatter"](feats, w, km)
        for name in FUSED:
            assert rel_err(DATAFLOWS[name](feats, w, km), ref) < _tol(torch.float64, 27, 16)
    assert fused_calls == [True] * len(FUSED)
    assert km.n_out > 4 * dataflow_fused._tile_rows(16, 32, 0, 8)  # more than a few tiles


def test_dense_offsets_follow_the_density_threshold() -> None:
    x = _sorted(random_sparse(1800, 4, shape=(16, 14, 10), batch=2, seed=34))
    km = x.cache.get(x.coords, SubMConv3d(4, 4, 3).geometry(x), x.spatial_shape)
    sizes = np.asarray(km.offset_sizes(), np.float64) / km.n_out
    for at in (0.0, 0.5, 0.75, float("inf")):
        ks = dataflow_fused.dense_offsets(km, at)
        want = [k for k in range(27) if k != km.identity_offset and sizes[k] > 0 and sizes[k] >= at]
        assert ks.tolist() == want
