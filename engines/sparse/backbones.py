"""The two sparse 3D backbones a LiDAR detector is built on, loading their upstream checkpoints.

* :class:`SparseEncoder` -- mmdetection3d's ``SparseEncoder`` (``mmdet3d/models/middle_encoders``),
  by default in the CenterPoint VoxelNet configuration: 5 input channels, residual
  ``SparseBasicBlock`` stages ``((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128))`` and a
  128-channel output collapsed to BEV (``[B, 128 * D, H, W]``). ``block_type="conv_module"`` gives
  the SECOND/Part-A2 encoder of the same class.
* :class:`VoxelBackBone8x` -- OpenPCDet's SECOND backbone (``pcdet/models/backbones_3d/spconv_backbone.py``).

Module names and nesting follow upstream exactly, so the state dicts that mmdetection3d and
OpenPCDet save load with ``load_state_dict(strict=True)``: spconv 2.x weights ``[C_out, kz, ky, kx,
C_in]`` are converted on load (``conv._SparseConvNd``), and so are the mmcv/spconv 1.x weights
``[kz, ky, kx, C_in, C_out]`` of older mmdetection3d checkpoints (mmdetection3d converts those itself
when spconv 2 is installed). Upstream indexes voxels (b, z, y, x) and writes kernel, stride and
padding triples in that order; our modules take (x, y, z), so every triple below is the upstream
one reversed: ``padding=(0, 1, 1)`` upstream is ``(1, 1, 0)`` here.

At inference (eval mode, no autograd) each conv -> BatchNorm -> ReLU run is folded into one conv
(``SparseSequential``) and a residual block folds both of its BatchNorms; bias, shortcut add and ReLU
run as the convolution's epilogue (inside the fused dataflows' loop, per tile; other dataflows apply it
as torch passes after), so with the fused dataflows a block costs two convolutions and no extra pass
over its features. ``fuse="epilogue"`` keeps the BatchNorms unfolded
(the conv's own weights, the normalisation in the epilogue); ``fuse=False`` on the sequentials and
blocks gives the layer-by-layer execution of the upstream code.

:func:`build_backbone` is the registry the LiDAR branch chooses from by name.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from .conv import SparseConv3d, SubMConv3d
from .dense import to_bev
from .geometry import Triple, triple
from .norm import FuseMode, SparseSequential, conv_bn
from .tensor import SparseTensor

PaddingSpec = Union[int, Sequence[int]]


def _bn(channels: int) -> nn.BatchNorm1d:
    # upstream: BN1d(eps=1e-3, momentum=0.01) in both projects
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


def _xyz(v: PaddingSpec) -> Triple:
    """An upstream (z, y, x) triple (or scalar) in our (x, y, z) order."""
    t = triple(tuple(v) if not isinstance(v, int) else v)
    return (t[2], t[1], t[0])


def conv_module(cin: int, cout: int, kernel: PaddingSpec, kind: str = "subm", stride: PaddingSpec = 1,
                padding: PaddingSpec = 0, indice_key: Optional[str] = None,
                dataflow: str = "auto") -> SparseSequential:
    """conv -> BN -> ReLU (mmdetection3d's ``make_sparse_convmodule``, OpenPCDet's ``post_act_block``).

    ``kernel``/``stride``/``padding`` are given in upstream (z, y, x) order. State-dict keys
    ``0.weight`` (conv), ``1.*`` (BatchNorm).
    """
    if kind == "subm":
        conv: nn.Module = SubMConv3d(cin, cout, _xyz(kernel), bias=False, indice_key=indice_key, dataflow=dataflow)
    elif kind == "spconv":
        conv = SparseConv3d(cin, cout, _xyz(kernel), stride=_xyz(stride), padding=_xyz(padding), bias=False,
                            indice_key=indice_key, dataflow=dataflow)
    else:
        raise ValueError(f"unknown conv kind {kind!r} (subm or spconv)")
    return SparseSequential(conv, _bn(cout), nn.ReLU(inplace=True))


class SparseBasicBlock(nn.Module):
    """Residual block of two 3^3 submanifold convs: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``.

    Keys ``conv1.weight``, ``bn1.*``, ``conv2.weight``, ``bn2.*`` as mmdetection3d's
    ``SparseBasicBlock`` (mmdet ``BasicBlock`` names) and OpenPCDet's. ``bias=True`` gives OpenPCDet's
    ``VoxelResBackBone8x`` variant (biased convs); mmdetection3d's are unbiased.
    """

    _sparse_module = True

    def __init__(self, inplanes: int, planes: int, bias: bool = False, indice_key: Optional[str] = None,
                 dataflow: str = "auto", fuse: FuseMode = True) -> None:
        super().__init__()
        if inplanes != planes:
            raise ValueError("SparseBasicBlock without a downsample branch needs inplanes == planes")
        self.conv1 = SubMConv3d(inplanes, planes, 3, bias=bias, indice_key=indice_key, dataflow=dataflow)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SubMConv3d(planes, planes, 3, bias=bias, indice_key=indice_key, dataflow=dataflow)
        self.bn2 = _bn(planes)
        self.fuse = fuse

    def _can_fuse(self) -> bool:
        from . import conv as conv_mod

        return (self.fuse and not self.training and not torch.is_grad_enabled()
                and conv_mod._export_mode() is None and self.bn1.track_running_stats and self.bn2.track_running_stats)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self._can_fuse():  # BN (folded or not), the residual add and both ReLUs inside the conv loops
            y = conv_bn(self.conv1, self.bn1, x, self.fuse, relu=True)
            return conv_bn(self.conv2, self.bn2, y, self.fuse, residual=x.feats, relu=True)
        y = self.conv1(x)
        y = y.replace(self.relu(self.bn1(y.feats)))
        z = self.conv2(y)
        return z.replace(self.relu(self.bn2(z.feats) + x.feats))


def _check_inside(x: SparseTensor) -> None:
    """Voxels outside the sparse shape would be dropped by the strided layers without a word."""
    if len(x) == 0 or x.spatial_shape is None:
        return
    ijk = x.coords[:, 1:]
    hi = torch.tensor(x.spatial_shape, dtype=ijk.dtype, device=ijk.device) * torch.tensor(x.stride, dtype=ijk.dtype,
                                                                                       device=ijk.device)
    bad = (ijk < 0).any(1) | (ijk >= hi).any(1)
    if bool(bad.any()):
        first = x.coords[bad][0].tolist()
        raise ValueError(f"{int(bad.sum())} voxel(s) outside the sparse shape (x, y, z) = {x.spatial_shape}, "
                         f"e.g. (b, x, y, z) = {first}; check the point range / voxel size")


class SparseEncoder(nn.Module):
    """mmdetection3d's ``SparseEncoder``; defaults = CenterPoint VoxelNet (nuScenes, 0.1 m).

    ``sparse_shape`` is upstream's ``[D, H, W]`` = (z, y, x) cells; ``encoder_paddings`` entries are
    upstream (z, y, x) paddings. ``forward`` returns the BEV map ``[B, output_channels * D_out, H_out,
    W_out]`` (mmdetection3d's ``dense().view(N, C * D, H, W)``); :meth:`forward_sparse` returns the
    sparse output of ``conv_out`` (and the stage outputs with ``return_middle_feats``).
    """

    def __init__(
        self,
        in_channels: int = 5,
        sparse_shape: Sequence[int] = (41, 1024, 1024),
        base_channels: int = 16,
        output_channels: int = 128,
        encoder_channels: Sequence[Sequence[int]] = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        encoder_paddings: Sequence[Sequence[PaddingSpec]] = ((0, 0, 1), (0, 0, 1), (0, 0, (0, 1, 1)), (0, 0)),
        block_type: str = "basicblock",
        return_middle_feats: bool = False,
        dataflow: str = "auto",
    ) -> None:
        super().__init__()
        if block_type not in ("conv_module", "basicblock"):
            raise ValueError(f"block_type must be 'conv_module' or 'basicblock', got {block_type!r}")
        if len(sparse_shape) != 3:
            raise ValueError("sparse_shape is [D, H, W] (z, y, x cells)")
        self.sparse_shape = tuple(int(v) for v in sparse_shape)
        self.in_channels = in_channels
        self.block_type = block_type
        self.return_middle_feats = return_middle_feats
        d = dataflow
        self.conv_input = conv_module(in_channels, base_channels, 3, "subm", indice_key="subm1", dataflow=d)
        self.encoder_layers = SparseSequential()
        cin = base_channels
        n_stages = len(encoder_channels)
        for i, blocks in enumerate(encoder_channels):
            layers: list[nn.Module] = []
            for j, cout in enumerate(tuple(blocks)):
                pad = tuple(encoder_paddings[i])[j]
                if block_type == "conv_module" and i != 0 and j == 0:
                    layers.append(conv_module(cin, cout, 3, "spconv", 2, pad, f"spconv{i + 1}", d))
                elif block_type == "basicblock":
                    if j == len(blocks) - 1 and i != n_stages - 1:
                        layers.append(conv_module(cin, cout, 3, "spconv", 2, pad, f"spconv{i + 1}", d))
                    else:
                        # upstream builds SparseBasicBlock(out, out): the stage input must already have `out`
                        layers.append(SparseBasicBlock(cout, cout, dataflow=d))
                else:
                    layers.append(conv_module(cin, cout, 3, "subm", padding=pad, indice_key=f"subm{i + 1}", dataflow=d))
                cin = cout
            self.encoder_layers.add_module(f"encoder_layer{i + 1}", SparseSequential(*layers))
        self.conv_out = conv_module(cin, output_channels, (3, 1, 1), "spconv", (2, 1, 1), 0, "spconv_down2", d)

    @property
    def spatial_shape_xyz(self) -> Triple:
        D, H, W = self.sparse_shape
        return (W, H, D)

    def sparse_input(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int) -> SparseTensor:
        """Upstream inputs (coors ``[N, 4]`` = (b, z, y, x), any order) as our tensor."""
        c = coors.int()[:, [0, 3, 2, 1]].contiguous()
        return SparseTensor(voxel_features, c, 1, self.spatial_shape_xyz, batch_size)

    def forward_sparse(self, x: SparseTensor) -> Union[SparseTensor, tuple[SparseTensor, list[SparseTensor]]]:
        if x.spatial_shape is None:
            x = SparseTensor(x.feats, x.coords, x.stride, self.spatial_shape_xyz, x.batch_size, x.cache)
        if x.feats.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} voxel feature channels, got {x.feats.shape[1]}")
        _check_inside(x)
        x = self.conv_input(x)
        middle = []
        for stage in self.encoder_layers:
            x = stage(x)
            middle.append(x)
        out = self.conv_out(x)
        return (out, middle) if self.return_middle_feats else out

    def forward(self, x: Union[SparseTensor, torch.Tensor], coors: Optional[torch.Tensor] = None,
                batch_size: Optional[int] = None) -> Any:
        """``forward(sparse_tensor)`` or upstream's ``forward(voxel_features, coors, batch_size)``."""
        if not isinstance(x, SparseTensor):
            if coors is None or batch_size is None:
                raise TypeError("forward(voxel_features, coors, batch_size) needs coors and batch_size")
            x = self.sparse_input(x, coors, batch_size)
        res = self.forward_sparse(x)
        out, middle = res if isinstance(res, tuple) else (res, None)
        bev = to_bev(out, batch_size=x.infer_batch_size())
        return (bev, middle) if self.return_middle_feats else bev


class VoxelBackBone8x(nn.Module):
    """OpenPCDet's ``VoxelBackBone8x`` (SECOND): 16 -> 64 channels, three stride-2 stages, 128-ch output.

    ``forward`` returns the sparse output at stride (8, 8, 16) (OpenPCDet's
    ``encoded_spconv_tensor``); :func:`engines.sparse.dense.to_bev` is its ``HeightCompression``.
    ``last_pad`` is the model config's ``LAST_PAD`` (upstream (z, y, x) padding of ``conv_out``).
    """

    def __init__(self, in_channels: int = 4, dataflow: str = "auto", last_pad: PaddingSpec = 0) -> None:
        super().__init__()
        d = dataflow
        self.conv_input = conv_module(in_channels, 16, 3, "subm", indice_key="subm1", dataflow=d)
        self.conv1 = SparseSequential(conv_module(16, 16, 3, "subm", indice_key="subm1", dataflow=d))
        self.conv2 = SparseSequential(
            conv_module(16, 32, 3, "spconv", 2, 1, "spconv2", d),
            conv_module(32, 32, 3, "subm", indice_key="subm2", dataflow=d),
            conv_module(32, 32, 3, "subm", indice_key="subm2", dataflow=d),
        )
        self.conv3 = SparseSequential(
            conv_module(32, 64, 3, "spconv", 2, 1, "spconv3", d),
            conv_module(64, 64, 3, "subm", indice_key="subm3", dataflow=d),
            conv_module(64, 64, 3, "subm", indice_key="subm3", dataflow=d),
        )
        self.conv4 = SparseSequential(
            conv_module(64, 64, 3, "spconv", 2, (0, 1, 1), "spconv4", d),
            conv_module(64, 64, 3, "subm", indice_key="subm4", dataflow=d),
            conv_module(64, 64, 3, "subm", indice_key="subm4", dataflow=d),
        )
        self.conv_out = conv_module(64, 128, (3, 1, 1), "spconv", (2, 1, 1), last_pad, "spconv_down2", d)

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = self.conv_input(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.conv4(x)
        return self.conv_out(x)


# earlier name of the same network (kept for callers of the previous release)
VoxelBackbone8x = VoxelBackBone8x


def set_fuse(model: nn.Module, fuse: FuseMode) -> nn.Module:
    """Inference fusion of conv -> BN (-> residual) (-> ReLU) in every sub-module: ``True`` folds the BN
    into the weights, ``"epilogue"`` keeps it unfolded and applies it inside the conv loop, ``False``
    runs each layer as its own pass (see :mod:`engines.sparse.epilogue`)."""
    if fuse not in (True, False, "epilogue"):
        raise ValueError(f"fuse must be True, False or 'epilogue', got {fuse!r}")
    for m in model.modules():
        if isinstance(m, (SparseSequential, SparseBasicBlock)):
            m.fuse = fuse
    return model


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "centerpoint_sparse_encoder": SparseEncoder,
    "second_voxel_backbone_8x": VoxelBackBone8x,
}


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """The LiDAR branch's backbone by name (keys of :data:`BACKBONES`), upstream keyword arguments."""
    try:
        cls = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown sparse backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
    return cls(**kwargs)
