"""The LiDAR branch network: voxels -> sparse 3D backbone -> BEV -> light 2D net -> evidential heads.

Stages (each a method, so a node can time them separately):

1. :meth:`LidarDetectionNet.voxelize` -- drop non-finite points, crop to ``point_range`` (base_link),
   dynamic voxels (every point counts, no per-voxel cap) with the mean of (x, y, z, intensity) as features
   (``engines.sparse.voxelize_mean``).
2. :meth:`~LidarDetectionNet.backbone_bev` -- a sparse 3D backbone from ``engines/sparse`` (chosen by name
   in the config, see :data:`BACKBONES`, or passed in) and the height collapse to BEV channels
   (``engines.sparse.to_bev``, OpenPCDet's HeightCompression layout).
3. :meth:`~LidarDetectionNet.bev_net` -- two 2D stages (the second at half resolution), the second
   upsampled and concatenated with the first, as CenterPoint's RPN/SECONDFPN, then optionally upsampled
   by ``head_upsample`` to the head grid.
4. :meth:`~LidarDetectionNet.heads` -- evidential heads on the head grid:

   * occupancy: Beta evidence (occupied r, free s) per cell, resampled to the occupancy node's grid;
   * classes: Dirichlet over (``classes`` + background) per cell -- the CenterPoint heatmap, made
     evidential (score = expected probability, vacuity = how unsure);
   * boxes: a Normal-Inverse-Gamma per regression target (:data:`~perception_nodes.models.decode.REGRESSION_NAMES`);
   * curvature: NIG of the lane-centre curvature at ``curvature_horizons_m`` metres ahead, from the
     globally pooled BEV features.

A scan with no usable point (inside ``point_range`` plus the context margin) yields vacuous class and
occupancy evidence and ``num_voxels == 0``, which :func:`perception_nodes.models.decode.decode` turns into an
empty detection list. A scan whose points all lie in the margin is not empty: the network reads them and
says what it makes of an empty crop beside them (as for a scan whose crop holds only far returns). Formulas: field notes
section 4-5; heads and decoding: :mod:`perception_nodes.models.decode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.sparse import SparseTensor, to_bev, voxelize_mean
from engines.sparse.backbones import VoxelBackbone8x
from engines.sparse.lite_backbones import LiteSparseBackbone
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.evidential.dirichlet import alpha_from_logits
from perception_nodes.evidential.nig import MIN_EVIDENCE, NIG, nig_from_raw
from perception_nodes.models.bev_grid import BevGrid
from perception_nodes.models.bev_net import BevNet, conv_bn
from perception_nodes.models.decode import regression_names
from perception_nodes.models.folding import FoldCache, fold_conv_bn, inference_fast_path
from perception_nodes.models.voxelize import voxelize_scans

__all__ = [
    "BACKBONES",
    "LidarDetectionConfig",
    "LidarDetectionNet",
    "LidarDetectionOutput",
    "register_backbone",
]

#: Sparse backbones by config name: ``factory(in_channels, **backbone_args) -> nn.Module`` taking and
#: returning a :class:`engines.sparse.SparseTensor`. The engine's CenterPoint SparseEncoder registers here.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "voxel_backbone_8x": lambda in_channels, **kw: VoxelBackbone8x(in_channels, **kw),
    "lite": lambda in_channels, **kw: LiteSparseBackbone(in_channels, **kw),
}


def register_backbone(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make a sparse backbone selectable as ``backbone: <name>`` in the config."""
    BACKBONES[name] = factory


