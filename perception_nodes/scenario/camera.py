"""Pinhole cameras (a rectified stereo pair and a mono camera) rendered by vectorised ray casting.

Model
-----
* Rig (:func:`camera_rig`): KITTI-like. The stereo pair looks straight ahead, optical centres 1.65 m
  above base_link and 0.27 m forward of it, 0.54 m apart (left at y = +0.27 m, right at y = -0.27 m);
  both images are *rectified*: same K, parallel optical axes, rows aligned, so a point at depth Z shows
  in the right image ``disparity = fx * B / Z`` pixels left of where it shows in the left one. Focal
  length is KITTI's 721.5377 px scaled to the chosen width (fx = fy, square pixels); the principal point
  is the image centre. The mono camera sits on the windscreen (x = 1.0 m, z = 1.45 m), wider (90 deg
  horizontal field of view).
* Frames: each camera's ``<name>_optical`` frame (REP 103 optical: z forward, x right, y down); pixel
  (u, v) looks along ((u - cx) / fx, (v - cy) / fy, 1), pixel centres at integer coordinates.
* Rendering: one ray per pixel through its centre, cast against the ground of
  :func:`~perception_nodes.scenario.lidar.cast_ground` (the LiDAR's surface model: road, painted lines,
  curbs, sidewalk or grass verge) and every actor's box (slab method, each box only tested against the
  pixels inside its projected bounding rectangle). The nearest hit wins; no hit is sky.
* Appearance: procedural textures fixed to the surfaces (so both cameras of the pair see the same
  pattern on the same 3-D point, as stereo matching assumes): band-limited value noise on asphalt,
  concrete, grass and paint (octaves finer than a pixel's footprint are faded out, so far surfaces do not
  alias into noise that differs between the views), dashed/solid lines, sidewalk slabs, block joints on
  walls, windows on buildings, glass, wheels and body paint on cars, clothes on people; a sky gradient.
  Lambertian shading under a fixed sun plus ambient light (no cast shadows, no specular highlights);
  Gaussian sensor noise (``noise_std`` grey levels, drawn from the caller's generator).
* Ground truth: the left camera's depth (z along the optical axis, metres; +inf for sky) and
  disparity ``fx * B / depth`` (0 for sky).

Everything is deterministic for a given scene, time and generator state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from perception_nodes.scenario.lidar import (
    SURFACE_CURB,
    SURFACE_GRASS,
    SURFACE_MARKING,
    SURFACE_ROAD,
    SURFACE_SIDEWALK,
    cast_ground,
)
from perception_nodes.scenario.scene import BUILDING, CAR, CYCLIST, PEDESTRIAN, POLE, WALL, Scene, actors_at, ego_pose3d

KITTI_FX = 721.5377
KITTI_WIDTH = 1242
#: Stereo baseline (m) and mounting of the pair (m, base_link), as on KITTI's colour cameras.
STEREO_BASELINE = 0.54
STEREO_X = 0.27
STEREO_Z = 1.65
MONO_POSITION = (1.0, 0.0, 1.45)
MONO_HFOV_DEG = 90.0
DEFAULT_RESOLUTION = (640, 192)
SKY = -100  # source code of sky pixels
NEAR = 0.05

#: base_link <- optical rotation of a camera looking along base_link +x (columns: optical x, y, z axes).
_BASE_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
#: Sun direction in the map frame (unit vector towards the sun; ~55 deg elevation).
SUN = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])
AMBIENT = 0.5


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclass(frozen=True)
class CameraSpec:
    """A rectified pinhole camera on the ego: intrinsics, mounting in base_link, stereo offset."""

    name: str
    frame_id: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    #: optical centre in base_link (m)
    position: tuple[float, float, float]
    #: mounting angles (deg): yaw + turns the view left, pitch + tilts it down
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    #: P[0, 3] of the rectified projection: 0, or -fx * baseline for the right camera of a pair
    tx: float = 0.0

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError("camera width and height must be >= 1")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError("focal lengths must be positive")

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def P(self) -> np.ndarray:
        p = np.zeros((3, 4))
        p[:3, :3] = self.K
        p[0, 3] = self.tx
        return p

    @property
    def baseline(self) -> float:
        """Stereo baseline to the left camera (m) encoded in P: ``-tx / fx``."""
        return -self.tx / self.fx

    def model(self):
        """The :class:`~perception_nodes.codecs.camera_info.CameraModel` (no distortion: rectified)."""
        from perception_nodes.codecs.camera_info import CameraModel

        return CameraModel(width=self.width, height=self.height, frame_id=self.frame_id,
                           distortion_model="plumb_bob", K=self.K, D=np.zeros(5), R=np.eye(3), P=self.P)

    def base_from_optical(self) -> np.ndarray:
        """3x3 rotation taking optical-frame vectors into base_link."""
        return _rot_z(math.radians(self.yaw_deg)) @ _rot_y(math.radians(self.pitch_deg)) @ _BASE_FROM_OPTICAL

    def transform(self):
        """The static transform base_link -> this camera's optical frame."""
        from perception_nodes.calibration import StaticTransform, make_transform

        return StaticTransform("base_link", self.frame_id, make_transform(self.base_from_optical(),
                                                                          np.asarray(self.position, float)))


