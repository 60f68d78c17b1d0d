"""Fuzzing (issue 7, Deliver 3): hostile PointCloud2 values, stamps, layouts and corruptions, TF, Image
and CameraInfo messages driven through ``NodeCore.handle`` of every node type.

Messages are routed by type: clouds to the node's PointCloud2 inputs (uniformly: the scan and, for the
occupancy node, the obstacle cloud), TFMessages to /tf and /tf_static; type confusion is deliberate and
separate (Image/CameraInfo on a cloud input, a cloud on /tf). Three in four cloud cases have a valid layout
with hostile values (NaN/inf/1e30/±3e38, empty, large, organised) and odd but in-gate stamps, so most of
them reach the algorithms; ``on_message`` of each fuzzed node is wrapped with counters and the last test
asserts how many got there.

Properties: no exception ever escapes ``handle``/``tick``; after every message, for every input topic,
``received == used + malformed + sum(dropped) + pending``; only wrong-type cases may raise inside the node
(counted faults), and each fault is attributed to the case that caused it; after the fuzzing, once the
rig's transforms are re-published on /tf_static, valid input yields outputs again (for occupancy, sets
with both inputs). The nodes are long-lived across examples (a node on a vehicle sees the hostile
messages one after another), with a small grid so thousands of cases fit in CI time.
``derandomize=True``: the same cases every run.

Cases: 2 node types x 550 examples x 3-6 messages, the LiDAR branch (a tiny random network, fusion off)
x 40 examples, the camera + LiDAR fuser (packaged network, clouds only) x 20, plus 600 codec cases
(counted: the last test).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception_nodes import topics
from perception_nodes.calibration import load_rig, tf_message
from perception_nodes.codecs.backend import default_backend, make_header
from perception_nodes.codecs.camera_info import camera_model_from_msg
from perception_nodes.codecs.image import image_to_numpy
from perception_nodes.codecs.pointcloud2 import create_cloud, create_xyzi_cloud, read_points, read_xyzi
from perception_nodes.config import load_params
from perception_nodes.errors import MalformedMessageError
from perception_nodes.graph import NODE_TYPES
from perception_nodes.graph.node import synthetic_scan

pytestmark = pytest.mark.slow  # ~40 s of CPU for the >5,000 cases

B = default_backend()
PERIOD_NS = 100_000_000
T0 = 1_700_000_000 * 10**9

FUZZ = settings(max_examples=550, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CODEC_FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])

SPECIAL = np.array([0.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38, 1e-40, 1001.0, 1e300])
FLOATS = st.one_of(st.floats(-80, 80, width=32), st.sampled_from(SPECIAL[:-1].tolist()))


@st.composite
def float_arrays(draw, shape: tuple[int, ...]) -> np.ndarray:
    """Values in a plausible range with a drawn share of special ones (NaN, inf, 1e30, ±3e38, ...).

    One seed per array instead of one draw per value keeps generation cheap, so thousands of cases fit
    in CI time; hypothesis still chooses the structure (sizes, layouts, corruptions, special share)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    special_share = draw(st.sampled_from([0.0, 0.0, 0.05, 0.5, 1.0]))
    vals = rng.uniform(-80, 80, shape)
    mask = rng.random(shape) < special_share
    vals[mask] = rng.choice(SPECIAL, int(mask.sum()))
    return vals
FRAMES = st.sampled_from(["velodyne", "velodyne", "/velodyne", "", "unknown_frame", "base_link"])


