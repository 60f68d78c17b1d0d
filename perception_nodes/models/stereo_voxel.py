"""Learned stereo, StereoVoxelNet-style: a cost volume at disparity planes -> disparity + coarse-to-fine
occupancy evidence in the left camera's frustum, with the confidently empty coarse cells pruned.

Why this shape: the classical baseline (:mod:`perception_nodes.pipeline.stereo`, SGBM) gives depth where
texture allows and nothing else; StereoVoxelNet (Li et al., 2023) showed that a small network can go from
a stereo cost volume straight to voxel occupancy, coarse to fine, skipping the regions the coarse level
already calls empty. This is a tiny CPU-sized version of that idea, trained on generated scenes.

Pipeline (all sizes for an ``H x W`` rectified pair, ``W`` and ``H`` multiples of 8):

1. **features**: one 2-D extractor shared by both images, stride 4 -> ``[B, C, H/4, W/4]``;
2. **cost volume**: correlation (channel mean of ``f_left(u) * f_right(u - s_k)``) at ``planes`` shifts
   ``s_k = k * plane_step`` (quarter-resolution pixels, right features linearly interpolated for fractional
   shifts; zero where the shift leaves the image) -> ``[B, D, H/4, W/4]``;
3. **disparity**: a 2-D aggregation of the volume (with the left features) to plane logits, soft-argmin
   over the planes (expected shift, differentiable), upsampled x4 to full resolution and scaled to
   full-resolution pixels. Depth = ``fx B / disparity`` as for SGBM, so both are scored alike;
4. **frustum occupancy grid**: the plane probabilities max/mean-pooled over ``row_bands`` horizontal bands
   of the image (a band tells ground from obstacle: the road sits at a known disparity per row) and
   transposed to a polar grid ``[B, 2*bands, D, W/4]`` (plane x column, i.e. depth slice x ray). A small
   2-D decoder gives features there;
5. **coarse level**: the features 2x2-average-pooled -> Beta evidence ``(occupied, free)`` on ``[D/2, W/8]``
   (evidence = softplus, as every evidential head in this project);
6. **pruning + refine**: a coarse cell whose expected free probability ``(e_free + 1) / (S + 2)`` reaches
   ``prune_free_belief`` is confidently empty: its four fine children are not refined and inherit its
   evidence. The others get a point-wise refine head on their fine features + the parent's features,
   run **only on the kept cells** (gathered, so the work skipped is real and counted in ``refined_cells``).
   Training refines every cell (``prune`` off) so every fine cell gets a gradient.

A frustum cell ``(k, j)`` covers the rays through full-resolution columns ``[4j, 4j + 4)`` and the depths
whose full-resolution disparity rounds to plane ``k`` (``4 s_k``, +- half a plane step): see
:meth:`StereoVoxelNet.plane_depths`. Plane 0 (zero disparity) is "beyond ``fx B / (2 plane_step)``".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception_nodes.models.folding import fold_sequential_batchnorm

__all__ = ["NETWORK", "StereoVoxelConfig", "StereoVoxelNet", "StereoVoxelOutput", "load_stereo_voxel"]

#: feature stride of the cost volume (fixed: the disparity upsampling and the grid assume it)
STRIDE = 4


@dataclass(frozen=True)
class StereoVoxelConfig:
    """Network sizes (config data; the training branch's ``model`` section)."""

    #: channels of the shared feature extractor's output
    feature_channels: int = 16
    #: disparity planes of the cost volume (even: the coarse level halves it)
    planes: int = 24
    #: spacing of the planes in quarter-resolution pixels (0.5 -> 2 full-resolution px)
    plane_step: float = 0.5
    #: horizontal image bands pooled into the frustum grid
    row_bands: int = 6
    #: channels of the frustum decoder
    decoder_channels: int = 24
    #: a coarse cell is pruned when its expected free probability reaches this (1.0: never)
    prune_free_belief: float = 0.85
    #: input scaling: "fixed" (x / 255 - 0.5) or "pair" (per channel, the pair's own mean and std: the
    #: same scaling for both images, so matching is unchanged, but exposure and contrast differences
    #: between generated and real cameras are taken out)
    input_norm: str = "pair"

    def __post_init__(self) -> None:
        if self.planes < 2 or self.planes % 2:
            raise ValueError("planes must be an even number >= 2")
        if not self.plane_step > 0:
            raise ValueError("plane_step must be > 0")
        if min(self.feature_channels, self.row_bands, self.decoder_channels) < 1:
            raise ValueError("feature_channels, row_bands and decoder_channels must be >= 1")
        if self.input_norm not in ("fixed", "pair"):
            raise ValueError(f"input_norm must be fixed or pair, got {self.input_norm!r}")
        if not 0.5 < self.prune_free_belief <= 1.0:
            raise ValueError("prune_free_belief must lie in (0.5, 1]")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "StereoVoxelConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        return cls(**values)

    @property
    def max_disparity(self) -> float:
        """Largest full-resolution disparity the planes reach (px)."""
        return STRIDE * self.plane_step * (self.planes - 1)


@dataclass
class StereoVoxelOutput:
    """What one forward pass gives (B = batch)."""

    #: [B, H, W] full-resolution disparity (px), soft-argmin over the planes
    disparity: Tensor
    #: [B, D, H/4, W/4] plane logits (softmax over D = matching distribution)
    plane_logits: Tensor
    #: [B, 2, D/2, W/8] coarse Beta evidence (occupied, free), >= 0
    coarse_evidence: Tensor
    #: [B, 2, D, W/4] fine Beta evidence (pruned cells: their parent's evidence)
    occupancy_evidence: Tensor
    #: [B, D, W/4] bool: fine cells the refine head ran on
    refined: Tensor

    @property
    def refined_cells(self) -> int:
        return int(self.refined.sum())

    @property
    def total_cells(self) -> int:
        return int(self.refined.numel())


def _conv(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class StereoVoxelNet(nn.Module):
    """See the module docstring. Input: two ``[B, 3, H, W]`` uint8 or float images (0..255)."""

    def __init__(self, config: StereoVoxelConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or StereoVoxelConfig()
        fc, dc, d = c.feature_channels, c.decoder_channels, c.planes
        self.features = nn.Sequential(_conv(3, 16, 2), _conv(16, 24, 2), _conv(24, 24), nn.Conv2d(24, fc, 1))
        self.aggregate = nn.Sequential(_conv(d + fc, 32), _conv(32, 32), nn.Conv2d(32, d, 3, 1, 1))
        self.frustum = nn.Sequential(_conv(2 * c.row_bands, dc), _conv(dc, dc))
        self.coarse = nn.Sequential(_conv(dc, dc), _conv(dc, dc))
        self.coarse_head = nn.Conv2d(dc, 2, 1)
        # point-wise refine head (1x1 convs as Linear layers so it can run on gathered cells only)
        self.refine = nn.Sequential(nn.Linear(2 * dc, dc), nn.ReLU(inplace=True), nn.Linear(dc, 2))
        self.register_buffer("shifts", torch.arange(d, dtype=torch.float32) * c.plane_step, persistent=False)

    # -- geometry helpers ---------------------------------------------------------------------------
    def plane_disparities(self) -> Tensor:
        """[D] full-resolution disparity (px) at each plane's centre."""
        return self.shifts * STRIDE

    def plane_depths(self, fb: float) -> tuple[Tensor, Tensor]:
        """Near and far depth (m) bounding each plane's cell for a rig with ``fx * B = fb`` (px m) at the
        network's input resolution; plane 0's far bound is +inf."""
        half = 0.5 * self.config.plane_step * STRIDE
        d = self.plane_disparities().double()
        near = fb / (d + half)
        far = torch.where(d - half > 0, fb / (d - half).clamp_min(1e-9), torch.full_like(d, float("inf")))
        return near, far

    def fold_batchnorm(self) -> "StereoVoxelNet":
        """Fold every eval BatchNorm into the convolution before it (inference only: the folded
        convolutions carry the running statistics). Outputs unchanged up to float rounding."""
        fold_sequential_batchnorm(self)
        return self

    # -- network ------------------------------------------------------------------------------------
    def cost_volume(self, fl: Tensor, fr: Tensor) -> Tensor:
        """Correlation ``[B, D, h, w]`` of left features with right features shifted by each plane."""
        b, c, h, w = fr.shape
        vols = []
        for s in self.shifts.tolist():
            i, a = int(s), s - int(s)
            sh = fr.new_zeros(fr.shape)
            if i < w:
                sh[..., i:] = fr[..., : w - i]
            if a > 0:
                sh2 = fr.new_zeros(fr.shape)
                if i + 1 < w:
                    sh2[..., i + 1:] = fr[..., : w - i - 1]
                sh = (1.0 - a) * sh + a * sh2
            vols.append((fl * sh).mean(1))
        return torch.stack(vols, 1)

    def forward(self, left: Tensor, right: Tensor, *, prune: bool | None = None) -> StereoVoxelOutput:
        """``prune``: skip refining confidently empty coarse cells (default: in eval mode only)."""
        fl, vol = self.match(left, right)
        return self.decode(fl, vol, tuple(left.shape[-2:]), prune=prune)

    def match(self, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        """First half of :meth:`forward` (features + cost volume): (left features ``[B, C, H/4, W/4]``,
        correlation volume ``[B, D, H/4, W/4]``). Apart so a node can time the matching on its own."""
        if left.shape != right.shape or left.dim() != 4 or left.shape[1] != 3:
            raise ValueError(f"expected two [B, 3, H, W] images of one shape, got {tuple(left.shape)} and {tuple(right.shape)}")
        H, W = left.shape[-2:]
        if H % 8 or W % 8:
            raise ValueError(f"image size {W}x{H} must be a multiple of 8 (resize or pad)")
        c = self.config
        x = torch.cat([left, right], 0).float() / 255.0 - 0.5
        if c.input_norm == "pair":
            n = left.shape[0]
            pair = torch.stack([x[:n], x[n:]], 1)  # [B, 2, 3, H, W]
            mean = pair.mean((1, 3, 4), keepdim=True)
            std = pair.std((1, 3, 4), keepdim=True).clamp_min(1e-3)
            pair = (pair - mean) / (4.0 * std)  # about the range of the fixed scaling
            x = torch.cat([pair[:, 0], pair[:, 1]], 0)
        f = self.features(x)
        fl, fr = f[: left.shape[0]], f[left.shape[0]:]
        return fl, self.cost_volume(fl, fr)

    def decode(self, fl: Tensor, vol: Tensor, size: tuple[int, int], *, prune: bool | None = None) -> StereoVoxelOutput:
        """Second half of :meth:`forward`: aggregation, disparity at full ``size`` (H, W), frustum grid,
        coarse level, pruning and refine, from :meth:`match`'s output."""
        H, W = size
        prune = (not self.training) if prune is None else prune
        c = self.config
        logits = self.aggregate(torch.cat([vol, fl], 1))  # [B, D, h, w]
        prob = logits.softmax(1)
        shift = (prob * self.shifts.view(1, -1, 1, 1)).sum(1, keepdim=True)  # quarter-res px
        disparity = F.interpolate(shift * STRIDE, size=(H, W), mode="bilinear", align_corners=False)[:, 0]

        # frustum grid: [B, 2*bands, D, w]
        bands = c.row_bands
        pmax = F.adaptive_max_pool2d(prob, (bands, prob.shape[-1]))  # [B, D, bands, w]
        pmean = F.adaptive_avg_pool2d(prob, (bands, prob.shape[-1]))
        polar = torch.cat([pmax, pmean], 2).permute(0, 2, 1, 3).contiguous()
        fine_feat = self.frustum(polar)  # [B, C, D, w]
        coarse_feat = self.coarse(F.avg_pool2d(fine_feat, 2))  # [B, C, D/2, w/2]
        coarse_ev = F.softplus(self.coarse_head(coarse_feat))

        up_feat = F.interpolate(coarse_feat, scale_factor=2, mode="nearest")
        up_ev = F.interpolate(coarse_ev, scale_factor=2, mode="nearest")
        bsz, _, dd, ww = fine_feat.shape
        if prune:
            free_belief = (coarse_ev[:, 1] + 1.0) / (coarse_ev.sum(1) + 2.0)
            keep_c = free_belief < c.prune_free_belief
            keep = F.interpolate(keep_c[:, None].float(), scale_factor=2, mode="nearest")[:, 0] > 0.5
        else:
            keep = torch.ones((bsz, dd, ww), dtype=torch.bool, device=fine_feat.device)
        cells = torch.cat([fine_feat, up_feat], 1).permute(0, 2, 3, 1)  # [B, D, w, 2C]
        refined_ev = F.softplus(self.refine(cells[keep]))  # [N, 2], only the kept cells
        occ = up_ev.permute(0, 2, 3, 1).clone()
        occ[keep] = refined_ev
        return StereoVoxelOutput(disparity=disparity, plane_logits=logits, coarse_evidence=coarse_ev,
                                 occupancy_evidence=occ.permute(0, 3, 1, 2).contiguous(), refined=keep)


#: name of the network in weights sidecars (``perception_nodes/models/weights/stereo_voxel/``)
NETWORK = "stereo_voxel"


def load_stereo_voxel(folder: str | None = None) -> tuple[StereoVoxelNet, dict[str, Any]]:
    """(network in eval mode, sidecar) from a weights folder (default: the packaged one); raises
    :class:`~perception_nodes.models.weights_io.WeightsError` when it is missing or for another network."""
    from perception_nodes.models.weights_io import WeightsError, default_weights_dir, load_state, read_sidecar

    path = default_weights_dir(NETWORK) if folder is None else folder
    side = read_sidecar(path, NETWORK)
    try:
        net = StereoVoxelNet(StereoVoxelConfig.from_mapping(side.get("config")))
        net.load_state_dict(load_state(path))
    except (ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: weights do not fit the stereo_voxel network ({exc})") from exc
    return net.eval(), side
