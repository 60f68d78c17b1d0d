"""One ONNX graph of the whole LiDAR network: sparse backbone, BEV collapse, BEV net and heads.

Voxelisation and kernel-map building stay on the host (PyTorch/numpy); the graph takes

* ``features`` float32 ``[N, 4]`` -- the voxel mean features of :meth:`LidarDetectionNet.voxelize`;
* ``num_voxels`` int64 ``[1]`` -- voxels in the scan (0 makes the heads' outputs vacuous, as in PyTorch);
* the pair lists (and output coordinates) of every kernel map, named and laid out as in
  :mod:`engines.sparse.export` (``map_j_k{k}_in/out`` int64 ``[P, 1]``, ``map_j_coords`` int64 ``[M, 4]``),

and returns :data:`OUTPUT_NAMES`: occupancy evidence, class alpha and the four NIG parameter maps of
the boxes and of the curvature. Every voxel/pair axis is dynamic, so one export serves every scan.
Nothing in the graph depends on the configuration beyond what the network object holds, so any
:class:`~perception_nodes.models.LidarDetectionConfig` exports (the tests use a small one and the default).

Inference BatchNorms of the backbone are folded into its convolutions before export (the eager path
folds them at run time too), so each sparse layer is GatherND / MatMul / ScatterND plus one bias add.

The model's metadata (:data:`GRAPH_KEY`) records the export format, the hash of the network it came
from and the kernel-map plans, so a runtime can refuse a file that does not belong to its network
instead of computing garbage.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from engines.sparse import SparseTensor
from engines.sparse.export import (
    BOUNDS_KEY,
    MapPlan,
    _ExportWrapper,
    _ScatterND,
    _last_new_map,
    _record,
    dim_bounds,
    empty_feeds,
    fold_batchnorms,
    map_feeds,
    record_maps,
)
from perception_nodes.models.lidar_detection import LidarDetectionNet, LidarDetectionOutput
from perception_nodes.evidential.nig import NIG

__all__ = [
    "EXPORT_FORMAT",
    "GRAPH_KEY",
    "OUTPUT_NAMES",
    "example_points",
    "export_network",
    "frame_feeds",
    "network_hash",
    "outputs_from_onnx",
    "plans_signature",
]

#: bump when the graph's inputs/outputs or their meaning change (part of the cache key)
EXPORT_FORMAT = 2
#: model-metadata key of the graph description (format, network hash, plans, outputs)
GRAPH_KEY = "perception_nodes.lidar_graph"
OUTPUT_NAMES = (
    "occupancy_evidence",
    "class_alpha",
    "box_gamma", "box_nu", "box_alpha", "box_beta",
    "curvature_gamma", "curvature_nu", "curvature_alpha", "curvature_beta",
)


def network_hash(net: LidarDetectionNet) -> str:
    """SHA-256 of what decides the graph: export format, config, module structure and every tensor of the
    state dict (parameters and BatchNorm statistics). Equal hashes -> the cached export is this network."""
    h = hashlib.sha256()
    h.update(f"format={EXPORT_FORMAT};torch={torch.__version__}\n".encode())
    cfg = dataclasses.asdict(net.config)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(repr(net).encode())
    for name, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def example_points(net: LidarDetectionNet, n: int = 4_000, seed: int = 0) -> Tensor:
    """A deterministic synthetic scan for the export trace: points spread through a central block of the
    crop (every kernel offset of every layer gets pairs). The graph does not depend on it beyond shapes."""
    cfg = net.config
    lo = torch.tensor(cfg.point_range[:3])
    hi = torch.tensor(cfg.point_range[3:])
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    half = torch.minimum(half, torch.tensor([6.0, 6.0, float(half[2])]))
    g = torch.Generator().manual_seed(seed)
    xyz = mid + (torch.rand(n, 3, generator=g) * 2 - 1) * half * 0.999
    return torch.cat([xyz, torch.rand(n, 1, generator=g)], 1)


def plans_signature(plans: Sequence[MapPlan]) -> list[list[Any]]:
    """The kernel-map plans as JSON-able data (compared between the export and each frame)."""
    return [[p.j, p.kind, p.identity, list(p.fed), [list(m) for m in p.mirrored]] for p in plans]


def _bev_channels_first(feats: Tensor, coords: Tensor, stride: Sequence[int], grid: tuple[int, int, int]) -> Tensor:
    """Output voxels ``[M, C]`` at (0, x, y, z) (finest-grid units) -> ``[1, C*Z, Y, X]`` (HeightCompression).

    Same result as :func:`engines.sparse.export.bev_scatter` for a batch of one, but scattered into
    ``[Z*Y*X, C]`` rows so the channel-first layout is a 2-D transpose (ONNX Runtime runs the 5-D
    permutation of ``bev_scatter`` ~10x slower than a 2-D one).
    """
    X, Y, Z = grid
    C = feats.shape[1]
    sx, sy, sz = (int(v) for v in stride)
    row = (torch.div(coords[:, 3], sz, rounding_mode="floor") * Y + torch.div(coords[:, 2], sy, rounding_mode="floor")
           ) * X + torch.div(coords[:, 1], sx, rounding_mode="floor")
    dense = torch.zeros((Z * Y * X, C), dtype=feats.dtype)
    dense = _ScatterND.apply(dense, row.unsqueeze(1), feats)
    return dense.t().reshape(1, C * Z, Y, X)


class _WholeNetwork(nn.Module):
    """Backbone (replaying the recorded maps from the graph inputs) -> BEV -> BEV net -> heads."""

    def __init__(self, net: LidarDetectionNet, backbone: _ExportWrapper, coords_input: int,
                 stride: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.backbone = backbone
        self.coords_input = coords_input
        self.stride = tuple(stride)

    def forward(self, features: Tensor, num_voxels: Tensor, *maps: Tensor) -> tuple[Tensor, ...]:
        y = self.backbone(features, *maps)  # sparse output features [M, C]
        bev = _bev_channels_first(y, maps[self.coords_input], self.stride, self.net._bev_shape)
        out = self.net.heads(self.net.bev_net(bev), num_voxels)
        return (out.occupancy_evidence, out.class_alpha, *out.box, *out.curvature)


@contextlib.contextmanager
def _fast_softplus(opset: int) -> Iterator[None]:
    """Export ``softplus(x)`` as ``Relu(x) + Log(1 + Exp(-|x|))`` instead of ONNX ``Softplus``.

    Equal in exact arithmetic and overflow-free; ONNX Runtime's ``Softplus`` kernel is scalar (~30 ns
    per element, a tenth of the whole graph's time on the head maps), its Exp/Log are vectorised. Where
    ``exp(-|x|)`` drops below float32 eps the term rounds to 0: an absolute error below 1.2e-7.
    """

    def symbolic(g, x, beta, threshold):  # type: ignore[no-untyped-def]
        from torch.onnx import symbolic_helper

        if float(symbolic_helper._maybe_get_const(beta, "f")) != 1.0:
            raise NotImplementedError("only softplus with beta = 1 is exported (as the heads use it)")
        one = g.op("Constant", value_t=torch.tensor(1.0))
        tail = g.op("Log", g.op("Add", one, g.op("Exp", g.op("Neg", g.op("Abs", x)))))
        return g.op("Add", g.op("Relu", x), tail)

    torch.onnx.register_custom_op_symbolic("aten::softplus", symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::softplus", opset)


def frame_feeds(net: LidarDetectionNet, st: SparseTensor, plans: Optional[Sequence[MapPlan]] = None
                ) -> dict[str, np.ndarray]:
    """Graph inputs of one voxelised scan (batch of one): features, voxel count and every map's pair lists.

    With ``plans`` (the export's), a frame whose maps differ from them raises ``ValueError``; an empty
    scan needs ``plans`` (no map can be built without voxels).
    """
    n = len(st)
    if n == 0:
        if plans is None:
            raise ValueError("an empty scan needs the exported plans to shape its inputs")
        feeds = empty_feeds(list(plans), net.in_channels)
    else:
        got, maps, _ = record_maps(net.backbone, st)
        if plans is not None and plans_signature(got) != plans_signature(plans):
            raise ValueError("this scan's kernel maps do not match the exported graph's (different network?)")
        feeds = {"features": st.feats.detach().to(torch.float32).cpu().numpy()}
        for plan, km in zip(got, maps):
            feeds.update(map_feeds(plan, km))
    feeds["num_voxels"] = np.array([n], np.int64)
    return feeds


@contextlib.contextmanager
def _no_jit_lint() -> Iterator[None]:
    """Skip TorchScript's graph lint during export.

    The TorchScript-based exporter lints the traced graph about ten times; the lint grows faster than
    linearly with the node count, and this graph has thousands of nodes (a few per kernel offset and
    layer), so the lint was ~60% of a 50 s export. It only re-checks the exporter's own invariants;
    the exported model is checked with ``onnx.checker`` instead.
    """
    saved = torch._C._jit_pass_lint
    torch._C._jit_pass_lint = lambda *_a, **_k: None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch._C._jit_pass_lint = saved  # type: ignore[attr-defined]


def export_network(net: LidarDetectionNet, path: str | Path | None = None, example: Optional[Tensor] = None,
                   opset: int = 17, max_voxels: int = 200_000, net_hash: Optional[str] = None) -> bytes:
    """Export ``net`` (eval mode, batch of one) as one ONNX graph; returns the bytes and writes ``path``.

    ``example`` is the scan traced (default :func:`example_points`); ``max_voxels`` bounds the dynamic
    axes for the TensorRT 2^31-element check (:func:`engines.sparse.trt_ops.check_model`).
    """
    net = net.eval()
    net_hash = net_hash or network_hash(net)
    pts = example if example is not None else example_points(net)
    with torch.no_grad():
        st, counts = net.voxelize(pts)
    if len(st) == 0:
        raise ValueError("the export example has no voxel inside the crop")
    backbone = fold_batchnorms(copy.deepcopy(net.backbone)).eval()
    rec, out = _record(backbone, st)
    names = rec.input_names()
    if not isinstance(out, SparseTensor):
        raise TypeError("the backbone must return a SparseTensor (the BEV collapse is part of the graph)")
    j = _last_new_map(rec, out)
    X, Y, Z = net._bev_shape
    if out.spatial_shape is not None and tuple(out.spatial_shape) != (X, Y, Z):
        raise ValueError(f"backbone output grid {out.spatial_shape} != the network's BEV grid {(X, Y, Z)}")
    wrapper = _ExportWrapper(backbone, st, rec, names, None).eval()
    whole = _WholeNetwork(net, wrapper, names.index(f"map_{j}_coords"), out.stride).eval()

    feeds: dict[str, Tensor] = {"features": st.feats.detach().to(torch.float32)}
    for plan, km in zip(rec.plans, rec.maps):
        feeds.update({k: torch.from_numpy(v) for k, v in map_feeds(plan, km).items()})
    num = counts.to(torch.int64).reshape(1)
    dyn: dict[str, dict[int, str]] = {"features": {0: "n_in"}}
    for plan in rec.plans:
        if plan.kind == "new":
            dyn[f"map_{plan.j}_coords"] = {0: f"n_out_{plan.j}"}
        for k in plan.fed:
            dyn[f"map_{plan.j}_k{k}_in"] = {0: f"p_{plan.j}_{k}"}
            dyn[f"map_{plan.j}_k{k}_out"] = {0: f"p_{plan.j}_{k}"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), _no_jit_lint(), _fast_softplus(opset):
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(whole, (feeds["features"], num, *[feeds[n] for n in names]), buf,
                              input_names=["features", "num_voxels", *names], output_names=list(OUTPUT_NAMES),
                              dynamic_axes=dyn, opset_version=opset, dynamo=False)
    import onnx

    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    bounds = dim_bounds(rec, int(max_voxels), 1)
    for key, value in (
        (BOUNDS_KEY, {"max_voxels": int(max_voxels), "bounds": bounds}),
        (GRAPH_KEY, {"format": EXPORT_FORMAT, "network_hash": net_hash, "plans": plans_signature(rec.plans),
                     "outputs": list(OUTPUT_NAMES), "classes": list(net.config.classes)}),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, sort_keys=True)
    data = model.SerializeToString()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def outputs_from_onnx(values: Sequence[np.ndarray], num_voxels: int) -> LidarDetectionOutput:
    """The graph's outputs (in :data:`OUTPUT_NAMES` order) as the network's output object."""
    t = [torch.from_numpy(np.asarray(v)) for v in values]
    return LidarDetectionOutput(t[0], t[1], NIG(*t[2:6]), NIG(*t[6:10]),
                                torch.tensor([num_voxels], dtype=torch.long))
