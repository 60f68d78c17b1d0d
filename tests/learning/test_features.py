"""Ground-truth grid resampling and the lidar_occupancy BEV features on small hand-made scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.codecs.outputs import occupancy_grid_msg
from perception_nodes.learning.branches.lidar_occupancy import FEATURE_NAMES, FeatureParams, bev_features
from perception_nodes.learning.fixtures import footprint_grid
from perception_nodes.learning.grids import grid_from_msg, resample_max
from perception_nodes.pipeline.occupancy import GridSpec
from tests.pipeline._synthetic import AABox, simulate_scan

CH = {n: i for i, n in enumerate(FEATURE_NAMES)}


def test_grid_message_round_trip_and_max_pool():
    src_spec = GridSpec(resolution=0.25, size_x=4.0, size_y=2.0)  # 8 rows x 16 cols, origin (-2, -1)
    data = np.zeros(src_spec.shape, np.int8)
    data[5, 3] = 100  # x in [-1.25, -1.0), y in [0.25, 0.5)
    spec_back = grid_from_msg(occupancy_grid_msg(data, 0.25, (-2.0, -1.0, 0.0), 1, "base_link"))
    assert np.array_equal(spec_back[0], data) and spec_back[1] == src_spec

    dst = GridSpec(resolution=0.5, size_x=6.0, size_y=2.0)  # 4 x 12, origin (-3, -1): wider than the source
    out = resample_max(data >= 50, src_spec, dst)
    assert out.shape == (4, 12) and out.dtype == np.float32
    # the one occupied 0.25 m cell makes exactly its 0.5 m cell occupied (col (−1.25+3)/0.5 = 3, row 2)
    assert out.sum() == 1 and out[2, 3] == 1
    # cells beyond the source grid take the fill value
    assert np.all(resample_max(np.ones(src_spec.shape), src_spec, dst, fill=0.0)[:, [0, 1, 10, 11]] == 0)


def test_resample_finer_grid_uses_nearest_and_unknown_counts_as_zero():
    src_spec = GridSpec(resolution=1.0, size_x=2.0, size_y=2.0)
    src = np.array([[100, -1], [0, 100]], np.int8)
    out = resample_max(src, src_spec, GridSpec(resolution=0.5, size_x=2.0, size_y=2.0))
    assert np.array_equal(out, np.kron(np.array([[100, 0], [0, 100]], np.float32), np.ones((2, 2))))


def test_rotated_grid_is_refused():
    msg = occupancy_grid_msg(np.zeros((2, 2), np.int8), 1.0, (0.0, 0.0, 0.3), 1, "base_link")
    with pytest.raises(ValueError, match="rotated"):
        grid_from_msg(msg)


def test_footprint_raster_catches_thin_poles():
    from perception_nodes.boxes import Box3D

    spec = GridSpec(resolution=0.25, size_x=4.0, size_y=4.0)
    pole = Box3D(label="Pole", center=(0.6, 0.6, 3.0), size=(0.2, 0.2, 6.0), yaw=0.0)
    car = Box3D(label="Car", center=(-1.0, -1.0, 0.8), size=(1.0, 0.5, 1.6), yaw=math.pi / 2)
    grid = footprint_grid([pole, car], spec)
    assert 1 <= grid[:, 8:].sum() <= 4  # the 0.2 m pole touches one to four 0.25 m cells
    # the car is rotated by 90°: 0.5 m along x, 1.0 m along y
    rows, cols = np.nonzero(grid[:, :8])
    assert (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) in {(2, 4), (3, 5), (2, 5), (3, 4)}


@pytest.fixture(scope="module")
def box_scene():
    box = AABox((9.0, -1.0, 0.0), (11.0, 1.0, 1.5))
    pts = simulate_scan((box,), n_azimuth=720, elevations_deg=tuple(np.linspace(-24.8, 2.0, 32)), max_range=40.0)
    pts[:, 3] = 0.5  # intensity
    spec = GridSpec(resolution=0.5, size_x=32.0, size_y=32.0)
    return box, pts, spec, bev_features(pts, (0.0, 0.0, 1.73), spec)


def test_feature_shape_and_ranges(box_scene):
    _, pts, spec, f = box_scene
    assert f.shape == (len(FEATURE_NAMES), 64, 64) and f.dtype == np.float32
    assert np.all(np.isfinite(f))
    for name in ("max_height", "mean_height", "ground_fraction", "ism_vacuity"):
        assert f[CH[name]].min() >= 0.0 and f[CH[name]].max() <= 1.0
    # the point count channel holds every point inside the grid
    row, col, inside = spec.cell_index(pts[:, 0], pts[:, 1])
    assert np.expm1(f[CH["log_count"]]).sum() == pytest.approx(inside.sum(), rel=1e-4)
    # intensity is the cell mean: 0.5 wherever there are points, 0 elsewhere
    has = np.expm1(f[CH["log_count"]]) > 0.5
    assert np.allclose(f[CH["mean_intensity"]][has], 0.5) and np.all(f[CH["mean_intensity"]][~has] == 0)
    # range channel: distance of the cell centre from the sensor over half the grid size
    assert f[CH["range"]][32, 32] == pytest.approx(math.hypot(0.25, 0.25) / 16.0, rel=1e-5)


def test_features_see_the_box_its_free_space_and_its_shadow(box_scene):
    box, _, spec, f = box_scene
    cell = lambda x, y: (int((y + 16.0) // 0.5), int((x + 16.0) // 0.5))  # noqa: E731
    front = cell(9.1, 0.1)  # the face of the box seen by the sensor
    assert np.expm1(f[CH["log_count_obstacle"]][front]) > 5
    assert f[CH["max_height"]][front] == pytest.approx(1.5 / 3.0, abs=0.05)
    assert f[CH["ground_fraction"]][front] < 0.5
    assert f[CH["ism_occupied"]][front] > 0 and f[CH["ism_free"]][front] < f[CH["ism_occupied"]][front]
    # between the sensor and the box: free evidence; behind it: nothing known (shadow)
    assert f[CH["ism_free"]][cell(6.0, 0.1)] > 0 and f[CH["ism_occupied"]][cell(6.0, 0.1)] == 0
    shadow = cell(14.0, 0.1)
    assert f[CH["log_count"]][shadow] == 0 and f[CH["ism_vacuity"]][shadow] == pytest.approx(1.0)
    # open ground beside the box: ground returns only
    side = cell(6.0, 8.0)
    assert f[CH["ground_fraction"]][side] == pytest.approx(1.0) and f[CH["max_height"]][side] < 0.1


def test_features_of_an_empty_scan():
    spec = GridSpec(resolution=1.0, size_x=8.0, size_y=8.0)
    f = bev_features(np.zeros((0, 4), np.float32), (0.0, 0.0, 1.7), spec)
    assert f.shape == (len(FEATURE_NAMES), 8, 8)
    assert np.all(f[CH["ism_vacuity"]] == 1.0) and np.all(f[: CH["ism_occupied"]] == 0)


def test_intensity_scale_and_bad_params():
    spec = GridSpec(resolution=1.0, size_x=8.0, size_y=8.0)
    pts = np.array([[2.0, 0.2, 0.0, 200.0]], np.float32)
    f = bev_features(pts, (0.0, 0.0, 1.7), spec, FeatureParams(intensity_scale=255.0))
    assert f[CH["mean_intensity"]].max() == pytest.approx(200.0 / 255.0)
    with pytest.raises(ValueError):
        FeatureParams(max_height=0.0)
