"""Every sparse module against the dense torch op on the same weights (random inputs)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.sparse import (
    SparseConv3d,
    SparseConvTranspose3d,
    SparseInverseConv3d,
    SparseTensor,
    SubMConv3d,
)

from .conftest import DATAFLOWS, F, dense_at, random_sparse, rel_err

TOL = 1e-4


def _mod(m: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return m.to(dtype).eval()


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), ((3, 5, 1), 1), (3, 2)])
def test_subm_matches_conv3d(dataflow: str, dtype: torch.dtype, kernel, dilation) -> None:
    x = random_sparse(350, 5, dtype=dtype, seed=11)
    conv = _mod(SubMConv3d(5, 6, kernel, dilation=dilation, bias=True, dataflow=dataflow), dtype)
    with torch.no_grad():
        y = conv(x)
    k = conv.kernel_size
    pad = tuple((kk - 1) // 2 * dilation for kk in k)
    d = F.conv3d(x.dense().double(), conv.dense_weight().double(), conv.bias.double(), padding=pad, dilation=dilation)
    assert torch.equal(y.coords, x.coords)
    assert rel_err(y.feats, dense_at(d, x.coords)) < (1e-12 if dtype == torch.float64 else TOL)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize(
    "kernel,stride,padding",
    [(3, 2, 1), (2, 2, 0), ((1, 1, 3), (1, 1, 2), 0), (3, 2, (1, 1, 0)), (3, 1, 1)],
)
def test_strided_generative_matches_conv3d(dataflow: str, kernel, stride, padding) -> None:
    x = random_sparse(300, 4, seed=12)
    conv = _mod(SparseConv3d(4, 7, kernel, stride=stride, padding=padding, dataflow=dataflow), torch.float64)
    with torch.no_grad():
        y = conv(x)
    d = F.conv3d(x.dense(), conv.dense_weight(), None, stride=stride, padding=padding)
    # generative: an output exists exactly where the dense conv saw at least one input
    touched = F.conv3d(
        (x.dense().abs().sum(1, keepdim=True) > 0).double(),
        torch.ones(1, 1, *conv.kernel_size, dtype=torch.float64),
        stride=stride,
        padding=padding,
    )[:, 0]
    assert len(y) == int((touched > 0).sum())
    assert y.spatial_shape == tuple(d.shape[2:])
    assert rel_err(y.feats, dense_at(d, y.coords, y.stride)) < 1e-12


@pytest.mark.parametrize("dataflow", ["gather_scatter", "implicit_gemm_sorted"])
def test_floor_mode_matches_conv3d_kernel_equals_stride(dataflow: str) -> None:
    x = random_sparse(300, 4, seed=13)
    gen = SparseConv3d(4, 5, 2, stride=2, dataflow=dataflow).double().eval()
    flo = SparseConv3d(4, 5, 2, stride=2, mode="floor", dataflow=dataflow).double().eval()
    flo.load_state_dict(gen.state_dict())
    with torch.no_grad():
        a, b = gen(x), flo(x)
    assert torch.equal(a.coords, b.coords)
    assert rel_err(a.feats, b.feats) < 1e-12
    d = F.conv3d(x.dense(), gen.dense_weight(), stride=2)
    assert rel_err(b.feats, dense_at(d, b.coords, b.stride)) < 1e-12


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (2, 2, 0)])
def test_transposed_matches_conv_transpose3d(dataflow: str, kernel, stride, padding) -> None:
    x = random_sparse(120, 6, shape=(6, 5, 4), seed=14, stride=2)
    up = SparseConvTranspose3d(6, 3, kernel, stride=stride, padding=padding, bias=True, dataflow=dataflow).double().eval()
    with torch.no_grad():
        y = up(x)
    d = F.conv_transpose3d(x.dense(), up.dense_weight(), up.bias, stride=stride, padding=padding)
    assert y.stride == (1, 1, 1)
    assert y.spatial_shape == tuple(d.shape[2:])
    assert rel_err(y.feats, dense_at(d, y.coords)) < 1e-12
    # nothing is lost: dense output outside the sparse sites is just the bias
    mask = torch.zeros(d.shape[0], *d.shape[2:], dtype=torch.bool)
    mask[y.coords[:, 0].long(), y.coords[:, 1].long(), y.coords[:, 2].long(), y.coords[:, 3].long()] = True
    rest = d.permute(0, 2, 3, 4, 1)[~mask]
    assert torch.allclose(rest, up.bias.detach().expand_as(rest))


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_inverse_matches_conv_transpose3d_at_input_sites(dataflow: str) -> None:
    x = random_sparse(300, 5, seed=15)
    down = SparseConv3d(5, 8, 3, stride=2, padding=1, indice_key="d2", dataflow=dataflow).double().eval()
    inv = SparseInverseConv3d(8, 5, 3, indice_key="d2", dataflow=dataflow).double().eval()
    with torch.no_grad():
        y = down(x)
        z = inv(y)
    assert torch.equal(z.coords, x.coords) and z.stride == x.stride and z.spatial_shape == x.spatial_shape
    d = F.conv_transpose3d(y.dense(), inv.dense_weight(), None, stride=2, padding=1, output_padding=1)
    assert rel_err(z.feats, dense_at(d, x.coords)) < 1e-12


def test_inverse_requires_registered_key() -> None:
    x = random_sparse(50, 2, seed=16)
    with pytest.raises(KeyError):
        SparseInverseConv3d(2, 2, 3, indice_key="nope")(x)


def test_subm_at_tensor_stride_2() -> None:
    x = random_sparse(200, 3, shape=(7, 6, 5), seed=17, stride=2)
    conv = SubMConv3d(3, 4, 3, dataflow="gather_scatter").double().eval()
    with torch.no_grad():
        y = conv(x)
    d = F.conv3d(x.dense(), conv.dense_weight(), padding=1)
    assert rel_err(y.feats, dense_at(d, x.coords, x.stride)) < 1e-12


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 120),
    cin=st.integers(1, 9),
    cout=st.integers(1, 9),
    batch=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    dataflow=st.sampled_from(DATAFLOWS),
)
def test_property_subm_and_down(n, cin, cout, batch, seed, dataflow) -> None:
    x = random_sparse(n, cin, shape=(5, 6, 4), batch=batch, seed=seed)
    sub = SubMConv3d(cin, cout, 3, dataflow=dataflow).double().eval()
    down = SparseConv3d(cin, cout, 3, stride=2, padding=1, dataflow=dataflow).double().eval()
    with torch.no_grad():
        a = sub(x)
        b = down(x)
    dense = x.dense(batch_size=batch)
    assert rel_err(a.feats, dense_at(F.conv3d(dense, sub.dense_weight(), padding=1), x.coords)) < 1e-12
    db = F.conv3d(dense, down.dense_weight(), stride=2, padding=1)
    assert rel_err(b.feats, dense_at(db, b.coords, b.stride)) < 1e-12


def test_gradients_match_dense() -> None:
    x = random_sparse(150, 3, seed=18)
    conv = SubMConv3d(3, 4, 3, dataflow="gather_scatter").double()
    feats = x.feats.clone().requires_grad_(True)
    y = conv(SparseTensor(feats, x.coords, 1, x.spatial_shape, 2))
    y.feats.square().sum().backward()
    g_sparse_w = conv.weight.grad.clone()
    g_sparse_x = feats.grad.clone()

    dense_in = x.dense().clone().requires_grad_(True)
    w = conv.dense_weight().clone().requires_grad_(True)
    d = F.conv3d(dense_in, w, padding=1)
    dense_at(d, x.coords).square().sum().backward()
    kx, ky, kz = conv.kernel_size
    g_dense_w = w.grad.permute(2, 3, 4, 1, 0).reshape(kx * ky * kz, 3, 4)
    assert rel_err(g_sparse_w, g_dense_w) < 1e-10
    assert rel_err(g_sparse_x, dense_at(dense_in.grad, x.coords)) < 1e-10
