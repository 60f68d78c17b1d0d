"""Procedural driving scenes: a road (straight or curved), parked cars, traffic, people, poles, walls and
buildings, all as oriented boxes in the ``map`` (world) frame, and the ego's trajectory.

Frames (REP 103/105):

* ``map``: world frame. The road follows a centre line: by default the line ``y = 0`` along +x, or a
  :class:`RoadPath` (straights and circular arcs) for curved roads, with road coordinates ``s`` (arc
  length) and ``lateral`` (+ left). The base ground is the plane ``z = grade * x`` (flat by default).
  Between the curbs (``|lateral| <= road_half_width``) is the road; outside them the sidewalk (or a
  grass verge) is ``curb_height`` higher and runs on indefinitely.
* ``base_link``: the ego vehicle, origin on the road surface below the LiDAR, x forward, y left, z up.
  It is kept gravity-aligned (no pitch/roll, even on a graded road), so a pose is (x, y, z, yaw) and
  a :class:`~perception_nodes.boxes.Box3D` stays a yaw-only box in it.
* ``lidar``: base_link translated by (0, 0, 1.73) with parallel axes (KITTI's Velodyne mounting);
  see :mod:`perception_nodes.scenario.lidar`.

Everything is a pure function of ``(seed, t)``: no state, no downloads, no randomness after a scene
builder (:func:`default_scene`, :data:`perception_nodes.scenario.SCENARIOS`) returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from perception_nodes.boxes import Box3D

CAR = "Car"
PEDESTRIAN = "Pedestrian"
CYCLIST = "Cyclist"
POLE = "Pole"
WALL = "Wall"
BUILDING = "Building"

#: Labels a detector is scored on (KITTI's classes); the rest are static clutter.
OBJECT_LABELS: tuple[str, ...] = (CAR, PEDESTRIAN, CYCLIST)
STATIC_LABELS: tuple[str, ...] = (POLE, WALL, BUILDING)
ALL_LABELS: tuple[str, ...] = OBJECT_LABELS + STATIC_LABELS

#: Default diffuse reflectivity (0..1) per label, used by the LiDAR intensity model.
REFLECTIVITY: dict[str, float] = {
    CAR: 0.35,
    PEDESTRIAN: 0.22,
    CYCLIST: 0.28,
    POLE: 0.55,
    WALL: 0.40,
    BUILDING: 0.45,
}


def wrap_angle(a: float) -> float:
    """``a`` wrapped into [-pi, pi)."""
    return (a + math.pi) % (2.0 * math.pi) - math.pi


@dataclass(frozen=True)
class RoadPath:
    """A road centre line in the ``map`` plane: a start pose, then segments of constant curvature.

    ``segments`` are ``(length_m, curvature_1_per_m)`` pairs (curvature > 0 turns left, 0 is straight),
    so the line is a chain of straights and circular arcs, continuous in position and heading (the
    curvature steps at the joints, as on roads built without transition curves). The line extends
    straight beyond both ends, so every arc length ``s`` (also negative, or past the end) has a pose.
    Arc length 0 is the start pose.
    """

    segments: tuple[tuple[float, float], ...] = ()
    x0: float = 0.0
    y0: float = 0.0
    heading0: float = 0.0

    def __post_init__(self) -> None:
        segs = tuple((float(length), float(k)) for length, k in self.segments)
        for length, k in segs:
            if not length > 0.0 or not math.isfinite(length):
                raise ValueError(f"segment lengths must be positive and finite, got {length}")
            if abs(k) * length >= 2.0 * math.pi - 1e-9:
                raise ValueError("an arc segment must turn less than a full circle")
        object.__setattr__(self, "segments", segs)
        starts, poses = [0.0], [(float(self.x0), float(self.y0), float(self.heading0))]
        for length, k in segs:
            x, y, h = poses[-1]
            poses.append(_advance(x, y, h, k, length))
            starts.append(starts[-1] + length)
        object.__setattr__(self, "_starts", np.asarray(starts))
        object.__setattr__(self, "_poses", tuple(poses))

    @property
    def length(self) -> float:
        """Arc length of the segments (the line continues straight past it)."""
        return float(self._starts[-1])

    def _pieces(self):
        """(start x, y, heading, s at start, length (inf for the extensions), curvature) of each piece."""
        x0, y0, h0 = self._poses[0]
        xe, ye, he = self._poses[-1]
        out = [(x0, y0, h0 + math.pi, 0.0, math.inf, 0.0)]  # backwards extension, s = -u
        for (length, k), (x, y, h), s0 in zip(self.segments, self._poses, self._starts):
            out.append((x, y, h, float(s0), length, k))
        out.append((xe, ye, he, self.length, math.inf, 0.0))
        return out

    def pose(self, s):
        """(x, y, heading) at arc length ``s`` (scalar or array)."""
        s_arr = np.asarray(s, dtype=np.float64)
        idx = np.clip(np.searchsorted(self._starts, s_arr, side="right") - 1, 0, len(self.segments))
        px = np.array([p[0] for p in self._poses])
        py = np.array([p[1] for p in self._poses])
        ph = np.array([p[2] for p in self._poses])
        ks = np.array([k for _, k in self.segments] + [0.0])
        # before the start: straight back from the start pose
        idx = np.where(s_arr < 0.0, 0, idx)
        k = np.where(s_arr < 0.0, 0.0, ks[idx])
        u = s_arr - self._starts[idx]
        x, y, h = _advance_arrays(px[idx], py[idx], ph[idx], k, u)
        if s_arr.ndim == 0:
            return float(x), float(y), float(wrap_angle(float(h)))
        return x, y, (h + math.pi) % (2.0 * math.pi) - math.pi

    def curvature(self, s):
        """Curvature (1/m, + = left) at arc length ``s`` (scalar or array); 0 on the extensions."""
        s_arr = np.asarray(s, dtype=np.float64)
        ks = np.array([0.0] + [k for _, k in self.segments] + [0.0])
        idx = np.searchsorted(self._starts, s_arr, side="right")  # 0: before start, n+1: past end
        idx = np.where(s_arr >= self.length, len(self.segments) + 1, idx)
        out = ks[idx]
        return float(out) if out.ndim == 0 else out

    def offset(self, d: float) -> "RoadPath":
        """The parallel line ``d`` metres to the left (negative: right), e.g. a lane centre.

        Arc lengths are those of the new line (an arc of radius R becomes one of radius R - d).
        """
        x0, y0, h0 = self._poses[0]
        segs = []
        for length, k in self.segments:
            f = 1.0 - k * d
            if f <= 0.0:
                raise ValueError(f"offset {d} m reaches past the centre of an arc of radius {1.0 / k:.1f} m")
            segs.append((length * f, k / f))
        return RoadPath(tuple(segs), x0 - d * math.sin(h0), y0 + d * math.cos(h0), h0)

    def project(self, x, y):
        """Road coordinates of map points: ``(s, lateral, heading)`` arrays.

        ``s`` is the arc length of the nearest point of the line, ``lateral`` the signed distance to it
        (+ left of the driving direction) and ``heading`` the line's heading there.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        best = np.full(x.shape, np.inf)
        s_out = np.zeros(x.shape)
        lat_out = np.zeros(x.shape)
        h_out = np.zeros(x.shape)
        for i, (xs, ys, hs, s0, length, k) in enumerate(self._pieces()):
            if k == 0.0:
                c, sn = math.cos(hs), math.sin(hs)
                ex, ey = x - xs, y - ys
                u = ex * c + ey * sn
                v = ey * c - ex * sn
                uc = np.clip(u, 0.0, length)
                dist = np.hypot(u - uc, v)
                if i == 0:  # the backwards extension runs against the driving direction
                    s_c, lat_c, h_c = s0 - uc, -v, hs - math.pi
                else:
                    s_c, lat_c, h_c = s0 + uc, v, hs
            else:
                r = 1.0 / k
                cx, cy = xs - r * math.sin(hs), ys + r * math.cos(hs)
                rx, ry = x - cx, y - cy
                rr = np.hypot(rx, ry)
                a0 = math.atan2(ys - cy, xs - cx)
                phi = (np.arctan2(ry, rx) - a0 + math.pi) % (2.0 * math.pi) - math.pi
                u = phi * abs(r) * (1.0 if k > 0 else -1.0)
                # angles past the far end wrap around to negative: keep the arc's own range
                u = np.where(u < -0.5 * (2.0 * math.pi * abs(r) - length), u + 2.0 * math.pi * abs(r), u)
                uc = np.clip(u, 0.0, length)
                inside = u == uc
                lat_c = r - math.copysign(1.0, k) * rr
                xe, ye, _ = _advance(xs, ys, hs, k, length)
                d_end = np.where(u > length, np.hypot(x - xe, y - ye), np.hypot(x - xs, y - ys))
                dist = np.where(inside, np.abs(lat_c), d_end)
                s_c, h_c = s0 + uc, hs + k * uc
            closer = dist < best
            best = np.where(closer, dist, best)
            s_out = np.where(closer, s_c, s_out)
            lat_out = np.where(closer, lat_c, lat_out)
            h_out = np.where(closer, h_c, h_out)
        return s_out, lat_out, h_out


