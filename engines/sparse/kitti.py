"""KITTI velodyne scans (float32 x, y, z, reflectance; x forward, y left, z up) for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VELODYNE_SUBDIR = "kitti_object_vis/data/object/training/velodyne"


def load_velodyne(path: str | Path) -> np.ndarray:
    """[N, 4] float32 points of one ``.bin`` scan."""
    return np.fromfile(str(path), dtype="<f4").reshape(-1, 4)


def velodyne_path(shared_data: str | Path, frame: int = 0) -> Path:
    return Path(shared_data) / VELODYNE_SUBDIR / f"{frame:06d}.bin"
