"""Scores of quantised probabilities from cell counts: what lets occupancy scoring stream.

An occupancy grid carries P(occupied) in whole percent (0..100) and vacuity in whole percent, so every
score of a set of cells is a function of a small count table:

* ``hist[y, k]``: cells with truth ``y`` (0 free, 1 occupied) whose probability reads ``k`` percent
  (an unknown cell is counted at its stated probability, 50);
* ``score_hist[g, k]``: cells of group ``g`` (0 right / in, 1 wrong / out) whose uncertainty reads ``k``.

From ``hist``: the confusion counts at ``P > threshold`` (an unknown cell at 0.5 is *not* occupied),
IoU/precision/recall, the Brier score (Brier 1950) ``mean (p - y)^2``, the negative log-likelihood
``-mean [y log p + (1-y) log(1-p)]`` with ``p`` clipped to ``[eps, 1-eps]`` (``eps`` = half a percent,
the grid's quantum: a written 0 means "below 0.5 %"), and ECE with equal-width right-closed bins exactly
as :func:`~perception_nodes.eval.metrics.calibration.expected_calibration_error`. From ``score_hist``:
the exact AUROC with ties counted half (the Mann–Whitney statistic, as
:func:`~perception_nodes.eval.metrics.ood.auroc`).

Per-frame tables stack into ``(F, ...)`` arrays, so a bootstrap over frames (Efron & Tibshirani 1993,
percentile interval) resamples frames and re-sums counts without touching any grid again.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from perception_nodes.eval.metrics.calibration import ECEResult

__all__ = ["LEVELS", "NLL_EPS", "auroc_from_counts", "bootstrap_frames", "ece_from_counts", "scores_from_counts"]

#: probability / uncertainty levels of a grid cell (whole percent)
LEVELS = 101
#: probabilities are clipped to [NLL_EPS, 1 - NLL_EPS] for the NLL (half the grid's 1 % quantum)
NLL_EPS = 0.005
_P = np.arange(LEVELS, dtype=np.float64) / 100.0


def _nan_div(num: NDArray | float, den: NDArray | float) -> NDArray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def scores_from_counts(hist: NDArray, *, threshold: float = 0.5, n_bins: int = 10) -> dict[str, NDArray]:
    """IoU, precision, recall, Brier, NLL, ECE and the base rate of ``hist`` (``(..., 2, 101)``).

    Leading dimensions are kept (e.g. bootstrap replicates); undefined values are NaN.
    """
    h = np.asarray(hist, dtype=np.float64)
    neg, pos = h[..., 0, :], h[..., 1, :]
    occ = _P > threshold
    tp, fn = pos[..., occ].sum(-1), pos[..., ~occ].sum(-1)
    fp, tn = neg[..., occ].sum(-1), neg[..., ~occ].sum(-1)
    n = tp + fn + fp + tn
    pc = np.clip(_P, NLL_EPS, 1.0 - NLL_EPS)
    brier = (pos * (1.0 - _P) ** 2 + neg * _P ** 2).sum(-1)
    nll = -(pos * np.log(pc) + neg * np.log(1.0 - pc)).sum(-1)
    return {
        "iou": _nan_div(tp, tp + fp + fn),
        "precision": _nan_div(tp, tp + fp),
        "recall": _nan_div(tp, tp + fn),
        "brier": _nan_div(brier, n),
        "nll": _nan_div(nll, n),
        "ece": _ece_values(pos, neg, n_bins),
        "base_rate": _nan_div(tp + fn, n),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": n,
    }


def _bin_index(n_bins: int) -> NDArray[np.int64]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], _P, side="left")


def _ece_values(pos: NDArray, neg: NDArray, n_bins: int) -> NDArray:
    idx = _bin_index(n_bins)
    onehot = np.eye(n_bins)[idx]  # (101, bins)
    count = (pos + neg) @ onehot
    conf = ((pos + neg) * _P) @ onehot
    acc = pos @ onehot
    n = count.sum(-1)
    return _nan_div(np.abs(acc - conf).sum(-1), n)


def ece_from_counts(hist: NDArray, *, n_bins: int = 10) -> ECEResult:
    """The full :class:`ECEResult` (per-bin statistics for a reliability diagram) of one ``(2, 101)`` table."""
    h = np.asarray(hist, dtype=np.float64)
    if h.shape != (2, LEVELS):
        raise ValueError(f"hist must have shape (2, {LEVELS}), got {h.shape}")
    idx = _bin_index(n_bins)
    total = h.sum(0)
    count = np.bincount(idx, weights=total, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=total * _P, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=h[1], minlength=n_bins)
    nonempty = count > 0
    conf = np.where(nonempty, conf_sum / np.where(nonempty, count, 1.0), np.nan)
    acc = np.where(nonempty, acc_sum / np.where(nonempty, count, 1.0), np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    n = count.sum()
    if n == 0:
        return ECEResult(math.nan, math.nan, edges, conf, acc, count.astype(np.int64))
    gap = np.abs(acc - conf)
    return ECEResult(float(np.sum(count[nonempty] * gap[nonempty]) / n), float(np.max(gap[nonempty])), edges,
                     conf, acc, count.astype(np.int64))


def auroc_from_counts(negatives: NDArray, positives: NDArray) -> float:
    """AUROC of a score for telling ``positives`` (should score higher) from ``negatives``, from the
    per-level counts of each group: P(s_pos > s_neg) + ½ P(s_pos = s_neg). NaN when a group is empty."""
    neg = np.asarray(negatives, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return math.nan
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float(np.sum(pos * (below + 0.5 * neg)) / (n_neg * n_pos))


def bootstrap_frames(per_frame: NDArray, statistic, *, n_boot: int = 500, seed: int = 0,
                     level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``statistic(summed_counts)`` over frames resampled with replacement.

    ``per_frame`` is ``(F, ...)`` counts; ``statistic`` maps ``(B, ...)`` summed counts to a dict of
    ``(B,)`` arrays. Returns ``{name: (low, high)}`` (NaN-free replicates only; None-like NaN when none).
    """
    x = np.asarray(per_frame, dtype=np.float64)
    f = x.shape[0]
    if f == 0:
        return {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, f, size=(n_boot, f))
    weights = np.zeros((n_boot, f))
    np.add.at(weights, (np.arange(n_boot)[:, None], idx), 1.0)
    sums = np.tensordot(weights, x, axes=(1, 0))
    stats = statistic(sums)
    lo_q, hi_q = (1.0 - level) / 2.0 * 100.0, (1.0 + level) / 2.0 * 100.0
    out = {}
    for name, values in stats.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        out[name] = (float(np.percentile(v, lo_q)), float(np.percentile(v, hi_q))) if v.size else (math.nan, math.nan)
    return out
