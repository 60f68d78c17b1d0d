"""Evidential regression: Normal-Inverse-Gamma (NIG) heads, their uncertainties, loss and fusion, in torch.

A regression head emits four numbers per target, ``(gamma, nu, alpha, beta)`` with ``nu > 0``,
``alpha > 1``, ``beta > 0`` (Amini, Schwarting, Soleimany & Rus, "Deep Evidential Regression", NeurIPS
2020). They parameterise a NIG prior over the target's Gaussian mean and variance, whose marginal is a
Student-t; from one forward pass::

    prediction                 E[mu]      = gamma
    aleatoric (data) variance  E[sigma^2] = beta / (alpha - 1)
    epistemic (model) variance Var[mu]    = beta / (nu (alpha - 1))
    predictive                 St(y; gamma, scale^2 = beta (1 + nu) / (nu alpha), df = 2 alpha)
    predictive variance        scale^2 df / (df - 2) = beta (1 + nu) / (nu (alpha - 1)) = aleatoric + epistemic

Training minimises the Student-t negative log-likelihood plus an evidence regulariser that removes
evidence where the error is large (Amini 2020, sec. 3), with ``Omega = 2 beta (1 + nu)``::

    NLL = 1/2 log(pi / nu) - alpha log Omega + (alpha + 1/2) log(nu (y - gamma)^2 + Omega)
          + log Gamma(alpha) - log Gamma(alpha + 1/2)
    REG = |y - gamma| (2 nu + alpha)

Meinert, Gawlikowski & Lavin (AAAI 2023) show the aleatoric/epistemic split is heuristic and suggest
dividing the regulariser by the Student-t width ``w = sqrt(beta (1 + nu) / (alpha nu))``, so the penalty
does not depend on the target's scale; :func:`evidence_regulariser` offers that as ``normalised=True``.
The published covariance uses the predictive (Student-t) variance, which does not depend on the split.

Two NIG predictions of one quantity (two sensors, or a prediction carried over from the previous frame)
are fused by the MoNIG rule (Ma, Han, Zhang et al., "Trustworthy Multimodal Regression with Mixture of
Normal-inverse Gamma Distributions", NeurIPS 2021); see :func:`fuse`.

Everything is elementwise and broadcasts; the four parameters travel as an :class:`NIG` named tuple.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "NIG",
    "aleatoric_variance",
    "epistemic_variance",
    "evidence_regulariser",
    "evidential_regression_loss",
    "fuse",
    "fuse_many",
    "nig_from_raw",
    "nll",
    "pose_covariance",
    "predictive_variance",
    "student_t",
]

#: Floor added to softplus outputs so nu, alpha - 1 and beta stay > 0 when softplus underflows (float32
#: softplus(x) is exactly 0 below x ~ -104); far below any value a trained head produces.
MIN_EVIDENCE = 1e-6


class NIG(NamedTuple):
    """Normal-Inverse-Gamma parameters (each a tensor of the same shape): mean, nu > 0, alpha > 1, beta > 0."""

    gamma: torch.Tensor
    nu: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


def nig_from_raw(raw: torch.Tensor, dim: int = -1) -> NIG:
    """Split a raw head output with 4 entries along ``dim`` into constrained NIG parameters.

    ``gamma = raw_0``, ``nu = softplus(raw_1)``, ``alpha = softplus(raw_2) + 1``, ``beta = softplus(raw_3)``
    (Amini 2020, sec. 3.3), each plus :data:`MIN_EVIDENCE`. ``alpha > 1`` keeps both variances finite.
    """
    if raw.shape[dim] != 4:
        raise ValueError(f"NIG head needs 4 channels along dim {dim}, got {raw.shape[dim]}")
    g, n, a, b = raw.unbind(dim)
    return NIG(g, F.softplus(n) + MIN_EVIDENCE, F.softplus(a) + 1.0 + MIN_EVIDENCE, F.softplus(b) + MIN_EVIDENCE)


def aleatoric_variance(p: NIG) -> torch.Tensor:
    """Expected data noise ``E[sigma^2] = beta / (alpha - 1)``."""
    return p.beta / (p.alpha - 1.0)


def epistemic_variance(p: NIG) -> torch.Tensor:
    """Variance of the mean ``Var[mu] = beta / (nu (alpha - 1))``; shrinks as evidence ``nu`` grows."""
    return p.beta / (p.nu * (p.alpha - 1.0))


def predictive_variance(p: NIG) -> torch.Tensor:
    """Variance of the Student-t predictive, ``beta (1 + nu) / (nu (alpha - 1))`` = aleatoric + epistemic."""
    return p.beta * (1.0 + p.nu) / (p.nu * (p.alpha - 1.0))


def student_t(p: NIG) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loc, scale, df)`` of the predictive Student-t: ``gamma``, ``sqrt(beta (1 + nu) / (nu alpha))``, ``2 alpha``.

    Pass them to ``torch.distributions.StudentT(df, loc, scale)`` for quantiles or sampling.
    """
    scale = torch.sqrt(p.beta * (1.0 + p.nu) / (p.nu * p.alpha))
    return p.gamma, scale, 2.0 * p.alpha


