"""The LiDAR network's fast inference path against its reference path (``net.fast_path = False``).

The fast path changes how things are computed, never what: the compiled voxelisation must give the same
voxels in the same order with the same means; the fused BEV net and heads (BatchNorm folded into the
convs, transposed convs as one matrix product, the 1 x 1 heads as one product, direct BEV scatter) must
agree with the reference to float32 rounding.

Tolerances: voxel coordinates exactly; voxel means are float64 sums of float32 points divided in
float64 and rounded to float32 in both paths, so they agree to one float32 rounding (|d| <= eps |x|).
Network outputs: per tensor max |fast - ref| / max |ref| < 1e-4, the float32 bound of
tests/models/test_onnx_runtime.py (dot products up to 9 x 128 terms in the dense part, ~10 layers,
re-associated by folding and fusion: ~sqrt(L) eps per layer); observed ~1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.models import LidarDetectionNet
from perception_nodes.models.voxelize import MAX_TABLE_CELLS, voxelize_scans

from .conftest import SMALL_CONFIG, TEST_CONFIG

EPS32 = float(np.finfo(np.float32).eps)


def _assert_same_voxels(net: LidarDetectionNet, scans) -> None:
    with torch.inference_mode():
        fast, n_fast = net.voxelize(scans)
        ref, n_ref = net.voxelize_reference(scans)
    assert torch.equal(fast.coords, ref.coords)
    assert torch.equal(n_fast, n_ref)
    assert fast.feats.dtype == ref.feats.dtype == torch.float32
    tol = EPS32 * ref.feats.abs().clamp_min(1e-30)
    assert bool(((fast.feats - ref.feats).abs() <= tol).all())
    assert fast.spatial_shape == ref.spatial_shape and fast.batch_size == ref.batch_size
    assert fast.stride == ref.stride


def test_voxelize_matches_reference_on_kitti(lidar_net, kitti_frames):
    """Real 115-127k-point scans, one at a time and as a batch of three (keys carry the scan index)."""
    assert lidar_net.fast_path
    scans = [torch.from_numpy(p) for p, _ in kitti_frames]
    for p in scans:
        _assert_same_voxels(lidar_net, p)
    _assert_same_voxels(lidar_net, scans)


def test_voxelize_edge_cases_match_reference(small_net):
    """Crop borders (lo inside, hi outside), non-finite rows, empty scans in a batch, far points."""
    cfg = small_net.config
    lo, hi = np.asarray(cfg.point_range[:3]), np.asarray(cfg.point_range[3:])
    rng = np.random.default_rng(3)
    p = rng.uniform(lo - 2.0, hi + 2.0, size=(5000, 3))
    border = np.array([[lo[0], lo[1], lo[2]], [hi[0], 0.0, 0.0], [0.0, hi[1], 0.0], [0.0, 0.0, hi[2]],
                       [np.nextafter(hi[0], -np.inf), np.nextafter(hi[1], -np.inf), np.nextafter(hi[2], -np.inf)],
                       [0.0, 0.0, 0.0], [1e30, 0.0, 0.0], [-1e30, 0.0, 0.0]])
    p = np.concatenate([p, border])
    pts = np.concatenate([p, rng.uniform(0, 1, size=(len(p), 1))], 1).astype(np.float32)
    pts[7, 0] = np.nan
    pts[11, 2] = np.inf
    pts[13, 3] = np.nan  # NaN intensity on a finite point: dropped as the reference drops it
    pts = np.concatenate([pts, rng.normal(size=(len(pts), 2)).astype(np.float32)], 1)  # extra columns ignored
    t = torch.from_numpy(pts)
    _assert_same_voxels(small_net, t)
    _assert_same_voxels(small_net, [t, torch.zeros(0, 4), t[::3]])
    _assert_same_voxels(small_net, torch.full((10, 4), float("nan")))
    _assert_same_voxels(small_net, torch.zeros(0, 4))


def test_voxelize_intensity_scale_matches_reference():
    net = LidarDetectionNet({**SMALL_CONFIG, "intensity_scale": 255.0}).eval()
    rng = np.random.default_rng(4)
    pts = np.concatenate([rng.uniform(-10, 10, (3000, 3)), rng.uniform(0, 255, (3000, 1))], 1).astype(np.float32)
    _assert_same_voxels(net, torch.from_numpy(pts))


def test_voxelize_large_grid_falls_back_to_reference():
    """A grid too large for the dense key table: ``voxelize_scans`` declines, the net uses the reference."""
    pr = (-80.0, -80.0, -3.0, 80.0, 80.0, 5.0)
    vs = (0.05, 0.05, 0.1)
    assert 3200 * 3200 * 80 > MAX_TABLE_CELLS
    assert voxelize_scans(np.zeros((1, 4), np.float32), None, 1, vs, pr) is None
    torch.manual_seed(0)
    net = LidarDetectionNet({**TEST_CONFIG, "point_range": list(pr), "voxel_size": list(vs)}).eval()
    pts = torch.from_numpy(np.random.default_rng(5).uniform(-20, 20, (2000, 4)).astype(np.float32))
    _assert_same_voxels(net, pts)


def test_voxelize_rejects_bad_shapes(small_net):
    with pytest.raises(ValueError, match=r"\[N, >= 4\]"):
        small_net.voxelize(torch.zeros(10, 3))


# ---- the dense part: BEV scatter, BEV net, heads, whole network ----------------------------------

PARITY = 1e-4  # see the module docstring


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(want.double().abs().max())
    return float((got.double() - want.double()).abs().max()) / max(scale, 1e-30)


def _outputs(out) -> dict[str, torch.Tensor]:
    d = {"occupancy_evidence": out.occupancy_evidence, "class_alpha": out.class_alpha,
         "num_voxels": out.num_voxels}
    for name, a in (("box", out.box), ("curvature", out.curvature)):
        for field, t in zip(("gamma", "nu", "alpha", "beta"), a):
            d[f"{name}_{field}"] = t
    return d


def _run(net: LidarDetectionNet, points, fast: bool):
    was = net.fast_path
    net.fast_path = fast
    try:
        with torch.inference_mode():
            return net(points)
    finally:
        net.fast_path = was


def _assert_network_parity(net: LidarDetectionNet, points) -> dict[str, float]:
    fast, ref = _outputs(_run(net, points, True)), _outputs(_run(net, points, False))
    errs = {}
    for k, want in ref.items():
        got = fast[k]
        assert got.shape == want.shape and got.dtype == want.dtype, k
        assert bool(torch.isfinite(got).all()), k
        errs[k] = _rel(got, want)
    assert torch.equal(fast["num_voxels"], ref["num_voxels"])
    assert max(errs.values()) < PARITY, errs
    return errs


@pytest.fixture(scope="module")
def packaged_net():
    from perception_nodes.models.weights_io import load_lidar_detection

    net, _ = load_lidar_detection(None)
    return net.eval()


def test_network_matches_reference_on_kitti_with_packaged_weights(packaged_net, kitti_frames):
    """The packaged (trained, BatchNorms with real statistics) network on the real scans: the largest
    alone, the other two as a batch; decoded boxes are the same boxes."""
    from perception_nodes.models.decode import decode_batch

    _assert_network_parity(packaged_net, torch.from_numpy(kitti_frames[1][0]))
    batch = [torch.from_numpy(kitti_frames[0][0]), torch.from_numpy(kitti_frames[2][0])]
    _assert_network_parity(packaged_net, batch)
    net = packaged_net
    for fast in (True, False):
        dets = decode_batch(_run(net, batch, fast), net.head_grid, net.config.classes, score_threshold=0.3)
        if fast:
            first = dets
    for a, b in zip(first, dets):
        assert len(a) == len(b) and len(a) > 0
        assert np.array_equal(a.label, b.label)
        np.testing.assert_allclose(a.center, b.center, atol=1e-4 * (1 + np.abs(b.center).max()))
        np.testing.assert_allclose(a.score, b.score, rtol=1e-4)
        np.testing.assert_allclose(a.size, b.size, rtol=1e-4)
        np.testing.assert_allclose(a.covariance, b.covariance, rtol=1e-4, atol=1e-12)


def test_box_head_at_cells_equals_the_maps(small_net):
    """``box_at`` (the box head run at given cells only, what decoding uses) = the full maps at those cells;
    no cell gives empty [T, 0] tensors; the maps are computed once, on first access."""
    rng = np.random.default_rng(9)
    pts = torch.from_numpy(np.concatenate([rng.uniform(-15, 15, (3000, 2)), rng.uniform(-0.5, 2, (3000, 1)),
                                           rng.uniform(0, 1, (3000, 1))], 1).astype(np.float32))
    out = _run(small_net, [pts, pts[::2]], True)
    assert out.box_at is not None
    _, t, h, w = out.box.gamma.shape
    assert out.box is out.box  # cached
    cells = torch.tensor([0, 5, h * w // 2 + 7, h * w - 1])
    for b in range(2):
        at = out.box_at(b, cells)
        for got, maps in zip(at, out.box):
            assert got.shape == (t, len(cells))
            want = maps[b].reshape(t, -1)[:, cells]
            assert _rel(got, want) < PARITY
        none = out.box_at(b, torch.zeros(0, dtype=torch.long))
        assert all(x.shape == (t, 0) for x in none)
    ref = _run(small_net, [pts, pts[::2]], False)
    assert ref.box_at is None


def test_network_matches_reference_on_empty_and_bad_scans(small_net):
    """No voxel (empty, all NaN, all outside the crop), and a batch mixing an empty scan with a real one:
    the vacuous outputs of the empty scan are filled the same way."""
    far = torch.tensor([[500.0, 0.0, 0.0, 0.5]] * 5)
    rng = np.random.default_rng(6)
    real = torch.from_numpy(np.concatenate([rng.uniform(-15, 15, (4000, 2)), rng.uniform(-0.5, 2, (4000, 1)),
                                            rng.uniform(0, 1, (4000, 1))], 1).astype(np.float32))
    for pts in (torch.zeros(0, 4), torch.full((10, 4), float("nan")), far, [torch.zeros(0, 4), real]):
        _assert_network_parity(small_net, pts)
    out = _run(small_net, [torch.zeros(0, 4), real], True)
    assert float(out.occupancy_evidence[0].abs().max()) == 0.0
    assert bool((out.class_alpha[0] == 1.0).all())


def test_other_head_sizes_and_no_head_upsampling():
    """Velocity targets (10 regression rows), heads at the BEV stride (no upsampling layer), other widths."""
    torch.manual_seed(1)
    net = LidarDetectionNet({**SMALL_CONFIG, "velocity": True, "head_upsample": 1, "head_channels": 16,
                             "bev_channels": [16, 24], "bev_layers": [2, 0]}).eval()
    _randomise_batchnorms(net)
    rng = np.random.default_rng(7)
    pts = torch.from_numpy(np.concatenate([rng.uniform(-15, 15, (3000, 2)), rng.uniform(-0.5, 4, (3000, 1)),
                                           rng.uniform(0, 1, (3000, 1))], 1).astype(np.float32))
    _assert_network_parity(net, pts)


def _randomise_batchnorms(net: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine terms, so folding has something to fold."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def test_folded_weights_follow_weight_changes(small_net):
    """The folded copies are rebuilt when a weight changes in place (training step, load_state_dict)."""
    import copy

    net = copy.deepcopy(small_net)
    rng = np.random.default_rng(8)
    pts = torch.from_numpy(np.concatenate([rng.uniform(-15, 15, (3000, 2)), rng.uniform(-0.5, 2, (3000, 1)),
                                           rng.uniform(0, 1, (3000, 1))], 1).astype(np.float32))
    _assert_network_parity(net, pts)  # builds the folded copies
    _randomise_batchnorms(net)
    with torch.no_grad():
        net.head_trunk[0].weight.mul_(1.5)
        net.box_head[-1].bias.add_(0.25)
    _assert_network_parity(net, pts)
    net.load_state_dict(small_net.state_dict())
    assert max(_rel(a, b) for a, b in zip(_outputs(_run(net, pts, True)).values(),
                                           _outputs(_run(small_net, pts, True)).values())) < PARITY


def test_fast_path_only_without_gradients(small_net):
    """Training (grad recorded, train mode) and tracing run the plain layers: the fused rewrite is
    inference only, and the ONNX export keeps tracing the layers it knows."""
    from perception_nodes.models.folding import inference_fast_path

    assert small_net.fast_path
    with torch.no_grad():
        assert inference_fast_path(small_net)
    assert not inference_fast_path(small_net)  # gradients on
    small_net.train()
    try:
        with torch.no_grad():
            assert not inference_fast_path(small_net)
    finally:
        small_net.eval()
    state = {k: v.clone() for k, v in small_net.state_dict().items()}
    _run(small_net, torch.zeros(0, 4), True)
    assert state.keys() == small_net.state_dict().keys()  # nothing added to the state dict
