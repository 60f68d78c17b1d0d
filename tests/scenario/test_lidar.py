"""The rotating-LiDAR simulator: determinism, geometry of returns, occlusion, beam model, speed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.scenario import (
    LIDAR_HEIGHT,
    OBJECT_LABELS,
    SURFACE_CURB,
    SURFACE_MARKING,
    SURFACE_ROAD,
    SURFACE_SIDEWALK,
    Actor,
    BeamModel,
    EgoTrajectory,
    Ground,
    Scene,
    actors_at,
    boxes_in_lidar,
    cast_scan,
    default_scene,
    render_scan,
)

HDL64 = BeamModel.hdl64()


@pytest.fixture(scope="module")
def scene0():
    return default_scene(0)


@pytest.fixture(scope="module")
def scan0(scene0):
    return cast_scan(scene0, 3.0, HDL64, np.random.default_rng(0))


def _elevation_deg(p):
    return np.degrees(np.arctan2(p[:, 2].astype(np.float64), np.hypot(p[:, 0], p[:, 1]).astype(np.float64)))


def _line_of_sight(target, boxes, n=400):
    """True when the segment from the sensor (lidar origin) to the target's centre crosses no other box."""
    seg = np.linspace(0.0, 1.0, n)[:, None] * np.asarray(target.center)[None, :]
    return not any(b.contains(seg) .any() for b in boxes if b is not target)


# -- determinism ---------------------------------------------------------------------------------

def test_same_seed_same_scan_different_seed_different(scene0):
    a = render_scan(scene0, 2.0, HDL64, np.random.default_rng(42))
    b = render_scan(scene0, 2.0, HDL64, np.random.default_rng(42))
    c = render_scan(scene0, 2.0, HDL64, np.random.default_rng(43))
    assert a.dtype == np.float32 and a.ndim == 2 and a.shape[1] == 4
    assert np.array_equal(a, b)
    assert not (a.shape == c.shape and np.array_equal(a, c))
    assert np.array_equal(render_scan(scene0, 2.0, HDL64, 42), a)  # an int seed is the same generator
    # and a different scene seed gives a different world
    d = render_scan(default_scene(1), 2.0, HDL64, np.random.default_rng(42))
    assert not (a.shape == d.shape and np.array_equal(a, d))


def test_noise_free_scan_does_not_depend_on_rng(scene0):
    model = BeamModel.hdl64(range_noise_std=0.0, dropout_prob=0.0, intensity_noise_std=0.0)
    a = render_scan(scene0, 1.0, model, 1)
    b = render_scan(scene0, 1.0, model, 2)
    assert np.array_equal(a, b)


# -- counts and beam geometry --------------------------------------------------------------------

def test_ray_and_point_counts_are_kitti_like(scan0):
    assert HDL64.n_beams == 64 and HDL64.n_azimuth == 2000 and scan0.n_rays == 128_000
    n = len(scan0.points)
    assert 90_000 <= n <= 128_000
    assert len(scan0.ring) == len(scan0.azimuth_index) == len(scan0.source) == n
    # roughly the dropout fraction of the rays that hit something is missing
    assert n < 0.995 * scan0.n_rays


def test_returns_lie_on_their_beams(scan0):
    p = scan0.points
    el_model = np.asarray(HDL64.elevations_deg)
    np.testing.assert_allclose(_elevation_deg(p), el_model[scan0.ring], atol=2e-3)
    az = np.degrees(np.arctan2(p[:, 1], p[:, 0]).astype(np.float64)) % 360.0
    az_model = scan0.azimuth_index * HDL64.azimuth_resolution_deg
    diff = (az - az_model + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(diff)) < 2e-3
    # every beam returns something; nothing outside the model's fan
    assert set(np.unique(scan0.ring)) == set(range(64))
    el = _elevation_deg(p)
    assert el.min() > -24.9 - 0.01 and el.max() < 2.0 + 0.01
    r = np.linalg.norm(p[:, :3], axis=1)
    assert r.max() <= HDL64.max_range + 0.2 and r.min() >= HDL64.min_range - 0.2


