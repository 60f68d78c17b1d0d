"""NodeCore's shared behaviour (issue 7): fault isolation, stamp gate, range gate, diagnostics timed
on a steady clock that tell the truth (rates, ages, STALE, warnings that expire, hardware_id)."""

from __future__ import annotations

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.codecs.backend import default_backend
from perception_nodes.codecs.pointcloud2 import create_cloud, create_xyzi_cloud, read_xyzi
from perception_nodes.config import load_params
from perception_nodes.graph import GroundSegmentationNode, OccupancyGridNode
from perception_nodes.graph.node import sanitize_points, synthetic_scan

B = default_backend()
S = 1_000_000_000
T0 = 1_700_000_000 * S


class Clocks:
    """A ROS/sim clock and a steady clock the test moves independently."""

    def __init__(self) -> None:
        self.ros = T0
        self.steady = 5 * S


def _node(cls=GroundSegmentationNode, **overrides):
    name = "ground_segmentation" if cls is GroundSegmentationNode else "occupancy_grid"
    params = {k: v for k, v in load_params()[name].items() if k != "enabled"}
    params.update(overrides)
    c = Clocks()
    node = cls(name, params, backend=B, clock=lambda: c.ros, steady_clock=lambda: c.steady)
    return node, c


def _cloud(stamp: int, frame: str = "velodyne"):
    return create_xyzi_cloud(synthetic_scan(90, 6), stamp, frame, B)


def _statuses(node) -> dict:
    return {s.name.split(": ")[1]: s for s in node.diagnostic_statuses()}


def test_any_exception_is_caught_counted_logged_once_and_the_node_goes_on(monkeypatch, caplog) -> None:
    node, c = _node()
    import perception_nodes.graph.ground_segmentation as gs

    def boom(*_a, **_k):
        raise ZeroDivisionError("a bug in the algorithm")

    monkeypatch.setattr(gs, "segment_ground", boom)
    for k in range(3):
        assert isinstance(node.handle(topics.LIDAR_POINTS, _cloud(T0 + k)), list)
    assert node.faults[(topics.LIDAR_POINTS, "ZeroDivisionError")] == 3
    assert node.dropped[topics.LIDAR_POINTS]["error"] == 3
    assert sum("ZeroDivisionError" in r.getMessage() for r in caplog.records) == 1  # once per kind
    st = _statuses(node)["inputs"]
    assert st.level == 1 and "ZeroDivisionError" in st.message
    monkeypatch.undo()
    out = node.handle(topics.LIDAR_POINTS, _cloud(T0 + 10))
    assert any(e.topic == topics.OBSTACLE_POINTS for e in out) and node.frames_out == 1
    assert all(a["balanced"] for a in node.accounting().values())


@pytest.mark.parametrize("value", [1e30, 3e38, -3e38, np.nan, 2000.0])
def test_range_gate_drops_and_counts_absurd_points(value) -> None:
    pts = synthetic_scan(90, 6)
    pts[:7, :3] = value
    s = sanitize_points(pts, 1000.0)
    assert len(s.points) == len(pts) - 7
    assert (s.nonfinite, s.out_of_range) == ((7, 0) if np.isnan(value) else (0, 7))
    node, _ = _node()
    out = node.handle(topics.LIDAR_POINTS, create_xyzi_cloud(pts, T0, "velodyne", B))
    assert node.frames_out == 1 and out
    assert sum(node.points_dropped.values()) == 7


