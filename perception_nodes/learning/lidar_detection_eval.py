"""Held-out evaluation, post-hoc calibration (fitted on validation scenes) and packaging of the ``lidar_detection`` weights.

``python -m perception_nodes.learning.lidar_detection_eval --run out/train/lidar_detection
--eval-config configs/train/lidar_detection_eval.yaml [--package perception_nodes/models/weights/lidar_detection]``
(or ``--weights FOLDER``; also ``perception-stack lidar-eval ...``)

1. loads the run's final weights (:func:`perception_nodes.learning.trainer.load_trained`) or a weights folder;
2. with ``--fit-calibration``: fits the post-hoc calibration (:mod:`perception_nodes.models.calibration`)
   on the eval config's ``validation`` bags (seeds used neither for training nor for the held-out sets)
   and writes it into the weights folder's sidecar; without it, the sidecar's calibration (if any) is used.
   The trivial baselines come from the same places: the constant score is the share of right detections
   on validation, the constant covariance the residual spread on a few training frames
   (``training_residuals``). Validation numbers are printed as the fit's record, never as results;
3. scores every named held-out set (``sets``) of generated bags with
   :class:`~perception_nodes.learning.detection_metrics.DetectionAccumulator`, before (identity) and after
   calibration from one network pass, plus the geometric inverse sensor model of the occupancy node
   (:func:`~perception_nodes.pipeline.occupancy.evidential_occupancy`) on the same visible cells as the
   occupancy baseline (``ism_occupancy_iou`` / ``ism_occupancy_ece``). KITTI AP at level ``all`` (every box
   with a point: ``car_ap_3d``) and at the KITTI levels (``car_ap_3d_moderate`` ...: each generated box graded
   by :mod:`perception_nodes.eval.generated_difficulty`, a virtual camera's 2D box height and the occlusion
   state the generator wrote from its fault-free cast -- measured on the scan for bags without one --, as issue
   10's moderate goal needs; ``gt_occlusion_from_truth`` / ``gt_occlusion_from_scan`` count which);
3. scores the real KITTI object frames (evaluation only) with the KITTI difficulty levels: KITTI labels
   exist only inside the left camera's field of view, so detections outside it (``|bearing| >
   kitti_fov_deg / 2`` or behind the car) are dropped before scoring; and the real nuScenes keyframe
   (``nuscenes``: an mmdetection3d info file; labels all around the car, intensity 0-255 scaled to 0-1)
   with KITTI AP at level "all" and the nuScenes-style mAP. ``--real-only`` scores just these two;
4. with ``--package``, writes the weights with :func:`perception_nodes.models.weights_io.save_weights`:
   sidecar = network config, training config and data split, epochs and wall time, code version and
   these metrics.

Everything printed is also written as JSON (``--metrics-out``, default ``<run>/heldout_metrics.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import yaml

from perception_nodes.datasets.frame import Frame
from perception_nodes.learning.branches.lidar_detection import LidarDetectionBranch
from perception_nodes.learning.config import BagSource, _sources
from perception_nodes.learning.detection_metrics import DetectionAccumulator, TrivialBaselines
from perception_nodes.models.calibration import (
    MIN_CLASS_VARIANCE_FIT,
    DetectionCalibration,
    fit_evidence_scale,
    fit_platt,
    fit_prior_and_platt,
    fit_variance_scale,
)
from perception_nodes.pipeline.self_returns import self_return_settings, self_returns

__all__ = ["evaluate_kitti", "evaluate_nuscenes", "evaluate_sets", "fit_calibration", "camera_view", "in_camera_view", "kitti_frames", "main", "set_sources",
           "eval_config_of", "package_run", "trivial_baselines"]

_REPO = Path(__file__).resolve().parents[2]


class _WithGeometricBaseline(LidarDetectionBranch):
    """The branch's samples plus P(occupied) of the geometric inverse sensor model on the same grid."""

    def prepare_frame(self, frame: Frame):  # type: ignore[override]
        sample = super().prepare_frame(frame)
        if sample is None:
            return None
        from perception_nodes.pipeline.ground import estimate_ground
        from perception_nodes.pipeline.occupancy import evidential_occupancy

        # the geometric model sees the crop only, with or without the network's context margin (returns
        # beyond the grid would add free evidence along their rays and move the baseline with the margin)
        pts = sample["points"]
        pts = pts[self.net_config.contains_xy(pts[:, 0], pts[:, 1])]
        est = estimate_ground(pts)
        ism = evidential_occupancy(pts, est.mask, frame.lidar_to_base[:3, 3], self.occupancy_spec,
                                   height_above_ground=est.height)
        sample["ism_occupied"] = ((ism.occupied + 1.0) / (ism.occupied + ism.free + 2.0)).astype(np.float32)
        return sample


def _ism_scores(samples: Sequence[dict[str, np.ndarray]], bins: int) -> dict[str, float]:
    from perception_nodes.learning.metrics import expected_calibration_error

    ps, ys = [], []
    for s in samples:
        if "ism_occupied" not in s:
            continue
        vis = s["visible"] > 0
        ps.append(s["ism_occupied"][vis])
        ys.append(s["occupied"][vis] > 0)
    if not ps:
        return {}
    p, y = np.concatenate(ps), np.concatenate(ys)
    pred = p > 0.5
    union = float((pred | y).sum())
    return {"ism_occupancy_iou": float((pred & y).sum()) / union if union else float("nan"),
            "ism_occupancy_ece": float(expected_calibration_error(p, y.astype(np.float64), bins=bins))}


def _eval_branch(branch: LidarDetectionBranch) -> _WithGeometricBaseline:
    ev = _WithGeometricBaseline(branch.describe())
    ev._head_grid = branch.head_grid
    return ev


def _samples(branch: LidarDetectionBranch, sources: Sequence[BagSource], cache_dir: Path | None,
             progress: bool) -> list[dict[str, np.ndarray]]:
    from perception_nodes.learning.data import default_cache_dir, load_split

    return load_split(sources, branch, cache_dir=cache_dir or default_cache_dir(), role="eval",
                      progress=progress).samples


