"""ONNX export: per-offset pair lists (only existing pairs multiplied), ScatterND without reduction,
BEV inside the graph; ONNX Runtime equals PyTorch on frames other than the export frame; the
TensorRT 10.1 parser table check, including the 2^31-element limit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from engines.sparse import SparseConv3d, SparseInverseConv3d, SparseSequential, SubMConv3d, SparseTensor, to_bev
from engines.sparse.export import export_inputs, export_onnx, ort_session, run_onnxruntime
from engines.sparse.trt_onnx_table import SUPPORTED, TRT_VERSION, UNSUPPORTED
from engines.sparse.trt_ops import check_model, errors, op_histogram, stored_bounds
from engines.sparse.voxelize import voxelize_mean

from .conftest import kitti_points, random_sparse, rel_err


def _net() -> nn.Module:
    net = SparseSequential(
        SubMConv3d(4, 16, 3, bias=True),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        SparseConv3d(16, 32, 3, stride=2, padding=1, indice_key="d"),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        SubMConv3d(32, 32, 3),
        SparseInverseConv3d(32, 8, 3, indice_key="d"),
    )
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    net = _net()
    x = random_sparse(600, 4, shape=(16, 16, 8), batch=1, dtype=torch.float32, seed=51)
    return net, x, export_onnx(net, x)


def test_graph_gathers_only_pairs_and_is_trt_clean(exported) -> None:
    net, x, data = exported
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    ops = op_histogram(model)
    assert "ScatterND" in ops and not {"ScatterElements", "Scatter"} & set(ops)
    for node in model.graph.node:
        if node.op_type == "ScatterND":
            assert dict((a.name, a) for a in node.attribute).get("reduction") is None
    # pair-list inputs: SubM maps feed 13 offsets (identity needs none, mirrors reuse swapped lists),
    # strided/inverse maps 27 offsets plus their output coordinates
    names = [i.name for i in model.graph.input]
    assert names[0] == "features"
    assert sum(n.startswith("map_0_k") for n in names) == 2 * 13
    assert sum(n.startswith("map_1_k") for n in names) == 2 * 27 and "map_1_coords" in names
    # the rows the graph multiplies are exactly the map's pairs (the old export multiplied N_out x 27)
    feeds = export_inputs(net, x)
    mults = sum(len(v) for k, v in feeds.items() if k.endswith("_in"))
    rec_pairs = 0
    with torch.no_grad():
        fresh = SparseTensor(x.feats, x.coords, 1, x.spatial_shape)
        km0 = net[0].kernel_map(fresh)
    half = (km0.n_pairs - km0.n_out) // 2  # SubM: off-centre pairs, half of them fed
    rec_pairs += half
    assert sum(len(v) for k, v in feeds.items() if k.startswith("map_0_") and k.endswith("_in")) == rec_pairs
    assert mults < len(x) * 27
    assert errors(check_model(model)) == [] and check_model(model) == []


def test_onnxruntime_matches_pytorch_on_other_frames(exported) -> None:
    net, x0, data = exported
    sess = ort_session(data)
    for seed, n in [(52, 300), (53, 1500)]:  # other voxel counts than the export frame's 600
        x = random_sparse(n, 4, shape=(16, 16, 8), batch=1, dtype=torch.float32, seed=seed)
        with torch.no_grad():
            want = net(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats
        got = torch.from_numpy(run_onnxruntime(sess, export_inputs(net, x)))
        assert got.shape == want.shape and len(x) != len(x0)
        eps = torch.finfo(torch.float32).eps
        assert rel_err(got, want) < 64 * eps * 27  # fp32 sums of <= 27 products per layer, 4 layers


def test_subm_mirror_offsets_hold_swapped_pairs() -> None:
    x = random_sparse(700, 1, shape=(12, 12, 8), batch=1, dtype=torch.float32, seed=55)
    km = SubMConv3d(1, 1, 3).kernel_map(x)
    i, o, ptr = km.pairs_np()
    K = km.kernel_volume
    for k in range(K // 2):
        a = set(zip(i[ptr[k]:ptr[k + 1]].tolist(), o[ptr[k]:ptr[k + 1]].tolist()))
        m = K - 1 - k
        b = set(zip(o[ptr[m]:ptr[m + 1]].tolist(), i[ptr[m]:ptr[m + 1]].tolist()))
        assert a == b


def test_dim_bounds_flag_2pow31_tensors(exported) -> None:
    net, x, data = exported
    model = onnx.load_from_string(data)
    stored = stored_bounds(model)
    assert stored["n_in"] == 4 * len(x)  # default max_voxels: 4x the export frame
    # the same graph for 2^28 input voxels: every bound scales with max_voxels (grid caps aside)
    scale = 2**28 // stored["n_in"]
    big = {k: v * scale for k, v in stored.items()}
    flagged = errors(check_model(model, dim_bounds=big))
    # 2^28 voxels x 16 channels = 2^32 elements: the first layer's outputs cannot be held
    assert flagged and all(i.op_type == "tensor" and "2^31" in i.reason for i in flagged)
    assert any("n_in" in i.reason for i in flagged)
    assert check_model(model, dim_bounds={k: v * 10 for k, v in stored.items()}) == []


@pytest.mark.slow
def test_stem_with_bev_on_real_frames() -> None:
    """KITTI crops: export on a small one, run ONNX Runtime on a larger, different one (BEV in the graph)."""
    pts = kitti_points(0)

    def crop(x0: float, hw: float) -> SparseTensor:
        keep = (pts[:, 0] > x0) & (pts[:, 0] < x0 + 16) & (np.abs(pts[:, 1]) < hw) & (pts[:, 2] > -3) & (pts[:, 2] < 1)
        p = pts[keep] - np.array([x0, -8.0, -3.0, 0.0], np.float32)
        p = p[(p[:, 1] >= 0) & (p[:, 1] < 16)]
        st, _, _ = voxelize_mean(torch.from_numpy(p), 0.2, point_range=(0, 0, 0, 16, 16, 4))
        return SparseTensor(st.feats.float().contiguous(), st.coords, 1, st.spatial_shape, 1)

    torch.manual_seed(0)
    # SECOND-style stem: SubM, strided, SubM, then the height-collapsing (1, 1, 3)/(1, 1, 2) layer
    net = SparseSequential(
        SubMConv3d(4, 16, 3), nn.BatchNorm1d(16), nn.ReLU(),
        SparseConv3d(16, 32, 3, stride=2, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
        SubMConv3d(32, 32, 3), SparseConv3d(32, 24, (1, 1, 3), stride=(1, 1, 2)),
    ).eval()
    ex = crop(4.0, 3.0)
    data = export_onnx(net, ex, bev=True, max_voxels=150_000)
    model = onnx.load_from_string(data)
    assert errors(check_model(model)) == []
    assert "ScatterND" in op_histogram(model)
    for other in (crop(10.0, 6.0),):
        assert len(other) != len(ex)
        with torch.no_grad():
            want = to_bev(net(SparseTensor(other.feats, other.coords, 1, other.spatial_shape, 1)))
        got = torch.from_numpy(run_onnxruntime(data, export_inputs(net, other, bev=True)))
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-5


def test_trt_table_and_checker_rules() -> None:
    assert TRT_VERSION.startswith("10.") and "ScatterND" in SUPPORTED and "Unique" in UNSUPPORTED
    assert "AffineGrid" in UNSUPPORTED and "AffineGrid" not in SUPPORTED  # the old static list had it wrong
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [3, 1])
    u = helper.make_tensor_value_info("u", TensorProto.FLOAT, [3, 2])
    ax = helper.make_tensor_value_info("ax", TensorProto.INT64, [1])
    d = helper.make_tensor_value_info("d", TensorProto.DOUBLE, [4, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction="add", name="sc"),
        helper.make_node("Unique", ["y"], ["z"], name="uq"),
        helper.make_node("ScatterND", ["x", "i", "u"], ["w"], name="plain"),
        helper.make_node("Unsqueeze", ["x", "ax"], ["v"], name="dyn_axes"),
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.INT64, [1], [0]), name="k"),
        helper.make_node("Unsqueeze", ["x", "c"], ["v2"], name="const_axes"),
        helper.make_node("Relu", ["d"], ["dr"], name="dbl"),
        helper.make_node("Not", ["x"], ["nx"], name="not_float"),
        helper.make_node("MyOp", ["x"], ["q"], name="custom", domain="com.example"),
    ]
    g = helper.make_graph(nodes, "g", [x, i, u, ax, d], [y, z])
    issues = check_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    by = {(s.node, s.severity) for s in issues}
    assert ("sc", "error") in by and ("uq", "error") in by and ("dyn_axes", "error") in by
    assert ("not_float", "error") in by and ("custom", "error") in by and ("dbl", "warning") in by
    assert not {n for n, _ in by} & {"plain", "const_axes", "k"}
    old = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "g", [x], []),
                            opset_imports=[helper.make_opsetid("", 21)])
    assert any(s.op_type == "model" and "opset 21" in s.reason for s in check_model(old))
