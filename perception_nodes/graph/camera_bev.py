"""Camera -> BEV node: one rectified camera image in, evidential BEV occupancy out (the learned camera branch).

Per image (``image_topic``, with the ``camera_info_topic`` message of the same stamp): the Lift-Splat network of
:mod:`perception_nodes.models.camera_bev` (weights from ``weights``, default the packaged
``perception_nodes/models/weights/camera_bev/``) -> Beta evidence on the network's occupancy grid ->
the node's ``grid`` (the occupancy node's by default; nearest-cell lookup when it differs). Publishes

* ``output_topic``: P(occupied) 0..100, -1 where the camera saw nothing (``nav_msgs/OccupancyGrid``);
* ``uncertainty_topic``: vacuity 0..100 (100 = no evidence);
* ``health_topic`` (default ``~/debug/image_health``): 1 for a usable image, 0 for a uniform one
  (blacked-out or covered camera), ``perception_interfaces/Float64Stamped``, for the fusion node's gate;
* ``exposure_topic`` (default ``~/debug/exposure``): 1 - share of saturated - share of crushed pixels,
  0 for a uniform image (:func:`perception_nodes.pipeline.sensor_health.exposure_health`): glare and
  over-exposure lower it, a blackout takes it to 0; Float64Stamped with the image's stamp, for the gate.

Calibration and sync: the last few valid camera_infos are kept by stamp and an image is paired with the
one of its own stamp (a source whose image size changes per frame, e.g. the converted KITTI raw bag,
needs it: pairing with the latest camera_info would drop images as ``size_mismatch``). Once camera_infos
have been seen to carry their images' stamps, an image that comes before its camera_info waits (one image
at most) up to ``camera_info_wait_s`` on the node clock for it, then falls back to the latest valid one
(counted as ``camera_info_fallbacks``, with a warning); so does an image whose camera_info stamp has
already passed. A source whose camera_info never carries the image stamps (published once, latched) is
used as the latest, without waiting. An image that arrives before any camera_info waits (one image at
most) for it. K is the rectified
projection's ``P[:3, :3]``; base_frame <- optical frame comes from ``/tf_static``, ``/tf`` or the rig
calibration file. The pooling geometry (frustum -> BEV cell map, sorted by cell) is built on the first
image of a calibration and cached (keyed on K, the extrinsic, the image size, stride, bins and grid):
a new camera_info, a moved camera or another image size rebuilds it, counted as ``geometry_builds``.

``input_width``: images are resized (area interpolation, K scaled with them) to this width before the
network when they are wider, so a 1241-px KITTI image meets the network at the pixel scale it was trained
on (the generator's cameras are KITTI's focal length scaled to the width); 0 = as received.

Stages timed (``~/debug/processing_time/<stage>_ms``): ``decode`` (Image -> uint8 view on the message
buffer -- no copy for rgb8/rgba8, a channel reorder for bgr8/bgra8, replication for mono8 -- plus any
resize), ``backbone`` (image CNN), ``lift`` (depth distribution + context), ``pool`` (BEV pooling;
includes the geometry build when the calibration changed), ``heads`` (BEV CNN + evidence head + grid
data) and ``publish`` (messages).

Bad input never stops the node, and each case says what it is: an encoding that is not 8-bit
(16-bit, float, unknown) or data that does not fit its size -> ``malformed``; an image whose size differs
from its camera_info -> dropped ``size_mismatch``; an image with no camera_info yet -> dropped
``no_camera_info`` (after waiting); invalid camera_info (NaN, zero focal length, wrong matrix sizes) ->
``malformed`` and the last valid one stays; no transform to base_frame -> ``calibration``; a uniform image
(grey-level std below ``min_image_std``) -> the network is not run, an all-unknown grid is published
(the camera says nothing, rather than something invented from a black image), a ``blackout`` warning
names the camera and the health scalar is 0.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.camera_info import camera_model_from_msg
from perception_nodes.codecs.image import image_to_numpy, to_rgb
from perception_nodes.codecs.outputs import DiagnosticStatusData, occupancy_grid_msg
from perception_nodes.config import ConfigError, to_dataclass
from perception_nodes.errors import CalibrationError, MalformedMessageError, NodeUnavailable
from perception_nodes.graph.node import ERROR, OK, WARN, Emit, NodeCore, Port
from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, to_occupancy_msg_data
from perception_nodes.pipeline.sensor_health import ExposureHealth, exposure_health
from perception_nodes.sync.stamp_cache import remember_by_stamp

#: default topics (documented in perception.params.yaml)
CAMERA_OCCUPANCY = "/perception/camera/occupancy_grid"
CAMERA_UNCERTAINTY = "/perception/camera/occupancy_grid/uncertainty"
HEALTH = "~/debug/image_health"
EXPOSURE = "~/debug/exposure"

#: encodings the network can take (8 bits per channel), and the RGB channel order of each
CAMERA_ENCODINGS = {"rgb8": (0, 1, 2), "rgba8": (0, 1, 2), "bgr8": (2, 1, 0), "bgra8": (2, 1, 0), "mono8": None}


def scaled_intrinsics(K: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """K of an image resized from ``src`` to ``dst`` (H, W), pixel centres at integer coordinates:
    ``u' = (u + 0.5) * s - 0.5``."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[0, 1] *= sx
    out[1, 1] *= sy
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    return out


