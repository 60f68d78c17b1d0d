"""Evidential losses (field notes §4): Dirichlet/Beta Bayes-risk cross-entropy with an annealed KL term
(Sensoy et al. 2018), and the Normal-Inverse-Gamma regression loss (Amini et al. 2020, with the
Student-t-width normalisation of Meinert et al. 2023).

Notation: evidence e ≥ 0 (softplus of the network's output), α = e + 1, S = Σ_k α_k, K classes.

* Bayes-risk cross-entropy: ``Σ_k y_k (ψ(S) − ψ(α_k))`` — the expected cross-entropy under Dir(α).
* KL to the uniform Dirichlet of the evidence that does *not* support the true class:
  ``KL(Dir(α̃) ‖ Dir(1))`` with ``α̃ = y + (1 − y) ⊙ α`` (the true class's α replaced by 1), so only
  misleading evidence is penalised; ``KL(Dir(a) ‖ Dir(1)) = lnΓ(Σa) − lnΓ(K) − Σ lnΓ(a_k)
  + Σ (a_k − 1)(ψ(a_k) − ψ(Σa))``. It is weighted by λ_t, annealed from 0 to 1 (:func:`kl_annealing`).
* The Beta case (K = 2: occupied evidence r, free evidence s, α = r + 1, β = s + 1) has its own
  element-wise functions (no stacking), equal to the Dirichlet ones.

All functions are element-wise over leading dimensions and return per-element losses: reduce (and mask)
in the caller. The Dirichlet and NIG maths live in :mod:`perception_nodes.evidential` (their one home);
the functions here keep the trainer's signatures on top of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from perception_nodes.evidential import dirichlet, nig

__all__ = [
    "beta_bayes_risk_ce",
    "beta_evidential_terms",
    "beta_kl_uniform",
    "dirichlet_bayes_risk_ce",
    "dirichlet_evidential_loss",
    "dirichlet_kl_uniform",
    "kl_annealing",
    "nig_nll",
    "nig_regularizer",
]


def kl_annealing(progress_epochs: float, anneal_epochs: float, max_weight: float = 1.0) -> float:
    """λ_t = ``max_weight · min(1, progress / anneal_epochs)``; ``progress`` in (fractional) epochs.

    ``anneal_epochs <= 0`` gives the full weight from the start.
    """
    if anneal_epochs <= 0:
        return float(max_weight)
    return float(max_weight) * min(1.0, max(0.0, float(progress_epochs)) / float(anneal_epochs))


# --------------------------------------------------------------------------------------------------
# Dirichlet (K classes, last dimension)


def dirichlet_bayes_risk_ce(alpha: Tensor, y: Tensor) -> Tensor:
    """``Σ_k y_k (ψ(S) − ψ(α_k))`` over the last dimension; ``y`` one-hot (or soft) like ``alpha``."""
    return dirichlet.bayes_risk_ce(alpha, y)


def dirichlet_kl_uniform(alpha: Tensor) -> Tensor:
    """``KL(Dir(α) ‖ Dir(1, …, 1))`` over the last dimension (0 exactly when every α_k = 1)."""
    return dirichlet.kl_to_uniform(alpha)


def dirichlet_evidential_loss(alpha: Tensor, y: Tensor, kl_weight: float) -> Tensor:
    """Bayes-risk CE + ``kl_weight`` · KL(Dir(α̃) ‖ Dir(1)), α̃ = y + (1 − y) ⊙ α; per element."""
    return dirichlet.bayes_risk_ce(alpha, y) + kl_weight * dirichlet.kl_to_uniform(
        dirichlet.remove_target_evidence(alpha, y))


# --------------------------------------------------------------------------------------------------
# Beta (two classes: "positive" with α, "negative" with β)


def beta_bayes_risk_ce(a: Tensor, b: Tensor, y: Tensor) -> Tensor:
    """Bayes-risk CE of Beta(a, b) for a binary label ``y`` (1: the ``a`` class, e.g. occupied)."""
    ds = torch.digamma(a + b)
    return y * (ds - torch.digamma(a)) + (1.0 - y) * (ds - torch.digamma(b))


def beta_kl_uniform(a: Tensor, b: Tensor) -> Tensor:
    """``KL(Beta(a, b) ‖ Beta(1, 1))`` (lnΓ(2) = 0)."""
    s = a + b
    ds = torch.digamma(s)
    return (
        torch.lgamma(s)
        - torch.lgamma(a)
        - torch.lgamma(b)
        + (a - 1.0) * (torch.digamma(a) - ds)
        + (b - 1.0) * (torch.digamma(b) - ds)
    )


def beta_evidential_terms(a: Tensor, b: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element (Bayes-risk CE, KL(Beta(ã, b̃) ‖ Beta(1, 1))) for a binary label ``y``: the true
    class's parameter is set to 1 (ã = y + (1 − y)·a, b̃ = (1 − y) + y·b), so only evidence for the
    wrong class is pulled to zero. The loss is ``ce + λ_t · kl``; the terms come back separately so that
    callers can weight, mask and log them.
    """
    a_t = y + (1.0 - y) * a
    b_t = (1.0 - y) + y * b
    return beta_bayes_risk_ce(a, b, y), beta_kl_uniform(a_t, b_t)


# --------------------------------------------------------------------------------------------------
# Normal-Inverse-Gamma regression (for the regression branches: stereo depth, control)


def nig_nll(y: Tensor, gamma: Tensor, nu: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """Negative log-likelihood of ``y`` under the NIG evidential marginal, the Student-t
    St(γ, β(1+ν)/(να), 2α) (:func:`perception_nodes.evidential.nig.nll`). Needs ν > 0, α > 1, β > 0."""
    return nig.nll(nig.NIG(gamma, nu, alpha, beta), y)


def nig_regularizer(
    y: Tensor, gamma: Tensor, nu: Tensor, alpha: Tensor, beta: Tensor, *, normalize: bool = True
) -> Tensor:
    """Evidence regulariser ``|y − γ| · (2ν + α)`` (Amini 2020). With ``normalize`` (default) the error is
    divided by the Student-t width ``√(β(1+ν)/(αν))`` (Meinert 2023), so the penalty does not depend on
    the target's scale."""
    return nig.evidence_regulariser(nig.NIG(gamma, nu, alpha, beta), y, normalised=normalize)
