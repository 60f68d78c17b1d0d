"""Pointwise layers on sparse features, and a Sequential that mixes them with sparse convolutions.

They subclass the torch.nn layers, so state-dict keys (``weight``, ``bias``, ``running_mean``, ...)
match spconv networks, which use plain ``nn.BatchNorm1d`` / ``nn.ReLU`` inside ``SparseSequential``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .tensor import SparseTensor


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

    def forward(self, x: Any) -> Any:  # type: ignore[override]
        for module in self:
            if isinstance(x, SparseTensor) and not getattr(module, "_sparse_module", False):
                x = x.replace(module(x.feats))
            else:
                x = module(x)
        return x
