"""The ``lidar_detection`` training branch on fixture bags: samples, targets, augmentation, determinism,
resume, validation metrics; and its curvature target."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from perception_nodes.learning.branches.lidar_detection import LidarDetectionBranch, curvature_at_horizons
from perception_nodes.learning.checkpoint import load_weights
from perception_nodes.learning.trainer import _collate, load_trained, train
from tests.learning.conftest import FIXTURE

#: a 24 m x 24 m crop (the fixture's ground-truth grid), the real-time network otherwise
MODEL = {"point_range": [-12.0, -12.0, -1.0, 12.0, 12.0, 3.0], "backbone_args": {"dataflow": "gather_scatter"}}


def det_config(cache_dir: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "branch": "lidar_detection",
        "seed": 0,
        "threads": 1,
        "epochs": 2,
        "batch_size": 2,
        "data": {
            "cache_dir": str(cache_dir),
            "train": [{"fixture": {"seed": 0, "frames": 4, **FIXTURE}}],
            "val": [{"fixture": {"seed": 1, "frames": 2, "start_s": 2.0, **FIXTURE}}],
        },
        "model": MODEL,
        "loss": {"kl_anneal_epochs": 1},
        "eval": {"score_threshold": 0.1},
        "optimizer": {"lr": 0.005},
    }
    cfg.update(overrides)
    return cfg


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_weights(run / "model.safetensors")[0]


def test_curvature_at_horizons_of_an_arc_and_a_straight():
    k = 1.0 / 50.0  # a 50 m radius left bend, sampled every metre from the ego
    s = np.arange(0.0, 31.0)
    arc = np.stack([np.sin(k * s) / k, (1 - np.cos(k * s)) / k, k * s], 1)
    got = curvature_at_horizons(arc, (0.0, 10.0, 20.0, 40.0))
    chord = 2 * np.sin(k / 2) / k  # arc length is measured along the 1 m chords
    assert np.allclose(got[:3], k / chord, rtol=1e-6) and math.isnan(got[3])
    straight = np.stack([s, np.zeros_like(s), np.zeros_like(s)], 1)
    assert np.allclose(curvature_at_horizons(straight, (0.0, 10.0), at_ego=0.005), [0.005, 0.0])
    assert np.isnan(curvature_at_horizons(None, (0.0, 10.0))).all()


def test_mirror_augmentation_mirrors_the_targets():
    br = LidarDetectionBranch({"model": MODEL})
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-11, 11, (6, 2)), rng.uniform(0.5, 1.5, (6, 1)), rng.uniform(0.6, 4.5, (6, 3)),
                            rng.uniform(-3, 3, (6, 1)), rng.integers(0, 3, (6, 1))], 1).astype(np.float32)
    h, w = br.occupancy_spec.shape
    sample = {"points": rng.uniform(-11, 11, (50, 4)).astype(np.float32), "boxes": boxes,
              "occupied": (rng.random((h, w)) > 0.9).astype(np.uint8), "visible": np.ones((h, w), np.uint8),
              "curvature": np.array([0.01, 0.02, np.nan], np.float32),
              "sensor_origin": np.array([0.3, 0.2, 1.7], np.float32)}
    batch = _collate([sample] * 8, torch.device("cpu"))
    out = br.augment(batch, torch.Generator().manual_seed(3))
    flipped = [i for i in range(8) if float(out["curvature"][i, 0]) < 0]
    kept = [i for i in range(8) if float(out["curvature"][i, 0]) > 0]
    assert flipped and kept  # both outcomes among 8 draws with this seed
    base_t = br.targets_of([boxes])[0]
    for i in flipped:
        t = br.targets_of([out["boxes"][i]])[0]
        assert np.allclose(t.heatmap, base_t.heatmap[:, ::-1, :], atol=1e-6)  # rows follow y
        assert torch.equal(out["occupied"][i], torch.flip(batch["occupied"][i], (0,)))
        assert torch.allclose(out["points"][i][:, 1], -batch["points"][i][:, 1])
        assert torch.allclose(out["boxes"][i][:, 6], -batch["boxes"][i][:, 6])
        assert out["sensor_origin"][i].tolist() == pytest.approx([0.3, -0.2, 1.7])  # the sensor mirrors too
    for i in kept:
        assert torch.equal(out["boxes"][i], batch["boxes"][i])
        assert torch.equal(out["sensor_origin"][i], batch["sensor_origin"][i])


def test_rotation_augmentation_turns_points_boxes_and_grids_together():
    """A scan turned by the drawn angle: each box keeps the points it held (tested with the box's own
    containment, exact geometry), yaw follows, a lone occupied cell moves to the cell its centre rotates
    into, cells rotated in from outside the grid become unobserved, and curvature is kept."""
    from perception_nodes.boxes import Box3D

    br = LidarDetectionBranch({"model": MODEL, "augment": {"flip_y": False, "rotate_deg": 45.0, "rotate_prob": 1.0}})
    rng = np.random.default_rng(1)
    boxes = np.array([[5.0, 2.0, 0.8, 4.2, 1.8, 1.5, 0.3, 0], [-3.0, -6.0, 0.9, 0.6, 0.6, 1.7, -1.2, 1]], np.float32)
    inner = [np.array(b[:3]) + rng.uniform(-0.25, 0.25, (40, 3)) * np.array([b[3], b[4], b[5]]) for b in boxes]
    pts = np.concatenate([np.concatenate(inner), rng.uniform(-11, 11, (60, 3))]).astype(np.float32)
    pts = np.concatenate([pts, rng.random((len(pts), 1), dtype=np.float32)], 1)
    h, w = br.occupancy_spec.shape
    occ = np.zeros((h, w), np.uint8)
    spec = br.occupancy_spec
    x0, y0 = 6.1, 1.1  # a cell centre: origin -12 + (72 + 0.5) * 0.25 = 6.125 -> take the cell containing (6.1, 1.1)
    occ[int((y0 - spec.origin[1]) // spec.resolution), int((x0 - spec.origin[0]) // spec.resolution)] = 1
    sample = {"points": pts, "boxes": boxes, "occupied": occ, "visible": np.ones((h, w), np.uint8),
              "curvature": np.array([0.01, 0.02, np.nan], np.float32),
              "sensor_origin": np.array([1.0, 0.0, 1.7], np.float32)}
    batch = _collate([sample] * 4, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    out = br.augment(batch, gen)
    again = br.augment(batch, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(out["points"], again["points"]))  # deterministic per seed
    for i in range(4):
        b_out = out["boxes"][i].numpy()
        angle = float(b_out[0, 6] - boxes[0, 6])
        assert abs(angle) <= math.radians(45.0) + 1e-6 and abs(angle) > 0
        c, s_ = math.cos(angle), math.sin(angle)
        assert np.allclose(b_out[:, :2], boxes[:, :2] @ np.array([[c, -s_], [s_, c]]).T, atol=1e-5)
        assert np.allclose(np.remainder(b_out[:, 6] - boxes[:, 6] - angle + math.pi, 2 * math.pi) - math.pi, 0, atol=1e-5)
        assert np.allclose(out["sensor_origin"][i].numpy(), [c, s_, 1.7], atol=1e-6)  # the sensor turns with the scan
        p_out = out["points"][i].numpy()
        for j, b in enumerate(boxes):
            before = Box3D("x", tuple(map(float, b[:3])), tuple(map(float, b[3:6])), float(b[6]))
            after = Box3D("x", tuple(map(float, b_out[j, :3])), tuple(map(float, b_out[j, 3:6])), float(b_out[j, 6]))
            assert before.contains(pts[:, :3]).sum() == after.contains(p_out[:, :3]).sum() >= 30
        # the occupied cell moved where its centre turned
        (row, col), = np.argwhere(out["occupied"][i].numpy() == 1)
        cx = spec.origin[0] + (int((x0 - spec.origin[0]) // spec.resolution) + 0.5) * spec.resolution
        cy = spec.origin[1] + (int((y0 - spec.origin[1]) // spec.resolution) + 0.5) * spec.resolution
        rx, ry = c * cx - s_ * cy, s_ * cx + c * cy
        assert abs(spec.origin[0] + (col + 0.5) * spec.resolution - rx) <= spec.resolution
        assert abs(spec.origin[1] + (row + 0.5) * spec.resolution - ry) <= spec.resolution
        vis = out["visible"][i].numpy()
        assert vis[0, 0] == 0 and vis[h // 2, w // 2] == 1  # a corner came from outside the square grid
        assert np.allclose(out["curvature"][i].numpy()[:2], [0.01, 0.02])


def test_rotation_with_a_context_margin_keeps_margin_points_and_crop_boxes():
    """With a margin, rotated points are kept out to the input range (the network reads them) while boxes are
    kept by their centre inside point_range, as prepare_frame keeps them."""
    margin = 4.0
    br = LidarDetectionBranch({"model": {**MODEL, "context_margin_m": margin}})
    # points along the x axis out to 15.9 m (crop 12 m, input 16 m); a box at 11 m on the axis
    xs = np.linspace(-15.9, 15.9, 319, dtype=np.float32)
    pts = torch.from_numpy(np.stack([xs, np.zeros_like(xs), np.full_like(xs, 0.5), np.ones_like(xs)], 1))
    boxes = torch.tensor([[11.0, 0.0, 0.8, 4.0, 1.8, 1.5, 0.0, 0.0], [3.0, 0.0, 0.8, 4.0, 1.8, 1.5, 0.0, 0.0]])
    h, w = br.occupancy_spec.shape
    z = torch.zeros(h, w, dtype=torch.uint8)
    p, b, _, _ = br.rotate_scene(pts, boxes, z, z, math.pi / 2)  # the x axis turns onto the y axis
    assert len(p) == len(pts)  # |y| up to 15.9 m: inside the 16 m input square
    assert float(p[:, 1].abs().max()) > 12.0  # beyond the crop, inside the margin
    assert len(b) == 2 and torch.allclose(b[:, :2], torch.tensor([[0.0, 11.0], [0.0, 3.0]]), atol=1e-5)
    _, b45, _, _ = br.rotate_scene(pts, torch.tensor([[11.5, 11.5, 0.8, 4.0, 1.8, 1.5, 0.0, 0.0]]), z, z,
                                   math.radians(45.0))
    assert len(b45) == 0  # its centre turns to (0, 16.3): outside point_range, so dropped
    plain = LidarDetectionBranch({"model": MODEL})
    p0, _, _, _ = plain.rotate_scene(pts, boxes, z, z, math.pi / 2)
    assert len(p0) < len(pts) and float(p0[:, 1].abs().max()) <= 12.0  # without a margin: the 12 m crop (lo inclusive)


def test_rotation_augmentation_is_off_by_default_and_checked():
    """Off by default: a plain config's description and random stream are those of before; a cached backbone
    with rotations is refused (the cache would grow per rotated scan); out-of-range values are refused."""
    from perception_nodes.config import ConfigError

    plain = LidarDetectionBranch({"model": MODEL})
    assert plain.describe()["augment"] == {"flip_y": True}
    assert "rotate_deg" in LidarDetectionBranch({"model": MODEL, "augment": {"rotate_deg": 10}}).describe()["augment"]
    with pytest.raises(ConfigError, match="cache_backbone"):
        LidarDetectionBranch({"model": MODEL, "augment": {"rotate_deg": 10},
                              "finetune": {"freeze_backbone": True, "cache_backbone": True}})
    for bad in ({"rotate_deg": -1}, {"rotate_deg": 200}, {"rotate_prob": 1.5}):
        with pytest.raises(ConfigError):
            LidarDetectionBranch({"model": MODEL, "augment": bad})


def test_regression_radius_reaches_the_targets_and_is_checked():
    """targets.regression_radius goes from the config to the branch's targets (the box loss cells grow around
    each centre; the centre cells the metrics read stay); a negative radius is refused."""
    from perception_nodes.config import ConfigError

    boxes = np.array([[4.0, 2.0, 0.8, 4.0, 1.8, 1.5, 0.3, 0]], np.float32)
    plain = LidarDetectionBranch({"model": MODEL}).targets_of([boxes])[0]
    wide = LidarDetectionBranch({"model": MODEL, "targets": {"regression_radius": 1}}).targets_of([boxes])[0]
    assert plain.box_indices is None and wide.box_indices is not None and len(wide.box_indices) == 9
    assert np.array_equal(plain.indices, wide.indices)
    assert LidarDetectionBranch({"model": MODEL}).describe()["targets"]["regression_radius"] == 0
    with pytest.raises(ConfigError, match="regression_radius"):
        LidarDetectionBranch({"model": MODEL, "targets": {"regression_radius": -1}})


def _car_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two cars along x with returns on their sides and roof, ground returns all over, and a wall 0.7 m
    beside the second car: a turn of 30 deg would swing its grown corners 1.15 m out (rows: x, y, z,
    intensity)."""
    boxes = np.array([[5.0, 3.0, 0.75, 4.0, 1.8, 1.5, 0.0, 0], [-4.0, -5.0, 0.75, 4.0, 1.8, 1.5, 0.0, 0]], np.float32)
    parts = []
    for b in boxes:
        u = rng.uniform(-0.5, 0.5, (80, 3)) * b[3:6]
        u[:, 2] = rng.uniform(-0.3, 0.5, 80) * b[5]  # 0.3 m and up: returns lower than 0.15 m count as ground
        u[:40, 1] = np.sign(u[:40, 1]) * b[4] / 2  # sides
        u[40:, 2] = b[5] / 2  # roof
        parts.append(b[:3] + u)
    ground = np.c_[rng.uniform(-11.5, 11.5, (400, 2)), rng.normal(0.0, 0.02, 400)]
    wall = np.c_[rng.uniform(-6.5, -1.5, 60), np.full(60, -6.6), rng.uniform(0.2, 1.2, 60)]
    pts = np.concatenate(parts + [ground, wall]).astype(np.float32)
    return np.c_[pts, rng.random(len(pts))].astype(np.float32), boxes


