#!/usr/bin/env python3
"""Sparse convolution benchmark: our engine vs spconv 2.3.8 (CPU build), like for like, on real scans.

Prints progress lines, then ONE JSON object as the last line (keys described in docs/sparse_conv.md
and BENCHMARKS.md). Rules, the same for both engines:

* Inputs are real scans (KITTI 000000; the nuScenes keyframe of ../shared/data) voxelised as the
  upstream pipelines do: per-voxel mean (HardSimpleVFE), voxels in first-point order (the order
  mmdetection3d's / OpenPCDet's hard voxelisers emit), coordinates (b, z, y, x). Each timed call
  starts from those upstream tensors: our column swap, sorting and kernel maps are inside the
  timed region, as are spconv's index generation and its ``dense()`` for the BEV output.
* GEMM libraries differ, and that is part of what is compared: spconv 2.3.8's CPU path multiplies
  with ``torch.mm`` (MKL); ours picks per layer, offline, between dataflows that call MKL and the
  oneDNN ones (``engines/sparse/dataflow_onednn.py``). On an AMD CPU with AVX-512, MKL runs its AVX2
  path and oneDNN does not, so ``encoder_speedup_1t_mkl`` (ours without the oneDNN candidates, the
  same GEMM library as spconv) is reported beside the headline.
* Times are medians over interleaved repetitions (alternating engines so machine noise hits both),
  reported with the interquartile range; ratios are spconv_median / ours_median from the same run.
* Headline = BatchNorm unfolded on both sides and every layer its own pass on both sides (conv, BN,
  ReLU, residual add, as upstream runs them). ``ours_epilogue``: ours with BN (unfolded), residual add
  and ReLU as the convolution's epilogue, per tile inside the fused loop (``set_fuse(model,
  "epilogue")``, engines/sparse/epilogue.py) -- less work, not less arithmetic; spconv cannot do that.
  Second figure = BatchNorm folded into the conv on both sides (spconv's weights scaled and given a
  bias, its BN removed; ours as shipped: folded, bias, residual add and ReLU in the epilogue).
* 1 torch thread for both: spconv 2.3.8's CPU kernels are wrong at >= 2 threads (``spconv_thread_bug``).

Keys (new): encoder_speedup_1t (CenterPoint SparseEncoder, unfolded, gmean over inputs),
encoder_speedup_1t_epilogue (ours with the in-loop BN/residual/ReLU epilogue), encoder_speedup_1t_folded, encoder_speedup_1t_paired (median of per-repetition ratios), encoder_speedup_1t_previous (the same engine
tuned over the candidates it had before the fused dataflows, timed interleaved: before/after in one run),
encoder_speedup_1t_mkl (the same engine tuned without the oneDNN dataflows, every GEMM through MKL: the
engine before 3 Dec 2026, interleaved),
encoder_speedup_1t_tuned_elsewhere (ours unfolded, its tune table built on another real scan --
KITTI 000002 at the same voxel size and range -- and frozen before timing, as a node configured from a
tune file meets frames it was not tuned on; the headline's table is tuned on the timed input),
encoder_speedup_bound_at_gemm_floor (spconv time / time of one bare MKL ``torch.mm`` of all pairs per
convolution: kept for continuity, no bound -- small tiles run MKL faster than its 10^5-row GEMM, and the
oneDNN dataflows use another GEMM), encoder_speedup_1t_vs_upstream_keys (spconv as mmdetection3d defines
it: no indice_key in the residual blocks, so spconv rebuilds their maps), encoder (per input rows:
medians, IQRs, max_rel_err_vs_spconv), subm_layers (single SubMConv3d 3^3 at 16/32/64/128 channels
on the coordinates each encoder stage sees), subm_speedup_1t (gmean), backbone_speedup_1t (SECOND
VoxelBackBone8x, unfolded) and backbone_speedup_1t_folded, map_build_ms (ours sorted-merge vs a
hash-table build of the same map, and spconv's), max_rel_err_vs_dense, spconv_thread_bug;
with ``--floor`` only layer_floor (per convolution: fused / gather-scatter / bare-GEMM times).

Running the peer: spconv 2.3.8 is not in requirements (its dependency ``lark`` collides with the
``lark-parser`` of the ROS packages in .venv), so ``make bench-sparse`` installs it beside the venv:

    .venv/bin/pip install --target /tmp/spconv-site spconv==2.3.8
    rm -rf /tmp/spconv-site/numpy*            # keep the venv's numpy
    SPCONV_SITE=/tmp/spconv-site .venv/bin/python benchmarks/sparse_conv.py

It then runs in the same process as our engine. Without spconv the script still measures ours and
reports the ratios as null.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.sparse import SparseTensor, SubMConv3d, SparseConv3d, dense_weight  # noqa: E402
from engines.sparse.autotune import Autotuner, default_tuner, set_default_tuner  # noqa: E402
from engines.sparse.backbones import SparseEncoder, VoxelBackBone8x, set_fuse  # noqa: E402
from engines.sparse.geometry import ConvGeometry  # noqa: E402
from engines.sparse.kernel_map import build_kernel_map, build_subm_pairs_hashed  # noqa: E402
from engines.sparse.kitti import load_velodyne, velodyne_path  # noqa: E402
from engines.sparse.spconv_twins import (  # noqa: E402
    import_spconv,
    randomise_bn,
    spconv_sparse_encoder,
    spconv_voxel_backbone_8x,
)
from engines.sparse.tunefile import cpu_model  # noqa: E402
from engines.sparse.voxelize import voxelize_mean  # noqa: E402

NUSCENES_SCAN = "nuscenes_mmdet3d_demo/demo/data/nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"



def tuned(fn):
    """Call ``fn`` once with every dataflow candidate timed per layer shape (offline tuning, as
    ``perception-stack engines tune`` does), then leave a frozen tuner holding those choices: the timed
    calls only look up, as a configured node does (no tuning in the live path)."""
    t = Autotuner(default_tuner().table, measure=True)
    set_default_tuner(t)
    try:
        return fn()
    finally:
        set_default_tuner(Autotuner(t.table, measure=False))

# the CPU candidates before the fused dataflows (issue 9): "ours_previous" is the same engine tuned
# over these only, timed interleaved with the rest, so before/after come from one run
PREVIOUS_CPU_CANDIDATES = ["gather_scatter", "gather_scatter_blocked", "implicit_gemm", "implicit_gemm_sorted"]


def tuned_on(model: torch.nn.Module, fn, candidates=None):
    """Give ``model`` its own tuner (over ``candidates``, default all), tuned by one call of ``fn`` (the
    timed input or another one), then frozen: lookups only from here on. Returns ``fn``'s output."""
    from engines.sparse.tunefile import sparse_conv_modules

    t = Autotuner(measure=True, candidates=candidates)
    for m in sparse_conv_modules(model):
        m.tuner = t
    out = fn()
    t.measure = False
    return out


