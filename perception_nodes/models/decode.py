"""Evidential CenterPoint decoding (head maps -> typed boxes with covariance) and its training targets.

Box convention (base_link, metres, radians): centre ``(x, y, z)`` of the box, size ``(l, w, h)`` along the
box's own x, y, z axes, ``yaw`` about z (0 = along base_link x). Per object the regression targets sit at
the *centre cell* ``(iy, ix) = floor((centre - origin) / cell)`` and are, in :data:`REGRESSION_NAMES`
order: the sub-cell offset of the centre (cells, in [0, 1)), ``z``, ``log l, log w, log h``,
``sin yaw, cos yaw`` and optionally the BEV velocity (CenterPoint, Yin et al. CVPR 2021, sec. 3-4). With a
``regression_radius`` r the cells around the centre cell get the same rows, the offset measured from each
cell (in [-r, r + 1)); decoding reads whichever cell peaks, so it needs no change.

The heatmap target of class ``k`` is the maximum of 2D Gaussians splatted at the centre cells of its
objects, radius from the box's BEV size as CornerNet/CenterPoint compute it (``min_overlap`` 0.1, at least
``min_radius`` = 2 cells); the evidential classifier is trained towards :func:`dirichlet_targets` of it.

Decoding: the score of class ``k`` at a cell is its Dirichlet expected probability ``alpha_k / S``;
peaks are cells equal to their 3 x 3 max-pool (CenterPoint's "max-pool NMS"), the top K over all classes
above a threshold become boxes. Each box's covariance comes from the predictive (Student-t) variance of
the NIG heads, aleatoric + epistemic: centre from the offset (x cell^2), z directly, yaw propagated
from (sin, cos) to first order (see :func:`yaw_variance_from_sincos`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

if TYPE_CHECKING:  # the network module imports this one
    from perception_nodes.models.calibration import DetectionCalibration
    from perception_nodes.models.lidar_detection import LidarDetectionOutput

from perception_nodes.boxes import Box3D
from perception_nodes.evidential import nig as nig_ops
from perception_nodes.evidential.dirichlet import dirichlet_expected_probability
from perception_nodes.evidential.nig import NIG
from perception_nodes.models.bev_grid import BevGrid

__all__ = [
    "REGRESSION_NAMES",
    "VELOCITY_NAMES",
    "BoxAtCells",
    "Detections",
    "Targets",
    "decode",
    "decode_batch",
    "dirichlet_targets",
    "draw_gaussian",
    "encode_targets",
    "gaussian_radius",
    "regression_names",
    "yaw_variance_from_sincos",
]

#: Regression targets of every box, in head channel order.
REGRESSION_NAMES: tuple[str, ...] = ("dx", "dy", "z", "log_l", "log_w", "log_h", "sin_yaw", "cos_yaw")
#: Appended when the network is given two sweeps and predicts velocity (m/s in base_link).
VELOCITY_NAMES: tuple[str, ...] = ("vx", "vy")

#: Variance of a yaw uniform on the circle, pi^2 / 3: the cap of the linearised yaw variance (beyond it the
#: first-order propagation means "direction unknown" and a larger number carries no more information).
MAX_YAW_VARIANCE = math.pi**2 / 3.0


def regression_names(velocity: bool) -> tuple[str, ...]:
    return REGRESSION_NAMES + (VELOCITY_NAMES if velocity else ())


# --------------------------------------------------------------------------------------------------
# decoded boxes


@dataclass
class Detections:
    """Boxes of one scan as arrays (``N`` boxes; ``N = 0`` is a valid, empty result).

    ``class_probabilities`` are the Dirichlet expected probabilities of all classes plus background (last
    column); ``score`` is that of the box's class; ``vacuity`` = (K + 1) / S at the box's cell (1: no
    evidence). ``covariance`` is the 6 x 6 (x, y, z, roll, pitch, yaw) pose covariance of ROS
    ``PoseWithCovariance``; ``size_variance`` the first-order variance of (l, w, h).
    """

    class_names: tuple[str, ...]
    center: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    size: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    yaw: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0,), np.float32))
    label: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0,), np.int64))
    score: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_probabilities: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    vacuity: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0,), np.float32))
    covariance: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 6, 6), np.float32))
    size_variance: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    velocity: Optional[NDArray[np.float32]] = None

    def __post_init__(self) -> None:
        if self.class_probabilities.shape == (0, 0):
            self.class_probabilities = np.zeros((0, len(self.class_names) + 1), np.float32)

    def __len__(self) -> int:
        return int(self.center.shape[0])

    @property
    def class_ids(self) -> list[str]:
        """Class name of every box (vision_msgs carries class ids as strings)."""
        return [self.class_names[i] for i in self.label.tolist()]

    def to_box3d(self) -> list[Box3D]:
        """The boxes as :class:`perception_nodes.boxes.Box3D` (what evaluation and the report consume)."""
        return [
            Box3D(label=self.class_names[int(self.label[i])], center=tuple(float(v) for v in self.center[i]),
                  size=tuple(float(v) for v in self.size[i]), yaw=float(self.yaw[i]), score=float(self.score[i]),
                  covariance=tuple(float(v) for v in self.covariance[i].reshape(36)))
            for i in range(len(self))
        ]


def yaw_variance_from_sincos(sin: torch.Tensor, cos: torch.Tensor, var_sin: torch.Tensor,
                             var_cos: torch.Tensor) -> torch.Tensor:
    """First-order variance of ``yaw = atan2(sin, cos)`` for independent ``sin``, ``cos`` estimates.

    ``d yaw / d sin = cos / r^2``, ``d yaw / d cos = -sin / r^2`` with ``r^2 = sin^2 + cos^2``, so
    ``var = (cos^2 var_sin + sin^2 var_cos) / r^4``, capped at :data:`MAX_YAW_VARIANCE` (also the value at r = 0). The head's
    (sin, cos) need not lie on the unit circle; a short vector (small r) honestly means a vague yaw.
    """
    r2 = sin * sin + cos * cos
    r4 = r2 * r2
    tiny = torch.finfo(r4.dtype).tiny
    var = (cos * cos * var_sin + sin * sin * var_cos) / r4.clamp_min(tiny)
    # (0, 0) has no direction at all: 0 / 0 must read as "unknown", not as "exact"
    var = torch.where(r4 > tiny, var, torch.full_like(var, MAX_YAW_VARIANCE))
    return var.clamp(max=MAX_YAW_VARIANCE)


#: the box NIG at given head-grid cells: ``(iy, ix) -> NIG of [T, N]`` (a network may compute it there only)
BoxAtCells = Callable[[torch.Tensor, torch.Tensor], NIG]


def decode(
    class_alpha: torch.Tensor,
    box: NIG | BoxAtCells,
    grid: BevGrid,
    class_names: Sequence[str],
    *,
    max_detections: int = 100,
    score_threshold: float = 0.3,
    nms_kernel: int = 3,
    max_vacuity: float = 1.0,
    unestimated_variance: float = 1e6,
    calibration: Optional["DetectionCalibration"] = None,
    threshold_on_raw_score: bool = False,
) -> Detections:
    """Boxes of ONE sample from its head maps.

    ``class_alpha``: ``[K + 1, H, W]`` Dirichlet parameters (background last). ``box``: NIG of
    ``[T, H, W]`` tensors with ``T`` = ``len(regression_names(velocity))``, or a function giving that NIG
    at the peak cells only (:data:`BoxAtCells`: the box head then runs on ~100 cells, not the grid). With ``K + 1`` classes a cell
    without evidence scores ``1 / (K + 1)`` for every class, so ``score_threshold`` should lie above that
    (the default 0.3 does for K = 3). Cells whose vacuity ``(K + 1) / S`` is not below ``max_vacuity``
    give no box (default 1: only cells without any evidence, e.g. a scan with no usable point). Non-finite
    maps give no boxes (never NaN boxes).

    ``calibration`` (:class:`~perception_nodes.models.calibration.DetectionCalibration`, from the weights'
    sidecar; ``None`` = identity) scales the class evidence before scores, peaks and vacuity are computed,
    maps the box's class probabilities through its score map (foreground prior, Platt; peaks are picked on
    the unmapped scores, the threshold applies to the mapped score) and scales the centre, z and yaw
    variances before the covariance is built. ``threshold_on_raw_score``: apply ``score_threshold`` to the
    unmapped score instead (the evaluation's "same boxes before and after calibration").
    """
    names = tuple(class_names)
    k = len(names)
    if class_alpha.dim() != 3 or class_alpha.shape[0] != k + 1:
        raise ValueError(f"class_alpha must be [{k + 1}, H, W], got {tuple(class_alpha.shape)}")
    lazy = callable(box)
    if not lazy:
        _check_regression_rows(box.gamma.shape[0])  # type: ignore[union-attr]
    _, h, w = class_alpha.shape
    if (h, w) != (grid.height, grid.width):
        raise ValueError(f"maps are {h} x {w} but the grid is {grid.height} x {grid.width}")
    with torch.no_grad():
        if calibration is not None:
            class_alpha = calibration.apply_alpha(class_alpha.float())
        prob = dirichlet_expected_probability(class_alpha.float(), dim=0)
        fg = torch.nan_to_num(prob[:k], nan=0.0)
        pooled = F.max_pool2d(fg.unsqueeze(0), nms_kernel, stride=1, padding=nms_kernel // 2).squeeze(0)
        peaks = torch.where(pooled == fg, fg, torch.zeros_like(fg)).reshape(-1)
        top = min(max_detections, peaks.numel())
        scores, flat = torch.topk(peaks, top)
        vac_map = (k + 1) / class_alpha.float().sum(0).reshape(-1)
        raw_scores = scores
        rows = None  # the published class probabilities at the top-k cells, when the calibration maps them
        if calibration is not None and calibration.maps_scores:
            # peaks are those of the raw scores; the threshold applies to the published (mapped) score of
            # the box's class (the Platt map is monotone per probability, but rows whose mapped foreground
            # probabilities sum above 1 are rescaled, which can re-order a few boxes)
            cells = flat % (h * w)
            rows = calibration.probabilities(class_alpha.float().reshape(k + 1, -1)[:, cells].T)
            scores = rows[torch.arange(len(flat)), flat // (h * w)]
        gate = raw_scores if threshold_on_raw_score else scores
        # raw_scores > 0: topk fills up with non-peak cells (zeros) when there are fewer peaks than
        # max_detections; their mapped scores are not zero, so they must be dropped by the raw value
        keep = (gate > score_threshold) & (raw_scores > 0) & (vac_map[flat % (h * w)] < max_vacuity)
        scores, flat = scores[keep], flat[keep]
        if rows is not None:
            rows = rows[keep]
        label = flat // (h * w)
        cell = flat % (h * w)
        iy, ix = cell // w, cell % w
        if lazy:
            at = NIG(*(t.float() for t in box(iy, ix)))  # type: ignore[operator]
            _check_regression_rows(at.gamma.shape[0])
        else:
            at = NIG(*(t.float()[:, iy, ix] for t in box))  # type: ignore[union-attr]
        n_reg = at.gamma.shape[0]
        g = at.gamma  # [T, N]
        var = nig_ops.predictive_variance(at)
        cx = grid.origin_x + (ix.float() + g[0]) * grid.cell
        cy = grid.origin_y + (iy.float() + g[1]) * grid.cell
        center = torch.stack([cx, cy, g[2]], 1)
        size = torch.exp(g[3:6]).T
        size_var = (size * size) * var[3:6].T  # delta method for exp
        yaw = torch.atan2(g[6], g[7])
        var_yaw = yaw_variance_from_sincos(g[6], g[7], var[6], var[7])
        c_xy: Any = 1.0
        c_z: Any = 1.0
        if calibration is not None:
            c_xy, c_z = calibration.centre_variance_scale, calibration.z_variance_scale
            c_yaw: Any = calibration.yaw_variance_scale
            if calibration.class_variance_scales:  # per box, by its class
                per = torch.tensor([calibration.variance_scales(n) for n in names], dtype=var.dtype,
                                   device=var.device)[label]
                c_xy, c_z, c_yaw = per[:, 0], per[:, 1], per[:, 2]
            var_yaw = (var_yaw * c_yaw).clamp(max=MAX_YAW_VARIANCE)
        cov = nig_ops.pose_covariance(c_xy * var[0] * grid.cell**2, c_xy * var[1] * grid.cell**2, c_z * var[2],
                                      var_yaw, unestimated_variance)
        probs = prob[:, iy, ix].T if rows is None else rows
        vac = vac_map[cell]
        velocity = g[8:10].T if n_reg > len(REGRESSION_NAMES) else None
        finite = torch.isfinite(center).all(1) & torch.isfinite(size).all(1) & torch.isfinite(yaw)
        finite &= torch.isfinite(cov).flatten(1).all(1) & torch.isfinite(probs).all(1)
        if velocity is not None:
            finite &= torch.isfinite(velocity).all(1)

    def np32(t: torch.Tensor) -> NDArray[np.float32]:
        return t[finite].cpu().numpy().astype(np.float32, copy=False)

    return Detections(
        class_names=names,
        center=np32(center),
        size=np32(size),
        yaw=np32(yaw),
        label=label[finite].cpu().numpy().astype(np.int64),
        score=np32(scores),
        class_probabilities=np32(probs),
        vacuity=np32(vac),
        covariance=np32(cov),
        size_variance=np32(size_var),
        velocity=None if velocity is None else np32(velocity),
    )


def _check_regression_rows(n_reg: int) -> None:
    if n_reg not in (len(REGRESSION_NAMES), len(REGRESSION_NAMES) + len(VELOCITY_NAMES)):
        raise ValueError(f"box NIG must have {len(REGRESSION_NAMES)} (+2 velocity) channels, got {n_reg}")


def decode_batch(output: "LidarDetectionOutput", grid: BevGrid, class_names: Sequence[str],
                 **kwargs: object) -> list[Detections]:
    """:func:`decode` for every scan of a network output; scans without voxels give empty lists directly."""
    out = []
    for b in range(output.class_alpha.shape[0]):
        if int(output.num_voxels[b]) == 0:
            out.append(Detections(class_names=tuple(class_names)))
            continue
        box_at = getattr(output, "box_at", None)
        box: NIG | BoxAtCells
        if box_at is not None:  # the network computes the box head at the peaks only
            box = (lambda iy, ix, b=b: box_at(b, iy * grid.width + ix))
        else:
            box = NIG(*(t[b] for t in output.box))
        out.append(decode(output.class_alpha[b], box, grid, class_names, **kwargs))  # type: ignore[arg-type]
    return out


# --------------------------------------------------------------------------------------------------
# training targets


def gaussian_radius(length_cells: float, width_cells: float, min_overlap: float = 0.1) -> float:
    """CornerNet's Gaussian radius for a box of ``length x width`` cells, as CenterPoint uses it.

    The smallest of three radii: the corner shift that keeps IoU >= ``min_overlap`` when both corners move
    outward, one in and one out, or both inward (Law & Deng, ECCV 2018; the formula as implemented in
    CenterNet/CenterPoint, including its known quirks, so our heatmaps match theirs).
    """
    hh, ww = float(length_cells), float(width_cells)
    b1 = hh + ww
    c1 = ww * hh * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * c1, 0.0))) / 2
    b2 = 2 * (hh + ww)
    c2 = (1 - min_overlap) * ww * hh
    r2 = (b2 + math.sqrt(max(b2 * b2 - 16 * c2, 0.0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (hh + ww)
    c3 = (min_overlap - 1) * ww * hh
    r3 = (b3 + math.sqrt(max(b3 * b3 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: NDArray[np.float32], cx: int, cy: int, radius: int) -> None:
    """Splat ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, ``sigma = (2 r + 1) / 6``, at (cy, cx) by elementwise max.

    The peak is exactly 1 at the centre cell; the window is clipped at the map border.
    """
    h, w = heatmap.shape
    sigma = (2 * radius + 1) / 6.0
    ys = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(ys[:, None] ** 2 + ys[None, :] ** 2) / (2 * sigma * sigma)).astype(np.float32)
    y0, y1 = max(0, cy - radius), min(h, cy + radius + 1)
    x0, x1 = max(0, cx - radius), min(w, cx + radius + 1)
    if y0 >= y1 or x0 >= x1:
        return
    patch = g[y0 - (cy - radius): y1 - (cy - radius), x0 - (cx - radius): x1 - (cx - radius)]
    np.maximum(heatmap[y0:y1, x0:x1], patch, out=heatmap[y0:y1, x0:x1])


@dataclass
class Targets:
    """Training targets of one sample: heatmap ``[K, H, W]``, and per kept object its flat centre cell
    ``iy * W + ix``, class, and regression row in :func:`regression_names` order. ``kept`` marks which input
    boxes have their centre on the grid (the others are not targets)."""

    heatmap: NDArray[np.float32]
    indices: NDArray[np.int64]
    labels: NDArray[np.int64]
    regression: NDArray[np.float32]
    kept: NDArray[np.bool_]
    #: the cells the box loss is taken at and their rows (``regression_radius`` > 0: the centre cells and their
    #: neighbours, each row's offset relative to its own cell); None = the centre cells (``indices``) only
    box_indices: Optional[NDArray[np.int64]] = None
    box_regression: Optional[NDArray[np.float32]] = None

    def box_cells(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """The flat cells and regression rows the box loss is taken at."""
        if self.box_indices is None or self.box_regression is None:
            return self.indices, self.regression
        return self.box_indices, self.box_regression


def encode_targets(
    boxes: NDArray[np.floating],
    labels: NDArray[np.integer],
    grid: BevGrid,
    num_classes: int,
    *,
    velocities: Optional[NDArray[np.floating]] = None,
    min_radius: int = 2,
    min_overlap: float = 0.1,
    regression_radius: int = 0,
) -> Targets:
    """CenterPoint targets of one sample from ``boxes`` ``[M, 7]`` = (x, y, z, l, w, h, yaw) and class
    indices ``labels`` ``[M]`` in ``[0, num_classes)``. With ``velocities`` ``[M, 2]`` the regression rows
    get (vx, vy). Two objects on one centre cell: the later one's regression wins (the heatmap keeps both).

    ``regression_radius`` r > 0 also gives every cell within r cells (Chebyshev) of a centre cell a box row,
    its offset measured from that cell (so it lies in ``[-r, r + 1)``) and everything else the object's; a cell
    near two centres belongs to the nearer one, except that an object's own centre cell is always its own
    (the later object's, as above, when two share it). Why: decoding reads the box at the heatmap's peak, and on cars
    seen in part that peak is often a cell beside the centre cell, where a centre-only loss never trained
    the regression (``box_indices`` / ``box_regression``; ``indices`` stay the centre cells)."""
    if regression_radius < 0:
        raise ValueError("regression_radius must be >= 0")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError("boxes and labels differ in length")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    if len(boxes) and (boxes[:, 3:6] <= 0).any():
        raise ValueError("box sizes must be positive")
    heatmap = np.zeros((num_classes, grid.height, grid.width), np.float32)
    fx = (boxes[:, 0] - grid.origin_x) / grid.cell
    fy = (boxes[:, 1] - grid.origin_y) / grid.cell
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    kept = np.isfinite(boxes).all(1) & (ix >= 0) & (ix < grid.width) & (iy >= 0) & (iy < grid.height)
    rows = []
    for m in np.flatnonzero(kept):
        x, y, z, l, w, hgt, yaw = boxes[m]
        r = max(min_radius, int(gaussian_radius(l / grid.cell, w / grid.cell, min_overlap)))
        draw_gaussian(heatmap[labels[m]], int(ix[m]), int(iy[m]), r)
        row = [fx[m] - ix[m], fy[m] - iy[m], z, math.log(l), math.log(w), math.log(hgt), math.sin(yaw), math.cos(yaw)]
        if velocities is not None:
            row += [float(v) for v in np.asarray(velocities, np.float64).reshape(-1, 2)[m]]
        rows.append(row)
    n_reg = len(regression_names(velocities is not None))
    regression = np.asarray(rows, np.float32).reshape(-1, n_reg)
    box_indices = box_regression = None
    if regression_radius > 0:
        box_indices, box_regression = _neighbour_rows(fx[kept], fy[kept], ix[kept], iy[kept], regression, grid,
                                                      regression_radius)
    return Targets(
        heatmap=heatmap,
        indices=(iy[kept] * grid.width + ix[kept]).astype(np.int64),
        labels=labels[kept],
        regression=regression,
        kept=kept,
        box_indices=box_indices,
        box_regression=box_regression,
    )


def _neighbour_rows(fx: NDArray[np.float64], fy: NDArray[np.float64], ix: NDArray[np.int64], iy: NDArray[np.int64],
                    regression: NDArray[np.float32], grid: BevGrid, radius: int
                    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Cells within ``radius`` of each centre cell with the object's row, offset taken from the cell; each cell
    once: an object's own centre cell first (two on one cell: the later one, as the centre rows), then the
    object whose centre is nearest the cell's middle (ties: the earlier object)."""
    d = np.arange(-radius, radius + 1)
    dx, dy = (a.reshape(-1) for a in np.meshgrid(d, d))
    cx = ix[:, None] + dx[None]  # [M, (2r+1)^2]
    cy = iy[:, None] + dy[None]
    obj = np.broadcast_to(np.arange(len(ix))[:, None], cx.shape)
    dist = np.hypot(cx + 0.5 - fx[:, None], cy + 0.5 - fy[:, None])
    # a centre can lie 0.71 cells from its own cell's middle and 0.5 from a neighbour's: without this a close
    # neighbour (pedestrians in a group) could take the cell the heatmap peaks at for this object
    own = (dx == 0) & (dy == 0)
    dist[:, own] = -1.0 - np.arange(len(ix))[:, None] / max(len(ix), 1)  # later object first, as the centre rows
    on = (cx >= 0) & (cx < grid.width) & (cy >= 0) & (cy < grid.height)
    cx, cy, obj, dist = cx[on], cy[on], obj[on], dist[on]
    order = np.lexsort((obj, dist))  # nearest centre first; ties to the earlier object
    flat = (cy * grid.width + cx)[order]
    _, first = np.unique(flat, return_index=True)
    keep = order[np.sort(first)]
    rows = regression[obj[keep]].copy()
    rows[:, 0] = (fx[obj[keep]] - cx[keep]).astype(np.float32)
    rows[:, 1] = (fy[obj[keep]] - cy[keep]).astype(np.float32)
    return (cy[keep] * grid.width + cx[keep]).astype(np.int64), rows


def dirichlet_targets(heatmap: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Soft Dirichlet labels (classes + background, summing to 1) from a ``[K, ...]`` heatmap.

    Foreground classes take their heatmap value; where overlapping Gaussians of different classes sum above
    1 they are scaled to sum to 1; background takes the rest. At an object's centre the label is one-hot.
    """
    total = heatmap.sum(dim=dim, keepdim=True)
    fg = heatmap / total.clamp_min(1.0)
    bg = (1.0 - fg.sum(dim=dim, keepdim=True)).clamp_min(0.0)
    return torch.cat([fg, bg], dim=dim)
