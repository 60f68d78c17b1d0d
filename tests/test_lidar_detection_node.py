"""The LiDAR branch node core (issue 10, Deliver 2 and 7) on real KITTI scans, with a tiny random network.

What is checked: every scan gives one of each output with the scan's stamp; the messages carry what the
network decodes (class names, expected probabilities, NIG covariance in the right places); per-stage latency;
bad input (empty, all NaN, all outside the network's crop, a 10x cloud) gives an empty but valid
detection array and a diagnostic, never a crash or a stall; missing or corrupt weights fail with the
reason; the learned/geometric occupancy fusion and its accounting; replay with and without weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.codecs.backend import default_backend, stamp_to_ns
from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud, read_xyzi
from perception_nodes.codecs.vision import EVIDENCE_STRENGTH_ID, vision_detections_msg
from perception_nodes.errors import NodeUnavailable
from perception_nodes.graph.lidar_detection import LidarDetectionNode, thin_points
from perception_nodes.models.decode import Detections
from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, to_occupancy_msg_data
from perception_nodes.pipeline.occupancy_fusion import evidence_from_grid_data, fuse_evidence, resample_nearest
from tests.lidar_branch_util import branch_params, register_tiny_backbone, save_tiny_weights

B = default_backend()
S = 1_000_000_000
STAGES = ("decode", "transform", "voxelize", "backbone", "bev_net", "heads", "decode_boxes", "refine_boxes", "occupancy",
          "encode")


class Clock:
    """The node's ROS clock: set to each scan's stamp, so pipeline latency reads the node's own time."""

    def __init__(self) -> None:
        self.ns = 0
        self.steady = 5 * S

    def __call__(self) -> int:
        return self.ns


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    return save_tiny_weights(tmp_path_factory.mktemp("weights") / "lidar_detection")


@pytest.fixture(scope="module")
def kitti_records(kitti_bag):
    with BagReader(kitti_bag) as r:
        return [(rec.topic, rec.msg) for rec in r.records(topics=[topics.TF_STATIC, topics.LIDAR_POINTS])]


def _node(weights, **overrides):
    register_tiny_backbone()
    clock = Clock()
    node = LidarDetectionNode("lidar_detection", branch_params(weights, **overrides), backend=B, clock=clock,
                              steady_clock=lambda: clock.steady)
    node.warmup()
    return node, clock


def _feed(node, clock, topic, msg):
    if topic == topics.LIDAR_POINTS:
        clock.ns = stamp_to_ns(msg.header.stamp) + 1_000_000
    clock.steady += S // 10
    return {e.topic: e.msg for e in node.handle(topic, msg)}


@pytest.fixture(scope="module")
def free_head(tmp_path_factory):
    """The packaged box head without the detector it was trained for, so it runs on the tiny weights too (the
    packaged one runs only on the packaged network's boxes)."""
    import json
    import shutil

    from perception_nodes.models.weights_io import default_weights_dir

    folder = tmp_path_factory.mktemp("head") / "free_head"
    shutil.copytree(default_weights_dir("lidar_box_head"), folder)
    side = json.loads((folder / "model.json").read_text())
    side["training"].pop("detector_sha256")
    (folder / "model.json").write_text(json.dumps(side))
    return folder


@pytest.fixture(scope="module")
def kitti_run(tiny_weights, kitti_records, free_head):
    """The node over the three KITTI scans (with the bag's /tf_static): per scan, what it published."""
    node, clock = _node(tiny_weights, box_head=str(free_head))
    per_scan = []
    for topic, msg in kitti_records:
        out = _feed(node, clock, topic, msg)
        if topic == topics.LIDAR_POINTS:
            per_scan.append((msg, out))
    return node, clock, per_scan


def _statuses(node) -> dict:
    return {s.name.split(": ")[1]: s for s in node.diagnostic_statuses()}


# --- real scans -----------------------------------------------------------------------------------


def test_every_kitti_scan_gives_each_output_with_its_stamp_and_stage_latency(kitti_run):
    node, _, per_scan = kitti_run
    assert len(per_scan) == 3
    for cloud, out in per_scan:
        stamp = stamp_to_ns(cloud.header.stamp)
        for topic in (node.detections_topic, node.objects_topic, node.markers_topic, node.occupancy_topic,
                      node.occupancy_uncertainty_topic, node.curvature_topic):
            assert stamp_to_ns(out[topic].header.stamp if hasattr(out[topic], "header")
                               else out[topic].markers[0].header.stamp) == stamp, topic
        det = out[node.detections_topic]
        assert det.__msgtype__ == "vision_msgs/msg/Detection3DArray" and det.header.frame_id == "base_link"
        assert 0 < len(det.detections) <= node.decode_options["max_detections"]
        markers = out[node.markers_topic].markers
        assert markers[0].action == 3 and len(markers) == len(det.detections) + 1  # DELETEALL, then one per box
        occ, unc = out[node.occupancy_topic], out[node.occupancy_uncertainty_topic]
        g = node.net.config.occupancy_grid
        assert (occ.info.width, occ.info.height, occ.info.resolution) == (g.width, g.height, g.cell)
        assert len(occ.data) == len(unc.data) == g.width * g.height
        curv = out[node.curvature_topic]
        assert list(curv.horizon_m) == list(node.net.config.curvature_horizons_m)
        assert np.all(np.asarray(curv.variance) > 0)
        np.testing.assert_allclose(curv.variance, np.asarray(curv.aleatoric_variance) + curv.epistemic_variance)
        # one latency sample per stage on the debug topics, in the order they ran
        debug = [t.rsplit("/", 1)[1][:-3] for t in out if t.startswith("~/debug/processing_time/")]
        assert debug == list(STAGES)
    for stage in STAGES:
        assert node.latency.series[stage].window_summary().count == 3
    acct = node.accounting()
    assert acct[topics.LIDAR_POINTS]["used"] == 3 and all(a["balanced"] for a in acct.values())
    net = _statuses(node)["network"]
    assert net.level == 0 and net.message.startswith("runtime torch (")
    assert net.values["runtime"] == "torch" and int(net.values["runtime.threads"]) >= 1
    assert net.values["weights"] == str(node.weights_dir) and net.values["frames_out"] == "3"


