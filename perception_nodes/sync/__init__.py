"""Time synchronisation of several input streams, independent of rclpy.

:class:`ApproximateTimeSynchronizer` re-implements the C++ ``message_filters`` ApproximateTime policy
and :class:`ExactTimeSynchronizer` the ExactTime policy; both return the emitted :class:`SyncedSet`
objects instead of calling callbacks, so live nodes and offline replay share them, and both accept
optional per-input timeouts so a dead sensor does not stall the others. See
:mod:`perception_nodes.sync.approximate_time` for the exact semantics.
"""

from perception_nodes.sync.approximate_time import (
    ApproximateTimeSynchronizer,
    DropReason,
    ExactTimeSynchronizer,
    SyncedSet,
)

__all__ = ["ApproximateTimeSynchronizer", "DropReason", "ExactTimeSynchronizer", "SyncedSet"]
