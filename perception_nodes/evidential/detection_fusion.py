"""Fusing 3D detections of N branches: association, evidence-weighted merge of classes and boxes, fused
covariance, per-branch trust and an optional decaying memory. Numpy only; the node
(:mod:`perception_nodes.graph.detection_fusion`) does the messages. Rule, parameters and failure modes:
``docs/detection_fusion.md``.

A box is an :class:`EvidentialBox`: centre, size, yaw, the 6 x 6 pose covariance over (x, y, z, roll,
pitch, yaw) and Dirichlet class *evidence* ``e`` over ``classes + background`` (``alpha = e + 1``, strength
``S = sum(alpha)``, expected probability ``alpha_k / S``, vacuity ``(K + 1) / S``; ``e_k`` may be negative,
down to -1, for classes a calibration map pushed below ``1 / S``: :func:`evidence_from_probabilities`). Per fused frame, with
branch weights ``w_i in [0, 1]`` (health gate x trust):

1. **Association** (:func:`associate`): branches are taken in name order; each one's boxes are assigned to
   the clusters built so far by the Hungarian method (:func:`hungarian`, minimum total cost) on the
   squared Mahalanobis distance of the BEV centres, ``d2 = dc^T (P_a + P_b)^-1 dc`` over (x, y). A pair
   is admissible when ``d2 <= gate_d2`` (chi-square, 2 dof, at ``gate_probability``), the centres are at
   most ``max_centre_distance_m`` apart, and each box gives the other's class at least
   ``min_class_probability``. Hungarian rather than greedy: greedy (nearest first) lets one box take the
   partner another needed when objects are close (two pedestrians side by side); the optimum over the
   whole frame costs O(n^3) for n <= 100 boxes, well under a millisecond at the sizes seen here.
   Unassigned boxes start clusters of their own.
2. **Classes** (cumulative fusion of discounted sources, as in the occupancy fusion): ``e = sum_i w_i e_i``.
   Commutative; one branch with ``w = 1`` is its own opinion; ``w = 0`` adds nothing.
3. **Box** (:func:`merge_boxes`): over the estimated state ``(x, y, z, yaw)``, information form
   ``Lambda = sum_i w_i P_i^-1``, ``mu = Lambda^-1 sum_i w_i P_i^-1 mu_i`` (``box_rule: information``; the
   Kalman/Bayes update for *independent* estimates), or covariance intersection with the fast weights
   ``omega_i ~ w_i / tr(P_i)`` normalised to 1 (``box_rule: covariance_intersection``; consistent for
   estimates with unknown correlation: two branches looking at the same LiDAR scan). Yaw is merged on the
   circle and modulo the box's symmetry: each yaw is moved by a multiple of pi to within pi / 2 of the
   most informative box's yaw (:func:`align_yaw`; that box's heading is kept), merged, and wrapped back to
   (-pi, pi]. Roll and pitch are not estimated: their variance is the smallest input value (the
   "unestimated" value the branches publish). Size: the information-weighted mean with weights
   ``w_i / tr(P_i)`` (size has no published variance).
4. **Output**: label = the foreground class of largest evidence, score = its expected probability.

Per-branch trust (:class:`DetectionTrust`): per frame, a branch's conflict with the others is the share of
score mass, its own and the others' (trust-weighted mean), left unmatched between the branch and the rest
(:meth:`DetectionTrust.conflicts`; None with fewer than ``min_boxes`` clusters), smoothed and mapped to
trust exactly as :class:`perception_nodes.evidential.fusion.ConflictTrust` does.

Memory (:class:`DetectionMemory`, ``decay_per_s > 0``): the previous fused set, moved into the current
base_link frame by the ego motion, enters as one more source with weight ``lambda^dt``, position
covariance grown by ``process_noise_m2_per_s * dt`` (objects move) and yaw variance by
``yaw_noise_rad2_per_s * dt`` (objects turn). It only *confirms*: a memory box that no
live branch matched this frame is not published (no ghosts of objects that left), it is kept for at most
``memory_max_age_s``. By default it adds to box and covariance only (``memory.class_evidence: false``):
summed over frames, the class evidence of the same sensor saturates every persistent box's score near 1
and the ranking that AP measures is lost (measured: docs/detection_fusion.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from perception_nodes.evidential.fusion import ConflictTrust, TrustParams

__all__ = [
    "AssociationParams",
    "Cluster",
    "DetectionMemory",
    "DetectionTrust",
    "EvidentialBox",
    "FusedDetection",
    "align_yaw",
    "associate",
    "cost_matrix",
    "evidence_from_probabilities",
    "fuse_frame",
    "hungarian",
    "mahalanobis_bev",
    "merge_boxes",
    "merge_clusters",
    "wrap_angle",
]

#: indices of (x, y, z, yaw) in the 6 x 6 pose covariance
STATE = (0, 1, 2, 5)
_STATE_IDX = np.ix_(STATE, STATE)
#: smallest Dirichlet parameter: evidence may be negative down to ``ALPHA_FLOOR - 1`` (see
#: :func:`evidence_from_probabilities`); sums of discounted evidence are floored here
ALPHA_FLOOR = 1e-6
#: a variance at or above this means "not estimated" (the LiDAR branch publishes 1e6 for roll and pitch)
UNESTIMATED = 1e5


def wrap_angle(a: float | np.ndarray) -> float | np.ndarray:
    """Angle(s) in (-pi, pi]."""
    w = np.mod(np.asarray(a, np.float64) + math.pi, 2.0 * math.pi) - math.pi
    w = np.where(w <= -math.pi, w + 2.0 * math.pi, w)
    return float(w) if np.ndim(w) == 0 else w


@dataclass
class EvidentialBox:
    """One detection with its uncertainty. ``evidence``: ``[K + 1]`` Dirichlet evidence (>= -1: see
    :func:`evidence_from_probabilities`; made >= 0 before opinions are summed) over the
    fusion's ``classes`` then background; ``covariance``: 6 x 6 over (x, y, z, roll, pitch, yaw)."""

    center: NDArray[np.float64]
    size: NDArray[np.float64]
    yaw: float
    covariance: NDArray[np.float64]
    evidence: NDArray[np.float64]
    branch: str = ""

    @property
    def alpha(self) -> NDArray[np.float64]:
        return np.maximum(self.evidence + 1.0, ALPHA_FLOOR)

    @property
    def probabilities(self) -> NDArray[np.float64]:
        """Expected probabilities of the K classes and background."""
        a = self.alpha
        return a / a.sum()

    @property
    def label(self) -> int:
        """Foreground class of largest evidence (ties: the first)."""
        return int(np.argmax(self.evidence[:-1]))

    @property
    def score(self) -> float:
        return float(self.probabilities[self.label])

    @property
    def strength(self) -> float:
        return float(self.alpha.sum())

    @property
    def vacuity(self) -> float:
        return float(len(self.evidence) / self.alpha.sum())

    def bev_covariance(self, min_sigma_m: float = 0.0) -> NDArray[np.float64]:
        c = np.array(self.covariance[:2, :2], np.float64)
        c = 0.5 * (c + c.T)
        return c + np.eye(2) * min_sigma_m**2