def _advance(x: float, y: float, h: float, k: float, u: float) -> tuple[float, float, float]:
    """Pose after driving ``u`` metres at curvature ``k`` from (x, y, h)."""
    if k == 0.0:
        return x + u * math.cos(h), y + u * math.sin(h), h
    h1 = h + k * u
    return x + (math.sin(h1) - math.sin(h)) / k, y - (math.cos(h1) - math.cos(h)) / k, h1


def _advance_arrays(x, y, h, k, u):
    straight = np.abs(k) < 1e-15
    k_safe = np.where(straight, 1.0, k)
    h1 = h + k * u
    xa = x + (np.sin(h1) - np.sin(h)) / k_safe
    ya = y - (np.cos(h1) - np.cos(h)) / k_safe
    return np.where(straight, x + u * np.cos(h), xa), np.where(straight, y + u * np.sin(h), ya), h1


#: Cell size (m) and margin around the path (m) of the road-coordinate raster of a curved ground.
ROAD_RASTER_CELL = 1.0
ROAD_RASTER_MARGIN = 160.0


def _road_raster(ground):
    """(x0, y0, nx, ny, s, lat, heading) raster of ``ground.path.project`` (cached on the ground)."""
    cached = ground.__dict__.get("_raster")
    if cached is not None:
        return cached
    path = ground.path
    ss = np.linspace(-ROAD_RASTER_MARGIN, path.length + ROAD_RASTER_MARGIN, 400)
    px, py, _ = path.pose(ss)
    c = ROAD_RASTER_CELL
    x0 = math.floor((px.min() - ROAD_RASTER_MARGIN) / c) * c
    y0 = math.floor((py.min() - ROAD_RASTER_MARGIN) / c) * c
    nx = int(math.ceil((px.max() + ROAD_RASTER_MARGIN - x0) / c)) + 1
    ny = int(math.ceil((py.max() + ROAD_RASTER_MARGIN - y0) / c)) + 1
    gx, gy = np.meshgrid(x0 + c * np.arange(nx), y0 + c * np.arange(ny))
    s_, lat, head = path.project(gx, gy)
    cached = (x0, y0, nx, ny, s_, lat, head)
    object.__setattr__(ground, "_raster", cached)
    return cached