# the CPU candidates before the oneDNN dataflows (3 Dec 2026): "ours_mkl" is the engine as it was, every
# GEMM through MKL, timed interleaved with the rest
MKL_CPU_CANDIDATES = PREVIOUS_CPU_CANDIDATES + ["fused_gather_scatter", "fused_hybrid", "implicit_gemm_fused"]


def tuned_previous(model: torch.nn.Module, fn):
    """Like :func:`tuned`, but ``model`` gets its own tuner restricted to the previous candidates."""
    return tuned_on(model, fn, PREVIOUS_CPU_CANDIDATES)


def log(*a: object) -> None:
    print(*a, flush=True)


def spconv_version() -> str:
    try:
        from importlib.metadata import version

        return version("spconv")
    except Exception:
        try:
            import spconv

            return getattr(spconv, "__version__", "unknown")
        except Exception:
            return "missing"


# --------------------------------------------------------------------------------------------------
# data: upstream-style voxels (first-point order, (b, z, y, x))
# --------------------------------------------------------------------------------------------------


class Voxels:
    """A voxelised scan as the upstream pipelines hand it to the backbone."""

    def __init__(self, name: str, points: np.ndarray, voxel_size, point_range, channels: int) -> None:
        pts = torch.from_numpy(np.ascontiguousarray(points[:, :4]))
        if channels > pts.shape[1]:  # CenterPoint's 5th channel: time lag, 0 for a single sweep
            pts = torch.cat([pts, torch.zeros(len(pts), channels - pts.shape[1])], 1)
        st, p2v, grid = voxelize_mean(pts, voxel_size, point_range)
        # first-point order: voxel ids in the order the points reach them (hard voxelisation)
        valid = p2v >= 0
        first = torch.full((len(st),), len(p2v), dtype=torch.long)
        first.scatter_reduce_(0, p2v[valid], torch.nonzero(valid).flatten(), "amin")
        order = torch.argsort(first)
        self.name = name
        self.feats = st.feats[order].contiguous()
        self.coors = st.coords[order][:, [0, 3, 2, 1]].contiguous()  # (b, z, y, x)
        X, Y, Z = grid.spatial_shape
        self.shape_zyx = [Z + 1, Y, X]  # upstream sparse shape: one spare z cell (OpenPCDet grid_size[::-1] + [1, 0, 0])
        self.n = len(st)
        self.sorted_input = bool((order[1:] > order[:-1]).all()) if len(order) > 1 else True

    def ours(self) -> SparseTensor:
        """Our tensor from the upstream one (column swap inside the timed region)."""
        Z, Y, X = self.shape_zyx
        return SparseTensor(self.feats, self.coors[:, [0, 3, 2, 1]], 1, (X, Y, Z), 1)

    def spconv(self, spconv, feats: torch.Tensor | None = None):
        return spconv.SparseConvTensor(self.feats if feats is None else feats, self.coors, self.shape_zyx, 1)


