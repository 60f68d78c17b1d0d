"""The BEVFusion-style node core (issue 11, Deliver 2 and 5) on the generated scenario (LiDAR + left camera)
with the packaged fused network: fused frames paced by the LiDAR, a stale camera -> lidar_only with a WARN
and back to fused, a stale LiDAR -> camera_only frames paced by the camera, bad input reported while the
node keeps running, and the published boxes equal a direct call of the network on the same inputs.

Timeouts are shortened (0.15 s) so a few 10 Hz frames make an input stale. One torch thread."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.calibration import transform_points
from perception_nodes.codecs.backend import default_backend, stamp_to_ns
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.codecs.image import image_to_numpy, numpy_to_image
from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud, read_xyzi
from perception_nodes.config import ConfigError, load_params
from perception_nodes.graph.bev_fusion import BevFusionNode
from perception_nodes.graph.node import ERROR, OK, WARN

B = default_backend()
S = 1_000_000_000
IMAGE, INFO, CLOUD = topics.CAMERA_IMAGE.format(side="left"), topics.CAMERA_INFO.format(side="left"), topics.LIDAR_POINTS
MODE = "~/debug/mode"
STAGES = ("decode", "transform", "voxelize", "backbone", "camera_backbone", "camera_pool", "fuser", "heads",
          "decode_boxes", "occupancy", "encode")
EPS = float(np.finfo(np.float32).eps)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Clock:
    def __init__(self) -> None:
        self.ns = 0
        self.steady = 5 * S

    def __call__(self) -> int:
        return self.ns


@pytest.fixture(scope="module")
def frames(scenario_bag):
    """tf_static and, per frame of the 1 s scenario, its (cloud, image, camera_info)."""
    with BagReader(scenario_bag) as r:
        recs = [(rec.topic, rec.msg) for rec in r.records(topics=[topics.TF_STATIC, CLOUD, IMAGE, INFO])]
    tf = next(m for t, m in recs if t == topics.TF_STATIC)
    by = {t: [m for tt, m in recs if tt == t] for t in (CLOUD, IMAGE, INFO)}
    return tf, list(zip(by[CLOUD], by[IMAGE], by[INFO]))


@pytest.fixture(scope="module")
def net():
    from perception_nodes.models.bev_fusion import load_bev_fusion

    return load_bev_fusion()[0]


def _node(net, **overrides):
    params = {k: v for k, v in load_params()["bev_fusion"].items() if k != "enabled"}
    params.update({"lidar_timeout_s": 0.15, "camera_timeout_s": 0.15, **overrides})
    clock = Clock()
    node = BevFusionNode("bev_fusion", params, backend=B, clock=clock, steady_clock=lambda: clock.steady)
    node.net, node.sidecar = net, {}  # one load for the module (load() is exercised by warmup in the ROS test)
    from perception_nodes.models.calibration import DetectionCalibration

    node.calibration = DetectionCalibration.from_sidecar({})
    return node, clock


def _feed(node, clock, topic, msg, wait=True) -> dict:
    """Deliver ``msg`` at its stamp (+1 ms) on the node clock; with ``wait``, a held scan then sees its wait
    pass and a tick."""
    if topic != topics.TF_STATIC:
        clock.ns = max(clock.ns, stamp_to_ns(msg.header.stamp) + 1_000_000)
    clock.steady += S // 40
    out = {e.topic: e.msg for e in node.handle(topic, msg)}
    if wait and node.pending(CLOUD):
        clock.ns += node.max_wait_ns
        out.update({e.topic: e.msg for e in node.tick()})
    return out


def _frame(node, clock, cloud=None, image=None, info=None) -> dict:
    """One frame in bag order (cloud, image, camera_info), each optional; the outputs of all three."""
    out: dict = {}
    for topic, msg in ((CLOUD, cloud), (IMAGE, image), (INFO, info)):
        if msg is not None:
            out.update(_feed(node, clock, topic, msg, wait=False))
    if node.pending(CLOUD):  # the scan's image did not come: its wait passes, the timer fires
        clock.ns += node.max_wait_ns
        out.update({e.topic: e.msg for e in node.tick()})
    return out


def _status(node, suffix="mode"):
    return next(s for s in node.diagnostic_statuses() if s.name == f"bev_fusion: {suffix}")


def _balanced(node):
    acct = node.accounting()
    assert all(a["balanced"] for a in acct.values()), acct


@pytest.fixture(scope="module")
def fused_run(net, frames):
    tf, fr = frames
    node, clock = _node(net)
    _feed(node, clock, topics.TF_STATIC, tf)
    outs = [_frame(node, clock, *f) for f in fr[:3]]
    return node, outs


def test_fused_frames_paced_by_the_lidar_with_stage_latency_and_ok_mode(fused_run, frames):
    node, outs = fused_run
    _, fr = frames
    for out, (cloud, _, _) in zip(outs, fr):
        det = out[node.detections_topic]
        assert stamp_to_ns(det.header.stamp) == stamp_to_ns(cloud.header.stamp)
        assert det.header.frame_id == "base_link"
        assert len(det.detections) > 0  # the packaged network sees the scenario's cars
        assert out[MODE].data == 3.0 and stamp_to_ns(out[MODE].header.stamp) == stamp_to_ns(cloud.header.stamp)
        for t in (node.objects_topic, node.markers_topic, node.occupancy_topic, node.occupancy_uncertainty_topic,
                  node.curvature_topic):
            assert t in out, t
        assert all(f"~/debug/processing_time/{s}_ms" in out for s in STAGES), sorted(out)
        # covariance of the first box: positive variances on x, y, yaw
        cov = np.asarray(det.detections[0].results[0].pose.covariance).reshape(6, 6)
        assert cov[0, 0] > 0 and cov[1, 1] > 0 and cov[5, 5] > 0
    st = _status(node)
    assert st.level == OK and st.values["mode"] == "fused" and st.values["frames_fused"] == "3"
    assert _status(node, "network").level == OK
    _balanced(node)
    assert node.used[IMAGE] == node.used[CLOUD] == 3


def test_published_boxes_equal_a_direct_call_of_the_network(fused_run, frames, net):
    from perception_nodes.models.decode import decode_batch

    node, outs = fused_run
    tf, fr = frames
    cloud, image, info = fr[1]
    pts = read_xyzi(cloud)
    pts = pts[np.isfinite(pts).all(1)]
    pts = np.ascontiguousarray(transform_points(node.sensor_to_base(cloud.header.frame_id), pts), np.float32)
    img = image_to_numpy(image)
    K = np.asarray(info.p, np.float64).reshape(3, 4)[:, :3]
    T = node.sensor_to_base(image.header.frame_id)
    geo = net.camera.geometry(net.camera.camera_geometry(K, T, img.shape[:2]))
    with torch.inference_mode():
        out = net(torch.from_numpy(pts), torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None], geo)
    det = decode_batch(out.detection, net.lidar.head_grid, net.lidar.config.classes, calibration=node.calibration,
                       **node.decode_options)[0]
    want = det.to_box3d()
    got = boxes_from_detections(outs[1][node.objects_topic])
    assert len(got) == len(want) > 0
    # float32 network, coordinates up to ~50 m, a few hundred accumulations per value
    tol_m, tol_p = 1e3 * EPS * 50.0, 1e3 * EPS
    for g, w in zip(sorted(got, key=lambda b: -b.score), sorted(want, key=lambda b: -b.score)):
        assert g.label == w.label
        np.testing.assert_allclose(g.center, w.center, atol=tol_m)
        np.testing.assert_allclose(g.size, w.size, atol=tol_m)
        assert abs(g.score - w.score) <= tol_p
    # the occupancy grid is the same network's evidence
    occ = out.detection.occupancy_evidence[0].numpy()
    p = (occ[0] + 1.0) / (occ[0] + occ[1] + 2.0)
    grid = np.asarray(outs[1][node.occupancy_topic].data, np.int16).reshape(p.shape)
    known = grid >= 0
    assert known.mean() > 0.5
    assert np.abs(grid[known] - np.round(p[known] * 100)).max() <= 1


def test_camera_stale_gives_lidar_only_with_warn_and_back_to_fused(net, frames):
    tf, fr = frames
    node, clock = _node(net)
    _feed(node, clock, topics.TF_STATIC, tf)
    modes = [_frame(node, clock, *fr[0])[MODE].data, _frame(node, clock, *fr[1])[MODE].data]
    # the camera stops: the next scan still finds an image 0.1 s old (within camera_timeout_s = 0.15)
    # after waiting max_wait_s for its own; the one after finds none within the timeout -> lidar_only
    modes.append(_frame(node, clock, fr[2][0])[MODE].data)
    out = _frame(node, clock, fr[3][0])
    modes.append(out[MODE].data)
    assert modes == [3.0, 3.0, 3.0, 1.0]
    st = _status(node)
    assert st.level == WARN and st.values["mode"] == "lidar_only" and "camera stale" in st.message, st
    assert len(out[node.detections_topic].detections) > 0  # the LiDAR still detects
    # the camera is back: its first image comes after the scan of its frame, which does not wait for a stale
    # camera (lidar_only); from the next frame on, fused again, status OK at once
    assert _frame(node, clock, *fr[4])[MODE].data == 1.0
    out = _frame(node, clock, *fr[5])
    assert out[MODE].data == 3.0 and _status(node).level == OK
    assert node.mode_frames["lidar_only"] == 2 and node.mode_frames["fused"] == 4
    node.finish()
    _balanced(node)
    assert node.dropped[IMAGE]["unpaired"] == 1  # the returning camera's first image


def test_lidar_stale_gives_camera_only_frames_paced_by_the_camera(net, frames):
    tf, fr = frames
    node, clock = _node(net)
    _feed(node, clock, topics.TF_STATIC, tf)
    assert _frame(node, clock, *fr[0])[MODE].data == 3.0
    # the LiDAR stops: the image 0.1 s after the last scan waits for its scan (LiDAR not stale yet);
    # the next ones (0.2, 0.3 s after it, > lidar_timeout_s) are camera_only frames with the image's stamp
    got = []
    for f in fr[1:4]:
        out = _frame(node, clock, None, f[1], f[2])
        if MODE in out:
            got.append((stamp_to_ns(out[MODE].header.stamp), out[MODE].data, len(out[node.detections_topic].detections)))
    assert [g[:2] for g in got] == [(stamp_to_ns(fr[k][1].header.stamp), 2.0) for k in (2, 3)]
    st = _status(node)
    assert st.level == WARN and st.values["mode"] == "camera_only" and "LiDAR stale" in st.message, st
    # the LiDAR is back: fused
    assert _frame(node, clock, *fr[4])[MODE].data == 3.0 and _status(node).level == OK
    node.finish()
    _balanced(node)
    assert node.dropped[IMAGE]["unpaired"] == 1  # the image no scan took (0.1 s after the last one)


def test_camera_only_from_start_without_any_lidar(net, frames):
    tf, fr = frames
    node, clock = _node(net)
    _feed(node, clock, topics.TF_STATIC, tf)
    modes = [o[MODE].data for f in fr[:4] if MODE in (o := _frame(node, clock, None, f[1], f[2]))]
    assert modes and set(modes) == {2.0}  # once lidar_timeout_s of node clock has passed without a scan
    assert "no LiDAR scan" in _status(node).message
    _balanced(node)


def _image_like(msg, arr, encoding="rgb8"):
    return numpy_to_image(arr, encoding, stamp_to_ns(msg.header.stamp), msg.header.frame_id, B)


def test_bad_input_is_reported_and_the_node_keeps_running(net, frames):
    tf, fr = frames
    node, clock = _node(net, lidar_timeout_s=0.5, camera_timeout_s=0.5)  # frames without input stay live
    _feed(node, clock, topics.TF_STATIC, tf)
    c0, i0, f0 = fr[0]
    assert _frame(node, clock, c0, i0, f0)[MODE].data == 3.0
    # empty cloud with a good image: the frame runs camera-only, an `empty` warning says why
    c, i, f = fr[1]
    empty = create_xyzi_cloud(np.zeros((0, 4), np.float32), stamp_to_ns(c.header.stamp), c.header.frame_id, B)
    out = _frame(node, clock, empty, i, f)
    assert out[MODE].data == 2.0 and "empty" in node.warnings
    # bad camera_info (zero focal length) -> malformed, the last valid one stays
    c, i, f = fr[3]
    bad_info = dataclasses.replace(f, k=[0.0] * 9, p=[0.0] * 12)
    _feed(node, clock, INFO, bad_info)
    assert node.malformed[INFO] == 1 and node.model is not None
    # wrong encoding -> malformed; image narrower than input_width -> dropped image_too_small
    _feed(node, clock, IMAGE, _image_like(i, np.zeros((96, 320), np.uint16), "mono16"))
    assert node.malformed[IMAGE] == 1
    _feed(node, clock, IMAGE, _image_like(i, image_to_numpy(i)[:, :160].copy()))
    assert node.dropped[IMAGE]["image_too_small"] == 1 and "image_size" in node.warnings
    # image whose size differs from its camera_info (wider: 640 x 192 against a 320 x 96 camera_info) -> not used,
    # the frame runs lidar_only and says why
    c, i, f = fr[4]
    big = _image_like(i, np.repeat(np.repeat(image_to_numpy(i), 2, 0), 2, 1))
    out = _frame(node, clock, c, big, f)
    assert out[MODE].data == 1.0 and "size_mismatch" in node.warnings and "differs" in _status(node).message
    # a wider image with a matching camera_info is resized to input_width (K scaled) and used
    c, i, f = fr[5]
    K2 = (np.asarray(f.k).reshape(3, 3) * [[2, 1, 2], [1, 2, 2], [1, 1, 1]]).ravel().tolist()
    P2 = np.asarray(f.p).reshape(3, 4).copy()
    P2[0, 0] *= 2
    P2[1, 1] *= 2
    P2[0, 2] = (P2[0, 2] + 0.5) * 2 - 0.5
    P2[1, 2] = (P2[1, 2] + 0.5) * 2 - 0.5
    info2 = dataclasses.replace(f, width=640, height=192, k=K2, p=P2.ravel().tolist())
    big = _image_like(i, np.repeat(np.repeat(image_to_numpy(i), 2, 0), 2, 1))
    out = _frame(node, clock, c, big, info2)
    assert out[MODE].data == 3.0 and node.images_resized == 1
    # an image in a frame with no transform to base_link: not used, the scan goes LiDAR-only
    c, i, f = fr[6]
    unknown = dataclasses.replace(i, header=dataclasses.replace(i.header, frame_id="unknown_optical"))
    out = _frame(node, clock, c, unknown, f)
    assert out[MODE].data == 1.0 and "camera frame unknown" in _status(node).message
    # valid input still gives fused frames
    c, i, f = fr[7]
    assert _frame(node, clock, c, i, f)[MODE].data == 3.0 and _status(node).level == OK
    assert not node.faults
    node.finish()
    _balanced(node)


def test_no_usable_input_gives_mode_none_empty_outputs_and_error(net, frames):
    tf, fr = frames
    node, clock = _node(net)
    _feed(node, clock, topics.TF_STATIC, tf)
    c = fr[0][0]
    nan = create_xyzi_cloud(np.full((100, 4), np.nan, np.float32), stamp_to_ns(c.header.stamp), c.header.frame_id, B)
    out = _feed(node, clock, CLOUD, nan)  # no camera ever: released after max_wait_s without one
    assert out[MODE].data == 0.0 and len(out[node.detections_topic].detections) == 0
    assert set(out[node.occupancy_topic].data) == {-1}
    st = _status(node)
    assert st.level == ERROR and st.values["mode"] == "none" and "no usable point" in st.message, st
    assert node.points_dropped["nonfinite"] == 100
    _balanced(node)


def test_the_vehicles_own_returns_are_dropped_as_lidar_detection_drops_them(net, frames):
    """The params file's footprint and sensor radius (lidar_detection's): a scan of nothing but returns on the
    ego's roof and next to the sensor leaves the network no point (no usable LiDAR), each return counted."""
    tf, fr = frames
    node, clock = _node(net)
    assert node.min_return_range == 1.0 and node.ego_box == (-2.5, 2.7, -1.7, 1.7)
    _feed(node, clock, topics.TF_STATIC, tf)
    c = fr[0][0]
    to_base = node.sensor_to_base(c.header.frame_id)
    roof_base = np.array([[x, y, 1.4] for x in np.linspace(-2.0, 2.0, 9) for y in (-0.8, 0.0, 0.8)], np.float64)
    roof = np.linalg.inv(to_base) @ np.c_[roof_base, np.ones(len(roof_base))].T  # into the sensor frame
    pts = np.c_[roof[:3].T, np.full(len(roof_base), 0.2)].astype(np.float32)
    near = np.hypot(roof_base[:, 0] - to_base[0, 3], roof_base[:, 1] - to_base[1, 3]) < 1.0
    _feed(node, clock, CLOUD, create_xyzi_cloud(pts, stamp_to_ns(c.header.stamp), c.header.frame_id, B))
    assert node.points_dropped["near_sensor"] == near.sum() > 0
    assert node.points_dropped["ego_box"] == len(pts) - near.sum() > 0
    assert "no usable point" in _status(node).message
    _balanced(node)


def test_parameters_are_checked():
    params = {k: v for k, v in load_params()["bev_fusion"].items() if k != "enabled"}
    with pytest.raises(ConfigError, match="match_tolerance_s"):
        BevFusionNode("bev_fusion", {**params, "match_tolerance_s": 1.0, "camera_timeout_s": 0.5}, backend=B,
                      clock=lambda: 0)
    with pytest.raises(ConfigError, match="lidar_timeout_s"):
        BevFusionNode("bev_fusion", {**params, "lidar_timeout_s": -1.0}, backend=B, clock=lambda: 0)