class Clock:
    """The node clock and steady clock of a fuzzed node: 100 ms per message."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def _small_params(name: str) -> dict:
    p = load_params()[name]
    p = {k: v for k, v in p.items() if k != "enabled"}
    if "ground" in p:
        p["ground"] = {**p["ground"], "num_sectors": 24, "max_range": 60.0}
    if name == "occupancy_grid":
        p["grid"] = {"resolution": 0.5, "size_x": 20.0, "size_y": 20.0, "origin": [-10.0, -10.0]}
        p["evidence"] = {**p["evidence"], "azimuth_bins": 64}
    if name == "bev_fusion":
        p["threads"] = 1
    if name == "lidar_detection":
        from tests.lidar_branch_util import branch_params

        p = branch_params(_tiny_weights(), threads=1, geometric_occupancy_topic="")
    return p


_WEIGHTS: list = []


def _tiny_weights():
    """The tiny random LiDAR branch network, saved once per session (the fuzzing is about the node)."""
    if not _WEIGHTS:
        import tempfile
        from pathlib import Path

        from tests.lidar_branch_util import save_tiny_weights

        _WEIGHTS.append(save_tiny_weights(Path(tempfile.mkdtemp(prefix="fuzz_weights_")) / "lidar_detection"))
    return _WEIGHTS[0]


NODES: dict[str, tuple] = {}


def _node(name: str):
    if name not in NODES:
        clock = Clock()
        node = NODE_TYPES[name](name, _small_params(name), backend=B, clock=clock, steady_clock=clock,
                                log=logging.getLogger("fuzz"))
        NODES[name] = (node, clock)
    return NODES[name]


# ------------------------------------------------------------------------------- strategies
LAYOUTS = {
    "xyzi": [("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4")],
    "xyz_f64": [("x", "f8"), ("y", "f8"), ("z", "f8")],
    "ouster": [("x", "f4"), ("y", "f4"), ("z", "f4"), ("pad", "u4"), ("intensity", "f4"), ("t", "u4"),
               ("reflectivity", "u2"), ("ring", "u2")],
    "ints": [("x", "i2"), ("y", "i2"), ("z", "i2"), ("intensity", "u1")],
    "no_z": [("x", "f4"), ("y", "f4"), ("intensity", "f4")],
    "vector": [("x", "f4"), ("y", "f4"), ("z", "f4"), ("rgb", ("u1", 3))],
}


#: (kind, amount): resolved against the node clock when the message is sent (see ``_stamp``)
STAMPS = st.tuples(st.sampled_from(["now", "now", "now", "far_future", "past", "zero", "jitter"]),
                   st.integers(1, 600_000_000))


def _stamp(spec: tuple[str, int], clock_now: int) -> int:
    kind, k = spec
    if kind == "far_future":
        return clock_now + (10 + k) * 10**9
    if kind == "past":
        return max(0, clock_now - k % 10**6 * 10**9)
    if kind == "zero":
        return 0
    if kind == "jitter":
        return clock_now + (k % 601 - 300) * 1_000_000
    if kind == "near_future":  # inside the 10 s gate
        return clock_now + k % 9000 * 1_000_000
    if kind == "repeat":  # the stamp a "now" message before this one had
        return clock_now - PERIOD_NS
    return clock_now


def _restamp(msg, stamp_ns: int):
    header = dataclasses.replace(msg.header, stamp=dataclasses.replace(
        msg.header.stamp, sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9))
    return dataclasses.replace(msg, header=header)


VALID_LAYOUTS = ("xyzi", "xyzi", "xyz_f64", "ouster", "ints", "vector")  # read_xyzi decodes all of these
CORRUPTIONS = ["truncate", "extend", "endian_flag", "point_step", "row_step", "height", "offset", "datatype",
               "count", "dup_name", "no_fields", "is_dense_lie"]


def _cloud_of(draw, layout: str, n: int, frame: str) -> object:
    """A well-formed cloud of ``n`` points in ``layout``, drawn values (a share of them absurd)."""
    order = draw(st.sampled_from("<>"))
    fields = [(name, (order + t) if isinstance(t, str) else (order + t[0], t[1])) for name, t in LAYOUTS[layout]]
    dtype = np.dtype(fields, align=draw(st.booleans()))
    pts = np.zeros(n, dtype)
    if n:
        for name in dtype.names:
            sub = dtype[name]
            vals = draw(float_arrays((n,) + sub.shape))
            if sub.base.kind != "f":
                info = np.iinfo(sub.base)
                vals = np.clip(np.nan_to_num(vals * 100), info.min, info.max)
            with np.errstate(over="ignore"):
                pts[name] = vals.astype(sub.base)
    organised = n >= 4 and n % 2 == 0 and draw(st.booleans())
    return create_cloud(pts.reshape(2, -1) if organised else pts, 0, frame, B)


#: in-gate but odd stamps (a cloud must reach the algorithm to test it): jumps back, zero, ±300 ms
#: jitter, up to 9 s ahead (the gate is stamp_max_future_s = 10 s); a few far-future ones are gated
VALID_STAMPS = st.tuples(st.sampled_from(["now", "now", "jitter", "jitter", "past", "zero", "near_future",
                                          "repeat", "far_future"]), st.integers(1, 600_000_000))


@st.composite
def hostile_clouds(draw):
    """Structurally valid clouds with hostile values and stamps: NaN/inf/1e30/±3e38 coordinates (via
    ``float_arrays``), empty, single-point, large (up to 6,000 points) and organised clouds."""
    n = draw(st.one_of(st.integers(0, 24), st.integers(0, 24), st.just(0), st.integers(1000, 6000)))
    frame = draw(st.sampled_from(["velodyne", "velodyne", "velodyne", "/velodyne", "base_link", "unknown_frame"]))
    return draw(VALID_STAMPS), _cloud_of(draw, draw(st.sampled_from(VALID_LAYOUTS)), n, frame)


@st.composite
def clouds(draw):
    """Broken layouts: any layout (some without z), then one corruption of the header or data."""
    msg = _cloud_of(draw, draw(st.sampled_from(sorted(LAYOUTS))), draw(st.integers(0, 24)), draw(FRAMES))
    corruption = draw(st.sampled_from([None] + CORRUPTIONS))
    if corruption == "truncate":
        msg = dataclasses.replace(msg, data=msg.data[: draw(st.integers(0, max(0, len(msg.data) - 1)))])
    elif corruption == "extend":
        msg = dataclasses.replace(msg, data=np.concatenate([msg.data, np.zeros(draw(st.integers(1, 17)), np.uint8)]))
    elif corruption == "endian_flag":
        msg = dataclasses.replace(msg, is_bigendian=not msg.is_bigendian)
    elif corruption == "point_step":
        msg = dataclasses.replace(msg, point_step=draw(st.integers(0, 2**32 - 1)))
    elif corruption == "row_step":
        msg = dataclasses.replace(msg, row_step=draw(st.integers(0, 2**32 - 1)))
    elif corruption == "height":
        msg = dataclasses.replace(msg, height=draw(st.integers(0, 2**32 - 1)))
    elif corruption in ("offset", "datatype", "count", "dup_name") and msg.fields:
        k = draw(st.integers(0, len(msg.fields) - 1))
        f = msg.fields[k]
        change = {"offset": {"offset": draw(st.integers(0, 2**32 - 1))},
                  "datatype": {"datatype": draw(st.integers(0, 255))},
                  "count": {"count": draw(st.integers(0, 2**32 - 1))},
                  "dup_name": {"name": msg.fields[0].name}}[corruption]
        fields = list(msg.fields)
        fields[k] = dataclasses.replace(f, **change)
        msg = dataclasses.replace(msg, fields=fields)
    elif corruption == "no_fields":
        msg = dataclasses.replace(msg, fields=[])
    elif corruption == "is_dense_lie":
        msg = dataclasses.replace(msg, is_dense=True)
    return draw(STAMPS), msg


@st.composite
def tf_messages(draw):
    transforms = []
    for _ in range(draw(st.integers(0, 3))):
        q = draw(st.lists(FLOATS, min_size=4, max_size=4))
        if draw(st.booleans()):  # mostly a proper unit quaternion
            v = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)), dtype=np.float64)
            q = list(v / np.linalg.norm(v)) if np.linalg.norm(v) > 1e-3 else [0.0, 0.0, 0.0, 1.0]
        t = draw(st.lists(FLOATS, min_size=3, max_size=3))
        parent, child = draw(st.sampled_from([("base_link", "velodyne"), ("base_link", "lidar2"),
                                              ("velodyne", "base_link"), ("", "x"), ("a", "a")]))
        transforms.append(B.new(
            "geometry_msgs/msg/TransformStamped",
            header=make_header(B, 0, parent), child_frame_id=child,
            transform=B.new("geometry_msgs/msg/Transform",
                            translation=B.new("geometry_msgs/msg/Vector3", x=float(t[0]), y=float(t[1]), z=float(t[2])),
                            rotation=B.new("geometry_msgs/msg/Quaternion", x=float(q[0]), y=float(q[1]),
                                           z=float(q[2]), w=float(q[3]))),
        ))
    return draw(STAMPS), B.new(topics.TF_MESSAGE, transforms=transforms)


@st.composite
def images(draw):
    h, w = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    encoding = draw(st.sampled_from(["rgb8", "mono8", "mono16", "32FC1", "bgra8", "yuv422", ""]))
    step = draw(st.one_of(st.just(w * 4), st.integers(0, 64)))
    size = draw(st.one_of(st.just(step * h), st.integers(0, 300)))
    return draw(STAMPS), B.new(topics.IMAGE, header=make_header(B, 0, draw(FRAMES)), height=h, width=w,
                 encoding=encoding, is_bigendian=draw(st.integers(0, 1)), step=step,
                 data=np.zeros(size, np.uint8))


@st.composite
def camera_infos(draw):
    model = draw(st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant", "", "fisheye"]))
    arr = lambda n: draw(float_arrays((n,)))  # noqa: E731
    return draw(STAMPS), B.new(topics.CAMERA_INFO_TYPE, header=make_header(B, 0, draw(FRAMES)),
                 height=draw(st.integers(0, 2000)), width=draw(st.integers(0, 2000)), distortion_model=model,
                 d=arr(draw(st.sampled_from([0, 5, 8, 4]))), k=arr(9), r=arr(9), p=arr(12),
                 binning_x=0, binning_y=0,
                 roi=B.new("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                           do_rectify=False))


# ------------------------------------------------------------------------------- node fuzzing
def _check_balanced(node) -> None:
    for topic, a in node.accounting().items():
        assert a["balanced"], (node.name, topic, a)


def _valid_cloud(stamp: int):
    return create_xyzi_cloud(synthetic_scan(36, 4), stamp, "velodyne", B)


def _restamp_tf(msg, stamp_ns: int):
    """Every transform of a TFMessage stamped ``stamp_ns`` (a TFMessage has no header of its own)."""
    return dataclasses.replace(msg, transforms=[_restamp(t, stamp_ns) for t in msg.transforms])


CLOUDS, HOSTILE, TFS = clouds(), hostile_clouds(), tf_messages()
IMAGES, CAMERA_INFOS = images(), camera_infos()
#: one message: what kind of case, an index picking its topic, its content. Routed by type (see
#: ``_topic``): clouds to the node's PointCloud2 inputs, TF to /tf or /tf_static; the wrong-type cases
#: (Image/CameraInfo on a cloud input, a cloud on /tf) are the deliberate type confusions. Hostile
#: values with a valid layout are listed three times, broken layouts once: most clouds reach the algorithm.
PICK = st.integers(0, 2**16)
MESSAGES = st.one_of(
    st.tuples(st.just("cloud"), PICK, HOSTILE),
    st.tuples(st.just("cloud"), PICK, HOSTILE),
    st.tuples(st.just("cloud"), PICK, HOSTILE),
    st.tuples(st.just("cloud"), PICK, CLOUDS),
    st.tuples(st.just("tf"), PICK, TFS),
    st.tuples(st.just("wrong_type"), PICK, st.one_of(IMAGES, CAMERA_INFOS)),
    st.tuples(st.just("cloud_on_tf"), PICK, CLOUDS),
)
EXAMPLES = st.lists(MESSAGES, min_size=3, max_size=6)
#: the only cases allowed to raise inside the node (counted as faults): messages of the wrong type
WRONG_TYPE = {"wrong_type", "cloud_on_tf"}
CASES = {"messages": 0, "codec": 0}
#: per node: cloud cases sent to a cloud input; of them, how many entered ``on_message`` (past the stamp
#: gate: "reached") and how many it returned from normally ("accepted": decoded and, for ground
#: segmentation, transformed and segmented; for occupancy, taken by the synchroniser); cases during
#: which an output frame was produced; and the raw ``on_message`` call counts (all case kinds)
REACH: dict[str, Counter] = {}
FAULT_CASES: dict[str, Counter] = {}  # per node: case kind -> faults it produced


def _count_on_message(node) -> None:
    """Wraps this node instance's ``on_message`` with counters (``handle`` calls it via ``self``)."""
    inner = node.on_message
    calls = REACH.setdefault(node.name, Counter())

    def on_message(topic, msg):
        calls["on_message_entered"] += 1
        out = inner(topic, msg)
        calls["on_message_returned"] += 1
        return out

    node.on_message = on_message