def test_big_endian_cloud_decodes_to_the_same_points() -> None:
    pts = synthetic_scan(90, 6)
    le = np.zeros(len(pts), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    be = np.zeros(len(pts), [("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("intensity", ">f4")])
    for i, n in enumerate("x y z intensity".split()):
        le[n] = pts[:, i]
        be[n] = pts[:, i]
    msg_be = create_cloud(be, T0, "velodyne", B)
    assert msg_be.is_bigendian
    np.testing.assert_array_equal(read_xyzi(msg_be), read_xyzi(create_cloud(le, T0, "velodyne", B)))
    node, _ = _node()  # a genuine big-endian cloud is used, not taken for a wrong byte-order flag
    assert any(e.topic == topics.OBSTACLE_POINTS for e in node.handle(topics.LIDAR_POINTS, msg_be))
    assert node.frames_out == 1 and not node.dropped.get(topics.LIDAR_POINTS)


@pytest.mark.parametrize("cls", [GroundSegmentationNode, OccupancyGridNode])
def test_wrong_byte_order_flag_is_rejected_as_implausible(cls) -> None:
    """Little-endian data flagged ``is_bigendian`` decodes to byte-swapped garbage, of which ~30 % lands
    within the range gate: the whole cloud is rejected (``implausible``), with a warning naming the cause."""
    import dataclasses

    node, _ = _node(cls)
    topic = topics.LIDAR_POINTS
    good = _cloud(T0)
    swapped = read_xyzi(dataclasses.replace(good, is_bigendian=True))
    finite = np.isfinite(swapped[:, :3]).all(axis=1)
    kept = np.count_nonzero(np.linalg.norm(swapped[finite, :3].astype(np.float64), axis=1) <= 1000.0)
    assert 0 < kept < 0.5 * finite.sum()  # the premise: some garbage passes the range gate alone
    out = node.handle(topic, dataclasses.replace(good, is_bigendian=True))
    assert not [e for e in out if e.topic != topics.DIAGNOSTICS]
    assert node.dropped[topic]["implausible"] == 1 and node.frames_out == 0
    assert "is_bigendian" in node.warnings["implausible"]
    assert sum(node.points_dropped.values()) == 0  # the rejected cloud's points are not counted as removed
    assert all(a["balanced"] for a in node.accounting().values())
    # disabled (1.0): the garbage is used, its far points gated, as before
    node, _ = _node(cls, max_out_of_range_fraction=1.0)
    node.handle(topic, dataclasses.replace(good, is_bigendian=True))
    assert not node.dropped.get(topic, {}).get("implausible")


def test_stamps_too_far_from_the_node_clock_are_rejected_and_counted() -> None:
    node, c = _node(stamp_max_future_s=5.0, stamp_max_age_s=60.0)
    node.handle(topics.LIDAR_POINTS, _cloud(T0 + 6 * S))       # future
    node.handle(topics.LIDAR_POINTS, _cloud(T0 - 61 * S))      # too old
    node.handle(topics.LIDAR_POINTS, _cloud(T0 + 4 * S))       # fine
    assert node.dropped[topics.LIDAR_POINTS]["stamp_out_of_range"] == 2 and node.frames_out == 1
    c.ros = 0  # sim time before the first /clock: nothing to compare with, so nothing is rejected
    node.handle(topics.LIDAR_POINTS, _cloud(T0 + 100 * S))
    assert node.frames_out == 2
    assert all(a["balanced"] for a in node.accounting().values())


def test_diagnostics_rate_age_stale_and_recovery_on_the_steady_clock() -> None:
    node, c = _node(input_stale_s=2.0, warning_hold_s=10.0, diagnostics_period_s=1.0)
    for k in range(5):  # 10 Hz on the steady clock while the sim clock stands still (paused /clock)
        c.steady += S // 10
        node.handle(topics.LIDAR_POINTS, _cloud(T0 + k))
    st = _statuses(node)
    inp, lat = st["inputs"], st["latency"]
    kv = dict(inp.values)
    assert inp.level == 0 and inp.message == "ok"  # every drop count is 0: not a warning
    assert float(kv[f"rate_hz {topics.LIDAR_POINTS}"]) == pytest.approx(10.0)
    assert kv[f"age_s {topics.LIDAR_POINTS}"] == "0.000"
    assert inp.hardware_id == lat.hardware_id == "velodyne"  # the sensor frame
    assert dict(lat.values)["processing_time.count"] == "5"
    # the LiDAR goes silent: STALE after input_stale_s, though the sim clock never moved
    c.steady += 3 * S
    inp = _statuses(node)["inputs"]
    assert inp.level == 3 and "stale" in inp.message and topics.LIDAR_POINTS in inp.message
    # a diagnostics message still goes out on the steady period without any input (tick)
    assert any(e.topic == topics.DIAGNOSTICS for e in node.tick())
    # it comes back: OK again
    c.steady += S // 10
    node.handle(topics.LIDAR_POINTS, _cloud(T0 + 10))
    assert _statuses(node)["inputs"].level == 0


def test_warnings_expire_when_their_cause_ends() -> None:
    node, c = _node(warning_hold_s=10.0, input_stale_s=0.0)
    import dataclasses

    cloud = _cloud(T0)
    node.handle(topics.LIDAR_POINTS, dataclasses.replace(cloud, data=cloud.data[:10]))
    inp = _statuses(node)["inputs"]
    assert inp.level == 1 and "malformed" in inp.message
    c.steady += 5 * S
    node.handle(topics.LIDAR_POINTS, _cloud(T0 + 1))
    assert _statuses(node)["inputs"].level == 1  # still within warning_hold_s
    c.steady += 6 * S
    node.handle(topics.LIDAR_POINTS, _cloud(T0 + 2))
    inp = _statuses(node)["inputs"]
    assert inp.level == 0 and inp.message == "ok"
    assert dict(inp.values)[f"malformed {topics.LIDAR_POINTS}"] == "1"  # the history stays counted


def test_occupancy_grid_accounts_for_every_message_and_reports_pending() -> None:
    node, c = _node(OccupancyGridNode)
    for k in range(4):
        c.ros += S // 10
        c.steady += S // 10
        stamp = c.ros
        node.handle(node.raw_topic, _cloud(stamp))
        node.handle(node.obstacle_topic, create_xyzi_cloud(np.zeros((0, 4), np.float32), stamp, "base_link", B))
    acct = node.accounting()
    assert all(a["balanced"] for a in acct.values())
    assert acct[node.raw_topic]["used"] + acct[node.raw_topic]["pending"] == 4
    node.finish()
    acct = node.accounting()
    assert all(a["balanced"] and a["pending"] == 0 for a in acct.values())


@pytest.mark.parametrize("gate_s", [10.0, 0.0])
def test_far_future_stamp_does_not_stop_the_grid(gate_s: float) -> None:
    """Issue 7: one cloud stamped in 2038 stopped grid output for good. With the stamp gate it is
    rejected on arrival; without it (gate 0), the synchroniser recovers by itself."""
    node, c = _node(OccupancyGridNode, stamp_max_future_s=gate_s)
    seg, _ = _node(stamp_max_future_s=gate_s)
    seg.clock = node.clock
    far = 2_145_000_000 * S
    grids_before = node.frames_out
    for k in range(8):
        c.ros += S // 10
        c.steady += S // 10
        stamp = far if k == 2 else c.ros
        cloud = _cloud(stamp)
        node.handle(node.raw_topic, cloud)
        for e in seg.handle(topics.LIDAR_POINTS, cloud):
            if e.topic == node.obstacle_topic:
                node.handle(node.obstacle_topic, e.msg)
        node.tick()
    assert node.frames_out - grids_before >= 5  # every valid cloud after the bad one but the last few
    # and the obstacle clouds are matched again (not left absent for good, segmented inline)
    assert node.fallback_frames <= 1
    assert all(a["balanced"] for a in node.accounting().values())
    if gate_s:
        assert node.dropped[node.raw_topic]["stamp_out_of_range"] == 1


def _feed_pairs(node, seg, c, stamps, *, stale_after: int | None = None) -> list[int]:
    """Raw + obstacle pairs at 10 Hz (obstacle from the real ground segmentation core); optionally one
    raw cloud stamped 0 right after raw ``stale_after`` (before its obstacle cloud). Returns the grid stamps."""
    grids = []
    for k, stamp in enumerate(stamps):
        c.ros += S // 10
        c.steady += S // 10
        cloud = _cloud(stamp)
        outs = node.handle(node.raw_topic, cloud)
        if k == stale_after:
            outs += node.handle(node.raw_topic, _cloud(0))
        for e in seg.handle(topics.LIDAR_POINTS, cloud):
            if e.topic == node.obstacle_topic:
                outs += node.handle(node.obstacle_topic, e.msg)
        outs += node.tick()
        grids += [int(e.msg.header.stamp.sec) * S + int(e.msg.header.stamp.nanosec)
                  for e in outs if e.topic == node.output_topic]
    return grids


def test_one_stale_stamp_does_not_destroy_a_valid_frame_in_flight() -> None:
    """Issue 7 review: with ``stamp_max_age_s: 0`` a raw cloud stamped 0 arriving between a raw cloud
    and its obstacle cloud reset the synchroniser (taken for a time jump): that frame's grid was lost.
    One step back is now held until the next stamp goes forward again, then dropped as
    ``out_of_order``; every valid frame yields its grid."""
    node, c = _node(OccupancyGridNode, stamp_max_age_s=0.0)
    seg, _ = _node(stamp_max_age_s=0.0)
    stamps = [T0 + (k + 1) * S // 10 for k in range(6)]
    grids = _feed_pairs(node, seg, c, stamps, stale_after=2)
    assert grids == stamps
    assert node.dropped[node.raw_topic]["out_of_order"] == 1
    assert node.time_jumps == 0 and not node.dropped[node.raw_topic]["time_jump"]
    assert node.fallback_frames == 0
    assert all(a["balanced"] for a in node.accounting().values())


def test_looping_bag_still_recovers_at_once() -> None:
    """Stamps that jump back and stay back (a looping bag) are a time jump: every frame after the jump
    yields its grid (output resumes with the jump's second message)."""
    node, c = _node(OccupancyGridNode, stamp_max_age_s=0.0)
    seg, _ = _node(stamp_max_age_s=0.0)
    first = [T0 + (k + 1) * S // 10 for k in range(6)]
    grids = _feed_pairs(node, seg, c, first)
    assert grids == first
    # the bag loops: stamps start again 0.6 s back, while the (wall) node clock goes on
    second = [T0 + (k + 1) * S // 10 for k in range(6)]
    grids = _feed_pairs(node, seg, c, second)
    # the first looped cloud is held until the second confirms the jump: no frame is lost
    assert grids == second
    assert node.time_jumps == 1 and not node.dropped.get(node.raw_topic, {}).get("out_of_order")
    assert all(a["balanced"] for a in node.accounting().values())
