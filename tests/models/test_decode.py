"""Decoding and target encoding: exact round trip on real KITTI boxes, covariance, degenerate maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perception_nodes.evidential.nig import NIG
from perception_nodes.models import BevGrid, decode, encode_targets
from perception_nodes.models.decode import (
    MAX_YAW_VARIANCE,
    dirichlet_targets,
    draw_gaussian,
    gaussian_radius,
    regression_names,
    yaw_variance_from_sincos,
)

EPS32 = float(np.finfo(np.float32).eps)
CLASSES = ("car", "pedestrian", "cyclist")
GRID = BevGrid(-40.0, -40.0, 0.8, 100, 100)  # the default head grid


def _maps_from_targets(t, grid, n_reg, evidence=1e4):
    """Head maps a perfect network would output for these targets (NIG spread arbitrary but known)."""
    soft = dirichlet_targets(torch.from_numpy(t.heatmap))
    alpha = 1.0 + evidence * soft
    gamma = torch.zeros(n_reg, grid.height * grid.width)
    gamma[:, torch.from_numpy(t.indices)] = torch.from_numpy(t.regression).T
    shape = (n_reg, grid.height, grid.width)
    box = NIG(gamma.view(shape), torch.full(shape, 4.0), torch.full(shape, 3.0), torch.full(shape, 0.02))
    return alpha, box


def _kitti_scenes(kitti_frames):
    """(boxes [M, 7], class indices) of every KITTI frame, our three classes only, in base_link."""
    scenes = []
    for _, frame_boxes in kitti_frames:
        keep = [b for b in frame_boxes if b.label.lower() in CLASSES]
        scenes.append((np.array([[*b.center, *b.size, b.yaw] for b in keep]).reshape(-1, 7),
                       np.array([CLASSES.index(b.label.lower()) for b in keep], dtype=np.int64)))
    return scenes


def _lattice_boxes(seed=0):
    """Seeded boxes on a 9 m lattice (no two Gaussians touch), yaws over the whole circle incl. +-pi."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(-36.0, 37.0, 9.0), np.arange(-36.0, 37.0, 9.0))
    n = xs.size
    centre = np.stack([xs.ravel() + rng.uniform(0, 0.8, n), ys.ravel() + rng.uniform(0, 0.8, n),
                       rng.uniform(-0.5, 2.5, n)], 1)
    size = rng.uniform([0.4, 0.4, 1.0], [5.0, 2.2, 2.0], (n, 3))
    yaw = rng.uniform(-math.pi, math.pi, n)
    yaw[:2] = [math.pi, -math.pi + 1e-3]
    return np.concatenate([centre, size, yaw[:, None]], 1), rng.integers(0, 3, n)


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _round_trip(boxes, labels, grid=GRID):
    t = encode_targets(boxes, labels, grid, len(CLASSES))
    assert t.kept.all() and t.heatmap.max() == 1.0
    alpha, box = _maps_from_targets(t, grid, len(regression_names(False)))
    det = decode(alpha, box, grid, CLASSES, max_detections=len(boxes) + 20, score_threshold=0.5)
    assert len(det) == len(boxes)
    # match decoded boxes to inputs by their centre cell
    order = np.argsort(t.indices)
    cells = np.floor((det.center[:, :2] - [grid.origin_x, grid.origin_y]) / grid.cell).astype(int)
    d = np.argsort(cells[:, 1] * grid.width + cells[:, 0])
    b = boxes[order]
    scale = abs(grid.origin_x) + grid.size_x  # magnitudes in the centre arithmetic
    np.testing.assert_allclose(det.center[d, :2], b[:, :2], rtol=0, atol=16 * EPS32 * scale)
    np.testing.assert_allclose(det.center[d, 2], b[:, 2], rtol=0, atol=8 * EPS32 * (1 + np.abs(b[:, 2]).max()))
    np.testing.assert_allclose(det.size[d], b[:, 3:6], rtol=16 * EPS32, atol=0)
    assert np.abs(_wrap(det.yaw[d].astype(np.float64) - b[:, 6])).max() <= 16 * EPS32 * math.pi
    assert np.array_equal(det.label[d], labels[order])
    # score = expected probability of the class: (1 + E) / (K + 1 + E) at an object's centre
    np.testing.assert_allclose(det.score, (1 + 1e4) / (4 + 1e4), rtol=8 * EPS32)
    assert det.class_ids == [CLASSES[i] for i in det.label]
    boxes3d = det.to_box3d()
    assert boxes3d[0].label == det.class_ids[0] and len(boxes3d[0].covariance) == 36
    return len(det)


