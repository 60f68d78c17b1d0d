"""rosbag2 input and output (sqlite3 and MCAP via rosbags), and converters into bags.

The reader and writer are imported on first use (``from perception_nodes.bags import BagReader`` works as
before): they need ``rosbags``, while the converters' file readers (``bags.kitti.read_velodyne``, the
label parser) do not.
"""

from typing import Any

__all__ = ["BagReader", "BagRecord", "BagWriter", "OutputBag"]


def __getattr__(name: str) -> Any:
    if name in ("BagReader", "BagRecord"):
        from perception_nodes.bags import reader

        return getattr(reader, name)
    if name in ("BagWriter", "OutputBag"):
        from perception_nodes.bags import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
