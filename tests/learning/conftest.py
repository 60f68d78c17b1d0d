"""Tiny training set-ups: fixture bags (a coarse VLP-16 over the embedded street scene, 24 m grids), a
48 x 48 training grid and a two-level U-Net, so a whole training run takes about a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

FIXTURE = {"lidar": "vlp16", "n_azimuth": 720, "gt_size": 24.0, "gt_resolution": 0.25, "period_s": 0.5}


def tiny_config(cache_dir: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "branch": "lidar_occupancy",
        "seed": 0,
        "threads": 1,
        "epochs": 2,
        "batch_size": 2,
        "data": {
            "cache_dir": str(cache_dir),
            "train": [{"fixture": {"seed": 0, "frames": 4, **FIXTURE}}],
            "val": [{"fixture": {"seed": 1, "frames": 2, "start_s": 2.0, **FIXTURE}}],
        },
        "grid": {"resolution": 0.5, "size_x": 24.0, "size_y": 24.0},
        "model": {"widths": [8, 16]},
        "optimizer": {"lr": 0.01},
        "loss": {"kl_anneal_epochs": 1},
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="session")
def bag_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per session: the fixture bags are rendered once."""
    return tmp_path_factory.mktemp("train_bags")


def short_eval_config(folder: Path, seeds: tuple[int, ...] = (11,), stride: int = 5) -> Path:
    """An eval config with one set, ``short``: 1 s plain urban_street scenes (HDL-64) of these seeds, for the
    benchmark scripts' tests."""
    rows = "".join(f"    - {{generate: {{scenario: urban_street, seed: {s}, duration_s: 1.0, lidar: hdl64}}, "
                   f"stride: {stride}}}\n" for s in seeds)
    cfg = folder / "eval.yaml"
    cfg.write_text("sets:\n  short:\n" + rows)
    return cfg