def test_detection_messages_carry_what_the_network_decodes(kitti_run):
    """The message of scan 0 against an independent run of the same network, decoder, box refinement and learned
    box head on the same points."""
    from perception_nodes.calibration import transform_points
    from perception_nodes.graph.lidar_detection import drop_self_returns
    from perception_nodes.models.box_head import apply_box_head
    from perception_nodes.pipeline.box_refine import refine_detections
    from perception_nodes.models.decode import decode_batch

    node, _, per_scan = kitti_run
    cloud, out = per_scan[0]
    pts = np.array(read_xyzi(cloud), dtype=np.float32)
    to_base = node.sensor_to_base(cloud.header.frame_id)
    pts = drop_self_returns(node, transform_points(to_base, pts), to_base[:2, 3])
    with torch.no_grad():
        ref = decode_batch(node.net(torch.from_numpy(pts)), node.net.head_grid, node.net.config.classes,
                           **node.decode_options)[0]
    ref, refined = refine_detections(ref, pts, node.box_refinement, sensor_xy=to_base[:2, 3])
    assert node.box_refinement.enabled and refined > 0  # the packaged params refine the KITTI scan's cars
    ref, headed = apply_box_head(ref, pts, node.box_head, sensor_xy=to_base[:2, 3])
    assert node.box_head is not None and headed > 0  # and the packaged head corrects them
    msg = out[node.detections_topic]
    assert len(msg.detections) == len(ref) > 0
    names = node.net.config.classes
    tol = 1e-4  # float32 through two runs of the same network (summation order may differ)
    for i, d in enumerate(msg.detections):
        # last result: the Dirichlet strength S = (K + 1) / vacuity (not a class; read by detection_fusion)
        *results, strength = d.results
        assert strength.hypothesis.class_id == EVIDENCE_STRENGTH_ID
        assert strength.hypothesis.score == pytest.approx((len(names) + 1) / float(ref.vacuity[i]), rel=1e-3)
        d.results = results
        ids = [r.hypothesis.class_id for r in d.results]
        assert sorted(ids) == sorted(names) and ids[0] == names[int(ref.label[i])]  # strings, own class first
        scores = [r.hypothesis.score for r in d.results]
        assert scores[0] == pytest.approx(float(ref.score[i]), abs=tol)
        assert scores[1:] == sorted(scores[1:], reverse=True)
        for r in d.results:  # score = expected probability of that class
            assert r.hypothesis.score == pytest.approx(float(ref.class_probabilities[i, names.index(r.hypothesis.class_id)]), abs=tol)
            np.testing.assert_allclose(np.asarray(r.pose.covariance).reshape(6, 6), ref.covariance[i], rtol=1e-3, atol=1e-6)
        p = d.bbox.center.position
        np.testing.assert_allclose([p.x, p.y, p.z], ref.center[i], atol=1e-3)
        yaw = 2 * math.atan2(d.bbox.center.orientation.z, d.bbox.center.orientation.w)
        assert math.remainder(yaw - float(ref.yaw[i]), 2 * math.pi) == pytest.approx(0.0, abs=1e-3)
        np.testing.assert_allclose([d.bbox.size.x, d.bbox.size.y, d.bbox.size.z], ref.size[i], rtol=1e-3)
    # objects_topic: the same boxes for `evaluate`
    assert [d.label for d in out[node.objects_topic].detections] == ref.class_ids


def test_published_covariance_and_scores_follow_the_sidecar_calibration(kitti_run, kitti_records, tmp_path):
    """Weights whose sidecar carries a calibration publish scaled variances (x/y, z, yaw) and say so on
    /diagnostics; without one (the tiny weights) the node reports the identity."""
    import shutil

    from perception_nodes.models.calibration import DetectionCalibration
    from perception_nodes.models.decode import MAX_YAW_VARIANCE
    from perception_nodes.models.weights_io import write_calibration

    node0, _, per_scan = kitti_run
    assert _statuses(node0)["network"].values["calibration"].startswith("identity")
    folder = tmp_path / "calibrated"
    shutil.copytree(node0.weights_dir, folder)
    cal = DetectionCalibration(centre_variance_scale=9.0, z_variance_scale=2.0, yaw_variance_scale=3.0,
                               fitted={"on": "test"})
    write_calibration(folder, cal.to_dict())
    node, clock = _node(folder)
    for topic, msg in kitti_records:
        out = _feed(node, clock, topic, msg)
        if topic == topics.LIDAR_POINTS:
            break
    assert node.calibration == cal
    assert "centre var x9" in _statuses(node)["network"].values["calibration"]
    ref, got = per_scan[0][1][node0.detections_topic], out[node.detections_topic]
    assert len(got.detections) == len(ref.detections) > 0  # the evidence scale is 1: the same boxes
    for a, b in zip(ref.detections, got.detections):
        ca, cb = np.asarray(a.results[0].pose.covariance), np.asarray(b.results[0].pose.covariance)
        assert a.results[0].hypothesis.score == pytest.approx(b.results[0].hypothesis.score, abs=1e-5)
        np.testing.assert_allclose(cb[[0, 7, 14]], ca[[0, 7, 14]] * [9.0, 9.0, 2.0], rtol=1e-4)
        assert cb[35] == pytest.approx(min(3.0 * ca[35], MAX_YAW_VARIANCE), rel=1e-4)


