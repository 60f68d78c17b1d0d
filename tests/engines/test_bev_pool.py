"""BEV pooling with precomputed geometry (engines/bev_pool.py) against the naive Lift-Splat reference.

Reference: the naive path in float64 (materialised frustum, scatter-add; exact to ~1e-16 here). Each
output element is a sum of ``n`` products ``P[p, b] * F[p, c]`` (``n`` = frustum points in the cell; near
the camera a 0.5 m cell gathers more than a thousand). Tolerances, with ``A = sum |terms|`` per cell
(the same pooling of ``|F|``), valid on any CPU whatever order a kernel sums in:

* fused kernel: float32 products are exact in float64 and it sums in float64, so its error is the final
  rounding to float32 plus ``n * eps64 * A``: ``|err| <= eps32 * A`` (``n < 2**28``). With non-negative
  features (the camera net's context features are ReLU outputs) ``A = |out|``, so this is a relative
  bound of 1.2e-7 per cell, well inside the issue's 1e-5.
* torch gather form (training / ONNX): float32 ``index_add`` of ``n`` terms in any order: the recursive
  summation bound ``|err| <= (n + 1) * eps32 * A`` (Higham, *Accuracy and Stability of Numerical
  Algorithms*, 2nd ed., eq. 4.4, plus one rounding per product); in float64 it matches to 1e-12.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.bev_pool import (
    CameraGeometry,
    DepthBins,
    GeometryCache,
    PoolGrid,
    bev_pool,
    bev_pool_gather,
    bev_pool_torch,
    build_geometry,
    export_onnx,
    frustum_points,
    lift_splat_naive,
    onnx_feeds,
)

EPS32 = float(np.finfo(np.float32).eps)
# optical (z forward, x right, y down) -> base_link (x forward, y left, z up)
BASE_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _camera(h: int, w: int, f: float, pos=(0.27, 0.0, 1.65), yaw_deg: float = 0.0, pitch_deg: float = 0.0,
            stride: int = 8) -> CameraGeometry:
    pitch = math.radians(pitch_deg)
    r_pitch = np.array([[math.cos(pitch), 0.0, math.sin(pitch)], [0.0, 1.0, 0.0],
                        [-math.sin(pitch), 0.0, math.cos(pitch)]])
    T = np.eye(4)
    T[:3, :3] = _rot_z(math.radians(yaw_deg)) @ r_pitch @ BASE_FROM_OPTICAL
    T[:3, 3] = pos
    K = np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])
    return CameraGeometry.from_arrays(K, T, (h, w), stride)


def _maps(cams, bins: DepthBins, channels: int, seed: int, positive: bool = False):
    """Softmax depth distributions and features per camera (lists, sizes may differ)."""
    g = torch.Generator().manual_seed(seed)
    depth, feats = [], []
    for cam in cams:
        fh, fw = cam.feature_size
        depth.append(torch.softmax(3.0 * torch.randn(1, bins.count, fh, fw, generator=g), 1))
        f = torch.randn(1, channels, fh, fw, generator=g)
        feats.append(f.abs() if positive else f)
    return depth, feats


def _naive64(cams, depth, feats, bins, grid):
    return sum(lift_splat_naive(d.double(), f.double(), c, bins, grid) for c, d, f in zip(cams, depth, feats))


def _terms_per_cell(geom) -> np.ndarray:
    n = np.zeros(geom.grid.num_cells, np.int64)
    np.add.at(n, geom.pair_cell, geom.pair_bins)
    return n.reshape(geom.grid.height, geom.grid.width)


def _check_close(out: torch.Tensor, cams, depth, feats, bins, grid, geom, fused: bool) -> float:
    ref = _naive64(cams, depth, feats, bins, grid)
    absref = _naive64(cams, depth, [f.abs() for f in feats], bins, grid)
    if out.dtype == torch.float64:
        bound = 1e-12 * absref
    elif fused:
        bound = EPS32 * absref
    else:
        bound = (torch.from_numpy(_terms_per_cell(geom)).double() + 1) * EPS32 * absref
    err = (out.double() - ref).abs()
    assert bool((err <= bound + 1e-30).all()), f"max excess {float((err - bound).max())}"
    return float(err.max() / ref.abs().max())


KITTI_LIKE = _camera(376, 1241, 721.5377)
BINS = DepthBins(1.0, 60.0, 0.5)
GRID = PoolGrid()  # 80 m x 80 m at 0.5 m, z in [-1, 3)


@pytest.mark.parametrize("form", ["fused", "gather"])
def test_fast_equals_naive_on_a_kitti_like_camera(form):
    cams = [KITTI_LIKE]
    geom = build_geometry(cams, BINS, GRID)
    assert _terms_per_cell(geom).max() > 100  # near cells sum many terms: the bounds are exercised
    for positive in (True, False):
        depth, feats = _maps(cams, BINS, 8, seed=1, positive=positive)
        out = bev_pool(depth[0], feats[0], geom) if form == "fused" else bev_pool_torch(depth[0], feats[0], geom)
        assert out.shape == (8, GRID.height, GRID.width) and out.dtype == torch.float32
        rel = _check_close(out, cams, depth, feats, BINS, GRID, geom, form == "fused")
        if positive and form == "fused":  # every term >= 0: the per-cell bound is relative (eps32)
            assert rel <= 1e-5
    if form == "gather":  # dtype-generic: in float64 it is the naive sum to rounding
        depth, feats = _maps(cams, BINS, 8, seed=1)
        _check_close(bev_pool_torch(depth[0].double(), feats[0].double(), geom), cams, depth, feats, BINS, GRID,
                     geom, False)


def test_multi_camera_geometry_is_the_cameras_concatenated():
    """Two cameras of different sizes and poses (front, and a pitched wide one looking left) at stride 4."""
    cams = [_camera(96, 320, 181.8, stride=4),
            _camera(80, 240, 120.0, pos=(1.0, 0.5, 1.45), yaw_deg=60.0, pitch_deg=5.0, stride=4)]
    bins, grid = DepthBins(1.0, 40.0, 0.25), PoolGrid(-20.0, -20.0, 0.25, 160, 160, -1.0, 3.0)
    geom = build_geometry(cams, bins, grid)
    assert geom.num_pixels == sum(c.num_pixels for c in cams)
    depth, feats = _maps(cams, bins, 6, seed=2)
    _check_close(bev_pool(depth, feats, geom), cams, depth, feats, bins, grid, geom, True)
    _check_close(bev_pool_torch(depth, feats, geom), cams, depth, feats, bins, grid, geom, False)
    # both cameras contribute: each alone covers cells the other does not
    alone = [build_geometry(c, bins, grid) for c in cams]
    cells = [set(g.row_cell.tolist()) for g in alone]
    assert cells[0] - cells[1] and cells[1] - cells[0]
    assert set(geom.row_cell.tolist()) == cells[0] | cells[1]
    assert geom.num_points == sum(g.num_points for g in alone)


def test_points_outside_the_grid_are_dropped():
    cam = _camera(96, 320, 181.8, stride=8)
    bins, grid = DepthBins(1.0, 60.0, 0.5), PoolGrid(-10.0, -10.0, 0.5, 40, 40, -1.0, 3.0)
    geom = build_geometry(cam, bins, grid)
    pts = frustum_points(cam, bins)  # [pixels, D, 3]
    x, y, z = (pts[..., i] for i in range(3))
    inside = (x >= -10) & (x < 10) & (y >= -10) & (y < 10) & (z >= -1) & (z < 3)
    assert 0 < geom.num_points == int(inside.sum()) < geom.num_frustum_points
    kept = pts.transpose(1, 0, 2).reshape(-1, 3)[geom.point_index]  # bin-major flat index
    assert (kept[:, 0] >= -10).all() and (kept[:, 0] < 10).all() and (kept[:, 2] >= -1).all() and (kept[:, 2] < 3).all()
    # depth mass at dropped points does not reach the output: put all of it in the last bin (59.75 m,
    # beyond the 10 m grid) and the pooled grid is zero, on every path
    depth = torch.zeros(1, bins.count, *cam.feature_size)
    depth[:, -1] = 1.0
    feats = torch.ones(1, 3, *cam.feature_size)
    for out in (bev_pool(depth, feats, geom), bev_pool_torch(depth, feats, geom),
                lift_splat_naive(depth, feats, cam, bins, grid)):
        assert float(out.abs().max()) == 0.0
    # a camera looking straight up sees nothing of the slab beyond 3 m: empty geometry, zero output
    up = CameraGeometry.from_arrays(np.array(cam.K).reshape(3, 3),
                                    np.r_[np.c_[np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
                                                [0.0, 0.0, 2.0]], [[0, 0, 0, 1]]], cam.image_size, cam.stride)
    g_up = build_geometry(up, DepthBins(2.0, 20.0, 0.5), grid)
    assert g_up.num_points == 0 and g_up.num_pairs == 0
    d_up = torch.softmax(torch.randn(1, 36, *up.feature_size), 1)
    assert float(bev_pool(d_up, feats, g_up).abs().max()) == 0.0


def test_geometry_is_rebuilt_when_the_calibration_changes_and_reused_otherwise():
    cache = GeometryCache(capacity=2)
    cam = _camera(96, 320, 181.8)
    g1 = cache.get(cam, BINS, GRID)
    assert cache.get(_camera(96, 320, 181.8), BINS, GRID) is g1 and cache.builds == 1  # equal calibration
    moved = _camera(96, 320, 181.8, pos=(0.27, 0.0, 1.70))  # 5 cm higher mount
    g2 = cache.get(moved, BINS, GRID)
    assert cache.builds == 2 and g2 is not g1 and g2.key != g1.key
    assert not np.array_equal(g1.point_index, g2.point_index) or not np.array_equal(g1.pair_cell, g2.pair_cell)
    assert cache.get(cam, BINS, GRID) is g1 and cache.builds == 2  # the previous calibration is still held
    cache.get(_camera(96, 320, 181.8, stride=4), BINS, GRID)  # stride, bins, grid are part of the key too
    cache.get(cam, DepthBins(1.0, 50.0, 0.5), GRID)
    cache.get(cam, BINS, PoolGrid(cell=1.0, width=80, height=80))
    assert cache.builds == 5
    cache.get(moved, BINS, GRID)  # evicted by the last three (capacity 2): rebuilt
    assert cache.builds == 6


def test_fused_kernel_is_deterministic_across_thread_counts():
    cam = _camera(96, 320, 181.8, stride=4)
    geom = build_geometry(cam, BINS, GRID)
    depth, feats = _maps([cam], BINS, 16, seed=3)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = bev_pool(depth[0], feats[0], geom)
        torch.set_num_threads(2)
        b = bev_pool(depth[0], feats[0], geom)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(a, b)


def test_the_fused_kernel_leaves_torch_thread_count_alone():
    """numba's OpenMP layer resets the process's OpenMP thread count when it starts; bev_pool restores it."""
    cam = _camera(96, 320, 181.8, stride=8)
    geom = build_geometry(cam, BINS, GRID)
    depth, feats = _maps([cam], BINS, 4, seed=8)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bev_pool(depth[0], feats[0], geom)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(prev)


def test_gradients_of_the_training_form_match_the_naive_ones():
    cam = _camera(48, 160, 90.9, stride=8)
    bins, grid = DepthBins(1.0, 30.0, 0.5), PoolGrid(-20.0, -20.0, 0.5, 80, 80)
    geom = build_geometry(cam, bins, grid)
    depth, feats = _maps([cam], bins, 4, seed=4)
    w = torch.randn(4, grid.height, grid.width, dtype=torch.float64)
    grads = []
    for pool in (lambda d, f: lift_splat_naive(d, f, cam, bins, grid), lambda d, f: bev_pool_torch(d, f, geom)):
        d = depth[0].double().requires_grad_(True)
        f = feats[0].double().requires_grad_(True)
        (pool(d, f) * w).sum().backward()
        grads.append((d.grad, f.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert float(grads[0][0].abs().max()) > 0 and float(grads[0][1].abs().max()) > 0


def test_bad_input_shapes_are_rejected():
    cam = _camera(96, 320, 181.8)
    geom = build_geometry(cam, BINS, GRID)
    depth, feats = _maps([cam], BINS, 4, seed=5)
    with pytest.raises(ValueError, match="bins, pixels"):
        bev_pool(depth[0][:, :-1], feats[0], geom)
    with pytest.raises(ValueError, match="features"):
        bev_pool(depth[0], feats[0][..., :-1], geom)
    with pytest.raises(ValueError):
        CameraGeometry.from_arrays(np.zeros((3, 3)), np.eye(4), (96, 320))
    with pytest.raises(ValueError):
        DepthBins(1.0, 60.0, 0.7)


@pytest.mark.slow
def test_onnx_graph_matches_torch_under_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    import onnx

    grid = PoolGrid(-20.0, -20.0, 0.5, 80, 80)
    model = export_onnx(grid.num_cells, channels=8)
    onnx.checker.check_model(onnx.load_from_string(model))
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert {"GatherElements", "ScatterElements", "ScatterND", "Mul"} <= ops
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    # inputs unlike the export's (6 pixels, 4 bins, 8 channels): two real-sized calibrations, 12 channels
    for cams, bins in (([_camera(96, 320, 181.8)], DepthBins(1.0, 40.0, 0.5)),
                       ([_camera(96, 320, 181.8), _camera(96, 320, 100.0, yaw_deg=45.0)], DepthBins(2.0, 30.0, 1.0))):
        geom = build_geometry(cams, bins, grid)
        depth, feats = _maps(cams, bins, 12, seed=6)
        (got,) = sess.run(None, onnx_feeds(depth, feats, geom))
        t = geom.tensors()
        from engines.bev_pool import flatten_maps

        p, f = flatten_maps(depth, feats)
        want = bev_pool_gather(p.reshape(-1), f, t["point_index"], t["pair_of_point"], t["pair_pixel"],
                               t["pair_cell"], grid.num_cells)
        assert got.shape == (grid.num_cells, 12)
        scale = float(want.abs().max())
        assert scale > 0
        # ScatterND adds rows in an unspecified order: float32 reordering of <= n terms per cell
        n = int(_terms_per_cell(geom).max())
        assert float(np.abs(got - want.numpy()).max()) <= (n + 1) * EPS32 * float(
            bev_pool_torch(depth, [x.abs() for x in feats], geom).abs().max()) + 1e-30


def test_channels_last_maps_are_read_in_place_and_pool_the_same():
    cam = _camera(96, 320, 181.8, stride=4)
    geom = build_geometry(cam, BINS, GRID)
    depth, feats = _maps([cam], BINS, 8, seed=7)
    cl = torch.channels_last
    d_cl, f_cl = depth[0].contiguous(memory_format=cl), feats[0].contiguous(memory_format=cl)
    from engines.bev_pool import flatten_maps

    p, f = flatten_maps(d_cl, f_cl)
    assert p.data_ptr() == d_cl.data_ptr() and f.data_ptr() == f_cl.data_ptr()  # views, no copies
    assert p.stride() == (1, BINS.count)
    a = bev_pool(depth[0], feats[0], geom)
    assert torch.equal(bev_pool(d_cl, f_cl, geom), a)  # each cell is the same sequential float64 sum
    torch.testing.assert_close(bev_pool_torch(d_cl, f_cl, geom), a, rtol=1e-5, atol=1e-6)


def test_frustum_points_project_back_onto_their_pixel_centres_with_kittis_own_matrices():
    """The lift's geometry checked against an independent path: KITTI's P2 · R0_rect · Tr_velo_to_cam,
    read straight from the calib file, projects every frustum point (taken to the Velodyne frame by the
    rig's base -> velodyne transform) back onto the centre of the feature pixel it came from, and a point
    left of the camera (base y > 0) lands left of the principal point. A wrong intrinsics or extrinsics
    convention, a mirrored axis or a half-pixel offset would all miss by a pixel or more."""
    from perception_nodes.pipeline.stereo_eval import read_kitti_calib
    from perception_nodes.rig import rig_from_kitti
    from tests.conftest import KITTI_OBJECT, require

    path = require(KITTI_OBJECT / "calib/000000.txt")
    rig = rig_from_kitti(path, image_size=(1242, 375))
    left = rig.cameras["left"]
    stride = 8
    cam = CameraGeometry.from_arrays(left.intrinsics, left.T_base_camera, (375, 1242), stride)
    bins = DepthBins(1.0, 60.0, 0.5)
    pts = frustum_points(cam, bins)  # [fH * fW, D, 3] in base_link
    T_lidar_base = np.linalg.inv(next(iter(rig.lidars.values())).T_base_lidar)
    velo = pts.reshape(-1, 3) @ T_lidar_base[:3, :3].T + T_lidar_base[:3, 3]
    cal = read_kitti_calib(path)
    R0 = np.eye(4)
    R0[:3, :3] = cal["R0_rect"].reshape(3, 3)
    Tr = np.vstack([cal["Tr_velo_to_cam"].reshape(3, 4), [0, 0, 0, 1]])
    uvw = cal["P2"].reshape(3, 4) @ R0 @ Tr @ np.vstack([velo.T, np.ones(len(velo))])
    uv = (uvw[:2] / uvw[2]).T.reshape(pts.shape[0], pts.shape[1], 2)
    fh, fw = cam.feature_size
    jj, ii = np.meshgrid(np.arange(fw), np.arange(fh))
    centre = np.stack([jj.ravel() * stride + (stride - 1) / 2, ii.ravel() * stride + (stride - 1) / 2], -1)
    # float64 throughout: 1e-6 px is ~1e7 x eps64 at pixel coordinates ~1e3 (measured 7e-13)
    err = np.abs(uv - centre[:, None, :])
    assert err.max() < 1e-6, err.max()
    cx = left.intrinsics[0, 2]
    lateral = pts[..., 1].ravel()
    assert (uv[..., 0].ravel()[lateral > 1.0] < cx).all() and (uv[..., 0].ravel()[lateral < -1.0] > cx).all()
