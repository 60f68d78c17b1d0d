"""The camera -> BEV node core (issue 11, Deliver 1 and 5) on the generated scenario's left camera: one
grid pair and one health sample per image with its stamp, per-stage latency, copy-free decoding, the
geometry rebuilt when the calibration changes, every bad-input case reported while the node keeps
running, and the packaged weights loading into the network they were trained for.

The node runs a small randomly initialised network from a temporary weights folder (the behaviour under
test does not depend on the weights); the packaged weights are checked on their own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.codecs.backend import default_backend, make_header, stamp_to_ns
from perception_nodes.codecs.image import image_to_numpy, numpy_to_image
from perception_nodes.config import load_params
from perception_nodes.errors import NodeUnavailable
from perception_nodes.evaluation import grid_array
from perception_nodes.graph.camera_bev import CameraBevNode, scaled_intrinsics
from perception_nodes.models.camera_bev import NETWORK, CameraBevNet, load_camera_bev
from perception_nodes.models.weights_io import WeightsError, default_weights_dir, read_sidecar, save_weights

B = default_backend()
S = 1_000_000_000
STAGES = ("decode", "backbone", "lift", "pool", "heads", "publish")
IMAGE, INFO = topics.CAMERA_IMAGE.format(side="left"), topics.CAMERA_INFO.format(side="left")
SMALL = {"depth_bins": [1.0, 40.0, 1.0], "bev_origin": [-20.0, -20.0], "bev_size": [80, 80],
         "image_channels": [8, 16], "image_blocks": [0, 1], "context_channels": 8, "bev_channels": [8, 16],
         "occupancy_bias": 0.0}


class Clock:
    def __init__(self) -> None:
        self.ns = 0
        self.steady = 5 * S

    def __call__(self) -> int:
        return self.ns


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    net = CameraBevNet(SMALL).eval()
    return save_weights(net, tmp_path_factory.mktemp("camera_bev_weights"), network=NETWORK, config=net.config)


def _node(weights, **overrides):
    params = {k: v for k, v in load_params()["camera_bev"].items() if k != "enabled"}
    params.update(weights=str(weights), **overrides)
    clock = Clock()
    node = CameraBevNode("camera_bev", params, backend=B, clock=clock, steady_clock=lambda: clock.steady)
    node.warmup()
    return node, clock


def _feed(node, clock, topic, msg, wait=True) -> dict:
    """Deliver ``msg``; with ``wait``, an image held for its camera_info then sees the node clock pass its
    wait and a timer tick (the synthetic cases reuse one camera_info for images of other stamps)."""
    if hasattr(msg, "header") and topic != topics.TF_STATIC:
        clock.ns = max(clock.ns, stamp_to_ns(msg.header.stamp) + 1_000_000)
    clock.steady += S // 40
    emits = node.handle(topic, msg)
    if wait and topic == IMAGE and node.pending(IMAGE) and node.model is not None:
        clock.ns += node.info_wait_ns
        emits += node.tick()
    return {e.topic: e.msg for e in emits}


@pytest.fixture(scope="module")
def records(scenario_bag):
    with BagReader(scenario_bag) as r:
        recs = [(rec.topic, rec.msg) for rec in r.records(topics=[topics.TF_STATIC, IMAGE, INFO])]
    images = [i for i, (t, _) in enumerate(recs) if t == IMAGE]
    return recs[: images[5] + 1]  # tf_static + the first six frames


def _image(records, k=0):
    return [m for t, m in records if t == IMAGE][k]


def _info(records):
    return next(m for t, m in records if t == INFO)


def _tf(records):
    return next(m for t, m in records if t == topics.TF_STATIC)


@pytest.fixture(scope="module")
def run(weights, records):
    node, clock = _node(weights)
    outs = [o for topic, msg in records if node.output_topic in (o := _feed(node, clock, topic, msg))]
    return node, outs


def _status(node):
    return next(s for s in node.diagnostic_statuses() if s.name == "camera_bev: camera")


def test_every_image_gives_grids_health_and_stage_latency(run, records):
    node, outs = run
    imgs = [m for t, m in records if t == IMAGE]
    assert len(outs) == len(imgs)
    for out, img in zip(outs, imgs):
        occ, unc = out[node.output_topic], out[node.uncertainty_topic]
        assert stamp_to_ns(occ.header.stamp) == stamp_to_ns(img.header.stamp) == stamp_to_ns(unc.header.stamp)
        assert (occ.info.width, occ.info.height, occ.info.resolution) == (320, 320, 0.25)
        assert out[node.health_topic].data == 1.0
        assert all(f"~/debug/processing_time/{s}_ms" in out for s in STAGES)
    p = grid_array(outs[0][node.output_topic])
    u = grid_array(outs[0][node.uncertainty_topic])
    # the small network covers a 40 m square: evidence only ahead of the camera and inside that square,
    # unknown (-1, vacuity 100) behind it and outside it
    ys, xs = np.nonzero(p >= 0)
    assert xs.size > 100 and (xs >= 160).all() and (xs < 240).all() and ((ys >= 80) & (ys < 240)).all()
    assert (u[p < 0] == 100).all() and (u[p >= 0] < 100).all()
    assert all(v["balanced"] for v in node.accounting().values())
    assert node.accounting()[IMAGE]["used"] == len(imgs) and node.geometry_builds == 1
    assert _status(node).level == 0


def test_decoding_takes_no_copy_of_rgb_and_bgr_gives_the_same_grid(weights, records):
    node, clock = _node(weights)
    img = _image(records)
    rgb = image_to_numpy(img)
    view = node._rgb(rgb, "rgb8")
    assert view.ctypes.data == rgb.ctypes.data and np.shares_memory(view, rgb)  # the message buffer itself
    _feed(node, clock, topics.TF_STATIC, _tf(records))
    _feed(node, clock, INFO, _info(records))
    a = _feed(node, clock, IMAGE, img)[node.output_topic]
    bgr = numpy_to_image(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8", stamp_to_ns(img.header.stamp) + S,
                         img.header.frame_id, B)
    b = _feed(node, clock, IMAGE, bgr)[node.output_topic]
    assert np.array_equal(grid_array(a), grid_array(b))


def test_bad_input_is_reported_and_the_node_keeps_running(weights, records):
    node, clock = _node(weights)
    img, info = _image(records), _info(records)
    stamp = stamp_to_ns(img.header.stamp)
    rgb = image_to_numpy(img)
    # no camera_info yet: the first image waits, the second replaces it (dropped no_camera_info)
    _feed(node, clock, topics.TF_STATIC, _tf(records))
    assert node.output_topic not in _feed(node, clock, IMAGE, img)
    assert node.pending(IMAGE) == 1 and _status(node).level == 1
    second = numpy_to_image(np.ascontiguousarray(rgb), "rgb8", stamp + S // 10, img.header.frame_id, B)
    _feed(node, clock, IMAGE, second)
    assert node.dropped[IMAGE]["no_camera_info"] == 1 and "no_camera_info" in node.warnings
    out = _feed(node, clock, INFO, info)  # the held image goes out with it
    assert node.output_topic in out and node.pending(IMAGE) == 0
    # a 16-bit image: malformed, said why
    depth = numpy_to_image(np.zeros((96, 320), np.uint16), "mono16", stamp + 2 * S // 10, img.header.frame_id, B)
    _feed(node, clock, IMAGE, depth)
    assert node.malformed[IMAGE] == 1 and "mono16" in node.warnings["malformed"]
    # an image of another size than its camera_info: dropped size_mismatch
    small = numpy_to_image(np.ascontiguousarray(rgb[:48, :160]), "rgb8", stamp + 3 * S // 10, img.header.frame_id, B)
    assert node.output_topic not in _feed(node, clock, IMAGE, small)
    assert node.dropped[IMAGE]["size_mismatch"] == 1 and "160x48" in node.warnings["size_mismatch"]
    # bad camera_info (zero focal length): malformed, the last valid calibration stays in use
    _feed(node, clock, INFO, dataclasses.replace(info, k=np.zeros(9)))
    assert node.malformed[INFO] == 1 and "focal" in node.warnings["malformed"]
    # a black image: no network run, an all-unknown grid, health 0, a blackout warning, status ERROR
    black = numpy_to_image(np.zeros_like(rgb), "rgb8", stamp + 4 * S // 10, img.header.frame_id, B)
    out = _feed(node, clock, IMAGE, black)
    assert (grid_array(out[node.output_topic]) == -1).all() and out[node.health_topic].data == 0.0
    assert node.blackout_frames == 1 and "blackout" in node.warnings and _status(node).level == 2
    # an unknown frame_id: dropped calibration
    lost = numpy_to_image(np.ascontiguousarray(rgb), "rgb8", stamp + 5 * S // 10, "no_such_frame", B)
    _feed(node, clock, IMAGE, lost)
    assert node.dropped[IMAGE]["calibration"] == 1
    # and it still works
    ok = numpy_to_image(np.ascontiguousarray(rgb), "rgb8", stamp + 6 * S // 10, img.header.frame_id, B)
    out = _feed(node, clock, IMAGE, ok)
    assert (grid_array(out[node.output_topic]) >= 0).any() and out[node.health_topic].data == 1.0
    assert all(v["balanced"] for v in node.accounting().values()), node.accounting()


def test_a_new_calibration_rebuilds_the_geometry_and_wide_images_are_resized(weights, records):
    node, clock = _node(weights)
    img, info = _image(records), _info(records)
    stamp = stamp_to_ns(img.header.stamp)
    _feed(node, clock, topics.TF_STATIC, _tf(records))
    _feed(node, clock, INFO, info)
    _feed(node, clock, IMAGE, img)
    _feed(node, clock, IMAGE, numpy_to_image(np.ascontiguousarray(image_to_numpy(img)), "rgb8", stamp + S // 10,
                                             img.header.frame_id, B))
    assert node.geometry_builds == 1  # same calibration: the cached geometry
    # the same camera at twice the width and height: resized back to 320 px wide, K scaled with it
    P = np.asarray(info.p, np.float64).reshape(3, 4)
    P2 = np.diag([2.0, 2.0, 1.0]) @ P
    P2[0, 2], P2[1, 2] = (P[0, 2] + 0.5) * 2 - 0.5, (P[1, 2] + 0.5) * 2 - 0.5
    K2 = P2[:, :3].copy()
    _feed(node, clock, INFO, dataclasses.replace(info, width=2 * info.width, height=2 * info.height,
                                                 k=K2.reshape(-1), p=P2.reshape(-1)))
    big = np.repeat(np.repeat(image_to_numpy(img), 2, axis=0), 2, axis=1)
    out = _feed(node, clock, IMAGE, numpy_to_image(big, "rgb8", stamp + 2 * S // 10, img.header.frame_id, B))
    assert node.output_topic in out and node.geometry_builds == 1  # resized to the same K: same geometry
    np.testing.assert_allclose(scaled_intrinsics(K2, (192, 640), (96, 320)), P[:, :3], atol=1e-9)
    # a changed calibration (focal length 10 % longer) rebuilds it
    P3 = P.copy()
    P3[0, 0] *= 1.1
    P3[1, 1] *= 1.1
    _feed(node, clock, INFO, dataclasses.replace(info, k=P3[:, :3].reshape(-1), p=P3.reshape(-1)))
    _feed(node, clock, IMAGE, numpy_to_image(np.ascontiguousarray(image_to_numpy(img)), "rgb8", stamp + 3 * S // 10,
                                             img.header.frame_id, B))
    assert node.geometry_builds == 2


def _frames(records, sizes):
    """(image, camera_info) per frame, of the given (W, H) sizes (crops of the scenario image; the
    camera_info says the same size), at 0.1 s apart: the converted KITTI bag's size change."""
    img, info = _image(records), _info(records)
    rgb, stamp = image_to_numpy(img), stamp_to_ns(img.header.stamp)
    out = []
    for k, (w, h) in enumerate(sizes):
        t = stamp + k * S // 10
        im = numpy_to_image(np.ascontiguousarray(rgb[:h, :w]), "rgb8", t, img.header.frame_id, B)
        ci = dataclasses.replace(info, width=w, height=h, header=make_header(B, t, info.header.frame_id))
        out.append((im, ci))
    return out