def test_object_rotation_turns_a_car_with_its_returns_and_skips_a_turn_into_a_wall():
    """rotate_objects: the free car's returns turn about its centre with its yaw (its box holds all of them
    after, as before), the ground under it and everything else stay, the cells under its old and new
    footprint become unobserved; the car beside the wall would turn into it, so it is left as it was."""
    from perception_nodes.boxes import Box3D

    br = LidarDetectionBranch({"model": MODEL})
    pts, boxes = _car_scene(np.random.default_rng(3))
    h, w = br.occupancy_spec.shape
    vis0 = torch.ones(h, w, dtype=torch.uint8)
    angle = math.radians(30.0)
    p, b, vis = br.rotate_objects(torch.from_numpy(pts), torch.from_numpy(boxes), vis0,
                                  torch.tensor([angle, angle], dtype=torch.float64))
    p, b, vis = p.numpy(), b.numpy(), vis.numpy()
    assert np.isclose(b[0, 6], angle) and b[1, 6] == 0.0  # the second one would hit the wall at y = -6.6
    assert np.array_equal(b[:, :6], boxes[:, :6])
    box_before = Box3D("car", tuple(map(float, boxes[0, :3])), tuple(map(float, boxes[0, 3:6])), 0.0)
    box_after = Box3D("car", tuple(map(float, b[0, :3])), tuple(map(float, b[0, 3:6])), float(b[0, 6]))
    grown = Box3D("car", box_after.center, (4.01, 1.81, 1.51), box_after.yaw)  # float32 rounding on the faces
    assert grown.contains(p[:80, :3]).all() and not box_before.contains(p[:80, :3]).all()
    c, s = math.cos(angle), math.sin(angle)
    expect = (pts[:80, :2] - boxes[0, :2]) @ np.array([[c, -s], [s, c]]).T + boxes[0, :2]
    assert np.allclose(p[:80, :2], expect, atol=1e-5) and np.array_equal(p[:80, 2:], pts[:80, 2:])
    assert np.array_equal(p[80:], pts[80:])  # the other car, the ground (also under the car) and the wall
    spec = br.occupancy_spec

    def cell(x: float, y: float) -> tuple[int, int]:
        return int((y - spec.origin[1]) // spec.resolution), int((x - spec.origin[0]) // spec.resolution)

    # the tip of the turned car (its front 2 m along 30 deg) and the old rear corner region: unobserved
    assert vis[cell(5.0 + 1.9 * c, 3.0 + 1.9 * s)] == 0 and vis[cell(3.1, 3.8)] == 0
    assert vis[cell(-4.0, -5.0)] == 1 and vis[cell(0.0, -10.0)] == 1  # the car left alone, open ground
    assert torch.equal(vis0, torch.ones(h, w, dtype=torch.uint8))  # inputs untouched


def test_object_rotation_in_augment_is_drawn_per_box_and_deterministic():
    """augment with object_rotate_deg: each box turns by at most that angle (probability 1 here, so the free
    car turns in every sample, by a new angle), the same generator seed gives the same batch, and the config
    is checked and described."""
    from perception_nodes.config import ConfigError

    br = LidarDetectionBranch({"model": MODEL, "augment": {"flip_y": False, "object_rotate_deg": 20.0,
                                                           "object_rotate_prob": 1.0}})
    assert br.describe()["augment"] == {"flip_y": False, "object_rotate_deg": 20.0, "object_rotate_prob": 1.0}
    pts, boxes = _car_scene(np.random.default_rng(4))
    h, w = br.occupancy_spec.shape
    sample = {"points": pts, "boxes": boxes, "occupied": np.zeros((h, w), np.uint8),
              "visible": np.ones((h, w), np.uint8), "curvature": np.zeros(3, np.float32)}
    batch = _collate([sample] * 3, torch.device("cpu"))
    out = br.augment(batch, torch.Generator().manual_seed(7))
    again = br.augment(batch, torch.Generator().manual_seed(7))
    turned = []
    for i in range(3):
        assert torch.equal(out["points"][i], again["points"][i]) and torch.equal(out["boxes"][i], again["boxes"][i])
        yaw = out["boxes"][i][:, 6].numpy()
        assert np.all(np.abs(yaw) <= math.radians(20.0) + 1e-6)
        turned.append(float(yaw[0]))
    assert len(set(turned)) == 3 and all(t != 0.0 for t in turned)  # a new angle per sample
    for bad in ({"object_rotate_deg": -1}, {"object_rotate_prob": 2}):
        with pytest.raises(ConfigError):
            LidarDetectionBranch({"model": MODEL, "augment": bad})
    with pytest.raises(ConfigError, match="cache_backbone"):
        LidarDetectionBranch({"model": MODEL, "augment": {"object_rotate_deg": 10},
                              "finetune": {"freeze_backbone": True, "cache_backbone": True}})


def test_backbone_learning_rate_scale_gets_its_own_optimizer_group(tmp_path):
    """finetune.backbone_lr_scale: the backbone's parameters form a group at lr x scale, every other parameter
    one at lr, each parameter in exactly one; the schedule keeps the ratio; refused with a frozen backbone; a
    scale of 1 changes neither the optimizer (one group) nor the description."""
    from perception_nodes.config import ConfigError
    from perception_nodes.learning.config import load_config
    from perception_nodes.learning.trainer import _make_optimizer

    cfg = load_config(det_config(tmp_path, finetune={"backbone_lr_scale": 0.1}))
    br = LidarDetectionBranch(cfg.branch_sections)
    model = br.build_model()
    opt = _make_optimizer(cfg, model, br)
    backbone, other = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.1 * cfg.optimizer.lr) and other["lr"] == pytest.approx(cfg.optimizer.lr)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5 ** e)
    opt.step()
    sched.step()
    assert backbone["lr"] / other["lr"] == pytest.approx(0.1)
    plain = load_config(det_config(tmp_path, finetune={"freeze_batchnorm": True}))
    pb = LidarDetectionBranch(plain.branch_sections)
    assert len(_make_optimizer(plain, pb.build_model(), pb).param_groups) == 1
    assert "backbone_lr_scale" not in pb.describe()["finetune"]
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        LidarDetectionBranch({"model": MODEL, "finetune": {"freeze_backbone": True, "backbone_lr_scale": 0.5}})


