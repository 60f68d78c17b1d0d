"""Learned box head: a small PointNet that corrects each refined car box from the scan's points around it.

Why: the geometric refinement (:mod:`perception_nodes.pipeline.box_refine`) puts a car box's seen faces on its
points, but the faces the sensor does not see, the height of the box and the heading of cars with few points stay
the network's guess, and at IoU 0.7 those misses cost most of the remaining AP. A second stage that looks only at
the points near one box, in that box's own frame, is how two-stage LiDAR detectors (PointRCNN, Part-A2,
Voxel R-CNN) gain their precision at IoU 0.7; this one is deliberately tiny so it fits the latency budget on a CPU.

Per box (a car box after the geometric refinement):

* input: up to ``npts`` points inside the box grown by ``margin_m`` on every side, in the box frame (x along the
  heading, centre at 0), with intensity, and the same coordinates divided by the half extents; the box's size,
  the direction to the sensor in the box frame, the log range to it and the log point count;
* network: a shared MLP per point (7 -> 64 -> 128 -> 256), a max over the points, then an MLP (263 -> 128 -> 64
  -> 7);
* output: the residual to the true box in the box frame: (dx, dy, dz), log(l'/l, w'/w, h'/h), dyaw
  (modulo 180 degrees, so the box keeps its direction).

A box with fewer than ``min_points`` points around it is left as it is. Score, class and covariance stay the
network's. The head runs after decoding, on the decoded boxes, so it is the same under every runtime of the
branch (:meth:`BoxHead.forward`: the weights as plain arrays, the products in torch's thread pool);
:class:`BoxHeadNet` is the same network as a torch module, for training
(:mod:`perception_nodes.learning.box_head_train`), with the same parameter names in the weights file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from numpy.typing import NDArray

from perception_nodes.models.decode import Detections

__all__ = ["BoxHeadConfig", "BoxHead", "BoxHeadNet", "NETWORK", "apply_box_head", "box_inputs", "load_box_head",
           "mismatch", "packaged_head_for", "point_features", "weights_sha256"]

#: the sidecar's ``network`` of a box-head weights folder (and its packaged folder's name)
NETWORK = "lidar_box_head"
#: number of per-point and global input features (see the module docstring)
POINT_FEATURES = 7
GLOBAL_FEATURES = 7
OUTPUTS = 7
#: the largest move the head may make: its training matched boxes within 1.5 m, and z within a car's height
MAX_SHIFT_M = 1.5
MAX_SHIFT_Z_M = 1.0


@dataclass(frozen=True)
class BoxHeadConfig:
    """The head's shape and its input crop (stored in the sidecar; the weights fit only this config)."""

    classes: tuple[str, ...] = ("car",)
    npts: int = 128            # points per box (fewer: repeated cyclically; more: an even stride through them)
    min_points: int = 5        # fewer points around a box: the box is left as it is
    margin_m: float = 0.75     # the crop: the box grown by this on every side (up to)
    point_layers: tuple[int, ...] = (64, 128, 256)
    box_layers: tuple[int, ...] = (128, 64)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "BoxHeadConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"box head config: unknown keys {unknown}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
        cfg = cls(**kw)
        if cfg.npts < 1 or cfg.min_points < 1 or not cfg.margin_m >= 0 or not cfg.point_layers or not cfg.box_layers:
            raise ValueError(f"box head config: bad values {cfg}")
        return cfg


def _layers(cfg: BoxHeadConfig) -> list[tuple[str, int, int]]:
    """(parameter prefix, inputs, outputs) of every linear layer, in order; the names of :class:`BoxHeadNet`'s
    ``nn.Sequential`` members (a ReLU sits between two linear layers, so they are every other index)."""
    out, n = [], POINT_FEATURES
    for k, m in enumerate(cfg.point_layers):
        out.append((f"point.{2 * k}", n, m))
        n = m
    n += GLOBAL_FEATURES
    for k, m in enumerate((*cfg.box_layers, OUTPUTS)):
        out.append((f"box.{2 * k}", n, m))
        n = m
    return out


