"""KITTI object-format folders as :class:`Frame` objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from perception_nodes.bags.kitti import BASE_FRAME, DEFAULT_START_NS, LIDAR_FRAME, PERIOD_NS, read_labels, read_velodyne
from perception_nodes.calibration import load_kitti_calib, load_rig
from perception_nodes.datasets.frame import Frame


def read_kitti_object(root: str | Path, *, rig: str | Path = "kitti_hdl64.yaml", limit: int | None = None) -> Iterator[Frame]:
    """Frames of a KITTI object folder (``training`` layout), labels in the LiDAR frame when present."""
    root = Path(root)
    if not (root / "velodyne").is_dir() and (root / "training" / "velodyne").is_dir():
        root = root / "training"
    ids = sorted(p.stem for p in (root / "velodyne").glob("*.bin"))[:limit]
    if not ids:
        raise FileNotFoundError(f"{root}: no velodyne/*.bin scans")
    to_base = load_rig(rig).lookup(BASE_FRAME, LIDAR_FRAME)
    for i, fid in enumerate(ids):
        calib = load_kitti_calib(root / "calib" / f"{fid}.txt")
        label = root / "label_2" / f"{fid}.txt"
        cams = {}
        image = root / "image_2" / f"{fid}.png"
        if image.is_file():
            cams["CAM2"] = {"K": calib.P["P2"][:3, :3], "P": calib.P["P2"], "lidar_to_rect": calib.velo_to_rect,
                            "image_path": image}
        yield Frame(
            source="kitti",
            frame_id=fid,
            stamp_ns=DEFAULT_START_NS + i * PERIOD_NS,
            points=read_velodyne(root / "velodyne" / f"{fid}.bin"),
            boxes=read_labels(label, calib) if label.is_file() else [],
            lidar_to_base=np.array(to_base),
            cameras=cams,
            extras={"calib": calib},
        )
