"""Builders for the messages the stack publishes: occupancy grids, box markers, diagnostics.

Every builder passes every field of every message (rosbags' dataclasses have no defaults) and leaves
flavour differences, such as ``DiagnosticStatus.level`` being an int in rosbags but a one-byte
``bytes`` in rclpy, to the backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perception_nodes.boxes import Box3D
from perception_nodes.codecs.backend import MessageBackend, default_backend, make_header, make_time

#: DiagnosticStatus levels.
OK, WARN, ERROR, STALE = 0, 1, 2, 3

#: Marker colours (r, g, b, a) per label; anything else is grey.
LABEL_COLORS: dict[str, tuple[float, float, float, float]] = {
    "Car": (0.1, 0.8, 0.1, 0.5), "Pedestrian": (0.9, 0.2, 0.2, 0.5), "Cyclist": (0.2, 0.4, 1.0, 0.5),
}
LABEL_COLORS.update({k.lower(): v for k, v in list(LABEL_COLORS.items())})  # the network's class names
_DEFAULT_COLOR = (0.7, 0.7, 0.7, 0.5)
_CUBE, _ADD, _DELETEALL = 1, 0, 3


def _pose(backend: MessageBackend, x: float, y: float, z: float, yaw: float) -> Any:
    return backend.new(
        "geometry_msgs/msg/Pose",
        position=backend.new("geometry_msgs/msg/Point", x=float(x), y=float(y), z=float(z)),
        orientation=backend.new("geometry_msgs/msg/Quaternion", x=0.0, y=0.0,
                                z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0)),
    )


def occupancy_grid_msg(data: np.ndarray, resolution: float, origin_xy_yaw: tuple[float, float, float],
                       stamp_ns: int, frame_id: str, backend: MessageBackend | None = None) -> Any:
    """A ``nav_msgs/OccupancyGrid`` from an int8 ``(H, W)`` grid (-1 unknown, 0..100 occupied %).

    ``data[r, c]`` is the cell at row r (y) and column c (x) from the origin pose's corner, so row 0 is
    the lowest y, as OccupancyGrid's row-major layout requires. ``map_load_time`` is the stamp, since
    the grid is rebuilt every frame.
    """
    backend = backend or default_backend()
    data = np.asarray(data)
    if data.ndim != 2 or data.dtype != np.int8:
        raise ValueError(f"expected an int8 (H, W) grid, got {data.dtype} {data.shape}")
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    info = backend.new(
        "nav_msgs/msg/MapMetaData", map_load_time=make_time(backend, stamp_ns),
        resolution=float(resolution), width=data.shape[1], height=data.shape[0],
        origin=_pose(backend, origin_xy_yaw[0], origin_xy_yaw[1], 0.0, origin_xy_yaw[2]),
    )
    return backend.new("nav_msgs/msg/OccupancyGrid", header=make_header(backend, stamp_ns, frame_id),
                       info=info, data=np.ascontiguousarray(data).reshape(-1))


def _marker(backend: MessageBackend, stamp_ns: int, frame_id: str, ns: str, marker_id: int, action: int,
            pose: Any, size: Sequence[float], rgba: Sequence[float], text: str, lifetime_ns: int) -> Any:
    sec, nsec = divmod(lifetime_ns, 1_000_000_000)
    return backend.new(
        "visualization_msgs/msg/Marker", header=make_header(backend, stamp_ns, frame_id), ns=ns,
        id=marker_id, type=_CUBE, action=action, pose=pose,
        scale=backend.new("geometry_msgs/msg/Vector3", x=float(size[0]), y=float(size[1]), z=float(size[2])),
        color=backend.new("std_msgs/msg/ColorRGBA", r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3]),
        lifetime=backend.new("builtin_interfaces/msg/Duration", sec=sec, nanosec=nsec),
        frame_locked=False, points=[], colors=[], texture_resource="",
        texture=backend.new("sensor_msgs/msg/CompressedImage", header=make_header(backend, 0, ""),
                            format="", data=np.empty(0, np.uint8)),
        uv_coordinates=[], text=text, mesh_resource="",
        mesh_file=backend.new("visualization_msgs/msg/MeshFile", filename="", data=np.empty(0, np.uint8)),
        mesh_use_embedded_materials=False,
    )


def marker_array_msg(boxes: Sequence[Box3D], stamp_ns: int, frame_id: str, ns: str,
                     backend: MessageBackend | None = None, lifetime_s: float = 0.2,
                     delete_all: bool = True) -> Any:
    """A ``visualization_msgs/MarkerArray`` with one CUBE per box (ids 0..N-1 in ``ns``, text = label).

    With ``delete_all`` a DELETEALL marker comes first, so boxes of the previous frame that have no
    counterpart now disappear at once instead of lingering until their lifetime ends.
    """
    backend = backend or default_backend()
    lifetime_ns = round(lifetime_s * 1e9)
    markers = [
        _marker(backend, stamp_ns, frame_id, ns, 0, _DELETEALL, _pose(backend, 0, 0, 0, 0), (0, 0, 0),
                (0.0, 0.0, 0.0, 0.0), "", 0)
    ] if delete_all else []
    markers += [
        _marker(backend, stamp_ns, frame_id, ns, i, _ADD, _pose(backend, *box.center, box.yaw), box.size,
                LABEL_COLORS.get(box.label, _DEFAULT_COLOR), box.label, lifetime_ns)
        for i, box in enumerate(boxes)
    ]
    return backend.new("visualization_msgs/msg/MarkerArray", markers=markers)


@dataclass(frozen=True)
class DiagnosticStatusData:
    """One ``diagnostic_msgs/DiagnosticStatus``, independent of the message flavour."""

    level: int  # OK, WARN, ERROR or STALE
    name: str
    message: str
    hardware_id: str = ""
    values: dict[str, str] = field(default_factory=dict)


def diagnostic_array_msg(statuses: Sequence[DiagnosticStatusData], stamp_ns: int,
                         backend: MessageBackend | None = None) -> Any:
    """A ``diagnostic_msgs/DiagnosticArray`` (header frame empty, as diagnostic aggregators expect)."""
    backend = backend or default_backend()
    status = [
        backend.new(
            "diagnostic_msgs/msg/DiagnosticStatus", level=int(s.level), name=s.name, message=s.message,
            hardware_id=s.hardware_id,
            values=[backend.new("diagnostic_msgs/msg/KeyValue", key=str(k), value=str(v))
                    for k, v in s.values.items()],
        )
        for s in statuses
    ]
    return backend.new("diagnostic_msgs/msg/DiagnosticArray", header=make_header(backend, stamp_ns, ""),
                       status=status)