@pytest.mark.parametrize("image_first", [True, False], ids=["image_first", "info_first"])
def test_each_image_is_paired_with_the_camera_info_of_its_stamp(weights, records, image_first):
    """KITTI: frame 0 is 1224x370, the others 1242x375, each camera_info matches its image; in the bag the
    image is written before its camera_info, live the order can be the reverse. Pairing with the latest
    camera_info dropped an image as size_mismatch either way; by stamp every image is used."""
    node, clock = _node(weights)
    _feed(node, clock, topics.TF_STATIC, _tf(records))
    outs = []
    for im, ci in _frames(records, [(312, 94), (320, 96), (320, 96)]):
        for topic, msg in ((IMAGE, im), (INFO, ci)) if image_first else ((INFO, ci), (IMAGE, im)):
            out = _feed(node, clock, topic, msg, wait=False)  # no time passes between image and info
            if node.output_topic in out:
                outs.append(stamp_to_ns(out[node.output_topic].header.stamp))
    assert outs == [stamp_to_ns(im.header.stamp) for im, _ in _frames(records, [(312, 94)] * 3)]
    assert "size_mismatch" not in node.dropped.get(IMAGE, {}) and node.camera_info_fallbacks == 0
    assert node.pending(IMAGE) == 0 and all(v["balanced"] for v in node.accounting().values())


