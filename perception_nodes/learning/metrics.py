"""Validation metrics of occupancy branches over flattened cells: the project's
:mod:`perception_nodes.eval.metrics` when present, minimal local versions otherwise.

* :func:`occupancy_scores`: IoU ``TP / (TP + FP + FN)``, precision and recall of the *occupied* class over
  the masked cells, a cell predicted occupied when its expected probability exceeds ``threshold``.
* :func:`expected_calibration_error`: equal-width-bin ECE of P(occupied) against the binary truth over
  the masked cells (field notes §4: "equal-width bins over observed cells"; the reliability of the
  occupied class, ``mode="positive"`` of ``perception_nodes.eval.metrics.calibration``):
  ECE = Σ_b (n_b / n) · |mean P_b − freq_b(occupied)|.

Undefined values (no selected cell, no occupied cell in prediction nor truth) are NaN.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["expected_calibration_error", "local_ece", "local_occupancy_scores", "occupancy_scores"]


def _flat(prob: ArrayLike, occupied: ArrayLike, mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    y = np.asarray(occupied).reshape(-1) > 0.5
    m = np.ones(p.shape, bool) if mask is None else np.asarray(mask).reshape(-1).astype(bool)
    if not (p.shape == y.shape == m.shape):
        raise ValueError("prob, occupied and mask must have one entry per cell")
    return p, y, m


def local_occupancy_scores(prob: ArrayLike, occupied: ArrayLike, mask: ArrayLike | None = None, *,
                           threshold: float = 0.5) -> dict[str, float]:
    """Local version of :func:`occupancy_scores`."""
    p, y, m = _flat(prob, occupied, mask)
    pred, gt = (p > threshold)[m], y[m]
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    nan = float("nan")
    return {
        "iou": tp / (tp + fp + fn) if tp + fp + fn else nan,
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / (tp + fn) if tp + fn else nan,
    }


def local_ece(prob: ArrayLike, occupied: ArrayLike, mask: ArrayLike | None = None, *, bins: int = 10) -> float:
    """Local version of :func:`expected_calibration_error` (bins right-closed, the first one takes 0)."""
    if bins < 1:
        raise ValueError("bins must be >= 1")
    p, y, m = _flat(prob, occupied, mask)
    p, y = np.clip(p[m], 0.0, 1.0), y[m].astype(np.float64)
    if p.size == 0:
        return float("nan")
    idx = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], p, side="left")
    sp = np.bincount(idx, weights=p, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    return float(np.sum(np.abs(sp - sy)) / p.size)


def occupancy_scores(prob: ArrayLike, occupied: ArrayLike, mask: ArrayLike | None = None, *,
                     threshold: float = 0.5) -> dict[str, float]:
    """``{"iou", "precision", "recall"}`` of the occupied class over the masked cells."""
    try:
        from perception_nodes.eval.metrics.occupancy import occupancy_scores as scores
    except ImportError:
        return local_occupancy_scores(prob, occupied, mask, threshold=threshold)
    p, y, m = _flat(prob, occupied, mask)
    s = scores(p > threshold, y, m)
    return {"iou": float(s.iou), "precision": float(s.precision), "recall": float(s.recall)}


def expected_calibration_error(prob: ArrayLike, occupied: ArrayLike, mask: ArrayLike | None = None, *,
                               bins: int = 10) -> float:
    """Equal-width-bin ECE of P(occupied) over the masked cells."""
    try:
        from perception_nodes.eval.metrics.calibration import expected_calibration_error as ece
    except ImportError:
        return local_ece(prob, occupied, mask, bins=bins)
    p, y, m = _flat(prob, occupied, mask)
    return float(ece(np.clip(p, 0.0, 1.0), y, n_bins=bins, mask=m, mode="positive").ece)