def kitti(shared: Path, channels: int, voxel=(0.05, 0.05, 0.1), frame: int = 0) -> Voxels:
    pts = load_velodyne(velodyne_path(shared, frame))
    # SECOND / CenterPoint KITTI range -> sparse shape [41, 1600, 1408] at 0.05 x 0.05 x 0.1 m
    return Voxels(f"kitti_{frame:06d}_{voxel[0]}m", pts, voxel, (0, -40, -3, 70.4, 40, 1), channels)


def tuning_scan(shared: Path, like: Voxels, channels: int) -> Voxels | None:
    """Another real scan (KITTI 000002) voxelised like ``like`` (its voxel size and range), to tune on."""
    if not velodyne_path(shared, 2).exists():
        return None
    pts = load_velodyne(velodyne_path(shared, 2))
    if like.name.startswith("nuscenes"):
        return Voxels("kitti_000002_0.1m_nuscenes_range", pts, (0.1, 0.1, 0.2), (-51.2, -51.2, -5, 51.2, 51.2, 3), channels)
    return kitti(shared, channels, frame=2)


def nuscenes(shared: Path, channels: int, voxel=(0.1, 0.1, 0.2)) -> Voxels | None:
    p = shared / NUSCENES_SCAN
    if not p.exists():
        return None
    pts = np.fromfile(str(p), dtype="<f4").reshape(-1, 5)
    # CenterPoint nuScenes range -> sparse shape [41, 1024, 1024] at 0.1 x 0.1 x 0.2 m
    return Voxels(f"nuscenes_keyframe_{voxel[0]}m", pts, voxel, (-51.2, -51.2, -5, 51.2, 51.2, 3), channels)


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------


def interleaved(fns: dict, reps: int) -> dict:
    """Samples (ms) per function, alternating them so machine noise hits all alike."""
    samples: dict = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    return samples


def med(v: list[float]) -> float:
    return float(np.median(v))


def iqr(v: list[float]) -> list[float]:
    q1, q3 = np.percentile(v, [25, 75])
    return [round(float(q1), 2), round(float(q3), 2)]


def gmean(v: list[float]) -> float | None:
    v = [x for x in v if x is not None and x > 0]
    return float(math.exp(sum(math.log(x) for x in v) / len(v))) if v else None


class _AddBias(torch.nn.Module):
    """In-place bias add: what is left of a folded BN on spconv's CPU path, which rejects conv biases
    ("cpu don't support act and bias")."""

    def __init__(self, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.add_(self.shift)


def fold_spconv_bn(model: torch.nn.Module) -> torch.nn.Module:
    """spconv model with every conv -> BN pair folded: weights scaled, BN replaced by an in-place bias add."""

    def fold(conv, bn) -> _AddBias:
        scale = torch.rsqrt(bn.running_var + bn.eps) * bn.weight
        shift = bn.bias - bn.running_mean * scale
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))  # [C_out, kz, ky, kx, C_in]
        return _AddBias(shift.detach().clone())

    for m in list(model.modules()):
        names = dict(m.named_children())
        if "conv1" in names and "bn1" in names:
            m.bn1 = fold(m.conv1, m.bn1)
            m.bn2 = fold(m.conv2, m.bn2)
        elif "0" in names and "1" in names and isinstance(names["1"], torch.nn.BatchNorm1d):
            m._modules["1"] = fold(names["0"], names["1"])
    return model


def to_spconv(spconv, feats: torch.Tensor, coords: torch.Tensor, shape, batch: int = 1):
    """Our (b, x, y, z) tensor as spconv's (b, z, y, x) with spatial shape [Z, Y, X]."""
    idx = coords[:, [0, 3, 2, 1]].contiguous().int()
    return spconv.SparseConvTensor(feats.contiguous(), idx, [shape[2], shape[1], shape[0]], batch)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# --------------------------------------------------------------------------------------------------
# spconv thread bug
# --------------------------------------------------------------------------------------------------


def thread_bug(spconv, st: SparseTensor) -> dict:
    torch.manual_seed(0)
    feats = torch.randn(len(st), 32)
    conv = spconv.SubMConv3d(32, 32, 3, bias=False, indice_key="b").eval()
    ours = SubMConv3d(32, 32, 3, dataflow="gather_scatter").eval()
    with torch.no_grad():
        ours.weight.copy_(ours.weight)  # independent weights are fine: we compare runs, not engines
    shape = st.spatial_shape
    res: dict = {}
    with torch.no_grad():
        torch.set_num_threads(1)
        ref = conv(to_spconv(spconv, feats, st.coords, shape)).features.clone()
        ref_ours = ours(SparseTensor(feats, st.coords, 1, shape)).feats.clone()
        torch.set_num_threads(2)
        diffs, ours_diffs = [], []
        for _ in range(5):
            out = conv(to_spconv(spconv, feats, st.coords, shape)).features
            diffs.append(float((out - ref).abs().max()))
            o = ours(SparseTensor(feats, st.coords, 1, shape)).feats
            ours_diffs.append(float((o - ref_ours).abs().max()))
        torch.set_num_threads(1)
    scale = float(ref.abs().max())
    res["spconv_max_abs_diff_2t_vs_1t"] = max(diffs)
    res["spconv_rel_diff_2t_vs_1t"] = max(diffs) / scale
    res["spconv_runs_differing_at_2t"] = sum(d > 0 for d in diffs)
    res["spconv_wrong_at_2_threads"] = max(diffs) / scale > 1e-4
    res["ours_max_abs_diff_2t_vs_1t"] = max(ours_diffs)
    return res


