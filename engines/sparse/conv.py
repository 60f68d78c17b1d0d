"""Sparse convolution modules (torch.nn style, TorchSparse/spconv names).

Weight layout: ``weight`` is ``[K, C_in, C_out]`` with ``K = kx * ky * kz`` kernel offsets in the
order ``k = (ix * ky + iy) * kz + iz`` over our (x, y, z) axes, so ``weight[k]`` maps an input row
to an output row with a plain matmul (no transpose in the hot loop). Equivalent dense weights:
``F.conv3d`` weight ``[C_out, C_in, kx, ky, kz] = weight.reshape(kx, ky, kz, C_in, C_out).permute(4, 3, 0, 1, 2)``
and ``F.conv_transpose3d`` weight ``[C_in, C_out, kx, ky, kz] = ... .permute(3, 4, 0, 1, 2)``
(see :func:`dense_weight`). spconv 2.x stores ``[C_out, k0, k1, k2, C_in]`` over the axes of *its*
index columns, usually (z, y, x); :meth:`load_state_dict` converts such 5-D tensors on the fly, so
checkpoints of spconv-based code (OpenPCDet, mmdetection3d) load unchanged; so do mmcv / spconv 1.x
weights `[k0, k1, k2, C_in, C_out]` (older mmdetection3d checkpoints), told apart by shape.
"""

from __future__ import annotations

import math
import threading
from typing import Literal, Optional

import torch
from torch import nn

from .autotune import Autotuner, run_dataflow
from .epilogue import Epilogue
from .geometry import ConvGeometry, ConvKind, DownMode, Triple, triple
from .kernel_map import KernelMap
from .tensor import SparseTensor

AxisOrder = Literal["zyx", "xyz"]

# Export hooks: engines.sparse.export switches these to record kernel maps / replay with map inputs.
_export_state = threading.local()


def _export_mode() -> Optional[object]:
    return getattr(_export_state, "ctx", None)


def spconv_weight_to_ours(w: torch.Tensor, axis_order: AxisOrder = "zyx") -> torch.Tensor:
    """spconv ``[C_out, k0, k1, k2, C_in]`` -> ours ``[K, C_in, C_out]``.

    ``axis_order`` names spconv's index columns 1..3: ``"zyx"`` for OpenPCDet/mmdet3d-style
    (batch, z, y, x) indices, ``"xyz"`` if the spconv model was fed (batch, x, y, z).
    """
    if w.dim() != 5:
        raise ValueError(f"expected a 5-D spconv weight, got shape {tuple(w.shape)}")
    perm = (3, 2, 1, 4, 0) if axis_order == "zyx" else (1, 2, 3, 4, 0)
    w = w.permute(*perm)  # [kx, ky, kz, C_in, C_out]
    return w.reshape(-1, w.shape[3], w.shape[4]).contiguous()


def ours_to_spconv_weight(w: torch.Tensor, kernel_size: Triple, axis_order: AxisOrder = "zyx") -> torch.Tensor:
    """Inverse of :func:`spconv_weight_to_ours`."""
    kx, ky, kz = kernel_size
    w = w.reshape(kx, ky, kz, w.shape[1], w.shape[2])
    if axis_order == "zyx":
        return w.permute(4, 2, 1, 0, 3).contiguous()
    return w.permute(4, 0, 1, 2, 3).contiguous()


def dense_weight(w: torch.Tensor, kernel_size: Triple, transposed: bool = False) -> torch.Tensor:
    """Our ``[K, C_in, C_out]`` weight as a ``F.conv3d`` (or ``F.conv_transpose3d``) weight on (x, y, z)."""
    kx, ky, kz = kernel_size
    w = w.reshape(kx, ky, kz, w.shape[1], w.shape[2])
    return w.permute(3, 4, 0, 1, 2).contiguous() if transposed else w.permute(4, 3, 0, 1, 2).contiguous()


