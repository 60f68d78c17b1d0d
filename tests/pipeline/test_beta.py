"""Beta-opinion maths against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from perception_nodes.evidential import (
    as_opinion,
    belief,
    conflict,
    cumulative_fusion,
    discount,
    disbelief,
    expected_probability,
    vacuity,
)


def test_vacuous_opinion() -> None:
    # no evidence: Beta(1, 1), P = 1/2, u = 1, b = d = 0
    assert expected_probability(0, 0) == pytest.approx(0.5)
    assert vacuity(0, 0) == pytest.approx(1.0)
    assert belief(0, 0) == 0.0 and disbelief(0, 0) == 0.0


def test_hand_values_r3_s1() -> None:
    # r=3, s=1: S = 6, alpha = (4, 2): P = 4/6, u = 2/6, b = 3/6, d = 1/6
    assert expected_probability(3, 1) == pytest.approx(2 / 3)
    assert vacuity(3, 1) == pytest.approx(1 / 3)
    assert belief(3, 1) == pytest.approx(0.5)
    assert disbelief(3, 1) == pytest.approx(1 / 6)
    b, d, u = as_opinion(3, 1)
    assert (b, d, u) == pytest.approx((0.5, 1 / 6, 1 / 3))
    # projected probability b + a u with a = 1/2 equals the Beta mean
    assert b + 0.5 * u == pytest.approx(2 / 3)


def test_cumulative_fusion_adds_evidence_and_matches_opinion_form() -> None:
    r, s = cumulative_fusion(3, 1, 1, 2)
    assert (float(r), float(s)) == (4.0, 3.0)
    assert expected_probability(r, s) == pytest.approx(5 / 9)
    assert vacuity(r, s) == pytest.approx(2 / 9)
    # Jøsang's opinion-form cumulative fusion: b = (b1 u2 + b2 u1) / (u1 + u2 - u1 u2), u = u1 u2 / (...)
    b1, _, u1 = as_opinion(3, 1)  # 1/2, 1/6, 1/3
    b2, _, u2 = as_opinion(1, 2)  # 1/5, 2/5, 2/5
    k = u1 + u2 - u1 * u2  # 1/3 + 2/5 - 2/15 = 3/5
    assert k == pytest.approx(0.6)
    assert (b1 * u2 + b2 * u1) / k == pytest.approx(4 / 9)
    assert u1 * u2 / k == pytest.approx(2 / 9)
    assert belief(r, s) == pytest.approx(4 / 9)


def test_fusion_with_vacuous_is_identity_and_commutes() -> None:
    r = np.array([0.0, 2.5, 7.0], dtype=np.float32)
    s = np.array([1.0, 0.0, 3.0], dtype=np.float32)
    fr, fs = cumulative_fusion(r, s, np.zeros(3, np.float32), np.zeros(3, np.float32))
    np.testing.assert_array_equal(fr, r)
    np.testing.assert_array_equal(fs, s)
    assert fr.dtype == np.float32
    a = cumulative_fusion(r, s, s, r)
    b = cumulative_fusion(s, r, r, s)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_discount_scales_evidence() -> None:
    r, s = discount(4, 2, 0.5)
    assert (float(r), float(s)) == (2.0, 1.0)
    assert vacuity(r, s) == pytest.approx(2 / 5)
    assert expected_probability(r, s) == pytest.approx(3 / 5)
    r0, s0 = discount(4, 2, 0.0)
    assert vacuity(r0, s0) == pytest.approx(1.0)
    r1, s1 = discount(4, 2, 1.0)
    assert (float(r1), float(s1)) == (4.0, 2.0)
    with pytest.raises(ValueError):
        discount(1, 1, 1.5)


def test_conflict_hand_value() -> None:
    # K = b1 d2 + d1 b2 = (1/2)(2/5) + (1/6)(1/5) = 1/5 + 1/30 = 7/30
    assert conflict(3, 1, 1, 2) == pytest.approx(7 / 30)
    # agreeing or vacuous sources do not conflict
    assert conflict(5, 0, 3, 0) == 0.0
    assert conflict(0, 0, 0, 9) == 0.0
    # strongly opposed sources conflict almost fully: (98/100)(98/100)
    assert conflict(98, 0, 0, 98) == pytest.approx(0.98 * 0.98)


def test_broadcast_and_negative_evidence() -> None:
    p = expected_probability(np.array([[0.0, 1.0], [2.0, 8.0]]), 0.0)
    np.testing.assert_allclose(p, [[0.5, 2 / 3], [3 / 4, 9 / 10]])
    with pytest.raises(ValueError):
        vacuity(-1.0, 0.0)
