"""The stereo occupancy node core (issue 11, Deliver 3 and 5, classical part) on the generated scenario's
stereo pair: one grid pair and one health sample per image pair with its stamp, per-stage latency,
zero-copy decoding, agreement with the ground-truth occupancy where it claims free space, every bad-input
case reported while the node keeps running, and the replay report's stereo panel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from perception_nodes import topics
from perception_nodes.bags import BagReader
from perception_nodes.codecs.backend import default_backend, make_header, stamp_to_ns
from perception_nodes.codecs.camera_info import camera_info_msg, camera_model_from_msg
from perception_nodes.codecs.image import image_to_numpy, numpy_to_image
from perception_nodes.config import load_params
from perception_nodes.evaluation import grid_array
from perception_nodes.graph.stereo_occupancy import StereoOccupancyNode

B = default_backend()
S = 1_000_000_000
STAGES = ("decode", "match", "depth", "evidence", "publish")
LEFT, RIGHT = topics.CAMERA_IMAGE.format(side="left"), topics.CAMERA_IMAGE.format(side="right")
LINFO, RINFO = topics.CAMERA_INFO.format(side="left"), topics.CAMERA_INFO.format(side="right")


class Clock:
    def __init__(self) -> None:
        self.ns = 0
        self.steady = 5 * S

    def __call__(self) -> int:
        return self.ns


def _node(**overrides):
    params = load_params()["stereo_occupancy"]
    params = {k: v for k, v in params.items() if k != "enabled"}
    params.update(overrides)
    clock = Clock()
    node = StereoOccupancyNode("stereo_occupancy", params, backend=B, clock=clock, steady_clock=lambda: clock.steady)
    node.warmup()
    return node, clock


def _feed(node, clock, topic, msg) -> dict:
    if hasattr(msg, "header") and topic != topics.TF_STATIC:
        clock.ns = max(clock.ns, stamp_to_ns(msg.header.stamp) + 1_000_000)
    clock.steady += S // 40
    return {e.topic: e.msg for e in node.handle(topic, msg)}


@pytest.fixture(scope="module")
def records(scenario_bag):
    wanted = [topics.TF_STATIC, LEFT, RIGHT, LINFO, RINFO, topics.GT_OCCUPANCY]
    with BagReader(scenario_bag) as r:
        return [(rec.topic, rec.msg) for rec in r.records(topics=wanted)]


@pytest.fixture(scope="module")
def run(records):
    node, clock = _node()
    outs = []
    for topic, msg in records:
        if topic == topics.GT_OCCUPANCY:
            continue
        out = _feed(node, clock, topic, msg)
        if node.output_topic in out:
            outs.append(out)
    return node, outs


def _status(node, which="stereo"):
    return next(s for s in node.diagnostic_statuses() if s.name == f"stereo_occupancy: {which}")


def test_every_pair_gives_grids_health_and_stage_latency(run, records):
    node, outs = run
    left_stamps = [stamp_to_ns(m.header.stamp) for t, m in records if t == LEFT]
    assert len(outs) == len(left_stamps) == 10
    for out, stamp in zip(outs, left_stamps, strict=True):
        occ, unc = out[node.output_topic], out[node.uncertainty_topic]
        assert stamp_to_ns(occ.header.stamp) == stamp_to_ns(unc.header.stamp) == stamp
        assert occ.header.frame_id == "base_link"
        assert (occ.info.width, occ.info.height, occ.info.resolution) == (320, 320, 0.25)  # the occupancy node's grid
        prob = grid_array(occ)
        assert (prob >= 0).sum() > 1000 and (prob == -1).sum() > 0.5 * prob.size  # camera cone known, rest unknown
        assert 0.5 < out["~/debug/valid_disparity_ratio"].data <= 1.0
        assert [t.rsplit("/", 1)[1][:-3] for t in out if t.startswith("~/debug/processing_time/")] == list(STAGES)
    for stage in STAGES:
        assert node.latency.series[stage].window_summary().count == 10
    acct = node.accounting()
    assert acct[LEFT]["used"] == acct[RIGHT]["used"] == 10 and all(a["balanced"] for a in acct.values())
    st = _status(node)
    assert st.level == 0 and float(st.values["valid_disparity_ratio"]) > 0.5
    assert st.values["num_disparities"] == "32" and float(st.values["baseline_m"]) == pytest.approx(0.54)


def test_images_are_decoded_without_a_copy(records):
    msg = next(m for t, m in records if t == LEFT)
    img = image_to_numpy(msg)
    assert img.shape == (96, 320, 3) and np.shares_memory(img, msg.data)


def test_cells_called_free_are_free_in_the_ground_truth(run, records):
    """Where the stereo grid says free (P < 0.5), the generator's BEV truth (independent: from the scene's
    boxes and surfaces) is rarely occupied; where it says occupied, often enough to beat the base rate."""
    node, outs = run
    truth = {stamp_to_ns(m.header.stamp): grid_array(m) for t, m in records if t == topics.GT_OCCUPANCY}
    free_hits = free_n = occ_hits = occ_n = 0
    for out in outs:
        prob = grid_array(out[node.output_topic])
        gt = truth[stamp_to_ns(out[node.output_topic].header.stamp)]
        known = gt >= 0
        free_n += int(((prob >= 0) & (prob < 50) & known).sum())
        free_hits += int(((prob >= 0) & (prob < 50) & known & (gt > 50)).sum())
        occ_n += int(((prob > 50) & known).sum())
        occ_hits += int(((prob > 50) & known & (gt > 50)).sum())
    base_rate = np.mean([(g > 50).sum() / max(1, (g >= 0).sum()) for g in truth.values()])
    # measured 2.6 % on the 5 s demo bag, rising with range (0.8 % within 5 m, 6 % at 20-25 m, where the
    # 320-px camera has sigma_Z = 2 m); 6 % leaves room for this shorter bag's different frames
    assert free_n > 10_000 and free_hits / free_n < 0.06
    assert occ_n > 0 and occ_hits / occ_n > base_rate


# --- bad input ---------------------------------------------------------------------------------------

def _first_frame(records):
    tf = next(m for t, m in records if t == topics.TF_STATIC)
    frame = {}
    for t, m in records:
        if t in (LEFT, RIGHT, LINFO, RINFO) and t not in frame:
            frame[t] = m
    return tf, frame


def _restamp(msg, stamp_ns):
    header = dataclasses.replace(msg.header, stamp=dataclasses.replace(msg.header.stamp, sec=stamp_ns // S,
                                                                        nanosec=stamp_ns % S))
    return dataclasses.replace(msg, header=header)


def _image(msg, arr, encoding, stamp):
    return numpy_to_image(arr, encoding, stamp, msg.header.frame_id, B)


def _info(msg, stamp, **p_overrides):
    """The camera_info ``msg`` restamped, with entries of P replaced ({(i, j): value})."""
    m = _restamp(msg, stamp)
    P = np.asarray(m.p, dtype=np.float64).reshape(3, 4).copy()
    for (i, j), v in p_overrides.get("P", {}).items():
        P[i, j] = v
    return dataclasses.replace(m, p=P.reshape(-1))


def test_bad_input_is_reported_and_the_node_keeps_running(records):
    tf, f = _first_frame(records)
    node, clock = _node()
    _feed(node, clock, topics.TF_STATIC, tf)
    t0 = stamp_to_ns(f[LEFT].header.stamp)
    limg, rimg = image_to_numpy(f[LEFT]), image_to_numpy(f[RIGHT])
    k = [0]

    def pair(left=None, right=None, enc="rgb8", linfo=None, rinfo=None):
        """Feed one pair (camera_infos first when given); returns everything published."""
        k[0] += 1
        stamp = t0 + k[0] * S // 10
        out = {}
        for topic, msg in ((LINFO, linfo), (RINFO, rinfo)):
            if msg is not None:
                out.update(_feed(node, clock, topic, _restamp(msg, stamp)))
        out.update(_feed(node, clock, LEFT, left(stamp) if callable(left) else _image(f[LEFT], limg, enc, stamp)))
        out.update(_feed(node, clock, RIGHT, right(stamp) if callable(right) else _image(f[RIGHT], rimg, enc, stamp)))
        return out

    good_l, good_r = f[LINFO], f[RINFO]
    # images before any camera_info: the pair waits, and goes out when the infos come
    out = pair()
    assert node.output_topic not in out and node.pending(LEFT) == 1
    assert _status(node).level == 1 and "waiting for camera_info" in _status(node).message
    out = _feed(node, clock, LINFO, good_l)
    out.update(_feed(node, clock, RINFO, good_r))
    assert node.output_topic in out and node.frames_out == 1

    # encodings SGBM cannot match: malformed, with the reason
    for enc, arr in (("mono16", np.zeros((96, 320), np.uint16)), ("32FC1", np.full((96, 320), np.nan, np.float32))):
        pair(left=lambda st, a=arr, e=enc: _image(f[LEFT], a, e, st))
        assert "cannot be stereo-matched" in node.warnings["malformed"]
    unknown = dataclasses.replace(_image(f[LEFT], limg, "rgb8", t0), encoding="yuv422_weird")
    _feed(node, clock, LEFT, unknown)
    assert node.malformed[LEFT] == 3
    # left and right of different sizes; an image whose size differs from its camera_info
    out = pair(right=lambda st: _image(f[RIGHT], np.ascontiguousarray(rimg[:90]), "rgb8", st))
    assert node.output_topic not in out and "differ in size" in node.warnings["size_mismatch"]
    out = pair(left=lambda st: _image(f[LEFT], np.ascontiguousarray(limg[:, :300]), "rgb8", st),
               right=lambda st: _image(f[RIGHT], np.ascontiguousarray(rimg[:, :300]), "rgb8", st))
    assert node.output_topic not in out and "differs from camera_info size" in node.warnings["size_mismatch"]
    # camera_info with NaN or a zero focal length: malformed, the last valid calibration stays in use
    out = pair(rinfo=_info(good_r, t0, P={(0, 3): float("nan")}))
    assert node.malformed[RINFO] == 1 and "non-finite" in node.warnings["malformed"] and node.output_topic in out
    out = pair(linfo=dataclasses.replace(good_l, k=np.zeros(9)))
    assert node.malformed[LINFO] == 1 and "zero focal length" in node.warnings["malformed"]
    assert node.output_topic in out
    # not a rectified pair (different focal lengths), zero baseline: pairs dropped with the reason, ERROR
    fx = float(np.asarray(good_r.p)[0])
    for bad, fragment in (({(0, 0): fx * 1.02}, "differ in fx"), ({(0, 3): 0.0}, "zero or negative")):
        out = pair(rinfo=_info(good_r, t0, P=bad))
        assert node.output_topic not in out and fragment in node.warnings["bad_calibration"]
        st = _status(node)
        assert st.level == 2 and fragment in st.message
    # the valid calibration comes back: so do the grids
    out = pair(rinfo=good_r)
    assert node.output_topic in out and _status(node).level == 0
    # a blacked-out camera: still a grid (all unknown: nothing seen), health ERROR, the camera named
    frames_before = node.frames_out
    out = pair(left=lambda st: _image(f[LEFT], np.zeros_like(limg), "rgb8", st))
    assert node.frames_out == frames_before + 1 and out["~/debug/valid_disparity_ratio"].data < 0.15
    assert "left image uniform" in node.warnings["blackout"]
    st = _status(node)
    assert st.level == 2 and "stereo blind" in st.message
    assert (grid_array(out[node.output_topic]) == -1).mean() > 0.99
    # and recovers with the next good pair
    out = pair()
    assert node.output_topic in out and _status(node).level == 0
    node.finish()
    acct = node.accounting()
    assert all(a["balanced"] for a in acct.values()), acct
    dropped = acct[LEFT]["dropped"]
    assert dropped["size_mismatch"] == 2 and dropped["bad_calibration"] == 2


def test_missing_camera_info_and_missing_transform_are_reported(records):
    tf, f = _first_frame(records)
    node, clock = _node()
    t0 = stamp_to_ns(f[LEFT].header.stamp)
    for i in range(3):  # no camera_info ever: one pair waits, each newer one pushes the older out
        st = t0 + i * S // 10
        _feed(node, clock, LEFT, _restamp(f[LEFT], st))
        _feed(node, clock, RIGHT, _restamp(f[RIGHT], st))
    assert node.frames_out == 0 and "no camera_info on" in node.warnings["no_camera_info"]
    assert node.accounting()[LEFT]["dropped"]["no_camera_info"] == 2
    # camera_info but no transform to base_link (no /tf_static, no calibration file)
    _feed(node, clock, LINFO, f[LINFO])
    out = _feed(node, clock, RINFO, f[RINFO])
    assert node.output_topic not in out and "no transform" in node.warnings["calibration"]
    node.finish()
    acct = node.accounting()
    assert all(a["balanced"] for a in acct.values()), acct
    assert acct[LEFT]["dropped"] == {"calibration": 1, "no_camera_info": 2}


@pytest.mark.slow
def test_replay_report_shows_the_stereo_grid_beside_the_lidar_grid(scenario_bag, tmp_path):
    from perception_nodes.replay import run_graph
    from perception_nodes.report import stereo_section

    # the LiDAR grid from the occupancy node alone (it segments inline when no obstacle cloud comes)
    params = {k: v for k, v in load_params().items() if k in ("occupancy_grid", "stereo_occupancy", "replay")}
    # room for every scan while the obstacle time-out runs, however slow the first frame on this machine
    # (the default queue of 5 scans lasts 0.5 s: a first frame 0.2 s late would overflow it)
    params["occupancy_grid"]["sync"]["queue_size"] = 20
    result = run_graph(scenario_bag, params, tmp_path, progress=False)
    # what each node did with every input, shown if the grids do not line up
    why = (f"LiDAR grids {[s for s, _, _ in result.grids]}, stereo grids {[s for s, _, _ in result.stereo_grids]}, "
           f"frames out {result.latency['frames_out']}, inputs {result.latency['inputs']}")
    assert len(result.stereo_grids) == 8 and result.latency["frames_out"]["stereo_occupancy"] == 10, why
    assert result.latency["frames_out"]["occupancy_grid"] == 10, why
    assert {s for s, _, _ in result.stereo_grids} <= {s for s, _, _ in result.grids}, why  # same stamps: side by side
    html = stereo_section(result)
    assert "Stereo occupancy (classical SGBM) beside the LiDAR grid" in html and 'src="stereo_1.png"' in html
    assert (tmp_path / "stereo_0.png").stat().st_size > 10_000


# --- fuzzing: hostile images and camera_infos on the node's own topics -------------------------------

def _fuzz_strategies():
    from hypothesis import strategies as st

    from tests.test_fuzz_nodes import camera_infos, images

    @st.composite
    def valid_images(draw):
        """Well-formed 8-bit images of odd sizes (tiny, below the disparity range, one of the pair only)."""
        h, w = draw(st.sampled_from([(1, 1), (8, 20), (30, 40), (96, 320), (96, 300), (95, 320)]))
        enc = draw(st.sampled_from(["rgb8", "mono8", "bgra8"]))
        ch = {"rgb8": 3, "mono8": 1, "bgra8": 4}[enc]
        arr = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (h, w, ch)[: 2 if ch == 1 else 3],
                                                                           dtype=np.uint8)
        if draw(st.booleans()):
            arr[:] = 0
        return numpy_to_image(arr, enc, 0, draw(st.sampled_from(["camera_left_optical", "", "nowhere"])), B)

    @st.composite
    def hostile_infos(draw, good):
        """The scenario's camera_info with P (or K) entries replaced by absurd values."""
        msg = good[draw(st.sampled_from(sorted(good)))]
        P = np.asarray(msg.p, dtype=np.float64).copy()
        for _ in range(draw(st.integers(1, 3))):
            P[draw(st.integers(0, 11))] = draw(st.sampled_from([0.0, -1.0, np.nan, np.inf, 1e30, -500.0, 1e-9]))
        return dataclasses.replace(msg, p=P, width=draw(st.sampled_from([msg.width, 0, 300])))

    return st, images(), camera_infos(), valid_images(), hostile_infos


