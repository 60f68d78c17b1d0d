"""Learned stereo -> Beta occupancy evidence per BEV cell: what the ``stereo_occupancy`` node's learned mode
runs around :mod:`perception_nodes.models.stereo_voxel` (the network itself needs PyTorch; this module's
geometry and evidence functions are numpy only).

Input size
----------
The network was trained at the generator's 320x96 and its 24 planes reach 46 px of disparity at that
width. A pair of another size is **resized** (area interpolation) to ``input_width`` columns (default 320,
the training width) and the rows that keep the aspect ratio, rounded to a multiple of 8
(:func:`network_input_size`: 1241x376 -> 320x96); the intrinsics are scaled alike
(:func:`scaled_geometry`), so the planes keep their depths (KITTI at 320 px: 2.2 m to ~100 m). Running
natively at 1241 px would need 4x the planes for the same depth range (and is not what it was trained
for). Pairs whose resized height would be below 16 rows are rejected (:class:`InputSizeError`).

Evidence to grid
----------------
The network gives Beta evidence ``(occupied, free)`` per frustum cell (plane k x ray column j: the rays
through 4 input columns, the depths whose disparity rounds to plane k; see the model's docstring). Each
BEV cell of the node's grid takes the frustum cell under its **centre**, at the camera's height (the
frustum grid is 2-D), through a look-up table built once per (geometry, extrinsics, grid)
(:func:`frustum_lut`). Then

* **free** evidence is copied: a frustum cell is free when all of it is free, so every BEV cell in it is;
* **occupied** evidence is scaled by ``min(1, cell area / frustum cell area)``: a frustum cell is occupied
  when *any* of it is, so a BEV cell covering a tenth of a far frustum cell gets a tenth of its occupied
  evidence (the same "probability to land in this cell" reasoning as the SGBM model's depth weight);
* **unknown behind the first surface**: along each ray column, the cells farther than the nearest frustum
  cell with P(occupied) > 0.5 get no evidence (the network was trained on visible cells only: what it says
  behind a surface is not supervised); so do cells beyond ``max_depth_m``, nearer than ``min_range_m``
  (horizontal range) and outside the field of view;
* all evidence times ``evidence_scale``.

Health
------
:func:`consistent_disparity_ratio`: the share of the pair's pixels (at network resolution, where the
predicted disparity lands inside the right image) that are *textured* (mean horizontal Sobel gradient over
3x3 above ``texture_min`` times the pair's grey-level std) and *photometrically consistent* (the right image
warped by the predicted disparity matches the left within ``consistency_tol`` pair std, 3x3 mean). A
network always outputs a disparity, even for a black or decalibrated camera; this asks whether the images
support it. It plays the SGBM valid-disparity ratio's role (same 0..1 scale, same thresholds): on the
demo frame clean 0.74, the real KITTI pair 0.78, right camera shifted 2 / 4 rows 0.61 / 0.52, half the left
image saturated 0.25, one camera black 0, noise against a real image 0.02.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec
from perception_nodes.pipeline.stereo import StereoGeometry

__all__ = ["FrustumLut", "InputSizeError", "LearnedStereoParams", "consistent_disparity_ratio", "frustum_lut",
           "frustum_to_grid", "network_input_size", "resize_pair", "scaled_geometry"]

#: quarter-resolution stride of the network's frustum columns (models.stereo_voxel.STRIDE)
STRIDE = 4


class InputSizeError(ValueError):
    """A pair the network cannot take at any honest resize (too small)."""


@dataclass(frozen=True)
class LearnedStereoParams:
    """The node's ``learned.*`` parameters (see the module doc)."""

    #: network input width (px, multiple of 8); the height keeps the aspect ratio (multiple of 8)
    input_width: int = 320
    #: factor on all evidence the network gives
    evidence_scale: float = 1.0
    #: cells deeper than this (m along the optical axis) get no evidence
    max_depth_m: float = 40.0
    #: cells nearer than this (m, horizontal range from the camera) get none
    min_range_m: float = 1.0
    #: cells behind a ray's first occupied frustum cell get no evidence
    occlusion: bool = True
    #: health: warped right within this many pair std of the left (3x3 mean) = consistent
    consistency_tol: float = 0.5
    #: health: 3x3 mean horizontal gradient above this many pair std = textured
    texture_min: float = 0.02

    def __post_init__(self) -> None:
        if self.input_width < 64 or self.input_width % 8:
            raise ValueError(f"input_width must be a multiple of 8, >= 64 (got {self.input_width})")
        if not self.evidence_scale > 0 or not self.max_depth_m > 0 or self.min_range_m < 0:
            raise ValueError("evidence_scale and max_depth_m must be positive, min_range_m >= 0")
        if not self.consistency_tol > 0 or self.texture_min < 0:
            raise ValueError("consistency_tol must be positive and texture_min >= 0")


