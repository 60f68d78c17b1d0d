"""The learned box head: its numpy forward equals the torch network it was trained as, its crop reads the right
points, its residuals move boxes in their own frame, its training is deterministic and learns, and bad weight
folders are refused with a reason."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from perception_nodes.boxes import Box3D
from perception_nodes.learning.box_head_train import box_residual, match_cars, train_head
from perception_nodes.models.box_head import (
    NETWORK,
    BoxHead,
    BoxHeadConfig,
    BoxHeadNet,
    apply_box_head,
    apply_residuals,
    box_inputs,
    load_box_head,
    point_features,
)
from perception_nodes.models.decode import Detections
from perception_nodes.models.weights_io import WeightsError, default_weights_dir, save_weights

CLASSES = ("car", "pedestrian", "cyclist")


def _det(centres, sizes, yaws, labels=None, scores=None) -> Detections:
    n = len(centres)
    return Detections(class_names=CLASSES, center=np.asarray(centres, np.float32).reshape(n, 3),
                      size=np.asarray(sizes, np.float32).reshape(n, 3), yaw=np.asarray(yaws, np.float32),
                      label=np.asarray(labels if labels is not None else [0] * n, np.int64),
                      score=np.asarray(scores if scores is not None else [0.9] * n, np.float32),
                      covariance=np.tile(np.eye(6, dtype=np.float32), (n, 1, 1)))


def _car_points(rng, centre, size, yaw, n=300) -> np.ndarray:
    """Points on the two faces of a box a sensor at the origin would see (an L), with intensity."""
    l, w, h = size
    u = rng.uniform(-0.5, 0.5, n)
    z = rng.uniform(-h / 2 + 0.3, h / 2, n)
    face = rng.random(n) < 0.5
    x = np.where(face, u * l, -l / 2)
    y = np.where(face, -w / 2, u * w)
    c, s = math.cos(yaw), math.sin(yaw)
    pts = np.column_stack([c * x - s * y + centre[0], s * x + c * y + centre[1], z + centre[2], rng.random(n)])
    return pts.astype(np.float32)


def _random_head(config=BoxHeadConfig(), seed=0) -> tuple[BoxHead, torch.nn.Module]:
    torch.manual_seed(seed)
    net = BoxHeadNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return BoxHead(config, {k: v.numpy().copy() for k, v in net.state_dict().items()}), net.eval()


def test_numpy_forward_equals_the_torch_network():
    head, net = _random_head()
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(6, head.config.npts, 4)).astype(np.float32)
    size = rng.uniform(1, 5, (6, 3)).astype(np.float32)
    sensor = rng.normal(0, 20, (6, 2)).astype(np.float32)
    count = rng.integers(5, 500, 6).astype(np.float32)
    pf, gf = point_features(pts, size, sensor, count)
    tpf, tgf = point_features(*(torch.from_numpy(a) for a in (pts, size, sensor, count)), xp=torch)
    np.testing.assert_allclose(pf, tpf.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gf, tgf.numpy(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        want = net(tpf, tgf).numpy()
    got = head.forward(pf, gf)
    # float32 sums of up to 263 terms of size ~|x|*|w|, twice: a few hundred eps of the largest activation
    tol = 512 * np.finfo(np.float32).eps * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)


def test_crop_reads_the_points_of_the_grown_box_in_its_frame():
    cfg = BoxHeadConfig(npts=64, margin_m=0.5)
    rng = np.random.default_rng(2)
    det = _det([[10.0, 5.0, -0.8], [30.0, -12.0, -0.9], [-20.0, 3.0, -0.8]], [[4.5, 1.8, 1.6]] * 3,
               [0.4, -1.2, 2.9], labels=[0, 0, 1])
    cloud = rng.uniform([-40, -40, -3, 0], [40, 40, 2, 1], (60_000, 4)).astype(np.float32)
    cloud[::97, 0] = np.nan  # non-finite points are ignored
    idx, (pts, size, sensor, count) = box_inputs(det, cloud, cfg, sensor_xy=(1.0, -2.0))
    assert idx.tolist() == [0, 1]  # the pedestrian box is not the head's class
    finite = cloud[np.isfinite(cloud).all(1)]
    for k, i in enumerate(idx):
        box = Box3D("car", tuple(det.center[i].astype(float)), tuple(det.size[i].astype(float)), float(det.yaw[i]))
        inside = finite[box.contains(finite, margin=cfg.margin_m)]
        assert count[k] == len(inside)
        assert pts.shape[1:] == (64, 4)
        # every sampled point is one of the box's points, in its frame
        c, s = math.cos(det.yaw[i]), math.sin(det.yaw[i])
        back = np.column_stack([c * pts[k, :, 0] - s * pts[k, :, 1], s * pts[k, :, 0] + c * pts[k, :, 1], pts[k, :, 2]])
        back += det.center[i]
        d = np.abs(back[:, None, :] - inside[None, :, :3]).max(-1).min(1)
        assert d.max() < 1e-3  # float32 coordinates of up to ~40 m
        d_sensor = np.array([1.0, -2.0]) - det.center[i, :2]
        np.testing.assert_allclose(sensor[k], [c * d_sensor[0] + s * d_sensor[1], -s * d_sensor[0] + c * d_sensor[1]], rtol=1e-5)


def test_boxes_with_too_few_points_and_empty_input_are_left_alone():
    head, _ = _random_head(BoxHeadConfig(min_points=5))
    det = _det([[10.0, 0.0, -0.8]], [[4.5, 1.8, 1.6]], [0.0])
    few = np.array([[10.0, 0.0, -0.8, 0.5]] * 4, np.float32)
    for pts in (few, np.zeros((0, 4), np.float32), np.full((10, 4), np.nan, np.float32)):
        out, n = apply_box_head(det, pts, head)
        assert n == 0 and out is det
    out, n = apply_box_head(_det([], [], []), few, head)
    assert n == 0 and len(out) == 0
    out, n = apply_box_head(det, few, None)
    assert n == 0 and out is det


def test_residuals_move_a_box_in_its_own_frame_and_round_trip_to_the_truth():
    det = _det([[10.0, 5.0, -0.8]], [[4.0, 1.7, 1.5]], [math.pi / 2])
    out = apply_residuals(det, np.array([0]), np.array([[1.0, 0.5, 0.1, math.log(1.1), 0.0, 0.0, 0.05]]))
    # x of the box frame is +y of the scan at a heading of 90 degrees; its y is -x
    np.testing.assert_allclose(out.center[0], [10.0 - 0.5, 5.0 + 1.0, -0.7], atol=1e-5)
    np.testing.assert_allclose(out.size[0], [4.4, 1.7, 1.5], rtol=1e-5)
    assert out.yaw[0] == pytest.approx(math.pi / 2 + 0.05, abs=1e-6)
    np.testing.assert_array_equal(det.center[0], np.float32([10.0, 5.0, -0.8]))  # the input is not changed
    # the training target, applied, gives the true box back (heading modulo 180 degrees)
    truth = Box3D("car", (10.4, 5.9, -0.75), (4.6, 1.9, 1.45), math.pi / 2 + 0.1 + math.pi)
    t = box_residual(det.center[0], det.size[0], float(det.yaw[0]), truth)
    back = apply_residuals(det, np.array([0]), t[None])
    np.testing.assert_allclose(back.center[0], truth.center, atol=1e-5)
    np.testing.assert_allclose(back.size[0], truth.size, rtol=1e-5)
    assert math.remainder(float(back.yaw[0]) - truth.yaw, math.pi) == pytest.approx(0.0, abs=1e-6)
    # a truth turned by more than 45 degrees is not a correction of this box
    assert box_residual(det.center[0], det.size[0], 0.0, dataclasses.replace(truth, yaw=1.0)) is None


def test_matching_is_greedy_by_score_within_the_radius():
    det = _det([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [9.0, 0.0, 0.0]], [[4, 2, 1.5]] * 3, [0, 0, 0], scores=[0.5, 0.9, 0.8])
    gt = [Box3D("car", (0.2, 0.0, 0.0), (4, 2, 1.5), 0.0), Box3D("pedestrian", (9.0, 0.0, 0.0), (0.5, 0.5, 1.7), 0.0)]
    assert match_cars(det, gt, 1.5) == {1: 0}  # the higher score takes the car; the pedestrian is not a car


def _synthetic_samples(n: int, seed: int, cfg: BoxHeadConfig):
    """Car boxes shifted along their heading by a known amount, with their L of points: the head must learn the
    shift from where the points sit in the box."""
    rng = np.random.default_rng(seed)
    P, S, E, N, T = [], [], [], [], []
    for _ in range(n):
        size = (4.5, 1.8, 1.5)
        centre = (rng.uniform(8, 30), rng.uniform(-10, 10), -0.8)
        yaw = rng.uniform(-0.5, 0.5)
        shift = rng.uniform(-0.4, 0.4)
        pts = _car_points(rng, centre, size, yaw, n=200)
        c, s = math.cos(yaw), math.sin(yaw)
        det = _det([[centre[0] - c * shift, centre[1] - s * shift, centre[2]]], [size], [yaw])
        idx, raw = box_inputs(det, pts, cfg, sensor_xy=(0.0, 0.0))
        assert idx.tolist() == [0]
        P.append(raw[0][0]); S.append(raw[1][0]); E.append(raw[2][0]); N.append(raw[3][0])
        T.append(box_residual(det.center[0], det.size[0], float(det.yaw[0]), Box3D("car", centre, size, yaw)))
    return (np.stack(P), np.stack(S), np.stack(E), np.asarray(N, np.float32)), np.stack(T)


def test_training_is_deterministic_and_learns_a_shift():
    torch.set_num_threads(1)
    cfg = BoxHeadConfig(npts=32, point_layers=(16, 32), box_layers=(32,))
    raw, t = _synthetic_samples(192, 0, cfg)
    params = {"seed": 3, "epochs": 100, "batch_size": 64, "lr": 1e-2, "jitter": None}
    net_a, losses = train_head(raw, t, cfg, params, progress=False)
    net_b, _ = train_head(raw, t, cfg, params, progress=False)
    for (ka, a), (kb, b) in zip(net_a.state_dict().items(), net_b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)
    assert losses[-1] < 0.5 * losses[0]
    # on new boxes the learned shift cuts the centre error against leaving the boxes alone
    raw2, t2 = _synthetic_samples(64, 1, cfg)
    head = BoxHead(cfg, {k: v.numpy() for k, v in net_a.state_dict().items()})
    pred = head.forward(*point_features(*raw2))
    before = np.abs(t2[:, 0]).mean()
    after = np.abs(t2[:, 0] - pred[:, 0]).mean()
    assert after < 0.2 * before  # about 0.01 m against 0.23 m here


def test_weights_folder_round_trip_and_bad_folders(tmp_path):
    cfg = BoxHeadConfig(npts=16, point_layers=(8, 16), box_layers=(8,))
    head, net = _random_head(cfg)
    folder = save_weights(net, tmp_path / "head", network=NETWORK, config=dataclasses.asdict(cfg))
    loaded = load_box_head(folder)
    assert loaded.config == cfg
    for k, v in head.weights.items():
        np.testing.assert_array_equal(loaded.weights[k], v)
    # another network's folder, a corrupt tensor file, a config the tensors do not fit
    side = json.loads((folder / "model.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (tmp_path / "other" / "model.json").write_text(json.dumps({**side, "network": "lidar_detection"}))
    with pytest.raises(WeightsError, match="not 'lidar_box_head'"):
        load_box_head(tmp_path / "other")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"\x00" * 40)
    (tmp_path / "corrupt" / "model.json").write_text(json.dumps(side))
    with pytest.raises(WeightsError, match="not a usable box head"):
        load_box_head(tmp_path / "corrupt")
    (folder / "model.json").write_text(json.dumps({**side, "config": {**side["config"], "point_layers": [8, 32]}}))
    with pytest.raises(WeightsError, match="not a usable box head"):
        load_box_head(folder)
    with pytest.raises(WeightsError, match="no weights"):
        load_box_head(tmp_path / "missing")


def test_the_packaged_head_loads_and_says_how_it_was_trained():
    folder = default_weights_dir(NETWORK)
    head = load_box_head(folder)
    side = json.loads((folder / "model.json").read_text())
    assert head.config.classes == ("car",)
    assert side["training"]["samples"] > 1000 and side["training"]["config_file"].endswith("lidar_box_head.yaml")
    assert (folder / "model.safetensors").stat().st_size < 1_000_000  # a small file in the repository


def test_training_collects_refined_boxes_without_a_head(monkeypatch):
    """The head learns the error the refinement leaves: its samples must not have gone through a head already
    (the evaluation's default runs the packaged one)."""
    import perception_nodes.learning.detection_metrics as dm
    from perception_nodes.learning.box_head_train import collect_samples

    seen = {}

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(dm, "DetectionAccumulator", spy)
    with pytest.raises(Stop):
        collect_samples({"detector": "lidar_detection", "data": []}, progress=False)
    assert seen["box_head"] is None and seen["refinement"].enabled


def test_the_packaged_head_runs_only_on_the_packaged_detector(tmp_path):
    """It names the detector weights it was trained on; other weights (the opt-in ones) do not get it."""
    from perception_nodes.models.box_head import mismatch, weights_sha256

    head = load_box_head(default_weights_dir(NETWORK))
    assert head.detector_sha256 == weights_sha256(default_weights_dir("lidar_detection"))
    assert mismatch(head, default_weights_dir("lidar_detection")) is None
    assert "other detector weights" in mismatch(head, default_weights_dir("lidar_detection_plain"))
    assert "unreadable" in mismatch(head, tmp_path)
