"""The fusion node core driven directly: pacing and pairing by stamp, weights on their topics and
/diagnostics, a stale branch, a blinded branch, ego-motion alignment, geometry mismatch and bad grids."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.codecs.backend import default_backend, make_header, make_time
from perception_nodes.codecs.outputs import occupancy_grid_msg
from perception_nodes.config import ConfigError, load_params
from perception_nodes.graph.fusion import CONFLICT, OCCUPANCY, UNCERTAINTY, FusionNode
from perception_nodes.pipeline.occupancy import BetaGrid, GridSpec, to_occupancy_msg_data

B = default_backend()
S = 1_000_000_000
SPEC = GridSpec(resolution=0.5, size_x=20.0, size_y=20.0)  # 40 x 40: small and fast
GEO = ("/perception/occupancy_grid", "/perception/occupancy_grid/uncertainty")
LRN = ("/perception/lidar/occupancy_grid", "/perception/lidar/occupancy_grid/uncertainty")
STEREO = ("/perception/stereo/occupancy_grid", "/perception/stereo/occupancy_grid/uncertainty")


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def params(stereo: bool = False, **over) -> dict:
    p = copy.deepcopy(load_params()["fusion"])
    p.pop("enabled", None)
    p.pop("autostart", None)
    p.pop("qos", None)
    p["grid"] = {"resolution": SPEC.resolution, "size_x": SPEC.size_x, "size_y": SPEC.size_y,
                 "origin": list(SPEC.origin)}
    p["trust"]["min_cells"] = 20
    p["branches"]["stereo"]["enabled"] = stereo
    p["branches"]["camera"]["enabled"] = False  # these tests feed the LiDAR (and stereo) branches only
    p["branches"]["stereo"]["health_topic"] = ""
    p["branches"]["lidar_learned"]["mask_with"] = ""
    for k, v in over.items():
        p[k] = v
    return p


def node(**kw) -> tuple[FusionNode, Clock]:
    clock = Clock()
    n = FusionNode("fusion", params(**kw), backend=B, clock=clock, steady_clock=lambda: clock.ns + 5 * S)
    return n, clock


def truth(seed: int = 0) -> np.ndarray:
    t = np.zeros(SPEC.shape, bool)
    t[10:14, 25:30] = True  # a car ahead-left
    t[rng_cells(seed)] = True
    return t


def rng_cells(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 40, 30), rng.integers(0, 40, 30)


def grids(occupied: np.ndarray, stamp: int, topics_pair: tuple[str, str], spec: GridSpec = SPEC,
          amount: float = 8.0, seen: np.ndarray | None = None) -> list[tuple[str, object]]:
    seen = np.ones(occupied.shape, bool) if seen is None else seen
    r = np.where(occupied & seen, amount, 0.0).astype(np.float32)
    s = np.where(~occupied & seen, amount, 0.0).astype(np.float32)
    prob, vac = to_occupancy_msg_data(BetaGrid(r, s, spec), unknown_vacuity=1.0)
    o = (*spec.origin, 0.0)
    return [(topics_pair[0], occupancy_grid_msg(prob, spec.resolution, o, stamp, "base_link", B)),
            (topics_pair[1], occupancy_grid_msg(vac, spec.resolution, o, stamp, "base_link", B))]


def odom(stamp: int, x: float, y: float = 0.0, yaw: float = 0.0):
    pose = B.new("geometry_msgs/msg/Pose",
                 position=B.new("geometry_msgs/msg/Point", x=x, y=y, z=0.0),
                 orientation=B.new("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
    cov = np.zeros(36)
    twist = B.new("geometry_msgs/msg/TwistWithCovariance", twist=B.new(
        "geometry_msgs/msg/Twist", linear=B.new("geometry_msgs/msg/Vector3", x=0.0, y=0.0, z=0.0),
        angular=B.new("geometry_msgs/msg/Vector3", x=0.0, y=0.0, z=0.0)), covariance=cov)
    return B.new(topics.ODOMETRY_TYPE, header=make_header(B, stamp, "map"), child_frame_id="base_link",
                 pose=B.new("geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=cov), twist=twist)


def feed(n: FusionNode, clock: Clock, msgs, at: int | None = None) -> list:
    out = []
    for topic, msg in msgs:
        if at is not None:
            clock.ns = at
        out += n.handle(topic, msg)
    return out


def by_topic(emits, topic):
    return [e.msg for e in emits if e.topic == topic]


def grid_of(msg) -> np.ndarray:
    return np.asarray(msg.data, np.int8).reshape(msg.info.height, msg.info.width)


def test_one_fused_frame_per_pace_grid_after_the_other_branch_of_its_stamp():
    n, clock = node()
    t = truth()
    stamp = 10 * S
    # before the learned branch has spoken once it is not live: the first frame goes out at once
    assert by_topic(feed(n, clock, grids(t, stamp, GEO), at=stamp + S // 20), OCCUPANCY)
    assert not by_topic(feed(n, clock, grids(t, stamp, LRN), at=stamp + S // 10), OCCUPANCY)  # fused once
    for k in range(1, 6):
        s = stamp + k * S // 10
        o1 = feed(n, clock, grids(t, s, GEO), at=s + S // 20)
        assert not by_topic(o1, OCCUPANCY), "must wait for the live learned branch"
        o2 = feed(n, clock, grids(t, s, LRN), at=s + S // 8)
        occ, unc, con = by_topic(o2, OCCUPANCY), by_topic(o2, UNCERTAINTY), by_topic(o2, CONFLICT)
        assert len(occ) == len(unc) == len(con) == 1
        assert occ[0].header.stamp.sec * S + occ[0].header.stamp.nanosec == s
        w = {e.topic.rsplit("/", 1)[1]: e.msg.data for e in o2 if e.topic.startswith("/perception/fusion/weights/")}
        assert w == {"geometric": 1.0, "lidar_learned": 1.0}
        p = grid_of(occ[0])
        assert (p[t] > 90).all() and (p[~t] < 10).all()  # two agreeing branches: sure, and right
        assert not grid_of(con[0]).any()
    acct = n.accounting()
    assert all(a["balanced"] for a in acct.values())
    assert any(st.name == "fusion: branches" and st.level == 0 for st in _statuses(n))


def _statuses(n):
    return n.diagnostic_statuses()


def test_a_silent_branch_goes_stale_weight_zero_and_stops_delaying():
    n, clock = node()
    t = truth()
    for k in range(3):
        s = 10 * S + k * (S // 10)
        feed(n, clock, grids(t, s, GEO) + grids(t, s, LRN), at=s + S // 10)
    # the learned branch dies: the next geometric frames wait max_wait_s once they are due, then go out
    got = []
    for k in range(3, 12):
        s = 10 * S + k * (S // 10)
        got.append(feed(n, clock, grids(t, s, GEO), at=s + S // 20))
        clock.ns = s + S // 20 + n.max_wait_ns + 1
        got[-1] += n.tick()
    weights = [[e.msg.data for e in o if e.topic == "/perception/fusion/weights/lidar_learned"] for o in got]
    assert all(len(w) == 1 for w in weights)
    assert weights[-1] == [0.0]
    diag = {s.name: s for s in _statuses(n)}["fusion: branches"]
    assert diag.level == 1 and "lidar_learned weight 0.00" in diag.message and "stale" in diag.message
    assert n.timeouts >= 1
    # once stale, a geometric grid goes out at once (no waiting)
    s = 10 * S + 13 * (S // 10)
    assert by_topic(feed(n, clock, grids(t, s, GEO), at=s + S // 20), OCCUPANCY)


def test_a_blinded_branch_loses_weight_and_the_diagnostics_say_why():
    n, clock = node(stereo=True)
    lows = []
    for k in range(14):
        s = 10 * S + k * (S // 10)
        t = truth(k)
        blind = np.zeros_like(t) if 3 <= k < 10 else t
        out = feed(n, clock, grids(t, s, GEO) + grids(t, s, LRN) + grids(blind, s, STEREO), at=s + S // 10)
        w = {e.topic.rsplit("/", 1)[1]: e.msg.data for e in out if "/weights/" in e.topic}
        if k == 0:  # the first geometric grid went out alone (nobody else was live yet)
            assert w == {"geometric": 1.0, "lidar_learned": 0.0, "stereo": 0.0}
            continue
        lows.append(w["stereo"])
        assert w["geometric"] > 0.8 and w["lidar_learned"] > 0.8
        if k == 8:
            diag = {st.name: st for st in _statuses(n)}["fusion: branches"]
            assert diag.level == 1 and "stereo" in diag.message and "disagrees" in diag.message
    assert min(lows[2:9]) < 0.2 and lows[-1] > 0.8


def _tf(stamp: int, x: float):
    from perception_nodes.calibration import StaticTransform, tf_message

    m = np.eye(4)
    m[0, 3] = x
    return topics.TF, tf_message([StaticTransform("map", "base_link", m)], stamp, B)


@pytest.mark.parametrize("source", ["odometry", "tf"])
def test_an_older_grid_is_moved_by_the_ego_motion(source):
    """The stereo grid 0.2 s older than the fused stamp; the ego drove 2 m forward meanwhile (poses from
    odometry, or from /tf map -> base_link)."""
    extra = {} if source == "odometry" else {"odometry_topic": "", "use_tf": True, "tf_fixed_frame": "map"}
    n, clock = node(stereo=True, **extra)
    assert n.pose_source == source
    n.trust.params = type(n.trust.params)(min_cells=10_000)  # no trust updates: look at the geometry only
    t_old = np.zeros(SPEC.shape, bool)
    t_old[20, 30] = True  # x = 5.25 m, y = 0.25 m at the old stamp
    t_new = np.zeros(SPEC.shape, bool)
    t_new[20, 26] = True  # 2 m closer now
    s_old, s_new = 10 * S, 10 * S + 2 * (S // 10)
    if source == "odometry":
        feed(n, clock, [(n.odometry_topic, odom(s_old, 100.0)), (n.odometry_topic, odom(s_new, 102.0))], at=s_old)
    else:
        feed(n, clock, [_tf(s_old, 100.0), _tf(s_new, 102.0)], at=s_old)
    seen = np.zeros(SPEC.shape, bool)
    seen[15:25, 20:35] = True
    feed(n, clock, grids(t_old, s_old, STEREO, seen=seen), at=s_old + S // 10)
    out = feed(n, clock, grids(t_new, s_new, GEO, seen=seen) + grids(t_new, s_new, LRN, seen=seen), at=s_new + S // 10)
    occ = grid_of(by_topic(out, OCCUPANCY)[0])
    assert occ[20, 26] > 90 and occ[20, 30] < 10  # the stereo evidence landed where the others see it
    assert not grid_of(by_topic(out, CONFLICT)[0]).any()


def test_geometry_mismatch_resampled_or_rejected():
    other = GridSpec(resolution=0.25, size_x=20.0, size_y=20.0)
    t = np.zeros(other.shape, bool)
    t[40:44, 60:64] = True
    for policy in ("resample", "reject"):
        n, clock = node(geometry_mismatch=policy)
        s = 10 * S
        out = feed(n, clock, grids(truth(), s, GEO) + grids(t, s, LRN, spec=other), at=s + S // 10)
        st = n.branches["lidar_learned"]
        if policy == "resample":
            assert st.resampled == 1 and n.accounting()[LRN[0]]["used"] == 1
        else:
            assert st.rejected == 1 and n.accounting()[LRN[0]]["dropped"] == {"geometry": 1}
            assert "geometry" in n.warnings
        assert all(a["balanced"] for a in n.accounting().values())
        assert by_topic(out, OCCUPANCY) or policy == "reject"


def test_bad_grids_are_counted_and_the_node_goes_on():
    n, clock = node()
    s = 10 * S
    bad = grids(truth(), s, GEO)
    bad[0][1].data = bad[0][1].data[:-7]  # wrong size
    feed(n, clock, bad, at=s)
    assert n.accounting()[GEO[0]]["malformed"] == 1 and "malformed" in n.warnings
    s2 = s + S // 10
    out = feed(n, clock, grids(truth(), s2, GEO) + grids(truth(), s2, LRN), at=s2 + S // 10)
    assert by_topic(out, OCCUPANCY)
    assert all(a["balanced"] for a in n.accounting().values())


def test_empty_grids_give_an_unknown_grid_without_nan():
    n, clock = node()
    s = 10 * S
    z = np.zeros(SPEC.shape, bool)
    out = feed(n, clock, grids(z, s, GEO, seen=z) + grids(z, s, LRN, seen=z), at=s + S // 10)
    assert (grid_of(by_topic(out, OCCUPANCY)[0]) == -1).all()
    assert (grid_of(by_topic(out, UNCERTAINTY)[0]) == 100).all()


def test_config_errors_name_the_parameter():
    p = params()
    p["branches"]["lidar_learned"]["mask_with"] = "nope"
    with pytest.raises(ConfigError, match="mask_with"):
        FusionNode("fusion", p, backend=B, clock=lambda: 0)
    p = params()
    p["branches"]["lidar_learned"]["occupancy_topic"] = GEO[0]
    with pytest.raises(ConfigError, match="used twice"):
        FusionNode("fusion", p, backend=B, clock=lambda: 0)
    with pytest.raises(ConfigError, match="geometry_mismatch"):
        FusionNode("fusion", params(geometry_mismatch="maybe"), backend=B, clock=lambda: 0)
    _ = make_time  # (imported for symmetry with other node tests)


def test_report_panel_shows_the_fused_grid_and_the_weights(tmp_path):
    from perception_nodes.replay import ReplayResult
    from perception_nodes.report import fusion_section

    n, clock = node()
    frames, weights = [], {}
    for k in range(4):
        s = 10 * S + k * (S // 10)
        out = feed(n, clock, grids(truth(k), s, GEO) + grids(truth(k), s, LRN), at=s + S // 10)
        for e in out:
            if "/weights/" in e.topic:
                weights.setdefault(e.topic.rsplit("/", 1)[1], []).append((s, e.msg.data))
        got = {e.topic: e.msg for e in out}
        if OCCUPANCY in got:
            frames.append((s, got[OCCUPANCY], got[UNCERTAINTY], got[CONFLICT]))
    res = ReplayResult(tmp_path, tmp_path, 4, {}, {}, fusion=frames, fusion_weights=weights)
    html = fusion_section(res)
    assert "Evidence fusion" in html and "lidar_learned" in html and "geometric" in html
    assert "No branch was weighted below" in html  # two agreeing branches
    # a low-weight episode of two frames shows as one row with the reason at its lowest weight
    (s1, _), (s2, _) = weights["geometric"][1:3]
    res.fusion_low_weights = {"geometric": [(s1, 0.3, "health gate 0.30 (points=0.27)"),
                                            (s2, 0.1, "health gate 0.10 (points=0.09)")]}
    html = fusion_section(res)
    assert "<td>geometric</td>" in html and "<td>2</td><td>0.100</td><td>health gate 0.10 (points=0.09)</td>" in html
    assert (tmp_path / "fusion_grid.png").stat().st_size > 0 and (tmp_path / "fusion_weights.png").stat().st_size > 0
    assert fusion_section(ReplayResult(tmp_path, tmp_path, 0, {}, {})) == ""


def test_runtime_reconfiguration_keeps_state_and_refuses_the_branch_set():
    n, clock = node(odometry_topic="")  # a stationary platform: the memory fills without poses
    s = 10 * S
    feed(n, clock, grids(truth(), s, GEO) + grids(truth(), s, LRN), at=s + S // 10)
    n.reconfigure({"trust": {"floor": 0.2, "conflict_bad": 0.5}, "decay_per_s": 0.6})
    assert n.trust.params.floor == 0.2 and n.accumulator.decay_per_s == 0.6 and n.accumulator.r is not None
    with pytest.raises(ConfigError, match="read-only"):
        n.reconfigure({"branches": {"geometric": {"timeout_s": 2.0}}})
    with pytest.raises(ConfigError):
        n.reconfigure({"trust": {"conflict_ok": 0.6, "conflict_bad": 0.5}})  # rejected before anything changed
    assert n.trust.params.conflict_bad == 0.5
    n.reconfigure({"grid": {"resolution": 1.0}})  # another grid: the memory starts over on it
    assert n.accumulator.spec.resolution == 1.0 and n.accumulator.r is None
    out = feed(n, clock, grids(truth(), s + S // 10, GEO, spec=SPEC) + grids(truth(), s + S // 10, LRN), at=s + S // 5)
    assert by_topic(out, OCCUPANCY)[0].info.resolution == pytest.approx(1.0)  # inputs resampled onto it


def test_a_looping_bag_time_jump_keeps_fusing_and_counts_every_grid():
    """Stamps that jump back (a looping bag, a paused and rewound /clock) must not stall the node: the
    frames after the jump are fused and every grid is accounted for."""
    n, clock = node()
    fused = 0
    for s in [10 * S + k * S // 10 for k in range(5)] + [10 * S + k * S // 10 for k in range(5)]:
        out = feed(n, clock, grids(truth(), s, GEO) + grids(truth(), s, LRN), at=s + S // 10)  # /clock rewinds too
        fused += len(by_topic(out, OCCUPANCY))
    assert fused == 10 and not n.faults and "time_jump" in n.warnings
    assert all(a["balanced"] for a in n.accounting().values())
