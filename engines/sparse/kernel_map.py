"""Kernel maps: for every kernel offset, which input row feeds which output row.

Two forms, converted lazily into each other and cached on the map:

* per-offset pairs (CSR over offsets): ``in_idx[ptr[k]:ptr[k+1]]`` feeds ``out_idx[...]`` through
  weight ``W[k]`` -- what gather-GEMM-scatter consumes;
* output-stationary ``out_in_map[N_out, K]`` with -1 for a missing neighbour -- what implicit GEMM,
  the Triton kernel and the ONNX export (Gather + MatMul) consume.

Building (CPU): coordinates are packed into int64 keys with z fastest, so every (dx, dy) column of
the kernel is a forward merge of two sorted key arrays (``_cpu_kernels``); submanifold maps only
merge half the kernel and mirror the rest (a pair i->o at offset d is o->i at -d). Coordinates that
come out of our voxeliser and strided layers are already sorted, so no sort is needed in a network;
unsorted input is argsorted once. Building (CUDA, or ``backend="torch"``): sort + ``searchsorted``
per offset in plain torch, which is also the independent reference the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .geometry import ConvGeometry, Triple

Backend = Literal["auto", "numba", "torch"]
SENTINEL = np.int64(1) << np.int64(62)


# --------------------------------------------------------------------------------------------------
# Key packing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packing:
    """Linearisation of (b, x, y, z) into int64 keys, with margins so offsets never wrap around."""

    lo: np.ndarray  # int64[3]: coordinate mapped to 0 on each axis
    rng: np.ndarray  # int64[3]: extent of each axis (z fastest)

    @staticmethod
    def around(coords: np.ndarray, pad: np.ndarray) -> "Packing":
        from . import _cpu_kernels as ck

        b = ck.coord_bounds(np.ascontiguousarray(coords))
        mn, mx, bmax = b[:3], b[3:6], int(b[6])
        lo = mn - pad
        rng = mx - mn + 2 * pad + 1
        if (bmax + 1) * float(np.prod(rng.astype(np.float64))) >= 2.0**61:
            raise ValueError("coordinate range too large to pack into 61-bit keys")
        return Packing(lo=lo, rng=rng)

    def lin(self, d: np.ndarray) -> np.ndarray:
        """Key difference of a coordinate displacement [..., 3]."""
        d = np.asarray(d, np.int64)
        return (d[..., 0] * self.rng[1] + d[..., 1]) * self.rng[2] + d[..., 2]


def _pad_for(geom: ConvGeometry) -> np.ndarray:
    disp = [np.abs(v).max() if v.size else 0 for v in geom.axis_displacements()]
    return np.array([2 * d + s + 1 for d, s in zip(disp, geom.out_stride)], np.int64)


# --------------------------------------------------------------------------------------------------
# Kernel map object
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class KernelMap:
    """The neighbour relation of one convolution geometry on one coordinate set.

    ``out_coords`` are the output rows' coordinates; for strided/transposed layers they are sorted
    by (b, x, y, z), which is what lets the next layer skip sorting.
    """

    geometry: ConvGeometry
    n_in: int
    out_coords: torch.Tensor
    out_spatial_shape: Triple | None
    in_coords: torch.Tensor
    identity_offset: int = -1
    _pairs: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor, np.ndarray] | None = None
    _out_in_map: np.ndarray | torch.Tensor | None = None
    _extras: dict = field(default_factory=dict)

    # ---- basic facts ----------------------------------------------------------------------------
    @property
    def n_out(self) -> int:
        return int(self.out_coords.shape[0])

    @property
    def kernel_volume(self) -> int:
        return self.geometry.kernel_volume

    @property
    def device(self) -> torch.device:
        return self.out_coords.device

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    # ---- the two forms ----------------------------------------------------------------------------
    def pairs_np(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(in_idx int32[P], out_idx int32[P], ptr int64[K+1]) excluding the identity offset."""
        if self._pairs is None:
            m = self._out_in_map
            if m is None:
                raise RuntimeError("kernel map has neither form")
            if isinstance(m, torch.Tensor):
                m = m.cpu().numpy()
            from . import _cpu_kernels as ck

            self._pairs = ck.map_to_pairs(np.ascontiguousarray(m), self.identity_offset)
        p = self._pairs
        if isinstance(p[0], torch.Tensor):
            return p[0].cpu().numpy(), p[1].cpu().numpy(), np.asarray(p[2])
        return p  # type: ignore[return-value]

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Pairs as torch tensors on the map's device; ``ptr`` as a Python list (host-side loop bounds)."""
        key = "pairs_torch"
        if key not in self._extras:
            if self._pairs is not None and isinstance(self._pairs[0], torch.Tensor):
                i, o, ptr = self._pairs
            else:
                i_np, o_np, ptr = self.pairs_np()
                i = torch.from_numpy(i_np).to(self.device)
                o = torch.from_numpy(o_np).to(self.device)
            self._extras[key] = (i, o, [int(v) for v in np.asarray(ptr)])
        return self._extras[key]

    def offset_sizes(self) -> list[int]:
        """Number of (in, out) pairs per offset, identity offset included."""
        ptr = self.pairs()[2]
        sizes = [ptr[k + 1] - ptr[k] for k in range(self.kernel_volume)]
        if self.identity_offset >= 0:
            sizes[self.identity_offset] = self.n_out
        return sizes

    @property
    def n_pairs(self) -> int:
        return sum(self.offset_sizes())

    def out_in_map_np(self) -> np.ndarray:
        if self._out_in_map is None:
            from . import _cpu_kernels as ck

            i, o, ptr = self.pairs_np()
            self._out_in_map = ck.pairs_to_map(i, o, ptr, self.n_out, self.identity_offset)
        m = self._out_in_map
        return m.cpu().numpy() if isinstance(m, torch.Tensor) else m

    def out_in_map(self) -> torch.Tensor:
        """int32 [N_out, K]; entry -1 where the neighbour at that offset does not exist."""
        m = self._out_in_map
        if isinstance(m, torch.Tensor):
            return m
        if m is None and not self.on_cpu and self._pairs is not None:
            i, o, ptr = self.pairs()
            res = torch.full((self.n_out, self.kernel_volume), -1, dtype=torch.int32, device=self.device)
            for k in range(self.kernel_volume):
                res[o[ptr[k] : ptr[k + 1]].long(), k] = i[ptr[k] : ptr[k + 1]]
            if self.identity_offset >= 0:
                res[:, self.identity_offset] = torch.arange(self.n_out, dtype=torch.int32, device=self.device)
            self._out_in_map = res
            return res
        return torch.from_numpy(self.out_in_map_np()).to(self.device)

    def mask_order(self) -> torch.Tensor:
        """Output rows sorted by their neighbour bit mask (int64 permutation), for implicit GEMM.

        Rows with equal masks end up adjacent, so a tile of rows touches few kernel offsets
        (TorchSparse++'s mask sorting). Maps with more than 64 offsets keep the natural order.
        """
        if "mask_order" not in self._extras:
            if self.kernel_volume > 64:
                order = torch.arange(self.n_out, device=self.device)
            elif self.on_cpu:
                from . import _cpu_kernels as ck

                masks = ck.neighbour_masks(self.out_in_map_np())
                order = torch.from_numpy(np.argsort(masks.view(np.int64) ^ np.int64(-(2**63)), kind="stable"))
            else:
                m = self.out_in_map() >= 0
                w = torch.pow(2, torch.arange(self.kernel_volume, device=self.device, dtype=torch.float64))
                order = torch.sort(m.double() @ w, stable=True).indices
            self._extras["mask_order"] = order
        return self._extras["mask_order"]

    # ---- derived maps ------------------------------------------------------------------------------
    def inverse(self) -> "KernelMap":
        """Map of the inverse convolution: same offsets, inputs and outputs swapped (no rebuild)."""
        if "inverse" not in self._extras:
            inv = KernelMap(
                geometry=self.geometry,
                n_in=self.n_out,
                out_coords=self.in_coords,
                out_spatial_shape=self._extras.get("in_spatial_shape"),
                in_coords=self.out_coords,
                identity_offset=self.identity_offset,
            )
            if self._pairs is not None and not isinstance(self._pairs[0], torch.Tensor):
                i, o, ptr = self._pairs
                inv._pairs = (o, i, ptr)
            else:
                i, o, ptr = self.pairs()
                inv._pairs = (o, i, np.asarray(ptr, np.int64))
            inv._extras["in_spatial_shape"] = self.out_spatial_shape
            inv._extras["inverse"] = self
            self._extras["inverse"] = inv
        return self._extras["inverse"]


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------


