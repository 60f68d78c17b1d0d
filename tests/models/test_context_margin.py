"""The LiDAR network's context margin (``model.context_margin_m``): points beyond ``point_range`` feed the
backbone and BEV net, every output stays on ``point_range``; the same weights read with and without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.config import ConfigError
from perception_nodes.models import LidarDetectionConfig, LidarDetectionNet

from .conftest import BAD_CLOUD_IDS, BAD_CLOUDS, SMALL_CONFIG
from .test_onnx_runtime import _all_outputs, _assert_parity

#: 4 m: two of the BEV net's coarsest cells (0.25 m voxels x backbone stride 4 x 2 = 2 m)
MARGIN = 4.0


@pytest.fixture(scope="module")
def margin_net(small_net):
    net = LidarDetectionNet({**SMALL_CONFIG, "context_margin_m": MARGIN}).eval()
    net.load_state_dict(small_net.state_dict(), strict=True)  # the same weights: a margin adds no parameter
    return net


def _edge_distance(grid) -> np.ndarray:
    """Distance (m) of each head-grid cell from the nearest crop edge."""
    iy, ix = np.mgrid[0:grid.height, 0:grid.width]
    return np.minimum(np.minimum(ix, grid.width - 1 - ix), np.minimum(iy, grid.height - 1 - iy)) * grid.cell


def test_margin_widens_the_input_not_the_outputs(small_net, margin_net, kitti_frames):
    cfg = margin_net.config
    lo, hi = np.asarray(cfg.point_range), np.asarray(cfg.input_range)
    assert np.allclose(hi, lo + np.array([-MARGIN, -MARGIN, 0, MARGIN, MARGIN, 0]))
    assert margin_net.margin_cells == 4 and small_net.margin_cells == 0
    assert margin_net.head_grid == small_net.head_grid
    pts, _ = kitti_frames[0]
    ilo, ihi = hi[:3], hi[3:]
    in_input = ((pts[:, :3] >= ilo) & (pts[:, :3] < ihi)).all(1)
    in_crop = ((pts[:, :3] >= lo[:3]) & (pts[:, :3] < lo[3:])).all(1)
    assert in_input.sum() > in_crop.sum() + 1000  # the real scan has points in the margin
    with torch.no_grad():
        want, got = small_net(torch.from_numpy(pts)), margin_net(torch.from_numpy(pts))
    for k, t in _all_outputs(got).items():
        assert t.shape == _all_outputs(want)[k].shape, k
    # voxels are counted over the input range (points in the margin are read)
    vs = np.asarray(cfg.voxel_size)
    n_input = len(np.unique(np.floor((pts[in_input, :3] - ilo) / vs).astype(np.int64), axis=0))
    assert int(got.num_voxels[0]) == n_input > int(want.num_voxels[0])
    # the margin changes the BEV features near the crop edge and nowhere further in than the receptive field
    # (compared on the features the heads read: an untrained net's class evidence is almost flat)
    with torch.no_grad():
        feats = [n.bev_net(n.backbone_bev(n.voxelize(torch.from_numpy(pts))[0])) for n in (small_net, margin_net)]
    assert feats[0].shape == feats[1].shape
    d = (feats[1][0] - feats[0][0]).abs().amax(0).numpy()
    edge = _edge_distance(margin_net.head_grid)
    scale = float(feats[0].abs().max())
    eps = 64 * np.finfo(np.float32).eps * scale  # float32 rounding of a few hundred-term sums
    assert d[edge < 1.0].max() > 0.01 * scale  # the context is used
    # the small net's receptive field: the backbone's ~4 m, the BEV net's 3 x 3 convs at 1 m and 2 m; beyond
    # 8 m from the edge nothing of the edge can reach a cell's features (9 m with the heads' trunk: docs)
    far = edge >= 8.0
    assert far.any() and d[far].max() <= eps


def test_fast_path_matches_the_reference_with_a_margin(margin_net, kitti_frames):
    pts = torch.from_numpy(kitti_frames[1][0])
    with torch.no_grad():
        margin_net.fast_path = True
        fast = margin_net(pts)
        margin_net.fast_path = False
        try:
            ref = margin_net(pts)
        finally:
            margin_net.fast_path = True
    _assert_parity(fast, ref)


@pytest.mark.slow
def test_onnx_runtime_parity_with_a_margin(margin_net, kitti_frames, tmp_path):
    from perception_nodes.models.onnx_runtime import OnnxRuntime

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rt = OnnxRuntime(margin_net, threads=1, cache_dir=tmp_path)
        for pts, _ in kitti_frames[:2]:
            p = torch.from_numpy(pts)
            got = rt.infer(p)
            with torch.no_grad():
                want = margin_net(p)
            _assert_parity(got, want)
            assert got.class_alpha.shape[-1] == margin_net.head_grid.width
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("margin", [-2.0, 3.0, 1.0, float("nan")])
def test_margin_must_be_whole_coarse_cells(margin):
    with pytest.raises(ConfigError):
        LidarDetectionNet(LidarDetectionConfig.from_mapping({**SMALL_CONFIG, "context_margin_m": margin}))


def test_bev_fusion_refuses_a_lidar_margin(small_net):
    from perception_nodes.models.bev_fusion import BevFusionNet
    from perception_nodes.models.camera_bev import CameraBevNet

    lidar = LidarDetectionNet({**SMALL_CONFIG, "context_margin_m": MARGIN})
    with pytest.raises(ConfigError, match="context_margin_m"):
        BevFusionNet(lidar, CameraBevNet())


def test_cropping_before_the_head_upsampling_equals_cropping_after(margin_net, kitti_frames):
    """The BEV net cuts the margin off before its kernel = stride transposed conv (a third of the 2D cost
    at a 10 m margin): each input cell makes its own output block, so it is the same as cropping its output."""
    pts = torch.from_numpy(kitti_frames[2][0])
    m, up = margin_net.margin_cells, margin_net.config.head_upsample
    assert up > 1
    with torch.no_grad():
        bev = margin_net.backbone_bev(margin_net.voxelize(pts)[0])
        full = margin_net.bev(bev)  # the reference path, no crop
        after = full[:, :, m * up:full.shape[2] - m * up, m * up:full.shape[3] - m * up]
        for before in (margin_net.bev(bev, m), margin_net.bev.forward_inference(bev, m)):
            assert before.shape == after.shape
            tol = 64 * np.finfo(np.float32).eps * float(after.abs().max())
            assert float((before - after).abs().max()) <= tol


def test_the_fusers_lidar_encoder_reads_the_packaged_weights_without_their_margin():
    """The packaged LiDAR sidecar carries a margin (the node reads 10 m of context); the BEV fuser's encoder,
    trained on one grid with the camera's, loads the same tensors with none."""
    from perception_nodes.models.bev_fusion import from_packaged
    from perception_nodes.models.weights_io import default_weights_dir, read_sidecar

    side = read_sidecar(default_weights_dir("lidar_detection"), "lidar_detection")
    assert side["config"].get("context_margin_m", 0.0) > 0  # what the LiDAR node runs
    net = from_packaged()
    assert net.lidar.config.context_margin_m == 0.0 and net.lidar.margin_cells == 0


