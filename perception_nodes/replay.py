"""Deterministic offline run of the graph over a bag (``perception-stack replay``).

Messages are delivered in bag order on a single thread, breadth first: a message goes to every
subscriber, then what they published goes on. Time is the *replay clock*: the bag's receive time of the
message being delivered plus the time the nodes spent on it, so pipeline latency means "what the graph
adds after the data arrived", and synchroniser time-outs fire at the same points in every run.

The clock models the ``live`` graph, where each node has its own executor thread: a message reaches a
node at the later of the moment it was published and the moment that node finished its previous
message. So a slow node (the LiDAR branch) does not delay the nodes beside it (the geometric occupancy
path, whose synchroniser would otherwise time out waiting for the obstacle cloud), while a node's own
chain of inputs still adds up, and each node's timer (``tick``) fires when that node is done; what a timer
publishes (a set a synchroniser time-out released) goes on to the subscribers like any output. Each bag
message starts on free nodes (a backlog across frames is not modelled; whether the graph keeps up shows
in ``processing_time`` and ``cyclic_time``).

Writes ``outputs.mcap`` (+ ``metadata.yaml``: the folder is a rosbag2 bag), ``latency.json`` and
``report.html`` with PNGs into the output folder.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from perception_nodes import topics
from perception_nodes.bags import BagReader, OutputBag
from perception_nodes.codecs.backend import default_backend, stamp_to_ns
from perception_nodes.config import load_params
from perception_nodes.evaluation import GROUND_TRUTH_TOPICS, Evaluator, write_metrics
from perception_nodes.graph import NodeCore, build_graph, resolve_topic
from perception_nodes.graph.bev_fusion import BevFusionNode
from perception_nodes.graph.camera_bev import CameraBevNode
from perception_nodes.graph.detection_fusion import DetectionFusionNode
from perception_nodes.graph.control import ControlNode
from perception_nodes.graph.fusion import FusionNode
from perception_nodes.graph.lidar_detection import LidarDetectionNode
from perception_nodes.graph.stereo_occupancy import StereoOccupancyNode
from perception_nodes.latency import LatencySeries, summarize
from perception_nodes.latency.gc_pause import freeze_startup_objects


END_WAIT_NS = 10 * 1_000_000_000
"""After the last message the clock runs this far (past every time-out) before the nodes finish."""
END_TICK_NS = 10_000_000
"""Timer period of the nodes over that span while any of them still holds input."""


class ReplayClock:
    """Bag receive time of the current message + the graph's own processing time since.

    Only time spent inside the nodes advances it (``with clock.running():``): reading the bag and
    writing outputs are the replay's business, not latency a vehicle would see.
    """

    def __init__(self) -> None:
        self._base_ns = 0
        self._acc_ns = 0
        self._t0: int | None = None

    def set(self, log_time_ns: int) -> None:
        """Deliver a message received at ``log_time_ns``.

        Each message starts on a free executor: a backlog is not modelled, so one slow stretch (or a
        busy machine) does not inflate every later frame. Whether the graph keeps up with the sensor
        shows in ``processing_time`` and ``cyclic_time`` against their budgets.
        """
        self._base_ns = int(log_time_ns)
        self._acc_ns = 0

    def now(self) -> int:
        running = time.perf_counter_ns() - self._t0 if self._t0 is not None else 0
        return self._base_ns + self._acc_ns + running

    @contextmanager
    def running(self) -> Iterator[None]:
        self._t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            self._acc_ns += time.perf_counter_ns() - self._t0
            self._t0 = None


@dataclass
class ReplayResult:
    out_dir: Path
    bag: Path
    input_frames: int
    output_counts: dict[str, int]
    latency: dict[str, Any]
    ground_truth: dict[int, Any] = field(default_factory=dict)  # stamp -> Detection3DArray
    grids: list[tuple[int, Any, Any]] = field(default_factory=list)  # (stamp, occupancy, uncertainty)
    samples: dict[str, list[float]] = field(default_factory=dict)  # "<node>/<key>" -> every sample (ms)
    metrics: dict[str, Any] | None = None  # scores against the bag's ground truth (metrics.json)
    skipped: dict[str, str] = field(default_factory=dict)  # nodes left out (cannot run here) -> why
    # LiDAR branch, last frames: (stamp, vision_msgs Detection3DArray, occupancy, uncertainty) with the
    # fused grids (the learned ones where no fused grid came)
    detections: list[tuple[int, Any, Any, Any]] = field(default_factory=list)
    # fusion node: last fused frames (stamp, occupancy, uncertainty, conflict) and every weight per branch
    fusion: list[tuple[int, Any, Any, Any]] = field(default_factory=list)
    fusion_weights: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    fusion_low_weights: dict[str, list[tuple[int, float, str]]] = field(default_factory=dict)  # (stamp, w, why)
    # stereo occupancy node, last frames: (stamp, occupancy, uncertainty)
    stereo_grids: list[tuple[int, Any, Any]] = field(default_factory=list)
    # camera -> BEV node, last frames: (stamp, occupancy, uncertainty)
    camera_grids: list[tuple[int, Any, Any]] = field(default_factory=list)
    # detection fusion node, last frames: (stamp, fused vision_msgs Detection3DArray)
    fused_detections: list[tuple[int, Any]] = field(default_factory=list)
    # control node: every ControlUncertainty (stamp, fused curvature, low, high, commanded curvature, speed,
    # fallback, reason) and the bag's /ground_truth/curvature (stamp, 1/m)
    control: list[tuple[int, float, float, float, float, float, bool, str]] = field(default_factory=list)
    control_truth: list[tuple[int, float]] = field(default_factory=list)
    # bev_fusion node: last frames (stamp, vision_msgs Detection3DArray) and every frame's mode (stamp, bit mask)
    bev_fusion_detections: list[tuple[int, Any]] = field(default_factory=list)
    bev_fusion_modes: list[tuple[int, int]] = field(default_factory=list)
    # which weights the LiDAR branch ran: folder and the training run that made them ("" = the branch did not run)
    lidar_weights: str = ""


def _weights_label(folder: Path, sidecar: Any) -> str:
    """Which weights a branch ran, for the report: the folder (relative to the repository when inside it) and the
    training run its sidecar names, if any."""
    path = Path(folder).resolve()
    repo = Path(__file__).resolve().parents[1]
    shown = str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)
    training = sidecar.get("training") if isinstance(sidecar, dict) else None
    config = training.get("config") if isinstance(training, dict) else None
    run = Path(str(config.get("out") or "")).name if isinstance(config, dict) else ""
    return shown + (f" (trained by the run {run})" if run else "")


class _ControlCapture:
    """Keeps what the report shows of the control node: the command's uncertainty over time."""

    def __init__(self, nodes: list[NodeCore]) -> None:
        node = next((n for n in nodes if isinstance(n, ControlNode)), None)
        self.topic = node.uncertainty_topic if node is not None else ""
        self.rows: list[tuple[int, float, float, float, float, float, bool, str]] = []
        self.truth: list[tuple[int, float]] = []

    def __call__(self, name: str, msg: Any) -> None:
        if self.topic and name == self.topic:
            stamp = stamp_to_ns(msg.header.stamp)
            self.rows.append((stamp, float(msg.curvature), float(msg.interval_low), float(msg.interval_high),
                              float(msg.commanded_curvature), float(msg.speed), bool(msg.fallback), str(msg.reason)))

    def ground_truth(self, rec: Any) -> None:
        if self.topic and rec.topic == topics.GT_CURVATURE:
            m = rec.msg
            self.truth.append((stamp_to_ns(m.header.stamp), float(m.data)))

    def fill(self, result: ReplayResult) -> None:
        result.control = sorted(self.rows)
        result.control_truth = sorted(self.truth)


