"""``lidar_detection``: trains :class:`~perception_nodes.models.lidar_detection.LidarDetectionNet` on generated scenes.

The network, its heads and its decoder live in :mod:`perception_nodes.models`; this branch adds what
training needs:

**Samples** (:meth:`LidarDetectionBranch.prepare_frame`, one per LiDAR frame, all in base_link):

* ``points`` ``[N, 4]`` (x, y, z, intensity), cropped to the network's ``point_range`` (the network
  crops anyway; cropping here only saves memory); more than ``targets.max_points`` are thinned evenly;
* ``boxes`` ``[M, 8]`` (x, y, z, l, w, h, yaw, class index) of the ground-truth objects of the network's
  classes whose centre lies in the crop (KITTI names ``Car``/``Pedestrian``/``Cyclist`` match the
  network's lower-case ones; poles and other clutter are background);
* ``occupied`` / ``visible`` ``[H, W]`` uint8 on the network's occupancy grid, from
  ``/ground_truth/occupancy[/visibility]`` (:func:`~perception_nodes.learning.grids.resample_max`);
* ``curvature`` ``[len(curvature_horizons_m)]`` (1/m, + = left; NaN where unknown): the lane-centre
  curvature at each horizon, from ``/ground_truth/curvature`` at 0 m and from the slope of the heading of
  ``/ground_truth/path`` (lane centre 0..30 m ahead) elsewhere (:func:`curvature_at_horizons`).

Points and boxes differ in length between frames; the trainer hands such keys over as lists.

**Targets and loss**: per batch, :func:`~perception_nodes.models.decode.encode_targets` on the network's
head grid and :func:`~perception_nodes.models.losses.detection_loss` (Dirichlet heatmap loss, NIG box
loss at centre cells, Beta occupancy loss on observed cells, NIG curvature loss); the KL weight of the
two evidential classifiers rises linearly over ``loss.kl_anneal_epochs`` (Sensoy's lambda_t).

**Augmentation**: a random mirror about the x axis (y -> -y) of points, boxes (yaw -> -yaw), grids and
curvature (-> -curvature); a mirrored street is a valid street. Flipping x would reverse the driving
direction, which the curvature target does not allow. Optional (off by default): single objects turned
about their own axis (``augment.object_rotate_deg``, :meth:`LidarDetectionBranch.rotate_objects`) and the
whole scan turned about the sensor (``augment.rotate_deg``, :meth:`LidarDetectionBranch.rotate_scene`).

**Fine-tuning** (section ``finetune``, all off by default; start from trained weights with the trainer's
``init_from``): ``freeze_backbone`` keeps the sparse backbone fixed (no gradient; it runs in eval mode, so its
BatchNorms use and keep their running statistics) and trains the BEV net and heads on its BEV features;
``cache_backbone`` also keeps those features per frame (key: a hash of the frame's points, so a mirrored
frame has its own entry), computed once, one frame at a time, on first use: later epochs skip
voxelisation and the backbone. ``freeze_batchnorm`` keeps every BatchNorm in eval mode (a batch of two
scenes gives poor batch statistics; the BEVFusion fuser's fine-tuning does the same).

**Metrics** (:meth:`LidarDetectionBranch.evaluate`, see :func:`detection_validation_metrics`): KITTI
AP R40 BEV and 3D per class (``perception_nodes.eval.detection_eval``, one level ``all``), ECE of the
class evidence of the detections, 90 % interval coverage of the box centres at the ground-truth centre
cells and of the curvature, AUROC of vacuity for wrong vs right detections, occupancy IoU/ECE on visible
cells, curvature MAE beside the trivial zero-curvature baseline.
"""

from __future__ import annotations

import functools

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from perception_nodes import topics
from perception_nodes.calibration import transform_points
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.datasets.frame import Frame
from perception_nodes.learning.branches.base import Batch, Branch, Sample
from perception_nodes.learning.grids import grid_from_msg, resample_max
from perception_nodes.learning.losses import kl_annealing
from perception_nodes.models.bev_grid import BevGrid
from perception_nodes.models.decode import Targets, encode_targets
from perception_nodes.models.lidar_detection import LidarDetectionConfig, LidarDetectionNet, LidarDetectionOutput
from perception_nodes.pipeline.box_refine import BoxRefinement
from perception_nodes.models.losses import LossWeights, detection_loss
from perception_nodes.pipeline.occupancy import GridSpec

__all__ = [
    "AugmentParams",
    "DetectionEvalParams",
    "FinetuneParams",
    "LidarDetectionBranch",
    "LossParams",
    "TargetParams",
    "curvature_at_horizons",
    "path_from_msg",
]