def _fuzzed_node(name: str):
    node, clock = _node(name)
    if name not in REACH:
        _count_on_message(node)
    return node, clock


def _topic(node, kind: str, pick: int) -> str:
    """The input a case goes to, by its message type (uniformly over the inputs of that type)."""
    cloud_topics = [p.topic for p in node.inputs() if p.msgtype == topics.POINTCLOUD2]
    tf_topics = [p.topic for p in node.inputs() if p.msgtype == topics.TF_MESSAGE]
    assert cloud_topics and sorted(tf_topics) == sorted([topics.TF, topics.TF_STATIC]), node.inputs()
    candidates = tf_topics if kind in ("tf", "cloud_on_tf") else cloud_topics
    return candidates[pick % len(candidates)]


def _fuzz(name: str, messages) -> None:
    node, clock = _fuzzed_node(name)
    reach = REACH[name]
    for kind, pick, (stamp_spec, msg) in messages:
        clock.now += PERIOD_NS
        stamp = _stamp(stamp_spec, clock.now)
        msg = _restamp_tf(msg, stamp) if kind == "tf" else _restamp(msg, stamp)
        topic = _topic(node, kind, pick)
        faults_before = sum(node.faults.values())
        entered, returned, frames = (reach["on_message_entered"], reach["on_message_returned"], node.frames_out)
        out = node.handle(topic, msg)
        if kind == "cloud":
            reach["cloud_cases"] += 1
            reach["reached"] += reach["on_message_entered"] - entered
            reach["accepted"] += reach["on_message_returned"] - returned
            reach["with_output"] += node.frames_out > frames
        CASES["messages"] += 1
        assert isinstance(out, list)
        _check_balanced(node)
        new_faults = sum(node.faults.values()) - faults_before
        if new_faults:
            FAULT_CASES.setdefault(name, Counter())[kind] += new_faults
        # well-typed hostile input is malformed, dropped or gated, never an internal error
        assert not new_faults or kind in WRONG_TYPE, (kind, topic, dict(node.faults))
    clock.now += PERIOD_NS
    faults_before = sum(node.faults.values())
    node.tick()
    assert sum(node.faults.values()) == faults_before, dict(node.faults)
    _check_balanced(node)


