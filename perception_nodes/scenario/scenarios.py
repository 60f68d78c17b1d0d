"""The named procedural scenarios of the generator: ``SCENARIOS[name](seed) -> Scene``.

* ``urban_street``: the embedded default of ``replay`` (:func:`~perception_nodes.scenario.scene.default_scene`):
  a straight two-lane street with parked cars, traffic, a cyclist, pedestrians, poles and buildings.
* ``curved_road``: an S-bend through a town: straight, a left arc (R = 50 m), a short straight, a right
  arc (R = 45 m), straight again. Two lanes with parking strips, curbs, sidewalks, buildings (with garden
  walls), poles, parked cars; a lead car, oncoming cars, a cyclist, pedestrians (one crossing between the
  bends). The ego follows the right lane centre at 9 m/s, so the control target (the lane's curvature at
  the ego) goes 0 -> 1/51.75 -> 0 -> -1/43.25 1/m within 10 s.
* ``winding_road``: ``curved_road``'s town on a road whose two bends (radius 35-400 m, left or right, 25-75
  deg each) are drawn from the seed: a new road per seed, for scoring a curvature prediction on roads it
  was not trained on.
* ``highway``: a motorway with three 3.75 m lanes per direction, a median barrier, shoulders, guard rails
  and grass verges, noise walls and lamp posts, a long left curve (R = 700 m). The ego drives in the
  middle lane at 25 m/s among traffic whose speed is set per lane (so no two cars ever meet); a car has
  broken down on the shoulder with its driver standing behind it.

Every scenario is a pure function of the seed: the layout (what stands where, sizes, paint) and small
jitter on the traffic are drawn from it, the traffic plan is fixed so that no two boxes (nor the ego)
overlap during the scene's ``duration`` for any seed (static clutter is placed with a BEV overlap check).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from perception_nodes.scenario.scene import (
    BUILDING,
    CAR,
    CYCLIST,
    PEDESTRIAN,
    POLE,
    REFLECTIVITY,
    WALL,
    Actor,
    EgoTrajectory,
    Ground,
    RoadPath,
    Scene,
    _corners_xy,
    default_scene,
    wrap_angle,
)


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex BEV quadrilaterals (4, 2)."""
    for poly in (a, b):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


class _Builder:
    """Collects actors; static ones can be placed only where they overlap nothing placed before."""

    def __init__(self, path: RoadPath) -> None:
        self.path = path
        self.actors: list[Actor] = []
        self._static: list[np.ndarray] = []
        self._lanes: dict[float, RoadPath] = {}

    def lane(self, lat: float) -> RoadPath:
        """The line ``lat`` metres left of the centre line (cached, so actors share the object)."""
        key = round(float(lat), 6)
        if key not in self._lanes:
            self._lanes[key] = self.path.offset(key) if key else self.path
        return self._lanes[key]

    def add(self, label: str, lat: float, s: float, size, *, speed: float = 0.0, yaw: float = 0.0,
            refl: float | None = None, move_interval=(0.0, math.inf), avoid: bool = False,
            margin: float = 0.0) -> bool:
        """An actor on the line at ``lat``, arc length ``s`` of that line; False if ``avoid`` refused it."""
        lane = self.lane(lat)
        size = tuple(float(v) for v in size)
        x, y, h = lane.pose(float(s))
        heading = h + (math.pi if speed < 0 else 0.0) + yaw
        if speed == 0.0:
            poly = _corners_xy(x, y, size[0] + 2 * margin, size[1] + 2 * margin, heading)
            if avoid:
                lo, hi = poly.min(axis=0), poly.max(axis=0)
                for other in self._static:
                    if np.all(other.min(axis=0) <= hi) and np.all(other.max(axis=0) >= lo) and _overlap(poly, other):
                        return False
            self._static.append(poly)
        self.actors.append(Actor(
            actor_id=len(self.actors), label=label, xy=(float(x), float(y)), size=size,
            yaw=float(wrap_angle(yaw)), move_interval=(float(move_interval[0]), float(move_interval[1])),
            reflectivity=float(REFLECTIVITY[label] if refl is None else refl),
            path=lane, path_s=float(s), path_speed=float(speed),
        ))
        return True

    def add_world(self, label: str, xy, size, yaw: float, velocity=(0.0, 0.0), move_interval=(0.0, math.inf),
                  refl: float | None = None) -> None:
        """An actor moving in a straight line in the map frame (e.g. crossing the road)."""
        self.actors.append(Actor(
            actor_id=len(self.actors), label=label, xy=(float(xy[0]), float(xy[1])),
            size=tuple(float(v) for v in size), yaw=float(wrap_angle(yaw)),
            velocity=(float(velocity[0]), float(velocity[1])),
            move_interval=(float(move_interval[0]), float(move_interval[1])),
            reflectivity=float(REFLECTIVITY[label] if refl is None else refl),
        ))


