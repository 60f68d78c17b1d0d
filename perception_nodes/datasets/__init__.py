"""Readers for the data users already have, into one typed :class:`Frame`.

* KITTI object folders (``velodyne/``, ``calib/``, ``image_2/``, ``label_2/``),
* mmdetection3d v1.x info pickles for KITTI and nuScenes (loaded with a restricted unpickler),
* the project's own bags (``convert kitti`` output and generated scenarios).

:func:`read_bag_frames` is imported on first use: it needs ``rosbags``, the file readers do not, so a
machine with only torch and numpy (a lent GPU machine running ``benchmarks/lidar_branch_gpu.py``) can
read KITTI folders.
"""

from typing import TYPE_CHECKING, Any

from perception_nodes.datasets.frame import Frame
from perception_nodes.datasets.kitti import read_kitti_object
from perception_nodes.datasets.mmdet3d import read_mmdet3d_info

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time it loads on first use
    from perception_nodes.datasets.bag import read_bag_frames

__all__ = ["Frame", "read_bag_frames", "read_kitti_object", "read_mmdet3d_info"]


def __getattr__(name: str) -> Any:
    if name == "read_bag_frames":
        from perception_nodes.datasets.bag import read_bag_frames

        return read_bag_frames
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