@dataclass(frozen=True)
class TargetParams:
    """How ground truth becomes training targets."""

    #: smallest Gaussian radius of the heatmap (head cells) and the CornerNet IoU of the radius formula
    min_radius: int = 2
    min_overlap: float = 0.1
    #: the box loss is also taken at the cells within this many head cells of each centre cell, each with its
    #: own offset (:func:`~perception_nodes.models.decode.encode_targets`); 0 = the centre cell only
    regression_radius: int = 0
    #: points per frame kept (evenly thinned beyond; memory bound of the in-memory data set)
    max_points: int = 140_000

    def __post_init__(self) -> None:
        if (self.min_radius < 0 or not 0.0 < self.min_overlap < 1.0 or self.max_points < 1
                or self.regression_radius < 0):
            raise ConfigError("targets: min_radius >= 0, 0 < min_overlap < 1, max_points >= 1, regression_radius >= 0")


@dataclass(frozen=True)
class LossParams(LossWeights):
    """:class:`~perception_nodes.models.losses.LossWeights` plus the KL schedule."""

    #: final KL weight of the Dirichlet and Beta losses and the epochs over which it rises from 0
    kl_weight: float = 0.2
    kl_anneal_epochs: float = 3.0

    def __post_init__(self) -> None:
        if min(self.classes, self.boxes, self.occupancy, self.curvature, self.positive_weight, self.nig_regulariser,
               self.kl_weight, self.kl_anneal_epochs, self.box_l1) < 0:
            raise ConfigError("loss weights and kl_anneal_epochs must be >= 0")
        if self.form not in ("ce", "mse"):
            raise ConfigError("loss.form must be ce or mse")

    def weights(self) -> LossWeights:
        return LossWeights(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LossWeights)})


@dataclass(frozen=True)
class AugmentParams:
    #: mirror about the x axis (y -> -y) with probability 1/2
    flip_y: bool = True
    #: rotate the whole scan about base_link's z axis (points, boxes with their yaw, occupancy grids) by an
    #: angle drawn uniformly from +-rotate_deg, with probability rotate_prob; 0 = off. Why: the generator's
    #: cars stand along their lanes (yaw within +-3 deg of the road) and the ego drives along the road, so a
    #: network trained on it never sees a car at an angle to the sensor; real cars park at angles and turn
    #: (KITTI 000008). CenterPoint and SECOND train with global rotations of +-45 deg.
    rotate_deg: float = 0.0
    rotate_prob: float = 0.5
    #: turn single objects about their own vertical axis (SECOND's per-object noise, OpenPCDet's local
    #: rotation) by an angle drawn uniformly from +-object_rotate_deg, each with probability
    #: object_rotate_prob; 0 = off. Why: the global rotation turns the road and its barriers with the cars,
    #: so the network learns little about angled cars on an aligned road, which is what real scans show
    #: (KITTI 000008: parked cars at 15-20 deg, every box of the network at 0 deg). See
    #: :meth:`LidarDetectionBranch.rotate_objects` for what moves and when a turn is skipped.
    object_rotate_deg: float = 0.0
    object_rotate_prob: float = 0.5

    def __post_init__(self) -> None:
        for name in ("rotate_deg", "object_rotate_deg"):
            if not 0.0 <= getattr(self, name) <= 180.0:
                raise ConfigError(f"augment.{name} must be within 0-180, got {getattr(self, name)}")
        for name in ("rotate_prob", "object_rotate_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be within 0-1, got {getattr(self, name)}")


@dataclass(frozen=True)
class DetectionEvalParams:
    """Validation decoding and matching."""

    score_threshold: float = 0.3
    max_detections: int = 100
    ece_bins: int = 10
    #: the node's ``score_threshold`` (params file default): the ``*_published`` metrics score only the
    #: detections whose (calibrated) score is above it, i.e. what the node publishes
    published_threshold: float = 0.3
    #: a detection is right when its BEV centre lies within this distance (m) of an unmatched ground-truth
    #: box of its class (nuScenes' 2 m centre-distance match), for ECE and AUROC
    match_distance_m: float = 2.0
    #: central interval level of the coverage metrics
    coverage_level: float = 0.9
    #: decoded car boxes refined on the scan's points as the node publishes them
    #: (:mod:`perception_nodes.pipeline.box_refine`): true = the default parameters (the node's ``box_refinement``
    #: default), false = off, or a mapping of :class:`~perception_nodes.pipeline.box_refine.BoxRefinement` keys
    box_refinement: Any = True
    #: the learned box head run after the refinement (:mod:`perception_nodes.models.box_head`; the node's
    #: ``box_head``): a weights folder or packaged name (default the packaged head), "" = off. It runs only where the
    #: refinement does (it was trained on refined boxes)
    box_head: str = "lidar_box_head"

    def __post_init__(self) -> None:
        self.refinement()  # a bad setting fails here, not at the first validation
        if not isinstance(self.box_head, str):
            raise ConfigError(f"eval.box_head must be a weights folder name or path (\"\" = off), got {self.box_head!r}")

    def refinement(self) -> BoxRefinement:
        """:attr:`box_refinement` as the parameters the evaluation refines with."""
        return BoxRefinement.from_mapping(self.box_refinement, "eval.box_refinement")

    def head(self) -> Any:
        """:attr:`box_head` loaded (a :class:`~perception_nodes.models.box_head.BoxHead`), or None when off or when
        the refinement is off; a missing or broken folder raises
        :class:`~perception_nodes.models.weights_io.WeightsError`."""
        if not self.box_head or not self.refinement().enabled:
            return None
        return load_box_head_cached(self.box_head)