def test_covariance_and_class_ids_are_placed_as_vision_msgs_defines():
    """A hand-made result: variances of x, y, z, yaw at diagonal 0, 7, 14, 35 of the row-major 6x6."""
    cov = np.zeros((1, 6, 6), np.float32)
    cov[0][np.diag_indices(6)] = [0.25, 0.5, 0.75, 1e6, 1e6, 0.1]
    det = Detections(class_names=("car", "pedestrian", "cyclist"), center=np.array([[10.0, -2.0, 0.8]], np.float32),
                     size=np.array([[4.0, 1.8, 1.5]], np.float32), yaw=np.array([0.5], np.float32),
                     label=np.array([1]), score=np.array([0.55], np.float32),
                     class_probabilities=np.array([[0.1, 0.55, 0.2, 0.15]], np.float32),
                     vacuity=np.array([0.3], np.float32), covariance=cov, size_variance=np.zeros((1, 3), np.float32))
    msg = vision_detections_msg(det, 7 * S, "base_link", B)
    d = msg.detections[0]
    assert [r.hypothesis.class_id for r in d.results] == ["pedestrian", "cyclist", "car"]
    assert [r.hypothesis.score for r in d.results] == pytest.approx([0.55, 0.2, 0.1])
    c = np.asarray(d.results[0].pose.covariance)
    assert c.shape == (36,) and (c[0], c[7], c[14], c[21], c[28], c[35]) == pytest.approx((0.25, 0.5, 0.75, 1e6, 1e6, 0.1))
    assert np.count_nonzero(c) == 6
    assert d.results[0].pose.pose == d.bbox.center and d.id == ""
    assert (d.bbox.size.x, d.bbox.size.y, d.bbox.size.z) == pytest.approx((4.0, 1.8, 1.5))
    assert d.bbox.center.orientation.z == pytest.approx(math.sin(0.25))
    assert stamp_to_ns(msg.header.stamp) == stamp_to_ns(d.header.stamp) == 7 * S
    empty = vision_detections_msg(Detections(class_names=("car",)), 8 * S, "base_link", B)
    assert empty.detections == [] and stamp_to_ns(empty.header.stamp) == 8 * S


# --- bad input (Deliver 7) -----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["empty", "all_nan", "outside_network_range"])
def test_bad_clouds_give_an_empty_valid_detection_array_and_a_diagnostic(tiny_weights, kitti_records, case):
    node, clock = _node(tiny_weights)
    tf = next(m for t, m in kitti_records if t == topics.TF_STATIC)
    _feed(node, clock, topics.TF_STATIC, tf)
    pts = {
        "empty": np.zeros((0, 4), np.float32),
        "all_nan": np.full((5000, 4), np.nan, np.float32),
        # finite and inside the range gate (1000 m), but all beyond the network's 32 m crop
        "outside_network_range": np.column_stack([np.linspace(60, 900, 4000), np.linspace(-50, 50, 4000),
                                                  np.zeros(4000), np.full(4000, 0.3)]).astype(np.float32),
    }[case]
    stamp = 1_300_000_000 * S
    out = _feed(node, clock, topics.LIDAR_POINTS, create_xyzi_cloud(pts, stamp, "velodyne", B))
    det = out[node.detections_topic]
    assert det.detections == [] and stamp_to_ns(det.header.stamp) == stamp
    assert out[node.objects_topic].detections == []
    assert [m.action for m in out[node.markers_topic].markers] == [3]  # DELETEALL only: old boxes vanish
    assert set(np.asarray(out[node.occupancy_topic].data).tolist()) == {-1}  # no evidence: unknown
    assert set(np.asarray(out[node.occupancy_uncertainty_topic].data).tolist()) == {100}
    assert len(out[node.curvature_topic].curvature) == len(node.net.config.curvature_horizons_m)
    inputs = _statuses(node)["inputs"]
    assert inputs.level == 1 and "empty:" in inputs.message
    if case == "all_nan":
        assert node.points_dropped["nonfinite"] == 5000 and inputs.values["points_nonfinite"] == "5000"
    assert _statuses(node)["network"].values["empty_frames"] == "1"
    # the node goes on: a real scan right after gives boxes
    real = next(m for t, m in kitti_records if t == topics.LIDAR_POINTS)
    assert _feed(node, clock, topics.LIDAR_POINTS, real)[node.detections_topic].detections
    acct = node.accounting()[topics.LIDAR_POINTS]
    assert acct["used"] == 2 and acct["balanced"]


