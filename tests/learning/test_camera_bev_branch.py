"""The ``camera_bev`` training branch on the embedded scenario's bag (cameras at 320 x 96, depth and BEV
ground truth): samples, a short deterministic training run, validation metrics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from perception_nodes.learning.branches import get_branch
from perception_nodes.learning.branches.camera_bev import CameraBevBranch
from perception_nodes.learning.checkpoint import load_weights
from perception_nodes.learning.data import load_split
from perception_nodes.learning.config import BagSource
from perception_nodes.learning.trainer import train

#: a 40 m square at 0.5 m, 1 m depth bins, a narrow net: a training step takes well under a second
MODEL = {"depth_bins": [1.0, 40.0, 1.0], "bev_origin": [-20.0, -20.0], "bev_size": [80, 80],
         "image_channels": [8, 16], "image_blocks": [0, 1], "context_channels": 8, "bev_channels": [8, 16]}


def cam_config(bag: Path, cache: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "branch": "camera_bev", "seed": 0, "threads": 1, "epochs": 2, "batch_size": 2,
        "data": {"cache_dir": str(cache), "train": [{"path": str(bag), "max_frames": 4}],
                 "val": [{"path": str(bag), "max_frames": 2}]},
        "model": MODEL, "loss": {"kl_anneal_epochs": 1}, "optimizer": {"lr": 0.005},
    }
    cfg.update(overrides)
    return cfg


def test_samples_have_images_grids_and_depth_targets(scenario_bag, tmp_path):
    branch = CameraBevBranch({"model": MODEL})
    assert get_branch("camera_bev") is CameraBevBranch
    data = load_split([BagSource(path=str(scenario_bag), max_frames=2)], branch, cache_dir=tmp_path, role="val",
                      progress=False)
    s = data.samples[0]
    occ = branch.net_config.occupancy_grid
    assert s["image"].dtype == np.uint8 and s["image"].shape[0] == 3
    assert s["occupied"].shape == s["visible"].shape == (occ.height, occ.width)
    assert s["visible"].any() and s["occupied"].any()
    stride = branch.net_config.stride
    assert s["depth_bin"].shape == tuple(-(-n // stride) for n in s["image"].shape[1:])
    d = s["depth_bin"]
    assert (d >= 0).mean() > 0.3 and d.max() < branch.net_config.bins.count  # ground and objects in range


@pytest.mark.slow
def test_training_is_deterministic_and_validated(scenario_bag, tmp_path):
    runs = [train(cam_config(scenario_bag, tmp_path / "cache"), out=tmp_path / f"r{i}", progress=False)
            for i in range(2)]
    h = runs[0].history
    assert [r["epoch"] for r in h] == [1, 2]
    val = h[-1]["val"]
    for key in ("iou", "ece", "vacuity_covered", "vacuity_uncovered", "depth_accuracy"):
        assert key in val and math.isfinite(val[key]), key
    assert val["vacuity_uncovered"] == 1.0 and val["vacuity_covered"] < 1.0  # no evidence where it cannot see
    assert all(math.isfinite(v) for v in h[-1]["train"].values())
    a, b = (load_weights(r.run_dir / "model.safetensors")[0] for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
