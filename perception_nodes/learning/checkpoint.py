"""Checkpoints in safetensors — never pickle.

A training checkpoint is a folder ``<run>/checkpoints/epoch_NNNN/`` holding

* ``model.safetensors``: the model's ``state_dict`` (tensors only), header metadata ``format``, ``branch``,
  ``epoch``, ``branch_config`` (JSON) and ``content_sha256`` (hash of every tensor's name, dtype, shape and
  bytes, checked on load);
* ``trainer.safetensors``: every tensor of the optimizer state (``optimizer/...``), the RNG states
  (``rng/torch``, ``rng/numpy/keys``, ``rng/python/state``, ``rng/cuda/<i>``) and the same
  ``content_sha256``; the training config is also in its header metadata (``config``, JSON);
* ``trainer.json``: the scalars — epoch, global step, the optimizer's ``param_groups`` and the structure
  of its state (tensors replaced by ``{"__tensor__": name}``), the LR scheduler's ``state_dict``, the
  scalar parts of the RNG states, the config, the epoch's metrics, and the SHA-256 of both safetensors
  files. It is written last; a folder is renamed into place only when complete, so a crash mid-save
  leaves no half checkpoint behind.

Loading checks the file hashes, then parses with :func:`safetensors.torch.load_file` (no code execution
possible) and checks the content hashes: a modified, truncated or corrupt file raises
:class:`CheckpointError` naming the file. :func:`load_weights` also reads foreign ``.pt``/``.pth``/``.bin``
weight files for ``init_from``, always with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

__all__ = [
    "FORMAT",
    "CheckpointError",
    "LoadedCheckpoint",
    "capture_rng",
    "content_hash",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "restore_rng",
    "save_checkpoint",
    "save_weights",
]

FORMAT = "perception_nodes.learning/1"
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.safetensors"
SIDECAR_FILE = "trainer.json"
_EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")
_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}


class CheckpointError(ValueError):
    """A checkpoint or weight file that is missing, corrupt, tampered with, or does not fit the model."""


# --------------------------------------------------------------------------------------------------
# hashing and single files


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write tensors to a safetensors file with ``format`` and ``content_sha256`` in its metadata; returns
    the file's SHA-256."""
    path = Path(path)
    plain = _plain_tensors(tensors)
    meta = {"format": FORMAT, **(metadata or {}), "content_sha256": content_hash(plain)}
    save_file(plain, str(path), metadata=meta)
    return _sha256_file(path)


