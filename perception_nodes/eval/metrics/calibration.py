"""Expected calibration error (ECE) and reliability diagrams for occupancy and class probabilities.

ECE (Naeini, Cooper & Hauskrecht, AAAI 2015; Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern
Neural Networks", ICML 2017, eq. 3): split predictions into M equal-width confidence bins
``B_m = ((m-1)/M, m/M]`` (the first bin also takes 0), then

    ECE = Σ_m |B_m|/n · |acc(B_m) - conf(B_m)|,        MCE = max_m |acc(B_m) - conf(B_m)| (non-empty bins)

For binary occupancy we evaluate the predicted probability of *occupied* against the observed frequency
of occupied cells (``mode="positive"``: the reliability of P(occupied), what an occupancy map consumer
thresholds); ``mode="top_label"`` scores max(p, 1 - p) against whether the thresholded prediction was
right (Guo et al.'s definition applied to two classes). Only observed cells (``mask``) are counted —
unobserved cells have no label.

For Dirichlet class outputs: top-label ECE (Guo et al.) and classwise ECE (Kull et al., "Beyond
temperature scaling", NeurIPS 2019: the mean over classes of the one-vs-rest ECE of p_k).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ECEResult",
    "classwise_ece",
    "expected_calibration_error",
    "expected_calibration_error_multiclass",
    "reliability_diagram",
]


@dataclass(frozen=True)
class ECEResult:
    """ECE/MCE with the per-bin statistics (NaN confidence/accuracy for empty bins)."""

    ece: float
    mce: float
    bin_edges: NDArray[np.float64]
    bin_confidence: NDArray[np.float64]
    bin_accuracy: NDArray[np.float64]
    bin_count: NDArray[np.int64]

    @property
    def n(self) -> int:
        return int(self.bin_count.sum())


def _binned(confidence: NDArray, correct: NDArray, n_bins: int) -> ECEResult:
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins: index = number of interior edges strictly below the value.
    idx = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    nonempty = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(nonempty, conf_sum / count, np.nan)
        acc = np.where(nonempty, acc_sum / count, np.nan)
    n = int(count.sum())
    if n == 0:
        return ECEResult(float("nan"), float("nan"), edges, conf, acc, count)
    gap = np.abs(acc - conf)
    ece = float(np.sum(count[nonempty] * gap[nonempty]) / n)
    mce = float(np.max(gap[nonempty]))
    return ECEResult(ece, mce, edges, conf, acc, count)


def _select(x: NDArray, mask: ArrayLike | None, shape: tuple[int, ...]) -> NDArray:
    if mask is None:
        return x.reshape(-1, *x.shape[len(shape):])
    m = np.asarray(mask)
    if m.dtype != np.bool_ or m.shape != shape:
        raise ValueError(f"mask must be a boolean array of shape {shape}")
    return x[m]


def expected_calibration_error(prob: ArrayLike, label: ArrayLike, *, n_bins: int = 15,
                               mask: ArrayLike | None = None,
                               mode: Literal["positive", "top_label"] = "positive") -> ECEResult:
    """ECE of binary probabilities ``prob`` (P(occupied)) against 0/1 or bool ``label``.

    Equal-width bins over the cells selected by ``mask`` (observed cells); see the module docstring
    for the two modes. ``bin_accuracy`` is the observed frequency of label 1 (``positive``) or the
    accuracy of the thresholded prediction (``top_label``; p = 0.5 counts as predicting 1).
    """
    p = np.asarray(prob, dtype=np.float64)
    y = np.asarray(label)
    if p.shape != y.shape:
        raise ValueError(f"prob {p.shape} and label {y.shape} must have the same shape")
    p_sel = _select(p, mask, p.shape).ravel()
    y_sel = _select(y, mask, p.shape).ravel()
    if np.any(~((p_sel >= 0) & (p_sel <= 1))):
        raise ValueError("probabilities must lie in [0, 1] (NaN not allowed)")
    if not np.all((y_sel == 0) | (y_sel == 1)):
        raise ValueError("labels must be 0/1 or boolean")
    y_sel = y_sel.astype(bool)
    if mode == "positive":
        return _binned(p_sel, y_sel, n_bins)
    if mode == "top_label":
        pred = p_sel >= 0.5
        conf = np.where(pred, p_sel, 1.0 - p_sel)
        return _binned(conf, pred == y_sel, n_bins)
    raise ValueError(f"mode must be 'positive' or 'top_label', got {mode!r}")


def _probs_labels(probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None) -> tuple[NDArray, NDArray]:
    P = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if P.ndim < 2 or P.shape[:-1] != y.shape:
        raise ValueError(f"probs must be (..., K) with labels (...); got {P.shape} and {y.shape}")
    P = _select(P, mask, y.shape)
    y = _select(y, mask, y.shape).ravel()
    P = P.reshape(-1, P.shape[-1])
    k = P.shape[1]
    if np.any(~((P >= 0) & (P <= 1))):
        raise ValueError("probabilities must lie in [0, 1] (NaN not allowed)")
    if not np.issubdtype(y.dtype, np.integer) or np.any((y < 0) | (y >= k)):
        raise ValueError(f"labels must be integers in [0, {k})")
    return P, y


def expected_calibration_error_multiclass(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15,
                                          mask: ArrayLike | None = None) -> ECEResult:
    """Top-label ECE (Guo et al. 2017) of class probabilities ``probs`` (N, K) and integer ``labels`` (N,).

    Confidence is max_k p_k, correctness is ``argmax == label`` (first maximum on ties). For Dirichlet
    outputs pass the expected probabilities α_k / S. Leading dimensions are allowed: (..., K) with
    labels (...) and an optional boolean ``mask`` over (...).
    """
    P, y = _probs_labels(probs, labels, mask)
    pred = np.argmax(P, axis=1)
    return _binned(P[np.arange(P.shape[0]), pred], pred == y, n_bins)


def classwise_ece(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15,
                  mask: ArrayLike | None = None) -> tuple[float, list[ECEResult]]:
    """Classwise ECE (Kull et al. 2019): mean over classes k of the ECE of p_k vs [label == k].

    Returns the mean and the per-class results.
    """
    P, y = _probs_labels(probs, labels, mask)
    per = [_binned(P[:, k], y == k, n_bins) for k in range(P.shape[1])]
    return float(np.mean([r.ece for r in per])), per


def reliability_diagram(result: ECEResult, path: str | Path, title: str = "Reliability diagram",
                        *, xlabel: str = "confidence") -> Path:
    """Save a reliability diagram PNG: per-bin accuracy bars against the diagonal, the gap to the bin's
    mean confidence, ECE/MCE in the legend, and a histogram of bin counts underneath.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change), so it is safe
    in headless nodes and threads. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edges = result.bin_edges
    width = np.diff(edges)
    left = edges[:-1]
    centre = left + width / 2
    nonempty = result.bin_count > 0
    acc = np.where(nonempty, result.bin_accuracy, 0.0)
    conf = np.where(nonempty, result.bin_confidence, centre)

    fig = Figure(figsize=(5.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(gs[0])
    axh = fig.add_subplot(gs[1], sharex=ax)
    ax.bar(left[nonempty], acc[nonempty], width=width[nonempty], align="edge", color="#4c72b0",
           edgecolor="black", linewidth=0.5, label="accuracy")
    lo = np.minimum(acc, conf)
    ax.bar(left[nonempty], np.abs(conf - acc)[nonempty], bottom=lo[nonempty], width=width[nonempty],
           align="edge", color="#dd8452", alpha=0.5, edgecolor="#c44e52", hatch="//", linewidth=0.5,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.plot(conf[nonempty], result.bin_accuracy[nonempty], "o", color="black", markersize=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy / observed frequency")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, title=f"ECE {result.ece:.4f}  MCE {result.mce:.4f}",
              title_fontsize=8)
    ax.tick_params(labelbottom=False)
    axh.bar(left, result.bin_count, width=width, align="edge", color="grey", edgecolor="black",
            linewidth=0.5)
    if result.bin_count.max(initial=0) > 0:
        axh.set_yscale("log")
    axh.set_xlabel(xlabel)
    axh.set_ylabel("count")
    fig.savefig(path, format="png")
    return path
