"""ONNX export of sparse networks as plain Gather + MatMul (TensorRT builds it without plugins).

Kernel maps are data-dependent, so they are built outside the graph (by this engine, on the host)
and fed in as int64 index inputs, one per distinct map. Each convolution becomes

    Concat(features, zero_row) -> Gather(index [N_out, K]) -> Reshape [N_out, K*C_in] -> MatMul W (+ Add bias)

with a missing neighbour pointing at the zero row (index = N_in): no ScatterND/ScatterElements with
reduction, which core TensorRT lacks, and no negative indices. BatchNorm/ReLU export as usual.
Bound N with optimisation profiles on the TensorRT side; TensorRT gathers out of bounds return
zeros silently, so feed exactly the indices from :func:`export_inputs`.

Usage::

    inputs = export_inputs(model, x)                  # per frame, on the host
    export_onnx(model, x, "backbone.onnx")            # once
    ort_out = run_onnxruntime("backbone.onnx", inputs)
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import conv as conv_mod
from .kernel_map import KernelMap
from .tensor import SparseTensor


def gather_matmul_conv(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The exported convolution: ``cat(x, 0)[index] @ W``; ``index`` int64 [N_out, K], missing = N_in."""
    K, cin, cout = weight.shape
    xp = torch.cat([x, x.new_zeros((1, cin))], 0)
    g = xp[index].reshape(-1, K * cin)
    y = torch.matmul(g, weight.reshape(K * cin, cout))
    if bias is not None:
        y = y + bias
    return y


def padded_index(km: KernelMap) -> torch.Tensor:
    """``out_in_map`` as int64 with -1 replaced by N_in (the appended zero row)."""
    m = km.out_in_map().long()
    return torch.where(m < 0, torch.full_like(m, km.n_in), m)


class _Recorder:
    """First pass: run normally, remember every distinct kernel map in call order."""

    def __init__(self) -> None:
        self.maps: list[KernelMap] = []
        self._ids: dict[int, int] = {}

    def index_of(self, km: KernelMap) -> int:
        j = self._ids.get(id(km))
        if j is None:
            j = len(self.maps)
            self._ids[id(km)] = j
            self.maps.append(km)
        return j

    def conv(self, module: nn.Module, feats: torch.Tensor, km: KernelMap) -> torch.Tensor:
        self.index_of(km)
        return conv_mod.sparse_conv(feats, module.weight, km, module.bias, module.dataflow,  # type: ignore[arg-type]
                                    getattr(module, "tuner", None))


class _Replayer:
    """Second pass (traced): each convolution reads its map from the graph inputs."""

    def __init__(self, rec: _Recorder, inputs: tuple[torch.Tensor, ...]) -> None:
        self.rec = rec
        self.inputs = inputs

    def conv(self, module: nn.Module, feats: torch.Tensor, km: KernelMap) -> torch.Tensor:
        j = self.rec._ids.get(id(km))
        if j is None:
            raise RuntimeError("a kernel map appeared during export that the recording pass did not see")
        return gather_matmul_conv(feats, self.inputs[j], module.weight, module.bias)  # type: ignore[arg-type]


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


def export_inputs(model: nn.Module, x: SparseTensor) -> dict[str, np.ndarray]:
    """Graph inputs for one frame: ``features`` and ``map_j`` (int64, missing = N_in of that map)."""
    rec, _ = _record(model, x)
    feeds = {"features": x.feats.detach().cpu().numpy()}
    for j, km in enumerate(rec.maps):
        feeds[f"map_{j}"] = padded_index(km).cpu().numpy()
    return feeds


class _ExportWrapper(nn.Module):
    def __init__(self, model: nn.Module, example: SparseTensor, rec: _Recorder) -> None:
        super().__init__()
        self.model = model
        self._example = example
        self._rec = rec

    def forward(self, feats: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
        ex = self._example
        st = SparseTensor(feats, ex.coords, ex.stride, ex.spatial_shape, ex.batch_size, ex.cache)
        prev = conv_mod._export_mode()
        conv_mod._export_state.ctx = _Replayer(self._rec, maps)
        try:
            out = self.model(st)
        finally:
            conv_mod._export_state.ctx = prev
        return out.feats if isinstance(out, SparseTensor) else out


def export_onnx(model: nn.Module, x: SparseTensor, path: str | Path | None = None, opset: int = 17) -> bytes:
    """Export ``model`` (eval mode) for inputs shaped like ``x``; returns the ONNX bytes (and writes ``path``)."""
    model = model.eval()
    rec, _ = _record(model, x)
    wrapper = _ExportWrapper(model, x, rec).eval()  # a fresh module defaults to train mode
    maps = tuple(padded_index(km) for km in rec.maps)
    names = ["features"] + [f"map_{j}" for j in range(len(maps))]
    dyn = {"features": {0: "n_in"}, "output": {0: "n_out"}}
    for j in range(len(maps)):
        dyn[f"map_{j}"] = {0: f"n_{j}"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (x.feats.detach(), *maps),
                buf,
                input_names=names,
                output_names=["output"],
                dynamic_axes=dyn,
                opset_version=opset,
                dynamo=False,
            )
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def run_onnxruntime(model: bytes | str | Path, feeds: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Run the exported model on CPU with ONNX Runtime (inputs the graph does not use are dropped)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]