def test_partly_broken_and_implausible_clouds_are_counted_and_the_node_goes_on(tiny_weights, kitti_records):
    node, clock = _node(tiny_weights)
    _feed(node, clock, topics.TF_STATIC, next(m for t, m in kitti_records if t == topics.TF_STATIC))
    real = next(m for t, m in kitti_records if t == topics.LIDAR_POINTS)
    pts = np.array(read_xyzi(real), dtype=np.float32)
    pts[:100, 0] = np.nan  # missing returns
    pts[100:150, 3] = np.inf  # broken intensity on finite points
    out = _feed(node, clock, topics.LIDAR_POINTS, create_xyzi_cloud(pts, 10 * S, "velodyne", B))
    assert out[node.detections_topic].detections
    assert node.points_dropped["nonfinite"] == 100 and node.points_dropped["nonfinite_intensity"] == 50
    # garbage values (most points 1e6 m away): rejected whole as implausible, counted, nothing published
    bad = np.full((1000, 4), 1e6, np.float32)
    out = _feed(node, clock, topics.LIDAR_POINTS, create_xyzi_cloud(bad, 11 * S, "velodyne", B))
    assert node.detections_topic not in out
    acct = node.accounting()[topics.LIDAR_POINTS]
    assert acct == {**acct, "received": 2, "used": 1, "dropped": {"implausible": 1}, "balanced": True}


def test_the_vehicles_own_returns_are_dropped_before_the_network_and_counted(tiny_weights, kitti_records):
    """The params file's sensor radius and footprint: a real KITTI scan loses the returns of its own car
    (counted on /diagnostics as computed independently, no warning), a scan of nothing but such returns is
    empty for the network (empty warning, vacuous grids), and with both off the same returns reach it."""
    from perception_nodes.calibration import transform_points
    from perception_nodes.pipeline.self_returns import self_returns

    node, clock = _node(tiny_weights)
    assert node.min_return_range == 1.0 and node.ego_box == (-2.5, 2.7, -1.7, 1.7)
    tf = next(m for t, m in kitti_records if t == topics.TF_STATIC)
    _feed(node, clock, topics.TF_STATIC, tf)
    real = next(m for t, m in kitti_records if t == topics.LIDAR_POINTS)
    pts = np.array(read_xyzi(real), dtype=np.float32)
    to_base = node.sensor_to_base(real.header.frame_id)
    near, body = self_returns(transform_points(to_base, pts), to_base[:2, 3], min_return_range=1.0,
                              ego_box=(-2.5, 2.7, -1.7, 1.7))
    assert body.sum() > 100  # KITTI 000000: its own car, around the side mirrors
    assert _feed(node, clock, topics.LIDAR_POINTS, real)[node.detections_topic].detections
    assert node.points_dropped["near_sensor"] == near.sum() and node.points_dropped["ego_box"] == body.sum()
    inputs = _statuses(node)["inputs"]
    assert inputs.values["points_ego_box"] == str(int(body.sum())) and "ego_box" not in inputs.message
    own = create_xyzi_cloud(pts[near | body], stamp_to_ns(real.header.stamp) + S, "velodyne", B)
    out = _feed(node, clock, topics.LIDAR_POINTS, own)
    assert out[node.detections_topic].detections == [] and "empty:" in _statuses(node)["inputs"].message
    assert set(np.asarray(out[node.occupancy_topic].data).tolist()) == {-1}
    off, clock_off = _node(tiny_weights, min_return_range=0.0, ego_box=None)
    _feed(off, clock_off, topics.TF_STATIC, tf)
    _feed(off, clock_off, topics.LIDAR_POINTS, own)
    assert off.empty_frames == 0 and "ego_box" not in off.points_dropped and "near_sensor" not in off.points_dropped
    with pytest.raises(ValueError, match="lidar_detection.ego_box"):
        _node(tiny_weights, ego_box=[2.7, -2.5, -1.7, 1.7])
    # at runtime: [0, 0, 0, 0] switches the footprint off, a malformed box is refused and the old one kept
    node.reconfigure({"ego_box": [0.0, 0.0, 0.0, 0.0], "min_return_range": 0.0})
    assert node.ego_box is None and node.min_return_range == 0.0
    node.reconfigure({"ego_box": [-1.0, 3.5, -1.0, 1.0]})
    with pytest.raises(ValueError, match="ego_box"):
        node.reconfigure({"ego_box": [3.5, -1.0, -1.0, 1.0]})
    assert node.ego_box == (-1.0, 3.5, -1.0, 1.0)


def test_thin_points_is_deterministic_and_bounded():
    pts = np.arange(1_000_003 * 4, dtype=np.float32).reshape(-1, 4)
    a, b = thin_points(pts, 200_000), thin_points(pts, 200_000)
    assert np.array_equal(a, b) and 100_000 < len(a) <= 200_000
    assert np.array_equal(a[:3, 0], pts[[0, 6, 12], 0])  # every 6th point: all of the scan, thinned alike
    assert thin_points(pts, 0) is pts and thin_points(pts[:10], 200_000).shape == (10, 4)


