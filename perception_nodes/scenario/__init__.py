"""The embedded default scenario: a procedural street scene and a rotating-LiDAR simulator.

Example::

    from perception_nodes.scenario import *
    scene = default_scene(seed=0)
    cloud = render_scan(scene, 1.0, BeamModel.hdl64(), np.random.default_rng(0))  # (N, 4), lidar frame
    truth = boxes_in_base_link(actors_at(scene, 1.0, OBJECT_LABELS), ego_pose3d(1.0, scene))

Nothing is downloaded; everything is a pure function of (seed, t).
"""

from perception_nodes.scenario.lidar import (
    LIDAR_HEIGHT,
    SURFACE_CURB,
    SURFACE_MARKING,
    SURFACE_ROAD,
    SURFACE_SIDEWALK,
    BeamModel,
    ScanResult,
    boxes_in_lidar,
    cast_scan,
    hdl64,
    render_scan,
    vlp16,
    vlp32,
)
from perception_nodes.scenario.scene import (
    ALL_LABELS,
    OBJECT_LABELS,
    STATIC_LABELS,
    Actor,
    EgoTrajectory,
    Ground,
    Scene,
    actors_at,
    boxes_in_base_link,
    boxes_in_map,
    default_scene,
    ego_pose,
    ego_pose3d,
)

__all__ = [
    "ALL_LABELS",
    "LIDAR_HEIGHT",
    "OBJECT_LABELS",
    "STATIC_LABELS",
    "SURFACE_CURB",
    "SURFACE_MARKING",
    "SURFACE_ROAD",
    "SURFACE_SIDEWALK",
    "Actor",
    "BeamModel",
    "EgoTrajectory",
    "Ground",
    "ScanResult",
    "Scene",
    "actors_at",
    "boxes_in_base_link",
    "boxes_in_lidar",
    "boxes_in_map",
    "cast_scan",
    "default_scene",
    "ego_pose",
    "ego_pose3d",
    "hdl64",
    "render_scan",
    "vlp16",
    "vlp32",
]
