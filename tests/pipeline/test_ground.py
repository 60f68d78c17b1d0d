"""Ground segmentation on synthetic scans (flat, sloped, with obstacles, degenerate inputs)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from perception_nodes.pipeline.ground import (
    SPARSE_LIDAR_PARAMS,
    GroundParams,
    estimate_ground,
    segment_ground,
)

from ._synthetic import HDL64_ELEVATIONS, AABox, ground_height, simulate_scan

CAR = AABox((8.0, -1.0, 0.0), (12.0, 1.0, 1.5))
WALL = AABox((-15.3, -20.0, 0.0), (-15.0, 20.0, 3.0))
PEDESTRIAN = AABox((5.0, 6.0, 0.0), (5.4, 6.5, 1.8))


@pytest.fixture(scope="module")
def flat_scene() -> np.ndarray:
    return simulate_scan((CAR, WALL, PEDESTRIAN))


def test_flat_scene_ground_and_obstacles(flat_scene: np.ndarray) -> None:
    mask = segment_ground(flat_scene)
    assert mask.shape == (flat_scene.shape[0],) and mask.dtype == bool
    z = flat_scene[:, 2]
    on_ground = z < 0.01
    assert on_ground.sum() > 50_000
    assert mask[on_ground].mean() >= 0.995
    # obstacle surfaces more than 0.25 m up are never ground
    high = z > 0.25
    assert (~mask[high]).mean() >= 0.99
    # each obstacle is found
    for box in (CAR, WALL, PEDESTRIAN):
        inside = box.contains_xy(flat_scene[:, 0], flat_scene[:, 1]) & (z > 0.25)
        assert inside.sum() >= 20
        assert (~mask[inside]).mean() >= 0.98


@pytest.mark.parametrize(
    ("slope", "azimuth"), [(5.0, 0.0), (5.0, 90.0), (5.0, 37.0), (5.0, 200.0), (8.0, 135.0)]
)
def test_tilted_plane_is_ground(slope: float, azimuth: float) -> None:
    pts = simulate_scan(slope_deg=slope, slope_azimuth_deg=azimuth)
    est = estimate_ground(pts)
    rng = np.hypot(pts[:, 0], pts[:, 1])
    assert est.mask[rng < 40].mean() >= 0.999
    assert est.mask.mean() >= 0.99
    # the estimated local ground follows the plane (the points lie on it)
    assert np.nanpercentile(np.abs(est.height[rng < 40]), 99) < 0.1


def test_obstacle_on_slope_is_not_ground() -> None:
    slope, azimuth = 5.0, 0.0
    gz = float(ground_height(np.array(15.0), np.array(0.0), slope, azimuth))
    # a car-sized box standing on the 5° slope, 15 m ahead (its bottom sunk into the uphill side)
    box = AABox((13.0, -1.0, gz - 0.2), (17.0, 1.0, gz + 1.5))
    pts = simulate_scan((box,), slope_deg=slope, slope_azimuth_deg=azimuth)
    mask = segment_ground(pts)
    surface = ground_height(pts[:, 0], pts[:, 1], slope, azimuth)
    above = pts[:, 2] - surface
    on_box = box.contains_xy(pts[:, 0], pts[:, 1]) & (above > 0.3)
    assert on_box.sum() > 100
    assert (~mask[on_box]).mean() >= 0.98
    off_box = above < 0.01
    assert mask[off_box].mean() >= 0.99


def test_sideways_slope_behind_occluder_followed() -> None:
    # ground rising sideways; a long wall at y = -6 hides part of the right side; the left stays ground
    wall = AABox((-30.0, -6.3, -5.0), (30.0, -6.0, 3.0))
    pts = simulate_scan((wall,), slope_deg=4.0, slope_azimuth_deg=90.0)
    mask = segment_ground(pts)
    above = pts[:, 2] - ground_height(pts[:, 0], pts[:, 1], 4.0, 90.0)
    assert mask[above < 0.01].mean() >= 0.995
    assert (~mask[above > 0.3]).mean() >= 0.99


@pytest.mark.parametrize("slope", [0.0, 5.0])
def test_sparse_16_beam_sensor(slope: float) -> None:
    # VLP-16-like: 16 beams from -15° to +15°, 1.8 m up; ground rings lie 1 m to 70 m apart
    beams = tuple(np.linspace(-15.0, 15.0, 16).tolist())
    pts = simulate_scan((CAR, WALL), sensor=(0.0, 0.0, 1.8), elevations_deg=beams, slope_deg=slope)
    mask = segment_ground(pts, SPARSE_LIDAR_PARAMS)
    above = pts[:, 2] - ground_height(pts[:, 0], pts[:, 1], slope)
    assert mask[above < 0.01].mean() >= 0.98
    assert (~mask[above > 0.3]).mean() >= 0.9


def _terrain(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rolling ground (±0.3 m waves) with a 1 m mound 20 m ahead; 0 at the origin."""
    return 0.3 * np.sin(x / 6) + 0.2 * np.cos(y / 7) - 0.2 + np.exp(-((x - 20) ** 2 + y**2) / 50)


