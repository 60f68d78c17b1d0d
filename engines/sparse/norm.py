"""Pointwise layers on sparse features, and a Sequential that mixes them with sparse convolutions.

They subclass the torch.nn layers, so state-dict keys (``weight``, ``bias``, ``running_mean``, ...)
match spconv networks, which use plain ``nn.BatchNorm1d`` / ``nn.ReLU`` inside ``SparseSequential``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
from torch import nn

from .epilogue import Epilogue, batchnorm_affine, params_key, with_batchnorm
from .tensor import SparseTensor

# inference fusion of conv -> BN (-> residual) (-> ReLU): True folds the BN into the weights, "epilogue"
# applies it unfolded inside the convolution's loop, False runs every layer as its own pass
FuseMode = Union[bool, Literal["epilogue"]]


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the active voxels' features (statistics over rows, as spconv/TorchSparse)."""

    _sparse_module = True

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseReLU(nn.ReLU):
    _sparse_module = True

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseLeakyReLU(nn.LeakyReLU):
    _sparse_module = True

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseSequential(nn.Sequential):
    """``nn.Sequential`` for sparse tensors: sparse modules get the tensor, plain modules
    (``nn.BatchNorm1d``, ``nn.ReLU``, ``nn.Linear``, ...) are applied to its features -- the same
    convention as spconv's ``SparseSequential``, so spconv model definitions port line by line."""

    _sparse_module = True

    def __init__(self, *args: nn.Module, fuse: FuseMode = True) -> None:
        super().__init__(*args)
        self.fuse = fuse

    def forward(self, x: Any) -> Any:  # type: ignore[override]
        mods = list(self)
        i = 0
        while i < len(mods):
            module = mods[i]
            fused = self._try_fused(mods, i, x) if self.fuse else None
            if fused is not None:
                x, i = fused
                continue
            if isinstance(x, SparseTensor) and not getattr(module, "_sparse_module", False):
                x = x.replace(module(x.feats))
            else:
                x = module(x)
            i += 1
        return x

    def _try_fused(self, mods: list[nn.Module], i: int, x: Any) -> Optional[tuple[SparseTensor, int]]:
        """conv -> BatchNorm (-> ReLU) at inference as one convolution with an epilogue.

        ``fuse=True``: the BN folded into the conv weights (TensorRT does the same), bias and ReLU in
        the epilogue; ``fuse="epilogue"``: the BN left unfolded and applied with the ReLU inside the
        convolution's loop (:mod:`.epilogue`). Either saves the full passes over the features that
        separate BN and ReLU layers make. Only when nothing needs gradients and the BN uses running
        statistics; exact up to rounding.
        """
        from . import conv as conv_mod

        if i + 1 >= len(mods) or not isinstance(x, SparseTensor) or conv_mod._export_mode() is not None:
            return None
        c, bn = mods[i], mods[i + 1]
        if not isinstance(c, conv_mod._SparseConvNd) or type(bn) not in (nn.BatchNorm1d, SparseBatchNorm):
            return None
        if bn.training or c.training or torch.is_grad_enabled() or not bn.track_running_stats:
            return None
        nxt = i + 2
        relu = nxt < len(mods) and type(mods[nxt]) in (nn.ReLU, SparseReLU)
        y = conv_bn(c, bn, x, self.fuse, relu=relu)
        return y, nxt + 1 if relu else nxt


def conv_bn(c: nn.Module, bn: nn.BatchNorm1d, x: SparseTensor, mode: FuseMode,
            residual: Optional[torch.Tensor] = None, relu: bool = False) -> SparseTensor:
    """Inference ``relu(bn(c(x)) + residual)`` as one convolution: BN folded (``mode=True``) or as an
    unfolded epilogue (``mode="epilogue"``); residual and ReLU in the epilogue either way."""
    if mode == "epilogue":
        ep = with_batchnorm(bn, c.bias, residual=residual, relu=relu)  # type: ignore[arg-type]
        return c.forward_with(x, c.weight, None, ep)  # type: ignore[operator]
    w, b = _folded(c, bn)
    return c.forward_with(x, w, None, Epilogue(bias=b, residual=residual, relu=relu))  # type: ignore[operator]


def _folded(c: nn.Module, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight/bias with an eval-mode BatchNorm folded in; cached until any parameter changes."""
    key = params_key([c.weight, c.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias])
    cached = c.__dict__.get("_bn_fold")
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    scale, shift = batchnorm_affine(bn)
    with torch.no_grad():
        if c.bias is not None:
            shift = shift + c.bias * scale
        w = (c.weight * scale).contiguous()
    c.__dict__["_bn_fold"] = (key, w, shift)
    return w, shift
