"""Reading rosbag2 bags (sqlite3 or MCAP) with rosbags, into the core's message dataclasses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader

from perception_nodes import msgs


@dataclass(frozen=True)
class BagRecord:
    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any


class BagReader:
    """Context manager over one rosbag2 folder (or a single ``.mcap``/``.db3`` file's folder).

    Messages come out in log-time order across topics. Types unknown to the project typestore are
    taken from the definitions stored in the bag, so foreign bags decode too.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if p.is_file():  # a lone storage file: rosbags wants the bag folder
            p = p.parent
        if not (p / "metadata.yaml").is_file():
            raise FileNotFoundError(f"{p} is not a rosbag2 folder (no metadata.yaml)")
        self.path = p
        self._reader = AnyReader([p], default_typestore=msgs.typestore())

    def __enter__(self) -> BagReader:
        self._reader.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.close()

    @property
    def topics(self) -> dict[str, str]:
        """Topic name -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def message_counts(self) -> dict[str, int]:
        return {c.topic: c.msgcount for c in self._reader.connections}

    @property
    def duration_ns(self) -> int:
        return int(self._reader.duration)

    def records(self, topics: Iterable[str] | None = None, raw: bool = False) -> Iterator[BagRecord]:
        """Messages in log-time order; ``raw=True`` yields serialized CDR bytes instead of objects."""
        if not getattr(self._reader, "stack", None):
            raise RuntimeError(f"{self.path}: open the bag first -- `with BagReader(path) as bag: bag.records()`")
        wanted = set(topics) if topics is not None else None
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        for conn, t, data in self._reader.messages(connections=conns):
            msg = data if raw else self._reader.deserialize(data, conn.msgtype)
            yield BagRecord(conn.topic, conn.msgtype, int(t), msg)
