"""Vectorised special functions the metrics need, in plain numpy (scipy is not a dependency).

* :func:`lgamma` — log Gamma for positive arguments: upward recurrence to z >= 10, then the Stirling
  series (Abramowitz & Stegun 6.1.41) up to the z^-11 term (truncation error < 1e-15 there).
* :func:`betainc` — the regularised incomplete beta function I_x(a, b) by its continued fraction
  (A&S 26.5.8), evaluated with the modified Lentz method, using the symmetry
  I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly (x > (a + 1) / (a + b + 2)).
  It takes x and 1 - x separately so callers can pass an accurately computed complement.
* Student-t distribution: for T ~ t_d, P(|T| >= |t|) = I_{d/(d+t^2)}(d/2, 1/2) (A&S 26.7.1 in
  incomplete-beta form), from which the CDF and, by bisection, the quantile function follow.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["betainc", "lgamma", "student_t_cdf", "student_t_ppf", "student_t_two_sided_tail"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def lgamma(x: ArrayLike) -> NDArray[np.float64]:
    """log Gamma(x) for x > 0, elementwise (float64). Non-positive or NaN inputs give NaN."""
    z = np.array(x, dtype=np.float64, copy=True)
    bad = ~(z > 0)
    z = np.where(bad, 1.0, z)
    shift = np.zeros_like(z)
    # log Gamma(z) = log Gamma(z + k) - log(z (z + 1) ... (z + k - 1)); bring z up to >= 10.
    small = z < 10.0
    while np.any(small):
        shift = shift + np.where(small, np.log(np.where(small, z, 1.0)), 0.0)
        z = np.where(small, z + 1.0, z)
        small = z < 10.0
    zi = 1.0 / z
    zi2 = zi * zi
    series = zi * (1.0 / 12 - zi2 * (1.0 / 360 - zi2 * (1.0 / 1260 - zi2 * (1.0 / 1680 - zi2 * (
        1.0 / 1188 - zi2 * 691.0 / 360360)))))
    out = (z - 0.5) * np.log(z) - z + _HALF_LOG_2PI + series - shift
    return np.where(bad, np.nan, out)


def _lbeta(a: NDArray, b: NDArray) -> NDArray:
    return lgamma(a) + lgamma(b) - lgamma(a + b)


def _betacf(a: NDArray, b: NDArray, x: NDArray, max_iter: int, tol: float) -> NDArray:
    """Continued fraction of I_x(a, b) (without the prefactor), vectorised with an active set."""
    tiny = 1e-300
    n = a.shape[0]
    out = np.empty(n)
    idx = np.arange(n)
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones(n)
    d = 1.0 - qab * x / qap
    d = np.where(np.abs(d) < tiny, tiny, d)
    d = 1.0 / d
    h = d.copy()
    for m in range(1, max_iter + 1):
        m2 = 2.0 * m
        # even step
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        h = h * d * c
        # odd step
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        delta = d * c
        h = h * delta
        done = np.abs(delta - 1.0) < tol
        if np.any(done):
            out[idx[done]] = h[done]
            keep = ~done
            idx = idx[keep]
            if idx.size == 0:
                return out
            a, b, x, qab, qap, qam, c, d, h = (v[keep] for v in (a, b, x, qab, qap, qam, c, d, h))
    raise RuntimeError(f"incomplete beta continued fraction did not converge in {max_iter} iterations")


def betainc(a: ArrayLike, b: ArrayLike, x: ArrayLike, one_minus_x: ArrayLike | None = None,
            *, max_iter: int = 100_000, tol: float = 1e-15) -> NDArray[np.float64]:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1, elementwise.

    ``one_minus_x`` may carry an accurately computed 1 - x (e.g. t^2 / (d + t^2)); it defaults to 1 - x.
    """
    a_, b_, x_ = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float), np.asarray(x, float))
    y_ = 1.0 - x_ if one_minus_x is None else np.broadcast_to(np.asarray(one_minus_x, float), x_.shape)
    shape = x_.shape
    a_, b_, x_, y_ = (np.ravel(v).astype(np.float64) for v in (a_, b_, x_, y_))
    if np.any(~(a_ > 0)) or np.any(~(b_ > 0)):
        raise ValueError("betainc: a and b must be positive")
    if np.any((x_ < 0) | (x_ > 1) | np.isnan(x_)):
        raise ValueError("betainc: x must lie in [0, 1]")
    out = np.empty_like(x_)
    zero = x_ <= 0
    one = y_ <= 0
    out[zero] = 0.0
    out[one & ~zero] = 1.0
    mid = ~zero & ~one
    if np.any(mid):
        a, b, x, y = a_[mid], b_[mid], x_[mid], y_[mid]
        swap = x > (a + 1.0) / (a + b + 2.0)
        aa = np.where(swap, b, a)
        bb = np.where(swap, a, b)
        xx = np.where(swap, y, x)
        yy = np.where(swap, x, y)
        log_front = aa * np.log(xx) + bb * np.log(yy) - _lbeta(aa, bb)
        val = np.exp(log_front) * _betacf(aa, bb, xx, max_iter, tol) / aa
        out[mid] = np.clip(np.where(swap, 1.0 - val, val), 0.0, 1.0)
    return out.reshape(shape)


