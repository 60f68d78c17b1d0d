"""KITTI object-format folders -> rosbag2 MCAP (``perception-stack convert kitti``).

Input: a folder with ``velodyne/``, ``calib/`` and optionally ``image_2/``, ``image_3/``, ``label_2/``
(KITTI's ``training``/``testing`` layout). Output topics: the LiDAR cloud in frame ``velodyne``,
rectified left/right images with CameraInfo, ``/tf_static`` (rig + per-drive camera extrinsics) and
ground-truth boxes in ``base_link`` on ``/ground_truth/objects`` (+ RViz markers). Frames are stamped
at 10 Hz in file-name order, which is what a KITTI drive was recorded at; object-benchmark frames come
from different drives, so the bag is a slideshow of scenes, not a continuous drive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception_nodes import topics
from perception_nodes.boxes import Box3D
from perception_nodes.calibration import (
    KittiCalib,
    StaticTransform,
    StaticTransforms,
    load_kitti_calib,
    load_rig,
    make_transform,
    tf_message,
)

#: KITTI was recorded at 10 Hz; default start = 2011-09-26 (first KITTI raw drive), so stamps look real.
DEFAULT_START_NS = 1_317_000_000 * 1_000_000_000
PERIOD_NS = 100_000_000
LIDAR_FRAME = "velodyne"
BASE_FRAME = "base_link"
CAMERA_FRAMES = {"left": "camera_left_optical", "right": "camera_right_optical"}
CAMERA_DIRS = {"left": ("image_2", "P2"), "right": ("image_3", "P3")}


def read_velodyne(path: str | Path) -> np.ndarray:
    """A KITTI ``.bin`` scan as (N, 4) float32 [x, y, z, reflectance] in the Velodyne frame."""
    raw = np.fromfile(path, dtype="<f4")
    if raw.size % 4:
        raise ValueError(f"{path}: size is not a multiple of 4 float32 values")
    return raw.reshape(-1, 4)


def read_labels(path: str | Path, calib: KittiCalib, to_frame: np.ndarray | None = None) -> list[Box3D]:
    """``label_2`` lines as gravity-centred boxes in the Velodyne frame (or ``to_frame`` @ velodyne).

    KITTI gives the bottom centre in rectified camera coordinates (y down) and rotation_y about the
    camera's y axis; the LiDAR yaw is -ry - pi/2. DontCare entries are skipped. Truncation and
    occlusion go to the box's fields; the 2D image box ``(left, top, right, bottom)`` (pixels) and the
    observation angle ``alpha`` go to ``extras["bbox2d"]`` / ``extras["alpha"]`` — what KITTI's
    difficulty levels need (:mod:`perception_nodes.eval.metrics.kitti_difficulty`). The bag's
    ``Detection3D`` message carries truncation and occlusion but has no 2D box field, so converted bags
    lose the 2D box.
    """
    rect_to_velo = np.linalg.inv(calib.velo_to_rect)
    post = np.eye(4) if to_frame is None else to_frame
    boxes = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) < 15 or f[0] == "DontCare":
            continue
        h, w, l = (float(v) for v in f[8:11])
        x, y, z, ry = (float(v) for v in f[11:15])
        centre = post @ rect_to_velo @ np.array([x, y - h / 2.0, z, 1.0])
        yaw_velo = -ry - math.pi / 2.0
        heading = post[:3, :3] @ np.array([math.cos(yaw_velo), math.sin(yaw_velo), 0.0])
        yaw = math.atan2(heading[1], heading[0])
        boxes.append(
            Box3D(
                label=f[0],
                center=(float(centre[0]), float(centre[1]), float(centre[2])),
                size=(l, w, h),
                yaw=yaw,
                occlusion=int(float(f[2])),
                truncation=float(f[1]),
                extras={"bbox2d": tuple(float(v) for v in f[4:8]), "alpha": float(f[3])},
            )
        )
    return boxes


def camera_transforms(calib: KittiCalib, sides: list[str]) -> list[StaticTransform]:
    """Pose of each rectified camera's optical frame in the Velodyne frame."""
    rect0_in_velo = np.linalg.inv(calib.velo_to_rect)
    out = []
    for side in sides:
        offset = calib.camera_offset(CAMERA_DIRS[side][1])
        shift = make_transform(np.eye(3), np.array([offset, 0.0, 0.0]))
        out.append(StaticTransform(LIDAR_FRAME, CAMERA_FRAMES[side], rect0_in_velo @ shift))
    return out


@dataclass(frozen=True)
class ConvertSummary:
    frames: int
    topics: dict[str, int]


