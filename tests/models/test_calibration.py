"""Post-hoc calibration of the LiDAR branch: the fits recover known scales, decoding applies them, the
weights sidecar stores them (and folders without one decode as before)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from perception_nodes.evidential.nig import NIG
from perception_nodes.models import BevGrid, decode
from perception_nodes.models.calibration import (
    DetectionCalibration,
    binary_nll,
    fit_evidence_scale,
    fit_platt,
    fit_prior_and_platt,
    fit_variance_scale,
    gaussian_z,
    platt,
    prior_score,
    scaled_score,
)
from perception_nodes.models.decode import MAX_YAW_VARIANCE
from perception_nodes.models.weights_io import (
    default_weights_dir,
    load_lidar_detection,
    read_sidecar,
    write_calibration,
)

EPS32 = float(np.finfo(np.float32).eps)
CLASSES = ("car", "pedestrian", "cyclist")
GRID = BevGrid(-10.0, -10.0, 0.5, 40, 40)


def _evidence_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    e = rng.gamma(0.7, 1.0, (n, 4))  # K + 1 = 4 columns, background last
    alpha = 1.0 + e
    return alpha, alpha[:, :3].argmax(1)


@pytest.mark.parametrize("s_true", [0.4, 2.5])
def test_evidence_scale_fit_recovers_a_known_scale(s_true):
    alpha, label = _evidence_rows(20000, seed=1)
    p = scaled_score(alpha, label, s_true)
    right = np.random.default_rng(2).random(len(p)) < p  # outcomes drawn from the true scaled score
    s, info = fit_evidence_scale(alpha, label, right)
    # the maximum-likelihood estimate from 20k Bernoulli draws spreads by ~0.05 in log s (seen over seeds)
    assert abs(math.log(s / s_true)) < 0.15, s
    # the search finds the likelihood's optimum: no worse than the true scale on these draws
    assert info["nll_after"] <= binary_nll(p, right) + 1e-9
    assert info["nll_after"] <= info["nll_before"] + 1e-12
    assert info["nll_after"] == pytest.approx(binary_nll(scaled_score(alpha, label, s), right), rel=1e-9)


@pytest.mark.parametrize(("a_true", "b_true"), [(0.6, -0.8), (1.8, 0.5)])
def test_platt_fit_recovers_a_known_map(a_true, b_true):
    rng = np.random.default_rng(5)
    p = rng.beta(0.8, 1.5, 20000)
    right = rng.random(p.size) < platt(p, a_true, b_true)
    a, b, info = fit_platt(p, right)
    assert a == pytest.approx(a_true, abs=0.08) and b == pytest.approx(b_true, abs=0.08)  # ~4 standard errors
    assert info["nll_after"] <= binary_nll(platt(p, a_true, b_true), right) + 1e-9  # the optimum
    assert fit_platt(p[:5], np.ones(5, bool))[:2] == (1.0, 0.0)  # nothing to learn: identity
    # anchored at the Dirichlet prior mean: only the slope is fitted and 1 / (K + 1) maps to itself
    b_anchor = math.log(0.25 / 0.75) * (1.0 - a_true)
    right = rng.random(p.size) < platt(p, a_true, b_anchor)
    a1, b1, _ = fit_platt(p, right, anchor=0.25)
    assert a1 == pytest.approx(a_true, abs=0.06) and b1 == pytest.approx(math.log(1 / 3) * (1 - a1), rel=1e-12)
    assert platt(np.array([0.25]), a1, b1)[0] == pytest.approx(0.25, rel=1e-9)
    # monotone: the ranking of scores is kept
    assert np.all(np.diff(platt(np.sort(p), a, b)) >= 0)


def test_evidence_scale_fit_degenerate_inputs_give_identity():
    alpha, label = _evidence_rows(10, seed=3)
    assert fit_evidence_scale(alpha, label, np.ones(10, bool))[0] == 1.0  # nothing to learn from
    assert fit_evidence_scale(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))[0] == 1.0


def test_variance_scale_fit_recovers_a_known_scale_and_covers_the_level():
    rng = np.random.default_rng(4)
    var = rng.uniform(0.01, 2.0, 50000)
    c_true = 6.0
    err = rng.normal(0.0, np.sqrt(c_true * var))
    c, info = fit_variance_scale(err, var, level=0.9)
    assert c == pytest.approx(c_true, rel=0.05)  # 0.9-quantile of chi2_1 from 50k samples: ~2 % spread
    z = gaussian_z(0.9)
    assert z == pytest.approx(1.6448536, abs=1e-6)
    assert np.mean(err**2 <= z * z * c * var) == pytest.approx(0.9, abs=2.0 / len(err))
    assert info["coverage_before"] < 0.6  # the unscaled variances are far too small


def test_calibration_mapping_round_trip_and_validation():
    cal = DetectionCalibration(evidence_scale=1.7, centre_variance_scale=3.0, z_variance_scale=2.0,
                               yaw_variance_scale=4.0, fitted={"on": "x"})
    assert DetectionCalibration.from_mapping(json.loads(json.dumps(cal.to_dict()))) == cal
    assert DetectionCalibration.from_mapping(None).is_identity
    assert DetectionCalibration.from_sidecar({}).is_identity
    with pytest.raises(ValueError, match="unknown calibration keys"):
        DetectionCalibration.from_mapping({"centre_varaince_scale": 2.0})
    with pytest.raises(ValueError, match="> 0"):
        DetectionCalibration(centre_variance_scale=0.0)


def _maps(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = GRID.height, GRID.width
    alpha = 1.0 + 3.0 * torch.rand(4, h, w, generator=g)
    alpha[0, 10, 10] = 60.0  # a few clear car peaks
    alpha[0, 25, 30] = 40.0
    alpha[1, 5, 33] = 30.0
    shape = (8, h, w)
    gamma = torch.rand(shape, generator=g)
    gamma[6:8] = torch.randn((2, h, w), generator=g)
    box = NIG(gamma, 1.0 + torch.rand(shape, generator=g), 1.5 + torch.rand(shape, generator=g),
              0.05 + 0.1 * torch.rand(shape, generator=g))
    return alpha, box


def test_decode_applies_the_calibration():
    alpha, box = _maps()
    base = decode(alpha, box, GRID, CLASSES, score_threshold=0.3)
    assert len(base) >= 3
    same = decode(alpha, box, GRID, CLASSES, score_threshold=0.3, calibration=DetectionCalibration())
    assert np.array_equal(base.covariance, same.covariance) and np.array_equal(base.score, same.score)

    cal = DetectionCalibration(centre_variance_scale=5.0, z_variance_scale=2.0, yaw_variance_scale=3.0)
    got = decode(alpha, box, GRID, CLASSES, score_threshold=0.3, calibration=cal)
    assert np.array_equal(got.center, base.center) and np.array_equal(got.score, base.score)
    tol = 4 * EPS32
    np.testing.assert_allclose(got.covariance[:, 0, 0], 5.0 * base.covariance[:, 0, 0], rtol=tol)
    np.testing.assert_allclose(got.covariance[:, 1, 1], 5.0 * base.covariance[:, 1, 1], rtol=tol)
    np.testing.assert_allclose(got.covariance[:, 2, 2], 2.0 * base.covariance[:, 2, 2], rtol=tol)
    np.testing.assert_allclose(got.covariance[:, 5, 5], np.minimum(3.0 * base.covariance[:, 5, 5], MAX_YAW_VARIANCE),
                               rtol=tol)
    np.testing.assert_array_equal(got.covariance[:, 3, 3], base.covariance[:, 3, 3])  # roll: "no information"

    # the score map: the same peaks in the same order, scores mapped, the threshold on the mapped score
    smap = DetectionCalibration(score_logit_scale=1.5, score_logit_bias=-1.0)
    low = decode(alpha, box, GRID, CLASSES, score_threshold=0.0, max_detections=50)
    mapped = decode(alpha, box, GRID, CLASSES, score_threshold=0.0, max_detections=50, calibration=smap)
    np.testing.assert_array_equal(mapped.center, low.center)
    np.testing.assert_array_equal(mapped.label, low.label)
    expect = platt(low.class_probabilities[:, :3].astype(np.float64), 1.5, -1.0)
    expect = expect / np.maximum(expect.sum(1, keepdims=True), 1.0)
    np.testing.assert_allclose(mapped.class_probabilities[:, :3], expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mapped.class_probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(mapped.score, mapped.class_probabilities[np.arange(len(mapped)), mapped.label], rtol=1e-6)
    cut = decode(alpha, box, GRID, CLASSES, score_threshold=0.3, max_detections=50, calibration=smap)
    assert len(cut) == int((mapped.score > 0.3).sum()) and (cut.score > 0.3).all()
    # the raw threshold's calibrated image keeps exactly the boxes the raw threshold keeps
    raw = decode(alpha, box, GRID, CLASSES, score_threshold=0.3, max_detections=50)
    same = decode(alpha, box, GRID, CLASSES, score_threshold=smap.map_score_threshold(0.3), max_detections=50,
                  calibration=smap)
    assert len(raw) > 0 and np.array_equal(same.center, raw.center)

    s = 2.0
    sharp = decode(alpha, box, GRID, CLASSES, score_threshold=0.3, calibration=DetectionCalibration(evidence_scale=s))
    # the three strong peaks stay; their scores follow (1 + s e_k) / (K + 1 + s E)
    a = alpha[:, 10, 10].double().numpy()
    i = int(np.flatnonzero((np.abs(sharp.center[:, 0] - (GRID.origin_x + 10 * GRID.cell)) < GRID.cell)
                           & (np.abs(sharp.center[:, 1] - (GRID.origin_y + 10 * GRID.cell)) < GRID.cell))[0])
    expect = scaled_score(a[None], [0], s)[0]
    assert sharp.score[i] == pytest.approx(expect, rel=4 * EPS32)
    e_total = (a - 1).sum()
    assert sharp.vacuity[i] == pytest.approx(4.0 / (4.0 + s * e_total), rel=4 * EPS32)


def test_foreground_prior_moves_only_the_uncommitted_mass():
    """alpha_fg - 1 + f, alpha_bg + K (1 - f): belief b_k = e_k / S and vacuity (K + 1) / S unchanged, an
    evidence-free cell scores f / (K + 1), rows sum to 1; f = 1 is the plain Dirichlet mean."""
    g = torch.Generator().manual_seed(3)
    alpha = 1.0 + 5.0 * torch.rand(200, 4, generator=g, dtype=torch.float64)
    alpha[0] = 1.0  # no evidence at all
    s = alpha.sum(1, keepdim=True)
    # float32 rows; background = 1 - the foreground sum, so its error is absolute (a few eps of 1)
    np.testing.assert_allclose(DetectionCalibration().probabilities(alpha).double().numpy(), (alpha / s).numpy(),
                               rtol=8 * EPS32, atol=8 * EPS32)
    f = 0.2
    got = DetectionCalibration(foreground_prior=f).probabilities(alpha).double()
    tol = 8 * EPS32
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, rtol=tol)
    np.testing.assert_allclose(got[:, :3].numpy(), ((alpha[:, :3] - 1.0 + f) / s).numpy(), rtol=tol)
    np.testing.assert_allclose(got[0].numpy(), [f / 4, f / 4, f / 4, 1 - 3 * f / 4], rtol=tol, atol=tol)
    # what it moves is the uncommitted mass: p_k - b_k = f u / (K + 1) (subjective logic, base rate f / (K + 1))
    u = 4.0 / s[:, 0]
    np.testing.assert_allclose((got[:, 0] - (alpha[:, 0] - 1.0) / s[:, 0]).numpy(), (f * u / 4).numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(prior_score(alpha.numpy(), np.zeros(200, int), f), got[:, 0].numpy(), rtol=tol)
    cal = DetectionCalibration(foreground_prior=f, score_logit_scale=2.0, score_logit_bias=math.log(0.05 / 0.95) * -1.0)
    assert cal.maps_scores and not cal.monotone
    assert cal.evidence_free_score(3) == pytest.approx(float(platt(np.array([f / 4]), 2.0, cal.score_logit_bias)[0]))
    assert DetectionCalibration.from_mapping(json.loads(json.dumps(cal.to_dict()))) == cal
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="foreground_prior"):
            DetectionCalibration(foreground_prior=bad)


def test_foreground_prior_fit_recovers_a_known_prior():
    alpha, label = _evidence_rows(20000, seed=4)
    f_true = 0.2  # a grid value
    p = prior_score(alpha, label, f_true)
    right = np.random.default_rng(5).random(len(p)) < p
    f, a, b, info = fit_prior_and_platt(alpha, label, right)
    assert f == f_true, info["nll_per_prior"]
    assert abs(math.log(a)) < 0.1  # the Platt slope has nothing left to fix
    assert b == pytest.approx(math.log(0.05 / 0.95) * (1 - a))  # anchored at the evidence-free score f / (K + 1)
    assert info["nll_after"] < info["nll_before"] - 0.01  # the plain Dirichlet mean over-scores these rows


def test_free_intercept_is_taken_when_evidence_free_peaks_are_right_less_often_than_the_prior_mean():
    alpha, label = _evidence_rows(20000, seed=6)
    p = prior_score(alpha, label, 1.0)
    a_true, b_true = 2.0, 0.0  # maps the evidence-free 0.25 to sigmoid(2 logit 0.25) = 0.1: below the prior mean
    truth = platt(p, a_true, b_true)
    right = np.random.default_rng(7).random(len(p)) < truth
    _, _, _, anchored = fit_prior_and_platt(alpha, label, right)
    f, a, b, info = fit_prior_and_platt(alpha, label, right, free_intercept=True)
    assert "free_per_prior" not in anchored and not info["anchored"]
    assert info["free_per_prior"]["1"]["admitted"]
    assert info["nll_after"] < anchored["nll_after"] - 1e-3
    # the fitted map reproduces the true probabilities (20k Bernoulli draws: ~0.01 spread)
    got = platt(prior_score(alpha, label, f), a, b)
    assert np.mean(np.abs(got - truth)) < 0.02
    # and it lowers, never raises, what a cell without evidence scores
    assert float(platt(np.array([f / 4]), a, b)[0]) <= f / 4
    assert DetectionCalibration(foreground_prior=f, score_logit_scale=a, score_logit_bias=b).evidence_free_score(3) <= 0.25


def test_free_intercept_that_would_raise_the_evidence_free_score_is_refused():
    alpha, label = _evidence_rows(20000, seed=8)
    p = prior_score(alpha, label, 1.0)
    right = np.random.default_rng(9).random(len(p)) < platt(p, 2.0, 3.0)  # evidence-free 0.25 -> 0.69
    f, a, b, info = fit_prior_and_platt(alpha, label, right, free_intercept=True)
    assert info["anchored"]
    assert not info["free_per_prior"]["1"]["admitted"]  # fitted, but not admitted
    assert info["free_per_prior"]["1"]["nll"] < info["nll_after"]  # although its NLL is lower
    assert b == pytest.approx(math.log((f / 4) / (1 - f / 4)) * (1 - a))  # anchored at f / (K + 1)
    assert DetectionCalibration(foreground_prior=f, score_logit_scale=a, score_logit_bias=b).evidence_free_score(3) == \
        pytest.approx(f / 4)


def test_free_intercept_search_keeps_a_better_prior_and_checks_admission_at_that_prior():
    alpha, label = _evidence_rows(20000, seed=4)
    # 1) the truth is the prior f = 0.2 with no map: an admitted free map at f = 1 must not beat it
    right = np.random.default_rng(5).random(len(alpha)) < prior_score(alpha, label, 0.2)
    f, a, b, info = fit_prior_and_platt(alpha, label, right, free_intercept=True)
    assert f == 0.2, info
    assert any(v["admitted"] for k, v in info["free_per_prior"].items() if k != "0.2")
    # 2) the truth is the prior f = 0.2 with a flat map (a = 0.5) that raises its evidence-free 0.05 to 0.10
    #    while it keeps 0.25 below 0.25: the free fit at f = 0.2 must be refused (admission is judged at
    #    f / (K + 1), not at 1 / (K + 1))
    b_up = math.log(0.10 / 0.90) - 0.5 * math.log(0.05 / 0.95)
    assert float(platt(np.array([0.25]), 0.5, b_up)[0]) < 0.25
    right = np.random.default_rng(11).random(len(alpha)) < platt(prior_score(alpha, label, 0.2), 0.5, b_up)
    f, a, b, info = fit_prior_and_platt(alpha, label, right, free_intercept=True)
    assert not info["free_per_prior"]["0.2"]["admitted"]
    assert float(platt(np.array([f / 4]), a, b)[0]) <= f / 4 + 1e-12


def test_prior_near_tie_keeps_the_monotone_map():
    alpha, label = _evidence_rows(20000, seed=12)
    # outcomes from f = 0.9: its NLL gain over f = 1 is far below the tie margin, so f = 1 (monotone) is kept
    right = np.random.default_rng(13).random(len(alpha)) < prior_score(alpha, label, 0.9)
    f, _, _, info = fit_prior_and_platt(alpha, label, right, free_intercept=True)
    gain = info["nll_per_prior"]["1"] - min(info["nll_per_prior"].values())
    assert gain < 1e-3 and f == 1.0
    assert DetectionCalibration(foreground_prior=f).monotone
    f0, _, _, _ = fit_prior_and_platt(alpha, label, right, free_intercept=True, prior_tie=0.0)
    assert f0 != 1.0 or gain == 0.0  # without the tie margin the nominal optimum wins


def test_decode_with_foreground_prior_drops_evidence_free_peaks_but_keeps_the_peaks():
    alpha, box = _maps()
    alpha = alpha.clone()
    alpha[:, 28:, :] = 1.0  # a third of the map without any evidence: every cell scores 1 / (K + 1) there
    raw = decode(alpha, box, GRID, CLASSES, score_threshold=0.1, max_detections=2000)
    free = raw.vacuity >= 1.0 - 1e-6
    assert free.sum() == 0  # the default max_vacuity already drops cells with no evidence at all
    alpha[:3, 28:, :] += 0.01  # now a trace of evidence: the peaks score ~ 1 / (K + 1)
    raw = decode(alpha, box, GRID, CLASSES, score_threshold=0.1, max_detections=2000)
    weak = raw.vacuity > 0.99
    assert weak.sum() > 10 and (np.abs(raw.score[weak] - 0.25) < 0.01).all()
    cal = DetectionCalibration(foreground_prior=0.2)
    got = decode(alpha, box, GRID, CLASSES, score_threshold=0.1, max_detections=2000, calibration=cal)
    # the weak peaks score ~ f / (K + 1) = 0.05 and fall below the threshold; the strong ones stay
    assert len(got) == int((~weak).sum()) - int((prior_score(raw.class_probabilities[~weak] * 4 / raw.vacuity[~weak, None],
                                                               raw.label[~weak], 0.2) <= 0.1).sum())
    for cx, cy in ((10, 10), (30, 25), (33, 5)):
        x, y = GRID.origin_x + (cx + 0.5) * GRID.cell, GRID.origin_y + (cy + 0.5) * GRID.cell
        assert (np.hypot(got.center[:, 0] - x, got.center[:, 1] - y) < GRID.cell).any()
    # the evaluation's "same boxes": the threshold on the raw score keeps exactly the uncalibrated set
    same = decode(alpha, box, GRID, CLASSES, score_threshold=0.1, max_detections=2000, calibration=cal,
                  threshold_on_raw_score=True)
    np.testing.assert_array_equal(same.center, raw.center)
    np.testing.assert_allclose(same.score, prior_score(raw.class_probabilities * 4 / raw.vacuity[:, None], raw.label, 0.2),
                               rtol=16 * EPS32)
    np.testing.assert_array_equal(same.vacuity, raw.vacuity)


@pytest.fixture()
def weights_copy(tmp_path):
    src = default_weights_dir("lidar_detection")
    dst = tmp_path / "w"
    dst.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(src / name, dst / name)
    return dst


def test_sidecar_round_trip_and_backward_compatibility(weights_copy):
    # a folder written before calibration existed (no key) decodes with the identity
    write_calibration(weights_copy, None)
    side = read_sidecar(weights_copy, "lidar_detection")
    assert "calibration" not in side and DetectionCalibration.from_sidecar(side).is_identity
    net0, _ = load_lidar_detection(weights_copy)

    cal = DetectionCalibration(evidence_scale=1.3, centre_variance_scale=7.0, fitted={"frames": 3})
    before = (weights_copy / "model.safetensors").read_bytes()
    write_calibration(weights_copy, cal.to_dict(), network="lidar_detection")
    assert (weights_copy / "model.safetensors").read_bytes() == before  # tensors untouched
    net1, side1 = load_lidar_detection(weights_copy)
    assert DetectionCalibration.from_sidecar(side1) == cal
    assert all(torch.equal(a, b) for a, b in zip(net0.state_dict().values(), net1.state_dict().values()))
    assert not list(weights_copy.glob(".*.tmp"))


def test_per_class_variance_scales_apply_to_their_class_only_and_round_trip():
    """``class_variance_scales`` replaces the three scales for its class's boxes; the other classes keep the
    pooled ones; the sidecar entry round-trips, is left out when empty (older sidecars read the same), and bad
    values are refused."""
    alpha, box = _maps()
    base = decode(alpha, box, GRID, CLASSES, score_threshold=0.3)
    assert {int(v) for v in base.label} >= {0, 1}  # boxes of two classes
    cal = DetectionCalibration(centre_variance_scale=2.0, z_variance_scale=3.0, yaw_variance_scale=0.5,
                               class_variance_scales={CLASSES[0]: (0.25, 4.0, 2.0)})
    got = decode(alpha, box, GRID, CLASSES, score_threshold=0.3, calibration=cal)
    np.testing.assert_array_equal(got.center, base.center)
    first = base.label == 0
    scale = np.where(first, 0.25, 2.0)
    tol = 4 * EPS32
    for k in (0, 1):
        np.testing.assert_allclose(got.covariance[:, k, k], scale * base.covariance[:, k, k], rtol=tol)
    np.testing.assert_allclose(got.covariance[:, 2, 2], np.where(first, 4.0, 3.0) * base.covariance[:, 2, 2], rtol=tol)
    np.testing.assert_allclose(got.covariance[:, 5, 5],
                               np.minimum(np.where(first, 2.0, 0.5) * base.covariance[:, 5, 5], MAX_YAW_VARIANCE), rtol=tol)
    assert cal.variance_scales(CLASSES[1]) == (2.0, 3.0, 0.5) and not cal.is_identity
    assert DetectionCalibration.from_mapping(json.loads(json.dumps(cal.to_dict()))) == cal
    assert "class_variance_scales" not in DetectionCalibration(centre_variance_scale=2.0).to_dict()
    assert "car: centre var x0.25" in cal.summary() or f"{CLASSES[0]}: centre var x0.25" in cal.summary()
    for bad in ({CLASSES[0]: (0.0, 1.0, 1.0)}, {CLASSES[0]: (1.0, 1.0)}, {CLASSES[0]: (1.0, float("nan"), 1.0)}):
        with pytest.raises(ValueError, match="class_variance_scales"):
            DetectionCalibration(class_variance_scales=bad)
    with pytest.raises(ValueError, match="class_variance_scales"):
        DetectionCalibration.from_mapping({"class_variance_scales": [1.0, 2.0]})
