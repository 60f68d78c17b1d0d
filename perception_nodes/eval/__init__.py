"""Offline evaluation of the stack's outputs: detection, occupancy, calibration, uncertainty and control.

The metrics live in :mod:`perception_nodes.eval.metrics` (one module per family, each citing the
definition it implements); the public API is re-exported here.
"""

from perception_nodes.eval.metrics import *  # noqa: F403  (the public API is the metrics package's)
from perception_nodes.eval.metrics import __all__  # noqa: F401
