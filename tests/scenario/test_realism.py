"""Realism knobs of the generator (perception_nodes/scenario/realism.py): each knob does what it claims,
presets are deterministic per seed, and the ground truth stays consistent under a randomised sensor pose."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from perception_nodes.scenario import (
    Actor,
    BeamModel,
    EgoTrajectory,
    Ground,
    SCENARIOS,
    Scene,
    actors_at,
    boxes_in_base_link,
    cast_scan,
    ego_pose3d,
)
from perception_nodes.scenario.lidar_realism import level_scan
from perception_nodes.scenario.realism import (
    KNOBS,
    VEGETATION,
    Realism,
    RealismState,
    apply_scene_realism,
    realism_beams,
)
from perception_nodes.scenario.scenarios import _overlap
from perception_nodes.scenario.truth import ideal_beams, ideal_scan, visibility_truth

HDL64 = BeamModel.hdl64()
HDL32E = BeamModel.hdl32e()
EPS = float(np.finfo(np.float32).eps)


def _state(spec, beams=HDL64, seed=0):
    real = Realism.parse(spec)
    return real, RealismState.create(real, realism_beams(beams, real), seed, mount_height=1.73)


def _car_row_scene(n=6, seed=0):
    """Cars side-on and end-on at 8-30 m around the ego on a flat road, nothing between them and the sensor."""
    rng = np.random.default_rng(seed)
    actors = []
    for i in range(n):
        ang = 2.0 * math.pi * i / n
        d = 8.0 + 22.0 * i / max(n - 1, 1)
        actors.append(Actor(actor_id=i, label="Car", xy=(5.0 + d * math.cos(ang), d * math.sin(ang)),
                            size=(4.2, 1.8, 1.5), yaw=float(rng.uniform(-math.pi, math.pi)),
                            reflectivity=float(rng.uniform(0.15, 0.7))))
    return Scene(actors=tuple(actors), ground=Ground(road_half_width=60.0), ego=EgoTrajectory(x0=5.0, y0=0.0, speed=0.0))


def _bare(box_lidar, beams):
    from perception_nodes.scenario.lidar import _cast_box, _tables

    shape = (beams.n_beams, beams.n_azimuth)
    t = np.full(shape, np.inf)
    _cast_box(tuple(box_lidar.center), box_lidar.yaw, tuple(s / 2 for s in box_lidar.size), beams, _tables(beams), t,
              np.zeros(shape), np.zeros(shape, dtype=np.int32), 0)
    return int(np.isfinite(t).sum())


def _car_stats(scene, beams, state, t=0.0):
    scan = cast_scan(scene, t, beams, np.random.default_rng(1), realism=state)
    mount = state.mount_transform() if state is not None else np.diag([1.0, 1, 1, 1])
    p = scan.points[:, :3].astype(np.float64) @ mount[:3, :3].T
    fills, faces, roofs = [], [], []
    from dataclasses import replace

    h = state.mount_height if state is not None else 1.73
    for b in boxes_in_base_link(actors_at(scene, t, ["Car"]), ego_pose3d(t, scene)):
        bl = replace(b, center=(b.center[0], b.center[1], b.center[2] - h))
        inside = bl.contains(p, margin=0.1)
        q = p[inside] - np.asarray(bl.center)
        c, s = math.cos(-bl.yaw), math.sin(-bl.yaw)
        x, y, z = c * q[:, 0] - s * q[:, 1], s * q[:, 0] + c * q[:, 1], q[:, 2]
        hl, hw, hh = (v / 2 for v in bl.size)
        fills.append(inside.sum() / _bare(bl, beams))
        faces.append(float(np.median(np.min(np.abs([hl - np.abs(x), hw - np.abs(y), hh - np.abs(z)]), axis=0))))
        roofs.append(float(np.mean(z >= hh - 0.15)))
    return np.array(fills), np.array(faces), np.array(roofs)


# -- configuration -------------------------------------------------------------------------------

def test_parse_presets_and_knob_lists():
    assert not Realism.parse(None).active and not Realism.parse("none").active
    allon = Realism.parse("kitti")
    assert allon.knobs_on == KNOBS and allon.params.max_range == 80.0
    assert Realism.parse("nuscenes").params.max_range == 100.0
    assert Realism.parse("kitti:-vegetation,-ground").knobs_on == tuple(k for k in KNOBS if k not in ("vegetation", "ground"))
    assert Realism.parse("kitti:+intensity").knobs_on == ("intensity",)
    assert Realism.parse({"target": "nuscenes", "all": False, "ground": True}).knobs_on == ("ground",)
    assert Realism.parse({"target": "kitti", "vegetation": False}).knobs_on == tuple(k for k in KNOBS if k != "vegetation")
    for bad in ("mars", "kitti:+foo", "kitti:+ground,-intensity"):
        with pytest.raises(ValueError):
            Realism.parse(bad)


def test_hdl32e_preset_matches_nuscenes_geometry():
    b = BeamModel.hdl32e()
    el = np.asarray(b.elevations_deg)
    assert b.n_beams == 32 and b.n_azimuth == 1084 and b.max_range == 100.0
    assert el[0] == pytest.approx(-30.67, abs=0.01) and el[-1] == pytest.approx(10.67, abs=0.01)
    assert np.allclose(np.diff(el), 1.3335, atol=1e-3)


def test_range_cap():
    real, state = _state("kitti:+range_cap")
    beams = realism_beams(HDL64, real)
    scene = SCENARIOS["urban_street"](0)
    scan = cast_scan(scene, 1.0, beams, np.random.default_rng(0), realism=state)
    r = np.linalg.norm(scan.points[:, :3].astype(np.float64), axis=1)
    assert r.max() <= 80.0 + 5 * HDL64.range_noise_std
    plain = cast_scan(scene, 1.0, HDL64, np.random.default_rng(0))
    assert np.linalg.norm(plain.points[:, :3], axis=1).max() > 85.0  # the cap is what removes them


# -- object returns ------------------------------------------------------------------------------

def test_car_fill_falls_in_the_real_band_and_points_leave_the_faces():
    scene = _car_row_scene()
    fill0, face0, roof0 = _car_stats(scene, HDL64, None)
    _, st = _state("kitti:+car_shape,+object_dropout,+object_noise")
    fill1, face1, roof1 = _car_stats(scene, HDL64, st)
    assert np.median(fill0) > 0.9  # control: the plain model fills the box
    assert 0.16 <= np.median(fill1) <= 0.65, fill1
    assert np.median(face0) < 0.01 and np.median(face1) >= 0.04, (face0, face1)
    assert np.median(roof1) < np.median(roof0)


def test_glass_gives_no_return():
    scene = _car_row_scene()
    _, shape_only = _state("kitti:+car_shape")
    with_glass = cast_scan(scene, 0.0, HDL64, np.random.default_rng(1), realism=shape_only)
    ideal = cast_scan(scene, 0.0, HDL64, np.random.default_rng(1), realism=shape_only.geometry_only())
    n_glass, n_ideal = (np.sum(s.source >= 0) for s in (with_glass, ideal))
    assert n_glass < 0.9 * n_ideal  # the cabin's windows lose most of their rays


# -- intensity -----------------------------------------------------------------------------------

def test_kitti_intensity_calibrated_and_quantised():
    _, st = _state("kitti:+intensity")
    scan = cast_scan(SCENARIOS["urban_street"](0), 2.0, HDL64, np.random.default_rng(0), realism=st)
    i = scan.points[:, 3].astype(np.float64)
    assert np.allclose(i * 100, np.round(i * 100), atol=1e-3) and i.max() <= 0.99 + EPS
    r = np.linalg.norm(scan.points[:, :3], axis=1)
    road = (scan.source == -1) & (r < 20)
    assert 0.2 <= np.median(i[road]) <= 0.38  # KITTI asphalt ~0.29 (plain model: 0.07)
    obj = scan.source >= 0
    assert 0.5 <= np.median(i[obj & (i > 0)]) / np.median(i[road]) <= 2.0  # objects ~x1 the ground, not x4.8
    near, far = np.mean(i[r < 20] == 0), np.mean(i[(r >= 40) & (r < 80)] == 0)
    assert 0.02 <= np.mean(i == 0) <= 0.25 and far > 3 * near


def test_nuscenes_intensity_is_255_levels():
    _, st = _state("nuscenes:+intensity", HDL32E)
    scan = cast_scan(SCENARIOS["urban_street"](0), 2.0, HDL32E, np.random.default_rng(0), realism=st)
    raw = scan.points[:, 3].astype(np.float64) * 255.0
    assert np.allclose(raw, np.round(raw), atol=2e-3 * 255 * EPS * 1e3)
    assert 6 <= np.median(raw[scan.source == -1]) <= 16  # nuScenes ground ~11 of 255


# -- pose and ground -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 3])
def test_pose_randomisation_keeps_ground_truth_consistent(seed):
    real, st = _state("kitti:+sensor_pose,+ground", seed=seed)
    assert 1.60 <= st.mount_height <= 1.85 and math.degrees(math.hypot(st.roll, st.pitch)) <= 3.0 + 1e-9
    scene = apply_scene_realism(SCENARIOS["urban_street"](seed), real, seed)
    t = 2.0
    scan = cast_scan(scene, t, HDL64, np.random.default_rng(0), realism=st)
    m = st.mount_transform()
    p = scan.points[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]  # base_link
    pose = ego_pose3d(t, scene)
    tol = 5 * HDL64.range_noise_std + 1e-3
    for b in boxes_in_base_link(actors_at(scene, t), pose):
        mine = scan.source == int(b.extras["actor_id"])
        if mine.sum() >= 5:
            assert b.contains(p[mine], margin=tol).all(), b.label
    ground = scan.source < 0
    c, s = math.cos(pose[3]), math.sin(pose[3])
    wx, wy = pose[0] + c * p[ground, 0] - s * p[ground, 1], pose[1] + s * p[ground, 0] + c * p[ground, 1]
    gz = np.asarray(scene.ground.height_at(wx, wy)) - pose[2]
    near = np.hypot(p[ground, 0], p[ground, 1]) < 30
    assert np.median(np.abs(p[ground, 2] - gz)[near]) < 0.02
    # the tilted sensor sees a tilted ground in its own frame
    if math.hypot(st.roll, st.pitch) > math.radians(0.5):
        q = scan.points[ground][near].astype(np.float64)
        coef, *_ = np.linalg.lstsq(np.c_[q[:, 0], q[:, 1], np.ones(len(q))], q[:, 2], rcond=None)
        assert math.degrees(math.atan(math.hypot(coef[0], coef[1]))) > 0.3


def test_visibility_truth_under_tilt_uses_the_level_frame():
    real, st = _state("kitti:+sensor_pose", seed=3)
    assert st.tilted
    scene = SCENARIOS["urban_street"](3)
    ideal = ideal_scan(scene, 1.0, HDL64, mount_height=st.mount_height, realism=st)
    raw = cast_scan(scene, 1.0, ideal_beams(HDL64), np.random.default_rng(0), realism=st.geometry_only())
    lv = level_scan(raw, st, HDL64)
    assert np.allclose(ideal.points[:, :3], raw.points[:, :3].astype(np.float64) @ st.rotation.T, atol=1e-4)
    assert np.array_equal(ideal.points, lv.points)
    vis = visibility_truth(ideal, HDL64)
    assert 0.05 < np.mean(vis == 100) < 0.9


def test_ground_relief_changes_the_surface_smoothly():
    real, st = _state("kitti:+ground")
    scene = apply_scene_realism(SCENARIOS["curved_road"](0), real, 0)
    relief = scene.ground.relief
    assert relief is not None and 0.005 <= relief.camber <= 0.02
    xs = np.linspace(0, 100, 2001)
    h = relief.height(xs, np.zeros_like(xs) - 3.0, np.full_like(xs, -1.75))
    bumps = h - h.mean()
    assert 0.004 <= bumps.std() <= 0.03  # the 8-36 mm residual band of KITTI, centred
    assert SCENARIOS["curved_road"](0).ground.relief is None  # the plain scene is untouched


# -- clutter, kinds, sizes -----------------------------------------------------------------------

def test_scene_knobs_add_clutter_and_kinds_without_overlaps():
    real = Realism.parse("kitti:+vegetation,+vehicle_kinds,+car_sizes")
    for name in ("urban_street", "highway"):
        plain = SCENARIOS[name](1)
        scene = apply_scene_realism(plain, real, 1)
        labels = [a.label for a in scene.actors]
        assert labels.count(VEGETATION) >= 10
        assert {"Van", "Truck"} & set(labels)
        assert [a.actor_id for a in scene.actors[:len(plain.actors)]] == [a.actor_id for a in plain.actors]
        new = [i for i, a in enumerate(scene.actors)
               if (i >= len(plain.actors) or a != plain.actors[i]) and not a.shape.startswith("tree")]
        # (tree crowns may overhang paths: their trunk is checked when placed)
        for t in np.arange(0.0, scene.duration, 2.0):
            polys = np.array([b.corners_xy() for b in actors_at(scene, float(t))])
            lo, hi = polys.min(axis=1), polys.max(axis=1)
            for i in new:
                near = np.flatnonzero(np.all(lo <= hi[i], axis=1) & np.all(hi >= lo[i], axis=1))
                for j in near[near != i]:
                    assert not _overlap(polys[i], polys[j]), (name, t, scene.actors[i].label, scene.actors[j].label)
    cars = [a for a in apply_scene_realism(SCENARIOS["curved_road"](0), Realism.parse("kitti:+car_sizes"), 0).actors
            if a.label == "Car" and not a.dynamic]
    assert abs(np.mean([a.size[0] for a in cars]) - 3.88) < 0.3  # KITTI's mean car length (plain: 4.3)


def test_barriers_are_opt_in_and_stand_beside_the_road_clear_of_everything():
    assert "barriers" not in Realism.parse("kitti").knobs_on  # not part of a preset's "all on"
    assert "barriers" not in Realism.parse("kitti").to_dict()  # older realism bags keep their /scenario/info
    assert Realism.parse("kitti:+barriers").knobs_on == ("barriers",)
    assert Realism.parse("kitti:-vegetation,+barriers").knobs_on == tuple(k for k in KNOBS if k != "vegetation") + ("barriers",)
    assert Realism.parse({"target": "kitti", "all": False, "barriers": True}).knobs_on == ("barriers",)
    with pytest.raises(ValueError):
        Realism.parse("kitti:-vegetation,+ground")  # '+' beside '-' only for opt-in knobs
    real = Realism.parse("kitti:+barriers")
    for name in ("urban_street", "curved_road"):
        plain = SCENARIOS[name](5)
        scene = apply_scene_realism(plain, real, 5)
        assert scene.actors[:len(plain.actors)] == plain.actors  # nothing else changes
        new = scene.actors[len(plain.actors):]
        assert len(new) >= 5 and all(a.label == "Wall" for a in new)
        sizes = np.array([a.size for a in new])
        assert (sizes[:, 0] >= 3.0).all() and (sizes[:, 0] <= 12.0).all()
        assert (sizes[:, 1] >= 0.2).all() and (sizes[:, 1] <= 0.6).all()
        assert (sizes[:, 2] >= 0.6).all() and (sizes[:, 2] <= 1.0).all()
        g = scene.ground
        _, lat, _ = g.road_coords(np.array([a.xy[0] for a in new]), np.array([a.xy[1] for a in new]))
        # off the road (0.3 m or more beyond its edge; the road-coordinate raster is good to ~1 cm)
        assert (np.abs(lat) - sizes[:, 1] / 2 >= g.road_half_width + 0.3 - 0.02).all()
        for a in new:  # every corner too (straight segments beside a bend bulge towards the road)
            from perception_nodes.scenario.scene import _corners_xy

            c = _corners_xy(a.xy[0], a.xy[1], a.size[0], a.size[1], a.yaw)
            _, lat_c, _ = g.road_coords(c[:, 0], c[:, 1])
            assert np.abs(lat_c).min() >= g.road_half_width - 0.02
        first = len(plain.actors)
        for t in np.arange(0.0, scene.duration, 2.0):
            polys = np.array([b.corners_xy() for b in actors_at(scene, float(t))])
            lo, hi = polys.min(axis=1), polys.max(axis=1)
            for i in range(first, len(scene.actors)):
                near = np.flatnonzero(np.all(lo <= hi[i], axis=1) & np.all(hi >= lo[i], axis=1))
                for j in near[near != i]:
                    assert not _overlap(polys[i], polys[j]), (name, t, scene.actors[j].label)
    assert apply_scene_realism(SCENARIOS["urban_street"](5), real, 5) == apply_scene_realism(SCENARIOS["urban_street"](5), real, 5)


def test_vegetation_returns_are_scattered():
    real, st = _state("kitti:+vegetation")
    scene = apply_scene_realism(SCENARIOS["urban_street"](0), real, 0)
    scan = cast_scan(scene, 1.0, HDL64, np.random.default_rng(0), realism=st)
    veg = {a.actor_id for a in scene.actors if a.label == VEGETATION and a.shape.startswith(("bush", "hedge"))}
    mine = np.isin(scan.source, list(veg))
    assert mine.sum() > 200
    # volumetric: a bush's returns spread through its depth instead of lying on a surface
    ratios = []
    for aid in veg:
        q = scan.points[scan.source == aid, :3].astype(np.float64)
        if len(q) >= 30:
            ev = np.linalg.eigvalsh(np.cov(q.T))
            ratios.append(ev[0] / ev[-1])
    assert ratios and np.median(ratios) > 0.02


def test_ego_occlusion_blocks_part_of_the_lowest_rings():
    _, st = _state("kitti:+ego_occlusion")
    scene = SCENARIOS["urban_street"](0)
    a = cast_scan(scene, 1.0, HDL64, np.random.default_rng(0))
    b = cast_scan(scene, 1.0, HDL64, np.random.default_rng(0), realism=st)
    lost = 1.0 - np.sum(b.ring == 0) / np.sum(a.ring == 0)
    assert 0.2 <= lost <= 0.55
    assert np.sum(b.ring == 40) == np.sum(a.ring == 40)  # mid rings untouched


# -- determinism and the generator ---------------------------------------------------------------

def test_presets_are_deterministic_per_seed():
    def run(seed):
        real, st = _state("nuscenes", HDL32E, seed=seed)
        scene = apply_scene_realism(SCENARIOS["urban_street"](seed), real, seed)
        return cast_scan(scene, 1.0, realism_beams(HDL32E, real), np.random.default_rng([seed, 1]), realism=st).points

    a, b, c = run(2), run(2), run(5)
    assert np.array_equal(a, b)
    assert not (a.shape == c.shape and np.array_equal(a, c))


def test_off_knobs_leave_the_base_noise_unchanged():
    """Turning on a scan-level knob draws from realism's own stream: ground hits away from the
    knob's effect keep their exact values."""
    scene = SCENARIOS["urban_street"](0)
    _, st = _state("kitti:+object_dropout")
    _, none = _state({"target": "kitti", "all": False})
    a = cast_scan(scene, 1.0, HDL64, np.random.default_rng(0), realism=none)
    b = cast_scan(scene, 1.0, HDL64, np.random.default_rng(0), realism=st)
    plain = cast_scan(scene, 1.0, HDL64, np.random.default_rng(0))
    ga, gb = a.points[a.source < 0], b.points[b.source < 0]
    assert np.array_equal(ga, gb)
    assert np.allclose(a.points, plain.points, atol=1e-5) and len(a.points) == len(plain.points)