@pytest.fixture(scope="module")
def det_run(bag_cache, tmp_path_factory):
    return train(det_config(bag_cache), out=tmp_path_factory.mktemp("det") / "run", progress=False)


@pytest.mark.slow
def test_samples_carry_boxes_grids_and_points_in_the_crop(bag_cache):
    from perception_nodes.learning.config import load_config
    from perception_nodes.learning.data import load_split

    cfg = load_config(det_config(bag_cache))
    br = LidarDetectionBranch(cfg.branch_sections)
    data = load_split(cfg.data.val, br, cache_dir=bag_cache, role="val", progress=False)
    s = data.samples[0]
    lo, hi = np.asarray(MODEL["point_range"][:3]), np.asarray(MODEL["point_range"][3:])
    assert len(s["points"]) > 100 and ((s["points"][:, :3] >= lo) & (s["points"][:, :3] < hi)).all()
    assert s["boxes"].shape[1] == 8 and len(s["boxes"]) >= 1
    assert set(np.unique(s["boxes"][:, 7]).tolist()) <= {0.0, 1.0, 2.0}
    assert s["occupied"].shape == br.occupancy_spec.shape == s["visible"].shape
    assert 0 < s["visible"].mean() < 1 and s["occupied"].sum() > 0
    assert np.isnan(s["curvature"]).all()  # fixture bags carry no lane path: the curvature loss skips them
    # the sensor in base_link (for the evaluation's KITTI levels): the fixture's mount, above the ground
    assert s["sensor_origin"].shape == (3,) and s["sensor_origin"][2] > 1.0
    # each box row's occlusion state as the bag gives it: the generator writes its truth (0-3, version 5 on),
    # the fixture writer none (-1: the evaluation measures it on the scan)
    states = np.concatenate([d["box_occlusion"] for d in data.samples])
    assert all(d["box_occlusion"].shape == (len(d["boxes"]),) for d in data.samples)
    assert set(np.unique(states).tolist()) == {-1}


