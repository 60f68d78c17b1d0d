"""Calibration monitor: checks every few scans that each camera's extrinsic still fits the LiDAR.

Inputs: the LiDAR cloud, and per configured camera its image and CameraInfo; transforms from the rig
file, ``/tf_static`` and ``/tf``. Every ``check_every_n_scans``-th scan is checked against the images of
the same capture (stamps within ``max_stamp_diff_s``) with :mod:`perception_nodes.calibration_check`:
LiDAR depth edges against image edges per camera, and vertical disparity plus the disparity bias against
the LiDAR for each stereo pair (a camera whose CameraInfo has ``P[0, 3] < 0`` and one of the same
intrinsics with ``P[0, 3] = 0``). Verdicts pool the last ``pool_checks`` checks.

Outputs: on ``/diagnostics`` one status per camera (``<node>: camera <name>``: OK/WARN/ERROR with the
reason; STALE until its first check) and per stereo pair (``<node>: stereo <left>/<right>``); a pair's
failure is also reported on its right camera (the one whose CameraInfo is defined relative to the other:
the check cannot tell which of the two moved). Debug topics (``publish_debug``):
``~/debug/<camera>/edge_statistic`` (F), ``~/debug/<camera>/edge_score`` (J),
``~/debug/<left>_<right>/vertical_disparity_px`` and ``.../disparity_bias_px`` (Float64Stamped). Always
(not only with ``publish_debug``), per checked camera with the scan's stamp, ``~/debug/<camera>/calibration_health``
(0..1, 1 = calibration fits: the lowest of its parts, each also on ``.../calibration_health/edge`` and, for
a stereo camera, ``.../calibration_health/stereo``; :meth:`CalibrationMonitorNode.calibration_health_parts`)
for the fusion node's gate.

Scans and images not selected by the sampling are counted as dropped ``sampled_out`` (by design: they
do not turn the inputs status to WARN). Each image is checked with the CameraInfo of its own stamp (the
last few are kept by stamp; a source whose image size changes per frame, e.g. the converted KITTI raw
bag, needs it): once a camera's CameraInfos have carried its images' stamps, a selected scan waits for
them too, until the next scan forces the check with the latest CameraInfo. A selected scan with no camera to check it against (no image within
``max_stamp_diff_s``, no CameraInfo yet) is dropped ``no_images`` without any work; a bad CameraInfo is
counted malformed with its reason, and the
camera keeps its last good model.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from typing import Any

import numpy as np

from perception_nodes import topics
from perception_nodes.calibration_check import (
    ERROR,
    OK,
    WARN,
    AlignmentAccumulator,
    CheckParams,
    StereoCheck,
    alignment_scores,
    check_stereo,
    edge_response,
    lidar_depth_edges,
    project_lidar,
    step_px,
    verdict_of,
)
from perception_nodes.codecs.backend import stamp_to_ns
from perception_nodes.codecs.camera_info import CameraModel, camera_model_from_msg
from perception_nodes.codecs.image import image_to_numpy
from perception_nodes.codecs.outputs import DiagnosticStatusData
from perception_nodes.codecs.pointcloud2 import read_xyzi
from perception_nodes.config import to_dataclass
from perception_nodes.errors import CalibrationError, NodeUnavailable
from perception_nodes.evidential.fusion import ramp
from perception_nodes.graph.node import Emit, NodeCore, Port
from perception_nodes.sync.stamp_cache import remember_by_stamp

_LEVELS = {OK: 0, WARN: 1, ERROR: 2}
STALE_LEVEL = 3


class CalibrationMonitorNode(NodeCore):
    """See module doc. Stages timed: ``decode``, ``edges``, ``alignment``, ``stereo``."""

    #: CameraInfos kept by stamp per camera, for pairing with the image of the same stamp
    INFO_KEEP = 8

    def __init__(self, name: str, params: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, params, **kw)
        self.lidar_topic = params.get("lidar_topic", topics.LIDAR_POINTS)
        self.cameras: list[str] = [str(c) for c in params.get("cameras", ["left", "right", "mono"])]
        image_t = str(params.get("image_topic", "/sensing/camera/{camera}/image_rect"))
        info_t = str(params.get("camera_info_topic", "/sensing/camera/{camera}/camera_info"))
        self.image_topics = {c: image_t.format(camera=c) for c in self.cameras}
        self.info_topics = {c: info_t.format(camera=c) for c in self.cameras}
        self._camera_of = {t: c for c, t in self.image_topics.items()} | {t: c for c, t in self.info_topics.items()}
        self.every_n = max(1, int(params.get("check_every_n_scans", 10)))
        self.pool = max(1, int(params.get("pool_checks", 5)))
        self.max_stamp_diff_ns = int(float(params.get("max_stamp_diff_s", 0.05)) * 1e9)
        self.check = to_dataclass(CheckParams, params.get("check", {}), f"{name}.check.")
        self.models: dict[str, CameraModel] = {}  # camera -> latest valid CameraInfo
        self._infos: dict[str, OrderedDict[int, CameraModel]] = {c: OrderedDict() for c in self.cameras}
        self._paired: set[str] = set()  # cameras whose CameraInfos have carried their images' stamps
        self._check_models: dict[str, CameraModel] = {}  # camera -> the model of the check running
        self._images: dict[str, tuple[int, Any]] = {}  # camera -> (stamp, Image msg) held
        self._scan: tuple[int, Any] | None = None  # the selected scan waiting for its images
        self._scans_seen = 0
        self._edge_hist: dict[str, deque] = {c: deque(maxlen=self.pool) for c in self.cameras}
        self._stereo_hist: dict[tuple[str, str], deque] = {}
        self.results: dict[str, Any] = {}  # camera -> CameraCheck (pooled); (left, right) -> StereoCheck
        self._camera_problem: dict[str, str] = {}  # camera -> why its last check could not run

    # --- wiring -------------------------------------------------------------------------------
    def inputs(self) -> list[Port]:
        ports = super().inputs() + [Port(self.lidar_topic, topics.POINTCLOUD2)]
        for c in self.cameras:
            ports += [Port(self.image_topics[c], topics.IMAGE), Port(self.info_topics[c], topics.CAMERA_INFO_TYPE)]
        return ports

    def warmup(self) -> None:
        """Raises NodeUnavailable without OpenCV (a core-only install: the ``vision`` extra brings it), so
        replay and ``live`` leave the monitor out and say why; else runs the numpy/OpenCV paths once on a
        tiny synthetic image and scan, so the first real check is not slow."""
        try:
            import cv2  # noqa: F401
        except ImportError as exc:
            raise NodeUnavailable(f"{self.name}: the calibration check needs OpenCV, which is not installed "
                                  f"here ({exc}); install the vision extra (pip install perception-nodes[vision])"
                                  ) from exc
        from perception_nodes.graph.node import synthetic_scan

        img = np.zeros((32, 48, 3), np.uint8)
        img[:, 24:] = 200
        e, w = lidar_depth_edges(synthetic_scan(), self.check)
        k = np.array([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]])
        alignment_scores(e, w, np.eye(4), k, edge_response(img, 2.0, self.check), self.check)

    def pending(self, topic: str) -> int:
        if topic == self.lidar_topic:
            return int(self._scan is not None)
        cam = self._camera_of.get(topic)
        if cam is not None and topic == self.image_topics[cam]:
            return int(cam in self._images)
        return 0

    def _sampled_out(self, topic: str) -> None:
        """A message the sampling leaves out on purpose: counted as dropped ``sampled_out`` without the
        inputs status going to WARN (that is for losses)."""
        self.dropped.setdefault(topic, Counter())["sampled_out"] += 1

    # --- messages -----------------------------------------------------------------------------
    def on_message(self, topic: str, msg: Any) -> list[Emit]:
        stamp = stamp_to_ns(msg.header.stamp)
        if topic == self.lidar_topic:
            return self._on_scan(stamp, msg)
        cam = self._camera_of.get(topic)
        if cam is None:
            return []
        if topic == self.info_topics[cam]:
            self.models[cam] = camera_model_from_msg(msg)  # MalformedMessageError: counted with its reason
            self.mark_used(topic)
            remember_by_stamp(self._infos[cam], stamp, self.models[cam], self.INFO_KEEP)
            return self._try_check(force=False)
        old = self._images.pop(cam, None)
        if old is not None:
            self._sampled_out(topic)
        self._images[cam] = (stamp, msg)
        return self._try_check(force=False)

    def _on_scan(self, stamp: int, msg: Any) -> list[Emit]:
        out = []
        if self._scan is not None:  # the previous selected scan waited long enough: check with what came
            out += self._try_check(force=True)
        self._scans_seen += 1
        if (self._scans_seen - 1) % self.every_n:
            self._sampled_out(self.lidar_topic)
            return out
        self._scan = (stamp, msg)
        return out + self._try_check(force=False)

    def _model_of(self, cam: str) -> CameraModel:
        """The CameraInfo of the held image's stamp, else the latest."""
        return self._infos[cam].get(self._images[cam][0], self.models[cam])

    def _matching(self, stamp: int, force: bool) -> list[str]:
        """Cameras whose image is within ``max_stamp_diff_s`` of the scan and which have a CameraInfo: the one
        of the image's stamp for a camera known to send them (unless ``force``), else any."""
        out = []
        for c in self.cameras:
            if c not in self.models or c not in self._images or abs(self._images[c][0] - stamp) > self.max_stamp_diff_ns:
                continue
            if self._images[c][0] in self._infos[c]:
                self._paired.add(c)
            elif c in self._paired and not force:
                continue  # its own CameraInfo may still come
            out.append(c)
        return out

    def _try_check(self, force: bool) -> list[Emit]:
        if self._scan is None:
            return []
        stamp, scan = self._scan
        ready = self._matching(stamp, force)
        if not force and len(ready) < len(self.cameras):
            return []
        self._scan = None
        for c in self.cameras:
            if c not in ready:
                why = ("no CameraInfo yet" if c not in self.models else
                       "no image" if c not in self._images else
                       f"no image within {self.max_stamp_diff_ns / 1e9:g} s of the scan")
                self._camera_problem[c] = why
        if not ready:  # nothing to check the scan against: no work (the camera statuses say why)
            self.mark_dropped(self.lidar_topic, "no_images")
            return []
        try:
            self._check_models = {c: self._model_of(c) for c in ready}
            return self._run_check(stamp, scan, ready)
        finally:
            self.mark_used(self.lidar_topic)
            for c in ready:
                self._images.pop(c, None)
                self.mark_used(self.image_topics[c])

    def _run_check(self, stamp: int, scan: Any, cams: list[str]) -> list[Emit]:
        out: list[Emit] = []
        with self.latency.frame(stamp) as frame:
            with self.latency.stage("decode"):
                xyzi = self.sanitize(self.lidar_topic, read_xyzi(scan))
                lidar_frame = str(scan.header.frame_id).lstrip("/")
                images = {c: image_to_numpy(self._images[c][1]) for c in cams}
            with self.latency.stage("edges"):
                edges = lidar_depth_edges(xyzi, self.check)
            poses: dict[str, np.ndarray] = {}
            with self.latency.stage("alignment"):
                for c in cams:
                    out += self._check_camera(c, images[c], edges, lidar_frame, stamp, poses)
            with self.latency.stage("stereo"):
                for left, right in self._pairs(poses):
                    out += self._check_pair(left, right, images, xyzi, poses, stamp)
            for c in cams:
                parts = self.calibration_health_parts(c)
                if parts:
                    t = f"~/debug/{c}/calibration_health"
                    out.append(Emit(t, topics.FLOAT64_STAMPED, self._float(stamp, min(parts.values()))))
                    out += [Emit(f"{t}/{k}", topics.FLOAT64_STAMPED, self._float(stamp, v)) for k, v in parts.items()]
        self.frames_out += 1
        return out + self.debug_emits(frame)

    def _check_camera(self, c: str, img: np.ndarray, edges: tuple[np.ndarray, np.ndarray], lidar_frame: str,
                      stamp: int, poses: dict[str, np.ndarray]) -> list[Emit]:
        model = self._check_models[c]
        if img.shape[:2] != (model.height, model.width):
            self._camera_problem[c] = (f"image {img.shape[1]}x{img.shape[0]} does not match CameraInfo "
                                       f"{model.width}x{model.height}")
            return []
        try:
            T = self.transforms.lookup(model.frame_id.lstrip("/"), lidar_frame)
        except CalibrationError as exc:
            self._camera_problem[c] = str(exc)
            return []
        poses[c] = T
        K = model.P[:, :3]
        resp = edge_response(img, self.check.decay_steps * step_px(float(K[0, 0]), self.check), self.check)
        sums, weight, names, n = alignment_scores(edges[0], edges[1], T, K, resp, self.check)
        self._edge_hist[c].append((sums, float(weight), names, n))
        self._camera_problem.pop(c, None)
        res = self.results[c] = self._pooled(c)
        if not (self.publish_debug and np.isfinite(res.statistic)):
            return []
        return [Emit(f"~/debug/{c}/edge_statistic", topics.FLOAT64_STAMPED, self._float(stamp, res.statistic)),
                Emit(f"~/debug/{c}/edge_score", topics.FLOAT64_STAMPED, self._float(stamp, res.score))]

    def _check_pair(self, left: str, right: str, images: dict[str, np.ndarray], xyzi: np.ndarray,
                    poses: dict[str, np.ndarray], stamp: int) -> list[Emit]:
        lm = self._check_models[left]
        lid = project_lidar(xyzi, poses[left], lm.P[:, :3], lm.width, lm.height)
        s = check_stereo(left, right, images[left], images[right], self.check, lidar_left=lid,
                         fx_baseline=-float(self._check_models[right].P[0, 3]))
        hist = self._stereo_hist.setdefault((left, right), deque(maxlen=self.pool))
        hist.append(s)
        pooled = self.results[(left, right)] = self._pooled_stereo(list(hist))
        out = []
        if self.publish_debug and np.isfinite(pooled.median_abs_dy_px):
            out.append(Emit(f"~/debug/{left}_{right}/vertical_disparity_px", topics.FLOAT64_STAMPED,
                            self._float(stamp, pooled.median_abs_dy_px)))
            if np.isfinite(pooled.disparity_bias_px):
                out.append(Emit(f"~/debug/{left}_{right}/disparity_bias_px", topics.FLOAT64_STAMPED,
                                self._float(stamp, pooled.disparity_bias_px)))
        return out

    def _pooled(self, cam: str):
        hist = self._edge_hist[cam]
        sums = np.sum([h[0] for h in hist], axis=0)
        acc = AlignmentAccumulator(cam, self.check, sums=sums, weight=sum(h[1] for h in hist),
                                   points=sum(h[3] for h in hist), frames=len(hist), names=hist[-1][2])
        return verdict_of(cam, acc.sums, acc.weight, acc.names, acc.points, acc.frames, self.check)

    def _pooled_stereo(self, hist: list[StereoCheck]) -> StereoCheck:
        """The median of the window's per-check values, judged as one check."""
        done = [h for h in hist if np.isfinite(h.median_abs_dy_px)]
        if not done:
            return hist[-1]
        last = done[-1]
        mad = float(np.median([h.median_abs_dy_px for h in done]))
        med = float(np.median([h.median_dy_px for h in done]))
        biases = [h.disparity_bias_px for h in done if np.isfinite(h.disparity_bias_px)]
        bias = float(np.median(biases)) if biases else float("nan")
        worst = max(mad, abs(bias)) if biases else mad
        p = self.check
        verdict = OK if worst <= p.stereo_ok_px else WARN if worst <= p.stereo_error_px else ERROR
        detail = (f"median |dy| {mad:.2f} px" + (f", disparity bias {bias:+.2f} px vs LiDAR" if biases else "")
                  + f" over {len(done)} check(s)")
        bound = p.stereo_ok_px if verdict != ERROR else p.stereo_error_px
        reason = f"rectified: {detail}" if verdict == OK else (
            ("rows not aligned" if mad >= abs(bias if biases else 0.0) else "disparity biased (yaw)")
            + f": {detail} > {bound:g} px")
        return StereoCheck(last.left, last.right, last.matches, med, mad, last.negative_disparity_fraction, verdict,
                           reason, bias, last.bias_matches)

    def _pairs(self, poses: dict[str, np.ndarray]) -> list[tuple[str, str]]:
        pairs = []
        for r in poses:
            mr = self._check_models[r]
            if mr.P[0, 3] >= 0:
                continue
            for lft in poses:
                ml = self._check_models[lft]
                if (ml.P[0, 3] == 0 and (ml.width, ml.height) == (mr.width, mr.height)
                        and np.allclose(ml.P[:, :3], mr.P[:, :3], rtol=1e-6)):
                    pairs.append((lft, r))
                    break
        return pairs

    def finish(self) -> list[Emit]:
        if self._scan is not None:
            self._scan = None
            self.mark_dropped(self.lidar_topic, "end_of_input")
        for c in list(self._images):
            self._images.pop(c)
            self.mark_dropped(self.image_topics[c], "end_of_input")
        return []

    def calibration_health_parts(self, cam: str) -> dict[str, float]:
        """0..1 scores of the camera's calibration from the pooled checks it is part of (1 = fits):
        ``edge``: the LiDAR edge check's F mapped linearly from ``error_fraction`` (0) to ``ok_fraction`` (1);
        ``stereo`` (a camera of a stereo pair, left or right: the check cannot tell which one moved): the
        pair's worst of median |vertical disparity| and |disparity bias| mapped from ``stereo_error_px``
        (0) to ``stereo_ok_px`` (1). A check that could not judge (too few depth edges, no matches) is left
        out. Published as ``~/debug/<camera>/calibration_health`` (the lowest) and ``.../<part>``."""
        p = self.check
        parts: dict[str, float] = {}
        res = self.results.get(cam)
        if res is not None and np.isfinite(res.statistic):
            parts["edge"] = ramp(res.statistic, p.error_fraction, p.ok_fraction)
        for (lft, r), s in ((k, v) for k, v in self.results.items() if isinstance(k, tuple)):
            if cam in (lft, r) and np.isfinite(s.median_abs_dy_px):
                worst = max(s.median_abs_dy_px, abs(s.disparity_bias_px) if np.isfinite(s.disparity_bias_px) else 0.0)
                parts["stereo"] = min(parts.get("stereo", 1.0), ramp(worst, p.stereo_error_px, p.stereo_ok_px))
        return parts

    def calibration_health(self, cam: str) -> float | None:
        """The lowest of :meth:`calibration_health_parts`; None when no check of the camera could judge."""
        parts = self.calibration_health_parts(cam)
        return min(parts.values()) if parts else None

    # --- diagnostics ---------------------------------------------------------------------------
    def camera_levels(self) -> dict[str, tuple[int, str]]:
        """camera -> (diagnostic level, message): the edge check's verdict, raised by a failing stereo
        pair on its right camera; STALE before the first check."""
        out = {}
        for c in self.cameras:
            res = self.results.get(c)
            if res is None:
                why = self._camera_problem.get(c, "not checked yet")
                out[c] = (STALE_LEVEL, f"not checked yet: {why}")
                continue
            level, parts = _LEVELS[res.verdict], [f"edge check {res.verdict}: {res.reason}"]
            for (lft, r), s in ((k, v) for k, v in self.results.items() if isinstance(k, tuple)):
                if r == c and s.verdict != OK and np.isfinite(s.median_abs_dy_px):
                    level = max(level, _LEVELS[s.verdict])
                    parts.append(f"stereo {lft}/{r} {s.verdict}: {s.reason}")
            msg = f"{[OK, WARN, ERROR][level]}: " + "; ".join(parts)
            if c in self._camera_problem:
                msg += f"; last check skipped: {self._camera_problem[c]}"
            out[c] = (level, msg)
        return out

    def diagnostic_statuses(self) -> list[DiagnosticStatusData]:
        statuses = super().diagnostic_statuses()
        levels = self.camera_levels()
        for c in self.cameras:
            level, msg = levels[c]
            res = self.results.get(c)
            values = {"camera": c, "frame_id": self.models[c].frame_id if c in self.models else ""}
            h = self.calibration_health(c)
            values["calibration_health"] = "-" if h is None else f"{h:.3f}"
            if res is not None:
                values.update({"edge_statistic": f"{res.statistic:.4f}", "edge_score": f"{res.score:.5f}",
                               "edge_points": str(res.edge_points), "pooled_checks": str(res.frames),
                               "best_neighbour": res.best, "best_gain": f"{res.best_gain:.4f}",
                               "ok_fraction": f"{self.check.ok_fraction:g}",
                               "error_fraction": f"{self.check.error_fraction:g}"})
            statuses.append(DiagnosticStatusData(level, f"{self.name}: camera {c}", msg[:500], values["frame_id"], values))
        for (lft, r), s in ((k, v) for k, v in self.results.items() if isinstance(k, tuple)):
            values = {"matches": str(s.matches), "median_abs_dy_px": f"{s.median_abs_dy_px:.3f}",
                      "median_dy_px": f"{s.median_dy_px:.3f}", "disparity_bias_px": f"{s.disparity_bias_px:.3f}",
                      "bias_matches": str(s.bias_matches), "ok_px": f"{self.check.stereo_ok_px:g}",
                      "error_px": f"{self.check.stereo_error_px:g}"}
            statuses.append(DiagnosticStatusData(_LEVELS[s.verdict], f"{self.name}: stereo {lft}/{r}",
                                                 f"{s.verdict}: {s.reason}"[:500], "", values))
        return statuses
