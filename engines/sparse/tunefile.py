"""Versioned tune files: which dataflow each layer shape uses, measured offline, looked up live.

Timing candidates inside a running node stalls it (a new voxel count once cost a 0.15 m frame
2.4 s against 0.25 s normally), and a choice that depends on timing noise or the thread count makes
results move at rounding level. So tuning is an offline step (``perception-stack engines tune``)
that writes a JSON file, and a live network only looks choices up in it (:func:`configure`).

File layout (``version`` 1)::

    {"format": "engines.sparse.tunefile", "version": 1,
     "devices": {"cpu:<CPU model>": {"measured_with": {...},
                                     "entries": {"<shape key>": {"dataflow": "...", "ms": {...}, "samples": n}}}}}

Devices are keyed on the hardware model (``/proc/cpuinfo`` model name, or the CUDA device name),
never on the thread count: the file was measured at some thread count (``measured_with``), but the
choice it stores is used at every thread count, so the dataflow -- and with it the result, bit for
bit -- does not change when a node runs with another number of threads.

Shape keys bucket what decides the winner: layer kind, kernel, stride, input/output channels, dtype
and the layer's input voxel count rounded to a power of two (``n2^14`` covers 11586..23170 rows).
Lookup order for a layer: its exact bucket; else the nearest voxel-count bucket of the same layer
shape (ties go to the smaller bucket); else :func:`static_default`. All three are pure functions of
the file and the shape, so ``dataflow="auto"`` is deterministic.
"""

from __future__ import annotations

import json
import math
import os
import platform
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

FORMAT = "engines.sparse.tunefile"
VERSION = 1