def _lookup_road_coords(ground, x, y):
    x0, y0, nx, ny, s_f, lat_f, h_f = _road_raster(ground)
    x, y = np.broadcast_arrays(x, y)
    fx = (x - x0) / ROAD_RASTER_CELL
    fy = (y - y0) / ROAD_RASTER_CELL
    inside = (fx >= 0) & (fy >= 0) & (fx < nx - 1) & (fy < ny - 1)
    ix = np.clip(fx.astype(np.int64), 0, nx - 2)
    iy = np.clip(fy.astype(np.int64), 0, ny - 2)
    wx = np.clip(fx - ix, 0.0, 1.0)
    wy = np.clip(fy - iy, 0.0, 1.0)
    flat = iy * nx + ix
    out = []
    for f in (s_f.reshape(-1), lat_f.reshape(-1), h_f.reshape(-1)):
        a, b = f[flat], f[flat + 1]
        cc, d = f[flat + nx], f[flat + nx + 1]
        top = a + wx * (b - a)
        out.append(top + wy * (cc + wx * (d - cc) - top))
    if not inside.all():
        s_e, lat_e, h_e = ground.path.project(x[~inside], y[~inside])
        for arr, exact in zip(out, (s_e, lat_e, h_e)):
            arr[~inside] = exact
    return tuple(out)