# --------------------------------------------------------------------------------------------------
# CenterPoint SparseEncoder and SECOND VoxelBackBone8x
# --------------------------------------------------------------------------------------------------


def bench_encoder(spconv, vox: Voxels, reps: int, which: str = "centerpoint", tune_vox: Voxels | None = None) -> dict:
    """Whole backbone from upstream voxels to its output (BEV for the encoder), four ways."""
    torch.set_num_threads(1)
    torch.manual_seed(1)
    row: dict = {"input": vox.name, "voxels": vox.n, "sparse_shape_zyx": vox.shape_zyx}
    cin = vox.feats.shape[1]
    if which == "centerpoint":
        ours = SparseEncoder(cin, vox.shape_zyx).eval()
        twins = {} if spconv is None else {
            "spconv": spconv_sparse_encoder(spconv, cin, vox.shape_zyx, share_block_maps=True),
            "spconv_upstream_keys": spconv_sparse_encoder(spconv, cin, vox.shape_zyx, share_block_maps=False),
        }
    else:
        ours = VoxelBackBone8x(cin).eval()
        twins = {} if spconv is None else {"spconv": spconv_voxel_backbone_8x(spconv, cin)}
    if twins:
        randomise_bn(twins["spconv"], 7)
        for t in twins.values():
            t.load_state_dict(twins["spconv"].state_dict())
            t.eval()
        ours.load_state_dict(twins["spconv"].state_dict(), strict=True)
    else:
        randomise_bn(ours, 7)
    unfolded = set_fuse(copy.deepcopy(ours), False)  # conv, BN, ReLU, add: one pass each, as spconv
    epilogue = set_fuse(copy.deepcopy(ours), "epilogue")  # BN unfolded, applied inside the conv loop
    previous = copy.deepcopy(unfolded)  # same network, tuned over the pre-fused candidates only
    mkl_only = copy.deepcopy(unfolded)  # same network, tuned without the oneDNN candidates
    elsewhere = copy.deepcopy(unfolded) if tune_vox is not None else None  # tuned on another scan
    if twins:
        twins["spconv_folded"] = fold_spconv_bn(copy.deepcopy(twins["spconv"]))

    if which == "centerpoint":
        def run_ours(m, v=vox):
            return m(v.feats, v.coors, 1)

        def run_sp(m):
            return m(vox.feats, vox.coors, 1)
    else:
        def run_ours(m, v=vox):
            return m(v.ours())

        def run_sp(m):
            return m(vox.spconv(spconv))

    fns = {"ours": lambda: run_ours(unfolded), "ours_epilogue": lambda: run_ours(epilogue),
           "ours_folded": lambda: run_ours(ours), "ours_previous": lambda: run_ours(previous),
           "ours_mkl": lambda: run_ours(mkl_only)}
    if elsewhere is not None:
        fns["ours_tuned_elsewhere"] = lambda: run_ours(elsewhere)
    for name, t in twins.items():
        fns[name] = (lambda t=t: run_sp(t))
    with torch.no_grad():
        # warm-up (not timed): numba compile; ours tuned offline on this input, then frozen, as a node runs
        if elsewhere is not None:
            tuned_on(elsewhere, lambda: run_ours(elsewhere, tune_vox))
        outs = {k: (tuned_previous(previous, fn) if k == "ours_previous" else tuned_on(mkl_only, fn, MKL_CPU_CANDIDATES)
                    if k == "ours_mkl" else fn() if k == "ours_tuned_elsewhere"
                    else tuned(fn) if k.startswith("ours") else fn())
                for k, fn in fns.items()}
        if twins:
            if which == "centerpoint":
                row["max_rel_err_vs_spconv"] = rel_err(outs["ours"], outs["spconv"])
                row["max_rel_err_vs_spconv_folded"] = rel_err(outs["ours_folded"], outs["spconv_folded"])
                row["max_rel_err_epilogue_vs_spconv"] = rel_err(outs["ours_epilogue"], outs["spconv"])
            else:
                ref = outs["spconv"].dense()
                got = outs["ours"].dense(spatial_shape=tuple(ref.shape[2:][::-1])).permute(0, 1, 4, 3, 2)
                row["max_rel_err_vs_spconv"] = rel_err(got, ref)
        floor, gflop = gemm_floor(ours, run_ours)
        fns["gemm_floor"] = floor
        row["gflop"] = round(gflop, 2)
        samples = interleaved(fns, reps)
    row["sgemm_gflops"] = round(gflop / med(samples["gemm_floor"]) * 1e3, 1)
    for k, v in samples.items():
        row[f"{k}_ms"] = round(med(v), 2)
        row[f"{k}_iqr_ms"] = iqr(v)
    if twins:
        row["speedup"] = round(med(samples["spconv"]) / med(samples["ours"]), 3)
        row["speedup_folded"] = round(med(samples["spconv_folded"]) / med(samples["ours_folded"]), 3)
        row["speedup_epilogue"] = round(med(samples["spconv"]) / med(samples["ours_epilogue"]), 3)
        row["speedup_paired"] = round(med([a / b for a, b in zip(samples["spconv"], samples["ours"])]), 3)
        row["speedup_previous"] = round(med(samples["spconv"]) / med(samples["ours_previous"]), 3)
        row["speedup_mkl"] = round(med(samples["spconv"]) / med(samples["ours_mkl"]), 3)
        row["max_rel_err_mkl_vs_spconv"] = rel_err(outs["ours_mkl"], outs["spconv"]) if which == "centerpoint" else None
        if "ours_tuned_elsewhere" in samples:
            row["speedup_tuned_elsewhere"] = round(med(samples["spconv"]) / med(samples["ours_tuned_elsewhere"]), 3)
            row["max_rel_err_tuned_elsewhere_vs_spconv"] = rel_err(outs["ours_tuned_elsewhere"], outs["spconv"]) \
                if which == "centerpoint" else None
        # the best ratio any engine doing every pair's multiply-add could reach against this spconv time
        row["speedup_bound_at_gemm_floor"] = round(med(samples["spconv"]) / med(samples["gemm_floor"]), 3)
        if "spconv_upstream_keys" in samples:
            row["speedup_vs_upstream_keys"] = round(med(samples["spconv_upstream_keys"]) / med(samples["ours"]), 3)
    log(f"  {which} {vox.name}: {row}")
    return row


