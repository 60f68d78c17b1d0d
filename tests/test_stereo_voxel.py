"""The learned stereo network (perception_nodes/models/stereo_voxel.py): shapes, non-negative evidence,
pruning that really skips refine work, determinism, and the cost volume's geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.models.stereo_voxel import StereoVoxelConfig, StereoVoxelNet


def _pair(seed: int = 0, h: int = 96, w: int = 320, shift: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A random-texture left image and the right image = left shifted ``shift`` px left (constant disparity)."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (1, 3, h, w + shift), dtype=np.uint8)
    left = torch.from_numpy(big[..., :w].copy())  # right(u - shift) = left(u)
    right = torch.from_numpy(big[..., shift:].copy())
    return left, right


def _net(**kw) -> StereoVoxelNet:
    torch.manual_seed(0)
    return StereoVoxelNet(StereoVoxelConfig(**kw)).eval()


def test_shapes_and_non_negative_evidence():
    net = _net()
    left, right = _pair()
    with torch.no_grad():
        out = net(left, right)
    d = net.config.planes
    assert out.disparity.shape == (1, 96, 320)
    assert out.plane_logits.shape == (1, d, 24, 80)
    assert out.coarse_evidence.shape == (1, 2, d // 2, 40)
    assert out.occupancy_evidence.shape == (1, 2, d, 80)
    assert out.refined.shape == (1, d, 80)
    assert (out.coarse_evidence >= 0).all() and (out.occupancy_evidence >= 0).all()
    assert ((out.disparity >= 0) & (out.disparity <= net.config.max_disparity + 1e-4)).all()


def test_bad_sizes_are_rejected():
    net = _net()
    left, right = _pair()
    with pytest.raises(ValueError, match="multiple of 8"):
        net(left[..., :95, :], right[..., :95, :])
    with pytest.raises(ValueError, match="one shape"):
        net(left, right[..., :312])


def test_pruning_skips_refine_work_and_pruned_cells_inherit_coarse_evidence():
    import dataclasses

    net = _net()
    with torch.no_grad():  # lean the coarse head toward "free" so the threshold below lies above 0.5
        net.coarse_head.bias.copy_(torch.tensor([-2.0, 2.0]))
    left, right = _pair(1)
    with torch.no_grad():
        ev = net(left, right, prune=False).coarse_evidence
    free = ((ev[:, 1] + 1) / (ev.sum(1) + 2)).flatten()
    thr = float(free.median())
    assert 0.5 < thr < float(free.max())
    net.config = dataclasses.replace(net.config, prune_free_belief=thr)
    calls: list[int] = []
    net.refine.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        pruned = net(left, right, prune=True)
        full = net(left, right, prune=False)
    n_total = pruned.total_cells
    assert full.refined_cells == n_total
    assert 0 < pruned.refined_cells < n_total
    # the refine head saw exactly the kept cells (the skipped work is real)
    assert calls == [pruned.refined_cells, n_total]
    keep = pruned.refined[0]
    up = torch.nn.functional.interpolate(pruned.coarse_evidence, scale_factor=2, mode="nearest")[0]
    assert torch.equal(pruned.occupancy_evidence[0][:, ~keep], up[:, ~keep])
    eps = 1e-5 * 100
    assert torch.allclose(pruned.occupancy_evidence[0][:, keep], full.occupancy_evidence[0][:, keep], atol=eps)
    # pruned cells are the confidently free ones
    free = (up[1] + 1) / (up.sum(0) + 2)
    assert (free[~keep] >= thr).all() and (free[keep] < thr).all()


def test_forward_is_deterministic():
    torch.set_num_threads(1)
    left, right = _pair(2)
    a, b = _net(), _net()
    with torch.no_grad():
        o1, o2 = a(left, right), b(left, right)
    for t1, t2 in ((o1.disparity, o2.disparity), (o1.occupancy_evidence, o2.occupancy_evidence)):
        assert torch.equal(t1, t2)


def test_cost_volume_peaks_at_the_true_shift():
    """Identity features: correlation of a shifted texture peaks at the plane of the true disparity."""
    net = _net()
    rng = np.random.default_rng(3)
    f = torch.from_numpy(rng.standard_normal((1, 4, 6, 60 + 3)).astype(np.float32))
    fl, fr = f[..., :60], f[..., 3:]  # right(u - 3) = left(u): 3 quarter-res px -> plane 3 / step
    vol = net.cost_volume(fl.contiguous(), fr.contiguous())
    k = int(round(3 / net.config.plane_step))
    assert int(vol[0, :, :, 20:].mean((1, 2)).argmax()) == k


def test_plane_depths_bracket_the_plane_centres():
    net = _net()
    near, far = net.plane_depths(100.0)
    d = net.plane_disparities().double()
    assert torch.isinf(far[0])
    centre = 100.0 / d[1:]
    assert (near[1:] < centre).all() and (centre < far[1:]).all()
    assert torch.allclose(near[:-1], far[1:])  # planes tile depth without gaps


def test_weights_folder_round_trip_and_wrong_network(tmp_path):
    from perception_nodes.models.stereo_voxel import NETWORK, load_stereo_voxel
    from perception_nodes.models.weights_io import WeightsError, save_weights

    net = _net(planes=12)
    save_weights(net, tmp_path / "w", network=NETWORK, config=net.config)
    loaded, side = load_stereo_voxel(str(tmp_path / "w"))
    assert loaded.config == net.config and side["network"] == NETWORK
    left, right = _pair(4)
    with torch.no_grad():
        assert torch.equal(loaded(left, right).disparity, net(left, right).disparity)
    save_weights(net, tmp_path / "other", network="lidar_detection", config=net.config)
    with pytest.raises(WeightsError, match="not 'stereo_voxel'"):
        load_stereo_voxel(str(tmp_path / "other"))
    with pytest.raises(WeightsError, match="no weights"):
        load_stereo_voxel(str(tmp_path / "missing"))


def test_pair_norm_takes_out_a_common_gain_and_offset():
    net = _net(input_norm="pair")
    left, right = (t.float() for t in _pair(5))
    with torch.no_grad():
        a = net(left, right).disparity
        b = net(left * 0.5 + 40.0, right * 0.5 + 40.0).disparity
    assert torch.allclose(a, b, atol=1e-3 * float(net.config.max_disparity))
    with pytest.raises(ValueError, match="input_norm"):
        StereoVoxelConfig(input_norm="nope")


def test_packaged_weights_load_and_say_what_made_them():
    """The packaged folder (perception_nodes/models/weights/stereo_voxel) rebuilds its network and carries
    the held-out and real-pair metrics it was packaged with."""
    from perception_nodes.models.stereo_voxel import load_stereo_voxel

    net, side = load_stereo_voxel()
    assert side["branch_config"]["model"] == {k: getattr(net.config, k) for k in side["config"]}
    for key in ("generated", "kitti", "speed"):
        assert key in side["metrics"]
    left, right = _pair(6, shift=12)
    with torch.no_grad():
        out = net(left, right)
    assert torch.isfinite(out.disparity).all() and (out.occupancy_evidence >= 0).all()