@functools.lru_cache(maxsize=8)
def load_box_head_cached(name: str) -> Any:
    """The box head of a weights folder or packaged name, loaded once per process (evaluation builds many
    accumulators)."""
    from perception_nodes.models.box_head import NETWORK, load_box_head
    from perception_nodes.models.weights_io import resolve_weights_folder

    return load_box_head(resolve_weights_folder(name, NETWORK))


@dataclass(frozen=True)
class FinetuneParams:
    """What stays fixed when fine-tuning from trained weights (see the module docstring)."""

    #: sparse backbone fixed (no gradient, eval mode): only the BEV net and heads train
    freeze_backbone: bool = False
    #: keep the fixed backbone's BEV features per frame (needs freeze_backbone)
    cache_backbone: bool = False
    #: every BatchNorm in eval mode while training (running statistics used and kept)
    freeze_batchnorm: bool = False
    #: learning rate of the sparse backbone as a fraction of optimizer.lr (a trained backbone only): a pretrained
    #: feature extractor moved slower than the new 2D part keeps more of what it learned (discriminative
    #: fine-tuning, Howard & Ruder 2018)
    backbone_lr_scale: float = 1.0
    #: train only these modules of the network (e.g. ``[curvature_head]``): every other parameter frozen and
    #: every other module in eval mode; the trainer's ``init_from`` may lack these modules' tensors or hold
    #: tensors of another shape for them (a head whose form changed), which then start from their fresh
    #: initialisation. Why: a new head trained on fixed weights leaves every other output exactly as it was
    train_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.cache_backbone and not self.freeze_backbone:
            raise ConfigError("finetune.cache_backbone needs finetune.freeze_backbone (a trained backbone's "
                              "features change every step)")
        if not self.backbone_lr_scale > 0:
            raise ConfigError(f"finetune.backbone_lr_scale must be > 0, got {self.backbone_lr_scale}")
        if self.train_only and self.backbone_lr_scale != 1.0:
            raise ConfigError("finetune.train_only trains those modules alone: backbone_lr_scale does not apply")
        if self.freeze_backbone and self.backbone_lr_scale != 1.0:
            raise ConfigError("finetune.backbone_lr_scale applies to a trained backbone: it needs "
                              "finetune.freeze_backbone false")


def _footprints_overlap(a: Tensor, b: Tensor, margin: float) -> bool:
    """Whether the BEV footprints of boxes ``a`` and ``b`` (x, y, z, l, w, h, yaw, ...), ``a`` grown by ``margin``
    on every side, overlap (separating axis test on the two rectangles)."""
    def corners(box: Tensor, grow: float) -> Tensor:
        c, s = math.cos(float(box[6])), math.sin(float(box[6]))
        hl, hw = float(box[3]) / 2 + grow, float(box[4]) / 2 + grow
        local = torch.tensor([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw]], dtype=torch.float64)
        return local @ torch.tensor([[c, s], [-s, c]], dtype=torch.float64) + box[:2].to(torch.float64)

    pa, pb = corners(a, margin), corners(b, 0.0)
    for poly in (pa, pb):
        for i in range(2):
            edge = poly[i + 1] - poly[i]
            axis = torch.stack([-edge[1], edge[0]])
            ra, rb = pa @ axis, pb @ axis
            if float(ra.max()) < float(rb.min()) or float(rb.max()) < float(ra.min()):
                return False
    return True


#: the modules ``finetune.train_only`` may name: what :meth:`LidarDetectionNet.heads` runs on the fixed features
HEAD_MODULES: tuple[str, ...] = ("head_trunk", "occupancy_head", "class_head", "box_head", "curvature_head")


def _sub(cls: type, values: Any, where: str) -> Any:
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{where.rstrip('.')} must be a mapping, got {type(values).__name__}")
    return to_dataclass(cls, dict(values or {}), where)


# --------------------------------------------------------------------------------------------------
# curvature target


