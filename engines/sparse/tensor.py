"""SparseTensor: features on occupied voxels, plus what layers need to find their neighbours.

Naming follows TorchSparse/spconv: ``feats``/``F`` are features [N, C], ``coords``/``C`` are int32
[N, 4] = (batch, x, y, z) in voxel units of the finest grid, ``stride`` is the tensor stride (a
tensor at stride s only has coordinates that are multiples of s). ``spatial_shape`` (optional, x y z
cells at the current stride) bounds generative layers exactly as the dense convolution's output
size would, which is what makes a sparse network equal to its dense counterpart.

Every tensor derived from one input shares a :class:`KernelMapCache`, so layers with the same
geometry at the same stride reuse one kernel map instead of rebuilding it.
"""

from __future__ import annotations

from typing import Optional

import torch

from .geometry import Triple, triple
from .kernel_map import KernelMapCache


class SparseTensor:
    """Sparse voxel features. Cheap to derive: ``replace(feats)`` shares coords and map cache."""

    __slots__ = ("feats", "coords", "stride", "spatial_shape", "batch_size", "cache")

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        stride: int | Triple = 1,
        spatial_shape: Optional[Triple] = None,
        batch_size: Optional[int] = None,
        cache: Optional[KernelMapCache] = None,
    ) -> None:
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be [N, 4] (b, x, y, z), got {tuple(coords.shape)}")
        if feats.dim() != 2 or feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats must be [N, C] with N = {coords.shape[0]}, got {tuple(feats.shape)}")
        if coords.dtype != torch.int32:
            coords = coords.int()
        self.feats = feats
        self.coords = coords
        self.stride: Triple = triple(stride)
        self.spatial_shape: Optional[Triple] = None if spatial_shape is None else triple(spatial_shape)
        self.batch_size = batch_size
        self.cache = cache if cache is not None else KernelMapCache()

    # TorchSparse-style short names
    @property
    def F(self) -> torch.Tensor:  # noqa: N802 - field naming convention
        return self.feats

    @property
    def C(self) -> torch.Tensor:  # noqa: N802
        return self.coords

    @property
    def features(self) -> torch.Tensor:
        """spconv-style name for :attr:`feats`."""
        return self.feats

    @property
    def indices(self) -> torch.Tensor:
        """spconv-style name for :attr:`coords` (note: ours are (b, x, y, z), spconv's (b, z, y, x))."""
        return self.coords

    @property
    def num_channels(self) -> int:
        return int(self.feats.shape[1])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def infer_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return int(self.coords[:, 0].max().item()) + 1 if len(self) else 0

    def replace(self, feats: torch.Tensor) -> "SparseTensor":
        """Same coordinates (and kernel-map cache), new features -- what norms and activations return."""
        return SparseTensor(feats, self.coords, self.stride, self.spatial_shape, self.batch_size, self.cache)

    replace_feature = replace  # spconv name

    def with_coords(
        self, feats: torch.Tensor, coords: torch.Tensor, stride: Triple, spatial_shape: Optional[Triple]
    ) -> "SparseTensor":
        return SparseTensor(feats, coords, stride, spatial_shape, self.batch_size, self.cache)

    def to(self, *args, **kwargs) -> "SparseTensor":
        """Move/cast features; coordinates follow the device. A new device gets a new map cache."""
        feats = self.feats.to(*args, **kwargs)
        if feats.device != self.coords.device:
            return SparseTensor(feats, self.coords.to(feats.device), self.stride, self.spatial_shape, self.batch_size)
        return self.replace(feats)

    def dense(self, spatial_shape: Optional[Triple] = None, batch_size: Optional[int] = None) -> torch.Tensor:
        """Dense [B, C, X, Y, Z] grid at the tensor stride (see :func:`engines.sparse.dense.to_dense`)."""
        from .dense import to_dense

        return to_dense(self, spatial_shape, batch_size)

    def __repr__(self) -> str:
        return (
            f"SparseTensor(n={len(self)}, channels={self.num_channels}, stride={self.stride}, "
            f"spatial_shape={self.spatial_shape}, dtype={self.feats.dtype}, device={self.device})"
        )
