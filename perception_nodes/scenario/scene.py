"""A small procedural driving scene: a straight two-lane street with parked cars, traffic, people, poles
and buildings, all as oriented boxes in the ``map`` (world) frame.

Frames (REP 103/105):

* ``map``: world frame. The road runs along +x, its centre line is ``y = 0``; the base ground is the
  plane ``z = grade * x`` (flat by default). Between the curbs (``|y| <= road_half_width``) is the
  road; outside them the sidewalk is ``curb_height`` higher and runs on indefinitely.
* ``base_link``: the ego vehicle, origin on the road surface below the LiDAR, x forward, y left, z up.
  It is kept gravity-aligned (no pitch/roll, even on a graded road), so a pose is (x, y, z, yaw) and
  a :class:`~perception_nodes.boxes.Box3D` stays a yaw-only box in it.
* ``lidar``: base_link translated by (0, 0, 1.73) with parallel axes (KITTI's Velodyne mounting);
  see :mod:`perception_nodes.scenario.lidar`.

Everything is a pure function of ``(seed, t)``: no state, no downloads, no randomness after
:func:`default_scene` returns.
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
class Ground:
    """The drivable surface: a (gently graded) plane with raised sidewalks beyond the curbs."""

    #: Distance from the centre line to each curb (two 3.5 m lanes plus a 2.5 m parking strip each side).
    road_half_width: float = 6.0
    #: Height of the sidewalk above the road; 0 means no curbs (one plane everywhere).
    curb_height: float = 0.15
    #: dz/dx of the base plane along the road (0 = flat).
    grade: float = 0.0
    lane_width: float = 3.5
    #: Width of the painted lines (dashed centre line, solid lines at +-lane_width).
    marking_width: float = 0.15
    dash_length: float = 3.0
    dash_period: float = 9.0

    def road_height_at(self, x: float | np.ndarray) -> float | np.ndarray:
        """Height of the road (base plane) at world x."""
        return self.grade * x

    def height_at(self, x, y):
        """Height of the ground surface (road or sidewalk top) at world (x, y); vectorised."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        h = self.grade * x + np.where(np.abs(y) > self.road_half_width, self.curb_height, 0.0)
        return h if h.ndim else float(h)


@dataclass(frozen=True)
class Actor:
    """One scene object: an oriented box standing on the ground, optionally moving at constant velocity.

    ``xy`` is the BEV centre at ``move_interval[0]``; the actor moves with ``velocity`` (m/s, world
    frame) during ``move_interval`` and stands still before and after it. Its box rests on the highest
    ground under its footprint, so it never sinks into a curb.
    """

    actor_id: int
    label: str
    xy: tuple[float, float]
    size: tuple[float, float, float]  # length, width, height
    yaw: float
    velocity: tuple[float, float] = (0.0, 0.0)
    move_interval: tuple[float, float] = (0.0, math.inf)
    reflectivity: float = 0.4

    @property
    def dynamic(self) -> bool:
        return self.velocity != (0.0, 0.0)

    def xy_at(self, t: float) -> tuple[float, float]:
        t0, t1 = self.move_interval
        tau = min(max(t, t0), t1) - t0
        return (self.xy[0] + self.velocity[0] * tau, self.xy[1] + self.velocity[1] * tau)

    def velocity_at(self, t: float) -> tuple[float, float]:
        t0, t1 = self.move_interval
        return self.velocity if t0 <= t < t1 else (0.0, 0.0)

    def box_at(self, t: float, ground: Ground) -> Box3D:
        x, y = self.xy_at(t)
        footprint = _corners_xy(x, y, self.size[0], self.size[1], self.yaw)
        z0 = float(np.max(ground.height_at(np.append(footprint[:, 0], x), np.append(footprint[:, 1], y))))
        vx, vy = self.velocity_at(t)
        return Box3D(
            label=self.label,
            center=(float(x), float(y), z0 + self.size[2] / 2.0),
            size=tuple(float(s) for s in self.size),
            yaw=wrap_angle(self.yaw),
            extras={
                "actor_id": self.actor_id,
                "dynamic": self.dynamic,
                "velocity": (float(vx), float(vy), 0.0),
                "reflectivity": self.reflectivity,
            },
        )


@dataclass(frozen=True)
class EgoTrajectory:
    """The ego drives straight at constant speed (base_link pose)."""

    x0: float = 5.0
    y0: float = -1.75  # centre of the right-hand lane
    yaw: float = 0.0
    speed: float = 6.0
    #: Footprint of the ego car (length, width, height), centred on base_link in BEV.
    size: tuple[float, float, float] = (4.5, 1.8, 1.5)

    def pose(self, t: float) -> tuple[float, float, float]:
        d = self.speed * t
        return (self.x0 + d * math.cos(self.yaw), self.y0 + d * math.sin(self.yaw), self.yaw)


@dataclass(frozen=True)
class Scene:
    actors: tuple[Actor, ...]
    ground: Ground = field(default_factory=Ground)
    ego: EgoTrajectory = field(default_factory=EgoTrajectory)
    seed: int = 0
    #: Suggested length of a recording (s); the scene is valid for any t, but the ego leaves the
    #: populated stretch (x in [-10, 130]) after about 18 s.
    duration: float = 15.0

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
    return (x, y, float(ground.road_height_at(x)), yaw)


def actors_at(scene: Scene, t: float, labels: Iterable[str] | None = None) -> list[Box3D]:
    """World-frame boxes of the scene's actors at time t (all of them, or those with ``labels``).

    Each box's ``extras`` carry ``actor_id``, ``dynamic``, ``velocity`` (vx, vy, vz in map, m/s)
    and ``reflectivity``.
    """
    keep = None if labels is None else set(labels)
    return [a.box_at(t, scene.ground) for a in scene.actors if keep is None or a.label in keep]


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
