"""Training loss of the LiDAR detection network: the four evidential heads against their targets.

* classes: Sensoy's evidential loss (:func:`~perception_nodes.evidential.dirichlet.evidential_classification_loss`)
  of every head-grid cell against :func:`~perception_nodes.models.decode.dirichlet_targets` of the
  Gaussian heatmap. Cells near objects are rare, so each cell is weighted ``1 + positive_weight * h``
  (``h`` the largest heatmap value there), and the sum is divided by the number of objects, as
  CenterPoint normalises its focal loss by the number of positives; optionally focal-modulated
  (``focal_gamma``);
* boxes: NIG loss (Student-t NLL + evidence regulariser, Amini 2020) at each object's centre cell,
  averaged over objects and targets;
* occupancy: Beta evidential loss on *observed* cells only (field notes section 4), so cells the scan did not
  see keep their vacuity;
* curvature: NIG loss per horizon where the target is finite.

Each part is returned separately for logging; the caller anneals ``kl_weight`` (Sensoy's lambda_t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from perception_nodes.evidential.dirichlet import dirichlet_expected_probability, evidential_classification_loss
from perception_nodes.evidential.nig import NIG, evidential_regression_loss
from perception_nodes.models.decode import Targets, dirichlet_targets
from perception_nodes.models.lidar_detection import LidarDetectionOutput

__all__ = ["LossWeights", "detection_loss"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss parts (config data)."""

    classes: float = 1.0
    boxes: float = 1.0
    occupancy: float = 1.0
    curvature: float = 1.0
    #: extra weight of cells under an object's Gaussian (1 + positive_weight * heatmap)
    positive_weight: float = 4.0
    #: NIG evidence regulariser weight (Amini's lambda) and whether it is width-normalised (Meinert 2023)
    nig_regulariser: float = 0.01
    nig_normalised: bool = True
    #: Bayes-risk form of the Dirichlet loss: "ce" or "mse"
    form: str = "ce"
    #: focal modulation of the class loss: each cell's loss is multiplied by ``(1 - p_t) ** focal_gamma``,
    #: ``p_t`` the (detached) expected probability of its soft target -- the easy background cells, nearly
    #: all of the grid, stop drowning the few object cells (CenterPoint's focal loss, for the same reason)
    focal_gamma: float = 0.0
    #: weight of observed cells labelled occupied in the occupancy loss (free ones weigh 1): a few % of cells
    occupied_weight: float = 1.0
    #: weight of an L1 term on the box regression's mean (the NIG's gamma) at the object cells, beside the NIG
    #: loss (CenterPoint's box loss is this L1). Why: the NIG NLL scales the mean's gradient by the predicted
    #: precision, so where the target is ambiguous (the length and heading of a car seen in part) the network can
    #: lower the loss by widening the variance instead of moving the mean (Seitzer et al. 2022, "On the pitfalls
    #: of heteroscedastic uncertainty estimation"); the L1 term keeps a constant pull on the mean there. 0 = off.
    box_l1: float = 0.0


def detection_loss(
    out: LidarDetectionOutput,
    targets: Sequence[Targets],
    *,
    kl_weight: float,
    weights: LossWeights = LossWeights(),
    occupancy_label: Optional[Tensor] = None,
    occupancy_observed: Optional[Tensor] = None,
    curvature_target: Optional[Tensor] = None,
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of a batch and its parts.

    ``targets``: one :class:`~perception_nodes.models.decode.Targets` per scan, on the head grid.
    ``occupancy_label`` / ``occupancy_observed``: ``[B, H_occ, W_occ]`` (1 occupied / 0 free; bool mask of
    observed cells), optional. ``curvature_target``: ``[B, n_horizons]`` with NaN where unknown, optional.
    """
    bsz = out.class_alpha.shape[0]
    if len(targets) != bsz:
        raise ValueError(f"{len(targets)} targets for a batch of {bsz}")
    dev = out.class_alpha.device
    heat = torch.stack([torch.from_numpy(t.heatmap) for t in targets]).to(dev)  # [B, K, H, W]
    if heat.shape[1] + 1 != out.class_alpha.shape[1] or heat.shape[-2:] != out.class_alpha.shape[-2:]:
        raise ValueError(f"heatmap {tuple(heat.shape)} does not fit class maps {tuple(out.class_alpha.shape)}")
    soft = dirichlet_targets(heat, dim=1)
    cell_w = 1.0 + weights.positive_weight * heat.amax(dim=1)
    n_obj = sum(len(t.indices) for t in targets)
    if weights.focal_gamma > 0:
        p_t = (dirichlet_expected_probability(out.class_alpha.detach(), dim=1) * soft).sum(1)
        cell_w = cell_w * (1.0 - p_t).clamp_min(0.0) ** weights.focal_gamma
    cls = (evidential_classification_loss(out.class_alpha, soft, kl_weight, weights.form, dim=1) * cell_w).sum()
    cls = cls / max(1, n_obj)

    box_terms, l1_terms = [], []
    for b, t in enumerate(targets):
        cells, rows = t.box_cells()  # the centre cells, and their neighbours with a regression radius
        if len(cells) == 0:
            continue
        idx = torch.from_numpy(cells).to(dev)
        p = NIG(*(m[b].flatten(1)[:, idx] for m in out.box))  # [T, M]
        y = torch.from_numpy(rows).to(dev).T
        box_terms.append(evidential_regression_loss(p, y, weights.nig_regulariser, weights.nig_normalised).reshape(-1))
        l1_terms.append((p.gamma - y).abs().reshape(-1))
    box = torch.cat(box_terms).mean() if box_terms else out.box.gamma.sum() * 0.0
    box_l1 = torch.cat(l1_terms).mean() if l1_terms else out.box.gamma.sum() * 0.0

    occ = out.occupancy_evidence.sum() * 0.0
    if occupancy_label is not None:
        mask = torch.ones_like(occupancy_label, dtype=torch.bool) if occupancy_observed is None else occupancy_observed
        alpha = (out.occupancy_evidence + 1.0).movedim(1, -1)[mask]  # [N, 2] (occupied, free)
        y = occupancy_label[mask].float()
        if len(y):
            w = 1.0 + (weights.occupied_weight - 1.0) * y
            occ = (evidential_classification_loss(alpha, torch.stack([y, 1.0 - y], -1), kl_weight, weights.form)
                   * w).mean()

    curv = out.curvature.gamma.sum() * 0.0
    if curvature_target is not None:
        known = torch.isfinite(curvature_target)
        if bool(known.any()):
            p = NIG(*(m[known] for m in out.curvature))
            curv = evidential_regression_loss(p, curvature_target[known], weights.nig_regulariser,
                                              weights.nig_normalised).mean()

    total = weights.classes * cls + weights.boxes * box + weights.occupancy * occ + weights.curvature * curv
    if weights.box_l1 > 0:
        total = total + weights.box_l1 * box_l1
    parts = {"classes": float(cls.detach()), "boxes": float(box.detach()), "box_l1": float(box_l1.detach()),
             "occupancy": float(occ.detach()),
             "curvature": float(curv.detach()), "objects": float(n_obj), "total": float(total.detach())}
    return total, parts
