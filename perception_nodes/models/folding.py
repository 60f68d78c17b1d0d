"""Inference-time rewrites of the dense layers: BatchNorm folded into convs, transposed convs as one GEMM.

Why: at inference a BatchNorm is an affine map per channel, so ``BN(conv(x)) = conv'(x)`` with the
weights scaled and a bias added (one pass over the feature map instead of two); and a transposed conv
whose kernel equals its stride (CenterPoint's 2x upsampling) writes every output cell from exactly one
input cell, so it is one matrix product ``[H W, C_in] @ [C_in, s s C_out]`` plus a reshuffle. PyTorch's
CPU ConvTranspose2d took ~20 ms of the branch's BEV net for two such layers; the product takes ~3 ms.
Both rewrites re-associate float32 sums only (parity: tests/models/test_lidar_fast_path.py).

The folded tensors are derived data: :class:`FoldCache` rebuilds them when any parameter or buffer of
the module changed (in-place updates such as ``load_state_dict`` bump a tensor's version), so a module
that is trained or reloaded never runs stale weights. Nothing here is saved in a state dict.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["FoldCache", "fold_conv_bn", "fold_sequential_batchnorm", "inference_fast_path",
           "transposed_conv_gemm_weights", "upsample_gemm_nhwc"]


def inference_fast_path(module: nn.Module) -> bool:
    """Whether a fused inference rewrite may run: eval mode, no gradient recorded, not being traced
    (the ONNX export traces the plain layers, whose graph the export code and TensorRT check know)."""
    return (not module.training and not torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.jit.is_scripting())


def fold_conv_bn(conv: nn.Conv2d | nn.ConvTranspose2d, bn: Optional[nn.BatchNorm2d]) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv (eval-mode BatchNorm: running statistics).

    ``conv`` keeps its layout (``[C_out, C_in, k, k]``, or ``[C_in, C_out, k, k]`` for a transposed conv).
    Raises ``ValueError`` for a BatchNorm without running statistics (it normalises by the batch).
    """
    w = conv.weight.detach()
    cout = conv.out_channels
    b = conv.bias.detach() if conv.bias is not None else w.new_zeros(cout)
    if bn is None:
        return w, b
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm that has no running statistics")
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean.detach() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    if isinstance(conv, nn.ConvTranspose2d):
        w = w * scale.view(1, -1, 1, 1)
    else:
        w = w * scale.view(-1, 1, 1, 1)
    return w, b * scale + shift


def fold_sequential_batchnorm(module: nn.Module) -> None:
    """In place, for a network that will not train again: every ``Conv2d`` directly followed by a
    ``BatchNorm2d`` inside an ``nn.Sequential`` becomes one folded convolution and an ``nn.Identity``
    (the folded convolution carries the running statistics). Outputs unchanged up to float rounding;
    transposed convolutions keep their BatchNorm. Needs eval mode."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if module.training:
        raise RuntimeError("fold_batchnorm needs eval mode")
    for mod in list(module.modules()):
        if not isinstance(mod, nn.Sequential):
            continue
        for i in range(len(mod) - 1):
            a, b = mod[i], mod[i + 1]
            if type(a) is nn.Conv2d and isinstance(b, nn.BatchNorm2d):
                mod[i] = fuse_conv_bn_eval(a, b)
                mod[i + 1] = nn.Identity()


def transposed_conv_gemm_weights(conv: nn.ConvTranspose2d, w: Tensor, b: Tensor) -> Optional[tuple[Tensor, Tensor, int]]:
    """``(W [C_in, s*s*C_out], bias [s*s*C_out], s)`` for :func:`upsample_gemm_nhwc`, or ``None`` when the
    layer is not a plain "kernel = stride" upsampling (padding, dilation, groups, output padding)."""
    k, s = tuple(conv.kernel_size), tuple(conv.stride)
    if (k != s or k[0] != k[1] or tuple(conv.padding) != (0, 0) or tuple(conv.output_padding) != (0, 0)
            or tuple(conv.dilation) != (1, 1) or conv.groups != 1):
        return None
    sz = int(k[0])
    cin, cout = w.shape[0], w.shape[1]
    # column order (a, b, c_out): the product's rows reshape to [H, W, a, b, C_out]
    wm = w.permute(0, 2, 3, 1).reshape(cin, sz * sz * cout).contiguous()
    return wm, b.repeat(sz * sz).contiguous(), sz


def upsample_gemm_nhwc(x: Tensor, wm: Tensor, bias: Tensor, s: int, relu: bool = True) -> Tensor:
    """The "kernel = stride" transposed conv of :func:`transposed_conv_gemm_weights` on ``x`` ``[B, C, H, W]``
    (any memory format); returns ``[B, C_out, s H, s W]`` in channels-last memory."""
    bsz, cin, h, w_ = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(bsz * h * w_, cin)  # a view when x is channels-last
    y = torch.addmm(bias, rows, wm)
    if relu:
        y.relu_()
    cout = wm.shape[1] // (s * s)
    y = y.view(bsz, h, w_, s, s, cout).permute(0, 1, 3, 2, 4, 5).reshape(bsz, h * s, w_ * s, cout)
    return y.permute(0, 3, 1, 2)


class FoldCache:
    """Derived inference tensors of some modules (``build(*modules)``), rebuilt when any of their parameters
    or buffers changed (another tensor, or an in-place update: a training step, ``load_state_dict``)."""

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self._build = build
        self._key: Optional[tuple[tuple[int, int], ...]] = None
        self._value: Any = None

    @staticmethod
    def _version_key(modules: tuple[nn.Module, ...]) -> tuple[tuple[int, int], ...]:
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t is not None]
        return tuple((id(t), int(t._version)) for t in tensors)

    def get(self, *modules: nn.Module) -> Any:
        key = self._version_key(modules)
        if key != self._key or self._value is None:
            # plain tensors (not inference tensors), so a later no_grad call may use them too
            with torch.inference_mode(False), torch.no_grad():
                self._value = self._build(*modules)
            self._key = key
        return self._value

