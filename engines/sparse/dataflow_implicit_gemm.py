"""Implicit GEMM (output-stationary) dataflow.

Every output row is one dot product of its gathered neighbourhood ``[K * Cin]`` with the flattened
weight ``[K * Cin, Cout]``; ``out_in_map`` says where each neighbour comes from (-1: zeros). No
scatter and no atomics -- each output row is written once -- so it is deterministic everywhere and
it is exactly the form that exports to ONNX as Gather + MatMul.

The price is multiplying zeros for missing neighbours. Sorting output rows by their neighbour mask
(TorchSparse++) makes adjacent rows share their missing offsets; a tile of rows then only gathers
and multiplies the offsets that some row of the tile uses.

CPU: tiles of rows sized for L2; numba gathers the tile, one GEMM per tile. GPU: the Triton kernel
in :mod:`.triton_kernels` when Triton is present, else torch gather + matmul in row chunks.
"""

from __future__ import annotations

import torch

from .kernel_map import KernelMap

TILE_BYTES = 512 * 1024


def implicit_gemm(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, sort: bool = True) -> torch.Tensor:
    """Output-stationary sparse convolution; ``sort`` groups rows by neighbour mask."""
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not grad:
        return _implicit_cpu(x, weight.detach(), kmap, sort)
    if x.device.type == "cuda" and not grad:
        from . import triton_kernels

        if triton_kernels.available():
            return triton_kernels.implicit_gemm(x, weight, kmap, sort)
    return implicit_gemm_torch(x, weight, kmap)


def _tile_rows(kmap: KernelMap, cin: int, itemsize: int) -> int:
    rows = TILE_BYTES // max(1, kmap.kernel_volume * cin * itemsize)
    return int(max(64, min(4096, rows)))


def _implicit_cpu(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, sort: bool) -> torch.Tensor:
    from . import _cpu_kernels as ck

    x = x.contiguous()
    K, cin, cout = weight.shape
    m = kmap.out_in_map_np()
    n_out = kmap.n_out
    tile = _tile_rows(kmap, cin, x.element_size())
    key = ("tile_plan", tile, sort)
    if key not in kmap._extras:
        order = kmap.mask_order().numpy() if sort else torch.arange(n_out).numpy()
        kmap._extras[key] = (order, *ck.tile_offsets(m, order, tile))
    order, tptr, tks = kmap._extras[key]
    y = torch.empty((n_out, cout), dtype=x.dtype)
    buf = torch.empty((tile, K * cin), dtype=x.dtype)
    prod = torch.empty((tile, cout), dtype=x.dtype)
    xn, yn, bn, pn = x.numpy(), y.numpy(), buf.numpy(), prod.numpy()
    wflat = weight.reshape(K * cin, cout).contiguous()
    wsel_cache: dict[bytes, torch.Tensor] = {}
    for t in range(len(tptr) - 1):
        a = t * tile
        b = min(n_out, a + tile)
        ks = tks[tptr[t] : tptr[t + 1]]
        n = b - a
        if ks.shape[0] == 0:
            yn[order[a:b]] = 0.0
            continue
        ck.gather_tile(xn, m, order, a, b, ks, bn[:n, : ks.shape[0] * cin])
        if ks.shape[0] == K:
            wsel = wflat
        else:
            kb = ks.tobytes()
            wsel = wsel_cache.get(kb)
            if wsel is None:
                wsel = weight[torch.from_numpy(ks).long()].reshape(-1, cout)
                wsel_cache[kb] = wsel
        lhs = buf[:n, : ks.shape[0] * cin]
        torch.mm(lhs, wsel, out=prod[:n])
        ck.scatter_rows(yn, order, a, pn[:n])
    return y


def implicit_gemm_torch(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, chunk: int = 1 << 16) -> torch.Tensor:
    """Plain torch: ``cat(x, 0)[map] -> [rows, K*Cin] @ W``. Differentiable; any device."""
    K, cin, cout = weight.shape
    m = kmap.out_in_map().long()
    m = torch.where(m < 0, torch.full_like(m, x.shape[0]), m)
    xp = torch.cat([x, x.new_zeros((1, cin))], 0)
    w = weight.reshape(K * cin, cout)
    outs = []
    for s in range(0, kmap.n_out, chunk):
        g = xp[m[s : s + chunk]].reshape(-1, K * cin)
        outs.append(g @ w)
    if not outs:
        return x.new_zeros((0, cout))
    return torch.cat(outs, 0)