def path_from_msg(msg: Any) -> NDArray[np.float64]:
    """(N, 3) (x, y, yaw) of a ``nav_msgs/Path`` (yaw from the quaternion, rotation about z)."""
    rows = []
    for ps in msg.poses:
        p, q = ps.pose.position, ps.pose.orientation
        yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
        rows.append((float(p.x), float(p.y), yaw))
    return np.asarray(rows, np.float64).reshape(-1, 3)


def curvature_at_horizons(path: NDArray[np.floating] | None, horizons_m: Sequence[float], *,
                          at_ego: float | None = None, half_window_m: float = 1.0) -> NDArray[np.float32]:
    """Lane-centre curvature (1/m) at arc length ``h`` ahead for each horizon.

    From the path's heading: ``kappa(h) = (yaw(h + d) - yaw(h - d)) / (2 d)`` (unwrapped, linear
    interpolation in arc length, the window clipped to the path's ends). ``at_ego`` (the generator's
    exact curvature at the ego) is used for ``h = 0`` when given. NaN where the path does not reach.
    """
    out = np.full(len(horizons_m), np.nan, np.float32)
    if path is not None and len(path) >= 2:
        p = np.asarray(path, np.float64)
        s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(p[:, 0]), np.diff(p[:, 1])))])
        yaw = np.unwrap(p[:, 2])
        for i, h in enumerate(horizons_m):
            if h > s[-1] + 1e-6:
                continue
            a, b = max(0.0, h - half_window_m), min(s[-1], h + half_window_m)
            if b - a > 1e-6:
                out[i] = (np.interp(b, s, yaw) - np.interp(a, s, yaw)) / (b - a)
    if at_ego is not None and math.isfinite(at_ego):
        for i, h in enumerate(horizons_m):
            if abs(h) < 1e-9:
                out[i] = at_ego
    return out


# --------------------------------------------------------------------------------------------------
# the branch


def _batchnorm_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _items(v: Tensor | list[Tensor]) -> list[Tensor]:
    return list(v) if isinstance(v, (list, tuple)) else [t for t in v]


