"""Opt-in realism for the generator, so that training data transfers to real KITTI / nuScenes scans.

``../shared/docs/sim-to-real-lidar.md`` (measured here again by ``benchmarks/sim_to_real.py``, results in
``docs/sim_to_real.md``) found the plain simulator too clean: cars return 97 % of their rays (real
16-65 %), points sit exactly on box faces, intensity is scaled unlike KITTI's or nuScenes', the sensor and
ground are perfectly level, clutter is scarce and sizes do not match the target set. Each gap has a knob
here; a :class:`Realism` names a *target* (``kitti`` or ``nuscenes``, which sets the numbers) and which
knobs are on. ``Realism.parse("none")`` (the default everywhere) leaves every output bit-identical to the
generator without this module.

Knobs (each individually switchable; ``Realism.parse("kitti")`` turns all on, ``"kitti:-vegetation"``
all but one, ``"kitti:+intensity"`` only that one):

* ``range_cap``: no returns beyond the target's range (KITTI 80 m, nuScenes 100 m).
* ``car_shape``: cars and vans are a body plus a narrower, shorter cabin, inset from the label box
  (which stays the ground truth); the cabin's sides, windscreen and rear window are glass that returns
  only :attr:`TargetParams.glass_return` of the rays (the rest give no return).
* ``object_dropout``: returns from vehicles and people are kept with a probability that grows with the
  paint's reflectivity and the cosine of the incidence angle and falls with range (grazing roofs and
  dark paint vanish, as on real scans).
* ``object_noise``: extra range noise on object returns (:attr:`TargetParams.object_noise_m`).
* ``intensity``: the target's intensity encoding: KITTI (asphalt ~0.29, objects about as bright as the
  ground, exact zeros rising with range and on dark paint, 0.01 steps) or nuScenes (0-255 levels,
  delivered divided by 255 so every preset stays in [0, 1]: multiply by 255 to compare with raw
  nuScenes, whose loader must divide by 255 for training parity).
* ``sensor_pose``: per bag, the mount height (target range) and a tilt of up to ``tilt_max_deg`` in a
  random direction (pitch and roll). ``/tf_static`` publishes the true mount, so points moved by it land
  on the ground truth, which stays gravity-aligned in base_link / map.
* ``ground``: per bag, a road crown (cross-slope ``camber``, the road highest on its centre line) and
  smooth bumps (a few sinusoids, RMS drawn per bag) on the whole ground; actors and the ego rest on it.
* ``vegetation``: bushes, hedges and trees beside the road, cast as scattering volumes (each ray that
  enters the crown returns at an exponentially distributed depth, or passes through), so they give the
  scattered 3-D returns real scans have; label ``Vegetation``, static clutter like walls.
* ``vehicle_kinds``: some parked cars become vans or trucks, some motorway traffic trucks and buses.
  They keep KITTI's names (``Van``, ``Truck``; ``Bus`` for nuScenes' bus), distinct from ``Car`` as in
  KITTI (evaluation maps ``Van`` to a don't-care car and ignores ``Truck``/``Bus``).
* ``ego_occlusion``: per bag, the ego's roof and rack block azimuth sectors of the lowest rings (KITTI
  loses 20-50 % there, nuScenes more).
* ``car_sizes``: car sizes drawn from the target's statistics (KITTI 3.88 x 1.63 x 1.53 m, nuScenes
  4.6 x 1.95 x 1.73 m) instead of the generator's 3.8-4.9 m cars.

Opt-in knobs (not part of a target's "all on"; name them: ``"kitti:+barriers"`` only that one,
``"kitti:-vegetation,+barriers"`` all preset knobs but vegetation, plus barriers):

* ``barriers``: runs of low road-edge barriers (jersey / guard-rail segments 3-12 m long, 0.2-0.6 m wide,
  0.6-1.0 m high, label ``Wall``) beside the road, where nothing stands or drives. Why: cars and long
  low barriers differ only in length and continuity, and the plain urban scenes have no such barriers
  (their walls stand 1-2 m high at the building line), so a network trained on them calls barrier
  segments cars (seen on the held-out motorway, whose median and edge barriers drew most of its false
  positives).

Everything stays a pure function of (seed, t): per-bag draws come from :meth:`RealismState.create`'s
seed, per-scan ones from a stream keyed by (seed, frame time), never from the base LiDAR noise stream,
so switching a knob on leaves the others' randomness unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import numpy as np

#: Version of the realism model (recorded in /scenario/info under ``realism``); bump when a knob's output changes.
REALISM_VERSION = 1
#: The knobs, in the order the ablation reports them.
KNOBS: tuple[str, ...] = ("range_cap", "car_shape", "object_dropout", "object_noise", "intensity", "sensor_pose",
                          "ground", "vegetation", "vehicle_kinds", "ego_occlusion", "car_sizes")
#: Knobs a preset does not turn on (named explicitly, see the module doc).
OPT_IN_KNOBS: tuple[str, ...] = ("barriers",)
ALL_KNOBS: tuple[str, ...] = KNOBS + OPT_IN_KNOBS
TARGETS: tuple[str, ...] = ("kitti", "nuscenes")
VEGETATION = "Vegetation"
VAN = "Van"
TRUCK = "Truck"
BUS = "Bus"
#: Labels of the extra vehicle kinds (published as ground truth beside Car / Pedestrian / Cyclist).
VEHICLE_KIND_LABELS: tuple[str, ...] = (VAN, TRUCK, BUS)
#: Labels whose returns the object dropout / noise act on.
_SOFT_TARGETS = ("Car", "Pedestrian", "Cyclist", VAN, TRUCK, BUS)
_SEED_STREAM = 11  # realism's own random streams: [seed, 11, purpose(, frame)]


@dataclass(frozen=True)
class TargetParams:
    """The numbers of one target data set (sources: the measured gap in ../shared/docs/sim-to-real-lidar.md,
    and KITTI / nuScenes size statistics)."""

    max_range: float
    mount_height: tuple[float, float]
    tilt_max_deg: float
    #: intensity: per-surface level at short range (SURFACE_* code -> value in the target's scale)
    ground_levels: dict[int, float]
    #: level of an object of reflectivity 0.4 (scaled by reflectivity ** object_gamma)
    object_level: float
    object_gamma: float
    #: relative fall-off of intensity per metre of range (level * exp(-r / falloff_m))
    falloff_m: float
    #: exact zeros: p0(r) = zero_floor + (1 - zero_floor) * (1 - exp(-(r / zero_range_m) ** 3)), plus dark paint
    zero_floor: float
    zero_range_m: float
    dark_paint_zero: float
    quantum: float  # intensity step (of the [0, 1] output)
    #: car sizes: mean and std of (length, width, height), clipped to +-2 std
    car_size_mean: tuple[float, float, float]
    car_size_std: tuple[float, float, float]
    glass_return: float
    object_noise_m: float
    #: ego occlusion: rings below this elevation lose up to occlusion_max (drawn per bag) of their azimuths
    occlusion_below_deg: float
    occlusion_max: tuple[float, float]
    vegetation_per_100m: float


_KITTI = TargetParams(
    max_range=80.0, mount_height=(1.60, 1.85), tilt_max_deg=3.0,
    ground_levels={-1: 0.29, -2: 0.55, -3: 0.30, -4: 0.28, -5: 0.24},
    object_level=0.38, object_gamma=0.8, falloff_m=160.0,
    zero_floor=0.015, zero_range_m=52.0, dark_paint_zero=0.9, quantum=0.01,
    car_size_mean=(3.88, 1.63, 1.53), car_size_std=(0.43, 0.10, 0.14),
    glass_return=0.3, object_noise_m=0.03,
    occlusion_below_deg=-19.0, occlusion_max=(0.25, 0.5), vegetation_per_100m=120.0,
)
_NUSCENES = TargetParams(
    max_range=100.0, mount_height=(1.75, 1.90), tilt_max_deg=3.0,
    ground_levels={-1: 11.5, -2: 40.0, -3: 14.0, -4: 12.0, -5: 9.0},
    object_level=21.0, object_gamma=0.8, falloff_m=60.0,
    zero_floor=0.001, zero_range_m=1e9, dark_paint_zero=0.0, quantum=1.0,
    car_size_mean=(4.62, 1.95, 1.73), car_size_std=(0.46, 0.19, 0.24),
    glass_return=0.3, object_noise_m=0.03,
    occlusion_below_deg=-17.0, occlusion_max=(0.45, 0.75), vegetation_per_100m=40.0,
)
TARGET_PARAMS: dict[str, TargetParams] = {"kitti": _KITTI, "nuscenes": _NUSCENES}
#: intensity scale of each target's raw encoding (nuScenes: 0-255); outputs are divided by it.
INTENSITY_SCALE = {"kitti": 1.0, "nuscenes": 255.0}
#: mean / std (l, w, h) of the extra kinds (KITTI Van and Truck; nuScenes bus), clipped to +-2 std.
KIND_SIZES = {VAN: ((5.08, 1.90, 2.21), (0.45, 0.10, 0.25)), TRUCK: ((8.5, 2.5, 3.1), (1.8, 0.12, 0.3)),
              BUS: ((11.2, 2.94, 3.47), (0.8, 0.1, 0.2))}


@dataclass(frozen=True)
class Realism:
    """Which realism knobs are on, for which target (see the module doc). Default: all off."""

    target: str = "kitti"
    range_cap: bool = False
    car_shape: bool = False
    object_dropout: bool = False
    object_noise: bool = False
    intensity: bool = False
    sensor_pose: bool = False
    ground: bool = False
    vegetation: bool = False
    vehicle_kinds: bool = False
    ego_occlusion: bool = False
    car_sizes: bool = False
    barriers: bool = False

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown realism target {self.target!r}; choose one of: {', '.join(TARGETS)}")

    @property
    def active(self) -> bool:
        return any(getattr(self, k) for k in ALL_KNOBS)

    @property
    def params(self) -> TargetParams:
        return TARGET_PARAMS[self.target]

    @property
    def knobs_on(self) -> tuple[str, ...]:
        return tuple(k for k in ALL_KNOBS if getattr(self, k))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in OPT_IN_KNOBS:  # off opt-in knobs stay out of /scenario/info (older realism bags unchanged)
            if not d[k]:
                del d[k]
        return d

    @classmethod
    def preset(cls, target: str) -> "Realism":
        """All knobs on for ``target`` (the opt-in ones stay off)."""
        return cls(target=target, **{k: True for k in KNOBS})

    @classmethod
    def parse(cls, spec: "str | Mapping[str, Any] | Realism | None") -> "Realism":
        """``None`` / ``"none"``: all off. ``"kitti"`` / ``"nuscenes"``: all on. ``"kitti:-vegetation,-ground"``:
        all on but those. ``"kitti:+intensity,+ground"``: only those. A mapping: ``{"target": "kitti",
        "vegetation": false, ...}`` (knobs missing from it are on when ``preset`` is true, the default).
        Opt-in knobs (:data:`OPT_IN_KNOBS`) are on only where named: ``+barriers`` (also beside ``-`` items),
        or ``barriers: true``."""
        if spec is None:
            return cls()
        if isinstance(spec, Realism):
            return spec
        if isinstance(spec, Mapping):
            d = dict(spec)
            target = str(d.pop("target", d.pop("preset", "kitti")))
            base = d.pop("all", True)
            unknown = set(d) - set(ALL_KNOBS)
            if unknown:
                raise ValueError(f"unknown realism knob(s) {sorted(unknown)}; knobs: {', '.join(ALL_KNOBS)}")
            return cls(target=target, **{k: bool(d.get(k, base)) for k in KNOBS},
                       **{k: bool(d.get(k, False)) for k in OPT_IN_KNOBS})
        text = str(spec).strip()
        if text.lower() in ("", "none", "off"):
            return cls()
        target, _, rest = text.partition(":")
        items = [s.strip() for s in rest.split(",") if s.strip()]
        plus_opt_in = {s[1:] for s in items if s.startswith("+") and s[1:] in OPT_IN_KNOBS}
        if items and all(s.startswith("+") for s in items):
            on = {s[1:] for s in items}
        elif all(s.startswith("-") or s[1:] in plus_opt_in for s in items):
            on = (set(KNOBS) - {s[1:] for s in items if s.startswith("-")}) | plus_opt_in
        else:
            raise ValueError(f"realism {text!r}: use only '-knob' items (all on but those, plus opt-in "
                             f"'+{OPT_IN_KNOBS[0]}') or only '+knob' items")
        bad = {s.lstrip("+-") for s in items} - set(ALL_KNOBS)
        if bad:
            raise ValueError(f"unknown realism knob(s) {sorted(bad)}; knobs: {', '.join(ALL_KNOBS)}")
        return cls(target=target.strip().lower(), **{k: k in on for k in ALL_KNOBS})


def realism_beams(beams, realism: Realism):
    """The beam model with the target's range cap (when ``range_cap`` is on)."""
    if realism.range_cap and beams.max_range > realism.params.max_range:
        return replace(beams, max_range=realism.params.max_range)
    return beams


