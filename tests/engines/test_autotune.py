"""Tuning is offline: tune files (versioned, keyed on device model and shape buckets) and a live path
that looks choices up and never times a candidate, whatever voxel counts the frames bring."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.sparse import SparseTensor, SubMConv3d, run_dataflow
from engines.sparse.autotune import DATAFLOWS, Autotuner, candidates_for, candidates_timed_total
from engines.sparse.backbones import VoxelBackbone8x
from engines.sparse.tunefile import (
    VERSION,
    ShapeKey,
    TuneFile,
    configure,
    device_model,
    shape_key,
    sparse_conv_modules,
    static_default,
    tune_network,
    voxel_bucket,
)
from engines.sparse.voxelize import voxelize_mean

from .conftest import SHARED_DATA, kitti_points, random_sparse, rel_err


def _crop(points: np.ndarray, half_width: float) -> SparseTensor:
    """A real KITTI crop ahead of the car; its width sets the voxel count."""
    keep = (points[:, 0] > 4) & (points[:, 0] < 4 + 2 * half_width) & (np.abs(points[:, 1]) < half_width)
    st, _, _ = voxelize_mean(torch.from_numpy(points[keep]), 0.1)
    return SparseTensor(st.feats.float().contiguous(), st.coords, 1, st.spatial_shape)


def test_voxel_buckets_and_keys() -> None:
    assert [voxel_bucket(n) for n in (0, 1, 2, 3, 1000, 1448, 1449, 65536)] == [0, 0, 1, 2, 10, 10, 11, 16]
    x = random_sparse(800, 16, shape=(20, 20, 8), batch=1, dtype=torch.float32, seed=61)
    conv = SubMConv3d(16, 24, 3)
    key = shape_key(conv.weight, conv.kernel_map(x), x.feats.dtype)
    assert str(key) == "subm|k3x3x3|s1x1x1|c16x24|float32|n2^10"
    assert ShapeKey.parse(str(key)) == key
    with pytest.raises(ValueError, match="malformed"):
        ShapeKey.parse("subm|k3")
    # the device key names the hardware -- with family / model and vector ISA where /proc/cpuinfo has them,
    # since VMs give CPU generations with different best dataflows one name -- never the thread count
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "cpu family" in info:
        assert " (family " in device_model("cpu")
        flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "").split()
        assert ("AVX512" in device_model("cpu")) == ("avx512f" in flags)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = device_model("cpu")
        torch.set_num_threads(2)
        assert device_model("cpu") == a
    finally:
        torch.set_num_threads(n)


def test_offline_tuning_measures_and_round_trips(tmp_path) -> None:
    x = random_sparse(800, 16, shape=(20, 20, 8), batch=1, dtype=torch.float32, seed=61)
    conv = SubMConv3d(16, 16, 3).eval()
    km = conv.kernel_map(x)
    tf = TuneFile()
    tuner = Autotuner(tf.table(device_model("cpu")), measure=True, repeats=1)
    before = candidates_timed_total()
    out = tuner.run(x.feats, conv.weight.detach(), km)
    n_cand = len(candidates_for(x.device))
    assert tuner.candidates_timed == n_cand and candidates_timed_total() == before + n_cand
    key = shape_key(conv.weight, km, x.feats.dtype)
    entry = tf.devices[device_model("cpu")].entries[key]
    assert entry["dataflow"] in candidates_for(x.device) and set(entry["ms"]) == set(candidates_for(x.device))
    assert entry["dataflow"] == min(entry["ms"], key=entry["ms"].get)
    ref = DATAFLOWS["gather_scatter"](x.feats, conv.weight.detach(), km)
    assert rel_err(out, ref) < 1e-5

    path = tmp_path / "tune.json"
    tf.save(path)
    saved = json.loads(path.read_text())
    assert saved["version"] == VERSION and str(key) in saved["devices"][device_model("cpu")]["entries"]
    again = TuneFile.load(path)
    assert again.devices[device_model("cpu")].entries[key]["dataflow"] == entry["dataflow"]

    bad = dict(saved, version=VERSION + 1)
    (tmp_path / "v.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="version"):
        TuneFile.load(tmp_path / "v.json")
    bad = json.loads(path.read_text())
    bad["devices"][device_model("cpu")]["entries"][str(key)]["dataflow"] = "warp_drive"
    (tmp_path / "d.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unknown dataflow"):
        TuneFile.load(tmp_path / "d.json")


def test_lookup_exact_then_nearest_bucket_then_static_default() -> None:
    tf = TuneFile()
    t = tf.table(device_model("cpu"))
    base = ShapeKey("subm", (3, 3, 3), (1, 1, 1), 16, 16, "float32", 10)
    t.add(base, {"gather_scatter": 2.0, "implicit_gemm": 1.0})
    t.add(ShapeKey("subm", (3, 3, 3), (1, 1, 1), 16, 16, "float32", 14), {"gather_scatter": 1.0, "implicit_gemm": 3.0})
    assert t.lookup(base) == ("implicit_gemm", "exact")
    assert t.lookup(ShapeKey("subm", (3, 3, 3), (1, 1, 1), 16, 16, "float32", 11)) == ("implicit_gemm", "nearest")
    assert t.lookup(ShapeKey("subm", (3, 3, 3), (1, 1, 1), 16, 16, "float32", 13)) == ("gather_scatter", "nearest")
    # equidistant: the smaller bucket decides (a fixed rule, not dict order)
    assert t.lookup(ShapeKey("subm", (3, 3, 3), (1, 1, 1), 16, 16, "float32", 12)) == ("implicit_gemm", "nearest")
    other = ShapeKey("subm", (3, 3, 3), (1, 1, 1), 16, 32, "float32", 10)
    assert t.lookup(other) is None
    assert static_default(other, "cpu") in DATAFLOWS and static_default(other, "cuda") in DATAFLOWS
    # a second measurement of a bucket adds up: the lower total decides
    t.add(base, {"gather_scatter": 0.5, "implicit_gemm": 2.0})
    assert t.lookup(base) == ("gather_scatter", "exact") and t.entries[base]["samples"] == 2


@pytest.mark.slow
def test_configured_network_never_times_while_frames_vary(tmp_path) -> None:
    """Offline tune on one real crop; then crops of other sizes pass through and nothing is timed."""
    pts = kitti_points(0)
    tune_frame = _crop(pts, 6.0)
    torch.manual_seed(0)
    net = VoxelBackbone8x(4).eval()
    tf = tune_network(net, [tune_frame], repeats=1)
    path = tmp_path / "tune.json"
    tf.save(path)

    live = VoxelBackbone8x(4).eval()
    live.load_state_dict(net.state_dict())
    tuner = configure(live, path)
    assert tuner.device_known and not tuner.measure
    timed = candidates_timed_total()
    crops = [_crop(pts, hw) for hw in (6.0, 3.0, 12.0)]  # a few hundred voxels to ~4x the tuned frame
    with torch.no_grad():
        outs = [live(x) for x in crops]
    seen_buckets = {voxel_bucket(len(x)) for x in crops}
    # the same layers pinned to what the tuner says give the identical result (largest crop)
    x, y = crops[-1], outs[-1]
    choices: list[str] = []
    orig_run = tuner.run

    def spy(xf, w, km, epilogue=None):  # type: ignore[no-untyped-def]
        choices.append(tuner.choose(xf, w, km)[0])
        return orig_run(xf, w, km, epilogue)

    tuner.run = spy  # type: ignore[method-assign]
    with torch.no_grad():
        live(x)
    tuner.run = orig_run  # type: ignore[method-assign]
    pinned = VoxelBackbone8x(4).eval()
    pinned.load_state_dict(net.state_dict())
    for m, name in zip(sparse_conv_modules(pinned), choices):
        m.dataflow = name
    with torch.no_grad():
        assert torch.equal(pinned(x).feats, y.feats)
    assert candidates_timed_total() == timed and tuner.candidates_timed == 0
    assert len(seen_buckets) >= 3
    assert tuner.sources["exact"] > 0 and tuner.sources["nearest"] > 0


def test_default_auto_never_times() -> None:
    x = random_sparse(900, 8, shape=(20, 20, 8), batch=1, dtype=torch.float32, seed=63)
    conv = SubMConv3d(8, 8, 3).eval()
    timed = candidates_timed_total()
    tuner = Autotuner()  # no table: static defaults
    with torch.no_grad():
        y = run_dataflow("auto", x.feats, conv.weight, conv.kernel_map(x), tuner)
        ref = DATAFLOWS[static_default(shape_key(conv.weight, conv.kernel_map(x), x.feats.dtype), "cpu")](
            x.feats, conv.weight, conv.kernel_map(x))
    assert torch.equal(y, ref)
    assert candidates_timed_total() == timed and tuner.sources == {"default": 1}


def test_file_for_another_device_falls_back_to_static_defaults() -> None:
    tf = TuneFile()
    tf.table("cpu:Some Other CPU").add(ShapeKey("subm", (3, 3, 3), (1, 1, 1), 4, 16, "float32", 10),
                                       {"implicit_gemm": 1.0, "gather_scatter": 9.0})
    net = VoxelBackbone8x(4).eval()
    tuner = configure(net, tf)
    assert not tuner.device_known
    assert all(m.tuner is tuner for m in sparse_conv_modules(net))
    twin = copy.deepcopy(net)  # a configured network stays copyable (the tuner's lock is rebuilt)
    assert all(m.tuner is not tuner and not m.tuner.measure for m in sparse_conv_modules(twin))


def test_file_keyed_by_cpu_name_only_is_used_with_a_warning() -> None:
    """Tune files written before the key gained family / model / ISA (``cpu:<name>``) still configure a node,
    with a warning that the name may cover another CPU generation; the full key wins where both exist."""
    from engines.sparse.tunefile import cpu_name

    x = random_sparse(900, 4, seed=63, dtype=torch.float32)
    conv = SubMConv3d(4, 16, 3).eval()
    key = shape_key(conv.weight, conv.kernel_map(x), x.feats.dtype)
    tf = TuneFile()
    tf.table(f"cpu:{cpu_name()}").add(key, {"implicit_gemm": 1.0, "gather_scatter": 9.0})
    if device_model("cpu") == f"cpu:{cpu_name()}":
        pytest.skip("no /proc/cpuinfo family or flags here: the full key is the name-only key")
    with pytest.warns(UserWarning, match="CPU name only"):
        tuner = configure(conv, tf)
    assert tuner.device_known and tuner.choose(x.feats, conv.weight, conv.kernel_map(x)) == ("implicit_gemm", "exact")
    tf.table(device_model("cpu")).add(key, {"implicit_gemm": 9.0, "gather_scatter": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuner = configure(conv, tf)
    assert tuner.choose(x.feats, conv.weight, conv.kernel_map(x)) == ("gather_scatter", "exact")


def test_each_candidate_is_timed_from_the_maps_fresh_state(monkeypatch) -> None:
    """A candidate that needs a per-map preparation (the fused loop's sort of an unsorted map's pairs) pays
    it in every timed run, not only the first: what one candidate caches on the map is gone before the next
    is timed (on a warm map the fused loop looked 2x faster than it is on each new frame)."""
    seen = []

    def marker(x, w, km):
        km._extras["prepared_by_marker"] = True
        return DATAFLOWS["gather_scatter"](x, w, km)

    def probe(x, w, km):
        seen.append("prepared_by_marker" in km._extras)
        return DATAFLOWS["gather_scatter"](x, w, km)

    monkeypatch.setitem(DATAFLOWS, "marker", marker)
    monkeypatch.setitem(DATAFLOWS, "probe", probe)
    x = random_sparse(300, 4, seed=64, dtype=torch.float32)
    conv = SubMConv3d(4, 8, 3).eval()
    km = conv.kernel_map(x)
    tuner = Autotuner(measure=True, repeats=3, candidates=["marker", "probe"])
    with torch.no_grad():
        tuner.run(x.feats, conv.weight, km)
    assert seen == [True, False, False, False]  # warm-up after marker; every timed run from the fresh map


def test_unknown_dataflow_rejected() -> None:
    x = random_sparse(10, 2, seed=62)
    conv = SubMConv3d(2, 2, 3)
    with pytest.raises(ValueError, match="unknown dataflow"):
        run_dataflow("nope", x.feats, conv.weight, conv.kernel_map(x))


@pytest.mark.slow
def test_cli_tunes_the_centerpoint_encoder_for_a_node(tmp_path) -> None:
    """`engines tune --backbone centerpoint_encoder` covers the encoder's 128-channel layers, so a node running
    it configured from the file looks every layer up (no static default) and times nothing."""
    from engines.sparse.autotune import candidates_timed_total
    from engines.sparse.tunefile import _centerpoint_encoder, kitti_tuning_frames, pad_channels

    out = tmp_path / "cp.json"
    r = subprocess.run([sys.executable, "-m", "perception_nodes.cli", "engines", "tune", "--backbone",
                        "centerpoint_encoder", "--out", str(out), "--frames", "0", "--voxel-size", "0.4",
                        "--fractions", "1.0", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "not found" in r.stderr:
        pytest.skip(f"KITTI scan missing: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    table = TuneFile.load(out).devices[device_model("cpu")]
    keys = {str(k) for k in table.entries}
    assert any("|c128x128|" in k and k.startswith("subm") for k in keys)
    assert any("|c5x16|" in k for k in keys)  # KITTI's 4 channels zero-padded to CenterPoint's 5
    frame = pad_channels(kitti_tuning_frames(SHARED_DATA, [0], [0.4], [0.7]), 5)[0]
    net = _centerpoint_encoder(5, frame.spatial_shape).eval()
    tuner = configure(net, out)
    timed = candidates_timed_total()
    with torch.no_grad():
        net(frame)
    assert candidates_timed_total() == timed
    assert tuner.sources["default"] == 0 and tuner.sources["exact"] + tuner.sources["nearest"] > 0


def test_cli_engines_tune_writes_a_loadable_file(tmp_path) -> None:
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, "-m", "perception_nodes.cli", "engines", "tune", "--out", str(out),
                        "--frames", "0", "--voxel-size", "0.8", "--fractions", "1.0", "--repeats", "1"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "not found" in r.stderr:
        pytest.skip(f"KITTI scan missing: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    tf = TuneFile.load(out)
    table = tf.devices[device_model("cpu")]
    assert table.entries and table.measured_with["threads"] == 1
    h = subprocess.run([sys.executable, "-m", "perception_nodes.cli", "engines", "tune", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert h.returncode == 0 and "tune file" in h.stdout


def test_choices_are_remembered_per_device_type() -> None:
    """One process-wide tuner serves every network: a choice made for a CPU layer must not be reused for the
    same shape on a copy of the network on another device (the CPU's fused dataflow does not exist there)."""
    from engines.sparse import SubMConv3d
    x = random_sparse(300, 8, shape=(12, 12, 6), batch=1, seed=5)
    layer = SubMConv3d(8, 16, 3).eval()
    kmap = layer.kernel_map(x)
    tuner = Autotuner(measure=False)
    on_cpu = tuner.choose(x.feats, layer.weight, kmap)
    on_meta = tuner.choose(torch.empty(x.feats.shape, device="meta"), layer.weight, kmap)
    assert on_cpu[1] == on_meta[1] == "default"
    assert {dev for dev, _ in tuner._memo} == {"cpu", "meta"}  # two entries for one shape: one per device type
    assert tuner.choose(x.feats, layer.weight, kmap) == on_cpu