#: Painted lines of the default street: dashed centre line, solid lines between lanes and parking.
def _default_lines(lane_width: float) -> tuple[tuple[float, bool], ...]:
    return ((0.0, True), (lane_width, False), (-lane_width, False))


@dataclass(frozen=True)
class Ground:
    """The drivable surface: a (gently graded) plane with raised sidewalks (or a verge) beyond the curbs.

    The road follows ``path`` (a :class:`RoadPath` centre line; ``None`` is the straight line ``y = 0``
    along +x, where the road coordinates are simply ``s = x``, ``lateral = y``). Points with
    ``|lateral| <= road_half_width`` are road; beyond that is the sidewalk, ``curb_height`` higher
    (``verge="grass"``: a grass verge instead, for rural roads and highways).
    """

    #: Distance from the centre line to each curb (two 3.5 m lanes plus a 2.5 m parking strip each side).
    road_half_width: float = 6.0
    #: Height of the sidewalk above the road; 0 means no curbs (one plane everywhere).
    curb_height: float = 0.15
    #: dz/dx of the base plane along map x (0 = flat).
    grade: float = 0.0
    lane_width: float = 3.5
    #: Width of the painted lines.
    marking_width: float = 0.15
    dash_length: float = 3.0
    dash_period: float = 9.0
    #: Centre line of the road; None: straight along +x through the origin.
    path: RoadPath | None = None
    #: Painted lines as (lateral offset, dashed); None: dashed centre line, solid lines at +-lane_width.
    lines: tuple[tuple[float, bool], ...] | None = None
    #: What lies beyond the road edges: "sidewalk" (concrete) or "grass".
    verge: str = "sidewalk"
    #: Crown and bumps added to the whole surface (a :class:`~perception_nodes.scenario.realism.GroundRelief`
    #: with ``height(x, y, lateral)``); None: planes only (the default).
    relief: object | None = None

    def __post_init__(self) -> None:
        if self.verge not in ("sidewalk", "grass"):
            raise ValueError(f"verge must be 'sidewalk' or 'grass', got {self.verge!r}")
        if self.lines is not None:
            object.__setattr__(self, "lines", tuple((float(o), bool(d)) for o, d in self.lines))

    @property
    def painted_lines(self) -> tuple[tuple[float, bool], ...]:
        return self.lines if self.lines is not None else _default_lines(self.lane_width)

    def road_coords(self, x, y):
        """``(s, lateral, heading)`` of map points (arrays) relative to the road's centre line.

        On a :class:`RoadPath` the values come from a 1 m raster of the exact projection around the
        path (built on first use, bilinear lookup; the fields are smooth, so the error is about
        ``cell**2 / (8 r)`` with r the distance to the arc's centre: 3 mm at 40 m, 1 cm at 13 m), and
        from :meth:`RoadPath.project` off the raster.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.path is None:
            return x, y, np.zeros(np.broadcast(x, y).shape)
        return _lookup_road_coords(self, x, y)

    def road_height_at(self, x: float | np.ndarray) -> float | np.ndarray:
        """Height of the road (base plane) at world x."""
        return self.grade * x

    def height_at(self, x, y):
        """Height of the ground surface (road or sidewalk top) at world (x, y); vectorised."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        lat = self.road_coords(x, y)[1]
        h = self.grade * x + np.where(np.abs(lat) > self.road_half_width, self.curb_height, 0.0)
        if self.relief is not None:
            h = h + self.relief.height(x, y, lat)
        return h if h.ndim else float(h)

    def surface_height_at(self, x: float, y: float) -> float:
        """Height of the drivable surface under (x, y): the road plane plus the relief, if any."""
        h = float(self.road_height_at(x))
        if self.relief is not None:
            lat = self.road_coords(np.array([x]), np.array([y]))[1]
            h += float(self.relief.height(np.array([x]), np.array([y]), lat)[0])
        return h


