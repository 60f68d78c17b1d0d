"""How the LiDAR branch network runs: one interface, several runtimes chosen by name in the params file.

A runtime takes one scan and returns the raw evidential maps (:class:`LidarDetectionOutput`); decoding
to boxes is the node's job and the same for every runtime. It reports its stages through ``stage``
(a context-manager factory such as :meth:`perception_nodes.latency.NodeLatency.stage`) so the node's
per-stage latency names the same steps whatever runs them:

========== ==============================================================================
voxelize   crop, dynamic voxels, mean features (always PyTorch/numpy: not part of an engine)
backbone   sparse 3D backbone and collapse to BEV (kernel maps are built here)
bev_net    the 2D BEV network
heads      the evidential heads
========== ==============================================================================

An engine that runs several of these as one graph (ONNX Runtime, later TensorRT) reports them under
one joined name (e.g. ``backbone+bev_net+heads``) rather than inventing a split it cannot measure; the
host-side kernel-map building such an engine needs is its own stage, ``kernel_maps``.

Runtimes register in :data:`RUNTIMES` (``torch`` here; ``onnxruntime`` and, in the next wave,
``tensorrt`` add themselves when their module is imported; :data:`RUNTIME_MODULES` names the module
:func:`make_runtime` imports for a name not registered yet, so this module imports none of them).
:func:`make_runtime` raises :class:`RuntimeUnavailable` with the reason when a runtime cannot run on
this machine, so the node can say so on ``/diagnostics``.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable, ContextManager, Protocol

import torch
from torch import Tensor

from perception_nodes.models.lidar_detection import LidarDetectionNet, LidarDetectionOutput

__all__ = ["RUNTIMES", "RUNTIME_MODULES", "LidarRuntime", "RuntimeUnavailable", "StageFn", "TorchRuntime",
           "make_runtime", "no_stages", "register_runtime"]

StageFn = Callable[[str], ContextManager[Any]]


def no_stages(_name: str) -> ContextManager[Any]:
    """A ``stage`` argument that times nothing."""
    return contextlib.nullcontext()


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run here (library missing, no GPU, unreadable engine file); the message says why."""


class LidarRuntime(Protocol):
    """What a node needs from a runtime."""

    #: the runtime's name as in the params file (``torch``, ``onnxruntime``, ...)
    name: str

    def infer(self, points: Tensor, stage: StageFn = no_stages) -> LidarDetectionOutput:
        """Raw maps of one scan ``[N, >= 4]`` float32 (x, y, z, intensity in base_link); batch of one."""
        ...

    def describe(self) -> dict[str, Any]:
        """Runtime facts for ``/diagnostics`` (name, threads, device, engine file, ...)."""
        ...


class TorchRuntime:
    """The network in eager PyTorch (``torch.inference_mode``), stage by stage."""

    name = "torch"

    def __init__(self, net: LidarDetectionNet, *, threads: int | None = None) -> None:
        self.net = net.eval()
        self.threads = threads
        if threads:
            torch.set_num_threads(int(threads))

    def infer(self, points: Tensor, stage: StageFn = no_stages) -> LidarDetectionOutput:
        net = self.net
        with torch.inference_mode():
            with stage("voxelize"):
                st, counts = net.voxelize(points)
            with stage("backbone"):
                bev = self.backbone_bev(st)
            with stage("bev_net"):
                feats = net.bev_net(bev)
            with stage("heads"):
                return net.heads(feats, counts)

    def backbone_bev(self, st: Any) -> Tensor:
        """The sparse stage (a subclass may run another engine here, e.g. a benchmark's peer)."""
        return self.net.backbone_bev(st)

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "threads": torch.get_num_threads(), "device": "cpu"}


#: runtime name -> factory ``(net, **options) -> LidarRuntime``
RUNTIMES: dict[str, Callable[..., LidarRuntime]] = {"torch": TorchRuntime}


#: runtime name -> module that registers it on import (loaded on first use by :func:`make_runtime`)
RUNTIME_MODULES: dict[str, str] = {"onnxruntime": "perception_nodes.models.onnx_runtime"}


def register_runtime(name: str, factory: Callable[..., LidarRuntime]) -> None:
    """Make ``runtime: <name>`` selectable in the params file."""
    RUNTIMES[name] = factory


def make_runtime(name: str, net: LidarDetectionNet, **options: Any) -> LidarRuntime:
    """The runtime ``name`` around ``net``; :class:`RuntimeUnavailable` if unknown or unusable here."""
    if name not in RUNTIMES and name in RUNTIME_MODULES:
        try:
            importlib.import_module(RUNTIME_MODULES[name])
        except ImportError as e:
            raise RuntimeUnavailable(f"runtime {name!r} cannot be loaded here: {e}") from None
    if name not in RUNTIMES:
        known = sorted(set(RUNTIMES) | set(RUNTIME_MODULES))
        raise RuntimeUnavailable(f"unknown runtime {name!r}; known: {', '.join(known)}")
    return RUNTIMES[name](net, **options)