def camera_rig(width: int = DEFAULT_RESOLUTION[0], height: int = DEFAULT_RESOLUTION[1], *,
               baseline: float = STEREO_BASELINE) -> dict[str, CameraSpec]:
    """``{"left", "right", "mono"}`` cameras at ``width`` x ``height`` (see the module doc)."""
    f = KITTI_FX * width / KITTI_WIDTH
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    left = CameraSpec("left", "camera_left_optical", width, height, f, f, cx, cy,
                      (STEREO_X, baseline / 2.0, STEREO_Z))
    right = CameraSpec("right", "camera_right_optical", width, height, f, f, cx, cy,
                       (STEREO_X, -baseline / 2.0, STEREO_Z), tx=-f * baseline)
    fm = (width / 2.0) / math.tan(math.radians(MONO_HFOV_DEG) / 2.0)
    mono = CameraSpec("mono", "camera_mono_optical", width, height, fm, fm, cx, cy, MONO_POSITION)
    return {"left": left, "right": right, "mono": mono}


@dataclass
class CameraFrame:
    """One rendered image: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 metres along the optical
    axis (+inf: sky), ``source`` (H, W) int32 (actor_id >= 0, a ``SURFACE_*`` code, or :data:`SKY`)."""

    rgb: np.ndarray
    depth: np.ndarray
    source: np.ndarray
    camera: CameraSpec
    ego_pose: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))


# --------------------------------------------------------------------------------------------------
# procedural textures

_TABLE_BITS = 9
_TABLE_N = 1 << _TABLE_BITS


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """Lattice values of the value noise: a fixed 512 x 512 table of uniform values in [-0.5, 0.5),
    padded with its first row and column (so the +1 neighbours need no wrap), flattened."""
    t = np.random.default_rng(20240601).random((_TABLE_N, _TABLE_N), dtype=np.float32) - 0.5
    return np.pad(t, ((0, 1), (0, 1)), mode="wrap").reshape(-1)


def _value_noise(u: np.ndarray, v: np.ndarray, cell: float, salt: int) -> np.ndarray:
    """Smooth value noise in [-0.5, 0.5] with lattice spacing ``cell`` (same units as u, v)."""
    table = _noise_table()
    x = np.asarray(u, np.float32) * np.float32(1.0 / cell) + np.float32(salt * 137 % 4096)
    y = np.asarray(v, np.float32) * np.float32(1.0 / cell) + np.float32(salt * 71 % 4096)
    fx, fy = np.floor(x), np.floor(y)
    tx, ty = x - fx, y - fy
    tx = tx * tx * (3.0 - 2.0 * tx)
    ty = ty * ty * (3.0 - 2.0 * ty)
    m = _TABLE_N - 1
    base = (fy.astype(np.int32) & m) * (_TABLE_N + 1) + (fx.astype(np.int32) & m)
    a, b = table[base], table[base + 1]
    c, d = table[base + _TABLE_N + 1], table[base + _TABLE_N + 2]
    top = a + tx * (b - a)
    return top + ty * (c + tx * (d - c) - top)


