"""OOD AUROC / ROC / FPR@TPR and curvature error on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes.eval.metrics.control import curvature_error
from perception_nodes.eval.metrics.ood import auroc, fpr_at_tpr, roc_curve


def test_auroc_extremes():
    assert auroc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert auroc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0
    assert auroc([0.4, 0.4, 0.4], [0.4, 0.4]) == 0.5
    x = np.random.default_rng(0).normal(size=100)
    assert auroc(x, x) == pytest.approx(0.5)


def test_auroc_hand_case_with_ties():
    s_in = [0.1, 0.4, 0.4, 0.8]
    s_out = [0.4, 0.9]
    # OOD 0.4 beats 0.1 (1), ties two 0.4s (1/2 each), loses to 0.8 (0) -> 2; OOD 0.9 beats all 4 -> 4.
    assert auroc(s_in, s_out) == pytest.approx(6 / 8)
    curve = roc_curve(s_in, s_out)
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.8, 0.4, 0.1])
    np.testing.assert_allclose(curve.tpr, [0, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(curve.fpr, [0, 0, 0.25, 0.75, 1.0])
    assert curve.area() == pytest.approx(6 / 8)


def test_fpr_at_tpr_hand():
    s_in, s_out = [0, 1, 2, 3], [2.5, 4]
    # thresholds 4: (fpr 0, tpr .5); 3: (.25, .5); 2.5: (.25, 1) -> FPR95 = .25
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(0.25)
    assert fpr_at_tpr(s_in, s_out, tpr=0.5) == 0.0


def test_input_validation():
    with pytest.raises(ValueError):
        auroc([], [1.0])
    with pytest.raises(ValueError):
        auroc([np.nan], [1.0])


scores = st.lists(st.integers(0, 6).map(float) | st.floats(-3, 3), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(scores, scores)
def test_auroc_properties(a, b):
    u = auroc(a, b)
    assert 0.0 <= u <= 1.0
    assert auroc(b, a) == pytest.approx(1.0 - u, abs=1e-12)
    brute = np.mean([[1.0 if y > x else 0.5 if y == x else 0.0 for x in a] for y in b])
    assert u == pytest.approx(brute, abs=1e-12)
    curve = roc_curve(a, b)
    assert curve.area() == pytest.approx(u, abs=1e-12)
    assert curve.fpr[0] == 0 and curve.tpr[0] == 0 and curve.fpr[-1] == 1 and curve.tpr[-1] == 1
    assert np.all(np.diff(curve.fpr) >= 0) and np.all(np.diff(curve.tpr) >= 0)


def test_curvature_error_hand_with_nans():
    pred = [0.01, 0.02, np.nan, -0.01, 0.0]
    gt = [0.0, 0.05, 0.1, -0.01, np.nan]
    r = curvature_error(pred, gt)
    # valid pairs: errors .01, -.03, 0
    assert r["n"] == 3 and r["n_nan"] == 2
    assert r["mae"] == pytest.approx(0.04 / 3)
    assert r["rmse"] == pytest.approx(math.sqrt((0.0001 + 0.0009) / 3))
    assert r["max_abs"] == pytest.approx(0.03)


def test_curvature_error_edge_cases():
    r = curvature_error([np.nan], [1.0])
    assert r["n"] == 0 and r["n_nan"] == 1 and math.isnan(r["mae"])
    with pytest.raises(ValueError):
        curvature_error([np.inf], [0.0])
    with pytest.raises(ValueError):
        curvature_error([0.0, 1.0], [0.0])