@pytest.mark.parametrize("bad", BAD_CLOUDS, ids=BAD_CLOUD_IDS)
def test_bad_input_with_a_margin_gives_the_vacuous_output(margin_net, bad):
    from perception_nodes.models import decode_batch

    with torch.no_grad():
        out = margin_net(torch.from_numpy(bad))
    assert int(out.num_voxels[0]) == 0
    assert torch.equal(out.class_alpha, torch.ones_like(out.class_alpha))
    assert float(out.occupancy_evidence.abs().max()) == 0.0
    (det,) = decode_batch(out, margin_net.head_grid, margin_net.config.classes, score_threshold=0.0)
    assert len(det) == 0


def test_a_cloud_only_in_the_margin_and_a_huge_one_give_valid_outputs(margin_net, kitti_frames):
    """Points only in the margin are read (not the empty case) and give finite evidence on the crop; a cloud
    ten times a real scan runs and stays finite."""
    pts, _ = kitti_frames[0]
    cfg = margin_net.config
    x0, y0, _, x1, y1, _ = cfg.point_range
    outside = ~((pts[:, 0] >= x0) & (pts[:, 0] < x1) & (pts[:, 1] >= y0) & (pts[:, 1] < y1))
    huge = np.concatenate([pts + np.float32(0.01) * k for k in range(10)])
    with torch.no_grad():
        for cloud in (pts[outside], huge):
            out = margin_net(torch.from_numpy(np.ascontiguousarray(cloud)))
            assert int(out.num_voxels[0]) > 0
            assert torch.isfinite(out.class_alpha).all() and (out.class_alpha >= 1).all()
            assert torch.isfinite(out.occupancy_evidence).all()
            assert out.class_alpha.shape[-1] == margin_net.head_grid.width
