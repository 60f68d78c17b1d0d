"""Triton implicit-GEMM kernel for the GPU path (used when Triton and a CUDA device are present).

One program computes a BLOCK_M x BLOCK_N tile of outputs: for every kernel offset it loads the
tile's neighbour indices from ``out_in_map``, gathers those input rows straight into registers
(missing neighbours read as zeros) and accumulates ``tl.dot`` with the offset's weight slice in
fp32. Rows are visited in neighbour-mask order, so a tile whose rows all lack an offset skips it
-- the benefit of mask sorting without any extra memory traffic. Output rows are written once:
deterministic, no atomics.
"""

from __future__ import annotations

import functools

import torch

from .kernel_map import KernelMap


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when Triton imports and a CUDA device exists (the CPU machines here have neither)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def implicit_gemm_kernel(
        x_ptr,
        w_ptr,
        map_ptr,
        order_ptr,
        y_ptr,
        n_out,
        n_k,
        cin,
        cout,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rm < n_out
        rows = tl.load(order_ptr + rm, mask=row_ok, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, n_k):
            idx = tl.load(map_ptr + rows * n_k + k, mask=row_ok, other=-1).to(tl.int64)
            valid = idx >= 0
            if tl.max(valid.to(tl.int32), axis=0) > 0:
                for c0 in range(0, cin, BLOCK_K):
                    rc = c0 + tl.arange(0, BLOCK_K)
                    a = tl.load(
                        x_ptr + idx[:, None] * cin + rc[None, :],
                        mask=valid[:, None] & (rc[None, :] < cin),
                        other=0.0,
                    )
                    w = tl.load(
                        w_ptr + (k * cin + rc[:, None]) * cout + rn[None, :],
                        mask=(rc[:, None] < cin) & (rn[None, :] < cout),
                        other=0.0,
                    )
                    if IEEE:  # fp32 inputs: no TF32 rounding, so results match the CPU to 1e-6
                        acc += tl.dot(a, w, input_precision="ieee")
                    else:
                        acc += tl.dot(a, w)
        tl.store(
            y_ptr + rows[:, None] * cout + rn[None, :],
            acc.to(y_ptr.dtype.element_ty),
            mask=row_ok[:, None] & (rn[None, :] < cout),
        )

    return implicit_gemm_kernel


def _pow2_at_least(v: int, lo: int, hi: int) -> int:
    p = lo
    while p < v and p < hi:
        p *= 2
    return p


def implicit_gemm(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, sort: bool = True) -> torch.Tensor:
    """Triton output-stationary sparse convolution (fp32 or fp16/bf16 with fp32 accumulation)."""
    import triton

    K, cin, cout = weight.shape
    x = x.contiguous()
    w = weight.to(x.dtype).contiguous()
    m = kmap.out_in_map().to(x.device).contiguous()
    n_out = kmap.n_out
    order = (kmap.mask_order() if sort else torch.arange(n_out, device=x.device)).to(x.device).int()
    y = torch.empty((n_out, cout), dtype=x.dtype, device=x.device)
    if n_out == 0:
        return y
    block_m = 64
    block_n = _pow2_at_least(cout, 16, 128)
    block_k = _pow2_at_least(cin, 16, 64)
    grid = (triton.cdiv(n_out, block_m), triton.cdiv(cout, block_n))
    _kernel()[grid](
        x, w, m, order, y, n_out, K, cin, cout,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE=x.dtype == torch.float32,
    )
    return y
