"""The LiDAR network under ONNX Runtime: one exported graph of the whole network, kernel maps as inputs.

``runtime: onnxruntime`` in the params file selects it (it registers itself in
:data:`perception_nodes.models.runtime.RUNTIMES`). Per scan:

============================ ==========================================================================
voxelize                     the network's own voxelisation (PyTorch), as every runtime
kernel_maps                  this engine's kernel maps on the host (convolutions skipped) -> pair lists
backbone+bev_net+heads       one ONNX Runtime call: sparse backbone, BEV collapse, BEV net, heads
============================ ==========================================================================

The graph comes from :func:`perception_nodes.models.onnx_export.export_network`, exported once per
network and cached as ``lidar_<hash>.onnx`` (hash of format, config, structure and weights) in
``cache_dir`` (default ``~/.cache/perception_nodes/onnx``), or read from a given ``onnx_path``. A
file that cannot be read, is not ONNX, or was exported from another network raises
:class:`~perception_nodes.models.runtime.RuntimeUnavailable` naming the file and the reason.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from perception_nodes.models.lidar_detection import LidarDetectionNet, LidarDetectionOutput
from perception_nodes.models.onnx_export import (
    GRAPH_KEY,
    OUTPUT_NAMES,
    EXPORT_FORMAT,
    export_network,
    frame_feeds,
    network_hash,
    outputs_from_onnx,
)
from perception_nodes.models.runtime import RuntimeUnavailable, StageFn, no_stages, register_runtime
from engines.sparse.export import MapPlan

__all__ = ["DEFAULT_CACHE_DIR", "OnnxRuntime"]

#: where exported graphs are cached when no ``cache_dir`` is given
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "perception_nodes" / "onnx"
JOINED_STAGE = "backbone+bev_net+heads"


def _plans_from(sig: list[list[Any]]) -> list[MapPlan]:
    return [MapPlan(int(j), str(kind), int(ident), tuple(int(k) for k in fed), tuple((int(a), int(b)) for a, b in mir))
            for j, kind, ident, fed, mir in sig]


class OnnxRuntime:
    """The network as one ONNX Runtime session on CPU (see the module docstring)."""

    name = "onnxruntime"

    def __init__(self, net: LidarDetectionNet, *, threads: Optional[int] = None, onnx_path: str | Path | None = None,
                 cache_dir: str | Path | None = None, providers: Optional[list[str]] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pinned in requirements; absent only in a stripped install
            raise RuntimeUnavailable(f"onnxruntime is not installed ({e})") from None
        self.net = net.eval()
        self.threads = int(threads) if threads else torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))  # the host-side stages (voxels, kernel maps) run in torch
        self.providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise RuntimeUnavailable(f"ONNX Runtime providers not available here: {', '.join(missing)} "
                                     f"(available: {', '.join(ort.get_available_providers())})")
        self.net_hash = network_hash(self.net)
        self.exported = False
        if onnx_path is not None:
            self.path = Path(onnx_path)
        else:
            self.path = self._cached_export(Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR)
        self.plans = self._read_graph_description()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as e:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
            raise RuntimeUnavailable(f"ONNX Runtime cannot load {self.path}: {type(e).__name__}: {e}") from None
        self._inputs = [i.name for i in self.session.get_inputs()]
        outs = [o.name for o in self.session.get_outputs()]
        if outs != list(OUTPUT_NAMES):
            raise RuntimeUnavailable(f"{self.path} has outputs {outs}, expected {list(OUTPUT_NAMES)}")

    # ---- model file ----------------------------------------------------------------------------

    def _cached_export(self, cache_dir: Path) -> Path:
        path = cache_dir / f"lidar_{self.net_hash[:24]}.onnx"
        if path.is_file():
            return path
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            data = export_network(self.net, net_hash=self.net_hash)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=cache_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache file is not a secret
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except OSError as e:
            raise RuntimeUnavailable(f"cannot write the ONNX export to {cache_dir}: {e}") from None
        self.exported = True
        return path

    def _read_graph_description(self) -> list[MapPlan]:
        """Check the file is an ONNX export of this very network; return its kernel-map plans."""
        import onnx

        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:  # missing file, truncated or not protobuf at all
            raise RuntimeUnavailable(f"cannot read ONNX model {self.path}: {type(e).__name__}: {e}") from None
        meta = {p.key: p.value for p in model.metadata_props}
        if GRAPH_KEY not in meta:
            raise RuntimeUnavailable(f"{self.path} is not a LiDAR-network export (no {GRAPH_KEY} metadata)")
        try:
            desc = json.loads(meta[GRAPH_KEY])
            plans = _plans_from(desc["plans"])
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeUnavailable(f"{self.path}: unreadable {GRAPH_KEY} metadata ({e})") from None
        if desc.get("format") != EXPORT_FORMAT:
            raise RuntimeUnavailable(f"{self.path} has export format {desc.get('format')}, this code reads "
                                     f"{EXPORT_FORMAT}; re-export it")
        if desc.get("network_hash") != self.net_hash:
            raise RuntimeUnavailable(f"{self.path} was exported from another network (config or weights differ: "
                                     f"hash {str(desc.get('network_hash'))[:12]} != {self.net_hash[:12]})")
        return plans

    # ---- inference -----------------------------------------------------------------------------

    def feeds(self, points: Tensor, stage: StageFn = no_stages) -> tuple[dict[str, np.ndarray], int]:
        """Host-side part of :meth:`infer`: the graph inputs of one scan and its voxel count."""
        with torch.inference_mode():
            with stage("voxelize"):
                st, counts = self.net.voxelize(points)
            with stage("kernel_maps"):
                feeds = frame_feeds(self.net, st, self.plans)
        return {k: feeds[k] for k in self._inputs}, int(counts[0])

    def infer(self, points: Tensor, stage: StageFn = no_stages) -> LidarDetectionOutput:
        if isinstance(points, Tensor) and points.dim() != 2:
            raise ValueError(f"points must be [N, >= 4] (x, y, z, intensity), got {tuple(points.shape)}")
        feeds, n = self.feeds(points, stage)
        with stage(JOINED_STAGE):
            values = self.session.run(None, feeds)
        return outputs_from_onnx(values, n)

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "providers": list(self.session.get_providers()), "threads": self.threads,
                "device": "cpu" if self.providers == ["CPUExecutionProvider"] else ",".join(self.providers),
                "file": str(self.path), "exported_now": self.exported, "network_hash": self.net_hash[:12],
                "stages": ["voxelize", "kernel_maps", JOINED_STAGE]}


register_runtime(OnnxRuntime.name, OnnxRuntime)
