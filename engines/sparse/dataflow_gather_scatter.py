"""Gather-GEMM-scatter (weight-stationary) dataflow.

For each kernel offset k: gather the input rows of its pairs, multiply by ``W[k]`` and add the
products into the output rows. Exact FLOPs (only existing neighbours are multiplied), which is what
wins on a CPU where the GEMM is the bottleneck and LiDAR voxels have 5-8 of 27 neighbours.

CPU: rows are processed in chunks that fit in L2 -- numba gathers a chunk, MKL/oneDNN multiplies it,
numba adds it into the output. Within one offset every output row appears at most once, so the
scatter has no write conflicts: it is parallel without atomics and its summation order (offset by
offset, in weight order) does not depend on the thread count. The identity offset of submanifold
maps is a plain ``X @ W[centre]`` that initialises the output.

GPU / other dtypes: the same loop with ``index_select`` / ``mm`` / ``index_add_``; per offset the
output rows are unique, so even CUDA's atomic ``index_add_`` is deterministic here.
"""

from __future__ import annotations

import numpy as np
import torch

from .kernel_map import KernelMap, cached_block_bounds, row_kernels

CHUNK_BYTES = 1024 * 1024  # gathered operand per chunk: about one L2 of this CPU


def gather_scatter(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Sparse convolution of ``x`` [N_in, Cin] with ``weight`` [K, Cin, Cout] along ``kmap``."""
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not grad:
        return _gather_scatter_cpu(x, weight.detach(), kmap)
    return _gather_scatter_torch(x, weight, kmap)


def _init_output(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    if kmap.identity_offset >= 0:
        return torch.mm(x, weight[kmap.identity_offset])
    return x.new_zeros((kmap.n_out, weight.shape[2]))


BLOCK_BYTES = 512 * 1024  # output rows per block: the block of Y stays in L2 while all offsets add into it


def gather_scatter_blocked(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Output-blocked CPU variant (see :func:`_gather_scatter_blocked`); same results layout.

    Wins when the output is much larger than the cache (fine voxels, few channels); the autotuner
    decides. Falls back to the chunked loop where the blocked one does not apply.
    """
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not grad:
        y = _gather_scatter_blocked(x, weight.detach(), kmap)
        if y is not None:
            return y
    return gather_scatter(x, weight, kmap)


def _gather_scatter_cpu(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    return _gather_scatter_chunked(x, weight, kmap)


def _gather_scatter_blocked(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor | None:
    """Output-blocked variant: for a block of output rows, gather the rows of every offset at once,
    one GEMM per offset on a slice of that buffer, then add everything into the block (which stays
    in cache). Needs pairs sorted by output within each offset (true for maps built here; not for
    inverse maps), else returns None."""
    from . import _cpu_kernels as ck

    x = x.contiguous()
    weight = weight.contiguous()
    K, cin, cout = weight.shape
    rows = max(256, BLOCK_BYTES // (x.element_size() * cout))
    in_idx, out_idx, ptr = kmap.pairs_np()
    bnd = cached_block_bounds(kmap, out_idx, ptr, rows)
    if bnd is None:
        return None
    n_out = kmap.n_out
    seg = np.diff(bnd, axis=1)  # [K, blocks] pairs per (offset, block)
    per_block = seg.sum(0)
    cap = int(per_block.max(initial=0))
    y = torch.empty((n_out, cout), dtype=x.dtype) if kmap.identity_offset >= 0 else x.new_zeros((n_out, cout))
    buf = torch.empty((max(cap, 1), cin), dtype=x.dtype)
    prod = torch.empty((max(cap, 1), cout), dtype=x.dtype)
    xn, yn, bn, pn = x.numpy(), y.numpy(), buf.numpy(), prod.numpy()
    wk = [weight[k] for k in range(K)]
    centre = kmap.identity_offset
    for b in range(seg.shape[1]):
        r0 = b * rows
        r1 = min(n_out, r0 + rows)
        if centre >= 0:
            torch.mm(x[r0:r1], wk[centre], out=y[r0:r1])
        n = int(per_block[b])
        if n == 0:
            continue
        ck.gather_block(xn, in_idx, bnd, b, bn)
        r = 0
        for k in np.flatnonzero(seg[:, b]).tolist():
            m = int(seg[k, b])
            torch.mm(buf[r : r + m], wk[k], out=prod[r : r + m])
            r += m
        ck.scatter_block(yn, out_idx, bnd, b, pn)
    return y


def _gather_scatter_chunked(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    x = x.contiguous()
    weight = weight.contiguous()
    cin, cout = weight.shape[1], weight.shape[2]
    in_idx, out_idx, ptr = kmap.pairs_np()
    y = _init_output(x, weight, kmap)
    gather, scatter = row_kernels()
    rows = max(256, CHUNK_BYTES // (x.element_size() * max(cin, cout)))
    biggest = int(max((ptr[k + 1] - ptr[k] for k in range(len(ptr) - 1)), default=0))
    rows = min(rows, max(biggest, 1))
    buf = torch.empty((rows, cin), dtype=x.dtype)
    prod = torch.empty((rows, cout), dtype=x.dtype)
    xn, yn, bn, pn = x.numpy(), y.numpy(), buf.numpy(), prod.numpy()
    for k in range(len(ptr) - 1):
        a, b = int(ptr[k]), int(ptr[k + 1])
        if a == b:
            continue
        wk = weight[k]
        for s in range(a, b, rows):
            e = min(b, s + rows)
            n = e - s
            gather(xn, in_idx[s:e], bn[:n])
            torch.mm(buf[:n], wk, out=prod[:n])
            scatter(yn, out_idx[s:e], pn[:n])
    return y


def _gather_scatter_torch(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    in_idx, out_idx, ptr = kmap.pairs()
    y = _init_output(x, weight, kmap)
    differentiable = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    for k in range(len(ptr) - 1):
        a, b = ptr[k], ptr[k + 1]
        if a == b:
            continue
        contrib = torch.mm(x.index_select(0, in_idx[a:b]), weight[k])
        if differentiable:
            y = y.index_add(0, out_idx[a:b], contrib)  # out of place keeps autograd happy
        else:
            y.index_add_(0, out_idx[a:b], contrib)
    return y
