"""Results do not depend on the thread count: each dataflow, the map builder, whole networks with a
pinned dataflow, and `dataflow="auto"` (static defaults and a tune file with mixed choices). Bitwise, except the
dataflows whose reduction is one BLAS call: there to float32 rounding of the reduction, since the BLAS may block
it by thread count on some CPUs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.sparse import SparseTensor, SubMConv3d, SparseConv3d, build_kernel_map, ConvGeometry
from engines.sparse.backbones import VoxelBackbone8x

from .conftest import DATAFLOWS, random_sparse


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("dataflow", ["gather_scatter", "gather_scatter_blocked", "implicit_gemm", "implicit_gemm_sorted",
                                      "fused_gather_scatter", "fused_hybrid", "implicit_gemm_fused",
                                      "onednn_gather_scatter", "onednn_blocked"])
def test_dataflow_bitwise_identical_across_threads(dataflow: str, restore_threads) -> None:
    x = random_sparse(6000, 32, shape=(40, 40, 12), batch=1, dtype=torch.float32, seed=21)
    conv = SubMConv3d(32, 48, 3, dataflow=dataflow).eval()
    down = SparseConv3d(48, 32, 3, stride=2, padding=1, dataflow=dataflow).eval()
    outs = []
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        fresh = SparseTensor(x.feats, x.coords, 1, x.spatial_shape)
        with torch.no_grad():
            outs.append(down(conv(fresh)).feats)
    if dataflow not in BLAS_REDUCED:
        for o in outs[1:]:
            assert torch.equal(o, outs[0])
        return
    # these run each output's whole reduction in one BLAS sgemm, whose blocking may follow the thread count (bitwise
    # equal on the AMD EPYC this was written on, not on an Intel Xeon with AVX-512): equal to float32 rounding of
    # the longest reduction (27 taps x 48 channels), twice (conv, then down)
    k = 27 * 48
    tol = 2 * k * torch.finfo(torch.float32).eps * float(outs[0].abs().max())
    for o in outs[1:]:
        assert float((o - outs[0]).abs().max()) <= tol
    # and the same thread count gives the same bits
    assert torch.equal(outs[2], outs[0]) and torch.equal(outs[3], outs[1])


#: dataflows whose per-output reduction is one BLAS sgemm (see the test above)
BLAS_REDUCED = ("implicit_gemm", "implicit_gemm_sorted")


@pytest.mark.parametrize("kind", ["subm", "down"])
def test_map_identical_across_threads(kind: str, restore_threads) -> None:
    x = random_sparse(5000, 1, shape=(30, 30, 10), batch=2, seed=22)
    geom = ConvGeometry(kind, (3, 3, 3), (1, 1, 1) if kind == "subm" else (2, 2, 2), padding=(1, 1, 1))
    torch.set_num_threads(1)
    a = build_kernel_map(x.coords, geom).out_in_map_np()
    torch.set_num_threads(2)
    b = build_kernel_map(x.coords, geom).out_in_map_np()
    assert np.array_equal(a, b)


def test_backbone_identical_across_threads(restore_threads) -> None:
    x = random_sparse(4000, 4, shape=(48, 48, 16), batch=1, dtype=torch.float32, seed=23)
    torch.manual_seed(0)
    net = VoxelBackbone8x(4, dataflow="gather_scatter").eval()
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            outs.append(net(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats)
    assert torch.equal(outs[0], outs[1])


def _mixed_tune_file(net, x) -> "TuneFile":
    """A tune file whose choices differ per layer (so `auto` exercises several dataflows)."""
    from engines.sparse.autotune import call_dataflow
    from engines.sparse.tunefile import TuneFile, device_model, shape_key, sparse_conv_modules

    tf = TuneFile()
    table = tf.table(device_model("cpu"))
    names = ["implicit_gemm", "gather_scatter_blocked", "implicit_gemm_sorted", "gather_scatter",
             "fused_gather_scatter", "fused_hybrid", "implicit_gemm_fused", "onednn_gather_scatter", "onednn_blocked"]
    keys = []

    class _Collect:
        measure = False

        def run(self, xf, w, km, epilogue=None):
            keys.append(shape_key(w, km, xf.dtype))
            return call_dataflow("gather_scatter", xf, w, km, epilogue)

    for m in sparse_conv_modules(net):
        m.tuner = _Collect()
    with torch.no_grad():
        net(SparseTensor(x.feats, x.coords, 1, x.spatial_shape))
    for i, k in enumerate(dict.fromkeys(keys)):
        table.add(k, {n: (1.0 if n == names[i % len(names)] else 2.0) for n in names})
    return tf


@pytest.mark.parametrize("tuned", [False, True], ids=["static-default", "tune-file"])
def test_auto_backbone_identical_across_threads(tuned: bool, restore_threads) -> None:
    """`auto` picks by tune file + shape, never by thread count: same dataflows, same bits at 1 and 2 threads."""
    from engines.sparse.autotune import candidates_timed_total
    from engines.sparse.tunefile import configure

    x = random_sparse(4000, 4, shape=(48, 48, 16), batch=1, dtype=torch.float32, seed=24)
    torch.manual_seed(0)
    net = VoxelBackbone8x(4, dataflow="auto").eval()
    tuner = configure(net, _mixed_tune_file(net, x) if tuned else None)
    timed = candidates_timed_total()
    outs, picks = [], []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        tuner.sources.clear()
        with torch.no_grad():
            outs.append(net(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats)
        picks.append(dict(tuner._memo))
        assert set(tuner.sources) == {"exact" if tuned else "default"}
    assert candidates_timed_total() == timed
    assert picks[0] == picks[1] == picks[2]
    if tuned:
        assert len({name for name, _ in picks[0].values()}) >= 3
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_onednn_few_rows_wide_channels_identical_across_threads(restore_threads, monkeypatch) -> None:
    """The oneDNN dataflows at shapes unlike the test above (few rows, 128 channels in and out), checked to
    run on oneDNN: the same bits at 1 and 2 threads."""
    from engines.sparse import dataflow_onednn as od

    if not od.available():
        pytest.skip("torch built without oneDNN (mkldnn): the oneDNN dataflows run as gather-scatter there")
    real, calls = od._linear(), []

    def counting(*a):
        calls.append(a[0].shape)
        return real(*a)

    monkeypatch.setattr(od, "_linear", lambda: counting)
    x = random_sparse(90, 128, shape=(6, 6, 4), batch=1, dtype=torch.float32, seed=25)
    for name in ("onednn_gather_scatter", "onednn_blocked"):
        conv = SubMConv3d(128, 128, 3, dataflow=name).eval()
        outs = []
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(conv(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats)
        for o in outs[1:]:
            assert torch.equal(o, outs[0])
    assert len(calls) >= 2 * 4 * 2  # every run multiplied on oneDNN (identity + other offsets)
