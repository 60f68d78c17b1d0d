"""The LiDAR network's fast inference path against its reference path (``net.fast_path = False``).

The fast path changes how things are computed, never what: the compiled voxelisation must give the same
voxels in the same order with the same means; the fused BEV net and heads (BatchNorm folded into the
convs, transposed convs as one matrix product, the 1 x 1 heads as one product, direct BEV scatter) must
agree with the reference to float32 rounding.

Tolerances: voxel coordinates exactly; voxel means are float64 sums of float32 points divided in
float64 and rounded to float32 in both paths, so they agree to one float32 rounding (|d| <= eps |x|).
Network outputs: per tensor max |fast - ref| / max |ref| < 1e-4, the float32 bound of
tests/models/test_onnx_runtime.py (dot products up to 9 x 128 terms in the dense part, ~10 layers,
re-associated by folding and fusion: ~sqrt(L) eps per layer); observed ~1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.models import LidarDetectionNet
from perception_nodes.models.voxelize import MAX_TABLE_CELLS, voxelize_scans

from .conftest import SMALL_CONFIG, TEST_CONFIG

EPS32 = float(np.finfo(np.float32).eps)


def _assert_same_voxels(net: LidarDetectionNet, scans) -> None:
    with torch.inference_mode():
        fast, n_fast = net.voxelize(scans)
        ref, n_ref = net.voxelize_reference(scans)
    assert torch.equal(fast.coords, ref.coords)
    assert torch.equal(n_fast, n_ref)
    assert fast.feats.dtype == ref.feats.dtype == torch.float32
    tol = EPS32 * ref.feats.abs().clamp_min(1e-30)
    assert bool(((fast.feats - ref.feats).abs() <= tol).all())
    assert fast.spatial_shape == ref.spatial_shape and fast.batch_size == ref.batch_size
    assert fast.stride == ref.stride


def test_voxelize_matches_reference_on_kitti(lidar_net, kitti_frames):
    """Real 115-127k-point scans, one at a time and as a batch of three (keys carry the scan index)."""
    assert lidar_net.fast_path
    scans = [torch.from_numpy(p) for p, _ in kitti_frames]
    for p in scans:
        _assert_same_voxels(lidar_net, p)
    _assert_same_voxels(lidar_net, scans)


def test_voxelize_edge_cases_match_reference(small_net):
    """Crop borders (lo inside, hi outside), non-finite rows, empty scans in a batch, far points."""
    cfg = small_net.config
    lo, hi = np.asarray(cfg.point_range[:3]), np.asarray(cfg.point_range[3:])
    rng = np.random.default_rng(3)
    p = rng.uniform(lo - 2.0, hi + 2.0, size=(5000, 3))
    border = np.array([[lo[0], lo[1], lo[2]], [hi[0], 0.0, 0.0], [0.0, hi[1], 0.0], [0.0, 0.0, hi[2]],
                       [np.nextafter(hi[0], -np.inf), np.nextafter(hi[1], -np.inf), np.nextafter(hi[2], -np.inf)],
                       [0.0, 0.0, 0.0], [1e30, 0.0, 0.0], [-1e30, 0.0, 0.0]])
    p = np.concatenate([p, border])
    pts = np.concatenate([p, rng.uniform(0, 1, size=(len(p), 1))], 1).astype(np.float32)
    pts[7, 0] = np.nan
    pts[11, 2] = np.inf
    pts[13, 3] = np.nan  # NaN intensity on a finite point: dropped as the reference drops it
    pts = np.concatenate([pts, rng.normal(size=(len(pts), 2)).astype(np.float32)], 1)  # extra columns ignored
    t = torch.from_numpy(pts)
    _assert_same_voxels(small_net, t)
    _assert_same_voxels(small_net, [t, torch.zeros(0, 4), t[::3]])
    _assert_same_voxels(small_net, torch.full((10, 4), float("nan")))
    _assert_same_voxels(small_net, torch.zeros(0, 4))


def test_voxelize_intensity_scale_matches_reference():
    net = LidarDetectionNet({**SMALL_CONFIG, "intensity_scale": 255.0}).eval()
    rng = np.random.default_rng(4)
    pts = np.concatenate([rng.uniform(-10, 10, (3000, 3)), rng.uniform(0, 255, (3000, 1))], 1).astype(np.float32)
    _assert_same_voxels(net, torch.from_numpy(pts))


def test_voxelize_large_grid_falls_back_to_reference():
    """A grid too large for the dense key table: ``voxelize_scans`` declines, the net uses the reference."""
    pr = (-80.0, -80.0, -3.0, 80.0, 80.0, 5.0)
    vs = (0.05, 0.05, 0.1)
    assert 3200 * 3200 * 80 > MAX_TABLE_CELLS
    assert voxelize_scans(np.zeros((1, 4), np.float32), None, 1, vs, pr) is None
    torch.manual_seed(0)
    net = LidarDetectionNet({**TEST_CONFIG, "point_range": list(pr), "voxel_size": list(vs)}).eval()
    pts = torch.from_numpy(np.random.default_rng(5).uniform(-20, 20, (2000, 4)).astype(np.float32))
    _assert_same_voxels(net, pts)


def test_voxelize_rejects_bad_shapes(small_net):
    with pytest.raises(ValueError, match=r"\[N, >= 4\]"):
        small_net.voxelize(torch.zeros(10, 3))