@pytest.mark.slow
def test_fuzzed_images_and_camera_infos_never_fault_and_valid_input_recovers(records):
    from hypothesis import HealthCheck, example, given, settings

    st, images, infos, valid_images, hostile_infos = _fuzz_strategies()
    tf, f = _first_frame(records)
    node, clock = _node()
    _feed(node, clock, topics.TF_STATIC, tf)
    good = {LINFO: f[LINFO], RINFO: f[RINFO]}
    t = [stamp_to_ns(f[LEFT].header.stamp)]
    message = st.one_of(st.tuples(st.sampled_from([LEFT, RIGHT]), st.one_of(images.map(lambda x: x[1]), valid_images)),
                        st.tuples(st.sampled_from([LEFT, RIGHT]), valid_images),
                        st.tuples(st.sampled_from([LINFO, RINFO]),
                                  st.one_of(infos.map(lambda x: x[1]), hostile_infos(good))),
                        st.sampled_from(sorted(good.items())),
                        st.tuples(st.just("pair"), st.integers(0, 2**16)))

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(message, min_size=2, max_size=6))
    def fuzz(msgs):
        for topic, msg in msgs:
            if topic == "pair":  # valid calibration and a same-size pair of random (or black) content
                rng = np.random.default_rng(msg)
                t[0] += S // 20
                for side, info in ((LINFO, good[LINFO]), (RINFO, good[RINFO])):
                    _feed(node, clock, side, _restamp(info, t[0]))
                for side in (LEFT, RIGHT):
                    arr = rng.integers(0, 256, (96, 320, 3), dtype=np.uint8) * np.uint8(msg % 3 != 0)
                    _feed(node, clock, side, _image(f[side], arr, "rgb8", t[0]))
                continue
            if topic != RIGHT:  # a right image takes the stamp of the left one before it: pairs can form
                t[0] += S // 20
            _feed(node, clock, topic, _restamp(msg, t[0]))
        assert not node.faults, node.faults  # every bad case has its own diagnosis: no unexpected exception
        assert all(a["balanced"] for a in node.accounting().values()), node.accounting()

    # one explicit case per path, so reaching them does not rest on the seed (derived from this source)
    grey = np.random.default_rng(0).integers(0, 256, (96, 320, 3), dtype=np.uint8)
    fuzz = example([(LINFO, good[LINFO]), (RINFO, good[RINFO]), (LEFT, _image(f[LEFT], grey, "rgb8", 0)),
                    (RIGHT, _image(f[RIGHT], grey[:, :300].copy(), "rgb8", 0)),  # sizes differ
                    ("pair", 4)])(fuzz)  # the next pair proves the odd one's set complete
    fuzz = example([("pair", 3), ("pair", 4)])(fuzz)  # a blacked-out pair (3 % 3 == 0), then a valid one
    fuzz = example([(LEFT, dataclasses.replace(f[LEFT], step=1)),  # rows shorter than the width: malformed
                    (LINFO, dataclasses.replace(good[LINFO], d=np.zeros(0)))])(fuzz)  # plumb_bob without D
    fuzz()
    # the cases reached every path: matched pairs, blacked-out ones, size rejections and malformed messages
    # (absurd P/K entries are rejected by the CameraInfo codec before the pair check; the pair check's
    # own rejections are tested above)
    assert node.frames_out > 0 and {'blackout', 'size_mismatch', 'malformed'} <= set(node.warnings)
    assert node.malformed[LEFT] + node.malformed[RIGHT] > 0 and node.malformed[LINFO] + node.malformed[RINFO] > 0
    frames_before = node.frames_out
    for _ in range(2):  # valid calibration and pairs again: grids again
        t[0] += S // 10
        for topic in (LINFO, RINFO, LEFT, RIGHT):
            _feed(node, clock, topic, _restamp(f[topic], t[0]))
    assert node.frames_out >= frames_before + 2 and _status(node).level == 0
    node.finish()
    assert all(a["balanced"] for a in node.accounting().values())