def student_t_two_sided_tail(t: ArrayLike, dof: ArrayLike) -> NDArray[np.float64]:
    """P(|T| >= |t|) for T ~ Student-t with ``dof`` degrees of freedom (= I_{d/(d+t^2)}(d/2, 1/2))."""
    t_, d_ = np.broadcast_arrays(np.asarray(t, float), np.asarray(dof, float))
    t2 = t_ * t_
    inf = np.isinf(t2)
    den = np.where(inf, 1.0, d_ + t2)
    x = np.where(inf, 0.0, d_ / den)
    y = np.where(inf, 1.0, t2 / den)
    return betainc(d_ / 2.0, 0.5, x, y)


def student_t_cdf(t: ArrayLike, dof: ArrayLike) -> NDArray[np.float64]:
    """CDF of the standard Student-t distribution with ``dof`` degrees of freedom."""
    t_ = np.asarray(t, float)
    half_tail = 0.5 * student_t_two_sided_tail(t_, dof)
    return np.where(t_ > 0, 1.0 - half_tail, half_tail)


def student_t_ppf(p: ArrayLike, dof: ArrayLike, *, iterations: int = 200) -> NDArray[np.float64]:
    """Quantile function of the standard Student-t (inverse CDF), by bisection on the exact CDF.

    Meant for modest array sizes (each bisection step evaluates the incomplete beta function).
    """
    p_, d_ = np.broadcast_arrays(np.asarray(p, float), np.asarray(dof, float))
    shape = p_.shape
    p_, d_ = p_.ravel().copy(), d_.ravel().copy()
    if np.any((p_ < 0) | (p_ > 1) | np.isnan(p_)):
        raise ValueError("student_t_ppf: p must lie in [0, 1]")
    if np.any(~(d_ > 0)):
        raise ValueError("student_t_ppf: dof must be positive")
    out = np.zeros_like(p_)
    q = 2.0 * np.minimum(p_, 1.0 - p_)  # two-sided tail probability to hit
    sign = np.where(p_ > 0.5, 1.0, -1.0)
    out[q <= 0] = np.inf
    work = (q > 0) & (q < 1)
    if np.any(work):
        qw, dw = q[work], d_[work]
        lo = np.zeros_like(qw)
        hi = np.ones_like(qw)
        # Grow the bracket until the tail at hi is below the target (tail decreases with t).
        for _ in range(2000):
            need = student_t_two_sided_tail(hi, dw) > qw
            if not np.any(need):
                break
            lo = np.where(need, hi, lo)
            hi = np.where(need, hi * 2.0, hi)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            above = student_t_two_sided_tail(mid, dw) > qw  # mid still too small
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
            if np.all(hi - lo <= 4e-16 * hi):
                break
        out[work] = 0.5 * (lo + hi)
    return (sign * out).reshape(shape)