def _parked_cars(b: _Builder, rng: np.random.Generator, hw: float, s_range, keep_free=()) -> None:
    for side in (-1.0, 1.0):
        s = s_range[0] + float(rng.uniform(0.0, 3.0))
        while s < s_range[1]:
            length = float(rng.uniform(3.8, 4.8))
            width = float(rng.uniform(1.65, 1.9))
            height = float(rng.uniform(1.4, 1.7))
            skip = rng.random() < 0.3
            jitter = float(np.clip(rng.normal(0.0, 0.02), -0.05, 0.05))
            paint = float(rng.uniform(0.15, 0.7))
            gap = float(rng.uniform(1.0, 3.5))
            free = all(not (lo - 1.0 < s + length and s < hi + 1.0) for lo, hi in keep_free)
            if not skip and free:
                lat = side * (hw - 0.3 - width / 2.0)
                # parked in the driving direction of that side: against the path on the left
                b.add(CAR, lat, s + length / 2.0, (length, width, height), yaw=jitter + (math.pi if side > 0 else 0.0),
                      refl=paint, avoid=True, margin=0.05)
            s += length + gap


def _poles(b: _Builder, rng: np.random.Generator, lat: float, s_range, spacing=(13.0, 20.0), keep_free=()) -> None:
    for side in (-1.0, 1.0):
        s = s_range[0] + float(rng.uniform(0.0, 8.0))
        while s < s_range[1]:
            height = float(rng.uniform(5.0, 8.0))
            if all(not (lo <= s <= hi) for lo, hi in keep_free):
                b.add(POLE, side * lat, s, (0.3, 0.3, height), avoid=True)
            s += float(rng.uniform(*spacing))


def _buildings(b: _Builder, rng: np.random.Generator, front: float, s_range, *, length=(10.0, 25.0),
               depth=(8.0, 14.0), height=(6.0, 18.0), walls: bool = True) -> None:
    for side in (-1.0, 1.0):
        s = s_range[0] + float(rng.uniform(0.0, 5.0))
        while s < s_range[1]:
            ln = float(rng.uniform(*length))
            dp = float(rng.uniform(*depth))
            ht = float(rng.uniform(*height))
            setback = float(rng.uniform(0.0, 1.5))
            gap = float(rng.uniform(1.5, 7.0))
            wall = rng.random() < 0.5
            wall_h = float(rng.uniform(1.0, 2.0))
            paint = float(rng.uniform(0.3, 0.6))
            # a building that would overlap an earlier one (inside a bend) is made shallower, then dropped
            for d in (dp, 0.6 * dp, 0.35 * dp):
                if b.add(BUILDING, side * (front + setback + d / 2.0), s + ln / 2.0, (ln, d, ht), refl=paint,
                         avoid=True, margin=0.1):
                    break
            if walls and wall and gap > 3.0:
                b.add(WALL, side * (front + 0.15), s + ln + gap / 2.0, (gap - 0.4, 0.3, wall_h), avoid=True, margin=0.05)
            s += ln + gap


# --------------------------------------------------------------------------------------------------

def urban_street(seed: int = 0) -> Scene:
    """The embedded default scenario (see :func:`~perception_nodes.scenario.scene.default_scene`)."""
    return default_scene(seed)