class _FusionCapture:
    """Keeps what the report shows of the fusion node: its last grids and its weights over time."""

    def __init__(self, nodes: list[NodeCore], keep: int) -> None:
        node = next((n for n in nodes if isinstance(n, FusionNode)), None)
        self.node = node
        self.keep = keep
        self.roles: dict[str, str] = {}
        # per branch, frames weighted below the node's weight_warn: (stamp, weight, why) -- the report's table
        self.low: dict[str, list[tuple[int, float, str]]] = {}
        if node is not None:
            self.roles = {t: r for t, r in ((node.occupancy_topic, "occ"), (node.uncertainty_topic, "unc"),
                                            (node.conflict_topic, "con")) if t}
            if node.weights_topic:
                self.roles.update({node.weight_topic(b): f"w:{b}" for b in node.branches})
        self.grids: dict[int, dict[str, Any]] = {}
        self.weights: dict[str, list[tuple[int, float]]] = {}

    def __call__(self, name: str, msg: Any) -> None:
        role = self.roles.get(name)
        if role is None:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        if role.startswith("w:"):
            branch, w = role[2:], float(msg.data)
            self.weights.setdefault(branch, []).append((stamp, w))
            why = self.node.low_weight_reason(branch) if self.node is not None else None
            if why is not None:  # the node's newest frame is the one whose weight this is
                self.low.setdefault(branch, []).append((stamp, w, why))
            return
        self.grids.setdefault(stamp, {})[role] = msg
        for old in sorted(self.grids)[:-self.keep]:
            del self.grids[old]

    def fill(self, result: ReplayResult) -> None:
        result.fusion = [(s, g["occ"], g.get("unc"), g.get("con")) for s, g in sorted(self.grids.items()) if "occ" in g]
        result.fusion_weights = self.weights
        result.fusion_low_weights = self.low


