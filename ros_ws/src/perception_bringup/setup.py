from glob import glob

from setuptools import setup

package_name = "perception_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        # real files in the package (copies of the repository's launch/ and perception_nodes/config/ kept
        # identical by scripts/setup.sh; see README.md here), so a build of a copy of this folder installs them
        (f"share/{package_name}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{package_name}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="perception-nodes maintainers",
    maintainer_email="maintainers@perception-nodes.dev",
    description="Executables, launch file and parameters of the perception node stack.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ground_segmentation_node = perception_bringup:ground_segmentation",
            "occupancy_grid_node = perception_bringup:occupancy_grid",
            "lidar_detection_node = perception_bringup:lidar_detection",
            "fusion_node = perception_bringup:fusion",
            "calibration_monitor_node = perception_bringup:calibration_monitor",
            "stereo_occupancy_node = perception_bringup:stereo_occupancy",
            "camera_bev_node = perception_bringup:camera_bev",
            "detection_fusion_node = perception_bringup:detection_fusion",
            "control_node = perception_bringup:control",
            "bev_fusion_node = perception_bringup:bev_fusion",
            "perception_live = perception_bringup:live",
        ],
    },
)
