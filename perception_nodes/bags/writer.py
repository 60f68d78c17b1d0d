"""Writing rosbag2 MCAP bags with rosbags (what ``ros2 bag play`` and Foxglove read)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from perception_nodes import msgs

_INF = QosTime(sec=2147483647, nsec=4294967295)


def _qos(reliable: bool, transient_local: bool) -> Qos:
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=1 if transient_local else 10,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=_INF,
        lifespan=_INF,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_INF,
        avoid_ros_namespace_conventions=False,
    )


#: Topics recorded with latched (transient-local) QoS so players re-offer them like the originals.
LATCHED_TOPICS = {"/tf_static"}


class BagWriter:
    """Writes messages of any type known to the project typestore into a new rosbag2 MCAP bag.

    Connections are created on first use of a topic. ``path`` must not exist yet (rosbags' rule).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.store = msgs.typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()

    def write(self, topic: str, msgtype: str, log_time_ns: int, msg: Any) -> None:
        conn = self._conns.get(topic)
        if conn is None:
            qos = _qos(reliable=True, transient_local=topic in LATCHED_TOPICS)
            conn = self._writer.add_connection(
                topic, msgtype, typestore=self.store, offered_qos_profiles=[qos]
            )
            self._conns[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic} written with {msgtype}, first with {conn.msgtype}")
        self._writer.write(conn, int(log_time_ns), self.store.serialize_cdr(msg, msgtype))
        self.counts[topic] = self.counts.get(topic, 0) + 1


class OutputBag(BagWriter):
    """A bag whose storage file is ``<dir>/<name>.mcap`` with ``metadata.yaml`` beside it in ``dir``.

    Replay writes its outputs into the run's output folder next to ``latency.json`` and the report, so
    the folder itself is a playable rosbag2 bag and ``outputs.mcap`` opens in any MCAP tool.
    """

    def __init__(self, out_dir: str | Path, name: str = "outputs") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = self.out_dir / f".{name}.writing"
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir()
        self.name = name
        super().__init__(self._tmp / name)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for f in (f"{self.name}.mcap", "metadata.yaml"):
            target = self.out_dir / f
            target.unlink(missing_ok=True)
            shutil.move(str(self._tmp / self.name / f), target)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self.path = self.out_dir / f"{self.name}.mcap"
