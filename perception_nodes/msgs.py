"""The rosbags typestore the core uses for messages: ROS 2 stock types plus ``perception_interfaces``.

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


def interfaces_msg_dir() -> Path:
    """Folder holding ``perception_interfaces``' ``.msg`` files.

    Looked up in ``$PERCEPTION_INTERFACES_MSG_DIR``, the source tree next to this package, then
    ``share/perception_interfaces/msg`` under each ``$AMENT_PREFIX_PATH`` entry.
    """
    candidates: list[Path] = []
    if env := os.environ.get("PERCEPTION_INTERFACES_MSG_DIR"):
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parent.parent / "ros_ws/src" / INTERFACES_PACKAGE / "msg")
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidates.append(Path(prefix) / "share" / INTERFACES_PACKAGE / "msg")
    for cand in candidates:
        if cand.is_dir() and any(cand.glob("*.msg")):
            return cand
    raise FileNotFoundError(
        f"cannot find the {INTERFACES_PACKAGE} .msg files (looked in: {', '.join(map(str, candidates))})"
    )


@functools.cache
def typestore() -> Typestore:
    """Return the shared typestore with stock ROS 2 types and ``perception_interfaces`` registered."""
    store = get_typestore(STORE)
    folder = interfaces_msg_dir()
    types: dict = {}
    for path in sorted(folder.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{INTERFACES_PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store