def test_a_cloud_ten_times_larger_is_capped_and_costs_little_more(tiny_weights, kitti_records):
    """10 copies of a real scan (jittered by 2 cm): thinned to max_points, counted, no stall."""
    node, clock = _node(tiny_weights, max_points=130_000)  # above a KITTI scan (115-127k points)
    _feed(node, clock, topics.TF_STATIC, next(m for t, m in kitti_records if t == topics.TF_STATIC))
    real = next(m for t, m in kitti_records if t == topics.LIDAR_POINTS)
    pts = np.array(read_xyzi(real), dtype=np.float32)
    rng = np.random.default_rng(0)
    big = np.concatenate([pts + np.concatenate([rng.uniform(-0.02, 0.02, (len(pts), 3)), np.zeros((len(pts), 1))], 1)
                          .astype(np.float32) for _ in range(10)])
    big_msg = create_xyzi_cloud(big, stamp_to_ns(real.header.stamp) + S, "velodyne", B)
    _feed(node, clock, topics.LIDAR_POINTS, real)
    out = _feed(node, clock, topics.LIDAR_POINTS, big_msg)
    normal_ms, big_ms = list(node.latency.series["processing_time"].recent)  # the node's own timing
    voxels_normal, voxels_big = (node.latency.series["voxelize"].recent[i] for i in (0, 1))
    assert out[node.detections_topic].header.stamp.sec == real.header.stamp.sec + 1
    kept = len(thin_points(big, 130_000))
    assert node.points_dropped["over_max_points"] == len(big) - kept
    inputs = _statuses(node)["inputs"]
    assert "max_points" in inputs.message and inputs.values["points_over_max_points"] == str(len(big) - kept)
    # decoding 10x the bytes costs a little; the network sees at most max_points (one scan's worth)
    assert big_ms < 2.0 * normal_ms + 300.0, (big_ms, normal_ms, voxels_normal, voxels_big)


# --- weights ---------------------------------------------------------------------------------------


def test_opt_in_weights_named_in_the_params_load_from_any_directory(tmp_path, monkeypatch):
    """`weights: lidar_detection_realism` (the opt-in weights for real sensors) in a params file: the node finds
    the packaged folder wherever it is started, and /diagnostics names the folder it loaded."""
    from perception_nodes.models.weights_io import default_weights_dir

    monkeypatch.chdir(tmp_path)
    node = LidarDetectionNode("lidar_detection", branch_params("lidar_detection_realism"), backend=B, clock=lambda: 0)
    node.warmup()
    values = dict(_statuses(node)["network"].values)
    assert values["weights"] == str(default_weights_dir("lidar_detection_realism"))


def test_missing_or_corrupt_weights_fail_with_the_reason(tmp_path, tiny_weights, monkeypatch):
    from perception_nodes.models import weights_io
    from perception_nodes.models.weights_io import WeightsError

    register_tiny_backbone()

    def core(weights):
        return LidarDetectionNode("lidar_detection", branch_params(weights), backend=B, clock=lambda: 0)

    with pytest.raises(WeightsError, match="no weights in"):
        core(tmp_path / "nowhere").warmup()
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_weights.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes((tiny_weights / "model.safetensors").read_bytes()[:100])
    node = core(broken)
    with pytest.raises(WeightsError, match="corrupt"):
        node.warmup()
    st = _statuses(node)["network"]
    assert st.level == 2 and "corrupt" in st.message  # the reason on /diagnostics too
    # no `weights` and nothing packaged yet: the node is unavailable (replay/live leave it out)
    monkeypatch.setattr(weights_io, "default_weights_dir", lambda network: tmp_path / "packaged" / network)
    with pytest.raises(NodeUnavailable, match="no packaged network weights"):
        core("").warmup()


def test_sparse_tune_file_is_read_at_configure_and_a_bad_one_only_warns(tiny_weights, kitti_records, tmp_path):
    """`sparse_tune_file`: the backbone's dataflow choices come from the file at configure (looked up, nothing
    timed while scans pass); a file without this CPU, or a corrupt one, gives a WARN and static defaults."""
    from engines.sparse.autotune import candidates_timed_total
    from engines.sparse.tunefile import ShapeKey, TuneFile, device_model

    good = tmp_path / "tune.json"
    tf = TuneFile()
    tf.table(device_model("cpu")).add(ShapeKey("subm", (3, 3, 3), (1, 1, 1), 4, 16, "float32", 10),
                                      {"gather_scatter": 1.0, "implicit_gemm": 2.0})
    tf.save(good)
    node, clock = _node(tiny_weights, sparse_tune_file=str(good))
    st = _statuses(node)["network"]
    assert st.level == 0 and "entry for this CPU" in dict(st.values)["sparse_tune_file"]
    tuners = {id(m.tuner) for m in node.net.modules() if hasattr(m, "tuner")}
    assert len(tuners) == 1  # every sparse conv of the backbone got the file's (frozen) tuner
    timed = candidates_timed_total()
    for topic, msg in kitti_records:
        _feed(node, clock, topic, msg)
    scans = sum(topic == topics.LIDAR_POINTS for topic, _ in kitti_records)
    assert node.frames_out == scans and candidates_timed_total() == timed
    foreign = tmp_path / "foreign.json"
    other = TuneFile()
    other.table("cpu:Some Other CPU").add(ShapeKey("subm", (3, 3, 3), (1, 1, 1), 4, 16, "float32", 10),
                                         {"gather_scatter": 1.0})
    other.save(foreign)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    for path, why in ((foreign, "no entry for"), (corrupt, "unusable")):
        node, clock = _node(tiny_weights, sparse_tune_file=str(path))
        st = _statuses(node)["network"]
        assert st.level == 1 and why in st.message
        for topic, msg in kitti_records:
            _feed(node, clock, topic, msg)
        assert node.frames_out == scans  # the node runs on static defaults


