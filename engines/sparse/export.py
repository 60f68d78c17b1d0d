"""ONNX export of sparse networks that does only the needed work, with no TensorRT plugin.

Kernel maps are data-dependent, so they are built outside the graph (by this engine, on the host)
and fed in per frame as int64 pair lists, one ``(in, out)`` pair of ``[P_k, 1]`` inputs per kernel
offset and map. Each convolution becomes, for every offset ``k`` that has inputs,

    part_k = GatherND(features, in_k) @ W[k]                       (only the P_k rows that exist)
    y      = ScatterND(y, out_k, GatherND(y, out_k) + part_k)      (no reduction: out_k is unique)

starting from ``y = features @ W[centre]`` for submanifold layers (the identity offset needs no
gather) or zeros for strided/inverse layers. So the FLOPs are exactly the pairs' -- not the
``N_out x 27`` of a dense output-stationary gather -- and an offset that has no pairs in a frame is
an empty tensor. Submanifold maps are symmetric (offset ``K-1-k`` holds the pairs of ``k``
swapped), so only the first half of their offsets are graph inputs. ScatterND without reduction
is the one scatter TensorRT's ONNX parser builds (see :mod:`.trt_ops`); within one offset every
output row appears at most once, which is what makes the plain scatter exact.

Strided and inverse maps also take their output coordinates (``map_j_coords`` int64 [N_out, 4]):
the graph needs N_out to size its zeros, and with ``bev=True`` the last map's coordinates place the
output voxels into the BEV grid inside the graph (ScatterND without reduction into
``[B, X, Y, Z, C]``, then OpenPCDet's HeightCompression layout ``[B, C*Z, Y, X]``).

Every first axis is dynamic, so one export serves frames of any voxel count. ``max_voxels`` bounds
them: the export stores an upper bound per dynamic axis (model metadata) which
:func:`.trt_ops.check_model` uses to flag tensors that could reach 2^31 elements.

Usage::

    data = export_onnx(model, x, "backbone.onnx", bev=True, max_voxels=150_000)   # once
    out = run_onnxruntime(data, export_inputs(model, x_new, bev=True))            # per frame
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import conv as conv_mod
from .kernel_map import KernelMap
from .tensor import SparseTensor

BOUNDS_KEY = "engines.sparse.dim_bounds"


# --------------------------------------------------------------------------------------------------
# what the graph takes per map
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapPlan:
    """Which inputs one kernel map has: offsets fed (k), offsets replayed as swapped mirrors."""

    j: int
    kind: str  # "subm" or "new" (strided, transposed, inverse: output rows of their own)
    identity: int  # identity offset (-1 if none)
    fed: tuple[int, ...]  # offsets with their own (in, out) inputs
    mirrored: tuple[tuple[int, int], ...]  # (k, source offset) whose pairs are source's swapped

    def input_names(self) -> list[str]:
        names = [f"map_{self.j}_coords"] if self.kind == "new" else []
        for k in self.fed:
            names += [f"map_{self.j}_k{k}_in", f"map_{self.j}_k{k}_out"]
        return names


def _is_symmetric_subm(km: KernelMap) -> bool:
    g = km.geometry
    return g.kind == "subm" and km.identity_offset >= 0 and all(v % 2 == 1 for v in g.kernel_size)


def plan_for(j: int, km: KernelMap) -> MapPlan:
    K = km.kernel_volume
    if _is_symmetric_subm(km):
        c = km.identity_offset
        return MapPlan(j, "subm", c, tuple(range(c)), tuple((K - 1 - k, k) for k in range(c)))
    ident = km.identity_offset
    if ident >= 0:  # a submanifold map we cannot mirror (even kernel): feed every other offset
        return MapPlan(j, "subm", ident, tuple(k for k in range(K) if k != ident), ())
    return MapPlan(j, "new", -1, tuple(range(K)), ())


def _offset_pairs(km: KernelMap) -> list[tuple[np.ndarray, np.ndarray]]:
    i, o, ptr = km.pairs_np()
    return [(i[ptr[k]: ptr[k + 1], None].astype(np.int64), o[ptr[k]: ptr[k + 1], None].astype(np.int64))
            for k in range(km.kernel_volume)]


def map_feeds(plan: MapPlan, km: KernelMap) -> dict[str, np.ndarray]:
    """Host-side inputs of one map for one frame."""
    feeds: dict[str, np.ndarray] = {}
    if plan.kind == "new":
        feeds[f"map_{plan.j}_coords"] = km.out_coords.cpu().numpy().astype(np.int64)
    pairs = _offset_pairs(km)
    for k in plan.fed:
        feeds[f"map_{plan.j}_k{k}_in"], feeds[f"map_{plan.j}_k{k}_out"] = pairs[k]
    return feeds


class _GatherND(torch.autograd.Function):
    """Rows ``data[idx[:, 0]]`` for ``idx`` int64 [P, 1]; exports as one ONNX GatherND node."""

    @staticmethod
    def forward(ctx, data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return data[idx[:, 0]]

    @staticmethod
    def symbolic(g, data, idx):  # type: ignore[no-untyped-def]
        return g.op("GatherND", data, idx)


class _ScatterND(torch.autograd.Function):
    """``data`` with rows ``idx`` (int64 [P, r], unique) replaced by ``upd``; one ONNX ScatterND, no reduction."""

    @staticmethod
    def forward(ctx, data: torch.Tensor, idx: torch.Tensor, upd: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = data.clone()
        out[tuple(idx.t())] = upd
        return out

    @staticmethod
    def symbolic(g, data, idx, upd):  # type: ignore[no-untyped-def]
        return g.op("ScatterND", data, idx, upd)


def pairs_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], plan: MapPlan,
               t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The exported convolution over pair lists ``t`` (int64 [P, 1] each; see the module docstring)."""
    K, cin, cout = weight.shape
    if plan.kind == "subm":
        y = torch.matmul(x, weight[plan.identity])
    else:
        rows = t[f"map_{plan.j}_coords"]
        y = torch.zeros((rows.shape[0], cout), dtype=x.dtype)
    steps = [(k, t[f"map_{plan.j}_k{k}_in"], t[f"map_{plan.j}_k{k}_out"]) for k in plan.fed]
    steps += [(k, t[f"map_{plan.j}_k{s}_out"], t[f"map_{plan.j}_k{s}_in"]) for k, s in plan.mirrored]
    for k, src, dst in sorted(steps, key=lambda s: s[0]):
        part = torch.matmul(_GatherND.apply(x, src), weight[k])
        y = _ScatterND.apply(y, dst, _GatherND.apply(y, dst) + part)
    if bias is not None:
        y = y + bias
    return y