def _fbm(u, v, footprint, salt: int, octaves) -> np.ndarray:
    """Sum of value-noise octaves ``[(cell, amplitude), ...]``; octaves whose cell is under about two
    pixel footprints fade out (band limiting against aliasing), and are only evaluated where they show."""
    out = np.zeros(np.shape(u), dtype=np.float32)
    inv_fp = 0.5 / np.maximum(footprint, 1e-6)
    for k, (cell, amp) in enumerate(octaves):
        w = np.clip(cell * inv_fp - 1.0, 0.0, 1.0).astype(np.float32)
        idx = np.flatnonzero(w)
        if len(idx) == 0:
            continue
        if len(idx) > 0.8 * w.size:
            out += (amp * w) * _value_noise(u, v, cell, salt * 31 + k)
        else:
            out[idx] += (amp * w[idx]) * _value_noise(u[idx], v[idx], cell, salt * 31 + k)
    return out


def _lines(coord, period: float, width: float, footprint) -> np.ndarray:
    """1 on thin lines every ``period`` (e.g. joints), faded where lines are thinner than a pixel."""
    d = np.abs(np.mod(coord + width / 2.0, period) - width / 2.0)
    strength = np.clip(width / np.maximum(footprint, 1e-6), 0.0, 1.0)
    return ((d < width / 2.0) * strength).astype(np.float32)