def test_points_come_in_firing_order(scan0):
    key = scan0.azimuth_index.astype(np.int64) * 64 + scan0.ring
    assert np.all(np.diff(key) > 0)


@pytest.mark.parametrize("preset,n_beams,lo,hi", [("vlp16", 16, -15.0, 15.0), ("vlp32", 32, -25.0, 15.0)])
def test_other_presets(scene0, preset, n_beams, lo, hi):
    model = getattr(BeamModel, preset)()
    assert model.n_beams == n_beams
    assert model.elevations_deg[0] == lo and model.elevations_deg[-1] == hi
    assert list(model.elevations_deg) == sorted(model.elevations_deg)
    scan = cast_scan(scene0, 3.0, model, 0)
    assert 0.5 * model.n_rays < len(scan.points) <= model.n_rays
    np.testing.assert_allclose(_elevation_deg(scan.points), np.asarray(model.elevations_deg)[scan.ring], atol=2e-3)
    if preset == "vlp16":
        assert np.allclose(np.diff(model.elevations_deg), 2.0)


def test_beam_model_validation():
    with pytest.raises(ValueError):
        BeamModel("bad", (1.0, 1.0))
    with pytest.raises(ValueError):
        BeamModel("bad", (0.0,), dropout_prob=1.0)
    with pytest.raises(ValueError):
        BeamModel("bad", (0.0,), min_range=5.0, max_range=1.0)
    m = BeamModel("mine", (3.0, -1.0, 1.0), n_azimuth=360)
    assert m.elevations_deg == (-1.0, 1.0, 3.0) and m.azimuth_resolution_deg == 1.0
    assert HDL64.elevations_deg[-1] == 2.0 and HDL64.elevations_deg[0] == -24.9


# -- ground ----------------------------------------------------------------------------------------

def test_flat_ground_is_at_minus_mount_height():
    scene = Scene(actors=(), ground=Ground(curb_height=0.0))
    scan = cast_scan(scene, 0.0, HDL64, 0)
    z = scan.points[:, 2]
    assert np.all(np.abs(z + LIDAR_HEIGHT) < 0.1)
    assert abs(np.median(z) + LIDAR_HEIGHT) < 0.005
    # only the beams that reach the ground within max_range return
    reach = np.asarray(HDL64.elevations_deg) < -math.degrees(math.atan2(LIDAR_HEIGHT, HDL64.max_range))
    assert set(np.unique(scan.ring)) == set(np.nonzero(reach)[0])
    expected = reach.sum() * HDL64.n_azimuth * (1.0 - HDL64.dropout_prob)
    assert abs(len(z) - expected) < 0.01 * expected


def test_road_points_in_default_scene(scan0):
    p, src = scan0.points, scan0.source
    road = np.isin(src, (SURFACE_ROAD, SURFACE_MARKING))
    side = src == SURFACE_SIDEWALK
    assert road.sum() > 20_000 and side.sum() > 500 and (src == SURFACE_CURB).sum() > 50
    assert np.all(np.abs(p[road, 2] + LIDAR_HEIGHT) < 0.1)
    assert np.all(np.abs(p[side, 2] + LIDAR_HEIGHT - 0.15) < 0.1)
    # in world y (ego in the right lane at y = -1.75) road points lie between the curbs, sidewalk beyond
    y_world = p[:, 1] + scan0.ego_pose[1]
    assert np.all(np.abs(y_world[road]) <= 6.0 + 0.05)
    assert np.all(np.abs(y_world[side]) >= 6.0 - 0.05)


def test_sloped_ground_follows_the_grade():
    scene = Scene(actors=(), ground=Ground(grade=0.02, curb_height=0.0))
    p = render_scan(scene, 1.0, BeamModel.vlp16(), 0)
    np.testing.assert_allclose(p[:, 2], -LIDAR_HEIGHT + 0.02 * p[:, 0], atol=0.12)
    ahead, behind = p[p[:, 0] > 10], p[p[:, 0] < -10]
    assert np.median(ahead[:, 2]) > np.median(behind[:, 2]) + 0.3


