"""Out-of-distribution detection from uncertainty scores: AUROC, ROC curve and FPR at a given TPR.

Convention: a *higher* score means *more* OOD (e.g. vacuity, epistemic variance); OOD samples are the
positives. AUROC is the probability that a random OOD sample scores higher than a random
in-distribution one, ties counting 1/2 — the Mann–Whitney U statistic divided by n_in·n_ood (Hanley &
McNeil, Radiology 1982). It equals the trapezoidal area under :func:`roc_curve` exactly, ties included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["RocCurve", "auroc", "fpr_at_tpr", "roc_curve"]


def _scores(x: ArrayLike, name: str) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if np.any(np.isnan(a)):
        raise ValueError(f"{name} contains NaN")
    return a


def _average_ranks(x: NDArray) -> NDArray[np.float64]:
    """1-based ranks with ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each tie group
    mean_rank = last - (counts - 1) / 2.0
    return mean_rank[inverse]


def auroc(scores_in_distribution: ArrayLike, scores_out_of_distribution: ArrayLike) -> float:
    """Exact AUROC for separating OOD (positives, higher scores) from in-distribution samples.

    ``AUROC = (R_ood - n_ood (n_ood + 1) / 2) / (n_in n_ood)`` with R_ood the sum of mid-ranks of the
    OOD scores in the pooled sample: P(s_ood > s_in) + ½ P(s_ood = s_in). 1 = perfect, 0.5 = chance.
    """
    s_in = _scores(scores_in_distribution, "scores_in_distribution")
    s_out = _scores(scores_out_of_distribution, "scores_out_of_distribution")
    ranks = _average_ranks(np.concatenate([s_in, s_out]))
    n_in, n_out = s_in.size, s_out.size
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


@dataclass(frozen=True)
class RocCurve:
    """ROC points from the strictest threshold (0, 0) to the loosest (1, 1).

    ``thresholds[k]``: samples with score >= it are flagged OOD at point k (``inf`` for the first point).
    """

    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    thresholds: NDArray[np.float64]

    def area(self) -> float:
        """Trapezoidal area under the curve (equals :func:`auroc`)."""
        return float(np.sum(np.diff(self.fpr) * (self.tpr[1:] + self.tpr[:-1]) / 2.0))


def roc_curve(scores_in_distribution: ArrayLike, scores_out_of_distribution: ArrayLike) -> RocCurve:
    """ROC curve of the rule "flag as OOD if score >= threshold", one point per distinct score."""
    s_in = _scores(scores_in_distribution, "scores_in_distribution")
    s_out = _scores(scores_out_of_distribution, "scores_out_of_distribution")
    thr = np.unique(np.concatenate([s_in, s_out]))[::-1]  # descending distinct scores
    s_in_sorted = np.sort(s_in)
    s_out_sorted = np.sort(s_out)
    # count of scores >= t  = n - (count of scores < t)
    fp = s_in.size - np.searchsorted(s_in_sorted, thr, side="left")
    tp = s_out.size - np.searchsorted(s_out_sorted, thr, side="left")
    fpr = np.concatenate([[0.0], fp / s_in.size])
    tpr = np.concatenate([[0.0], tp / s_out.size])
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=np.concatenate([[np.inf], thr]))


def fpr_at_tpr(scores_in_distribution: ArrayLike, scores_out_of_distribution: ArrayLike,
               tpr: float = 0.95) -> float:
    """False-positive rate at the strictest threshold whose TPR reaches ``tpr`` (FPR95 for 0.95)."""
    if not 0 < tpr <= 1:
        raise ValueError("tpr must lie in (0, 1]")
    curve = roc_curve(scores_in_distribution, scores_out_of_distribution)
    k = int(np.argmax(curve.tpr >= tpr - 1e-12))
    return float(curve.fpr[k])
