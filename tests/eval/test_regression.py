"""NIG / Student-t metrics: special functions, NLL identity, coverage, calibration curve, uncertainty split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes.eval.metrics._special import (
    betainc,
    lgamma,
    student_t_cdf,
    student_t_ppf,
    student_t_two_sided_tail,
)
from perception_nodes.eval.metrics.regression import (
    aleatoric_epistemic,
    interval_coverage,
    miscalibration_area,
    nig_nll,
    nig_predictive,
    regression_calibration_curve,
    student_t_nll,
)


# ------------------------------------------------------------------------------ special functions
def test_lgamma_matches_math():
    x = np.concatenate([np.geomspace(1e-6, 1e6, 400), [0.5, 1, 1.5, 2, 3, 9.99, 10, 10.01]])
    ref = np.array([math.lgamma(v) for v in x])
    np.testing.assert_allclose(lgamma(x), ref, rtol=1e-13, atol=1e-13)
    assert np.isnan(lgamma(np.array([0.0, -1.0]))).all()


def test_betainc_closed_forms():
    x = np.linspace(0, 1, 21)
    np.testing.assert_allclose(betainc(1, 1, x), x, atol=1e-14)
    np.testing.assert_allclose(betainc(3.5, 1, x), x ** 3.5, atol=1e-14)
    np.testing.assert_allclose(betainc(1, 2.5, x), 1 - (1 - x) ** 2.5, atol=1e-14)
    np.testing.assert_allclose(betainc(np.array([0.3, 2, 40, 700]), np.array([0.3, 2, 40, 700]), 0.5), 0.5,
                               atol=1e-13)
    with pytest.raises(ValueError):
        betainc(0, 1, 0.5)


@pytest.mark.parametrize(("p", "dof", "q"), [
    (0.975, 10, 2.228138852),
    (0.95, 1, 6.313751515),
    (0.9, 5, 1.475884049),
    (0.995, 3, 5.840909310),
    (0.975, 2, 4.302652730),
    (0.975, 30, 2.042272456),
    (0.975, 1e6, 1.959966),
    (0.5, 4, 0.0),
])
def test_student_t_quantiles_against_tables(p, dof, q):
    assert student_t_ppf(p, dof) == pytest.approx(q, abs=2e-9 if dof < 1e5 else 2e-6)
    assert student_t_ppf(1 - p, dof) == pytest.approx(-q, abs=2e-9 if dof < 1e5 else 2e-6)


def test_student_t_cdf_closed_forms_and_round_trip():
    t = np.linspace(-30, 30, 241)
    np.testing.assert_allclose(student_t_cdf(t, 1), 0.5 + np.arctan(t) / np.pi, atol=1e-13)  # Cauchy
    np.testing.assert_allclose(student_t_cdf(t, 2), 0.5 + t / (2 * np.sqrt(2 + t * t)), atol=1e-13)
    p = np.array([0.001, 0.1, 0.3, 0.5, 0.77, 0.999])
    d = np.array([0.7, 3.0, 12.5, 2.0, 100.0, 4000.0])
    np.testing.assert_allclose(student_t_cdf(student_t_ppf(p, d), d), p, atol=1e-12)
    assert student_t_two_sided_tail(np.inf, 3.0) == 0.0
    assert student_t_two_sided_tail(0.0, 3.0) == 1.0


# -------------------------------------------------------------------------------------------- NLL
def test_predictive_parameters():
    loc, scale, dof = nig_predictive(1.5, 2.0, 3.0, 4.0)
    assert loc == 1.5 and dof == 6.0
    assert scale == pytest.approx(math.sqrt(4.0 * 3.0 / (2.0 * 3.0)))


def test_student_t_nll_hand_value():
    # nu = 1, alpha = 1, beta = 0.5 -> scale^2 = 0.5 * 2 / 1 = 1, dof = 2. The t_2 density at its centre is
    # Gamma(3/2) / (Gamma(1) sqrt(2 pi)) = 1 / (2 sqrt 2), so NLL = log(2 sqrt 2).
    assert student_t_nll([3.0], 3.0, 1.0, 1.0, 0.5) == pytest.approx(math.log(2 * math.sqrt(2)), abs=1e-13)
    # and one unit away: density * (1 + 1/2)^(-3/2)
    assert student_t_nll([4.0], 3.0, 1.0, 1.0, 0.5) == pytest.approx(
        math.log(2 * math.sqrt(2)) + 1.5 * math.log(1.5), abs=1e-13)


@settings(max_examples=100, deadline=None)
@given(st.floats(-50, 50), st.floats(-50, 50), st.floats(1e-3, 1e3), st.floats(0.05, 1e3), st.floats(1e-3, 1e3))
def test_student_t_nll_equals_amini_nig_nll(y, gamma, nu, alpha, beta):
    a = student_t_nll([y], gamma, nu, alpha, beta)
    b = nig_nll([y], gamma, nu, alpha, beta)
    assert a == pytest.approx(b, rel=1e-9, abs=1e-9)


def test_nll_reductions_and_gaussian_limit():
    rng = np.random.default_rng(0)
    y = rng.normal(size=20)
    g, n, a, b = rng.normal(size=20), rng.uniform(0.5, 5, 20), rng.uniform(1.1, 9, 20), rng.uniform(0.1, 4, 20)
    per = student_t_nll(y, g, n, a, b, reduction="none")
    assert per.shape == (20,)
    assert student_t_nll(y, g, n, a, b) == pytest.approx(per.mean())
    assert student_t_nll(y, g, n, a, b, reduction="sum") == pytest.approx(per.sum())
    # alpha -> infinity: the Student-t becomes a Gaussian with variance scale^2
    _, s, _ = nig_predictive(0.0, 2.0, 1e7, 1e7)
    z = 1.3 / s
    gauss = 0.5 * math.log(2 * math.pi * s * s) + 0.5 * z * z
    assert student_t_nll([1.3], 0.0, 2.0, 1e7, 1e7) == pytest.approx(gauss, abs=1e-6)
    with pytest.raises(ValueError):
        student_t_nll([0.0], 0.0, -1.0, 2.0, 1.0)


# ------------------------------------------------------------------------------- coverage/curves
def sample_predictive(rng, n, *, scale_factor=1.0):
    g = rng.normal(0, 3, n)
    nu = rng.uniform(0.2, 5, n)
    alpha = rng.uniform(1.2, 20, n)
    beta = rng.uniform(0.1, 3, n)
    _, scale, dof = nig_predictive(g, nu, alpha, beta)
    y = g + scale * scale_factor * rng.standard_t(dof)
    return y, g, nu, alpha, beta


def test_coverage_hand_cases():
    # dof = 10 (alpha = 5), scale 1 (nu = 1, beta = 5 * 1 / 2 -> beta (1 + nu) / (nu alpha) = 1).
    args = (0.0, 1.0, 5.0, 2.5)
    cov = interval_coverage([2.2, -2.25, 0.5, 1.0], *args, levels=(0.5, 0.95))
    # |z| = 2.2 < t_.975,10 = 2.228 < 2.25; t_.75,10 = 0.6998: inside 50% only 0.5.
    assert cov == {0.5: pytest.approx(1 / 4), 0.95: pytest.approx(3 / 4)}
    # exactly on the boundary counts as inside
    q = float(student_t_ppf(0.9, 10.0))
    assert interval_coverage([q], *args, levels=(0.8,))[0.8] == 1.0


def test_coverage_of_samples_from_the_predictive_matches_levels():
    rng = np.random.default_rng(42)
    y, g, nu, alpha, beta = sample_predictive(rng, 20_000)
    cov = interval_coverage(y, g, nu, alpha, beta)
    assert set(cov) == {0.5, 0.8, 0.9, 0.95}
    for level, frac in cov.items():
        assert frac == pytest.approx(level, abs=0.015)
    # An overconfident model (true noise 2x the predicted scale) under-covers.
    y2, *_ = sample_predictive(np.random.default_rng(42), 20_000, scale_factor=2.0)
    cov2 = interval_coverage(y2, g, nu, alpha, beta)
    assert all(cov2[lv] < lv - 0.1 for lv in (0.5, 0.8, 0.9))


def test_calibration_curve_hand_case():
    # Cauchy predictive (alpha = 0.5 -> dof 1) with scale 1 (nu = 1, beta = 0.25): F(z) = 1/2 + atan(z)/pi.
    z = np.array([-1.0, 0.0, 1.0, math.tan(0.4 * math.pi)])  # F = .25, .5, .75, .9
    lv, obs = regression_calibration_curve(z, 0.0, 1.0, 0.5, 0.25, levels=[0.2, 0.5, 0.8, 1.0])
    np.testing.assert_allclose(obs, [0.0, 0.5, 0.75, 1.0])
    # central intervals: P(|T| >= |z|) = 1/2, 1, 1/2, 0.2 -> inside at level p iff tail >= 1 - p
    _, obs_c = regression_calibration_curve(z, 0.0, 1.0, 0.5, 0.25, levels=[0.2, 0.5, 0.8], kind="central")
    np.testing.assert_allclose(obs_c, [0.25, 0.75, 1.0])
    cov = interval_coverage(z, 0.0, 1.0, 0.5, 0.25, levels=[0.2, 0.5, 0.8])
    assert list(cov.values()) == pytest.approx(obs_c.tolist())


def test_calibration_curve_and_miscalibration_area_on_samples():
    rng = np.random.default_rng(7)
    y, g, nu, alpha, beta = sample_predictive(rng, 20_000)
    lv, obs = regression_calibration_curve(y, g, nu, alpha, beta)
    assert lv.size == 101 and obs[0] == 0.0 and obs[-1] == 1.0
    assert np.all(np.diff(obs) >= 0)
    assert miscalibration_area(lv, obs) < 0.01
    y2, *_ = sample_predictive(np.random.default_rng(7), 20_000, scale_factor=3.0)
    for kind in ("quantile", "central"):
        lv2, obs2 = regression_calibration_curve(y2, g, nu, alpha, beta, kind=kind)
        assert miscalibration_area(lv2, obs2) > 0.1


def test_miscalibration_area_hand():
    assert miscalibration_area([0, 0.5, 1], [0, 0.5, 1]) == 0.0
    assert miscalibration_area([0, 0.5, 1], [0, 1, 1]) == pytest.approx(0.25)
    assert miscalibration_area([0, 1], [1, 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        miscalibration_area([1, 0], [0, 1])


def test_aleatoric_epistemic_hand():
    u = aleatoric_epistemic(0.0, np.array([2.0, 2.0]), np.array([3.0, 0.8]), np.array([4.0, 4.0]))
    assert u.amini_aleatoric[0] == pytest.approx(2.0)       # beta / (alpha - 1)
    assert u.amini_epistemic[0] == pytest.approx(1.0)       # beta / (nu (alpha - 1))
    assert u.meinert_aleatoric[0] == pytest.approx(math.sqrt(2.0))  # sqrt(beta (1 + nu) / (alpha nu))
    assert u.meinert_epistemic[0] == pytest.approx(1 / math.sqrt(2.0))
    assert np.isinf(u.amini_aleatoric[1]) and np.isinf(u.amini_epistemic[1])  # no moments for alpha <= 1
    assert u.meinert_aleatoric[1] == pytest.approx(math.sqrt(4 * 3 / (0.8 * 2)))
    # Meinert's aleatoric width is the predictive scale
    _, scale, _ = nig_predictive(0.0, 2.0, 3.0, 4.0)
    assert u.meinert_aleatoric[0] == pytest.approx(float(scale))