def test_an_image_whose_camera_info_does_not_come_takes_the_latest_after_the_wait(weights, records):
    node, clock = _node(weights)
    _feed(node, clock, topics.TF_STATIC, _tf(records))
    (im0, ci0), (im1, _), (im2, ci2) = _frames(records, [(320, 96)] * 3)
    _feed(node, clock, INFO, ci0)
    assert node.output_topic in _feed(node, clock, IMAGE, im0, wait=False)  # stamps matched: paired source
    assert node.output_topic not in _feed(node, clock, IMAGE, im1, wait=False)  # waits for its camera_info
    assert node.pending(IMAGE) == 1
    clock.ns += node.info_wait_ns // 2
    assert not node.tick() or node.pending(IMAGE) == 1  # still inside the wait
    clock.ns += node.info_wait_ns
    out = {e.topic: e.msg for e in node.tick()}  # its camera_info never came: the latest one
    assert stamp_to_ns(out[node.output_topic].header.stamp) == stamp_to_ns(im1.header.stamp)
    assert node.camera_info_fallbacks == 1 and "camera_info_fallback" in node.warnings
    # a camera_info newer than the held image: its own has passed, no wait
    _feed(node, clock, IMAGE, im2, wait=False)
    assert node.pending(IMAGE) == 1
    late = dataclasses.replace(ci2, header=make_header(B, stamp_to_ns(im2.header.stamp) + 1, ci2.header.frame_id))
    assert node.output_topic in _feed(node, clock, INFO, late, wait=False)
    assert node.camera_info_fallbacks == 2 and all(v["balanced"] for v in node.accounting().values())