def test_replay_without_weights_says_so_and_the_rest_of_the_graph_runs(kitti_bag, tmp_path, monkeypatch, caplog):
    from perception_nodes.config import load_params
    from perception_nodes.models import weights_io
    from perception_nodes.replay import run_graph
    from perception_nodes.report import detections_section

    monkeypatch.setattr(weights_io, "default_weights_dir", lambda network: tmp_path / "packaged" / network)
    res = run_graph(kitti_bag, load_params(), tmp_path / "out", progress=False)
    ran = set(res.latency["frames_out"])
    assert {"ground_segmentation", "occupancy_grid"} <= ran and "lidar_detection" not in ran
    assert res.output_counts[topics.OCCUPANCY_GRID] == 3
    assert "no packaged network weights" in res.skipped["lidar_detection"]
    assert sum("lidar_detection left out" in r.getMessage() for r in caplog.records) == 1
    assert detections_section(res).startswith("<h2>LiDAR branch</h2><p>not run: lidar_detection: ")


# --- fusion with the geometric grid ------------------------------------------------------------------


def test_geometric_evidence_recovered_from_the_published_grids_re_encodes_to_the_same_grids():
    rng = np.random.default_rng(1)
    spec = GridSpec(resolution=0.5, size_x=20.0, size_y=10.0)
    r = rng.exponential(3.0, spec.shape).astype(np.float32) * (rng.random(spec.shape) < 0.7)
    s = rng.exponential(5.0, spec.shape).astype(np.float32) * (rng.random(spec.shape) < 0.7)
    prob, vac = to_occupancy_msg_data(BetaGrid(r, s, spec), unknown_vacuity=1.0)
    r2, s2 = evidence_from_grid_data(prob, vac)
    none = (r + s) == 0
    assert np.all(r2[none] == 0) and np.all(s2[none] == 0)  # unobserved stays vacuous, exactly
    # vacuity rounding to 100 %: less evidence than the message resolves (r + s < ~0.01): read as none
    faint = vac == 100
    assert np.all(r2[faint] == 0) and np.all(s2[faint] == 0) and np.all((r + s)[faint] < 0.011)
    p3, v3 = to_occupancy_msg_data(BetaGrid(r2, s2, spec), unknown_vacuity=1.0)
    assert np.abs(p3.astype(int) - prob)[~faint].max() <= 1 and np.abs(v3.astype(int) - vac).max() <= 1
    # w = 0: the geometric grid; w > 0 only adds evidence, so vacuity never rises
    rf, sf = fuse_evidence(r2, s2, np.ones_like(r2), np.full_like(s2, 2.0), 0.0)
    assert np.array_equal(rf, r2) and np.array_equal(sf, s2)
    rf, sf = fuse_evidence(r2, s2, np.ones_like(r2), np.full_like(s2, 2.0), 0.5)
    assert np.allclose(rf, r2 + 0.5) and np.allclose(sf, s2 + 1.0)


def test_resample_nearest_maps_cells_by_their_centres():
    src = GridSpec(resolution=1.0, size_x=4.0, size_y=2.0, origin=(0.0, 0.0))
    dst = GridSpec(resolution=0.5, size_x=6.0, size_y=1.0, origin=(-1.0, 0.0))
    vals = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = resample_nearest(vals, src, dst, fill=-1.0)
    assert out.shape == (2, 12)
    # x centres -0.75, -0.25 (outside), 0.25, 0.75 (col 0), 1.25, 1.75 (col 1), ... 4.25+ outside
    assert out[0].tolist() == [-1, -1, 0, 0, 1, 1, 2, 2, 3, 3, -1, -1]
    assert out[1].tolist() == out[0].tolist()  # y centres 0.25, 0.75: row 0 of the source


