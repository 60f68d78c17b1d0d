"""Conservation and recovery on a replay with faults (issue 7, Deliver 2).

For every node and input topic, ``received == used + malformed + sum(dropped[reason]) + pending`` in
``latency.json``; and the issue's scenario, a valid cloud right after a burst of malformed ones, yields
its grid (it produced none before: the malformed clouds held synchroniser slots).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.bags import BagReader, BagWriter
from perception_nodes.codecs.backend import default_backend
from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud, read_xyzi
from perception_nodes.config import load_params
from perception_nodes.replay import run_graph

PERIOD = 100_000_000


def _restamp(msg, ns: int):
    stamp = dataclasses.replace(msg.header.stamp, sec=ns // 10**9, nanosec=ns % 10**9)
    return dataclasses.replace(msg, header=dataclasses.replace(msg.header, stamp=stamp))


@pytest.fixture(scope="module")
def faulty_replay(kitti_bag, tmp_path_factory):
    """Fourteen LiDAR frames at 10 Hz built from the three real KITTI scans, with faults in between."""
    tmp = tmp_path_factory.mktemp("conservation")
    b = default_backend()
    with BagReader(kitti_bag) as r:
        recs = list(r.records())
    clouds = [x.msg for x in recs if x.topic == topics.LIDAR_POINTS]
    tf = [x for x in recs if x.topic == topics.TF_STATIC]
    t0 = min(x.log_time_ns for x in recs)
    plan: list[tuple[str, object]] = []
    good = lambda k: clouds[k % len(clouds)]  # noqa: E731
    for k in range(3):
        plan.append(("valid", good(k)))
    truncated = dataclasses.replace(clouds[0], data=clouds[0].data[:1000])
    flagged_big = dataclasses.replace(clouds[1], is_bigendian=True)  # little-endian data, wrong flag
    pts = np.array(read_xyzi(clouds[2]))
    pts[:50, :3] = np.float32(1e30)
    pts[50:60, :3] = np.float32(-3e38)
    plan += [("malformed", truncated), ("garbage", flagged_big), ("malformed", truncated),
             ("far_future", clouds[0])]
    plan.append(("valid_after_burst", good(1)))
    plan.append(("absurd_points", create_xyzi_cloud(pts, 0, "velodyne", b)))
    plan.append(("unknown_frame", dataclasses.replace(clouds[0], header=dataclasses.replace(clouds[0].header,
                                                                                          frame_id="radar"))))
    for k in range(4):
        plan.append(("valid", good(k)))
    dst = tmp / "faulty"
    stamps: dict[str, list[int]] = {}
    with BagWriter(dst) as w:
        for x in tf:
            w.write(x.topic, x.msgtype, x.log_time_ns, x.msg)
        for k, (kind, msg) in enumerate(plan):
            t = t0 + (k + 1) * PERIOD
            stamp = t + 700_000_000 * 10**9 if kind == "far_future" else t  # 22 years ahead (int32 sec)
            w.write(topics.LIDAR_POINTS, topics.POINTCLOUD2, t, _restamp(msg, stamp))
            stamps.setdefault(kind, []).append(stamp)
    params = load_params()
    params["replay"]["keep_grids_for_report"] = 100  # keep every grid for the checks
    params["stereo_occupancy"]["enabled"] = False  # LiDAR clouds only (the stereo node: tests/test_stereo_*)
    params["camera_bev"]["enabled"] = False  # (the camera node: tests/test_camera_bev_*)
    params["bev_fusion"]["enabled"] = False  # (the camera + LiDAR fuser: tests/test_bev_fusion_*)
    res = run_graph(dst, params, tmp / "out", progress=False)
    return res, stamps, tmp / "out"


def test_every_input_message_is_accounted_for(faulty_replay) -> None:
    res, stamps, out = faulty_replay
    doc = json.loads((out / "latency.json").read_text())
    n_clouds = sum(len(v) for v in stamps.values())
    for node, acct in doc["inputs"].items():
        for topic, a in acct.items():
            assert a["received"] == a["used"] + a["malformed"] + sum(a["dropped"].values()) + a["pending"], (node, topic)
            assert a["balanced"]
        if topics.LIDAR_POINTS not in acct:  # a node fed by the others' outputs (fusion)
            continue
        lidar = acct[topics.LIDAR_POINTS]
        assert lidar["received"] == n_clouds, node
        assert lidar["dropped"]["stamp_out_of_range"] == 1, node
        if node == "calibration_monitor":  # checks one scan in N: decodes only those (its own tests)
            continue
        assert lidar["malformed"] == 2, node
        assert lidar["dropped"]["implausible"] == 1, node  # the cloud with the wrong byte-order flag
    # the cloud in an unknown frame: the ground segmentation cannot transform it; the occupancy grid
    # never gets its obstacle cloud, and the next scan proves it has no partner
    assert doc["inputs"]["ground_segmentation"][topics.LIDAR_POINTS]["dropped"]["calibration"] == 1
    assert doc["inputs"]["occupancy_grid"][topics.LIDAR_POINTS]["dropped"]["unmatched"] == 1
    # the obstacle clouds the ground segmentation produced all reach the occupancy grid
    occ = doc["inputs"]["occupancy_grid"]
    seg_used = doc["inputs"]["ground_segmentation"][topics.LIDAR_POINTS]["used"]
    assert occ[topics.OBSTACLE_POINTS]["received"] == seg_used


def test_valid_cloud_after_a_malformed_burst_yields_its_grid(faulty_replay) -> None:
    res, stamps, _ = faulty_replay
    grids = {s for s, _, _ in res.grids}
    assert stamps["valid_after_burst"][0] in grids
    assert set(stamps["valid"]) <= grids
    # every cloud that is not rejected yields its grid: the valid ones and the one with a few absurd
    # points (gated); the garbage one (little-endian data flagged big-endian) is rejected whole
    expected = len(stamps["valid"]) + 1 + 1
    assert stamps["absurd_points"][0] in grids and stamps["garbage"][0] not in grids
    assert res.latency["frames_out"]["occupancy_grid"] == expected
    assert res.output_counts[topics.OCCUPANCY_GRID] == expected
