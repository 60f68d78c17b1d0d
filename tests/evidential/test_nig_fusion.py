"""Properties of the NIG pooling rule the control node fuses curvature with (perception_nodes.evidential.nig_fusion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes.eval.metrics._special import student_t_ppf
from perception_nodes.evidential import nig_fusion as nf

EPS = np.finfo(np.float64).eps


@st.composite
def nigs(draw, size: int = 3):
    """Valid NIGs over ranges that cover confident and vague curvature predictions."""
    g = draw(st.lists(st.floats(-0.2, 0.2), min_size=size, max_size=size))
    nu = draw(st.lists(st.floats(1e-3, 1e3), min_size=size, max_size=size))
    al = draw(st.lists(st.floats(1.01, 50.0), min_size=size, max_size=size))
    be = draw(st.lists(st.floats(1e-8, 1e-1), min_size=size, max_size=size))
    return nf.NIGArray(np.array(g), np.array(nu), np.array(al), np.array(be))


def close(a: nf.NIGArray, b: nf.NIGArray, n_terms: int = 3) -> None:
    tol = 64 * n_terms * EPS
    for x, y in zip((a.gamma, a.nu, a.alpha, a.beta), (b.gamma, b.nu, b.alpha, b.beta)):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * (np.abs(y).max() + 1e-12))


@pytest.mark.parametrize("prior", [nf.DEFAULT_PRIOR_ALPHA, nf.MONIG_PRIOR_ALPHA])
@settings(max_examples=30, deadline=None)
@given(a=nigs(), b=nigs(), c=nigs())
def test_commutative_associative_and_equal_to_the_one_step_form(prior, a, b, c):
    close(nf.fuse(a, b, prior), nf.fuse(b, a, prior))
    left = nf.fuse(nf.fuse(a, b, prior), c, prior)
    right = nf.fuse(a, nf.fuse(b, c, prior), prior)
    close(left, right)
    close(left, nf.fuse_many([c, a, b], prior))


def test_monig_prior_reproduces_the_published_rule_of_the_torch_implementation():
    torch = pytest.importorskip("torch")
    from perception_nodes.evidential import nig

    rng = np.random.default_rng(0)
    a = nf.NIGArray(rng.normal(0, 0.05, 8), rng.uniform(0.1, 20, 8), rng.uniform(1.1, 9, 8), rng.uniform(1e-5, 1e-2, 8))
    b = nf.NIGArray(rng.normal(0, 0.05, 8), rng.uniform(0.1, 20, 8), rng.uniform(1.1, 9, 8), rng.uniform(1e-5, 1e-2, 8))
    t = lambda p: nig.NIG(*(torch.tensor(x, dtype=torch.float64) for x in (p.gamma, p.nu, p.alpha, p.beta)))  # noqa: E731
    ref = nig.fuse(t(a), t(b))
    ours = nf.fuse(a, b, nf.MONIG_PRIOR_ALPHA)
    close(ours, nf.NIGArray(*(x.numpy() for x in ref)))


@settings(max_examples=30, deadline=None)
@given(a=nigs())
def test_fusing_with_the_vacuous_nig_changes_nothing_under_the_default_prior(a):
    out = nf.fuse(a, nf.vacuous(a.shape))
    close(out, a)
    # alpha - 1 near 0 loses digits: the variance's relative error is eps * alpha / (alpha - 1)
    cond = float(np.max(a.alpha / (a.alpha - 1.0)))
    np.testing.assert_allclose(out.variance(), a.variance(), rtol=16 * EPS * cond)


def test_under_the_monig_prior_a_vacuous_source_lowers_the_variance_by_the_stated_factor():
    a = nf.NIGArray(0.01, 4.0, 3.0, 2e-4)
    v = nf.vacuous((), nf.DEFAULT_PRIOR_ALPHA)  # nu 0, alpha 1, beta 0: no evidence
    out = nf.fuse(a, v, nf.MONIG_PRIOR_ALPHA)
    assert out.gamma == a.gamma and out.nu == a.nu and out.beta == a.beta and out.alpha == a.alpha + 1.5
    factor = (a.alpha - 1.0) / (a.alpha + 0.5)
    assert math.isclose(float(out.variance()), float(a.variance()) * factor, rel_tol=1e-12)


@settings(max_examples=30, deadline=None)
@given(g1=st.floats(-0.2, 0.2), g2=st.floats(-0.2, 0.2), ratio=st.floats(100.0, 1e4))
def test_a_confident_input_dominates_a_vague_one(g1, g2, ratio):
    confident = nf.NIGArray(g1, 10.0 * ratio, 5.0, 1e-4)
    vague = nf.NIGArray(g2, 10.0, 5.0, 1e-4)
    out = nf.fuse(confident, vague)
    # the mean moves toward the vague one by its share of the evidence nu only
    assert abs(float(out.gamma) - g1) <= abs(g2 - g1) / (ratio + 1.0) * (1 + 1e-9) + 1e-15
    assert abs(float(out.gamma) - g1) < abs(float(out.gamma) - g2) or g1 == g2


def test_k_identical_sources_keep_the_aleatoric_variance_and_divide_the_epistemic_by_k():
    a = nf.NIGArray(0.02, 3.0, 2.5, 1e-4)
    for k in (2, 5, 10):
        out = nf.fuse_many([a] * k)
        assert math.isclose(float(out.gamma), 0.02, rel_tol=1e-12)
        assert math.isclose(float(out.aleatoric()), float(a.aleatoric()), rel_tol=1e-12)
        assert math.isclose(float(out.epistemic()), float(a.epistemic()) / k, rel_tol=1e-12)


def test_disagreement_raises_the_variance():
    a, b = nf.NIGArray(0.0, 5.0, 3.0, 1e-4), nf.NIGArray(0.0, 5.0, 3.0, 1e-4)
    agree = nf.fuse(a, b)
    disagree = nf.fuse(a, nf.NIGArray(0.05, 5.0, 3.0, 1e-4))
    assert float(disagree.variance()) > float(agree.variance())
    assert math.isclose(float(disagree.beta - agree.beta), 0.5 * 5 * 5 / 10 * 0.05 ** 2, rel_tol=1e-12)


@settings(max_examples=40, deadline=None)
@given(a=nigs(), b=nigs(), w=st.floats(0.0, 1.0),
       extreme=st.sampled_from([0.0, 1e-300, 1e300, np.inf, -np.inf, np.nan]))
def test_fused_variance_is_never_nan(a, b, w, extreme):
    out = nf.fuse(nf.discount(a, w), b)
    assert not np.any(np.isnan(out.variance()))
    # no evidence at all: infinite variance and interval, not NaN
    none = nf.fuse(nf.discount(a, 0.0), nf.vacuous(a.shape))
    assert np.all(np.isinf(none.variance()))
    lo, hi = nf.interval(none, 0.9)
    assert np.all(np.isinf(lo)) and np.all(np.isinf(hi))
    # extreme or invalid inputs (what a broken message could carry) come back vacuous or finite, never NaN
    bad = nf.from_variances([extreme, 0.01, 0.01], [1e-4, extreme, 1e-4], [1e-5, 1e-5, extreme], 3.0)
    fused = nf.fuse(bad, a)
    assert not np.any(np.isnan(fused.variance())) and not np.any(np.isnan(fused.gamma))


def test_discount_keeps_the_mean_and_aleatoric_variance_and_inflates_the_epistemic():
    a = nf.NIGArray(0.03, 4.0, 3.0, 2e-4)
    d = nf.discount(a, 0.25)
    assert float(d.gamma) == 0.03
    assert math.isclose(float(d.aleatoric()), float(a.aleatoric()), rel_tol=1e-12)
    assert math.isclose(float(d.epistemic()), 4 * float(a.epistemic()), rel_tol=1e-12)
    z = nf.discount(a, 0.0)
    assert float(z.nu) == 0.0 and float(z.beta) == 0.0 and float(z.alpha) == nf.DEFAULT_PRIOR_ALPHA


def test_from_variances_round_trips_the_message_fields():
    a = nf.NIGArray([0.01, -0.02], [4.0, 0.5], [3.0, 3.0], [2e-4, 1e-3])
    back = nf.from_variances(a.gamma, a.aleatoric(), a.epistemic(), 3.0)
    close(back, a)


def test_shifted_prediction_is_read_where_its_points_are_now_and_behind_the_ego_is_not_extrapolated():
    p = nf.NIGArray([0.0, 0.01, 0.03], [4.0, 2.0, 1.0], [3.0, 3.0, 3.0], [1e-4, 2e-4, 4e-4])
    h = np.array([0.0, 10.0, 20.0])
    # 4 m driven: the prediction for 10 m ahead is now 6 m ahead
    s = nf.sample_at(nf.shift_horizons(h, 4.0), p, [6.0, 1.0, 16.0, 17.0])
    assert math.isclose(float(s.gamma[0]), 0.01) and math.isclose(float(s.nu[0]), 2.0)
    assert math.isclose(float(s.gamma[1]), 0.5 * 0.0 + 0.5 * 0.01)  # halfway between -4 m and 6 m
    assert math.isclose(float(s.gamma[2]), 0.03) and float(s.nu[3]) == 0.0  # beyond the farthest: vacuous
    # 25 m driven: everything is behind the ego
    assert not np.any(nf.sample_at(nf.shift_horizons(h, 25.0), p, [0.0, 1.0]).has_evidence())


def test_interval_matches_the_exact_student_t_quantile():
    alpha = np.array([1.0, 1.5, 3.0, 20.0, 500.0])
    p = nf.NIGArray(np.full(5, 0.01), np.full(5, 3.0), alpha, np.full(5, 2e-4))
    scale = np.sqrt(2e-4 * 4.0 / (3.0 * alpha))
    for level in (0.5, 0.99):
        lo, hi = nf.interval(p, level)
        q = student_t_ppf(np.full(5, 0.5 + level / 2), 2 * alpha)
        np.testing.assert_allclose(hi - 0.01, q * scale, rtol=1e-3)
        np.testing.assert_allclose(0.01 - lo, q * scale, rtol=1e-3)
