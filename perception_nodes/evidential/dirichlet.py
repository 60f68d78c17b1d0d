"""K-class evidential opinions (Dirichlet distributions) for network heads, in torch.

A classification head emits non-negative evidence ``e_k`` per class (softplus of its raw output). Following
evidential deep learning (Sensoy, Kaplan & Kandemir, "Evidential Deep Learning to Quantify Classification
Uncertainty", NeurIPS 2018) the Dirichlet parameters are ``alpha = e + 1``, the strength ``S = sum(alpha)``
and, with ``K`` classes::

    belief               b_k = e_k / S
    vacuity              u   = K / S              (sum(b) + u = 1; 1 means no evidence at all)
    expected probability p_k = alpha_k / S         (the Dirichlet mean; used as the detection score)

The binary case (K = 2) is exactly :mod:`perception_nodes.evidential.beta` (Beta(r + 1, s + 1)).

Training uses the Bayes risk of a loss under the Dirichlet (Sensoy 2018, sec. 3) plus a KL term that
pulls the evidence of the *wrong* classes back to the uniform Dirichlet (sec. 3), annealed from 0 to 1 so
the network first learns to fit and only then to say "I don't know"::

    CE form   L_ce  = sum_k y_k (psi(S) - psi(alpha_k))
    MSE form  L_mse = sum_k (y_k - p_k)^2 + p_k (1 - p_k) / (S + 1)
    KL        KL(Dir(alpha~) || Dir(1)),   alpha~ = y + (1 - y) * alpha   (target evidence removed)

The class axis is ``dim`` (default the last; use ``dim=1`` for ``[B, K, H, W]`` maps). Functions are
elementwise over every other axis and differentiable; they do not check their inputs (that would
synchronise a GPU), so give them ``alpha >= 1`` as :func:`alpha_from_logits` makes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "alpha_from_evidence",
    "alpha_from_logits",
    "annealing_coefficient",
    "bayes_risk_ce",
    "bayes_risk_mse",
    "dirichlet_belief",
    "dirichlet_expected_probability",
    "dirichlet_vacuity",
    "evidential_classification_loss",
    "kl_to_uniform",
    "remove_target_evidence",
    "strength",
]


def alpha_from_evidence(evidence: torch.Tensor) -> torch.Tensor:
    """``alpha = e + 1`` (Sensoy 2018, sec. 3): zero evidence is the uniform Dirichlet."""
    return evidence + 1.0


def alpha_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Raw head output -> Dirichlet parameters: ``softplus(x) + 1``.

    Softplus rather than ReLU (Sensoy's first choice) keeps a gradient for negative raw outputs, so a
    class that starts with no evidence can still learn; rather than exp, it grows linearly and does not
    overflow float16/float32 for large outputs.
    """
    return F.softplus(logits) + 1.0


def strength(alpha: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Dirichlet strength ``S = sum_k alpha_k`` (kept as a size-1 axis so it broadcasts against alpha)."""
    return alpha.sum(dim=dim, keepdim=True)


def dirichlet_expected_probability(alpha: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Expected class probabilities ``alpha_k / S`` (Sensoy 2018 eq. 2); sums to 1 along ``dim``."""
    return alpha / strength(alpha, dim)


def dirichlet_belief(alpha: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Belief masses ``b_k = (alpha_k - 1) / S`` (Sensoy 2018 eq. 1)."""
    return (alpha - 1.0) / strength(alpha, dim)


def dirichlet_vacuity(alpha: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Vacuity (uncertainty mass) ``u = K / S`` in (0, 1], with ``dim`` removed; 1 = no evidence."""
    k = alpha.shape[dim]
    return k / alpha.sum(dim=dim)


def bayes_risk_ce(alpha: torch.Tensor, target: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Expected cross-entropy under the Dirichlet, ``sum_k y_k (psi(S) - psi(alpha_k))`` (Sensoy 2018, sec. 3).

    ``target`` is one-hot (or soft) along ``dim``. Returns one value per sample (``dim`` removed).
    """
    s = strength(alpha, dim)
    return (target * (torch.digamma(s) - torch.digamma(alpha))).sum(dim=dim)


def bayes_risk_mse(alpha: torch.Tensor, target: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Expected squared error under the Dirichlet (Sensoy 2018, sec. 3): error of the mean plus its variance.

    ``sum_k (y_k - p_k)^2 + p_k (1 - p_k) / (S + 1)``. Sensoy et al. report it more stable than the CE
    form; both are offered so the choice is a config value.
    """
    s = strength(alpha, dim)
    p = alpha / s
    return ((target - p) ** 2 + p * (1.0 - p) / (s + 1.0)).sum(dim=dim)


def remove_target_evidence(alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``alpha~ = y + (1 - y) * alpha``: the true class's evidence is not penalised by the KL term."""
    return target + (1.0 - target) * alpha


def kl_to_uniform(alpha: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``KL(Dir(alpha) || Dir(1, ..., 1))`` per sample (Sensoy 2018, sec. 3), ``dim`` removed.

    ``log Gamma(S) - log Gamma(K) - sum_k log Gamma(alpha_k) + sum_k (alpha_k - 1)(psi(alpha_k) - psi(S))``;
    zero exactly at ``alpha = 1`` and positive elsewhere.
    """
    k = alpha.shape[dim]
    s = alpha.sum(dim=dim, keepdim=True)
    first = torch.lgamma(s).squeeze(dim) - math.lgamma(k) - torch.lgamma(alpha).sum(dim=dim)
    second = ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(s))).sum(dim=dim)
    return first + second


def annealing_coefficient(epoch: int | float, anneal_epochs: int | float) -> float:
    """KL weight ``lambda_t = min(1, t / T)`` (Sensoy 2018 sec. 4; T = 10 epochs there)."""
    if anneal_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch / anneal_epochs)))


def evidential_classification_loss(
    alpha: torch.Tensor,
    target: torch.Tensor,
    kl_weight: float,
    form: str = "ce",
    dim: int = -1,
) -> torch.Tensor:
    """Per-sample Sensoy loss: Bayes risk (``form`` = ``"ce"`` or ``"mse"``) + ``kl_weight`` x KL term.

    The KL term acts on :func:`remove_target_evidence` of ``alpha``, so it only shrinks misleading evidence.
    Reduce (mean, or a masked mean over observed cells) at the call site.
    """
    if form == "ce":
        risk = bayes_risk_ce(alpha, target, dim)
    elif form == "mse":
        risk = bayes_risk_mse(alpha, target, dim)
    else:
        raise ValueError(f"form must be 'ce' or 'mse', got {form!r}")
    if kl_weight == 0:
        return risk
    return risk + kl_weight * kl_to_uniform(remove_target_evidence(alpha, target), dim)
