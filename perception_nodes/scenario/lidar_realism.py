"""The LiDAR sweep with realism knobs on (:mod:`perception_nodes.scenario.realism`).

Same ray grid and the same base noise draws as :func:`perception_nodes.scenario.lidar.cast_scan`, but:

* the sensor may be tilted (roll, pitch) and sit at any height: rays are rotated into the level,
  base_link-parallel frame at the sensor for casting, and points come back along the *sensor's* rays,
  i.e. in the tilted sensor frame (what ``/tf_static`` then maps into base_link);
* boxes are cast with per-ray directions (a tilted sensor's rays no longer form an elevation x azimuth
  grid in the level frame), in an angular window widened by the tilt;
* cars and vans are a body plus a glass cabin; vegetation is a scattering volume; the ego body blocks
  rays of the lowest rings; object returns drop out with paint, incidence and range, and get extra
  range noise; intensity follows the target's calibration.

Every extra random draw comes from :meth:`RealismState.scan_rng`, never from ``rng``, so the base noise
of a scan is the same with and without each knob.
"""

from __future__ import annotations

import math

import numpy as np

from perception_nodes.scenario.lidar import (
    SURFACE_REFLECTIVITY,
    BeamModel,
    ScanResult,
    _safe,
    _tables,
    cast_ground,
)
from perception_nodes.scenario.realism import (
    INTENSITY_SCALE,
    RealismState,
    VAN,
    VEGETATION,
    is_soft_target,
    vegetation_shape,
)
from perception_nodes.scenario.scene import CAR, Scene, actors_at, ego_pose3d


def _window(center, yaw, half, model: BeamModel, tilt_deg: float):
    """(row slice, column indices) of the rays that may hit a box (level frame), widened by the tilt."""
    el = np.asarray(model.elevations_deg)
    n_az = model.n_azimuth
    cx, cy, cz = center
    hl, hw, hh = half
    c, s = math.cos(yaw), math.sin(yaw)
    ox, oy = -(c * cx + s * cy), -(-s * cx + c * cy)
    d_min = math.hypot(max(abs(ox) - hl, 0.0), max(abs(oy) - hw, 0.0))
    if d_min > model.max_range:
        return None
    corners = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]]) @ np.array([[c, s], [-s, c]]) + (cx, cy)
    d_max = float(np.max(np.hypot(corners[:, 0], corners[:, 1])))
    step = 2.0 * math.pi / n_az
    margin = int(math.ceil(math.radians(tilt_deg) / step)) + 1
    if d_min < 0.5:
        cols = np.arange(n_az)
    else:
        a_c = math.atan2(cy, cx)
        rel = np.arctan2(corners[:, 1], corners[:, 0]) - a_c
        rel = (rel + math.pi) % (2.0 * math.pi) - math.pi
        j0 = math.floor((a_c + rel.min()) / step) - margin
        j1 = math.ceil((a_c + rel.max()) / step) + margin
        cols = np.arange(n_az) if j1 - j0 + 1 >= n_az else np.arange(j0, j1 + 1) % n_az
    z_top, z_bot = cz + hh, cz - hh
    el_hi = math.degrees(math.atan2(z_top, max(d_min, 1e-3) if z_top >= 0 else d_max)) + tilt_deg
    el_lo = math.degrees(math.atan2(z_bot, d_max if z_bot >= 0 else max(d_min, 1e-3))) - tilt_deg
    r0 = int(np.searchsorted(el, el_lo - 1e-6, side="left"))
    r1 = int(np.searchsorted(el, el_hi + 1e-6, side="right"))
    if r0 >= r1:
        return None
    return slice(r0, r1), cols


def _box_frame(center, yaw, L, rows, cols):
    """Origin and ray directions of a window in the box frame."""
    cx, cy, cz = center
    c, s = math.cos(yaw), math.sin(yaw)
    o = (-(c * cx + s * cy), -(-s * cx + c * cy), -cz)
    lx, ly, lz = (a[rows][:, cols] for a in L)
    return o, (c * lx + s * ly, -s * lx + c * ly, lz)


