"""What a learned branch provides to the trainer (:mod:`perception_nodes.learning.trainer`).

A branch owns everything specific to one sensor/task: the configuration sections it reads, how a
:class:`~perception_nodes.datasets.Frame` becomes a training sample (features + targets, numpy), the
model, the data augmentation, the loss and the validation metrics. The trainer owns the rest: seeds,
batching, optimisation, checkpoints, logging.

Samples are dicts of numpy arrays with the same keys and per-key shapes for every frame of a branch;
the trainer stacks them into batches of torch tensors (``batch[key]``: (B, ...)). A key whose shape
differs between samples (a point cloud, a list of boxes) arrives as a list of B tensors instead.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from perception_nodes.datasets.frame import Frame

Sample = dict[str, np.ndarray]
Batch = dict[str, Tensor]


class Branch(abc.ABC):
    """Base class of the trainable branches; subclasses register in ``BRANCHES``."""

    #: registry name (``perception-stack train <name>``)
    name: ClassVar[str]
    #: top-level config sections the branch reads (the trainer passes them, and rejects unknown ones)
    sections: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def __init__(self, sections: Mapping[str, Mapping[str, Any]]) -> None:
        """Validate and keep the branch's config sections (missing sections take defaults)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The resolved branch configuration as JSON-able data (stored with every checkpoint and model,
        and enough to rebuild the branch: ``type(branch)(branch.describe())``)."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (the trainer seeds torch first)."""

    @abc.abstractmethod
    def prepare_frame(self, frame: Frame) -> Sample | None:
        """Features and targets of one frame, or None when the frame has no ground truth for this branch."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups, each with an ``lr_scale`` (times ``optimizer.lr``); None: one group of
        every parameter (the default)."""
        return None

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Random, label-consistent augmentation of a training batch (default: none). Draw only from
        ``generator`` so that training stays reproducible."""
        return batch

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """Run the model on a batch (default: ``model(batch["features"])``)."""
        return model(batch["features"])

    @abc.abstractmethod
    def loss(self, output: Any, batch: Batch, *, epoch_progress: float) -> tuple[Tensor, dict[str, float]]:
        """Scalar training loss and loggable parts; ``epoch_progress`` counts (fractional) epochs done,
        for annealed terms."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], *, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """Validation metrics over ``samples`` (model in eval mode, no gradients)."""

    #: metric that summarises a validation run (higher is better), for the epoch log line
    key_metric: ClassVar[str] = ""
