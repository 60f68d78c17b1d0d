"""Evidential losses against hand-computed values and independent formulas."""

from __future__ import annotations

import math

import pytest
import torch

from perception_nodes.learning.losses import (
    beta_bayes_risk_ce,
    beta_evidential_terms,
    beta_kl_uniform,
    dirichlet_bayes_risk_ce,
    dirichlet_evidential_loss,
    dirichlet_kl_uniform,
    kl_annealing,
    nig_nll,
    nig_regularizer,
)

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_bayes_risk_ce_hand_values():
    # ψ(n+1) − ψ(n) = 1/n:  Beta(1,1), y=occ: ψ(2)−ψ(1) = 1;  Beta(3,1): ψ(4)−ψ(3) = 1/3 for y=occ,
    # ψ(4)−ψ(1) = 1 + 1/2 + 1/3 = 11/6 for y=free;  Beta(2,5), y=free: ψ(7)−ψ(5) = 1/5 + 1/6
    got = beta_bayes_risk_ce(T(1, 3, 3, 2), T(1, 1, 1, 5), T(1, 1, 0, 0))
    assert torch.allclose(got, T(1.0, 1 / 3, 11 / 6, 1 / 5 + 1 / 6), atol=1e-12)


def test_kl_to_uniform_hand_values():
    # KL(Beta(3,1) ‖ U) = ∫ 3x² ln(3x²) dx = ln 3 − 2/3 (and symmetric); KL(U ‖ U) = 0;
    # KL(Beta(2,2) ‖ U) = ∫ 6x(1−x) ln(6x(1−x)) dx = ln 6 − 5/3
    got = beta_kl_uniform(T(3, 1, 1, 2), T(1, 3, 1, 2))
    want = T(math.log(3) - 2 / 3, math.log(3) - 2 / 3, 0.0, math.log(6) - 5 / 3)
    assert torch.allclose(got, want, atol=1e-12)


def test_kl_term_vanishes_without_wrong_class_evidence():
    r = T(0.0, 0.5, 4.0, 30.0)
    # occupied cells whose free evidence is zero: however much occupied evidence, no KL penalty
    ce, kl = beta_evidential_terms(r + 1, torch.ones_like(r), torch.ones_like(r))
    assert torch.all(kl.abs() < 1e-12)
    # free cells whose occupied evidence is zero
    ce, kl = beta_evidential_terms(torch.ones_like(r), r + 1, torch.zeros_like(r))
    assert torch.all(kl.abs() < 1e-12)
    # ...but evidence for the wrong class is penalised, more for more
    _, kl = beta_evidential_terms(r + 1, torch.full_like(r, 3.0), torch.zeros_like(r))
    assert torch.all(kl[1:] > 0) and torch.all(kl[1:].diff() > 0)


def test_beta_forms_equal_the_dirichlet_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(100, generator=g, dtype=torch.float64) * 20 + 1
    b = torch.rand(100, generator=g, dtype=torch.float64) * 20 + 1
    y = (torch.rand(100, generator=g) > 0.5).double()
    alpha, onehot = torch.stack([a, b], -1), torch.stack([y, 1 - y], -1)
    assert torch.allclose(beta_bayes_risk_ce(a, b, y), dirichlet_bayes_risk_ce(alpha, onehot), atol=1e-12)
    assert torch.allclose(beta_kl_uniform(a, b), dirichlet_kl_uniform(alpha), atol=1e-10)
    ce, kl = beta_evidential_terms(a, b, y)
    assert torch.allclose(ce + 0.3 * kl, dirichlet_evidential_loss(alpha, onehot, 0.3), atol=1e-10)


def test_dirichlet_kl_matches_torch_distributions():
    alpha = T(2.0, 0.7, 5.0)
    ref = torch.distributions.kl_divergence(torch.distributions.Dirichlet(alpha), torch.distributions.Dirichlet(torch.ones(3, dtype=torch.float64)))
    assert float(dirichlet_kl_uniform(alpha)) == pytest.approx(float(ref), abs=1e-10)


def test_kl_annealing_schedule():
    assert kl_annealing(0.0, 4) == 0.0
    assert kl_annealing(1.0, 4) == 0.25
    assert kl_annealing(10.0, 4) == 1.0
    assert kl_annealing(2.0, 4, max_weight=0.5) == 0.25
    assert kl_annealing(0.0, 0) == 1.0


def test_nig_nll_is_the_student_t_marginal():
    y, gamma, nu, alpha, beta = T(0.3, -2.0, 5.0), T(0.0, -1.0, 4.0), T(0.5, 2.0, 10.0), T(1.5, 3.0, 8.0), T(0.7, 1.0, 2.0)
    st = torch.distributions.StudentT(2 * alpha, gamma, torch.sqrt(beta * (1 + nu) / (nu * alpha)))
    assert torch.allclose(nig_nll(y, gamma, nu, alpha, beta), -st.log_prob(y), atol=1e-10)


def test_nig_regularizer_normalised_by_student_t_width():
    y, gamma, nu, alpha, beta = T(1.0), T(0.0), T(2.0), T(3.0), T(0.5)
    plain = nig_regularizer(y, gamma, nu, alpha, beta, normalize=False)
    assert float(plain) == pytest.approx(1.0 * (2 * 2.0 + 3.0))
    width = math.sqrt(0.5 * 3.0 / (3.0 * 2.0))
    assert float(nig_regularizer(y, gamma, nu, alpha, beta)) == pytest.approx(7.0 / width)
    # scale-free: scaling targets and β by s² leaves the normalised penalty unchanged
    s = 10.0
    assert float(nig_regularizer(y * s, gamma * s, nu, alpha, beta * s * s)) == pytest.approx(7.0 / width)
