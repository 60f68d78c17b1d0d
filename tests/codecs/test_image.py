"""Image codec: every encoding, row padding, big-endian data, malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception_nodes import msgs
from perception_nodes.codecs import image_to_numpy, numpy_to_image
from perception_nodes.errors import MalformedMessageError

TYPE = "sensor_msgs/msg/Image"
LAYOUTS = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4),
    "mono8": ("u1", 1), "mono16": ("u2", 1), "16UC1": ("u2", 1), "32FC1": ("f4", 1),
}


def image_msg(encoding, height, width, step, data, big=False):
    t = msgs.typestore().types
    return t[TYPE](
        header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="cam"),
        height=height, width=width, encoding=encoding, is_bigendian=int(big), step=step,
        data=np.frombuffer(bytes(data), np.uint8).copy(),
    )


def random_pixels(rng, encoding, height, width):
    code, channels = LAYOUTS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if code == "f4":
        pixels = rng.standard_normal(shape).astype(np.float32)
        pixels.flat[:: 5] = np.nan
        return pixels
    return rng.integers(0, np.iinfo(code).max + 1, shape).astype(code)


def encode_rows(pixels, big, pad):
    """Row by row, explicit byte order, ``pad`` filler bytes after each row."""
    order = ">" if big else "<"
    return b"".join(row.astype(row.dtype.newbyteorder(order)).tobytes() + b"\xee" * pad for row in pixels)


@pytest.mark.parametrize("encoding", sorted(LAYOUTS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(0, 5), width=st.integers(0, 7), pad=st.integers(0, 9), big=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_decode_with_step_padding_and_byte_order(encoding, height, width, pad, big, seed):
    pixels = random_pixels(np.random.default_rng(seed), encoding, height, width)
    step = pixels[0].nbytes + pad if height else pad
    msg = image_msg(encoding, height, width, step, encode_rows(pixels, big, pad), big)
    out = image_to_numpy(msg)
    assert out.shape == pixels.shape and out.dtype == pixels.dtype and out.dtype.isnative
    assert np.array_equal(out, pixels, equal_nan=True)


@pytest.mark.parametrize("encoding", sorted(LAYOUTS))
def test_round_trip_is_zero_copy_and_serializable(encoding, cdr_roundtrip):
    pixels = random_pixels(np.random.default_rng(3), encoding, 4, 6)
    msg = numpy_to_image(pixels, encoding, 123, "cam")
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (4, 6, encoding, 0)
    assert msg.step == pixels[0].nbytes and msg.data.size == pixels.nbytes
    out = image_to_numpy(msg)
    assert np.array_equal(out, pixels, equal_nan=True)
    assert np.shares_memory(out, msg.data) and not out.flags.writeable
    back = cdr_roundtrip(msg, TYPE)
    assert np.array_equal(image_to_numpy(back), pixels, equal_nan=True)
    assert back.header.stamp.nanosec == 123 and back.header.frame_id == "cam"


def test_big_endian_mono16_known_bytes():
    msg = image_msg("mono16", 1, 2, 6, b"\x01\x02\x00\xff\x00\x00", big=True)
    assert image_to_numpy(msg).tolist() == [[0x0102, 0x00FF]]
    little = image_msg("mono16", 1, 2, 4, b"\x01\x02\x00\xff", big=False)
    assert image_to_numpy(little).tolist() == [[0x0201, 0xFF00]]


def test_single_channel_accepts_trailing_axis_of_one():
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    assert np.array_equal(image_to_numpy(numpy_to_image(pixels, "mono8", 0, "c")), pixels[..., 0])


@pytest.mark.parametrize(
    "encoding,height,width,step,n_bytes",
    [
        ("yuv422", 2, 2, 4, 8),  # unsupported encoding
        ("8UC3", 2, 2, 6, 12),  # unsupported encoding
        ("rgb8", 2, 2, 5, 10),  # step shorter than a row
        ("mono16", 2, 3, 6, 11),  # data short by a byte
        ("mono16", 2, 3, 6, 13),  # data long by a byte
        ("32FC1", 3, 1, 4, 8),  # height disagrees with data
        ("bgra8", 1, 2, 8, 0),  # no data
    ],
)
def test_malformed_images_raise(encoding, height, width, step, n_bytes):
    with pytest.raises(MalformedMessageError) as info:
        image_to_numpy(image_msg(encoding, height, width, step, bytes(n_bytes)))
    assert info.value.msgtype == TYPE


@pytest.mark.parametrize(
    "pixels,encoding",
    [
        (np.zeros((2, 2, 3), np.uint8), "mono8"),
        (np.zeros((2, 2), np.uint8), "rgb8"),
        (np.zeros((2, 2), np.float64), "32FC1"),
        (np.zeros((2, 2), np.int16), "mono16"),
        (np.zeros((2, 2, 3), np.uint8), "rgb16"),
        (np.zeros(4, np.uint8), "mono8"),
    ],
)
def test_numpy_to_image_refuses_mismatched_arrays(pixels, encoding):
    with pytest.raises(MalformedMessageError):
        numpy_to_image(pixels, encoding, 0, "c")