@dataclass(frozen=True)
class LidarDetectionConfig:
    """Network configuration (a ``lidar_detection.model`` section of the params file, as plain data)."""

    # Defaults = the real-time size chosen for a 2-core CPU (docs/lidar_branch.md, "Network size and
    # training"): the occupancy node's 80 m x 80 m square, 0.25 x 0.25 x 0.5 m voxels, the light sparse
    # backbone (stride 4: 1 m BEV cells), a narrow 2D net and heads at 0.5 m. The SECOND / CenterPoint
    # backbones stay selectable by name (``backbone: voxel_backbone_8x``, ...) with their own sizes.
    #: crop (x_min, y_min, z_min, x_max, y_max, z_max) in base_link (m); x/y extent = the head grid's
    point_range: tuple[float, ...] = (-40.0, -40.0, -1.0, 40.0, 40.0, 3.0)
    #: voxel edge (x, y, z) in m
    voxel_size: tuple[float, ...] = (0.25, 0.25, 0.5)
    #: context margin (m): points up to this far beyond ``point_range`` in x and y feed the backbone and the
    #: BEV net, whose features are then cropped back to ``point_range`` before the heads, so every output
    #: (detections, occupancy, head grid) stays on ``point_range``. Why: a net that sees nothing past the crop
    #: edge cannot tell the cut-off end of a long barrier from a car there (docs/lidar_branch.md, "Context
    #: margin"); CenterPoint's nuScenes setting reads 54 m of points to detect cars within 50 m. A multiple of
    #: the BEV net's coarsest cell (voxel x backbone stride x 2) so the grids stay aligned; 0 = no margin. The
    #: packaged weights use 10 m (their sidecar); cost: the voxels and the BEV net's two stages grow with the
    #: wider square (BEV net 8.7 -> 10.5 ms at one thread), the heads not at all.
    context_margin_m: float = 0.0
    #: intensities are divided by this (1 for 0..1 sensors like KITTI; 255 for 0..255 ones)
    intensity_scale: float = 1.0
    #: sparse backbone name in :data:`BACKBONES` and its keyword arguments
    backbone: str = "lite"
    backbone_args: Mapping[str, Any] = field(default_factory=lambda: {"channels": (16, 32, 64),
                                                                      "subm_per_stage": (1, 1, 0)})
    #: 2D BEV net: channels of its full- and half-resolution stages, convs per stage
    bev_channels: tuple[int, ...] = (32, 64)
    bev_layers: tuple[int, ...] = (1, 1)
    #: extra upsampling of the BEV features before the heads (1 = heads at the backbone's BEV stride)
    head_upsample: int = 2
    head_channels: int = 32
    classes: tuple[str, ...] = ("car", "pedestrian", "cyclist")
    #: predict BEV velocity (needs two sweeps in the input)
    velocity: bool = False
    #: occupancy output grid (the occupancy node's): resolution (m); same x/y extent as point_range
    occupancy_resolution: float = 0.25
    #: lookahead distances (m) of the curvature prediction
    curvature_horizons_m: tuple[float, ...] = (0.0, 10.0, 20.0)
    #: typical size of the curvature (1/m): the head predicts curvature / curvature_scale, and its NIG is
    #: rescaled to 1/m (gamma * c, beta * c^2) so that a raw output of order 1 means a real road's curvature
    curvature_scale: float = 0.01
    #: how the curvature head reads the BEV features: 1 = one global average (the weights up to v8: it cannot
    #: tell where on the grid a road edge bends, and on held-out scenes it predicts no better than "straight
    #: road"); P > 1 = a 1 x 1 reduction to ``curvature_channels``, then the average over each cell of a P x P
    #: grid (P must divide the head grid), so the layout of edges, barriers and parked cars ahead reaches
    #: the MLP
    curvature_pool: int = 1
    curvature_channels: int = 16
    #: initial bias of the class-evidence logits (CenterPoint starts its heatmap at -2.19: little evidence)
    class_bias: float = -2.19
    #: initial bias of the background logit: almost every cell is background, so an untrained net starts
    #: with some background evidence (softplus(2) = 2.1: P(background) = 0.48, each class 0.17, below the
    #: decoder's threshold) instead of spending its first epoch learning that
    background_bias: float = 2.0

    def __post_init__(self) -> None:
        if len(self.point_range) != 6 or len(self.voxel_size) != 3:
            raise ConfigError("point_range needs 6 values and voxel_size 3")
        lo, hi = self.point_range[:3], self.point_range[3:]
        if any(h <= l for l, h in zip(lo, hi)) or any(v <= 0 for v in self.voxel_size):
            raise ConfigError("point_range must have max > min on every axis and voxel_size must be positive")
        for a in range(3):
            cells = (hi[a] - lo[a]) / self.voxel_size[a]
            if abs(cells - round(cells)) > 1e-6:
                raise ConfigError(f"point_range extent on axis {'xyz'[a]} is not a whole number of voxels")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; known: {', '.join(sorted(BACKBONES))}")
        if len(self.bev_channels) != 2 or len(self.bev_layers) != 2 or min(self.bev_channels) < 1:
            raise ConfigError("bev_channels and bev_layers need two entries (full and half resolution)")
        if self.head_upsample < 1 or self.head_channels < 1 or self.intensity_scale <= 0 or self.curvature_scale <= 0:
            raise ConfigError("head_upsample, head_channels, intensity_scale and curvature_scale must be positive")
        if self.context_margin_m < 0 or not math.isfinite(self.context_margin_m):
            raise ConfigError("context_margin_m must be >= 0")
        if not self.classes or not self.curvature_horizons_m:
            raise ConfigError("classes and curvature_horizons_m must not be empty")
        if self.curvature_pool < 1 or self.curvature_channels < 1:
            raise ConfigError("curvature_pool and curvature_channels must be >= 1")
        for a, size in ((0, hi[0] - lo[0]), (1, hi[1] - lo[1])):
            cells = size / self.occupancy_resolution
            if self.occupancy_resolution <= 0 or abs(cells - round(cells)) > 1e-6:
                raise ConfigError(f"occupancy_resolution must divide the {'xy'[a]} extent of point_range")

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]] = None) -> "LidarDetectionConfig":
        """From a params-file section; unknown keys raise :class:`ConfigError`."""
        return to_dataclass(cls, dict(values or {}), "lidar_detection.model: ")

    @property
    def input_range(self) -> tuple[float, ...]:
        """The crop of the points the network reads: ``point_range`` widened by ``context_margin_m`` in x
        and y (z unchanged)."""
        m = float(self.context_margin_m)
        x0, y0, z0, x1, y1, z1 = (float(v) for v in self.point_range)
        return (x0 - m, y0 - m, z0, x1 + m, y1 + m, z1)

    def contains_xy(self, x: Any, y: Any) -> Any:
        """Whether (x, y) lies inside ``point_range`` in x and y (half-open), elementwise for arrays and
        tensors: where outputs, boxes and the crop's own points live (the margin's points do not)."""
        x0, y0, _, x1, y1, _ = (float(v) for v in self.point_range)
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """The voxel grid of :attr:`input_range` (what the backbone runs on)."""
        r = self.input_range
        lo, hi = r[:3], r[3:]
        return tuple(int(round((hi[a] - lo[a]) / self.voxel_size[a])) for a in range(3))  # type: ignore[return-value]

    @property
    def occupancy_grid(self) -> BevGrid:
        r = self.occupancy_resolution
        x0, y0, _, x1, y1, _ = self.point_range
        return BevGrid(x0, y0, r, int(round((x1 - x0) / r)), int(round((y1 - y0) / r)))


