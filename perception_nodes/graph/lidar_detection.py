"""LiDAR branch node: one scan in -> 3D detections with covariance, learned occupancy, curvature out.

Runs the evidential CenterPoint-style network (:mod:`perception_nodes.models`) under the runtime named by
the ``runtime`` parameter (``torch``; ``onnxruntime`` where registered), on weights from the ``weights``
folder (empty: the packaged default). Per scan it publishes (topics in ``perception.params.yaml``):

* ``detections_topic``: ``vision_msgs/Detection3DArray``; class ids are names, score = the Dirichlet
  expected probability, ``results[].pose.covariance`` = the NIG predictive covariance of centre and yaw,
  and a last result ``dirichlet_strength`` whose score is the Dirichlet strength S (not a class:
  :mod:`perception_nodes.codecs.vision`); ``objects_topic`` (optional): the same boxes as
  ``perception_interfaces/Detection3DArray``, what ``perception-stack evaluate`` scores;
* ``markers_topic``: ``visualization_msgs/MarkerArray`` boxes, a DELETEALL first so stale boxes vanish;
* ``occupancy_topic`` / ``occupancy_uncertainty_topic``: the learned Beta evidence as probability and
  vacuity grids on the network's occupancy grid (the occupancy node's grid with the packaged config);
* ``fused_occupancy_topic`` / ``fused_uncertainty_topic``: learned + geometric evidence
  (:mod:`perception_nodes.pipeline.occupancy_fusion`), on the geometric grid, once the occupancy node's two
  grids of the same scan (``geometric_*_topic``, matched by stamp) have arrived; the geometric grid stays on
  its own topic;
* ``curvature_topic``: ``perception_interfaces/CurvaturePrediction`` (curvature and its variance per horizon);
* ``scan_health_topic`` (default ``~/debug/scan_health``): the scan's health for the fusion node's gate,
  min of point ratio and azimuth coverage (0..1; parts on ``<topic>/point_ratio`` and
  ``<topic>/azimuth_coverage``), :mod:`perception_nodes.pipeline.sensor_health`, stamped with the scan.

Stages timed (``~/debug/processing_time/<stage>_ms``): ``decode`` (PointCloud2 -> array, range gate, point
cap), ``transform`` (sensor -> base_link, the vehicle's own returns dropped), the runtime's ``voxelize``, ``backbone``, ``bev_net``,
``heads`` (an engine that fuses stages reports them joined), ``decode_boxes`` (peaks -> boxes),
``refine_boxes`` (car headings and placement fitted to the scan's points, the ``box_refinement`` params,
:mod:`perception_nodes.pipeline.box_refine`; ``refined_boxes`` on ``/diagnostics`` counts them; then the learned
box head of ``box_head``, :mod:`perception_nodes.models.box_head`, which corrects each refined car box from the
points around it; ``head_boxes`` counts them, ``box_head`` names the folder, and it runs only where the
refinement is on),
``occupancy`` (learned grids), ``encode`` (messages). Fusion with the geometric grid happens when that grid
arrives and is recorded as the ``fusion`` series.

The vehicle's own returns are dropped before the network (``min_return_range`` from the sensor and the
``ego_box`` footprint, :mod:`perception_nodes.pipeline.self_returns`; counted as ``points_near_sensor`` /
``points_ego_box`` on ``/diagnostics``): no generated training scan has them, and the network takes the
blob of a roof or mount for an object.

Bad input never stops the node: an empty cloud, one whose points are all NaN or all outside the network's
crop gives an empty (valid) detection array, vacuous learned grids and an ``empty`` warning on
``/diagnostics``; a cloud above ``max_points`` is thinned by a fixed stride (deterministic) and the points
left out are counted (``points_over_max_points``), so a 10x cloud costs little more than a normal one.

Scores and covariances are published *after* the post-hoc calibration stored in the weights' sidecar
(:mod:`perception_nodes.models.calibration`: evidence scale, centre / z / yaw variance scales fitted on
validation scenes; identity when the sidecar has none); ``/diagnostics`` names it.

Weights: with ``weights`` empty and no packaged weights yet (or without PyTorch), the node is unavailable
(:class:`~perception_nodes.errors.NodeUnavailable`): replay and ``live`` skip it and say so once; a
launched node fails its lifecycle ``configure`` with that reason. A ``weights`` folder that is missing,
corrupt or made for another network fails ``configure`` with the reason
(:class:`~perception_nodes.models.weights_io.WeightsError`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.calibration import transform_points
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.detections import DETECTIONS_TYPE
from perception_nodes.codecs.outputs import DiagnosticStatusData, occupancy_grid_msg
from perception_nodes.codecs.pointcloud2 import read_xyzi
from perception_nodes.codecs.vision import CURVATURE_TYPE, VISION_DETECTIONS_TYPE
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.errors import NodeUnavailable
from perception_nodes.pipeline.box_refine import BoxRefinement, refine_detections
from perception_nodes.graph.detection_outputs import decode_options, detection_frame_emits
from perception_nodes.graph.health_topics import SCAN_HEALTH, scan_health_emits
from perception_nodes.graph.node import ERROR, OK, WARN, Emit, NodeCore, Port, synthetic_scan
from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, to_occupancy_msg_data
from perception_nodes.pipeline.occupancy_fusion import evidence_from_grid_data, fuse_evidence, resample_nearest
from perception_nodes.pipeline.self_returns import self_return_settings, self_returns
from perception_nodes.pipeline.sensor_health import ScanHealthMonitor, ScanHealthParams

#: default topics (documented in perception.params.yaml)
DETECTIONS = "/perception/lidar/detections"
MARKERS = "/perception/lidar/detections/markers"
LEARNED_OCCUPANCY = "/perception/lidar/occupancy_grid"
LEARNED_UNCERTAINTY = "/perception/lidar/occupancy_grid/uncertainty"
FUSED_OCCUPANCY = "/perception/occupancy_grid/fused"
FUSED_UNCERTAINTY = "/perception/occupancy_grid/fused/uncertainty"
CURVATURE = "/perception/lidar/curvature"
OBJECTS = "/perception/objects"


def thin_points(points: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` rows, every ``k``-th (``k = ceil(N / max_points)``): deterministic, and on a
    scan stored ring by ring it thins every ring alike instead of cutting off part of the field of view."""
    n = len(points)
    if max_points <= 0 or n <= max_points:
        return points
    k = -(-n // max_points)
    return points[::k]


def network_points(node: Any, topic: str, pts: np.ndarray) -> np.ndarray:
    """The sanitised cloud as a LiDAR network takes it: rows with non-finite intensity removed (finite
    xyz, garbage intensity: the network would drop them silently) and at most ``node.max_points`` kept,
    each removal counted in ``node.points_dropped`` and warned about (lidar_detection and bev_fusion)."""
    bad_i = ~np.isfinite(pts[:, 3])
    if bad_i.any():
        node.points_dropped["nonfinite_intensity"] += int(bad_i.sum())
        node._warn("nonfinite_intensity", f"{topic}: {node.points_dropped['nonfinite_intensity']} points "  # noqa: SLF001
                   "with non-finite intensity removed so far")
        pts = pts[~bad_i]
    if node.max_points > 0 and len(pts) > node.max_points:
        kept = thin_points(pts, node.max_points)
        node.points_dropped["over_max_points"] += len(pts) - len(kept)
        node._warn("max_points", f"{topic}: a cloud of {len(pts)} points thinned to {len(kept)} "  # noqa: SLF001
                   f"(max_points = {node.max_points})")
        pts = kept
    return pts


def self_return_params(params: dict[str, Any], name: str) -> dict[str, Any]:
    """``min_return_range`` and ``ego_box`` of a node that feeds a LiDAR network (lidar_detection, bev_fusion):
    the vehicle's own returns (its mount and body), which no generated training scan has. Absent: off."""
    return self_return_settings({k: params[k] for k in ("min_return_range", "ego_box") if k in params}, name)


def drop_self_returns(node: Any, pts: np.ndarray, sensor_xy: Any) -> np.ndarray:
    """``pts`` (base_link) without the vehicle's own returns (:mod:`perception_nodes.pipeline.self_returns`:
    ``node.min_return_range`` from the sensor, inside ``node.ego_box``), each removal counted in
    ``node.points_dropped`` (``points_near_sensor``, ``points_ego_box`` on ``/diagnostics``). Not a warning: a
    roof-mounted sensor sees its car on every scan."""
    if node.min_return_range <= 0 and node.ego_box is None:
        return pts
    near, body = self_returns(pts, sensor_xy, min_return_range=node.min_return_range, ego_box=node.ego_box)
    node.points_dropped["near_sensor"] += int(near.sum())
    node.points_dropped["ego_box"] += int(body.sum())
    drop = near | body
    return pts[~drop] if drop.any() else pts


class LidarDetectionNode(NodeCore):
    """See module doc."""

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.input_topic = params.get("input_topic", topics.LIDAR_POINTS)
        self.detections_topic = params.get("detections_topic", DETECTIONS)
        self.objects_topic = params.get("objects_topic", "")
        self.markers_topic = params.get("markers_topic", MARKERS)
        self.occupancy_topic = params.get("occupancy_topic", LEARNED_OCCUPANCY)
        self.occupancy_uncertainty_topic = params.get("occupancy_uncertainty_topic", LEARNED_UNCERTAINTY)
        self.fused_occupancy_topic = params.get("fused_occupancy_topic", FUSED_OCCUPANCY)
        self.fused_uncertainty_topic = params.get("fused_uncertainty_topic", FUSED_UNCERTAINTY)
        self.geometric_occupancy_topic = params.get("geometric_occupancy_topic", topics.OCCUPANCY_GRID)
        self.geometric_uncertainty_topic = params.get("geometric_uncertainty_topic", topics.OCCUPANCY_UNCERTAINTY)
        self.curvature_topic = params.get("curvature_topic", CURVATURE)
        self.runtime_name = str(params.get("runtime", "torch"))
        self.weights = str(params.get("weights", "") or "")
        self.threads = int(params.get("threads", 0))
        self.sparse_tune_file = str(params.get("sparse_tune_file", "") or "")
        self.tune_status, self.tune_ok = "static defaults or $ENGINES_SPARSE_TUNE_FILE (no sparse_tune_file)", True
        self.fusion_queue_size = int(params.get("fusion_queue_size", 4))
        self.scan_health_topic = str(params.get("scan_health_topic", SCAN_HEALTH) or "")
        self.scan_health = ScanHealthMonitor(to_dataclass(ScanHealthParams, params.get("scan_health", {}),
                                                          f"{name}.scan_health."))
        self.last_scan_health: Any = None
        for attr, value in self._derived(params).items():
            setattr(self, attr, value)
        self.runtime: Any = None
        self.net: Any = None
        self.sidecar: dict[str, Any] = {}
        self.calibration: Any = None  # DetectionCalibration from the sidecar (identity when it has none)
        self.weights_dir: Path | None = None
        self.load_error: str | None = None
        self.empty_frames = 0
        self.detections_out = 0
        self.refined_boxes = 0
        self.head_boxes = 0
        self.box_head: Any = None  # the loaded head (perception_nodes.models.box_head.BoxHead) or None
        self._head_for: str | None = None  # the box_head value the loaded head belongs to
        self.head_status = ""  # why a named head is not running ("" when it runs or none is named)
        self.fused_out = 0
        # learned evidence of recent scans (stamp -> (r, s, spec)) waiting for the geometric grids
        self._learned: OrderedDict[int, tuple[np.ndarray, np.ndarray, GridSpec]] = OrderedDict()
        # geometric grids held until the learned evidence of their scan is there (stamp -> topic -> msg)
        self._geo: OrderedDict[int, dict[str, Any]] = OrderedDict()

    # --- parameters ---------------------------------------------------------------------------
    @property
    def fusion_enabled(self) -> bool:
        return bool(self.geometric_occupancy_topic and self.geometric_uncertainty_topic and self.fused_occupancy_topic)

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super()._derived(params)
        out["decode_options"] = decode_options(params, self.name)
        out["box_refinement"] = BoxRefinement.from_mapping(params.get("box_refinement"), f"{self.name}.box_refinement")
        head = params.get("box_head", "lidar_box_head")
        if not isinstance(head, str):
            raise ConfigError(f"{self.name}.box_head: a weights folder or packaged name (\"\" = off), got {head!r}")
        out["box_head_name"] = head
        out["max_points"] = int(params.get("max_points", 200_000))
        out["learned_occupancy_weight"] = float(params.get("learned_occupancy_weight", 1.0))
        out["unknown_vacuity"] = float(params.get("unknown_vacuity", 1.0))
        out["marker_lifetime_s"] = float(params.get("marker_lifetime_s", 0.2))
        out.update(self_return_params(params, self.name))
        return out

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        ports = super().inputs() + [Port(self.input_topic, topics.POINTCLOUD2)]
        if self.fusion_enabled:
            ports += [Port(self.geometric_occupancy_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"),
                      Port(self.geometric_uncertainty_topic, topics.OCCUPANCY_GRID_TYPE, "reliable")]
        return ports

    def outputs(self) -> list[Port]:
        out = super().outputs() + [Port(self.detections_topic, VISION_DETECTIONS_TYPE, "reliable")]
        for topic, msgtype in ((self.objects_topic, DETECTIONS_TYPE), (self.markers_topic, topics.MARKER_ARRAY),
                               (self.occupancy_topic, topics.OCCUPANCY_GRID_TYPE),
                               (self.occupancy_uncertainty_topic, topics.OCCUPANCY_GRID_TYPE),
                               (self.curvature_topic, CURVATURE_TYPE)):
            if topic:
                out.append(Port(topic, msgtype, "reliable"))
        if self.fusion_enabled:
            out.append(Port(self.fused_occupancy_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"))
            if self.fused_uncertainty_topic:
                out.append(Port(self.fused_uncertainty_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"))
        return out

    # --- network --------------------------------------------------------------------------------
    def _weights_folder(self) -> Path:
        from perception_nodes.models.weights_io import resolve_weights_folder

        return resolve_weights_folder(self.weights, "lidar_detection")

    def load(self) -> None:
        """Weights -> network -> runtime. Raises NodeUnavailable (no packaged weights yet), WeightsError
        (a bad weights folder) or RuntimeUnavailable (the runtime cannot run here), each with the reason."""
        try:  # torch and safetensors come with the learned extra, not with a core-only install
            from perception_nodes.models.runtime import make_runtime
            from perception_nodes.models.weights_io import load_lidar_detection, read_sidecar
        except ImportError as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise NodeUnavailable(f"{self.name}: the network needs PyTorch, which is not installed here ({exc})") from exc

        folder = self._weights_folder()
        if not self.weights:
            try:
                read_sidecar(folder, "lidar_detection")
            except Exception as exc:  # noqa: BLE001 - the packaged default is simply not there yet
                raise NodeUnavailable(f"{self.name}: no packaged network weights yet ({exc}); set the "
                                      "`weights` parameter to a weights folder") from exc
        try:
            from perception_nodes.models.calibration import DetectionCalibration

            net, side = load_lidar_detection(folder)
            unknown = [c for c in self.box_refinement.classes if c not in net.config.classes]
            if self.box_refinement.enabled and unknown:
                raise ConfigError(f"{self.name}.box_refinement.classes: {', '.join(unknown)} not among the network's "
                                  f"classes ({', '.join(net.config.classes)})")
            self._configure_tuning(net)
            self._load_head(net.config.classes, folder)
            calibration = DetectionCalibration.from_sidecar(side)
            options = {"threads": self.threads} if self.threads > 0 else {}
            runtime = make_runtime(self.runtime_name, net, **options)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise
        self.net, self.sidecar, self.runtime, self.weights_dir = net, side, runtime, folder
        self.calibration = calibration
        self.load_error = None

    def _load_head(self, classes: Any, detector: Any) -> None:
        """The learned box head named by ``box_head`` ("" = none); raises WeightsError (missing or corrupt folder)
        or ConfigError (a class the network lacks), which fail ``configure`` with the reason. A head trained on
        another detector's boxes (its sidecar's detector_sha256) is not run, and ``box_head`` on ``/diagnostics``
        says why: the opt-in weights and the user's own get the boxes they were evaluated with."""
        self.box_head, self._head_for, self.head_status = None, self.box_head_name, ""
        if not self.box_head_name:
            return
        from perception_nodes.models.box_head import NETWORK, load_box_head, mismatch
        from perception_nodes.models.weights_io import resolve_weights_folder

        head = load_box_head(resolve_weights_folder(self.box_head_name, NETWORK))
        why = mismatch(head, detector)
        if why is not None:
            self.head_status = f"off: {why}"
            return
        unknown = [c for c in head.config.classes if c not in classes]
        if unknown:
            raise ConfigError(f"{self.name}.box_head: {head.source} corrects {', '.join(unknown)}, not among the "
                              f"network's classes ({', '.join(classes)})")
        self.box_head = head

    def _configure_tuning(self, net: Any) -> None:
        """The sparse backbone's dataflow choices from ``sparse_tune_file`` (looked up, never timed while
        running). A bad or foreign file is not fatal: static defaults, and a WARN diagnostic says why."""
        if not self.sparse_tune_file:
            return
        from engines.sparse.tunefile import configure, device_model

        path = self.sparse_tune_file
        try:
            tuner = configure(net, path)
        except Exception as exc:  # noqa: BLE001 - missing, unreadable or malformed: run on static defaults
            self.tune_status, self.tune_ok = f"{path} unusable ({type(exc).__name__}: {exc}); static defaults", False
            return
        if tuner.device_known:
            self.tune_status, self.tune_ok = f"{path} (entry for this CPU)", True
        else:
            self.tune_status = f"{path} has no entry for {device_model('cpu')!r}; static defaults"
            self.tune_ok = False

    def warmup(self) -> None:
        """Load the network (lifecycle configure) and run it once, so the first scan does not pay for
        allocation, autotuning or kernel-map set-up."""
        if self.runtime is None:
            self.load()
        import torch

        self.runtime.infer(torch.from_numpy(synthetic_scan()))

    # --- messages -------------------------------------------------------------------------------
    def pending(self, topic: str) -> int:
        if topic in (self.geometric_occupancy_topic, self.geometric_uncertainty_topic):
            return sum(topic in held for held in self._geo.values())
        return 0

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        if topic == self.input_topic:
            return self._on_scan(topic, msg)
        return self._on_geometric(topic, msg)

    def _on_scan(self, topic: str, msg: Any) -> list[Emit]:
        import torch

        from perception_nodes.models.decode import decode_batch

        if self.runtime is None:  # not warmed up (e.g. a core driven directly): load now, errors count
            self.load()
        stamp = stamp_to_ns(msg.header.stamp)
        net = self.net
        with self.latency.frame(stamp) as frame:
            with self.latency.stage("decode"):
                pts = self.sanitize(topic, read_xyzi(msg))
                self.last_scan_health = self.scan_health.assess(pts)  # sensor frame, range-gated
                pts = network_points(self, topic, pts)
            with self.latency.stage("transform"):
                to_base = self.sensor_to_base(msg.header.frame_id)
                pts = drop_self_returns(self, transform_points(to_base, pts), to_base[:2, 3])
            out = self.runtime.infer(torch.from_numpy(pts), self.latency.stage)
            with self.latency.stage("decode_boxes"):
                det = decode_batch(out, net.head_grid, net.config.classes, calibration=self.calibration,
                                   **self.decode_options)[0]
            with self.latency.stage("refine_boxes"):
                det, refined = refine_detections(det, pts, self.box_refinement, sensor_xy=to_base[:2, 3])
                self.refined_boxes += refined
                det = self._head_boxes(det, pts, to_base[:2, 3], net.config.classes)
            voxels = int(out.num_voxels[0])
            with self.latency.stage("occupancy"):
                occ = out.occupancy_evidence[0].detach().cpu().numpy()
                g = net.config.occupancy_grid
                spec = GridSpec(resolution=g.cell, size_x=g.size_x, size_y=g.size_y, origin=(g.origin_x, g.origin_y))
                r, s = np.ascontiguousarray(occ[0], np.float32), np.ascontiguousarray(occ[1], np.float32)
                prob, vac = to_occupancy_msg_data(BetaGrid(r, s, spec), unknown_vacuity=self.unknown_vacuity)
            with self.latency.stage("encode"):
                # health first: a consumer has it when the grids of its stamp come
                emits = scan_health_emits(self, self.scan_health_topic, stamp, self.last_scan_health)
                emits += self._encode(stamp, det, prob, vac, spec, out)
        if voxels == 0:
            self.empty_frames += 1
            self._warn("empty", f"{topic}: scan at stamp {stamp} ns has no usable point inside the network's "
                       f"input range {tuple(net.config.input_range)} ({len(pts)} points after the range gate and the "
                       "self-return filter): "
                       "empty detections published")
        self.frames_out += 1
        self.detections_out += len(det)
        self.mark_used(topic)
        if self.fusion_enabled:
            self._learned[stamp] = (r, s, spec)
            while len(self._learned) > self.fusion_queue_size:
                self._learned.popitem(last=False)
            emits += self._fuse_if_ready(stamp)
        return emits + self.debug_emits(frame)

    def _encode(self, stamp: int, det: Any, prob: np.ndarray, vac: np.ndarray, spec: GridSpec, out: Any) -> list[Emit]:
        return detection_frame_emits(self, stamp, det, prob, vac, spec, out.curvature,
                                     self.net.config.curvature_horizons_m, "lidar_detections")

    # --- fusion with the geometric grid ------------------------------------------------------------
    def _head_boxes(self, det: Any, pts: np.ndarray, sensor_xy: np.ndarray, classes: Any) -> Any:
        """The refined boxes corrected by the box head (none where the refinement is off). A ``box_head`` set
        after configure is loaded here; if it cannot be, the boxes go out as refined and a warning says why
        (the node keeps running)."""
        if self._head_for != self.box_head_name:
            try:
                self._load_head(classes, self.weights_dir)
            except Exception as exc:  # noqa: BLE001 - a bad folder named at run time: refined boxes, and say so
                self.box_head = None
                self.head_status = f"not usable: {type(exc).__name__}: {exc}"[:300]
        if self.box_head_name and self.box_head is None and self.head_status.startswith("not usable"):
            # every scan while it lasts (a warning fades after warning_hold_s; this one must not)
            self._warn("box_head", f"box_head {self.box_head_name!r} {self.head_status}; boxes published as refined")
        br = self.box_refinement
        if self.box_head is None or not br.enabled or not set(self.box_head.config.classes) <= set(br.classes):
            return det  # the head corrects refined boxes only
        from perception_nodes.models.box_head import apply_box_head

        try:
            det, n = apply_box_head(det, pts, self.box_head, sensor_xy=sensor_xy)
        except Exception as exc:  # noqa: BLE001 - a failing head must not cost the scan: its refined boxes go out
            self._fault("box_head", exc)
            return det
        self.head_boxes += n
        return det

    def _on_geometric(self, topic: str, msg: Any) -> list[Emit]:
        stamp = stamp_to_ns(msg.header.stamp)
        held = self._geo.setdefault(stamp, {})
        if topic in held:  # a second grid for the same scan: the newer one counts
            self.mark_dropped(topic, "duplicate")
        held[topic] = msg
        out = self._fuse_if_ready(stamp)
        while len(self._geo) > self.fusion_queue_size:  # oldest first: its scan's learned grid never came
            _, old = self._geo.popitem(last=False)
            for t in old:
                self.mark_dropped(t, "unmatched")
            self._warn("fusion", f"geometric grids without a learned grid of the same stamp dropped "
                       f"(fusion_queue_size = {self.fusion_queue_size})")
        return out

    def _fuse_if_ready(self, stamp: int) -> list[Emit]:
        held = self._geo.get(stamp)
        learned = self._learned.get(stamp)
        if learned is None or held is None or not {self.geometric_occupancy_topic, self.geometric_uncertainty_topic} <= set(held):
            return []
        t0 = time.perf_counter_ns()
        from perception_nodes.learning.grids import grid_from_msg

        del self._geo[stamp]
        del self._learned[stamp]
        occ_msg, unc_msg = held[self.geometric_occupancy_topic], held[self.geometric_uncertainty_topic]
        try:
            p_geo, spec = grid_from_msg(occ_msg)
            u_geo, spec_u = grid_from_msg(unc_msg)
            if spec_u != spec:
                raise ValueError(f"occupancy grid {spec} and uncertainty grid {spec_u} differ")
        except ValueError as exc:  # a grid we cannot read: both are dropped, counted, and said why
            for t in held:
                self.mark_dropped(t, "malformed_grid")
            self._warn("fusion", f"geometric grid at stamp {stamp} ns unusable: {exc}")
            return []
        r_geo, s_geo = evidence_from_grid_data(p_geo, u_geo)
        r_l, s_l, spec_l = learned
        rs = resample_nearest(np.stack([r_l, s_l]), spec_l, spec)
        r, s = fuse_evidence(r_geo, s_geo, rs[0], rs[1], self.learned_occupancy_weight)
        prob, vac = to_occupancy_msg_data(BetaGrid(r, s, spec), unknown_vacuity=self.unknown_vacuity)
        origin = (*spec.origin, 0.0)
        out = [Emit(self.fused_occupancy_topic, topics.OCCUPANCY_GRID_TYPE,
                    occupancy_grid_msg(prob, spec.resolution, origin, stamp, self.base_frame, self.backend))]
        if self.fused_uncertainty_topic:
            out.append(Emit(self.fused_uncertainty_topic, topics.OCCUPANCY_GRID_TYPE,
                            occupancy_grid_msg(vac, spec.resolution, origin, stamp, self.base_frame, self.backend)))
        for t in held:
            self.mark_used(t)
        self.fused_out += 1
        self.latency.record("fusion", (time.perf_counter_ns() - t0) / 1e6)
        return out

    def finish(self) -> list[Emit]:
        for held in self._geo.values():
            for t in held:
                self.mark_dropped(t, "end_of_input")
        self._geo.clear()
        self._learned.clear()
        return []

    # --- diagnostics ------------------------------------------------------------------------------
    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        """The common statuses plus ``<name>: network``: runtime in use and its facts, weights, counts."""
        statuses = super().diagnostic_statuses()
        values: dict[str, str] = {"runtime": self.runtime_name, "weights": str(self.weights_dir or self._weights_folder())}
        if self.runtime is not None:
            for k, v in self.runtime.describe().items():
                if k != "runtime":
                    values[f"runtime.{k}"] = str(v)
            values["code_version"] = str(self.sidecar.get("code_version", "unknown"))
            cfg = self.net.config
            values["classes"] = ",".join(cfg.classes)
            values["point_range"] = ",".join(f"{v:g}" for v in cfg.point_range)
            values["context_margin_m"] = f"{cfg.context_margin_m:g}"
            values["voxel_size"] = ",".join(f"{v:g}" for v in cfg.voxel_size)
            values["backbone"] = cfg.backbone
            cal = self.calibration
            values["calibration"] = ("identity (the sidecar has none)" if cal is None or cal.is_identity
                                     else f"{cal.summary()} (fitted on {cal.fitted.get('on', '?')})")[:300]
            level, message = OK, f"runtime {self.runtime_name} ({', '.join(f'{k}={v}' for k, v in self.runtime.describe().items())})"
            if not self.tune_ok:
                level, message = WARN, f"sparse tune file: {self.tune_status}"
        else:
            level, message = ERROR, f"network not loaded: {self.load_error or 'not configured yet'}"
        values["frames_out"] = str(self.frames_out)
        values["empty_frames"] = str(self.empty_frames)
        values["detections_out"] = str(self.detections_out)
        values["refined_boxes"] = str(self.refined_boxes)
        br = self.box_refinement
        values["box_refinement"] = (f"on: {','.join(br.classes)} headings within {br.search_deg:g} deg of the network's, "
                                    f">= {br.min_points} points, shift {'on' if br.shift_to_points else 'off'}, "
                                    f"near faces {'on' if br.near_faces else 'off'}" if br.enabled else "off")
        values["head_boxes"] = str(self.head_boxes)
        values["box_head"] = ((self.box_head.source if self.box_head is not None
                               else f"{self.box_head_name} ({self.head_status or 'not loaded'})")
                              if self.box_head_name else "off")[:300]
        if self.box_head is not None and (not br.enabled or not set(self.box_head.config.classes) <= set(br.classes)):
            values["box_head"] += " (idle: runs only after the box refinement of its classes, which is off)"
        values["fused_grids_out"] = str(self.fused_out)
        values["max_points"] = str(self.max_points)
        values["sparse_tune_file"] = self.tune_status[:300]
        return statuses + [DiagnosticStatusData(level, f"{self.name}: network", message[:500], self._sensor_frame, values)]
