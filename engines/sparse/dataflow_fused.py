"""Fused, output-tiled dataflow: gather-GEMM-scatter and output-stationary GEMM in one compiled loop.

Why: at 64-128 channels the per-offset GEMMs are close to the CPU's peak, and what separates the
chunked gather-scatter from the bare GEMM time is the gathers and scatters: each offset sweeps all
of ``X`` and all of ``Y`` (megabytes, out of L2) once. Here the output is cut into tiles of a few
hundred rows, and for one tile every offset is gathered, multiplied and added while the tile of
``Y`` and the input rows around it (kernel-map neighbours of nearby sorted keys are nearby rows)
stay in L2. The loop is one numba function that calls the BLAS ``?gemm_`` that torch links (MKL)
through a function pointer, so the many small GEMMs cost no Python round trips.

Offsets whose pairs cover most output rows are cheaper output-stationary: their neighbours are
gathered im2col-style (zeros where missing) into ``[rows, |D| * C_in]`` and multiplied by the
stacked weights ``[|D| * C_in, C_out]`` in one GEMM that adds straight into the tile -- no product
buffer, no scatter, a long inner dimension -- at the price of multiplying the missing neighbours'
zeros. ``dense_at`` is the pair density (pairs / output rows) from which an offset goes that way:

* ``fused_gather_scatter``: no dense offsets (exact multiply-adds; only the identity offset of a
  submanifold map, density 1, is a plain ``X[tile] @ W[centre]``);
* ``fused_hybrid``: offsets with density >= 0.75 output-stationary, the rest gather-scatter;
* ``implicit_gemm_fused``: every offset output-stationary (implicit GEMM, no mask sort).

Which one wins is a property of the layer shape and the machine, so the offline tuner measures all
three (``autotune.candidates_for``) and the tune file stores the choice.

Exact and deterministic: every output element is reduced in the same fixed order (identity, dense
GEMM, sparse offsets in kernel order) whatever the thread count; the loop is serial and its GEMMs
run on one BLAS thread (MKL's thread-local count set to 1 around the loop: a threaded MKL split the
long inner dimension of the output-stationary GEMM at 2 threads and changed the rounding), so this
dataflow uses one core whatever ``torch.get_num_threads()`` says. Tiles are ranges of output rows,
so each offset's pairs must be sorted by output row: true for every map built here except inverse
maps and submanifold maps of unsorted input, whose pairs are sorted once per map (cached). Without
the Fortran ``sgemm_``/``dgemm_`` symbols in torch's library (or for autograd, CUDA, other dtypes)
it falls back to :func:`.dataflow_gather_scatter.gather_scatter`.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch

from .epilogue import Epilogue
from .kernel_map import KernelMap, cached_block_bounds

TILE_Y_BYTES = 128 * 1024  # one tile of Y: a quarter of this CPU's 512 KiB L2 (swept 16-256 KiB: 128 best)
TILE_D_BYTES = 256 * 1024  # cap on the im2col operand of the dense offsets
MIN_ROWS, MAX_ROWS = 32, 1024

HYBRID_DENSE_AT = 0.75


@lru_cache(maxsize=1)
def _blas() -> Optional[dict[torch.dtype, Any]]:
    """ctypes pointers to torch's Fortran ``sgemm_`` / ``dgemm_`` (MKL in the x86 wheels), or None.

    Only when torch is built with MKL: the x86-64 wheels link MKL's LP64 interface (32-bit integers, as
    the ctypes signature below passes them) and give the thread-local thread setting the determinism
    needs. Other builds (aarch64/Jetson with OpenBLAS, possibly ILP64) get None, and the fused dataflows
    run as gather-scatter there, identically at any thread count.
    """
    if not torch.backends.mkl.is_available():
        return None
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = os.path.join(lib_dir, name)
        if not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            fns = {torch.float32: lib.sgemm_, torch.float64: lib.dgemm_}
        except (OSError, AttributeError):
            return None
        for fn in fns.values():
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p] * 13
        return fns
    return None


@lru_cache(maxsize=1)
def _mkl_local_threads() -> Optional[Any]:
    """``n -> previous``: MKL's thread-local BLAS thread count (0 = the global one), or None without MKL.

    Through the Fortran symbol ``mkl_set_num_threads_local_`` (argument by reference), whose calling
    convention is unambiguous; in torch's static MKL the lower-case C name is bound to it as well.
    """
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        fn = ctypes.CDLL(os.path.join(lib_dir, "libtorch_cpu.so")).mkl_set_num_threads_local_
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(ctypes.c_int)]
    return lambda n: int(fn(ctypes.byref(ctypes.c_int(int(n)))))


def available() -> bool:
    """Whether the fused loop can run here (else the dataflows below fall back to gather-scatter)."""
    return _blas() is not None


def _tile_rows(cin: int, cout: int, n_dense: int, itemsize: int) -> int:
    rows = TILE_Y_BYTES // (itemsize * cout)
    if n_dense:
        rows = min(rows, TILE_D_BYTES // (itemsize * n_dense * cin))
    return int(max(MIN_ROWS, min(MAX_ROWS, rows)))


def dense_offsets(kmap: KernelMap, dense_at: float) -> np.ndarray:
    """Offsets (identity excluded) whose pair density reaches ``dense_at``, in kernel order."""
    sizes = kmap.offset_sizes()
    n = max(1, kmap.n_out)
    ks = [k for k, s in enumerate(sizes) if k != kmap.identity_offset and s > 0 and s / n >= dense_at]
    return np.asarray(ks, np.int32)


def fused(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, dense_at: float = float("inf"),
          epilogue: Optional[Epilogue] = None) -> torch.Tensor:
    """Sparse convolution of ``x`` [N_in, C_in] by ``weight`` [K, C_in, C_out] along ``kmap``.

    ``dense_at``: pair density from which an offset runs output-stationary (``inf``: none; ``0``:
    all offsets that occur). ``epilogue`` (bias, BatchNorm, residual, ReLU) is applied per tile
    inside the loop. Falls back to gather-scatter (epilogue after it) where the fused loop cannot run.
    """
    from .dataflow_gather_scatter import gather_scatter

    if epilogue is not None:
        epilogue.check(kmap.n_out, int(weight.shape[-1]))
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    blas = _blas()
    # without MKL's thread-local setting a threaded BLAS could round differently per thread count
    serial_blas = _mkl_local_threads() is not None or torch.get_num_threads() == 1
    if (grad or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or blas is None
            or weight.dtype != x.dtype or not serial_blas):
        return _after(gather_scatter(x, weight, kmap), epilogue)
    y = _fused_cpu(x, weight.detach(), kmap, dense_at, blas[x.dtype], epilogue)
    return _after(gather_scatter(x, weight, kmap), epilogue) if y is None else y


def _after(y: torch.Tensor, epilogue: Optional[Epilogue]) -> torch.Tensor:
    return y if epilogue is None else epilogue.apply_(y)


def _epilogue_args(epilogue: Optional[Epilogue], n_out: int, cout: int, dtype: torch.dtype) -> tuple:
    """(flags, bias, scale, shift, residual) for :func:`_cpu_kernels.fused_tiles`: bias/scale/shift as
    full ``[C_out]`` vectors, a 1 x 1 dummy residual where there is none. An absent bias or shift is
    -0.0 and an absent scale 1.0: exact identities for every value, -0.0 included (adding +0.0 would
    turn -0.0 into +0.0 where torch, skipping the op, keeps it)."""
    def arr(t: Optional[torch.Tensor], shape: tuple[int, ...], fill: float) -> np.ndarray:
        if t is None:
            return torch.full(shape, fill, dtype=dtype).numpy()
        return t.detach().to("cpu", dtype).contiguous().numpy()  # shapes: Epilogue.check in fused()

    if epilogue is None or epilogue.is_empty():
        return 0, arr(None, (1,), -0.0), arr(None, (1,), 1.0), arr(None, (1,), -0.0), arr(None, (1, 1), 0.0)
    flags = 1 | (epilogue.residual is not None) * 8 | bool(epilogue.relu) * 16
    res = arr(None, (1, 1), 0.0) if epilogue.residual is None else arr(epilogue.residual, (n_out, cout), 0.0)
    return (int(flags), arr(epilogue.bias, (cout,), -0.0), arr(epilogue.scale, (cout,), 1.0),
            arr(epilogue.shift, (cout,), -0.0), res)


def _fused_cpu(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, dense_at: float, gemm: Any,
               epilogue: Optional[Epilogue] = None) -> Optional[torch.Tensor]:
    from . import _cpu_kernels as ck

    x = x.contiguous()
    weight = weight.contiguous()
    K, cin, cout = weight.shape
    n_out = kmap.n_out
    if kmap.identity_offset >= 0 and kmap.n_in != n_out:
        return None
    dks = dense_offsets(kmap, dense_at)
    rows = _tile_rows(cin, cout, len(dks), x.element_size())
    in_idx, out_idx, ptr = kmap.pairs_np()
    bnd = cached_block_bounds(kmap, out_idx, ptr, rows)
    if bnd is None:
        # pairs not sorted by output row (inverse maps, submanifold maps of unsorted input): sort each
        # offset's pairs by output once per map (cached; the layers of a stage share the map)
        if "pairs_by_out" not in kmap._extras:
            order = np.concatenate([ptr[k] + np.argsort(out_idx[ptr[k]:ptr[k + 1]], kind="stable")
                                    for k in range(K)]) if len(out_idx) else np.zeros(0, np.int64)
            kmap._extras["pairs_by_out"] = (np.ascontiguousarray(in_idx[order]), np.ascontiguousarray(out_idx[order]))
        in_idx, out_idx = kmap._extras["pairs_by_out"]
        bnd = cached_block_bounds(kmap, out_idx, ptr, rows, "blocks_by_out")
        if bnd is None:
            return None
    dense = set(dks.tolist())
    sks = np.asarray([k for k in range(K) if k not in dense and k != kmap.identity_offset and ptr[k + 1] > ptr[k]],
                     np.int32)
    y = torch.empty((n_out, cout), dtype=x.dtype)
    if n_out == 0:
        return y
    dt = x.numpy().dtype
    ep = _epilogue_args(epilogue, n_out, cout, x.dtype)
    if len(dks):
        m = kmap.out_in_map_np()
        wd = weight[torch.from_numpy(dks).long()].reshape(-1, cout).contiguous().numpy()
        buf_d = np.empty((rows, len(dks) * cin), dt)
    else:
        m = np.full((1, 1), -1, np.int32)
        wd = np.empty((1, cout), dt)
        buf_d = np.empty((1, 1), dt)
    seg = np.diff(bnd[sks], axis=1) if len(sks) else np.zeros((1, 1), np.int64)
    cap = max(1, int(seg.max(initial=0)))
    buf_s = np.empty((cap, cin), dt)
    prod = np.empty((cap, cout), dt)
    ints = np.array([0, 0, 0, ord("N")], np.int32)
    ab = np.array([1.0, 0.0, 1.0], dt)
    # one BLAS thread: a multi-threaded MKL may split a GEMM's inner dimension, which would make the
    # rounding depend on the thread count; the tiles are small enough that one thread loses little
    set_local = _mkl_local_threads()
    prev = set_local(1) if set_local is not None else None
    try:
        ck.fused_tiles(gemm, x.numpy(), y.numpy(), weight.numpy(), wd, m, dks, in_idx, out_idx, bnd, sks,
                       int(kmap.identity_offset), rows, buf_d, buf_s, prod, ints, ab, *ep)
    finally:
        if set_local is not None:
            set_local(prev)
    return y


def fused_gather_scatter(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
                         epilogue: Optional[Epilogue] = None) -> torch.Tensor:
    return fused(x, weight, kmap, float("inf"), epilogue)


def fused_hybrid(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
                 epilogue: Optional[Epilogue] = None) -> torch.Tensor:
    return fused(x, weight, kmap, HYBRID_DENSE_AT, epilogue)


def implicit_gemm_fused(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap,
                        epilogue: Optional[Epilogue] = None) -> torch.Tensor:
    return fused(x, weight, kmap, 0.0, epilogue)