def sparse_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    kmap: KernelMap,
    bias: Optional[torch.Tensor] = None,
    dataflow: str = "auto",
    tuner: Optional[Autotuner] = None,
    epilogue: Optional[Epilogue] = None,
) -> torch.Tensor:
    """Functional sparse convolution of features ``x`` along ``kmap`` (``"auto"`` asks ``tuner``).

    ``epilogue`` (inference only): what follows the convolution -- its bias, an unfolded BatchNorm,
    a residual add, ReLU -- applied inside the dataflow's loop where it can (:mod:`.epilogue`); ``bias``
    must then be None (put it in the epilogue).
    """
    if epilogue is not None:
        if bias is not None:
            raise ValueError("with an epilogue, pass the bias inside it (Epilogue.bias)")
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or epilogue.requires_grad()):
            # autograd: the plain torch ops on a copy of the output (in-place ops on it stay differentiable)
            return epilogue.apply_(run_dataflow(dataflow, x, weight, kmap, tuner).clone())
        return run_dataflow(dataflow, x, weight, kmap, tuner, epilogue)
    y = run_dataflow(dataflow, x, weight, kmap, tuner)
    if bias is not None:
        if torch.is_grad_enabled() and (y.requires_grad or bias.requires_grad):
            y = y + bias
        else:
            y.add_(bias)  # y is a fresh tensor: no extra [N, C] allocation
    return y


