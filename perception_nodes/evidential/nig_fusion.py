"""Fusion of Normal-Inverse-Gamma (NIG) curvature predictions across sensors and odometry-aligned past frames.

numpy only (the control node must not need torch). The torch twin for network heads is
:func:`perception_nodes.evidential.nig.fuse`.

**The rule (MoNIG-style conjugate pooling).** A NIG ``(gamma, nu, alpha, beta)`` is what a conjugate
Bayesian update of a reference prior ``(nu_0 = 0, alpha_0, beta_0 = 0)`` leaves after ``nu`` virtual
observations of the mean and ``2 (alpha - alpha_0)`` of the variance. Independent sources that started
from the same reference prior pool by adding what each learned beyond it::

    gamma = sum nu_b gamma_b / sum nu_b
    nu    = sum nu_b
    alpha = alpha_0 + sum (alpha_b - alpha_0)
    beta  = sum beta_b + 1/2 sum nu_b (gamma_b - gamma)^2      (parallel-axis term: disagreement raises beta)

With ``alpha_0 = -1/2`` this is exactly the MoNIG summation of Ma et al. (NeurIPS 2021,
``alpha = sum alpha_b + (B - 1)/2``). Its identity element is the improper prior ``(nu 0, alpha -1/2,
beta 0)``, not a proper "vacuous" NIG: fusing with ``(nu -> 0, alpha -> 1, beta -> 0)`` adds 3/2 to
alpha and so *lowers* both variances by the factor ``(alpha - 1) / (alpha + 1/2)``, i.e. an
uninformative source makes the result more confident. The default here is ``alpha_0 = 1``: then

* the vacuous NIG ``(nu 0, alpha 1, beta 0)`` is the exact identity (fusing with it changes nothing);
* K identical sources keep gamma and the aleatoric variance ``beta / (alpha - 1)`` and divide the
  epistemic variance ``beta / (nu (alpha - 1))`` by K, as K independent measurements of one mean do
  (MoNIG divides both, and the aleatoric one — the noise of the data — should not shrink);
* it stays commutative and associative (every term is a sum; the beta term is the parallel-axis
  decomposition of a pooled sum of squares, so fusing in any grouping gives the same beta).

**Discounting** (older frames, a sensor of reduced health) scales what a source learned by ``w`` in
``[0, 1]``: ``nu -> w nu``, ``alpha -> alpha_0 + w (alpha - alpha_0)``, ``beta -> w beta``. The mean stays,
the epistemic variance grows by ``1 / w`` (with ``alpha_0 = 1`` the aleatoric variance stays), and
``w = 0`` gives the vacuous NIG (the source drops out exactly).

**Alignment across frames.** A prediction made at stamp ``t0`` at horizon ``h`` (metres ahead along the
path) refers to the point now at ``h - d``, ``d`` the distance travelled since ``t0``
(:func:`shift_horizons`). :func:`sample_at` reads a prediction at the lookahead distances wanted by
linear interpolation of the NIG parameters between its two neighbouring horizons (a convex combination of
valid NIGs is a valid NIG); a target outside the shifted horizons gets the vacuous NIG (no information;
nothing is extrapolated), and horizons behind the ego (``h - d < 0``) are only used as the lower end of an
interpolation.

Variances: ``aleatoric = beta / (alpha - 1)``, ``epistemic = beta / (nu (alpha - 1))``, predictive =
their sum (the Student-t ``St(gamma, beta (1 + nu) / (nu alpha), 2 alpha)``'s variance). Where they are
undefined (no evidence: ``nu = 0`` or ``alpha <= 1``) they are ``inf``, never NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from perception_nodes.eval.metrics._special import student_t_ppf

__all__ = [
    "DEFAULT_PRIOR_ALPHA",
    "MONIG_PRIOR_ALPHA",
    "NIGArray",
    "discount",
    "from_variances",
    "fuse",
    "fuse_many",
    "interval",
    "sample_at",
    "shift_horizons",
    "t_quantile",
    "vacuous",
]

#: reference prior shape of the default rule (the vacuous NIG is the identity; see module doc)
DEFAULT_PRIOR_ALPHA = 1.0
#: the reference prior shape that reproduces Ma et al.'s MoNIG summation exactly
MONIG_PRIOR_ALPHA = -0.5

F64 = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class NIGArray:
    """NIG parameters, each a float64 array of one shape: mean, ``nu >= 0``, ``alpha``, ``beta >= 0``.

    ``nu = 0`` means "no evidence about the mean" (the vacuous NIG); variances are then ``inf``.
    """

    gamma: F64
    nu: F64
    alpha: F64
    beta: F64

    def __post_init__(self) -> None:
        arrs = [np.asarray(a, dtype=np.float64) for a in (self.gamma, self.nu, self.alpha, self.beta)]
        arrs = np.broadcast_arrays(*arrs)
        for name, a in zip(("gamma", "nu", "alpha", "beta"), arrs):
            object.__setattr__(self, name, np.array(a, dtype=np.float64))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.gamma.shape

    def aleatoric(self) -> F64:
        """Expected data noise ``E[sigma^2] = beta / (alpha - 1)``; inf where alpha <= 1."""
        with np.errstate(divide="ignore", invalid="ignore"):
            v = self.beta / (self.alpha - 1.0)
        return _no_nan(np.where(self.alpha > 1.0, v, np.inf))

    def epistemic(self) -> F64:
        """Variance of the mean ``beta / (nu (alpha - 1))``; inf without evidence."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            v = self.beta / (self.nu * (self.alpha - 1.0))
        return _no_nan(np.where((self.alpha > 1.0) & (self.nu > 0.0), v, np.inf))

    def variance(self) -> F64:
        """Predictive (Student-t) variance = aleatoric + epistemic; inf without evidence, never NaN."""
        with np.errstate(over="ignore"):
            return _no_nan(self.aleatoric() + self.epistemic())

    def has_evidence(self) -> NDArray[np.bool_]:
        return self.nu > 0.0


