"""Evidence fusion node: occupancy evidence of N branches -> one fused grid, its vacuity, a conflict layer
and each branch's weight.

Branches are data: every entry of ``branches.<name>`` in the params file with ``enabled: true`` is read
from its ``occupancy_topic`` (P(occupied) 0..100, -1 unknown) and ``uncertainty_topic`` (vacuity 0..100),
paired by stamp, turned back into Beta evidence
(:func:`perception_nodes.evidential.fusion.evidence_from_percent`) and fused by the rule of
:mod:`perception_nodes.evidential.fusion` (weight = health gate x conflict-based trust; decay and
ego-motion warping from ``odometry_topic``, or from ``/tf`` (``tf_fixed_frame`` -> ``base_frame``) when no
odometry topic is set). A branch's health gate reads any number of health inputs
(``perception_interfaces/Float64Stamped`` scalars: the LiDAR nodes' scan health, the stereo
valid-disparity ratio, the camera's image health and exposure, the calibration monitor's per-camera
score): ``health_inputs.<name>`` (``topic``, ``bad``, ``good``, ``missing``, ``timeout_s``) and, kept for
older params files, the single ``health_topic`` (``health_bad``, ``health_good``, ``health_missing``,
``health_timeout_s``; input name ``health``). Each maps linearly to a factor between ``bad`` and ``good``
(``missing`` while none arrived within ``timeout_s`` on the node clock); the gate is their product. One
health topic may feed several branches (e.g. one camera's calibration score). The rule
and how to add a branch: ``docs/fusion.md``.

Policy (message-driven, with a tick for time-outs): one fused grid per grid pair of the *pacing* branch
(``pace_branch``; while it is stale, the first fresh branch in the file's order). A fused frame for stamp
``T`` waits until every other *live, synchronous* branch (its newest grid within its ``timeout_s`` of the
newest grid of any branch, and one of its last grids stamped within ``match_tolerance_s`` of a pace
stamp) has a pair stamped at or after ``T - match_tolerance_s``, or until ``max_wait_s`` (node clock) has
passed; each branch
then contributes the pair of its short history closest to ``T``, warped from its own stamp to ``T`` by the
odometry when they differ. So branches of the same scan are fused together (the learned LiDAR grid comes
~0.1 s after the geometric one), a slower or asynchronous branch (stereo at camera stamps) is aligned by
ego motion, and a dead branch delays nothing beyond ``max_wait_s``; once its newest grid is more than its
``timeout_s`` behind the newest grid of any branch it is not waited for, and its gate is 0 (stale).

Outputs (``base_frame``, the ``grid`` geometry): ``occupancy_topic``, ``uncertainty_topic`` and
``conflict_topic`` (degree of conflict 0..100) as ``nav_msgs/OccupancyGrid``; ``weights_topic``/``<branch>``
as ``perception_interfaces/Float64Stamped`` (the weight used for that stamp); ``/diagnostics`` status
``<node>: branches`` with each branch's weight, gate, trust, conflict, age, each health input's value
and factor (``<branch>.health.<input>``), the input that limits the gate (``<branch>.gate_limited_by``)
and why the weight is low.

A branch grid whose geometry differs from ``grid`` is resampled (nearest cell, counted) or, with
``geometry_mismatch: reject``, dropped with a diagnostic. Stages timed: ``decode`` (per grid, outside the
frame), ``warp``, ``fuse``, ``encode``.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.codecs.backend import make_header, stamp_to_ns
from perception_nodes.codecs.outputs import DiagnosticStatusData, occupancy_grid_msg
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.errors import MalformedMessageError
from perception_nodes.evidential.fusion import (
    ConflictTrust,
    EvidenceAccumulator,
    TrustParams,
    evidence_from_percent,
    fusion_step,
    health_gate,
    ramp,
    relative_motion,
    se2,
    warp_evidence,
)
from perception_nodes.graph.node import OK, WARN, Emit, NodeCore, Port
from perception_nodes.pipeline.occupancy import GridSpec
from perception_nodes.pipeline.occupancy_fusion import resample_nearest

OCCUPANCY = "/perception/fusion/occupancy_grid"
UNCERTAINTY = "/perception/fusion/occupancy_grid/uncertainty"
CONFLICT = "/perception/fusion/occupancy_grid/conflict"
WEIGHTS = "/perception/fusion/weights"
TRUSTS = "/perception/fusion/trust"

#: pairs of one branch waiting for their other half, and pairs kept for matching a stamp
_PAIR_QUEUE = 6
_HISTORY = 4


@dataclass(frozen=True)
class HealthInput:
    """One health input of a branch: a Float64Stamped scalar and its ramp (``branches.<b>.health_inputs.<name>``)."""

    name: str
    topic: str = ""  #: "" = this input is off
    bad: float = 0.0  #: value at (or beyond) which the factor is 0
    good: float = 1.0  #: value at (or beyond) which the factor is 1 (linear between; good < bad works downward)
    missing: float = 1.0  #: factor while no value (or only a stale one) is at hand
    timeout_s: float = 1.0  #: a value older than this (node clock) counts as missing

    def __post_init__(self) -> None:
        if not 0.0 <= self.missing <= 1.0:
            raise ValueError(f"missing must lie in [0, 1], got {self.missing}")
        if self.timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {self.timeout_s}")


@dataclass(frozen=True)
class BranchConfig:
    """One ``branches.<name>`` entry of the params file (documented there)."""

    name: str
    occupancy_topic: str
    uncertainty_topic: str
    enabled: bool = True
    timeout_s: float = 0.5
    health_topic: str = ""
    health_bad: float = 0.0
    health_good: float = 0.0
    health_missing: float = 1.0
    health_timeout_s: float = 1.0
    mask_with: str = ""
    health_inputs: tuple[HealthInput, ...] = ()

    @classmethod
    def from_params(cls, name: str, values: dict[str, Any]) -> BranchConfig:
        values = dict(values)
        raw = values.pop("health_inputs", None) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"branches.{name}.health_inputs must be a map of input name -> "
                              "{topic, bad, good, missing, timeout_s}")
        cfg = to_dataclass(cls, {"name": name, **values}, f"branches.{name}.")
        inputs = []
        if cfg.health_topic:  # the single health scalar of older params files: input "health"
            inputs.append(HealthInput("health", cfg.health_topic, cfg.health_bad, cfg.health_good,
                                      cfg.health_missing, cfg.health_timeout_s))
        for iname, ivalues in raw.items():
            if iname == "health" and cfg.health_topic:
                raise ConfigError(f"branches.{name}.health_inputs.health: the name 'health' is the legacy "
                                  "health_topic's; choose another")
            h = to_dataclass(HealthInput, {"name": iname, **dict(ivalues or {})}, f"branches.{name}.health_inputs.{iname}.")
            if h.topic:
                inputs.append(h)
        topics_seen = [h.topic for h in inputs]
        if len(set(topics_seen)) != len(topics_seen):
            raise ConfigError(f"branches.{name}: a health topic is named twice ({', '.join(topics_seen)})")
        return dataclasses.replace(cfg, health_inputs=tuple(inputs))


@dataclass
class _Pair:
    stamp: int
    r: np.ndarray
    s: np.ndarray


@dataclass
class _BranchState:
    cfg: BranchConfig
    halves: dict[int, dict[str, Any]] = field(default_factory=dict)  # stamp -> topic -> msg
    history: deque[_Pair] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    last_arrival_ns: int | None = None  # node clock when its last pair completed
    health: dict[str, tuple[int, float, int]] = field(default_factory=dict)  # input -> (node clock, value, stamp)
    factors: dict[str, tuple[float | None, float]] = field(default_factory=dict)  # input -> (value, factor) last frame
    resampled: int = 0
    rejected: int = 0
    unwarped: int = 0
    why: str = ""
    synchronous: deque[bool] = field(default_factory=lambda: deque(maxlen=_HISTORY))  # per pair: on a pace stamp?


def _yaw(q: Any) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


class PoseBuffer:
    """Poses of base_link in a fixed frame by stamp (from odometry); :meth:`at` interpolates."""

    def __init__(self, max_gap_s: float, size: int = 400) -> None:
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.size = size
        self.stamps: list[int] = []
        self.poses: list[tuple[float, float, float]] = []

    def add(self, stamp: int, x: float, y: float, yaw: float) -> None:
        if self.stamps and stamp <= self.stamps[-1]:
            if stamp == self.stamps[-1]:
                return
            if self.stamps[-1] - stamp > 10 * 1_000_000_000:  # a time jump (bag loop): start over
                self.stamps.clear()
                self.poses.clear()
        i = bisect.bisect_left(self.stamps, stamp)
        self.stamps.insert(i, stamp)
        self.poses.insert(i, (x, y, yaw))
        if len(self.stamps) > self.size:
            del self.stamps[0], self.poses[0]

    def at(self, stamp: int) -> np.ndarray | None:
        """3x3 pose at ``stamp``: linear between the two neighbours; after the newest, extrapolated at the
        last two poses' velocity; before the oldest, the oldest; None when more than ``max_gap_s`` from
        the buffer (or between two poses further apart than that)."""
        if not self.stamps:
            return None
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:
            return se2(*self.poses[i])
        if 0 < i < len(self.stamps):
            t0, t1 = self.stamps[i - 1], self.stamps[i]
            if t1 - t0 > self.max_gap_ns:
                return None
            a = (stamp - t0) / (t1 - t0)
            (x0, y0, h0), (x1, y1, h1) = self.poses[i - 1], self.poses[i]
            dh = math.atan2(math.sin(h1 - h0), math.cos(h1 - h0))
            return se2(x0 + a * (x1 - x0), y0 + a * (y1 - y0), h0 + a * dh)
        j = 0 if i == 0 else len(self.stamps) - 1
        if abs(self.stamps[j] - stamp) > self.max_gap_ns:
            return None
        if j > 0 and self.stamps[j] - self.stamps[j - 1] <= self.max_gap_ns:
            # after the newest pose (odometry often lags the sensors): constant velocity from the last two
            (x0, y0, h0), (x1, y1, h1) = self.poses[j - 1], self.poses[j]
            a = (stamp - self.stamps[j]) / (self.stamps[j] - self.stamps[j - 1])
            dh = math.atan2(math.sin(h1 - h0), math.cos(h1 - h0))
            return se2(x1 + a * (x1 - x0), y1 + a * (y1 - y0), h1 + a * dh)
        return se2(*self.poses[j])


class FusionNode(NodeCore):
    """See module doc."""

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.occupancy_topic = params.get("occupancy_topic", OCCUPANCY)
        self.uncertainty_topic = params.get("uncertainty_topic", UNCERTAINTY)
        self.conflict_topic = params.get("conflict_topic", CONFLICT)
        self.weights_topic = params.get("weights_topic", WEIGHTS)
        # the conflict-based trust alone (no health gate), for consumers that judge a branch's *content*
        # (detection_fusion: a thin scan is gated out of the grid, its boxes stay good; docs/fusion.md)
        self.trust_topic = params.get("trust_topic", TRUSTS)
        self.odometry_topic = params.get("odometry_topic", topics.GT_ODOMETRY)
        # ego poses from /tf instead (needs use_tf): the transform tf_fixed_frame -> base_frame, when no odometry
        self.tf_fixed_frame = str(params.get("tf_fixed_frame", "") or "").lstrip("/")
        branches = params.get("branches") or {}
        if not isinstance(branches, dict):
            raise ConfigError(f"{name}.branches must be a map of branch name -> settings")
        self.branches: dict[str, _BranchState] = {}
        for bname, values in branches.items():
            cfg = BranchConfig.from_params(bname, dict(values or {}))
            if cfg.enabled:
                if not (cfg.occupancy_topic and cfg.uncertainty_topic):
                    raise ConfigError(f"{name}.branches.{bname}: occupancy_topic and uncertainty_topic are needed")
                self.branches[bname] = _BranchState(cfg)
        for st in self.branches.values():
            if st.cfg.mask_with and st.cfg.mask_with not in self.branches:
                raise ConfigError(f"{name}.branches.{st.cfg.name}.mask_with names {st.cfg.mask_with!r}, which is "
                                  f"not an enabled branch ({', '.join(self.branches) or 'none'})")
        self._topic_branch: dict[str, tuple[str, str]] = {}  # grid topic -> (branch, "occ" | "unc")
        self._health_topics: dict[str, list[tuple[str, str]]] = {}  # health topic -> [(branch, input)]
        for bname, st in self.branches.items():
            for topic, role in ((st.cfg.occupancy_topic, "occ"), (st.cfg.uncertainty_topic, "unc")):
                if topic in self._topic_branch:
                    raise ConfigError(f"{name}: topic {topic} used twice (branches {self._topic_branch[topic][0]} "
                                      f"and {bname})")
                self._topic_branch[topic] = (bname, role)
            for h in st.cfg.health_inputs:  # a health topic may feed several branches
                self._health_topics.setdefault(h.topic, []).append((bname, h.name))
        for topic in self._health_topics:
            if topic in self._topic_branch:
                raise ConfigError(f"{name}: topic {topic} is both a grid topic (branch "
                                  f"{self._topic_branch[topic][0]}) and a health input")
        for attr, value in self._derived(params).items():
            setattr(self, attr, value)
        self.trust = ConflictTrust(self.trust_params)
        self.accumulator = EvidenceAccumulator(self.grid, self.decay_per_s, self.max_evidence)
        self.poses = PoseBuffer(self.odometry_max_gap_s)
        self._pending: list[tuple[int, int]] = []  # (stamp, node-clock deadline) of frames to fuse
        self._last_fused = -1  # stamp of the newest fused frame (a stamp is fused once)
        self._pace_stamps: deque[int] = deque(maxlen=8)
        self.fused_out = 0
        self.timeouts = 0  # frames fused at max_wait_s without every live branch
        self.memory_resets = 0
        self.memory_state = "empty"
        self.last_result: Any = None

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super()._derived(params)
        grid = to_dataclass(GridSpec, params.get("grid", {}), f"{self.name}.grid.")
        out["grid"] = grid
        out["trust_params"] = to_dataclass(TrustParams, params.get("trust", {}), f"{self.name}.trust.")
        decay = float(params.get("decay_per_s", 0.3))
        max_ev = float(params.get("max_evidence", 200.0))
        EvidenceAccumulator(grid, decay, max_ev)  # validates
        out["decay_per_s"], out["max_evidence"] = decay, max_ev
        policy = str(params.get("geometry_mismatch", "resample"))
        if policy not in ("resample", "reject"):
            raise ConfigError(f"{self.name}.geometry_mismatch must be resample or reject, got {policy!r}")
        out["geometry_mismatch"] = policy
        out["pace_branch"] = str(params.get("pace_branch", ""))
        out["max_wait_ns"] = int(float(params.get("max_wait_s", 0.3)) * 1e9)
        out["match_tolerance_ns"] = int(float(params.get("match_tolerance_s", 0.05)) * 1e9)
        out["odometry_max_gap_s"] = float(params.get("odometry_max_gap_s", 0.5))
        out["unknown_vacuity"] = float(params.get("unknown_vacuity", 1.0))
        out["weight_warn"] = float(params.get("weight_warn", 0.5))
        if hasattr(self, "trust"):  # reconfigure: keep the state, take the new parameters
            self.trust.params = out["trust_params"]
            self.poses.max_gap_ns = int(out["odometry_max_gap_s"] * 1e9)
            if grid != self.grid:  # another grid: what is held is on the old one
                out["accumulator"] = EvidenceAccumulator(grid, decay, max_ev)
                for st in self.branches.values():
                    st.history.clear()
            else:
                self.accumulator.decay_per_s, self.accumulator.max_evidence = decay, max_ev
        return out

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        ports = super().inputs()
        for topic in self._topic_branch:
            ports.append(Port(topic, topics.OCCUPANCY_GRID_TYPE, "reliable"))
        for topic in self._health_topics:
            ports.append(Port(topic, topics.FLOAT64_STAMPED, "sensor"))
        if self.odometry_topic:
            ports.append(Port(self.odometry_topic, topics.ODOMETRY_TYPE, "reliable"))
        return ports

    def outputs(self) -> list[Port]:
        out = super().outputs()
        for topic in (self.occupancy_topic, self.uncertainty_topic, self.conflict_topic):
            if topic:
                out.append(Port(topic, topics.OCCUPANCY_GRID_TYPE, "reliable"))
        if self.weights_topic:
            out += [Port(self.weight_topic(b), topics.FLOAT64_STAMPED, "reliable") for b in self.branches]
        if self.trust_topic:
            out += [Port(f"{self.trust_topic.rstrip('/')}/{b}", topics.FLOAT64_STAMPED, "reliable") for b in self.branches]
        return out

    def weight_topic(self, branch: str) -> str:
        return f"{self.weights_topic.rstrip('/')}/{branch}"

    # --- messages -------------------------------------------------------------------------------
    @property
    def pose_source(self) -> str:
        """Where ego poses come from: ``odometry``, ``tf`` or ``none`` (a stationary platform)."""
        if self.odometry_topic:
            return "odometry"
        return "tf" if self.tf_fixed_frame and self.params.get("use_tf", True) else "none"

    def _take_transforms(self, msg: Any, *, static: bool) -> None:
        super()._take_transforms(msg, static=static)
        if static or self.pose_source != "tf":
            return
        for ts in msg.transforms:  # only the direct transform tf_fixed_frame -> base_frame, by its own stamp
            if (str(ts.header.frame_id).lstrip("/") == self.tf_fixed_frame
                    and str(ts.child_frame_id).lstrip("/") == self.base_frame):
                tr, q = ts.transform.translation, ts.transform.rotation
                self.poses.add(stamp_to_ns(ts.header.stamp), float(tr.x), float(tr.y), _yaw(q))

    def pending(self, topic: str) -> int:
        hit = self._topic_branch.get(topic)
        if hit is None:
            return 0
        return sum(topic in h for h in self.branches[hit[0]].halves.values())

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        if topic in self._health_topics:
            v = float(msg.data)
            if not math.isfinite(v):  # a NaN would turn the gate, the weight and the fused grid into NaN
                raise MalformedMessageError(topics.FLOAT64_STAMPED, f"non-finite health value {v}")
            self.mark_used(topic)
            now, stamp = self.clock(), stamp_to_ns(msg.header.stamp)
            for bname, iname in self._health_topics[topic]:
                self.branches[bname].health[iname] = (now, v, stamp)
            return []
        if topic == self.odometry_topic and topic not in self._topic_branch:
            p, q = msg.pose.pose.position, msg.pose.pose.orientation
            vals = (float(p.x), float(p.y), _yaw(q))
            if not all(math.isfinite(v) for v in vals):
                raise MalformedMessageError(topics.ODOMETRY_TYPE, "non-finite pose")
            self.poses.add(stamp_to_ns(msg.header.stamp), *vals)
            self.mark_used(topic)
            return self._flush(due_only=True)
        bname, role = self._topic_branch[topic]
        st = self.branches[bname]
        stamp = stamp_to_ns(msg.header.stamp)
        held = st.halves.setdefault(stamp, {})
        if topic in held:
            self.mark_dropped(topic, "duplicate")
        held[topic] = msg
        out: list[Emit] = []
        if {st.cfg.occupancy_topic, st.cfg.uncertainty_topic} <= set(held):
            del st.halves[stamp]
            out = self._take_pair(st, stamp, held[st.cfg.occupancy_topic], held[st.cfg.uncertainty_topic])
        while len(st.halves) > _PAIR_QUEUE:  # oldest first: its other half never came
            _, old = st.halves.pop(min(st.halves))
            for t in old:
                self.mark_dropped(t, "unmatched")
            self._warn("unmatched", f"branch {bname}: a grid whose partner (occupancy or uncertainty) of the same "
                       "stamp never came was dropped")
        return out

    def _take_pair(self, st: _BranchState, stamp: int, occ: Any, unc: Any) -> list[Emit]:
        from perception_nodes.learning.grids import grid_from_msg

        cfg = st.cfg
        t0 = time.perf_counter_ns()
        try:
            p, spec = grid_from_msg(occ)
            u, spec_u = grid_from_msg(unc)
            if spec_u != spec:
                raise ValueError(f"occupancy grid {spec.shape} @ {spec.origin} and uncertainty grid "
                                 f"{spec_u.shape} @ {spec_u.origin} differ")
        except ValueError as exc:
            for t in (cfg.occupancy_topic, cfg.uncertainty_topic):
                self.malformed[t] += 1
            self._last_drop_ns = self.steady_clock()
            self._warn("malformed", f"branch {cfg.name} at stamp {stamp} ns: {exc}")
            return []
        r, s = evidence_from_percent(p, u)
        if spec != self.grid:
            same = (spec.shape == self.grid.shape and abs(spec.resolution - self.grid.resolution) < 1e-9
                    and np.allclose(spec.origin, self.grid.origin, atol=1e-6))
            if not same:
                if self.geometry_mismatch == "reject":
                    st.rejected += 1
                    for t in (cfg.occupancy_topic, cfg.uncertainty_topic):
                        self.mark_dropped(t, "geometry")
                    self._warn("geometry", f"branch {cfg.name}: grid {spec.width}x{spec.height} at "
                               f"{spec.resolution:g} m from {spec.origin} differs from the fusion grid "
                               f"{self.grid.width}x{self.grid.height} at {self.grid.resolution:g} m from "
                               f"{self.grid.origin}: rejected (geometry_mismatch = reject)")
                    return []
                rs = resample_nearest(np.stack([r, s]), spec, self.grid)
                r, s = rs[0], rs[1]
                st.resampled += 1
        self.latency.record("decode", (time.perf_counter_ns() - t0) / 1e6)
        st.history.append(_Pair(stamp, r, s))
        st.last_arrival_ns = self.clock()
        for t in (cfg.occupancy_topic, cfg.uncertainty_topic):
            self.mark_used(t)
        pacer = self._pacer()
        if cfg.name == pacer and stamp < self._last_fused - self.match_tolerance_ns:
            self._time_jump(st, stamp)
        if cfg.name == pacer:
            self._pace_stamps.append(stamp)
            if stamp > self._last_fused and all(p[0] != stamp for p in self._pending):
                self._pending.append((stamp, self.clock() + self.max_wait_ns))
                self._pending.sort()
        else:
            st.synchronous.append(any(abs(stamp - p) <= self.match_tolerance_ns for p in self._pace_stamps))
        return self._flush()

    def _time_jump(self, pace: _BranchState, stamp: int) -> None:
        """The pace branch's grids come from one publisher in stamp order, so one older than the newest fused
        frame means time went back (a looping bag, a rewound /clock): grids, poses and the memory of the old
        timeline would make every new frame look stale or be warped by the wrong poses, so start over (the
        trust learned about each branch is kept) and say so."""
        self._warn("time_jump", f"{pace.cfg.name} grid stamped {stamp} ns, before the last fused frame "
                                f"{self._last_fused} ns: time went back; history, poses and memory reset")
        keep = pace.history[-1]
        for st in self.branches.values():
            st.history.clear()
            st.synchronous.clear()
        pace.history.append(keep)
        self._pending.clear()
        self._pace_stamps.clear()
        self._last_fused = -1
        self.poses = PoseBuffer(self.odometry_max_gap_s)
        self.accumulator.reset()
        self.memory_state = "reset (time jump)"

    def _waits_for(self, st: _BranchState, now: int) -> bool:
        """A fused frame waits for a branch that is live and runs on the pace branch's stamps (one of its
        last grids matched a pace stamp): the learned LiDAR grid of the same scan. An asynchronous branch
        (stereo at camera stamps) is not waited for; its newest grid is moved to the stamp instead."""
        return st.cfg.name != self._pacer() and any(st.synchronous) and self._alive(st, now)

    # --- pacing ---------------------------------------------------------------------------------
    def _alive(self, st: _BranchState, now: int) -> bool:
        """A branch is live while its newest grid is within its ``timeout_s`` of the newest grid of any
        branch (data stamps, not arrival times: a slow machine or a replay does not make it stale). A
        frame never waits longer than ``max_wait_s`` on the node clock for a live branch."""
        if not st.history or st.last_arrival_ns is None:
            return False
        if st.cfg.timeout_s <= 0:
            return True
        timeout = int(st.cfg.timeout_s * 1e9)
        newest = max(b.history[-1].stamp for b in self.branches.values() if b.history)
        return newest - st.history[-1].stamp <= timeout

    def _pacer(self) -> str:
        now = self.clock()
        if self.pace_branch in self.branches and self._alive(self.branches[self.pace_branch], now):
            return self.pace_branch
        for name, st in self.branches.items():
            if self._alive(st, now):
                return name
        return next(iter(self.branches), "")

    def on_tick(self) -> list[Emit]:
        return self._flush(due_only=True)

    def _flush(self, due_only: bool = False) -> list[Emit]:
        """Fuse the pending frames that are complete (or past their deadline), oldest first."""
        out: list[Emit] = []
        now = self.clock()
        while self._pending:
            stamp, deadline = self._pending[0]
            complete = all(not self._waits_for(st, now) or st.history[-1].stamp >= stamp - self.match_tolerance_ns
                           for st in self.branches.values())
            if not complete and now < deadline:
                break
            if not complete:
                self.timeouts += 1
            self._pending.pop(0)
            if stamp > self._last_fused:
                out += self._fuse(stamp)
        return out

    def finish(self) -> list[Emit]:
        out = []
        while self._pending:
            stamp = self._pending.pop(0)[0]
            if stamp > self._last_fused:
                out += self._fuse(stamp)
        for st in self.branches.values():
            for held in st.halves.values():
                for t in held:
                    self.mark_dropped(t, "end_of_input")
            st.halves.clear()
        return out

    # --- fusion ---------------------------------------------------------------------------------
    def _motion(self, src: int, dst: int) -> np.ndarray | None:
        """Transform from base_link at ``src`` to base_link at ``dst``; identity without a pose source (a
        stationary platform); None when the poses do not cover the stamps."""
        if src == dst or self.pose_source == "none":
            return np.eye(3)
        a, b = self.poses.at(src), self.poses.at(dst)
        if a is None or b is None:
            return None
        return relative_motion(a, b)

    def _fuse(self, stamp: int) -> list[Emit]:
        shape = self.grid.shape
        with self.latency.frame(stamp) as frame:
            with self.latency.stage("warp"):
                branches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
                gates: dict[str, float] = {}
                for name, st in self.branches.items():
                    pair = min(st.history, key=lambda p: abs(p.stamp - stamp)) if st.history else None
                    age = None if pair is None else abs(stamp - pair.stamp) / 1e9
                    scalars = self._health_scalars(st)
                    gates[name], st.why = health_gate(age, st.cfg.timeout_s, scalars)
                    if pair is None:
                        branches[name] = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
                        continue
                    r, s = pair.r, pair.s
                    if abs(pair.stamp - stamp) > self.match_tolerance_ns and gates[name] > 0:
                        m = self._motion(pair.stamp, stamp)
                        if m is None:
                            st.unwarped += 1
                        else:
                            r, s = warp_evidence(r, s, self.grid, m)
                    branches[name] = (r, s)
                for name, st in self.branches.items():
                    if st.cfg.mask_with:
                        mr, ms = branches[st.cfg.mask_with]
                        seen = (mr + ms) > 0
                        r, s = branches[name]
                        branches[name] = (np.where(seen, r, 0).astype(np.float32), np.where(seen, s, 0).astype(np.float32))
                pose = np.eye(3) if self.pose_source == "none" else self.poses.at(stamp)
                pr, ps, self.memory_state = self.accumulator.prior(stamp, pose)
                if "reset" in self.memory_state:
                    self.memory_resets += 1
                    self._warn("memory", f"fused evidence memory reset at stamp {stamp} ns: {self.memory_state}")
            with self.latency.stage("fuse"):
                res = fusion_step(branches, gates, self.trust, shape=shape)
                self.accumulator.add(res.r, res.s, pose)
                cap = np.float32(self.max_evidence)
                res.r, res.s = np.minimum(res.r + pr, cap), np.minimum(res.s + ps, cap)
            with self.latency.stage("encode"):
                emits = self._encode(stamp, res)
        self.last_result = res
        self._last_fused = stamp
        self.fused_out += 1
        self.frames_out += 1
        return emits + self.debug_emits(frame)

    def _health_scalars(self, st: _BranchState) -> dict[str, tuple[float | None, float, float, float]]:
        """``{input: (value or None when missing/stale, bad, good, missing)}`` for :func:`health_gate`; the
        factors are kept for the diagnostics."""
        now = self.clock()
        out: dict[str, tuple[float | None, float, float, float]] = {}
        st.factors = {}
        for h in st.cfg.health_inputs:
            got = st.health.get(h.name)
            # |age|: a replay's clock restarts at each message's receive time, so a sample emitted late in the
            # processing of the previous message can lie a little ahead of now (fresh); one far ahead is
            # from before a time jump back (a looping bag): stale
            fresh = got is not None and abs(now - got[0]) <= h.timeout_s * 1e9
            v = got[1] if fresh else None
            out[h.name] = (v, h.bad, h.good, h.missing)
            st.factors[h.name] = (v, h.missing if v is None else ramp(v, h.bad, h.good))
        return out

    def _encode(self, stamp: int, res: Any) -> list[Emit]:
        b, frame_id, spec = self.backend, self.base_frame, self.grid
        origin = (*spec.origin, 0.0)
        vac = res.vacuity()
        prob = np.rint(100.0 * res.probability()).astype(np.int8)
        prob[(vac >= 1.0) | (vac > self.unknown_vacuity)] = -1
        out = []
        for topic, data in ((self.occupancy_topic, prob), (self.uncertainty_topic, np.rint(100.0 * vac).astype(np.int8)),
                            (self.conflict_topic, np.rint(100.0 * np.clip(res.conflict, 0, 1)).astype(np.int8))):
            if topic:
                out.append(Emit(topic, topics.OCCUPANCY_GRID_TYPE,
                                occupancy_grid_msg(data, spec.resolution, origin, stamp, frame_id, b)))
        if self.weights_topic:
            for name, w in res.weights.items():
                out.append(Emit(self.weight_topic(name), topics.FLOAT64_STAMPED,
                                b.new(topics.FLOAT64_STAMPED, header=make_header(b, stamp, frame_id), data=float(w))))
        if self.trust_topic:
            for name, t in res.trusts.items():
                out.append(Emit(f"{self.trust_topic.rstrip('/')}/{name}", topics.FLOAT64_STAMPED,
                                b.new(topics.FLOAT64_STAMPED, header=make_header(b, stamp, frame_id), data=float(t))))
        return out

    # --- diagnostics ------------------------------------------------------------------------------
    def low_weight_reason(self, name: str) -> str | None:
        """Why branch ``name`` is weighted below ``weight_warn`` in the newest fused frame (None when it is
        not): the health gate with the input that limits it, and/or the conflict trust. Shared by
        /diagnostics and the replay report, so both say the same."""
        res = self.last_result
        st = self.branches.get(name)
        if res is None or st is None:
            return None
        w, g, tr = res.weights.get(name), res.gates.get(name), res.trusts.get(name)
        if w is None or w >= self.weight_warn:
            return None
        cs = self.trust.smoothed.get(name)
        reasons = []
        if g is not None and g < 1.0:
            reasons.append(f"health gate {g:.2f} ({st.why or 'no grid'})")
        if tr is not None and tr < 1.0 and cs is not None:
            p = self.trust.params
            reasons.append(f"trust {tr:.2f}: disagrees with the other branches (smoothed conflict "
                           f"{cs:.2f}; trust 1 at <= {p.conflict_ok:g}, floor at >= {p.conflict_bad:g})")
        return "; ".join(reasons) or "low"

    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        """The common statuses plus ``<name>: branches``: per branch weight = gate x trust, and why low."""
        statuses = super().diagnostic_statuses()
        res = self.last_result
        values: dict[str, str] = {"fused_out": str(self.fused_out), "timeouts": str(self.timeouts),
                                  "memory": self.memory_state, "memory_resets": str(self.memory_resets),
                                  "pose_source": self.pose_source,
                                  "pacer": self._pacer()}
        low = []
        for name, st in self.branches.items():
            w = None if res is None else res.weights.get(name)
            g = None if res is None else res.gates.get(name)
            tr = None if res is None else res.trusts.get(name)
            c = None if res is None else res.conflicts.get(name)
            cs = self.trust.smoothed.get(name)
            last = st.history[-1].stamp if st.history else None
            values[f"{name}.weight"] = "-" if w is None else f"{w:.3f}"
            values[f"{name}.gate"] = "-" if g is None else f"{g:.3f}"
            values[f"{name}.trust"] = "-" if tr is None else f"{tr:.3f}"
            values[f"{name}.conflict"] = "-" if c is None else f"{c:.3f}"
            values[f"{name}.conflict_smoothed"] = "-" if cs is None else f"{cs:.3f}"
            values[f"{name}.last_stamp_ns"] = "-" if last is None else str(last)
            values[f"{name}.resampled"] = str(st.resampled)
            values[f"{name}.rejected_geometry"] = str(st.rejected)
            values[f"{name}.unwarped"] = str(st.unwarped)
            for iname, (v, f) in st.factors.items():
                values[f"{name}.health.{iname}"] = ("missing" if v is None else f"{v:.3f}") + f" -> {f:.3f}"
            if st.factors:
                lim, (_, f) = min(st.factors.items(), key=lambda kv: kv[1][1])
                values[f"{name}.gate_limited_by"] = lim if f < 1.0 else "-"
            why_low = self.low_weight_reason(name)
            if why_low is not None:
                low.append(f"{name} weight {w:.2f}: {why_low}")
            values[f"{name}.why"] = st.why or ("-" if w is None else "ok")
        level = WARN if low else OK
        message = "; ".join(low)[:500] if low else ("no fused frame yet" if res is None else
                                                      "all branches weighted >= " + f"{self.weight_warn:g}")
        return statuses + [DiagnosticStatusData(level, f"{self.name}: branches", message, self.base_frame, values)]