@dataclass
class LidarDetectionOutput:
    """Raw evidential maps of a batch of ``B`` scans (all on the head grid unless said otherwise)."""

    #: ``[B, 2, H_occ, W_occ]`` Beta evidence (r occupied, s free) on :attr:`LidarDetectionConfig.occupancy_grid`
    occupancy_evidence: Tensor
    #: ``[B, K + 1, H, W]`` Dirichlet parameters, background last
    class_alpha: Tensor
    #: NIG of ``[B, T, H, W]`` tensors, T = len(regression_names(velocity))
    box: NIG
    #: NIG of ``[B, len(curvature_horizons_m)]`` tensors (1/m, + = left)
    curvature: NIG
    #: ``[B]`` voxels per scan in the input crop (``point_range`` plus the context margin; 0: no usable point)
    num_voxels: Tensor
    #: optional ``box_at(b, cells)``: the box NIG of scan ``b`` at flat head-grid cells ``iy * W + ix``
    #: (``[T, N]`` tensors), computed for those cells only; what :func:`~perception_nodes.models.decode.decode_batch`
    #: uses when present (the inference fast path sets it), equal to indexing :attr:`box` to float32 rounding
    box_at: Optional[Callable[[int, Tensor], NIG]] = field(default=None, repr=False, compare=False)


