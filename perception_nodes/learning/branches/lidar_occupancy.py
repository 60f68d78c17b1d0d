"""``lidar_occupancy``: a small evidential BEV occupancy network on one LiDAR scan.

Pipeline (one frame)::

    points (base_link) ──► BEV features (C, H, W) ──► tiny U-Net ──► softplus ──► (r, s) evidence per cell
                                                                                  α = r + 1, β = s + 1

**Features** (:func:`bev_features`, :data:`FEATURE_NAMES`) on the branch's training grid
(:class:`~perception_nodes.pipeline.occupancy.GridSpec`, default 0.5 m cells over 64 m × 64 m centred on
base_link), from the same geometry the hand-written pipeline uses:

* per-cell point statistics: log(1 + points), log(1 + non-ground points), max and mean height above
  the local ground (clipped to ``max_height``, divided by it), mean intensity (÷ ``intensity_scale``),
  fraction of ground returns;
* the geometric inverse sensor model of :func:`~perception_nodes.pipeline.occupancy.evidential_occupancy`
  (ground from :func:`~perception_nodes.pipeline.ground.estimate_ground`): log(1 + occupied evidence),
  log(1 + free evidence) and its vacuity — the network starts from the hand-made opinion and learns what
  it misses (objects' hidden extent, thin structures, ray-casting artefacts);
* the cell centre's distance from the sensor over half the grid size (point density falls with range).

**Model** (:class:`EvidentialBevUNet`): a U-Net of ``len(widths)`` levels (two 3×3 conv + GroupNorm +
ReLU per level, stride-2 conv down, nearest ×2 up with skip connections), a 1×1 head and softplus: channel
0 is the occupied evidence r, channel 1 the free evidence s. The head's bias starts at ``head_bias``
(softplus(−2) ≈ 0.13 evidence: an untrained net says "unknown" everywhere, vacuity ≈ 0.89).

**Loss** (field notes §4, :mod:`perception_nodes.learning.losses`), on the cells whose ground-truth
visibility is set, only: Beta Bayes-risk cross-entropy ``y(ψ(α+β) − ψ(α)) + (1−y)(ψ(α+β) − ψ(β))``
plus ``λ_t · KL(Beta(α̃, β̃) ‖ Beta(1, 1))`` with the true class's parameter set to 1 (α̃ = 1 for an
occupied cell, β̃ = 1 for a free one), λ_t = ``kl_weight · min(1, epochs done / kl_anneal_epochs)``
(per step). Cells labelled occupied can be up-weighted (``occupied_weight``; they are a few % of the
visible cells). Cells nobody could see get no loss at all, so nothing pushes evidence into them and
they keep a high vacuity; ``unobserved_kl_weight`` > 0 (default 0, off) additionally pulls them towards
Beta(1, 1) explicitly.

**Targets**: ``/ground_truth/occupancy`` (occupied ≥ 50) and ``/ground_truth/occupancy/visibility``
(visible ≥ 50) resampled onto the training grid with :func:`~perception_nodes.learning.grids.resample_max`
(max-pool into coarser cells: occupied / visible if any ground-truth cell under it is).

**Augmentation**: random flips along x and y (and, on square grids, optional 90° rotations) of features
and targets together — a mirrored BEV scene is a valid scene for a convolutional net (the range channel
mirrors with it).

**Metrics** (on visible cells unless said otherwise): occupied-class IoU at P > ``threshold``, precision,
recall, ECE of P(occupied), mean Bayes-risk CE, mean vacuity of visible and of invisible cells, and the
same IoU/ECE of the geometric inverse sensor model alone (``ism_*``) as the baseline to beat.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from perception_nodes.calibration import transform_points
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.datasets.frame import Frame
from perception_nodes.learning.branches.base import Batch, Branch, Sample
from perception_nodes.learning.grids import grid_from_msg, resample_max
from perception_nodes.learning.losses import beta_evidential_terms, beta_kl_uniform, kl_annealing
from perception_nodes.pipeline.ground import GroundParams, estimate_ground
from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, OccupancyParams, evidential_occupancy

__all__ = [
    "FEATURE_NAMES",
    "AugmentParams",
    "EvalParams",
    "EvidentialBevUNet",
    "FeatureParams",
    "LidarOccupancyBranch",
    "LossParams",
    "ModelParams",
    "bev_features",
]

GT_OCCUPANCY = "/ground_truth/occupancy"
GT_VISIBILITY = "/ground_truth/occupancy/visibility"

#: input channels of the network, in order
FEATURE_NAMES: tuple[str, ...] = (
    "log_count",
    "log_count_obstacle",
    "max_height",
    "mean_height",
    "mean_intensity",
    "ground_fraction",
    "ism_occupied",
    "ism_free",
    "ism_vacuity",
    "range",
)
_ISM_OCC, _ISM_FREE = FEATURE_NAMES.index("ism_occupied"), FEATURE_NAMES.index("ism_free")

#: default training grid: 0.5 m cells over 64 m × 64 m centred on base_link (128 × 128)
DEFAULT_GRID = GridSpec(resolution=0.5, size_x=64.0, size_y=64.0)


# --------------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class FeatureParams:
    """How points become BEV features."""

    #: heights above ground are clipped to [0, max_height] (m) and divided by it
    max_height: float = 3.0
    #: intensities are divided by this (1 for 0..1 sensors such as the simulator and KITTI; 255 for 0..255)
    intensity_scale: float = 1.0
    #: :class:`~perception_nodes.pipeline.ground.GroundParams` overrides (ground segmentation)
    ground: GroundParams = GroundParams()
    #: :class:`~perception_nodes.pipeline.occupancy.OccupancyParams` overrides (inverse sensor model)
    evidence: OccupancyParams = OccupancyParams()

    def __post_init__(self) -> None:
        if not (self.max_height > 0 and self.intensity_scale > 0):
            raise ConfigError("features.max_height and features.intensity_scale must be positive")


@dataclass(frozen=True)
class ModelParams:
    """Tiny U-Net: channel width per level (len(widths) levels; each further level halves H and W)."""

    widths: tuple[int, ...] = (16, 32, 64)
    #: GroupNorm groups (a width not divisible by it uses the largest divisor below); 0 = no normalisation
    norm_groups: int = 4
    #: initial bias of the evidence head (softplus(-2) ≈ 0.13 evidence: starts out "unknown")
    head_bias: float = -2.0

    def __post_init__(self) -> None:
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ConfigError("model.widths must be a non-empty list of positive channel counts")
        if self.norm_groups < 0:
            raise ConfigError("model.norm_groups must be >= 0")


@dataclass(frozen=True)
class LossParams:
    """Evidential Beta loss on visible cells (see the module docstring)."""

    #: epochs over which λ_t rises linearly from 0 to ``kl_weight`` (0: full weight from the start)
    kl_anneal_epochs: float = 3.0
    #: final KL weight (1 in Sensoy et al.)
    kl_weight: float = 1.0
    #: loss weight of visible cells labelled occupied (free ones weigh 1)
    occupied_weight: float = 2.0
    #: weight of KL(Beta(α, β) ‖ Beta(1, 1)) on cells that are *not* visible (0: off, the default)
    unobserved_kl_weight: float = 0.0

    def __post_init__(self) -> None:
        if min(self.kl_anneal_epochs, self.kl_weight, self.occupied_weight, self.unobserved_kl_weight) < 0:
            raise ConfigError("loss weights and kl_anneal_epochs must be >= 0")


@dataclass(frozen=True)
class AugmentParams:
    """Random label-consistent transforms of training batches."""

    flip_x: bool = True
    flip_y: bool = True
    #: random multiples of 90° (square grids only)
    rot90: bool = False


@dataclass(frozen=True)
class EvalParams:
    """Validation metrics."""

    #: a cell is predicted occupied when its expected probability α / (α + β) exceeds this
    threshold: float = 0.5
    #: equal-width bins of the ECE
    ece_bins: int = 10


def _sub(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{where.rstrip('.')} must be a mapping, got {type(values).__name__}")
    return to_dataclass(cls, dict(values or {}), where)


def _feature_params(values: Mapping[str, Any] | None) -> FeatureParams:
    v = dict(values or {})
    ground = _sub(GroundParams, v.pop("ground", None), "features.ground.")
    evidence = _sub(OccupancyParams, v.pop("evidence", None), "features.evidence.")
    return dataclasses.replace(_sub(FeatureParams, v, "features."), ground=ground, evidence=evidence)


# --------------------------------------------------------------------------------------------------
# features


def bev_features(
    points: np.ndarray,
    sensor_origin: np.ndarray | Sequence[float],
    spec: GridSpec = DEFAULT_GRID,
    params: FeatureParams | None = None,
) -> NDArray[np.float32]:
    """(len(FEATURE_NAMES), H, W) float32 BEV features of one scan.

    Args:
        points: (N, >=3) base_link points (x, y, z[, intensity, ...]); non-finite rows are dropped.
        sensor_origin: (3,) sensor position in base_link (ray casting and the range channel).
        spec: the training grid.
        params: feature parameters (default :class:`FeatureParams`()).
    """
    p = params or FeatureParams()
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got shape {pts.shape}")
    pts = pts[np.all(np.isfinite(pts[:, :3]), axis=1)]
    origin = np.asarray(sensor_origin, dtype=np.float64).reshape(3)
    h_rows, w_cols = spec.shape
    n_cells = h_rows * w_cols
    out = np.zeros((len(FEATURE_NAMES), n_cells), dtype=np.float32)

    if len(pts):
        est = estimate_ground(pts, p.ground)
        ground, hag = est.mask, est.height
        ism = evidential_occupancy(pts, ground, origin, spec, p.evidence, height_above_ground=hag)
        r, s = ism.occupied.reshape(-1), ism.free.reshape(-1)
        row, col, inside = spec.cell_index(pts[:, 0], pts[:, 1])
        cell = (row * w_cols + col)[inside]
        g = ground[inside]
        h = np.clip(np.nan_to_num(hag[inside], nan=0.0), 0.0, p.max_height) / np.float32(p.max_height)
        inten = pts[inside, 3] / np.float32(p.intensity_scale) if pts.shape[1] > 3 else np.zeros(len(cell), np.float32)
        n = np.bincount(cell, minlength=n_cells).astype(np.float32)
        n_ground = np.bincount(cell[g], minlength=n_cells).astype(np.float32)
        hmax = np.zeros(n_cells, dtype=np.float32)
        np.maximum.at(hmax, cell, h.astype(np.float32))
        denom = np.maximum(n, 1.0)
        out[0] = np.log1p(n)
        out[1] = np.log1p(n - n_ground)
        out[2] = hmax
        out[3] = np.bincount(cell, weights=h, minlength=n_cells) / denom
        out[4] = np.bincount(cell, weights=inten, minlength=n_cells) / denom
        out[5] = n_ground / denom
    else:
        r = s = np.zeros(n_cells, dtype=np.float32)
    out[6] = np.log1p(r)
    out[7] = np.log1p(s)
    out[8] = 2.0 / (r + s + 2.0)
    cx, cy = spec.cell_centers()
    out[9] = (np.hypot(cx - origin[0], cy - origin[1]) / (0.5 * max(spec.size_x, spec.size_y))).reshape(-1)
    return out.reshape(len(FEATURE_NAMES), h_rows, w_cols)


# --------------------------------------------------------------------------------------------------
# model


def _norm(channels: int, groups: int) -> nn.Module:
    if groups <= 0:
        return nn.Identity()
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        bias = groups <= 0
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), _norm(c_out, groups), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias), _norm(c_out, groups), nn.ReLU(inplace=True),
        )


class EvidentialBevUNet(nn.Module):
    """(B, C, H, W) features → (B, 2, H, W) non-negative evidence (occupied r, free s). Any H, W: the
    input is zero-padded to a multiple of 2^(levels−1) and the output cropped back."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (16, 32, 64), *, norm_groups: int = 4,
                 head_bias: float = -2.0) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        self.levels = len(widths)
        self.enc = nn.ModuleList([_ConvBlock(in_channels, widths[0], norm_groups)])
        self.down = nn.ModuleList()
        for i in range(1, self.levels):
            self.down.append(nn.Sequential(
                nn.Conv2d(widths[i - 1], widths[i], 3, stride=2, padding=1, bias=norm_groups <= 0),
                _norm(widths[i], norm_groups), nn.ReLU(inplace=True)))
            self.enc.append(_ConvBlock(widths[i], widths[i], norm_groups))
        self.dec = nn.ModuleList(
            [_ConvBlock(widths[i + 1] + widths[i], widths[i], norm_groups) for i in range(self.levels - 1)]
        )
        self.head = nn.Conv2d(widths[0], 2, 1)
        nn.init.constant_(self.head.bias, head_bias)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        skips = []
        for i in range(self.levels):
            if i:
                x = self.down[i - 1](x)
            x = self.enc[i](x)
            skips.append(x)
        for i in range(self.levels - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.dec[i](torch.cat([x, skips[i]], dim=1))
        return F.softplus(self.head(x))[..., :h, :w]


# --------------------------------------------------------------------------------------------------
# the branch


def _ism_metrics(r: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (r + 1.0) / (r + s + 2.0), 2.0 / (r + s + 2.0)


class LidarOccupancyBranch(Branch):
    """Evidential BEV occupancy from one LiDAR scan (see the module docstring)."""

    name: ClassVar[str] = "lidar_occupancy"
    sections: ClassVar[tuple[str, ...]] = ("grid", "features", "model", "loss", "augment", "eval")
    key_metric: ClassVar[str] = "iou"

    def __init__(self, sections: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        sections = dict(sections or {})
        unknown = set(sections) - set(self.sections)
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))} for branch {self.name}")
        grid = dict(sections.get("grid") or {})
        self.grid: GridSpec = to_dataclass(GridSpec, {**dataclasses.asdict(DEFAULT_GRID), "origin": None, **grid},
                                           "grid.")
        self.features = _feature_params(sections.get("features"))
        self.model_params: ModelParams = _sub(ModelParams, sections.get("model"), "model.")
        self.loss_params: LossParams = _sub(LossParams, sections.get("loss"), "loss.")
        self.augment_params: AugmentParams = _sub(AugmentParams, sections.get("augment"), "augment.")
        self.eval_params: EvalParams = _sub(EvalParams, sections.get("eval"), "eval.")
        if self.augment_params.rot90 and self.grid.width != self.grid.height:
            raise ConfigError("augment.rot90 needs a square grid")

    # -- configuration --------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        def plain(x: Any) -> Any:
            if dataclasses.is_dataclass(x):
                return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
            if isinstance(x, (tuple, list)):
                return [plain(v) for v in x]
            return x

        return {
            "grid": plain(self.grid),
            "features": plain(self.features),
            "model": plain(self.model_params),
            "loss": plain(self.loss_params),
            "augment": plain(self.augment_params),
            "eval": plain(self.eval_params),
        }

    # -- data -----------------------------------------------------------------------------------
    def features_of(self, points_base: np.ndarray, sensor_origin: np.ndarray | Sequence[float]) -> NDArray[np.float32]:
        """BEV features of base_link points on this branch's grid."""
        return bev_features(points_base, sensor_origin, self.grid, self.features)

    def prepare_frame(self, frame: Frame) -> Sample | None:
        occ_msg, vis_msg = frame.extras.get(GT_OCCUPANCY), frame.extras.get(GT_VISIBILITY)
        if occ_msg is None or vis_msg is None:
            return None
        pts = np.asarray(frame.points, dtype=np.float32)
        pts = pts[np.all(np.isfinite(pts[:, :3]), axis=1)]
        base = transform_points(frame.lidar_to_base, pts)
        feats = self.features_of(base, frame.lidar_to_base[:3, 3])
        occ, occ_spec = grid_from_msg(occ_msg)
        vis, vis_spec = grid_from_msg(vis_msg)
        return {
            "features": feats,
            "occupied": resample_max(occ >= 50, occ_spec, self.grid),
            "visible": resample_max(vis >= 50, vis_spec, self.grid),
        }

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        a = self.augment_params
        if not (a.flip_x or a.flip_y or a.rot90):
            return batch
        n = batch["features"].shape[0]
        draws = torch.randint(0, 4, (n, 3), generator=generator)  # fixed number of draws per batch
        out = {k: v.clone() for k, v in batch.items()}
        for i in range(n):
            dims = []
            if a.flip_x and draws[i, 0] % 2:
                dims.append(-1)  # columns follow x
            if a.flip_y and draws[i, 1] % 2:
                dims.append(-2)  # rows follow y
            k = int(draws[i, 2]) if a.rot90 else 0
            for key in ("features", "occupied", "visible"):
                v = out[key][i]
                if dims:
                    v = torch.flip(v, dims)
                if k:
                    v = torch.rot90(v, k, dims=(-2, -1))
                out[key][i] = v
        return out

    # -- model and loss -------------------------------------------------------------------------
    def build_model(self) -> EvidentialBevUNet:
        m = self.model_params
        return EvidentialBevUNet(len(FEATURE_NAMES), m.widths, norm_groups=m.norm_groups, head_bias=m.head_bias)

    def loss(self, output: Tensor, batch: Batch, *, epoch_progress: float) -> tuple[Tensor, dict[str, float]]:
        lp = self.loss_params
        a, b = output[:, 0] + 1.0, output[:, 1] + 1.0
        y, m = batch["occupied"], batch["visible"]
        ce, kl = beta_evidential_terms(a, b, y)
        lam = kl_annealing(epoch_progress, lp.kl_anneal_epochs, lp.kl_weight)
        w = m * (1.0 + (lp.occupied_weight - 1.0) * y)
        n_vis = m.sum().clamp_min(1.0)
        ce_mean = (w * ce).sum() / n_vis
        kl_mean = (w * kl).sum() / n_vis
        loss = ce_mean + lam * kl_mean
        logs = {"ce": float(ce_mean.detach()), "kl": float(kl_mean.detach()), "kl_weight": lam}
        if lp.unobserved_kl_weight > 0:
            u = 1.0 - m
            kl_u = (u * beta_kl_uniform(a, b)).sum() / u.sum().clamp_min(1.0)
            loss = loss + lp.unobserved_kl_weight * kl_u
            logs["kl_unobserved"] = float(kl_u.detach())
        return loss, logs

    # -- inference and evaluation ---------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, points_base: np.ndarray, sensor_origin: np.ndarray | Sequence[float]) -> BetaGrid:
        """Evidence grid of one scan (base_link points) on the branch's grid, as a
        :class:`~perception_nodes.pipeline.occupancy.BetaGrid` (fuses with other evidence by addition)."""
        model.eval()
        param = next(model.parameters())
        x = torch.from_numpy(self.features_of(points_base, sensor_origin))[None].to(param.device, param.dtype)
        ev = model(x)[0].float().cpu().numpy()
        return BetaGrid(occupied=ev[0].astype(np.float32), free=ev[1].astype(np.float32), spec=self.grid)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], *, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        from perception_nodes.learning.metrics import expected_calibration_error, occupancy_scores

        if not samples:
            return {}
        was_training = model.training
        model.eval()
        probs, vacs, ys, ms, ism_p, ces = [], [], [], [], [], []
        try:
            for i in range(0, len(samples), batch_size):
                chunk = samples[i: i + batch_size]
                x = torch.from_numpy(np.stack([s["features"] for s in chunk])).to(device)
                ev = model(x).float()
                a, b = ev[:, 0] + 1.0, ev[:, 1] + 1.0
                y = torch.from_numpy(np.stack([s["occupied"] for s in chunk])).to(device)
                m = torch.from_numpy(np.stack([s["visible"] for s in chunk])).to(device) > 0.5
                ce, _ = beta_evidential_terms(a, b, y)
                ces.append(ce[m].sum().item())
                probs.append((a / (a + b)).cpu().numpy().reshape(-1))
                vacs.append((2.0 / (a + b)).cpu().numpy().reshape(-1))
                ys.append(y.cpu().numpy().reshape(-1))
                ms.append(m.cpu().numpy().reshape(-1))
                feats = x.cpu().numpy()
                ism_p.append(_ism_metrics(np.expm1(feats[:, _ISM_OCC]), np.expm1(feats[:, _ISM_FREE]))[0].reshape(-1))
        finally:
            model.train(was_training)
        p, u, y, m, pi = (np.concatenate(v) for v in (probs, vacs, ys, ms, ism_p))
        ep = self.eval_params
        nan = float("nan")
        scores = occupancy_scores(p, y, m, threshold=ep.threshold)
        return {
            **scores,
            "ece": expected_calibration_error(p, y, m, bins=ep.ece_bins),
            "ce": float(sum(ces) / max(int(m.sum()), 1)),
            "vacuity_visible": float(u[m].mean()) if m.any() else nan,
            "vacuity_invisible": float(u[~m].mean()) if (~m).any() else nan,
            "visible_fraction": float(m.mean()),
            "occupied_fraction": float((y[m] > 0.5).mean()) if m.any() else nan,
            "ism_iou": occupancy_scores(pi, y, m, threshold=ep.threshold)["iou"],
            "ism_ece": expected_calibration_error(pi, y, m, bins=ep.ece_bins),
        }