#: Geometry of ``curved_road``: (length, curvature) after a 45 m straight.
CURVED_ROAD_R1 = 50.0
CURVED_ROAD_R2 = 45.0


def curved_road(seed: int = 0) -> Scene:
    """An S-bend through a town; the ego follows the right lane centre (see the module doc)."""
    a1, a2 = math.radians(50.0), math.radians(65.0)
    path = RoadPath(
        ((45.0, 0.0), (CURVED_ROAD_R1 * a1, 1.0 / CURVED_ROAD_R1), (12.0, 0.0),
         (CURVED_ROAD_R2 * a2, -1.0 / CURVED_ROAD_R2), (160.0, 0.0)),
        x0=-20.0, y0=0.0, heading0=0.0,
    )
    # the crossing: the middle of the short straight between the bends
    return _town_road(seed, path, 45.0 + CURVED_ROAD_R1 * a1 + 6.0, "curved_road")


#: ``winding_road``'s draws: bend radii (m, log-uniform), turn per bend (deg), straight between the bends (m)
WINDING_RADIUS = (35.0, 400.0)
WINDING_TURN_DEG = (25.0, 75.0)
WINDING_MID = (8.0, 40.0)


def winding_road(seed: int = 0) -> Scene:
    """``curved_road``'s town, traffic and clutter on a road whose two bends are drawn from the seed: radius
    log-uniform in :data:`WINDING_RADIUS`, turning left or right by :data:`WINDING_TURN_DEG` each, after the
    same 45 m straight and with a straight of :data:`WINDING_MID` between them. Why: every ``curved_road``
    has the same S-bend (only what stands on it changes with the seed), so a curvature prediction scored on
    new ``curved_road`` seeds is scored on the road it was trained on; here each seed is a new road. The
    geometry has its own random stream (``[seed, 1]``), the layout ``curved_road``'s (``seed``: a winding_road
    and a curved_road of the same seed share traffic jitter, parked cars, poles and buildings). No pedestrian
    crosses: ``curved_road`` times its crossing to its own bends, and on other bends the traffic would meet it."""
    geo = np.random.default_rng([seed, 1])
    segments: list[tuple[float, float]] = [(45.0, 0.0)]
    for i in range(2):
        radius = float(np.exp(geo.uniform(math.log(WINDING_RADIUS[0]), math.log(WINDING_RADIUS[1]))))
        turn = math.radians(float(geo.uniform(*WINDING_TURN_DEG)))
        side = 1.0 if geo.random() < 0.5 else -1.0
        segments.append((radius * turn, side / radius))
        segments.append((float(geo.uniform(*WINDING_MID)), 0.0) if i == 0 else (160.0, 0.0))
    path = RoadPath(tuple(segments), x0=-20.0, y0=0.0, heading0=0.0)
    return _town_road(seed, path, None, "winding_road")


