"""The camera -> BEV network: shapes, evidential constraints, coverage, gradients, pooling paths, bad input.

Cameras are the generator's rig (perception_nodes/scenario/camera.py) at the demo bag's 320 x 96; a
small BEV (40 m square at 0.5 m) and 1 m depth bins keep each forward pass well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception_nodes.config import ConfigError
from perception_nodes.learning.losses import beta_evidential_terms
from perception_nodes.models.camera_bev import CameraBevConfig, CameraBevNet, kitti_camera_geometry
from perception_nodes.scenario.camera import camera_rig

SMALL = {"depth_bins": [1.0, 40.0, 1.0], "bev_origin": [-20.0, -20.0], "bev_size": [80, 80],
         "image_channels": [8, 16], "image_blocks": [0, 1], "context_channels": 8, "bev_channels": [8, 16]}


def _geometry(net: CameraBevNet, names=("left",)):
    rig = camera_rig(320, 96)
    cams = []
    for n in names:
        spec = rig[n]
        T = np.eye(4)
        T[:3, :3] = spec.base_from_optical()
        T[:3, 3] = spec.position
        cams.append(net.camera_geometry(spec.K, T, (spec.height, spec.width)))
    return net.geometry(cams)


def _images(n_frames: int, n_cams: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n_frames, n_cams, 3, 96, 320), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def net() -> CameraBevNet:
    torch.manual_seed(0)
    return CameraBevNet(SMALL).eval()


def test_shapes_evidence_and_coverage(net):
    cfg = net.config
    geom = _geometry(net)
    with torch.no_grad():
        out = net(_images(2, 1)[:, 0], geom)  # [B, 3, H, W] form
    occ, bev = cfg.occupancy_grid, cfg.bev_grid
    D = cfg.bins.count
    assert out.occupancy_evidence.shape == (2, 2, occ.height, occ.width)
    assert out.bev_features.shape == (2, net.bev_channels, bev.height, bev.width)
    assert out.depth_logits.shape == (2, D, 96 // cfg.stride, 320 // cfg.stride)
    assert out.coverage.shape == (occ.height, occ.width)
    ev = out.occupancy_evidence
    assert torch.isfinite(ev).all() and (ev >= 0).all()
    cov = out.coverage
    # a forward camera covers a wedge ahead of base_link and nothing behind it
    assert 0 < int(cov.sum()) < cov.numel() // 2
    xs = occ.origin_x + (torch.arange(occ.width) + 0.5) * occ.cell
    assert not cov[:, xs < 0].any() and cov[:, xs > 5].any()
    assert (ev[:, :, cov] > 0).all()  # softplus: strictly positive evidence where the camera sees
    assert (ev[:, :, ~cov] == 0).all()  # vacuous where it does not
    # the BEV features are zero outside the crop the BEV net runs on
    y0, y1, x0, x1 = net.crop(geom)
    mask = torch.zeros(bev.height, bev.width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    assert (out.bev_features[:, :, ~mask] == 0).all() and out.bev_features[:, :, mask].abs().sum() > 0


def test_uint8_and_float_images_agree_and_frames_are_independent(net):
    geom = _geometry(net)
    imgs = _images(2, 1, seed=1)
    with torch.no_grad():
        a = net(imgs, geom)
        b = net(imgs.float() / 255.0, geom)
        one = net(imgs[1:], geom)
    torch.testing.assert_close(a.occupancy_evidence, b.occupancy_evidence, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.occupancy_evidence[1:], one.occupancy_evidence, rtol=1e-4, atol=1e-5)


def test_fused_inference_pooling_equals_the_training_form(net):
    """no_grad uses the fused kernel, autograd the gather form: the same network output."""
    geom = _geometry(net, ("left", "mono"))
    imgs = _images(1, 2, seed=2)
    with torch.no_grad():
        fused = net(imgs, geom)
    with torch.enable_grad():
        x = (imgs.float() / 255.0).requires_grad_(True)
        gather = net(x, geom)
    assert gather.bev_features.requires_grad
    torch.testing.assert_close(fused.bev_features, gather.bev_features.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.occupancy_evidence, gather.occupancy_evidence.detach(), rtol=1e-4, atol=1e-5)


def test_gradient_flows_to_every_stage():
    torch.manual_seed(1)
    net = CameraBevNet(SMALL).train()
    geom = _geometry(net)
    out = net(_images(2, 1, seed=3), geom)
    cov = out.coverage
    label = (torch.rand(cov.shape, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    a = out.occupancy_evidence[:, 0][:, cov] + 1.0
    b = out.occupancy_evidence[:, 1][:, cov] + 1.0
    ce, kl = beta_evidential_terms(a, b, label[cov].expand_as(a))
    target = torch.randint(0, net.config.bins.count, out.depth_logits[:, 0].shape)
    loss = (ce + 0.1 * kl).mean() + torch.nn.functional.cross_entropy(out.depth_logits, target)
    loss.backward()
    for name, mod in (("stem", net.image[0][0][0]), ("lift", net.depth_context), ("bev", net.bev.stage1[0][0]),
                      ("head", net.occupancy_head[-1])):
        g = mod.weight.grad
        assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0, name


def test_geometry_is_cached_per_calibration():
    net = CameraBevNet(SMALL).eval()
    g1 = _geometry(net, ("mono",))
    assert _geometry(net, ("mono",)) is g1 and net.geometries.builds == 1
    spec = camera_rig(320, 96)["mono"]
    T = np.eye(4)
    T[:3, :3] = spec.base_from_optical()
    T[:3, 3] = np.asarray(spec.position) + [0.0, 0.0, 0.1]  # remounted 10 cm higher
    g3 = net.geometry(net.camera_geometry(spec.K, T, (96, 320)))
    assert g3 is not g1 and net.geometries.builds == 2
    with torch.no_grad():
        a, b = net(_images(1, 1), g1), net(_images(1, 1), g3)
    assert not torch.equal(a.bev_features, b.bev_features)  # the new geometry is the one used


def test_bad_input_and_bad_config_are_rejected(net):
    geom = _geometry(net)
    with pytest.raises(ValueError, match="do not match"):
        net(torch.zeros(1, 3, 96, 160, dtype=torch.uint8), geom)
    with pytest.raises(ValueError, match="images must be"):
        net(torch.zeros(1, 1, 96, 320), geom)
    with pytest.raises(ValueError, match="cameras"):
        net(_images(1, 2), geom)
    other = CameraBevNet({**SMALL, "depth_bins": [1.0, 30.0, 1.0]})
    with pytest.raises(ValueError, match="depth bins"):
        other(_images(1, 1), geom)
    with pytest.raises(ConfigError):
        CameraBevConfig.from_mapping({"no_such_key": 1})
    with pytest.raises(ConfigError):
        CameraBevConfig.from_mapping({"depth_bins": [1.0, 60.0, 0.7]})
    with pytest.raises(ConfigError):
        CameraBevConfig.from_mapping({"image_channels": [8, 16], "image_blocks": [0]})
    with pytest.raises(ConfigError):
        CameraBevConfig.from_mapping({"stem_patch": 1})


def test_kitti_camera_geometry_sees_the_road_ahead():
    """Camera 2 of the real KITTI frame: optical axis forward, centre ~1.65 m above the ground."""
    from pathlib import Path

    from perception_nodes.calibration import load_kitti_calib

    path = Path(__file__).resolve().parents[2].parent / "shared/data/kitti_object_vis/data/object/training/calib/000000.txt"
    if not path.exists():
        pytest.skip(f"KITTI calibration missing: {path}")
    T = np.eye(4)
    T[2, 3] = 1.73
    cam = kitti_camera_geometry(load_kitti_calib(path), T, (376, 1241), 8)
    M = np.asarray(cam.base_from_camera).reshape(4, 4)
    assert M[:3, :3] @ [0, 0, 1] == pytest.approx([1, 0, 0], abs=0.02)  # optical z = base x
    assert M[2, 3] == pytest.approx(1.65, abs=0.05) and M[0, 3] == pytest.approx(0.27, abs=0.1)


def test_folding_batchnorm_keeps_the_outputs():
    import copy

    torch.manual_seed(2)
    net = CameraBevNet(SMALL)
    net.train()
    geom = _geometry(net)
    with torch.no_grad():  # move the running statistics off their defaults so folding has something to fold
        for _ in range(2):
            net(_images(1, 1, seed=5), geom)
    net.eval()
    folded = copy.deepcopy(net).fold_batchnorm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.image.modules())
    imgs = _images(1, 1, seed=6)
    with torch.no_grad():
        a, b = net(imgs, geom), folded(imgs, geom)
    torch.testing.assert_close(b.occupancy_evidence, a.occupancy_evidence, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stem", [{"stem_patch": 2, "image_channels": [8, 8, 16], "image_blocks": [0, 0, 1]},
                                  {"stem_patch": 4, "image_channels": [8, 16], "image_blocks": [0, 1]}])
def test_feature_map_matches_the_geometry_for_odd_image_sizes(stem):
    """ceil(H / stride) x ceil(W / stride) features for an image that is no multiple of the stride."""
    net = CameraBevNet({**SMALL, **stem}).eval()
    spec = camera_rig(318, 90)["left"]
    T = np.eye(4)
    T[:3, :3] = spec.base_from_optical()
    T[:3, 3] = spec.position
    cam = net.camera_geometry(spec.K, T, (90, 318))
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 90, 318, dtype=torch.uint8), net.geometry(cam))
    assert out.depth_logits.shape[-2:] == cam.feature_size == (12, 40)


@pytest.mark.slow
def test_onnx_graph_matches_torch_under_onnxruntime():
    """Exported with one calibration and random images; run on a real-looking frame and a re-mounted
    camera's index arrays (other inputs than the export's), against eager torch."""
    ort = pytest.importorskip("onnxruntime")
    import json

    import onnx

    from perception_nodes.models.camera_bev import ONNX_KEY, export_onnx, onnx_feeds

    torch.manual_seed(3)
    net = CameraBevNet(SMALL).eval()
    geom = _geometry(net)
    model = export_onnx(net, geom)
    proto = onnx.load_from_string(model)
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert {"GatherElements", "ScatterElements", "ScatterND"} <= ops
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[ONNX_KEY])
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    spec = camera_rig(320, 96)["left"]
    T = np.eye(4)
    T[:3, :3] = spec.base_from_optical()
    T[:3, 3] = np.asarray(spec.position) + [0.0, 0.0, 0.02]  # re-mounted 2 cm higher: new indices
    moved = net.geometry(net.camera_geometry(spec.K, T, (96, 320)))
    assert moved.num_pairs != geom.num_pairs and list(net.crop(moved)) == meta["crop"]
    for g, seed in ((geom, 11), (moved, 12)):
        imgs = _images(1, 1, seed=seed)
        with torch.no_grad():
            want = net(imgs, g)
        ev, bev = sess.run(None, onnx_feeds(net, imgs[0], g))
        torch.testing.assert_close(torch.from_numpy(bev), want.bev_features, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.from_numpy(ev), want.occupancy_evidence, rtol=1e-4, atol=1e-4)
