"""The training loop: deterministic, resumable, evaluated after every epoch.

Run folder (``config.out`` or ``--out``; default ``out/train/<branch>``)::

    config.json                 the resolved configuration (also inside every checkpoint)
    metrics.jsonl               one JSON line per epoch: train loss parts, validation metrics, lr, seconds
    checkpoints/epoch_NNNN/     model.safetensors + trainer.safetensors + trainer.json (see checkpoint.py)
    model.safetensors           the final weights with the branch and its config in the metadata
                                (load with :func:`load_trained`)

Determinism: torch, numpy and Python ``random`` are seeded from ``seed``; the shuffling order and the
augmentation of epoch e come from generators seeded with (seed, e) — not from a running state — so a
resumed run draws exactly what an uninterrupted one would; ``torch.use_deterministic_algorithms(True)``
and a fixed thread count make the arithmetic repeatable. Same config and machine ⇒ bit-identical weights,
whether or not the run was interrupted and resumed (only completed epochs are checkpointed: an interrupted
epoch is redone). The global RNG states are saved and restored too, for code that draws from them.

Resuming checks that the checkpoint's config matches the current one except for keys that cannot change
the result up to the checkpoint (``out``, ``epochs``, ``checkpoint``, ``data.cache_dir``, ``threads``,
``device``, ``eval_batch_size``); more ``epochs`` extend a finished run (the cosine schedule then
stretches over the new total from that point).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from perception_nodes.learning.branches import Branch, get_branch
from perception_nodes.learning.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    restore_rng,
    save_checkpoint,
    save_weights,
)
from perception_nodes.learning.config import TrainConfig, config_differences, load_config
from perception_nodes.learning.data import default_cache_dir, describe_split, load_split

__all__ = ["TrainResult", "load_trained", "seed_everything", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` did."""

    run_dir: Path
    #: epochs completed in total (including those before a resume)
    epochs: int
    #: epoch the run started from (0 for a fresh run)
    resumed_from: int
    #: the metrics.jsonl records, all epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    model_path: Path | None = None
    #: wall time of each epoch trained in this call (train + eval + checkpoint), seconds
    epoch_seconds: list[float] = field(default_factory=list)
    #: seconds spent building the data (bag generation + features)
    data_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for (seed, epoch, stream), from numpy's SeedSequence (stable across versions)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, stream]).generate_state(1, np.uint64)[0]) >> 1


def _collate(samples: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, Any]:
    """Stack each key into a ``(B, ...)`` tensor; keys whose shapes differ between the samples (a point
    cloud, a box list) become a list of B tensors instead."""
    out: dict[str, Any] = {}
    for k in samples[0]:
        arrs = [s[k] for s in samples]
        if all(a.shape == arrs[0].shape for a in arrs):
            out[k] = torch.from_numpy(np.stack(arrs)).to(device)
        else:
            out[k] = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrs]
    return out


def _lr_lambda(cfg: TrainConfig, total_epochs: int) -> Callable[[int], float]:
    sc = cfg.scheduler
    if sc.name == "constant" or total_epochs <= 1:
        return lambda e: 1.0
    f = sc.min_lr_factor

    def cosine(e: int) -> float:  # e = epochs done; the last epoch (e = total - 1) runs at lr · f
        x = min(max(e, 0), total_epochs - 1) / (total_epochs - 1)
        return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * x))

    return cosine


def _init_model(model: torch.nn.Module, state: dict[str, torch.Tensor], fresh: tuple[str, ...],
                source: Any) -> list[str]:
    """``init_from``: every tensor of ``state`` into ``model``, strictly, except the modules ``fresh`` (a branch's
    :meth:`init_fresh_modules`), each loaded whole or not at all: whole when ``state`` holds exactly its tensors
    with their shapes, else it keeps its fresh initialisation (a head whose form changed; never a mix of old and
    new tensors). Returns the modules that start fresh (the trainer prints them)."""
    if not fresh:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{source}: weights do not fit the model: {exc}") from exc
        return []
    own = model.state_dict()
    started_fresh = []
    for m in fresh:
        p = f"{m}."
        mine = {k: tuple(v.shape) for k, v in own.items() if k.startswith(p)}
        theirs = {k: tuple(v.shape) for k, v in state.items() if k.startswith(p)}
        if mine != theirs:
            started_fresh.append(m)
    drop = tuple(f"{m}." for m in started_fresh)
    result = model.load_state_dict({k: v for k, v in state.items() if not k.startswith(drop)} if drop else state,
                                   strict=False)
    bad = [k for k in result.missing_keys if not k.startswith(drop)] if drop else list(result.missing_keys)
    bad += list(result.unexpected_keys)
    if bad:
        raise CheckpointError(f"{source}: weights do not fit the model: missing or unexpected {', '.join(bad[:8])}")
    return started_fresh


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module, branch: Branch | None = None) -> torch.optim.Optimizer:
    o = cfg.optimizer
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    groups = branch.param_groups(model) if branch is not None else None
    params: Any = model.parameters() if groups is None else [
        {"params": g["params"], "lr": o.lr * float(g.get("lr_scale", 1.0))} for g in groups]
    # foreach=False: one code path whatever the device, so the arithmetic does not depend on it
    return cls(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, foreach=False)