def gemm_floor(model: torch.nn.Module, run):
    """What the encoder's arithmetic alone costs: one sgemm per conv over all its pairs.

    Records (pairs, C_in, C_out) of every convolution in one run of ``model`` (fused, so one entry
    per conv) and returns a function that runs ``torch.mm`` of a [pairs, C_in] x [C_in, C_out]
    matrix for each -- the MKL call spconv's gather-scatter and our MKL dataflows end in, without any
    gather, scatter, map or BN -- plus the GFLOP count. It is no floor: the fused loop's small tiles run
    MKL faster than this one long GEMM, and the oneDNN dataflows use another, faster GEMM on AVX-512 AMD CPUs. It is timed interleaved with
    the engines, so it sees the same machine load.
    """
    import engines.sparse.conv as conv_mod

    shapes: list[tuple[int, int, int]] = []
    orig = conv_mod.sparse_conv

    def recording(x, weight, kmap, bias=None, dataflow="auto", tuner=None, epilogue=None):
        shapes.append((int(kmap.n_pairs), int(weight.shape[1]), int(weight.shape[2])))  # identity included
        return orig(x, weight, kmap, bias, dataflow, tuner, epilogue)

    conv_mod.sparse_conv = recording
    try:
        with torch.no_grad():
            run(model)
    finally:
        conv_mod.sparse_conv = orig
    mats = [(torch.randn(n, ci), torch.randn(ci, co)) for n, ci, co in shapes]

    def floor() -> None:
        for a, w in mats:
            torch.mm(a, w)

    return floor, sum(2 * n * ci * co for n, ci, co in shapes) / 1e9