@dataclass(frozen=True)
class Actor:
    """One scene object: an oriented box standing on the ground, optionally moving.

    Straight motion: ``xy`` is the BEV centre at ``move_interval[0]``; the actor moves with
    ``velocity`` (m/s, world frame) during ``move_interval`` and stands still before and after it.

    Path motion (``path`` set, e.g. a lane centre from :meth:`RoadPath.offset`): the actor sits at arc
    length ``path_s`` at ``move_interval[0]`` and drives along the path at ``path_speed`` (m/s; negative
    drives against the path's direction, like oncoming traffic) during ``move_interval``; its heading
    is the path's (reversed when ``path_speed < 0``) plus ``yaw``. ``xy`` and ``velocity`` are then
    ignored. A parked car on a curved road is a path actor with ``path_speed = 0``.

    The box rests on the highest ground under its footprint, so it never sinks into a curb.
    """

    actor_id: int
    label: str
    xy: tuple[float, float]
    size: tuple[float, float, float]  # length, width, height
    yaw: float
    velocity: tuple[float, float] = (0.0, 0.0)
    move_interval: tuple[float, float] = (0.0, math.inf)
    reflectivity: float = 0.4
    path: RoadPath | None = None
    path_s: float = 0.0
    path_speed: float = 0.0
    #: How the LiDAR sees it: "box" (a solid box, the default), or a realism shape such as
    #: "bush:DENSITY" / "hedge:..." / "tree:..." (a scattering volume, :mod:`~perception_nodes.scenario.realism`).
    shape: str = "box"

    @property
    def dynamic(self) -> bool:
        if self.path is not None:
            return self.path_speed != 0.0
        return self.velocity != (0.0, 0.0)

    def _tau(self, t: float) -> float:
        t0, t1 = self.move_interval
        return min(max(t, t0), t1) - t0

    def pose_at(self, t: float) -> tuple[float, float, float]:
        """(x, y, yaw) of the box centre at time t."""
        if self.path is not None:
            x, y, h = self.path.pose(self.path_s + self.path_speed * self._tau(t))
            back = math.pi if self.path_speed < 0.0 else 0.0
            return x, y, wrap_angle(h + back + self.yaw)
        x, y = self.xy_at(t)
        return x, y, wrap_angle(self.yaw)

    def xy_at(self, t: float) -> tuple[float, float]:
        if self.path is not None:
            return self.pose_at(t)[:2]
        tau = self._tau(t)
        return (self.xy[0] + self.velocity[0] * tau, self.xy[1] + self.velocity[1] * tau)

    def velocity_at(self, t: float) -> tuple[float, float]:
        t0, t1 = self.move_interval
        if not t0 <= t < t1:
            return (0.0, 0.0)
        if self.path is not None:
            h = self.path.pose(self.path_s + self.path_speed * self._tau(t))[2]
            return (self.path_speed * math.cos(h), self.path_speed * math.sin(h))
        return self.velocity

    def box_at(self, t: float, ground: Ground) -> Box3D:
        return _boxes_at([self], t, ground)[0]


def _boxes_at(actors: Sequence[Actor], t: float, ground: Ground) -> list[Box3D]:
    """World boxes of ``actors`` at time t; the ground under all footprints is looked up at once."""
    if not actors:
        return []
    poses: list = [None] * len(actors)
    by_path: dict[int, list[int]] = {}
    for i, a in enumerate(actors):
        if a.path is None:
            poses[i] = a.pose_at(t)
        else:
            by_path.setdefault(id(a.path), []).append(i)
    for members in by_path.values():  # one vectorised pose lookup per path
        path = actors[members[0]].path
        ss = np.array([actors[i].path_s + actors[i].path_speed * actors[i]._tau(t) for i in members])
        xs, ys, hs = path.pose(ss)
        for i, x, y, h in zip(members, xs.tolist(), ys.tolist(), hs.tolist()):
            a = actors[i]
            poses[i] = (x, y, wrap_angle(h + (math.pi if a.path_speed < 0.0 else 0.0) + a.yaw))
    feet = np.stack([
        np.vstack([_corners_xy(x, y, a.size[0], a.size[1], yaw), [[x, y]]])
        for a, (x, y, yaw) in zip(actors, poses)
    ])  # (N, 5, 2)
    z0 = np.max(np.asarray(ground.height_at(feet[..., 0], feet[..., 1])).reshape(len(actors), 5), axis=1)
    out = []
    for a, (x, y, yaw), z in zip(actors, poses, z0):
        if a.path is None:
            vx, vy = a.velocity_at(t)
        else:
            t0, t1 = a.move_interval
            v = a.path_speed if t0 <= t < t1 else 0.0
            vx, vy = (abs(v) * math.cos(yaw - a.yaw), abs(v) * math.sin(yaw - a.yaw)) if v else (0.0, 0.0)
        out.append(Box3D(
            label=a.label,
            center=(float(x), float(y), float(z) + a.size[2] / 2.0),
            size=tuple(float(s) for s in a.size),
            yaw=yaw,
            extras={
                "actor_id": a.actor_id,
                "dynamic": a.dynamic,
                "velocity": (float(vx), float(vy), 0.0),
                "reflectivity": a.reflectivity,
                **({"shape": a.shape} if a.shape != "box" else {}),
            },
        ))
    return out


