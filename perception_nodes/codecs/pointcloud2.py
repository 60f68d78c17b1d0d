"""``sensor_msgs/PointCloud2`` <-> numpy structured arrays, for any field layout.

A PointCloud2 describes its own memory layout (field offsets, datatypes, counts, point and row
strides, byte order), so decoding is building a numpy dtype from that description and viewing the data
buffer through it: no per-point Python work, and no copy when rows are not padded. Every size in the
description is checked against the others first, because a message is untrusted input and a wrong
stride would otherwise read garbage or out of bounds; contradictions raise
:class:`~perception_nodes.errors.MalformedMessageError`.

Views handed out are read-only: the buffer belongs to the message, which other subscribers (or a bag
reader) may share, so writing through a view would corrupt their copy. Callers that need to write use
``.copy()``.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import numpy as np

from perception_nodes.codecs.backend import MessageBackend, as_byte_view, default_backend, make_header
from perception_nodes.errors import MalformedMessageError

MSGTYPE = "sensor_msgs/msg/PointCloud2"

#: PointField datatype constant -> numpy type code without byte order (INT8=1 ... FLOAT64=8).
DATATYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_CODES = {np.dtype(code).str[1:]: datatype for datatype, code in DATATYPES.items()}

#: The layout ``create_xyzi_cloud`` writes and ``read_xyzi`` decodes without any conversion.
XYZI_FIELDS = (("x", 0), ("y", 4), ("z", 8), ("intensity", 12))
XYZI_DTYPE = np.dtype({"names": [n for n, _ in XYZI_FIELDS], "formats": ["<f4"] * 4,
                       "offsets": [o for _, o in XYZI_FIELDS], "itemsize": 16})


def _malformed(reason: str) -> MalformedMessageError:
    return MalformedMessageError(MSGTYPE, reason)


def cloud_dtype(msg: Any) -> np.dtype:
    """The structured dtype of one point: field offsets, itemsize ``point_step``, the cloud's byte order.

    A field with ``count > 1`` becomes a subarray field of shape ``(count,)``. Fields must have unique
    non-empty names, a known datatype, ``count >= 1``, lie within ``point_step`` and not overlap.
    """
    order = ">" if msg.is_bigendian else "<"
    point_step = int(msg.point_step)
    spans: list[tuple[int, int, str]] = []
    names, formats, offsets = [], [], []
    for f in msg.fields:
        name, datatype, offset, count = str(f.name), int(f.datatype), int(f.offset), int(f.count)
        if datatype not in DATATYPES:
            raise _malformed(f"field {name!r} has unknown datatype {datatype}")
        if count < 1:
            raise _malformed(f"field {name!r} has count {count}")
        if not name or name in names:
            raise _malformed(f"field name {name!r} is empty or repeated")
        scalar = np.dtype(order + DATATYPES[datatype])
        end = offset + scalar.itemsize * count
        if end > point_step:
            raise _malformed(f"field {name!r} ends at byte {end}, past point_step {point_step}")
        spans.append((offset, end, name))
        names.append(name)
        formats.append(scalar if count == 1 else (scalar, (count,)))
        offsets.append(offset)
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise _malformed(f"fields {a!r} and {b!r} overlap")
    try:
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    except (ValueError, OverflowError) as exc:  # e.g. point_step beyond what numpy can index
        raise _malformed(f"layout cannot be represented: {exc}") from exc


def _grid(msg: Any, dtype: np.dtype) -> np.ndarray:
    """A read-only (height, width) view of the data through ``dtype``, after checking every size."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    buf = as_byte_view(msg.data)
    if height and width:
        if point_step <= 0:
            raise _malformed(f"point_step is {point_step} for a non-empty cloud")
        if row_step < width * point_step:
            raise _malformed(f"row_step {row_step} < width {width} * point_step {point_step}")
    if buf.size != row_step * height:
        raise _malformed(f"data has {buf.size} bytes, expected row_step {row_step} * height {height}")
    grid = np.ndarray((height, width), dtype=dtype, buffer=buf, strides=(row_step, point_step))
    grid.flags.writeable = False
    return grid


def read_points(msg: Any) -> np.ndarray:
    """All points as a structured array of shape ``(height * width,)`` in the message's byte order.

    A read-only view onto ``msg.data`` when ``row_step == width * point_step``; rows with padding at
    their end are compacted into a copy of the raw bytes (a structured copy would leave the bytes
    between fields uninitialised, so a re-published cloud would differ from the one received).
    """
    dtype = cloud_dtype(msg)
    grid = _grid(msg, dtype)
    if grid.flags.c_contiguous:
        points = grid.reshape(-1)
    else:
        height, width = grid.shape
        rows = np.ndarray((height, width * dtype.itemsize), np.uint8, buffer=as_byte_view(msg.data),
                          strides=(int(msg.row_step), 1))
        points = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    points.flags.writeable = False
    return points


