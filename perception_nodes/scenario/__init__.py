"""The scenario generator: procedural driving scenes, a rotating-LiDAR and camera simulator, ground truth.

Example::

    from perception_nodes.scenario import *
    scene = SCENARIOS["curved_road"](seed=0)           # or default_scene(0), the embedded default
    cloud = render_scan(scene, 1.0, BeamModel.hdl64(), np.random.default_rng(0))  # (N, 4), lidar frame
    truth = boxes_in_base_link(actors_at(scene, 1.0, OBJECT_LABELS), ego_pose3d(1.0, scene))
    left = render_camera(scene, 1.0, camera_rig()["left"], 0)  # .rgb, .depth
    generate_bag("out/bag", scenario="highway", seed=3, faults=Faults(lidar_sector_deg=(60, 120)))
    generate_bag("out/kitti_like", scenario="urban_street", realism="kitti")  # sim-to-real knobs, see realism.py

Nothing is downloaded; everything is a pure function of (seed, t).
"""

from perception_nodes.scenario.camera import CameraFrame, CameraSpec, camera_rig, disparity_from_depth, render_camera
from perception_nodes.scenario.faults import Faults, parse_faults
from perception_nodes.scenario.lidar import (
    LIDAR_HEIGHT,
    SURFACE_GRASS,
    SURFACE_CURB,
    SURFACE_MARKING,
    SURFACE_ROAD,
    SURFACE_SIDEWALK,
    BeamModel,
    ScanResult,
    boxes_in_lidar,
    cast_scan,
    hdl32e,
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
    RoadPath,
    Scene,
    actors_at,
    boxes_in_base_link,
    boxes_in_map,
    default_scene,
    ego_pose,
    ego_pose3d,
)
from perception_nodes.scenario.realism import Realism, RealismState, apply_scene_realism
from perception_nodes.scenario.scenarios import SCENARIOS, make_scene



def __getattr__(name: str):
    # the generator is imported on first use, so ``python -m perception_nodes.scenario.generate`` runs cleanly
    if name == "generate_bag":
        from perception_nodes.scenario.generate import generate_bag

        return generate_bag
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL_LABELS",
    "LIDAR_HEIGHT",
    "OBJECT_LABELS",
    "STATIC_LABELS",
    "SCENARIOS",
    "SURFACE_CURB",
    "SURFACE_GRASS",
    "SURFACE_MARKING",
    "SURFACE_ROAD",
    "SURFACE_SIDEWALK",
    "Actor",
    "BeamModel",
    "CameraFrame",
    "CameraSpec",
    "Faults",
    "EgoTrajectory",
    "Ground",
    "RoadPath",
    "ScanResult",
    "Scene",
    "actors_at",
    "boxes_in_base_link",
    "boxes_in_lidar",
    "boxes_in_map",
    "camera_rig",
    "cast_scan",
    "default_scene",
    "disparity_from_depth",
    "ego_pose",
    "ego_pose3d",
    "generate_bag",
    "hdl32e",
    "hdl64",
    "make_scene",
    "Realism",
    "RealismState",
    "apply_scene_realism",
    "parse_faults",
    "render_camera",
    "render_scan",
    "vlp16",
    "vlp32",
]
