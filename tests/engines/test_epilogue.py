"""The convolution epilogue (bias, unfolded BatchNorm, residual, ReLU) inside and after the dataflows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.sparse import SubMConv3d, SparseConv3d
from engines.sparse.autotune import DATAFLOWS, EPILOGUE_INSIDE, call_dataflow
from engines.sparse.backbones import SparseEncoder, set_fuse
from engines.sparse.conv import sparse_conv
from engines.sparse.dataflow_fused import available
from engines.sparse.epilogue import Epilogue, batchnorm_affine, with_batchnorm
from engines.sparse.norm import SparseSequential
from engines.sparse.spconv_twins import randomise_bn

from .conftest import random_sparse, rel_err
from .test_backbones import _sparse_input

CPU_DATAFLOWS = sorted(DATAFLOWS)


def _epilogue(n: int, c: int, dtype: torch.dtype, seed: int, nan_row: bool = False) -> Epilogue:
    g = torch.Generator().manual_seed(seed)
    res = torch.randn(n, c, generator=g, dtype=torch.float64).to(dtype)
    if nan_row:
        res[3] = float("nan")  # NaN must come out NaN (ReLU keeps it, as torch.relu does)
    return Epilogue(bias=torch.randn(c, generator=g, dtype=torch.float64).to(dtype),
                    scale=(torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype),
                    shift=torch.randn(c, generator=g, dtype=torch.float64).to(dtype), residual=res, relu=True)


@pytest.mark.parametrize("name", CPU_DATAFLOWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_epilogue_inside_equals_the_torch_ops_after(name: str, dtype: torch.dtype) -> None:
    """Inside the fused loop or after any other dataflow: the same values as the plain torch ops on
    the same dataflow's output (the same operations in the same order, one rounding each)."""
    x = random_sparse(900, 24, dtype=dtype, seed=11, shape=(16, 14, 10))
    for conv in (SubMConv3d(24, 40, 3), SparseConv3d(24, 40, 3, stride=2, padding=1)):
        conv = conv.to(dtype)
        km = conv.kernel_map(x)
        ep = _epilogue(km.n_out, 40, dtype, seed=2, nan_row=True)
        with torch.no_grad():
            plain = DATAFLOWS[name](x.feats, conv.weight, km).clone()
            want = plain.add(ep.bias).mul(ep.scale).add(ep.shift).add(ep.residual).relu()
            got = call_dataflow(name, x.feats, conv.weight, km, ep)
        assert torch.equal(got.isnan(), want.isnan()) and bool(got[3].isnan().all())
        ok = ~want.isnan()
        assert torch.equal(got[ok], want[ok]), name
        assert bool((got[ok] >= 0).all())


@pytest.mark.parametrize("name", CPU_DATAFLOWS)
def test_every_dataflow_refuses_epilogue_operands_of_the_wrong_shape(name: str) -> None:
    """No broadcasting on any path: whichever dataflow the tuner picks, the same calls pass or fail."""
    x = random_sparse(500, 16, dtype=torch.float32, seed=3)
    conv = SubMConv3d(16, 16, 3)
    km = conv.kernel_map(x)
    for bad in (Epilogue(residual=torch.zeros(km.n_out + 1, 16)), Epilogue(residual=torch.zeros(16)),
                Epilogue(scale=torch.ones(1))):
        with torch.no_grad(), pytest.raises(ValueError, match="epilogue"):
            call_dataflow(name, x.feats, conv.weight, km, bad)


@pytest.mark.parametrize("name", sorted(EPILOGUE_INSIDE) + ["gather_scatter"])
@pytest.mark.parametrize("parts", ["bias_relu", "residual_only", "relu_only", "scale_only", "scale_relu"])
def test_epilogue_bits_equal_torch_ops_including_signed_zeros(name: str, parts: str) -> None:
    """Bit for bit (not just ==, which cannot tell -0.0 from +0.0): the folded mode's bias + ReLU, a
    residual without ReLU, a ReLU alone -- the parts left out must be exact identities in the loop."""
    if name in EPILOGUE_INSIDE and not available():
        pytest.skip("the fused loop needs torch's MKL sgemm_ symbol; the gather_scatter case still runs")
    x = random_sparse(800, 8, dtype=torch.float32, seed=4, shape=(14, 12, 10))
    conv = SubMConv3d(8, 8, 3)
    with torch.no_grad():
        conv.weight[:, :, 0] = 0.0  # channel 0 of the output is exactly 0 ...
        km = conv.kernel_map(x)
        plain = DATAFLOWS[name](x.feats, conv.weight, km)
        assert bool((plain[:, 0] == 0).all())
    g = torch.Generator().manual_seed(6)
    res = torch.randn(km.n_out, 8, generator=g)
    res[:, 0] = -0.0  # ... plus -0.0 stays -0.0 (+0.0 + -0.0 = +0.0; -0.0 appears where the conv gives -0.0)
    bias = torch.randn(8, generator=g)
    bias[0] = -0.0
    scale = torch.rand(8, generator=g) + 0.5
    scale[0] = -1.0  # +0.0 * -1 = -0.0: the absent shift after it must keep the sign (torch skips the add)
    ep = {"bias_relu": Epilogue(bias=bias, relu=True), "residual_only": Epilogue(residual=res),
          "relu_only": Epilogue(relu=True), "scale_only": Epilogue(scale=scale),
          "scale_relu": Epilogue(scale=scale, relu=True)}[parts]
    with torch.no_grad():
        want = ep.apply_(DATAFLOWS[name](x.feats, conv.weight, km).clone())
        got = call_dataflow(name, x.feats, conv.weight, km, ep)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    if parts.startswith("scale"):
        assert bool(torch.signbit(want[:, 0]).all())  # the case is really there: -0.0 in channel 0
    if parts == "residual_only":
        assert bool((got < 0).any())  # no ReLU slipped in


