"""The light sparse backbone of the real-time LiDAR branch: shapes, and its training backward pass
against the engine's differentiable gather-scatter (same gradients, float64)."""

from __future__ import annotations

import pytest
import torch

from engines.sparse import SparseTensor
from engines.sparse.lite_backbones import LiteSparseBackbone


def _cloud(n: int = 1500, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ijk = torch.unique(torch.randint(0, size, (n, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(ijk), 1, dtype=torch.long), ijk], 1).int()
    return coords, torch.randn(len(coords), 4, dtype=torch.float64, generator=g)


def _run(train_dataflow: bool, coords: torch.Tensor, feats: torch.Tensor):
    torch.manual_seed(1)
    bb = LiteSparseBackbone(4, (8, 16, 16), (1, 1, 1), dataflow="gather_scatter").double().train()
    x = SparseTensor(feats.clone().requires_grad_(True), coords, 1, (24, 24, 24), 1)
    if train_dataflow:
        y = bb(x)
    else:  # the engine's own differentiable path: the stages without the module's dataflow switch
        y = x
        for stage in bb.stages:
            y = stage(y)
    ((y.feats ** 2).sum() + y.feats.sum()).backward()
    return y, x.feats.grad, {n: p.grad for n, p in bb.named_parameters()}


def test_training_backward_matches_the_engine():
    coords, feats = _cloud()
    y1, gx1, gw1 = _run(True, coords, feats)
    y2, gx2, gw2 = _run(False, coords, feats)
    assert torch.equal(y1.coords, y2.coords)
    eps = torch.finfo(torch.float64).eps
    scale = float(gx2.abs().max()) * len(feats)
    assert torch.allclose(y1.feats.detach(), y2.feats.detach(), atol=eps * float(y2.feats.detach().abs().max()) * 1e3)
    assert (gx1 - gx2).abs().max() <= eps * scale * 10
    for name, g in gw2.items():
        assert (gw1[name] - g).abs().max() <= eps * max(float(g.abs().max()), 1.0) * len(feats) * 10, name


def test_stride_channels_and_inference_dataflow():
    coords, feats = _cloud(seed=2)
    bb = LiteSparseBackbone(4, (16, 32, 64), (1, 1, 0), dataflow="gather_scatter").eval()
    with torch.no_grad():
        y = bb(SparseTensor(feats.float(), coords, 1, (24, 24, 24), 1))
    assert y.num_channels == 64 and tuple(y.stride) == (4, 4, 4) and len(y) > 0
    convs = [m for m in bb.modules() if hasattr(m, "dataflow") and m is not bb]
    assert convs and all(m.dataflow == "gather_scatter" for m in convs)  # eval keeps the configured one
    with pytest.raises(ValueError):
        LiteSparseBackbone(4, (16, 32), (1,))