def test_round_trip_exact_on_real_kitti_boxes(kitti_frames):
    front = BevGrid(0.0, -40.0, 0.8, 100, 100)  # KITTI labels cover the camera's view ahead, up to ~70 m
    n = sum(_round_trip(boxes, labels, front) for boxes, labels in _kitti_scenes(kitti_frames) if len(boxes))
    assert n >= 3  # pedestrian, car, cyclist, car in the three frames


def test_round_trip_exact_on_a_lattice_of_boxes():
    boxes, labels = _lattice_boxes()
    assert _round_trip(boxes, labels) == 81


def test_covariance_from_known_nig_and_psd():
    boxes = np.array([[10.3, -5.1, 0.8, 4.0, 1.8, 1.5, 0.7]])
    t = encode_targets(boxes, np.array([0]), GRID, 3)
    alpha, box = _maps_from_targets(t, GRID, 8)
    det = decode(alpha, box, GRID, CLASSES, unestimated_variance=1e4)
    assert len(det) == 1
    var = 0.02 * (1 + 4.0) / (4.0 * (3.0 - 1.0))  # predictive variance beta (1 + nu) / (nu (alpha - 1))
    cov = det.covariance[0].astype(np.float64)
    np.testing.assert_allclose(np.diag(cov)[:3], [var * GRID.cell**2, var * GRID.cell**2, var], rtol=8 * EPS32)
    s, c = math.sin(0.7), math.cos(0.7)
    np.testing.assert_allclose(cov[5, 5], (c * c * var + s * s * var) / (s * s + c * c) ** 2, rtol=8 * EPS32)
    assert cov[3, 3] == cov[4, 4] == 1e4
    np.testing.assert_allclose(det.size_variance[0], np.array([4.0, 1.8, 1.5]) ** 2 * var, rtol=16 * EPS32)


def test_covariance_symmetric_psd_on_network_output(lidar_net, kitti_output):
    out = kitti_output
    det = decode(out.class_alpha[0], NIG(*(t[0] for t in out.box)), lidar_net.head_grid, CLASSES,
                 score_threshold=0.0, max_detections=50)
    assert len(det) == 50
    cov = det.covariance.astype(np.float64)
    assert np.array_equal(cov, np.transpose(cov, (0, 2, 1)))
    eig = np.linalg.eigvalsh(cov)
    assert (eig >= -8 * EPS32 * np.abs(cov).max()).all()
    assert np.isfinite(cov).all() and (cov[:, 5, 5] <= MAX_YAW_VARIANCE + 1e-6).all()
    np.testing.assert_allclose(det.class_probabilities.sum(1), 1.0, atol=8 * EPS32)
    assert ((det.vacuity > 0) & (det.vacuity <= 1)).all()