def test_intensity_range_and_paint_is_brighter(scan0):
    i, src = scan0.points[:, 3], scan0.source
    assert i.min() >= 0.0 and i.max() <= 1.0
    assert np.mean(i[src == SURFACE_MARKING]) > 2.0 * np.mean(i[src == SURFACE_ROAD])


# -- objects ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,t", [(0, 0.0), (0, 3.0), (1, 6.0), (2, 9.5)])
def test_visible_objects_get_points_on_their_surface(seed, t):
    scene = default_scene(seed)
    scan = cast_scan(scene, t, HDL64, np.random.default_rng(seed))
    p = scan.points
    boxes = boxes_in_lidar(actors_at(scene, t), scan.ego_pose)
    checked = set()
    for b in boxes:
        aid = b.extras["actor_id"]
        mine = p[scan.source == aid]
        # attributed points are on the box (grown by a noise margin) ...
        assert np.all(b.contains(mine, margin=0.12)), (b.label, aid)
        # ... and on its surface: none deeper than the margin inside
        assert not np.any(b.contains(mine, margin=-0.12)), (b.label, aid)
        if b.label not in OBJECT_LABELS or math.hypot(*b.center[:2]) > 40.0:
            continue
        if not _line_of_sight(b, boxes):
            continue
        grown = b.contains(p, margin=0.1) & (p[:, 2] > b.center[2] - b.size[2] / 2 + 0.05)
        assert len(mine) >= 10 and grown.sum() >= 10, (b.label, aid, len(mine), grown.sum())
        checked.add(b.label)
    assert "Car" in checked


def test_the_three_object_classes_are_all_seen_somewhere():
    seen = set()
    for seed, t in [(0, 0.0), (0, 3.0), (0, 8.0), (1, 5.0)]:
        scene = default_scene(seed)
        scan = cast_scan(scene, t, HDL64, 0)
        counts = np.bincount(scan.source[scan.source >= 0], minlength=len(scene.actors))
        seen |= {a.label for a in scene.actors if counts[a.actor_id] >= 20}
    assert set(OBJECT_LABELS) <= seen


@pytest.mark.parametrize("seed,t", [(0, 3.0), (3, 7.0)])
def test_no_point_inside_any_box(seed, t):
    scene = default_scene(seed)
    scan = cast_scan(scene, t, HDL64, np.random.default_rng(1))
    for b in boxes_in_lidar(actors_at(scene, t), scan.ego_pose):
        assert not np.any(b.contains(scan.points, margin=-0.12)), b


def _brute_force_ranges(scene, t, model, pose):
    """Reference: every ray against the flat ground and every box, no culling (lidar frame)."""
    el = np.radians(np.asarray(model.elevations_deg))[:, None]
    az = (np.arange(model.n_azimuth) * 2.0 * np.pi / model.n_azimuth)[None, :]
    d = np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1)
    best = np.where(d[..., 2] < 0, LIDAR_HEIGHT / np.maximum(-d[..., 2], 1e-12), np.inf)
    for b in boxes_in_lidar(actors_at(scene, t), pose):
        c, s = np.cos(b.yaw), np.sin(b.yaw)
        o = -np.asarray(b.center)
        o = np.array([c * o[0] + s * o[1], -s * o[0] + c * o[1], o[2]])
        dl = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-np.asarray(b.size) / 2 - o) / dl
            t2 = (np.asarray(b.size) / 2 - o) / dl
        near = np.nanmax(np.minimum(t1, t2), axis=-1)
        far = np.nanmin(np.maximum(t1, t2), axis=-1)
        hit = (near <= far) & (near > 0)
        best = np.where(hit & (near < best), near, best)
    return best


