"""Offline replay of the graph: outputs, latency.json, report, bad input, and real KITTI objects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from perception_nodes import topics
from perception_nodes.bags import BagReader, BagWriter
from perception_nodes.codecs.backend import default_backend
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.config import load_params
from perception_nodes.replay import replay, run_graph
from perception_nodes.report import grid_array

STAT_KEYS = {"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "jitter_ms", "budget_ms", "deadline_misses"}


@pytest.fixture(scope="module")
def kitti_replay(kitti_bag, tmp_path_factory):
    out = tmp_path_factory.mktemp("kitti_replay")
    return replay(kitti_bag, None, out, progress=False)


def _decoded(path):
    with open(path, "rb") as f:
        return [(c.topic, m.log_time, d) for _, c, m, d in
                make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages()]


def test_kitti_replay_writes_outputs_latency_and_report(kitti_replay):
    out = kitti_replay.out_dir
    assert (out / "report.html").is_file() and (out / "latency_hist.png").is_file() and (out / "bev_0.png").is_file()
    doc = json.loads((out / "latency.json").read_text())
    assert set(doc) >= {"stages", "end_to_end", "malformed_inputs", "dropped_inputs"}
    for key in ("ground_segmentation/ground_segmentation", "ground_segmentation/processing_time",
                "occupancy_grid/occupancy", "occupancy_grid/pipeline_latency"):
        assert set(doc["stages"][key]) == STAT_KEYS and doc["stages"][key]["count"] == 3
    assert doc["end_to_end"]["count"] == 3 and doc["end_to_end"]["p50_ms"] > 0
    assert doc["stages"]["occupancy_grid/pipeline_latency"]["budget_ms"] == 120.0
    assert doc["malformed_inputs"] == {}
    assert all(a["balanced"] for acct in doc["inputs"].values() for a in acct.values())
    # outputs.mcap decodes with the independent decoder; grids carry the input stamps
    msgs = _decoded(out / "outputs.mcap")
    grids = [d for t, _, d in msgs if t == topics.OCCUPANCY_GRID]
    with BagReader(kitti_replay.bag) as r:
        in_stamps = [rec.msg.header.stamp.sec * 10**9 + rec.msg.header.stamp.nanosec
                     for rec in r.records(topics=[topics.LIDAR_POINTS])]
    assert [g.header.stamp.sec * 10**9 + g.header.stamp.nanosec for g in grids] == in_stamps
    assert all(g.header.frame_id == "base_link" for g in grids)
    names = {t for t, _, _ in msgs}
    assert {"/occupancy_grid/debug/pipeline_latency_ms", "/ground_segmentation/debug/processing_time_ms",
            "/ground_segmentation/debug/processing_time/ground_segmentation_ms", topics.DIAGNOSTICS,
            "/occupancy_grid/debug/cyclic_time_jitter_ms",  # |cyclic - previous cyclic|, from frame 3 on
            topics.OCCUPANCY_UNCERTAINTY} <= names
    # the output folder itself is a playable rosbag2 bag
    with BagReader(out) as r:
        assert r.message_counts[topics.OCCUPANCY_GRID] == 3
    # the headline names each path's end-to-end latency: the occupancy path and (with packaged weights) the
    # LiDAR branch, whose own pipeline latency is its series, not the occupancy node's
    paths = doc["end_to_end_paths"]
    assert paths["occupancy"]["node"] == "occupancy_grid" and paths["occupancy"]["count"] == 3
    page = (out / "report.html").read_text()
    assert "end-to-end latency (occupancy path)" in page
    if "lidar_detection" in doc["frames_out"]:
        lb = paths["lidar_branch"]
        assert lb["count"] == 3 and lb["p50_ms"] == doc["stages"]["lidar_detection/pipeline_latency"]["p50_ms"]
        assert f"LiDAR branch (lidar_detection) end-to-end p50 {lb['p50_ms']:.1f} ms" in page
        # the detection scores are a table, not a JSON dump
        assert "<pre>" not in page and "<th>AP 3D</th>" in page and "nuScenes-style (centre distance)" in page


def test_detection_metrics_render_as_tables():
    from perception_nodes.boxes import Box3D
    from perception_nodes.eval.detection_eval import DetectionScorer
    from perception_nodes.report import detection_metrics_html

    scorer = DetectionScorer()
    gt = [Box3D(label="Car", center=(10.0, 0.0, 0.8), size=(4.0, 1.8, 1.5), yaw=0.0),
          Box3D(label="Pedestrian", center=(6.0, 3.0, 0.9), size=(0.6, 0.6, 1.7), yaw=0.0)]
    pred = [Box3D(label="Car", center=(10.1, 0.05, 0.8), size=(4.0, 1.8, 1.5), yaw=0.02, score=0.9),
            Box3D(label="Car", center=(20.0, 5.0, 0.8), size=(4.0, 1.8, 1.5), yaw=0.0, score=0.4)]
    scorer.add_frame(gt, pred)
    doc = scorer.results()
    page = detection_metrics_html(doc)
    assert "<pre>" not in page and page.count("<table>") == 2
    car = doc["kitti"]["per_class"]["car"]["all"]
    # one car: below 40 boxes the devkit caps AP at (n - 1) / 40, and the cell says so
    assert (f"<td>car</td><td>all</td><td>{car['ap_r40_3d']:.3f}*</td>" in page and "caps AP at (n" in page
            and f"<td>{car['tp_3d']} / {car['fp_3d']} / {car['fn_3d']}</td>" in page)
    assert f"mAP {doc['nuscenes']['map']:.3f}" in page
    # with the scan-graded levels beside (evaluation.py's `kitti_graded`) their rows follow, not in bold
    from perception_nodes.eval.generated_difficulty import with_difficulty, with_virtual_bbox2d

    graded = DetectionScorer()
    graded.add_frame(with_difficulty(gt, np.zeros((0, 3)), (0.0, 0.0, 1.7)), with_virtual_bbox2d(pred, (0.0, 0.0, 1.7)))
    doc["kitti_graded"] = graded.results()["kitti"]
    page = detection_metrics_html(doc)
    assert "<td>car</td><td>moderate (virtual-camera levels)</td>" in page
    assert '<tr style="font-weight:bold"><td>car</td><td>all</td>' in page


def test_labelled_kitti_objects_show_up_as_occupied(kitti_replay):
    """Every labelled object within 40 m with >= 10 points inside has an occupied cell in its footprint."""
    checked = 0
    for stamp, occ, unc in kitti_replay.grids:
        gt = kitti_replay.ground_truth[stamp]
        prob = grid_array(occ)
        res, ox, oy = occ.info.resolution, occ.info.origin.position.x, occ.info.origin.position.y
        ys, xs = np.mgrid[0:prob.shape[0], 0:prob.shape[1]]
        centres = np.stack([ox + (xs.ravel() + 0.5) * res, oy + (ys.ravel() + 0.5) * res, np.zeros(xs.size)], 1)
        for box in boxes_from_detections(gt):
            if math.hypot(*box.center[:2]) > 40.0 or box.label == "DontCare":
                continue
            flat = type(box)(box.label, (box.center[0], box.center[1], 0.0), (box.size[0], box.size[1], 10.0), box.yaw)
            inside = flat.contains(centres, margin=0.15)
            cells = prob.ravel()[inside]
            assert cells.size, box
            assert cells.max() >= 65, (box.label, box.center, cells.max())
            # and the object is not hidden in unknown: its cells carry evidence
            assert (grid_array(unc).ravel()[inside] < 100).any()
            checked += 1
    assert checked >= 3


def test_grids_have_free_space_around_the_ego_and_unknown_far_away(kitti_replay):
    _, occ, unc = kitti_replay.grids[-1]
    prob, vac = grid_array(occ), grid_array(unc)
    h, w = prob.shape
    near = prob[h // 2 - 8:h // 2 + 8, w // 2 + 12:w // 2 + 30]  # 3-7.5 m ahead on the road
    assert (near[near >= 0] < 50).mean() > 0.8
    assert (prob == -1).any() and (vac == 100).any() and ((vac == 100) == (prob == -1)).all()


def test_malformed_and_uncalibrated_inputs_are_counted_and_replay_goes_on(kitti_bag, tmp_path):
    import dataclasses

    dst = tmp_path / "bad"
    with BagReader(kitti_bag) as r, BagWriter(dst) as w:
        recs = list(r.records())
        t_end = max(x.log_time_ns for x in recs)
        cloud = next(x.msg for x in recs if x.topic == topics.LIDAR_POINTS)
        for rec in recs:
            w.write(rec.topic, rec.msgtype, rec.log_time_ns, rec.msg)
        stamp = lambda ns: dataclasses.replace(cloud.header, stamp=dataclasses.replace(cloud.header.stamp, sec=ns // 10**9, nanosec=ns % 10**9))  # noqa: E731
        t1, t2 = t_end + 100_000_000, t_end + 200_000_000
        truncated = dataclasses.replace(cloud, header=stamp(t1), data=cloud.data[: len(cloud.data) // 2])
        w.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, t1, truncated)
        unknown_frame = dataclasses.replace(cloud, header=dataclasses.replace(stamp(t2), frame_id="radar_front"))
        w.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, t2, unknown_frame)
    params = load_params()
    for node in ("ground_segmentation", "occupancy_grid"):
        params[node]["warning_hold_s"] = 60.0  # longer than the 10 s the replay waits at the end
    res = run_graph(dst, params, tmp_path / "out", progress=False)
    assert res.latency["malformed_inputs"] == {topics.LIDAR_POINTS: 1}
    assert res.latency["dropped_inputs"].get(topics.LIDAR_POINTS, 0) >= 1
    assert res.latency["frames_out"]["occupancy_grid"] == 3  # the good frames all came through
    diags = [m for t, _, m in _decoded(tmp_path / "out" / "outputs.mcap") if t == topics.DIAGNOSTICS]
    statuses = [s for d in diags for s in d.status if s.name == "ground_segmentation: inputs"]
    assert all(s.hardware_id == "velodyne" for s in statuses[1:])  # the sensor frame, once one was seen
    kv = {v.key: v.value for v in statuses[-1].values}
    assert kv[f"malformed {topics.LIDAR_POINTS}"] == "1"
    assert kv[f"dropped {topics.LIDAR_POINTS} calibration"] == "1"
    # the last report comes 10 s (replay clock) after the last message: the warnings are still held,
    # and the silent LiDAR input is STALE (input_stale_s)
    assert statuses[-1].level == 3 and statuses[-1].message.startswith("stale: /sensing/lidar/points")
    assert "malformed" in statuses[-1].message and "calibration" in statuses[-1].message
    for acct in res.latency["inputs"].values():
        for topic, a in acct.items():
            assert a["balanced"], (topic, a)


def test_obstacle_timeout_falls_back_to_inline_segmentation(kitti_bag, tmp_path):
    """Without the ground segmentation node the grid is still published, after the time-out."""
    params = load_params()
    params["ground_segmentation"]["enabled"] = False
    params["lidar_detection"]["enabled"] = False  # the geometric path only (the branch has its own tests)
    params["fusion"]["enabled"] = False
    params["detection_fusion"]["enabled"] = False
    params["calibration_monitor"]["enabled"] = False  # (tests/test_calibration_monitor.py)
    params["stereo_occupancy"]["enabled"] = False  # (this bag has no right camera: tests/test_stereo_*)
    params["camera_bev"]["enabled"] = False  # (the camera node: tests/test_camera_bev_*)
    params["bev_fusion"]["enabled"] = False  # (the camera + LiDAR fuser: tests/test_bev_fusion_*)
    params["control"]["enabled"] = False  # driven by the LiDAR branch's curvature (tests/test_control_*)
    res = run_graph(kitti_bag, params, tmp_path, progress=False)
    assert res.latency["frames_out"] == {"occupancy_grid": 3}
    assert res.output_counts[topics.OCCUPANCY_GRID] == 3


def test_what_a_timer_releases_reaches_the_report_and_the_subscribers(scenario_bag, tmp_path):
    """Sets a synchroniser time-out releases come out of the node's timer, not out of a message
    callback. Here the obstacle cloud never comes and its time-out (5 s) outlasts the 1 s bag, so all
    ten grids are released by the timer at the end of input: they must reach the report, the output
    bag and the fusion node subscribed to them, like grids published from a callback (they once went
    to the output bag only, so a loaded machine lost grids from the report and the fused output), and with
    the latency a live graph would measure."""
    params = {k: v for k, v in load_params().items() if k in ("occupancy_grid", "fusion", "replay")}
    params["occupancy_grid"]["sync"].update(obstacle_timeout_s=5.0, queue_size=20)
    res = run_graph(scenario_bag, params, tmp_path, progress=False)
    assert res.latency["frames_out"]["occupancy_grid"] == 10
    assert res.output_counts[topics.OCCUPANCY_GRID] == 10
    assert len(res.grids) == 8  # the report's last frames
    fusion_in = res.latency["inputs"]["fusion"][topics.OCCUPANCY_GRID]
    assert fusion_in["received"] == 10 and fusion_in["balanced"], fusion_in
    assert res.latency["frames_out"]["fusion"] > 0 and res.fusion
    # released near the 5 s deadline, as live (the timers tick on after the bag), not when the replay's
    # clock jumps 10 s past the end: scan 0 waited 5 s; the rest is processing on this machine
    stages = res.latency["stages"]
    assert 5000 <= stages["occupancy_grid/pipeline_latency"]["max_ms"] < 8000, stages["occupancy_grid/pipeline_latency"]
    assert stages["fusion/pipeline_latency"]["max_ms"] < 9000, stages["fusion/pipeline_latency"]


def test_nodes_finish_in_data_flow_order_whatever_the_params_order():
    """What a node releases when it finishes reaches its consumers only if they finish after it: the
    replay orders the finish by the ports and private topics, not by the params file."""
    from perception_nodes.graph import build_graph
    from perception_nodes.replay import data_flow_order

    keep = ("ground_segmentation", "occupancy_grid", "fusion", "calibration_monitor")
    nodes = build_graph({k: v for k, v in load_params().items() if k in keep}, backend=default_backend(),
                        clock=lambda: 0)
    for given in (nodes, nodes[::-1]):
        names = [n.name for n in data_flow_order(given)]
        assert names.index("ground_segmentation") < names.index("occupancy_grid") < names.index("fusion"), names
        # the fusion node reads the monitor's stereo health from the monitor's private (~/debug) topic
        assert names.index("calibration_monitor") < names.index("fusion"), names


def test_default_scenario_replay_is_deterministic(scenario_bag, tmp_path):
    a = run_graph(scenario_bag, load_params(), tmp_path / "a", progress=False)
    b = run_graph(scenario_bag, load_params(), tmp_path / "b", progress=False)
    assert a.input_frames == b.input_frames == 10
    assert [s for s, _, _ in a.grids] == [s for s, _, _ in b.grids]
    for (_, oa, ua), (_, ob, ub) in zip(a.grids, b.grids, strict=True):
        assert np.array_equal(grid_array(oa), grid_array(ob)) and np.array_equal(grid_array(ua), grid_array(ub))
    # replay overhead per frame (bag read + decode + sync) is reported
    assert a.latency["replay"]["overhead_per_frame"]["count"] == 10


def test_a_looping_bag_time_jump_resets_the_synchroniser(kitti_bag, tmp_path):
    """Stamps that jump back (a bag played twice in a row) must not stall the grid forever."""
    dst = tmp_path / "looped"
    with BagReader(kitti_bag) as r, BagWriter(dst) as w:
        recs = list(r.records())
        span = max(x.log_time_ns for x in recs) - min(x.log_time_ns for x in recs)
        for rec in recs:
            w.write(rec.topic, rec.msgtype, rec.log_time_ns, rec.msg)
        for rec in recs:  # the same messages again, received later, carrying the old stamps
            if rec.topic == topics.LIDAR_POINTS:
                w.write(rec.topic, rec.msgtype, rec.log_time_ns + span + 5_000_000_000, rec.msg)
    res = replay(dst, None, tmp_path / "out", progress=False, report=False)
    assert res.latency["frames_out"]["occupancy_grid"] == 6
    assert res.output_counts[topics.OCCUPANCY_GRID] == 6


def test_empty_and_nan_clouds_still_yield_grids_and_are_reported(kitti_bag, tmp_path):
    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud, read_xyzi

    b = default_backend()
    dst = tmp_path / "odd"
    with BagReader(kitti_bag) as r, BagWriter(dst) as w:
        recs = list(r.records())
        for rec in recs:
            w.write(rec.topic, rec.msgtype, rec.log_time_ns, rec.msg)
        cloud = next(x.msg for x in recs if x.topic == topics.LIDAR_POINTS)
        t_end = max(x.log_time_ns for x in recs)
        pts = np.array(read_xyzi(cloud))
        pts[::3, :3] = np.nan  # a third of the returns missing, as an is_dense=false driver sends them
        w.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, t_end + 100_000_000,
                create_xyzi_cloud(pts, t_end + 100_000_000, "velodyne", b))
        w.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, t_end + 200_000_000,
                create_xyzi_cloud(np.zeros((0, 4), np.float32), t_end + 200_000_000, "velodyne", b))
    params = load_params()
    params["ground_segmentation"]["warning_hold_s"] = 60.0  # held past the replay's final 10 s wait
    params["lidar_detection"]["enabled"] = False  # the geometric path only (the branch has its own tests)
    params["calibration_monitor"]["enabled"] = False  # (tests/test_calibration_monitor.py)
    params["stereo_occupancy"]["enabled"] = False  # a LiDAR-only bag (the stereo node has its own tests)
    params["camera_bev"]["enabled"] = False  # (the camera node: tests/test_camera_bev_*)
    params["bev_fusion"]["enabled"] = False  # (the camera + LiDAR fuser: tests/test_bev_fusion_*)
    params["detection_fusion"]["enabled"] = False  # no detections without the branch (its own tests)
    params["control"]["enabled"] = False  # driven by the LiDAR branch's curvature (tests/test_control_*)
    res = run_graph(dst, params, tmp_path / "out", progress=False)
    assert res.latency["frames_out"] == {"ground_segmentation": 5, "occupancy_grid": 5, "fusion": 5}
    assert res.latency["malformed_inputs"] == {}
    _, empty_grid, empty_unc = res.grids[-1]
    assert (grid_array(empty_grid) == -1).all() and (grid_array(empty_unc) == 100).all()
    _, nan_grid, _ = res.grids[-2]
    assert (grid_array(nan_grid) >= 65).sum() > 50  # the finite two thirds still make a grid
    diags = [m for t, _, m in _decoded(tmp_path / "out" / "outputs.mcap") if t == topics.DIAGNOSTICS]
    msgs = " ".join(s.message for d in diags for s in d.status if s.name == "ground_segmentation: inputs")
    assert "non-finite points removed" in msgs and "empty cloud" in msgs


def test_detection_figure_ellipse_level_and_labels_that_do_not_overlap():
    from perception_nodes.report import ELLIPSE_LEVEL, ELLIPSE_SIGMA, _place_labels, covariance_ellipse

    cov = np.array([[0.04, 0.01], [0.01, 0.09]])
    e = covariance_ellipse(cov, (3.0, -2.0))
    d = e - np.array([3.0, -2.0])
    maha = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
    # every drawn point lies on the ELLIPSE_LEVEL region of a 2D Gaussian: chi2_2 quantile = -2 ln(1 - level)
    np.testing.assert_allclose(maha, -2.0 * math.log(1.0 - ELLIPSE_LEVEL), rtol=1e-9)
    assert ELLIPSE_SIGMA == pytest.approx(2.1460, abs=1e-4)
    # cars 6 m apart in a row: label boxes (12 % x 5 % of an 80 m view) must not overlap
    pts = [(float(x), 5.0) for x in range(-36, 37, 6)] + [(0.5, 5.5), (200.0, 0.0)]
    ext = [-40.0, 40.0, -40.0, 40.0]
    chosen = _place_labels(pts, ext)
    w, h = 0.12 * 80, 0.05 * 80
    assert 0 < len(chosen) < len(pts) and len(pts) - 1 not in chosen  # outside the view: no label
    for i in chosen:
        for j in chosen:
            if i < j:
                assert abs(pts[i][0] - pts[j][0]) >= w or abs(pts[i][1] - pts[j][1]) >= h
    assert chosen[0] == 0  # greedy in the given (score) order
