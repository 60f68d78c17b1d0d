"""Gather-GEMM-scatter with oneDNN's fp32 GEMM: the dataflow for CPUs whose MKL path leaves SIMD unused.

Why: the fused loop (:mod:`.dataflow_fused`) calls MKL's ``sgemm_``, and MKL picks its kernels by CPU
vendor: on AMD processors with AVX-512 (Zen 4, Zen 5) it runs its AVX2 path. oneDNN, which torch also
links, picks by instruction set. Measured on the 2-vCPU "AMD EPYC" (family 26, Zen 5) host of 3 Dec 2026,
one thread, fp32, ``[n, C] @ [C, C]``: MKL 94-110 GFLOP/s, oneDNN 150-257 GFLOP/s (C = 32-128), results
bit-identical at these inner sizes (BENCHMARKS.md, "Sparse convolution vs spconv", "oneDNN GEMMs"). On such a CPU a plain
gather-GEMM-scatter with the faster GEMM beats the L2-tiled fused loop with the slower one; where MKL
already uses the full vector width (Intel AVX-512, AVX2-only CPUs) the fused loop can still win. Which
wins is a property of the layer and the machine, so both are candidates of the offline tuner
(``autotune.candidates_for``) and the tune file stores the choice.

oneDNN is reached through ``torch.ops.mkldnn._linear_pointwise`` (the op torch's compiler uses for
fp32 linear layers on CPU), which takes strided fp32 input and a ``[C_out, C_in]`` weight and returns a
new tensor. It costs about 10 us per call, so small layers (5-16 channels) gain little or lose.

Two loops, same multiply-adds (exact FLOPs: only existing neighbours are multiplied):

* ``onednn_gather_scatter``: per kernel offset, in chunks of about 1 MiB of gathered rows: gather,
  one GEMM, add the products into the output rows;
* ``onednn_blocked``: the identity offset's product over all rows first (one GEMM), then per block of
  output rows (its ``Y`` about half of a 1 MiB L2) the rows of every other offset are gathered at once,
  one GEMM per offset on its slice, and added into the block.

Exact and deterministic: every output row is the identity offset's product (submanifold maps) or zero,
plus the other offsets' products in kernel order; within one offset an output row occurs at most once,
so the (parallel when ``torch.get_num_threads() > 1``) scatter has no conflicts. oneDNN splits these
GEMMs over rows and columns, not over the inner dimension (at most 128 here), so a product does not
depend on the thread count (tested bit for bit at 1 and 2 threads). Without the op (torch built without
oneDNN), for float64 (oneDNN has no fp64 GEMM), autograd, other devices or an empty map, it runs
:func:`.dataflow_gather_scatter.gather_scatter` instead.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch

from .kernel_map import KernelMap, cached_block_bounds, row_kernels

CHUNK_BYTES = 1024 * 1024  # gathered operand per GEMM: 1 MiB (swept 512 rows .. whole offsets on the
# KITTI encoder's 32-128-channel layers: 10-15 % faster than whole offsets, slower below ~1k rows)
BLOCK_Y_BYTES = 512 * 1024  # one block of Y in onednn_blocked: half of a 1 MiB L2 (Zen 5)
MIN_BLOCK_ROWS = 256


@lru_cache(maxsize=1)
def _linear() -> Optional[Any]:
    """``torch.ops.mkldnn._linear_pointwise`` where torch has oneDNN and the op works as used here, else None.

    The op is torch-internal (its compiler's), so its signature could change in a later torch: one small
    call checked against ``torch.mm`` decides, and any failure means "not available" (gather-scatter runs).
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        a = torch.arange(6, dtype=torch.float32).reshape(3, 2)
        w = torch.arange(8, dtype=torch.float32).reshape(2, 4) - 3.0
        y = op(a[1:], w.t().contiguous(), None, "none", [], "")
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.float32 and torch.equal(y, a[1:] @ w)):
            return None
        return op
    except Exception:  # noqa: BLE001 -- any failure of an internal op means: do not use it
        return None


