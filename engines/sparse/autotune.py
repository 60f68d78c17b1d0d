"""Dataflow registry and the tuner: offline measurement, live lookup without timing.

Which dataflow wins depends on channels, neighbour density and hardware (gather-scatter does exact
FLOPs; implicit GEMM multiplies zeros but never scatters), so -- as TorchSparse++ does -- the
choice is measured, not guessed. But measuring inside a running node stalls it on every new voxel
count and makes the choice (and the result, at rounding level) depend on timing noise and the
thread count. So the measuring happens offline (``perception-stack engines tune`` ->
:mod:`.tunefile`), and ``dataflow="auto"`` at run time is a lookup: the tune file's bucket for the
layer's shape, else the nearest bucket, else :func:`.tunefile.static_default`. No thread count in
any key: for a given tune file the dataflow per layer -- and hence the output, bit for bit, since
each dataflow is deterministic at any thread count -- is the same at 1 or 16 threads.

The default tuner reads ``$ENGINES_SPARSE_TUNE_FILE`` when set; a node should instead call
:func:`.tunefile.configure` on its network at configure time. ``Autotuner.candidates_timed`` (and
:func:`candidates_timed_total` across all tuners) count every timed candidate, so a test can assert
that none is timed in the live path.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable, Optional

import torch

from .dataflow_fused import fused_gather_scatter, fused_hybrid, implicit_gemm_fused
from .dataflow_gather_scatter import gather_scatter, gather_scatter_blocked
from .dataflow_onednn import available as onednn_available, onednn_blocked, onednn_gather_scatter
from .dataflow_implicit_gemm import implicit_gemm, implicit_gemm_torch
from .epilogue import Epilogue
from .kernel_map import KernelMap

if TYPE_CHECKING:
    from .tunefile import DeviceTable

Dataflow = Callable[[torch.Tensor, torch.Tensor, KernelMap], torch.Tensor]

DATAFLOWS: dict[str, Dataflow] = {
    "gather_scatter": gather_scatter,
    "gather_scatter_blocked": gather_scatter_blocked,
    "implicit_gemm": lambda x, w, km: implicit_gemm(x, w, km, sort=False),
    "implicit_gemm_sorted": lambda x, w, km: implicit_gemm(x, w, km, sort=True),
    "implicit_gemm_torch": implicit_gemm_torch,
    "fused_gather_scatter": fused_gather_scatter,
    "fused_hybrid": fused_hybrid,
    "implicit_gemm_fused": implicit_gemm_fused,
    "onednn_gather_scatter": onednn_gather_scatter,
    "onednn_blocked": onednn_blocked,
}


# dataflows that apply an epilogue inside their loop; the others get it afterwards (same ops, same values)
EPILOGUE_INSIDE = frozenset({"fused_gather_scatter", "fused_hybrid", "implicit_gemm_fused"})


def call_dataflow(name: str, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
                  epilogue: Optional[Epilogue] = None) -> torch.Tensor:
    """``DATAFLOWS[name]`` with ``epilogue`` (bias/BatchNorm/residual/ReLU) inside its loop or after it."""
    if epilogue is None or epilogue.is_empty():
        return DATAFLOWS[name](x, weight, kmap)
    if name in EPILOGUE_INSIDE:
        return DATAFLOWS[name](x, weight, kmap, epilogue)  # type: ignore[call-arg]
    return epilogue.apply_(DATAFLOWS[name](x, weight, kmap))


def candidates_for(device: torch.device, dtype: torch.dtype = torch.float32) -> list[str]:
    if device.type == "cuda":
        return ["gather_scatter", "implicit_gemm", "implicit_gemm_sorted"]
    cpu = ["gather_scatter", "gather_scatter_blocked", "implicit_gemm", "implicit_gemm_sorted",
           "fused_gather_scatter", "fused_hybrid", "implicit_gemm_fused"]
    # fp32 only, and only where torch has oneDNN: elsewhere these would time gather_scatter again
    return cpu + (["onednn_gather_scatter", "onednn_blocked"] if onednn_available() and dtype == torch.float32 else [])


_timed_lock = threading.Lock()
_timed_total = 0


def candidates_timed_total() -> int:
    """Candidates timed by every tuner of this process so far (instrumentation for tests)."""
    return _timed_total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Autotuner:
    """Dataflow per layer shape from a tune-file table; measures only when built with ``measure=True``.

    ``candidates`` restricts the dataflows timed (default: :func:`candidates_for` the device).
    ``measure=False`` (live): :meth:`run` looks up and never times. ``measure=True`` (offline, used
    by :func:`.tunefile.tune_network`): every call times all candidates and adds the times to the
    table. ``sources`` counts lookups by outcome ("exact", "nearest", "default"). Thread-safe.
    """

    def __init__(self, table: "DeviceTable | None" = None, device_type: str = "cpu", measure: bool = False,
                 repeats: int = 3, candidates: "list[str] | None" = None) -> None:
        from .tunefile import DeviceTable

        self.table = table if table is not None else DeviceTable()
        self.device_type = device_type
        self.measure = measure
        self.repeats = repeats
        self.candidates = candidates  # None: candidates_for(device); a list restricts what is timed
        self.device_known = table is not None and bool(table.entries)
        self.candidates_timed = 0
        self.sources: Counter[str] = Counter()
        self._memo: dict = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Picklable (a configured network can be deep-copied or saved whole): the lock is rebuilt."""
        d = dict(self.__dict__)
        d.pop("_lock", None)
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    @property
    def choices(self) -> dict[str, str]:
        """Shape key -> dataflow of every lookup made so far (for reports)."""
        return {str(k if dev == "cpu" else (dev, k)): v[0] for (dev, k), v in sorted(self._memo.items())}

    def choose(self, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> tuple[str, str]:
        """(dataflow, source) for this call -- a pure lookup, no timing."""
        from .tunefile import shape_key, static_default

        key = shape_key(weight, kmap, x.dtype)
        # memo per device type too: one tuner serves every network of the process, and a choice made for the
        # CPU (a fused CPU dataflow) must not be reused for the same shape on a CUDA copy of the network
        memo_key = (x.device.type, key)
        hit = self._memo.get(memo_key)
        if hit is None:
            found = self.table.lookup(key) if x.device.type == self.device_type else None
            hit = found or (static_default(key, x.device.type), "default")
            with self._lock:
                self._memo[memo_key] = hit
        return hit

    def run(self, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
            epilogue: Optional[Epilogue] = None) -> torch.Tensor:
        if self.measure:  # candidates are timed on the convolution alone; the epilogue follows the best
            y = self._measure(x, weight, kmap)
            return y if epilogue is None else epilogue.apply_(y)
        name, source = self.choose(x, weight, kmap)
        self.sources[source] += 1
        return call_dataflow(name, x, weight, kmap, epilogue)

    def _measure(self, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        global _timed_total
        from .tunefile import shape_key

        fresh = _fresh_state(kmap)
        key = shape_key(weight, kmap, x.dtype)
        names = list(self.candidates) if self.candidates is not None else candidates_for(x.device, x.dtype)
        outs: dict[str, torch.Tensor] = {}
        for name in names:  # warm-up: compiles kernels, builds the lazy map forms each one needs
            outs[name] = DATAFLOWS[name](x, weight, kmap)
        times = {name: float("inf") for name in names}
        for _ in range(self.repeats):  # round-robin, so a burst of machine noise hits all alike
            for name in names:
                # each candidate pays the preparation it needs on a new map (e.g. the fused loop's sort of an
                # unsorted map's pairs): timed on a warm map, one that needs it looked cheaper than it is
                # on every new frame (3 Dec 2026: 32-channel SubM of upstream-order input, fused_hybrid
                # chosen at 75 ms over onednn_gather_scatter at 38 ms)
                _restore_state(kmap, fresh)
                _sync(x.device)
                t0 = time.perf_counter()
                outs[name] = DATAFLOWS[name](x, weight, kmap)
                _sync(x.device)
                times[name] = min(times[name], time.perf_counter() - t0)
        with self._lock:
            self.candidates_timed += len(names)
            best = self.table.add(key, {n: t * 1e3 for n, t in times.items()})
            self._memo.clear()
        with _timed_lock:
            _timed_total += len(names)
        return outs[best]


_FRESH = "_tuner_fresh_state"


def _fresh_state(kmap: KernelMap) -> tuple:
    """The map's lazily built forms and caches as the tuner first saw it (kept on the map: its layers
    are tuned one after the other, and each is timed from this state, not from what earlier layers'
    candidates left)."""
    if _FRESH not in kmap._extras:
        kmap._extras[_FRESH] = (kmap._pairs, kmap._out_in_map, dict(kmap._extras))
    return kmap._extras[_FRESH]


def _restore_state(kmap: KernelMap, state: tuple) -> None:
    kmap._pairs, kmap._out_in_map = state[0], state[1]
    kmap._extras.clear()
    kmap._extras.update(state[2])
    kmap._extras[_FRESH] = state


_default: Autotuner | None = None


def default_tuner() -> Autotuner:
    """Process-wide frozen tuner: ``$ENGINES_SPARSE_TUNE_FILE`` when set, else static defaults."""
    global _default
    if _default is None:
        from .tunefile import TuneFile, device_table

        path = os.environ.get("ENGINES_SPARSE_TUNE_FILE")
        table = device_table(TuneFile.load(path), "cpu")[0] if path else None
        _default = Autotuner(table, measure=False)
    return _default


def set_default_tuner(tuner: Autotuner | None) -> None:
    global _default
    _default = tuner


def run_dataflow(name: str, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
                 tuner: Autotuner | None = None, epilogue: Optional[Epilogue] = None) -> torch.Tensor:
    """Run a named dataflow, or ``"auto"`` through ``tuner`` (default: the process-wide one), then
    ``epilogue`` (inside the loop where the dataflow can)."""
    if name == "auto":
        return (tuner or default_tuner()).run(x, weight, kmap, epilogue)
    if name not in DATAFLOWS:
        raise ValueError(f"unknown dataflow {name!r}; choose from {sorted(DATAFLOWS)} or 'auto'")
    return call_dataflow(name, x, weight, kmap, epilogue)