def test_missing_or_bad_weights_are_said(tmp_path):
    params = {k: v for k, v in load_params()["camera_bev"].items() if k != "enabled"}
    with pytest.raises(WeightsError, match="no weights"):
        CameraBevNode("camera_bev", {**params, "weights": str(tmp_path)}, backend=B, clock=lambda: 0).warmup()
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    (tmp_path / "model.json").write_text('{"format": 1, "network": "lidar_detection"}')
    with pytest.raises(WeightsError, match="lidar_detection"):
        CameraBevNode("camera_bev", {**params, "weights": str(tmp_path)}, backend=B, clock=lambda: 0).warmup()


def test_packaged_weights_load_into_their_network():
    folder = default_weights_dir(NETWORK)
    try:
        side = read_sidecar(folder, NETWORK)
    except WeightsError:
        params = {k: v for k, v in load_params()["camera_bev"].items() if k != "enabled"}
        with pytest.raises(NodeUnavailable, match="no packaged camera_bev weights"):
            CameraBevNode("camera_bev", params, backend=B, clock=lambda: 0).warmup()
        pytest.skip("no packaged camera_bev weights in this checkout (the node is left out; checked above)")
    net, side2 = load_camera_bev(folder)
    assert side2 == side and not net.training
    assert (folder / "model.safetensors").stat().st_size < 4_000_000
    # the held-out metrics it was packaged with beat the trivial baselines it was compared to
    gen = side["metrics"]["generated_test"]
    assert gen["model"]["iou"] > gen["all_occupied"]["iou"] and gen["model"]["brier"] < gen["constant_rate"]["brier"]


def test_packaged_weights_beat_a_constant_on_the_demo_scene(scenario_bag):
    """The demo scene (urban_street seed 0, in no training split): the node's grid on the visible cells
    where it has evidence, against the ground truth, beside the best constant on the same cells."""
    from perception_nodes.evaluation import resample_like

    try:
        read_sidecar(default_weights_dir(NETWORK), NETWORK)
    except WeightsError:
        pytest.skip("no packaged camera_bev weights in this checkout")
    params = {k: v for k, v in load_params()["camera_bev"].items() if k != "enabled"}
    clock = Clock()
    node = CameraBevNode("camera_bev", params, backend=B, clock=clock, steady_clock=lambda: clock.steady)
    node.warmup()
    truth, grids = {}, []
    wanted = [topics.TF_STATIC, IMAGE, INFO, topics.GT_OCCUPANCY, topics.GT_VISIBILITY]
    with BagReader(scenario_bag) as r:
        for rec in r.records(topics=wanted):
            if rec.topic in (topics.GT_OCCUPANCY, topics.GT_VISIBILITY):
                truth.setdefault(stamp_to_ns(rec.msg.header.stamp), {})[rec.topic] = rec.msg
            elif len(grids) < 10:
                out = _feed(node, clock, rec.topic, rec.msg)
                if node.output_topic in out:
                    grids.append(out[node.output_topic])
    ps, ys = [], []
    for g in grids:
        gt = truth[stamp_to_ns(g.header.stamp)]
        p = grid_array(g)
        m = (resample_like(gt[topics.GT_VISIBILITY], g) >= 50) & (p >= 0)
        ps.append(p[m] / 100.0)
        ys.append((resample_like(gt[topics.GT_OCCUPANCY], g) >= 50)[m])
    p, y = np.concatenate(ps), np.concatenate(ys).astype(np.float64)
    rate = y.mean()
    assert len(grids) == 10 and p.size > 10_000 and 0.01 < rate < 0.5
    brier, constant = np.mean((p - y) ** 2), rate * (1 - rate)
    inter, union = np.sum((p > 0.5) & (y > 0.5)), np.sum((p > 0.5) | (y > 0.5))
    assert brier < 0.6 * constant, (brier, constant)
    assert inter / union > 2 * rate, (inter / union, rate)  # all-occupied scores IoU = rate
