"""Normal-Inverse-Gamma maths against torch.distributions.StudentT and hand-derived identities."""

from __future__ import annotations

import math

import pytest
import torch

from perception_nodes.evidential import nig as N
from perception_nodes.evidential.nig import NIG
from perception_nodes.learning import losses

EPS32 = float(torch.finfo(torch.float32).eps)


def _rand_nig(n=256, seed=0, dtype=torch.float32) -> NIG:
    g = torch.Generator().manual_seed(seed)
    return N.nig_from_raw(torch.randn(n, 4, generator=g, dtype=dtype) * 2.0)


def test_constraints_hold_even_for_extreme_raw_outputs():
    raw = torch.tensor([[0.0, -500.0, -500.0, -500.0], [3.0, 500.0, 500.0, 500.0]])
    p = N.nig_from_raw(raw)
    assert (p.nu > 0).all() and (p.alpha > 1).all() and (p.beta > 0).all()
    assert torch.equal(p.gamma, raw[:, 0])
    with pytest.raises(ValueError):
        N.nig_from_raw(torch.zeros(2, 3))
    q = N.nig_from_raw(torch.zeros(2, 4, 5), dim=1)
    assert q.gamma.shape == (2, 5)


def test_hand_case_variances():
    p = NIG(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), torch.tensor(4.0))
    assert N.aleatoric_variance(p).item() == pytest.approx(4 / 2)
    assert N.epistemic_variance(p).item() == pytest.approx(4 / (2 * 2))
    loc, scale, df = N.student_t(p)
    assert (loc.item(), df.item()) == (1.0, 6.0)
    assert scale.item() ** 2 == pytest.approx(4 * 3 / (2 * 3), rel=4 * EPS32)


def test_nll_equals_student_t_log_prob():
    p = _rand_nig(seed=1)
    g = torch.Generator().manual_seed(2)
    y = p.gamma + torch.randn(p.gamma.shape, generator=g) * 3.0
    loc, scale, df = N.student_t(p)
    ref = -torch.distributions.StudentT(df.double(), loc.double(), scale.double()).log_prob(y.double())
    got = N.nll(p, y).double()
    # float32 evaluation of a sum of O(|terms|) logs: tolerance scales with the largest term
    mag = 1.0 + (p.alpha.double() * torch.log(2 * p.beta.double() * (1 + p.nu.double())).abs()).max()
    assert torch.allclose(got, ref, atol=64 * EPS32 * mag.item())
    assert torch.allclose(N.nll(p, y), losses.nig_nll(y, *p), atol=0.0, rtol=0.0)  # same formula as training


def test_predictive_variance_is_student_t_variance_and_sum_of_parts():
    p = _rand_nig(seed=3, dtype=torch.float64)
    loc, scale, df = N.student_t(p)
    ref = torch.distributions.StudentT(df, loc, scale).variance
    assert torch.allclose(N.predictive_variance(p), ref, rtol=1e-12)
    assert torch.allclose(N.predictive_variance(p), N.aleatoric_variance(p) + N.epistemic_variance(p), rtol=1e-12)


def test_regulariser_and_loss():
    p = NIG(torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([1.0]))
    y = torch.tensor([0.5])
    assert N.evidence_regulariser(p, y).item() == pytest.approx(0.5 * 7.0)
    w = math.sqrt(1.0 * 3.0 / (3.0 * 2.0))
    assert N.evidence_regulariser(p, y, normalised=True).item() == pytest.approx(0.5 / w * 7.0, rel=4 * EPS32)
    assert torch.allclose(N.evidence_regulariser(p, y, True), losses.nig_regularizer(y, *p, normalize=True))
    total = N.evidential_regression_loss(p, y, reg_weight=0.1)
    assert torch.allclose(total, N.nll(p, y) + 0.1 * N.evidence_regulariser(p, y))


def test_gradients_finite():
    raw = torch.tensor([[0.0, -80.0, -80.0, -80.0], [1.0, 80.0, 80.0, 80.0], [0.3, 0.0, 0.0, 0.0]],
                       requires_grad=True)
    y = torch.tensor([100.0, -3.0, 0.3])
    loss = N.evidential_regression_loss(N.nig_from_raw(raw), y, 0.01, normalised=True).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(raw.grad).all()


def test_fuse_properties():
    a, b, c = _rand_nig(64, 10, torch.float64), _rand_nig(64, 11, torch.float64), _rand_nig(64, 12, torch.float64)

    def close(x: NIG, y: NIG) -> bool:
        return all(torch.allclose(u, v, rtol=1e-10, atol=1e-12) for u, v in zip(x, y))

    assert close(N.fuse(a, b), N.fuse(b, a))  # commutative
    assert close(N.fuse(N.fuse(a, b), c), N.fuse(a, N.fuse(b, c)))  # associative (nu weighting)
    # B-source closed form
    f3 = N.fuse_many([a, b, c])
    nu = a.nu + b.nu + c.nu
    gamma = (a.nu * a.gamma + b.nu * b.gamma + c.nu * c.gamma) / nu
    alpha = a.alpha + b.alpha + c.alpha + (3 - 1) / 2
    beta = a.beta + b.beta + c.beta + 0.5 * sum(p.nu * (p.gamma - gamma) ** 2 for p in (a, b, c))
    assert close(f3, NIG(gamma, nu, alpha, beta))
    # disagreement raises beta by 1/2 nu_a nu_b d^2 / (nu_a + nu_b)
    f = N.fuse(a, b)
    extra = 0.5 * a.nu * b.nu * (a.gamma - b.gamma) ** 2 / (a.nu + b.nu)
    assert torch.allclose(f.beta - a.beta - b.beta, extra, rtol=1e-9, atol=1e-12)
    # identical sources: same mean, lower epistemic variance
    g = N.fuse(a, a)
    assert torch.allclose(g.gamma, a.gamma)
    assert (N.epistemic_variance(g) < N.epistemic_variance(a)).all()
    # mean lies between the two, nearer the source with more nu
    lo, hi = torch.minimum(a.gamma, b.gamma), torch.maximum(a.gamma, b.gamma)
    assert ((f.gamma >= lo - 1e-12) & (f.gamma <= hi + 1e-12)).all()
    nearer_a = (f.gamma - a.gamma).abs() <= (f.gamma - b.gamma).abs() + 1e-12
    assert torch.equal(nearer_a, a.nu >= b.nu)
    # authors' weighting is an option; commutative still
    assert close(N.fuse(a, b, "nu_plus_2alpha"), N.fuse(b, a, "nu_plus_2alpha"))
    with pytest.raises(ValueError):
        N.fuse(a, b, "mean")
    with pytest.raises(ValueError):
        N.fuse_many([])


def test_pose_covariance_layout_and_psd():
    vx, vy, vz, vyaw = (torch.rand(5, dtype=torch.float64) for _ in range(4))
    cov = N.pose_covariance(vx, vy, vz, vyaw, unestimated_variance=1e6)
    assert cov.shape == (5, 6, 6)
    assert torch.equal(cov, cov.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(cov) >= 0).all()
    flat = cov.reshape(5, 36)
    assert torch.equal(flat[:, 0], vx) and torch.equal(flat[:, 7], vy) and torch.equal(flat[:, 14], vz)
    assert torch.equal(flat[:, 35], vyaw) and (flat[:, 21] == 1e6).all() and (flat[:, 28] == 1e6).all()
