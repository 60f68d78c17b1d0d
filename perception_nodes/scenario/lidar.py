"""A rotating multi-beam LiDAR simulated by vectorised ray casting against a :class:`Scene`.

Model
-----
* A sweep is a grid of rays: every beam (fixed elevation, :attr:`BeamModel.elevations_deg`) fires at
  ``n_azimuth`` evenly spaced azimuths ``j * 360 / n_azimuth`` deg (j = 0 is +x, counter-clockwise).
* Rays start at the sensor origin, 1.73 m above base_link (:data:`LIDAR_HEIGHT`), axes parallel to
  base_link (KITTI's Velodyne mounting). Points come back in that ``lidar`` frame.
* Surfaces: the ground of :class:`~perception_nodes.scenario.scene.Ground` (road plane, painted lines,
  curb faces, sidewalk tops or a grass verge, along a straight or curved centre line;
  :func:`cast_ground`, shared with the cameras) and every actor's oriented box (slab method in the
  box frame). The nearest hit wins, so objects occlude each other and the ground. Rays without a hit
  inside ``[min_range, max_range]`` give no return, and each return is dropped with ``dropout_prob``.
* Range noise: Gaussian along the ray (so a point keeps its beam's elevation and azimuth exactly).
* Intensity in [0, 1]: ``reflectivity * (0.3 + 0.7 * cos(incidence)) * (1 - 0.4 * range / max_range)``
  plus Gaussian noise, clipped; reflectivity per surface (asphalt 0.12, paint 0.8, concrete 0.3,
  grass 0.45) and per actor (:attr:`Actor.reflectivity`).
* No motion distortion: the whole sweep sees the scene and the ego frozen at time ``t`` (a real
  sensor smears a sweep over 0.1 s; at 6 m/s that is up to 0.6 m, which this model ignores).
* The ego vehicle itself is invisible (as if its returns were cropped, like KITTI's).

Speed: each box is only tested against the rays in its azimuth/elevation window, so a 128k-ray
HDL-64 sweep over the ~75-box default scene costs about 40 ms in plain numpy (one core).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from perception_nodes.scenario.scene import Scene, actors_at, ego_pose3d

#: Height of the LiDAR origin above base_link (m); the axes are parallel to base_link's.
LIDAR_HEIGHT = 1.73

#: ``source`` codes for ground hits (actor hits carry the actor_id, >= 0).
SURFACE_ROAD = -1
SURFACE_MARKING = -2
SURFACE_SIDEWALK = -3
SURFACE_CURB = -4
SURFACE_GRASS = -5
SURFACE_REFLECTIVITY = {SURFACE_ROAD: 0.12, SURFACE_MARKING: 0.8, SURFACE_SIDEWALK: 0.3, SURFACE_CURB: 0.3,
                        SURFACE_GRASS: 0.45}

_HDL64_ELEVATIONS = tuple(
    np.round(np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)]), 4).tolist()
)
# Velodyne VLP-32C (Ultra Puck) laser table, in firing order.
_VLP32C_ELEVATIONS = (
    -25.0, -1.0, -1.667, -15.639, -11.31, 0.0, -0.667, -8.843, -7.254, 0.333, -0.333, -6.148, -5.333,
    1.333, 0.667, -4.0, -4.667, 1.667, 1.0, -3.667, -3.333, 3.333, 2.333, -2.667, -3.0, 7.0, 4.667,
    -2.333, -2.0, 15.0, 10.333, -1.333,
)
_VLP16_ELEVATIONS = tuple(float(e) for e in range(-15, 16, 2))
# Velodyne HDL-32E as on nuScenes: 32 beams, -30.67 .. +10.67 deg in uniform 1.33 deg steps (ring medians
# measured on the nuScenes keyframe in ../shared/data, see docs/sim_to_real.md)
_HDL32E_ELEVATIONS = tuple(np.round(np.linspace(-30.67, 10.67, 32), 4).tolist())


@dataclass(frozen=True)
class BeamModel:
    """Geometry and noise of a spinning LiDAR. Elevations are stored ascending: ring 0 is the lowest."""

    name: str
    elevations_deg: tuple[float, ...]
    n_azimuth: int = 1800
    max_range: float = 120.0
    min_range: float = 1.0
    range_noise_std: float = 0.02
    dropout_prob: float = 0.02
    intensity_noise_std: float = 0.02

    def __post_init__(self):
        el = tuple(sorted(float(e) for e in self.elevations_deg))
        if not el or el[0] < -90.0 or el[-1] > 90.0:
            raise ValueError("elevations must be non-empty and within [-90, 90] deg")
        if len(set(el)) != len(el):
            raise ValueError("elevations must be distinct")
        if self.n_azimuth < 1:
            raise ValueError("n_azimuth must be >= 1")
        if not 0.0 <= self.min_range < self.max_range:
            raise ValueError("need 0 <= min_range < max_range")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError("dropout_prob must be in [0, 1)")
        if self.range_noise_std < 0 or self.intensity_noise_std < 0:
            raise ValueError("noise must be >= 0")
        object.__setattr__(self, "elevations_deg", el)

    # presets -------------------------------------------------------------------------------------
    @classmethod
    def hdl64(cls, **overrides) -> "BeamModel":
        """Velodyne HDL-64E as on KITTI: 64 beams, +2.0 .. -24.9 deg, 2000 azimuths (0.18 deg) = 128k rays."""
        return cls(**{"name": "hdl64", "elevations_deg": _HDL64_ELEVATIONS, "n_azimuth": 2000, **overrides})

    @classmethod
    def vlp32(cls, **overrides) -> "BeamModel":
        """Velodyne VLP-32C: 32 beams, -25 .. +15 deg (dense near the horizon), 0.2 deg azimuth."""
        return cls(**{"name": "vlp32", "elevations_deg": _VLP32C_ELEVATIONS, "n_azimuth": 1800,
                      "max_range": 200.0, "range_noise_std": 0.03, **overrides})

    @classmethod
    def hdl32e(cls, **overrides) -> "BeamModel":
        """Velodyne HDL-32E as on nuScenes: 32 beams, -30.67 .. +10.67 deg (1.33 deg steps), 1,084 azimuths
        (0.33 deg), 100 m range. (nuScenes spins it at 20 Hz and mounts it 1.84 m up with x right, y
        forward; here the frame is x forward like every preset, and the rate is the bag's 10 Hz.)"""
        return cls(**{"name": "hdl32e", "elevations_deg": _HDL32E_ELEVATIONS, "n_azimuth": 1084,
                      "max_range": 100.0, **overrides})

    @classmethod
    def vlp16(cls, **overrides) -> "BeamModel":
        """Velodyne VLP-16: 16 beams, -15 .. +15 deg every 2 deg, 0.2 deg azimuth."""
        return cls(**{"name": "vlp16", "elevations_deg": _VLP16_ELEVATIONS, "n_azimuth": 1800,
                      "max_range": 100.0, "range_noise_std": 0.03, **overrides})

    # derived -------------------------------------------------------------------------------------
    @property
    def n_beams(self) -> int:
        return len(self.elevations_deg)

    @property
    def n_rays(self) -> int:
        return self.n_beams * self.n_azimuth

    @property
    def azimuth_resolution_deg(self) -> float:
        return 360.0 / self.n_azimuth

    @property
    def elevations_rad(self) -> np.ndarray:
        return np.deg2rad(np.asarray(self.elevations_deg, dtype=np.float64))

    @property
    def azimuths_rad(self) -> np.ndarray:
        return np.arange(self.n_azimuth, dtype=np.float64) * (2.0 * math.pi / self.n_azimuth)


hdl64 = BeamModel.hdl64
vlp32 = BeamModel.vlp32
vlp16 = BeamModel.vlp16
hdl32e = BeamModel.hdl32e


@dataclass
class ScanResult:
    """One sweep: ``points`` (N, 4) float32 x, y, z, intensity in the lidar frame, ordered by azimuth
    then ring, and per point its ``ring`` (beam index, 0 = lowest), ``azimuth_index`` and ``source``
    (actor_id >= 0, or a ``SURFACE_*`` code < 0)."""

    points: np.ndarray
    ring: np.ndarray
    azimuth_index: np.ndarray
    source: np.ndarray
    n_rays: int
    #: base_link pose in map (x, y, z, yaw) the sweep was taken from.
    ego_pose: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))


