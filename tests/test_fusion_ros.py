"""The fusion node as a managed rclpy node on real Fast DDS (loopback, own domain): two branches' grid
pairs in, the fused grid, its vacuity and conflict layer, per-branch weights and /diagnostics out."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from perception_nodes import topics
from tests.ros_util import collector, spin_until, stamp_ns

pytestmark = pytest.mark.ros

GEO = ("/perception/occupancy_grid", "/perception/occupancy_grid/uncertainty")
LRN = ("/perception/lidar/occupancy_grid", "/perception/lidar/occupancy_grid/uncertainty")


def test_fusion_node_publishes_fused_grids_weights_and_diagnostics(ros_context):
    import rclpy
    from nav_msgs.msg import OccupancyGrid
    from rclpy.executors import MultiThreadedExecutor

    from perception_nodes.codecs.outputs import occupancy_grid_msg
    from perception_nodes.config import load_params
    from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, to_occupancy_msg_data
    from perception_nodes.ros.backend import RclpyBackend
    from perception_nodes.ros.node import ManagedCoreNode, tree_overrides
    from perception_nodes.ros.qos import profile

    p = copy.deepcopy(load_params()["fusion"])
    p.pop("enabled", None)
    p["grid"].update({"resolution": 0.5, "size_x": 20.0, "size_y": 20.0, "origin": [-10.0, -10.0]})
    p["odometry_topic"] = ""
    p["decay_per_s"] = 0.0  # no memory: each fused frame is exactly its two inputs
    spec = GridSpec(resolution=0.5, size_x=20.0, size_y=20.0)
    node = ManagedCoreNode("fusion", context=ros_context, parameter_overrides=tree_overrides(p))
    assert node.autostart() and node.is_active()
    user = rclpy.create_node("fusion_user", context=ros_context)
    wt = [f"{p['weights_topic']}/{b}" for b in ("geometric", "lidar_learned")]
    got = collector(user, [(p["occupancy_topic"], topics.OCCUPANCY_GRID_TYPE),
                           (p["uncertainty_topic"], topics.OCCUPANCY_GRID_TYPE),
                           (p["conflict_topic"], topics.OCCUPANCY_GRID_TYPE),
                           *[(t, topics.FLOAT64_STAMPED) for t in wt],
                           (topics.DIAGNOSTICS, topics.DIAGNOSTIC_ARRAY)])
    pubs = {t: user.create_publisher(OccupancyGrid, t, profile("reliable")) for t in (*GEO, *LRN)}
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(node)
    ex.add_node(user)
    b = RclpyBackend()
    occupied = np.zeros(spec.shape, bool)
    occupied[18:22, 28:32] = True
    r = np.where(occupied, 6.0, 0.0).astype(np.float32)
    s = np.where(~occupied, 6.0, 0.0).astype(np.float32)
    prob, vac = to_occupancy_msg_data(BetaGrid(r, s, spec), unknown_vacuity=1.0)
    origin = (*spec.origin, 0.0)
    stamps = [(1000 + k) * 100_000_000 for k in range(3)]
    try:
        assert spin_until(ex, lambda: all(pub.get_subscription_count() == 1 for pub in pubs.values())
                          and node._pubs[p["occupancy_topic"]].get_subscription_count() >= 1, 15.0)
        for k, st in enumerate(stamps):
            # the learned pair first, and taken in, so the geometric pair (the pace) finds it there: DDS does
            # not order messages across topics
            for pair in (LRN, GEO):
                pubs[pair[0]].publish(occupancy_grid_msg(prob, spec.resolution, origin, st, "base_link", b))
                pubs[pair[1]].publish(occupancy_grid_msg(vac, spec.resolution, origin, st, "base_link", b))
                assert spin_until(ex, lambda pair=pair, k=k: all(node.core.accounting()[t]["used"] == k + 1
                                                                 for t in pair), 15.0)
            assert spin_until(ex, lambda st=st: any(stamp_ns(m) == st for m in got[p["occupancy_topic"]]), 15.0)
        assert spin_until(ex, lambda: all(len(got[t]) >= len(stamps) for t in wt)
                          and len(got[p["conflict_topic"]]) >= len(stamps), 10.0), {k: len(v) for k, v in got.items()}
        last = next(m for m in got[p["occupancy_topic"]] if stamp_ns(m) == stamps[-1])
        fused = np.asarray(last.data, np.int8).reshape(last.info.height, last.info.width)
        assert last.header.frame_id == "base_link" and last.info.resolution == pytest.approx(0.5)
        # two agreeing branches, 6 + 6 evidence: P = 13 / 14 on the object, 1 / 14 elsewhere
        seen = {t: [(stamp_ns(m), m.data) for m in got[t]] for t in wt}
        assert (fused[occupied] == round(100 * 13 / 14)).all() and (fused[~occupied] == round(100 / 14)).all(), seen
        unc = next(m for m in got[p["uncertainty_topic"]] if stamp_ns(m) == stamps[-1])
        assert set(np.asarray(unc.data, np.int8).tolist()) == {round(100 * 2 / 14)}
        assert all(m.data == 1.0 for t in wt for m in got[t][1:]), seen  # the first frame may go out alone
        assert spin_until(ex, lambda: any(st.name == "fusion: branches" and "lidar_learned.weight" in {v.key for v in st.values}
                                          for d in got[topics.DIAGNOSTICS] for st in d.status), 10.0)
    finally:
        ex.shutdown()
        node.destroy_node()
        user.destroy_node()
