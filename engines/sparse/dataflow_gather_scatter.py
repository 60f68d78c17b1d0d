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

import torch

from .kernel_map import KernelMap

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


def _gather_scatter_cpu(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from . import _cpu_kernels as ck
    from .kernel_map import _set_numba_threads

    x = x.contiguous()
    weight = weight.contiguous()
    cin, cout = weight.shape[1], weight.shape[2]
    in_idx, out_idx, ptr = kmap.pairs_np()
    y = _init_output(x, weight, kmap)
    threads = torch.get_num_threads()
    if threads > 1:
        _set_numba_threads(threads)
        gather, scatter = ck.gather_rows_par, ck.scatter_add_rows_par
    else:
        gather, scatter = ck.gather_rows, ck.scatter_add_rows
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
