"""spconv-style weights ([out, kz, ky, kx, in] over (b, z, y, x) indices) load and compute the same."""

from __future__ import annotations

import pytest
import torch

from engines.sparse import (
    SparseConv3d,
    SubMConv3d,
    SparseTensor,
    ours_to_spconv_weight,
    spconv_weight_to_ours,
)
from engines.sparse.backbones import VoxelBackbone8x

from .conftest import F, random_sparse, rel_err


def test_weight_conversion_round_trip() -> None:
    w = torch.randn(7, 3, 5, 1, 4)  # out, kz, ky, kx, in
    ours = spconv_weight_to_ours(w, "zyx")
    assert ours.shape == (1 * 5 * 3, 4, 7)
    back = ours_to_spconv_weight(ours, (1, 5, 3), "zyx")
    assert torch.equal(back, w)
    assert torch.equal(ours_to_spconv_weight(spconv_weight_to_ours(w, "xyz"), (3, 5, 1), "xyz"), w)


@pytest.mark.parametrize("cls,kw", [(SubMConv3d, dict(padding=1)), (SparseConv3d, dict(stride=2, padding=1))])
def test_spconv_layout_state_dict_matches_dense_in_zyx_order(cls, kw) -> None:
    """Semantics check without spconv: the spconv weight applied as a dense conv on a (z, y, x) grid."""
    x = random_sparse(250, 4, shape=(9, 8, 7), batch=1, seed=31)
    w_sp = torch.randn(6, 3, 3, 3, 4, dtype=torch.float64)  # [out, kz, ky, kx, in]
    layer = cls(4, 6, 3, **({"stride": 2, "padding": 1} if cls is SparseConv3d else {})).double().eval()
    layer.load_state_dict({"weight": w_sp})
    with torch.no_grad():
        y = layer(x)
    dense_zyx = x.dense().permute(0, 1, 4, 3, 2)  # [B, C, Z, Y, X]
    d = F.conv3d(dense_zyx, w_sp.permute(0, 4, 1, 2, 3), **kw)  # spconv's conv on its own axes
    s = torch.tensor(y.stride)
    ijk = y.coords[:, 1:].long() // s
    ref = d[y.coords[:, 0].long(), :, ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    assert rel_err(y.feats, ref) < 1e-12


def test_backbone_state_dict_names_follow_openpcdet() -> None:
    keys = set(VoxelBackbone8x(4).state_dict())
    for k in ["conv_input.0.weight", "conv_input.1.running_var", "conv2.0.0.weight", "conv4.2.1.bias", "conv_out.0.weight"]:
        assert k in keys


def _spconv():
    from engines.sparse.spconv_twins import import_spconv

    spconv = import_spconv()
    if spconv is None:
        pytest.skip("spconv not installed (benchmark peer only; make bench-sparse installs it into /tmp/spconv-site)")
    return spconv


def test_against_spconv_when_installed() -> None:
    spconv = _spconv()
    torch.set_num_threads(1)  # spconv 2.3.8 CPU is wrong with more threads
    x = random_sparse(400, 8, shape=(12, 11, 10), batch=1, dtype=torch.float32, seed=32)
    sp = spconv.SubMConv3d(8, 8, 3, bias=False).eval()
    ours = SubMConv3d(8, 8, 3).eval()
    ours.load_state_dict(sp.state_dict())
    idx = x.coords[:, [0, 3, 2, 1]].contiguous()
    with torch.no_grad():
        ys = sp(spconv.SparseConvTensor(x.feats, idx, [10, 11, 12], 1)).features
        yo = ours(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats
    assert rel_err(yo, ys) < 1e-4