class _BevFusionCapture:
    """Keeps what the report shows of the bev_fusion node: its last detection sets and its mode over time."""

    def __init__(self, nodes: list[NodeCore], keep: int) -> None:
        node = next((n for n in nodes if isinstance(n, BevFusionNode)), None)
        self.keep = keep
        self.det_topic = node.detections_topic if node is not None else None
        self.mode_topic = resolve_topic(node, node.mode_topic) if node is not None and node.mode_topic else None
        self.dets: dict[int, Any] = {}
        self.modes: list[tuple[int, int]] = []

    def __call__(self, name: str, msg: Any) -> None:
        if name != self.det_topic and name != self.mode_topic:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        if name == self.mode_topic:
            self.modes.append((stamp, int(msg.data)))
            return
        self.dets[stamp] = msg
        for old in sorted(self.dets)[:-self.keep]:
            del self.dets[old]

    def fill(self, result: ReplayResult) -> None:
        result.bev_fusion_detections = sorted(self.dets.items())
        result.bev_fusion_modes = self.modes


def data_flow_order(nodes: list[NodeCore]) -> list[NodeCore]:
    """``nodes`` with every producer before the nodes that subscribe to its outputs (ties and cycles in
    the given order), so what a node releases when it finishes still reaches its consumers, whatever
    order a params file lists them in."""
    produces = {n.name: {resolve_topic(n, p.topic) for p in n.outputs()} for n in nodes}
    consumes = {n.name: {p.topic for p in n.inputs()} for n in nodes}

    def feeds(m: NodeCore, n: NodeCore) -> bool:
        # a declared output, or any topic in m's private namespace (~/...: debug topics, health scalars)
        return bool(produces[m.name] & consumes[n.name]) or any(t.startswith(f"/{m.name}/") for t in consumes[n.name])

    waiting = list(nodes)
    order: list[NodeCore] = []
    while waiting:
        # the first node no waiting node feeds (a cycle: the first one)
        free = next((n for n in waiting if not any(feeds(m, n) for m in waiting if m is not n)), waiting[0])
        order.append(free)
        waiting.remove(free)
    return order