@pytest.mark.slow
def test_replay_fuses_learned_and_geometric_evidence_and_reports_boxes_with_ellipses(kitti_bag, tiny_weights, tmp_path):
    """The whole graph over KITTI: fused grids per scan on the geometric grid, everything accounted for."""
    from perception_nodes.config import load_params
    from perception_nodes.evaluation import grid_array
    from perception_nodes.replay import run_graph
    from perception_nodes.report import detections_section

    register_tiny_backbone()
    params = load_params()
    params["lidar_detection"].update(weights=str(tiny_weights), score_threshold=0.2, threads=1)
    grids: dict[str, list] = {}
    res = run_graph(kitti_bag, params, tmp_path, progress=False,
                    on_output=lambda t, m: grids.setdefault(t, []).append(m))
    node_p = params["lidar_detection"]
    assert res.latency["frames_out"]["lidar_detection"] == 3
    for topic in (node_p["detections_topic"], node_p["markers_topic"], node_p["fused_occupancy_topic"],
                  node_p["fused_uncertainty_topic"], node_p["curvature_topic"]):
        assert res.output_counts[topic] == 3, topic
    for acct in res.latency["inputs"].values():
        assert all(a["balanced"] for a in acct.values()), acct
    grid_in = res.latency["inputs"]["lidar_detection"][topics.OCCUPANCY_GRID]
    assert grid_in["used"] == 3 and grid_in["pending"] == 0
    geo = {stamp_to_ns(m.header.stamp): m for m in grids[topics.OCCUPANCY_UNCERTAINTY]}
    geo_p = {stamp_to_ns(m.header.stamp): m for m in grids[topics.OCCUPANCY_GRID]}
    for fu, fp in zip(grids[node_p["fused_uncertainty_topic"]], grids[node_p["fused_occupancy_topic"]], strict=True):
        st = stamp_to_ns(fu.header.stamp)
        g, gp = grid_array(geo[st]).astype(int), grid_array(geo_p[st]).astype(int)
        f, fpa = grid_array(fu).astype(int), grid_array(fp).astype(int)
        assert f.shape == g.shape and fu.info.resolution == geo[st].info.resolution
        assert np.all(f <= g + 1)  # fusion only adds evidence
        # outside the learned grid (the tiny net's 64 m crop in the 80 m grid) the geometric grid is kept
        xs = geo[st].info.origin.position.x + (np.arange(g.shape[1]) + 0.5) * geo[st].info.resolution
        outside = np.abs(xs) > 32.0
        assert np.abs(f[:, outside] - g[:, outside]).max() <= 1
        assert np.abs(fpa[:, outside] - gp[:, outside]).max() <= 1
        assert (f[:, ~outside] < g[:, ~outside]).any()  # and inside it the learned evidence counts
    # the geometric path was not held up by the slower branch (each node on its own executor thread)
    assert "late" not in res.latency["inputs"]["occupancy_grid"][topics.OBSTACLE_POINTS]["dropped"]
    assert len(res.detections) == 3
    res.detections = res.detections[-1:]  # one figure is enough here (matplotlib is slow on a busy CPU)
    html = detections_section(res)
    assert html.startswith("<h2>LiDAR branch: detections with uncertainty") and "detections_0.png" in html
    assert (tmp_path / "detections_0.png").stat().st_size > 10_000
    # the report names the weights the branch ran (two packaged folders: which one made these boxes?)
    # (the tiny weights live outside the repository: shown by their full path, not confused with the packaged folder)
    assert res.lidar_weights.split()[0] == str(Path(node_p["weights"]).resolve())
    assert f"Weights: {res.lidar_weights}" in html


def test_the_weights_label_names_the_folder_and_the_run_and_survives_odd_sidecars(tmp_path):
    from perception_nodes.models.weights_io import default_weights_dir, read_sidecar
    from perception_nodes.replay import _weights_label

    folder = default_weights_dir("lidar_detection")
    label = _weights_label(folder, read_sidecar(folder, "lidar_detection"))
    assert label == "perception_nodes/models/weights/lidar_detection (trained by the run lidar_detection_finetune_v18)"
    for odd in ({}, {"training": None}, {"training": {"config": None}}, {"training": {"config": "x"}}, None):
        assert _weights_label(tmp_path, odd) == str(tmp_path.resolve())


def test_decoding_parameters_reconfigure_at_runtime_and_the_network_choice_needs_a_restart(tiny_weights):
    from perception_nodes.config import ConfigError

    node = LidarDetectionNode("lidar_detection", branch_params(tiny_weights), backend=B, clock=lambda: 0)
    node.reconfigure({"score_threshold": 0.5, "max_detections": 7, "max_points": 1000, "learned_occupancy_weight": 0.25})
    assert node.decode_options["score_threshold"] == 0.5 and node.decode_options["max_detections"] == 7
    assert node.max_points == 1000 and node.learned_occupancy_weight == 0.25
    for bad in ({"nms_kernel": 4}, {"score_threshold": 1.5}, {"runtime": "onnxruntime"}, {"weights": "/elsewhere"}):
        with pytest.raises(ConfigError):
            node.reconfigure(bad)
    assert node.decode_options["nms_kernel"] == 3 and node.runtime_name == "torch"  # all or nothing


def test_box_refinement_params_reconfigure_and_bad_ones_are_refused(tiny_weights):
    """`box_refinement` switches at runtime (the next scan uses it); out-of-range values are refused with the key
    named, and a class the network does not have fails configure instead of silently refining nothing."""
    from perception_nodes.config import ConfigError

    node = LidarDetectionNode("lidar_detection", branch_params(tiny_weights), backend=B, clock=lambda: 0)
    assert node.box_refinement.enabled and node.box_refinement.near_faces
    node.reconfigure({"box_refinement": {"near_faces": False, "search_deg": 20.0}})
    assert not node.box_refinement.near_faces and node.box_refinement.search_deg == 20.0
    for bad in ({"box_refinement": {"margin_m": 10.0}}, {"box_refinement": {"step_deg": 1e-6}},
                {"box_refinement": {"serch_deg": 5.0}}):
        with pytest.raises(ConfigError, match="box_refinement"):
            node.reconfigure(bad)
    assert node.box_refinement.search_deg == 20.0  # unchanged by the refused ones
    register_tiny_backbone()
    wrong = LidarDetectionNode("lidar_detection", branch_params(tiny_weights, box_refinement={"classes": ["Car"]}),
                               backend=B, clock=lambda: 0)
    with pytest.raises(ConfigError, match="box_refinement.classes: Car not among the network's classes"):
        wrong.load()


