"""The upstream backbones: state-dict layouts of mmdetection3d / OpenPCDet, dense reference, spconv twin."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.sparse import SparseTensor, dense_weight
from engines.sparse.backbones import (
    SparseBasicBlock,
    SparseEncoder,
    VoxelBackBone8x,
    build_backbone,
    set_fuse,
)
from engines.sparse.conv import ours_to_spconv_weight
from engines.sparse.spconv_twins import (
    import_spconv,
    randomise_bn,
    spconv_sparse_encoder,
    spconv_voxel_backbone_8x,
)

from .conftest import F, rel_err

# mmdetection3d's CenterPoint SparseEncoder state dict (spconv 2 layout [C_out, kz, ky, kx, C_in]):
# a sample of the keys and weight shapes upstream saves
CENTERPOINT_KEYS = {
    "conv_input.0.weight": (16, 3, 3, 3, 5),
    "conv_input.1.running_var": (16,),
    "encoder_layers.encoder_layer1.0.conv1.weight": (16, 3, 3, 3, 16),
    "encoder_layers.encoder_layer1.0.bn1.weight": (16,),
    "encoder_layers.encoder_layer1.1.bn2.num_batches_tracked": (),
    "encoder_layers.encoder_layer1.2.0.weight": (32, 3, 3, 3, 16),
    "encoder_layers.encoder_layer2.2.0.weight": (64, 3, 3, 3, 32),
    "encoder_layers.encoder_layer3.2.0.weight": (128, 3, 3, 3, 64),
    "encoder_layers.encoder_layer3.2.1.running_mean": (128,),
    "encoder_layers.encoder_layer4.1.conv2.weight": (128, 3, 3, 3, 128),
    "conv_out.0.weight": (128, 3, 1, 1, 128),
    "conv_out.1.bias": (128,),
}
# OpenPCDet's VoxelBackBone8x
SECOND_KEYS = {
    "conv_input.0.weight": (16, 3, 3, 3, 4),
    "conv1.0.0.weight": (16, 3, 3, 3, 16),
    "conv2.0.0.weight": (32, 3, 3, 3, 16),
    "conv4.0.1.running_mean": (64,),
    "conv4.2.0.weight": (64, 3, 3, 3, 64),
    "conv_out.0.weight": (128, 3, 1, 1, 64),
}


def _upstream_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict written the way spconv 2 saves it (5-D conv weights over (z, y, x))."""
    sd = {}
    for name, t in model.state_dict().items():
        mod = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if name.endswith("weight") and t.dim() == 3 and hasattr(mod, "kernel_size"):
            t = ours_to_spconv_weight(t, mod.kernel_size, "zyx")
        sd[name] = t.clone()
    return sd