def _town_road(seed: int, path: RoadPath, s_cross: float | None, name: str) -> Scene:
    """The town of ``curved_road`` along ``path``: traffic, a pedestrian crossing at arc length ``s_cross``
    (``None``: none), parked cars, poles, buildings; the ego in the right lane at 9 m/s from arc length 25 m.
    The crossing's timing is ``curved_road``'s own: the lead car and the oncoming ones pass it when the
    pedestrian is clear of their lanes on that road's bends."""
    rng = np.random.default_rng(seed)
    ground = Ground(path=path)
    hw = ground.road_half_width
    b = _Builder(path)
    speed = 9.0
    ego_lane = b.lane(-1.75)
    ego = EgoTrajectory(speed=speed, path=ego_lane, s0=25.0)
    j = lambda s: float(rng.uniform(-s, s))  # noqa: E731


    # -- traffic -----------------------------------------------------------------------------------
    b.add(CAR, -1.75, 25.0 + 22.0 + j(1.0), (4.3, 1.8, 1.5), speed=speed + 0.6 + j(0.2), refl=0.5)
    # oncoming: the first passes the crossing before the pedestrian reaches its lane, the second after
    b.add(CAR, 1.75, 115.0 + j(3.0), (4.6, 1.85, 1.55), speed=-(8.5 + j(0.3)), refl=0.3)
    b.add(CAR, 1.75, 200.0 + j(3.0), (4.4, 1.8, 1.5), speed=-(9.0 + j(0.3)), refl=0.6)
    b.add(CYCLIST, -3.25, 52.0 + j(1.0), (1.76, 0.6, 1.74), speed=4.5 + j(0.2))
    b.add(PEDESTRIAN, -8.0, 30.0 + j(1.0), (0.84, 0.62, 1.72), speed=1.4 + j(0.1))
    b.add(PEDESTRIAN, 8.2, 120.0 + j(1.0), (0.8, 0.6, 1.7), speed=-(1.2 + j(0.1)))
    # crosses from the right sidewalk to the left one, well before the ego gets there, then waits
    walk = 1.5 + j(0.05)  # drawn also without a crossing: the layout's random stream stays the same
    keep_free: tuple[tuple[float, float], ...] = ()
    if s_cross is not None:
        cx, cy, ch = path.pose(s_cross)
        nx, ny = -math.sin(ch), math.cos(ch)
        b.add_world(PEDESTRIAN, (cx - 7.5 * nx, cy - 7.5 * ny), (0.8, 0.66, 1.76), ch + math.pi / 2,
                    velocity=(walk * nx, walk * ny), move_interval=(0.0, 15.0 / walk))
        keep_free = ((s_cross - 5.0, s_cross + 5.0),)

    # -- static clutter ------------------------------------------------------------------------------
    _parked_cars(b, rng, hw, (-10.0, 240.0), keep_free=keep_free)
    _poles(b, rng, hw + 0.6, (-10.0, 245.0), keep_free=keep_free)
    _buildings(b, rng, hw + 4.5, (-25.0, 250.0), length=(8.0, 18.0))
    return Scene(actors=tuple(b.actors), ground=ground, ego=ego, seed=seed, duration=12.0, name=name)


HIGHWAY_RADIUS = 700.0
#: Lateral offsets (m, + left) of the right carriageway's lanes: right, middle, left (fast) lane.
HIGHWAY_LANES = (-10.375, -6.625, -2.875)


