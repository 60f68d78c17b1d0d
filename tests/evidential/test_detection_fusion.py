"""Properties of the detection fusion rule (perception_nodes/evidential/detection_fusion.py): the assignment
is optimal, one branch passes through, the merge is commutative, agreeing branches shrink the covariance
(information form) or never report less than the best input (covariance intersection), a weight-0 branch
changes nothing, yaw is merged on the circle, and a disagreeing branch loses trust and regains it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes.evidential.detection_fusion import (
    AssociationParams,
    DetectionMemory,
    DetectionTrust,
    EvidentialBox,
    associate,
    evidence_from_probabilities,
    fuse_frame,
    hungarian,
    merge_boxes,
    wrap_angle,
)
from perception_nodes.evidential.fusion import se2

EPS = float(np.finfo(np.float32).eps)
ASSOC = AssociationParams()


def box(x: float, y: float, *, yaw: float = 0.3, sxy: float = 0.3, syaw: float = 0.2, cls: int = 0,
        p: float = 0.7, strength: float = 20.0, branch: str = "") -> EvidentialBox:
    cov = np.diag([sxy**2, (1.3 * sxy) ** 2, 0.2**2, 1e6, 1e6, syaw**2])
    cov[0, 1] = cov[1, 0] = 0.3 * sxy * 1.3 * sxy  # correlated x, y: the merge must use the full block
    probs = np.full(3, (0.9 - p) / 2.0)
    probs[cls] = p
    return EvidentialBox(np.array([x, y, 0.8]), np.array([4.0, 1.8, 1.5]), yaw, cov,
                         evidence_from_probabilities(probs, strength), branch)


def scene(rng: np.random.Generator, n: int, branch: str, noise: float = 0.1) -> list[EvidentialBox]:
    xs = np.arange(n) * 8.0 + 5.0
    return [box(float(x + rng.normal(0, noise)), float(rng.normal(0, noise)), yaw=float(rng.uniform(-3, 3)),
                sxy=float(rng.uniform(0.2, 0.5)), cls=int(k % 3), branch=branch) for k, x in enumerate(xs)]


def test_hungarian_is_the_optimal_assignment_on_small_matrices():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, m = (int(v) for v in rng.integers(1, 6, 2))
        c = rng.random((n, m))
        pairs = hungarian(c)
        assert len(pairs) == min(n, m) and len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        if n <= m:
            best = min(sum(c[i, j] for i, j in zip(range(n), r)) for r in itertools.permutations(range(m), n))
        else:
            best = min(sum(c[i, j] for j, i in enumerate(r)) for r in itertools.permutations(range(n), m))
        assert sum(c[i, j] for i, j in pairs) == pytest.approx(best, abs=1e-12)


def test_hungarian_beats_greedy_where_nearest_first_steals_a_partner():
    """Two objects side by side: greedy pairs a1 with b1 (0.9) and leaves a2 with b2 far off (gated out);
    the optimum pairs crosswise."""
    c = np.array([[1.0, 0.9], [0.95, 1e9]])
    assert hungarian(c) == [(0, 1), (1, 0)]


def test_evidence_round_trips_through_expected_probabilities_and_strength():
    e = np.array([5.0, 0.5, 2.0, 1.5])
    alpha = e + 1.0
    p = alpha / alpha.sum()
    assert evidence_from_probabilities(p[:3], alpha.sum()) == pytest.approx(e, rel=1e-12)


def test_a_single_branch_passes_through_unchanged():
    rng = np.random.default_rng(0)
    boxes = scene(rng, 6, "lidar")
    fused, _ = fuse_frame({"lidar": boxes}, {"lidar": 1.0}, ASSOC)
    assert len(fused) == len(boxes)
    for f, b in zip(sorted(fused, key=lambda f: f.box.center[0]), boxes, strict=True):
        assert np.array_equal(f.box.center, b.center) and f.box.yaw == b.yaw
        assert np.array_equal(f.box.covariance, b.covariance) and np.array_equal(f.box.evidence, b.evidence)
        assert f.box.score == b.score and f.box.label == b.label and f.sources == ("lidar",)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 1.0), st.floats(0.05, 1.0))
def test_merge_is_commutative_in_the_branches(seed, wa, wb):
    rng = np.random.default_rng(seed)
    a, b = scene(rng, 5, "a", 0.2), scene(rng, 5, "b", 0.2)
    for rule in ("information", "covariance_intersection"):
        one, _ = fuse_frame({"a": a, "b": b}, {"a": wa, "b": wb}, ASSOC, rule)
        # the same content under swapped names and mapping order
        two, _ = fuse_frame({"a": b, "b": a}, {"b": wa, "a": wb}, ASSOC, rule)
        key = lambda f: (round(float(f.box.center[0]), 6), round(float(f.box.center[1]), 6))  # noqa: E731
        one, two = sorted(one, key=key), sorted(two, key=key)
        assert len(one) == len(two)
        for x, y in zip(one, two, strict=True):
            assert x.box.center == pytest.approx(y.box.center, abs=1e-9)
            assert math.cos(x.box.yaw - y.box.yaw) == pytest.approx(1.0, abs=1e-12)
            assert x.box.covariance == pytest.approx(y.box.covariance, rel=1e-9, abs=1e-12)
            assert x.box.evidence == pytest.approx(y.box.evidence, rel=1e-12)


def test_two_agreeing_branches_shrink_the_covariance_and_add_evidence():
    a, b = box(10.0, 2.0, sxy=0.4, branch="a"), box(10.2, 2.1, sxy=0.3, branch="b")
    m = merge_boxes([a, b], [1.0, 1.0], "information")
    sa, sb, sm = (np.asarray(x.covariance)[np.ix_((0, 1, 2, 5), (0, 1, 2, 5))] for x in (a, b, m))
    for s in (sa, sb):  # P_fused < P_i in the Loewner order: every direction is better known
        assert np.linalg.eigvalsh(s - sm).min() > 0
    # independent equal-quality estimates halve the variance
    same = merge_boxes([a, a], [1.0, 1.0])
    assert np.asarray(same.covariance)[0, 0] == pytest.approx(a.covariance[0, 0] / 2, rel=1e-9)
    assert m.evidence == pytest.approx(a.evidence + b.evidence)
    assert m.vacuity < min(a.vacuity, b.vacuity)
    # the centre lies between the two, nearer the surer one
    assert a.center[0] < m.center[0] < b.center[0] and m.center[0] - a.center[0] > b.center[0] - m.center[0]


def test_covariance_intersection_is_never_surer_than_the_best_input():
    a, b = box(10.0, 2.0, sxy=0.4, branch="a"), box(10.2, 2.1, sxy=0.3, branch="b")
    ci = merge_boxes([a, b], [1.0, 1.0], "covariance_intersection")
    same = merge_boxes([a, a], [1.0, 1.0], "covariance_intersection")
    assert np.asarray(same.covariance) == pytest.approx(np.asarray(a.covariance), rel=1e-9)
    assert np.trace(ci.covariance[:2, :2]) >= np.trace(merge_boxes([a, b], [1.0, 1.0]).covariance[:2, :2])


def test_a_branch_with_weight_zero_changes_nothing():
    rng = np.random.default_rng(1)
    a = scene(rng, 5, "a")
    ghost = scene(rng, 7, "b", noise=3.0)
    alone, _ = fuse_frame({"a": a}, {"a": 0.8}, ASSOC)
    with_ghost, _ = fuse_frame({"a": a, "b": ghost}, {"a": 0.8, "b": 0.0}, ASSOC)
    assert len(alone) == len(with_ghost)
    for x, y in zip(alone, with_ghost, strict=True):
        assert np.array_equal(x.box.center, y.box.center) and np.array_equal(x.box.covariance, y.box.covariance)
        assert np.array_equal(x.box.evidence, y.box.evidence)


def test_a_lower_weight_discounts_evidence_and_information():
    a = box(5.0, 0.0)
    half = merge_boxes([a], [0.5])
    assert half.evidence == pytest.approx(0.5 * a.evidence)
    assert half.covariance[0, 0] == pytest.approx(2 * a.covariance[0, 0]) and half.covariance[3, 3] == a.covariance[3, 3]
    assert half.score < a.score and half.label == a.label


def test_yaw_is_merged_on_the_circle():
    a, b = box(5.0, 0.0, yaw=math.pi - 0.05), box(5.1, 0.0, yaw=-math.pi + 0.05)
    m = merge_boxes([a, b], [1.0, 1.0])
    assert abs(abs(m.yaw) - math.pi) < 0.05 + 1e-9  # not 0, the arithmetic mean
    assert -math.pi < m.yaw <= math.pi
    assert wrap_angle(3 * math.pi) == pytest.approx(math.pi)
    # a heading flipped by pi is the same box: the most informative box's heading is kept, not turned by 90 deg
    sure, flipped = box(5.0, 0.0, yaw=0.1, syaw=0.1), box(5.1, 0.0, yaw=0.1 + math.pi, syaw=0.3)
    m = merge_boxes([sure, flipped], [1.0, 1.0])
    assert m.yaw == pytest.approx(0.1, abs=1e-9) and m.covariance[5, 5] < sure.covariance[5, 5]


def test_gates_keep_far_and_class_incompatible_boxes_apart():
    a = box(10.0, 0.0, cls=0, p=0.85, branch="a")
    far = box(14.0, 0.0, cls=0, branch="b")
    other_class = box(10.1, 0.0, cls=1, p=0.85, branch="c")
    assert len(associate({"a": [a], "b": [far]}, ASSOC)) == 2
    assert len(associate({"a": [a], "c": [other_class]}, ASSOC)) == 2
    near = box(10.1, 0.05, cls=0, branch="b")
    assert len(associate({"a": [a], "b": [near]}, ASSOC)) == 1
    # a zero covariance is floored by min_sigma_m: the gate still works
    z = box(10.05, 0.0, sxy=0.0, branch="b")
    assert len(associate({"a": [box(10.0, 0.0, sxy=0.0)], "b": [z]}, ASSOC)) == 1


def test_a_disagreeing_branch_loses_trust_and_recovers():
    rng = np.random.default_rng(2)
    trust = DetectionTrust()
    hist = {"a": [], "b": [], "c": []}
    for k in range(30):
        a, b = scene(rng, 5, "a"), scene(rng, 5, "b")
        c = scene(rng, 5, "c") if not 5 <= k < 15 else [box(60.0 + 8 * j, 30.0, branch="c") for j in range(5)]
        clusters = associate({"a": a, "b": b, "c": c}, ASSOC)
        trust.update(trust.conflicts(clusters, ["a", "b", "c"]))
        for n in hist:
            hist[n].append(trust.trust(n))
    assert hist["c"][4] == 1.0 and min(hist["c"][5:15]) < 0.2  # falls while it disagrees
    assert hist["c"][-1] == 1.0  # and recovers once it agrees again
    assert min(hist["a"]) > 0.5 and min(hist["b"]) > 0.5  # the two that agree keep their trust


def test_memory_moves_with_the_ego_decays_and_only_confirms():
    mem = DetectionMemory(decay_per_s=0.5, process_noise_m2_per_s=1.0, max_age_s=1.0)
    b = box(10.0, 0.0, yaw=0.0)
    mem.store(0, [b])
    # the ego moved 2 m forward: the object is 2 m nearer in the new base_link
    prior, w, state = mem.prior(200_000_000, np.linalg.inv(se2(2.0, 0.0, 0.0)))
    assert state == "ok" and w == pytest.approx(0.5**0.2)
    assert prior[0].center[0] == pytest.approx(8.0) and prior[0].covariance[0, 0] > b.covariance[0, 0]
    fused, _ = fuse_frame({"lidar": [], "memory": prior}, {"lidar": 1.0, "memory": w}, ASSOC,
                          confirm_only=("memory",))
    assert fused == []  # no ghost of an object nobody sees now
    seen = box(8.1, 0.0, yaw=0.0)
    fused, _ = fuse_frame({"lidar": [seen], "memory": prior}, {"lidar": 1.0, "memory": w}, ASSOC,
                          confirm_only=("memory",))
    assert len(fused) == 1 and fused[0].box.covariance[0, 0] < seen.covariance[0, 0]
    assert fused[0].box.evidence.sum() > seen.evidence.sum()
    geo, _ = fuse_frame({"lidar": [seen], "memory": prior}, {"lidar": 1.0, "memory": w}, ASSOC,
                        confirm_only=("memory",))
    from perception_nodes.evidential.detection_fusion import associate as _a, merge_clusters

    only_geo = merge_clusters(_a({"lidar": [seen], "memory": prior}, ASSOC), {"lidar": 1.0, "memory": w},
                              confirm_only=("memory",), geometry_only=("memory",))
    assert np.array_equal(only_geo[0].box.evidence, seen.evidence)  # class evidence from the live branch only
    assert only_geo[0].box.covariance[0, 0] == pytest.approx(geo[0].box.covariance[0, 0])
    assert mem.prior(-1, np.eye(3))[2].startswith("reset")  # time went back
    assert DetectionMemory(decay_per_s=0.0).prior(0, np.eye(3)) == ([], 0.0, "off")


def test_covariances_stay_symmetric_and_positive_definite():
    rng = np.random.default_rng(5)
    for _ in range(50):
        a, b, c = scene(rng, 4, "a", 0.3), scene(rng, 4, "b", 0.3), scene(rng, 4, "c", 0.3)
        for rule in ("information", "covariance_intersection"):
            fused, _ = fuse_frame({"a": a, "b": b, "c": c}, {"a": 1.0, "b": 0.6, "c": 0.3}, ASSOC, rule)
            for f in fused:
                cov = np.asarray(f.box.covariance)
                assert np.isfinite(cov).all() and np.allclose(cov, cov.T, atol=16 * EPS)
                assert np.linalg.eigvalsh(cov).min() > 0


def test_the_vectorised_cost_matrix_equals_the_pairwise_gates():
    from perception_nodes.evidential.detection_fusion import _admissible, cost_matrix

    rng = np.random.default_rng(9)
    a = scene(rng, 8, "a", 1.0) + [box(12.0, 0.5, cls=1, p=0.85), box(12.2, 0.4, sxy=0.0)]
    b = scene(rng, 8, "b", 1.0) + [box(12.1, 0.5, cls=0, p=0.85)]
    c = cost_matrix(a, b, ASSOC)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            ref = _admissible(x, y, ASSOC)
            assert (c[i, j] >= 1e9) if ref is None else c[i, j] == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert (c < 1e9).sum() >= 5  # the gates let the near, class-compatible pairs through


def test_two_agreeing_calibrated_opinions_keep_every_class_above_zero() -> None:
    """Negative evidence (calibrated scores above what the strength allows) is made >= 0 before summing:
    two boxes that both give background 0.005 must not fuse to background 0 and a score of exactly 1."""
    from perception_nodes.evidential.detection_fusion import (
        EvidentialBox, evidence_from_probabilities, merge_boxes, nonnegative_evidence)

    cov = np.diag([0.2, 0.2, 0.1, 1e6, 1e6, 0.05])
    for probs, strength in (((0.98, 0.01, 0.005), 17.0), ((0.6, 0.3, 0.05), 5.0)):
        e = evidence_from_probabilities(np.array(probs), strength)
        assert e.min() < 0  # the case at hand
        ok = nonnegative_evidence(e)
        assert ok.min() >= 0
        p_in = (e + 1) / (e + 1).sum()
        p_ok = (ok + 1) / (ok + 1).sum()
        np.testing.assert_allclose(p_ok, p_in, rtol=1e-12, atol=1e-3)  # same opinion, up to the 1e-3 lift
        a = EvidentialBox(np.zeros(3), np.ones(3), 0.0, cov, e, "a")
        b = EvidentialBox(np.zeros(3), np.ones(3), 0.0, cov, e.copy(), "b")
        fused = merge_boxes([a, b], [1.0, 1.0])
        p = fused.probabilities
        assert p.min() > 0 and fused.score < 1.0
        assert np.argmax(p) == np.argmax(p_in) and np.all(np.argsort(p) == np.argsort(p_in))
        # one of them alone passes through unchanged
        np.testing.assert_array_equal(merge_boxes([a], [1.0]).evidence, e)
