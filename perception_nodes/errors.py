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
