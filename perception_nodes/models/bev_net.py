"""The 2-D bird's-eye-view trunk every branch puts under its heads (LiDAR and camera alike).

CenterPoint's RPN form: a full-resolution stage and a half-resolution stage, the latter upsampled back and
concatenated, so the heads see both fine detail and twice the receptive field. Kept in one place so a
BEVFusion-style fuser can put the same trunk on concatenated LiDAR and camera features.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    """k x k convolution (same padding), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),
                         nn.ReLU(inplace=True))


class BevNet(nn.Module):
    """Full-res stage, half-res stage upsampled back, concatenated (``out_channels = 2 * channels[0]``);
    ``head_upsample`` > 1 adds a transposed convolution that raises the output resolution by that factor."""

    def __init__(self, cin: int, channels: Sequence[int], layers: Sequence[int], head_upsample: int = 1) -> None:
        super().__init__()
        c1, c2 = channels
        self.stage1 = nn.Sequential(conv_bn(cin, c1), *[conv_bn(c1, c1) for _ in range(layers[0])])
        self.stage2 = nn.Sequential(conv_bn(c1, c2, 2), *[conv_bn(c2, c2) for _ in range(layers[1])])
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c2, c1, 2, 2, bias=False), nn.BatchNorm2d(c1, eps=1e-3, momentum=0.01),
                                 nn.ReLU(inplace=True))
        self.out_channels = 2 * c1
        self.head_up: nn.Module = nn.Identity()
        if head_upsample > 1:
            self.head_up = nn.Sequential(
                nn.ConvTranspose2d(2 * c1, 2 * c1, head_upsample, head_upsample, bias=False),
                nn.BatchNorm2d(2 * c1, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        a = self.stage1(x)
        b = self.up2(self.stage2(a))
        if b.shape[-2:] != a.shape[-2:]:  # odd sizes: the transposed conv gives one cell less
            b = F.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        return self.head_up(torch.cat([a, b], 1))
