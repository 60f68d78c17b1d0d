"""``bev_fusion``: fine-tunes the BEVFusion-style fuser (:mod:`perception_nodes.models.bev_fusion`) on
generated scenes with cameras, from the packaged LiDAR and camera weights.

**Model**: the packaged ``lidar_detection`` and ``camera_bev`` networks (or the folders in
``model.lidar_weights`` / ``model.camera_weights``) under an identity-initialised fuser, so training starts
from the LiDAR branch's output. Trained: the fuser always; the LiDAR heads with ``train.heads``, the LiDAR
BEV net with ``train.bev_net``; the two encoders (sparse backbone, image network and pooling) stay frozen,
and every BatchNorm stays in eval mode (the model's ``freeze_batchnorm``).

**Samples**: the ``lidar_detection`` branch's (points, boxes, occupancy, curvature; its targets and loss
are reused as they are) plus the rgb8 image of one generator camera (``camera.side``) and that camera's
geometry from the generator's rig, as the ``camera_bev`` branch takes them. No mirror augmentation: a
mirrored image is not the image of the mirrored scene from the same (off-centre) camera.

**Modality dropout** (``train.camera_only`` / ``train.lidar_only``): per training frame, the LiDAR input
is dropped with probability ``camera_only`` and otherwise the camera input with probability
``lidar_only`` (zeros and presence flag 0), so both single-modality modes stay trained.

**Metrics**: the ``lidar_detection`` branch's (car AP, occupancy IoU/ECE, ...) in the mode
``eval.mode`` (``both``, ``lidar`` or ``camera``); ``perception_nodes.learning.bev_fusion_eval`` scores all
modes on held-out scenes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from perception_nodes import topics
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.datasets.frame import Frame
from perception_nodes.learning.branches.base import Batch, Branch, Sample
from perception_nodes.learning.branches.camera_bev import _base_from_camera
from perception_nodes.learning.branches.lidar_detection import LidarDetectionBranch
from perception_nodes.models.bev_fusion import BevFusionNet, BevFusionOutput, from_packaged

__all__ = ["BevFusionBranch"]

MODES = ("both", "lidar", "camera")


@dataclass(frozen=True)
class ModelParams:
    #: weights folders of the two encoders (empty: the packaged ones)
    lidar_weights: str = ""
    camera_weights: str = ""
    #: fuser kernel (see :class:`perception_nodes.models.bev_fusion.BevFusionConfig`)
    kernel: int = 1


@dataclass(frozen=True)
class TrainParams:
    #: also train the LiDAR heads / the LiDAR BEV net (the fuser always trains)
    heads: bool = True
    bev_net: bool = False
    #: modality dropout: P(LiDAR dropped) and, otherwise, P(camera dropped), per training frame
    camera_only: float = 0.25
    lidar_only: float = 0.25

    def __post_init__(self) -> None:
        if not (0.0 <= self.camera_only <= 1.0 and 0.0 <= self.lidar_only <= 1.0):
            raise ConfigError("train.camera_only and train.lidar_only are probabilities")


@dataclass(frozen=True)
class CameraParams:
    side: str = "left"


def _sub(cls: type, values: Any, where: str) -> Any:
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{where.rstrip('.')} must be a mapping")
    return to_dataclass(cls, dict(values or {}), where)


class BevFusionBranch(Branch):
    """Fine-tuning of the camera + LiDAR fuser (see the module docstring)."""

    name: ClassVar[str] = "bev_fusion"
    sections: ClassVar[tuple[str, ...]] = ("model", "train", "camera", "targets", "loss", "eval")
    key_metric: ClassVar[str] = "car_ap_bev"

    def __init__(self, sections: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        sections = dict(sections or {})
        unknown = set(sections) - set(self.sections)
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))} for branch {self.name}")
        self.model_params: ModelParams = _sub(ModelParams, sections.get("model"), "model.")
        self.train_params: TrainParams = _sub(TrainParams, sections.get("train"), "train.")
        self.camera: CameraParams = _sub(CameraParams, sections.get("camera"), "camera.")
        ev = dict(sections.get("eval") or {})
        self.mode = str(ev.pop("mode", "both"))
        if self.mode not in MODES:
            raise ConfigError(f"eval.mode must be one of {MODES}")
        from perception_nodes.models.weights_io import default_weights_dir, read_sidecar

        lidar_dir = self.model_params.lidar_weights or str(default_weights_dir("lidar_detection"))
        # without the LiDAR sidecar's context margin, as from_packaged builds the encoder (one BEV grid)
        lidar_cfg = {**(read_sidecar(lidar_dir, "lidar_detection").get("config") or {}), "context_margin_m": 0.0}
        #: the LiDAR branch with the encoder's config: targets, loss and metrics come from it
        self.lidar_branch = LidarDetectionBranch({"model": lidar_cfg, "targets": sections.get("targets") or {},
                                                  "loss": sections.get("loss") or {}, "augment": {"flip_y": False},
                                                  "eval": ev})
        self.extra_truth_topics = (*LidarDetectionBranch.extra_truth_topics,
                                   topics.CAMERA_IMAGE.format(side=self.camera.side))
        self._geo_cache: dict[tuple[int, int], Any] = {}

    def describe(self) -> dict[str, Any]:
        def plain(x: Any) -> Any:
            return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}

        lb = self.lidar_branch.describe()
        return {"model": plain(self.model_params), "train": plain(self.train_params), "camera": plain(self.camera),
                "targets": lb["targets"], "loss": lb["loss"], "eval": {**lb["eval"], "mode": self.mode}}

    # -- model -------------------------------------------------------------------------------------
    def build_model(self) -> BevFusionNet:
        mp, tp = self.model_params, self.train_params
        net = from_packaged(mp.lidar_weights or None, mp.camera_weights or None, kernel=mp.kernel)
        for p in net.parameters():
            p.requires_grad_(False)
        trained: list[nn.Module] = [net.fuser]
        if tp.heads:
            l = net.lidar
            trained += [l.head_trunk, l.occupancy_head, l.class_head, l.box_head, l.curvature_head]
        if tp.bev_net:
            trained.append(net.lidar.bev)
        for m in trained:
            for p in m.parameters():
                p.requires_grad_(True)
        return net

    def geometry(self, model: BevFusionNet, image_hw: tuple[int, int]) -> Any:
        K, T = _base_from_camera(self.camera.side, image_hw[1], image_hw[0])
        return model.camera.geometry(model.camera.camera_geometry(K, T, image_hw))

    # -- data --------------------------------------------------------------------------------------
    def prepare_frame(self, frame: Frame) -> Sample | None:
        from perception_nodes.codecs.image import image_to_numpy

        img = frame.extras.get(topics.CAMERA_IMAGE.format(side=self.camera.side))
        if img is None or str(img.encoding) != "rgb8":
            return None
        sample = self.lidar_branch.prepare_frame(frame)
        if sample is None:
            return None
        sample["image"] = np.ascontiguousarray(image_to_numpy(img).transpose(2, 0, 1))
        return sample

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        n = batch["image"].shape[0]
        u = torch.rand(n, generator=generator)
        v = torch.rand(n, generator=generator)
        tp = self.train_params
        lidar = u >= tp.camera_only
        camera = ~lidar | (v >= tp.lidar_only)
        return {**batch, "lidar_present": lidar, "camera_present": camera}

    def forward(self, model: nn.Module, batch: Batch, mode: str | None = None) -> BevFusionOutput:
        images = batch["image"]
        pts = list(batch["points"]) if isinstance(batch["points"], (list, tuple)) else [p for p in batch["points"]]
        n = images.shape[0]
        lp, cp = batch.get("lidar_present"), batch.get("camera_present")
        mode = mode or (None if lp is not None else self.mode)
        if mode is not None:
            lp = torch.full((n,), mode in ("both", "lidar"))
            cp = torch.full((n,), mode in ("both", "camera"))
        geo = self.geometry(model, tuple(images.shape[-2:]))  # type: ignore[arg-type]
        with torch.no_grad():  # frozen encoders: no graph through them
            lidar_bev = camera_bev = None
            counts = torch.zeros(n, dtype=torch.int64)
            if bool(lp.any()):
                st, counts = model.lidar.voxelize(pts)
                lidar_bev = model.lidar.backbone_bev(st)
            if bool(cp.any()):
                camera_bev = model.camera_bev(images, geo)
        fused = model.fuse(lidar_bev, camera_bev, n, lp if lidar_bev is not None else None,
                           cp if camera_bev is not None else None)
        counts = torch.where(lp, counts, 0)
        has_input = torch.where(cp, torch.clamp_min(counts, 1), counts)
        out = model.lidar.heads(model.lidar.bev_net(fused), has_input)
        return BevFusionOutput(out, lp, cp)

    def loss(self, output: BevFusionOutput, batch: Batch, *, epoch_progress: float):
        return self.lidar_branch.loss(output.detection, batch, epoch_progress=epoch_progress)

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], *, batch_size: int,
                 device: torch.device, mode: str | None = None) -> dict[str, float]:
        from perception_nodes.learning.detection_metrics import DetectionAccumulator
        from perception_nodes.pipeline.box_refine import BoxRefinement

        if not samples:
            return {}
        acc = DetectionAccumulator(self.lidar_branch, refinement=BoxRefinement(enabled=False),
                                   box_head=None)  # as the node publishes
        was = model.training
        model.eval()
        try:
            for i in range(0, len(samples), batch_size):
                chunk = samples[i: i + batch_size]
                batch = {"image": torch.from_numpy(np.stack([s["image"] for s in chunk])).to(device),
                         "points": [torch.from_numpy(np.asarray(s["points"])).to(device) for s in chunk]}
                acc.add(self.forward(model, batch, mode or self.mode).detection, chunk)
        finally:
            model.train(was)
        return acc.results()