def network_input_size(width: int, height: int, input_width: int) -> tuple[int, int]:
    """(w, h) the pair is resized to: ``input_width`` and the aspect-keeping height rounded to a multiple
    of 8; :class:`InputSizeError` when that height is below 16 rows."""
    h = int(round(height * input_width / width / 8.0)) * 8
    if h < 16:
        raise InputSizeError(f"a {width}x{height} pair resized to {input_width} columns keeps {height * input_width / width:.1f} "
                             "rows: too few for the network (needs >= 16)")
    return input_width, h


def scaled_geometry(g: StereoGeometry, width: int, height: int) -> StereoGeometry:
    """``g`` for the same pair resized to ``width x height`` (pixel centres kept: ``c' = (c + 0.5) s - 0.5``)."""
    sx, sy = width / g.width, height / g.height
    return replace(g, width=width, height=height, fx=g.fx * sx, fy=g.fy * sy, cx=(g.cx + 0.5) * sx - 0.5,
                   cy=(g.cy + 0.5) * sy - 0.5, doffs=g.doffs * sx)


def resize_pair(left: np.ndarray, right: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images to ``width x height`` (area interpolation; as is when already that size), contiguous."""
    import cv2

    if left.shape[1] == width and left.shape[0] == height:
        return np.ascontiguousarray(left), np.ascontiguousarray(right)
    return (cv2.resize(np.ascontiguousarray(left), (width, height), interpolation=cv2.INTER_AREA),
            cv2.resize(np.ascontiguousarray(right), (width, height), interpolation=cv2.INTER_AREA))


@dataclass(frozen=True)
class FrustumLut:
    """BEV cell -> frustum cell map (see the module doc): flat grid indices of the cells that get evidence,
    their plane ``k`` and column ``j``, and the factor on their occupied evidence."""

    cell: NDArray[np.int64]
    k: NDArray[np.int64]
    j: NDArray[np.int64]
    occupied_weight: NDArray[np.float32]
    planes: int
    columns: int


def frustum_lut(gn: StereoGeometry, planes: int, plane_step: float, base_from_optical: np.ndarray,
                spec: GridSpec, params: LearnedStereoParams) -> FrustumLut:
    """The look-up table of :func:`frustum_to_grid` for a network of ``planes`` planes ``plane_step``
    quarter-resolution px apart, run on a pair of geometry ``gn`` (the *network input's*)."""
    T = np.asarray(base_from_optical, dtype=np.float64).reshape(4, 4)
    R, t = T[:3, :3], T[:3, 3]
    cx_b, cy_b = spec.cell_centers()
    p = np.stack([cx_b.ravel() - t[0], cy_b.ravel() - t[1], np.zeros(cx_b.size)], 1)  # at the camera's height
    opt = p @ R  # R^T (p - t), row-wise
    x_opt, z_opt = opt[:, 0], opt[:, 2]
    rho = np.hypot(p[:, 0], p[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        u = gn.fx * x_opt / z_opt + gn.cx
        d = gn.fb / z_opt + gn.doffs  # measured disparity at the network's resolution
    columns = gn.width // STRIDE
    spacing = STRIDE * plane_step  # input-resolution px between planes
    j = np.floor((u + 0.5) / STRIDE)
    k = np.floor(d / spacing + 0.5)
    ok = ((z_opt > 0) & (z_opt <= params.max_depth_m) & (rho >= params.min_range_m) & np.isfinite(u)
          & (j >= 0) & (j < columns) & (k >= 0) & (k < planes))
    cell = np.flatnonzero(ok)
    k, j, z = k[ok].astype(np.int64), j[ok].astype(np.int64), z_opt[ok]
    half = 0.5 * spacing
    near = gn.fb / (k * spacing + half - gn.doffs)
    far_d = k * spacing - half - gn.doffs
    far = np.where(far_d > 0, gn.fb / np.maximum(far_d, 1e-9), params.max_depth_m)
    far = np.minimum(far, params.max_depth_m)
    area = (STRIDE * z / gn.fx) * np.maximum(far - near, 1e-6)
    w = np.minimum(1.0, spec.resolution ** 2 / area).astype(np.float32)
    return FrustumLut(cell.astype(np.int64), k, j, w, planes, columns)


def frustum_to_grid(evidence: np.ndarray, lut: FrustumLut, spec: GridSpec, params: LearnedStereoParams) -> BetaGrid:
    """Frustum Beta evidence ``[2, D, W/4]`` (occupied, free) -> a :class:`BetaGrid` on ``spec``."""
    ev = np.asarray(evidence, dtype=np.float32)
    if ev.shape != (2, lut.planes, lut.columns):
        raise ValueError(f"evidence of shape {ev.shape} does not fit the look-up table's (2, {lut.planes}, {lut.columns})")
    ev = ev * np.float32(params.evidence_scale)
    eo, ef = ev[0][lut.k, lut.j], ev[1][lut.k, lut.j]
    keep = np.ones(lut.cell.shape, bool)
    if params.occlusion:
        p_occ = (ev[0] + 1.0) / (ev.sum(0) + 2.0)  # [D, w]
        hit = p_occ > 0.5
        # nearest surface per column = the largest plane index with a hit (-1: none)
        first = np.where(hit.any(0), lut.planes - 1 - np.argmax(hit[::-1], axis=0), -1)
        keep = lut.k >= first[lut.j]
    n = spec.height * spec.width
    occ = np.zeros(n, np.float32)
    free = np.zeros(n, np.float32)
    occ[lut.cell[keep]] = eo[keep] * lut.occupied_weight[keep]
    free[lut.cell[keep]] = ef[keep]
    return BetaGrid(occ.reshape(spec.shape), free.reshape(spec.shape), spec)


def consistent_disparity_ratio(left: np.ndarray, right: np.ndarray, disparity: np.ndarray,
                               tol: float = 0.5, texture_min: float = 0.02) -> float:
    """Health of a learned disparity map (see the module doc): share of the pixels whose disparity lands
    in the right image that are textured and photometrically consistent. ``left``/``right``: (H, W[, 3])
    images the ``disparity`` (H, W, px) was predicted for."""
    import cv2

    gl = left.astype(np.float32).mean(-1) if left.ndim == 3 else left.astype(np.float32)
    gr = right.astype(np.float32).mean(-1) if right.ndim == 3 else right.astype(np.float32)
    h, w = gl.shape
    mapx = np.arange(w, dtype=np.float32)[None, :] - np.asarray(disparity, dtype=np.float32)
    mapy = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w)).copy()
    warped = cv2.remap(gr, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=math.nan)
    sd = max(float(np.sqrt(0.5 * (gl.var() + gr.var()) + 0.25 * (gl.mean() - gr.mean()) ** 2)), 1e-3)
    err = cv2.blur(np.abs(gl - warped) / sd, (3, 3))
    grad = cv2.blur(np.abs(cv2.Sobel(gl, cv2.CV_32F, 1, 0, ksize=3)) / (4.0 * sd), (3, 3))
    inside = np.isfinite(err)
    n = int(inside.sum())
    if n == 0:
        return 0.0
    return float(np.count_nonzero(inside & (grad > texture_min) & (err < tol)) / n)