def nll(p: NIG, y: torch.Tensor) -> torch.Tensor:
    """Student-t negative log-likelihood of ``y`` (Amini 2020, sec. 3), elementwise."""
    omega = 2.0 * p.beta * (1.0 + p.nu)
    return (
        0.5 * torch.log(math.pi / p.nu)
        - p.alpha * torch.log(omega)
        + (p.alpha + 0.5) * torch.log(p.nu * (y - p.gamma) ** 2 + omega)
        + torch.lgamma(p.alpha)
        - torch.lgamma(p.alpha + 0.5)
    )


def evidence_regulariser(p: NIG, y: torch.Tensor, normalised: bool = False) -> torch.Tensor:
    """``|y - gamma| (2 nu + alpha)`` (Amini 2020, sec. 3); ``normalised`` divides the error by the Student-t width.

    The total evidence ``2 nu + alpha`` is penalised in proportion to the error, so confident wrong
    predictions lose evidence. ``normalised=True`` is Meinert et al.'s (2023) scale-free variant
    ``|y - gamma| / w``, ``w = sqrt(beta (1 + nu) / (alpha nu))``.
    """
    err = torch.abs(y - p.gamma)
    if normalised:
        err = err / torch.sqrt(p.beta * (1.0 + p.nu) / (p.alpha * p.nu))
    return err * (2.0 * p.nu + p.alpha)


def evidential_regression_loss(p: NIG, y: torch.Tensor, reg_weight: float = 0.01,
                               normalised: bool = False) -> torch.Tensor:
    """Elementwise ``NLL + reg_weight * REG`` (Amini uses weights around 1e-2); reduce at the call site."""
    return nll(p, y) + reg_weight * evidence_regulariser(p, y, normalised)


def fuse(a: NIG, b: NIG, mean_weighting: str = "nu") -> NIG:
    """MoNIG summation of two NIG predictions of the same quantity (Ma et al. 2021, sec. 3)::

        gamma = (nu_a gamma_a + nu_b gamma_b) / (nu_a + nu_b)
        nu    = nu_a + nu_b
        alpha = alpha_a + alpha_b + 1/2
        beta  = beta_a + beta_b + 1/2 nu_a (gamma_a - gamma)^2 + 1/2 nu_b (gamma_b - gamma)^2

    Properties (tested): commutative; with ``mean_weighting="nu"`` also associative and equal to the
    B-source form ``alpha = sum alpha_b + (B - 1)/2``, ``beta = sum beta_b + 1/2 sum nu_b (gamma_b - gamma)^2``
    (the beta term is a parallel-axis decomposition); the mean moves toward the source with more evidence
    ``nu``; disagreement raises beta by ``1/2 nu_a nu_b (gamma_a - gamma_b)^2 / (nu_a + nu_b)`` and with it
    both variances, so conflicting sources do not produce a confident average; two identical sources keep
    gamma and lower the epistemic variance (``alpha`` grows faster than the doubled ``beta / nu``).

    ``mean_weighting="nu_plus_2alpha"`` weights the means by ``nu + 2 alpha`` instead, as the authors' code
    does (an option, not the paper's rule; associativity then no longer holds exactly).
    """
    if mean_weighting == "nu":
        wa, wb = a.nu, b.nu
    elif mean_weighting == "nu_plus_2alpha":
        wa, wb = a.nu + 2.0 * a.alpha, b.nu + 2.0 * b.alpha
    else:
        raise ValueError(f"mean_weighting must be 'nu' or 'nu_plus_2alpha', got {mean_weighting!r}")
    gamma = (wa * a.gamma + wb * b.gamma) / (wa + wb)
    nu = a.nu + b.nu
    alpha = a.alpha + b.alpha + 0.5
    beta = a.beta + b.beta + 0.5 * a.nu * (a.gamma - gamma) ** 2 + 0.5 * b.nu * (b.gamma - gamma) ** 2
    return NIG(gamma, nu, alpha, beta)


def fuse_many(parts: Sequence[NIG], mean_weighting: str = "nu") -> NIG:
    """Left fold of :func:`fuse` over one or more NIGs (order-free for ``mean_weighting="nu"``)."""
    if not parts:
        raise ValueError("fuse_many needs at least one NIG")
    out = parts[0]
    for p in parts[1:]:
        out = fuse(out, p, mean_weighting)
    return out


def pose_covariance(
    var_x: torch.Tensor,
    var_y: torch.Tensor,
    var_z: torch.Tensor,
    var_yaw: torch.Tensor,
    unestimated_variance: float = 1e6,
) -> torch.Tensor:
    """Row-major ``[..., 6, 6]`` covariance over (x, y, z, roll, pitch, yaw), as ROS PoseWithCovariance.

    The heads predict x, y, z and yaw independently, so the matrix is diagonal (symmetric positive
    semi-definite by construction when the variances are >= 0). Roll and pitch are not estimated (boxes
    are level); they get ``unestimated_variance``, the usual ROS way of saying "no information" (a large
    variance rather than 0, which a downstream filter would read as "known exactly"). Flatten the last
    two axes to get the 36-element message field.
    """
    var_x, var_y, var_z, var_yaw = torch.broadcast_tensors(var_x, var_y, var_z, var_yaw)
    fixed = torch.full_like(var_x, unestimated_variance)
    diag = torch.stack([var_x, var_y, var_z, fixed, fixed, var_yaw], dim=-1)
    return torch.diag_embed(diag)
