"""The whole LiDAR network under ONNX Runtime: one export, parity with PyTorch on real KITTI scans that
were not the export frame, empty scans, the export cache, unusable model files, the TensorRT op check.

Tolerance: every output is compared as max |ORT - torch| / max |torch| per tensor. Both sides compute
in float32 (eps = 1.2e-7) but sum in different orders (per-offset GatherND/MatMul/ScatterND against
this engine's gather-scatter; ORT's MLAS convolutions against oneDNN/ATen). The longest dot products
are K x C_in = 27 x 64 = 1728 (sparse 3^3 layers) and 9 x 128 (the head trunk), ~20 layers deep:
rounding grows as ~sqrt(L) eps per layer (4e-6 for L = 1728) and adds up over the layers to ~1e-4,
which is the 1e-4 the issue asks for. Observed: ~1e-6.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import onnx
import pytest
import torch

from engines.sparse.trt_onnx_table import TRT_VERSION
from engines.sparse.trt_ops import check_model, errors, op_histogram
from perception_nodes.models import LidarDetectionNet
from perception_nodes.models.onnx_export import OUTPUT_NAMES, example_points, export_network
from perception_nodes.models.onnx_runtime import OnnxRuntime
from perception_nodes.models.runtime import RuntimeUnavailable, make_runtime

from .conftest import SMALL_CONFIG

PARITY = 1e-4  # see the module docstring


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(want.double().abs().max())
    return float((got.double() - want.double()).abs().max()) / max(scale, 1e-30)


def _all_outputs(out) -> dict[str, torch.Tensor]:
    d = {"occupancy_evidence": out.occupancy_evidence, "class_alpha": out.class_alpha}
    for name, t in zip(("gamma", "nu", "alpha", "beta"), out.box):
        d[f"box_{name}"] = t
    for name, t in zip(("gamma", "nu", "alpha", "beta"), out.curvature):
        d[f"curvature_{name}"] = t
    assert list(d) == list(OUTPUT_NAMES)
    return d


def _assert_parity(got, want) -> dict[str, float]:
    g, w = _all_outputs(got), _all_outputs(want)
    errs = {}
    for k in w:
        assert g[k].shape == w[k].shape, k
        errs[k] = _rel(g[k], w[k])
    assert max(errs.values()) < PARITY, errs
    assert torch.equal(got.num_voxels, want.num_voxels)
    return errs


@contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def small_runtime(small_net, tmp_path_factory):
    cache = tmp_path_factory.mktemp("onnx_cache")
    with _threads(1):
        rt = OnnxRuntime(small_net, threads=1, cache_dir=cache)
    return rt


def test_parity_on_real_scans_that_were_not_the_export_frame(small_net, small_runtime, kitti_frames):
    rt = small_runtime
    assert rt.exported and rt.path.is_file()
    with torch.no_grad():
        st_export, _ = small_net.voxelize(example_points(small_net))
    counts = set()
    for pts, _ in kitti_frames:
        p = torch.from_numpy(pts)
        names: list[str] = []

        @contextmanager
        def stage(name: str):
            names.append(name)
            yield

        with _threads(1):
            got = rt.infer(p, stage)
            with torch.no_grad():
                want = small_net(p)
        _assert_parity(got, want)
        assert names == ["voxelize", "kernel_maps", "backbone+bev_net+heads"]
        n = int(want.num_voxels[0])
        assert n > 1000 and n != len(st_export)  # a real scan, not the traced one: the dynamic axes work
        counts.add(n)
        # the maps carry information: class evidence is not uniform over the grid
        assert float(got.class_alpha.std()) > 0
    assert len(counts) == len(kitti_frames)  # every frame a different voxel count, one graph


@pytest.mark.parametrize("scan", ["empty", "all_nan", "all_out_of_range"])
def test_scans_without_voxels_give_the_vacuous_output(small_net, small_runtime, scan):
    pts = {"empty": torch.zeros(0, 4), "all_nan": torch.full((100, 4), float("nan")),
           "all_out_of_range": torch.tensor([[500.0, 0.0, 0.0, 0.5]]).repeat(50, 1)}[scan]
    with _threads(1):
        got = small_runtime.infer(pts)
        with torch.no_grad():
            want = small_net(pts)
    assert int(got.num_voxels[0]) == 0
    _assert_parity(got, want)
    assert torch.all(got.class_alpha == 1) and torch.all(got.occupancy_evidence == 0)  # no evidence at all


def test_cache_is_reused_and_keyed_on_the_weights(small_net, small_runtime, tmp_path):
    cache = small_runtime.path.parent
    again = OnnxRuntime(small_net, threads=1, cache_dir=cache)
    assert not again.exported and again.path == small_runtime.path
    d = again.describe()
    assert d["runtime"] == "onnxruntime" and d["threads"] == 1 and d["file"] == str(small_runtime.path)
    assert d["providers"] == ["CPUExecutionProvider"]
    # another network (one weight changed) must not pick up this file
    other = LidarDetectionNet(SMALL_CONFIG).eval()
    other.load_state_dict(small_net.state_dict())
    with torch.no_grad():
        other.head_trunk[0].weight[0, 0, 0, 0] += 1.0
    with pytest.raises(RuntimeUnavailable, match="another network"):
        OnnxRuntime(other, onnx_path=small_runtime.path)


def test_unusable_model_files_raise_runtime_unavailable_with_the_reason(small_net, small_runtime, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(small_runtime.path.read_bytes()[:200_000])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(foreign))
    for path, reason in [(tmp_path / "missing.onnx", "cannot read"), (garbage, "cannot read|not a LiDAR"),
                         (truncated, "cannot read|not a LiDAR"), (foreign, "not a LiDAR-network export")]:
        with pytest.raises(RuntimeUnavailable, match=reason) as e:
            OnnxRuntime(small_net, onnx_path=path)
        assert str(path) in str(e.value)


def test_params_name_loads_the_runtime_on_first_use(small_runtime, small_net):
    # a fresh interpreter: runtime.py imports no optional runtime; make_runtime loads it by name
    code = ("from perception_nodes.models import runtime as r; assert 'onnxruntime' not in r.RUNTIMES; "
            "print(sorted(set(r.RUNTIMES) | set(r.RUNTIME_MODULES)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "onnxruntime" in out.stdout
    rt = make_runtime("onnxruntime", small_net, onnx_path=small_runtime.path, threads=1)
    assert isinstance(rt, OnnxRuntime) and rt.describe()["exported_now"] is False
    with pytest.raises(RuntimeUnavailable, match="unknown runtime"):
        make_runtime("no_such_runtime", small_net)


def test_whole_network_graph_passes_the_tensorrt_op_table(small_runtime):
    model = onnx.load(str(small_runtime.path))
    ops = op_histogram(model)
    # sparse layers as pair lists + ScatterND without reduction; dense BEV net and heads as Conv
    assert ops.get("ScatterND", 0) > 0 and ops.get("GatherND", 0) > 0 and ops.get("Conv", 0) > 0
    assert not {"ScatterElements", "Scatter", "Loop", "NonZero"} & set(ops)
    issues = check_model(model)
    assert errors(issues) == [], (TRT_VERSION, issues)
    inputs = [i.name for i in model.graph.input]
    assert inputs[:2] == ["features", "num_voxels"] and all(n.startswith("map_") for n in inputs[2:])
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)


@pytest.mark.slow
def test_default_config_parity_on_a_real_scan(lidar_net, kitti_frames, kitti_output, tmp_path):
    """The default network (whatever the config is today), exported and run on the first KITTI scan."""
    data = export_network(lidar_net, tmp_path / "net.onnx")
    assert len(data) > 0
    with _threads(1):
        rt = OnnxRuntime(lidar_net, threads=1, onnx_path=tmp_path / "net.onnx")
        got = rt.infer(torch.from_numpy(kitti_frames[0][0]))
    _assert_parity(got, kitti_output)
    assert errors(check_model(onnx.load(str(tmp_path / "net.onnx")))) == []


@pytest.mark.slow
def test_spatial_curvature_head_parity_on_a_real_scan(kitti_frames, tmp_path):
    """The curvature head that pools a P x P grid (curvature_pool > 1; an option, the packaged weights keep the
    global head) exports as a plain average pool and runs under ONNX Runtime within the same tolerance."""
    torch.manual_seed(0)
    net = LidarDetectionNet({**SMALL_CONFIG, "curvature_pool": 4}).eval()
    export_network(net, tmp_path / "net.onnx")
    pts = torch.from_numpy(kitti_frames[1][0])
    with _threads(1):
        rt = OnnxRuntime(net, threads=1, onnx_path=tmp_path / "net.onnx")
        got = rt.infer(pts)
        with torch.no_grad():
            want = net(pts)
    _assert_parity(got, want)
    assert float(want.curvature.gamma.abs().max()) > 0
    assert errors(check_model(onnx.load(str(tmp_path / "net.onnx")))) == []
