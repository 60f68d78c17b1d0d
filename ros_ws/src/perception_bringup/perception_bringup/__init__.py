"""Entry points of the perception graph's nodes for ``ros2 run`` / ``ros2 launch``.

The nodes themselves live in the ``perception_nodes`` Python package (install it into the ROS
environment with ``pip install -e <repo>``); this package only gives them ROS executables, the launch
file and the params file.
"""

from perception_nodes.ros.node import main_single


def ground_segmentation(args=None) -> None:
    main_single("ground_segmentation", args)


def occupancy_grid(args=None) -> None:
    main_single("occupancy_grid", args)


def lidar_detection(args=None) -> None:
    main_single("lidar_detection", args)


def fusion(args=None) -> None:
    main_single("fusion", args)


def calibration_monitor(args=None) -> None:
    main_single("calibration_monitor", args)


def stereo_occupancy(args=None) -> None:
    main_single("stereo_occupancy", args)


def camera_bev(args=None) -> None:
    main_single("camera_bev", args)
def detection_fusion(args=None) -> None:
    main_single("detection_fusion", args)
def control(args=None) -> None:
    main_single("control", args)


def bev_fusion(args=None) -> None:
    main_single("bev_fusion", args)


def live(args=None) -> None:
    from perception_nodes.cli import main

    raise SystemExit(main(["live", *(args or [])]))
