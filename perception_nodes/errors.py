"""The error types the core raises on bad input.

Nodes catch :class:`MalformedMessageError`, count it per topic on ``/diagnostics`` and keep running, so
one broken message never takes a node down and is never dropped silently.
"""

from __future__ import annotations


class MalformedMessageError(ValueError):
    """A message whose contents contradict its own layout (sizes, encodings, field descriptions)."""

    def __init__(self, msgtype: str, reason: str) -> None:
        super().__init__(f"malformed {msgtype}: {reason}")
        self.msgtype = msgtype
        self.reason = reason


class CalibrationError(ValueError):
    """Calibration or a transform needed to interpret a message is missing or invalid."""


class ImplausibleCloudError(ValueError):
    """A cloud whose layout is consistent but whose values cannot be a real scan (most finite points
    far beyond the range gate: typically data read with the wrong byte order or field types)."""


class NodeUnavailable(RuntimeError):
    """A node that cannot run here for a reason outside its parameters (e.g. the packaged network weights
    have not been trained yet). Replay and ``live`` skip such a node and say why once; the rest of the
    graph runs. As a single ROS node (``ros2 launch``), its lifecycle ``configure`` fails with the reason."""