def _groups(geom: ConvGeometry, pk: Packing, half: bool):
    """Merge groups: one per (ix, iy) column, z displacements as an ascending progression.

    Returns (base, shift, nz, probe, k-table, n_slots): z displacement of slot j is
    ``base + (j << shift)``; ``k-table[g, j]`` is the offset index of slot j (``n_slots - 1`` is a
    dummy slot used when the z step is not a power of two and the progression has gaps); probe is
    how many following keys can lie in a group's z band (keys in one column are spaced by at least
    the input tensor stride). With ``half`` (submanifold), only the positive half of the kernel plus
    the upper half of the centre column; the merge kernel writes the mirrored half.
    """
    kx, ky, kz = geom.kernel_size
    ax, ay, az = geom.axis_displacements()
    order_z = np.argsort(az, kind="stable")
    dz_sorted = az[order_z]
    K = geom.kernel_volume
    step = int(dz_sorted[1] - dz_sorted[0]) if kz > 1 else 1
    pow2 = step & (step - 1) == 0
    grain = geom.in_stride[2]
    shift = step.bit_length() - 1 if pow2 else 0
    dummy = K if not pow2 else -1
    bases, shifts, nzs, probes, ks = [], [], [], [], []
    for ix in range(kx):
        for iy in range(ky):
            dx, dy = int(ax[ix]), int(ay[iy])
            col = (dx * pk.rng[1] + dy) * pk.rng[2]
            kidx = [(ix * ky + iy) * kz + int(iz) for iz in order_z]
            dzs = list(dz_sorted)
            if half:
                if dx < 0 or (dx == 0 and dy < 0):
                    continue
                if dx == 0 and dy == 0:
                    start = kz // 2 + 1
                    if start >= kz:
                        continue
                    kidx, dzs = kidx[start:], dzs[start:]
            if pow2:
                table = kidx
            else:
                table = [dummy] * (int(dzs[-1] - dzs[0]) + 1)
                for kk, dz in zip(kidx, dzs):
                    table[int(dz - dzs[0])] = kk
            span = int(dzs[-1] - dzs[0])
            bases.append(col + int(dzs[0]))
            shifts.append(shift)
            nzs.append(len(table))
            probes.append(span // grain + 1)
            ks.append(table)
    width = max((len(t) for t in ks), default=1)
    table = np.zeros((len(ks), width), np.int32)
    for g, t in enumerate(ks):
        table[g, : len(t)] = t
    n_slots = K + (0 if pow2 else 1)
    return (
        np.array(bases, np.int64),
        np.array(shifts, np.int64),
        np.array(nzs, np.int64),
        np.array(probes, np.int64),
        table,
        n_slots,
    )


def _threads() -> int:
    return max(1, torch.get_num_threads())


def cached_block_bounds(kmap: KernelMap, out_idx: np.ndarray, ptr: np.ndarray, rows: int,
                        tag: str = "blocks") -> np.ndarray | None:
    """``bnd[k, b]``: first pair of offset ``k`` whose output row is >= ``b * rows`` (pairs sorted by output),
    cached on the map under ``(tag, rows)``; None when some offset's pairs are not sorted by output row.
    The output-blocked dataflows (MKL, fused, oneDNN) share it, so a stage's layers compute it once."""
    from . import _cpu_kernels as ck

    key = (tag, rows)
    if key not in kmap._extras:
        bnd, ok = ck.block_bounds(out_idx, ptr, kmap.n_out, rows)
        kmap._extras[key] = bnd if ok else None
    return kmap._extras[key]


def row_kernels() -> tuple:
    """(gather_rows, scatter_add_rows): numba's parallel pair when torch runs more than one thread (numba's
    count set to torch's), else the serial one. Within one offset no output row repeats, so both give the
    same bits."""
    from . import _cpu_kernels as ck

    threads = torch.get_num_threads()
    if threads > 1:
        _set_numba_threads(threads)
        return ck.gather_rows_par, ck.scatter_add_rows_par
    return ck.gather_rows, ck.scatter_add_rows


def _set_numba_threads(n: int) -> None:
    """Set numba's thread count without touching torch's.

    numba's OpenMP threading layer, when it starts (here, on the first call), sets the process-wide
    OpenMP thread count that torch's intra-op pool shares to its own default (all cores): a process
    configured with ``torch.set_num_threads(1)`` then ran its dense layers on every core. Put torch's
    setting back.
    """
    import numba

    torch_threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


def _sorted_keys(keys: np.ndarray, n_sentinel: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys in ascending order followed by sentinels, plus the sorting permutation (empty if none)."""
    from . import _cpu_kernels as ck

    if ck.strictly_increasing(keys):
        perm = np.empty(0, np.int64)
        ks = keys
    else:
        perm = np.argsort(keys, kind="stable")
        ks = keys[perm]
        if ks.shape[0] > 1 and np.any(ks[1:] == ks[:-1]):
            raise ValueError("duplicate coordinates in sparse tensor")
    out = np.empty(ks.shape[0] + n_sentinel, np.int64)
    out[: ks.shape[0]] = ks
    out[ks.shape[0] :] = SENTINEL
    return out, perm


def _out_keys_cpu(geom: ConvGeometry, coords: np.ndarray, pk: Packing, spatial_shape: Triple | None) -> np.ndarray:
    from . import _cpu_kernels as ck

    out_step = np.array(geom.out_stride, np.int64)
    if geom.kind == "down" and geom.mode == "floor":
        keys = ck.floor_keys(coords, out_step, pk.lo, pk.rng)
    else:
        ax = geom.axis_displacements()
        kmax = max(len(v) for v in ax)
        disp = np.zeros((3, kmax), np.int64)
        for a in range(3):
            disp[a, : len(ax[a])] = ax[a]
        lo_b = np.zeros(3, np.int64)
        out_shape = geom.out_spatial_shape(spatial_shape)
        if out_shape is None:
            hi_b = np.full(3, np.iinfo(np.int64).max // 4, np.int64)
        else:
            hi_b = (np.array(out_shape, np.int64) - 1) * out_step
        ks = np.array(geom.kernel_size, np.int64)
        keys = ck.generative_candidates(coords, disp, ks, out_step, lo_b, hi_b, pk.lo, pk.rng)
    keys = np.sort(keys)
    n = ck.unique_sorted_inplace(keys)
    return keys[:n].copy()


def _generative_direct(geom: ConvGeometry, coords: np.ndarray, pk: Packing, spatial_shape: Triple | None,
                       n_in: int, K: int):
    """Generative (strided or transposed) map read off sorted (output key | pair) candidates.

    Every candidate (input, offset) of a generative layer *is* a pair, so one sort of int64s that
    carry the pair in their low bits yields sorted unique outputs, ``out_in_map`` and the CSR pairs
    without a merge. Returns None when the key and pair bits do not fit in 63 bits, or for floor mode
    (whose pairs also include inputs that did not create the output).
    """
    from . import _cpu_kernels as ck

    if geom.kind == "subm" or (geom.kind == "down" and geom.mode == "floor"):
        return None
    pbits = max(1, int(n_in * K).bit_length())
    bmax = int(coords[:, 0].max()) if n_in else 0
    key_bits = int((bmax + 1) * int(np.prod(pk.rng))).bit_length()
    if key_bits + pbits > 62:
        return None
    ax = geom.axis_displacements()
    kmax = max(len(v) for v in ax)
    disp = np.zeros((3, kmax), np.int64)
    for a in range(3):
        disp[a, : len(ax[a])] = ax[a]
    out_step = np.array(geom.out_stride, np.int64)
    out_shape = geom.out_spatial_shape(spatial_shape)
    lo_b = np.zeros(3, np.int64)
    if out_shape is None:
        hi_b = np.full(3, np.iinfo(np.int64).max // 4, np.int64)
    else:
        hi_b = (np.array(out_shape, np.int64) - 1) * out_step
    ks = np.array(geom.kernel_size, np.int64)
    cand = ck.generative_pairs_keys(coords, disp, ks, out_step, lo_b, hi_b, pk.lo, pk.rng, pbits)
    cand.sort()
    out_keys, m, in_idx, out_idx, ptr = ck.read_sorted_pairs(cand, pbits, K)
    return out_keys, m, (in_idx, out_idx, ptr)


def build_kernel_map(
    coords: torch.Tensor,
    geometry: ConvGeometry,
    spatial_shape: Triple | None = None,
    backend: Backend = "auto",
) -> KernelMap:
    """Build the kernel map of ``geometry`` on ``coords`` (int32 [N, 4] = b, x, y, z)."""
    if backend == "auto":
        backend = "numba" if coords.device.type == "cpu" else "torch"
    if backend == "torch":
        return _build_torch(coords, geometry, spatial_shape)
    return _build_numba(coords, geometry, spatial_shape)


def _build_numba(coords_t: torch.Tensor, geom: ConvGeometry, spatial_shape: Triple | None) -> KernelMap:
    from . import _cpu_kernels as ck

    coords = np.ascontiguousarray(coords_t.detach().cpu().numpy().astype(np.int32, copy=False))
    pk = Packing.around(coords, _pad_for(geom))
    keys = ck.pack_keys(coords, pk.lo, pk.rng)
    n_in = coords.shape[0]
    K = geom.kernel_volume
    threads = _threads()
    if threads > 1:
        _set_numba_threads(threads)
    out_shape = geom.out_spatial_shape(spatial_shape)

    if geom.kind == "subm":
        bases, shifts, nzs, probes, gk, slots = _groups(geom, pk, half=True)
        in_sorted, perm = _sorted_keys(keys, int(probes.max(initial=1)) + 1)
        # one spare column: a miss writes into slot cnt[k] before the count decides to keep it
        pin = np.empty((slots, n_in + 1), np.int32)
        pout = np.empty((slots, n_in + 1), np.int32)
        cnt = np.zeros(slots, np.int64)
        if n_in and len(bases):
            fn = ck.merge_sym_pairs_parallel if threads > 1 else ck.merge_sym_pairs_serial
            fn(in_sorted, n_in, bases, shifts, nzs, probes, gk, K, pin, pout, cnt)
        pairs = ck.compact_pairs(pin[:K], pout[:K], cnt[:K], perm)
        km = KernelMap(
            geometry=geom,
            n_in=n_in,
            out_coords=coords_t,
            out_spatial_shape=out_shape,
            in_coords=coords_t,
            identity_offset=geom.identity_offset,
            _pairs=pairs,
        )
        km._extras["in_spatial_shape"] = spatial_shape
        return km

    direct = _generative_direct(geom, coords, pk, spatial_shape, n_in, K)
    if direct is not None:
        out_keys, m, pairs = direct
        km = KernelMap(
            geometry=geom,
            n_in=n_in,
            out_coords=torch.from_numpy(ck.unpack_keys(out_keys, pk.lo, pk.rng)).to(coords_t.device),
            out_spatial_shape=out_shape,
            in_coords=coords_t,
            identity_offset=-1,
            _pairs=pairs,
            _out_in_map=m,
        )
        km._extras["in_spatial_shape"] = spatial_shape
        return km
    out_keys = _out_keys_cpu(geom, coords, pk, spatial_shape)
    out_coords = ck.unpack_keys(out_keys, pk.lo, pk.rng)
    bases, shifts, nzs, probes, gk, slots = _groups(geom, pk, half=False)
    in_sorted, perm = _sorted_keys(keys, int(probes.max(initial=1)) + 1)
    fn = ck.merge_map_parallel if threads > 1 else ck.merge_map_serial
    m = fn(in_sorted, out_keys, bases, shifts, nzs, probes, gk, slots, 2048)
    if slots != K:
        m = np.ascontiguousarray(m[:, :K])
    if perm.shape[0]:
        m = np.where(m >= 0, perm[np.maximum(m, 0)], -1).astype(np.int32)
    km = KernelMap(
        geometry=geom,
        n_in=n_in,
        out_coords=torch.from_numpy(out_coords).to(coords_t.device),
        out_spatial_shape=out_shape,
        in_coords=coords_t,
        identity_offset=-1,
        _out_in_map=m,
    )
    km._extras["in_spatial_shape"] = spatial_shape
    return km


def build_subm_pairs_hashed(coords_t: torch.Tensor, geom: ConvGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Submanifold CSR pairs found with a hash table instead of the sorted merge.

    Not used by the engine: it exists so the choice of sorted merges is measured, not asserted
    (benchmarks/sparse_conv.py ``map_build_ms``; docs/sparse_conv.md). Same half-kernel mirroring
    and the same CSR output as the merge (pair order within an offset may differ).
    """
    from . import _cpu_kernels as ck

    if geom.kind != "subm":
        raise ValueError("the hashed builder covers submanifold maps only")
    coords = np.ascontiguousarray(coords_t.detach().cpu().numpy().astype(np.int32, copy=False))
    n = coords.shape[0]
    K = geom.kernel_volume
    pk = Packing.around(coords, _pad_for(geom))
    keys = ck.pack_keys(coords, pk.lo, pk.rng)
    disp = geom.displacements()  # [K, 3] (x, y, z) displacements in offset order
    half = [k for k in range(K) if tuple(disp[k]) > (0, 0, 0)]
    deltas = np.array([int(pk.lin(disp[k])) for k in half], np.int64)
    bits = max(4, int(2 * max(n, 1) - 1).bit_length())
    tkeys, tvals = ck.hash_build(keys, bits)
    pin = np.empty((K, n + 1), np.int32)
    pout = np.empty((K, n + 1), np.int32)
    cnt = np.zeros(K, np.int64)
    ck.hash_sym_pairs(keys, tkeys, tvals, bits, deltas, np.array(half, np.int64), K, pin, pout, cnt)
    return ck.compact_pairs(pin, pout, cnt, np.empty(0, np.int64))


# ---- plain torch builder (CUDA, and the reference for tests) -------------------------------------


def _pack_torch(c: torch.Tensor, pk: Packing) -> torch.Tensor:
    lo = torch.as_tensor(pk.lo, device=c.device)
    rng = torch.as_tensor(pk.rng, device=c.device)
    c = c.long()
    return ((c[:, 0] * rng[0] + (c[:, 1] - lo[0])) * rng[1] + (c[:, 2] - lo[1])) * rng[2] + (c[:, 3] - lo[2])


def _unpack_torch(k: torch.Tensor, pk: Packing) -> torch.Tensor:
    rng = [int(v) for v in pk.rng]
    lo = [int(v) for v in pk.lo]
    z = k % rng[2]
    k = k // rng[2]
    y = k % rng[1]
    k = k // rng[1]
    x = k % rng[0]
    b = k // rng[0]
    return torch.stack([b, x + lo[0], y + lo[1], z + lo[2]], 1).int()


def _build_torch(coords: torch.Tensor, geom: ConvGeometry, spatial_shape: Triple | None) -> KernelMap:
    dev = coords.device
    c_np = coords.detach().cpu().numpy() if coords.shape[0] < 2 else None
    if c_np is None:
        mn = coords[:, 1:].amin(0).cpu().numpy().astype(np.int64)
        mx = coords[:, 1:].amax(0).cpu().numpy().astype(np.int64)
        bmax = int(coords[:, 0].max())
        dummy = np.array([[0, *mn], [bmax, *mx]], np.int64)
    else:
        dummy = c_np.astype(np.int64)
    pk = Packing.around(dummy, _pad_for(geom))
    keys = _pack_torch(coords, pk)
    sk, perm = torch.sort(keys)
    out_shape = geom.out_spatial_shape(spatial_shape)
    out_step = torch.as_tensor(geom.out_stride, device=dev)
    if geom.kind == "subm":
        out_keys = keys
        out_coords = coords
    else:
        if geom.kind == "down" and geom.mode == "floor":
            f = coords.long().clone()
            f[:, 1:] = torch.div(f[:, 1:], out_step, rounding_mode="floor") * out_step
            cand = _pack_torch(f, pk)
        else:
            disp = torch.as_tensor(geom.displacements(), device=dev)
            o = coords[:, None, 1:].long() - disp[None]  # [N, K, 3]
            ok = (o % out_step == 0).all(-1) & (o >= 0).all(-1)
            if out_shape is not None:
                hi = (torch.as_tensor(out_shape, device=dev) - 1) * out_step
                ok &= (o <= hi).all(-1)
            b = coords[:, None, :1].long().expand(-1, o.shape[1], 1)
            full = torch.cat([b, o], -1)[ok]
            cand = _pack_torch(full, pk)
        out_keys = torch.unique(cand)
        out_coords = _unpack_torch(out_keys, pk)
    disp = torch.as_tensor(geom.displacements(), device=dev)
    lin = torch.as_tensor(pk.lin(geom.displacements()), device=dev)
    K = geom.kernel_volume
    m = torch.full((out_keys.shape[0], K), -1, dtype=torch.int32, device=dev)
    n = sk.shape[0]
    if n:
        for k in range(K):
            q = out_keys + lin[k]
            pos = torch.searchsorted(sk, q).clamp_(max=n - 1)
            hit = sk[pos] == q
            m[:, k] = torch.where(hit, perm[pos], -1).int()
    del disp
    km = KernelMap(
        geometry=geom,
        n_in=int(coords.shape[0]),
        out_coords=out_coords,
        out_spatial_shape=out_shape,
        in_coords=coords,
        identity_offset=geom.identity_offset,
        _out_in_map=m,
    )
    if not km.on_cpu:
        # pairs on the device: per-offset nonzero of the map's columns
        ins, outs, ptr = [], [], [0]
        for k in range(K):
            if k == km.identity_offset:
                ptr.append(ptr[-1])
                continue
            o = torch.nonzero(m[:, k] >= 0).flatten()
            ins.append(m[o, k])
            outs.append(o.int())
            ptr.append(ptr[-1] + int(o.shape[0]))
        empty = torch.empty(0, dtype=torch.int32, device=dev)
        km._pairs = (torch.cat(ins) if ins else empty, torch.cat(outs) if outs else empty, np.asarray(ptr, np.int64))
    km._extras["in_spatial_shape"] = spatial_shape
    return km


# --------------------------------------------------------------------------------------------------
# Cache shared by every tensor derived from one input
# --------------------------------------------------------------------------------------------------


class KernelMapCache:
    """Kernel maps keyed by (coordinate set, geometry), shared by all layers of a network pass.

    Layers at the same tensor stride share one coordinate tensor, so e.g. all 3x3x3 submanifold
    layers of a stage reuse one map. ``by_name`` registers maps under spconv-style ``indice_key``s so
    an inverse convolution can find the map of the strided layer it undoes.
    """

    def __init__(self) -> None:
        self._maps: dict[tuple, KernelMap] = {}
        self.by_name: dict[str, KernelMap] = {}
        self.builds = 0

    def get(
        self,
        coords: torch.Tensor,
        geometry: ConvGeometry,
        spatial_shape: Triple | None,
        backend: Backend = "auto",
    ) -> KernelMap:
        key = (id(coords), geometry.cache_key(), spatial_shape)
        km = self._maps.get(key)
        if km is None or km.in_coords is not coords:
            km = build_kernel_map(coords, geometry, spatial_shape, backend)
            self._maps[key] = km
            self.builds += 1
        return km

    def __len__(self) -> int:
        return len(self._maps)

    def maps(self) -> list[KernelMap]:
        return list(self._maps.values())
