"""The rosbags typestore the core uses for messages: ROS 2 stock types plus ``perception_interfaces``,
``vision_msgs`` and ``ackermann_msgs`` (not stock types of rosbags' stores; read from the stand-in packages
in ``ros_ws``, whose definitions are upstream's, or from an installed ``vision_msgs``/``ackermann_msgs``).

rosbags' message classes are plain dataclasses, so they serve as the core's typed messages; the same
codecs also accept rclpy messages (see :mod:`perception_nodes.codecs`). Our own interface definitions
are read from the ``.msg`` files of ``ros_ws/src/perception_interfaces`` (or the installed share folder
of that package), so there is one source of truth for them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from rosbags.typesys import Stores, get_typestore, get_types_from_msg
from rosbags.typesys.store import Typestore

#: The distro whose stock message definitions the core uses (identical for the types we use in
#: Humble, Jazzy and Kilted).
STORE = Stores.ROS2_KILTED
INTERFACES_PACKAGE = "perception_interfaces"


#: Interface packages whose ``.msg`` files the typestore registers besides rosbags' stock types.
VISION_PACKAGE = "vision_msgs"
#: The control node's Ackermann command (stand-in package in ``ros_ws`` with upstream's definitions).
ACKERMANN_PACKAGE = "ackermann_msgs"


def interfaces_msg_dir(package: str = INTERFACES_PACKAGE) -> Path:
    """Folder holding ``package``'s ``.msg`` files (default ``perception_interfaces``).

    Looked up in ``$PERCEPTION_INTERFACES_MSG_DIR`` (for ``perception_interfaces`` only), the source tree
    next to this package (``ros_ws/src/<package>/msg``), then ``share/<package>/msg`` under each
    ``$AMENT_PREFIX_PATH`` entry.
    """
    candidates: list[Path] = []
    if package == INTERFACES_PACKAGE and (env := os.environ.get("PERCEPTION_INTERFACES_MSG_DIR")):
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parent.parent / "ros_ws/src" / package / "msg")
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidates.append(Path(prefix) / "share" / package / "msg")
    for cand in candidates:
        if cand.is_dir() and any(cand.glob("*.msg")):
            return cand
    raise FileNotFoundError(
        f"cannot find the {package} .msg files (looked in: {', '.join(map(str, candidates))})"
    )


@functools.cache
def typestore() -> Typestore:
    """Return the shared typestore with stock ROS 2 types, ``perception_interfaces``, ``vision_msgs`` and
    ``ackermann_msgs``."""
    store = get_typestore(STORE)
    types: dict = {}
    for package, probe in ((INTERFACES_PACKAGE, ""), (VISION_PACKAGE, "Detection3DArray"),
                           (ACKERMANN_PACKAGE, "AckermannDriveStamped")):
        if probe and f"{package}/msg/{probe}" in store.types:
            continue  # a store that ships it already
        try:
            folder = interfaces_msg_dir(package)
        except FileNotFoundError:
            if package == INTERFACES_PACKAGE:
                raise
            continue  # only the LiDAR branch's detections (vision_msgs) and the control command need these
        for path in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store
