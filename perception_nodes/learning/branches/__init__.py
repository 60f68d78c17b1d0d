"""Trainable branches by name. A new branch subclasses :class:`~perception_nodes.learning.branches.base.Branch`
and adds itself to :data:`BRANCHES` (planned: camera BEV, stereo depth, fusion, control with an NIG head)."""

from __future__ import annotations

from perception_nodes.learning.branches.base import Batch, Branch, Sample
from perception_nodes.learning.branches.bev_fusion import BevFusionBranch
from perception_nodes.learning.branches.camera_bev import CameraBevBranch
from perception_nodes.learning.branches.lidar_detection import LidarDetectionBranch
from perception_nodes.learning.branches.lidar_occupancy import LidarOccupancyBranch
from perception_nodes.learning.branches.stereo_voxel import StereoVoxelBranch

#: branch name -> class (``perception-stack train <name>``)
BRANCHES: dict[str, type[Branch]] = {
    LidarOccupancyBranch.name: LidarOccupancyBranch,
    LidarDetectionBranch.name: LidarDetectionBranch,
    CameraBevBranch.name: CameraBevBranch,
    StereoVoxelBranch.name: StereoVoxelBranch,
    BevFusionBranch.name: BevFusionBranch,
}


def get_branch(name: str) -> type[Branch]:
    """The branch class registered as ``name``; ValueError listing the known ones otherwise."""
    try:
        return BRANCHES[name]
    except KeyError:
        raise ValueError(f"unknown branch {name!r} (known: {', '.join(sorted(BRANCHES))})") from None


__all__ = ["BRANCHES", "Batch", "BevFusionBranch", "Branch", "CameraBevBranch", "LidarDetectionBranch", "LidarOccupancyBranch", "Sample", "StereoVoxelBranch", "get_branch"]
