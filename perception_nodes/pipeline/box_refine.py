"""Box refinement: the heading (and placement) of each decoded car box fitted to the scan points inside it.

Why: the LiDAR branch finds the cars (with every matched box set to the truth its car AP3D @ 0.7 would be 0.95
on its own realism training scenes) but misses the heading of cars seen end-on beyond 10 m: a third of them
are more than 10 degrees off, and at IoU 0.7 that loses the match. The points of such a car lie on its rear
face, a straight segment whose direction a rectangle fit recovers to about a degree once it has a few dozen
returns (docs/lidar_branch.md, "Box refinement"). Autoware's ``shape_estimation`` node fits vehicles the same
way (an L-shape fit on a cluster); here the network gives the cluster (its box) and a heading prior.

Per box of a refined class (``car`` by default):

1. points inside the box grown by ``margin_m`` on its four sides (not above: its height is kept), higher than
   ``ground_clearance_m`` above its floor (the road under a car is not the car); fewer than ``min_points`` leave the box as decoded;
2. heading: every angle within ``search_deg`` of the network's heading in ``step_deg`` steps is scored by a
   variant of the *closeness criterion* of Zhang et al., "Efficient L-Shape Fitting for Vehicle Detection Using
   Laser Scanners" (IV 2017): project the points on the rectangle's two axes at that angle, take each point's
   distance to the nearest of the four edges the projections span (Zhang picks one edge per axis), floor it at
   ``closeness_floor_m`` and sum the inverses; the highest score wins. Searching near the network's heading keeps its direction (front vs
   back, which the points cannot tell) and avoids the 90 degree ambiguity of a rectangle;
3. placement (``shift_to_points``): along each axis of the refined box, if the points' ``percentile`` ..
   ``100 - percentile`` span reaches past the box, the box moves (size kept) until it holds the span, or is
   centred on the span when the span is longer than the box. The network's size stays: the points show only
   the near faces. Only points within ``margin_m`` of the decoded box count, so a box moves by about that much
   at most (a little more where the fitted heading turns the points' span);

4. near faces (``near_faces``): along each axis of the box, if the sensor lies outside the box's slab, the face
   towards it is one the scan sees: it moves to the points' extreme there plus ``surface_offset_m`` (real
   returns lie inside a labelled box: the median distance of KITTI car points to the nearest box face is
   0.05-0.34 m, nuScenes' 0.07-0.17 m, ``../shared/docs/sim-to-real-lidar.md``), while the far face stays where
   step 3 left it, so the box's extent changes (the network's length is the guess for the unseen end; its
   centre was a compromise between both ends). Where the sensor lies within the slab (a car straight ahead,
   across), the box is centred on the points' span if that covers ``min_extent_fraction`` of it. A move that
   would leave less than ``min_extent_fraction`` of half the box is not made.

The covariance is left as the network's NIG covariance: it describes the network's estimate, which the
refinement only improves where the points are many, so it is conservative for refined boxes. Runs in numpy
after decoding, so every runtime (PyTorch, ONNX Runtime) gets the same boxes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from numpy.typing import NDArray

from perception_nodes.config import ConfigError

if TYPE_CHECKING:  # decode imports torch; this module runs without it
    from perception_nodes.models.decode import Detections

__all__ = ["BoxRefinement", "fit_heading", "parse_setting", "refine_detections"]


@dataclass(frozen=True)
class BoxRefinement:
    """Parameters of :func:`refine_detections` (the node's ``box_refinement`` params and the evaluation's)."""

    enabled: bool = True
    #: class names whose boxes are refined (a rectangle fit suits vehicles; a pedestrian is no rectangle)
    classes: tuple[str, ...] = ("car",)
    #: points within this distance (m) outside the decoded box's four sides count as its points
    margin_m: float = 0.3
    #: points lower than this (m) above the box floor are dropped (the road)
    ground_clearance_m: float = 0.25
    #: a box with fewer points is left as decoded
    min_points: int = 8
    #: the heading search: +- this many degrees around the network's heading ...
    search_deg: float = 30.0
    #: ... in steps of this many degrees
    step_deg: float = 1.0
    #: the closeness criterion's distance floor (m): one point exactly on an edge must not outweigh the rest
    closeness_floor_m: float = 0.01
    #: the heading fit reads at most this many of a box's points (an even stride through them): its cost grows with
    #: points x angles, and a nearby car has thousands of returns where a few hundred fix its heading
    max_fit_points: int = 512
    #: move the box to hold its points (size kept), see the module docstring
    shift_to_points: bool = True
    #: the points' span is read from this percentile to 100 minus it (outlying returns ignored)
    percentile: float = 2.0
    #: put the faces the sensor sees on the points, far faces kept (step 4 of the module docstring)
    near_faces: bool = True
    #: how far (m) outside its outermost returns a seen face is put (labels enclose the returns)
    surface_offset_m: float = 0.05
    #: a span of points re-centres a box only if it covers this fraction of the box's extent along that axis,
    #: and a face move must leave at least this fraction of the half extent
    min_extent_fraction: float = 0.5

    def __post_init__(self) -> None:
        bad = []
        if self.enabled and (not self.classes or not all(isinstance(c, str) and c for c in self.classes)):
            bad.append(f"classes must name at least one class, got {list(self.classes)}")
        if not 0 <= self.margin_m <= 2.0:  # also rejects NaN and inf
            bad.append(f"margin_m must be in [0, 2], got {self.margin_m}")
        if not 0 <= self.ground_clearance_m <= 2.0:
            bad.append(f"ground_clearance_m must be in [0, 2], got {self.ground_clearance_m}")
        if not 2 <= self.min_points <= 100_000:
            bad.append(f"min_points must be in [2, 100000], got {self.min_points}")
        if not max(2, self.min_points) <= self.max_fit_points <= 100_000:
            bad.append(f"max_fit_points must be in [min_points = {self.min_points}, 100000], got {self.max_fit_points}")
        if not 0.05 <= self.search_deg <= 90:
            bad.append(f"search_deg must be in [0.05, 90], got {self.search_deg}")
        if not 0.05 <= self.step_deg <= self.search_deg:  # the floor bounds the angles searched (memory, time)
            bad.append(f"step_deg must be in [0.05, search_deg = {self.search_deg}], got {self.step_deg}")
        if not 1e-4 <= self.closeness_floor_m <= 1.0:
            bad.append(f"closeness_floor_m must be in [0.0001, 1], got {self.closeness_floor_m}")
        if not 0 <= self.percentile < 50:
            bad.append(f"percentile must be in [0, 50), got {self.percentile}")
        if not (math.isfinite(self.margin_m) and 0 <= self.surface_offset_m <= self.margin_m):
            bad.append(f"surface_offset_m must be in [0, margin_m = {self.margin_m}], got {self.surface_offset_m}")
        if not 0.01 <= self.min_extent_fraction <= 1:
            bad.append(f"min_extent_fraction must be in [0.01, 1], got {self.min_extent_fraction}")
        if bad:
            raise ConfigError("; ".join(bad))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | bool | None, where: str = "box_refinement") -> "BoxRefinement":
        """From a params/config mapping (unknown keys are an error); ``True``/``False`` switch the defaults on/off."""
        if values is None:
            return cls()
        if isinstance(values, bool):
            return cls(enabled=values)
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where} must be a mapping or true/false, got {values!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            try:
                if f.name == "classes":
                    kw[f.name] = (v,) if isinstance(v, str) else tuple(str(c) for c in v)
                elif f.name in ("enabled", "shift_to_points", "near_faces"):
                    if not isinstance(v, bool):
                        raise TypeError
                    kw[f.name] = v
                elif f.name in ("min_points", "max_fit_points"):
                    if isinstance(v, bool) or float(v) != int(v):
                        raise TypeError
                    kw[f.name] = int(v)
                else:
                    if isinstance(v, bool):
                        raise TypeError
                    kw[f.name] = float(v)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"{where}.{f.name}: bad value {v!r}") from None
        try:
            return cls(**kw)
        except ConfigError as exc:  # the range checks, named by where the values came from
            raise ConfigError(f"{where}: {exc}") from None


def parse_setting(text: str) -> Any:
    """A command line's refinement setting: ``on`` (True), ``off`` (False) or a JSON object of
    :class:`BoxRefinement` keys, checked; a ValueError says which of the three was expected."""
    if text in ("on", "off"):
        return text == "on"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"expected on, off or a JSON object of box_refinement keys, got {text!r} ({exc})") from None
    BoxRefinement.from_mapping(value, "box refinement")
    return value


def _to_box(q: NDArray[np.float64], yaw: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """BEV offsets ``q`` ``(N, >=2)`` into a box frame turned by ``yaw``: (along the heading, across)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return c * q[:, 0] + s * q[:, 1], -s * q[:, 0] + c * q[:, 1]


