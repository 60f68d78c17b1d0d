"""rosbag2 input and output (sqlite3 and MCAP via rosbags), and converters into bags."""

from perception_nodes.bags.reader import BagReader, BagRecord
from perception_nodes.bags.writer import BagWriter, OutputBag

__all__ = ["BagReader", "BagRecord", "BagWriter", "OutputBag"]
