"""ONNX export: Gather + MatMul only, no TensorRT-unsupported ops, ONNX Runtime equals PyTorch."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from engines.sparse import SparseConv3d, SparseInverseConv3d, SparseSequential, SubMConv3d, SparseTensor
from engines.sparse.export import export_inputs, export_onnx, run_onnxruntime
from engines.sparse.trt_ops import check_model, op_histogram

from .conftest import random_sparse, rel_err


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


def test_exported_ops_are_gather_matmul_and_trt_clean(exported) -> None:
    _, _, data = exported
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    ops = op_histogram(model)
    assert ops["Gather"] == 4 and ops["MatMul"] == 4
    assert not {"ScatterND", "ScatterElements", "Scatter"} & set(ops)
    assert check_model(model) == []


def test_onnxruntime_matches_pytorch_on_new_inputs(exported) -> None:
    net, _, data = exported
    for seed, n in [(52, 600), (53, 900)]:
        x = random_sparse(n, 4, shape=(16, 16, 8), batch=1, dtype=torch.float32, seed=seed)
        with torch.no_grad():
            want = net(SparseTensor(x.feats, x.coords, 1, x.spatial_shape)).feats
        got = torch.from_numpy(run_onnxruntime(data, export_inputs(net, x)))
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-4


def test_missing_neighbours_point_at_zero_row(exported) -> None:
    net, x, _ = exported
    feeds = export_inputs(net, x)
    m0 = feeds["map_0"]
    assert m0.dtype.name == "int64" and m0.min() >= 0 and m0.max() == len(x)


def test_trt_check_flags_scatter_add_and_unknown_ops() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [3, 1])
    u = helper.make_tensor_value_info("u", TensorProto.FLOAT, [3, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction="add", name="sc"),
        helper.make_node("Unique", ["y"], ["z"], name="uq"),
        helper.make_node("ScatterND", ["x", "i", "u"], ["w"], name="plain"),
    ]
    g = helper.make_graph(nodes, "g", [x, i, u], [y, z])
    issues = check_model(helper.make_model(g))
    names = {(s.node, s.op_type) for s in issues}
    assert ("sc", "ScatterND") in names and ("uq", "Unique") in names
    assert ("plain", "ScatterND") not in names
