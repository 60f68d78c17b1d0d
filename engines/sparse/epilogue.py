"""What follows a convolution at inference -- bias, BatchNorm, residual add, ReLU -- as one epilogue.

Why: after a sparse convolution a CenterPoint/SECOND block runs BatchNorm, ReLU and (in residual
blocks) an add, each a full pass over the ``[N, C]`` features, which at 64-128 channels no longer
fit in L2. The fused dataflow (:mod:`.dataflow_fused`) applies the epilogue to each tile of output
rows while the tile is still in L2, right after its last offset; every other dataflow applies it
afterwards with the same torch in-place ops. Both paths do the same operations in the same order
(each rounded once: no fused multiply-add), so they agree bit for bit.

The BatchNorm stays *unfolded*: the convolution runs with its own weights and the normalisation is
``y * scale + shift`` on its output (``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean *
scale``, the form torch's CPU inference kernel uses), unlike folding, which rewrites the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Epilogue:
    """``relu((((y + bias) * scale) + shift) + residual)``, every part optional, applied in place.

    ``bias``, ``scale``, ``shift``: ``[C_out]``; ``residual``: ``[N_out, C_out]`` (rows of the output).
    """

    bias: Optional[torch.Tensor] = None
    scale: Optional[torch.Tensor] = None
    shift: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None
    relu: bool = False

    def is_empty(self) -> bool:
        return (self.bias is None and self.scale is None and self.shift is None and self.residual is None
                and not self.relu)

    def requires_grad(self) -> bool:
        return any(t is not None and t.requires_grad for t in (self.bias, self.scale, self.shift, self.residual))

    def check(self, n_out: int, c_out: int) -> None:
        """Exact operand shapes (no broadcasting), so every dataflow accepts and refuses the same calls."""
        for name, t, shape in (("bias", self.bias, (c_out,)), ("scale", self.scale, (c_out,)),
                               ("shift", self.shift, (c_out,)), ("residual", self.residual, (n_out, c_out))):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"epilogue {name} of shape {tuple(t.shape)}, expected {shape}")

    def apply_(self, y: torch.Tensor) -> torch.Tensor:
        """The epilogue on a finished output (the path of every dataflow but the fused one)."""
        self.check(*y.shape)
        if self.bias is not None:
            y.add_(self.bias)
        if self.scale is not None:
            y.mul_(self.scale)
        if self.shift is not None:
            y.add_(self.shift)
        if self.residual is not None:
            y.add_(self.residual)
        if self.relu:
            y.relu_()
        return y


def params_key(params: Sequence[Optional[torch.Tensor]]) -> tuple:
    """Cache key that changes when any of ``params`` is replaced or updated in place."""
    return tuple((id(p), p._version) if p is not None else None for p in params)


def batchnorm_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm; cached on the module until a parameter changes."""
    key = params_key([bn.running_mean, bn.running_var, bn.weight, bn.bias])
    cached = bn.__dict__.get("_affine")
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        scale, shift = scale.contiguous(), shift.contiguous()
    bn.__dict__["_affine"] = (key, scale, shift)
    return scale, shift


def with_batchnorm(bn: nn.BatchNorm1d, bias: Optional[torch.Tensor] = None,
                   residual: Optional[torch.Tensor] = None, relu: bool = False) -> Epilogue:
    """conv (+ its bias) -> eval BatchNorm (-> + residual) (-> ReLU), BatchNorm unfolded."""
    scale, shift = batchnorm_affine(bn)
    return Epilogue(bias=None if bias is None else bias.detach(), scale=scale, shift=shift,
                    residual=residual, relu=relu)