# --------------------------------------------------------------------------------------------------
# device model and shape keys
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of Linux ``/proc/cpuinfo`` (lower-case keys), or {}."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" not in line:
                if fields:
                    break  # the first processor's block is enough
                continue
            k, v = (p.strip() for p in line.split(":", 1))
            fields.setdefault(k.lower(), " ".join(v.split()))
    except OSError:
        pass
    return fields


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name as the OS reports it (the tune files' device key before 3 Dec 2026)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, with family / model and its widest x86 vector ISA where known.

    Why more than the name: virtual machines often report a generic name ("AMD EPYC") for CPUs of
    different generations, and the best dataflow differs between them (on a Zen 5 with AVX-512 the
    oneDNN GEMM wins the 64-128-channel layers of the CenterPoint encoder; on a Zen 3 with AVX2 the
    fused MKL loop did). The ISA comes from the CPU's flags, not from torch's dispatch setting
    (``ATEN_CPU_CAPABILITY`` changes torch's own kernels, not MKL's or oneDNN's).
    """
    f = _cpuinfo()
    extra = []
    if "cpu family" in f and "model" in f:
        extra.append(f"family {f['cpu family']} model {f['model']}")
    flags = set(f.get("flags", "").split())
    isa = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "AVX" if "avx" in flags else ""
    if isa:
        extra.append(isa)
    return f"{cpu_name()} ({', '.join(extra)})" if extra else cpu_name()


def device_model(device: torch.device | str) -> str:
    """Tune-file device key: ``cpu:<model>`` or ``cuda:<device name>`` -- no thread count in it."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_model()}"


def device_table(tf: "TuneFile", device: torch.device | str = "cpu") -> "tuple[DeviceTable, str | None]":
    """This device's table in ``tf`` and the key it was found under (None: not there, static defaults).

    Tune files written before 3 Dec 2026 keyed CPUs by their name alone (``cpu:AMD EPYC``); such an
    entry is used when the full key is missing, with a warning, since the name may cover other CPU
    generations than the one it was measured on.
    """
    dev = device_model(device)
    if dev in tf.devices:
        return tf.devices[dev], dev
    legacy = f"cpu:{cpu_name()}"
    if torch.device(device).type == "cpu" and legacy in tf.devices:
        warnings.warn(f"tune file has no entry for {dev!r}; using its entry for {legacy!r} (keyed by CPU name "
                      f"only, which may have been measured on another CPU generation): re-run "
                      f"`perception-stack engines tune` here", stacklevel=2)
        return tf.devices[legacy], legacy
    return DeviceTable(), None


def voxel_bucket(n: int) -> int:
    """Power-of-two bucket of a voxel count: ``round(log2(n))`` (0 for n <= 1)."""
    return int(round(math.log2(n))) if n > 1 else 0


@dataclass(frozen=True, order=True)
class ShapeKey:
    """One layer workload, bucketed. ``str()`` is the key in the file."""

    kind: str
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    cin: int
    cout: int
    dtype: str
    n_bucket: int

    def __str__(self) -> str:
        k = "x".join(map(str, self.kernel))
        s = "x".join(map(str, self.stride))
        return f"{self.kind}|k{k}|s{s}|c{self.cin}x{self.cout}|{self.dtype}|n2^{self.n_bucket}"

    @property
    def layer(self) -> tuple:
        """Everything but the voxel-count bucket (what 'nearest bucket' keeps fixed)."""
        return (self.kind, self.kernel, self.stride, self.cin, self.cout, self.dtype)

    @classmethod
    def parse(cls, s: str) -> "ShapeKey":
        try:
            kind, k, st, c, dtype, n = s.split("|")
            cin, cout = c[1:].split("x")
            return cls(kind, tuple(int(v) for v in k[1:].split("x")), tuple(int(v) for v in st[1:].split("x")),  # type: ignore[arg-type]
                       int(cin), int(cout), dtype, int(n[3:]))
        except (ValueError, IndexError):
            raise ValueError(f"malformed tune-file shape key {s!r}") from None


def shape_key(weight: torch.Tensor, kmap: Any, dtype: torch.dtype) -> ShapeKey:
    """Key of one convolution call: ``weight`` [K, C_in, C_out] applied along ``kmap``."""
    g = kmap.geometry
    _, cin, cout = weight.shape
    kind = "inverse" if kmap._extras.get("is_inverse") else g.kind  # tagged by SparseInverseConv3d
    return ShapeKey(kind, tuple(g.kernel_size), tuple(g.stride), int(cin), int(cout),
                    str(dtype).replace("torch.", ""), voxel_bucket(int(kmap.n_in)))


def static_default(key: ShapeKey, device_type: str) -> str:
    """Dataflow for a shape that neither the file nor a neighbouring bucket covers (documented rule).

    GPU: ``implicit_gemm_sorted`` (one output-stationary kernel, no atomics). CPU:
    ``fused_gather_scatter`` -- exact FLOPs (no multiplications by missing neighbours) like
    ``gather_scatter``, tiled so gathers and scatters stay in L2; it beat the chunked loop on every
    32-128-channel layer of the CenterPoint encoder here (sorted or upstream-order input), and falls
    back to ``gather_scatter`` itself where it cannot run (no BLAS symbol, autograd), so it never loses
    badly, which is what a default must guarantee.
    """
    if device_type == "cuda":
        return "implicit_gemm_sorted"
    from .dataflow_fused import available

    return "fused_gather_scatter" if available() else "gather_scatter"


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------


@dataclass
class DeviceTable:
    """Choices for one device model: shape key -> dataflow (+ the measured times behind it)."""

    measured_with: dict[str, Any] = field(default_factory=dict)
    entries: dict[ShapeKey, dict[str, Any]] = field(default_factory=dict)
    _by_layer: dict[tuple, list[ShapeKey]] | None = None

    def add(self, key: ShapeKey, ms: Mapping[str, float]) -> str:
        """Accumulate one measurement (ms per candidate); the choice is the lowest total."""
        e = self.entries.setdefault(key, {"ms": {}, "samples": 0})
        for name, t in ms.items():
            e["ms"][name] = e["ms"].get(name, 0.0) + float(t)
        e["samples"] += 1
        e["dataflow"] = min(sorted(e["ms"]), key=lambda n: e["ms"][n])
        self._by_layer = None
        return e["dataflow"]

    def lookup(self, key: ShapeKey) -> tuple[str, str] | None:
        """(dataflow, "exact" | "nearest") or None when no bucket of this layer shape was tuned."""
        e = self.entries.get(key)
        if e is not None:
            return e["dataflow"], "exact"
        if self._by_layer is None:
            idx: dict[tuple, list[ShapeKey]] = {}
            for k in self.entries:
                idx.setdefault(k.layer, []).append(k)
            self._by_layer = idx
        near = self._by_layer.get(key.layer)
        if not near:
            return None
        best = min(near, key=lambda k: (abs(k.n_bucket - key.n_bucket), k.n_bucket))
        return self.entries[best]["dataflow"], "nearest"


@dataclass
class TuneFile:
    """All device tables of one tune file."""

    devices: dict[str, DeviceTable] = field(default_factory=dict)

    def table(self, device: str) -> DeviceTable:
        return self.devices.setdefault(device, DeviceTable())

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        devs = {}
        for name, t in sorted(self.devices.items()):
            entries = {}
            for k in sorted(t.entries):
                e = t.entries[k]
                entries[str(k)] = {"dataflow": e["dataflow"], "samples": e["samples"],
                                   "ms": {n: round(v, 4) for n, v in sorted(e["ms"].items())}}
            devs[name] = {"measured_with": t.measured_with, "entries": entries}
        return {"format": FORMAT, "version": VERSION, "devices": devs}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TuneFile":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a sparse-engine tune file (format={data.get('format')!r}, want {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"tune file version {data.get('version')!r} is not supported (this engine reads {VERSION}); "
                             "re-run `perception-stack engines tune`")
        from .autotune import DATAFLOWS

        tf = cls()
        for name, d in data.get("devices", {}).items():
            t = tf.table(name)
            t.measured_with = dict(d.get("measured_with", {}))
            for ks, e in d.get("entries", {}).items():
                if e.get("dataflow") not in DATAFLOWS:
                    raise ValueError(f"tune file entry {ks!r} names unknown dataflow {e.get('dataflow')!r}")
                t.entries[ShapeKey.parse(ks)] = {"dataflow": e["dataflow"], "samples": int(e.get("samples", 1)),
                                                 "ms": dict(e.get("ms", {}))}
        return tf

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TuneFile":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"tune file {path} is not valid JSON: {exc}") from None
        return cls.from_json(data)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# offline tuning and live configuration
# --------------------------------------------------------------------------------------------------


def sparse_conv_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every sparse convolution of ``model`` (anything built on conv.py's base class)."""
    from .conv import _SparseConvNd

    return [m for m in model.modules() if isinstance(m, _SparseConvNd)]


def tune_network(model: torch.nn.Module, frames: Iterable[Any], tune_file: TuneFile | None = None,
                 device: torch.device | str = "cpu", repeats: int = 3,
                 candidates: list[str] | None = None) -> TuneFile:
    """Offline: run ``model`` over ``frames`` (SparseTensors), timing every candidate per layer call.

    Every call adds its per-candidate times to its shape bucket (so buckets seen several times are
    decided by the sum); layers pinned to a dataflow are tuned too, since the file describes shapes,
    not modules. ``candidates`` restricts the dataflows timed (default: all of the device's).
    Returns the (updated) tune file; ``measured_with`` records threads, torch and date.
    """
    from .autotune import Autotuner

    tf = tune_file if tune_file is not None else TuneFile()
    dev = device_model(device)
    table = tf.table(dev)
    tuner = Autotuner(table, device_type=torch.device(device).type, measure=True, repeats=repeats,
                      candidates=candidates)
    mods = sparse_conv_modules(model)
    saved = [(m, m.dataflow, getattr(m, "tuner", None)) for m in mods]
    try:
        for m in mods:
            m.dataflow, m.tuner = "auto", tuner
        with torch.no_grad():
            for x in frames:
                model(x)
    finally:
        for m, df, tu in saved:
            m.dataflow, m.tuner = df, tu
    table.measured_with = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host_cpu": cpu_model(),
    }
    return tf


def configure(model: torch.nn.Module, tune_file: TuneFile | str | os.PathLike | None,
              device: torch.device | str = "cpu") -> Any:
    """At node configure: give every sparse conv of ``model`` a frozen tuner built from ``tune_file``.

    The tuner only looks choices up (exact bucket, nearest bucket, static default); it never times a
    candidate. Layers pinned to a named dataflow keep it. ``None`` means static defaults only. A file
    without an entry for this device model is accepted (static defaults) -- ``tuner.device_known``
    says so, for the node's diagnostics. Returns the tuner (its ``sources`` count the lookups).
    """
    from .autotune import Autotuner

    if tune_file is None:
        tf = TuneFile()
    elif isinstance(tune_file, TuneFile):
        tf = tune_file
    else:
        tf = TuneFile.load(tune_file)
    table, found = device_table(tf, device)
    tuner = Autotuner(table, device_type=torch.device(device).type, measure=False)
    tuner.device_known = found is not None
    for m in sparse_conv_modules(model):
        m.tuner = tuner
    return tuner


# --------------------------------------------------------------------------------------------------
# what `perception-stack engines tune` tunes
# --------------------------------------------------------------------------------------------------


def _voxel_backbone8x(in_channels: int, spatial_shape: Any = None) -> torch.nn.Module:
    from .backbones import VoxelBackbone8x

    return VoxelBackbone8x(in_channels)


def _centerpoint_encoder(in_channels: int, spatial_shape: Any = None) -> torch.nn.Module:
    """mmdetection3d's CenterPoint ``SparseEncoder`` (128-channel residual stages) for frames of
    ``spatial_shape`` (x, y, z): upstream's sparse shape is (z + 1, y, x)."""
    from .backbones import SparseEncoder

    if spatial_shape is None:
        return SparseEncoder(in_channels)
    x, y, z = (int(v) for v in spatial_shape)
    return SparseEncoder(in_channels, [z + 1, y, x])


# name -> factory(in_channels, spatial_shape of the frames); add a backbone here to make it tunable from the CLI
BACKBONES: dict[str, Any] = {"voxel_backbone8x": _voxel_backbone8x, "centerpoint_encoder": _centerpoint_encoder}
#: the input channels each backbone has upstream (CenterPoint adds the sweep's time lag as a 5th)
BACKBONE_IN_CHANNELS: dict[str, int] = {"voxel_backbone8x": 4, "centerpoint_encoder": 5}


def pad_channels(frames: Iterable[Any], channels: int) -> list[Any]:
    """Frames with zero feature columns appended up to ``channels`` (a single sweep's time lag is 0)."""
    from .tensor import SparseTensor

    out = []
    for f in frames:
        extra = channels - f.feats.shape[1]
        if extra < 0:
            raise ValueError(f"frames have {f.feats.shape[1]} feature channels, more than {channels}")
        feats = f.feats if extra == 0 else torch.cat([f.feats, f.feats.new_zeros(len(f.feats), extra)], 1)
        out.append(SparseTensor(feats.contiguous(), f.coords, f.stride, f.spatial_shape, f.batch_size))
    return out


def kitti_tuning_frames(shared_data: str | os.PathLike, frames: Iterable[int], voxel_sizes: Iterable[float],
                        fractions: Iterable[float], seed: int = 0) -> list[Any]:
    """Real KITTI scans voxelised at each size, each also thinned to ``fractions`` of its points.

    Thinning spreads the voxel counts over neighbouring power-of-two buckets, so the frames a live
    node meets (which vary in size) land on tuned buckets rather than on the nearest-bucket rule.
    Features are the per-voxel mean of (x, y, z, reflectance): 4 channels.
    """
    from .kitti import load_velodyne, velodyne_path
    from .tensor import SparseTensor
    from .voxelize import voxelize_mean

    out = []
    g = torch.Generator().manual_seed(seed)
    for f in frames:
        p = velodyne_path(shared_data, f)
        if not p.exists():
            raise FileNotFoundError(f"KITTI scan {p} not found (pass --shared to the folder holding kitti_object_vis/)")
        pts = torch.from_numpy(load_velodyne(p))
        for vs in voxel_sizes:
            for fr in fractions:
                if not 0.0 < fr <= 1.0:
                    raise ValueError(f"fraction {fr} is not in (0, 1]")
                sub = pts if fr >= 1.0 else pts[torch.randperm(len(pts), generator=g)[: max(1, int(len(pts) * fr))]]
                st, _, _ = voxelize_mean(sub, vs)
                out.append(SparseTensor(st.feats.float().contiguous(), st.coords, 1, st.spatial_shape))
    return out
