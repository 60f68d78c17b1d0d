"""ros2 launch file of the perception graph (for systems with a ROS 2 install).

    ros2 launch perception_bringup perception.launch.py [params_file:=FILE] [use_sim_time:=true] [autostart:=false]

Starts one process per node, each reading its section of the params file (default: the documented
perception.params.yaml installed with the bringup package, the same file `perception-stack` uses).
The nodes are managed (lifecycle) nodes: with autostart:=true (default) each configures and activates
itself once started; with autostart:=false they wait in `unconfigured` for
`ros2 lifecycle set /<node> configure` and `activate`. Unknown or out-of-range parameters stop a node
at start with the reason.
Discovery range and domain come from the environment as usual (ROS_AUTOMATIC_DISCOVERY_RANGE,
ROS_DOMAIN_ID).
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

#: lidar_detection, camera_bev and bev_fusion need network weights: without them their configure fails with the reason
#: (the node stays unconfigured; the others run on)
NODES = ("ground_segmentation", "occupancy_grid", "lidar_detection", "stereo_occupancy", "camera_bev", "fusion",
         "calibration_monitor", "detection_fusion", "control",
         "bev_fusion")


def _default_params() -> str:
    try:
        from ament_index_python.packages import get_package_share_directory

        return str(Path(get_package_share_directory("perception_bringup")) / "config" / "perception.params.yaml")
    except Exception:  # running from the source tree
        return str(Path(__file__).resolve().parent / "perception.params.yaml")


def generate_launch_description() -> LaunchDescription:
    params_file = LaunchConfiguration("params_file")
    use_sim_time = LaunchConfiguration("use_sim_time")
    autostart = LaunchConfiguration("autostart")
    nodes = [
        LifecycleNode(
            package="perception_bringup",
            executable=f"{name}_node",
            name=name,
            namespace="",
            output="screen",
            parameters=[params_file, {"use_sim_time": use_sim_time, "autostart": autostart}],
        )
        for name in NODES
    ]
    return LaunchDescription(
        [
            DeclareLaunchArgument("params_file", default_value=_default_params(), description="params YAML"),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
            DeclareLaunchArgument("autostart", default_value="true",
                                  description="configure + activate the managed nodes at start"),
            *nodes,
        ]
    )