def _cast_box(center, yaw, half, L, window, buf, code, glass_faces=False):
    """Slab test of one box against the window's rays; updates ``buf`` (t, cos, src, glass)."""
    rows, cols = window
    (ox, oy, oz), (dx, dy, dz) = _box_frame(center, yaw, L, rows, cols)
    hl, hw, hh = half
    if abs(ox) < hl and abs(oy) < hw and abs(oz) < hh:
        return
    ix, iy, iz = 1.0 / _safe(dx), 1.0 / _safe(dy), 1.0 / _safe(dz)
    tx1, tx2 = (-hl - ox) * ix, (hl - ox) * ix
    ty1, ty2 = (-hw - oy) * iy, (hw - oy) * iy
    tz1, tz2 = (-hh - oz) * iz, (hh - oz) * iz
    txn, tyn, tzn = np.minimum(tx1, tx2), np.minimum(ty1, ty2), np.minimum(tz1, tz2)
    t_near = np.maximum(np.maximum(txn, tyn), tzn)
    t_far = np.minimum(np.minimum(np.maximum(tx1, tx2), np.maximum(ty1, ty2)), np.maximum(tz1, tz2))
    t_best, cos_best, src_best, glass = buf
    sub_t = t_best[rows][:, cols]
    better = (t_near <= t_far) & (t_near > 0.0) & (t_near < sub_t)
    if not better.any():
        return
    on_z = t_near == tzn
    cos_inc = np.where(t_near == txn, np.abs(dx), np.where(t_near == tyn, np.abs(dy), np.abs(dz)))
    _update(buf, rows, cols, better, t_near, cos_inc, code, (~on_z) if glass_faces else False)


def _update(buf, rows, cols, better, t_new, cos_new, code, glass_new):
    t_best, cos_best, src_best, glass = buf
    r = np.arange(rows.start, rows.stop)[:, None]
    c = np.asarray(cols)[None, :]
    t_best[r, c] = np.where(better, t_new, t_best[r, c])
    cos_best[r, c] = np.where(better, cos_new, cos_best[r, c])
    src_best[r, c] = np.where(better, code, src_best[r, c])
    glass[r, c] = np.where(better, glass_new, glass[r, c])


def _cast_volume(center, yaw, radii, density, L, window, buf, code, rng):
    """A scattering ellipsoid: a ray entering it returns at depth t_in + Exp(1) / density, if still inside."""
    rows, cols = window
    (ox, oy, oz), (dx, dy, dz) = _box_frame(center, yaw, L, rows, cols)
    ax, ay, az = radii
    px, py, pz = ox / ax, oy / ay, oz / az
    qx, qy, qz = dx / ax, dy / ay, dz / az
    a = qx * qx + qy * qy + qz * qz
    b = 2.0 * (px * qx + py * qy + pz * qz)
    c = px * px + py * py + pz * pz - 1.0
    disc = b * b - 4.0 * a * c
    depth = rng.exponential(1.0, size=disc.shape) / density  # drawn for every ray of the window: fixed count
    cos_rand = rng.uniform(0.1, 1.0, size=disc.shape)
    hit = disc > 0.0
    sq = np.sqrt(np.where(hit, disc, 0.0))
    t_in = np.maximum((-b - sq) / (2.0 * a), 0.0)
    t_out = (-b + sq) / (2.0 * a)
    t_hit = t_in + depth
    t_best = buf[0]
    better = hit & (t_out > 0.0) & (t_hit < t_out) & (t_hit < t_best[rows][:, cols])
    if better.any():
        _update(buf, rows, cols, better, t_hit, cos_rand, code, False)


def _car_parts(box_half, rng_shape: np.random.Generator):
    """Body and cabin (centre offset in the box frame, half sizes) inside a car's label box."""
    hl, hw, hh = box_half
    in_l, in_w = rng_shape.uniform(0.04, 0.15), rng_shape.uniform(0.03, 0.1)
    body_h = rng_shape.uniform(0.5, 0.6) * 2 * hh
    cab_l = rng_shape.uniform(0.45, 0.6) * 2 * (hl - in_l)
    cab_off = -rng_shape.uniform(0.0, 0.1) * 2 * hl
    cab_in = rng_shape.uniform(0.08, 0.18)
    top_in = rng_shape.uniform(0.0, 0.06)
    body = ((0.0, 0.0, -hh + body_h / 2.0), (hl - in_l, hw - in_w, body_h / 2.0))
    cab_h = 2 * hh - body_h - top_in
    cabin = ((cab_off, 0.0, -hh + body_h + cab_h / 2.0), (cab_l / 2.0, hw - in_w - cab_in, cab_h / 2.0))
    return body, cabin


