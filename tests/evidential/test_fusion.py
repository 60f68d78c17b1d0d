"""Properties of the multi-branch evidence fusion rule (perception_nodes/evidential/fusion.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes.evidential.fusion import (
    ConflictTrust,
    EvidenceAccumulator,
    TrustParams,
    degree_of_conflict,
    evidence_from_percent,
    fusion_step,
    health_gate,
    quantisation_bound,
    ramp,
    relative_motion,
    se2,
    warp_evidence,
)
from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, to_occupancy_msg_data

EPS32 = float(np.finfo(np.float32).eps)
S = 1_000_000_000
SHAPE = (40, 40)
SPEC = GridSpec(resolution=0.25, size_x=10.0, size_y=10.0)  # 40 x 40, centred on base_link


def scene(rng: np.random.Generator, occupied_share: float = 0.15) -> np.ndarray:
    return rng.random(SHAPE) < occupied_share


def sensor(truth: np.ndarray, rng: np.random.Generator, amount: float = 10.0, seen: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """A branch that reads the truth with some noise on most cells."""
    obs = rng.random(SHAPE) < seen
    e = amount * (0.5 + rng.random(SHAPE)).astype(np.float32)
    r = np.where(obs & truth, e, 0.1 * e * obs).astype(np.float32)
    s = np.where(obs & ~truth, e, 0.1 * e * obs).astype(np.float32)
    return r, s


def blinded(amount: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """A failed sensor reporting every cell confidently free."""
    return np.zeros(SHAPE, np.float32), np.full(SHAPE, amount, np.float32)


evidence = st.lists(st.floats(0.0, 300.0, allow_nan=False, width=32), min_size=16, max_size=16).map(
    lambda v: np.asarray(v, np.float32).reshape(4, 4))


# --- the rule ----------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(evidence, evidence), min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_fusion_is_commutative_in_branch_order(pairs, rnd):
    names = [f"b{i}" for i in range(len(pairs))]
    order = list(range(len(pairs)))
    rnd.shuffle(order)
    a = fusion_step({n: p for n, p in zip(names, pairs, strict=True)}, dict.fromkeys(names, 1.0),
                    ConflictTrust(TrustParams(min_cells=1)), shape=(4, 4))
    b = fusion_step({names[i]: pairs[i] for i in order}, dict.fromkeys(names, 1.0),
                    ConflictTrust(TrustParams(min_cells=1)), shape=(4, 4))
    assert np.array_equal(a.r, b.r) and np.array_equal(a.s, b.s) and np.array_equal(a.conflict, b.conflict)
    assert a.weights == b.weights


@settings(max_examples=40, deadline=None)
@given(evidence, evidence)
def test_one_branch_is_its_own_opinion(r, s):
    res = fusion_step({"only": (r, s)}, {"only": 1.0}, ConflictTrust(), shape=(4, 4))
    assert res.weights == {"only": 1.0} and res.conflicts == {"only": None}
    assert np.array_equal(res.r, r) and np.array_equal(res.s, s)
    assert np.allclose(res.probability(), (r + 1) / (r + s + 2), rtol=4 * EPS32)
    assert not res.conflict.any()


def test_blinded_branch_loses_weight_and_recovers():
    """Three branches; one goes blind (everything free) for 15 frames, then reads the world again."""
    rng = np.random.default_rng(0)
    trust = ConflictTrust(TrustParams())
    weights, frames_to_low, frames_to_recover = [], None, None
    for t in range(40):
        truth = scene(rng)
        br = {"a": sensor(truth, rng), "b": sensor(truth, rng), "c": sensor(truth, rng)}
        failing = 5 <= t < 20
        if failing:
            br["c"] = blinded()
        res = fusion_step(br, dict.fromkeys(br, 1.0), trust, shape=SHAPE)
        weights.append(res.weights)
        if failing and frames_to_low is None and res.weights["c"] < 0.2:
            frames_to_low = t - 5 + 1
        if t >= 20 and frames_to_recover is None and res.weights["c"] > 0.8:
            frames_to_recover = t - 20 + 1
    assert frames_to_low is not None and frames_to_low <= 6, weights[5:12]
    assert frames_to_recover is not None and frames_to_recover <= 10, weights[20:32]
    assert min(w["a"] for w in weights) > 0.8 and min(w["b"] for w in weights) > 0.8  # the healthy ones keep it
    assert all(w["c"] > 0.99 for w in weights[:5])  # agreeing branches are fully trusted


def test_random_evidence_branch_loses_weight():
    rng = np.random.default_rng(1)
    trust = ConflictTrust()
    for _ in range(8):
        truth = scene(rng)
        noise = (20 * rng.random(SHAPE)).astype(np.float32), (20 * rng.random(SHAPE)).astype(np.float32)
        res = fusion_step({"a": sensor(truth, rng), "b": sensor(truth, rng), "noise": noise},
                          {"a": 1.0, "b": 1.0, "noise": 1.0}, trust, shape=SHAPE)
    assert res.weights["noise"] < 0.2 and res.weights["a"] > 0.8 and res.weights["b"] > 0.8


def test_two_branches_blinded_one_loses_weight_without_oscillation():
    """With two branches each one's reference is the other, undiscounted, so trust settles instead of
    oscillating. The balance over the *reference's* occupied/free decision blames the blinded branch
    (it misses what the other reads occupied) more than the healthy one (whose occupied cells are a
    minority of the blind reference's 'free')."""
    rng = np.random.default_rng(2)
    trust = ConflictTrust()
    seen = []
    for _ in range(20):
        truth = scene(rng)
        res = fusion_step({"a": sensor(truth, rng), "b": blinded()}, {"a": 1.0, "b": 1.0}, trust, shape=SHAPE)
        seen.append((res.weights["a"], res.weights["b"]))
    a, b = np.array(seen[10:]).T
    assert b.max() < 0.2 and a.min() > 0.8  # the blinded one loses weight, the healthy one keeps it (0.84)
    assert a.max() - a.min() < 0.1 and b.max() - b.min() < 0.1  # settled


def test_stale_branch_gets_weight_zero_and_adds_nothing():
    rng = np.random.default_rng(3)
    truth = scene(rng)
    a, b = sensor(truth, rng), sensor(truth, rng)
    g_stale, why = health_gate(0.8, 0.5)
    assert g_stale == 0.0 and "stale" in why
    assert health_gate(None, 0.5)[0] == 0.0
    assert health_gate(0.2, 0.5)[0] == 1.0 and health_gate(99.0, 0.0)[0] == 1.0  # timeout 0: never stale
    res = fusion_step({"a": a, "b": b}, {"a": 1.0, "b": g_stale}, ConflictTrust(), shape=SHAPE)
    assert res.weights["b"] == 0.0 and res.conflicts["b"] is None
    assert np.array_equal(res.r, a[0]) and np.array_equal(res.s, a[1])


def test_health_scalars_map_through_documented_thresholds():
    # a stereo valid-disparity ratio: 0.2 or less is useless, 0.6 or more is fine
    assert health_gate(0.0, 1.0, {"valid": (0.4, 0.2, 0.6, 1.0)})[0] == pytest.approx(0.5)
    assert health_gate(0.0, 1.0, {"valid": (0.1, 0.2, 0.6, 1.0)})[0] == 0.0
    assert health_gate(0.0, 1.0, {"valid": (None, 0.2, 0.6, 0.3)})[0] == 0.3  # missing value
    g, why = health_gate(0.0, 1.0, {"v": (0.4, 0.2, 0.6, 1.0), "w": (0.9, 0.0, 1.0, 1.0)})
    assert g == pytest.approx(0.5 * 0.9) and "v=0.4" in why
    assert ramp(5.0, 10.0, 0.0) == 0.5 and ramp(float("nan"), 0, 1) == 0.0  # downward ramp; NaN is bad


def test_degree_of_conflict():
    z = np.zeros(3, np.float32)
    big = np.full(3, 1e4, np.float32)
    assert np.allclose(degree_of_conflict(big, z, z, big), 1.0, atol=1e-3)  # sure and opposite
    assert not degree_of_conflict(big, z, big, z).any()  # identical
    assert not degree_of_conflict(big, z, z, z).any()  # against no evidence


# --- temporal --------------------------------------------------------------------------------------------
def _point_grid(x: float, y: float) -> np.ndarray:
    g = np.zeros(SPEC.shape, np.float32)
    row, col, inside = SPEC.cell_index(np.array([x]), np.array([y]))
    assert inside[0]
    g[row[0], col[0]] = 7.0
    return g


def _where(g: np.ndarray) -> tuple[float, float]:
    row, col = np.argwhere(g > 0)[0]
    cx, cy = SPEC.cell_centers()
    return float(cx[row, col]), float(cy[row, col])


@pytest.mark.parametrize("motion,before,after", [
    ((1.0, 0.0, 0.0), (3.125, 1.125), (2.125, 1.125)),  # ego 1 m forward: an object 1 m closer (4 cells)
    ((0.0, -0.5, 0.0), (3.125, 1.125), (3.125, 1.625)),  # ego 0.5 m right: the object 2 cells more left
    ((0.0, 0.0, math.pi / 2), (3.125, 1.125), (1.125, -3.125)),  # ego turns left 90 deg
    ((0.0, 0.0, -math.pi / 2), (3.125, 1.125), (-1.125, 3.125)),
])
def test_warping_moves_evidence_by_the_ego_motion(motion, before, after):
    pose_prev, pose_cur = se2(10.0, 5.0, 0.3), se2(10.0, 5.0, 0.3) @ se2(*motion)
    m = relative_motion(pose_prev, pose_cur)
    g = _point_grid(*before)
    r, s = warp_evidence(g, 2 * g, SPEC, m)
    assert np.count_nonzero(r) == 1 and r.sum() == pytest.approx(7.0) and s.sum() == pytest.approx(14.0)
    assert _where(r) == pytest.approx(after, abs=1e-9)


def test_warping_drops_what_leaves_the_grid_and_identity_is_exact():
    g = _point_grid(-4.875, 0.125)
    r, _ = warp_evidence(g, g, SPEC, relative_motion(se2(0, 0, 0), se2(1.0, 0, 0)))
    assert not r.any()
    r, s = warp_evidence(g, g, SPEC, np.eye(3))
    assert np.array_equal(r, g)


def test_decay_per_second_and_memory():
    acc = EvidenceAccumulator(SPEC, decay_per_s=0.5)
    g = _point_grid(1.125, 1.125)
    pose = se2(3.0, -2.0, 0.4)
    assert acc.prior(1 * S, pose)[2] == "empty"
    acc.add(g, g, pose)
    r, s, why = acc.prior(3 * S, pose)  # 2 s later: a quarter left
    assert why == "ok" and r.sum() == pytest.approx(7.0 * 0.25, rel=8 * EPS32) and _where(r) == (1.125, 1.125)
    r, _, why = acc.prior(4 * S, None)
    assert not r.any() and "no ego pose" in why and acc.r is None
    acc.prior(5 * S, pose)
    acc.add(g, g, pose)
    r, _, why = acc.prior(1 * S, pose)
    assert not r.any() and "back" in why
    off = EvidenceAccumulator(SPEC, decay_per_s=0.0)
    off.prior(0, pose)
    off.add(g, g, pose)
    assert not off.prior(1, pose)[0].any()
    capped = EvidenceAccumulator(SPEC, decay_per_s=0.9, max_evidence=5.0)
    capped.prior(0, pose)
    capped.add(g, g, pose)
    assert capped.r.max() == 5.0


@pytest.mark.parametrize("motion,before,after", [
    ((1.0, 0.0, 0.0), (3.125, 1.125), (2.125, 1.125)),
    ((0.0, 0.0, math.pi / 2), (3.125, 1.125), (1.125, -3.125)),
    ((0.37, 0.11, 0.0), (3.125, 1.125), (2.875, 1.125)),  # the cell the point now lies in (x 2.755, y 1.015)
])
def test_memory_follows_the_ego(motion, before, after):
    acc = EvidenceAccumulator(SPEC, decay_per_s=0.5)
    p0 = se2(10.0, 5.0, 0.0)
    acc.prior(0, p0)
    g = _point_grid(*before)
    acc.add(g, g, p0)
    r, _, _ = acc.prior(S // 10, p0 @ se2(*motion))
    assert np.count_nonzero(r) == 1 and _where(r) == pytest.approx(after, abs=1e-9)


def test_memory_does_not_drift_under_sub_cell_motion():
    """60 frames of 0.37 m steps (1.48 cells) with a slow turn: a static point observed once stays within
    half a cell of where it truly is (re-gridding a base_link memory every frame would walk it)."""
    acc = EvidenceAccumulator(SPEC, decay_per_s=0.99, max_evidence=1e6)
    pose = se2(0.0, 0.0, 0.0)
    acc.prior(0, pose)
    world = np.array([3.0, 1.1, 1.0])  # a point in the fixed frame, 3 m ahead at the start
    local = np.linalg.inv(pose) @ world
    acc.add(_point_grid(local[0], local[1]), np.zeros(SPEC.shape, np.float32), pose)
    for k in range(1, 25):
        pose = pose @ se2(0.37 * (k % 2), 0.0, 0.01)
        r, _, _ = acc.prior(k * S // 10, pose)
        truth_xy = (np.linalg.inv(pose) @ world)[:2]
        if np.abs(truth_xy).max() < 4.5:
            got = _where(r)
            assert abs(got[0] - truth_xy[0]) <= 0.25 * 1.5 and abs(got[1] - truth_xy[1]) <= 0.25 * 1.5


def test_stationary_accumulation_converges_to_the_geometric_series():
    """What decay does for a stationary ego: each scan's evidence e adds up to e / (1 - lambda^dt)."""
    acc = EvidenceAccumulator(SPEC, decay_per_s=0.5, max_evidence=1e6)
    g = _point_grid(0.125, 0.125)
    for k in range(200):
        pr, _, _ = acc.prior(k * 100_000_000, np.eye(3))
        acc.add(g, g, np.eye(3))
    assert (pr + g).max() == pytest.approx(7.0 / (1 - 0.5 ** 0.1), rel=1e-4)


# --- robustness --------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.sampled_from([0.0, 1e-30, 1e6]), st.integers(0, 3))
def test_no_nan_or_inf_on_empty_zero_or_extreme_grids(value, n):
    br = {f"b{i}": (np.full((4, 4), value, np.float32), np.zeros((4, 4), np.float32)) for i in range(n)}
    res = fusion_step(br, dict.fromkeys(br, 1.0), ConflictTrust(TrustParams(min_cells=1)), shape=(4, 4))
    for a in (res.r, res.s, res.probability(), res.vacuity(), res.conflict):
        assert np.isfinite(a).all()
    assert all(math.isfinite(w) and 0 <= w <= 1 for w in res.weights.values())


def test_bad_evidence_is_refused():
    with pytest.raises(ValueError, match="finite"):
        fusion_step({"a": (np.full((2, 2), np.nan, np.float32), np.zeros((2, 2), np.float32))}, {"a": 1.0},
                    ConflictTrust(), shape=(2, 2))
    with pytest.raises(ValueError, match="match"):
        fusion_step({"a": (np.zeros((3, 2), np.float32),) * 2}, {"a": 1.0}, ConflictTrust(), shape=(2, 2))
    with pytest.raises(ValueError):
        TrustParams(conflict_ok=0.5, conflict_bad=0.2)


# --- reading evidence from the 0..100 grids --------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 390.0, width=32), st.floats(0.0, 390.0, width=32))
def test_evidence_from_percent_within_the_stated_quantisation_bound(r, s):
    r_, s_ = np.array([[r]], np.float32), np.array([[s]], np.float32)
    prob, vac = to_occupancy_msg_data(BetaGrid(r_, s_, GridSpec(resolution=1, size_x=1, size_y=1)), unknown_vacuity=1.0)
    rr, ss = evidence_from_percent(prob, vac)
    total, got = r + s, float(rr[0, 0] + ss[0, 0])
    if int(vac[0, 0]) == 100:  # below 1/199 of evidence: read as none
        assert got == 0.0 and total < 0.02
        return
    bound = float(quantisation_bound(max(int(vac[0, 0]), 0.5)))
    assert abs(got + 2 - (total + 2)) <= bound * (total + 2) + 1e-3
    strength = total + 2
    assert abs(float(rr[0, 0]) - r) <= 0.005 * strength * (1 + bound) + bound * strength + 1e-3


def test_evidence_from_percent_edges():
    r, s = evidence_from_percent(np.array([-1, 50, 90, 90], np.int8), np.array([100, 100, 0, 10], np.int8))
    assert r[0] == s[0] == 0 and r[1] == s[1] == 0  # unknown / no evidence
    assert r[2] + s[2] == pytest.approx(398.0)  # U = 0 is "more than 398", not "nothing"
    assert r[3] + s[3] == pytest.approx(18.0) and r[3] == pytest.approx(0.9 * 20 - 1)
    with pytest.raises(ValueError):
        evidence_from_percent(np.zeros(3), np.zeros(4))
