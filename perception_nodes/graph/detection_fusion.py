"""Detection fusion node: 3D detections of N branches -> one fused set with class evidence and covariance.

Branches are data: every entry of ``branches.<name>`` in the params file with ``enabled: true`` is read
from its ``detections_topic`` (``vision_msgs/Detection3DArray`` as the LiDAR branch publishes it: class
ids are names, scores expected probabilities, ``results[].pose.covariance`` the 6 x 6 pose covariance, and
optionally the ``dirichlet_strength`` result, :data:`perception_nodes.codecs.vision.EVIDENCE_STRENGTH_ID`,
from which the class evidence is recovered; without it the branch's ``default_strength`` is assumed). The
rule (association, evidence-weighted merge, covariance, trust, memory) is
:mod:`perception_nodes.evidential.detection_fusion`; ``docs/detection_fusion.md`` explains it.

Per-branch weight = health gate x external weight x trust:

* gate: 0 while the branch has no detections within its ``timeout_s`` of the fused stamp (stale or
  absent); 1 otherwise;
* external weight: the largest of the newest ``weight_hold`` values on the branch's ``weight_topic``
  (``perception_interfaces/Float64Stamped``, default the occupancy fusion node's weight of the LiDAR
  learned branch), clipped to [0, 1]; ``weight_missing`` while none arrived within ``weight_timeout_s``
  (node clock);
* trust: falls while the branch's boxes keep disagreeing with the other branches' (unmatched score mass),
  recovers when they agree (:class:`~perception_nodes.evidential.detection_fusion.DetectionTrust`).

Pacing (as the occupancy fusion node): one fused set per detection message of the pace branch
(``pace_branch``; while it is stale, the first live branch in the file's order). A fused frame for stamp
``T`` waits until every other live, synchronous branch (one of its recent messages stamped within
``match_tolerance_s`` of a recent pace stamp) has detections stamped at or after ``T - match_tolerance_s``,
or until ``max_wait_s`` (node clock) has passed; each branch contributes the message of its short history
closest to ``T``, moved by the ego motion (``odometry_topic``) when the stamps differ by more than
``match_tolerance_s``.

Outputs (``base_frame``): ``detections_topic`` (``vision_msgs/Detection3DArray``, same conventions as the
LiDAR branch, with the fused ``dirichlet_strength``), ``objects_topic`` (``perception_interfaces/
Detection3DArray``, what ``perception-stack evaluate`` scores when it is ``/perception/objects``),
``markers_topic`` (MarkerArray); ``/diagnostics`` status ``<node>: branches`` with each branch's weight,
gate, trust, conflict and why it is low, and ``<node>: boxes`` with what was dropped or repaired.

Bad input never stops the node: a box with a non-finite centre, size or orientation, or a non-positive
size, is dropped and counted (``boxes_dropped.<reason>``); a covariance that is zero, non-finite or not
positive definite on (x, y, z, yaw) is replaced by ``default_sigma_*`` and counted; a hypothesis whose
class id is not in ``classes`` is ignored and counted, a box with no known class dropped; an empty array
is valid ("this branch sees nothing"); a pace message stamped before the last fused frame (a looping bag,
a rewound clock) resets history, poses and memory with a warning. Stages timed: ``decode`` (per message,
outside the frame), ``associate``, ``merge``, ``encode``.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.detections import DETECTIONS_TYPE, detections_msg
from perception_nodes.codecs.outputs import DiagnosticStatusData, marker_array_msg
from perception_nodes.codecs.vision import EVIDENCE_STRENGTH_ID, VISION_DETECTIONS_TYPE, vision_detections_msg
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.errors import MalformedMessageError
from perception_nodes.evidential.detection_fusion import (
    _STATE_IDX,
    AssociationParams,
    DetectionMemory,
    DetectionTrust,
    EvidentialBox,
    associate,
    evidence_from_probabilities,
    merge_clusters,
    wrap_angle,
)
from perception_nodes.evidential.fusion import TrustParams, relative_motion
from perception_nodes.graph.fusion import PoseBuffer, _yaw
from perception_nodes.graph.node import OK, WARN, Emit, NodeCore, Port

DETECTIONS = "/perception/fusion/detections"
OBJECTS = "/perception/fusion/objects"
MARKERS = "/perception/fusion/detections/markers"
MEMORY = "memory"
_HISTORY = 4


@dataclass(frozen=True)
class DetectionBranchConfig:
    """One ``branches.<name>`` entry of the params file (documented there)."""

    name: str
    detections_topic: str
    enabled: bool = True
    timeout_s: float = 0.5
    weight_topic: str = ""
    weight_missing: float = 1.0
    weight_timeout_s: float = 1.0
    weight_hold: int = 2
    default_strength: float = 10.0

    @classmethod
    def from_params(cls, name: str, values: dict[str, Any]) -> DetectionBranchConfig:
        return to_dataclass(cls, {"name": name, **values}, f"branches.{name}.")


@dataclass(frozen=True)
class DetectionTrustConfig:
    """``trust.*`` of the params file."""

    conflict_ok: float = 0.2
    conflict_bad: float = 0.5
    smoothing: float = 0.3
    floor: float = 0.05
    min_boxes: int = 2

    def to_trust(self) -> DetectionTrust:
        return DetectionTrust(TrustParams(self.conflict_ok, self.conflict_bad, self.smoothing, self.floor,
                                          min_evidence=0.0, min_cells=1), self.min_boxes)


@dataclass(frozen=True)
class MemoryConfig:
    """``memory.*`` of the params file."""

    decay_per_s: float = 0.3
    process_noise_m2_per_s: float = 4.0
    yaw_noise_rad2_per_s: float = 0.1
    max_age_s: float = 0.5
    class_evidence: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay_per_s < 1.0:
            raise ValueError(f"decay_per_s must lie in [0, 1), got {self.decay_per_s}")
        if self.process_noise_m2_per_s < 0 or self.yaw_noise_rad2_per_s < 0 or self.max_age_s <= 0:
            raise ValueError("process_noise_m2_per_s >= 0, yaw_noise_rad2_per_s >= 0 and max_age_s > 0 needed")


@dataclass
class _Frame:
    stamp: int
    boxes: list[EvidentialBox]


@dataclass
class _BranchState:
    cfg: DetectionBranchConfig
    history: deque[_Frame] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    weight_in: tuple[int, float] | None = None  # (node clock at arrival, value) of the newest weight
    weight_recent: list[float] = field(default_factory=list)  # the newest weight_hold values
    why: str = ""
    unmoved: int = 0
    gate: float | None = None
    factor: float | None = None
    weight: float | None = None
    conflict: float | None = None


class DetectionFusionNode(NodeCore):
    """See module doc."""

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.detections_topic = params.get("detections_topic", DETECTIONS)
        self.objects_topic = params.get("objects_topic", OBJECTS)
        self.markers_topic = params.get("markers_topic", MARKERS)
        self.odometry_topic = params.get("odometry_topic", topics.GT_ODOMETRY)
        classes = params.get("classes", ["car", "pedestrian", "cyclist"])
        if not classes or len(set(classes)) != len(classes) or EVIDENCE_STRENGTH_ID in classes:
            raise ConfigError(f"{name}.classes must be distinct class names (not {EVIDENCE_STRENGTH_ID})")
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        branches = params.get("branches") or {}
        if not isinstance(branches, dict):
            raise ConfigError(f"{name}.branches must be a map of branch name -> settings")
        self.branches: dict[str, _BranchState] = {}
        self._topic_branch: dict[str, tuple[str, str]] = {}  # topic -> (branch, "det" | "weight")
        for bname, values in branches.items():
            if bname == MEMORY:
                raise ConfigError(f"{name}.branches: {MEMORY!r} is reserved for the node's memory")
            cfg = DetectionBranchConfig.from_params(bname, dict(values or {}))
            if not cfg.enabled:
                continue
            if not cfg.detections_topic:
                raise ConfigError(f"{name}.branches.{bname}.detections_topic is needed")
            self.branches[bname] = _BranchState(cfg)
            for topic, role in ((cfg.detections_topic, "det"), (cfg.weight_topic, "weight")):
                if not topic:
                    continue
                if topic in self._topic_branch:
                    raise ConfigError(f"{name}: topic {topic} used twice (branches {self._topic_branch[topic][0]} "
                                      f"and {bname})")
                self._topic_branch[topic] = (bname, role)
        for attr, value in self._derived(params).items():
            setattr(self, attr, value)
        self.trust = self.trust_config.to_trust()
        self.memory = DetectionMemory(self.memory_config.decay_per_s, self.memory_config.process_noise_m2_per_s,
                                      self.memory_config.max_age_s, self.memory_config.yaw_noise_rad2_per_s)
        self.memory_state = "off" if self.memory.decay_per_s <= 0 else "empty"
        self.poses = PoseBuffer(self.odometry_max_gap_s)
        self._pending: list[tuple[int, int]] = []  # (stamp, node-clock deadline)
        self._last_fused = -1
        self._pace_stamps: deque[tuple[str, int]] = deque(maxlen=8)  # (pacer, stamp)
        self.fused_out = 0
        self.boxes_in = 0
        self.boxes_out = 0
        self.timeouts = 0
        self.time_jumps = 0
        self.boxes_dropped: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()  # covariance_replaced, strength_default, unknown_class_hypotheses
        self.last_boxes: list[Box3D] = []

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super()._derived(params)
        out["association"] = to_dataclass(AssociationParams, params.get("association", {}), f"{self.name}.association.")
        out["trust_config"] = to_dataclass(DetectionTrustConfig, params.get("trust", {}), f"{self.name}.trust.")
        out["trust_config"].to_trust()  # validates
        out["memory_config"] = to_dataclass(MemoryConfig, params.get("memory", {}), f"{self.name}.memory.")
        rule = str(params.get("box_rule", "information"))
        if rule not in ("information", "covariance_intersection"):
            raise ConfigError(f"{self.name}.box_rule must be information or covariance_intersection, got {rule!r}")
        out["box_rule"] = rule
        out["pace_branch"] = str(params.get("pace_branch", ""))
        out["max_wait_ns"] = int(float(params.get("max_wait_s", 0.1)) * 1e9)
        out["match_tolerance_ns"] = int(float(params.get("match_tolerance_s", 0.05)) * 1e9)
        out["odometry_max_gap_s"] = float(params.get("odometry_max_gap_s", 0.5))
        out["score_threshold"] = float(params.get("score_threshold", 0.0))
        out["max_detections"] = int(params.get("max_detections", 200))
        out["weight_warn"] = float(params.get("weight_warn", 0.5))
        out["marker_lifetime_s"] = float(params.get("marker_lifetime_s", 0.2))
        sig = [float(params.get(k, d)) for k, d in (("default_sigma_xy_m", 1.0), ("default_sigma_z_m", 0.5),
                                                     ("default_sigma_yaw_rad", 0.5))]
        if min(sig) <= 0:
            raise ConfigError(f"{self.name}.default_sigma_* must be > 0")
        unest = float(params.get("unestimated_variance", 1e6))
        cov = np.diag([sig[0] ** 2, sig[0] ** 2, sig[1] ** 2, unest, unest, sig[2] ** 2])
        out["default_covariance"] = cov
        if hasattr(self, "trust"):  # reconfigure: keep state, take the new parameters
            self.trust.params = out["trust_config"].to_trust().params
            self.trust._trust.params = self.trust.params
            self.trust.min_boxes = out["trust_config"].min_boxes
            self.memory.decay_per_s = out["memory_config"].decay_per_s
            self.memory.process_noise_m2_per_s = out["memory_config"].process_noise_m2_per_s
            self.memory.max_age_s = out["memory_config"].max_age_s
            self.memory.yaw_noise_rad2_per_s = out["memory_config"].yaw_noise_rad2_per_s
            self.poses.max_gap_ns = int(out["odometry_max_gap_s"] * 1e9)
        return out

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        ports = super().inputs()
        for topic, (_, role) in self._topic_branch.items():
            ports.append(Port(topic, VISION_DETECTIONS_TYPE if role == "det" else topics.FLOAT64_STAMPED,
                              "reliable"))
        if self.odometry_topic:
            ports.append(Port(self.odometry_topic, topics.ODOMETRY_TYPE, "reliable"))
        return ports

    def outputs(self) -> list[Port]:
        out = super().outputs() + [Port(self.detections_topic, VISION_DETECTIONS_TYPE, "reliable")]
        if self.objects_topic:
            out.append(Port(self.objects_topic, DETECTIONS_TYPE, "reliable"))
        if self.markers_topic:
            out.append(Port(self.markers_topic, topics.MARKER_ARRAY, "reliable"))
        return out

    # --- messages -------------------------------------------------------------------------------
    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        if topic == self.odometry_topic and topic not in self._topic_branch:
            p, q = msg.pose.pose.position, msg.pose.pose.orientation
            vals = (float(p.x), float(p.y), _yaw(q))
            if not all(math.isfinite(v) for v in vals):
                raise MalformedMessageError(topics.ODOMETRY_TYPE, "non-finite pose")
            self.poses.add(stamp_to_ns(msg.header.stamp), *vals)
            self.mark_used(topic)
            return self._flush()
        bname, role = self._topic_branch[topic]
        st = self.branches[bname]
        if role == "weight":
            v = float(msg.data)
            if not math.isfinite(v):
                raise MalformedMessageError(topics.FLOAT64_STAMPED, f"branch {bname}: non-finite weight {v}")
            v = min(1.0, max(0.0, v))
            # the factor is the largest of the newest weight_hold values: the occupancy fusion gives a branch
            # weight 0 in a frame it has no grid for yet (its first frame, the first after a reset), which
            # is a missing grid, not a failed branch; a weight that stays low acts after weight_hold frames
            st.weight_recent = (st.weight_recent + [v])[-max(1, st.cfg.weight_hold):]
            st.weight_in = (self.clock(), max(st.weight_recent))
            self.mark_used(topic)
            return []
        stamp = stamp_to_ns(msg.header.stamp)
        t0 = time.perf_counter_ns()
        boxes = self.read_boxes(bname, msg)
        self.latency.record("decode", (time.perf_counter_ns() - t0) / 1e6)
        self.mark_used(topic)
        if st.history and stamp < st.history[-1].stamp - 10 * 1_000_000_000:
            st.history.clear()  # this branch's time went back far: its old frames belong to another timeline
        st.history.append(_Frame(stamp, boxes))
        pacer = self._pacer()
        if bname == pacer:
            self._pace_stamps.append((bname, stamp))
            if self._last_fused >= 0 and stamp < self._last_fused - self.match_tolerance_ns:
                self._time_jump(st, stamp)
            if stamp > self._last_fused and all(p[0] != stamp for p in self._pending):
                self._pending.append((stamp, self.clock() + self.max_wait_ns))
                self._pending.sort()
        return self._flush()

    def _time_jump(self, pace: _BranchState, stamp: int) -> None:
        """Time went back (looping bag, rewound /clock): start over, keep what was learned about trust."""
        self.time_jumps += 1
        self._warn("time_jump", f"{pace.cfg.name} detections stamped {stamp} ns, before the last fused frame "
                                f"{self._last_fused} ns: time went back; history, poses and memory reset")
        keep = pace.history[-1]
        for st in self.branches.values():
            st.history.clear()
        pace.history.append(keep)
        self._pending.clear()
        self._pace_stamps.clear()
        self._pace_stamps.append((pace.cfg.name, stamp))
        self._last_fused = -1
        self.poses = PoseBuffer(self.odometry_max_gap_s)
        self.memory.reset()

    def read_boxes(self, branch: str, msg: Any) -> list[EvidentialBox]:
        """The message's detections as evidential boxes in ``base_frame``; bad boxes dropped and counted,
        bad covariances and missing strengths repaired and counted (module doc)."""
        cfg = self.branches[branch].cfg
        frame = str(msg.header.frame_id).lstrip("/")
        to_base = None
        if frame and frame != self.base_frame:
            to_base = self.sensor_to_base(frame)  # CalibrationError: the message is dropped, counted
        k = len(self.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        out = []
        for d in msg.detections:
            self.boxes_in += 1
            c, q, sz = d.bbox.center.position, d.bbox.center.orientation, d.bbox.size
            centre = np.array([c.x, c.y, c.z], np.float64)
            size = np.array([sz.x, sz.y, sz.z], np.float64)
            quat = np.array([q.x, q.y, q.z, q.w], np.float64)
            if not (np.isfinite(centre).all() and np.isfinite(size).all() and np.isfinite(quat).all()):
                self._drop_box(branch, "nonfinite", "a box with a non-finite centre, size or orientation")
                continue
            if (size <= 0).any() or float(quat @ quat) < 1e-12:
                self._drop_box(branch, "degenerate", "a box with a non-positive size or a zero quaternion")
                continue
            yaw = _yaw(q)
            probs = np.zeros(k)
            strength = None
            known = False
            cov_raw = None
            for r in d.results:
                cid = str(r.hypothesis.class_id)
                score = float(r.hypothesis.score)
                if cid == EVIDENCE_STRENGTH_ID:
                    strength = score
                    continue
                if cov_raw is None:
                    cov_raw = np.asarray(r.pose.covariance, np.float64)
                if cid not in index:
                    self.repaired["unknown_class_hypotheses"] += 1
                    self._warn("unknown_class", f"branch {branch}: class id {cid!r} is not one of "
                                                f"{', '.join(self.classes)} (classes): hypothesis ignored")
                    continue
                if not math.isfinite(score):
                    continue
                probs[index[cid]] = max(probs[index[cid]], score)
                known = True
            if not known:
                self._drop_box(branch, "unknown_class", f"a box with no hypothesis of a known class ({', '.join(self.classes)})")
                continue
            if strength is None or not math.isfinite(strength) or strength <= 0:
                self.repaired["strength_default"] += 1
                strength = cfg.default_strength
            cov = self._covariance(branch, cov_raw)
            if to_base is not None:
                rot = to_base[:3, :3]
                centre = rot @ centre + to_base[:3, 3]
                r6 = np.eye(6)
                r6[:3, :3] = rot
                cov = r6 @ cov @ r6.T
                yaw = float(wrap_angle(yaw + math.atan2(rot[1, 0], rot[0, 0])))
            out.append(EvidentialBox(centre, size, yaw, cov, evidence_from_probabilities(probs, strength), branch))
        return out

    def _covariance(self, branch: str, raw: np.ndarray | None) -> np.ndarray:
        ok = raw is not None and raw.shape == (36,) and np.isfinite(raw).all()
        if ok:
            cov = raw.reshape(6, 6)
            cov = 0.5 * (cov + cov.T)
            block = cov[_STATE_IDX]
            try:
                ok = bool(np.linalg.eigvalsh(block).min() > 0)
            except np.linalg.LinAlgError:
                ok = False
            if ok:
                return cov
        self.repaired["covariance_replaced"] += 1
        self._warn("covariance", f"branch {branch}: a covariance that is missing, zero, non-finite or not positive "
                                 "definite on (x, y, z, yaw) was replaced by default_sigma_*")
        return self.default_covariance.copy()

    def _drop_box(self, branch: str, reason: str, text: str) -> None:
        self.boxes_dropped[reason] += 1
        self._warn(f"box_{reason}", f"branch {branch}: {text} was dropped ({self.boxes_dropped[reason]} so far)")

    # --- pacing ---------------------------------------------------------------------------------
    def _alive(self, st: _BranchState) -> bool:
        if not st.history:
            return False
        if st.cfg.timeout_s <= 0:
            return True
        newest = max(b.history[-1].stamp for b in self.branches.values() if b.history)
        return newest - st.history[-1].stamp <= int(st.cfg.timeout_s * 1e9)

    def _synchronous(self, st: _BranchState) -> bool:
        """One of the branch's recent messages is stamped within ``match_tolerance_s`` of a recent pace
        stamp: it runs on the pace branch's frames and a fused frame waits for it. An asynchronous branch
        (a camera at its own stamps) is not waited for: its newest detections are moved to the stamp."""
        return any(abs(f.stamp - p) <= self.match_tolerance_ns for f in st.history for b, p in self._pace_stamps
                   if b != st.cfg.name)

    def _pacer(self) -> str:
        if self.pace_branch in self.branches and self._alive(self.branches[self.pace_branch]):
            return self.pace_branch
        for name, st in self.branches.items():
            if self._alive(st):
                return name
        return self.pace_branch if self.pace_branch in self.branches else next(iter(self.branches), "")

    def on_tick(self) -> list[Emit]:
        return self._flush()

    def _flush(self) -> list[Emit]:
        out: list[Emit] = []
        now = self.clock()
        pacer = self._pacer()
        while self._pending:
            stamp, deadline = self._pending[0]
            complete = all(name == pacer or not self._alive(st) or not self._synchronous(st)
                           or st.history[-1].stamp >= stamp - self.match_tolerance_ns
                           for name, st in self.branches.items())
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
        return out

    # --- fusion ---------------------------------------------------------------------------------
    def _motion(self, src: int, dst: int) -> np.ndarray | None:
        if src == dst or not self.odometry_topic:
            return np.eye(3)
        a, b = self.poses.at(src), self.poses.at(dst)
        if a is None or b is None:
            return None
        return relative_motion(a, b)

    def _moved(self, boxes: list[EvidentialBox], m: np.ndarray) -> list[EvidentialBox]:
        rot = m[:2, :2]
        dyaw = math.atan2(m[1, 0], m[0, 0])
        out = []
        for b in boxes:
            c = np.array(b.center)
            c[:2] = rot @ c[:2] + m[:2, 2]
            r6 = np.eye(6)
            r6[:2, :2] = rot
            out.append(EvidentialBox(c, b.size, float(wrap_angle(b.yaw + dyaw)), r6 @ b.covariance @ r6.T,
                                     b.evidence, b.branch))
        return out

    def _fuse(self, stamp: int) -> list[Emit]:
        now = self.clock()
        with self.latency.frame(stamp) as frame:
            with self.latency.stage("associate"):
                sources: dict[str, list[EvidentialBox]] = {}
                pre: dict[str, float] = {}
                for name, st in self.branches.items():
                    fr = min(st.history, key=lambda f: abs(f.stamp - stamp)) if st.history else None
                    age = None if fr is None else abs(stamp - fr.stamp) / 1e9
                    if fr is None:
                        st.gate, st.why = 0.0, "no detections yet"
                    elif st.cfg.timeout_s > 0 and age > st.cfg.timeout_s:
                        st.gate, st.why = 0.0, f"stale: detections {age:.2f} s from the fused stamp > timeout {st.cfg.timeout_s:g} s"
                    else:
                        st.gate, st.why = 1.0, ""
                    w_in = st.weight_in
                    fresh = (st.cfg.weight_topic and w_in is not None
                             and now - w_in[0] <= st.cfg.weight_timeout_s * 1e9)
                    st.factor = w_in[1] if fresh else (st.cfg.weight_missing if st.cfg.weight_topic else 1.0)
                    if st.cfg.weight_topic and st.factor < 1.0:
                        st.why = "; ".join(x for x in (st.why, f"{'weight topic' if fresh else 'weight missing'} "
                                                                f"{st.factor:.2f}") if x)
                    pre[name] = st.gate * st.factor
                    if fr is None or pre[name] <= 0:
                        continue
                    boxes = fr.boxes
                    if abs(fr.stamp - stamp) > self.match_tolerance_ns:
                        m = self._motion(fr.stamp, stamp)
                        if m is None:
                            st.unmoved += 1
                        else:
                            boxes = self._moved(boxes, m)
                    sources[name] = boxes
                pose = self.poses.at(stamp) if self.odometry_topic else np.eye(3)
                motion = None
                if self.memory.stamp_ns is not None:
                    motion = self._motion(self.memory.stamp_ns, stamp) if pose is not None else None
                prior, w_mem, self.memory_state = self.memory.prior(stamp, motion)
                with_memory = {**sources, MEMORY: prior} if prior and w_mem > 0 else sources
                # one association; the memory joins as one more source (it only confirms, module doc) and
                # takes no part in the branches' conflicts
                clusters = associate(with_memory, self.association)
                conflicts = self.trust.conflicts(clusters, list(sources))
                self.trust.update(conflicts)
                weights: dict[str, float] = {}
                for name, st in self.branches.items():
                    st.conflict = conflicts.get(name)
                    st.weight = pre[name] * self.trust.trust(name)
                    weights[name] = st.weight
                if with_memory is not sources:
                    weights[MEMORY] = w_mem
            with self.latency.stage("merge"):
                fused = merge_clusters(clusters, weights, self.box_rule, confirm_only=(MEMORY,),
                                       geometry_only=() if self.memory_config.class_evidence else (MEMORY,))
                fused = [f for f in fused if f.box.score > self.score_threshold]
                fused.sort(key=lambda f: -f.box.score)
                fused = fused[: self.max_detections]
                self.memory.store(stamp, [f.box for f in fused])
            with self.latency.stage("encode"):
                emits = self._encode(stamp, [f.box for f in fused])
        self._last_fused = stamp
        self.fused_out += 1
        self.frames_out += 1
        self.boxes_out += len(fused)
        return emits + self.debug_emits(frame)

    def _encode(self, stamp: int, boxes: list[EvidentialBox]) -> list[Emit]:
        b, frame_id = self.backend, self.base_frame
        arrays = _Arrays(self.classes, boxes)
        out = [Emit(self.detections_topic, VISION_DETECTIONS_TYPE,
                    vision_detections_msg(arrays, stamp, frame_id, b, strength=arrays.strength))]
        box3d = [Box3D(label=self.classes[x.label], center=tuple(float(v) for v in x.center),
                       size=tuple(float(v) for v in x.size), yaw=float(x.yaw), score=x.score,
                       covariance=tuple(float(v) for v in np.asarray(x.covariance).reshape(36)))
                 for x in boxes]
        self.last_boxes = box3d
        if self.objects_topic:
            out.append(Emit(self.objects_topic, DETECTIONS_TYPE, detections_msg(box3d, stamp, frame_id, b)))
        if self.markers_topic:
            out.append(Emit(self.markers_topic, topics.MARKER_ARRAY,
                            marker_array_msg(box3d, stamp, frame_id, "fused_detections", b,
                                             lifetime_s=self.marker_lifetime_s)))
        return out

    # --- diagnostics ------------------------------------------------------------------------------
    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        """The common statuses plus ``<name>: branches`` (weights and why low) and ``<name>: boxes``."""
        statuses = super().diagnostic_statuses()
        values: dict[str, str] = {"fused_out": str(self.fused_out), "timeouts": str(self.timeouts),
                                  "time_jumps": str(self.time_jumps), "memory": self.memory_state,
                                  "pacer": self._pacer(), "box_rule": self.box_rule}
        low = []
        for name, st in self.branches.items():
            cs = self.trust.smoothed.get(name)
            values[f"{name}.weight"] = "-" if st.weight is None else f"{st.weight:.3f}"
            values[f"{name}.gate"] = "-" if st.gate is None else f"{st.gate:.3f}"
            values[f"{name}.external_weight"] = "-" if st.factor is None else f"{st.factor:.3f}"
            values[f"{name}.trust"] = f"{self.trust.trust(name):.3f}"
            values[f"{name}.conflict"] = "-" if st.conflict is None else f"{st.conflict:.3f}"
            values[f"{name}.conflict_smoothed"] = "-" if cs is None else f"{cs:.3f}"
            values[f"{name}.last_stamp_ns"] = str(st.history[-1].stamp) if st.history else "-"
            values[f"{name}.unmoved"] = str(st.unmoved)
            values[f"{name}.why"] = st.why or ("-" if st.weight is None else "ok")
            if st.weight is not None and st.weight < self.weight_warn:
                reasons = [st.why] if st.why else []
                tr = self.trust.trust(name)
                if tr < 1.0 and cs is not None:
                    reasons.append(f"trust {tr:.2f}: its boxes disagree with the other branches' (smoothed "
                                   f"conflict {cs:.2f})")
                low.append(f"{name} weight {st.weight:.2f}: " + ("; ".join(reasons) or "low"))
        level = WARN if low else OK
        message = "; ".join(low)[:500] if low else ("no fused frame yet" if not self.fused_out else
                                                      f"all branches weighted >= {self.weight_warn:g}")
        box_values = {"boxes_in": str(self.boxes_in), "boxes_out": str(self.boxes_out)}
        box_values.update({f"boxes_dropped.{k}": str(v) for k, v in sorted(self.boxes_dropped.items())})
        box_values.update({k: str(v) for k, v in sorted(self.repaired.items())})
        dropped = sum(self.boxes_dropped.values())
        box_msg = (f"{dropped} of {self.boxes_in} input boxes dropped, {self.repaired['covariance_replaced']} "
                   "covariances replaced" if dropped or self.repaired["covariance_replaced"] else "ok")
        return statuses + [
            DiagnosticStatusData(level, f"{self.name}: branches", message, self.base_frame, values),
            DiagnosticStatusData(WARN if dropped else OK, f"{self.name}: boxes", box_msg, self.base_frame, box_values),
        ]


class _Arrays:
    """Fused boxes in the array form :func:`~perception_nodes.codecs.vision.vision_detections_msg` reads."""

    def __init__(self, classes: tuple[str, ...], boxes: list[EvidentialBox]) -> None:
        n, k = len(boxes), len(classes)
        self.class_names = classes
        self.center = np.array([b.center for b in boxes], np.float64).reshape(n, 3)
        self.size = np.array([b.size for b in boxes], np.float64).reshape(n, 3)
        self.yaw = np.array([b.yaw for b in boxes], np.float64)
        self.label = np.array([b.label for b in boxes], np.int64)
        self.class_probabilities = np.array([b.probabilities for b in boxes], np.float64).reshape(n, k + 1)
        self.score = self.class_probabilities[np.arange(n), self.label] if n else np.zeros(0)
        self.covariance = np.array([b.covariance for b in boxes], np.float64).reshape(n, 6, 6)
        self.strength = np.array([b.strength for b in boxes], np.float64)

    def __len__(self) -> int:
        return len(self.center)
