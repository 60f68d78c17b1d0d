"""Metrics for Normal-Inverse-Gamma (deep evidential regression) outputs.

A NIG head (Amini, Schwarting, Soleimany & Rus, "Deep Evidential Regression", NeurIPS 2020) gives per
sample (γ, ν, α, β) with ν > 0, α > 1 (α > 0 suffices for the predictive), β > 0. Integrating out the
Gaussian's mean and variance gives the predictive Student-t (Amini 2020, eq. 7 / supplement)::

    y ~ St(loc = γ, scale² = β (1 + ν) / (ν α), dof = 2α)

All calibration metrics here are computed on that predictive: the NLL is its log density, interval
coverage uses its central intervals, the calibration curve uses its CDF (Kuleshov, Fenner & Ermon,
"Accurate Uncertainties for Deep Learning Using Calibrated Regression", ICML 2018).

The Student-t CDF/quantile come from :mod:`._special` (regularised incomplete beta, plain numpy), so
no scipy is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from perception_nodes.eval.metrics._special import lgamma, student_t_cdf, student_t_two_sided_tail

__all__ = [
    "DEFAULT_COVERAGE_LEVELS",
    "UncertaintySplit",
    "aleatoric_epistemic",
    "interval_coverage",
    "miscalibration_area",
    "nig_nll",
    "nig_predictive",
    "regression_calibration_curve",
    "student_t_nll",
]

DEFAULT_COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)


def _nig(gamma: ArrayLike, nu: ArrayLike, alpha: ArrayLike, beta: ArrayLike,
         y: ArrayLike | None = None) -> tuple[NDArray[np.float64], ...]:
    arrs = [np.asarray(v, dtype=np.float64) for v in ((gamma, nu, alpha, beta) if y is None
                                                       else (y, gamma, nu, alpha, beta))]
    arrs = list(np.broadcast_arrays(*arrs))
    g, n, a, b = arrs[-4:]
    if np.any(~(n > 0)) or np.any(~(a > 0)) or np.any(~(b > 0)):
        raise ValueError("NIG parameters need nu > 0, alpha > 0, beta > 0 (and no NaN)")
    if np.any(~np.isfinite(g)):
        raise ValueError("NIG gamma must be finite")
    return tuple(arrs)


def nig_predictive(gamma: ArrayLike, nu: ArrayLike, alpha: ArrayLike,
                   beta: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Predictive Student-t of a NIG: ``(loc, scale, dof) = (γ, sqrt(β(1+ν)/(να)), 2α)``.

    ``scale`` is the t distribution's scale parameter (its standard deviation is
    ``scale * sqrt(dof / (dof - 2))`` for dof > 2), i.e. the "Student-t width" Meinert et al. use.
    """
    g, n, a, b = _nig(gamma, nu, alpha, beta)
    return g.copy(), np.sqrt(b * (1.0 + n) / (n * a)), 2.0 * a


def _reduce(v: NDArray, reduction: str) -> NDArray | float:
    if reduction == "mean":
        return float(np.mean(v))
    if reduction == "sum":
        return float(np.sum(v))
    if reduction == "none":
        return v
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def student_t_nll(y: ArrayLike, gamma: ArrayLike, nu: ArrayLike, alpha: ArrayLike, beta: ArrayLike,
                  *, reduction: Literal["mean", "sum", "none"] = "mean") -> float | NDArray[np.float64]:
    """Negative log-likelihood of ``y`` under the NIG's predictive Student-t (mean over samples).

    ``-log St(y; γ, s, d) = -lnΓ((d+1)/2) + lnΓ(d/2) + ½ ln(dπ) + ln s + (d+1)/2 · ln(1 + z²/d)``,
    ``z = (y - γ)/s``. It equals Amini et al.'s NIG NLL (:func:`nig_nll`) exactly; it is written in the
    Student-t form because that is the quantity being scored (a proper scoring rule of the predictive).
    """
    yy, g, n, a, b = _nig(gamma, nu, alpha, beta, y=y)
    loc, scale, dof = g, np.sqrt(b * (1.0 + n) / (n * a)), 2.0 * a
    z = (yy - loc) / scale
    nll = (lgamma(dof / 2.0) - lgamma((dof + 1.0) / 2.0) + 0.5 * np.log(dof * math.pi) + np.log(scale)
           + 0.5 * (dof + 1.0) * np.log1p(z * z / dof))
    return _reduce(nll, reduction)