@dataclass
class BoxHead:
    """The head's weights as numpy arrays, and its forward pass."""

    config: BoxHeadConfig
    weights: dict[str, NDArray[np.float32]] = field(repr=False)
    source: str = ""
    #: sha256 of the detector weights file (``model.safetensors``) whose boxes the head was trained on ("" unknown)
    detector_sha256: str = ""
    _tensors: Any = field(default=None, repr=False, compare=False)  # the weights as torch tensors, made once

    def __post_init__(self) -> None:
        for name, n_in, n_out in _layers(self.config):
            w, b = self.weights.get(f"{name}.weight"), self.weights.get(f"{name}.bias")
            if w is None or b is None or w.shape != (n_out, n_in) or b.shape != (n_out,):
                raise ValueError(f"box head weights {self.source}: {name} missing or not ({n_out}, {n_in})")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"box head weights {self.source}: {name} holds non-finite values")

    def forward(self, point_feats: NDArray[np.float32], global_feats: NDArray[np.float32]) -> NDArray[np.float32]:
        """``point_feats`` ``[B, N, 7]``, ``global_feats`` ``[B, 7]`` -> residuals ``[B, 7]``.

        The products run in torch's thread pool (the network beside it already uses torch): numpy's BLAS keeps
        its own threads, and right after a torch pass at two threads the two pools fought for the cores (a 3 ms
        product took 175-515 ms)."""
        import torch

        layers = _layers(self.config)
        n_point = len(self.config.point_layers)
        if self._tensors is None:
            self._tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.weights.items()}
        w = self._tensors
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(point_feats, np.float32))
            for k, (name, _, _) in enumerate(layers[:n_point]):
                x = torch.nn.functional.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])
                if k < n_point - 1:
                    x = torch.relu(x)
            x = torch.cat([x.amax(dim=1), torch.from_numpy(np.ascontiguousarray(global_feats, np.float32))], dim=1)
            for k, (name, _, _) in enumerate(layers[n_point:]):
                x = torch.nn.functional.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])
                if k < len(layers) - n_point - 1:
                    x = torch.relu(x)
        return x.numpy()


def point_features(pts: NDArray[np.floating], size: NDArray[np.floating], sensor: NDArray[np.floating],
                   count: NDArray[np.floating], xp: Any = np) -> tuple[Any, Any]:
    """The network's inputs from the raw crop: ``pts`` ``[B, N, 4]`` (box frame, intensity), ``size`` ``[B, 3]``,
    ``sensor`` ``[B, 2]`` (the sensor's position in the box frame), ``count`` ``[B]`` (points in the crop before
    sampling). ``xp``: numpy, or torch for training (the same arithmetic)."""
    half = size / 2
    cat = xp.concatenate if xp is np else xp.cat
    pf = cat([pts, pts[..., :3] / half[:, None, :]], -1)
    if xp is np:
        r = np.maximum(np.linalg.norm(sensor, axis=1, keepdims=True), 1e-3)
        gf = np.concatenate([size, sensor / r, np.log(r), np.log1p(count.astype(np.float32))[:, None]], 1)
        return pf.astype(np.float32), gf.astype(np.float32)
    r = sensor.norm(dim=1, keepdim=True).clamp_min(1e-3)
    gf = xp.cat([size, sensor / r, r.log(), xp.log1p(count.float())[:, None]], 1)
    return pf, gf


def _crop(pts: NDArray[np.floating], centre: NDArray[np.float64], size: NDArray[np.float64], yaw: float,
          margin: float) -> NDArray[np.float32]:
    """The points inside the box grown by ``margin``, in the box frame, with intensity (0 without)."""
    p = pts[:, :3].astype(np.float64) - centre
    c, s = math.cos(-yaw), math.sin(-yaw)
    x = c * p[:, 0] - s * p[:, 1]
    y = s * p[:, 0] + c * p[:, 1]
    half = size / 2 + margin
    m = (np.abs(x) <= half[0]) & (np.abs(y) <= half[1]) & (np.abs(p[:, 2]) <= half[2])
    inten = np.nan_to_num(pts[m, 3].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0) if pts.shape[1] > 3 \
        else np.zeros(int(m.sum()))
    return np.column_stack([x[m], y[m], p[m, 2], inten]).astype(np.float32)


def _sample(crop: NDArray[np.float32], npts: int) -> NDArray[np.float32]:
    """``npts`` of the crop's points, deterministically: an even stride, or every point repeated cyclically (the
    max over the points does not see repeats)."""
    n = len(crop)
    idx = np.arange(npts) * n // npts if n >= npts else np.arange(npts) % n
    return crop[idx]