def set_sources(eval_config: Path, set_name: str) -> tuple[BagSource, ...]:
    """The bag sources of one named set of an eval config (``sets`` or ``reserved_sets``), for the benchmarks that
    look at one set (box errors, occlusion grading, paired AP); SystemExit naming the sets when it is not there."""
    doc = yaml.safe_load(Path(eval_config).read_text()) or {}
    sets = {**(doc.get("sets") or {}), **(doc.get("reserved_sets") or {})}
    if set_name not in sets:
        raise SystemExit(f"{eval_config}: no set {set_name!r} (sets: {sorted(sets)})")
    return _sources(sets[set_name], set_name)


@torch.no_grad()
def _score(branch: LidarDetectionBranch, model: torch.nn.Module, samples: Sequence[dict[str, np.ndarray]],
           calibrations: Sequence[DetectionCalibration | None]) -> list[DetectionAccumulator]:
    """One network pass per frame, scored by one accumulator per calibration. A calibrated accumulator
    applies the branch's threshold to the uncalibrated score, so every accumulator scores the same boxes
    (before / after compare like with like: the scores and covariances differ; AP changes only where the
    calibrated scores rank the boxes differently -- the foreground prior can, and so can the Platt map where a
    row's mapped foreground probabilities sum above 1 and are rescaled)."""
    accs = [DetectionAccumulator(branch, calibration=c, threshold_on_raw_score=c is not None) for c in calibrations]
    model.eval()
    for s in samples:
        out = model([torch.from_numpy(s["points"])])
        for acc in accs:
            acc.add(out, [s])
    return accs


def trivial_baselines(val_identity: DetectionAccumulator, train_identity: DetectionAccumulator | None) -> TrivialBaselines:
    """Constant score = share of right detections on validation; constant standard deviations = root mean
    square of the right detections' errors on training frames (x and y pooled, z, yaw)."""
    v = val_identity.detection_table()
    score = float(v["right"].mean()) if len(v["right"]) else float("nan")
    nan = float("nan")
    sx = sz = syaw = nan
    if train_identity is not None:
        e = train_identity.detection_table()["err"]
        if len(e):
            sx = float(np.sqrt(np.mean(e[:, :2] ** 2)))
            sz, syaw = (float(np.sqrt(np.mean(e[:, i] ** 2))) for i in (2, 3))
    return TrivialBaselines(score=score, sigma_xy=sx, sigma_z=sz, sigma_yaw=syaw,
                            source="score: share of right detections on validation; sigmas: RMS error of "
                                   "right detections on training frames")


def fit_calibration(branch: LidarDetectionBranch, model: torch.nn.Module, samples: Sequence[dict[str, np.ndarray]],
                    *, level: float = 0.9, source: str = "") -> tuple[DetectionCalibration, DetectionAccumulator]:
    """Fit :class:`DetectionCalibration` on validation ``samples`` (module doc of
    :mod:`perception_nodes.models.calibration`) from one uncalibrated pass:

    1. the score map -- the foreground prior f (a grid) and, for each f, a Platt map anchored at the
       evidence-free score f / (K + 1) or with a free intercept where that does not raise the evidence-free
       score (:func:`~perception_nodes.models.calibration.fit_prior_and_platt`) -- by binary NLL of right vs
       wrong over the detections; for the record, the Platt map alone (f = 1, the calibration packaged before 3 Dec 2026), the unanchored map
       and the evidence-scale alternative are fitted on the same detections and their NLL kept;
    2. the centre / z / yaw variance scales by ``level`` coverage of the right detections' errors (centre
       x and y pooled, z, wrapped yaw) (the uncalibrated decode's matches: the same boxes; a re-ranking by the foreground prior may match a few differently).

    Returns the calibration and the uncalibrated accumulator (for the baselines)."""
    identity = _score(branch, model, samples, [None])[0]
    t = identity.detection_table()
    k1 = len(branch.net_config.classes) + 1
    prior, a, b, platt_info = fit_prior_and_platt(t["alpha"], t["label"], t["right"], free_intercept=True)
    a_only, b_only, only_info = fit_platt(t["score"], t["right"], anchor=1.0 / k1)
    a_free, b_free, free_info = fit_platt(t["score"], t["right"])
    s, ev_info = fit_evidence_scale(t["alpha"], t["label"], t["right"])
    # the uncalibrated decode's boxes and matches: the variances are fitted on them
    err, var = t["err"], t["var"]
    cxy, fxy = fit_variance_scale(err[:, :2], var[:, :2], level=level)
    cz, fz = fit_variance_scale(err[:, 2], var[:, 2], level=level)
    cyaw, fyaw = fit_variance_scale(err[:, 3], var[:, 3], level=level)
    # per class where it has enough right detections (the refinement and the box head move car boxes only)
    right_label = t["label"][t["right"]]
    per_class: dict[str, tuple[float, float, float]] = {}
    per_class_fit: dict[str, Any] = {}
    for k, name in enumerate(branch.net_config.classes):
        m = right_label == k
        if int(m.sum()) < MIN_CLASS_VARIANCE_FIT:
            continue
        fits = [fit_variance_scale(err[m][:, cols], var[m][:, cols], level=level) for cols in ((0, 1), 2, 3)]
        per_class[name] = tuple(f[0] for f in fits)
        per_class_fit[name] = {"right_detections": int(m.sum()),
                               "coverage_before": dict(zip(("xy", "z", "yaw"), (f[1]["coverage_before"] for f in fits)))}
    fitted = {"on": source, "frames": identity.frames, "detections": int(len(t["right"])),
              "right_detections": int(t["right"].sum()), "level": level,
              "score_nll_before": platt_info["nll_before"], "score_nll_after": platt_info["nll_after"],
              "score_nll_per_foreground_prior": platt_info["nll_per_prior"],
              "score_free_intercept_per_foreground_prior": platt_info["free_per_prior"],
              "score_prior_tie_nats": platt_info["prior_tie"],
              "score_map_anchored": platt_info["anchored"],
              "alternative_platt_only": {"a": a_only, "b": b_only, "nll_after": only_info["nll_after"]},
              "alternative_evidence_scale": {"scale": s, "nll_after": ev_info["nll_after"]},
              "alternative_unanchored_platt": {"a": a_free, "b": b_free, "nll_after": free_info["nll_after"]},
              "variance_fit_right_detections": int(len(err)),
              "class_variance_fit": per_class_fit,
              # what the fitted boxes went through (a node running otherwise gets variances fitted for other boxes)
              "box_refinement": identity.refinement.enabled,
              "box_head": identity.box_head.source if identity.box_head is not None else None,
              "coverage_before": {"xy": fxy["coverage_before"], "z": fz["coverage_before"],
                                  "yaw": fyaw["coverage_before"]},
              "method": "score: Dirichlet foreground prior f (alpha_fg - 1 + f, alpha_bg + K (1 - f)), then Platt "
                        "sigmoid(a logit p + b), anchored at the evidence-free score p = f/(K+1) (b = logit(f/(K+1)) (1 - a)) "
                        "or with b free where that does not raise the evidence-free score; "
                        "(f, a, b) = argmin binary NLL of right/wrong over the validation detections (f on a grid); variance scales: 0.9-quantile of err^2/var over the right "
                        "(matched) detections (the same boxes the score map keeps), / 1.645^2; per class the same on "
                        f"that class's right detections where it has at least {MIN_CLASS_VARIANCE_FIT}"}
    cal = DetectionCalibration(foreground_prior=prior, score_logit_scale=a, score_logit_bias=b, centre_variance_scale=cxy,
                               z_variance_scale=cz, yaw_variance_scale=cyaw, class_variance_scales=per_class, fitted=fitted)
    return cal, identity


