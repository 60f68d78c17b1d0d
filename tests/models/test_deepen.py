"""Function-preserving deepening of the LiDAR branch network (perception_nodes/models/deepen.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perception_nodes.models.decode import decode_batch
from perception_nodes.models.deepen import check_deepening, deepen_lidar_detection, main
from perception_nodes.models.lidar_detection import LidarDetectionConfig, LidarDetectionNet
from perception_nodes.models.weights_io import default_weights_dir, load_lidar_detection, load_state

REPO = Path(__file__).resolve().parents[2]
DEEP = REPO / "benchmarks" / "lidar_capacity" / "deep.json"
WIDE = REPO / "benchmarks" / "lidar_capacity" / "wide.json"
PINNED = {"dataflow": "gather_scatter"}  # no autotuning in tests


def _cfgs() -> tuple[dict, dict]:
    small = json.loads((REPO / "benchmarks" / "lidar_capacity" / "base.json").read_text())
    deep = json.loads(DEEP.read_text())
    for c in (small, deep):
        c["backbone_args"] = {**c["backbone_args"], **PINNED}
    return small, deep


def _tensors(out) -> dict[str, torch.Tensor]:
    t = {"occupancy": out.occupancy_evidence, "class_alpha": out.class_alpha, "num_voxels": out.num_voxels.float()}
    for name in ("box", "curvature"):
        for f, v in zip(("gamma", "nu", "alpha", "beta"), getattr(out, name)):
            t[f"{name}.{f}"] = v
    return t


def test_the_deepened_packaged_network_computes_what_the_packaged_one_does(kitti_frames):
    small_cfg, deep_cfg = _cfgs()
    folder = default_weights_dir("lidar_detection")
    small_net, _ = load_lidar_detection(folder, overrides={"backbone_args": small_cfg["backbone_args"]})
    deep_net = deepen_lidar_detection(load_state(folder), small_cfg, deep_cfg)
    assert sum(p.numel() for p in deep_net.parameters()) > sum(p.numel() for p in small_net.parameters())
    pts = torch.from_numpy(kitti_frames[0][0])
    with torch.no_grad():
        a, b = small_net(pts), deep_net(pts)
    ta, tb = _tensors(a), _tensors(b)
    for k in ta:
        # an added layer multiplies by exactly 1 and adds exact zeros; the BatchNorm divides by sqrt((1 - eps) + eps),
        # 1 to within a float32 ulp per added layer (4 in a row at most): 8 eps of relative error allowed
        tol = 8 * float(np.finfo(np.float32).eps) * float(ta[k].abs().max()) + 1e-30
        assert torch.allclose(ta[k], tb[k], rtol=0, atol=tol), (k, float((ta[k] - tb[k]).abs().max()))
    (da,), (db,) = (decode_batch(o, net.head_grid, net.config.classes, score_threshold=0.1)
                    for o, net in ((a, small_net), (b, deep_net)))
    assert len(da.score) == len(db.score) > 0
    np.testing.assert_allclose(da.center, db.center, atol=1e-4)
    np.testing.assert_allclose(da.score, db.score, atol=1e-5)


def test_the_added_layers_are_trainable_and_move_the_output(kitti_frames):
    """Identity at the start, not frozen: a step on an added layer changes what the network computes."""
    small_cfg, deep_cfg = _cfgs()
    folder = default_weights_dir("lidar_detection")
    net = deepen_lidar_detection(load_state(folder), small_cfg, deep_cfg)
    pts = torch.from_numpy(kitti_frames[0][0])
    with torch.no_grad():
        before = net(pts).class_alpha.clone()
        w = net.get_submodule("bev.stage1.2.0").weight
        w.add_(0.01 * torch.randn_like(w, generator=torch.Generator().manual_seed(0)))
        after = net(pts).class_alpha
    assert w.requires_grad
    assert float((after - before).abs().max()) > 1e-3


@pytest.mark.parametrize("change", ["wide", "fewer_layers", "other_key"])
def test_only_appended_layers_are_accepted(change):
    small_cfg, deep_cfg = _cfgs()
    if change == "wide":
        bad = json.loads(WIDE.read_text())
        bad["backbone_args"] = {**bad["backbone_args"], **PINNED}
    elif change == "fewer_layers":
        bad = {**deep_cfg, "bev_layers": [0, 2]}
    else:
        bad = {**deep_cfg, "head_channels": 16}
    with pytest.raises(ValueError):
        check_deepening(LidarDetectionConfig.from_mapping(small_cfg), LidarDetectionConfig.from_mapping(bad))


def test_a_state_of_another_network_is_refused():
    small_cfg, deep_cfg = _cfgs()
    state = dict(load_state(default_weights_dir("lidar_detection")))
    state.pop(sorted(state)[0])
    with pytest.raises(ValueError, match="not the small network"):
        deepen_lidar_detection(state, small_cfg, deep_cfg)


def test_the_cli_writes_tensors_that_load_strictly_into_the_deep_network(tmp_path):
    out = tmp_path / "deep.safetensors"
    assert main(["--weights", str(default_weights_dir("lidar_detection")), "--config", str(DEEP), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    state = load_file(str(out))
    net = LidarDetectionNet(json.loads(DEEP.read_text()))
    net.load_state_dict(state, strict=True)
    small = load_state(default_weights_dir("lidar_detection"))
    assert set(small) < set(state)
    assert all(torch.equal(small[k], state[k]) for k in small)


@pytest.mark.parametrize("case", ["wide", "no_layer_added", "missing_weights", "missing_config", "not_json"])
def test_the_cli_answers_bad_input_with_a_usage_error(case, tmp_path, capsys):
    weights = str(default_weights_dir("lidar_detection"))
    config = str(DEEP)
    if case == "wide":
        config = str(WIDE)
    elif case == "no_layer_added":
        config = str(REPO / "benchmarks" / "lidar_capacity" / "base.json")
    elif case == "missing_weights":
        weights = str(tmp_path / "nothing_here")
    elif case == "missing_config":
        config = str(tmp_path / "nothing.json")
    else:
        (tmp_path / "c.yaml").write_text("backbone: lite\n")
        config = str(tmp_path / "c.yaml")
    out = tmp_path / "deep.safetensors"
    with pytest.raises(SystemExit) as exc:
        main(["--weights", weights, "--config", config, "--out", str(out)])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()
