"""The 2-D bird's-eye-view trunk every branch puts under its heads (LiDAR and camera alike).

CenterPoint's RPN form: a full-resolution stage and a half-resolution stage, the latter upsampled back and
concatenated, so the heads see both fine detail and twice the receptive field. Kept in one place so a
BEVFusion-style fuser can put the same trunk on concatenated LiDAR and camera features.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception_nodes.models.folding import FoldCache, fold_conv_bn, transposed_conv_gemm_weights, upsample_gemm_nhwc


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

        self._folded = FoldCache(_fold_bev_net)

    def forward(self, x: Tensor, crop: int = 0) -> Tensor:
        """``crop`` cells (of the input grid) are cut off every side before ``head_up``: a context margin
        that the convolutions read but nothing after them computes on. The same as cropping the output
        (``head_up`` is a kernel = stride transposed conv: each input cell makes its own output block)."""
        a = self.stage1(x)
        b = self.up2(self.stage2(a))
        if b.shape[-2:] != a.shape[-2:]:  # odd sizes: the transposed conv gives one cell less
            b = F.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        return self.head_up(_crop(torch.cat([a, b], 1), crop))

    def forward_inference(self, x: Tensor, crop: int = 0) -> Tensor:
        """:meth:`forward` for inference (eval mode, no gradient): BatchNorms folded into the convs, the
        "kernel = stride" transposed convs as one matrix product each, channels-last memory throughout
        (oneDNN's native layout: no reorder per conv). Same values to float32 rounding; the result is
        channels-last (a ``[B, C, H, W]`` tensor with NHWC strides)."""
        f = self._folded.get(self)
        y = x.contiguous(memory_format=torch.channels_last)
        for w, b, stride, padding in f["stage1"]:
            y = F.conv2d(y, w, b, stride, padding).relu_()
        a = y
        for w, b, stride, padding in f["stage2"]:
            y = F.conv2d(y, w, b, stride, padding).relu_()
        b = _upsample(y, f["up2"], self.up2)
        if b.shape[-2:] != a.shape[-2:]:
            b = F.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        y = _crop(torch.cat([a, b], 1), crop)
        if isinstance(self.head_up, nn.Identity):
            return y
        return _upsample(y, f["head_up"], self.head_up)


def _crop(x: Tensor, m: int) -> Tensor:
    """``[B, C, H, W]`` without ``m`` cells on every side (a view)."""
    return x if m == 0 else x[:, :, m:x.shape[2] - m, m:x.shape[3] - m]


def _upsample(x: Tensor, folded: Any, seq: nn.Module) -> Tensor:
    if folded[0] == "gemm":
        _, wm, bias, s = folded
        return upsample_gemm_nhwc(x.contiguous(memory_format=torch.channels_last), wm, bias, s)
    _, w, b = folded  # any other transposed conv: the folded layer itself
    conv = seq[0]
    return F.conv_transpose2d(x, w, b, conv.stride, conv.padding, conv.output_padding, conv.groups,
                              conv.dilation).relu_()


def _fold_bev_net(net: BevNet) -> dict[str, Any]:
    """The folded layers of :meth:`BevNet.forward_inference` (built by its :class:`FoldCache`)."""

    def stage(seq: nn.Sequential) -> list[tuple[Tensor, Tensor, Any, Any]]:
        out = []
        for block in seq:  # conv_bn blocks: Conv2d, BatchNorm2d, ReLU
            conv, bn = block[0], block[1]
            w, b = fold_conv_bn(conv, bn)
            out.append((w.contiguous(), b.contiguous(), conv.stride, conv.padding))
        return out

    def up(seq: nn.Sequential) -> tuple[Any, ...]:
        w, b = fold_conv_bn(seq[0], seq[1])
        g = transposed_conv_gemm_weights(seq[0], w, b)
        return ("gemm", *g) if g is not None else ("conv", w, b)

    folded: dict[str, Any] = {"stage1": stage(net.stage1), "stage2": stage(net.stage2), "up2": up(net.up2)}
    if not isinstance(net.head_up, nn.Identity):
        folded["head_up"] = up(net.head_up)
    return folded