def _timeouts_s(tree: Any) -> Iterator[float]:
    """Every ``*timeout_s`` number in a params tree (how long a node may hold input for a silent one)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if str(key).endswith("timeout_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
                yield float(value)
            else:
                yield from _timeouts_s(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _timeouts_s(value)


def _end_to_end_node(nodes: list[NodeCore]) -> NodeCore:
    return next((n for n in nodes if n.name == "occupancy_grid"), nodes[-1])


def run_graph(
    bag: Path,
    params: dict[str, dict[str, Any]],
    out_dir: Path,
    *,
    progress: bool = True,
    on_output: Callable[[str, Any], None] | None = None,
    evaluator: Evaluator | None = None,
) -> ReplayResult:
    """Replay ``bag`` through the graph configured by ``params``; write outputs and latency.json."""
    clock = ReplayClock()
    skipped: dict[str, str] = {}
    # the replay clock is also the diagnostics' steady clock: a replay's /diagnostics are deterministic
    nodes = build_graph(params, backend=default_backend(), clock=clock.now, keep_all_latency=True,
                        steady_clock=clock.now, skipped=skipped)
    if not nodes:
        raise ValueError("the params file enables no node" + (f" that can run here ({skipped})" if skipped else ""))
    freeze_startup_objects()  # full GC passes over the start-up heap stall frames by 100+ ms (latency/gc_pause.py)
    subs: dict[str, list[NodeCore]] = {}
    for node in nodes:
        for port in node.inputs():
            subs.setdefault(port.topic, []).append(node)
    # the LiDAR scan paces the frames; else the first node's main input
    trigger = topics.LIDAR_POINTS if topics.LIDAR_POINTS in subs else nodes[0].inputs()[-1].topic
    if evaluator is not None and evaluator.lidar_to_base is None and subs.get(topics.LIDAR_POINTS):
        # ground-truth point counts use the rig transforms the graph itself uses (calibration + /tf_static)
        evaluator.lidar_to_base = subs[topics.LIDAR_POINTS][0].sensor_to_base
    bag_read = LatencySeries(keep_all=True)
    overhead = LatencySeries(keep_all=True)
    result = ReplayResult(out_dir, bag, 0, {}, {}, skipped=skipped)
    keep_grids = int(params.get("replay", {}).get("keep_grids_for_report", 0) or 8)
    grid_topics = {topics.OCCUPANCY_GRID, topics.OCCUPANCY_UNCERTAINTY}
    pending_grid: dict[int, dict[str, Any]] = {}
    # the LiDAR branch's detections with the evidential grid under them (fused, else learned), per stamp
    branch = next((n for n in nodes if isinstance(n, LidarDetectionNode)), None)
    branch_topics: dict[str, str] = {}
    if branch is not None:
        branch_topics = {t: role for t, role in ((branch.detections_topic, "det"),
                                                  (branch.occupancy_topic, "occ"),
                                                  (branch.occupancy_uncertainty_topic, "unc"),
                                                  (branch.fused_occupancy_topic, "fused_occ"),
                                                  (branch.fused_uncertainty_topic, "fused_unc")) if t}
    pending_det: dict[int, dict[str, Any]] = {}
    fusion_capture = _FusionCapture(nodes, keep_grids)
    control_capture = _ControlCapture(nodes)
    bev_capture = _BevFusionCapture(nodes, keep_grids)
    # the stereo node's grids per stamp (report panel beside the LiDAR grid)
    stereo = next((n for n in nodes if isinstance(n, StereoOccupancyNode)), None)
    stereo_topics = {stereo.output_topic: "occ", stereo.uncertainty_topic: "unc"} if stereo is not None else {}
    pending_stereo: dict[int, dict[str, Any]] = {}
    # the camera -> BEV node's grids per stamp (report panel beside the LiDAR and stereo grids)
    camera = next((n for n in nodes if isinstance(n, CameraBevNode)), None)
    camera_topics = {camera.output_topic: "occ", camera.uncertainty_topic: "unc"} if camera is not None else {}
    pending_camera: dict[int, dict[str, Any]] = {}
    # the detection fusion node's fused boxes per stamp (report panel beside the LiDAR boxes)
    det_fusion = next((n for n in nodes if isinstance(n, DetectionFusionNode)), None)
    fused_det_topic = det_fusion.detections_topic if det_fusion is not None else None
    fused_dets: dict[int, Any] = {}

    def record(name: str, msgtype: str, msg: Any, out_bag: OutputBag) -> None:
        """Everything a published message feeds besides its subscribers: the output bag, the caller's
        hook, the evaluator and the report's captures. One place, so an output counts the same whether
        a message, a node's timer (a synchroniser time-out) or the end of input released it."""
        out_bag.write(name, msgtype, clock.now(), msg)
        if on_output is not None:
            on_output(name, msg)
        if evaluator is not None:
            evaluator.prediction(name, msg)
        if name in grid_topics:
            pending_grid.setdefault(stamp_to_ns(msg.header.stamp), {})[name] = msg
        fusion_capture(name, msg)
        control_capture(name, msg)
        bev_capture(name, msg)
        for wanted, pending, role in ((branch_topics, pending_det, branch_topics.get(name)),
                                      (stereo_topics, pending_stereo, stereo_topics.get(name)),
                                      (camera_topics, pending_camera, camera_topics.get(name))):
            if name in wanted:
                pending.setdefault(stamp_to_ns(msg.header.stamp), {})[role] = msg
                for old in sorted(pending)[:-keep_grids]:
                    del pending[old]
        if name == fused_det_topic:
            fused_dets[stamp_to_ns(msg.header.stamp)] = msg
            for old in sorted(fused_dets)[:-keep_grids]:
                del fused_dets[old]

    def publish(node: NodeCore, emits: list[Any], at: int, queue: deque[tuple[str, Any, int]],
                out_bag: OutputBag) -> None:
        """A node's outputs, published at replay time ``at``: recorded, and queued for its subscribers."""
        for e in emits:
            name = resolve_topic(node, e.topic)
            record(name, e.msgtype, e.msg, out_bag)
            queue.append((name, e.msg, at))

    def propagate(queue: deque[tuple[str, Any, int]], free_at: dict[str, int], out_bag: OutputBag,
                  skip: frozenset[str] = frozenset()) -> int:
        """Deliver the queued (topic, message, replay time published) breadth first, each node busy
        until ``free_at`` (module doc), what they publish going on; returns when the last one was done.
        Nodes named in ``skip`` (already finished) no longer take messages."""
        last = clock.now()
        while queue:
            t, m, published = queue.popleft()
            for node in subs.get(t, ()):
                if node.name in skip:
                    continue
                clock.set(max(published, free_at.get(node.name, published)))
                with clock.running():
                    emits = node.handle(t, m)
                done = free_at[node.name] = clock.now()
                last = max(last, done)
                publish(node, emits, done, queue, out_bag)
        return last

    def held_inputs() -> int:
        return sum(node.pending(p.topic) for node in nodes for p in node.inputs())

    def deliver(topic: str, msg: Any, out_bag: OutputBag) -> dict[str, int]:
        # (topic, message, replay time it was published); each node busy until free_at (module doc)
        free_at: dict[str, int] = {}
        clock.set(propagate(deque([(topic, msg, clock.now())]), free_at, out_bag))
        return free_at

    def tick(out_bag: OutputBag, free_at: dict[str, int] | None = None) -> None:
        """Each node's timer fires once it is done with the message just delivered (on its own thread:
        a slow node does not move the clock of the others). What a timer publishes (sets a
        synchroniser time-out released) goes to the subscribers like any other output."""
        base = clock.now()
        free_at = dict(free_at or {})
        queue: deque[tuple[str, Any, int]] = deque()
        for node in nodes:
            clock.set(free_at.get(node.name, base))
            with clock.running():
                emits = node.tick()
            free_at[node.name] = clock.now()
            publish(node, emits, free_at[node.name], queue, out_bag)
        clock.set(max([base, propagate(queue, free_at, out_bag), *free_at.values()]))

    with BagReader(bag) as reader, OutputBag(out_dir) as out_bag:
        wanted = set(subs) | set(GROUND_TRUTH_TOPICS) | ({topics.GT_CURVATURE} if control_capture.topic else set())
        total = reader.message_counts.get(trigger, 0)
        bar = tqdm(total=total, desc="replay", unit="frame", disable=not progress)
        frame_read_ms = 0.0
        it = reader.records(topics=wanted)
        while True:
            t0 = time.perf_counter_ns()
            rec = next(it, None)
            read_ms = (time.perf_counter_ns() - t0) / 1e6
            if rec is None:
                break
            bag_read.add(read_ms)
            frame_read_ms += read_ms
            if evaluator is not None and rec.topic in evaluator.inputs:
                evaluator.ground_truth(rec.topic, rec.msg)  # ground truth (and the cloud for real-data truth)
            if rec.topic == topics.GT_CURVATURE and rec.topic not in subs:
                control_capture.ground_truth(rec)  # the control target, for the report's command plot
                continue
            if rec.topic in GROUND_TRUTH_TOPICS:
                if rec.topic == topics.GT_OBJECTS:
                    result.ground_truth[stamp_to_ns(rec.msg.header.stamp)] = rec.msg
                if rec.topic not in subs:
                    continue
            clock.set(rec.log_time_ns)
            free_at = deliver(rec.topic, rec.msg, out_bag)
            clock.set(rec.log_time_ns)  # a node the message did not reach ticks at its arrival
            tick(out_bag, free_at)
            if rec.topic == trigger:
                result.input_frames += 1
                bar.update(1)
                # per-frame replay overhead: reading + deserialising the frame's messages, plus the
                # nodes' decode and synchroniser time for it
                decode = sum(n.latency.series["decode"].all[-1] for n in nodes
                             if "decode" in n.latency.series and n.latency.series["decode"].all)
                sync = sum(n.latency.series["sync"].all[-1] for n in nodes
                           if "sync" in n.latency.series and n.latency.series["sync"].all)
                overhead.add(frame_read_ms + decode + sync)
                frame_read_ms = 0.0
        bar.close()
        # let synchroniser time-outs expire after the last message, as a live graph would: the timers
        # tick every END_TICK_NS while the nodes still hold input that a time-out may release (what
        # they hold changed within the longest time-out in the params), so a released set comes out
        # near its deadline with the latency a live graph would see; then once at +END_WAIT_NS. What
        # is still held then counts as dropped (end_of_input): every input message is accounted for.
        for node in nodes:
            node.end_of_input()
        end = clock.now() + END_WAIT_NS
        horizon = int(max([0.5, *_timeouts_s(params)]) * 1e9)
        held, changed = held_inputs(), clock.now()
        while held and clock.now() + END_TICK_NS < end and clock.now() - changed <= horizon:
            clock.set(clock.now() + END_TICK_NS)
            tick(out_bag)
            now_held = held_inputs()
            if now_held != held:
                held, changed = now_held, clock.now()
        clock.set(end)
        tick(out_bag)
        finished: set[str] = set()
        for node in data_flow_order(nodes):
            with clock.running():
                emits = node.finish()
            finished.add(node.name)
            queue: deque[tuple[str, Any, int]] = deque()
            publish(node, emits, clock.now(), queue, out_bag)
            # what a node releases at the end still reaches its consumers: they finish after it
            clock.set(max(clock.now(), propagate(queue, {}, out_bag, frozenset(finished))))
        result.output_counts = dict(out_bag.counts)

    for stamp in sorted(pending_grid)[-keep_grids:]:
        g = pending_grid[stamp]
        if len(g) == 2:
            result.grids.append((stamp, g[topics.OCCUPANCY_GRID], g[topics.OCCUPANCY_UNCERTAINTY]))
    fusion_capture.fill(result)
    control_capture.fill(result)
    bev_capture.fill(result)
    for stamp in sorted(pending_det):
        d = pending_det[stamp]
        occ, unc = (d.get("fused_occ"), d.get("fused_unc")) if "fused_occ" in d else (d.get("occ"), d.get("unc"))
        if "det" in d:
            result.detections.append((stamp, d["det"], occ, unc))
    result.stereo_grids = [(st, g["occ"], g["unc"]) for st, g in sorted(pending_stereo.items()) if len(g) == 2]
    result.camera_grids = [(st, g["occ"], g["unc"]) for st, g in sorted(pending_camera.items()) if len(g) == 2]
    result.fused_detections = sorted(fused_dets.items())
    if branch is not None and branch.weights_dir is not None:
        result.lidar_weights = _weights_label(branch.weights_dir, branch.sidecar)
    result.latency = latency_report(nodes, bag_read, overhead)
    result.samples = {f"{n.name}/{k}": list(v.all or []) for n in nodes for k, v in n.latency.series.items()}
    (out_dir / "latency.json").write_text(json.dumps(result.latency, indent=2, allow_nan=False))
    return result


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