def test_epilogue_operands_that_need_gradients_get_them_on_every_dataflow() -> None:
    x = random_sparse(300, 6, dtype=torch.float64, seed=9)
    conv = SubMConv3d(6, 6, 3).double()
    km = conv.kernel_map(x)
    grads = []
    for name in ("fused_gather_scatter", "gather_scatter"):
        res = torch.randn(km.n_out, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        with torch.no_grad():
            w = conv.weight.detach()
        y = sparse_conv(x.feats, w, km, dataflow=name, epilogue=Epilogue(residual=res, relu=True))
        assert y.requires_grad
        (g,) = torch.autograd.grad(y.sum(), res)
        grads.append(g)
    assert torch.equal(grads[0], grads[1]) and float(grads[0].sum()) > 0


def test_sparse_conv_refuses_bias_beside_an_epilogue() -> None:
    x = random_sparse(100, 4, dtype=torch.float32, seed=1)
    conv = SubMConv3d(4, 4, 3)
    with torch.no_grad(), pytest.raises(ValueError, match="inside it"):
        sparse_conv(x.feats, conv.weight, conv.kernel_map(x), torch.zeros(4), "gather_scatter",
                    epilogue=Epilogue(relu=True))


def test_batchnorm_affine_is_torch_batchnorm_and_follows_parameter_changes() -> None:
    g = torch.Generator().manual_seed(5)
    bn = nn.BatchNorm1d(12).double().eval()
    bn.running_mean.copy_(torch.randn(12, generator=g, dtype=torch.float64))
    bn.running_var.copy_(torch.rand(12, generator=g, dtype=torch.float64) + 0.1)
    bn.weight.data.copy_(torch.randn(12, generator=g, dtype=torch.float64))
    y = torch.randn(50, 12, generator=g, dtype=torch.float64)
    scale, shift = batchnorm_affine(bn)
    with torch.no_grad():
        assert torch.allclose(y * scale + shift, bn(y), rtol=1e-13, atol=1e-13)
        bn.running_mean.add_(1.0)  # an in-place update must not leave a stale cached affine
        scale, shift = batchnorm_affine(bn)
        assert torch.allclose(y * scale + shift, bn(y), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dataflow", ["fused_gather_scatter", "gather_scatter"])
def test_sequential_epilogue_mode_matches_separate_layers(dataflow: str) -> None:
    x = random_sparse(700, 6, dtype=torch.float64, seed=8)
    seq = SparseSequential(SubMConv3d(6, 10, 3, bias=True, dataflow=dataflow), nn.BatchNorm1d(10), nn.ReLU(),
                           SparseConv3d(10, 12, 3, stride=2, dataflow=dataflow), nn.BatchNorm1d(12)).double()
    randomise_bn(seq, 9)
    seq.eval()
    with torch.no_grad():
        seq.fuse = False
        want = seq(x).feats
        seq.fuse = "epilogue"
        got = seq(x).feats
    # unfolded BN as y * scale + shift instead of torch's kernel: float64 eps x a few terms
    assert rel_err(got, want) < 1e-13
    assert not bool((want >= 0).all())  # the last BN has no ReLU: negatives must survive


def test_encoder_epilogue_mode_equals_layer_by_layer_in_float32() -> None:
    shape = (41, 20, 20)
    enc = SparseEncoder(5, shape, dataflow="fused_gather_scatter").eval()
    randomise_bn(enc, 4)
    feats, coors = _sparse_input(1500, shape, 5, seed=6)
    feats = feats.float()
    with torch.no_grad():
        plain = set_fuse(enc, False)(feats, coors, 1)
        ep = set_fuse(enc, "epilogue")(feats, coors, 1)
        folded = set_fuse(enc, True)(feats, coors, 1)
    # 19 layers deep, ~27*128 terms per output: float32 eps x depth x a small factor (as the fold test)
    assert rel_err(ep, plain) < 19 * 1.2e-7 * 50
    assert rel_err(folded, plain) < 19 * 1.2e-7 * 50
    assert float(plain.abs().sum()) > 0
    with pytest.raises(ValueError, match="fuse must be"):
        set_fuse(enc, "fold")  # type: ignore[arg-type]


def test_epilogue_block_gradients_untouched_in_training() -> None:
    """With autograd on, blocks run layer by layer (no epilogue, no fold): gradients reach the BN."""
    shape = (41, 8, 8)
    enc = SparseEncoder(5, shape, dataflow="gather_scatter")
    set_fuse(enc, "epilogue")
    feats, coors = _sparse_input(300, shape, 5, seed=2)
    out = enc(feats.float(), coors, 1)
    out.square().sum().backward()
    bn = enc.encoder_layers[0][0].bn2
    assert bn.weight.grad is not None and float(bn.weight.grad.abs().sum()) > 0
    with_batchnorm(bn.eval())  # an eval-mode affine can be built from a trained module
