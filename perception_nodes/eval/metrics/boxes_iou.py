"""Exact rotated bird's-eye-view (BEV) and 3D IoU of :class:`~perception_nodes.boxes.Box3D` pairs.

Definitions (as used by the KITTI 3D/BEV benchmarks, Geiger et al., CVPR 2012, and every detector
evaluated on them):

* BEV IoU: the two boxes' footprints are oriented rectangles in the ground (x, y) plane; IoU is
  ``area(A ∩ B) / (area(A) + area(B) - area(A ∩ B))`` with the exact intersection polygon.
* 3D IoU: boxes are yaw-only (rotation about +z), so the intersection volume is the BEV intersection
  area times the overlap of the two vertical extents ``[z - h/2, z + h/2]`` (centres are gravity
  centres, see :mod:`perception_nodes.boxes`), and ``IoU = V∩ / (V_A + V_B - V∩)``.

The intersection of two convex polygons is convex and its vertices are (a) corners of one rectangle
lying inside the other and (b) crossings of one rectangle's edges with the other's. We collect those
(at most 4 + 4 + 16 candidates per pair), order them by angle about their mean (which lies inside the
convex intersection) and apply the shoelace formula. Everything is vectorised over pairs; pairs whose
circumscribed circles do not touch are skipped, so an N x M matrix for hundreds of boxes is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from perception_nodes.boxes import Box3D

__all__ = [
    "bev_iou",
    "box_iou",
    "boxes_to_array",
    "iou_3d",
    "pairwise_iou",
    "rect_corners",
    "rotated_rect_intersection_area",
]

BoxesLike = Sequence[Box3D] | ArrayLike


def boxes_to_array(boxes: BoxesLike) -> NDArray[np.float64]:
    """Boxes as an (N, 7) float64 array ``[x, y, z, length, width, height, yaw]``.

    Accepts a sequence of :class:`Box3D` or anything array-like already in that layout.
    """
    if isinstance(boxes, np.ndarray):
        arr = np.asarray(boxes, dtype=np.float64)
    else:
        seq = list(boxes)  # type: ignore[arg-type]
        if len(seq) == 0:
            return np.zeros((0, 7), dtype=np.float64)
        if isinstance(seq[0], Box3D):
            arr = np.array([[*b.center, *b.size, b.yaw] for b in seq], dtype=np.float64)
        else:
            arr = np.asarray(seq, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 7)
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise ValueError(f"boxes must be (N, 7) [x, y, z, l, w, h, yaw], got shape {arr.shape}")
    return arr


def rect_corners(xy: NDArray, lw: NDArray, yaw: NDArray) -> NDArray[np.float64]:
    """(P, 4, 2) counter-clockwise corners of oriented rectangles (same order as ``Box3D.corners_xy``)."""
    half = np.asarray(lw, dtype=np.float64) / 2.0
    sx = np.array([1.0, -1.0, -1.0, 1.0])
    sy = np.array([1.0, 1.0, -1.0, -1.0])
    lx = half[:, None, 0] * sx  # (P, 4) in the box frame
    ly = half[:, None, 1] * sy
    c = np.cos(yaw)[:, None]
    s = np.sin(yaw)[:, None]
    x = c * lx - s * ly + xy[:, None, 0]
    y = s * lx + c * ly + xy[:, None, 1]
    return np.stack([x, y], axis=-1)


def _cross(ax: NDArray, ay: NDArray, bx: NDArray, by: NDArray) -> NDArray:
    return ax * by - ay * bx


def _inside(points: NDArray, poly: NDArray, tol: NDArray) -> NDArray[np.bool_]:
    """(P, K) mask: is each of K points inside (or on) the convex CCW 4-gon ``poly`` of its pair."""
    e = np.roll(poly, -1, axis=1) - poly  # (P, 4, 2) edge vectors
    rel = points[:, :, None, :] - poly[:, None, :, :]  # (P, K, 4, 2)
    cr = _cross(e[:, None, :, 0], e[:, None, :, 1], rel[..., 0], rel[..., 1])
    return np.all(cr >= -tol[:, None, None], axis=-1)


def rotated_rect_intersection_area(ca: NDArray, cb: NDArray) -> NDArray[np.float64]:
    """Elementwise intersection area of pairs of CCW rectangles given as (P, 4, 2) corner arrays."""
    ca = np.asarray(ca, dtype=np.float64)
    cb = np.asarray(cb, dtype=np.float64)
    p = ca.shape[0]
    if p == 0:
        return np.zeros(0)
    # Tolerance in units of length^2 for the orientation tests, relative to the boxes' size.
    ext = np.maximum(np.ptp(ca.reshape(p, -1), axis=1), np.ptp(cb.reshape(p, -1), axis=1))
    tol = 1e-12 * (1.0 + ext) ** 2

    a_in_b = _inside(ca, cb, tol)  # (P, 4)
    b_in_a = _inside(cb, ca, tol)

    # Edge-edge crossings: A edge i = a_i + t r_i, B edge j = b_j + u s_j, t, u in [0, 1].
    r = np.roll(ca, -1, axis=1) - ca  # (P, 4, 2)
    s = np.roll(cb, -1, axis=1) - cb
    rx, ry = r[:, :, None, 0], r[:, :, None, 1]  # (P, 4, 1)
    sx, sy = s[:, None, :, 0], s[:, None, :, 1]  # (P, 1, 4)
    qpx = cb[:, None, :, 0] - ca[:, :, None, 0]  # (P, 4, 4)
    qpy = cb[:, None, :, 1] - ca[:, :, None, 1]
    den = _cross(rx, ry, sx, sy)
    parallel = np.abs(den) <= 1e-14 * (1.0 + ext[:, None, None]) ** 2
    safe = np.where(parallel, 1.0, den)
    t = _cross(qpx, qpy, sx, sy) / safe
    u = _cross(qpx, qpy, rx, ry) / safe
    eps = 1e-12
    cross_ok = ~parallel & (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    ix = ca[:, :, None, 0] + t * rx
    iy = ca[:, :, None, 1] + t * ry
    crossings = np.stack([ix, iy], axis=-1).reshape(p, 16, 2)

    pts = np.concatenate([ca, cb, crossings], axis=1)  # (P, 24, 2)
    valid = np.concatenate([a_in_b, b_in_a, cross_ok.reshape(p, 16)], axis=1)
    n_valid = valid.sum(axis=1)

    w = valid.astype(np.float64)
    centre = (pts * w[..., None]).sum(axis=1) / np.maximum(n_valid, 1)[:, None]
    ang = np.arctan2(pts[..., 1] - centre[:, None, 1], pts[..., 0] - centre[:, None, 0])
    ang = np.where(valid, ang, np.inf)  # invalid candidates sort last
    order = np.argsort(ang, axis=1, kind="stable")
    poly = np.take_along_axis(pts, order[..., None], axis=1)
    vsorted = np.take_along_axis(valid, order, axis=1)
    # Invalid slots repeat the first vertex: the closing edges then have zero length (no area).
    poly = np.where(vsorted[..., None], poly, poly[:, :1, :])
    nxt = np.roll(poly, -1, axis=1)
    area = 0.5 * np.abs(np.sum(_cross(poly[..., 0], poly[..., 1], nxt[..., 0], nxt[..., 1]), axis=1))
    return np.where(n_valid >= 3, area, 0.0)


def _pairwise(a: BoxesLike, b: BoxesLike, metric: Literal["bev", "3d"]) -> NDArray[np.float64]:
    if metric not in ("bev", "3d"):
        raise ValueError(f"metric must be 'bev' or '3d', got {metric!r}")
    A = boxes_to_array(a)
    B = boxes_to_array(b)
    n, m = len(A), len(B)
    out = np.zeros((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return out
    area_a = A[:, 3] * A[:, 4]
    area_b = B[:, 3] * B[:, 4]
    # Broad phase: circumscribed circles must overlap (and, for 3D, the vertical extents).
    rad_a = 0.5 * np.hypot(A[:, 3], A[:, 4])
    rad_b = 0.5 * np.hypot(B[:, 3], B[:, 4])
    d = np.hypot(A[:, None, 0] - B[None, :, 0], A[:, None, 1] - B[None, :, 1])
    cand = d <= (rad_a[:, None] + rad_b[None, :]) * (1 + 1e-9) + 1e-12
    if metric == "3d":
        z_lo = np.maximum(A[:, None, 2] - A[:, None, 5] / 2, B[None, :, 2] - B[None, :, 5] / 2)
        z_hi = np.minimum(A[:, None, 2] + A[:, None, 5] / 2, B[None, :, 2] + B[None, :, 5] / 2)
        z_overlap = np.maximum(z_hi - z_lo, 0.0)
        cand &= z_overlap > 0
    ii, jj = np.nonzero(cand)
    if ii.size == 0:
        return out
    ca = rect_corners(A[ii, :2], A[ii, 3:5], A[ii, 6])
    cb = rect_corners(B[jj, :2], B[jj, 3:5], B[jj, 6])
    inter = rotated_rect_intersection_area(ca, cb)
    if metric == "bev":
        union = area_a[ii] + area_b[jj] - inter
    else:
        inter = inter * z_overlap[ii, jj]
        union = area_a[ii] * A[ii, 5] + area_b[jj] * B[jj, 5] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    out[ii, jj] = np.clip(iou, 0.0, 1.0)
    return out


def bev_iou(a: BoxesLike, b: BoxesLike) -> NDArray[np.float64]:
    """(N, M) rotated BEV IoU matrix between boxes ``a`` and ``b`` (KITTI "bird's eye view" overlap)."""
    return _pairwise(a, b, "bev")


def iou_3d(a: BoxesLike, b: BoxesLike) -> NDArray[np.float64]:
    """(N, M) 3D IoU matrix: BEV intersection area x vertical overlap over the union volume."""
    return _pairwise(a, b, "3d")


def pairwise_iou(a: BoxesLike, b: BoxesLike, metric: Literal["bev", "3d"] = "3d") -> NDArray[np.float64]:
    """(N, M) IoU matrix of the chosen ``metric`` ("bev" or "3d")."""
    return _pairwise(a, b, metric)


def box_iou(a: Box3D, b: Box3D, metric: Literal["bev", "3d"] = "3d") -> float:
    """IoU of one pair of boxes."""
    return float(_pairwise([a], [b], metric)[0, 0])