@lru_cache(maxsize=8)
def _tables(model: BeamModel):
    el = model.elevations_rad
    az = model.azimuths_rad
    return el, np.cos(el), np.sin(el), az, np.cos(az), np.sin(az)


def _safe(d: np.ndarray) -> np.ndarray:
    """Direction components with exact zeros nudged so that slab divisions stay finite."""
    return np.where(np.abs(d) < 1e-12, 1e-12, d)


@dataclass
class GroundHits:
    """First ground hit of each ray (arrays shaped like the rays): ``t`` in units of the direction
    vectors (inf: no hit), ``cos_inc`` = |cos| of the incidence angle, ``src`` a ``SURFACE_*`` code,
    and the hit's road coordinates ``s`` (along the centre line) and ``lat`` (signed, + left)."""

    t: np.ndarray
    cos_inc: np.ndarray
    src: np.ndarray
    s: np.ndarray
    lat: np.ndarray


def cast_ground(ground, origin, dx, dy, dz) -> GroundHits:
    """Intersect rays from ``origin`` (map frame) with directions (dx, dy, dz) with the ground.

    The road is the base plane between the curbs (``|lateral| <= road_half_width`` in road
    coordinates), the verge beyond them is ``curb_height`` higher, and the curb faces join the two.
    A ray that passes the verge level over the road and reaches the base plane beyond a curb hit the
    curb's face: the crossing is found by interpolating the lateral offset between the two plane hits
    (exact on a straight road, within the sagitta of that short stretch on a curve). Painted lines
    are marked on road hits. Directions need not be unit vectors: ``t`` is in their units (range for
    unit vectors, depth for camera rays with z_optical = 1).
    """
    dx, dy, dz = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (dx, dy, dz)))
    shape = dx.shape
    ox, oy, oz = (float(v) for v in origin)
    g = ground.grade
    h0 = oz - g * ox  # origin height above the base plane
    hd_all = dz - g * dx  # d(height above base plane)/dt
    idx = np.flatnonzero(hd_all < -1e-12)
    dx, dy, dz, hd = (a.reshape(-1)[idx] for a in (dx, dy, dz, hd_all))
    norm = np.sqrt(dx * dx + dy * dy + dz * dz)
    t_road = -h0 / hd
    s_r, lat_r, head_r = ground.road_coords(ox + t_road * dx, oy + t_road * dy)
    hw, hc = ground.road_half_width, ground.curb_height
    outside = SURFACE_SIDEWALK if ground.verge == "sidewalk" else SURFACE_GRASS
    cos_plane = np.abs(hd) / (norm * math.sqrt(1.0 + g * g))
    if hc > 0.0 and h0 > hc:
        t_side = (hc - h0) / hd
        s_s, lat_s, _ = ground.road_coords(ox + t_side * dx, oy + t_side * dy)
        on_side = np.abs(lat_s) >= hw
        on_road = ~on_side & (np.abs(lat_r) <= hw)
        curb = ~on_side & ~on_road
        target = np.copysign(hw, lat_r)
        den = lat_r - lat_s
        frac = np.clip((target - lat_s) / np.where(np.abs(den) < 1e-12, 1e-12, den), 0.0, 1.0)
        t_curb = t_side + frac * (t_road - t_side)
        t = np.where(on_side, t_side, np.where(on_road, t_road, t_curb))
        src = np.where(on_side, outside, np.where(on_road, SURFACE_ROAD, SURFACE_CURB)).astype(np.int32)
        s_hit = np.where(on_side, s_s, np.where(on_road, s_r, s_s + frac * (s_r - s_s)))
        lat_hit = np.where(on_side, lat_s, np.where(on_road, lat_r, target))
        nx, ny = -np.sin(head_r), np.cos(head_r)
        cos_curb = np.abs(dx * nx + dy * ny) / norm
        cos_inc = np.where(curb, cos_curb, cos_plane)
    else:
        t = t_road
        on_road = np.abs(lat_r) <= hw
        src = np.where(on_road, SURFACE_ROAD, outside).astype(np.int32)
        s_hit, lat_hit, cos_inc = s_r, lat_r, cos_plane

    if getattr(ground, "relief", None) is not None:
        # the relief (crown, bumps) moves each hit along its ray: h0 + hd * t = relief(p(t)), solved by
        # two fixed-point steps from the plane hit (the relief is smooth and a few cm high)
        t_flat = t
        for _ in range(2):
            dz = ground.relief.height(ox + t * dx, oy + t * dy, lat_hit)
            t = np.maximum(t_flat + np.clip(dz / hd, -3.0, 3.0), 1e-6)

    # painted lines on the road
    half = ground.marking_width / 2.0
    paint = np.zeros(idx.shape, dtype=bool)
    dashes = np.mod(s_hit, ground.dash_period) < ground.dash_length
    for offset, dashed in ground.painted_lines:
        near = np.abs(lat_hit - offset) <= half
        paint |= (near & dashes) if dashed else near
    src = np.where((src == SURFACE_ROAD) & paint, SURFACE_MARKING, src).astype(np.int32)

    def full(values, fill, dtype):
        out = np.full(int(np.prod(shape)), fill, dtype=dtype)
        out[idx] = values
        return out.reshape(shape)

    return GroundHits(
        t=full(t, np.inf, np.float64),
        cos_inc=full(cos_inc, 0.0, np.float64),
        src=full(src, SURFACE_ROAD, np.int32),
        s=full(s_hit, 0.0, np.float64),
        lat=full(lat_hit, 0.0, np.float64),
    )


