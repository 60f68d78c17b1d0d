"""Dataflow registry and autotuner: pick the fastest dataflow per layer workload and device.

Which dataflow wins depends on channels, neighbour density and hardware (gather-scatter does exact
FLOPs; implicit GEMM multiplies zeros but never scatters), so -- as TorchSparse++ does -- the
choice is measured, not guessed. The first call of a workload times every candidate on the real
input and keeps the fastest; later calls with the same key reuse the choice. Keys are the layer's
workload signature (kind, channels, kernel volume, log2 buckets of output rows and neighbours per
row) plus device name and thread count, so all layers that do the same work share one decision.

Choices can be persisted in a JSON file (``Autotuner(path)`` or ``$ENGINES_SPARSE_TUNE_FILE``) so a
deployment tunes once. Each dataflow alone is deterministic for any thread count; a fresh tuning on
a different machine may pick another dataflow, which changes results at rounding level -- pin
``dataflow=`` on a layer (or ship the tune file) where bit-for-bit reproducibility matters.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from .dataflow_gather_scatter import gather_scatter, gather_scatter_blocked
from .dataflow_implicit_gemm import implicit_gemm, implicit_gemm_torch
from .kernel_map import KernelMap

Dataflow = Callable[[torch.Tensor, torch.Tensor, KernelMap], torch.Tensor]

DATAFLOWS: dict[str, Dataflow] = {
    "gather_scatter": gather_scatter,
    "gather_scatter_blocked": gather_scatter_blocked,
    "implicit_gemm": lambda x, w, km: implicit_gemm(x, w, km, sort=False),
    "implicit_gemm_sorted": lambda x, w, km: implicit_gemm(x, w, km, sort=True),
    "implicit_gemm_torch": implicit_gemm_torch,
}


def candidates_for(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["gather_scatter", "implicit_gemm", "implicit_gemm_sorted"]
    return ["gather_scatter", "gather_scatter_blocked", "implicit_gemm", "implicit_gemm_sorted"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu{torch.get_num_threads()}t"


def _bucket(v: float) -> int:
    return int(round(math.log2(max(v, 1.0)) * 2))


def workload_key(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> str:
    K, cin, cout = weight.shape
    density = kmap.n_pairs / max(kmap.n_out, 1)
    return "|".join(
        [
            kmap.geometry.kind,
            f"{cin}x{cout}",
            f"K{K}",
            f"n{_bucket(kmap.n_out)}",
            f"d{_bucket(density)}",
            str(x.dtype).replace("torch.", ""),
            device_name(x.device),
        ]
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Autotuner:
    """Measured choice of dataflow per workload key; thread-safe; optional JSON persistence."""

    def __init__(self, path: str | os.PathLike | None = None, repeats: int = 3) -> None:
        self.path = Path(path) if path else None
        self.repeats = repeats
        self.choices: dict[str, str] = {}
        self.timings: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        if self.path and self.path.exists():
            try:
                self.choices.update(json.loads(self.path.read_text()).get("choices", {}))
            except (OSError, ValueError):
                pass

    def run(self, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        key = workload_key(x, weight, kmap)
        name = self.choices.get(key)
        if name is not None and name in DATAFLOWS:
            return DATAFLOWS[name](x, weight, kmap)
        return self._tune(key, x, weight, kmap)

    def _tune(self, key: str, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        names = candidates_for(x.device)
        outs: dict[str, torch.Tensor] = {}
        for name in names:  # warm-up: compiles kernels, builds the lazy map forms each one needs
            outs[name] = DATAFLOWS[name](x, weight, kmap)
        times = {name: float("inf") for name in names}
        for _ in range(self.repeats):  # round-robin, so a burst of machine noise hits all alike
            for name in names:
                _sync(x.device)
                t0 = time.perf_counter()
                outs[name] = DATAFLOWS[name](x, weight, kmap)
                _sync(x.device)
                times[name] = min(times[name], time.perf_counter() - t0)
        best_name = min(names, key=lambda n: times[n])
        with self._lock:
            self.choices[key] = best_name
            self.timings[key] = times
            self._save()
        return outs[best_name]

    def _save(self) -> None:
        if not self.path:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"choices": self.choices, "timings": self.timings}, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass


_default: Autotuner | None = None


def default_tuner() -> Autotuner:
    """Process-wide tuner (persisted to ``$ENGINES_SPARSE_TUNE_FILE`` when set)."""
    global _default
    if _default is None:
        _default = Autotuner(os.environ.get("ENGINES_SPARSE_TUNE_FILE"))
    return _default


def set_default_tuner(tuner: Autotuner | None) -> None:
    global _default
    _default = tuner


def run_dataflow(name: str, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Run a named dataflow, or ``"auto"`` through the default tuner."""
    if name == "auto":
        return default_tuner().run(x, weight, kmap)
    try:
        fn = DATAFLOWS[name]
    except KeyError:
        raise ValueError(f"unknown dataflow {name!r}; choose from {sorted(DATAFLOWS)} or 'auto'") from None
    return fn(x, weight, kmap)