#: the graph's output paths whose end-to-end latency the headline names: label -> the node ending the path
END_TO_END_PATHS: dict[str, str] = {"occupancy": "occupancy_grid", "lidar_branch": "lidar_detection"}


def end_to_end_paths(nodes: list[NodeCore]) -> dict[str, dict[str, Any]]:
    """``{label: {"node": name, **pipeline_latency summary}}`` for the paths of :data:`END_TO_END_PATHS`
    that ran (a path whose node is not in the graph is left out)."""
    by_name = {n.name: n for n in nodes}
    out: dict[str, dict[str, Any]] = {}
    for label, name in END_TO_END_PATHS.items():
        node = by_name.get(name)
        series = node.latency.series.get("pipeline_latency") if node is not None else None
        if series is not None:
            out[label] = {"node": name, **_clean(series.full_summary().to_dict())}
    return out


def latency_report(nodes: list[NodeCore], bag_read: LatencySeries, overhead: LatencySeries) -> dict[str, Any]:
    """The ``latency.json`` document (schema in README)."""
    stages = {}
    malformed: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    inputs: dict[str, dict[str, Any]] = {}
    for node in nodes:
        for key, series in node.latency.series.items():
            stages[f"{node.name}/{key}"] = _clean(series.full_summary().to_dict())
        acct = node.accounting()
        inputs[node.name] = acct
        for topic, a in acct.items():  # one message reaching two nodes counts once
            if a["malformed"]:
                malformed[topic] = max(malformed[topic], a["malformed"])
            # messages a node skips by design (calibration_monitor checks one scan in N) are not losses:
            # they stay in inputs[node][topic]["dropped"]["sampled_out"]
            total = sum(v for k, v in a["dropped"].items() if k != "sampled_out")
            if total:
                dropped[topic] = max(dropped[topic], total)
    e2e_node = _end_to_end_node(nodes)
    e2e = e2e_node.latency.series.get("pipeline_latency")
    return {
        "stages": stages,
        "end_to_end": _clean((e2e.full_summary() if e2e else summarize([])).to_dict()),
        # every output path's own end-to-end latency (scan stamp -> its output): the geometric occupancy
        # path ("end_to_end" above, kept for compatibility) and the LiDAR branch beside it
        "end_to_end_paths": end_to_end_paths(nodes),
        "malformed_inputs": dict(malformed),
        "dropped_inputs": dict(dropped),
        # per node and input topic: received == used + malformed + sum(dropped) + pending
        "inputs": inputs,
        "replay": {
            "bag_read_per_message": _clean(bag_read.full_summary().to_dict()),
            "overhead_per_frame": _clean(overhead.full_summary().to_dict()),
        },
        "frames_out": {n.name: n.frames_out for n in nodes},
    }