@pytest.mark.slow
def test_levels_take_the_bags_occlusion_truth_over_the_scan(det_run, bag_cache):
    """The accumulator's KITTI levels read each box's occlusion from the sample where the bag has it: the same
    frames with every box declared largely occluded keep no car at moderate and every car at level all;
    samples without the field (older bags) are graded from their scan's rays, as before."""
    from perception_nodes.learning.config import load_config
    from perception_nodes.learning.data import load_split
    from perception_nodes.learning.detection_metrics import DetectionAccumulator

    branch, model = load_trained(det_run.run_dir)
    cfg = load_config(det_config(bag_cache))
    val = load_split(cfg.data.val, branch, cache_dir=bag_cache, role="eval", progress=False).samples

    @torch.no_grad()
    def score(samples):
        acc = DetectionAccumulator(branch)
        for smp in samples:
            acc.add(model([torch.from_numpy(smp["points"])]), [smp])
        return acc.results()

    def told(state):
        return [{**smp, "box_occlusion": np.full(len(smp["boxes"]), state, np.int8)} for smp in val]

    measured = score(val)  # fixture bags carry no truth (-1): graded from the scan
    hidden, shown = score(told(2)), score(told(0))
    # the fixture's few cars stand in plain view: the scan grades them as a state-0 declaration does
    assert measured["car_n_gt_moderate"] == shown["car_n_gt_moderate"] > 0
    assert hidden["car_n_gt_moderate"] == 0 and hidden["car_n_gt"] == measured["car_n_gt"] == shown["car_n_gt"]
    assert hidden["car_ap_3d"] == shown["car_ap_3d"] == measured["car_ap_3d"]  # level all needs no grading
    # and the metrics say where each graded box's occlusion came from
    n = sum(len(smp["boxes"]) for smp in val)
    assert (measured["gt_occlusion_from_truth"], measured["gt_occlusion_from_scan"]) == (0, n)
    assert (hidden["gt_occlusion_from_truth"], hidden["gt_occlusion_from_scan"]) == (n, 0)


