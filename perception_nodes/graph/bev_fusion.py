"""BEVFusion-style node: a LiDAR scan and the camera image nearest in stamp -> one fused set of 3D detections.

Runs the packaged camera + LiDAR fuser (:mod:`perception_nodes.models.bev_fusion`, weights from ``weights``,
default ``perception_nodes/models/weights/bev_fusion/``): LiDAR BEV and camera BEV concatenated, a 3 x 3 conv
fuser, the LiDAR branch's BEV net and heads. One set of weights runs in three **modes** through the
network's presence flags: ``fused`` (both inputs), ``lidar_only`` (camera missing or stale), ``camera_only``
(LiDAR missing or stale); ``none`` when neither is there (an empty cloud with no usable image: empty
detections and all-unknown grids are published). docs/bev_fusion.md explains the choices and the numbers.

**What drives frames.** The LiDAR scan (``input_topic``) while it is live: one output per scan, stamped
with the scan. Its camera input is the image (``image_topic``) nearest in stamp within ``camera_timeout_s``;
when no image within ``match_tolerance_s`` of the scan has arrived yet but the camera is live (an image
within ``camera_timeout_s``), the scan waits for it at most ``max_wait_s`` on the node clock (one scan at
most; the next scan releases it), then goes with the nearest image within ``camera_timeout_s`` or, without
one, LiDAR-only. The node never waits for a camera that is stale or absent (right after start, before any
image, for at most ``camera_timeout_s`` of node clock, the camera counts as live); so when a stale camera
comes back, a scan that arrives before the first new image still goes LiDAR-only (that image is then
``unpaired``), and the frames after it are fused again. When the LiDAR is stale (its
newest scan stamped more than ``lidar_timeout_s`` before an image, or no scan at all within
``lidar_timeout_s`` of node clock since the node's first message) the **camera paces**: each image is a
camera-only frame with the image's stamp, until a scan comes again.

Calibration and sync of the camera: as the ``camera_bev`` node, camera_infos are kept by stamp and an
image takes the one of its own stamp; once camera_infos have been seen to carry their images' stamps, an
image without its own waits up to ``camera_info_wait_s`` (node clock) and then takes the latest valid one
(``camera_info_fallbacks``, warning). K is ``P[:3, :3]``; base_frame <- optical frame and <- the LiDAR frame
come from ``/tf_static``, ``/tf`` or the rig calibration file.

Images: rgb8/rgba8 (views on the message buffer, no copy), bgr8/bgra8 (reordered), mono8 (replicated).
The network was trained at 320 x 96 (the generator's camera, KITTI's focal length scaled to the width):
an image wider than ``input_width`` is resized to it (area interpolation, K scaled; counted
``images_resized``), one narrower is rejected (dropped ``image_too_small``, warning): features at another
pixel scale are not what the weights know. An image whose grey-level std is below ``min_image_std``
(blacked out, covered) is not used: the frame runs without camera, the mode's reason says so.

Outputs under ``/perception/bev_fusion/`` (params): ``detections_topic`` (``vision_msgs/Detection3DArray``
with covariance and the ``dirichlet_strength`` result, the LiDAR branch's conventions, so the detection
fusion node can take it as a branch), ``objects_topic`` (``perception_interfaces/Detection3DArray``, what
``perception-stack evaluate`` scores when set to ``/perception/objects``), ``markers_topic``,
``occupancy_topic`` / ``occupancy_uncertainty_topic`` (the heads' Beta evidence as P(occupied) and vacuity
on the network's occupancy grid), ``curvature_topic``; ``mode_topic`` (default ``~/debug/mode``,
``perception_interfaces/Float64Stamped`` with the frame's stamp): a bit mask, 1 = LiDAR used, 2 = camera
used, so 3 = fused, 1 = lidar_only, 2 = camera_only, 0 = none. ``/diagnostics`` status ``<node>: mode``:
OK when fused, WARN when degraded (with why: which input is stale, by how much, or unusable), ERROR when
no frame came for longer than both timeouts (steady clock) after inputs had arrived.

Stages timed (``~/debug/processing_time/<stage>_ms``): ``decode`` (PointCloud2 -> array, range gate, image
view/resize), ``transform`` (sensor -> base_link), ``voxelize``, ``backbone`` (sparse LiDAR backbone),
``camera_backbone`` (image CNN + depth/context lift), ``camera_pool`` (BEV pooling, geometry built when the
calibration changed, camera BEV CNN), ``fuser``, ``heads`` (BEV net + evidential heads), ``decode_boxes``,
``occupancy``, ``encode``.

Bad input never stops the node: empty clouds or clouds with no point inside the network's range run the
frame without LiDAR (``empty`` warning); non-finite points are removed and counted; a wrong encoding or
data that does not fit its size is ``malformed``; an image whose size differs from its camera_info is
dropped ``size_mismatch``; invalid camera_info (NaN, zero focal length, wrong sizes, unknown distortion) is
``malformed`` and the last valid one stays; a scan in an unknown frame is dropped ``calibration``, an image
in one is not used (the frame runs without camera, ``calibration`` warning). Accounting: an
image ends up used (it went into a frame), dropped ``unpaired`` (no scan took it before it left the
``image_queue_size`` queue) or pending.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.calibration import transform_points
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.camera_info import camera_model_from_msg
from perception_nodes.codecs.detections import DETECTIONS_TYPE
from perception_nodes.codecs.image import image_to_numpy, to_rgb
from perception_nodes.codecs.outputs import DiagnosticStatusData
from perception_nodes.codecs.pointcloud2 import read_xyzi
from perception_nodes.codecs.vision import CURVATURE_TYPE, VISION_DETECTIONS_TYPE
from perception_nodes.config import ConfigError
from perception_nodes.errors import CalibrationError, MalformedMessageError, NodeUnavailable
from perception_nodes.graph.camera_bev import CAMERA_ENCODINGS, scaled_intrinsics
from perception_nodes.graph.detection_outputs import decode_options, detection_frame_emits
from perception_nodes.graph.lidar_detection import drop_self_returns, network_points, self_return_params
from perception_nodes.graph.node import ERROR, OK, WARN, Emit, NodeCore, Port, synthetic_scan
from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, to_occupancy_msg_data
from perception_nodes.sync.stamp_cache import remember_by_stamp

#: default topics (documented in perception.params.yaml)
DETECTIONS = "/perception/bev_fusion/detections"
OBJECTS = "/perception/bev_fusion/objects"
MARKERS = "/perception/bev_fusion/detections/markers"
OCCUPANCY = "/perception/bev_fusion/occupancy_grid"
UNCERTAINTY = "/perception/bev_fusion/occupancy_grid/uncertainty"
CURVATURE = "/perception/bev_fusion/curvature"
MODE = "~/debug/mode"

#: mode names by bit mask (1 = LiDAR used, 2 = camera used): what ``mode_topic`` carries
MODES = {0: "none", 1: "lidar_only", 2: "camera_only", 3: "fused"}
#: the network the node runs (weights sidecar name)
NETWORK = "bev_fusion"


@dataclass
class _Image:
    """A camera image held for pairing: the message, its RGB view, and whether a frame used it."""

    stamp: int
    msg: Any
    img: np.ndarray
    decode_ms: float
    arrived: int  # node clock
    used: bool = False


def mode_name(mask: int) -> str:
    """``fused`` / ``lidar_only`` / ``camera_only`` / ``none`` for a :data:`MODES` bit mask."""
    return MODES[int(mask) & 3]


class BevFusionNode(NodeCore):
    """See module doc."""

    #: camera_infos kept by stamp for pairing
    INFO_KEEP = 8

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.input_topic = params.get("input_topic", topics.LIDAR_POINTS)
        self.image_topic = params.get("image_topic", topics.CAMERA_IMAGE.format(side="left"))
        self.info_topic = params.get("camera_info_topic", topics.CAMERA_INFO.format(side="left"))
        self.detections_topic = params.get("detections_topic", DETECTIONS)
        self.objects_topic = params.get("objects_topic", OBJECTS)
        self.markers_topic = params.get("markers_topic", MARKERS)
        self.occupancy_topic = params.get("occupancy_topic", OCCUPANCY)
        self.occupancy_uncertainty_topic = params.get("occupancy_uncertainty_topic", UNCERTAINTY)
        self.curvature_topic = params.get("curvature_topic", CURVATURE)
        self.mode_topic = params.get("mode_topic", MODE)
        self.weights = str(params.get("weights", "") or "")
        self.threads = int(params.get("threads", 1))
        self.image_queue_size = max(1, int(params.get("image_queue_size", 4)))
        for attr, value in self._derived(params).items():
            setattr(self, attr, value)
        self.net: Any = None
        self.sidecar: dict[str, Any] = {}
        self.calibration: Any = None
        self.weights_dir: Path | None = None
        self.load_error: str | None = None
        # camera calibration (as the camera_bev node)
        self.model: Any = None
        self._infos: OrderedDict[int, Any] = OrderedDict()
        self._paired = False
        self.camera_info_fallbacks = 0
        # pairing state
        self._images: list[_Image] = []  # oldest first, at most image_queue_size
        # held scan: (msg, stamp, node clock when it arrived, decoded points, decode ms)
        self._scan: tuple[Any, int, int, np.ndarray, float] | None = None
        self._last_scan_stamp: int | None = None
        self._first_clock: int | None = None
        self._geometry_key: str | None = None
        # counters and the last frame's mode
        self.geometry_builds = 0
        self.images_resized = 0
        self.empty_frames = 0
        self.detections_out = 0
        self.mode_frames: dict[str, int] = {m: 0 for m in MODES.values()}
        self.last_mode: str | None = None
        self.last_reason = ""
        self._last_frame_steady: int | None = None

    # --- parameters ---------------------------------------------------------------------------
    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super()._derived(params)
        out["decode_options"] = decode_options(params, self.name)
        out.update(self_return_params(params, self.name))
        times = {}
        for key in ("lidar_timeout_s", "camera_timeout_s", "match_tolerance_s", "max_wait_s", "camera_info_wait_s"):
            default = {"lidar_timeout_s": 0.5, "camera_timeout_s": 0.5, "match_tolerance_s": 0.05,
                       "max_wait_s": 0.1, "camera_info_wait_s": 0.05}[key]
            v = float(params.get(key, default))
            if not v >= 0.0:
                raise ConfigError(f"{self.name}.{key} must be >= 0, got {v}")
            times[key] = v
        if times["match_tolerance_s"] > times["camera_timeout_s"]:
            raise ConfigError(f"{self.name}.match_tolerance_s ({times['match_tolerance_s']}) must not exceed "
                              f"camera_timeout_s ({times['camera_timeout_s']})")
        out["lidar_timeout_ns"] = int(times["lidar_timeout_s"] * 1e9)
        out["camera_timeout_ns"] = int(times["camera_timeout_s"] * 1e9)
        out["match_tolerance_ns"] = int(times["match_tolerance_s"] * 1e9)
        out["max_wait_ns"] = int(times["max_wait_s"] * 1e9)
        out["info_wait_ns"] = int(times["camera_info_wait_s"] * 1e9)
        out["input_width"] = int(params.get("input_width", 320))
        if out["input_width"] < 0:
            raise ConfigError(f"{self.name}.input_width must be >= 0 (0 = images as received)")
        out["min_image_std"] = float(params.get("min_image_std", 2.0))
        out["max_points"] = int(params.get("max_points", 200_000))
        out["unknown_vacuity"] = float(params.get("unknown_vacuity", 1.0))
        out["marker_lifetime_s"] = float(params.get("marker_lifetime_s", 0.2))
        return out

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        return super().inputs() + [Port(self.info_topic, topics.CAMERA_INFO_TYPE), Port(self.image_topic, topics.IMAGE),
                                   Port(self.input_topic, topics.POINTCLOUD2)]

    def outputs(self) -> list[Port]:
        out = super().outputs() + [Port(self.detections_topic, VISION_DETECTIONS_TYPE, "reliable")]
        for topic, msgtype in ((self.objects_topic, DETECTIONS_TYPE), (self.markers_topic, topics.MARKER_ARRAY),
                               (self.occupancy_topic, topics.OCCUPANCY_GRID_TYPE),
                               (self.occupancy_uncertainty_topic, topics.OCCUPANCY_GRID_TYPE),
                               (self.curvature_topic, CURVATURE_TYPE)):
            if topic:
                out.append(Port(topic, msgtype, "reliable"))
        if self.mode_topic and not self.mode_topic.startswith("~/"):
            out.append(Port(self.mode_topic, topics.FLOAT64_STAMPED, "reliable"))
        return out

    # --- network ------------------------------------------------------------------------------
    def _weights_folder(self) -> Path:
        from perception_nodes.models.weights_io import resolve_weights_folder

        return resolve_weights_folder(self.weights, NETWORK)

    def load(self) -> None:
        """Weights -> fused network (eval). NodeUnavailable without PyTorch or packaged weights; WeightsError
        for a bad ``weights`` folder."""
        try:
            import torch
            from perception_nodes.models.bev_fusion import load_bev_fusion
            from perception_nodes.models.calibration import DetectionCalibration
            from perception_nodes.models.weights_io import read_sidecar
        except ImportError as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise NodeUnavailable(f"{self.name}: the fused network needs PyTorch, which is not installed here ({exc})") from exc
        folder = self._weights_folder()
        if not self.weights:
            try:
                read_sidecar(folder, NETWORK)
            except Exception as exc:  # noqa: BLE001 - no packaged weights in this install
                raise NodeUnavailable(f"{self.name}: no packaged bev_fusion weights ({exc}); set `weights`") from exc
        try:
            net, side = load_bev_fusion(folder)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        self.net, self.sidecar, self.weights_dir = net, side, folder
        self.calibration = DetectionCalibration.from_sidecar(side)
        self.load_error = None

    def warmup(self) -> None:
        """Load the network and run it once in each mode on synthetic input of the generator's rig
        (allocations, the numba voxeliser and pooling kernels); the real camera's geometry is built on its
        first image."""
        if self.net is None:
            self.load()
        from perception_nodes.scenario.camera import camera_rig

        spec = camera_rig(320, 96)["left"]
        T = np.eye(4)
        T[:3, :3] = spec.base_from_optical()
        T[:3, 3] = spec.position
        img = np.random.default_rng(0).integers(0, 255, (96, 320, 3), dtype=np.uint8)
        pts = synthetic_scan()
        geo = self.pooling_geometry(spec.K, T, img.shape[:2])
        self.infer(pts, img, geo)
        self.infer(pts, None, None)
        self.infer(None, img, geo)

    def pooling_geometry(self, K: np.ndarray, base_from_camera: np.ndarray, hw: tuple[int, int]) -> Any:
        """The camera's BEV pooling geometry (cached by the network on its key)."""
        cam = self.net.camera
        return cam.geometry(cam.camera_geometry(K, base_from_camera, hw))

    def infer(self, points: np.ndarray | None, image: np.ndarray | None, geometry: Any) -> Any:
        """The fused network on one frame, stage by stage: ``points`` ``[N, 4]`` float32 in base_link (or
        None: no LiDAR), ``image`` ``(H, W, 3)`` uint8 RGB with its pooling ``geometry`` (or None: no camera).
        Equals ``BevFusionNet.forward`` on the same inputs; returns its :class:`BevFusionOutput`. A cloud with
        no voxel inside the network's range counts as no LiDAR (``lidar_present`` False)."""
        import torch

        from perception_nodes.models.bev_fusion import BevFusionOutput

        net, stage = self.net, self.latency.stage
        lidar_bev = camera_bev = None
        counts = torch.zeros(1, dtype=torch.int64)
        with torch.inference_mode():
            if points is not None:
                with stage("voxelize"):
                    st, counts = net.lidar.voxelize(torch.from_numpy(points))
                if int(counts[0]) > 0:
                    with stage("backbone"):
                        lidar_bev = net.lidar.backbone_bev(st)
            if image is not None:
                cam = net.camera
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a read-only message buffer: nothing writes to it
                    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
                with stage("camera_backbone"):
                    depth, context = cam.lift(cam.image_features(x))
                with stage("camera_pool"):
                    if geometry.key != self._geometry_key:
                        self._geometry_key = geometry.key
                        self.geometry_builds += 1
                    camera_bev = cam.bev_net(cam.pool(depth, context, geometry, 1), cam.crop(geometry))
            lp = torch.tensor([lidar_bev is not None])
            cp = torch.tensor([camera_bev is not None])
            if lidar_bev is None and camera_bev is None:
                return None
            with stage("fuser"):
                fused = net.fuse(lidar_bev, camera_bev, 1)
            with stage("heads"):
                counts = torch.where(lp, counts, 0)
                has_input = torch.where(cp, torch.clamp_min(counts, 1), counts)
                out = net.lidar.heads(net.lidar.bev_net(fused), has_input)
        return BevFusionOutput(out, lp, cp)

    # --- messages -----------------------------------------------------------------------------
    def pending(self, topic: str) -> int:
        if topic == self.image_topic:
            return sum(not im.used for im in self._images)
        if topic == self.input_topic:
            return int(self._scan is not None)
        return 0

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        if self._first_clock is None:
            self._first_clock = self.clock()
        if topic == self.info_topic:
            model = camera_model_from_msg(msg)  # MalformedMessageError (NaN, zero focal length, sizes): counted
            self.mark_used(topic)
            self.model = model
            stamp = stamp_to_ns(msg.header.stamp)
            remember_by_stamp(self._infos, stamp, model, self.INFO_KEEP)
            if any(im.stamp == stamp for im in self._images):
                self._paired = True
            return self._service()
        if topic == self.image_topic:
            return self._on_image(msg)
        return self._on_scan(msg)

    def on_tick(self) -> list[Emit]:
        return self._service()

    def finish(self) -> list[Emit]:
        """End of input: the held scan goes with what there is; images no scan took count as unpaired."""
        out = self._release_scan(force=True) if self._scan is not None else []
        for im in self._images:
            if not im.used:
                self.mark_dropped(self.image_topic, "unpaired")
        self._images.clear()
        return out

    def _on_image(self, msg: Any) -> list[Emit]:
        t0 = time.perf_counter_ns()
        enc = str(msg.encoding)
        if enc not in CAMERA_ENCODINGS:
            raise MalformedMessageError(topics.IMAGE, f"encoding {enc!r} cannot feed the camera network (needs one "
                                        f"of {', '.join(CAMERA_ENCODINGS)})")
        img = image_to_numpy(msg)  # a strided view on the message buffer (MalformedMessageError if it does not fit)
        h, w = img.shape[:2]
        if self.input_width and w < self.input_width:
            self.mark_dropped(self.image_topic, "image_too_small")
            self._warn("image_size", f"{self.image_topic}: image {w}x{h} is narrower than input_width = "
                       f"{self.input_width} px (the pixel scale the network was trained at); image rejected")
            return self._service()
        rgb = to_rgb(img, enc)
        stamp = stamp_to_ns(msg.header.stamp)
        self._images.append(_Image(stamp, msg, rgb, (time.perf_counter_ns() - t0) / 1e6, self.clock()))
        if stamp in self._infos:
            self._paired = True
        while len(self._images) > self.image_queue_size:
            old = self._images.pop(0)
            if not old.used:
                self.mark_dropped(self.image_topic, "unpaired")
        return self._service()

    def _decode_scan(self, msg: Any) -> np.ndarray:
        """PointCloud2 -> finite points within the range gate, at most ``max_points`` (sensor frame); raises
        MalformedMessageError / ImplausibleCloudError in the scan's own delivery."""
        return network_points(self, self.input_topic, self.sanitize(self.input_topic, read_xyzi(msg)))

    def _on_scan(self, msg: Any) -> list[Emit]:
        t0 = time.perf_counter_ns()
        pts = self._decode_scan(msg)  # bad clouds fail here, in their own delivery
        decode_ms = (time.perf_counter_ns() - t0) / 1e6
        out: list[Emit] = []
        if self._scan is not None:  # the next scan came first: the held one goes with what there is
            out += self._release_scan(force=True)
        stamp = stamp_to_ns(msg.header.stamp)
        self._scan = (msg, stamp, self.clock(), pts, decode_ms)
        self._last_scan_stamp = stamp if self._last_scan_stamp is None else max(self._last_scan_stamp, stamp)
        return out + self._service()

    # --- pairing --------------------------------------------------------------------------------
    def _service(self) -> list[Emit]:
        """Release what can go now: the held scan (its image came, or the wait is over, or the camera is
        stale), then camera-only frames for images while the LiDAR is stale."""
        out: list[Emit] = []
        if self._scan is not None:
            out += self._release_scan(force=False)
        for im in list(self._images):
            if im.used or not self._lidar_stale(im.stamp):
                continue
            model, ready = self._model_for(im)
            if not ready:
                continue
            out += self._frame_counted(None, im, model, self._lidar_reason(im.stamp))
        return out

    def _lidar_stale(self, stamp: int) -> bool:
        if self._scan is not None:
            return False
        if self._last_scan_stamp is None:
            return self._first_clock is not None and self.clock() - self._first_clock > self.lidar_timeout_ns
        return stamp - self._last_scan_stamp > self.lidar_timeout_ns

    def _lidar_reason(self, stamp: int) -> str:
        if self._last_scan_stamp is None:
            return f"no LiDAR scan on {self.input_topic} within lidar_timeout_s = {self.lidar_timeout_ns / 1e9:g} s of start"
        return (f"LiDAR stale: newest scan {(stamp - self._last_scan_stamp) / 1e9:.2f} s before the image "
                f"(lidar_timeout_s = {self.lidar_timeout_ns / 1e9:g})")

    def _model_for(self, im: _Image) -> tuple[Any, bool]:
        """(camera model for the image, whether to use it now) as the camera_bev node decides it."""
        if im.stamp in self._infos:
            return self._infos[im.stamp], True
        if self.model is None:
            return None, False
        latest = next(reversed(self._infos))
        waited = self.clock() - im.arrived >= self.info_wait_ns
        return self.model, (not self._paired or latest > im.stamp or waited)

    def _nearest_image(self, stamp: int) -> _Image | None:
        best = None
        for im in self._images:
            d = abs(im.stamp - stamp)
            if d <= self.camera_timeout_ns and (best is None or d < abs(best.stamp - stamp)):
                best = im
        return best

    def _release_scan(self, force: bool) -> list[Emit]:
        """Run the held scan when its image is ready, its wait is over (or ``force``), or the camera is stale."""
        assert self._scan is not None
        msg, stamp, arrived, pts, decode_ms = self._scan
        im = self._nearest_image(stamp)
        matched = im is not None and abs(im.stamp - stamp) <= self.match_tolerance_ns
        model, ready = self._model_for(im) if im is not None else (None, False)
        camera_live = any(stamp - i.stamp <= self.camera_timeout_ns for i in self._images) or (
            self.received[self.image_topic] == 0 and self._first_clock is not None
            and self.clock() - self._first_clock <= self.camera_timeout_ns)  # just started: the camera may come
        waited = self.clock() - arrived >= self.max_wait_ns
        if not force and not (matched and ready) and not waited and camera_live:
            return []
        self._scan = None
        reason = ""
        if im is not None and model is None:
            reason, im = f"no camera_info on {self.info_topic} yet", None
        elif im is None:
            newest = max((i.stamp for i in self._images), default=None)
            reason = (f"camera stale: no image on {self.image_topic} yet" if newest is None else
                      f"camera stale: nearest image {abs(newest - stamp) / 1e9:.2f} s from the scan "
                      f"(camera_timeout_s = {self.camera_timeout_ns / 1e9:g})")
        elif self._paired and im.stamp not in self._infos:
            self.camera_info_fallbacks += 1
            self._warn("camera_info_fallback", f"{self.info_topic}: no camera_info with the image's stamp within "
                       f"{self.info_wait_ns / 1e9:g} s; used the latest")
        try:
            return self._frame((msg, pts, decode_ms), im, model, reason)
        except (MalformedMessageError, CalibrationError) as exc:  # maybe not this scan's own delivery: count here
            kind = "malformed" if isinstance(exc, MalformedMessageError) else "calibration"
            self.mark_dropped(self.input_topic, kind)
            self._warn(kind, f"{self.input_topic}: {exc}")
            return []
        except Exception as exc:  # noqa: BLE001 - counted on the scan, the node goes on
            self.mark_dropped(self.input_topic, "error")
            self._fault(self.input_topic, exc)
            return []

    def _frame_counted(self, scan: Any, im: _Image, model: Any, reason: str) -> list[Emit]:
        """A camera-only frame outside the image's own delivery: failures count on the image topic."""
        try:
            return self._frame(scan, im, model, reason)
        except Exception as exc:  # noqa: BLE001 - counted on the image, the node goes on
            known = isinstance(exc, (MalformedMessageError, CalibrationError))
            kind = ("malformed" if isinstance(exc, MalformedMessageError) else "calibration") if known else "error"
            if not im.used:
                im.used = True
                self.mark_dropped(self.image_topic, kind)
            if known:
                self._warn(kind, f"{self.image_topic}: {exc}")
            else:
                self._fault(self.image_topic, exc)
            return []

    # --- one frame ------------------------------------------------------------------------------
    def _camera_input(self, im: _Image, model: Any) -> tuple[np.ndarray | None, Any, str]:
        """(RGB image at the network's scale, pooling geometry, why not) for a paired image; the image is
        None (with the reason) when it cannot be used: size mismatch, uniform image."""
        h, w = im.img.shape[:2]
        if (w, h) != (int(model.width), int(model.height)):
            self._warn("size_mismatch", f"{self.image_topic}: image size {w}x{h} differs from camera_info size "
                       f"{model.width}x{model.height}; image not used")
            return None, None, f"image {w}x{h} differs from its camera_info {model.width}x{model.height}"
        if float(np.std(im.img[::4, ::4])) < self.min_image_std:
            self._warn("blackout", f"{self.image_topic}: image uniform (grey-level std < {self.min_image_std:g}): "
                       "camera blacked out or covered? Frame run without camera")
            return None, None, "camera image uniform (blacked out or covered?)"
        try:
            to_base = self.sensor_to_base(im.msg.header.frame_id)
        except CalibrationError as exc:  # the scan can still go on its own
            self._warn("calibration", f"{self.image_topic}: {exc}; frame run without camera")
            return None, None, f"camera frame unknown ({exc})"
        K = np.asarray(model.P, np.float64)[:3, :3]
        img = im.img
        if self.input_width and w > self.input_width:
            import cv2

            dst = (max(1, int(round(h * self.input_width / w))), self.input_width)
            img = cv2.resize(np.ascontiguousarray(img), (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
            K = scaled_intrinsics(K, (h, w), dst)
            self.images_resized += 1
        return img, self.pooling_geometry(K, to_base, img.shape[:2]), ""

    def _frame(self, held: tuple[Any, np.ndarray, float] | None, im: _Image | None, model: Any,
               reason: str) -> list[Emit]:
        """One output frame: ``held`` = (scan, its decoded points, decode ms) or None (camera-only), with image
        ``im`` (or None: LiDAR-only)."""
        from perception_nodes.models.decode import decode_batch

        if self.net is None:
            self.load()
        scan = held[0] if held is not None else None
        stamp = stamp_to_ns(scan.header.stamp) if scan is not None else im.stamp
        pts = None
        reasons = [reason] if reason else []
        with self.latency.frame(stamp) as frame:
            if held is not None:
                scan, pts, frame.stages_ms["decode"] = held
                with self.latency.stage("transform"):
                    to_base = self.sensor_to_base(scan.header.frame_id)
                    pts = np.ascontiguousarray(drop_self_returns(self, transform_points(to_base, pts), to_base[:2, 3]),
                                               np.float32)
            img = geo = None
            if im is not None:
                t1 = time.perf_counter_ns()
                img, geo, why = self._camera_input(im, model)
                frame.stages_ms["decode"] = frame.stages_ms.get("decode", 0.0) + im.decode_ms + (time.perf_counter_ns() - t1) / 1e6
                if why:
                    reasons.append(why)
            out = self.infer(pts, img, geo)
            mask = 0 if out is None else int(bool(out.lidar_present[0])) | (2 * int(bool(out.camera_present[0])))
            if pts is not None and not (mask & 1):
                self.empty_frames += 1
                reasons.append(f"scan has no usable point inside the network's range ({len(pts)} points after the gates)")
                self._warn("empty", f"{self.input_topic}: scan at stamp {stamp} ns has no usable point inside the "
                           f"network's range {tuple(self.net.lidar.config.point_range)}: frame run without LiDAR")
            with self.latency.stage("decode_boxes"):
                det = None if out is None else decode_batch(out.detection, self.net.lidar.head_grid,
                                                            self.net.lidar.config.classes, calibration=self.calibration,
                                                            **self.decode_options)[0]
            with self.latency.stage("occupancy"):
                g = self.net.lidar.config.occupancy_grid
                spec = GridSpec(resolution=g.cell, size_x=g.size_x, size_y=g.size_y, origin=(g.origin_x, g.origin_y))
                if out is None:
                    r = s = np.zeros((g.height, g.width), np.float32)
                else:
                    occ = out.detection.occupancy_evidence[0].detach().cpu().numpy()
                    r, s = np.ascontiguousarray(occ[0], np.float32), np.ascontiguousarray(occ[1], np.float32)
                prob, vac = to_occupancy_msg_data(BetaGrid(r, s, spec), unknown_vacuity=self.unknown_vacuity)
            with self.latency.stage("encode"):
                emits = self._encode(stamp, det, prob, vac, spec, out, mask)
        if scan is not None:
            self.mark_used(self.input_topic)
        if im is not None and not im.used:
            im.used = True
            self.mark_used(self.image_topic)
        name = mode_name(mask)
        if name != self.last_mode:
            self.log.info("%s: mode %s%s", self.name, name, f" ({'; '.join(reasons)})" if reasons else "")
        self.last_mode, self.last_reason = name, "; ".join(reasons)
        self.mode_frames[name] += 1
        self._last_frame_steady = self.steady_clock()
        self.frames_out += 1
        self.detections_out += 0 if det is None else len(det)
        return emits + self.debug_emits(frame)

    def _encode(self, stamp: int, det: Any, prob: np.ndarray, vac: np.ndarray, spec: GridSpec, out: Any,
                mask: int) -> list[Emit]:
        emits = detection_frame_emits(self, stamp, det, prob, vac, spec,
                                      None if out is None else out.detection.curvature,
                                      self.net.lidar.config.curvature_horizons_m, "bev_fusion_detections")
        if self.mode_topic:
            emits.append(Emit(self.mode_topic, topics.FLOAT64_STAMPED, self._float(stamp, float(mask))))
        return emits

    # --- diagnostics ------------------------------------------------------------------------------
    def current_mode(self) -> tuple[int, str, str]:
        """(level, mode, message) of the ``<node>: mode`` status (module doc)."""
        steady = self.steady_clock()
        silent_ns = max(self.lidar_timeout_ns, self.camera_timeout_ns, self.diagnostics_period_ns)
        if self.last_mode is None:
            got = self.received[self.input_topic] + self.received[self.image_topic]
            return (WARN if got else OK), "none", ("inputs arrived, no frame yet" if got else "no input yet")
        if self._last_frame_steady is not None and steady - self._last_frame_steady > silent_ns + self.input_stale_ns:
            return ERROR, "none", (f"no frame for {(steady - self._last_frame_steady) / 1e9:.1f} s: LiDAR and camera "
                                   "both silent")
        if self.last_mode == "fused":
            return OK, "fused", "fused: LiDAR + camera"
        level = ERROR if self.last_mode == "none" else WARN
        return level, self.last_mode, f"{self.last_mode}: {self.last_reason or 'degraded'}"

    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        """The common statuses plus ``<name>: mode`` (fused / lidar_only / camera_only / none, with why) and
        ``<name>: network``."""
        statuses = super().diagnostic_statuses()
        level, mode, message = self.current_mode()
        values = {"mode": mode, **{f"frames_{k}": str(v) for k, v in self.mode_frames.items()},
                  "lidar_timeout_s": f"{self.lidar_timeout_ns / 1e9:g}",
                  "camera_timeout_s": f"{self.camera_timeout_ns / 1e9:g}",
                  "match_tolerance_s": f"{self.match_tolerance_ns / 1e9:g}",
                  "camera_info_fallbacks": str(self.camera_info_fallbacks),
                  "images_resized": str(self.images_resized), "geometry_builds": str(self.geometry_builds),
                  "empty_frames": str(self.empty_frames), "frames_out": str(self.frames_out),
                  "detections_out": str(self.detections_out)}
        if self.model is not None:
            values.update(camera_width=str(self.model.width), camera_height=str(self.model.height))
        statuses.append(DiagnosticStatusData(level, f"{self.name}: mode", message[:500], self._sensor_frame, values))
        net_values = {"weights": str(self.weights_dir or self._weights_folder()), "threads": str(self.threads)}
        if self.net is not None:
            net_values["code_version"] = str(self.sidecar.get("code_version", "unknown"))
            net_values["fuser_kernel"] = str(self.net.fusion_config.kernel)
            net_values["input_width"] = str(self.input_width)
            nlevel, nmsg = OK, "fused network loaded"
        else:
            nlevel, nmsg = ERROR, f"network not loaded: {self.load_error or 'not configured yet'}"
        statuses.append(DiagnosticStatusData(nlevel, f"{self.name}: network", nmsg, self._sensor_frame, net_values))
        return statuses


