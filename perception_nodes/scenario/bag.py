"""The embedded default scenario as a rosbag2 MCAP bag (what ``replay`` runs without ``--bag``).

It is the generator's ``urban_street`` scenario (:func:`~perception_nodes.scenario.generate.generate_bag`):
seed 0, 5 s at 10 Hz, the KITTI rig (HDL-64-like LiDAR 1.73 m above ``base_link``), the stereo pair and
mono camera at a small resolution (:data:`DEFAULT_CAMERA_RESOLUTION`, to keep ``make demo`` quick), and
all ground-truth topics. Generated on first use and cached; same seed and version, same messages, so
nothing is downloaded and every run replays the same data.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from perception_nodes.scenario.generate import BASE_FRAME, GENERATOR_VERSION, LIDAR_FRAME, PERIOD_NS, START_NS

#: bump when the generator's output changes, so stale caches are not replayed
SCENARIO_VERSION = GENERATOR_VERSION
DEFAULT_SCENARIO = "urban_street"
DEFAULT_DURATION_S = 5.0
DEFAULT_CAMERA_RESOLUTION = (320, 96)

__all__ = ["BASE_FRAME", "LIDAR_FRAME", "PERIOD_NS", "SCENARIO_VERSION", "START_NS", "cache_dir",
           "default_scenario_bag", "write_scenario_bag"]


def write_scenario_bag(out: str | Path, *, seed: int = 0, duration_s: float = DEFAULT_DURATION_S,
                       progress: bool = True, **options) -> Path:
    """Render the default scenario at 10 Hz for ``duration_s`` into a new bag at ``out``.

    ``options`` go to :func:`~perception_nodes.scenario.generate.generate_bag` (e.g. ``cameras=False``,
    ``scenario="curved_road"``); by default the cameras render at :data:`DEFAULT_CAMERA_RESOLUTION`.
    """
    from perception_nodes.scenario.generate import generate_bag

    options.setdefault("scenario", DEFAULT_SCENARIO)
    options.setdefault("camera_resolution", DEFAULT_CAMERA_RESOLUTION)
    return generate_bag(out, seed=seed, duration_s=duration_s, progress=progress, **options)


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