@pytest.mark.parametrize("seed,t,preset", [(0, 2.0, "vlp16"), (1, 7.0, "vlp32"), (2, 4.0, "hdl64")])
def test_matches_brute_force_ray_casting(seed, t, preset):
    """The windowed caster sees exactly what testing every ray against every box sees."""
    base = default_scene(seed)
    scene = Scene(actors=base.actors, ground=Ground(curb_height=0.0), ego=base.ego)
    model = getattr(BeamModel, preset)(range_noise_std=0.0, dropout_prob=0.0, intensity_noise_std=0.0)
    scan = cast_scan(scene, t, model, 0)
    ref = _brute_force_ranges(scene, t, model, scan.ego_pose)
    ref_valid = (ref >= model.min_range) & (ref <= model.max_range)
    got = np.full(ref.shape, np.nan)
    got[scan.ring, scan.azimuth_index] = np.linalg.norm(scan.points[:, :3].astype(np.float64), axis=1)
    assert np.array_equal(~np.isnan(got), ref_valid)
    np.testing.assert_allclose(got[ref_valid], ref[ref_valid], rtol=1e-5, atol=1e-4)


def test_object_points_face_the_sensor(scan0, scene0):
    """Hits are on the near side of a box: the ray up to just short of the point stays outside it."""
    p = scan0.points[:, :3].astype(np.float64)
    r = np.linalg.norm(p, axis=1)
    checked = 0
    for b in boxes_in_lidar(actors_at(scene0, 3.0), scan0.ego_pose):
        mine = scan0.source == b.extras["actor_id"]
        if not mine.any() or min(b.size) < 0.5:
            continue
        q, rq = p[mine], r[mine]
        for f in np.linspace(0.05, 1.0, 24):
            back = q * ((rq - 0.15) * f / rq)[:, None]
            assert not np.any(b.contains(back, margin=-0.05)), b
        checked += 1
    assert checked > 20


def _shadow_scene(with_car: bool) -> Scene:
    ego = EgoTrajectory(x0=0.0, y0=-1.75, speed=6.0)
    ped = Actor(1, "Pedestrian", (16.0, -8.0), (0.8, 0.66, 1.76), 0.0)
    car = Actor(0, "Car", (11.0, -4.75), (4.4, 1.8, 1.5), 0.0)
    return Scene(actors=(car, ped) if with_car else (ped,), ego=ego)


def test_parked_car_shadows_the_pedestrian_behind_it():
    pts = {}
    for with_car in (False, True):
        scene = _shadow_scene(with_car)
        scan = cast_scan(scene, 0.0, HDL64, 0)
        pts[with_car] = scan.points[scan.source == 1]
        if with_car:
            assert (scan.source == 0).sum() > 200  # the car itself is seen
    # ped bottom is on the sidewalk (0.15 m); in the lidar frame heights are shifted by -1.73
    legs = lambda q: q[q[:, 2] < 1.2 - LIDAR_HEIGHT]  # noqa: E731
    assert len(pts[False]) >= 100 and len(legs(pts[False])) >= 50
    assert len(pts[True]) < 0.5 * len(pts[False])
    assert len(legs(pts[True])) == 0  # only the head and shoulders clear the car roof


def test_objects_hide_the_ground_behind_them():
    free = cast_scan(Scene(actors=()), 0.0, HDL64, 0)
    wall = Actor(0, "Wall", (20.0, -1.75), (0.3, 6.0, 3.0), 0.0)
    blocked = cast_scan(Scene(actors=(wall,)), 0.0, HDL64, 0)
    ahead = lambda s: (np.abs(s.points[:, 1]) < 1.0) & (s.points[:, 0] > 16.0)  # noqa: E731
    assert ahead(free).sum() > 200
    hits = blocked.points[ahead(blocked)]
    assert np.all(hits[:, 0] < 15.0 + 0.2)  # the wall's face is at x = 15 - 0.15 in the lidar frame
    assert np.all(blocked.source[ahead(blocked)] == 0)