@dataclass(frozen=True)
class EgoTrajectory:
    """The ego's base_link pose over time, at constant speed.

    Without ``path`` the ego drives straight from (x0, y0) along ``yaw``. With ``path`` (a lane centre)
    it follows the path from arc length ``s0``; x0, y0 and yaw are then ignored, and the path's
    curvature at the ego is the control target (:meth:`curvature`).
    """

    x0: float = 5.0
    y0: float = -1.75  # centre of the right-hand lane
    yaw: float = 0.0
    speed: float = 6.0
    #: Footprint of the ego car (length, width, height), centred on base_link in BEV.
    size: tuple[float, float, float] = (4.5, 1.8, 1.5)
    path: RoadPath | None = None
    s0: float = 0.0

    def s_at(self, t: float) -> float:
        """Arc length along ``path`` (or distance driven, without one) at time t."""
        return self.s0 + self.speed * t

    def pose(self, t: float) -> tuple[float, float, float]:
        if self.path is not None:
            return self.path.pose(self.s_at(t))
        d = self.speed * t
        return (self.x0 + d * math.cos(self.yaw), self.y0 + d * math.sin(self.yaw), self.yaw)

    def curvature(self, t: float, lookahead_m: float = 0.0) -> float:
        """Curvature (1/m, + = left) of the driven path ``lookahead_m`` metres ahead of the ego at time t."""
        if self.path is None:
            return 0.0
        return float(self.path.curvature(self.s_at(t) + lookahead_m))


@dataclass(frozen=True)
class Scene:
    actors: tuple[Actor, ...]
    ground: Ground = field(default_factory=Ground)
    ego: EgoTrajectory = field(default_factory=EgoTrajectory)
    seed: int = 0
    #: Suggested length of a recording (s); the scene is valid for any t, but the ego leaves the
    #: populated stretch (x in [-10, 130]) after about 18 s.
    duration: float = 15.0
    #: Name of the scenario that built the scene (see :data:`perception_nodes.scenario.SCENARIOS`).
    name: str = "urban_street"

    @property
    def static_actors(self) -> tuple[Actor, ...]:
        return tuple(a for a in self.actors if not a.dynamic)

    @property
    def dynamic_actors(self) -> tuple[Actor, ...]:
        return tuple(a for a in self.actors if a.dynamic)

    def actor(self, actor_id: int) -> Actor:
        for a in self.actors:
            if a.actor_id == actor_id:
                return a
        raise KeyError(actor_id)


def _corners_xy(x: float, y: float, length: float, width: float, yaw: float) -> np.ndarray:
    l, w = length / 2.0, width / 2.0
    local = np.array([[l, w], [-l, w], [-l, -w], [l, -w]])
    c, s = math.cos(yaw), math.sin(yaw)
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


# --------------------------------------------------------------------------------------------------
# the default scenario

#: x range of the crosswalk kept free of parked cars and poles.
CROSSING_X = 70.0
_CROSSING_GAP = (65.5, 74.5)


