"""Dirichlet evidential maths against closed forms, torch.distributions and the training losses."""

from __future__ import annotations

import math

import pytest
import torch

from perception_nodes.evidential import beta as beta_np
from perception_nodes.evidential import dirichlet as D
from perception_nodes.learning import losses

EPS32 = float(torch.finfo(torch.float32).eps)


def _rand_alpha(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return D.alpha_from_logits(torch.randn(shape, generator=g, dtype=dtype) * 3.0)


def test_hand_cases_mean_vacuity_belief():
    # e = (2, 0, 0, 6): alpha = (3, 1, 1, 7), S = 12, K = 4
    alpha = D.alpha_from_evidence(torch.tensor([2.0, 0.0, 0.0, 6.0]))
    assert torch.equal(D.dirichlet_expected_probability(alpha), torch.tensor([3, 1, 1, 7]) / 12.0)
    assert D.dirichlet_vacuity(alpha).item() == pytest.approx(4 / 12, abs=4 * EPS32)
    b = D.dirichlet_belief(alpha)
    assert torch.allclose(b, torch.tensor([2, 0, 0, 6]) / 12.0, atol=4 * EPS32)
    assert (b.sum() + D.dirichlet_vacuity(alpha)).item() == pytest.approx(1.0, abs=8 * EPS32)
    # no evidence: uniform mean, vacuity 1
    a0 = D.alpha_from_evidence(torch.zeros(3))
    assert torch.equal(D.dirichlet_expected_probability(a0), torch.full((3,), 1 / 3))
    assert D.dirichlet_vacuity(a0).item() == 1.0


def test_mean_matches_torch_dirichlet_and_class_dim():
    alpha = _rand_alpha((2, 4, 5, 6))  # [B, K, H, W]
    p = D.dirichlet_expected_probability(alpha, dim=1)
    ref = torch.distributions.Dirichlet(alpha.movedim(1, -1)).mean.movedim(-1, 1)
    assert torch.allclose(p, ref, atol=4 * EPS32)
    assert torch.allclose(p.sum(1), torch.ones(2, 5, 6), atol=8 * EPS32)
    assert D.dirichlet_vacuity(alpha, dim=1).shape == (2, 5, 6)


def test_binary_case_equals_beta_module():
    r = torch.tensor([0.0, 1.5, 10.0], dtype=torch.float64)
    s = torch.tensor([3.0, 0.0, 10.0], dtype=torch.float64)
    alpha = D.alpha_from_evidence(torch.stack([r, s], -1))
    assert torch.allclose(D.dirichlet_expected_probability(alpha)[:, 0],
                          torch.from_numpy(beta_np.expected_probability(r.numpy(), s.numpy())))
    assert torch.allclose(D.dirichlet_vacuity(alpha), torch.from_numpy(beta_np.vacuity(r.numpy(), s.numpy())))


def test_kl_zero_at_uniform_and_matches_torch():
    assert D.kl_to_uniform(torch.ones(7, 4)).abs().max().item() <= 16 * EPS32
    alpha = _rand_alpha((64, 4), seed=1, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Dirichlet(alpha),
                                            torch.distributions.Dirichlet(torch.ones_like(alpha)))
    assert torch.allclose(D.kl_to_uniform(alpha), ref, rtol=1e-10, atol=1e-10)
    a32 = alpha.float()
    scale = 1 + ref.abs().max().item()
    assert torch.allclose(D.kl_to_uniform(a32).double(), ref, atol=64 * EPS32 * scale)
    assert (D.kl_to_uniform(alpha) > 0).all()


def test_bayes_risk_ce_is_expected_cross_entropy():
    # E_{p~Dir(alpha)}[-log p_k] = psi(S) - psi(alpha_k); check by Monte Carlo in float64 (loose, 5 sigma)
    alpha = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.manual_seed(3)
    samples = torch.distributions.Dirichlet(alpha).sample((200_000,))
    mc = -torch.log(samples[:, 0])
    exact = D.bayes_risk_ce(alpha, y).item()
    assert abs(mc.mean().item() - exact) < 5 * mc.std().item() / math.sqrt(len(mc))


def test_bayes_risk_mse_closed_form_by_monte_carlo():
    alpha = torch.tensor([3.0, 1.5, 2.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    torch.manual_seed(4)
    samples = torch.distributions.Dirichlet(alpha).sample((200_000,))
    mc = ((samples - y) ** 2).sum(-1)
    exact = D.bayes_risk_mse(alpha, y).item()
    assert abs(mc.mean().item() - exact) < 5 * mc.std().item() / math.sqrt(len(mc))


def test_loss_agrees_with_training_losses_and_removes_target_evidence():
    alpha = _rand_alpha((32, 4), seed=5, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(32) % 4, 4).double()
    ours = D.evidential_classification_loss(alpha, y, kl_weight=0.7)
    ref = losses.dirichlet_evidential_loss(alpha, y, 0.7)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    # evidence only on the true class: the KL term is zero, the loss is the Bayes risk alone
    alpha_true = 1.0 + 5.0 * y
    assert torch.allclose(D.evidential_classification_loss(alpha_true, y, 1.0), D.bayes_risk_ce(alpha_true, y))
    with pytest.raises(ValueError):
        D.evidential_classification_loss(alpha, y, 1.0, form="hinge")


def test_more_correct_evidence_lowers_both_risks():
    y = torch.tensor([0.0, 1.0, 0.0, 0.0])
    weak = D.alpha_from_evidence(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    strong = D.alpha_from_evidence(torch.tensor([0.0, 20.0, 0.0, 0.0]))
    wrong = D.alpha_from_evidence(torch.tensor([20.0, 0.0, 0.0, 0.0]))
    for form in ("ce", "mse"):
        lw = D.evidential_classification_loss(weak, y, 1.0, form)
        ls = D.evidential_classification_loss(strong, y, 1.0, form)
        lx = D.evidential_classification_loss(wrong, y, 1.0, form)
        assert ls < lw < lx


@pytest.mark.parametrize("form", ["ce", "mse"])
def test_gradients_finite_for_extreme_logits(form):
    logits = torch.tensor([[-200.0, 0.0, 50.0, 200.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    loss = D.evidential_classification_loss(D.alpha_from_logits(logits), y, 1.0, form).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_annealing_coefficient():
    assert D.annealing_coefficient(0, 10) == 0.0
    assert D.annealing_coefficient(5, 10) == 0.5
    assert D.annealing_coefficient(30, 10) == 1.0
    assert D.annealing_coefficient(3, 0) == 1.0
