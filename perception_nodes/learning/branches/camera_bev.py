"""``camera_bev``: the camera -> BEV network (:mod:`perception_nodes.models.camera_bev`) on generated scenes.

**Input**: the rectified image of one generator camera (``camera.side``, default the left one, the one
with depth ground truth), rgb8, at the bag's resolution, and that camera's geometry from the generator's
rig (:func:`perception_nodes.scenario.camera.camera_rig` at the image size -- the same K and mounting the
bag's CameraInfo and ``/tf_static`` carry).

**Targets**:

* occupancy: ``/ground_truth/occupancy`` (occupied >= 50) and its visibility (>= 50) resampled onto the
  network's occupancy grid with :func:`~perception_nodes.learning.grids.resample_max`. The loss runs on
  cells both visible in the ground truth (a fault-free LiDAR cast from 1.73 m; the camera sits at 1.65 m,
  so occlusions are nearly the same) and inside the camera's coverage: the camera is not asked about what
  it cannot see, and those cells keep zero evidence by construction;
* depth (optional, ``loss.depth_weight``): the generated depth image sampled at each feature pixel's
  centre, as a bin index of the network's depth bins (outside the bins or sky: ignored); cross-entropy of
  the depth logits, the LSS/BEVDepth auxiliary depth supervision.

**Loss**: Beta evidential loss on the masked cells (Bayes-risk CE + annealed KL, as ``lidar_occupancy``,
occupied cells weighted ``occupied_weight``) + ``depth_weight`` x depth CE.

**Metrics**: occupied-class IoU / precision / recall at P > ``threshold`` and ECE over the masked cells,
mean vacuity inside and outside coverage, depth-bin accuracy (within ``depth_tolerance_bins``) over
supervised feature pixels. The trivial baseline "everything free" has IoU 0.
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
from perception_nodes.learning.grids import grid_from_msg, resample_max
from perception_nodes.learning.losses import beta_evidential_terms, kl_annealing
from perception_nodes.models.camera_bev import CameraBevConfig, CameraBevNet, CameraBevOutput
from perception_nodes.pipeline.occupancy import GridSpec

__all__ = ["CameraBevBranch"]


@dataclass(frozen=True)
class CameraParams:
    #: generator camera: left (depth ground truth), right or mono
    side: str = "left"

    def __post_init__(self) -> None:
        if self.side not in ("left", "right", "mono"):
            raise ValueError(f"camera.side must be left, right or mono, got {self.side!r}")


@dataclass(frozen=True)
class LossParams:
    kl_weight: float = 1.0
    kl_anneal_epochs: float = 5.0
    occupied_weight: float = 4.0
    depth_weight: float = 0.5


@dataclass(frozen=True)
class EvalParams:
    threshold: float = 0.5
    ece_bins: int = 10
    depth_tolerance_bins: int = 2


def _sub(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    return to_dataclass(cls, dict(values or {}), where)


def _base_from_camera(side: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    from perception_nodes.scenario.camera import camera_rig

    spec = camera_rig(width, height)[side]
    T = np.eye(4)
    T[:3, :3] = spec.base_from_optical()
    T[:3, 3] = spec.position
    return spec.K, T


class CameraBevBranch(Branch):
    """Evidential camera BEV occupancy (see the module docstring)."""

    name: ClassVar[str] = "camera_bev"
    sections: ClassVar[tuple[str, ...]] = ("model", "camera", "loss", "eval")
    key_metric: ClassVar[str] = "iou"

    def __init__(self, sections: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        sections = dict(sections or {})
        unknown = set(sections) - set(self.sections)
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))} for branch {self.name}")
        self.net_config = CameraBevConfig.from_mapping(sections.get("model"))
        self.camera: CameraParams = _sub(CameraParams, sections.get("camera"), "camera.")
        self.loss_params: LossParams = _sub(LossParams, sections.get("loss"), "loss.")
        self.eval_params: EvalParams = _sub(EvalParams, sections.get("eval"), "eval.")
        self.extra_truth_topics = (topics.CAMERA_IMAGE.format(side=self.camera.side), topics.GT_DEPTH)
        occ = self.net_config.occupancy_grid
        self.grid = GridSpec(occ.cell, occ.size_x, occ.size_y, (occ.origin_x, occ.origin_y))

    def describe(self) -> dict[str, Any]:
        def plain(x: Any) -> Any:
            if dataclasses.is_dataclass(x):
                return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
            if isinstance(x, (tuple, list)):
                return [plain(v) for v in x]
            return x

        return {"model": plain(self.net_config), "camera": plain(self.camera), "loss": plain(self.loss_params),
                "eval": plain(self.eval_params)}

    def build_model(self) -> CameraBevNet:
        return CameraBevNet(self.net_config)

    # -- data -------------------------------------------------------------------------------------
    def prepare_frame(self, frame: Frame) -> Sample | None:
        from perception_nodes.codecs.image import image_to_numpy

        img_msg = frame.extras.get(topics.CAMERA_IMAGE.format(side=self.camera.side))
        occ_msg, vis_msg = frame.extras.get(topics.GT_OCCUPANCY), frame.extras.get(topics.GT_VISIBILITY)
        if img_msg is None or occ_msg is None or vis_msg is None or str(img_msg.encoding) != "rgb8":
            return None
        rgb = np.ascontiguousarray(image_to_numpy(img_msg).transpose(2, 0, 1))  # [3, H, W] uint8
        occ, occ_spec = grid_from_msg(occ_msg)
        vis, vis_spec = grid_from_msg(vis_msg)
        sample: Sample = {
            "image": rgb,
            "occupied": resample_max(occ >= 50, occ_spec, self.grid),
            "visible": resample_max(vis >= 50, vis_spec, self.grid),
        }
        h, w = rgb.shape[1:]
        s = self.net_config.stride
        fh, fw = -(-h // s), -(-w // s)
        target = np.full((fh, fw), -1, np.int64)
        depth_msg = frame.extras.get(topics.GT_DEPTH)
        if depth_msg is not None and self.camera.side == "left":
            depth = image_to_numpy(depth_msg).astype(np.float64)
            v = np.minimum(np.arange(fh) * s + (s - 1) // 2, h - 1)
            u = np.minimum(np.arange(fw) * s + (s - 1) // 2, w - 1)
            target = self.net_config.bins.index(depth[np.ix_(v, u)])
        sample["depth_bin"] = target
        return sample

    def _geometry(self, model: CameraBevNet, image_hw: tuple[int, int]):
        K, T = _base_from_camera(self.camera.side, image_hw[1], image_hw[0])
        return model.geometry(model.camera_geometry(K, T, image_hw))

    def forward(self, model: nn.Module, batch: Batch) -> CameraBevOutput:
        images = batch["image"]
        return model(images, self._geometry(model, tuple(images.shape[-2:])))  # type: ignore[operator]

    # -- loss ---------------------------------------------------------------------------------------
    def _mask(self, out: CameraBevOutput, batch: Batch) -> Tensor:
        return (batch["visible"] > 0.5) & out.coverage.to(batch["visible"].device)

    def loss(self, output: CameraBevOutput, batch: Batch, *, epoch_progress: float) -> tuple[Tensor, dict[str, float]]:
        lp = self.loss_params
        ev = output.occupancy_evidence
        m = self._mask(output, batch)
        # only the masked cells (digamma/lgamma over the whole 0.25 m grid cost more than the network)
        a, b = ev[:, 0][m] + 1.0, ev[:, 1][m] + 1.0
        y = batch["occupied"].float()[m]
        ce, kl = beta_evidential_terms(a, b, y)
        lam = kl_annealing(epoch_progress, lp.kl_anneal_epochs, lp.kl_weight)
        w = 1.0 + (lp.occupied_weight - 1.0) * y
        n = max(1, int(m.sum()))
        ce_mean, kl_mean = (w * ce).sum() / n, (w * kl).sum() / n
        loss = ce_mean + lam * kl_mean
        logs = {"ce": float(ce_mean.detach()), "kl": float(kl_mean.detach()), "kl_weight": lam}
        if lp.depth_weight > 0:
            tgt = batch["depth_bin"].long()
            if bool((tgt >= 0).any()):
                d = F.cross_entropy(output.depth_logits, tgt, ignore_index=-1)
            else:
                d = output.depth_logits.sum() * 0.0
            loss = loss + lp.depth_weight * d
            logs["depth_ce"] = float(d.detach())
        return loss, logs

    # -- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], *, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        from perception_nodes.learning.metrics import expected_calibration_error, occupancy_scores

        if not samples:
            return {}
        was = model.training
        model.eval()
        ps, ys, ms, u_in, u_out = [], [], [], [], []
        d_ok = d_n = 0
        tol = self.eval_params.depth_tolerance_bins
        try:
            for i in range(0, len(samples), batch_size):
                chunk = samples[i: i + batch_size]
                batch = {k: torch.from_numpy(np.stack([s[k] for s in chunk])).to(device) for k in chunk[0]}
                out = self.forward(model, batch)
                ev = out.occupancy_evidence.float()
                a, b = ev[:, 0] + 1.0, ev[:, 1] + 1.0
                m = self._mask(out, batch)
                cov = out.coverage.to(device).expand_as(m)
                vac = 2.0 / (a + b)
                ps.append((a / (a + b)).cpu().numpy().reshape(-1))
                ys.append(batch["occupied"].float().cpu().numpy().reshape(-1))
                ms.append(m.cpu().numpy().reshape(-1))
                u_in.append(vac[cov].cpu().numpy())
                u_out.append(vac[~cov].cpu().numpy())
                tgt = batch["depth_bin"]
                sup = tgt >= 0
                if bool(sup.any()):
                    pred = out.depth_logits.argmax(1)
                    d_ok += int(((pred - tgt).abs() <= tol)[sup].sum())
                    d_n += int(sup.sum())
        finally:
            model.train(was)
        p, y, m = (np.concatenate(v) for v in (ps, ys, ms))
        ep = self.eval_params
        ui, uo = np.concatenate(u_in), np.concatenate(u_out)
        return {
            **occupancy_scores(p, y, m, threshold=ep.threshold),
            "ece": expected_calibration_error(p, y, m, bins=ep.ece_bins),
            "vacuity_covered": float(ui.mean()) if ui.size else math.nan,
            "vacuity_uncovered": float(uo.mean()) if uo.size else math.nan,
            "occupied_fraction": float((y[m] > 0.5).mean()) if m.any() else math.nan,
            "depth_accuracy": d_ok / d_n if d_n else math.nan,
            "frames": float(len(samples)),
        }
