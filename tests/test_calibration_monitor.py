"""The calibration monitor node through the replay API (clean and stereo-decalibrated generated bags),
under hostile input, and the offline ``calib check`` CLI on the real KITTI pair."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.codecs.backend import default_backend
from perception_nodes.codecs.camera_info import CameraModel, camera_info_msg
from perception_nodes.codecs.image import numpy_to_image
from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud
from perception_nodes.config import load_params
from perception_nodes.graph.calibration_monitor import CalibrationMonitorNode
from perception_nodes.graph.node import synthetic_scan
from perception_nodes.replay import run_graph
from tests.conftest import SHARED_DATA, require

B = default_backend()
OK, WARN, ERROR, STALE = 0, 1, 2, 3


def _monitor_params(**over) -> dict:
    p = load_params()
    mon = {**p["calibration_monitor"], "check_every_n_scans": 5, **over}
    return {"calibration_monitor": mon}


def _final_statuses(out_dir) -> dict[str, tuple[int, str]]:
    """name -> (level, message) of the last /diagnostics the replay wrote."""
    last = {}
    with BagReader(out_dir) as r:
        for rec in r.records(topics=[topics.DIAGNOSTICS]):
            for s in rec.msg.status:
                last[s.name] = (int.from_bytes(s.level, "little") if isinstance(s.level, bytes) else int(s.level),
                                s.message)
    return last


@pytest.fixture(scope="module")
def decalibrated_bag(tmp_path_factory):
    """The default scenario (1 s) with the right camera pitched by 1 deg from the start."""
    from perception_nodes.scenario.bag import write_scenario_bag
    from perception_nodes.scenario.faults import Faults

    out = tmp_path_factory.mktemp("decal") / "bag"
    return write_scenario_bag(out, duration_s=1.0, progress=False,
                              faults=Faults(stereo_decalibration_deg=1.0, stereo_decalibration_axis="x"))


@pytest.mark.slow
def test_replay_of_the_default_scenario_shows_every_camera_ok(scenario_bag, tmp_path):
    res = run_graph(scenario_bag, _monitor_params(), tmp_path / "out", progress=False)
    st = _final_statuses(tmp_path / "out")
    for cam in ("left", "right", "mono"):
        level, msg = st[f"calibration_monitor: camera {cam}"]
        assert level == OK, (cam, msg)
    assert st["calibration_monitor: stereo left/right"][0] == OK
    assert res.output_counts["/calibration_monitor/debug/right/edge_statistic"] == 2  # 10 scans, every 5th
    acct = res.latency["inputs"]["calibration_monitor"]
    assert all(a["balanced"] for a in acct.values()), acct
    assert acct[topics.LIDAR_POINTS]["used"] == 2 and acct[topics.LIDAR_POINTS]["dropped"] == {"sampled_out": 8}


@pytest.mark.slow
def test_replay_of_a_stereo_decalibrated_bag_flags_the_right_camera(decalibrated_bag, tmp_path):
    run_graph(decalibrated_bag, _monitor_params(), tmp_path / "out", progress=False)
    st = _final_statuses(tmp_path / "out")
    right_level, right_msg = st["calibration_monitor: camera right"]
    assert right_level in (WARN, ERROR), right_msg
    assert "stereo left/right" in right_msg and "rows not aligned" in right_msg
    pair_level, pair_msg = st["calibration_monitor: stereo left/right"]
    # measured: 1 deg pitch at 320x96 (fy = 186 px) shifts rows by 3.2 px; ERROR above 2 px
    assert pair_level == ERROR, pair_msg
    for cam in ("left", "mono"):  # the cameras that did not move stay OK
        assert st[f"calibration_monitor: camera {cam}"][0] == OK, st[f"calibration_monitor: camera {cam}"]


def _node(**over) -> CalibrationMonitorNode:
    """A monitor of one camera checking every scan, on a clock advancing 100 ms per reading."""
    p = {k: v for k, v in _monitor_params(check_every_n_scans=1, cameras=["left"], **over)["calibration_monitor"].items()
         if k != "enabled"}
    now = [10**18]

    def tick():
        now[0] += 10**8
        return now[0]

    return CalibrationMonitorNode("calibration_monitor", p, backend=B, clock=tick, steady_clock=tick,
                                  log=logging.getLogger("test"))


def _left_model(w=64, h=48) -> CameraModel:
    K = np.array([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]])
    return CameraModel(width=w, height=h, frame_id="velodyne", distortion_model="plumb_bob", K=K, D=np.zeros(5),
                       R=np.eye(3), P=np.hstack([K, np.zeros((3, 1))]))


def test_bad_camera_info_is_counted_with_its_reason_and_the_node_keeps_checking():
    node = _node()
    info_t, image_t = node.info_topics["left"], node.image_topics["left"]
    bad = camera_info_msg(_left_model(), 10**18)
    bad.k = np.zeros(9)
    node.handle(info_t, bad)
    assert node.malformed[info_t] == 1
    statuses = {s.name: s for s in node.diagnostic_statuses()}
    assert "zero focal length" in statuses["calibration_monitor: inputs"].message
    assert statuses["calibration_monitor: camera left"].level == STALE
    assert "no CameraInfo yet" in statuses["calibration_monitor: camera left"].message or \
        "not checked yet" in statuses["calibration_monitor: camera left"].message
    # a good CameraInfo, an image and a scan (camera frame = LiDAR frame: the identity transform)
    stamp = 10**18
    node.handle(info_t, camera_info_msg(_left_model(), stamp))
    node.handle(topics.LIDAR_POINTS, create_xyzi_cloud(synthetic_scan(), stamp, "velodyne", B))
    img = np.zeros((48, 64, 3), np.uint8)
    node.handle(image_t, numpy_to_image(img, "rgb8", stamp, "velodyne", B))
    assert node.frames_out == 1 and "left" in node.results
    for topic, a in node.accounting().items():
        assert a["balanced"], (topic, a)
    assert sum(node.faults.values()) == 0


_msgs_cache: list = []


def _hostile():
    from tests.test_fuzz_nodes import CAMERA_INFOS, CLOUDS, HOSTILE, IMAGES

    return st.lists(st.one_of(st.tuples(st.just("info"), CAMERA_INFOS), st.tuples(st.just("image"), IMAGES),
                              st.tuples(st.just("cloud"), HOSTILE), st.tuples(st.just("cloud"), CLOUDS)),
                    min_size=2, max_size=6)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_hostile())
def test_hostile_input_never_escapes_and_accounting_balances(cases):
    """Fuzzed CameraInfo, Image and PointCloud2 messages (the project's fuzz strategies) on the monitor's
    inputs: no exception escapes, nothing is counted as an internal fault, every input balances."""
    if not _msgs_cache:
        _msgs_cache.append(_node(max_stamp_diff_s=60.0))
    node = _msgs_cache[0]
    for kind, (_, msg) in cases:
        topic = {"info": node.info_topics["left"], "image": node.image_topics["left"], "cloud": node.lidar_topic}[kind]
        out = node.handle(topic, msg)
        assert isinstance(out, list)
        assert sum(node.faults.values()) == 0, dict(node.faults)
        for t, a in node.accounting().items():
            assert a["balanced"], (t, a)
    node.tick()


@pytest.mark.slow
def test_cli_checks_the_real_kitti_pair(capsys):
    from perception_nodes.cli import main

    d = require(SHARED_DATA / "kitti_stereo_srcnn/demo")
    args = ["calib", "check", "--kitti-calib", str(d / "calib.txt"), "--image", f"left={d / 'left.png'}",
            "--image", f"right={d / 'right.png'}", "--velodyne", str(d / "lidar.bin")]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    doc = json.loads(lines[-1])
    assert doc["verdict"] == "OK" and set(doc["cameras"]) == {"left", "right"} and len(doc["stereo"]) == 1
    assert lines[0].startswith("left: OK")
    # the left extrinsic pitched by 2 deg: measured F = 0.63 (ERROR below 0.7): exit status 1
    assert main(args[:6] + ["--velodyne", str(d / "lidar.bin"), "--rotate", "left:x:2", "--no-stereo"]) == 1
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["cameras"]["left"]["verdict"] == "ERROR"
    assert main(args[:2] + ["--kitti-calib", str(d / "left.png"), "--image", str(d / "left.png"),
                            "--velodyne", str(d / "lidar.bin")]) == 2
    assert "KITTI calib file" in capsys.readouterr().err


@pytest.mark.slow
def test_live_rclpy_node_checks_a_real_kitti_capture(ros_context, kitti_bag):
    """The monitor as a managed rclpy node (real Fast DDS): a converted KITTI frame published as a sensor
    driver would (/tf_static, scan, image, CameraInfo) gives the left camera an OK status on /diagnostics."""
    import rclpy
    from rclpy.serialization import deserialize_message

    from perception_nodes.ros.backend import _message_class
    from perception_nodes.ros.live import LiveGraph
    from perception_nodes.ros.qos import profile
    from tests.ros_util import collector, spinning, wait_for

    params = _monitor_params(check_every_n_scans=1, cameras=["left"])
    graph = LiveGraph(params=params, context=ros_context)
    user = rclpy.create_node("calib_driver", context=ros_context)
    graph.executor.add_node(user)
    got = collector(user, [(topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY)])
    want = [topics.TF_STATIC, topics.LIDAR_POINTS, topics.CAMERA_IMAGE.format(side="left"),
            topics.CAMERA_INFO.format(side="left")]
    with BagReader(kitti_bag) as r:
        first: dict[str, object] = {}
        for rec in r.records(topics=want, raw=True):
            if rec.topic not in first:
                first[rec.topic] = deserialize_message(bytes(rec.msg), _message_class(rec.msgtype))
    pubs = {t: user.create_publisher(type(m), t, profile("latched" if t == topics.TF_STATIC else "reliable"))
            for t, m in first.items()}

    def left_status():
        for arr in reversed(got[topics.DIAGNOSTICS]):
            for s in arr.status:
                if s.name == "calibration_monitor: camera left" and s.level != b"\x03":
                    return s
        return None

    try:
        with spinning(graph.executor):
            assert wait_for(lambda: all(p.get_subscription_count() >= 1 for p in pubs.values()), 20.0)
            for t in want:  # the transforms first (latched), then the capture
                pubs[t].publish(first[t])
            assert wait_for(lambda: left_status() is not None, 60.0), [
                (s.name, s.level, s.message) for a in got[topics.DIAGNOSTICS][-1:] for s in a.status]
        s = left_status()
        assert s.level == b"\x00", s.message
        kv = {v.key: v.value for v in s.values}
        assert float(kv["edge_statistic"]) >= 0.9 and int(kv["edge_points"]) >= 500
    finally:
        user.destroy_node()
        graph.close()


def test_each_image_is_checked_with_the_camera_info_of_its_stamp():
    """KITTI raw: frame 0 is 1224x370, the next 1242x375, each CameraInfo matching its image, written after
    it. With the latest CameraInfo the second frame's image 'did not match' and its check was skipped."""
    node = _node()
    info_t, image_t = node.info_topics["left"], node.image_topics["left"]
    for k, (w, h) in enumerate([(64, 48), (72, 54), (72, 54)]):
        stamp = 10**18 + k * 10**8
        node.handle(topics.LIDAR_POINTS, create_xyzi_cloud(synthetic_scan(), stamp, "velodyne", B))
        node.handle(image_t, numpy_to_image(np.zeros((h, w, 3), np.uint8), "rgb8", stamp, "velodyne", B))
        node.handle(info_t, camera_info_msg(_left_model(w, h), stamp))
        assert "left" not in node._camera_problem, node._camera_problem
        assert node.results["left"].frames == k + 1 and node.pending(topics.LIDAR_POINTS) == 0
    for topic, a in node.accounting().items():
        assert a["balanced"], (topic, a)