def _read_history(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if int(rec.get("epoch", 0)) <= upto_epoch:
                out.append(rec)
    return out


def _json_safe(x: Any) -> Any:
    """Records with non-finite floats (undefined metrics) as null, so metrics.jsonl is standard JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in history))
    tmp.replace(path)


def _fmt(metrics: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, float):
            parts.append(f"{k} {v:.4f}")
    return "  ".join(parts)


def train(
    config: TrainConfig | str | Path | dict[str, Any],
    *,
    branch: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    epochs: int | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a branch as ``config`` says (see the module docstring).

    Args:
        config: a :class:`TrainConfig`, a YAML path or a mapping.
        branch: the branch asked for (must match the config's ``branch`` when that is set).
        out: run folder (overrides ``config.out``).
        resume: continue from the newest checkpoint in the run folder (a fresh start when there is none).
            Without it, a run folder that already holds checkpoints is an error.
        epochs: total epochs (overrides ``config.epochs``).
        progress: tqdm bars and a line per epoch.
        on_epoch_end: called as ``f(epoch, record)`` after each epoch's checkpoint is written (tests use
            it to interrupt a run).
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config, branch=branch)
    if branch is not None and cfg.branch != branch:
        raise ValueError(f"config is for branch {cfg.branch!r}, not {branch!r}")
    total_epochs = int(epochs if epochs is not None else cfg.epochs)
    if total_epochs < 1:
        raise ValueError("epochs must be >= 1")
    run_dir = Path(out) if out is not None else cfg.run_dir
    ckpt_root = run_dir / "checkpoints"
    cfg_dict = cfg.to_dict()

    existing = list_checkpoints(ckpt_root)
    if existing and not resume:
        raise ValueError(f"{run_dir} already holds checkpoints (up to epoch {existing[-1][0]}): pass --resume "
                         "to continue it, or choose another --out")
    ckpt = load_checkpoint(existing[-1][1]) if (resume and existing) else None
    if ckpt is not None:
        diffs = config_differences(ckpt.config, cfg_dict)
        if diffs:
            raise ValueError(f"cannot resume {ckpt.path}: the config changed since it was written:\n  "
                             + "\n  ".join(diffs))
        if ckpt.epoch >= total_epochs:
            log.warning("%s: already trained %d epochs (asked for %d); nothing to do", run_dir, ckpt.epoch, total_epochs)
            branch_done = get_branch(ckpt.branch)(ckpt.branch_config)
            model_path = run_dir / "model.safetensors"
            save_weights(model_path, ckpt.model_state, {"branch": ckpt.branch, "epoch": str(ckpt.epoch),
                                                        "branch_config": json.dumps(branch_done.describe(), sort_keys=True)})
            return TrainResult(run_dir=run_dir, epochs=ckpt.epoch, resumed_from=ckpt.epoch,
                               history=_read_history(run_dir / "metrics.jsonl", ckpt.epoch), model_path=model_path)

    branch_obj: Branch = get_branch(cfg.branch)(cfg.branch_sections)
    device = torch.device(cfg.device)

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            if device.type == "cuda":  # cuBLAS needs a fixed workspace for deterministic results
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        seed_everything(cfg.seed)
        return _run(cfg, cfg_dict, branch_obj, device, run_dir, ckpt_root, ckpt, total_epochs, progress, on_epoch_end)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def _run(cfg: TrainConfig, cfg_dict: dict[str, Any], branch: Branch, device: torch.device, run_dir: Path,
         ckpt_root: Path, ckpt: Any, total_epochs: int, progress: bool,
         on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> TrainResult:
    if cfg.init_from and ckpt is None and not Path(cfg.init_from).expanduser().is_file():
        # before the (minutes of) data loading, not after it
        raise CheckpointError(f"init_from: no such weight file {cfg.init_from} (the config's comment says how to "
                              "make it)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")

    # --- data (features cached in memory for the whole run)
    t0 = time.perf_counter()
    cache = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
    train_data = load_split(cfg.data.train, branch, cache_dir=cache, role="train", progress=progress)
    val_data = load_split(cfg.data.val, branch, cache_dir=cache, role="val", progress=progress) if cfg.data.val else None
    data_seconds = time.perf_counter() - t0
    train_samples = train_data.samples
    val_samples = val_data.samples if val_data else []
    split = {"train": describe_split(cfg.data.train), "val": describe_split(cfg.data.val or [])}
    if progress:
        tqdm.write(f"split: train {split['train']['name']}, val {split['val']['name']}")
        tqdm.write(f"data: {len(train_samples)} train / {len(val_samples)} val frames "
                   f"({data_seconds:.1f} s; skipped without ground truth: "
                   f"{train_data.skipped + (val_data.skipped if val_data else 0)})")

    # --- model, optimiser, schedule (model init after seeding: deterministic)
    model = branch.build_model().to(device)
    if cfg.init_from and ckpt is None:
        state, _ = load_weights(cfg.init_from)
        started_fresh = _init_model(model, state, tuple(getattr(branch, "init_fresh_modules", lambda: ())()),
                                    cfg.init_from)
        if started_fresh and progress:
            print(f"init_from {cfg.init_from}: {', '.join(started_fresh)} start from their fresh initialisation "
                  "(not in the file, or of another form)")
    optimizer = _make_optimizer(cfg, model, branch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total_epochs))
    start_epoch, global_step = 0, 0
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt.model_state)
            optimizer.load_state_dict(ckpt.optimizer_state)
            if ckpt.scheduler_state is not None:
                scheduler.load_state_dict(ckpt.scheduler_state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{ckpt.path}: does not fit the model/optimizer: {exc}") from exc
        # the LR of the next epoch follows the (possibly extended) schedule of this run
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
        restore_rng(ckpt.rng_scalars, ckpt.rng_tensors)
        start_epoch, global_step = ckpt.epoch, ckpt.global_step
        history = _read_history(run_dir / "metrics.jsonl", start_epoch)
        if progress:
            tqdm.write(f"resuming {run_dir} from epoch {start_epoch} ({ckpt.path.name})")
    _write_history(run_dir / "metrics.jsonl", history)

    n = len(train_samples)
    bs = cfg.batch_size
    steps_per_epoch = max(1, -(-n // bs))
    result = TrainResult(run_dir=run_dir, epochs=start_epoch, resumed_from=start_epoch, history=history,
                         data_seconds=data_seconds)
    branch_config = branch.describe()
    for epoch in range(start_epoch, total_epochs):
        t_epoch = time.perf_counter()
        model.train()
        order = np.random.default_rng(_epoch_seed(cfg.seed, epoch, 0)).permutation(n)
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 1))
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{total_epochs}", unit="batch",
                   disable=not progress, leave=False)
        for step in bar:
            idx = order[step * bs: (step + 1) * bs]
            batch = branch.augment(_collate([train_samples[i] for i in idx], device), gen)
            output = branch.forward(model, batch)
            loss, parts = branch.loss(output, batch, epoch_progress=epoch + (step + 1) / steps_per_epoch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optimizer.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
            optimizer.step()
            global_step += 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        bar.close()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        t_train = time.perf_counter() - t_epoch
        val = branch.evaluate(model, val_samples, batch_size=cfg.eval_batch_size, device=device) if val_samples else {}
        record: dict[str, Any] = _json_safe({
            "epoch": epoch + 1,
            "global_step": global_step,
            "lr": lr,
            "train": {k: v / steps_per_epoch for k, v in sums.items()},
            "val": val,
            "split": split,
            "train_seconds": round(t_train, 3),
            "eval_seconds": round(time.perf_counter() - t_epoch - t_train, 3),
        })
        save_checkpoint(ckpt_root, epoch=epoch + 1, global_step=global_step, model=model, optimizer=optimizer,
                        scheduler=scheduler, branch=branch.name, branch_config=branch_config, config=cfg_dict,
                        metrics=record)
        if cfg.checkpoint.keep_last:
            for _, old in list_checkpoints(ckpt_root)[: -cfg.checkpoint.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        history.append(record)
        _write_history(run_dir / "metrics.jsonl", history)
        result.epochs = epoch + 1
        result.epoch_seconds.append(time.perf_counter() - t_epoch)
        if progress:
            key = (branch.key_metric,) if branch.key_metric else ()
            tqdm.write(f"epoch {epoch + 1}/{total_epochs}: loss {record['train'].get('loss', float('nan')):.4f}  "
                       + _fmt(val, (*key, "ece", "vacuity_visible", "vacuity_invisible", "ism_iou"))
                       + f"  ({result.epoch_seconds[-1]:.1f} s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)

    model_path = run_dir / "model.safetensors"
    save_weights(model_path, model.state_dict(), {
        "branch": branch.name, "epoch": str(result.epochs), "branch_config": json.dumps(branch_config, sort_keys=True)})
    result.model_path = model_path
    return result


def load_trained(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[Branch, torch.nn.Module]:
    """(branch, model in eval mode) from a run folder, its ``model.safetensors``, or a checkpoint folder.

    The branch and its configuration come from the weight file's metadata; the file is read with
    safetensors only (no pickle)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    state, meta = load_weights(p)
    try:
        branch = get_branch(meta["branch"])(json.loads(meta["branch_config"]))
    except KeyError as exc:
        raise CheckpointError(f"{p}: no {exc} in the metadata (not written by this trainer?)") from exc
    model = branch.build_model()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{p}: weights do not fit the {branch.name} model: {exc}") from exc
    return branch, model.to(device).eval()
