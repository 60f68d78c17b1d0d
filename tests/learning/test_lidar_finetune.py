"""The ``lidar_detection`` branch's fine-tuning option (section ``finetune``): a frozen sparse backbone stays
unchanged by a training step, and its cached per-frame BEV features are what a fresh backbone pass gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.config import ConfigError
from perception_nodes.learning.branches.lidar_detection import LidarDetectionBranch
from perception_nodes.learning.trainer import _collate

#: a 24 m x 24 m crop, the real-time network otherwise (as tests/learning/test_lidar_detection_branch.py)
MODEL = {"point_range": [-12.0, -12.0, -1.0, 12.0, 12.0, 3.0]}
FINETUNE = {"freeze_backbone": True, "cache_backbone": True}


def _sample(br: LidarDetectionBranch, seed: int) -> dict[str, np.ndarray]:
    """A scan of a flat ground and two box-shaped objects, with their boxes and grids as targets."""
    rng = np.random.default_rng(seed)
    ground = np.concatenate([rng.uniform(-11.5, 11.5, (3000, 2)), rng.normal(-0.5, 0.02, (3000, 1))], 1)
    objs, boxes = [], []
    for k, (x, y) in enumerate(rng.uniform(-8, 8, (2, 2))):
        size = (4.0, 1.8, 1.5) if k == 0 else (0.6, 0.6, 1.7)
        objs.append(np.array([x, y, 0.3]) + rng.uniform(-0.5, 0.5, (800, 3)) * np.array(size))
        boxes.append([x, y, 0.3, *size, float(rng.uniform(-1, 1)), float(k)])
    xyz = np.concatenate([ground, *objs])
    pts = np.concatenate([xyz, rng.uniform(0, 1, (len(xyz), 1))], 1).astype(np.float32)
    h, w = br.occupancy_spec.shape
    return {"points": pts, "boxes": np.asarray(boxes, np.float32), "occupied": (rng.random((h, w)) > 0.9).astype(np.uint8),
            "visible": np.ones((h, w), np.uint8), "curvature": np.array([0.01, 0.0, np.nan], np.float32)}


def _one_step(sections: dict) -> tuple[LidarDetectionBranch, torch.nn.Module, dict, dict]:
    """A branch of ``sections``, its network (seed 0) and one training step on two samples: the branch, the
    network, and its state before and after."""
    br = LidarDetectionBranch(sections)
    torch.manual_seed(0)
    model = br.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(br, model, _collate([_sample(br, 0), _sample(br, 1)], torch.device("cpu")))
    return br, model, before, model.state_dict()


def _step(br: LidarDetectionBranch, model: torch.nn.Module, batch: dict) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    model.train()
    loss, _ = br.loss(br.forward(model, batch), batch, epoch_progress=1.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@pytest.mark.parametrize("freeze_batchnorm", [False, True])
def test_frozen_backbone_is_unchanged_by_a_step_and_the_rest_trains(freeze_batchnorm):
    _, model, before, after = _one_step({"model": MODEL, "finetune": {**FINETUNE, "freeze_batchnorm": freeze_batchnorm}})
    backbone = [k for k in after if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BN statistics
    assert all(p.grad is None for p in model.backbone.parameters())
    trained = [k for k in after if k.startswith(("bev.", "head_trunk.", "class_head.", "box_head."))
               and after[k].is_floating_point() and "running" not in k]
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))
    running = [k for k in after if not k.startswith("backbone.") and "running_mean" in k]
    moved = [k for k in running if not torch.equal(before[k], after[k])]
    assert (moved == []) if freeze_batchnorm else (len(moved) == len(running) > 0)


def test_cached_features_equal_a_fresh_backbone_pass():
    br = LidarDetectionBranch({"model": MODEL, "finetune": FINETUNE})
    torch.manual_seed(0)
    model = br.build_model()
    samples = [_sample(br, 2), _sample(br, 3)]
    batch = _collate(samples, torch.device("cpu"))
    _step(br, model, batch)  # fills the cache (one entry per frame)
    assert len(br._bev_cache) == 2
    _step(br, model, batch)
    assert len(br._bev_cache) == 2  # hits
    cached, counts = br.backbone_features(model, batch["points"])
    model.eval()
    with torch.no_grad():
        for i, s in enumerate(samples):
            st, n = model.voxelize([torch.from_numpy(s["points"])])
            fresh = model.backbone_bev(st)[0]
            tol = 8 * torch.finfo(torch.float32).eps * float(fresh.abs().max())
            assert fresh.abs().sum() > 0 and torch.allclose(cached[i], fresh, rtol=0, atol=tol)
            assert int(counts[i]) == int(n[0]) > 0
    # a mirrored scan is another frame for the cache; without the cache the frozen path gives the same features
    flipped = batch["points"][0].clone()
    flipped[:, 1] = -flipped[:, 1]
    br.backbone_features(model, [flipped])
    assert len(br._bev_cache) == 3
    plain = LidarDetectionBranch({"model": MODEL, "finetune": {"freeze_backbone": True}})
    direct, _ = plain.backbone_features(model, batch["points"])
    assert torch.allclose(direct, cached, rtol=0, atol=8 * torch.finfo(torch.float32).eps * float(direct.abs().max()))


def test_finetune_options_are_checked_and_described_only_when_used():
    with pytest.raises(ConfigError, match="cache_backbone needs"):
        LidarDetectionBranch({"finetune": {"cache_backbone": True}})
    assert "finetune" not in LidarDetectionBranch({}).describe()
    br = LidarDetectionBranch({"finetune": FINETUNE})
    assert LidarDetectionBranch(br.describe()).finetune == br.finetune


@pytest.mark.slow
def test_finetune_from_trained_weights_is_deterministic_and_keeps_the_backbone(bag_cache, tmp_path):
    """The trainer with ``init_from`` and the cache on fixture bags: two runs give the same weights, the
    backbone is the initial one and the rest moved."""
    from perception_nodes.learning.checkpoint import load_weights
    from perception_nodes.learning.trainer import train
    from tests.learning.test_lidar_detection_branch import det_config

    base = train(det_config(bag_cache, epochs=1), out=tmp_path / "base", progress=False)
    cfg = det_config(bag_cache, epochs=2, init_from=str(base.model_path),
                     finetune={**FINETUNE, "freeze_batchnorm": True}, optimizer={"lr": 0.005, "weight_decay": 0.0})
    runs = [train(cfg, out=tmp_path / f"ft{i}", progress=False) for i in range(2)]
    w0, w1 = (load_weights(r.model_path)[0] for r in runs)
    init = load_weights(base.model_path)[0]
    assert w0.keys() == w1.keys() == init.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all(torch.equal(w0[k], init[k]) for k in w0 if k.startswith("backbone."))
    assert all(torch.equal(w0[k], init[k]) for k in w0 if "running_" in k)  # every BatchNorm frozen
    assert not all(torch.equal(w0[k], init[k]) for k in w0 if k.startswith("box_head."))


def test_train_only_a_new_spatial_curvature_head_leaves_every_other_tensor_as_it_was():
    """finetune.train_only [curvature_head]: a step moves the curvature head only (every other weight and
    BatchNorm statistic unchanged, so every other output is the same), and the spatial head reads where on the
    grid the features are: moving a feature to the other half of the grid changes its output (the global head's
    average would not)."""
    br, model, before, after = _one_step({"model": {**MODEL, "curvature_pool": 4},
                                          "finetune": {**FINETUNE, "train_only": ["curvature_head"]}})
    head = [k for k in after if k.startswith("curvature_head.")]
    assert head and all(not torch.equal(before[k], after[k]) for k in head)
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("curvature_head."))
    model.eval()
    c = model.bev.out_channels
    h, w = model.head_grid.height, model.head_grid.width
    left, right = torch.zeros(1, c, h, w), torch.zeros(1, c, h, w)
    left[..., : h // 4, :] = 1.0
    right[..., -(h // 4):, :] = 1.0  # the same features, mirrored across the grid
    with torch.no_grad():
        assert not torch.allclose(model.curvature_head(left), model.curvature_head(right))
    with pytest.raises(ConfigError, match="must divide"):
        LidarDetectionBranch({"model": {**MODEL, "curvature_pool": 7}}).build_model()
    for name in ("no_such_head", "bev", "backbone"):  # the backbone and BEV net run without gradient there
        with pytest.raises(ConfigError, match="not one of the heads"):
            LidarDetectionBranch({"model": MODEL, "finetune": {"train_only": [name]}}).build_model()
    desc = br.describe()
    assert desc["finetune"]["train_only"] == ["curvature_head"] and desc["model"]["curvature_pool"] == 4
    assert "train_only" not in LidarDetectionBranch({"finetune": FINETUNE}).describe()["finetune"]


def test_init_from_weights_with_the_global_head_starts_the_spatial_head_fresh(tmp_path):
    """The trainer's init_from with train_only: tensors of the old global curvature head do not fit the new one,
    which keeps its initialisation; every other tensor is loaded; a tensor missing outside the trained modules
    is still an error."""
    from perception_nodes.learning.checkpoint import CheckpointError
    from perception_nodes.learning.trainer import _init_model

    old = LidarDetectionBranch({"model": MODEL}).build_model()
    new_br = LidarDetectionBranch({"model": {**MODEL, "curvature_pool": 4}, "finetune": {"train_only": ["curvature_head"]}})
    torch.manual_seed(1)
    new = new_br.build_model()
    fresh = {k: v.clone() for k, v in new.state_dict().items() if k.startswith("curvature_head.")}
    state = old.state_dict()
    assert _init_model(new, state, new_br.init_fresh_modules(), "old weights") == ["curvature_head"]
    got = new.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in got if not k.startswith("curvature_head."))
    assert all(torch.equal(got[k], fresh[k]) for k in fresh)
    # a module whose form changed but some of whose tensors happen to fit is not loaded in part: all fresh
    torch.manual_seed(2)
    odd = LidarDetectionBranch({"model": {**MODEL, "curvature_pool": 4, "head_channels": 32,
                                          "curvature_horizons_m": [0, 5, 10, 15, 20, 25, 30, 35]},
                                "finetune": {"train_only": ["curvature_head"]}})
    odd_net = odd.build_model()
    odd_old = LidarDetectionBranch({"model": {**MODEL, "head_channels": 32,
                                              "curvature_horizons_m": [0, 5, 10, 15, 20, 25, 30, 35]}}).build_model()
    before_odd = {k: v.clone() for k, v in odd_net.state_dict().items() if k.startswith("curvature_head.")}
    old_state = odd_old.state_dict()
    assert old_state["curvature_head.4.bias"].shape == before_odd["curvature_head.4.bias"].shape  # fits by chance
    assert _init_model(odd_net, old_state, odd.init_fresh_modules(), "old") == ["curvature_head"]
    assert all(torch.equal(odd_net.state_dict()[k], v) for k, v in before_odd.items())
    # the same form: loaded whole (a head trained further)
    same = LidarDetectionBranch({"model": MODEL, "finetune": {"train_only": ["curvature_head"]}})
    same_net = same.build_model()
    assert _init_model(same_net, old.state_dict(), same.init_fresh_modules(), "old") == []
    assert all(torch.equal(same_net.state_dict()[k], v) for k, v in old.state_dict().items())
    del state["box_head.0.weight"]
    with pytest.raises(CheckpointError, match="box_head.0.weight"):
        _init_model(new, state, new_br.init_fresh_modules(), "old weights")
