"""Evidential occupancy on synthetic scans: hits, free space, shadows, degenerate input, message encoding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from perception_nodes.evidential import expected_probability, vacuity
from perception_nodes.pipeline.ground import estimate_ground, segment_ground
from perception_nodes.pipeline.occupancy import (
    BetaGrid,
    GridSpec,
    OccupancyParams,
    evidential_occupancy,
    to_occupancy_msg_data,
)

from ._synthetic import AABox, simulate_scan

SENSOR = (0.0, 0.0, 1.73)
# boxes deliberately off the 0.25 m cell lines
CAR = AABox((8.1, -0.9, 0.0), (12.1, 1.1, 1.5))
WALL = AABox((-15.4, -20.0, 0.0), (-15.1, 20.0, 3.0))
PEDESTRIAN = AABox((5.05, 6.05, 0.0), (5.45, 6.55, 1.8))


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, BetaGrid]:
    pts = simulate_scan((CAR, WALL, PEDESTRIAN), sensor=SENSOR)
    est = estimate_ground(pts)
    grid = evidential_occupancy(
        pts, est.mask, SENSOR, GridSpec(), OccupancyParams(), height_above_ground=est.height
    )
    return pts, est.mask, grid


def _centres(spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    return spec.cell_centers()


def test_grid_spec_defaults_and_layout() -> None:
    spec = GridSpec()
    assert spec.origin == (-40.0, -40.0)
    assert spec.shape == (320, 320)
    cx, cy = spec.cell_centers()
    # row index follows +y, column index +x, row 0 = lowest y
    assert cx[0, 0] == pytest.approx(-39.875) and cy[0, 0] == pytest.approx(-39.875)
    assert cx[0, 1] > cx[0, 0] and cy[1, 0] > cy[0, 0]
    row, col, inside = spec.cell_index(np.array([10.1, -50.0]), np.array([-5.1, 0.0]))
    assert inside.tolist() == [True, False]
    assert (row[0], col[0]) == (139, 200)
    off = GridSpec(resolution=0.5, size_x=20.0, size_y=10.0, origin=(0.0, -5.0))
    assert off.shape == (20, 40)


def test_post_lands_in_the_right_row_and_column() -> None:
    # a 0.4 m × 0.4 m × 2 m post at x in [9.9, 10.3], y in [-5.3, -4.9] on flat ground; the sensor sees its
    # x = 9.9 face (column 199) and its y = -4.9 face (row 140): rows follow y, columns follow x
    post = AABox((9.9, -5.3, 0.0), (10.3, -4.9, 2.0))
    pts = simulate_scan((post,), sensor=SENSOR)
    grid = evidential_occupancy(pts, segment_ground(pts), SENSOR)
    occ = {tuple(rc) for rc in np.argwhere(grid.probability() > 0.5).tolist()}
    assert occ and occ <= {(r, c) for r in (138, 139, 140) for c in (199, 200, 201)}
    assert {(138, 199), (139, 199), (140, 199), (140, 200)} <= occ
    # cells on the ray towards it are free, cells on the ray behind it have no evidence at all
    for frac, free in ((0.3, True), (0.6, True), (1.5, False), (2.0, False)):
        row, col, _ = grid.spec.cell_index(np.array([10.1 * frac]), np.array([-5.1 * frac]))
        if free:
            assert grid.free[row[0], col[0]] > 1.0 and grid.occupied[row[0], col[0]] == 0
        else:
            assert grid.free[row[0], col[0]] == 0 and grid.occupied[row[0], col[0]] == 0


def test_box_cells_occupied(scene: tuple[np.ndarray, np.ndarray, BetaGrid]) -> None:
    _, _, grid = scene
    cx, cy = _centres(grid.spec)
    p = grid.probability()
    half = grid.spec.resolution / 2
    # cells entirely inside the car's footprint: every one that got evidence says occupied
    inside = AABox((CAR.lo[0] + half, CAR.lo[1] + half, 0), (CAR.hi[0] - half, CAR.hi[1] - half, 0))
    seen = inside.contains_xy(cx, cy) & ((grid.occupied + grid.free) > 0)
    assert seen.sum() >= 5
    assert (p[seen] > 0.5).all()
    for box in (CAR, PEDESTRIAN):
        # the cells the footprint touches: those with obstacle hits are occupied, and almost none is free
        touching = box.contains_xy(cx, cy)
        hit = touching & (grid.occupied > 0)
        assert hit.sum() >= 2
        assert (p[hit] > 0.5).all()
        assert (p[touching] >= 0.5).mean() >= 0.9
    # the car's whole near face (x = 8.1, cells [8.0, 8.25)) is occupied
    face = (cx > 8.0) & (cx < 8.25) & (cy > -0.9) & (cy < 1.1)
    assert face.sum() == 8
    assert (p[face] > 0.6).all()
    # the wall is a continuous occupied line where it faces the sensor
    wall = (cx > -15.25) & (cx < -15.0) & (np.abs(cy) < 10)  # its face at x = -15.1
    assert (p[wall] > 0.6).all()


def test_space_between_sensor_and_box_is_free(scene: tuple[np.ndarray, np.ndarray, BetaGrid]) -> None:
    _, _, grid = scene
    cx, cy = _centres(grid.spec)
    prob, vac = to_occupancy_msg_data(grid)
    between = (cx > 3.0) & (cx < 7.5) & (np.abs(cy) < 0.8)
    assert between.sum() > 100
    assert ((prob[between] >= 0) & (prob[between] < 50)).all()
    assert (vac[between] < 50).all()
    # free around the ego too (the ego footprint itself is crossed by every ray)
    near = np.hypot(cx, cy) < 3.0
    assert (grid.probability()[near] < 0.5).all()


def test_shadows_are_unknown(scene: tuple[np.ndarray, np.ndarray, BetaGrid]) -> None:
    _, _, grid = scene
    cx, cy = _centres(grid.spec)
    prob, vac = to_occupancy_msg_data(grid)
    # behind the 3 m wall: not a single piece of evidence
    behind_wall = (cx < -15.75) & (np.abs(cy) < 15)
    assert behind_wall.sum() > 5000
    assert (grid.occupied[behind_wall] == 0).all() and (grid.free[behind_wall] == 0).all()
    assert (prob[behind_wall] == -1).all() and (vac[behind_wall] == 100).all()
    # behind the car (1.5 m, below the 1.73 m sensor: rays over it reach the ground beyond the grid)
    behind_car = (cx > 12.6) & (cx < 25) & (np.abs(cy - 0.1) < 0.6)
    assert (prob[behind_car] == -1).all()
    # behind the pedestrian
    az = np.arctan2(cy, cx)
    ped_az = np.arctan2([6.05, 6.55, 6.05, 6.55], [5.45, 5.05, 5.05, 5.45])
    behind_ped = (az > ped_az.min() + 0.02) & (az < ped_az.max() - 0.02) & (np.hypot(cx, cy) > 9.0)
    assert behind_ped.sum() > 100
    assert (vac[behind_ped] == 100).all()


def test_ground_only_scene_has_no_occupied_evidence() -> None:
    pts = simulate_scan(sensor=SENSOR)
    mask = segment_ground(pts)
    grid = evidential_occupancy(pts, mask, SENSOR)
    assert (grid.occupied == 0).all()
    cx, cy = _centres(grid.spec)
    assert (grid.probability()[np.hypot(cx, cy) < 30] < 0.5).all()


def test_empty_cloud_gives_all_unknown() -> None:
    grid = evidential_occupancy(np.zeros((0, 3), np.float32), np.zeros(0, bool), SENSOR)
    assert grid.occupied.shape == (320, 320) and grid.occupied.dtype == np.float32
    assert (grid.occupied == 0).all() and (grid.free == 0).all()
    prob, vac = to_occupancy_msg_data(grid)
    assert prob.dtype == np.int8 and vac.dtype == np.int8
    assert (prob == -1).all() and (vac == 100).all()


def test_nans_are_ignored(scene: tuple[np.ndarray, np.ndarray, BetaGrid]) -> None:
    pts, mask, _ = scene
    clean = evidential_occupancy(pts, mask, SENSOR)
    dirty = np.concatenate([pts, np.full((300, 4), np.nan, np.float32)])
    dirty[-100:, :3] = [np.inf, 1.0, 1.0]
    dirty_mask = np.concatenate([mask, np.ones(300, bool)])  # even if a caller marks them ground
    grid = evidential_occupancy(dirty, dirty_mask, SENSOR)
    np.testing.assert_array_equal(grid.occupied, clean.occupied)
    np.testing.assert_array_equal(grid.free, clean.free)


def test_height_band() -> None:
    # non-ground returns 3 m up (a sign, branches) are ignored; 0.1 m up (debris) count as free
    grid = evidential_occupancy(np.array([[10.1, 0.1, 3.0], [10.1, 0.1, 0.1]]), np.zeros(2, bool), SENSOR)
    row, col, _ = grid.spec.cell_index(np.array([10.1]), np.array([0.1]))
    assert grid.occupied.sum() == 0
    assert grid.free[row[0], col[0]] == pytest.approx(OccupancyParams().free_per_ground_hit)


def test_ego_box_and_sensor_origin() -> None:
    pts = simulate_scan((CAR,), sensor=SENSOR)
    mask = segment_ground(pts)
    roof = np.array([[1.0, 0.3, 1.2, 0.0]], np.float32)  # a self-hit on the roof rack
    with_roof = np.concatenate([pts, roof])
    mask2 = np.concatenate([mask, [False]])
    p = OccupancyParams(min_return_range=0.5)
    shadowed = evidential_occupancy(with_roof, mask2, SENSOR, params=p)
    ego = OccupancyParams(min_return_range=0.5, ego_box=(-2, 2, -1, 1))
    filtered = evidential_occupancy(with_roof, mask2, SENSOR, params=ego)
    reference = evidential_occupancy(pts, mask, SENSOR, params=p)
    assert (shadowed.free == 0).sum() > (reference.free == 0).sum()
    np.testing.assert_array_equal(filtered.free, reference.free)
    # a sensor displaced to (6, 0): the scan shifted by 6 m gives the grid shifted by 24 columns. The
    # points sit on a 1/1024 m lattice, so x + 6 and x - 6 are exact in float32 (|x| < 2**14 m), and 6 m
    # is a whole number of cells (0.25 m) and of ground-height blocks (2 m): the grids agree bit for
    # bit away from the edges, on any CPU (no tolerance tuned to one machine's last-bit rounding)
    lattice = pts.copy()
    lattice[:, :2] = np.round(lattice[:, :2] * 1024) / 1024
    lmask = segment_ground(lattice)
    shifted = lattice.copy()
    shifted[:, 0] += 6.0
    g0 = evidential_occupancy(lattice, lmask, SENSOR)
    g1 = evidential_occupancy(shifted, lmask, (6.0, 0.0, 1.73))
    assert g0.occupied.sum() > 0 and g0.free.sum() > 0
    for a, b in ((g1.occupied, g0.occupied), (g1.free, g0.free)):
        np.testing.assert_array_equal(a[:, 64:296], b[:, 40:272])


def test_to_occupancy_msg_data_thresholds() -> None:
    spec = GridSpec(resolution=1.0, size_x=4.0, size_y=1.0)
    r = np.array([[0.0, 3.0, 0.0, 20.0]], np.float32)
    s = np.array([[0.0, 1.0, 0.1, 0.0]], np.float32)
    grid = BetaGrid(r, s, spec)
    prob, vac = to_occupancy_msg_data(grid)
    # (0,0): unknown; (3,1): P = 4/6, u = 2/6; (0, 0.1): u = 2/2.1 > 0.9 -> unknown; (20, 0): P = 21/22
    assert prob.tolist() == [[-1, 67, -1, 95]]
    assert vac.tolist() == [[100, 33, 95, 9]]
    prob_all, _ = to_occupancy_msg_data(grid, unknown_vacuity=1.0)
    assert prob_all.tolist() == [[-1, 67, 48, 95]]
    np.testing.assert_allclose(grid.probability(), expected_probability(r, s))
    np.testing.assert_allclose(grid.vacuity(), vacuity(r, s))
    with pytest.raises(ValueError):
        to_occupancy_msg_data(grid, unknown_vacuity=1.5)


def test_evidence_capped_and_inputs_checked(scene: tuple[np.ndarray, np.ndarray, BetaGrid]) -> None:
    pts, mask, grid = scene
    cap = OccupancyParams().max_evidence
    assert grid.occupied.max() <= cap and grid.free.max() <= cap
    assert grid.occupied.max() == cap and grid.free.max() == cap
    with pytest.raises(ValueError):
        evidential_occupancy(pts, mask[:-1], SENSOR)
    with pytest.raises(ValueError):
        evidential_occupancy(pts[:, :2], mask, SENSOR)
    with pytest.raises(ValueError):
        OccupancyParams(obstacle_min_height=1.0, obstacle_max_height=0.5)


@pytest.mark.parametrize("use_height", [True, False])
def test_sloped_ground_is_not_an_obstacle(use_height: bool) -> None:
    # 5° ground rising towards +x with a 1.5 m box standing on it 15 m ahead: the box is the only
    # occupied thing, with the per-point height from the ground estimate or the coarse fallback map
    slope = 5.0
    gz = float(np.tan(np.radians(slope)) * 15.0)
    box = AABox((13.1, -0.9, gz - 0.3), (17.1, 1.1, gz + 1.5))
    pts = simulate_scan((box,), sensor=SENSOR, slope_deg=slope)
    est = estimate_ground(pts)
    grid = evidential_occupancy(
        pts, est.mask, SENSOR, height_above_ground=est.height if use_height else None
    )
    cx, cy = _centres(grid.spec)
    occupied = grid.probability() > 0.5
    grown = AABox((box.lo[0] - 0.25, box.lo[1] - 0.25, 0), (box.hi[0] + 0.25, box.hi[1] + 0.25, 0))
    assert occupied[box.contains_xy(cx, cy)].sum() >= 8
    assert not (occupied & ~grown.contains_xy(cx, cy)).any()
    between = (cx > 4.0) & (cx < 12.5) & (np.abs(cy - 0.1) < 0.8)
    assert (grid.probability()[between] < 0.5).all()


@pytest.mark.parametrize("value", [1e30, 3e38, -3e38, 1e6])
def test_absurd_finite_coordinates_are_ignored_not_binned(value: float) -> None:
    """Issue 7: finite but absurd coordinates made np.bincount raise (an integer cast of -3e38 wraps
    around to a negative index). They must be ignored; the rest of the scan gives the same grid."""
    pts = simulate_scan((CAR,), sensor=SENSOR)
    mask = segment_ground(pts)
    bad = np.array([[value, 0.5, 0.3, 0.0], [0.5, value, 0.3, 0.0], [-value, -value, value, 0.0]], np.float32)
    with warnings.catch_warnings():  # and no overflow / invalid-cast warnings either
        warnings.simplefilter("error")
        grid = evidential_occupancy(np.concatenate([pts, bad]), np.concatenate([mask, [False] * 3]), SENSOR)
    ref = evidential_occupancy(pts, mask, SENSOR)
    # a finite (absurd) range may end a ray far out (the nodes' range gate drops such points before the
    # algorithm), but it never lands in a cell
    assert np.array_equal(grid.occupied, ref.occupied)