def evidence_from_probabilities(probs: np.ndarray, strength: float) -> NDArray[np.float64]:
    """Dirichlet evidence ``[K + 1]`` from expected probabilities of the K foreground classes (their rest to
    1 is background) and the strength ``S``: ``alpha_k = p_k S``, ``e_k = alpha_k - 1``.

    The exact inverse of ``p = alpha / S`` (so one branch passes through with its published scores).
    ``e_k`` is negative (down to ``-1``, alpha floored at :data:`ALPHA_FLOOR`) where a post-hoc calibration
    mapped a class's probability below ``1 / S``: the LiDAR branch publishes calibrated probabilities
    beside the strength of its (scaled) Dirichlet, and a score of 0.98 at ``S = 17`` leaves the other
    classes less than one unit of alpha. Clipping that to 0 evidence would lower the published score
    (0.98 -> 0.85 on the demo bag) and change the ranking.
    """
    p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
    fg = p.sum()
    if fg > 1.0:
        p = p / fg
        fg = 1.0
    s = max(float(strength), 1e-9)
    alpha = np.maximum(np.append(p, 1.0 - fg) * s, ALPHA_FLOOR)
    return alpha - 1.0


def nonnegative_evidence(evidence: np.ndarray, min_probability: float = 1e-3) -> NDArray[np.float64]:
    """The same expected probabilities with every ``alpha_k >= 1`` (evidence >= 0), by raising the strength
    ``S`` until the smallest alpha is 1 (probabilities below ``min_probability`` are lifted to alpha 1).

    Needed before *summing* opinions: :func:`evidence_from_probabilities` may give negative evidence (a
    calibrated score of 0.98 at ``S = 17`` leaves the other classes below one unit of alpha), and summing
    two such opinions drives those classes to the floor (two boxes that both say background 0.005 fused to
    exactly 0). One opinion alone keeps its evidence as published (:func:`merge_boxes`). The price: the
    raised strength makes such a box look surer (lower vacuity) than its branch said."""
    a = np.maximum(np.asarray(evidence, np.float64) + 1.0, ALPHA_FLOOR)
    m = float(a.min())
    if m >= 1.0:
        return np.asarray(evidence, np.float64)
    scale = 1.0 / max(m, min_probability * float(a.sum()))
    return np.maximum(a * scale, 1.0) - 1.0


