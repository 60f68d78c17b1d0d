"""BEVFusion-style fuser: camera BEV + LiDAR BEV -> conv fuser -> the LiDAR branch's BEV net and heads.

Where the features meet: at the **input of the LiDAR branch's BEV net** (the height-collapsed sparse
backbone output, ``[B, C*Z, Y, X]`` on the backbone's BEV grid, 1 m cells with the packaged weights), as
BEVFusion does (its ConvFuser sits between the two encoders and the shared BEV decoder). Why there and
not after the BEV net: the BEV net's two 3x3 stages (and its half-resolution stage, twice the receptive
field) then mix the camera and LiDAR evidence spatially, which a camera BEV smeared along the viewing
rays by depth uncertainty needs, and camera-only operation gets the whole trunk instead of only the head
trunk. The price: the camera BEV (0.5 m) has to be resampled onto the coarser LiDAR BEV grid
(:func:`area_resample`), and the fuser's input is ``C*Z`` (128) + camera (48) + 2 channels wide.

Fuser: ``[lidar BEV, camera BEV resampled, presence flags] -> Conv(k x k) -> BatchNorm -> ReLU`` with the
LiDAR BEV's channel count out, then the LiDAR network's :meth:`~LidarDetectionNet.bev_net` and
:meth:`~LidarDetectionNet.heads` unchanged. Kernel: ``BevFusionConfig.kernel`` (default 1 x 1, the cheap
one: at 80 x 80 cells a 3 x 3 fuser costs ~1.3 GMAC, five times the BEV net's first convolution); the
training config and the packaged weights use BEVFusion's 3 x 3, which scored better on held-out scenes
(README, "BEVFusion-style fuser") at about +30 ms per frame on one CPU thread.

Missing or stale inputs: a modality that is absent is fed as zeros and its **presence flag** channel
(constant 1 over the grid when present, 0 when not; one channel per modality) is 0, so one set of weights
runs LiDAR + camera, LiDAR only or camera only; the caller decides what "stale" means (the node's
per-input timeout) and passes ``None`` for it. The heads blank their output for frames without LiDAR
voxels (``num_voxels == 0``); here a frame counts as having input when either modality is present (the output's
``num_voxels`` is the voxel count, at least 1 for a frame with camera input;
:attr:`BevFusionOutput.lidar_present` / ``camera_present`` say which input each frame had).

Initialisation (:meth:`BevFusionNet.init_identity`): the fuser's convolution is the identity on the LiDAR
channels and zero on the camera and flag channels, its BatchNorm the identity in eval mode (running mean 0,
variance 1, weight ``sqrt(1 + eps)``, bias 0), and the LiDAR BEV is non-negative (the backbone ends in a
ReLU), so with the packaged LiDAR weights the fused network's LiDAR-only output equals the LiDAR branch's
to float32 rounding. Fine-tuning keeps every BatchNorm in eval mode (``freeze_batchnorm``): a batch of two
scenes gives poor batch statistics, and in training mode the fuser's BatchNorm would renormalise the LiDAR
features away from what the pretrained BEV net expects, so the start would not be the LiDAR branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.models.bev_grid import BevGrid
from perception_nodes.models.camera_bev import CameraBevConfig, CameraBevNet
from perception_nodes.models.folding import FoldCache, fold_conv_bn, inference_fast_path
from perception_nodes.models.lidar_detection import LidarDetectionConfig, LidarDetectionNet, LidarDetectionOutput

__all__ = ["BevFusionConfig", "BevFusionNet", "BevFusionOutput", "NETWORK", "area_resample", "area_weights",
           "build_bev_fusion", "from_packaged", "load_bev_fusion"]

#: network name in weights sidecars (``perception_nodes/models/weights/bev_fusion/``)
NETWORK = "bev_fusion"


@dataclass(frozen=True)
class BevFusionConfig:
    """The fuser's own configuration plus the two encoders' (as their config mappings)."""

    #: fuser convolution kernel (odd): 1 (default, see the module docstring) or 3 (BEVFusion's)
    kernel: int = 1
    #: keep every BatchNorm in eval mode while training (fine-tuning from packaged weights)
    freeze_batchnorm: bool = True
    #: :class:`LidarDetectionConfig` and :class:`CameraBevConfig` mappings (empty = their defaults)
    lidar: Mapping[str, Any] = field(default_factory=dict)
    camera: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError("bev_fusion.model.kernel must be a positive odd number")

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]] = None) -> "BevFusionConfig":
        return to_dataclass(cls, dict(values or {}), "bev_fusion.model: ")


def area_weights(src_origin: float, src_cell: float, src_n: int, dst_origin: float, dst_cell: float,
                 dst_n: int) -> Tensor:
    """``[dst_n, src_n]`` float64: the length of overlap of destination cell ``i`` with source cell ``j``
    along one axis, divided by the destination cell size.

    Applied on both axes this is area-weighted averaging (box filter): a destination cell gets the mean of
    the source values over its area, where the part of it outside the source grid counts as zero (no
    features there, as for a camera that does not see it). Equal grids give the identity; a 2:1 ratio the
    2 x 2 mean; a coarser source gives each destination cell the source cell it lies in.
    """
    s_lo = src_origin + src_cell * np.arange(src_n, dtype=np.float64)
    d_lo = dst_origin + dst_cell * np.arange(dst_n, dtype=np.float64)
    lo = np.maximum(d_lo[:, None], s_lo[None, :])
    hi = np.minimum(d_lo[:, None] + dst_cell, s_lo[None, :] + src_cell)
    return torch.from_numpy(np.clip(hi - lo, 0.0, None) / dst_cell)


def area_resample(features: Tensor, src: BevGrid, dst: BevGrid) -> Tensor:
    """``[B, C, src.height, src.width]`` -> ``[B, C, dst.height, dst.width]`` by :func:`area_weights` on
    y (rows) and x (columns). Differentiable; returns the input itself when the grids are equal."""
    if src == dst:
        return features
    wy = area_weights(src.origin_y, src.cell, src.height, dst.origin_y, dst.cell, dst.height).to(features)
    wx = area_weights(src.origin_x, src.cell, src.width, dst.origin_x, dst.cell, dst.width).to(features)
    return torch.matmul(torch.matmul(wy, features), wx.t())


@dataclass
class BevFusionOutput:
    """The LiDAR branch's output structure (decode it with its decoder) and what went in."""

    detection: LidarDetectionOutput
    #: ``[B]`` bool: which frames had each input
    lidar_present: Tensor
    camera_present: Tensor