class LidarDetectionBranch(Branch):
    """Evidential detection, occupancy and curvature from one LiDAR scan (see the module docstring)."""

    name: ClassVar[str] = "lidar_detection"
    sections: ClassVar[tuple[str, ...]] = ("model", "targets", "loss", "augment", "eval", "finetune")
    key_metric: ClassVar[str] = "car_ap_bev"
    #: ground-truth topics the data loader attaches to ``Frame.extras`` besides the grids
    extra_truth_topics: ClassVar[tuple[str, ...]] = (topics.GT_PATH, topics.GT_CURVATURE)

    def __init__(self, sections: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        sections = dict(sections or {})
        unknown = set(sections) - set(self.sections)
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))} for branch {self.name}")
        model = sections.get("model") or {}
        if not isinstance(model, Mapping):
            raise ConfigError("model must be a mapping of LidarDetectionConfig keys")
        self.net_config = LidarDetectionConfig.from_mapping(model)
        self.target_params: TargetParams = _sub(TargetParams, sections.get("targets"), "targets.")
        self.loss_params: LossParams = _sub(LossParams, sections.get("loss"), "loss.")
        self.augment_params: AugmentParams = _sub(AugmentParams, sections.get("augment"), "augment.")
        self.eval_params: DetectionEvalParams = _sub(DetectionEvalParams, sections.get("eval"), "eval.")
        self.finetune: FinetuneParams = _sub(FinetuneParams, sections.get("finetune"), "finetune.")
        for knob in ("rotate_deg", "object_rotate_deg"):
            if getattr(self.augment_params, knob) > 0 and self.finetune.cache_backbone:
                raise ConfigError(f"augment.{knob} needs finetune.cache_backbone: false (the cache is keyed by the "
                                  "points, so every rotated scan would add an entry: memory grows without bound)")
        #: backbone BEV features per frame (finetune.cache_backbone): points hash -> (cells, values, voxels)
        self._bev_cache: dict[bytes, tuple[Tensor, Tensor, int]] = {}
        self._bev_cache_owner: int | None = None
        cfg = self.net_config
        occ = cfg.occupancy_grid
        self.occupancy_spec = GridSpec(resolution=occ.cell, size_x=occ.size_x, size_y=occ.size_y,
                                       origin=(occ.origin_x, occ.origin_y))
        self._head_grid: BevGrid | None = None

    def describe(self) -> dict[str, Any]:
        def plain(x: Any) -> Any:
            if dataclasses.is_dataclass(x):
                return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
            if isinstance(x, Mapping):
                return {str(k): plain(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [plain(v) for v in x]
            return x

        augment = plain(self.augment_params)
        # a rotation that is off is left out: the description of a training without it is unchanged
        if self.augment_params.rotate_deg == 0:
            del augment["rotate_deg"], augment["rotate_prob"]
        if self.augment_params.object_rotate_deg == 0:
            del augment["object_rotate_deg"], augment["object_rotate_prob"]
        out = {"model": plain(self.net_config), "targets": plain(self.target_params), "loss": plain(self.loss_params),
               "augment": augment, "eval": plain(self.eval_params)}
        if self.finetune != FinetuneParams():  # only when used: the description of a plain training is unchanged
            out["finetune"] = plain(self.finetune)
            for key, off in (("backbone_lr_scale", 1.0), ("train_only", [])):  # likewise for the keys added later
                if out["finetune"][key] == off:
                    del out["finetune"][key]
        return out

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> LidarDetectionNet:
        net = LidarDetectionNet(self.net_config)
        self._head_grid = net.head_grid
        if self.finetune.freeze_backbone:
            for p in net.backbone.parameters():
                p.requires_grad_(False)
        if self.finetune.train_only:
            for name in self.finetune.train_only:
                if name not in HEAD_MODULES:
                    raise ConfigError(f"finetune.train_only: {name!r} is not one of the heads "
                                      f"({', '.join(HEAD_MODULES)}): the backbone and BEV net run without gradient "
                                      "in this mode")
            keep = {id(p) for name in self.finetune.train_only for p in getattr(net, name).parameters()}
            for p in net.parameters():
                if id(p) not in keep:
                    p.requires_grad_(False)
        return net

    def init_fresh_modules(self) -> tuple[str, ...]:
        """Modules whose tensors ``init_from`` need not hold (``finetune.train_only``): the trainer loads the
        ones that fit and leaves the rest at their fresh initialisation."""
        return tuple(self.finetune.train_only)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Optimizer groups with an ``lr_scale`` each: the backbone at ``finetune.backbone_lr_scale``, the rest at
        1; None (one group) when the scale is 1."""
        if self.finetune.backbone_lr_scale == 1.0:
            return None
        assert isinstance(model, LidarDetectionNet)
        backbone = {id(p) for p in model.backbone.parameters()}
        return [{"params": list(model.backbone.parameters()), "lr_scale": self.finetune.backbone_lr_scale},
                {"params": [p for p in model.parameters() if id(p) not in backbone], "lr_scale": 1.0}]

    @property
    def head_grid(self) -> BevGrid:
        if self._head_grid is None:
            self._head_grid = LidarDetectionNet(self.net_config).head_grid
        return self._head_grid

    # -- data -----------------------------------------------------------------------------------
    def class_index(self, label: str) -> int | None:
        """Index of a ground-truth label among the network's classes (case-insensitive), None for others."""
        low = label.lower()
        for i, c in enumerate(self.net_config.classes):
            if low == c.lower():
                return i
        return None

    def prepare_frame(self, frame: Frame) -> Sample | None:
        occ_msg, vis_msg = frame.extras.get(topics.GT_OCCUPANCY), frame.extras.get(topics.GT_VISIBILITY)
        if occ_msg is None or vis_msg is None:
            return None
        cfg = self.net_config
        # points: the network's input crop (point_range plus its context margin); boxes: point_range
        lo, hi = np.asarray(cfg.input_range[:3], np.float32), np.asarray(cfg.input_range[3:], np.float32)
        pts = np.asarray(frame.points, np.float32)[:, :4]
        pts = pts[np.isfinite(pts).all(1)]
        base = np.concatenate([transform_points(frame.lidar_to_base, pts[:, :3]).astype(np.float32), pts[:, 3:4]], 1)
        base = base[((base[:, :3] >= lo) & (base[:, :3] < hi)).all(1)]
        if len(base) > self.target_params.max_points:
            base = base[np.linspace(0, len(base) - 1, self.target_params.max_points).astype(np.int64)]
        rows, occlusion = [], []
        for b in frame.boxes_in_base():
            k = self.class_index(b.label)
            if k is None:
                continue
            if not cfg.contains_xy(b.center[0], b.center[1]):
                continue
            rows.append([*b.center, *b.size, b.yaw, float(k)])
            occlusion.append(b.occlusion)
        occ, occ_spec = grid_from_msg(occ_msg)
        vis, vis_spec = grid_from_msg(vis_msg)
        path_msg = frame.extras.get(topics.GT_PATH)
        kappa_msg = frame.extras.get(topics.GT_CURVATURE)
        at_ego = float(kappa_msg.data) if kappa_msg is not None else None
        curvature = curvature_at_horizons(path_from_msg(path_msg) if path_msg is not None else None,
                                          cfg.curvature_horizons_m, at_ego=at_ego)
        return {
            "points": np.ascontiguousarray(base, np.float32),
            "boxes": np.asarray(rows, np.float32).reshape(-1, 8),
            # per box row: the bag's KITTI occlusion state (generated bags since generator version 5: truth from
            # the fault-free cast; -1 unknown), for the evaluation's levels; no training target uses it
            "box_occlusion": np.asarray(occlusion, np.int8).reshape(-1),
            "occupied": (resample_max(occ >= 50, occ_spec, self.occupancy_spec) > 0.5).astype(np.uint8),
            "visible": (resample_max(vis >= 50, vis_spec, self.occupancy_spec) > 0.5).astype(np.uint8),
            "curvature": curvature,
            # the sensor in base_link: what the evaluation's KITTI levels need (generated_difficulty)
            "sensor_origin": np.asarray(frame.lidar_to_base, np.float64)[:3, 3].astype(np.float32),
        }

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        ap = self.augment_params
        rotate, turn_objects = ap.rotate_deg > 0, ap.object_rotate_deg > 0
        if not ap.flip_y and not rotate and not turn_objects:
            return batch
        pts, boxes = _items(batch["points"]), _items(batch["boxes"])
        n = len(pts)
        # one draw per sample, whatever happens (flip first: without rotation the stream is as it always was)
        flips = torch.randint(0, 2, (n,), generator=generator) if ap.flip_y else torch.zeros(n, dtype=torch.long)
        if rotate:
            turn = torch.rand(n, generator=generator, dtype=torch.float64) < ap.rotate_prob
            angles = (torch.rand(n, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * math.radians(ap.rotate_deg)
        out: dict[str, Any] = dict(batch)
        out["points"], out["boxes"] = [], []
        occ, vis, curv = batch["occupied"].clone(), batch["visible"].clone(), batch["curvature"].clone()
        origin = batch["sensor_origin"].clone() if "sensor_origin" in batch else None
        for i in range(n):
            p, b = pts[i], boxes[i]
            if int(flips[i]):
                p = p.clone()
                p[:, 1] = -p[:, 1]
                b = b.clone()
                b[:, 1] = -b[:, 1]
                b[:, 6] = -b[:, 6]
                occ[i] = torch.flip(occ[i], (-2,))  # rows follow y; the grid is symmetric about y = 0
                vis[i] = torch.flip(vis[i], (-2,))
                curv[i] = -curv[i]
                if origin is not None:
                    origin[i, 1] = -origin[i, 1]
            if turn_objects and len(b):
                # drawn per box (after the sample's other draws, so that without it the stream is unchanged)
                chosen = torch.rand(len(b), generator=generator, dtype=torch.float64) < ap.object_rotate_prob
                turns = (torch.rand(len(b), generator=generator, dtype=torch.float64) * 2.0 - 1.0) \
                    * math.radians(ap.object_rotate_deg)
                p, b, vis[i] = self.rotate_objects(p, b, vis[i], torch.where(chosen, turns, torch.zeros_like(turns)))
            if rotate and bool(turn[i]):
                # the lane-centre curvature is a property of the path: a rotated scene keeps it
                p, b, occ[i], vis[i] = self.rotate_scene(p, b, occ[i], vis[i], float(angles[i]))
                if origin is not None:
                    a = float(angles[i])
                    x, y = float(origin[i, 0]), float(origin[i, 1])
                    origin[i, 0], origin[i, 1] = math.cos(a) * x - math.sin(a) * y, math.sin(a) * x + math.cos(a) * y
            out["points"].append(p)
            out["boxes"].append(b)
        out.update(occupied=occ, visible=vis, curvature=curv)
        if origin is not None:
            out["sensor_origin"] = origin
        # per-box evaluation data would no longer line up (a rotation can drop boxes that leave the crop), and
        # no training target reads it
        out.pop("box_occlusion", None)
        return out

    def rotate_scene(self, points: Tensor, boxes: Tensor, occupied: Tensor, visible: Tensor,
                     angle: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One sample turned by ``angle`` (rad, counter-clockwise) about base_link's z axis: points and box
        centres rotated, yaw + angle; what leaves the crop is dropped as :meth:`prepare_frame` drops it (boxes
        by their centre); grid cells take the value of the cell their centre came from (nearest), and cells
        that came from outside the grid are unobserved (visible 0, occupied 0)."""
        c, s = math.cos(angle), math.sin(angle)
        dev = points.device  # the trainer moves the batch to its device before augmenting
        rot = torch.tensor([[c, -s], [s, c]], dtype=points.dtype, device=dev)
        ilo = torch.tensor(self.net_config.input_range[:3], dtype=points.dtype, device=dev)
        ihi = torch.tensor(self.net_config.input_range[3:], dtype=points.dtype, device=dev)
        p = points.clone()
        p[:, :2] = points[:, :2] @ rot.T
        p = p[((p[:, :3] >= ilo) & (p[:, :3] < ihi)).all(1)]
        b = boxes.clone()
        if len(b):
            b[:, :2] = boxes[:, :2] @ rot.T.to(device=boxes.device, dtype=boxes.dtype)
            b[:, 6] = torch.remainder(boxes[:, 6] + angle + math.pi, 2.0 * math.pi) - math.pi
            b = b[self.net_config.contains_xy(b[:, 0], b[:, 1])]
        spec = self.occupancy_spec
        h, w = occupied.shape[-2:]
        res = spec.resolution
        ys = spec.origin[1] + (torch.arange(h, dtype=torch.float64, device=occupied.device) + 0.5) * res
        xs = spec.origin[0] + (torch.arange(w, dtype=torch.float64, device=occupied.device) + 0.5) * res
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        # the source of each output cell: its centre turned back by -angle
        sx, sy = c * gx + s * gy, -s * gx + c * gy
        col = torch.floor((sx - spec.origin[0]) / res).long()
        row = torch.floor((sy - spec.origin[1]) / res).long()
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        col, row = col.clamp(0, w - 1), row.clamp(0, h - 1)
        occ = torch.where(inside, occupied[row, col], torch.zeros_like(occupied[0, 0]))
        vis = torch.where(inside, visible[row, col], torch.zeros_like(visible[0, 0]))
        return p, b, occ, vis

    #: how far beyond its box (m, in x / y and above the roof) an object's returns are taken along when it
    #: turns (range noise, mirrors), and the height above the box's bottom below which a return counts as
    #: ground and stays (the road under a car does not turn with it; crown and relief stay below 0.1 m)
    object_margin_m: ClassVar[float] = 0.2
    object_ground_m: ClassVar[float] = 0.15

    def rotate_objects(self, points: Tensor, boxes: Tensor, visible: Tensor,
                       angles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Turn each box ``j`` with ``angles[j] != 0`` (rad, counter-clockwise) about its own vertical axis:
        the returns inside its footprint (grown by :attr:`object_margin_m`) between
        :attr:`object_ground_m` above its bottom and its top (+ margin) turn with it, and its yaw changes by
        the angle. A turn is skipped when the turned footprint would take in a return of anything else
        (another object, a wall, a barrier, vegetation: a non-ground return it did not carry), so no two
        objects overlap and nothing stands inside a car. The sensor would not see the turned car's faces
        exactly so (self-occlusion moves): why the angles stay small. The occupancy truth under the old and
        the new footprint is no longer exact, so those cells become unobserved (``visible`` 0: left out of
        the occupancy loss). A turn is also skipped when the turned footprint (grown by the margin) would
        overlap another labelled box, returns or not; a neighbour's returns inside the margin stay with the
        neighbour. Returns points, boxes and visibility (new tensors; the inputs are unchanged)."""
        p, b, vis = points.clone(), boxes.clone(), visible.clone()
        m, g = self.object_margin_m, self.object_ground_m
        moved = torch.zeros(len(p), dtype=torch.bool, device=p.device)

        def footprint(x: Tensor, y: Tensor, box: Tensor) -> Tensor:
            c, s = torch.cos(box[6]), torch.sin(box[6])
            dx, dy = x - box[0], y - box[1]
            return ((c * dx + s * dy).abs() <= box[3] / 2 + m) & ((-s * dx + c * dy).abs() <= box[4] / 2 + m)

        spec = self.occupancy_spec
        h, w = vis.shape[-2:]
        ys = spec.origin[1] + (torch.arange(h, dtype=p.dtype, device=p.device) + 0.5) * spec.resolution
        xs = spec.origin[0] + (torch.arange(w, dtype=p.dtype, device=p.device) + 0.5) * spec.resolution
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        turning = torch.nonzero(angles).flatten().tolist()
        # each box's (grown) footprint over the returns, once; a turned box's is refreshed after its turn (the
        # returns that moved are excluded by ``moved`` wherever a stale mask could see them)
        inside = [footprint(p[:, 0], p[:, 1], b[k].to(p.dtype)) for k in range(len(b))] if turning else []
        for j in turning:
            box = b[j].to(p.dtype)
            bottom, top = box[2] - box[5] / 2, box[2] + box[5] / 2
            tall = (p[:, 2] >= bottom + g) & (p[:, 2] <= top + m)
            turned = box.clone()
            turned[6] = torch.remainder(box[6] + float(angles[j]) + math.pi, 2.0 * math.pi) - math.pi
            others = [k for k in range(len(b)) if k != j]
            if any(_footprints_overlap(turned, b[k].to(p.dtype), m) for k in others):
                continue  # it would run into another labelled object (one with few or no returns too)
            carried = inside[j] & tall & ~moved
            for k in others:  # a neighbour's returns inside the margin stay with the neighbour
                carried &= ~inside[k]
            if bool((footprint(p[:, 0], p[:, 1], turned) & tall & ~carried).any()):
                continue  # it would run into something
            c, s = math.cos(float(angles[j])), math.sin(float(angles[j]))
            rot = torch.tensor([[c, -s], [s, c]], dtype=p.dtype, device=p.device)
            p[carried, :2] = (p[carried, :2] - box[:2]) @ rot.T + box[:2]
            moved |= carried
            inside[j] = footprint(p[:, 0], p[:, 1], turned)
            vis[footprint(gx, gy, box) | footprint(gx, gy, turned)] = 0
            b[j, 6] = turned[6].to(b.dtype)
        return p, b, vis

    def forward(self, model: nn.Module, batch: Batch) -> LidarDetectionOutput:
        ft = self.finetune
        if ft.train_only and model.training:
            # the fixed part as at inference (eval mode, no graph), the trained modules on its features
            assert isinstance(model, LidarDetectionNet)
            model.eval()
            for name in ft.train_only:
                getattr(model, name).train()
            with torch.no_grad():
                bev, counts = self.backbone_features(model, _items(batch["points"]))  # cached with cache_backbone
                feats = model.bev_net(bev)
            out = model.heads(feats, counts)
            model.train()
            return out
        if not ft.freeze_backbone:
            if ft.freeze_batchnorm and model.training:
                _batchnorm_eval(model)
            return model(_items(batch["points"]))
        assert isinstance(model, LidarDetectionNet)
        if model.training:
            model.backbone.eval()
            if ft.freeze_batchnorm:
                _batchnorm_eval(model)
        bev, counts = self.backbone_features(model, _items(batch["points"]))
        return model.heads(model.bev_net(bev), counts)

    @torch.no_grad()
    def backbone_features(self, model: LidarDetectionNet, scans: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """BEV features ``[B, C, Y, X]`` of the (frozen) sparse backbone and the voxel count per scan; from
        the per-frame cache with ``finetune.cache_backbone`` (filled one frame at a time, so a value does
        not depend on which frames share its batch)."""
        if not self.finetune.cache_backbone:
            st, counts = model.voxelize(list(scans))
            return model.backbone_bev(st), counts
        if self._bev_cache_owner != id(model):  # features of another network are no use
            self._bev_cache.clear()
            self._bev_cache_owner = id(model)
        X, Y, _ = model._bev_shape
        maps, counts = [], []
        for p in scans:
            key = hashlib.blake2b(p.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
            hit = self._bev_cache.get(key)
            if hit is None:
                st, n = model.voxelize([p])
                flat = model.backbone_bev(st)[0].reshape(model.bev_in_channels, Y * X)
                cells = torch.nonzero(flat.abs().sum(0) > 0).view(-1)  # empty cells are exactly zero: not kept
                hit = (cells, flat[:, cells].contiguous(), int(n[0]))
                self._bev_cache[key] = hit
            cells, values, n_vox = hit
            dense = values.new_zeros(model.bev_in_channels, Y * X)
            dense[:, cells] = values
            maps.append(dense.view(model.bev_in_channels, Y, X))
            counts.append(n_vox)
        dev = model.head_trunk[0].weight.device
        return torch.stack(maps).to(dev), torch.tensor(counts, dtype=torch.long, device=dev)

    def targets_of(self, boxes: Sequence[Tensor | NDArray[np.floating]]) -> list[Targets]:
        """CenterPoint targets on the head grid for each sample's ``[M, 8]`` box array."""
        tp, k = self.target_params, len(self.net_config.classes)
        out = []
        for b in boxes:
            a = b.detach().cpu().numpy() if isinstance(b, Tensor) else np.asarray(b)
            a = a.reshape(-1, 8)
            out.append(encode_targets(a[:, :7], a[:, 7].astype(np.int64), self.head_grid, k,
                                      min_radius=tp.min_radius, min_overlap=tp.min_overlap,
                                      regression_radius=tp.regression_radius))
        return out

    def loss(self, output: LidarDetectionOutput, batch: Batch, *, epoch_progress: float) -> tuple[Tensor, dict[str, float]]:
        lp = self.loss_params
        lam = kl_annealing(epoch_progress, lp.kl_anneal_epochs, lp.kl_weight)
        total, parts = detection_loss(
            output, self.targets_of(_items(batch["boxes"])), kl_weight=lam, weights=lp.weights(),
            occupancy_label=batch["occupied"].float(), occupancy_observed=batch["visible"] > 0,
            curvature_target=batch["curvature"].float())
        parts["kl_weight"] = lam
        return total, parts

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], *, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        from perception_nodes.learning.detection_metrics import detection_validation_metrics

        return detection_validation_metrics(self, model, samples, batch_size=batch_size, device=device)
