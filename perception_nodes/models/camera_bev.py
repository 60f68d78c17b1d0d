"""The camera branch network: image -> depth distribution + context -> BEV pooling -> BEV net -> evidence.

Lift-Splat-Shoot (Philion & Fidler 2020) in the light form a 2-core CPU can run, with BEVFusion's pooling
(``engines/bev_pool.py``). Stages (each a method, so a node can time them separately):

1. :meth:`CameraBevNet.image_features` -- a small strided CNN: a patchify stem (a ``stem_patch`` x
   ``stem_patch`` convolution of that stride, as ConvNeXt's; 2 = a 3x3 stride-2 convolution), then a 3x3
   stride-2 convolution per further stage, each stage followed by ``blocks`` residual basic blocks,
   down to the feature stride (8 by default: a 4x4 stem and one stage);
2. :meth:`~CameraBevNet.lift` -- one 1x1 head giving per feature pixel a categorical depth distribution
   over the configured bins (softmax of ``D`` logits) and ``context_channels`` non-negative context
   features (ReLU);
3. :meth:`~CameraBevNet.pool` -- BEV pooling with the geometry precomputed per calibration
   (:class:`engines.bev_pool.GeometryCache` keyed on intrinsics, extrinsics, image size, stride, bins
   and grid): the fused kernel at inference, the differentiable gather form when gradients are needed;
4. :meth:`~CameraBevNet.bev_net` -- a two-scale BEV CNN (full and half resolution, concatenated, as the
   LiDAR branch's); its output is the camera BEV feature map a BEVFusion-style fuser concatenates with
   the LiDAR one (:attr:`CameraBevOutput.bev_features`, same grid as the LiDAR branch's head grid by
   default: 80 m x 80 m at 0.5 m);
5. :meth:`~CameraBevNet.heads` -- evidential occupancy: Beta evidence (occupied r, free s) = softplus of
   two logits per cell, resampled to the occupancy node's grid (0.25 m) as the LiDAR branch does.
   Cells no frustum point reaches (behind and beside the camera) get zero evidence: vacuous, so fusion
   leaves them to the other sensors.

Why a 0.5 m camera BEV and not the occupancy node's 0.25 m: depth from one image is uncertain by more than
a metre at 20 m (BEVFusion pools cameras at 0.3-0.6 m), the 0.5 m grid is the LiDAR branch's head grid
(so the fuser concatenates without resampling), and 4x fewer cells keep the BEV CNN inside the CPU budget;
the evidence is upsampled to 0.25 m only at the output.

Conventions: images ``[B, 3, H, W]`` (one camera) or ``[B, N, 3, H, W]`` (N cameras of one size), RGB,
float 0..1 or uint8 0..255; geometry from :meth:`CameraBevNet.camera_geometry` (K of the image fed in,
base_link <- optical transform). Formulas of the evidence: field notes section 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.bev_pool import (
    CameraGeometry,
    DepthBins,
    GeometryCache,
    PoolGeometry,
    PoolGrid,
    bev_pool,
    bev_pool_gather,
    bev_pool_torch,
)
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.models.bev_grid import BevGrid
from perception_nodes.models.bev_net import BevNet, conv_bn
from perception_nodes.models.folding import fold_sequential_batchnorm

__all__ = ["CameraBevConfig", "CameraBevNet", "CameraBevOutput", "export_onnx", "kitti_camera_geometry", "load_camera_bev",
           "onnx_feeds"]

#: network name in weights sidecars (``perception_nodes/models/weights/camera_bev/``)
NETWORK = "camera_bev"


@dataclass(frozen=True)
class CameraBevConfig:
    """Network configuration (a ``camera_bev.model`` section of the params file, as plain data)."""

    # Defaults: sized for p50 <= 150 ms on a 376 x 1241 image at one thread of this 2-core CPU
    # (benchmarks/camera_bev.py); BEVFusion's depth bins; the LiDAR branch's 80 m square and z range.
    #: stride of the stem (a patchify k x k / stride k convolution; 2 = a 3x3 stride-2 convolution). A 4x4
    #: stem skips the full-resolution half-stride activation map, the largest memory pass of the network
    stem_patch: int = 4
    #: channels of the stem and of each further stride-2 stage (stride = stem_patch * 2 ** (len - 1))
    image_channels: tuple[int, ...] = (16, 32)
    #: residual basic blocks after the stem and after each stage's strided convolution
    image_blocks: tuple[int, ...] = (0, 1)
    #: context feature channels per pixel (LSS's C; BEVFusion uses 80)
    context_channels: int = 32
    #: depth bins (m): start, stop, step (BEVFusion: 1, 60, 0.5 = 118 bins)
    depth_bins: tuple[float, float, float] = (1.0, 60.0, 0.5)
    #: BEV grid pooled into (base_link): x_min, y_min (m), cell (m), width, height (cells)
    bev_origin: tuple[float, float] = (-40.0, -40.0)
    bev_cell: float = 0.5
    bev_size: tuple[int, int] = (160, 160)
    #: height slab (m, base_link) a frustum point must lie in to be pooled (the LiDAR branch's z range)
    z_range: tuple[float, float] = (-1.0, 3.0)
    #: BEV CNN: channels of its full- and half-resolution stages, convolutions per stage
    bev_channels: tuple[int, int] = (24, 48)
    bev_layers: tuple[int, int] = (0, 1)
    #: occupancy output grid resolution (m): the occupancy node's; same extent as the BEV grid
    occupancy_resolution: float = 0.25
    #: initial bias of the two occupancy-evidence logits (softplus(-2) = 0.13: little evidence at start)
    occupancy_bias: float = -2.0
    #: BatchNorm running-statistics momentum of every BatchNorm of the network. The LiDAR trunk's 0.01
    #: needs ~500 steps before the eval-mode statistics match the training ones; the camera branch trains
    #: for a few hundred steps, and with 0.01 its eval output was that of a barely trained network
    bn_momentum: float = 0.1
    #: image normalisation (per RGB channel, on 0..1 values)
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if not self.image_channels or len(self.image_blocks) != len(self.image_channels):
            raise ConfigError("image_channels and image_blocks need one entry per stage (the stem first)")
        if self.stem_patch < 2:
            raise ConfigError("stem_patch must be >= 2")
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ConfigError("bn_momentum must be in (0, 1]")
        if min(self.image_channels) < 1 or min(self.image_blocks) < 0 or self.context_channels < 1:
            raise ConfigError("image channels and context_channels must be positive, blocks >= 0")
        try:
            DepthBins(*self.depth_bins)
            self.pool_grid
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"camera_bev.model: {exc}") from exc
        if len(self.bev_channels) != 2 or len(self.bev_layers) != 2 or min(self.bev_channels) < 1:
            raise ConfigError("bev_channels and bev_layers need two entries (full and half resolution)")
        for size in self.bev_size:
            cells = size * self.bev_cell / self.occupancy_resolution
            if self.occupancy_resolution <= 0 or abs(cells - round(cells)) > 1e-6:
                raise ConfigError("occupancy_resolution must divide the BEV grid's extent")

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]] = None) -> "CameraBevConfig":
        """From a params-file section; unknown keys raise :class:`ConfigError`."""
        return to_dataclass(cls, dict(values or {}), "camera_bev.model: ")

    @property
    def stride(self) -> int:
        return self.stem_patch * 2 ** (len(self.image_channels) - 1)

    @property
    def bins(self) -> DepthBins:
        return DepthBins(*self.depth_bins)

    @property
    def pool_grid(self) -> PoolGrid:
        return PoolGrid(self.bev_origin[0], self.bev_origin[1], self.bev_cell, self.bev_size[0], self.bev_size[1],
                        self.z_range[0], self.z_range[1])

    @property
    def bev_grid(self) -> BevGrid:
        return BevGrid(self.bev_origin[0], self.bev_origin[1], self.bev_cell, self.bev_size[0], self.bev_size[1])

    @property
    def occupancy_grid(self) -> BevGrid:
        r = self.occupancy_resolution
        return BevGrid(self.bev_origin[0], self.bev_origin[1], r, int(round(self.bev_size[0] * self.bev_cell / r)),
                       int(round(self.bev_size[1] * self.bev_cell / r)))


@dataclass
class CameraBevOutput:
    """Raw maps of a batch of ``B`` frames."""

    #: ``[B, 2, H_occ, W_occ]`` Beta evidence (r occupied, s free) on :attr:`CameraBevConfig.occupancy_grid`
    occupancy_evidence: Tensor
    #: ``[B, C_bev, H, W]`` camera BEV features on :attr:`CameraBevConfig.bev_grid` (for a fuser)
    bev_features: Tensor
    #: ``[B * N, D, fH, fW]`` depth logits per camera image (depth supervision; softmax = distribution)
    depth_logits: Tensor
    #: ``[H_occ, W_occ]`` bool: cells some frustum point reaches (outside: evidence forced to zero)
    coverage: Tensor


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and the identity)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(c, c)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c, eps=1e-3, momentum=0.01))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class CameraBevNet(nn.Module):
    """Evidential Lift-Splat camera network (see the module docstring)."""

    def __init__(self, config: CameraBevConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, CameraBevConfig) else CameraBevConfig.from_mapping(config)
        self.config = cfg
        stages: list[nn.Module] = []
        cin = 3
        for i, (c, n) in enumerate(zip(cfg.image_channels, cfg.image_blocks)):
            if i == 0 and cfg.stem_patch > 2:
                down = nn.Sequential(nn.Conv2d(cin, c, cfg.stem_patch, cfg.stem_patch, 0, bias=False),
                                     nn.BatchNorm2d(c, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True))
            else:
                down = conv_bn(cin, c, 2)
            stages.append(nn.Sequential(down, *[_BasicBlock(c) for _ in range(n)]))
            cin = c
        self.image = nn.Sequential(*stages)
        self.num_bins = cfg.bins.count
        self.depth_context = nn.Conv2d(cin, self.num_bins + cfg.context_channels, 1)
        self.bev = BevNet(cfg.context_channels, cfg.bev_channels, cfg.bev_layers)
        # 1x1 layers: the 3x3 context comes from the BEV net (a 3x3 head trunk at 0.5 m cost as much as the net)
        self.occupancy_head = nn.Sequential(conv_bn(self.bev.out_channels, cfg.bev_channels[0], k=1),
                                            nn.Conv2d(cfg.bev_channels[0], 2, 1))
        nn.init.constant_(self.occupancy_head[-1].bias, cfg.occupancy_bias)
        for mod in self.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = cfg.bn_momentum
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
        self.geometries = GeometryCache(capacity=4)
        self._coverage: dict[str, Tensor] = {}

    @property
    def bev_channels(self) -> int:
        """Channels of :attr:`CameraBevOutput.bev_features` (what a fuser concatenates)."""
        return self.bev.out_channels

    # ---- geometry --------------------------------------------------------------------------------

    def camera_geometry(self, K: np.ndarray, base_from_camera: np.ndarray, image_size: tuple[int, int]) -> CameraGeometry:
        """A camera as this network's pooling needs it (its stride)."""
        return CameraGeometry.from_arrays(K, base_from_camera, image_size, self.config.stride)

    def geometry(self, cameras: Sequence[CameraGeometry] | CameraGeometry) -> PoolGeometry:
        """The pooling geometry of a rig, built on the first call per calibration and cached after."""
        return self.geometries.get(cameras, self.config.bins, self.config.pool_grid)

    def crop(self, geometry: PoolGeometry) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the BEV cells the BEV net runs on -- the bounding box of the cells some
        frustum point reaches, grown to even sizes (the half-resolution stage). A front camera covers
        about half of the 80 m square; outside the box the pooled features are zero and the evidence is
        vacuous anyway, so the BEV CNN skips it (the exposed feature map is zero there)."""
        cfg = self.config
        W, H = cfg.bev_size
        if len(geometry.row_cell) == 0:
            return 0, 0, 0, 0
        iy, ix = geometry.row_cell // W, geometry.row_cell % W
        box = []
        for lo, hi, n in ((int(iy.min()), int(iy.max()) + 1, H), (int(ix.min()), int(ix.max()) + 1, W)):
            if (hi - lo) % 2:
                hi, lo = (hi + 1, lo) if hi < n else (hi, lo - 1)
            box += [lo, hi]
        return box[0], box[1], box[2], box[3]

    def coverage(self, geometry: PoolGeometry) -> Tensor:
        """``[H_occ, W_occ]`` bool: occupancy cells inside a BEV cell that some frustum point reaches."""
        hit = self._coverage.get(geometry.key)
        if hit is not None:
            return hit
        if len(self._coverage) >= 8:
            self._coverage.clear()
        cfg = self.config
        m = torch.zeros(cfg.bev_size[1] * cfg.bev_size[0], dtype=torch.bool)
        m[torch.from_numpy(geometry.row_cell)] = True
        m = m.view(1, 1, cfg.bev_size[1], cfg.bev_size[0]).float()
        occ = cfg.occupancy_grid
        cov = F.interpolate(m, size=(occ.height, occ.width), mode="nearest")[0, 0] > 0
        self._coverage[geometry.key] = cov
        return cov

    # ---- stages ----------------------------------------------------------------------------------

    def normalise(self, images: Tensor) -> Tensor:
        """``[M, 3, H, W]`` RGB uint8 or float 0..1 -> normalised float32, channels-last."""
        x = images.contiguous(memory_format=torch.channels_last).float()
        scale = 1.0 / self.std / (255.0 if images.dtype == torch.uint8 else 1.0)
        return torch.addcmul(-self.mean / self.std, x, scale)

    def image_features(self, images: Tensor) -> Tensor:
        """Stride-``s`` image features. Run channels-last: oneDNN's 3-input-channel stem is ~8x faster
        on an NHWC image than on an NCHW one here (1.9 vs 15.7 ms at 376 x 1241). The image is padded
        (zeros after normalisation) to a multiple of the stem's patch, so the map is ``ceil(H / stride)``
        high as the pooling geometry expects."""
        x = self.normalise(images)
        p = self.config.stem_patch
        if p > 2 and (x.shape[-1] % p or x.shape[-2] % p):
            x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        return self.image(x)

    def fold_batchnorm(self) -> "CameraBevNet":
        """Inference copy-free speed-up: fold every eval BatchNorm into the convolution before it.

        Only for a network in eval mode that will not train again (the folded convolutions carry the
        BatchNorm's running statistics; the BatchNorms become identities). Outputs are unchanged up to
        float rounding. Transposed convolutions keep their BatchNorm.
        """
        fold_sequential_batchnorm(self)
        return self

    def lift(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """Depth logits ``[M, D, fH, fW]`` and context features ``[M, C, fH, fW]`` (ReLU, non-negative)."""
        y = self.depth_context(feats)
        return y[:, : self.num_bins], F.relu(y[:, self.num_bins:])

    def pool(self, depth_logits: Tensor, context: Tensor, geometry: PoolGeometry, batch: int) -> Tensor:
        """``[B, C, H, W]`` pooled BEV context; the fused kernel unless gradients are needed."""
        probs = depth_logits.softmax(1)
        n = depth_logits.shape[0] // batch
        fused = not (torch.is_grad_enabled() and (probs.requires_grad or context.requires_grad)) and probs.device.type == "cpu"
        pool = bev_pool if fused else bev_pool_torch
        out = [pool(probs[b * n:(b + 1) * n], context[b * n:(b + 1) * n], geometry) for b in range(batch)]
        return torch.stack(out)

    def bev_net(self, bev: Tensor, crop: Optional[tuple[int, int, int, int]] = None) -> Tensor:
        """The BEV CNN on the ``crop`` box of the pooled grid (whole grid if None); zero outside it."""
        if crop is None:
            return self.bev(bev)
        y0, y1, x0, x1 = crop
        H, W = bev.shape[-2:]
        if y1 <= y0 or x1 <= x0:
            return bev.new_zeros(bev.shape[0], self.bev.out_channels, H, W)
        return F.pad(self.bev(bev[:, :, y0:y1, x0:x1]), (x0, W - x1, y0, H - y1))  # zero padding: ONNX Pad

    def heads(self, bev_features: Tensor, coverage: Tensor, crop: Optional[tuple[int, int, int, int]] = None) -> Tensor:
        """Beta evidence ``[B, 2, H_occ, W_occ]`` (softplus), zero outside the camera's coverage.

        With a ``crop`` box (BEV cells) the heads run on that box only and the evidence is zero elsewhere.
        """
        cfg = self.config
        occ = cfg.occupancy_grid
        B = bev_features.shape[0]
        up = occ.height / cfg.bev_size[1]
        y0, y1, x0, x1 = crop if crop is not None else (0, cfg.bev_size[1], 0, cfg.bev_size[0])
        if y1 <= y0 or x1 <= x0:
            return bev_features.new_zeros(B, 2, occ.height, occ.width)
        logits = self.occupancy_head(bev_features[:, :, y0:y1, x0:x1])
        oy0, oy1, ox0, ox1 = (int(round(v * up)) for v in (y0, y1, x0, x1))
        if up != 1:
            logits = F.interpolate(logits, size=(oy1 - oy0, ox1 - ox0), mode="bilinear", align_corners=False)
        ev = F.softplus(logits) * coverage[oy0:oy1, ox0:ox1].to(logits.device, logits.dtype)
        return F.pad(ev, (ox0, occ.width - ox1, oy0, occ.height - oy1))

    def forward(self, images: Tensor, geometry: PoolGeometry) -> CameraBevOutput:
        if images.dim() == 4:
            images = images.unsqueeze(1)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, 3, H, W] or [B, N, 3, H, W], got {tuple(images.shape)}")
        B, N = images.shape[:2]
        if N != len(geometry.cameras):
            raise ValueError(f"{N} images per frame but the geometry has {len(geometry.cameras)} cameras")
        for cam in geometry.cameras:
            if tuple(images.shape[-2:]) != cam.image_size or cam.stride != self.config.stride:
                raise ValueError(f"image {tuple(images.shape[-2:])} / stride {self.config.stride} do not match the "
                                 f"geometry's camera {cam.image_size} / {cam.stride}")
        if geometry.bins != self.config.bins or geometry.grid != self.config.pool_grid:
            raise ValueError("the geometry was built for other depth bins or another grid than this network's")
        depth, context = self.lift(self.image_features(images.flatten(0, 1)))
        crop = self.crop(geometry)
        bev = self.bev_net(self.pool(depth, context, geometry, B), crop)
        cov = self.coverage(geometry)
        return CameraBevOutput(self.heads(bev, cov, crop), bev, depth, cov)


def load_camera_bev(folder: Any = None) -> tuple["CameraBevNet", dict[str, Any]]:
    """Rebuild the network from a weights folder (default: the packaged one), in eval mode.

    Returns ``(net, sidecar)``; a missing, corrupt or mismatching folder is a
    :class:`~perception_nodes.models.weights_io.WeightsError` naming the problem.
    """
    from pathlib import Path

    from perception_nodes.models.weights_io import WeightsError, default_weights_dir, load_state, read_sidecar

    folder = Path(folder) if folder is not None else default_weights_dir(NETWORK)
    side = read_sidecar(folder, NETWORK)
    try:
        net = CameraBevNet(CameraBevConfig.from_mapping(side.get("config") or {}))
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


# --------------------------------------------------------------------------------------------------
# Calibration helpers
# --------------------------------------------------------------------------------------------------

#: base_link <- optical rotation of a camera looking along base_link +x (columns: optical x, y, z axes)
BASE_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def kitti_camera_geometry(calib: Any, base_from_velodyne: np.ndarray, image_size: tuple[int, int], stride: int,
                          camera: str = "P2") -> CameraGeometry:
    """Rectified KITTI camera ``camera`` (``P2`` = left colour) from a :class:`~perception_nodes.calibration.KittiCalib`.

    ``P = K [I | t]`` in rectified camera-0 coordinates, so a point of that camera is ``x_rect0 - t`` there;
    rect0 -> Velodyne is the inverse of ``R0_rect Tr_velo_to_cam``; Velodyne -> base_link from the rig.
    """
    P = np.asarray(calib.P[camera], np.float64)
    K = P[:, :3]
    rect_from_cam = np.eye(4)
    rect_from_cam[:3, 3] = -np.linalg.solve(K, P[:, 3])
    T = np.asarray(base_from_velodyne, np.float64) @ np.linalg.inv(calib.velo_to_rect) @ rect_from_cam
    return CameraGeometry.from_arrays(K, T, image_size, stride)


# --------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------

#: graph inputs of :func:`export_onnx`, in order (the index arrays: :meth:`engines.bev_pool.PoolGeometry.tensors`)
ONNX_INPUTS = ("images", "point_index", "pair_of_point", "pair_pixel", "pair_cell", "coverage")
ONNX_OUTPUTS = ("occupancy_evidence", "bev_features")
#: model-metadata key: the BEV crop box, camera count and image size the graph was traced with
ONNX_KEY = "perception_nodes.camera_bev_graph"


class _OnnxCameraBev(nn.Module):
    """One frame of N cameras, pooling in its Gather / ScatterElements / ScatterND form (indices as inputs)."""

    def __init__(self, net: CameraBevNet, crop: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.net, self.crop = net, crop

    def forward(self, images: Tensor, point_index: Tensor, pair_of_point: Tensor, pair_pixel: Tensor,
                pair_cell: Tensor, coverage: Tensor) -> tuple[Tensor, Tensor]:
        net, cfg = self.net, self.net.config
        depth, context = net.lift(net.image_features(images))
        probs = depth.softmax(1)
        depth_flat = probs.permute(1, 0, 2, 3).reshape(-1)  # bin-major, cameras' pixels concatenated
        feats_flat = context.permute(0, 2, 3, 1).reshape(-1, context.shape[1])
        W, H = cfg.bev_size
        pooled = bev_pool_gather(depth_flat, feats_flat, point_index, pair_of_point, pair_pixel, pair_cell, W * H)
        bev = net.bev_net(pooled.t().reshape(1, -1, H, W), self.crop)
        return net.heads(bev, coverage > 0.5, self.crop), bev


def onnx_feeds(net: CameraBevNet, images: Tensor, geometry: PoolGeometry) -> dict[str, np.ndarray]:
    """Graph inputs of one frame: ``images`` ``[N, 3, H, W]`` uint8 (or float 0..1) and the geometry."""
    feeds = {"images": (images.float() / 255.0 if images.dtype == torch.uint8 else images.float()).numpy()}
    feeds.update({k: getattr(geometry, k) for k in ONNX_INPUTS[1:5]})
    feeds["coverage"] = net.coverage(geometry).float().numpy()
    return feeds


def export_onnx(net: CameraBevNet, geometry: PoolGeometry, path: Optional[str] = None, opset: int = 17) -> bytes:
    """The whole network (eval mode) as one ONNX graph for the rig of ``geometry``; returns the model bytes.

    The pooling's index arrays and the coverage mask are graph inputs (dynamic point/pair counts), so a
    recalibrated rig needs only new feeds (:func:`onnx_feeds`) -- as long as its BEV crop box, camera
    count and image size stay those recorded in the metadata (``ONNX_KEY``); a runtime must compare them
    (a moved camera usually keeps the box; a new camera does not). Images enter as float 0..1.
    """
    import io
    import json
    import warnings

    if net.training:
        raise RuntimeError("export_onnx needs eval mode")
    crop = net.crop(geometry)
    n = len(geometry.cameras)
    h, w = geometry.cameras[0].image_size
    example = (torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0)),
               *(geometry.tensors()[k] for k in ONNX_INPUTS[1:5]), net.coverage(geometry).float())
    dyn = {"point_index": {0: "points"}, "pair_of_point": {0: "points"}, "pair_pixel": {0: "pairs"},
           "pair_cell": {0: "pairs"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(_OnnxCameraBev(net, crop).eval(), example, buf, input_names=list(ONNX_INPUTS),
                              output_names=list(ONNX_OUTPUTS), dynamic_axes=dyn, opset_version=opset, dynamo=False)
    import onnx

    model = onnx.load_from_string(buf.getvalue())
    entry = model.metadata_props.add()
    entry.key = ONNX_KEY
    entry.value = json.dumps({"crop": list(crop), "cameras": n, "image_size": [h, w],
                              "config": json.loads(json.dumps(net.config.__dict__, default=list))}, sort_keys=True)
    data = model.SerializeToString()
    if path is not None:
        with open(path, "wb") as fh:
            fh.write(data)
    return data
