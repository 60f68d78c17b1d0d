"""Occupancy-grid metrics: IoU / precision / recall / F1 of occupied cells, and Chamfer distance.

IoU of the occupied class over evaluated cells is the "completion IoU" of semantic scene completion
(Song et al., SSCNet, CVPR 2017; SemanticKITTI, Behley et al., ICCV 2019) and the voxel IoU of
StereoVoxelNet (Li et al., "Real-Time Obstacle Detection Based on Occupancy Voxels From a Stereo Camera
Using Deep Neural Networks", ICRA 2023, arXiv:2209.08459). Cells outside ``mask`` (e.g. never observed
by the reference sensor) are left out of every count.

Chamfer distance follows StereoVoxelNet's evaluation, which calls PyTorch3D's ``chamfer_distance`` with
its defaults on the occupied voxel centres in metres: for each point the *squared* Euclidean distance to
the nearest point of the other set, averaged per direction, and the two directional means *summed*::

    CD(A, B) = mean_{a∈A} min_{b∈B} |a - b|² + mean_{b∈B} min_{a∈A} |a - b|²

``squared=False`` gives the same with plain distances (the "L1-Chamfer" of many reconstruction papers,
in metres). Their 2D IoU adds 1 to numerator and denominator (smoothing); we do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ChamferResult", "OccupancyScores", "chamfer_distance", "nearest_distances", "occupancy_iou",
           "occupancy_scores"]


def _masked(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None) -> tuple[NDArray, NDArray]:
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same shape")
    if p.dtype != np.bool_ or g.dtype != np.bool_:
        raise TypeError("pred_occupied and gt_occupied must be boolean arrays (threshold first)")
    if mask is None:
        return p.ravel(), g.ravel()
    m = np.asarray(mask)
    if m.shape != p.shape or m.dtype != np.bool_:
        raise ValueError("mask must be a boolean array of the same shape as the grids")
    return p[m], g[m]


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den > 0 else empty


@dataclass(frozen=True)
class OccupancyScores:
    """Confusion counts over evaluated cells and the scores derived from them.

    ``iou`` = TP/(TP+FP+FN) for occupied; ``free_iou`` = TN/(TN+FN+FP) for free; ``miou`` their mean.
    Undefined ratios (zero denominator) take the ``empty`` value given to :func:`occupancy_scores`.
    """

    iou: float
    precision: float
    recall: float
    f1: float
    free_iou: float
    miou: float
    tp: int
    fp: int
    fn: int
    tn: int
    n_cells: int


def occupancy_scores(pred_occupied: ArrayLike, gt_occupied: ArrayLike, mask: ArrayLike | None = None,
                     *, empty: float = float("nan")) -> OccupancyScores:
    """IoU, precision, recall, F1 of the occupied class and IoU of free space over the cells in ``mask``."""
    p, g = _masked(pred_occupied, gt_occupied, mask)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    tn = int(p.size - tp - fp - fn)
    precision = _ratio(tp, tp + fp, empty)
    recall = _ratio(tp, tp + fn, empty)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, empty)  # = 2PR/(P+R), defined even when one of P, R is not
    iou = _ratio(tp, tp + fp + fn, empty)
    free_iou = _ratio(tn, tn + fp + fn, empty)
    return OccupancyScores(iou=iou, precision=precision, recall=recall, f1=f1, free_iou=free_iou,
                           miou=(iou + free_iou) / 2.0, tp=tp, fp=fp, fn=fn, tn=tn, n_cells=int(p.size))


def occupancy_iou(pred_occupied: ArrayLike, gt_occupied: ArrayLike, mask: ArrayLike | None = None,
                  *, empty: float = float("nan")) -> float:
    """IoU of the occupied class, ``|P ∩ G| / |P ∪ G|`` over cells in ``mask`` (all cells if None).

    Returns ``empty`` (NaN by default) when neither grid has an occupied evaluated cell.
    """
    return occupancy_scores(pred_occupied, gt_occupied, mask, empty=empty).iou


def _points(x: ArrayLike, name: str) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must be an (N, D) array of points, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite coordinates")
    return a


def nearest_distances(query: ArrayLike, ref: ArrayLike, *, chunk_elems: int = 4_000_000) -> NDArray:
    """Euclidean distance from each ``query`` point to its nearest ``ref`` point (brute force, chunked).

    Differences are taken coordinate by coordinate (not via |a|² + |b|² - 2ab, which loses precision
    far from the origin); memory stays near ``chunk_elems`` float64 values per step.
    """
    q = _points(query, "query")
    r = _points(ref, "ref")
    if q.shape[1] != r.shape[1]:
        raise ValueError("point sets must have the same dimension")
    if r.shape[0] == 0:
        return np.full(q.shape[0], np.inf)
    out = np.empty(q.shape[0])
    step = max(1, chunk_elems // max(r.shape[0], 1))
    for start in range(0, q.shape[0], step):
        blk = q[start:start + step]
        d2 = np.zeros((blk.shape[0], r.shape[0]))
        for k in range(q.shape[1]):
            diff = blk[:, k, None] - r[None, :, k]
            d2 += diff * diff
        out[start:start + step] = np.sqrt(d2.min(axis=1))
    return out


@dataclass(frozen=True)
class ChamferResult:
    """Directional means and their sum (see module docstring for the convention)."""

    a_to_b: float
    b_to_a: float
    chamfer: float
    squared: bool
    truncate: float | None


def chamfer_distance(a: ArrayLike, b: ArrayLike, *, truncate: float | None = None,
                     squared: bool = True) -> ChamferResult:
    """Chamfer distance between point sets ``a`` (N, 3) and ``b`` (M, 3), StereoVoxelNet convention.

    ``a_to_b`` = mean over a of the (squared, by default) distance to the nearest b; ``b_to_a`` likewise;
    ``chamfer`` = their sum. ``truncate`` caps each nearest distance (in metres, before squaring) so a few
    far outliers cannot dominate. Empty sets: both empty -> 0; a point set against an empty one has
    infinite distance per point (or ``truncate``), and a direction with no query points contributes 0.

    scipy is not a dependency, so nearest neighbours are found by chunked brute force — O(N·M), fine
    for voxel clouds of a few thousand points (5k x 5k takes ~0.2 s).
    """
    pa = _points(a, "a")
    pb = _points(b, "b")
    if truncate is not None and not truncate > 0:
        raise ValueError("truncate must be positive")

    def direction(q: NDArray, r: NDArray) -> float:
        if q.shape[0] == 0:
            return 0.0
        d = nearest_distances(q, r)
        if truncate is not None:
            d = np.minimum(d, truncate)
        return float(np.mean(d * d if squared else d))

    ab = direction(pa, pb)
    ba = direction(pb, pa)
    return ChamferResult(a_to_b=ab, b_to_a=ba, chamfer=ab + ba, squared=squared, truncate=truncate)
