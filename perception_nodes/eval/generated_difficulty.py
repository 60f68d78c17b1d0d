"""KITTI difficulty levels for ground truth that has no camera label: generated scenes.

KITTI grades a labelled box by its 2D box height in the image, its occlusion state and its truncation
(:mod:`perception_nodes.eval.metrics.kitti_difficulty`); issue 10's goal is car AP3D at *moderate*. A generated
scene's boxes carry none of the three, so until now they were scored at one level, ``"all"`` (every box
with a LiDAR point, however far away or hidden). This module gives such boxes the two numbers that matter
for a LiDAR scan, from the geometry alone (never from a detection):

* **2D box height**: the box's eight corners projected by a virtual pinhole camera at the sensor, with
  KITTI's focal length (:data:`KITTI_FOCAL_PX`, the object benchmark's ``P2``), looking horizontally at the
  box's centre (a 360-degree scan has no image border, so each box gets the camera that faces it).
  For a box whose vertical extent spans the camera height this is ``f * h / d_near``: a 1.5 m car is 25 px
  (moderate's minimum) at about 43 m. A box reaching behind the camera plane (the sensor next to or inside
  it) has no finite projection and passes every height test (its occlusion is still measured).
* **Occlusion**: from a scan's rays -- the generator's fault-free cast (its truth, below), or the delivered
  scan for boxes without a state. Every return whose ray passes through the box (above its
  lowest :data:`GROUND_MARGIN_M`, where the road in front can return first) either ends more than
  :data:`OCCLUDER_MARGIN_M` before the ray enters the box (something stands in front: an occluding return)
  or not (the box, or what lies behind glass, is seen). The occluded fraction maps onto KITTI's states as
  nuScenes' visibility bins do (visible 80-100 %: 0 "fully visible"; 40-80 %: 1 "partly occluded";
  below 40 %: 2 "largely occluded"); a box no return's ray reaches is 3 "unknown" (ignored at every level).
  Rays that gave no return at all (dark paint, glass, dropout) are not in the scan and count for neither,
  so where objects drop many returns and occluders do not (the generator's realism knobs: about half the rays
  through a car return, and occluders drop returns too) the occlusion measured on the delivered scan is off in
  both directions (``benchmarks/occlusion_grading.py``: 87-91 % of the cars in their true state on realism
  sets, 99 % on plain ones). **Generated bags since generator version 5 carry the occlusion as truth**: the
  generator applies the same test to its fault-free, dropout-free cast of the same rig
  (:func:`perception_nodes.scenario.truth.ideal_scan`) and writes the state into each ground-truth object's
  ``occlusion`` field; :func:`with_difficulty` keeps a box's state when it has one (>= 0) and measures it on
  the scan only for boxes without (older generated bags, the tests' fixture bags: -1). Converted KITTI bags
  carry the label's occlusion too; ``evaluate`` does not grade them this way (their 2D boxes are not in the
  bag) and ``lidar-eval`` scores real KITTI from the label files.
* **Truncation** is not modelled (0): there is no image border to leave.

The same camera gives detections a 2D box, so the devkit's rule for detections (a detection lower than the
level's minimum height is ignored, not a false positive) applies to them as it does in OpenPCDet's KITTI
evaluation, which projects LiDAR boxes into the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from perception_nodes.boxes import Box3D

__all__ = [
    "GROUND_MARGIN_M",
    "KITTI_FOCAL_PX",
    "OCCLUDER_MARGIN_M",
    "OCCLUSION_BINS",
    "occluded_fractions",
    "occlusion_state",
    "occlusion_truth",
    "virtual_bbox2d",
    "with_difficulty",
    "with_virtual_bbox2d",
]

#: KITTI object benchmark, ``P2[0, 0]`` (= ``P2[1, 1]``) of the left colour camera, pixels
KITTI_FOCAL_PX = 721.5377
#: KITTI's principal point (only shifts the 2D box; the height is what the levels use)
_KITTI_PRINCIPAL = (609.5593, 172.854)
#: a return this far (m) in front of the point where its ray enters the box counts as an occluder (range noise
#: and the cabin inset from the label box stay inside it)
OCCLUDER_MARGIN_M = 0.3
#: rays entering the box this close (m) to its bottom are left out: the road just in front can return first
GROUND_MARGIN_M = 0.2
#: upper bounds of the occluded fraction for KITTI occlusion states 0 and 1 (nuScenes' visibility bins)
OCCLUSION_BINS = (0.2, 0.6)
_MIN_DEPTH_M = 0.1


def _wrap(a: np.ndarray | float) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(a, np.float64) + np.pi) % (2.0 * np.pi) - np.pi


def virtual_bbox2d(box: Box3D, origin: Sequence[float], focal_px: float = KITTI_FOCAL_PX) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in pixels of ``box`` seen by a pinhole camera at ``origin`` (same frame,
    z up) looking horizontally at the box's centre; ``(-inf, -inf, inf, inf)`` when a corner lies within
    0.1 m of the camera plane or behind it."""
    o = np.asarray(origin, np.float64)[:3]
    rel = box.corners() - o
    az = np.arctan2(float(box.center[1]) - o[1], float(box.center[0]) - o[0])
    fwd = np.array([np.cos(az), np.sin(az)])
    depth = rel[:, :2] @ fwd
    if depth.min() < _MIN_DEPTH_M:
        return (-np.inf, -np.inf, np.inf, np.inf)
    left = rel[:, :2] @ np.array([-fwd[1], fwd[0]])
    u = _KITTI_PRINCIPAL[0] - focal_px * left / depth  # image x grows to the right
    v = _KITTI_PRINCIPAL[1] - focal_px * rel[:, 2] / depth  # image y grows downwards
    return (float(u.min()), float(v.min()), float(u.max()), float(v.max()))


