"""Convolution geometry: which input coordinate feeds which output coordinate, per kernel offset.

Coordinates are integer voxel indices of the finest grid (TorchSparse convention): a tensor with
tensor stride ``s`` only has coordinates that are multiples of ``s``. Kernel offsets are numbered
``k = (ix * ky + iy) * kz + iz`` (x slowest, z fastest), the order of the weight's first axis.

For output coordinate ``O`` and kernel index ``i`` (per axis) the input read is ``O + disp``:

* submanifold:   disp = (i - (k - 1) // 2) * d * s_in            (output coords = input coords)
* strided:       disp = (i * d - p) * s_in                        (same rule as ``F.conv3d``)
* transposed:    disp = -(i * d - p) * s_out, s_out = s_in / stride (same rule as ``F.conv_transpose3d``)

so a sparse layer equals the dense layer evaluated at the sparse output sites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Triple = tuple[int, int, int]
ConvKind = Literal["subm", "down", "up"]
DownMode = Literal["generative", "floor"]


def triple(v: int | tuple[int, ...] | list[int]) -> Triple:
    """Expand an int or a 3-sequence into a (x, y, z) triple."""
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 values, got {v!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvGeometry:
    """Everything that determines a kernel map, besides the input coordinates themselves."""

    kind: ConvKind
    kernel_size: Triple
    stride: Triple = (1, 1, 1)
    dilation: Triple = (1, 1, 1)
    padding: Triple = (0, 0, 0)
    in_stride: Triple = (1, 1, 1)
    mode: DownMode = "generative"

    def __post_init__(self) -> None:
        if self.kind == "subm":
            if any(k % 2 == 0 for k in self.kernel_size):
                raise ValueError("submanifold convolution needs odd kernel sizes (a centred kernel)")
            if self.stride != (1, 1, 1):
                raise ValueError("submanifold convolution has stride 1")
        if self.kind == "up":
            for s_in, s in zip(self.in_stride, self.stride):
                if s_in % s:
                    raise ValueError(f"transposed stride {self.stride} does not divide tensor stride {self.in_stride}")

    @property
    def kernel_volume(self) -> int:
        kx, ky, kz = self.kernel_size
        return kx * ky * kz

    @property
    def out_stride(self) -> Triple:
        if self.kind == "down":
            return tuple(a * b for a, b in zip(self.in_stride, self.stride))  # type: ignore[return-value]
        if self.kind == "up":
            return tuple(a // b for a, b in zip(self.in_stride, self.stride))  # type: ignore[return-value]
        return self.in_stride

    @property
    def identity_offset(self) -> int:
        """Index of the offset that maps every output to itself (submanifold centre), else -1."""
        if self.kind != "subm":
            return -1
        kx, ky, kz = self.kernel_size
        return ((kx // 2) * ky + ky // 2) * kz + kz // 2

    def axis_displacements(self) -> list[np.ndarray]:
        """Per axis, the displacement (coordinate units) of each kernel index: input = output + disp."""
        out = []
        for a in range(3):
            i = np.arange(self.kernel_size[a], dtype=np.int64)
            d, p = self.dilation[a], self.padding[a]
            if self.kind == "subm":
                v = (i - (self.kernel_size[a] - 1) // 2) * d * self.in_stride[a]
            elif self.kind == "down":
                v = (i * d - p) * self.in_stride[a]
            else:
                v = -(i * d - p) * self.out_stride[a]
            out.append(v)
        return out

    def displacements(self) -> np.ndarray:
        """[K, 3] displacement of every kernel offset in weight order."""
        dx, dy, dz = self.axis_displacements()
        g = np.stack(np.meshgrid(dx, dy, dz, indexing="ij"), axis=-1)
        return g.reshape(-1, 3)

    def out_spatial_shape(self, in_shape: Triple | None) -> Triple | None:
        """Grid extent of the output (in cells of the output stride), spconv/dense-conv rules."""
        if in_shape is None:
            return None
        k, s, d, p = self.kernel_size, self.stride, self.dilation, self.padding
        if self.kind == "subm":
            return in_shape
        if self.kind == "down":
            if self.mode == "floor":
                return tuple((n + s_ - 1) // s_ for n, s_ in zip(in_shape, s))  # type: ignore[return-value]
            return tuple((n + 2 * p_ - d_ * (k_ - 1) - 1) // s_ + 1 for n, k_, s_, d_, p_ in zip(in_shape, k, s, d, p))  # type: ignore[return-value]
        return tuple((n - 1) * s_ - 2 * p_ + d_ * (k_ - 1) + 1 for n, k_, s_, d_, p_ in zip(in_shape, k, s, d, p))  # type: ignore[return-value]

    def cache_key(self) -> tuple:
        return (self.kind, self.kernel_size, self.stride, self.dilation, self.padding, self.in_stride, self.mode)