class _SparseConvNd(nn.Module):
    """Common parameters, initialisation and spconv checkpoint compatibility."""

    kind: ConvKind = "subm"
    _sparse_module = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Triple = 3,
        stride: int | Triple = 1,
        padding: int | Triple = 0,
        dilation: int | Triple = 1,
        bias: bool = False,
        indice_key: Optional[str] = None,
        dataflow: str = "auto",
        mode: DownMode = "generative",
        spconv_axis_order: AxisOrder = "zyx",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = triple(kernel_size)
        self.stride = triple(stride)
        self.padding = triple(padding)
        self.dilation = triple(dilation)
        self.indice_key = indice_key
        self.dataflow = dataflow
        self.mode = mode
        self.spconv_axis_order = spconv_axis_order
        K = self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]
        self.weight = nn.Parameter(torch.empty(K, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # same fan-in scaling as nn.Conv3d's default (kaiming uniform, a = sqrt(5))
        fan_in = self.in_channels * self.weight.shape[0]
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def geometry(self, x: SparseTensor) -> ConvGeometry:
        return ConvGeometry(
            kind=self.kind,
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            padding=self.padding,
            in_stride=x.stride,
            mode=self.mode,
        )

    def kernel_map(self, x: SparseTensor) -> KernelMap:
        km = x.cache.get(x.coords, self.geometry(x), x.spatial_shape)
        if self.indice_key is not None:
            x.cache.by_name.setdefault(self.indice_key, km)
        return km

    def forward(self, x: SparseTensor) -> SparseTensor:
        km = self.kernel_map(x)
        return self._apply_map(x, km)

    def forward_with(self, x: SparseTensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     epilogue: Optional[Epilogue] = None) -> SparseTensor:
        """Run this layer's geometry with other parameters (inference-time BN folding) and/or an
        ``epilogue`` (unfolded BN, residual, ReLU inside the loop); with an epilogue, ``bias`` goes in it."""
        km = self.kernel_map(x)
        return self._apply_map(x, km, weight, bias, epilogue)

    def _features(self, x: SparseTensor, km: KernelMap, weight: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], epilogue: Optional[Epilogue] = None) -> torch.Tensor:
        ctx = _export_mode()
        if ctx is not None:
            if epilogue is not None:  # the export records plain layers (SparseSequential does not fuse there)
                raise RuntimeError("a convolution epilogue cannot be exported; export with set_fuse(model, False)")
            return ctx.conv(self, x.feats, km)  # type: ignore[attr-defined]
        if weight is None:
            weight, bias = self.weight, self.bias
        # ``tuner``: set by engines.sparse.tunefile.configure (frozen tune-file lookup); else the default
        return sparse_conv(x.feats, weight, km, bias, self.dataflow, getattr(self, "tuner", None), epilogue)

    def _apply_map(self, x: SparseTensor, km: KernelMap, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, epilogue: Optional[Epilogue] = None) -> SparseTensor:
        feats = self._features(x, km, weight, bias, epilogue)
        if km.out_coords is x.coords and km.geometry.kind == "subm":
            return x.replace(feats)
        return x.with_coords(feats, km.out_coords, km.geometry.out_stride, km.out_spatial_shape)

    def dense_weight(self) -> torch.Tensor:
        return dense_weight(self.weight.detach(), self.kernel_size, transposed=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "weight"
        w = state_dict.get(key)
        if w is not None and w.dim() == 5:
            k_sp = self.kernel_size[::-1] if self.spconv_axis_order == "zyx" else self.kernel_size
            v1_shape = (*k_sp, self.in_channels, self.out_channels)
            if tuple(w.shape) == v1_shape and tuple(w.shape) != (self.out_channels, *k_sp, self.in_channels):
                w = w.permute(4, 0, 1, 2, 3)  # mmcv / spconv 1.x [k0, k1, k2, C_in, C_out] -> spconv 2.x
            state_dict[key] = spconv_weight_to_ours(w, self.spconv_axis_order)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.indice_key:
            s += f", indice_key={self.indice_key!r}"
        return s + f", dataflow={self.dataflow!r}"


class SubMConv3d(_SparseConvNd):
    """Submanifold convolution: outputs only at the input sites (odd kernel, stride 1)."""

    kind = "subm"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple = 3, stride: int | Triple = 1,
                 padding: int | Triple = 0, dilation: int | Triple = 1, bias: bool = False,
                 indice_key: Optional[str] = None, dataflow: str = "auto", spconv_axis_order: AxisOrder = "zyx") -> None:
        if triple(stride) != (1, 1, 1):
            raise ValueError("SubMConv3d has stride 1")
        super().__init__(in_channels, out_channels, kernel_size, 1, padding, dilation, bias, indice_key, dataflow,
                         "generative", spconv_axis_order)


class SparseConv3d(_SparseConvNd):
    """Strided sparse convolution.

    ``mode="generative"`` (spconv): an output exists wherever the dense ``conv3d`` with this
    padding would see at least one input (outputs bounded by ``spatial_shape`` when known).
    ``mode="floor"`` (Minkowski/TorchSparse): outputs at ``floor(c / s) * s`` of the inputs. The
    two agree when kernel size equals stride and padding is 0.
    """

    kind = "down"


class SparseConvTranspose3d(_SparseConvNd):
    """Generative transposed convolution (upsampling), equal to ``F.conv_transpose3d`` at its outputs.

    Weight ``[K, C_in, C_out]`` as for the other layers; the dense equivalent is
    ``dense_weight(w, k, transposed=True)``.
    """

    kind = "up"

    def dense_weight(self) -> torch.Tensor:
        return dense_weight(self.weight.detach(), self.kernel_size, transposed=True)


class SparseInverseConv3d(_SparseConvNd):
    """Undo a strided layer: outputs at that layer's input sites, reusing its kernel map swapped.

    Like spconv, the strided layer is named by ``indice_key``; kernel size must match it. Equal to
    ``F.conv_transpose3d`` (with the strided layer's stride/padding) sampled at those sites.
    """

    kind = "down"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple, indice_key: str,
                 bias: bool = False, dataflow: str = "auto", spconv_axis_order: AxisOrder = "zyx") -> None:
        super().__init__(in_channels, out_channels, kernel_size, 1, 0, 1, bias, indice_key, dataflow,
                         "generative", spconv_axis_order)

    def kernel_map(self, x: SparseTensor) -> KernelMap:
        fwd = x.cache.by_name.get(self.indice_key or "")
        if fwd is None:
            raise KeyError(f"no strided layer registered under indice_key={self.indice_key!r}")
        if fwd.geometry.kernel_size != self.kernel_size:
            raise ValueError(f"kernel size {self.kernel_size} does not match the forward layer's {fwd.geometry.kernel_size}")
        if fwd.out_coords is not x.coords and not torch.equal(fwd.out_coords, x.coords):
            raise ValueError("input of the inverse convolution is not the output of the layer it inverts")
        inv = fwd.inverse()
        inv._extras["is_inverse"] = True  # tune-file shape keys tell it from the forward layer
        return inv

    def _apply_map(self, x: SparseTensor, km: KernelMap, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, epilogue: Optional[Epilogue] = None) -> SparseTensor:
        feats = self._features(x, km, weight, bias, epilogue)
        fwd_geom = km.geometry
        return x.with_coords(feats, km.out_coords, fwd_geom.in_stride, km.out_spatial_shape)

    def dense_weight(self) -> torch.Tensor:
        return dense_weight(self.weight.detach(), self.kernel_size, transposed=True)
