"""A tiny random-initialised LiDAR branch network saved as a weights folder, for node tests.

The tests check the node (wiring, messages, accounting, bad input), not what a trained network detects,
so they run a network a fraction of the packaged size (a 3-layer sparse backbone, 0.4 m voxels, 64 m crop)
and never depend on trained weights being in the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: network config of the tests (its occupancy grid differs from the occupancy node's on purpose: fusion
#: must resample)
TINY_CONFIG: dict[str, Any] = {
    "point_range": [-32.0, -32.0, -1.0, 32.0, 32.0, 5.0],
    "voxel_size": [0.4, 0.4, 0.4],
    "backbone": "tiny_test",
    "backbone_args": {"dataflow": "gather_scatter"},
    "bev_channels": [16, 32],
    "bev_layers": [1, 1],
    "head_upsample": 1,
    "head_channels": 16,
    "occupancy_resolution": 0.5,
    # untrained, every class logit starts equal: scores ~1/(K+1) = 0.25 everywhere, so some boxes pass the
    # tests' threshold of 0.2 (the packaged config starts background at +2, i.e. "nothing here")
    "class_bias": 0.0,
    "background_bias": 0.0,
}


def _tiny_backbone(in_channels: int, dataflow: str = "gather_scatter") -> Any:
    from engines.sparse.backbones import conv_module
    from engines.sparse.norm import SparseSequential

    return SparseSequential(conv_module(in_channels, 8, 3, "subm", indice_key="subm1", dataflow=dataflow),
                            conv_module(8, 16, 3, "spconv", 2, 1, "spconv2", dataflow),
                            conv_module(16, 16, (3, 1, 1), "spconv", (2, 1, 1), 0, "down", dataflow))


def register_tiny_backbone() -> None:
    from perception_nodes.models import register_backbone

    register_backbone("tiny_test", _tiny_backbone)


def save_tiny_weights(folder: Path, seed: int = 0) -> Path:
    """Build the tiny network with ``seed`` and save it with :func:`save_weights`; returns the folder."""
    import torch

    from perception_nodes.models import LidarDetectionNet
    from perception_nodes.models.weights_io import save_weights

    register_tiny_backbone()
    torch.manual_seed(seed)
    net = LidarDetectionNet(TINY_CONFIG).eval()
    return save_weights(net, folder, network="lidar_detection", config=net.config,
                        training={"note": "random initialisation (tests)"})


def branch_params(weights: Path, **overrides: Any) -> dict[str, Any]:
    """The params file's ``lidar_detection`` section with the tiny weights (and ``overrides``)."""
    from perception_nodes.config import load_params

    p = {k: v for k, v in load_params()["lidar_detection"].items() if k != "enabled"}
    p["weights"] = str(weights)
    p["score_threshold"] = 0.2  # an untrained net scores ~1/(K+1) = 0.25 everywhere: some boxes come out
    p.update(overrides)
    return p
