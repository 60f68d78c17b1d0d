"""A light sparse 3D backbone for the real-time LiDAR branch on a CPU.

:class:`LiteSparseBackbone` is the shape of SECOND's ``VoxelBackBone8x`` cut down to what a 2-core CPU
runs in a few tens of milliseconds on a 120k-point scan: one submanifold conv at the input resolution,
then per further stage one strided 3^3 sparse conv (stride 2 in x, y and z) followed by ``subm_per_stage``
submanifold convs. Every conv is conv -> BatchNorm -> ReLU (:func:`engines.sparse.backbones.conv_module`),
so at inference BatchNorm and ReLU fold into the conv (``SparseSequential``) as in the big backbones.

Why this shape (measurements in ``docs/lidar_branch.md``, "Network size and training"): on a CPU the cost
of a sparse conv is dominated by building its kernel map and gathering at the *input* resolution, which
has the most voxels; the strided stages shrink the voxel count about 3-4x each. So the full-resolution
stage gets a single narrow conv, the receptive field comes from the strided stages and from the dense 2D
BEV net after the height collapse (cheap on a CPU: dense GEMMs).

Coordinates follow the engine: (x, y, z) triples; the output has stride ``2 ** (len(channels) - 1)``
in every axis.

Training: the engine's differentiable gather-scatter path adds every kernel offset out of place (one copy
of the whole output per offset, and as many in the backward pass), which made a training step cost about
three times its arithmetic on a CPU. While the module trains with gradients enabled its convs therefore
use :func:`gather_scatter_train` (registered as the dataflow ``"gather_scatter_train"``): the forward pass
is the engine's no-grad gather-scatter, the backward pass is written out (``dX = sum_k scatter(dY W_k^T)``,
``dW_k = X_in^T dY_out`` over the offset's pairs) with in-place accumulation. Same maths, same results up
to float rounding order; inference is untouched (the configured dataflow, ``"auto"`` by default).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .autotune import DATAFLOWS
from .backbones import conv_module
from .conv import _SparseConvNd
from .dataflow_gather_scatter import gather_scatter
from .kernel_map import KernelMap
from .norm import SparseSequential
from .tensor import SparseTensor

__all__ = ["LiteSparseBackbone", "gather_scatter_train"]

TRAIN_DATAFLOW = "gather_scatter_train"


class _GatherScatterFn(torch.autograd.Function):
    """Gather-scatter sparse conv with a hand-written backward pass (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.kmap = kmap
        return gather_scatter(x, weight, kmap)  # autograd is off inside forward: the fast CPU path

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        km: KernelMap = ctx.kmap
        gy = gy.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = torch.zeros_like(x) if need_x else None
        gw = torch.zeros_like(w) if need_w else None
        ident = km.identity_offset
        if ident >= 0:  # submanifold centre tap: output row i comes from input row i
            if gx is not None:
                gx.add_(gy @ w[ident].T)
            if gw is not None:
                gw[ident] = x.T @ gy
        in_idx, out_idx, ptr = km.pairs()
        for k in range(len(ptr) - 1):
            a, b = ptr[k], ptr[k + 1]
            if a == b:
                continue
            g = gy.index_select(0, out_idx[a:b])
            if gx is not None:
                gx.index_add_(0, in_idx[a:b], g @ w[k].T)
            if gw is not None:
                gw[k] = x.index_select(0, in_idx[a:b]).T @ g
        return gx, gw, None


def gather_scatter_train(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Sparse conv ``x`` [N_in, Cin] * ``weight`` [K, Cin, Cout] along ``kmap``, cheap to differentiate."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _GatherScatterFn.apply(x, weight, kmap)
    return gather_scatter(x, weight, kmap)


DATAFLOWS.setdefault(TRAIN_DATAFLOW, gather_scatter_train)


class LiteSparseBackbone(nn.Module):
    """Input SubM conv, then ``len(channels) - 1`` stages of (stride-2 sparse conv, ``subm_per_stage`` SubM convs).

    Args:
        in_channels: voxel feature channels (4: mean x, y, z, intensity).
        channels: output channels of each stage; stage 0 runs at the input resolution.
        subm_per_stage: submanifold convs after the input conv (stage 0) or after the strided conv of each
            later stage; one entry per stage.
        dataflow: sparse conv dataflow (``"auto"`` lets the engine's autotuner choose).
    """

    def __init__(self, in_channels: int = 4, channels: Sequence[int] = (16, 32, 64),
                 subm_per_stage: Sequence[int] = (0, 1, 1), dataflow: str = "auto") -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        subm = [int(n) for n in subm_per_stage]
        if not channels or min(channels) < 1:
            raise ValueError("channels must be a non-empty list of positive channel counts")
        if len(subm) != len(channels) or min(subm) < 0:
            raise ValueError("subm_per_stage needs one non-negative entry per stage")
        d = dataflow
        stages = []
        first = [conv_module(in_channels, channels[0], 3, "subm", indice_key="subm0", dataflow=d)]
        first += [conv_module(channels[0], channels[0], 3, "subm", indice_key="subm0", dataflow=d)
                  for _ in range(subm[0])]
        stages.append(SparseSequential(*first))
        for s in range(1, len(channels)):
            cin, cout = channels[s - 1], channels[s]
            mods = [conv_module(cin, cout, 3, "spconv", 2, 1, f"down{s}", d)]
            mods += [conv_module(cout, cout, 3, "subm", indice_key=f"subm{s}", dataflow=d) for _ in range(subm[s])]
            stages.append(SparseSequential(*mods))
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels[-1]
        self.dataflow = dataflow

    def _use_dataflow(self, name: str) -> None:
        for m in self.modules():
            if isinstance(m, _SparseConvNd) and m.dataflow != name:
                m.dataflow = name

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._use_dataflow(TRAIN_DATAFLOW if (self.training and torch.is_grad_enabled()) else self.dataflow)
        for stage in self.stages:
            x = stage(x)
        return x