def evaluate_sets(branch: LidarDetectionBranch, model: torch.nn.Module, sets: dict[str, Sequence[BagSource]],
                  *, cache_dir: Path | None = None, progress: bool = False,
                  calibration: DetectionCalibration | None = None,
                  baselines: TrivialBaselines | None = None) -> dict[str, dict[str, Any]]:
    """Metrics per named set of generated bags (see the module docstring): the uncalibrated network's
    (``before``) and, when ``calibration`` is given, the calibrated one's (``after``), each beside the
    trivial baselines when given."""
    ev = _eval_branch(branch)
    out: dict[str, dict[str, Any]] = {}
    cals: list[DetectionCalibration | None] = [None] + ([calibration] if calibration is not None else [])
    for name, sources in sets.items():
        samples = _samples(ev, sources, cache_dir, progress)
        accs = _score(ev, model, samples, cals)
        ism = _ism_scores(samples, branch.eval_params.ece_bins)
        res: dict[str, Any] = {"refined_boxes": accs[0].refined_boxes,  # every accumulator refines the same boxes
                               "head_boxes": accs[0].head_boxes}
        for key, acc in zip(("before", "after"), accs):
            r = acc.results(baselines)
            r.update(ism)
            res[key] = r
        out[name] = res
    return out


@torch.no_grad()
def _score_real(branch: LidarDetectionBranch, model: torch.nn.Module, frames: Any, *, intensity_scale: float,
                keep: Any, calibration: DetectionCalibration | None, on_frame: Any = None,
                self_filter: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the network on real labelled frames (scan moved into the vehicle frame, the vehicle's own returns
    dropped as the node drops them (``self_filter``: keyword arguments of
    :func:`~perception_nodes.pipeline.self_returns.self_returns`; ``None``: kept), intensity divided by
    ``intensity_scale`` into the network's 0-1), keep the detections ``keep(frame, centres)`` selects, and score
    them with the stack's scorer (which counts the labels' points in the whole scan); also the detections per
    frame and the mean vacuity of their cells. ``on_frame(frame, detections, kept)``, if given, sees every
    frame's decoded detections and the keep mask (for measures beyond the scorer's, from the same network
    pass)."""
    from perception_nodes.calibration import transform_points
    from perception_nodes.eval.detection_eval import DetectionScorer

    scorer = DetectionScorer()
    model.eval()
    acc = DetectionAccumulator(branch, with_occupancy=False, calibration=calibration)
    n_det, vac = [], []
    car = branch.class_index("car")
    n_cars, yaw_err, dropped = 0, [], []
    for f in frames:
        pts = np.asarray(f.points, np.float32)[:, :4]
        base = np.concatenate([transform_points(f.lidar_to_base, pts[:, :3]), pts[:, 3:4] / np.float32(intensity_scale)],
                              1).astype(np.float32)
        seen = base
        if self_filter is not None:
            near, body = self_returns(base, np.asarray(f.lidar_to_base)[:2, 3], **self_filter)
            seen = base[~(near | body)]
            dropped.append({"near_sensor": int(near.sum()), "ego_box": int(body.sum())})
        det = acc.decode(model([torch.from_numpy(seen)]), [seen], [np.asarray(f.lidar_to_base)[:2, 3]])[0]
        mask = keep(f, det.center)
        if on_frame is not None:
            on_frame(f, det, mask)
        boxes = [b for b, k in zip(det.to_box3d(), mask) if k]
        gt = f.boxes_in_base()
        scorer.add_frame(gt, boxes, points=base)
        n_det.append(len(boxes))
        vac.extend(det.vacuity[mask].tolist())
        cars = np.asarray([g.center[:2] + (g.yaw,) for g in gt if g.label.lower() == "car"], np.float64).reshape(-1, 3)
        n_cars += len(cars)
        if car is not None:
            yaw_err += car_heading_errors(cars, det, np.asarray(mask, bool) & (det.label == car))
    res = scorer.results()
    return {"frames": len(n_det), "detections_per_frame": n_det,
            "self_returns": None if self_filter is None else {
                "filter": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self_filter.items()},
                "dropped_per_frame": dropped},
            "mean_vacuity": float(np.mean(vac)) if vac else float("nan"),
            "kitti_levels": res["kitti"]["levels"], "per_class": res["kitti"]["per_class"],
            "nuscenes": res["nuscenes"], "counts": res["counts"],
            "car_yaw": {"labelled_cars": n_cars, "with_car_detection_within_2m": len(yaw_err),
                        "abs_yaw_error_mod_pi_deg": [round(e, 2) for e in yaw_err],
                        "median_abs_yaw_error_mod_pi_deg": float(np.median(yaw_err)) if yaw_err else float("nan")}}


def car_heading_errors(cars: np.ndarray, det: Any, candidate: np.ndarray, radius: float = 2.0) -> list[float]:
    """Heading errors (degrees, modulo pi: a flip is not counted) of the labelled cars ``[M, 3]`` (x, y, yaw)
    that have a ``candidate`` detection within ``radius`` m (BEV centre), one detection per car, pairs taken
    closest first. IoU 0.7 asks for a few degrees."""
    sel = np.flatnonzero(candidate)
    if not len(cars) or not len(sel):
        return []
    d = np.hypot(cars[:, None, 0] - det.center[None, sel, 0], cars[:, None, 1] - det.center[None, sel, 1])
    out = []
    for flat in np.argsort(d, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, d.shape)
        if d[i, j] > radius:
            break
        if np.isfinite(d[i, j]):
            e = float((det.yaw[sel[j]] - cars[i, 2]) % math.pi)
            out.append(math.degrees(min(e, math.pi - e)))
            d[i, :] = np.inf
            d[:, j] = np.inf
    return out


def in_camera_view(centres: np.ndarray, fov_deg: float = 90.0) -> np.ndarray:
    """Which BEV centres ``[N, >= 2]`` (base_link: x ahead) lie ahead within +-``fov_deg / 2`` (KITTI's labels
    exist only in the left camera's view)."""
    if len(centres) == 0:
        return np.zeros(0, bool)
    c = np.asarray(centres).reshape(len(centres), -1)
    return (c[:, 0] > 0) & (np.abs(np.degrees(np.arctan2(c[:, 1], c[:, 0]))) <= fov_deg / 2)


@functools.lru_cache(maxsize=64)
def _png_size(path: Any) -> tuple[int, int] | None:
    """(width, height) from a PNG file's header (its first 24 bytes), ``None`` if there is no readable PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except (OSError, TypeError):
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def camera_view(frame: Frame, centres: np.ndarray, fov_deg: float = 90.0) -> np.ndarray:
    """Which BEV centres ``[N, >= 3]`` (base_link) project into the left colour camera's image (KITTI's CAM2:
    in front of it, column within the image width), the view KITTI labels exist in. Frames without that
    camera's projection or image fall back to :func:`in_camera_view` (+-``fov_deg / 2``)."""
    if len(centres) == 0:
        return np.zeros(0, bool)
    c = np.asarray(centres, np.float64).reshape(len(centres), -1)
    cam = (frame.cameras or {}).get("CAM2") or {}
    size = _png_size(cam.get("image_path"))
    if size is None or not ("P" in cam or "lidar_to_cam" in cam):
        return in_camera_view(c, fov_deg)
    if "P" in cam:  # KITTI object calib: P2 (3 x 4) @ velo -> rectified camera (4 x 4)
        proj = np.asarray(cam["P"], np.float64) @ np.asarray(cam["lidar_to_rect"], np.float64)
    else:  # mmdetection3d info: intrinsics @ LiDAR -> camera
        proj = np.asarray(cam["K"], np.float64)[:3, :3] @ np.asarray(cam["lidar_to_cam"], np.float64)[:3, :]
    base_to_lidar = np.linalg.inv(np.asarray(frame.lidar_to_base, np.float64))
    h = np.concatenate([c[:, :3], np.ones((len(c), 1))], 1) @ base_to_lidar.T
    uvw = h @ proj.T
    ahead = uvw[:, 2] > 0.1
    u = uvw[:, 0] / np.where(ahead, uvw[:, 2], 1.0)
    return ahead & (u >= 0) & (u < size[0])