def bev_scatter(feats: torch.Tensor, coords: torch.Tensor, stride: tuple[int, int, int], batch: int,
                grid: tuple[int, int, int]) -> torch.Tensor:
    """[N, C] at (b, x, y, z) coordinates -> ``[B, C*Z, Y, X]`` by ScatterND without reduction."""
    X, Y, Z = grid
    C = feats.shape[1]
    s = torch.tensor([1, *stride], dtype=torch.int64)
    idx = torch.div(coords, s, rounding_mode="floor")
    dense = torch.zeros((batch, X, Y, Z, C), dtype=feats.dtype)
    dense = _ScatterND.apply(dense, idx, feats)
    return dense.permute(0, 4, 3, 2, 1).reshape(batch, C * Z, Y, X)


# --------------------------------------------------------------------------------------------------
# recording (eager) and replaying (traced)
# --------------------------------------------------------------------------------------------------


class _Recorder:
    """First pass: run normally, remember every distinct kernel map in call order."""

    def __init__(self) -> None:
        self.maps: list[KernelMap] = []
        self.plans: list[MapPlan] = []
        self._ids: dict[int, int] = {}

    def index_of(self, km: KernelMap) -> int:
        j = self._ids.get(id(km))
        if j is None:
            j = len(self.maps)
            self._ids[id(km)] = j
            self.maps.append(km)
            self.plans.append(plan_for(j, km))
        return j

    def conv(self, module: nn.Module, feats: torch.Tensor, km: KernelMap) -> torch.Tensor:
        self.index_of(km)
        return conv_mod.sparse_conv(feats, module.weight, km, module.bias, module.dataflow,  # type: ignore[arg-type]
                                    getattr(module, "tuner", None))

    def input_names(self) -> list[str]:
        return [n for p in self.plans for n in p.input_names()]


class _Replayer:
    """Second pass (traced): each convolution reads its pair lists from the graph inputs."""

    def __init__(self, rec: _Recorder, inputs: dict[str, torch.Tensor]) -> None:
        self.rec = rec
        self.inputs = inputs

    def conv(self, module: nn.Module, feats: torch.Tensor, km: KernelMap) -> torch.Tensor:
        j = self.rec._ids.get(id(km))
        if j is None:
            raise RuntimeError("a kernel map appeared during export that the recording pass did not see")
        return pairs_conv(feats, module.weight, module.bias, self.rec.plans[j], self.inputs)  # type: ignore[arg-type]


def _record(model: nn.Module, x: SparseTensor) -> tuple[_Recorder, Any]:
    rec = _Recorder()
    prev = conv_mod._export_mode()
    conv_mod._export_state.ctx = rec
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        conv_mod._export_state.ctx = prev
    return rec, out


def _last_new_map(rec: _Recorder, out: SparseTensor) -> int:
    """The map whose output coordinates are the network's output (for the in-graph BEV scatter)."""
    for j in range(len(rec.maps) - 1, -1, -1):
        if rec.plans[j].kind == "new" and rec.maps[j].out_coords is out.coords:
            return j
    raise ValueError("bev=True needs the network to end on a strided (or inverse) layer's output rows")