def default_scene(seed: int = 0) -> Scene:
    """The project's embedded default scenario: a ~140 m stretch of a straight two-lane street.

    * road: two 3.5 m lanes plus 2.5 m parking strips, 15 cm curbs, 4.5 m sidewalks, then buildings
      (with gaps, some closed by garden walls) from ``|y| = 10.5`` m on;
    * parked cars on both sides, poles along both sidewalks;
    * a lead car in the ego lane (7 m/s), an oncoming car (-8 m/s), a cyclist at the right lane edge,
      a pedestrian crossing the road at x = 70 m (then waiting on the far sidewalk) and one walking
      along the right sidewalk;
    * the ego starts at x = 5 m in the right lane at 6 m/s.

    ``seed`` draws the static clutter (parked cars, poles, buildings: positions, sizes, paint) and
    small jitter on the traffic; the traffic plan is laid out so that no two boxes (nor the ego)
    overlap during the first ``duration`` seconds, for any seed.
    """
    rng = np.random.default_rng(seed)
    ground = Ground()
    ego = EgoTrajectory()
    hw = ground.road_half_width
    actors: list[Actor] = []

    def add(label, xy, size, yaw, velocity=(0.0, 0.0), move_interval=(0.0, math.inf), refl=None):
        actors.append(
            Actor(
                actor_id=len(actors),
                label=label,
                xy=(float(xy[0]), float(xy[1])),
                size=tuple(float(s) for s in size),
                yaw=float(wrap_angle(yaw)),
                velocity=(float(velocity[0]), float(velocity[1])),
                move_interval=(float(move_interval[0]), float(move_interval[1])),
                reflectivity=float(REFLECTIVITY[label] if refl is None else refl),
            )
        )

    # -- traffic (fixed plan, small jitter) --------------------------------------------------------
    j = lambda s: float(rng.uniform(-s, s))  # noqa: E731
    add(CAR, (35.0 + j(1.0), -1.75), (4.3, 1.8, 1.5), 0.0, velocity=(7.0 + j(0.2), 0.0), refl=0.5)
    add(CAR, (125.0 + j(1.0), 1.75), (4.6, 1.85, 1.55), math.pi, velocity=(-8.0 + j(0.2), 0.0), refl=0.3)
    add(CYCLIST, (40.0 + j(1.0), -3.25), (1.76, 0.6, 1.74), 0.0, velocity=(4.5 + j(0.2), 0.0))
    # crossing: from the left sidewalk (y = +7.5) to the right one (y = -7.5), then waits there
    walk = 1.3 + j(0.05)
    add(PEDESTRIAN, (CROSSING_X + j(0.3), 7.5), (0.8, 0.66, 1.76), -math.pi / 2,
        velocity=(0.0, -walk), move_interval=(0.0, 15.0 / walk))
    add(PEDESTRIAN, (20.0 + j(1.0), -8.0), (0.84, 0.62, 1.72), 0.0, velocity=(1.4 + j(0.1), 0.0))

    # -- parked cars -------------------------------------------------------------------------------
    for side in (-1.0, 1.0):
        x = -10.0 + float(rng.uniform(0.0, 3.0))
        while x < 128.0:
            length = float(rng.uniform(3.8, 4.8))
            width = float(rng.uniform(1.65, 1.9))
            height = float(rng.uniform(1.4, 1.7))
            skip = rng.random() < 0.3
            jitter_yaw = float(np.clip(rng.normal(0.0, 0.02), -0.05, 0.05))
            paint = float(rng.uniform(0.15, 0.7))
            gap = float(rng.uniform(1.0, 3.5))
            cx = x + length / 2.0
            in_crossing = x < _CROSSING_GAP[1] and x + length > _CROSSING_GAP[0]
            if not skip and not in_crossing:
                cy = side * (hw - 0.3 - width / 2.0)
                yaw = (0.0 if side < 0 else math.pi) + jitter_yaw  # parked in the driving direction
                add(CAR, (cx, cy), (length, width, height), yaw, refl=paint)
            x += length + gap

    # -- poles on the sidewalks --------------------------------------------------------------------
    for side in (-1.0, 1.0):
        x = -10.0 + float(rng.uniform(0.0, 8.0))
        while x < 132.0:
            height = float(rng.uniform(5.0, 8.0))
            if not (_CROSSING_GAP[0] <= x <= _CROSSING_GAP[1]):
                add(POLE, (x, side * (hw + 0.6)), (0.3, 0.3, height), 0.0)
            x += float(rng.uniform(13.0, 20.0))

    # -- buildings (and garden walls in some gaps) beyond the sidewalks ------------------------------
    front = hw + 4.5
    for side in (-1.0, 1.0):
        x = -18.0 + float(rng.uniform(0.0, 5.0))
        while x < 140.0:
            length = float(rng.uniform(10.0, 25.0))
            depth = float(rng.uniform(8.0, 14.0))
            height = float(rng.uniform(6.0, 18.0))
            setback = float(rng.uniform(0.0, 1.5))
            gap = float(rng.uniform(1.5, 7.0))
            wall = rng.random() < 0.5
            wall_h = float(rng.uniform(1.0, 2.0))
            add(BUILDING, (x + length / 2.0, side * (front + setback + depth / 2.0)),
                (length, depth, height), 0.0, refl=float(rng.uniform(0.3, 0.6)))
            if wall and gap > 3.0:
                add(WALL, (x + length + gap / 2.0, side * (front + 0.15)), (gap - 0.4, 0.3, wall_h), 0.0)
            x += length + gap

    return Scene(actors=tuple(actors), ground=ground, ego=ego, seed=seed)


