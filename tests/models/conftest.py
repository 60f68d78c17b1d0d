"""Shared fixtures of the model tests: one network per session, real KITTI scans in base_link."""

from __future__ import annotations

import numpy as np
import pytest
import torch

#: tests pin one dataflow: autotuning every layer on first use costs seconds and is not what is tested
def _test_config() -> dict:
    from perception_nodes.models import LidarDetectionConfig

    return {"backbone_args": {**LidarDetectionConfig().backbone_args, "dataflow": "gather_scatter"}}


#: clouds with no usable point (the vacuous-output tests of the network with and without a context margin)
BAD_CLOUDS = [
    np.zeros((0, 4), np.float32),  # empty cloud
    np.array([[500.0, 0.0, 1.0, 0.5], [0.0, -300.0, 1.0, 0.5], [5.0, 5.0, 40.0, 0.1]], np.float32),  # out of range
    np.full((64, 4), np.nan, np.float32),  # all NaN
    np.array([[np.inf, 1.0, 1.0, 0.2], [1.0, -np.inf, 0.5, 0.3]], np.float32),  # infinities
]
BAD_CLOUD_IDS = ["empty", "out_of_range", "nan", "inf"]

TEST_CONFIG = _test_config()
#: a 32 m x 32 m crop: same network, a sixth of the cells, for the tests that run it many times
SMALL_CONFIG = {**TEST_CONFIG, "point_range": [-16.0, -16.0, -1.0, 16.0, 16.0, 5.0]}


@pytest.fixture(scope="session")
def lidar_net():
    from perception_nodes.models import LidarDetectionNet

    torch.manual_seed(0)
    return LidarDetectionNet(TEST_CONFIG).eval()


@pytest.fixture(scope="session")
def small_net():
    from perception_nodes.models import LidarDetectionNet

    torch.manual_seed(0)
    return LidarDetectionNet(SMALL_CONFIG).eval()


@pytest.fixture(scope="session")
def kitti_frames(kitti_dir):
    """The KITTI object frames with points and boxes moved into base_link (ground at z = 0)."""
    from perception_nodes.calibration import transform_points
    from perception_nodes.datasets.kitti import read_kitti_object

    frames = []
    for f in read_kitti_object(kitti_dir):
        pts = f.points.copy()
        pts[:, :3] = transform_points(f.lidar_to_base, pts[:, :3])
        frames.append((np.ascontiguousarray(pts[:, :4], np.float32), f.boxes_in_base()))
    return frames


@pytest.fixture(scope="session")
def kitti_output(lidar_net, kitti_frames):
    """The default network's output on the first real KITTI scan, computed once at one thread."""
    pts, _ = kitti_frames[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return lidar_net(torch.from_numpy(pts))
    finally:
        torch.set_num_threads(threads)
