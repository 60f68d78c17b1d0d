"""Control node: fused NIG curvature -> a driving command with its uncertainty, and a conservative fallback.

Inputs: every ``perception_interfaces/CurvaturePrediction`` topic in ``curvature_topics`` (one per sensor
branch; today ``/perception/lidar/curvature``), ``odometry_topic`` (``nav_msgs/Odometry``, for the distance
driven; "" = dead reckoning at the commanded speed) and, optionally, the raw scan ``health_points_topic``
(point count and azimuth coverage: :mod:`perception_nodes.control.health`).

Per curvature message (newer than the last command): the prediction joins the sensor's history; the
held predictions of every sensor are shifted by the distance driven, discounted by age and pooled at
``lookahead_m`` (:mod:`perception_nodes.control.evidence`, rule in :mod:`perception_nodes.evidential.nig_fusion`);
the fallback state machine (:mod:`perception_nodes.control.fallback`) decides between the fused curvature
and a conservative command; the command law (:mod:`perception_nodes.control.law`) makes it a command.
While the curvature input is more than ``fallback.input_timeout_s`` behind (in data time: the newest
odometry/scan stamp minus the newest curvature stamp; on the node clock when nothing else arrives), the
timer publishes fallback commands every ``stale_command_period_s``.

Outputs: ``command_topic`` as ``ackermann_msgs/AckermannDriveStamped`` (``command_type: ackermann``) or
``geometry_msgs/TwistStamped`` (``twist``); ``uncertainty_topic`` as ``perception_interfaces/ControlUncertainty``
(same stamp); ``/diagnostics`` status ``<node>: command``: OK nominal, WARN while holding the last safe
curvature, ERROR once the fallback reached its final action (straight or stop), with the reason.

Bad input (arrays of different lengths, empty arrays, non-increasing or non-finite horizons) is malformed;
non-finite or non-positive values at some horizons make those horizons carry no evidence (counted, warned);
a curvature stamp more than ``time_jump_s`` before the last command is a time jump (history and odometry
reset, warned). Stages timed: ``decode``, ``fuse``, ``command``, ``encode``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.codecs.backend import make_header, stamp_to_ns
from perception_nodes.codecs.outputs import DiagnosticStatusData
from perception_nodes.codecs.pointcloud2 import read_xyzi
from perception_nodes.codecs.vision import CURVATURE_TYPE
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.control.evidence import Odometer, Prediction, PredictionHistory
from perception_nodes.control.fallback import FINAL, HOLD, FallbackParams, FallbackStateMachine, restart_clock
from perception_nodes.control.health import CloudHealth, CloudHealthMonitor, CloudHealthParams
from perception_nodes.control.law import CommandParams, command_for
from perception_nodes.errors import MalformedMessageError
from perception_nodes.evidential import nig_fusion as nf
from perception_nodes.graph.node import ERROR, OK, WARN, Emit, NodeCore, Port

COMMAND = "/control/command"
UNCERTAINTY = "/control/command/uncertainty"
ACKERMANN_TYPE = "ackermann_msgs/msg/AckermannDriveStamped"
TWIST_TYPE = "geometry_msgs/msg/TwistStamped"
UNCERTAINTY_TYPE = "perception_interfaces/msg/ControlUncertainty"
LIDAR_CURVATURE = "/perception/lidar/curvature"


class ControlNode(NodeCore):
    """See module doc."""

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        cts = params.get("curvature_topics", [LIDAR_CURVATURE])
        if isinstance(cts, str):
            cts = [cts]
        self.curvature_topics = [str(t) for t in cts if str(t)]
        if not self.curvature_topics:
            raise ConfigError(f"{name}.curvature_topics must name at least one CurvaturePrediction topic")
        self.odometry_topic = str(params.get("odometry_topic", topics.GT_ODOMETRY) or "")
        self.health_points_topic = str(params.get("health_points_topic", "") or "")
        self.command_topic = str(params.get("command_topic", COMMAND))
        self.uncertainty_topic = str(params.get("uncertainty_topic", UNCERTAINTY) or "")
        for attr, value in self._derived(params).items():
            setattr(self, attr, value)
        self.odometer = Odometer(self.odometry_max_gap_s)
        self.fsm = FallbackStateMachine(self.fallback_params)
        self.health = CloudHealthMonitor(self.health_params)
        self._scan_health: dict[int, CloudHealth] = {}
        self._last_arrival: int | None = None  # node clock of the newest curvature message
        self._last_input_stamp: int | None = None
        self._newest_data_stamp: int | None = None  # newest stamp of the other inputs (odometry, scan)
        self._last_command_stamp = -1
        self._last_command_clock: int | None = None
        self._topic_newest: dict[str, int] = {}  # newest curvature stamp per topic (a topic's stamps only go forward)
        self._input_ended = False  # replay: no more input will come (no stale-input fallback for that)
        self.commands_out = 0
        self.fallback_frames = 0
        self.nonfinite_entries = 0
        self.dead_reckoned = 0
        self.last: dict[str, Any] = {}

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super()._derived(params)
        ctype = str(params.get("command_type", "ackermann"))
        if ctype not in ("ackermann", "twist"):
            raise ConfigError(f"{self.name}.command_type must be ackermann or twist, got {ctype!r}")
        out["command_type"] = ctype
        metric = str(params.get("uncertainty_metric", "std"))
        if metric not in ("std", "interval_width"):
            raise ConfigError(f"{self.name}.uncertainty_metric must be std or interval_width, got {metric!r}")
        out["uncertainty_metric"] = metric
        level = float(params.get("interval_level", 0.9))
        if not 0.0 < level < 1.0:
            raise ConfigError(f"{self.name}.interval_level must be in (0, 1), got {level}")
        out["interval_level"] = level
        alpha = float(params.get("input_alpha", 3.0))
        if not alpha > 1.0:
            raise ConfigError(f"{self.name}.input_alpha must be > 1, got {alpha}")
        out["input_alpha"] = alpha
        out["prior_alpha"] = float(params.get("prior_alpha", nf.DEFAULT_PRIOR_ALPHA))
        out["lookahead_m"] = float(params.get("lookahead_m", 1.0))
        out["command_params"] = to_dataclass(CommandParams, params.get("vehicle", {}), f"{self.name}.vehicle.")
        out["fallback_params"] = to_dataclass(FallbackParams, params.get("fallback", {}), f"{self.name}.fallback.")
        out["health_params"] = to_dataclass(CloudHealthParams, params.get("health", {}), f"{self.name}.health.")
        out["odometry_max_gap_s"] = float(params.get("odometry_max_gap_s", 0.5))
        out["max_input_latency_s"] = float(params.get("max_input_latency_s", 1.0))
        out["stale_command_period_s"] = float(params.get("stale_command_period_s", 0.1))
        out["time_jump_s"] = float(params.get("time_jump_s", 1.0))
        out["health_timeout_s"] = float(params.get("health_timeout_s", 0.5))
        out["history"] = PredictionHistory(float(params.get("history_s", 1.0)), int(params.get("max_frames", 10)),
                                           float(params.get("decay_per_s", 0.3)), out["prior_alpha"])
        if hasattr(self, "fsm"):  # reconfigure: keep state, take the new parameters
            self.fsm.params = out["fallback_params"]
            self.health.params = out["health_params"]
            out["history"].by_sensor = self.history.by_sensor
        return out

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        ports = super().inputs()
        ports += [Port(t, CURVATURE_TYPE, "reliable") for t in self.curvature_topics]
        if self.odometry_topic:
            ports.append(Port(self.odometry_topic, topics.ODOMETRY_TYPE, "reliable"))
        if self.health_points_topic:
            ports.append(Port(self.health_points_topic, topics.POINTCLOUD2, "sensor"))
        return ports

    def outputs(self) -> list[Port]:
        out = super().outputs()
        out.append(Port(self.command_topic, ACKERMANN_TYPE if self.command_type == "ackermann" else TWIST_TYPE,
                        "reliable"))
        if self.uncertainty_topic:
            out.append(Port(self.uncertainty_topic, UNCERTAINTY_TYPE, "reliable"))
        return out

    # --- messages -------------------------------------------------------------------------------
    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        if topic == self.odometry_topic:
            p = msg.pose.pose.position
            stamp = stamp_to_ns(msg.header.stamp)
            if self.odometer.stamps and stamp < self.odometer.stamps[-1] - int(self.time_jump_s * 1e9):
                self.odometer.reset()  # time went back: a new timeline
            if not self.odometer.add(stamp, float(p.x), float(p.y)):
                self.mark_dropped(topic, "out_of_order")
                return []
            self._data_stamp(stamp)
            self.mark_used(topic)
            return []
        if topic == self.health_points_topic:
            return self._on_scan(topic, msg)
        return self._on_curvature(topic, msg)

    def _on_scan(self, topic: str, msg: Any) -> list[Emit]:
        t0 = time.perf_counter_ns()
        # finite points within the range gate; a cloud mostly beyond it is implausible (dropped, counted) as in
        # every node that reads the scan; the points themselves are counted by the nodes that use them
        pts = self.sanitize(topic, read_xyzi(msg), count_points=False)
        h = self.health.assess(pts)
        stamp = stamp_to_ns(msg.header.stamp)
        self._data_stamp(stamp)
        self._scan_health[stamp] = h
        for old in sorted(self._scan_health)[:-20]:
            del self._scan_health[old]
        self.latency.record("health", (time.perf_counter_ns() - t0) / 1e6)
        self.mark_used(topic)
        return []

    def _decode(self, topic: str, msg: Any) -> Prediction:
        arrays = {}
        for f in ("horizon_m", "curvature", "variance", "aleatoric_variance", "epistemic_variance"):
            arrays[f] = np.asarray(getattr(msg, f), dtype=np.float64).reshape(-1)
        n = {f: a.size for f, a in arrays.items()}
        if len(set(n.values())) != 1:
            raise MalformedMessageError(CURVATURE_TYPE, f"arrays of different lengths {n}")
        h = arrays["horizon_m"]
        if h.size == 0:
            raise MalformedMessageError(CURVATURE_TYPE, "empty arrays (no horizon)")
        if not np.all(np.isfinite(h)) or (h.size > 1 and not np.all(np.diff(h) > 0)):
            raise MalformedMessageError(CURVATURE_TYPE, f"horizon_m must be finite and strictly increasing, got {h}")
        nig = nf.from_variances(arrays["curvature"], arrays["aleatoric_variance"], arrays["epistemic_variance"],
                                self.input_alpha)
        bad = int(np.count_nonzero(~nig.has_evidence()))
        if bad:
            self.nonfinite_entries += bad
            self._warn("nonfinite", f"{topic}: {self.nonfinite_entries} horizons with non-finite or non-positive "
                       "curvature/variances so far (used as no evidence)")
        return Prediction(stamp_to_ns(msg.header.stamp), h, nig)

    def _on_curvature(self, topic: str, msg: Any) -> list[Emit]:
        t0 = time.perf_counter_ns()
        pred = self._decode(topic, msg)
        self.latency.record("decode", (time.perf_counter_ns() - t0) / 1e6)
        stamp = pred.stamp
        # time went back: far behind the last command, or behind the newest stamp of the same topic (one
        # branch's stamps only go forward; a looping bag steps back by less than time_jump_s)
        newest = self._topic_newest.get(topic)
        if (self._last_command_stamp >= 0 and stamp < self._last_command_stamp - int(self.time_jump_s * 1e9)) or \
                (newest is not None and stamp < newest):
            back = (max(self._last_command_stamp, newest or -1) - stamp) / 1e9
            self._warn("time_jump", f"{topic}: stamp {stamp} ns is {back:.2f} s before the newest: time went back; "
                       "curvature history and odometry reset")
            self._topic_newest.clear()
            self.history.clear()
            self.odometer.reset()
            self._last_command_stamp = -1
            self._last_input_stamp = self._newest_data_stamp = None
            restart_clock(self.fsm, stamp)
        self._topic_newest[topic] = stamp if newest is None else max(newest, stamp)
        self.history.add(topic, pred)
        self.mark_used(topic)
        self._last_arrival = self.clock()
        self._last_input_stamp = stamp if self._last_input_stamp is None else max(self._last_input_stamp, stamp)
        if stamp <= self._last_command_stamp:
            return []  # a late prediction: kept as evidence for the next command
        return self._command(stamp, latency_s=max(0.0, (self.clock() - stamp) / 1e9))

    def _data_stamp(self, stamp: int) -> None:
        if self._newest_data_stamp is not None and stamp < self._newest_data_stamp - int(self.time_jump_s * 1e9):
            self._newest_data_stamp = None  # time went back
        self._newest_data_stamp = stamp if self._newest_data_stamp is None else max(self._newest_data_stamp, stamp)

    def input_staleness_s(self) -> float | None:
        """How far the curvature input is behind: in data time (the newest odometry/scan stamp minus the newest
        curvature stamp) while the other inputs move on, so a slow machine or a replay without backlog does not
        make it stale; on the node clock since the last curvature arrived when nothing else arrives either
        (everything stopped). None before the first curvature."""
        if self._last_arrival is None or self._last_input_stamp is None:
            return None
        if self._newest_data_stamp is not None and self._newest_data_stamp > self._last_input_stamp:
            return (self._newest_data_stamp - self._last_input_stamp) / 1e9
        return max(0.0, (self.clock() - self._last_arrival) / 1e9)

    def on_tick(self) -> list[Emit]:
        """While the curvature input is stale (:meth:`input_staleness_s`), publish fallback commands (stamped
        with the node clock) every ``stale_command_period_s``."""
        now = self.clock()
        if now <= 0 or self._input_ended:
            return []
        stale = self.input_staleness_s()  # before the first curvature there is nothing to fall back from
        if stale is None or stale <= self.fallback_params.input_timeout_s:
            return []
        if self._last_command_clock is not None and now - self._last_command_clock < self.stale_command_period_s * 1e9:
            return []
        if now <= self._last_command_stamp:
            return []
        return self._command(now, latency_s=0.0, staleness_s=stale)

    def _health_reasons(self, stamp: int) -> tuple[str, ...]:
        """Health triggers of the scan behind the command at ``stamp`` (matched by stamp, not arrival time:
        the LiDAR branch's own latency must not make the scan look late)."""
        if not self.health_points_topic:
            return ()
        older = [s for s in self._scan_health if s <= stamp + 1_000_000]
        if not older or stamp - max(older) > self.health_timeout_s * 1e9:
            return (f"no LiDAR scan on {self.health_points_topic} stamped within {self.health_timeout_s:g} s "
                    "before the command",)
        return self._scan_health[max(older)].reasons

    def end_of_input(self) -> None:
        """Replay: the bag has ended. Its final flush advances the clock past every time-out; that is not a
        curvature input going silent, so no stale-input fallback is commanded for it (live never calls this)."""
        self._input_ended = True

    def warmup(self) -> None:
        """Build the Student-t quantile table of ``interval_level`` now (~0.3 s) rather than in the first command."""
        nf.interval(nf.NIGArray(0.0, 1.0, 2.0, 1.0), self.interval_level)

    def _command(self, stamp: int, latency_s: float, staleness_s: float = 0.0) -> list[Emit]:
        age = staleness_s  # 0 for a command made on a curvature's arrival
        with self.latency.frame(stamp) as frame:
            with self.latency.stage("fuse"):
                targets = np.array([self.lookahead_m])
                fused = self.history.fuse_at(stamp, targets, self.odometer.travelled if self.odometry_topic else
                                             (lambda a, b: None), self._speed_for_dead_reckoning())
                self.dead_reckoned += fused.dead_reckoned
                nig = fused.nig
                var = float(nig.variance()[0])
                ale, epi = float(nig.aleatoric()[0]), float(nig.epistemic()[0])
                lo, hi = (float(x[0]) for x in nf.interval(nig, self.interval_level))
                kappa = float(nig.gamma[0]) if fused.sources else math.nan
            with self.latency.stage("command"):
                u = math.sqrt(var) if self.uncertainty_metric == "std" else hi - lo
                reasons = list(self._health_reasons(stamp))
                if latency_s > self.max_input_latency_s:
                    reasons.append(f"curvature input {latency_s:.2f} s old at arrival (> {self.max_input_latency_s:g} s)")
                before = (self.fsm.state, self.fsm.episodes)
                decision = self.fsm.step(stamp, kappa, u if math.isfinite(u) else math.inf, input_age_s=age,
                                         health_reasons=tuple(reasons))
                if (self.fsm.state, self.fsm.episodes) != before:
                    self._last_diag_ns = None  # a state change goes to /diagnostics at once
                    if decision.fallback:
                        self._warn("fallback", f"fallback at stamp {stamp} ns: {decision.reason}")
                cp = self.command_params
                speed = 0.0 if decision.stop else (cp.fallback_speed_mps if decision.fallback else cp.speed_mps)
                cmd = command_for(decision.curvature, speed, cp)
            with self.latency.stage("encode"):
                emits = self._encode(stamp, cmd, decision, kappa, var, ale, epi, lo, hi, fused.sources, age)
        self._last_command_stamp = stamp
        self._last_command_clock = self.clock()
        self.commands_out += 1
        self.frames_out += 1
        self.fallback_frames += int(decision.fallback)
        self.last = {"stamp": stamp, "curvature": kappa, "std": math.sqrt(var) if math.isfinite(var) else math.inf,
                     "state": decision.state, "reason": decision.reason, "speed": cmd.speed, "sources": fused.sources}
        return emits + self.debug_emits(frame)

    def _speed_for_dead_reckoning(self) -> float:
        cp = self.command_params
        return cp.fallback_speed_mps if self.fsm.state != "nominal" else cp.speed_mps

    def _encode(self, stamp: int, cmd: Any, decision: Any, kappa: float, var: float, ale: float, epi: float,
                lo: float, hi: float, sources: int, age: float) -> list[Emit]:
        b = self.backend
        header = make_header(b, stamp, self.base_frame)
        if self.command_type == "ackermann":
            drive = b.new("ackermann_msgs/msg/AckermannDrive", steering_angle=float(cmd.steering_angle),
                          steering_angle_velocity=0.0, speed=float(cmd.speed), acceleration=0.0, jerk=0.0)
            out = [Emit(self.command_topic, ACKERMANN_TYPE, b.new(ACKERMANN_TYPE, header=header, drive=drive))]
        else:
            v3 = lambda x, y, z: b.new("geometry_msgs/msg/Vector3", x=float(x), y=float(y), z=float(z))  # noqa: E731
            twist = b.new("geometry_msgs/msg/Twist", linear=v3(cmd.speed, 0, 0), angular=v3(0, 0, cmd.yaw_rate))
            out = [Emit(self.command_topic, TWIST_TYPE, b.new(TWIST_TYPE, header=header, twist=twist))]
        if self.uncertainty_topic:
            f = float
            out.append(Emit(self.uncertainty_topic, UNCERTAINTY_TYPE, b.new(
                UNCERTAINTY_TYPE, header=make_header(b, stamp, self.base_frame), curvature=f(kappa),
                horizon_m=float(self.lookahead_m), commanded_curvature=f(cmd.curvature), curvature_variance=f(var), aleatoric_variance=f(ale),
                epistemic_variance=f(epi), interval_low=f(lo), interval_high=f(hi),
                interval_level=float(self.interval_level), speed=float(cmd.speed),
                steering_angle=float(cmd.steering_angle) if self.command_type == "ackermann" else 0.0,
                fallback=bool(decision.fallback), reason=str(decision.reason)[:300], sources=int(sources),
                input_age_s=float(age))))
        return out

    def pending(self, topic: str) -> int:
        return 0

    # --- diagnostics ------------------------------------------------------------------------------
    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        statuses = super().diagnostic_statuses()
        fsm = self.fsm
        level = {HOLD: WARN, FINAL: ERROR}.get(fsm.state, OK)
        values = {"state": fsm.state, "fallback_episodes": str(fsm.episodes), "commands_out": str(self.commands_out),
                  "fallback_frames": str(self.fallback_frames), "command_type": self.command_type,
                  "nonfinite_entries": str(self.nonfinite_entries), "dead_reckoned": str(self.dead_reckoned),
                  "good_frames": str(fsm.good_frames)}
        for k in ("curvature", "std", "speed", "sources"):
            if k in self.last:
                values[k] = f"{self.last[k]:.6g}" if isinstance(self.last[k], float) else str(self.last[k])
        msg = "nominal" if fsm.state == "nominal" else f"{fsm.state}: {fsm.reason}"
        if not self.last:
            msg = "no command yet"
        return statuses + [DiagnosticStatusData(level, f"{self.name}: command", msg[:500], self.base_frame, values)]