def _cast_ground(ground, origin, cos_el, sin_el, cos_az, sin_az):
    """Range, |cos incidence| and source code of the first ground hit of every ray (world axes)."""
    dx = cos_el[:, None] * cos_az[None, :]
    dy = cos_el[:, None] * sin_az[None, :]
    dz = np.broadcast_to(sin_el[:, None], dx.shape)
    hits = cast_ground(ground, origin, dx, dy, dz)
    return hits.t, hits.cos_inc, hits.src


def _cast_box(box_c, box_yaw, half, model, tables, t_best, cos_best, src_best, code):
    """Intersect the rays in the box's angular window with one box (lidar frame); update the buffers."""
    el, cos_el, sin_el, az, cos_az, sin_az = tables
    n_az = model.n_azimuth
    cx, cy, cz = box_c
    hl, hw, hh = half
    c, s = math.cos(box_yaw), math.sin(box_yaw)
    # sensor origin in the box frame
    ox, oy, oz = -(c * cx + s * cy), -(-s * cx + c * cy), -cz
    if abs(ox) < hl and abs(oy) < hw and abs(oz) < hh:
        return  # sensor inside the box: nothing sensible to see
    d_min = math.hypot(max(abs(ox) - hl, 0.0), max(abs(oy) - hw, 0.0))
    if d_min > model.max_range:
        return
    corners = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]]) @ np.array([[c, s], [-s, c]]) + (cx, cy)
    d_max = float(np.max(np.hypot(corners[:, 0], corners[:, 1])))

    # azimuth window (columns), one extra column either side for safety
    step = 2.0 * math.pi / n_az
    if d_min == 0.0:
        cols = np.arange(n_az)
    else:
        a_c = math.atan2(cy, cx)
        rel = np.arctan2(corners[:, 1], corners[:, 0]) - a_c
        rel = (rel + math.pi) % (2.0 * math.pi) - math.pi
        j0 = math.floor((a_c + rel.min()) / step) - 1
        j1 = math.ceil((a_c + rel.max()) / step) + 1
        if j1 - j0 + 1 >= n_az:
            cols = np.arange(n_az)
        else:
            cols = np.arange(j0, j1 + 1) % n_az
    # elevation window (rows)
    z_top, z_bot = cz + hh, cz - hh
    el_hi = math.atan2(z_top, d_min if z_top >= 0 else d_max)
    el_lo = math.atan2(z_bot, d_max if z_bot >= 0 else d_min)
    r0 = int(np.searchsorted(el, el_lo - 1e-9, side="left"))
    r1 = int(np.searchsorted(el, el_hi + 1e-9, side="right"))
    if r0 >= r1:
        return

    # ray directions in the box frame
    ca, sa = cos_az[cols], sin_az[cols]
    ce = cos_el[r0:r1, None]
    dx = ce * (c * ca + s * sa)[None, :]
    dy = ce * (c * sa - s * ca)[None, :]
    dz = sin_el[r0:r1, None]
    ix, iy, iz = 1.0 / _safe(dx), 1.0 / _safe(dy), 1.0 / _safe(dz)
    tx1, tx2 = (-hl - ox) * ix, (hl - ox) * ix
    ty1, ty2 = (-hw - oy) * iy, (hw - oy) * iy
    tz1, tz2 = (-hh - oz) * iz, (hh - oz) * iz  # (rows, 1)
    txn, tyn, tzn = np.minimum(tx1, tx2), np.minimum(ty1, ty2), np.minimum(tz1, tz2)
    t_near = np.maximum(np.maximum(txn, tyn), tzn)
    t_far = np.minimum(np.minimum(np.maximum(tx1, tx2), np.maximum(ty1, ty2)), np.maximum(tz1, tz2))

    sub_t = t_best[r0:r1, cols]
    better = (t_near <= t_far) & (t_near > 0.0) & (t_near < sub_t)
    if not better.any():
        return
    cos_inc = np.where(t_near == txn, np.abs(dx), np.where(t_near == tyn, np.abs(dy), np.abs(dz)))
    t_best[r0:r1, cols] = np.where(better, t_near, sub_t)
    cos_best[r0:r1, cols] = np.where(better, cos_inc, cos_best[r0:r1, cols])
    src_best[r0:r1, cols] = np.where(better, code, src_best[r0:r1, cols])