def test_samples_with_a_context_margin_keep_its_points_not_its_boxes(bag_cache):
    from perception_nodes.learning.config import load_config
    from perception_nodes.learning.data import load_split

    margin = 4.0
    plain = load_config(det_config(bag_cache))
    wide = load_config(det_config(bag_cache, model={**MODEL, "context_margin_m": margin}))
    got = []
    for cfg in (plain, wide):
        br = LidarDetectionBranch(cfg.branch_sections)
        got.append(load_split(cfg.data.val, br, cache_dir=bag_cache, role="val", progress=False).samples[0])
    a, b = got
    lo, hi = np.asarray(MODEL["point_range"][:3]), np.asarray(MODEL["point_range"][3:])
    in_crop = ((b["points"][:, :3] >= lo) & (b["points"][:, :3] < hi)).all(1)
    # the crop's points unchanged, the margin's added; boxes and grids stay on point_range
    assert np.array_equal(b["points"][in_crop], a["points"]) and (~in_crop).sum() > 100
    wlo, whi = lo - [margin, margin, 0], hi + [margin, margin, 0]
    assert ((b["points"][:, :3] >= wlo) & (b["points"][:, :3] < whi)).all()
    assert np.array_equal(a["boxes"], b["boxes"]) and np.array_equal(a["occupied"], b["occupied"])