# --- association ----------------------------------------------------------------------------------------
def hungarian(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment of a rectangular ``n x m`` cost matrix (finite entries): ``min(n, m)``
    (row, column) pairs. Shortest augmenting paths with potentials (Kuhn-Munkres, O(n^2 m))."""
    c = np.asarray(cost, np.float64)
    if c.size == 0:
        return []
    transposed = c.shape[0] > c.shape[1]
    if transposed:
        c = c.T
    n, m = c.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, np.int64)  # p[j]: row (1-based) assigned to column j; 0 = none
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            cur = c[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    pairs = [(int(p[j]) - 1, j - 1) for j in range(1, m + 1) if p[j] > 0]
    if transposed:
        pairs = [(b, a) for a, b in pairs]
    return sorted(pairs)


def mahalanobis_bev(a: EvidentialBox, b: EvidentialBox, min_sigma_m: float) -> float:
    """Squared Mahalanobis distance of the two BEV centres under ``P_a + P_b`` (each floored at
    ``min_sigma_m`` per axis, so a zero published covariance cannot make every distance infinite)."""
    d = np.asarray(a.center[:2], np.float64) - np.asarray(b.center[:2], np.float64)
    s = a.bev_covariance(min_sigma_m) + b.bev_covariance(min_sigma_m)
    try:
        return float(d @ np.linalg.solve(s, d))
    except np.linalg.LinAlgError:
        return math.inf


@dataclass(frozen=True)
class AssociationParams:
    """Gates of :func:`associate` (documented in perception.params.yaml, ``association.*``)."""

    gate_probability: float = 0.99  #: chi-square (2 dof) probability of the Mahalanobis gate
    max_centre_distance_m: float = 3.0  #: hard gate on the BEV centre distance
    min_class_probability: float = 0.1  #: each box must give the other's class at least this probability
    min_sigma_m: float = 0.1  #: floor on each box's BEV centre standard deviation in the gate

    def __post_init__(self) -> None:
        if not 0.0 < self.gate_probability < 1.0:
            raise ValueError(f"gate_probability must lie in (0, 1), got {self.gate_probability}")
        if self.max_centre_distance_m <= 0 or self.min_sigma_m < 0:
            raise ValueError("max_centre_distance_m > 0 and min_sigma_m >= 0 needed")
        if not 0.0 <= self.min_class_probability <= 1.0:
            raise ValueError(f"min_class_probability must lie in [0, 1], got {self.min_class_probability}")

    @property
    def gate_d2(self) -> float:
        """Chi-square quantile with 2 degrees of freedom: ``-2 ln(1 - p)``."""
        return -2.0 * math.log(1.0 - self.gate_probability)


def _admissible(a: EvidentialBox, b: EvidentialBox, p: AssociationParams) -> float | None:
    """The pair's cost (squared Mahalanobis distance) or None when a gate fails."""
    if float(np.hypot(*(np.asarray(a.center[:2]) - np.asarray(b.center[:2])))) > p.max_centre_distance_m:
        return None
    pa, pb = a.probabilities, b.probabilities
    if pa[b.label] < p.min_class_probability or pb[a.label] < p.min_class_probability:
        return None
    d2 = mahalanobis_bev(a, b, p.min_sigma_m)
    return d2 if d2 <= p.gate_d2 else None


@dataclass
class Cluster:
    """Boxes of one object, at most one per source (branch or memory)."""

    members: dict[str, EvidentialBox] = field(default_factory=dict)

    def representative(self) -> EvidentialBox:
        """The member with the most class evidence (ties: the first source by name): the box the next
        branch is gated against."""
        return max(sorted(self.members.items()), key=lambda kv: kv[1].evidence[:-1].sum())[1]


def cost_matrix(a: Sequence[EvidentialBox], b: Sequence[EvidentialBox], params: AssociationParams,
                big: float = 1e9) -> NDArray[np.float64]:
    """Squared BEV Mahalanobis distances of every pair (``big`` where a gate of :func:`_admissible` fails),
    vectorised: the same numbers as :func:`mahalanobis_bev` pair by pair."""
    ca = np.array([x.center[:2] for x in a], np.float64).reshape(-1, 2)
    cb = np.array([x.center[:2] for x in b], np.float64).reshape(-1, 2)
    floor = np.eye(2) * params.min_sigma_m**2
    pa = np.array([x.bev_covariance() for x in a]).reshape(-1, 2, 2) + floor
    pb = np.array([x.bev_covariance() for x in b]).reshape(-1, 2, 2) + floor
    d = ca[:, None, :] - cb[None, :, :]
    s = pa[:, None] + pb[None, :]
    det = s[..., 0, 0] * s[..., 1, 1] - s[..., 0, 1] * s[..., 1, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        d2 = (d[..., 0] ** 2 * s[..., 1, 1] - d[..., 0] * d[..., 1] * (s[..., 0, 1] + s[..., 1, 0])
              + d[..., 1] ** 2 * s[..., 0, 0]) / det
    d2 = np.where(np.isfinite(d2) & (det > 0), d2, np.inf)
    proba = np.array([x.probabilities for x in a]).reshape(len(a), -1)
    probb = np.array([x.probabilities for x in b]).reshape(len(b), -1)
    la = np.array([x.label for x in a], np.int64)
    lb = np.array([x.label for x in b], np.int64)
    cls_ok = (proba[:, lb] >= params.min_class_probability) & (probb[:, la].T >= params.min_class_probability)
    ok = (np.hypot(d[..., 0], d[..., 1]) <= params.max_centre_distance_m) & cls_ok & (d2 <= params.gate_d2)
    return np.where(ok, d2, big)


def associate(sources: Mapping[str, Sequence[EvidentialBox]], params: AssociationParams) -> list[Cluster]:
    """Clusters of boxes across sources (see module doc, step 1). Sources are taken in name order, so the
    result does not depend on the order of the mapping; with two sources the assignment is the global
    optimum of the pair, which is symmetric in the two."""
    clusters: list[Cluster] = []
    big = 1e9
    for name in sorted(sources):
        boxes = list(sources[name])
        if not boxes:
            continue
        taken: set[int] = set()
        if clusters:
            cost = cost_matrix([c.representative() for c in clusters], boxes, params, big)
            for i, j in hungarian(cost):
                if cost[i, j] < big:
                    clusters[i].members[name] = boxes[j]
                    taken.add(j)
        clusters += [Cluster({name: b}) for j, b in enumerate(boxes) if j not in taken]
    return clusters


# --- merging --------------------------------------------------------------------------------------------
def align_yaw(yaw: float, ref_yaw: float) -> float:
    """``yaw`` moved by a multiple of pi to within pi / 2 of ``ref_yaw`` (unwrapped, not wrapped): a box is
    the same box turned by pi, and detectors flip the heading of a parked car from scan to scan; averaging
    0 and pi on the circle would give a box turned by 90 degrees."""
    d = float(wrap_angle(yaw - ref_yaw))
    if d > math.pi / 2:
        d -= math.pi
    elif d < -math.pi / 2:
        d += math.pi
    return ref_yaw + d


def _state(box: EvidentialBox, ref_yaw: float) -> NDArray[np.float64]:
    return np.array([box.center[0], box.center[1], box.center[2], align_yaw(box.yaw, ref_yaw)])


def _state_cov(box: EvidentialBox) -> NDArray[np.float64]:
    c = np.asarray(box.covariance, np.float64)[_STATE_IDX]
    return 0.5 * (c + c.T)


def merge_boxes(boxes: Sequence[EvidentialBox], weights: Sequence[float], rule: str = "information",
                min_variance: float = 0.0, class_evidence: Sequence[bool] | None = None) -> EvidentialBox:
    """One box from the members of a cluster (module doc, steps 2 and 3). ``weights`` in [0, 1], at least
    one positive. A single box with weight 1 comes back unchanged; a box with weight 0 changes nothing.
    Covariances must be positive definite on (x, y, z, yaw) (the node repairs those that are not);
    ``min_variance`` is added to their diagonal before inverting (0: none). ``class_evidence`` (one flag
    per box, default all true): boxes flagged false add to the geometry only, not to the class evidence."""
    if rule not in ("information", "covariance_intersection"):
        raise ValueError(f"box rule must be information or covariance_intersection, got {rule!r}")
    flags = [True] * len(boxes) if class_evidence is None else list(class_evidence)
    if not any(w > 0 and f for w, f in zip(weights, flags, strict=True)):
        raise ValueError("merge_boxes needs a box with positive weight that carries class evidence")
    voters = [(b, float(w)) for b, w, f in zip(boxes, weights, flags, strict=True) if w > 0 and f]
    if len(voters) == 1:  # one opinion (discounted): passes through, negative evidence and all
        evidence = voters[0][1] * voters[0][0].evidence
    else:  # cumulative fusion is defined for evidence >= 0 only
        evidence = sum(w * nonnegative_evidence(b.evidence) for b, w in voters)
    live = [(b, float(w)) for b, w in zip(boxes, weights, strict=True) if w > 0]
    if len(live) == 1:
        b, w = live[0]
        cov = np.array(b.covariance, np.float64)
        if w != 1.0:
            cov[_STATE_IDX] = cov[_STATE_IDX] / w
        return EvidentialBox(np.array(b.center, np.float64), np.array(b.size, np.float64), float(b.yaw), cov,
                             np.asarray(evidence, np.float64), b.branch)
    covs = [_state_cov(b) + np.eye(4) * min_variance for b, _ in live]
    infos = [np.linalg.inv(c) for c in covs]
    ref = max(range(len(live)), key=lambda i: np.trace(infos[i]))
    ref_yaw = float(live[ref][0].yaw)
    if rule == "information":
        omegas = [w for _, w in live]
    else:
        raw = [w / float(np.trace(c)) for c, (_, w) in zip(covs, live, strict=True)]
        total = sum(raw)
        wsum = max(w for _, w in live)  # CI of discounted sources: at most as sure as the most trusted one
        omegas = [wsum * r / total for r in raw]
    lam = sum(o * info for o, info in zip(omegas, infos, strict=True))
    eta = sum(o * info @ _state(b, ref_yaw) for o, info, (b, _) in zip(omegas, infos, live, strict=True))
    p_fused = np.linalg.inv(lam)
    p_fused = 0.5 * (p_fused + p_fused.T)
    mu = p_fused @ eta
    cov = np.zeros((6, 6))
    cov[_STATE_IDX] = p_fused
    for k in (3, 4):  # roll, pitch: not estimated
        cov[k, k] = min(float(b.covariance[k][k]) for b, _ in live)
    size_w = np.array([w / max(float(c[0, 0] + c[1, 1]), 1e-12) for c, (_, w) in zip(covs, live, strict=True)])
    size = (size_w[:, None] * np.array([b.size for b, _ in live], np.float64)).sum(0) / size_w.sum()
    return EvidentialBox(mu[:3].copy(), size, float(wrap_angle(mu[3])), cov, np.asarray(evidence, np.float64),
                         "+".join(sorted(b.branch for b, _ in live)))


# --- trust ----------------------------------------------------------------------------------------------
@dataclass
class DetectionTrust:
    """Per-branch smoothed detection conflict and the trust it maps to (see module doc)."""

    params: TrustParams = field(default_factory=lambda: TrustParams(conflict_ok=0.2, conflict_bad=0.5,
                                                                     smoothing=0.3, floor=0.05,
                                                                     min_evidence=0.0, min_cells=1))
    min_boxes: int = 2
    _trust: ConflictTrust = field(init=False)

    def __post_init__(self) -> None:
        self._trust = ConflictTrust(self.params)

    @property
    def smoothed(self) -> dict[str, float]:
        return self._trust.smoothed

    def trust(self, name: str) -> float:
        return self._trust.trust(name)

    def conflicts(self, clusters: Sequence[Cluster], branches: Sequence[str]) -> dict[str, float | None]:
        """Per branch: score mass left unmatched between it and the other branches, over all their score
        mass (0: every box on each side has a partner; 1: none has). The others' mass in a cluster is
        their trust-weighted mean score (absent branches count 0), so, as in the occupancy fusion's
        reference opinion, a distrusted outlier barely moves the conflict of the branches that agree; with
        two branches it is simply the other's score and the conflict is the same for both. None when no
        other branch sent boxes this frame or fewer than ``min_boxes`` clusters are involved."""
        out: dict[str, float | None] = {}
        for name in branches:
            others = [b for b in branches if b != name]
            trust = {o: self.trust(o) for o in others}
            norm = sum(trust.values())
            if not others or norm <= 0:
                out[name] = None
                continue
            total = unmatched = 0.0
            n = 0
            for c in clusters:
                own = c.members.get(name)
                present = [o for o in others if o in c.members]
                if own is None and not present:
                    continue
                mass_own = own.score if own is not None else 0.0
                mass_rest = sum(trust[o] * c.members[o].score for o in present) / norm
                total += mass_own + mass_rest
                n += 1
                if own is None or not present:
                    unmatched += mass_own + mass_rest
            out[name] = None if n < self.min_boxes or total <= 0 else unmatched / total
        return out

    def update(self, conflicts: Mapping[str, float | None]) -> dict[str, float]:
        return self._trust.update(conflicts)


# --- one fused frame ------------------------------------------------------------------------------------
@dataclass
class FusedDetection:
    """A fused box and where it came from (source name -> the member box)."""

    box: EvidentialBox
    sources: tuple[str, ...]


def merge_clusters(clusters: Sequence[Cluster], weights: Mapping[str, float], rule: str = "information",
                   confirm_only: Sequence[str] = (), geometry_only: Sequence[str] = ()) -> list[FusedDetection]:
    """One fused box per cluster (members of weight 0 left out); clusters made only of ``confirm_only``
    sources (the memory) are not published; ``geometry_only`` sources add to box and covariance, not to
    the class evidence."""
    out = []
    for c in clusters:
        names = tuple(sorted(n for n in c.members if weights.get(n, 0.0) > 0))
        if not names or all(n in confirm_only for n in names):
            continue
        box = merge_boxes([c.members[n] for n in names], [weights[n] for n in names], rule,
                          class_evidence=[n not in geometry_only for n in names])
        out.append(FusedDetection(box, names))
    return out


def fuse_frame(sources: Mapping[str, Sequence[EvidentialBox]], weights: Mapping[str, float],
               association: AssociationParams, rule: str = "information",
               confirm_only: Sequence[str] = ()) -> tuple[list[FusedDetection], list[Cluster]]:
    """Associate and merge one frame. Sources with weight 0 take no part (their boxes change nothing);
    clusters made only of ``confirm_only`` sources (the memory) are not published."""
    live = {n: list(b) for n, b in sources.items() if weights.get(n, 0.0) > 0}
    clusters = associate(live, association)
    return merge_clusters(clusters, weights, rule, confirm_only), clusters


# --- memory ---------------------------------------------------------------------------------------------
@dataclass
class DetectionMemory:
    """The previous fused set, held in base_link of its stamp (see module doc). ``decay_per_s`` = lambda
    (share of evidence and information kept after 1 s; 0 = no memory)."""

    decay_per_s: float = 0.0
    process_noise_m2_per_s: float = 4.0
    max_age_s: float = 1.0
    yaw_noise_rad2_per_s: float = 0.0
    stamp_ns: int | None = None
    boxes: list[EvidentialBox] = field(default_factory=list)

    def reset(self) -> None:
        self.stamp_ns = None
        self.boxes = []

    def store(self, stamp_ns: int, boxes: Sequence[EvidentialBox]) -> None:
        if self.decay_per_s <= 0:
            return
        self.stamp_ns = stamp_ns
        self.boxes = [replace(b, branch="memory") for b in boxes]

    def prior(self, stamp_ns: int, motion: np.ndarray | None) -> tuple[list[EvidentialBox], float, str]:
        """``(boxes moved to stamp_ns, weight lambda^dt, state)``; no boxes when off, too old, time went
        back or there is no motion (``motion``: 3 x 3 SE(2) from base_link at the memory's stamp to
        base_link at ``stamp_ns``)."""
        if self.decay_per_s <= 0:
            return [], 0.0, "off"
        if self.stamp_ns is None or not self.boxes:
            return [], 0.0, "empty"
        dt = (stamp_ns - self.stamp_ns) / 1e9
        if dt < 0:
            self.reset()
            return [], 0.0, "reset (time went back)"
        if dt > self.max_age_s:
            self.reset()
            return [], 0.0, f"reset (older than memory_max_age_s = {self.max_age_s:g} s)"
        if motion is None:
            self.reset()
            return [], 0.0, "reset (no ego pose)"
        m = np.asarray(motion, np.float64)
        rot = m[:2, :2]
        dyaw = math.atan2(m[1, 0], m[0, 0])
        out = []
        for b in self.boxes:
            c = np.array(b.center, np.float64)
            c[:2] = rot @ c[:2] + m[:2, 2]
            cov = np.array(b.covariance, np.float64)
            r3 = np.eye(6)
            r3[:2, :2] = rot
            cov = r3 @ cov @ r3.T
            cov[0, 0] += self.process_noise_m2_per_s * dt
            cov[1, 1] += self.process_noise_m2_per_s * dt
            cov[5, 5] += self.yaw_noise_rad2_per_s * dt
            out.append(EvidentialBox(c, np.array(b.size), float(wrap_angle(b.yaw + dyaw)), cov,
                                     np.array(b.evidence), "memory"))
        return out, float(self.decay_per_s ** dt), "ok"
