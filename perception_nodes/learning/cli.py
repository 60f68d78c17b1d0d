"""``perception-stack train <branch> --config FILE``: the command's body (the parser lives in
:mod:`perception_nodes.cli`). torch is imported only when the command runs."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["BRANCH_NAMES", "TRAIN_DESCRIPTION", "TRAIN_EPILOG", "train_main"]

#: names in :data:`perception_nodes.learning.branches.BRANCHES`, here without importing torch (for argparse)
BRANCH_NAMES = ("bev_fusion", "camera_bev", "lidar_detection", "lidar_occupancy", "stereo_voxel")

TRAIN_DESCRIPTION = """Train a learned branch on generated scenario bags: deterministic seeds, tqdm progress, a checkpoint
per epoch (safetensors, never pickle; resumable with --resume) and evaluation on the validation bags after
each epoch. Real data (../shared/data) is for evaluation only and refused for training. The config file
documents every key (configs/train/<branch>.yaml)."""

TRAIN_EPILOG = """examples:
  perception-stack train lidar_occupancy --config configs/train/lidar_occupancy.yaml
  perception-stack train lidar_occupancy --config configs/train/lidar_occupancy.yaml --resume
  perception-stack train lidar_occupancy --config configs/train/lidar_occupancy.yaml --epochs 20 --out out/train/long
  perception-stack train lidar_detection --config configs/train/lidar_detection.yaml

The run folder gets config.json, metrics.jsonl (one line per epoch: train loss, validation metrics),
checkpoints/epoch_NNNN/ (safetensors + JSON, never pickle) and the final model.safetensors.
"""


def train_main(branch: str, config: Path, *, out: Path | None, resume: bool, epochs: int | None,
               progress: bool) -> int:
    """Train ``branch`` with ``config``; prints a summary and returns the exit status (0 ok, 130 when
    interrupted). Configuration, data and checkpoint problems raise ``ValueError`` subclasses (and
    ``FileNotFoundError``), which the CLI reports as ``error: ...`` with status 2."""
    from perception_nodes.learning.trainer import train

    try:
        res = train(config, branch=branch, out=out, resume=resume, epochs=epochs, progress=progress)
    except KeyboardInterrupt:
        where = out or "the run folder"
        print(f"\ninterrupted; the last completed epoch is checkpointed in {where}: continue with --resume",
              file=sys.stderr)
        return 130
    last = res.history[-1] if res.history else {}
    val = last.get("val", {})
    notes = []
    if res.epoch_seconds:
        notes.append(f"data {res.data_seconds:.1f} s, {sum(res.epoch_seconds) / len(res.epoch_seconds):.1f} s/epoch")
    else:
        notes.append("nothing left to train")
    if res.resumed_from:
        notes.append(f"resumed from epoch {res.resumed_from}")
    print(f"{branch}: {res.epochs} epoch(s) -> {res.model_path} ({', '.join(notes)})")
    if last.get("split"):
        print(f"split: train {last['split']['train']['name']}, validation {last['split']['val']['name']}")
    if val:
        print("validation: " + "  ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float)))
    print(f"metrics per epoch: {res.run_dir / 'metrics.jsonl'}")
    return 0
