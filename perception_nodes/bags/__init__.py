"""rosbag2 input and output (sqlite3 and MCAP via rosbags), and converters into bags.

The reader and writer are imported on first use (``from perception_nodes.bags import BagReader`` works as
before): they need ``rosbags``, while the converters' file readers (``bags.kitti.read_velodyne``, the
label parser) do not.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    from perception_nodes.bags.reader import BagReader, BagRecord
    from perception_nodes.bags.writer import BagWriter, OutputBag

__all__ = ["BagReader", "BagRecord", "BagWriter", "OutputBag"]


def __getattr__(name: str) -> Any:
    if name in ("BagReader", "BagRecord"):
        from perception_nodes.bags import reader

        return getattr(reader, name)
    if name in ("BagWriter", "OutputBag"):
        from perception_nodes.bags import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