def box_inputs(det: Detections, points: NDArray[np.floating], config: BoxHeadConfig,
               sensor_xy: Any = (0.0, 0.0)) -> tuple[NDArray[np.int64], tuple[NDArray[np.float32], ...]]:
    """The boxes of ``det`` the head corrects (indices: ``config.classes``, finite, with at least
    ``min_points`` points around them) and their raw inputs (points ``[B, N, 4]``, size ``[B, 3]``, sensor
    ``[B, 2]``, count ``[B]``); the points sampled by :func:`_sample` (training and inference alike)."""
    empty = (np.zeros((0, config.npts, 4), np.float32), np.zeros((0, 3), np.float32), np.zeros((0, 2), np.float32),
             np.zeros((0,), np.float32))
    pts = np.asarray(points)
    wanted = [i for i, name in enumerate(det.class_names) if name in config.classes]
    if len(det) == 0 or pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] < 3:
        return np.zeros(0, np.int64), empty
    finite = np.isfinite(det.center).all(1) & np.isfinite(det.size).all(1) & np.isfinite(det.yaw) & (det.size > 0).all(1)
    idx = np.flatnonzero(np.isin(det.label, wanted) & finite)
    if not len(idx):
        return idx, empty
    centre, size = det.center.astype(np.float64), det.size.astype(np.float64)
    m = config.margin_m
    # each box's axis-aligned square reaches its grown corners: half the diagonal is at most the box's plus sqrt(2)
    # margins. One pass keeps the points in the squares' union and the boxes' heights (a comparison with NaN is
    # false, so non-finite points drop out here); each box then reads that subset only.
    reach = 0.5 * np.hypot(size[idx, 0], size[idx, 1]) + 1.5 * m + 1e-3
    lo, hi = centre[idx, :2] - reach[:, None], centre[idx, :2] + reach[:, None]
    z_lo = float(np.min(centre[idx, 2] - size[idx, 2] / 2)) - m - 1e-3
    z_hi = float(np.max(centre[idx, 2] + size[idx, 2] / 2)) + m + 1e-3
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    sub = np.flatnonzero((x >= lo[:, 0].min()) & (x <= hi[:, 0].max()) & (y >= lo[:, 1].min()) & (y <= hi[:, 1].max())
                         & (z >= z_lo) & (z <= z_hi))
    xs, ys = x[sub], y[sub]
    # each box's points in the order the weights were trained with (the sampling stride depends on it): by 2 m bin of
    # the squares' union (column-major), then by index. The bins start at the union's corner, so where a box has more
    # than npts points, which of them it reads can change with the other boxes of the scan (a few cm in a test); a
    # per-box order would need a retrained head
    origin, cell = lo.min(0), 2.0
    n_bins = np.floor((hi.max(0) - origin) / cell).astype(np.int64) + 1
    candidates = []
    for a, b in zip(lo, hi, strict=True):
        k = np.flatnonzero((xs >= a[0]) & (xs <= b[0]) & (ys >= a[1]) & (ys <= b[1]))
        ij = np.minimum(np.floor((np.column_stack([xs[k], ys[k]]).astype(np.float64) - origin) / cell).astype(np.int64),
                        n_bins - 1)
        candidates.append(sub[k[np.argsort(ij[:, 0] * n_bins[1] + ij[:, 1], kind="stable")]])
    sensor = np.asarray(sensor_xy, np.float64).reshape(-1)[:2]
    keep, P, S, E, N = [], [], [], [], []
    for i, cand in zip(idx, candidates, strict=True):
        crop = _crop(pts[cand], centre[i], size[i], float(det.yaw[i]), m)
        if len(crop) < config.min_points:
            continue
        sample = _sample(crop, config.npts)
        d = sensor - centre[i, :2]
        c, s = math.cos(-float(det.yaw[i])), math.sin(-float(det.yaw[i]))
        keep.append(i)
        P.append(sample)
        S.append(size[i].astype(np.float32))
        E.append(np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]], np.float32))
        N.append(len(crop))
    if not keep:
        return np.zeros(0, np.int64), empty
    return np.asarray(keep, np.int64), (np.stack(P), np.stack(S), np.stack(E), np.asarray(N, np.float32))


def apply_residuals(det: Detections, idx: NDArray[np.int64], res: NDArray[np.floating]) -> Detections:
    """``det`` with boxes ``idx`` moved by the box-frame residuals ``res`` ``[len(idx), 7]`` (non-finite rows
    skipped); a new object, ``det`` is not changed."""
    centre, size, yaw = det.center.copy(), det.size.copy(), det.yaw.copy()
    for i, r in zip(idx, np.asarray(res, np.float64), strict=True):
        if not np.isfinite(r).all():
            continue
        # bounded to what training taught (matches within 1.5 m, headings within 45 degrees): a scan unlike the
        # training scans must not throw a box across the road
        dx, dy = float(np.clip(r[0], -MAX_SHIFT_M, MAX_SHIFT_M)), float(np.clip(r[1], -MAX_SHIFT_M, MAX_SHIFT_M))
        c, s = math.cos(float(yaw[i])), math.sin(float(yaw[i]))
        centre[i, 0] += c * dx - s * dy
        centre[i, 1] += s * dx + c * dy
        centre[i, 2] += float(np.clip(r[2], -MAX_SHIFT_Z_M, MAX_SHIFT_Z_M))
        size[i] = size[i] * np.exp(np.clip(r[3:6], -1.0, 1.0))
        yaw[i] = math.remainder(float(yaw[i]) + float(np.clip(r[6], -math.pi / 4, math.pi / 4)), 2 * math.pi)
    return dataclasses.replace(det, center=centre, size=size, yaw=yaw)