def cast_scan_realistic(scene: Scene, t: float, beam_model: BeamModel, rng: np.random.Generator, *,
                        boxes: list | None, state: RealismState) -> ScanResult:
    """The sweep at ``t`` with the knobs of ``state`` (see the module doc)."""
    real = state.realism
    P = real.params
    el, cos_el, sin_el, az, cos_az, sin_az = _tables(beam_model)
    Lx = cos_el[:, None] * cos_az[None, :]
    Ly = cos_el[:, None] * sin_az[None, :]
    Lz = np.broadcast_to(sin_el[:, None], Lx.shape)
    R = state.rotation
    tilt_deg = 0.0
    if state.tilted:
        Lx, Ly, Lz = (R[i, 0] * Lx + R[i, 1] * Ly + R[i, 2] * Lz for i in range(3))
        tilt_deg = math.degrees(math.hypot(state.roll, state.pitch)) + 0.2
    L = (Lx, Ly, np.ascontiguousarray(Lz))
    ex, ey, ez, eyaw = ego_pose3d(t, scene)
    oz_world = ez + state.mount_height
    cyaw, syaw = math.cos(eyaw), math.sin(eyaw)
    hits = cast_ground(scene.ground, (ex, ey, oz_world), cyaw * Lx - syaw * Ly, syaw * Lx + cyaw * Ly, L[2])
    buf = (np.array(hits.t, dtype=np.float64), np.array(hits.cos_inc, dtype=np.float64),
           np.array(hits.src, dtype=np.int32), np.zeros(Lx.shape, dtype=bool))
    srng = state.scan_rng(t)
    if boxes is None:
        boxes = actors_at(scene, t)
    refl, soft = {}, set()
    for b in boxes:
        wx, wy = b.center[0] - ex, b.center[1] - ey
        lc = (cyaw * wx + syaw * wy, -syaw * wx + cyaw * wy, b.center[2] - oz_world)
        half = (b.size[0] / 2.0, b.size[1] / 2.0, b.size[2] / 2.0)
        yaw = b.yaw - eyaw
        aid = int(b.extras["actor_id"])
        refl[aid] = float(b.extras.get("reflectivity", 0.4))
        if is_soft_target(b.label):
            soft.add(aid)
        win = _window(lc, yaw, half, beam_model, tilt_deg)
        if win is None:
            continue
        shape = b.extras.get("shape", "box")
        if b.label == VEGETATION and shape != "box":
            kind, density = vegetation_shape(shape)
            hh = half[2]
            if kind == "tree":
                crown_h = 0.6 * hh
                crown_c = (lc[0], lc[1], lc[2] + hh - crown_h)
                _cast_volume(crown_c, yaw, (half[0], half[1], crown_h), density, L, win, buf, aid, srng)
                trunk_h = hh - crown_h
                _cast_box((lc[0], lc[1], lc[2] - hh + trunk_h), yaw, (0.15, 0.15, trunk_h), L, win, buf, aid)
            else:
                _cast_volume(lc, yaw, half, density, L, win, buf, aid, srng)
        elif real.car_shape and b.label in (CAR, VAN):
            # the shape is a pure function of the actor (same car, same shape in every frame)
            parts = _car_parts(half, np.random.default_rng([state.seed, 11, 7, aid]))
            c, s = math.cos(yaw), math.sin(yaw)
            for k, ((px, py, pz), ph) in enumerate(parts):
                pc = (lc[0] + c * px - s * py, lc[1] + s * px + c * py, lc[2] + pz)
                _cast_box(pc, yaw, ph, L, win, buf, aid, glass_faces=(k == 1))
        else:
            _cast_box(lc, yaw, half, L, win, buf, aid)
    t_best, cos_best, src_best, glass = buf

    # base sensor effects: the same draws as the plain model
    shape = t_best.shape
    range_noise = rng.normal(0.0, beam_model.range_noise_std, size=shape)
    keep_u = rng.random(size=shape)
    intensity_noise = rng.normal(0.0, beam_model.intensity_noise_std, size=shape)
    # realism draws (own stream, fixed count)
    u_drop = srng.random(size=shape)
    u_glass = srng.random(size=shape)
    n_obj = srng.standard_normal(size=shape)
    u_zero = srng.random(size=shape)
    n_int = srng.standard_normal(size=shape)

    valid = (np.isfinite(t_best) & (t_best >= beam_model.min_range) & (t_best <= beam_model.max_range)
             & (keep_u >= beam_model.dropout_prob))
    if state.blocked is not None:
        valid &= ~state.blocked
    if real.car_shape and not state.ideal:
        valid &= ~(glass & (u_glass >= P.glass_return))
    is_obj = src_best >= 0
    if soft:
        soft_ids = np.array(sorted(soft), dtype=np.int64)
        soft_mask = is_obj & np.isin(src_best, soft_ids)
    else:
        soft_mask = np.zeros(shape, dtype=bool)
    ids = np.array(sorted(refl), dtype=np.int64)
    vals = np.array([refl[i] for i in ids]) if len(ids) else np.zeros(0)

    def rho_of(src):
        rho = np.empty(src.shape, dtype=np.float64)
        for code, value in SURFACE_REFLECTIVITY.items():
            rho[src == code] = value
        o = src >= 0
        if o.any():
            rho[o] = vals[np.searchsorted(ids, src[o])]
        return rho

    if real.object_dropout and not state.ideal and soft_mask.any():
        r_, c_ = np.nonzero(soft_mask & valid)
        rho = rho_of(src_best[r_, c_])
        p_keep = (np.clip(0.7 + 1.0 * rho, 0.6, 0.97) * (0.5 + 0.5 * cos_best[r_, c_])
                  * np.exp(-t_best[r_, c_] / 200.0))
        drop = u_drop[r_, c_] >= p_keep
        valid[r_[drop], c_[drop]] = False

    az_idx, ring = np.nonzero(valid.T)
    rng_true = t_best[ring, az_idx]
    src = src_best[ring, az_idx]
    extra = np.zeros(rng_true.shape)
    if real.object_noise and not state.ideal:
        extra = np.where(soft_mask[ring, az_idx], n_obj[ring, az_idx] * P.object_noise_m, 0.0)
    r = np.maximum(rng_true + range_noise[ring, az_idx] + extra, 0.0)
    ce = cos_el[ring]
    x = r * ce * cos_az[az_idx]
    y = r * ce * sin_az[az_idx]
    z = r * sin_el[ring]

    rho = rho_of(src)
    cos_i = cos_best[ring, az_idx]
    if real.intensity:
        scale = INTENSITY_SCALE[real.target]
        level = np.zeros(src.shape)
        for code, value in P.ground_levels.items():
            level[src == code] = value
        o = src >= 0
        level[o] = P.object_level * (rho[o] / 0.4) ** P.object_gamma * (0.6 + 0.4 * cos_i[o])
        inten = level * np.exp(-rng_true / P.falloff_m) * np.exp(0.3 * n_int[ring, az_idx])
        p0 = P.zero_floor + (1.0 - P.zero_floor) * (1.0 - np.exp(-(rng_true / P.zero_range_m) ** 3))
        dark = o & soft_mask[ring, az_idx]
        p0 = np.where(dark, p0 + (1.0 - p0) * P.dark_paint_zero * np.clip((0.6 - rho) / 0.15, 0.0, 1.0), p0)
        inten = np.where(u_zero[ring, az_idx] < p0, 0.0, inten)
        top = 0.99 if scale == 1.0 else 255.0
        inten = np.clip(np.round(inten / P.quantum) * P.quantum, 0.0, top) / scale
    else:
        inten = rho * (0.3 + 0.7 * cos_i) * (1.0 - 0.4 * np.minimum(rng_true / beam_model.max_range, 1.0))
        inten = np.clip(inten + intensity_noise[ring, az_idx], 0.0, 1.0)

    points = np.stack([x, y, z, inten], axis=1).astype(np.float32)
    return ScanResult(points=points, ring=ring.astype(np.uint16), azimuth_index=az_idx.astype(np.int32),
                      source=src.astype(np.int32), n_rays=beam_model.n_rays, ego_pose=(ex, ey, ez, eyaw))


def level_scan(scan: ScanResult, state: RealismState | None, beam_model: BeamModel) -> ScanResult:
    """The scan's points rotated into the level, base_link-parallel frame at the sensor, with the azimuth
    column recomputed from the rotated points (for ground-truth grids built in base_link's x/y)."""
    if state is None or not state.tilted:
        return scan
    from dataclasses import replace

    p = scan.points.astype(np.float64)
    q = p[:, :3] @ state.rotation.T
    step = 2.0 * math.pi / beam_model.n_azimuth
    col = np.round(np.mod(np.arctan2(q[:, 1], q[:, 0]), 2.0 * math.pi) / step).astype(np.int64) % beam_model.n_azimuth
    pts = np.concatenate([q, p[:, 3:4]], axis=1).astype(np.float32)
    return replace(scan, points=pts, azimuth_index=col.astype(np.int32))
