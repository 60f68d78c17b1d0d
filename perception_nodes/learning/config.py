"""Training configuration (``configs/train/<branch>.yaml``).

Top-level keys (all optional except ``data``; unknown keys are errors):

==================  ========================================================================================
``branch``          branch name (must match ``perception-stack train <branch>`` when given)
``seed``            seeds torch, numpy, Python ``random``; shuffling and augmentation derive from (seed, epoch)
``threads``         torch intra-op threads (``torch.set_num_threads``); 0 leaves torch's default. Same
                    threads + same seed → bit-identical weights
``deterministic``   ``torch.use_deterministic_algorithms(True)`` (default true)
``device``          ``cpu`` (default) or ``cuda[:N]``
``out``             run folder (default ``out/train/<branch>``); ``--out`` overrides
``epochs``          epochs to train (``--epochs`` overrides)
``batch_size``      training batch size; ``eval_batch_size`` for validation
``data``            ``train`` and ``val``: lists of bag sources; ``cache_dir`` for generated bags
``optimizer``       ``name`` (adam | adamw), ``lr``, ``weight_decay``, ``betas``, ``grad_clip`` (0 = off)
``scheduler``       ``name`` (constant | cosine: per epoch down to ``min_lr_factor`` · lr at the last epoch)
``checkpoint``      ``keep_last``: keep only the newest N epoch checkpoints (0 = all)
``init_from``       optional weight file to start from (safetensors, or .pt read with ``weights_only=True``)
<branch sections>   e.g. ``grid``, ``features``, ``model``, ``loss``, ``augment``, ``eval`` for
                    ``lidar_occupancy`` (see the branch module)
==================  ========================================================================================

A bag source is one of ``{path: DIR}``, ``{generate: {scenario, seed, duration_s, lidar, ...}}``
(keyword arguments of ``perception_nodes.scenario.generate.generate_bag``, generated once into the cache)
or ``{fixture: {...}}`` (keyword arguments of :func:`perception_nodes.learning.fixtures.write_fixture_bag`,
a tiny stand-in for tests), plus optional ``stride`` (use every n-th frame) and ``max_frames``. Relative
paths are relative to the working directory. Bags under the shared real-data folder (``../shared/data``)
are refused for training: real data is for evaluation only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perception_nodes.config import ConfigError, to_dataclass

__all__ = [
    "BagSource",
    "CheckpointConfig",
    "DataConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "TrainConfig",
    "load_config",
]

GENERIC_KEYS = (
    "branch", "seed", "threads", "deterministic", "device", "out", "epochs", "batch_size", "eval_batch_size",
    "data", "optimizer", "scheduler", "checkpoint", "init_from",
)
#: config keys that may change when resuming (the rest must match the checkpoint's)
RESUME_FREE_KEYS = ("out", "epochs", "checkpoint", "data.cache_dir", "threads", "device", "eval_batch_size")


@dataclass(frozen=True)
class BagSource:
    """One bag of a data split: an existing bag, a generated scenario, or a test fixture."""

    path: str | None = None
    generate: Mapping[str, Any] | None = None
    fixture: Mapping[str, Any] | None = None
    #: use every ``stride``-th LiDAR frame (consecutive 10 Hz frames are nearly identical)
    stride: int = 1
    #: stop after this many used frames (None: all)
    max_frames: int | None = None

    def __post_init__(self) -> None:
        kinds = [k for k in ("path", "generate", "fixture") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ConfigError(f"a bag source needs exactly one of path, generate, fixture (got {kinds or 'none'})")
        if self.stride < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise ConfigError("bag source stride and max_frames must be >= 1")
        for k in ("generate", "fixture"):
            v = getattr(self, k)
            if v is not None and not isinstance(v, Mapping):
                raise ConfigError(f"bag source {k} must be a mapping of keyword arguments")

    def describe(self) -> str:
        if self.path is not None:
            what = str(self.path)
        else:
            kind = "generate" if self.generate is not None else "fixture"
            what = f"{kind}({', '.join(f'{k}={v}' for k, v in sorted((self.generate or self.fixture or {}).items()))})"
        return what + (f" every {self.stride}" if self.stride > 1 else "") + (
            f" max {self.max_frames}" if self.max_frames else "")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k in ("path", "generate", "fixture"):
            v = getattr(self, k)
            if v is not None:
                d[k] = dict(v) if isinstance(v, Mapping) else v
        d["stride"] = self.stride
        d["max_frames"] = self.max_frames
        return d


@dataclass(frozen=True)
class DataConfig:
    train: tuple[BagSource, ...]
    val: tuple[BagSource, ...] = ()
    #: where generated bags are cached (None: ``$PERCEPTION_NODES_CACHE``/``~/.cache`` /perception_nodes/train_bags)
    cache_dir: str | None = None


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    lr: float = 5e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    #: clip the global gradient norm to this (0: no clipping)
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        if self.name not in ("adam", "adamw"):
            raise ConfigError(f"optimizer.name must be adam or adamw, got {self.name!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.grad_clip >= 0 and len(self.betas) == 2):
            raise ConfigError("optimizer: lr > 0, weight_decay >= 0, grad_clip >= 0, betas = [b1, b2]")


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "cosine"
    #: cosine: the LR of the last epoch is lr · min_lr_factor
    min_lr_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in ("constant", "cosine"):
            raise ConfigError(f"scheduler.name must be constant or cosine, got {self.name!r}")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ConfigError("scheduler.min_lr_factor must lie in [0, 1]")


@dataclass(frozen=True)
class CheckpointConfig:
    #: keep only the newest N epoch checkpoints (0 = keep all)
    keep_last: int = 0

    def __post_init__(self) -> None:
        if self.keep_last < 0:
            raise ConfigError("checkpoint.keep_last must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    branch: str
    data: DataConfig
    seed: int = 0
    threads: int = 2
    deterministic: bool = True
    device: str = "cpu"
    out: str | None = None
    epochs: int = 8
    batch_size: int = 4
    eval_batch_size: int = 8
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    init_from: str | None = None
    #: the branch's own sections, validated by the branch
    branch_sections: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size and eval_batch_size must be >= 1")
        if self.threads < 0:
            raise ConfigError("threads must be >= 0")
        if not self.data.train:
            raise ConfigError("data.train needs at least one bag source")

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"out/train/{self.branch}")

    def to_dict(self) -> dict[str, Any]:
        """The whole configuration as plain JSON-able data (what checkpoints and ``config.json`` store)."""

        def plain(x: Any) -> Any:
            if isinstance(x, BagSource):
                return x.to_dict()
            if dataclasses.is_dataclass(x):
                return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
            if isinstance(x, Mapping):
                return {str(k): plain(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [plain(v) for v in x]
            return x

        d = plain(self)
        d.update(d.pop("branch_sections"))
        return json.loads(json.dumps(d))  # normalise (tuples -> lists)


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(v).__name__}")
    return dict(v)


def _sources(entries: Any, where: str) -> tuple[BagSource, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ConfigError(f"{where} must be a list of bag sources")
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"path": e}
        out.append(to_dataclass(BagSource, _mapping(e, f"{where}[{i}]"), f"{where}[{i}]."))
    return tuple(out)


def load_config(source: str | Path | Mapping[str, Any], *, branch: str | None = None,
                branch_sections: tuple[str, ...] | None = None) -> TrainConfig:
    """Parse a training config (YAML file or mapping).

    ``branch``: the branch asked for on the command line; it must match the file's ``branch`` when
    both are given. ``branch_sections``: the sections the branch reads (others are rejected); default:
    looked up in the branch registry.
    """
    if isinstance(source, Mapping):
        doc = dict(source)
        where = "config"
    else:
        p = Path(source)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: a training config must be a mapping")
        where = str(p)
    name = doc.get("branch", branch)
    if name is None:
        raise ConfigError(f"{where}: no branch given (set 'branch:' or pass one)")
    if branch is not None and name != branch:
        raise ConfigError(f"{where}: config is for branch {name!r}, not {branch!r}")
    if branch_sections is None:
        from perception_nodes.learning.branches import get_branch

        branch_sections = get_branch(name).sections
    unknown = set(doc) - set(GENERIC_KEYS) - set(branch_sections)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(GENERIC_KEYS + tuple(branch_sections))})")
    data = _mapping(doc.get("data"), "data")
    bad = set(data) - {"train", "val", "cache_dir"}
    if bad:
        raise ConfigError(f"{where}: unknown data key(s) {', '.join(sorted(bad))} (known: train, val, cache_dir)")
    kwargs: dict[str, Any] = {k: doc[k] for k in GENERIC_KEYS if k in doc and k not in
                              ("branch", "data", "optimizer", "scheduler", "checkpoint")}
    try:
        return TrainConfig(
            branch=name,
            data=DataConfig(train=_sources(data.get("train"), "data.train"), val=_sources(data.get("val"), "data.val"),
                            cache_dir=data.get("cache_dir")),
            optimizer=to_dataclass(OptimizerConfig, _mapping(doc.get("optimizer"), "optimizer"), "optimizer."),
            scheduler=to_dataclass(SchedulerConfig, _mapping(doc.get("scheduler"), "scheduler"), "scheduler."),
            checkpoint=to_dataclass(CheckpointConfig, _mapping(doc.get("checkpoint"), "checkpoint"), "checkpoint."),
            branch_sections={k: doc[k] for k in branch_sections if k in doc},
            **kwargs,
        )
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], *, ignore: tuple[str, ...] = RESUME_FREE_KEYS
                       ) -> list[str]:
    """Dotted keys whose values differ between two ``TrainConfig.to_dict()`` results (ignoring ``ignore``
    and everything under them), as ``"key: old -> new"`` lines."""
    a, b = _flat(old), _flat(new)

    def ignored(k: str) -> bool:
        return any(k == i or k.startswith(i + ".") for i in ignore)

    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if not ignored(k) and a.get(k) != b.get(k)]
