"""The ROS-agnostic node: what every node of the graph does besides its own algorithm.

A :class:`NodeCore` receives messages (``handle``) and timer ticks (``tick``) and returns what to
publish. Two thin adapters drive it: the rclpy node (:mod:`perception_nodes.ros.node`) for live ROS,
and the replay bus (:mod:`perception_nodes.replay`) for bags. Shared behaviour lives here:

* bad input (:class:`MalformedMessageError`, :class:`CalibrationError`, empty or non-finite clouds) is
  counted per topic, logged once per kind, shown on ``/diagnostics``; the node keeps running;
* latency accounting with Autoware's debug topic names under ``~/debug/``;
* transforms from the rig calibration file, ``/tf_static`` and ``/tf`` (latest per child frame).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.calibration import TransformTree, load_rig
from perception_nodes.codecs.backend import MessageBackend, make_header
from perception_nodes.codecs.outputs import DiagnosticStatusData, diagnostic_array_msg
from perception_nodes.errors import CalibrationError, MalformedMessageError
from perception_nodes.latency import CYCLIC, PIPELINE, PROCESSING, FrameLatency, NodeLatency

OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class Port:
    """A topic a node reads or writes.

    ``qos``: ``sensor`` (best effort, keep last 5: accepts reliable and best-effort publishers, the
    usual fix for bag-replay QoS mismatches), ``reliable`` (keep last 10) or ``latched``
    (reliable + transient local, for ``/tf_static``).
    """

    topic: str
    msgtype: str
    qos: str = "sensor"


@dataclass(frozen=True)
class Emit:
    """A message to publish. Topics starting with ``~/`` are private to the node."""

    topic: str
    msgtype: str
    msg: Any


def finite_points(points: np.ndarray) -> np.ndarray:
    """Rows whose x, y, z are all finite (``is_dense=false`` clouds carry NaN for missing returns).

    One float reduction per row instead of three boolean columns: a NaN or inf anywhere makes the sum
    non-finite. Returns the input itself (no copy) when every row is finite.
    """
    ok = np.isfinite(points[:, 0] + points[:, 1] + points[:, 2])
    return points if ok.all() else points[ok]


def synthetic_scan(n_az: int = 360, n_rings: int = 16) -> np.ndarray:
    """A small ring scan of flat ground with a wall, in base_link: input for :meth:`NodeCore.warmup`."""
    az = np.linspace(-np.pi, np.pi, n_az, endpoint=False)
    r = np.linspace(3.0, 30.0, n_rings)
    a, rr = np.meshgrid(az, r)
    pts = np.zeros((a.size, 4), np.float32)
    pts[:, 0], pts[:, 1] = (rr * np.cos(a)).ravel(), (rr * np.sin(a)).ravel()
    wall = pts[:, 0] > 20.0
    pts[wall, 0], pts[wall, 2] = 20.0, np.linspace(0.1, 2.0, int(wall.sum()))
    return pts


class NodeCore:
    """Base class of the graph's nodes (see module doc). Subclasses implement ``on_message``."""

    #: parameters every node understands (documented in perception.params.yaml)
    COMMON = ("calibration_file", "use_tf_static", "use_tf", "base_frame", "publish_debug", "diagnostics_period_s",
              "latency_budgets_ms", "latency_window")

    def __init__(
        self,
        name: str,
        params: dict[str, Any],
        *,
        backend: MessageBackend,
        clock: Callable[[], int],
        keep_all_latency: bool = False,
        log: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self.params = params
        self.backend = backend
        self.clock = clock
        self.log = log or logging.getLogger(f"perception_nodes.{name}")
        self.base_frame: str = params.get("base_frame", "base_link")
        self.publish_debug: bool = bool(params.get("publish_debug", True))
        self.diagnostics_period_ns = int(float(params.get("diagnostics_period_s", 1.0)) * 1e9)
        self.latency = NodeLatency(
            name,
            clock,
            budgets_ms={k: float(v) for k, v in (params.get("latency_budgets_ms") or {}).items()},
            window=int(params.get("latency_window", 200)),
            keep_all=keep_all_latency,
        )
        self.malformed: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.frames_out = 0
        self.warnings: dict[str, str] = {}  # kind -> last message, shown on /diagnostics
        self._logged: set[str] = set()
        self._last_diag_ns: int | None = None
        self._diag_had_frames = False
        self.transforms = TransformTree()
        calib = params.get("calibration_file") or ""
        if calib:
            try:
                self.transforms = load_rig(calib)
            except CalibrationError as exc:
                self._warn("calibration", str(exc))

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        """Topics the node subscribes to (subclasses extend)."""
        ports = []
        if self.params.get("use_tf_static", True):
            ports.append(Port(topics.TF_STATIC, topics.TF_MESSAGE, "latched"))
        if self.params.get("use_tf", True):  # dynamic transforms, as tf2's listener takes them (reliable)
            ports.append(Port(topics.TF, topics.TF_MESSAGE, "reliable"))
        return ports

    def outputs(self) -> list[Port]:
        return [Port(topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY, "reliable")]

    # --- driving ------------------------------------------------------------------------------
    def handle(self, topic: str, msg: Any) -> list[Emit]:
        """Process one incoming message; never raises for bad input."""
        self.received[topic] += 1
        out: list[Emit] = []
        try:
            if topic in (topics.TF_STATIC, topics.TF):
                self.transforms.update_from_tf_message(msg, static=topic == topics.TF_STATIC)
            else:
                out = self.on_message(topic, msg)
        except MalformedMessageError as exc:
            self.malformed[topic] += 1
            self._warn("malformed", f"{topic}: {exc}")
        except CalibrationError as exc:
            self.dropped[topic] += 1
            self._warn("calibration", f"{topic}: {exc}")
        return out + self._maybe_diagnostics()

    def tick(self) -> list[Emit]:
        """Timer callback: lets nodes flush time-outs and publishes diagnostics when due."""
        out: list[Emit] = []
        try:
            out = self.on_tick()
        except (MalformedMessageError, CalibrationError) as exc:
            self._warn("tick", str(exc))
        return out + self._maybe_diagnostics()

    def warmup(self) -> None:
        """Run the algorithm once on synthetic data so JIT compilation does not hit the first frame."""

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        raise NotImplementedError

    def on_tick(self) -> list[Emit]:
        return []

    # --- helpers for subclasses ----------------------------------------------------------------
    def _warn(self, kind: str, text: str) -> None:
        self.warnings[kind] = text
        if kind not in self._logged:  # log each kind once; counts go to /diagnostics
            self._logged.add(kind)
            self.log.warning("%s: %s", self.name, text)

    def sensor_to_base(self, frame_id: str) -> np.ndarray:
        """4x4 from a sensor frame into ``base_frame``; CalibrationError when unknown."""
        if not frame_id:
            raise CalibrationError("message has an empty header.frame_id")
        return self.transforms.lookup(self.base_frame, frame_id.lstrip("/"))

    def debug_emits(self, frame: FrameLatency) -> list[Emit]:
        """Autoware-style ``~/debug/...`` Float64Stamped messages for one frame."""
        if frame.pipeline_ms < -1000.0 or frame.pipeline_ms > 3_600_000.0:
            self._warn("clock", f"input stamps are {frame.pipeline_ms / 1000:.0f} s away from this node's clock: "
                       "for bag replay publish /clock (play --clock) and set use_sim_time")
        if not self.publish_debug:
            return []
        values = {PROCESSING: frame.processing_ms, PIPELINE: frame.pipeline_ms}
        if frame.cyclic_ms is not None:
            values[CYCLIC] = frame.cyclic_ms
        out = [Emit(f"~/debug/{k}_ms", topics.FLOAT64_STAMPED, self._float(frame.input_stamp_ns, v)) for k, v in values.items()]
        for stage, ms in frame.stages_ms.items():
            out.append(Emit(f"~/debug/processing_time/{stage}_ms", topics.FLOAT64_STAMPED, self._float(frame.input_stamp_ns, ms)))
        return out

    def _float(self, stamp_ns: int, value: float) -> Any:
        return self.backend.new(
            topics.FLOAT64_STAMPED, header=make_header(self.backend, stamp_ns, self.base_frame), data=float(value)
        )

    # --- diagnostics ---------------------------------------------------------------------------
    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        """Health of this node: latency against budgets, and input problems."""
        values: dict[str, str] = {}
        level, worst = OK, "ok"
        for key, series in sorted(self.latency.series.items()):
            s = series.window_summary()
            if s.count == 0:
                continue
            values[f"{key}.p50_ms"] = f"{s.p50_ms:.3f}"
            values[f"{key}.p99_ms"] = f"{s.p99_ms:.3f}"
            values[f"{key}.max_ms"] = f"{s.max_ms:.3f}"
            values[f"{key}.jitter_ms"] = f"{s.jitter_ms:.3f}"
            if s.budget_ms is not None:
                values[f"{key}.budget_ms"] = f"{s.budget_ms:.3f}"
                values[f"{key}.deadline_misses"] = str(s.deadline_misses)
                if s.deadline_misses:
                    level, worst = WARN, f"{key} missed its {s.budget_ms:g} ms budget {s.deadline_misses}x in the window"
        lat = DiagnosticStatusData(level, f"{self.name}: latency", worst, self.name, values)
        in_values = {f"received {t}": str(n) for t, n in sorted(self.received.items())}
        in_values.update({f"malformed {t}": str(n) for t, n in sorted(self.malformed.items())})
        in_values.update({f"dropped {t}": str(n) for t, n in sorted(self.dropped.items())})
        in_values["frames_out"] = str(self.frames_out)
        in_level, in_msg = OK, "ok"
        if self.malformed or self.dropped or self.warnings:
            in_level = WARN
            in_msg = "; ".join(f"{k}: {v}" for k, v in sorted(self.warnings.items()))[:500] or "inputs dropped"
        if "calibration" in self.warnings and self.frames_out == 0:
            in_level = ERROR
        inp = DiagnosticStatusData(in_level, f"{self.name}: inputs", in_msg, self.name, in_values)
        return [lat, inp]

    def _maybe_diagnostics(self) -> list[Emit]:
        """Health every ``diagnostics_period_s`` on the node clock, and as soon as the first frame is out."""
        now = self.clock()
        first_result = self.frames_out > 0 and not self._diag_had_frames
        if not first_result and self._last_diag_ns is not None and now - self._last_diag_ns < self.diagnostics_period_ns:
            return []
        self._last_diag_ns = now
        self._diag_had_frames = self.frames_out > 0
        return [Emit(topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY,
                     diagnostic_array_msg(self.diagnostic_statuses(), now, self.backend))]

    # --- runtime reconfiguration (rclpy set_parameters, tests) ----------------------------------
    def reconfigure(self, changes: dict[str, Any]) -> None:
        """Apply new values of runtime-changeable parameters; all or nothing.

        ``changes`` uses dotted names (``grid.resolution``) or nested maps, as the params file. Read-only
        parameters (see :mod:`perception_nodes.config.schema`: topics, frames, QoS, calibration, window
        sizes) need a restart and raise ConfigError, as do unknown names, wrong types and values out of
        range; a value the algorithm rejects (e.g. ``evidence.obstacle_max_height`` below the min)
        raises before anything changed. Subclasses rebuild what they derive in :meth:`_derived`.
        """
        from perception_nodes.config import ConfigError, flatten, unflatten
        from perception_nodes.config.schema import check_values, node_schema

        known = self.name in _schema_nodes()  # cores built under other names (tests) have no schema
        flat = check_values(self.name, flatten(changes)) if known else flatten(changes)
        specs = node_schema(self.name) if known else {}
        ro = sorted(k for k in flat if k in specs and specs[k].read_only)
        if ro:
            raise ConfigError(f"{self.name}: {', '.join(ro)} read-only (needs a restart)")
        merged = flatten(self.params)
        merged.update(flat)
        params = unflatten(merged)
        budgets = {k: float(v) for k, v in (params.get("latency_budgets_ms") or {}).items()}
        derived = self._derived(params)  # may raise: nothing has changed yet
        self.params = params
        self.publish_debug = bool(params.get("publish_debug", True))
        self.diagnostics_period_ns = int(float(params.get("diagnostics_period_s", 1.0)) * 1e9)
        self.latency.budgets_ms = budgets
        for key, series in self.latency.series.items():
            series.budget_ms = budgets.get(key)
        for attr, value in derived.items():
            setattr(self, attr, value)

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        """Attributes built from ``params`` that :meth:`reconfigure` replaces (subclasses extend)."""
        return {}


def _schema_nodes() -> set[str]:
    from perception_nodes.config import load_params

    return set(load_params())