def _camera_model(calib: KittiCalib, side: str, width: int, height: int, baseline_from_left: float):
    from perception_nodes.codecs.camera_info import CameraModel

    p_kitti = calib.P[CAMERA_DIRS[side][1]]
    k = p_kitti[:3, :3].copy()
    p = np.zeros((3, 4))
    p[:3, :3] = k
    # ROS stereo convention: each camera in its own optical frame; the right one carries Tx = -fx*B.
    p[0, 3] = -k[0, 0] * baseline_from_left
    return CameraModel(
        width=width,
        height=height,
        frame_id=CAMERA_FRAMES[side],
        distortion_model="plumb_bob",
        K=k,
        D=np.zeros(5),
        R=np.eye(3),
        P=p,
    )


def convert_kitti(
    src: str | Path,
    out: str | Path,
    *,
    rig: str | Path = "kitti_hdl64.yaml",
    start_ns: int = DEFAULT_START_NS,
    limit: int | None = None,
    progress: bool = True,
) -> ConvertSummary:
    """Convert a KITTI object folder into a rosbag2 MCAP bag at ``out`` (must not exist)."""
    from PIL import Image as PILImage
    from tqdm import tqdm

    from perception_nodes.bags.writer import BagWriter
    from perception_nodes.codecs.backend import default_backend
    from perception_nodes.codecs.camera_info import camera_info_msg
    from perception_nodes.codecs.detections import detections_msg
    from perception_nodes.codecs.image import numpy_to_image
    from perception_nodes.codecs.outputs import marker_array_msg
    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud

    src = Path(src)
    if not (src / "velodyne").is_dir() and (src / "training" / "velodyne").is_dir():
        src = src / "training"
    velo_dir = src / "velodyne"
    if not velo_dir.is_dir():
        raise FileNotFoundError(f"{src}: no velodyne/ folder (expected KITTI object layout)")
    frame_ids = sorted(p.stem for p in velo_dir.glob("*.bin"))[:limit]
    if not frame_ids:
        raise FileNotFoundError(f"{velo_dir}: no .bin scans")
    rig_tf = load_rig(rig)
    base_from_velo = rig_tf.lookup(BASE_FRAME, LIDAR_FRAME)
    backend = default_backend()
    last_cam_tf: list[StaticTransform] | None = None
    with BagWriter(out) as bag:
        for i, fid in enumerate(tqdm(frame_ids, desc="convert kitti", unit="frame", disable=not progress)):
            t = start_ns + i * PERIOD_NS
            calib_path = src / "calib" / f"{fid}.txt"
            calib = load_kitti_calib(calib_path)
            sides = [s for s in ("left", "right") if (src / CAMERA_DIRS[s][0] / f"{fid}.png").is_file()]
            cam_tf = camera_transforms(calib, sides)
            if last_cam_tf is None or any(
                a.child != b.child or not np.allclose(a.matrix, b.matrix)
                for a, b in zip(cam_tf, last_cam_tf, strict=False)
            ) or len(cam_tf) != len(last_cam_tf):
                # /tf_static is latched and cumulative: re-send the whole tree when a drive changes.
                tree = rig_tf.as_list() + cam_tf
                bag.write(topics.TF_STATIC, topics.TF_MESSAGE, t, tf_message(tree, t, backend))
                last_cam_tf = cam_tf
            scan = read_velodyne(velo_dir / f"{fid}.bin")
            bag.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, t, create_xyzi_cloud(scan, t, LIDAR_FRAME, backend))
            for side in sides:
                img = np.asarray(PILImage.open(src / CAMERA_DIRS[side][0] / f"{fid}.png").convert("RGB"))
                h, w = img.shape[:2]
                baseline = calib.camera_offset(CAMERA_DIRS[side][1]) - calib.camera_offset("P2")
                model = _camera_model(calib, side, w, h, baseline)
                bag.write(
                    topics.CAMERA_IMAGE.format(side=side),
                    topics.IMAGE,
                    t,
                    numpy_to_image(img, "rgb8", t, CAMERA_FRAMES[side], backend),
                )
                bag.write(topics.CAMERA_INFO.format(side=side), topics.CAMERA_INFO_TYPE, t, camera_info_msg(model, t, backend))
            label_path = src / "label_2" / f"{fid}.txt"
            if label_path.is_file():
                boxes = read_labels(label_path, calib, to_frame=base_from_velo)
                bag.write(topics.GT_OBJECTS, topics.DETECTIONS, t, detections_msg(boxes, t, BASE_FRAME, backend))
                bag.write(
                    topics.GT_MARKERS,
                    topics.MARKER_ARRAY,
                    t,
                    marker_array_msg(boxes, t, BASE_FRAME, "ground_truth", backend),
                )
        counts = dict(bag.counts)
    return ConvertSummary(frames=len(frame_ids), topics=counts)


def kitti_rig_with_cameras(calib_path: str | Path, rig: str | Path = "kitti_hdl64.yaml") -> StaticTransforms:
    """The full static tree of one KITTI drive (rig YAML + the calib file's camera extrinsics)."""
    calib = load_kitti_calib(calib_path)
    tree = load_rig(rig)
    for t in camera_transforms(calib, ["left", "right"]):
        tree.add(t)
    return tree