class _LazyBoxOutput(LidarDetectionOutput):
    """An output whose full :attr:`box` maps are computed on first access (decoding needs the box only at
    its peaks, through :attr:`box_at`; evaluation and tests that read the maps get them, the same values)."""

    def __init__(self, occupancy_evidence: Tensor, class_alpha: Tensor, curvature: NIG, num_voxels: Tensor,
                 box_maps: Callable[[], NIG], box_at: Callable[[int, Tensor], NIG]) -> None:
        self._box_maps = box_maps
        self._box_value: Optional[NIG] = None
        super().__init__(occupancy_evidence, class_alpha, None, curvature, num_voxels, box_at)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def box(self) -> NIG:
        if self._box_value is None:
            self._box_value = self._box_maps()
        return self._box_value

    @box.setter
    def box(self, value: Optional[NIG]) -> None:
        self._box_value = value


def _head(mid: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    """Per-head 1 x 1 layers on the shared trunk (the 3 x 3 context comes from the trunk, once for all heads)."""
    last = nn.Conv2d(mid, cout, 1)
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01),
                         nn.ReLU(inplace=True), last)


class LidarDetectionNet(nn.Module):
    """Evidential CenterPoint-style LiDAR network (see the module docstring)."""

    def __init__(self, config: LidarDetectionConfig | Mapping[str, Any] | None = None,
                 backbone: Optional[nn.Module] = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, LidarDetectionConfig) else LidarDetectionConfig.from_mapping(config)
        self.config = cfg
        #: use the faster inference implementations (compiled voxelisation; fused BEV net and heads when
        #: no gradient is recorded); False runs the plain reference path (same outputs to float32 rounding)
        self.fast_path = True
        self.in_channels = 4  # mean x, y, z, intensity
        self.backbone = backbone if backbone is not None else BACKBONES[cfg.backbone](self.in_channels, **cfg.backbone_args)
        bev_in, (bx, by, bz), stride = self._probe_backbone()
        self._bev_shape = (bx, by, bz)
        self.bev_in_channels = bev_in
        self.bev = BevNet(bev_in, cfg.bev_channels, cfg.bev_layers, cfg.head_upsample)
        if abs(cfg.voxel_size[0] - cfg.voxel_size[1]) > 1e-9:
            raise ConfigError("voxel_size must be equal in x and y (square BEV cells)")
        #: context margin in backbone BEV cells (cropped off every side after the BEV net)
        self.margin_cells = _margin_cells(cfg, stride)
        m = self.margin_cells
        x0, y0 = cfg.point_range[0], cfg.point_range[1]
        self.head_grid = BevGrid(x0, y0, cfg.voxel_size[0] * stride / cfg.head_upsample,
                                 (bx - 2 * m) * cfg.head_upsample, (by - 2 * m) * cfg.head_upsample)
        c = self.bev.out_channels
        k = len(cfg.classes)
        self.reg_names = regression_names(cfg.velocity)
        hc = cfg.head_channels
        # one shared 3 x 3 trunk, then 1 x 1 heads: on a CPU a 3 x 3 conv per head would triple the head cost
        self.head_trunk = conv_bn(c, hc)
        self.occupancy_head = _head(hc, 2, bias=-2.0)
        self.class_head = _head(hc, k + 1, bias=cfg.class_bias)
        nn.init.constant_(self.class_head[-1].bias[k:], cfg.background_bias)
        self.box_head = _head(hc, 4 * len(self.reg_names))
        self.curvature_head = _curvature_head(cfg, c, self.head_grid)
        self._heads_folded = FoldCache(_fold_heads)

    def _probe_backbone(self) -> tuple[int, tuple[int, int, int], int]:
        """Run the backbone on two voxels once to learn its BEV channel count, grid and xy stride."""
        cfg = self.config
        coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
        x = SparseTensor(torch.zeros(2, self.in_channels), coords, 1, cfg.spatial_shape, 1)
        was = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            y = self.backbone(x)
        self.backbone.train(was)
        if y.spatial_shape is None or min(y.spatial_shape) < 1:
            raise ConfigError(f"backbone {cfg.backbone!r} leaves no cells for grid {cfg.spatial_shape}: "
                              "enlarge the z range or the voxel count")
        sx, sy, _ = y.stride
        if sx != sy:
            raise ConfigError(f"backbone strides differ in x and y: {y.stride}")
        X, Y, Z = y.spatial_shape
        return y.num_channels * Z, (X, Y, Z), int(sx)

    # ---- stages --------------------------------------------------------------------------------

    def voxelize(self, points: Tensor | Sequence[Tensor]) -> tuple[SparseTensor, Tensor]:
        """Voxels of one scan ``[N, >= 4]`` (x, y, z, intensity, ...) or a list of scans (a batch).

        Returns the sparse tensor and the voxel count per scan. Rows with a non-finite value in the first
        four columns and points outside :attr:`~LidarDetectionConfig.input_range` (``point_range`` plus the
        context margin) are dropped (counted in the voxel count, not here).
        """
        scans = [points] if isinstance(points, Tensor) else list(points)
        cfg = self.config
        dev = self.head_trunk[0].weight.device
        if self.fast_path and dev.type == "cpu":
            fast = self._voxelize_numba(scans)
            if fast is not None:
                return fast
        return self.voxelize_reference(scans)

    def voxelize_reference(self, points: Tensor | Sequence[Tensor]) -> tuple[SparseTensor, Tensor]:
        """:meth:`voxelize` by PyTorch ops (``engines.sparse.voxelize_mean``): any device and grid size;
        the reference the compiled CPU path is tested against."""
        scans = [points] if isinstance(points, Tensor) else list(points)
        cfg = self.config
        dev = self.head_trunk[0].weight.device
        parts, batch = [], []
        for b, p in enumerate(scans):
            if p.dim() != 2 or p.shape[1] < 4:
                raise ValueError(f"points must be [N, >= 4] (x, y, z, intensity), got {tuple(p.shape)}")
            p = p[:, :4].to(dev, torch.float32)
            p = p[torch.isfinite(p).all(1)]
            if cfg.intensity_scale != 1.0:
                p = torch.cat([p[:, :3], p[:, 3:4] / cfg.intensity_scale], 1)
            parts.append(p)
            batch.append(torch.full((len(p),), b, dtype=torch.long, device=dev))
        pts = torch.cat(parts) if parts else torch.zeros(0, 4, device=dev)
        bidx = torch.cat(batch) if batch else torch.zeros(0, dtype=torch.long, device=dev)
        st, _, _ = voxelize_mean(pts, cfg.voxel_size, cfg.input_range, batch=bidx)
        st.batch_size = len(scans)
        st.spatial_shape = cfg.spatial_shape
        counts = torch.bincount(st.coords[:, 0].long(), minlength=len(scans)) if len(st) else torch.zeros(
            len(scans), dtype=torch.long, device=dev)
        return st, counts

    def _voxelize_numba(self, scans: list[Tensor]) -> Optional[tuple[SparseTensor, Tensor]]:
        """The CPU voxelisation in one compiled pass (:mod:`perception_nodes.models.voxelize`); ``None`` if
        the grid is too large for its dense table."""
        cfg = self.config
        arrays = []
        for p in scans:
            if p.dim() != 2 or p.shape[1] < 4:
                raise ValueError(f"points must be [N, >= 4] (x, y, z, intensity), got {tuple(p.shape)}")
            arrays.append(p.detach()[:, :4].to("cpu", torch.float32).numpy())
        if len(arrays) == 1:
            pts, bidx = arrays[0], None
        else:
            pts = np.concatenate(arrays) if arrays else np.zeros((0, 4), np.float32)
            bidx = np.repeat(np.arange(len(arrays), dtype=np.int64), [len(a) for a in arrays])
        res = voxelize_scans(pts, bidx, max(len(scans), 1), cfg.voxel_size, cfg.input_range, cfg.intensity_scale)
        if res is None:
            return None
        feats, coords = res
        st = SparseTensor(torch.from_numpy(feats), torch.from_numpy(coords), 1, cfg.spatial_shape, len(scans))
        counts = torch.from_numpy(np.bincount(coords[:, 0], minlength=len(scans)).astype(np.int64))
        return st, counts

    def backbone_bev(self, x: SparseTensor) -> Tensor:
        """Sparse backbone and height collapse: ``[B, C * Z, Y, X]`` BEV features (zeros without voxels)."""
        bsz = x.batch_size or 1
        X, Y, Z = self._bev_shape
        if len(x) == 0:
            return torch.zeros(bsz, self.bev_in_channels, Y, X, device=x.feats.device)
        y = self.backbone(x)
        if self.fast_path and inference_fast_path(self):
            return _bev_scatter_channels_last(y, (X, Y, Z), bsz)
        return to_bev(y, (X, Y, Z), bsz)

    def bev_net(self, bev: Tensor) -> Tensor:
        """2D BEV net on the backbone's BEV (the :attr:`~LidarDetectionConfig.input_range` grid); its output
        is on the head grid (``point_range``): the context margin is read by the convolutions and cut off
        before the head upsampling, never output."""
        if self.fast_path and inference_fast_path(self):
            return self.bev.forward_inference(bev, self.margin_cells)
        return self.bev(bev, self.margin_cells)

    def heads(self, feats: Tensor, num_voxels: Tensor) -> LidarDetectionOutput:
        if self.fast_path and inference_fast_path(self):
            return self._heads_inference(feats, num_voxels)
        cfg = self.config
        bsz, _, h, w = feats.shape
        empty = (num_voxels == 0).view(bsz, 1, 1, 1)
        occ_grid = cfg.occupancy_grid
        curv = nig_from_raw(self.curvature_head(feats).view(bsz, len(cfg.curvature_horizons_m), 4), dim=2)
        c = cfg.curvature_scale  # y = c * z with z ~ NIG(g, n, a, b)  =>  y ~ NIG(c g, n, a, c^2 b)
        curv = NIG(curv.gamma * c, curv.nu, curv.alpha, curv.beta * (c * c))
        feats = self.head_trunk(feats)
        occ_logits = self.occupancy_head(feats)
        if (occ_grid.height, occ_grid.width) != (h, w):
            occ_logits = F.interpolate(occ_logits, size=(occ_grid.height, occ_grid.width), mode="bilinear",
                                       align_corners=False)
        occ = F.softplus(occ_logits)
        occ = torch.where(empty, torch.zeros_like(occ), occ)
        alpha = alpha_from_logits(self.class_head(feats))
        alpha = torch.where(empty, torch.ones_like(alpha), alpha)
        box = nig_from_raw(self.box_head(feats).view(bsz, len(self.reg_names), 4, h, w), dim=2)
        return LidarDetectionOutput(occ, alpha, box, curv, num_voxels)

    def _curvature(self, feats: Tensor) -> NIG:
        cfg = self.config
        curv = nig_from_raw(self.curvature_head(feats).view(feats.shape[0], len(cfg.curvature_horizons_m), 4), dim=2)
        c = cfg.curvature_scale  # y = c * z with z ~ NIG(g, n, a, b)  =>  y ~ NIG(c g, n, a, c^2 b)
        return NIG(curv.gamma * c, curv.nu, curv.alpha, curv.beta * (c * c))

    def _heads_inference(self, feats: Tensor, num_voxels: Tensor) -> LidarDetectionOutput:
        """:meth:`heads` for inference: BatchNorms folded, the heads' 1 x 1 layers as matrix products on the
        trunk's rows (occupancy and class first layers as one product, second layers per head into one
        channels-first output). The box head runs only where asked: :attr:`LidarDetectionOutput.box_at`
        at the cells decoding picks (the peaks), or over the whole grid on first access of ``.box``
        (evaluation, tests). Same values to float32 rounding."""
        cfg = self.config
        f = self._heads_folded.get(self.head_trunk, self.occupancy_head, self.class_head, self.box_head)
        bsz, _, h, w = feats.shape
        k, n_reg = len(cfg.classes), len(self.reg_names)
        curv = self._curvature(feats)
        t = F.conv2d(feats.contiguous(memory_format=torch.channels_last), f["trunk_w"], f["trunk_b"], 1,
                     f["trunk_pad"]).relu_()
        hc = t.shape[1]
        rows = t.permute(0, 2, 3, 1).reshape(bsz, h * w, hc)  # a view: channels-last
        n_dense = f["n_dense"]
        out = feats.new_empty((bsz, n_dense, h * w))
        for b in range(bsz):
            # channels-first products: [2 hc, HW] hidden rows, each head's block of output rows contiguous
            hid = torch.addmm(f["b1_dense"], f["w1_dense"], rows[b].T).relu_()
            for (w2, b2, r0, r1, c0, c1) in f["second_dense"]:
                torch.addmm(b2, w2, hid[c0:c1], out=out[b, r0:r1])
        empty = [b for b in range(bsz) if int(num_voxels[b]) == 0]
        occ_grid = cfg.occupancy_grid
        occ_logits = out[:, 0:2].view(bsz, 2, h, w)
        if (occ_grid.height, occ_grid.width) != (h, w):
            occ_logits = F.interpolate(occ_logits, size=(occ_grid.height, occ_grid.width), mode="bilinear",
                                       align_corners=False)
        occ = F.softplus(occ_logits)
        alpha = F.softplus(out[:, 2:3 + k].view(bsz, k + 1, h, w)).add_(1.0)
        for b in empty:
            occ[b] = 0.0
            alpha[b] = 1.0
        # the box head runs where it is asked: at decoded peaks (box_at), or everywhere on first access of .box

        def box_rows(r: Tensor) -> Tensor:  # trunk rows [N, hc] -> raw box rows [4 T, N], (parameter, target)
            hid_b = torch.addmm(f["b1_box"], f["w1_box"], r.T).relu_()
            return torch.addmm(f["b2_box"], f["w2_box"], hid_b)

        def box_at(b: int, cells: Tensor) -> NIG:
            with torch.inference_mode():
                idx = cells.long().reshape(-1)
                return _nig_blocks(box_rows(rows[b].index_select(0, idx)).view(4, n_reg, idx.numel()), 0)

        def box_maps() -> NIG:
            with torch.inference_mode():
                raw = torch.stack([box_rows(rows[b]) for b in range(bsz)]).view(bsz, 4, n_reg, h, w)
                return _nig_blocks(raw, 1)

        return _LazyBoxOutput(occ, alpha, curv, num_voxels, box_maps, box_at)

    def forward(self, points: Tensor | Sequence[Tensor]) -> LidarDetectionOutput:
        st, counts = self.voxelize(points)
        return self.heads(self.bev_net(self.backbone_bev(st)), counts)


