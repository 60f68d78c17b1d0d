"""The ROS-agnostic node: what every node of the graph does besides its own algorithm.

A :class:`NodeCore` receives messages (``handle``) and timer ticks (``tick``) and returns what to
publish. Two thin adapters drive it: the rclpy node (:mod:`perception_nodes.ros.node`) for live ROS,
and the replay bus (:mod:`perception_nodes.replay`) for bags. Shared behaviour lives here:

* fault isolation per message: *any* exception while one message is handled is caught, counted per
  topic and kind, logged once per kind (with its traceback) and shown on ``/diagnostics``; the node
  keeps running;
* conservation: for every input topic ``received == used + malformed + sum(dropped[reason]) + pending``
  at all times (:meth:`NodeCore.accounting`); nothing is lost without a counter saying why;
* stamps too far from the node's clock are rejected (``stamp_max_future_s``, ``stamp_max_age_s``), and
  points beyond ``max_point_range_m`` or non-finite are dropped and counted before any algorithm sees
  them (:func:`sanitize_points`); a cloud where more than ``max_out_of_range_fraction`` of the finite
  points fail the range gate is rejected whole (``implausible``): such values come from data decoded
  with the wrong byte order or field types, and the ~30 % that happen to land near the sensor are garbage;
* latency accounting with Autoware's debug topic names under ``~/debug/``;
* diagnostics timed on a steady clock (``steady_clock``, separate from the ROS/sim clock used for
  stamps): per input rate and age of the last message, STALE past ``input_stale_s`` of silence;
  warnings expire ``warning_hold_s`` after their cause last occurred, so a status returns to OK;
* transforms from the rig calibration file, ``/tf_static`` and ``/tf`` (latest per child frame).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.calibration import TransformTree, load_rig, transforms_from_tf_message
from perception_nodes.codecs.backend import MessageBackend, make_header, stamp_to_ns
from perception_nodes.codecs.outputs import DiagnosticStatusData, diagnostic_array_msg
from perception_nodes.errors import CalibrationError, ImplausibleCloudError, MalformedMessageError
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


@dataclass(frozen=True)
class SanitizedPoints:
    """Result of :func:`sanitize_points`: the rows kept and how many were dropped, by reason."""

    points: np.ndarray
    nonfinite: int
    out_of_range: int


def sanitize_points(points: np.ndarray, max_range_m: float) -> SanitizedPoints:
    """Rows with finite x, y, z at most ``max_range_m`` from the sensor (``points`` in the sensor frame).

    Runs before any algorithm: coordinates such as 1e30 or ±3e38 are finite, so ``isfinite`` alone
    lets them through to integer binning, where a cast wraps around (``np.bincount`` then raises). The
    squared range in float32 overflows to inf for such values and fails the gate, NaN fails every
    comparison, so one fused test covers both. Returns the input itself (no copy) when all rows pass.
    """
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    with np.errstate(over="ignore", invalid="ignore"):
        r2 = x * x + y * y + z * z
        ok = r2 <= np.float32(max_range_m) ** 2
    if ok.all():
        return SanitizedPoints(points, 0, 0)
    nonfinite = int(np.count_nonzero(~(np.isfinite(x) & np.isfinite(y) & np.isfinite(z))))
    return SanitizedPoints(points[ok], nonfinite, int(ok.size - np.count_nonzero(ok)) - nonfinite)


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


class InputStats:
    """Arrival bookkeeping of one input topic on the steady clock (rate, age of the last message)."""

    def __init__(self, window: int = 20) -> None:
        self.arrivals: deque[int] = deque(maxlen=window)

    def arrived(self, steady_ns: int) -> None:
        self.arrivals.append(steady_ns)

    def rate_hz(self) -> float | None:
        """Mean rate over the last ``window`` arrivals; None before two have arrived."""
        if len(self.arrivals) < 2 or self.arrivals[-1] <= self.arrivals[0]:
            return None
        return (len(self.arrivals) - 1) * 1e9 / (self.arrivals[-1] - self.arrivals[0])

    def last_ns(self) -> int | None:
        return self.arrivals[-1] if self.arrivals else None


class NodeCore:
    """Base class of the graph's nodes (see module doc). Subclasses implement ``on_message``.

    Accounting contract for subclasses: every message ``on_message`` returns from normally must end up
    counted exactly once as used (:meth:`mark_used`), dropped (:meth:`mark_dropped`) or pending
    (:meth:`pending`); exceptions are counted by :meth:`handle` itself.
    """

    #: parameters every node understands (documented in perception.params.yaml)
    COMMON = ("calibration_file", "use_tf_static", "use_tf", "base_frame", "publish_debug", "diagnostics_period_s",
              "latency_budgets_ms", "latency_window", "max_point_range_m", "max_out_of_range_fraction",
              "stamp_max_future_s", "stamp_max_age_s", "input_stale_s", "warning_hold_s")

    def __init__(
        self,
        name: str,
        params: dict[str, Any],
        *,
        backend: MessageBackend,
        clock: Callable[[], int],
        keep_all_latency: bool = False,
        log: logging.Logger | None = None,
        steady_clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.name = name
        self.params = params
        self.backend = backend
        self.clock = clock
        self.steady_clock = steady_clock
        self.log = log or logging.getLogger(f"perception_nodes.{name}")
        self.base_frame: str = params.get("base_frame", "base_link")
        self._apply_common(params)
        self.latency = NodeLatency(
            name,
            clock,
            budgets_ms={k: float(v) for k, v in (params.get("latency_budgets_ms") or {}).items()},
            window=int(params.get("latency_window", 200)),
            keep_all=keep_all_latency,
        )
        self.received: Counter[str] = Counter()
        self.used: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.dropped: dict[str, Counter[str]] = {}  # topic -> reason -> count
        self.faults: Counter[tuple[str, str]] = Counter()  # (topic or "tick", exception type) -> count
        self.points_dropped: Counter[str] = Counter()  # "nonfinite" / "out_of_range" -> points
        self.frames_out = 0
        self.warnings: dict[str, str] = {}  # kind -> last message, shown on /diagnostics while active
        self._warned_at: dict[str, int] = {}  # kind -> steady time it last occurred
        self._logged: set[str] = set()
        self._stats: dict[str, InputStats] = {}
        self._sensor_frame = ""
        self._started_ns: int | None = None  # steady time of the first message or tick
        self._last_diag_ns: int | None = None
        self._diag_had_frames = False
        self._last_miss_ns: int | None = None
        self._missed_keys: set[str] = set()
        self._last_drop_ns: int | None = None  # steady time a message was last dropped or malformed
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
        """Process one incoming message; never raises (see module doc)."""
        self.received[topic] += 1
        steady = self.steady_clock()
        if self._started_ns is None:
            self._started_ns = steady
        self._stats.setdefault(topic, InputStats()).arrived(steady)
        out: list[Emit] = []
        try:
            if topic in (topics.TF_STATIC, topics.TF):
                self._take_transforms(msg, static=topic == topics.TF_STATIC)
                self.mark_used(topic)
            else:
                header = msg.header
                if self._stamp_in_range(topic, stamp_to_ns(header.stamp)):
                    out = self.on_message(topic, msg)
                    if header.frame_id:  # hardware_id: the frame of the sensor data the node works on
                        self._sensor_frame = str(header.frame_id).lstrip("/")
        except MalformedMessageError as exc:
            self.malformed[topic] += 1
            self._last_drop_ns = self.steady_clock()
            self._warn("malformed", f"{topic}: {exc}")
        except CalibrationError as exc:
            self.mark_dropped(topic, "calibration")
            self._warn("calibration", f"{topic}: {exc}")
        except ImplausibleCloudError as exc:
            self.mark_dropped(topic, "implausible")
            self._warn("implausible", f"{topic}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one message must never stop the node
            self.mark_dropped(topic, "error")
            self._fault(topic, exc)
        return out + self._maybe_diagnostics()

    def tick(self) -> list[Emit]:
        """Timer callback: lets nodes flush time-outs and publishes diagnostics when due."""
        out: list[Emit] = []
        if self._started_ns is None:
            self._started_ns = self.steady_clock()
        try:
            out = self.on_tick()
        except (MalformedMessageError, CalibrationError) as exc:
            self._warn("tick", str(exc))
        except Exception as exc:  # noqa: BLE001
            self._fault("tick", exc)
        return out + self._maybe_diagnostics()

    def end_of_input(self) -> None:
        """Replay only, before its final flush (the clock jumps past every time-out, then :meth:`tick`, then
        :meth:`finish`): no more input will come. A node whose timer acts on silent inputs (the control
        node's stale-input fallback) can tell the end of a bag from a sensor that stopped."""

    def finish(self) -> list[Emit]:
        """End of input (replay): release what can be released; what is still held counts as dropped."""
        return []

    def warmup(self) -> None:
        """Run the algorithm once on synthetic data so JIT compilation does not hit the first frame."""

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        raise NotImplementedError

    def on_tick(self) -> list[Emit]:
        return []

    # --- accounting ----------------------------------------------------------------------------
    def mark_used(self, topic: str, n: int = 1) -> None:
        """``n`` messages of ``topic`` went into an output."""
        self.used[topic] += n

    def mark_dropped(self, topic: str, reason: str, n: int = 1) -> None:
        """``n`` messages of ``topic`` were discarded for ``reason``."""
        self.dropped.setdefault(topic, Counter())[reason] += n
        if n:
            self._last_drop_ns = self.steady_clock()

    def set_dropped(self, topic: str, reason: str, total: int) -> None:
        """Set the running total of ``reason`` drops (for counts kept elsewhere, e.g. a synchroniser)."""
        counts = self.dropped.setdefault(topic, Counter())
        if total > counts[reason]:
            self._last_drop_ns = self.steady_clock()
        counts[reason] = total

    def pending(self, topic: str) -> int:
        """Messages of ``topic`` held for later (a synchroniser's queue); subclasses override."""
        return 0

    def accounting(self) -> dict[str, dict[str, Any]]:
        """Per input topic: received, used, malformed, dropped by reason, pending; ``balanced`` says
        whether ``received == used + malformed + sum(dropped) + pending`` holds (it always should)."""
        out = {}
        for topic in sorted(set(self.received) | {p.topic for p in self.inputs()}):
            dropped = {r: n for r, n in sorted(self.dropped.get(topic, {}).items()) if n}
            entry = {"received": self.received[topic], "used": self.used[topic],
                     "malformed": self.malformed[topic], "dropped": dropped, "pending": self.pending(topic)}
            entry["balanced"] = entry["received"] == (entry["used"] + entry["malformed"] + sum(dropped.values())
                                                      + entry["pending"])
            out[topic] = entry
        return out

    # --- helpers for subclasses ----------------------------------------------------------------
    def _warn(self, kind: str, text: str) -> None:
        self.warnings[kind] = text
        self._warned_at[kind] = self.steady_clock()
        if kind not in self._logged:  # log each kind once; counts go to /diagnostics
            self._logged.add(kind)
            self.log.warning("%s: %s", self.name, text)

    def _fault(self, where: str, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.faults[(where, kind)] += 1
        self.warnings[f"fault {kind}"] = f"{where}: {kind}: {exc}"[:300]
        self._warned_at[f"fault {kind}"] = self.steady_clock()
        if f"fault {kind}" not in self._logged:  # once per kind, with where it came from
            self._logged.add(f"fault {kind}")
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
            self.log.warning("%s: %s while handling %s (message dropped, counted; node goes on):\n%s",
                             self.name, kind, where, tb)

    def _active_warnings(self, steady_ns: int) -> dict[str, str]:
        return {k: v for k, v in self.warnings.items() if steady_ns - self._warned_at.get(k, steady_ns)
                <= self.warning_hold_ns}

    def _stamp_in_range(self, topic: str, stamp_ns: int) -> bool:
        """False (and counted as ``stamp_out_of_range``) for stamps too far from the node clock."""
        now = self.clock()
        if now <= 0:  # e.g. sim time before the first /clock: nothing to compare with
            return True
        ahead = stamp_ns - now
        if self.stamp_max_future_ns > 0 and ahead > self.stamp_max_future_ns:
            why = f"{ahead / 1e9:.3g} s ahead of"
        elif self.stamp_max_age_ns > 0 and -ahead > self.stamp_max_age_ns:
            why = f"{-ahead / 1e9:.3g} s behind"
        else:
            return True
        self.mark_dropped(topic, "stamp_out_of_range")
        self._warn("stamp", f"{topic}: stamp {stamp_ns} ns is {why} this node's clock; dropped "
                   "(stamp_max_future_s / stamp_max_age_s)")
        return False

    def _take_transforms(self, msg: Any, *, static: bool) -> None:
        """Validate a whole ``TFMessage`` (absurd values make it malformed), then take it into the tree."""
        got = transforms_from_tf_message(msg)
        for t in got:
            m = np.asarray(t.matrix, dtype=np.float64)
            if not np.all(np.isfinite(m)) or not np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-3):
                raise MalformedMessageError(topics.TF_MESSAGE, f"transform {t.parent} -> {t.child} is not a "
                                            "finite rigid transform (non-finite values or non-unit rotation)")
            if np.abs(m[:3, 3]).max() > self.max_point_range_m:  # no rig mounts a sensor that far away
                raise MalformedMessageError(topics.TF_MESSAGE, f"transform {t.parent} -> {t.child} translates "
                                            f"by more than max_point_range_m = {self.max_point_range_m:g} m")
        self.transforms.update_from_tf_message(msg, static=static)

    def sanitize(self, topic: str, points: np.ndarray, *, count_points: bool = True) -> np.ndarray:
        """:func:`sanitize_points` with the node's range gate; counts and reports what it drops
        (``count_points=False``: a derived cloud, whose points are not the sensor's).

        Raises :class:`ImplausibleCloudError` (the message then counts as dropped ``implausible``)
        when more than ``max_out_of_range_fraction`` of the finite points fail the range gate. Only
        finite points count: organised clouds (``is_dense`` false) carry NaN for every missing return.
        """
        s = sanitize_points(points, self.max_point_range_m)
        finite = len(points) - s.nonfinite
        if finite and s.out_of_range > self.max_out_of_range_fraction * finite:
            raise ImplausibleCloudError(
                f"{s.out_of_range} of {finite} finite points ({s.out_of_range / finite:.0%}) lie beyond "
                f"max_point_range_m = {self.max_point_range_m:g} m (max_out_of_range_fraction = "
                f"{self.max_out_of_range_fraction:g}); cloud rejected: likely a wrong is_bigendian flag "
                "or wrong field types (datatype/offset) in the PointCloud2")
        if not count_points:
            return s.points
        if s.nonfinite:
            self.points_dropped["nonfinite"] += s.nonfinite
            self._warn("nonfinite", f"{topic}: {self.points_dropped['nonfinite']} non-finite points removed so far")
        if s.out_of_range:
            self.points_dropped["out_of_range"] += s.out_of_range
            self._warn("out_of_range", f"{topic}: {self.points_dropped['out_of_range']} points beyond "
                       f"max_point_range_m = {self.max_point_range_m:g} m removed so far")
        return s.points

    def sensor_to_base(self, frame_id: str) -> np.ndarray:
        """4x4 from a sensor frame into ``base_frame``; CalibrationError when unknown."""
        if not frame_id:
            raise CalibrationError("message has an empty header.frame_id")
        return self.transforms.lookup(self.base_frame, frame_id.lstrip("/"))

    def debug_emits(self, frame: FrameLatency) -> list[Emit]:
        """Autoware-style ``~/debug/...`` Float64Stamped messages for one frame."""
        if frame.missed:
            self._last_miss_ns = self.steady_clock()
            self._missed_keys.update(frame.missed)
        if frame.pipeline_ms < -1000.0 or frame.pipeline_ms > 3_600_000.0:
            self._warn("clock", f"input stamps are {frame.pipeline_ms / 1000:.0f} s away from this node's clock: "
                       "for bag replay publish /clock (play --clock) and set use_sim_time")
        if not self.publish_debug:
            return []
        values = {PROCESSING: frame.processing_ms}
        if frame.pipeline_valid:
            values[PIPELINE] = frame.pipeline_ms
        if frame.cyclic_ms is not None:
            values[CYCLIC] = frame.cyclic_ms
        if frame.jitter_ms is not None:
            values[f"{CYCLIC}_jitter"] = frame.jitter_ms
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
        """Health of this node: latency against budgets, and input problems (keys in README)."""
        steady = self.steady_clock()
        hold = self.warning_hold_ns
        values: dict[str, str] = {}
        for key, series in sorted(self.latency.series.items()):
            s = series.window_summary()
            if s.count == 0:
                continue
            values[f"{key}.count"] = str(s.count)  # the window the percentiles come from
            values[f"{key}.p50_ms"] = f"{s.p50_ms:.3f}"
            values[f"{key}.p99_ms"] = f"{s.p99_ms:.3f}"
            values[f"{key}.max_ms"] = f"{s.max_ms:.3f}"
            values[f"{key}.jitter_ms"] = f"{s.jitter_ms:.3f}"
            if s.budget_ms is not None:
                values[f"{key}.budget_ms"] = f"{s.budget_ms:.3f}"
                values[f"{key}.deadline_misses"] = str(s.deadline_misses)
        for key, n in sorted(self.latency.invalid.items()):
            values[f"{key}.invalid"] = str(n)
        values["time_jumps"] = str(self.latency.time_jumps)
        level, worst = OK, "ok"
        if self._last_miss_ns is not None and steady - self._last_miss_ns <= hold:
            keys = ", ".join(sorted(self._missed_keys))
            level, worst = WARN, f"{keys} missed the budget in the last {hold / 1e9:g} s"
        else:
            self._missed_keys.clear()
        hw = self._sensor_frame
        lat = DiagnosticStatusData(level, f"{self.name}: latency", worst, hw, values)

        acct = self.accounting()
        in_values: dict[str, str] = {}
        stale: list[str] = []
        # transforms are not a stream the node waits for: /tf_static is latched (sent once), and many rigs
        # publish no /tf at all (a static calibration file), so neither can go STALE
        no_stale = {p.topic for p in self.inputs() if p.qos == "latched"} | {topics.TF, topics.TF_STATIC}
        for topic, a in acct.items():
            in_values[f"received {topic}"] = str(a["received"])
            in_values[f"used {topic}"] = str(a["used"])
            in_values[f"malformed {topic}"] = str(a["malformed"])
            in_values[f"dropped {topic}"] = str(sum(a["dropped"].values()))
            for reason, n in a["dropped"].items():
                in_values[f"dropped {topic} {reason}"] = str(n)
            in_values[f"pending {topic}"] = str(a["pending"])
            st = self._stats.get(topic)
            rate = st.rate_hz() if st else None
            last = st.last_ns() if st else None
            in_values[f"rate_hz {topic}"] = "-" if rate is None else f"{rate:.2f}"
            in_values[f"age_s {topic}"] = "-" if last is None else f"{(steady - last) / 1e9:.3f}"
            since = last if last is not None else self._started_ns
            silent = 0 if since is None else steady - since
            if topic not in no_stale and self.input_stale_ns > 0 and silent > self.input_stale_ns:
                stale.append(f"{topic} silent for {silent / 1e9:.1f} s")
        for (where, kind), n in sorted(self.faults.items()):
            in_values[f"faults {where} {kind}"] = str(n)
        for reason, n in sorted(self.points_dropped.items()):
            in_values[f"points_{reason}"] = str(n)
        in_values["frames_out"] = str(self.frames_out)
        active = self._active_warnings(steady)
        in_level, parts = OK, []
        if active:
            in_level = WARN
            parts += [f"{k}: {v}" for k, v in sorted(active.items())]
        elif self._last_drop_ns is not None and steady - self._last_drop_ns <= hold:
            in_level = WARN
            parts.append(f"inputs dropped in the last {hold / 1e9:g} s (see dropped/malformed counts)")
        if "calibration" in active and self.frames_out == 0:
            in_level = ERROR
        if stale:
            in_level = max(in_level, STALE)
            parts.insert(0, "stale: " + "; ".join(stale))
        in_msg = "; ".join(parts)[:500] or "ok"
        inp = DiagnosticStatusData(in_level, f"{self.name}: inputs", in_msg, hw, in_values)
        return [lat, inp]

    def _maybe_diagnostics(self) -> list[Emit]:
        """Health every ``diagnostics_period_s`` on the steady clock (it keeps flowing when a sim clock
        pauses or loops), and as soon as the first frame is out."""
        steady = self.steady_clock()
        first_result = self.frames_out > 0 and not self._diag_had_frames
        if (not first_result and self._last_diag_ns is not None
                and steady - self._last_diag_ns < self.diagnostics_period_ns):
            return []
        self._last_diag_ns = steady
        self._diag_had_frames = self.frames_out > 0
        return [Emit(topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY,
                     diagnostic_array_msg(self.diagnostic_statuses(), max(self.clock(), 0), self.backend))]

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
        self._apply_common(params)
        self.latency.budgets_ms = budgets
        for key, series in self.latency.series.items():
            series.budget_ms = budgets.get(key)
        for attr, value in derived.items():
            setattr(self, attr, value)

    def _apply_common(self, params: dict[str, Any]) -> None:
        """The runtime-changeable parameters every node reads (at construction and on reconfigure)."""
        self.publish_debug: bool = bool(params.get("publish_debug", True))
        self.diagnostics_period_ns = int(float(params.get("diagnostics_period_s", 1.0)) * 1e9)
        self.max_point_range_m = float(params.get("max_point_range_m", 1000.0))
        self.max_out_of_range_fraction = float(params.get("max_out_of_range_fraction", 0.5))
        self.stamp_max_future_ns = int(float(params.get("stamp_max_future_s", 10.0)) * 1e9)
        self.stamp_max_age_ns = int(float(params.get("stamp_max_age_s", 0.0)) * 1e9)
        self.input_stale_ns = int(float(params.get("input_stale_s", 2.0)) * 1e9)
        self.warning_hold_ns = int(float(params.get("warning_hold_s", 10.0)) * 1e9)

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        """Attributes built from ``params`` that :meth:`reconfigure` replaces (subclasses extend)."""
        return {}


def _schema_nodes() -> set[str]:
    from perception_nodes.config import load_params

    return set(load_params())
