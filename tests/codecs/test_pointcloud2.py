"""PointCloud2 codec: random layouts written by an independent ``struct`` packer, malformed input, KITTI."""

from __future__ import annotations

import contextlib
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception_nodes import msgs
from perception_nodes.codecs import cloud_dtype, create_cloud, create_xyzi_cloud, read_points, read_xyzi
from perception_nodes.errors import MalformedMessageError

TYPE = "sensor_msgs/msg/PointCloud2"
STRUCT = {1: "b", 2: "B", 3: "h", 4: "H", 5: "i", 6: "I", 7: "f", 8: "d"}
SIZE = {d: struct.calcsize(c) for d, c in STRUCT.items()}
NUMPY = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
PAD = 0xA5  # padding bytes: must never show up in decoded values


def cloud_msg(fields, *, height, width, point_step, row_step, data, big=False, is_dense=False):
    """A rosbags PointCloud2 exactly as described (no validation): fields = [(name, offset, datatype, count)]."""
    t = msgs.typestore().types
    return t[TYPE](
        header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="f"),
        height=height, width=width,
        fields=[t["sensor_msgs/msg/PointField"](name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields],
        is_bigendian=big, point_step=point_step, row_step=row_step,
        data=np.frombuffer(bytes(data), np.uint8).copy(), is_dense=is_dense,
    )


def random_value(rng: np.random.Generator, datatype: int) -> float | int:
    if datatype >= 7:
        r = rng.random()
        if r < 0.1:
            return [math.nan, math.inf, -math.inf][int(rng.integers(3))]
        value = float(rng.standard_normal() * 100)
        return float(np.float32(value)) if datatype == 7 else value
    bits = 8 * SIZE[datatype]
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if datatype % 2 else (0, 2**bits)
    return int(rng.integers(lo, hi))


@st.composite
def clouds(draw, min_fields: int = 1):
    """(msg, expected) for a random layout; expected maps field name -> list of per-point value lists."""
    specs, offset = [], 0
    for i in range(draw(st.integers(min_fields, 5))):
        datatype, count = draw(st.integers(1, 8)), draw(st.integers(1, 3))
        offset += draw(st.integers(0, 5))
        specs.append((f"f{i}", offset, datatype, count))
        offset += SIZE[datatype] * count
    point_step = max(1, offset + draw(st.integers(0, 6)))
    height, width = draw(st.integers(0, 3)), draw(st.integers(0, 6))
    row_step = width * point_step + draw(st.integers(0, 9))
    big = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    order = "<>"[big]
    data = bytearray([PAD]) * (row_step * height)
    expected = {name: [] for name, *_ in specs}
    for r in range(height):
        for c in range(width):
            for name, off, datatype, count in specs:
                values = [random_value(rng, datatype) for _ in range(count)]
                at = r * row_step + c * point_step + off
                struct.pack_into(f"{order}{count}{STRUCT[datatype]}", data, at, *values)
                expected[name].append(values)
    fields = draw(st.permutations(specs))
    msg = cloud_msg(fields, height=height, width=width, point_step=point_step, row_step=row_step, data=data, big=big)
    return msg, expected, specs


def assert_matches(points: np.ndarray, expected: dict, specs) -> None:
    for name, _, datatype, count in specs:
        want = np.array(expected[name], dtype=NUMPY[datatype]).reshape(len(points), count)
        got = points[name].reshape(len(points), count)
        assert got.dtype.newbyteorder("=") == np.dtype(NUMPY[datatype])
        assert np.array_equal(got, want, equal_nan=datatype >= 7), name


@settings(max_examples=300, deadline=None)
@given(case=clouds())
def test_read_points_matches_independent_packer(case):
    msg, expected, specs = case
    points = read_points(msg)
    assert points.shape == (msg.height * msg.width,)
    assert points.dtype == cloud_dtype(msg)
    assert points.dtype.itemsize == msg.point_step
    assert_matches(points, expected, specs)
    for name, _, _, count in specs:  # count > 1 is a subarray field
        assert points.dtype.fields[name][0].shape == (() if count == 1 else (count,))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=clouds())