@pytest.mark.slow
def test_generate_bag_with_realism(tmp_path):
    from perception_nodes.bags.reader import BagReader
    from perception_nodes.scenario.generate import generate_bag
    from perception_nodes.topics import GT_OBJECTS, LIDAR_POINTS, SCENARIO_INFO, TF_STATIC

    out = generate_bag(tmp_path / "bag", scenario="urban_street", seed=4, duration_s=0.2, lidar="hdl32e",
                       cameras=False, progress=False, realism="nuscenes")
    with BagReader(out) as r:
        msgs = {}
        for rec in r.records():
            msgs.setdefault(rec.topic, []).append(rec.msg)
    info = json.loads(msgs[SCENARIO_INFO][0].data)
    assert info["realism"]["target"] == "nuscenes" and info["lidar"]["max_range_m"] == 100.0
    h = info["realism"]["mount_height_m"]
    assert 1.75 <= h <= 1.90 and info["lidar"]["mount_height_m"] == pytest.approx(h)
    tf = [t for t in msgs[TF_STATIC][0].transforms if t.child_frame_id == "velodyne"][0]
    assert tf.transform.translation.z == pytest.approx(h)
    q = tf.transform.rotation
    tilt = 2 * math.degrees(math.asin(min(1.0, math.hypot(q.x, q.y))))
    assert tilt == pytest.approx(math.hypot(info["realism"]["mount_roll_deg"], info["realism"]["mount_pitch_deg"]), abs=1e-3)
    assert len(msgs[LIDAR_POINTS]) == 2 and len(msgs[GT_OBJECTS]) == 2
