"""The LiDAR detection network on real KITTI scans: shapes, evidential constraints, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.config import ConfigError
from perception_nodes.evidential.nig import NIG
from perception_nodes.models import LidarDetectionConfig, LidarDetectionNet, decode, decode_batch, register_backbone
from perception_nodes.models.decode import REGRESSION_NAMES

from .conftest import BAD_CLOUD_IDS, BAD_CLOUDS


def _sample(out, b=0):
    return out.class_alpha[b], NIG(*(t[b] for t in out.box))


def _check_valid(net, out, batch=1):
    cfg = net.config
    g, occ = net.head_grid, cfg.occupancy_grid
    k = len(cfg.classes)
    assert out.occupancy_evidence.shape == (batch, 2, occ.height, occ.width)
    assert out.class_alpha.shape == (batch, k + 1, g.height, g.width)
    for t in out.box:
        assert t.shape == (batch, len(REGRESSION_NAMES), g.height, g.width)
    for t in out.curvature:
        assert t.shape == (batch, len(cfg.curvature_horizons_m))
    assert (out.occupancy_evidence >= 0).all() and torch.isfinite(out.occupancy_evidence).all()
    assert (out.class_alpha >= 1).all() and torch.isfinite(out.class_alpha).all()
    for p in (out.box, out.curvature):
        assert torch.isfinite(torch.stack([t.reshape(-1) for t in p])).all()
        assert (p.nu > 0).all() and (p.alpha > 1).all() and (p.beta > 0).all()


def test_shapes_and_constraints_on_a_real_kitti_scan_at_one_thread(lidar_net, kitti_frames, kitti_output):
    pts, _ = kitti_frames[0]
    out = kitti_output  # run under torch.no_grad at 1 thread (no timing asserted here; see the benchmark)
    _check_valid(lidar_net, out)
    # a 120k-point scan fills thousands of voxels; the crop keeps fewer voxels than points
    n = int(out.num_voxels[0])
    assert 1000 < n < len(pts)
    # 80 m x 80 m at the default 0.25 m voxels and stride 4, upsampled 2x: 0.5 m cells
    assert lidar_net.head_grid.cell == pytest.approx(0.5)
    assert (lidar_net.head_grid.width, lidar_net.head_grid.height) == (160, 160)
    det = decode(*_sample(out), lidar_net.head_grid, lidar_net.config.classes)
    assert det.center.shape[1:] == (3,) and det.covariance.shape[1:] == (6, 6)


def test_all_points_counted_once_in_range(lidar_net, kitti_frames):
    pts, _ = kitti_frames[1]
    st, counts = lidar_net.voxelize(torch.from_numpy(pts))
    lo = np.asarray(lidar_net.config.point_range[:3])
    hi = np.asarray(lidar_net.config.point_range[3:])
    inside = pts[((pts[:, :3] >= lo) & (pts[:, :3] < hi)).all(1)]
    vs = np.asarray(lidar_net.config.voxel_size)
    expected = len(np.unique(np.floor((inside[:, :3] - lo) / vs).astype(np.int64), axis=0))
    assert int(counts[0]) == expected == len(st)
    # mean features stay inside the crop and keep the intensity column
    assert (st.feats[:, :3] >= torch.from_numpy(lo).float() - 1e-4).all()
    assert st.feats.shape[1] == 4 and float(st.feats[:, 3].max()) <= float(inside[:, 3].max()) + 1e-6


@pytest.mark.parametrize("bad", BAD_CLOUDS, ids=BAD_CLOUD_IDS)
def test_bad_input_gives_empty_valid_output(small_net, bad):
    lidar_net = small_net
    with torch.no_grad():
        out = lidar_net(torch.from_numpy(bad))
    _check_valid(lidar_net, out)
    assert int(out.num_voxels[0]) == 0
    assert torch.equal(out.class_alpha, torch.ones_like(out.class_alpha))  # vacuous, not a guess
    assert float(out.occupancy_evidence.abs().max()) == 0.0
    det = decode(*_sample(out), lidar_net.head_grid, lidar_net.config.classes, score_threshold=0.0)
    assert len(det) == 0 and det.class_probabilities.shape == (0, 4) and det.to_box3d() == []
    (batch_det,) = decode_batch(out, lidar_net.head_grid, lidar_net.config.classes, score_threshold=0.0)
    assert len(batch_det) == 0 and batch_det.covariance.shape == (0, 6, 6)


def test_nan_rows_are_dropped_not_propagated(small_net, kitti_frames):
    lidar_net = small_net
    pts, _ = kitti_frames[2]
    pts = pts[np.abs(pts[:, :2]).max(1) < 16]
    rng = np.random.default_rng(0)
    dirty = pts.copy()
    rows = rng.choice(len(pts), 500, replace=False)
    dirty[rows, rng.integers(0, 4, 500)] = np.nan  # NaN in x, y, z or intensity
    clean = np.delete(pts, rows, axis=0)
    a, na = lidar_net.voxelize(torch.from_numpy(dirty))
    b, nb = lidar_net.voxelize(torch.from_numpy(clean))
    # the voxels (all the network sees) are identical, so every later stage is too
    assert torch.equal(na, nb) and torch.equal(a.coords, b.coords) and torch.equal(a.feats, b.feats)
    with torch.no_grad():
        out = lidar_net(torch.from_numpy(dirty[~(np.abs(dirty[:, :2]) >= 4).any(1)]))  # NaN rows kept in
    _check_valid(lidar_net, out)
    assert int(out.num_voxels[0]) > 0


@pytest.mark.slow
def test_batch_of_scans_and_an_empty_one(small_net, kitti_frames):
    lidar_net = small_net
    pts, _ = kitti_frames[0]
    near = pts[np.abs(pts[:, :2]).max(1) < 4]
    with torch.no_grad():
        out = lidar_net([torch.from_numpy(near), torch.zeros(0, 4)])
        single = lidar_net(torch.from_numpy(near))
    _check_valid(lidar_net, out, batch=2)
    assert int(out.num_voxels[0]) == int(single.num_voxels[0]) > 0 and int(out.num_voxels[1]) == 0
    assert torch.equal(out.class_alpha[1], torch.ones_like(out.class_alpha[1]))
    eps = torch.finfo(torch.float32).eps
    scale = 1 + float(single.class_alpha.abs().max())
    assert torch.allclose(out.class_alpha[0], single.class_alpha[0], atol=1e3 * eps * scale)


@pytest.mark.slow
def test_gradients_reach_every_head(kitti_frames):
    cfg = {"backbone_args": {"dataflow": "gather_scatter"}, "point_range": [-8.0, -8.0, -1.0, 8.0, 8.0, 5.0]}
    torch.manual_seed(1)
    net = LidarDetectionNet(cfg).train()
    pts, _ = kitti_frames[0]
    out = net(torch.from_numpy(pts[np.abs(pts[:, :2]).max(1) < 4]))
    loss = (out.occupancy_evidence.mean() + out.class_alpha.mean() + sum(t.mean() for t in out.box)
            + sum(t.mean() for t in out.curvature))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().max()) > 0 for n, p in net.named_parameters() if n.startswith("backbone."))


def test_config_errors_and_backbone_registry():
    with pytest.raises(ConfigError, match="unknown parameter"):
        LidarDetectionConfig.from_mapping({"voxel_sise": [0.1, 0.1, 0.1]})
    with pytest.raises(ConfigError, match="unknown backbone"):
        LidarDetectionConfig.from_mapping({"backbone": "resnet"})
    with pytest.raises(ConfigError, match="whole number"):
        LidarDetectionConfig.from_mapping({"voxel_size": [0.3, 0.3, 0.2]})
    with pytest.raises(ConfigError, match="leaves no cells"):
        LidarDetectionNet({"backbone": "voxel_backbone_8x", "voxel_size": [0.2, 0.2, 0.2], "point_range": [-8, -8, -1, 8, 8, 1], "backbone_args": {"dataflow": "gather_scatter"}})

    from engines.sparse.backbones import VoxelBackbone8x

    made = []

    def factory(in_channels, **kw):
        made.append(kw)
        return VoxelBackbone8x(in_channels, dataflow="gather_scatter")

    register_backbone("test_backbone", factory)
    net = LidarDetectionNet({"backbone": "test_backbone", "backbone_args": {"tag": 1}, "voxel_size": [0.2, 0.2, 0.2],
                             "point_range": [-8.0, -8.0, -1.0, 8.0, 8.0, 5.0], "head_upsample": 1})
    assert made == [{"tag": 1}] and net.head_grid.cell == pytest.approx(1.6) and net.head_grid.width == 10
    assert LidarDetectionNet({"point_range": [-8.0, -8.0, -1.0, 8.0, 8.0, 5.0], "voxel_size": [0.2, 0.2, 0.2]},
                             backbone=VoxelBackbone8x(4, dataflow="gather_scatter")).bev_in_channels == 128


def test_odd_bev_size_keeps_the_grid(kitti_frames):
    # 17.6 m / 0.2 m = 88 voxels -> 11 BEV cells at stride 8: the half-resolution stage rounds up, the net
    # must crop its upsampled output back to 11 x 11
    net = LidarDetectionNet({"backbone": "voxel_backbone_8x", "voxel_size": [0.2, 0.2, 0.2], "point_range": [-8.8, -8.8, -1.0, 8.8, 8.8, 5.0], "occupancy_resolution": 0.2,
                             "backbone_args": {"dataflow": "gather_scatter"}}).eval()
    pts, _ = kitti_frames[1]
    with torch.no_grad():
        out = net(torch.from_numpy(pts[np.abs(pts[:, :2]).max(1) < 3]))
    assert net.head_grid.width == 22 and int(out.num_voxels[0]) > 0
    _check_valid(net, out)
