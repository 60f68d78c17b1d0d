"""Evidential occupancy grid node: raw + obstacle clouds -> OccupancyGrid and its uncertainty.

As in Autoware's pointcloud-based occupancy grid, the raw scan gives free space along every ray and
the obstacle cloud (from the ground segmentation node) says which returns are obstacles. The two are
paired by the ApproximateTime synchroniser with a per-input time-out on the obstacle cloud: if the
ground segmentation node stalls or dies, the grid is still published, from the raw scan segmented
inline, and the omission is counted on ``/diagnostics``.

Outputs: ``/perception/occupancy_grid`` (probability 0-100, -1 unknown) and
``/perception/occupancy_grid/uncertainty`` (Beta vacuity 0-100, 100 = no evidence), in ``base_link``;
per scan, with its stamp, the scan's health for the fusion node's gate (``scan_health_topic``, default
``~/debug/scan_health``: min of point ratio and azimuth coverage, 0..1, with its two parts on
``<topic>/point_ratio`` and ``<topic>/azimuth_coverage``; :mod:`perception_nodes.pipeline.sensor_health`).
"""

from __future__ import annotations

import time
from typing import Any

import numba
import numpy as np

from perception_nodes import topics
from perception_nodes.calibration import transform_points
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.outputs import occupancy_grid_msg
from perception_nodes.codecs.pointcloud2 import read_xyzi
from perception_nodes.config import to_dataclass
from perception_nodes.graph.health_topics import SCAN_HEALTH, scan_health_emits
from perception_nodes.graph.node import Emit, NodeCore, Port, synthetic_scan
from perception_nodes.pipeline.ground import GroundParams, segment_ground
from perception_nodes.pipeline.occupancy import GridSpec, OccupancyParams, evidential_occupancy, to_occupancy_msg_data
from perception_nodes.pipeline.sensor_health import ScanHealthMonitor, ScanHealthParams
from perception_nodes.errors import CalibrationError, MalformedMessageError
from perception_nodes.sync import ApproximateTimeSynchronizer, DropReason, SyncedSet

#: a stamp or clock going back by more than this is a time jump (bag loop, sensor clock reset)
TIME_JUMP_NS = 1_000_000_000

#: fallback matching of raw and obstacle points: a 1 cm lattice in base_link
_MATCH_RES = 0.01


def _lattice_keys(xyz: np.ndarray) -> np.ndarray:
    q = np.round(xyz[:, :3].astype(np.float64) / _MATCH_RES).astype(np.int64) + (1 << 20)
    return (q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2]


@numba.njit(cache=True)
def _subsequence_mask(raw: np.ndarray, sub: np.ndarray) -> tuple[np.ndarray, int]:  # pragma: no cover
    """Mask of ``raw`` rows that form ``sub`` when ``sub`` is an ordered subset of them (bit-equal xyz).

    Our ground segmentation node keeps the scan's order, so one linear walk matches in ~1 ms; rows of
    ``sub`` left unmatched (another producer, reordered points) make the caller fall back to hashing.
    """
    mask = np.zeros(raw.shape[0], dtype=np.bool_)
    j = 0
    for i in range(raw.shape[0]):
        if j < sub.shape[0] and raw[i, 0] == sub[j, 0] and raw[i, 1] == sub[j, 1] and raw[i, 2] == sub[j, 2]:
            mask[i] = True
            j += 1
    return mask, j


def obstacle_mask(raw_xyz: np.ndarray, obstacle_xyz: np.ndarray) -> np.ndarray:
    """Which raw returns (base_link) are in the obstacle cloud: ordered walk, else lattice hashing."""
    if len(obstacle_xyz) == 0:
        return np.zeros(len(raw_xyz), dtype=bool)
    raw = np.ascontiguousarray(raw_xyz[:, :3], dtype=np.float32)
    sub = np.ascontiguousarray(obstacle_xyz[:, :3], dtype=np.float32)
    mask, matched = _subsequence_mask(raw, sub)
    if matched == len(sub):
        return mask
    return np.isin(_lattice_keys(raw_xyz), _lattice_keys(obstacle_xyz))


