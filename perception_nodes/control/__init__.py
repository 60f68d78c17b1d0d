"""Uncertainty-aware control: the command law, the fallback state machine and input health, without ROS.

The node that wires them to topics is :mod:`perception_nodes.graph.control`; the rule and its parameters
are in ``docs/control.md``.
"""

from perception_nodes.control.fallback import FallbackParams, FallbackState, FallbackStateMachine
from perception_nodes.control.health import CloudHealth, CloudHealthMonitor, CloudHealthParams, cloud_health
from perception_nodes.control.law import Command, CommandParams, command_for

__all__ = ["CloudHealth", "CloudHealthMonitor", "CloudHealthParams", "Command", "CommandParams", "FallbackParams", "FallbackState",
           "FallbackStateMachine", "cloud_health", "command_for"]