def kitti_frames(root: Path | None, infos: Sequence[Path] = ()) -> Any:
    """The real labelled KITTI frames: the object-dataset folder ``root`` (``None``: none), then the frames of
    the mmdetection3d info files ``infos``."""
    import itertools

    from perception_nodes.datasets.kitti import read_kitti_object
    from perception_nodes.datasets.mmdet3d import read_mmdet3d_info

    return itertools.chain(read_kitti_object(root) if root is not None else (),
                           *(read_mmdet3d_info(Path(i)) for i in infos))


def evaluate_kitti(branch: LidarDetectionBranch, model: torch.nn.Module, root: Path | None, *,
                   fov_deg: float = 90.0, calibration: DetectionCalibration | None = None,
                   infos: Sequence[Path] = (), on_frame: Any = None,
                   self_filter: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """KITTI AP (R40, BEV and 3D, per difficulty) on real labelled KITTI frames, detections cropped to the
    left colour camera's image (:func:`camera_view`: KITTI labels exist only there; ``fov_deg`` only for a
    frame without that camera's projection); reflectance is already 0-1. Frames: the
    object-dataset folder ``root`` (``None``: none) and the frames of mmdetection3d info files ``infos`` (e.g.
    ``../shared/data/kitti_mmdet3d_demo``'s frame 000008, whose scan is already cropped to the camera's view),
    scored together. ``self_filter``: the vehicle's own returns to drop (:func:`_score_real`)."""
    res = _score_real(branch, model, kitti_frames(root, infos), intensity_scale=1.0,
                      keep=lambda f, c: camera_view(f, c, fov_deg), calibration=calibration, on_frame=on_frame,
                      self_filter=self_filter)
    # nuScenes-style centre-distance AP (0.5-4 m) on the KITTI frames: IoU 0.7 is out of reach for boxes
    # trained on generated cars, centre distance says whether the cars are found at all
    res["centre_distance"] = res.pop("nuscenes")
    # both sources named: the object-dataset folder's frames and the info files' (the frame count is their sum)
    return {"fov_deg": fov_deg, "root": str(root) if root is not None else None, "infos": [str(i) for i in infos],
            **res}


def evaluate_nuscenes(branch: LidarDetectionBranch, model: torch.nn.Module, info: Path, *,
                      calibration: DetectionCalibration | None = None, on_frame: Any = None,
                      self_filter: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The nuScenes keyframe(s) of an mmdetection3d info file (evaluation only): one HDL-32E sweep in the
    ego frame, intensity 0-255 scaled to 0-1, boxes all around the car (nuScenes labels cover 360
    degrees: no crop), nuScenes labels through the scorer's class map (bicycle scores as cyclist) and
    range gates; KITTI AP R40 at level "all" and the nuScenes-style centre-distance mAP."""
    from perception_nodes.datasets.mmdet3d import read_mmdet3d_info
    from perception_nodes.scenario.realism import INTENSITY_SCALE

    return _score_real(branch, model, read_mmdet3d_info(info), intensity_scale=INTENSITY_SCALE["nuscenes"],
                       keep=lambda f, c: np.ones(len(c), bool), calibration=calibration, on_frame=on_frame,
                       self_filter=self_filter)


def _train_config_of(cfg: dict[str, Any]) -> str:
    """The ``configs/train/*.yaml`` of the branch whose run folder (``out``) is the run's; the plain training's
    config when none matches."""
    root = _REPO / "configs" / "train"
    for path in sorted(root.glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if doc.get("branch") == cfg.get("branch") and doc.get("out") == cfg.get("out"):
            return f"configs/train/{path.name}"
    return "configs/train/lidar_detection.yaml"


def _training_summary(run: Path, weights: Path | None = None) -> dict[str, Any]:
    cfg = json.loads((run / "config.json").read_text())
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if weights is not None and weights.name.startswith("epoch_"):
        hist = [h for h in hist if int(h["epoch"]) <= int(weights.name.split("_")[1])]
    secs = sum(float(h.get("train_seconds", 0)) + float(h.get("eval_seconds", 0)) for h in hist)
    return {"command": f"perception-stack train {cfg.get('branch')} --config {_train_config_of(cfg)}",
            "config": cfg, "split": hist[-1].get("split") if hist else None, "epochs": len(hist),
            "wall_seconds_train_and_validation": round(secs, 1),
            "last_epoch_train_loss": hist[-1].get("train") if hist else None,
            "last_epoch_validation": hist[-1].get("val") if hist else None}


#: the eval config of weights whose sidecar names none
DEFAULT_EVAL_CONFIG = _REPO / "configs/train/lidar_detection_eval.yaml"


def _repo_relative(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (a sidecar stays valid in any clone)."""
    try:
        return str(Path(path).resolve().relative_to(_REPO))
    except ValueError:
        return str(Path(path).resolve())


def named_eval_config(side: Any) -> Optional[Path]:
    """The eval config a weights sidecar names (``metrics.eval_config``, written by ``lidar-eval`` since 4 Dec 2026),
    resolved against the repository root; ``None`` when it names none (older sidecars) or the entry is malformed."""
    metrics = side.get("metrics") if isinstance(side, dict) else None
    named = metrics.get("eval_config") if isinstance(metrics, dict) else None
    if not isinstance(named, str) or not named:
        return None
    return Path(named) if Path(named).is_absolute() else _REPO / named


def eval_config_of(side: Any) -> Path:
    """The eval config a weights folder was scored (and its calibration fitted) with: :func:`named_eval_config`
    where that file exists, else :data:`DEFAULT_EVAL_CONFIG`. Why: refitting the packaged default's calibration on
    another config's validation scenes would silently replace a fit the README reports (``main`` refuses
    ``--fit-calibration`` without ``--eval-config`` where the sidecar names no config, and stops where the named
    one is gone)."""
    path = named_eval_config(side)
    return path if path is not None and path.is_file() else DEFAULT_EVAL_CONFIG


def package_run(run: Path, folder: Path, metrics: dict[str, Any], *, weights: Path | None = None,
                extra: dict[str, Any] | None = None) -> Path:
    """Write the run's final model (or the checkpoint ``weights``) into ``folder`` with the sidecar."""
    from perception_nodes.learning.trainer import load_trained
    from perception_nodes.models.weights_io import save_weights

    branch, model = load_trained(weights or run)
    assert isinstance(branch, LidarDetectionBranch)
    return save_weights(model, folder, network="lidar_detection", config=branch.net_config,
                        training=_training_summary(run, weights), metrics=metrics,
                        extra={"branch_config": branch.describe(), **(extra or {})})


def _describe(src: BagSource) -> str:
    g = dict(src.generate or {})
    return (f"{g.get('scenario')} seed {g.get('seed')} {g.get('lidar')} {g.get('duration_s')} s stride {src.stride}"
            if g else str(src.path or src.fixture))


def _check_disjoint(groups: dict[str, Sequence[BagSource]]) -> None:
    """No generated scene (scenario, seed, LiDAR) may serve two roles (fitting and reporting)."""
    seen: dict[tuple, str] = {}
    for role, sources in groups.items():
        for src in sources:
            if src.generate is None:
                continue
            g = src.generate
            key = (g.get("scenario"), g.get("seed"), g.get("lidar"))
            if key in seen and seen[key] != role:
                raise ValueError(f"generated scene {key} is in both {seen[key]!r} and {role!r}: fitting and "
                                 "reporting must use disjoint scenes")
            seen[key] = role


#: rows of the summary table (key, label)
SUMMARY_ROWS = (
    ("frames", "frames"), ("car_n_gt", "cars (ground truth)"), ("detections", "detections (score >= 0.1)"),
    ("car_ap_3d", "car AP3D R40 @0.7 (all)"), ("car_ap_bev", "car AP BEV R40 @0.7 (all)"),
    ("car_n_gt_easy", "cars at easy (virtual camera, KITTI occlusion)"),
    ("car_n_gt_moderate", "cars at moderate (easy included)"), ("car_n_gt_hard", "cars at hard (all levels)"),
    ("gt_occlusion_from_truth", "boxes graded with the generator's occlusion"),
    ("gt_occlusion_from_scan", "boxes graded with the scan's occlusion"),
    ("car_ap_3d_moderate", "car AP3D R40 @0.7 moderate"), ("car_ap_bev_moderate", "car AP BEV R40 @0.7 moderate"),
    ("car_ap_3d_easy", "car AP3D R40 @0.7 easy"), ("car_ap_3d_hard", "car AP3D R40 @0.7 hard"),
    ("nus_map", "nuScenes-style mAP"),
    ("precision_centre", "share right (2 m)"), ("mean_score", "mean score"),
    ("ece_class", "ECE of score"), ("baseline_score_ece", "  constant score: ECE"),
    ("baseline_zero_score_ece", "  score 0 for every box: ECE"),
    ("brier_class", "Brier of score"), ("baseline_score_brier", "  constant score: Brier"),
    ("baseline_own_rate_brier", "  constant at this set's share right: Brier"),
    ("nll_class", "NLL of score"), ("baseline_score_nll", "  constant score: NLL"),
    ("detections_published", "published (score > 0.3)"), ("precision_published", "  share right"),
    ("ece_class_published", "  ECE of score"), ("brier_class_published", "  Brier of score"),
    ("nll_centre_class", "NLL class at GT centres"), ("ece_centre_class", "ECE class at GT centres"),
    ("auroc_one_minus_score", "AUROC 1-score (wrong vs right)"), ("auroc_centre_std", "AUROC centre std"),
    ("auroc_vacuity", "AUROC vacuity"),
    ("matched_detections", "right detections"), ("centre_error_m", "median centre error m"),
    ("coverage_xy", "90% coverage x/y"), ("baseline_cov_coverage_xy", "  constant sigma: coverage x/y"),
    ("coverage_xy_2d", "90% ellipse coverage"), ("halfwidth_xy_m", "median 90% half-width m"),
    ("baseline_cov_halfwidth_xy_m", "  constant sigma: half-width m"),
    ("nll_xy", "Gaussian NLL x/y"), ("baseline_cov_nll_xy", "  constant sigma: NLL x/y"),
    ("coverage_z", "90% coverage z"), ("baseline_cov_coverage_z", "  constant sigma: coverage z"),
    ("coverage_yaw", "90% coverage yaw"), ("baseline_cov_coverage_yaw", "  constant sigma: coverage yaw"),
    ("coverage_offset_at_gt_cell", "offset coverage at GT cell (old metric)"),
)


def summary_table(metrics: dict[str, Any]) -> str:
    """Markdown table: every held-out set before / after calibration (what README and BENCHMARKS quote)."""
    gen = metrics.get("generated") or {}
    cols = [(name, key) for name in gen for key in ("before", "after") if gen[name].get(key)]
    head = "| metric | " + " | ".join(f"{n} {k}" for n, k in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "n/a"
        return f"{v:.0f}" if isinstance(v, float) and float(v).is_integer() and abs(v) >= 1 else f"{v:.3f}"

    for key, label in SUMMARY_ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt(gen[n][k].get(key)) for n, k in cols) + " |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog or "python -m perception_nodes.learning.lidar_detection_eval",
        description=__doc__.split("\n\n")[0],
        epilog="Generated sets are scored at KITTI level 'all' (every box with a LiDAR point: car_ap_3d) and at "
               "easy / moderate / hard (car_ap_3d_moderate ...), each box graded by geometry: 2D box height in a "
               "virtual camera with KITTI's focal length facing the box (all around the vehicle), occlusion from the "
               "generator's fault-free cast (bags of generator version 5 on; older bags: from the scan's rays), no "
               "truncation (perception_nodes/eval/generated_difficulty.py). An eval config needs "
               "`sets` at least; `validation` for --fit-calibration and the trivial baselines.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, default=None, help="trained run folder (model.safetensors, config.json)")
    src.add_argument("--weights", type=str, default=None,
                     help="a weights folder (model.safetensors + model.json sidecar), or the bare name of a "
                          "packaged one (lidar_detection_plain, as in the params file); default when neither is "
                          "given: the packaged perception_nodes/models/weights/lidar_detection")
    p.add_argument("--eval-config", type=Path, default=None,
                   help="named sets of generated bags, validation scenes and the real frames (default: the config "
                        "the weights' sidecar was scored and calibrated with, if it names one -- so a refit of the "
                        "packaged default uses its own validation scenes --, else "
                        "configs/train/lidar_detection_eval.yaml)")
    p.add_argument("--metrics-out", type=Path, default=None, help="JSON output (default <run>/heldout_metrics.json, or out/lidar_detection_eval/heldout_metrics.json with --weights; real_metrics.json with --real-only)")
    p.add_argument("--package", type=Path, default=None, help="also write the weights + sidecar into this folder")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="score and package this checkpoint folder of the run (default: the run's final model)")
    p.add_argument("--fit-calibration", action="store_true",
                   help="fit the post-hoc calibration on the eval config's `validation` bags and store it in the "
                        "weights folder's sidecar (--weights, the packaged default, or --package with --run), with "
                        "these metrics; without it the sidecar's calibration (if any) is scored as `after`")
    p.add_argument("--no-box-refinement", action="store_true",
                   help="score the boxes as decoded, without fitting car headings to the scan points (the node's "
                        "box_refinement: {enabled: false}); default: refined, as the node publishes them")
    p.add_argument("--box-refinement-params", default=None, metavar="JSON",
                   help="box refinement parameters other than the default, as a JSON object of the node's "
                        "box_refinement keys, e.g. '{\"near_faces\": false}'")
    p.add_argument("--no-box-head", action="store_true",
                   help="do not run the learned box head after the refinement (the node's box_head: \"\"); default: "
                        "the packaged head, as the node publishes (it runs only where the refinement does, and only on "
                        "the detector weights it was trained on: its sidecar's detector_sha256)")
    p.add_argument("--box-head", default=None, metavar="FOLDER",
                   help="another box head weights folder (or packaged name) than the packaged lidar_box_head")
    p.add_argument("--no-kitti", action="store_true", help="skip the real KITTI frames")
    p.add_argument("--no-nuscenes", action="store_true", help="skip the real nuScenes keyframe")
    p.add_argument("--real-only", action="store_true",
                   help="score only the real frames (KITTI, nuScenes) with the sidecar's calibration (none "
                        "with --run): no generated sets, no validation fit (seconds instead of minutes); default "
                        "output real_metrics.json beside where heldout_metrics.json would go")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    if args.real_only and (args.fit_calibration or args.package is not None):
        p.error("--real-only scores the weights as they are: it cannot fit a calibration or package")
    if args.fit_calibration and args.run is not None and args.package is None:
        p.error("--fit-calibration with --run needs --package (a run folder has no sidecar to store it in)")
    from perception_nodes.learning.trainer import load_trained
    from perception_nodes.models.weights_io import WeightsError, read_sidecar, resolve_weights_folder

    torch.set_num_threads(args.threads)
    weights: Path | None = None
    side: dict[str, Any] = {}
    if args.run is None:  # the weights folder and its sidecar, read once: the eval config may come from it
        weights = resolve_weights_folder(args.weights, "lidar_detection")
        try:
            side = read_sidecar(weights, "lidar_detection")
        except WeightsError as exc:
            p.error(str(exc))
    if args.eval_config is None:
        named = named_eval_config(side)
        if named is not None and not named.is_file():
            p.error(f"the weights' sidecar names the eval config {named}, which is not there: give --eval-config")
        if named is None and args.fit_calibration and weights is not None:
            p.error(f"{weights}: its sidecar names no eval config, so which validation scenes its calibration "
                    "was fitted on is not recorded: give --eval-config (a refit writes into the sidecar)")
        args.eval_config = named or DEFAULT_EVAL_CONFIG
        print(f"eval config: {_repo_relative(args.eval_config)}"
              + (" (the one the weights were scored with)" if named is not None else
                 " (the default: the weights' sidecar names none)" if weights is not None else " (the default)"))
    doc = yaml.safe_load(args.eval_config.read_text()) or {}
    sets = {name: _sources(srcs, f"sets.{name}") for name, srcs in (doc.get("sets") or {}).items()}
    # the roles of the config as written (also with --real-only): no generated scene may serve two of them;
    # reserved sets are report sets kept for a future candidate (checked here, never scored until a rule
    # moves them under `sets`)
    reserved = {f"reserved/{name}": _sources(srcs, f"reserved_sets.{name}")
                for name, srcs in (doc.get("reserved_sets") or {}).items()}
    val_sources = _sources(doc.get("validation"), "validation")
    train_sources = _sources(doc.get("training_residuals"), "training_residuals")
    _check_disjoint({"validation": val_sources, "training_residuals": train_sources, **sets, **reserved})
    try:  # the vehicles' own returns in the real frames, dropped as the node drops them (checked before any work)
        filters = {name: self_return_settings(doc[f"{name}_self_returns"], f"{name}_self_returns")
                   if doc.get(f"{name}_self_returns") is not None else None for name in ("kitti", "nuscenes")}
    except ValueError as exc:
        p.error(f"{args.eval_config}: {exc}")
    if args.real_only:
        sets, val_sources, train_sources = {}, [], []
    if args.run is not None:
        weights = args.checkpoint or args.run
        branch, model = load_trained(weights)
    else:
        if args.package is not None or args.checkpoint is not None:
            p.error("--package and --checkpoint need --run")
        from perception_nodes.learning.branches import get_branch
        from perception_nodes.models.weights_io import check_lidar_configs, load_state

        assert weights is not None  # read above
        if "branch_config" not in side:
            p.error(f"{weights}: the sidecar has no branch_config (not written by package_run)")
        try:
            check_lidar_configs(side, weights)
        except WeightsError as exc:
            p.error(str(exc))
        branch = get_branch("lidar_detection")(side["branch_config"])
        model = branch.build_model()
        try:
            model.load_state_dict(load_state(weights), strict=True)
        except WeightsError as exc:
            p.error(str(exc))
        model.eval()
    assert isinstance(branch, LidarDetectionBranch)
    from perception_nodes.pipeline.box_refine import BoxRefinement

    if args.no_box_refinement and args.box_refinement_params is not None:
        p.error("--no-box-refinement and --box-refinement-params exclude each other")
    if args.no_box_refinement:
        branch.eval_params = dataclasses.replace(branch.eval_params, box_refinement=False)
    elif args.box_refinement_params is not None:
        try:
            given = json.loads(args.box_refinement_params)
        except ValueError as exc:
            p.error(f"--box-refinement-params: not a JSON object ({exc})")
        try:
            BoxRefinement.from_mapping(given, "--box-refinement-params")
        except ValueError as exc:  # ConfigError is a ValueError
            p.error(str(exc))
        branch.eval_params = dataclasses.replace(branch.eval_params, box_refinement=given)
    if args.no_box_head and args.box_head is not None:
        p.error("--no-box-head and --box-head exclude each other")
    if args.no_box_head or args.box_head is not None:
        branch.eval_params = dataclasses.replace(branch.eval_params, box_head="" if args.no_box_head else args.box_head)
    if args.box_head is not None and not branch.eval_params.refinement().enabled:
        p.error("--box-head: the head runs only after the box refinement, which is off here")
    try:
        head = branch.eval_params.head()
    except WeightsError as exc:
        p.error(f"box head: {exc}")
    from perception_nodes.models.box_head import mismatch

    why = None
    if head is not None:
        why = mismatch(head, weights) if weights is not None else "a training run's network is not the one it was trained on"
    if why is not None and args.box_head is None:  # the default head belongs to other weights: as the node does
        print(f"box head: off by default for these weights: {why}")
        branch.eval_params = dataclasses.replace(branch.eval_params, box_head="")
        head = None
    elif why is not None:
        print(f"box head: {why}; run anyway (--box-head given)")
    t0 = time.perf_counter()
    calibration: DetectionCalibration | None = None
    if args.run is None and not args.fit_calibration:
        calibration = DetectionCalibration.from_sidecar(side)
    metrics: dict[str, Any] = {}
    refinement = branch.eval_params.refinement()
    metrics["box_refinement"] = {**dataclasses.asdict(refinement), "classes": list(refinement.classes)}
    metrics["box_head"] = head.source if head is not None else None
    print("box head: " + (f"{head.source}" if head is not None else "off"))
    print("box refinement: " + (f"on ({', '.join(refinement.classes)} headings and faces fitted to the scan points; "
                                f"near faces {'on' if refinement.near_faces else 'off'})" if refinement.enabled else "off"))
    baselines = None
    if val_sources:
        ev = _eval_branch(branch)
        val_samples = _samples(ev, val_sources, None, False)
        if args.fit_calibration:
            calibration, val_id = fit_calibration(ev, model, val_samples, level=branch.eval_params.coverage_level,
                                                  source="; ".join(_describe(s) for s in val_sources))
            val_cal = _score(ev, model, val_samples, [calibration])[0]
        else:
            val_id, val_cal = _score(ev, model, val_samples, [None, calibration])
        train_id = _score(ev, model, _samples(ev, train_sources, None, False), [None])[0] if train_sources else None
        baselines = trivial_baselines(val_id, train_id)
        metrics["validation_fit_record"] = {"before": val_id.results(baselines), "after": val_cal.results(baselines)}
        metrics["trivial_baselines"] = dataclasses.asdict(baselines)
    elif args.fit_calibration:
        p.error(f"{args.eval_config} has no `validation` bags to fit the calibration on")
    if calibration is not None and calibration.is_identity:
        calibration = None
    metrics["calibration"] = calibration.to_dict() if calibration is not None else None
    metrics["generated"] = evaluate_sets(branch, model, sets, calibration=calibration, baselines=baselines)
    root = Path(doc["kitti"]) if doc.get("kitti") and Path(doc["kitti"]).exists() else None
    listed = [Path(i) for i in doc.get("kitti_infos") or []]
    kitti_infos = [i for i in listed if i.exists()]
    if len(kitti_infos) < len(listed) and not args.no_kitti:
        print(f"warning: kitti_infos not found, not scored: {', '.join(str(i) for i in listed if not i.exists())}",
              file=sys.stderr)
    if (root is not None or kitti_infos) and not args.no_kitti:
        metrics["kitti"] = evaluate_kitti(branch, model, root, infos=kitti_infos,
                                          fov_deg=float(doc.get("kitti_fov_deg", 90.0)),
                                          calibration=calibration, self_filter=filters["kitti"])
    nuscenes = doc.get("nuscenes")
    if nuscenes and Path(nuscenes).exists() and not args.no_nuscenes:
        metrics["nuscenes"] = evaluate_nuscenes(branch, model, Path(nuscenes), calibration=calibration,
                                                self_filter=filters["nuscenes"])
    if args.real_only and not (args.no_kitti and args.no_nuscenes) and not (metrics.get("kitti") or metrics.get("nuscenes")):
        p.error(f"--real-only found no real frame to score (the paths in {args.eval_config} are relative to the "
                "working directory: run from the repository root with ../shared beside it)")
    metrics["sets"] = {name: [s.describe() for s in srcs] for name, srcs in sets.items()}
    metrics["validation_sets"] = [s.describe() for s in val_sources]
    # the same, as data (what a check of disjoint roles reads)
    metrics["scenes"] = {"validation": [dict(s.generate or {}, stride=s.stride) for s in val_sources],
                         "training_residuals": [dict(s.generate or {}, stride=s.stride) for s in train_sources],
                         **{f"held_out/{name}": [dict(s.generate or {}, stride=s.stride) for s in srcs]
                            for name, srcs in sets.items()}}
    metrics["eval_config"] = _repo_relative(args.eval_config)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics = _nan_to_none(metrics)
    # a --real-only run has its own default file: it must not replace the full held-out record
    name = "real_metrics.json" if args.real_only else "heldout_metrics.json"
    out = args.metrics_out or ((args.run or Path("out/lidar_detection_eval")) / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if metrics.get("calibration"):
        cal = DetectionCalibration.from_mapping(metrics["calibration"])
        print(f"calibration: {cal.summary()}; fitted on {cal.fitted.get('on', '?')}")
    rec = metrics.get("validation_fit_record")
    if rec:
        print("validation (the fit's record, not a result): " + ", ".join(
            f"{k} {_fmt(rec['before'].get(k))} -> {_fmt(rec['after'].get(k))}"
            for k in ("ece_class", "nll_class", "coverage_xy", "coverage_z", "coverage_yaw")))
    if metrics["generated"]:
        print("held-out generated scenes (before -> after calibration):")
        print(summary_table(metrics))
    if metrics.get("kitti"):
        k = metrics["kitti"]
        cd = (k.get("centre_distance") or {}).get("per_class") or {}
        car = k["per_class"].get("car") or {}
        level = "hard" if "hard" in car else "all"
        c = car.get(level) or {}
        print(f"KITTI: {k['frames']} frames, detections per frame {k['detections_per_frame']}, car (level {level}, IoU "
              f"0.7) AP3D {_fmt(c.get('ap_r40_3d'))} BEV {_fmt(c.get('ap_r40_bev'))}, TP {c.get('tp_3d')} FP {c.get('fp_3d')} "
              f"FN {c.get('fn_3d')}; centre-distance AP {json.dumps({n: round(v['ap'], 3) for n, v in cd.items()})} "
              f"(every class and level: {out})")
    if metrics.get("nuscenes"):
        k = metrics["nuscenes"]
        nus = k["nuscenes"] or {}
        print(f"nuScenes: {k['frames']} keyframe(s), detections {k['detections_per_frame']}, ground truth "
              f"{k['counts']['gt']}, AP3D R40 {json.dumps({c: v['all']['ap_r40_3d'] for c, v in k['per_class'].items()})}, "
              f"centre-distance mAP {_fmt(nus.get('map'))}")
    if args.package is not None:
        extra = {"calibration": calibration.to_dict()} if calibration is not None else None
        print(f"packaged: {package_run(args.run, args.package, metrics, weights=weights, extra=extra)}")
    elif args.fit_calibration:
        from perception_nodes.models.weights_io import write_calibration

        print(f"calibration ({calibration.summary() if calibration else 'identity'}) written to "
              f"{write_calibration(weights, calibration.to_dict() if calibration else None, network='lidar_detection', metrics=metrics)}")
    print(f"metrics: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