def test_create_cloud_round_trip_keeps_layout_and_nan(case, cdr_roundtrip):
    msg, expected, specs = case
    points = read_points(msg)
    organised = points.reshape(msg.height, msg.width) if msg.height > 1 else points
    built = cdr_roundtrip(create_cloud(organised, 7, "lidar"), TYPE)
    assert (built.height, built.width) == ((msg.height, msg.width) if msg.height > 1 else (1, len(points)))
    assert built.point_step == msg.point_step and built.row_step == built.width * msg.point_step
    assert bool(built.is_bigendian) == bool(msg.is_bigendian) or all(d in (1, 2) for _, _, d, _ in specs)
    assert built.header.frame_id == "lidar" and built.header.stamp.nanosec == 7
    again = read_points(built)
    assert again.dtype == points.dtype
    assert again.tobytes() == points.tobytes()  # bitwise: NaN payloads and inf survive
    assert_matches(again, expected, specs)
    finite = all(math.isfinite(v) for n, _, d, _ in specs if d >= 7 for vs in expected[n] for v in vs)
    assert built.is_dense == finite


def test_zero_copy_only_without_row_padding():
    layout = [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]
    flat = cloud_msg(layout, height=2, width=3, point_step=12, row_step=36, data=bytes(72))
    points = read_points(flat)
    assert np.shares_memory(points, flat.data) and not points.flags.writeable
    padded = cloud_msg(layout, height=2, width=3, point_step=12, row_step=40, data=bytes(80))
    assert read_points(padded).shape == (6,)


@pytest.mark.parametrize("height,width,row_step", [(0, 0, 0), (1, 0, 0), (0, 5, 80), (3, 0, 4)])
def test_empty_clouds(height, width, row_step):
    layout = [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1)]
    msg = cloud_msg(layout, height=height, width=width, point_step=16, row_step=row_step,
                    data=bytes(row_step * height))
    assert read_points(msg).shape == (0,)
    assert read_xyzi(msg).shape == (0, 4) and read_xyzi(msg).dtype == np.float32
    assert read_xyzi(msg, remove_nonfinite=True).shape == (0, 4)
    built = create_xyzi_cloud(np.empty((0, 4), np.float32), 0, "f")
    assert built.width == 0 and built.data.size == 0 and read_xyzi(built).shape == (0, 4)
    assert read_points(create_cloud(read_points(msg), 0, "f")).shape == (0,)


def xyzi_points(rng, n):
    xyzi = rng.standard_normal((n, 4)).astype(np.float32)
    xyzi[::7, 1] = np.nan
    xyzi[::11, 2] = np.inf
    return xyzi


def test_read_xyzi_fast_path_is_a_view():
    xyzi = xyzi_points(np.random.default_rng(0), 50)
    msg = create_xyzi_cloud(xyzi, 1, "f")
    assert not msg.is_dense
    out = read_xyzi(msg)
    assert out.dtype == np.float32 and out.shape == (50, 4)
    assert np.array_equal(out, xyzi, equal_nan=True)
    assert np.shares_memory(out, msg.data) and not out.flags.writeable
    valid = read_xyzi(msg, remove_nonfinite=True)
    assert np.array_equal(valid, xyzi[np.isfinite(xyzi[:, :3]).all(axis=1)])


