"""The embedded default scenario as a rosbag2 MCAP bag (what ``replay`` runs without ``--bag``).

Generated on first use from :func:`~perception_nodes.scenario.scene.default_scene` with the KITTI rig
(HDL-64-like LiDAR 1.73 m above ``base_link``) and cached; same seed and version, same bytes' worth of
messages, so nothing is downloaded and every run replays the same data.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from perception_nodes import topics
from perception_nodes.calibration import load_rig, tf_message
from perception_nodes.codecs.backend import default_backend
from perception_nodes.codecs.detections import detections_msg
from perception_nodes.codecs.outputs import marker_array_msg
from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud
from perception_nodes.scenario.lidar import BeamModel, render_scan
from perception_nodes.scenario.scene import OBJECT_LABELS, POLE, actors_at, boxes_in_base_link, default_scene, ego_pose3d

#: bump when the generator's output changes, so stale caches are not replayed
SCENARIO_VERSION = 1
START_NS = 1_700_000_000 * 1_000_000_000
PERIOD_NS = 100_000_000
LIDAR_FRAME = "velodyne"
BASE_FRAME = "base_link"


def write_scenario_bag(out: str | Path, *, seed: int = 0, duration_s: float = 5.0, progress: bool = True) -> Path:
    """Render the default scene at 10 Hz for ``duration_s`` into a new bag at ``out``."""
    from perception_nodes.bags.writer import BagWriter

    scene = default_scene(seed)
    beams = BeamModel.hdl64()
    rig = load_rig("kitti_hdl64.yaml")
    backend = default_backend()
    rng = np.random.default_rng(seed)
    n = max(1, int(round(duration_s * 10)))
    with BagWriter(out) as bag:
        bag.write(topics.TF_STATIC, topics.TF_MESSAGE, START_NS, tf_message(rig.as_list(), START_NS, backend))
        for i in tqdm(range(n), desc="generate default scenario", unit="frame", disable=not progress):
            t = i * PERIOD_NS / 1e9
            stamp = START_NS + i * PERIOD_NS
            scan = render_scan(scene, t, beams, rng)
            bag.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, stamp, create_xyzi_cloud(scan, stamp, LIDAR_FRAME, backend))
            boxes = [b for b in boxes_in_base_link(actors_at(scene, t), ego_pose3d(t, scene)) if b.label in (*OBJECT_LABELS, POLE)]
            bag.write(topics.GT_OBJECTS, topics.DETECTIONS, stamp, detections_msg(boxes, stamp, BASE_FRAME, backend))
            bag.write(topics.GT_MARKERS, topics.MARKER_ARRAY, stamp, marker_array_msg(boxes, stamp, BASE_FRAME, "ground_truth", backend))
    return Path(out)


def cache_dir() -> Path:
    base = os.environ.get("PERCEPTION_NODES_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "perception_nodes"


def default_scenario_bag(*, progress: bool = True) -> Path:
    """Path of the cached default scenario bag, generating it first when missing."""
    path = cache_dir() / f"default_scenario_v{SCENARIO_VERSION}"
    if (path / "metadata.yaml").is_file():
        return path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write_scenario_bag(tmp, progress=progress)
    # rosbags names the storage file after the folder: rename it with the folder
    (tmp / f"{tmp.name}.mcap").rename(tmp / f"{path.name}.mcap")
    meta = (tmp / "metadata.yaml").read_text().replace(f"{tmp.name}.mcap", f"{path.name}.mcap")
    (tmp / "metadata.yaml").write_text(meta)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
