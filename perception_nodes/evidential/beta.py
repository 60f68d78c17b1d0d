"""Binary evidential opinions (Beta distributions) held as arrays of evidence.

A binary frame (e.g. a grid cell that is *occupied* or *free*) carries two non-negative evidence
amounts: ``r`` for the first class (occupied) and ``s`` for the second (free). Following evidential deep
learning (Sensoy, Kaplan & Kandemir, "Evidential Deep Learning to Quantify Classification
Uncertainty", NeurIPS 2018) the Dirichlet parameters are ``alpha = evidence + 1``; for two classes that
is a Beta(r + 1, s + 1) distribution with strength ``S = r + s + 2`` (K = 2 classes). The same object is
a binomial opinion in Jøsang's subjective logic (A. Jøsang, *Subjective Logic: A Formalism for Reasoning
Under Uncertainty*, Springer 2016, ch. 3: binomial opinions and their mapping to Beta PDFs) with the
non-informative prior weight ``W = 2`` and base rate ``a = 1/2``::

    belief      b = r / (r + s + W)
    disbelief   d = s / (r + s + W)
    vacuity     u = W / (r + s + W)          (b + d + u = 1)
    projected   P = b + a u = (r + W a) / (r + s + W) = (r + 1) / (r + s + 2)   (Beta mean)

Everything here is elementwise and broadcasts, so a whole occupancy grid is one call. Floating inputs
keep their dtype (a float32 grid stays float32); integer or Python-number inputs are computed in
float64. Evidence must be finite-or-infinite and non-negative; negative evidence raises ``ValueError``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "PRIOR_WEIGHT",
    "as_opinion",
    "belief",
    "conflict",
    "cumulative_fusion",
    "discount",
    "disbelief",
    "expected_probability",
    "vacuity",
]

#: Non-informative prior weight W of subjective logic; equals K = 2 classes of Sensoy et al. (alpha = e + 1).
PRIOR_WEIGHT = 2.0


def _evidence(x: ArrayLike, name: str) -> NDArray[np.floating]:
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if np.any(a < 0):
        raise ValueError(f"{name}: evidence must be non-negative")
    return a


def _pair(r: ArrayLike, s: ArrayLike) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    return _evidence(r, "r"), _evidence(s, "s")


def expected_probability(r: ArrayLike, s: ArrayLike) -> NDArray[np.floating]:
    """Expected probability of the first class (occupied): ``(r + 1) / (r + s + 2)``.

    Sensoy et al. 2018, eq. 2: ``p_k = alpha_k / S`` with ``alpha = e + 1``, ``S = sum(alpha)``. It equals
    Jøsang's projected probability ``P = b + a u`` for base rate ``a = 1/2`` (Subjective Logic ch. 3).
    No evidence gives 0.5.
    """
    r, s = _pair(r, s)
    return (r + 1) / (r + s + PRIOR_WEIGHT)


def vacuity(r: ArrayLike, s: ArrayLike) -> NDArray[np.floating]:
    """Vacuity (uncertainty mass) ``u = K / S = 2 / (r + s + 2)``, in (0, 1]; 1 means no evidence at all.

    Sensoy et al. 2018, eq. 1 (``u = K / S``); Jøsang, Subjective Logic ch. 3 (``u = W / (r + s + W)``).
    """
    r, s = _pair(r, s)
    return PRIOR_WEIGHT / (r + s + PRIOR_WEIGHT)


def belief(r: ArrayLike, s: ArrayLike) -> NDArray[np.floating]:
    """Belief mass of the first class ``b = r / (r + s + 2)`` (Sensoy 2018 eq. 1: ``b_k = e_k / S``)."""
    r, s = _pair(r, s)
    return r / (r + s + PRIOR_WEIGHT)


def disbelief(r: ArrayLike, s: ArrayLike) -> NDArray[np.floating]:
    """Disbelief (belief in the second class, free) ``d = s / (r + s + 2)``."""
    r, s = _pair(r, s)
    return s / (r + s + PRIOR_WEIGHT)


def as_opinion(
    r: ArrayLike, s: ArrayLike
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """The binomial opinion ``(b, d, u)`` of evidence ``(r, s)``; ``b + d + u == 1``.

    Jøsang, Subjective Logic ch. 3 (mapping between binomial opinions and Beta evidence).
    """
    r, s = _pair(r, s)
    strength = r + s + PRIOR_WEIGHT
    return r / strength, s / strength, PRIOR_WEIGHT / strength


def cumulative_fusion(
    r1: ArrayLike, s1: ArrayLike, r2: ArrayLike, s2: ArrayLike
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Cumulative (aleatory) fusion of two *independent* sources: the evidence adds, ``(r1 + r2, s1 + s2)``.

    Jøsang, Subjective Logic ch. 12 (belief fusion): in opinion form
    ``b = (b1 u2 + b2 u1) / (u1 + u2 - u1 u2)``, ``u = u1 u2 / (u1 + u2 - u1 u2)``, which for equal base rates
    is exactly the sum of the two sources' evidence. Commutative and associative; fusing with a vacuous
    opinion (no evidence) changes nothing. Not for dependent sources (the same scan counted twice): use an
    averaging rule for those.
    """
    r1, s1 = _pair(r1, s1)
    r2, s2 = _pair(r2, s2)
    return r1 + r2, s1 + s2


def discount(
    r: ArrayLike, s: ArrayLike, trust: ArrayLike
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Trust discounting by evidence scaling: ``(w r, w s)`` for a trust ``w`` in [0, 1].

    A source trusted with ``w`` contributes the fraction ``w`` of its evidence (the rule of the project's
    field notes §4; the same scaling as the forgetting factor of the Beta reputation system, Jøsang &
    Ismail 2002). ``w = 1`` keeps the opinion, ``w = 0`` makes it vacuous; the expected probability moves
    toward 1/2 and the vacuity grows. Note: Jøsang's *opinion-form* trust discounting (Subjective Logic
    ch. 14, ``b' = w b``, ``d' = w d``, ``u' = 1 - w (b + d)``) is a different, stronger operator; evidence
    scaling is used here because it composes with :func:`cumulative_fusion` (discounted sources add).
    """
    r, s = _pair(r, s)
    w = np.asarray(trust)
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float64)
    if np.any((w < 0) | (w > 1)) or np.any(np.isnan(w)):
        raise ValueError("trust must lie in [0, 1]")
    w = w.astype(np.result_type(r, s), copy=False)
    return r * w, s * w


def conflict(r1: ArrayLike, s1: ArrayLike, r2: ArrayLike, s2: ArrayLike) -> NDArray[np.floating]:
    """Conflict between two opinions ``K = b1 d2 + d1 b2`` (in [0, 1)).

    The mass that Dempster's rule of combination assigns to the empty set and then normalises away
    (``K = m_O^1 m_F^2 + m_F^1 m_O^2`` with the opinions read as mass functions over {O, F}; cf. Jøsang,
    Subjective Logic ch. 12). Log it as a diagnostic of disagreeing sources; do not decide with it
    (field notes §4).
    """
    b1, d1 = belief(r1, s1), disbelief(r1, s1)
    b2, d2 = belief(r2, s2), disbelief(r2, s2)
    return b1 * d2 + d1 * b2