def _hash01(*ints: int) -> float:
    """A deterministic pseudo-random number in [0, 1) from integers."""
    h = 2166136261
    for v in ints:
        h = ((h ^ (int(v) & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
        h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0xFFFFFF) / float(1 << 24)


_CAR_PAINTS = np.array([
    (0.70, 0.08, 0.08), (0.10, 0.20, 0.55), (0.85, 0.85, 0.86), (0.08, 0.08, 0.09), (0.45, 0.46, 0.50),
    (0.12, 0.38, 0.20), (0.85, 0.70, 0.15), (0.55, 0.30, 0.15), (0.30, 0.55, 0.75), (0.60, 0.60, 0.62),
], dtype=np.float32)
_FACADES = np.array([
    (0.78, 0.70, 0.58), (0.62, 0.30, 0.22), (0.70, 0.70, 0.70), (0.88, 0.86, 0.80), (0.55, 0.52, 0.45),
    (0.80, 0.62, 0.45), (0.45, 0.47, 0.52),
], dtype=np.float32)
_CLOTHES = np.array([
    (0.15, 0.20, 0.45), (0.60, 0.10, 0.10), (0.20, 0.45, 0.20), (0.85, 0.80, 0.30), (0.30, 0.30, 0.32),
    (0.80, 0.50, 0.20), (0.55, 0.25, 0.55), (0.90, 0.90, 0.90),
], dtype=np.float32)


def _pick(palette: np.ndarray, *key: int) -> np.ndarray:
    return palette[int(_hash01(*key) * len(palette)) % len(palette)]


# --------------------------------------------------------------------------------------------------
# rendering

@lru_cache(maxsize=16)
def _pixel_rays(cam: CameraSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised image coordinates of the pixel columns and rows, and each ray's length per unit depth."""
    xn = (np.arange(cam.width, dtype=np.float64) - cam.cx) / cam.fx
    yn = (np.arange(cam.height, dtype=np.float64) - cam.cy) / cam.fy
    dist_scale = np.sqrt(xn[None, :] ** 2 + yn[:, None] ** 2 + 1.0)
    dist_scale.flags.writeable = False
    return xn, yn, dist_scale


def _box_window(corners_cam: np.ndarray, cam: CameraSpec) -> tuple[int, int, int, int] | None:
    """Pixel rectangle (c0, c1, r0, r1), inclusive, containing the box's projection; None if off-image."""
    z = corners_cam[:, 2]
    front = z > NEAR
    if not front.any():
        return None
    pts = [corners_cam[front]]
    if not front.all():  # clip the edges that cross the near plane
        edges = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
        for i, j in edges:
            if front[i] != front[j]:
                a, b = corners_cam[i], corners_cam[j]
                f = (NEAR - a[2]) / (b[2] - a[2])
                pts.append((a + f * (b - a))[None, :])
    p = np.concatenate(pts)
    u = cam.cx + cam.fx * p[:, 0] / p[:, 2]
    v = cam.cy + cam.fy * p[:, 1] / p[:, 2]
    c0 = max(int(math.floor(u.min())) - 1, 0)
    c1 = min(int(math.ceil(u.max())) + 1, cam.width - 1)
    r0 = max(int(math.floor(v.min())) - 1, 0)
    r1 = min(int(math.ceil(v.max())) + 1, cam.height - 1)
    if c0 > c1 or r0 > r1:
        return None
    return c0, c1, r0, r1


def _box_windows(boxes, origin: np.ndarray, r_ow: np.ndarray, cam: CameraSpec) -> dict[int, tuple]:
    """index -> (c0, c1, r0, r1, nearest corner depth) of every box whose projection meets the image."""
    if not boxes:
        return {}
    centers = np.array([b.center for b in boxes], dtype=np.float64)
    halves = np.array([b.size for b in boxes], dtype=np.float64) / 2.0
    yaws = np.array([b.yaw for b in boxes], dtype=np.float64)
    c, s = np.cos(yaws)[:, None], np.sin(yaws)[:, None]
    local = _UNIT_CORNERS[None, :, :] * halves[:, None, :]  # (N, 8, 3)
    world = np.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1], local[..., 2]],
                     axis=-1) + centers[:, None, :]
    cam_pts = (world - origin) @ r_ow.T  # (N, 8, 3)
    z = cam_pts[..., 2]
    out = {}
    all_front = np.all(z > NEAR, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = cam.cx + cam.fx * cam_pts[..., 0] / z
        v = cam.cy + cam.fy * cam_pts[..., 1] / z
    c0 = np.maximum(np.floor(u.min(axis=1)) - 1, 0)
    c1 = np.minimum(np.ceil(u.max(axis=1)) + 1, cam.width - 1)
    r0 = np.maximum(np.floor(v.min(axis=1)) - 1, 0)
    r1 = np.minimum(np.ceil(v.max(axis=1)) + 1, cam.height - 1)
    z_min = z.min(axis=1)
    for i in np.flatnonzero(all_front & (c0 <= c1) & (r0 <= r1)):
        out[int(i)] = (int(c0[i]), int(c1[i]), int(r0[i]), int(r1[i]), float(z_min[i]))
    for i in np.flatnonzero(~all_front & np.any(z > NEAR, axis=1)):  # crossing the near plane: clip
        win = _box_window(cam_pts[i], cam)
        if win is not None:
            out[int(i)] = (*win, float(z_min[i]))
    return out


_UNIT_CORNERS = np.array([[1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1],
                          [1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1]], dtype=np.float64)


def render_camera(
    scene: Scene,
    t: float,
    cam: CameraSpec,
    rng: np.random.Generator | int | None = None,
    *,
    boxes: list | None = None,
    noise_std: float = 1.5,
    misalignment: np.ndarray | None = None,
) -> CameraFrame:
    """Render ``cam``'s image of the scene at time ``t`` (see the module doc).

    ``misalignment``: a 3x3 rotation applied in the optical frame (the camera physically turned away
    from its calibrated pose, e.g. a decalibrated stereo head); the calibration is not changed.
    ``boxes``: the world boxes at ``t`` when the caller has them already.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    ex, ey, ez, eyaw = ego_pose3d(t, scene)
    r_wb = _rot_z(eyaw)
    r_wo = r_wb @ cam.base_from_optical()
    if misalignment is not None:
        r_wo = r_wo @ np.asarray(misalignment, dtype=np.float64)
    origin = np.array([ex, ey, ez]) + r_wb @ np.asarray(cam.position, dtype=np.float64)
    xn, yn, dist_scale = _pixel_rays(cam)
    H, W = cam.height, cam.width
    dxw = r_wo[0, 0] * xn[None, :] + r_wo[0, 1] * yn[:, None] + r_wo[0, 2]
    dyw = r_wo[1, 0] * xn[None, :] + r_wo[1, 1] * yn[:, None] + r_wo[1, 2]
    dzw = r_wo[2, 0] * xn[None, :] + r_wo[2, 1] * yn[:, None] + r_wo[2, 2]

    g = cast_ground(scene.ground, origin, dxw, dyw, dzw)
    depth = g.t.copy()
    src = np.where(np.isfinite(depth), g.src, SKY).astype(np.int32)
    # box-frame hit point and face (0..5 = +x, -x, +y, -y, +z, -z) of actor pixels
    pbx = np.zeros((H, W), np.float32)
    pby = np.zeros((H, W), np.float32)
    pbz = np.zeros((H, W), np.float32)
    face = np.zeros((H, W), np.int8)

    if boxes is None:
        boxes = actors_at(scene, t)
    info = {}
    r_ow = r_wo.T
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_dz = 1.0 / dzw  # boxes are yaw-only, so a ray's z component is the same in every box frame
    # all boxes' corners in the camera frame at once, then their pixel windows
    wins = _box_windows(boxes, origin, r_ow, cam)
    # nearest boxes first, so that pixels already covered by something nearer can be skipped
    order = sorted(wins, key=lambda k: wins[k][4])
    for k in order:
        b = boxes[k]
        c0, c1, r0, r1, z_min = wins[k]
        c_w = np.asarray(b.center, dtype=np.float64)
        half = np.asarray(b.size, dtype=np.float64) / 2.0
        r_wb_box = _rot_z(b.yaw)
        aid = int(b.extras["actor_id"])
        info[aid] = b
        # pixels whose current depth is beyond the box's nearest possible depth (the rest are hidden)
        sub = depth[r0:r1 + 1, c0:c1 + 1]
        lr, lc = np.nonzero(sub > max(z_min, NEAR))
        if len(lr) == 0:
            continue
        R, C = lr + r0, lc + c0
        o = r_wb_box.T @ (origin - c_w)  # camera centre in the box frame
        cb, sb = math.cos(b.yaw), math.sin(b.yaw)
        DX, DY = dxw[R, C], dyw[R, C]
        dx = cb * DX + sb * DY  # ray directions in the box frame
        dy = cb * DY - sb * DX
        hl, hw, hh = half
        with np.errstate(divide="ignore", invalid="ignore"):
            ix, iy, iz = 1.0 / dx, 1.0 / dy, inv_dz[R, C]
            tx1, tx2 = (-hl - o[0]) * ix, (hl - o[0]) * ix
            ty1, ty2 = (-hw - o[1]) * iy, (hw - o[1]) * iy
            tz1, tz2 = (-hh - o[2]) * iz, (hh - o[2]) * iz
            txn, tyn, tzn = np.minimum(tx1, tx2), np.minimum(ty1, ty2), np.minimum(tz1, tz2)
            t_near = np.maximum(np.maximum(txn, tyn), tzn)
            t_far = np.minimum(np.minimum(np.maximum(tx1, tx2), np.maximum(ty1, ty2)), np.maximum(tz1, tz2))
            better = (t_near <= t_far) & (t_near > NEAR) & (t_near < depth[R, C])
        hit = np.flatnonzero(better)
        if len(hit) == 0:
            continue
        tn = t_near[hit]
        ddx, ddy = dx[hit], dy[hit]
        R, C = R[hit], C[hit]
        ddz = dzw[R, C]
        axis = np.where(tn == txn[hit], 0, np.where(tn == tyn[hit], 1, 2))
        comp = np.choose(axis, (ddx, ddy, ddz))
        depth[R, C] = tn
        src[R, C] = aid
        face[R, C] = 2 * axis + (comp > 0)  # a ray going +x enters through the -x face
        pbx[R, C] = o[0] + tn * ddx
        pby[R, C] = o[1] + tn * ddy
        pbz[R, C] = o[2] + tn * ddz

    rgb = np.empty((H, W, 3), np.float32)
    # -- sky ---------------------------------------------------------------------------------------
    sky = src == SKY
    if sky.any():
        el = np.arcsin(np.clip(dzw[sky] / dist_scale[sky], -1.0, 1.0)).astype(np.float32)
        az = np.arctan2(dyw[sky], dxw[sky]).astype(np.float32)
        k = np.clip(el / 0.6, 0.0, 1.0)[:, None]
        horizon = np.array([0.80, 0.86, 0.93], np.float32)
        zenith = np.array([0.38, 0.56, 0.86], np.float32)
        clouds = np.clip(_value_noise(az * 8.0, el * 20.0, 1.0, 7) + _value_noise(az * 8.0, el * 20.0, 0.4, 8) * 0.5,
                         0.0, 1.0)[:, None] * (1.0 - k)
        rgb[sky] = horizon + k * (zenith - horizon) + clouds * 0.35
    # -- ground ------------------------------------------------------------------------------------
    gmask = (src < 0) & ~sky
    if gmask.any():
        _shade_ground(rgb, gmask, g, depth, src, origin, dxw, dyw, dzw, dist_scale, cam)
    # -- actors ------------------------------------------------------------------------------------
    amask = src >= 0
    if amask.any():
        _shade_actors(rgb, amask, src, face, pbx, pby, pbz, depth, dist_scale, dxw, dyw, dzw, info, scene.seed, cam)

    img = rgb * 255.0
    if noise_std > 0:
        img += rng.normal(0.0, noise_std, size=(H, W, 1)).astype(np.float32)
    out = np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
    return CameraFrame(rgb=out, depth=depth.astype(np.float32), source=src, camera=cam,
                       ego_pose=(ex, ey, ez, eyaw))


def _shade_ground(rgb, gmask, g, depth, src, origin, dxw, dyw, dzw, dist_scale, cam) -> None:
    t = depth[gmask]
    x = origin[0] + t * dxw[gmask]
    y = origin[1] + t * dyw[gmask]
    z = origin[2] + t * dzw[gmask]
    s, lat = g.s[gmask], g.lat[gmask]
    code = src[gmask]
    cos_inc = np.maximum(g.cos_inc[gmask], 0.05)
    # metres per pixel on the surface: across the view dist / fx, along it longer by 1 / cos(incidence);
    # their geometric mean keeps some texture on far road without much aliasing
    fp = (t * dist_scale[gmask] / cam.fx / np.sqrt(cos_inc)).astype(np.float32)
    col = np.empty((len(t), 3), np.float32)
    shade = np.full(len(t), AMBIENT + (1.0 - AMBIENT) * SUN[2], np.float32)

    def put(mask, base, tex, tint=None):
        c = np.asarray(base, np.float32)[None, :] * (1.0 + tex[:, None])
        if tint is not None:
            c = c + tint
        col[mask] = c

    road = code == SURFACE_ROAD
    if road.any():
        tex = _fbm(x[road], y[road], fp[road], 1, ((0.03, 0.45), (0.12, 0.35), (0.5, 0.25), (2.5, 0.2)))
        put(road, (0.31, 0.31, 0.32), tex)
    paint = code == SURFACE_MARKING
    if paint.any():
        tex = _fbm(x[paint], y[paint], fp[paint], 2, ((0.03, 0.2), (0.15, 0.1)))
        put(paint, (0.86, 0.86, 0.83), tex)
    side = code == SURFACE_SIDEWALK
    if side.any():
        tex = _fbm(x[side], y[side], fp[side], 3, ((0.03, 0.35), (0.12, 0.2), (0.6, 0.1)))
        joints = np.maximum(_lines(s[side], 1.25, 0.03, fp[side]), _lines(lat[side], 1.25, 0.03, fp[side]))
        tex = tex - 0.35 * joints
        put(side, (0.62, 0.60, 0.56), tex)
    curb = code == SURFACE_CURB
    if curb.any():
        tex = _fbm(s[curb], z[curb], fp[curb], 4, ((0.03, 0.3), (0.15, 0.15)))
        put(curb, (0.70, 0.70, 0.68), tex)
        shade[curb] = AMBIENT + (1.0 - AMBIENT) * 0.35  # a vertical face: lit at a grazing angle
    grass = code == SURFACE_GRASS
    if grass.any():
        xg, yg, fg = x[grass], y[grass], fp[grass]
        tex = _fbm(xg, yg, fg, 5, ((0.04, 0.6), (0.15, 0.35), (0.8, 0.25), (4.0, 0.2)))
        tint = np.stack([_fbm(xg, yg, fg, 6, ((1.5, 0.12),)), _fbm(xg, yg, fg, 9, ((0.5, 0.08),)),
                         np.zeros_like(xg, dtype=np.float32)], axis=1)
        put(grass, (0.27, 0.42, 0.17), tex, tint)
    rgb[gmask] = col * shade[:, None]


# the realism knobs' vans, trucks and buses are painted like cars (vegetation stays a plain grey box)
_LABEL_CODES = {CAR: 0, PEDESTRIAN: 1, CYCLIST: 2, BUILDING: 3, WALL: 4, POLE: 5, "Van": 0, "Truck": 0, "Bus": 0}


def _actor_table(info: dict, seed: int) -> dict[str, np.ndarray]:
    """Per-actor arrays indexed by actor_id: heading, half sizes, label code and colours."""
    n = max(info) + 1
    tab = {
        "cos": np.ones(n, np.float32), "sin": np.zeros(n, np.float32), "half": np.ones((n, 3), np.float32),
        "label": np.full(n, -1, np.int8),
        "paint": np.zeros((n, 3), np.float32), "shirt": np.zeros((n, 3), np.float32),
        "legs": np.zeros((n, 3), np.float32), "hair": np.zeros((n, 3), np.float32),
        "facade": np.zeros((n, 3), np.float32), "wall": np.zeros(n, np.float32),
    }
    hair = np.array([(0.1, 0.07, 0.05), (0.35, 0.22, 0.1), (0.75, 0.65, 0.4)], np.float32)
    for aid, b in info.items():
        tab["cos"][aid], tab["sin"][aid] = math.cos(b.yaw), math.sin(b.yaw)
        tab["half"][aid] = np.asarray(b.size) / 2.0
        tab["label"][aid] = _LABEL_CODES.get(b.label, -1)
        tab["paint"][aid] = _pick(_CAR_PAINTS, seed, aid, 1)
        tab["shirt"][aid] = _pick(_CLOTHES, seed, aid, 2)
        tab["legs"][aid] = _pick(_CLOTHES, seed, aid, 3) * 0.6
        tab["hair"][aid] = _pick(hair, seed, aid, 4)
        tab["facade"][aid] = _pick(_FACADES, seed, aid, 6)
        tab["wall"][aid] = 0.8 + 0.4 * _hash01(seed, aid, 7)
    return tab


def _shade_actors(rgb, amask, src, face, pbx, pby, pbz, depth, dist_scale, dxw, dyw, dzw, info, seed, cam) -> None:
    tab = _actor_table(info, seed)
    flat = np.flatnonzero(amask)
    ids = src.reshape(-1)[flat]
    f = face.reshape(-1)[flat]
    a = f >> 1  # face axis: 0 front/back, 1 sides, 2 top/bottom
    x, y = pbx.reshape(-1)[flat], pby.reshape(-1)[flat]
    half = tab["half"][ids]
    hl, hw, hh = half[:, 0], half[:, 1], half[:, 2]
    a0, a1, a2 = a == 0, a == 1, a == 2
    # surface coordinates: horizontal along the face, height above the box bottom (top face: x, y)
    horiz = np.where(a0, y, x)
    vert = np.where(a2, y, pbz.reshape(-1)[flat] + hh)
    rel = vert / np.maximum(2.0 * hh, 1e-6)
    # outward normal in the map frame
    sign = np.float32(1.0) - 2.0 * (f & 1).astype(np.float32)
    c, s = tab["cos"][ids], tab["sin"][ids]
    nx = np.where(a0, c, np.where(a1, -s, 0.0)) * sign
    ny = np.where(a0, s, np.where(a1, c, 0.0)) * sign
    nz = np.where(a2, sign, 0.0)
    dist = dist_scale.reshape(-1)[flat]
    dot = (nx * dxw.reshape(-1)[flat] + ny * dyw.reshape(-1)[flat] + nz * dzw.reshape(-1)[flat]) / dist
    fp = (depth.reshape(-1)[flat] * dist * (1.0 / cam.fx) / np.maximum(np.abs(dot), 0.1)).astype(np.float32)
    shade = (AMBIENT + (1.0 - AMBIENT) * np.clip(nx * SUN[0] + ny * SUN[1] + nz * SUN[2], 0.0, 1.0)).astype(np.float32)
    u = horiz + 50.0 * f.astype(np.float32) + (ids % 97).astype(np.float32) * 11.0
    tex = _fbm(u, vert, fp, 10, ((0.02, 0.25), (0.08, 0.2), (0.3, 0.12), (1.0, 0.1)))
    label = tab["label"][ids]
    col = np.full((len(ids), 3), 0.5, np.float32)
    amp = np.full(len(ids), 1.0, np.float32)

    car = np.flatnonzero(label == 0)
    if len(car):
        cid = ids[car]
        cc = tab["paint"][cid]
        ac, fc_, hz, rl, vv = a[car], f[car], horiz[car], rel[car], vert[car]
        lc, wc, hc2 = hl[car], hw[car], 2.0 * hh[car]
        side = ac == 1
        upright = ac != 2
        glass = upright & (rl > 0.58) & (rl < 0.92) & np.where(side, np.abs(hz) < 0.55 * lc, np.abs(hz) < 0.85 * wc)
        cc[glass] = (0.10, 0.12, 0.15)
        cc[glass & (ac == 0)] = (0.14, 0.16, 0.20)
        cc[upright & (rl < 0.22)] = (0.10, 0.10, 0.10)
        r_w = np.minimum(0.33, 0.3 * hc2)
        dwx = np.minimum(np.abs(hz - 0.68 * lc), np.abs(hz + 0.68 * lc))
        r2 = dwx * dwx + (vv - r_w) ** 2
        cc[side & (r2 < r_w * r_w)] = (0.04, 0.04, 0.04)
        cc[side & (r2 < 0.2 * r_w * r_w)] = (0.55, 0.55, 0.56)
        lamp = (ac == 0) & (rl > 0.42) & (rl < 0.55) & (np.abs(hz) > 0.6 * wc)
        cc[lamp] = np.where((fc_[lamp] == 0)[:, None], (0.95, 0.95, 0.85), (0.8, 0.05, 0.05))
        cc[(ac == 0) & (rl > 0.25) & (rl < 0.36) & (np.abs(hz) < 0.25)] = (0.92, 0.92, 0.92)
        col[car] = cc
        amp[car] = 0.6
    person = np.flatnonzero((label == 1) | (label == 2))
    if len(person):
        pid, rl = ids[person], rel[person]
        cc = tab["shirt"][pid]
        low = rl < 0.47
        cc[low] = tab["legs"][pid[low]]
        cc[rl > 0.86] = (0.80, 0.62, 0.50)
        top = rl > 0.95
        cc[top] = tab["hair"][pid[top]]
        bike = (label[person] == 2) & (rl < 0.4)
        cc[bike] = (0.12, 0.12, 0.14)
        frame = bike & (np.abs(vert[person] - 0.36 * hh[person]) < 0.05)
        cc[frame] = tab["paint"][pid[frame]]
        col[person] = cc
        amp[person] = 0.8
    bld = np.flatnonzero(label == 3)
    if len(bld):
        bid, ab, hz, vv = ids[bld], a[bld], horiz[bld], vert[bld]
        cc = tab["facade"][bid]
        floor_h, bay = 3.2, 3.0
        hv = np.mod(vv, floor_h)
        hb = np.mod(hz + 0.5 * bay, bay)
        inner = np.abs(hz) - np.where(ab == 0, hw[bld], hl[bld])
        wall_face = (ab != 2) & (vv > 0.6) & (hv > 0.82) & (hv < 2.48) & (hb > 0.72) & (hb < 2.28) & (inner < -0.72)
        window = wall_face & (hv > 0.9) & (hv < 2.4) & (hb > 0.8) & (hb < 2.2) & (inner < -0.8)
        cc[wall_face] = (0.92, 0.92, 0.9)
        wi = np.flatnonzero(window)
        tone = 0.5 + _value_noise(np.floor((hz[wi] + 0.5 * bay) / bay) + bid[wi] * 3.0, np.floor(vv[wi] / floor_h), 1.0, 3)
        cc[wi] = np.stack([0.12 + 0.2 * tone, 0.16 + 0.22 * tone, 0.22 + 0.25 * tone], 1)
        cc[ab == 2] = (0.3, 0.3, 0.32)
        col[bld] = cc
        amp[bld] = 0.8
    wall = np.flatnonzero(label == 4)
    if len(wall):
        vv, hz, fpw = vert[wall], horiz[wall], fp[wall]
        row = np.floor(vv * 5.0)
        joints = np.maximum(_lines(vv, 0.2, 0.015, fpw), _lines(hz + 0.2 * np.mod(row, 2.0), 0.4, 0.015, fpw))
        col[wall] = np.array((0.66, 0.64, 0.60), np.float32)[None, :] * tab["wall"][ids[wall]][:, None]
        tex[wall] -= 0.43 * joints
        amp[wall] = 0.7
    pole = label == 5
    col[pole] = (0.45, 0.46, 0.48)
    amp[pole] = 0.8
    col *= ((1.0 + amp * tex) * shade)[:, None]
    rgb.reshape(-1, 3)[flat] = col


def disparity_from_depth(depth: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """``fx * baseline / depth`` (pixels) as float32; 0 where depth is +inf (sky)."""
    d = np.asarray(depth, dtype=np.float32)
    with np.errstate(divide="ignore"):
        out = np.float32(fx * baseline) / d
    return np.where(np.isfinite(d) & (d > 0), out, np.float32(0.0)).astype(np.float32)