def test_yaw_variance_matches_sampling_for_small_noise():
    torch.manual_seed(0)
    s0, c0 = torch.tensor(0.6, dtype=torch.float64), torch.tensor(-0.5, dtype=torch.float64)
    vs, vc = torch.tensor(1e-4, dtype=torch.float64), torch.tensor(4e-4, dtype=torch.float64)
    n = 200_000
    yaw = torch.atan2(s0 + vs.sqrt() * torch.randn(n, dtype=torch.float64),
                      c0 + vc.sqrt() * torch.randn(n, dtype=torch.float64))
    lin = yaw_variance_from_sincos(s0, c0, vs, vc).item()
    # sample variance has relative standard error sqrt(2 / n); the linearisation error is O(var)
    assert abs(yaw.var().item() / lin - 1) < 5 * math.sqrt(2 / n) + 0.01
    # a degenerate (0, 0) direction is "unknown", capped, never inf
    assert yaw_variance_from_sincos(torch.tensor(0.0), torch.tensor(0.0), vs.float(), vc.float()).item() == pytest.approx(
        MAX_YAW_VARIANCE)


def test_non_finite_maps_give_no_nan_boxes():
    boxes, labels = _lattice_boxes(1)
    t = encode_targets(boxes, labels, GRID, 3)
    alpha, box = _maps_from_targets(t, GRID, 8)
    iy, ix = divmod(int(t.indices[0]), GRID.width)
    box.gamma[3, iy, ix] = float("nan")
    alpha[0, 0, 0] = float("nan")
    det = decode(alpha, box, GRID, CLASSES, max_detections=200, score_threshold=0.5)
    assert len(det) == len(boxes) - 1 and np.isfinite(det.center).all()


def test_targets_edge_cases():
    boxes = np.array([[0.1, 0.1, 0.5, 4.0, 2.0, 1.5, 0.0], [60.0, 0.0, 0.5, 4.0, 2.0, 1.5, 0.0],
                      [-39.9, 39.9, 0.5, 0.6, 0.6, 1.7, 1.0]])
    t = encode_targets(boxes, np.array([0, 1, 1]), GRID, 3, velocities=np.array([[1, 2], [3, 4], [5, -6]]))
    assert t.kept.tolist() == [True, False, True]
    assert t.regression.shape == (2, 10) and t.regression[1, 8:].tolist() == [5.0, -6.0]
    assert t.heatmap[1, GRID.height - 1, 0] == 1.0  # corner object, clipped Gaussian
    soft = dirichlet_targets(torch.from_numpy(t.heatmap))
    torch.testing.assert_close(soft.sum(0), torch.ones(GRID.height, GRID.width))
    iy, ix = divmod(int(t.indices[0]), GRID.width)
    assert soft[:, iy, ix].tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        encode_targets(boxes, np.array([0, 1, 3]), GRID, 3)
    with pytest.raises(ValueError):
        encode_targets(boxes * np.array([1, 1, 1, 0, 1, 1, 1]), np.array([0, 1, 1]), GRID, 3)
    empty = encode_targets(np.zeros((0, 7)), np.zeros(0, int), GRID, 3)
    assert empty.regression.shape == (0, 8) and empty.heatmap.max() == 0.0
    # decoding velocity when the head has it
    alpha, box = _maps_from_targets(t, GRID, 10)
    det = decode(alpha, box, GRID, CLASSES, score_threshold=0.5)
    assert det.velocity is not None and sorted(det.velocity.tolist()) == [[1.0, 2.0], [5.0, -6.0]]


def test_gaussian_and_radius():
    hm = np.zeros((11, 11), np.float32)
    draw_gaussian(hm, 5, 5, 2)
    assert hm[5, 5] == 1.0 and np.array_equal(hm, hm.T) and np.array_equal(hm, hm[::-1, ::-1])
    assert hm[5, 8] == 0.0 and 0 < hm[5, 7] < hm[5, 6] < 1.0
    hm2 = np.zeros((4, 4), np.float32)
    draw_gaussian(hm2, 0, 0, 3)  # clipped, still peaked at the corner
    assert hm2[0, 0] == 1.0 and hm2.argmax() == 0
    r = [gaussian_radius(s, s / 2) for s in (2.0, 5.0, 10.0)]
    assert 0 < r[0] < r[1] < r[2]
    assert gaussian_radius(5, 2.5, 0.7) < gaussian_radius(5, 2.5, 0.1)


