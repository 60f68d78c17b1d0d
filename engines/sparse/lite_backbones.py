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
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .backbones import conv_module
from .norm import SparseSequential
from .tensor import SparseTensor

__all__ = ["LiteSparseBackbone"]


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

    def forward(self, x: SparseTensor) -> SparseTensor:
        for stage in self.stages:
            x = stage(x)
        return x
