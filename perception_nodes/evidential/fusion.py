"""Fusing per-cell Beta occupancy evidence from N branches, with health gates, conflict-based trust and
temporal accumulation under ego motion. Numpy only; the node (:mod:`perception_nodes.graph.fusion`) does
the messages. The rule, its parameters and failure modes are explained in ``docs/fusion.md``.

Per fusion step at stamp ``t`` with branches ``i = 1..N`` giving evidence ``(r_i, s_i)`` per cell::

    w_i   = gate_i * trust_i                                   (per-branch weight in [0, 1])
    R_t   = lambda^dt * warp(R_{t-1}) + sum_i w_i r_i          (S_t likewise; capped at max_evidence)
    P     = (R + 1) / (R + S + 2),   vacuity u = 2 / (R + S + 2)

* ``sum_i w_i r_i`` is subjective logic's cumulative fusion of trust-discounted sources (evidence adds;
  discounting scales evidence, :func:`perception_nodes.evidential.beta.discount`), so it is commutative
  in the branches and one branch with ``w = 1`` is its own opinion.
* ``gate_i`` (:func:`health_gate`): 0 when the branch's grid is older than its ``timeout_s`` (stale), else
  the product of its health scalars mapped by :func:`ramp` between a "bad" and a "good" threshold.
* ``trust_i`` (:class:`ConflictTrust`): falls while the branch keeps disagreeing with the others, rises
  again when it agrees. The per-frame conflict of branch ``i`` is a *balanced* mean of the degree of
  conflict (:func:`degree_of_conflict`) between its opinion and the reference opinion of the other
  branches (:func:`leave_one_out`), over the cells both observe: the mean over cells the reference reads
  occupied and the mean over cells it reads free are averaged, so "everything free" from a blinded
  sensor (wrong only on the few occupied cells) is not diluted by the many free cells. The conflict is
  smoothed over frames (exponential, ``smoothing``) and mapped to trust by a linear ramp from
  ``conflict_ok`` (trust 1) to ``conflict_bad`` (trust ``floor``).
* Temporal accumulation (:class:`EvidenceAccumulator`): the fused evidence of past frames is kept on a
  world-aligned grid that scrolls with the ego by whole cells, multiplied by ``lambda^dt`` per step
  (``decay_per_s`` = lambda, the share left after one second) and read out into the current base_link
  frame at the ego pose; ``warp(R_{t-1})`` above is that read-out. Branch grids of another stamp are
  moved to the fused stamp by :func:`warp_evidence` (nearest cell).

Reading evidence back from the published 0..100 grids (:func:`evidence_from_percent`) is lossy; see that
function for the error bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from perception_nodes.evidential.beta import PRIOR_WEIGHT
from perception_nodes.pipeline.occupancy import GridSpec

__all__ = [
    "ConflictTrust",
    "EvidenceAccumulator",
    "FusionResult",
    "TrustParams",
    "balanced_conflict",
    "degree_of_conflict",
    "evidence_from_percent",
    "fuse_weighted",
    "fusion_step",
    "health_gate",
    "leave_one_out",
    "quantisation_bound",
    "ramp",
    "relative_motion",
    "se2",
    "warp_evidence",
]

F32 = np.float32


# --- reading evidence from the published grids ---------------------------------------------------------
def evidence_from_percent(prob: np.ndarray, vac: np.ndarray) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``(r, s)`` per cell from a grid pair: ``P`` (0..100, -1 unknown) and vacuity ``U`` (0..100).

    ``S = r + s + 2 = 200 / U`` and ``r = P S / 100 - 1`` (clipped to ``[0, S - 2]``). A cell with
    ``U = 100`` or ``P = -1`` carries no evidence. ``U = 0`` (vacuity below 0.5 %: more than 398 evidence)
    is read as ``U = 0.5``, the most the message can state, instead of being dropped.

    Error (the messages are rounded to whole percent, :func:`quantisation_bound`): the total evidence
    ``S - 2`` is known to a relative ``0.5 / (U - 0.5)`` (1 % at ``U = 50``, 11 % at ``U = 5``, 2/3 at
    ``U = 1``), and ``r`` additionally to ``0.005 S`` from the rounding of ``P``.
    """
    p = np.asarray(prob, dtype=np.float32)
    u = np.asarray(vac, dtype=np.float32)
    if p.shape != u.shape:
        raise ValueError(f"probability {p.shape} and vacuity {u.shape} grids differ in shape")
    known = (p >= 0) & (u < 100) & (u >= 0)
    u_eff = np.where(known, np.maximum(u, F32(0.5)), F32(100.0))
    strength = F32(200.0) / u_eff
    r = np.clip(np.where(known, np.clip(p, 0, 100) / F32(100.0) * strength - F32(1.0), F32(0.0)), 0.0, strength - 2.0)
    s = np.maximum(strength - F32(2.0) - r, F32(0.0))
    return r.astype(F32), s.astype(F32)