@FUZZ
@given(EXAMPLES)
def test_fuzz_ground_segmentation(messages) -> None:
    _fuzz("ground_segmentation", messages)


@FUZZ
@given(EXAMPLES)
def test_fuzz_occupancy_grid(messages) -> None:
    _fuzz("occupancy_grid", messages)


@settings(FUZZ, max_examples=40)
@given(EXAMPLES)
def test_fuzz_lidar_detection(messages) -> None:
    _fuzz("lidar_detection", messages)


@settings(FUZZ, max_examples=20)
@given(EXAMPLES)
def test_fuzz_bev_fusion(messages) -> None:
    """The camera + LiDAR fuser (packaged network) fed hostile clouds with no camera: LiDAR-only or
    none frames; its image/camera_info inputs: tests/test_bev_fusion_node.py."""
    _fuzz("bev_fusion", messages)


#: nodes whose output needs more than a cloud: their hostile-input tests are their own
#: (calibration_monitor: camera images, tests/test_calibration_monitor.py; stereo_occupancy: images,
#: tests/test_stereo_occupancy_node.py; fusion: grids, tests/test_fusion_node.py; camera_bev: an image,
#: tests/test_camera_bev_node.py; detection_fusion: detections, tests/test_detection_fusion_node.py; control:
#: curvature predictions, the scan only as a health input, tests/test_control_node.py)
NOT_CLOUD_DRIVEN = {"calibration_monitor", "camera_bev", "control", "detection_fusion", "fusion", "stereo_occupancy"}


