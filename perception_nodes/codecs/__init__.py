"""Message codecs: ROS messages <-> numpy, for rclpy messages and rosbags' dataclasses alike.

Decoders only read attributes, so they accept either flavour; builders take a
:class:`~perception_nodes.codecs.backend.MessageBackend` (rosbags by default, rclpy via
:class:`perception_nodes.ros.backend.RclpyBackend`). Malformed input raises
:class:`~perception_nodes.errors.MalformedMessageError`.
"""

from perception_nodes.codecs.backend import (
    MessageBackend,
    RosbagsBackend,
    as_byte_view,
    default_backend,
    make_header,
    make_time,
    stamp_to_ns,
)
from perception_nodes.codecs.camera_info import (
    CameraModel,
    camera_info_msg,
    camera_model_from_msg,
    project,
    project_rectified,
)
from perception_nodes.codecs.image import image_to_numpy, numpy_to_image
from perception_nodes.codecs.outputs import (
    ERROR,
    OK,
    STALE,
    WARN,
    DiagnosticStatusData,
    diagnostic_array_msg,
    marker_array_msg,
    occupancy_grid_msg,
)
from perception_nodes.codecs.pointcloud2 import (
    cloud_dtype,
    create_cloud,
    create_xyzi_cloud,
    read_points,
    read_xyzi,
)

__all__ = [
    "ERROR", "OK", "STALE", "WARN",
    "CameraModel", "DiagnosticStatusData", "MessageBackend", "RosbagsBackend",
    "as_byte_view", "camera_info_msg", "camera_model_from_msg", "cloud_dtype", "create_cloud",
    "create_xyzi_cloud", "default_backend", "diagnostic_array_msg", "image_to_numpy", "make_header",
    "make_time", "marker_array_msg", "numpy_to_image", "occupancy_grid_msg", "project",
    "project_rectified", "read_points", "read_xyzi", "stamp_to_ns",
]
