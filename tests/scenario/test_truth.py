"""Ground truth: BEV occupancy of the boxes, LiDAR visibility, the path ahead."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.boxes import Box3D
from perception_nodes.pipeline.occupancy import GridSpec
from perception_nodes.scenario import (
    Actor,
    BeamModel,
    EgoTrajectory,
    Faults,
    Scene,
    actors_at,
    boxes_in_base_link,
    cast_scan,
    default_scene,
    ego_pose3d,
    make_scene,
)
from perception_nodes.scenario.truth import occupancy_truth, path_ahead, visibility_truth

SPEC = GridSpec()


def _cell(x, y):
    r, c, inside = SPEC.cell_index(np.array([x]), np.array([y]))
    assert inside[0]
    return int(r[0]), int(c[0])


def test_occupancy_marks_exactly_the_cells_a_footprint_overlaps():
    # an axis-aligned 2 m x 1 m box on cell boundaries covers 8 x 4 cells; a 0.3 m pole at a corner of
    # four cells touches all four
    box = Box3D("Car", (10.0, 5.0, 0.75), (2.0, 1.0, 1.5), 0.0)
    pole = Box3D("Pole", (-5.0, -5.0, 3.0), (0.3, 0.3, 6.0), 0.0)
    g = occupancy_truth([box, pole], SPEC)
    assert g.dtype == np.int8 and g.shape == (320, 320) and set(np.unique(g)) == {0, 100}
    r, c = _cell(9.0 + 1e-6, 4.5 + 1e-6)
    assert np.all(g[r:r + 4, c:c + 8] == 100)
    assert g[r - 1, c] == 0 and g[r, c - 1] == 0 and g[r + 4, c] == 0 and g[r, c + 8] == 0
    r, c = _cell(-5.0, -5.0)
    assert np.all(g[r - 1:r + 1, c - 1:c + 1] == 100)
    assert (g == 100).sum() == 32 + 4
    # a rotated box: every cell whose centre is inside is occupied, and nothing far outside
    rot = Box3D("Car", (0.0, 20.0, 0.75), (4.4, 1.8, 1.5), 0.7)
    g = occupancy_truth([rot], SPEC)
    x, y = SPEC.cell_centers()
    pts = np.stack([x.ravel(), y.ravel(), np.full(x.size, 0.75)], axis=1)
    inside = rot.contains(pts).reshape(x.shape)
    assert np.all(g[inside] == 100)
    assert not np.any((g == 100) & ~rot.contains(pts, margin=0.25 * math.sqrt(2)).reshape(x.shape))


@pytest.mark.parametrize("name", ["urban_street", "curved_road", "highway", "winding_road"])
def test_scenario_occupancy_has_every_box_and_a_free_ego(name):
    scene = make_scene(name, 0)
    t = 2.0
    base = boxes_in_base_link(actors_at(scene, t), ego_pose3d(t, scene))
    g = occupancy_truth(base, SPEC)
    seen = 0
    for b in base:
        row, col, inside = SPEC.cell_index(np.array([b.center[0]]), np.array([b.center[1]]))
        if inside[0]:
            assert g[row[0], col[0]] == 100, b
            seen += 1
    assert seen > 10
    r, c = _cell(0.0, 0.0)
    assert np.all(g[r - 3:r + 4, c - 7:c + 8] == 0)  # the ego's own footprint is free


def _wall_scene():
    wall = Actor(0, "Wall", (25.0, -1.75), (0.5, 10.0, 4.0), 0.0)
    return Scene(actors=(wall,), ego=EgoTrajectory(x0=0.0))


def test_visibility_ends_at_a_wall():
    beams = BeamModel.hdl64()
    scan = cast_scan(_wall_scene(), 0.0, beams, 0)
    vis = visibility_truth(scan, beams, SPEC)
    assert vis.dtype == np.int8 and set(np.unique(vis)) == {0, 100}
    for x in (6.0, 12.0, 20.0, 24.0):  # in front of the wall (its face is at x = 24.75)
        for y in (-2.0, 0.0, 2.0):
            assert vis[_cell(x, y)] == 100, (x, y)
    assert vis[_cell(24.9, 0.0)] == 100  # the wall's face: returns land in it
    for x in (26.0, 30.0, 38.0):  # behind it
        for y in (-1.0, 0.0, 1.0):
            assert vis[_cell(x, y)] == 0, (x, y)
    assert vis[_cell(-20.0, 0.0)] == 100 and vis[_cell(0.0, 30.0)] == 100  # open road elsewhere
    # without the wall the same cells are seen
    open_scan = cast_scan(Scene(actors=(), ego=EgoTrajectory(x0=0.0)), 0.0, beams, 0)
    assert visibility_truth(open_scan, beams, SPEC)[_cell(30.0, 0.0)] == 100


def test_visibility_of_a_lost_sector_is_empty():
    beams = BeamModel.hdl64()
    scan = cast_scan(default_scene(0), 1.0, beams, 0)
    cut = Faults(lidar_sector_deg=(60.0, 120.0)).apply_lidar(scan, 1.0, beams, np.random.default_rng(0))
    vis = visibility_truth(cut, beams, SPEC)
    full = visibility_truth(scan, beams, SPEC)
    # the road to the left of the ego (before the parked cars): seen by the full scan, not by the cut one
    x, y = SPEC.cell_centers()
    az = np.degrees(np.arctan2(y, x))
    wedge = (az > 70.0) & (az < 110.0) & (np.hypot(x, y) > 4.0) & (np.hypot(x, y) < 5.5)
    assert wedge.sum() > 20
    assert np.mean(full[wedge] == 100) > 0.8 and np.all(vis[wedge] == 0)
    assert vis[_cell(10.0, 0.0)] == 100


def test_path_ahead_starts_at_the_ego_and_bends_with_the_road():
    straight = path_ahead(default_scene(0), 1.0)
    assert straight.shape == (31, 3)
    np.testing.assert_allclose(straight[:, 1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(straight[:, 0], np.arange(31.0))
    scene = make_scene("curved_road", 0)
    t = 4.0  # in the left bend
    p = path_ahead(scene, t)
    np.testing.assert_allclose(p[0], 0.0, atol=1e-9)
    k = scene.ego.curvature(t)
    assert k > 0
    # on an arc of curvature k: y ~ k x^2 / 2 for the first metres, heading = k * s
    np.testing.assert_allclose(p[5, 2], 5.0 * k, atol=1e-9)
    assert p[5, 1] == pytest.approx(k * 25.0 / 2.0, rel=0.02)