def quantisation_bound(vac_percent: np.ndarray | float) -> NDArray[np.float64]:
    """Largest relative error of the total evidence recovered from a vacuity of ``vac_percent`` (whole
    percent, rounded to nearest): ``0.5 / (U - 0.5)`` (``inf`` at ``U <= 0.5``)."""
    u = np.asarray(vac_percent, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(u > 0.5, 0.5 / np.maximum(u - 0.5, 1e-300), np.inf)


# --- opinions ------------------------------------------------------------------------------------------
def _prob_certainty(r: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    strength = r + s + PRIOR_WEIGHT
    return (r + 1.0) / strength, (r + s) / strength  # projected probability, 1 - vacuity


def degree_of_conflict(r1: np.ndarray, s1: np.ndarray, r2: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Jøsang's degree of conflict of two binomial opinions, ``DC = |P1 - P2| (1 - u1)(1 - u2)`` in [0, 1).

    (Subjective Logic, 2016, ch. 4: projected distance times conjunctive certainty.) 0 for identical
    opinions and for any opinion against a vacuous one; near 1 only for two confident opposite opinions.
    Unlike Dempster's ``K = b1 d2 + d1 b2`` (:func:`perception_nodes.evidential.beta.conflict`) it does not
    call two equal, moderately sure opinions conflicting.
    """
    p1, c1 = _prob_certainty(r1, s1)
    p2, c2 = _prob_certainty(r2, s2)
    return np.abs(p1 - p2) * c1 * c2


def fuse_weighted(evidence: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float],
                  shape: tuple[int, int] | None = None) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``(sum_i w_i r_i, sum_i w_i s_i)``: cumulative fusion of trust-discounted sources (float32)."""
    if len(evidence) != len(weights):
        raise ValueError("one weight per branch")
    if not evidence and shape is None:
        raise ValueError("no branch and no shape")
    shp = shape if shape is not None else np.shape(evidence[0][0])
    r = np.zeros(shp, F32)
    s = np.zeros(shp, F32)
    for (ri, si), w in zip(evidence, weights, strict=True):
        if not (0.0 <= w <= 1.0):
            raise ValueError(f"weights must lie in [0, 1], got {w}")
        if w > 0:
            r += F32(w) * np.asarray(ri, F32)
            s += F32(w) * np.asarray(si, F32)
    return r, s


def leave_one_out(evidence: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float], i: int,
                  ) -> tuple[NDArray[np.float32], NDArray[np.float32]] | None:
    """Reference opinion for branch ``i``: the others fused with their weights *relative to the most
    trusted of them* (``w_j / max_k w_k``), or None when no other branch has weight.

    Relative weights keep the reference as sure as its best source: with two branches each one's
    reference is the other, undiscounted (a distrusted partner does not make the conflict vanish, which
    would let trust oscillate); with three, a distrusted outlier barely moves the reference of the two
    that agree.
    """
    others = [j for j in range(len(evidence)) if j != i and weights[j] > 0]
    if not others:
        return None
    top = max(weights[j] for j in others)
    return fuse_weighted([evidence[j] for j in others], [weights[j] / top for j in others])


def balanced_conflict(r: np.ndarray, s: np.ndarray, ref_r: np.ndarray, ref_s: np.ndarray, *,
                      min_evidence: float, min_cells: int) -> float | None:
    """Mean degree of conflict over the cells both opinions observe (total evidence >= ``min_evidence``),
    balanced over the reference's decision: (mean over cells it reads occupied + mean over cells it reads
    free) / 2; a class with fewer than ``min_cells`` cells is left out; None when fewer than ``min_cells``
    cells are observed by both."""
    both = ((r + s) >= min_evidence) & ((ref_r + ref_s) >= min_evidence)
    n = int(np.count_nonzero(both))
    if n < min_cells:
        return None
    dc = degree_of_conflict(r[both], s[both], ref_r[both], ref_s[both])
    occ = ref_r[both] > ref_s[both]
    parts = [float(dc[m].mean()) for m in (occ, ~occ) if np.count_nonzero(m) >= min_cells]
    if not parts:
        return float(dc.mean())
    return sum(parts) / len(parts)


# --- health and trust ----------------------------------------------------------------------------------
def ramp(x: float, bad: float, good: float) -> float:
    """0 at or beyond ``bad``, 1 at or beyond ``good``, linear between (``good < bad`` works downward)."""
    if not math.isfinite(x):
        return 0.0
    if good == bad:
        return 1.0 if x >= good else 0.0
    return float(min(1.0, max(0.0, (x - bad) / (good - bad))))


def health_gate(age_s: float | None, timeout_s: float,
                scalars: Mapping[str, tuple[float | None, float, float, float]] | None = None,
                ) -> tuple[float, str]:
    """``(gate, why)``: 0 when the grid is missing or older than ``timeout_s`` (``timeout_s <= 0``: never
    stale), else the product over ``scalars`` ``{name: (value, bad, good, missing)}`` of
    ``ramp(value, bad, good)`` (``missing`` when the value is None). ``why`` names what lowered it."""
    if age_s is None:
        return 0.0, "no grid yet"
    if timeout_s > 0 and age_s > timeout_s:
        return 0.0, f"stale: grid {age_s:.2f} s old > timeout {timeout_s:g} s"
    gate, why = 1.0, []
    for name, (value, bad, good, missing) in (scalars or {}).items():
        g = missing if value is None else ramp(value, bad, good)
        if g < 1.0:
            why.append(f"{name}={'missing' if value is None else f'{value:.3g}'} (bad {bad:g}, good {good:g})")
        gate *= g
    return float(gate), "; ".join(why)


@dataclass(frozen=True)
class TrustParams:
    """Conflict-based trust (see module doc). Defaults are documented in perception.params.yaml."""

    conflict_ok: float = 0.1  #: smoothed conflict at or below which trust is 1
    conflict_bad: float = 0.25  #: smoothed conflict at or above which trust is ``floor``
    smoothing: float = 0.3  #: weight of the newest frame in the exponential smoothing (1 = no smoothing)
    floor: float = 0.05  #: lowest trust
    min_evidence: float = 1.0  #: total evidence of a cell that counts as observed
    min_cells: int = 50  #: cells both observe needed to measure a conflict (else the conflict holds)

    def __post_init__(self) -> None:
        if not 0.0 <= self.conflict_ok < self.conflict_bad <= 1.0:
            raise ValueError(f"need 0 <= conflict_ok < conflict_bad <= 1, got {self.conflict_ok}, {self.conflict_bad}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must lie in (0, 1], got {self.smoothing}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor must lie in [0, 1], got {self.floor}")
        if self.min_evidence < 0 or self.min_cells < 1:
            raise ValueError("min_evidence >= 0 and min_cells >= 1 needed")


@dataclass
class ConflictTrust:
    """Per-branch smoothed conflict and the trust it maps to (state kept across frames, by branch name)."""

    params: TrustParams = field(default_factory=TrustParams)
    smoothed: dict[str, float] = field(default_factory=dict)

    def trust(self, name: str) -> float:
        c = self.smoothed.get(name)
        if c is None:
            return 1.0
        p = self.params
        return p.floor + (1.0 - p.floor) * ramp(c, p.conflict_bad, p.conflict_ok)

    def update(self, conflicts: Mapping[str, float | None]) -> dict[str, float]:
        """Fold one frame's conflicts in (None: not measurable this frame, the smoothed value holds)."""
        a = self.params.smoothing
        for name, c in conflicts.items():
            if c is None or not math.isfinite(c):
                continue
            prev = self.smoothed.get(name)
            self.smoothed[name] = c if prev is None else (1.0 - a) * prev + a * c
        return {name: self.trust(name) for name in conflicts}


# --- ego motion ----------------------------------------------------------------------------------------
def se2(x: float, y: float, yaw: float) -> NDArray[np.float64]:
    """3x3 homogeneous 2D rigid transform."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, x], [s, c, y], [0.0, 0.0, 1.0]])


def relative_motion(pose_prev: np.ndarray, pose_cur: np.ndarray) -> NDArray[np.float64]:
    """Transform taking points in the previous base_link frame into the current one, from the two poses
    of base_link in a fixed frame (3x3 each): ``inv(T_cur) @ T_prev``."""
    return np.linalg.solve(np.asarray(pose_cur, np.float64), np.asarray(pose_prev, np.float64))


_CENTRES: dict[GridSpec, tuple[np.ndarray, np.ndarray]] = {}


def _centres(spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    c = _CENTRES.get(spec)
    if c is None:
        if len(_CENTRES) > 8:
            _CENTRES.clear()
        x, y = spec.cell_centers()
        c = _CENTRES[spec] = (x.ravel(), y.ravel())
    return c


def warp_evidence(r: np.ndarray, s: np.ndarray, spec: GridSpec, prev_to_cur: np.ndarray,
                  ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Evidence held in the previous base_link frame, re-gridded into the current one: each current cell
    takes the previous cell under its centre mapped back (``inv(prev_to_cur)``), nearest cell; cells
    that come from outside the grid get no evidence. Identity motion returns the inputs."""
    m = np.asarray(prev_to_cur, np.float64)
    if np.allclose(m, np.eye(3), atol=1e-12):
        return np.asarray(r, F32), np.asarray(s, F32)
    inv = np.linalg.inv(m)
    cx, cy = _centres(spec)
    px = inv[0, 0] * cx + inv[0, 1] * cy + inv[0, 2]
    py = inv[1, 0] * cx + inv[1, 1] * cy + inv[1, 2]
    # a centre that maps exactly onto a cell border (pure rotations by 90 deg of a centred grid) must not
    # fall either way by rounding: nudge by a tiny fraction of a cell
    eps = 1e-9 * spec.resolution
    row, col, inside = spec.cell_index(px + eps, py + eps)
    out_r = np.zeros(spec.height * spec.width, F32)
    out_s = np.zeros(spec.height * spec.width, F32)
    rr, ss = np.asarray(r, F32), np.asarray(s, F32)
    out_r[inside] = rr[row[inside], col[inside]]
    out_s[inside] = ss[row[inside], col[inside]]
    return out_r.reshape(spec.shape), out_s.reshape(spec.shape)


@dataclass
class EvidenceAccumulator:
    """Fused evidence over time, held on a *world-aligned* grid that scrolls with the ego by whole cells.

    Each step: the memory is scrolled to the ego's current cell (an exact integer shift), multiplied by
    ``decay_per_s ** dt``, and read out onto the base_link grid at the current pose (:meth:`prior`); the
    frame's new evidence is written into it once (:meth:`add`). So every piece of evidence is re-gridded
    twice at most (into the world grid, and out again at each read), never compounded frame after frame:
    re-gridding a base_link memory at every step (warping the previous fused grid) walks each cell's
    content by up to half a cell per frame, a random walk that blurs edges over the memory's length.
    ``pose``: 3x3 pose of base_link in a fixed frame (identity for a stationary platform).
    ``decay_per_s = 0`` keeps no memory. Each class is capped at ``max_evidence`` per cell.
    """

    spec: GridSpec
    decay_per_s: float = 0.0
    max_evidence: float = 400.0
    r: NDArray[np.float32] | None = None  #: world-aligned memory (rows +y, columns +x of the fixed frame)
    s: NDArray[np.float32] | None = None
    stamp_ns: int | None = None
    anchor: tuple[int, int] | None = None  #: fixed-frame cell index (col, row) of the memory's cell (0, 0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay_per_s < 1.0:
            raise ValueError(f"decay_per_s must lie in [0, 1), got {self.decay_per_s}")
        if not self.max_evidence > 0:
            raise ValueError("max_evidence must be positive")

    def reset(self) -> None:
        self.r = self.s = None
        self.stamp_ns = None
        self.anchor = None

    def _anchor_for(self, pose: np.ndarray) -> tuple[int, int]:
        res = self.spec.resolution
        ox, oy = self.spec.origin  # type: ignore[misc]
        return (int(math.floor((pose[0, 2] + ox) / res + 1e-9)), int(math.floor((pose[1, 2] + oy) / res + 1e-9)))

    def _scroll(self, anchor: tuple[int, int]) -> None:
        dc, dr = anchor[0] - self.anchor[0], anchor[1] - self.anchor[1]  # type: ignore[index]
        h, w = self.spec.shape
        for name in ("r", "s"):
            old = getattr(self, name)
            new = np.zeros_like(old)
            if abs(dr) < h and abs(dc) < w:
                new[max(0, -dr):h - max(0, dr), max(0, -dc):w - max(0, dc)] = \
                    old[max(0, dr):h - max(0, -dr), max(0, dc):w - max(0, -dc)]
            setattr(self, name, new)
        self.anchor = anchor

    def _world_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        res = self.spec.resolution
        h, w = self.spec.shape
        eps = 1e-9
        col = np.floor(x / res + eps) - self.anchor[0]  # type: ignore[index]
        row = np.floor(y / res + eps) - self.anchor[1]  # type: ignore[index]
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        return np.where(inside, row, 0).astype(np.int64), np.where(inside, col, 0).astype(np.int64), inside

    def prior(self, stamp_ns: int, pose: np.ndarray | None) -> tuple[NDArray[np.float32], NDArray[np.float32], str]:
        """The memory carried to ``stamp_ns`` and read out on the base_link grid at ``pose`` (zeros when there
        is none or it cannot be carried: no pose, time going back, which also resets it), and why."""
        zero = np.zeros(self.spec.shape, F32)
        why = "ok"
        if self.decay_per_s <= 0.0:
            return zero, zero.copy(), "off"
        if pose is None:
            had = self.r is not None
            self.reset()
            return zero, zero.copy(), "no ego pose for the stamp: memory reset" if had else "no ego pose yet"
        pose = np.asarray(pose, np.float64)
        anchor = self._anchor_for(pose)
        if self.r is None or self.stamp_ns is None or self.anchor is None:
            self.r, self.s, self.anchor, self.stamp_ns = zero.copy(), zero.copy(), anchor, int(stamp_ns)
            return zero, zero.copy(), "empty"
        dt = (stamp_ns - self.stamp_ns) / 1e9
        if dt < 0:
            self.r, self.s, self.anchor, self.stamp_ns = zero.copy(), zero.copy(), anchor, int(stamp_ns)
            return zero, zero.copy(), "time went back: memory reset"
        self._scroll(anchor)
        k = F32(self.decay_per_s ** dt)
        self.r *= k
        self.s *= k
        self.stamp_ns = int(stamp_ns)
        cx, cy = _centres(self.spec)
        wx = pose[0, 0] * cx + pose[0, 1] * cy + pose[0, 2]
        wy = pose[1, 0] * cx + pose[1, 1] * cy + pose[1, 2]
        row, col, inside = self._world_index(wx, wy)
        out_r = np.where(inside, self.r[row, col], F32(0.0)).astype(F32).reshape(self.spec.shape)
        out_s = np.where(inside, self.s[row, col], F32(0.0)).astype(F32).reshape(self.spec.shape)
        return out_r, out_s, why

    def add(self, r: np.ndarray, s: np.ndarray, pose: np.ndarray | None) -> None:
        """Write one frame's new evidence (base_link grid at ``pose``) into the memory: each memory cell
        takes the base_link cell under its centre. Call after :meth:`prior` for the same stamp."""
        if self.decay_per_s <= 0.0 or pose is None or self.r is None:
            return
        pose = np.asarray(pose, np.float64)
        res = self.spec.resolution
        h, w = self.spec.shape
        inv = np.linalg.inv(pose)
        xs = (self.anchor[0] + np.arange(w) + 0.5) * res  # type: ignore[index]
        ys = (self.anchor[1] + np.arange(h) + 0.5) * res  # type: ignore[index]
        wx, wy = (a.ravel() for a in np.meshgrid(xs, ys))
        bx = inv[0, 0] * wx + inv[0, 1] * wy + inv[0, 2]
        by = inv[1, 0] * wx + inv[1, 1] * wy + inv[1, 2]
        eps = 1e-9 * res
        row, col, inside = self.spec.cell_index(bx + eps, by + eps)
        rr, ss = np.asarray(r, F32), np.asarray(s, F32)
        cap = F32(self.max_evidence)
        flat_r, flat_s = self.r.reshape(-1), self.s.reshape(-1)
        flat_r[inside] = np.minimum(flat_r[inside] + rr[row[inside], col[inside]], cap)
        flat_s[inside] = np.minimum(flat_s[inside] + ss[row[inside], col[inside]], cap)


# --- one step ------------------------------------------------------------------------------------------
@dataclass
class FusionResult:
    """One fused frame. ``conflict`` is the per-cell max over branches of the degree of conflict between
    the branch and its reference (0 where no two branches observe); weights and their parts by branch."""

    r: NDArray[np.float32]
    s: NDArray[np.float32]
    conflict: NDArray[np.float32]
    weights: dict[str, float]
    gates: dict[str, float]
    trusts: dict[str, float]
    conflicts: dict[str, float | None]  #: this frame's per-branch conflict (None: not measurable)
    smoothed_conflicts: dict[str, float | None]

    def probability(self) -> NDArray[np.float32]:
        return ((self.r + 1.0) / (self.r + self.s + PRIOR_WEIGHT)).astype(F32)

    def vacuity(self) -> NDArray[np.float32]:
        return (PRIOR_WEIGHT / (self.r + self.s + PRIOR_WEIGHT)).astype(F32)


def fusion_step(branches: Mapping[str, tuple[np.ndarray, np.ndarray]], gates: Mapping[str, float],
                trust: ConflictTrust, *, shape: tuple[int, int],
                prior: tuple[np.ndarray, np.ndarray] | None = None) -> FusionResult:
    """Fuse one frame (see module doc): conflicts measured against each branch's reference with the
    weights *before* this frame's update, trust updated, then the evidence summed with the new weights
    on top of ``prior`` (the accumulated, warped, decayed evidence). Branch order does not matter."""
    names = sorted(branches)  # a fixed order: the result cannot depend on the caller's order
    ev = [(np.asarray(branches[n][0], F32), np.asarray(branches[n][1], F32)) for n in names]
    for n, (r, s) in zip(names, ev, strict=True):
        if r.shape != shape or s.shape != shape:
            raise ValueError(f"branch {n}: grid {r.shape} does not match the fusion grid {shape}")
        if not (np.isfinite(r).all() and np.isfinite(s).all()) or (r < 0).any() or (s < 0).any():
            raise ValueError(f"branch {n}: evidence must be finite and non-negative")
    g = [float(gates.get(n, 0.0)) for n in names]
    before = [gi * trust.trust(n) for gi, n in zip(g, names, strict=True)]
    p = trust.params
    conflicts: dict[str, float | None] = {}
    layer = np.zeros(shape, F32)
    for i, n in enumerate(names):
        ref = leave_one_out(ev, before, i) if g[i] > 0 else None
        if ref is None:
            conflicts[n] = None
            continue
        conflicts[n] = balanced_conflict(ev[i][0], ev[i][1], ref[0], ref[1], min_evidence=p.min_evidence,
                                         min_cells=p.min_cells)
        np.maximum(layer, degree_of_conflict(ev[i][0], ev[i][1], ref[0], ref[1]).astype(F32), out=layer)
    trusts = trust.update(conflicts)
    weights = [gi * trusts[n] for gi, n in zip(g, names, strict=True)]
    r, s = fuse_weighted(ev, weights, shape)
    if prior is not None:
        r += np.asarray(prior[0], F32)
        s += np.asarray(prior[1], F32)
    return FusionResult(r=r, s=s, conflict=layer, weights=dict(zip(names, weights, strict=True)),
                        gates=dict(zip(names, g, strict=True)), trusts=trusts, conflicts=conflicts,
                        smoothed_conflicts={n: trust.smoothed.get(n) for n in names})