def _to_base(local: NDArray[np.float64], yaw: float) -> NDArray[np.float64]:
    """A move (along, across) in a box frame turned by ``yaw`` back into the base frame."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([c * local[0] - s * local[1], s * local[0] + c * local[1]])


def fit_heading(xy: NDArray[np.floating], prior_yaw: float, search_deg: float = 30.0, step_deg: float = 1.0,
                closeness_floor_m: float = 0.01) -> float:
    """The rectangle heading within ``search_deg`` of ``prior_yaw`` that maximises the closeness criterion
    (module docstring) of the BEV points ``xy`` ``(N, 2)``; ties go to the angle nearest the prior."""
    n_half = int(math.floor(search_deg / step_deg + 1e-9))
    offsets = np.deg2rad(step_deg) * np.arange(-n_half, n_half + 1)
    # nearest the prior first, so argmax (first maximum) prefers it on ties
    offsets = offsets[np.argsort(np.abs(offsets), kind="stable")]
    th = prior_yaw + offsets
    p = np.asarray(xy, np.float64)
    p = p - p.mean(0)  # projections of centred points: no cancellation far from the origin
    c, s = np.cos(th), np.sin(th)
    a = p @ np.stack([c, s])  # [N, T] along the heading
    b = p @ np.stack([-s, c])  # [N, T] across
    da = np.minimum(a.max(0) - a, a - a.min(0))
    db = np.minimum(b.max(0) - b, b - b.min(0))
    score = (1.0 / np.maximum(np.minimum(da, db), closeness_floor_m)).sum(0)
    return float(th[int(np.argmax(score))])


def _candidate_points(pts: NDArray[np.floating], boxes: list[tuple[NDArray[np.float64], float]],
                      z_band: tuple[float, float] = (-math.inf, math.inf), cell: float = 2.0) -> list[NDArray[np.int64]]:
    """Indices of the points ``pts`` ``(N, >=3)`` in each box's axis-aligned BEV bounding square (centre,
    half-extent) and within ``z_band`` (every box's usable heights: the road under the cars, most of a square's
    points, goes here): the points in the boxes' union are binned once on a ``cell`` grid, so each box reads a few
    bins. Non-finite points are never inside."""
    lo = np.min([c[:2] - r for c, r in boxes], axis=0)
    hi = np.max([c[:2] + r for c, r in boxes], axis=0)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    sub = np.flatnonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z > z_band[0]) & (z <= z_band[1]))
    xy = pts[:, :2]
    if not len(sub):
        return [sub for _ in boxes]
    nx, ny = (np.floor((hi - lo) / cell).astype(np.int64) + 1)
    ij = np.minimum(np.floor((xy[sub].astype(np.float64) - lo) / cell).astype(np.int64), [nx - 1, ny - 1])
    key = ij[:, 0] * ny + ij[:, 1]
    if nx * ny < np.iinfo(np.uint16).max:  # a stable sort of 16-bit keys is a radix sort: a few times faster, same order
        key = key.astype(np.uint16)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    out = []
    for c, r in boxes:
        i0, j0 = np.floor((c[:2] - r - lo) / cell).astype(np.int64).clip(0, [nx - 1, ny - 1])
        i1, j1 = np.floor((c[:2] + r - lo) / cell).astype(np.int64).clip(0, [nx - 1, ny - 1])
        parts = []
        for i in range(i0, i1 + 1):  # one contiguous key run per grid column
            a, b = np.searchsorted(sorted_key, [i * ny + j0, i * ny + j1 + 1])
            if b > a:
                parts.append(order[a:b])
        out.append(sub[np.concatenate(parts)] if parts else np.zeros(0, np.int64))
    return out


def _near_faces(q: NDArray[np.float64], yaw: float, half: NDArray[np.float64], sensor: NDArray[np.float64],
                params: BoxRefinement) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """Step 4 of the module docstring for one box: ``q`` its points relative to its centre, ``half`` its half
    length and width, ``sensor`` the sensor's BEV position relative to its centre. Returns the centre move
    (base frame) and the new half extents, or ``None`` (too few points)."""
    u, v = _to_box(q, yaw)
    m = params.margin_m
    sel = (np.abs(u) <= half[0] + m) & (np.abs(v) <= half[1] + m)
    if sel.sum() < params.min_points:
        return None
    seen = [float(t[0]) for t in _to_box(sensor[None, :], yaw)]  # the sensor in the box frame
    local, new_half = np.zeros(2), half.copy()
    frac = params.min_extent_fraction
    spans = np.percentile(np.stack((u[sel], v[sel])), [params.percentile, 100.0 - params.percentile], axis=1).T
    for k, ((lo, hi), hk, sk) in enumerate(zip(spans, half, seen)):
        if abs(sk) > hk:  # the face towards the sensor is seen: onto the points, the far face kept
            far = -hk if sk > 0 else hk
            near = hi + params.surface_offset_m if sk > 0 else lo - params.surface_offset_m
            if (near - far) * math.copysign(1.0, sk) < frac * hk:
                continue
            local[k], new_half[k] = 0.5 * (near + far), 0.5 * abs(near - far)
        elif hi - lo >= frac * 2.0 * hk:  # seen across: centred on the points' span
            local[k] = 0.5 * (hi + lo)
    return _to_base(local, yaw), new_half


def refine_detections(det: Detections, points: NDArray[np.floating], params: BoxRefinement = BoxRefinement(),
                      sensor_xy: tuple[float, float] | NDArray[np.floating] = (0.0, 0.0)) -> tuple[Detections, int]:
    """``det`` with the boxes of ``params.classes`` refined on ``points`` (``(N, >=3)``, the frame of the
    boxes: the scan the network saw; another shape leaves the boxes as decoded; ``sensor_xy`` the LiDAR's position
    in that frame, which tells the faces it sees); returns the new detections and how many boxes were fitted
    (boxes of a refined class with at least ``min_points`` points, whether or not the fit moved them). Non-finite points are ignored;
    centre, length, width and heading may change, nothing else (score, height, covariance)."""
    if not params.enabled or len(det) == 0:
        return det, 0
    wanted = [i for i, name in enumerate(det.class_names) if name in params.classes]
    finite = np.isfinite(det.center).all(1) & np.isfinite(det.size).all(1) & np.isfinite(det.yaw)
    idx = np.flatnonzero(np.isin(det.label, wanted) & finite)  # a broken box must not disable the others
    pts = np.asarray(points)
    if not len(idx) or pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] < 3:
        return det, 0
    m = params.margin_m
    centre = det.center.astype(np.float64)
    size = det.size.astype(np.float64)
    # the square also reaches the points of a box shifted by up to 2 margins (step 4 reads all points beyond that)
    boxes = [(centre[i], 0.5 * math.hypot(size[i, 0], size[i, 1]) + 3.0 * m) for i in idx]
    # the heights any box reads (its floor + clearance .. its top), widened by a millimetre: float32 points
    z_band = (float(np.min(centre[idx, 2] - size[idx, 2] / 2.0)) + params.ground_clearance_m - 1e-3,
              float(np.max(centre[idx, 2] + size[idx, 2] / 2.0)) + 1e-3)
    candidates = _candidate_points(pts, boxes, z_band)
    new_centre, new_yaw, new_size = det.center.copy(), det.yaw.copy(), det.size.copy()
    sensor = np.asarray(sensor_xy, np.float64).reshape(-1)[:2]  # (x, y) or a full position
    refined = 0
    for i, cand in zip(idx, candidates, strict=True):
        if len(cand) < params.min_points:
            continue
        q_all = np.asarray(pts[cand, :3], np.float64) - centre[i]
        q_all = q_all[np.isfinite(q_all).all(1)]
        yaw0 = float(det.yaw[i])
        u, v = _to_box(q_all, yaw0)
        l, w, h = size[i] / 2.0
        keep = (np.abs(u) <= l + m) & (np.abs(v) <= w + m) & (q_all[:, 2] <= h)
        keep &= q_all[:, 2] > -h + params.ground_clearance_m
        q = q_all[keep]
        if len(q) < params.min_points:
            continue
        stride = -(-len(q) // params.max_fit_points)  # ceil: at most max_fit_points points in the fit
        yaw = fit_heading(q[::stride, :2], yaw0, params.search_deg, params.step_deg, params.closeness_floor_m)
        shift = np.zeros(2)
        if params.shift_to_points:
            local = np.zeros(2)
            spans = np.percentile(np.stack(_to_box(q, yaw)), [params.percentile, 100.0 - params.percentile], axis=1).T
            for k, ((lo, hi), half) in enumerate(zip(spans, (l, w))):
                if hi - lo > 2.0 * half:
                    local[k] = 0.5 * (hi + lo)
                elif hi > half:
                    local[k] = hi - half
                elif lo < -half:
                    local[k] = lo + half
            shift = _to_base(local, yaw)
        new_yaw[i] = math.atan2(math.sin(yaw), math.cos(yaw))
        new_centre[i, :2] = centre[i, :2] + shift
        refined += 1
        if params.near_faces:  # on the box as refined so far (float32, as published)
            c2 = new_centre[i].astype(np.float64)
            yaw2 = float(new_yaw[i])
            if math.hypot(*(c2[:2] - centre[i, :2])) > 2.0 * m:  # moved beyond the prefilter's reach: all points
                cand = np.flatnonzero(np.hypot(pts[:, 0] - c2[0], pts[:, 1] - c2[1])
                                      <= 0.5 * math.hypot(size[i, 0], size[i, 1]) + m)
                q2 = np.asarray(pts[cand, :3], np.float64) - c2
                q2 = q2[np.isfinite(q2).all(1)]
            else:  # the same points, relative to the moved centre
                q2 = q_all - (c2 - centre[i])
            q2 = q2[(q2[:, 2] <= h) & (q2[:, 2] > -h + params.ground_clearance_m)]
            moved = _near_faces(q2, yaw2, np.array([l, w]), sensor - c2[:2], params)
            if moved is not None:
                new_centre[i, :2] = c2[:2] + moved[0]
                new_size[i, :2] = 2.0 * moved[1]
    if not refined:
        return det, 0
    return replace(det, center=new_centre.astype(np.float32), yaw=new_yaw.astype(np.float32),
                   size=new_size.astype(np.float32)), refined