def test_uneven_ground_with_posts() -> None:
    # HDL-64-like ring pattern draped over uneven terrain (2 cm noise), plus 0.3 m-wide posts on it
    rng = np.random.default_rng(0)
    el = np.radians([e for e in HDL64_ELEVATIONS if e < -0.5])
    ranges = 1.73 / np.tan(-el)
    r, a = np.meshgrid(ranges[ranges < 80], np.radians(np.arange(0.0, 360.0, 0.2)))
    x, y = (r * np.cos(a)).ravel(), (r * np.sin(a)).ravel()
    ground = np.c_[x, y, _terrain(x, y) + rng.normal(0, 0.02, x.size)]
    posts = []
    for px, py in ((20.0, 0.0), (10.0, -6.0), (-15.0, 12.0), (30.0, 25.0)):
        n = 300
        qx, qy = px + rng.uniform(-0.15, 0.15, n), py + rng.uniform(-0.15, 0.15, n)
        posts.append(np.c_[qx, qy, _terrain(qx, qy) + rng.uniform(0.0, 1.5, n)])
    post_pts = np.concatenate(posts)
    pts = np.concatenate([ground, post_pts]).astype(np.float32)
    mask = segment_ground(pts)
    n_ground = ground.shape[0]
    assert mask[:n_ground].mean() >= 0.995
    post_height = post_pts[:, 2] - _terrain(post_pts[:, 0], post_pts[:, 1])
    assert (~mask[n_ground:][post_height > 0.3]).mean() >= 0.98


def test_all_ground_cloud() -> None:
    pts = simulate_scan()
    assert segment_ground(pts).all()


def test_empty_cloud() -> None:
    for empty in (np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float64)):
        est = estimate_ground(empty)
        assert est.mask.shape == (0,) and est.mask.dtype == bool
        assert est.height.shape == (0,)


def test_degenerate_tiny_clouds() -> None:
    assert segment_ground(np.array([[5.0, 0.0, 0.0]])).tolist() == [True]
    assert segment_ground(np.array([[5.0, 0.0, 1.0]])).tolist() == [False]
    same = np.tile(np.array([[3.0, 4.0, 0.05]], np.float32), (100, 1))
    assert segment_ground(same).all()


def test_non_finite_points_never_ground(flat_scene: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    pts = flat_scene.copy()
    bad = rng.choice(pts.shape[0], 500, replace=False)
    pts[bad[:200], 0] = np.nan
    pts[bad[200:350], 2] = np.inf
    pts[bad[350:], 1] = -np.inf
    est = estimate_ground(pts)
    assert not est.mask[bad].any()
    assert np.isnan(est.height[bad]).all()
    good = np.ones(pts.shape[0], bool)
    good[bad] = False
    # the finite points are classified exactly as without the bad rows
    np.testing.assert_array_equal(est.mask[good], segment_ground(flat_scene[good]))
    all_nan = np.full((10, 3), np.nan)
    assert not segment_ground(all_nan).any()


def test_deterministic_and_float64_input(flat_scene: np.ndarray) -> None:
    a = segment_ground(flat_scene)
    b = segment_ground(flat_scene.astype(np.float64)[:, :3])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, segment_ground(flat_scene))


def test_params_validation() -> None:
    with pytest.raises(ValueError):
        GroundParams(ring_zones=((1.0, 1.0),))
    with pytest.raises(ValueError):
        GroundParams(num_sectors=2)
    with pytest.raises(ValueError):
        segment_ground(np.zeros((5, 2)))
    edges = GroundParams().ring_edges()
    assert edges[0] == 0.0 and edges[-1] == GroundParams().max_range
    assert np.all(np.diff(edges) > 0)


@pytest.mark.parametrize("value", [1e30, 3e38, -3e38])
def test_absurd_finite_points_never_ground_and_change_nothing_else(flat_scene: np.ndarray, value: float) -> None:
    bad = np.array([[value, 0.5, 0.0], [0.5, -value, 0.0], [value, value, value]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = estimate_ground(np.concatenate([flat_scene[:, :3], bad]))
    ref = estimate_ground(flat_scene[:, :3])
    # the finite points are classified as without the bad rows; the last bad row (z = ±value, or a
    # range that overflows float32) is never ground
    assert np.array_equal(est.mask[:-3], ref.mask)
    assert not est.mask[-1]