@pytest.mark.slow
def test_training_is_deterministic_resumable_and_validated(det_run, bag_cache, tmp_path):
    h = det_run.history
    assert [r["epoch"] for r in h] == [1, 2]
    for key in ("car_ap_bev", "car_ap_3d", "coverage_xy", "coverage_offset_at_gt_cell", "ece_class", "occupancy_iou", "frames"):
        assert key in h[-1]["val"]
    assert h[-1]["val"]["frames"] == 2.0
    assert all(math.isfinite(v) for v in h[-1]["train"].values())

    class _Crash(Exception):
        pass

    def crash(epoch, record):
        raise _Crash

    with pytest.raises(_Crash):
        train(det_config(bag_cache), out=tmp_path / "r", progress=False, on_epoch_end=crash)
    torch.manual_seed(99)
    resumed = train(det_config(bag_cache), out=tmp_path / "r", resume=True, progress=False)
    a, b = _weights(det_run.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    branch, model = load_trained(det_run.run_dir)
    assert isinstance(branch, LidarDetectionBranch) and branch.net_config.point_range == tuple(MODEL["point_range"])
    with torch.no_grad():
        out = model([torch.zeros(0, 4)])
    assert int(out.num_voxels[0]) == 0


@pytest.mark.slow
def test_calibration_fit_and_before_after_scoring_on_a_tiny_run(det_run, bag_cache):
    """The evaluation's calibration path end to end on the fixture run: fit on one split, score another
    before/after on the same boxes, baselines present; a scene in two roles is refused."""
    from perception_nodes.learning.config import BagSource, load_config
    from perception_nodes.learning.data import load_split
    from perception_nodes.learning.lidar_detection_eval import (
        _check_disjoint,
        evaluate_sets,
        fit_calibration,
        summary_table,
        trivial_baselines,
    )

    branch, model = load_trained(det_run.run_dir)
    cfg = load_config(det_config(bag_cache))
    val = load_split(cfg.data.val, branch, cache_dir=bag_cache, role="eval", progress=False).samples
    cal, identity = fit_calibration(branch, model, val, source="fixture seed 1")
    assert cal.fitted["frames"] == len(val) and cal.centre_variance_scale > 0 and cal.score_logit_scale > 0
    base = trivial_baselines(identity, identity)
    res = evaluate_sets(branch, model, {"train": cfg.data.train}, cache_dir=bag_cache, calibration=cal, baselines=base)
    before, after = res["train"]["before"], res["train"]["after"]
    assert before["detections"] == after["detections"]  # the same boxes, re-scored
    assert before["matched_detections"] == after["matched_detections"]
    for key in ("brier_class", "nll_class", "coverage_xy", "baseline_score_brier"):
        assert key in after
    # generated ground truth graded by KITTI level beside "all": moderate keeps at most the boxes "all" has
    for res_ in (before, after):
        assert {"car_ap_3d_moderate", "car_ap_bev_moderate", "car_n_gt_easy", "car_n_gt_hard"} <= set(res_)
        assert res_["car_n_gt_easy"] <= res_["car_n_gt_moderate"] <= res_["car_n_gt_hard"] <= res_["car_n_gt"]
    if after["detections"]:
        # the box-only baselines: a score of 0 has ECE = share right; the oracle constant's Brier = r (1 - r)
        r = after["precision_centre"]
        assert after["baseline_zero_score_ece"] == pytest.approx(r, abs=1e-12)
        assert after["baseline_own_rate_brier"] == pytest.approx(r * (1 - r), abs=1e-12)
    # the fit's record: the free-intercept search, per prior, and which map won
    assert isinstance(cal.fitted["score_map_anchored"], bool)
    assert set(cal.fitted["score_free_intercept_per_foreground_prior"]) == set(cal.fitted["score_nll_per_foreground_prior"])
    assert cal.fitted["score_prior_tie_nats"] > 0
    # the constant-sigma baseline needs right detections on its source (a 2-epoch net may have none)
    assert ("baseline_cov_coverage_xy" in after) == (math.isfinite(base.sigma_xy) and after["matched_detections"] > 0)
    assert "| ECE of score |" in summary_table({"generated": res})
    src = BagSource(generate={"scenario": "highway", "seed": 5, "lidar": "vlp32"})
    with pytest.raises(ValueError, match="both"):
        _check_disjoint({"validation": [src], "held_out": [src]})


def _small_net_output():
    """An untrained network on an 8 m crop, its branch and its output on 400 random points (loss tests)."""
    from perception_nodes.models import LidarDetectionNet

    torch.manual_seed(0)
    net = LidarDetectionNet({**MODEL, "point_range": [-4.0, -4.0, -1.0, 4.0, 4.0, 3.0]}).eval()
    br = LidarDetectionBranch({"model": net.config.__dict__ | {"backbone_args": MODEL["backbone_args"]}})
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-3.5, 3.5, (400, 2)), rng.uniform(0, 2, (400, 1)), rng.uniform(0, 1, (400, 1))], 1)
    with torch.no_grad():
        out = net(torch.from_numpy(pts.astype(np.float32)))
    return net, br, out


