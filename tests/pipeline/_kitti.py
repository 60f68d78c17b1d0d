"""Minimal KITTI object-benchmark reader for the pipeline tests (scan, calib, label_2 → base_link boxes).

Deliberately small and local to these tests; the package's real loader lives elsewhere. Data are read in
place from the shared data folder next to the repository and never copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception_nodes.boxes import Box3D

#: KITTI's Velodyne HDL-64E sits 1.73 m above the road: base_link z = velodyne z + 1.73.
KITTI_SENSOR_HEIGHT = 1.73

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KITTI_OBJECT_DIR = DATA_ROOT / "kitti_object_vis" / "data" / "object" / "training"
FRAMES = ("000000", "000001", "000002")


def kitti_available() -> bool:
    return all((KITTI_OBJECT_DIR / "velodyne" / f"{f}.bin").is_file() for f in FRAMES)


def read_calib(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, vals = line.split(":", 1)
        out[key.strip()] = np.array([float(v) for v in vals.split()], dtype=np.float64)
    return out


def velo_from_rect(calib: dict[str, np.ndarray]) -> np.ndarray:
    """4x4 transform rectified camera-0 → Velodyne: inv(R0_rect · Tr_velo_to_cam)."""
    r0 = np.eye(4)
    r0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    tr = np.eye(4)
    tr[:3, :] = calib["Tr_velo_to_cam"].reshape(3, 4)
    return np.linalg.inv(r0 @ tr)


@dataclass(frozen=True)
class KittiFrame:
    name: str
    #: (N, 4) float32 x, y, z, reflectance in base_link (velodyne shifted up by 1.73 m).
    points: np.ndarray
    #: labelled objects except DontCare, gravity-centred in base_link.
    boxes: tuple[Box3D, ...]


def read_labels(path: Path, calib: dict[str, np.ndarray], z_offset: float) -> tuple[Box3D, ...]:
    t = velo_from_rect(calib)
    boxes = []
    for line in path.read_text().splitlines():
        f = line.split()
        if not f or f[0] == "DontCare":
            continue
        h, w, l = (float(v) for v in f[8:11])
        bottom_rect = np.array([float(v) for v in f[11:14]] + [1.0])
        ry = float(f[14])
        bottom = (t @ bottom_rect)[:3]
        centre = (bottom[0], bottom[1], bottom[2] + h / 2.0 + z_offset)
        yaw = -ry - math.pi / 2.0
        yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        boxes.append(
            Box3D(
                label=f[0],
                center=tuple(float(c) for c in centre),
                size=(l, w, h),
                yaw=yaw,
                truncation=float(f[1]),
                occlusion=int(float(f[2])),
            )
        )
    return tuple(boxes)


def load_frame(name: str) -> KittiFrame:
    pts = np.fromfile(KITTI_OBJECT_DIR / "velodyne" / f"{name}.bin", dtype="<f4").reshape(-1, 4).copy()
    pts[:, 2] += KITTI_SENSOR_HEIGHT
    calib = read_calib(KITTI_OBJECT_DIR / "calib" / f"{name}.txt")
    boxes = read_labels(KITTI_OBJECT_DIR / "label_2" / f"{name}.txt", calib, KITTI_SENSOR_HEIGHT)
    return KittiFrame(name, pts, boxes)
