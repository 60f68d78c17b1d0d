"""mmdetection3d v1.x info pickles (KITTI and nuScenes) as :class:`Frame` objects.

Pickles can run code when loaded; these are read with an unpickler that only builds plain containers
and numpy scalars/arrays, so a hostile file fails to load instead of executing anything.

Conventions (verified on the shared demo data): KITTI ``bbox_3d`` is ``[x, y, z, l, h, w, ry]`` in
rectified camera-2 coordinates with the *bottom* centre; nuScenes ``bbox_3d`` is ``[x, y, z, l, w, h,
yaw]`` in the LiDAR frame (x right, y forward) with the *gravity* centre. Both become gravity-centred
Box3D in the LiDAR frame.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes.boxes import Box3D
from perception_nodes.datasets.frame import Frame

KITTI_CLASSES = ("Pedestrian", "Cyclist", "Car", "Van", "Truck", "Person_sitting", "Tram", "Misc")
KITTI_LIDAR_TO_BASE = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.73], [0, 0, 0, 1.0]])

_ALLOWED = {
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy", "bool_"), ("numpy", "int64"), ("numpy", "float64"),
    ("numpy", "int32"), ("numpy", "float32"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how numpy pickles carry raw bytes; it only turns a str into bytes
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an info pickle")


def load_info(path: str | Path) -> dict:
    with open(path, "rb") as f:
        doc = _SafeUnpickler(f).load()
    if not isinstance(doc, dict) or "data_list" not in doc:
        raise ValueError(f"{path}: not an mmdetection3d v1.x info file (no 'data_list')")
    return doc


def _kitti_boxes(info: dict) -> list[Box3D]:
    lidar2cam = np.asarray(info["images"]["CAM2"]["lidar2cam"], dtype=np.float64)
    cam2lidar = np.linalg.inv(lidar2cam)
    out = []
    for inst in info.get("instances", []):
        label = int(inst["bbox_label_3d"])
        if label < 0:  # DontCare regions
            continue
        x, y, z, l, h, w, ry = (float(v) for v in inst["bbox_3d"])
        c = cam2lidar @ np.array([x, y - h / 2.0, z, 1.0])
        extras: dict = {"num_lidar_pts": int(inst.get("num_lidar_pts", -1)), "difficulty": int(inst.get("difficulty", -1))}
        # the 2D image box and observation angle of the label file: what KITTI's difficulty levels need
        # (perception_nodes.eval.metrics.kitti_difficulty), kept as read_labels keeps them
        bbox = inst.get("bbox")
        if bbox is not None and len(bbox) == 4:  # a list or an array
            extras["bbox2d"] = tuple(float(v) for v in bbox)
        if "alpha" in inst:
            extras["alpha"] = float(inst["alpha"])
        out.append(Box3D(KITTI_CLASSES[label], (float(c[0]), float(c[1]), float(c[2])), (l, w, h), -ry - math.pi / 2,
                         occlusion=int(inst.get("occluded", -1)), truncation=float(inst.get("truncated", 0.0)),
                         extras=extras))
    return out


def _nuscenes_boxes(info: dict, categories: dict[str, int]) -> list[Box3D]:
    names = {v: k for k, v in categories.items()}
    out = []
    for inst in info.get("instances", []):
        label = int(inst["bbox_label_3d"])
        if label < 0:
            continue
        x, y, z, l, w, h, yaw = (float(v) for v in inst["bbox_3d"])
        out.append(Box3D(names[label], (x, y, z), (l, w, h), yaw,
                         extras={"num_lidar_pts": int(inst.get("num_lidar_pts", -1)),
                                 "velocity": tuple(float(v) for v in inst.get("velocity", (0.0, 0.0))),
                                 "valid": bool(inst.get("bbox_3d_isvalid", True))}))
    return out


def read_mmdet3d_info(path: str | Path, data_root: str | Path | None = None) -> Iterator[Frame]:
    """Frames of an info pickle; files are looked up next to the pickle unless ``data_root`` is given."""
    path = Path(path)
    doc = load_info(path)
    root = Path(data_root) if data_root is not None else path.parent
    meta = doc.get("metainfo", {})
    dataset = str(meta.get("DATASET", meta.get("dataset", ""))).lower()
    for info in doc["data_list"]:
        lp = info["lidar_points"]
        n_feats = int(lp.get("num_pts_feats", 4))
        points = np.fromfile(root / Path(lp["lidar_path"]).name, dtype="<f4").reshape(-1, n_feats)
        if dataset == "kitti":
            boxes = _kitti_boxes(info)
            to_base = KITTI_LIDAR_TO_BASE
            cams = {name: {"K": np.asarray(c["cam2img"], dtype=np.float64)[:3, :3],
                           "lidar_to_cam": np.asarray(c.get("lidar2cam", np.eye(4)), dtype=np.float64),
                           "image_path": root / c["img_path"] if "img_path" in c else None}
                    for name, c in info["images"].items() if isinstance(c, dict) and "cam2img" in c}
            frame_id, stamp = str(info.get("sample_id", "")), 0
        elif dataset == "nuscenes":
            boxes = _nuscenes_boxes(info, meta["categories"])
            to_base = np.asarray(lp["lidar2ego"], dtype=np.float64)
            cams = {name: {"K": np.asarray(c["cam2img"], dtype=np.float64),
                           "lidar_to_cam": np.asarray(c["lidar2cam"], dtype=np.float64),
                           "image_path": root / Path(c["img_path"]).name,
                           "stamp_ns": int(round(float(c["timestamp"]) * 1e9))}
                    for name, c in info["images"].items()}
            frame_id, stamp = str(info.get("token", "")), int(round(float(info["timestamp"]) * 1e9))
        else:
            raise ValueError(f"{path}: unsupported dataset {dataset!r} (KITTI and nuScenes info files are)")
        yield Frame(source=f"mmdet3d-{dataset}", frame_id=frame_id, stamp_ns=stamp, points=points, boxes=boxes,
                    lidar_to_base=to_base, cameras=cams)