class CameraBevNode(NodeCore):
    """See module doc."""

    #: camera_infos kept by stamp for pairing (a few frames: they come within a frame of their image)
    INFO_KEEP = 8

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.image_topic = params.get("image_topic", topics.CAMERA_IMAGE.format(side="left"))
        self.info_topic = params.get("camera_info_topic", topics.CAMERA_INFO.format(side="left"))
        self.output_topic = params.get("output_topic", CAMERA_OCCUPANCY)
        self.uncertainty_topic = params.get("uncertainty_topic", CAMERA_UNCERTAINTY)
        self.health_topic = params.get("health_topic", HEALTH)
        self.exposure_topic = str(params.get("exposure_topic", EXPOSURE) or "")
        self.weights = str(params.get("weights", "") or "")
        self.threads = int(params.get("threads", 1))
        for attr, value in self._derived(params).items():
            setattr(self, attr, value)
        self.net: Any = None
        self.sidecar: dict[str, Any] = {}
        self.weights_dir: Path | None = None
        self.model: Any = None  # CameraModel of the latest valid camera_info
        self._infos: OrderedDict[int, Any] = OrderedDict()  # stamp -> CameraModel, the last INFO_KEEP
        self._paired = False  # camera_infos have carried their images' stamps: worth waiting for
        self._waiting: tuple[Any, np.ndarray, float] | None = None  # an image waiting for its camera_info
        self._waiting_until = 0  # node clock (ns) after which the waiting image takes the latest camera_info
        self.camera_info_fallbacks = 0
        self._geometry_key: str | None = None
        self._cell_map: tuple[np.ndarray, np.ndarray] | None = None  # node grid cell -> network grid cell
        self.geometry_builds = 0
        self.blackout_frames = 0
        self.last_health: float | None = None
        self.last_exposure: ExposureHealth | None = None

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super()._derived(params)
        out["grid"] = to_dataclass(GridSpec, params.get("grid", {}), f"{self.name}.grid.")
        out["unknown_vacuity"] = float(params.get("unknown_vacuity", 1.0))
        out["min_image_std"] = float(params.get("min_image_std", 2.0))
        out["saturated_level"] = int(params.get("saturated_level", 250))
        out["crushed_level"] = int(params.get("crushed_level", 5))
        if not 0 <= out["crushed_level"] < out["saturated_level"] <= 255:
            raise ConfigError(f"{self.name}: need 0 <= crushed_level < saturated_level <= 255")
        out["evidence_scale"] = float(params.get("evidence_scale", 1.0))
        out["input_width"] = int(params.get("input_width", 320))
        out["info_wait_ns"] = int(float(params.get("camera_info_wait_s", 0.05)) * 1e9)
        if out["evidence_scale"] <= 0:
            raise ConfigError(f"{self.name}.evidence_scale must be positive")
        if out["input_width"] < 0:
            raise ConfigError(f"{self.name}.input_width must be >= 0 (0 = images as received)")
        self._cell_map = None
        return out

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        return super().inputs() + [Port(self.info_topic, topics.CAMERA_INFO_TYPE), Port(self.image_topic, topics.IMAGE)]

    def outputs(self) -> list[Port]:
        out = super().outputs() + [
            Port(self.output_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"),
            Port(self.uncertainty_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"),
        ]
        for t in (self.health_topic, self.exposure_topic):
            if t and not t.startswith("~/"):
                out.append(Port(t, topics.FLOAT64_STAMPED, "reliable"))
        return out

    # --- network ------------------------------------------------------------------------------
    def load(self) -> None:
        """Weights -> network (BatchNorm folded, eval). NodeUnavailable without PyTorch or without
        packaged weights; WeightsError for a bad ``weights`` folder."""
        try:
            import torch  # noqa: F401
            from perception_nodes.models.camera_bev import NETWORK, load_camera_bev
            from perception_nodes.models.weights_io import read_sidecar, resolve_weights_folder
        except ImportError as exc:
            raise NodeUnavailable(f"{self.name}: the camera network needs PyTorch, which is not installed here ({exc})") from exc
        folder = resolve_weights_folder(self.weights, NETWORK)
        if not self.weights:
            try:
                read_sidecar(folder, NETWORK)
            except Exception as exc:  # noqa: BLE001 - no packaged weights in this install
                raise NodeUnavailable(f"{self.name}: no packaged camera_bev weights ({exc}); set `weights`") from exc
        net, side = load_camera_bev(folder)
        self.net, self.sidecar, self.weights_dir = net.fold_batchnorm(), side, folder

    def warmup(self) -> None:
        """Load the network and run it once on a synthetic image of the generator's rig (allocations, the
        numba pooling kernel's compilation); the real camera's geometry is built on its first image."""
        if self.net is None:
            self.load()
        import torch

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        from perception_nodes.scenario.camera import camera_rig

        spec = camera_rig(320, 96)["left"]
        T = np.eye(4)
        T[:3, :3] = spec.base_from_optical()
        T[:3, 3] = spec.position
        img = np.random.default_rng(0).integers(0, 255, (96, 320, 3), dtype=np.uint8)
        self._infer(img, spec.K, T)

    def _net_grid(self) -> GridSpec:
        g = self.net.config.occupancy_grid
        return GridSpec(g.cell, g.size_x, g.size_y, (g.origin_x, g.origin_y))

    def _to_node_grid(self, r: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Evidence on the node's grid: as is when the grids agree, else the network cell under each
        node cell's centre (zero evidence outside the network's grid)."""
        src = self._net_grid()
        if src == self.grid:
            return r, s
        if self._cell_map is None:
            cx, cy = self.grid.cell_centers()
            row, col, inside = src.cell_index(cx.ravel(), cy.ravel())
            self._cell_map = (np.where(inside, row * src.width + col, 0), inside)
        idx, inside = self._cell_map
        shape = self.grid.shape
        return ((r.ravel()[idx] * inside).reshape(shape).astype(np.float32),
                (s.ravel()[idx] * inside).reshape(shape).astype(np.float32))

    def _infer(self, img: np.ndarray, K: np.ndarray, base_from_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB -> Beta evidence (r, s) on the network's grid; stages timed."""
        import torch

        net = self.net
        with torch.inference_mode():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a read-only message buffer: torch warns, nothing writes to it
                x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)  # a view: channels-last memory
            with self.latency.stage("backbone"):
                feats = net.image_features(x)
            with self.latency.stage("lift"):
                depth, context = net.lift(feats)
            with self.latency.stage("pool"):
                geom = net.geometry(net.camera_geometry(K, base_from_camera, img.shape[:2]))
                if geom.key != self._geometry_key:
                    self._geometry_key = geom.key
                    self.geometry_builds += 1
                pooled = net.pool(depth, context, geom, 1)
            with self.latency.stage("heads"):
                crop = net.crop(geom)
                bev = net.bev_net(pooled, crop)
                ev = net.heads(bev, net.coverage(geom), crop)[0].float().numpy() * self.evidence_scale
        return ev[0], ev[1]

    # --- messages -----------------------------------------------------------------------------
    def pending(self, topic: str) -> int:
        return int(topic == self.image_topic and self._waiting is not None)

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        if topic == self.info_topic:
            return self._on_info(msg)
        t0 = time.perf_counter_ns()
        enc = str(msg.encoding)
        if enc not in CAMERA_ENCODINGS:
            raise MalformedMessageError(topics.IMAGE, f"encoding {enc!r} cannot feed the camera network (needs one "
                                        f"of {', '.join(CAMERA_ENCODINGS)})")
        img = image_to_numpy(msg)  # a strided view on the message buffer: no copy
        decode_ms = (time.perf_counter_ns() - t0) / 1e6
        out: list[Emit] = []
        if self._waiting is not None:  # the next image came first: the held one takes what there is
            out += self._release(fallback=True)
        model, final = self._model_for(stamp_to_ns(msg.header.stamp))
        if final:
            return out + (self._process_counted(msg, img, decode_ms, model) if out else
                          self._process(msg, img, decode_ms, model))
        self._waiting = (msg, img, decode_ms)  # wait for its camera_info (or any, when none came yet)
        self._waiting_until = self.clock() + self.info_wait_ns
        return out

    def _model_for(self, stamp: int) -> tuple[Any, bool]:
        """(camera model for an image of ``stamp``, whether to use it now): the camera_info of that stamp;
        else the latest, now when no stamped match can come (the latest is newer than the image, or the
        source's camera_infos do not carry image stamps), else it is only the fallback while waiting."""
        if stamp in self._infos:
            self._paired = True
            return self._infos[stamp], True
        if self.model is None:
            return None, False
        latest = next(reversed(self._infos))
        return self.model, (not self._paired or latest > stamp)

    def _release(self, fallback: bool) -> list[Emit]:
        """Process the waiting image with its camera_info, or (``fallback``) with the latest one; with none
        at all it is dropped ``no_camera_info``."""
        msg, img, decode_ms = self._waiting
        stamp = stamp_to_ns(msg.header.stamp)
        model, final = self._model_for(stamp)
        if not (final or fallback):
            return []
        self._waiting = None
        if model is None:
            self.mark_dropped(self.image_topic, "no_camera_info")
            self._warn("no_camera_info", f"no camera_info on {self.info_topic} yet: image dropped")
            return []
        if self._paired and stamp not in self._infos:
            self.camera_info_fallbacks += 1
            self._warn("camera_info_fallback", f"{self.info_topic}: no camera_info with the image's stamp "
                       f"within {self.info_wait_ns / 1e9:g} s; used the latest")
        return self._process_counted(msg, img, decode_ms, model)

    def _process_counted(self, msg: Any, img: np.ndarray, decode_ms: float, model: Any) -> list[Emit]:
        """:meth:`_process` where the caller is not this image's own delivery (a camera_info, a tick, the
        next image after the held one was released): its failures count on the image topic here."""
        try:
            return self._process(msg, img, decode_ms, model)
        except (MalformedMessageError, CalibrationError) as exc:
            reason = "malformed" if isinstance(exc, MalformedMessageError) else "calibration"
            self.mark_dropped(self.image_topic, reason)
            self._warn(reason, f"{self.image_topic}: {exc}")
            return []

    def on_tick(self) -> list[Emit]:
        if self._waiting is not None and self.model is not None and self.clock() >= self._waiting_until:
            return self._release(fallback=True)
        return []

    def _on_info(self, msg: Any) -> list[Emit]:
        model = camera_model_from_msg(msg)  # MalformedMessageError (NaN, zero focal length, sizes): counted
        self.mark_used(self.info_topic)
        self.model = model
        remember_by_stamp(self._infos, stamp_to_ns(msg.header.stamp), model, self.INFO_KEEP)
        if self._waiting is not None:
            return self._release(fallback=False)
        return []

    _rgb = staticmethod(to_rgb)  # (H, W, 3) RGB of a decoded image (codecs.image.to_rgb)

    def _resize(self, img: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = img.shape[:2]
        if not self.input_width or w <= self.input_width:
            return img, K
        import cv2

        dst = (max(1, int(round(h * self.input_width / w))), self.input_width)
        out = cv2.resize(np.ascontiguousarray(img), (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
        return out, scaled_intrinsics(K, (h, w), dst)

    def _process(self, msg: Any, img: np.ndarray, decode_ms: float, m: Any) -> list[Emit]:
        h, w = img.shape[:2]
        if (w, h) != (int(m.width), int(m.height)):
            self.mark_dropped(self.image_topic, "size_mismatch")
            self._warn("size_mismatch", f"{self.image_topic}: image size {w}x{h} differs from camera_info size "
                       f"{m.width}x{m.height}; image dropped")
            return []
        stamp = stamp_to_ns(msg.header.stamp)
        to_base = self.sensor_to_base(msg.header.frame_id)  # CalibrationError -> dropped "calibration"
        uniform = float(np.std(img[::4, ::4])) < self.min_image_std
        health = 0.0 if uniform else 1.0
        exposure = self.last_exposure = exposure_health(img, saturated_level=self.saturated_level,
                                                        crushed_level=self.crushed_level, min_std=self.min_image_std)
        with self.latency.frame(stamp) as frame:
            t0 = time.perf_counter_ns()
            rgb, K = self._resize(self._rgb(img, str(msg.encoding)), np.asarray(m.P, np.float64)[:3, :3])
            frame.stages_ms["decode"] = decode_ms + (time.perf_counter_ns() - t0) / 1e6
            if uniform:  # nothing to see: all unknown, never evidence invented from a black image
                zeros = np.zeros(self.grid.shape, np.float32)
                r, s = zeros, zeros
            else:
                r, s = self._to_node_grid(*self._infer(rgb, K, to_base))
            with self.latency.stage("heads"):
                prob, vac = to_occupancy_msg_data(BetaGrid(r, s, self.grid), unknown_vacuity=self.unknown_vacuity)
            with self.latency.stage("publish"):
                origin = (*self.grid.origin, 0.0)
                out = [
                    Emit(self.output_topic, topics.OCCUPANCY_GRID_TYPE,
                         occupancy_grid_msg(prob, self.grid.resolution, origin, stamp, self.base_frame, self.backend)),
                    Emit(self.uncertainty_topic, topics.OCCUPANCY_GRID_TYPE,
                         occupancy_grid_msg(vac, self.grid.resolution, origin, stamp, self.base_frame, self.backend)),
                ]
                if self.health_topic:
                    out.append(Emit(self.health_topic, topics.FLOAT64_STAMPED, self._float(stamp, health)))
                if self.exposure_topic:
                    out.append(Emit(self.exposure_topic, topics.FLOAT64_STAMPED,
                                    self._float(stamp, 0.0 if uniform else exposure.health)))
        if uniform:
            self.blackout_frames += 1
            self._warn("blackout", f"{self.image_topic}: image uniform (grey-level std < {self.min_image_std:g}): "
                       "camera blacked out or covered? Published an all-unknown grid")
        self.last_health = health
        self.frames_out += 1
        self.mark_used(self.image_topic)
        return out + self.debug_emits(frame)

    def finish(self) -> list[Emit]:
        if self._waiting is not None:  # end of input: no camera_info of its stamp will come
            return self._release(fallback=True)
        return []

    # --- diagnostics ------------------------------------------------------------------------------
    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        """The common statuses plus ``<name>: camera``: calibration, geometry builds, weights, health."""
        statuses = super().diagnostic_statuses()
        values: dict[str, str] = {"frames_out": str(self.frames_out), "blackout_frames": str(self.blackout_frames),
                                  "geometry_builds": str(self.geometry_builds), "threads": str(self.threads),
                                  "weights": str(self.weights_dir or self.weights or "packaged"),
                                  "input_width": str(self.input_width),
                                  "camera_info_fallbacks": str(self.camera_info_fallbacks)}
        if self.sidecar:
            values["code_version"] = str(self.sidecar.get("code_version", "unknown"))
        if self.last_exposure is not None:
            e = self.last_exposure
            values.update(exposure=f"{e.health:.3f}", saturated_share=f"{e.saturated:.3f}",
                          crushed_share=f"{e.crushed:.3f}", mean_level=f"{e.mean_level:.3f}")
        if self.model is not None:
            values.update(width=str(self.model.width), height=str(self.model.height))
        if self.model is None:
            level, message = (WARN if self.received[self.image_topic] else OK), f"waiting for camera_info on {self.info_topic}"
        elif self.last_health is None:
            level, message = OK, "no image processed yet"
        elif self.last_health <= 0.0:
            level, message = ERROR, "last image uniform: camera blacked out or covered (all-unknown grid published)"
        else:
            level, message = OK, "camera BEV evidence published"
        return statuses + [DiagnosticStatusData(level, f"{self.name}: camera", message[:500], self._sensor_frame, values)]