@pytest.mark.parametrize("big", [False, True])
def test_read_xyzi_converts_other_layouts(big):
    """float64 xyz, uint8 intensity, a ring field, padding, reordered fields, padded rows."""
    rng = np.random.default_rng(1)
    h, w, step, row = 2, 5, 40, 210
    xyz = rng.standard_normal((h * w, 3))
    xyz[3, 0] = np.nan
    inten = rng.integers(0, 256, h * w)
    o = "<>"[big]
    data = bytearray(row * h)
    for k in range(h * w):
        base = (k // w) * row + (k % w) * step
        struct.pack_into(f"{o}3d", data, base + 8, *xyz[k])
        struct.pack_into("B", data, base + 36, int(inten[k]))
        struct.pack_into(f"{o}H", data, base + 38, k)
    fields = [("ring", 38, 4, 1), ("intensity", 36, 2, 1), ("x", 8, 8, 1), ("y", 16, 8, 1), ("z", 24, 8, 1)]
    msg = cloud_msg(fields, height=h, width=w, point_step=step, row_step=row, data=data, big=big)
    out = read_xyzi(msg)
    want = np.column_stack([xyz, inten]).astype(np.float32)
    assert out.dtype == np.float32 and np.array_equal(out, want, equal_nan=True)
    assert np.array_equal(read_xyzi(msg, remove_nonfinite=True), np.delete(want, 3, axis=0))
    assert np.array_equal(read_points(msg)["ring"], np.arange(h * w))


def test_read_xyzi_without_intensity_gives_zeros_and_without_xyz_raises():
    data = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    msg = cloud_msg([("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)], height=1, width=2, point_step=12,
                    row_step=24, data=data)
    assert np.array_equal(read_xyzi(msg), [[1, 2, 3, 0], [4, 5, 6, 0]])
    no_z = cloud_msg([("x", 0, 7, 1), ("y", 4, 7, 1)], height=1, width=3, point_step=12, row_step=36,
                     data=bytes(36))
    with pytest.raises(MalformedMessageError, match="no field z"):
        read_xyzi(no_z)
    vec_x = cloud_msg([("x", 0, 7, 2), ("y", 8, 7, 1), ("z", 12, 7, 1)], height=1, width=1, point_step=16,
                      row_step=16, data=bytes(16))
    with pytest.raises(MalformedMessageError, match="count"):
        read_xyzi(vec_x)


def test_create_cloud_rejects_what_pointfield_cannot_describe():
    with pytest.raises(ValueError):
        create_cloud(np.zeros(3, dtype=[("x", "<f4"), ("t", "<i8")]), 0, "f")
    with pytest.raises(ValueError):
        create_cloud(np.zeros(3, dtype=[("x", "<f4"), ("y", ">f4")]), 0, "f")
    with pytest.raises(ValueError):
        create_cloud(np.zeros(3, dtype=np.float32), 0, "f")
    with pytest.raises(ValueError):
        create_xyzi_cloud(np.zeros((3, 3), np.float32), 0, "f")


# --- malformed input -------------------------------------------------------------------------------

MUTATIONS = ["short_data", "long_data", "row_step_small", "field_past_end", "bad_datatype", "count_zero",
             "overlap", "dup_name", "empty_name", "height_mismatch", "width_mismatch"]


@st.composite
def malformed(draw):
    specs, offset = [], 0
    for i in range(draw(st.integers(1, 4))):
        datatype, count = draw(st.integers(1, 8)), draw(st.integers(1, 3))
        offset += draw(st.integers(0, 3))
        specs.append([f"f{i}", offset, datatype, count])
        offset += SIZE[datatype] * count
    end = offset
    point_step = end + draw(st.integers(0, 4))
    height, width = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    row_step = width * point_step + draw(st.integers(0, 5))
    n_bytes = row_step * height
    k = draw(st.integers(1, 64))
    mutation = draw(st.sampled_from(MUTATIONS))
    target = draw(st.integers(0, len(specs) - 1))
    if mutation == "short_data":
        n_bytes -= min(k, n_bytes)
    elif mutation == "long_data":
        n_bytes += k
    elif mutation == "row_step_small":
        row_step = width * point_step - min(k, width * point_step)
        n_bytes = row_step * height
    elif mutation == "field_past_end":
        point_step = end - min(k, end)
        row_step = width * point_step
        n_bytes = row_step * height
    elif mutation == "bad_datatype":
        specs[target][2] = draw(st.sampled_from([0, *range(9, 256)]))
    elif mutation == "count_zero":
        specs[target][3] = 0
    elif mutation == "overlap":
        _, off, datatype, count = specs[target]
        specs.append(["extra", off + draw(st.integers(0, SIZE[datatype] * count - 1)), 2, 1])
    elif mutation == "dup_name":
        specs.append([specs[target][0], point_step, 2, 1])
        point_step += 1
        row_step = width * point_step
        n_bytes = row_step * height
    elif mutation == "empty_name":
        specs[target][0] = ""
    elif mutation == "height_mismatch":
        height += k
    elif mutation == "width_mismatch":
        width = row_step // point_step + k
    fields = [tuple(s) for s in draw(st.permutations(specs))]
    msg = cloud_msg(fields, height=height, width=width, point_step=point_step, row_step=row_step,
                    data=bytes(n_bytes), big=draw(st.booleans()))
    return mutation, msg


@settings(max_examples=500, deadline=None)
@given(case=malformed())
def test_malformed_layouts_raise_malformed_message_error(case):
    _mutation, msg = case  # the mutation's name shows in hypothesis' report
    with pytest.raises(MalformedMessageError) as info:
        read_points(msg)
    assert info.value.msgtype == TYPE
    with pytest.raises(MalformedMessageError):
        read_xyzi(msg)


big_ints = st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1))


@settings(max_examples=500, deadline=None)
@given(
    fields=st.lists(st.tuples(st.sampled_from(["x", "y", "z", "intensity", "a", ""]), big_ints,
                              st.integers(0, 255), big_ints), max_size=5),
    height=big_ints, width=big_ints, point_step=big_ints, row_step=big_ints,
    n_bytes=st.integers(0, 256), big=st.booleans(),
)
def test_arbitrary_headers_decode_or_raise_malformed_only(fields, height, width, point_step, row_step, n_bytes, big):
    msg = cloud_msg(fields, height=height, width=width, point_step=point_step, row_step=row_step,
                    data=bytes(n_bytes), big=big)
    try:
        points = read_points(msg)
    except MalformedMessageError:
        return
    assert points.shape == (height * width,) and points.dtype.itemsize == point_step
    assert n_bytes == row_step * height
    with contextlib.suppress(MalformedMessageError):  # e.g. no x field: still only this error
        assert read_xyzi(msg).shape == (height * width, 4)


@pytest.mark.parametrize("fields", [[], [("x", 2**31, 7, 1)], [("x", 0, 7, 1), ("x", 4, 7, 1)]])
def test_layouts_numpy_cannot_hold_are_malformed(fields):
    """Sizes past numpy's C-int limit, even in an empty cloud, are reported as malformed, not ValueError."""
    msg = cloud_msg(fields, height=0, width=0, point_step=2**32 - 1, row_step=0, data=b"")
    with pytest.raises(MalformedMessageError):
        read_points(msg)


def test_error_message_is_specific():
    msg = cloud_msg([("x", 0, 7, 1)], height=2, width=2, point_step=4, row_step=8, data=bytes(15))
    with pytest.raises(MalformedMessageError, match=r"data has 15 bytes, expected row_step 8 \* height 2"):
        read_points(msg)


# --- real data ---------------------------------------------------------------------------------------

def test_kitti_scan_round_trip_zero_copy(kitti_scan, cdr_roundtrip):
    assert len(kitti_scan) > 100_000
    msg = create_xyzi_cloud(kitti_scan, 1_000, "velodyne")
    assert (msg.point_step, msg.row_step, msg.width, msg.height) == (16, 16 * len(kitti_scan), len(kitti_scan), 1)
    out = read_xyzi(msg)
    assert np.array_equal(out, kitti_scan)
    assert np.shares_memory(out, msg.data)
    back = cdr_roundtrip(msg, TYPE)
    decoded = read_xyzi(back)
    assert np.array_equal(decoded, kitti_scan) and np.shares_memory(decoded, back.data)
    generic = read_points(back)
    assert np.array_equal(generic["intensity"], kitti_scan[:, 3])