# --------------------------------------------------------------------------------------------------
# poses and frames

def ego_pose(t: float, scene: Scene | None = None) -> tuple[float, float, float]:
    """base_link pose in ``map`` at time t: (x, y, yaw). Without a scene, the default trajectory."""
    ego = scene.ego if scene is not None else EgoTrajectory()
    return ego.pose(t)


def ego_pose3d(t: float, scene: Scene | None = None) -> tuple[float, float, float, float]:
    """base_link pose in ``map`` at time t: (x, y, z, yaw), z being the road height under the ego."""
    x, y, yaw = ego_pose(t, scene)
    ground = scene.ground if scene is not None else Ground()
    if ground.relief is not None:
        return (x, y, ground.surface_height_at(x, y), yaw)
    return (x, y, float(ground.road_height_at(x)), yaw)


def actors_at(scene: Scene, t: float, labels: Iterable[str] | None = None) -> list[Box3D]:
    """World-frame boxes of the scene's actors at time t (all of them, or those with ``labels``).

    Each box's ``extras`` carry ``actor_id``, ``dynamic``, ``velocity`` (vx, vy, vz in map, m/s)
    and ``reflectivity``.
    """
    keep = None if labels is None else set(labels)
    return _boxes_at([a for a in scene.actors if keep is None or a.label in keep], t, scene.ground)


def _split_pose(pose: Sequence[float]) -> tuple[float, float, float, float]:
    if len(pose) == 3:
        x, y, yaw = pose
        z = 0.0
    elif len(pose) == 4:
        x, y, z, yaw = pose
    else:
        raise ValueError(f"pose must be (x, y, yaw) or (x, y, z, yaw), got {len(pose)} values")
    return float(x), float(y), float(z), float(yaw)


def _transform_boxes(boxes: Iterable[Box3D], tx, ty, tz, yaw, rot_first: bool) -> list[Box3D]:
    c, s = math.cos(yaw), math.sin(yaw)
    out = []
    for b in boxes:
        x, y, z = b.center
        if rot_first:  # p' = R p + t
            nx, ny, nz = c * x - s * y + tx, s * x + c * y + ty, z + tz
        else:  # p' = R (p + t)
            px, py = x + tx, y + ty
            nx, ny, nz = c * px - s * py, s * px + c * py, z + tz
        extras = dict(b.extras)
        if "velocity" in extras:
            vx, vy, vz = extras["velocity"]
            extras["velocity"] = (c * vx - s * vy, s * vx + c * vy, vz)
        out.append(replace(b, center=(nx, ny, nz), yaw=wrap_angle(b.yaw + yaw), extras=extras))
    return out


def boxes_in_base_link(boxes: Iterable[Box3D], ego_pose: Sequence[float]) -> list[Box3D]:
    """Map-frame boxes expressed in base_link, given the ego pose (x, y, yaw) or (x, y, z, yaw).

    Velocities in ``extras`` are rotated into base_link axes (still relative to the ground, not to
    the ego).
    """
    x, y, z, yaw = _split_pose(ego_pose)
    return _transform_boxes(boxes, -x, -y, -z, -yaw, rot_first=False)


def boxes_in_map(boxes: Iterable[Box3D], ego_pose: Sequence[float]) -> list[Box3D]:
    """Inverse of :func:`boxes_in_base_link`."""
    x, y, z, yaw = _split_pose(ego_pose)
    return _transform_boxes(boxes, x, y, z, yaw, rot_first=True)
