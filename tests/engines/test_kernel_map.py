"""Kernel maps: the numba merge builder against an independent torch sort+searchsorted builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.sparse import ConvGeometry, SparseTensor, SubMConv3d, build_kernel_map
from engines.sparse.kernel_map import KernelMapCache

from .conftest import random_sparse

GEOMETRIES = [
    ConvGeometry("subm", (3, 3, 3)),
    ConvGeometry("subm", (5, 3, 1)),
    ConvGeometry("subm", (3, 3, 3), dilation=(2, 2, 2)),
    ConvGeometry("subm", (3, 3, 3), dilation=(3, 1, 3)),
    ConvGeometry("down", (3, 3, 3), (2, 2, 2), padding=(1, 1, 1)),
    ConvGeometry("down", (2, 2, 2), (2, 2, 2)),
    ConvGeometry("down", (1, 1, 3), (1, 1, 2)),
    ConvGeometry("down", (3, 3, 3), (2, 2, 2), padding=(1, 1, 1), mode="floor"),
    ConvGeometry("down", (3, 3, 3), (1, 1, 1), padding=(1, 1, 1), dilation=(3, 3, 3)),
    ConvGeometry("up", (3, 3, 3), (2, 2, 2), padding=(1, 1, 1), in_stride=(2, 2, 2)),
    ConvGeometry("up", (2, 2, 2), (2, 2, 2), in_stride=(2, 2, 2)),
]


def _coords_for(geom: ConvGeometry, n: int, seed: int) -> torch.Tensor:
    s = geom.in_stride[0]
    return random_sparse(n, 1, (10, 9, 7), batch=2, seed=seed, stride=s).coords


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: f"{g.kind}-{g.kernel_size}-{g.stride}-{g.dilation}-{g.mode}")
@pytest.mark.parametrize("shuffle", [False, True])
def test_numba_map_equals_torch_map(geom: ConvGeometry, shuffle: bool) -> None:
    coords = _coords_for(geom, 400, seed=1)
    if shuffle:
        coords = coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(2))]
    shape = (10 * geom.in_stride[0], 9 * geom.in_stride[0], 7 * geom.in_stride[0])
    shape = tuple(v // s for v, s in zip(shape, geom.in_stride))
    a = build_kernel_map(coords, geom, shape, backend="numba")
    b = build_kernel_map(coords, geom, shape, backend="torch")
    assert torch.equal(a.out_coords, b.out_coords)
    assert np.array_equal(a.out_in_map_np(), b.out_in_map().numpy())
    # both forms agree: every pair is an entry of the map and vice versa
    i, o, ptr = a.pairs_np()
    m = a.out_in_map_np()
    total = (m >= 0).sum() - (a.n_out if a.identity_offset >= 0 else 0)
    assert ptr[-1] == total
    for k in range(geom.kernel_volume):
        sl = slice(ptr[k], ptr[k + 1])
        assert np.array_equal(m[o[sl], k], i[sl])


def test_map_matches_brute_force_neighbours() -> None:
    x = random_sparse(150, 1, (6, 6, 6), batch=1, seed=4)
    geom = ConvGeometry("subm", (3, 3, 3))
    m = build_kernel_map(x.coords, geom).out_in_map_np()
    c = x.coords.numpy()
    lut = {tuple(r): j for j, r in enumerate(c.tolist())}
    disp = geom.displacements()
    for o in range(len(c)):
        for k in range(27):
            q = (c[o, 0], *(c[o, 1:] + disp[k]))
            assert m[o, k] == lut.get(tuple(int(v) for v in q), -1)


def test_generative_outputs_bounded_by_spatial_shape() -> None:
    x = random_sparse(300, 1, (8, 8, 8), batch=1, seed=5)
    geom = ConvGeometry("down", (3, 3, 3), (2, 2, 2), padding=(1, 1, 1))
    km = build_kernel_map(x.coords, geom, (8, 8, 8))
    ijk = km.out_coords[:, 1:] // 2
    assert km.out_spatial_shape == (4, 4, 4)
    assert int(ijk.min()) >= 0 and int(ijk.max()) <= 3
    assert bool((km.out_coords[:, 1:] % 2 == 0).all())


def test_floor_mode_is_unique_floor() -> None:
    x = random_sparse(200, 1, (9, 9, 9), batch=2, seed=6)
    geom = ConvGeometry("down", (2, 2, 2), (2, 2, 2), mode="floor")
    km = build_kernel_map(x.coords, geom)
    want = torch.unique(torch.cat([x.coords[:, :1], (x.coords[:, 1:] // 2) * 2], 1), dim=0)
    assert torch.equal(km.out_coords, want.int())


def test_inverse_map_swaps_pairs() -> None:
    x = random_sparse(200, 1, (9, 9, 9), batch=1, seed=7)
    km = build_kernel_map(x.coords, ConvGeometry("down", (3, 3, 3), (2, 2, 2), padding=(1, 1, 1)))
    inv = km.inverse()
    m = km.out_in_map_np()
    mi = inv.out_in_map_np()
    assert mi.shape == (len(x), 27)
    for o, k in zip(*np.nonzero(m >= 0)):
        assert mi[m[o, k], k] == o
    assert (mi >= 0).sum() == (m >= 0).sum()
    assert inv.inverse() is km


def test_duplicate_coordinates_rejected() -> None:
    c = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 2], [0, 1, 1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match="duplicate"):
        build_kernel_map(c, ConvGeometry("subm", (3, 3, 3)))


def test_empty_input() -> None:
    c = torch.zeros((0, 4), dtype=torch.int32)
    km = build_kernel_map(c, ConvGeometry("subm", (3, 3, 3)))
    assert km.n_out == 0 and km.out_in_map_np().shape == (0, 27)
    km = build_kernel_map(c, ConvGeometry("down", (3, 3, 3), (2, 2, 2), padding=(1, 1, 1)))
    assert km.n_out == 0


def test_cache_shares_maps_across_layers() -> None:
    x = random_sparse(300, 4, dtype=torch.float32, seed=8)
    a, b = SubMConv3d(4, 4, 3), SubMConv3d(4, 4, 3)
    with torch.no_grad():
        y = b(a(x))
    assert len(x.cache) == 1 and x.cache.builds == 1
    assert y.cache is x.cache
    cache = KernelMapCache()
    x2 = SparseTensor(x.feats, x.coords, 1, x.spatial_shape, cache=cache)
    with torch.no_grad():
        a(x2)
    assert cache.builds == 1 and x.cache.builds == 1


def test_even_kernel_submanifold_rejected() -> None:
    with pytest.raises(ValueError):
        ConvGeometry("subm", (2, 3, 3))


@pytest.mark.parametrize("sorted_input", [True, False])
def test_hashed_subm_pairs_equal_the_merge(sorted_input: bool) -> None:
    """The hash-table builder (kept to measure the merge against) finds exactly the same pairs."""
    from engines.sparse.kernel_map import build_subm_pairs_hashed

    x = random_sparse(900, 1, shape=(14, 12, 10), batch=2, seed=41, stride=2)
    coords = x.coords if not sorted_input else x.coords[torch.from_numpy(
        np.lexsort(x.coords.numpy().T[::-1].copy()))].contiguous()
    geom = ConvGeometry("subm", (3, 3, 3), in_stride=(2, 2, 2))
    km = build_kernel_map(coords, geom)
    i_ref, o_ref, ptr_ref = km.pairs_np()
    i_h, o_h, ptr_h = build_subm_pairs_hashed(coords, geom)
    assert np.array_equal(ptr_ref, ptr_h)
    for k in range(27):
        a = sorted(zip(i_ref[ptr_ref[k]:ptr_ref[k + 1]].tolist(), o_ref[ptr_ref[k]:ptr_ref[k + 1]].tolist()))
        b = sorted(zip(i_h[ptr_h[k]:ptr_h[k + 1]].tolist(), o_h[ptr_h[k]:ptr_h[k + 1]].tolist()))
        assert a == b, k
    assert ptr_ref[-1] > 0