class BevFusionNet(nn.Module):
    """LiDAR encoder + camera encoder + conv fuser + the LiDAR branch's BEV net and heads."""

    def __init__(self, lidar: LidarDetectionNet, camera: CameraBevNet,
                 config: BevFusionConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, BevFusionConfig) else BevFusionConfig.from_mapping(config)
        self.lidar, self.camera = lidar, camera
        lc = lidar.config
        if lc.context_margin_m:
            # the fuser's grid is the LiDAR backbone's BEV; with a margin it would be wider than the camera's
            raise ConfigError("bev_fusion: the LiDAR network's context_margin_m must be 0 (a fused context "
                              f"margin is not implemented), got {lc.context_margin_m:g}")
        X, Y, _ = lidar._bev_shape
        stride_cell = (lc.point_range[3] - lc.point_range[0]) / X
        #: the grid the fuser works on: the LiDAR backbone's BEV (the BEV net's input)
        self.grid = BevGrid(lc.point_range[0], lc.point_range[1], stride_cell, X, Y)
        self.camera_grid = camera.config.bev_grid
        self.lidar_channels = lidar.bev_in_channels
        self.camera_channels = camera.bev_channels
        cin = self.lidar_channels + self.camera_channels + 2
        self.fuser = nn.Sequential(
            nn.Conv2d(cin, self.lidar_channels, cfg.kernel, 1, cfg.kernel // 2, bias=False),
            nn.BatchNorm2d(self.lidar_channels, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))
        # the resampling as two fixed matrices (rows, columns); not part of the state dict
        self.register_buffer("_wy", area_weights(self.camera_grid.origin_y, self.camera_grid.cell, self.camera_grid.height,
                                                 self.grid.origin_y, self.grid.cell, self.grid.height).float(), persistent=False)
        self.register_buffer("_wx", area_weights(self.camera_grid.origin_x, self.camera_grid.cell, self.camera_grid.width,
                                                 self.grid.origin_x, self.grid.cell, self.grid.width).float(), persistent=False)
        self.fusion_config = BevFusionConfig(cfg.kernel, cfg.freeze_batchnorm, _plain_config(lidar.config),
                                             _plain_config(camera.config))
        self._folded = FoldCache(_fold_fuser)
        self.init_identity()

    def init_identity(self) -> None:
        """Fuser = identity on the LiDAR channels, zero on the camera and flag channels (eval mode)."""
        conv, bn = self.fuser[0], self.fuser[1]
        with torch.no_grad():
            conv.weight.zero_()
            k = conv.kernel_size[0] // 2
            idx = torch.arange(self.lidar_channels)
            conv.weight[idx, idx, k, k] = 1.0
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(math.sqrt(1.0 + bn.eps))
            bn.bias.zero_()

    def train(self, mode: bool = True) -> "BevFusionNet":
        super().train(mode)
        if mode and self.fusion_config.freeze_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ---- stages ------------------------------------------------------------------------------

    def camera_bev(self, images: Tensor, geometry: Any) -> Tensor:
        """Camera BEV features ``[B, C_cam, H, W]`` on the camera's grid (its stages up to the BEV net;
        its occupancy head is not run)."""
        cam = self.camera
        if images.dim() == 4:
            images = images.unsqueeze(1)
        B = images.shape[0]
        depth, context = cam.lift(cam.image_features(images.flatten(0, 1)))
        return cam.bev_net(cam.pool(depth, context, geometry, B), cam.crop(geometry))

    def resample_camera(self, camera_bev: Tensor) -> Tensor:
        """Camera BEV features onto the fuser's grid (:func:`area_resample` with cached weights)."""
        if self.camera_grid == self.grid:
            return camera_bev
        return torch.matmul(torch.matmul(self._wy, camera_bev), self._wx.t())

    def fuse(self, lidar_bev: Optional[Tensor], camera_bev: Optional[Tensor], batch: int,
             lidar_present: Optional[Tensor] = None, camera_present: Optional[Tensor] = None) -> Tensor:
        """Fuser output ``[B, C_lidar, Y, X]`` (the BEV net's input). ``None`` = that input is missing for
        every frame; ``*_present`` (``[B]`` bool, default: all where the input is given) drops it for some
        frames (zeros and flag 0: modality dropout in training). ``camera_bev`` is on the camera's grid."""
        Y, X = self.grid.height, self.grid.width
        ref = lidar_bev if lidar_bev is not None else camera_bev
        if ref is None:
            raise ValueError("bev_fusion needs at least one of LiDAR and camera input")
        dev, dt = ref.device, ref.dtype
        lp = self._presence(lidar_present, lidar_bev is not None, batch, dev)
        cp = self._presence(camera_present, camera_bev is not None, batch, dev)
        lid = lidar_bev
        cam = self.resample_camera(camera_bev) if camera_bev is not None else None
        if lid is not None and not bool(lp.all()):
            lid = lid * lp.to(dt).view(-1, 1, 1, 1)
        if cam is not None and not bool(cp.all()):
            cam = cam * cp.to(dt).view(-1, 1, 1, 1)
        if inference_fast_path(self):
            return self._fuse_inference(lp, cp, lid, cam)
        lid = lid.contiguous() if lid is not None else torch.zeros(batch, self.lidar_channels, Y, X, device=dev, dtype=dt)
        cam = cam.contiguous() if cam is not None else torch.zeros(batch, self.camera_channels, Y, X, device=dev, dtype=dt)
        flags = torch.stack([lp, cp], 1).to(dt).view(batch, 2, 1, 1).expand(batch, 2, Y, X)
        return self.fuser(torch.cat([lid, cam, flags], 1))

    def _fuse_inference(self, lp: Tensor, cp: Tensor, lid: Optional[Tensor], cam: Optional[Tensor]) -> Tensor:
        """:meth:`fuse` for inference: BatchNorm folded, the input split by modality (an absent modality's
        weights are skipped instead of multiplied by zeros) and the flag channels added as a per-frame
        bias (1 x 1) or, for a k x k fuser, as the folded flag weights applied to a ones map (the zero
        padding makes them vary at the border); no concatenated input. Same values to float32 rounding."""
        f = self._folded.get(self.fuser)
        pad = self.fuser[0].padding
        flags = torch.stack([lp, cp], 1).to(f["b"].dtype)  # [B, 2]
        y = None
        if lid is not None:
            y = F.conv2d(lid.contiguous(memory_format=torch.channels_last), f["w_lidar"], None, 1, pad)
        if cam is not None:
            c = F.conv2d(cam.contiguous(memory_format=torch.channels_last), f["w_camera"], None, 1, pad)
            y = c if y is None else y.add_(c)
        assert y is not None
        wf = f["w_flags"]  # [C, 2, k, k]
        if wf.shape[-1] == 1:
            bias = f["b"].view(1, -1) + flags @ wf[:, :, 0, 0].t()  # [B, C]
            return y.add_(bias.view(*bias.shape, 1, 1)).relu_()
        ones = y.new_ones((1, 1, y.shape[-2], y.shape[-1]))
        per_flag = torch.cat([F.conv2d(ones, wf[:, j:j + 1], None, 1, pad) for j in range(2)])  # [2, C, H, W]
        flag_maps = torch.einsum("bj,jchw->bchw", flags, per_flag)
        return y.add_(flag_maps).add_(f["b"].view(1, -1, 1, 1)).relu_()

    @staticmethod
    def _presence(mask: Optional[Tensor], given: bool, batch: int, device: Any) -> Tensor:
        if mask is None:
            return torch.full((batch,), given, dtype=torch.bool, device=device)
        mask = mask.to(device=device, dtype=torch.bool).reshape(-1)
        if mask.numel() != batch:
            raise ValueError(f"presence mask of {mask.numel()} frames for a batch of {batch}")
        if bool(mask.any()) and not given:
            raise ValueError("a presence mask marks frames present for an input that was not given")
        return mask

    def forward(self, points: Optional[Any] = None, images: Optional[Tensor] = None, geometry: Any = None, *,
                lidar_present: Optional[Tensor] = None, camera_present: Optional[Tensor] = None) -> BevFusionOutput:
        """``points``: one scan or a list (as :class:`LidarDetectionNet`), ``None`` when LiDAR is missing;
        ``images`` ``[B, (N,) 3, H, W]`` with their pooling ``geometry``, ``None`` when the camera is missing;
        ``*_present``: optional ``[B]`` bool masks that drop an input for some frames (see :meth:`fuse`)."""
        if points is None and images is None:
            raise ValueError("bev_fusion needs at least one of LiDAR points and camera images")
        lidar_bev = camera_bev = None
        sizes = []
        if points is not None:
            st, counts = self.lidar.voxelize(points)
            lidar_bev = self.lidar.backbone_bev(st)
            sizes.append(lidar_bev.shape[0])
        if images is not None:
            if geometry is None:
                raise ValueError("camera images need their pooling geometry")
            camera_bev = self.camera_bev(images, geometry)
            sizes.append(camera_bev.shape[0])
        if len(set(sizes)) != 1:
            raise ValueError(f"LiDAR and camera inputs hold different numbers of frames: {sizes}")
        bsz = sizes[0]
        dev = (lidar_bev if lidar_bev is not None else camera_bev).device
        lp = self._presence(lidar_present, points is not None, bsz, dev)
        cp = self._presence(camera_present, images is not None, bsz, dev)
        counts = torch.where(lp.cpu(), counts, 0) if points is not None else torch.zeros(bsz, dtype=torch.int64)
        fused = self.fuse(lidar_bev, camera_bev, bsz, lp, cp)
        # the heads blank frames with num_voxels == 0: a camera-only frame has input too
        has_input = torch.where(cp.cpu(), torch.clamp_min(counts, 1), counts)
        out = self.lidar.heads(self.lidar.bev_net(fused), has_input)
        return BevFusionOutput(out, lp, cp)


def _fold_fuser(fuser: nn.Sequential) -> dict[str, Tensor]:
    """Folded fuser weights split by input block (LiDAR, camera, flags), for :meth:`BevFusionNet._fuse_inference`."""
    w, b = fold_conv_bn(fuser[0], fuser[1])
    cin = w.shape[1]
    cl = w.shape[0]  # the fuser outputs the LiDAR channel count
    return {"w_lidar": w[:, :cl].contiguous(), "w_camera": w[:, cl:cin - 2].contiguous(),
            "w_flags": w[:, cin - 2:].contiguous(), "b": b.contiguous()}


def _plain_config(cfg: Any) -> dict[str, Any]:
    import dataclasses

    def plain(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def build_bev_fusion(config: BevFusionConfig | Mapping[str, Any] | None = None) -> BevFusionNet:
    """A fused network from a config (randomly initialised encoders, identity fuser)."""
    cfg = config if isinstance(config, BevFusionConfig) else BevFusionConfig.from_mapping(config)
    return BevFusionNet(LidarDetectionNet(LidarDetectionConfig.from_mapping(cfg.lidar)),
                        CameraBevNet(CameraBevConfig.from_mapping(cfg.camera)), cfg)


def from_packaged(lidar_folder: Any = None, camera_folder: Any = None, *, kernel: int = 1,
                  freeze_batchnorm: bool = True, lidar_overrides: Optional[Mapping[str, Any]] = None) -> BevFusionNet:
    """The packaged (or given) LiDAR and camera weights under an identity-initialised fuser, eval mode
    (``lidar_overrides``: shape-neutral LiDAR config keys, as :func:`load_lidar_detection` takes). The LiDAR
    network is read without its context margin (the fuser works on one BEV grid with the camera's; a margin
    adds no tensor, so the same weights load), whatever the LiDAR sidecar says."""
    from perception_nodes.models.camera_bev import load_camera_bev
    from perception_nodes.models.weights_io import load_lidar_detection

    lidar, _ = load_lidar_detection(lidar_folder, overrides={**dict(lidar_overrides or {}), "context_margin_m": 0.0})
    camera, _ = load_camera_bev(camera_folder)
    return BevFusionNet(lidar, camera, BevFusionConfig(kernel=kernel, freeze_batchnorm=freeze_batchnorm)).eval()


def load_bev_fusion(folder: Any = None) -> tuple[BevFusionNet, dict[str, Any]]:
    """Rebuild the fused network from a weights folder (default: the packaged one), in eval mode."""
    from pathlib import Path

    from perception_nodes.models.weights_io import WeightsError, default_weights_dir, load_state, read_sidecar

    folder = Path(folder) if folder is not None else default_weights_dir(NETWORK)
    side = read_sidecar(folder, NETWORK)
    try:
        net = build_bev_fusion(side.get("config") or {})
    except ConfigError as exc:
        raise WeightsError(f"{folder}: sidecar config does not build the network: {exc}") from exc
    state = load_state(folder)
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"{folder}: weights do not match the network (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise WeightsError(f"{folder}: tensor {k} has shape {tuple(v.shape)}, network wants {tuple(own[k].shape)}")
    net.load_state_dict(state, strict=True)
    return net.eval(), side