def apply_box_head(det: Detections, points: NDArray[np.floating], head: BoxHead | None,
                   sensor_xy: Any = (0.0, 0.0)) -> tuple[Detections, int]:
    """``det`` with its boxes of the head's classes corrected on ``points`` (the scan the network saw, in the
    boxes' frame; ``sensor_xy`` the LiDAR's position there); returns the detections and how many boxes the head
    corrected. ``head`` None: ``det`` unchanged."""
    if head is None or len(det) == 0:
        return det, 0
    idx, raw = box_inputs(det, points, head.config, sensor_xy)
    if not len(idx):
        return det, 0
    res = head.forward(*point_features(*raw))
    return apply_residuals(det, idx, res), int(len(idx))


def weights_sha256(folder: Path | str) -> str:
    """sha256 of a weights folder's ``model.safetensors`` ("" when it is not there), cached by path, size and
    modification time."""
    path = Path(folder) / "model.safetensors"
    try:
        st = path.stat()
    except OSError:
        return ""
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - size and time are the cache key
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mismatch(head: BoxHead, detector_folder: Path | str) -> str | None:
    """Why ``head`` must not run on the boxes of the detector in ``detector_folder`` (None: it may): it was
    trained on another network's boxes, whose errors it learned to correct."""
    if not head.detector_sha256:
        return None  # a head that does not say which detector it was trained for: the user's choice
    got = weights_sha256(detector_folder)
    if got != head.detector_sha256:
        return (f"{head.source} was trained on the boxes of other detector weights (sha256 "
                f"{head.detector_sha256[:12]}, these {got[:12] or 'unreadable'})")
    return None


def packaged_head_for(detector_folder: Path | str | None) -> tuple[BoxHead | None, str | None]:
    """The packaged head for the detector weights in ``detector_folder`` and None, or None and why not (no folder:
    random or other weights; or weights the head was not trained on)."""
    from perception_nodes.models.weights_io import resolve_weights_folder

    if detector_folder is None:
        return None, "no detector weights folder"
    head = load_box_head(resolve_weights_folder("", NETWORK))
    why = mismatch(head, detector_folder)
    return (None, why) if why is not None else (head, None)


def load_box_head(folder: Path | str) -> BoxHead:
    """The head of a weights folder (``model.safetensors`` + ``model.json`` with network ``lidar_box_head``);
    :class:`~perception_nodes.models.weights_io.WeightsError` when it is missing, corrupt or does not fit."""
    from safetensors.numpy import load_file

    from perception_nodes.models.weights_io import WeightsError, read_sidecar

    side = read_sidecar(folder, NETWORK)
    try:
        config = BoxHeadConfig.from_mapping(side.get("config") or {})
        weights = load_file(str(Path(folder) / "model.safetensors"))
        return BoxHead(config, {k: np.asarray(v, np.float32) for k, v in weights.items()}, source=str(folder),
                       detector_sha256=str((side.get("training") or {}).get("detector_sha256") or ""))
    except Exception as exc:  # noqa: BLE001 - a corrupt file, a bad config or wrong shapes: one clear error
        raise WeightsError(f"{folder}: not a usable box head ({type(exc).__name__}: {exc})") from exc


def BoxHeadNet(config: BoxHeadConfig = BoxHeadConfig()):  # noqa: N802 - a torch module factory, read as a class
    """The head as a torch module (training; the same parameter names as the weights file)."""
    import torch
    from torch import nn

    class _Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = _layers(config)
            n_point = len(config.point_layers)
            self.point = nn.Sequential(*_mlp([(i, o) for _, i, o in layers[:n_point]]))
            self.box = nn.Sequential(*_mlp([(i, o) for _, i, o in layers[n_point:]]))
            self.config = config

        def forward(self, pf: "torch.Tensor", gf: "torch.Tensor") -> "torch.Tensor":
            return self.box(torch.cat([self.point(pf).max(1).values, gf], 1))

    def _mlp(shapes: list[tuple[int, int]]) -> list[nn.Module]:
        mods: list[nn.Module] = []
        for k, (i, o) in enumerate(shapes):
            mods.append(nn.Linear(i, o))
            if k < len(shapes) - 1:
                mods.append(nn.ReLU())
        return mods

    return _Net()