def highway(seed: int = 0) -> Scene:
    """A three-lane motorway with a long left curve; the ego drives in the middle lane at 25 m/s."""
    rng = np.random.default_rng(seed)
    path = RoadPath(((160.0, 0.0), (250.0, 1.0 / HIGHWAY_RADIUS), (500.0, 0.0)), x0=-100.0, y0=0.0, heading0=0.0)
    lines = ((1.0, False), (-1.0, False), (4.75, True), (-4.75, True), (8.5, True), (-8.5, True),
             (12.25, False), (-12.25, False))
    ground = Ground(road_half_width=15.0, curb_height=0.0, lane_width=3.75, marking_width=0.2,
                    dash_length=6.0, dash_period=18.0, path=path, lines=lines, verge="grass")
    b = _Builder(path)
    speed = 25.0
    s_ego = 100.0
    ego = EgoTrajectory(speed=speed, path=b.lane(HIGHWAY_LANES[1]), s0=s_ego, size=(4.6, 1.85, 1.5))
    span = (-60.0, 960.0)

    def car_size():
        return (float(rng.uniform(4.2, 4.9)), float(rng.uniform(1.75, 1.95)), float(rng.uniform(1.4, 1.7)))

    # -- traffic: one speed per lane, so cars in a lane keep their gaps ------------------------------
    lane_plan = [  # (lateral, speed, first s, gap range)
        (HIGHWAY_LANES[0], 21.0 + float(rng.uniform(-0.5, 0.5)), s_ego - 40.0, (35.0, 90.0)),
        (HIGHWAY_LANES[2], 31.0 + float(rng.uniform(-0.5, 0.5)), s_ego - 70.0, (45.0, 110.0)),
        (-HIGHWAY_LANES[2], -(32.0 + float(rng.uniform(-1.0, 1.0))), span[0] + 60.0, (40.0, 120.0)),
        (-HIGHWAY_LANES[1], -(27.0 + float(rng.uniform(-1.0, 1.0))), span[0] + 90.0, (40.0, 120.0)),
        (-HIGHWAY_LANES[0], -(23.0 + float(rng.uniform(-1.0, 1.0))), span[0] + 40.0, (50.0, 140.0)),
    ]
    for lat, v, s0, gaps in lane_plan:
        s = s0 + float(rng.uniform(0.0, 10.0))
        while s < span[1] - 200.0:
            b.add(CAR, lat, s, car_size(), speed=v, refl=float(rng.uniform(0.15, 0.7)))
            s += float(rng.uniform(*gaps))
    # the ego's lane: a car ahead a little faster, one behind a little slower
    b.add(CAR, HIGHWAY_LANES[1], s_ego + 35.0 + float(rng.uniform(-3, 3)), car_size(), speed=speed + 0.8,
          refl=float(rng.uniform(0.15, 0.7)))
    b.add(CAR, HIGHWAY_LANES[1], s_ego + 110.0 + float(rng.uniform(-5, 5)), car_size(), speed=speed + 1.5,
          refl=float(rng.uniform(0.15, 0.7)))
    b.add(CAR, HIGHWAY_LANES[1], s_ego - 30.0 + float(rng.uniform(-3, 3)), car_size(), speed=speed - 1.0,
          refl=float(rng.uniform(0.15, 0.7)))

    # -- a breakdown on the right shoulder, the driver standing behind the car -----------------------
    s_bd = s_ego + 150.0 + float(rng.uniform(-10.0, 10.0))
    b.add(CAR, -13.6, s_bd, (4.5, 1.8, 1.5), yaw=float(rng.uniform(-0.08, 0.02)), refl=0.6, avoid=True, margin=0.1)
    b.add(PEDESTRIAN, -13.9, s_bd - 4.5, (0.6, 0.6, 1.75), yaw=math.pi / 2, avoid=True)

    # -- barriers, posts, walls, buildings ------------------------------------------------------------
    seg = 12.0
    s = span[0]
    while s < span[1]:
        b.add(WALL, 0.0, s + seg / 2.0, (seg - 0.15, 0.6, 0.9), refl=0.35, avoid=True)
        for side in (-1.0, 1.0):
            b.add(WALL, side * 15.6, s + seg / 2.0, (seg - 0.15, 0.2, 0.75),
                  refl=0.6, avoid=True)
        s += seg
    _poles(b, rng, 17.0, span, spacing=(45.0, 55.0))
    for side in (-1.0, 1.0):
        s = span[0] + float(rng.uniform(0.0, 30.0))
        while s < span[1]:
            ln = float(rng.uniform(40.0, 120.0))
            if rng.random() < 0.6:
                b.add(WALL, side * 21.0, s + ln / 2.0, (ln, 0.3, float(rng.uniform(3.0, 4.5))), refl=0.4,
                      avoid=True, margin=0.05)
            else:  # an opening with a warehouse further back
                d = float(rng.uniform(15.0, 30.0))
                b.add(BUILDING, side * (30.0 + d / 2.0 + float(rng.uniform(0, 10))), s + ln / 2.0,
                      (ln * 0.8, d, float(rng.uniform(6.0, 12.0))), refl=float(rng.uniform(0.3, 0.6)),
                      avoid=True, margin=0.5)
            s += ln + float(rng.uniform(5.0, 20.0))
    return Scene(actors=tuple(b.actors), ground=ground, ego=ego, seed=seed, duration=12.0, name="highway")


#: The generator's scenarios by name: ``SCENARIOS[name](seed) -> Scene``.
SCENARIOS: dict[str, Callable[[int], Scene]] = {
    "urban_street": urban_street,
    "curved_road": curved_road,
    "highway": highway,
    "winding_road": winding_road,
}


def make_scene(name: str, seed: int = 0) -> Scene:
    """The scene of scenario ``name`` for ``seed``; ValueError naming the choices for an unknown name."""
    try:
        fn = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}") from None
    return fn(int(seed))