# --------------------------------------------------------------------------------------------------
# per-bag draws

@dataclass(frozen=True)
class GroundRelief:
    """Height (m) added to the whole ground: a crown ``camber * (half_width - min(|lat|, half_width))``
    (the road highest on its centre line) plus ``sum(a * sin(kx x + ky y + phase))`` bumps."""

    camber: float
    half_width: float
    bumps: tuple[tuple[float, float, float, float], ...] = ()

    def height(self, x, y, lat):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        h = self.camber * (self.half_width - np.minimum(np.abs(np.asarray(lat, dtype=np.float64)), self.half_width))
        for a, kx, ky, ph in self.bumps:
            h = h + a * np.sin(kx * x + ky * y + ph)
        return h


def draw_relief(rng: np.random.Generator, half_width: float) -> GroundRelief:
    """Crown 0.5-2 % and bumps of total RMS 6-25 mm over wavelengths 2.5-25 m."""
    camber = float(rng.uniform(0.005, 0.02))
    rms = float(rng.uniform(0.006, 0.025))
    n = 6
    amps = rng.uniform(0.5, 1.0, n)
    amps *= rms * math.sqrt(2.0) / math.sqrt(float(np.sum(amps ** 2)))
    lam = rng.uniform(2.5, 25.0, n)
    th = rng.uniform(0.0, 2.0 * math.pi, n)
    ph = rng.uniform(0.0, 2.0 * math.pi, n)
    bumps = tuple((float(a), float(2 * math.pi / l * math.cos(t)), float(2 * math.pi / l * math.sin(t)), float(p))
                  for a, l, t, p in zip(amps, lam, th, ph))
    return GroundRelief(camber=camber, half_width=float(half_width), bumps=bumps)