def _margin_cells(cfg: LidarDetectionConfig, stride: int) -> int:
    """``context_margin_m`` in backbone BEV cells; it must be a whole number of the BEV net's coarsest
    cells (two backbone cells: its half-resolution stage) so the cropped grid keeps the phase of every
    stride of the backbone and the BEV net."""
    cell = cfg.voxel_size[0] * stride
    n = cfg.context_margin_m / (2.0 * cell)
    if abs(n - round(n)) > 1e-6:
        raise ConfigError(f"context_margin_m = {cfg.context_margin_m:g} m is not a multiple of the BEV net's "
                          f"coarsest cell ({2.0 * cell:g} m = voxel {cfg.voxel_size[0]:g} m x backbone stride "
                          f"{stride} x 2)")
    return 2 * int(round(n))


def _curvature_head(cfg: LidarDetectionConfig, channels: int, grid: BevGrid) -> nn.Sequential:
    """The curvature head on the ``channels`` BEV features of the head grid (see ``curvature_pool``). The
    global form keeps the module layout of the weights trained with it (their tensors load unchanged)."""
    n_out, hc, pool = 4 * len(cfg.curvature_horizons_m), cfg.head_channels, cfg.curvature_pool
    if pool == 1:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hc), nn.ReLU(inplace=True),
                             nn.Linear(hc, n_out))
    if grid.width % pool or grid.height % pool:
        raise ConfigError(f"curvature_pool {pool} must divide the head grid ({grid.width} x {grid.height} cells)")
    cc = cfg.curvature_channels
    # equal cells: the pooling is a plain average pool (exported to ONNX as such)
    return nn.Sequential(nn.Conv2d(channels, cc, 1), nn.ReLU(inplace=True),
                         nn.AvgPool2d((grid.height // pool, grid.width // pool)), nn.Flatten(),
                         nn.Linear(cc * pool * pool, hc), nn.ReLU(inplace=True), nn.Linear(hc, n_out))


def _nig_blocks(raw: Tensor, dim: int) -> NIG:
    """NIG from raw rows laid out (parameter, ...) along ``dim``: :func:`nig_from_raw`'s constraints, one
    softplus over the three contiguous evidence blocks."""
    g = raw.select(dim, 0)
    sp = F.softplus(raw.narrow(dim, 1, 3))
    return NIG(g, sp.select(dim, 0).add_(MIN_EVIDENCE), sp.select(dim, 1).add_(1.0).add_(MIN_EVIDENCE),
               sp.select(dim, 2).add_(MIN_EVIDENCE))


def _fold_heads(trunk: nn.Sequential, occupancy: nn.Sequential, classes: nn.Sequential, box: nn.Sequential
                ) -> dict[str, Any]:
    """Folded head layers for :meth:`LidarDetectionNet._heads_inference` (built by its :class:`FoldCache`).

    Dense output rows: occupancy (2), classes (K + 1). The box head (run on demand) has its ``T x 4`` output
    channels reordered to ``4 x T`` (row ``j * T + t`` = NIG parameter ``j`` of target ``t``; the head's own
    order is ``t * 4 + j``), so each NIG parameter is one contiguous block.
    """
    tw, tb = fold_conv_bn(trunk[0], trunk[1])
    firsts, seconds = [], []
    for head in (occupancy, classes, box):
        w1, b1 = fold_conv_bn(head[0], head[1])
        firsts.append((w1.flatten(1), b1))
        w2, b2 = fold_conv_bn(head[3], None)
        seconds.append((w2.flatten(1), b2))
    n_box = seconds[2][0].shape[0]
    n_reg = n_box // 4
    order = torch.tensor([t * 4 + j for j in range(4) for t in range(n_reg)])
    seconds[2] = (seconds[2][0][order], seconds[2][1][order])
    hc = firsts[0][0].shape[1]
    second, r0 = [], 0
    for i, (w2, b2) in enumerate(seconds):
        second.append((w2.contiguous(), b2.view(-1, 1).contiguous(), r0, r0 + w2.shape[0], i * hc, (i + 1) * hc))
        r0 += w2.shape[0]
    return {
        "trunk_w": tw.contiguous(), "trunk_b": tb.contiguous(), "trunk_pad": trunk[0].padding,
        # occupancy and classes: every cell (dense maps)
        "w1_dense": torch.cat([w for w, _ in firsts[:2]]).contiguous(),
        "b1_dense": torch.cat([b for _, b in firsts[:2]]).view(-1, 1).contiguous(),
        "second_dense": second[:2], "n_dense": second[1][3],
        # box: on demand
        "w1_box": firsts[2][0].contiguous(), "b1_box": firsts[2][1].view(-1, 1).contiguous(),
        "w2_box": second[2][0], "b2_box": second[2][1],
    }


def _bev_scatter_channels_last(y: SparseTensor, grid: tuple[int, int, int], bsz: int) -> Tensor:
    """:func:`engines.sparse.to_bev` written straight into channels-last memory: ``[B, C * Z, Y, X]``
    (channel ``c * Z + z``) with NHWC strides, one index write of the voxel rows (no dense 5-D grid and
    no two permuting copies); the layout the inference BEV net reads."""
    X, Y, Z = grid
    C = y.num_channels
    c = y.coords.long()
    s = torch.as_tensor(y.stride, device=c.device)
    ijk = torch.div(c[:, 1:], s, rounding_mode="floor")
    if len(y) and (bool((ijk < 0).any()) or bool((ijk >= torch.as_tensor([X, Y, Z], device=c.device)).any())):
        raise ValueError(f"coordinates fall outside the grid {X, Y, Z}")
    out = y.feats.new_zeros((bsz, Y, X, C, Z))
    out[c[:, 0], ijk[:, 1], ijk[:, 0], :, ijk[:, 2]] = y.feats
    return out.view(bsz, Y, X, C * Z).permute(0, 3, 1, 2)