def _is_xyzi(msg: Any) -> bool:
    fields = [(str(f.name), int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields]
    return (not msg.is_bigendian and int(msg.point_step) == 16
            and int(msg.row_step) == int(msg.width) * 16
            and sorted(fields) == sorted((n, o, 7, 1) for n, o in XYZI_FIELDS))


def read_xyzi(msg: Any, *, remove_nonfinite: bool = False) -> np.ndarray:
    """The cloud as an ``(N, 4)`` float32 array ``[x, y, z, intensity]``.

    For the standard layout (little-endian float32 x, y, z, intensity at offsets 0, 4, 8, 12, no
    padding) the result is a read-only view onto ``msg.data``: this is the per-scan hot path. Any other
    layout is converted field by field (float64 values beyond float32's range become ±inf, which the
    nodes drop as non-finite). A cloud without ``intensity`` gets zeros there; one without x, y or z is
    malformed. The byte order is the one ``is_bigendian`` states: big-endian clouds decode correctly
    (little-endian data flagged big-endian decodes to garbage values, which the nodes' range gate drops). ``remove_nonfinite`` drops points whose x, y or z is NaN or infinite (what
    "invalid point" means for ``is_dense=false`` clouds), which always returns a copy.
    """
    if _is_xyzi(msg):
        grid = _grid(msg, XYZI_DTYPE)
        out = grid.view("<f4").reshape(-1, 4) if grid.size else np.empty((0, 4), np.float32)
        out.flags.writeable = False
    else:
        dtype = cloud_dtype(msg)
        present = dtype.names or ()
        for name in ("x", "y", "z", "intensity"):
            if name in present and dtype.fields[name][0].shape:
                raise _malformed(f"field {name!r} has count > 1")
        if missing := [n for n in "xyz" if n not in present]:
            raise _malformed(f"no field {', '.join(missing)}")
        grid = _grid(msg, dtype)
        out = np.zeros((grid.size, 4), np.float32)
        cols = out.reshape(*grid.shape, 4)  # a view: fills straight from the (padded) rows
        with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range -> inf
            for col, name in enumerate(("x", "y", "z", "intensity")):
                if name in present:
                    cols[..., col] = grid[name]
    if remove_nonfinite:
        out = out[np.isfinite(out[:, :3]).all(axis=1)]
    return out


def _byteorder_is_big(dtype: np.dtype) -> bool:
    """Whether the multi-byte fields of ``dtype`` are big-endian; mixed byte orders are refused."""
    orders = set()
    for sub, *_ in dtype.fields.values():
        base = sub.base
        if base.byteorder != "|":
            orders.add(sys.byteorder == "big" if base.byteorder == "=" else base.byteorder == ">")
    if len(orders) > 1:
        raise ValueError("fields mix byte orders; a PointCloud2 has one")
    return orders == {True}


def create_cloud(points: np.ndarray, stamp_ns: int, frame_id: str,
                 backend: MessageBackend | None = None) -> Any:
    """A PointCloud2 whose layout is ``points.dtype`` (offsets, padding, byte order kept).

    ``points`` is 1-D (an unorganised cloud, height 1) or 2-D (an organised cloud, height = rows).
    Fields must be scalars of the eight PointField datatypes or subarrays of them (count = size).
    ``is_dense`` is true when every floating-point value is finite. The message's data may share
    memory with ``points`` when it is C-contiguous.
    """
    backend = backend or default_backend()
    if points.ndim not in (1, 2) or not points.dtype.names:
        raise ValueError(f"expected a 1-D or 2-D structured array, got {points.dtype} {points.shape}")
    height, width = points.shape if points.ndim == 2 else (1, points.shape[0])
    fields, is_dense = [], True
    for name, (sub, offset, *_) in points.dtype.fields.items():
        base = sub.base
        datatype = _CODES.get(base.str[1:])
        if datatype is None:
            raise ValueError(f"field {name!r} has dtype {sub}, which PointField cannot describe")
        fields.append(backend.new("sensor_msgs/msg/PointField", name=name, offset=int(offset),
                                  datatype=datatype, count=int(np.prod(sub.shape, dtype=np.int64))))
        if base.kind == "f" and is_dense:
            is_dense = bool(np.isfinite(points[name]).all())
    point_step = points.dtype.itemsize
    data = np.ascontiguousarray(points).reshape(-1).view(np.uint8)
    return backend.new(
        MSGTYPE, header=make_header(backend, stamp_ns, frame_id), height=height, width=width,
        fields=fields, is_bigendian=_byteorder_is_big(points.dtype), point_step=point_step,
        row_step=width * point_step, data=data, is_dense=is_dense,
    )


def create_xyzi_cloud(xyzi: np.ndarray, stamp_ns: int, frame_id: str,
                      backend: MessageBackend | None = None) -> Any:
    """An unorganised PointCloud2 in the standard layout from an ``(N, 4)`` array [x, y, z, intensity].

    ``is_dense`` is true when every value is finite. The message's data shares memory with ``xyzi``
    when that already is C-contiguous little-endian float32 (no copy for the common case).
    """
    backend = backend or default_backend()
    xyzi = np.asarray(xyzi)
    if xyzi.ndim != 2 or xyzi.shape[1] != 4:
        raise ValueError(f"expected an (N, 4) array, got shape {xyzi.shape}")
    packed = np.ascontiguousarray(xyzi, dtype="<f4")
    fields = [backend.new("sensor_msgs/msg/PointField", name=n, offset=o, datatype=7, count=1)
              for n, o in XYZI_FIELDS]
    return backend.new(
        MSGTYPE, header=make_header(backend, stamp_ns, frame_id), height=1, width=len(packed),
        fields=fields, is_bigendian=False, point_step=16, row_step=16 * len(packed),
        data=packed.reshape(-1).view(np.uint8), is_dense=bool(np.isfinite(packed).all()),
    )