def _no_nan(v: F64) -> F64:
    """inf where a variance is undefined (0/0, inf/inf from extreme inputs): "no information", not NaN."""
    return np.where(np.isnan(v), np.inf, v)


def vacuous(shape: tuple[int, ...] = (), prior_alpha: float = DEFAULT_PRIOR_ALPHA) -> NIGArray:
    """The NIG of no evidence (``nu = 0``, ``alpha = prior_alpha``, ``beta = 0``): the identity of :func:`fuse`."""
    z = np.zeros(shape)
    return NIGArray(z, z, np.full(shape, float(prior_alpha)), z)


def from_variances(mean: ArrayLike, aleatoric: ArrayLike, epistemic: ArrayLike, alpha: float | ArrayLike) -> NIGArray:
    """The NIG with these mean and variances (what ``perception_interfaces/CurvaturePrediction`` carries).

    ``nu = aleatoric / epistemic`` and ``beta = aleatoric (alpha - 1)``; the message does not carry
    ``alpha`` (the Student-t's ``df = 2 alpha``), so the caller supplies it (``alpha > 1``). Entries whose
    values are not finite and positive come back vacuous (``nu = 0``); the caller counts them.
    """
    m = np.asarray(mean, dtype=np.float64)
    a = np.asarray(aleatoric, dtype=np.float64)
    e = np.asarray(epistemic, dtype=np.float64)
    al = np.broadcast_to(np.asarray(alpha, dtype=np.float64), m.shape)
    ok = np.isfinite(m) & np.isfinite(a) & np.isfinite(e) & (a > 0) & (e > 0) & np.isfinite(al) & (al > 1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        nu = np.where(ok, a / np.where(ok, e, 1.0), 0.0)
        beta = np.where(ok, a * (al - 1.0), 0.0)
    ok &= np.isfinite(nu) & np.isfinite(beta) & (nu > 0)
    return NIGArray(np.where(ok, m, 0.0), np.where(ok, nu, 0.0), np.where(ok, al, 1.0), np.where(ok, beta, 0.0))


def discount(p: NIGArray, w: float | ArrayLike, prior_alpha: float = DEFAULT_PRIOR_ALPHA) -> NIGArray:
    """Scale what ``p`` learned beyond the reference prior by ``w`` in [0, 1] (module doc); ``w = 0`` is vacuous."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, 1.0)
    return NIGArray(p.gamma, w * p.nu, prior_alpha + w * (p.alpha - prior_alpha), w * p.beta)


def fuse(a: NIGArray, b: NIGArray, prior_alpha: float = DEFAULT_PRIOR_ALPHA) -> NIGArray:
    """Pool two NIGs of the same quantity (module doc); elementwise, commutative and associative.

    Where neither has evidence (``nu = 0`` both) the result is vacuous with gamma 0.
    """
    nu = a.nu + b.nu
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.where(nu > 0, (a.nu * a.gamma + b.nu * b.gamma) / np.where(nu > 0, nu, 1.0), 0.0)
    alpha = a.alpha + b.alpha - prior_alpha
    with np.errstate(over="ignore", invalid="ignore"):
        spread = 0.5 * a.nu * (a.gamma - gamma) ** 2 + 0.5 * b.nu * (b.gamma - gamma) ** 2
        beta = a.beta + b.beta + np.where(np.isnan(spread), np.inf, spread)
    return NIGArray(gamma, nu, alpha, beta)


def fuse_many(parts: Sequence[NIGArray], prior_alpha: float = DEFAULT_PRIOR_ALPHA,
              shape: tuple[int, ...] | None = None) -> NIGArray:
    """All of ``parts`` pooled in one step (the B-source form; equal to any order of :func:`fuse`).

    No parts give the vacuous NIG of ``shape`` (default scalar).
    """
    if not parts:
        return vacuous(shape or (), prior_alpha)
    nu = np.sum([p.nu for p in parts], axis=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        num = np.sum([p.nu * p.gamma for p in parts], axis=0)
        gamma = np.where(nu > 0, num / np.where(nu > 0, nu, 1.0), 0.0)
        alpha = prior_alpha + np.sum([p.alpha - prior_alpha for p in parts], axis=0)
        spread = 0.5 * np.sum([p.nu * (p.gamma - gamma) ** 2 for p in parts], axis=0)
        beta = np.sum([p.beta for p in parts], axis=0) + np.where(np.isnan(spread), np.inf, spread)
    return NIGArray(gamma, nu, alpha, beta)


#: degrees of freedom of the quantile table (log-spaced); beyond the last the quantile is the last entry's
_DF_TABLE = np.geomspace(0.5, 1e6, 240)


@functools.lru_cache(maxsize=16)
def _quantile_table(level: float) -> F64:
    """Upper ``(1 + level) / 2`` quantile of the standard Student-t at :data:`_DF_TABLE` (exact bisection once)."""
    return student_t_ppf(np.full(_DF_TABLE.shape, 0.5 + level / 2.0), _DF_TABLE)


def t_quantile(level: float, dof: ArrayLike) -> F64:
    """Half-width factor of the central ``level`` interval of a standard Student-t with ``dof`` degrees of freedom.

    Interpolated in log(dof) in a table computed once per level with the exact inverse CDF (the exact one
    costs ~0.1 s per call here, too slow per command; the table's relative error is below 1e-3 for dof >= 2,
    i.e. alpha >= 1, at levels up to 0.99; tested).
    """
    d = np.clip(np.asarray(dof, dtype=np.float64), _DF_TABLE[0], _DF_TABLE[-1])
    return np.exp(np.interp(np.log(d), np.log(_DF_TABLE), np.log(_quantile_table(float(level)))))


def interval(p: NIGArray, level: float) -> tuple[F64, F64]:
    """Central ``level`` interval of the Student-t predictive ``St(gamma, beta (1 + nu) / (nu alpha), 2 alpha)``.

    Without evidence (or ``alpha <= 0``) the interval is ``(-inf, inf)``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    ok = (p.nu > 0) & (p.alpha > 0) & np.isfinite(p.beta) & np.isfinite(p.gamma)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale2 = np.where(ok, p.beta * (1.0 + p.nu) / np.where(ok, p.nu * p.alpha, 1.0), np.inf)
        q = t_quantile(level, np.where(ok, 2.0 * p.alpha, 1.0))
        half = np.where(ok & np.isfinite(scale2), q * np.sqrt(scale2), np.inf)
    half = np.where(np.isnan(half), np.inf, half)
    return p.gamma - half, p.gamma + half


def shift_horizons(horizon_m: ArrayLike, travelled_m: float) -> F64:
    """Where the points a prediction referred to are now: ``h - d`` (negative = behind the ego)."""
    return np.asarray(horizon_m, dtype=np.float64) - float(travelled_m)


def sample_at(horizon_m: ArrayLike, p: NIGArray, targets_m: ArrayLike,
              prior_alpha: float = DEFAULT_PRIOR_ALPHA) -> NIGArray:
    """``p`` (one NIG per horizon, horizons strictly increasing) read at ``targets_m``.

    Linear interpolation of the four parameters between the two neighbouring horizons; a target equal to
    a horizon takes that horizon's NIG; a target outside ``[h_0, h_last]`` or next to a horizon without
    evidence is vacuous (nothing extrapolated).
    """
    h = np.asarray(horizon_m, dtype=np.float64).reshape(-1)
    t = np.asarray(targets_m, dtype=np.float64).reshape(-1)
    out = vacuous(t.shape, prior_alpha)
    if h.size == 0 or h.size != p.gamma.size:
        return out
    if h.size > 1 and not np.all(np.diff(h) > 0):
        raise ValueError("horizons must be strictly increasing")
    params = [np.asarray(x, dtype=np.float64).reshape(-1) for x in (p.gamma, p.nu, p.alpha, p.beta)]
    if h.size == 1:
        inside = t == h[0]
        lo = hi = np.zeros(t.shape, int)
        frac = np.zeros(t.shape)
    else:
        inside = (t >= h[0]) & (t <= h[-1])
        hi = np.clip(np.searchsorted(h, t, side="left"), 1, h.size - 1)
        lo = hi - 1
        frac = np.clip((t - h[lo]) / (h[hi] - h[lo]), 0.0, 1.0)
    has = params[1] > 0
    # a target exactly on a horizon needs only that horizon's evidence
    need_lo, need_hi = frac < 1.0, frac > 0.0
    inside &= (has[lo] | ~need_lo) & (has[hi] | ~need_hi)
    vals = [np.where(inside, (1.0 - frac) * x[lo] + frac * x[hi], d)
            for x, d in zip(params, (out.gamma, out.nu, out.alpha, out.beta))]
    return NIGArray(*vals)