def nig_nll(y: ArrayLike, gamma: ArrayLike, nu: ArrayLike, alpha: ArrayLike, beta: ArrayLike,
            *, reduction: Literal["mean", "sum", "none"] = "mean") -> float | NDArray[np.float64]:
    """Amini et al. 2020's NIG negative log-likelihood (their eq. 8), for cross-checking.

    ``½ ln(π/ν) - α ln Ω + (α + ½) ln(ν (y-γ)² + Ω) + lnΓ(α) - lnΓ(α + ½)``, ``Ω = 2β(1 + ν)``.
    """
    yy, g, n, a, b = _nig(gamma, nu, alpha, beta, y=y)
    omega = 2.0 * b * (1.0 + n)
    nll = (0.5 * np.log(math.pi / n) - a * np.log(omega) + (a + 0.5) * np.log(n * (yy - g) ** 2 + omega)
           + lgamma(a) - lgamma(a + 0.5))
    return _reduce(nll, reduction)


def _standardised(y: ArrayLike, gamma: ArrayLike, nu: ArrayLike, alpha: ArrayLike,
                  beta: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    yy, g, n, a, b = _nig(gamma, nu, alpha, beta, y=y)
    if np.any(~np.isfinite(yy)):
        raise ValueError("y must be finite")
    scale = np.sqrt(b * (1.0 + n) / (n * a))
    return ((yy - g) / scale).ravel(), (2.0 * a).ravel()


def _levels(levels: ArrayLike) -> NDArray[np.float64]:
    lv = np.asarray(levels, dtype=np.float64).ravel()
    if np.any((lv < 0) | (lv > 1) | np.isnan(lv)):
        raise ValueError("levels must lie in [0, 1]")
    return lv


def interval_coverage(y: ArrayLike, gamma: ArrayLike, nu: ArrayLike, alpha: ArrayLike, beta: ArrayLike,
                      levels: ArrayLike = DEFAULT_COVERAGE_LEVELS) -> dict[float, float]:
    """Fraction of targets inside the central ``level`` interval of each sample's predictive Student-t.

    The central interval is ``γ ± t_{(1+level)/2, 2α} · scale``. Rather than computing per-sample
    quantiles we use the equivalent test ``P(|T| >= |z|) >= 1 - level`` on the standardised residual
    ``z`` (one incomplete-beta evaluation per sample, exact and cheap). A calibrated model gives
    coverage ≈ level. Points exactly on the interval boundary count as inside.
    """
    z, dof = _standardised(y, gamma, nu, alpha, beta)
    lv = _levels(levels)
    if z.size == 0:
        return {float(level): float("nan") for level in lv}
    tail = student_t_two_sided_tail(z, dof)
    return {float(level): float(np.mean(tail >= 1.0 - level - 1e-12)) for level in lv}


def regression_calibration_curve(y: ArrayLike, gamma: ArrayLike, nu: ArrayLike, alpha: ArrayLike,
                                 beta: ArrayLike, *, levels: ArrayLike | None = None,
                                 kind: Literal["quantile", "central"] = "quantile",
                                 ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Calibration curve ``(expected_levels, observed_fraction)`` of the predictive Student-t.

    * ``kind="quantile"`` (default; Kuleshov et al. 2018, Sec. 3): observed(p) = fraction of samples with
      predictive CDF F_i(y_i) <= p, i.e. of targets below the predicted p-quantile.
    * ``kind="central"``: observed(p) = fraction inside the central p interval (:func:`interval_coverage`).

    ``levels`` defaults to 0, 0.01, ..., 1 (101 levels). Perfect calibration is the diagonal.
    """
    lv = np.linspace(0.0, 1.0, 101) if levels is None else _levels(levels)
    z, dof = _standardised(y, gamma, nu, alpha, beta)
    if z.size == 0:
        return lv, np.full_like(lv, np.nan)
    if kind == "quantile":
        cdf = np.sort(student_t_cdf(z, dof))
        observed = np.searchsorted(cdf, lv + 1e-12, side="right") / z.size
    elif kind == "central":
        tail = np.sort(student_t_two_sided_tail(z, dof))
        # inside iff tail >= 1 - level; count of tails >= threshold
        observed = 1.0 - np.searchsorted(tail, 1.0 - lv - 1e-12, side="left") / z.size
    else:
        raise ValueError(f"kind must be 'quantile' or 'central', got {kind!r}")
    return lv, observed.astype(np.float64)


def miscalibration_area(expected: ArrayLike, observed: ArrayLike) -> float:
    """Area between the calibration curve and the diagonal: ∫ |observed(p) - p| dp (trapezoid rule).

    0 for perfect calibration, at most 0.5. This is the "miscalibration area" of Tran et al. (2020) /
    Chung et al.'s Uncertainty Toolbox, approximated on the given level grid (use a dense grid, e.g. the
    default 101 levels of :func:`regression_calibration_curve`). Levels must be sorted ascending.
    """
    e = np.asarray(expected, dtype=np.float64).ravel()
    o = np.asarray(observed, dtype=np.float64).ravel()
    if e.shape != o.shape or e.size < 2:
        raise ValueError("expected and observed must be 1-D arrays of the same length >= 2")
    if np.any(np.diff(e) < 0):
        raise ValueError("expected levels must be ascending")
    gap = np.abs(o - e)
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(e)))


@dataclass(frozen=True)
class UncertaintySplit:
    """Aleatoric/epistemic uncertainty of NIG outputs, two ways (arrays shaped like the inputs).

    Amini et al. 2020 (eq. 5): ``aleatoric = E[σ²] = β/(α-1)``, ``epistemic = Var[μ] = β/(ν(α-1))``
    (variances, in target units squared; infinite where α <= 1 because the moments do not exist).

    Meinert, Gawlikowski & Lavin, "The Unreasonable Effectiveness of Deep Evidential Regression",
    AAAI 2023: the Amini split is heuristic (the two differ only by the factor 1/ν); they use the
    predictive Student-t width ``sqrt(β(1+ν)/(αν))`` (target units) as aleatoric and ``1/sqrt(ν)``
    (dimensionless: ν is the number of virtual observations of the mean) as epistemic uncertainty.
    """

    amini_aleatoric: NDArray[np.float64]
    amini_epistemic: NDArray[np.float64]
    meinert_aleatoric: NDArray[np.float64]
    meinert_epistemic: NDArray[np.float64]


def aleatoric_epistemic(gamma: ArrayLike, nu: ArrayLike, alpha: ArrayLike,
                        beta: ArrayLike) -> UncertaintySplit:
    """Both uncertainty decompositions of NIG outputs (see :class:`UncertaintySplit`)."""
    _, n, a, b = _nig(gamma, nu, alpha, beta)
    am1 = a - 1.0
    ok = am1 > 0
    safe = np.where(ok, am1, 1.0)
    alea = np.where(ok, b / safe, np.inf)
    epi = np.where(ok, b / (n * safe), np.inf)
    return UncertaintySplit(
        amini_aleatoric=alea,
        amini_epistemic=epi,
        meinert_aleatoric=np.sqrt(b * (1.0 + n) / (a * n)),
        meinert_epistemic=1.0 / np.sqrt(n),
    )