def test_focal_modulation_and_occupied_weight_of_the_loss():
    from perception_nodes.models.losses import LossWeights, detection_loss

    net, br, out = _small_net_output()
    targets = br.targets_of([np.array([[1.0, 1.0, 0.8, 4.0, 1.8, 1.5, 0.3, 0.0]], np.float32)])
    h, w = net.config.occupancy_grid.height, net.config.occupancy_grid.width
    occ = torch.zeros(1, h, w)
    occ[0, : h // 4] = 1.0
    kw = dict(kl_weight=0.1, occupancy_label=occ, occupancy_observed=torch.ones(1, h, w, dtype=torch.bool))
    _, plain = detection_loss(out, targets, weights=LossWeights(), **kw)
    _, same = detection_loss(out, targets, weights=LossWeights(focal_gamma=0.0, occupied_weight=1.0), **kw)
    _, focal = detection_loss(out, targets, weights=LossWeights(focal_gamma=2.0), **kw)
    _, heavy = detection_loss(out, targets, weights=LossWeights(occupied_weight=4.0), **kw)
    assert same == plain
    assert 0 < focal["classes"] < plain["classes"]  # every cell's weight (1 - p_t)^2 < 1
    assert heavy["occupancy"] > plain["occupancy"] and heavy["classes"] == plain["classes"]


def test_box_l1_term_is_the_mean_absolute_error_of_the_box_means_and_pulls_them_to_the_target():
    """``box_l1``: the mean |gamma - target| over the object cells' regression rows, added to the total with its
    weight (0 leaves the loss as it was); its gradient reaches the box means only."""
    from perception_nodes.models.losses import LossWeights, detection_loss

    net, br, out = _small_net_output()
    boxes = np.array([[1.0, 1.0, 0.8, 4.0, 1.8, 1.5, 0.3, 0.0], [-2.0, 1.5, 0.9, 0.6, 0.6, 1.7, -1.0, 1.0]], np.float32)
    targets = br.targets_of([boxes])
    t = targets[0]
    want = np.abs(out.box.gamma[0].flatten(1)[:, torch.from_numpy(t.indices)].numpy() - t.regression.T).mean()
    base, parts = detection_loss(out, targets, kl_weight=0.1, weights=LossWeights())
    total, with_l1 = detection_loss(out, targets, kl_weight=0.1, weights=LossWeights(box_l1=2.0))
    assert parts["box_l1"] == pytest.approx(want, rel=1e-6) and with_l1["box_l1"] == parts["box_l1"]
    assert float(total) == pytest.approx(float(base) + 2.0 * want, rel=1e-5)
    assert with_l1["boxes"] == parts["boxes"] and with_l1["classes"] == parts["classes"]
    # the gradient of the term alone: -sign(error) / count on the object cells' means, nothing elsewhere
    gamma = out.box.gamma.detach().clone().requires_grad_(True)
    from perception_nodes.models.lidar_detection import LidarDetectionOutput

    plain = LidarDetectionOutput(out.occupancy_evidence, out.class_alpha, out.box._replace(gamma=gamma), out.curvature,
                                 out.num_voxels)
    l1_only, _ = detection_loss(plain, targets, kl_weight=0.1,
                                weights=LossWeights(classes=0.0, boxes=0.0, occupancy=0.0, curvature=0.0, box_l1=1.0))
    l1_only.backward()
    g = gamma.grad[0].flatten(1)
    at = torch.from_numpy(t.indices)
    err = gamma.detach()[0].flatten(1)[:, at].numpy() - t.regression.T
    assert np.allclose(g[:, at].numpy(), np.sign(err) / err.size, atol=1e-9)
    mask = torch.ones(g.shape[1], dtype=torch.bool)
    mask[at] = False
    assert float(g[:, mask].abs().max()) == 0.0


def test_object_rotation_never_turns_into_a_labelled_box_and_leaves_a_neighbour_alone():
    """A pedestrian 0.1 m beside a car, inside the car's 0.2 m margin: the car does not turn at all (its grown
    footprint would overlap the pedestrian's box), even when the pedestrian has no returns (occluded); with the
    pedestrian 0.5 m away a small turn goes through and the pedestrian's returns stay where they were."""
    br = LidarDetectionBranch({"model": MODEL})
    rng = np.random.default_rng(5)
    car = np.array([5.0, 3.0, 0.75, 4.0, 1.8, 1.5, 0.0, 0], np.float32)
    u = rng.uniform(-0.5, 0.5, (80, 3)) * car[3:6]
    u[:, 2] = rng.uniform(-0.3, 0.5, 80) * car[5]
    car_pts = np.c_[car[:3] + u, np.ones(80)].astype(np.float32)
    h, w = br.occupancy_spec.shape
    vis = torch.ones(h, w, dtype=torch.uint8)
    turn = torch.tensor([math.radians(-4.0), 0.0], dtype=torch.float64)
    for gap, turns in ((0.1, False), (0.5, True)):
        ped = np.array([5.0, 3.0 + 0.9 + gap + 0.3, 0.85, 0.6, 0.6, 1.7, 0.0, 1], np.float32)
        ped_pts = np.c_[ped[:3] + rng.uniform(-0.25, 0.25, (40, 3)), np.ones(40)].astype(np.float32)
        boxes = torch.from_numpy(np.stack([car, ped]))
        for pts in (np.concatenate([car_pts, ped_pts]), car_pts):  # with and without the pedestrian's returns
            p, b, _ = br.rotate_objects(torch.from_numpy(pts), boxes, vis, turn)
            assert (float(b[0, 6]) != 0.0) == turns, (gap, len(pts))
            assert np.array_equal(p[80:].numpy(), pts[80:])  # the pedestrian's returns never move
