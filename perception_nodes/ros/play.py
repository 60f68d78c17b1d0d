"""``perception-stack play``: publish a bag to live topics (for machines without ``ros2 bag``).

Messages are published as serialized CDR straight from the bag (no decode/encode round trip), at
their recorded pace scaled by ``rate``. With ``clock=True`` it also publishes ``/clock`` so nodes with
``use_sim_time`` run on bag time. Topics whose message type is not installed here are skipped with a
warning (``/tf_static`` and ``/tf`` need tf2_msgs: a ROS install's, or the stand-in that
``scripts/setup.sh`` builds in ``ros_ws``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from perception_nodes.bags import BagReader
from perception_nodes.bags.writer import LATCHED_TOPICS
from perception_nodes.ros.env import ros_node

CLOCK_PERIOD_S = 0.01
CLOCK_TAIL_S = 0.5


class BagPlayer:
    """Publishes one bag through an rclpy node; :meth:`play` blocks until done."""

    def __init__(self, node: Any, bag: str | Path, topics: Iterable[str] | None = None, log=print) -> None:
        from perception_nodes.ros.backend import _message_class
        from perception_nodes.ros.qos import profile

        self.node = node
        self.bag = Path(bag)
        self.log = log
        self.pubs: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.sent: dict[str, int] = {}
        with BagReader(self.bag) as reader:
            available = reader.topics
        wanted = set(topics) if topics else set(available)
        for topic, msgtype in sorted(available.items()):
            if topic not in wanted:
                continue
            try:
                cls = _message_class(msgtype)
            except (ImportError, AttributeError, ValueError):
                self.skipped[topic] = msgtype
                log(f"warning: {msgtype} is not installed; not playing {topic}")
                continue
            qos = profile("latched" if topic in LATCHED_TOPICS else "reliable")
            self.pubs[topic] = node.create_publisher(cls, topic, qos)
        from rosgraph_msgs.msg import Clock

        self._clock_pub = None
        self._clock_cls = Clock

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Block until every publisher has a subscriber (or the time-out passes); True if all do."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if all(p.get_subscription_count() > 0 for p in self.pubs.values()):
                return True
            time.sleep(0.05)
        return False

    def play(self, rate: float = 1.0, clock: bool = False, start_delay_s: float = 0.5) -> dict[str, int]:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if clock and self._clock_pub is None:
            self._clock_pub = self.node.create_publisher(self._clock_cls, "/clock", 10)
        time.sleep(start_delay_s)  # give discovery a moment so the first messages are not lost
        wall0 = bag0 = None
        last_clock = 0.0
        with BagReader(self.bag) as reader:
            for rec in reader.records(topics=list(self.pubs), raw=True):
                if wall0 is None:
                    wall0, bag0 = time.monotonic(), rec.log_time_ns
                due = wall0 + (rec.log_time_ns - bag0) / 1e9 / rate
                while True:
                    now = time.monotonic()
                    if clock and now - last_clock >= CLOCK_PERIOD_S:
                        self._publish_clock(bag0 + int((now - wall0) * rate * 1e9))
                        last_clock = now
                    if now >= due:
                        break
                    time.sleep(min(due - now, CLOCK_PERIOD_S))
                if clock:
                    self._publish_clock(rec.log_time_ns)
                self.pubs[rec.topic].publish(bytes(rec.msg))
                self.sent[rec.topic] = self.sent.get(rec.topic, 0) + 1
        if clock and wall0 is not None:
            # keep bag time running briefly so the last frames' latency is measured on a moving clock
            end = time.monotonic() + CLOCK_TAIL_S
            while time.monotonic() < end:
                self._publish_clock(bag0 + int((time.monotonic() - wall0) * rate * 1e9))
                time.sleep(CLOCK_PERIOD_S)
        return self.sent

    def _publish_clock(self, ns: int) -> None:
        from builtin_interfaces.msg import Time

        msg = self._clock_cls()
        msg.clock = Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        self._clock_pub.publish(msg)


def run_play(bag: str | Path, rate: float = 1.0, clock: bool = False, topics: list[str] | None = None,
             loop: bool = False, wait_s: float = 0.0) -> int:
    with ros_node("perception_bag_player") as node:
        player = BagPlayer(node, bag, topics)
        if wait_s > 0 and not player.wait_for_subscribers(wait_s):
            print(f"warning: not every topic has a subscriber after {wait_s} s; playing anyway", flush=True)
        while True:
            sent = player.play(rate=rate, clock=clock)
            print("played: " + ", ".join(f"{t} x{n}" for t, n in sorted(sent.items())), flush=True)
            if not loop:
                break
    return 0
