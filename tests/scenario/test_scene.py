"""The procedural street scene: layout, kinematics, ground contact, frames."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.boxes import Box3D
from perception_nodes.scenario import (
    ALL_LABELS,
    OBJECT_LABELS,
    Actor,
    Ground,
    Scene,
    actors_at,
    boxes_in_base_link,
    boxes_in_map,
    default_scene,
    ego_pose,
    ego_pose3d,
)
from tests.scenario._geometry import bev_overlap




def _ego_box(scene: Scene, t: float) -> Box3D:
    x, y, yaw = ego_pose(t, scene)
    return Box3D("Ego", (x, y, 0.75), scene.ego.size, yaw)


def test_default_scene_is_deterministic_per_seed():
    assert default_scene(0) == default_scene(0)
    assert default_scene(0) != default_scene(1)
    a, b = default_scene(3), default_scene(3)
    assert [x.box_at(2.0, a.ground) for x in a.actors] == [x.box_at(2.0, b.ground) for x in b.actors]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_scene_has_the_promised_content(seed):
    scene = default_scene(seed)
    labels = [a.label for a in scene.actors]
    assert set(labels) <= set(ALL_LABELS)
    assert len({a.actor_id for a in scene.actors}) == len(scene.actors)
    moving_cars = [a for a in scene.actors if a.label == "Car" and a.dynamic]
    parked = [a for a in scene.actors if a.label == "Car" and not a.dynamic]
    assert 1 <= len(moving_cars) <= 2
    assert labels.count("Pedestrian") == 2 and all(a.dynamic for a in scene.actors if a.label == "Pedestrian")
    assert labels.count("Cyclist") == 1
    # parked cars on both sides, in the parking strips, along the whole ~120 m stretch
    left = [a for a in parked if a.xy[1] > 0]
    right = [a for a in parked if a.xy[1] < 0]
    assert len(left) >= 8 and len(right) >= 8
    for a in parked:
        assert 3.5 < abs(a.xy[1]) < scene.ground.road_half_width
    xs = [a.xy[0] for a in parked]
    assert min(xs) < 5 and max(xs) > 115
    # poles on the sidewalks, buildings beyond them on both sides
    for label, lo, hi in (("Pole", 6.0, 10.5), ("Building", 10.5, 40.0)):
        group = [a for a in scene.actors if a.label == label]
        assert any(a.xy[1] > 0 for a in group) and any(a.xy[1] < 0 for a in group)
        for a in group:
            assert lo < abs(a.xy[1]) < hi


def test_ego_drives_along_the_road_at_5_to_8_mps():
    scene = default_scene(0)
    for t in np.arange(0.0, scene.duration, 0.5):
        (x0, y0, yaw0), (x1, y1, _) = ego_pose(t, scene), ego_pose(t + 0.1, scene)
        speed = math.hypot(x1 - x0, y1 - y0) / 0.1
        assert 5.0 <= speed <= 8.0
        assert abs(y0 - (-1.75)) < 1e-9 and abs(yaw0) < 1e-12
    assert ego_pose(0.0) == ego_pose(0.0, scene)  # default trajectory without a scene
    assert ego_pose(scene.duration, scene)[0] - ego_pose(0.0, scene)[0] > 60.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_no_boxes_overlap_and_ego_hits_nothing(seed):
    scene = default_scene(seed)
    static = actors_at(scene, 0.0)
    static = [b for b, a in zip(static, scene.actors) if not a.dynamic]
    corners_static = [b.corners_xy() for b in static]
    for i in range(len(static)):
        for j in range(i + 1, len(static)):
            assert not bev_overlap(corners_static[i], corners_static[j]), (static[i], static[j])
    for t in np.arange(0.0, scene.duration + 1e-9, 0.1):
        boxes = actors_at(scene, t) + [_ego_box(scene, t)]
        moving = [b for b in boxes if b.label == "Ego" or b.extras.get("dynamic")]
        polys = [b.corners_xy() for b in boxes]
        lo = np.array([p.min(axis=0) for p in polys])
        hi = np.array([p.max(axis=0) for p in polys])
        for m in moving:
            k = boxes.index(m)
            cand = np.nonzero(np.all(lo <= hi[k], axis=1) & np.all(hi >= lo[k], axis=1))[0]
            for c in cand:
                if c != k:
                    assert not bev_overlap(polys[k], polys[c]), (t, m, boxes[c])


def test_moving_actors_move_at_constant_velocity():
    scene = default_scene(0)
    a0 = {b.extras["actor_id"]: b for b in actors_at(scene, 1.0)}
    a1 = {b.extras["actor_id"]: b for b in actors_at(scene, 2.0)}
    moved = 0
    for aid, b0 in a0.items():
        b1 = a1[aid]
        dx = np.subtract(b1.center[:2], b0.center[:2])
        if b0.extras["dynamic"]:
            np.testing.assert_allclose(dx, b0.extras["velocity"][:2], atol=1e-9)
            assert np.linalg.norm(dx) > 0.5
            moved += 1
        else:
            assert b0.center == b1.center and b0.extras["velocity"] == (0.0, 0.0, 0.0)
    assert moved == len(scene.dynamic_actors) == 5


def test_crossing_pedestrian_crosses_then_waits_on_the_far_sidewalk():
    scene = default_scene(0)
    (ped,) = [a for a in scene.actors if a.label == "Pedestrian" and a.velocity[1] != 0.0]
    ys = [ped.xy_at(t)[1] for t in np.arange(0.0, 20.0, 0.5)]
    assert ys[0] > scene.ground.road_half_width and ys[-1] < -scene.ground.road_half_width
    assert np.all(np.diff(ys) <= 0)
    late = [ped.box_at(t, scene.ground) for t in (14.0, 18.0)]
    assert late[0].center == late[1].center and late[1].extras["velocity"] == (0.0, 0.0, 0.0)


def test_boxes_stand_on_the_ground_or_the_sidewalk():
    scene = default_scene(0)
    g = scene.ground
    straddled = 0
    for t in (0.0, 1.2, 10.3, 14.0):  # 1.2 s, 10.3 s: the crossing pedestrian straddles a curb
        for b in actors_at(scene, t):
            bottom = b.center[2] - b.size[2] / 2.0
            on_sidewalk = np.any(np.abs(b.corners_xy()[:, 1]) > g.road_half_width)
            assert bottom == pytest.approx(g.curb_height if on_sidewalk else 0.0), b
            straddled += b.label == "Pedestrian" and abs(abs(b.center[1]) - g.road_half_width) < 0.4
    assert straddled == 2


def test_sloped_ground_lifts_boxes_and_ego():
    ground = Ground(grade=0.03, curb_height=0.0)
    car = Actor(0, "Car", (50.0, 4.0), (4.0, 1.8, 1.5), 0.0)
    scene = Scene(actors=(car,), ground=ground)
    (b,) = actors_at(scene, 0.0)
    assert b.center[2] == pytest.approx(0.03 * 52.0 + 0.75)  # rests on the higher (front) end
    x, y, z, yaw = ego_pose3d(2.0, scene)
    assert z == pytest.approx(0.03 * x)
    assert ground.height_at(10.0, 0.0) == pytest.approx(0.3)


def test_boxes_in_base_link_known_values():
    b = Box3D("Car", (15.0, -1.75, 0.75), (4.0, 1.8, 1.5), 0.3, extras={"velocity": (2.0, 0.0, 0.0)})
    (r,) = boxes_in_base_link([b], (5.0, -1.75, 0.0))
    assert r.center == pytest.approx((10.0, 0.0, 0.75)) and r.yaw == pytest.approx(0.3)
    # ego facing +y: a box 10 m further along +y is straight ahead, a box at +x is on the right
    (ahead, right) = boxes_in_base_link(
        [b, Box3D("Pole", (3.0, 0.0, 3.0), (0.3, 0.3, 6.0), 0.0)], (0.0, -10.0, 1.0, math.pi / 2)
    )
    np.testing.assert_allclose(ahead.center, (8.25, -15.0, -0.25), atol=1e-12)
    assert ahead.yaw == pytest.approx(0.3 - math.pi / 2)
    np.testing.assert_allclose(ahead.extras["velocity"], (0.0, -2.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(right.center, (10.0, -3.0, 2.0), atol=1e-12)
    assert b.extras["velocity"] == (2.0, 0.0, 0.0)  # input untouched


@pytest.mark.parametrize("pose", [(12.3, -1.75, 0.0), (40.0, 3.0, 2.9), (-7.0, 2.0, 0.4, -3.1), (1.0, 1.0, -1.2)])
def test_boxes_in_base_link_round_trip(pose):
    scene = default_scene(1)
    world = actors_at(scene, 3.3, OBJECT_LABELS)
    base = boxes_in_base_link(world, pose)
    back = boxes_in_map(base, pose)
    assert len(back) == len(world)
    for w, b2, bb in zip(world, back, base):
        np.testing.assert_allclose(b2.center, w.center, atol=1e-9)
        assert math.cos(b2.yaw - w.yaw) == pytest.approx(1.0)
        assert -math.pi <= bb.yaw < math.pi
        assert b2.size == w.size and b2.label == w.label
        np.testing.assert_allclose(b2.extras["velocity"], w.extras["velocity"], atol=1e-9)
        # distances to the ego are frame-invariant
        x, y = pose[0], pose[1]
        assert math.hypot(*bb.center[:2]) == pytest.approx(math.hypot(w.center[0] - x, w.center[1] - y))