class OccupancyGridNode(NodeCore):
    """See module doc. Stages timed: ``sync_wait``, ``decode``, ``match``, ``occupancy``, ``encode``.

    Both clouds are decoded (layout checked) when they arrive, so a malformed one is counted as such
    and never enters the synchroniser, where it would hold a slot and push valid clouds out. Each
    synchronised set is processed under its own fault isolation: a failure drops that set's messages
    (counted by reason) and the sets after it still go out. The synchroniser's drops are the node's
    drop counts, by reason; what it holds is ``pending``.
    """

    RAW, OBSTACLE = 0, 1

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.raw_topic = params.get("raw_topic", topics.LIDAR_POINTS)
        self.obstacle_topic = params.get("obstacle_topic", topics.OBSTACLE_POINTS)
        self.output_topic = params.get("output_topic", topics.OCCUPANCY_GRID)
        self.uncertainty_topic = params.get("uncertainty_topic", topics.OCCUPANCY_UNCERTAINTY)
        sync = params.get("sync", {})
        self.sync = ApproximateTimeSynchronizer(
            2,
            int(sync.get("queue_size", 5)),
            max_interval_s=float(sync.get("max_interval_s", 0.05)),
            input_timeouts_s=[None, float(sync["obstacle_timeout_s"]) if sync.get("obstacle_timeout_s") else None],
            names=[self.raw_topic, self.obstacle_topic],
        )
        self.grid = to_dataclass(GridSpec, params.get("grid", {}), f"{name}.grid.")
        self.evidence = to_dataclass(OccupancyParams, params.get("evidence", {}), f"{name}.evidence.")
        self.ground_params = to_dataclass(GroundParams, params.get("ground", {}), f"{name}.ground.")
        self.unknown_vacuity = float(params.get("unknown_vacuity", 1.0))
        self.scan_health_topic = str(params.get("scan_health_topic", SCAN_HEALTH) or "")
        self.scan_health = ScanHealthMonitor(to_dataclass(ScanHealthParams, params.get("scan_health", {}),
                                                          f"{name}.scan_health."))
        self.last_scan_health = None
        self._arrival_ns: dict[int, int] = {}
        self.fallback_frames = 0
        self._omitted_seen = 0
        self.time_jumps = 0
        self._last_now = 0
        self._last_stamp: list[int | None] = [None, None]  # per input: last stamp passed on
        # per input: a message whose stamp went back, held until the next one tells a stale stamp
        # (dropped, out_of_order) from a time jump (then it is the new timeline's first message)
        self._held: list[tuple[int, Any] | None] = [None, None]
        self._out_of_order = [0, 0]  # per input: dropped here (the synchroniser counts its own, added)

    def warmup(self) -> None:
        pts = synthetic_scan()
        ground = segment_ground(pts, self.ground_params)
        obstacle_mask(pts, pts[~ground])
        evidential_occupancy(pts, ground, (0.0, 0.0, 1.7), self.grid, self.evidence)

    def inputs(self) -> list[Port]:
        return super().inputs() + [
            Port(self.raw_topic, topics.POINTCLOUD2),
            Port(self.obstacle_topic, topics.POINTCLOUD2),
        ]

    def outputs(self) -> list[Port]:
        return super().outputs() + [
            Port(self.output_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"),
            Port(self.uncertainty_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"),
        ]

    def _index(self, topic: str) -> int:
        return self.RAW if topic == self.raw_topic else self.OBSTACLE

    def pending(self, topic: str) -> int:
        if topic not in (self.raw_topic, self.obstacle_topic):
            return 0
        idx = self._index(topic)
        return self.sync.pending[idx] + (self._held[idx] is not None)

    def _reset_sync(self, reason: str) -> None:
        """Reset the synchroniser; what it held counts as dropped for ``reason``."""
        for topic in (self.raw_topic, self.obstacle_topic):
            n = self.pending(topic)
            if n:
                self.mark_dropped(topic, reason, n)
        self.sync.reset()
        self._held = [None, None]
        self._arrival_ns.clear()
        self._sync_counts()

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        idx = self._index(topic)
        stamp = stamp_to_ns(msg.header.stamp)
        t0 = time.perf_counter_ns()
        xyzi = read_xyzi(msg)  # layout checked now: a malformed cloud never takes a synchroniser slot
        # range gate now too: an implausible cloud (raises, counted by handle) never takes a slot either;
        # the obstacle cloud comes from another node: gated the same way, its points not counted as raw
        xyzi = self.sanitize(topic, xyzi, count_points=idx == self.RAW)
        decode_ms = (time.perf_counter_ns() - t0) / 1e6
        admitted = self._admit(topic, idx, stamp, (msg, xyzi, decode_ms))
        now = self._monotonic_now()
        out: list[Emit] = []
        for k, st, entry in admitted:
            if k == self.RAW:
                self._arrival_ns[st] = now
            t0 = time.perf_counter_ns()
            sets = self.sync.add(k, st, entry, now_ns=now)
            self.latency.record("sync", (time.perf_counter_ns() - t0) / 1e6)
            out += self._process_sets(sets)
        return out

    def _admit(self, topic: str, idx: int, stamp: int, entry: Any) -> list[tuple[int, int, Any]]:
        """The (input, stamp, entry) to pass to the synchroniser now; a stamp going back is a time jump
        only when it persists.

        One sensor's stamps only go forward (DDS keeps a writer's order), so a step back is either one
        bad stamp (a stale or reordered message) or the input's clock going back for good (a bag looped,
        the sensor's clock was reset). The message is held until the input's next one decides: forward
        again, and it is dropped (``out_of_order``) while the valid messages in flight stay untouched;
        back again and not older (as in the synchroniser), or at once when the previous stamp was far
        ahead of the node's clock and this one is not (that one was the outlier), and it is a time
        jump: the synchroniser is reset (what it held counts as ``time_jump``) and the held messages
        start the new timeline, so a looping bag loses no frame.
        """
        last, held = self._last_stamp[idx], self._held[idx]
        if last is None or stamp >= last:
            if held is not None:
                self._held[idx] = None
                self._drop_out_of_order(topic, idx, held[0], last)
            self._last_stamp[idx] = stamp
            return [(idx, stamp, entry)]
        now = self.clock()
        last_was_outlier = now > 0 and last - now > TIME_JUMP_NS and stamp - now <= TIME_JUMP_NS
        if not last_was_outlier and (held is None or stamp < held[0]):
            if held is not None:  # not consistent with the previous step back: that one was stale
                self._drop_out_of_order(topic, idx, held[0], last)
            self._held[idx] = (stamp, entry)
            return []
        self._warn("time_jump", f"{topic}: stamp jumped back {(last - stamp) / 1e9:.1f} s; synchroniser reset")
        self.time_jumps += 1
        helds = [(k, *h) for k, h in enumerate(self._held) if h is not None and (k != idx or h[0] <= stamp)]
        if held is not None and held[0] > stamp:
            self._drop_out_of_order(topic, idx, held[0], last)
        self._held = [None, None]  # taken on below, not counted by the reset
        self._reset_sync("time_jump")
        self._last_now = 0
        self._last_stamp = [None, None]  # ordering history starts afresh on every input, as in the reset
        for k, st, _ in helds:
            self._last_stamp[k] = max(st, self._last_stamp[k] or st)
        self._last_stamp[idx] = stamp
        return [*helds, (idx, stamp, entry)]

    def _drop_out_of_order(self, topic: str, idx: int, stamp: int, last: int) -> None:
        self._out_of_order[idx] += 1
        self._sync_counts()
        self._warn("order", f"{topic}: stamp {stamp} ns was {(last - stamp) / 1e9:.3g} s older than the one "
                   "before it, and the next did not confirm a time jump; dropped")

    def on_tick(self) -> list[Emit]:
        return self._process_sets(self.sync.poll(self._monotonic_now()))

    def finish(self) -> list[Emit]:
        out = self.on_tick()
        self._reset_sync("end_of_input")
        return out

    def _monotonic_now(self) -> int:
        """The node clock, held from going back by small steps (replay restarts it at each message's
        receive time) so time-outs never see time reverse; a big step back (a looping bag under sim
        time) restarts it."""
        now = self.clock()
        if now < self._last_now - TIME_JUMP_NS:
            self._reset_sync("time_jump")
            self._last_now = now
        self._last_now = max(now, self._last_now)
        return self._last_now

    def _sync_counts(self) -> None:
        """The synchroniser's drops, by reason, are the node's (RESET excluded: :meth:`_reset_sync`
        counts those under the node's own reason)."""
        for topic, idx in ((self.raw_topic, self.RAW), (self.obstacle_topic, self.OBSTACLE)):
            for reason, per_input in self.sync.dropped_by_reason.items():
                n = per_input[idx] + (self._out_of_order[idx] if reason is DropReason.OUT_OF_ORDER else 0)
                if reason is not DropReason.RESET and n:
                    self.set_dropped(topic, reason.value, n)

    def _process_sets(self, sets: list[SyncedSet]) -> list[Emit]:
        out: list[Emit] = []
        for s in sets:
            # fault isolation per set: a failure drops this set's messages, never the sets after it
            try:
                out += self._process(s)
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, MalformedMessageError):
                    reason = "malformed_in_set"
                    self._warn("malformed", f"{self.raw_topic}: {exc}")
                elif isinstance(exc, CalibrationError):
                    reason = "calibration"
                    self._warn("calibration", f"{self.raw_topic}: {exc}")
                else:
                    reason = "error"
                    self._fault(self.raw_topic, exc)
                for topic, m in zip((self.raw_topic, self.obstacle_topic), s.messages, strict=True):
                    if m is not None:
                        self.mark_dropped(topic, reason)
        self._sync_counts()
        if self.sync.omitted[self.OBSTACLE] > self._omitted_seen:  # a new omission (warnings then expire)
            self._omitted_seen = self.sync.omitted[self.OBSTACLE]
            self._warn("sync", f"{self.obstacle_topic} missing for {self.sync.omitted[self.OBSTACLE]} frame(s); "
                       "segmented inline")
        return out

    def _process(self, s: SyncedSet) -> list[Emit]:
        raw_entry, obstacle_entry = s.messages
        if raw_entry is None:  # cannot happen while the raw input has no time-out; never silently
            self.mark_dropped(self.obstacle_topic, "no_raw")
            return []
        raw, raw_xyzi, decode_ms = raw_entry
        obst = obstacle_entry[1] if obstacle_entry is not None else None
        stamp = stamp_to_ns(raw.header.stamp)
        arrival = self._arrival_ns.pop(stamp, None)
        for old in [k for k in self._arrival_ns if k < stamp]:
            del self._arrival_ns[old]
        with self.latency.frame(stamp) as frame:
            if arrival is not None:
                frame.stages_ms["sync_wait"] = max(0.0, (self.clock() - arrival) / 1e6)
            # decoded and range-gated on arrival (on_message)
            frame.stages_ms["decode"] = decode_ms + (obstacle_entry[2] if obstacle_entry is not None else 0.0)
            pts = raw_xyzi
            health_emits = self._scan_health_emits(stamp, raw_xyzi)  # sensor frame, range-gated
            with self.latency.stage("transform"):
                to_base = self.sensor_to_base(raw.header.frame_id)
                pts = transform_points(to_base, pts)
            with self.latency.stage("match"):
                if obst is not None:
                    ground = ~obstacle_mask(pts, obst)
                else:
                    self.fallback_frames += 1
                    ground = segment_ground(pts, self.ground_params) if len(pts) else np.zeros(0, bool)
            with self.latency.stage("occupancy"):
                grid = evidential_occupancy(pts, ground, to_base[:3, 3], self.grid, self.evidence)
                prob, vacuity = to_occupancy_msg_data(grid, unknown_vacuity=self.unknown_vacuity)
            with self.latency.stage("encode"):
                origin = (*self.grid.origin, 0.0)
                out = health_emits + [  # health first: a consumer has it when the grid of its stamp comes
                    Emit(self.output_topic, topics.OCCUPANCY_GRID_TYPE,
                         occupancy_grid_msg(prob, self.grid.resolution, origin, stamp, self.base_frame, self.backend)),
                    Emit(self.uncertainty_topic, topics.OCCUPANCY_GRID_TYPE,
                         occupancy_grid_msg(vacuity, self.grid.resolution, origin, stamp, self.base_frame, self.backend)),
                ]
        self.frames_out += 1
        self.mark_used(self.raw_topic)
        if obstacle_entry is not None:
            self.mark_used(self.obstacle_topic)
        return out + self.debug_emits(frame)

    def _scan_health_emits(self, stamp: int, xyz: np.ndarray) -> list[Emit]:
        """The scan's health (and its parts) for the fusion node's gate; none when the topic is ""."""
        self.last_scan_health = self.scan_health.assess(xyz)
        return scan_health_emits(self, self.scan_health_topic, stamp, self.last_scan_health)

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super()._derived(params)
        out["grid"] = to_dataclass(GridSpec, params.get("grid", {}), f"{self.name}.grid.")
        out["evidence"] = to_dataclass(OccupancyParams, params.get("evidence", {}), f"{self.name}.evidence.")
        out["ground_params"] = to_dataclass(GroundParams, params.get("ground", {}), f"{self.name}.ground.")
        out["unknown_vacuity"] = float(params.get("unknown_vacuity", 1.0))
        sync = params.get("sync", {})
        # the synchroniser keeps its queues and counters; only its time limits change
        probe = ApproximateTimeSynchronizer(
            2, int(sync.get("queue_size", 5)), max_interval_s=float(sync.get("max_interval_s", 0.05)),
            input_timeouts_s=[None, float(sync["obstacle_timeout_s"]) if sync.get("obstacle_timeout_s") else None])
        for attr in ("_max_interval_ns", "_timeouts_ns", "_uses_clock"):
            setattr(self.sync, attr, getattr(probe, attr))  # applied only if every value above was valid
        return out