def test_a_looping_bag_time_jump_keeps_matching_pairs(records):
    """The same camera frames replayed twice (a looping bag, with /clock rewound): the pairs of the second
    lap are matched and published too, and every image is accounted for."""
    node, clock = _node()
    lap = [(t, m) for t, m in records if t != topics.GT_OCCUPANCY][:60]
    per_lap = []
    for _ in range(2):
        clock.ns = 0  # /clock rewinds with the bag
        per_lap.append(sum(node.output_topic in _feed(node, clock, t, m) for t, m in lap))
    assert per_lap[0] > 0 and per_lap[1] >= per_lap[0] - 1, per_lap
    assert not node.faults and all(a["balanced"] for a in node.accounting().values())


def _size_change_frames(records, sizes):
    """Per frame (left image, right image, left info, right info) of the given (W, H) (crops of the
    scenario's first pair; camera_infos of the same size and stamp), 0.1 s apart: KITTI raw's size change."""
    first = {t: next(m for tt, m in records if tt == t) for t in (LEFT, RIGHT, LINFO, RINFO)}
    stamp = stamp_to_ns(first[LEFT].header.stamp)
    out = []
    for k, (w, h) in enumerate(sizes):
        t = stamp + k * S // 10
        row = {}
        for topic in (LEFT, RIGHT):
            img = first[topic]
            row[topic] = numpy_to_image(np.ascontiguousarray(image_to_numpy(img)[:h, :w]), img.encoding, t,
                                        img.header.frame_id, B)
        for topic in (LINFO, RINFO):
            info = first[topic]
            row[topic] = dataclasses.replace(info, width=w, height=h, header=make_header(B, t, info.header.frame_id))
        out.append(row)
    return out


