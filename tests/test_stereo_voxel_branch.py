"""The ``stereo_voxel`` training branch: frustum targets from a ground-truth grid, the loss on a batch,
the metrics and their trivial baselines (no bag needed: the generator's rig and hand-made grids)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.learning.branches import get_branch
from perception_nodes.learning.branches.stereo_voxel import (
    StereoVoxelBranch,
    TargetParams,
    frustum_cell_points,
    frustum_targets,
    generator_geometry,
)
from perception_nodes.models.stereo_voxel import STRIDE
from perception_nodes.pipeline.occupancy import GridSpec

W, H = 320, 96


def test_registered_and_config_errors_are_clear():
    assert get_branch("stereo_voxel") is StereoVoxelBranch
    from perception_nodes.config import ConfigError

    with pytest.raises(ConfigError, match="unknown section"):
        StereoVoxelBranch({"nope": {}})
    with pytest.raises(ConfigError, match="planes"):
        StereoVoxelBranch({"model": {"planes": 7}})
    b = StereoVoxelBranch()
    assert type(b)(b.describe()).describe() == b.describe()


def test_cell_points_lie_inside_their_plane_and_columns():
    b = StereoVoxelBranch()
    g, T = generator_geometry(W, H)
    pts = frustum_cell_points(b.net_config, g, T, TargetParams())
    net = b.build_model()
    near, far = (t.numpy() for t in net.plane_depths(g.fb))
    # back into the optical frame: depth along the axis within the plane's bounds, column within its 4 px
    inv = np.linalg.inv(T)
    xyz = np.concatenate([pts, np.zeros(pts.shape[:-1] + (1,))], -1)
    xyz[..., 2] = T[2, 3]  # the camera's height (the grid is 2-D; points sampled at it)
    opt = xyz @ inv[:3, :3].T + inv[:3, 3]
    z = opt[..., 2]
    tol = 1e-9 * 100
    assert (z[1:] >= near[1:, None, None] - tol).all() and (z[1:] <= far[1:, None, None] + tol).all()
    u = opt[..., 0] / z * g.fx + g.cx
    j = np.arange(W // STRIDE)[None, :, None]
    assert (u >= STRIDE * j - 0.5 - 1e-6).all() and (u <= STRIDE * j + STRIDE - 0.5 + 1e-6).all()


def test_frustum_targets_of_a_wall():
    """A wall across the road 10 m ahead of the camera: the cells at that depth are occupied, the ones in
    front free and visible, the ones behind it not visible."""
    b = StereoVoxelBranch()
    g, T = generator_geometry(W, H)
    pts = frustum_cell_points(b.net_config, g, T, TargetParams())
    spec = GridSpec(0.25, 80.0, 80.0, (-40.0, -40.0))
    xs = spec.origin[0] + (np.arange(spec.shape[1]) + 0.5) * spec.resolution
    wall_x = T[0, 3] + 10.0
    occ = np.zeros(spec.shape, bool)
    occ[:, np.abs(xs - wall_x) < 0.3] = True
    vis = np.broadcast_to(xs[None, :] < wall_x + 0.3, spec.shape)
    o, v = frustum_targets(pts, occ, vis, spec)
    near, far = (t.numpy() for t in b.build_model().plane_depths(g.fb))
    hit = (near <= 10.0) & (far >= 10.0)
    centre = W // STRIDE // 2
    assert o[hit, centre].all() and v[hit, centre].all()
    before = far < 9.0  # planes wholly in front of the wall
    assert v[before, centre].all() and not o[before, centre].any()
    behind = near > 11.0
    assert not v[behind, centre].any()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (2, 3, H, W + 8), dtype=np.uint8)
    d = StereoVoxelBranch().net_config.planes
    occ = (rng.random((2, d, W // 4)) < 0.2).astype(np.float32)
    return {"left": torch.from_numpy(big[..., :W].copy()), "right": torch.from_numpy(big[..., 8:].copy()),
            "disparity": torch.full((2, H, W), 8.0), "occupied": torch.from_numpy(occ),
            "visible": torch.from_numpy(rng.random((2, d, W // 4)) < 0.7)}


def test_loss_is_finite_and_a_few_steps_lower_it():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    b = StereoVoxelBranch()
    net = b.build_model().train()
    batch = _batch()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss, logs = b.loss(b.forward(net, batch), batch, epoch_progress=1.0)
        assert torch.isfinite(loss) and set(logs) >= {"occ_fine", "occ_coarse", "disparity_l1"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_evaluate_reports_depth_occupancy_and_baselines():
    torch.manual_seed(0)
    b = StereoVoxelBranch()
    net = b.build_model()
    batch = _batch(1)
    samples = [{k: v[i].numpy() for k, v in batch.items()} for i in range(2)]
    m = b.evaluate(net, samples, batch_size=2, device=torch.device("cpu"))
    for k in ("iou", "brier", "ece", "abs_rel", "within_3px", "refined_share", "brier_all_free", "brier_constant"):
        assert k in m and np.isfinite(m[k]), k
    f = m["occupied_fraction"]
    assert m["brier_all_free"] == pytest.approx(f) and m["brier_constant"] == pytest.approx(f * (1 - f))
    assert 0.0 <= m["refined_share"] <= 1.0
    assert net.training  # evaluate restores the mode