@pytest.mark.parametrize("name", sorted(set(NODE_TYPES) - NOT_CLOUD_DRIVEN))
def test_after_the_fuzzing_valid_input_still_yields_output(name: str) -> None:
    """Runs after the fuzz tests in this module (same long-lived nodes): whatever they were fed
    (including hostile /tf and /tf_static), once the rig's transforms are re-published on /tf_static, as
    a user would, valid clouds produce outputs again, for the occupancy node from sets WITH both inputs."""
    node, clock = _fuzzed_node(name)
    scan = next(p.topic for p in node.inputs() if p.msgtype == topics.POINTCLOUD2)
    inputs = [scan] + ([node.obstacle_topic] if name == "occupancy_grid" else [])
    used_before = {t: node.used[t] for t in inputs + [topics.TF_STATIC]}
    frames_before = node.frames_out
    clock.now += PERIOD_NS
    rig = load_rig(node.params["calibration_file"]).as_list()
    node.handle(topics.TF_STATIC, tf_message(rig, clock.now, B))
    assert node.used[topics.TF_STATIC] == used_before[topics.TF_STATIC] + 1, node.accounting()[topics.TF_STATIC]
    outs = []
    for _ in range(5):
        clock.now += PERIOD_NS
        for t in inputs:
            outs += node.handle(t, _valid_cloud(clock.now))
        outs += node.tick()
    out_topic = node.detections_topic if name in ("lidar_detection", "bev_fusion") else node.output_topic
    assert any(e.topic == out_topic for e in outs), [e.topic for e in outs]
    assert node.frames_out > frames_before
    for t in inputs:  # every input went into an output (for occupancy: sets with the obstacle cloud)
        assert node.used[t] > used_before[t], (t, node.accounting()[t])
    _check_balanced(node)
    assert sum(node.received.values()) > 0