def available() -> bool:
    """Whether the oneDNN GEMM can run here (else these dataflows run as gather-scatter)."""
    return _linear() is not None


def _runs_here(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> bool:
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return (available() and not grad and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.shape[0] > 0 and kmap.n_out > 0 and x.shape[1] > 0
            and weight.shape[2] > 0)


def _start(x: torch.Tensor, wt: torch.Tensor, kmap: KernelMap, lin: Any) -> torch.Tensor:
    """The output initialised by the identity offset (submanifold maps) or zeros."""
    c = kmap.identity_offset
    if c >= 0:
        return lin(x, wt[c], None, "none", [], "")
    return x.new_zeros((kmap.n_out, wt.shape[1]))


def onednn_gather_scatter(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Sparse convolution of ``x`` [N_in, C_in] by ``weight`` [K, C_in, C_out] along ``kmap``, offset by offset."""
    from .dataflow_gather_scatter import gather_scatter

    if not _runs_here(x, weight, kmap):
        return gather_scatter(x, weight, kmap)
    lin = _linear()
    gather, scatter = row_kernels()
    x = x.contiguous()
    wt = weight.detach().transpose(1, 2).contiguous()  # [K, C_out, C_in], the layout the op takes
    in_idx, out_idx, ptr = kmap.pairs_np()
    y = _start(x, wt, kmap, lin)
    xn, yn = x.numpy(), y.numpy()
    sizes = np.diff(ptr)  # the identity offset has no pairs here: it is in the output already
    rows = max(MIN_BLOCK_ROWS, CHUNK_BYTES // (x.element_size() * max(x.shape[1], int(weight.shape[2]))))
    rows = min(rows, max(int(sizes.max(initial=0)), 1))
    buf = torch.empty((rows, x.shape[1]), dtype=x.dtype)
    bn = buf.numpy()
    for k in np.flatnonzero(sizes).tolist():
        for s in range(int(ptr[k]), int(ptr[k + 1]), rows):
            e = min(int(ptr[k + 1]), s + rows)
            gather(xn, in_idx[s:e], bn[: e - s])
            scatter(yn, out_idx[s:e], lin(buf[: e - s], wt[k], None, "none", [], "").numpy())
    return y


def onednn_blocked(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Output-blocked variant of :func:`onednn_gather_scatter` (same sums in the same order).

    Needs each offset's pairs sorted by output row (every map built here except inverse maps and
    submanifold maps of unsorted input); otherwise it runs the offset-by-offset loop.
    """
    from . import _cpu_kernels as ck

    if not _runs_here(x, weight, kmap):
        return onednn_gather_scatter(x, weight, kmap)
    cout = int(weight.shape[2])
    rows = max(MIN_BLOCK_ROWS, BLOCK_Y_BYTES // (x.element_size() * cout))
    in_idx, out_idx, ptr = kmap.pairs_np()
    bnd = cached_block_bounds(kmap, out_idx, ptr, rows)
    if bnd is None:
        return onednn_gather_scatter(x, weight, kmap)
    lin = _linear()
    x = x.contiguous()
    wt = weight.detach().transpose(1, 2).contiguous()
    y = _start(x, wt, kmap, lin)
    xn, yn = x.numpy(), y.numpy()
    seg = np.diff(bnd, axis=1)  # [K, blocks] pairs per (offset, block); none for the identity offset
    per_block = seg.sum(0)
    buf = torch.empty((max(int(per_block.max(initial=0)), 1), x.shape[1]), dtype=x.dtype)
    bn = buf.numpy()
    for blk in np.flatnonzero(per_block).tolist():
        ck.gather_block(xn, in_idx, bnd, blk, bn)
        r = 0
        for k in np.flatnonzero(seg[:, blk]).tolist():
            m, s = int(seg[k, blk]), int(bnd[k, blk])
            ck.scatter_add_rows(yn, out_idx[s : s + m], lin(buf[r : r + m], wt[k], None, "none", [], "").numpy())
            r += m
    return y

