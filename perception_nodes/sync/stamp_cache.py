"""A bounded, stamp-keyed memory of the latest messages (e.g. camera_infos waiting for their images).

Camera nodes pair an image with the camera_info of its own stamp; infos arrive within a frame of their
image, so a few are enough. One function, so every node keeps them the same way: newest last, a repeated
stamp replaced (and moved to the end), the oldest dropped beyond ``keep``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

__all__ = ["remember_by_stamp"]

V = TypeVar("V")


def remember_by_stamp(cache: "OrderedDict[int, V]", stamp: int, value: V, keep: int) -> None:
    """Store ``value`` under ``stamp`` as the newest entry of ``cache``; keep at most ``keep`` entries."""
    cache.pop(stamp, None)
    cache[stamp] = value
    while len(cache) > keep:
        cache.popitem(last=False)