def test_box_head_param_off_missing_and_switched_at_runtime(tiny_weights, tmp_path):
    """`box_head` names the learned head (default the packaged one, "" off); a folder without weights fails
    configure with the reason, a value that is not a name is refused, and a bad folder set while running leaves the
    boxes as refined with a warning instead of stopping the node."""
    from perception_nodes.config import ConfigError
    from perception_nodes.models.decode import Detections
    from perception_nodes.models.weights_io import WeightsError

    import json
    import shutil

    from perception_nodes.models.weights_io import default_weights_dir

    register_tiny_backbone()
    # the packaged head was trained on the packaged network's boxes: on other weights it does not run, and says why
    other = LidarDetectionNode("lidar_detection", branch_params(tiny_weights), backend=B, clock=lambda: 0)
    other.load()
    assert other.box_head is None and "other detector weights" in _statuses(other)["network"].values["box_head"]
    # a head folder that names no detector runs on any weights (the user's choice)
    free = tmp_path / "free_head"
    shutil.copytree(default_weights_dir("lidar_box_head"), free)
    side = json.loads((free / "model.json").read_text())
    side["training"].pop("detector_sha256")
    (free / "model.json").write_text(json.dumps(side))
    node = LidarDetectionNode("lidar_detection", branch_params(tiny_weights, box_head=str(free)), backend=B,
                              clock=lambda: 0)
    node.load()
    assert node.box_head is not None and node.box_head.config.classes == ("car",)
    assert _statuses(node)["network"].values["box_head"] == str(free)
    off = LidarDetectionNode("lidar_detection", branch_params(tiny_weights, box_head=""), backend=B, clock=lambda: 0)
    off.load()
    assert off.box_head is None and _statuses(off)["network"].values["box_head"] == "off"
    missing = LidarDetectionNode("lidar_detection", branch_params(tiny_weights, box_head=str(tmp_path / "none")),
                                 backend=B, clock=lambda: 0)
    with pytest.raises(WeightsError, match="no weights"):
        missing.load()
    with pytest.raises(ConfigError, match="box_head"):
        LidarDetectionNode("lidar_detection", branch_params(tiny_weights, box_head=3), backend=B, clock=lambda: 0)
    # switched while running to a folder that is not there: the next scan's boxes go out as refined, and it says so
    rng = np.random.default_rng(0)
    det = Detections(class_names=node.net.config.classes, center=np.float32([[10.0, 0.0, -0.8]]),
                     size=np.float32([[4.5, 1.8, 1.6]]), yaw=np.float32([0.0]), label=np.int64([0]),
                     score=np.float32([0.9]), covariance=np.eye(6, dtype=np.float32)[None])
    pts = np.column_stack([rng.uniform(8, 12, 400), rng.uniform(-1, 1, 400), rng.uniform(-1.5, 0, 400),
                           rng.random(400)]).astype(np.float32)
    moved = node._head_boxes(det, pts, np.zeros(2), node.net.config.classes)  # noqa: SLF001
    assert node.head_boxes == 1 and not np.array_equal(moved.center, det.center)
    node.reconfigure({"box_head": str(tmp_path / "none")})
    same = node._head_boxes(det, pts, np.zeros(2), node.net.config.classes)  # noqa: SLF001
    assert same is det and node.box_head is None and "box_head" in node.warnings
    assert "not usable" in _statuses(node)["network"].values["box_head"]
    node.reconfigure({"box_head": str(free)})  # back: loaded again at the next scan
    assert node._head_boxes(det, pts, np.zeros(2), node.net.config.classes) is not det  # noqa: SLF001
    node.reconfigure({"box_refinement": {"enabled": False}})  # the head runs only after the refinement
    assert node._head_boxes(det, pts, np.zeros(2), node.net.config.classes) is det  # noqa: SLF001
    assert "idle" in _statuses(node)["network"].values["box_head"]


def test_hostile_clouds_with_the_box_head_on(tiny_weights, kitti_records, free_head):
    """With a head that runs on these weights: broken points, an empty cloud and a cloud ten times larger all go
    through refine_boxes and its head; the node publishes, counts what it dropped, and records no fault."""
    node, clock = _node(tiny_weights, box_head=str(free_head), max_points=130_000)
    assert node.box_head is not None
    _feed(node, clock, topics.TF_STATIC, next(m for t, m in kitti_records if t == topics.TF_STATIC))
    real = next(m for t, m in kitti_records if t == topics.LIDAR_POINTS)
    pts = np.array(read_xyzi(real), dtype=np.float32)
    broken = pts.copy()
    broken[:100, 0] = np.nan
    broken[100:150, 3] = np.inf
    big = np.concatenate([pts] * 10)
    t0 = stamp_to_ns(real.header.stamp)
    for k, cloud in enumerate((broken, np.zeros((0, 4), np.float32), big, pts)):
        before = node.head_boxes
        out = _feed(node, clock, topics.LIDAR_POINTS, create_xyzi_cloud(cloud, t0 + k * S, "velodyne", B))
        assert node.detections_topic in out
        if len(cloud):
            assert node.head_boxes > before  # the head corrected the cars of this scan
    assert not node.faults and not any(k.startswith("fault") for k in node.warnings)
    assert node.points_dropped["nonfinite"] == 100 and node.points_dropped["over_max_points"] > 0
    assert node.empty_frames == 1 and node.accounting()[topics.LIDAR_POINTS]["balanced"]
