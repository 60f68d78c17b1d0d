"""``stereo_voxel``: the learned stereo network (:mod:`perception_nodes.models.stereo_voxel`) on generated scenes.

**Input**: the generator's rectified pair (``/sensing/camera/{left,right}/image_rect``, rgb8) at the bag's
resolution (a multiple of 8 in both directions); the rig is the generator's
(:func:`perception_nodes.scenario.camera.camera_rig` at that size: the K, baseline and mounting the bag's
CameraInfo and ``/tf_static`` carry).

**Targets**:

* disparity: ``/ground_truth/camera/left/disparity`` (px) where it is finite, > 0 and inside the planes'
  range (``max_disparity``); elsewhere ignored;
* frustum occupancy: every cell (plane k, column j) of the network's frustum grid is sampled at
  ``samples_depth x samples_column`` points (depths evenly spaced in disparity across the plane, rays
  across the 4 columns, at the camera's height: the grid is 2-D) taken into base_link and looked up in
  ``/ground_truth/occupancy`` / ``/ground_truth/visibility``. A cell is *visible* when at least half its
  points are visible and inside the grid, *occupied* when any visible point is occupied. The loss and the
  metrics use visible cells only: the network is not asked about what no sensor saw.

**Loss**: Beta evidential loss (Bayes-risk CE + annealed KL, as ``camera_bev``; occupied cells weighted
``occupied_weight``) on the visible fine cells and, with ``coarse_weight``, on the coarse cells (targets
max-pooled 2x2, visible = any child visible) + ``disparity_weight`` x smooth-L1 of the full-resolution
disparity on the valid pixels.

**Metrics** (held-out frames, eval mode = pruning on): depth ``abs_rel``, ``within_3px``, ``within_5pct``
(:func:`perception_nodes.pipeline.stereo_eval.depth_metrics`, 0-``max_depth`` m); occupied-class IoU,
precision, recall, Brier score and ECE on the visible fine cells; the share of fine cells refined; trivial
baselines on the same cells: ``all_free`` (P = 0: IoU 0, Brier = occupied share) and ``constant`` (P = the
occupied share of these very cells: the best constant, Brier = f (1 - f)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception_nodes import topics
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.datasets.frame import Frame
from perception_nodes.learning.branches.base import Batch, Branch, Sample
from perception_nodes.learning.grids import grid_from_msg
from perception_nodes.learning.losses import beta_evidential_terms, kl_annealing
from perception_nodes.models.stereo_voxel import STRIDE, StereoVoxelConfig, StereoVoxelNet, StereoVoxelOutput
from perception_nodes.pipeline.occupancy import GridSpec
from perception_nodes.pipeline.stereo import StereoGeometry

__all__ = ["StereoVoxelBranch", "frustum_cell_points", "frustum_targets", "generator_geometry"]


@dataclass(frozen=True)
class TargetParams:
    #: points per cell along depth and across the cell's 4 columns
    samples_depth: int = 4
    samples_column: int = 3
    #: depth (m) the plane-0 cell (zero disparity: "far") is sampled to
    far_depth: float = 60.0


@dataclass(frozen=True)
class LossParams:
    kl_weight: float = 1.0
    kl_anneal_epochs: float = 3.0
    occupied_weight: float = 4.0
    coarse_weight: float = 0.5
    disparity_weight: float = 0.2


@dataclass(frozen=True)
class EvalParams:
    threshold: float = 0.5
    ece_bins: int = 10
    max_depth: float = 80.0


def _sub(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    return to_dataclass(cls, dict(values or {}), where)


def generator_geometry(width: int, height: int) -> tuple[StereoGeometry, np.ndarray]:
    """The generator rig's pair geometry at ``width x height`` and its left camera's base_from_optical 4x4."""
    from perception_nodes.scenario.camera import camera_rig

    rig = camera_rig(width, height)
    left, right = rig["left"], rig["right"]
    baseline = float(np.linalg.norm(np.subtract(left.position, right.position)))
    g = StereoGeometry(width, height, float(left.K[0, 0]), float(left.K[1, 1]), float(left.K[0, 2]),
                       float(left.K[1, 2]), baseline)
    T = np.eye(4)
    T[:3, :3] = left.base_from_optical()
    T[:3, 3] = left.position
    return g, T


def frustum_cell_points(net_config: StereoVoxelConfig, geom: StereoGeometry, base_from_optical: np.ndarray,
                        tp: TargetParams) -> np.ndarray:
    """[D, W/4, S, 2] base_link (x, y) of the sample points of every frustum cell (see the module doc)."""
    d = np.arange(net_config.planes) * net_config.plane_step * STRIDE  # full-res disparity per plane
    half = 0.5 * net_config.plane_step * STRIDE
    frac = (np.arange(tp.samples_depth) + 0.5) / tp.samples_depth
    disp = (d[:, None] - half) + 2 * half * frac[None, :]  # [D, Sd]
    min_disp = geom.fb / tp.far_depth
    disp = np.maximum(disp, min_disp)
    z = geom.fb / disp  # [D, Sd]
    w4 = geom.width // STRIDE
    u = STRIDE * np.arange(w4)[:, None] + (np.arange(tp.samples_column) + 0.5) * STRIDE / tp.samples_column - 0.5
    x_opt = (u[None, :, None, :] - geom.cx) * z[:, None, :, None] / geom.fx  # [D, w, Sd, Sc]
    z_opt = np.broadcast_to(z[:, None, :, None], x_opt.shape)
    pts = np.stack([x_opt, np.zeros_like(x_opt), z_opt], -1).reshape(-1, 3)
    T = np.asarray(base_from_optical, dtype=np.float64)
    base = pts @ T[:3, :3].T + T[:3, 3]
    return base[:, :2].reshape(net_config.planes, w4, tp.samples_depth * tp.samples_column, 2)


def frustum_targets(points: np.ndarray, occ: np.ndarray, vis: np.ndarray, spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """(occupied [D, w] float32, visible [D, w] bool) of the cells whose sample points are ``points``,
    from a ground-truth grid (``occ``/``vis`` bool (H, W) on ``spec``)."""
    ox, oy = spec.origin  # type: ignore[misc]
    col = np.floor((points[..., 0] - ox) / spec.resolution).astype(np.int64)
    row = np.floor((points[..., 1] - oy) / spec.resolution).astype(np.int64)
    h, w = occ.shape
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    r, c = np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)
    v = inside & vis[r, c]
    o = v & occ[r, c]
    visible = v.mean(-1) >= 0.5
    return (o.any(-1) & visible).astype(np.float32), visible


class StereoVoxelBranch(Branch):
    """Learned stereo: disparity + frustum Beta occupancy (see the module docstring)."""

    name: ClassVar[str] = "stereo_voxel"
    sections: ClassVar[tuple[str, ...]] = ("model", "targets", "loss", "eval")
    key_metric: ClassVar[str] = "iou"

    def __init__(self, sections: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        sections = dict(sections or {})
        unknown = set(sections) - set(self.sections)
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))} for branch {self.name}")
        try:
            self.net_config = StereoVoxelConfig.from_mapping(sections.get("model"))
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
        self.target_params: TargetParams = _sub(TargetParams, sections.get("targets"), "targets.")
        self.loss_params: LossParams = _sub(LossParams, sections.get("loss"), "loss.")
        self.eval_params: EvalParams = _sub(EvalParams, sections.get("eval"), "eval.")
        self.extra_truth_topics = (topics.CAMERA_IMAGE.format(side="left"), topics.CAMERA_IMAGE.format(side="right"),
                                   topics.GT_DISPARITY)
        self._points: dict[tuple[int, int], np.ndarray] = {}

    def describe(self) -> dict[str, Any]:
        def plain(x: Any) -> Any:
            return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}

        return {"model": plain(self.net_config), "targets": plain(self.target_params),
                "loss": plain(self.loss_params), "eval": plain(self.eval_params)}

    def build_model(self) -> StereoVoxelNet:
        return StereoVoxelNet(self.net_config)

    # -- data -------------------------------------------------------------------------------------
    def cell_points(self, width: int, height: int) -> np.ndarray:
        key = (width, height)
        if key not in self._points:
            g, T = generator_geometry(width, height)
            self._points[key] = frustum_cell_points(self.net_config, g, T, self.target_params)
        return self._points[key]

    def prepare_frame(self, frame: Frame) -> Sample | None:
        from perception_nodes.codecs.image import image_to_numpy

        msgs = [frame.extras.get(t) for t in self.extra_truth_topics]
        occ_msg, vis_msg = frame.extras.get(topics.GT_OCCUPANCY), frame.extras.get(topics.GT_VISIBILITY)
        if any(m is None for m in msgs) or occ_msg is None or vis_msg is None:
            return None
        if str(msgs[0].encoding) != "rgb8" or str(msgs[1].encoding) != "rgb8":
            return None
        left, right = (np.ascontiguousarray(image_to_numpy(m).transpose(2, 0, 1)) for m in msgs[:2])
        h, w = left.shape[1:]
        if left.shape != right.shape or h % 8 or w % 8:
            return None
        disp = image_to_numpy(msgs[2]).astype(np.float32)
        ok = np.isfinite(disp) & (disp > 0) & (disp <= self.net_config.max_disparity)
        occ, spec = grid_from_msg(occ_msg)
        vis, vspec = grid_from_msg(vis_msg)
        if vspec != spec:
            return None
        o, v = frustum_targets(self.cell_points(w, h), occ >= 50, vis >= 50, spec)
        return {"left": left, "right": right, "disparity": np.where(ok, disp, -1.0).astype(np.float32),
                "occupied": o, "visible": v}

    def forward(self, model: nn.Module, batch: Batch) -> StereoVoxelOutput:
        return model(batch["left"], batch["right"])  # type: ignore[no-any-return]

    # -- loss ---------------------------------------------------------------------------------------
    def _beta_loss(self, ev: Tensor, y: Tensor, m: Tensor, lam: float) -> Tensor:
        a, b = ev[:, 0][m] + 1.0, ev[:, 1][m] + 1.0
        yy = y[m]
        ce, kl = beta_evidential_terms(a, b, yy)
        w = 1.0 + (self.loss_params.occupied_weight - 1.0) * yy
        return (w * (ce + lam * kl)).sum() / max(1, int(m.sum()))

    def loss(self, output: StereoVoxelOutput, batch: Batch, *, epoch_progress: float) -> tuple[Tensor, dict[str, float]]:
        lp = self.loss_params
        lam = kl_annealing(epoch_progress, lp.kl_anneal_epochs, lp.kl_weight)
        y, m = batch["occupied"].float(), batch["visible"] > 0.5
        fine = self._beta_loss(output.occupancy_evidence, y, m, lam)
        yc = F.max_pool2d((y * m)[:, None], 2)[:, 0]
        mc = F.max_pool2d(m[:, None].float(), 2)[:, 0] > 0.5
        coarse = self._beta_loss(output.coarse_evidence, yc, mc, lam)
        gt = batch["disparity"]
        valid = gt > 0
        disp = F.smooth_l1_loss(output.disparity[valid], gt[valid]) if bool(valid.any()) else output.disparity.sum() * 0.0
        loss = fine + lp.coarse_weight * coarse + lp.disparity_weight * disp
        return loss, {"occ_fine": float(fine.detach()), "occ_coarse": float(coarse.detach()),
                      "disparity_l1": float(disp.detach()), "kl_weight": lam}

    # -- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], *, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        from perception_nodes.learning.metrics import expected_calibration_error, occupancy_scores
        from perception_nodes.pipeline.stereo_eval import depth_metrics

        if not samples:
            return {}
        was = model.training
        model.eval()
        ps, ys, ms, z_est, z_ref = [], [], [], [], []
        refined = total = 0
        h, w = samples[0]["left"].shape[1:]
        g, _ = generator_geometry(w, h)
        try:
            for i in range(0, len(samples), batch_size):
                chunk = samples[i: i + batch_size]
                batch = {k: torch.from_numpy(np.stack([s[k] for s in chunk])).to(device) for k in chunk[0]}
                out = self.forward(model, batch)
                ev = out.occupancy_evidence.float()
                ps.append((ev[:, 0] + 1.0) / (ev.sum(1) + 2.0))
                ys.append(batch["occupied"].float())
                ms.append(batch["visible"] > 0.5)
                refined += out.refined_cells
                total += out.total_cells
                d = out.disparity.cpu().numpy()
                gt = batch["disparity"].cpu().numpy()
                z_est.append(np.where(d > 0.5, g.fb / np.maximum(d, 1e-6), np.nan))
                z_ref.append(np.where(gt > 0, g.fb / np.maximum(gt, 1e-6), np.nan))
        finally:
            model.train(was)
        p, y, m = (torch.cat(v).cpu().numpy().reshape(-1) for v in (ps, ys, ms))
        ep = self.eval_params
        dm = depth_metrics(np.concatenate(z_est), np.concatenate(z_ref), g, max_depth=ep.max_depth)
        pm, ym = p[m], y[m]
        f = float(ym.mean()) if ym.size else math.nan
        return {
            **occupancy_scores(p, y, m, threshold=ep.threshold),
            "brier": float(((pm - ym) ** 2).mean()) if ym.size else math.nan,
            "ece": expected_calibration_error(p, y, m, bins=ep.ece_bins),
            "occupied_fraction": f,
            "brier_all_free": f,
            "brier_constant": f * (1.0 - f),
            "refined_share": refined / total if total else math.nan,
            "abs_rel": dm["abs_rel"] if dm["abs_rel"] is not None else math.nan,
            "within_3px": dm["within_3px"] if dm["within_3px"] is not None else math.nan,
            "within_5pct": dm["within_5pct"] if dm["within_5pct"] is not None else math.nan,
            "frames": float(len(samples)),
        }
