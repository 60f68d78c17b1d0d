"""The oneDNN gather-GEMM-scatter dataflows: exact against dense conv3d in fp32, really on oneDNN, and the
fallbacks (fp64, autograd, empty input) equal to gather-scatter. Thread-count determinism: test_determinism.py;
the fp64 parity of every dataflow: test_conv_dense.py (which, for these two, tests the fallback)."""

from __future__ import annotations

import pytest
import torch

from engines.sparse import SparseConv3d, SparseInverseConv3d, SparseTensor, SubMConv3d
from engines.sparse import dataflow_onednn as od
from engines.sparse.autotune import DATAFLOWS, candidates_for
from engines.sparse.dataflow_gather_scatter import gather_scatter

from .conftest import F, dense_at, random_sparse, rel_err

NAMES = ["onednn_gather_scatter", "onednn_blocked"]
EPS32 = float(torch.finfo(torch.float32).eps)

needs_onednn = pytest.mark.skipif(not od.available(), reason="torch built without oneDNN (mkldnn): the dataflows "
                                  "run as gather-scatter there, which test_conv_dense.py covers")


@pytest.fixture
def counting(monkeypatch):
    """Count the oneDNN GEMM calls (the real op runs)."""
    real = od._linear()
    calls = []

    def op(*a):
        calls.append(tuple(a[0].shape))
        return real(*a)

    monkeypatch.setattr(od, "_linear", lambda: op)
    return calls


def _tol(n_terms: int) -> float:
    # fp32 sums of n_terms products, relative to the largest output: n * eps bounds the rounding
    return n_terms * EPS32


@needs_onednn
@pytest.mark.parametrize("name,chunk_bytes", [(n, c) for n in NAMES for c in (od.CHUNK_BYTES, 1)],
                         ids=lambda v: str(v))
def test_subm_and_down_match_dense_conv3d_in_fp32_on_onednn(name: str, chunk_bytes: int, counting, monkeypatch) -> None:
    # chunk_bytes 1: the smallest chunks (256 rows), so an offset's pairs take several GEMMs
    monkeypatch.setattr(od, "CHUNK_BYTES", chunk_bytes)
    x = random_sparse(1500, 48, shape=(20, 18, 10), batch=2, dtype=torch.float32, seed=31)
    sub = SubMConv3d(48, 64, 3, dataflow=name).eval()
    down = SparseConv3d(64, 40, 3, stride=2, padding=1, dataflow=name).eval()
    with torch.no_grad():
        y = sub(x)
        z = down(y)
    d = F.conv3d(x.dense().double(), sub.dense_weight().double(), padding=1)
    assert rel_err(y.feats, dense_at(d, x.coords)) < _tol(27 * 48)
    d2 = F.conv3d(y.dense().double(), down.dense_weight().double(), stride=2, padding=1)
    assert rel_err(z.feats, dense_at(d2, z.coords, z.stride)) < _tol(27 * 64)
    # the GEMMs ran on oneDNN: the identity offset over all rows first, then one call per occupied offset
    assert counting and counting[0] == (len(x), 48)
    assert len(counting) >= 27
    if chunk_bytes == 1 and name == "onednn_gather_scatter":
        assert max(rows for rows, _ in counting[1:]) == od.MIN_BLOCK_ROWS  # chunked ...
        assert len(counting) > 1 + 2 * 27  # ... into more GEMMs than the two layers' offsets


@needs_onednn
@pytest.mark.parametrize("name", NAMES)
def test_inverse_map_in_fp32(name: str) -> None:
    """Inverse maps' pairs are not sorted by output row: the blocked loop must run offset by offset."""
    x = random_sparse(400, 24, seed=15, dtype=torch.float32)
    down = SparseConv3d(24, 32, 3, stride=2, padding=1, indice_key="d2", dataflow=name).eval()
    inv = SparseInverseConv3d(32, 24, 3, indice_key="d2", dataflow=name).eval()
    with torch.no_grad():
        z = inv(down(x))
    y = down(x).feats.detach().double()
    d = F.conv_transpose3d(SparseTensor(y, down(x).coords, 2, down(x).spatial_shape).dense(),
                           inv.dense_weight().double(), None, stride=2, padding=1, output_padding=1)
    assert rel_err(z.feats, dense_at(d, x.coords)) < _tol(27 * 32)


@pytest.mark.parametrize("name", NAMES)
def test_fp64_and_autograd_run_as_gather_scatter(name: str) -> None:
    x = random_sparse(300, 6, seed=32)  # float64: oneDNN has no fp64 GEMM
    conv = SubMConv3d(6, 5, 3).double().eval()
    km = conv.kernel_map(x)
    w = conv.weight.detach()
    assert torch.equal(DATAFLOWS[name](x.feats, w, km), gather_scatter(x.feats, w, km))
    # autograd: gradients through the fallback equal gather-scatter's
    xf = x.feats.float().requires_grad_(True)
    wf = w.float().requires_grad_(True)
    DATAFLOWS[name](xf, wf, km).square().sum().backward()
    gx, gw = xf.grad.clone(), wf.grad.clone()
    xf.grad = wf.grad = None
    gather_scatter(xf, wf, km).square().sum().backward()
    assert torch.equal(gx, xf.grad) and torch.equal(gw, wf.grad)


@pytest.mark.parametrize("name", NAMES)
def test_empty_input_gives_an_empty_output(name: str) -> None:
    x = SparseTensor(torch.zeros(0, 8), torch.zeros(0, 4, dtype=torch.int32), 1, (10, 10, 4), 1)
    conv = SubMConv3d(8, 16, 3, dataflow=name).eval()
    with torch.no_grad():
        y = conv(x)
    assert y.feats.shape == (0, 16)


def test_candidates_include_onednn_where_it_runs() -> None:
    cands = candidates_for(torch.device("cpu"))
    assert all(n in cands for n in NAMES) == od.available()
    assert all(n in DATAFLOWS for n in NAMES)