def _elevation_window(box: Box3D, o: np.ndarray) -> tuple[float, float]:
    """Lowest and highest elevation (rad) from ``o`` of any point of the box. Along an edge the extreme is
    where the edge comes nearest the sensor, not at a corner, so the bounds use the footprint's nearest
    horizontal distance (0 when the sensor stands above the footprint) and its farthest corner."""
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    dx, dy = o[0] - float(box.center[0]), o[1] - float(box.center[1])
    lx, ly = c * dx + s * dy, -s * dx + c * dy  # the sensor in the box's frame
    half_l, half_w = float(box.size[0]) / 2.0, float(box.size[1]) / 2.0
    rho_min = float(np.hypot(max(abs(lx) - half_l, 0.0), max(abs(ly) - half_w, 0.0)))
    rho_max = float(np.hypot(abs(lx) + half_l, abs(ly) + half_w))
    top = float(box.center[2]) + float(box.size[2]) / 2.0 - o[2]
    bottom = float(box.center[2]) - float(box.size[2]) / 2.0 - o[2]
    hi = np.arctan2(top, rho_min if top > 0 else rho_max)
    lo = np.arctan2(bottom, rho_min if bottom < 0 else rho_max)
    return float(lo), float(hi)


def _azimuth_window(az_sorted: np.ndarray, order: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Indices (into the unsorted returns) of the azimuths in ``[lo, hi]`` (rad, ``hi - lo < pi``, either end
    may lie outside [-pi, pi)), widened by 1e-9 rad: a prefilter, the slab test decides."""
    lo_w = float(_wrap(lo - 1e-9))
    hi_w = lo_w + (hi - lo) + 2e-9
    a = int(np.searchsorted(az_sorted, lo_w, side="left"))
    if hi_w <= np.pi:
        return order[a:int(np.searchsorted(az_sorted, hi_w, side="right"))]
    b = int(np.searchsorted(az_sorted, hi_w - 2.0 * np.pi, side="right"))  # the part past +pi, from -pi
    return np.concatenate([order[a:], order[:b]])


def occluded_fractions(boxes: Sequence[Box3D], points: np.ndarray, origin: Sequence[float]) -> list[tuple[float, int]]:
    """Per box, (occluded fraction, number of returns whose ray passes through it); the fraction is NaN
    when no ray does. ``points``: the scan (N, >=3) in the boxes' frame; ``origin``: the sensor there.

    Each box tests only the returns inside its azimuth and elevation window (exact bounds of the box, so
    the window drops no ray that meets it), then the exact ray-box (slab) test decides; a box the sensor
    stands beside or inside (a window wider than 180 degrees) tests every return."""
    o = np.asarray(origin, np.float64)[:3]
    rel = np.asarray(points, np.float64)[:, :3] - o
    rng = np.linalg.norm(rel, axis=1)
    keep = rng > 1e-6
    rel, rng = rel[keep], rng[keep]
    az = np.arctan2(rel[:, 1], rel[:, 0])
    el = np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1]))
    # returns sorted by azimuth once, so each box reads only its azimuth window (the generator grades ~40 boxes
    # against a 100k-point cast every frame)
    order = np.argsort(az, kind="stable")
    az_sorted = az[order]
    out: list[tuple[float, int]] = []
    for box in boxes:
        cr = box.corners() - o
        az_c = float(np.arctan2(float(box.center[1]) - o[1], float(box.center[0]) - o[0]))
        daz = _wrap(np.arctan2(cr[:, 1], cr[:, 0]) - az_c)
        if np.abs(daz).max() < np.pi / 2:
            el_lo, el_hi = _elevation_window(box, o)
            cand = _azimuth_window(az_sorted, order, az_c + float(daz.min()), az_c + float(daz.max()))
            cand = cand[(el[cand] >= el_lo) & (el[cand] <= el_hi)]
        else:  # the sensor beside or inside the box: no narrow window, every return is tested
            cand = np.arange(len(rel))
        if not len(cand):
            out.append((float("nan"), 0))
            continue
        d = rel[cand] / rng[cand, None]  # unit rays
        r = rng[cand]
        # ray-box (slab) test in the box's frame
        c, s = np.cos(box.yaw), np.sin(box.yaw)
        rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # world -> box
        q = rot @ (o - np.asarray(box.center, np.float64))
        dl = d @ rot.T
        half = np.asarray(box.size, np.float64) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - q) / dl
            t2 = (half - q) / dl
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        parallel = dl == 0.0
        inside_slab = np.abs(q) <= half
        lo = np.where(parallel, np.where(inside_slab, -np.inf, np.inf), lo)
        hi = np.where(parallel, np.where(inside_slab, np.inf, -np.inf), hi)
        t_near, t_far = lo.max(1), hi.min(1)
        hit = (t_near <= t_far) & (t_far > 0)
        entry = np.maximum(t_near, 0.0)
        bottom = float(box.center[2]) - half[2]
        hit &= (o[2] + d[:, 2] * entry) >= bottom + GROUND_MARGIN_M
        n = int(hit.sum())
        if n == 0:
            out.append((float("nan"), 0))
            continue
        occluded = int((r[hit] < entry[hit] - OCCLUDER_MARGIN_M).sum())
        out.append((occluded / n, n))
    return out


def occlusion_state(fraction: float) -> int:
    """KITTI occlusion state of an occluded fraction (3 = unknown for NaN)."""
    if not np.isfinite(fraction):
        return 3
    return 0 if fraction <= OCCLUSION_BINS[0] else 1 if fraction <= OCCLUSION_BINS[1] else 2


def with_virtual_bbox2d(boxes: Sequence[Box3D], origin: Sequence[float]) -> list[Box3D]:
    """The boxes with ``extras["bbox2d"]`` from :func:`virtual_bbox2d` (for detections)."""
    return [replace(b, extras={**b.extras, "bbox2d": virtual_bbox2d(b, origin)}) for b in boxes]


def with_difficulty(boxes: Sequence[Box3D], points: np.ndarray, origin: Sequence[float]) -> list[Box3D]:
    """Ground-truth boxes with what a KITTI level needs: ``extras["bbox2d"]`` (virtual camera), ``occlusion``,
    ``truncation`` 0, and ``extras["occlusion_source"]``: ``"truth"`` where the box came with a state (>= 0:
    the generator's visibility truth), else ``"scan"`` (measured on ``points``' rays, the fraction in
    ``extras["occluded_fraction"]``)."""
    boxes = list(boxes)
    todo = [i for i, b in enumerate(boxes) if b.occlusion < 0]
    fr = dict(zip(todo, occluded_fractions([boxes[i] for i in todo], points, origin), strict=True)) if todo else {}
    out = []
    for i, b in enumerate(boxes):
        extras = {**b.extras, "bbox2d": virtual_bbox2d(b, origin)}
        if i in fr:
            f = fr[i][0]
            out.append(replace(b, occlusion=occlusion_state(f), truncation=0.0,
                               extras={**extras, "occluded_fraction": f, "occlusion_source": "scan"}))
        else:
            out.append(replace(b, truncation=0.0, extras={**extras, "occlusion_source": "truth"}))
    return out


def occlusion_truth(boxes: Sequence[Box3D], ideal_points: np.ndarray, origin: Sequence[float]) -> list[Box3D]:
    """The boxes with ``occlusion`` set from a fault-free, dropout-free scan of the same rig (the generator's
    :func:`~perception_nodes.scenario.truth.ideal_scan`, in the boxes' frame): every ray through a box
    returns there, so the share of them stopped by something in front is the geometry's, not the sensor's."""
    fr = occluded_fractions(boxes, ideal_points, origin)
    return [replace(b, occlusion=occlusion_state(f)) for b, (f, _) in zip(boxes, fr, strict=True)]
