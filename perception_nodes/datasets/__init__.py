"""Readers for the data users already have, into one typed :class:`Frame`.

* KITTI object folders (``velodyne/``, ``calib/``, ``image_2/``, ``label_2/``),
* mmdetection3d v1.x info pickles for KITTI and nuScenes (loaded with a restricted unpickler),
* the project's own bags (``convert kitti`` output and generated scenarios).
"""

from perception_nodes.datasets.bag import read_bag_frames
from perception_nodes.datasets.frame import Frame
from perception_nodes.datasets.kitti import read_kitti_object
from perception_nodes.datasets.mmdet3d import read_mmdet3d_info

__all__ = ["Frame", "read_bag_frames", "read_kitti_object", "read_mmdet3d_info"]
