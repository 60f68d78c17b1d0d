"""``sensor_msgs/Image`` <-> numpy for the encodings the stack consumes.

Decoding is a strided view onto the message's buffer (row padding via ``step`` costs nothing), so a
camera frame is not copied on the way in. Big-endian multi-byte data is converted to native byte
order, because image consumers (OpenCV, torch) reject non-native arrays; that case copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perception_nodes.codecs.backend import MessageBackend, as_byte_view, default_backend, make_header
from perception_nodes.errors import MalformedMessageError

MSGTYPE = "sensor_msgs/msg/Image"

#: encoding -> (element type, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3), "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4), "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1), "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1), "32FC1": (np.dtype(np.float32), 1),
}


def _layout(encoding: str) -> tuple[np.dtype, int]:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise MalformedMessageError(MSGTYPE, f"unsupported encoding {encoding!r}") from None


def image_to_numpy(msg: Any) -> np.ndarray:
    """The pixels as ``(H, W)`` (one channel) or ``(H, W, C)``, in native byte order.

    A read-only view onto ``msg.data`` unless the image is big-endian with multi-byte pixels.
    """
    dtype, channels = _layout(str(msg.encoding))
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if msg.is_bigendian:
        dtype = dtype.newbyteorder(">")
    row_bytes = width * channels * dtype.itemsize
    buf = as_byte_view(msg.data)
    if height and step < row_bytes:
        raise MalformedMessageError(MSGTYPE, f"step {step} < width {width} * pixel size")
    if buf.size != step * height:
        raise MalformedMessageError(MSGTYPE, f"data has {buf.size} bytes, expected step {step} * height {height}")
    shape = (height, width, channels) if channels > 1 else (height, width)
    strides = (step, channels * dtype.itemsize, dtype.itemsize)[: len(shape)]
    img = np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)
    if not dtype.isnative:
        return img.astype(dtype.newbyteorder("="))
    img.flags.writeable = False
    return img


def numpy_to_image(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str,
                   backend: MessageBackend | None = None) -> Any:
    """An unpadded little-endian Image; ``arr`` must already have the encoding's dtype and channels.

    Nothing is cast implicitly (a float array for ``mono16`` is a caller bug, not something to round
    away). The message's data may share memory with ``arr`` when it is C-contiguous little-endian.
    """
    backend = backend or default_backend()
    dtype, channels = _layout(encoding)
    arr = np.asarray(arr)
    if arr.dtype.newbyteorder("=") != dtype:
        raise MalformedMessageError(MSGTYPE, f"{encoding} needs {dtype} pixels, got {arr.dtype}")
    if not ((arr.ndim == 2 and channels == 1) or (arr.ndim == 3 and arr.shape[2] == channels)):
        raise MalformedMessageError(MSGTYPE, f"{encoding} needs {channels} channel(s), got shape {arr.shape}")
    height, width = arr.shape[:2]
    packed = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<"))
    return backend.new(
        MSGTYPE, header=make_header(backend, stamp_ns, frame_id), height=height, width=width,
        encoding=encoding, is_bigendian=0, step=width * channels * dtype.itemsize,
        data=packed.reshape(-1).view(np.uint8),
    )


def to_rgb(img: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, 3) RGB of a decoded 8-bit camera image (the camera networks were trained on rgb8): a view for
    rgb8 / rgba8, a reordered copy for bgr8 / bgra8, a single channel (mono8, or any 2-D image) replicated
    as a broadcast view (the network's first cast, or a resize, copies it)."""
    if img.ndim == 2 or encoding == "mono8":
        return np.broadcast_to(img.reshape(img.shape[:2])[:, :, None], img.shape[:2] + (3,))
    if encoding in ("bgr8", "bgra8"):
        return img[:, :, [2, 1, 0]]
    return img[:, :, :3]