def replay(
    bag: str | Path | None = None,
    config: str | Path | None = None,
    out: str | Path = "out/replay",
    *,
    progress: bool = True,
    report: bool = True,
    require_ground_truth: bool = False,
    match_tolerance_s: float | None = None,
) -> ReplayResult:
    """Replay a bag (default: the embedded scenario); write outputs, latency, metrics (when the bag has
    ground truth) and the report. ``require_ground_truth`` makes a bag without any an error;
    ``match_tolerance_s``: how far a prediction's stamp may be from its ground truth's (default
    :data:`perception_nodes.evaluation.MATCH_TOLERANCE_S`)."""
    params = load_params(config)
    if bag is None:
        from perception_nodes.scenario.bag import default_scenario_bag

        bag = default_scenario_bag(progress=progress)
    bag = Path(bag)
    with BagReader(bag) as reader:
        gt_topics = tuple(t for t in GROUND_TRUTH_TOPICS if t in reader.topics)
        has_gt = bool(gt_topics)
        # box-labelled recordings (no occupancy truth): occupancy truth from boxes + an independent ground fit
        real_truth = topics.GT_OCCUPANCY not in reader.topics and topics.LIDAR_POINTS in reader.topics
    if require_ground_truth and not has_gt:
        raise ValueError(f"{bag} carries no ground truth ({', '.join(GROUND_TRUTH_TOPICS)})")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"real_truth": real_truth}
    if match_tolerance_s is not None:
        options["match_tolerance_s"] = match_tolerance_s
    evaluator = Evaluator(expected_gt=gt_topics, **options) if has_gt else None
    result = run_graph(bag, params, out_dir, progress=progress, evaluator=evaluator)
    if evaluator is not None:
        result.metrics = evaluator.results(out_dir)
        result.metrics["latency_end_to_end"] = result.latency["end_to_end"]
        write_metrics(result.metrics, out_dir)
    if report:
        from perception_nodes.report import write_report

        write_report(result)
    return result