def _sparse_input(n: int, shape_zyx: tuple[int, int, int], channels: int, seed: int, batch: int = 1):
    """Random distinct voxels in upstream form: feats [N, C], coors (b, z, y, x) in random order."""
    g = torch.Generator().manual_seed(seed)
    D, H, W = shape_zyx
    flat = torch.randperm(batch * D * H * W, generator=g)[:n]
    b, r = flat // (D * H * W), flat % (D * H * W)
    coors = torch.stack([b, r // (H * W), (r // W) % H, r % W], 1).int()
    return torch.randn(n, channels, generator=g, dtype=torch.float64), coors


@pytest.mark.parametrize("cls,keys", [(SparseEncoder, CENTERPOINT_KEYS), (VoxelBackBone8x, SECOND_KEYS)])
def test_state_dict_keys_and_upstream_shapes(cls, keys) -> None:
    model = cls()
    sd = _upstream_layout(model)
    for k, shape in keys.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, (k, tuple(sd[k].shape), shape)
    # round trip with upstream names and layout, strict
    other = cls()
    other.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_centerpoint_encoder_structure() -> None:
    enc = SparseEncoder()
    n_blocks = sum(isinstance(m, SparseBasicBlock) for m in enc.modules())
    assert n_blocks == 8  # two residual blocks per stage; stages 1-3 end in a stride-2 conv
    n_convs = sum(p.dim() == 3 for p in enc.parameters())
    assert n_convs == 1 + 2 * 8 + 3 + 1
    assert sum(p.numel() for p in enc.parameters() if p.dim() == 3) == 27 * (
        5 * 16 + 4 * 16 * 16 + 16 * 32 + 4 * 32 * 32 + 32 * 64 + 4 * 64 * 64 + 64 * 128 + 4 * 128 * 128
    ) + 3 * 128 * 128


def test_mmcv_spconv1_layout_loads() -> None:
    """Older mmdetection3d checkpoints store [kz, ky, kx, C_in, C_out]; they load to the same weights."""
    enc = SparseEncoder()
    sd2 = _upstream_layout(enc)
    sd1 = {k: (v.permute(1, 2, 3, 4, 0).contiguous() if v.dim() == 5 else v) for k, v in sd2.items()}
    other = SparseEncoder()
    other.load_state_dict(sd1, strict=True)
    for k, v in enc.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_registry() -> None:
    assert isinstance(build_backbone("centerpoint_sparse_encoder", in_channels=5), SparseEncoder)
    assert isinstance(build_backbone("second_voxel_backbone_8x", in_channels=4), VoxelBackBone8x)
    with pytest.raises(ValueError, match="unknown sparse backbone"):
        build_backbone("pointpillars")


# ------------------------------------------------------------------------------------------------
# dense reference: the same network as masked dense convolutions (fp64), written independently
# ------------------------------------------------------------------------------------------------


def _dense_conv(x, mask, conv, stride=(1, 1, 1), padding=None):
    w = dense_weight(conv.weight.detach(), conv.kernel_size)
    if padding is None:  # submanifold: same sites
        pad = tuple((k - 1) // 2 for k in conv.kernel_size)
        return F.conv3d(x, w, padding=pad) * mask, mask
    y = F.conv3d(x, w, stride=stride, padding=padding)
    ones = torch.ones(1, 1, *conv.kernel_size, dtype=x.dtype)
    m = (F.conv3d(mask, ones, stride=stride, padding=padding) > 0).to(x.dtype)
    return y * m, m


def _dense_bn(x, mask, bn):
    sh = (1, -1, 1, 1, 1)
    y = (x - bn.running_mean.view(sh)) / torch.sqrt(bn.running_var.view(sh) + bn.eps)
    return (y * bn.weight.view(sh) + bn.bias.view(sh)) * mask


def _dense_encoder(enc: SparseEncoder, x, mask):
    def module(seq, x, mask):
        conv, bn = seq[0], seq[1]
        if conv.kind == "subm":
            y, m = _dense_conv(x, mask, conv)
        else:
            y, m = _dense_conv(x, mask, conv, conv.stride, conv.padding)
        return torch.relu(_dense_bn(y, m, bn)), m

    x, mask = module(enc.conv_input, x, mask)
    for stage in enc.encoder_layers:
        for blk in stage:
            if isinstance(blk, SparseBasicBlock):
                y, _ = _dense_conv(x, mask, blk.conv1)
                y = torch.relu(_dense_bn(y, mask, blk.bn1))
                y, _ = _dense_conv(y, mask, blk.conv2)
                x = torch.relu(_dense_bn(y, mask, blk.bn2) + x)
            else:
                x, mask = module(blk, x, mask)
    x, mask = module(enc.conv_out, x, mask)
    B, C, X, Y, Z = x.shape
    return x.permute(0, 1, 4, 3, 2).reshape(B, C * Z, Y, X)


@pytest.mark.slow
@pytest.mark.parametrize("fuse", [True, False])
def test_centerpoint_encoder_equals_dense_reference(fuse: bool) -> None:
    torch.manual_seed(0)
    shape = (41, 12, 14)  # upstream [D, H, W]; D = 41 as in the nuScenes config (z: 41 -> 21 -> 11 -> 5 -> 2)
    enc = SparseEncoder(5, shape, dataflow="gather_scatter").double().eval()
    randomise_bn(enc, 3)
    set_fuse(enc, fuse)
    feats, coors = _sparse_input(700, shape, 5, seed=5, batch=2)
    with torch.no_grad():
        bev = enc(feats, coors, 2)
        # dense input [B, C, X, Y, Z]
        dense = torch.zeros(2, 5, shape[2], shape[1], shape[0], dtype=torch.float64)
        b, z, y, x = coors.long().unbind(1)
        dense[b, :, x, y, z] = feats
        mask = torch.zeros(2, 1, shape[2], shape[1], shape[0], dtype=torch.float64)
        mask[b, 0, x, y, z] = 1
        ref = _dense_encoder(enc, dense, mask)
    assert bev.shape == ref.shape == (2, 128 * 2, 2, 2)
    assert rel_err(bev, ref) < 1e-12


def test_fused_and_unfused_agree_in_float32() -> None:
    shape = (41, 20, 20)
    enc = SparseEncoder(5, shape, dataflow="gather_scatter").eval()  # no autotuner timings in tests
    randomise_bn(enc, 4)
    feats, coors = _sparse_input(1500, shape, 5, seed=6)
    feats = feats.float()
    with torch.no_grad():
        a = enc(feats, coors, 1)
        b = set_fuse(enc, False)(feats, coors, 1)
    # 19 layers deep, ~27*128 terms per output: float32 eps x depth x a small factor
    assert rel_err(a, b) < 19 * 1.2e-7 * 50


def test_gradients_flow_through_blocks() -> None:
    shape = (41, 8, 8)
    enc = SparseEncoder(5, shape, dataflow="gather_scatter").train()
    feats, coors = _sparse_input(300, shape, 5, seed=7)
    enc(feats.float(), coors, 1).sum().backward()
    assert enc.encoder_layers.encoder_layer1[0].conv1.weight.grad is not None
    assert float(enc.conv_input[0].weight.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------------
# spconv twins (skip without spconv)
# ------------------------------------------------------------------------------------------------


def _spconv():
    sp = import_spconv()
    if sp is None:
        pytest.skip("spconv 2.3.8 not importable (install it beside the venv into /tmp/spconv-site: make bench-sparse)")
    return sp


def test_centerpoint_encoder_matches_spconv() -> None:
    spconv = _spconv()
    torch.set_num_threads(1)  # spconv 2.3.8 CPU is wrong with more threads
    shape = (41, 40, 36)
    twin = spconv_sparse_encoder(spconv, 5, shape).eval()
    randomise_bn(twin, 8)
    ours = SparseEncoder(5, shape, dataflow="gather_scatter").eval()
    ours.load_state_dict(twin.state_dict(), strict=True)
    feats, coors = _sparse_input(4000, shape, 5, seed=9, batch=2)
    feats = feats.float()
    with torch.no_grad():
        ref = twin(feats, coors, 2)
        got = ours(feats, coors, 2)
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 19 * 1.2e-7 * 50


def test_second_backbone_matches_spconv() -> None:
    spconv = _spconv()
    torch.set_num_threads(1)
    shape = (41, 40, 36)
    twin = spconv_voxel_backbone_8x(spconv, 4).eval()
    randomise_bn(twin, 10)
    ours = VoxelBackBone8x(4, dataflow="gather_scatter").eval()
    ours.load_state_dict(twin.state_dict(), strict=True)
    feats, coors = _sparse_input(4000, shape, 4, seed=11)
    feats = feats.float()
    with torch.no_grad():
        ys = twin(spconv.SparseConvTensor(feats, coors, list(shape), 1))
        y = ours(SparseTensor(feats, coors[:, [0, 3, 2, 1]].contiguous(), 1, shape[::-1], 1))
    ref = ys.dense()  # [B, C, Z, Y, X]
    got = y.dense(spatial_shape=tuple(ref.shape[2:][::-1])).permute(0, 1, 4, 3, 2)
    assert rel_err(got, ref) < 12 * 1.2e-7 * 50


def test_bad_input_is_reported() -> None:
    enc = SparseEncoder(5, (41, 16, 16), dataflow="gather_scatter").eval()
    with torch.no_grad():
        assert enc(torch.zeros(0, 5), torch.zeros(0, 4, dtype=torch.int32), 1).shape == (1, 256, 2, 2)
        with pytest.raises(ValueError, match="outside the sparse shape"):
            enc(torch.zeros(2, 5), torch.tensor([[0, 1, 2, 3], [0, 1, 2, 16]], dtype=torch.int32), 1)
        with pytest.raises(ValueError, match="feature channels"):
            enc(torch.zeros(2, 4), torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]], dtype=torch.int32), 1)