def export_inputs(model: nn.Module, x: SparseTensor, bev: bool = False) -> dict[str, np.ndarray]:
    """Graph inputs for one frame: ``features`` and each map's pair lists (and coordinates)."""
    rec, out = _record(model, x)
    if bev:
        _last_new_map(rec, out)  # same check as at export
    feeds = {"features": x.feats.detach().cpu().numpy()}
    for plan, km in zip(rec.plans, rec.maps):
        feeds.update(map_feeds(plan, km))
    return feeds


class _ExportWrapper(nn.Module):
    def __init__(self, model: nn.Module, example: SparseTensor, rec: _Recorder, names: list[str],
                 bev: Optional[tuple[int, tuple[int, int, int], int, tuple[int, int, int]]]) -> None:
        super().__init__()
        self.model = model
        self._example = example
        self._rec = rec
        self._names = names
        self._bev = bev

    def forward(self, feats: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        ex = self._example
        st = SparseTensor(feats, ex.coords, ex.stride, ex.spatial_shape, ex.batch_size, ex.cache)
        t = dict(zip(self._names, inputs))
        prev = conv_mod._export_mode()
        conv_mod._export_state.ctx = _Replayer(self._rec, t)
        try:
            out = self.model(st)
        finally:
            conv_mod._export_state.ctx = prev
        y = out.feats if isinstance(out, SparseTensor) else out
        if self._bev is not None:
            j, stride, batch, grid = self._bev
            y = bev_scatter(y, t[f"map_{j}_coords"], stride, batch, grid)
        return y


def _growth(km: KernelMap) -> int:
    """Most output rows one input row can create in this map."""
    g = km.geometry
    if g.kind == "subm":
        return 1
    if g.kind == "up" or km._extras.get("is_inverse"):
        return math.prod(g.kernel_size)
    if g.mode == "floor":
        return 1
    return math.prod(-(-k // s) for k, s in zip(g.kernel_size, g.stride))


def dim_bounds(rec: _Recorder, max_voxels: int, batch: int, out_coords: Optional[torch.Tensor] = None) -> dict[str, int]:
    """Upper bound of every dynamic axis for inputs of at most ``max_voxels`` voxels."""
    rows: dict[int, int] = {}  # id(coords tensor) -> bound of its row count

    def bound_of(coords: torch.Tensor, fallback: int) -> int:
        return rows.get(id(coords), fallback)

    bounds = {"n_in": max_voxels}
    first = True
    for plan, km in zip(rec.plans, rec.maps):
        n_in = max_voxels if first else bound_of(km.in_coords, max(rows.values(), default=max_voxels))
        first = False
        rows.setdefault(id(km.in_coords), n_in)
        if plan.kind == "subm":
            n_out = n_in
        else:
            n_out = n_in * _growth(km)
            if km._extras.get("is_inverse"):
                fwd = km._extras.get("inverse")
                if fwd is not None and id(fwd.in_coords) in rows:
                    n_out = min(n_out, rows[id(fwd.in_coords)])
            if km.out_spatial_shape is not None:
                n_out = min(n_out, batch * math.prod(km.out_spatial_shape))
            bounds[f"n_out_{plan.j}"] = n_out
        rows.setdefault(id(km.out_coords), n_out)
        for k in plan.fed:
            bounds[f"p_{plan.j}_{k}"] = min(n_in, n_out)
    if out_coords is not None:
        bounds["n_out"] = rows.get(id(out_coords), max_voxels)
    return bounds


def export_onnx(model: nn.Module, x: SparseTensor, path: str | Path | None = None, opset: int = 17,
                bev: bool = False, max_voxels: Optional[int] = None) -> bytes:
    """Export ``model`` (eval mode) for frames like ``x``; returns the ONNX bytes (and writes ``path``).

    ``max_voxels`` (default: 4x the example's voxel count) bounds the dynamic axes for the
    2^31-element check; the bounds are stored in the model's metadata under ``BOUNDS_KEY``.
    """
    model = model.eval()
    rec, out = _record(model, x)
    names = rec.input_names()
    bev_spec = None
    if bev:
        j = _last_new_map(rec, out)
        batch = x.batch_size or x.infer_batch_size()
        grid = out.spatial_shape
        if grid is None:
            raise ValueError("bev=True needs a spatial_shape on the input so the BEV grid is static")
        bev_spec = (j, tuple(out.stride), int(batch), tuple(int(v) for v in grid))
    wrapper = _ExportWrapper(model, x, rec, names, bev_spec).eval()  # a fresh module defaults to train mode
    feeds = {"features": x.feats.detach()}
    for plan, km in zip(rec.plans, rec.maps):
        feeds.update({k: torch.from_numpy(v) for k, v in map_feeds(plan, km).items()})
    dyn: dict[str, dict[int, str]] = {"features": {0: "n_in"}}
    if not bev:
        dyn["output"] = {0: "n_out"}
    for plan in rec.plans:
        if plan.kind == "new":
            dyn[f"map_{plan.j}_coords"] = {0: f"n_out_{plan.j}"}
        for k in plan.fed:
            dyn[f"map_{plan.j}_k{k}_in"] = {0: f"p_{plan.j}_{k}"}
            dyn[f"map_{plan.j}_k{k}_out"] = {0: f"p_{plan.j}_{k}"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (feeds["features"], *[feeds[n] for n in names]),
                buf,
                input_names=["features", *names],
                output_names=["output"],
                dynamic_axes=dyn,
                opset_version=opset,
                dynamo=False,
            )
    import onnx

    m = onnx.load_from_string(buf.getvalue())
    mv = int(max_voxels) if max_voxels is not None else 4 * len(x)
    bounds = dim_bounds(rec, mv, int(x.batch_size or x.infer_batch_size() or 1),
                        None if bev or not isinstance(out, SparseTensor) else out.coords)
    entry = m.metadata_props.add()
    entry.key, entry.value = BOUNDS_KEY, json.dumps({"max_voxels": mv, "bounds": bounds}, sort_keys=True)
    data = m.SerializeToString()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def ort_session(model: bytes | str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session for the exported model (build once, run per frame)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_onnxruntime(model: Any, feeds: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Run the exported model (bytes, path or an :func:`ort_session`) on CPU with ONNX Runtime.

    Inputs the graph does not use are dropped.
    """
    sess = model if hasattr(model, "get_inputs") else ort_session(model, threads)
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]


# --------------------------------------------------------------------------------------------------
# per-frame inputs without running the convolutions (what a runtime around the graph needs)
# --------------------------------------------------------------------------------------------------


class _MapsOnly(_Recorder):
    """A recording pass that builds every kernel map but multiplies nothing: each convolution returns
    zeros of its output shape, so only the (cheap) pointwise layers run on the host."""

    def conv(self, module: nn.Module, feats: torch.Tensor, km: KernelMap) -> torch.Tensor:
        self.index_of(km)
        return feats.new_zeros((km.n_out, int(module.weight.shape[2])))  # type: ignore[union-attr]


def record_maps(model: nn.Module, x: SparseTensor) -> tuple[list[MapPlan], list[KernelMap], Any]:
    """Kernel maps (in call order, with their input plans) of ``model`` on ``x``, convolutions skipped.

    The plans equal those the export recorded as long as the network is the same; a runtime compares
    them to the exported graph's inputs. The third item is the (zero-featured) output, for its coordinates.
    """
    rec = _MapsOnly()
    prev = conv_mod._export_mode()
    conv_mod._export_state.ctx = rec
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        conv_mod._export_state.ctx = prev
    return rec.plans, rec.maps, out


def empty_feeds(plans: list[MapPlan], in_channels: int) -> dict[str, np.ndarray]:
    """Graph inputs of a frame without voxels: zero rows everywhere (no kernel map can be built)."""
    feeds: dict[str, np.ndarray] = {"features": np.zeros((0, in_channels), np.float32)}
    for plan in plans:
        if plan.kind == "new":
            feeds[f"map_{plan.j}_coords"] = np.zeros((0, 4), np.int64)
        for k in plan.fed:
            feeds[f"map_{plan.j}_k{k}_in"] = np.zeros((0, 1), np.int64)
            feeds[f"map_{plan.j}_k{k}_out"] = np.zeros((0, 1), np.int64)
    return feeds


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold, in place, every eval-mode ``BatchNorm1d`` registered right after a sparse conv into it.

    The conv gets the scaled weight and a bias, the BatchNorm becomes ``nn.Identity``: the exported
    graph then has one bias add per layer instead of a BatchNormalization node over ``[N, C]``
    (what the eager path does at run time in :class:`.norm.SparseSequential`). Use on a copy; the
    pairing is by registration order (conv, then its BN), which holds for ``SparseSequential`` runs and
    the residual blocks of :mod:`.backbones` -- a parity check against the unfolded model confirms it.
    """
    from .norm import _folded

    for parent in list(model.modules()):
        kids = list(parent.named_children())
        for (name_c, c), (name_b, bn) in zip(kids, kids[1:]):
            if not isinstance(c, conv_mod._SparseConvNd) or type(bn) is not nn.BatchNorm1d:
                continue
            if bn.training or not bn.track_running_stats:
                continue
            w, b = _folded(c, bn)
            with torch.no_grad():
                c.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
                c.bias = nn.Parameter(b.detach().clone(), requires_grad=False)
            setattr(parent, name_b, nn.Identity())
    return model