def rotation_rpy(roll: float, pitch: float, yaw: float = 0.0) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll) (radians): maps sensor axes into the parent's."""
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


@dataclass
class RealismState:
    """The per-bag draws of a :class:`Realism` for one beam model: what :func:`cast_scan` needs."""

    realism: Realism
    seed: int
    mount_height: float
    roll: float
    pitch: float
    #: (n_beams, n_azimuth) bool: rays blocked by the ego body (None: none)
    blocked: np.ndarray | None = None
    #: geometry only (for ground-truth casts): no dropout, noise or glass loss, same pose and shapes
    ideal: bool = False

    @property
    def rotation(self) -> np.ndarray:
        """Sensor axes in the level, base_link-parallel frame at the sensor origin."""
        return rotation_rpy(self.roll, self.pitch)

    @property
    def tilted(self) -> bool:
        return self.roll != 0.0 or self.pitch != 0.0

    @classmethod
    def create(cls, realism: Realism, beams, seed: int, *, mount_height: float) -> "RealismState":
        rng = np.random.default_rng([int(seed), _SEED_STREAM, 0])
        p = realism.params
        h, roll, pitch = float(mount_height), 0.0, 0.0
        # draws in a fixed order whatever the knobs, so one knob does not shift another's values
        h_draw = float(rng.uniform(*p.mount_height))
        tilt = float(rng.uniform(0.0, p.tilt_max_deg))
        direction = float(rng.uniform(0.0, 2.0 * math.pi))
        frac = float(rng.uniform(*p.occlusion_max))
        centres = (np.array([45.0, 135.0, 225.0, 315.0]) + rng.uniform(-20.0, 20.0, 4)) % 360.0
        shares = rng.dirichlet(np.full(4, 3.0))
        if realism.sensor_pose:
            h = h_draw
            roll = math.radians(tilt) * math.sin(direction)
            pitch = math.radians(tilt) * math.cos(direction)
        blocked = None
        if realism.ego_occlusion:
            el = np.asarray(beams.elevations_deg)
            low = el < p.occlusion_below_deg
            if low.any():
                # the blocked share falls linearly from `frac` on the lowest ring to 0 at the cut elevation
                share = np.where(low, frac * (p.occlusion_below_deg - el) / max(p.occlusion_below_deg - el[0], 1e-9), 0.0)
                az = np.degrees(beams.azimuths_rad)
                blocked = np.zeros((beams.n_beams, beams.n_azimuth), dtype=bool)
                for c, s in zip(centres, shares):
                    half = share[:, None] * s * 180.0  # half-width (deg) of this sector per ring
                    d = np.abs((az[None, :] - c + 180.0) % 360.0 - 180.0)
                    blocked |= d < half
        return cls(realism=realism, seed=int(seed), mount_height=h, roll=roll, pitch=pitch, blocked=blocked)

    def geometry_only(self) -> "RealismState":
        return replace(self, ideal=True)

    def scan_rng(self, t: float) -> np.random.Generator:
        """The per-scan stream of realism draws (dropout, glass, vegetation depth, intensity)."""
        return np.random.default_rng([self.seed, _SEED_STREAM, 1, int(round(t * 1e6)) & 0x7FFFFFFF])

    def mount_transform(self) -> np.ndarray:
        """4x4 pose of the sensor in base_link (what /tf_static publishes)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[2, 3] = self.mount_height
        return m

    def describe(self) -> dict[str, Any]:
        return {**self.realism.to_dict(), "version": REALISM_VERSION, "mount_height_m": self.mount_height,
                "mount_roll_deg": math.degrees(self.roll), "mount_pitch_deg": math.degrees(self.pitch),
                "ego_blocked_rays": int(self.blocked.sum()) if self.blocked is not None else 0}


# --------------------------------------------------------------------------------------------------
# scene changes: sizes, kinds, vegetation, ground relief

def _clipped_normal(rng, mean, std):
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    return tuple(float(v) for v in np.clip(rng.normal(mean, std), mean - 2 * std, mean + 2 * std))


class _Space:
    """BEV polygons of everything that moves (sampled over the scene's duration) and stands, for placing
    new or grown boxes where they overlap nothing."""

    def __init__(self, scene, step: float = 0.25) -> None:
        from perception_nodes.scenario.scene import _boxes_at, _corners_xy

        self._corners = _corners_xy
        dyn = [a for a in scene.actors if a.dynamic]
        polys = []
        for t in np.arange(0.0, scene.duration + step, step):
            for b in _boxes_at(dyn, float(t), scene.ground):
                polys.append(b.corners_xy())
            ex, ey, eyaw = scene.ego.pose(float(t))
            polys.append(_corners_xy(ex, ey, scene.ego.size[0] + 0.5, scene.ego.size[1] + 0.5, eyaw))
        self.dynamic = np.array(polys).reshape(-1, 4, 2)
        self._dyn_lo, self._dyn_hi = self.dynamic.min(axis=1), self.dynamic.max(axis=1)
        self._ids: list[int] = []
        self._polys = np.zeros((0, 4, 2))
        for b in _boxes_at([a for a in scene.actors if not a.dynamic], 0.0, scene.ground):
            self.set_static(int(b.extras["actor_id"]), b.corners_xy())

    def set_static(self, actor_id: int, poly: np.ndarray) -> None:
        if actor_id in self._ids:
            self._polys[self._ids.index(actor_id)] = poly
        else:
            self._ids.append(actor_id)
            self._polys = np.concatenate([self._polys, poly[None]], axis=0)
        self._lo, self._hi = self._polys.min(axis=1), self._polys.max(axis=1)

    def free(self, poly: np.ndarray, ignore: int | None = None, dynamic: bool = True) -> bool:
        from perception_nodes.scenario.scenarios import _overlap

        lo, hi = poly.min(axis=0), poly.max(axis=0)
        m = np.all(self._lo <= hi, axis=1) & np.all(self._hi >= lo, axis=1)
        cands = [self._polys[i] for i in np.flatnonzero(m) if self._ids[i] != ignore]
        if dynamic and len(self.dynamic):
            m = np.all(self._dyn_lo <= hi, axis=1) & np.all(self._dyn_hi >= lo, axis=1)
            cands.extend(self.dynamic[m])
        return not any(_overlap(poly, other) for other in cands)


def _resize(space: _Space, scene, actor, size, label=None):
    """The actor with a new size (and label) when a static actor still fits, else None."""
    from perception_nodes.scenario.scene import _boxes_at

    new = replace(actor, size=tuple(float(v) for v in size), label=label or actor.label)
    if actor.dynamic:
        return new  # only shrunk, or grown within the traffic plan's gaps (checked by the caller)
    b = _boxes_at([new], 0.0, scene.ground)[0]
    poly = b.corners_xy()
    if space.free(poly, ignore=actor.actor_id):
        space.set_static(actor.actor_id, poly)
        return new
    return None


def apply_scene_realism(scene, realism: Realism, seed: int):
    """The scene with the scene-level knobs applied (car sizes, vehicle kinds, vegetation, ground relief,
    barriers). Existing actors keep their ids and positions; new ones are appended."""
    if not (realism.car_sizes or realism.vehicle_kinds or realism.vegetation or realism.ground or realism.barriers):
        return scene
    from perception_nodes.scenario.scene import CAR

    rng_size = np.random.default_rng([int(seed), _SEED_STREAM, 2])
    rng_kind = np.random.default_rng([int(seed), _SEED_STREAM, 3])
    rng_veg = np.random.default_rng([int(seed), _SEED_STREAM, 4])
    rng_ground = np.random.default_rng([int(seed), _SEED_STREAM, 5])
    p = realism.params
    actors = list(scene.actors)
    space = _Space(scene)
    highway = scene.ground.road_half_width > 10.0
    for i, a in enumerate(actors):
        if a.label != CAR:
            continue
        u_kind = float(rng_kind.random())
        kind_size = {k: _clipped_normal(rng_kind, *KIND_SIZES[k]) for k in (VAN, TRUCK, BUS)}
        size = _clipped_normal(rng_size, p.car_size_mean, p.car_size_std)
        new = None
        if realism.vehicle_kinds:
            kind = None
            if not a.dynamic:
                kind = VAN if u_kind < 0.15 else (TRUCK if u_kind < 0.2 else None)
            elif highway and a.path is not None and abs(a.path_speed) < 24.0:
                # slow lanes of the motorway (gaps of 35 m and more): trucks and buses
                kind = TRUCK if u_kind < 0.25 else (BUS if u_kind < 0.33 else None)
            if kind is not None:
                new = _resize(space, scene, a, kind_size[kind], kind)
        if new is None and realism.car_sizes:
            if a.dynamic:  # traffic: never grow beyond the plan's margins
                size = (min(size[0], a.size[0] + 0.3), min(size[1], a.size[1] + 0.1), size[2])
            new = _resize(space, scene, a, size)
        if new is not None:
            actors[i] = new
    ground = scene.ground
    if realism.ground:
        old = ground
        ground = replace(ground, relief=draw_relief(rng_ground, ground.road_half_width))
        if "_raster" in old.__dict__:  # the road-coordinate raster depends on the path only
            object.__setattr__(ground, "_raster", old.__dict__["_raster"])
    scene = replace(scene, actors=tuple(actors), ground=ground)
    if realism.barriers:  # before vegetation, so that hedges and trees keep clear of them
        rng_bar = np.random.default_rng([int(seed), _SEED_STREAM, 6])
        scene = replace(scene, actors=scene.actors + tuple(_barriers(scene, space, rng_bar)))
    if realism.vegetation:
        scene = replace(scene, actors=scene.actors + tuple(_vegetation(scene, space, rng_veg, p.vegetation_per_100m)))
    return scene


def _drive_stretch(scene) -> tuple[float, float]:
    """Road coordinates (s) around the ego's drive: 60 m behind its start to 90 m past its end."""
    g = scene.ground
    ex0, ex1 = scene.ego.pose(0.0), scene.ego.pose(scene.duration)
    s_of = (lambda x, y: float(g.road_coords(np.array([x]), np.array([y]))[0][0]))
    return s_of(ex0[0], ex0[1]) - 60.0, s_of(ex1[0], ex1[1]) + 90.0


def _barriers(scene, space: _Space, rng: np.random.Generator) -> list:
    """Runs of low barrier segments along both road edges (module doc), where they overlap nothing."""
    from perception_nodes.scenario.scene import WALL, Actor, _corners_xy

    g = scene.ground
    hw = g.road_half_width
    s0, s1 = _drive_stretch(scene)
    out = []
    next_id = max(a.actor_id for a in scene.actors) + 1 if scene.actors else 0
    for side in (-1.0, 1.0):
        s = s0 + float(rng.uniform(0.0, 20.0))
        while s < s1:
            if rng.random() < 0.5:  # a gap without barriers
                s += float(rng.uniform(10.0, 40.0))
                continue
            run_end = s + float(rng.uniform(20.0, 80.0))
            width, height = float(rng.uniform(0.2, 0.6)), float(rng.uniform(0.6, 1.0))
            seg, gap = float(rng.uniform(3.0, 12.0)), float(rng.uniform(0.05, 0.4))
            offset = float(rng.uniform(0.3, 1.5))
            refl = float(rng.uniform(0.3, 0.6))
            while s < min(run_end, s1):
                mid = s + seg / 2.0
                lat = side * (hw + offset + width / 2.0)
                if g.path is None:
                    x, y, h = mid, lat, 0.0
                else:
                    x, y, h = g.path.pose(mid)
                    x, y = x - lat * math.sin(h), y + lat * math.cos(h)
                poly = _corners_xy(x, y, seg, width, h)
                # a straight segment beside a bend bulges towards the road at its ends: every corner must
                # stay off the road (checked in road coordinates; the segment is dropped otherwise)
                _, lat_c, _ = g.road_coords(poly[:, 0], poly[:, 1])
                if np.abs(lat_c).min() >= hw and space.free(poly):
                    space.set_static(next_id, poly)
                    out.append(Actor(actor_id=next_id, label=WALL, xy=(float(x), float(y)), size=(seg, width, height),
                                     yaw=float(h), reflectivity=refl))
                    next_id += 1
                s += seg + gap
    return out


def _vegetation(scene, space: _Space, rng: np.random.Generator, per_100m: float) -> list:
    """Bushes, hedges and trees beside the road, where they overlap nothing (over the whole scene)."""
    from perception_nodes.scenario.scene import Actor, _corners_xy

    g = scene.ground
    hw = g.road_half_width
    s0, s1 = _drive_stretch(scene)  # path coordinates, or x on the default straight road
    n = int(rng.poisson(per_100m * 2.0 * (s1 - s0) / 100.0))
    out = []
    next_id = max(a.actor_id for a in scene.actors) + 1 if scene.actors else 0
    for _ in range(n):
        s = float(rng.uniform(s0, s1))
        side = 1.0 if rng.random() < 0.5 else -1.0
        kind = rng.choice(["bush", "hedge", "tree"], p=[0.35, 0.2, 0.45])
        if kind == "bush":
            size = (float(rng.uniform(0.8, 2.5)), float(rng.uniform(0.8, 2.2)), float(rng.uniform(0.6, 2.0)))
        elif kind == "hedge":
            size = (float(rng.uniform(3.0, 9.0)), float(rng.uniform(0.7, 1.3)), float(rng.uniform(0.9, 2.0)))
        else:
            d = float(rng.uniform(3.0, 7.0))
            size = (d, d * float(rng.uniform(0.8, 1.0)), float(rng.uniform(5.0, 11.0)))
        lat = side * (hw + float(rng.uniform(0.4, 10.0)) + size[1] / 2.0)
        if g.path is None:
            x, y, h = s, lat, 0.0
        else:
            x, y, h = g.path.pose(s)
            x, y = x - lat * math.sin(h), y + lat * math.cos(h)
        yaw = h + float(rng.normal(0.0, 0.1))
        refl = float(rng.uniform(0.3, 0.5))
        density = float(rng.uniform(1.0, 3.0))  # extinction per metre inside the crown
        a = Actor(actor_id=next_id, label=VEGETATION, xy=(float(x), float(y)), size=size, yaw=float(yaw),
                  reflectivity=refl, shape=f"{kind}:{density:.3f}")
        poly = _corners_xy(x, y, size[0], size[1], yaw)
        dyaw = yaw - h
        reach = abs(math.sin(dyaw)) * size[0] / 2.0 + abs(math.cos(dyaw)) * size[1] / 2.0
        if abs(lat) - reach < hw + 0.3:
            continue  # keep off the road (and its curbs)
        if kind == "tree":
            # the trunk must be clear of everything; the crown (2 m up and more) only of static objects
            trunk = _corners_xy(x, y, 0.6, 0.6, yaw)
            if not space.free(trunk) or not space.free(poly, dynamic=False):
                continue
        elif not space.free(poly):
            continue
        space.set_static(next_id, poly)
        out.append(a)
        next_id += 1
    return out


def is_soft_target(label: str) -> bool:
    return label in _SOFT_TARGETS


def vegetation_shape(shape: str) -> tuple[str, float]:
    kind, _, dens = shape.partition(":")
    return kind, float(dens or 2.0)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Realism))


__all__ = ["REALISM_VERSION", "KNOBS", "TARGETS", "Realism", "RealismState", "GroundRelief", "TargetParams", "TARGET_PARAMS",
           "apply_scene_realism", "realism_beams", "VEGETATION", "VAN", "TRUCK", "BUS", "VEHICLE_KIND_LABELS",
           "INTENSITY_SCALE", "KIND_SIZES"]
