"""spconv 2.x twins of :mod:`engines.sparse.backbones`, for tests and the like-for-like benchmark.

Each twin is the upstream network rebuilt on spconv modules with the upstream module names, axis
order (b, z, y, x) and triples, so ``ours.load_state_dict(twin.state_dict(), strict=True)`` is the
checkpoint path a user takes. spconv is not a requirement (see benchmarks/sparse_conv.py for how
it is installed beside the venv): :func:`import_spconv` returns None when it is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn


def import_spconv() -> Optional[Any]:
    """``spconv.pytorch`` from the venv or from ``$SPCONV_SITE`` (default /tmp/spconv-site), else None."""
    try:
        import spconv.pytorch as spconv  # type: ignore
        return spconv
    except ImportError:
        pass
    site = os.environ.get("SPCONV_SITE", "/tmp/spconv-site")
    if site and Path(site).is_dir() and site not in sys.path:
        sys.path.append(site)  # appended: the venv's torch/numpy stay first
    try:
        import spconv.pytorch as spconv  # type: ignore
    except Exception:
        return None
    return spconv


def _bn(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)


def _module(spconv: Any, cin: int, cout: int, k: Any, kind: str = "subm", stride: Any = 1, padding: Any = 0,
            key: Optional[str] = None) -> nn.Module:
    if kind == "subm":
        conv = spconv.SubMConv3d(cin, cout, k, padding=padding, bias=False, indice_key=key)
    else:
        conv = spconv.SparseConv3d(cin, cout, k, stride=stride, padding=padding, bias=False, indice_key=key)
    return spconv.SparseSequential(conv, _bn(cout), nn.ReLU(inplace=True))


def spconv_sparse_encoder(spconv: Any, in_channels: int = 5, sparse_shape: Sequence[int] = (41, 1024, 1024),
                          encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
                          encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, (0, 1, 1)), (0, 0)),
                          block_type: str = "basicblock", share_block_maps: bool = False) -> nn.Module:
    """mmdetection3d's SparseEncoder on spconv (``forward(feats, coors_bzyx, batch) -> BEV``).

    Upstream's residual blocks pass no ``indice_key`` (so spconv rebuilds their submanifold map in
    every block); ``share_block_maps=True`` gives them the stage's key instead, spconv's best case.
    """

    class BasicBlock(spconv.SparseModule):
        def __init__(self, planes: int, key: Optional[str]) -> None:
            super().__init__()
            self.conv1 = spconv.SubMConv3d(planes, planes, 3, padding=1, bias=False, indice_key=key)
            self.bn1 = _bn(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = spconv.SubMConv3d(planes, planes, 3, padding=1, bias=False, indice_key=key)
            self.bn2 = _bn(planes)

        def forward(self, x):
            identity = x.features
            out = self.conv1(x)
            out = out.replace_feature(self.relu(self.bn1(out.features)))
            out = self.conv2(out)
            out = out.replace_feature(self.bn2(out.features))
            return out.replace_feature(self.relu(out.features + identity))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sparse_shape = list(sparse_shape)
            self.conv_input = _module(spconv, in_channels, 16, 3, padding=1, key="subm1")
            self.encoder_layers = spconv.SparseSequential()
            cin = 16
            for i, blocks in enumerate(encoder_channels):
                layers = []
                for j, cout in enumerate(blocks):
                    pad = encoder_paddings[i][j]
                    if block_type == "conv_module" and i != 0 and j == 0:
                        layers.append(_module(spconv, cin, cout, 3, "spconv", 2, pad, f"spconv{i + 1}"))
                    elif block_type == "basicblock":
                        if j == len(blocks) - 1 and i != len(encoder_channels) - 1:
                            layers.append(_module(spconv, cin, cout, 3, "spconv", 2, pad, f"spconv{i + 1}"))
                        else:
                            layers.append(BasicBlock(cout, f"subm{i + 1}" if share_block_maps else None))
                    else:
                        layers.append(_module(spconv, cin, cout, 3, "subm", padding=pad, key=f"subm{i + 1}"))
                    cin = cout
                self.encoder_layers.add_module(f"encoder_layer{i + 1}", spconv.SparseSequential(*layers))
            self.conv_out = _module(spconv, cin, 128, (3, 1, 1), "spconv", (2, 1, 1), 0, "spconv_down2")

        def forward(self, feats: torch.Tensor, coors: torch.Tensor, batch_size: int) -> torch.Tensor:
            x = spconv.SparseConvTensor(feats, coors.int(), self.sparse_shape, batch_size)
            x = self.conv_input(x)
            for stage in self.encoder_layers:
                x = stage(x)
            d = self.conv_out(x).dense()
            n, c, dd, h, w = d.shape
            return d.view(n, c * dd, h, w)

    return Encoder()


def spconv_voxel_backbone_8x(spconv: Any, in_channels: int = 4) -> nn.Module:
    """OpenPCDet's VoxelBackBone8x on spconv (``forward(SparseConvTensor) -> SparseConvTensor``)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            m = lambda *a, **k: _module(spconv, *a, **k)  # noqa: E731
            self.conv_input = m(in_channels, 16, 3, padding=1, key="subm1")
            self.conv1 = spconv.SparseSequential(m(16, 16, 3, padding=1, key="subm1"))
            self.conv2 = spconv.SparseSequential(m(16, 32, 3, "spconv", 2, 1, "spconv2"),
                                                 m(32, 32, 3, padding=1, key="subm2"), m(32, 32, 3, padding=1, key="subm2"))
            self.conv3 = spconv.SparseSequential(m(32, 64, 3, "spconv", 2, 1, "spconv3"),
                                                 m(64, 64, 3, padding=1, key="subm3"), m(64, 64, 3, padding=1, key="subm3"))
            self.conv4 = spconv.SparseSequential(m(64, 64, 3, "spconv", 2, (0, 1, 1), "spconv4"),
                                                 m(64, 64, 3, padding=1, key="subm4"), m(64, 64, 3, padding=1, key="subm4"))
            self.conv_out = m(64, 128, (3, 1, 1), "spconv", (2, 1, 1), 0, "spconv_down2")

        def forward(self, x):
            return self.conv_out(self.conv4(self.conv3(self.conv2(self.conv1(self.conv_input(x))))))

    return Net()


def randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (fresh BNs are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