def test_regression_radius_trains_the_cells_around_each_centre():
    """targets.regression_radius: the box rows at the neighbours of a centre cell decode, from their own cell, to
    exactly the object's box (so a heatmap peak one cell off still gives the right centre); each cell belongs to
    one object, the nearest; cells off the grid are dropped; radius 0 is the centre-only target of before."""
    grid = BevGrid(0.0, 0.0, 0.5, 20, 20)
    # two cars 0.8 m apart (their 3 x 3 windows overlap) and a pedestrian in the grid's corner cell
    boxes = np.array([[3.1, 4.3, -1.0, 4.5, 1.8, 1.5, 0.3], [3.9, 4.3, -1.2, 4.2, 1.7, 1.4, 1.3],
                      [0.1, 0.1, 0.0, 0.6, 0.6, 1.7, -2.0]])
    labels = np.array([0, 0, 1])
    plain = encode_targets(boxes, labels, grid, 3)
    assert plain.box_indices is None
    cells, rows = plain.box_cells()
    assert np.array_equal(cells, plain.indices) and np.array_equal(rows, plain.regression)
    t = encode_targets(boxes, labels, grid, 3, regression_radius=1)
    assert np.array_equal(t.indices, plain.indices) and np.array_equal(t.regression, plain.regression)
    assert np.array_equal(t.heatmap, plain.heatmap)
    cells, rows = t.box_cells()
    assert len(np.unique(cells)) == len(cells)  # each cell once
    # 9 + 9 cells, 6 shared between the cars; the corner pedestrian keeps 4 of its 9
    assert len(cells) == 9 + 9 - 6 + 4
    assert set(plain.indices) <= set(cells)
    cx, cy = cells % grid.width, cells // grid.width
    x = grid.origin_x + (cx + rows[:, 0].astype(np.float64)) * grid.cell
    y = grid.origin_y + (cy + rows[:, 1].astype(np.float64)) * grid.cell
    # which object each row decodes to: the nearest centre to the cell's middle
    mid = np.stack([grid.origin_x + (cx + 0.5) * grid.cell, grid.origin_y + (cy + 0.5) * grid.cell], 1)
    owner = np.argmin(np.hypot(mid[:, :1] - boxes[None, :, 0], mid[:, 1:] - boxes[None, :, 1]), 1)
    tol = 8 * EPS32 * (grid.width * grid.cell)
    np.testing.assert_allclose(x, boxes[owner, 0], rtol=0, atol=tol)
    np.testing.assert_allclose(y, boxes[owner, 1], rtol=0, atol=tol)
    np.testing.assert_array_equal(rows[:, 2:], plain.regression[owner][:, 2:])
    assert (rows[:, :2] < 2.0).all() and (rows[:, :2] >= -1.0).all()  # offsets in [-r, r + 1)
    with pytest.raises(ValueError):
        encode_targets(boxes, labels, grid, 3, regression_radius=-1)


def test_regression_radius_keeps_each_centre_cell_for_its_own_object():
    """Two pedestrians 0.55 m apart on 0.5 m cells: the second's centre is 0.6 cells from its own cell's middle and
    0.5 from the first's neighbouring cell -- nearest-centre ownership alone would give the first one the cell the
    second's heatmap peaks at (a duplicate box and a missed one)."""
    grid = BevGrid(0.0, 0.0, 0.5, 20, 20)
    boxes = np.array([[2.99, 2.25, 0.0, 0.6, 0.6, 1.7, 0.0], [3.48, 2.48, 0.0, 0.6, 0.6, 1.7, 1.0]])
    t = encode_targets(boxes, np.array([1, 1]), grid, 3, regression_radius=1)
    cells, rows = t.box_cells()
    for m, centre in enumerate(t.indices):
        row = rows[np.flatnonzero(cells == centre)[0]]
        np.testing.assert_array_equal(row, t.regression[m])  # the object's own centre row, offset in [0, 1)
