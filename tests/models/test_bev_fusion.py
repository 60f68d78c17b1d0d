"""The BEVFusion-style fuser: BEV resampling, identity at init with the packaged LiDAR weights, camera-only /
LiDAR-only operation through the presence flags, determinism.

LiDAR input: the first real KITTI scan (base_link); camera input: random images through the generator's
left camera at 320 x 96 (what the camera weights were trained on). Runs at one thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.models.bev_fusion import BevFusionNet, area_resample, area_weights, from_packaged
from perception_nodes.models.bev_grid import BevGrid
from perception_nodes.scenario.camera import camera_rig
from tests.models.conftest import TEST_CONFIG

EPS = float(torch.finfo(torch.float32).eps)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _geometry(net: BevFusionNet):
    spec = camera_rig(320, 96)["left"]
    T = np.eye(4)
    T[:3, :3] = spec.base_from_optical()
    T[:3, 3] = spec.position
    return net.camera.geometry(net.camera.camera_geometry(spec.K, T, (spec.height, spec.width)))


def _images(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 1, 3, 96, 320), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def fused() -> BevFusionNet:
    return from_packaged(lidar_overrides={"backbone_args": TEST_CONFIG["backbone_args"]})


# ---- resampling ------------------------------------------------------------------------------------------

def _centres(g: BevGrid) -> tuple[np.ndarray, np.ndarray]:
    x = g.origin_x + g.cell * (np.arange(g.width) + 0.5)
    y = g.origin_y + g.cell * (np.arange(g.height) + 0.5)
    return np.meshgrid(x, y)  # [H, W] each


def test_area_resample_of_a_linear_field_is_its_value_at_the_cell_centres():
    # the mean of a linear function over a cell is its value at the centre: exact for any fully covered
    # destination cell, whatever the two grids' origins and sizes
    src = BevGrid(-20.0, -10.0, 0.5, 80, 40)   # x -20..20, y -10..10
    dst = BevGrid(-16.0, -8.0, 1.0, 32, 16)     # inside, coarser, shifted by whole source cells
    xs, ys = _centres(src)
    f = torch.from_numpy(np.stack([2.0 * xs - 3.0 * ys + 1.0, np.ones_like(xs)])[None]).float()
    out = area_resample(f, src, dst)[0].double().numpy()
    xd, yd = _centres(dst)
    assert out.shape == (2, 16, 32)
    tol = 64 * EPS * 80.0  # float32 sums of ~4 terms of size up to |2x - 3y + 1| <= 80
    np.testing.assert_allclose(out[0], 2.0 * xd - 3.0 * yd + 1.0, atol=tol)
    np.testing.assert_allclose(out[1], 1.0, atol=16 * EPS)


def test_area_resample_checkerboard_partial_overlap_and_outside():
    # a 2-cell checkerboard at 0.5 m averaged onto 1 m cells offset by half a source cell: every destination
    # cell covers 1/4 + 1/2 + 1/4 of alternating rows/cols -> exactly 0.5 on a checkerboard of 0/1;
    # destination cells beyond the source get 0 (no features), the edge ones their overlap share
    src = BevGrid(0.0, 0.0, 0.5, 8, 8)
    board = torch.from_numpy((np.add.outer(np.arange(8), np.arange(8)) % 2).astype(np.float32))[None, None]
    dst = BevGrid(0.25, 0.25, 1.0, 5, 5)  # x, y in 0.25 .. 5.25: the last column/row is outside (>= 4 m)
    out = area_resample(board, src, dst)[0, 0].numpy()
    np.testing.assert_allclose(out[:3, :3], 0.5, atol=8 * EPS)
    np.testing.assert_array_equal(out[4, :], 0.0)
    np.testing.assert_array_equal(out[:, 4], 0.0)
    # row 3 / col 3 cover 3.25..4.25: three quarters inside the source
    ones = area_resample(torch.ones(1, 1, 8, 8), src, dst)[0, 0].numpy()
    np.testing.assert_allclose(ones[3, :3], 0.75, atol=8 * EPS)
    np.testing.assert_allclose(ones[3, 3], 0.75 * 0.75, atol=8 * EPS)


def test_area_weights_identity_and_coarser_source():
    w = area_weights(-4.0, 0.5, 16, -4.0, 0.5, 16)
    np.testing.assert_array_equal(w.numpy(), np.eye(16))
    # source coarser than destination: each fine cell takes the coarse cell it lies in
    w = area_weights(0.0, 1.0, 4, 0.0, 0.5, 8).numpy()
    np.testing.assert_array_equal(w.argmax(1), np.repeat(np.arange(4), 2))
    np.testing.assert_allclose(w.sum(1), 1.0)


def test_fused_network_resamples_the_packaged_camera_grid(fused):
    # packaged: camera 160 x 160 at 0.5 m, LiDAR BEV-net input 80 x 80 at 1 m
    assert fused.camera_grid.cell * 2 == pytest.approx(fused.grid.cell)
    x = torch.arange(160.0).view(1, 1, 1, 160).expand(1, 1, 160, 160)
    out = fused.resample_camera(x)
    assert out.shape == (1, 1, 80, 80)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), np.arange(80) * 2 + 0.5, atol=160 * 4 * EPS)


# ---- identity at init --------------------------------------------------------------------------------------

def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    a, b = a.double(), b.double()
    scale = float(b.abs().max()) + 1.0
    tol = 1e3 * EPS * scale  # a few thousand float32 roundings along the BEV net and heads, relative to the size
    err = float((a - b).abs().max())
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


def test_lidar_only_output_equals_the_lidar_branch_at_init(fused, kitti_frames):
    pts = torch.from_numpy(kitti_frames[0][0])
    with torch.no_grad():
        ref = fused.lidar(pts)
        out = fused(points=pts)
    d = out.detection
    assert bool(out.lidar_present.all()) and not bool(out.camera_present.any())
    assert torch.equal(d.num_voxels, ref.num_voxels) and int(ref.num_voxels[0]) > 1000
    _close(d.occupancy_evidence, ref.occupancy_evidence, "occupancy")
    _close(d.class_alpha, ref.class_alpha, "class alpha")
    for name, x, y in zip("gnab", d.box, ref.box):
        _close(x, y, f"box {name}")
    for name, x, y in zip("gnab", d.curvature, ref.curvature):
        _close(x, y, f"curvature {name}")
    # and the camera at init changes nothing either: its channels have zero weight
    with torch.no_grad():
        both = fused(points=pts, images=_images(), geometry=_geometry(fused))
    _close(both.detection.class_alpha, ref.class_alpha, "class alpha with camera at init")


def test_identity_holds_in_training_mode_with_frozen_batchnorm(fused, kitti_frames):
    pts = torch.from_numpy(kitti_frames[0][0])
    fused.train()
    try:
        assert not fused.fuser[1].training and fused.fuser[0].training
        with torch.no_grad():
            ref = fused.lidar.heads(fused.lidar.bev_net(fused.lidar.backbone_bev(fused.lidar.voxelize(pts)[0])),
                                    fused.lidar.voxelize(pts)[1])
            out = fused(points=pts).detection
    finally:
        fused.eval()
    _close(out.class_alpha, ref.class_alpha, "class alpha (train mode)")


# ---- presence flags ------------------------------------------------------------------------------------------

def test_camera_only_lidar_only_and_both_run_and_are_finite(fused, kitti_frames):
    pts = torch.from_numpy(kitti_frames[0][0])
    geo = _geometry(fused)
    # a fuser that uses the camera and the flags (as after training): outputs must differ by mode
    net = from_packaged(lidar_overrides={"backbone_args": TEST_CONFIG["backbone_args"]})
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        w = net.fuser[0].weight
        w[:, net.lidar_channels:] = 0.05 * torch.randn(w[:, net.lidar_channels:].shape, generator=g)
    outs = {}
    with torch.no_grad():
        outs["lidar"] = net(points=pts)
        outs["camera"] = net(images=_images(), geometry=geo)
        outs["both"] = net(points=pts, images=_images(), geometry=geo)
    for mode, o in outs.items():
        d = o.detection
        for t in (d.occupancy_evidence, d.class_alpha, *d.box, *d.curvature):
            assert bool(torch.isfinite(t).all()), mode
        assert int(d.num_voxels[0]) > 0, mode  # not blanked as an empty scan
    cam = outs["camera"].detection
    assert bool(outs["camera"].camera_present[0]) and not bool(outs["camera"].lidar_present[0])
    # camera-only is not the vacuous "empty scan" output, and the modes differ
    assert float((cam.class_alpha - 1.0).abs().max()) > 0.0
    assert not torch.allclose(outs["both"].detection.class_alpha, outs["lidar"].detection.class_alpha)
    assert not torch.allclose(outs["both"].detection.class_alpha, cam.class_alpha)
    with pytest.raises(ValueError, match="at least one"):
        net()


def test_flags_reach_the_fuser(fused):
    # the flag channels are constant 1 / 0 over the grid: read the fuser's input through a hook
    seen = []
    h = fused.fuser[0].register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        with torch.enable_grad():  # the plain layers (the inference path has no concatenated input)
            fused(images=_images(), geometry=_geometry(fused))
    finally:
        h.remove()
    x = seen[0]
    c = fused.lidar_channels + fused.camera_channels
    assert x.shape[1] == c + 2
    assert torch.equal(x[:, c], torch.zeros_like(x[:, c]))       # LiDAR absent
    assert torch.equal(x[:, c + 1], torch.ones_like(x[:, c + 1]))  # camera present
    assert float(x[:, :fused.lidar_channels].abs().max()) == 0.0
    assert float(x[:, fused.lidar_channels:c].abs().max()) > 0.0


def test_forward_is_deterministic(fused, kitti_frames):
    pts = torch.from_numpy(kitti_frames[0][0])
    geo = _geometry(fused)
    with torch.no_grad():
        a = fused(points=pts, images=_images(), geometry=geo).detection
        b = fused(points=pts, images=_images(), geometry=geo).detection
    assert torch.equal(a.class_alpha, b.class_alpha)
    assert torch.equal(a.occupancy_evidence, b.occupancy_evidence)


def test_per_frame_presence_masks_equal_separate_runs(fused, kitti_frames):
    # modality dropout in training drops an input for some frames of a batch: each frame must come out as
    # if run alone in that mode (frames are independent; BatchNorm in eval mode)
    net = from_packaged(lidar_overrides={"backbone_args": TEST_CONFIG["backbone_args"]})
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        w = net.fuser[0].weight
        w[:, net.lidar_channels:] = 0.05 * torch.randn(w[:, net.lidar_channels:].shape, generator=g)
    geo = _geometry(net)
    p0, p1 = (torch.from_numpy(kitti_frames[i][0]) for i in (0, 1))
    imgs = torch.cat([_images(0), _images(1)])
    with torch.no_grad():
        mixed = net([p0, p1], imgs, geo, lidar_present=torch.tensor([True, False]),
                    camera_present=torch.tensor([True, True])).detection
        both0 = net(p0, imgs[:1], geo).detection
        cam1 = net(images=imgs[1:], geometry=geo).detection
    _close(mixed.class_alpha[:1], both0.class_alpha, "frame 0: both")
    _close(mixed.class_alpha[1:], cam1.class_alpha, "frame 1: camera only")
    _close(mixed.occupancy_evidence[1:], cam1.occupancy_evidence, "frame 1 occupancy")
    with pytest.raises(ValueError, match="not given"):
        net(p0, lidar_present=torch.tensor([True]), camera_present=torch.tensor([True]))


def test_training_branch_freezes_the_encoders_and_drops_modalities():
    from perception_nodes.learning.branches import get_branch

    branch = get_branch("bev_fusion")({"train": {"heads": False, "camera_only": 0.3, "lidar_only": 0.2}})
    net = branch.build_model()
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in net.named_parameters() if n.startswith("fuser.")}
    n = 4000
    batch = branch.augment({"image": torch.zeros(n, 3, 2, 2)}, torch.Generator().manual_seed(0))
    lp, cp = batch["lidar_present"], batch["camera_present"]
    assert bool((lp | cp).all())  # never both dropped
    # P(camera only) = 0.3; P(LiDAR only) = 0.7 * 0.2 = 0.14; 5 binomial sigmas
    for share, p in ((float((~lp).float().mean()), 0.3), (float((~cp).float().mean()), 0.14)):
        assert abs(share - p) <= 5 * (p * (1 - p) / n) ** 0.5


def test_weights_folder_round_trip(fused, kitti_frames, tmp_path):
    from perception_nodes.models.bev_fusion import NETWORK, load_bev_fusion
    from perception_nodes.models.weights_io import WeightsError, save_weights

    with torch.no_grad():
        fused.fuser[0].weight[:, fused.lidar_channels] += 0.01  # not the init: the state must travel
    try:
        save_weights(fused, tmp_path / "w", network=NETWORK, config=fused.fusion_config)
        net, side = load_bev_fusion(tmp_path / "w")
        assert side["config"]["kernel"] == 1
        pts = torch.from_numpy(kitti_frames[0][0])
        with torch.no_grad():
            a = fused(points=pts, images=_images(), geometry=_geometry(fused)).detection
            b = net(points=pts, images=_images(), geometry=_geometry(net)).detection
        _close(b.class_alpha, a.class_alpha, "reloaded")
    finally:
        fused.init_identity()
    with pytest.raises(WeightsError):
        load_bev_fusion(tmp_path / "missing")


@pytest.mark.parametrize("kernel", [1, 3])
def test_inference_fuser_equals_the_plain_layers(fused, kernel):
    # the folded, split fuser (eval, no gradient) against Conv + BN + ReLU on the concatenation
    net = BevFusionNet(fused.lidar, fused.camera, {"kernel": kernel}).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        net.fuser[0].weight.normal_(0.0, 0.1, generator=g)
        bn = net.fuser[1]
        bn.running_mean.normal_(0.0, 0.5, generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
        bn.bias.normal_(0.0, 0.1, generator=g)
    lid = torch.rand(3, net.lidar_channels, 80, 80, generator=g)
    cam = torch.rand(3, net.camera_channels, 160, 160, generator=g)
    masks = [(None, None), (torch.tensor([True, False, True]), torch.tensor([False, True, True]))]
    for lp, cp in masks:
        for a, b in ((lid, cam), (lid, None), (None, cam)):
            lpm = lp if a is not None else None
            cpm = cp if b is not None else None
            with torch.no_grad():
                fast = net.fuse(a, b, 3, lpm, cpm)
            with torch.enable_grad():  # gradient mode: the plain layers
                plain = net.fuse(a, b, 3, lpm, cpm).detach()
            scale = float(plain.abs().max()) + 1.0
            assert float((fast - plain).abs().max()) <= 64 * EPS * scale * (net.lidar_channels + net.camera_channels) ** 0.5


def test_packaged_fused_weights_load_and_run_in_every_mode(kitti_frames):
    from perception_nodes.models.bev_fusion import load_bev_fusion

    net, side = load_bev_fusion()
    assert side["network"] == "bev_fusion" and side["metrics"]["held_out"]
    rows = side["metrics"]["rows"]
    # packaged only because it is not worse than the LiDAR branch with both inputs (README)
    assert rows["fused_both"]["car_ap_bev"] >= rows["lidar_branch"]["car_ap_bev"]
    assert rows["fused_both"]["occ_brier"] <= rows["lidar_branch"]["occ_brier"]
    pts = torch.from_numpy(kitti_frames[0][0])
    geo = _geometry(net)
    with torch.no_grad():
        for kw in ({"points": pts}, {"images": _images(), "geometry": geo}, {"points": pts, "images": _images(), "geometry": geo}):
            d = net(**kw).detection
            for t in (d.occupancy_evidence, d.class_alpha, d.curvature.gamma):
                assert bool(torch.isfinite(t).all())
