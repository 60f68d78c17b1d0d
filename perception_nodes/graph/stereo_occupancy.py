"""Stereo occupancy node: a rectified stereo pair in, evidential BEV occupancy out.

Per synchronised pair (left + right ``image_rect``, ApproximateTime as message_filters; topics in
``perception.params.yaml``), by ``method``:

* ``sgbm`` (default, no training): OpenCV SGBM -> disparity -> depth -> Beta evidence on the occupancy
  node's grid (:mod:`perception_nodes.pipeline.stereo`, :mod:`perception_nodes.pipeline.stereo_occupancy`);
* ``learned``: the StereoVoxelNet-style network (:mod:`perception_nodes.models.stereo_voxel`, weights from
  ``weights``, default the packaged ones) on the pair resized to its input width -> Beta evidence per
  frustum cell -> the BEV cells under them (:mod:`perception_nodes.pipeline.stereo_learned`: input size,
  evidence mapping, health). Far better on generated scenes, far worse on the real KITTI pair (README,
  "Learned stereo"): SGBM stays the default.

Publishes

* ``output_topic``: P(occupied) 0..100, -1 where nothing was seen (``nav_msgs/OccupancyGrid``, base_frame);
* ``uncertainty_topic``: vacuity 0..100 (100 = no evidence);
* ``health_topic`` (default ``~/debug/valid_disparity_ratio``): ``sgbm``: the share of matchable pixels with
  a valid disparity; ``learned``: the share of pixels whose predicted disparity is textured and
  photometrically consistent (:func:`~perception_nodes.pipeline.stereo_learned.consistent_disparity_ratio`;
  same 0..1 scale and thresholds) (``perception_interfaces/Float64Stamped``), also on ``/diagnostics`` as
  ``<name>: stereo``, WARN below ``health.valid_ratio_warn`` and ERROR below ``health.valid_ratio_error``.

Calibration: the last few valid ``camera_info`` of each side are kept by stamp and each image is paired with
the one of its own stamp (a source whose image size changes per frame, e.g. the converted KITTI raw bag,
needs it). Once camera_infos have been seen to carry their images' stamps, a pair that comes before its
camera_infos waits (one pair at most) up to ``camera_info_wait_s`` on the node clock, then takes the latest
valid ones (counted as ``camera_info_fallbacks``, with a warning), as does a pair whose camera_info stamps
have passed; a source whose camera_infos never carry the image stamps is used as the latest, without
waiting. The pair geometry (baseline from the right ``P[0,3] = -fx B``) is rebuilt when the camera_infos
used change. A pair that arrives before both camera_infos waits (one pair at most) for them. base_frame <- left optical frame comes from ``/tf_static``, ``/tf`` or the rig
calibration file.

Stages timed (``~/debug/processing_time/<stage>_ms``): ``decode`` (Image -> strided numpy view, no copy for
8-bit encodings, on arrival), then for ``sgbm``: ``match`` (SGBM), ``depth`` (disparity -> depth, health
ratio), ``evidence`` (inverse sensor model, transform lookup, grid data); for ``learned``: ``resize`` (to the
network's input size, RGB), ``cost_volume`` (features + correlation volume), ``network`` (aggregation,
disparity, frustum decoder, coarse-to-fine evidence), ``health`` (consistency ratio), ``evidence_to_grid``
(transform lookup, frustum -> BEV table when the geometry changed, grid data); and ``publish`` (messages).

Bad input never stops the node, and each case says what it is: an encoding SGBM cannot use (16-bit,
float, unknown) or an image whose data does not fit its size -> ``malformed``; left and right of different
sizes, or an image whose size differs from its camera_info -> dropped ``size_mismatch``; a pair with no
camera_info yet -> dropped ``no_camera_info`` (after waiting); camera_info that is invalid (NaN, zero focal
length: malformed) or does not describe a rectified pair (different intrinsics, zero or negative baseline,
vertical offset) -> the pairs are dropped ``bad_calibration`` with the reason, until a valid one comes; no
transform to base_frame -> ``calibration``; a uniform image (blacked-out or covered camera: grey-level
standard deviation below ``health.min_image_std``) -> matched all the same (its grid is empty: unknown, not
free), with a ``blackout`` warning naming the camera, and the health ratio falls to ~0 (ERROR).
In learned mode the same, plus: a pair that keeps fewer than 16 rows once resized to ``learned.input_width``
-> dropped ``size_mismatch`` with the reason (any other size is resized: see
:mod:`~perception_nodes.pipeline.stereo_learned`).

``threads``: OpenCV's worker threads (``cv2.setNumThreads``) and, in learned mode, PyTorch's
(``torch.set_num_threads``), process-wide: in ``live``/replay every node shares one process, so the value
also holds for any other OpenCV / PyTorch user there.

``method`` must be ``sgbm`` or ``learned`` (ConfigError at configure otherwise); it and ``weights`` are
read-only (a restart loads the network). The learned mode needs PyTorch and weights: without them the node
is unavailable (NodeUnavailable at warm-up), it never falls back silently to SGBM.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict, deque
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
from perception_nodes.graph.occupancy_grid import TIME_JUMP_NS
from perception_nodes.pipeline.occupancy import GridSpec, to_occupancy_msg_data
from perception_nodes.pipeline.stereo import (
    SgbmParams,
    StereoGeometry,
    StereoMatcher,
    StereoPairError,
    depth_from_disparity,
    stereo_geometry,
    valid_disparity_ratio,
)
from perception_nodes.pipeline.stereo_learned import (
    InputSizeError,
    LearnedStereoParams,
    consistent_disparity_ratio,
    frustum_lut,
    frustum_to_grid,
    network_input_size,
    resize_pair,
    scaled_geometry,
)
from perception_nodes.pipeline.stereo_occupancy import StereoEvidenceParams, stereo_evidence
from perception_nodes.sync.approximate_time import ApproximateTimeSynchronizer, DropReason, SyncedSet

#: default topics (documented in perception.params.yaml)
STEREO_OCCUPANCY = "/perception/stereo/occupancy_grid"
STEREO_UNCERTAINTY = "/perception/stereo/occupancy_grid/uncertainty"
HEALTH = "~/debug/valid_disparity_ratio"

#: image encodings SGBM can match (8 bits per channel); others are rejected as malformed for this node
STEREO_ENCODINGS = ("mono8", "rgb8", "bgr8", "rgba8", "bgra8")
#: values of the ``method`` parameter
METHODS = ("sgbm", "learned")


class StereoOccupancyNode(NodeCore):
    """See module doc."""

    LEFT, RIGHT = 0, 1
    #: camera_infos kept by stamp per side, for pairing with the images of the same stamp
    INFO_KEEP = 8

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.left_topic = params.get("left_image_topic", topics.CAMERA_IMAGE.format(side="left"))
        self.right_topic = params.get("right_image_topic", topics.CAMERA_IMAGE.format(side="right"))
        self.left_info_topic = params.get("left_info_topic", topics.CAMERA_INFO.format(side="left"))
        self.right_info_topic = params.get("right_info_topic", topics.CAMERA_INFO.format(side="right"))
        self.output_topic = params.get("output_topic", STEREO_OCCUPANCY)
        self.uncertainty_topic = params.get("uncertainty_topic", STEREO_UNCERTAINTY)
        self.health_topic = params.get("health_topic", HEALTH)
        self.threads = int(params.get("threads", 1))
        self.weights = str(params.get("weights", "") or "")
        self.net: Any = None  # learned mode: the network (eval, BatchNorm folded), loaded at warm-up
        self.sidecar: dict[str, Any] = {}
        self._lut: Any = None  # learned mode: (key, FrustumLut) of the last geometry
        self.lut_builds = 0
        self.refined_share: float | None = None
        sync = params.get("sync", {})
        bound = float(sync.get("inter_message_lower_bound_s", 0.0))
        self.sync = ApproximateTimeSynchronizer(
            2, int(sync.get("queue_size", 5)), max_interval_s=float(sync.get("max_interval_s", 0.02)),
            inter_message_lower_bounds_s=[bound, bound], names=[self.left_topic, self.right_topic])
        for attr, value in self._derived(params).items():
            setattr(self, attr, value)
        self.models: dict[int, Any] = {}  # side -> CameraModel (latest valid camera_info)
        self._infos: dict[int, OrderedDict[int, Any]] = {self.LEFT: OrderedDict(), self.RIGHT: OrderedDict()}
        self._paired = False  # camera_infos have carried their images' stamps: worth waiting for
        self.geometry: StereoGeometry | None = None
        self._geometry_models: tuple[Any, Any] | None = None  # the camera_infos self.geometry was built from
        self.pair_error: str | None = None
        self._waiting: SyncedSet | None = None  # a pair waiting for its camera_infos
        self._waiting_until = 0
        self.camera_info_fallbacks = 0
        self.last_ratio: float | None = None
        self.ratios: deque[float] = deque(maxlen=int(params.get("latency_window", 200)))
        self.blackout_frames = 0
        self._last_now = 0

    def _derived(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super()._derived(params)
        out["grid"] = to_dataclass(GridSpec, params.get("grid", {}), f"{self.name}.grid.")
        out["evidence"] = to_dataclass(StereoEvidenceParams, params.get("evidence", {}), f"{self.name}.evidence.")
        out["sgbm"] = to_dataclass(SgbmParams, params.get("sgbm", {}), f"{self.name}.sgbm.")
        out["matcher"] = StereoMatcher(out["sgbm"])
        method = str(params.get("method", "sgbm"))
        if method not in METHODS:
            raise ConfigError(f"{self.name}.method={method!r} is not one of {', '.join(METHODS)}")
        out["method"] = method
        try:
            out["learned"] = to_dataclass(LearnedStereoParams, params.get("learned", {}), f"{self.name}.learned.")
        except ValueError as exc:
            raise ConfigError(f"{self.name}.learned: {exc}") from None
        out["_lut"] = None  # rebuilt on the next pair with the new parameters
        out["unknown_vacuity"] = float(params.get("unknown_vacuity", 1.0))
        out["min_disparity_px"] = float(params.get("min_disparity_px", 0.5))
        out["info_wait_ns"] = int(float(params.get("camera_info_wait_s", 0.05)) * 1e9)
        health = params.get("health", {})
        warn, error = float(health.get("valid_ratio_warn", 0.5)), float(health.get("valid_ratio_error", 0.15))
        if error > warn:
            raise ConfigError(f"{self.name}.health.valid_ratio_error ({error}) must not exceed valid_ratio_warn ({warn})")
        out["ratio_warn"], out["ratio_error"] = warn, error
        out["min_image_std"] = float(health.get("min_image_std", 2.0))
        check = params.get("pair_check", {})
        out["intrinsics_tol"] = float(check.get("intrinsics_tol", 1e-3))
        out["max_vertical_offset"] = float(check.get("max_vertical_offset", 0.02))
        return out

    def reconfigure(self, changes: dict[str, Any]) -> None:
        super().reconfigure(changes)
        self._update_geometry(self._geometry_models, force=True)  # pair-check tolerances may have changed

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        return super().inputs() + [
            Port(self.left_info_topic, topics.CAMERA_INFO_TYPE),
            Port(self.right_info_topic, topics.CAMERA_INFO_TYPE),
            Port(self.left_topic, topics.IMAGE),
            Port(self.right_topic, topics.IMAGE),
        ]

    def outputs(self) -> list[Port]:
        out = super().outputs() + [
            Port(self.output_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"),
            Port(self.uncertainty_topic, topics.OCCUPANCY_GRID_TYPE, "reliable"),
        ]
        if self.health_topic and not self.health_topic.startswith("~/"):
            out.append(Port(self.health_topic, topics.FLOAT64_STAMPED, "reliable"))
        return out

    def warmup(self) -> None:
        """Set OpenCV's (and PyTorch's) threads, load the network in learned mode, and run the matcher once
        on a small synthetic pair (allocations; the grid's tables are built for the real camera on its
        first frame)."""
        try:
            import cv2
        except ImportError as exc:  # OpenCV comes with the vision extra, not with a core-only install
            raise NodeUnavailable(f"{self.name}: stereo matching needs OpenCV (the `vision` extra): {exc}") from exc
        if self.threads > 0:
            cv2.setNumThreads(self.threads)
        rng = np.random.default_rng(0)
        if self.method == "learned":
            self.load()
            import torch

            if self.threads > 0:
                torch.set_num_threads(self.threads)
            left = rng.integers(0, 255, (96, 320, 3), dtype=np.uint8)
            self._infer(left, np.roll(left, -4, axis=1))
            return
        left = rng.integers(0, 255, (48, 160), dtype=np.uint8)
        right = np.roll(left, -4, axis=1)
        self.matcher.disparity(left, right)

    def load(self) -> None:
        """Learned mode: weights -> network (eval, BatchNorm folded). NodeUnavailable without PyTorch or
        without packaged weights; WeightsError (a clear message) for a bad ``weights`` folder."""
        try:
            import torch  # noqa: F401

            from perception_nodes.models.stereo_voxel import NETWORK, load_stereo_voxel
            from perception_nodes.models.weights_io import default_weights_dir, read_sidecar
        except ImportError as exc:
            raise NodeUnavailable(f"{self.name}: method learned needs PyTorch, which is not installed here ({exc})") from exc
        if not self.weights:
            try:
                read_sidecar(default_weights_dir(NETWORK), NETWORK)
            except Exception as exc:  # noqa: BLE001 - no packaged weights in this install
                raise NodeUnavailable(f"{self.name}: no packaged stereo_voxel weights ({exc}); set `weights`") from exc
        net, side = load_stereo_voxel(str(Path(self.weights).expanduser()) if self.weights else None)
        self.net, self.sidecar = net.fold_batchnorm(), side

    def _infer(self, left: np.ndarray, right: np.ndarray) -> Any:
        """(h, w, 3) uint8 RGB pair at the network's input size -> its output; ``cost_volume`` and
        ``network`` timed."""
        import torch

        with torch.inference_mode():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a read-only message buffer: torch warns, nothing writes to it
                lt = torch.from_numpy(left).permute(2, 0, 1).unsqueeze(0)
                rt = torch.from_numpy(right).permute(2, 0, 1).unsqueeze(0)
            with self.latency.stage("cost_volume"):
                fl, vol = self.net.match(lt, rt)
            with self.latency.stage("network"):
                return self.net.decode(fl, vol, tuple(left.shape[:2]))

    # --- messages -----------------------------------------------------------------------------
    def pending(self, topic: str) -> int:
        if topic == self.left_topic:
            return self.sync.pending[self.LEFT] + (self._waiting is not None)
        if topic == self.right_topic:
            return self.sync.pending[self.RIGHT] + (self._waiting is not None)
        return 0

    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        if topic in (self.left_info_topic, self.right_info_topic):
            return self._on_info(topic, msg)
        idx = self.LEFT if topic == self.left_topic else self.RIGHT
        t0 = time.perf_counter_ns()
        enc = str(msg.encoding)
        if enc not in STEREO_ENCODINGS:
            raise MalformedMessageError(topics.IMAGE, f"encoding {enc!r} cannot be stereo-matched (needs one of "
                                        f"{', '.join(STEREO_ENCODINGS)})")
        img = image_to_numpy(msg)  # a strided view on the message buffer: no copy
        decode_ms = (time.perf_counter_ns() - t0) / 1e6
        sets = self.sync.add(idx, stamp_to_ns(msg.header.stamp), (msg, img, decode_ms), now_ns=self._monotonic_now())
        out = self._process_sets(sets)
        self._sync_counts()
        return out

    def _monotonic_now(self) -> int:
        """The node clock held from going back by small steps (replay restarts it at each message's receive
        time; the synchroniser only records it, no time-outs are configured); a step back of more than
        :data:`~perception_nodes.graph.occupancy_grid.TIME_JUMP_NS` (a looping bag) restarts it."""
        now = self.clock()
        if now < self._last_now - TIME_JUMP_NS:
            self._reset_sync("time_jump")
            self._last_now = now
        self._last_now = max(now, self._last_now)
        return self._last_now

    def _on_info(self, topic: str, msg: Any) -> list[Emit]:
        side = self.LEFT if topic == self.left_info_topic else self.RIGHT
        model = camera_model_from_msg(msg)  # MalformedMessageError (NaN, zero focal length, sizes): counted
        self.mark_used(topic)
        self.models[side] = model
        stamp = stamp_to_ns(msg.header.stamp)
        kept = self._infos[side]
        kept.pop(stamp, None)
        kept[stamp] = model
        while len(kept) > self.INFO_KEEP:
            kept.popitem(last=False)
        other = self._infos[1 - side]
        if not self._paired or stamp in other:  # a consistent latest pair: its geometry (and status) now
            self._update_geometry((self.models.get(self.LEFT), self.models.get(self.RIGHT)))
        if self._waiting is not None:
            return self._release(fallback=False)
        return []

    def _models_for(self, s: SyncedSet) -> tuple[tuple[Any, Any] | None, bool, bool]:
        """(left and right camera models for the pair ``s``, whether to use them now, whether both are the
        camera_infos of the images' own stamps): the stamped ones; else the latest, now when no stamped
        match can come (the latest is newer than the image on each side lacking one, or the source's
        camera_infos do not carry image stamps), else only as the fallback while waiting."""
        stamps = [stamp_to_ns(m[0].header.stamp) for m in s.messages]
        own = [self._infos[k].get(stamps[k]) for k in (self.LEFT, self.RIGHT)]
        if own[0] is not None and own[1] is not None:
            self._paired = True
            return (own[0], own[1]), True, True
        if len(self.models) < 2:
            return None, False, False
        passed = all(own[k] is not None or next(reversed(self._infos[k])) > stamps[k] for k in (self.LEFT, self.RIGHT))
        models = (own[0] or self.models[self.LEFT], own[1] or self.models[self.RIGHT])
        return models, (not self._paired or passed), False

    def _release(self, fallback: bool) -> list[Emit]:
        """Process the waiting pair with its camera_infos, or (``fallback``) with the latest ones; with none
        it is dropped ``no_camera_info``."""
        s = self._waiting
        models, final, matched = self._models_for(s)
        if not (final or fallback):
            return []
        self._waiting = None
        if models is None:
            self._drop_set(s, "no_camera_info")
            missing = [t for k, t in ((self.LEFT, self.left_info_topic), (self.RIGHT, self.right_info_topic))
                       if k not in self.models]
            self._warn("no_camera_info", f"no camera_info on {', '.join(missing)} yet: image pair dropped")
            return []
        if self._paired and not matched:
            self.camera_info_fallbacks += 1
            self._warn("camera_info_fallback", f"{self.left_info_topic} / {self.right_info_topic}: no camera_info "
                       f"with the images' stamps within {self.info_wait_ns / 1e9:g} s; used the latest")
        return self._run_set(s, models)

    def on_tick(self) -> list[Emit]:
        if self._waiting is not None and len(self.models) == 2 and self.clock() >= self._waiting_until:
            return self._release(fallback=True)
        return []

    def _update_geometry(self, models: tuple[Any, Any] | None, force: bool = False) -> None:
        """Pair geometry (and pair check) of ``models``, rebuilt only when they changed (or ``force``)."""
        if models is None or models[0] is None or models[1] is None:
            return
        if not force and self._geometry_models is not None and self._geometry_models[0] == models[0] \
                and self._geometry_models[1] == models[1]:
            return
        self._geometry_models = models
        try:
            self.geometry = stereo_geometry(models[0], models[1], intrinsics_tol=self.intrinsics_tol,
                                            max_vertical_offset=self.max_vertical_offset)
            self.pair_error = None
        except StereoPairError as exc:
            self.geometry, self.pair_error = None, str(exc)
            self._warn("bad_calibration", f"{self.left_info_topic} / {self.right_info_topic}: {exc}")

    def _sync_counts(self) -> None:
        for topic, idx in ((self.left_topic, self.LEFT), (self.right_topic, self.RIGHT)):
            for reason, per_input in self.sync.dropped_by_reason.items():
                if reason is not DropReason.RESET and per_input[idx]:
                    self.set_dropped(topic, f"sync_{reason.value}", per_input[idx])

    def _drop_set(self, s: SyncedSet, reason: str) -> None:
        for topic, m in zip((self.left_topic, self.right_topic), s.messages, strict=True):
            if m is not None:
                self.mark_dropped(topic, reason)

    def _process_sets(self, sets: list[SyncedSet]) -> list[Emit]:
        out: list[Emit] = []
        for s in sets:
            if self._waiting is not None:  # the next pair came first: the held one takes what there is
                out += self._release(fallback=True)
            models, final, _ = self._models_for(s)
            if not final:  # wait for its camera_infos (or any, when none came yet): one pair at most
                self._waiting = s
                self._waiting_until = self.clock() + self.info_wait_ns
                continue
            out += self._run_set(s, models)
        return out

    def _run_set(self, s: SyncedSet, models: tuple[Any, Any]) -> list[Emit]:
        """One pair with its camera models; fault isolation per pair: a failure drops this pair, never the
        ones after it."""
        try:
            self._update_geometry(models)
            return self._process(s)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, CalibrationError):
                self._drop_set(s, "calibration")
                self._warn("calibration", f"{self.left_topic}: {exc}")
            elif isinstance(exc, (StereoPairError, MalformedMessageError)):
                self._drop_set(s, "malformed_in_set")
                self._warn("pair", f"{self.left_topic} / {self.right_topic}: {exc}")
            else:
                self._drop_set(s, "error")
                self._fault(self.left_topic, exc)
        return []

    def _process(self, s: SyncedSet) -> list[Emit]:
        (lmsg, limg, ldec), (rmsg, rimg, rdec) = s.messages
        if self.geometry is None:
            self._drop_set(s, "bad_calibration")
            self._warn("bad_calibration", f"image pair dropped: {self.pair_error}")
            return []
        g = self.geometry
        size_error = None
        if limg.shape != rimg.shape:
            size_error = f"left and right images differ in size or channels: {limg.shape} vs {rimg.shape} (H, W[, C])"
        elif (limg.shape[1], limg.shape[0]) != (g.width, g.height):
            size_error = f"image size {limg.shape[1]}x{limg.shape[0]} differs from camera_info size {g.width}x{g.height}"
        if size_error is not None:
            self._drop_set(s, "size_mismatch")
            self._warn("size_mismatch", f"{self.left_topic} / {self.right_topic}: {size_error}; pair dropped")
            return []
        stamp = stamp_to_ns(lmsg.header.stamp)
        if self.method == "learned":
            try:
                net_size = network_input_size(g.width, g.height, self.learned.input_width)
            except InputSizeError as exc:
                self._drop_set(s, "size_mismatch")
                self._warn("size_mismatch", f"{self.left_topic} / {self.right_topic}: {exc}; pair dropped")
                return []
            if self.net is None:
                self.load()
        with self.latency.frame(stamp) as frame:
            frame.stages_ms["decode"] = ldec + rdec
            if self.method == "learned":
                ratio, prob, vac = self._learned(lmsg, limg, rimg, net_size)
            else:
                ratio, prob, vac = self._sgbm(lmsg, limg, rimg)
            with self.latency.stage("publish"):
                origin = (*self.grid.origin, 0.0)
                out = [
                    Emit(self.output_topic, topics.OCCUPANCY_GRID_TYPE,
                         occupancy_grid_msg(prob, self.grid.resolution, origin, stamp, self.base_frame, self.backend)),
                    Emit(self.uncertainty_topic, topics.OCCUPANCY_GRID_TYPE,
                         occupancy_grid_msg(vac, self.grid.resolution, origin, stamp, self.base_frame, self.backend)),
                ]
                if self.health_topic:
                    out.append(Emit(self.health_topic, topics.FLOAT64_STAMPED, self._float(stamp, ratio)))
        self._check_images(limg, rimg)
        self.last_ratio = ratio
        self.ratios.append(ratio)
        if ratio < self.ratio_warn:
            self._warn("health", f"{self._health_name} {ratio:.2f} below {self.ratio_warn:g} at stamp {stamp} ns")
        self.frames_out += 1
        self.mark_used(self.left_topic)
        self.mark_used(self.right_topic)
        return out + self.debug_emits(frame)

    @property
    def _health_name(self) -> str:
        return "consistent disparity ratio" if self.method == "learned" else "valid disparity ratio"

    def _learned(self, lmsg: Any, limg: np.ndarray, rimg: np.ndarray,
                 net_size: tuple[int, int]) -> tuple[float, np.ndarray, np.ndarray]:
        """Learned mode of one pair (stages ``resize``, ``cost_volume``, ``network``, ``health``,
        ``evidence_to_grid``): (health ratio, probability and vacuity grid data)."""
        g = self.geometry
        w, h = net_size
        enc = str(lmsg.encoding)
        with self.latency.stage("resize"):
            ls, rs = resize_pair(to_rgb(limg, enc), to_rgb(rimg, enc), w, h)
        out = self._infer(ls, rs)
        with self.latency.stage("health"):
            disp = out.disparity[0].numpy()
            ratio = consistent_disparity_ratio(ls, rs, disp, self.learned.consistency_tol, self.learned.texture_min)
            self.refined_share = out.refined_cells / max(out.total_cells, 1)
        with self.latency.stage("evidence_to_grid"):
            to_base = self.sensor_to_base(lmsg.header.frame_id)
            key = (g, w, h, to_base.tobytes())
            if self._lut is None or self._lut[0] != key:
                gn = scaled_geometry(g, w, h)
                c = self.net.config
                self._lut = (key, frustum_lut(gn, c.planes, c.plane_step, to_base, self.grid, self.learned))
                self.lut_builds += 1
            grid = frustum_to_grid(out.occupancy_evidence[0].numpy(), self._lut[1], self.grid, self.learned)
            prob, vac = to_occupancy_msg_data(grid, unknown_vacuity=self.unknown_vacuity)
        return ratio, prob, vac

    def _sgbm(self, lmsg: Any, limg: np.ndarray, rimg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """SGBM mode of one pair (stages ``match``, ``depth``, ``evidence``): (health ratio, probability and
        vacuity grid data)."""
        g = self.geometry
        with self.latency.stage("match"):
            disp = self.matcher.disparity(limg, rimg)
        with self.latency.stage("depth"):
            depth = depth_from_disparity(disp, g, min_disparity=self.min_disparity_px)
            ratio = valid_disparity_ratio(disp, self.matcher.num_disparities(g.width),
                                          self.min_disparity_px + g.doffs)
        with self.latency.stage("evidence"):
            to_base = self.sensor_to_base(lmsg.header.frame_id)
            grid, _ = stereo_evidence(depth, g, to_base, self.grid, self.evidence)
            prob, vac = to_occupancy_msg_data(grid, unknown_vacuity=self.unknown_vacuity)
        return ratio, prob, vac

    def _check_images(self, left: np.ndarray, right: np.ndarray) -> None:
        """A blacked-out or covered camera gives a uniform image: say which (a subsample is enough)."""
        dark = [name for name, img in (("left", left), ("right", right))
                if float(np.std(img[::4, ::4])) < self.min_image_std]
        if dark:
            self.blackout_frames += 1
            self._warn("blackout", f"{' and '.join(dark)} image uniform (grey-level std < {self.min_image_std:g}): "
                       "camera blacked out or covered? Its pair gives no evidence")

    def _reset_sync(self, reason: str) -> None:
        """Empty the synchroniser and the waiting pair; what they held counts as dropped for ``reason``."""
        if self._waiting is not None:
            self._drop_set(self._waiting, reason)
            self._waiting = None
        for topic, idx in ((self.left_topic, self.LEFT), (self.right_topic, self.RIGHT)):
            n = self.sync.pending[idx]
            if n:
                self.mark_dropped(topic, reason, n)
        self.sync.reset()
        self._sync_counts()

    def finish(self) -> list[Emit]:
        out = self._release(fallback=True) if self._waiting is not None else []  # its own will not come now
        self._reset_sync("end_of_input")
        return out

    # --- diagnostics ------------------------------------------------------------------------------
    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        """The common statuses plus ``<name>: stereo``: health ratio against its thresholds, pair geometry."""
        statuses = super().diagnostic_statuses()
        values: dict[str, str] = {"frames_out": str(self.frames_out), "blackout_frames": str(self.blackout_frames),
                                  "valid_ratio_warn": f"{self.ratio_warn:g}", "valid_ratio_error": f"{self.ratio_error:g}",
                                  "method": self.method, "threads": str(self.threads),
                                  "camera_info_fallbacks": str(self.camera_info_fallbacks)}
        g = self.geometry
        if self.method == "sgbm":
            values["sgbm_mode"] = self.sgbm.mode
        else:
            values.update(weights=self.weights or "packaged", health="consistent_disparity_ratio",
                          evidence_to_grid_builds=str(self.lut_builds))
            if self.refined_share is not None:
                values["refined_share"] = f"{self.refined_share:.3f}"
        if g is not None:
            values.update(width=str(g.width), height=str(g.height), fx=f"{g.fx:.3f}", baseline_m=f"{g.baseline:.4f}")
            if self.method == "sgbm":
                values.update(num_disparities=str(self.matcher.num_disparities(g.width)),
                              min_depth_m=f"{g.fb / self.matcher.num_disparities(g.width):.2f}")
            else:
                try:
                    w, h = network_input_size(g.width, g.height, self.learned.input_width)
                    values["network_input"] = f"{w}x{h}"
                    if self.net is not None:
                        values["min_depth_m"] = f"{g.fb * w / g.width / self.net.config.max_disparity:.2f}"
                except InputSizeError as exc:
                    values["network_input"] = str(exc)[:200]
        if self.last_ratio is not None:
            values["valid_disparity_ratio"] = f"{self.last_ratio:.3f}"
            values["valid_disparity_ratio_mean"] = f"{float(np.mean(self.ratios)):.3f}"
        if self.pair_error is not None:
            level, message = ERROR, f"camera_info does not describe a rectified pair: {self.pair_error}"
        elif len(self.models) < 2:
            level, message = (WARN if self.received[self.left_topic] else OK), "waiting for camera_info of both cameras"
        elif self.last_ratio is None:
            level, message = OK, "no pair matched yet"
        elif self.last_ratio < self.ratio_error:
            level, message = ERROR, (f"{self._health_name} {self.last_ratio:.2f} < {self.ratio_error:g}: stereo "
                                     "blind (camera blacked out, covered, glare or decalibrated?)")
        elif self.last_ratio < self.ratio_warn:
            level, message = WARN, f"{self._health_name} {self.last_ratio:.2f} < {self.ratio_warn:g}: degraded"
        else:
            level, message = OK, f"{self._health_name} {self.last_ratio:.2f}"
        return statuses + [DiagnosticStatusData(level, f"{self.name}: stereo", message[:500], self._sensor_frame, values)]
