"""How the codecs build messages without knowing whose message classes they are.

Decoders read attributes only, so they accept rclpy messages and rosbags' dataclasses alike. Builders
need to *construct* messages, which differs: rosbags' dataclasses take numpy arrays for array fields,
rclpy's classes want ``array.array`` for unbounded sequences. A :class:`MessageBackend` hides that: the
builders always pass every field, numpy arrays for numeric arrays, and the backend adapts.
``RosbagsBackend`` lives here; the rclpy one lives in :mod:`perception_nodes.ros.backend` so the core
never imports rclpy.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from perception_nodes import msgs


class MessageBackend(Protocol):
    """Constructs a message of ``typename`` (``pkg/msg/Name``) from keyword fields."""

    def new(self, typename: str, /, **fields: Any) -> Any: ...


class RosbagsBackend:
    """Builds rosbags dataclasses from the project typestore (what bags are written with)."""

    def __init__(self, store=None) -> None:
        self.store = store if store is not None else msgs.typestore()

    def new(self, typename: str, /, **fields: Any) -> Any:
        return self.store.types[typename](**fields)


_DEFAULT: RosbagsBackend | None = None


def default_backend() -> RosbagsBackend:
    """The process-wide rosbags backend (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RosbagsBackend()
    return _DEFAULT


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (either flavour) to integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def make_time(backend: MessageBackend, ns: int) -> Any:
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return backend.new("builtin_interfaces/msg/Time", sec=sec, nanosec=nsec)


def make_header(backend: MessageBackend, stamp_ns: int, frame_id: str) -> Any:
    return backend.new("std_msgs/msg/Header", stamp=make_time(backend, stamp_ns), frame_id=frame_id)


def as_byte_view(data: Any) -> np.ndarray:
    """A zero-copy uint8 view of a message's ``data`` field (bytes, array.array, list or numpy)."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1) if data.dtype != np.uint8 else data.reshape(-1)
    if isinstance(data, list):  # rclpy may hand out lists for some sequences; copy is unavoidable
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)