def cast_scan(
    scene: Scene,
    t: float,
    beam_model: BeamModel,
    rng: np.random.Generator | int | None = None,
    *,
    mount_height: float = LIDAR_HEIGHT,
    boxes: list | None = None,
    realism=None,
) -> ScanResult:
    """Simulate the sweep taken at time ``t`` from the ego's LiDAR; see the module doc for the model.

    ``rng`` (a ``np.random.Generator``, or a seed for one) drives noise and dropout: the same
    generator state gives a bit-identical scan. A fixed number of variates is drawn per sweep.
    ``boxes``: the scene's world boxes at ``t`` when the caller has them already (``actors_at``).
    ``realism``: a :class:`~perception_nodes.scenario.realism.RealismState` (sensor pose, shapes,
    dropout, intensity calibration; :mod:`~perception_nodes.scenario.lidar_realism`), None for the
    plain model above (its mount height then overrides ``mount_height``).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if realism is not None:
        from perception_nodes.scenario.lidar_realism import cast_scan_realistic

        return cast_scan_realistic(scene, t, beam_model, rng, boxes=boxes, state=realism)
    tables = _tables(beam_model)
    el, cos_el, sin_el, az, cos_az, sin_az = tables
    ex, ey, ez, eyaw = ego_pose3d(t, scene)
    oz_world = ez + mount_height

    # ground, in world axes (the lidar frame is level, so a ray's world azimuth is az + eyaw)
    cyaw, syaw = math.cos(eyaw), math.sin(eyaw)
    t_best, cos_best, src_best = _cast_ground(
        scene.ground, (ex, ey, oz_world), cos_el, sin_el,
        cos_az * cyaw - sin_az * syaw, sin_az * cyaw + cos_az * syaw,
    )
    t_best = np.array(t_best, dtype=np.float64)
    cos_best = np.array(cos_best, dtype=np.float64)
    src_best = np.array(src_best, dtype=np.int32)

    # actors, in the lidar frame
    if boxes is None:
        boxes = actors_at(scene, t)
    refl = {}
    for b in boxes:
        wx, wy = b.center[0] - ex, b.center[1] - ey
        lc = (cyaw * wx + syaw * wy, -syaw * wx + cyaw * wy, b.center[2] - oz_world)
        half = (b.size[0] / 2.0, b.size[1] / 2.0, b.size[2] / 2.0)
        aid = int(b.extras["actor_id"])
        refl[aid] = float(b.extras.get("reflectivity", 0.4))
        _cast_box(lc, b.yaw - eyaw, half, beam_model, tables, t_best, cos_best, src_best, aid)

    # sensor effects (a fixed number of draws, in a fixed order, whatever the scene)
    shape = t_best.shape
    range_noise = rng.normal(0.0, beam_model.range_noise_std, size=shape)
    keep_u = rng.random(size=shape)
    intensity_noise = rng.normal(0.0, beam_model.intensity_noise_std, size=shape)

    valid = (
        np.isfinite(t_best)
        & (t_best >= beam_model.min_range)
        & (t_best <= beam_model.max_range)
        & (keep_u >= beam_model.dropout_prob)
    )
    # azimuth-major order, as a spinning sensor emits them
    az_idx, ring = np.nonzero(valid.T)
    rng_true = t_best[ring, az_idx]
    r = np.maximum(rng_true + range_noise[ring, az_idx], 0.0)
    ce = cos_el[ring]
    x = r * ce * cos_az[az_idx]
    y = r * ce * sin_az[az_idx]
    z = r * sin_el[ring]

    src = src_best[ring, az_idx]
    rho = np.empty(src.shape, dtype=np.float64)
    surf = src < 0
    for code, value in SURFACE_REFLECTIVITY.items():
        rho[src == code] = value
    if (~surf).any():
        ids = np.array(sorted(refl), dtype=np.int64)
        vals = np.array([refl[i] for i in ids])
        rho[~surf] = vals[np.searchsorted(ids, src[~surf])]
    intensity = rho * (0.3 + 0.7 * cos_best[ring, az_idx]) * (1.0 - 0.4 * np.minimum(rng_true / beam_model.max_range, 1.0))
    intensity = np.clip(intensity + intensity_noise[ring, az_idx], 0.0, 1.0)

    points = np.stack([x, y, z, intensity], axis=1).astype(np.float32)
    return ScanResult(
        points=points,
        ring=ring.astype(np.uint16),
        azimuth_index=az_idx.astype(np.int32),
        source=src.astype(np.int32),
        n_rays=beam_model.n_rays,
        ego_pose=(ex, ey, ez, eyaw),
    )


def render_scan(
    scene: Scene,
    t: float,
    beam_model: BeamModel,
    rng: np.random.Generator | int | None = None,
    *,
    mount_height: float = LIDAR_HEIGHT,
    boxes: list | None = None,
    realism=None,
) -> np.ndarray:
    """(N, 4) float32 [x, y, z, intensity] in the lidar frame of the sweep at time ``t``."""
    return cast_scan(scene, t, beam_model, rng, mount_height=mount_height, boxes=boxes, realism=realism).points


def boxes_in_lidar(boxes, ego_pose, mount_height: float = LIDAR_HEIGHT):
    """Map-frame boxes in the lidar frame (base_link shifted up by ``mount_height``)."""
    from dataclasses import replace

    from perception_nodes.scenario.scene import boxes_in_base_link

    return [
        replace(b, center=(b.center[0], b.center[1], b.center[2] - mount_height))
        for b in boxes_in_base_link(boxes, ego_pose)
    ]