def load_weights(path: str | Path, *, expect_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a weight file.

    ``.safetensors``: parsed by safetensors (no pickle), the file's SHA-256 checked against
    ``expect_sha256`` when given, and the tensors against the ``content_sha256`` of the metadata when
    present. ``.pt``/``.pth``/``.bin``/``.ckpt``: ``torch.load(weights_only=True)`` (refuses anything but
    tensors and plain containers), accepted as a flat ``{name: tensor}`` dict or one under ``state_dict``;
    metadata is empty. Anything wrong raises :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file")
    if path.suffix in _PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for anything beyond tensors, RuntimeError for junk
            raise CheckpointError(f"{path}: not a plain tensor file (loaded with weights_only=True): {exc}") from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            raise CheckpointError(f"{path}: expected a dict of tensors")
        return dict(obj), {}
    if expect_sha256 is not None:
        actual = _sha256_file(path)
        if actual != expect_sha256:
            raise CheckpointError(f"{path}: SHA-256 mismatch (file modified or corrupt): expected "
                                  f"{expect_sha256[:16]}…, found {actual[:16]}…")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    want = metadata.get("content_sha256")
    if want is not None and content_hash(tensors) != want:
        raise CheckpointError(f"{path}: tensor contents do not match the recorded content_sha256 (file modified)")
    return tensors, metadata


# --------------------------------------------------------------------------------------------------
# nested state (optimizer / scheduler) <-> tensors + JSON skeleton


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            if "__tensor__" in obj or "__int_keys__" in obj or "__tuple__" in obj:
                raise CheckpointError(f"reserved key in state at {path}")
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {"__int_keys__": {str(k): _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}}
        raise CheckpointError(f"state dict at {path} has keys that are neither all str nor all int")
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {path} without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            try:
                return tensors[obj["__tensor__"]]
            except KeyError:
                raise CheckpointError(f"tensor {obj['__tensor__']!r} missing from {TRAINER_FILE}") from None
        if "__int_keys__" in obj:
            return {int(k): _decode(v, tensors) for k, v in obj["__int_keys__"].items()}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def encode_state(state: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able skeleton, tensors) of a nested state such as ``optimizer.state_dict()``."""
    tensors: dict[str, torch.Tensor] = {}
    return _encode(state, prefix, tensors), tensors


def decode_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    return _decode(skeleton, tensors)


# --------------------------------------------------------------------------------------------------
# RNG states


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(scalars, tensors) of the torch, CUDA, numpy (global) and Python ``random`` generator states."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy/keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["rng/python/state"] = torch.tensor(internal, dtype=torch.int64)
    scalars = {
        "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "gauss_next": gauss_next},
    }
    return scalars, tensors


def restore_rng(scalars: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng`."""
    try:
        torch.set_rng_state(tensors["rng/torch"])
        cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
        n = scalars["numpy"]
        keys = tensors["rng/numpy/keys"].numpy().astype(np.uint32)
        np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        p = scalars["python"]
        random.setstate((p["version"], tuple(int(v) for v in tensors["rng/python/state"].tolist()), p["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"invalid RNG state in checkpoint: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# training checkpoints


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns; feed the states to ``load_state_dict`` / :func:`restore_rng`."""

    path: Path
    epoch: int
    global_step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any] | None
    rng_scalars: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    branch: str
    branch_config: dict[str, Any]
    metrics: dict[str, Any]
    extra: dict[str, Any]


def save_checkpoint(
    root: str | Path,
    *,
    epoch: int,
    global_step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    branch: str,
    branch_config: dict[str, Any],
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<root>/epoch_NNNN/`` (see the module docstring) atomically; returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch_{epoch:04d}"
    tmp = root / f".epoch_{epoch:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    config_json = json.dumps(config, sort_keys=True)
    model_sha = save_weights(tmp / MODEL_FILE, model.state_dict(), {
        "branch": branch, "epoch": str(epoch), "branch_config": json.dumps(branch_config, sort_keys=True)})
    opt_skel, opt_tensors = encode_state(optimizer.state_dict(), "optimizer")
    sched_skel, sched_tensors = encode_state(scheduler.state_dict() if scheduler is not None else None, "scheduler")
    rng_scalars, rng_tensors = capture_rng()
    trainer_sha = save_weights(tmp / TRAINER_FILE, {**opt_tensors, **sched_tensors, **rng_tensors},
                               {"epoch": str(epoch), "config": config_json})
    sidecar = {
        "format": FORMAT,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "branch": branch,
        "branch_config": branch_config,
        "optimizer": opt_skel,
        "scheduler": sched_skel,
        "rng": rng_scalars,
        "config": config,
        "metrics": metrics or {},
        "extra": extra or {},
        "files": {MODEL_FILE: model_sha, TRAINER_FILE: trainer_sha},
    }
    with open(tmp / SIDECAR_FILE, "w") as f:
        json.dump(sidecar, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` (those with a sidecar), as (epoch, folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _EPOCH_DIR.match(p.name)
        if m and p.is_dir() and (p / SIDECAR_FILE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read and verify a checkpoint folder (raises :class:`CheckpointError` on any inconsistency)."""
    path = Path(path)
    side_path = path / SIDECAR_FILE
    if not side_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint folder (no {SIDECAR_FILE})")
    try:
        side = json.loads(side_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side_path}: unreadable sidecar (corrupt?): {exc}") from exc
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        raise CheckpointError(f"{side_path}: unknown checkpoint format {side.get('format') if isinstance(side, dict) else None!r}"
                              f" (expected {FORMAT})")
    try:
        files = side["files"]
        model_state, _ = load_weights(path / MODEL_FILE, expect_sha256=files[MODEL_FILE])
        trainer_tensors, _ = load_weights(path / TRAINER_FILE, expect_sha256=files[TRAINER_FILE])
        return LoadedCheckpoint(
            path=path,
            epoch=int(side["epoch"]),
            global_step=int(side["global_step"]),
            model_state=model_state,
            optimizer_state=decode_state(side["optimizer"], trainer_tensors),
            scheduler_state=decode_state(side["scheduler"], trainer_tensors),
            rng_scalars=side["rng"],
            rng_tensors={k: v for k, v in trainer_tensors.items() if k.startswith("rng/")},
            config=side["config"],
            branch=str(side["branch"]),
            branch_config=side["branch_config"],
            metrics=side.get("metrics", {}),
            extra=side.get("extra", {}),
        )
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{side_path}: incomplete sidecar: missing {exc}") from exc