@pytest.mark.parametrize("image_first", [True, False], ids=["image_first", "info_first"])
def test_each_pair_is_paired_with_the_camera_infos_of_its_stamp(records, image_first):
    """KITTI raw: frame 0 is 1224x370, the others 1242x375; with the latest camera_infos a pair met the other
    frame's size (size_mismatch) or a left/right camera_info pair of two frames (bad_calibration)."""
    node, clock = _node()
    _feed(node, clock, topics.TF_STATIC, next(m for t, m in records if t == topics.TF_STATIC))
    frames = _size_change_frames(records, [(312, 94), (320, 96), (320, 96), (320, 96)])
    order = (LEFT, RIGHT, LINFO, RINFO) if image_first else (LINFO, RINFO, LEFT, RIGHT)
    outs = []
    for row in frames:
        for topic in order:
            out = {e.topic: e.msg for e in node.handle(topic, row[topic])}  # no time passes in a frame
            if node.output_topic in out:
                outs.append(stamp_to_ns(out[node.output_topic].header.stamp))
    outs += [stamp_to_ns(e.msg.header.stamp) for e in node.finish() if e.topic == node.output_topic]
    assert outs == [stamp_to_ns(row[LEFT].header.stamp) for row in frames]
    dropped = node.dropped.get(LEFT, {})
    assert "size_mismatch" not in dropped and "bad_calibration" not in dropped, dropped
    assert "bad_calibration" not in node.warnings and node.camera_info_fallbacks == 0
    assert all(v["balanced"] for v in node.accounting().values()), node.accounting()