# ------------------------------------------------------------------------------- codec fuzzing
@CODEC_FUZZ
@given(st.one_of(st.tuples(st.just("cloud"), CLOUDS), st.tuples(st.just("cloud"), HOSTILE), st.tuples(st.just("image"), IMAGES),
                 st.tuples(st.just("camera_info"), CAMERA_INFOS)))
def test_fuzz_codecs_raise_only_malformed(case) -> None:
    """Decoders are the first thing a message meets: they either decode or raise
    MalformedMessageError with a reason, never anything else."""
    kind, (_, msg) = case
    CASES["codec"] += 1
    try:
        if kind == "cloud":
            read_points(msg)
            read_xyzi(msg)
        elif kind == "image":
            image_to_numpy(msg)
        else:
            camera_model_from_msg(msg)
    except MalformedMessageError as exc:
        assert exc.reason


def test_zz_at_least_5000_cases() -> None:
    """Issue 7 asks for at least 5,000 fuzzed cases (runs last in this module)."""
    if not CASES["messages"]:
        pytest.skip("the fuzz tests of this module did not run in this session")
    print(f"fuzzed cases: {CASES}; reach: { {k: dict(v) for k, v in REACH.items()} }; "
          f"faults by case kind: { {k: dict(v) for k, v in FAULT_CASES.items()} }")
    assert CASES["messages"] + CASES["codec"] >= 5000, CASES
    for name, reach in REACH.items():
        if not reach["cloud_cases"]:
            continue  # only the liveness test ran for this node
        # the fuzzing is about the algorithms: a good share of the cloud cases must get past the gates and the
        # decoder (measured 0.38-0.5 across nodes and checkouts; ground_segmentation gave 577 of ~1500, 0.38).
        # The share is a binomial draw over cloud_cases (118 for lidar_detection's 40 examples, which vary
        # between checkouts), so the floor is the lowest measured share, 0.38, less three standard deviations:
        # 0.25 at 118 cases, 0.33 at 1000; a gate that rejected everything valid would give ~0
        n = reach["cloud_cases"]
        assert reach["accepted"] >= (0.38 - 3 * (0.38 * 0.62 / n) ** 0.5) * n, (name, dict(reach))
        # the occupancy node outputs only for a valid scan paired with a valid obstacle cloud within the sync
        # slop: 9.8-20 % of cloud cases across checkouts (the derandomised draws differ between them), so
        # the floor is 5 %; a pipeline that stopped producing output would give 0
        assert reach["with_output"] >= 0.05 * reach["cloud_cases"], (name, dict(reach))
        assert set(FAULT_CASES.get(name, {})) <= WRONG_TYPE, (name, FAULT_CASES[name])
        node = NODES[name][0]
        # every input was exercised for real: clouds went into outputs on each cloud input (for the
        # occupancy node: sets with the obstacle cloud), and real TFMessages were taken on /tf and /tf_static
        ports = node.inputs()
        if name in ("lidar_detection", "bev_fusion"):  # few examples: /tf handling (NodeCore's, shared) is covered
            ports = [p for p in ports if p.msgtype == topics.POINTCLOUD2]  # by the others; images: their own tests
        for port in ports:
            assert node.used[port.topic] > 0, (name, port.topic, node.accounting()[port.topic])
