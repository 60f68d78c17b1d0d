"""The detection fusion node core driven directly: one branch passes through, two agreeing branches shrink
the covariance, a stale branch loses its weight and regains it while the node keeps publishing, the
external weight topic, ego-motion alignment, and bad input (NaN boxes, zero/NaN covariance, unknown class
ids, empty arrays, a time jump) with its counters on /diagnostics."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.codecs.backend import default_backend, make_header
from perception_nodes.codecs.detections import boxes_from_detections
from perception_nodes.codecs.vision import EVIDENCE_STRENGTH_ID, vision_detections_msg
from perception_nodes.config import ConfigError, load_params
from perception_nodes.evidential.detection_fusion import EvidentialBox, evidence_from_probabilities
from perception_nodes.graph.detection_fusion import DETECTIONS, OBJECTS, DetectionFusionNode, _Arrays

B = default_backend()
S = 1_000_000_000
P = 100_000_000  # 10 Hz
CLASSES = ("car", "pedestrian", "cyclist")
LIDAR = "/perception/lidar/detections"
CAMERA = "/perception/camera/detections"
WEIGHT = "/perception/fusion/trust/lidar_learned"


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def params(camera: bool = False, **over) -> dict:
    p = copy.deepcopy(load_params()["detection_fusion"])
    for k in ("enabled", "autostart", "qos"):
        p.pop(k, None)
    p["odometry_topic"] = ""
    p["branches"]["camera"]["enabled"] = camera
    p["branches"]["bev_fusion"]["enabled"] = False  # the fuser's branch (tests/test_bev_fusion_node_replay.py)
    p["memory"] = {**p["memory"], "decay_per_s": 0.0}  # the rule frame by frame (the memory: its own test)
    p.update(over)
    return p


def make(**kw) -> tuple[DetectionFusionNode, Clock]:
    clock = Clock()
    n = DetectionFusionNode("detection_fusion", params(**kw), backend=B, clock=clock,
                            steady_clock=lambda: clock.ns + 5 * S)
    return n, clock


def ebox(x: float, y: float, *, cls: int = 0, p: float = 0.7, sxy: float = 0.3, yaw: float = 0.4,
         strength: float = 15.0) -> EvidentialBox:
    probs = np.full(3, (0.9 - p) / 2.0)
    probs[cls] = p
    cov = np.diag([sxy**2, sxy**2, 0.04, 1e6, 1e6, 0.05])
    return EvidentialBox(np.array([x, y, 0.8]), np.array([4.0, 1.8, 1.5]), yaw, cov,
                         evidence_from_probabilities(probs, strength))


def msg(stamp: int, boxes: list[EvidentialBox], frame: str = "base_link", strength: bool = True):
    a = _Arrays(CLASSES, boxes)
    return vision_detections_msg(a, stamp, frame, B, strength=a.strength if strength else None)


SCENE = [ebox(10.0, 2.0), ebox(20.0, -3.0, cls=1, p=0.6, sxy=0.2), ebox(30.0, 5.0, cls=2, p=0.5, sxy=0.5)]


def fused_of(emits, topic=DETECTIONS):
    return [e.msg for e in emits if e.topic == topic]


def statuses(node):
    return {s.name: s for s in node.diagnostic_statuses()}


def test_one_branch_passes_through_unchanged():
    node, clock = make()
    clock.ns = 10 * S
    out = node.handle(LIDAR, msg(10 * S, SCENE))
    [fused] = fused_of(out)
    [inp] = [msg(10 * S, SCENE)]
    assert len(fused.detections) == len(inp.detections) == 3
    key = lambda d: d.bbox.center.position.x  # noqa: E731
    for f, i in zip(sorted(fused.detections, key=key), sorted(inp.detections, key=key), strict=True):
        assert f.bbox.center.position == i.bbox.center.position and f.bbox.size == i.bbox.size
        # yaw goes quaternion -> angle -> quaternion: equal up to float64 rounding (documented)
        qf, qi = f.bbox.center.orientation, i.bbox.center.orientation
        assert (qf.z, qf.w) == pytest.approx((qi.z, qi.w), abs=1e-15)
        assert [r.hypothesis.class_id for r in f.results] == [r.hypothesis.class_id for r in i.results]
        assert [r.hypothesis.score for r in f.results] == pytest.approx([r.hypothesis.score for r in i.results],
                                                                       rel=1e-12)
        assert np.asarray(f.results[0].pose.covariance) == pytest.approx(np.asarray(i.results[0].pose.covariance),
                                                                         rel=1e-12)
        assert f.results[-1].hypothesis.class_id == EVIDENCE_STRENGTH_ID
    objs = boxes_from_detections(fused_of(out, OBJECTS)[0])
    assert sorted(b.label for b in objs) == sorted(CLASSES)
    st = statuses(node)["detection_fusion: branches"]
    assert st.values["lidar.weight"] == "1.000"
    assert all(a["balanced"] for a in node.accounting().values())


def test_two_agreeing_branches_shrink_the_covariance():
    node, clock = make(camera=True)
    clock.ns = 10 * S
    assert node.handle(LIDAR, msg(10 * S, SCENE)) and not fused_of(node.handle(LIDAR, msg(10 * S, SCENE)))
    node, clock = make(camera=True)
    clock.ns = 10 * S
    waiting = node.handle(LIDAR, msg(10 * S, SCENE))
    # the camera has not spoken yet: it is not live, nothing waits for it
    [alone] = fused_of(waiting)
    clock.ns = 10 * S + P
    node.handle(CAMERA, msg(10 * S + P, [ebox(10.1, 2.05), ebox(20.05, -3.0, cls=1, p=0.6, sxy=0.2)]))
    clock.ns = 10 * S + P + 1
    out = node.handle(LIDAR, msg(10 * S + P, SCENE))
    [fused] = fused_of(out)
    assert len(fused.detections) == 3
    car = min(fused.detections, key=lambda d: abs(d.bbox.center.position.x - 10.0))
    assert car.results[0].pose.covariance[0] < SCENE[0].covariance[0, 0] / 1.5
    assert 10.0 < car.bbox.center.position.x < 10.1
    lone = min(alone.detections, key=lambda d: abs(d.bbox.center.position.x - 10.0))
    assert car.results[0].hypothesis.score > lone.results[0].hypothesis.score  # more evidence for car


def test_a_stale_branch_loses_its_weight_the_node_keeps_publishing_and_it_recovers():
    node, clock = make(camera=True, max_wait_s=0.05)
    weights, counts = [], []
    for k in range(30):
        t = 10 * S + k * P
        clock.ns = t
        out = []
        if not 10 <= k < 20:  # the camera goes silent for a second
            out += node.handle(CAMERA, msg(t, [ebox(10.05, 2.0), ebox(20.0, -3.05, cls=1, p=0.6, sxy=0.2)]))
        out += node.handle(LIDAR, msg(t, SCENE))
        clock.ns = t + 60_000_000
        out += node.tick()
        got = fused_of(out)
        counts.append(len(got))
        values = statuses(node)["detection_fusion: branches"].values
        weights.append(float(values["camera.weight"]))
    assert counts == [1] * 30  # one fused set per LiDAR message, camera or not
    assert weights[:10] == [1.0] * 10
    assert min(weights[16:20]) == 0.0  # stale after timeout_s
    assert weights[-1] == 1.0
    st = statuses(node)["detection_fusion: branches"]
    assert st.level == 0
    assert all(a["balanced"] for a in node.accounting().values())


def test_the_external_weight_discounts_a_branch_and_says_why():
    node, clock = make()
    clock.ns = 10 * S
    node.handle(WEIGHT, B.new(topics.FLOAT64_STAMPED, header=make_header(B, 10 * S, "base_link"), data=0.2))
    [fused] = fused_of(node.handle(LIDAR, msg(10 * S, SCENE)))
    car = min(fused.detections, key=lambda d: abs(d.bbox.center.position.x - 10.0))
    assert car.results[0].pose.covariance[0] == pytest.approx(SCENE[0].covariance[0, 0] / 0.2)
    assert car.results[0].hypothesis.score < SCENE[0].score
    st = statuses(node)["detection_fusion: branches"]
    assert st.level == 1 and "lidar weight 0.20" in st.message and "weight topic 0.20" in st.message
    clock.ns = 12 * S  # the weight is older than weight_timeout_s: weight_missing (1) again
    node.handle(LIDAR, msg(12 * S, SCENE))
    assert statuses(node)["detection_fusion: branches"].values["lidar.weight"] == "1.000"


def test_one_frame_at_weight_zero_is_held_over_a_sustained_drop_is_not():
    """The occupancy fusion gives a branch weight 0 in the first frame after a start or reset (its grid has
    not arrived): with weight_hold 2 that single 0 does not blank the fused detections; two in a row do."""
    node, clock = make()

    def weight(t, v):
        node.handle(WEIGHT, B.new(topics.FLOAT64_STAMPED, header=make_header(B, t, "base_link"), data=v))

    for k, (v, kept) in enumerate(((1.0, True), (0.0, True), (1.0, True), (0.0, True), (0.0, False))):
        t = 10 * S + k * P
        clock.ns = t
        weight(t, v)
        [fused] = fused_of(node.handle(LIDAR, msg(t, SCENE)))
        w = float(statuses(node)["detection_fusion: branches"].values["lidar.weight"])
        assert (w == 1.0) == kept, (k, v, w)
        assert (len(fused.detections) > 0) == kept, (k, len(fused.detections))


def test_detections_of_another_stamp_are_moved_by_the_ego_motion():
    node, clock = make(camera=True, odometry_topic=topics.GT_ODOMETRY)
    from perception_nodes.scenario.generate import odometry_msg

    t0 = 10 * S
    for k in range(4):
        node.handle(topics.GT_ODOMETRY, odometry_msg((1.0 * k, 0.0, 0.0, 0.0), 10.0, 0.0, t0 + k * P, B))  # 10 m/s forward
    clock.ns = t0
    # the camera saw the car at x = 10.0 at t0; 0.3 s later the ego is 3 m further: the car is at 7 m
    node.handle(CAMERA, msg(t0, [ebox(10.0, 2.0)]))
    clock.ns = t0 + 3 * P
    [fused] = fused_of(node.handle(LIDAR, msg(t0 + 3 * P, [ebox(7.0, 2.0)])))
    assert len(fused.detections) == 1 and fused.detections[0].bbox.center.position.x == pytest.approx(7.0)


def test_bad_input_is_dropped_or_repaired_counted_and_the_node_goes_on():
    node, clock = make()
    t = 10 * S
    clock.ns = t
    m = msg(t, [ebox(10.0, 2.0), ebox(20.0, 0.0), ebox(30.0, 0.0), ebox(40.0, 0.0), ebox(50.0, 0.0)])
    d = m.detections
    d[0].bbox.center.position.x = math.nan  # NaN box: dropped
    d[1].bbox.size.x = 0.0  # degenerate: dropped
    for r in d[2].results:  # zero covariance: replaced
        r.pose.covariance = np.zeros(36)
    for r in d[3].results:  # NaN covariance: replaced
        r.pose.covariance = np.full(36, np.nan)
    for r in d[4].results:  # unknown class ids only: dropped
        if r.hypothesis.class_id != EVIDENCE_STRENGTH_ID:
            r.hypothesis.class_id = "truck"
    [fused] = fused_of(node.handle(LIDAR, m))
    assert sorted(round(x.bbox.center.position.x) for x in fused.detections) == [30, 40]
    for x in fused.detections:
        cov = np.asarray(x.results[0].pose.covariance).reshape(6, 6)
        assert np.isfinite(cov).all() and cov[0, 0] == pytest.approx(1.0)  # default_sigma_xy_m
    assert node.boxes_dropped == {"nonfinite": 1, "degenerate": 1, "unknown_class": 1}
    assert node.repaired["covariance_replaced"] == 2 and node.repaired["unknown_class_hypotheses"] == 3
    boxes = statuses(node)["detection_fusion: boxes"]
    assert boxes.level == 1 and "3 of 5 input boxes dropped" in boxes.message
    # an empty array is a valid frame: nothing detected
    clock.ns = t + P
    [empty] = fused_of(node.handle(LIDAR, msg(t + P, [])))
    assert empty.detections == []
    # a message without the strength result: default_strength, counted
    clock.ns = t + 2 * P
    [nos] = fused_of(node.handle(LIDAR, msg(t + 2 * P, [ebox(10.0, 2.0)], strength=False)))
    assert len(nos.detections) == 1 and node.repaired["strength_default"] == 1
    # a message in an unknown frame: dropped (calibration), counted
    clock.ns = t + 3 * P
    assert not fused_of(node.handle(LIDAR, msg(t + 3 * P, SCENE, frame="nowhere")))
    assert node.dropped[LIDAR]["calibration"] == 1
    # a garbage message: counted as an error, the node goes on
    clock.ns = t + 4 * P
    node.handle(LIDAR, B.new(topics.FLOAT64_STAMPED, header=make_header(B, t + 4 * P, "base_link"), data=1.0))
    assert node.dropped[LIDAR]["error"] == 1
    # time goes back (a looping bag): history and memory reset, warned, fusing goes on
    clock.ns = t + 5 * P
    [back] = fused_of(node.handle(LIDAR, msg(t - 9 * S, SCENE)))
    assert len(back.detections) == 3 and node.time_jumps == 1
    assert "time_jump" in node.warnings
    # NaN weight: malformed, counted
    node.handle(WEIGHT, B.new(topics.FLOAT64_STAMPED, header=make_header(B, t, "base_link"), data=math.nan))
    assert node.malformed[WEIGHT] == 1
    assert all(a["balanced"] for a in node.accounting().values())


def test_config_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="box_rule"):
        make(box_rule="average")
    with pytest.raises(ConfigError, match="classes"):
        make(classes=["car", "car"])
    p = params()
    p["association"] = {**p["association"], "gate_probability": 1.5}
    with pytest.raises(ConfigError, match="gate_probability"):
        DetectionFusionNode("detection_fusion", p, backend=B, clock=lambda: 0)


def test_memory_confirms_boxes_seen_again_and_never_publishes_ghosts():
    node, clock = make(odometry_topic="", memory={"decay_per_s": 0.5, "process_noise_m2_per_s": 1.0, "max_age_s": 0.5})
    t = 10 * S
    clock.ns = t
    [first] = fused_of(node.handle(LIDAR, msg(t, SCENE)))
    clock.ns = t + P
    [second] = fused_of(node.handle(LIDAR, msg(t + P, SCENE[:1])))
    assert len(second.detections) == 1  # the two boxes no longer seen are not published from memory
    c1 = min(first.detections, key=lambda d: d.bbox.center.position.x).results[0].pose.covariance[0]
    c2 = second.detections[0].results[0].pose.covariance[0]
    assert c2 < c1 and node.memory_state == "ok"


def test_yaml_defaults_match_the_dataclass_defaults():
    """perception.params.yaml documents the defaults; the code's must not drift from them."""
    from perception_nodes.config import to_dataclass
    from perception_nodes.evidential.detection_fusion import AssociationParams
    from perception_nodes.graph.detection_fusion import DetectionBranchConfig, DetectionTrustConfig, MemoryConfig

    p = load_params()["detection_fusion"]
    assert to_dataclass(AssociationParams, p["association"]) == AssociationParams()
    assert to_dataclass(DetectionTrustConfig, p["trust"]) == DetectionTrustConfig()
    assert to_dataclass(MemoryConfig, p["memory"]) == MemoryConfig()
    lidar = DetectionBranchConfig.from_params("lidar", p["branches"]["lidar"])
    assert lidar == DetectionBranchConfig("lidar", lidar.detections_topic, weight_topic=lidar.weight_topic)


def test_runtime_reconfigure_keeps_state_and_refuses_read_only_keys():
    node, clock = make()
    clock.ns = 10 * S
    node.handle(LIDAR, msg(10 * S, SCENE))
    node.reconfigure({"memory": {"decay_per_s": 0.5}, "trust": {"conflict_bad": 0.6},
                      "box_rule": "covariance_intersection", "association": {"gate_probability": 0.95}})
    assert node.memory.decay_per_s == 0.5 and node.trust.params.conflict_bad == 0.6
    assert node.box_rule == "covariance_intersection" and node.association.gate_probability == 0.95
    assert node.fused_out == 1 and node.branches["lidar"].history  # state kept
    with pytest.raises(ConfigError, match="read-only"):
        node.reconfigure({"classes": ["car"]})
    with pytest.raises(ConfigError):
        node.reconfigure({"box_rule": "average"})