def layer_floor(vox: Voxels, reps: int) -> dict:
    """Per convolution of the encoder: the fused dataflow and the chunked gather-scatter against the
    bare GEMMs of the convolution's exact multiply-adds at the fused loop's own GEMM sizes (per
    tile: the identity ``[rows, C_in]`` and, per offset, ``[pairs / tiles, C_in]`` by ``W[k]``),
    interleaved. ``fused / gemm`` is how far the convolutions are from their arithmetic floor."""
    import engines.sparse.conv as conv_mod
    from engines.sparse import dataflow_fused
    from engines.sparse.autotune import DATAFLOWS

    torch.set_num_threads(1)
    enc = SparseEncoder(vox.feats.shape[1], vox.shape_zyx).eval()
    calls: list = []
    orig = conv_mod.sparse_conv

    def rec(x, w, km, bias=None, dataflow="auto", tuner=None, epilogue=None):
        calls.append((x, w.detach(), km))
        return orig(x, w, km, bias, "gather_scatter", tuner, epilogue)

    conv_mod.sparse_conv = rec
    try:
        with torch.no_grad():
            enc(vox.feats, vox.coors, 1)
    finally:
        conv_mod.sparse_conv = orig
    rows_out, tot = [], {"fused": 0.0, "gather_scatter": 0.0, "gemm": 0.0}
    for x, w, km in calls:
        _, cin, cout = w.shape
        tiles = max(1, km.n_out // dataflow_fused._tile_rows(cin, cout, 0, 4))
        mats = [(torch.randn(max(1, round(s / tiles)), cin), w[k].contiguous())
                for k, s in enumerate(km.offset_sizes()) if s]
        mats = [(a, b, torch.empty(a.shape[0], cout)) for a, b in mats]

        def gemm(mats=mats, tiles=tiles) -> None:
            for a, b, c in mats:
                for _ in range(tiles):
                    torch.mm(a, b, out=c)

        fns = {"fused": lambda x=x, w=w, km=km: DATAFLOWS["fused_gather_scatter"](x, w, km),
               "gather_scatter": lambda x=x, w=w, km=km: DATAFLOWS["gather_scatter"](x, w, km), "gemm": gemm}
        with torch.no_grad():
            for fn in fns.values():
                fn()
            t = interleaved(fns, reps)
        m = {k: med(v) for k, v in t.items()}
        for k in tot:
            tot[k] += m[k]
        rows_out.append({"kind": km.geometry.kind, "cin": int(cin), "cout": int(cout), "n_out": km.n_out,
                         "gflop": round(2 * km.n_pairs * cin * cout / 1e9, 3), **{f"{k}_ms": round(v, 2) for k, v in m.items()},
                         "fused_over_gemm": round(m["fused"] / m["gemm"], 3)})
        log(f"  floor {vox.name}: {rows_out[-1]}")
    return {"input": vox.name, "layers": rows_out, "total_ms": {k: round(v, 1) for k, v in tot.items()},
            "fused_over_gemm": round(tot["fused"] / tot["gemm"], 3),
            "gather_scatter_over_gemm": round(tot["gather_scatter"] / tot["gemm"], 3),
            "gemm_gflops": round(sum(r["gflop"] for r in rows_out) / tot["gemm"] * 1e3, 1)}


# --------------------------------------------------------------------------------------------------
# single SubMConv3d layers on the coordinates each encoder stage sees
# --------------------------------------------------------------------------------------------------


def stage_coords(vox: Voxels) -> list[tuple[int, torch.Tensor, tuple]]:
    """(channels, upstream-style (b, z, y, x) coords in random order, spatial shape zyx) per stage."""
    enc = SparseEncoder(vox.feats.shape[1], vox.shape_zyx, return_middle_feats=True).eval()
    with torch.no_grad():
        _, middle = enc.forward_sparse(vox.ours())
    g = torch.Generator().manual_seed(0)
    out = []
    # stage i's residual blocks run at the input stride of stage i (stage outputs are strided)
    inputs = [vox.ours()] + middle[:-1]
    for ch, st in zip((16, 32, 64, 128), inputs):
        perm = torch.randperm(len(st), generator=g)
        s = torch.tensor(st.stride)
        zyx = (st.coords[perm][:, 1:] // s)[:, [2, 1, 0]]
        c = torch.cat([st.coords[perm][:, :1], zyx], 1).int().contiguous()
        X, Y, Z = st.spatial_shape
        out.append((ch, c, [Z, Y, X]))
    return out


def bench_subm(spconv, vox: Voxels, reps: int) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for ch, coors, shape_zyx in stage_coords(vox):
        torch.manual_seed(ch)
        n = len(coors)
        feats = torch.randn(n, ch)
        ours = SubMConv3d(ch, ch, 3).eval()
        Z, Y, X = shape_zyx
        fns = {"ours": lambda: ours(SparseTensor(feats, coors[:, [0, 3, 2, 1]], 1, (X, Y, Z), 1))}
        with torch.no_grad():
            # offline tuning on this layer's own input (not timed), in a table of its own: the process-wide
            # table holds the encoder's layers of the same shape key, whose input is sorted (the output of
            # our strided convs), while these coordinates are randomly permuted -- a different workload
            # for the dataflows that need pairs sorted by output row
            tuned_on(ours, fns["ours"])
            if spconv is not None:
                sp = spconv.SubMConv3d(ch, ch, 3, bias=False, indice_key="s").eval()
                sp2 = spconv.SubMConv3d(ch, ch, 3, bias=False, indice_key="s").eval()
                y_cached = sp(spconv.SparseConvTensor(feats, coors, shape_zyx, 1))
                fns["spconv"] = lambda: sp(spconv.SparseConvTensor(feats, coors, shape_zyx, 1))
                fns["spconv_cached_map"] = lambda: sp2(y_cached)
            t = interleaved(fns, reps)
        row = {"input": vox.name, "voxels": n, "channels": ch, "ours_ms": round(med(t["ours"]), 3),
               "ours_iqr_ms": iqr(t["ours"])}
        if spconv is not None:
            row["spconv_ms"] = round(med(t["spconv"]), 3)
            row["spconv_iqr_ms"] = iqr(t["spconv"])
            row["spconv_compute_only_ms"] = round(med(t["spconv_cached_map"]), 3)
            row["speedup"] = round(med(t["spconv"]) / med(t["ours"]), 3)
        rows.append(row)
        log(f"  subm {vox.name} {n} voxels {ch}->{ch}: {row}")
    return rows


def bench_map_build(spconv, vox: Voxels, reps: int) -> dict:
    """Submanifold 3^3 map at stride 1, upstream order: sorted merge (ours) vs hash table vs spconv."""
    torch.set_num_threads(1)
    Z, Y, X = vox.shape_zyx
    coords = vox.coors[:, [0, 3, 2, 1]].contiguous()
    sorted_coords = coords[torch.from_numpy(np.lexsort(coords.numpy().T[::-1].copy()))].contiguous()
    geom = ConvGeometry("subm", (3, 3, 3))
    fns = {
        "merge": lambda: build_kernel_map(coords, geom),
        "merge_presorted": lambda: build_kernel_map(sorted_coords, geom),
        "hash": lambda: build_subm_pairs_hashed(coords, geom),
        "hash_presorted": lambda: build_subm_pairs_hashed(sorted_coords, geom),
    }
    for fn in fns.values():
        fn()  # compile
    if spconv is not None:
        feats = torch.zeros(len(coords), 1)
        sp = spconv.SubMConv3d(1, 1, 3, bias=False).eval()
        fns["spconv_layer_1ch"] = lambda: sp(spconv.SparseConvTensor(feats, vox.coors, vox.shape_zyx, 1))
    with torch.no_grad():
        t = interleaved(fns, reps * 2)
    res = {k: round(med(v), 3) for k, v in t.items()}
    res["voxels"] = vox.n
    log(f"  map build {vox.name}: {res}")
    return res


# --------------------------------------------------------------------------------------------------
# correctness vs dense on a crop of the scan
# --------------------------------------------------------------------------------------------------


def dense_check(shared: Path) -> float:
    torch.set_num_threads(1)
    pts = load_velodyne(velodyne_path(shared, 0))
    keep = (pts[:, 0] > 4) & (pts[:, 0] < 12) & (np.abs(pts[:, 1]) < 4)
    st, _, grid = voxelize_mean(torch.from_numpy(pts[keep]), 0.1)
    shape = st.spatial_shape
    worst = 0.0
    torch.manual_seed(3)
    x = SparseTensor(torch.randn(len(st), 16, dtype=torch.float32), st.coords, 1, shape)
    d_in = x.dense()
    for layer, kw in [
        (SubMConv3d(16, 32, 3), dict(padding=1)),
        (SparseConv3d(16, 32, 3, stride=2, padding=1), dict(stride=2, padding=1)),
    ]:
        for df in ("gather_scatter", "implicit_gemm", "implicit_gemm_sorted"):
            layer.dataflow = df
            with torch.no_grad():
                y = layer(x)
                d = F.conv3d(d_in.double(), dense_weight(layer.weight.detach(), layer.kernel_size).double(), **kw)
            ijk = y.coords[:, 1:].long() // torch.tensor(y.stride)
            ref = d[y.coords[:, 0].long(), :, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
            worst = max(worst, float((y.feats.double() - ref).abs().max() / ref.abs().max()))
    return worst


# --------------------------------------------------------------------------------------------------
# GPU (when present)
# --------------------------------------------------------------------------------------------------


def bench_gpu(shared: Path, reps: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    from engines.sparse.autotune import DATAFLOWS

    res: dict = {"device": torch.cuda.get_device_name(0), "layers": []}
    for vs in (0.05, 0.1):
        st, _, _ = voxelize_mean(torch.from_numpy(load_velodyne(velodyne_path(shared, 0))), vs)
        for c in (16, 32, 64):
            torch.manual_seed(c)
            feats = torch.randn(len(st), c)
            conv = SubMConv3d(c, c, 3, dataflow="gather_scatter").eval()
            with torch.no_grad():
                ref = conv(SparseTensor(feats, st.coords, 1, st.spatial_shape)).feats
                xg = SparseTensor(feats.cuda(), st.coords.cuda(), 1, st.spatial_shape)
                km = xg.cache.get(xg.coords, conv.geometry(xg), xg.spatial_shape)
                for dtype in (torch.float32, torch.float16):
                    for name in ("gather_scatter", "implicit_gemm", "implicit_gemm_sorted"):
                        f = xg.feats.to(dtype)
                        w = conv.weight.detach().cuda().to(dtype)
                        DATAFLOWS[name](f, w, km)
                        torch.cuda.synchronize()
                        best = math.inf
                        for _ in range(reps):
                            t0 = time.perf_counter()
                            o = DATAFLOWS[name](f, w, km)
                            torch.cuda.synchronize()
                            best = min(best, time.perf_counter() - t0)
                        err = float((o.float().cpu() - ref).abs().max() / ref.abs().max())
                        res["layers"].append({"voxel_m": vs, "channels": c, "dtype": str(dtype), "dataflow": name,
                                              "ms": round(best * 1e3, 3), "max_rel_err_vs_cpu": err})
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                build_kernel_map(xg.coords, conv.geometry(xg))
                torch.cuda.synchronize()
                res.setdefault("map_build_ms", {})[f"{vs}m"] = round((time.perf_counter() - t0) * 1e3, 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="folder holding kitti_object_vis/")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions per measurement (median reported)")
    ap.add_argument("--quick", action="store_true", help="encoder only (no SubM layers, SECOND, dense check)")
    ap.add_argument("--floor", action="store_true",
                    help="only the per-convolution floor: fused and gather-scatter vs the bare GEMMs of the exact multiply-adds")
    args = ap.parse_args()
    shared = Path(args.shared)
    if not velodyne_path(shared, 0).exists():
        print(json.dumps({"error": f"KITTI scan not found under {shared}"}))
        sys.exit(1)
    spconv = import_spconv()
    log(f"spconv: {spconv_version() if spconv else 'not available (ratios will be null)'}")
    torch.set_num_threads(1)
    result: dict = {
        "torch": torch.__version__,
        "spconv": spconv_version() if spconv else None,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": 1,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_start": os.getloadavg()[0],
        "timing": "median of interleaved repetitions, IQR = [q1, q3] in ms; upstream voxel order; sorting timed",
        "reps": args.reps,
    }
    inputs5 = [kitti(shared, 5)]
    nus = nuscenes(shared, 5)
    if nus is not None:
        inputs5.append(nus)
    result["inputs"] = {v.name: {"voxels": v.n, "sparse_shape_zyx": v.shape_zyx} for v in inputs5}
    if args.floor:
        result["layer_floor"] = [layer_floor(v, args.reps) for v in inputs5]
        result["load_avg_end"] = os.getloadavg()[0]
        print(json.dumps(result))
        return
    if spconv is not None and not args.quick:
        st, _, _ = voxelize_mean(torch.from_numpy(load_velodyne(velodyne_path(shared, 0))), 0.1)
        result["spconv_thread_bug"] = thread_bug(spconv, st)
        log(f"  thread bug: {result['spconv_thread_bug']}")
    enc = [bench_encoder(spconv, v, args.reps, tune_vox=tuning_scan(shared, v, 5)) for v in inputs5]
    result["encoder"] = enc
    ok = spconv is not None
    result["encoder_speedup_1t"] = gmean([r["speedup"] for r in enc]) if ok else None
    result["encoder_speedup_1t_folded"] = gmean([r["speedup_folded"] for r in enc]) if ok else None
    result["encoder_speedup_1t_epilogue"] = gmean([r["speedup_epilogue"] for r in enc]) if ok else None
    result["encoder_speedup_1t_paired"] = gmean([r["speedup_paired"] for r in enc]) if ok else None
    result["encoder_speedup_1t_previous"] = gmean([r["speedup_previous"] for r in enc]) if ok else None
    result["encoder_speedup_1t_mkl"] = gmean([r["speedup_mkl"] for r in enc]) if ok else None
    result["encoder_speedup_1t_tuned_elsewhere"] = gmean([r["speedup_tuned_elsewhere"] for r in enc
                                                          if "speedup_tuned_elsewhere" in r]) if ok else None
    result["encoder_speedup_bound_at_gemm_floor"] = gmean([r["speedup_bound_at_gemm_floor"] for r in enc]) if ok else None
    result["encoder_speedup_1t_vs_upstream_keys"] = gmean([r["speedup_vs_upstream_keys"] for r in enc]) if ok else None
    if not args.quick:
        layers = [row for v in inputs5 for row in bench_subm(spconv, v, args.reps)]
        result["subm_layers"] = layers
        result["subm_speedup_1t"] = gmean([r["speedup"] for r in layers]) if ok else None
        result["map_build_ms"] = {v.name: bench_map_build(spconv, v, args.reps) for v in inputs5}
        second = bench_encoder(spconv, kitti(shared, 4), args.reps, which="second")
        result["backbone"] = [second]
        result["backbone_speedup_1t"] = second.get("speedup")
        result["backbone_speedup_1t_folded"] = second.get("speedup_folded")
        result["max_rel_err_vs_dense"] = dense_check(shared)
        result["gpu"] = bench_gpu(shared, args.reps)
    result["autotune_choices"] = default_tuner().choices
    result["load_avg_end"] = os.getloadavg()[0]  # > ~1 on this 2-core machine: other processes were running
    print(json.dumps(result))


if __name__ == "__main__":
    main()
